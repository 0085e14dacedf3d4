"""Rounding to float formats and ULP spacing, against NumPy's own types and ml_dtypes' bfloat16."""
from __future__ import annotations

import numpy as np
import pytest

from reference.dtypes import is_representable, round_to, ulp, unit_roundoff


def _samples():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-8, 6, 20000),
                        [0.0, -0.0, 1.0, 65504.0, 65520.0, 1e-8, 2.0**-24, 3.0 * 2.0**-26]])
    return x


@pytest.mark.parametrize("name,np_type", [("float32", np.float32), ("float16", np.float16)])
def test_round_to_matches_numpy(name, np_type):
    x = _samples()
    with np.errstate(over="ignore"):
        assert np.array_equal(round_to(x, name), x.astype(np_type).astype(np.float64))


def test_bfloat16_matches_ml_dtypes_on_float32_inputs():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = _samples().astype(np.float32)  # bfloat16 rounds through float32 (documented)
    expected = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    assert np.array_equal(round_to(x.astype(np.float64), "bfloat16"), expected)


def test_bfloat16_ties_to_even():
    one_plus_half_ulp = 1.0 + 2.0**-8  # exactly halfway between 1 and the next bfloat16 (1 + 2^-7)
    assert round_to(one_plus_half_ulp, "bfloat16") == 1.0
    assert round_to(1.0 + 3 * 2.0**-8, "bfloat16") == 1.0 + 2.0**-6  # tie: round up to even


@pytest.mark.parametrize("name,np_type", [("float64", np.float64), ("float32", np.float32),
                                          ("float16", np.float16)])
def test_ulp_matches_spacing(name, np_type):
    x = np.abs(round_to(_samples(), name))
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        expected = np.spacing(x.astype(np_type)).astype(np.float64)
    finite = np.isfinite(expected)  # NumPy says inf at the largest finite value; the format's gap is finite
    assert np.array_equal(ulp(x, name)[finite], expected[finite])


def test_unit_roundoff_and_representability():
    assert unit_roundoff("float32") == 2.0**-24 and unit_roundoff("bfloat16") == 2.0**-8
    assert is_representable(np.array([1.5, 0.25]), "bfloat16")
    assert not is_representable(np.array([0.1]), "float32")
    with pytest.raises(ValueError, match="unknown float format"):
        round_to(1.0, "float8")
