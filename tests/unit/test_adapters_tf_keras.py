"""The TensorFlow and Keras adapters: the native hyperparameters each builds from the canonical case, the
declared defaults against the framework's own, trainable=False, and snippet fidelity (a snippet computes
bit for bit what its adapter observed).

The native-configuration tests need no framework. The others skip when their framework is missing; Keras 3
runs in a child process per backend (tests/unit/keras_child.py), because Keras fixes its backend at import.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters import load
from conformance.core.cases import CASES
from conformance.core.inputs import materialize

ROOT = Path(__file__).resolve().parents[2]
T2 = "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"  # alpha 0.1, eps 1e-5, training last
A09 = "f32-4x3x2x3-ax1-T3-a0.9-eps1e-05-rstats-s0"  # alpha 0.9
LAST = "f32-4x2x3x3-ax-1-T2E-a0.1-eps1e-05-rstats-s0"  # channels last
RANK5 = "f32-2x3x2x2x2-ax1-TE-a0.1-eps1e-05-s0"
RANK2 = "f32-8x4-ax1-T2E-a0.1-eps1e-05-rstats-s0"
CUM = "f32-4x3x2x3-ax1-T2E-acum-eps1e-05-rstats-s0"  # momentum None: cumulative average
DEFAULTS = "f32-4x3x2x3-ax1-T3E-defaults-sc0.03-s0"
NOTRACK = "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-notrack-s0"
F16 = "f16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"
F64 = "f64-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"
NOAFFINE = "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-noaffine-s0"


def problem(case_id):
    return materialize(CASES[case_id])


# -- native hyperparameters (no framework needed: adapters import theirs only in setup())
def test_tf_nn_passes_the_canonical_weight_and_eps_and_reduces_every_other_axis():
    a = load("tf.nn.batch_normalization")
    assert a.native_config(problem(T2)) == {"axes": [0, 2, 3], "variance_epsilon": 1e-5, "new_weight": 0.1}
    assert a.native_config(problem(A09))["new_weight"] == 0.9  # weight on the NEW statistic, not 1 - alpha
    assert a.native_config(problem(LAST))["axes"] == [0, 1, 2]
    assert a.native_config(problem(CUM))["new_weight"] is None  # 1/t at training step t
    assert "no defaults" in a.unsupported(problem(DEFAULTS))


def test_fused_op_gets_alpha_as_exponential_avg_factor_and_a_data_format():
    a = load("tf.raw_ops.FusedBatchNormV3")
    assert a.native_config(problem(T2)) == {"data_format": "NCHW", "epsilon": 1e-5,
                                            "exponential_avg_factor": 0.1}
    assert a.native_config(problem(A09))["exponential_avg_factor"] == 0.9
    assert a.native_config(problem(LAST))["data_format"] == "NHWC"
    assert a.native_config(problem(RANK5))["data_format"] == "NCDHW"
    assert a.native_config(problem(CUM))["exponential_avg_factor"] is None  # 1/t at training step t
    assert a.native_config(problem(DEFAULTS)) == {"data_format": "NCHW"}  # nothing else: the op's defaults
    assert "4-D or 5-D" in a.unsupported(problem(RANK2))
    assert a.unsupported(problem(F64)) is None  # float64 is left to the op, which refuses it itself


@pytest.mark.parametrize("name", ["keras.tensorflow", "keras.jax", "keras.torch",
                                  "tf_keras.fused", "tf_keras.nonfused"])
def test_keras_momentum_is_one_minus_alpha(name):
    a = load(name)
    extra = {"fused": a.fused} if name.startswith("tf_keras") else {}
    assert a.native_config(problem(T2)) == {"axis": 1, "momentum": 1 - 0.1, "epsilon": 1e-5,
                                            "center": True, "scale": True, "dtype": "float32", **extra}
    cfg = a.native_config(problem(A09))
    assert cfg["momentum"] == 0.1  # 1 - 0.9, without binary noise (reference.convention._complement)
    assert a.convention.native_to_canonical(cfg["momentum"]) == 0.9
    assert a.native_config(problem(LAST))["axis"] == -1
    assert a.native_config(problem(F16))["dtype"] == "mixed_float16"
    noaffine = a.native_config(problem(NOAFFINE))
    assert noaffine["center"] is False and noaffine["scale"] is False
    defaults = {"axis": 1, "center": True, "scale": True, "dtype": "float32", **extra}
    assert a.native_config(problem(DEFAULTS)) == defaults  # nothing else: Keras' own momentum and epsilon
    assert "cumulative" in a.unsupported(problem(CUM))
    assert "moving statistics" in a.unsupported(problem(NOTRACK))


def test_tf_keras_fused_refuses_what_the_fused_path_cannot_run():
    fused, plain = load("tf_keras.fused"), load("tf_keras.nonfused")
    assert "4-D and 5-D" in fused.unsupported(problem(RANK2)) and plain.unsupported(problem(RANK2)) is None
    assert "float16, bfloat16, or float32" in fused.unsupported(problem(F64))
    assert plain.unsupported(problem(F64)) is None
    assert fused.convention.running_var == "unbiased" and plain.convention.running_var == "biased"


# -- declared defaults are the framework's own
def test_declared_tf_defaults_are_the_frameworks():
    tf = pytest.importorskip("tensorflow")
    from tensorflow.python.framework import op_def_registry

    attrs = {a.name: a.default_value for a in op_def_registry.get("FusedBatchNormV3").attr}
    fused = load("tf.raw_ops.FusedBatchNormV3").convention
    assert attrs["epsilon"].f == pytest.approx(fused.default_eps, rel=1e-7)
    assert attrs["exponential_avg_factor"].f == fused.default_momentum == 1.0
    assert attrs["data_format"].s == b"NHWC"
    required = inspect.signature(tf.nn.batch_normalization).parameters["variance_epsilon"].default
    assert required is inspect.Parameter.empty  # tf.nn really has no eps default


def test_declared_tf_keras_defaults_are_the_frameworks():
    pytest.importorskip("tensorflow")
    tf_keras = pytest.importorskip("tf_keras")
    sig = inspect.signature(tf_keras.layers.BatchNormalization.__init__).parameters
    for name in ("tf_keras.fused", "tf_keras.nonfused"):
        conv = load(name).convention
        assert (sig["momentum"].default, sig["epsilon"].default) == (conv.default_momentum, conv.default_eps)


# -- snippet fidelity, TensorFlow adapters in this process
TF_SNIPPETS = {
    "tf.nn.batch_normalization": [T2, NOTRACK, F16, LAST, "f32-8x4-ax1-T3E-acum-eps1e-05-rstats-s0",
                                  "f32-1x4-ax1-T-a0.1-eps1e-05-s0",
                                  "bf16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"],
    "tf.raw_ops.FusedBatchNormV3": [T2, NOTRACK, LAST, RANK5, F16, CUM, DEFAULTS, NOAFFINE],
    "tf_keras.fused": [T2, F16, LAST, NOAFFINE, RANK5, DEFAULTS],
    "tf_keras.nonfused": [T2, F64, RANK2, NOAFFINE, "bf16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"],
}


@pytest.fixture(scope="module")
def tf_adapters():
    pytest.importorskip("tensorflow")
    cache = {}

    def get(name):
        if name.startswith("tf_keras"):
            pytest.importorskip("tf_keras")
        if name not in cache:
            cache[name] = load(name)
            cache[name].setup()
        return cache[name]

    return get


@pytest.mark.parametrize("name,case_id", [(n, c) for n, cs in TF_SNIPPETS.items() for c in cs])
def test_tf_snippet_computes_what_the_adapter_observed(tf_adapters, name, case_id):
    adapter, p = tf_adapters(name), problem(case_id)
    assert adapter.unsupported(p) is None
    observed = adapter.run(p)
    ns = {"p": p, "np": np}
    exec(compile(adapter.snippet(p), f"<snippet {name}>", "exec"), ns)  # noqa: S102
    assert set(observed.values) <= set(ns["observed"]), "the snippet must reproduce every observed quantity"
    for q, v in ns["observed"].items():
        assert np.array_equal(v, observed.values[q], equal_nan=True), q


@pytest.mark.parametrize("name", ["tf.nn.batch_normalization", "tf.raw_ops.FusedBatchNormV3"])
@pytest.mark.parametrize("path", ["graph", "xla"])
def test_tf_path_snippet_computes_what_the_path_observed(tf_adapters, name, path):
    """The repro of a graph/xla check runs the step as that path does (a tf.function, with XLA for xla)."""
    from adapters.base import OnPath

    on, p = OnPath(tf_adapters(name), path), problem(T2)
    observed = on.run(p)
    code = on.snippet(p)
    assert "tf.function(" in code and f"jit_compile={path == 'xla'}" in code
    ns = {"p": p, "np": np}
    exec(compile(code, f"<snippet {name}@{path}>", "exec"), ns)  # noqa: S102
    assert set(observed.values) <= set(ns["observed"])
    for q, v in ns["observed"].items():
        assert np.array_equal(v, observed.values[q], equal_nan=True), q


def test_fused_op_reports_its_own_float64_refusal(tf_adapters):
    obs = tf_adapters("tf.raw_ops.FusedBatchNormV3").run(problem(F64))
    assert not obs.values and set(obs.unsupported) >= {"y", "dx", "running_var"}
    assert all("attr 'T' of double" in why for why in obs.unsupported.values())


@pytest.mark.parametrize("name", ["tf_keras.fused", "tf_keras.nonfused"])
def test_tf_keras_trainable_false_means_inference(tf_adapters, name):
    adapter, p = tf_adapters(name), problem("f32-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0")
    tf, layer = adapter.tf, adapter.tf_keras.layers.BatchNormalization(**adapter.native_config(p))
    layer.build(p.shape)
    layer.set_weights([p.gamma, p.beta, p.running_mean, p.running_var])
    layer.trainable = False
    x = tf.constant(p.xs[0].astype(np.float32))
    y_frozen = layer(x, training=True).numpy()
    assert np.array_equal(layer.moving_mean.numpy(), p.running_mean.astype(np.float32))
    assert np.array_equal(layer.moving_variance.numpy(), p.running_var.astype(np.float32))
    assert np.array_equal(y_frozen, layer(x, training=False).numpy())


def test_repro_of_a_registered_deviation_reproduces_it(tf_adapters):
    """The engine's repro snippet for tf.nn's registered second-order deviation runs in a fresh process and
    prints the error the check measured."""
    from conformance.core.engine import evaluate
    from conformance.core.registry import Registry

    adapter = tf_adapters("tf.nn.batch_normalization")
    rec = {r["quantity"]: r for r in evaluate(adapter, CASES[T2], Registry.load())}["d2x"]
    assert rec["verdict"] == "xfail" and rec["repro"]
    assert rec["registry"]["id"] == "tf-nn-moments-second-order"
    out = subprocess.run([sys.executable, "-c", rec["repro"]], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = float(re.search(r"max abs error ([0-9.eE+-]+)", out.stdout).group(1))
    assert printed == pytest.approx(rec["metrics"]["max_abs"], rel=1e-12)


# -- Keras 3, one child process per backend
@pytest.fixture(scope="module")
def keras_child():
    """Starts every installed backend's child at the first request (they run concurrently), then waits."""
    backends = ("tensorflow", "jax", "torch")
    procs, results = {}, {}

    def run(backend):
        missing = [m for m in ("keras", backend) if importlib.util.find_spec(m) is None]
        if missing:  # find_spec, not importorskip: importing keras here would fix this process's backend
            pytest.skip(f"{', '.join(missing)} not installed")
        if not procs:
            for b in backends:
                if importlib.util.find_spec("keras") and importlib.util.find_spec(b):
                    procs[b] = subprocess.Popen([sys.executable, "-m", "tests.unit.keras_child", b], cwd=ROOT,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if backend not in results:
            stdout, stderr = procs[backend].communicate(timeout=600)
            line = next((s for s in stdout.splitlines() if s.startswith("BNCONFORM-JSON ")), None)
            assert procs[backend].returncode == 0 and line, stderr[-3000:]
            results[backend] = json.loads(line.removeprefix("BNCONFORM-JSON "))
        return results[backend]

    yield run
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras3_in_a_fresh_process(keras_child, backend):
    out = keras_child(backend)
    assert out["backend"] == backend
    conv = load(f"keras.{backend}").convention
    assert out["defaults"] == {"axis": -1, "momentum": conv.default_momentum, "epsilon": conv.default_eps}
    for s in out["snippets"]:
        assert not s["missing"] and not s["different"], s
    frozen = out["frozen"]
    assert frozen["equal_to_inference"] and frozen["stats_unchanged"], frozen
    assert frozen["max_abs_vs_oracle_inference"] < 1e-5 < 1e-2 < frozen["max_abs_vs_oracle_training"], frozen
    # Keras' own jit_compile default ("auto", keras/src/trainers/trainer.py _resolve_auto_jit_compile): jax
    # compiles the train step, torch runs it eagerly, tensorflow on a CPU-only machine runs it without XLA
    assert out["fit_facts"]["fit"] == {"jit_compile": str(backend == "jax"), "run_eagerly": "False"}
    assert out["fit_facts"]["fit-eager"] == {"jit_compile": "False", "run_eagerly": "True"}


def _fused_moving_variance(tf, values, factor: float) -> np.float32:
    """FusedBatchNormV3 in training on one channel of `values` from a moving variance of 1, with
    exponential_avg_factor `factor` (its weight on the new batch): the moving variance it returns
    (batch_variance, as the layer stores it)."""
    x = tf.constant(np.asarray(values, np.float32).reshape(1, len(values), 1, 1))
    one, zero = tf.ones([1]), tf.zeros([1])
    out = tf.raw_ops.FusedBatchNormV3(x=x, scale=one, offset=zero, mean=zero, variance=one, epsilon=1e-5,
                                      exponential_avg_factor=factor, data_format="NHWC", is_training=True)
    return out.batch_variance.numpy()[0]


def test_fused_kernel_clamps_bessels_correction_with_one_element_per_channel():
    """The evidence behind tf-fused-one-element-bessel-correction-clamped: FusedBatchNormV3's CPU kernel corrects
    the batch variance by n / max(n - 1, 1), so with one element per channel its unbiased variance is the biased
    one, 0, where n / (n - 1) = 1 / 0 makes it undefined (NaN: 0 * inf); with two elements it is unbiased."""
    tf = pytest.importorskip("tensorflow")
    assert float(_fused_moving_variance(tf, [0.75], 1.0)) == 0.0
    unbiased = (0.25**2 * 2) / (2 - 1)
    assert float(_fused_moving_variance(tf, [0.25, 0.75], 1.0)) == pytest.approx(unbiased)


def test_fused_kernel_takes_its_weight_on_the_new_batch_as_a_float32_attribute():
    """The evidence behind tf-fused-exponential-avg-factor-float32-attribute: FusedBatchNormV3's
    exponential_avg_factor (the weight on the new batch) is a float32 attribute, so at 0.99999 the weight left on
    the old statistic is 1 - fl32(0.99999) = 1.00136e-5, 0.14 % more than 1e-5: the op's moving variance is that
    float32 formula bit for bit."""
    tf = pytest.importorskip("tensorflow")
    factor = 0.99999
    got = _fused_moving_variance(tf, [0.25, 0.75], factor)
    f32 = np.float32(factor)
    assert 1.0 - float(f32) == 1.0013580322265625e-05
    assert got == (np.float32(1) - f32) * np.float32(1) + f32 * np.float32(0.125)
    assert float(got) != pytest.approx((1 - factor) + factor * 0.125, rel=1e-8)
