"""The contract between the engine and a framework adapter.

An adapter translates a framework-neutral `reference.Problem` into one framework API's native calls, runs
them, and returns an `Observation`: every quantity it can produce as float64 arrays plus the dtype the
framework produced them in. It declares what it computes (a `Convention`), the precision it computes in
(`precision`), and what it cannot run (`unsupported`, a reason string: the check becomes a skip).

Adapters import their framework inside `setup()`, never at module import, so the engine can list and
select adapters on a machine where the framework is missing.

Execution paths. A user rarely calls the layer eagerly on small arrays: they compile it, export it, fold it into
a convolution, run it under mixed precision. An adapter declares the paths it can run (`paths`, each a
`PathSpec`; `eager` is the plain call and always first) and implements the others in `run_path`. A path may
compute differently from eager; it then says how (`PathSpec.convention`, `path_precision`), and the checks
judge it against that declaration. The engine sees an adapter on one path through `OnPath`, which presents the
path's convention, precision and run as the adapter's own, so nothing downstream knows about paths.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from reference import FIRST_ORDER, SECOND_ORDER, Convention, Problem


EAGER = "eager"


def compiled_code_dir(framework: str) -> Path:
    """Where `framework`'s compiled code persists across runs: $BNCONFORM_CACHE_DIR/<framework> (`bnconform
    run` sets the variable to its results directory's .cache; empty counts as unset), else
    reports/.cache/<framework> in this checkout (ignored by git)."""
    base = os.environ.get("BNCONFORM_CACHE_DIR")
    return (Path(base) if base else Path(__file__).resolve().parents[1] / "reports" / ".cache") / framework


@dataclass(frozen=True)
class PathSpec:
    """One way a user runs the layer. `tier`: the smallest case tier whose default run includes this path
    (expensive paths, e.g. compilation, live in "nightly"); `convention`: what it computes where that differs
    from the adapter's declared convention (None: the same)."""

    name: str
    what: str  # one line: what the user does to get here ("torch.compile(module, backend='inductor')")
    tier: str = "default"
    convention: Convention | None = None
    # the batch is split over devices along axis 0 (synchronized BatchNorm): the path also runs the cases with
    # `shards` (conformance/core/paths.py), each device getting Problem.shards (empty: equal parts)
    sharded: bool = False


EAGER_PATH = PathSpec(EAGER, "the layer called directly (eager)", tier="smoke")


class Unsupported(Exception):
    """The adapter cannot run this problem (a skip with this reason, not an error)."""


@dataclass(frozen=True)
class Precision:
    """Formats an implementation works in, for the tolerance model.

    io: inputs and outputs (the case dtype); compute: reductions and arithmetic (float32 where a framework
    accumulates float16/bfloat16 in float32); stats: where running statistics are stored; params: gamma,
    beta and their gradients; saved: where the batch statistics (mean, inverse std) are held between the
    reduction and the normalization (None: kept in `compute`); subnormals: "gradual" (IEEE subnormals) or
    "flush" (results below the smallest normal number become zero and subnormal inputs are read as zero:
    FTZ/DAZ, as TensorFlow's and XLA's CPU threads run). Set from the adapter's declared `subnormals` by OnPath.
    """

    io: str
    compute: str
    stats: str
    params: str
    saved: str | None = None
    subnormals: str = "gradual"

    @classmethod
    def uniform(cls, dtype: str, accumulate_low_precision_in: str = "float32") -> "Precision":
        compute = accumulate_low_precision_in if dtype in ("float16", "bfloat16") else dtype
        return cls(io=dtype, compute=compute, stats=dtype, params=dtype)

    def describe(self) -> str:
        saved = f", batch statistics held in {self.saved}" if self.saved and self.saved != self.compute else ""
        flush = ", subnormals flushed to zero (FTZ/DAZ)" if self.subnormals == "flush" else ""
        return (f"inputs/outputs {self.io}, compute {self.compute}, running statistics {self.stats}, "
                f"parameters {self.params}{saved}{flush}")


def dtype_of(quantity: str, p: Precision) -> str:
    """The dtype a quantity comes back in under precision `p`."""
    if quantity in ("running_mean", "running_var"):
        return p.stats
    if quantity in ("dgamma", "dbeta", "d2gamma"):
        return p.params
    if quantity == "num_batches_tracked":
        return "int64"
    return p.io


@dataclass
class Observation:
    """What a framework returned for one problem. Arrays are float64 copies; `dtypes` names the framework's
    own dtype for each (normalized: float64, float32, float16, bfloat16, int64, int32, ...)."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)  # quantity -> reason it cannot be observed
    raised: str | None = None  # the framework refused the problem (e.g. n = 1 in training): its message
    facts: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value, dtype: str) -> None:
        self.values[name] = np.array(value, dtype=np.float64, copy=True)
        self.dtypes[name] = dtype


class Adapter:
    """Base class. Subclasses set the class attributes and implement `setup`, `run`, `native_config`."""

    name: ClassVar[str]  # stable id: "torch.nn.BatchNorm"
    framework: ClassVar[str]  # distribution whose version is reported: "torch"
    api: ClassVar[str]  # what a user calls: "torch.nn.BatchNorm{1,2,3}d"
    convention: ClassVar[Convention]
    dtypes: ClassVar[frozenset[str]] = frozenset({"float64", "float32", "float16", "bfloat16"})
    channel_axes: ClassVar[str] = "first"  # "first" (axis 1), "last", or "any"
    # The data layout models built with this API conventionally use (its convolutions' default data format):
    # what `bnconform port` assumes for the target's channel axis unless told otherwise.
    conventional_layout: ClassVar[str] = "channels_first"
    quantities: ClassVar[frozenset[str]]  # what it can observe at all
    # Documented behaviour when training sees one element per channel: "raises" or "computes".
    single_element_training: ClassVar[str] = "computes"
    source: ClassVar[str] = ""  # where the declared convention was read (file in the framework's repo)
    # How the framework's CPU kernels treat subnormal numbers: "gradual" (IEEE) or "flush" (FTZ/DAZ set by its
    # runtime threads), declared with the source that sets it; the tolerance model's underflow terms follow it.
    subnormals: ClassVar[str] = "gradual"
    paths: ClassVar[tuple[PathSpec, ...]] = (EAGER_PATH,)  # execution paths; eager first

    def setup(self) -> None:
        """Import the framework and set deterministic flags. Called once per worker process."""

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {self.framework: version(self.framework)}
        except PackageNotFoundError:
            return {self.framework: "unknown"}

    def precision(self, problem: Problem) -> Precision:
        return Precision.uniform(problem.dtype)

    def expected_dtype(self, quantity: str, problem: Problem) -> str:
        """The dtype the framework is documented to return `quantity` in."""
        return dtype_of(quantity, self.precision(problem))

    def unsupported(self, problem: Problem) -> str | None:
        """Why this adapter cannot run `problem`, or None. The base checks dtype and channel axis."""
        if problem.dtype not in self.dtypes:
            return f"{self.api} does not support {problem.dtype}"
        last = problem.axis == len(problem.shape) - 1
        if self.channel_axes == "first" and problem.axis != 1:
            return f"{self.api} takes channels on axis 1 only"
        if self.channel_axes == "last" and not last:
            return f"{self.api} takes channels on the last axis only"
        return None

    def run(self, problem: Problem) -> Observation:
        raise NotImplementedError

    def native_config(self, problem: Problem) -> dict[str, object]:
        """The native hyperparameters this adapter passes for `problem` (momentum in the native form)."""
        raise NotImplementedError

    def snippet(self, problem: Problem) -> str:
        """Framework-native Python that reproduces `problem` and leaves `observed` (name -> ndarray).

        The code may assume `p` (the Problem) and `np` are in scope."""
        return ""

    # -- execution paths other than eager (see the module docstring)
    def run_path(self, problem: Problem, path: str) -> Observation:
        """Run `problem` on `path` (never called with eager: that is `run`)."""
        raise NotImplementedError(f"{self.name} declares no path {path!r}")

    def path_unsupported(self, problem: Problem, path: str) -> str | None:
        """Why `path` cannot run `problem` (on top of `unsupported`), or None."""
        return None

    def path_precision(self, problem: Problem, path: str) -> Precision:
        return self.precision(problem)

    def path_expected_dtype(self, quantity: str, problem: Problem, path: str) -> str:
        return dtype_of(quantity, self.path_precision(problem, path))

    def path_snippet(self, problem: Problem, path: str) -> str:
        return ""

    def path_spec(self, path: str) -> PathSpec:
        for spec in self.paths:
            if spec.name == path:
                return spec
        raise KeyError(f"{self.name} has no execution path {path!r}; its paths: "
                       f"{', '.join(s.name for s in self.paths)}")

    # -- helpers for subclasses
    @staticmethod
    def wants_gradients(problem: Problem) -> bool:
        return bool(problem.quantities & (FIRST_ORDER | SECOND_ORDER))

    @staticmethod
    def wants_second_order(problem: Problem) -> bool:
        return bool(problem.quantities & SECOND_ORDER)

    def native_momentum(self, problem: Problem) -> float | None:
        return self.convention.canonical_to_native(problem.momentum)

    # -- the benchmark tier (benchmarks/, never part of a conformance verdict)
    def bench(self, shape: tuple[int, ...], dtype: str, what: str) -> Callable[[], object]:
        """A zero-argument callable that runs ONE `what` operation and returns when its result is ready.

        shape: LOGICAL (N, C) or (N, C, *spatial); the adapter lays it out as its API takes it natively
        (adapters.bench_support.native). what: "eval" (inference forward), "train" (training forward: batch
        statistics, y, one running update) or "train_backward" (that forward, then dx, dgamma, dbeta).
        Everything (layers, compiled code, sessions, device-resident inputs) is built before this returns; the
        callable returns (y, ...) for the forward operations and (y, dx, ...) for "train_backward", and carries
        `problem` (the Problem it runs, in the native layout) and `layout`. Optional: adapters that cannot
        raise Unsupported with the reason.
        """
        raise Unsupported(f"{self.name} has no benchmark")


class OnPath:
    """An adapter seen on one execution path: the path's convention, precision, run and repro are presented as
    the adapter's own, so the engine, the tolerance model, the diagnosis and the inference need not know about
    paths. Every other attribute is the adapter's."""

    def __init__(self, adapter: Adapter, path: str = EAGER):
        self.adapter = adapter
        self.path = path
        self.spec = adapter.path_spec(path)

    def __getattr__(self, name):
        return getattr(self.adapter, name)

    @property
    def eager(self) -> bool:
        return self.path == EAGER

    @property
    def convention(self) -> Convention:
        return self.spec.convention or self.adapter.convention

    def precision(self, problem: Problem) -> Precision:
        p = self.adapter.precision(problem) if self.eager else self.adapter.path_precision(problem, self.path)
        declared = getattr(self.adapter, "subnormals", "gradual")
        return p if p.subnormals == declared else replace(p, subnormals=declared)

    def expected_dtype(self, quantity: str, problem: Problem) -> str:
        if self.eager:
            return self.adapter.expected_dtype(quantity, problem)
        return self.adapter.path_expected_dtype(quantity, problem, self.path)

    def unsupported(self, problem: Problem) -> str | None:
        why = self.adapter.unsupported(problem)
        if why or self.eager:
            return why
        return self.adapter.path_unsupported(problem, self.path)

    def run(self, problem: Problem) -> Observation:
        return self.adapter.run(problem) if self.eager else self.adapter.run_path(problem, self.path)

    def snippet(self, problem: Problem) -> str:
        return self.adapter.snippet(problem) if self.eager else self.adapter.path_snippet(problem, self.path)
