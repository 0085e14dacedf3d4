"""Run a Problem's mode sequence under a Convention and return every quantity (a Trace).

Step semantics (every framework in the suite agrees on these; what differs is in the Convention):
  - a training step computes the batch mean and biased variance of its batch, normalizes (with the batch
    statistics, or the freshly updated running ones under `train_normalizer="running"`), and updates the
    running statistics when the problem tracks them;
  - an inference step normalizes with the running statistics, or with the batch statistics when the problem
    does not track running statistics (torch track_running_stats=False);
  - gradients are those of <y, dy> at the last step, in that step's mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import normalize as nz
from .convention import Convention, Problem
from .running import RunningState, step_weight, update
from .statistics import moments, moments_in, reduce_axes, to_channels, unbiased

COMPLEX_STEP = 1e-20


@dataclass
class Trace:
    """Everything the oracle computed for one problem under one convention.

    Quantities are named as in `convention.QUANTITIES`. The per-step intermediates (`step_*`) are what the
    tolerance model needs: the batch statistics and normalizer each step actually used.
    """

    quantities: dict[str, np.ndarray]
    step_mean: np.ndarray  # (steps, C) exact batch mean of every step's batch
    step_var: np.ndarray  # (steps, C) exact biased batch variance
    norm_mean: np.ndarray  # (steps, C) centre each step normalized with
    norm_var: np.ndarray  # (steps, C) variance each step normalized with
    weights: np.ndarray  # (steps,) weight of the new batch statistic in each step's running update (0 in eval)
    grad_weights: tuple[float, float]  # (a, c) of the last step: how its backward sees the mean and variance
    sources: tuple[str, ...]  # per step, what normalized it: "batch", "running" (before), "updated" (after)
    alpha: float | None
    eps: float
    not_applicable: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.quantities[name]


def _normalizer(x, axis, n, mode, state_before, conv, eps, track, blend, stats):
    """The Normalizer a step uses. `stats` = (mu, v) with keepdims, already computed for x; `axis` is the
    channel axis of x (shifted by one when x carries a leading batch of perturbations). `blend` is set for
    a training step normalized with the updated running statistics: (offset_mean, offset_var, w, vfac)
    such that R_new = offset + w * B(x), B = (mu, vfac * v); w is dR_new/dB for every averaging rule."""
    mu, v = stats
    ndim = x.ndim

    def ch(vec):
        return to_channels(vec, ndim, axis)

    if mode == "eval" and track:  # ("batch": an inference step normalized with its batch statistics)
        return nz.Normalizer(ch(state_before.mean), ch(state_before.var), mu, 0.0, 0.0, eps, conv.eps_placement)
    a = 1.0 if conv.grad_through_mean else 0.0
    c = 1.0 if conv.grad_through_var else 0.0
    if blend is not None:
        om, ov, w, vfac = blend
        return nz.Normalizer(ch(om) + w * mu, ch(ov) + w * vfac * v, mu, a * w, c * w * vfac, eps,
                             conv.eps_placement)
    if conv.normalize_var == "unbiased":
        fac = n / (n - 1) if n > 1 else np.inf
        return nz.Normalizer(mu, v * fac, mu, a, c * fac, eps, conv.eps_placement)
    return nz.Normalizer(mu, v, mu, a, c, eps, conv.eps_placement)


def _keepdims_moments(x, axes):
    """Complex-safe two-pass moments with a correction pass, keeping dims (works with a leading batch)."""
    mu = np.mean(x, axis=axes, keepdims=True)
    mu = mu + np.mean(x - mu, axis=axes, keepdims=True)
    d = x - mu
    return mu, np.mean(d * d, axis=axes, keepdims=True)


def simulate(problem: Problem, convention: Convention, compute_dtype: str | None = None,
             second_order: bool = True) -> Trace:
    """Evaluate `problem` under `convention`.

    compute_dtype=None gives the exact (float64) answer whatever the variance algorithm: the expected values
    of conformance checks. A dtype name evaluates the batch statistics with the convention's variance
    algorithm in that format instead, to predict what an implementation using that algorithm returns.
    second_order=False skips d2x / d2gamma (they cost size^2). Complex inputs are accepted (complex step).
    """
    alpha, eps = problem.effective(convention)
    shape, axis, n = problem.shape, problem.axis, problem.reduced_count
    ndim, C = len(shape), problem.channels
    axes = reduce_axes(ndim, axis)
    track = problem.track_running_stats
    gamma = to_channels(problem.gamma_or_ones(), ndim, axis)
    beta = to_channels(problem.beta_or_zeros(), ndim, axis)

    state = RunningState.initial(problem.running_mean, problem.running_var, convention)
    ys, rmeans, rvars, counts = [], [], [], []
    bmeans, bvars = [], []
    step_mean, step_var, norm_mean, norm_var, weights, sources = [], [], [], [], [], []
    last = None
    for x, mode in zip(problem.xs, convention.modes(problem)):
        if compute_dtype is None:
            mu_c, v_c = moments(x, axis)
        else:
            mu_c, v_c = moments_in(x, axis, convention.variance, compute_dtype)
        stats = (to_channels(mu_c, ndim, axis), to_channels(v_c, ndim, axis))
        before = state
        w = 0.0
        if mode not in ("train", "eval"):
            raise ValueError(f"unknown mode {mode!r}")
        reported = mode == "train"
        if mode == "eval" and convention.eval_statistics != "running":  # inference that acts as training
            mode = "train" if convention.eval_statistics == "train" else "batch"
        if mode == "train":
            if track:
                w = step_weight(state, alpha, convention)
                state = update(state, mu_c, v_c, n, alpha, convention)
            if reported:
                bmeans.append(mu_c)
                bvars.append(unbiased(v_c, n) if convention.batch_var_estimator == "unbiased" else v_c)
        blend = None
        if mode == "train" and track and convention.train_normalizer == "running":
            vfac = (n / (n - 1) if n > 1 else np.inf) if convention.running_var == "unbiased" else 1.0
            blend = (state.mean - w * mu_c, state.var - w * vfac * v_c, w, vfac)
        norm = _normalizer(x, axis, n, mode, before, convention, eps, track, blend, stats)
        ys.append(nz.forward(x, gamma, beta, norm) if convention.broadcast_axis is None else
                  _misbroadcast_forward(x, problem, norm, axis, convention.broadcast_axis))
        rmeans.append(state.mean)
        rvars.append(state.var)
        counts.append(state.count)
        step_mean.append(mu_c)
        step_var.append(v_c)
        norm_mean.append(np.broadcast_to(norm.m, stats[0].shape).reshape(C))
        norm_var.append(np.broadcast_to(norm.s2, stats[0].shape).reshape(C))
        weights.append(w)
        sources.append("running" if (mode == "eval" and track) else ("updated" if blend is not None else "batch"))
        last = (x, mode, before, blend, norm)

    x, mode, before, blend, norm = last
    if convention.broadcast_axis is None:
        dx, dgamma, dbeta = nz.backward(x, problem.dy, gamma, norm, axes, n)
    else:
        dx, dgamma, dbeta = _misbroadcast_backward(x, problem, norm, axis, convention, mode, before, eps, track,
                                                   blend)
    q = {
        "y": ys[0][None] if len(ys) == 1 else np.stack(ys),  # one step: no copy of a large y
        "running_mean": np.stack(rmeans),
        "running_var": np.stack(rvars),
        "num_batches_tracked": np.asarray(counts, dtype=np.float64),
        "dx": dx,
        "dgamma": dgamma.reshape(C),
        "dbeta": dbeta.reshape(C),
    }
    if bmeans:
        q["batch_mean"], q["batch_var"] = np.stack(bmeans), np.stack(bvars)

    def last_step_dx(xb, gb):
        """dx of the last step for a leading batch of inputs xb and scales gb (complex allowed)."""
        b_axes = tuple(a + 1 for a in axes)
        stats = _keepdims_moments(xb, b_axes)
        if convention.variance_mean_detached:  # variance around the unperturbed mean, as stop_gradient makes it
            d = xb - norm.mu[None]
            stats = (stats[0], np.mean(d * d, axis=b_axes, keepdims=True))
        nb = _normalizer(xb, axis + 1, n, mode, before, convention, eps, track, blend, stats)
        if convention.variance_mean_detached:
            nb = nz.Normalizer(nb.m, nb.s2, norm.mu[None], nb.a, nb.c, nb.eps, nb.eps_placement)
        # A statistic the backward does not differentiate is a constant at every order (stop_gradient):
        # the perturbed inputs must not move it either.
        if nb.a == 0.0 or nb.c == 0.0:
            nb = nz.Normalizer(norm.m[None] if nb.a == 0.0 else nb.m, norm.s2[None] if nb.c == 0.0 else nb.s2,
                               nb.mu, nb.a, nb.c, nb.eps, nb.eps_placement)
        return nz.backward(xb, problem.dy, gb, nb, b_axes, n)[0]

    if second_order and convention.broadcast_axis is not None:  # not modelled: an observed one cannot fit
        q["d2x"], q["d2gamma"] = np.full(x.shape, np.nan), np.full(C, np.nan)
    elif second_order:
        q["d2x"], q["d2gamma"] = _second_order(x, problem.gamma_or_ones(), problem.v, axis, last_step_dx)
    not_applicable = {}
    if not track:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            not_applicable[name] = "the case does not track running statistics"
    if not problem.affine:
        for name in ("dgamma", "dbeta", "d2gamma"):
            not_applicable[name] = "the case has no affine parameters"
    if not bmeans:
        for name in ("batch_mean", "batch_var"):
            not_applicable[name] = "the case has no training step"
    return Trace(
        quantities=q,
        step_mean=np.stack(step_mean),
        step_var=np.stack(step_var),
        norm_mean=np.stack(norm_mean),
        norm_var=np.stack(norm_var),
        weights=np.asarray(weights),
        grad_weights=(float(norm.a), float(norm.c)),
        sources=tuple(sources),
        alpha=alpha,
        eps=eps,
        not_applicable=not_applicable,
    )


def _second_order(x, gamma_vec, v, axis, dx_fn, chunk: int = 256):
    """Gradients of g = <dx(x, gamma), v> by complex step: dg/dp = Im g(p + i h e) / h, exact to rounding.

    The perturbation directions are batched along a new leading axis, `chunk` at a time.
    """
    ndim = x.ndim
    P = x.size
    d2x = np.empty(P)
    flat = x.reshape(-1)
    g = to_channels(gamma_vec, ndim, axis)[None]
    channel_of = np.unravel_index(np.arange(P), x.shape)[axis]
    for start in range(0, P, chunk):
        idx = np.arange(start, min(P, start + chunk))
        xb = np.repeat(flat[None].astype(np.complex128), len(idx), axis=0)
        xb[np.arange(len(idx)), idx] += 1j * COMPLEX_STEP
        dxb = dx_fn(xb.reshape((len(idx),) + x.shape), g)
        d2x[idx] = _directional(dxb * v, axis, channel_of[idx]) / COMPLEX_STEP
    C = gamma_vec.size
    gb = np.repeat(gamma_vec[None].astype(np.complex128), C, axis=0)
    gb[np.arange(C), np.arange(C)] += 1j * COMPLEX_STEP
    gshape = [C] + [1] * ndim
    gshape[axis + 1] = C
    dxg = dx_fn(np.repeat(x[None].astype(np.complex128), C, axis=0), gb.reshape(gshape))
    d2gamma = _directional(dxg * v, axis, np.arange(C)) / COMPLEX_STEP
    return d2x.reshape(x.shape), d2gamma


def _directional(products, axis: int, channels: np.ndarray) -> np.ndarray:
    """Im <dx(p + i h e_k), v> for each perturbation k (the leading axis of `products`).

    Channels are independent, so only channel `channels[k]` carries the perturbation; the others add exact
    zeros to the imaginary part. That is true until one of them holds a NaN or an Inf (from a non-finite input):
    Im(NaN) is NaN and would spread to every channel's second order, which autograd (per channel) does not do.
    Those perturbations are summed over their own channel only; every finite result keeps the bits of the
    whole sum."""
    ndim = products.ndim - 1
    out = np.imag(np.sum(products, axis=tuple(range(1, ndim + 1))))
    bad = ~np.isfinite(out)
    if np.any(bad):
        reduce = tuple(a + 1 for a in range(ndim) if a != axis)
        per_channel = np.imag(np.sum(products[bad], axis=reduce))  # (bad perturbations, C)
        out[bad] = per_channel[np.arange(per_channel.shape[0]), channels[bad]]
    return out


def _misbroadcast_forward(x, problem, norm, axis, baxis):
    """y when every per-channel vector (centre, variance, gamma, beta) is applied along `baxis` instead of
    the channel axis: the right per-channel numbers, broadcast the wrong way (NumPy's trailing-axis rule)."""
    ndim, C = x.ndim, problem.channels
    baxis = baxis % ndim
    if baxis == axis or x.shape[baxis] != C:
        raise ValueError(f"cannot broadcast {C} channel values along axis {baxis} of shape {x.shape}")

    def along(v):
        return to_channels(np.broadcast_to(v, to_channels(np.zeros(C), ndim, axis).shape).reshape(C), ndim, baxis)

    m, s2 = along(np.asarray(norm.m)), along(np.asarray(norm.s2))
    r = nz.reciprocal_std(s2, norm.eps, norm.eps_placement)
    g = to_channels(problem.gamma_or_ones(), ndim, baxis)
    b = to_channels(problem.beta_or_zeros(), ndim, baxis)
    return g * (x - m) * r + b


def _misbroadcast_backward(x, problem, norm, axis, conv, mode, before, eps, track, blend, max_size=4096):
    """Gradients of <y, dy> under a broadcast bug: dgamma/dbeta in closed form (along the broadcast axis),
    dx by complex step of the whole forward (statistics move with x in training); NaN (cannot fit) when the
    input is too large for the size^2 complex step."""
    ndim, n = x.ndim, problem.reduced_count
    baxis = conv.broadcast_axis % ndim
    baxes = reduce_axes(ndim, baxis)
    dy = problem.dy
    y0 = _misbroadcast_forward(x, problem, norm, axis, baxis)
    g = to_channels(problem.gamma_or_ones(), ndim, baxis)
    xhat = (y0 - to_channels(problem.beta_or_zeros(), ndim, baxis)) / g if problem.affine else y0
    dgamma = np.sum(dy * xhat, axis=baxes)
    dbeta = np.sum(dy * np.ones_like(x), axis=baxes)
    if x.size > max_size:
        return np.full(x.shape, np.nan), dgamma, dbeta
    flat = x.reshape(-1)
    dx = np.empty(x.size)
    chunk = 256
    for start in range(0, x.size, chunk):
        idx = np.arange(start, min(x.size, start + chunk))
        xb = np.repeat(flat[None].astype(np.complex128), len(idx), axis=0)
        xb[np.arange(len(idx)), idx] += 1j * COMPLEX_STEP
        xb = xb.reshape((len(idx),) + x.shape)
        stats = _keepdims_moments(xb, tuple(a + 1 for a in reduce_axes(ndim, axis)))
        nb = _normalizer(xb, axis + 1, n, mode, before, conv, eps, track, blend, stats)
        ys = np.stack([_misbroadcast_forward(xb[i], problem, nz.Normalizer(
            np.broadcast_to(nb.m, (len(idx),) + stats[0].shape[1:])[i], np.broadcast_to(
                nb.s2, (len(idx),) + stats[0].shape[1:])[i], None, 0.0, 0.0, nb.eps, nb.eps_placement),
            axis, baxis) for i in range(len(idx))])
        dx[idx] = np.imag(np.sum(ys * dy, axis=tuple(range(1, ndim + 1)))) / COMPLEX_STEP
    return dx.reshape(x.shape), dgamma, dbeta
