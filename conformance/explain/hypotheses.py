"""Alternative explanations of an observation, each a small change to (problem, convention) that the oracle can
evaluate: "the running variance is biased", "eps is 1e-3", "no gradient through the batch mean", ...

A Hypothesis is data: a name, a sentence a user understands, and a function that turns the declared
(problem, convention) into the hypothesised one. Diagnosis searches them (and pairs of them) for the simplest
that fits an observation; convention inference uses the subset relevant to each knob.

Three sources: the knob flips of `for_declared` (each knob's other setting), the declarative `CATALOGUE`
(adding a hypothesis is one `Entry`: Convention and/or Problem changes and when it applies), and `estimated`,
whose continuous parameters (per-step weights, running-variance factor, eps) are read off the observation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

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
    changes: int = 1  # how many things it changes (an estimated trajectory may change the weights and the factor)
    params: int = 0  # how many numbers were estimated from the data (fewer is simpler)

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
    hs += [e.hypothesis(problem, declared) for e in CATALOGUE if e.applies(problem, declared)]
    nd = len(problem.shape)
    for k in range(nd):
        if k != problem.axis and problem.shape[k] == problem.channels:
            hs.append(Hypothesis(f"axis={k}", f"statistics are taken per index of axis {k}, not of the channel "
                                 f"axis {problem.axis}", lambda p, c, k=k: (p.with_(axis=k), c), knob="axis", value=k))
    return hs


@dataclass(frozen=True)
class Entry:
    """One declarative hypothesis: Convention changes and/or Problem changes, and when it applies.

    `problem` maps a Problem field to its hypothesised value, or to a function of (problem, alpha, eps) where
    alpha and eps are the effective hyperparameters under the declared convention. `sentence` may use
    {last} (the last axis), {alpha} and {eps}."""

    name: str
    sentence: str
    conv: dict = field(default_factory=dict)
    problem: dict = field(default_factory=dict)
    when: Callable[[Problem, Convention], bool] = lambda p, c: True
    compute_dtype: str | None = None
    knob: str | None = None

    def applies(self, problem: Problem, declared: Convention) -> bool:
        differs = self.compute_dtype is not None or not self.conv or any(getattr(declared, k) != v for k, v in self.conv.items())
        return differs and self.when(problem, declared)

    def hypothesis(self, problem: Problem, declared: Convention) -> Hypothesis:
        alpha, eps = problem.effective(declared)

        def apply(p, c):
            changes = {k: (v(p, alpha, eps) if callable(v) else v) for k, v in self.problem.items()}
            if changes:
                changes.setdefault("momentum", alpha)
                changes.setdefault("eps", eps)
                p = p.with_(use_defaults=False, **changes)
            return p, c.with_(**self.conv) if self.conv else c

        text = self.sentence.format(last=len(problem.shape) - 1, alpha=alpha, eps=eps)
        knob = self.knob or "+".join(sorted(self.conv) + sorted(self.problem))
        return Hypothesis(self.name, text, apply, compute_dtype=self.compute_dtype, knob=knob,
                          value=next(iter(self.conv.values()), None))


def _f32(v):
    return None if v is None else float(np.float32(v))


def _trains_then_evals(p: Problem, c: Convention) -> bool:
    return p.track_running_stats and "eval" in p.modes


def _narrower_than_input(dt):
    return lambda p, c: _narrower(dt, p.dtype)


def _broadcast_last(p: Problem, c: Convention) -> bool:
    return p.axis != len(p.shape) - 1 and p.shape[-1] == p.channels


# Hypotheses people hit beyond the knob flips above: each is one entry.
CATALOGUE = (
    Entry("hyperparameters_float32", "momentum and eps are rounded to float32 before use (eps {eps:g} becomes "
          "the nearest float32)", problem={"eps": lambda p, a, e: _f32(e), "momentum": lambda p, a, e: _f32(a)},
          when=lambda p, c: p.effective(c)[1] != _f32(p.effective(c)[1]), knob="hyperparameters"),
    Entry("eval_uses_batch_stats", "inference normalizes with the batch statistics",
          conv={"eval_statistics": "batch"}, when=_trains_then_evals),
    Entry("forgot_eval", "inference still runs in training mode (eval() was never called): it normalizes with "
          "the batch statistics and updates the running statistics", conv={"eval_statistics": "train"},
          when=_trains_then_evals),
    Entry("broadcast_last_axis", "the statistics are the right per-channel ones, but are broadcast along the "
          "last axis ({last}) instead of the channel axis", conv={"broadcast_axis": -1}, when=_broadcast_last),
    *(Entry(f"two_pass_var_{dt}", f"the batch statistics are accumulated in {dt} (two-pass: mean, then mean "
            "squared deviation)", conv={"variance": "two_pass"}, when=_narrower_than_input(dt), compute_dtype=dt,
            knob="variance") for dt in ("float32", "float16", "bfloat16")),
)


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
                      compute_dtype=h1.compute_dtype or h2.compute_dtype, knob=f"{h1.knob}+{h2.knob}",
                      changes=h1.changes + h2.changes)


def estimated(problem: Problem, convention: Convention, trace, obs) -> list[Hypothesis]:
    """Hypotheses whose continuous parameters are read off the observation (conformance.explain.estimate), relative to
    (problem, convention) and its oracle `trace`: the per-step weights on the new batch and the factor on
    the running variance's batch variance (from the running-statistics trajectory), and the effective eps
    (from the output). Only estimates that differ from what (problem, convention) already does are returned."""
    from . import estimate

    alpha, eps = problem.effective(convention)
    n = problem.reduced_count
    out: list[Hypothesis] = []
    weights = estimate.step_weights(problem, obs)
    if weights is not None:
        modelled = [w for w, m in zip(trace.weights, problem.modes) if m == "train"]
        factor = estimate.running_var_factor(problem, obs, weights)
        declared_factor = (convention.running_var_factor or
                           (n / (n - 1) if convention.running_var == "unbiased" and n > 1 else 1.0))
        new_weights = len(modelled) == len(weights) and not np.allclose(weights, modelled, rtol=1e-4, atol=1e-7)
        new_factor = factor is not None and abs(factor - declared_factor) > 1e-4 * abs(declared_factor)
        # each estimate alone, then both: the factor is ill-conditioned where the batch variance is small next
        # to the running one, so a trajectory that fits without it must not carry a noisy one
        if new_weights:
            out.append(_trajectory(weights, None, n, alpha))
            # one weight for every step: per-step estimates are noisy where the running statistics have nearly
            # converged to the batch (the same batch every step), a constant is the simpler model
            pooled = estimate.pooled_weight(problem, obs)
            constant = [pooled] * len(weights) if pooled is not None else modelled
            if not np.allclose(weights, weights[0], rtol=1e-4, atol=1e-7) and not np.allclose(
                    constant, modelled, rtol=1e-4, atol=1e-7):
                out.append(_trajectory(constant, None, n, alpha))
        if new_factor:
            out.append(_trajectory(None, factor, n, alpha))
        if new_weights and new_factor:
            out.append(_trajectory(weights, factor, n, alpha))
    fitted = estimate.effective_eps(problem, trace, convention.eps_placement, obs)
    if fitted is not None and abs(fitted - eps) > 1e-3 * max(eps, 1e-12):
        out.append(Hypothesis(
            f"eps~{estimate.nice(fitted)}", f"eps is {estimate.nice(fitted)} (estimated from the output), not {eps:g}",
            lambda p, c, e=fitted: (p.with_(eps=e, momentum=p.effective(c)[0], use_defaults=False), c),
            knob="eps", value=fitted, params=1))
    return out


def _trajectory(weights, factor, n, alpha) -> Hypothesis:
    parts, name = [], []
    if weights is not None:
        same = np.allclose(weights, weights[0], rtol=1e-4, atol=1e-7)
        if same and alpha is not None and abs(weights[0] - (1 - alpha)) <= 1e-4 * max(alpha, 1 - alpha):
            parts.append(f"momentum is read as the weight on the old value: the weight on the new batch is "
                         f"{weights[0]:.3g} (estimated from the running-mean trajectory), not {alpha:g}")
            name.append("momentum_flipped")
        elif same:
            parts.append(f"the weight on the new batch statistic is {weights[0]:.3g} at every step (estimated "
                         f"from the running-mean trajectory), not {_alpha_text(alpha)}")
            name.append(f"alpha~{weights[0]:.3g}")
        else:
            parts.append("the running statistics put weights " + _listed(weights, ", ") +
                         f" on the new batch at training steps 1..{len(weights)} (estimated from the running-mean "
                         f"trajectory; declared {_alpha_text(alpha)})")
            name.append("step_weights~" + _listed(weights, ","))
    if factor is not None:
        parts.append(f"the running variance is fed {factor:.4g} x the biased batch variance (unbiased would be "
                     f"{n / (n - 1):.4g} x)" if n > 1 else f"the running variance is fed {factor:.4g} x the "
                     "biased batch variance")
        recognized = {1.0: "running_var_biased", (n / (n - 1) if n > 1 else np.inf): "running_var_unbiased"}
        name.append(next((v for k, v in recognized.items() if abs(factor - k) <= 1e-4 * k),
                         f"running_var_factor~{factor:.3g}"))

    def apply(p, c):
        changes = {}
        if weights is not None:
            if np.allclose(weights, weights[0], rtol=1e-4, atol=1e-7):
                p = p.with_(momentum=weights[0], eps=p.effective(c)[1], use_defaults=False)
                changes.update(averaging="ema", first_step="update", step_weights=None)
            else:
                changes.update(step_weights=tuple(weights), first_step="update")
        if factor is not None:
            changes["running_var_factor"] = factor
        return p, c.with_(**changes)

    knob = "+".join(k for k, v in (("momentum", weights), ("running_var", factor)) if v is not None)
    same_weights = weights is not None and np.allclose(weights, weights[0], rtol=1e-4, atol=1e-7)
    params = (0 if weights is None else (1 if same_weights else len(weights))) + (factor is not None)
    return Hypothesis("+".join(name), "; ".join(parts), apply, knob=knob, value=weights or factor,
                      changes=len(parts), params=params)


def _listed(weights, sep: str, shown: int = 4) -> str:
    """The weights, the long sequences' tail elided when it repeats one value."""
    text = [f"{w:.3g}" for w in weights]
    if len(text) > shown and len(set(text[shown - 1:])) == 1:
        return sep.join(text[:shown]) + f"{sep}...x{len(text) - shown}"
    return sep.join(text)


def _alpha_text(alpha) -> str:
    return "a cumulative average" if alpha is None else f"{alpha:g}"
