"""Alternative explanations of an observation, each a small change to (problem, convention) that the oracle can
evaluate: "the running variance is biased", "eps is 1e-3", "no gradient through the batch mean", ...

A Hypothesis is data: a name, a sentence a user understands, and a function that turns the declared
(problem, convention) into the hypothesised one. Diagnosis searches them (and pairs of them) for the simplest
that fits an observation; convention inference uses the subset relevant to each knob.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reference import Convention, Problem

# Every framework default eps the suite knows of (torch/flax/haiku/equinox/ONNX 1e-5, Keras 1e-3, the raw
# FusedBatchNormV3 op 1e-4, MXNet/Gluon 1e-5, cuDNN's minimum 1e-5, 1e-6 in some re-implementations).
KNOWN_EPS = (1e-5, 1e-3, 1e-4, 1e-6, 1e-2, 1e-8, 0.0)
KNOWN_ALPHA = (0.1, 0.01, 0.001, 0.5)  # weight on the new batch: torch 0.1, Keras/flax 1 - 0.99, ...


@dataclass(frozen=True)
class Hypothesis:
    name: str
    sentence: str  # what would be true, in words: "the running variance is updated with the biased variance"
    apply: Callable[[Problem, Convention], tuple[Problem, Convention]]
    compute_dtype: str | None = None  # evaluate the statistics in this format (emulated algorithms)
    knob: str | None = None  # the Convention knob (or hyperparameter) it concerns
    value: object = None  # the value it sets

    def __call__(self, problem: Problem, convention: Convention) -> tuple[Problem, Convention]:
        return self.apply(problem, convention)


def _conv(name, sentence, knob, value):
    return Hypothesis(name, sentence, lambda p, c: (p, c.with_(**{knob: value})), knob=knob, value=value)


def _other(value, a, b):
    return b if value == a else a


def for_declared(problem: Problem, declared: Convention) -> list[Hypothesis]:
    """Single-change hypotheses that differ from what is declared (and apply to this problem)."""
    alpha, eps = problem.effective(declared)
    hs: list[Hypothesis] = []
    if alpha is not None:
        hs.append(Hypothesis(
            "momentum_flipped", f"momentum is read as the weight on the old value: alpha {1 - alpha:g} instead of "
            f"{alpha:g}", lambda p, c: (p.with_(momentum=1 - alpha, use_defaults=False, eps=eps), c),
            knob="momentum_form", value="flipped"))
        for a in KNOWN_ALPHA:
            if abs(a - alpha) > 1e-12 and abs(a - (1 - alpha)) > 1e-12:
                hs.append(Hypothesis(
                    f"alpha={a:g}", f"the weight on the new batch statistic is {a:g}, not {alpha:g}",
                    lambda p, c, a=a: (p.with_(momentum=a, use_defaults=False, eps=eps), c), knob="momentum",
                    value=a))
        hs.append(Hypothesis("cumulative", "running statistics are a cumulative average (momentum=None)",
                             lambda p, c: (p.with_(momentum=None, use_defaults=False, eps=eps),
                                           c.with_(averaging="cumulative")), knob="averaging", value="cumulative"))
    elif problem.track_running_stats:
        hs.append(Hypothesis("ema_instead_of_cumulative",
                             "running statistics are an EMA with weight 0.1 instead of a cumulative average",
                             lambda p, c: (p.with_(momentum=0.1, use_defaults=False, eps=eps),
                                           c.with_(averaging="ema")), knob="averaging", value="ema"))
        for off in (1, -1):
            hs.append(_conv(f"count_offset{off:+d}", f"the cumulative average divides by t{off:+d} instead of t",
                            "cumulative_offset", off))
    for e in KNOWN_EPS:
        if abs(e - eps) > 1e-3 * eps:
            hs.append(Hypothesis(f"eps={e:g}", f"eps is {e:g}, not {eps:g}",
                                 lambda p, c, e=e: (p.with_(eps=e, momentum=alpha, use_defaults=False), c),
                                 knob="eps", value=e))
    rv = _other(declared.running_var, "unbiased", "biased")
    hs.append(_conv(f"running_var_{rv}", f"the running variance is updated with the {rv} batch variance",
                    "running_var", rv))
    bv = _other(declared.batch_var_estimator, "unbiased", "biased")
    hs.append(_conv(f"batch_var_{bv}", f"the returned batch variance is {bv}", "batch_var_estimator", bv))
    nv = _other(declared.normalize_var, "biased", "unbiased")
    hs.append(_conv(f"normalize_{nv}", f"training normalizes with the {nv} variance", "normalize_var", nv))
    ep = _other(declared.eps_placement, "inside_sqrt", "outside_sqrt")
    hs.append(_conv(ep, "eps is added " + ("outside" if ep == "outside_sqrt" else "inside") + " the square root",
                    "eps_placement", ep))
    if declared.grad_through_mean:
        hs.append(_conv("no_grad_mean", "the backward treats the batch mean as a constant", "grad_through_mean",
                        False))
    if declared.grad_through_var:
        hs.append(_conv("no_grad_var", "the backward treats the batch variance as a constant", "grad_through_var",
                        False))
    if not declared.variance_mean_detached:
        hs.append(_conv("variance_mean_detached", "the variance is taken around stop_gradient(mean): first-order "
                        "gradients are right, second order loses the mean's term", "variance_mean_detached", True))
    tn = _other(declared.train_normalizer, "batch", "running")
    hs.append(_conv(f"train_normalizer_{tn}", "training normalizes with " + (
        "the EMA-blended running statistics" if tn == "running" else "the batch statistics"), "train_normalizer", tn))
    fs = _other(declared.first_step, "update", "replace")
    hs.append(_conv(f"first_step_{fs}", "the first training step " + (
        "replaces the running statistics with the batch statistics" if fs == "replace" else
        "blends the running statistics like every other step"), "first_step", fs))
    if declared.averaging != "debiased_ema" and problem.momentum is not None:
        hs.append(_conv("debiased_ema", "running statistics are a zero-debiased EMA (divided by 1 - (1-alpha)^t)",
                        "averaging", "debiased_ema"))
    if declared.averaging == "debiased_ema":
        hs.append(_conv("plain_ema", "running statistics are a plain EMA, not zero-debiased", "averaging", "ema"))
        di = _other(declared.debias_hidden_init, "zeros", "initial_stats")
        hs.append(_conv(f"debias_from_{di}", f"the debiased EMA's hidden state starts from {di}",
                        "debias_hidden_init", di))
    for dt in ("float16", "bfloat16", "float32"):
        if dt != declared.stats_dtype and _narrower(dt, problem.dtype):
            hs.append(_conv(f"stats_{dt}", f"running statistics are stored in {dt}", "stats_dtype", dt))
    for dt in ("float32", "float16", "bfloat16"):
        if not _narrower(dt, problem.dtype) and dt != problem.dtype:
            continue
        for alg in ("fast", "fast_clamped"):
            if alg != declared.variance or dt != problem.dtype:
                hs.append(Hypothesis(f"{alg}_var_{dt}", f"the batch variance is E[x^2] - E[x]^2"
                                     f"{' clamped at 0' if alg == 'fast_clamped' else ''}, computed in {dt}",
                                     lambda p, c, alg=alg: (p, c.with_(variance=alg)), compute_dtype=dt,
                                     knob="variance", value=f"{alg}@{dt}"))
    if problem.track_running_stats and "eval" in problem.modes:
        hs.append(Hypothesis("eval_uses_batch_stats", "inference normalizes with the batch statistics",
                             lambda p, c: (p.with_(track_running_stats=False), c), knob="eval_statistics",
                             value="batch"))
    nd = len(problem.shape)
    for k in range(nd):
        if k != problem.axis and problem.shape[k] == problem.channels:
            hs.append(Hypothesis(f"axis={k}", f"statistics are taken per index of axis {k}, not of the channel "
                                 f"axis {problem.axis}", lambda p, c, k=k: (p.with_(axis=k), c), knob="axis", value=k))
    return hs


_WIDTH = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16}


def _narrower(a: str, b: str) -> bool:
    return _WIDTH[a] < _WIDTH[b] or (_WIDTH[a] == _WIDTH[b] and a != b)


def combine(h1: Hypothesis, h2: Hypothesis) -> Hypothesis | None:
    """Both changes at once; None when they touch the same knob (or both emulate a dtype)."""
    if h1.knob == h2.knob or (h1.compute_dtype and h2.compute_dtype):
        return None

    def apply(p, c):
        p, c = h1.apply(p, c)
        return h2.apply(p, c)

    return Hypothesis(f"{h1.name}+{h2.name}", f"{h1.sentence}, and {h2.sentence}", apply,
                      compute_dtype=h1.compute_dtype or h2.compute_dtype, knob=f"{h1.knob}+{h2.knob}")
