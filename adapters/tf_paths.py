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
              ("auto": Keras 3 resolves it per backend, keras/src/trainers/trainer.py _resolve_auto_jit_compile:
              jax XLA-compiles the step, torch runs it eagerly, tensorflow on a CPU-only machine runs a
              tf.function without XLA; tf_keras: no XLA). The resolved value is the fact `jit_compile`.
  fit-jit     the same with compile(jit_compile=True): jax jax.jit, torch torch.compile (inductor), tf_keras XLA
              (tf.function(jit_compile=True)); Keras 3 on tensorflow falls back to no XLA, with a warning, when op
              determinism is enabled (trainer.py model_supports_jit; keras-team/keras#20315), as it is here: the
              facts jit_compile and compile_warning say so
  fit-eager   the same with compile(run_eagerly=True): the train step op by op (jax: no jit; tensorflow: no
              tf.function), what users debug with
  no-jit      keras.jax only: the layer's stateless_call (and its jax.vjp) run op by op under jax.disable_jit(),
              where the eager path runs them under jax.jit as every Keras training step on jax does
  tflite      (nightly) the layer in a model converted by tf.lite.TFLiteConverter and run by LiteRT (ai-edge-litert):
              inference only; what the converter did to BatchNorm (folded into arithmetic or kept) is a fact

  sync        synchronized=True under tf.distribute.MirroredStrategy over 2 logical CPU devices (TF backend;
              tf_keras non-fused), the batch split equally or as the case's `shards` say; the oracle is the global
              batch's. Both compute the variance as max(E[x^2] - E[x]^2, 0) from all-reduced sums
              (keras/src/backend/tensorflow/nn.py _compute_moments_sync; tf_keras batch_normalization.py
              _sync_calculate_mean_and_var): declared as the path's convention (variance "fast_clamped").
              Gradients as a custom training loop takes them (GradientTape inside strategy.run, dy split like x):
              dx per shard, concatenated; dgamma/dbeta summed over the replicas (_sync says why).

Tiers (default runs with --paths default): frozen, mixed-*, sync in default; graph, xla, fit, fit-jit, fit-eager,
no-jit, tflite in nightly (tracing/compiling/converting costs seconds per case; keras.torch@fit-jit, torch.compile,
~11 s a case: README "TensorFlow and Keras paths").
Repro snippets (KerasPaths.path_snippet, the adapters' snippet(p, path)) run what the path runs: the tf.function,
the frozen layer, the policy, the compiled model, the converter and interpreter, the strategy
(tests/unit/tf_paths_child.py and keras_child.py execute them and compare bit for bit).
Compiled functions are cached per layer, mode and path in the worker (a retrace costs ~45 ms); none is shared
between eager and a path.
"""
from __future__ import annotations

from reference import GRADIENTS, Problem

from .base import Observation, PathSpec, Precision

GRAPH = PathSpec("graph", "tf.function(step): the TF graph runtime (Grappler), no XLA", tier="nightly")
XLA = PathSpec("xla", "tf.function(step, jit_compile=True): XLA:CPU compiles the step", tier="nightly")
NO_JIT = PathSpec("no-jit", "keras.jax: the layer's stateless_call and its gradients op by op (jax.disable_jit()) "
                            "instead of under jax.jit", tier="nightly")
MIXED = {"mixed-bf16": "bfloat16", "mixed-f16": "float16"}
POLICY_OF = {"mixed-bf16": "mixed_bfloat16", "mixed-f16": "mixed_float16"}
# the fit paths: compile()'s arguments (Keras' own defaults for `fit`)
FIT = {"fit": "", "fit-jit": " and jit_compile=True", "fit-eager": " and run_eagerly=True"}
FIT_COMPILE = {"fit": {}, "fit-jit": {"jit_compile": True}, "fit-eager": {"run_eagerly": True}}
TFLITE_INFERENCE_ONLY = "a TFLite model is an inference graph: the path runs inference-only cases"


def keras_paths(convention, tf_backend: bool, jax_backend: bool = False) -> tuple[PathSpec, ...]:
    """The paths of a Keras BatchNormalization adapter (Keras 3 on any backend, tf_keras)."""
    out = [GRAPH, XLA] if tf_backend else [NO_JIT] if jax_backend else []
    out += [
        PathSpec("frozen", "layer.trainable = False, then called with training=True (fine-tuning a frozen "
                           "backbone): inference, no update", convention=convention.with_(frozen=True)),
        PathSpec("mixed-bf16", "keras.mixed_precision.set_global_policy('mixed_bfloat16'), float32 input"),
        PathSpec("mixed-f16", "keras.mixed_precision.set_global_policy('mixed_float16'), float32 input"),
        *(PathSpec(name, "the layer in a keras Model compiled with SGD(learning_rate=0)" + how + ", stepped by "
                         "train_on_batch / predict_on_batch", tier="nightly") for name, how in FIT.items()),
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
        """What the path runs, as a program (the flavour's own snippet for the layer-level paths)."""
        if path in FIT:
            return fit_snippet(self, p, path)
        if path == "tflite":
            return tflite_snippet(self, p)
        if path == "sync":
            return sync_snippet(self, p)
        return self.snippet(p, path)


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
    if path == NO_JIT.name:
        import jax

        with jax.disable_jit():
            obs = adapter.steps(p, adapter.layer(p))
        obs.facts["jit"] = "disabled (jax.disable_jit)"
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
    if path in FIT:
        return _fit(adapter, p, kmod, fresh(), path)
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


def _fit(adapter, p: Problem, keras, layer, path: str = "fit") -> Observation:
    """The layer in a Sequential model compiled with SGD(learning_rate=0) and a mean-squared-error loss against
    zeros (compile()'s other arguments: FIT_COMPILE[path]), stepped as fit() steps it (train_on_batch) and as
    predict() does (predict_on_batch).

    No gradients: fit() applies them and returns the loss. They could be recovered from an update,
    dgamma = (gamma_before - gamma_after) / lr with a loss whose output gradient is dy, but that adds the
    optimizer's roundings (of gamma - lr dgamma, ~u |gamma| / lr, and of the difference), which the tolerance
    model (conformance/core/tolerance.py, d_dgamma, d_dbeta) does not bound; and dx reaches no variable at all."""
    import warnings

    import numpy as np

    xdt = "float32" if p.dtype in ("float16", "bfloat16") else p.dtype  # numpy has no bfloat16: exact in float32
    model = keras.Sequential([keras.Input(shape=p.shape[1:], batch_size=p.shape[0], dtype=xdt), layer])
    with warnings.catch_warnings(record=True) as said:  # a jit_compile=True Keras refuses: recorded as a fact
        warnings.simplefilter("always")
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse", **FIT_COMPILE[path])
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
                             "jit_compile": str(getattr(model, "jit_compile", None)),
                             "run_eagerly": str(getattr(model, "run_eagerly", None))})
    refused = [str(w.message) for w in said if "jit_compile" in str(w.message)]
    if refused:
        obs.facts["compile_warning"] = refused[0]
    if "train" in p.modes:
        obs.unsupported["y"] = "train_on_batch returns the loss, not the layer's output"
    else:
        obs.put("y", np.stack(ys), ydt)
    obs.put("running_mean", np.stack(means), dname)
    obs.put("running_var", np.stack(vars_), dname)
    no_gradients(obs, "fit() applies the gradients and returns none; recovering dgamma/dbeta from an update "
                      "adds the optimizer's roundings, which the tolerance model does not bound (tf_paths._fit)")
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


# -- repro snippets of the model-level paths (what _fit, _tflite and _sync run), for either Keras flavour: the
#    adapter's snippet_imports() bind `keras` (Keras 3 on its backend, or tf_keras)
def _snippet_layer(adapter, p: Problem, synchronized: bool = False) -> list[str]:
    extra = "synchronized=True, " if synchronized else ""
    lines = [f"layer = keras.layers.BatchNormalization({extra}**{adapter.native_config(p)!r})",
             f"layer.build({p.shape!r})",
             "pdt = layer.moving_mean.dtype",
             "pdt = pdt if isinstance(pdt, str) else pdt.name"]
    if p.affine:
        lines += ["layer.gamma.assign(np.asarray(p.gamma, dtype=pdt)); layer.beta.assign(np.asarray(p.beta, dtype=pdt))"]
    if not p.native_init:
        lines += ["layer.moving_mean.assign(np.asarray(p.running_mean, dtype=pdt))",
                  "layer.moving_variance.assign(np.asarray(p.running_var, dtype=pdt))"]
    return lines


def fit_snippet(adapter, p: Problem, path: str) -> str:
    xdt = "float32" if p.dtype in ("float16", "bfloat16") else p.dtype
    kwargs = "".join(f", {k}={v!r}" for k, v in FIT_COMPILE[path].items())
    lines = [*adapter.snippet_imports(), *_snippet_layer(adapter, p),
             f"xdt = {xdt!r}",
             f"model = keras.Sequential([keras.Input(shape={p.shape[1:]!r}, batch_size={p.shape[0]!r}, dtype=xdt), "
             "layer])",
             f"model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss='mse'{kwargs})",
             "ys, means, vars_ = [], [], []",
             "for x, mode in zip(p.xs, p.modes):",
             "    xa = np.asarray(x, dtype=xdt)",
             "    if mode == 'train':",
             "        model.train_on_batch(xa, np.zeros(xa.shape, dtype=xdt))",
             "    else:",
             "        ys.append(np.asarray(model.predict_on_batch(xa), dtype=np.float64))",
             "    means.append(np.asarray(layer.moving_mean.numpy(), dtype=np.float64))",
             "    vars_.append(np.asarray(layer.moving_variance.numpy(), dtype=np.float64))",
             "observed = {'running_mean': np.stack(means), 'running_var': np.stack(vars_)}",
             "if 'train' not in p.modes:",
             "    observed['y'] = np.stack(ys)"]
    return "\n".join(lines)


def tflite_snippet(adapter, p: Problem) -> str:
    lines = [*adapter.snippet_imports(), "import tensorflow as tf", *_snippet_layer(adapter, p),
             f"model = keras.Sequential([keras.Input(shape={p.shape[1:]!r}, batch_size={p.shape[0]!r}, "
             f"dtype={p.dtype!r}), layer])",
             "flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()",
             "try:  # LiteRT, where installed; TensorFlow's own interpreter otherwise",
             "    from ai_edge_litert.interpreter import Interpreter",
             "except ImportError:",
             "    Interpreter = tf.lite.Interpreter",
             "interp = Interpreter(model_content=flat)",
             "interp.allocate_tensors()",
             "inp, out = interp.get_input_details()[0], interp.get_output_details()[0]",
             "ys = []",
             "for x in p.xs:",
             "    interp.set_tensor(inp['index'], np.asarray(x, dtype=inp['dtype']))",
             "    interp.invoke()",
             "    ys.append(np.array(interp.get_tensor(out['index']), dtype=np.float64))",
             "observed = {'y': np.stack(ys)}",
             "# an inference graph: the running statistics are its constants",
             "observed.update(running_mean=np.stack([p.running_mean] * len(p.xs)), "
             "running_var=np.stack([p.running_var] * len(p.xs)))"]
    return "\n".join(lines)


def sync_snippet(adapter, p: Problem) -> str:
    """_sync as a program. In a fresh Python it splits the CPU into two logical devices first (only possible
    before TensorFlow's runtime starts)."""
    from .tf_common import SYNC_DEVICES

    shards = tuple(p.shards) or (p.shape[0] // SYNC_DEVICES,) * SYNC_DEVICES
    second = adapter.wants_second_order(p)
    params = "[layer.gamma, layer.beta]" if p.affine else "[]"
    lines = ["import tensorflow as tf",
             "cpus = tf.config.list_physical_devices('CPU')",
             "try:  # two logical CPU devices (before the runtime starts; already split in a running suite)",
             f"    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * "
             f"{SYNC_DEVICES})",
             "except RuntimeError:",
             "    pass",
             *adapter.snippet_imports(),
             f"devices = [d.name for d in tf.config.list_logical_devices('CPU')][:{SYNC_DEVICES}]",
             "# one strategy per process (a running suite's, where there is one): a second one over the same",
             "# devices reuses the first one's collective keys and aborts (adapters/tf_common.mirrored_strategy)",
             "strategy = globals().get('strategy') or tf.distribute.MirroredStrategy(devices)",
             "with strategy.scope():",
             *["    " + line for line in _snippet_layer(adapter, p, synchronized=True)],
             f"params, cuts = {params}, np.cumsum((0,) + {shards!r})",
             "def distribute(a, dtype):",
             f"    parts = [tf.constant(np.asarray(a[cuts[i]:cuts[i + 1]]), dtype=dtype) for i in range({len(shards)})]",
             "    return strategy.experimental_distribute_values_from_function(lambda ctx: parts[ctx.replica_id_in_sync_group])",
             "local = lambda t: [np.asarray(o.numpy(), dtype=np.float64) for o in strategy.experimental_local_results(t)]",
             "def replica(x, dy, v, training):",
             "    with tf.GradientTape(persistent=True) as outer:",
             "        outer.watch(x)",
             "        with tf.GradientTape() as tape:",
             "            tape.watch(x)",
             "            y = layer(x, training=training)",
             "        g = tape.gradient(y, [x] + params, output_gradients=dy, "
             "unconnected_gradients=tf.UnconnectedGradients.ZERO)",
             "    out = {'y': y, 'dx': g[0], **({'dgamma': g[1], 'dbeta': g[2]} if params else {})}",
             f"    if {second!r}:",
             "        g2 = outer.gradient(g[0], [x] + params[:1], output_gradients=v, "
             "unconnected_gradients=tf.UnconnectedGradients.ZERO)",
             "        out.update(d2x=g2[0], **({'d2gamma': g2[1]} if params else {}))",
             "    return out",
             "ys, means, vars_, grads = [], [], [], {}",
             "for k, (x, mode) in enumerate(zip(p.xs, p.modes)):",
             "    t = mode == 'train'",
             f"    if k == len(p.xs) - 1 and {adapter.wants_gradients(p)!r}:  # the last step, under tapes",
             "        step = tf.function(lambda x, dy, v: strategy.run(lambda *a: replica(*a, t), args=(x, dy, v)))",
             f"        out = step(distribute(x, {p.dtype!r}), distribute(p.dy, {p.dtype!r}), "
             f"distribute(p.v, {p.dtype!r}))",
             "        grads = {q: g for q, g in out.items() if q != 'y'}",
             "    else:",
             "        step = tf.function(lambda x: strategy.run(lambda xs: {'y': layer(xs, training=t)}, args=(x,)))",
             f"        out = step(distribute(x, {p.dtype!r}))",
             "    ys.append(np.concatenate(local(out['y']), axis=0))",
             "    means.append(local(layer.moving_mean)[0]); vars_.append(local(layer.moving_variance)[0])",
             "observed = {'y': np.stack(ys), 'running_mean': np.stack(means), 'running_var': np.stack(vars_)}",
             "for q, g in grads.items():  # dx per shard, in order; dgamma, dbeta summed over the replicas",
             "    observed[q] = (np.concatenate(local(g), axis=0) if q in ('dx', 'd2x') else",
             "                   np.asarray(strategy.reduce('SUM', g, axis=None).numpy(), dtype=np.float64).reshape(-1))"]
    return "\n".join(lines)


# -- sync: synchronized BatchNorm under MirroredStrategy (Keras 3 TF backend, tf_keras)
def _sync(adapter, p: Problem, make_layer) -> Observation:
    """Each replica gets its shard of every step's batch (axis 0); the replicas' outputs are concatenated back
    in order, so the oracle is the global batch's (statistics of the whole batch, however it is split). The
    moving statistics are read after each step (the replicas' copies must agree: their spread is a fact).

    Gradients (last step), as a custom training loop takes them: each replica runs a GradientTape inside
    strategy.run on its shard, with dy (and v) split like x. dx (d2x) is each replica's gradient with respect to
    its own shard, concatenated in order: the gradient of the global <y, dy> with respect to the global batch,
    because synchronized BatchNorm's backward all-reduces the per-replica sums (the gradient of an all-sum is an
    all-sum: tensorflow/python/distribute/distribute_lib.py, ReplicaContext.all_reduce, grad_wrapper).
    dgamma, dbeta (d2gamma) are the replicas' gradients SUMMED (strategy.reduce(SUM)): the global <y, dy> is the
    sum of the replicas' <y_i, dy_i>, gamma and beta are one mirrored variable, and tf.distribute's optimizers
    aggregate per-replica gradients by SUM before applying them (users scale each replica's loss by 1/global
    batch, tf.nn.compute_average_loss): the summed gradient is the one that updates gamma and beta. Each
    replica's own dgamma is its shard's part only, so nothing per replica can be compared with the oracle."""
    import numpy as np
    import tensorflow as tf

    from .tf_common import SYNC_DEVICES, logical_cpus, mirrored_strategy

    devices = logical_cpus(tf)[:SYNC_DEVICES]
    if len(devices) < SYNC_DEVICES:
        raise RuntimeError(f"the sync path needs {SYNC_DEVICES} logical CPU devices, TensorFlow has {devices}: "
                           "its runtime started before adapters.tf_common.split_cpu could split the CPU")
    shards = tuple(p.shards) or (p.shape[0] // SYNC_DEVICES,) * SYNC_DEVICES
    bounds = np.cumsum((0,) + shards)
    strategy = mirrored_strategy(tf, devices)
    with strategy.scope():
        layer = make_layer()
        layer.build(p.shape)
        pdt = layer.moving_mean.dtype
        dname = pdt if isinstance(pdt, str) else pdt.name
        _assign(layer, p, lambda a: np.asarray(a, dtype=dname))
    params = [layer.gamma, layer.beta] if p.affine else []
    second = adapter.wants_second_order(p)

    def forward(training):
        return tf.function(lambda x: strategy.run(lambda xs: {"y": layer(xs, training=training)}, args=(x,)))

    def with_gradients(training):
        def replica(x, dy, v):
            with tf.GradientTape(persistent=True) as outer:
                outer.watch(x)
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=training)
                g = tape.gradient(y, [x] + params, output_gradients=dy,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            out = {"y": y, "dx": g[0], **({"dgamma": g[1], "dbeta": g[2]} if params else {})}
            if second:  # in inference dx = gamma r dy does not depend on x: zero, not None
                g2 = outer.gradient(g[0], [x] + params[:1], output_gradients=v,
                                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
                out.update(d2x=g2[0], **({"d2gamma": g2[1]} if params else {}))
            return out
        return tf.function(lambda x, dy, v: strategy.run(replica, args=(x, dy, v)))

    def distribute(a, dtype):
        parts = [tf.constant(np.asarray(a[bounds[i]:bounds[i + 1]]), dtype=dtype) for i in range(len(shards))]
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: parts[ctx.replica_id_in_sync_group])

    def local(t):
        return [np.asarray(o.numpy(), dtype=np.float64) for o in strategy.experimental_local_results(t)]

    wants = adapter.wants_gradients(p)
    steps = {t: forward(t) for t in (True, False)}
    ys, means, vars_, spread, grads = [], [], [], 0.0, {}
    for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
        if k == p.steps - 1 and wants:
            out = with_gradients(mode == "train")(distribute(x, p.dtype), distribute(p.dy, p.dtype),
                                                   distribute(p.v, p.dtype))
            grads = {q: t for q, t in out.items() if q != "y"}
        else:
            out = steps[mode == "train"](distribute(x, p.dtype))
        ys.append(np.concatenate(local(out["y"]), axis=0))
        ydt = strategy.experimental_local_results(out["y"])[0].dtype.name
        copies = [local(var) for var in (layer.moving_mean, layer.moving_variance)]
        spread = max(spread, *(float(np.max(np.abs(c - cs[0]))) for cs in copies for c in cs))
        means.append(copies[0][0])
        vars_.append(copies[1][0])
    obs = Observation(facts={"device": ", ".join(devices), "strategy": "MirroredStrategy",
                             "shards": "+".join(map(str, shards)),
                             "replica_statistics_spread": f"{spread:.3g}"})
    obs.put("y", np.stack(ys), ydt)
    obs.put("running_mean", np.stack(means), dname)
    obs.put("running_var", np.stack(vars_), dname)
    for q, t in grads.items():
        first = strategy.experimental_local_results(t)[0]
        if q in ("dx", "d2x"):  # each replica's shard, in order
            obs.put(q, np.concatenate(local(t), axis=0), first.dtype.name)
        else:  # summed over the replicas, as the optimizer aggregates them (docstring)
            total = strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)
            obs.put(q, np.reshape(total.numpy(), -1), total.dtype.name)
    for q in ("batch_mean", "batch_var"):
        obs.unsupported[q] = "Keras BatchNormalization does not expose the batch statistics"
    obs.unsupported["num_batches_tracked"] = "Keras BatchNormalization keeps no step counter"
    return obs
