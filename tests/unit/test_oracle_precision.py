"""The float64 oracle against an independent 50-digit mpmath BatchNorm, on 120 random small problems.

Error measure: max |oracle - mp| / scale, where scale is the larger of max |mp| and the magnitude of the
terms the quantity is a sum of. Relative error alone is undefined where the true value is zero or cancels
(with n = 2 every training dx is exactly 0; in inference d2x is 0), and the term magnitude is the scale
floating-point error analysis measures against (it is what the condition number is relative to).
"""
from __future__ import annotations

import numpy as np
import pytest

from reference import simulate, to_channels

from . import mp_oracle
from .random_problems import random_problem

N_PROBLEMS = 120
SECOND_ORDER_MAX_SIZE = 16  # nested 50-digit differences cost size^2 forward passes
LIMIT = 1e-13

worst_seen: dict[str, float] = {}


def term_scale(name: str, problem, trace) -> float:
    """Magnitude of the terms a quantity sums (0 for quantities that are not sums)."""
    x = problem.xs[-1]
    ax, nd = problem.axis, x.ndim
    axes = tuple(a for a in range(nd) if a != ax)
    r = to_channels(1.0 / np.sqrt(trace.norm_var[-1] + trace.eps), nd, ax)
    xhat = (x - to_channels(trace.norm_mean[-1], nd, ax)) * r
    g = np.abs(to_channels(problem.gamma_or_ones(), nd, ax))
    dy, v = np.abs(problem.dy), np.abs(problem.v)
    if name == "dx":
        m = np.mean(dy, axis=axes, keepdims=True) + np.abs(xhat) * np.mean(dy * np.abs(xhat), axis=axes,
                                                                            keepdims=True)
        return float(np.max(g * r * (dy + m)))
    if name == "dgamma":
        return float(np.max(np.sum(dy * np.abs(xhat), axis=axes)))
    if name == "dbeta":
        return float(np.max(np.sum(dy, axis=axes)))
    if name in ("d2x", "d2gamma"):
        return float(np.max(g * r * r) * np.max(dy) * np.max(v) * (1 + np.max(np.abs(xhat))) ** 2)
    return 0.0


@pytest.fixture(scope="module", autouse=True)
def report_worst():
    yield
    print("\nworst oracle-vs-mpmath error per quantity:")
    for k, v in sorted(worst_seen.items()):
        print(f"  {k:20s} {v:.2e}")


@pytest.mark.parametrize("index", range(N_PROBLEMS))
def test_oracle_matches_50_digit_reference(index):
    problem, convention = random_problem(index)
    trace = simulate(problem, convention)
    expected = mp_oracle.evaluate(problem, convention,
                                  second_order=problem.xs[0].size <= SECOND_ORDER_MAX_SIZE)
    for name, exact in expected.items():
        got = trace[name]
        assert got.shape == exact.shape, name
        scale = max(float(np.max(np.abs(exact))), term_scale(name, problem, trace))
        err = float(np.max(np.abs(got - exact))) / scale if scale > 0 else float(np.max(np.abs(got)))
        worst_seen[name] = max(worst_seen.get(name, 0.0), err)
        assert err <= LIMIT, f"{name}: relative error {err:.3e} > {LIMIT:g} on {problem.label} {convention}"
