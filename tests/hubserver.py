"""A loopback Hugging Face Hub: the part of huggingface.co's HTTP protocol that huggingface_hub speaks.

Repositories are directories under `root`: `root/org/name/` is branch `main`, and
`root/org/name@rev/` is branch or tag `rev`. Every branch is a commit whose sha is
derived from its files; the first time a commit is seen its bytes are frozen, so a
test can rewrite a branch and still read the old commit by sha, as on the real Hub.

Served, like the real Hub (including the X-Error-Code headers that
`huggingface_hub.utils.hf_raise_for_status` turns into its exception classes):

    GET  /api/models/{repo}[/revision/{rev}][?blobs=true]   model info with siblings
    GET  /api/models/{repo}/tree/{rev}[/{path}]              file listing
    GET  /api/models/{repo}/refs[?include_prs=1]             branches and tags (HfApi.list_repo_refs)
    HEAD|GET /{repo}/resolve/{rev}/{path}                    file bytes, Range supported
    HEAD|GET {cdn}/blobs/{sha256}                            large files, after a redirect

Large files (safetensors, pickles) answer /resolve with a 302 to a second listener on
another port, as the Hub redirects them to its CDN: the client follows it and drops
its Authorization header on the way, so a test can check no token leaves the Hub.

The CDN urls are presigned like S3's: `?X-Amz-Expires=<s>&X-Amz-Date=...&Expires=<epoch>
&X-Amz-Signature=<hmac>`. After `url_lifetime` seconds (3600 by default, as the Hub's;
a test may set a fraction of a second) a url answers 403 with S3's `AccessDenied` /
`Request has expired` XML, and a tampered one 403 `SignatureDoesNotMatch`.
`expire_cdn_urls()` expires every url handed out so far at once.

/resolve can be rate limited as the Hub does: `throttle_resolves(n, retry_after=1)`
answers the next n /resolve calls 429 with `Retry-After: 1`.

`bandwidth` (bytes per second, None: as fast as loopback goes) caps every connection on its
own, as a link from one client to a CDN edge is capped: response bodies are written in
small chunks, each sent no earlier than the cap allows since the response began. N
connections (one client's parallel range requests, or N workers) get N times the cap.

Two switches (may be changed live) make it answer as some self-hosted mirrors do (olah,
tests/olahserver.py): `ranges=False` ignores Range headers and sends every file whole with
200 (`ranges="open"` answers `bytes=a-b` with 206 and the rest of the file from a, as RFC 9110
allows; `ranges="shifted"`, a broken server, with 206 from a + 1); `sizes=False` gives no file size anywhere (no `size` in the file list, no X-Linked-Size,
no Content-Length: bodies end when the connection closes).

`hang()` makes both listeners accept connections and read requests but never answer (a
Hub that hangs, the worst case for a client: no error, only its own timeouts); `held`
counts the requests held so far, and `unhang()` (or `stop()`) lets them go, closing
their connections unanswered.

Every request is logged (`requests`: method, path, status, range, body bytes, auth,
arrival and completion times on `time.monotonic()`), so tests can assert what was read
and when; `resolve_counts()` counts /resolve calls per (repo, file).

In a test:

    with HubServer(tmp_path / "repos", gated={"org/gated": {"hf_secret"}}) as hub:
        with hub.endpoint():          # HF_ENDPOINT + huggingface_hub.constants point here
            ...

From a shell or another process (prints the endpoint URL, then serves until killed):

    python -m tests.hubserver ROOT [--port 0] [--gated org/name=TOKEN] [--private org/name=TOKEN]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
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
    started: float = 0.0  # time.monotonic() when the request arrived
    finished: float = 0.0  # time.monotonic() when the response was sent
    headers: dict = field(default_factory=dict)  # response headers (Retry-After, Location, ...)
    query: str = ""  # the raw query string (a CDN url's signature and expiry)

    @property
    def resolved(self) -> tuple[str, str] | None:
        """(repo, file) of a /resolve call, whatever its status."""
        if "/resolve/" not in self.path:
            return None
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        return repo, rest.partition("/")[2]


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]  # path -> content, frozen when first seen
    blob_ids: dict[str, str] = field(default_factory=dict)  # path -> git blob sha1
    lfs_oids: dict[str, str] = field(default_factory=dict)  # path -> sha256 of content


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, *, size: int = 0,
                 headers: dict | None = None, s3: str | None = None):
        self.status, self.code, self.message, self.size = status, code, message, size
        self.headers = headers or {}
        self.s3 = s3  # an S3 error code: answered as S3 does (XML body, no X-Error-* headers)


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
        url_lifetime: float = 3600.0,
        cdn_delay: float = 0.0,
        bandwidth: float | None = None,
        ranges: bool | str = True,
        sizes: bool = True,
    ):
        self.root = Path(root)
        self.gated = {k: set(v) for k, v in (gated or {}).items()}
        self.private = {k: set(v) for k, v in (private or {}).items()}
        self.lfs_redirect = lfs_redirect
        self.tags: dict[str, set[str]] = {}  # repo id -> refs (`org/name@rev` dirs) listed as tags, not branches
        self.url_lifetime = url_lifetime  # seconds a presigned CDN url stays valid (may be changed live)
        self.cdn_delay = cdn_delay  # seconds each CDN answer waits (a slow link: a run outlives a url)
        self.bandwidth = bandwidth  # bytes/s per connection for response bodies (may be changed live)
        self.ranges = ranges  # False: Range ignored (200, whole file); "open" / "shifted": other 206 ranges
        self.sizes = sizes  # False: no file size in listings or headers (bodies delimited by closing)
        self._key = os.urandom(16)  # signs CDN urls
        self._throttle: list[tuple[re.Pattern, int]] = []  # (path pattern, Retry-After) for the next /resolve calls
        self.requests: list[Served] = []
        self._lock = threading.Lock()
        self._commits: dict[tuple[str, str], Commit] = {}  # (repo, sha) -> commit
        self._branch_cache: dict[tuple[str, str], tuple[tuple, str]] = {}  # (repo, ref) -> (signature, sha)
        self._blobs: dict[str, tuple[str, str, bytes]] = {}  # sha256 -> (repo, path, content)
        self._failures: list[tuple[re.Pattern, int, int | None]] = []  # (url pattern, status, Retry-After)
        self._signature = 0  # CDN urls carry it; bumping it expires every url handed out so far
        self._answering = threading.Event()  # cleared by hang(): requests are held, never answered
        self._answering.set()
        self.held = 0  # requests held unanswered while hanging
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
        self._answering.set()  # let held requests go, so their threads end
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

    def fail_next(self, count: int, *, status: int = 503, match: str = "", retry_after: int | None = None) -> None:
        """Answer the next `count` requests whose path matches `match` with `status` (and Retry-After)."""
        with self._lock:
            self._failures.extend((re.compile(match), status, retry_after) for _ in range(count))

    def hang(self) -> None:
        """From now on accept connections and never answer, until `unhang()`."""
        self._answering.clear()

    def unhang(self) -> None:
        """Answer again; requests held meanwhile get their connection closed, unanswered."""
        self._answering.set()

    def expire_cdn_urls(self) -> None:
        """Make every CDN url handed out so far answer 403, as signed urls do when they expire."""
        with self._lock:
            self._signature += 1

    def throttle_resolves(self, count: int, *, retry_after: int = 1, match: str = "") -> None:
        """Answer the next `count` /resolve calls whose path matches `match` with 429 + Retry-After."""
        with self._lock:
            self._throttle.extend((re.compile(match), retry_after) for _ in range(count))

    def resolve_counts(self) -> collections.Counter:
        """/resolve calls per (repo, file), every status included."""
        with self._lock:
            return collections.Counter(r.resolved for r in self.requests if r.resolved)

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

    # --- presigned CDN urls -------------------------------------------------------------

    def _sign(self, oid: str, expires: str, generation: str) -> str:
        return hmac.new(self._key, f"{oid}\n{expires}\n{generation}".encode(), hashlib.sha256).hexdigest()

    def _presign(self, oid: str, repo: str) -> str:
        """The query string of a CDN url for blob `oid`, valid for `url_lifetime` seconds from now."""
        now = time.time()
        with self._lock:
            generation = str(self._signature)
        expires = f"{now + self.url_lifetime:.3f}"
        return (f"repo={quote(repo, safe='')}&X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Date={time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"
                f"&X-Amz-Expires={max(1, round(self.url_lifetime))}&Expires={expires}&X-Amz-Generation={generation}"
                f"&X-Amz-Signature={self._sign(oid, expires, generation)}")

    def _check_presigned(self, oid: str, params: dict) -> None:
        expires, generation = params.get("Expires", ""), params.get("X-Amz-Generation", "")
        signature = params.get("X-Amz-Signature", "")
        if not hmac.compare_digest(signature, self._sign(oid, expires, generation)):
            raise HubError(403, None, "The request signature we calculated does not match the signature you provided.",
                           s3="SignatureDoesNotMatch")
        with self._lock:
            current = str(self._signature)
        if generation != current or time.time() > float(expires):
            raise HubError(403, None, "Request has expired", s3="AccessDenied")

    def _throttled(self, path: str) -> int | None:
        """Retry-After for this /resolve call when it is to be rate limited."""
        with self._lock:
            for i, (pattern, retry_after) in enumerate(self._throttle):
                if pattern.search(path):
                    del self._throttle[i]
                    return retry_after
        return None

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
        if blobs and self.sizes:
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

    def refs(self, repo: str, token: str | None, include_prs: bool = False) -> dict:
        """Branches (`main` and every `org/name@rev` dir) and tags (`self.tags`), as the Hub's /refs answers."""
        self._authorize(repo, token, files=False)
        folder = self.root / repo
        names = ["main"] + sorted(p.name[len(folder.name) + 1:] for p in folder.parent.iterdir()
                                  if p.is_dir() and p.name.startswith(folder.name + "@"))
        tags = self.tags.get(repo, set())
        body: dict = {"branches": [], "converts": [], "tags": []}
        for name in names:
            kind = "tags" if name in tags else "branches"
            body[kind].append({"name": name, "ref": f"refs/{'tags' if kind == 'tags' else 'heads'}/{name}",
                               "targetCommit": self._resolve(repo, name).sha})
        if include_prs:
            body["pullRequests"] = []
        return body

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
        self._started = time.monotonic()
        if not self.hub._answering.is_set():
            with self.hub._lock:
                self.hub.held += 1
            self.hub._answering.wait()
            self.close_connection = True
            return
        raw_path, _, query = self.path.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        token = self._token()
        try:
            failure = self._injected_failure(unquote(raw_path))
            if failure:
                status, retry_after = failure
                raise HubError(status, None, "injected failure",
                               headers={"Retry-After": str(retry_after)} if retry_after is not None else None)
            if self.cdn:
                return self._blob(raw_path, params)
            if raw_path.startswith("/api/models/"):
                return self._api(raw_path[len("/api/models/"):], params, token)
            if "/resolve/" in raw_path:
                retry_after = self.hub._throttled(unquote(raw_path))
                if retry_after is not None:
                    raise HubError(429, None, "You have been rate-limited; you can retry this action in about "
                                              f"{retry_after} seconds.", headers={"Retry-After": str(retry_after)})
                return self._resolve_file(raw_path, token)
            raise HubError(404, None, "Not found")
        except HubError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _injected_failure(self, path: str) -> tuple[int, int | None] | None:
        with self.hub._lock:
            for i, (pattern, status, retry_after) in enumerate(self.hub._failures):
                if pattern.search(path):
                    del self.hub._failures[i]
                    return status, retry_after
        return None

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _api(self, rest: str, params: dict, token: str | None) -> None:
        # {org}/{name}[/revision/{rev}] or {org}/{name}/tree/{rev}[/{path}]; rev is quoted with safe=''.
        parts = rest.split("/")
        repo_parts, tail = (parts[:2], parts[2:]) if len(parts) >= 2 and parts[1] not in ("revision", "tree", "refs") else (parts[:1], parts[1:])
        repo = unquote("/".join(repo_parts))
        if not tail:
            body = self.hub.model_info(repo, None, token, params.get("blobs", "").lower() == "true")
        elif tail[0] == "revision" and len(tail) == 2:
            body = self.hub.model_info(repo, unquote(tail[1]), token, params.get("blobs", "").lower() == "true")
        elif tail == ["refs"]:
            body = self.hub.refs(repo, token, params.get("include_prs", "") in ("1", "true", "True"))
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
                "Location": f"{self.hub.cdn_url}/blobs/{commit.lfs_oids[name]}?{self.hub._presign(commit.lfs_oids[name], repo)}",
                "X-Linked-Size": str(len(data)),
                "X-Linked-Etag": f'"{commit.lfs_oids[name]}"',
                "Content-Type": "text/plain; charset=utf-8",
            })
            if not self.hub.sizes:
                del headers["X-Linked-Size"]
            self._file = name
            return self._send(302, b"", headers)
        self._file = name
        self._send_bytes(data, headers)

    def _blob(self, raw_path: str, params: dict) -> None:
        oid = raw_path.rsplit("/", 1)[-1]
        with self.hub._lock:
            blob = self.hub._blobs.get(oid)
        if not raw_path.startswith("/blobs/") or blob is None:
            raise HubError(404, None, "NoSuchKey")
        self.hub._check_presigned(oid, params)
        if self.hub.cdn_delay:
            time.sleep(self.hub.cdn_delay)
        self._file = blob[1]
        self._send_bytes(blob[2], {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"})

    # --- responses --------------------------------------------------------------------

    def _send_bytes(self, data: bytes, headers: dict) -> None:
        header = self.headers.get("Range") if self.hub.ranges else None
        if header is None:
            if not self.hub.ranges:
                headers = {k: v for k, v in headers.items() if k != "Accept-Ranges"}
            return self._send(200, data, {**headers, "Content-Type": "application/octet-stream"},
                              length=self.hub.sizes)
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
        if self.hub.ranges == "open":
            end = size - 1
        elif self.hub.ranges == "shifted":
            start = min(start + 1, end)
        self._send(206, data[start:end + 1], {
            **headers, "Content-Type": "application/octet-stream", "Content-Range": f"bytes {start}-{end}/{size}",
        })

    def _error(self, err: HubError) -> None:
        if err.s3:
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{err.s3}</Code>'
                    f"<Message>{err.message}</Message></Error>").encode()
            return self._send(err.status, body, {"Content-Type": "application/xml", **err.headers})
        headers = {"Content-Type": "application/json", "X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.status == 416:
            headers["Content-Range"] = f"bytes */{err.size}"
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict, *, length: bool = True) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:  # the body ends when the connection closes (HTTP/1.1 allows it for a response)
            self.send_header("Connection", "close")
            self.close_connection = True
        sent = len(body) if self.command != "HEAD" else 0
        # Logged before anything goes out, so a client that has its answer finds it in the log;
        # `finished` is when the answer was ready to send (bodies here are small).
        with self.hub._lock:
            self.hub.requests.append(Served(
                self.command, unquote(self.path.partition("?")[0]), status, self.headers.get("Range"), sent,
                self.headers.get("Authorization"), self._file if status < 400 else None,
                getattr(self, "_started", time.monotonic()), time.monotonic(), dict(headers),
                self.path.partition("?")[2],
            ))
        self.end_headers()
        if sent:
            self._write_body(body)
        self.wfile.flush()

    def _write_body(self, body: bytes) -> None:
        rate = self.hub.bandwidth
        if not rate:
            self.wfile.write(body)
            return
        # Paced: chunk i goes out no earlier than (bytes before it) / rate after the first, so the
        # connection averages `rate` whatever the client reads ahead; ~50 chunks a second.
        self.wfile.flush()
        chunk = max(4096, int(rate / 50))
        view = memoryview(body)
        began = time.monotonic()
        for offset in range(0, len(body), chunk):
            wait = began + offset / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.wfile.write(view[offset:offset + chunk])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve model repos under ROOT the way huggingface.co does.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gated", action="append", default=[], metavar="REPO=TOKEN")
    parser.add_argument("--private", action="append", default=[], metavar="REPO=TOKEN")
    parser.add_argument("--url-lifetime", type=float, default=3600.0, help="seconds a presigned CDN url is valid")
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s per connection (default: no cap)")
    parser.add_argument("--no-ranges", action="store_true", help="ignore Range headers: send files whole (200)")
    parser.add_argument("--no-sizes", action="store_true", help="give no file sizes (listings, headers)")
    args = parser.parse_args(argv)

    def access(items: list[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for item in items:
            repo, _, token = item.partition("=")
            out.setdefault(repo, set()).update({token} if token else set())
        return out

    server = HubServer(args.root, gated=access(args.gated), private=access(args.private), host=args.host, port=args.port,
                       url_lifetime=args.url_lifetime, bandwidth=args.bandwidth, ranges=not args.no_ranges,
                       sizes=not args.no_sizes)
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
