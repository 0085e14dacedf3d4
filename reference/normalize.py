"""Normalization and its analytic backward, written once for every convention.

Every BatchNorm variant in the suite normalizes a channel with some centre m and some variance s2:

    y = gamma * (x - m) * r(s2) + beta,   r(s2) = 1 / sqrt(s2 + eps)   (eps inside the root; the standard)
                                          r(s2) = 1 / (sqrt(s2) + eps) (eps outside; a diagnosis hypothesis)

where m = a * mu(x) + m0 and s2 = c * v(x) + s0 depend on the batch mean mu and biased batch variance v:
  training, batch normalizer:   a = 1, c = 1 (c = n/(n-1) when normalizing with the unbiased variance)
  training, EMA-blended (equinox "ema"): a = c = alpha, m0 = (1 - alpha) * R_mean, s0 = (1 - alpha) * R_var
  inference:                    a = c = 0, m = R_mean, s2 = R_var (statistics are constants)
Dropping the gradient through the mean or the variance (a planted bug) sets a or c to 0 in the backward only.

The backward follows from the chain rule with d mu/dx_i = 1/n and d v/dx_i = 2 (x_i - mu)/n:

    dx    = gamma * r * (dy - a * mean(dy)) + gamma * r'(s2) * c * (2/n) * (x - mu) * sum(dy * (x - m))
    dgamma = sum(dy * (x - m) * r),   dbeta = sum(dy)

With a = c = 1 and eps inside the root this is the familiar
dx = gamma / (n * sigma) * [n * dy - sum(dy) - xhat * sum(dy * xhat)].
All functions accept complex input, so the second order can be taken by complex-step differentiation.
Statistics are kept with `keepdims`, so a leading batch of problems (used by the complex step) broadcasts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import blocked, fused


@dataclass(frozen=True)
class Normalizer:
    """How one step normalizes, per channel (arrays broadcastable against x)."""

    m: np.ndarray  # centre
    s2: np.ndarray  # variance inside r()
    mu: np.ndarray  # batch mean (where the variance's derivative is taken)
    a: float  # dm / dmu as the backward sees it
    c: float  # ds2 / dv as the backward sees it
    eps: float
    eps_placement: str = "inside_sqrt"


def reciprocal_std(s2, eps: float, placement: str):
    if placement == "inside_sqrt":
        return 1.0 / np.sqrt(s2 + eps)
    if placement == "outside_sqrt":
        return 1.0 / (np.sqrt(s2) + eps)
    raise ValueError(f"unknown eps placement {placement!r}")


def reciprocal_std_derivative(s2, eps: float, placement: str):
    """d r / d s2."""
    r = reciprocal_std(s2, eps, placement)
    if placement == "inside_sqrt":
        return -0.5 * r**3
    return -0.5 * r**2 / np.sqrt(s2)


def forward(x, gamma, beta, norm: Normalizer):
    r = reciprocal_std(norm.s2, norm.eps, norm.eps_placement)
    dims = fused.layout(x, _channel_axis(x, gamma, beta, norm.m, r), gamma, beta, norm.m, r)
    if dims:  # one pass in a compiled kernel (reference/fused.py), the same bits
        return fused.forward(x, gamma, beta, norm.m, r, dims)
    if not blocked.applies(x, gamma, beta, norm.m, r):
        if (all(np.asarray(a).dtype == np.float64 for a in (x, gamma, beta, norm.m, r))
                and np.broadcast_shapes(*(np.shape(a) for a in (x, gamma, beta, norm.m, r))) == np.shape(x)):
            y = np.subtract(x, norm.m)  # the expression below, formed in place: one x-sized array, not four
            np.multiply(gamma, y, out=y)
            np.multiply(y, r, out=y)
            return np.add(y, beta, out=y)
        return gamma * (x - norm.m) * r + beta
    # A large array: the same operations in the same order, one cache-sized block at a time, in place in y
    # (reference/blocked.py), so the same bits without four x-sized temporaries.
    y = np.empty(x.shape)
    for b in blocked.blocks(x.shape):
        yb = y[b]
        np.subtract(x[b], blocked.part(norm.m, b), out=yb)
        np.multiply(blocked.part(gamma, b), yb, out=yb)
        np.multiply(yb, blocked.part(r, b), out=yb)
        np.add(yb, blocked.part(beta, b), out=yb)
    return y


def backward(x, dy, gamma, norm: Normalizer, axes: tuple[int, ...], n: int):
    """(dx, dgamma, dbeta) with dgamma/dbeta keeping the reduced axes (keepdims)."""
    dy = np.broadcast_to(dy, np.broadcast_shapes(np.shape(dy), np.shape(x)))
    r = reciprocal_std(norm.s2, norm.eps, norm.eps_placement)
    operands = (gamma, norm.m, norm.mu, norm.s2, r)
    kept = [k for k in range(x.ndim) if k not in axes]
    dims = None
    if len(kept) == 1 and dy.flags.c_contiguous and dy.dtype == np.float64 and dy.shape == np.shape(x):
        axis = kept[0]
        dims = fused.layout(x, axis, *operands)
    if dims:  # two passes in compiled kernels (reference/fused.py), the same bits
        return fused.backward(x, dy, gamma, norm, r, axis, n, dims)
    if all(np.asarray(a).dtype == np.float64 for a in (x, dy, *operands)):
        return _backward_float64(x, dy, gamma, norm, r, axes, n)
    return _backward_expressions(x, dy, gamma, norm, r, axes, n)


def _backward_expressions(x, dy, gamma, norm: Normalizer, r, axes: tuple[int, ...], n: int):
    """The backward as the module docstring writes it; taken by complex-step and mixed-dtype inputs, and the
    specification `_backward_float64` is held to bit for bit (tests/unit/test_oracle_gradients.py)."""
    xm = x - norm.m
    dgamma = np.sum(dy * xm * r, axis=axes, keepdims=True)
    dbeta = np.sum(dy, axis=axes, keepdims=True)
    dx = gamma * r * dy
    if norm.a != 0.0:
        dx = dx - gamma * r * norm.a * np.mean(dy, axis=axes, keepdims=True)
    if norm.c != 0.0:
        rp = reciprocal_std_derivative(norm.s2, norm.eps, norm.eps_placement)
        dx = dx + gamma * rp * norm.c * (2.0 / n) * (x - norm.mu) * np.sum(dy * xm, axis=axes, keepdims=True)
    return dx, dgamma, dbeta


def _backward_float64(x, dy, gamma, norm: Normalizer, r, axes: tuple[int, ...], n: int):
    """`backward`'s expressions, element by element the same operations in the same order (so the same bits),
    in two x-sized arrays instead of ten: results are formed in place, and dy * (x - m), which the expressions
    form twice, once."""
    xm = x - norm.m
    p = dy * xm
    s = np.sum(p, axis=axes, keepdims=True) if norm.c != 0.0 else None
    np.multiply(p, r, out=p)
    dgamma = np.sum(p, axis=axes, keepdims=True)
    dbeta = np.sum(dy, axis=axes, keepdims=True)
    dx = np.multiply(gamma * r, dy, out=p)  # p is summed: its buffer becomes dx
    if norm.a != 0.0:
        np.subtract(dx, gamma * r * norm.a * np.mean(dy, axis=axes, keepdims=True), out=dx)
    if norm.c != 0.0:
        rp = reciprocal_std_derivative(norm.s2, norm.eps, norm.eps_placement)
        t = np.subtract(x, norm.mu, out=xm)  # xm is no longer needed
        np.multiply(gamma * rp * norm.c * (2.0 / n), t, out=t)
        np.multiply(t, s, out=t)
        np.add(dx, t, out=dx)
    return dx, dgamma, dbeta


def _channel_axis(x, *per_channel) -> int:
    """The axis along which the per-channel operands (kept with keepdims) vary; 1 when none does (scalars, or
    one channel)."""
    for a in per_channel:
        shape = np.shape(a)
        if len(shape) == np.ndim(x):
            varying = [k for k, n in enumerate(shape) if n != 1]
            if len(varying) == 1:
                return varying[0]
    return 1 if np.ndim(x) > 1 else 0
