"""The oracle's blocked path for large arrays (reference/blocked.py): it tiles every element once, computes
the same normalization bit for bit, the same statistics to a few ulp, and meets the oracle's precision proof
(the 50-digit mpmath comparison of test_oracle_precision) when forced onto small problems."""
from __future__ import annotations

import numpy as np
import pytest

from reference import Convention, blocked, moments, simulate, to_channels
from reference import normalize as nz

from . import mp_oracle
from .random_problems import random_problem
from .test_oracle_precision import LIMIT, SECOND_ORDER_MAX_SIZE, term_scale

U = 2.0**-53


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 70000), (1, 1, 200000), (70001,), (5, 4, 3)])
@pytest.mark.parametrize("target", [1, 7, 60, 1 << 16])
def test_blocks_tile_every_element_once(shape, target):
    hits = np.zeros(shape, dtype=np.int64)
    for b in blocked.blocks(shape, target):
        assert len(b) == len(shape) and all(isinstance(s, slice) for s in b)
        hits[b] += 1
        assert hits[b].size <= max(target, shape[-1])  # a row of the last axis is the smallest block
    assert np.all(hits == 1)


def test_part_lines_up_per_channel_operands():
    x = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    c = to_channels(np.array([10.0, 20.0, 30.0]), 3, 1)
    for b in blocked.blocks(x.shape, 5):
        assert np.array_equal((x + c)[b], x[b] + blocked.part(c, b))
    assert blocked.part(np.float64(2.0), (slice(0, 1),)) == 2.0


def _large(shape, axis, seed=0):
    """A large float64 batch with channel means far from zero (|mean| / std up to 30: the corrected
    two-pass's reason to exist)."""
    rng = np.random.default_rng(seed)
    C = shape[axis]
    loc = to_channels(rng.uniform(-3.0, 3.0, C), len(shape), axis)
    return rng.standard_normal(shape) * 0.1 + loc


def _plain(monkeypatch):
    monkeypatch.setattr(blocked, "LARGE", 1 << 62)  # nothing is large: the whole-array expressions


@pytest.mark.parametrize("shape,axis", [((16, 32, 64, 64), 1), ((16, 64, 64, 32), 3), ((4096, 600), 1)])
def test_fast_path_agrees_with_the_plain_path(shape, axis, monkeypatch):
    x = _large(shape, axis)
    assert blocked.applies(x)
    mean, var = moments(x, axis)
    with monkeypatch.context() as m:
        _plain(m)
        mean0, var0 = moments(x, axis)
    # the statistics: a few ulp of their scale (mean: |mean| + std; variance: itself)
    assert np.max(np.abs(mean - mean0) / (np.abs(mean0) + np.sqrt(var0))) <= 4 * U
    extended = np.finfo(np.longdouble).eps < 1e-18  # x86's 80-bit long double: a reference to judge both by
    if extended:
        axes = tuple(a for a in range(x.ndim) if a != axis)
        xl = x.astype(np.longdouble)
        ml = xl.mean(axis=axes, keepdims=True)
        vl = ((xl - ml) ** 2).mean(axis=axes).astype(np.float64)
        fast_err = np.max(np.abs(var - vl) / vl)
        plain_err = np.max(np.abs(var0 - vl) / vl)
        # blocked sums are a two-level summation: never worse than NumPy's whole-array reduction (which sums
        # channels-last arrays row by row: hundreds of ulp at these sizes), and within 16 ulp of the truth
        assert fast_err <= max(plain_err, 16 * U), (fast_err / U, plain_err / U)
    else:
        assert np.max(np.abs(var - var0) / var0) <= 1e-12
    # the normalization: the same operations in the same order, so the same bits
    rng = np.random.default_rng(1)
    C, nd = shape[axis], len(shape)
    gamma, beta = (to_channels(rng.standard_normal(C), nd, axis) for _ in range(2))
    norm = nz.Normalizer(to_channels(mean, nd, axis), to_channels(var, nd, axis), to_channels(mean, nd, axis),
                         1.0, 1.0, 1e-5)
    y = nz.forward(x, gamma, beta, norm)
    with monkeypatch.context() as m:
        _plain(m)
        assert np.array_equal(y, nz.forward(x, gamma, beta, norm))


def test_simulate_takes_the_fast_path_on_a_large_problem(monkeypatch):
    """A training step through simulate() on a large NCHW batch, blocked and plain: the outputs agree."""
    from reference import Problem

    shape, axis = (8, 16, 128, 128), 1
    x = _large(shape, axis, seed=3)
    C = shape[axis]
    p = Problem(xs=(x,), modes=("train",), axis=axis, gamma=np.linspace(0.5, 1.5, C), beta=np.linspace(-1, 1, C),
                running_mean=np.zeros(C), running_var=np.ones(C), momentum=0.1, eps=1e-5, dy=x, v=x)
    calls = []
    real = blocked.blocks
    monkeypatch.setattr(blocked, "blocks", lambda *a, **k: calls.append(a) or real(*a, **k))
    fast = simulate(p, Convention(), second_order=False)
    assert calls  # the blocked path ran
    with monkeypatch.context() as m:
        _plain(m)
        plain = simulate(p, Convention(), second_order=False)
    for q in ("y", "running_mean", "running_var"):
        scale = np.max(np.abs(plain[q]))
        assert np.max(np.abs(fast[q] - plain[q])) <= 8 * U * scale, q


@pytest.mark.parametrize("index", range(0, 120, 6))
def test_blocked_path_meets_the_precision_proof(index, monkeypatch):
    """The precision proof of test_oracle_precision with every real array blocked in tiny blocks."""
    monkeypatch.setattr(blocked, "LARGE", 1)
    real = blocked.blocks
    calls = []
    monkeypatch.setattr(blocked, "blocks", lambda shape, target=3: calls.append(shape) or real(shape, target))
    problem, convention = random_problem(index)
    trace = simulate(problem, convention)
    assert calls  # the blocked path ran
    expected = mp_oracle.evaluate(problem, convention,
                                  second_order=problem.xs[0].size <= SECOND_ORDER_MAX_SIZE)
    for name, exact in expected.items():
        got = trace[name]
        scale = max(float(np.max(np.abs(exact))), term_scale(name, problem, trace))
        err = float(np.max(np.abs(got - exact))) / scale if scale > 0 else float(np.max(np.abs(got)))
        assert err <= LIMIT, f"{name}: relative error {err:.3e} > {LIMIT:g} on {problem.label}"
