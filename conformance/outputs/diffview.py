"""Showing a Diff: terminal tables (rich), an offline HTML page in the report's style, and baselines.

A baseline is the small JSON form of a run kept for the common CI pattern (keep the last good run, gate the
new one): per check its verdict, observed/bound ratio and version; per adapter knob its inferred convention;
never arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from . import results
from .diff import Diff, summarize
from ..core.textsafe import web_link

CATEGORIES = (
    ("regression", "Regressions", "fail or error in NEW and did not in OLD (whatever they were: passing, "
                                  "a registered deviation, skipped, not run)"),
    ("registered", "Newly registered deviations",
     "passed in OLD, fail in NEW as a registered known deviation (xfail): a change the registry accepts"),
    ("fix", "Fixes", "failed, errored or was a registered deviation in OLD, passes in NEW"),
    ("drift", "Drift", "observed error / bound moved by more than the factor"),
    ("convention", "Convention changes", "what the framework was observed to do changed"),
    ("new", "New checks", "only in NEW"),
    ("missing", "Missing checks", "only in OLD"),
    ("other", "Other verdict changes", "e.g. skip -> pass"),
)
BASELINE_SCHEMA = 1


def summary_line(d: Diff) -> str:
    parts = [f"{len(d.of(c))} {title.lower()}" for c, title, _ in CATEGORIES if d.of(c)]
    return ", ".join(parts) if parts else "no differences"


def _cells(*cells) -> list[str]:
    """Table cells as text: rich markup escaped, terminal escapes from adapters' messages removed."""
    from ..core.textsafe import markup

    return [markup("" if c is None else str(c)) for c in cells]


def print_terminal(d: Diff, console, limit: int = 25, page: str | None = None) -> None:
    """The diff on a terminal; `page`: where the HTML page with every change is (None: none is written)."""
    from rich.table import Table

    for line in d.context:
        console.print(f"note: {line}", highlight=False, markup=False)
    if d.environment:
        t = Table(title="Environment", title_justify="left")
        for c in ("package", "OLD", "NEW"):
            t.add_column(c)
        for row in d.environment:
            t.add_row(*_cells(*row))
        if d.packages:
            t.add_row(*_cells(f"{len(d.packages)} other packages differ", ", ".join(
                f"{p} {o} -> {n}" for p, o, n in d.packages[:12]) + (", ..." if len(d.packages) > 12 else ""), ""))
        console.print(t)
    groups = summarize(d)
    if groups:
        titles = {cat: title for cat, title, _ in CATEGORIES}
        t = Table(title="What changed", title_justify="left", show_lines=True)
        t.add_column("", overflow="fold")
        t.add_column("adapter", overflow="fold")
        t.add_column("what changed", overflow="fold")
        for g in groups:
            t.add_row(*_cells(titles.get(g.category, g.category), g.adapter, g.sentence))
        console.print(t)
    for cat, title, what in CATEGORIES:
        items = d.of(cat)
        if not items:
            continue
        t = Table(title=f"{title} ({len(items)}): {what}", title_justify="left", show_lines=False)
        t.add_column("adapter", overflow="fold")
        t.add_column("case", overflow="fold")
        t.add_column("quantity")
        t.add_column("what changed", overflow="fold")
        for c in items[:limit]:
            t.add_row(*_cells(c.adapter, c.case, c.quantity, c.sentence))
        if len(items) > limit:
            t.add_row("…", f"{len(items) - limit} more " + (f"(all in {page})" if page else
                                                             "(--html PAGE lists all)"), "", "")
        console.print(t)
    if d.declared:
        t = Table(title="Declared conventions that changed", title_justify="left")
        for c in ("adapter", "knob", "OLD", "NEW"):
            t.add_column(c)
        for row in d.declared:
            t.add_row(*_cells(*row))
        console.print(t)
    console.print(f"diff: {summary_line(d)}", highlight=False)


def render_html(d: Diff, old_label: str, new_label: str, gate_reasons: list[str], title: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent.parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["web_link"] = web_link  # only http(s) links become hrefs
    sections = [{"id": cat, "title": title_, "what": what, "items": d.of(cat)} for cat, title_, what in CATEGORIES]
    titles = {cat: title_ for cat, title_, _ in CATEGORIES}
    return env.get_template("diff.html.j2").render(
        title=title, old=old_label, new=new_label, summary=summary_line(d), sections=sections,
        groups=summarize(d), titles=titles, packages=d.packages,
        environment=d.environment, declared=d.declared, gate=gate_reasons, counts=d.counts, context=d.context,
        verdicts=("pass", "fail", "error", "xfail", "xpass", "characterized", "skip"))


# -- baselines
@dataclass
class Baseline:
    """Duck-types a ResultSet for conformance.outputs.diff: records carry only what the diff reads."""

    records: list[dict]
    metas: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


KEPT = ("schema", "check_id", "adapter", "path", "case", "quantity", "verdict", "version", "tier")


def baseline_json(rs, name: str) -> str:
    meta = rs.metas[0] if rs.metas else {}
    checks = []
    for r in rs.records:
        entry = {k: r.get(k) for k in KEPT}
        ratio = (r.get("metrics") or {}).get("ratio")
        entry["ratio"] = ratio
        if r.get("registry"):  # which entry matched: a diff states registry differences between the runs
            entry["registry"] = {k: r["registry"].get(k) for k in ("id", "reason", "link")}
        ev = r.get("evidence")
        if ev and ev.get("knob"):
            entry["evidence"] = {"knob": ev["knob"], "inferred": ev.get("inferred")}
        checks.append(entry)
    doc = {"baseline_schema": BASELINE_SCHEMA, "name": name, "created": datetime.now(timezone.utc).isoformat(),
           "input_checksum": meta.get("input_checksum"), "tier": meta.get("tier"),
           "versions": meta.get("versions", {}), "selection": meta.get("selection"),
           "registry": (meta.get("flags") or {}).get("registry"), "checks": checks}
    return json.dumps(results.sanitize(doc), indent=0, sort_keys=True) + "\n"


def load_baseline(path: Path) -> Baseline:
    from ..core import validation

    if not path.exists():
        raise results.ResultsError(f"no baseline {path.stem!r} ({path} does not exist)")
    try:
        doc = validation.load_json(path, "baseline", "baseline")
    except validation.Invalid as e:
        raise results.ResultsError(str(e)) from None
    records = []
    for c in doc["checks"]:
        rec = results.upgrade(dict(c)) if isinstance(c, dict) else c
        rec["metrics"] = None if c.get("ratio") is None else {"ratio": c["ratio"]}
        rec["evidence"] = c.get("evidence")
        records.append(rec)
    meta = {"input_checksum": doc.get("input_checksum"), "versions": doc.get("versions", {}), "tier": doc.get("tier"),
            "selection": doc.get("selection"), "flags": {"registry": doc.get("registry")}}
    return Baseline(records, [meta], sources=[str(path)])


def baseline_path(out: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"baseline name {name!r}: use a plain name such as 'main' or 'torch-2.13'")
    return Path(out) / "baselines" / f"{name}.json"
