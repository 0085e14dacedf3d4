"""Plots as inline SVG strings, drawn here (server side): the report needs no browser-side library.

Every number that enters the markup is formatted here; text is escaped. Returned strings are marked safe
for jinja2 (markupsafe.Markup)."""
from __future__ import annotations

import math

from markupsafe import Markup, escape

from ..core.compare import HIST_EDGES

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


RATIO_DECADES = (-8, 8)  # error/bound from 1e-8 to 1e8; beyond are counted at the ends


def ratio_distribution(ratios: list[float], width: int = 380, height: int = 96) -> Markup:
    """How an adapter's error/bound ratios spread: checks per decade of the ratio, the bound (ratio 1) marked;
    bars right of it are outside the bound (fail, or xfail where registered)."""
    if not ratios:
        return Markup("")
    lo, hi = RATIO_DECADES
    bins = [0] * (hi - lo + 2)  # [0]: exact (ratio 0) and below 1e-8; [-1]: at or beyond 1e8 (inf included)
    for r in ratios:
        if r <= 0:
            bins[0] += 1
        elif not math.isfinite(r):
            bins[-1] += 1
        else:
            bins[min(max(int(math.floor(math.log10(r))) - lo + 1, 0), len(bins) - 1)] += 1
    left, right, top, bottom = 30, 6, 8, 26
    pw, ph = width - left - right, height - top - bottom
    bw = pw / len(bins)
    peak = max(bins)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ratios" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="distribution of error/bound ratios">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for i, c in enumerate(bins):
        if not c:
            continue
        h = max(1.0, ph * c / peak)
        outside = i >= 1 - lo  # decade [1e0, 1e1) and beyond
        span = ("ratio 0 or below 1e-8" if i == 0 else "ratio 1e8 or more (inf included)" if i == len(bins) - 1
                else f"ratio in [1e{i + lo - 1}, 1e{i + lo})")
        parts.append(f'<rect class="{"bad" if outside else "ok"}" x="{_f(left + i * bw + 0.5)}" '
                     f'y="{_f(top + ph - h)}" width="{_f(bw - 1)}" height="{_f(h)}"><title>{c} check(s), '
                     f'{span}</title></rect>')
    x1 = left + (1 - lo) * bw
    parts.append(f'<line class="bound" x1="{_f(x1)}" y1="{top - 2}" x2="{_f(x1)}" y2="{top + ph}"/>')
    for e in range(lo, hi + 1, 4):
        x = left + (e - lo + 1) * bw
        parts.append(f'<text class="lbl" x="{_f(x)}" y="{top + ph + 12}" text-anchor="middle">1e{e}</text>')
    parts.append(f'<text class="lbl" x="{left - 3}" y="{top + 8}" text-anchor="end">{peak}</text>'
                 f'<text class="lbl" x="{left + pw / 2:.0f}" y="{height - 2}" text-anchor="middle">error / bound '
                 f'per check ({len(ratios)}); right of the line: outside the bound</text></svg>')
    return Markup("".join(parts))


PALETTE = ("#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#1b7c83", "#953800", "#57606a")


def step_lines(series: list[dict], *, title: str, width: int = 520, height: int = 200) -> Markup:
    """Lines of a running statistic after each step: the oracle's (dashed, black) and each framework's.
    `series`: [{"label", "oracle": bool, "values": [float | None]}]."""
    finite = [v for s in series for v in s["values"] if v is not None and math.isfinite(v)]
    steps = max((len(s["values"]) for s in series), default=0)
    if not finite or steps < 2:
        return Markup("")
    vlo, vhi = min(finite), max(finite)
    if vhi == vlo:
        vlo, vhi = vlo - 0.5 * (abs(vlo) or 1), vhi + 0.5 * (abs(vhi) or 1)
    left, right, top, bottom = 64, 150, 16, 28
    pw, ph = width - left - right, height - top - bottom

    def xy(i: int, v: float) -> str:
        return f"{_f(left + i * pw / (steps - 1))},{_f(top + ph - (v - vlo) / (vhi - vlo) * ph)}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="steps" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
             f'<text class="lbl" x="{left}" y="{top - 4}">{escape(title)}</text>']
    colour = 0
    for n, s in enumerate(series):
        points = [xy(i, v) for i, v in enumerate(s["values"]) if v is not None and math.isfinite(v)]
        if not points:
            continue
        if s["oracle"]:
            style = 'stroke="#1f2328" stroke-dasharray="5 3" stroke-width="2"'
        else:
            style = f'stroke="{PALETTE[colour % len(PALETTE)]}" stroke-width="1.5"'
            colour += 1
        label = s["label"] + (f" ({s['verdict']})" if s.get("verdict") and s["verdict"] != "pass" else "")
        parts.append(f'<polyline fill="none" {style} points="{" ".join(points)}"><title>{escape(label)}</title>'
                     f'</polyline>')
        y = top + 10 + n * 12
        if y < height - 4:
            parts.append(f'<line {style} x1="{width - right + 8}" y1="{y - 4}" x2="{width - right + 24}" '
                         f'y2="{y - 4}"/><text class="lbl" x="{width - right + 28}" y="{y}">{escape(label[:24])}</text>')
    for v, y in ((vhi, top + 8), (vlo, top + ph)):
        parts.append(f'<text class="lbl" x="{left - 4}" y="{y}" text-anchor="end">{v:.4g}</text>')
    parts.append(f'<text class="lbl" x="{left}" y="{height - 4}">step 1</text>'
                 f'<text class="lbl" x="{left + pw}" y="{height - 4}" text-anchor="end">step {steps}</text></svg>')
    return Markup("".join(parts))
