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

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS", "BNCONFORM_THREADS")
MAX_RESTARTS = 3


def limit_threads(threads: int) -> None:
    """Cap framework thread pools so N parallel workers do not oversubscribe the cores."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (flags + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                                   f" intra_op_parallelism_threads={threads}").strip()


def _worker_main(conn, adapter_name: str, registry_path: str | None, threads: int, diagnose: bool) -> None:
    """Runs in the child: set up the adapter once, then evaluate cases until told to stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us cleanly
    limit_threads(threads)
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
        conn.send(("ready", adapter.versions(), getattr(adapter, "device", "cpu")))
    except BaseException as e:  # noqa: BLE001  setup failure is reported, not raised
        conn.send(("setup_error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=6)))
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
            conn.send(("done", item, records))
        except BaseException as e:  # noqa: BLE001  engine bug: report it as this case's error
            conn.send(("failed", item, f"{type(e).__name__}: {e}", traceback.format_exc(limit=8)))


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
        return ("failed", f"{type(e).__name__}: {e}", traceback.format_exc(limit=6))


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

    def _start(self):
        t0 = time.monotonic()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, name=f"bnconform[{self.adapter_name}]",
                           args=(child, self.adapter_name, self.config.registry_path, self.config.threads,
                                 self.config.diagnose), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(self.config.setup_timeout):
            _kill(proc)
            return None, None, f"worker did not start within {self.config.setup_timeout:.0f} s"
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            proc.join(5)
            return None, None, f"worker died during setup (exit code {proc.exitcode})"
        if msg[0] == "setup_error":
            proc.join(5)
            return None, None, f"adapter setup failed: {msg[1]}\n{msg[2]}"
        self.versions = msg[1]
        self.startup_seconds += time.monotonic() - t0
        return proc, parent, None

    def _wait(self, conn, timeout: float) -> bool:
        """Wait for the worker's answer, waking up to notice a stop request."""
        end = time.monotonic() + timeout
        while not self.stopped.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            if conn.poll(min(0.2, left)):
                return True
        return False

    def run(self) -> None:
        began = time.monotonic()
        deadline = began + self.config.adapter_timeout
        pending = list(self.case_ids)
        proc = conn = None
        try:
            while pending and not self.stopped.is_set():
                if proc is None:
                    proc, conn, err = self._start()
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
                if self._wait(conn, timeout):
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        proc.join(5)
                        reason = f"worker crashed (exit code {proc.exitcode}{_signal_name(proc.exitcode)})"
                    else:
                        pending.pop(0)
                        if msg[0] == "done":
                            self.on_records(case_id, msg[2])
                        else:
                            self.on_records(case_id, self._error_records(case_id, msg[2], msg[3]))
                        continue
                elif self.stopped.is_set():
                    return  # interrupted: the case in flight is simply not recorded
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
                                       "startup_seconds": self.startup_seconds})


def _kill(proc) -> None:
    if proc is not None and proc.is_alive():
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

    def wait(self, on_interrupt: Callable[[], None] = lambda: None, grace: float = 30.0) -> bool:
        """Start the runs and wait for all of them; Ctrl-C stops them cleanly. Returns True if interrupted.

        Ctrl-C only sets a flag here. A KeyboardInterrupt raised inside Thread.join can, on CPython 3.11, mark
        a still-running thread as finished (threading._wait_for_tstate_lock releases the lock it did not
        acquire), so the process would exit under a thread still cleaning up and print half a traceback."""
        import signal

        asked = threading.Event()
        handler = None
        if threading.current_thread() is threading.main_thread():
            handler = signal.signal(signal.SIGINT, lambda signum, frame: asked.set())
        try:
            self.start()
            while not self.join(0.25):
                if asked.is_set():
                    on_interrupt()
                    self.stop()
                    self.join(grace)
                    break
        finally:
            if handler is not None:
                signal.signal(signal.SIGINT, handler)
        return asked.is_set()
