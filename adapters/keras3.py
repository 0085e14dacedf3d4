"""Keras 3 keras.layers.BatchNormalization on the tensorflow, jax or torch backend (one adapter per backend).

Read in keras/src/layers/normalization/batch_normalization.py (Keras 3.15):
  - __init__: axis=-1, momentum=0.99, epsilon=1e-3; momentum weighs the OLD value: moving_mean.assign(
    moving_mean * momentum + mean * (1 - momentum)), the same for the variance from `ops.moments` (biased);
  - call: inputs cast to result_type(inputs.dtype, "float32") (float16/bfloat16 normalized in float32; float64
    too on jax/torch, see conformance/registry/keras.toml), the output cast to the compute dtype; the batch
    statistics are used only when `training and self.trainable` (trainable=False means inference);
  - ops.batch_normalization: x * inv + (beta - mean * inv), inv = rsqrt(variance + epsilon) * gamma
    (torch: (x - mean) * inv + beta); ops.moments (keras/src/backend/*/nn.py): tensorflow tf.nn.moments and
    jax jnp.var are two-pass; torch is mean(x^2) - mean(x)^2, unclamped ("fast").
float16/bfloat16 cases run under the mixed_float16/mixed_bfloat16 policy (float32 variables). The layer runs
through `stateless_call` with the Problem's gamma, beta and statistics as explicit state; layers (and JAX's
jitted functions) are cached per configuration and shape.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from reference import QUANTITIES, Convention, Problem

from . import keras_backends as kb
from . import tf_paths as tfp
from .base import EAGER, EAGER_PATH, Adapter, Observation, Precision

SOURCE = ("keras/src/layers/normalization/batch_normalization.py, "
          "keras/src/backend/{tensorflow,jax,torch}/nn.py (moments, batch_normalization), "
          "keras/src/backend/common/dtypes.py (result_type)")
POLICY = {"float64": "float64", "float32": "float32", "float16": "mixed_float16",
          "bfloat16": "mixed_bfloat16"}


class Keras3(tfp.KerasPaths, Adapter):  # execution paths: adapters/tf_paths.py
    framework = "keras"
    channel_axes = "any"
    conventional_layout = "channels_last"  # keras.config.image_data_format() defaults to it (backend/config.py)
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"}
    single_element_training = "computes"  # moments of one element: variance 0, y = beta
    source = SOURCE

    def __init__(self, backend: str = "tensorflow"):
        if backend not in kb.BACKENDS:
            raise ValueError(f"unknown Keras backend {backend!r}; known: {', '.join(kb.BACKENDS)}")
        self.backend, self.name = backend, f"keras.{backend}"
        self.api = f"keras.layers.BatchNormalization (Keras 3, {backend} backend)"
        self.convention = Convention(momentum_form="weight_on_old", default_momentum=0.99, default_eps=1e-3,
                                     running_var="biased", batch_var_estimator="biased", averaging="ema",
                                     variance="fast" if backend == "torch" else "two_pass")
        self.layers: dict = {}
        self.paths = (EAGER_PATH, *tfp.keras_paths(self.convention, tf_backend=backend == "tensorflow",
                                                           jax_backend=backend == "jax"))
        # TensorFlow's threads and XLA's CPU client flush subnormals (tf_common/jax_common.SUBNORMALS); torch not
        self.subnormals = "flush" if backend in ("tensorflow", "jax") else "gradual"

    def versions(self):  # keras first: its version is the one registry entries are matched against
        from importlib.metadata import version

        from . import tf_common

        other = tf_common.version() if self.backend == "tensorflow" else version(self.backend)
        return {"keras": version("keras"), self.backend: other}

    def precision(self, problem: Problem) -> Precision:
        dt = problem.dtype
        if dt in ("float16", "bfloat16"):  # mixed policy: float32 variables, float32 arithmetic in call()
            return Precision(io=dt, compute="float32", stats="float32", params="float32")
        return Precision.uniform(dt)

    def setup(self) -> None:
        loaded = sys.modules.get("keras")
        if loaded is not None and loaded.backend.backend() != self.backend:
            raise RuntimeError(f"keras is already imported with the {loaded.backend.backend()} backend; "
                               f"{self.name} needs a fresh process (Keras fixes its backend at import)")
        os.environ["KERAS_BACKEND"] = self.backend
        self.ops = kb.BACKENDS[self.backend]()
        self.ops.setup()
        import keras

        self.keras = keras

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "Keras BatchNormalization has no cumulative average (momentum is a fixed EMA weight)"
        if not problem.track_running_stats:
            return "Keras BatchNormalization always keeps moving statistics (inference always uses them)"
        if problem.memory_format != "contiguous":
            return "Keras tensors have no memory format: this case is its contiguous twin"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        last = problem.axis == len(problem.shape) - 1
        cfg: dict[str, object] = {"axis": -1 if last else problem.axis}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["epsilon"] = problem.eps
        cfg.update(center=problem.affine, scale=problem.affine, dtype=POLICY[problem.dtype])
        return cfg

    def layer(self, problem: Problem):
        cfg = self.native_config(problem)
        key = (problem.shape, tuple(sorted(cfg.items())))
        if key not in self.layers:
            self.layers[key] = self.keras.layers.BatchNormalization(**cfg)
            self.layers[key].build(problem.shape)
        return self.layers[key]

    def run(self, p: Problem) -> Observation:
        return self.steps(p, self.layer(p))

    def steps(self, p: Problem, layer, call=None, input_dtype: str | None = None) -> Observation:
        """Run the case's steps through the layer's stateless_call (or `call(layer, training)`, a stand-in an
        execution path gives: a tf.function of it) and read everything back. input_dtype: what the inputs
        (and v) are given in, default the case dtype. The running statistics are the last two
        non-trainable variables (a frozen layer holds gamma and beta there too)."""
        ops, num = self.keras.ops, lambda t: kb.to_numpy(self.keras, t)  # noqa: E731
        pdt, xdt = layer.variable_dtype, input_dtype or p.dtype

        def to(a, dtype):  # explicit dtype: Keras would read a float64 array as floatx (float32)
            return ops.convert_to_tensor(a.copy(), dtype=dtype)

        params = [to(p.gamma, pdt), to(p.beta, pdt)] if p.affine else []
        if p.native_init:  # the moving statistics build() created with the layer's initializers (zeros, ones)
            stats = [ops.convert_to_tensor(layer.moving_mean), ops.convert_to_tensor(layer.moving_variance)]
        else:
            stats = [to(p.running_mean, pdt), to(p.running_var, pdt)]
        tv, ntv = (params, stats) if layer.trainable else ([], params + stats)
        obs = Observation(facts={"device": "cpu", "backend": self.backend, "policy": layer.dtype_policy.name})
        ys, means, vars_ = [], [], []
        for k, (x, mode) in enumerate(zip(p.xs, p.modes, strict=True)):
            xt, training = to(x, xdt), mode == "train"
            fn = call(layer, training) if call else None
            if k == p.steps - 1 and self.wants_gradients(p):
                y, ntv, grads = self.ops.gradients(layer, tv, ntv, xt, training, to(p.dy, p.dtype),
                                                   to(p.v, xdt), self.wants_second_order(p), **_with(fn))
                for q, t in grads.items():
                    obs.put(q, num(t), self.ops.dtype(t))
            else:
                y, ntv = self.ops.forward(layer, tv, ntv, xt, training, **_with(fn))
            ys, means, vars_ = ys + [y], means + [ntv[-2]], vars_ + [ntv[-1]]
        for q, ts in (("y", ys), ("running_mean", means), ("running_var", vars_)):
            obs.put(q, np.stack([num(t) for t in ts]), self.ops.dtype(ts[0]))
        obs.unsupported.update(dict.fromkeys(("batch_mean", "batch_var"), "Keras BatchNormalization does not "
                                             "expose the batch statistics"),
                               num_batches_tracked="Keras BatchNormalization keeps no step counter")
        return obs

    # -- what tf_paths.KerasPaths needs of this flavour
    frozen_parameters_are_state = True  # steps(): a non-trainable layer's stateless call takes gamma, beta as state

    @property
    def keras_module(self):
        return self.keras

    def path_step(self, layer, training):
        return lambda tv, ntv, x: layer.stateless_call(tv, ntv, x, training=training)

    def dtype_policy(self):
        return self.keras.config.dtype_policy()

    def set_dtype_policy(self, policy) -> None:
        self.keras.config.set_dtype_policy(policy)

    def variable_numpy(self, variable):
        return self.keras.ops.convert_to_numpy(variable)

    def snippet_imports(self) -> list[str]:
        """The lines that import Keras 3 on this adapter's backend as `keras` (and the backend itself)."""
        ops = getattr(self, "ops", None) or kb.BACKENDS[self.backend]()
        return [f"import os; os.environ['KERAS_BACKEND'] = {self.backend!r}", ops.header, "import keras"]

    def snippet(self, p: Problem, path: str = EAGER) -> str:
        """The steps through the layer's stateless_call, as `steps` runs them on `path`: eager; graph/xla (each
        mode's stateless_call in a tf.function); frozen (trainable=False: gamma and beta join the state); mixed-*
        (the global policy, float32 input); no-jit (everything under jax.disable_jit())."""
        ops, grads = getattr(self, "ops", None) or kb.BACKENDS[self.backend](), self.wants_gradients(p)
        frozen, mixed = path == "frozen", tfp.POLICY_OF.get(path)
        cfg = {k: v for k, v in self.native_config(p).items() if not (mixed and k == "dtype")}
        step, last = ops.forward_expr, ops.last(self.wants_second_order(p))
        lines = self.snippet_imports()
        if mixed:
            lines += [f"keras.config.set_dtype_policy({mixed!r})  # the path: a global mixed policy"]
        lines += [
            f"layer = keras.layers.BatchNormalization(**{cfg!r})",
            f"dt, xdt, _ = {p.dtype!r}, {'float32' if mixed else p.dtype!r}, layer.build({p.shape!r})",
        ]
        if mixed:
            lines += ["keras.config.set_dtype_policy('float32')"]
        if frozen:
            lines += ["layer.trainable = False  # the path: frozen, then called with training=True"]
        if path in ("graph", "xla"):
            lines += ["fns = {t: tf.function(lambda tv, ntv, x, t=t: layer.stateless_call(tv, ntv, x, training=t), "
                      f"jit_compile={path == 'xla'!r}, reduce_retracing=False) for t in (True, False)}}"]
            stateless = "layer.stateless_call(tv, ntv, xt, training=training)"
            step, last = step.replace(stateless, "fns[training](tv, ntv, xt)"), \
                [line.replace(stateless, "fns[training](tv, ntv, xt)") for line in last]
        params = "[to(p.gamma, pdt), to(p.beta, pdt)]" if p.affine else "[]"
        lines += [
            "to = lambda a, d: keras.ops.convert_to_tensor(np.array(a), dtype=d)",
            "num = lambda t: np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)",
            "pdt, ys, means, vars_ = layer.variable_dtype, [], [], []",
            f"tv, ntv = {'[]' if frozen else params}, "
            f"{params + ' + ' if frozen and p.affine else ''}[to(p.running_mean, pdt), to(p.running_var, pdt)]",
            "for k, (x, mode) in enumerate(zip(p.xs, p.modes)):",
            "    xt, training = to(x, xdt), mode == 'train'",
            f"    if k < len(p.xs) - 1 or not {grads!r}:",
            f"        y, ntv = {step}",
            "    else:",
            *["        " + line for line in last],
            "    ys.append(num(y)); means.append(num(ntv[-2])); vars_.append(num(ntv[-1]))",
            "observed = {'y': np.stack(ys), 'running_mean': np.stack(means), 'running_var': np.stack(vars_)}",
        ]
        has_gamma = p.affine and not frozen
        if grads:
            lines += ["observed['dx'] = num(g[0])"]
            lines += ["observed.update(dgamma=num(g[1]), dbeta=num(g[2]))"] if has_gamma else []
        if self.wants_second_order(p):
            lines += [*ops.after, "observed['d2x'] = num(d2x)"]
            lines += ["observed['d2gamma'] = num(d2g)"] if has_gamma else []
        if path == tfp.NO_JIT.name:
            return "import jax\nwith jax.disable_jit():  # the path: op by op\n" + \
                "\n".join("    " + line for line in "\n".join(lines).splitlines())
        return "\n".join(lines)

    def bench(self, shape, dtype, what):
        """The layer's stateless_call on NHWC (axis=-1, its default), compiled as each backend's training step
        is (tf.function, jax.jit; torch eager): see adapters.bench_support.keras_ops."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "last")
        layer = self.keras.layers.BatchNormalization(**self.native_config(p))  # its own: built for this shape
        layer.build(p.shape)
        pdt, ops = layer.variable_dtype, self.keras.ops

        def to(a, dtype):
            return ops.convert_to_tensor(a.copy(), dtype=dtype)
        tv = [to(p.gamma, pdt), to(p.beta, pdt)]
        ntv = [to(p.running_mean, pdt), to(p.running_var, pdt)]
        fn = bs.keras_ops(self.backend, self.ops, layer, tv, ntv, to(p.xs[0], p.dtype), to(p.dy, p.dtype), what)
        return bs.make(fn, p, layout, what)


def _with(fn) -> dict:
    return {"call": fn} if fn is not None else {}
