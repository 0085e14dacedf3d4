"""Merge pytest-benchmark JSON files of the benchmark tier and print the table against the bound.

    python -m benchmarks.table reports/bench/*.json [--markdown] [--wide] [--baseline OLD.json... --fail-slower PCT]

Each file is one pytest invocation (tox -e bench runs one per Keras backend group); each row's bound uses the
copy bandwidth measured IN THE SAME FILE for its own shape, just before its operations (the faster of the
one-thread and the all-threads copy; a row without probes of its shape takes the copy of the nearest size), see
benchmarks/bandwidth.py for the bytes model. On a shared machine the bandwidth moves with the load: a shape's
bound is the machine's state next to that shape's operations. Columns: adapter, layout, logical shape,
op, median time, IQR, rounds, bytes BN must move, bound time, % of bound (100 * bound / median).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks import bandwidth as bw
from benchmarks.conftest import OPS, SHAPES


def load(paths: list[str]) -> list[dict]:
    """One dict per measured row: its file, kind, the extra_info fields, median/iqr (s), rounds, and for
    bn/oracle/copy_fresh rows the bound (s) and % of bound."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        benches = data.get("benchmarks", [])
        copies: dict[int, float] = {}  # size -> fastest bandwidth at that size
        own: dict[tuple, float] = {}  # (shape, dtype) -> fastest bandwidth of that shape's own probes
        for b in benches:
            info = b.get("extra_info", {})
            if info.get("kind") == "copy":
                rate = bw.bandwidth(b["stats"]["median"], info["x_nbytes"])
                copies[info["x_nbytes"]] = max(copies.get(info["x_nbytes"], 0.0), rate)
                key = (tuple(info.get("shape", ())), info.get("dtype"))
                own[key] = max(own.get(key, 0.0), rate)
        for b in benches:
            info = dict(b.get("extra_info", {}))
            if "kind" not in info:
                continue
            row = {"file": path, "datetime": data.get("datetime", ""), **info,
                   "median": b["stats"]["median"], "iqr": b["stats"]["iqr"], "rounds": b["stats"]["rounds"],
                   "name": b["name"]}
            if info["kind"] == "copy":
                row["bandwidth"] = bw.bandwidth(row["median"], info["x_nbytes"])
            elif copies:
                # the probes of this very shape (measured just before its operations), else the nearest size
                rate = own.get((tuple(info.get("shape", ())), info.get("dtype"))) or bw.nearest_bandwidth(
                    copies, info["x_nbytes"])
                row["bound"] = bw.bound_seconds(info["bytes"], rate)
                row["percent"] = bw.percent_of_bound(row["bound"], row["median"])
            rows.append(row)
    return rows


def _shape_key(shape) -> tuple:
    t = tuple(shape)
    return (SHAPES.index(t) if t in SHAPES else len(SHAPES), t)


def _order(rows: list[dict]) -> list[dict]:
    from adapters import SPECS

    names = {s.name: i for i, s in enumerate(SPECS)}

    def key(r):
        adapter = r.get("adapter") or r["kind"]
        return (r.get("dtype") != "float32", _shape_key(r["shape"]), r["kind"] != "copy_fresh",
                names.get(adapter, -1 if r["kind"] != "oracle" else 999), adapter,
                OPS.index(r["op"]) if r.get("op") in OPS else 0)
    return sorted(rows, key=key)


def render_wide(rows: list[dict], markdown: bool = False) -> str:
    """One row per adapter and shape, the operations side by side: "median ms (% of bound)"."""
    cells: dict[tuple, dict[str, str]] = {}
    for r in _order([r for r in rows if r["kind"] in ("bn", "oracle") and "percent" in r]):
        shape = "x".join(map(str, r["shape"])) + ("" if r.get("dtype") == "float32" else f" {r.get('dtype')}")
        cells.setdefault((r["adapter"], r.get("layout", ""), shape), {})[r["op"]] = (
            f"{r['median'] * 1e3:.2f} ({r['percent']:.0f}%)")
    body = [[a, lay, shp] + [ops.get(op, "-") for op in OPS] for (a, lay, shp), ops in cells.items()]
    return _table(["adapter", "layout", "shape", *(f"{op} ms (% of bound)" for op in OPS)], body, markdown)


def render(rows: list[dict], markdown: bool = False) -> str:
    out = []
    fmt_shape = lambda s: "x".join(map(str, s))  # noqa: E731
    # the probes: bandwidth per file and size, and the load while measuring
    out.append("Copy bandwidth measured in the same run (np.copyto into a preallocated buffer; bytes read + "
               "written / median):")
    for r in sorted((r for r in rows if r["kind"] == "copy"), key=lambda r: (r["file"], -r["x_nbytes"],
                                                                          r.get("threads", 1))):
        out.append(f"  {Path(r['file']).name:24s} {r['x_nbytes'] / 1e6:8.1f} MB  {r.get('threads', 1)} thread(s) "
                   f" {r['bandwidth'] / 1e9:6.2f} GB/s  (load {r.get('loadavg_1min', '?')})")
    loads = [r["loadavg_1min"] for r in rows if "loadavg_1min" in r]
    if loads:
        out.append(f"1-minute load average while measuring: min {min(loads)}, median {statistics.median(loads)}, "
                   f"max {max(loads)} (on {_cores()} cores)")
    out.append("")
    head = ["adapter", "layout", "shape", "op", "median ms", "IQR ms", "rounds", "MB moved", "bound ms",
            "% of bound"]
    body = []
    for r in _order([r for r in rows if r["kind"] in ("bn", "oracle", "copy_fresh")]):
        name = r.get("adapter") or f"copy into a new array ({Path(r['file']).stem}; no bound)"
        body.append([name, r.get("layout", ""), fmt_shape(r["shape"]) + ("" if r.get("dtype") == "float32"
                                                                         else f" {r.get('dtype')}"),
                     r.get("op", "copy"), f"{r['median'] * 1e3:.2f}", f"{r['iqr'] * 1e3:.2f}", str(r["rounds"]),
                     f"{r['bytes'] / 1e6:.1f}", f"{r['bound'] * 1e3:.2f}" if "bound" in r else "-",
                     f"{r['percent']:.0f}%" if "percent" in r else "-"])
    out.append(_table(head, body, markdown))
    # summary: median % of bound per adapter and op over the shapes
    summary: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["kind"] == "bn" and "percent" in r:
            summary.setdefault((r["adapter"], r["op"]), []).append(r["percent"])
    if summary:
        out.append("")
        out.append("Median % of bound over the shapes:")
        adapters = list(dict.fromkeys(a for a, _ in sorted(summary, key=lambda k: _order_name(k[0]))))
        body = [[a] + [f"{statistics.median(summary[a, op]):.0f}%" if (a, op) in summary else "-" for op in OPS]
                for a in adapters]
        out.append(_table(["adapter", *OPS], body, markdown))
    return "\n".join(out)


def _order_name(name: str) -> int:
    from adapters import SPECS

    return next((i for i, s in enumerate(SPECS) if s.name == name), len(SPECS))


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def _table(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    right = {i for i, h in enumerate(head) if h.endswith(("ms", "rounds", "moved", "bound")) or h in OPS}
    line = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(row) for row in body])


def compare(rows: list[dict], baseline: list[dict]) -> list[dict]:
    """Per (adapter, shape, op, dtype) present in both: the slowdown of the time RELATIVE TO ITS BOUND, i.e.
    (median / bound) now over (median / bound) then, minus 1. Dividing by each run's own bound takes out what
    the machine's memory bandwidth did between the runs (on a shared machine the copy probe itself moves by
    tens of percent), which a raw-median gate (--benchmark-compare-fail) cannot tell from the framework."""
    def key(r):
        return (r.get("adapter"), tuple(r["shape"]), r.get("op"), r.get("dtype"))
    then = {key(r): r for r in baseline if r["kind"] in ("bn", "oracle") and "bound" in r}
    out = []
    for r in rows:
        old = then.get(key(r))
        if r["kind"] in ("bn", "oracle") and "bound" in r and old is not None:
            slowdown = (r["median"] / r["bound"]) / (old["median"] / old["bound"]) - 1.0
            out.append({"adapter": r.get("adapter"), "shape": r["shape"], "op": r.get("op"),
                        "percent_then": old["percent"], "percent_now": r["percent"], "slowdown": slowdown,
                        "raw_slowdown": r["median"] / old["median"] - 1.0})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    ap.add_argument("--markdown", action="store_true", help="Markdown tables")
    ap.add_argument("--wide", action="store_true", help="also one row per adapter and shape, ops side by side")
    ap.add_argument("--baseline", nargs="+", default=[], metavar="JSON",
                    help="earlier JSON files: compare each row's time relative to its bound with theirs")
    ap.add_argument("--fail-slower", type=float, default=None, metavar="PCT",
                    help="with --baseline: exit 1 when a row's time relative to its bound grew by more than PCT%%")
    args = ap.parse_args(argv)
    existing = [f for f in args.files if Path(f).is_file()]
    if not existing:
        print("no benchmark JSON files found: " + " ".join(args.files), file=sys.stderr)
        return 2
    rows = load(existing)
    print(render(rows, args.markdown))
    if args.wide:
        print()
        print(render_wide(rows, args.markdown))
    if not args.baseline:
        return 0
    diffs = compare(rows, load([f for f in args.baseline if Path(f).is_file()]))
    body = [[d["adapter"], "x".join(map(str, d["shape"])), d["op"], f"{d['percent_then']:.0f}%",
             f"{d['percent_now']:.0f}%", f"{100 * d['slowdown']:+.0f}%", f"{100 * d['raw_slowdown']:+.0f}%"]
            for d in diffs]
    print("\nAgainst the baseline (slowdown of the time relative to each run's own bound; raw median change "
          "for reference):")
    print(_table(["adapter", "shape", "op", "then", "now", "slowdown", "raw"], body, args.markdown))
    failed = [d for d in diffs if args.fail_slower is not None and 100 * d["slowdown"] > args.fail_slower]
    for d in failed:
        print(f"SLOWER: {d['adapter']} {'x'.join(map(str, d['shape']))} {d['op']}: "
              f"{100 * d['slowdown']:+.0f}% relative to the bound (> {args.fail_slower:g}%)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
