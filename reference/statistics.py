"""Per-channel batch statistics: exact (float64) and as a named algorithm would compute them in a narrow format.

For a channel axis `axis`, statistics reduce every other axis: n = prod(shape) / C elements per channel.
"""
from __future__ import annotations

import numpy as np

from . import blocked, fused
from .dtypes import round_to


def reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    axis = axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def to_channels(stat: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a (C,) vector so it broadcasts along `axis` of an ndim-array."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return np.reshape(stat, shape)


def moments(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact-as-float64-allows mean and *biased* variance per channel.

    Corrected two-pass (Chan, Golub & LeVeque 1983; Bjorck): the second pass subtracts the rounding error
    left in the mean, so the variance's relative error is ~n*u independent of the mean's magnitude.
    Works unchanged on complex input (complex-step differentiation passes through here). Large float64
    arrays make the same three passes in fused kernels (reference/fused.py, with numba: the same bits), or
    else one cache-sized block at a time (`_moments_blocked`).
    """
    axes = reduce_axes(x.ndim, axis)
    n = x.size // x.shape[axis]
    dims = fused.layout(x, axis)
    if dims:
        return fused.moments(x, axis, dims)
    if blocked.applies(x):
        return _moments_blocked(x, axis, axes, n)
    mean = np.mean(x, axis=axes)
    centered = x - to_channels(mean, x.ndim, axis)
    residual = np.sum(centered, axis=axes) / n
    mean = _corrected(mean, residual)
    if x.dtype == np.float64 and mean.dtype == np.float64:  # the same operations, in one x-sized array
        np.subtract(x, to_channels(mean, x.ndim, axis), out=centered)
        return mean, np.sum(np.multiply(centered, centered, out=centered), axis=axes) / n
    centered = x - to_channels(mean, x.ndim, axis)
    var = np.sum(centered * centered, axis=axes) / n
    return mean, var


def _moments_blocked(x: np.ndarray, axis: int, axes: tuple[int, ...], n: int):
    """`moments` on a large array: the same passes (sum; sum of deviations from the mean, to correct it; sum
    of squared deviations from the corrected mean), each reading x once, block by block (reference/blocked.py:
    the deviations never leave the cache). Per-channel sums are accumulated across blocks."""
    index = list(blocked.blocks(x.shape))

    letters = "abcdefghijklmnopqrstuvwxyz"[:x.ndim]
    squares = f"{letters},{letters}->{letters[axis]}"  # sum of d * d over every axis but the channel axis

    def channel_sum(term) -> np.ndarray:
        total = np.zeros(to_channels(np.zeros(x.shape[axis]), x.ndim, axis).shape)
        for b in index:
            acc = blocked.part(total, b)  # a view: the channels this block holds
            acc += term(x[b], b).reshape(acc.shape)
        return total

    def deviations(mean, xb, b):
        return xb - blocked.part(mean, b)

    mean = channel_sum(lambda xb, b: np.sum(xb, axis=axes)) / n
    residual = channel_sum(lambda xb, b, m=mean: np.sum(deviations(m, xb, b), axis=axes)) / n
    mean = _corrected(mean, residual)
    var = channel_sum(lambda xb, b: np.einsum(squares, *2 * [deviations(mean, xb, b)])) / n
    return mean.reshape(-1), var.reshape(-1)


def _corrected(mean, residual):
    """The mean plus its correction; a channel whose mean is +-Inf (an infinite input) keeps it: the
    correction would be Inf - Inf = NaN, and the mean of values with one +Inf is +Inf."""
    corrected = mean + residual
    if np.all(np.isfinite(mean)):
        return corrected
    return np.where(np.isinf(mean), mean, corrected)


def unbiased(var_biased: np.ndarray, n: int) -> np.ndarray:
    """Bessel's correction n/(n-1); n = 1 gives inf (0/0 stays NaN), as the arithmetic does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return var_biased * (n / (n - 1)) if n > 1 else var_biased * np.float64(np.inf)


def moments_in(x: np.ndarray, axis: int, algorithm: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance as `algorithm` computes them with every operation rounded to `dtype`.

    This deliberately reproduces a *worse* algorithm so the oracle can predict what a framework using it
    returns: "fast" is E[x^2] - E[x]^2 (cancels catastrophically when |mean| >> std), "fast_clamped" the
    same clamped at 0 (flax), "two_pass" mean first then mean of squared deviations. Summation order is
    NumPy's pairwise order, which is not any framework's: the prediction is exact in kind and magnitude,
    not bit for bit.
    """
    axes = reduce_axes(x.ndim, axis)
    n = x.size // x.shape[axis]

    def r(a):
        return round_to(a, dtype)

    if dtype in ("float64", "float32", "float16"):
        xd = x.astype(dtype)
        mean = (np.sum(xd, axis=axes, dtype=dtype) / np.asarray(n, dtype=dtype)).astype(dtype)
        if algorithm == "two_pass":
            c = xd - to_channels(mean, x.ndim, axis)
            var = np.sum(c * c, axis=axes, dtype=dtype) / np.asarray(n, dtype=dtype)
        else:
            sq = np.sum(xd * xd, axis=axes, dtype=dtype) / np.asarray(n, dtype=dtype)
            var = sq - mean * mean
        mean, var = mean.astype(np.float64), var.astype(np.float64)
    else:  # bfloat16 has no NumPy type: compute in float32 and round after every operation
        xd = r(x)
        mean = r(r(np.sum(xd.astype(np.float32), axis=axes, dtype=np.float32)) / n)
        if algorithm == "two_pass":
            c = r(xd - to_channels(mean, x.ndim, axis))
            var = r(r(np.sum(r(c * c).astype(np.float32), axis=axes, dtype=np.float32)) / n)
        else:
            sq = r(r(np.sum(r(xd * xd).astype(np.float32), axis=axes, dtype=np.float32)) / n)
            var = r(sq - r(mean * mean))
    if algorithm == "fast_clamped":
        var = np.maximum(var, 0.0)
    elif algorithm not in ("fast", "two_pass"):
        raise ValueError(f"unknown variance algorithm {algorithm!r}")
    return mean, var
