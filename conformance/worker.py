"""One long-lived worker process per adapter, driven by a thread in the parent.

Why processes: framework imports cost seconds and JIT caches matter (so one process per adapter lives for
the whole run); Keras fixes its backend per process; and a framework that segfaults or hangs must cost only
the check it was running. The parent thread sends one case at a time, waits with a timeout, and on a crash
or a hang kills the process, records an error for that case, restarts the worker and goes on.

Evaluation (oracle, comparison, verdict) happens in the worker too, so the parent only collects records.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .textsafe import REASON_LIMIT, cap, capped_record

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS", "BNCONFORM_THREADS")
MAX_RESTARTS = 3
# Every worker computes with one thread, whatever --jobs is: a framework's thread count changes how it splits
# its reductions, so its rounding, so the error/bound ratios; results must not depend on how many adapters ran
# side by side. Parallelism comes from running adapters in separate processes.
WORKER_THREADS = 1


def limit_threads(threads: int) -> None:
    """Cap framework thread pools so N parallel workers do not oversubscribe the cores."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (flags + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                                   f" intra_op_parallelism_threads={threads}").strip()


def _own_group_dying_with(parent_pid: int) -> None:
    """Put this worker in its own process group (the parent kills the group: whatever an adapter forked goes
    too), and make the parent's death end the group: Linux sends us SIGTERM when the parent dies
    (PR_SET_PDEATHSIG), and the handler kills the whole group. Without prctl (not Linux) a watchdog thread
    notices the parent gone within a second."""
    import signal

    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    signal.signal(signal.SIGTERM, lambda signum, frame: _kill_own_group())
    armed = False
    if hasattr(os, "getpgid") and os.uname().sysname == "Linux":
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        _kill_own_group()
    if not armed:
        def watch():
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            _kill_own_group()

        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _kill_own_group() -> None:
    import signal

    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:
        os._exit(1)


def _checked_versions(versions) -> dict:
    """adapter.versions() as meta.json stores it: {distribution: version string}; anything else is a set-up
    error naming what came back (meta.json would otherwise not be writable at the end of the run)."""
    if isinstance(versions, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()):
        return versions
    raise TypeError(f"versions() must return a dict of strings to version strings, not {repr(versions)[:80]}")


# Framework log noise (TensorFlow's C++ INFO/WARNING lines such as the oneDNN notice, absl/glog lines of XLA)
# never reaches the terminal: these quiet it at the source (a user's own setting wins), and `log` sends what
# is left of the worker's stdout/stderr to a file. Numerics are untouched (TF_ENABLE_ONEDNN_OPTS is not set).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "GRPC_VERBOSITY": "ERROR"}


def quiet_frameworks(log: str | None = None) -> list[dict]:
    """Silence framework logging in this (worker) process; return the list Python warnings are collected in
    (one entry per category, message and place, with a count) instead of being printed."""
    import warnings

    for var, value in QUIET_ENV.items():
        os.environ.setdefault(var, value)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    caught: list[dict] = []
    seen: dict[tuple, dict] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        key = (category.__name__, str(message), f"{filename}:{lineno}")
        if key in seen:
            seen[key]["count"] += 1
            return
        seen[key] = {"category": key[0], "message": key[1][:500], "where": key[2], "count": 1}
        caught.append(seen[key])

    warnings.showwarning = record
    warnings.simplefilter("default")  # once per place, as Python does by default (not the suite's own filters)
    return caught


def _drain(caught: list[dict]) -> list[dict]:
    out = [dict(w) for w in caught]
    caught.clear()
    return out


def _worker_main(conn, adapter_name: str, registry_path: str | None, threads: int, diagnose: bool,
                 log: str | None = None, parent_pid: int = 0) -> None:
    """Runs in the child: set up the adapter once, then evaluate cases until told to stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us cleanly
    _own_group_dying_with(parent_pid)
    limit_threads(threads)
    caught = quiet_frameworks(log)
    try:
        from .cases import case_by_id
        from .catalogue import load
        from .engine import evaluate
        from .paths import split
        from .registry import Registry

        adapter = load(adapter_name)
        adapter.setup()
        registry = Registry.load(registry_path)
        diagnose_fn = evidence_fn = None
        if diagnose:
            from .diagnose import diagnose as diagnose_fn
            from .infer import evidence as evidence_fn
        device = getattr(adapter, "device", "cpu")
        if not isinstance(device, str):
            raise TypeError(f"the adapter's device must be a string, not {repr(device)[:80]}")
        conn.send(("ready", _checked_versions(adapter.versions()), device, _drain(caught)))
    except BaseException as e:  # noqa: BLE001  setup failure is reported, not raised
        conn.send(("setup_error", cap(f"{type(e).__name__}: {e}", REASON_LIMIT), cap(traceback.format_exc(limit=6))))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        if msg[0] == "observe":  # raw arrays for cross-adapter comparisons (porting): msg[1] is a Case
            conn.send(_observe(adapter, msg[1]))
            continue
        item = msg[1]  # a case id, or case-id@path (conformance.paths)
        try:
            case_id, path = split(item)
            records = evaluate(adapter, case_by_id(case_id), registry, path=path, diagnose=diagnose_fn,
                               evidence=evidence_fn)
            conn.send(("done", item, [capped_record(r) for r in records], _drain(caught)))
        except BaseException as e:  # noqa: BLE001  engine bug (or an unpicklable value): this case's error
            conn.send(("failed", item, cap(f"{type(e).__name__}: {e}", REASON_LIMIT),
                       cap(traceback.format_exc(limit=8))))


def _observe(adapter, case) -> tuple:
    """("observed", values, dtypes, unsupported, raised, native_config) or ("failed", reason, traceback)."""
    from .inputs import materialize

    try:
        problem = materialize(case)
        why = adapter.unsupported(problem)
        if why:
            return ("unsupported", why)
        obs = adapter.run(problem)
        return ("observed", obs.values, obs.dtypes, obs.unsupported, obs.raised, adapter.native_config(problem))
    except Exception as e:  # noqa: BLE001
        return ("failed", cap(f"{type(e).__name__}: {e}", REASON_LIMIT), cap(traceback.format_exc(limit=6)))


def observe(adapter_name: str, cases: list, config: "WorkerConfig") -> dict:
    """Run `cases` (Case objects) on one adapter in a fresh worker; {case.id: reply tuple}."""
    run = AdapterRun(adapter_name, [], config, on_records=lambda cid, recs: None)
    proc, conn, err = run._start()
    if err:
        return {c.id: ("failed", err.splitlines()[0], err) for c in cases}
    out = {}
    try:
        for case in cases:
            conn.send(("observe", case))
            if not conn.poll(config.case_timeout):
                out[case.id] = ("failed", f"timed out after {config.case_timeout:.0f} s", "")
                break
            out[case.id] = conn.recv()
        conn.send(("stop",))
        proc.join(10)
    except (EOFError, OSError) as e:
        out.update({c.id: ("failed", f"worker died: {e}", "") for c in cases if c.id not in out})
    finally:
        _kill(proc)
    return out


@dataclass
class WorkerConfig:
    registry_path: str | None = None
    threads: int = 1
    case_timeout: float = 300.0  # seconds for one case (import and setup excluded)
    adapter_timeout: float = 3600.0  # seconds for all of one adapter's cases
    setup_timeout: float = 300.0
    diagnose: bool = True
    log_dir: str | None = None  # the workers' stdout/stderr go to LOG_DIR/<adapter>.log (None: inherited)


@dataclass
class AdapterRun:
    """Drives one adapter's worker over a list of cases; records arrive through `on_records`."""

    adapter_name: str
    case_ids: list[str]  # work items: case ids, or case-id@path for execution paths other than eager
    config: WorkerConfig
    on_records: Callable[[str, list[dict]], None]
    on_event: Callable[[str, dict], None] = lambda kind, info: None
    versions: dict = field(default_factory=dict)
    restarts: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    startup_seconds: float = 0.0  # process start, imports and adapter setup (every restart included)
    warnings: list[dict] = field(default_factory=list)  # Python warnings the framework raised (quiet_frameworks)

    def _warned(self, caught) -> None:
        for w in caught or []:
            same = next((x for x in self.warnings if (x["category"], x["message"], x["where"]) ==
                         (w["category"], w["message"], w["where"])), None)
            if same:
                same["count"] += w["count"]
            else:
                self.warnings.append(dict(w))

    def log_path(self) -> str | None:
        if not self.config.log_dir:
            return None
        import re

        return os.path.join(self.config.log_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", self.adapter_name) + ".log")

    def _error_records(self, item: str, reason: str, detail: str = "") -> list[dict]:
        from .cases import case_by_id
        from .catalogue import load
        from .engine import records_for
        from .paths import split

        adapter = load(self.adapter_name)
        version = self.versions.get(adapter.framework, "") or _dist_version(adapter.framework)
        case_id, path = split(item)
        return records_for(adapter, case_by_id(case_id), "error", reason, version, message=detail or reason,
                           path=path)

    def _start(self, timeout: float | None = None):
        """Start the worker and wait for its set-up, at most `timeout` seconds (default: setup_timeout)."""
        t0 = time.monotonic()
        timeout = self.config.setup_timeout if timeout is None else min(timeout, self.config.setup_timeout)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, name=f"bnconform[{self.adapter_name}]",
                           args=(child, self.adapter_name, self.config.registry_path, self.config.threads,
                                 self.config.diagnose, self.log_path(), os.getpid()), daemon=True)
        proc.start()
        child.close()
        if not self._wait(parent, timeout, proc):
            alive = proc.is_alive()
            _kill(proc)
            if self.stopped.is_set():
                return None, None, "stopped during set-up"
            if alive:
                return None, None, f"worker did not start within {timeout:.0f} s (set-up timed out)"
            return None, None, f"worker died during setup (exit code {proc.exitcode}{_signal_name(proc.exitcode)})"
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            _kill(proc)
            return None, None, f"worker died during setup (exit code {proc.exitcode}{_signal_name(proc.exitcode)})"
        if msg[0] == "setup_error":
            proc.join(5)
            _kill(proc)
            return None, None, f"adapter setup failed: {msg[1]}\n{msg[2]}"
        self.versions = msg[1]
        self._warned(msg[3] if len(msg) > 3 else None)
        self.startup_seconds += time.monotonic() - t0
        return proc, parent, None

    def _wait(self, conn, timeout: float, proc=None) -> bool:
        """Wait for the worker's answer, waking up to notice a stop request or the worker's death (a child it
        forked may hold the pipe open, so a dead worker does not always close it)."""
        end = time.monotonic() + timeout
        while not self.stopped.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            if conn.poll(min(0.2, left)):
                return True
            if proc is not None and not proc.is_alive():
                return conn.poll(0)  # whatever it sent before dying is still read; else a crash
        return False

    def run(self) -> None:
        began = time.monotonic()
        deadline = began + self.config.adapter_timeout
        pending = list(self.case_ids)
        proc = conn = None
        try:
            while pending and not self.stopped.is_set():
                if proc is None:
                    proc, conn, err = self._start(timeout=max(deadline - time.monotonic(), 0.0))
                    if self.stopped.is_set():
                        return
                    if err:
                        for cid in pending:
                            self.on_records(cid, self._error_records(cid, err.splitlines()[0], err))
                        return
                    self.on_event("started", {"versions": self.versions, "startup_seconds": self.startup_seconds})
                case_id = pending[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    for cid in pending:
                        self.on_records(cid, self._error_records(
                            cid, f"adapter timeout: {self.config.adapter_timeout:.0f} s spent before this case"))
                    return
                conn.send(("eval", case_id))
                timeout = min(self.config.case_timeout, remaining)
                reason = None
                if self._wait(conn, timeout, proc):
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        proc.join(5)
                        reason = f"worker crashed (exit code {proc.exitcode}{_signal_name(proc.exitcode)})"
                    else:
                        pending.pop(0)
                        if msg[0] == "done":
                            self._warned(msg[3] if len(msg) > 3 else None)
                            self.on_records(case_id, msg[2])
                        else:
                            self.on_records(case_id, self._error_records(case_id, msg[2], msg[3]))
                        continue
                elif self.stopped.is_set():
                    return  # interrupted: the case in flight is simply not recorded
                elif not proc.is_alive():
                    reason = f"worker crashed (exit code {proc.exitcode}{_signal_name(proc.exitcode)})"
                else:
                    reason = f"timed out after {timeout:.0f} s"
                # crash or hang: this case is an error, the rest continue in a fresh worker
                _kill(proc)
                proc = conn = None
                pending.pop(0)
                self.on_records(case_id, self._error_records(case_id, reason))
                self.restarts += 1
                self.on_event("restart", {"case": case_id, "reason": reason})
                if self.restarts > MAX_RESTARTS:
                    for cid in pending:
                        self.on_records(cid, self._error_records(
                            cid, f"adapter abandoned after {MAX_RESTARTS} worker failures (last: {reason})"))
                    return
        finally:
            if conn is not None and not self.stopped.is_set():
                try:
                    conn.send(("stop",))
                except (OSError, BrokenPipeError):
                    pass
                proc.join(10)
            _kill(proc)
            self.on_event("finished", {"wall_seconds": time.monotonic() - began,
                                       "startup_seconds": self.startup_seconds, "warnings": self.warnings})


def _kill(proc) -> None:
    """Kill the worker and its process group (whatever the adapter forked), and reap the worker."""
    import signal

    if proc is None or proc.pid is None:
        return
    try:  # the worker made itself the leader of group <pid>; children it forked are in it unless they left
        os.killpg(proc.pid, signal.SIGKILL)  # first: until the worker is reaped, its pid cannot be reused
    except OSError:  # no such group: the worker died before making it, and no child of it is left
        pass
    if proc.is_alive():
        proc.kill()
    proc.join(5)


def _signal_name(code) -> str:
    import signal

    if code is not None and code < 0:
        try:
            return f", {signal.Signals(-code).name}"
        except ValueError:
            return ""
    return ""


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


class Pool:
    """Runs several AdapterRuns, at most `jobs` at a time, each in its own thread."""

    def __init__(self, runs: Iterable[AdapterRun], jobs: int):
        self.runs = list(runs)
        self.slots = threading.Semaphore(max(1, jobs))
        self.threads: list[threading.Thread] = []
        self.failures: list[str] = []  # one line per drive thread that raised (its adapter's cases stay unrecorded)

    def _drive(self, run: AdapterRun) -> None:
        try:
            with self.slots:
                if not run.stopped.is_set():
                    run.run()
        except Exception as e:  # a bug of ours, not the adapter's: one line for the caller, never a traceback
            self.failures.append(f"{run.adapter_name}: {type(e).__name__}: {e}")

    def start(self) -> None:
        for run in self.runs:
            t = threading.Thread(target=self._drive, args=(run,), name=f"drive[{run.adapter_name}]", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        for run in self.runs:
            run.stopped.set()

    def join(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        for t in self.threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    interruption = "interrupted"  # or "terminated" (SIGTERM)
    exit_status = 130  # 128 + the signal that stopped the run: 130 for SIGINT, 143 for SIGTERM
    late_signal = False  # a signal while the run's files were being finished (they were finished anyway)

    def wait(self, on_interrupt: Callable[[], None] = lambda: None, grace: float = 30.0) -> bool:
        """Start the runs and wait for all of them; Ctrl-C or SIGTERM stops them cleanly. Returns True if
        interrupted (`interruption` and `exit_status` say by what).

        A signal only sets a flag here. A KeyboardInterrupt raised inside Thread.join can, on CPython 3.11, mark
        a still-running thread as finished (threading._wait_for_tstate_lock releases the lock it did not
        acquire), so the process would exit under a thread still cleaning up and print half a traceback."""
        import signal

        asked = threading.Event()

        def note(signum, frame):
            if not asked.is_set() and signum == signal.SIGTERM:
                self.interruption, self.exit_status = "terminated", 128 + signal.SIGTERM
            asked.set()

        with self._signals_to(note):
            self.start()
            while not self.join(0.25):
                if asked.is_set():
                    on_interrupt()
                    self.stop()
                    self.join(grace)
                    break
        return asked.is_set()

    def deferred_signals(self):
        """While writing what a run leaves (meta.json, analysis, report): Ctrl-C and SIGTERM are noted, not
        raised, so a second signal cannot leave meta.json at 'running' or print a traceback."""
        import signal

        def note(signum, frame):
            if not self.late_signal and signum == signal.SIGTERM:
                self.interruption, self.exit_status = "terminated", 128 + signal.SIGTERM
            self.late_signal = True

        return self._signals_to(note)

    @staticmethod
    def _signals_to(handler):
        import contextlib
        import signal

        @contextlib.contextmanager
        def installed():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in previous.items():
                    signal.signal(s, h)

        return installed()
