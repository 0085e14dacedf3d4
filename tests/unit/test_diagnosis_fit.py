"""Diagnosis fits the whole case: an explanation never contradicts a passing quantity, continuous parameters
nobody listed are estimated, and a "closest" candidate is shown only when it is near."""
from __future__ import annotations

import re

from conformance.core.cases import CASES
from conformance.explain.diagnose import NEAR, diagnose
from conformance.core.engine import evaluate
from reference import round_to, simulate

from .fakes import OracleAdapter

CASE = CASES["f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0"]


class OutputFromAnotherEps(OracleAdapter):
    """y as if eps were 1e-3, every other quantity (gradients included) with the requested eps: no single
    story explains both, so eps = 1e-3 must not be named although it fits y alone."""

    def run(self, p):
        obs = super().run(p)
        t = simulate(p.with_(eps=1e-3), self.convention, second_order=False)
        obs.put("y", round_to(t["y"], p.dtype), p.dtype)
        return obs


class MomentumNobodyListed(OracleAdapter):
    def run(self, p):
        return super().run(p.with_(momentum=0.37) if p.momentum is not None else p)


def _by_quantity(adapter, case=CASE):
    return {r["quantity"]: r for r in evaluate(adapter, case, diagnose=diagnose)}


def test_an_explanation_never_contradicts_a_passing_quantity():
    recs = _by_quantity(OutputFromAnotherEps("fake.other_eps"))
    assert recs["y"]["verdict"] == "fail" and recs["dx"]["verdict"] == "pass"
    d = recs["y"]["diagnosis"]
    assert d["hypothesis"] != "eps=0.001"
    assert not d["explained"] or "dx" in d["explains"]


def test_a_momentum_nobody_listed_is_estimated_from_the_trajectory():
    recs = _by_quantity(MomentumNobodyListed("fake.momentum"))
    failing = [r for r in recs.values() if r["verdict"] == "fail"]
    assert failing and all(r["diagnosis"]["hypothesis"] == "alpha~0.37" for r in failing)
    assert all(r["diagnosis"]["fit_ratio"] <= 1.0 for r in failing)


def test_closest_is_shown_only_when_near():
    for adapter in (OutputFromAnotherEps("fake.other_eps"), OracleAdapter("fake.scaled", scale_running_var=1.5)):
        for r in evaluate(adapter, CASE, diagnose=diagnose):
            d = r["diagnosis"]
            if r["verdict"] != "fail" or d["explained"]:
                continue
            m = re.search(r"closest: .*\(fit ratio ([0-9.e+-]+)", d["summary"])
            assert m is None or float(m.group(1)) <= NEAR, d["summary"]


class OverflowInOneChannel(OracleAdapter):
    """d2x NaN in channel 0 (an intermediate that overflowed), every other quantity right: no convention
    explains it, and the values say what kind of failure it is."""

    def run(self, p):
        obs = super().run(p)
        d2x = obs.values["d2x"].copy()
        d2x[:, 0] = float("nan")
        obs.put("d2x", d2x, obs.dtypes["d2x"])
        return obs


def test_a_non_finite_result_the_oracle_can_represent_is_named_as_an_overflow():
    case = CASES["f64-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"]
    rec = _by_quantity(OverflowInOneChannel("fake.overflow"), case)["d2x"]
    assert rec["verdict"] == "fail" and not rec["diagnosis"]["explained"]
    assert "non-finite at 24 of 72 elements where the oracle's is finite and representable in float64" in \
        rec["diagnosis"]["summary"], rec["diagnosis"]["summary"]
    assert _by_quantity(OracleAdapter("fake.oracle"), case)["d2x"]["verdict"] == "pass"
