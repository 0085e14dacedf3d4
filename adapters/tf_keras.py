"""tf_keras (Keras 2) tf_keras.layers.BatchNormalization, fused=True or fused=False (one adapter each).

Read in tf_keras/src/layers/normalization/batch_normalization.py (tf_keras 2.21), BatchNormalizationBase:
  - __init__: axis=-1, momentum=0.99 (weight on the OLD value), epsilon=1e-3; fused=True raises unless the
    compute dtype is float16/bfloat16/float32 (_raise_if_fused_cannot_be_used), and build() raises unless the
    input is 4-D or 5-D with the channels on axis 1 or last;
  - parameters and moving statistics are float32 when the layer dtype is float16/bfloat16 (_param_dtype);
  - non-fused call: float16/bfloat16 inputs cast to float32; tf.nn.moments (two-pass, biased) in the parameter
    dtype; var.assign_sub((var - value) * (1 - momentum)) (_assign_moving_average); tf.nn.batch_normalization;
  - fused call (eager): FusedBatchNormV3 with exponential_avg_factor = 1 - momentum and the moving statistics
    as mean/variance; the new moving variance is the op's output, Bessel-corrected, and nothing undoes it
    (_bessels_correction_test_only = True): the fused path keeps an UNBIASED moving variance, the non-fused
    path a biased one;
  - trainable=False forces inference (_get_training_value).
float16/bfloat16 cases run under the mixed_float16/mixed_bfloat16 policy (float32 variables).
"""
from __future__ import annotations

from reference import QUANTITIES, Convention, Problem

from . import tf_common as tfc
from . import tf_paths as tfp
from .base import EAGER, EAGER_PATH, Adapter, Observation, Precision
from .keras3 import POLICY  # the dtype policy names are the same in tf_keras (Keras 2) and Keras 3

SOURCE = "tf_keras/src/layers/normalization/batch_normalization.py (BatchNormalizationBase)"


class TFKeras(tfp.KerasPaths, Adapter):  # execution paths: adapters/tf_paths.py
    framework = "tf_keras"
    channel_axes = "any"
    conventional_layout = "channels_last"  # tf_keras backend.image_data_format() default
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"}
    single_element_training = "computes"
    source = SOURCE
    subnormals = tfc.SUBNORMALS

    def __init__(self, fused: bool = True):
        self.fused = bool(fused)
        self.name = "tf_keras.fused" if self.fused else "tf_keras.nonfused"
        self.api = f"tf_keras.layers.BatchNormalization(fused={self.fused})"
        self.convention = Convention(momentum_form="weight_on_old", default_momentum=0.99, default_eps=1e-3,
                                     running_var="unbiased" if self.fused else "biased",
                                     batch_var_estimator="biased", averaging="ema", variance="two_pass")
        self.layers: dict = {}
        self.paths = (EAGER_PATH, *tfp.keras_paths(self.convention, tf_backend=True))

    def versions(self):
        from importlib.metadata import version

        return {"tf_keras": version("tf_keras"), "tensorflow": tfc.version()}

    def precision(self, problem: Problem) -> Precision:
        dt = problem.dtype
        if dt in ("float16", "bfloat16"):  # _param_dtype float32; both paths compute in float32
            return Precision(io=dt, compute="float32", stats="float32", params="float32")
        return Precision.uniform(dt)

    def setup(self) -> None:
        self.tf = tfc.import_tf()
        import tf_keras

        self.tf_keras = tf_keras

    def unsupported(self, problem: Problem) -> str | None:
        nd = len(problem.shape)
        if problem.momentum is None and not problem.use_defaults:
            return "tf_keras BatchNormalization has no cumulative average (momentum is a fixed EMA weight)"
        if not problem.track_running_stats:
            return "tf_keras BatchNormalization always keeps moving statistics (inference always uses them)"
        if self.fused and nd not in (4, 5):
            return "fused=True supports 4-D and 5-D input only (build: 'only support 4D or 5D input tensors')"
        if self.fused and problem.axis not in (1, nd - 1):
            return "fused=True needs the channel axis 1 or last (NCHW/NHWC/NCDHW/NDHWC)"
        if self.fused and problem.dtype == "float64":
            return "fused=True is only supported when the compute dtype is float16, bfloat16, or float32"
        return tfc.no_memory_format(problem) or super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        last = problem.axis == len(problem.shape) - 1
        cfg: dict[str, object] = {"axis": -1 if last else problem.axis}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["epsilon"] = problem.eps
        cfg.update(center=problem.affine, scale=problem.affine, fused=self.fused,
                   dtype=POLICY[problem.dtype])
        return cfg

    def layer(self, problem: Problem):
        cfg = self.native_config(problem)
        key = (problem.shape, tuple(sorted(cfg.items())))
        if key not in self.layers:
            layer = self.tf_keras.layers.BatchNormalization(**cfg)
            layer.build(problem.shape)
            self.layers[key] = layer
        return self.layers[key]

    def run(self, p: Problem) -> Observation:
        return self.steps(p, self.layer(p))

    def steps(self, p: Problem, layer, call=None, input_dtype: str | None = None) -> Observation:
        """Run the case's steps through `layer` (or `call(layer, training)`: the layer call as an execution path
        runs it) and read everything back; input_dtype: what the inputs are given in (default the case's)."""
        tf = self.tf
        pdt, xdt = layer.moving_mean.dtype, input_dtype or p.dtype
        if p.affine:
            layer.gamma.assign(tfc.constant(tf, p.gamma, pdt))
            layer.beta.assign(tfc.constant(tf, p.beta, pdt))
        if p.native_init:  # the layer's own initializers (the layer is reused across cases: re-initialize)
            layer.moving_mean.assign(layer.moving_mean_initializer(layer.moving_mean.shape, pdt))
            layer.moving_variance.assign(layer.moving_variance_initializer(layer.moving_variance.shape, pdt))
        else:
            layer.moving_mean.assign(tfc.constant(tf, p.running_mean, pdt))
            layer.moving_variance.assign(tfc.constant(tf, p.running_var, pdt))
        obs = Observation(facts={"device": "cpu", "fused": str(layer.fused), "onednn": tfc.onednn(),
                                 "policy": layer.dtype_policy.name})
        ys, means, vars_ = [], [], []
        params = [layer.gamma, layer.beta] if p.affine else []
        for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
            xt, training = tfc.constant(tf, x, xdt), mode == "train"
            fn = call(layer, training) if call else (lambda xx, t=training: layer(xx, training=t))
            if k == p.steps - 1 and self.wants_gradients(p):
                fwd = lambda xx, *_, f=fn: f(xx)  # noqa: E731
                y = tfc.with_gradients(tf, obs, fwd, xt, params, tfc.constant(tf, p.dy, p.dtype),
                                       tfc.constant(tf, p.v, xdt), self.wants_second_order(p))
            else:
                y = fn(xt)
            ys.append(y)
            means.append(tf.identity(layer.moving_mean))
            vars_.append(tf.identity(layer.moving_variance))
        tfc.put(obs, "y", ys)
        tfc.put(obs, "running_mean", means)
        tfc.put(obs, "running_var", vars_)
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "tf_keras BatchNormalization does not expose the batch statistics"
        obs.unsupported["num_batches_tracked"] = "tf_keras BatchNormalization keeps no step counter"
        return obs

    # -- execution paths: tf_paths.KerasPaths, and one refusal of tf_keras' own
    def path_unsupported(self, p: Problem, path: str) -> str | None:
        if path == "sync" and self.fused:
            return ("tf_keras refuses synchronized=True with fused=True ('`fused=True` is not supported when "
                    "`synchronized=True`.', batch_normalization.py, BatchNormalizationBase.__init__)")
        return super().path_unsupported(p, path)

    # -- what tf_paths.KerasPaths needs of this flavour
    @property
    def keras_module(self):
        return self.tf_keras

    def path_step(self, layer, training):
        return lambda x: layer(x, training=training)

    def dtype_policy(self):
        return self.tf_keras.mixed_precision.global_policy()

    def set_dtype_policy(self, policy) -> None:
        self.tf_keras.mixed_precision.set_global_policy(policy)

    @staticmethod
    def variable_numpy(variable):
        return variable.numpy()

    def snippet_imports(self) -> list[str]:
        return ["import tensorflow as tf", "import tf_keras as keras"]

    def snippet(self, p: Problem, path: str = EAGER) -> str:
        """The steps through the layer, as `steps` runs them on `path`: eager; graph/xla (each mode's layer call
        in a tf.function); frozen (trainable=False); mixed-* (the global policy, float32 input)."""
        mixed = tfp.POLICY_OF.get(path)
        cfg = {k: v for k, v in self.native_config(p).items() if not (mixed and k == "dtype")}
        head = ["import tf_keras"]
        if mixed:
            head += [f"tf_keras.mixed_precision.set_global_policy({mixed!r})  # the path: a global mixed policy"]
        head += [
            f"dt, xdt, layer = {p.dtype!r}, {'float32' if mixed else p.dtype!r}, "
            f"tf_keras.layers.BatchNormalization(**{cfg!r})",
            f"layer.build({p.shape!r})",
        ]
        if mixed:
            head += ["tf_keras.mixed_precision.set_global_policy('float32')"]
        if path == "frozen":
            head += ["layer.trainable = False  # the path: frozen, then called with training=True"]
        head += [
            "c = lambda v, d=dt: tf.cast(tf.constant(np.array(v)), d)",
            "pdt = layer.moving_mean.dtype",
            *(["layer.gamma.assign(c(p.gamma, pdt)); layer.beta.assign(c(p.beta, pdt))"] if p.affine else []),
            "layer.moving_mean.assign(c(p.running_mean, pdt))",
            "layer.moving_variance.assign(c(p.running_var, pdt))",
        ]
        call = "layer(xt, training=mode == 'train')"
        if path in ("graph", "xla"):
            head += ["fns = {t: tf.function(lambda x, t=t: layer(x, training=t), "
                     f"jit_compile={path == 'xla'!r}, reduce_retracing=False) for t in (True, False)}}"]
            call = "fns[mode == 'train'](xt)"
        step = [f"y = {call}",
                "rec = {'y': y, 'running_mean': layer.moving_mean, 'running_var': layer.moving_variance}"]
        return tfc.snippet_program(head, step, "[layer.gamma, layer.beta]" if p.affine else "[]",
                                   self.wants_gradients(p), self.wants_second_order(p), input_dtype="xdt")

    def bench(self, shape, dtype, what):
        """The layer on NHWC (axis=-1, its default) called in a tf.function, as Keras 2's fit() runs it; in
        training the moving statistics are assigned inside the function."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "last")
        tf = self.tf
        layer = self.tf_keras.layers.BatchNormalization(**self.native_config(p))  # its own: no shared state
        layer.build(p.shape)
        pdt = layer.moving_mean.dtype
        layer.gamma.assign(tfc.constant(tf, p.gamma, pdt))
        layer.beta.assign(tfc.constant(tf, p.beta, pdt))
        layer.moving_mean.assign(tfc.constant(tf, p.running_mean, pdt))
        layer.moving_variance.assign(tfc.constant(tf, p.running_var, pdt))
        x, training = tfc.constant(tf, p.xs[0], p.dtype), what != "eval"
        if what in ("eval", "train"):
            fn = bs.tf_call(tf, lambda x: (layer(x, training=training),), x)
        else:
            params = [layer.gamma, layer.beta]

            def forward_backward(x, dy):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=True)
                return (y, *tape.gradient(y, [x, *params], output_gradients=dy))
            fn = bs.tf_call(tf, forward_backward, x, tfc.constant(tf, p.dy, p.dtype))
        return bs.make(fn, p, layout, what)
