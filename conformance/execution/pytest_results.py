"""Results of a pytest session, in the CLI runner's format (conformance.outputs.results): `--bn-results DIR` gets
DIR/records.jsonl and DIR/meta.json, so tox runs and `bnconform run` produce interchangeable results.

Each check is appended when its test enforces it (a killed session keeps what finished). Under pytest-xdist
every worker writes DIR/parts/<worker>/ and the controller merges the parts when the session ends; a session
without xdist writes DIR/ directly. Only the checks that ran as tests are written.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from ..outputs import results
from ..outputs import runmeta


LOCK = ".bnconform.lock"


class InUse(Exception):
    """Another live session writes to the same results directory (one line for the user)."""


def lock(directory: str | Path):
    """Take DIR's lock for this session (an open file holding an fcntl lock, released when this process
    ends, however it ends). Two pytest sessions given the same --bn-results would otherwise delete and mix
    each other's files: the second one is refused."""
    import fcntl
    import os

    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        f = open(d / LOCK, "a+")
    except OSError as e:
        raise InUse(f"--bn-results {d}: cannot write there: {e.strerror or e}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise InUse(f"--bn-results {d} is being written by another session (pid {holder}); give each session "
                    f"its own directory") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def clean(directory: str | Path) -> None:
    """Remove a previous, finished session's results from DIR (only the files this format owns). Call with
    DIR's `lock` held: a live session's files are never removed."""
    d = Path(directory)
    for name in (results.RECORDS, results.META):
        (d / name).unlink(missing_ok=True)
    shutil.rmtree(d / results.PARTS, ignore_errors=True)


class SessionResults:
    def __init__(self, directory: str | Path, worker: str):
        self.root = Path(directory)
        self.worker = worker
        self.dir = self.root if worker == "main" else self.root / results.PARTS / worker
        self.writer: results.RecordWriter | None = None
        self.meta: dict | None = None
        self.counts: Counter = Counter()
        self.paths: dict[str, set[str]] = {}  # adapter -> execution paths its records came from

    def begin(self, *, tier: str, selection: str, specs, flags: dict) -> None:
        from ..core.cases import cases_for_tier
        from ..core.engine import input_checksum

        cases = cases_for_tier(tier)
        self.meta = runmeta.base(source="pytest", tier=tier, selection=selection, specs=specs, cases=cases,
                                 flags=flags, checksum=input_checksum(cases))
        self.meta["worker"] = self.worker
        results.write_meta(self.dir, self.meta)
        self.writer = results.RecordWriter(self.dir / results.RECORDS)

    def add(self, record: dict) -> None:
        if self.writer is not None:
            self.writer.write([record])
            self.counts[record["verdict"]] += 1
            self.paths.setdefault(record["adapter"], set()).add(record.get("path", "eager"))

    def finish(self, *, interrupted: bool, versions: dict[str, dict], stale) -> Path | None:
        if self.writer is None or self.meta is None:
            return None
        self.writer.close()
        m = self.meta
        m.update(finished=runmeta.now(), status="interrupted" if interrupted else "complete",
                 counts=dict(sorted(self.counts.items())), checks=self.writer.count,
                 stale_registry=None if stale is None else [e.as_dict() for e in stale])
        m["versions"] = {k: v for name in sorted(versions) for k, v in versions[name].items()}
        m["paths"] = {name: sorted(p) for name, p in sorted(self.paths.items())}
        for a in m["adapters"]:
            if a["name"] in versions:
                a["version"] = versions[a["name"]].get(a["framework"], a["version"])
        results.write_meta(self.dir, m)
        return self.dir / results.RECORDS


def merge(directory: str | Path) -> Path | None:
    """Controller side of xdist: merge the workers' parts into DIR/records.jsonl and DIR/meta.json."""
    return results.merge_parts(directory)
