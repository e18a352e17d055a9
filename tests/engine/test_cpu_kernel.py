"""The fused CPU kernel's own paths against the torch path (itself held to the float64
reference in test_kernel_reference.py): chunk edges, sparse and dense changes, NaN in
either side or both with the same bits, signed zeros, infinities, with and without the
AVX-512 compress stores and with and without masks. Also the on-disk content-id cache."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
import torch

from worker.engine.checkpoints import local
from worker.engine.kernel import numba_backend as cpu_kernel
from worker.engine.kernel.accumulator import EXACT_TOLERANCES, Kernel

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]


def _pair(n: int, dtype: torch.dtype, share: float, seed: int, specials: bool):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g) * 0.02
    base = torch.where(torch.rand(n, generator=g) < 0.1, base * 1e-5, base)
    step = torch.randn(n, generator=g) * 10.0 ** torch.randint(-9, -1, (n,), generator=g).float()
    changed = torch.rand(n, generator=g) < share
    b = base.to(dtype)
    u = torch.where(changed, (base + step).to(dtype).float(), b.float()).to(dtype)
    if dtype in (torch.bfloat16, torch.float16, torch.float32):  # one-ULP moves
        one = torch.rand(n, generator=g) < share / 2
        u = torch.where(one, torch.nextafter(b, torch.full_like(b, 1.0)), u)
    if specials and n >= 40:
        nan = float("nan")
        vals = [(nan, nan), (nan, 1.0), (1.0, nan), (0.0, -0.0), (-0.0, 0.0), (math.inf, math.inf),
                (-math.inf, math.inf), (math.inf, 1.0), (0.5, -0.5), (-1e-3, 1e-3)]
        if dtype == torch.float8_e4m3fn:  # no infinities: the largest finite value instead
            vals = [(x if math.isfinite(x) or x != x else math.copysign(448.0, x),
                     y if math.isfinite(y) or y != y else math.copysign(448.0, y)) for x, y in vals]
        pos = torch.randperm(n, generator=g)[: len(vals)]
        for p, (x, y) in zip(pos.tolist(), vals):
            b[p] = torch.tensor(x).to(dtype)
            u[p] = torch.tensor(y).to(dtype)
    return b, u


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("share", [0.0, 0.004, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("compress", [True, False])
def test_fused_kernel_equals_the_torch_path(monkeypatch, dtype, share, compress):
    if compress and not cpu_kernel._has_compress():
        pytest.skip("no AVX-512 compress stores on this CPU")
    monkeypatch.setattr(cpu_kernel, "_COMPRESS", compress)
    fused_kernel = Kernel(list(EXACT_TOLERANCES), 3e-5, torch.device("cpu"), backend="numba")
    torch_kernel = Kernel(list(EXACT_TOLERANCES), 3e-5, torch.device("cpu"), backend="torch")
    for seed, (n, cols) in enumerate([(1, None), (17, None), (3 * cpu_kernel.CHUNK + 5, None),
                                      (37 * 29, 29), (5 * 1000, 1000), (2 * cpu_kernel.CHUNK, cpu_kernel.CHUNK // 2),
                                      (3 * 1500, 1500)]):
        b, u = _pair(n, dtype, share, seed, specials=True)
        for keep in (True, False):
            fused_kernel.keep_masks = torch_kernel.keep_masks = keep
            cf = {torch.float32: 2, torch.float16: 1}.get(dtype, 0)  # storage counterfactuals as for a same-dtype pair
            fused = fused_kernel.measure(b, u, dtype, cols, False, cf_kinds=cf)
            ref = torch_kernel.measure(b, u, dtype, cols, False, cf_kinds=cf)
            where = (str(dtype), share, n, cols, keep)
            assert torch.equal(fused.curve, ref.curve), where
            assert torch.equal(fused.ulp, ref.ulp), where
            assert fused.nan == ref.nan, where
            assert fused.max_abs == ref.max_abs, where
            assert math.isclose(fused.delta_sq, ref.delta_sq, rel_tol=1e-12), where
            assert math.isclose(fused.base_sq, ref.base_sq, rel_tol=1e-12), where
            assert fused.chosen_changed == int(ref.mask.sum()), where
            # the precision view
            fp, rp = fused.precision, ref.precision
            assert np.array_equal(fp.compared, rp.compared), where
            # class 0 and the no-ratio bucket hold the unchanged elements, which the fused loop never visits
            assert np.array_equal(fp.classes[:, 1:], rp.classes[:, 1:]), where
            assert np.array_equal(fp.ratio[:, :-1], rp.ratio[:, :-1]), where
            assert fp.classes.sum() == fp.ratio.sum(), where  # both count every differing element
            assert np.array_equal(fp.counterfactual[:, 1:], rp.counterfactual[:, 1:]), where
            assert fp.counterfactual.shape[0] == cf, where
            for a, r in ((fp.dot, rp.dot), (fp.tuned_sq, rp.tuned_sq)):
                # with infinities in a piece both are non-finite (no cosine), in either order of sums
                assert (not math.isfinite(a) and not math.isfinite(r)) or math.isclose(a, r, rel_tol=1e-12), where
            if keep:
                assert torch.equal(fused.mask, ref.mask), where
            else:
                assert fused.mask is None
            if cols:
                assert fused.rows_touched == ref.rows_touched, where
                assert torch.equal(fused.cols_touched, ref.cols_touched), where


@pytest.mark.parametrize("raw, shift, top", [(np.uint16, 7, 255), (np.uint32, 23, 255), (np.uint16, 10, 31),
                                             (np.uint8, 3, 15)])
def test_windowed_exponent_histogram_counts_as_the_plain_one(raw, shift, top):
    """The AVX-512 path counts the eight exponents under each chunk's largest 64 at a time and the
    tail one by one: every key lands once, wherever the chunk's largest lies."""
    if not cpu_kernel._has_compress():
        pytest.skip("no AVX-512 compress stores on this CPU")
    from worker.engine.kernel import numba_precision as precision
    gen = np.random.default_rng(int(shift))
    for n in (1, 63, 64, 65, 1000, cpu_kernel.CHUNK):
        # exponents crowded under a chunk's largest, with a long tail of small ones (as weights)
        e = np.clip(top - 2 - gen.geometric(0.3, n), 0, top)
        e[gen.random(n) < 0.01] = top  # inf / NaN patterns
        sign = gen.integers(0, 2, n).astype(np.uint64) << np.uint64(8 * np.dtype(raw).itemsize - 1)
        b = (sign | (e.astype(np.uint64) << np.uint64(shift)) | gen.integers(0, 1 << shift, n).astype(np.uint64))
        b = b.astype(raw)
        b[gen.random(n) < 0.05] = 0  # zeros: key 0, in the tail below any window
        plain = np.zeros((8, top + 1), np.uint32)
        windowed = np.zeros((8, top + 1), np.uint32)
        precision.key_histogram(b, plain, shift, top)
        precision.key_histogram_window(b, windowed, shift, top, np.empty(n, np.uint8), np.empty(n, np.uint8),
                                       np.empty(8, np.int64))
        assert np.array_equal(windowed.sum(axis=0), plain.sum(axis=0)), n
        assert windowed[1:].sum() == 0 and windowed.sum() == n


# --- content ids: remembered on disk by stat key ------------------------------------------

@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_without_the_precision_view_the_counts_are_the_same(backend):
    """The bench's "no view" pass (AnalysisOptions(precision=False)) skips the view and nothing else."""
    b, u = _pair(5 * 1000, torch.bfloat16, 0.3, 7, specials=True)
    on = Kernel(list(EXACT_TOLERANCES), 3e-5, torch.device("cpu"), backend=backend)
    off = Kernel(list(EXACT_TOLERANCES), 3e-5, torch.device("cpu"), backend=backend, precision=False)
    with_view, without = on.measure(b, u, torch.bfloat16, 1000, False), off.measure(b, u, torch.bfloat16, 1000, False)
    assert with_view.precision is not None and without.precision is None
    assert torch.equal(with_view.curve, without.curve) and torch.equal(with_view.ulp, without.ulp)
    assert torch.equal(with_view.mask, without.mask) and with_view.rows_touched == without.rows_touched
    acc = off.start("w", (5, 1000), torch.bfloat16, False)
    off.fold(acc, without)
    record = off.finish(acc)
    assert record["precision"] is None and record["cosine"] is None
    assert record["changed"] == on.finish(_folded(on, with_view))["changed"]


def _folded(kernel, piece):
    acc = kernel.start("w", (5, 1000), torch.bfloat16, False)
    kernel.fold(acc, piece)
    return acc


@pytest.fixture
def digest_cache(tmp_path, monkeypatch):
    folder = tmp_path / "digests"
    monkeypatch.setenv("SUBNETSCOPE_DIGEST_CACHE", str(folder))
    monkeypatch.setattr(local, "_FILE_DIGESTS", {})
    return folder


def _forget_in_process(monkeypatch):
    monkeypatch.setattr(local, "_FILE_DIGESTS", {})  # as a new process would


def test_a_settled_file_is_hashed_once_across_processes(tmp_path, digest_cache, monkeypatch):
    monkeypatch.setattr(local, "_SETTLE_NS", -(10**18))  # as if written long ago
    f = tmp_path / "w.safetensors"
    f.write_bytes(os.urandom(1 << 16))
    first = local._file_digest(f)
    assert len(list(digest_cache.rglob("*.json"))) == 1
    _forget_in_process(monkeypatch)

    class NoHashing:
        def __init__(self, *a, **k):
            raise AssertionError("hashed again")

    monkeypatch.setattr(local.blake3, "blake3", NoHashing)
    assert local._file_digest(f) == first


def test_an_in_place_rewrite_that_keeps_size_and_mtime_is_seen(tmp_path, digest_cache, monkeypatch):
    monkeypatch.setattr(local, "_SETTLE_NS", -(10**18))
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 4096)
    st = f.stat()
    first = local._file_digest(f)
    time.sleep(0.05)  # past the file system's timestamp tick
    with open(f, "r+b") as h:  # same inode, same size
        h.write(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime moves anyway
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    _forget_in_process(monkeypatch)
    assert local._file_digest(f) != first


def test_a_recent_file_is_hashed_but_not_remembered(tmp_path, digest_cache):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x" * 1000)
    digest = local._file_digest(f)
    assert digest == local.blake3.blake3(b"x" * 1000).hexdigest()
    assert not digest_cache.exists() and not local._FILE_DIGESTS


def test_the_disk_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBNETSCOPE_DIGEST_CACHE", "off")
    monkeypatch.setattr(local, "_SETTLE_NS", -(10**18))
    assert local._digest_cache_dir() is None
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"y" * 10)
    assert local._file_digest(f) == local.blake3.blake3(b"y" * 10).hexdigest()


def test_a_corrupt_cache_entry_is_ignored(tmp_path, digest_cache, monkeypatch):
    monkeypatch.setattr(local, "_SETTLE_NS", -(10**18))
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"z" * 100)
    right = local._file_digest(f)
    for entry in digest_cache.rglob("*.json"):
        entry.write_text("{not json")
    _forget_in_process(monkeypatch)
    assert local._file_digest(f) == right
    np.testing.assert_equal(len(list(digest_cache.rglob("*.json"))), 1)
