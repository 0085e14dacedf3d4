"""pytest plugin: parametrizes tests/conformance over adapters x cases x quantities and enforces verdicts.

Options (each also an environment variable, for tox and CI):
  --bn-frameworks  BNCONFORM_FRAMEWORKS  adapters, families or globs, comma separated ("all": core adapters)
  --bn-tier        BNCONFORM_TIER        smoke | default | nightly
  --bn-paths       BNCONFORM_PATHS       execution paths: default | all | eager | names/globs (conformance.core.paths)
  --bn-strict      BNCONFORM_STRICT=1    registered deviations that pass (XPASS) and stale entries fail
  --bn-registry    BNCONFORM_REGISTRY    registry directory or file (default: the bundled one)
  --bn-results     BNCONFORM_RESULTS     directory to write the results (records.jsonl + meta.json, the format
                                         of `bnconform run`; see conformance.execution.pytest_results)
  --bn-jobs        BNCONFORM_JOBS        adapter worker processes at a time (default: CPU count)
  --bn-inprocess                         evaluate in this process (debugging; no isolation)
Each test id is adapter/case-id/quantity (adapter@path/case-id/quantity on an execution path other than eager);
the verdict engine is conformance.core.engine.evaluate.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

STASH_KEY = pytest.StashKey["BNSession"]()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def pytest_addoption(parser):
    g = parser.getgroup("bnconform", "BatchNorm conformance")
    g.addoption("--bn-frameworks", default=os.environ.get("BNCONFORM_FRAMEWORKS", "all"),
                help="adapters, families or globs, comma separated; 'all' = core adapters")
    g.addoption("--bn-tier", default=os.environ.get("BNCONFORM_TIER", "default"),
                choices=["smoke", "default", "nightly"], help="case tier")
    g.addoption("--bn-paths", default=os.environ.get("BNCONFORM_PATHS", "default"),
                help="execution paths: default | all | eager | names/globs, comma separated")
    g.addoption("--bn-strict", action="store_true", default=_env_flag("BNCONFORM_STRICT"),
                help="XPASS and stale registry entries fail")
    g.addoption("--bn-registry", default=os.environ.get("BNCONFORM_REGISTRY"), help="registry dir or file")
    g.addoption("--bn-results", default=os.environ.get("BNCONFORM_RESULTS"), help="write results to this dir")
    from ..core.validation import JOBS, SECONDS

    g.addoption("--bn-jobs", type=JOBS, default=os.environ.get("BNCONFORM_JOBS", "0") or "0",
                help="adapter worker processes at a time (0: CPU count)")
    g.addoption("--bn-inprocess", action="store_true", help="evaluate in the pytest process (debugging)")
    g.addoption("--bn-case-timeout", type=SECONDS, default=300.0, help="seconds per case")


def _selection(config):
    from ..core.catalogue import select

    try:
        return select(config.getoption("--bn-frameworks"))
    except KeyError as e:
        raise pytest.UsageError(str(e.args[0])) from None


LOCK_KEY = pytest.StashKey[object]()


def pytest_configure(config):
    config.addinivalue_line("markers", "bnconform: a BatchNorm conformance check")
    from ..core.registry import Registry, RegistryError

    try:
        registry = Registry.load(config.getoption("--bn-registry"))
    except RegistryError as e:
        raise pytest.UsageError(str(e)) from None
    from .worker import cache_problem

    if why := cache_problem(None):  # one usage error, not an error record for every check of the JAX adapters
        raise pytest.UsageError(why)
    config.stash[STASH_KEY] = BNSession(config, registry)
    results = config.getoption("--bn-results")
    if results and not hasattr(config, "workerinput"):  # main process or xdist controller: start afresh
        from .pytest_results import InUse, clean, lock

        try:  # held until this process exits; a second session on the same directory is refused, not mixed in
            config.stash[LOCK_KEY] = lock(results)
        except InUse as e:
            raise pytest.UsageError(str(e)) from None
        clean(results)


def pytest_report_header(config):
    from importlib.metadata import PackageNotFoundError, version

    specs = _selection(config)
    lines = [f"bnconform: tier {config.getoption('--bn-tier')}, frameworks {config.getoption('--bn-frameworks')}"
             f"{', strict' if config.getoption('--bn-strict') else ''}"]
    versions = {}
    for s in specs:
        dist = s.requires[0]
        try:
            versions[dist] = version({"tensorflow": "tensorflow-cpu", "haiku": "dm-haiku"}.get(dist, dist))
        except PackageNotFoundError:
            try:
                versions[dist] = version(dist)
            except PackageNotFoundError:
                versions[dist] = "not installed"
    lines.append("bnconform versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    avail = [s.name for s in specs if s.available()]
    lines.append(f"bnconform adapters ({len(avail)} of {len(specs)} available): {', '.join(avail) or 'none'}")
    return lines


def pytest_generate_tests(metafunc):
    if "bn_check" not in metafunc.fixturenames:
        return
    from ..core import paths as paths_mod
    from ..core.cases import case_by_id, cases_for_tier
    from ..core.engine import applicable
    from ..core.install import hint as install_hint

    config = metafunc.config
    tier = config.getoption("--bn-tier")
    cases = cases_for_tier(tier)
    params = []
    selection = _selection(config)
    declared = {s.name: paths_mod.declared(s) for s in selection if not s.missing()}
    try:
        paths_mod.check_selection(config.getoption("--bn-paths"), declared.values())
    except paths_mod.PathError as e:
        raise pytest.UsageError(str(e)) from None
    for s in selection:
        missing = s.missing()
        if missing:
            why = f"{', '.join(missing)} not installed; {install_hint(s.install)}"
            params.append(pytest.param(("missing", s.name, why),
                                       id=f"{s.name}/not-installed"))
            continue
        for item in paths_mod.items(declared[s.name], config.getoption("--bn-paths"), tier, cases):
            case_id, path = paths_mod.split(item)
            where = s.name if path == "eager" else f"{s.name}@{path}"
            for q in applicable(case_by_id(case_id)):
                params.append(pytest.param((s.name, item, q), id=f"{where}/{case_id}/{q}",
                                           marks=[pytest.mark.bnconform, pytest.mark.xdist_group(_group(s))]))
    if not any(p.values[0][0] != "missing" for p in params):
        params.append(pytest.param(("none", "", f"no adapter of selection {config.getoption('--bn-frameworks')!r}"
                                                f" is installed: nothing to check"), id="no-checks"))
    metafunc.parametrize("bn_check", [p for p in params], indirect=False)


def pytest_collection_finish(session):
    bn = session.config.stash.get(STASH_KEY, None)
    if bn is None:
        return
    for item in session.items:
        spec = getattr(item, "callspec", None)
        if spec and "bn_check" in spec.params:
            adapter, item, q = spec.params["bn_check"]
            if adapter not in ("missing", "none"):
                bn.wanted.setdefault(adapter, [])
                if item not in bn.wanted[adapter]:
                    bn.wanted[adapter].append(item)
                bn.collected += 1
    results = session.config.getoption("--bn-results")
    if results and bn.collected:
        from .pytest_results import SessionResults

        config = session.config
        bn.sink = SessionResults(results, _xdist_worker(config))
        bn.sink.begin(tier=config.getoption("--bn-tier"), selection=config.getoption("--bn-frameworks"),
                      specs=_selection(config), flags=_flags(config))


@pytest.fixture(scope="session")
def bn_session(request) -> "BNSession":
    bn = request.config.stash[STASH_KEY]
    yield bn
    bn.close()


class BNSession:
    """Starts adapter workers on first use and hands each test its record."""

    def __init__(self, config, registry):
        self.config = config
        self.registry = registry
        self.wanted: dict[str, list[str]] = {}
        self.collected = 0
        self.records: dict[str, dict] = {}
        self.done_cases: set[tuple[str, str]] = set()
        self.cond = threading.Condition()
        self.pools: list = []
        self.started: set[str] = set()
        self.versions: dict[str, dict] = {}
        self.stale = None
        self.results_path = None
        self.sink = None  # pytest_results.SessionResults when --bn-results is given
        self.t0 = time.time()

    # -- producing records
    def _on_records(self, adapter: str, item: str, records: list[dict]) -> None:
        with self.cond:
            for r in records:
                self.records[r["check_id"]] = r
            self.done_cases.add((adapter, item))
            self.cond.notify_all()

    def _ensure_started(self, adapter: str) -> None:
        if adapter in self.started:
            return
        self.started.add(adapter)
        cases = self.wanted.get(adapter, [])
        if self.config.getoption("--bn-inprocess"):
            self._run_inprocess(adapter, cases)
            return
        from .worker import WORKER_THREADS, AdapterRun, Pool, WorkerConfig

        jobs = self.config.getoption("--bn-jobs") or os.cpu_count() or 1
        threads = WORKER_THREADS  # as `bnconform run`: results must not depend on --bn-jobs
        cfg = WorkerConfig(registry_path=self.config.getoption("--bn-registry"), threads=threads,
                           case_timeout=self.config.getoption("--bn-case-timeout"))
        # Serially, start every selected adapter now: they run in parallel while tests wait. Under xdist each
        # worker is given whole framework families (xdist groups, `--dist loadgroup`), so it starts the family
        # of the adapter asked for: one process pays the family's imports, as in `bnconform run`.
        names = list(self.wanted)
        if hasattr(self.config, "workerinput"):
            names = [adapter]
            if getattr(self.config.option, "loadgroup", False):  # xdist sets it on workers; else tests spread
                group = _groups(self.config)
                names = [n for n in self.wanted if n == adapter or group.get(n, n) == group.get(adapter, adapter)]
        runs = []
        for name in names:
            self.started.add(name)
            runs.append(AdapterRun(name, self.wanted.get(name, []), cfg,
                                   on_records=lambda cid, recs, n=name: self._on_records(n, cid, recs),
                                   on_event=lambda kind, info, n=name: self._on_event(n, kind, info)))
        pool = Pool(runs, jobs)
        pool.start()
        self.pools.append(pool)

    def _on_event(self, adapter, kind, info):
        if kind == "started":
            self.versions[adapter] = info.get("versions", {})

    def _run_inprocess(self, adapter: str, cases: list[str]) -> None:
        from ..core.catalogue import load

        from ..core.cases import case_by_id
        from ..core.engine import evaluate
        from ..core.paths import split

        from ..explain.diagnose import diagnose
        from ..explain.infer import evidence

        a = load(adapter)
        a.setup()
        self.versions[adapter] = a.versions()
        for item in cases:
            case_id, path = split(item)
            self._on_records(adapter, item, evaluate(a, case_by_id(case_id), self.registry, path=path,
                                                     diagnose=diagnose, evidence=evidence))

    def record(self, adapter: str, item: str, quantity: str) -> dict:
        """The record of one check; `item` is a case id or case-id@path (conformance.core.paths)."""
        from ..core.engine import check_id
        from ..core.paths import split

        self._ensure_started(adapter)
        with self.cond:
            while (adapter, item) not in self.done_cases:
                self.cond.wait(1.0)
                if (adapter, item) not in self.done_cases and not self._driving(adapter):
                    failures = "; ".join(f for pool in self.pools for f in pool.failures) or "no records came back"
                    raise RuntimeError(f"the thread driving {adapter} stopped before {item}: {failures}")
            case_id, path = split(item)
            return self.records[check_id(adapter, case_id, quantity, path)]

    def _driving(self, adapter: str) -> bool:
        """Whether a thread that may still deliver this adapter's records is alive (in-process: always)."""
        pools = [pool for pool in self.pools if any(run.adapter_name == adapter for run in pool.runs)]
        return not pools or any(pool.delivering(adapter) for pool in pools)

    def close(self) -> None:
        for pool in self.pools:
            pool.stop()
        for pool in self.pools:
            pool.join(30)

    # -- enforcing a record inside a test
    def enforce(self, rec: dict, request) -> None:
        rec["nodeid"] = request.node.nodeid
        if self.sink is not None:
            self.sink.add(rec)
        request.node.user_properties.append(("bn_verdict", rec["verdict"]))
        if rec.get("metrics"):
            request.node.user_properties.append(("bn_ratio", rec["metrics"]["ratio"]))
        verdict = rec["verdict"]
        if verdict == "skip":
            pytest.skip(rec["reason"])
        if verdict == "error":
            pytest.fail(f"{rec['adapter']} errored on {rec['case']}: {rec['reason']}\n{rec['message']}", pytrace=False)
        if verdict in ("xfail", "xpass"):
            reg = rec["registry"] or {}
            why = f"{reg.get('id')}: {reg.get('reason')}" + (f" ({reg['link']})" if reg.get("link") else "")
            request.applymarker(pytest.mark.xfail(reason=why, strict=self.config.getoption("--bn-strict")))
            if verdict == "xfail":
                pytest.fail(_message(rec), pytrace=False)
            return  # XPASS: pytest reports it (and fails it under --bn-strict)
        if verdict == "fail":
            pytest.fail(_message(rec), pytrace=False)
        # pass and characterized pass the test; characterization ratios live in the results


def _message(rec: dict) -> str:
    from ..core.cases import case_by_id
    from ..core.messages import failure

    rec_msg = failure(rec, case_by_id(rec["case"])) if rec.get("metrics") else rec.get("message") or rec["reason"]
    return rec_msg


def pytest_sessionfinish(session, exitstatus):
    bn = session.config.stash.get(STASH_KEY, None)
    if bn is None:
        return
    config = session.config
    if bn.records:
        bn.stale = _stale(bn)
    if bn.sink is not None:
        bn.results_path = bn.sink.finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED,
                                         versions=bn.versions, stale=bn.stale)
    results = config.getoption("--bn-results")
    if results and not hasattr(config, "workerinput"):  # xdist controller: merge what the workers wrote
        from .pytest_results import merge

        merged = merge(results)
        if merged:
            bn.results_path = merged
            if not bn.records:  # the workers had the records: judge staleness on the merged whole
                bn.stale = _stale_merged(bn, merged)
    if bn.stale and config.getoption("--bn-strict") and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bn = config.stash.get(STASH_KEY, None)
    if bn is None:
        return
    records = list(bn.records.values())
    if not records and bn.results_path:  # xdist controller: the workers' merged records
        from ..outputs.results import ResultsError, load

        try:
            records = load([bn.results_path]).records
        except ResultsError:
            records = []
    if not records:
        if bn.results_path:
            terminalreporter.write_line(f"bnconform results written to {bn.results_path}")
        return
    from collections import Counter

    tr = terminalreporter
    tr.section("bnconform")
    by_adapter: dict[str, Counter] = {}
    for r in records:
        by_adapter.setdefault(r["adapter"], Counter())[r["verdict"]] += 1
    order = ("pass", "fail", "xfail", "xpass", "skip", "error", "characterized")
    for name, counts in sorted(by_adapter.items()):
        tr.write_line(f"{name:36s} " + "  ".join(f"{v} {counts[v]}" for v in order if counts[v]))
    if bn.stale is None:
        tr.write_line("stale registry entries: not checked (the selection ran only part of the collected checks)")
    for e in bn.stale or []:
        tr.write_line(f"stale registry entry {e.id} ({e.source}): covers checks of this session but matched none "
                      f"(another entry matched them first). {e.reason}")
    if bn.results_path:
        tr.write_line(f"results written to {bn.results_path}")


def _stale(bn):
    """Registry entries that matched none of this session's checks; None when the session ran a subset."""
    if bn.collected != len(bn.records):
        return None
    hits: dict[str, int] = {}
    for r in bn.records.values():
        if r.get("registry"):
            hits[r["registry"]["id"]] = hits.get(r["registry"]["id"], 0) + 1
    selected = {adapter: next(iter(vers.values()), "0") for adapter, vers in bn.versions.items()}
    from .runner import evaluated

    return bn.registry.stale(selected, hits, _paths_run(bn.records.values()), evaluated(bn.records.values()))


def _paths_run(records) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in records:
        out.setdefault(r["adapter"], set()).add(r.get("path", "eager"))
    return out


def _stale_merged(bn, path):
    """Stale entries from merged xdist results, when they hold every check of the selection and tier."""
    from ..core.cases import case_by_id, cases_for_tier
    from ..core.catalogue import select
    from ..core.engine import applicable
    from ..outputs.results import load

    from ..core import paths as paths_mod

    records = load([path]).records
    adapters = {r["adapter"]: r.get("version") or "0" for r in records}
    tier = bn.config.getoption("--bn-tier")
    cases = cases_for_tier(tier)
    expected = 0
    for s in select(bn.config.getoption("--bn-frameworks")):
        if s.available():
            for item in paths_mod.items(paths_mod.declared(s), bn.config.getoption("--bn-paths"), tier, cases):
                expected += len(applicable(case_by_id(paths_mod.split(item)[0])))
    if len(records) != expected:
        return None
    hits: dict[str, int] = {}
    for r in records:
        if r.get("registry"):
            hits[r["registry"]["id"]] = hits.get(r["registry"]["id"], 0) + 1
    from .runner import evaluated

    return bn.registry.stale(adapters, hits, _paths_run(records), evaluated(records))


def _flags(config) -> dict:
    return {"frameworks": config.getoption("--bn-frameworks"), "tier": config.getoption("--bn-tier"),
            "paths": config.getoption("--bn-paths"),
            "strict": config.getoption("--bn-strict"), "registry": config.getoption("--bn-registry"),
            "jobs": config.getoption("--bn-jobs"), "case_timeout": config.getoption("--bn-case-timeout"),
            "inprocess": config.getoption("--bn-inprocess")}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the checks grouped by framework family read from their test ids, not from the
    `@group` suffix xdist writes into node ids: on pytest 9.2 that suffix no longer takes effect and loadgroup
    silently distributes test by test (pytest-dev/pytest-xdist#1386), which would start every adapter on every
    worker. Other tests keep xdist's own grouping."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    groups = _groups(config)

    class FamilyScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            _, sep, rest = nodeid.partition("::test_batchnorm[")
            if sep:
                adapter = rest.split("/", 1)[0].split("@", 1)[0]  # adapter[@path]/case/quantity]
                return "bnconform:" + groups.get(adapter, adapter)
            return super()._split_scope(nodeid)

    return FamilyScheduling(config, log)


def _group(spec) -> str:
    """The xdist group of an adapter's checks: its framework family's process (adapters sharing one worker
    process in `bnconform run`), else the adapter alone."""
    return getattr(spec, "process", "") or spec.name


def _groups(config) -> dict[str, str]:
    """Adapter name -> its xdist group, for the selected adapters."""
    return {spec.name: _group(spec) for spec in _selection(config)}


def _xdist_worker(config) -> str:
    return getattr(config, "workerinput", {}).get("workerid", "main")
