"""The execution-path dimension: which (case, path) work items an adapter runs, and how they are named.

A check is adapter x case x path x quantity. Work sent to an adapter's worker is an *item*: the case id for
eager (so eager ids and records stay what they were before paths existed) and `case-id@path` otherwise.

Which paths run (`--paths`, `--bn-paths`, `BNCONFORM_PATHS`):
  default  eager, plus every path whose declared tier is within the run's tier (expensive paths declare
           "nightly"); this is what `bnconform run` and pytest do unless told otherwise
  all      every declared path
  eager    eager only (the suite as it was before paths)
  NAMES    comma-separated path names or globs ("compile*,export-onnx"); eager only if named
Which cases a non-eager path runs: in the smoke and default tiers, the cases marked `paths=True` in the case
table (a handful chosen to exercise training, inference, sequences, float64/float32/16-bit, layouts and the
cumulative average); in nightly, every case of the tier. Eager runs every case. A case with `shards` (per-device
batch sizes) is, off a sharded path (`PathSpec.sharded`: synchronized BatchNorm across devices), its own
unsharded twin, so it runs on eager (the control) and on sharded paths only.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from adapters.base import EAGER, EAGER_PATH, PathSpec

from .cases import TIERS, Case

KEYWORDS = ("default", "all", "eager")


class PathError(ValueError):
    """A path selection that names nothing: one line for the user."""


def item(case_id: str, path: str = EAGER) -> str:
    return case_id if path == EAGER else f"{case_id}@{path}"


def split(item_key: str) -> tuple[str, str]:
    case_id, _, path = item_key.partition("@")
    return case_id, path or EAGER


def declared(spec) -> tuple[PathSpec, ...]:
    """The paths an adapter (catalogue spec) declares, read from its class without importing the framework."""
    from .catalogue import load

    try:
        return tuple(load(spec.name).paths) or (EAGER_PATH,)
    except Exception:  # noqa: BLE001  an adapter module that cannot even be imported runs (and errors) on eager
        return (EAGER_PATH,)


def check_selection(selection: str | None, declared_by_adapter: Iterable[tuple[PathSpec, ...]]) -> None:
    """Refuse a selection naming a path no selected adapter declares (with the paths that exist)."""
    tokens = _tokens(selection)
    if not tokens or tokens[0] in KEYWORDS and len(tokens) == 1:
        return
    known = sorted({p.name for paths in declared_by_adapter for p in paths})
    for t in tokens:
        if t in KEYWORDS:
            raise PathError(f"--paths: {t!r} cannot be combined with path names")
        if not any(fnmatch.fnmatchcase(k, t) for k in known):
            raise PathError(f"unknown execution path {t!r}; the selected adapters' paths: {', '.join(known)}")


def _tokens(selection: str | None) -> list[str]:
    return [t.strip() for t in (selection or "default").split(",") if t.strip()] or ["default"]


def chosen(paths: tuple[PathSpec, ...], selection: str | None, tier: str) -> list[PathSpec]:
    """The paths of one adapter that a selection and a tier run, in declaration order."""
    tokens = _tokens(selection)
    if tokens == ["eager"]:
        return [p for p in paths if p.name == EAGER]
    if tokens == ["all"]:
        return list(paths)
    if tokens == ["default"]:
        limit = TIERS.index(tier)
        return [p for p in paths if p.name == EAGER or TIERS.index(p.tier) <= limit]
    return [p for p in paths if any(fnmatch.fnmatchcase(p.name, t) for t in tokens)]


def cases_on(path: str, cases: list[Case], tier: str, sharded: bool = False) -> list[Case]:
    """The cases a path runs in a tier (see the module docstring)."""
    if path == EAGER:
        return list(cases)
    if not sharded:
        cases = [c for c in cases if not c.shards]
    return list(cases) if tier == "nightly" else [c for c in cases if c.paths]


def items(paths: tuple[PathSpec, ...], selection: str | None, tier: str, cases: list[Case]) -> list[str]:
    """Work items (see `item`) of one adapter: eager's cases first, then each other path's."""
    out = []
    for p in chosen(paths, selection, tier):
        out += [item(c.id, p.name) for c in cases_on(p.name, cases, tier, p.sharded)]
    return out


def label(record: dict) -> str:
    """How a record's adapter is shown where paths are told apart: `adapter`, or `adapter@path` off eager."""
    path = record.get("path") or EAGER
    return record["adapter"] if path == EAGER else f"{record['adapter']}@{path}"
