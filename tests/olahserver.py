"""olah (PyPI: a self-hosted Hugging Face mirror we did not write), serving git repos offline.

Every other Hub test talks to tests/hubserver.py, written to our own reading of the protocol.
This one runs the real `olah-cli` as a process on loopback, offline (`[accessibility]
offline = true`), serving local git repositories (`mirrors-path`) that a test builds with
git and git-lfs (Debian packages, installed by `.ci/system-deps`): weights are committed as
LFS objects, as on the Hub.

olah pins versions that clash with the product's (psutil), so it lives in a virtualenv of
its own, `.venv-olah/` at the repository root, created from PyPI the first time a test needs
it (`ensure_olah()`; `make olah` does the same).

    repo = GitRepo(mirrors / "models" / "org" / "base")
    repo.commit({"model.safetensors": path, "config.json": path})       # branch main
    repo.commit({...}, branch="step-100")                               # another branch (from main)
    with OlahServer(mirrors, tmp) as olah:                               # olah.url -> HF_ENDPOINT
        ...
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from support.polling import wait_for

ROOT = Path(__file__).resolve().parents[1]
OLAH_VENV = ROOT / ".venv-olah"
OLAH_VERSION = "0.5.4"
OLAH_CLI = OLAH_VENV / "bin" / "olah-cli"


def ensure_olah() -> Path:
    """The olah-cli of .venv-olah, creating the venv from PyPI once (a few seconds from a warm pip cache)."""
    if not OLAH_CLI.exists():
        subprocess.run([sys.executable, "-m", "venv", str(OLAH_VENV)], check=True)
        subprocess.run([str(OLAH_VENV / "bin" / "pip"), "install", "-q", f"olah=={OLAH_VERSION}"], check=True)
    return OLAH_CLI


def tools_missing() -> str | None:
    """Why olah tests cannot run here (git or git-lfs absent), else None."""
    for tool in ("git", "git-lfs"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bash .ci/system-deps installs it)"
    return None


class GitRepo:
    """A git repository in olah's mirror layout (`mirrors/models/<org>/<name>`), weights in git-lfs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", "main")
        self._git("lfs", "install", "--local")
        self._git("lfs", "track", "*.safetensors")
        self._git("add", ".gitattributes")
        self._git("commit", "-q", "-m", "init")

    def _git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null"}
        done = subprocess.run(["git", "-C", str(self.path), *args], check=True, capture_output=True, text=True, env=env)
        return done.stdout.strip()

    def commit(self, files: dict[str, Path], *, branch: str = "main", tag: str | None = None) -> str:
        """Replace the tree's files by `files` (repo path -> source file) on `branch` (created from main)."""
        branches = self._git("branch", "--list", branch)
        self._git("checkout", "-q", *(["-B", branch, "main"] if not branches and branch != "main" else [branch]))
        for old in self._git("ls-files").splitlines():
            if old != ".gitattributes":
                self._git("rm", "-q", "--cached", old)
                (self.path / old).unlink(missing_ok=True)
        for name, source in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            self._git("add", name)
        self._git("commit", "-q", "--allow-empty", "-m", f"{branch}: {len(files)} files")
        if tag:
            self._git("tag", tag)
        sha = self._git("rev-parse", "HEAD")
        self._git("checkout", "-q", "main")
        return sha

    def sha(self, ref: str = "main") -> str:
        return self._git("rev-parse", ref)


def commit_dir(repo: GitRepo, directory: Path, **kwargs) -> str:
    """Commit every file of a checkpoint directory (recursively) as the repo's tree."""
    files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
    return repo.commit(files, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OlahServer:
    """`olah-cli` on 127.0.0.1, offline, serving the git repos under `mirrors`; stopped on exit."""

    def __init__(self, mirrors: Path, workdir: Path):
        self.mirrors, self.workdir = Path(mirrors), Path(workdir)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OlahServer":
        cli = ensure_olah()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.workdir / "cache"}"\n'
            f'mirror-netloc = "127.0.0.1:{self.port}"\nmirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            "[accessibility]\noffline = true\n"
        )
        self.log = self.workdir / "olah.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(cli), "-c", str(config)], cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: httpx.get(self.url + "/api/whoami-v2", timeout=1), 60, "olah to answer",
                     interval=0.2, ignore=(httpx.HTTPError,), proc=self.proc,
                     details=lambda: self.log.read_text(errors="replace")[-2000:], error=RuntimeError)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "OlahServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
