"""Plots as inline SVG strings, drawn here (server side): the report needs no browser-side library.

Every number that enters the markup is formatted here; text is escaped. Returned strings are marked safe
for jinja2 (markupsafe.Markup)."""
from __future__ import annotations

import math

from markupsafe import Markup, escape

from .compare import HIST_EDGES

EDGES = [int(e) for e in HIST_EDGES]  # log10 |error| bin edges: -20 ... 2


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def error_histogram(counts: list[int] | None, *, allowed: float | None = None, max_abs: float | None = None,
                    exact: int = 0, width: int = 460, height: int = 150) -> Markup:
    """Bars of element counts per decade of |observed - expected|, with the bound at the worst element
    (dashed) and the largest error (solid) marked."""
    if not counts:
        return Markup("")
    left, right, top, bottom = 34, 8, 14, 30
    pw, ph = width - left - right, height - top - bottom
    lo, hi = EDGES[0], EDGES[-1]
    bins = len(counts)
    bw = pw / bins
    peak = max(max(counts), 1)

    def x_of(decade: float) -> float:
        return left + (min(max(decade, lo), hi) - lo) / (hi - lo) * pw

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of log10 absolute error">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for i, c in enumerate(counts):
        if c:
            h = max(1.0, ph * c / peak)
            parts.append(f'<rect class="bar" x="{_f(left + i * bw + 1)}" y="{_f(top + ph - h)}" '
                         f'width="{_f(bw - 2)}" height="{_f(h)}"><title>{c} element(s) with |error| in '
                         f'[1e{EDGES[i]}, 1e{EDGES[i + 1]})</title></rect>')
    for e in range(lo, hi + 1, 4):
        x = x_of(e)
        parts.append(f'<line class="tick" x1="{_f(x)}" y1="{top + ph}" x2="{_f(x)}" y2="{top + ph + 4}"/>'
                     f'<text class="lbl" x="{_f(x)}" y="{top + ph + 15}" text-anchor="middle">1e{e}</text>')
    parts.append(f'<text class="lbl" x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>'
                 f'<text class="lbl" x="{left - 4}" y="{top + ph}" text-anchor="end">0</text>'
                 f'<text class="lbl" x="{left + pw / 2:.0f}" y="{height - 2}" text-anchor="middle">'
                 f'log10 |observed - expected| per element{f" ({exact} exact)" if exact else ""}</text>')
    for value, cls, label in ((allowed, "allowed", "bound at the worst element"), (max_abs, "worst", "largest error")):
        if value is not None and isinstance(value, (int, float)) and value > 0 and math.isfinite(value):
            x = x_of(math.log10(value))
            parts.append(f'<line class="{cls}" x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{top + ph}">'
                         f'<title>{escape(label)}: {value:.3g}</title></line>')
    parts.append("</svg>")
    return Markup("".join(parts))


def ratio_bar(ratio: float | None, width: int = 60) -> Markup:
    """observed/bound as a bar on a log scale from 1e-4 (empty) to 1e4 (full); the check passes while the bar
    stays left of the middle mark. A styled span, not SVG: the checks table has one per check."""
    if ratio is None or math.isnan(ratio):
        return Markup("")
    pos = 0.0 if ratio <= 0 else 1.0 if not math.isfinite(ratio) else min(max((math.log10(ratio) + 4) / 8, 0.0), 1.0)
    return Markup(f'<span class="rbar"><i class="{"ok" if ratio <= 1 else "bad"}" style="width:{pos * width:.0f}px">'
                  f'</i></span>')
