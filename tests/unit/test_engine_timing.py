"""Every record of a case carries the time its adapter spent inside run() (`seconds`) and the time the suite
spent around it (`harness_seconds`: inputs, oracle, bounds, comparison, diagnosis, evidence), on every way out
of the engine. benchmarks/suite_speed.py's harness share is built from them: a path that left harness_seconds
at 0 hid its oracle's cost in "other" (the one-element-per-channel records did, 2000 steps of oracle included)."""
from __future__ import annotations

import time

import pytest

from conformance.core import engine
from conformance.core.cases import CASES
from conformance.core.engine import evaluate

from .fakes import OracleAdapter

DELAY = 0.05  # seconds added to the oracle (engine.simulate) or to the adapter's run()
ORDINARY = CASES["f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"]
ONE_PER_CHANNEL = CASES["f32-1x4-ax1-T-a0.1-eps1e-05-s0"]  # one element per channel in training


@pytest.fixture
def slow_oracle(monkeypatch):
    real = engine.simulate

    def slow(*a, **k):
        time.sleep(DELAY)
        return real(*a, **k)

    monkeypatch.setattr(engine, "simulate", slow)


class SlowAdapter(OracleAdapter):
    def run(self, p):
        time.sleep(DELAY)
        return super().run(p)


def _timing(records):
    assert records
    assert len({r["harness_seconds"] for r in records}) == 1 and len({r["seconds"] for r in records}) == 1
    return records[0]["seconds"], records[0]["harness_seconds"]


@pytest.mark.parametrize("case", [ORDINARY, ONE_PER_CHANNEL], ids=["ordinary", "one-per-channel"])
def test_the_oracle_counts_as_harness(case, slow_oracle):
    seconds, harness = _timing(evaluate(OracleAdapter("fake.timing"), case))
    assert harness >= DELAY
    assert seconds < DELAY


@pytest.mark.parametrize("case", [ORDINARY, ONE_PER_CHANNEL], ids=["ordinary", "one-per-channel"])
def test_the_adapter_counts_as_framework_time(case):
    seconds, harness = _timing(evaluate(SlowAdapter("fake.slow"), case))
    assert seconds >= DELAY
    assert harness < DELAY


def test_an_adapter_that_raised_is_timed_too(slow_oracle):
    class Raising(OracleAdapter):
        def run(self, p):
            time.sleep(DELAY)
            raise RuntimeError("boom")

    records = evaluate(Raising("fake.raising"), ORDINARY)
    assert {r["verdict"] for r in records} == {"error"}
    seconds, harness = _timing(records)
    assert seconds >= DELAY and harness >= DELAY  # run() until it raised; the oracle computed before it


def test_an_adapter_that_returns_nothing_to_compare_costs_no_oracle(monkeypatch):
    """One element per channel: the oracle is computed after the run (there is nothing to protect it from), and
    only when the adapter returned something to compare. On the 2000-step corpus case it cost ~0.6 s for an
    adapter whose every quantity was unsupported."""
    calls = []
    real = engine.simulate
    monkeypatch.setattr(engine, "simulate", lambda *a, **k: calls.append(a) or real(*a, **k))
    records = evaluate(OracleAdapter("fake.none", drop=OracleAdapter.quantities), ONE_PER_CHANNEL)
    assert {r["verdict"] for r in records} == {"skip"} and not calls
    records = evaluate(OracleAdapter("fake.some", drop={"y"}), ONE_PER_CHANNEL)
    assert calls and "pass" in {r["verdict"] for r in records}
