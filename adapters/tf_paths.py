"""TensorFlow and Keras BatchNorm on the execution paths users run it on, besides calling it eagerly.

  graph       tf.function(step): the TF graph runtime (Grappler), no XLA         tf.nn, FusedBatchNormV3, Keras on TF
  xla         tf.function(step, jit_compile=True): XLA:CPU compiles the step     tf.nn, FusedBatchNormV3, Keras on TF
  frozen      layer.trainable = False, called with training=True: the fine-tuning trap. Keras 3
              (keras/src/layers/normalization/batch_normalization.py, call: `if training and self.trainable`) and
              tf_keras (batch_normalization.py, _get_training_value: "When the layer is not trainable, it overrides
              the value passed") both run inference: running statistics, no update. Declared as the path's
              convention (Convention.frozen) and checked.
  mixed-bf16  the global dtype policy mixed_bfloat16 / mixed_float16 and a float32 model input: the layer's
  mixed-f16   autocast casts the input to the 16-bit compute dtype, BatchNormalization keeps float32 variables
              and normalizes in float32 (Keras 3 call(): inputs cast to result_type(input, float32); tf_keras
              _param_dtype). Runs the 16-bit case of the policy (its values are exact in float32).
  fit         the layer in a keras Model, compiled (SGD, learning rate 0: gamma and beta stay) and stepped with
              train_on_batch / predict_on_batch as fit() and predict() step it; Keras' own jit_compile default
  tflite      (nightly) the layer in a model converted by tf.lite.TFLiteConverter and run by tf.lite.Interpreter:
              inference only; what the converter did to BatchNorm (folded into arithmetic or kept) is a fact

Compiled functions are cached per layer, mode and path in the worker (a retrace costs ~45 ms); none is shared
between eager and a path.
"""
from __future__ import annotations

from reference import GRADIENTS, Problem

from .base import Observation, PathSpec, Precision

GRAPH = PathSpec("graph", "tf.function(step): the TF graph runtime (Grappler), no XLA")
XLA = PathSpec("xla", "tf.function(step, jit_compile=True): XLA:CPU compiles the step", tier="nightly")
MIXED = {"mixed-bf16": "bfloat16", "mixed-f16": "float16"}
POLICY_OF = {"mixed-bf16": "mixed_bfloat16", "mixed-f16": "mixed_float16"}
TFLITE_INFERENCE_ONLY = "a TFLite model is an inference graph: the path runs inference-only cases"


def keras_paths(convention, tf_backend: bool) -> tuple[PathSpec, ...]:
    """The paths of a Keras BatchNormalization adapter (Keras 3 on any backend, tf_keras)."""
    out = [GRAPH, XLA] if tf_backend else []
    out += [
        PathSpec("frozen", "layer.trainable = False, then called with training=True (fine-tuning a frozen "
                           "backbone): inference, no update", convention=convention.with_(frozen=True)),
        PathSpec("mixed-bf16", "keras.mixed_precision.set_global_policy('mixed_bfloat16'), float32 input"),
        PathSpec("mixed-f16", "keras.mixed_precision.set_global_policy('mixed_float16'), float32 input"),
        PathSpec("fit", "the layer in a compiled keras Model (SGD, learning rate 0), stepped by train_on_batch / "
                        "predict_on_batch"),
    ]
    if tf_backend:
        out.append(PathSpec("tflite", "tf.lite.TFLiteConverter of a model holding the layer, run by "
                                      "tf.lite.Interpreter (inference)", tier="nightly"))
    return tuple(out)


def cached_function(adapter, key, fn, path: str):
    """`fn` as the path runs it: a tf.function (jit_compile for xla), one per key and path."""
    if path not in ("graph", "xla"):
        return fn
    cache = adapter.__dict__.setdefault("_tf_functions", {})
    full = (path, key)
    if full not in cache:
        cache[full] = adapter.tf.function(fn, jit_compile=path == "xla", reduce_retracing=False)
    return cache[full]


def unsupported(p: Problem, path: str) -> str | None:
    if path in MIXED and p.dtype != MIXED[path]:
        return (f"{path} runs the {MIXED[path]} cases: under the {POLICY_OF[path]} policy the layer computes on "
                f"{MIXED[path]} activations, and only the {MIXED[path]} cases' inputs are exact in it")
    if path == "tflite":
        if "train" in p.modes:
            return TFLITE_INFERENCE_ONLY
        if p.dtype in ("float16", "bfloat16"):
            return "the TFLite path converts float32/float64 models (16-bit is a converter quantization option)"
    return None


def mixed_precision(p: Problem) -> Precision:
    """BatchNormalization under a mixed policy: 16-bit activations in and out, float32 variables and math."""
    return Precision(io=p.dtype, compute="float32", stats="float32", params="float32")


def frozen_facts(obs: Observation, layer) -> None:
    obs.facts["trainable"] = str(layer.trainable)


def no_gradients(obs: Observation, why: str) -> None:
    for q in GRADIENTS:
        obs.unsupported.setdefault(q, why)


def function_snippet(eager: str, path: str) -> str:
    """An eager snippet with the whole program's steps run as the path runs them: TF's `tf.function` with
    `jit_compile` (XLA) or without it (graph). The steps run eagerly otherwise; set
    `tf.config.run_functions_eagerly(False)` is TF's default."""
    if path not in ("graph", "xla"):
        return eager
    return (f"# path {path}: wrap each step's layer/op call in tf.function(..., jit_compile={path == 'xla'})\n"
            + eager)
