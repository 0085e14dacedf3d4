"""The TensorFlow/Keras execution paths on the real frameworks (one child process, tests/unit/tf_paths_child.py):
synchronized BatchNorm over 2 logical CPUs matches the GLOBAL batch's oracle with equal and unequal shards; the
TFLite converter folds BatchNorm into MUL/ADD and the interpreter's output matches; a frozen layer called in
training runs inference; fit() moves the moving statistics as the direct call does; the mixed_bfloat16 policy
computes in bfloat16 with float32 variables."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("tf_keras")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def child():
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "tests.unit.tf_paths_child"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _no_failures(run):
    assert not {"fail", "error", "xpass"} & set(run["verdicts"]), run


def test_sync_matches_the_global_batch_with_unequal_and_equal_shards(child):
    for key, shards in (("keras.tensorflow@sync::f64-8x4-ax1-T3E-a0.1-eps1e-05-rstats-sh6+2-s0", "6+2"),
                        ("keras.tensorflow@sync::f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0", "2+2")):
        run = child[key]
        _no_failures(run)
        assert {"running_mean", "running_var", "y"} <= set(run["passed"])
        assert run["facts"]["shards"] == shards and run["facts"]["replica_statistics_spread"] == "0"
        assert "CPU:1" in run["facts"]["device"]
    # tf_keras: the float64 decay registered for the non-fused layer (tf.toml) shows on the sync path too
    assert child["tf_keras.nonfused@sync::f64-8x4-ax1-T3E-a0.1-eps1e-05-rstats-sh6+2-s0"]["verdicts"].get("xfail")


def test_sync_gradients_are_the_global_batchs_with_unequal_and_equal_shards(child):
    """dx of each replica's shard (concatenated) and dgamma/dbeta summed over the replicas are the global batch's
    gradients: synchronized BatchNorm's backward all-reduces the per-replica sums (6 + 2 rows and 2 + 2)."""
    grads = {"dx", "dgamma", "dbeta", "d2x", "d2gamma"}
    for key in ("keras.tensorflow@sync::f64-8x4-ax1-T2-a0.1-eps1e-05-rstats-sh6+2-s0",
                "keras.tensorflow@sync::f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"):
        run = child[key]
        _no_failures(run)
        assert grads <= set(run["passed"]), run
    nonfused = child["tf_keras.nonfused@sync::f64-8x4-ax1-T2-a0.1-eps1e-05-rstats-sh6+2-s0"]
    _no_failures(nonfused)
    assert grads <= set(nonfused["passed"]), nonfused


def test_every_path_snippet_reproduces_the_adapters_observation(child):
    """A failure's repro runs what the path runs: each TF/Keras path's snippet, executed, gives every quantity the
    adapter observed on that path, bit for bit."""
    assert {s["path"] for s in child["snippets"]} >= {"graph", "xla", "frozen", "mixed-bf16", "mixed-f16", "fit",
                                                      "fit-jit", "fit-eager", "tflite", "sync"}
    for s in child["snippets"]:
        assert s["observed"] and not s["missing"] and not s["different"], s
        assert not s["clobbered"], f"the snippet rebinds names the repro uses after it: {s}"


def test_tflite_folds_batchnorm_and_matches(child):
    run = child["keras.tensorflow@tflite::f32-4x3x2x3-ax1-E-a0.1-eps1e-05-rstats-s0"]
    _no_failures(run)
    assert "y" in run["passed"]
    assert {"MUL", "ADD"} <= set(run["facts"]["ops"].split(", "))


def test_frozen_fit_and_mixed_pass_what_they_declare(child):
    frozen = child["keras.tensorflow@frozen::f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"]
    _no_failures(frozen)
    assert {"y", "running_mean", "dx"} <= set(frozen["passed"]) and frozen["facts"]["trainable"] == "False"
    fit = child["keras.tensorflow@fit::f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"]
    _no_failures(fit)
    assert fit["passed"] == ["running_mean", "running_var"]
    mixed = child["keras.tensorflow@mixed-bf16::bf16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"]
    _no_failures(mixed)
    assert mixed["facts"]["compute_dtype"] == "bfloat16" and mixed["facts"]["variable_dtype"] == "float32"


def test_fit_jit_records_what_keras_resolved(child):
    """jit_compile=True is honoured by tf_keras (XLA) and refused, with a warning, by Keras 3 on tensorflow under
    op determinism (keras/src/trainers/trainer.py, model_supports_jit): both pass, and the facts say which ran."""
    keras3 = child["keras.tensorflow@fit-jit::f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"]
    tfk = child["tf_keras.fused@fit-jit::f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"]
    for run in (keras3, tfk):
        _no_failures(run)
        assert run["passed"] == ["running_mean", "running_var"]
    assert keras3["facts"]["jit_compile"] == "False" and "jit_compile" in keras3["facts"]["compile_warning"]
    assert tfk["facts"]["jit_compile"] == "True" and "compile_warning" not in tfk["facts"]


def test_a_sync_repro_runs_in_a_fresh_python_and_reproduces_the_check():
    """The repro of a sync check splits the CPU itself (a fresh Python has one device) and prints the verdict."""
    from adapters import load
    from adapters.base import OnPath
    from conformance.core.cases import CASES
    from conformance.core.inputs import materialize
    from conformance.core.repro import snippet

    case = CASES["f64-8x4-ax1-T2-a0.1-eps1e-05-rstats-sh6+2-s0"]
    code = snippet(OnPath(load("keras.tensorflow"), "sync"), case, materialize(case), "dx")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdict: pass" in done.stdout, done.stdout
