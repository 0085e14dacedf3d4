"""Does each adapter's `bench()` time what its `run()` computes? For every operation on tiny shapes: the
benchmark callable's y (and dx for "train_backward") against `run()` on the callable's own Problem.

`compare(name)` does it in this process; `python -m tests.unit.bench_child ADAPTER` prints the same as one JSON
line (used for the Keras 3 backends, which need a fresh process each: Keras fixes its backend at import).
"""
from __future__ import annotations

import json
import sys

import numpy as np

SHAPES = ((4, 3, 5, 6), (8, 4))  # logical (N, C, H, W) and (N, C)
OPS = ("train", "eval", "train_backward")


def _scaled_error(got, want) -> float:
    """max |got - want| / max(1, max |want|)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


def compare(name: str, adapter=None) -> list[dict]:
    """One record per (shape, op): its status ("ok" or "unsupported"), layout, and for "ok" the scaled error
    of y and (train_backward) dx, and the same y's distance to the other mode's output (what a benchmark
    measuring the wrong mode would show)."""
    from adapters import load
    from adapters.base import Unsupported
    from adapters.bench_support import as_numpy

    if adapter is None:
        adapter = load(name)
        adapter.setup()
    out = []
    for shape in SHAPES:
        for what in OPS:
            rec = {"adapter": name, "shape": list(shape), "op": what}
            try:
                fn = adapter.bench(shape, "float32", what)
            except Unsupported as e:
                out.append({**rec, "status": "unsupported", "reason": str(e)})
                continue
            result = fn()
            obs = adapter.run(fn.problem)
            rec.update(status="ok", layout=fn.layout, native_shape=list(fn.problem.shape),
                       y=_scaled_error(as_numpy(result[0]), obs.values["y"][0]))
            other = adapter.run(fn.problem.with_(modes=("train" if what == "eval" else "eval",),
                                                 quantities=frozenset({"y", "running_mean", "running_var"})))
            rec["y_vs_other_mode"] = _scaled_error(as_numpy(result[0]), other.values["y"][0])
            if what == "train_backward":
                rec["dx"] = _scaled_error(as_numpy(result[1]), obs.values["dx"])
            out.append(rec)
    return out


if __name__ == "__main__":
    print("BNCONFORM-JSON " + json.dumps([r for name in sys.argv[1:] for r in compare(name)]))
