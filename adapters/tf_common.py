"""What the TensorFlow-based adapters share: import with deterministic flags, conversion, gradients by tape.

Imports TensorFlow only inside functions (called from an adapter's `setup()` or `run()`).
"""
from __future__ import annotations

import os

import numpy as np

from .base import Observation

# TensorFlow's CPU threads flush subnormal results to zero and read subnormal inputs as zero (FTZ/DAZ):
# tensorflow/core/platform/threadpool.cc, EigenEnvironment::CreateThread ("Set the processor flag to flush
# denormals to zero": port::ScopedFlushDenormal). Found by `bnconform fuzz` (seed 20261202): the mean of subnormal
# inputs comes back as -0.0 where IEEE arithmetic gives -8.8e-40.
SUBNORMALS = "flush"



def import_tf():
    """TensorFlow with deterministic kernels, no XLA auto-clustering, the worker's thread counts."""
    import tensorflow as tf

    split_cpu(tf)
    intra, inter = os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("TF_NUM_INTEROP_THREADS")
    try:  # TF reads these variables itself; setting them again is a no-op unless the runtime already started
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra))
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    except RuntimeError:
        pass
    tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_jit(False)  # no XLA auto-clustering (and so no XLA fast-math)
    return tf


SYNC_DEVICES = 2  # logical CPU devices for synchronized BatchNorm (the `sync` path)


def split_cpu(tf) -> None:
    """Split the CPU into SYNC_DEVICES logical devices (tf.distribute.MirroredStrategy needs several devices
    for synchronized BatchNorm). Only possible before TensorFlow's runtime starts: afterwards the sync path says
    so (`logical_cpus`). Ops still run on /cpu:0 unless placed, with the same kernels and threads."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        if cpus and not tf.config.get_logical_device_configuration(cpus[0]):
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(SYNC_DEVICES)])
    except RuntimeError:  # the runtime is already initialized (TensorFlow imported and used elsewhere)
        pass


_MIRRORED: list = []  # the process's one MirroredStrategy (mirrored_strategy)


def mirrored_strategy(tf, devices: list[str]):
    """One tf.distribute.MirroredStrategy per process, shared by every adapter in it: strategies over the same
    devices number their collectives alike (group and instance keys), so a second one reuses the first one's
    keys and its collectives abort ('Collective instance N expected ... data_type 1 but got ... 2')."""
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(devices))
    return _MIRRORED[0]


def logical_cpus(tf) -> list[str]:
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def version() -> str:
    """The installed TensorFlow distribution's version (tensorflow-cpu, tensorflow or tf-nightly)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return dist_version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


def onednn() -> str:
    """Whether TF's oneDNN (MKL) CPU kernels are on (TF_ENABLE_ONEDNN_OPTS; on by default on x86 Linux):
    with them on, eager FusedBatchNormV3 runs the oneDNN kernel instead of the Eigen one."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except (ImportError, AttributeError):
        return "unknown"


def no_memory_format(problem) -> str | None:
    if problem.memory_format != "contiguous":
        return "TensorFlow tensors have no memory format: this case is its contiguous twin"
    return None


def dtype_name(t) -> str:
    return t.dtype.name


def to_numpy(t) -> np.ndarray:
    return np.asarray(t.numpy(), dtype=np.float64).copy()


def put(obs: Observation, name: str, tensors) -> None:
    """Stack per-step tensors (or store one tensor) into the observation, keeping the framework dtype."""
    if isinstance(tensors, list):
        obs.put(name, np.stack([to_numpy(t) for t in tensors]), dtype_name(tensors[0]))
    else:
        obs.put(name, to_numpy(tensors), dtype_name(tensors))


def with_gradients(tf, obs: Observation, forward, x, params: list, dy, v, second_order: bool):
    """Run `forward(x, *params)` (the last step, side effects included) under tapes; store dx (dgamma, dbeta
    when params are given) of <y, dy>, and for second order the gradients of <dx, v> w.r.t. x and gamma.
    Returns y."""
    wrt = [x] + list(params)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(wrt)
        with tf.GradientTape() as tape:
            tape.watch(wrt)
            y = forward(x, *params)
        grads = tape.gradient(y, wrt, output_gradients=dy)
    put(obs, "dx", grads[0])
    if params:  # parameters may be shaped to broadcast: report them per channel
        put(obs, "dgamma", tf.reshape(grads[1], [-1]))
        put(obs, "dbeta", tf.reshape(grads[2], [-1]))
    if second_order:
        g2 = outer.gradient(grads[0], wrt[:2], output_gradients=v)
        # In inference dx = gamma * r * dy does not depend on x: the tape answers None (zero).
        put(obs, "d2x", g2[0] if g2[0] is not None else tf.zeros_like(x))
        if params:
            put(obs, "d2gamma", tf.reshape(g2[1] if g2[1] is not None else tf.zeros_like(params[0]), [-1]))
    del outer
    return y


def constant(tf, a, dtype):
    """A `dtype` tensor holding a copy of the read-only float64 array `a` (exact: it is representable)."""
    return tf.cast(tf.constant(np.array(a, dtype=np.float64)), dtype)


def snippet_program(head: list[str], step: list[str], params: str, grads: bool, second: bool,
                    input_dtype: str = "dt") -> str:
    """A runnable TensorFlow repro: `head` defines `dt`, `c(array, dtype)` and the state; `step` (run under
    the tapes for every step, with `xt` and `mode`) sets `y` and `rec`, this step's quantities (per-channel
    ones flattened); `params` is the expression of the parameters to differentiate. The gradients are taken as
    `with_gradients` takes them: of <y, dy> at the last step, and of <dx, v> for the second order.
    input_dtype: the expression of the dtype x and v are given in (dy is given in `dt`)."""
    lines = ["import tensorflow as tf", *head, f"params, obs = {params}, {{}}",
             "with tf.GradientTape(persistent=True) as outer:",
             "    for x, mode in zip(p.xs, p.modes):",
             f"        xt = c(x, {input_dtype})",
             "        outer.watch([xt] + params)",
             "        with tf.GradientTape() as tape:",
             "            tape.watch([xt] + params)",
             *["            " + line for line in step],
             "        for q, val in rec.items():",
             "            obs.setdefault(q, []).append(np.asarray(val.numpy(), dtype=np.float64))"]
    if grads:
        lines += ["    g = tape.gradient(y, [xt] + params, output_gradients=c(p.dy, dt))"]
    lines += ["observed = {q: np.stack(v) for q, v in obs.items()}"]
    if grads:
        lines += ["num = lambda t: np.asarray(tf.reshape(t, [-1]).numpy(), dtype=np.float64)",
                  "observed['dx'] = np.asarray(g[0].numpy(), dtype=np.float64)",
                  "if params:",
                  "    observed.update(dgamma=num(g[1]), dbeta=num(g[2]))"]
    if second:
        lines += [f"g2 = outer.gradient(g[0], [xt] + params[:1], output_gradients=c(p.v, {input_dtype}))",
                  "d2x = tf.zeros_like(xt) if g2[0] is None else g2[0]",
                  "observed['d2x'] = num(d2x).reshape(tuple(xt.shape))",
                  "if params:",
                  "    observed['d2gamma'] = num(tf.zeros_like(params[0]) if g2[1] is None else g2[1])"]
    return "\n".join(lines)
