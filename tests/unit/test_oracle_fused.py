"""The oracle's fused path (reference/fused.py, numba) returns the plain path's results BIT FOR BIT: batch
statistics, normalization, backward and whole simulate() traces, on every layout the fused path takes (channels
first, last, in the middle, one channel, rows shorter than 8, between 8 and 128, longer, not multiples of 8),
compared as raw bits (so -0.0 and NaN payloads count). Forced onto small arrays by lowering blocked.LARGE."""
from __future__ import annotations

import numpy as np
import pytest

from reference import Convention, Problem, blocked, fused, moments, simulate, to_channels
from reference import normalize as nz

pytest.importorskip("numba")

SHAPES = [((4, 3, 5, 7), 1), ((3, 4, 112, 112), 1), ((6, 5, 9), 2), ((7, 2, 130), 1), ((5, 6, 3, 4), 3),
          ((300, 7), 1), ((2, 1, 33, 5), 1), ((9, 4, 2, 2, 3), 1), ((1, 3, 1000), 1), ((4, 300001 // 100), 0)]


def same_bits(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


@pytest.fixture
def everything_large(monkeypatch):
    monkeypatch.setattr(blocked, "LARGE", 1)
    calls = []
    real = fused.layout
    monkeypatch.setattr(fused, "layout", lambda *a: calls.append(a) or real(*a))
    return calls


def plain(fn):
    old, blocked.LARGE = blocked.LARGE, 1 << 62
    try:
        return fn()
    finally:
        blocked.LARGE = old


def batch(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    loc = to_channels(rng.uniform(-3.0, 3.0, shape[axis]), len(shape), axis)
    return rng.standard_normal(shape) * 0.1 + loc


@pytest.mark.parametrize("n", list(range(1, 40)) + [127, 128, 129, 255, 256, 257, 1000, 12544, 100003])
def test_pairwise_is_numpys_summation(n):
    from reference import fused_kernels as k

    a = np.random.default_rng(n).standard_normal(n + 3) * 1e3
    got = k.pairwise(a, a, 3, n, 0.0, 1.0, fused.X, k.new_stack())
    assert same_bits(got, np.add.reduce(a[3:]))


def test_the_inputs_discriminate_summation_orders():
    """Without NumPy's order the identity tests would fail: a left-to-right sum of the same rows differs."""
    x = batch((3, 4, 112, 112), 1)
    axes = (0, 2, 3)
    sequential = np.cumsum(np.moveaxis(x, 1, -1).reshape(-1, 4), axis=0)[-1]
    assert not same_bits(sequential, np.sum(x, axis=axes))


@pytest.mark.parametrize("shape,axis", SHAPES)
def test_moments_forward_backward_are_the_plain_bits(shape, axis, everything_large):
    x = batch(shape, axis)
    x.reshape(-1)[:5] = -0.0  # signed zeros keep their sign through the same operations
    rng = np.random.default_rng(1)
    C, nd = shape[axis], len(shape)
    mean, var = moments(x, axis)
    assert everything_large, "the fused path did not run"
    mean0, var0 = plain(lambda: moments(x, axis))
    assert same_bits(mean, mean0) and same_bits(var, var0)
    g, b = (to_channels(rng.standard_normal(C), nd, axis) for _ in range(2))
    ch = lambda v: to_channels(v, nd, axis)  # noqa: E731
    axes = tuple(a for a in range(nd) if a != axis)
    dy = rng.standard_normal(shape)
    for norm in (nz.Normalizer(ch(mean), ch(var), ch(mean), 1.0, 1.0, 1e-5),  # training
                 nz.Normalizer(ch(mean) + 0.5, ch(var) * 2.0, ch(mean), 0.0, 0.0, 1e-3),  # inference
                 nz.Normalizer(ch(mean), ch(var) * 1.5, ch(mean), 0.1, 0.15, 1e-5, "outside_sqrt")):  # blended
        assert same_bits(nz.forward(x, g, b, norm), plain(lambda n=norm: nz.forward(x, g, b, n)))
        got = nz.backward(x, dy, g, norm, axes, x.size // C)
        want = plain(lambda n=norm: nz.backward(x, dy, g, n, axes, x.size // C))
        assert all(same_bits(a, w) for a, w in zip(got, want))


@pytest.mark.parametrize("shape,axis", [((4, 3, 5, 7), 1), ((5, 6, 3, 4), 3), ((7, 2, 130), 1)])
def test_moments_of_infinite_and_nan_inputs_are_the_plain_bits(shape, axis, everything_large):
    """An infinite input keeps its channel's mean infinite (statistics._corrected), a NaN makes it NaN, the
    other channels are untouched: channels first (one channel at a time) and last (element by element)."""
    x = batch(shape, axis)
    idx = [0] * len(shape)
    x[tuple(idx)] = np.inf
    idx[axis] = 1
    x[tuple(idx)] = np.nan
    with np.errstate(invalid="ignore"):
        mean, var = moments(x, axis)
        mean0, var0 = plain(lambda: moments(x, axis))
    assert everything_large and np.isinf(mean[0]) and np.isnan(mean[1]) and np.isfinite(mean[2:]).all()
    assert same_bits(mean, mean0) and same_bits(var, var0)


@pytest.mark.parametrize("conv", [Convention(), Convention(running_var="biased", train_normalizer="running",
                                                           averaging="cumulative")], ids=["default", "blended"])
def test_simulate_is_the_plain_bits(conv, everything_large):
    shape, axis = (6, 4, 20, 20), 1
    C = shape[axis]
    xs = (batch(shape, axis, 1), batch(shape, axis, 2))
    p = Problem(xs=xs, modes=("train", "train"), axis=axis, gamma=np.linspace(0.5, 1.5, C),
                beta=np.linspace(-1, 1, C), running_mean=np.zeros(C), running_var=np.ones(C), momentum=0.1,
                eps=1e-5, dy=batch(shape, axis, 3), v=batch(shape, axis, 4))
    fast = simulate(p, conv, second_order=False)
    assert everything_large
    slow = plain(lambda: simulate(p, conv, second_order=False))
    assert fast.quantities.keys() == slow.quantities.keys()
    for q in fast.quantities:
        assert same_bits(fast[q], slow[q]), q


def test_without_numba_the_oracle_takes_the_other_paths(monkeypatch):
    monkeypatch.setattr(fused, "_kernels", False)
    x = batch((4, 3, 8, 8), 1)
    monkeypatch.setattr(blocked, "LARGE", 1)
    assert fused.layout(x, 1) is None
    calls = []
    real = blocked.blocks
    monkeypatch.setattr(blocked, "blocks", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert np.allclose(moments(x, 1)[1], plain(lambda: moments(x, 1))[1], rtol=1e-14, atol=0)
    assert calls  # the blocked path (a few ulp from the plain sums, tests/unit/test_oracle_blocked.py)


def test_layouts_the_fused_path_declines(monkeypatch):
    monkeypatch.setattr(blocked, "LARGE", 1)
    x = batch((4, 3, 8, 8), 1)
    assert fused.layout(x, 1) == (4, 3, 64)
    assert fused.layout(np.asfortranarray(x), 1) is None  # not C-contiguous: NumPy's order differs
    assert fused.layout(x.astype(np.complex128), 1) is None  # complex step: the plain path
    assert fused.layout(x, 1, np.ones((4, 3, 1, 1))) is None  # an operand that is not per channel
    assert fused.layout(x[:, :1], 1) is None  # a slice: not contiguous
    assert fused.layout(np.ascontiguousarray(x[:, :1]), 1) == (1, 1, 4 * 64)  # one channel: one row
