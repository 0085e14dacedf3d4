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
  tflite      (nightly) the layer in a model converted by tf.lite.TFLiteConverter and run by LiteRT (ai-edge-litert):
              inference only; what the converter did to BatchNorm (folded into arithmetic or kept) is a fact

  sync        synchronized=True under tf.distribute.MirroredStrategy over 2 logical CPU devices (TF backend;
              tf_keras non-fused), the batch split equally or as the case's `shards` say; the oracle is the global
              batch's. Both compute the variance as max(E[x^2] - E[x]^2, 0) from all-reduced sums
              (keras/src/backend/tensorflow/nn.py _compute_moments_sync; tf_keras batch_normalization.py
              _sync_calculate_mean_and_var): declared as the path's convention (variance "fast_clamped").

Tiers (default runs with --paths default): frozen, mixed-*, sync in default; graph, xla, fit, tflite in nightly
(tracing/compiling/converting costs seconds per case: README "TensorFlow and Keras paths").
Compiled functions are cached per layer, mode and path in the worker (a retrace costs ~45 ms); none is shared
between eager and a path.
"""
from __future__ import annotations

from reference import GRADIENTS, Problem

from .base import Observation, PathSpec, Precision

GRAPH = PathSpec("graph", "tf.function(step): the TF graph runtime (Grappler), no XLA", tier="nightly")
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
                        "predict_on_batch", tier="nightly"),
    ]
    if tf_backend:
        out.append(PathSpec("sync", "synchronized=True under tf.distribute.MirroredStrategy over 2 logical CPU "
                                    "devices, the batch split over them (equally or as the case's shards say)",
                            convention=convention.with_(variance="fast_clamped"), sharded=True))
        out.append(PathSpec("tflite", "tf.lite.TFLiteConverter of a model holding the layer, run by "
                                      "LiteRT's interpreter (inference)", tier="nightly"))
    return tuple(out)


def cached_function(adapter, key, fn, path: str):
    """`fn` as the path runs it: a tf.function (jit_compile for xla), one per key and path."""
    if path not in ("graph", "xla"):
        return fn
    cache = adapter.__dict__.setdefault("_tf_functions", {})
    full = (path, key)
    if full not in cache:
        import tensorflow as tf  # the adapter imported it (setup) with its deterministic flags

        cache[full] = tf.function(fn, jit_compile=path == "xla", reduce_retracing=False)
    return cache[full]


def unsupported(p: Problem, path: str) -> str | None:
    if path == "sync":
        from .tf_common import SYNC_DEVICES

        if p.shards and len(p.shards) != SYNC_DEVICES:
            return f"the case splits its batch over {len(p.shards)} devices; the sync path has {SYNC_DEVICES}"
        if not p.shards and p.shape[0] % SYNC_DEVICES:
            return f"a batch of {p.shape[0]} does not split equally over {SYNC_DEVICES} devices"
    if path in MIXED and p.dtype != MIXED[path]:
        return (f"{path} runs the {MIXED[path]} cases: under the {POLICY_OF[path]} policy the layer computes on "
                f"{MIXED[path]} activations, and only the {MIXED[path]} cases' inputs are exact in it")
    if path == "tflite":
        if "train" in p.modes:
            return TFLITE_INFERENCE_ONLY
        if p.dtype != "float32":
            return (f"TFLite's built-in kernels are float32 (16-bit is a converter quantization option); a {p.dtype} "
                    "model does not convert without TF Select ops (float64: 'Some ops are not supported by the "
                    "native TFLite runtime ... TF Select ops: AddV2, Mul, Rsqrt, Sub')")
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


class KerasPaths:
    """The execution paths of a Keras BatchNormalization adapter (Keras 3 on any backend, adapters/keras3.py;
    tf_keras, adapters/tf_keras.py): one set of path hooks and one runner (`run`), so the two flavours cannot
    drift apart. Mixed in before Adapter. What differs between the flavours, each adapter says:
      keras_module                     the keras module (keras, tf_keras)
      path_step(layer, training)       the function graph/xla wrap in a tf.function: what the adapter's
                                       steps(call=...) calls for one step
      dtype_policy() / set_dtype_policy(name)   the global dtype policy
      frozen_parameters_are_state      a frozen layer's gamma and beta become the state of its stateless call
                                       (Keras 3): no dgamma/dbeta/d2gamma on the frozen path
      variable_numpy(variable)         a variable's value as a numpy array
    """

    frozen_parameters_are_state = False

    def run_path(self, p: Problem, path: str) -> Observation:
        return run(self, p, path)

    def path_unsupported(self, p: Problem, path: str) -> str | None:
        return unsupported(p, path)

    def path_precision(self, p: Problem, path: str) -> Precision:
        return mixed_precision(p) if path in MIXED else self.precision(p)

    def path_expected_dtype(self, quantity: str, p: Problem, path: str) -> str:
        return expected_dtype(self, quantity, p, path)

    def path_snippet(self, p: Problem, path: str) -> str:
        return keras_snippet(self.snippet(p), p, path)


def expected_dtype(adapter, quantity: str, p: Problem, path: str) -> str:
    """Under a mixed policy the model input is float32: its gradients (dx, d2x) come back in float32."""
    if path in MIXED and quantity in ("dx", "d2x"):
        return "float32"
    from .base import dtype_of

    return dtype_of(quantity, adapter.path_precision(p, path))


def run(adapter, p: Problem, path: str) -> Observation:
    """`p` on `path` for a Keras adapter (KerasPaths)."""
    kmod = adapter.keras_module

    def fresh():
        layer = kmod.layers.BatchNormalization(**adapter.native_config(p))
        layer.build(p.shape)
        return layer
    if path in ("graph", "xla"):
        def call(layer, training):
            return cached_function(adapter, (id(layer), training), adapter.path_step(layer, training), path)
        obs = adapter.steps(p, adapter.layer(p), call=call)
        obs.facts["function"] = path
        return obs
    if path == "frozen":
        layer = fresh()
        layer.trainable = False
        obs = adapter.steps(p, layer)
        frozen_facts(obs, layer)
        if p.affine and adapter.frozen_parameters_are_state:
            for q in ("dgamma", "dbeta", "d2gamma"):
                obs.unsupported[q] = "frozen: gamma and beta are non-trainable (the stateless call's state)"
        return obs
    if path in MIXED:
        cfg = {k: v for k, v in adapter.native_config(p).items() if k != "dtype"}
        before = adapter.dtype_policy()
        adapter.set_dtype_policy(POLICY_OF[path])
        try:
            layer = kmod.layers.BatchNormalization(**cfg)
            layer.build(p.shape)
        finally:
            adapter.set_dtype_policy(before)
        obs = adapter.steps(p, layer, input_dtype="float32")
        obs.facts.update(compute_dtype=str(layer.compute_dtype), variable_dtype=str(layer.variable_dtype),
                         input="float32")
        return obs
    if path == "fit":
        return _fit(adapter, p, kmod, fresh())
    if path == "tflite":
        return _tflite(adapter, p, kmod, fresh())
    if path == "sync":
        return _sync(adapter, p, lambda: kmod.layers.BatchNormalization(synchronized=True,
                                                                        **adapter.native_config(p)))
    raise NotImplementedError(path)


def _assign(layer, p: Problem, to) -> None:
    if p.affine:
        layer.gamma.assign(to(p.gamma))
        layer.beta.assign(to(p.beta))
    if not p.native_init:  # else the fresh layer's own initial statistics (build())
        layer.moving_mean.assign(to(p.running_mean))
        layer.moving_variance.assign(to(p.running_var))


def _fit(adapter, p: Problem, keras, layer) -> Observation:
    """The layer in a Sequential model compiled with SGD(learning_rate=0) and a mean-squared-error loss against
    zeros, stepped as fit() steps it (train_on_batch) and as predict() does (predict_on_batch)."""
    import numpy as np

    xdt = "float32" if p.dtype in ("float16", "bfloat16") else p.dtype  # numpy has no bfloat16: exact in float32
    model = keras.Sequential([keras.Input(shape=p.shape[1:], batch_size=p.shape[0], dtype=xdt), layer])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    pdt = layer.moving_mean.dtype
    dname = pdt if isinstance(pdt, str) else pdt.name
    _assign(layer, p, lambda a: np.asarray(a, dtype=dname))
    ys, means, vars_, ydt = [], [], [], None
    for x, mode in zip(p.xs, p.modes):
        xa = np.asarray(x, dtype=xdt)
        if mode == "train":
            model.train_on_batch(xa, np.zeros(p.shape, dtype=xdt))
            ys.append(np.full(p.shape, np.nan))
        else:
            out = model.predict_on_batch(xa)
            ydt = getattr(out.dtype, "name", str(out.dtype))
            ys.append(np.asarray(out, dtype=np.float64))
        means.append(np.asarray(adapter.variable_numpy(layer.moving_mean), dtype=np.float64))
        vars_.append(np.asarray(adapter.variable_numpy(layer.moving_variance), dtype=np.float64))
    obs = Observation(facts={"device": "cpu", "model": "Sequential([Input, BatchNormalization])",
                             "optimizer": "SGD(learning_rate=0.0)",
                             "jit_compile": str(getattr(model, "jit_compile", None))})
    if "train" in p.modes:
        obs.unsupported["y"] = "train_on_batch returns the loss, not the layer's output"
    else:
        obs.put("y", np.stack(ys), ydt)
    obs.put("running_mean", np.stack(means), dname)
    obs.put("running_var", np.stack(vars_), dname)
    no_gradients(obs, "fit() applies the gradients (learning rate 0 here) and returns none")
    for q in ("batch_mean", "batch_var"):
        obs.unsupported[q] = "Keras BatchNormalization does not expose the batch statistics"
    obs.unsupported["num_batches_tracked"] = "Keras BatchNormalization keeps no step counter"
    return obs


def _tflite(adapter, p: Problem, keras, layer) -> Observation:
    """The layer in a Sequential model (static batch), converted by TFLiteConverter.from_keras_model (float ops,
    no quantization) and run by tf.lite.Interpreter; the interpreter's op list is recorded (BatchNorm folded
    into MUL/ADD or kept). (from_concrete_functions of a tf.function of the layer keeps Keras 3's variables as
    TFLite resource variables that nothing initializes: garbage output. Not the path users take.)"""
    import contextlib
    import sys

    import numpy as np
    import tensorflow as tf

    model = keras.Sequential([keras.Input(shape=p.shape[1:], batch_size=p.shape[0], dtype=p.dtype), layer])
    pdt = layer.moving_mean.dtype
    dname = pdt if isinstance(pdt, str) else pdt.name
    _assign(layer, p, lambda a: np.asarray(a, dtype=dname))
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints the saved artifact's signature
        model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interp, runtime = _interpreter(model, tf)
    interp.allocate_tensors()
    ops = sorted({d["op_name"] for d in interp._get_ops_details()})
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    ys = []
    for x in p.xs:
        interp.set_tensor(inp["index"], np.asarray(x, dtype=inp["dtype"]))
        interp.invoke()
        ys.append(np.array(interp.get_tensor(out["index"]), dtype=np.float64))
    obs = Observation(facts={"device": "cpu", "runtime": runtime,
                             "ops": ", ".join(ops), "input": str(np.dtype(inp["dtype"]))})
    obs.put("y", np.stack(ys), str(np.dtype(out["dtype"])))
    const = np.stack([np.asarray(p.running_mean)] * p.steps), np.stack([np.asarray(p.running_var)] * p.steps)
    obs.put("running_mean", const[0], dname)  # an inference graph: the statistics are its constants
    obs.put("running_var", const[1], dname)
    no_gradients(obs, "a TFLite interpreter computes no gradients")
    for q in ("batch_mean", "batch_var"):
        obs.unsupported[q] = "Keras BatchNormalization does not expose the batch statistics"
    obs.unsupported["num_batches_tracked"] = "Keras BatchNormalization keeps no step counter"
    return obs


def _interpreter(model: bytes, tf):
    """LiteRT's interpreter (ai-edge-litert, what TensorFlow's deprecation notice points to: tf.lite.Interpreter
    "is scheduled for deletion"), or TensorFlow's own where LiteRT is not installed."""
    try:
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_content=model), f"ai_edge_litert.interpreter.Interpreter {version('ai-edge-litert')}"
    except ImportError:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice: recorded as the runtime fact instead
            return tf.lite.Interpreter(model_content=model), f"tf.lite.Interpreter (tensorflow {tf.__version__})"


def keras_snippet(eager: str, p: Problem, path: str) -> str:
    if path == "frozen":
        return eager.replace("layer.build(", "layer.trainable = False; layer.build(")
    return function_snippet(eager, path)


# -- sync: synchronized BatchNorm under MirroredStrategy (Keras 3 TF backend, tf_keras)
def _sync(adapter, p: Problem, make_layer) -> Observation:
    """Each replica gets its shard of every step's batch (axis 0); the replicas' outputs are concatenated back
    in order, so the oracle is the global batch's (statistics of the whole batch, however it is split). The
    moving statistics are read after each step (the replicas' copies must agree: their spread is a fact).
    Gradients are not observed on this path."""
    import numpy as np
    import tensorflow as tf

    from .tf_common import SYNC_DEVICES, logical_cpus

    devices = logical_cpus(tf)[:SYNC_DEVICES]
    if len(devices) < SYNC_DEVICES:
        raise RuntimeError(f"the sync path needs {SYNC_DEVICES} logical CPU devices, TensorFlow has {devices}: "
                           "its runtime started before adapters.tf_common.split_cpu could split the CPU")
    shards = tuple(p.shards) or (p.shape[0] // SYNC_DEVICES,) * SYNC_DEVICES
    bounds = np.cumsum((0,) + shards)
    if "_mirrored" not in adapter.__dict__:  # one strategy per worker: a new one per case aborts the collectives
        adapter._mirrored = tf.distribute.MirroredStrategy(devices)
    strategy = adapter._mirrored
    with strategy.scope():
        layer = make_layer()
        layer.build(p.shape)
        pdt = layer.moving_mean.dtype
        dname = pdt if isinstance(pdt, str) else pdt.name
        _assign(layer, p, lambda a: np.asarray(a, dtype=dname))
    steps = {}
    for training in (True, False):
        steps[training] = tf.function(
            lambda dx, t=training: strategy.run(lambda x: layer(x, training=t), args=(dx,)))
    ys, means, vars_, spread = [], [], [], 0.0
    for x, mode in zip(p.xs, p.modes):
        parts = [tf.constant(np.asarray(x[bounds[i]:bounds[i + 1]]), dtype=p.dtype) for i in range(len(shards))]
        dist = strategy.experimental_distribute_values_from_function(
            lambda ctx, parts=parts: parts[ctx.replica_id_in_sync_group])
        out = strategy.experimental_local_results(steps[mode == "train"](dist))
        ys.append(np.concatenate([np.asarray(o.numpy(), dtype=np.float64) for o in out], axis=0))
        copies = [[np.asarray(v.numpy(), dtype=np.float64) for v in
                   strategy.experimental_local_results(var)] for var in (layer.moving_mean, layer.moving_variance)]
        spread = max(spread, *(float(np.max(np.abs(c - cs[0]))) for cs in copies for c in cs))
        means.append(copies[0][0])
        vars_.append(copies[1][0])
    ydt = out[0].dtype.name
    obs = Observation(facts={"device": ", ".join(devices), "strategy": "MirroredStrategy",
                             "shards": "+".join(map(str, shards)),
                             "replica_statistics_spread": f"{spread:.3g}"})
    obs.put("y", np.stack(ys), ydt)
    obs.put("running_mean", np.stack(means), dname)
    obs.put("running_var", np.stack(vars_), dname)
    no_gradients(obs, "gradients are not observed on the sync path (outputs and moving statistics are)")
    for q in ("batch_mean", "batch_var"):
        obs.unsupported[q] = "Keras BatchNormalization does not expose the batch statistics"
    obs.unsupported["num_batches_tracked"] = "Keras BatchNormalization keeps no step counter"
    return obs
