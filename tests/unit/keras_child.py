"""Checks of the Keras 3 adapter that must run in a fresh process per backend (Keras fixes its backend at
import): `python -m tests.unit.keras_child BACKEND` prints one JSON object. Used by test_adapters_tf_keras.py.

  defaults:  the BatchNormalization constructor's axis/momentum/epsilon defaults, to compare with the declared
             Convention;
  snippets:  per case, the quantities run() observed that the snippet does not produce, and those it produces
             with different bits;
  frozen:    trainable=False with training=True: equal to inference, moving statistics unchanged, and its
             distance to the oracle's inference and training outputs.
"""
from __future__ import annotations

import inspect
import json
import sys

import numpy as np

SNIPPET_CASES = (
    "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0",  # training last: first and second order
    "f16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0",  # mixed_float16, inference last
    "f32-4x2x3x3-ax-1-T2E-a0.1-eps1e-05-rstats-s0",  # channels last
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-noaffine-s0",  # center=False, scale=False
    "f64-8x4-ax1-T3E-defaults-s0",  # Keras' own defaults, float64
)
# execution paths whose repro snippet must reproduce the adapter's observation (model-level and TensorFlow-only
# paths: tests/unit/tf_paths_child.py)
PATH_SNIPPETS = (("frozen", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"),
                 ("mixed-f16", "f16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"),
                 ("no-jit", "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"))
FROZEN_CASE = "f32-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"


def main(backend: str) -> dict:
    from adapters import load
    from conformance.core.cases import CASES
    from conformance.core.inputs import materialize
    from reference import simulate

    adapter = load(f"keras.{backend}")
    adapter.setup()
    keras = adapter.keras
    out: dict = {"backend": keras.backend.backend()}
    sig = inspect.signature(keras.layers.BatchNormalization.__init__).parameters
    out["defaults"] = {k: sig[k].default for k in ("axis", "momentum", "epsilon")}

    out["snippets"] = []
    for cid in SNIPPET_CASES:
        p = materialize(CASES[cid])
        obs = adapter.run(p)
        ns = {"p": p, "np": np}
        exec(compile(adapter.snippet(p), f"<snippet keras.{backend} {cid}>", "exec"), ns)  # noqa: S102
        got = ns["observed"]
        out["snippets"].append({
            "case": cid,
            "missing": sorted(set(obs.values) - set(got)),
            "different": sorted(q for q, v in got.items()
                                if not np.array_equal(v, obs.values[q], equal_nan=True)),
        })

    from adapters.base import OnPath

    declared = {spec.name for spec in adapter.paths}
    for path, cid in PATH_SNIPPETS:
        if path not in declared:
            continue
        on, p = OnPath(adapter, path), materialize(CASES[cid])
        obs = on.run(p)
        ns = {"p": p, "np": np}
        exec(compile(on.snippet(p), f"<snippet keras.{backend}@{path} {cid}>", "exec"), ns)  # noqa: S102
        got = ns["observed"]
        out["snippets"].append({
            "case": f"{cid}@{path}",
            "missing": sorted(set(obs.values) - set(got)),
            "different": sorted(q for q, v in got.items()
                                if not np.array_equal(v, obs.values[q], equal_nan=True)),
        })

    # the fit paths: what compile() resolved jit_compile and run_eagerly to (facts of the observation)
    p = materialize(CASES[PATH_SNIPPETS[0][1]])
    out["fit_facts"] = {path: {k: v for k, v in OnPath(adapter, path).run(p).facts.items()
                               if k in ("jit_compile", "run_eagerly")} for path in ("fit", "fit-eager")}

    # trainable=False: the documented "frozen" behaviour, exercised as users do (stateful calls)
    p = materialize(CASES[FROZEN_CASE])
    layer = keras.layers.BatchNormalization(**adapter.native_config(p))
    layer.build(p.shape)
    layer.set_weights([p.gamma, p.beta, p.running_mean, p.running_var])
    layer.trainable = False
    x = keras.ops.convert_to_tensor(p.xs[0].copy(), dtype=p.dtype)
    num = lambda t: np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)  # noqa: E731
    y_frozen = num(layer(x, training=True))
    stats = [num(layer.moving_mean), num(layer.moving_variance)]
    y_eval = num(layer(x, training=False))
    one = p.with_(xs=p.xs[:1], modes=("eval",))
    oracle_eval = simulate(one, adapter.convention, second_order=False)["y"][0]
    oracle_train = simulate(one.with_(modes=("train",)), adapter.convention, second_order=False)["y"][0]
    out["frozen"] = {
        "equal_to_inference": bool(np.array_equal(y_frozen, y_eval)),
        "stats_unchanged": bool(np.array_equal(stats[0], p.running_mean.astype(np.float32))
                                and np.array_equal(stats[1], p.running_var.astype(np.float32))),
        "max_abs_vs_oracle_inference": float(np.max(np.abs(y_frozen - oracle_eval))),
        "max_abs_vs_oracle_training": float(np.max(np.abs(y_frozen - oracle_train))),
    }
    return out


if __name__ == "__main__":
    print("BNCONFORM-JSON " + json.dumps(main(sys.argv[1])))
