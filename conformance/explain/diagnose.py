"""Say why a check failed, by fitting a model to the whole observation of its case.

The model is the declared Convention plus the case's hyperparameters. Its discrete knobs are searched
(conformance.explain.hypotheses: one change, then two), its continuous parameters (the weight each update put on
the new batch, the factor on the running variance, the effective eps) are estimated from the observation in
closed form (conformance.explain.estimate), under the declared convention and again under every discrete
alternative. A candidate explains the case only if the oracle, run under it, brings EVERY observed quantity
of the case within its bound, the passing ones included (an explanation never contradicts a passing check),
every step of the sequence included. Among those: fewer changes first, named knobs before estimated numbers,
fewer estimated numbers first (one momentum before one weight per step), then the smallest fit ratio (the largest observed/bound ratio over the case). Where nothing fits the case
is "unexplained"; the closest candidate is shown only when it is near (fit ratio within NEAR).

Quantities whose declared bound is ill-posed (characterizations) are not required to fit, except the one
being diagnosed. The result goes into the check record as `diagnosis` and into the failure message.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reference import SECOND_ORDER, simulate
from reference.dtypes import fmt

from . import hypotheses as hyp
from ..core import tolerance
from ..core.compare import compare

NEAR = 10.0  # a "closest" candidate is shown only when its fit ratio is within this factor of the bound


@dataclass
class Evaluation:
    hypothesis: hyp.Hypothesis
    ratios: dict[str, float]  # observed quantity -> observed/bound ratio under this hypothesis
    changes: int = 1
    estimated: bool = False  # has a parameter estimated from the data
    trace: object = field(default=None, repr=False)
    problem: object = field(default=None, repr=False)
    convention: object = field(default=None, repr=False)

    def fits(self, quantity: str) -> bool:
        return self.ratios.get(quantity, np.inf) <= 1.0

    def fit(self, required) -> float:
        """The case's fit ratio: the worst observed/bound ratio over the required quantities. A NaN ratio (a
        NaN bound under this hypothesis) counts as infinite, as compare() ranks it: max() and min() over
        floats would keep or skip a NaN by its position, and a NaN-fit candidate listed first would hide a
        near one from the "closest" line."""
        return max((_nan_worst(self.ratios.get(q, np.inf)) for q in required), default=np.inf)

    def explained(self) -> int:
        return sum(1 for r in self.ratios.values() if r <= 1.0)


def _nan_worst(ratio: float) -> float:
    return np.inf if ratio != ratio else ratio


def _simulate(adapter, problem, convention, obs, compute_dtype=None, quantities=None, give_up=None):
    """(trace, {quantity: observed/bound ratio}) when the oracle runs `convention` on `problem`.
    A name "q@k" restricts q to its step k (the first axis of per-step quantities). `give_up`: (quantities,
    limit), stop comparing once one of those quantities is over `limit` times its bound: the ratios then hold
    the quantities compared so far (see CaseFit)."""
    steps = {}
    for name in quantities or obs.values:
        q, _, k = name.partition("@")
        steps[q] = int(k) if k else None
    wanted = [q for q in steps if q in obs.values]
    second = any(q in SECOND_ORDER for q in wanted)
    try:
        with np.errstate(all="ignore"):  # hypotheses may overflow a narrow format: that is a misfit, not an error
            trace = simulate(problem, convention, compute_dtype=compute_dtype, second_order=second)
            bounds = _bounds(adapter, problem, trace, convention)
    except (ValueError, ZeroDivisionError, FloatingPointError, IndexError):
        return None, {}
    out = {}
    for q in wanted:
        if q not in trace.quantities or q in trace.not_applicable or q not in bounds:
            continue
        if np.shape(trace[q]) != np.shape(obs.values[q]):
            out[q] = float("inf")
            continue
        exp, got, bound = trace[q], obs.values[q], np.broadcast_to(bounds[q].values, np.shape(trace[q]))
        if steps[q] is not None:
            exp, got, bound = exp[steps[q]:steps[q] + 1], got[steps[q]:steps[q] + 1], bound[steps[q]:steps[q] + 1]
        with np.errstate(all="ignore"):
            c = compare(q, exp, got, bound, expected_dtype=obs.dtypes[q], observed_dtype=obs.dtypes[q],
                        axis=problem.axis)
        out[q] = c.ratio if c.problem is None else float("inf")
        if give_up is not None and q in give_up[0] and out[q] > give_up[1]:
            break
    return trace, out


def _bounds(adapter, problem, trace, convention):
    """The error bounds: the adapter's own model when it has one (conformance.explain.explain: printed digits),
    else the tolerance model for its declared precision."""
    own = getattr(adapter, "bounds", None)
    if own is not None:
        return own(problem, trace, convention)
    return tolerance.bounds(problem, trace, convention, adapter.precision(problem))


def ratios_under(adapter, problem, convention, obs, compute_dtype=None, quantities=None) -> dict[str, float]:
    """Observed/bound ratio of each observed quantity when the oracle runs `convention` on `problem`."""
    return _simulate(adapter, problem, convention, obs, compute_dtype, quantities)[1]


def _evaluate(adapter, problem, convention, obs, h: hyp.Hypothesis, changes=None, estimated=False,
              give_up=None) -> Evaluation:
    changes = h.changes if changes is None else changes
    try:
        p, c = h(problem, convention)
    except (ValueError, TypeError):
        return Evaluation(h, {}, changes, estimated)
    trace, ratios = _simulate(adapter, p, c, obs, h.compute_dtype, give_up=give_up)
    return Evaluation(h, ratios, changes, estimated, trace, p, c)


def _then(h1: hyp.Hypothesis, h2: hyp.Hypothesis) -> hyp.Hypothesis:
    """h2 applied on top of h1 (h2 estimated under h1)."""

    def apply(p, c):
        return h2.apply(*h1.apply(p, c))

    return hyp.Hypothesis(f"{h1.name}+{h2.name}", f"{h1.sentence}, and {h2.sentence}", apply,
                          compute_dtype=h1.compute_dtype, knob=f"{h1.knob}+{h2.knob}", changes=h1.changes + h2.changes,
                          params=h1.params + h2.params)


class CaseFit:
    """Every candidate evaluated on one (adapter, problem, observation), shared by the case's quantities.

    A candidate stops being compared at its first required quantity over NEAR times its bound (`give_up`): its
    fit ratio is then over NEAR for every quantity diagnosed, so it neither fits nor is shown as the closest,
    and nothing reads its other ratios (the declared convention's are always complete). The diagnosis is the
    same; most candidates of a pair search are far off, and their comparisons were a third of its time."""

    def __init__(self, adapter, problem, obs, trace=None, bounds=None):
        self.adapter, self.problem, self.obs = adapter, problem, obs
        conv = adapter.convention
        if trace is None or bounds is None:
            trace, self.declared = _simulate(adapter, problem, conv, obs)
            bounds = _bounds(adapter, problem, trace, conv) if trace else {}
        else:
            self.declared = _simulate(adapter, problem, conv, obs)[1]
        self.trace = trace
        self.ill_posed = {q for q, b in (bounds or {}).items() if getattr(b, "ill_posed", None)}
        self.required = [q for q in self.declared if q not in self.ill_posed]
        self.give_up = (frozenset(self.required), NEAR)
        discrete = [self._candidate(h) for h in hyp.for_declared(problem, conv)]
        estimated = [self._candidate(h, estimated=True)
                     for h in hyp.estimated(problem, conv, trace, obs)] if trace is not None else []
        self.singles = discrete + estimated
        self.pairs: list[Evaluation] | None = None

    def _candidate(self, h: hyp.Hypothesis, estimated=False) -> Evaluation:
        """`h` evaluated on this case, its comparison given up when it is far (above)."""
        return _evaluate(self.adapter, self.problem, self.adapter.convention, self.obs, h, estimated=estimated,
                         give_up=self.give_up)

    def search_pairs(self) -> list[Evaluation]:
        if self.pairs is None:
            discrete = [e for e in self.singles if not e.estimated]
            hs = [e.hypothesis for e in discrete]
            combos = [hyp.combine(x, y) for i, x in enumerate(hs) for y in hs[i + 1:]]
            pairs = [self._candidate(h) for h in combos if h is not None]
            # continuous parameters refitted under every discrete alternative (a wrong eps together with the
            # unbiased normalization, a momentum estimate under a biased running variance, ...)
            for e in discrete:
                if e.trace is None:
                    continue
                for h in hyp.estimated(e.problem, e.convention, e.trace, self.obs):
                    pairs.append(self._candidate(_then(e.hypothesis, h), estimated=True))
            self.pairs = pairs
        return self.pairs

    def required_for(self, quantity: str) -> list[str]:
        return self.required + ([quantity] if quantity not in self.required else [])


_cache: dict = {"key": None, "fit": None}


def case_fit(adapter, problem, obs, trace=None, bounds=None) -> CaseFit:
    key = (adapter, problem, obs)  # held, not id()s: a freed problem's id can be reused by the next case's
    if _cache["key"] is None or any(a is not b for a, b in zip(_cache["key"], key)):
        _cache["key"], _cache["fit"] = key, CaseFit(adapter, problem, obs, trace, bounds)
    return _cache["fit"]


def _rank(required):
    return lambda e: (e.changes, e.estimated, e.hypothesis.params, e.fit(required))


def diagnose(adapter, problem, quantity, obs, trace=None, bounds=None, *, pairs: bool = True) -> dict:
    """Explain one failing quantity by what explains its whole case. `pairs=False` stops after the single
    changes: the engine asks for the pair search only for failures, not for characterizations (which never
    fail), and does not diagnose registered deviations at all (their entry is the explanation)."""
    fit = case_fit(adapter, problem, obs, trace, bounds)
    required = fit.required_for(quantity)
    declared = fit.declared
    searched = list(fit.singles)
    fitting = [e for e in searched if e.fit(required) <= 1.0]
    if pairs and not any(e.changes == 1 for e in fitting):  # no one change fits: two named ones may
        searched += fit.search_pairs()
        fitting = [e for e in searched if e.fit(required) <= 1.0]
    if not fitting:
        closest = min(searched, key=lambda e: e.fit(required), default=None)
        near = ""
        if closest is not None and closest.fit(required) <= NEAR:
            near = (f"; closest: {closest.hypothesis.sentence} (fit ratio {closest.fit(required):.3g}, worst "
                    f"{_worst(closest, required)})")
        depth = "no single change and no pair of changes" if pairs else "no single change"
        summary = (f"unexplained: {depth} to the declared convention brings every quantity of the case within "
                   f"its bound{near}" + ("" if pairs else " (pairs of changes are searched for failures only)")
                   + _nonfinite_note(fit, quantity))
        return {"summary": summary, "hypothesis": None, "explained": False,
                "declared_ratio": declared.get(quantity)}
    best = min(fitting, key=_rank(required))
    h = best.hypothesis
    ratio = best.fit(required)
    changed = sorted(q for q in required if declared.get(q, np.inf) > 1.0)
    others = [e.hypothesis.name for e in sorted(fitting, key=_rank(required)) if e is not best][:5]
    # as simple as the best and also fitting: the case cannot tell them apart (one training step cannot
    # separate a cumulative average from replacing the statistics)
    alike = [e.hypothesis.name for e in fitting if e is not best and (e.changes, e.estimated) == (best.changes,
                                                                                                  best.estimated)]
    summary = (f"the whole case fits if {h.sentence} (fit ratio {ratio:.3g} over {len(required)} quantities; "
               f"{quantity} {best.ratios.get(quantity, np.nan):.3g} vs {declared.get(quantity, np.nan):.3g} under "
               f"the declared convention; it changes {', '.join(changed) or quantity})")
    if alike:
        summary += f"; this case cannot tell it from: {', '.join(alike[:4])}"
    if h.knob and hasattr(adapter.convention, h.knob):
        summary += f"; declared {h.knob} = {getattr(adapter.convention, h.knob)!r}"
    return {"summary": summary, "hypothesis": h.name, "sentence": h.sentence, "changes": best.changes,
            "explained": True, "ratio": float(best.ratios.get(quantity, ratio)), "fit_ratio": float(ratio),
            "declared_ratio": declared.get(quantity), "explains": sorted(required), "also_fit": others,
            "indistinguishable": alike, "estimated": best.estimated}


def _worst(e: Evaluation, required) -> str:
    q = max(required, key=lambda q: _nan_worst(e.ratios.get(q, np.inf)))
    return f"{q} {e.ratios.get(q, np.inf):.3g}"


def _nonfinite_note(fit: CaseFit, quantity: str) -> str:
    """What the values say where no convention fits: a NaN or Inf the framework returned where the oracle's
    value is finite and representable in the quantity's format is an intermediate that overflowed (or divided
    by zero) in a narrower format than the result needs, whatever the formula."""
    got = fit.obs.values.get(quantity)
    if fit.trace is None or got is None or quantity not in fit.trace.quantities:
        return ""
    got, exp = np.asarray(got, dtype=np.float64), np.asarray(fit.trace[quantity], dtype=np.float64)
    if got.shape != exp.shape:
        return ""
    bad = ~np.isfinite(got) & np.isfinite(exp)
    if not bad.any():
        return ""
    name = fit.obs.dtypes.get(quantity, "")
    largest = float(np.max(np.abs(exp[bad])))
    try:
        limit = fmt(name).max_value
    except ValueError:
        return ""
    if largest > limit:
        return (f"; {quantity} is non-finite at {int(bad.sum())} elements where the oracle's value ({largest:.3g}) "
                f"exceeds {name}'s largest number: an overflow the format itself forces")
    return (f"; {quantity} is non-finite at {int(bad.sum())} of {bad.size} elements where the oracle's is finite and "
            f"representable in {name} (largest {largest:.3g} < {limit:.6g}): an intermediate overflowed (or divided "
            f"by zero) in a narrower format than the result needs")
