"""The HTTP policy of reading a Hub repo, in one place (as huggingface_hub's `utils/_http.py`).

`HubHttp` is the half of `HubSource` (hub.py) that talks HTTP: every request of a source goes
through `_fetch` (bytes of one file at the pinned commit) or `_call` (any huggingface_hub call),
and every failure leaves as an EngineError with a code (`_error`).

The Hub answers /resolve for large files with a redirect to a presigned storage url
that expires (about an hour). Each file is resolved once and its storage url reused
for every range read; when the storage host refuses it (400/403/410) the file is
resolved again, once per failure, however many readers noticed, and a fresh url that
fails again ends the read (`transient`). 429 and 503 are retried after the server's
Retry-After (capped at `max_retry_after_s`), and every request of this source to that
host waits for it too; other transient failures back off exponentially; attempts are
bounded by `retries`. The token goes to the Hub only, never to the storage host.

Servers that are not huggingface.co (self-hosted mirrors such as olah) differ, and each
difference is met here rather than taken for a network failure:
- Range ignored (200 and the whole file for `Range: bytes=0-7`): the file is streamed from
  its start, only [begin, end) kept and the stream closed there, so memory stays at the
  range asked for; a warning says so once per server (a read then costs its end offset in
  transfer, so the source merges its reads into fewer, larger ones: `ranges_ignored`).
- A 206 whose Content-Range covers more than the range asked for: the range is cut out of it
  (and the stream closed after it); one that does not cover it is refused (retried, then
  `transient` naming it), never read as if it were the range asked.
- No file sizes in the file list (`blobs=true` ignored) and none on a whole-file answer
  (chunked): the size comes from a HEAD (X-Linked-Size or Content-Length); a server that
  gives it nowhere is refused (`bad_request`), naming what it lacks.
- A server that answered, on every attempt, with an error or a broken answer is named as
  such, never as "the network is unavailable".

The endpoint comes from `huggingface_hub.constants.ENDPOINT` (HF_ENDPOINT), read at call
time. The token lives only in request headers (`_Secret`) and never in an attribute,
message or log line.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import httpx2
from huggingface_hub import constants, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from worker.engine.checkpoints.sources import SMALL_FILE_LIMIT
from worker.engine.errors import EngineError

log = logging.getLogger("worker.engine.checkpoints.hub")
_WARNED_RANGES: set[str] = set()  # endpoints already warned about (once per process)

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


class HubHttp:
    """Requests for one Hub repo: retries, Retry-After, storage-url reuse and refresh, errors.

    The host class (HubSource) provides `spec`, `revision`, `sha` once resolved, `_where()`
    and `_count(n)` (weight bytes read); it calls `_init_http(token)` first.
    """

    retries = 4  # attempts after the first, on 5xx, 429, timeouts and connection errors
    backoff_s = 1.0  # first wait between attempts, doubled each time up to max_backoff_s
    max_backoff_s = 8.0
    max_retry_after_s = 60.0  # a longer Retry-After is cut to this (attempts stay bounded by `retries`)
    timeout = httpx2.Timeout(60.0, connect=10.0)

    def _init_http(self, token: str | None) -> None:
        self.bytes_fetched = 0  # headers, index, config and weights: all body bytes received
        self.resolve_calls: dict[str, int] = {}  # file -> requests sent to the Hub's /resolve for it
        self.refreshes = 0  # storage urls resolved again because the storage host refused them
        self._count_lock = threading.Lock()
        self._locations: dict[str, str] = {}  # file -> url that last served it (signed storage url; reused)
        self._file_locks: dict[str, threading.Lock] = {}
        self._not_before: dict[tuple, float] = {}  # origin -> monotonic time before which nothing is sent
        headers = build_hf_headers(token=token)
        self._has_token = "authorization" in headers
        self._auth = _Secret(headers)
        self.ranges_ignored = False  # the server answered a range request with the whole file

    def _ignores_ranges(self, file: str) -> None:
        if self.ranges_ignored:
            return
        self.ranges_ignored = True
        endpoint = constants.ENDPOINT
        with self._count_lock:
            if endpoint in _WARNED_RANGES:
                return
            _WARNED_RANGES.add(endpoint)
        log.warning("The Hub at %s ignores HTTP range requests (it sent all of %s of %s for a range, HTTP 200): "
                    "reading whole files from their start instead, in bounded memory; this costs more time and "
                    "transfer than a server with range support.", endpoint, file, self.spec.id)

    def _size_from_head(self, file: str) -> int:
        """The size of `file` from a HEAD at the pinned commit, for servers that list no sizes."""
        size = self._call(lambda: self._head_once(file), f"look up the size of {file} of")
        if size is None:
            raise EngineError(
                "bad_request",
                f"The Hub at {constants.ENDPOINT} gives no size for {file} of {self._where()}: no size in its file "
                "list, no Content-Range or Content-Length on its answers, none on a HEAD request. Subnetscope needs "
                "it to check the safetensors header; use a server that sends one of them (huggingface.co does).",
            )
        return size

    def _head_once(self, file: str) -> int | None:
        url = hf_hub_url(self.spec.id, file, revision=self.sha, endpoint=constants.ENDPOINT)
        hub = _origin(constants.ENDPOINT)
        session = get_session()
        for _ in range(5):
            origin = _origin(url)
            self._wait_for(origin)
            headers = {**(self._auth.headers() if origin == hub else {}), "Accept-Encoding": "identity"}
            response = session.head(url, headers=headers, follow_redirects=False, timeout=self.timeout)
            linked = response.headers.get("X-Linked-Size", "")
            if linked.isdigit():
                return int(linked)
            if response.has_redirect_location:
                url = urljoin(url, response.headers["Location"])
                continue
            hf_raise_for_status(response)
            length = response.headers.get("Content-Length", "")
            return int(length) if length.isdigit() else None
        raise httpx2.TooManyRedirects(f"too many redirects for {file}")

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
                if begin is not None and response.status_code == 200:
                    # Range ignored: the whole file comes; keep [begin, end) and hang up there.
                    self._ignores_ranges(file)
                    data, received = _read_span(response, begin, end)
                    length = response.headers.get("Content-Length", "")
                    total = int(length) if length.isdigit() else None
                elif begin is not None and response.status_code != 206:
                    raise httpx2.RemoteProtocolError(
                        f"HTTP {response.status_code} to a range request for {file} (206 or 200 expected)")
                elif begin is not None and (first := _covering(response.headers.get("Content-Range"), begin, end,
                                                               file)) is not None:
                    # A 206 of a wider range (RFC 9110 lets a server send other ranges than asked; the
                    # client must read Content-Range): keep what was asked for and hang up after it.
                    data, received = _read_span(response, begin - first, end - first)
                    total = _total_size(response.headers.get("Content-Range"))
                else:
                    expected = (end - begin) if begin is not None else None
                    data = _read_body(response, expected, limit=SMALL_FILE_LIMIT if begin is None else None)
                    received = len(data)
                    total = _total_size(response.headers.get("Content-Range"))
            # The url that served the bytes serves the next range too: a signed storage url is
            # reused until it expires, so a file costs one /resolve, not one per read.
            self._locations[file] = url
            with self._count_lock:
                self.bytes_fetched += received
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
        answered = False  # the last failure was an answer of the server, not a silence
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
                last, answered = f"answered HTTP {status}", True
                if status in RETRY_AFTER_STATUSES:
                    asked = _retry_after(exc.response.headers.get("Retry-After"))
                    if asked is not None:
                        asked = min(asked, self.max_retry_after_s)
                        self._hold(_origin(str(exc.response.url)), asked)  # (model_info's 429s too)
            except (httpx2.RemoteProtocolError, httpx2.DecodingError, httpx2.TooManyRedirects) as exc:
                # The server answered, but not as HTTP or the Hub's protocol allow.
                last, answered = f"answered but broke the protocol: {exc}", True
            except httpx2.HTTPError as exc:
                last, answered = type(exc).__name__, False
            if attempt < self.retries:
                time.sleep(wait if asked is None else asked)
                wait = min(wait * 2, self.max_backoff_s)
        if answered:
            raise EngineError(
                "transient",
                f"Could not {action} {self.spec.label}: the Hub at {constants.ENDPOINT} {last} "
                f"({self.retries + 1} attempts); try again later.",
            )
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


def list_refs(repo: str, token: str | None, *, retries: int = 3, backoff_s: float = 1.0) -> list[tuple]:
    """(name, ref, commit) of every branch and tag of `repo`, through HfApi.list_repo_refs."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=constants.ENDPOINT)
    last, answered = "no answer", False
    for attempt in range(retries + 1):
        try:
            refs = api.list_repo_refs(repo, token=token)
            return ([(b.name, b.ref, b.target_commit) for b in refs.branches]
                    + [(t.name, t.ref, t.target_commit) for t in refs.tags])
        except RepositoryNotFoundError:
            hint = "" if token else " If it is private, pass a Hugging Face token that can read it."
            raise EngineError("not_found", f"Model {repo} was not found on the Hugging Face Hub.{hint}") from None
        except GatedRepoError:
            raise EngineError("gated", f"{repo} is gated: accept its license on https://huggingface.co/{repo}, "
                                       "then pass a Hugging Face token that can read it.") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status not in RETRY_STATUSES:
                # A mirror may not list refs, or not for this repo (olah offline: 404 "Repository refs
                # are not cached locally"): say what the server answered, not that the network failed.
                said = exc.response.headers.get("X-Error-Message") if exc.response is not None else None
                code = "not_found" if status == 404 else "internal"
                raise EngineError(code, f"The Hub at {constants.ENDPOINT} did not list the branches and tags of "
                                        f"{repo} (HTTP {status}{': ' + said if said else ''}); a run of Hub "
                                        "revisions needs that list.") from None
            last, answered = f"answered HTTP {status}", True
        except (httpx2.RemoteProtocolError, httpx2.DecodingError) as exc:
            last, answered = f"answered but broke the protocol: {exc}", True
        except httpx2.HTTPError as exc:
            last, answered = type(exc).__name__, False
        if attempt < retries:
            time.sleep(backoff_s * 2 ** attempt)
    if answered:
        raise EngineError("transient", f"Could not list the revisions of {repo}: the Hub at {constants.ENDPOINT} "
                                       f"{last} ({retries + 1} attempts); try again later.")
    raise EngineError("transient", f"Could not list the revisions of {repo} on the Hugging Face Hub at "
                                   f"{constants.ENDPOINT} ({last}); try again later.")


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


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(?:\d+|\*)$")


def _covering(content_range: str | None, begin: int, end: int, file: str) -> int | None:
    """The first byte of a 206 that carries more than [begin, end), None when it carries exactly that
    (or says nothing: its length is still checked). A range that does not cover [begin, end) is
    refused, else another range would be read as this one."""
    if content_range is None:
        return None
    match = _CONTENT_RANGE.match(content_range.strip())
    if not match or int(match.group(1)) > begin or int(match.group(2)) < end - 1:
        raise httpx2.RemoteProtocolError(
            f"asked for bytes {begin}-{end - 1} of {file}, the server sent {content_range.strip()!r}")
    first, last = int(match.group(1)), int(match.group(2))
    return None if (first, last) == (begin, end - 1) else first


def _read_span(response: httpx2.Response, begin: int, end: int) -> tuple[bytearray, int]:
    """Bytes [begin, end) of a whole-file body, read from its start and left unread after `end`
    (memory: the span and one chunk); also how many body bytes were received."""
    data = bytearray(end - begin)
    position = 0  # file offset of the next chunk
    for chunk in response.iter_bytes():
        lo, hi = max(begin, position), min(end, position + len(chunk))
        if lo < hi:
            data[lo - begin:hi - begin] = chunk[lo - position:hi - position]
        position += len(chunk)
        if position >= end:
            return data, position
    raise httpx2.RemoteProtocolError(f"the whole file sent was {position} bytes, bytes up to {end} were needed")


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
