"""Everything a user hands bnconform is checked here, in one place, before anything is written:

- files read from disk (records, meta.json, analysis.json, baselines, registry TOML, case/corpus files)
  against their JSON Schema in conformance/schema/ (the schema file is the single source of truth for the
  format; `jsonschema` does the checking). A violation is one line: `file:line: field: what is wrong`.
- numbers given on the command line (and to the pytest plugin): finite and in range, through the argparse
  `type=` converters below, so every subcommand gets the same treatment and the same wording.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path

SCHEMA_DIR = Path(__file__).parent.parent / "schema"
SHOWN = 60  # characters of an offending value quoted in a message (a 20 MB string stays one short line)


class Invalid(ValueError):
    """A file that does not match its schema; str() is the one line for the user."""


# -- files against their schema
@functools.cache
def schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str):
    import jsonschema

    doc = schema(name)
    cls = jsonschema.validators.validator_for(doc)
    return cls(_inline(doc, doc.get("$defs", {})))


def _inline(node, defs: dict):
    """The schema with its local `#/$defs/...` references replaced by their targets (ours are not recursive):
    resolving a reference per value made checking a record 2-3x slower."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/") and len(node) == 1:
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: (v if k == "$defs" else _inline(v, defs)) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


@functools.cache
def _fast(name: str):
    """jsonschema-rs's validator for schema `name` where it is installed (the "fast" extra), else None.

    Why: jsonschema (pure Python) takes ~0.7 ms to check a record, 14 s for the 20,000 records of a default
    run, paid when the run stores them and again whenever `report` or `diff` reads them; jsonschema-rs checks
    the same record in ~4 us. It is asked only whether a document is valid. Every violation is still found and
    worded by jsonschema, and a document it rejects goes to jsonschema too, whose verdict stands: the two differ
    where Python's and Rust's regular expressions do (Python's `$` also matches before a final newline), and
    there jsonschema decides, so the verdicts are jsonschema's with or without the extra
    (tests/unit/test_validation_fast.py holds them to it)."""
    try:
        import jsonschema_rs
    except ImportError:
        return None
    return jsonschema_rs.validator_for(schema(name))


def _surely_valid(doc, name: str) -> bool:
    fast = _fast(name)
    return fast is not None and fast.is_valid(doc)


def problems(doc, name: str):
    """The schema violations of `doc` against schema `name`, most relevant first (jsonschema errors)."""
    if _surely_valid(doc, name):
        return []
    from jsonschema.exceptions import relevance

    return sorted(_validator(name).iter_errors(doc), key=relevance)


def check(doc, name: str, source: str | Path, text: str | None = None, line: int | None = None) -> None:
    """Raise Invalid naming the first violation of schema `name` in `doc`, read from `source`.

    `line`: the line the document started on (JSONL); otherwise the line is found in `text` (the file as
    read) by following the violation's path through the keys; 1 when neither is known."""
    if _surely_valid(doc, name):
        return
    from jsonschema.exceptions import best_match

    err = best_match(_validator(name).iter_errors(doc))
    if err is None:
        return
    path = list(err.absolute_path)
    if line is None:
        line = _line_of(text, path) if text is not None else 1
    raise Invalid(f"{source}:{line}: {field(path)}: {what(err)}")


def field(path) -> str:
    """A JSON path as a user reads it: metrics.ratio, checks[0], deviation[2].cases; '(document)' for the root."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def shown(value) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def what(err) -> str:
    """What is wrong, in words, without quoting a whole (possibly huge) value."""
    v, kind, inst = err.validator_value, err.validator, err.instance
    custom = (err.schema.get("x-message") or {}).get(kind) if isinstance(err.schema, dict) else None
    if custom:  # a schema may word its own message per keyword ("x-message": {"pattern": "is empty"})
        return custom
    if kind == "required":
        missing = [k for k in v if isinstance(inst, dict) and k not in inst]
        return f"missing {', '.join(missing)}"
    if kind == "additionalProperties" and isinstance(inst, dict):
        known = set(err.schema.get("properties", {}))
        extra = sorted(k for k in inst if k not in known)
        return f"unknown key(s) {', '.join(map(str, extra))}"
    got = _JSON_TYPES.get(type(inst), type(inst).__name__)
    if kind == "type":
        want = " or ".join(v) if isinstance(v, list) else v
        return f"must be {want}, not {got} {shown(inst)}"
    if kind == "enum":
        return f"must be one of {', '.join(map(shown, v))}, not {shown(inst)}"
    if kind == "const":
        return f"must be {shown(v)}, not {shown(inst)}"
    if kind in ("anyOf", "oneOf"):
        return f"{shown(inst)} is not a valid value here ({got})"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"must be {op} {v}, not {shown(inst)}"
    if kind in ("minItems", "maxItems", "minLength", "maxLength"):
        return f"{kind} is {v} (got {len(inst)})"
    if kind == "pattern":
        return f"{shown(inst)} does not match {v}"
    return err.message if len(err.message) <= 2 * SHOWN else err.message[:2 * SHOWN] + "…"


def _line_of(text: str, path) -> int:
    """The line where the value at `path` starts, found by following its keys through the text (JSON or TOML):
    exact for our writers' layouts, never worse than the line of the nearest enclosing key."""
    pos, skip, previous = 0, 0, None
    for p in path:
        if isinstance(p, int):  # the p-th item: a TOML [[table]] header, else the p-th time the next key occurs
            header = text.find(f"[[{previous}]]", pos) if previous is not None else -1
            if header >= 0:
                for _ in range(p + 1):
                    found = text.find(f"[[{previous}]]", pos)
                    pos = found + 1 if found >= 0 else pos
                pos = max(pos - 1, 0)
            else:
                skip = p
            continue
        for needle in (f'"{p}"', f"{p} =", f"{p}="):
            found, times = text.find(needle, pos), skip
            while found >= 0 and times:
                found, times = text.find(needle, found + 1), times - 1
            if found >= 0:
                pos = found
                break
        skip, previous = 0, p
    return text.count("\n", 0, pos) + 1


def load_json(path: str | Path, name: str, what_: str) -> dict:
    """Read a JSON file and check it against schema `name`; raises Invalid (one line) for anything wrong."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise Invalid(f"{p}: cannot read {what_}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise Invalid(f"{p}: {what_} is not UTF-8 text") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise Invalid(f"{p}: not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise Invalid(f"{p}:{getattr(e, 'lineno', 1)}: not valid JSON ({getattr(e, 'msg', e)})") from None
    check(doc, name, p, text=text)
    return doc


def _no_constant(name: str):
    """Strict JSON: NaN/Infinity literals are not JSON (we write them as the strings "nan", "inf")."""
    raise ValueError(f"{name} is not JSON (non-finite numbers are written as strings)")


# -- numbers on the command line
def number(*, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
           integer: bool = False, what_: str = "a number"):
    """An argparse `type=`: parses a finite number within [low, high] (open ends when asked), else one line
    naming the range. Used by every subcommand and the pytest plugin's options."""

    def shown(bound: float) -> str:  # a whole-number bound in full (2**32, not 4.29497e+09)
        return str(bound) if integer else f"{bound:g}"

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what_}") from None
        if not integer and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {shown(low)}, not {text}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(
                f"must be {'<' if high_open else '<='} {shown(high)}, not {text}")
        return value

    parse.__name__ = what_  # argparse names the type in its own messages
    return parse


JOBS = number(low=0, integer=True, what_="a whole number of jobs")  # 0: the CPU count
COUNT = number(low=1, integer=True, what_="a whole number")
# fuzz's master seed: the range of the random ones it draws and prints (4 bytes)
SEED = number(low=0, high=2**32, high_open=True, integer=True, what_="a whole number")
SECONDS = number(low=0, low_open=True, what_="a number of seconds")
FACTOR = number(low=1, low_open=True, what_="a factor")  # drift: a ratio moved by more than FACTOR x
FLOOR = number(low=0, low_open=True, what_="a positive number")
EPS = number(low=0, low_open=True, high=1, what_="a positive number")  # as port() checks it: (0, 1]
MOMENTUM = number(low=0, high=1, what_="a number")
STEPS = number(low=1, high=1000, integer=True, what_="a whole number of steps")  # port()'s range
VARIANCE = number(low=0, low_open=True, what_="a positive number")  # both native forms weigh one of two terms: [0, 1]


def parsed(convert, text: str, option: str) -> float:
    """`convert(text)` outside argparse (values inside other syntax, e.g. --fail-on drift:FACTOR):
    ValueError with the option named."""
    try:
        return convert(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{option}: {e}") from None
