"""Evaluate one adapter on one case: run it, run the oracle under its declared convention, compare every
quantity under the derived bound, and return one check record (a JSON-able dict) per quantity.

This is the single place verdicts are made; pytest, the CLI runner and the worker processes all call it.
Nothing here knows a framework: what differs between adapters is their declared Convention, Precision,
supported features and registry entries.
"""
from __future__ import annotations

import time
import traceback

import numpy as np

from adapters.base import EAGER, OnPath
from reference import QUANTITIES, SECOND_ORDER, simulate

from . import messages
from . import repro
from . import tolerance
from .cases import Case
from .compare import compare
from .inputs import checksum, materialize
from .registry import Registry

# 2: records carry `path` (the execution path) and non-eager check ids name it; version-1 files read as eager.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
VERDICTS = ("pass", "fail", "xfail", "xpass", "skip", "error", "characterized")
PER_CHANNEL = ("running_mean", "running_var", "batch_mean", "batch_var", "dgamma", "dbeta", "d2gamma")


def applicable(case: Case) -> list[str]:
    """Quantities that exist for this case, in canonical order (static: pytest parametrizes on it)."""
    out = []
    trains = "train" in case.modes
    for q in QUANTITIES:
        if q not in case.quantities:
            continue
        if q in ("running_mean", "running_var", "num_batches_tracked") and not case.track_running_stats:
            continue
        if q in ("dgamma", "dbeta", "d2gamma") and not case.affine:
            continue
        if q in ("batch_mean", "batch_var") and not trains:
            continue
        out.append(q)
    return out


def _version(adapter) -> str:
    """The framework's version, read once per adapter instance (package metadata is slow to parse)."""
    adapter = getattr(adapter, "adapter", adapter)  # an OnPath view: cache on the adapter itself
    cached = getattr(adapter, "_bnconform_version", None)
    if cached is None:
        cached = adapter.versions().get(adapter.framework, "unknown")
        try:
            adapter._bnconform_version = cached
        except AttributeError:
            return cached
    return cached


def check_id(adapter: str, case_id: str, quantity: str, path: str = EAGER) -> str:
    """`adapter::case::quantity` on eager (the ids from before paths existed), `adapter@path::case::quantity`
    on any other execution path."""
    where = adapter if path == EAGER else f"{adapter}@{path}"
    return f"{where}::{case_id}::{quantity}"


def on_path(adapter, path: str = EAGER) -> OnPath:
    return adapter if isinstance(adapter, OnPath) and adapter.path == path else OnPath(
        getattr(adapter, "adapter", adapter), path)


def _base(adapter, case: Case, quantity: str, version: str, device: str) -> dict:
    path = getattr(adapter, "path", EAGER)
    return {
        "schema": SCHEMA_VERSION,
        "check_id": check_id(adapter.name, case.id, quantity, path),
        "adapter": adapter.name,
        "path": path,
        "api": adapter.api,
        "framework": adapter.framework,
        "version": version,
        "device": device,
        "case": case.id,
        "quantity": quantity,
        "dtype": case.dtype,
        "tier": case.tier,
        "knob": case.knob,
        "verdict": None,
        "reason": "",
        "message": "",
        "metrics": None,
        "tolerance": None,
        "characterization": None,
        "registry": None,
        "channel_stats": None,
        "values": None,
        "repro": None,
        "diagnosis": None,
        "evidence": None,
        "seconds": 0.0,  # time inside the framework for the whole case (the same in each of its records)
        "harness_seconds": 0.0,
    }


def _sample(name: str, arr: np.ndarray) -> list[float]:
    a = np.asarray(arr, dtype=np.float64)
    if name in PER_CHANNEL:
        flat = a[-1] if (a.ndim == 2) else a
    elif name == "num_batches_tracked":
        flat = a[-1:]
    else:
        flat = (a[-1] if name == "y" else a).reshape(-1)[:6]
    return [float(v) if np.isfinite(v) else repr(float(v)) for v in np.asarray(flat).reshape(-1)[:16]]


STEPPED = ("running_mean", "running_var")  # per step, channel 0: the report's running-statistics plot
MAX_STEPS = 64


def _steps(name: str, expected: np.ndarray, observed: np.ndarray) -> dict | None:
    """Channel 0 of a running statistic after every step of a multi-step case (None otherwise)."""
    e, o = np.asarray(expected, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    if name not in STEPPED or e.ndim != 2 or e.shape[0] < 2 or o.shape != e.shape:
        return None
    pick = lambda a: [float(v) if np.isfinite(v) else repr(float(v)) for v in a[:MAX_STEPS, 0]]  # noqa: E731
    return {"expected": pick(e), "observed": pick(o)}


def records_for(adapter, case: Case, verdict: str, reason: str, version: str = "", device: str = "",
                message: str = "", path: str | None = None, seconds: float = 0.0) -> list[dict]:
    """The same verdict for every quantity of a case (skips, errors, registry skips); `seconds`: the time the
    adapter's run() took, where it ran."""
    if path is not None:
        adapter = on_path(adapter, path)
    out = []
    for q in applicable(case):
        r = _base(adapter, case, q, version, device)
        r.update(verdict=verdict, reason=reason, message=message or reason, seconds=seconds)
        out.append(r)
    return out


def evaluate(adapter, case: Case, registry: Registry | None = None, *, path: str = EAGER, diagnose=None,
             evidence=None) -> list[dict]:
    """All check records of `case` on `adapter` (whose setup() has run) on execution path `path`.

    diagnose(adapter, problem, quantity, obs, trace, bounds, pairs=bool) -> dict explains a failing check
    (not called for registered deviations; pairs: whether to search pairs of changes too, asked for failures
    only, not for characterizations);
    evidence(adapter, case, problem, obs) -> dict | None is what the case says about the adapter's conventions
    (conformance.explain.infer); both are optional so the engine does not depend on them.

    Every record carries `seconds`, the time inside adapter.run(), and `harness_seconds`, the rest of this
    call (inputs, oracle, bounds, comparison, diagnosis, evidence): on every way out, the one-element-per-channel
    and raised-problem records included."""
    began = time.perf_counter()
    records = _evaluate(adapter, case, registry, path, diagnose, evidence)
    harness = time.perf_counter() - began - (records[0]["seconds"] if records else 0.0)
    for r in records:
        r["harness_seconds"] = harness
    return records


def _evaluate(adapter, case: Case, registry: Registry | None, path: str, diagnose, evidence) -> list[dict]:
    adapter = on_path(adapter, path)
    registry = registry or Registry([])
    version = _version(adapter)
    device = getattr(adapter, "device", "cpu")
    quantities = applicable(case)
    # A registered "skip" (known crash or hang) never runs the framework.
    for q in quantities:
        entry = registry.peek(adapter.name, version, case.id, q, path)
        if entry is not None and entry.action == "skip":
            registry.match(adapter.name, version, case.id, q, path)
            recs = records_for(adapter, case, "skip", f"registered: {entry.reason}", version, device)
            for r in recs:
                r["registry"] = entry.as_dict()
            return recs
    problem = problem_for(case)
    why = adapter.unsupported(problem)
    if why:
        return records_for(adapter, case, "skip", why, version, device)
    # The oracle sees the inputs before the adapter can touch them, and the inputs are checked afterwards:
    # torch.from_numpy ignores NumPy's read-only flag, so an adapter can write into them.
    single = problem.reduced_count == 1 and "train" in problem.modes
    expected = None if single else _oracle(adapter, problem, case)
    guard = InputGuard(problem, case)
    start = time.perf_counter()
    try:
        obs = adapter.run(problem)
    except Exception as e:  # the adapter (or the framework under it) raised: error records, run continues
        seconds = time.perf_counter() - start
        tb = traceback.format_exc(limit=8)
        return records_for(adapter, case, "error", f"{type(e).__name__}: {e}", version, device, message=tb,
                           seconds=seconds)
    seconds = time.perf_counter() - start
    device = obs.facts.get("device", device)
    if guard.changed():
        SHARED.forget(case)  # its inputs (and nothing computed from them before the run) are no longer the case's
        why = (f"the adapter wrote into its inputs ({', '.join(_modified(case, problem))} changed while it ran); "
               "every comparison would be against altered data")
        return records_for(adapter, case, "error", why, version, device, seconds=seconds)

    # One element per channel normalized with batch statistics: a training step, or any step of a case that
    # tracks no running statistics (inference then uses the batch's too).
    single = problem.reduced_count == 1 and ("train" in problem.modes or not problem.track_running_stats)
    if single or obs.raised is not None:
        return _edge_records(adapter, case, problem, obs, registry, version, device, seconds, single)

    ctx = _Context(adapter, case, problem, obs, registry, version, device, seconds, diagnose, expected)
    records = [ctx.check(q) for q in quantities]
    if problem.dtype == "float64" and any(r["verdict"] == "fail" for r in records):
        records = _rerun_if_nondeterministic(ctx, records, quantities)
    # evidence fits models to every observed array: only when each one has the shape the oracle has
    ev = evidence(adapter, case, problem, obs) if evidence is not None and not ctx.malformed else None
    for r in records:
        r["evidence"] = ev
    return records


class _Context:
    """What the checks of one (adapter, case) run share: the observation, the oracle trace, the bounds."""

    def __init__(self, adapter, case, problem, obs, registry, version, device, seconds, diagnose, expected=None):
        self.adapter, self.case, self.problem, self.obs = adapter, case, problem, obs
        self.registry, self.version, self.device, self.seconds = registry, version, device, seconds
        self.diagnose = diagnose
        if expected is None and not any(q in obs.values for q in applicable(case)):
            # nothing to compare (every quantity unsupported): each check is a skip or an error without the
            # oracle, which on a 2000-step case costs more than the adapter
            self.trace = self.bounds = None
            self.malformed = {}
            return
        self.trace, self.bounds = expected or _oracle(adapter, problem, case)
        self.malformed = {q: why for q in applicable(case) if (why := _malformed(q, obs, self.trace))}
        if self.malformed:
            self.diagnose = None  # hypotheses are fitted to every quantity; a wrong-shaped one would break them

    def record(self, q: str) -> dict:
        rec = _base(self.adapter, self.case, q, self.version, self.device)
        rec["seconds"] = self.seconds
        if self.obs.facts:  # what the path did (graph breaks, the exported mode, what was folded), as observed
            rec["facts"] = {str(k): str(v)[:500] for k, v in self.obs.facts.items()}
        return rec

    def check(self, q: str) -> dict:
        adapter, case, problem, obs, trace = self.adapter, self.case, self.problem, self.obs, self.trace
        rec = self.record(q)
        if q in obs.unsupported or (q not in obs.values and q not in adapter.quantities):
            rec.update(verdict="skip", reason=obs.unsupported.get(q, f"{adapter.name} does not report {q}"))
            return rec
        if q not in obs.values:  # declared observable, not declared unsupported for this case, not returned
            why = f"{adapter.name} returned no {q} (it declares {q} observable and did not say why it is missing)"
            rec.update(verdict="error", reason=why, message=why)
            return rec
        if q in self.malformed:
            rec.update(verdict="error", reason=self.malformed[q], message=self.malformed[q])
            return rec
        bound = self.bounds[q]
        cmp = compare(q, trace[q], obs.values[q], bound.values, expected_dtype=adapter.expected_dtype(q, problem),
                      observed_dtype=obs.dtypes[q], axis=problem.axis)
        rec["metrics"] = cmp.as_dict()
        rec["tolerance"] = {"formula": bound.formula, **bound.params, "ill_posed": bound.ill_posed}
        rec["values"] = {"expected": _sample(q, trace[q]), "observed": _sample(q, obs.values[q])}
        steps = _steps(q, trace[q], obs.values[q])
        if steps:
            rec["values"]["steps"] = steps
        rec["channel_stats"] = _channel_stats(trace, problem, cmp)
        characterization = f"characterization case: {case.note}" if case.characterize else bound.ill_posed
        rec["characterization"] = characterization
        entry = self.registry.match(adapter.name, self.version, case.id, q, adapter.path)
        if entry is not None:
            rec["registry"] = entry.as_dict()
        if characterization:
            rec["verdict"], rec["reason"] = "characterized", characterization
        elif cmp.ok:
            rec["verdict"] = "xpass" if entry else "pass"
            if entry:
                rec["reason"] = f"registered deviation no longer occurs: {entry.id}"
        else:
            rec["verdict"] = "xfail" if entry else "fail"
            rec["reason"] = f"registered: {entry.reason}" if entry else ""
        if rec["verdict"] in ("fail", "xfail", "characterized", "xpass"):
            # A registered deviation is explained by its entry; the search is for what nothing explains yet
            # (pairs of changes, ~15x the cost of the single ones, only for failures).
            if self.diagnose is not None and not cmp.ok and entry is None:
                rec["diagnosis"] = self.diagnose(adapter, problem, q, obs, trace, self.bounds,
                                                 pairs=rec["verdict"] == "fail")
            rec["repro"] = repro.snippet(adapter, case, problem, q)
            rec["message"] = messages.failure(rec, case)
        return rec


def _malformed(q: str, obs, trace) -> str | None:
    """Why the adapter's array for `q` cannot be compared at all (wrong shape or not numbers), or None."""
    if q not in obs.values or q not in trace.quantities:
        return None
    try:
        got = np.asarray(obs.values[q], dtype=np.float64)
    except (TypeError, ValueError) as e:
        return f"the adapter returned {q} that is not an array of numbers ({type(e).__name__})"
    if got.shape != np.shape(trace[q]):
        return f"the adapter returned {q} of shape {got.shape}; the oracle's {q} has shape {np.shape(trace[q])}"
    if not isinstance(obs.dtypes.get(q), str):
        return f"the adapter did not name the dtype of {q}"
    return None


def _oracle(adapter, problem, case: Case | None = None):
    """(trace, bounds) of the declared convention on `problem` (the inputs of `case`: shared with every adapter
    of this process that declares the same convention and precision, see `Shared`)."""
    convention, precision = adapter.convention, adapter.precision(problem)
    second_order = bool(problem.quantities & SECOND_ORDER)

    def compute():
        trace = simulate(problem, convention, second_order=second_order)
        return trace, tolerance.bounds(problem, trace, convention, precision)

    if case is None:
        return compute()
    return SHARED.get(("oracle", case, convention, precision, second_order), compute)


class Shared:
    """What the adapters of one process share, computed once: a case's inputs, and the oracle's trace and bounds
    under a (convention, precision). A family worker hosts several adapters one after another (conformance/
    execution/worker.py), each over the same cases, and on the realistic cases inputs, oracle and bounds were
    most of the harness's cost per adapter.

    Within `budget` bytes, the entries kept are those that save the most computation per byte: each entry's
    cost is the time its computation took, and a new entry that does not fit displaces only entries cheaper per
    byte than itself (the cheapest first, the least recently used among equals), or is not kept. Least recently
    used eviction, used before, kept nothing for the next adapter: each adapter walks the same cases in the same
    order, and a walk larger than the budget (the default tier's is 440 MB to 1.7 GB per family) evicted every
    entry before its next use (onnxruntime's three adapters recomputed 3.7 s of 5.6 s; replaying the default
    tier's accesses per family, 7.0 s recomputed at 512 MB against 1.1 s this way). An entry larger than the
    budget is not kept. Entries are read-only (every array's write flag is cleared), so no consumer can alter
    what the next adapter gets. Which entries are kept depends on measured times; what `get` returns never does."""

    def __init__(self, budget: int, clock=time.perf_counter):
        self.budget, self.clock = budget, clock
        self.entries: dict = {}  # key -> (value, bytes, cost per byte, last use)
        self.held = 0
        self.uses = 0

    def get(self, key, compute):
        try:
            hash(key)
        except TypeError:  # a convention or precision that cannot be a key (a test's stand-in): not shared
            return compute()
        self.uses += 1
        if key in self.entries:
            value, size, density, _ = self.entries[key]
            self.entries[key] = (value, size, density, self.uses)
            return value
        began = self.clock()
        value = compute()
        cost = self.clock() - began
        arrays = list(_arrays_of(value))
        size = sum(a.nbytes for a in arrays)
        density = cost / max(size, 1)
        if size <= self.budget and self._make_room(size, density):
            for a in arrays:
                a.setflags(write=False)
            self.entries[key] = (value, size, density, self.uses)
            self.held += size
        return value

    def _make_room(self, size: int, density: float) -> bool:
        """Evict entries cheaper per byte than `density` until `size` more bytes fit; False (evicting nothing)
        when they cannot be made to."""
        need = self.held + size - self.budget
        if need <= 0:
            return True
        cheaper = sorted((e[2], e[3], k) for k, e in self.entries.items() if e[2] < density)
        victims, freed = [], 0
        for _, _, k in cheaper:
            if freed >= need:
                break
            victims.append(k)
            freed += self.entries[k][1]
        if freed < need:
            return False
        for k in victims:
            self.held -= self.entries.pop(k)[1]
        return True

    def forget(self, case: Case) -> None:
        """Drop every entry of `case` (its inputs were written into)."""
        for key in [k for k in self.entries if k[1] == case]:
            self.held -= self.entries.pop(key)[1]

    def clear(self) -> None:
        self.entries.clear()
        self.held = 0


def _arrays_of(value):
    """The NumPy arrays an entry holds (a Problem, or a (Trace, bounds) pair), each once."""
    seen = set()

    def walk(v):
        if isinstance(v, np.ndarray):
            if id(v) not in seen:
                seen.add(id(v))
                yield v
        elif isinstance(v, (tuple, list)):
            for x in v:
                yield from walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                yield from walk(x)
        elif hasattr(v, "__dataclass_fields__"):  # Problem, Trace, tolerance.Bound
            for name in v.__dataclass_fields__:
                yield from walk(getattr(v, name))

    yield from walk(value)


SHARED = Shared(budget=512 << 20)


def clear_caches() -> None:
    """Forget every shared input and oracle result (benchmarks start each repetition as a fresh worker does)."""
    SHARED.clear()


def problem_for(case: Case):
    """The case's inputs (reference.Problem), materialized once per process (see `Shared`)."""
    return SHARED.get(("inputs", case), lambda: materialize(case))


class InputGuard:
    """Notices an adapter writing into its inputs: a copy of them, compared bit for bit after it ran. The copy
    is taken once per case and process (`Shared`), before the first adapter runs on it, instead of once per
    adapter (on the realistic cases the copy was a third of an adapter's harness time). Inputs are the same
    bits whenever materialized, so the copy holds for a re-materialized Problem too; a guard that finds the
    inputs changed drops both (`Shared.forget`)."""

    def __init__(self, problem, case: Case):
        self.problem = problem
        self.copies = SHARED.get(("pristine inputs", case), lambda: tuple(
            None if a is None else np.array(a, copy=True) for a in _input_arrays(problem)))

    def changed(self) -> bool:
        for a, c in zip(_input_arrays(self.problem), self.copies):
            if (a is None) != (c is None):
                return True
            if a is not None and not np.array_equal(np.ascontiguousarray(a).view(np.int64), c.view(np.int64)):
                return True
        return False


def _input_arrays(problem) -> list:
    return [*problem.xs, problem.gamma, problem.beta, problem.running_mean, problem.running_var, problem.dy,
            problem.v]


def _modified(case: Case, problem) -> list[str]:
    """Names of the input arrays that differ from a fresh materialization of the case."""
    fresh = materialize(case)
    names = [f"x[{k}]" for k in range(problem.steps)] + ["gamma", "beta", "running_mean", "running_var", "dy", "v"]
    now = list(problem.xs) + [problem.gamma, problem.beta, problem.running_mean, problem.running_var, problem.dy,
                              problem.v]
    then = list(fresh.xs) + [fresh.gamma, fresh.beta, fresh.running_mean, fresh.running_var, fresh.dy, fresh.v]
    return [n for n, a, b in zip(names, now, then) if not (a is None and b is None)
            and (a is None or b is None or not np.array_equal(a, b, equal_nan=True))] or ["an input"]


def _rerun_if_nondeterministic(ctx, records, quantities):
    """A failing float64 case runs once more: if the two runs differ, that is reported with the failure."""
    try:
        again = ctx.adapter.run(materialize(ctx.case))
    except Exception:  # noqa: BLE001  (the first run's records stand)
        return records
    diffs = [float(np.nanmax(np.abs(ctx.obs.values[q] - again.values[q]))) for q in ctx.obs.values
             if q in again.values and np.shape(again.values[q]) == np.shape(ctx.obs.values[q])
             and ctx.obs.values[q].size and not np.array_equal(ctx.obs.values[q], again.values[q], equal_nan=True)]
    if diffs:
        note = f"nondeterministic: two runs differ by {max(diffs):.3g} (float64 results should be reproducible)"
        for r in records:
            r["reason"] = f"{note}; {r['reason']}" if r["reason"] else note
            r["message"] = f"{note}\n{r['message']}" if r["message"] else note
    return records


def _channel_stats(trace, problem, cmp) -> dict | None:
    if cmp.worst_channel is None:
        return None
    c = int(cmp.worst_channel)
    t = cmp.worst_step if cmp.worst_step is not None else problem.steps - 1
    t = min(int(t), problem.steps - 1)
    return {"channel": c, "step": t, "mean": float(trace.step_mean[t][c]), "var": float(trace.step_var[t][c]),
            "n": problem.reduced_count, "normalized_with_mean": float(trace.norm_mean[t][c]),
            "normalized_with_var": float(trace.norm_var[t][c]), "source": trace.sources[t]}


def _edge_records(adapter, case, problem, obs, registry, version, device, seconds, single):
    """One element per channel in training: compare the behaviour with the adapter's declaration."""
    declared = adapter.single_element_training
    if single and obs.raised is None and declared == "computes":  # compare values like any case
        ctx = _Context(adapter, case, problem, obs, registry, version, device, seconds, None)
        return [ctx.check(q) for q in applicable(case)]
    out = []
    for q in applicable(case):
        rec = _base(adapter, case, q, version, device)
        rec["seconds"] = seconds
        if not single:  # the framework refused an ordinary problem
            rec.update(verdict="error", reason=f"the framework raised: {obs.raised}", message=obs.raised)
        elif obs.raised is not None and declared == "raises":
            rec.update(verdict="pass", reason=f"raised as declared: {obs.raised}")
        elif obs.raised is not None:
            rec.update(verdict="fail", reason=f"declared to compute with n = 1 but raised: {obs.raised}")
        else:
            rec.update(verdict="fail", reason="declared to raise with one element per channel, but computed")
        entry = registry.match(adapter.name, version, case.id, q, adapter.path)
        if entry is not None:
            rec["registry"] = entry.as_dict()
            rec["verdict"] = {"fail": "xfail", "pass": "xpass"}.get(rec["verdict"], rec["verdict"])
        rec["message"] = rec["message"] or rec["reason"]
        out.append(rec)
    return out


def input_checksum(cases: list[Case]) -> str:
    """One checksum over the inputs of a list of cases (results from different inputs never compare)."""
    import hashlib

    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c.id):
        h.update(c.id.encode())
        h.update(checksum(materialize(c)).encode())
    return h.hexdigest()
