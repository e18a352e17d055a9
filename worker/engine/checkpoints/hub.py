"""Checkpoints on the Hugging Face Hub, read with HTTP range requests pinned to one commit.

Opening resolves the revision to a commit sha once; every later byte is read at that
sha, so a branch that moves mid-analysis cannot mix two checkpoints. Headers are read
first (8 bytes, then the header) so a malformed file or a mismatched pair is refused
before any weight byte is downloaded; weights are then read piece by piece with range
requests, several in flight and adjacent small tensors coalesced, never a whole shard.
Memory stays bounded by the prefetch budget and nothing is written to disk.

Which files hold the weights follows the same rule as a local directory
(worker/engine/checkpoints/layout.py), on the repo's file list; `subfolder` and `file` of the spec
choose among them. How each request is sent, retried, redirected and its failure named is
the HTTP policy of `hub_http.py`.

With HF_HUB_OFFLINE=1 the repo is read from the standard Hugging Face cache instead
(refs/<branch> -> snapshots/<sha>/), through the local-directory machinery.

The endpoint, offline flag and cache location come from `huggingface_hub.constants`
(HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE), read at call time. The token
is the argument, else huggingface_hub's default (HF_TOKEN or the stored login); it
lives only in request headers and never in an attribute, message or log line.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from worker.engine.checkpoints.hub_http import HubHttp
from worker.engine.checkpoints.layout import INDEX_FILE, is_index, select_weights
from worker.engine.checkpoints.local import LocalSource
from worker.engine.checkpoints.safetensors_format import TensorInfo, bytes_to_tensor, header_length, parse_header
from worker.engine.checkpoints.sources import Piece, Source
from worker.engine.checkpoints.spec import SourceSpec
from worker.engine.errors import EngineError


class HubSource(HubHttp, Source):
    """A Hub model repo at one commit; tensors are read with range requests on demand."""

    concurrency = 4  # range requests in flight; one HTTP stream rarely fills the link
    request_bytes = 16 << 20  # adjacent pieces are merged into requests up to this size

    def __init__(self, spec: SourceSpec, *, token: str | None = None):
        if spec.kind != "hub":
            raise ValueError(f"HubSource needs a hub spec, got {spec.kind!r}")
        self.spec = spec
        self.revision = spec.revision or "main"
        self.config = None
        self.files: list[str] = []
        self.file_sizes: dict[str, int] = {}
        self._local: LocalSource | None = None
        self._init_http(token)
        if constants.is_offline_mode():
            self._open_cached()
        else:
            self._open_remote(token)

    # --- opening ------------------------------------------------------------------------

    def _open_remote(self, token: str | None) -> None:
        api = HfApi(endpoint=constants.ENDPOINT)
        try:
            info = self._call(
                lambda: api.model_info(self.spec.id, revision=self.revision, files_metadata=True, token=token,
                                       timeout=self.timeout.read),
                "look up",
            )
        except EngineError as exc:
            # Some servers answer an unknown revision as an unknown repo (olah: 401 RepoNotFound, where
            # the Hub says 404 RevisionNotFound): ask for the repo itself before saying it is missing.
            if exc.code != "not_found" or self.revision == "main" or not self._repo_exists(api, token):
                raise
            raise EngineError("revision_not_found", f"Revision {self.revision!r} does not exist in {self.spec.id} "
                                                    "(no such branch, tag or commit).") from None
        if not info.sha:
            raise EngineError("internal", f"The Hub gave no commit for {self.spec.label}; try again later.")
        self.sha = info.sha
        siblings = {s.rfilename: s.size for s in info.siblings or []}
        self.files = select_weights(siblings, self._read_json, where=self._where(),
                                    subfolder=self.spec.subfolder, file=self.spec.file)
        self.file_sizes = {f: siblings[f] for f in self.files if siblings[f] is not None}
        self.tensors = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="hub-headers") as pool:
            headers = list(pool.map(self._read_header, self.files))
        for infos in headers:
            for name, tensor in infos.items():
                if name in self.tensors:
                    raise EngineError("malformed", f"{self._where()}: tensor {name} appears in two files.")
                self.tensors[name] = tensor
        config = f"{self.spec.subfolder}/config.json" if self.spec.subfolder else "config.json"
        self.config = self._read_json(config) if config in siblings else None

    def _repo_exists(self, api: HfApi, token: str | None) -> bool:
        try:
            # At "main": olah answers /api/models/{repo} without a revision as an unknown repo too.
            self._call(lambda: api.model_info(self.spec.id, revision="main", token=token, timeout=self.timeout.read),
                       "look up")
        except EngineError:
            return False
        return True

    def _read_header(self, file: str) -> dict[str, TensorInfo]:
        if self.file_sizes.get(file, 8) < 8:
            header_length(b"", file, self.file_sizes[file])  # refuses it as too short, without a request
        prefix, size = self._fetch(file, 0, 8)
        size = size if size is not None else self.file_sizes.get(file)
        if size is None:  # a server that lists no sizes and answers with whole files (olah)
            size = self._size_from_head(file)
        self.file_sizes[file] = size
        n = header_length(bytes(prefix), file, size)
        raw, _ = self._fetch(file, 8, 8 + n) if n else (b"", None)
        tensors, _ = parse_header(bytes(raw), file, size)
        return tensors

    def _read_json(self, file: str):
        data, _ = self._fetch(file)
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            if file.endswith("config.json"):
                return None  # the architecture check then says what it cannot check
            raise EngineError("malformed", f"{self._where()}: {file} is not valid JSON.") from None

    def _open_cached(self) -> None:
        label = f"{self.spec.id}@{self.revision}"
        offline = (
            f"{label} is not in the local Hugging Face cache and offline mode is on "
            "(HF_HUB_OFFLINE=1): download it first with network access, or unset HF_HUB_OFFLINE."
        )
        try:
            folder = Path(snapshot_download(self.spec.id, revision=self.revision, local_files_only=True))
        except (LocalEntryNotFoundError, EntryNotFoundError, OSError):
            raise EngineError("not_found", offline) from None
        inside = folder / (self.spec.subfolder or "")
        index = inside / (self.spec.file if self.spec.file and is_index(self.spec.file) else INDEX_FILE)
        if index.is_file() and (self.spec.file is None or is_index(self.spec.file)):
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError):
                shards = set()  # LocalSource names the problem
            if any(isinstance(s, str) and not (index.parent / s).is_file() for s in shards):
                raise EngineError("not_found", offline.replace("is not in", "is only partly in"))
        self.sha = folder.name
        local = LocalSource(SourceSpec("local", str(folder), None, display=f"{label} (offline cache)",
                                       subfolder=self.spec.subfolder, file=self.spec.file), sha=self.sha)
        self._local = local
        self.files, self.tensors, self.config = local.files, local.tensors, local.config

    # --- reading ------------------------------------------------------------------------

    def read_piece(self, piece: Piece) -> torch.Tensor:
        if self._local is not None:
            return self._local.read_piece(piece)
        info = self.tensors[piece.name]
        if piece.stop <= piece.start:
            return bytes_to_tensor(b"", info, 0, 0)
        begin, end = self.span(piece)
        data, _ = self._fetch(info.file, begin, end, weights=True)
        return bytes_to_tensor(data, info, piece.start, piece.stop)

    def iter_pieces(self, pieces: Sequence[Piece]) -> Iterator[tuple[Piece, torch.Tensor]]:
        """The pieces in order, fetched ahead by up to `concurrency` requests within the prefetch budget.

        The first requests go out when this is called, not at the first next(): a caller reading
        two sources in lockstep (base and tuned) has both sources' requests in flight from the start,
        instead of the second source's waiting for the first one's first answer.
        """
        if self._local is not None:
            return self._local.iter_pieces(pieces)
        runs = self._coalesce(pieces)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"hub-{self.spec.id}")
        pending: deque = deque()  # (run, future), in order
        state = {"held": 0, "following": 0}  # bytes requested and not yet consumed; next run to request

        def fill() -> None:
            while state["following"] < len(runs) and len(pending) < 2 * self.concurrency and (
                not pending or state["held"] + runs[state["following"]].nbytes <= self.prefetch_bytes
            ):
                run = runs[state["following"]]
                pending.append((run, pool.submit(self._fetch, run.file, run.begin, run.end, weights=True)
                                if run.nbytes else None))
                state["held"] += run.nbytes
                state["following"] += 1

        try:
            fill()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        return self._drain(runs, pool, pending, state, fill)

    def _drain(self, runs, pool, pending: deque, state: dict, fill) -> Iterator[tuple[Piece, torch.Tensor]]:
        try:
            while pending or state["following"] < len(runs):
                fill()
                run, future = pending.popleft()
                data = memoryview(future.result()[0]) if future is not None else memoryview(b"")
                for piece, (a, b) in zip(run.pieces, run.slices):
                    info = self.tensors[piece.name]
                    yield piece, bytes_to_tensor(data[a:b], info, piece.start, piece.stop)
                    self.release(piece)
                state["held"] -= run.nbytes
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _coalesce(self, pieces: Sequence[Piece]) -> list["_Run"]:
        """Consecutive pieces whose bytes touch in one file become one request (e.g. runs of norm weights)."""
        runs: list[_Run] = []
        # A server that ignores ranges streams every read from the file's start: fewer, larger reads.
        limit = self.prefetch_bytes if self.ranges_ignored else self.request_bytes
        for piece in pieces:
            file = self.tensors[piece.name].file
            begin, end = self.span(piece)
            last = runs[-1] if runs else None
            if last is not None and (
                begin == end or (last.file == file and last.end == begin and end - last.begin <= limit)
            ):
                last.add(piece, begin if begin != end else last.end, end if begin != end else last.end)
            else:
                runs.append(_Run(file, begin, end, piece))
        return runs

    # --- description ----------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.spec.id}@{self.sha[:12]}{self.spec.inside}" if getattr(self, "sha", None) else self.spec.label

    def describe(self) -> dict:
        return {"kind": "hub", "id": self.spec.id, "revision": self.revision, "sha": self.sha,
                **self.spec.placement()}

    @property
    def bytes_read(self) -> int:
        return self._local.bytes_read if self._local is not None else self._bytes_read

    def __repr__(self) -> str:
        return f"HubSource({self.spec.id}@{self.revision}{self.spec.inside}, sha={getattr(self, 'sha', '?')})"

    def __reduce__(self):
        raise TypeError("a HubSource holds open connections and credentials; pass its SourceSpec instead")

    def release(self, piece: Piece) -> None:
        if self._local is not None:
            self._local.release(piece)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        self._locations.clear()


class _Run:
    """A contiguous byte range [begin, end) of one file covering consecutive pieces."""

    __slots__ = ("file", "begin", "end", "pieces", "bounds")

    def __init__(self, file: str, begin: int, end: int, piece: Piece):
        self.file, self.begin, self.end = file, begin, end
        self.pieces, self.bounds = [piece], [(begin, end)]

    def add(self, piece: Piece, begin: int, end: int) -> None:
        self.pieces.append(piece)
        self.bounds.append((begin, end))
        self.end = max(self.end, end)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def slices(self) -> list[tuple[int, int]]:
        return [(a - self.begin, b - self.begin) for a, b in self.bounds]
