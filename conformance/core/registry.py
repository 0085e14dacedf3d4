"""Known deviations, as data: TOML files under conformance/registry/, one [[deviation]] per finding.

    [[deviation]]
    id = "tf-fused-float64"                 # stable name, unique across files
    adapter = "tf.raw_ops.FusedBatchNormV3" # glob over adapter names
    versions = ">=2.17"                     # PEP 440 specifier on the framework version ("" = any)
    cases = ["f64-*"]                       # globs over case ids
    except_cases = ["*-notrack-*"]          # globs over case ids it does not concern (optional)
    quantities = ["*"]                      # globs over quantities
    paths = ["export-onnx"]                 # globs over execution paths (optional; default: every path)
    reason = "why it deviates, in words a user understands"
    link = "https://github.com/..."         # upstream issue or source line ("" when none exists)
    action = "xfail"                        # xfail: run, expect the failure; skip: do not run (crash, hang)
    model = { debias_hidden_init = "initial_stats" }  # optional: what the framework computes instead, as
                                            # reference.Convention changes; `port` sizes the deviation with it

A check matched by an xfail entry that fails is `xfail`; one that passes is `xpass` (the deviation is gone:
remove the entry; `--strict` makes it fail). An entry is stale when a check the run evaluated is one it
covers (adapter, version, case, quantity, path) and yet the check did not carry it (another entry matched
first): reported, and `--strict` fails on it. An entry none of whose checks the run evaluated (another tier,
a path that did not run, a skipped case) is "not checked by this run", never stale.
"""
from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from reference import QUANTITIES

from . import validation

DEFAULT_DIR = Path(__file__).parent.parent / "registry"
ACTIONS = ("xfail", "skip")  # the schema (conformance/schema/registry.schema.json) is the source of the format


class RegistryError(Exception):
    """A registry file is unreadable or malformed; the message names the file and the entry."""


@dataclass
class Entry:
    id: str
    adapter: str
    cases: tuple[str, ...]
    quantities: tuple[str, ...]
    reason: str
    action: str
    versions: str = ""
    link: str = ""
    paths: tuple[str, ...] = ("*",)  # execution paths it concerns (globs)
    except_cases: tuple[str, ...] = ()  # case ids it does not concern (globs)
    source: str = ""  # file it came from
    model: dict = field(default_factory=dict, compare=False)  # Convention changes that reproduce it
    hits: int = field(default=0, compare=False)

    def applies_to(self, adapter: str, version: str) -> bool:
        if not fnmatch.fnmatchcase(adapter, self.adapter):
            return False
        if not self.versions:
            return True
        try:
            return Version(version) in SpecifierSet(self.versions)
        except InvalidVersion:
            return False

    def on_path(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in self.paths)

    def covers_case(self, case_id: str) -> bool:
        return (any(fnmatch.fnmatchcase(case_id, g) for g in self.cases)
                and not any(fnmatch.fnmatchcase(case_id, g) for g in self.except_cases))

    def covers(self, case_id: str, quantity: str) -> bool:
        return self.covers_case(case_id) and any(fnmatch.fnmatchcase(quantity, g) for g in self.quantities)

    def matches(self, adapter: str, version: str, case_id: str, quantity: str, path: str = "eager") -> bool:
        return self.applies_to(adapter, version) and self.on_path(path) and self.covers(case_id, quantity)

    def as_dict(self) -> dict:
        return {"id": self.id, "reason": self.reason, "link": self.link, "action": self.action,
                "versions": self.versions, "paths": list(self.paths), "source": self.source}


def _as_globs(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _parse_entry(raw: dict, where: str, source: str) -> Entry:
    """One [[deviation]] the schema accepted; what a schema cannot say is checked here."""
    versions = raw.get("versions", "")
    if versions:
        try:
            SpecifierSet(versions)
        except InvalidSpecifier:
            raise RegistryError(f"{where}.versions: {versions!r} is not a PEP 440 specifier") from None
    quantities = _as_globs(raw["quantities"])
    for glob in quantities:  # a misspelt quantity would silently never match
        if not any(fnmatch.fnmatchcase(q, glob) for q in QUANTITIES):
            raise RegistryError(f"{where}.quantities: {glob!r} matches no quantity (known: {', '.join(QUANTITIES)})")
    model = raw.get("model", {})  # a table (the schema says so) of Convention knobs
    from reference import Convention

    bad = sorted(set(model) - set(Convention().knobs()))
    if bad:
        raise RegistryError(f"{where}.model: unknown Convention knob(s) {', '.join(bad)}")
    return Entry(id=raw["id"], adapter=raw["adapter"], cases=_as_globs(raw["cases"]), quantities=quantities,
                 reason=raw["reason"].strip(), action=raw["action"], versions=versions, link=raw.get("link", ""),
                 paths=_as_globs(raw.get("paths", "*")),
                 except_cases=_as_globs(raw["except_cases"]) if "except_cases" in raw else (), source=source,
                 model=model)


def _entry_line(text: str, index: int) -> int:
    """The line of the index-th [[deviation]] header (for messages that name an entry)."""
    pos = -1
    for _ in range(index + 1):
        pos = text.find("[[deviation]]", pos + 1)
        if pos < 0:
            return 1
    return text.count("\n", 0, pos) + 1


class Registry:
    def __init__(self, entries: list[Entry]):
        self.entries = entries
        # (adapter, version, path) -> the entries for it, in order: an adapter's every check asks the same
        # three questions of every entry (~130 of them) before its case and quantity narrow them down
        self._applicable: dict[tuple[str, str, str], tuple[Entry, ...]] = {}

    def _for(self, adapter: str, version: str, path: str) -> tuple[Entry, ...]:
        key = (adapter, version, path)
        got = self._applicable.get(key)
        if got is None:
            got = self._applicable[key] = tuple(e for e in self.entries
                                                if e.applies_to(adapter, version) and e.on_path(path))
        return got

    @classmethod
    def load(cls, location: str | Path | None = None) -> "Registry":
        """Every *.toml in a directory (default: the bundled registry), or one file."""
        path = Path(location) if location else DEFAULT_DIR
        if path.is_dir():
            files = sorted(path.glob("*.toml"))
        elif path.is_file():
            files = [path]
        else:
            raise RegistryError(f"registry path {path} does not exist")
        entries: list[Entry] = []
        seen: dict[str, str] = {}
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
                data = tomllib.loads(text)
            except (OSError, UnicodeDecodeError) as e:
                raise RegistryError(f"{f}: cannot read: {e}") from None
            except tomllib.TOMLDecodeError as e:
                raise RegistryError(f"{f}: not valid TOML: {e}") from None
            try:
                validation.check(data, "registry", f, text=text)
            except validation.Invalid as e:
                raise RegistryError(str(e)) from None
            for i, raw in enumerate(data.get("deviation", [])):
                where = f"{f}:{_entry_line(text, i)}: deviation[{i}]"
                entry = _parse_entry(raw, where, f.name)
                if entry.id in seen:
                    raise RegistryError(f"{where}.id: {entry.id!r} already used in {seen[entry.id]}")
                seen[entry.id] = f.name
                entries.append(entry)
        return cls(entries)

    def match(self, adapter: str, version: str, case_id: str, quantity: str, path: str = "eager") -> Entry | None:
        """The first entry that matches the check (Entry.matches), its hit counted; None."""
        e = self.peek(adapter, version, case_id, quantity, path)
        if e is not None:
            e.hits += 1
        return e

    def peek(self, adapter: str, version: str, case_id: str, quantity: str, path: str = "eager") -> Entry | None:
        """Like match, without counting the hit."""
        return next((e for e in self._for(adapter, version, path) if e.covers(case_id, quantity)), None)

    def stale(self, selected: dict[str, str], hits: dict[str, int] | None = None,
              paths_run: dict[str, set[str]] | None = None,
              checks: list[tuple] | None = None) -> list[Entry]:
        """Entries for a selected adapter (name -> version) that matched no check.
        `hits` overrides the in-process counters (counts merged from worker processes); `paths_run` (adapter ->
        paths that ran; default: eager only) keeps an entry for a path that did not run from being called stale.
        With `checks` (the (adapter, case, quantity, path) the run evaluated), only entries covering one of them
        count: the others were not checked by this run (`unchecked`)."""
        covered = None if checks is None else self._covered(selected, checks)
        out = []
        for e in self.entries:
            relevant = any(e.applies_to(a, v) and any(e.on_path(p) for p in (paths_run or {}).get(a, {"eager"}))
                           for a, v in selected.items())
            count = hits.get(e.id, 0) if hits is not None else e.hits
            if relevant and count == 0 and (covered is None or e.id in covered):
                out.append(e)
        return out

    def unchecked(self, selected: dict[str, str], checks: list[tuple[str, str, str]]) -> list[Entry]:
        """Entries for a selected adapter none of whose checks the run evaluated (e.g. the smoke tier has no
        float64 case for a float64 deviation): neither confirmed nor stale."""
        covered = self._covered(selected, checks)
        return [e for e in self.entries if e.id not in covered and any(e.applies_to(a, v) for a, v in selected.items())]

    def _covered(self, selected: dict[str, str], checks) -> set[str]:
        out: set[str] = set()
        for adapter, case, quantity, *path in set(checks):
            version = selected.get(adapter, "0")
            out.update(e.id for e in self.entries
                       if e.id not in out and e.matches(adapter, version, case, quantity, *(path or ["eager"])))
        return out
