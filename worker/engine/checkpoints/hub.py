"""Checkpoints on the Hugging Face Hub, read with HTTP range requests pinned to one commit.

Opening resolves the revision to a commit sha once; every later byte is read at that
sha, so a branch that moves mid-analysis cannot mix two checkpoints. Headers are read
first (8 bytes, then the header) so a malformed file or a mismatched pair is refused
before any weight byte is downloaded; weights are then read piece by piece with range
requests, several in flight and adjacent small tensors coalesced, never a whole shard.
Memory stays bounded by the prefetch budget and nothing is written to disk.

Which files hold the weights follows the same rule as a local directory
(worker/engine/checkpoints/layout.py), on the repo's file list; `subfolder` and `file` of the spec
choose among them.

The Hub answers /resolve for large files with a redirect to a presigned storage url
that expires (about an hour). Each file is resolved once and its storage url reused
for every range read; when the storage host refuses it (400/403/410) the file is
resolved again, once per failure, however many readers noticed, and a fresh url that
fails again ends the read (`transient`). 429 and 503 are retried after the server's
Retry-After (capped at `max_retry_after_s`), and every request of this source to that
host waits for it too; other transient failures back off exponentially; attempts are
bounded by `retries`. The token goes to the Hub only, never to the storage host.

With HF_HUB_OFFLINE=1 the repo is read from the standard Hugging Face cache instead
(refs/<branch> -> snapshots/<sha>/), through the local-directory machinery.

The endpoint, offline flag and cache location come from `huggingface_hub.constants`
(HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE), read at call time. The token
is the argument, else huggingface_hub's default (HF_TOKEN or the stored login); it
lives only in request headers and never in an attribute, message or log line.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx2
import torch
from huggingface_hub import HfApi, constants, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from worker.engine.checkpoints.layout import INDEX_FILE, is_index, select_weights
from worker.engine.checkpoints.safetensors_format import TensorInfo, bytes_to_tensor, header_length, parse_header
from worker.engine.checkpoints.sources import SMALL_FILE_LIMIT, LocalSource, Piece, Source, SourceSpec
from worker.engine.errors import EngineError

# Statuses worth retrying: the request may succeed a moment later.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Statuses whose Retry-After header is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# What a storage host answers to a presigned url that expired (S3: 403 AccessDenied
# "Request has expired"; others 400 or 410): resolve the file again.
EXPIRED_STATUSES = frozenset({400, 403, 410})


class _StorageRefused(Exception):
    """The storage host (not the Hub) refused a presigned url: it expired, most likely."""

    def __init__(self, status: int):
        super().__init__(f"storage host answered HTTP {status}")
        self.status = status


class _Secret:
    """Request headers that carry the token: opaque to repr, pickling and logs."""

    __slots__ = ("_headers",)

    def __init__(self, headers: dict[str, str]):
        self._headers = headers

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def __repr__(self) -> str:
        return "<headers redacted>"

    def __reduce__(self):
        raise TypeError("request credentials are not serialisable")


class HubSource(Source):
    """A Hub model repo at one commit; tensors are read with range requests on demand."""

    retries = 4  # attempts after the first, on 5xx, 429, timeouts and connection errors
    backoff_s = 1.0  # first wait between attempts, doubled each time up to max_backoff_s
    max_backoff_s = 8.0
    max_retry_after_s = 60.0  # a longer Retry-After is cut to this (attempts stay bounded by `retries`)
    timeout = httpx2.Timeout(60.0, connect=10.0)
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
        self.bytes_fetched = 0  # headers, index, config and weights: all body bytes received
        self.resolve_calls: dict[str, int] = {}  # file -> requests sent to the Hub's /resolve for it
        self.refreshes = 0  # storage urls resolved again because the storage host refused them
        self._count_lock = threading.Lock()
        self._locations: dict[str, str] = {}  # file -> url that last served it (signed storage url; reused)
        self._file_locks: dict[str, threading.Lock] = {}
        self._not_before: dict[tuple, float] = {}  # origin -> monotonic time before which nothing is sent
        self._local: LocalSource | None = None
        headers = build_hf_headers(token=token)
        self._has_token = "authorization" in headers
        self._auth = _Secret(headers)
        if constants.is_offline_mode():
            self._open_cached()
        else:
            self._open_remote(token)

    # --- opening ------------------------------------------------------------------------

    def _open_remote(self, token: str | None) -> None:
        api = HfApi(endpoint=constants.ENDPOINT)
        info = self._call(
            lambda: api.model_info(self.spec.id, revision=self.revision, files_metadata=True, token=token,
                                   timeout=self.timeout.read),
            "look up",
        )
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

    def _read_header(self, file: str) -> dict[str, TensorInfo]:
        if self.file_sizes.get(file, 8) < 8:
            header_length(b"", file, self.file_sizes[file])  # refuses it as too short, without a request
        prefix, size = self._fetch(file, 0, 8)
        size = size if size is not None else self.file_sizes.get(file)
        if size is None:
            raise EngineError("internal", f"{self._where()}: the Hub gave no size for {file}; try again later.")
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
        for piece in pieces:
            file = self.tensors[piece.name].file
            begin, end = self.span(piece)
            last = runs[-1] if runs else None
            if last is not None and (
                begin == end or (last.file == file and last.end == begin and end - last.begin <= self.request_bytes)
            ):
                last.add(piece, begin if begin != end else last.end, end if begin != end else last.end)
            else:
                runs.append(_Run(file, begin, end, piece))
        return runs

    # --- HTTP -----------------------------------------------------------------------------

    def _fetch(self, file: str, begin: int | None = None, end: int | None = None, *,
               weights: bool = False) -> tuple[bytearray, int | None]:
        """Bytes [begin, end) of `file` at the pinned commit (the whole file when begin is None).

        Returns the bytes and the file's total size when the server said (Content-Range).
        `weights`: tensor data (counted in `bytes_read`), not a header or a JSON file.
        """
        data, total = self._call(lambda: self._fetch_once(file, begin, end), f"read {file} of")
        if weights:
            self._count(len(data))
        return data, total

    def _fetch_once(self, file: str, begin: int | None, end: int | None) -> tuple[bytearray, int | None]:
        extra = {"Range": f"bytes={begin}-{end - 1}"} if begin is not None else {}
        url = self._locations.get(file)
        for _ in range(4):
            if url is None:
                # First read of the file: one reader asks the Hub, the others wait and reuse its answer.
                with self._file_lock(file):
                    url = self._locations.get(file)
                    if url is None:
                        return self._get_fresh(file, extra, begin, end)
            try:
                return self._get(url, extra, file, begin, end)
            except _StorageRefused:
                pass
            # The presigned url expired: the first reader to notice resolves the file again (once
            # for this failure); the others take the url it got.
            with self._file_lock(file):
                if self._locations.get(file) == url:
                    del self._locations[file]
                    with self._count_lock:
                        self.refreshes += 1
                    return self._get_fresh(file, extra, begin, end)
                url = self._locations.get(file)
        raise httpx2.TransportError(f"the storage urls of {file} keep expiring")  # retried by _call

    def _get_fresh(self, file: str, extra: dict, begin: int | None, end: int | None) -> tuple[bytearray, int | None]:
        """Through the Hub's /resolve; a storage url refused right after it was handed out is not retried."""
        url = hf_hub_url(self.spec.id, file, revision=self.sha, endpoint=constants.ENDPOINT)
        try:
            return self._get(url, extra, file, begin, end)
        except _StorageRefused as exc:
            raise self._refused_twice(file, exc.status) from None

    def _refused_twice(self, file: str, status: int) -> EngineError:
        return EngineError(
            "transient",
            f"The Hub's storage refused {file} of {self._where()} (HTTP {status}) even through a fresh link; "
            "try again later.",
        )

    def _file_lock(self, file: str) -> threading.Lock:
        with self._count_lock:
            return self._file_locks.setdefault(file, threading.Lock())

    def _get(self, url: str, extra: dict, file: str, begin: int | None, end: int | None) -> tuple[bytearray, int | None]:
        session = get_session()
        hub = _origin(constants.ENDPOINT)
        for _ in range(5):
            origin = _origin(url)
            self._wait_for(origin)
            if origin == hub and "/resolve/" in urlsplit(url).path:
                with self._count_lock:
                    self.resolve_calls[file] = self.resolve_calls.get(file, 0) + 1
            # The token goes to the Hub only; a storage url the Hub redirects to is signed on its own.
            headers = {**(self._auth.headers() if origin == hub else {}), **extra, "Accept-Encoding": "identity"}
            with session.stream("GET", url, headers=headers, follow_redirects=False, timeout=self.timeout) as response:
                if response.has_redirect_location:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code >= 400:
                    response.read()
                    if origin != hub and response.status_code in EXPIRED_STATUSES:
                        raise _StorageRefused(response.status_code)
                    if response.status_code in RETRY_AFTER_STATUSES:
                        # Before any other reader of this source can send its next request there.
                        self._hold(origin, _retry_after(response.headers.get("Retry-After")))
                    hf_raise_for_status(response)
                if begin is not None and response.status_code != 206:
                    # A server that ignores Range would send the whole shard: refuse to read it.
                    raise httpx2.RemoteProtocolError(f"expected a partial response (206) for {file}, got {response.status_code}")
                expected = (end - begin) if begin is not None else None
                data = _read_body(response, expected, limit=SMALL_FILE_LIMIT if begin is None else None)
                total = _total_size(response.headers.get("Content-Range"))
            # The url that served the bytes serves the next range too: a signed storage url is
            # reused until it expires, so a file costs one /resolve, not one per read.
            self._locations[file] = url
            with self._count_lock:
                self.bytes_fetched += len(data)
            return data, total
        raise httpx2.TooManyRedirects(f"too many redirects for {file}")

    def _hold(self, origin: tuple, seconds: float | None) -> None:
        """`origin` asked not to be called for `seconds` (capped): every request of this source waits."""
        if seconds is None:
            return
        seconds = min(seconds, self.max_retry_after_s)
        with self._count_lock:
            self._not_before[origin] = max(self._not_before.get(origin, 0.0), time.monotonic() + seconds)

    def _wait_for(self, origin: tuple) -> None:
        """Hold a request while `origin` asked (Retry-After) not to be called."""
        with self._count_lock:
            until = self._not_before.get(origin, 0.0)
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _call(self, fn: Callable, action: str):
        """Run `fn` with retries on transient failures; turn every failure into an EngineError."""
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            asked = None  # seconds the server asked us to wait (Retry-After)
            try:
                return fn()
            except HFValidationError:
                raise EngineError("bad_id", f"{self.spec.label!r} is not a valid Hugging Face model id or revision.") from None
            except OfflineModeIsEnabled:
                raise EngineError("not_found", f"Cannot {action} {self.spec.label}: offline mode is on (HF_HUB_OFFLINE=1).") from None
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status not in RETRY_STATUSES:
                    raise self._error(exc, action) from None
                last = f"HTTP {status}"
                if status in RETRY_AFTER_STATUSES:
                    asked = _retry_after(exc.response.headers.get("Retry-After"))
                    if asked is not None:
                        asked = min(asked, self.max_retry_after_s)
                        self._hold(_origin(str(exc.response.url)), asked)  # (model_info's 429s too)
            except httpx2.HTTPError as exc:
                last = type(exc).__name__
            if attempt < self.retries:
                time.sleep(wait if asked is None else asked)
                wait = min(wait * 2, self.max_backoff_s)
        raise EngineError(
            "transient",
            f"Could not {action} {self.spec.label} on the Hugging Face Hub at {constants.ENDPOINT} ({last}, "
            f"{self.retries + 1} attempts); the Hub or the network is unavailable, try again later.",
        )

    def _error(self, exc: HfHubHTTPError, action: str) -> EngineError:
        repo, rev = self.spec.id, self.revision
        status = exc.response.status_code if exc.response is not None else None
        message = exc.response.headers.get("X-Error-Message") if exc.response is not None else None
        if status == 401 and message == "Invalid credentials in Authorization header":
            return EngineError("gated", "The Hugging Face token given was refused (invalid or expired); pass a valid token.")
        if isinstance(exc, GatedRepoError) or (
            status in (401, 403) and not isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError))
        ):
            if self._has_token:
                return EngineError("gated", f"{repo} is gated or restricted and the token given has no access to it: "
                                            f"accept its license on https://huggingface.co/{repo} with that account, "
                                            "or pass a token that can read it.")
            return EngineError("gated", f"{repo} is gated: accept its license on https://huggingface.co/{repo}, "
                                        "then pass a Hugging Face token (HF_TOKEN or the token field) that can read it.")
        if isinstance(exc, RepositoryNotFoundError):
            hint = "" if self._has_token else " If it is private, pass a Hugging Face token that can read it."
            return EngineError("not_found", f"Model {repo} was not found on the Hugging Face Hub.{hint}")
        if isinstance(exc, RevisionNotFoundError):
            return EngineError("revision_not_found", f"Revision {rev!r} does not exist in {repo} "
                                                     "(no such branch, tag or commit).")
        if isinstance(exc, EntryNotFoundError):
            return EngineError("not_found", f"A file of {self._where()} listed by the Hub could not be read (not found).")
        return EngineError("internal", f"The Hub refused to {action} {self.spec.label} (HTTP {status}).")

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


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _total_size(content_range: str | None) -> int | None:
    """The complete length from 'bytes a-b/N', when the server said."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _read_body(response: httpx2.Response, expected: int | None, *, limit: int | None) -> bytearray:
    """The body into one writable buffer (tensors view it without a copy), checked for length."""
    if expected is not None:
        data = bytearray(expected)
        position = 0
        for chunk in response.iter_bytes():
            if position + len(chunk) > expected:
                raise httpx2.RemoteProtocolError(f"the server sent more than the {expected} bytes asked for")
            data[position:position + len(chunk)] = chunk
            position += len(chunk)
        if position != expected:
            raise httpx2.RemoteProtocolError(f"short read: {position} of {expected} bytes")
        return data
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if limit is not None and len(data) > limit:
            raise EngineError("malformed", f"{response.url.path} is larger than {limit >> 20} MiB; not a metadata file.")
    return data
