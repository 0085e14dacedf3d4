"""equinox.nn.BatchNorm in its two modes, "ema" and "batch": vmap(axis_name=...) over the batch, with a State."""
from __future__ import annotations

import functools


from reference import QUANTITIES, Convention, Problem

from . import jax_common as jc
from .jax_repro import snippet
from .base import EAGER, Adapter, Observation, Precision

# equinox/nn/_batch_norm.py (equinox 0.13): momentum=0.99 is the weight on the old value, eps=1e-5;
# _stats is two-pass and biased (mean, then mean((y - mean)^2), pmean over the vmapped batch axis), all in
# the dtype of x and of the state (`dtype=`). mode="ema": the first training step replaces the running
# statistics with the batch ones (lax.select(first_time, ...)), later ones blend them, and the training
# output is normalized with the blended statistics. mode="batch": training normalizes with the batch
# statistics and keeps a hidden EMA (counter, hidden_mean, hidden_var); inference divides the hidden EMA
# by 1 - momentum**counter (zero-debiasing, "as haiku"), or uses it as is when counter == 0.
# The hidden state is initialized to (zeros, ONES) in BatchNorm.__init__: see conformance/registry/jax.toml.
# Before 0.13 BatchNorm has no `mode`: its one behaviour is today's "ema" (same _stats, first-step replace,
# blend), kept under `state_index` / `first_time_index`; "batch" does not exist there (a skip).
SOURCE = "equinox/nn/_batch_norm.py (BatchNorm.__init__, BatchNorm.__call__)"
_COMMON = dict(momentum_form="weight_on_old", default_momentum=0.99, default_eps=1e-5, running_var="biased",
               variance="two_pass")
CONVENTIONS = {
    "ema": Convention(averaging="ema", first_step="replace", train_normalizer="running", **_COMMON),
    # Zero-debiasing, as the code's own comment says; the case's initial statistics go in the hidden state,
    # the only place equinox keeps them (what inference uses before any training step).
    "batch": Convention(averaging="debiased_ema", debias_hidden_init="zeros", **_COMMON),
}


class EquinoxBatchNorm(Adapter):
    framework = "equinox"
    api = "equinox.nn.BatchNorm"
    channel_axes = "first"  # each vmapped example is (C, ...): the channel axis is axis 1 of the batch
    source = SOURCE
    subnormals = jc.SUBNORMALS
    paths = jc.JAX_PATHS

    def __init__(self, mode: str = "batch"):
        self.mode = mode
        self.name = f"equinox.{mode}"
        self.api = f'equinox.nn.BatchNorm(mode="{mode}")'
        self.convention = CONVENTIONS[mode]
        self.quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var"} - (
            {"num_batches_tracked"} if mode == "ema" else set())

    def setup(self) -> None:
        self.jax = jc.import_jax()
        import equinox as eqx

        self.eqx = eqx
        self.jitted = jc.Jitted(self.jax)
        self.modules: dict = {}
        self.device = jc.device(self.jax)

    @functools.cached_property
    def has_mode(self) -> bool:
        """BatchNorm has `mode` (and a state index per mode) from equinox 0.13.0. Read from the installed
        distribution, not the module: snippet() runs without setup() (bnconform port), maybe without equinox."""
        return jc.installed_at_least("equinox", "0.13.0")

    def precision(self, problem: Problem) -> Precision:
        return Precision.uniform(problem.dtype, accumulate_low_precision_in=problem.dtype)  # all in `dtype`

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "equinox BatchNorm has no cumulative average"
        if problem.memory_format != "contiguous":
            return "JAX arrays have no memory format; the case would repeat the contiguous one"
        if not self.has_mode and self.mode != "ema":
            return f'equinox {self.eqx.__version__} has no mode="{self.mode}" (BatchNorm has modes from 0.13.0)'
        if self.mode == "ema" and not problem.track_running_stats:
            return 'mode="ema" always normalizes training with the running statistics; it has no batch-only mode'
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {"input_size": problem.channels, "axis_name": "batch"}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["eps"] = problem.eps
        cfg.update(channelwise_affine=problem.affine, dtype=problem.dtype)
        if self.has_mode:
            cfg["mode"] = self.mode
        return cfg

    def _index(self, bn):
        """Where the statistics inference uses are kept (`state_index` before the modes)."""
        return getattr(bn, f"{self.mode}_state_index" if self.has_mode else "state_index")

    def _model(self, p: Problem, path: str = EAGER):
        """(key, bn, state0, apply): the module and its fresh State, built once per configuration under jit
        (eqx.filter_jit: no eager op), and the pure step over {"state": State, "mean", "var"}."""
        cfg = self.native_config(p)
        if path == jc.SYNC:  # pmean over the vmapped batch and the devices (a sequence of axis names)
            cfg["axis_name"] = ("batch", jc.DEVICE_AXIS)
        key = tuple(sorted(cfg.items()))
        if key not in self.modules:
            eqx, jax = self.eqx, self.jax
            kw = {**cfg, "dtype": getattr(jax.numpy, p.dtype)}
            def construct():  # jitted once per configuration: building the module runs no eager op
                return eqx.nn.make_with_state(eqx.nn.BatchNorm)(**kw)

            bn, state0 = eqx.filter_jit(construct)()
            ema = self.mode == "ema"

            def apply(params, state, x, train):
                model = bn
                if params:
                    model = eqx.tree_at(lambda m: (m.weight, m.bias), bn, (params["gamma"], params["beta"]))
                f = jax.vmap(lambda x, s: model(x, s, inference=not train), axis_name="batch",
                             in_axes=(0, None), out_axes=(0, None))
                y, st = f(x, state["state"])
                m, v = st.get(self._index(bn))
                if not ema:  # what inference normalizes with, by equinox's own expression (BatchNorm.__call__)
                    n = st.get(bn.batch_counter)
                    scale = jax.numpy.where(n == 0, 1, 1 - bn.momentum**n)
                    m, v = m / scale, v / scale
                return y, {"state": st, "mean": m, "var": v}
            self.modules[key] = (bn, state0, apply)
        return (key, *self.modules[key])

    def _read(self, bn):
        if self.mode == "ema":
            return lambda s: {"running_mean": s["mean"], "running_var": s["var"]}
        return lambda s: {"running_mean": s["mean"], "running_var": s["var"],
                          "num_batches_tracked": s["state"].get(bn.batch_counter)}

    def path_unsupported(self, p: Problem, path: str) -> str | None:
        if path == jc.SYNC and self.mode == "ema":
            return (f'{self.api} under jax.shard_map raises: State.set (equinox/nn/_stateful.py) refuses a new '
                    "value whose abstract type differs from the old one, and the first-step flag it writes "
                    "(jnp.array(False)) and the flag it reads differ in the device axes they vary over "
                    "(ValueError: 'The old value is bool[] and the new value is bool[]')")
        return jc.path_unsupported(self, p, path, masks=False)

    def run_path(self, p: Problem, path: str) -> Observation:
        return self.run(p, path)

    def run(self, p: Problem, path: str = EAGER) -> Observation:
        key, bn, state0, apply = self._model(p, path)
        index = self._index(bn)
        fresh = self.jax.tree.map(lambda a: a, state0)  # State.set invalidates the object it is called on
        if p.native_init:  # equinox's own State from make_with_state: what inference uses before any training
            mean, var = fresh.get(index)
            state = {"state": fresh, "mean": mean, "var": var}
        else:  # the case's initial statistics go where equinox keeps what inference uses before any training
            mean, var = jc.to_jax(self.jax, p.running_mean, p.dtype), jc.to_jax(self.jax, p.running_var, p.dtype)
            state = {"state": fresh.set(index, (mean, var)), "mean": mean, "var": var}
        obs = Observation(facts={"device": self.device, "mode": self.mode})
        jc.run(self, p, key, apply, jc.initial_params(self.jax, p, p.dtype), state, self._read(bn), obs, path)
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "equinox.nn.BatchNorm does not return the batch statistics"
        if self.mode == "ema":
            obs.unsupported["num_batches_tracked"] = 'mode="ema" keeps only a first-step flag, no counter'
        return obs

    def snippet(self, p: Problem) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.native_config(p).items() if k != "dtype")
        index = "state_index" if not self.has_mode else f"{self.mode}_state_index"
        debias = [] if self.mode == "ema" else [
            "    n = st.get(bn.batch_counter)  # what inference uses: equinox's debiasing",
            "    scale = jnp.where(n == 0, 1, 1 - bn.momentum**n)",
            "    m, v = m / scale, v / scale"]
        return snippet(p, [
            "import equinox as eqx",
            f"bn, state0 = eqx.filter_jit(lambda: eqx.nn.make_with_state(eqx.nn.BatchNorm)({cfg}, dtype=dt))()",
            "def apply(params, state, x, train):",
            "    model = bn",
            "    if params:",
            "        model = eqx.tree_at(lambda m: (m.weight, m.bias), bn, (params['gamma'], params['beta']))",
            "    f = jax.vmap(lambda x, s: model(x, s, inference=not train), axis_name='batch', in_axes=(0, None),",
            "                 out_axes=(0, None))",
            "    y, st = f(x, state['state'])",
            f"    m, v = st.get(bn.{index})",
            *debias,
            "    return y, {'state': st, 'mean': m, 'var': v}",
            "mean, var = cast(p.running_mean, dt), cast(p.running_var, dt)",
        ], "{'gamma': cast(p.gamma, dt), 'beta': cast(p.beta, dt)}",
            f"{{'state': state0.set(bn.{index}, (mean, var)), 'mean': mean, 'var': var}}",
            "{'running_mean': state['mean'], 'running_var': state['var']}")

    def bench(self, shape, dtype, what):
        """vmap over the batch of per-example channel-first (C, ...) arrays (equinox's convention: NCHW
        overall), with its State; jitted and compiled ahead of time."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "first")
        jax = self.jax
        _, bn, state0, apply = self._model(p)
        mean, var = jc.to_jax(jax, p.running_mean, p.dtype), jc.to_jax(jax, p.running_var, p.dtype)
        index = bn.ema_state_index if self.mode == "ema" else bn.batch_state_index
        fresh = jax.tree.map(lambda a: a, state0)  # State.set invalidates the object it is called on
        state = {"state": fresh.set(index, (mean, var)), "mean": mean, "var": var}
        fn = bs.jax_ops(jax, apply, jc.initial_params(jax, p, p.dtype), state, jc.to_jax(jax, p.xs[0], p.dtype),
                        jc.to_jax(jax, p.dy, p.dtype), what)
        return bs.make(fn, p, layout, what)
