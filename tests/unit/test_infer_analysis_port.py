"""Convention inference, the cross-framework tables and porting, on planted bugs and framework-free fakes."""
from __future__ import annotations

import pytest

from conformance.explain.analysis import defaults_hazard, equivalence, explain
from conformance.core.cases import CASES, cases_for_tier
from conformance.core.engine import evaluate
from conformance.explain.infer import BY_CASE_KNOB, EVAL_GRADIENT_CASE, evidence, table
from conformance.core.inputs import materialize
from conformance.explain.port import port_case, residuals_between
from reference import Convention

from .fakes import OracleAdapter

TORCH = Convention()
KERAS = Convention(momentum_form="weight_on_old", default_momentum=0.99, default_eps=1e-3, running_var="biased")
KNOB_CASES = [c for c in CASES.values() if c.knob in BY_CASE_KNOB or c.knob == "eps"] + [CASES[EVAL_GRADIENT_CASE]]


class FakeKeras(OracleAdapter):
    convention = KERAS


def _records(adapters, cases=None):
    out = []
    for a in adapters:
        a.setup()
        for c in cases or cases_for_tier("default"):
            out += evaluate(a, c, evidence=evidence)
    return out


def test_conforming_adapters_agree_with_their_declarations():
    t = table(_records([OracleAdapter(name="fake.torch"), FakeKeras(name="fake.keras")], KNOB_CASES))
    assert t["disagreements"] == []
    row = dict(zip(t["columns"], next(r for r in t["rows"] if r[0] == "fake.keras")))
    assert row["running variance"] == "biased ✓" and row["effective eps"] == "0.001 ✓"


EXPECTED_FINDING = {
    "momentum_flipped": "momentum form declared weight_on_new, observed weight_on_old",
    "biased_running_var": "running variance declared unbiased, observed biased",
    "unbiased_normalization": "training normalizes with declared biased, observed unbiased",
    "eps_outside_sqrt": "eps placement declared inside_sqrt, observed outside_sqrt",
    "float16_stats": "running statistics stored in declared input dtype, observed float16",
    "stats_not_constant_in_eval": "inference gradient declared statistics constant, observed through batch statistics",
}


@pytest.mark.parametrize("bug", sorted(EXPECTED_FINDING))
def test_inference_names_the_planted_deviation(bug):
    pytest.importorskip("torch")
    from .planted import HandWrittenTorchBN

    t = table(_records([HandWrittenTorchBN(bug)], KNOB_CASES))
    assert f"planted.{bug}: {EXPECTED_FINDING[bug]}" in t["disagreements"]


def test_equivalence_names_the_knob_behind_each_difference():
    case = CASES["f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0"]
    recs = _records([OracleAdapter(name="torch.nn.BatchNorm"), FakeKeras(name="fake.keras")], [case])
    rows = {r[0]: r for r in equivalence(recs, {"torch.nn.BatchNorm": TORCH, "fake.keras": KERAS})[0]["rows"]}
    assert "running var unbiased vs biased" in rows["fake.keras"][3]  # running_var column
    assert rows["fake.keras"][2].endswith("(rounding)") or rows["fake.keras"][2] == "0"  # running_mean: same


def test_defaults_hazard_lists_every_default_that_matters():
    case = CASES["f32-4x3x2x3-ax1-T3E-defaults-sc0.03-s0"]
    recs = _records([OracleAdapter(name="torch.nn.BatchNorm"), FakeKeras(name="fake.keras")], [case])
    t = defaults_hazard(recs, {"torch.nn.BatchNorm": TORCH, "fake.keras": KERAS})[0]
    why = {r[0]: r[-1] for r in t["rows"]}["fake.keras"]
    assert "eps 1e-05 vs 0.001" in why and "running var unbiased vs biased" in why and "0.1 vs 0.01" in why


class FakeNoDefaults(OracleAdapter):
    """Like tf.nn or haiku: no default eps (or momentum), so every defaults case is a skip."""
    convention = Convention(default_momentum=None, default_eps=None)

    def unsupported(self, problem):
        return "no defaults" if problem.use_defaults else super().unsupported(problem)


def test_defaults_hazard_reference_is_an_adapter_that_ran_the_case():
    # no torch in the selection (bnconform run --frameworks tf) and the first adapter by name has no defaults:
    # the reference must be one that ran the case, not the skipped one (whose eps None broke the oracle)
    case = CASES["f32-4x3x2x3-ax1-T3E-defaults-sc0.03-s0"]
    conventions = {"a.nodefaults": FakeNoDefaults.convention, "b.keras": KERAS, "c.torch": TORCH}
    recs = _records([FakeNoDefaults(name="a.nodefaults"), FakeKeras(name="b.keras"),
                     OracleAdapter(name="c.torch")], [case])
    (t,) = defaults_hazard(recs, conventions)
    rows = {r[0]: r for r in t["rows"]}
    assert sorted(rows) == ["b.keras", "c.torch"] and "relative to b.keras" in t["description"]
    assert rows["b.keras"][-1] == "reference" and "eps 0.001 vs 1e-05" in rows["c.torch"][-1]
    assert defaults_hazard(_records([FakeNoDefaults(name="a.nodefaults")], [case]),
                           {"a.nodefaults": FakeNoDefaults.convention}) == []


def test_explain_ignores_knobs_that_do_not_change_the_quantity():
    p = materialize(CASES["f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0"])
    assert explain(p, TORCH, KERAS, "running_mean") == []
    assert explain(p, TORCH, KERAS, "running_var") == ["running var unbiased vs biased"]


def test_port_residual_of_the_running_variance_estimator_is_the_bessel_factor():
    problem = materialize(port_case(0.1, 1e-5))
    (r,) = residuals_between(problem, TORCH, KERAS, "torch", "keras")
    assert r.knob == "running_var" and "n/(n-1) = 1.002" in r.sentence
    # three updates at alpha 0.1 from random initial statistics, each short by alpha*var/(n-1)
    assert 1e-4 < r.effect["running_var"] < 1e-3 and "running_mean" not in r.effect


def test_port_cli_usage_errors():
    from conformance.cli import main

    assert main(["port", "--from", "caffe", "--to", "torch"]) == 2
    assert main(["port", "--from", "torch", "--to", "torch.functional", "--momentum", "fast"]) == 2


def test_port_metadata_needs_no_framework_import():
    """`bnconform port`, the report and the analysis run in the parent process: every core adapter must give
    its native configuration, precision and snippet without importing its framework, even where the framework
    is not installed (tox's unit env; the distributions are hidden here)."""
    import subprocess
    import sys

    code = """
import importlib.metadata, sys
real_version = importlib.metadata.version
def absent(dist):  # a machine without the frameworks (tox's unit env): the advice must not need them
    if dist.split('[')[0].lower().replace('-', '_') in FRAMEWORKS:
        raise importlib.metadata.PackageNotFoundError(dist)
    return real_version(dist)
FRAMEWORKS = ('torch', 'tensorflow', 'tensorflow_cpu', 'jax', 'jaxlib', 'keras', 'flax', 'onnx', 'onnxruntime',
              'dm_haiku', 'equinox', 'tf_keras')
importlib.metadata.version = absent
from adapters import SPECS, load
from conformance.core.inputs import materialize
from conformance.explain.port import port_case
p = materialize(port_case(0.1, 1e-5))
for s in SPECS:
    if s.core:
        a = load(s.name)
        assert a.snippet(p) and isinstance(a.native_config(p), dict) and a.precision(p), s.name
from conformance.explain.port import port
for src, dst in (("torch", "keras"), ("torch", "flax"), ("keras", "torch"), ("torch", "equinox"), ("torch", "onnx"),
                 ("tensorflow", "nnx"), ("jax", "tf_keras")):
    assert port(src, dst).text()  # advice, sizes, registered deviations and porting code, no framework
heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'jax', 'keras', 'flax', 'onnx',
                                                       'onnxruntime', 'haiku', 'equinox', 'tf_keras')]
assert not heavy, heavy
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_defaults_hazard_percentages_are_the_signed_change_of_the_value_shown():
    case = CASES["f32-4x3x2x3-ax1-T3E-defaults-sc0.03-s0"]
    recs = _records([OracleAdapter(name="torch.nn.BatchNorm"), FakeKeras(name="fake.keras")], [case])
    t = defaults_hazard(recs, {"torch.nn.BatchNorm": TORCH, "fake.keras": KERAS})[0]
    rows = {r[0]: r for r in t["rows"]}
    col = t["columns"].index("running_var[0]")
    ref, mine = float(rows["torch.nn.BatchNorm"][col]), rows["fake.keras"][col]
    value, pct = float(mine.split(" (")[0]), mine.split(" (")[1].split("%")[0]
    assert float(pct) == pytest.approx(100 * (value - ref) / abs(ref), abs=0.06)


def test_not_identified_is_neither_agreement_nor_disagreement():
    from conformance.explain.infer import table

    ev = {"case": "c", "knob": "running variance", "declared": "unbiased", "inferred": None, "agrees": None}
    t = table([{"adapter": "a", "evidence": ev}])
    (row,) = t["rows"]
    assert "not identified" in row[1] and "✓" not in row[1] and "✗" not in row[1]
    assert t["disagreements"] == []


def test_equivalence_names_a_declared_knob_even_where_the_adapter_has_a_registered_deviation():
    case = CASES["f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0"]
    recs = _records([OracleAdapter(name="torch.nn.BatchNorm"), FakeKeras(name="fake.keras")], [case])
    for r in recs:
        if r["adapter"] == "fake.keras" and r["quantity"] == "running_var":
            r["verdict"] = "xfail"
    rows = {r[0]: r for r in equivalence(recs, {"torch.nn.BatchNorm": TORCH, "fake.keras": KERAS})[0]["rows"]}
    cell = rows["fake.keras"][3]
    assert "running var unbiased vs biased" in cell and "unexplained" not in cell
