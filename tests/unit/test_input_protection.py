"""The engine protects its inputs: an adapter that writes into them is an error record that says so, the
oracle is computed from the untouched inputs, and a float64 case whose two runs differ says so."""
from __future__ import annotations

import ctypes

import numpy as np

import conformance.core.engine as engine
from conformance.core.cases import CASES
from conformance.core.engine import evaluate
from conformance.core.inputs import materialize

from .fakes import OracleAdapter

CASE = CASES["f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0"]


def _ignore_read_only(x: np.ndarray) -> np.ndarray:
    """A writable view of a read-only array, as torch.from_numpy makes one (it ignores the flag)."""
    buf = (ctypes.c_char * x.nbytes).from_address(x.ctypes.data)
    return np.frombuffer(buf, dtype=x.dtype).reshape(x.shape)


class WritesIntoInputs(OracleAdapter):
    """Computes the right answer, then scales its input in place (`torch.from_numpy(x).mul_(2)`)."""

    def run(self, p):
        obs = super().run(p)
        _ignore_read_only(p.xs[0])[...] *= 2.0
        return obs


class Nondeterministic(OracleAdapter):
    calls = 0

    def run(self, p):
        obs = super().run(p)
        Nondeterministic.calls += 1
        obs.values["y"] = obs.values["y"] * (1 + 1e-9 * Nondeterministic.calls)
        return obs


def test_an_adapter_that_writes_into_its_inputs_is_an_error_that_says_so():
    records = evaluate(WritesIntoInputs("fake.writes"), CASE)
    assert records and {r["verdict"] for r in records} == {"error"}
    assert all("wrote into its inputs" in r["reason"] and "x[0]" in r["reason"] for r in records)


def test_the_oracle_never_sees_modified_inputs(monkeypatch):
    seen = []
    real = engine._oracle

    def spy(adapter, problem, *case):
        seen.append(problem.xs[0].copy())
        return real(adapter, problem, *case)

    monkeypatch.setattr(engine, "_oracle", spy)
    evaluate(WritesIntoInputs("fake.writes"), CASE)
    assert seen and all(np.array_equal(s, materialize(CASE).xs[0]) for s in seen)


def test_nondeterministic_float64_results_are_rerun_and_reported():
    records = evaluate(Nondeterministic("fake.nondeterministic"), CASE)
    assert any(r["verdict"] == "fail" for r in records)
    assert all(r["reason"].startswith("nondeterministic: two runs differ by") for r in records)


def test_a_deterministic_adapter_is_not_flagged():
    records = evaluate(OracleAdapter("fake.control", scale_running_var=2.0), CASE)
    assert any(r["verdict"] == "fail" for r in records)
    assert not any("nondeterministic" in r["reason"] for r in records)


def test_inputs_an_adapter_wrote_into_are_not_handed_to_the_next_adapter():
    """The engine shares a case's inputs between the adapters of a process (engine.Shared): inputs an adapter
    altered are dropped, and the next adapter gets the case's own."""
    evaluate(WritesIntoInputs("fake.writes"), CASE)
    records = evaluate(OracleAdapter("fake.next"), CASE)
    assert records and {r["verdict"] for r in records} == {"pass"}


def test_a_write_is_caught_against_the_copy_an_earlier_adapter_shared():
    """The copy the guard compares with is taken once per case (engine.InputGuard): an adapter that writes
    after another ran on the same inputs is still caught, and the copy goes with the altered inputs."""
    assert {r["verdict"] for r in evaluate(OracleAdapter("fake.first"), CASE)} == {"pass"}
    records = evaluate(WritesIntoInputs("fake.writes"), CASE)
    assert {r["verdict"] for r in records} == {"error"} and "wrote into its inputs" in records[0]["reason"]
    assert {r["verdict"] for r in evaluate(OracleAdapter("fake.next"), CASE)} == {"pass"}
