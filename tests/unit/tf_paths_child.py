"""The TensorFlow/Keras paths on the real frameworks, in a fresh process (the sync path needs TensorFlow's CPU
split into logical devices before its runtime starts, and Keras fixes its backend at import):
`python -m tests.unit.tf_paths_child` prints one JSON object: per (adapter, path, case) the verdicts and facts."""
from __future__ import annotations

import json
from collections import Counter

RUNS = (
    ("keras.tensorflow", "sync", "f64-8x4-ax1-T3E-a0.1-eps1e-05-rstats-sh6+2-s0"),  # unequal shards
    ("keras.tensorflow", "sync", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),  # equal shards 2+2
    ("tf_keras.nonfused", "sync", "f64-8x4-ax1-T3E-a0.1-eps1e-05-rstats-sh6+2-s0"),
    ("keras.tensorflow", "tflite", "f32-4x3x2x3-ax1-E-a0.1-eps1e-05-rstats-s0"),
    ("keras.tensorflow", "frozen", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),
    ("keras.tensorflow", "fit", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),
    ("keras.tensorflow", "mixed-bf16", "bf16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"),
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
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
