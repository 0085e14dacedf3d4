"""Porting works: for every ordered pair of selected, installed adapters, the target configured with the
hyperparameters `bnconform port` prints reproduces the source's outputs and statistics, up to exactly the
residual the port predicts (computed by the oracle from the declared conventions).

Each adapter runs the port cases once, in its own worker process; the pairs are then compared here:
  |(target - source) observed - (target - source) predicted| <= bound_source + bound_target, elementwise.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from adapters import load
from conformance.core.catalogue import select
from conformance.core import tolerance
from conformance.core.inputs import materialize
from conformance.explain.port import port, port_case
from conformance.core.registry import Registry
from conformance.execution.worker import WorkerConfig, observe
from reference import simulate

COMPARED = ("y", "running_mean", "running_var", "dx", "dgamma", "dbeta")


def _available(config):
    try:
        specs = select(config.getoption("--bn-frameworks"))
    except KeyError:
        return []
    return [s.name for s in specs if s.available()]


def pytest_generate_tests(metafunc):
    if "pair" in metafunc.fixturenames:
        names = _available(metafunc.config)
        pairs = [(a, b) for a in names for b in names if a != b]
        metafunc.parametrize("pair", pairs or [None], ids=[f"{a}->{b}" for a, b in pairs] or ["no-pairs"])


def _port(source, target):
    """Port the source's defaults; a source without defaults (tf.nn, haiku) ports alpha 0.1, eps 1e-5."""
    conv = load(source).convention
    momentum = conv.canonical_to_native(0.1) if conv.default_momentum is None else None
    eps = 1e-5 if conv.default_eps is None else None
    return port(source, target, momentum=momentum, eps=eps, layout="channels_first", snippet=False)


def _source_case(name):
    r = _port(name, name)
    return port_case(r.alpha, r.eps)


@pytest.fixture(scope="session")
def observations(request):
    names = _available(request.config)
    cases = {}
    for n in names:
        c = _source_case(n)
        cases[c.id] = c
    cfg = WorkerConfig(registry_path=request.config.getoption("--bn-registry"), case_timeout=300.0, diagnose=False)
    out: dict[str, dict] = {}
    slots = threading.Semaphore(max(1, os.cpu_count() or 1))

    def run(name):
        with slots:
            out[name] = observe(name, list(cases.values()), cfg)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_port_pair(pair, observations, request):
    if pair is None:
        pytest.skip("fewer than two adapters selected and installed")
    src_name, dst_name = pair
    result = _port(src_name, dst_name)
    if result.unsupported:
        pytest.skip(f"{dst_name} cannot reproduce {src_name}'s defaults: {result.unsupported}")
    case = port_case(result.alpha, result.eps)
    so, do = observations[src_name].get(case.id), observations[dst_name].get(case.id)
    for name, reply in ((src_name, so), (dst_name, do)):
        assert reply is not None, f"{name} was not run on {case.id}"
        if reply[0] == "unsupported":
            pytest.skip(f"{name}: {reply[1]}")
        assert reply[0] == "observed", f"{name} failed on {case.id}: {reply[1]}"
    ran_with = {k: v for k, v in do[5].items() if not k.startswith("_")}
    assert ran_with == result.target_native, "the port prints other hyperparameters than the target ran with"
    src, dst = load(src_name), load(dst_name)
    registry = Registry.load(request.config.getoption("--bn-registry"))
    problem = materialize(case)
    ts, td = simulate(problem, src.convention, second_order=False), simulate(problem, dst.convention, second_order=False)
    bs = tolerance.bounds(problem, ts, src.convention, src.precision(problem))
    bd = tolerance.bounds(problem, td, dst.convention, dst.precision(problem))
    checked, deviating = [], []
    versions = {n: next(iter(load(n).versions().values())) for n in (src_name, dst_name)}
    for q in COMPARED:
        if q not in so[1] or q not in do[1]:
            continue
        known = [registry.peek(n, versions[n], case.id, q) for n in (src_name, dst_name)]
        if any(known):  # a registered deviation of one side: the port cannot promise this quantity
            deviating.append(f"{q} ({next(e.id for e in known if e)})")
            continue
        predicted = td[q] - ts[q]
        observed = np.asarray(do[1][q]) - np.asarray(so[1][q])
        allowed = bs[q].values + bd[q].values
        excess = np.abs(observed - predicted) - allowed
        assert np.all(excess <= 0), (f"{q}: {src_name} -> {dst_name} differ by up to "
                                     f"{np.max(np.abs(observed)):.3g} where the port predicts "
                                     f"{np.max(np.abs(predicted)):.3g} (allowed {np.max(allowed):.3g})")
        checked.append(q)
    if not checked and deviating:
        pytest.skip(f"every quantity both observe is a registered deviation: {', '.join(deviating)}")
    assert checked, "no quantity observed by both adapters"
