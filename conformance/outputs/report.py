"""The HTML report: one self-contained offline file (inline CSS, inline SVG, a small inline script for sorting
and filtering; no network, no browser-side library), rendered with jinja2 from conformance/templates/.

`build` turns a ResultSet into the template's context (everything ordered deterministically: records by check
id); `render` returns the HTML; `write` replaces the output file atomically, so a failed render leaves no
partial report behind.

The first screen leads with the why: the key findings (deviations grouped by cause, most severe first, each
with its size and a link) and the convention differences between frameworks, then the matrix. What only a
click shows (a finding's body, the table of every check, a case's values side by side) is rendered here as
HTML too, but kept as gzip'd JSON inside the page (`<script type="application/octet-stream">`, base64; each
distinct line once, see `_pack`) and inserted when opened (the browser's DecompressionStream; no library): the report of a default run over every
adapter stays ~2 MB and opens at once. `expand(html)` inlines those parts again (tests, grep).
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import jinja2
from markupsafe import Markup

from reference import QUANTITIES

from ..core.paths import label
from . import results
from . import svg
from ..core.textsafe import web_link
from ..core.cases import CASES, parse_modes

TEMPLATES = Path(__file__).parent.parent / "templates"
# Severity order for a matrix cell's colour: the worst verdict in it wins.
SEVERITY = ("error", "fail", "xpass", "xfail", "characterized", "pass", "skip")
VERDICT_ORDER = ("pass", "fail", "error", "xfail", "xpass", "characterized", "skip")
DETAILED = ("fail", "error", "xfail", "xpass", "characterized")
FINDING_ORDER = ("fail", "error", "xpass", "xfail", "characterized")  # the findings' order: most severe first
MAX_VALUES = 8
KEY_FINDINGS = 8  # groups on the first screen
KEY_TEXT = 150  # characters of a group's reason shown there
LAZY = ("finding-list", "findings", "checks", "cross", "steps", "skips")  # the parts kept compressed in the page, inserted when opened


def mode_of(case_id: str) -> str:
    """The mode of a case's last step ("train" or "eval")."""
    case = CASES.get(case_id)
    if case is not None:
        return case.modes[-1]
    parts = case_id.split("-")
    modes = parse_modes(parts[3]) if len(parts) > 3 else ()
    return modes[-1] if modes else "?"


def anchor(check_id: str) -> str:
    return "c-" + hashlib.sha1(check_id.encode()).hexdigest()[:12]


def adapter_anchor(name: str) -> str:
    return "a-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


def fmt(v, digits: int = 6) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _worst(counts: Counter) -> str:
    return next((v for v in SEVERITY if counts[v]), "none")


def _matrix(records, adapters_meta):
    quantities = [q for q in QUANTITIES if any(r["quantity"] == q for r in records)]
    quantities += sorted({r["quantity"] for r in records} - set(quantities))
    cells: dict[tuple[str, str], dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        cells[(label(r), mode_of(r["case"]))][r["quantity"]][r["verdict"]] += 1  # a row per adapter@path
    rows = []
    for (adapter, mode) in sorted(cells, key=lambda k: (k[0].split("@")[0], "@" in k[0], k)):  # eager, then paths
        row_cells, total = [], Counter()
        for q in quantities:
            c = cells[(adapter, mode)].get(q, Counter())
            total += c
            row_cells.append(_cell(c, q))
        rows.append({"adapter": adapter, "anchor": adapter_anchor(adapter.split("@")[0]), "mode": mode, "cells": row_cells, "total": _cell(total, ""),
                     "installed": True})
    have = {a.split("@")[0] for a, _ in cells}
    for a in adapters_meta:
        if a["name"] not in have and not a.get("available", True):
            have.add(a["name"])
            rows.append({"adapter": a["name"], "mode": "", "cells": [], "total": None, "installed": False,
                         "install": a.get("install", ""), "missing": ", ".join(a.get("missing", []))})
    return {"quantities": quantities, "rows": rows}


def _cell(c: Counter, quantity: str) -> dict:
    n = sum(c.values())
    worst = _worst(c)
    bad = c["fail"] + c["error"] + c["xpass"]
    return {"n": n, "worst": worst, "counts": [(v, c[v]) for v in VERDICT_ORDER if c[v]], "quantity": quantity,
            "sort": (SEVERITY[::-1].index(worst) if worst in SEVERITY else -1) * 100000 + bad * 100 + n,
            "title": ", ".join(f"{c[v]} {v}" for v in VERDICT_ORDER if c[v]) or "no checks"}


def _adapters(records, metas):
    info: dict[str, dict] = {}
    for m in metas:
        for a in m.get("adapters", []):
            if a["name"] not in info or a.get("available"):
                info[a["name"]] = dict(a)
    by_adapter: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_adapter[r["adapter"]].append(r)
    stale: dict[str, list[dict]] = defaultdict(list)
    for m in metas:
        for e in m.get("stale_registry") or []:
            stale[e.get("source", "")].append(e)
    out = []
    names = sorted(set(info) | set(by_adapter), key=lambda n: (not info.get(n, {}).get("available", True), n))
    for name in names:
        recs = by_adapter.get(name, [])
        a = info.get(name, {"name": name, "available": True})
        first = recs[0] if recs else {}
        skips: dict[str, list[str]] = defaultdict(list)
        deviations: dict[str, dict] = {}
        for r in recs:
            if r["verdict"] == "skip" and not r.get("registry"):
                skips[r.get("reason") or "no reason given"].append(f"{r['case']} / {r['quantity']}")
            reg = r.get("registry")
            if reg:
                d = deviations.setdefault(reg["id"], {**reg, "verdicts": Counter()})
                d["verdicts"][r["verdict"]] += 1
        versions = sorted({r.get("version", "") for r in recs if r.get("version")})
        paths = _paths_of(recs, a.get("paths_declared") or [])
        out.append({
            "name": name, "anchor": adapter_anchor(name),
            "available": a.get("available", True), "install": a.get("install", ""),
            "missing": ", ".join(a.get("missing", [])),
            "api": a.get("api") or first.get("api", ""), "framework": a.get("framework") or first.get("framework", ""),
            "versions": versions or ([a["version"]] if a.get("version") else []),
            "device": sorted({r.get("device", "") for r in recs if r.get("device")}),
            "convention": a.get("convention") or {}, "source": a.get("source") or "",
            "precision": a.get("precision") or {},
            "counts": [(v, n) for v, n in ((v, sum(r["verdict"] == v for r in recs)) for v in VERDICT_ORDER) if n],
            "skips": sorted(((reason, sorted(items)) for reason, items in skips.items()), key=lambda t: -len(t[1])),
            "deviations": [{**d, "verdicts": sorted(d["verdicts"].items())} for _, d in sorted(deviations.items())],
            "planned": a.get("planned"), "done": len(recs), "paths": paths,
            "warnings": a.get("warnings") or [], "log": a.get("log") or None,
        })
    known = {a["name"] for a in out}
    return out, [e for lst in stale.values() for e in lst], known


def _paths_of(recs: list[dict], declared: list[dict]) -> list[dict]:
    """Per execution path an adapter ran on: what the path is, its verdicts, and what was observed about how it ran
    (graph breaks, the exported mode, what was folded: the records' facts other than the device)."""
    what = {d["name"]: d.get("what", "") for d in declared}
    by_path: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_path[r.get("path", "eager")].append(r)
    out = []
    for path in sorted(by_path, key=lambda p: (p != "eager", p)):
        rs = by_path[path]
        facts = sorted({f"{k}: {v}" for r in rs for k, v in (r.get("facts") or {}).items() if k != "device"})
        out.append({"name": path, "what": what.get(path, ""), "facts": facts[:12],
                    "counts": [(v, n) for v, n in ((v, sum(r["verdict"] == v for r in rs)) for v in VERDICT_ORDER)
                               if n]})
    return out


def _detail(r: dict) -> dict:
    m = r.get("metrics") or {}
    hist = svg.error_histogram(m.get("error_hist"), allowed=results.number(m.get("allowed")),
                               max_abs=results.number(m.get("max_abs")), exact=m.get("exact_matches") or 0)
    diag = r.get("diagnosis")
    if isinstance(diag, dict):
        summary = diag.get("summary")
        extra = {k: v for k, v in diag.items() if k != "summary"}
        diagnosis = {"summary": summary, "extra": json.dumps(extra, indent=2, sort_keys=True) if extra else ""}
    elif diag:
        diagnosis = {"summary": str(diag), "extra": ""}
    else:
        diagnosis = None
    metrics = []
    if m:
        total = m.get("total") or 0
        metrics = [("observed / bound", fmt(results.number(m.get("ratio")), 4)),
                   ("mismatched elements", f"{m.get('mismatched', 0)} of {total}"),
                   ("max |abs| error", fmt(results.number(m.get("max_abs")))),
                   ("max relative error", fmt(results.number(m.get("max_rel")))),
                   (f"max ulp ({r.get('dtype', '')})", fmt(results.number(m.get("max_ulp")), 4))]
    worst = None
    if m and m.get("worst_index") is not None:
        worst = [("index", str(tuple(m["worst_index"]))), ("channel", fmt(m.get("worst_channel"))),
                 ("step", fmt(m.get("worst_step"))), ("observed", fmt(results.number(m.get("observed")), 9)),
                 ("expected", fmt(results.number(m.get("expected")), 9)),
                 ("allowed error there", fmt(results.number(m.get("allowed")), 4))]
        worst = [(k, v) for k, v in worst if v != ""]
    tol = r.get("tolerance") or {}
    return {
        "metrics": metrics, "problem": m.get("problem"), "problem_detail": m.get("detail", ""), "worst": worst,
        "channel_stats": _ordered(r.get("channel_stats") or {}, CHANNEL_KEYS),
        "histogram": hist,
        "tolerance_formula": tol.get("formula", ""),
        "tolerance": [(k, fmt(v, 6)) for k, v in _ordered(tol, TOLERANCE_KEYS, raw=True) if k != "formula" and v is not None],
        "repro": r.get("repro") or "", "diagnosis": diagnosis, "message": r.get("message") or "",
        "characterization": r.get("characterization") or "",
    }


CHANNEL_KEYS = ("channel", "step", "n", "mean", "var", "normalized_with_mean", "normalized_with_var", "source")
TOLERANCE_KEYS = ("n", "kappa", "u_compute", "u_io", "u_stats", "u_params", "u_saved", "variance", "safety",
                  "ill_posed")


def _ordered(d: dict, keys, raw: bool = False) -> list[tuple[str, object]]:
    """Items in a readable order (files store keys sorted), unknown keys last."""
    items = [(k, d[k]) for k in keys if k in d] + [(k, d[k]) for k in sorted(d) if k not in keys]
    return items if raw else [(k, fmt(v, 9)) for k, v in items]


def _checks(records):
    rows, details = [], []
    for r in records:  # records arrive ordered by check id; findings are sorted by severity below
        m = r.get("metrics") or {}
        ratio = results.number(m.get("ratio")) if m else None
        row = {"id": r["check_id"], "adapter": label(r), "path": r.get("path", "eager"), "case": r["case"],
               "quantity": r["quantity"],
               "mode": mode_of(r["case"]), "dtype": r.get("dtype", ""), "verdict": r["verdict"],
               "ratio": fmt(ratio, 3), "ratio_sort": -1 if ratio is None else ratio,
               "ratio_bar": svg.ratio_bar(ratio) if ratio is not None else "",
               "reason": (r.get("reason") or "").splitlines()[0][:160] if r.get("reason") else "",
               "anchor": anchor(r["check_id"]), "detailed": r["verdict"] in DETAILED,
               "registry": r.get("registry")}
        rows.append(row)
        if row["detailed"]:
            details.append({**row, **_detail(r), "path": r.get("path") or "eager"})
    details.sort(key=lambda d: (FINDING_ORDER.index(d["verdict"]), -d["ratio_sort"], d["id"]))
    return rows, details


def _cause(r: dict) -> tuple[str, str, str]:
    """(key, what, link) of a finding: its registry entry, else its diagnosis, else its reason."""
    reg = r.get("registry") or {}
    if reg.get("id"):
        return "reg:" + reg["id"], f"{reg['id']}: {reg.get('reason', '')}", reg.get("link") or ""
    diag = r.get("diagnosis")
    summary = diag.get("summary") if isinstance(diag, dict) else (str(diag) if diag else "")
    if summary:  # one group per explanation: the quantity it starts with and its ratios differ per check
        general = re.sub(r"\s*\([^()]*\d[^()]*\)", "", summary)
        general = general[len(r["quantity"]) + 1:] if general.startswith(r["quantity"] + " ") else general
        return "diag:" + general, general, ""
    reason = (r.get("characterization") or r.get("reason") or "").splitlines()
    text = reason[0][:240] if reason else "outside the bound, no diagnosis fits"
    if r["verdict"] == "error":
        text = re.sub(r"0x[0-9a-f]+|\d+(\.\d+)? s\b", "…", text)  # group errors that differ in addresses/times
    return "why:" + text, text, ""


def _key_findings(records) -> list[dict]:
    """Findings grouped by verdict and cause (one registry entry, diagnosis or error, whichever adapters it
    concerns), most severe first, then most checks: the first screen."""
    groups: dict[tuple, dict] = {}
    for r in records:
        if r["verdict"] not in DETAILED:
            continue
        key, what, link = _cause(r)
        g = groups.setdefault((r["verdict"], key), {
            "verdict": r["verdict"], "adapters": set(), "what": what, "link": link, "n": 0, "cases": set(),
            "quantities": set(), "ratio": None, "anchor": anchor(r["check_id"]), "anchor_ratio": -2.0})
        g["n"] += 1
        g["adapters"].add(label(r))  # adapter@path off the eager path
        g["cases"].add(r["case"])
        g["quantities"].add(r["quantity"])
        ratio = results.number((r.get("metrics") or {}).get("ratio"))
        if ratio is not None and (g["ratio"] is None or ratio > g["ratio"]):
            g["ratio"] = ratio
        if (ratio if ratio is not None else -1.0) > g["anchor_ratio"]:  # link the largest of the group
            g["anchor"], g["anchor_ratio"] = anchor(r["check_id"]), ratio if ratio is not None else -1.0
    for g in groups.values():
        g["adapter"] = ", ".join(sorted(g.pop("adapters")))
    out = sorted(groups.values(), key=lambda g: (FINDING_ORDER.index(g["verdict"]), -g["n"],
                                                 -(g["ratio"] or 0.0), g["adapter"], g["what"]))
    for g in out:
        g["full"] = g["what"]
        if len(g["what"]) > KEY_TEXT:  # the first screen gets the gist; the finding has the whole reason
            g["what"] = g["what"][:KEY_TEXT].rsplit(" ", 1)[0] + " …"
        quantities = [q for q in QUANTITIES if q in g["quantities"]] + sorted(g["quantities"] - set(QUANTITIES))
        size = (f"error/bound up to {fmt(g['ratio'], 3)}" if g["ratio"] is not None and math.isfinite(g["ratio"])
                else "shape, dtype or NaN/Inf mismatch" if g["ratio"] is not None else "")
        g["size"] = size
        g["where"] = (f"{g['n']} check{'s' if g['n'] != 1 else ''}: {', '.join(quantities[:5])}"
                      f"{', ...' if len(quantities) > 5 else ''} in {len(g['cases'])} case"
                      f"{'s' if len(g['cases']) != 1 else ''}")
        for k in ("cases", "quantities", "anchor_ratio"):
            del g[k]
    return out


def _convention_differences(tables: list[dict]) -> list[dict]:
    """Each framework whose own defaults give other numbers than the reference's, and why (the defaults-hazard
    tables), and every declared convention the outputs contradict (the conventions table)."""
    out = []
    for t in tables:
        cols = t["columns"]
        if t["id"].startswith("defaults-") and "why it differs" in cols:
            why_at = cols.index("why it differs")
            sizes = [i for i, c in enumerate(cols) if c.startswith(("running_var[0]", "y[0]"))]
            for row in t["rows"]:
                why = row[why_at]["text"]
                if why in ("reference", "same conventions"):
                    continue
                size = "; ".join(f"{cols[i]} {row[i]['text']}" for i in sizes if "%" in row[i]["text"])
                out.append({"adapter": row[0]["text"], "why": why, "size": size, "anchor": t["anchor"]})
        elif t["id"] == "conventions" and t.get("disagreements"):
            out += [{"adapter": line.split(":", 1)[0], "why": line.split(":", 1)[1].strip(), "size": "declared "
                     "≠ observed", "anchor": t["anchor"]} for line in t["disagreements"]]
    return out


def _ratio_plots(records) -> dict[str, Markup]:
    """Per adapter: how its checks' error/bound ratios spread (checks with a ratio: pass, fail, xfail, ...)."""
    by_adapter: dict[str, list[float]] = defaultdict(list)
    for r in records:
        ratio = results.number((r.get("metrics") or {}).get("ratio"))
        if ratio is not None:
            by_adapter[r["adapter"]].append(ratio)
    return {a: svg.ratio_distribution(v) for a, v in by_adapter.items()}


def _step_plots(records) -> list[dict]:
    """Multi-step cases: each adapter's running statistic (channel 0) after every step, with the oracle's."""
    by_case: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        steps = (r.get("values") or {}).get("steps")
        if steps:
            by_case[(r["case"], r["quantity"])].append(r)
    out = []
    for (case_id, q), recs in sorted(by_case.items()):
        recs.sort(key=label)
        oracles: dict[tuple, list[str]] = {}
        for r in recs:
            oracles.setdefault(tuple(map(str, r["values"]["steps"]["expected"])), []).append(label(r))
        series = [{"label": "oracle" if len(oracles) == 1 else f"oracle ({', '.join(who)})", "oracle": True,
                   "values": [results.number(v) for v in exp]} for exp, who in oracles.items()]
        series += [{"label": label(r), "oracle": False, "verdict": r["verdict"],
                    "values": [results.number(v) for v in r["values"]["steps"]["observed"]]} for r in recs]
        case = CASES.get(case_id)
        out.append({"case": case_id, "quantity": q, "note": case.note if case else "",
                    "svg": svg.step_lines(series, title=f"{q}[0] after each step")})
    return out


def _pack(texts, sort_keys: bool = True) -> str:
    """Texts (a str, a list of them or a dict of them) as compact data inside the page: their distinct lines
    once, in order of first use ("lines"), each text a list of indices into them ("text", "list" or "map"
    after the shape); then JSON, gzip'd (no timestamp: the same report bit for bit) and base64.

    The pool is what keeps the page small: the texts repeat whole lines far apart, beyond gzip's 32 kB
    window (a repro snippet differs from its siblings of the same adapter x case x path only in the
    quantity's lines; a registry reason recurs in every finding it covers; 0.57 -> 0.34 MB for a default
    run's 1,499 finding bodies). sort_keys=False keeps the (deterministic) order the caller built."""
    lines: dict[str, int] = {}

    def indices(text: str) -> list[int]:
        return [lines.setdefault(line, len(lines)) for line in text.split("\n")]

    if isinstance(texts, str):
        shape = {"text": indices(texts)}
    elif isinstance(texts, dict):
        shape = {"map": {k: indices(texts[k]) for k in (sorted(texts) if sort_keys else texts)}}
    else:
        shape = {"list": [indices(t) for t in texts]}
    raw = json.dumps({"lines": list(lines), **shape}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def _by_cause(detail: dict) -> tuple:
    reg = detail.get("registry") or {}
    return (reg.get("id") or "", detail["adapter"], detail["path"], detail["case"], detail["quantity"], detail["id"])


def unpack(text: str):
    """The texts `_pack` packed, in their shape (report.js's `unpack` does the same in the browser)."""
    data = json.loads(gzip.decompress(base64.b64decode(text)).decode("utf-8"))
    lines = data["lines"]

    def text_of(indices: list[int]) -> str:
        return "\n".join(lines[i] for i in indices)

    if "text" in data:
        return text_of(data["text"])
    if "map" in data:
        return {k: text_of(v) for k, v in data["map"].items()}
    return [text_of(v) for v in data["list"]]


def expand(html: str) -> str:
    """The report with its lazily inserted parts (finding bodies, the checks table, the cross-framework cases)
    appended as plain HTML: what a reader sees after opening everything."""
    parts = [html]
    for name in LAZY:
        m = re.search(rf'<script type="application/octet-stream" id="data-{re.escape(name)}">([^<]*)</script>', html)
        if m:
            data = unpack(m.group(1).strip())
            parts += [data] if isinstance(data, str) else data.values() if isinstance(data, dict) else data
    return "\n".join(parts)


def _cross(records):
    """Per case: for each quantity, the oracle's values (one row per distinct expected sample, labelled with
    the adapters whose declared convention gives it) and every adapter's observed values."""
    by_case: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("values"):
            by_case[r["case"]][r["quantity"]].append(r)
    out = []
    for case_id in sorted(by_case):
        quantities = []
        for q in [q for q in QUANTITIES if q in by_case[case_id]] + sorted(set(by_case[case_id]) - set(QUANTITIES)):
            recs = sorted(by_case[case_id][q], key=label)
            oracles: dict[tuple, list[str]] = {}
            for r in recs:
                oracles.setdefault(tuple(map(str, r["values"]["expected"])), []).append(label(r))
            width = max(len(r["values"]["expected"]) for r in recs)
            width = min(width, MAX_VALUES)
            rows = []
            for exp, who in oracles.items():
                rec = next(r for r in recs if label(r) == who[0])
                rows.append({"kind": "oracle", "anchor": "", "label": "oracle" if len(oracles) == 1 else
                             f"oracle ({', '.join(who)})", "values": _vals(rec["values"]["expected"], width),
                             "verdict": "", "ratio": ""})
            for r in recs:
                ratio = results.number((r.get("metrics") or {}).get("ratio"))
                rows.append({"kind": "observed", "label": label(r), "verdict": r["verdict"],
                             "ratio": fmt(ratio, 3), "values": _vals(r["values"]["observed"], width),
                             "anchor": anchor(r["check_id"]) if r["verdict"] in DETAILED else ""})
            more = max(len(r["values"]["expected"]) for r in recs) > width
            quantities.append({"name": q, "width": width, "rows": rows, "more": more})
        case = CASES.get(case_id)
        out.append({"id": case_id, "note": case.note if case else "", "quantities": quantities,
                    "adapters": len({label(r) for qs in by_case[case_id].values() for r in qs})})
    return out


def _vals(values, width):
    out = []
    for v in list(values)[:width]:
        n = results.number(v)
        out.append({"text": fmt(n, 7) if n is not None else str(v), "full": repr(n) if n is not None else str(v)})
    return out + [{"text": "", "full": ""}] * (width - len(out))


def _runs(metas):
    out = []
    for m in sorted(metas, key=lambda m: (m.get("started", ""), m.get("run_id", ""))):
        git = m.get("git") or {}
        cpu = m.get("cpu") or {}
        out.append({
            "run_id": m.get("run_id", ""), "source": m.get("source", ""), "status": m.get("status", ""),
            "started": m.get("started", ""), "finished": m.get("finished") or "", "tier": m.get("tier", ""),
            "selection": m.get("selection", ""), "platform": m.get("platform", ""),
            "python": m.get("python", ""), "cpu": f"{cpu.get('model', '')} ({cpu.get('count', '?')} cores)",
            "git": (git.get("sha") or "")[:12] + (" (modified)" if git.get("dirty") else ""),
            "checksum": m.get("input_checksum", ""), "versions": sorted((m.get("versions") or {}).items()),
            "flags": sorted((m.get("flags") or {}).items()), "pip_freeze": m.get("pip_freeze") or [],
            "worker": m.get("worker", ""), "dir": m.get("_dir", ""), "bnconform": m.get("bnconform") or "",
        })
    return out


def _tables(tables):
    out = []
    for t in tables:
        out.append({"id": str(t["id"]), "anchor": "t-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(t["id"])),
                    "title": t["title"], "description": t.get("description", ""), "columns": t["columns"],
                    "rows": [[_table_cell(c) for c in row] for row in t["rows"]],
                    "disagreements": list(t.get("disagreements") or [])})
    return out


def _table_cell(c):
    if isinstance(c, float):
        return {"text": fmt(c), "sort": c}
    if isinstance(c, int) and not isinstance(c, bool):
        return {"text": str(c), "sort": c}
    if c is None:
        return {"text": "", "sort": ""}
    return {"text": c if isinstance(c, str) else json.dumps(c), "sort": c if isinstance(c, str) else ""}


def _analysis_tables(rs: results.ResultSet, computed: list[dict] | None = None) -> list[dict]:
    """The tables computed from these records (conventions, equivalence, defaults hazard; `computed` when the
    caller has them already), then any other table an analysis.json brought that the computation does not
    produce."""
    from ..explain import analysis

    if computed is None:
        computed = analysis.tables(rs.records)
    ids = {t["id"] for t in computed}
    return computed + [t for t in rs.tables if t["id"] not in ids]


def build(rs: results.ResultSet, analysis_tables: list[dict] | None = None) -> dict:
    """The report's context. `analysis_tables`: conformance.explain.analysis.tables(rs.records), when the
    caller computed them already (a run does, for its analysis.json: 0.2-0.5 s of a default run's end)."""
    records = rs.records
    counts = Counter(r["verdict"] for r in records)
    adapters, stale, _ = _adapters(records, rs.metas)
    adapters_meta = [a for m in rs.metas for a in m.get("adapters", [])]
    rows, details = _checks(records)
    runs = _runs(rs.metas)
    interrupted = [r["run_id"] for r in runs if r["status"] not in ("complete", "")]
    tables = _tables(_analysis_tables(rs, analysis_tables))
    ratio_plots = _ratio_plots(records)
    for a in adapters:
        a["ratio_plot"] = ratio_plots.get(a["name"], "")
    # the run's tier (a record's "tier" is its case's, and the default tier includes the smoke cases)
    tiers = sorted({r["tier"] for r in runs if r["tier"]}) or sorted({r.get("tier", "") for r in records})
    return {
        "title": "bnconform report",
        "counts": [(v, counts[v]) for v in VERDICT_ORDER],
        "total": len(records),
        "status": ("failing" if counts["fail"] or counts["error"] else "incomplete" if interrupted else "passing"),
        "key_findings": _key_findings(records)[:KEY_FINDINGS],
        "n_key_findings": len(_key_findings(records)),
        "conventions": _convention_differences(tables),
        "step_plots": _step_plots(records),
        "n_adapters": len({r["adapter"] for r in records}),
        "n_cases": len({r["case"] for r in records}),
        "tiers": ", ".join(t for t in tiers if t),
        "matrix": _matrix(records, adapters_meta),
        "adapters": adapters,
        "not_installed": [a for a in adapters if not a["available"]],
        "stale": stale,
        # the checks that ran: a skipped check has no numbers, and the adapters' cards list every skip with its
        # reason (half a default run's checks are skips: 0.2 MB of the page)
        "checks": [row for row in rows if row["verdict"] != "skip"],
        "details": details,
        "cross": _cross(records),
        "runs": runs,
        "interrupted": interrupted,
        "warnings": rs.warnings,
        "tables": tables,
        "verdicts": VERDICT_ORDER,
        "modes": sorted({row["mode"] for row in rows}),
        "quantities": [q for q in QUANTITIES if any(row["quantity"] == q for row in rows)],
        "adapter_names": sorted({row["adapter"] for row in rows}),
        "sources": rs.sources,
    }


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["web_link"] = web_link  # only http(s) links become hrefs
    return env


def render(rs: results.ResultSet, analysis_tables: list[dict] | None = None) -> str:
    env = _env()
    ctx = build(rs, analysis_tables)
    part = env.get_template("parts.html.j2").module
    ctx["data"] = {
        # bodies of one cause side by side: what the line pool leaves (their index lists, the lines that
        # differ only a little) falls within gzip's 32 kB window
        "findings": _pack({d["anchor"]: str(part.finding_body(d)) for d in sorted(ctx["details"], key=_by_cause)},
                          sort_keys=False),
        "checks": _pack([str(part.check_row(c)) for c in ctx["checks"]]),
        "cross": _pack({c["id"]: str(part.cross_case(c)) for c in ctx["cross"]}),
        "steps": _pack([str(part.step_plot(p)) for p in ctx["step_plots"]]),
        "finding-list": _pack(str(part.finding_list(ctx["details"]))),
        "skips": _pack({f"{a['anchor']}-{i}": ", ".join(items) for a in ctx["adapters"]
                        for i, (_, items) in enumerate(a["skips"], 1)}),
    }
    return env.get_template("report.html.j2").render(**ctx)


def write(rs: results.ResultSet, path: str | Path, analysis_tables: list[dict] | None = None) -> Path:
    html = render(rs, analysis_tables)  # rendered completely before anything is written
    return results.write_atomic(path, html)
