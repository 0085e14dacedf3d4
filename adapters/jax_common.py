"""What the JAX-based adapters (flax linen/nnx, equinox, haiku) share: importing JAX with float64 enabled and
the persistent compilation cache, array conversion, one jitted function per configuration, the step loop
and the gradients.

Every computation runs under `jax.jit`, never eagerly (an eager op on a new shape compiles ~1 s). An adapter
describes its BatchNorm as a pure function `apply(params, state, x, train) -> (y, state)` over
`params = {"gamma", "beta"}` (empty without affine) and its own state pytree; it is jitted once per
configuration key (native hyperparameters, dtype, axis) and reused for every shape, in memory for the life
of the worker process and on disk in the JAX persistent compilation cache, so a rerun does not recompile.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Observation

ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Where compiled executables persist: $BNCONFORM_CACHE_DIR/jax, default reports/.cache/jax (ignored)."""
    base = os.environ.get("BNCONFORM_CACHE_DIR")
    return (Path(base) if base else ROOT / "reports" / ".cache") / "jax"


def installed_at_least(dist: str, minimum: str) -> bool:
    """Whether the installed distribution `dist` is at least `minimum`. Without it installed (`bnconform
    port` advising on a framework the machine lacks) the answer is True: advice targets the newest API."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        return Version(version(dist)) >= Version(minimum)
    except PackageNotFoundError:
        return True


def import_jax():
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_fast_math" not in flags:  # no reassociation or approximate math in XLA:CPU
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_fast_math=false").strip()
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 cases; float32 code keeps float32 (weak typing)
    jax.config.update("jax_default_matmul_precision", "highest")
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache every executable
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return jax


def np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def wider(dtype: str, than: str = "float32") -> str:
    """jnp.promote_types for float names: float16/bfloat16 -> float32, float64 stays."""
    order = ("float16", "bfloat16", "float32", "float64")
    return than if order.index(dtype) < order.index(than) else dtype


def to_jax(jax, a, dtype: str):
    """Host-side rounding to `dtype` (exact: inputs are representable), then a device transfer."""
    return jax.device_put(np.asarray(a, dtype=np_dtype(dtype)))


def to_numpy(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


PER_CHANNEL = ("running_mean", "running_var", "dgamma", "dbeta", "d2gamma")


def put(obs: Observation, name: str, arrays) -> None:
    """Store one array or a list of per-step arrays; per-channel quantities are flattened to (C,) on the
    host (haiku keeps them broadcastable, e.g. (1, C, 1, 1))."""
    conv = (lambda a: to_numpy(a).reshape(-1)) if name in PER_CHANNEL else to_numpy
    if isinstance(arrays, list):
        obs.put(name, np.stack([conv(a) for a in arrays]), str(arrays[0].dtype))
    else:
        obs.put(name, conv(arrays), str(arrays.dtype))


class Jitted:
    """The jitted step and gradient functions of an `apply`, one set per configuration key and mode; jax.jit
    itself keeps one executable per input shape and dtype under each."""

    def __init__(self, jax):
        self.jax = jax
        self.fns: dict = {}

    def get(self, key, kind: str, apply, train: bool):
        if (key, kind, train) not in self.fns:
            jax, jnp = self.jax, self.jax.numpy

            def step(params, state, x):
                return apply(params, state, x, train)

            def grad1(params, state, x, dy):  # dx, {dgamma, dbeta} of <y, dy>
                return jax.vjp(lambda x, params: apply(params, state, x, train)[0], x, params)[1](dy)

            def grad2(params, state, x, dy, v):  # gradients of <dx, v> with respect to x and gamma
                def inner(x, gamma):
                    prm = dict(params, gamma=gamma) if gamma is not None else params
                    return jnp.sum(grad1(prm, state, x, dy)[0] * v)
                if "gamma" in params:
                    return jax.grad(inner, argnums=(0, 1))(x, params["gamma"])
                return jax.grad(lambda x: inner(x, None))(x), None
            self.fns[key, kind, train] = jax.jit({"step": step, "grad1": grad1, "grad2": grad2}[kind])
        return self.fns[key, kind, train]


def run(adapter, p, key, apply, params, state, read, obs: Observation) -> Observation:
    """Run every step of `p` through the jitted `apply`; `read(state)` names the running statistics to
    report. Without running statistics (track_running_stats=False) every step normalizes with the batch
    statistics, so inference steps run the training branch and its state is discarded."""
    jax, jit = adapter.jax, adapter.jitted
    ys, stats = [], []
    for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
        train = mode == "train" or not p.track_running_stats
        xj = to_jax(jax, x, p.dtype)
        before = state
        y, state = jit.get(key, "step", apply, train)(params, state, xj)
        ys.append(y)
        stats.append(read(state))
    put(obs, "y", ys)
    if p.track_running_stats:
        for name in stats[0]:
            put(obs, name, [s[name] for s in stats])
    if adapter.wants_gradients(p):
        dy = to_jax(jax, p.dy, str(ys[-1].dtype))
        dx, dparams = jit.get(key, "grad1", apply, train)(params, before, xj, dy)
        put(obs, "dx", dx)
        if params:
            put(obs, "dgamma", dparams["gamma"])
            put(obs, "dbeta", dparams["beta"])
        if adapter.wants_second_order(p):
            v = to_jax(jax, p.v, str(dx.dtype))
            d2x, d2gamma = jit.get(key, "grad2", apply, train)(params, before, xj, dy, v)
            put(obs, "d2x", d2x)
            if params:
                put(obs, "d2gamma", d2gamma)
    return obs


def initial_params(jax, p, dtype: str, shape=None) -> dict:
    if not p.affine:
        return {}
    shape = shape or (p.channels,)
    return {"gamma": to_jax(jax, p.gamma.reshape(shape), dtype), "beta": to_jax(jax, p.beta.reshape(shape), dtype)}


def device(jax) -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{d.id}"

