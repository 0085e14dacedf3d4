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

from .engine import READABLE_SCHEMAS, SCHEMA_VERSION, VERDICTS

RECORDS = "records.jsonl"
META = "meta.json"
ANALYSIS = "analysis.json"
PARTS = "parts"  # pytest-xdist workers write DIR/parts/<worker>/ and the controller merges them
REQUIRED = ("schema", "check_id", "adapter", "case", "quantity", "verdict")


class ResultsError(Exception):
    """Results that cannot be read or merged; one line for the user (exit status 2)."""


def sanitize(obj):
    """The same data with non-finite floats as strings, so that the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
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


class RecordWriter:
    """Appends records to a JSONL file, one write(2) per record; safe to call from several threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self.count = 0

    def write(self, records) -> None:
        with self._lock:
            for r in records:
                data = encode(r)
                written = os.write(self._fd, data)
                while written < len(data):  # a regular file takes it whole unless the disk is full
                    written += os.write(self._fd, data[written:])
                self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


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
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def read_records(path: Path, warnings: list[str]) -> list[dict]:
    text = _read_text(path, "results file")
    lines = text.split("\n")
    partial = lines.pop()  # "" when the file ends with a newline, as every whole record does
    out = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            out.append(_parse_record(line, f"{path}:{i}"))
    if partial.strip():
        try:
            out.append(_parse_record(partial, f"{path}:{len(lines) + 1}"))
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


def _parse_record(line: str, where: str) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{where}: not a JSON record ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ResultsError(f"{where}: not a check record (a JSON {type(rec).__name__}, not an object)")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ResultsError(f"{where}: not a bnconform check record (missing {', '.join(missing)})")
    if rec["schema"] not in READABLE_SCHEMAS or isinstance(rec["schema"], bool):
        raise ResultsError(f"{where}: results schema version {rec['schema']!r}; this bnconform reads versions "
                           f"{', '.join(map(str, READABLE_SCHEMAS))} (re-run the suite, or use the bnconform that "
                           f"wrote them)")
    upgrade(rec)
    if rec["verdict"] not in VERDICTS:
        raise ResultsError(f"{where}: unknown verdict {rec['verdict']!r}")
    return rec


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(_read_text(path, what))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a {what} (a JSON {type(data).__name__}, not an object)")
    return data


def read_meta(directory: Path) -> dict | None:
    path = directory / META
    if not path.is_file():
        return None
    meta = _read_json(path, "run metadata file")
    if meta.get("schema") not in READABLE_SCHEMAS or isinstance(meta.get("schema"), bool):
        raise ResultsError(f"{path}: results schema version {meta.get('schema')!r}; this bnconform reads versions "
                           f"{', '.join(map(str, READABLE_SCHEMAS))}")
    meta["schema"] = SCHEMA_VERSION
    meta["_dir"] = str(directory)
    return meta


def read_tables(directory: Path) -> list[dict]:
    """Tables of analysis.json: {"tables": [{"id", "title", "description", "columns", "rows"}]}."""
    path = directory / ANALYSIS
    if not path.is_file():
        return []
    data = _read_json(path, "analysis file")
    tables = data.get("tables")
    if not isinstance(tables, list):
        raise ResultsError(f"{path}: 'tables' must be a list of tables")
    for i, t in enumerate(tables):
        ok = (isinstance(t, dict) and isinstance(t.get("id"), str) and isinstance(t.get("title"), str)
              and isinstance(t.get("columns"), list) and isinstance(t.get("rows"), list)
              and all(isinstance(r, list) and len(r) == len(t["columns"]) for r in t["rows"]))
        if not ok:
            raise ResultsError(f"{path}: table #{i + 1} needs id, title, columns and rows of len(columns) cells")
    return tables


def load(paths) -> ResultSet:
    """Read and merge results; refuses mixed schema versions and results computed from different inputs."""
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
                for rec in read_records(f, warnings):
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
