"""Compare two result sets (an OLD and a NEW run, e.g. two versions of a framework) and say what changed.

Categories, per check (adapter, case, quantity):
  regressions   fails or errors now and did not before, whatever it was (pass, xfail, skip, characterized, or
                not run at all): a failure in NEW can never pass the gate unnoticed, e.g. an xfail that became
                a fail because NEW ran with another (or an emptied) registry
  registered    passed before, fails now as a registered deviation (xfail): a behaviour change that the
                registry accepts (an entry whose `versions` cover NEW), listed but not gated on by default
  fixes         failed, errored or was a registered deviation before, passes now
  drift         the observed/bound ratio moved by more than a factor (default 10x), characterization included;
                ratios below a floor (default 1e-3) count as the floor, so noise in the last bits is not drift
  conventions   an inferred or declared convention of an adapter changed (from the knob cases' evidence and
                the runs' metadata)
  new, missing  checks only in one of the runs
  other         any other verdict change (skip -> pass, xfail -> error, ...)
plus the environment (framework versions, and any other installed package) that changed, and the context
that explains many changes at once: the two runs' selections, tiers and registries (`Diff.context`). Every change carries a
sentence saying what changed in words (verdicts, error/bound ratios, the registry entry, a skip's reason);
`summarize()` groups them per adapter and cause ("32 checks ... registered deviation X ..."). `gate()` turns
the categories a user asks for into reasons to fail (the exit status of `bnconform diff` in CI).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.paths import label

PASSING = ("pass", "xpass")
FAILING = ("fail", "error")
BROKEN_BEFORE = ("fail", "error", "xfail")


class DiffRefused(Exception):
    """The two result sets cannot be compared (different inputs, incompatible schemas): exit status 2."""


@dataclass
class Change:
    category: str
    check_id: str
    adapter: str
    case: str
    quantity: str
    old: str | None  # verdict
    new: str | None
    old_ratio: float | None = None
    new_ratio: float | None = None
    sentence: str = ""
    old_version: str = "?"
    new_version: str = "?"
    old_note: str = ""  # what a verdict without a ratio means: a skip's reason, a dtype mismatch, "raised as declared"
    new_note: str = ""
    entry: dict | None = None  # the registry entry behind the change (NEW's for "registered", OLD's for a fix)
    detail: str = ""  # a failing check's diagnosis


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    environment: list[tuple[str, str, str]] = field(default_factory=list)  # (package, old, new)
    packages: list[tuple[str, str, str]] = field(default_factory=list)  # other installed packages that differ
    declared: list[tuple[str, str, str, str]] = field(default_factory=list)  # (adapter, knob, old, new)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "old"/"new" -> verdict -> count
    context: list[str] = field(default_factory=list)  # how the runs differ: selection, tier, registry

    def of(self, category: str) -> list[Change]:
        return [c for c in self.changes if c.category == category]


def _ratio(rec) -> float | None:
    m = rec.get("metrics") or {}
    r = m.get("ratio")
    try:
        return None if r is None else float(r)
    except (TypeError, ValueError):
        return None


def _checksum(metas) -> str | None:
    sums = {m.get("input_checksum") for m in metas if m.get("input_checksum")}
    return next(iter(sums)) if len(sums) == 1 else None


def _versions(metas) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in metas:
        out.update({k: str(v) for k, v in (m.get("versions") or {}).items()})
    return out


def _declared(metas) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m in metas:
        for a in m.get("adapters") or []:
            if a.get("convention"):
                out[a["name"]] = a["convention"]
    return out


def _installed(metas) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in metas:
        for line in m.get("pip_freeze") or []:
            name, sep, version = str(line).partition("==")
            if sep:
                out[name.lower().replace("_", "-")] = version
    return out


def _g(v) -> str:
    return "—" if v is None else f"{v:.3g}"


def _note(rec) -> str:
    """What a verdict means when its ratio does not say it."""
    m = rec.get("metrics") or {}
    if rec["verdict"] == "skip":
        return rec.get("reason") or ""
    if m.get("problem"):  # shape, dtype or NaN/Inf pattern: the ratio is inf and says nothing
        return m.get("detail") or m["problem"]
    reason = rec.get("reason") or ""
    return "" if _ratio(rec) is not None or reason.startswith("registered") else reason


def _phrase(verdict, ratio, note="") -> str:
    if note:
        return f"{'skipped' if verdict == 'skip' else verdict} ({note})"
    if ratio is None or verdict in ("skip", "error"):
        return verdict
    return f"{verdict} (error/bound {_g(ratio)})"


def _magnitude(factor: float) -> float:
    """How far a ratio moved, either way: max(f, 1/f), infinite where one of the two ratios is (a NaN/Inf
    pattern mismatch has ratio inf, so the factor between it and a finite ratio is 0 or inf)."""
    return math.inf if factor == 0.0 or math.isinf(factor) else max(factor, 1 / factor)


def _times(factor: float) -> str:
    if math.isinf(_magnitude(factor)):
        return "now infinite" if factor else "no longer infinite"
    return f"{factor:.3g}x larger" if factor >= 1 else f"{1 / factor:.3g}x smaller"


def _fold(magnitude: float) -> str:
    return "infinitely" if math.isinf(magnitude) else f"{magnitude:.3g}x"


def diff(old, new, drift_factor: float = 10.0, drift_floor: float = 1e-3) -> Diff:
    """OLD and NEW are result sets with `.records` and `.metas` (conformance.outputs.results.ResultSet)."""
    a, b = _checksum(old.metas), _checksum(new.metas)
    if a and b and a != b:
        raise DiffRefused(f"the runs used different inputs (input checksum {a[:12]} vs {b[:12]}): compare runs of "
                          "the same tier and the same bnconform version")
    old_schemas = {r.get("schema") for r in old.records}
    new_schemas = {r.get("schema") for r in new.records}
    if old_schemas != new_schemas:
        raise DiffRefused(f"incompatible results schema versions {sorted(map(str, old_schemas))} and "
                          f"{sorted(map(str, new_schemas))}")
    before = {r["check_id"]: r for r in old.records}
    after = {r["check_id"]: r for r in new.records}
    d = Diff()
    for side, recs in (("old", old.records), ("new", new.records)):
        counts: dict[str, int] = {}
        for r in recs:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        d.counts[side] = counts
    for cid in sorted(set(before) | set(after)):
        ch = _classify(before.get(cid), after.get(cid), drift_factor, drift_floor)
        if ch.category:
            d.changes.append(ch)
    d.changes += _convention_changes(before, after)
    ov, nv = _versions(old.metas), _versions(new.metas)
    d.environment = [(k, ov.get(k, "—"), nv.get(k, "—")) for k in sorted(set(ov) | set(nv)) if ov.get(k) != nv.get(k)]
    oi, ni = _installed(old.metas), _installed(new.metas)
    shown = {k.lower().replace("_", "-") for k in set(ov) | set(nv)} | {"bnconform"}
    if oi and ni:  # both runs list their packages (a baseline does not)
        d.packages = [(k, oi.get(k, "—"), ni.get(k, "—")) for k in sorted(set(oi) | set(ni))
                      if oi.get(k) != ni.get(k) and k not in shown]
    d.context = _context(old, new)
    od, nd = _declared(old.metas), _declared(new.metas)
    for name in sorted(set(od) & set(nd)):
        for knob in sorted(set(od[name]) | set(nd[name])):
            if od[name].get(knob) != nd[name].get(knob):
                d.declared.append((name, knob, str(od[name].get(knob)), str(nd[name].get(knob))))
    return d


def _flag(metas, key: str) -> str:
    vals = sorted({str(m.get(key) if key in m else (m.get("flags") or {}).get(key)) for m in metas} - {"None"})
    return ", ".join(vals)


def _entries(records) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if r.get("registry"):
            out[r["registry"]["id"]] = out.get(r["registry"]["id"], 0) + 1
    return out


def _names(ids: dict[str, int], limit: int = 4) -> str:
    names = sorted(ids)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _context(old, new) -> list[str]:
    """Sentences on how the two runs differ besides the frameworks: what was selected, the tier, the registry."""
    out = []
    for key, what in (("selection", "selection"), ("tier", "tier")):
        a, b = _flag(old.metas, key), _flag(new.metas, key)
        if a and b and a != b:
            out.append(f"the {what} differs: OLD {a!r}, NEW {b!r}")
    oa, na = {r["adapter"] for r in old.records}, {r["adapter"] for r in new.records}
    if oa - na:
        out.append(f"adapters only in OLD: {', '.join(sorted(oa - na))}")
    if na - oa:
        out.append(f"adapters only in NEW: {', '.join(sorted(na - oa))}")
    a, b = _flag(old.metas, "registry"), _flag(new.metas, "registry")
    if a != b:
        out.append(f"the registry differs: OLD {a or 'the bundled one'}, NEW {b or 'the bundled one'}")
    oe, ne = _entries(old.records), _entries(new.records)
    gone = {k: v for k, v in oe.items() if k not in ne}
    added = {k: v for k, v in ne.items() if k not in oe}
    if gone:
        out.append(f"{len(gone)} registry entr{'y' if len(gone) == 1 else 'ies'} matched {sum(gone.values())} checks "
                   f"in OLD and none in NEW: {_names(gone)}")
    if added:
        out.append(f"{len(added)} registry entr{'y' if len(added) == 1 else 'ies'} matched {sum(added.values())} "
                   f"checks in NEW and none in OLD: {_names(added)}")
    return out


def _why(rec) -> str:
    diag = rec.get("diagnosis") or {}
    return f"; diagnosis: {diag['summary']}" if diag.get("summary") else ""


def _classify(o: dict | None, n: dict | None, drift_factor: float, drift_floor: float) -> Change:
    """One check in OLD (o) and NEW (n): its category ("" when nothing worth reporting changed) and sentence."""
    ref = n or o
    ch = Change("", ref["check_id"], label(ref), ref["case"], ref["quantity"], o and o["verdict"],
                n and n["verdict"], o and _ratio(o), n and _ratio(n))
    if o is not None:
        ch.old_version, ch.old_note = str(o.get("version") or "?"), _note(o)
    if n is not None:
        ch.new_version, ch.new_note = str(n.get("version") or "?"), _note(n)
    ov, nv = ch.old_version, ch.new_version
    before = o and _phrase(o["verdict"], ch.old_ratio, ch.old_note)
    after = n and _phrase(n["verdict"], ch.new_ratio, ch.new_note)
    if o is None:
        ch.category, ch.sentence = "new", f"new check: {after}"
        if n["verdict"] in FAILING:  # not in OLD and failing: a regression all the same
            ch.category, ch.detail = "regression", (n.get("diagnosis") or {}).get("summary") or ""
            ch.sentence = f"new check (not run in OLD), {n['verdict']} in {nv}: {after}" + _why(n)
    elif n is None:
        ch.category, ch.sentence = "missing", f"no longer run (was {before})"
    elif n["verdict"] in FAILING and o["verdict"] not in FAILING:
        ch.category, ch.detail = "regression", (n.get("diagnosis") or {}).get("summary") or ""
        if o["verdict"] in PASSING:
            ch.sentence = f"passed in {ov}, {n['verdict']} in {nv}: {before} -> {after}" + _why(n)
        else:
            ch.entry = o.get("registry")
            was = (f"the registered deviation {ch.entry['id']} ({before})" if o["verdict"] == "xfail" and ch.entry
                   else before)
            ch.sentence = f"was {was} in {ov}, {n['verdict']} in {nv}: {after}" + _why(n)
            if o["verdict"] == "xfail" and not n.get("registry"):
                ch.sentence += "; no registry entry matched it in NEW"
    elif o["verdict"] in PASSING and n["verdict"] == "xfail":
        ch.category, ch.entry = "registered", n.get("registry")
        ch.sentence = (f"passed in {ov} ({before}); in {nv} it fails as the registered deviation "
                       f"{(ch.entry or {}).get('id', '?')}: {after}")
    elif o["verdict"] in BROKEN_BEFORE and n["verdict"] in PASSING:
        ch.category = "fix"
        if o["verdict"] == "xfail":
            ch.entry = o.get("registry")
            ch.sentence = (f"the registered deviation {(ch.entry or {}).get('id', '?')} of {ov} ({before}) no longer "
                           f"occurs in {nv}: {after}")
        else:
            ch.sentence = f"{o['verdict']} in {ov}, passes in {nv}: {before} -> {after}"
        if n["verdict"] == "xpass":
            ch.sentence += "; its registry entry is now stale (narrow its versions or remove it)"
    elif o["verdict"] != n["verdict"]:
        ch.category, ch.entry = "other", n.get("registry") or o.get("registry")
        ch.sentence = f"{before} in {ov} -> {after} in {nv}"
    elif ch.old_ratio is not None and ch.new_ratio is not None:
        factor = max(ch.new_ratio, drift_floor) / max(ch.old_ratio, drift_floor)
        if factor > drift_factor or factor < 1 / drift_factor:
            ch.category = "drift"
            ch.sentence = (f"error/bound {'grew' if factor > 1 else 'shrank'} {_g(ch.old_ratio)} -> "
                           f"{_g(ch.new_ratio)} ({_times(factor)}; still {n['verdict']})")
    return ch


def _convention_changes(before: dict, after: dict) -> list[Change]:
    """Inferred conventions (records' evidence) that differ between the runs, one change per adapter and knob."""
    def inferred(recs):
        out = {}
        for r in recs.values():
            ev = r.get("evidence")
            if ev and ev.get("knob"):
                out.setdefault((label(r), ev["knob"]), (ev.get("inferred"), r))
        return out

    old, new = inferred(before), inferred(after)
    changes = []
    for key in sorted(set(old) & set(new)):
        (ov, orec), (nv, nrec) = old[key], new[key]
        if ov != nv:
            adapter, knob = key
            changes.append(Change("convention", f"{adapter}::{knob}", adapter, nrec["case"], knob, None, None,
                                  sentence=f"{knob}: observed {ov or 'not identified (no candidate fits)'} in "
                                           f"{orec.get('version', '?')}, {nv or 'not identified (no candidate fits)'} "
                                           f"in {nrec.get('version', '?')}"))
    return changes


REGRESSION_MEANS = "a regression is a check that fails or errors in NEW and did not in OLD"
GATES = ("regression", "registered", "fix", "drift", "convention", "new", "missing", "other")
_NOUNS = {"registered": ("newly registered deviation", "newly registered deviations"), "fix": ("fix", "fixes")}


def parse_fail_on(specs: list[str]) -> dict[str, float | None]:
    """["drift:10x", "convention"] -> {"drift": 10.0, "convention": None}; regressions always gate."""
    out: dict[str, float | None] = {"regression": None}
    for spec in specs:
        name, _, arg = spec.partition(":")
        name = {"regressions": "regression", "fixes": "fix", "conventions": "convention"}.get(name, name)
        if name not in GATES:
            raise ValueError(f"--fail-on {spec!r}: choose from {', '.join(GATES)} (drift takes a factor: drift:10x)")
        factor = None
        if arg:
            if name != "drift":
                raise ValueError(f"--fail-on {spec!r}: only drift takes an argument")
            from ..core.validation import FACTOR, parsed

            factor = parsed(FACTOR, arg.rstrip("xX"), f"--fail-on {spec!r}: the drift factor")
        out[name] = factor
    return out


def gate(d: Diff, fail_on: dict[str, float | None], drift_floor: float = 1e-3) -> list[str]:
    """Reasons the diff fails the gate (empty: it passes)."""
    reasons = []
    for cat, arg in fail_on.items():
        items = d.of(cat)
        if cat == "drift" and arg is not None:
            items = [c for c in items if _factor(c, drift_floor) > arg]
        if cat == "convention":
            items = items + [Change("convention", f"{a}::{k}", a, "", k, None, None) for a, k, _, _ in d.declared]
        if items:
            one, many = _NOUNS.get(cat, (cat, f"{cat}s"))
            reasons.append(f"{len(items)} {one if len(items) == 1 else many}")
    return reasons


def _factor(c: Change, floor: float) -> float:
    lo, hi = max(c.old_ratio or 0.0, floor), max(c.new_ratio or 0.0, floor)
    return max(hi / lo, lo / hi)


# -- the changes grouped per adapter and cause, one sentence each (the top of the terminal and HTML output)
@dataclass
class Group:
    category: str
    adapter: str
    changes: list[Change]
    sentence: str = ""
    detail: str = ""  # the registry entry's reason, or a regression's diagnosis
    link: str = ""


def _span(values, fmt=_g) -> str:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return "—"
    return fmt(vals[0]) if fmt(vals[0]) == fmt(vals[-1]) else f"{fmt(vals[0])} to {fmt(vals[-1])}"


def _where(changes: list[Change]) -> str:
    """"y, dx in f64-8x4-... and 2 more cases": which checks, compactly."""
    quantities = sorted({c.quantity for c in changes})
    cases = sorted({c.case for c in changes})
    where = cases[0] if len(cases) == 1 else f"{len(cases)} cases ({', '.join(cases[:2])}{', ...' if len(cases) > 2 else ''})"
    return f"{', '.join(quantities)} in {where}"


def _versions_of(changes: list[Change], side: str) -> str:
    return "/".join(sorted({getattr(c, f"{side}_version") for c in changes}))


def _side(changes: list[Change], side: str) -> str:
    """The error/bound ratios of one side, or what they cannot say (a dtype mismatch, "raised as declared")."""
    finite = [r for c in changes if (r := getattr(c, f"{side}_ratio")) is not None and r != float("inf")]
    notes = sorted({getattr(c, f"{side}_note") for c in changes if getattr(c, f"{side}_ratio") in (None, float("inf"))
                    and getattr(c, f"{side}_note") and getattr(c, side) != "skip"})
    parts = ([f"error/bound {_span(finite)}"] if finite else []) + notes[:2] + (["..."] if len(notes) > 2 else [])
    return "; ".join(parts)


def _ratios(changes: list[Change]) -> str:
    before, after = _side(changes, "old"), _side(changes, "new")
    if before and after:
        both = before.startswith("error/bound ") and after.startswith("error/bound ")
        return f"; {before} -> {after.removeprefix('error/bound ') if both else after}"
    return f"; {before or after} {'before' if before else 'now'}" if before or after else ""


def _group_key(c: Change) -> tuple:
    entry = (c.entry or {}).get("id", "")
    if c.category == "drift":
        return (c.category, c.adapter, (c.new_ratio or 0) > (c.old_ratio or 0))
    if c.category in ("other", "new", "missing"):
        return (c.category, c.adapter, c.old, c.new, entry if c.new == "xfail" else "",
                c.old_note if c.old == "skip" else "")
    if c.category == "convention":
        return (c.category, c.adapter, c.check_id)
    if c.category == "regression":
        return (c.category, c.adapter, "pass" if c.old in PASSING else c.old, entry, c.new)
    return (c.category, c.adapter, entry, c.new)


def summarize(d: Diff) -> list[Group]:
    """Changes grouped by category, adapter and cause, in category order, each with a sentence."""
    order = {cat: i for i, cat in enumerate(GATES)}
    groups: dict[tuple, Group] = {}
    for c in d.changes:
        key = _group_key(c)
        groups.setdefault(key, Group(c.category, c.adapter, [])).changes.append(c)
    out = sorted(groups.values(), key=lambda g: (order.get(g.category, 99), g.adapter))
    for g in out:
        cs, first = g.changes, g.changes[0]
        n, ov, nv = len(cs), _versions_of(cs, "old"), _versions_of(cs, "new")
        checks = f"{n} check{'s' if n != 1 else ''}"
        entry = first.entry or {}
        g.detail, g.link = entry.get("reason", ""), entry.get("link", "")
        if g.category == "regression":
            g.detail = first.detail
            was = {None: "were not run", "pass": "passed", "xpass": "passed", "skip": "were skipped"}.get(
                first.old, f"were {first.old}" + (f" (registered deviation {entry['id']})" if entry.get("id") else ""))
            g.sentence = f"{checks} {was} in {ov} and {first.new} in {nv}: {_where(cs)}{_ratios(cs)}"
            if first.old == "xfail" and entry.get("id"):
                g.detail = g.detail or f"registry entry {entry['id']} no longer applies in NEW"
        elif g.category == "registered":
            g.sentence = (f"{checks} passed in {ov} and fail in {nv} as the registered deviation "
                          f"{entry.get('id', '?')}: {_where(cs)}{_ratios(cs)}")
        elif g.category == "fix":
            was = f"were the registered deviation {entry['id']}" if entry.get("id") else f"{first.old} (or errored)"
            g.sentence = f"{checks} that {was} in {ov} pass in {nv}: {_where(cs)}{_ratios(cs)}"
            g.sentence += "; some registry entries are stale" if any(c.new == "xpass" for c in cs) else ""
        elif g.category == "drift":
            factors = [max(c.new_ratio or 0, 1e-3) / max(c.old_ratio or 0, 1e-3) for c in cs]
            g.sentence = (f"{checks}: error/bound {'grew' if factors[0] > 1 else 'shrank'} "
                          f"{_span((_magnitude(f) for f in factors), _fold)} from {ov} to {nv}, "
                          f"verdicts unchanged ({', '.join(sorted({c.new for c in cs}))}): {_where(cs)}{_ratios(cs)}")
        elif g.category == "convention":
            g.sentence = first.sentence
        else:
            was = f"skipped in {ov} ({first.old_note})" if first.old == "skip" and first.old_note else (
                f"{first.old or 'not run'} in {ov}")
            now = f"{first.new or 'not run'}" + (f" (registered deviation {entry['id']})"
                                                  if first.new == "xfail" and entry.get("id") else "")
            g.sentence = f"{checks} {was} -> {now} in {nv}: {_where(cs)}{_ratios(cs)}"
            g.detail = g.detail if first.new == "xfail" else ""
    return out

