"""Fused kernels for the oracle's large arrays, compiled with numba when it is installed (`bnconform[fast]`).

Why: on a 100 MB batch the whole-array NumPy expressions move an x-sized temporary per operation, and even the
blocked path (reference/blocked.py) pays NumPy's per-call overhead a dozen times per block. These kernels make
each pass of the algorithm read x (and dy) once and write y (or dx) once.

Bit for bit the plain path's results: every element goes through the same operations in the same order, and
every per-channel sum is formed in NumPy's own order. NumPy (2.4 here; the test checks whichever is installed)
reduces a C-contiguous array over all axes but `axis` row by row: a row is the T contiguous elements after the channel axis, summed by NumPy's
pairwise summation (`fused_kernels.pairwise`, after numpy/_core/src/umath/loops_utils.h.src), and the rows of one
channel are added to an accumulator that starts at 0.0, in memory order; with T = 1 (channels last) each
element is added to it in turn. tests/unit/test_oracle_fused.py holds the kernels to bit identity with the plain
path, so a NumPy that changed its order would fail there, not drift silently.

Without numba, `available()` is False and the oracle takes the blocked path (reference/blocked.py: the same
normalization bits, sums within a few ulp) or the plain one.
"""
from __future__ import annotations

import numpy as np

from . import blocked

_kernels = None  # reference.fused_kernels once imported; False: numba is not installed


# The terms summed, formed element by element as the plain path forms its temporaries:
X, DEVIATION, SQUARE, DY_XM, DY_XM_R = 0, 1, 2, 3, 4  # x, x - m, (x - m)*(x - m), dy*(x - m), dy*(x - m)*r


def available() -> bool:
    """Whether numba is installed (the extra "fast"); imports the kernels on first use."""
    global _kernels
    if _kernels is None:
        try:
            from . import fused_kernels
        except ImportError:
            _kernels = False
        else:
            _kernels = fused_kernels
    return _kernels is not False


# The fused kernels return the plain path's bits, so they could take smaller arrays than the blocked path (whose
# sums differ by rounding). They take the same ones, from blocked.LARGE (2^21) elements: below it they do not pay
# for themselves in a conformance run. On the default tier's realistic cases (at most 1.6 M elements) they save
# 27 ms per oracle run on the largest, 5 ms on another, and lose 13 ms on (256, 1024) (channels last), while
# each worker process pays ~0.35 s to load them from numba's cache, and ~12-20 s to compile them on a fresh
# checkout (2 Dec 2026, 2 cores). Tests move the threshold with blocked.LARGE.
FUSED_SHIFT = 0


def layout(x, axis: int, *per_channel) -> tuple[int, int, int] | None:
    """(L, C, T) when `x` takes the fused path: a C-contiguous real float64 array of at least
    blocked.LARGE >> FUSED_SHIFT elements (blocked.applies) whose per-channel operands are scalars or
    (1, .., C, .., 1) arrays; x viewed as (L, C, T). None otherwise."""
    if (not blocked.applies(x, *per_channel, large=blocked.LARGE >> FUSED_SHIFT) or not x.flags.c_contiguous
            or not available()):
        return None
    axis %= x.ndim
    for a in per_channel:
        a = np.asarray(a)
        if a.ndim and any(n != 1 for k, n in enumerate(a.shape) if k != axis):
            return None
    C = x.shape[axis]
    if C == 1:  # NumPy drops the length-1 channel axis and reduces the whole array as one row
        return 1, 1, x.size
    T = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    return x.size // (C * T), C, T


def per_channel(a, C: int) -> np.ndarray:
    """A scalar or (1, .., C, .., 1) operand as a contiguous (C,) vector (the same values)."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=np.float64).reshape(-1), (C,)))


def _flat_ranges(shape) -> tuple[np.ndarray, np.ndarray]:
    """The flat [lo, hi) ranges of the blocks of blocked.blocks, as two int64 arrays (the kernels' threads take
    them in turn): C-order blocks with whole trailing axes are contiguous. Large blocks, so the per-block
    overhead vanishes."""
    strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
    los, his = [], []
    for b in blocked.blocks(shape, FORWARD_BLOCK):
        lo = sum(int(s.start or 0) * int(st) for s, st in zip(b, strides))
        size = 1
        for s, n in zip(b, shape):
            start, stop, _ = s.indices(n)
            size *= stop - start
        los.append(lo)
        his.append(lo + size)
    return np.array(los, dtype=np.int64), np.array(his, dtype=np.int64)


FORWARD_BLOCK = 1 << 20  # elements per block of the elementwise passes, the threads' unit of work (8 MB of float64)


def moments(x, axis: int, dims: tuple[int, int, int]):
    """statistics.moments' corrected two-pass mean and biased variance, the same bits."""
    L, C, T = dims
    flat = x.reshape(-1)
    n = x.size // C
    if T > 1:
        return _kernels.channel_moments(flat, L, C, T, n)
    ones = np.ones(C)
    mean = _kernels.channel_sums(flat, flat, L, C, T, ones, ones, X) / n
    residual = _kernels.channel_sums(flat, flat, L, C, T, mean, ones, DEVIATION) / n
    from .statistics import _corrected

    mean = _corrected(mean, residual)  # as the plain path: an infinite mean stays infinite
    var = _kernels.channel_sums(flat, flat, L, C, T, mean, ones, SQUARE) / n
    return mean, var


def forward(x, gamma, beta, m, r, dims):
    """normalize.forward's y = gamma * (x - m) * r + beta, the same bits."""
    _, C, T = dims
    y = np.empty(x.shape)
    xf, yf = x.reshape(-1), y.reshape(-1)
    g, mm, rr, b = (per_channel(a, C) for a in (gamma, m, r, beta))
    _kernels.forward(xf, yf, *_flat_ranges(x.shape), C, T, g, mm, rr, b)
    return y


def backward(x, dy, gamma, norm, r, axis: int, n: int, dims):
    """normalize.backward's (dx, dgamma, dbeta) (keepdims), the same bits: the per-channel factors by the same
    NumPy expressions, the elementwise terms and sums by the kernels."""
    from .normalize import reciprocal_std_derivative

    _, C, T = dims
    shape = [1] * x.ndim
    shape[axis] = C
    L = dims[0]
    xf, dyf = x.reshape(-1), dy.reshape(-1)
    dgamma, dbeta, dyxm = _kernels.backward_sums(xf, dyf, L, C, T, per_channel(norm.m, C), per_channel(r, C))
    dgamma, dbeta, dyxm = (v.reshape(shape) for v in (dgamma, dbeta, dyxm))
    gr = gamma * r
    zeros = np.zeros(shape)
    k1 = gamma * r * norm.a * (dbeta / n) if norm.a != 0.0 else zeros  # np.mean(dy) = np.sum(dy) / n
    k2 = zeros
    if norm.c != 0.0:
        rp = reciprocal_std_derivative(norm.s2, norm.eps, norm.eps_placement)
        k2 = gamma * rp * norm.c * (2.0 / n)
    dx = np.empty(x.shape)
    dxf = dx.reshape(-1)
    args = [per_channel(a, C) for a in (gr, k1, k2, norm.mu, dyxm)]
    _kernels.backward_dx(xf, dyf, dxf, *_flat_ranges(x.shape), C, T, args[0], args[1], norm.a != 0.0, args[2],
                         args[3], args[4], norm.c != 0.0)
    return dx, dgamma, dbeta
