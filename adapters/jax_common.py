"""What the JAX-based adapters (flax linen/nnx, equinox, haiku) share: importing JAX with float64 enabled and
the persistent compilation cache, array conversion, one jitted function per configuration, the step loop
and the gradients.

Every computation runs under `jax.jit` (the default path, "eager" in the suite's naming: JAX code as users run
it), never op by op (an un-jitted op on a new shape compiles ~1 s) except on the `no-jit` path. An adapter
describes its BatchNorm as a pure function `apply(params, state, x, train) -> (y, state)` over
`params = {"gamma", "beta"}` (empty without affine) and its own state pytree; it is jitted once per
configuration key (native hyperparameters, dtype, axis) and reused for every shape, in memory for the life
of the worker process and on disk in the JAX persistent compilation cache, so a rerun does not recompile.

Execution paths (`JAX_PATHS`; `paths_for` picks an adapter's):
  no-jit  the same steps under `jax.disable_jit()`: op by op, what a user debugging the model runs
  vmap    an ensemble of two copies of the model, `jax.vmap` over stacked parameters and state (in_axes 0) with
          the input shared (None), as users batch models; copy 0 gets other parameters and statistics (a decoy)
          and copy 1 the case's, which is what is read: a batching rule that mixes or mis-indexes the copies shows
  sync    synchronized BatchNorm: the batch split over DEVICES logical CPU devices along axis 0 under
          `jax.shard_map`, the module given the device axis name (flax `axis_name`, haiku `cross_replica_axis`,
          equinox `axis_name`); unequal shards (Problem.shards) are padded to the largest and masked where the
          module takes a mask (flax), else unsupported (shard_map needs equal per-device shapes). A module that
          cannot run under shard_map (`sync_by_sharding`: equinox mode="ema") runs as one jitted program over a
          batch sharded evenly across the devices (`batch_sharding`), the way equinox documents. Gradients are
          jax.vjp of the whole sharded step, i.e. of the global loss <y, dy>: shard_map's transpose sums the
          replicated gamma's and beta's per-device cotangents over the devices and the module's pmean transposes
          into the cross-device sums of the backward, so dx, dgamma, dbeta and the second order are the global
          batch's, what a data-parallel step gets after summing its gradients over the devices
Every path has a repro snippet that runs the same transformation (adapters/jax_repro.py).
"""
from __future__ import annotations

import os

import numpy as np

from .base import EAGER, Adapter, Observation, PathSpec, compiled_code_dir


# XLA's CPU client runs compiled code with FTZ/DAZ "to match the default TF ThreadPool behavior"
# (xla/pjrt/cpu/cpu_client.cc: tsl::port::ScopedFlushDenormal around every execution): subnormal results become
# zero and subnormal inputs are read as zero. Found by `bnconform fuzz` (seed 20261202) on every JAX library.
SUBNORMALS = "flush"

def installed_at_least(dist: str, minimum: str) -> bool:
    """Whether the installed distribution `dist` is at least `minimum`. Without it installed (`bnconform
    port` advising on a framework the machine lacks) the answer is True: advice targets the newest API."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        return Version(version(dist)) >= Version(minimum)
    except PackageNotFoundError:
        return True


DEVICES = 2  # logical CPU devices for the sync path
DEVICE_AXIS = "devices"
NO_JIT, VMAP, SYNC = "no-jit", "vmap", "sync"
JITTED = PathSpec(EAGER, "jax.jit of the step, as JAX code runs (the suite's eager path)", tier="smoke")
NO_JIT_PATH = PathSpec(NO_JIT, "the same step under jax.disable_jit(): op by op, as when debugging", tier="nightly")
# nightly: its 3 cases x 6 libraries compile ~15 s of the cold default run's CPU, and that run keeps to 180 s
VMAP_PATH = PathSpec(VMAP, "an ensemble of 2 model copies: jax.vmap over stacked parameters and state (in_axes 0), "
                           "the input shared (None); copy 1 is read", tier="nightly")
SYNC_PATH = PathSpec(SYNC, f"synchronized BatchNorm: the batch split over {DEVICES} logical CPU devices under "
                           "jax.shard_map, statistics combined over the device axis (equinox mode='ema': jax.jit "
                           "over the batch sharded across the devices)", sharded=True)
JAX_PATHS = (JITTED, NO_JIT_PATH, VMAP_PATH, SYNC_PATH)


def set_xla_flags() -> None:
    """XLA's flags are read once, when JAX initializes its backend: call before anything imports jax (the
    test session's conftest does, so that an earlier import elsewhere leaves the sync path its devices)."""
    # prepended: XLA stops parsing at the first token that is not a `--` flag and ignores the rest
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_fast_math" not in flags:  # no reassociation or approximate math in XLA:CPU
        flags = f"--xla_cpu_enable_fast_math=false {flags}"
    if "xla_force_host_platform_device_count" not in flags:  # the sync path's devices (default device: cpu:0)
        flags = f"--xla_force_host_platform_device_count={DEVICES} {flags}"
    os.environ["XLA_FLAGS"] = flags.strip()


def import_jax():
    set_xla_flags()
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 cases; float32 code keeps float32 (weak typing)
    jax.config.update("jax_default_matmul_precision", "highest")
    path = compiled_code_dir("jax")
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
    """The jitted functions of an `apply`, one set per configuration key, mode and kind; jax.jit itself keeps one
    executable per input shape and dtype under each. Two kinds:
      step   apply(params, state, x, train) -> (y, new state): a step without gradients
      grads  the forward and its gradients in one program, as a training step is written (`gradients`)
    A case's last step, when it trains and gradients are checked, is one `grads` program (a user's train step:
    y, the new statistics and the gradients together); an inference step is the forward alone (as deployed),
    its gradients a `grads` program of their own. Compiling the forward, first and second order as one program
    instead of three takes about half the compile time (XLA:CPU, ~0.1-0.2 s per program), most of a cold run."""

    def __init__(self, jax):
        self.jax = jax
        self.fns: dict = {}

    def get(self, key, kind: str, apply, train: bool, second: bool = False):
        if (key, kind, train, second) not in self.fns:
            def step(params, state, x):
                return apply(params, state, x, train)
            fn = step if kind == "step" else gradients(self.jax, apply, train, second)
            self.fns[key, kind, train, second] = self.jax.jit(fn)
        return self.fns[key, kind, train, second]


def gradients(jax, apply, train: bool, second: bool):
    """`grads(params, state, x, dy, v) -> (y, new state, dx, dparams, d2x, d2gamma)`: the step's forward, the
    gradients of <y, dy> with respect to x and the parameters and, with `second`, those of <dx, v> with respect
    to x and gamma (else None). dy and v come in the case's dtype, to which the inputs are rounded, and are
    converted to y's and dx's inside: exact where those are as wide, one correctly rounded conversion otherwise,
    the same values as rounding them on the host."""
    jnp = jax.numpy

    def first(params, state, x, dy):
        y, vjp, new = jax.vjp(lambda x, prm: apply(prm, state, x, train), x, params, has_aux=True)
        dx, dparams = vjp(dy.astype(y.dtype))
        return y, new, dx, dparams

    def grads(params, state, x, dy, v):
        y, new, dx, dparams = first(params, state, x, dy)
        if not second:
            return y, new, dx, dparams, None, None

        def inner(x, gamma):  # <dx, v> as a function of x and gamma
            prm = dict(params, gamma=gamma) if gamma is not None else params
            return jnp.sum(first(prm, state, x, dy)[2] * v.astype(dx.dtype))
        if "gamma" in params:
            d2x, d2gamma = jax.grad(inner, argnums=(0, 1))(x, params["gamma"])
        else:
            d2x, d2gamma = jax.grad(lambda x: inner(x, None))(x), None
        return y, new, dx, dparams, d2x, d2gamma
    return grads


def run(adapter, p, key, apply, params, state, read, obs: Observation, path: str = EAGER) -> Observation:
    """Run every step of `p` through the jitted `apply` on `path` (see the module docstring); `read(state)`
    names the running statistics to report. Without running statistics (track_running_stats=False) every step
    normalizes with the batch statistics, so inference steps run the training branch and its state is
    discarded."""
    jax = adapter.jax
    pick, place = _same, None
    if path == VMAP:
        ensemble = getattr(adapter, "ensemble", None) or (lambda apply: vmapped(jax, apply))
        key, apply, pick = (key, VMAP), ensemble(apply), _copy1
        params, state = with_decoy(jax, params), with_decoy(jax, state)
    elif path == SYNC and adapter.sync_by_sharding:
        key, place = (key, SYNC, "sharded"), batch_sharding(jax)
        obs.facts["sync"] = f"jax.jit of the one-device step, the batch sharded over {DEVICES} devices (NamedSharding)"
    elif path == SYNC:
        key, apply = (key, SYNC, shards_of(p)), synchronized(jax, apply, shards_of(p))
        obs.facts["sync"] = f"jax.shard_map over {DEVICES} devices, statistics combined over the device axis"
    if path == NO_JIT:
        obs.facts["jit"] = "disabled (jax.disable_jit)"
        with jax.disable_jit():
            return _steps(adapter, p, key, apply, params, state, read, obs, pick)
    return _steps(adapter, p, key, apply, params, state, read, obs, pick, place)


def _same(tree):
    return tree


def _copy1(tree):
    import jax

    return jax.tree.map(lambda a: a[1], tree)


def _steps(adapter, p, key, apply, params, state, read, obs: Observation, pick, place=None) -> Observation:
    jax, jit = adapter.jax, adapter.jitted
    with_gradients = adapter.wants_gradients(p)
    second = with_gradients and adapter.wants_second_order(p)
    dy = to_jax(jax, p.dy, p.dtype)
    v = to_jax(jax, p.v, p.dtype) if second else dy  # v is read by the second order only
    ys, stats, last = [], [], len(p.xs) - 1
    for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
        train = mode == "train" or not p.track_running_stats
        xj = to_jax(jax, x, p.dtype) if place is None else jax.device_put(np.asarray(x, np_dtype(p.dtype)), place)
        before = state
        if k == last and train and with_gradients:  # a train step: forward, update and gradients together
            y, state, *derivatives = jit.get(key, "grads", apply, train, second)(params, state, xj, dy, v)
        else:
            y, state = jit.get(key, "step", apply, train)(params, state, xj)
        ys.append(y)
        stats.append(read(pick(state)))
    put(obs, "y", ys)
    if p.track_running_stats:
        for name in stats[0]:
            put(obs, name, [s[name] for s in stats])
    if with_gradients:
        if not train:  # the inference forward ran alone, as deployed; its gradients are a program of their own
            derivatives = jit.get(key, "grads", apply, train, second)(params, before, xj, dy, v)[2:]
        dx, dparams, d2x, d2gamma = derivatives
        put(obs, "dx", dx)
        if params:
            dparams = pick(dparams)
            put(obs, "dgamma", dparams["gamma"])
            put(obs, "dbeta", dparams["beta"])
        if second:
            put(obs, "d2x", d2x)
            if params:
                put(obs, "d2gamma", pick(d2gamma))
    return obs


# -- vmap: an ensemble of two copies
def with_decoy(jax, tree):
    """Two stacked copies of `tree`: copy 0 a decoy (floats moved by x -> 1.5 x + 0.25: positive variances stay
    positive; integers, e.g. step counters, kept), copy 1 the tree itself."""
    jnp = jax.numpy

    def stack(a):
        a = jnp.asarray(a)
        decoy = (a * 1.5 + 0.25).astype(a.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
        return jnp.stack([decoy, a])
    return jax.tree.map(stack, tree)


def vmapped(jax, apply):
    """`apply` over an ensemble: jax.vmap over stacked parameters and state (in_axes 0), the input shared
    (None); returns copy 1's output (what the gradients are taken of) and every copy's state."""
    def ensemble(params, state, x, train):
        ys, states = jax.vmap(lambda prm, st: apply(prm, st, x, train))(params, state)
        return ys[1], states
    return ensemble


# -- sync: the batch split over devices
def shards_of(p) -> tuple[int, ...]:
    """Per-device batch sizes: the case's, or equal parts."""
    return tuple(p.shards) or (p.shape[0] // DEVICES,) * DEVICES


def sync_unsupported(jax, p, masks: bool, api: str, sharding: bool = False) -> str | None:
    """Why the sync path cannot run `p`: too few devices, a batch that does not split, or unequal shards for a
    module that takes no mask (or runs by sharding, which splits evenly)."""
    have = len(jax.devices("cpu"))
    if have < DEVICES:
        return (f"the sync path needs {DEVICES} logical CPU devices; JAX was imported before "
                f"--xla_force_host_platform_device_count={DEVICES} was set and has {have}")
    if not p.shards and p.shape[0] % DEVICES:
        return f"a batch of {p.shape[0]} does not split equally over {DEVICES} devices"
    if p.shards and len(p.shards) != DEVICES:
        return f"the case splits its batch over {len(p.shards)} devices; the sync path has {DEVICES}"
    if len(set(shards_of(p))) > 1 and sharding:
        return (f"unequal per-device batches {'+'.join(map(str, p.shards))}: a NamedSharding splits the batch "
                f"evenly over the devices, and {api} takes no mask to pad them with")
    if len(set(shards_of(p))) > 1 and not masks:
        return (f"unequal per-device batches {'+'.join(map(str, p.shards))}: shard_map (and pmap) need equal "
                f"per-device shapes, and {api} takes no mask to pad them with")
    return None


def _shard_map(jax):
    """jax.shard_map with its replication/varying-axes check off (pmap's semantics): with JAX's default
    check_vma=True, lax.pmean over a vmapped axis and the device axis together (equinox's axis_name=("batch",
    "devices")) raises; flax and haiku run either way with the same outputs and statistics and gradients equal
    to rounding (tests/unit/test_adapters_jax_onnx.py pins the equinox refusal)."""
    if hasattr(jax, "shard_map"):  # jax >= 0.6
        return lambda f, **kw: jax.shard_map(f, check_vma=False, **kw)
    from jax.experimental.shard_map import shard_map

    return lambda f, **kw: shard_map(f, check_rep=False, **kw)


def batch_sharding(jax):
    """The data-parallel placement of the batch without shard_map: axis 0 split evenly over the devices
    (NamedSharding), everything else replicated; jax.jit partitions the one-device program (XLA's SPMD
    partitioner inserts the cross-device reductions), so the statistics are the global batch's without an axis
    name. This is equinox's documented way to run on several devices (examples/parallelism.ipynb)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    return NamedSharding(Mesh(np.array(jax.devices("cpu")[:DEVICES]), (DEVICE_AXIS,)), PartitionSpec(DEVICE_AXIS))


def synchronized(jax, apply, shards: tuple[int, ...]):
    """`apply` with the batch split over the devices along axis 0 (jax.shard_map; parameters and state
    replicated, the state read back from the devices, which agree after the module's cross-device mean).
    Unequal shards are each padded to the largest and passed a mask (`apply(..., mask=)`) that leaves the
    padding out of the statistics; the padding's outputs are dropped."""
    from jax.sharding import Mesh, PartitionSpec

    jnp, shard_map = jax.numpy, _shard_map(jax)
    mesh = Mesh(np.array(jax.devices("cpu")[:DEVICES]), (DEVICE_AXIS,))
    split, whole = PartitionSpec(DEVICE_AXIS), PartitionSpec()
    if len(set(shards)) == 1:
        def on_devices(params, state, x, train):
            f = shard_map(lambda prm, st, x: apply(prm, st, x, train), mesh=mesh, in_specs=(whole, whole, split),
                          out_specs=(split, whole))
            return f(params, state, x)
        return on_devices
    rows = max(shards)
    starts = np.cumsum((0,) + shards[:-1])

    def on_devices_masked(params, state, x, train):
        pad = [((0, rows - n),) + ((0, 0),) * (x.ndim - 1) for n in shards]
        padded = jnp.concatenate([jnp.pad(x[a:a + n], w) for a, n, w in zip(starts, shards, pad)])
        mask = np.concatenate([np.arange(rows) < n for n in shards]).reshape((-1,) + (1,) * (x.ndim - 1))
        f = shard_map(lambda prm, st, x, m: apply(prm, st, x, train, mask=m), mesh=mesh,
                      in_specs=(whole, whole, split, split), out_specs=(split, whole))
        y, state = f(params, state, padded, jnp.asarray(mask))
        return jnp.concatenate([y[d * rows:d * rows + n] for d, n in enumerate(shards)]), state
    return on_devices_masked


def path_unsupported(adapter, p, path: str, masks: bool = False) -> str | None:
    """What the JAX adapters share about their paths (see the module docstring)."""
    if path == SYNC:
        why = sync_unsupported(adapter.jax, p, masks, adapter.api, getattr(adapter, "sync_by_sharding", False))
        if why or p.shards or few_cases(p):
            return why
        return ("the sync path (a compilation per case for the device mesh, ~0.5 s per case and adapter) runs the "
                "sharded cases (equal and unequal shards, training or inference last) and the two-step path cases "
                "that start with training; jit runs them all")
    if path == NO_JIT and not few_cases(p):
        return ("op by op, every primitive compiles once per new shape and dtype (~1 s each): the no-jit path "
                "runs only the two-step path cases that start with training (training and inference, float32 "
                "and float64); jit runs them all")
    if path == VMAP and not few_cases(p):
        return ("the vmap path (one more compilation per case) runs the two-step path cases that start with "
                "training: training and inference, float32 and float64, every quantity; jit runs them all")
    return None


def few_cases(p) -> bool:
    """The cases the costlier paths keep to (3 of the default tier's path cases)."""
    return p.steps == 2 and p.modes[0] == "train" and p.track_running_stats


def initial_params(jax, p, dtype: str, shape=None) -> dict:
    if not p.affine:
        return {}
    shape = shape or (p.channels,)
    return {"gamma": to_jax(jax, p.gamma.reshape(shape), dtype), "beta": to_jax(jax, p.beta.reshape(shape), dtype)}


def device(jax) -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{d.id}"


class JaxAdapter(Adapter):
    """What every JAX-based adapter shares: importing JAX once per worker (`setup`; the subclass then imports
    its framework), one jitted set of functions per configuration (`jitted`, `modules`), the paths of this
    module run by the adapter's own `run(p, path)`, and `snippet(p, path)` reproducing each of them.
    `takes_mask`: the module's call takes a mask, so the sync path can pad unequal shards and mask them;
    `sync_by_sharding`: the module runs on several devices only as one jitted program over a sharded batch."""

    paths = JAX_PATHS
    subnormals = SUBNORMALS
    takes_mask = False
    sync_by_sharding = False  # sync by jax.jit over a sharded batch (batch_sharding) instead of jax.shard_map

    def setup(self) -> None:
        self.jax = import_jax()
        self.jitted = Jitted(self.jax)
        self.modules: dict = {}
        self.device = device(self.jax)

    def unsupported(self, problem) -> str | None:
        if problem.memory_format != "contiguous":
            return "JAX arrays have no memory format; the case would repeat the contiguous one"
        return super().unsupported(problem)

    def path_unsupported(self, p, path: str) -> str | None:
        return path_unsupported(self, p, path, masks=self.takes_mask)

    def run_path(self, p, path: str) -> Observation:
        return self.run(p, path)

    def path_expected_dtype(self, quantity: str, p, path: str) -> str:
        return self.expected_dtype(quantity, p)  # every path computes as the jitted call does

    def path_snippet(self, p, path: str) -> str:
        return self.snippet(p, path)
