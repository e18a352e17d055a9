"""The top eigenvectors of a symmetric matrix with all its eigenvalues, from OpenBLAS's LAPACK.

Geometry needs, of each side's float64 Gram matrix G (r x r), every eigenvalue but only the top
k = 20 % of the eigenvectors. `torch.linalg.eigh` (LAPACK's syevd) computes all r vectors and
torch exposes no subset solver, so this runs LAPACK's own steps through ctypes, as syevr does:

    dsytrd   G = Q T Q^T, T tridiagonal (Q kept as Householder reflectors in G's storage)
    dsterf   every eigenvalue of T (values only: O(r^2))
    dstemr   the top k eigenvectors of T (MRRR: O(r k))
    dormtr   Q times them (2 r^2 k flops, where all r vectors cost 2 r^3)

The reduction and dsterf are backward stable, so the eigenvalues err by O(r eps ||G||_2) as
syevd's do and `spectra.gram_error_bound` holds for them unchanged (LAPACK Users' Guide 4.7);
dstemr's vectors have residuals and orthogonality O(r eps) like syevd's (Dhillon, Parlett and
Voemel 2006), which is what geometry's subspaces rest on. tests/engine/test_lapack.py holds it
to torch's eigh. Time: see bench/README.md, "SVD phase against modeldelta".

The library is the `scipy-openblas64` wheel's (the OpenBLAS that numpy's wheels embed, shipped
with its headers for linking against it): 64-bit integers, `scipy_` prefix, `64_` suffix. Its
calls release the GIL, so the SVD phase's two jobs run them side by side. Where it cannot be
loaded, or for a CUDA tensor, `top_eigh` is `torch.linalg.eigh`.
"""

from __future__ import annotations

import ctypes
import functools

import torch

COL_MAJOR = 102  # LAPACKE_COL_MAJOR: a C-contiguous symmetric matrix is its own column-major self
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


class _Lapack:
    def __init__(self, dll: ctypes.CDLL):
        def fn(name: str, *args) -> ctypes._CFuncPtr:
            f = getattr(dll, f"scipy_LAPACKE_{name}64_")
            f.restype, f.argtypes = _I64, list(args)
            return f

        c = ctypes.c_char
        self.sytrd = fn("dsytrd", ctypes.c_int, c, _I64, _PTR, _I64, _PTR, _PTR, _PTR)
        self.sterf = fn("dsterf", _I64, _PTR, _PTR)
        self.stemr = fn("dstemr", ctypes.c_int, c, c, _I64, _PTR, _PTR, ctypes.c_double, ctypes.c_double,
                        _I64, _I64, ctypes.POINTER(_I64), _PTR, _PTR, _I64, _I64, _PTR, ctypes.POINTER(_I64))
        self.ormtr = fn("dormtr", ctypes.c_int, c, c, c, _I64, _I64, _PTR, _I64, _PTR, _PTR, _I64)
        self.set_threads = dll.scipy_openblas_set_num_threads64_
        self.set_threads.argtypes, self.set_threads.restype = [ctypes.c_int], None


@functools.cache
def _lapack() -> _Lapack | None:
    try:
        import scipy_openblas64  # loads the library (RTLD_GLOBAL) as it is imported
        return _Lapack(scipy_openblas64.dll)
    except (ImportError, OSError, AttributeError):
        return None


def available() -> bool:
    return _lapack() is not None


def set_threads(n: int) -> None:
    """OpenBLAS's thread count (one setting per process, unlike torch's per-thread one): the SVD
    phase sets it as it sets torch's, one thread per job when two run, every core for one alone."""
    lib = _lapack()
    if lib is not None:
        lib.set_threads(max(1, int(n)))


class LapackError(RuntimeError):
    pass


def _check(info: int, name: str) -> None:
    if info != 0:
        raise LapackError(f"{name} returned info={info}")


def top_eigh(g: torch.Tensor, k: int, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(every eigenvalue ascending (r,), the eigenvectors of the top k (r, k), ascending like
    torch.linalg.eigh's last k columns) of symmetric g, read from its lower triangle.
    `overwrite`: g may be destroyed (it then holds the reflectors): no r x r copy."""
    lib = _lapack()
    r = g.shape[0]
    k = max(0, min(k, r))
    if lib is None or g.device.type != "cpu" or g.dtype != torch.float64 or r < 2 or k == 0:
        lam, q = torch.linalg.eigh(g)
        return lam, q[:, r - k:]
    # LAPACK reads a C-contiguous (r, r) buffer as the transpose: the same symmetric matrix, with
    # torch's lower triangle in LAPACK's upper one
    a = g if overwrite and g.is_contiguous() else g.tril().contiguous()
    d = torch.empty(r, dtype=torch.float64)
    e = torch.zeros(r, dtype=torch.float64)  # dstemr wants r entries, the last one workspace
    tau = torch.empty(r - 1, dtype=torch.float64)
    _check(lib.sytrd(COL_MAJOR, b"U", r, a.data_ptr(), r, d.data_ptr(), e.data_ptr(), tau.data_ptr()), "dsytrd")
    lam, off = d.clone(), e.clone()
    _check(lib.sterf(r, lam.data_ptr(), off.data_ptr()), "dsterf")  # ascending
    w = torch.empty(r, dtype=torch.float64)
    zt = torch.empty(k, r, dtype=torch.float64)  # column-major (r, k): its transpose in C order
    # TRYRAC off: T comes from a backward-stable reduction of g, so its eigenvalues are only as
    # good as r eps ||g|| absolutely and refining them to relative accuracy buys nothing
    # (r = 2048, k = 410, one thread: dstemr 0.31 -> 0.20-0.28 s on two Gram matrices)
    found, tryrac = _I64(), _I64(0)
    support = torch.empty(2 * k, dtype=torch.int64)
    _check(lib.stemr(COL_MAJOR, b"V", b"I", r, d.data_ptr(), e.data_ptr(), 0.0, 0.0, r - k + 1, r,
                     ctypes.byref(found), w.data_ptr(), zt.data_ptr(), r, k, support.data_ptr(),
                     ctypes.byref(tryrac)), "dstemr")
    if found.value != k:
        raise LapackError(f"dstemr found {found.value} of {k} eigenvectors")
    _check(lib.ormtr(COL_MAJOR, b"L", b"U", b"N", r, k, a.data_ptr(), r, tau.data_ptr(), zt.data_ptr(), r), "dormtr")
    return lam, zt.T
