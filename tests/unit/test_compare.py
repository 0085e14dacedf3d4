"""compare(): structure first (shape, dtype, NaN/Inf pattern), then metrics and the worst element."""
from __future__ import annotations

import numpy as np
import pytest

from conformance.core.compare import compare


def _cmp(exp, obs, bound=1e-6, q="y", dt="float32", obs_dt=None, axis=1):
    return compare(q, np.asarray(exp, float), np.asarray(obs, float), bound, expected_dtype=dt,
                   observed_dtype=obs_dt or dt, axis=axis)


def test_equal_arrays_pass_with_ratio_zero():
    c = _cmp(np.ones((1, 2, 3)), np.ones((1, 2, 3)))
    assert c.ok and c.ratio == 0 and c.exact_matches == 6


def test_shape_and_dtype_fail_before_values():
    assert _cmp(np.ones((1, 2, 3)), np.ones((1, 3, 2))).problem == "shape"
    c = _cmp(np.ones((1, 2, 3)), np.ones((1, 2, 3)), obs_dt="float64")
    assert not c.ok and c.problem == "dtype" and "float64" in c.detail


def test_nan_pattern_is_compared_exactly():
    exp = np.array([[[1.0, np.nan]]])
    c = _cmp(exp, np.array([[[1.0, 2.0]]]))
    assert not c.ok and c.problem == "nonfinite" and "NaN" in c.detail
    assert _cmp(exp, exp.copy()).ok  # NaN where the oracle says NaN is a match
    assert not _cmp(np.array([[[np.inf]]]), np.array([[[-np.inf]]])).ok


def test_worst_element_is_by_ratio_and_names_its_channel_and_step():
    exp = np.zeros((2, 4, 3))  # y: (steps, N, C) with channel axis 1 of x -> axis 2 of y
    obs = exp.copy()
    obs[1, 2, 1] = 5e-6  # 5x its bound
    obs[0, 0, 0] = 2e-6
    c = _cmp(exp, obs, axis=1)
    assert not c.ok and c.worst_index == (1, 2, 1) and c.worst_channel == 1 and c.worst_step == 1
    assert c.mismatched == 2 and abs(c.ratio - 5.0) < 1e-9 and c.max_abs == 5e-6


def test_bound_zero_demands_exactness():
    assert _cmp(np.zeros(3), np.zeros(3), bound=0.0, q="d2x", axis=0).ok
    assert not _cmp(np.zeros(3), np.array([0, 1e-300, 0]), bound=0.0, q="d2x", axis=0).ok


def test_ulp_metric_in_target_format():
    c = _cmp(np.array([[[1.0]]]), np.array([[[1.0 + 2 * 2.0**-23]]]), bound=1.0)
    assert c.max_ulp == 2.0


# -- the blocked metrics pass gives exactly the whole-array definition ---------------------------------------------

def _whole_array(quantity, expected, observed, bound, fmt):
    """The metrics as first written, one whole-array expression each (the specification of compare's pass)."""
    from conformance.core.compare import HIST_EDGES
    from reference import ulp

    finite = np.isfinite(expected)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(observed - expected), 0.0)
        ratio = np.where(err == 0, 0.0, err / bound)
        rel = np.where(err == 0, 0.0, err / np.abs(expected))
        ulps = np.where(err == 0, 0.0, err / ulp(expected, fmt))
    nonzero = err[err > 0]
    hist = np.histogram(np.log10(nonzero), bins=HIST_EDGES)[0].tolist() if nonzero.size else [0] * 22
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), expected.shape))
    return {"ratio": float(np.max(ratio)), "max_abs": float(np.max(err)), "max_rel": float(np.max(rel)),
            "max_ulp": float(np.max(ulps)), "mismatched": int(np.count_nonzero(ratio > 1.0)),
            "worst_index": list(worst), "expected": float(expected[worst]), "observed": float(observed[worst]),
            "allowed": float(bound[worst]), "error_hist": hist, "exact_matches": int(np.count_nonzero(err == 0))}


def _same(a, b) -> bool:
    return all((x == y) or (isinstance(x, float) and np.isnan(x) and np.isnan(y)) for x, y in zip(a, b)) \
        if isinstance(a, list) else (a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)))


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 14])
@pytest.mark.parametrize("seed", range(12))
def test_blocked_metrics_are_the_whole_array_definition(monkeypatch, block, seed):
    """Ties across blocks, exact elements, NaN bounds, zero bounds, infinities in the same places, subnormal and
    huge values, errors exactly at the histogram's edges, per-channel and scalar bounds, every format."""
    import conformance.core.compare as cmp_mod

    monkeypatch.setattr(cmp_mod, "BLOCK", block)
    rng = np.random.default_rng(seed)
    shape = [(3, 5, 7), (2, 4), (50,), (4, 3, 2, 3)][seed % 4]
    fmt = ["float32", "float64", "float16", "bfloat16"][seed % 4]
    exp = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30)
    obs = exp + rng.standard_normal(shape) * 10.0 ** rng.integers(-25, 2) * (rng.random(shape) < 0.7)
    bound = np.abs(rng.standard_normal(shape)) * 10.0 ** rng.integers(-25, 2)
    flat_o, flat_e, flat_b = obs.reshape(-1), exp.reshape(-1), bound.reshape(-1)
    flat_o[1] = flat_e[1] + 100.0  # log10 |error| = 2 at most: the last (closed) bin or just below it
    flat_o[2] = flat_e[2] + 1e-5
    flat_b[3] = 0.0  # inexact against a bound of 0: ratio inf
    if seed % 3 == 0:
        flat_b[4] = np.nan  # a NaN bound: the largest ratio, first occurrence
    if seed % 2 == 0:  # equal ratios in different blocks: the first one is the worst
        flat_o[:] = flat_e + 1e-3
        flat_b[:] = 1e-3 * (1 + (np.arange(flat_b.size) % 3 == 0))
    if seed % 4 == 1:
        flat_e[5], flat_o[5] = np.inf, np.inf
        flat_e[6], flat_o[6] = np.nan, np.nan
        flat_e[7] = flat_o[7] = 5e-324
        flat_e[0], flat_o[0] = 1e-310, 3e-310  # a float64 ulp in the subnormal range
    if seed % 5 == 0:
        bound = float(np.abs(rng.standard_normal()))
    got = compare("dx", exp, obs, bound, expected_dtype=fmt, observed_dtype=fmt, axis=0).as_dict()
    want = _whole_array("y", exp, obs, bound, fmt)
    for key, value in want.items():
        assert _same(got[key], value), (key, got[key], value)


def test_blocked_metrics_with_nonfinite_values_take_the_masked_route():
    exp = np.array([[1.0, np.inf, 3.0], [np.nan, 2.0, -np.inf]])
    obs = np.array([[1.5, np.inf, 3.0], [np.nan, 2.0, -np.inf]])
    c = compare("dx", exp, obs, 1.0, expected_dtype="float64", observed_dtype="float64", axis=1)
    assert c.ok and c.ratio == 0.5 and c.exact_matches == 5 and c.worst_index == (0, 0)


def test_ulp_distance_in_float64s_subnormal_range():
    """The float64 ulp of a subnormal value is 2**-1074 (not the smallest normal's 2**-1022)."""
    exp, obs = np.array([1e-310, 1.0]), np.array([3e-310, 1.0])
    c = compare("dx", exp, obs, 1.0, expected_dtype="float64", observed_dtype="float64", axis=0)
    assert c.max_ulp == _whole_array("dx", exp, obs, 1.0, "float64")["max_ulp"] == (3e-310 - 1e-310) / 2.0**-1074


def test_an_infinity_the_format_forces_is_its_answer():
    """float16 cannot hold 7.28e4: every correctly rounded float16 result is +inf there (the fuzz finding
    f16-15x1, torch's dgamma), so +inf matches; -inf, or an infinity where the answer is representable, does not."""
    exp = np.array([7.28e4, 1.0])
    assert _cmp(exp, [np.inf, 1.0], bound=1.0, q="dgamma", dt="float16").ok
    c = _cmp(exp, [-np.inf, 1.0], bound=1.0, q="dgamma", dt="float16")
    assert not c.ok and c.problem == "nonfinite"
    c = _cmp([6.0e4, 1.0], [np.inf, 1.0], bound=1.0, q="dgamma", dt="float16")
    assert not c.ok and c.problem == "nonfinite"
    assert _cmp(-exp, [-np.inf, -1.0], bound=1.0, q="dgamma", dt="float16").ok


def test_the_forced_infinity_starts_where_float16_rounds_to_it():
    """65520 = 65504 + half an ulp rounds to inf (ties to even), 65519 does not; the bound widens the admissible
    values both ways, so an answer that might round either way admits inf and the largest finite value."""
    with np.errstate(over="ignore"):
        assert np.float16(65520.0) == np.inf and np.float16(65519.0) == 65504.0
    assert _cmp([65520.0], [np.inf], bound=0.0, q="dgamma", dt="float16").ok
    assert not _cmp([65519.0], [np.inf], bound=0.0, q="dgamma", dt="float16").ok
    assert _cmp([65510.0], [np.inf], bound=10.0, q="dgamma", dt="float16").ok
    assert _cmp([65510.0], [65504.0], bound=10.0, q="dgamma", dt="float16").ok
    # float32 and float64 results are held to their own ranges: 7.28e4 is no overflow there
    assert not _cmp([7.28e4], [np.inf], bound=1.0, q="dgamma", dt="float32").ok
    assert not _cmp([1e308], [np.inf], bound=1e300, q="dgamma", dt="float64").ok
