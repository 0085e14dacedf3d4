"""Compare two result sets (an OLD and a NEW run, e.g. two versions of a framework) and say what changed.

Categories, per check (adapter, case, quantity):
  regressions   passed (pass / xpass) before, fails or errors now
  fixes         failed, errored or was a registered deviation before, passes now
  drift         the observed/bound ratio moved by more than a factor (default 10x), characterization included;
                ratios below a floor (default 1e-3) count as the floor, so noise in the last bits is not drift
  conventions   an inferred or declared convention of an adapter changed (from the knob cases' evidence and
                the runs' metadata)
  new, missing  checks only in one of the runs
  other         any other verdict change (skip -> pass, xfail -> error, ...)
plus the environment (framework versions) that changed. `gate()` turns the categories a user asks for into
reasons to fail (the exit status of `bnconform diff` in CI).
"""
from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    environment: list[tuple[str, str, str]] = field(default_factory=list)  # (package, old, new)
    declared: list[tuple[str, str, str, str]] = field(default_factory=list)  # (adapter, knob, old, new)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "old"/"new" -> verdict -> count

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


def _g(v) -> str:
    return "—" if v is None else f"{v:.3g}"


def _verdict_phrase(verdict, ratio) -> str:
    if ratio is None or verdict in ("skip", "error"):
        return verdict
    return f"{verdict} (error/bound {_g(ratio)})"


def diff(old, new, drift_factor: float = 10.0, drift_floor: float = 1e-3) -> Diff:
    """OLD and NEW are result sets with `.records` and `.metas` (conformance.results.ResultSet)."""
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
        o, n = before.get(cid), after.get(cid)
        ref = n or o
        ch = Change("", cid, ref["adapter"], ref["case"], ref["quantity"], o and o["verdict"], n and n["verdict"],
                    o and _ratio(o), n and _ratio(n))
        if o is None:
            ch.category, ch.sentence = "new", f"new check: {_verdict_phrase(n['verdict'], ch.new_ratio)}"
        elif n is None:
            ch.category, ch.sentence = "missing", f"no longer run (was {_verdict_phrase(o['verdict'], ch.old_ratio)})"
        elif o["verdict"] in PASSING and n["verdict"] in FAILING:
            ch.category = "regression"
            ch.sentence = (f"passed in {o.get('version', '?')}, {n['verdict']} in {n.get('version', '?')}: "
                           f"{_verdict_phrase(o['verdict'], ch.old_ratio)} -> {_verdict_phrase(n['verdict'], ch.new_ratio)}"
                           + _why(n))
        elif o["verdict"] in BROKEN_BEFORE and n["verdict"] in PASSING:
            ch.category = "fix"
            ch.sentence = (f"{o['verdict']} in {o.get('version', '?')}, passes in {n.get('version', '?')} "
                           f"(error/bound {_g(ch.old_ratio)} -> {_g(ch.new_ratio)})"
                           + ("; its registry entry is now stale" if n["verdict"] == "xpass" else ""))
        elif o["verdict"] != n["verdict"]:
            ch.category = "other"
            ch.sentence = f"{_verdict_phrase(o['verdict'], ch.old_ratio)} -> {_verdict_phrase(n['verdict'], ch.new_ratio)}"
        elif ch.old_ratio is not None and ch.new_ratio is not None:
            lo, hi = max(ch.old_ratio, drift_floor), max(ch.new_ratio, drift_floor)
            factor = hi / lo
            if factor > drift_factor or factor < 1 / drift_factor:
                ch.category = "drift"
                word = "grew" if factor > 1 else "shrank"
                ch.sentence = (f"error/bound {word} {_g(ch.old_ratio)} -> {_g(ch.new_ratio)} "
                               f"(x{factor:.3g}; still {n['verdict']})")
        if ch.category:
            d.changes.append(ch)
    d.changes += _convention_changes(before, after)
    ov, nv = _versions(old.metas), _versions(new.metas)
    d.environment = [(k, ov.get(k, "—"), nv.get(k, "—")) for k in sorted(set(ov) | set(nv)) if ov.get(k) != nv.get(k)]
    od, nd = _declared(old.metas), _declared(new.metas)
    for name in sorted(set(od) & set(nd)):
        for knob in sorted(set(od[name]) | set(nd[name])):
            if od[name].get(knob) != nd[name].get(knob):
                d.declared.append((name, knob, str(od[name].get(knob)), str(nd[name].get(knob))))
    return d


def _why(rec) -> str:
    diag = rec.get("diagnosis") or {}
    return f"; diagnosis: {diag['summary']}" if diag.get("summary") else ""


def _convention_changes(before: dict, after: dict) -> list[Change]:
    """Inferred conventions (records' evidence) that differ between the runs, one change per adapter and knob."""
    def inferred(recs):
        out = {}
        for r in recs.values():
            ev = r.get("evidence")
            if ev and ev.get("knob"):
                out.setdefault((r["adapter"], ev["knob"]), (ev.get("inferred"), r))
        return out

    old, new = inferred(before), inferred(after)
    changes = []
    for key in sorted(set(old) & set(new)):
        (ov, orec), (nv, nrec) = old[key], new[key]
        if ov != nv:
            adapter, knob = key
            changes.append(Change("convention", f"{adapter}::{knob}", adapter, nrec["case"], knob, None, None,
                                  sentence=f"{knob}: observed {ov or 'not identified'} in {orec.get('version', '?')}, "
                                           f"{nv or 'not identified'} in {nrec.get('version', '?')}"))
    return changes


GATES = ("regression", "fix", "drift", "convention", "new", "missing", "other")


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
            try:
                factor = float(arg.rstrip("xX"))
            except ValueError:
                raise ValueError(f"--fail-on {spec!r}: the drift factor must be a number, e.g. drift:10x") from None
            if factor <= 1:
                raise ValueError(f"--fail-on {spec!r}: the drift factor must be > 1")
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
            reasons.append(f"{len(items)} {cat}{'s' if len(items) != 1 else ''}")
    return reasons


def _factor(c: Change, floor: float) -> float:
    lo, hi = max(c.old_ratio or 0.0, floor), max(c.new_ratio or 0.0, floor)
    return max(hi / lo, lo / hi)
