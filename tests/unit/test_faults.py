"""Faulty adapters (tests/unit/fake_catalogue.py, `Faulty`): each fault becomes clear error records (or the
verdict its values deserve), the run goes on, the exit status says so, the files stay readable, the terminal
gets no escape sequences, and no process is left behind.

All faults run in ONE `bnconform run` (two for the ones that need short timeouts), shared by the table of
expectations below: one worker start per adapter for the whole table."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conformance.core.cases import cases_for_tier
from conformance.core.engine import applicable

from .clirun import bnconform, env, run_dir

SMOKE = cases_for_tier("smoke")
CHECKS = sum(len(applicable(c)) for c in SMOKE)
TIMED = ("setup_hangs", "hang", "fork_then_hang")  # need short timeouts: their own run

# fault -> (verdicts its checks get, words in the first error's reason; None: no error expected)
EXPECTED = {
    "setup_raises": ({"error"}, "adapter setup failed: RuntimeError: cannot initialise the fake framework"),
    "setup_hangs": ({"error"}, "set-up timed out"),
    "setup_exits": ({"error"}, "worker died during setup (exit code 3)"),
    "setup_sigkill": ({"error"}, "worker died during setup (exit code -9, SIGKILL)"),
    "device_object": ({"error"}, "the adapter's device must be a string"),
    "versions_not_dict": ({"error"}, "versions() must return a dict of strings to version strings, not 5"),
    "versions_object": ({"error"}, "versions() must return a dict of strings"),
    "versions_number": ({"error"}, "versions() must return a dict of strings"),
    "unsupported_raises": ({"error"}, "LookupError: unsupported() itself failed"),
    "unsupported_not_text": ({"error"}, "could not be stored (message: must be string, not an integer 5)"),
    "raise_huge": ({"error"}, "ValueError: xxxx"),
    "raise_escapes": ({"error"}, "ValueError: "),
    "raise_surrogate": ({"error"}, "ValueError: bad bytes"),
    "raise_keyboard_interrupt": ({"error"}, "KeyboardInterrupt"),
    "raise_system_exit": ({"error"}, "SystemExit: 3"),
    "exit_zero": ({"error"}, "worker crashed (exit code 0)"),
    "segfault": ({"error"}, "worker crashed (exit code -11, SIGSEGV)"),
    "hang": ({"error"}, "timed out after 2 s"),
    "fork_then_hang": ({"error"}, "timed out after 2 s"),
    "fork_then_crash": ({"error"}, "worker crashed (exit code -9, SIGKILL)"),  # not a timeout
    "fork_and_leave": ({"pass"}, None),
    "returns_none": ({"error"}, "AttributeError"),
    "no_quantities": ({"error"}, "observable and did not say why it is missing"),
    "drops_y": ({"pass", "error"}, "returned no y"),
    "nan_everywhere": ({"fail"}, None),
    "inf_running_var": ({"fail", "pass"}, None),
    "wrong_shape_y": ({"pass", "error"}, "returned y of shape (144,); the oracle's y has shape (2, 4, 3, 2, 3)"),
    "scalar_running_mean": ({"pass", "error"}, "returned running_mean of shape ()"),
    "too_few_channels": ({"pass", "error"}, "returned dgamma of shape (1,)"),
    "not_numbers": ({"pass", "error"}, "returned y that is not an array of numbers"),
    "dtype_not_named": ({"pass", "error"}, "did not name the dtype of y"),
    "dtype_missing": ({"pass", "error"}, "did not name the dtype of y"),
    "device_number": ({"error"}, "could not be stored (device: must be string, not an integer 5)"),
    "unpicklable_fact": ({"error"}, "Can't pickle"),
    "raised_not_text": ({"error"}, "could not be stored (message: must be string"),
}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state  # a zombie has finished; only its parent's wait is missing


def _left(pids: Path) -> list[str]:
    return [f"{p.name} ({p.read_text()})" for p in pids.iterdir() if _alive(int(p.name))]


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    from conformance.outputs import results

    root = tmp_path_factory.mktemp("faults")
    pids = root / "pids"
    pids.mkdir()
    quick = ",".join(f"fake.fault.{f}" for f in EXPECTED if f not in TIMED)
    slow = ",".join(f"fake.fault.{f}" for f in TIMED)
    a = bnconform("run", "--frameworks", quick, "--tier", "smoke", "--out", root / "a", "--jobs", "2",
                  BNCONFORM_FAKE_PIDS=str(pids), timeout=600)
    b = bnconform("run", "--frameworks", slow, "--tier", "smoke", "--out", root / "b", "--jobs", "2",
                  "--case-timeout", "2", "--adapter-timeout", "6", BNCONFORM_FAKE_PIDS=str(pids), timeout=300)
    by_adapter = defaultdict(list)
    for out in (root / "a", root / "b"):
        for r in results.load([run_dir(out)]).records:
            by_adapter[r["adapter"]].append(r)
    return {"a": a, "b": b, "records": by_adapter, "root": root, "pids": pids}


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_fault_becomes_clear_records(fault, fault_runs):
    verdicts, words = EXPECTED[fault]
    recs = fault_runs["records"][f"fake.fault.{fault}"]
    assert len(recs) == CHECKS, "every planned check is recorded"
    assert {r["verdict"] for r in recs} == verdicts
    errors = [r for r in recs if r["verdict"] == "error"]
    if words is not None:
        assert errors and words in errors[0]["reason"], errors[0]["reason"] if errors else recs[0]["reason"]
    for r in recs:  # what the report shows stays bounded, and never holds a lone surrogate
        assert len(r["reason"]) <= 2_000 and len(r["message"]) <= 16_100
        r["message"].encode("utf-8")


def test_the_runs_exit_1_without_traceback_or_escapes(fault_runs):
    for run in (fault_runs["a"], fault_runs["b"]):
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stdout + run.stderr
        assert "\x1b" not in run.stdout + run.stderr  # an adapter's ANSI/OSC escapes never reach the terminal
        assert "internal error" not in run.stdout
    meta = json.loads((run_dir(fault_runs["root"] / "a") / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["counts"]["error"] > 0


def test_no_process_is_left_behind(fault_runs):
    """Workers, and the children faulty adapters forked (also after their worker crashed), are gone."""
    pids = fault_runs["pids"]
    assert len(list(pids.iterdir())) >= len(EXPECTED), "the fakes noted their pids"
    assert any("forked child" in p.read_text() for p in pids.iterdir())
    assert _left(pids) == []


def test_a_huge_message_is_capped(fault_runs):
    """A 20 MB exception message once made a 461 MB records file and a 231 MB report."""
    size = (run_dir(fault_runs["root"] / "a") / "records.jsonl").stat().st_size
    assert size < 3_000_000, size
    assert (fault_runs["root"] / "a" / "index.html").stat().st_size < 20_000_000


def _hang_run(tmp_path, fault: str) -> tuple[subprocess.Popen, Path]:
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conformance", "run", "--frameworks", f"fake.oracle,fake.fault.{fault}", "--tier",
         "smoke", "--out", str(tmp_path / "out"), "--jobs", "2"],
        env=env(BNCONFORM_FAKE_PIDS=str(pids)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until fake.oracle has finished and the hanging adapter forked
        files = list((tmp_path / "out" / "runs").glob("*/records.jsonl"))
        n = sum(1 for _ in files[0].open()) if files else 0
        if n >= CHECKS and any("forked child" in p.read_text() for p in pids.iterdir()):
            break
        time.sleep(0.3)
    return proc, pids


def _wait_gone(pids: Path, seconds: float = 15) -> list[str]:
    deadline = time.monotonic() + seconds
    while _left(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _left(pids)
    for p in pids.iterdir():  # a failing check must not leave them to the next test (or CI)
        if _alive(int(p.name)):
            os.kill(int(p.name), signal.SIGKILL)
    return left


@pytest.mark.parametrize("signals, status, word", [
    ((signal.SIGTERM,), 143, "terminated"),
    ((signal.SIGINT, signal.SIGINT), 130, "interrupted"),  # a double Ctrl-C: still one clean stop
    ((signal.SIGINT,) * 400, 130, "interrupted"),  # Ctrl-C held down until the process is gone
    ((signal.SIGTERM,) + (signal.SIGINT,) * 400, 143, "terminated"),
], ids=["sigterm", "double-ctrl-c", "ctrl-c-held", "sigterm-then-ctrl-c-held"])
def test_a_signal_finishes_the_run_cleanly(tmp_path, signals, status, word):
    """SIGTERM (CI runners, `timeout`) or Ctrl-C, even twice or held down: exit 128 + the first signal,
    meta.json 'interrupted', the finished checks and the report kept, no traceback, no process left.

    The held key sends a signal every 20 ms until the process exits, so one lands in every window: while the
    workers stop, between that and the finishing of the files, and during interpreter shutdown (a second
    Ctrl-C there once ended a CI run's process by the signal, exit -2)."""
    proc, pids = _hang_run(tmp_path, "fork_then_hang")
    try:
        for s in signals:
            if proc.poll() is not None:
                break
            proc.send_signal(s)
            time.sleep(0.3 if len(signals) <= 2 else 0.02)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert word in out and "Traceback" not in out + err
    meta = json.loads((run_dir(tmp_path / "out") / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    assert (tmp_path / "out" / "index.html").is_file()
    assert _wait_gone(pids) == []


def test_a_killed_parent_leaves_nothing(tmp_path):
    """SIGKILL to `bnconform run` (no chance to clean up): the worker notices (PR_SET_PDEATHSIG) and takes
    its process group, with the child the adapter forked, down with it."""
    proc, pids = _hang_run(tmp_path, "fork_then_hang")
    for child in _children(proc.pid):  # the workers and multiprocessing's resource tracker
        (pids / str(child)).write_text(f"child of the killed run: {Path(f'/proc/{child}/cmdline').read_text()[:80]}")
    proc.kill()
    proc.communicate(timeout=30)
    assert _wait_gone(pids) == []


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return out
