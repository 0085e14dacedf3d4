"""What the adapters of one process share (conformance.core.engine.Shared): a case's inputs and the oracle's
trace and bounds, computed once per (case, convention, precision), read-only, within a byte budget; the records
are those of a fresh computation."""
from __future__ import annotations

import numpy as np
import pytest

from conformance.core import engine
from conformance.core.cases import CASES
from conformance.core.engine import Shared, evaluate
from reference import Convention

from .fakes import OracleAdapter

CASE = CASES["f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"]


def _spy(monkeypatch):
    calls = []
    real = engine.simulate
    monkeypatch.setattr(engine, "simulate", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def _comparable(records):
    drop = ("check_id", "adapter", "seconds", "harness_seconds")
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_a_second_adapter_of_the_same_convention_reuses_the_oracle(monkeypatch):
    calls = _spy(monkeypatch)
    first = evaluate(OracleAdapter("fake.a"), CASE)
    second = evaluate(OracleAdapter("fake.b"), CASE)
    assert len(calls) == 1
    engine.clear_caches()
    fresh = evaluate(OracleAdapter("fake.c"), CASE)
    assert len(calls) == 2
    assert _comparable(first) == _comparable(second) == _comparable(fresh)


def test_another_convention_gets_its_own_oracle(monkeypatch):
    calls = _spy(monkeypatch)
    evaluate(OracleAdapter("fake.a"), CASE)
    other = OracleAdapter("fake.unbiased")
    other.convention = Convention(normalize_var="unbiased")
    records = evaluate(other, CASE)
    assert len(calls) == 2
    assert any(r["verdict"] == "pass" for r in records)


def test_shared_arrays_are_read_only():
    problem = engine.problem_for(CASE)
    trace, bounds = engine._oracle(OracleAdapter("fake.a"), problem, CASE)
    assert engine.problem_for(CASE) is problem
    for a in [*trace.quantities.values(), trace.step_mean, *(b.values for b in bounds.values())]:
        with pytest.raises(ValueError):
            a.reshape(-1)[0] = 1.0


def test_least_recently_used_entries_leave_first_and_oversized_ones_are_not_kept():
    shared = Shared(budget=3 * 800)
    make = lambda: np.zeros(100)  # noqa: E731  800 bytes
    a, b, c = (shared.get(("oracle", k), make) for k in "abc")
    assert shared.get(("oracle", "a"), make) is a  # a is now the most recent
    shared.get(("oracle", "d"), make)  # evicts b
    assert shared.get(("oracle", "a"), make) is a and shared.get(("oracle", "c"), make) is c
    assert shared.get(("oracle", "b"), make) is not b
    big = shared.get(("oracle", "big"), lambda: np.zeros(1000))
    assert shared.get(("oracle", "big"), lambda: np.zeros(1000)) is not big and shared.held <= 3 * 800
