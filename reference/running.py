"""Running-statistics state and its update rule, for every averaging convention.

    ema:           R <- (1 - alpha) R + alpha B
    cumulative:    R <- (1 - 1/t) R + (1/t) B, t = training steps so far (torch momentum=None)
    debiased_ema:  H <- (1 - alpha) H + alpha B;  R = H / (1 - (1 - alpha)^t)   (haiku; equinox "batch")

B is the batch mean and the batch variance under the convention's running-variance estimator (unbiased:
n/(n-1) times the biased variance). `first_step="replace"` makes the first training step set R = B
(equinox "ema"). With `stats_dtype` set, the stored statistics are rounded to it after every update, as a
framework that keeps them in that format does.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .convention import Convention
from .dtypes import round_to
from .statistics import unbiased


@dataclass(frozen=True)
class RunningState:
    mean: np.ndarray
    var: np.ndarray
    hidden_mean: np.ndarray  # only used by debiased_ema
    hidden_var: np.ndarray
    count: int = 0  # training steps seen (num_batches_tracked)

    @classmethod
    def initial(cls, mean: np.ndarray, var: np.ndarray, convention: Convention) -> "RunningState":
        if convention.debias_hidden_init == "zeros":
            hm, hv = np.zeros_like(mean), np.zeros_like(var)
        else:
            hm, hv = mean.copy(), var.copy()
        return cls(mean=mean.copy(), var=var.copy(), hidden_mean=hm, hidden_var=hv, count=0)


def running_var_input(var_biased, n: int, convention: Convention):
    if convention.running_var_factor is not None:
        return convention.running_var_factor * var_biased
    return unbiased(var_biased, n) if convention.running_var == "unbiased" else var_biased


def update(state: RunningState, mu, var_biased, n: int, alpha: float | None, convention: Convention) -> RunningState:
    """State after one training step with batch mean `mu` and biased batch variance `var_biased`."""
    b_mean = mu
    b_var = running_var_input(var_biased, n, convention)
    count = state.count + 1
    hm, hv = state.hidden_mean, state.hidden_var
    if convention.first_step == "replace" and state.count == 0:
        mean, var = b_mean, b_var
    elif convention.step_weights is not None:
        w = _fitted_weight(convention.step_weights, count)
        mean = (1.0 - w) * state.mean + w * b_mean
        var = (1.0 - w) * state.var + w * b_var
    elif convention.averaging == "cumulative" or alpha is None:
        w = 1.0 / (count + convention.cumulative_offset)
        mean = (1.0 - w) * state.mean + w * b_mean
        var = (1.0 - w) * state.var + w * b_var
    elif convention.averaging == "ema":
        mean = (1.0 - alpha) * state.mean + alpha * b_mean
        var = (1.0 - alpha) * state.var + alpha * b_var
    elif convention.averaging == "debiased_ema":
        hm = (1.0 - alpha) * hm + alpha * b_mean
        hv = (1.0 - alpha) * hv + alpha * b_var
        debias = 1.0 - (1.0 - alpha) ** count
        with np.errstate(divide="ignore", invalid="ignore"):
            mean, var = hm / debias, hv / debias
    else:
        raise ValueError(f"unknown averaging {convention.averaging!r}")
    if convention.stats_dtype is not None:
        mean, var = round_to(mean, convention.stats_dtype), round_to(var, convention.stats_dtype)
        hm, hv = round_to(hm, convention.stats_dtype), round_to(hv, convention.stats_dtype)
    return replace(state, mean=mean, var=var, hidden_mean=hm, hidden_var=hv, count=count)


def step_weight(state: RunningState, alpha: float | None, convention: Convention) -> float:
    """Weight the next update puts on the new batch statistic (for error propagation)."""
    count = state.count + 1
    if convention.first_step == "replace" and state.count == 0:
        return 1.0
    if convention.step_weights is not None:
        return _fitted_weight(convention.step_weights, count)
    if convention.averaging == "cumulative" or alpha is None:
        return 1.0 / (count + convention.cumulative_offset)
    if convention.averaging == "debiased_ema":
        # alpha = 0 (decay 1) debiases by 0: 0/0 is NaN, as the frameworks' arithmetic gives, not an exception
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(alpha) / (1.0 - (1.0 - alpha) ** count))
    return alpha


def _fitted_weight(weights: tuple[float, ...], count: int) -> float:
    return float(weights[min(count, len(weights)) - 1])
