"""flax.linen.BatchNorm: the module applied with a mutable `batch_stats` collection, both variance algorithms."""
from __future__ import annotations

import numpy as np

from reference import QUANTITIES, Convention, Problem

from . import jax_common as jc
from .jax_repro import snippet
from .base import EAGER, Adapter, Observation, Precision

# flax/linen/normalization.py (flax 0.12): BatchNorm(momentum=0.99, epsilon=1e-5) keeps
# ra = momentum * ra + (1 - momentum) * batch (weight on the old value) with the biased batch variance;
# _compute_stats: use_fast_variance=True (default) is var = max(0, E[x^2] - E[x]^2), False is two-pass
# E[(x - E[x])^2]; both promote the input to at least float32 first (force_float32_reductions=True).
# _normalize: y = (x - mean) * (rsqrt(var + eps) * scale) + bias, cast to `dtype` at the end. Inference
# (use_running_average=True) normalizes with the stored statistics, which stay float32 for float16/bfloat16.
SOURCE = "flax/linen/normalization.py (BatchNorm, _compute_stats, _normalize)"
FAST = Convention(momentum_form="weight_on_old", default_momentum=0.99, default_eps=1e-5, running_var="biased",
                  averaging="ema", variance="fast_clamped")


class FlaxLinen(Adapter):
    framework = "flax"
    api = "flax.linen.BatchNorm"
    channel_axes = "any"
    conventional_layout = "channels_last"  # flax.linen.Conv takes (batch, spatial..., features)
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"}
    source = SOURCE
    subnormals = jc.SUBNORMALS
    paths = jc.JAX_PATHS

    def __init__(self, use_fast_variance: bool = True):
        self.use_fast_variance = use_fast_variance
        self.name = "flax.linen" if use_fast_variance else "flax.linen.two_pass"
        self.convention = FAST if use_fast_variance else FAST.with_(variance="two_pass")

    def setup(self) -> None:
        self.jax = jc.import_jax()
        import flax.linen as nn

        self.nn = nn
        self.jitted = jc.Jitted(self.jax)
        self.modules: dict = {}
        self.device = jc.device(self.jax)

    def precision(self, problem: Problem) -> Precision:
        # statistics, normalization and stored running statistics in promote_types(dtype, float32);
        # scale and bias in param_dtype (= the case dtype here); the result cast to dtype.
        c = jc.wider(problem.dtype)
        return Precision(io=problem.dtype, compute=c, stats=c, params=problem.dtype)

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "flax BatchNorm has no cumulative average (momentum is always an EMA decay)"
        if problem.memory_format != "contiguous":
            return "JAX arrays have no memory format; the case would repeat the contiguous one"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["epsilon"] = problem.eps
        cfg.update(axis=problem.axis, use_fast_variance=self.use_fast_variance, use_bias=problem.affine,
                   use_scale=problem.affine, dtype=problem.dtype, param_dtype=problem.dtype)
        return cfg

    def _apply(self, p: Problem, path: str = EAGER):
        cfg = self.native_config(p)
        if path == jc.SYNC:  # statistics averaged over the device axis (flax/linen/normalization.py, _compute_stats)
            cfg["axis_name"] = jc.DEVICE_AXIS
        key = tuple(sorted(cfg.items()))
        if key not in self.modules:
            jnp = self.jax.numpy
            bn = self.nn.BatchNorm(**{**cfg, "dtype": getattr(jnp, p.dtype), "param_dtype": getattr(jnp, p.dtype)})

            def apply(params, state, x, train, mask=None):
                prm = {"scale": params["gamma"], "bias": params["beta"]} if params else {}
                y, upd = bn.apply({"params": prm, "batch_stats": state}, x, use_running_average=not train,
                                  mask=mask, mutable=["batch_stats"])
                return y, upd["batch_stats"]
            self.modules[key] = apply
        return key, self.modules[key]

    def path_unsupported(self, p: Problem, path: str) -> str | None:
        return jc.path_unsupported(self, p, path, masks=True)

    def run_path(self, p: Problem, path: str) -> Observation:
        return self.run(p, path)

    def run(self, p: Problem, path: str = EAGER) -> Observation:
        key, apply = self._apply(p, path)
        if p.native_init:
            state = self._own_batch_stats(p)
        else:  # injected in the dtype a training step leaves batch_stats in: promote(float32, dtype)
            stats = jc.wider(p.dtype)
            state = {"mean": jc.to_jax(self.jax, p.running_mean, stats),
                     "var": jc.to_jax(self.jax, p.running_var, stats)}
        obs = Observation(facts={"device": self.device, "use_fast_variance": str(self.use_fast_variance)})
        jc.run(self, p, key, apply, jc.initial_params(self.jax, p, p.dtype), state,
               lambda s: {"running_mean": s["mean"], "running_var": s["var"]}, obs, path)
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "flax.linen.BatchNorm does not return the batch statistics"
        obs.unsupported["num_batches_tracked"] = "flax.linen.BatchNorm keeps no step counter"
        return obs

    def _own_batch_stats(self, p: Problem) -> dict:
        """batch_stats as BatchNorm.init makes them: shapes and dtypes from flax itself (init traced with
        jax.eval_shape: nothing runs eagerly), values its initializers' (flax/linen/normalization.py, BatchNorm:
        `jnp.zeros` / `jnp.ones` in float32 when force_float32_reductions, the default, whatever the dtype)."""
        jax, jnp = self.jax, self.jax.numpy
        cfg = self.native_config(p)
        bn = self.nn.BatchNorm(**{**cfg, "dtype": getattr(jnp, p.dtype), "param_dtype": getattr(jnp, p.dtype)})
        x = jax.ShapeDtypeStruct(p.shape, jc.np_dtype(p.dtype))
        shapes = jax.eval_shape(lambda x: bn.init(jax.random.key(0), x, use_running_average=True), x)["batch_stats"]
        return {"mean": jc.to_jax(jax, np.zeros(shapes["mean"].shape), str(shapes["mean"].dtype)),
                "var": jc.to_jax(jax, np.ones(shapes["var"].shape), str(shapes["var"].dtype))}

    def snippet(self, p: Problem) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.native_config(p).items() if k not in ("dtype", "param_dtype"))
        s = jc.wider(p.dtype)
        return snippet(p, [
            "import flax.linen as nn",
            f"bn = nn.BatchNorm({cfg}, dtype=dt, param_dtype=dt)",
            "def apply(params, state, x, train):",
            "    prm = {'scale': params['gamma'], 'bias': params['beta']} if params else {}",
            "    y, upd = bn.apply({'params': prm, 'batch_stats': state}, x, use_running_average=not train,",
            "                      mutable=['batch_stats'])",
            "    return y, upd['batch_stats']",
        ], "{'gamma': cast(p.gamma, dt), 'beta': cast(p.beta, dt)}",
            f"{{'mean': cast(p.running_mean, jnp.{s}), 'var': cast(p.running_var, jnp.{s})}}",
            "{'running_mean': state['mean'], 'running_var': state['var']}")

    def bench(self, shape, dtype, what):
        """The module's apply on NHWC (axis=-1, flax's default), jitted and compiled ahead of time."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "last")
        jax, stats = self.jax, jc.wider(p.dtype)
        _, apply = self._apply(p)
        state = {"mean": jc.to_jax(jax, p.running_mean, stats), "var": jc.to_jax(jax, p.running_var, stats)}
        fn = bs.jax_ops(jax, apply, jc.initial_params(jax, p, p.dtype), state, jc.to_jax(jax, p.xs[0], p.dtype),
                        jc.to_jax(jax, p.dy, p.dtype), what)
        return bs.make(fn, p, layout, what)
