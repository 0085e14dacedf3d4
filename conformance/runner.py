"""`bnconform run`: every selected adapter in its own long-lived worker process, results as they arrive,
the report at the end.

Layout under --out (default `reports/`):
    runs/<run-id>/records.jsonl   one check record per line, appended as each case finishes
    runs/<run-id>/meta.json       the run: versions, platform, flags, adapters (rewritten atomically)
    index.html                    the report of the latest run (replaced atomically)
The parent never imports a framework: it plans from the catalogue, starts workers (conformance.worker) N at a
time, and collects records. A crash, hang or exception in one adapter becomes error records for the cases it
did not finish; the others go on. Ctrl-C stops the workers and keeps every record that finished.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from . import progress as progress_mod
from . import results, runmeta
from .catalogue import select
from .cases import cases_for_tier
from .engine import input_checksum
from .registry import Registry, RegistryError
from .worker import AdapterRun, Pool, WorkerConfig

FAILING = ("fail", "error")


class RunError(Exception):
    """A run that cannot start (bad selection, registry, output directory): one line, exit status 2."""


@dataclass
class RunOptions:
    frameworks: str = "all"
    tier: str = "default"
    out: str = "reports"
    jobs: int = 0  # 0: CPU count
    case_timeout: float = 300.0
    adapter_timeout: float = 3600.0
    registry: str | None = None
    strict: bool = False
    report: bool = True


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=160)  # logs: no wrapping at 80 columns


def _prepare_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".bnconform-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write results to {path}: {e.strerror or e}") from None


def exit_status(counts: Counter, strict: bool, stale: list | None) -> int:
    if any(counts[v] for v in FAILING):
        return 1
    if strict and (counts["xpass"] or stale):
        return 1
    return 0


def run(opts: RunOptions, console: Console | None = None) -> int:
    console = console or _console()
    try:
        specs = select(opts.frameworks)
    except KeyError as e:
        raise RunError(str(e.args[0])) from None
    try:
        registry = Registry.load(opts.registry)
    except RegistryError as e:
        raise RunError(str(e)) from None
    cases = cases_for_tier(opts.tier)
    available = [s for s in specs if not s.missing()]
    if not available:
        why = "; ".join(f"{s.name}: {', '.join(s.missing())} not installed" for s in specs[:3])
        raise RunError(f"no adapter of selection {opts.frameworks!r} is installed ({why}); nothing to check")
    out = Path(opts.out)
    jobs = min(opts.jobs or os.cpu_count() or 1, len(available))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    flags = {"frameworks": opts.frameworks, "tier": opts.tier, "jobs": jobs, "threads_per_worker": threads,
             "case_timeout": opts.case_timeout, "adapter_timeout": opts.adapter_timeout,
             "registry": opts.registry, "strict": opts.strict}
    meta = runmeta.base(source="cli", tier=opts.tier, selection=opts.frameworks, specs=specs, cases=cases,
                        flags=flags, checksum=input_checksum(cases))
    run_dir = out / "runs" / meta["run_id"]
    _prepare_dir(run_dir)
    report_path = out / "index.html"
    if opts.report:
        _prepare_dir(out)
    results.write_meta(run_dir, meta)
    writer = results.RecordWriter(run_dir / results.RECORDS)

    console.print(f"bnconform run {meta['run_id']}: tier {opts.tier}, {len(cases)} cases, {len(available)} of "
                  f"{len(specs)} adapters installed, {jobs} at a time, {threads} thread(s) each", highlight=False,
                  soft_wrap=True)
    cfg = WorkerConfig(registry_path=opts.registry, threads=threads, case_timeout=opts.case_timeout,
                       adapter_timeout=opts.adapter_timeout)
    case_ids = [c.id for c in cases]
    counts: dict[str, Counter] = {s.name: Counter() for s in available}
    done: dict[str, int] = {s.name: 0 for s in available}
    versions: dict[str, dict] = {}
    hits: Counter = Counter()  # registry entry id -> checks it matched, for stale entries
    show = progress_mod.make(console)

    def on_records(name, case_id, records):
        writer.write(records)
        counts[name].update(r["verdict"] for r in records)
        hits.update(r["registry"]["id"] for r in records if r.get("registry"))
        done[name] += 1
        show.case_done(name, records)

    def on_event(name, kind, info):
        if kind == "started":
            versions[name] = info.get("versions", {})
        show.event(name, kind, info)

    runs = [AdapterRun(s.name, case_ids, cfg, on_records=lambda cid, recs, n=s.name: on_records(n, cid, recs),
                       on_event=lambda kind, info, n=s.name: on_event(n, kind, info)) for s in available]
    pool = Pool(runs, jobs)
    interrupted = False
    with show:
        for s in specs:
            if s in available:
                show.add(s.name, len(case_ids))
            else:
                show.skipped(s.name, f"{', '.join(s.missing())} not installed; {s.install}")
        pool.start()
        try:
            while not pool.join(0.25):
                pass
        except KeyboardInterrupt:
            interrupted = True
            console.print("interrupted: stopping the workers, keeping the finished checks", highlight=False)
            pool.stop()
            pool.join(30)
    writer.close()

    total = sum(counts.values(), Counter())
    meta.update(finished=runmeta.now(), status="interrupted" if interrupted else "complete",
                counts=dict(sorted(total.items())), checks=writer.count)
    meta["versions"] = {k: v for name in sorted(versions) for k, v in versions[name].items()}
    for a in meta["adapters"]:
        if a["name"] in done:
            a["cases_done"] = done[a["name"]]
            a["counts"] = dict(sorted(counts[a["name"]].items()))
            a["version"] = versions.get(a["name"], {}).get(a["framework"], a["version"])
    stale = None
    if not interrupted:
        selected = {a["name"]: a["version"] or "0" for a in meta["adapters"] if a["available"]}
        stale = [e.as_dict() for e in registry.stale(selected, dict(hits))]
        meta["stale_registry"] = stale
    results.write_meta(run_dir, meta)

    _summary(console, specs, counts, stale)
    console.print(f"results: {run_dir}", highlight=False, markup=False)
    if opts.report and writer.count:
        from . import report

        report.write(results.load([run_dir]), report_path)
        console.print(f"report:  {report_path}", highlight=False, markup=False)
    if interrupted:
        return 130
    return exit_status(total, opts.strict, stale)


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
        console.print(f"stale registry entry {e['id']} ({e['source']}): matched no check. {e['reason']}",
                      highlight=False, markup=False)
