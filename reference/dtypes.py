"""Floating-point formats the suite compares in, described by their bits, not by a framework.

NumPy has no bfloat16, and the oracle must not depend on a framework's dtype objects, so each format is
described by its precision and exponent range, and values are rounded to it with integer arithmetic on the
IEEE bit patterns (round to nearest, ties to even). Rounded values are returned as float64, which holds every
value of the narrower formats exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    name: str
    mantissa_bits: int  # including the implicit bit: 53, 24, 11, 8
    min_exponent: int  # exponent of the smallest normal number, 2**min_exponent
    max_value: float

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-p: the largest relative error of one correctly rounded operation."""
        return 2.0 ** (-self.mantissa_bits)

    @property
    def short(self) -> str:
        return SHORT_NAMES[self.name]


FORMATS: dict[str, FloatFormat] = {
    "float64": FloatFormat("float64", 53, -1022, float(np.finfo(np.float64).max)),
    "float32": FloatFormat("float32", 24, -126, float(np.finfo(np.float32).max)),
    "float16": FloatFormat("float16", 11, -14, 65504.0),
    "bfloat16": FloatFormat("bfloat16", 8, -126, float.fromhex("0x1.fep127")),
}
SHORT_NAMES = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
BY_SHORT = {v: k for k, v in SHORT_NAMES.items()}


def fmt(name: str) -> FloatFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown float format {name!r}; known: {', '.join(FORMATS)}") from None


def unit_roundoff(name: str) -> float:
    return fmt(name).unit_roundoff


def _bf16_from_float32(x32: np.ndarray) -> np.ndarray:
    bits = x32.view(np.uint32).astype(np.uint64)
    # Round to nearest even on the 16 dropped bits; NaN payloads are kept quiet.
    lsb = (bits >> np.uint64(16)) & np.uint64(1)
    rounded = (bits + np.uint64(0x7FFF) + lsb) >> np.uint64(16)
    is_nan = np.isnan(x32)
    rounded = np.where(is_nan, (bits >> np.uint64(16)) | np.uint64(0x40), rounded)
    out32 = (rounded << np.uint64(16)).astype(np.uint32).view(np.float32)
    return out32


def round_to(x: np.ndarray | float, name: str) -> np.ndarray:
    """Round float64 values to the format `name` (nearest, ties to even); return them as float64.

    bfloat16 rounds through float32. The double rounding float64 -> float32 -> bfloat16 can differ from a
    direct rounding only when the float64 value lies within float32 precision of a bfloat16 halfway point;
    the suite's inputs are rounded this way *before* any framework sees them, so every framework receives
    values that are exactly representable and no conversion inside a framework rounds again.
    """
    a = np.asarray(x, dtype=np.float64)
    if name == "float64":
        return a.copy()
    if name in ("float32", "float16"):
        with np.errstate(over="ignore"):  # beyond the format's range rounds to inf, as IEEE says
            return a.astype(name).astype(np.float64)
    if name == "bfloat16":
        with np.errstate(over="ignore"):
            return _bf16_from_float32(a.astype(np.float32)).astype(np.float64)
    raise ValueError(f"unknown float format {name!r}")


def is_representable(x: np.ndarray, name: str) -> bool:
    a = np.asarray(x, dtype=np.float64)
    r = round_to(a, name)
    return bool(np.array_equal(r, a, equal_nan=True))


def ulp(x: np.ndarray | float, name: str) -> np.ndarray:
    """Spacing of the format `name` at |x| (the gap to the next larger magnitude), subnormals included."""
    f = fmt(name)
    a = np.abs(np.asarray(x, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        _, e = np.frexp(a)  # a = m * 2**e with m in [0.5, 1)
    exponent = np.where(a == 0, f.min_exponent, np.maximum(e - 1, f.min_exponent))
    out = np.ldexp(1.0, exponent - (f.mantissa_bits - 1))
    return np.where(np.isfinite(a), out, np.nan)
