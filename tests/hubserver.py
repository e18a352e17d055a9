"""A loopback Hugging Face Hub: the part of huggingface.co's HTTP protocol that huggingface_hub speaks.

Repositories are directories under `root`: `root/org/name/` is branch `main`, and
`root/org/name@rev/` is branch or tag `rev`. Every branch is a commit whose sha is
derived from its files; the first time a commit is seen its bytes are frozen, so a
test can rewrite a branch and still read the old commit by sha, as on the real Hub.

Served, like the real Hub (including the X-Error-Code headers that
`huggingface_hub.utils.hf_raise_for_status` turns into its exception classes):

    GET  /api/models/{repo}[/revision/{rev}][?blobs=true]   model info with siblings
    GET  /api/models/{repo}/tree/{rev}[/{path}]              file listing
    HEAD|GET /{repo}/resolve/{rev}/{path}                    file bytes, Range supported
    HEAD|GET {cdn}/blobs/{sha256}                            large files, after a redirect

Large files (safetensors, pickles) answer /resolve with a 302 to a second listener on
another port, as the Hub redirects them to its CDN: the client follows it and drops
its Authorization header on the way, so a test can check no token leaves the Hub.

Every request is logged with the body bytes sent, so tests can assert what was read.

In a test:

    with HubServer(tmp_path / "repos", gated={"org/gated": {"hf_secret"}}) as hub:
        with hub.endpoint():          # HF_ENDPOINT + huggingface_hub.constants point here
            ...

From a shell or another process (prints the endpoint URL, then serves until killed):

    python -m tests.hubserver ROOT [--port 0] [--gated org/name=TOKEN] [--private org/name=TOKEN]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack", ".gguf")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Served:
    """One request as the server saw it."""

    method: str
    path: str  # URL path, unquoted
    status: int
    range: str | None
    body_bytes: int
    authorization: str | None
    file: str | None = None  # repo file the bytes belong to, when any


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]  # path -> content, frozen when first seen
    blob_ids: dict[str, str] = field(default_factory=dict)  # path -> git blob sha1
    lfs_oids: dict[str, str] = field(default_factory=dict)  # path -> sha256 of content


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, *, size: int = 0):
        self.status, self.code, self.message, self.size = status, code, message, size


class HubServer:
    """Serve repos under `root` over loopback HTTP, in background threads.

    gated / private: repo id -> set of tokens allowed to read it. A gated repo's model
    info is public (as on the Hub) but its files are not; a private repo is invisible
    without a token, answering exactly like an unknown repo.
    """

    def __init__(
        self,
        root: Path,
        *,
        gated: dict[str, set[str]] | None = None,
        private: dict[str, set[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        lfs_redirect: bool = True,
    ):
        self.root = Path(root)
        self.gated = {k: set(v) for k, v in (gated or {}).items()}
        self.private = {k: set(v) for k, v in (private or {}).items()}
        self.lfs_redirect = lfs_redirect
        self.requests: list[Served] = []
        self._lock = threading.Lock()
        self._commits: dict[tuple[str, str], Commit] = {}  # (repo, sha) -> commit
        self._branch_cache: dict[tuple[str, str], tuple[tuple, str]] = {}  # (repo, ref) -> (signature, sha)
        self._blobs: dict[str, tuple[str, str, bytes]] = {}  # sha256 -> (repo, path, content)
        self._failures: list[tuple[re.Pattern, int]] = []  # (url pattern, status) for the next matching requests
        self._signature = 0  # CDN urls carry it; bumping it expires every url handed out so far
        self._hub = _Listener(self, host, port, cdn=False)
        self._cdn = _Listener(self, host, 0, cdn=True)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._hub.url

    @property
    def cdn_url(self) -> str:
        return self._cdn.url

    def start(self) -> "HubServer":
        self._hub.start()
        self._cdn.start()
        return self

    def stop(self) -> None:
        self._hub.stop()
        self._cdn.stop()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextlib.contextmanager
    def endpoint(self):
        """Point this process's huggingface_hub (and child processes, via HF_ENDPOINT) here."""
        with use_endpoint(self.url):
            yield self

    # --- test helpers -----------------------------------------------------------------

    def fail_next(self, count: int, *, status: int = 503, match: str = "") -> None:
        """Answer the next `count` requests whose path matches `match` with `status`."""
        with self._lock:
            self._failures.extend((re.compile(match), status) for _ in range(count))

    def expire_cdn_urls(self) -> None:
        """Make every CDN url handed out so far answer 403, as signed urls do when they expire."""
        with self._lock:
            self._signature += 1

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def served(self, *, suffix: str = "", method: str | None = None) -> list[Served]:
        with self._lock:
            return [
                r for r in self.requests
                if (r.file or "").endswith(suffix) and (method is None or r.method == method) and (suffix == "" or r.file)
            ]

    def bytes_served(self, suffix: str = "") -> int:
        """Body bytes sent for repo files ending in `suffix` (all requests when empty)."""
        return sum(r.body_bytes for r in self.served(suffix=suffix))

    def commit_sha(self, repo: str, ref: str = "main") -> str:
        return self._resolve(repo, ref).sha

    # --- the repository model ---------------------------------------------------------

    def _branch_dir(self, repo: str, ref: str) -> Path | None:
        path = self.root / (repo if ref == "main" else f"{repo}@{ref}")
        return path if path.is_dir() and ".." not in repo else None

    def _repo_exists(self, repo: str) -> bool:
        return self._branch_dir(repo, "main") is not None

    def _resolve(self, repo: str, rev: str) -> Commit:
        with self._lock:
            commit = self._commits.get((repo, rev))
            if commit is not None:
                return commit
        directory = self._branch_dir(repo, rev)
        if directory is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        paths = sorted(p for p in directory.rglob("*") if p.is_file())
        signature = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
        with self._lock:
            cached = self._branch_cache.get((repo, rev))
            if cached and cached[0] == signature:
                return self._commits[(repo, cached[1])]
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in paths}
        digest = hashlib.sha1(repo.encode())
        for name, data in files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        commit = Commit(digest.hexdigest(), files)
        for name, data in files.items():
            commit.blob_ids[name] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            commit.lfs_oids[name] = hashlib.sha256(data).hexdigest()
        with self._lock:
            commit = self._commits.setdefault((repo, commit.sha), commit)
            self._branch_cache[(repo, rev)] = (signature, commit.sha)
            for name, data in commit.files.items():
                self._blobs.setdefault(commit.lfs_oids[name], (repo, name, data))
        return commit

    def _authorize(self, repo: str, token: str | None, *, files: bool) -> None:
        if not self._repo_exists(repo) or (repo in self.private and token not in self.private[repo]):
            # The Hub answers 401 to anonymous callers and 404 to authenticated ones, same code.
            raise HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")
        if files and repo in self.gated and token not in self.gated[repo]:
            if token is None:
                raise HubError(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it "
                                                 "and be authenticated to access it. Please log in.")
            raise HubError(403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the "
                                             "authorized list. Visit the repo page to ask for access.")

    def _is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)

    def _sibling(self, commit: Commit, name: str, blobs: bool) -> dict:
        entry = {"rfilename": name}
        if blobs:
            size = len(commit.files[name])
            entry.update(size=size, blobId=commit.blob_ids[name])
            if self._is_lfs(name):
                entry["lfs"] = {"size": size, "sha256": commit.lfs_oids[name], "pointerSize": 134}
        return entry

    def model_info(self, repo: str, rev: str | None, token: str | None, blobs: bool) -> dict:
        self._authorize(repo, token, files=False)
        commit = self._resolve(repo, rev or "main")
        names = sorted(commit.files)
        return {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0] if "/" in repo else None,
            "sha": commit.sha,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "private": repo in self.private,
            "gated": "manual" if repo in self.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["safetensors"] if any(n.endswith(".safetensors") for n in names) else [],
            "library_name": "transformers",
            "siblings": [self._sibling(commit, n, blobs) for n in names],
        }

    def tree(self, repo: str, rev: str, path: str, token: str | None) -> list[dict]:
        self._authorize(repo, token, files=False)
        commit = self._resolve(repo, rev)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        out, folders = [], set()
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for i in range(1, len(parts)):
                folders.add(prefix + "/".join(parts[:i]))
            entry = {"type": "file", "oid": commit.blob_ids[name], "size": len(commit.files[name]), "path": name}
            if self._is_lfs(name):
                entry["lfs"] = {"oid": commit.lfs_oids[name], "size": len(commit.files[name]), "pointerSize": 134}
            out.append(entry)
        out += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f} for f in sorted(folders)]
        if not out and prefix:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        return out


def use_endpoint(url: str):
    """Point huggingface_hub at `url`: the env var for child processes, constants for this one.

    huggingface_hub reads HF_ENDPOINT once at import, so a process that has already
    imported it needs its constants updated too.
    """
    from huggingface_hub import constants

    saved_env = os.environ.get("HF_ENDPOINT")
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE)

    @contextlib.contextmanager
    def scope():
        os.environ["HF_ENDPOINT"] = url
        constants.ENDPOINT = url.rstrip("/")
        constants.HUGGINGFACE_CO_URL_TEMPLATE = constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"
        try:
            yield
        finally:
            constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE = saved
            if saved_env is None:
                os.environ.pop("HF_ENDPOINT", None)
            else:
                os.environ["HF_ENDPOINT"] = saved_env

    return scope()


class _Listener:
    def __init__(self, hub: HubServer, host: str, port: int, *, cdn: bool):
        handler = type("Handler", (_Handler,), {"hub": hub, "cdn": cdn})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"hubserver-{self.url}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join()
            self.thread = None
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    cdn: bool
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects

    def log_message(self, format, *args) -> None:  # quiet: the request log is self.hub.requests
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    # --- routing ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._file: str | None = None
        raw_path, _, query = self.path.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        token = self._token()
        try:
            failure = self._injected_failure(unquote(raw_path))
            if failure:
                raise HubError(failure, None, "injected failure")
            if self.cdn:
                return self._blob(raw_path, params)
            if raw_path.startswith("/api/models/"):
                return self._api(raw_path[len("/api/models/"):], params, token)
            if "/resolve/" in raw_path:
                return self._resolve_file(raw_path, token)
            raise HubError(404, None, "Not found")
        except HubError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _injected_failure(self, path: str) -> int | None:
        with self.hub._lock:
            for i, (pattern, status) in enumerate(self.hub._failures):
                if pattern.search(path):
                    del self.hub._failures[i]
                    return status
        return None

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _api(self, rest: str, params: dict, token: str | None) -> None:
        # {org}/{name}[/revision/{rev}] or {org}/{name}/tree/{rev}[/{path}]; rev is quoted with safe=''.
        parts = rest.split("/")
        repo_parts, tail = (parts[:2], parts[2:]) if len(parts) >= 2 and parts[1] not in ("revision", "tree") else (parts[:1], parts[1:])
        repo = unquote("/".join(repo_parts))
        if not tail:
            body = self.hub.model_info(repo, None, token, params.get("blobs", "").lower() == "true")
        elif tail[0] == "revision" and len(tail) == 2:
            body = self.hub.model_info(repo, unquote(tail[1]), token, params.get("blobs", "").lower() == "true")
        elif tail[0] == "tree" and len(tail) >= 2:
            body = self.hub.tree(repo, unquote(tail[1]), unquote("/".join(tail[2:])), token)
        else:
            raise HubError(404, None, "Not found")
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve_file(self, raw_path: str, token: str | None) -> None:
        before, _, after = raw_path.lstrip("/").partition("/resolve/")
        repo = unquote(before)
        rev_quoted, _, file_quoted = after.partition("/")
        rev, name = unquote(rev_quoted), unquote(file_quoted)
        self.hub._authorize(repo, token, files=True)
        commit = self.hub._resolve(repo, rev)
        if name not in commit.files:
            raise HubError(404, "EntryNotFound", "Entry not found")
        data = commit.files[name]
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{commit.blob_ids[name]}"',
            "Accept-Ranges": "bytes",
        }
        if self.hub.lfs_redirect and self.hub._is_lfs(name):
            # The Hub answers large files with a redirect to its CDN, carrying their metadata.
            headers.update({
                "Location": f"{self.hub.cdn_url}/blobs/{commit.lfs_oids[name]}"
                            f"?repo={quote(repo, safe='')}&signature={self.hub._signature}",
                "X-Linked-Size": str(len(data)),
                "X-Linked-Etag": f'"{commit.lfs_oids[name]}"',
                "Content-Type": "text/plain; charset=utf-8",
            })
            self._file = name
            return self._send(302, b"", headers)
        self._file = name
        self._send_bytes(data, headers)

    def _blob(self, raw_path: str, params: dict) -> None:
        oid = raw_path.rsplit("/", 1)[-1]
        with self.hub._lock:
            blob = self.hub._blobs.get(oid)
            signature = str(self.hub._signature)
        if not raw_path.startswith("/blobs/") or blob is None:
            raise HubError(404, None, "NoSuchKey")
        if params.get("signature") != signature:
            raise HubError(403, None, "Request has expired")
        self._file = blob[1]
        self._send_bytes(blob[2], {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"})

    # --- responses --------------------------------------------------------------------

    def _send_bytes(self, data: bytes, headers: dict) -> None:
        header = self.headers.get("Range")
        if header is None:
            return self._send(200, data, {**headers, "Content-Type": "application/octet-stream"})
        match = _RANGE.match(header.strip())
        size = len(data)
        start = end = None
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, size - int(match.group(2))), size - 1
        if start is None:
            raise HubError(400, None, f"Bad Range header {header!r}")
        if start >= size or end < start:
            raise HubError(416, None, "Range Not Satisfiable", size=size)
        self._send(206, data[start:end + 1], {
            **headers, "Content-Type": "application/octet-stream", "Content-Range": f"bytes {start}-{end}/{size}",
        })

    def _error(self, err: HubError) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.status == 416:
            headers["Content-Range"] = f"bytes */{err.size}"
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            sent = len(body)
        with self.hub._lock:
            self.hub.requests.append(Served(
                self.command, unquote(self.path.partition("?")[0]), status, self.headers.get("Range"), sent,
                self.headers.get("Authorization"), self._file if status < 400 else None,
            ))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve model repos under ROOT the way huggingface.co does.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gated", action="append", default=[], metavar="REPO=TOKEN")
    parser.add_argument("--private", action="append", default=[], metavar="REPO=TOKEN")
    args = parser.parse_args(argv)

    def access(items: list[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for item in items:
            repo, _, token = item.partition("=")
            out.setdefault(repo, set()).update({token} if token else set())
        return out

    server = HubServer(args.root, gated=access(args.gated), private=access(args.private), host=args.host, port=args.port)
    server.start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
