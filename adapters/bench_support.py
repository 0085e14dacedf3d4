"""What the adapters' `bench()` methods share (the benchmark tier, issue 9). Imports no framework at module level.

`Adapter.bench(shape, dtype, what)` takes a LOGICAL shape, written as the ResNet stages are, channels second:
(N, C) or (N, C, *spatial). Each adapter puts it in the layout its API takes natively (`native`): channels
first (NCHW: torch, ONNX, equinox's per-example (C, H, W) under vmap) or channels last (NHWC: TensorFlow, Keras,
flax, haiku); (N, C) is the same array either way. The benchmark Problem (`problem`) is an ordinary
`reference.Problem` on the native shape, with one step of `what`'s mode, so the unit tests can hand the very
same Problem to `run()` and check that the benchmark computes what the conformance suite checks.

`Bench` is what `bench()` returns: a zero-argument callable that runs ONE operation on inputs already on the
device and returns only when its result is ready:
  "eval":            inference forward, returns (y, ...)
  "train":           training forward (batch statistics, y, one running-statistics update), returns (y, ...)
  "train_backward":  that training forward, then dx, dgamma, dbeta of <y, dy>, returns (y, dx, ...)
Every framework object (layer, compiled executable, session, device tensors) is built before `bench()` returns,
and the callable has been called once (compilation, first-call allocation), so a timer sees only the op.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reference import Problem, round_to

OPS = ("train", "eval", "train_backward")
ALPHA, EPS = 0.1, 1e-5  # canonical momentum (weight on the new statistic) and eps of every benchmark problem
SEED = 20240909


def native(shape: tuple[int, ...], channels: str) -> tuple[tuple[int, ...], int]:
    """(native shape, channel axis) of the logical (N, C, *spatial) `shape` in `channels` "first" or "last"."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"benchmark shapes are (N, C, ...), got {shape}")
    if channels == "first" or len(shape) == 2:
        return shape, 1
    if channels == "last":
        return (shape[0], *shape[2:], shape[1]), len(shape) - 1
    raise ValueError(f"channels must be 'first' or 'last', got {channels!r}")


def layout_name(shape: tuple[int, ...], channels: str) -> str:
    """NC, NCHW, NHWC, NCDHW, NDHWC, ... for a logical `shape`."""
    spatial = "DHW"[-(len(shape) - 2):] if len(shape) > 2 else ""
    if len(shape) == 2:
        return "NC"
    return "NC" + spatial if channels == "first" else "N" + spatial + "C"


@functools.lru_cache(maxsize=2)
def _arrays(shape: tuple[int, ...], axis: int, dtype: str):
    """Deterministic float64 inputs exactly representable in `dtype`, generated once per shape (the large
    shapes take a while). Channels get distinct means and spreads (std 0.05 to 0.2) and running statistics
    far from the batch ones, so a wrong mode, eps or channel axis shows at once in the unit tests."""
    rng = np.random.default_rng(SEED)
    C = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = C
    loc = rng.uniform(-1.0, 1.0, C).reshape(bshape)
    scale = rng.uniform(0.05, 0.2, C).reshape(bshape)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= scale.astype(np.float32)
    x += loc.astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    per_channel = rng.uniform(0.5, 1.5, (4, C))

    def exact(a):  # float32 data is exact in float32 and float64; anything else is rounded to `dtype`
        exact_already = a.dtype == np.float32 and dtype in ("float32", "float64")
        out = np.asarray(a, dtype=np.float64) if exact_already or dtype == "float64" else round_to(a, dtype)
        out.flags.writeable = False
        return out

    gamma, beta = exact(per_channel[0]), exact(per_channel[1] - 1.0)
    rmean, rvar = exact(per_channel[2] - 1.0), exact(per_channel[3] * 0.02)
    return exact(x), exact(dy), gamma, beta, rmean, rvar


def problem(shape: tuple[int, ...], channels: str, dtype: str, what: str) -> Problem:
    """The benchmark Problem of logical `shape` in layout `channels`: one step of `what`'s mode, alpha 0.1,
    eps 1e-5, affine, running statistics tracked; first-order gradients asked for "train_backward" only."""
    if what not in OPS:
        raise ValueError(f"what must be one of {OPS}, got {what!r}")
    nshape, axis = native(shape, channels)
    x, dy, gamma, beta, rmean, rvar = _arrays(nshape, axis, dtype)
    quantities = {"y", "running_mean", "running_var"}
    if what == "train_backward":
        quantities |= {"dx", "dgamma", "dbeta"}
    return Problem(xs=(x,), modes=("eval" if what == "eval" else "train",), axis=axis, gamma=gamma, beta=beta,
                   running_mean=rmean, running_var=rvar, momentum=ALPHA, eps=EPS, dy=dy, v=dy, dtype=dtype,
                   quantities=frozenset(quantities), label=f"bench-{what}-{'x'.join(map(str, nshape))}")


@dataclass
class Bench:
    """A timed operation: call it to run one; `problem` is what it runs (native layout), `layout` its name."""

    fn: Callable[[], object]
    problem: Problem
    layout: str
    what: str

    def __call__(self):
        return self.fn()


def make(fn: Callable[[], object], p: Problem, layout: str, what: str) -> Bench:
    """Wrap `fn` and call it once, so compilation and first-call work are done before any timing."""
    fn()
    return Bench(fn, p, layout, what)


def start(adapter, shape, dtype: str, what: str, channels: str) -> tuple[Problem, str]:
    """The benchmark Problem for `adapter`, or `Unsupported` with the adapter's own reason."""
    from .base import Unsupported

    p = problem(tuple(shape), channels, dtype, what)
    why = adapter.unsupported(p)
    if why:
        raise Unsupported(why)
    return p, layout_name(tuple(shape), channels)


def as_numpy(t) -> np.ndarray:
    """float64 copy of a framework array (torch tensors with grad, TF/JAX arrays, NumPy)."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
    if hasattr(t, "numpy") and not isinstance(t, np.ndarray):
        t = t.numpy()
    return np.asarray(t, dtype=np.float64)


# -- per framework: the timed callable

def jax_call(jax, fn, *args) -> Callable[[], object]:
    """`fn` compiled ahead of time for `args` (already device arrays); the call blocks on every output."""
    compiled = jax.jit(fn).lower(*args).compile()

    def call():
        return jax.block_until_ready(compiled(*args))
    return call


def jax_ops(jax, apply, params, state, x, dy, what: str) -> Callable[[], object]:
    """The three operations of a pure `apply(params, state, x, train) -> (y, state)` (jax_common's form)."""
    if what in ("train", "eval"):
        train = what == "train"
        return jax_call(jax, lambda prm, st, xx: apply(prm, st, xx, train), params, state, x)

    def forward_backward(prm, st, xx, g):
        y, vjp, new = jax.vjp(lambda xx_, prm_: apply(prm_, st, xx_, True), xx, prm, has_aux=True)
        dx, dprm = vjp(g)
        return y, dx, dprm, new
    return jax_call(jax, forward_backward, params, state, x, dy)


def tf_call(tf, fn, *args) -> Callable[[], object]:
    """`fn` as a tf.function traced for `args` (graph mode, no XLA). TensorFlow executes synchronously unless
    told otherwise (checked): the call returns once its outputs exist."""
    if not tf.config.experimental.get_synchronous_execution():
        raise RuntimeError("TensorFlow runs asynchronously here: a benchmark would not wait for its result")
    concrete = tf.function(fn, autograph=False, jit_compile=False).get_concrete_function(*args)

    def call():
        return concrete(*args)
    return call


def torch_grad(torch, forward, x, params, dy):
    """y = forward() (x and params require grad), then (y, dx, *dparams) of <y, dy> by autograd."""
    y = forward()
    return (y, *torch.autograd.grad(y, [x, *params], grad_outputs=dy))


def keras_ops(backend: str, ops, layer, tv, ntv, x, dy, what: str) -> Callable[[], object]:
    """Keras 3's `layer.stateless_call(tv, ntv, x, training)` run as each backend's users run a training
    step: a tf.function (tensorflow), jax.jit (jax), eagerly (torch); gradients by the backend's own autodiff.
    `ops` is the adapter's keras_backends object (its `tf`, `jax` or `torch`)."""
    training = what != "eval"

    def forward(tv_, ntv_, x_):
        return layer.stateless_call(tv_, ntv_, x_, training=training)
    if backend == "tensorflow":
        tf = ops.tf
        if what != "train_backward":
            return tf_call(tf, lambda x_: forward(tv, ntv, x_), x)

        def forward_backward(x_, dy_):
            with tf.GradientTape() as tape:
                tape.watch([x_, *tv])
                y, new = forward(tv, ntv, x_)
            return (y, *tape.gradient(y, [x_, *tv], output_gradients=dy_), new)
        return tf_call(tf, forward_backward, x, dy)
    if backend == "jax":
        jax = ops.jax
        if what != "train_backward":
            return jax_call(jax, forward, tv, ntv, x)

        def jax_forward_backward(tv_, ntv_, x_, dy_):
            y, vjp, new = jax.vjp(lambda xx, tt: forward(tt, ntv_, xx), x_, tv_, has_aux=True)
            dx, dtv = vjp(dy_)
            return y, dx, dtv, new
        return jax_call(jax, jax_forward_backward, tv, ntv, x, dy)
    if backend == "torch":
        torch = ops.torch
        if what == "eval":
            def call():
                with torch.no_grad():
                    return forward(tv, ntv, x)
            return call
        for t in tv:  # trainable, as in a training step: autograd records the forward
            t.requires_grad_(True)
        if what == "train":
            return lambda: forward(tv, ntv, x)
        x.requires_grad_(True)
        return lambda: torch_grad(torch, lambda: forward(tv, ntv, x)[0], x, tv, dy)
    raise ValueError(f"unknown Keras backend {backend!r}")
