"""How fast is the conformance suite itself? Prints the figures the README quotes.

    python benchmarks/suite_speed.py [--frameworks all] [--tier default] [--jobs 2] [--out reports/speed]
                                     [--xdist]

1. a cold run (`bnconform run`, JAX/Keras persistent compilation caches emptied) and a warm rerun, each timed
   end to end as a user sees it (imports, compilation, checks, results, analysis, report);
2. from the warm run's records and metadata: per adapter its wall time, start-up (process, imports, setup),
   time inside the framework, time in the harness (oracle, bounds, comparison, diagnosis, evidence), checks
   and checks per second; and the harness's share of the run's compute time:
       (sum of per-case harness time + report rendering) / (sum of worker wall time + report rendering);
3. with --xdist: the conformance tests serially and with `pytest -n 2 --dist loadgroup`, and whether every
   check gets the same verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def _latest_run(out: Path) -> Path:
    runs = sorted((out / "runs").iterdir())
    return runs[-1]


def _load(run_dir: Path) -> tuple[dict, list[dict]]:
    meta = json.loads((run_dir / "meta.json").read_text())
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines() if line.strip()]
    return meta, records


def bnconform_run(args, out: Path, env: dict) -> tuple[float, Path]:
    cmd = [sys.executable, "-m", "conformance", "run", "--frameworks", args.frameworks, "--tier", args.tier,
           "--out", str(out)] + (["--jobs", str(args.jobs)] if args.jobs else [])
    wall, proc = _run(cmd, env)
    if proc.returncode not in (0, 1):
        sys.exit(f"bnconform run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, _latest_run(out)


def breakdown(meta: dict, records: list[dict], report_seconds: float) -> tuple[list[list], dict]:
    per: dict[str, dict] = {}
    seen = set()
    for r in records:
        a = per.setdefault(r["adapter"], {"checks": 0, "framework": 0.0, "harness": 0.0, "cases": 0})
        a["checks"] += 1
        key = (r["adapter"], r["case"])
        if key not in seen:
            seen.add(key)
            a["cases"] += 1
            a["framework"] += float(r.get("seconds") or 0.0)
            a["harness"] += float(r.get("harness_seconds") or 0.0)
    rows = []
    totals = Counter()
    for m in meta["adapters"]:
        if m["name"] not in per:
            continue
        a, t = per[m["name"]], m.get("timing") or {}
        wall, startup = float(t.get("wall_seconds", 0.0)), float(t.get("startup_seconds", 0.0))
        rows.append([m["name"], wall, startup, a["framework"], a["harness"], a["checks"],
                     a["checks"] / wall if wall else 0.0])
        totals.update(wall=wall, startup=startup, framework=a["framework"], harness=a["harness"], checks=a["checks"])
    totals["report"] = report_seconds
    totals["share"] = (totals["harness"] + report_seconds) / max(totals["wall"] + report_seconds, 1e-9)
    return rows, totals


def print_breakdown(rows, totals, cold: float, warm: float, args) -> None:
    print(f"\nbnconform suite speed: tier {args.tier}, frameworks {args.frameworks}, jobs "
          f"{args.jobs or os.cpu_count()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"  end to end (run + results + analysis + report): cold {cold:.1f} s, warm rerun {warm:.1f} s")
    print(f"  harness share of compute: {100 * totals['share']:.1f}% "
          f"(harness {totals['harness']:.1f} s + report {totals['report']:.1f} s of "
          f"{totals['wall']:.1f} s worker time + report)")
    print(f"  worker time: start-up {totals['startup']:.1f} s, inside frameworks {totals['framework']:.1f} s, "
          f"harness {totals['harness']:.1f} s, other (IPC, conversions, compilation outside run()) "
          f"{totals['wall'] - totals['startup'] - totals['framework'] - totals['harness']:.1f} s\n")
    print("| adapter | wall s | start-up s | framework s | harness s | checks | checks/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, wall, startup, fw, hs, checks, rate in sorted(rows, key=lambda r: -r[1]):
        print(f"| {name} | {wall:.1f} | {startup:.1f} | {fw:.1f} | {hs:.2f} | {checks} | {rate:.0f} |")


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
    p.add_argument("--jobs", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "reports" / "speed"))
    p.add_argument("--xdist", action="store_true", help="also compare serial and pytest-xdist verdicts")
    args = p.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cache = out / "cache"
    env = {**os.environ, "BNCONFORM_CACHE_DIR": str(cache)}  # a private, initially empty compilation cache
    cold, _ = bnconform_run(args, out / "cold", env)
    warm, run_dir = bnconform_run(args, out / "warm", env)
    meta, records = _load(run_dir)
    report_seconds, proc = _run([sys.executable, "-m", "conformance", "report", str(run_dir), "--out",
                                 str(out / "report.html")], env)
    rows, totals = breakdown(meta, records, report_seconds)
    print_breakdown(rows, totals, cold, warm, args)
    if args.xdist:
        xdist_check(args, out, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
