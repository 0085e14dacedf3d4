"""Keras 3's three backends, as the Keras adapter needs them: import, gradients of a layer's `stateless_call`
(the backend-neutral way to run a Keras layer with explicit state, and the way JAX users must take
gradients), and the matching lines of a repro snippet. Each framework is imported in `setup()` only.

`gradients` returns (y, new non-trainable values, {quantity: tensor}): dx, and dgamma/dbeta when the layer has
trainable variables [gamma, beta]; second order: d<dx, v>/dx and d<dx, v>/dgamma.
Snippet lines: `last(second)` runs the last step (leaves y, ntv and g = [dx, dgamma, dbeta]); `after` sets
d2x and d2g (None without gamma) once the loop is done. They use `to(array, dtype)`, `dt` (the case dtype: dy)
and `xdt` (the input's dtype: x, v).
"""
from __future__ import annotations

import os

import numpy as np

from .base import compiled_code_dir


class TensorFlowBackend:
    name = "tensorflow"
    header = "import tensorflow as tf"
    forward_expr = "layer.stateless_call(tv, ntv, xt, training=training)"
    after = ["g2 = outer.gradient(g[0], [xt] + tv[:1], output_gradients=to(p.v, xdt))",
             "d2x = tf.zeros_like(xt) if g2[0] is None else g2[0]",
             "d2g = (tf.zeros_like(tv[0]) if g2[1] is None else g2[1]) if tv else None"]

    def last(self, second):
        return ["with tf.GradientTape(persistent=True) as outer:",
                "    outer.watch([xt] + tv)",
                "    with tf.GradientTape() as tape:",
                "        tape.watch([xt] + tv)",
                "        y, ntv = layer.stateless_call(tv, ntv, xt, training=training)",
                "    g = tape.gradient(y, [xt] + tv, output_gradients=to(p.dy, dt))"]

    def setup(self):
        from . import tf_common

        self.tf = tf_common.import_tf()

    def dtype(self, t) -> str:
        return t.dtype.name

    def forward(self, layer, tv, ntv, x, training, call=None):
        """call(tv, ntv, x): the stateless call as an execution path runs it (a tf.function of it)."""
        if call is not None:
            return call(tv, ntv, x)
        return layer.stateless_call(tv, ntv, x, training=training)

    def gradients(self, layer, tv, ntv, x, training, dy, v, second, call=None):
        tf, wrt = self.tf, [x] + list(tv)
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(wrt)
            with tf.GradientTape() as tape:
                tape.watch(wrt)
                y, new = self.forward(layer, tv, ntv, x, training, call)
            g = tape.gradient(y, wrt, output_gradients=dy)
        out = _named(g, tv)
        if second:
            g2 = outer.gradient(g[0], wrt[:2], output_gradients=v)
            out["d2x"] = g2[0] if g2[0] is not None else tf.zeros_like(x)
            if tv:
                out["d2gamma"] = g2[1] if g2[1] is not None else tf.zeros_like(tv[0])
        return y, new, out


class JaxBackend:
    """jax.vjp of the stateless call, jitted once per layer and mode (first and second order separately, so
    the first-order numbers do not depend on whether second order was asked for)."""

    name = "jax"
    header = "import jax\njax.config.update('jax_enable_x64', True)"
    forward_expr = ("jax.jit(lambda tv, ntv, x, t=training: layer.stateless_call(tv, ntv, x, training=t))"
                    "(tv, ntv, xt)")
    after = ["def second(x, tv, ntv, dy, v):",
             "    return jax.vjp(lambda x_, tv_: first(x_, tv_, ntv, dy)[2], x, tv)[1](v)",
             "d2x, d2tv = jax.jit(second)(xt, tv, ntv_in, to(p.dy, dt), to(p.v, xdt))",
             "d2g = d2tv[0] if tv else None"]

    def last(self, second):
        return ["def first(x, tv, ntv, dy):",
                "    fn = lambda x_, tv_: layer.stateless_call(tv_, ntv, x_, training=training)",
                "    y, vjp, new = jax.vjp(fn, x, tv, has_aux=True)",
                "    dx, dtv = vjp(dy)",
                "    return y, new, dx, dtv",
                "ntv_in = ntv",
                "y, ntv, dx, dtv = jax.jit(first)(xt, tv, ntv, to(p.dy, dt))",
                "g = [dx] + list(dtv)"]

    def setup(self):
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_enable_fast_math" not in flags:  # no reassociation or approximate math in XLA:CPU
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_fast_math=false").strip()
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 cases; explicit dtypes everywhere else
        # Compiled executables persist across runs ($BNCONFORM_CACHE_DIR/jax, default reports/.cache/jax):
        # compiling is nearly all of this adapter's time.
        path = compiled_code_dir("jax")
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path.absolute()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        self.jax = jax
        self.cache = {}

    def dtype(self, t) -> str:
        return str(t.dtype)

    def functions(self, layer, training):
        key = (id(layer), training)
        if key not in self.cache:
            jax = self.jax

            def forward(tv, ntv, x):
                return layer.stateless_call(tv, ntv, x, training=training)

            def first(x, tv, ntv, dy):
                fn = lambda x_, tv_: layer.stateless_call(tv_, ntv, x_, training=training)  # noqa: E731
                y, vjp, new = jax.vjp(fn, x, tv, has_aux=True)
                dx, dtv = vjp(dy)
                return y, new, dx, dtv

            def second(x, tv, ntv, dy, v):
                return jax.vjp(lambda x_, tv_: first(x_, tv_, ntv, dy)[2], x, tv)[1](v)

            # the layer is kept alive with its functions, so its id stays unique
            self.cache[key] = (layer, jax.jit(forward), jax.jit(first), jax.jit(second))
        return self.cache[key][1:]

    def forward(self, layer, tv, ntv, x, training):
        return self.functions(layer, training)[0](tv, ntv, x)

    def gradients(self, layer, tv, ntv, x, training, dy, v, second):
        _, first, second_fn = self.functions(layer, training)
        y, new, dx, dtv = first(x, tv, ntv, dy)
        out = _named([dx] + list(dtv), tv)
        if second:
            d2x, d2tv = second_fn(x, tv, ntv, dy, v)
            out["d2x"] = d2x
            if tv:
                out["d2gamma"] = d2tv[0]
        return y, new, out


class TorchBackend:
    name = "torch"
    header = "import torch"
    forward_expr = "layer.stateless_call(tv, ntv, xt, training=training)"
    after = ["g2 = (torch.autograd.grad(g[0], [xt] + tv[:1], grad_outputs=to(p.v, xdt), allow_unused=True)",
             "      if g[0].requires_grad else [None, None])",
             "d2x = torch.zeros_like(xt) if g2[0] is None else g2[0]",
             "d2g = (torch.zeros_like(tv[0]) if g2[1] is None else g2[1]) if tv else None"]

    def last(self, second):
        return ["xt = xt.requires_grad_(True); tv = [t.requires_grad_(True) for t in tv]",
                "y, ntv = layer.stateless_call(tv, ntv, xt, training=training)",
                f"g = torch.autograd.grad(y, [xt] + tv, grad_outputs=to(p.dy, dt), create_graph={second!r})"]

    def setup(self):
        import torch

        threads = os.environ.get("BNCONFORM_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        self.torch = torch

    def dtype(self, t) -> str:
        return str(t.dtype).removeprefix("torch.")

    def forward(self, layer, tv, ntv, x, training):
        return layer.stateless_call(tv, ntv, x, training=training)

    def gradients(self, layer, tv, ntv, x, training, dy, v, second):
        torch = self.torch
        x = x.detach().requires_grad_(True)
        tv = [t.detach().requires_grad_(True) for t in tv]
        y, new = layer.stateless_call(tv, ntv, x, training=training)
        g = torch.autograd.grad(y, [x] + tv, grad_outputs=dy, create_graph=second)
        out = _named(g, tv)
        if second:  # in inference without gamma, dx = dy * r depends on nothing that requires grad
            g2 = (torch.autograd.grad(g[0], [x] + tv[:1], grad_outputs=v, allow_unused=True)
                  if g[0].requires_grad else [None, None])
            out["d2x"] = g2[0] if g2[0] is not None else torch.zeros_like(x)
            if tv:
                out["d2gamma"] = g2[1] if g2[1] is not None else torch.zeros_like(tv[0])
        return y, [n.detach() for n in new], out


BACKENDS = {"tensorflow": TensorFlowBackend, "jax": JaxBackend, "torch": TorchBackend}


def _named(grads, tv) -> dict:
    out = {"dx": grads[0]}
    if tv:
        out["dgamma"], out["dbeta"] = grads[1], grads[2]
    return out


def to_numpy(keras, t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64).copy()
