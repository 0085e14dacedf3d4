"""The verdict engine, end to end on framework-free adapters: pass, fail, xfail, xpass, skip, error,
characterized, and the one-element-per-channel edge."""
from __future__ import annotations

from collections import Counter

from conformance.core.cases import CASES, Case
from conformance.core.engine import applicable, evaluate
from conformance.core.registry import Registry

from .fakes import OracleAdapter

WORKHORSE = CASES["f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0"]


def verdicts(adapter, case=WORKHORSE, registry=None):
    return {r["quantity"]: r for r in evaluate(adapter, case, registry)}


def _registry(tmp_path, **fields):
    body = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in fields.items())
    p = tmp_path / "r.toml"
    p.write_text("[[deviation]]\n" + body + "\n")
    return Registry.load(p)


def test_oracle_rounded_to_dtype_passes_everything():
    recs = verdicts(OracleAdapter())
    assert set(recs) == set(applicable(WORKHORSE))
    assert {r["verdict"] for r in recs.values()} == {"pass"}
    r = recs["y"]
    assert r["tolerance"]["safety"] == 2.0 and r["metrics"]["ratio"] <= 1 and r["values"]["expected"]


def test_damaged_quantity_fails_with_a_message_and_repro_slot():
    recs = verdicts(OracleAdapter(scale_running_var=1.01))
    assert recs["running_var"]["verdict"] == "fail"
    assert recs["running_mean"]["verdict"] == "pass"
    msg = recs["running_var"]["message"]
    assert "Mismatched elements" in msg and "Tolerance:" in msg and "Channel" in msg


def test_registered_deviation_turns_fail_into_xfail_and_pass_into_xpass(tmp_path):
    reg = _registry(tmp_path, id="d1", adapter="fake.*", cases=["f32-*"], quantities=["running_var"],
                    reason="demo deviation", action="xfail")
    assert verdicts(OracleAdapter(scale_running_var=1.01), registry=reg)["running_var"]["verdict"] == "xfail"
    rec = verdicts(OracleAdapter(), registry=reg)["running_var"]
    assert rec["verdict"] == "xpass" and rec["registry"]["id"] == "d1"


def test_registered_skip_does_not_run_the_adapter(tmp_path):
    reg = _registry(tmp_path, id="crash", adapter="fake.*", cases="*", quantities="*", reason="segfaults",
                    action="skip")
    recs = verdicts(OracleAdapter(raise_with=RuntimeError("would crash")), registry=reg)
    assert {r["verdict"] for r in recs.values()} == {"skip"}


def test_adapter_exception_is_an_error_record_per_quantity():
    recs = verdicts(OracleAdapter(raise_with=ValueError("boom")))
    assert {r["verdict"] for r in recs.values()} == {"error"}
    assert "ValueError: boom" in recs["y"]["reason"]


def test_unsupported_quantity_is_a_skip_with_reason():
    recs = verdicts(OracleAdapter(drop=("dx",)))
    assert recs["dx"]["verdict"] == "skip" and recs["dx"]["reason"] == "dropped by the fake"


def test_nan_where_the_oracle_has_none_fails_structurally():
    rec = verdicts(OracleAdapter(nan_y=True))["y"]
    assert rec["verdict"] == "fail" and rec["metrics"]["problem"] == "nonfinite"


def test_characterization_never_fails():
    case = CASES["f32-8x4-ax1-TE-a0.1-eps1e-05-loc1000-s0"]
    recs = verdicts(OracleAdapter(scale_running_var=2.0), case)
    assert {r["verdict"] for r in recs.values()} == {"characterized"}
    assert not recs["running_var"]["metrics"]["ok"]  # the measurement is still there


def test_single_element_training_follows_the_declaration():
    case = Case((1, 4), "float32", ("train",))
    assert Counter(r["verdict"] for r in evaluate(OracleAdapter(single="raises"), case)) == {"pass": len(applicable(case))}
    computes = evaluate(OracleAdapter(single="computes"), case)
    assert all(r["verdict"] in ("pass",) for r in computes), [(r["quantity"], r["reason"]) for r in computes]


def test_single_element_training_mismatching_the_declaration_fails():
    case = Case((1, 4), "float32", ("train",))

    class DeclaresRaisesButComputes(OracleAdapter):
        def run(self, p):
            return OracleAdapter(single="computes").run(p)

    class DeclaresComputesButRaises(OracleAdapter):
        def run(self, p):
            from adapters.base import Observation

            return Observation(raised="one value per channel")

    for adapter in (DeclaresRaisesButComputes(single="raises"), DeclaresComputesButRaises()):
        assert {r["verdict"] for r in evaluate(adapter, case)} == {"fail"}


def test_diagnosis_is_for_unregistered_failures(tmp_path):
    """Diagnosis searches pairs of changes (~15x the singles' cost) for failures; a registered deviation is
    explained by its entry and not diagnosed; a characterization gets the single changes."""
    asked = {}

    def spy(adapter, problem, quantity, obs, trace, bounds, *, pairs):
        asked[quantity] = pairs
        return {"summary": "spy"}

    evaluate(OracleAdapter(scale_running_var=1.01), WORKHORSE, diagnose=spy)
    assert asked == {"running_var": True}
    reg = _registry(tmp_path, id="d1", adapter="fake.*", cases=["f32-*"], quantities=["running_var"],
                    reason="demo deviation", action="xfail")
    asked.clear()
    rec = {r["quantity"]: r for r in evaluate(OracleAdapter(scale_running_var=1.01), WORKHORSE, reg, diagnose=spy)}
    assert asked == {} and rec["running_var"]["verdict"] == "xfail" and rec["running_var"]["diagnosis"] is None
    loc = CASES["f32-8x4-ax1-TE-a0.1-eps1e-05-loc1000-s0"]  # characterization: |mean|/std ~ 1e3
    recs = {r["quantity"]: r for r in evaluate(OracleAdapter(scale_running_var=1.01), loc, diagnose=spy)}
    assert recs["running_var"]["verdict"] == "characterized" and asked == {"running_var": False}


def test_singles_only_diagnosis_never_builds_pairs(monkeypatch):
    from conformance.explain import diagnose as dg
    from conformance.explain import hypotheses

    monkeypatch.setattr(hypotheses, "combine", lambda a, b: (_ for _ in ()).throw(AssertionError("pair built")))
    recs = {r["quantity"]: r for r in evaluate(OracleAdapter(scale_running_var=1.01), WORKHORSE,
                                               diagnose=lambda *a, **k: dg.diagnose(*a, **{**k, "pairs": False}))}
    d = recs["running_var"]["diagnosis"]
    assert d["explained"] is False and "pairs of changes are searched for failures only" in d["summary"]
