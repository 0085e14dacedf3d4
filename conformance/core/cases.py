"""The case table: every BatchNorm scenario the suite runs, declared as data (OpInfo-style).

What is covered
  - ranks 2-5, channel axis 1 and last; float64, float32, float16, bfloat16; contiguous and channels-last;
  - training, inference, and sequences of both (k training steps, then inference; inference first);
  - momentum as a weight (0.1, 0.9) and as a cumulative average (torch momentum=None); eps from 1e-5 to 1e-3;
  - affine / not affine, tracking / not tracking running statistics, default and random initial statistics;
  - every quantity: output, batch and running statistics, counter, dx, dgamma, dbeta, second order;
  - one discriminating case per Convention knob (`knob=`): the two settings of that knob differ there by far
    more than the float32 tolerance (tests/unit/test_cases.py proves it);
  - edge cases: one element per channel in training, a constant channel, variance near eps, large mean;
  - each framework's own defaults (`defaults=True`): the defaults-hazard comparison;
  - the seeds' scenarios: given statistics in training vs inference on the same batch, second order in
    training vs inference, forward vs predict after convergence on one batch (biased vs unbiased);
  - realistic sizes (default tier): ResNet and 3-D convolution features, a 1024-wide BatchNorm1d, channel
    counts that are and are not multiples of 8/16/64, channels-last memory and axis, float16 at n = 6272;
  - the corpus (conformance/corpus/): regression cases the fuzzer (`bnconform fuzz`) shrank, and published
    BatchNorm bug reproducers, each with its upstream link; replayed in the default tier.

What is not covered
  - synchronized batch norm beyond logical CPU devices (execution path `sync`: the batch split over devices,
    equally or as `shards` says), fused activations, ghost batch norm, renorm (Keras `renorm`),
    virtual batch size, non-float dtypes, complex inputs, GPU-only kernels (the device flag decides).

Tiers: `smoke` (seconds), `default` (the CI matrix; includes smoke), `nightly` (includes default; larger
shapes, more seeds, outliers, long sequences).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from reference import QUANTITIES, SECOND_ORDER
from reference.dtypes import BY_SHORT, SHORT_NAMES

TIERS = ("smoke", "default", "nightly")
SECOND_ORDER_MAX_SIZE = 512  # the complex-step second order costs size^2; keep it to small cases


@dataclass(frozen=True)
class Case:
    """A framework-neutral scenario. Hashable; `id` is stable and readable and names it everywhere."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    modes: tuple[str, ...] = ("train",)
    axis: int = 1
    momentum: float | None = 0.1  # canonical: weight on the new batch statistic; None = cumulative average
    eps: float = 1e-5
    affine: bool = True
    track_running_stats: bool = True
    init_stats: str = "default"  # "default": mean 0, var 1; "random": mean U(-.5,.5), var U(.5,1.5)
    dist: str = "normal"  # conformance.core.inputs.DISTRIBUTIONS: normal, uniform, outliers, (near_)constant_channel,
    #                       denormal, nan, inf
    loc: float = 0.0  # per-channel location scale of the inputs
    scale: float = 1.0  # per-channel spread of the inputs
    same_batch: bool = False  # every step sees the same batch (convergence)
    memory_format: str = "contiguous"
    defaults: bool = False  # each framework runs with its own default momentum and eps
    seed: int = 0
    tier: str = "default"
    knob: str | None = None  # the Convention knob this case discriminates
    characterize: bool = False  # ill-posed comparison: reported and diffed, never failing
    note: str = ""
    only: tuple[str, ...] = ()  # restrict to these quantities (empty: all that apply)
    # Also run on every execution path the adapters declare (compiled, exported, folded, ...), in the smoke and
    # default tiers; nightly runs every case on every path (conformance/core/paths.py). Not part of the id.
    paths: bool = False
    # Per-device batch sizes along axis 0 for synchronized (cross-device) BatchNorm, summing to N; empty: the
    # batch is split equally over the devices. The oracle is the GLOBAL batch's statistics whatever the split,
    # so on every unsharded path this case is its unsharded twin (conformance/core/paths.py runs it on eager, as the
    # control, and on sharded paths only). In the id as `-sh6+2` when non-empty.
    shards: tuple[int, ...] = ()

    def __post_init__(self):
        if self.shards and (sum(self.shards) != self.shape[0] or min(self.shards) < 1):
            raise ValueError(f"shards {self.shards} must be positive and sum to the batch size {self.shape[0]}")

    # -- derived
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def axis_index(self) -> int:
        return self.axis % self.ndim

    @property
    def channels(self) -> int:
        return self.shape[self.axis_index]

    @property
    def reduced_count(self) -> int:
        return int(np.prod(self.shape)) // self.channels

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @cached_property
    def quantities(self) -> frozenset[str]:
        q = set(self.only or QUANTITIES)
        if self.size > SECOND_ORDER_MAX_SIZE:
            q -= SECOND_ORDER
        return frozenset(q)

    @cached_property
    def id(self) -> str:
        parts = [
            SHORT_NAMES[self.dtype],
            "x".join(map(str, self.shape)),
            f"ax{self.axis}",
            _modes_code(self.modes),
        ]
        if self.defaults:
            parts.append("defaults")
        else:
            parts.append("acum" if self.momentum is None else f"a{self.momentum:.12g}")
            parts.append(f"eps{self.eps:.12g}")
        flags = []
        if not self.affine:
            flags.append("noaffine")
        if not self.track_running_stats:
            flags.append("notrack")
        if self.init_stats == "random":
            flags.append("rstats")
        if self.dist != "normal":
            flags.append(self.dist.replace("_", "-"))
        if self.loc != 0.0:
            flags.append(f"loc{self.loc:g}")
        if self.scale != 1.0:
            flags.append(f"sc{self.scale:g}")
        if self.same_batch:
            flags.append("same")
        if self.memory_format != "contiguous":
            flags.append(self.memory_format.replace("_", "-"))
        if self.only:
            flags.append("q-" + "+".join(sorted(self.only)))
        if self.shards:
            flags.append("sh" + "+".join(map(str, self.shards)))
        return "-".join(parts + flags + [f"s{self.seed}"])

    def with_(self, **changes) -> "Case":
        return replace(self, **changes)


def _modes_code(modes: tuple[str, ...]) -> str:
    """Run-length code of the mode sequence: ("train",)*3 + ("eval",) -> "T3E"."""
    out, i = [], 0
    while i < len(modes):
        j = i
        while j < len(modes) and modes[j] == modes[i]:
            j += 1
        letter = {"train": "T", "eval": "E"}[modes[i]]
        out.append(letter + (str(j - i) if j - i > 1 else ""))
        i = j
    return "".join(out)


def parse_modes(code: str) -> tuple[str, ...]:
    modes: list[str] = []
    for letter, count in re.findall(r"([TE])(\d*)", code):
        modes += [{"T": "train", "E": "eval"}[letter]] * int(count or 1)
    return tuple(modes)


def T(k: int = 1) -> tuple[str, ...]:
    return ("train",) * k


def E(k: int = 1) -> tuple[str, ...]:
    return ("eval",) * k


# Shapes are few on purpose: a JIT-compiling framework compiles once per shape, dtype and configuration.
S2 = (8, 4)  # (N, C)
S2_SMALL_N = (4, 3)  # n = 4: Bessel's n/(n-1) = 4/3
S3 = (4, 3, 5)  # (N, C, L)
S4 = (4, 3, 2, 3)  # (N, C, H, W); C == W so statistics over the wrong axis still run (and are caught)
S4_LAST = (4, 2, 3, 3)  # (N, H, W, C)
S5 = (2, 3, 2, 2, 2)  # (N, C, D, H, W)
S_BIG = (32, 8, 4, 4)  # n = 512
S_NIGHTLY = (64, 16, 8, 8)  # n = 4096
# Realistic sizes (what models run): few, because the oracle's cost grows with them (reference/blocked.py).
R_RESNET = (8, 64, 56, 56)  # ResNet-50 after the stem: 1.6 M elements, n = 25088
R_MLP = (256, 1024)  # BatchNorm1d on a 1024-wide layer
R_3D = (2, 32, 16, 16, 16)  # 3-D U-Net features
R_ODD_C = (32, 67, 9, 9)  # 67 channels: no multiple of 8
R_C24_LAST = (8, 28, 28, 24)  # (N, H, W, C), C = 24
R_HALF = (8, 64, 28, 28)  # n = 6272
R_RESNET_S2 = (8, 128, 28, 28)  # ResNet-50 stage 2: 0.8 M elements

_TABLE: list[Case] = [
    # -- smoke: seconds, one per family of quantity
    Case(S4, "float32", T(2), paths=True, init_stats="random", tier="smoke", knob="momentum_form",
         note="workhorse, training last: train gradients; R after 2 steps separates alpha from 1-alpha"),
    Case(S2, "float64", T() + E(), paths=True, init_stats="random", tier="smoke",
         note="rank 2 float64, inference last: gradients with constant statistics"),
    # -- default: the CI matrix
    Case(S4, "float64", T(3) + E(), paths=True, init_stats="random",
         note="workhorse float64, k steps then inference"),
    Case(S4, "float64", T(2), init_stats="random", note="workhorse float64, training gradients"),
    Case(S4, "float32", T(3) + E(), init_stats="random", note="workhorse float32"),
    Case(S4, "float32", E() + T() + E(), paths=True, init_stats="random",
         note="inference before any training uses the initial statistics"),
    Case(S4, "float32", E() + T(2) + E(), paths=True,
         note="the framework's own initial state (constructor/init/build), inference first, then training: "
              "a variance initialised to 0 divides inference by sqrt(eps) (equinox#955)"),
    Case(S2, "float64", T(3) + E(), paths=True, init_stats="random", shards=(6, 2),
         note="unequal per-device shards (synchronized BatchNorm): the global batch's statistics are the "
              "count-weighted combination of the devices' ones, not their plain average"),
    Case(S2, "float64", T(2), paths=True, init_stats="random", shards=(4, 4),
         note="synchronized BatchNorm, training last: the backward sums dy and dy*xhat over every device and the "
              "replicated gamma's and beta's gradients are summed over the devices (the global batch's gradients)"),
    Case(S2, "float64", T(2), paths=True, init_stats="random", shards=(6, 2),
         note="the gradients of synchronized BatchNorm over unequal per-device shards (the global batch's)"),
    Case(S4, "float64", E() + T() + E(),
         note="the framework's own initial state in a float64 model, inference first: the dtype its init gives "
              "the statistics (flax.linen: float32)"),
    Case(S2, "float32", T(2) + E(), init_stats="random", note="rank 2 (BatchNorm1d on (N, C))"),
    Case(S2_SMALL_N, "float32", T(2) + E(), init_stats="random", knob="running_var",
         note="n = 4: unbiased and biased running variance differ by 4/3"),
    Case(S2_SMALL_N, "float32", T(2), init_stats="random", knob="normalize_var",
         note="n = 4: normalizing with the unbiased variance changes y by sqrt(3/4)"),
    Case(S3, "float32", T() + E(), note="rank 3 (N, C, L)"),
    Case(S5, "float32", T() + E(), note="rank 5 (N, C, D, H, W)"),
    Case(S4_LAST, "float32", T(2) + E(), axis=-1, init_stats="random", note="channels on the last axis"),
    Case(S2, "float32", T(3) + E(), paths=True, momentum=None, init_stats="random", knob="averaging",
         note="cumulative average (torch momentum=None): R after 3 steps is the mean of the batches"),
    Case(S4, "float32", T(2) + E(), momentum=None, init_stats="random", knob="cumulative_offset",
         note="cumulative average over 2 steps: 1/t vs 1/(t+1) weights"),
    Case(S4, "float32", T(3), momentum=0.1, init_stats="random", knob="debias",
         note="3 steps at alpha 0.1: a zero-debiased EMA divides by 1 - 0.9^t"),
    Case(S4, "float32", T(3), momentum=0.9, init_stats="random", knob="first_step",
         note="alpha 0.9: whether the first step replaces R or blends it"),
    Case(S4, "float32", T(3), momentum=0.5, init_stats="random", knob="train_normalizer",
         note="training output normalized with batch vs EMA-blended statistics"),
    Case(S4, "float32", T() + E(), paths=True, scale=3e-3, knob="eps_placement",
         note="variance ~ 1e-5 ~ eps: eps inside vs outside the root, and eps values, differ strongly"),
    Case(S4, "float32", T() + E(), eps=1e-3, scale=3e-2, knob="eps",
         note="eps 1e-3 (Keras' default) with variance ~ 1e-3: eps is half the denominator"),
    Case(S2, "float32", T() + E(), loc=1e3, knob="variance", characterize=True,
         note="|mean|/std ~ 1e3: E[x^2]-E[x]^2 in float32 loses every digit; two-pass keeps ~all"),
    Case(S4, "float32", T(2) + E(), init_stats="random", knob="stats_dtype",
         note="random running statistics not representable in float16"),
    Case(S4, "float32", T() + E(), loc=1e3, characterize=True,
         note="|mean|/std ~ 1e3 on a 4-D input: the fast variance in fused and channels-last kernels"),
    Case(S4, "float32", T() + E(), eps=1e-8, scale=1e-3,
         note="eps 1e-8 with variance ~1e-6: an implementation that clamps eps (cuDNN's 1e-5 minimum) is off "
              "by sqrt(11)"),
    Case(S5, "float32", T() + E(), init_stats="random", memory_format="channels_last",
         note="5-D channels-last memory format (NDHWC kernels)"),
    Case(S4, "float32", T() + E(), affine=False, note="affine=False: no gamma, beta"),
    Case(S4, "float32", T() + E(), paths=True, track_running_stats=False,
         note="no running statistics: inference normalizes with the batch statistics"),
    Case(S4, "float32", T() + E(), paths=True, init_stats="random", memory_format="channels_last",
         note="channels-last memory format (same logical layout)"),
    Case(S4, "float16", T(2) + E(), paths=True, init_stats="random", note="float16 (the mixed_float16 path)"),
    Case(S2, "float16", T(), scale=1e-2,
         note="float16 activations of std 0.01 (var ~1e-4): (var + eps)^(-3/2), the derivative of 1/sqrt(var + "
              "eps), exceeds float16's 65504 below var + eps = 6.1e-4, so gradients taken in float16 overflow"),
    Case(S4, "bfloat16", T(2) + E(), paths=True, init_stats="random", note="bfloat16"),
    Case(S_BIG, "float32", T(2) + E(), init_stats="random", note="n = 512 float32"),
    Case(S_BIG, "float16", T() + E(), note="n = 512 float16: accumulation precision matters"),
    Case(S_BIG, "bfloat16", T() + E(), note="n = 512 bfloat16"),
    Case(S4, "float32", T(20) + E(), init_stats="random", note="20 steps: running-statistics error growth"),
    Case(S2, "float64", T(60) + E(), same_batch=True, only=("y", "running_mean", "running_var"),
         note="same batch 60 times: R converges to the batch statistics (unbiased or biased)"),
    Case(S4, "float32", T(3) + E(), defaults=True, scale=3e-2,
         note="each framework's own defaults (momentum, eps) on the same data: the defaults hazard"),
    Case(S2, "float64", T(3) + E(), defaults=True, note="each framework's own defaults, float64, rank 2"),
    Case(S4, "float32", E(), paths=True, init_stats="random",
         note="inference only: what an exported or folded model runs"),
    Case(S4, "float64", E(), paths=True, init_stats="random",
         note="inference only, float64: an exported model's float32 attributes (eps) show here"),
    Case(S4, "float32", T() + E(), dist="constant_channel", note="a constant channel: variance 0"),
    Case((1, 4), "float32", T(), note="one element per channel in training: n = 1"),
    Case(S2, "float32", T() + E(), eps=1e-3, scale=3e-2,
         note="eps 1e-3 with variance ~1e-3 on rank 2: the eps discrimination for APIs that run channels-last "
              "only (TensorFlow.js' CPU kernel)"),
    # -- the seeds' scenarios (users' MATLAB questions), small and float32 so every runtime can run them
    Case(S2, "float32", T() + E(), init_stats="random", same_batch=True,
         note="seed scenario (MATLAB batchnorm, 5 inputs): given statistics are ignored by the training output "
              "and blended into the returned statistics; inference on the same batch normalizes with them, and "
              "its second order treats them as constants (d2x = 0)"),
    Case(S2, "float32", T(), init_stats="random", same_batch=True,
         note="seed scenario, training twin of the case above: second order through the batch statistics "
              "(d2x != 0; the difference from inference is expected)"),
    Case(S2_SMALL_N, "float32", T(30) + E(), momentum=0.5, init_stats="random", same_batch=True,
         only=("y", "running_mean", "running_var"),
         note="seed scenario (dlnetwork forward vs predict): 30 steps at alpha 0.5 on one batch of n = 4 make the "
              "running statistics the batch's (0.5^30 ~ 1e-9); predict then equals forward where the running "
              "variance is biased and differs by sqrt(4/3) where it is unbiased"),
    # -- realistic sizes: the kernels real models reach (vectorized channel blocks, parallel reductions,
    #    channels-last paths); first-order quantities only (second order stays on the small cases above)
    Case(R_RESNET, "float32", T(2), init_stats="random",
         note="ResNet stage 1 (8x64x56x56, n = 25088): training statistics and gradients at a real size"),
    Case(R_RESNET_S2, "float32", T() + E(), init_stats="random", memory_format="channels_last",
         note="ResNet stage 2 (8x128x28x28) in channels-last memory: the NHWC kernels, training then inference"),
    Case(R_MLP, "float32", T(2) + E(), init_stats="random",
         note="BatchNorm1d after a 1024-wide linear layer, batch 256 (C a multiple of 64)"),
    Case(R_3D, "float32", T(2), init_stats="random", note="3-D convolution features (N, C, D, H, W), n = 8192"),
    Case(R_ODD_C, "float32", T() + E(), init_stats="random",
         note="67 channels (not a multiple of 8, 16 or 64): the remainder of vectorized channel blocks"),
    Case(R_C24_LAST, "float32", T(2), axis=-1, init_stats="random",
         note="channels last on the logical axis, 24 channels (a multiple of 8, not of 16), n = 6272"),
    Case(R_HALF, "float16", T() + E(), init_stats="random",
         note="float16 at a real size (n = 6272): accumulation in float32 or not"),
    # -- nightly: bigger, more seeds, heavier tails, longer
    Case(S_NIGHTLY, "float32", T(2) + E(), init_stats="random", tier="nightly", note="n = 4096"),
    Case(S_NIGHTLY, "float16", T() + E(), tier="nightly", note="n = 4096 float16"),
    Case(S4, "float32", T(3) + E(), init_stats="random", dist="outliers", tier="nightly", note="heavy tails"),
    Case(S4, "float32", T(3) + E(), dist="uniform", tier="nightly", note="uniform inputs"),
    Case(S2, "float64", T(500) + E(), same_batch=True, only=("y", "running_mean", "running_var"),
         tier="nightly", note="same batch 500 times: full convergence"),
    Case(S2, "float32", T() + E(), loc=1e2, tier="nightly", characterize=True, note="|mean|/std ~ 1e2"),
    *[
        Case(S4, dt, T(2) + E(), init_stats="random", seed=s, tier="nightly", note="more seeds")
        for s in (1, 2, 3)
        for dt in ("float64", "float32")
    ],
]


def _check_table(table: list[Case]) -> dict[str, Case]:
    by_id: dict[str, Case] = {}
    for c in table:
        if c.tier not in TIERS:
            raise ValueError(f"case {c.id}: unknown tier {c.tier!r}")
        if c.id in by_id:
            raise ValueError(f"duplicate case id {c.id} (a corpus file repeating a table case?)")
        by_id[c.id] = c
    return by_id


def _corpus() -> list[Case]:
    """The regression corpus (conformance/corpus/, conformance.core.regressions): default-tier cases kept as files."""
    from .regressions import load

    return [r.case for r in load()]


CASES: dict[str, Case] = _check_table(_TABLE + _corpus())


def cases_for_tier(tier: str) -> list[Case]:
    """Cases of `tier` and every smaller tier, in table order."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of: {', '.join(TIERS)}")
    limit = TIERS.index(tier)
    return [c for c in CASES.values() if TIERS.index(c.tier) <= limit]


def case_by_id(case_id: str) -> Case:
    try:
        return CASES[case_id]
    except KeyError:
        raise KeyError(f"no case with id {case_id!r}") from None


def discriminating_cases() -> dict[str, Case]:
    return {c.knob: c for c in CASES.values() if c.knob}


__all__ = ["Case", "CASES", "TIERS", "cases_for_tier", "case_by_id", "discriminating_cases", "parse_modes",
           "BY_SHORT"]
