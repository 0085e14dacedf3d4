"""The TensorFlow/Keras paths on the real frameworks, in a fresh process (the sync path needs TensorFlow's CPU
split into logical devices before its runtime starts, and Keras fixes its backend at import):
`python -m tests.unit.tf_paths_child` prints one JSON object: per (adapter, path, case) the verdicts and facts."""
from __future__ import annotations

import json
from collections import Counter

T2 = "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"  # training last: first and second order
E1 = "f32-4x3x2x3-ax1-E-a0.1-eps1e-05-rstats-s0"  # inference only (tflite)
SYNC_T2 = "f64-8x4-ax1-T2-a0.1-eps1e-05-rstats-sh6+2-s0"  # unequal shards, training last
# (adapter, path, case): the path's repro snippet is executed and must give the adapter's observation bit for bit.
# Every path on keras.tensorflow; tf_keras where its snippet is its own (layer-level paths; fit and sync, whose
# shared programs build its layer); fit-jit/fit-eager/tflite/mixed-f16 differ from what is run there only in
# an argument.
MIXED_BF16 = "bf16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"
SNIPPETS = tuple(("keras.tensorflow", path, case) for path, case in (
    ("graph", T2), ("xla", T2), ("frozen", T2), ("mixed-bf16", MIXED_BF16),
    ("mixed-f16", "f16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"), ("fit", T2), ("fit-jit", T2), ("fit-eager", E1),
    ("tflite", E1), ("sync", SYNC_T2))) + tuple(("tf_keras.fused", path, case) for path, case in (
        ("graph", T2), ("frozen", T2), ("mixed-bf16", MIXED_BF16), ("fit", T2))) + (
    ("tf_keras.nonfused", "sync", SYNC_T2),)

RUNS = (
    ("keras.tensorflow", "sync", "f64-8x4-ax1-T3E-a0.1-eps1e-05-rstats-sh6+2-s0"),  # unequal shards
    ("keras.tensorflow", "sync", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),  # equal shards 2+2
    ("keras.tensorflow", "sync", SYNC_T2),  # unequal shards, gradients in training
    ("tf_keras.nonfused", "sync", SYNC_T2),
    ("tf_keras.nonfused", "sync", "f64-8x4-ax1-T3E-a0.1-eps1e-05-rstats-sh6+2-s0"),
    ("keras.tensorflow", "tflite", "f32-4x3x2x3-ax1-E-a0.1-eps1e-05-rstats-s0"),
    ("keras.tensorflow", "frozen", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),
    ("keras.tensorflow", "fit", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),
    ("keras.tensorflow", "mixed-bf16", "bf16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"),
    ("keras.tensorflow", "fit-jit", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),  # XLA refused (determinism)
    ("tf_keras.fused", "fit-jit", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),  # XLA
)


def main() -> dict:
    from adapters import load
    from conformance.core.cases import CASES
    from conformance.core.engine import evaluate
    from conformance.core.registry import Registry

    by_id, registry, adapters, out = CASES, Registry.load(), {}, {}
    for name, path, case_id in RUNS:
        if name not in adapters:
            adapters[name] = load(name)
            adapters[name].setup()
        records = evaluate(adapters[name], by_id[case_id], registry, path=path)
        out[f"{name}@{path}::{case_id}"] = {
            "verdicts": dict(Counter(r["verdict"] for r in records)),
            "passed": sorted(r["quantity"] for r in records if r["verdict"] == "pass"),
            "facts": records[0].get("facts") or {},
        }
    out["snippets"] = [_snippet_vs_adapter(adapters, name, path, case_id) for name, path, case_id in SNIPPETS]
    return out


def _snippet_vs_adapter(adapters, name, path, case_id):
    """Run `path` through the adapter and through its repro snippet: the quantities the adapter observed that the
    snippet does not produce, and those it produces with other bits."""
    import numpy as np

    from adapters import load
    from adapters.base import OnPath
    from conformance.core.cases import CASES
    from conformance.core.inputs import materialize

    if name not in adapters:
        adapters[name] = load(name)
        adapters[name].setup()
    on, p = OnPath(adapters[name], path), materialize(CASES[case_id])
    assert on.unsupported(p) is None, (name, path, case_id, on.unsupported(p))
    obs = on.run(p)
    from adapters import tf_common
    from adapters.base import Precision
    from conformance.core.cases import case_by_id
    from conformance.core.compare import compare
    from conformance.core.tolerance import bounds
    from reference import Convention, simulate

    # what the engine's repro (conformance/core/repro.py) imports before the snippet and uses after it
    header = {"Precision": Precision, "case_by_id": case_by_id, "compare": compare, "materialize": materialize,
              "bounds": bounds, "Convention": Convention, "simulate": simulate}
    ns = {"p": p, "np": np, **header}

    if tf_common._MIRRORED:  # the process's one MirroredStrategy (see the sync snippet)
        ns["strategy"] = tf_common._MIRRORED[0]
    exec(compile(on.snippet(p), f"<snippet {name}@{path} {case_id}>", "exec"), ns)  # noqa: S102
    got = ns["observed"]
    return {"adapter": name, "path": path, "case": case_id, "observed": sorted(obs.values),
            "clobbered": sorted(k for k, v in header.items() if ns.get(k) is not v),
            "missing": sorted(set(obs.values) - set(got)),
            "different": sorted(q for q, v in got.items() if q in obs.values
                                and not np.array_equal(v, obs.values[q], equal_nan=True))}


if __name__ == "__main__":
    print(json.dumps(main()))
