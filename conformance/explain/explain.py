"""`bnconform explain`: say what a user's BatchNorm computation was, from their numbers.

The user gives the input x, the output y (and, if they have them, running or batch statistics), the
hyperparameters they used and the precision their numbers were printed with. The same fit that diagnoses the
suite's failures (conformance.explain.diagnose) runs on that observation with a bound made of the printed precision:
the standard BatchNorm (torch's documented convention) first, then every single change and pair of changes,
with continuous parameters (eps, momentum) estimated from the numbers.

Arrays come from .npy, .npz (`file.npz` or `file.npz:key`), .csv, or inline text: JSON-style nested lists,
or NumPy's printed form (`[[0.1110 -0.9749] ...]`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from reference import Convention, Problem, unit_roundoff

from . import diagnose as dg

FILE_SUFFIXES = (".npy", ".npz", ".csv", ".txt")


class ExplainError(ValueError):
    """Bad input: one line for the user."""


@dataclass(frozen=True)
class _Bound:
    values: np.ndarray
    ill_posed: str | None = None


class _Printed:
    """The 'adapter' of a user's numbers: the standard convention, and a bound that is the printed precision
    plus the rounding of the user's own arithmetic (in `dtype`)."""

    name = "explain"

    def __init__(self, digits: int | None, dtype: str):
        self.convention = Convention()
        self.digits, self.dtype = digits, dtype

    def bounds(self, problem, trace, convention):
        half = 0.5 * 10.0 ** -self.digits if self.digits is not None else 0.0
        u = unit_roundoff(self.dtype)
        out = {}
        for q, v in trace.quantities.items():
            a = np.abs(np.real(np.asarray(v, dtype=complex))) if np.iscomplexobj(v) else np.abs(v)
            out[q] = _Bound(half * (1 + 1e-9) + 64 * u * (a + 1.0))
        return out


def read_array(text: str, what: str) -> np.ndarray:
    """An array from a file (.npy, .npz[:key], .csv, .txt) or inline text; ExplainError when unreadable."""
    path, _, key = text.partition(":") if ".npz:" in text else (text, "", "")
    looks_like_file = path.lower().endswith(FILE_SUFFIXES)
    try:
        if looks_like_file:
            if not os.path.isfile(path):
                raise ExplainError(f"bnconform explain: --{what}: no such file {path!r}")
            if path.lower().endswith(".npy"):
                a = np.load(path, allow_pickle=False)
            elif path.lower().endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    names = list(z.keys())
                    k = key or (what if what in names else (names[0] if len(names) == 1 else None))
                    if k not in names:
                        raise ExplainError(f"bnconform explain: --{what}: {path} has no array {key or what!r} "
                                           f"(it has {', '.join(names) or 'none'})")
                    a = z[k]
            else:
                a = np.loadtxt(path, delimiter="," if path.lower().endswith(".csv") else None, ndmin=1)
        else:
            a = _parse_inline(text)
        a = np.asarray(a, dtype=np.float64)
    except ExplainError:
        raise
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise ExplainError(f"bnconform explain: --{what}: cannot read {text[:60]!r}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if a.size == 0:
        raise ExplainError(f"bnconform explain: --{what} is empty")
    if not np.all(np.isfinite(a)):
        raise ExplainError(f"bnconform explain: --{what} has {int(np.sum(~np.isfinite(a)))} non-finite value(s) "
                           "(NaN or Inf); give the numbers you computed with")
    return a


def _parse_inline(text: str):
    t = text.strip()
    t = re.sub(r"(?<=[0-9.\]])\s+(?=[-+0-9.\[])", ",", t)  # NumPy's printed form has no commas
    t = t.replace("(", "[").replace(")", "]")
    if not t.startswith("["):
        t = f"[{t}]"
    return json.loads(t)


def _check_shapes(x, axis, given: dict[str, np.ndarray]) -> None:
    if x.ndim < 2:
        raise ExplainError(f"bnconform explain: --x must have a batch axis and a channel axis (shape {x.shape})")
    if not -x.ndim <= axis < x.ndim:
        raise ExplainError(f"bnconform explain: --axis {axis} is out of range for an input of rank {x.ndim}")
    C = x.shape[axis]
    for name, a in given.items():
        want = x.shape if name in ("y", "dx", "dy") else (C,)
        if a.shape != want:
            raise ExplainError(f"bnconform explain: --{name.replace('_', '-')} has shape {a.shape}, but the input "
                               f"{x.shape} with channels on axis {axis % x.ndim} needs {want}")


def explain(x, y, *, axis=1, mode="train", eps=1e-5, momentum=0.1, gamma=None, beta=None, init_mean=None,
            init_var=None, running_mean=None, running_var=None, batch_mean=None, batch_var=None, dx=None, dy=None,
            digits=None, dtype="float32") -> dict:
    """What computation produced the user's numbers: {"explained", "text", "hypothesis", ...}."""
    for name, v in (("eps", eps), ("momentum", momentum)):
        if v is not None and not (np.isfinite(v) and v >= 0):
            raise ExplainError(f"bnconform explain: --{name} must be a finite number >= 0, not {v!r}")
    if momentum is not None and momentum > 1:
        raise ExplainError(f"bnconform explain: --momentum is the weight on the new batch, in [0, 1]; got {momentum}")
    if digits is not None and not 0 <= digits <= 17:
        raise ExplainError(f"bnconform explain: --digits must be between 0 and 17, not {digits}")
    if mode not in ("train", "eval"):
        raise ExplainError(f"bnconform explain: --mode is train or eval, not {mode!r}")
    given = {k: v for k, v in dict(y=y, gamma=gamma, beta=beta, init_mean=init_mean, init_var=init_var,
                                   running_mean=running_mean, running_var=running_var, batch_mean=batch_mean,
                                   batch_var=batch_var, dx=dx, dy=dy).items() if v is not None}
    _check_shapes(x, axis, given)
    if init_var is not None and np.any(init_var < 0):
        raise ExplainError("bnconform explain: --init-var must be >= 0")
    if dx is not None and dy is None:
        raise ExplainError("bnconform explain: --dx needs --dy (the gradient that was propagated)")
    axis = axis % x.ndim
    C = x.shape[axis]
    problem = Problem(
        xs=(x,), modes=(mode,), axis=axis, gamma=gamma if gamma is not None else (np.ones(C) if beta is not None
                                                                                  else None),
        beta=beta if beta is not None else (np.zeros(C) if gamma is not None else None),
        running_mean=init_mean if init_mean is not None else np.zeros(C),
        running_var=init_var if init_var is not None else np.ones(C), momentum=momentum, eps=float(eps),
        dy=dy if dy is not None else np.ones_like(x), v=np.ones_like(x), dtype="float64", label="explain")
    obs = _Observation()
    obs.put("y", y[None], "float64")
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("batch_mean", batch_mean),
                    ("batch_var", batch_var)):
        if a is not None:
            obs.put(name, a[None], "float64")
    if dx is not None:
        obs.put("dx", dx, "float64")
    printed = _Printed(digits, dtype)
    fit = dg.CaseFit(printed, problem, obs)
    required = fit.required
    standard = max((fit.declared.get(q, np.inf) for q in required), default=np.inf)
    shown = ", ".join(q for q in required)
    precision = (f"numbers printed to {digits} decimals" if digits is not None else f"numbers computed in {dtype}")
    if standard <= 1.0:
        return {"explained": True, "hypothesis": "standard", "fit_ratio": standard,
                "text": f"Your numbers ({shown}) are a standard BatchNorm in {mode} mode: statistics per channel of "
                        f"axis {axis}, the biased variance, eps {eps:g} inside the square root (worst error "
                        f"{standard:.2g} of the precision of {precision})."}
    d = dg.diagnose(printed, problem, "y", obs)
    if not d["explained"]:
        return {"explained": False, "hypothesis": None, "text": "Your numbers are not a standard BatchNorm, "
                "and no single change or pair of changes explains them: " + d["summary"].split(": ", 1)[1]}
    parts = d["sentence"].split(", and ")
    lines = [f"Your numbers ({shown}) are a BatchNorm in {mode} mode over channel axis {axis} (C = {C}), except:"]
    lines += [f"  - {p}" for p in parts]
    lines.append(f"This fits every number within the precision of {precision} (worst error {d['fit_ratio']:.2g} "
                 f"of it; the standard BatchNorm is off by {standard:.3g} times it).")
    if d.get("indistinguishable"):
        lines.append(f"Your numbers cannot tell it from: {', '.join(d['indistinguishable'][:4])}.")
    return {"explained": True, "hypothesis": d["hypothesis"], "fit_ratio": d["fit_ratio"], "text": "\n".join(lines),
            "changes": parts}


class _Observation:
    def __init__(self):
        self.values, self.dtypes, self.unsupported, self.raised, self.facts = {}, {}, {}, None, {}

    def put(self, name, value, dtype):
        self.values[name] = np.array(value, dtype=np.float64)
        self.dtypes[name] = dtype
