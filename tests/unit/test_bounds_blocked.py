"""The bounds (conformance/core/tolerance.py) are evaluated in cache-sized blocks: the same bits whatever the block
size, on every layout the cases use (channels first, last, 1-D batches, one channel) and every convention knob
that changes a bound (inference, unbiased normalization, fast variance, narrower statistics, second order)."""
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
    trace = simulate(p, conv, second_order=p.reduced_count * p.channels <= 512)
    precision = Precision("float32" if case.dtype != "float64" else "float64", "float32"
                          if case.dtype != "float64" else "float64", "float32", "float32", saved="bfloat16")
    with np.errstate(all="ignore"):
        whole = _bits(tolerance.bounds(p, trace, conv, precision))
        for block in (1, 5, 16, 63):
            monkeypatch.setattr(tolerance, "BLOCK", block)
            assert _bits(tolerance.bounds(p, trace, conv, precision)) == whole, block


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
