"""Compare one observed quantity with the oracle under an elementwise bound.

Order, as torch.testing.assert_close does it: shape, dtype, then the NaN/Inf pattern (compared exactly, never
nan_to_num'ed away; one rule comes from the format: an infinity matches where a correctly rounded result may be
one, _overflow_the_format_forces), then values. Metrics are taken over the finite elements: max abs, max rel,
max ULP in the format the framework produced, and the worst element by error/bound ratio, with its channel.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from reference import FORMATS

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
    bound = np.asarray(bound, dtype=np.float64)
    # A sum is finite only if every term is (an overflowing sum of finite values merely takes the exact route).
    observed_finite = _finite_sum(observed)
    if not observed_finite:
        expected = _overflow_the_format_forces(expected, observed, bound, expected_dtype)
    masked = not (observed_finite and _finite_sum(expected))
    if masked:
        mismatch = _nonfinite_mismatch(quantity, expected, observed, axis)
        if mismatch is not None:
            return mismatch
    if not total:
        return Comparison(ok=True, total=0, error_hist=[0] * (len(HIST_EDGES) - 1))
    m = _metrics(expected, observed, bound, expected_dtype if expected_dtype in FORMATS else "float64", masked)
    worst = tuple(int(i) for i in np.unravel_index(m.worst, expected.shape))
    ch, step = _channel_of(worst, quantity, axis)
    return Comparison(
        ok=m.ratio <= 1.0,
        ratio=m.ratio,
        max_abs=m.max_abs,
        max_rel=m.max_rel,
        max_ulp=m.max_ulp,
        mismatched=m.mismatched,
        total=total,
        worst_index=worst,
        worst_channel=ch,
        worst_step=step,
        expected=float(expected[worst]),
        observed=float(observed[worst]),
        allowed=float(np.broadcast_to(bound, expected.shape)[worst]),
        error_hist=m.hist.tolist(),
        exact_matches=m.exact,
    )


def overflow_threshold(fmt_name: str) -> float:
    """The smallest magnitude that rounds to infinity in the format (round to nearest, ties to even): its largest
    finite value plus half an ulp there, e.g. 65520 for float16 (inf for float64, whose half-ulp sum overflows)."""
    f = FORMATS[fmt_name]
    _, e = np.frexp(f.max_value)  # max_value = m * 2**e, 0.5 <= m < 1: its ulp is 2**(e - p), half of it 2**(e - p - 1)
    with np.errstate(over="ignore"):
        return float(np.float64(f.max_value) + np.ldexp(1.0, int(e) - f.mantissa_bits - 1))


def _overflow_the_format_forces(expected, observed, bound, fmt_name: str) -> np.ndarray:
    """`expected` with +-inf where the observed infinity is the format's own answer: an element whose admissible
    values (expected +- bound) reach the magnitude that rounds to infinity in the result's format, on the
    infinity's side. A framework that returns float16 cannot return 7.3e4; every correctly rounded result is
    inf there. Everywhere else `expected` is returned as it is (the same array when nothing changes)."""
    if fmt_name not in FORMATS or not np.isinf(observed).any():
        return expected
    threshold = overflow_threshold(fmt_name)
    with np.errstate(invalid="ignore", over="ignore"):
        forced = ((observed == np.inf) & (expected + bound >= threshold)) | (
            (observed == -np.inf) & (expected - bound <= -threshold))
    forced &= np.isfinite(expected)
    if not forced.any():
        return expected
    return np.where(forced, observed, expected)


def _finite_sum(a: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(a, axis=None)))


def _nonfinite_mismatch(quantity, expected, observed, axis) -> Comparison | None:
    """The first of the NaN, +Inf, -Inf patterns that differs between the arrays, as a failed Comparison."""
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
    return None


def _power_of_two(k: np.ndarray, out: np.ndarray) -> None:
    """out = 2.0 ** k (int64 k <= 1023), exactly: normal powers written as float64 bits (np.ldexp is ~30x
    slower), the subnormal ones (k < -1022, float64 ulps of values below 2**-970) by np.ldexp."""
    small = k < -1022
    bits = out.view(np.int64)
    np.maximum(k, -1022, out=bits)
    bits += 1023
    bits <<= 52
    if small.any():
        out[small] = np.ldexp(1.0, k[small])


BLOCK = 1 << 14  # elements per block of the metrics pass: its temporaries stay in a core's L1/L2 cache


@dataclass
class _Metrics:
    ratio: float
    worst: int  # flat (C-order) index of the largest error/bound ratio: its first occurrence
    max_abs: float
    max_rel: float
    max_ulp: float
    mismatched: int
    exact: int
    hist: np.ndarray


def _metrics(expected, observed, bound, fmt_name: str, masked: bool) -> _Metrics:
    """Every value metric in one pass over cache-sized blocks of the flattened arrays.

    Per element, exactly what the whole-array definitions give (so the metrics are those bits):
        err   = |observed - expected| where expected is finite, else 0
        ratio = err / bound, rel = err / |expected|, ulps = err / ulp(expected), each 0 where err == 0
    and the maxima, the first index of the largest ratio (a NaN ratio, from a NaN bound, counts as the largest,
    as np.argmax has it), the count of ratios > 1, of exact matches, and the log10 |error| histogram over
    HIST_EDGES (np.histogram's bins: half-open, the last one closed). ulp(expected) is the spacing of
    `fmt_name` at |expected| (reference.ulp), read from the float64 exponent field: for every finite value
    max(field - 1023, min_exponent) is frexp's exponent - 1 clamped the same way."""
    f = FORMATS[fmt_name]
    e = np.ascontiguousarray(expected).reshape(-1)
    o = np.ascontiguousarray(observed).reshape(-1)
    scalar_bound = bound.size == 1
    b = bound.reshape(-1) if scalar_bound else np.ascontiguousarray(
        bound if bound.shape == expected.shape else np.broadcast_to(bound, expected.shape)).reshape(-1)
    size = e.size
    width = min(size, BLOCK)
    err, tmp, zero = np.empty(width), np.empty(width), np.empty(width, dtype=bool)
    expo = np.empty(width, dtype=np.int64)
    best, worst, nan_seen = -np.inf, 0, False
    maxima = {"abs": [], "rel": [], "ulp": []}
    mismatched = exact = 0
    hist = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64)
    lo_edge, hi_edge = float(HIST_EDGES[0]), float(HIST_EDGES[-1])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, size, BLOCK):
            stop = min(start + BLOCK, size)
            k = stop - start
            eb, ob = e[start:stop], o[start:stop]
            er, t, z, ex = err[:k], tmp[:k], zero[:k], expo[:k]
            np.subtract(ob, eb, out=er)
            np.abs(er, out=er)
            if masked:
                er[~np.isfinite(eb)] = 0.0
            np.equal(er, 0.0, out=z)
            exact += int(np.count_nonzero(z))
            maxima["abs"].append(er.max())
            # error / bound: 0 where exact (a bound of 0 then allows it), inf where inexact against a bound of 0
            np.divide(er, b if scalar_bound else b[start:stop], out=t)
            t[z] = 0.0
            j = int(np.argmax(t))
            m = t[j]
            if np.isnan(m):
                if not nan_seen:
                    nan_seen, best, worst = True, m, start + j
            elif not nan_seen and m > best:
                best, worst = m, start + j
            mismatched += int(np.count_nonzero(t > 1.0))
            np.abs(eb, out=t)
            np.divide(er, t, out=t)
            t[z] = 0.0
            maxima["rel"].append(t.max())
            # ulp(expected) = 2 ** (max(exponent, min_exponent) - (p - 1)), exponent from the bits
            np.right_shift(eb.view(np.int64), 52, out=ex)
            np.bitwise_and(ex, 0x7FF, out=ex)
            np.subtract(ex, 1023, out=ex)
            np.maximum(ex, f.min_exponent, out=ex)
            np.subtract(ex, f.mantissa_bits - 1, out=ex)  # k: ulp = 2 ** k
            _power_of_two(ex, t)
            np.divide(er, t, out=t)
            t[z] = 0.0
            maxima["ulp"].append(t.max())
            nonzero = er[~z]
            if nonzero.size:
                lv = np.log10(nonzero)
                lv = lv[(lv >= lo_edge) & (lv <= hi_edge)]
                bins = np.floor(lv).astype(np.int64)
                bins -= int(HIST_EDGES[0])
                np.minimum(bins, len(hist) - 1, out=bins)  # log10 |error| == 2 exactly: the last bin is closed
                hist += np.bincount(bins, minlength=len(hist))
    return _Metrics(ratio=float(best), worst=worst, max_abs=float(np.max(maxima["abs"])),
                    max_rel=float(np.max(maxima["rel"])), max_ulp=float(np.max(maxima["ulp"])),
                    mismatched=mismatched, exact=exact, hist=hist)
