"""Say why a check failed: search the alternative explanations (conformance.hypotheses) with the oracle and
name the simplest one that fits the observation within the error bound, or say that none does.

For a failing quantity, every single-change hypothesis is evaluated; if none fits, every pair is. Among
those that fit the failing quantity, the winner explains the most of the case's other observed quantities,
then is the simplest (one change before two), then has the smallest observed/bound ratio. The result goes
into the check record as `diagnosis` and into the failure message.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reference import SECOND_ORDER, simulate

from . import hypotheses as hyp
from . import tolerance
from .compare import compare


@dataclass
class Evaluation:
    hypothesis: hyp.Hypothesis
    ratios: dict[str, float]  # observed quantity -> observed/bound ratio under this hypothesis

    def fits(self, quantity: str) -> bool:
        return self.ratios.get(quantity, np.inf) <= 1.0

    def explained(self) -> int:
        return sum(1 for r in self.ratios.values() if r <= 1.0)


def ratios_under(adapter, problem, convention, obs, compute_dtype=None, quantities=None) -> dict[str, float]:
    """Observed/bound ratio of each observed quantity when the oracle runs `convention` on `problem`.
    A name "q@k" restricts q to its step k (the first axis of per-step quantities)."""
    steps = {}
    for name in quantities or obs.values:
        q, _, k = name.partition("@")
        steps[q] = int(k) if k else None
    wanted = [q for q in steps if q in obs.values]
    second = any(q in SECOND_ORDER for q in wanted)
    try:
        with np.errstate(all="ignore"):  # hypotheses may overflow a narrow format: that is a misfit, not an error
            trace = simulate(problem, convention, compute_dtype=compute_dtype, second_order=second)
            bounds = tolerance.bounds(problem, trace, convention, adapter.precision(problem))
    except (ValueError, ZeroDivisionError, FloatingPointError, IndexError):
        return {}
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
    return out


class _CaseCache:
    """Hypothesis evaluations of the last (adapter, problem): a failing case usually fails in several
    quantities, and each is diagnosed from the same evaluations."""

    key = None
    singles: list[Evaluation] = []
    pairs: list[Evaluation] | None = None
    declared: dict[str, float] = {}


_cache = _CaseCache()


def _evaluate(adapter, problem, obs, h: hyp.Hypothesis) -> Evaluation:
    p, c = h(problem, adapter.convention)
    return Evaluation(h, ratios_under(adapter, p, c, obs, h.compute_dtype))


def diagnose(adapter, problem, quantity, obs, trace=None, bounds=None, *, pairs: bool = True) -> dict:
    """Explain one failing quantity. `pairs=False` stops after the single changes: the engine asks for the pair
    search (about 15x the cost of the singles) only for failures, not for characterizations (which never fail),
    and does not diagnose registered deviations at all (their entry is the explanation)."""
    key = (adapter, problem, obs)  # held, not id()s: a freed problem's id can be reused by the next case's
    if _cache.key is None or any(a is not b for a, b in zip(_cache.key, key)):
        _cache.key = key
        _cache.singles = [_evaluate(adapter, problem, obs, h) for h in hyp.for_declared(problem, adapter.convention)]
        _cache.pairs = None
        _cache.declared = ratios_under(adapter, problem, adapter.convention, obs)
    declared = _cache.declared
    fitting = [e for e in _cache.singles if e.fits(quantity)]
    size = 1
    if not fitting and pairs:
        if _cache.pairs is None:
            hs = [e.hypothesis for e in _cache.singles]
            combos = [hyp.combine(a, b) for i, a in enumerate(hs) for b in hs[i + 1:]]
            _cache.pairs = [_evaluate(adapter, problem, obs, h) for h in combos if h is not None]
        fitting = [e for e in _cache.pairs if e.fits(quantity)]
        size = 2
    if not fitting:
        searched = _cache.singles + (_cache.pairs if pairs else [])
        closest = min(searched, key=lambda e: e.ratios.get(quantity, np.inf), default=None)
        near = (f"; closest: {closest.hypothesis.sentence} (ratio {closest.ratios.get(quantity, np.inf):.3g})"
                if closest else "")
        summary = (f"unexplained: no single change and no pair of changes to the declared convention fits "
                   f"{quantity}{near}" if pairs else
                   f"no single change to the declared convention fits {quantity} (pairs of changes are searched "
                   f"for failures only){near}")
        return {"summary": summary, "hypothesis": None, "explained": False, "declared_ratio": declared.get(quantity)}
    best = min(fitting, key=lambda e: (-e.explained(), e.ratios[quantity]))
    others = [e.hypothesis.name for e in fitting if e is not best][:5]
    h = best.hypothesis
    explains = sorted(q for q, r in best.ratios.items() if r <= 1.0)
    summary = (f"{quantity} fits if {h.sentence} (observed/bound ratio {best.ratios[quantity]:.3g}; "
               f"{declared.get(quantity, float('nan')):.3g} under the declared convention)")
    if h.knob and hasattr(adapter.convention, h.knob):
        summary += f"; declared {h.knob} = {getattr(adapter.convention, h.knob)!r}"
    return {"summary": summary, "hypothesis": h.name, "sentence": h.sentence, "changes": size,
            "explained": True, "ratio": best.ratios[quantity], "declared_ratio": declared.get(quantity),
            "explains": explains, "also_fit": others}
