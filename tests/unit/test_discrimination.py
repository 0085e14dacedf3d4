"""Every knob's discriminating case separates the knob's two settings by > 100x the float32 tolerance.

The oracle is run under setting A (what the case declares) and setting B (the other value of the knob);
the separation is max over quantities of max |A - B| / bound_A, with bound_A the float32 tolerance of A.
"""
from __future__ import annotations

import numpy as np
import pytest

from adapters.base import Precision
from conformance.core import tolerance
from conformance.core.cases import discriminating_cases
from conformance.core.inputs import materialize
from reference import Convention, simulate

BASE = Convention()


def _settings(knob: str, problem):
    """(problem_A, convention_A, problem_B, convention_B, compute_dtype_B)."""
    flip = {
        "running_var": dict(running_var="biased"),
        "normalize_var": dict(normalize_var="unbiased"),
        "cumulative_offset": dict(cumulative_offset=1),
        "debias": dict(averaging="debiased_ema"),
        "first_step": dict(first_step="replace"),
        "train_normalizer": dict(train_normalizer="running"),
        "eps_placement": dict(eps_placement="outside_sqrt"),
        "stats_dtype": dict(stats_dtype="float16"),
    }
    if knob in flip:
        return problem, BASE, problem, BASE.with_(**flip[knob]), None
    if knob == "momentum_form":  # the native argument read as weight-on-old: alpha -> 1 - alpha
        return problem, BASE, problem.with_(momentum=1.0 - problem.momentum), BASE, None
    if knob == "averaging":  # cumulative average vs an EMA at the default weight
        return problem, BASE, problem.with_(momentum=0.1), BASE, None
    if knob == "eps":
        return problem, BASE, problem.with_(eps=1e-5), BASE, None
    if knob == "variance":  # E[x^2]-E[x]^2 evaluated in float32 vs the exact (two-pass) answer
        return problem, BASE, problem, BASE.with_(variance="fast"), "float32"
    raise KeyError(knob)


@pytest.mark.parametrize("knob", sorted(discriminating_cases()))
def test_knob_case_separates_settings(knob):
    case = discriminating_cases()[knob]
    problem = materialize(case)
    pa, ca, pb, cb, dtype_b = _settings(knob, problem)
    ta = simulate(pa, ca)
    tb = simulate(pb, cb, compute_dtype=dtype_b)
    bounds = tolerance.bounds(pa, ta, ca, Precision.uniform("float32"))
    separation = 0.0
    for q, bound in bounds.items():
        if q in ta.not_applicable or q not in tb.quantities:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.abs(ta[q] - tb[q]) / bound.values
        r = np.where(np.isnan(r), 0.0, r)
        separation = max(separation, float(np.max(r)))
    assert separation > 100, f"{knob}: case {case.id} separates its settings by only {separation:.3g}x"
