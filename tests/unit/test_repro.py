"""Repro snippets are runnable: pasted into a fresh Python, they reproduce the reported numbers; and an
adapter's snippet computes exactly what the adapter itself observed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from adapters import load  # noqa: E402
from adapters.torch_module import TorchModule  # noqa: E402
from conformance.core.cases import CASES  # noqa: E402
from conformance.core.engine import evaluate  # noqa: E402
from conformance.core.inputs import materialize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL_N = CASES["f32-4x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"]


class MisdeclaredTorch(TorchModule):
    """The real module with a wrong declaration (biased running variance): its checks fail for real."""

    name = "torch.nn.BatchNorm[misdeclared]"
    convention = TorchModule.convention.with_(running_var="biased")


def test_failing_check_prints_a_snippet_that_reproduces_it():
    adapter = MisdeclaredTorch()
    adapter.setup()
    rec = {r["quantity"]: r for r in evaluate(adapter, SMALL_N)}["running_var"]
    # flush-left in the message: the lines paste as they are
    assert rec["verdict"] == "fail" and rec["repro"] and "\n" + rec["repro"] + "\n" in rec["message"] + "\n"
    out = subprocess.run([sys.executable, "-c", rec["repro"]], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    m = rec["metrics"]
    assert "verdict: fail" in out.stdout
    printed = float(re.search(r"max abs error ([0-9.eE+-]+)", out.stdout).group(1))
    assert printed == pytest.approx(m["max_abs"], rel=1e-12)
    ratio = float(re.search(r"error/bound ([0-9.eE+-]+)", out.stdout).group(1))
    assert ratio == pytest.approx(m["ratio"], rel=1e-12)
    # one worst element everywhere: the record's, the message's and the snippet's
    index = str(tuple(m["worst_index"]))
    assert f"at index {index}" in out.stdout and f"at index {index}:" in rec["message"]
    # full precision: observed and expected as repr, so values that differ late do not print alike
    assert f"observed {m['observed']!r}, expected {m['expected']!r}" in rec["message"]
    assert f"| observed {m['observed']!r} | expected {m['expected']!r}" in out.stdout


@pytest.mark.parametrize("name", ["torch.nn.BatchNorm", "torch.nn.functional.batch_norm"])
@pytest.mark.parametrize("case_id", [
    "f32-4x3-ax1-T2E-a0.1-eps1e-05-rstats-s0",
    "f64-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0",
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-rstats-channels-last-s0",
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-noaffine-s0",
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-notrack-s0",
    "f16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0",
])
def test_snippet_computes_what_the_adapter_observed(name, case_id):
    adapter = load(name)
    adapter.setup()
    problem = materialize(CASES[case_id])
    observed = adapter.run(problem)
    ns = {"p": problem, "np": np}
    exec(compile(adapter.snippet(problem), f"<snippet {name}>", "exec"), ns)
    for q, v in ns["observed"].items():
        assert np.array_equal(v, observed.values[q], equal_nan=True), q
