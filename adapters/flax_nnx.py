"""flax.nnx.BatchNorm: the stateful module, switched with train() / eval(), run as a pure jitted function."""
from __future__ import annotations

import functools

from reference import QUANTITIES, Problem

from . import jax_common as jc
from .jax_repro import snippet
from .base import EAGER, Adapter, Observation, Precision
from .flax_linen import FAST

# flax/nnx/nn/normalization.py (flax 0.12), BatchNorm.__call__: the same statistics and EMA as linen
# (momentum=0.99 weight on the old value, epsilon=1e-5, fast clamped variance by default, biased), but
# first `promote_dtype((x, mean, var, scale, bias), dtype=self.dtype)` casts the input, the stored running
# statistics and the parameters to `dtype`. The training branch recomputes mean/var in float32
# (_compute_stats promotes), so training arithmetic is float32; the inference branch normalizes with the
# running statistics rounded to `dtype` and does all its arithmetic (and eps) in `dtype`. The running
# statistics are BatchStat(jnp.zeros(..., jnp.float32)) and updated in place (`self.mean[...] = ...`), so
# they stay float32 whatever the dtype, float64 included (unlike linen, whose update replaces them).
SOURCE = "flax/nnx/nn/normalization.py (BatchNorm.__call__, _compute_stats, _normalize), flax/nnx/nn/dtypes.py"


class FlaxNNX(Adapter):
    name = "flax.nnx"
    framework = "flax"
    api = "flax.nnx.BatchNorm"
    convention = FAST
    channel_axes = "any"
    conventional_layout = "channels_last"  # flax.nnx.Conv takes (batch, spatial..., features)
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"}
    source = SOURCE
    subnormals = jc.SUBNORMALS
    paths = jc.JAX_PATHS

    def setup(self) -> None:
        self.jax = jc.import_jax()
        from flax import nnx

        self.nnx = nnx
        self.jitted = jc.Jitted(self.jax)
        self.modules: dict = {}
        self.device = jc.device(self.jax)

    @functools.cached_property
    def item_assign(self) -> bool:
        """flax < 0.11: Variable.__setitem__ writes into the (immutable) jax array and raises; `.value =`
        replaces it (same dtype here, so the same values). From 0.11 `var[...] = ...` is the way. Read from the
        installed distribution, not the module: snippet() runs without setup() (bnconform port), maybe without
        flax installed."""
        return jc.installed_at_least("flax", "0.11")

    def precision(self, problem: Problem) -> Precision:
        dt = problem.dtype
        # float16/bfloat16: an inference step with running statistics computes in dt (see above);
        # otherwise reductions and arithmetic are float32. Stored statistics: float32 (nnx's init).
        infers = problem.track_running_stats and "eval" in problem.modes
        compute = dt if infers else jc.wider(dt)
        return Precision(io=dt, compute=compute, stats="float32", params=dt)

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "flax BatchNorm has no cumulative average (momentum is always an EMA decay)"
        if problem.memory_format != "contiguous":
            return "JAX arrays have no memory format; the case would repeat the contiguous one"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {"num_features": problem.channels}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["epsilon"] = problem.eps
        cfg.update(axis=problem.axis, use_bias=problem.affine, use_scale=problem.affine, dtype=problem.dtype,
                   param_dtype=problem.dtype)
        return cfg

    def _kwargs(self, p: Problem, path: str) -> dict:
        cfg = self.native_config(p)
        if path == jc.SYNC:  # statistics averaged over the device axis (flax/nnx/nn/normalization.py)
            cfg["axis_name"] = jc.DEVICE_AXIS
        return cfg

    def _put(self, var, value):
        if self.item_assign:
            var[...] = value
        else:
            var.value = value

    def _apply(self, p: Problem, path: str = EAGER):
        cfg = self._kwargs(p, path)
        key = tuple(sorted(cfg.items()))
        if key not in self.modules:
            nnx, jnp, put = self.nnx, self.jax.numpy, self._put
            kw = {**cfg, "dtype": getattr(jnp, p.dtype), "param_dtype": getattr(jnp, p.dtype)}

            def apply(params, state, x, train, mask=None):
                bn = nnx.BatchNorm(**kw, rngs=nnx.Rngs(0))
                if params:
                    put(bn.scale, params["gamma"]), put(bn.bias, params["beta"])
                put(bn.mean, state["mean"]), put(bn.var, state["var"])
                bn.train() if train else bn.eval()
                y = bn(x, mask=mask)
                return y, {"mean": bn.mean[...], "var": bn.var[...]}
            self.modules[key] = apply
        return key, self.modules[key]

    def ensemble(self, apply):
        """The vmap path the nnx way: the two copies built by an nnx.vmap'd constructor (one module whose
        variables carry the ensemble axis, as flax's ensemble guide does), called through
        nnx.vmap(in_axes=(0, None)) so nnx itself threads the updated BatchStat variables out; copy 1's
        output is what gradients are taken of."""
        nnx, put = self.nnx, self._put
        kw = self._ensemble_kw

        def ensemble(params, state, x, train):
            @nnx.vmap(in_axes=(0, 0), out_axes=0)
            def build(prm, st):
                bn = nnx.BatchNorm(**kw, rngs=nnx.Rngs(0))
                if prm:
                    put(bn.scale, prm["gamma"]), put(bn.bias, prm["beta"])
                put(bn.mean, st["mean"]), put(bn.var, st["var"])
                return bn

            models = build(params, state)
            models.train() if train else models.eval()
            ys = nnx.vmap(lambda bn, x: bn(x), in_axes=(0, None), out_axes=0)(models, x)
            return ys[1], {"mean": models.mean[...], "var": models.var[...]}
        return ensemble

    def path_unsupported(self, p: Problem, path: str) -> str | None:
        return jc.path_unsupported(self, p, path, masks=True)

    def run_path(self, p: Problem, path: str) -> Observation:
        return self.run(p, path)

    def run(self, p: Problem, path: str = EAGER) -> Observation:
        key, apply = self._apply(p, path)
        jnp = self.jax.numpy
        self._ensemble_kw = {**self._kwargs(p, path), "dtype": getattr(jnp, p.dtype),
                             "param_dtype": getattr(jnp, p.dtype)}
        # the case's initial statistics, stored as `bn.mean[...] = ...` stores them: in nnx's float32 BatchStat
        state = {"mean": jc.to_jax(self.jax, p.running_mean, "float32"),
                 "var": jc.to_jax(self.jax, p.running_var, "float32")}
        obs = Observation(facts={"device": self.device})
        jc.run(self, p, key, apply, jc.initial_params(self.jax, p, p.dtype), state,
               lambda s: {"running_mean": s["mean"], "running_var": s["var"]}, obs, path)
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "flax.nnx.BatchNorm does not return the batch statistics"
        obs.unsupported["num_batches_tracked"] = "flax.nnx.BatchNorm keeps no step counter"
        return obs

    def snippet(self, p: Problem) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.native_config(p).items() if k not in ("dtype", "param_dtype"))
        v = "[...]" if self.item_assign else ".value"
        return snippet(p, [
            "from flax import nnx",
            "def apply(params, state, x, train):",
            f"    bn = nnx.BatchNorm({cfg}, dtype=dt, param_dtype=dt, rngs=nnx.Rngs(0))",
            "    if params:",
            f"        bn.scale{v}, bn.bias{v} = params['gamma'], params['beta']",
            f"    bn.mean{v}, bn.var{v} = state['mean'], state['var']",
            "    bn.train() if train else bn.eval()",
            "    y = bn(x)",
            "    return y, {'mean': bn.mean[...], 'var': bn.var[...]}",
        ], "{'gamma': cast(p.gamma, dt), 'beta': cast(p.beta, dt)}",
            "{'mean': cast(p.running_mean, jnp.float32), 'var': cast(p.running_var, jnp.float32)}",
            "{'running_mean': state['mean'], 'running_var': state['var']}")

    def bench(self, shape, dtype, what):
        """The module (rebuilt inside the traced function, as run() does) on NHWC (axis=-1, flax's default),
        jitted and compiled ahead of time."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "last")
        jax = self.jax
        _, apply = self._apply(p)
        state = {"mean": jc.to_jax(jax, p.running_mean, "float32"), "var": jc.to_jax(jax, p.running_var, "float32")}
        fn = bs.jax_ops(jax, apply, jc.initial_params(jax, p, p.dtype), state, jc.to_jax(jax, p.xs[0], p.dtype),
                        jc.to_jax(jax, p.dy, p.dtype), what)
        return bs.make(fn, p, layout, what)
