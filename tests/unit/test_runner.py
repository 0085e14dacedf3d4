"""`bnconform run` end to end, in subprocesses, on framework-free fake adapters: exit statuses, missing
frameworks, a worker killed or hung mid-run, Ctrl-C, and the records it leaves behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conformance.outputs import results
from conformance.core.cases import cases_for_tier
from conformance.core.engine import applicable

from .clirun import bnconform, env, run_dir

SMOKE = cases_for_tier("smoke")
KILL_CASE = SMOKE[0].id


def _records(out):
    return results.load([run_dir(out)]).records


def _meta(out):
    return json.loads((run_dir(out) / "meta.json").read_text())


def _checks(case) -> int:
    return len(applicable(case))


def test_passing_run_exits_0_and_writes_results_and_report(tmp_path):
    r = bnconform("run", "--frameworks", "fake.oracle,fake.absent", "--tier", "smoke", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    recs = _records(tmp_path)
    assert {x["verdict"] for x in recs} == {"pass"}
    assert len(recs) == sum(_checks(c) for c in SMOKE)
    assert "skip fake.absent: bnconform_no_such_framework not installed; pip install bnconform-no-such-framework" \
        in r.stdout
    meta = _meta(tmp_path)
    assert meta["status"] == "complete" and meta["checks"] == len(recs) and meta["counts"] == {"pass": len(recs)}
    absent = next(a for a in meta["adapters"] if a["name"] == "fake.absent")
    assert absent["available"] is False and absent["install"] == "pip install bnconform-no-such-framework"
    assert (tmp_path / "index.html").is_file()
    assert f"report:  {tmp_path / 'index.html'}" in r.stdout
    # stdout is not a terminal here: plain progress lines, no control sequences
    lines = r.stdout.splitlines()
    assert any(ln.startswith("start fake.oracle") for ln in lines)
    assert any(ln.startswith(f"done fake.oracle: {len(SMOKE)}/{len(SMOKE)} cases") for ln in lines)
    assert "\x1b[" not in r.stdout


def test_a_runs_report_is_the_one_bnconform_report_makes_of_its_results(tmp_path):
    # the run renders from the records it read once and the analysis tables it computed for analysis.json;
    # `bnconform report` reads and computes everything again: the two pages are the same bytes
    out = tmp_path / "out"
    r = bnconform("run", "--frameworks", "fake.oracle,fake.wrong_var", "--tier", "smoke", "--out", out)
    assert r.returncode == 1, r.stderr  # fake.wrong_var's running variance fails: findings, a diagnosis
    tables = json.loads((run_dir(out) / "analysis.json").read_text())["tables"]
    assert any(t["rows"] for t in tables)
    again = tmp_path / "again.html"
    assert bnconform("report", run_dir(out), "--out", again).returncode == 0
    assert (out / "index.html").read_bytes() == again.read_bytes()


def test_failing_check_exits_1_and_threads_are_capped(tmp_path):
    """Two workers side by side, each computing with one thread (recorded in meta.json)."""
    r = bnconform("run", "--frameworks", "fake.wrong_var,fake.oracle", "--tier", "smoke", "--out", tmp_path,
                  "--jobs", "2", "--no-report")
    assert r.returncode == 1, r.stderr
    verdicts = {(x["adapter"], x["quantity"], x["verdict"]) for x in _records(tmp_path)}
    assert ("fake.wrong_var", "running_var", "fail") in verdicts and ("fake.wrong_var", "y", "pass") in verdicts
    assert {v for a, _, v in verdicts if a == "fake.oracle"} == {"pass"}
    flags = _meta(tmp_path)["flags"]
    assert flags["jobs"] == 2 and flags["threads_per_worker"] == 1  # not cores // jobs: results must not depend on --jobs


def _entry(ident, adapter, cases, quantities):
    return (f'[[deviation]]\nid = "{ident}"\nadapter = "{adapter}"\ncases = "{cases}"\nquantities = "{quantities}"\n'
            'reason = "a deviation fixed upstream"\naction = "xfail"\n')


@pytest.mark.parametrize("adapter, entries, effect", [
    ("fake.oracle", [("gone", "fake.oracle", "*", "y")], "xpass"),
    # running_var of fake.wrong_var fails: the first entry takes it, the second covers it and never matches
    ("fake.wrong_var", [("first", "fake.wrong_var", "*", "running_var"),
                        ("shadowed", "fake.wrong_var", "*", "running_var")], "stale"),
], ids=["xpass", "stale"])
def test_xpass_and_stale_entries_fail_only_under_strict(tmp_path, adapter, entries, effect):
    reg = tmp_path / "reg.toml"
    reg.write_text("".join(_entry(*e) for e in entries))
    args = ("run", "--frameworks", adapter, "--tier", "smoke", "--registry", reg, "--no-report")
    lenient = bnconform(*args, "--out", tmp_path / "a")
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    if effect == "xpass":
        assert "xpass" in {x["verdict"] for x in _records(tmp_path / "a")}
    else:
        assert "stale registry entry shadowed" in lenient.stdout
        assert [e["id"] for e in _meta(tmp_path / "a")["stale_registry"]] == ["shadowed"]
    assert bnconform(*args, "--strict", "--out", tmp_path / "b").returncode == 1


def test_an_entry_the_tier_cannot_check_is_not_stale(tmp_path):
    """The smoke tier has no case an entry covers: "not checked by this run", and --strict still passes."""
    reg = tmp_path / "reg.toml"
    reg.write_text(_entry("other-tier", "fake.oracle", "no-such-case-*", "*"))
    r = bnconform("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--registry", reg, "--no-report",
                  "--strict", "--out", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stale" not in r.stdout and "not checked by this run" in r.stdout
    meta = _meta(tmp_path)
    assert meta["stale_registry"] == [] and meta["unchecked_registry"] == ["other-tier"]


def test_killed_worker_costs_only_its_case(tmp_path):
    """fake.killer SIGKILLs its own worker on one case: that case's checks are errors naming the signal, its
    other case still runs in a restarted worker, the other adapter's results are complete, the report renders."""
    r = bnconform("run", "--frameworks", "fake.killer,fake.oracle", "--tier", "smoke", "--out", tmp_path,
                  BNCONFORM_FAKE_KILL=KILL_CASE)
    assert r.returncode == 1, r.stderr
    recs = _records(tmp_path)
    killer = [x for x in recs if x["adapter"] == "fake.killer"]
    errors = [x for x in killer if x["verdict"] == "error"]
    assert {x["case"] for x in errors} == {KILL_CASE}
    assert len(errors) == _checks(SMOKE[0])
    assert all("SIGKILL" in x["reason"] for x in errors)
    assert {x["verdict"] for x in killer if x["case"] != KILL_CASE} == {"pass"}
    oracle = [x for x in recs if x["adapter"] == "fake.oracle"]
    assert len(oracle) == sum(_checks(c) for c in SMOKE) and {x["verdict"] for x in oracle} == {"pass"}
    assert "worker restarted" in r.stdout
    html = (tmp_path / "index.html").read_text()
    assert "SIGKILL" in html and 'id="matrix-table"' in html


def test_a_family_shares_one_worker_and_a_crash_restarts_it(tmp_path):
    """Two adapters of one process key run in ONE worker process (one import); when the second kills that
    process on one case, only that case's checks are errors: the process restarts, the adapter is set up
    again and resumes, and the first adapter's results (finished in the old process) are complete."""
    pids = tmp_path / "pids"
    pids.mkdir()
    r = bnconform("run", "--frameworks", "fake.family.oracle,fake.family.killer", "--tier", "smoke", "--jobs", "1",
                  "--out", tmp_path / "out", "--no-report", BNCONFORM_FAKE_KILL=KILL_CASE,
                  BNCONFORM_FAKE_PIDS=str(pids))
    assert r.returncode == 1, r.stderr
    setups = sorted(p.name for p in pids.iterdir())
    oracle = [p.split(".")[-1] for p in setups if p.startswith("fake.family.oracle.")]
    killer = [p.split(".")[-1] for p in setups if p.startswith("fake.family.killer.")]
    assert len(oracle) == 1 and len(killer) == 2, setups  # the killer set up again after the crash
    assert oracle[0] in killer  # ... first in the process the oracle had used
    recs = _records(tmp_path / "out")
    errors = {(x["adapter"], x["case"]) for x in recs if x["verdict"] == "error"}
    assert errors == {("fake.family.killer", KILL_CASE)}
    for name in ("fake.family.oracle", "fake.family.killer"):
        assert len([x for x in recs if x["adapter"] == name]) == sum(_checks(c) for c in SMOKE)
    timing = {a["name"]: a["timing"] for a in _meta(tmp_path / "out")["adapters"]}
    assert all(t["startup_seconds"] > 0 for t in timing.values())


def test_hung_worker_times_out_and_the_run_goes_on(tmp_path):
    r = bnconform("run", "--frameworks", "fake.killer", "--tier", "smoke", "--out", tmp_path, "--case-timeout", "3",
                  BNCONFORM_FAKE_HANG=KILL_CASE)
    assert r.returncode == 1, r.stderr
    recs = _records(tmp_path)
    assert {x["verdict"] for x in recs if x["case"] == KILL_CASE} == {"error"}
    assert all("timed out after 3 s" in x["reason"] for x in recs if x["case"] == KILL_CASE)
    assert {x["verdict"] for x in recs if x["case"] != KILL_CASE} == {"pass"}


def test_ctrl_c_stops_cleanly_and_keeps_what_finished(tmp_path):
    """SIGINT while one worker hangs: exit 130, no traceback, the finished checks are on disk (whole lines),
    meta.json says interrupted, and the report of what finished renders."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "conformance", "run", "--frameworks", "fake.killer,fake.oracle", "--tier", "smoke",
         "--out", str(tmp_path), "--jobs", "2"],
        env=env(BNCONFORM_FAKE_HANG=SMOKE[1].id), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until fake.oracle has finished and the killer hangs
            runs = tmp_path / "runs"
            files = list(runs.glob("*/records.jsonl")) if runs.exists() else []
            n = sum(1 for _ in files[0].open()) if files else 0
            if n >= sum(_checks(c) for c in SMOKE) + _checks(SMOKE[0]):
                break
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in out
    recs = _records(tmp_path)
    assert not [x for x in recs if x["case"] == SMOKE[1].id and x["adapter"] == "fake.killer"]
    assert len([x for x in recs if x["adapter"] == "fake.oracle"]) == sum(_checks(c) for c in SMOKE)
    assert _meta(tmp_path)["status"] == "interrupted"
    assert (tmp_path / "index.html").is_file()


def test_pool_wait_turns_ctrl_c_into_a_clean_stop_and_waits_for_cleanup():
    """Ctrl-C during Pool.wait stops every run and returns only after each has finished cleaning up (a
    KeyboardInterrupt inside Thread.join could declare a still-running thread finished on CPython 3.11)."""
    import threading

    from conformance.execution.worker import Pool

    class SlowToStop:
        adapter_name = "slow"

        def __init__(self):
            self.stopped = threading.Event()
            self.cleaned = False

        def run(self):
            self.stopped.wait(60)
            time.sleep(0.5)  # killing a worker process takes a moment
            self.cleaned = True

    runs = [SlowToStop(), SlowToStop()]
    seen = []
    # What was there before: Python's default_int_handler, or SIG_IGN where the suite was started in the
    # background by a non-interactive shell (which ignores SIGINT in background jobs)
    before = signal.getsignal(signal.SIGINT)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    assert Pool(runs, jobs=2).wait(on_interrupt=lambda: seen.append("stopping")) is True
    assert seen == ["stopping"] and all(r.cleaned for r in runs)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored


def test_a_driver_bug_is_one_line_not_a_traceback():
    from conformance.execution.worker import Pool

    class Broken:
        adapter_name = "broken"
        stopped = __import__("threading").Event()

        def run(self):
            raise ValueError("on_records failed")

    pool = Pool([Broken()], jobs=1)
    assert pool.wait() is False
    assert pool.failures == ["broken: ValueError: on_records failed"]


def test_pool_keeps_a_family_on_its_process_and_spreads_families_over_slots():
    """The scheduling rule (conformance.execution.worker.Pool): a slot keeps taking runs of the key its process has; a
    slot needing a new process takes the largest family no other slot is running."""
    import threading

    from conformance.execution.worker import Pool

    class Run:
        def __init__(self, name, key):
            self.adapter_name, self.key, self.stopped = name, key, threading.Event()

    runs = [Run("onnx.a", "onnx"), Run("tf.a", "tf"), Run("jax.a", "jax"), Run("tf.b", "tf"), Run("jax.b", "jax"),
            Run("jax.c", "jax"), Run("keras.torch", "keras.torch")]
    pool = Pool(runs, jobs=2)
    taken = [pool._take(0, None).adapter_name, pool._take(1, None).adapter_name]
    assert taken == ["jax.a", "tf.a"]  # the largest family first; the second slot a family nobody runs
    assert pool._take(0, "jax").adapter_name == "jax.b" and pool._take(1, "tf").adapter_name == "tf.b"
    assert pool._take(1, "tf").adapter_name == "onnx.a"  # tf done: a family slot 0 is not running
    assert pool._take(0, "jax").adapter_name == "jax.c"
    assert [pool._take(0, "jax").adapter_name, pool._take(0, "keras.torch")] == ["keras.torch", None]
    # a family running in another slot: a second process only while two of its runs or more are left
    pool = Pool([Run("tf.a", "tf"), Run("tf.b", "tf"), Run("tf.c", "tf")], jobs=2)
    assert [pool._take(0, None).adapter_name, pool._take(1, None).adapter_name] == ["tf.a", "tf.b"]
    assert pool._take(1, None) is None and pool._take(0, "tf").adapter_name == "tf.c"


def test_compiled_code_caches_go_under_the_results_directory_unless_chosen(monkeypatch, tmp_path):
    from conformance.execution.worker import persistent_caches

    for var in ("BNCONFORM_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TF_XLA_FLAGS"):
        monkeypatch.delenv(var, raising=False)
    persistent_caches(str(tmp_path / ".cache"))
    assert os.environ["BNCONFORM_CACHE_DIR"] == str(tmp_path / ".cache")  # adapters/base.py compiled_code_dir
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".cache" / "inductor")
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={tmp_path / '.cache' / 'xla'}"
    monkeypatch.setenv("BNCONFORM_CACHE_DIR", "/mine")
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/mine/xla")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    persistent_caches(str(tmp_path / ".cache"))
    assert os.environ["BNCONFORM_CACHE_DIR"] == "/mine" and os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/mine/inductor"
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/mine/xla"
    # set but empty: unset, as the adapters read it (it had sent Inductor's cache to ./inductor)
    monkeypatch.setenv("BNCONFORM_CACHE_DIR", "")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    persistent_caches(str(tmp_path / ".cache"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".cache" / "inductor")


def test_a_cache_directory_is_checked_without_creating_it(monkeypatch, tmp_path):
    from conformance.execution import worker

    monkeypatch.delenv("BNCONFORM_CACHE_DIR", raising=False)
    assert worker.cache_problem(None) is None  # no variable, no default: the adapters' reports/.cache
    assert worker.cache_problem(str(tmp_path / "a" / "b")) is None
    assert not (tmp_path / "a").exists()
    # root may write anywhere, so this machine reaches the permission branch only by being told so
    monkeypatch.setattr(worker.os, "access", lambda path, mode: False)
    assert worker.cache_problem(str(tmp_path / "a")) == (
        f"cannot keep compiled code in {tmp_path / 'a'}: {tmp_path} is not writable")


def test_numpy_is_told_not_to_advise_huge_pages_in_the_processes_bnconform_starts(monkeypatch):
    """NumPy reads NUMPY_MADVISE_HUGEPAGE once, when imported: a worker starts with it set (a spawned process
    inherits os.environ as it is at start()), the command line sets it before it imports NumPy, and a value the
    user chose is kept (conformance/execution/worker.py numpy_without_hugepage_advice)."""
    import multiprocessing.context

    from conformance.execution.worker import WorkerConfig, WorkerProcess

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    started_with = []
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start",
                        lambda self: started_with.append(os.environ.get("NUMPY_MADVISE_HUGEPAGE")))
    worker = WorkerProcess("fake", WorkerConfig())
    worker._spawn()  # no process starts: start() only records the environment it would inherit
    worker.conn.close()
    assert started_with == ["0"]
    probe = ("import sys\n"
             "from conformance.cli import main\n"
             "assert 'numpy' not in sys.modules, 'the command line imported NumPy before main()'\n"
             "main(['cases', '--tier', 'smoke'])\n"
             "import numpy as np\n"
             "print((getattr(np, '_core', None) or np.core).multiarray._get_madvise_hugepage())")
    for chosen, advised in ((None, "False"), ("1", "True")):
        e = {k: v for k, v in env().items() if k != "NUMPY_MADVISE_HUGEPAGE"}
        if chosen is not None:
            e["NUMPY_MADVISE_HUGEPAGE"] = chosen
        r = subprocess.run([sys.executable, "-c", probe], env=e, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == advised


def test_a_worker_freezes_what_an_adapter_set_up_out_of_later_garbage_collections(monkeypatch):
    """What exists after an adapter's setup (its framework's modules, its state) is moved to the collector's
    permanent generation, so the collections during its cases do not walk it again; objects made afterwards
    are collected as before (conformance/execution/worker.py _Hosted.setup)."""
    import gc

    from conformance.execution.worker import _Hosted

    from .clirun import FAKES

    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", FAKES)
    gc.unfreeze()
    try:
        adapter = _Hosted(None, diagnose=False).setup("fake.oracle")
        later = object.__new__(type(adapter))
        walked = gc.get_objects()  # what a full collection walks: every generation but the permanent one
        assert not any(o is adapter for o in walked)
        assert any(o is later for o in walked)
    finally:
        gc.unfreeze()


def test_a_free_slot_helps_the_longest_run_and_every_case_is_recorded_once(tmp_path, monkeypatch):
    """One slow adapter, two slots: the second starts a process of its own and takes cases from the same queue
    (Pool._to_help), every case is recorded exactly once with the verdicts of an unshared run, and the run
    reports finished once, after both processes are done."""
    from conformance.execution.worker import AdapterRun, Pool, WorkerConfig

    from .clirun import FAKES

    pids = tmp_path / "pids"
    pids.mkdir()
    for k, v in {"BNCONFORM_EXTRA_ADAPTERS": FAKES, "BNCONFORM_FAKE_PIDS": str(pids),
                 "BNCONFORM_FAKE_SLEEP": "0.15"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(Pool, "SHARE_SECONDS", 1.0)
    items = [c.id for c in cases_for_tier("default")[:24]]

    def run(jobs: int):
        got, events = {}, []
        r = AdapterRun("fake.slow", items, WorkerConfig(threads=1),
                       on_records=lambda cid, recs: got.setdefault(cid, []).append(recs),
                       on_event=lambda kind, info: events.append(kind))
        assert Pool([r], jobs).wait() is False
        return got, events

    shared, events = run(2)
    assert len(list(pids.iterdir())) == 2, "set up in two processes"
    assert sorted(shared) == sorted(items) and all(len(v) == 1 for v in shared.values())
    assert events.count("finished") == 1 and events.count("started") == 2
    alone, _ = run(1)

    def verdicts(got):
        return {cid: [(x["quantity"], x["verdict"], x.get("metrics")) for x in v[0]] for cid, v in got.items()}
    assert verdicts(shared) == verdicts(alone)
    assert len(list(pids.iterdir())) == 3, "alone: one process"
