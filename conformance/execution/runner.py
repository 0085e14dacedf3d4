"""`bnconform run`: the selected adapters in long-lived worker processes (one per framework family where
adapters can share one, see conformance/execution/worker.py), results as they arrive, the report at the end.

Layout under --out (default `reports/`):
    runs/<run-id>/records.jsonl   one check record per line, appended as each case finishes
    runs/<run-id>/meta.json       the run: versions, platform, flags, adapters (rewritten atomically)
    index.html                    the report of the latest run (replaced atomically)
    .cache/                       compiled-artifact caches kept across runs (JAX, TorchInductor)
The parent never imports a framework: it plans from the catalogue, starts workers (conformance.execution.worker) N at a
time, and collects records. A crash, hang or exception in one adapter becomes error records for the cases it
did not finish; the others go on. Ctrl-C stops the workers and keeps every record that finished.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..core import paths as paths_mod
from . import progress as progress_mod
from ..outputs import results
from ..outputs import runmeta
from ..core.catalogue import select
from ..core.cases import cases_for_tier
from ..core.engine import input_checksum
from ..core.inputs import shared_streams
from ..core.install import hint as install_hint
from ..core.paths import split
from ..core.registry import Registry, RegistryError
from ..core.textsafe import terminal
from .worker import WORKER_THREADS, AdapterRun, Pool, WorkerConfig, cache_problem

FAILING = ("fail", "error")
CACHE = ".cache"  # under --out: compiled-artifact caches (JAX, TorchInductor) a rerun reuses


class RunError(Exception):
    """A run that cannot start (bad selection, registry, output directory): one line, exit status 2."""


@dataclass
class RunOptions:
    frameworks: str = "all"
    tier: str = "default"
    paths: str = "default"  # execution paths: default | all | eager | names/globs (conformance.core.paths)
    out: str = "reports"
    jobs: int = 0  # 0: CPU count
    case_timeout: float = 300.0
    adapter_timeout: float = 3600.0
    registry: str | None = None
    strict: bool = False
    report: bool = True
    case_ids: tuple[str, ...] = ()  # --case: exactly these cases (any tier)
    keyword: str | None = None  # -k: cases of the tier whose id matches this expression
    run_dir: Path | None = None  # set by run(): where this run's results are


def _console() -> Console:
    return progress_mod.console()


def _prepare_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".bnconform-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write results to {path}: {e.strerror or e}") from None


def _claim_run_dir(runs: Path, run_id: str) -> Path:
    _prepare_dir(runs)
    try:
        return results.claim_run_dir(runs, run_id)
    except (OSError, results.ResultsError) as e:
        raise RunError(f"cannot write results under {runs}: {getattr(e, 'strerror', None) or e}") from None


def evaluated(records) -> list[tuple[str, str, str]]:
    """The checks a registry entry could have matched: compared with the oracle (not skipped, not errored)."""
    return [(r["adapter"], r["case"], r["quantity"], r.get("path", "eager")) for r in records
            if r["verdict"] not in ("skip", "error")]


def exit_status(counts: Counter, strict: bool, stale: list | None) -> int:
    if any(counts[v] for v in FAILING):
        return 1
    if strict and (counts["xpass"] or stale):
        return 1
    return 0


class _Collector:
    """Receives records and events from the threads driving the workers: appends records to disk as they
    arrive, counts verdicts and registry hits, remembers the versions each worker imported."""

    def __init__(self, writer: results.RecordWriter, names: list[str], show):
        self.writer, self.show = writer, show
        self.counts: dict[str, Counter] = {n: Counter() for n in names}
        self.done: dict[str, int] = {n: 0 for n in names}
        self.versions: dict[str, dict] = {}
        self.hits: Counter = Counter()  # registry entry id -> checks it matched (stale entries match none)
        self.timing: dict[str, dict] = {}  # adapter -> wall_seconds, startup_seconds
        self.warnings: dict[str, list[dict]] = {}  # adapter -> the Python warnings its framework raised
        self.failing: list[dict] = []  # the failing and erroring records, for the end of the run
        self.evaluated: list[tuple[str, str, str, str]] = []  # (adapter, case, quantity, path) compared with the oracle

    def run_for(self, name: str, case_ids: list[str], cfg: WorkerConfig) -> AdapterRun:
        return AdapterRun(name, case_ids, cfg, on_records=lambda cid, recs: self.records(name, recs),
                          on_event=lambda kind, info: self.event(name, kind, info))

    def records(self, name: str, records: list[dict]) -> None:
        records = self.writer.write(records)  # as stored: capped, and checked against the schema
        self.counts[name].update(r["verdict"] for r in records)
        self.hits.update(r["registry"]["id"] for r in records if r.get("registry"))
        self.evaluated += evaluated(records)
        self.failing += [r for r in records if r["verdict"] in FAILING]
        self.done[name] += 1
        self.show.case_done(name, records)

    def event(self, name: str, kind: str, info: dict) -> None:
        if kind == "started":
            self.versions[name] = info.get("versions", {})
        if kind == "finished":
            self.timing[name] = {k: round(v, 3) for k, v in info.items() if isinstance(v, float)}
            self.warnings[name] = info.get("warnings") or []
        self.show.event(name, kind, info)


STREAMS_PREFIX = "bnconform-inputs-"


@contextlib.contextmanager
def _streams_dir():
    """A temporary directory for the run's large input streams (conformance.core.inputs.shared_streams),
    removed when the run ends; None where none can be made (the workers then generate their inputs). The
    directories of runs that ended without removing theirs (killed: SIGTERM's default action, SIGKILL) go
    first: their names hold their run's process id."""
    _remove_orphaned_streams()
    try:
        tmp = tempfile.TemporaryDirectory(prefix=f"{STREAMS_PREFIX}{os.getpid()}-", ignore_cleanup_errors=True)
    except OSError:
        yield None
        return
    with tmp as directory:
        yield directory


def _remove_orphaned_streams() -> None:
    import shutil

    try:
        found = list(Path(tempfile.gettempdir()).glob(f"{STREAMS_PREFIX}*-*"))
    except OSError:
        return
    for d in found:
        pid = d.name[len(STREAMS_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its run is gone
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive (PermissionError: another user's) or unknowable: left alone
            pass


def run(opts: RunOptions, console: Console | None = None) -> int:
    with _streams_dir() as streams:
        return _run(opts, console, streams)


def _run(opts: RunOptions, console: Console | None, streams: str | None) -> int:
    began = time.monotonic()
    console = console or _console()
    specs, registry, cases, available, work = _plan(opts)
    jobs = max(1, opts.jobs or os.cpu_count() or 1)  # more than the adapters: a free slot helps a long one
    threads = WORKER_THREADS  # not cores // jobs: a framework's thread count changes its rounding (and the ratios)
    flags = {"frameworks": opts.frameworks, "tier": opts.tier, "paths": opts.paths, "jobs": jobs,
             "threads_per_worker": threads,
             "case_timeout": opts.case_timeout, "adapter_timeout": opts.adapter_timeout,
             "registry": opts.registry, "strict": opts.strict}
    with shared_streams(streams, write=True):  # every case's inputs are generated here: the workers read them
        checksum = input_checksum(cases)
    meta = runmeta.base(source="cli", tier=opts.tier, selection=opts.frameworks, specs=specs, cases=cases,
                        flags=flags, checksum=checksum)
    out = Path(opts.out)
    if opts.report:
        _prepare_dir(out)
    cache_dir = str((out / CACHE).resolve())
    if why := cache_problem(cache_dir):  # the default, once the results directory is known to be writable
        raise RunError(why)
    run_dir = _claim_run_dir(out / "runs", meta["run_id"])
    meta["run_id"] = run_dir.name
    opts.run_dir = run_dir
    results.write_meta(run_dir, meta)
    meta["paths"] = {name: sorted({split(i)[1] for i in items}) for name, items in work.items()}
    console.print(f"bnconform run {meta['run_id']}: tier {opts.tier}, {len(cases)} cases, {len(available)} of "
                  f"{len(specs)} adapters installed, {jobs} worker process(es) at a time, "
                  f"{threads} thread(s) each",
                  highlight=False, soft_wrap=True)

    show = progress_mod.make(console)
    got = _Collector(results.RecordWriter(run_dir / results.RECORDS), [s.name for s in available], show)
    logs = run_dir / "logs"
    _prepare_dir(logs)
    cfg = WorkerConfig(registry_path=opts.registry, threads=threads, case_timeout=opts.case_timeout,
                       adapter_timeout=opts.adapter_timeout, cache_dir=cache_dir,
                       log_dir=str(logs), streams_dir=streams)
    pool = Pool([got.run_for(s.name, work[s.name], cfg) for s in available], jobs)
    # Signals are noted, never raised, from here to the end: Pool.wait stops the workers on the first; one
    # after it (a second Ctrl-C) must not cut meta.json and the report short.
    with pool.deferred_signals():
        with show:
            for s in specs:
                if s in available:
                    show.add(s.name, len(work[s.name]))
                else:
                    show.skipped(s.name, f"{', '.join(s.missing())} not installed; {install_hint(s.install)}")
            interrupted = pool.wait(on_interrupt=lambda: console.print(
                f"{pool.interruption}: stopping the workers, keeping the finished checks", highlight=False))
        got.writer.close()
        for line in pool.failures:
            console.print(f"internal error driving {line}", highlight=False, markup=False)
        status = _finish(opts, console, specs, registry, meta, got, run_dir, out, interrupted, logs)
    console.print(f"finished in {progress_mod.elapsed(time.monotonic() - began)}", highlight=False, markup=False)
    if interrupted or pool.late_signal:
        return pool.exit_status
    return max(status, 1 if pool.failures else 0)


def _finish(opts, console, specs, registry, meta, got, run_dir, out, interrupted, logs) -> int:
    stale = _finish_meta(meta, got, registry, interrupted)
    log_lines = _logs(meta, logs)
    results.write_meta(run_dir, meta)
    loaded = results.load([run_dir], validate=False) if got.writer.count else None  # written through storable()
    tables = _write_analysis(run_dir, loaded.records) if loaded is not None else None
    report_path, report_error = None, None
    if opts.report and loaded is not None:  # files first, then words: a closed stdout cannot cost the report
        from ..outputs import report

        try:
            # the records just read and the analysis tables just computed from them, which are all that
            # analysis.json holds (reading the records file again took 0.6-0.8 s on the default tier,
            # computing the tables again 0.2-0.5 s)
            report_path = report.write(loaded, out / "index.html", analysis_tables=tables)
        except OSError as e:
            report_error = f"cannot write the report {out / 'index.html'}: {e.strerror or e}"
    _summary(console, specs, got.counts, stale)
    unchecked = meta.get("unchecked_registry") or []
    if unchecked:
        console.print(f"{len(unchecked)} registry entr{'y' if len(unchecked) == 1 else 'ies'} not checked by this "
                      f"run (no check of tier {opts.tier} is one they cover): {', '.join(unchecked[:6])}"
                      f"{', ...' if len(unchecked) > 6 else ''}", highlight=False, markup=False)
    # Lines that end in a path are never wrapped (soft_wrap): a path folded at the console's width is one a
    # reader cannot copy, and $COLUMNS (80 under pytest-xdist, in many CI logs) sets that width in a pipe.
    console.print(f"results: {run_dir}", highlight=False, markup=False, soft_wrap=True)
    if log_lines:
        console.print(f"framework output (kept off the terminal): {log_lines} lines in {logs}", highlight=False,
                      markup=False, soft_wrap=True)
    if report_error:
        console.print(report_error, highlight=False, markup=False)
        return 1
    if report_path is not None:
        console.print(f"report:  {report_path}", highlight=False, markup=False, soft_wrap=True)
    _next_steps(console, got.failing, opts, report_path)
    return exit_status(sum(got.counts.values(), Counter()), opts.strict, stale)


FIRST_FAILURES = 10


def _next_steps(console: Console, failing: list[dict], opts: RunOptions, report_path) -> None:
    """The end of a run: the first failing checks, and the command to run next."""
    if not failing:
        return
    failing = sorted(failing, key=lambda r: (r["verdict"] != "fail", r["check_id"]))
    console.print(f"failing checks ({len(failing)}; the first {min(len(failing), FIRST_FAILURES)}):",
                  highlight=False, markup=False)
    for r in failing[:FIRST_FAILURES]:
        ratio = (r.get("metrics") or {}).get("ratio")
        diagnosis = r.get("diagnosis") if isinstance(r.get("diagnosis"), dict) else {}
        why = diagnosis.get("summary") or next(iter((r.get("reason") or "").splitlines()), "")
        size = f"error/bound {float(ratio):.3g}" if isinstance(ratio, (int, float)) else ""
        console.print(f"  {r['verdict']:5s} {r['check_id']}  {size}{'; ' if size and why else ''}{why[:100]}",
                      highlight=False, markup=False)
    first = failing[0]
    console.print("next: " + (f"open {report_path} (findings first), or " if report_path else "")
                  + f"rerun one case: bnconform run --frameworks {first['adapter']} --case {first['case']}"
                  + (f" --paths {first['path']}" if first.get("path", "eager") != "eager" else ""),
                  highlight=False, markup=False, soft_wrap=True)


def _logs(meta: dict, logs: Path) -> int:
    """Record each worker's log (its framework's stdout/stderr) in meta.json; drop empty ones."""
    total = 0
    for a in meta["adapters"]:
        path = logs / (re.sub(r"[^A-Za-z0-9_.-]", "_", a["name"]) + ".log")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        lines = text.splitlines()
        if not lines:
            path.unlink(missing_ok=True)
            continue
        total += len(lines)
        a["log"] = {"path": str(path.relative_to(logs.parent)), "lines": len(lines), "tail": lines[-20:]}
    try:
        logs.rmdir()  # only when empty
    except OSError:
        pass
    return total


def _write_analysis(run_dir: Path, records: list[dict]) -> list[dict]:
    """analysis.json: the declared-vs-inferred conventions, equivalence and defaults-hazard tables; returns
    them (the report shows them too)."""
    import json

    from ..explain import analysis

    tables = analysis.tables(records)
    results.write_atomic(run_dir / results.ANALYSIS, json.dumps(results.sanitize({"tables": tables}), indent=1) + "\n")
    return tables


def _plan(opts: RunOptions):
    """What to run: the selected adapters, the registry, the tier's cases; usage errors raise RunError."""
    try:
        specs = select(opts.frameworks)
    except KeyError as e:
        raise RunError(str(e.args[0])) from None
    try:
        registry = Registry.load(opts.registry)
    except RegistryError as e:
        raise RunError(str(e)) from None
    cases = _cases(opts)
    if why := cache_problem(None):  # the user's BNCONFORM_CACHE_DIR, before anything is written
        raise RunError(why)
    index = Path(opts.out) / "index.html"
    if opts.report and index.exists() and not index.is_file():
        raise RunError(f"{index} exists and is not a file; the report goes there (or pass --no-report)")
    available = [s for s in specs if not s.missing()]
    if not available:
        why = "; ".join(f"{s.name}: {', '.join(s.missing())} not installed" for s in specs[:3])
        raise RunError(f"no adapter of selection {opts.frameworks!r} is installed ({why}); nothing to check")
    declared = {s.name: paths_mod.declared(s) for s in available}
    try:
        paths_mod.check_selection(opts.paths, declared.values())
    except paths_mod.PathError as e:
        raise RunError(str(e)) from None
    work = {name: paths_mod.items(p, opts.paths, opts.tier, cases) for name, p in declared.items()}
    return specs, registry, cases, available, work


def _cases(opts: RunOptions):
    """The tier's cases, or the ones --case names (any tier), narrowed by -k."""
    from ..core.cases import case_by_id

    if opts.case_ids:
        try:
            cases = [case_by_id(c) for c in opts.case_ids]
        except KeyError as e:
            raise RunError(f"{e.args[0]} (`bnconform cases --tier nightly` lists them all)") from None
    else:
        cases = cases_for_tier(opts.tier)
    if opts.keyword:
        try:
            cases = [c for c in cases if keyword_matches(opts.keyword, c.id)]
        except ValueError as e:
            raise RunError(f"-k {opts.keyword!r}: {e}") from None
        if not cases:
            raise RunError(f"-k {opts.keyword!r} matches no case of tier {opts.tier}")
    return cases


def keyword_matches(expr: str, text: str) -> bool:
    """pytest-like -k: words are substrings (globs when they hold * ? [), combined with and, or, not and
    parentheses; e.g. "f64 and not T2E", "rstats or notrack"."""
    import fnmatch

    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    if not tokens:
        raise ValueError("empty expression")
    out = []
    for t in tokens:
        if t in ("and", "or", "not", "(", ")"):
            out.append(t)
        elif any(ch in t for ch in "*?["):
            out.append(str(fnmatch.fnmatchcase(text, t)))
        else:
            out.append(str(t in text))
    try:  # only True/False, and/or/not and parentheses reach eval
        return bool(eval(" ".join(out), {"__builtins__": {}}, {}))  # noqa: S307
    except SyntaxError:
        raise ValueError("not an expression of words, and, or, not and parentheses") from None


def _finish_meta(meta: dict, got: _Collector, registry: Registry, interrupted: bool) -> list[dict] | None:
    """Fill in the end of the run; returns the stale registry entries (None when the run was cut short)."""
    total = sum(got.counts.values(), Counter())
    meta.update(finished=runmeta.now(), status="interrupted" if interrupted else "complete",
                counts=dict(sorted(total.items())), checks=got.writer.count)
    meta["versions"] = {k: v for name in sorted(got.versions) for k, v in got.versions[name].items()}
    for a in meta["adapters"]:
        if a["name"] in got.done:
            a["cases_done"] = got.done[a["name"]]
            a["counts"] = dict(sorted(got.counts[a["name"]].items()))
            a["version"] = got.versions.get(a["name"], {}).get(a["framework"], a["version"])
        if a["name"] in got.timing:
            a["timing"] = got.timing[a["name"]]
        if got.warnings.get(a["name"]):
            a["warnings"] = got.warnings[a["name"]]
    if interrupted:
        return None
    selected = {a["name"]: a["version"] or "0" for a in meta["adapters"] if a["available"]}
    paths_run = {name: set(p) for name, p in meta.get("paths", {}).items()}
    meta["stale_registry"] = [e.as_dict() for e in registry.stale(selected, dict(got.hits), paths_run,
                                                                    got.evaluated)]
    meta["unchecked_registry"] = [e.id for e in registry.unchecked(selected, got.evaluated)]
    return meta["stale_registry"]


def _summary(console: Console, specs, counts: dict[str, Counter], stale) -> None:
    from rich.markup import escape
    from rich.table import Table

    order = ("pass", "fail", "error", "xfail", "xpass", "characterized", "skip")
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("adapter")
    for v in order:
        table.add_column(v, justify="right")
    table.add_column("")
    for s in specs:
        c = counts.get(s.name)
        if c is None:
            table.add_row(escape(s.name), *["-"] * len(order), "not installed")
            continue
        table.add_row(escape(s.name), *[(f"[red]{c[v]}[/]" if v in ("fail", "error") and c[v] else str(c[v]))
                                        for v in order], "")
    console.print(table)
    for e in stale or []:
        console.print(terminal(f"stale registry entry {e['id']} ({e['source']}): covers checks of this run but matched "
                               f"none (another entry matched them first). {e['reason']}"), highlight=False, markup=False)
