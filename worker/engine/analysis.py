"""One streaming pass over a checkpoint pair: pieces in, per-tensor records and a result out.

Memory is bounded by the pieces in flight (the sources' prefetch budget), never
by the model size; the only exception is update rank, which needs one whole
matrix at a time.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from worker.engine import masks as mask_files
from worker.engine.checkpoints.quantized import CodeCounts, quantization_record
from worker.engine.checkpoints.sources import Piece, Source
from worker.engine.errors import EngineError
from worker.engine.kernel import geometry as geo
from worker.engine.kernel import lapack, svd_cost, svd_phase
from worker.engine.kernel.accumulator import Kernel
from worker.engine.kernel.bins import EXACT_TOLERANCES, counterfactual_kinds
from worker.engine.pairing.location import locate, name_order
from worker.engine.pairing.pairs import Pair, Pairing, check_compatible, pair_tensors
from worker.engine.patch.estimate import estimate as estimate_patch
from worker.engine.result import ENGINE_VERSION, SCHEMA, build_result, tensor_record  # noqa: F401 (re-exported)
from worker.engine.tolerance import Tolerance, tolerance_key

# Elements per piece. The fused (numba) loop works in L1-sized chunks whatever the piece, so a piece
# only needs to amortise the per-piece Python, thread hand-offs and read-ahead calls: on the bench
# pair the pass took 1.08 s at 2^19 elements, 0.86 s at 2^21 (peak RSS 349 -> 366 MiB). The torch
# path holds a few float64 temporaries of the whole piece (peak 407 -> 678 MiB at 2^21), so it
# keeps a quarter of that.
PIECE_ELEMENTS = 1 << 21
# Pieces measured at once on a CPU; each costs a few piece-sized temporaries.
MAX_THREADS = 8


@dataclass
class AnalysisOptions:
    tolerance: float = 1e-5  # the chosen t: masks, coverage, default view
    rank: Literal["off", "sampled", "all"] = "off"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    geometry: Literal["off", "sampled", "all"] = "off"  # update geometry (geometry.py): same layers as rank
    backend: Literal["auto", "numba", "torch"] = "auto"  # the kernel's (accumulator.Kernel); results are the same
    precision: bool = True  # the precision view; off only in bench/precision_cost.py, to measure what it costs

    def __post_init__(self) -> None:
        for key in ("rank", "geometry"):
            if getattr(self, key) not in ("off", "sampled", "all"):
                raise EngineError("bad_request", f"{key} must be off, sampled or all, not {getattr(self, key)!r}.")
        if self.backend not in ("auto", "numba", "torch"):
            raise EngineError("bad_request", f"backend must be auto, numba or torch, not {self.backend!r}.")
        # Every entry point (CLI, API, worker, library) builds one of these: refuse here too.
        try:
            self.tolerance = float(Tolerance(self.tolerance))
        except ValueError as e:
            raise EngineError("bad_request", str(e)) from None


def bytes_read(*sources: Source) -> int | None:
    """Weight bytes the sources have read so far, or None when one cannot tell."""
    counts = [getattr(src, "bytes_read", None) for src in sources]
    return sum(counts) if all(isinstance(c, int) for c in counts) else None


@dataclass
class Progress:
    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int
    current: str | None
    # The SVD phase (rank, geometry), in estimated one-core seconds (svd_cost.py) and matrices
    svd_total: float = 0.0
    svd_done: float = 0.0
    svd_matrices_total: int = 0
    svd_matrices_done: int = 0


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def rank_layers(pairs: list[Pair]) -> set[tuple[str, int]]:
    """Layers whose matrices get a rank (or geometry) in "sampled" mode: the first, middle and last of each stack."""
    stacks: dict[str, set[int]] = {}
    for p in pairs:
        where = locate(p.name)
        if where.stack is not None:
            stacks.setdefault(where.stack, set()).add(where.layer)
    picked = set()
    for stack, layers in stacks.items():
        ordered = sorted(layers)
        picked |= {(stack, ordered[0]), (stack, ordered[len(ordered) // 2]), (stack, ordered[-1])}
    return picked


def _wants_rank(pair: Pair, mode: str, sampled: set[tuple[str, int]]) -> bool:
    if len(pair.shape) != 2:
        return False
    where = locate(pair.name)
    return mode == "all" or (mode == "sampled" and (where.stack, where.layer) in sampled)


def _counterfactuals(pair: Pair) -> int:
    """How many storage counterfactuals (bf16, fp16) the pair's stored dtypes allow."""
    return counterfactual_kinds(pair.base.torch_dtype, pair.tuned.torch_dtype)


def _wants_geometry(pair: Pair, mode: str, sampled: set[tuple[str, int]]) -> bool:
    # Three full float64 SVDs need ~5x the matrix in float64: a 128k-row embedding would need
    # tens of GB, so matrices above the cap are left out (and named in a warning).
    return _wants_rank(pair, mode, sampled) and pair.numel <= geo.MAX_ELEMENTS


@contextmanager
def _torch_threads(n: int):
    """Intra-op threads for the duration: pieces already run one per core."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread() -> None:
    torch.set_num_threads(1)


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _SvdFinisher:
    """Finishes the tensors that need SVDs (update rank, geometry) off the streaming pass.

    `Kernel.finish` of such a tensor runs on a background thread while the pass reads on,
    with its intra-op (MKL/OpenMP) threads set for that thread alone: on a CPU, `workers`
    SVDs at once (two, or one on a single core), each with cores / workers threads, since two
    SVDs on half the cores each finish sooner than one after the other on all of them; on
    CUDA one at a time. Memory stays bounded: at most `workers` matrices are in SVD jobs at
    once (the pass waits for any of them to end before handing over another; a job that has
    ended holds only its record's fields until those before it are recorded), plus the one being read,
    and a job that holds over BIG_JOB_BYTES (an embedding or head with geometry) runs alone,
    on every core: the pass waits for the others before it reads that matrix, and for it
    before handing over the next.
    Records are completed on the calling thread, in submission order.
    """

    BIG_JOB_BYTES = 256 << 20

    def __init__(self, kernel: Kernel, device: torch.device, finished, showing):
        n = cores()
        self.kernel = kernel
        self.cores = n
        self.workers = 1 if device.type == "cuda" or n < 2 else 2
        self.threads = max(1, n // self.workers)
        self.finished = finished
        self.showing = showing  # progress: the SVDs of this pair run (or are waited for)
        self.pool: ThreadPoolExecutor | None = None
        self.pending: deque = deque()  # (pair, future), oldest first

    def _finish(self, acc, alone: bool):
        # this thread's own setting (ATen and MKL keep one per thread); a job that runs alone takes every core
        threads = self.cores if alone else self.threads
        torch.set_num_threads(threads)
        # a process-wide setting, equal in every job that overlaps another: LAPACK runs only in
        # geometry's factorisations, one per side, side by side where the job holds several threads
        lapack.set_threads(geo.side_threads(threads))
        return self.kernel.finish(acc)

    def _big(self, shape, kept: int, want_geometry: bool) -> bool:
        return svd_phase.job_bytes(shape, kept, want_geometry) > self.BIG_JOB_BYTES

    def reading(self, pair: Pair, want_geometry: bool) -> None:
        """The pass starts reading a matrix that wants SVDs: if its job will be big, the others end first."""
        if self._big(pair.shape, svd_phase.kept_bytes(pair.shape, pair.compare_dtype, want_geometry), want_geometry):
            self.drain()

    def submit(self, pair: Pair, acc) -> None:
        kept = sum(b.nbytes + t.nbytes for b, t in acc.geometry_rows) + sum(r.nbytes for r in acc.rank_rows)
        big = self._big(acc.shape, kept, acc.want_geometry)
        if big:
            self.drain()
        # A pool thread is free as soon as any job ends, not the oldest: a layer's k and v take
        # 1/40 of its q, and waiting on q left the other thread idle (1.38 of 2 jobs on average).
        while running := [(p, f, b) for p, f, b in self.pending if not f.done()]:
            if len(running) < self.workers and not any(b for *_, b in running):
                break
            self.showing(running[0][0])
            wait([f for _, f, _ in running], return_when=FIRST_COMPLETED)
        self.collect()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="svd")
        self.pending.append((pair, self.pool.submit(self._finish, acc, big), big))
        self.showing(pair)

    def _complete_oldest(self) -> None:
        pair, future, _ = self.pending[0]
        if not future.done():
            self.showing(pair)
        stats = future.result()
        self.pending.popleft()
        self.finished(pair, stats)

    def collect(self) -> None:
        """Complete the SVD jobs that are done, without waiting."""
        while self.pending and self.pending[0][1].done():
            self._complete_oldest()

    def drain(self) -> None:
        while self.pending:
            self._complete_oldest()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def plan_pieces(pair: Pair, fused: bool = True) -> list[Piece]:
    """Element ranges of the compared part; whole rows for matrices (row coverage needs them).
    `fused`: the numba loop measures them (else the torch path: smaller pieces, see PIECE_ELEMENTS)."""
    n = pair.numel
    if n == 0:
        return [Piece(pair.name, 0, 0)]
    size = PIECE_ELEMENTS if fused else max(1, PIECE_ELEMENTS // 4)
    step = size
    if len(pair.shape) == 2 and pair.shape[1]:
        cols = pair.shape[1]
        step = max(1, size // cols) * cols
    return [Piece(pair.name, s, min(s + step, n)) for s in range(0, n, step)]


@dataclass
class Plan:
    """What the pass over any part of a pair and the result both need: the pairing (with its
    warnings) and the layers whose matrices get a rank or geometry in "sampled" mode."""

    pairing: Pairing
    sampled: set[tuple[str, int]]


def plan_analysis(base: Source, tuned: Source, options: AnalysisOptions) -> Plan:
    """Check and pair two opened sources (headers only, no weight byte): the same plan for every part."""
    check_compatible(base, tuned)
    pairing = pair_tensors(base, tuned)
    sampled = rank_layers(pairing.pairs)
    too_big = [p.name for p in pairing.pairs
               if _wants_rank(p, options.geometry, sampled) and not _wants_geometry(p, options.geometry, sampled)]
    if too_big:
        pairing.warnings.append(
            f"Geometry was not computed for {len(too_big)} matrices above {geo.MAX_ELEMENTS:,} elements "
            f"(e.g. {too_big[0]}): their full float64 SVDs would not fit in a worker's memory.")
    return Plan(pairing, sampled)


def pair_bytes(pair: Pair) -> int:
    """Compared bytes of a pair (both sides): what progress and fan-out groups count."""
    return pair.numel * (pair.base.itemsize + pair.tuned.itemsize)


@dataclass
class PartResult:
    """One pass over some tensors of a pair (analyze_part)."""

    records: dict[str, dict]  # tensor name -> record: every tensor of the part, resumed ones included
    bytes_read: int  # weight bytes this pass read
    seconds: float


def analyze(
    base: Source,
    tuned: Source,
    options: AnalysisOptions,
    *,
    masks_dir: Path | None = None,
    resume: Mapping[str, dict] | None = None,
    on_tensor: Callable[[dict], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict:
    """The whole pair in one pass: analyze_part over every tensor, then finish."""
    started = time.perf_counter()
    plan = plan_analysis(base, tuned, options)
    part = analyze_part(base, tuned, options, plan=plan, masks_dir=masks_dir, resume=resume,
                        on_tensor=on_tensor, on_progress=on_progress)
    return finish(base, tuned, options, part.records, plan=plan, masks_dir=masks_dir,
                  bytes_read=part.bytes_read, seconds=time.perf_counter() - started)


def analyze_part(
    base: Source,
    tuned: Source,
    options: AnalysisOptions,
    *,
    only: Collection[str] | None = None,
    plan: Plan | None = None,
    masks_dir: Path | None = None,
    resume: Mapping[str, dict] | None = None,
    on_tensor: Callable[[dict], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> PartResult:
    """The pass over the tensors named in `only` (all when None): records, and mask parts under
    masks_dir/parts. Progress counts this part's tensors and bytes only. Any split of a pair into
    parts gives, record for record and part file for part file, what one pass over it gives."""
    started = time.perf_counter()
    read_before = bytes_read(base, tuned)
    plan = plan or plan_analysis(base, tuned, options)
    pairing, sampled = plan.pairing, plan.sampled
    pairs = pairing.pairs
    if only is not None:
        wanted = set(only)
        pairs = [p for p in pairing.pairs if p.name in wanted]
        if len(pairs) != len(wanted):
            unknown = sorted(wanted - {p.name for p in pairs})
            raise EngineError("internal", f"{len(unknown)} tensors of this part are not compared tensors of the "
                                          f"pair (e.g. {unknown[0]}); the plan does not match the checkpoints.")
    device = pick_device(options.device)
    kernel = Kernel(list(EXACT_TOLERANCES), options.tolerance, device, options.backend, options.precision)
    resume = dict(resume or {})
    parts = masks_dir / "parts" if masks_dir else None
    kernel.keep_masks = parts is not None  # without mask files, pieces carry only the count

    def reusable(p: Pair) -> bool:
        if p.name not in resume:
            return False
        return parts is None or mask_files.part_is_complete(parts, p.name, p.numel)

    todo = [p for p in pairs if not reusable(p)]
    records: dict[str, dict] = {p.name: resume[p.name] for p in pairs if reusable(p)}
    progress = Progress(len(records), len(pairs), sum(pair_bytes(p) for p in pairs if p.name in records),
                        sum(pair_bytes(p) for p in pairs), None)
    resumed_bytes = progress.bytes_done
    svd_cost_of = {p.name: svd_cost.matrix_seconds(p.shape, _wants_rank(p, options.rank, sampled),
                                                    _wants_geometry(p, options.geometry, sampled)) for p in todo}
    progress.svd_total = sum(svd_cost_of.values())
    progress.svd_matrices_total = sum(1 for c in svd_cost_of.values() if c)
    if on_progress:
        on_progress(progress)

    by_name = {p.name: p for p in todo}
    plans = {p.name: plan_pieces(p, kernel.fused(p.compare_dtype)) for p in todo}
    pieces = [piece for plan in plans.values() for piece in plan]
    remaining = {name: len(plan) for name, plan in plans.items()}
    state: dict = {"acc": None, "mask": None}

    def fold(piece: Piece, stats) -> None:
        pair = by_name[piece.name]
        if state["acc"] is None:
            want_rank = _wants_rank(pair, options.rank, sampled)
            want_geometry = _wants_geometry(pair, options.geometry, sampled)
            state["acc"] = kernel.start(pair.name, pair.shape, pair.compare_dtype, want_rank, want_geometry,
                                        _counterfactuals(pair))
            state["mask"] = mask_files.MaskPart(parts, pair.name) if parts else None
            progress.current = pair.name
            if (want_rank or want_geometry) and len(pair.shape) == 2:
                svds.reading(pair, want_geometry)
        kernel.fold(state["acc"], stats)
        if state["mask"] is not None:
            state["mask"].add(stats.mask)
        base.release(_side(piece, pair.base.name))
        tuned.release(_side(piece, pair.tuned.name))
        progress.bytes_done += (piece.stop - piece.start) * (pair.base.itemsize + pair.tuned.itemsize)
        remaining[piece.name] -= 1
        if remaining[piece.name] == 0:
            acc = state["acc"]
            if state["mask"] is not None:
                state["mask"].close()
            state["acc"] = state["mask"] = None
            if acc.want_rank or acc.want_geometry:
                svds.submit(pair, acc)  # rank / geometry SVDs off the pass, on every core
            else:
                finished(pair, kernel.finish(acc))
        svds.collect()
        if on_progress:
            on_progress(progress)

    def finished(pair: Pair, stats: dict) -> None:
        record = tensor_record(pair, stats)
        quantization = quantization_record(base, tuned, pair.base.name, pair.tuned.name, codes.pop(pair.name))
        if quantization:  # fp8 blocks / MXFP4: the formats, and changed scales and codes
            record["quantization"] = quantization
        records[pair.name] = record
        progress.tensors_done += 1
        if on_tensor:
            on_tensor(record)
        if svd_cost_of.get(pair.name):
            progress.svd_done += svd_cost_of[pair.name]
            progress.svd_matrices_done += 1
            if on_progress:  # the SVD bar moves as its matrices finish, also after the pass has read the last byte
                on_progress(progress)

    def showing(pair: Pair) -> None:
        progress.current = f"geometry {pair.name}"  # the CLI shows "SVDs of <name>"
        if on_progress:
            on_progress(progress)

    svds = _SvdFinisher(kernel, device, finished, showing)

    codes = CodeCounts()  # fp8 blocks / MXFP4: stored codes that changed, from the pieces read

    def measure(piece: Piece, b: torch.Tensor, t: torch.Tensor):
        codes.add(piece.name, b, t)
        pair = by_name[piece.name]
        cols = pair.shape[1] if len(pair.shape) == 2 else None
        return kernel.measure(b, t, pair.compare_dtype, cols, _wants_rank(pair, options.rank, sampled),
                              _wants_geometry(pair, options.geometry, sampled), _counterfactuals(pair))

    threads = 1 if device.type == "cuda" else max(1, min(MAX_THREADS, cores()))
    # Piece threads keep one intra-op thread each, whatever an SVD thread set meanwhile.
    with svds, _torch_threads(1 if threads > 1 else torch.get_num_threads()), \
            ThreadPoolExecutor(threads, initializer=_one_thread if threads > 1 else None) as pool:
        # Pieces are measured on `threads` cores and folded strictly in order.
        pending: deque = deque()
        # Each side reads a tensor by its own name (they differ when a one-sided prefix was matched).
        base_pieces = [_side(p, by_name[p.name].base.name) for p in pieces]
        # A LoRA merge leaves most tensors as they are in its base: read those bytes once.
        same = _unchanged_by_tuned(base, tuned, todo)
        tuned_reads = tuned.iter_pieces([_side(p, by_name[p.name].tuned.name) for p in pieces if p.name not in same])
        for piece, (_, b) in zip(pieces, base.iter_pieces(base_pieces)):
            t = b if piece.name in same else next(tuned_reads)[1]
            pending.append((piece, pool.submit(measure, piece, b, t)))
            while len(pending) > 2 * threads:
                done_piece, future = pending.popleft()
                fold(done_piece, future.result())
        while pending:
            done_piece, future = pending.popleft()
            fold(done_piece, future.result())
        svds.drain()

    # Bytes this run actually read (a resumed run skips finished tensors): the sources' own
    # counters when they keep them, else the compared bytes this run measured.
    read_after = bytes_read(base, tuned)
    read = read_after - read_before if read_before is not None and read_after is not None else (
        progress.bytes_done - resumed_bytes)
    return PartResult(records, read, time.perf_counter() - started)


def finish(base: Source, tuned: Source, options: AnalysisOptions, records: Mapping[str, dict], *,
           plan: Plan | None = None, masks_dir: Path | None = None, bytes_read: int = 0,
           seconds: float = 0.0) -> dict:
    """The result from the records of every compared tensor (one pass's, or the union of any parts'),
    and masks_dir/masks.safetensors from their mask parts. `bytes_read` and `seconds` go to the
    summary as given (the sum over the parts' runs, the wall time of the whole)."""
    plan = plan or plan_analysis(base, tuned, options)
    pairing = plan.pairing
    missing = [p.name for p in pairing.pairs if p.name not in records]
    if missing:
        raise EngineError("internal", f"{len(missing)} compared tensors have no record (e.g. {missing[0]}).")
    # Tensors are read in file order but reported in name order, so the result (and every
    # float summed over it) does not depend on how the checkpoint was sharded or split.
    ordered = [records[name] for name in sorted((p.name for p in pairing.pairs), key=name_order)]
    result = build_result(base, tuned, options, ordered, pairing.unmatched, pairing.warnings)
    result["summary"].update(bytes_read=bytes_read, seconds=round(seconds, 3),
                             device=pick_device(options.device).type)
    result["patch"] = estimate_patch(result, tuned.total_bytes)
    if masks_dir is not None:
        mask_files.assemble(
            masks_dir,
            {p.name: list(p.shape) for p in sorted(pairing.pairs, key=lambda p: name_order(p.name))},
            {"tolerance": tolerance_key(options.tolerance), "base_sha": base.sha, "tuned_sha": tuned.sha},
        )
    return result


def _unchanged_by_tuned(base: Source, tuned: Source, pairs: list[Pair]) -> set[str]:
    """Tensors the tuned side reads straight from this very base source (an adapter's untouched ones)."""
    if getattr(tuned, "base", None) is not base:
        return set()
    touched = set(tuned.targets)
    return {p.name for p in pairs if p.tuned.name not in touched and p.tuned.name == p.base.name}


def _side(piece: Piece, name: str) -> Piece:
    return piece if piece.name == name else Piece(name, piece.start, piece.stop)
