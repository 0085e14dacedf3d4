"""Carry trained BatchNorm state from one framework to another: names, order, dtype, counters, and the running
variance's estimator. Imports no framework (files go through adapters.state_io, which imports lazily).

Two purposes, and the conversion says which it serves:

  inference  the target's inference must reproduce the source's: gamma, beta and the running statistics are
             copied as they are (inference normalizes with them; no estimator enters). What differs is only
             hyperparameters (eps, axis), which `bnconform port` prints.
  training   the target's state must be what the TARGET would hold after the same training (to continue
             training there, or to compare with a model trained there). The running mean is the same; the
             running variance carries the estimator each update fed in. After T steps with weight-on-old
             m = 1 - alpha from R0 with n elements per channel in every step:
                 R = m^T R0 + sum_k (1 - m) m^(T-k) B_k,     B_unbiased = n/(n-1) B_biased
             so only the part R - m^T R0 carries an estimator, and exactly
                 R_unbiased = R_biased + (R_biased - m^T R0) / (n - 1)
                 R_biased   = R_unbiased - (R_unbiased - m^T R0) / n.
             (torch's cumulative average, momentum=None, gives R0 no weight after the first step: w0 = 0.)
             A plain n/(n-1) rescale of R is this only when m^T R0 is negligible. When n varied between steps,
             or T or n is unknown, the correction is an approximation and the result says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adapters import state_io
from reference import Convention

from ..core.catalogue import load, spec


class StateError(ValueError):
    """Bad state input (no BatchNorm state, mismatched shapes, impossible history): one line for the user."""


@dataclass(frozen=True)
class History:
    """What the exact estimator correction needs about the training that produced the state."""

    n: int | None = None  # elements reduced per channel in every training step (N x spatial)
    steps: int | None = None  # training steps T since the initial statistics
    initial_var: float = 1.0  # R0 (every framework's default initial running variance is 1)
    n_varied: bool = False  # n was not the same in every step (last batch smaller, ...): approximate

    def validate(self) -> None:
        if self.n is not None and (not isinstance(self.n, int) or self.n < 2):
            raise StateError(f"n must be an integer >= 2 (elements per channel in a training step), not {self.n!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise StateError(f"steps must be a non-negative integer, not {self.steps!r}")
        if not (isinstance(self.initial_var, (int, float)) and math.isfinite(self.initial_var)
                and self.initial_var >= 0):
            raise StateError(f"the initial running variance must be finite and >= 0, not {self.initial_var!r}")


@dataclass
class Converted:
    layers: dict[str, dict[str, np.ndarray]]  # target layer name -> {role: array}
    notes: list[str] = field(default_factory=list)  # what was done and what is approximate
    exact: bool = True  # False: the variance correction is an approximation (say so)
    names: dict[str, str] = field(default_factory=dict)  # source layer -> target layer


def weight_on_initial(alpha: float | None, steps: int) -> float:
    """m^T: the weight the initial running statistic still has after `steps` updates (0 for the cumulative
    average after one step)."""
    if steps == 0:
        return 1.0
    if alpha is None:
        return 0.0
    return (1.0 - alpha) ** steps


def correct_var(var: np.ndarray, src: Convention, dst: Convention, alpha: float | None,
                history: History) -> tuple[np.ndarray, bool, str]:
    """The running variance `dst` would hold after the training that gave `src` this `var`.

    Returns (converted float64 array, exact?, a sentence)."""
    var = np.asarray(var, dtype=np.float64)
    if src.running_var == dst.running_var:
        return var.copy(), True, f"running variance copied (both {src.running_var})"
    for c in (src, dst):
        if c.averaging not in ("ema", "cumulative"):
            raise StateError(f"no estimator correction for {c.averaging} running statistics (hidden EMA state)")
    history.validate()
    if history.n is None:
        raise StateError("the running-variance estimators differ (unbiased vs biased): the exact correction needs "
                         "n, the elements per channel in a training step (N x H x W); pass it (--n)")
    n = history.n
    exact = history.steps is not None and not history.n_varied
    w0 = weight_on_initial(alpha, history.steps) if history.steps is not None else 0.0
    base = w0 * history.initial_var
    if src.running_var == "unbiased":  # -> biased
        out = var - (var - base) / n
    else:
        out = var + (var - base) / (n - 1)
    how = (f"running variance {src.running_var} -> {dst.running_var}: R {'-' if src.running_var == 'unbiased' else '+'} "
           f"(R - m^T R0) / {'n' if src.running_var == 'unbiased' else '(n - 1)'} with n = {n}")
    if exact:
        how += f", T = {history.steps}, m^T R0 = {base:.6g} (exact)"
    else:
        why = [w for w, on in (("n varied between steps", history.n_varied),
                               ("the number of steps is unknown (m^T R0 taken as 0)", history.steps is None)) if on]
        how += f" (APPROXIMATE: {'; '.join(why)})"
    return out, exact, how


def convert_layer(state: dict[str, np.ndarray], source: str, target: str, alpha: float | None,
                  history: History, purpose: str = "inference", dtype: str | None = None) -> tuple[dict, list[str], bool]:
    """One layer's {role: array} from adapter `source`'s convention to `target`'s."""
    if purpose not in ("inference", "training"):
        raise StateError(f"purpose must be 'inference' or 'training', not {purpose!r}")
    src, dst = load(source), load(target)
    missing = [r for r in ("mean", "var") if r not in state]
    if missing:
        raise StateError(f"no running {' and '.join(missing)} in this layer's state: not BatchNorm state")
    C = np.asarray(state["mean"]).shape
    for r, a in state.items():
        a = np.asarray(a)
        if r != "count" and a.shape != C:
            raise StateError(f"mismatched shapes: {r} has shape {a.shape}, the running mean {C}")
        if r != "count" and not np.all(np.isfinite(a)):
            raise StateError(f"{r} holds NaN or infinite values")
    if np.any(np.asarray(state["var"]) < 0):
        raise StateError("the running variance has negative entries")
    out_dtype = np.dtype(dtype) if dtype else np.asarray(state["mean"]).dtype
    out, notes, exact = {}, [], True
    for r in ("gamma", "beta", "mean"):
        if r in state:
            out[r] = np.asarray(state[r], dtype=np.float64)
    if purpose == "training":
        var, exact, how = correct_var(state["var"], src.convention, dst.convention, alpha, history)
        notes.append(how)
    else:
        var = np.asarray(state["var"], dtype=np.float64)
        notes.append("running statistics copied: the target's inference then normalizes exactly as the source's "
                     "(the estimator difference matters only for further training: use purpose 'training')")
    out["var"] = var
    out = {r: a.astype(out_dtype) for r, a in out.items()}
    fmt = state_io.format_for(spec(target).module)
    if fmt is not None and "count" in fmt.names:
        count = _count(state["count"]) if "count" in state else (history.steps or 0)
        out["count"] = np.asarray(count, dtype=np.int64)
        if "count" not in state:
            notes.append(f"num_batches_tracked set to {count} ({'the steps given' if history.steps else 'unknown'}"
                         "; it matters only for momentum=None, the cumulative average)")
    elif "count" in state:
        notes.append(f"the step counter ({_count(state['count'])}) is dropped: {target} keeps none")
    return out, notes, exact


def _count(value) -> int:
    a = np.asarray(value)
    if a.size != 1 or not np.isfinite(a).all() or a.reshape(-1)[0] < 0 or a.reshape(-1)[0] != int(a.reshape(-1)[0]):
        raise StateError(f"the step counter must be one non-negative integer, not {a.tolist()!r}")
    return int(a.reshape(-1)[0])


def target_layer_name(name: str, k: int, target_fmt) -> str:
    """The target's name for the k-th BatchNorm layer: the name the target framework gives it itself where it
    names layers automatically (Keras: batch_normalization, batch_normalization_1, ...; flax.linen: BatchNorm_0,
    ...), else the source's path."""
    auto = target_fmt.layer_name(k) if target_fmt is not None else None
    return auto or name


def convert_model(layers: dict[str, dict[str, np.ndarray]], source: str, target: str, alpha: float | None,
                  history: History | dict[str, History], purpose: str = "inference",
                  mapping: dict[str, str] | None = None, dtype: str | None = None) -> Converted:
    """Every BatchNorm layer of a model: {source layer: {role: array}} -> Converted (target names).

    `history` may be one History for all layers or one per source layer (n differs between layers of a CNN);
    `mapping` renames layers (source -> target); unmapped layers get the target framework's automatic name for
    their position (the source's order: a state_dict's registration order), or keep their path."""
    if not layers:
        raise StateError("no BatchNorm state found (no layer holds both running statistics)")
    fmt = state_io.format_for(spec(target).module)
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(layers))
    if unknown:
        raise StateError(f"--map names layers the state does not have: {', '.join(unknown)}; it has "
                         f"{', '.join(sorted(layers))}")
    if isinstance(history, dict):
        lacking = [n for n in layers if n not in history]
        if lacking:
            raise StateError(f"no training history (n) for layer(s) {', '.join(lacking)}")
    result = Converted({})
    for k, name in enumerate(layers):
        h = history[name] if isinstance(history, dict) else history
        try:
            out, notes, exact = convert_layer(layers[name], source, target, alpha, h, purpose, dtype)
        except StateError as e:
            raise StateError(f"layer {name}: {e}") from None
        new = mapping.get(name) or target_layer_name(name, k, fmt)
        result.layers[new], result.names[name] = out, new
        result.exact &= exact
        result.notes += [f"{name} -> {new}: {n}" for n in notes]
    return result


def read_model(path, source: str) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {role: array}} of every BatchNorm layer in a state file written by adapter `source`."""
    from pathlib import Path

    fmt = state_io.format_for(spec(source).module)
    if fmt is None:
        raise StateError(f"{source} has no state format bnconform reads (torch, Keras, flax, ONNX names)")
    try:
        flat = state_io.read_flat(Path(path))
    except state_io.StateFileError as e:
        raise StateError(str(e)) from None
    layers = state_io.group_layers(flat, fmt)
    if not layers:
        raise StateError(f"{path}: no BatchNorm state in {fmt.framework}'s names (looked for "
                         f"{fmt.names['mean']} and {fmt.names['var']})")
    return layers


def write_model(path, converted: Converted, target: str) -> str:
    from pathlib import Path

    fmt = state_io.format_for(spec(target).module)
    if fmt is None:
        raise StateError(f"{target} has no state format bnconform writes")
    try:
        return state_io.write(Path(path), converted.layers, fmt)
    except state_io.StateFileError as e:
        raise StateError(str(e)) from None
    except ImportError as e:
        raise StateError(f"{path}: writing it needs {e.name or e}, which is not installed") from None
