"""Subnormal numbers: the tolerance model's underflow terms are carried through the statistics into y (every
IEEE implementation passes the subnormal corpus cases), and a framework that flushes subnormals (FTZ/DAZ) is
declared so (`Adapter.subnormals = "flush"`): undeclared, flushing is caught; declared, it is judged by its own
arithmetic. Oracle-only stand-ins, no framework."""
from __future__ import annotations

import numpy as np
import pytest

from adapters.base import OnPath, Precision
from conformance.core.cases import CASES, Case
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


def _verdicts(adapter, case):
    case = CASES[case] if isinstance(case, str) else case
    return {r["quantity"]: r["verdict"] for r in evaluate(OnPath(adapter), case)}


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


# -- statistics held in a narrower format: its rounding near zero is part of the bound

# a fuzz case (seed 20261202, on torch): float16 subnormal inputs, n = 7, one channel
SAVED_MEAN_CASE = Case((7, 1), "float16", dist="denormal", tier="nightly")


class SavedMeanInFloat16(OracleAdapter):
    """torch's CPU float16 kernel, as far as dgamma goes: statistics reduced in float32, the batch mean then
    held in float16 (saved in the parameter dtype) and the backward's sum(dy (x - mean)) r taken around it. With
    subnormal inputs the float16 mean lies on float16's subnormal grid (spacing 6e-8), an absolute error that
    sum|dy| and r = 1/sqrt(var + eps) ~ 316 magnify; torch 2.13's observed dgamma is this one, bit for bit.
    `off`: float16 subnormal steps (6e-8 each) the held mean is moved by (a planted error beyond rounding)."""

    off = 0

    def precision(self, p):
        return Precision(io=p.dtype, compute="float32", stats=p.dtype, params=p.dtype, saved=p.dtype)

    def run(self, p):
        obs = super().run(p)
        x, dy = p.xs[-1][:, 0], p.dy[:, 0]
        mean32 = np.float32(np.mean(x.astype(np.float32)))
        var = np.mean((x - np.float64(mean32)) ** 2)
        step = 2.0 ** (FORMATS["float16"].min_exponent - 10)  # float16's subnormal spacing
        saved = np.float32(np.float16(mean32)) + np.float32(self.off * step)
        xhat_sum = np.float32(np.sum(dy.astype(np.float32) * (x.astype(np.float32) - np.float32(saved))))
        r = np.float32(np.float16(1.0 / np.sqrt(var + p.eps)))
        obs.put("dgamma", np.array([float(np.float16(xhat_sum * r))]), p.dtype)
        return obs


class SavedMeanOffByEightSteps(SavedMeanInFloat16):
    off = 8  # 16x the rounding float16 makes (half a step)


def test_a_mean_held_in_float16_is_bounded_with_its_subnormal_rounding_and_a_larger_error_is_caught():
    assert SAVED_MEAN_CASE.id == "f16-7x1-ax1-T-a0.1-eps1e-05-denormal-s0"
    problem = materialize(SAVED_MEAN_CASE)
    assert np.max(np.abs(problem.xs[0])) < 2.0 ** FORMATS["float16"].min_exponent  # subnormal float16 inputs
    assert _verdicts(SavedMeanInFloat16("fake.saved16"), SAVED_MEAN_CASE)["dgamma"] == "pass"
    assert _verdicts(SavedMeanOffByEightSteps("fake.off8"), SAVED_MEAN_CASE)["dgamma"] == "fail"
