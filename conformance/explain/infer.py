"""Convention inference: what an adapter *does*, read off its observations on the discriminating cases.

Each knob has candidate settings; the oracle is run under each, and the setting whose predictions fit the
observed quantities (observed/bound ratio <= 1) is what the framework does. Where a number can be read off
directly it is too: the weight the first update put on the new batch statistic, the eps that reproduces the
training output. `evidence()` runs inside the adapter's worker (where the raw observation is) and its small
dict travels in the case's records; `table()` turns records into the declared-vs-inferred table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reference import to_channels

from ..core.paths import label
from .diagnose import ratios_under


@dataclass(frozen=True)
class Setting:
    label: str
    conv: dict | None = None  # Convention changes
    problem: dict | None = None  # Problem changes
    compute_dtype: str | None = None


@dataclass(frozen=True)
class Knob:
    name: str  # column in the table
    case_knob: str | None  # the discriminating case's `knob` that observes it (None: see EVAL_GRADIENT_CASE)
    declared: str  # Convention field (or pseudo) whose declared value is compared
    settings: tuple[Setting, ...]
    quantities: tuple[str, ...]  # "q@k": only step k of q (keeps other knobs' effects out of the evidence)
    tightest_first: bool = False  # settings are listed from the tightest error model: the first that fits wins


KNOBS = (
    Knob("momentum form", "momentum_form", "momentum_form",
         (Setting("as declared"), Setting("flipped", problem={"flip": True})), ("running_mean",)),
    Knob("running variance", "running_var", "running_var",
         (Setting("unbiased", {"running_var": "unbiased"}), Setting("biased", {"running_var": "biased"})),
         ("running_var",)),
    Knob("training normalizes with", "normalize_var", "normalize_var",
         (Setting("biased", {"normalize_var": "biased"}), Setting("unbiased", {"normalize_var": "unbiased"})),
         ("y",)),
    Knob("training output uses", "train_normalizer", "train_normalizer",
         (Setting("batch", {"train_normalizer": "batch"}), Setting("running", {"train_normalizer": "running"})),
         ("y",)),
    Knob("first update", "first_step", "first_step",
         (Setting("update", {"first_step": "update"}), Setting("replace", {"first_step": "replace"})),
         ("running_mean", "running_var")),
    Knob("averaging", "debias", "averaging",
         (Setting("ema", {"averaging": "ema"}), Setting("debiased_ema", {"averaging": "debiased_ema"})),
         ("running_mean", "running_var")),
    Knob("momentum=None", "averaging", "averaging",
         (Setting("cumulative", {"averaging": "cumulative"}), Setting("ema", {"averaging": "ema"},
                                                                      {"momentum": 0.1})),
         ("running_mean", "running_var")),
    Knob("eps placement", "eps_placement", "eps_placement",
         (Setting("inside_sqrt", {"eps_placement": "inside_sqrt"}),
          Setting("outside_sqrt", {"eps_placement": "outside_sqrt"})), ("y",)),
    Knob("batch variance algorithm", "variance", "variance",
         (Setting("two_pass", {"variance": "two_pass"}), Setting("fast", {"variance": "fast"}, None, "float32"),
          Setting("fast_clamped", {"variance": "fast_clamped"}, None, "float32")),
         ("y@0", "batch_var"), tightest_first=True),
    Knob("running statistics stored in", "stats_dtype", "stats_dtype",
         (Setting("input dtype", {"stats_dtype": None}), Setting("float16", {"stats_dtype": "float16"}),
          Setting("bfloat16", {"stats_dtype": "bfloat16"})), ("running_mean", "running_var")),
    Knob("inference gradient", None, "eval_gradient",
         (Setting("statistics constant"), Setting("through batch statistics", None, {"track_running_stats": False})),
         ("dx",)),
)
BY_CASE_KNOB = {k.case_knob: k for k in KNOBS if k.case_knob}
EVAL_GRADIENT_CASE = "f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0"


def _apply(setting: Setting, problem, convention):
    p, c = problem, convention
    if setting.conv:
        c = c.with_(**setting.conv)
    if setting.problem:
        changes = dict(setting.problem)
        if changes.pop("flip", False):
            alpha, eps = problem.effective(convention)
            changes.update(momentum=1.0 - alpha, eps=eps, use_defaults=False)
        p = p.with_(**changes)
    return p, c


def _declared_label(knob: Knob, adapter) -> str:
    if knob.declared == "eval_gradient":
        return "statistics constant"
    value = getattr(adapter.convention, knob.declared)
    if knob.declared == "stats_dtype":
        return "input dtype" if value is None else value
    if knob.name == "momentum=None":
        return "cumulative"  # an adapter that runs a momentum=None case claims the cumulative average
    return str(value)


def _fit_alpha(problem, obs) -> float | None:
    """The weight the first training update put on the new batch mean, read off the observation."""
    if "running_mean" not in obs.values or problem.modes[0] != "train":
        return None
    from reference import moments

    mu = moments(problem.xs[0], problem.axis)[0]
    r0, r1 = problem.running_mean, obs.values["running_mean"][0]
    d = mu - r0
    ok = np.abs(d) > 1e-3 * np.max(np.abs(d))
    return float(np.median((r1[ok] - r0[ok]) / d[ok])) if ok.any() else None


def _fit_eps(problem, obs) -> float | None:
    """The eps that reproduces the first (training) step's output: ((gamma (x - mu)) / (y - beta))^2 - var."""
    if problem.modes[0] != "train" or "y" not in obs.values:
        return None
    from reference import moments

    x = problem.xs[0]
    mu, var = moments(x, problem.axis)
    nd, ax = x.ndim, problem.axis
    g = to_channels(problem.gamma_or_ones(), nd, ax)
    b = to_channels(problem.beta_or_zeros(), nd, ax)
    num = g * (x - to_channels(mu, nd, ax))
    den = obs.values["y"][0] - b
    with np.errstate(all="ignore"):
        est = (num / den) ** 2 - to_channels(var, nd, ax)
    big = np.abs(num) > 0.5 * np.max(np.abs(num))  # far from the centre: the estimate is well-conditioned
    est = est[big & np.isfinite(est)]
    return float(np.median(est)) if est.size else None


def evidence(adapter, case, problem, obs) -> dict | None:
    """What this case's observation says about the adapter's conventions (None if the case says nothing)."""
    knob = BY_CASE_KNOB.get(case.knob) if case.knob else None
    if knob is None and case.id == EVAL_GRADIENT_CASE:
        knob = next(k for k in KNOBS if k.declared == "eval_gradient")
    if knob is None and case.knob != "eps":
        return None
    out: dict = {"case": case.id}
    if case.knob == "eps":
        fitted = _fit_eps(problem, obs)
        out.update(knob="effective eps", declared=f"{problem.eps:g}",
                   inferred=(f"{fitted:.3g}" if fitted is not None else None), candidates={})
        if fitted is not None:
            out["agrees"] = abs(fitted - problem.eps) <= 0.05 * problem.eps
        return out
    ratios = {}
    for s in knob.settings:
        p, c = _apply(s, problem, adapter.convention)
        r = ratios_under(adapter, p, c, obs, s.compute_dtype, quantities=knob.quantities)
        ratios[s.label] = max(r.values()) if r else None
    declared = _declared_label(knob, adapter)
    if knob.case_knob == "momentum_form":  # the settings are relative to the declaration: name them
        other = "weight_on_old" if declared == "weight_on_new" else "weight_on_new"
        ratios = {declared: ratios["as declared"], other: ratios["flipped"]}
    fitting = [k for k, v in ratios.items() if v is not None and v <= 1.0]
    approximate = False
    if knob.tightest_first and fitting:
        inferred = fitting[0]
        # settings that predict the same numbers here cannot be told apart (flax's clamped E[x^2] - E[x]^2
        # equals the unclamped one unless a variance goes negative): the declared one is not contradicted
        if declared in fitting and ratios[declared] == ratios[inferred]:
            inferred = declared
    elif declared in fitting:
        inferred = declared
    elif fitting:
        inferred = min(fitting, key=ratios.get)
    else:  # nothing fits (another deviation is in play): name the setting that is closer by 100x, if any
        ranked = sorted((v, k) for k, v in ratios.items() if v is not None)
        inferred = ranked[0][1] if len(ranked) > 1 and ranked[0][0] * 100 < ranked[1][0] else None
        approximate = inferred is not None
    out.update(knob=knob.name, declared=declared, inferred=inferred, approximate=approximate,
               candidates={k: (None if v is None else float(v)) for k, v in ratios.items()})
    out["agrees"] = None if inferred is None else inferred == declared  # not identified is not agreement
    if knob.case_knob == "momentum_form":
        alpha = _fit_alpha(problem, obs)
        out["alpha_observed"] = alpha
    return out


def number(v) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def table(records: list[dict], meta_adapters: dict | None = None) -> dict:
    """The declared-vs-inferred table (generic analysis-table form) from records carrying `evidence`."""
    cells: dict[str, dict[str, str]] = {}
    disagreements = []
    for r in records:
        ev = r.get("evidence")
        if not ev:
            continue
        row = cells.setdefault(label(r), {})  # per execution path
        if ev["knob"] in row:
            continue
        approx = "≈ " if ev.get("approximate") else ""
        if ev["inferred"] is None or ev.get("agrees") is None:
            text = f"{ev['declared']} / not identified"
        elif ev.get("agrees"):
            text = f"{approx}{ev['inferred']} ✓"
        else:
            text = f"declared {ev['declared']}, does {approx}{ev['inferred']} ✗"
            disagreements.append(f"{label(r)}: {ev['knob']} declared {ev['declared']}, observed {ev['inferred']}")
        alpha = number(ev.get("alpha_observed"))  # stored non-finite values are the strings "nan", "inf"
        if alpha is not None:
            text += f" (α = {alpha:.3g})"
        row[ev["knob"]] = text
    columns = [k.name for k in KNOBS] + ["effective eps"]
    used = [c for c in columns if any(c in row for row in cells.values())]
    rows = [[name] + [row.get(c, "—") for c in used] for name, row in sorted(cells.items())]
    return {"id": "conventions", "title": "Conventions: declared vs inferred",
            "description": "Each cell: what the framework was observed to do on the knob's discriminating case "
                           "(✓ = as declared). A ✗ is a finding; 'not identified' means the observation does not "
                           "decide (neither agreement nor disagreement); '—' means the adapter cannot run that "
                           "case.",
            "columns": ["adapter"] + used, "rows": rows, "disagreements": disagreements}
