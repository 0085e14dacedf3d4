"""The vocabulary the oracle speaks: a Convention (what an implementation computes), a Problem (what to run).

Momentum is always *canonical* inside the oracle: alpha is the weight on the new batch statistic,
R <- (1 - alpha) * R + alpha * B. How a framework's own `momentum` argument maps onto alpha is described by
`Convention.momentum_form` and applied by its adapter, never by the oracle.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

import numpy as np

MomentumForm = Literal["weight_on_new", "weight_on_old"]
RunningVar = Literal["unbiased", "biased"]
Averaging = Literal["ema", "cumulative", "debiased_ema"]
VarianceAlgorithm = Literal["two_pass", "fast_clamped", "fast"]
Normalizer = Literal["batch", "running"]
EpsPlacement = Literal["inside_sqrt", "outside_sqrt"]
Mode = Literal["train", "eval"]

QUANTITIES = (
    "y",  # output of every step, stacked: shape (steps, *x.shape)
    "batch_mean",  # batch statistics of every training step, (train_steps, C); only where an API exposes them
    "batch_var",  # biased unless the convention says otherwise (`batch_var_estimator`)
    "running_mean",  # running statistics after every step, (steps, C)
    "running_var",
    "num_batches_tracked",  # counter after every step, (steps,); only where an API keeps one
    "dx",  # gradients of <y_last, dy> at the last step, in that step's mode
    "dgamma",
    "dbeta",
    "d2x",  # gradient of <dx, v> with respect to x (second order), last step
    "d2gamma",  # gradient of <dx, v> with respect to gamma
)
FIRST_ORDER = frozenset({"dx", "dgamma", "dbeta"})
SECOND_ORDER = frozenset({"d2x", "d2gamma"})
GRADIENTS = FIRST_ORDER | SECOND_ORDER


def _complement(m: float) -> float:
    """1 - m without binary representation noise: 1 - 0.9 is 0.09999999999999998 in binary, and a user who
    writes momentum=0.9 means a weight of 0.1 on the new batch (the two differ by one ulp, far below any
    bound, but they would make 0.1 and 0.9 fail to round-trip and name two cases alike)."""
    return float(f"{1.0 - m:.15g}")


@dataclass(frozen=True)
class Convention:
    """What a BatchNorm implementation computes, as knobs. Defaults are torch's documented behaviour.

    The first group describes documented conventions that differ between frameworks. The second group
    describes deviations nobody documents on purpose (the planted bugs and the diagnosis hypotheses); a
    real framework declares their defaults.
    """

    # -- documented conventions
    momentum_form: MomentumForm = "weight_on_new"  # how the native `momentum` argument is read
    default_momentum: float | None = 0.1  # the native default value (None: cumulative average)
    default_eps: float = 1e-5
    running_var: RunningVar = "unbiased"  # estimator fed into the running variance
    batch_var_estimator: RunningVar = "biased"  # estimator of an exposed batch variance
    averaging: Averaging = "ema"  # ema, cumulative (torch momentum=None), debiased_ema (haiku, equinox batch)
    debias_hidden_init: Literal["zeros", "initial_stats"] = "zeros"  # where a debiased EMA's hidden starts
    first_step: Literal["update", "replace"] = "update"  # replace: the first training step sets R = B
    train_normalizer: Normalizer = "batch"  # running: training output normalized with the updated stats
    variance: VarianceAlgorithm = "two_pass"
    stats_dtype: str | None = None  # None: running statistics kept exactly; else rounded to it every step
    # A frozen layer (Keras `trainable = False`) ignores training=True: every step is inference (running
    # statistics, no update, inference gradients). A property of a path, not of an API's eager call.
    frozen: bool = False
    # -- deviations (diagnosis hypotheses, planted bugs)
    normalize_var: RunningVar = "biased"  # estimator used to normalize the training output
    eps_placement: EpsPlacement = "inside_sqrt"
    grad_through_mean: bool = True  # training backward differentiates through the batch mean
    grad_through_var: bool = True  # ... and through the batch variance
    # The variance is taken around stop_gradient(mean) (tf.nn.moments): no first-order effect, but second
    # order loses the mean's -2/n^2 term.
    variance_mean_detached: bool = False
    cumulative_offset: int = 0  # cumulative average divides by (count + offset)
    # -- fitted deviations: conformance.explain.diagnose estimates these from an observation (continuous parameters)
    step_weights: tuple[float, ...] | None = None  # weight on the new batch at training update 1, 2, ... (the
    # last one repeats); overrides `averaging`
    running_var_factor: float | None = None  # the running variance takes factor * biased batch variance
    eval_statistics: Literal["running", "batch", "train"] = "running"  # what an inference step does: use the
    # running statistics; use the batch statistics; or behave as a training step (forgot eval())
    broadcast_axis: int | None = None  # the per-channel vectors are applied along this axis (a broadcast bug)

    def with_(self, **changes) -> "Convention":
        return replace(self, **changes)

    def modes(self, problem: "Problem") -> tuple[Mode, ...]:
        """The modes `problem`'s steps run in under this convention (frozen: inference wherever statistics
        are kept)."""
        if self.frozen and problem.track_running_stats:
            return ("eval",) * problem.steps
        return tuple(problem.modes)

    def native_to_canonical(self, native_momentum: float | None) -> float | None:
        """alpha (weight on new) from the native momentum argument."""
        if native_momentum is None:
            return None
        return native_momentum if self.momentum_form == "weight_on_new" else _complement(native_momentum)

    def canonical_to_native(self, alpha: float | None) -> float | None:
        if alpha is None:
            return None
        return alpha if self.momentum_form == "weight_on_new" else _complement(alpha)

    def knobs(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def differences(self, other: "Convention") -> dict[str, tuple[object, object]]:
        """Knobs that differ: name -> (self's value, other's value)."""
        return {k: (v, getattr(other, k)) for k, v in self.knobs().items() if getattr(other, k) != v}


@dataclass(frozen=True, eq=False)
class Problem:
    """One BatchNorm scenario, as concrete arrays: what the oracle evaluates and what an adapter runs.

    Every array is float64 and holds values exactly representable in `dtype`: this is the input as the
    framework sees it after conversion, so the oracle and the framework start from identical numbers.
    """

    xs: tuple[np.ndarray, ...]  # one batch per step
    modes: tuple[Mode, ...]  # "train" or "eval" per step
    axis: int  # channel axis, non-negative
    gamma: np.ndarray | None  # None: affine=False
    beta: np.ndarray | None
    running_mean: np.ndarray  # initial running statistics, shape (C,)
    running_var: np.ndarray
    momentum: float | None  # canonical alpha; None: cumulative average
    eps: float
    dy: np.ndarray  # cotangent for the last step's output
    v: np.ndarray  # direction for second order: d<dx, v>/dx and d<dx, v>/dgamma
    dtype: str = "float64"
    track_running_stats: bool = True
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"
    use_defaults: bool = False  # run with the framework's own default momentum and eps
    # The initial running statistics are the defaults every framework documents (mean 0, variance 1): adapters
    # take them from the framework's own constructor / init / build, in the dtype and with the values it
    # chooses, instead of injecting these arrays (what users run; where a framework differs, the checks show it).
    native_init: bool = False
    # Per-device batch sizes along axis 0 for synchronized BatchNorm (empty: split equally). Only adapters
    # read it: the oracle is the statistics of the global batch, whatever the split.
    shards: tuple[int, ...] = ()
    quantities: frozenset[str] = field(default_factory=lambda: frozenset(QUANTITIES))
    label: str = ""  # the case id, for messages

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.xs[0].shape)

    @property
    def channels(self) -> int:
        return self.shape[self.axis]

    @property
    def reduced_count(self) -> int:
        """n: elements reduced per channel."""
        return int(np.prod(self.shape)) // self.channels

    @property
    def steps(self) -> int:
        return len(self.xs)

    @property
    def affine(self) -> bool:
        return self.gamma is not None

    def effective(self, convention: Convention) -> tuple[float | None, float]:
        """(alpha, eps) this problem runs with under `convention` (its defaults if use_defaults)."""
        if self.use_defaults:
            return convention.native_to_canonical(convention.default_momentum), convention.default_eps
        return self.momentum, self.eps

    def gamma_or_ones(self) -> np.ndarray:
        return self.gamma if self.gamma is not None else np.ones(self.channels)

    def beta_or_zeros(self) -> np.ndarray:
        return self.beta if self.beta is not None else np.zeros(self.channels)

    def with_(self, **changes) -> "Problem":
        return replace(self, **changes)
