"""What bnconform's own harness costs per case, phase by phase, on the default tier's realistic cases (at least
65,536 elements over a case's steps: the large batches and the 2000-step corpus case).

    OMP_NUM_THREADS=1 python benchmarks/harness_speed.py [--repeat 3] [--cases all|ID,ID] [--adapters 2]

No framework: the adapter is the test suite's stand-in (tests/unit/fakes.py `OracleAdapter`: the oracle rounded
to the case dtype, so every check passes, as most checks of a real adapter do). Each case runs through the real
engine (`conformance.core.engine.evaluate`) on `--adapters` stand-ins of one convention, one after the other in
this process, as a family worker runs the adapters it hosts; the phases are timed by wrapping the functions the
engine calls:

    inputs      materialize (the case's arrays) and the input guard (did the adapter write into them?)
    oracle      reference.simulate under the adapter's convention
    bounds      conformance.core.tolerance.bounds
    comparison  conformance.core.compare.compare, every quantity
    diagnosis   diagnosis and convention evidence (conformance.explain; nothing to diagnose on a passing case)
    other       the rest of evaluate (records, samples, registry), i.e. harness - the phases above

CPU seconds of this process (time.process_time: every thread it runs counts), the median of `--repeat` runs of
each (case, adapter); the adapter's own run() is not harness and is printed apart. Compare numbers only from the
same machine under the same load, before and after, back to back. Also printed: the run-level cost of
`input_checksum` over the whole tier (the parent computes it once per run, before any worker starts).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHASES = ("inputs", "oracle", "bounds", "comparison", "diagnosis", "other")
REALISTIC = 1 << 16  # elements over all steps: the realistic cases and the many-step corpus case (the rest of the
# tier has at most 4,096; measured per step only, the 2000-step case, the run's largest harness cost, was left out)


class _Clock:
    """Accumulates process CPU time per phase; nested calls count once, in the outermost phase."""

    def __init__(self):
        self.spent = defaultdict(float)
        self.depth = 0

    def wrap(self, phase, fn):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[phase] += time.process_time() - t0
                self.depth -= 1
        return timed


def _instrument(clock: _Clock, monkey: list) -> None:
    """Wrap, in the engine's namespaces, what each phase calls (whatever the engine imports of them)."""
    import reference
    from conformance.core import engine, inputs, tolerance

    guard = getattr(engine, "InputGuard", None)
    targets = {
        "inputs": [(engine, "materialize"), (engine, "checksum"), (engine, "problem_for"), (guard, "__init__"),
                   (guard, "changed")],
        "oracle": [(engine, "simulate"), (reference, "simulate")],
        "bounds": [(tolerance, "bounds")],
        "comparison": [(engine, "compare")],
    }
    for phase, where in targets.items():
        for module, name in where:
            if module is not None and hasattr(module, name):
                monkey.append((module, name, getattr(module, name)))
                setattr(module, name, clock.wrap(phase, getattr(module, name)))
    del inputs


def _restore(monkey: list) -> None:
    for module, name, fn in reversed(monkey):
        setattr(module, name, fn)
    monkey.clear()


def elements(case) -> int:
    """A case's input elements over all its steps."""
    import numpy as np

    return int(np.prod(case.shape)) * len(case.modes)


def realistic_cases(selection: str):
    from conformance.core.cases import cases_for_tier

    cases = [c for c in cases_for_tier("default") if elements(c) >= REALISTIC]
    if selection != "all":
        wanted = set(selection.split(","))
        unknown = wanted - {c.id for c in cases}
        if unknown:
            raise SystemExit(f"harness_speed: not a realistic default-tier case: {', '.join(sorted(unknown))} "
                             f"(these are: {', '.join(c.id for c in cases)})")
        cases = [c for c in cases if c.id in wanted]
    return cases


def measure(case, adapters, repeat: int, diagnose, evidence) -> list[dict]:
    """Per adapter position (first, second, ... of the family), the median CPU seconds of each phase."""
    from conformance.core import engine
    from conformance.core.registry import Registry

    runs: list[list[dict]] = [[] for _ in adapters]
    for _ in range(repeat):
        if hasattr(engine, "clear_caches"):
            engine.clear_caches()  # every repetition starts as a fresh worker does
        for k, adapter in enumerate(adapters):
            clock, monkey = _Clock(), []
            _instrument(clock, monkey)
            real_run = adapter.run
            adapter.run = clock.wrap("adapter", real_run)
            diag = clock.wrap("diagnosis", diagnose)
            evid = clock.wrap("diagnosis", evidence)
            try:
                t0 = time.process_time()
                records = engine.evaluate(adapter, case, Registry([]), diagnose=diag, evidence=evid)
                total = time.process_time() - t0
            finally:
                adapter.run = real_run
                _restore(monkey)
            verdicts = sorted({r["verdict"] for r in records})
            spent = dict(clock.spent)
            harness = total - spent.get("adapter", 0.0)
            spent["other"] = harness - sum(spent.get(p, 0.0) for p in PHASES if p != "other")
            spent["harness"], spent["verdicts"] = harness, verdicts
            runs[k].append(spent)
    out = []
    for per in runs:
        row = {p: statistics.median(r.get(p, 0.0) for r in per) for p in (*PHASES, "adapter", "harness")}
        row["verdicts"] = per[-1]["verdicts"]
        out.append(row)
    return out


def tier_checksum_seconds(repeat: int) -> float:
    from conformance.core import engine
    from conformance.core.cases import cases_for_tier

    cases = cases_for_tier("default")
    times = []
    for _ in range(repeat):
        if hasattr(engine, "clear_caches"):
            engine.clear_caches()
        t0 = time.process_time()
        engine.input_checksum(cases)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="runs of each (case, adapter); the median is printed")
    p.add_argument("--cases", default="all", help="case ids, comma separated (default: every realistic case: "
                   f"at least {REALISTIC:,} elements over its steps)")
    p.add_argument("--adapters", type=int, default=2, help="stand-in adapters of one family, run one after another")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.adapters < 1:
        p.error("--repeat and --adapters must be at least 1")

    import warnings

    from conformance.explain.diagnose import diagnose
    from conformance.explain.infer import evidence
    from tests.unit.fakes import OracleAdapter

    warnings.simplefilter("ignore", RuntimeWarning)
    cases = realistic_cases(args.cases)
    adapters = [OracleAdapter(name=f"standin.{k}") for k in range(args.adapters)]
    for a in adapters:
        a.setup()
    # warm-up: imports, numba's compiled kernels loaded from its cache
    measure(cases[-1], adapters[:1], 1, diagnose, evidence)
    print(f"bnconform harness speed: {len(cases)} realistic default-tier cases, {args.adapters} stand-in adapter(s) "
          f"of one convention in one process, median of {args.repeat}; CPU seconds (time.process_time); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.2f}")
    print("\n| case | elements (all steps) | adapter | " + " | ".join(PHASES)
          + " | harness | adapter run() | verdicts |")
    print("|---|---:|---:|" + "---:|" * (len(PHASES) + 2) + "---|")
    totals = defaultdict(float)
    for case in cases:
        rows = measure(case, adapters, args.repeat, diagnose, evidence)
        for k, row in enumerate(rows):
            print(f"| {case.id} | {elements(case):,} | {k + 1} | "
                  + " | ".join(f"{row[ph]:.3f}" for ph in PHASES)
                  + f" | {row['harness']:.3f} | {row['adapter']:.3f} | {','.join(row['verdicts'])} |")
            for ph in (*PHASES, "harness", "adapter"):
                totals[(k, ph)] += row[ph]
    for k in range(args.adapters):
        print(f"| **total** | | {k + 1} | " + " | ".join(f"{totals[(k, ph)]:.3f}" for ph in PHASES)
              + f" | {totals[(k, 'harness')]:.3f} | {totals[(k, 'adapter')]:.3f} | |")
    print(f"\ninput_checksum over the default tier (once per run, in the parent): {tier_checksum_seconds(1):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
