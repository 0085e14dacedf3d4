"""Compare one observed quantity with the oracle under an elementwise bound.

Order, as torch.testing.assert_close does it: shape, dtype, then the NaN/Inf pattern (compared exactly, never
nan_to_num'ed away), then values. Metrics are taken over the finite elements: max abs, max rel, max ULP in
the format the framework produced, and the worst element by error/bound ratio, with its channel.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from reference import FORMATS, ulp

# Where the channel lives in each quantity's array, relative to the problem's channel axis.
#   "step+axis": (steps, *x.shape)   "axis": x.shape   "last": (..., C)   None: no channel
CHANNEL_LAYOUT = {
    "y": "step+axis", "dx": "axis", "d2x": "axis",
    "running_mean": "last", "running_var": "last", "batch_mean": "last", "batch_var": "last",
    "dgamma": "last", "dbeta": "last", "d2gamma": "last", "num_batches_tracked": None,
}
HIST_EDGES = np.arange(-20, 3)  # log10 |error| bins: 1e-20 ... 1e2


@dataclass
class Comparison:
    ok: bool
    problem: str | None = None  # "shape", "dtype", "nonfinite" when a structural check failed
    detail: str = ""
    ratio: float = 0.0
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_ulp: float = 0.0
    mismatched: int = 0
    total: int = 0
    worst_index: tuple[int, ...] | None = None
    worst_channel: int | None = None
    worst_step: int | None = None
    expected: float | None = None
    observed: float | None = None
    allowed: float | None = None
    error_hist: list[int] | None = None  # counts per HIST_EDGES bin; exact matches counted separately
    exact_matches: int = 0

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: every field is a scalar or list
        if d["worst_index"] is not None:
            d["worst_index"] = list(d["worst_index"])
        return d


def _channel_of(index: tuple[int, ...], quantity: str, axis: int) -> tuple[int | None, int | None]:
    layout = CHANNEL_LAYOUT.get(quantity)
    step = index[0] if layout in ("step+axis",) or (layout == "last" and len(index) == 2) else None
    if layout == "step+axis":
        return index[axis + 1], step
    if layout == "axis":
        return index[axis], None
    if layout == "last":
        return index[-1], step
    return None, (index[0] if index else None)


def compare(quantity: str, expected: np.ndarray, observed: np.ndarray, bound: np.ndarray, *,
            expected_dtype: str, observed_dtype: str, axis: int) -> Comparison:
    expected = np.asarray(expected, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if observed.shape != expected.shape:
        return Comparison(False, "shape", f"shape {observed.shape} != expected {expected.shape}",
                          ratio=float("inf"), total=expected.size)
    if observed_dtype != expected_dtype:
        return Comparison(False, "dtype", f"dtype {observed_dtype} != expected {expected_dtype}",
                          ratio=float("inf"), total=expected.size)
    total = expected.size
    for kind, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        e, o = test(expected), test(observed)
        if not np.array_equal(e, o):
            where = np.argwhere(e != o)
            first = tuple(int(i) for i in where[0])
            ch, step = _channel_of(first, quantity, axis)
            return Comparison(
                False, "nonfinite",
                f"{kind} pattern differs at {len(where)} of {total} elements (first at index {first}: "
                f"observed {observed[first]!r}, expected {expected[first]!r})",
                ratio=float("inf"), total=total, mismatched=len(where), worst_index=first, worst_channel=ch,
                worst_step=step, expected=float(expected[first]), observed=float(observed[first]))
    finite = np.isfinite(expected)
    err = np.where(finite, np.abs(observed - expected), 0.0)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(err == 0, 0.0, err / bound)  # err > 0 with bound 0 is inf: must be exact
        rel = np.where(err == 0, 0.0, err / np.abs(expected))
        ulps = np.where(err == 0, 0.0, err / ulp(expected, expected_dtype if expected_dtype in FORMATS else "float64"))
    worst = np.unravel_index(int(np.argmax(ratio)), expected.shape) if total else ()
    worst = tuple(int(i) for i in worst)
    ch, step = _channel_of(worst, quantity, axis) if total else (None, None)
    nonzero = err[err > 0]
    hist = np.histogram(np.log10(nonzero), bins=HIST_EDGES)[0].tolist() if nonzero.size else [0] * (
        len(HIST_EDGES) - 1)
    max_ratio = float(np.max(ratio)) if total else 0.0
    return Comparison(
        ok=max_ratio <= 1.0,
        ratio=max_ratio,
        max_abs=float(np.max(err)) if total else 0.0,
        max_rel=float(np.max(rel)) if total else 0.0,
        max_ulp=float(np.max(ulps)) if total else 0.0,
        mismatched=int(np.count_nonzero(ratio > 1.0)),
        total=total,
        worst_index=worst if total else None,
        worst_channel=ch,
        worst_step=step,
        expected=float(expected[worst]) if total else None,
        observed=float(observed[worst]) if total else None,
        allowed=float(bound[worst]) if total else None,
        error_hist=hist,
        exact_matches=int(np.count_nonzero(err == 0)),
    )
