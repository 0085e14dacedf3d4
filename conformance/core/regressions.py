"""The regression corpus: cases kept as files under conformance/corpus/, replayed by the default tier.

Two kinds, one format (`conformance/schema/corpus.schema.json`, one TOML file per case):
  corpus/fuzz/        failures `bnconform fuzz` found and shrank to a minimal case (adapter, diagnosis, seed);
  corpus/historical/  published BatchNorm bug reproducers (upstream link, the framework version concerned).

A file names the case by its fields (`[case]`) and by its id, which must equal the id those fields give:
a file edited by hand cannot silently describe another case. Metadata (origin, link, versions, diagnosis)
is data about the case, not part of it: case ids and inputs depend on the `[case]` table only.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cases import Case
# conformance.core.cases imports this module while building its table: import it inside functions only.

CORPUS_DIR = Path(__file__).parent.parent / "corpus"
SCHEMA = Path(__file__).parent.parent / "schema" / "corpus.schema.json"
# Fields of Case a corpus file may set (the rest are the table's own: tier, knob, note, characterize).
CASE_FIELDS = ("shape", "dtype", "modes", "axis", "momentum", "eps", "affine", "track_running_stats", "init_stats",
               "dist", "loc", "scale", "same_batch", "memory_format", "defaults", "seed", "only")


class CorpusError(Exception):
    """A corpus file is unreadable or invalid; the message names the file."""


@dataclass(frozen=True)
class Regression:
    case: "Case"
    meta: dict  # everything in the file but [case]: origin, note, link, versions, adapter, diagnosis, ...
    path: Path


def _validator():
    import jsonschema

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def case_table(case: "Case") -> dict:
    """The [case] table of a file for `case`: fields that differ from Case's defaults (and the three always
    written), in TOML-able types."""
    from .cases import Case, _modes_code

    defaults = {f.name: f.default for f in fields(Case)}
    out: dict = {"shape": list(case.shape), "dtype": case.dtype, "modes": _modes_code(case.modes)}
    for name in CASE_FIELDS[3:]:
        value = getattr(case, name)
        if value == defaults[name]:
            continue
        if name == "momentum" and value is None:
            value = "cumulative"
        elif name == "only":
            value = sorted(value)
        out[name] = value
    return out


def case_from_table(table: dict, *, tier: str, note: str, paths: bool = False) -> "Case":
    from .cases import Case, parse_modes

    kwargs = dict(table, paths=paths)
    kwargs["shape"] = tuple(kwargs["shape"])
    kwargs["modes"] = parse_modes(kwargs["modes"])
    if kwargs.get("momentum") == "cumulative":
        kwargs["momentum"] = None
    if "only" in kwargs:
        kwargs["only"] = tuple(kwargs["only"])
    for key in ("momentum", "eps", "loc", "scale"):
        if isinstance(kwargs.get(key), int) and not isinstance(kwargs.get(key), bool):
            kwargs[key] = float(kwargs[key])
    return Case(**kwargs, tier=tier, note=note)


def read(path: Path, validator=None) -> Regression:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise CorpusError(f"{path}: not valid TOML: {e}") from None
    validator = validator or _validator()
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "(top level)"
        raise CorpusError(f"{path}: {where}: {errors[0].message}")
    try:
        # A reproducer that names execution paths runs on every path the adapters declare (Case.paths).
        case = case_from_table(data["case"], tier="default", note=data["note"], paths=bool(data.get("paths")))
    except (TypeError, ValueError) as e:
        raise CorpusError(f"{path}: [case]: {e}") from None
    if case.id != data["id"]:
        raise CorpusError(f"{path}: id {data['id']!r} does not match its [case] table, which gives {case.id!r}")
    return Regression(case, {k: v for k, v in data.items() if k != "case"}, path)


def load(directory: Path | None = None) -> list[Regression]:
    """Every corpus file under `directory` (default: the bundled corpus), sorted by path."""
    directory = Path(directory) if directory else CORPUS_DIR
    files = sorted(directory.rglob("*.toml")) if directory.is_dir() else []
    if not files:
        return []
    validator = _validator()
    return [read(f, validator) for f in files]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form; TOML reads it back to the same double
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def render(case: "Case", meta: dict) -> str:
    """The TOML text of a corpus file (validated by reading it back in `write`)."""
    lines = ["# bnconform regression case (conformance/schema/corpus.schema.json); replayed by the default tier.",
             f"id = {_toml_value(case.id)}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in meta.items() if v not in (None, "")]
    lines += ["", "[case]"] + [f"{k} = {_toml_value(v)}" for k, v in case_table(case).items()]
    return "\n".join(lines) + "\n"


def write(case: "Case", meta: dict, directory: Path, name: str | None = None) -> Path:
    """Write a corpus file for `case` (named after its id unless `name`), validated before it is kept."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name or case.id}.toml"
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(render(case, meta), encoding="utf-8")
    try:
        got = read(tmp)
    except CorpusError:
        tmp.unlink()
        raise
    if got.case.id != case.id:
        tmp.unlink()
        raise CorpusError(f"{path}: written case reads back as {got.case.id}, not {case.id}")
    tmp.replace(path)
    return path
