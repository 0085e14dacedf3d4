"""How fast is the conformance suite itself? Prints the figures the README quotes.

    python benchmarks/suite_speed.py [--frameworks all] [--tier default] [--paths default]
                                     [-k EXPR | --cases FILE] [--jobs 2] [--out reports/speed] [--xdist]
    python benchmarks/suite_speed.py --paths eager --cases benchmarks/issue20_filing_cases.txt
                                     (the workload issue 20 was filed on: its 38 cases, 7,164 checks)
    python benchmarks/suite_speed.py --analyze COLD_DIR [WARM_DIR]   (figures of runs already made: run directories,
                                                                    or results directories for their latest run)

1. a cold run (`bnconform run`, JAX/Keras persistent compilation caches emptied) and a warm rerun, each timed
   end to end as a user sees it (imports, compilation, checks, results, analysis, report);
2. from each run's records and metadata: per adapter its worker time (every process that served it, a
   helping one too), start-up (process, imports, setup: the first adapter of a shared family process pays
   the family's imports), time inside the framework, time in
   the harness (oracle, bounds, comparison, diagnosis, evidence), other (IPC, conversions, compilation outside
   `run()`), checks and checks per second; per execution path (records' `path`, "eager" when absent) its
   checks, framework and harness time; and the ratios the targets are stated in: start-up / worker time,
   harness share of compute = (harness + report rendering) / (worker time + report rendering), and
   end-to-end wall / framework time;
3. with --xdist: the conformance tests serially and with `pytest -n 2 --dist loadgroup`, and whether every
   check gets the same verdict.
The load average is printed with the figures of the runs it made (not with --analyze: a run's load is not
recorded): on a shared machine they are only comparable at similar load.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # conformance.outputs.results, which --analyze reads runs with
    sys.path.insert(0, str(ROOT))


def _cpu_of_children() -> float:
    """User + system seconds of every child this process has reaped (and of the children they reaped)."""
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def _latest_run(out: Path) -> Path:
    runs = sorted((out / "runs").iterdir())
    return runs[-1]


def _load(run_dir: Path) -> tuple[dict, list[dict]]:
    """A run's metadata and records, read and checked against their schemas as `bnconform report` reads them;
    `run_dir` may also be a results directory (its latest run). Anything else ends the script with one message."""
    from conformance.outputs.results import META, RECORDS, ResultsError, read_meta, read_records, result_dirs

    warnings: list[str] = []
    try:
        run_dir = result_dirs(run_dir)[-1][0]  # a results directory's runs sort by start time: the latest
        meta = read_meta(run_dir)
        if meta is None:
            raise ResultsError(f"{run_dir}: no {META} next to its {RECORDS} (not a bnconform run directory)")
        records = read_records(run_dir / RECORDS, warnings)
    except ResultsError as e:
        sys.exit(f"suite_speed: {e}")
    for w in warnings:
        print(f"suite_speed: {w}", file=sys.stderr)
    return meta, records


def case_ids(path: str) -> list[str]:
    """The case ids a --cases file lists: one per line; blank lines and `#` comments are skipped. An
    unreadable or empty file ends the script with one message; ids no case has are refused by `bnconform run`
    itself."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"suite_speed: --cases {path}: cannot read it ({type(e).__name__}: {e})")
    ids = [line.split("#", 1)[0].strip() for line in lines]
    ids = [i for i in ids if i]
    if not ids:
        sys.exit(f"suite_speed: --cases {path}: lists no case id")
    return ids


def bnconform_run(args, out: Path, env: dict) -> tuple[float, float, Path]:
    """Wall seconds, CPU seconds (the run and every worker it started) and the run's directory. CPU time too:
    on a shared machine wall time moves with the neighbours' load (the same run measured 175-205 s cold
    here), CPU time less, so the two together tell a slower machine from a slower suite."""
    cmd = [sys.executable, "-m", "conformance", "run", "--frameworks", args.frameworks, "--tier", args.tier,
           "--out", str(out), "--paths", args.paths] + (["--jobs", str(args.jobs)] if args.jobs else [])
    cmd += ["-k", args.k] if args.k else []
    cmd += [a for case in args.case_list for a in ("--case", case)]
    cpu = _cpu_of_children()
    wall, proc = _run(cmd, env)
    cpu = _cpu_of_children() - cpu
    if proc.returncode not in (0, 1):
        sys.exit(f"bnconform run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, cpu, _latest_run(out)


def breakdown(meta: dict, records: list[dict], report_seconds: float) -> tuple[list[list], dict, list[list]]:
    """Per adapter rows, totals, and per path rows from one run's metadata and records."""
    per: dict[str, dict] = {}
    paths: dict[str, Counter] = {}
    seen = set()
    for r in records:
        path = r.get("path") or "eager"
        a = per.setdefault(r["adapter"], {"checks": 0, "framework": 0.0, "harness": 0.0, "cases": 0})
        p = paths.setdefault(path, Counter())
        a["checks"] += 1
        p["checks"] += 1
        key = (r["adapter"], path, r["case"])
        if key not in seen:  # seconds and harness_seconds are per case, repeated in each of its records
            seen.add(key)
            a["cases"] += 1
            a["framework"] += float(r.get("seconds") or 0.0)
            a["harness"] += float(r.get("harness_seconds") or 0.0)
            p.update(framework=float(r.get("seconds") or 0.0), harness=float(r.get("harness_seconds") or 0.0))
    rows = []
    totals = Counter()
    for m in meta["adapters"]:
        if m["name"] not in per:
            continue
        a, t = per[m["name"]], m.get("timing") or {}
        # worker_seconds: every process that served the adapter (a helper's too); wall_seconds in older runs
        wall = float(t.get("worker_seconds", t.get("wall_seconds", 0.0)))
        startup = float(t.get("startup_seconds", 0.0))
        other = wall - startup - a["framework"] - a["harness"]
        rows.append([m["name"], wall, startup, a["framework"], a["harness"], other, a["checks"],
                     a["checks"] / wall if wall else 0.0])
        totals.update(wall=wall, startup=startup, framework=a["framework"], harness=a["harness"], checks=a["checks"])
    totals["report"] = report_seconds
    totals["share"] = (totals["harness"] + report_seconds) / max(totals["wall"] + report_seconds, 1e-9)
    path_rows = [[name, c["checks"], c["framework"], c["harness"]] for name, c in sorted(paths.items())]
    return rows, totals, path_rows


def print_breakdown(label: str, end_to_end: float, rows, totals, path_rows) -> None:
    worker, fw = totals["wall"], totals["framework"]
    other = worker - totals["startup"] - fw - totals["harness"]
    print(f"\n{label}: end to end {end_to_end:.1f} s, {totals['checks']} checks")
    print(f"  worker time {worker:.1f} s: start-up {totals['startup']:.1f} s ({_pct(totals['startup'], worker)}), "
          f"inside frameworks {fw:.1f} s ({_pct(fw, worker)}), harness {totals['harness']:.1f} s "
          f"({_pct(totals['harness'], worker)}), other (IPC, conversions, compilation outside run()) {other:.1f} s "
          f"({_pct(other, worker)})")
    print(f"  harness share of compute: {100 * totals['share']:.1f}% (harness {totals['harness']:.1f} s + report "
          f"{totals['report']:.1f} s of {worker:.1f} s worker time + report)")
    print(f"  wall / framework time: {end_to_end / fw if fw else float('nan'):.2f} "
          f"({end_to_end:.1f} s end to end / {fw:.1f} s inside the frameworks)\n")
    print("| adapter | worker s | start-up s | framework s | harness s | other s | checks | checks/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, wall, startup, fw_s, hs, oth, checks, rate in sorted(rows, key=lambda r: -r[1]):
        print(f"| {name} | {wall:.1f} | {startup:.1f} | {fw_s:.1f} | {hs:.2f} | {oth:.1f} | {checks} | {rate:.0f} |")
    print("\n| path | checks | framework s | harness s |")
    print("|---|---:|---:|---:|")
    for name, checks, fw_s, hs in path_rows:
        print(f"| {name} | {checks} | {fw_s:.1f} | {hs:.2f} |")


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def report_seconds(run_dir: Path, out: Path, env: dict) -> float:
    seconds, _ = _run([sys.executable, "-m", "conformance", "report", str(run_dir), "--out", str(out)], env)
    return seconds


def end_to_end(meta: dict) -> float:
    """A run's duration from its metadata (started/finished), for runs made elsewhere (--analyze)."""
    from datetime import datetime

    try:
        return (datetime.fromisoformat(meta["finished"]) - datetime.fromisoformat(meta["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return 0.0


def summary(args, cold: float, warm: float | None, measured_here: bool = True) -> None:
    """The figures' header; the load average only for runs this invocation made (--analyze reads runs made
    earlier, whose load was not recorded: today's would mislead, and would make two analyses differ)."""
    load = os.getloadavg()
    print(f"\nbnconform suite speed: tier {args.tier}, paths {args.paths}"
          + (f", cases -k {args.k!r}" if args.k else "")
          + (f", the {len(args.case_list)} cases of {args.cases}" if args.cases else "")
          + f", frameworks {args.frameworks}, jobs "
          f"{args.jobs or os.cpu_count()}, {os.cpu_count()} cores"
          + (f", load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if measured_here else ""))
    line = f"  end to end (run + results + analysis + report): cold {cold:.1f} s"
    if warm is not None:
        line += f", warm rerun {warm:.1f} s ({_pct(warm, cold)} of cold)"
    print(line)


def xdist_check(args, out: Path, env: dict) -> None:
    serial, parallel = out / "xdist-serial", out / "xdist-n2"
    base = [sys.executable, "-m", "pytest", "tests/conformance/test_conformance.py", "-q", "-p", "no:cacheprovider",
            "--bn-frameworks", args.frameworks, "--bn-tier", args.tier]
    t1, p1 = _run(base + ["--bn-results", str(serial)], env)
    t2, p2 = _run(base + ["--bn-results", str(parallel), "-n", "2", "--dist", "loadgroup"], env)
    a = {r["check_id"]: r["verdict"] for r in _load(serial)[1]}
    b = {r["check_id"]: r["verdict"] for r in _load(parallel)[1]}
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    print(f"\npytest serial {t1:.1f} s (exit {p1.returncode}), -n 2 --dist loadgroup {t2:.1f} s (exit {p2.returncode})")
    print(f"  {len(a)} checks serially, {len(b)} with xdist: "
          + ("identical verdicts" if not differ else f"{len(differ)} differ, e.g. {differ[:3]}"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default="all")
    p.add_argument("--tier", default="default")
    p.add_argument("--paths", default="default", help="execution paths, as `bnconform run --paths`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("-k", metavar="EXPR", help="only these cases, as `bnconform run -k` (e.g. the suite "
                       "before the realistic shapes: README, Speed)")
    which.add_argument("--cases", metavar="FILE", help="exactly the cases this file lists, one id per line "
                       "(as `bnconform run --case`, whatever their tier), e.g. "
                       "benchmarks/issue20_filing_cases.txt")
    p.add_argument("--jobs", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "reports" / "speed"))
    p.add_argument("--xdist", action="store_true", help="also compare serial and pytest-xdist verdicts")
    p.add_argument("--analyze", nargs="+", metavar="RUN_DIR", help="only print the figures of these runs "
                   "or results directories (cold, then warm): their durations from meta.json, without report rendering")
    args = p.parse_args(argv)
    if args.analyze and len(args.analyze) > 2:
        p.error(f"--analyze takes one or two run directories (cold, then warm), not {len(args.analyze)}")
    args.case_list = case_ids(args.cases) if args.cases else []  # a bad file ends here, before any run
    out = Path(args.out)
    env = dict(os.environ)
    if args.analyze:
        runs = [Path(d) for d in args.analyze[:2]]
        loaded = [_load(d) for d in runs]
        walls = [end_to_end(meta) for meta, _ in loaded]
        summary(args, walls[0], walls[1] if len(walls) > 1 else None, measured_here=False)
        for label, (meta, records), wall in zip(("cold", "warm"), loaded, walls):
            print_breakdown(f"{label} run {meta.get('run_id', '')}", wall, *breakdown(meta, records, 0.0))
        return 0
    shutil.rmtree(out, ignore_errors=True)
    cache = out / "cache"
    env["BNCONFORM_CACHE_DIR"] = str(cache)  # a private, initially empty compilation cache
    cold, cold_cpu, cold_dir = bnconform_run(args, out / "cold", env)
    warm, warm_cpu, warm_dir = bnconform_run(args, out / "warm", env)
    summary(args, cold, warm)
    cores = os.cpu_count() or 1
    print(f"  CPU time (the run and its workers, user + system): cold {cold_cpu:.1f} s, warm "
          f"{warm_cpu:.1f} s ({cores} cores: a perfectly packed cold run would take {cold_cpu / cores:.1f} s)")
    for label, wall, run_dir in (("cold", cold, cold_dir), ("warm", warm, warm_dir)):
        meta, records = _load(run_dir)
        rendering = report_seconds(run_dir, out / f"report-{label}.html", env)
        print_breakdown(f"{label} run", wall, *breakdown(meta, records, rendering))
    if args.xdist:
        xdist_check(args, out, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
