"""`bnconform fuzz`: search for cases where an adapter disagrees with the oracle, and shrink each to a minimal one.

How it works
  - `strategy()` draws Cases with hypothesis: rank 2-5, channel axis, shapes from one element per channel to
    realistic sizes, every dtype the adapter takes, momentum and eps over their valid ranges (extremes
    included), input distributions (large mean/std, outliers, constant and near-constant channels,
    denormals, NaN and +-Inf), step sequences up to 2,000 steps, train/eval interleavings;
  - each adapter is fuzzed by its own driver process (`--jobs` at a time), which sends every case to the
    adapter's worker process: a crash or a hang kills that worker only (an `error` outcome, then a fresh
    worker), never the search;
  - verdicts are the engine's (`conformance.core.engine.evaluate`, with the registry): pass, a registered
    deviation (xfail) and a characterization are not findings; fail and error are;
  - a finding's signature is (verdict, family of the first failing quantity, diagnosis); the first case
    with a new signature is shrunk by hypothesis to a minimal case with the SAME signature, so a finding is
    one minimal case per signature and adapter (signatures already in the corpus are not searched again);
  - the search steers towards large error/bound ratios (`hypothesis.target`): ill-conditioned corners
    are reached, not only drawn;
  - reproducible: every search's seed derives from `--seed` (printed) and the adapter's name; each minimal
    case becomes a corpus file (conformance/corpus/fuzz/, replayed by the default tier) and its records go to
    OUT/fuzz/<run-id>/ in the results format, so `bnconform report` and `bnconform diff` read them.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

DTYPES = ("float32", "float64", "float16", "bfloat16")  # first = what shrinking moves towards
MOMENTA = (0.1, 0.01, 0.5, 0.9, 0.99, None, 0.0, 1.0, 1e-6, 0.999999)
EPSILONS = (1e-5, 1e-3, 1e-1, 1.0, 1e-8, 1e-12)
LOCS = (0.0, 1.0, 10.0, 100.0, 1e3, 1e4, -1e3)
SCALES = (1.0, 1e-3, 3e-3, 1e-2, 10.0, 1e3, 1e-6)
# Training steps before the drawn pattern (running estimates over many batches); mostly none.
LONG_RUNS = (0, 0, 0, 0, 0, 0, 20, 200, 2000)
SIZE_CLASSES = (64, 64, 1024, 1024, 16384)  # element caps drawn before the shape (then --max-size)
FAMILIES = {"y": "output", "batch_mean": "statistics", "batch_var": "statistics", "running_mean": "statistics",
            "running_var": "statistics", "num_batches_tracked": "statistics", "dx": "gradient", "dgamma": "gradient",
            "dbeta": "gradient", "d2x": "second-order", "d2gamma": "second-order"}
FINDING_VERDICTS = ("fail", "error")


class FuzzError(Exception):
    """Bad options (selection, corpus directory, missing hypothesis): one line, exit status 2."""


def _round(x: float, digits: int = 6) -> float:
    """Drawn floats are rounded to the digits case ids print, so an id names exactly one case."""
    return float(f"{x:.{digits}g}")


def strategy(dtypes=DTYPES, channel_axes: str = "any", max_size: int = 1 << 20, max_steps: int = 2000,
             max_total: int = 1 << 21):
    """A hypothesis strategy of Cases an adapter with these dtypes and channel axes can take.

    Sizes: a size class first (at most 64, 1,024 or 16,384 elements, or `max_size`; the small ones twice as
    often), then the dimensions within it, so most cases are cheap and some are realistic; `max_total` caps
    size x steps. Every choice shrinks towards the common case: float32, rank 2, one channel, momentum 0.1,
    eps 1e-5, normal inputs, a single training step, and the smallest size class that still fails."""
    from hypothesis import strategies as st

    from ..core.cases import Case
    from ..core.inputs import DISTRIBUTIONS

    dtypes = [d for d in DTYPES if d in set(dtypes)] or ["float32"]
    axes = {"first": [1], "last": [-1]}.get(channel_axes, [1, -1])


    @st.composite
    def log_uniform(draw, limit: int):
        """1..limit, every power of two as likely as the next (hypothesis' integers favour small values, and
        a reduction long enough for a kernel's large-n path would be rare); shrinks towards 1."""
        e = draw(st.integers(0, max(0, limit.bit_length() - 1)))
        return draw(st.integers(1 << e, min((1 << (e + 1)) - 1, limit)))

    @st.composite
    def cases(draw):
        long_run = draw(st.sampled_from(LONG_RUNS)) if max_steps >= 20 else 0
        long_run = min(long_run, max_steps - 1)
        runs = draw(st.lists(st.tuples(st.sampled_from(("train", "eval")), st.integers(1, 3)), min_size=1,
                             max_size=4))
        modes = ("train",) * long_run + tuple(m for mode, k in runs for m in [mode] * k)
        modes = modes[:max_steps]
        rank = draw(st.integers(2, 5))
        axis = draw(st.sampled_from(axes))
        size_class = draw(st.sampled_from(tuple(min(c, max_size) for c in SIZE_CLASSES) + (max_size,)))
        budget = max(1, min(size_class, max_total // len(modes)))
        channels = draw(log_uniform(min(1024, budget)))
        left = max(1, budget // channels)
        others = []
        for _ in range(rank - 1):
            d = draw(log_uniform(left))
            others.append(d)
            left = max(1, left // d)
        shape = [others[0]] + others[1:]
        shape.insert(1 if axis == 1 else rank - 1, channels)
        memory_format = "contiguous"
        if rank in (4, 5) and axis == 1:
            memory_format = draw(st.sampled_from(("contiguous", "channels_last")))
        momentum = draw(st.one_of(st.sampled_from(MOMENTA), st.floats(0.0, 1.0).map(lambda m: _round(m, 12))))
        eps = draw(st.one_of(st.sampled_from(EPSILONS), st.floats(-12.0, 0.0).map(lambda e: _round(10.0 ** e, 12))))
        return Case(
            shape=tuple(shape),
            dtype=draw(st.sampled_from(dtypes)),
            modes=modes,
            axis=axis,
            momentum=momentum,
            eps=eps,
            affine=draw(st.sampled_from((True, False))),
            track_running_stats=draw(st.sampled_from((True, False))),
            init_stats=draw(st.sampled_from(("default", "random"))),
            dist=draw(st.sampled_from(DISTRIBUTIONS)),
            loc=draw(st.sampled_from(LOCS)),
            scale=draw(st.sampled_from(SCALES)),
            same_batch=draw(st.sampled_from((False, True))),
            memory_format=memory_format,
            defaults=draw(st.sampled_from((False,) * 7 + (True,))),
            seed=draw(st.integers(0, 1 << 16)),
            tier="fuzz",
            note="drawn by bnconform fuzz",
        )

    return cases()


# -- outcomes -----------------------------------------------------------------------------------------------

def _error_kind(reason: str) -> str:
    if reason.startswith("worker crashed"):
        return "crash"
    if reason.startswith("timed out"):
        return "timeout"
    if reason.startswith("the framework raised"):
        return "raised"
    head = reason.split(":", 1)[0].strip()
    return head if head.isidentifier() else "error"


def signature(records: list[dict]) -> str | None:
    """What a case's failure is, for deduplication: verdict, the family of the first failing quantity
    (records come in canonical order), and the diagnosis (or the structural problem); None when it passes."""
    failing = [r for r in records if r["verdict"] in FINDING_VERDICTS]
    if not failing:
        return None
    r = failing[0]
    where = "" if (r.get("path") or "eager") == "eager" else f"@{r['path']}"
    if r["verdict"] == "error":
        return f"error{where}:{_error_kind(r.get('reason') or '')}"
    family = FAMILIES.get(r["quantity"], r["quantity"])
    if r.get("metrics") is None:
        return f"fail{where}:{family}:behaviour"  # one element per channel: raised vs computed, against the declaration
    d = r.get("diagnosis")
    problem = r["metrics"].get("problem")  # shape, dtype, nonfinite; None: the values
    if d is None:  # not diagnosed (the search: diagnosis is for the minimal case)
        kind = problem or "values"
    else:
        kind = (d.get("hypothesis") if d.get("explained") else None) or problem or "unexplained"
    return f"fail{where}:{family}:{kind}"


def score(records: list[dict]) -> float:
    """log10 of the largest error/bound ratio among comparable checks (what `target` maximizes)."""
    ratios = [r["metrics"]["ratio"] for r in records
              if r["verdict"] in ("pass", "fail") and r.get("metrics") and r["metrics"].get("ratio") is not None]
    worst = max(ratios, default=0.0)
    if not math.isfinite(worst):
        return 30.0
    return max(-30.0, min(30.0, math.log10(max(worst, 1e-30))))


# -- the adapter worker (one process per adapter, driven by the driver below) -------------------------------

def _eval_worker(conn, adapter_name: str, registry_path: str | None, threads: int, log: str | None = None) -> None:
    """`log`: where the framework's own output goes (TensorFlow/XLA log lines, prints), as in `bnconform run`'s
    workers: the fuzzer's terminal shows only its own lines."""
    import signal

    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore", RuntimeWarning)  # NaN/Inf/denormal inputs warn in the oracle, by design
    from .worker import limit_threads, quiet_frameworks, serve

    quiet_frameworks(log)
    limit_threads(threads)
    try:
        from ..core.catalogue import load
        from ..explain.diagnose import diagnose
        from ..core.engine import evaluate
        from ..core.registry import Registry

        adapter = load(adapter_name)
        adapter.setup()
        registry = Registry.load(registry_path)
        conn.send(("ready", adapter.versions()))
    except BaseException as e:  # noqa: BLE001
        conn.send(("setup_error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=6)))
        return

    def answer(msg) -> tuple:
        _, case, full, paths = msg
        try:
            # Diagnosis (seconds on a large failing case) is for the minimal case only, not for every draw.
            records = []
            for path in paths:
                records += evaluate(adapter, case, registry, path=path, diagnose=diagnose if full else None)
            return ("done", records)
        except BaseException as e:  # noqa: BLE001  an engine bug: this case's error
            return ("failed", f"{type(e).__name__}: {e}", traceback.format_exc(limit=8))

    serve(conn, answer, lambda msg, e: ("failed", f"{type(e).__name__}: {e}", traceback.format_exc(limit=8)))


class Evaluator:
    """Runs cases on one adapter in a worker process; restarts it after a crash or a hang."""

    def __init__(self, adapter_name: str, registry_path: str | None, threads: int, case_timeout: float,
                 setup_timeout: float = 300.0, paths: tuple[str, ...] = ("eager",), log: str | None = None):
        from ..core.catalogue import load

        self.name, self.registry_path, self.threads = adapter_name, registry_path, threads
        self.case_timeout, self.setup_timeout = case_timeout, setup_timeout
        self.paths = tuple(paths)  # execution paths every case runs on (conformance.core.paths)
        self.log = log
        self.adapter = load(adapter_name)  # metadata for error records; no framework import
        self.proc = self.conn = None
        self.versions: dict = {}
        self.startup_seconds = 0.0
        self.restarts = 0
        self.evaluated = 0

    def start(self) -> None:
        from .worker import numpy_without_hugepage_advice

        t0 = time.monotonic()
        numpy_without_hugepage_advice()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_eval_worker, args=(child, self.name, self.registry_path, self.threads, self.log),
                           name=f"bnconform-fuzz[{self.name}]", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(self.setup_timeout):
            _kill(proc)
            raise FuzzError(f"{self.name}: worker did not start within {self.setup_timeout:.0f} s")
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            raise FuzzError(f"{self.name}: worker died during setup (exit code {proc.exitcode})") from None
        if msg[0] == "setup_error":
            _kill(proc)
            raise FuzzError(f"{self.name}: adapter setup failed: {msg[1]}")
        self.versions = msg[1]
        self.proc, self.conn = proc, parent
        self.startup_seconds += time.monotonic() - t0

    def __call__(self, case, full: bool = False) -> list[dict]:
        if self.proc is None:
            self.start()
        self.evaluated += 1
        version = self.versions.get(self.adapter.framework, "")
        self.conn.send(("eval", case, full, self.paths))
        reason = None
        if self.conn.poll(self.case_timeout):
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.proc.join(5)
                reason = f"worker crashed (exit code {self.proc.exitcode})"
            else:
                if msg[0] == "done":
                    return msg[1]
                return self._errors(case, msg[1], version, msg[2])
        else:
            reason = f"timed out after {self.case_timeout:.0f} s"
        _kill(self.proc)
        self.proc = self.conn = None
        self.restarts += 1
        return self._errors(case, reason, version)

    def _errors(self, case, reason: str, version: str, message: str = "") -> list[dict]:
        from ..core.engine import records_for

        return [r for path in self.paths
                for r in records_for(self.adapter, case, "error", reason, version, message=message or reason,
                                     path=path)]

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(("stop",))
                self.proc.join(10)
            except (OSError, BrokenPipeError):
                pass
        _kill(self.proc)
        self.proc = self.conn = None


def _kill(proc) -> None:
    if proc is not None and proc.is_alive():
        proc.kill()
        proc.join(5)


# -- the search -----------------------------------------------------------------------------------------------

class _OutOfTime(Exception):
    """Raised for every new case past the deadline while nothing is being shrunk: ends the search at once
    (rejecting instead would make hypothesis draw hundreds more cases before it gives up)."""


class _Found(Exception):
    def __init__(self, case):
        super().__init__(case.id)
        self.case = case


def derive_seed(master: int, *parts) -> int:
    digest = hashlib.sha256("/".join(map(str, (master, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def search(evaluate, cases_strategy, seed: int, known: set[str], deadline: float, max_examples: int = 100,
           outcomes: dict | None = None):
    """One hypothesis search: returns (minimal case, signature) of the first failure whose signature is not in
    `known`, shrunk while keeping that signature, or None. `evaluate(case) -> records`; `outcomes` caches
    (signature, score) per case across searches. Past `deadline` no new case is evaluated: generation stops,
    and shrinking keeps the smallest failing case found so far."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings, target
    from hypothesis import seed as hseed
    from hypothesis.errors import HypothesisException

    outcomes = {} if outcomes is None else outcomes
    locked: dict[str, str] = {}

    @hseed(seed)
    @settings(database=None, max_examples=max_examples, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.target, Phase.shrink),
              report_multiple_bugs=False, verbosity=Verbosity.quiet, print_blob=False)
    @given(cases_strategy)
    def probe(case):
        if case not in outcomes:
            if time.monotonic() > deadline:
                if "sig" not in locked:
                    raise _OutOfTime
                return
            records = evaluate(case)
            outcomes[case] = (signature(records), score(records))
        sig, value = outcomes[case]
        target(value, label="log10 error/bound")
        if sig is None or sig in known:
            return
        locked.setdefault("sig", sig)
        if sig == locked["sig"]:
            raise _Found(case)

    try:
        probe()
    except _Found as found:
        sig = locked["sig"]
        return simplify(found.case, sig, evaluate, outcomes, deadline), sig
    except _OutOfTime:
        return None
    except HypothesisException:  # e.g. every case rejected: the budget ran out during generation
        return None
    return None


def simplify(case, sig: str, evaluate, outcomes: dict, deadline: float):
    """Shrinking passes hypothesis cannot make over independently drawn dimensions: every reduced axis
    folded into one ((n, C), rank 2), then the smallest n that still fails (bisection). Each step is kept
    only if the case still fails with the same signature, so the result is never worse than its input."""

    def fails(c) -> bool:
        if c not in outcomes:
            if time.monotonic() > deadline:
                return False
            records = evaluate(c)
            outcomes[c] = (signature(records), score(records))
        return outcomes[c][0] == sig

    if case.ndim > 2 or case.axis != 1 or case.memory_format != "contiguous":
        folded = case.with_(shape=(case.reduced_count, case.channels), axis=1, memory_format="contiguous")
        if fails(folded):
            case = folded
    if case.ndim == 2 and case.axis == 1:
        lo, hi = 1, case.shape[0]
        while lo < hi:
            mid = (lo + hi) // 2
            if fails(case.with_(shape=(mid, case.shape[1]))):
                hi = mid
            else:
                lo = mid + 1
        case = case.with_(shape=(hi, case.shape[1]))
    return case


@dataclass
class AdapterReport:
    adapter: str
    seed: int
    searches: int = 0
    evaluated: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    restarts: int = 0
    versions: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)  # dicts: signature, case (Case), records, search seed
    error: str | None = None


def fuzz_adapter(name: str, seed: int, budget: float, *, registry_path: str | None = None, threads: int = 1,
                 case_timeout: float = 60.0, max_size: int = 1 << 20, max_steps: int = 2000,
                 known: tuple[str, ...] = (), max_examples: int = 100,
                 paths: tuple[str, ...] = ("eager",), log_dir: str | None = None) -> AdapterReport:
    """Fuzz one adapter for `budget` seconds, its worker's start-up included, but searching at least half of
    it (a framework that takes longer to import than the budget still gets searched)."""
    began = time.monotonic()
    report = AdapterReport(name, seed)
    evaluator = Evaluator(name, registry_path, threads, case_timeout, paths=paths,
                          log=str(Path(log_dir) / f"{name}.log") if log_dir else None)
    try:
        evaluator.start()
    except FuzzError as e:
        report.error, report.seconds = str(e), time.monotonic() - began
        return report
    deadline = max(began + budget, time.monotonic() + budget / 2)
    adapter = evaluator.adapter
    cases = strategy(getattr(adapter, "dtypes", DTYPES), getattr(adapter, "channel_axes", "any"), max_size,
                     max_steps)
    seen = set(known)
    outcomes: dict = {}
    try:
        while time.monotonic() < deadline:
            search_seed = derive_seed(seed, name, report.searches)
            report.searches += 1
            found = search(evaluator, cases, search_seed, seen, deadline, max_examples, outcomes)
            if found is None:
                continue
            case, sig = found
            seen.add(sig)
            records = evaluator(case, full=True)
            diagnosed = signature(records) or sig  # with the diagnosis: what deduplicates findings
            if any(f["diagnosed"] == diagnosed for f in report.findings):
                continue
            report.findings.append({"signature": sig, "diagnosed": diagnosed, "case": case, "records": records,
                                    "search_seed": search_seed})
    except FuzzError as e:
        report.error = str(e)
    finally:
        evaluator.close()
    report.evaluated, report.restarts = evaluator.evaluated, evaluator.restarts
    report.startup_seconds, report.versions = evaluator.startup_seconds, evaluator.versions
    report.seconds = time.monotonic() - began
    return report


def _drive(args: tuple) -> AdapterReport:
    name, seed, budget, kwargs = args
    try:
        return fuzz_adapter(name, seed, budget, **kwargs)
    except Exception as e:  # noqa: BLE001  a bug of ours in one driver: that adapter's report says so
        return AdapterReport(name, seed, error=f"{type(e).__name__}: {e}")


# -- the command ---------------------------------------------------------------------------------------------

@dataclass
class FuzzOptions:
    frameworks: str = "all"
    budget: float = 600.0
    seed: int | None = None
    jobs: int = 0
    out: str = "reports"
    corpus: str | None = None  # default: conformance/corpus/fuzz
    write_corpus: bool = True
    registry: str | None = None
    case_timeout: float = 60.0
    max_size: int = 1 << 20
    max_steps: int = 2000
    paths: str = "eager"  # execution paths (a conformance.core.paths selection): eager, all, or names and globs


def run(opts: FuzzOptions, print_=print) -> int:
    """Fuzz the selected adapters; returns 1 when something new was found, 0 otherwise."""
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise FuzzError('bnconform fuzz needs hypothesis: pip install "bnconform[fuzz]"') from None
    from concurrent.futures import ProcessPoolExecutor

    from ..core import regressions
    from ..outputs import runmeta
    from ..core.catalogue import select
    from ..core.registry import Registry, RegistryError
    from .worker import cache_problem, numpy_without_hugepage_advice

    try:
        specs = select(opts.frameworks)
    except KeyError as e:
        raise FuzzError(str(e.args[0])) from None
    try:
        Registry.load(opts.registry)
    except RegistryError as e:
        raise FuzzError(str(e)) from None
    if why := cache_problem(None):
        raise FuzzError(why)
    available = [s for s in specs if not s.missing()]
    for s in specs:
        if s not in available:
            print_(f"skip {s.name}: {', '.join(s.missing())} not installed ({s.install})")
    if not available:
        raise FuzzError(f"no adapter of selection {opts.frameworks!r} is installed; nothing to fuzz")
    corpus_dir = Path(opts.corpus) if opts.corpus else regressions.CORPUS_DIR / "fuzz"
    try:
        corpus = regressions.load(corpus_dir)
    except regressions.CorpusError as e:
        raise FuzzError(str(e)) from None
    seed = opts.seed if opts.seed is not None else int.from_bytes(os.urandom(4), "little")
    jobs = max(1, min(opts.jobs or os.cpu_count() or 1, len(available)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    share = opts.budget * jobs / len(available)  # every adapter gets the same time; about `budget` in all
    print_(f"bnconform fuzz: seed {seed} (rerun with --seed {seed}), budget {opts.budget:g} s, "
           f"{len(available)} adapter(s), {jobs} at a time, {share:.0f} s each")
    log_dir = Path(opts.out) / "fuzz" / "logs"  # framework output, appended per adapter (kept off the terminal)
    log_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(registry_path=opts.registry, threads=threads, case_timeout=opts.case_timeout,
                  max_size=opts.max_size, max_steps=opts.max_steps, log_dir=str(log_dir))
    from ..core import paths as paths_mod

    declared = {s.name: paths_mod.declared(s) for s in available}
    try:
        paths_mod.check_selection(opts.paths, declared.values())
    except paths_mod.PathError as e:
        raise FuzzError(str(e)) from None
    work = []
    for s in available:
        chosen = tuple(p.name for p in paths_mod.chosen(declared[s.name], opts.paths, "nightly"))
        if chosen:
            work.append((s.name, seed, share, {**kwargs, "known": _known(corpus, s.name), "paths": chosen}))
    if not work:
        raise FuzzError(f"no selected adapter runs the paths {opts.paths!r}")
    numpy_without_hugepage_advice()  # before the pool's processes import NumPy
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        reports = list(pool.map(_drive, work))

    out = _write_results(opts, specs, reports, seed)
    new_files = []
    print_("")
    print_("| adapter | cases | seconds | cases/s | worker restarts | findings |")
    print_("|---|---:|---:|---:|---:|---:|")
    for rep in reports:
        rate = rep.evaluated / max(rep.seconds - rep.startup_seconds, 1e-9)
        print_(f"| {rep.adapter} | {rep.evaluated} | {rep.seconds:.0f} | {rate:.2f} | {rep.restarts} | "
               f"{len(rep.findings)}{' (' + rep.error + ')' if rep.error else ''} |")
    by_case: dict[str, list] = {}  # one corpus file per minimal case, naming every adapter that fails it
    for rep in reports:
        for f in rep.findings:
            failing = [r for r in f["records"] if r["verdict"] in FINDING_VERDICTS]
            detail = _describe(failing)
            print_(f"\nfinding on {rep.adapter}: {f['diagnosed']}\n  minimal case {f['case'].id}\n  {detail}")
            by_case.setdefault(f["case"].id, []).append((rep, f, detail))
    existing = {r.case.id for r in corpus}
    for case_id, found in by_case.items():
        if not opts.write_corpus or case_id in existing:
            continue
        rep, f, detail = found[0]
        versions = {k: v for r, _, _ in found for k, v in r.versions.items()}
        meta = {"origin": "fuzz", "note": f"bnconform fuzz on {rep.adapter}: {detail}"[:400],
                "adapter": ", ".join(r.adapter for r, _, _ in found),
                "framework": next(iter(rep.versions), ""),
                "versions": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
                "diagnosis": "; ".join(sorted({x["diagnosed"] for _, x, _ in found})),
                "signature": "; ".join(sorted({x["signature"] for _, x, _ in found})),
                "found": runmeta.now(), "fuzz_seed": seed}
        try:
            path = regressions.write(f["case"].with_(tier="default"), meta, corpus_dir)
        except (regressions.CorpusError, OSError) as e:
            print_(f"could not write the corpus file of {case_id}: {e}")
            continue
        existing.add(case_id)
        new_files.append(path)
        print_(f"corpus: {path}")
    print_(f"\nresults: {out}")
    print_(f"framework output (kept off the terminal): {Path(opts.out) / 'fuzz' / 'logs'}")
    if new_files:
        print_(f"{len(new_files)} new corpus file(s): the default tier now replays them; register what is a "
               "genuine framework deviation (conformance/registry/) or fix what is ours")
    return 1 if any(rep.findings for rep in reports) else 0


def _known(corpus, adapter: str) -> tuple[str, ...]:
    """Signatures the corpus already holds for `adapter`: not searched again."""
    out: list[str] = []
    for r in corpus:
        if adapter in [a.strip() for a in r.meta.get("adapter", "").split(",")]:
            out += [x.strip() for x in r.meta.get("signature", "").split(";") if x.strip()]
    return tuple(out)


def _describe(failing: list[dict]) -> str:
    if not failing:
        return "no longer fails on re-evaluation"
    r = failing[0]
    d = r.get("diagnosis") or {}
    m = r.get("metrics") or {}
    what = d.get("summary") or m.get("detail") or r.get("reason") or ""
    if not what and m.get("ratio") is not None:
        what = (f"{r['quantity']} error/bound ratio {m['ratio']:.3g} (observed {m.get('observed')!r}, expected "
                f"{m.get('expected')!r})")
    quantities = ", ".join(sorted({x["quantity"] for x in failing}))
    return f"{r['verdict']} on {quantities}: {what}".strip()


def _write_results(opts: FuzzOptions, specs, reports: list[AdapterReport], seed: int) -> Path:
    """The minimal cases' records in the results format (OUT/fuzz/<run-id>/records.jsonl + meta.json)."""
    from ..outputs import results
    from ..outputs import runmeta
    from ..core.engine import input_checksum

    cases = [f["case"] for rep in reports for f in rep.findings]
    flags = {"frameworks": opts.frameworks, "budget": opts.budget, "seed": seed, "jobs": opts.jobs,
             "max_size": opts.max_size, "max_steps": opts.max_steps, "registry": opts.registry}
    meta = runmeta.base(source="fuzz", tier="fuzz", selection=opts.frameworks, specs=specs, cases=cases,
                        flags=flags, checksum=input_checksum(cases))
    run_dir = Path(opts.out) / "fuzz" / meta["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = results.RecordWriter(run_dir / results.RECORDS)
    counts: dict[str, int] = {}
    for rep in reports:
        for f in rep.findings:
            writer.write(f["records"])
            for r in f["records"]:
                counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    writer.close()
    meta.update(finished=runmeta.now(), status="complete", counts=dict(sorted(counts.items())), checks=writer.count)
    meta["versions"] = {k: v for rep in reports for k, v in rep.versions.items()}
    meta["fuzz"] = [{"adapter": rep.adapter, "cases": rep.evaluated, "seconds": round(rep.seconds, 2),
                     "startup_seconds": round(rep.startup_seconds, 2), "searches": rep.searches,
                     "restarts": rep.restarts, "error": rep.error,
                     "findings": [{"signature": f["signature"], "case": f["case"].id} for f in rep.findings]}
                    for rep in reports]
    results.write_meta(run_dir, meta)
    return run_dir
