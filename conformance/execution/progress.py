"""Progress of a run, one line per adapter: a rich progress bar on a terminal, plain lines otherwise (CI
logs, pipes). Called from the threads that drive the workers; rich's Progress is thread-safe, and the plain
printer takes a lock."""
from __future__ import annotations

import threading
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core.textsafe import markup, terminal

BAD = ("fail", "error", "xpass")


def _tally(counts: Counter) -> str:
    parts = [f"{counts['pass']} pass"]
    parts += [f"{counts[v]} {v}" for v in ("fail", "error", "xfail", "xpass", "characterized", "skip") if counts[v]]
    return ", ".join(parts)


class _Base:
    def __init__(self, console: Console):
        self.console = console
        self.counts: dict[str, Counter] = {}
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.t0: dict[str, float] = {}

    def add(self, adapter: str, cases: int) -> None:
        self.counts[adapter] = Counter()
        self.done[adapter] = 0
        self.total[adapter] = cases

    def case_done(self, adapter: str, records: list[dict]) -> None:
        self.done[adapter] += 1
        self.counts[adapter].update(r["verdict"] for r in records)


class RichProgress(_Base):
    def __init__(self, console: Console):
        super().__init__(console)
        self.bar = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("cases  {task.fields[tally]}"), TimeElapsedColumn(), console=console,
                            refresh_per_second=4)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def add(self, adapter, cases):
        super().add(adapter, cases)
        self.tasks[adapter] = self.bar.add_task(markup(adapter), total=cases, tally="waiting", start=False)

    def skipped(self, adapter, why):
        self.console.print(f"[yellow]skip[/] {markup(adapter)}: {markup(why)}", highlight=False)

    def event(self, adapter, kind, info):
        if kind == "started":
            self.bar.start_task(self.tasks[adapter])
            self.bar.update(self.tasks[adapter], tally="started")
        elif kind == "restart":
            self.console.print(f"[red]{markup(adapter)}[/]: {markup(info['reason'])} on {markup(info['case'])}; worker restarted",
                               highlight=False)

    def case_done(self, adapter, records):
        super().case_done(adapter, records)
        c = self.counts[adapter]
        tally = _tally(c)
        if any(c[v] for v in BAD):
            tally = f"[red]{tally}[/]"
        self.bar.update(self.tasks[adapter], advance=1, tally=tally)


def _reader_left(console: Console) -> None:
    import os
    import sys

    console.quiet = True
    try:  # later prints (and the interpreter's final flush) go nowhere instead of raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError:
        pass


class PlainProgress(_Base):
    """Lines for logs: an adapter's start, each quarter of its cases, restarts, and its end."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _say(self, text: str) -> None:
        with self.lock:
            if self.console.quiet:
                return
            try:
                self.console.print(terminal(text), highlight=False, markup=False, soft_wrap=True)
            except BrokenPipeError:  # `bnconform run | head`: the reader left; the run (and its files) go on
                _reader_left(self.console)

    def skipped(self, adapter, why):
        self._say(f"skip {adapter}: {why}")

    def event(self, adapter, kind, info):
        if kind == "started":
            self.t0[adapter] = time.monotonic()
            versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
            self._say(f"start {adapter} ({versions}): {self.total[adapter]} cases")
        elif kind == "restart":
            self._say(f"{adapter}: {info['reason']} on {info['case']}; worker restarted")

    def case_done(self, adapter, records):
        super().case_done(adapter, records)
        done, total = self.done[adapter], self.total[adapter]
        quarters = {max(1, round(total * q / 4)) for q in (1, 2, 3)}
        if done in quarters or done == total:
            took = time.monotonic() - self.t0.get(adapter, time.monotonic())
            self._say(f"{'done' if done == total else '    '} {adapter}: {done}/{total} cases, "
                      f"{_tally(self.counts[adapter])} ({took:.1f} s)")


def console() -> Console:
    """The terminal's width on a terminal; in logs and pipes $COLUMNS, else 160 (no wrapping at 80 columns)."""
    import os

    c = Console()
    if c.is_terminal:
        return c
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        width = 0
    return Console(width=width if width >= 40 else 160)


def elapsed(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def make(console: Console):
    return RichProgress(console) if console.is_terminal else PlainProgress(console)
