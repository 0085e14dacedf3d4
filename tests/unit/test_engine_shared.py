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


class Clock:
    """A stand-in for time.perf_counter: each computation takes the cost set before it."""

    def __init__(self):
        self.now, self.cost, self.reads = 0.0, 1.0, 0

    def __call__(self):
        self.reads += 1
        if self.reads % 2 == 0:  # the second read of a pair ends a computation
            self.now += self.cost
        return self.now


def _computing(shared, clock, key, cost, n=100):
    clock.cost = cost
    return shared.get(("oracle", key), lambda: np.zeros(n))  # 8 n bytes


def test_among_equally_costly_entries_the_least_recently_used_leave_first_and_oversized_ones_are_not_kept():
    clock = Clock()
    shared = Shared(budget=3 * 800, clock=clock)
    a, b, c = (_computing(shared, clock, k, 1.0) for k in "abc")
    assert _computing(shared, clock, "a", 1.0) is a  # a is now the most recent
    assert _computing(shared, clock, "d", 2.0) is not None  # costlier: evicts b, the least recently used
    assert _computing(shared, clock, "a", 1.0) is a and _computing(shared, clock, "c", 1.0) is c
    assert _computing(shared, clock, "b", 1.0) is not b
    big = _computing(shared, clock, "big", 9.0, n=1000)
    assert _computing(shared, clock, "big", 9.0, n=1000) is not big and shared.held <= 3 * 800


def test_a_walk_larger_than_the_budget_keeps_its_costliest_entries_for_the_next_adapter():
    """Adapters of a process walk the same cases in the same order. With least-recently-used eviction a walk
    over more than the budget evicts every entry before its next use; here the entries that save the most per
    byte stay, and the next walk finds them."""
    clock = Clock()
    shared = Shared(budget=3 * 800, clock=clock)
    costs = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 0.5, "e": 2.5}
    first = {k: _computing(shared, clock, k, cost) for k, cost in costs.items()}
    again = {k: _computing(shared, clock, k, cost) for k, cost in costs.items()}
    assert {k for k in costs if again[k] is first[k]} == {"a", "c", "e"}
    assert shared.held == 3 * 800


def test_a_cheaper_entry_displaces_nothing():
    clock = Clock()
    shared = Shared(budget=2 * 800, clock=clock)
    a, b = _computing(shared, clock, "a", 2.0), _computing(shared, clock, "b", 2.0)
    _computing(shared, clock, "c", 1.0)  # does not fit, and every entry is costlier per byte: not kept
    assert _computing(shared, clock, "a", 2.0) is a and _computing(shared, clock, "b", 2.0) is b
    assert ("oracle", "c") not in shared.entries
