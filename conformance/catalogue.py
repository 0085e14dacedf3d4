"""The adapter catalogue as the engine sees it: `adapters.SPECS` plus adapters declared outside the package.

`BNCONFORM_EXTRA_ADAPTERS` names importable modules (comma separated), each with a `SPECS` tuple of
`adapters.AdapterSpec`. Their adapters are selectable by name, family or glob like the bundled ones, run in
worker processes like them (the variable is inherited by the workers), and are never part of "all": a
user's own adapter, or a test's fake one (tests/unit/fake_catalogue.py), without editing `adapters/`.
Imports no framework.
"""
from __future__ import annotations

import fnmatch
import importlib
import os

import adapters
from adapters import AdapterSpec

ENV = "BNCONFORM_EXTRA_ADAPTERS"


def extra_specs() -> list[AdapterSpec]:
    out: list[AdapterSpec] = []
    for module in filter(None, (m.strip() for m in os.environ.get(ENV, "").split(","))):
        try:
            specs = importlib.import_module(module).SPECS
        except Exception as e:  # noqa: BLE001  a user's module: SyntaxError, ImportError, anything its import raises
            raise KeyError(f"{ENV}: cannot load adapter specs from {module!r}: {type(e).__name__}: {e}") from None
        if not isinstance(specs, (tuple, list)) or not all(isinstance(s, AdapterSpec) for s in specs):
            raise KeyError(f"{ENV}: {module}.SPECS must be a tuple of adapters.AdapterSpec, not "
                           f"{type(specs).__name__}")
        out += [s for s in specs if s.name not in adapters.BY_NAME]
    return out


def select(selection: str | None) -> list[AdapterSpec]:
    """Like `adapters.select`, over the bundled and the extra adapters."""
    extra = extra_specs()
    if not extra or not selection or selection in ("all", "everything"):
        return adapters.select(selection)
    chosen: list[AdapterSpec] = []
    for token in (t.strip() for t in selection.split(",")):
        if not token:
            continue
        found = [s for s in extra if s.name == token or s.family == token or fnmatch.fnmatchcase(s.name, token)]
        try:
            found += adapters.select(token)
        except KeyError:
            if not found:
                raise
        chosen += [s for s in found if s not in chosen]
    return chosen


def spec(name: str) -> AdapterSpec:
    for s in extra_specs():
        if s.name == name:
            return s
    return adapters.spec(name)


def load(name: str):
    """An adapter instance (its module imported, its framework not)."""
    s = spec(name)
    if s.name in adapters.BY_NAME:
        return adapters.load(name)
    cls = getattr(importlib.import_module(s.module), s.cls)
    return cls(**s.kwargs) if s.kwargs else cls()
