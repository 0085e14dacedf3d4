"""Subnormal numbers: the tolerance model's underflow terms are carried through the statistics into y (every
IEEE implementation passes the subnormal corpus cases), and a framework that flushes subnormals (FTZ/DAZ) is
declared so (`Adapter.subnormals = "flush"`): undeclared, flushing is caught; declared, it is judged by its own
arithmetic. Oracle-only stand-ins, no framework."""
from __future__ import annotations

import numpy as np
import pytest

from adapters.base import OnPath
from conformance.core.cases import CASES
from conformance.core.engine import evaluate
from conformance.core.inputs import materialize
from reference import FORMATS

from .fakes import OracleAdapter

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SUBNORMAL_CASES = ["f32-2x1-ax1-T-a0.1-eps1e-05-noaffine-denormal-s0", "f32-1x1-ax1-T-a0.1-eps1e-05-denormal-s0",
                   "f32-2x1x1-ax1-T-a0.1-eps1e-05-noaffine-denormal-s0"]


class Flushing(OracleAdapter):
    """The oracle's results with every value below float32's smallest normal number set to zero, as FTZ
    hardware returns them (the inputs' flush leaves the same statistics: zero)."""

    def run(self, p):
        obs = super().run(p)
        lam = 2.0 ** FORMATS[p.dtype].min_exponent
        for q, a in list(obs.values.items()):
            a = np.where(np.abs(a) < lam, 0.0, a)
            obs.put(q, a, obs.dtypes[q])
        return obs


class DeclaredFlushing(Flushing):
    subnormals = "flush"


def _verdicts(adapter, case_id):
    return {r["quantity"]: r["verdict"] for r in evaluate(OnPath(adapter), CASES[case_id])}


@pytest.mark.parametrize("case_id", SUBNORMAL_CASES)
def test_ieee_subnormal_arithmetic_passes_and_an_undeclared_flush_fails(case_id):
    assert set(_verdicts(OracleAdapter("fake.oracle"), case_id).values()) <= {"pass"}
    flushed = _verdicts(Flushing("fake.flushing"), case_id)
    assert "fail" in flushed.values(), flushed


@pytest.mark.parametrize("case_id", SUBNORMAL_CASES)
def test_a_declared_flush_is_judged_by_its_own_arithmetic(case_id):
    assert set(_verdicts(DeclaredFlushing("fake.flushing"), case_id).values()) <= {"pass"}
    problem = materialize(CASES[case_id])
    assert OnPath(DeclaredFlushing("fake.flushing")).precision(problem).subnormals == "flush"


def test_a_declared_flush_does_not_hide_a_real_error_in_normal_range():
    class WrongVarFlushing(DeclaredFlushing):
        pass
    bad = WrongVarFlushing("fake.flushing", scale_running_var=1.5)
    verdicts = _verdicts(bad, "f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0")
    assert verdicts["running_var"] == "fail"


def test_running_bounds_stay_positive_for_weights_outside_zero_one():
    """A debiased or hypothesized update can put a weight above 1 (or below 0) on the new batch; the error
    bound adds magnitudes, so it must stay positive (a negative bound made a wrong running variance "pass")."""
    from conformance.core import tolerance
    from reference import simulate

    problem = materialize(CASES["f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0"])
    adapter = OracleAdapter("fake.oracle")
    for weights in ((1.5, 1.5, 1.5), (-0.25, 0.5, 2.0)):
        conv = adapter.convention.with_(step_weights=weights)
        trace = simulate(problem, conv)
        b = tolerance.bounds(problem, trace, conv, OnPath(adapter).precision(problem))
        for q in ("running_mean", "running_var", "y"):
            assert np.all(b[q].values > 0), (weights, q)
