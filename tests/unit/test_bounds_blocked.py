"""The bounds (conformance/core/tolerance.py) are evaluated in cache-sized blocks and in chunks of steps: the same
bits whatever the block size and however the steps are chunked, on every layout the cases use (channels first,
last, 1-D batches, one channel) and every convention knob that changes a bound (inference, unbiased
normalization, fast variance, narrower statistics, second order)."""
from __future__ import annotations

import numpy as np
import pytest

from adapters.base import Precision
from conformance.core import tolerance
from conformance.core.cases import Case
from conformance.core.inputs import materialize
from reference import Convention, simulate

CASES = [
    Case((4, 6, 5, 7), "float32", ("train", "train"), init_stats="random"),
    Case((4, 6, 5, 7), "float32", ("train", "eval"), init_stats="random", memory_format="channels_last"),
    Case((9, 5, 3, 4), "float32", ("train",), axis=-1, init_stats="random"),
    Case((40, 7), "float64", ("train", "eval", "train"), init_stats="random"),
    Case((3, 1, 4, 4), "float16", ("eval",)),
    Case((4, 3, 2, 3), "float64", ("train",), dist="nan"),
    Case((5, 3, 4), "float32", ("train",), affine=False),
    Case((6, 5), "float16", ("train",) * 9 + ("eval", "train"), init_stats="random"),
]
CONVENTIONS = [Convention(), Convention(normalize_var="unbiased", running_var="unbiased"),
               Convention(variance="fast"), Convention(grad_through_var=False),
               Convention(train_normalizer="running")]


def _bits(bounds):
    return {k: np.asarray(b.values).tobytes() for k, b in bounds.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("k", range(len(CONVENTIONS)))
def test_bounds_do_not_depend_on_the_block_size(monkeypatch, case, k):
    conv = CONVENTIONS[k]
    p = materialize(case)
    precision = Precision("float32" if case.dtype != "float64" else "float64", "float32"
                          if case.dtype != "float64" else "float64", "float32", "float32", saved="bfloat16")
    with np.errstate(all="ignore"):  # the NaN-input case: its invalid operations are what it tests
        trace = simulate(p, conv, second_order=p.reduced_count * p.channels <= 512)
        whole = _bits(tolerance.bounds(p, trace, conv, precision))
        for block in (1, 5, 16, 63):
            monkeypatch.setattr(tolerance, "BLOCK", block)
            assert _bits(tolerance.bounds(p, trace, conv, precision)) == whole, block


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("k", range(len(CONVENTIONS)))
def test_bounds_do_not_depend_on_how_the_steps_are_chunked(monkeypatch, case, k):
    """A step's terms formed with other steps' (a chunk's (steps, C) rows) are that step's own: one step per chunk,
    chunks that split the steps unevenly, and all steps in one give the same bits; so do a chunk's batches
    stacked for y's bound (small BLOCK sends them one at a time)."""
    conv = CONVENTIONS[k]
    p = materialize(case)
    trace = simulate(p, conv, second_order=False)
    precision = Precision("float32", "float16" if case.dtype == "float16" else "float32", "float32", "float32")
    block = tolerance.BLOCK
    with np.errstate(all="ignore"):
        monkeypatch.setattr(tolerance, "STEP_ROWS", 1 << 30)
        whole = _bits(tolerance.bounds(p, trace, conv, precision))
        for rows in (1, 2 * p.channels, 4 * p.channels - 1):
            monkeypatch.setattr(tolerance, "STEP_ROWS", rows)
            for b in (block, 5):  # 5: a chunk's batches go to y's bound one step at a time
                monkeypatch.setattr(tolerance, "BLOCK", b)
                assert _bits(tolerance.bounds(p, trace, conv, precision)) == whole, (rows, b)


@pytest.mark.parametrize("shape,axis", [((8, 6, 5, 7), 1), ((9, 5, 3, 4), 3), ((40, 7), 1), ((3, 1, 4, 4), 1),
                                        ((2, 3, 70, 70), 1)])
def test_a_mean_is_the_sum_divided_by_n_bit_for_bit(shape, axis):
    """What the bounds of the gradients rely on: np.mean(z) is np.sum(z) / n, the same bits (NumPy's _mean
    divides its umr_sum by the count)."""
    z = np.random.default_rng(0).standard_normal(shape) * 1e3 + 7.0
    axes = tuple(a for a in range(len(shape)) if a != axis)
    n = z.size // shape[axis]
    mean = np.mean(z, axis=axes, keepdims=True)
    via_sum = np.sum(z, axis=axes).reshape(mean.shape) / n
    assert np.array_equal(mean.view(np.int64), via_sum.view(np.int64))


def test_an_inference_step_carries_the_running_statistics_error_into_y():
    """y's bound at an inference step is the module docstring's d_y with (d_m, d_s2) the bounds of the running mean
    and variance after the step before: the recursion's errors carried into y, each its own statistic's."""
    case = Case((6, 5), "float32", ("train",) * 4 + ("eval",), init_stats="random")
    p, conv, t = materialize(case), Convention(), 4
    trace = simulate(p, conv, second_order=False)
    b = tolerance.bounds(p, trace, conv, Precision("float32", "float32", "float32", "float32"))
    assert trace.sources[t] == "running"
    u, eps, safety = 2.0**-24, trace.eps, tolerance.SAFETY
    d_m, d_s2 = b["running_mean"].values[t - 1] / safety, b["running_var"].values[t - 1] / safety  # + eta: < 1e-40
    m, s2, x, y = trace.norm_mean[t], trace.norm_var[t], p.xs[t], trace["y"][t]
    r, gamma, beta = 1.0 / np.sqrt(s2 + eps), np.abs(p.gamma_or_ones()), np.abs(p.beta_or_zeros())
    expected = safety * (gamma * r * (d_m + 0.5 * np.abs(x - m) * d_s2 / (s2 + eps))
                         + 4 * u * (gamma * r * (np.abs(x) + np.abs(m)) + beta) + u * np.abs(y))
    assert not np.allclose(d_m, d_s2, rtol=0.5)  # the two errors differ: swapping them would show
    np.testing.assert_allclose(b["y"].values[t], expected, rtol=1e-9)
