"""Continuous parameters of a BatchNorm computation, estimated in closed form from one observation.

The diagnosis (conformance.explain.diagnose) fits a model to the whole observation of a case: discrete knobs are
searched, and the numbers a bug can set to anything are read off the data here instead of being looked up in
a table of known values:

  - the weight each training update put on the new batch, from the running-mean trajectory:
        R_k - R_{k-1} = w_k (B_k - R_{k-1})      (least squares over channels, one w per step)
    and the factor on the biased batch variance fed into the running variance, from the running-variance
    trajectory given those weights;
  - the effective eps, from the output: per channel, y is affine in x with slope gamma * r(s2), so
    eps = (gamma / slope)^2 - s2 (eps inside the root) for the variance s2 the convention normalizes with.

Each estimate is relative to a hypothesised (problem, convention) and its oracle trace, so the diagnosis can
refit them under every discrete alternative (a wrong eps together with the unbiased variance, ...).
Every function returns None when the observation does not determine the parameter.
"""
from __future__ import annotations

import numpy as np

from reference import moments, to_channels


def step_weights(problem, obs) -> list[float] | None:
    """Per training step, the weight on the new batch mean; None without an observed running-mean trajectory."""
    rm = obs.values.get("running_mean")
    if rm is None or not problem.track_running_stats or np.shape(rm) != (problem.steps, problem.channels):
        return None
    prev = problem.running_mean
    out = []
    for k, (x, mode) in enumerate(zip(problem.xs, problem.modes)):
        if mode == "train":
            d = moments(x, problem.axis)[0] - prev
            dd = float(np.dot(d, d))
            if not np.isfinite(dd) or dd <= 1e-24 * max(1.0, float(np.dot(prev, prev))):
                return None
            out.append(float(np.dot(rm[k] - prev, d)) / dd)
        prev = rm[k]
    return out or None


def pooled_weight(problem, obs) -> float | None:
    """One weight for every training step: least squares over all steps and channels, so the steps where the
    running mean is far from the batch mean (well conditioned) dominate."""
    rm = obs.values.get("running_mean")
    if rm is None or not problem.track_running_stats or np.shape(rm) != (problem.steps, problem.channels):
        return None
    prev, num, den = problem.running_mean, 0.0, 0.0
    for k, (x, mode) in enumerate(zip(problem.xs, problem.modes)):
        if mode == "train":
            d = moments(x, problem.axis)[0] - prev
            num, den = num + float(np.dot(rm[k] - prev, d)), den + float(np.dot(d, d))
        prev = rm[k]
    return num / den if den > 0 and np.isfinite(num) else None


def running_var_factor(problem, obs, weights: list[float]) -> float | None:
    """The factor f on the biased batch variance the running variance was fed (1: biased, n/(n-1): unbiased),
    given the per-step weights."""
    rv = obs.values.get("running_var")
    if rv is None or np.shape(rv) != (problem.steps, problem.channels):
        return None
    prev, num, den, t = problem.running_var, 0.0, 0.0, 0
    for k, (x, mode) in enumerate(zip(problem.xs, problem.modes)):
        if mode == "train":
            w = weights[t]
            t += 1
            if abs(w) > 1e-6:
                v = moments(x, problem.axis)[1]
                target = (rv[k] - (1.0 - w) * prev) / w
                num, den = num + float(np.dot(target, v)), den + float(np.dot(v, v))
        prev = rv[k]
    return num / den if den > 0 and np.isfinite(num) else None


def effective_eps(problem, trace, eps_placement: str, obs) -> float | None:
    """The eps that makes each channel's observed slope dy/dx equal gamma * r(s2), for the variance s2 each
    step normalized with in `trace`; the median over the best-conditioned (smallest s2) channel-steps."""
    y = obs.values.get("y")
    if y is None or np.shape(y) != (problem.steps,) + problem.shape:
        return None
    ax, nd = problem.axis, len(problem.shape)
    axes = tuple(a for a in range(nd) if a != ax)
    gamma = problem.gamma_or_ones()
    estimates, conditioning = [], []
    for k, x in enumerate(problem.xs):
        xc = x - np.mean(x, axis=axes, keepdims=True)
        yc = y[k] - np.mean(y[k], axis=axes, keepdims=True)
        sxx = np.sum(xc * xc, axis=axes)
        with np.errstate(all="ignore"):
            slope = np.sum(xc * yc, axis=axes) / sxx
            resid = np.sum((yc - to_channels(slope, nd, ax) * xc) ** 2, axis=axes) / np.maximum(
                np.sum(yc * yc, axis=axes), 1e-300)
            d = gamma / slope  # = 1 / r(s2)
        s2 = trace.norm_var[k]
        ok = (sxx > 0) & np.isfinite(d) & (d > 0) & (resid < 1e-6) & (np.abs(gamma) > 1e-12)
        if eps_placement == "outside_sqrt":
            e = d - np.sqrt(np.maximum(s2, 0.0))
        else:
            e = d * d - s2
        estimates += list(e[ok])
        conditioning += list(s2[ok])
    if not estimates:
        return None
    est, cond = np.asarray(estimates), np.asarray(conditioning)
    best = cond <= 4.0 * max(float(np.min(cond)), 1e-300)
    if not best.any():  # a NaN variance among them (a hypothesis that overflowed): no estimate, and no warning
        return None
    value = float(np.median(est[best]))
    return max(value, 0.0) if np.isfinite(value) else None


def nice(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}"
