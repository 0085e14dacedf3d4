"""Cross-framework tables from a run's records: equivalence under mapped hyperparameters, and the defaults
hazard (each framework's own defaults on the same input). Every difference is named by the convention
knobs that cause it, found by switching one knob at a time in the oracle.

Output tables use the report's generic form: {"id", "title", "description", "columns", "rows"}.
"""
from __future__ import annotations

import numpy as np

from reference import Convention, simulate, unit_roundoff

from ..core.paths import label
from ..core.cases import CASES
from ..core.catalogue import load, spec
from ..core.inputs import materialize

EQUIVALENCE_CASES = ("f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0", "f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0")
DEFAULTS_CASES = ("f32-4x3x2x3-ax1-T3E-defaults-sc0.03-s0", "f64-8x4-ax1-T3E-defaults-s0")
QUANTITIES = ("y", "running_mean", "running_var", "dx", "dgamma")
REFERENCE_ADAPTER = "torch.nn.BatchNorm"
IGNORED_KNOBS = ("momentum_form", "default_momentum", "default_eps", "variance", "stats_dtype")


def _convention(adapter_name: str, known: dict | None = None) -> Convention | None:
    if known and adapter_name in known:
        return known[adapter_name]
    try:
        spec(adapter_name)
    except KeyError:
        return None
    try:
        return load(adapter_name).convention
    except Exception:  # noqa: BLE001  (an adapter module that cannot even be imported is simply absent)
        return None


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.size == 0:
        return float("nan")
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


def _signed_change(value: float, reference: float) -> float:
    """The change of the value shown relative to the reference's, with its sign."""
    return (value - reference) / abs(reference) if reference != 0 else (0.0 if value == 0 else float("inf"))


def _numbers(values: list) -> list[float]:
    return [float(v) if not isinstance(v, str) else float(v.strip("'")) for v in values]


def knob_differences(problem, conv_a: Convention, conv_b: Convention) -> dict[str, str]:
    """Knobs (and effective hyperparameters) that differ between two conventions on this problem."""
    out = {}
    alpha_a, eps_a = problem.effective(conv_a)
    alpha_b, eps_b = problem.effective(conv_b)
    if alpha_a != alpha_b:
        out["momentum"] = f"weight on the new batch {_fmt(alpha_a)} vs {_fmt(alpha_b)}"
    if eps_a != eps_b:
        out["eps"] = f"eps {eps_a:g} vs {eps_b:g}"
    for k, (va, vb) in conv_a.differences(conv_b).items():
        if k not in IGNORED_KNOBS:
            out[k] = f"{k.replace('_', ' ')} {va} vs {vb}"
    return out


def _fmt(alpha) -> str:
    return "cumulative" if alpha is None else f"{alpha:g}"


def explain(problem, conv_a: Convention, conv_b: Convention, quantity: str) -> list[str]:
    """The knobs that, switched alone from a's setting to b's, change `quantity` (relative change > 1e-6)."""
    base = simulate(problem, conv_a, second_order=False)
    if quantity not in base.quantities or quantity in base.not_applicable:
        return []
    alpha_b, eps_b = problem.effective(conv_b)
    out = []
    for k, text in knob_differences(problem, conv_a, conv_b).items():
        p, c = problem, conv_a
        if k == "momentum":
            p = problem.with_(momentum=alpha_b, eps=problem.effective(conv_a)[1], use_defaults=False)
        elif k == "eps":
            p = problem.with_(eps=eps_b, momentum=problem.effective(conv_a)[0], use_defaults=False)
        else:
            c = conv_a.with_(**{k: getattr(conv_b, k)})
        try:
            with np.errstate(all="ignore"):
                t = simulate(p, c, second_order=False)
        except (ValueError, KeyError):
            continue
        if _rel(t[quantity], base[quantity]) > 1e-6:
            out.append(text)
    return out


def _by_case(records):
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for r in records:
        out.setdefault(r["case"], {}).setdefault(label(r), {})[r["quantity"]] = r
    return out


def equivalence(records: list[dict], conventions: dict | None = None) -> list[dict]:
    tables = []
    grouped = _by_case(records)
    for case_id in EQUIVALENCE_CASES:
        per_adapter = grouped.get(case_id)
        if not per_adapter or case_id not in CASES:
            continue
        ref = REFERENCE_ADAPTER if REFERENCE_ADAPTER in per_adapter else sorted(per_adapter)[0]
        ref_conv = _convention(ref, conventions)
        problem = materialize(CASES[case_id])
        rounding = 1000 * unit_roundoff(problem.dtype)  # same arithmetic, different order: a few hundred ulp
        rows = []
        for name in sorted(per_adapter):
            conv = _convention(name, conventions)
            row = [name]
            for q in QUANTITIES:
                mine, theirs = per_adapter[name].get(q), per_adapter[ref].get(q)
                if not mine or not theirs or not mine.get("values") or not theirs.get("values"):
                    row.append("—")
                    continue
                diff = _rel(_numbers(mine["values"]["observed"]), _numbers(theirs["values"]["observed"]))
                why = explain(problem, ref_conv, conv, q) if (conv and ref_conv and name != ref) else []
                if mine["verdict"] not in ("pass", "characterized") or theirs["verdict"] not in ("pass",
                                                                                                "characterized"):
                    # a declared knob that explains the main difference is said, with the verdict beside it
                    if why:
                        row.append(f"{diff:.2g} ({'; '.join(why)}; {mine['verdict']} beyond that)"
                                   if mine["verdict"] not in ("pass", "characterized") else
                                   f"{diff:.2g} ({'; '.join(why)})")
                    else:
                        row.append(f"{diff:.2g} — unexplained: {mine['adapter']} {mine['verdict']}"
                                   if mine["verdict"] not in ("pass", "characterized") else f"{diff:.2g}")
                    continue
                if why:
                    row.append(f"{diff:.2g} ({'; '.join(why)})")
                elif diff == 0 or diff <= rounding:
                    row.append(f"{diff:.2g}" + (" (rounding)" if diff else ""))
                else:
                    row.append(f"{diff:.2g} — unexplained by the declared conventions")
            rows.append(row)
        tables.append({
            "id": f"equivalence-{case_id}", "title": f"Same case, every framework: {case_id}",
            "description": f"Largest relative difference of each framework's observed values from {ref}'s, "
                           "with the declared convention knobs that explain it (each checked with the oracle "
                           "by switching that knob alone). Hyperparameters are mapped to each framework's "
                           "native form, so only conventions should separate them.",
            "columns": ["adapter"] + list(QUANTITIES), "rows": rows})
    return tables


def defaults_hazard(records: list[dict], conventions: dict | None = None) -> list[dict]:
    tables = []
    grouped = _by_case(records)
    for case_id in DEFAULTS_CASES:
        per_adapter = grouped.get(case_id)
        if not per_adapter or case_id not in CASES:
            continue
        # only adapters that ran the case with defaults of their own (tf.nn and haiku have none: the case is
        # skipped); the reference is one of them, so a selection without torch (e.g. --frameworks tf) works
        per_adapter = {n: recs for n, recs in per_adapter.items() if _convention(n, conventions) is not None
                       and not all(r["verdict"] == "skip" for r in recs.values())}
        if not per_adapter:
            continue
        ref = REFERENCE_ADAPTER if REFERENCE_ADAPTER in per_adapter else sorted(per_adapter)[0]
        ref_conv = _convention(ref, conventions)
        problem = materialize(CASES[case_id])
        rows = []
        for name in sorted(per_adapter):
            conv = _convention(name, conventions)
            recs = per_adapter[name]
            alpha, eps = problem.effective(conv)
            cells = [name, f"{conv.default_momentum} ({conv.momentum_form.replace('_', ' ')})", _fmt(alpha),
                     f"{eps:g}", conv.running_var]
            for q in ("running_mean", "running_var", "y"):
                rec, base = recs.get(q), per_adapter[ref].get(q)
                if not rec or not rec.get("values"):
                    cells.append("—")
                    continue
                mine = _numbers(rec["values"]["observed"])
                d = _signed_change(mine[0], _numbers(base["values"]["observed"])[0]) if base and base.get(
                    "values") else float("nan")
                cells.append(f"{mine[0]:.5g} ({d:+.1%} vs {ref.split('.')[0]})" if name != ref else f"{mine[0]:.5g}")
            why = sorted({w for q in ("running_mean", "running_var", "y") for w in
                          (explain(problem, ref_conv, conv, q) if name != ref and ref_conv else [])})
            cells.append("; ".join(why) or ("reference" if name == ref else "same conventions"))
            rows.append(cells)
        steps = CASES[case_id].modes.count("train")
        tables.append({
            "id": f"defaults-{case_id}", "title": f"Defaults hazard: each framework's own defaults, {case_id}",
            "description": f"Every framework with its default momentum and eps on the same data, {steps} training "
                           "steps then inference. Values are channel 0 of the running statistics after the last "
                           f"step and the first output element; the difference is relative to {ref}.",
            "columns": ["adapter", "default momentum (native)", "weight on new", "eps", "running variance",
                        "running_mean[0]", "running_var[0]", "y[0] (inference)", "why it differs"],
            "rows": rows})
    return tables


def tables(records: list[dict], conventions: dict | None = None) -> list[dict]:
    """Every analysis table the records support (conventions, equivalence, defaults hazard).
    `conventions` maps adapter names outside the catalogue (tests) to their declared Convention."""
    from .infer import table as conventions_table

    out = []
    conv = conventions_table(records)
    if conv["rows"]:
        out.append(conv)
    return out + equivalence(records, conventions) + defaults_hazard(records, conventions)
