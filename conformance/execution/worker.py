"""Worker processes for the adapters, driven by threads in the parent.

Why processes: framework imports cost seconds and JIT caches matter (so a worker lives for the whole run);
Keras fixes its backend per process; and a framework that segfaults or hangs must cost only the check it was
running. Adapters of one framework family share a worker (the catalogue's `process` key: the TensorFlow
adapters, torch's two, the JAX libraries, ONNX Runtime's opsets), so the family's imports are paid once; an
adapter with no key (the Keras backends) gets a process of its own. The parent sends one case at a time, waits
with a timeout, and on a crash or a hang kills the process, records an error for that case, starts a fresh
process, sets the adapter up again and goes on; the other adapters of that process had finished or had not
started, so they lose nothing.

Evaluation (oracle, comparison, verdict) happens in the worker too, so the parent only collects records.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.textsafe import REASON_LIMIT, cap, capped_record

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS", "NUMBA_NUM_THREADS", "BNCONFORM_THREADS")
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
    if "xla_cpu_multi_thread_eigen" not in flags:
        # only `--` flags: XLA stops parsing XLA_FLAGS at the first token that is not one, silently dropping the
        # rest (the adapters' fast-math and device-count flags); intra_op_parallelism_threads is not an XLA flag
        os.environ["XLA_FLAGS"] = (flags + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                                   ).strip()


def numpy_without_hugepage_advice() -> None:
    """Tell NumPy, in this process's environment, not to ask Linux for transparent huge pages.

    NumPy advises huge pages (madvise MADV_HUGEPAGE) for every array of 4 MB and more, when
    /sys/kernel/mm/transparent_hugepage/enabled is "madvise". Where the `defrag` setting next to it is
    "madvise" too (the kernel's default), the first touch of such an array compacts memory synchronously
    to assemble 2 MB pages. bnconform's processes are short-lived and write most large arrays once (the
    oracle's per-step results, the inputs of a realistic case), so they pay the compaction and gain little
    from the larger pages. Measured on a 2-core CI host: the oracle and bounds of the 2000-step corpus case
    took 4.5 CPU s with the advice and 1.6 s without, and a cold default run 515 CPU s with it, 468 s without
    (README, Speed); the bits computed are the same. NumPy reads NUMPY_MADVISE_HUGEPAGE once, at import
    (numpy.org/doc/stable/reference/global_state.html), so this is called before the processes bnconform
    starts (workers, the fuzzer's) and by the command line before it imports NumPy. A value the user set
    is kept (NUMPY_MADVISE_HUGEPAGE=1 restores NumPy's default)."""
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


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
        redirect_output(log)
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


def redirect_output(log: str) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2: C-level output too) to `log`. A
    process shared by a family switches to each adapter's file as it sets that adapter up."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def log_path(log_dir: str | None, adapter_name: str) -> str | None:
    """LOG_DIR/<adapter>.log (None without a log directory)."""
    if not log_dir:
        return None
    import re

    return os.path.join(log_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", adapter_name) + ".log")


def _drain(caught: list[dict]) -> list[dict]:
    out = [dict(w) for w in caught]
    caught.clear()
    return out


CACHE_VARIABLE = "BNCONFORM_CACHE_DIR"


def cache_problem(default: str | None) -> str | None:
    """Why the compiled-artifact caches cannot live where a run would put them, as one line, or None.

    The place is $BNCONFORM_CACHE_DIR when set (not empty), else `default` (a run's: the results directory's
    .cache; None: only the variable is checked, the adapters falling back to reports/.cache). Checked without
    creating anything, before a worker starts: the JAX adapters create their directory in setup, and a path
    through a file made every check of theirs an error record rather than one message."""
    chosen = os.environ.get(CACHE_VARIABLE) or None
    where = chosen or default
    if where is None:
        return None
    origin = f" ({CACHE_VARIABLE})" if chosen else ""
    path = Path(where).absolute()
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as e:  # a parent that cannot be looked into (Path.exists lets EACCES through)
        return f"cannot keep compiled code in {where}{origin}: {e.strerror or e}"
    if not existing.is_dir():
        why = "it is not a directory" if existing == path else f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    else:
        return None
    return f"cannot keep compiled code in {where}{origin}: {why}"


def persistent_caches(cache_dir: str | None) -> None:
    """Point the frameworks' compiled-artifact caches under `cache_dir` (the results directory's .cache), so
    a rerun reuses what the last run compiled: JAX (adapters read BNCONFORM_CACHE_DIR), TorchInductor and
    TensorFlow's XLA (for code compiled with jit_compile; the flag is in TF >= 2.12's jit/flags.cc). A
    directory the user already chose (the variable or flag set) is kept."""
    if not cache_dir:
        return
    if not os.environ.get(CACHE_VARIABLE):  # set but empty counts as unset, as the adapters read it
        os.environ[CACHE_VARIABLE] = cache_dir
    base = Path(os.environ[CACHE_VARIABLE])
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(base / "inductor"))
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" not in flags:
        os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={base / 'xla'}".strip()


class _Hosted:
    """The worker's side: the adapters set up in this process so far, and what evaluates their cases."""

    def __init__(self, registry_path: str | None, diagnose: bool):
        from ..core.cases import case_by_id
        from ..core.engine import evaluate
        from ..core.registry import Registry

        self.case_by_id, self.evaluate = case_by_id, evaluate
        self.registry = Registry.load(registry_path)
        self.diagnose = self.evidence = None
        if diagnose:
            from ..explain.diagnose import diagnose as diagnose_fn
            from ..explain.infer import evidence as evidence_fn

            self.diagnose, self.evidence = diagnose_fn, evidence_fn
        self.adapters: dict = {}

    def setup(self, name: str):
        from ..core.catalogue import load

        adapter = load(name)
        adapter.setup()
        self.adapters[name] = adapter
        # The framework's modules and the adapter's set-up state (JAX's and TensorFlow's: 300,000 to
        # 800,000 objects tracked by the garbage collector) live as long as the process; every full
        # collection during the cases would walk them again. Frozen, they are left out of every later
        # collection (what the cases create is collected as before). Measured on cold default runs: 5.3-6.6 s
        # of collections in the workers, 3.6-4.0 s with this (the JAX family's process: 2.0-2.1 s, 0.8-0.9 s;
        # README, Speed).
        gc.freeze()
        return adapter

    def evaluate_item(self, name: str, item: str) -> list[dict]:
        from ..core.paths import split

        case_id, path = split(item)
        return self.evaluate(self.adapters[name], self.case_by_id(case_id), self.registry, path=path,
                             diagnose=self.diagnose, evidence=self.evidence)


def _worker_main(conn, registry_path: str | None, threads: int, diagnose: bool, cache_dir: str | None,
                 log_dir: str | None = None, parent_pid: int = 0, streams_dir: str | None = None) -> None:
    """Runs in the child: set adapters up when asked (each once), evaluate their cases, until told to stop.

    Messages in: ("setup", adapter), ("eval", adapter, item), ("observe", adapter, Case), ("stop",); an item
    is a case id, or case-id@path (conformance.core.paths).
    Replies: ("ready", versions, device, warnings) | ("setup_error", message, traceback); ("done", item,
    records, warnings) | ("failed", item, message, traceback); observe's tuples (see `_observe`). Framework
    output goes to LOG_DIR/<adapter>.log of the adapter being set up or run; warnings come back with replies.
    The cases' large input streams are read from STREAMS_DIR where the parent wrote them
    (conformance.core.inputs.shared_streams)."""
    import signal

    from ..core.inputs import shared_streams

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us cleanly
    _own_group_dying_with(parent_pid)
    limit_threads(threads)
    persistent_caches(cache_dir)
    caught = quiet_frameworks()
    hosted = None

    def answer(msg) -> tuple:
        nonlocal hosted
        if msg[0] == "setup":
            if log_dir:
                redirect_output(log_path(log_dir, msg[1]))
            try:
                hosted = hosted or _Hosted(registry_path, diagnose)
                adapter = hosted.setup(msg[1])
                device = getattr(adapter, "device", "cpu")
                if not isinstance(device, str):
                    raise TypeError(f"the adapter's device must be a string, not {repr(device)[:80]}")
                return ("ready", _checked_versions(adapter.versions()), device, _drain(caught))
            except BaseException as e:  # noqa: BLE001  setup failure is reported, not raised
                return ("setup_error", cap(f"{type(e).__name__}: {e}", REASON_LIMIT), cap(traceback.format_exc(limit=6)))
        if msg[0] == "observe":  # raw arrays for cross-adapter comparisons (porting): msg[2] is a Case
            return _observe(hosted.adapters[msg[1]], msg[2])
        _, name, item = msg  # item: a case id, or case-id@path (conformance.core.paths)
        try:
            return ("done", item, [capped_record(r) for r in hosted.evaluate_item(name, item)], _drain(caught))
        except BaseException as e:  # noqa: BLE001  engine bug (or an unpicklable value): this case's error
            return ("failed", item, cap(f"{type(e).__name__}: {e}", REASON_LIMIT), cap(traceback.format_exc(limit=8)))

    def unsendable(msg, e) -> tuple | None:
        if msg[0] == "setup":
            return ("setup_error", cap(f"{type(e).__name__}: {e}", REASON_LIMIT), cap(traceback.format_exc(limit=6)))
        if msg[0] == "observe":
            return None
        return ("failed", msg[2], cap(f"{type(e).__name__}: {e}", REASON_LIMIT), cap(traceback.format_exc(limit=8)))

    with shared_streams(streams_dir):
        serve(conn, answer, unsendable)


def serve(conn, answer: Callable[[tuple], tuple], unsendable: Callable[[tuple, BaseException], tuple | None]) -> None:
    """A worker process's receive loop (the run's workers and `bnconform fuzz`'s): each message gets the reply
    `answer` makes of it, until ("stop",) arrives or the parent's end of the pipe closes. `answer` reports its
    own failures in its reply; a reply that cannot be sent (an unpicklable value) is replaced by what
    `unsendable(message, exception)` makes of it (called in the except clause: it may format the traceback), or
    raises when that is None. What escapes ends the worker: the parent then sees a crash."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        reply = answer(msg)
        try:
            conn.send(reply)
        except BaseException as e:  # noqa: BLE001  pickling happens before a byte is written: the pipe is intact
            fallback = unsendable(msg, e)
            if fallback is None:
                raise
            conn.send(fallback)


def _observe(adapter, case) -> tuple:
    """("observed", values, dtypes, unsupported, raised, native_config) or ("failed", reason, traceback)."""
    from ..core.inputs import materialize

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
    worker = WorkerProcess(adapter_name, config)
    err = worker.setup(adapter_name)
    if isinstance(err, str):
        return {c.id: ("failed", err.splitlines()[0], err) for c in cases}
    out = {}
    try:
        for case in cases:
            worker.conn.send(("observe", adapter_name, case))
            if not worker.conn.poll(config.case_timeout):
                out[case.id] = ("failed", f"timed out after {config.case_timeout:.0f} s", "")
                break
            out[case.id] = worker.conn.recv()
        worker.stop()
    except (EOFError, OSError) as e:
        out.update({c.id: ("failed", f"worker died: {e}", "") for c in cases if c.id not in out})
    finally:
        worker.kill()
    return out


@dataclass
class WorkerConfig:
    registry_path: str | None = None
    threads: int = 1
    case_timeout: float = 300.0  # seconds for one case (import and setup excluded)
    adapter_timeout: float = 3600.0  # seconds for all of one adapter's cases
    setup_timeout: float = 300.0
    diagnose: bool = True
    cache_dir: str | None = None  # compiled-artifact caches (None: the adapters' default, reports/.cache)
    log_dir: str | None = None  # the workers' stdout/stderr go to LOG_DIR/<adapter>.log (None: inherited)
    streams_dir: str | None = None  # the run's large input streams, written by the parent (None: generated)


def process_key(adapter_name: str) -> str:
    """The worker process an adapter can share (the catalogue's `process`), or its own name."""
    from ..core.catalogue import spec

    try:
        return spec(adapter_name).process or adapter_name
    except KeyError:
        return adapter_name


class WorkerProcess:
    """One spawned worker process of a process key, started on the first `setup`; hosts adapters one after
    another (each set up once)."""

    def __init__(self, key: str, config: WorkerConfig):
        self.key, self.config = key, config
        self.proc = self.conn = None
        self.ready: set[str] = set()

    @property
    def alive(self) -> bool:
        return self.proc is not None

    def _spawn(self) -> None:
        numpy_without_hugepage_advice()
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        c = self.config
        self.proc = ctx.Process(target=_worker_main, name=f"bnconform[{self.key}]", daemon=True,
                                args=(child, c.registry_path, c.threads, c.diagnose, c.cache_dir, c.log_dir,
                                      os.getpid(), c.streams_dir))
        self.proc.start()
        child.close()

    def setup(self, adapter_name: str, timeout: float | None = None,
              stopped: threading.Event | None = None) -> tuple[dict, list[dict]] | str:
        """Set `adapter_name` up in this process (starting it if needed): (versions, warnings raised), or why
        not (the process is then killed: a half-imported framework is no state to go on from). Waits at most
        `timeout` (default: setup_timeout), wakes up for `stopped`, and notices a worker that died."""
        timeout = self.config.setup_timeout if timeout is None else min(timeout, self.config.setup_timeout)
        if not self.alive:
            self._spawn()
        self.conn.send(("setup", adapter_name))
        if not _await(self.conn, timeout, self.proc, stopped):
            alive = self.proc.is_alive()
            code = self.proc.exitcode
            self.kill()
            if stopped is not None and stopped.is_set():
                return "stopped during set-up"
            if alive:
                return f"worker did not start within {timeout:.0f} s (set-up timed out)"
            return f"worker died during setup (exit code {code}{_signal_name(code)})"
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            self.kill()
            return f"worker died during setup (exit code {code}{_signal_name(code)})"
        if msg[0] == "setup_error":
            self.kill()
            return f"adapter setup failed: {msg[1]}\n{msg[2]}"
        self.ready.add(adapter_name)
        return msg[1], msg[3]

    def stop(self) -> None:
        """Ask the process to exit, then make sure it has."""
        if self.alive:
            try:
                self.conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
            self.proc.join(10)
        self.kill()

    def kill(self) -> None:
        _kill(self.proc)
        self.proc = self.conn = None
        self.ready = set()


@dataclass
class AdapterRun:
    """Drives one adapter over a list of cases in a worker process (its own, or one it shares with the other
    adapters of its process key, handed over by the Pool); records arrive through `on_records`."""

    adapter_name: str
    case_ids: list[str]  # work items: case ids, or case-id@path for execution paths other than eager
    config: WorkerConfig
    on_records: Callable[[str, list[dict]], None]
    on_event: Callable[[str, dict], None] = lambda kind, info: None
    versions: dict = field(default_factory=dict)
    restarts: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    startup_seconds: float = 0.0  # process start, imports and adapter setup (every restart included)
    key: str = ""  # the worker process it can share (process_key)
    finished: threading.Event = field(default_factory=threading.Event)

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
        return log_path(self.config.log_dir, self.adapter_name)

    def _error_records(self, item: str, reason: str, detail: str = "") -> list[dict]:
        from ..core.cases import case_by_id
        from ..core.catalogue import load
        from ..core.engine import records_for
        from ..core.paths import split

        adapter = load(self.adapter_name)
        version = self.versions.get(adapter.framework, "") or _dist_version(adapter.framework)
        case_id, path = split(item)
        return records_for(adapter, case_by_id(case_id), "error", reason, version, message=detail or reason,
                           path=path)

    def _setup(self, worker: WorkerProcess, timeout: float | None = None) -> str | None:
        """Set the adapter up in `worker` (a fresh process when it has none), within `timeout` seconds (the
        adapter's time left: --adapter-timeout bounds set-up too): None, or why it failed."""
        t0 = time.monotonic()
        got = worker.setup(self.adapter_name, timeout, self.stopped)
        if isinstance(got, str):
            return got
        with self._lock:
            self.versions = got[0]
            self._warned(got[1])
            self.startup_seconds += time.monotonic() - t0
        return None

    def _wait(self, conn, timeout: float, proc=None) -> bool:
        return _await(conn, timeout, proc, self.stopped)

    def __post_init__(self):
        self.key = self.key or process_key(self.adapter_name)
        self._queue = list(self.case_ids)  # not yet sent to a worker; shared by every thread serving the run
        self._lock = threading.Lock()
        self._active = 0  # threads serving this run now (the Pool may add a second: `share`)
        self._began: float | None = None
        self._item_seconds = 0.0  # time the items sent so far took, for the rate `remaining_seconds` uses
        self._items_done = 0
        self._worker_seconds = 0.0  # every serving thread's time, added (wall_seconds where none helped)

    def _next(self) -> str | None:
        with self._lock:
            return self._queue.pop(0) if self._queue else None

    def _drain(self) -> list[str]:
        with self._lock:
            rest, self._queue = self._queue, []
            return rest

    def remaining_seconds(self) -> float | None:
        """Roughly how long the items not yet sent would take one process, at the rate of the items done so
        far; None before two are done (no rate yet)."""
        with self._lock:
            if self._items_done < 2 or not self._queue:
                return None
            return len(self._queue) * self._item_seconds / self._items_done

    def run(self, worker: WorkerProcess | None = None) -> None:
        """Every case, in `worker` (left running for the next adapter of its key) or in a process of its own
        (stopped at the end). Several threads may serve one run at once, each with its own worker process
        (Pool: a slot with nothing left to start helps a long run finish): each takes the next case from the
        shared queue, and the last one out reports the run finished."""
        own = worker is None
        worker = worker or WorkerProcess(self.key, self.config)
        entered = time.monotonic()
        with self._lock:
            self._active += 1
            if self._began is None:
                self._began = entered
        began = self._began
        deadline = began + self.config.adapter_timeout
        try:
            while not self.stopped.is_set() and (case_id := self._next()) is not None:
                if self.adapter_name not in worker.ready:
                    err = self._setup(worker, timeout=max(deadline - time.monotonic(), 0.0))
                    if self.stopped.is_set():
                        return
                    if err:
                        for cid in [case_id, *self._drain()]:
                            self.on_records(cid, self._error_records(cid, err.splitlines()[0], err))
                        return
                    self.on_event("started", {"versions": self.versions, "startup_seconds": self.startup_seconds})
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    for cid in [case_id, *self._drain()]:
                        self.on_records(cid, self._error_records(
                            cid, f"adapter timeout: {self.config.adapter_timeout:.0f} s spent before this case"))
                    return
                conn = worker.conn
                sent = time.monotonic()
                conn.send(("eval", self.adapter_name, case_id))
                timeout = min(self.config.case_timeout, remaining)
                reason = None
                proc = worker.proc
                if self._wait(conn, timeout, proc):
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        worker.proc.join(5)
                        code = worker.proc.exitcode
                        reason = f"worker crashed (exit code {code}{_signal_name(code)})"
                    else:
                        with self._lock:
                            self._item_seconds += time.monotonic() - sent
                            self._items_done += 1
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
                worker.kill()
                self.on_records(case_id, self._error_records(case_id, reason))
                self.restarts += 1
                self.on_event("restart", {"case": case_id, "reason": reason})
                if self.restarts > MAX_RESTARTS:
                    for cid in self._drain():
                        self.on_records(cid, self._error_records(
                            cid, f"adapter abandoned after {MAX_RESTARTS} worker failures (last: {reason})"))
                    return
        finally:
            if self.stopped.is_set():
                worker.kill()
            elif own:
                worker.stop()
            with self._lock:
                self._active -= 1
                self._worker_seconds += time.monotonic() - entered
                last = self._active == 0 and (not self._queue or self.stopped.is_set())
            if last:
                self.finished.set()
                self.on_event("finished", {"wall_seconds": time.monotonic() - began,
                                           "worker_seconds": self._worker_seconds,
                                           "startup_seconds": self.startup_seconds, "warnings": self.warnings})


def _await(conn, timeout: float, proc=None, stopped: threading.Event | None = None) -> bool:
    """Wait for the worker's answer, waking up to notice a stop request or the worker's death (a child it
    forked may hold the pipe open, so a dead worker does not always close it)."""
    end = time.monotonic() + timeout
    while stopped is None or not stopped.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return False
        if conn.poll(min(0.2, left)):
            return True
        if proc is not None and not proc.is_alive():
            return conn.poll(0)  # whatever it sent before dying is still read; else a crash
    return False


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
    """Runs several AdapterRuns on at most `jobs` worker processes at a time, one thread per process slot.

    A slot keeps its process for the next run of the same process key (the family's imports are paid once);
    when none is left it takes a run of a key no other slot is running (so the families spread over the
    slots), else shares a running family that has two runs or more left, in a fresh process. Families with
    more adapters go first: they are the longest.

    With no run left to start, a slot helps the run of another slot that has the most left to do, if that is
    at least SHARE_SECONDS at its rate so far (its own process when it is of that family, else a fresh one):
    both then take the run's next cases from one queue (AdapterRun.run). Without it the last long adapter
    of a run (a JAX library compiling every case: 30-45 s cold) ran alone while the other core idled, and a
    run of one adapter used one core. A slot with nothing to take or help waits while another slot still
    runs something it may yet help with; then it is done."""

    SHARE_SECONDS = 8.0  # a fresh process costs 1-6 s (imports, set-up, first compiles): help where it pays
    POLL_SECONDS = 0.5

    def __init__(self, runs: Iterable, jobs: int):
        self.runs = list(runs)
        self.jobs = max(1, jobs)
        self.threads: list[threading.Thread] = []
        self.failures: list[str] = []  # one line per drive thread that raised (its adapter's cases stay unrecorded)
        size: dict[str, int] = {}
        for run in self.runs:
            size[_key(run)] = size.get(_key(run), 0) + 1
        self._pending = sorted(self.runs, key=lambda r: -size[_key(r)])  # stable: catalogue order within a key
        self._running: dict[int, str] = {}  # slot -> key of its live process
        self._serving: dict[int, object] = {}  # slot -> the run it serves now
        self._lock = threading.Lock()

    def _take(self, slot: int, current: str | None):
        """The next run for `slot` (a pending one, or one to help), waiting while another slot runs something
        that may yet need help; None when the slot is done."""
        while True:
            with self._lock:
                self._serving.pop(slot, None)
                if any(r.stopped.is_set() for r in self.runs):
                    return None
                run = self._pending_for(slot, current)
                if run is not None:
                    self._pending.remove(run)
                else:
                    run = self._to_help(slot)
                if run is not None:
                    self._running[slot], self._serving[slot] = _key(run), run
                    return run
                if not self._may_help_later(slot):
                    self._running.pop(slot, None)
                    return None
            time.sleep(self.POLL_SECONDS)

    def _may_help_later(self, slot: int) -> bool:
        """Whether a run this slot may yet help is running in another slot or still to start there."""
        return any(map(_helpable, [*self._pending, *(r for s, r in self._serving.items() if s != slot)]))

    def _pending_for(self, slot: int, current: str | None):
        others = [k for s, k in self._running.items() if s != slot]
        pending = [_key(r) for r in self._pending]
        return (next((r for r in self._pending if _key(r) == current), None)
                or next((r for r in self._pending if _key(r) not in others), None)
                # a second process of a running family pays its imports again: only for two runs or more
                or next((r for r in self._pending if pending.count(_key(r)) >= 2), None))

    def _to_help(self, slot: int):
        """Another slot's run with the most time left, if that is worth a second process (SHARE_SECONDS)."""
        left = [(r.remaining_seconds() or 0.0, r) for s, r in self._serving.items()
                if s != slot and _helpable(r)]
        best = max(left, key=lambda pair: pair[0], default=(0.0, None))
        return best[1] if best[0] >= self.SHARE_SECONDS else None

    def _drive(self, slot: int) -> None:
        worker = None
        try:
            while (run := self._take(slot, worker.key if worker else None)) is not None:
                if not hasattr(run, "key"):  # a bare run (tests): no process to share
                    self._call(run)
                    continue
                if worker is None or worker.key != run.key or worker.config != run.config:
                    if worker is not None:
                        worker.stop()
                    worker = WorkerProcess(run.key, run.config)
                self._call(run, worker)
        finally:
            if worker is not None:
                worker.stop() if not any(r.stopped.is_set() for r in self.runs) else worker.kill()
            with self._lock:
                self._running.pop(slot, None)

    def _call(self, run, *worker) -> None:
        try:
            run.run(*worker)
        except Exception as e:  # a bug of ours, not the adapter's: one line for the caller, never a traceback
            self.failures.append(f"{run.adapter_name}: {type(e).__name__}: {e}")

    def delivering(self, adapter_name: str) -> bool:
        """Whether records of `adapter_name` may still arrive (its run is pending or running)."""
        mine = [r for r in self.runs if r.adapter_name == adapter_name]
        finished = all(getattr(r, "finished", threading.Event()).is_set() for r in mine)
        return bool(mine) and not finished and any(t.is_alive() for t in self.threads)

    def start(self) -> None:
        for slot in range(self.jobs if self.runs else 0):  # a slot left without a run may help one
            t = threading.Thread(target=self._drive, args=(slot,), name=f"drive[{slot}]", daemon=True)
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


def _helpable(run) -> bool:
    """Whether a second process can serve `run`: an AdapterRun (a process key, a shared queue); tests' bare
    stand-ins are not."""
    return bool(getattr(run, "key", "")) and hasattr(run, "remaining_seconds")


def _key(run) -> str:
    """The process key a run can share; a bare run (no key: tests' stand-ins) shares with nothing."""
    return getattr(run, "key", "") or f"{run.adapter_name}#{id(run)}"
