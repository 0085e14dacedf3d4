"""The float64 NumPy oracle: what BatchNorm computes, for any Convention. Imports NumPy only.

What it computes, per channel c of an input x (channel axis `axis`, n elements reduced per channel):

    mu_c  = mean of x over every axis but `axis`          v_c = mean of (x - mu_c)^2   (biased)
    train:     y = gamma_c * (x - mu_c) / sqrt(v_c + eps) + beta_c
    inference: y = gamma_c * (x - R_mean_c) / sqrt(R_var_c + eps) + beta_c
    running:   R <- (1 - alpha) R + alpha B, B = (mu_c, v_c or v_c * n/(n-1)), or the cumulative /
               zero-debiased averages; see `running`
    backward:  analytic, through the batch statistics in training, with the statistics constant in
               inference (see `normalize`); second order by complex-step differentiation of that backward.

`simulate(problem, convention)` runs a sequence of training and inference steps and returns a Trace of
every quantity. Momentum inside the oracle is always alpha, the weight on the new batch statistic.

What it deliberately does not do:
  - no framework's rounding: expected values are exact to float64 (corrected two-pass moments); the
    error a framework may make is the tolerance model's business (conformance.core.tolerance), not the oracle's.
    The one exception is `statistics.moments_in` / `simulate(..., compute_dtype=...)`, which reproduces
    a named variance algorithm in a narrow format on purpose, to predict and name what a framework using
    it returns;
  - no layouts or memory formats: it works on the logical array and a channel axis;
  - no distributed / synchronized statistics, no group or layer normalization, no fused activation;
  - no guessing: a Convention knob it does not know raises.
"""
from .convention import (
    FIRST_ORDER,
    GRADIENTS,
    QUANTITIES,
    SECOND_ORDER,
    Convention,
    Problem,
)
from .dtypes import FORMATS, round_to, ulp, unit_roundoff
from .simulate import Trace, simulate
from .statistics import moments, moments_in, reduce_axes, to_channels, unbiased

__all__ = [
    "Convention",
    "Problem",
    "Trace",
    "simulate",
    "QUANTITIES",
    "FIRST_ORDER",
    "SECOND_ORDER",
    "GRADIENTS",
    "FORMATS",
    "round_to",
    "ulp",
    "unit_roundoff",
    "moments",
    "moments_in",
    "reduce_axes",
    "to_channels",
    "unbiased",
]
