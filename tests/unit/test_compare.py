"""compare(): structure first (shape, dtype, NaN/Inf pattern), then metrics and the worst element."""
from __future__ import annotations

import numpy as np

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
