"""Results on disk: one JSON record per check (records.jsonl) and the run's metadata (meta.json).

A results directory holds `records.jsonl`, `meta.json` and optionally `analysis.json` (extra tables for the
report). The CLI runner and the pytest plugin write the same files; the schemas live in conformance/schema/.

Crash safety: records are appended one line per check with a single write(2) to a file opened O_APPEND, so
a killed run leaves every finished record whole; at worst the last line is cut, and readers drop it with a
warning. meta.json (and the report) are replaced atomically: written to a temporary file, then renamed.
Strict JSON: non-finite floats are written as the strings "inf", "-inf", "nan" (as `values` samples are).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..core import validation
from ..core.engine import READABLE_SCHEMAS, SCHEMA_VERSION

RECORDS = "records.jsonl"
META = "meta.json"
ANALYSIS = "analysis.json"
PARTS = "parts"  # pytest-xdist workers write DIR/parts/<worker>/ and the controller merges them
REQUIRED = ("schema", "check_id", "adapter", "case", "quantity", "verdict")  # what makes a line ours at all


class ResultsError(Exception):
    """Results that cannot be read or merged; one line for the user (exit status 2)."""


def sanitize(obj):
    """The same data with non-finite floats as strings, so that the file is strict JSON (and strings that
    UTF-8 can hold)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (from undecodable bytes) cannot be written as UTF-8
            return obj.encode("utf-8", "replace").decode("utf-8")
        return obj
    if isinstance(obj, dict):
        return {k: sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def number(v) -> float | None:
    """A numeric field as a float ("inf", "nan" included), None when absent."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def encode(record: dict) -> bytes:
    return (json.dumps(sanitize(record), sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


IDENTITY = ("check_id", "adapter", "api", "framework", "version", "device", "case", "quantity", "dtype", "tier",
            "knob")


def storable(record: dict) -> dict:
    """The record as it will be stored: free text capped, non-finite floats as strings, and checked against
    the record schema. A record that cannot be stored (a value JSON cannot hold, a wrong type from an
    adapter) becomes an error record for the same check that says why, so one bad value costs one check,
    never the thread writing the run."""
    from ..core.textsafe import capped_record

    try:
        rec = sanitize(capped_record(record))
        json.dumps(rec, allow_nan=False)
        bad = validation.problems(rec, "record")
        if not bad:
            return rec
        why = f"{validation.field(list(bad[0].absolute_path))}: {validation.what(bad[0])}"
    except (TypeError, ValueError, RecursionError) as e:
        why = f"{type(e).__name__}: {str(e)[:200]}"
    return unstorable(record, why)


def unstorable(record: dict, why: str) -> dict:
    from ..core.engine import SCHEMA_VERSION

    def text(v):
        return v if isinstance(v, str) else ("" if v is None else repr(v)[:200])

    rec = {k: text(record.get(k)) for k in IDENTITY}
    for k in ("adapter", "case", "quantity"):
        rec[k] = rec[k] or "?"
    if rec["check_id"].count("::") < 2:
        rec["check_id"] = f"{rec['adapter']}::{rec['case']}::{rec['quantity']}"
    rec["knob"] = record.get("knob") if isinstance(record.get("knob"), str) else None
    rec["tier"] = record.get("tier") if record.get("tier") in ("smoke", "default", "nightly") else "default"
    reason = f"the check's record could not be stored ({why}); the adapter returned a value of the wrong kind"
    rec.update(schema=SCHEMA_VERSION, verdict="error", reason=reason, message=reason, metrics=None, tolerance=None,
               characterization=None, registry=None, channel_stats=None, values=None, repro=None, diagnosis=None,
               evidence=None, seconds=0.0, harness_seconds=0.0)
    rec["path"] = record["path"] if isinstance(record.get("path"), str) and record["path"] else "eager"
    if isinstance(record.get("nodeid"), str):
        rec["nodeid"] = record["nodeid"]
    return rec


class RecordWriter:
    """Appends records to a JSONL file, one write(2) per record; safe to call from several threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # the umask decides
        self._lock = threading.Lock()
        self.count = 0

    def write(self, records) -> list[dict]:
        """Append the records (as `storable` makes them); returns what was written."""
        stored = [storable(r) for r in records]
        with self._lock:
            for r in stored:
                data = encode(r)
                written = os.write(self._fd, data)
                while written < len(data):  # a regular file takes it whole unless the disk is full
                    written += os.write(self._fd, data[written:])
                self.count += 1
        return stored

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """0666 less the process umask: the mode open(2) would give a new file."""
    with _UMASK_LOCK:  # reading the umask means setting it; no other thread of ours creates files meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; a file we write gets what the user's umask allows
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def claim_run_dir(runs: str | os.PathLike, run_id: str) -> Path:
    """Create a run's directory exclusively: two runs started in the same second on the same selection share an
    id, so the second gets `<id>-2` (then -3, ...) and never writes into the first one's directory."""
    runs = Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = runs / (run_id if n == 1 else f"{run_id}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ResultsError(f"{run_id}, {run_id}-2 ... -999 all exist")


def write_meta(directory: str | os.PathLike, meta: dict) -> Path:
    return write_atomic(Path(directory) / META, json.dumps(sanitize(meta), indent=2, sort_keys=True) + "\n")


# -- reading
@dataclass
class ResultSet:
    records: list[dict]  # sorted by check id, one per check
    metas: list[dict] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)  # from analysis.json files
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def result_dirs(path: str | os.PathLike) -> list[tuple[Path, list[Path]]]:
    """(directory, records files) for a results file, a results directory, or a tree of them."""
    p = Path(path)
    if not p.exists():
        raise ResultsError(f"{p}: no such file or directory")
    if p.is_file():
        return [(p.parent, [p])]
    if (p / RECORDS).is_file():
        return [(p, [p / RECORDS])]
    found = sorted(f for f in p.rglob(RECORDS) if f.is_file())
    if not found:
        raise ResultsError(f"{p}: no results here (no {RECORDS} in it or below it)")
    return [(f.parent, [f]) for f in found]


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ResultsError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a {what} (not UTF-8 text)") from None


def read_records(path: Path, warnings: list[str], validate: bool = True) -> list[dict]:
    text = _read_text(path, "results file")
    lines = text.split("\n")
    partial = lines.pop()  # "" when the file ends with a newline, as every whole record does
    out = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            out.append(_parse_record(line, f"{path}:{i}", validate))
    if partial.strip():
        try:
            out.append(_parse_record(partial, f"{path}:{len(lines) + 1}", validate))
        except ResultsError:
            warnings.append(f"{path}: dropped a cut-off last line ({len(partial)} bytes; the run was killed while "
                            f"writing it)")
    return out


def upgrade(rec: dict) -> dict:
    """A record of an older schema in today's form: version 1 had no execution paths (everything was eager)."""
    if rec.get("schema") == 1:
        rec["schema"] = SCHEMA_VERSION
        rec.setdefault("path", "eager")
    return rec


def _readable(version) -> bool:
    return version in READABLE_SCHEMAS and not isinstance(version, bool)


def _versions_text() -> str:
    return f"versions {', '.join(map(str, READABLE_SCHEMAS))}"


def _parse_record(line: str, where: str, validate: bool = True) -> dict:
    try:
        rec = json.loads(line, parse_constant=validation._no_constant)
    except RecursionError:
        raise ResultsError(f"{where}: not a JSON record (nested too deeply)") from None
    except ValueError as e:
        raise ResultsError(f"{where}: not a JSON record ({getattr(e, 'msg', e)}"
                           f"{f' at column {e.colno}' if hasattr(e, 'colno') else ''})") from None
    if not isinstance(rec, dict):
        raise ResultsError(f"{where}: not a check record (a JSON {type(rec).__name__}, not an object)")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ResultsError(f"{where}: not a bnconform check record (missing {', '.join(missing)})")
    if not _readable(rec["schema"]):
        raise ResultsError(f"{where}: results schema version {validation.shown(rec['schema'])}; this bnconform reads "
                           f"{_versions_text()} (re-run the suite, or use the bnconform that wrote them)")
    upgrade(rec)  # then checked against today's schema (conformance/schema/record.schema.json)
    if not validate:
        return rec
    source, _, lineno = where.rpartition(":")
    try:
        validation.check(rec, "record", source, line=int(lineno))
    except validation.Invalid as e:
        raise ResultsError(str(e)) from None
    return rec


def _read_json(path: Path, schema: str, what: str) -> dict:
    try:
        return validation.load_json(path, schema, what)
    except validation.Invalid as e:
        raise ResultsError(str(e)) from None


def read_meta(directory: Path) -> dict | None:
    path = directory / META
    if not path.is_file():
        return None
    try:
        text = _read_text(path, "run metadata file")
        meta = json.loads(text, parse_constant=validation._no_constant)
    except RecursionError:
        raise ResultsError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise ResultsError(f"{path}:{getattr(e, 'lineno', 1)}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(meta, dict) or not _readable(meta.get("schema")):
        found = validation.shown(meta.get("schema")) if isinstance(meta, dict) else "none (not an object)"
        raise ResultsError(f"{path}: results schema version {found}; this bnconform reads {_versions_text()}")
    meta["schema"] = SCHEMA_VERSION  # version 1 differs only in its records (no paths)
    try:
        validation.check(meta, "meta", path, text=text)
    except validation.Invalid as e:
        raise ResultsError(str(e)) from None
    meta["_dir"] = str(directory)
    return meta


def read_tables(directory: Path) -> list[dict]:
    """Tables of analysis.json: {"tables": [{"id", "title", "description", "columns", "rows"}]}."""
    path = directory / ANALYSIS
    if not path.is_file():
        return []
    tables = _read_json(path, "analysis", "analysis file")["tables"]
    for i, t in enumerate(tables):  # what the schema cannot say: every row as wide as the header
        bad = next((j for j, r in enumerate(t["rows"]) if len(r) != len(t["columns"])), None)
        if bad is not None:
            raise ResultsError(f"{path}: tables[{i}].rows[{bad}]: {len(t['rows'][bad])} cells for "
                               f"{len(t['columns'])} columns")
    return tables


def load(paths, validate: bool = True) -> ResultSet:
    """Read and merge results; refuses mixed schema versions and results computed from different inputs.

    validate=False skips checking each record against the schema (about 1 ms a record): only for records
    this process has just written through `storable`, which checked them."""
    warnings: list[str] = []
    by_id: dict[str, dict] = {}
    metas: list[dict] = []
    tables: list[dict] = []
    sources: list[str] = []
    duplicates = conflicts = 0
    for arg in paths:
        for directory, files in result_dirs(arg):
            meta = read_meta(directory)
            if meta is None:
                warnings.append(f"{directory}: no {META}; its input checksum cannot be checked")
            elif all(m["_dir"] != meta["_dir"] for m in metas):
                metas.append(meta)
            tables += [t for t in read_tables(directory) if t not in tables]
            for f in files:
                sources.append(str(f))
                for rec in read_records(f, warnings, validate):
                    old = by_id.get(rec["check_id"])
                    if old is not None:
                        duplicates += 1
                        conflicts += _strip(old) != _strip(rec)
                    by_id[rec["check_id"]] = rec
    if not by_id:
        raise ResultsError(f"no check records in {', '.join(map(str, paths))} (empty results)")
    _same_inputs(metas)
    if duplicates:
        warnings.append(f"{duplicates} check(s) appear in more than one result set ({conflicts} with different "
                        f"results); the last one given was kept")
    return ResultSet([by_id[k] for k in sorted(by_id)], metas, tables, warnings, sources)


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("seconds", "harness_seconds", "nodeid")}


def _same_inputs(metas: list[dict]) -> None:
    sums = {}
    for m in metas:
        sums.setdefault(m.get("input_checksum"), m)
    if len(sums) > 1:
        (a, ma), (b, mb) = list(sums.items())[:2]
        raise ResultsError(f"input checksums differ: {ma['_dir']} (tier {ma.get('tier')}, {str(a)[:12]}) and "
                           f"{mb['_dir']} (tier {mb.get('tier')}, {str(b)[:12]}); results computed from different "
                           f"inputs cannot be merged")


# -- merging the parts pytest-xdist workers wrote
def merge_parts(directory: str | os.PathLike) -> Path | None:
    """Merge DIR/parts/<worker>/ into DIR/records.jsonl and DIR/meta.json; remove the parts."""
    import shutil

    d = Path(directory)
    parts = sorted(p for p in (d / PARTS).glob("*") if (p / RECORDS).is_file())
    if not parts:
        return None
    warnings: list[str] = []
    records: dict[str, dict] = {}
    metas = []
    for p in parts:
        for r in read_records(p / RECORDS, warnings):
            records[r["check_id"]] = r
        m = read_meta(p)
        if m is not None:
            m.pop("_dir", None)
            metas.append(m)
    tmp = d / f".{RECORDS}.merging"
    tmp.write_bytes(b"".join(encode(records[k]) for k in sorted(records)))
    os.replace(tmp, d / RECORDS)
    if metas:
        write_meta(d, merge_metas(metas, len(records)))
    shutil.rmtree(d / PARTS, ignore_errors=True)
    return d / RECORDS


def merge_metas(metas: list[dict], total: int) -> dict:
    """One meta for the parts of one run: earliest start, latest end, union of versions and adapters."""
    out = dict(metas[0])
    out["started"] = min(m["started"] for m in metas)
    finished = [m.get("finished") for m in metas]
    out["finished"] = None if None in finished else max(finished)
    out["status"] = next((m["status"] for m in metas if m["status"] != "complete"), "complete")
    out["worker"] = "merged:" + ",".join(m.get("worker", "?") for m in metas)
    out["versions"] = {k: v for m in metas for k, v in m.get("versions", {}).items()}
    paths: dict[str, set] = {}
    for m in metas:
        for name, p in (m.get("paths") or {}).items():
            paths.setdefault(name, set()).update(p)
    out["paths"] = {name: sorted(p) for name, p in sorted(paths.items())}
    adapters: dict[str, dict] = {}
    for m in metas:
        for a in m.get("adapters", []):
            if a["name"] not in adapters or a.get("version"):
                adapters[a["name"]] = a
    out["adapters"] = [adapters[k] for k in sorted(adapters)]
    counts: dict[str, int] = {}
    for m in metas:
        for k, v in (m.get("counts") or {}).items():
            counts[k] = counts.get(k, 0) + v
    out["counts"] = counts
    out["checks"] = total
    stale = [m.get("stale_registry") for m in metas]
    out["stale_registry"] = None if None in stale else _intersect_stale(stale)
    return out


def _intersect_stale(lists: list[list[dict]]) -> list[dict]:
    """An entry is stale for the whole run only if no part matched it."""
    ids = set.intersection(*[{e["id"] for e in lst} for lst in lists]) if lists else set()
    return [e for e in lists[0] if e["id"] in ids] if lists else []
