"""haiku.BatchNorm: transform_with_state, its ExponentialMovingAverage state (hidden, average, counter)."""
from __future__ import annotations

import numpy as np

from reference import QUANTITIES, Convention, Problem

from . import jax_common as jc
from .jax_repro import snippet
from .base import EAGER, Adapter, Observation, Precision

# haiku/_src/batch_norm.py (dm-haiku 0.0.17): decay_rate is required (no default), eps=1e-5; training
# statistics are mean and mean_of_squares - mean^2 (fast, not clamped), in the input dtype (jnp.mean
# accumulates float16/bfloat16 in float32 and rounds back); inference uses ema.average cast to the input
# dtype; y = (x - mean) * (scale * rsqrt(var + eps)) + offset, eps cast to the variance's dtype.
# haiku/_src/moving_averages.py, ExponentialMovingAverage(zero_debias=True): counter += 1,
# hidden = hidden * decay + value * (1 - decay) from hidden = zeros, average = hidden / (1 - decay**counter),
# all in the value's dtype; `average` starts at zeros too, which is what inference before any training
# step uses: the case's initial statistics are put there (hidden stays zeros, counter 0).
SOURCE = "haiku/_src/batch_norm.py (BatchNorm.__call__), haiku/_src/moving_averages.py (ExponentialMovingAverage)"
EMA = "batch_norm/~/mean_ema", "batch_norm/~/var_ema"


class HaikuBatchNorm(Adapter):
    name = "haiku"
    framework = "dm-haiku"
    api = "haiku.BatchNorm"
    # default_momentum=None: haiku has NO default decay_rate (a required argument); use_defaults cases are
    # skipped, so the oracle never reads it (None would otherwise mean a cumulative average).
    convention = Convention(momentum_form="weight_on_old", default_momentum=None, default_eps=1e-5,
                            running_var="biased", averaging="debiased_ema", debias_hidden_init="zeros",
                            variance="fast")
    channel_axes = "any"
    conventional_layout = "channels_last"  # hk.Conv2D data_format="NHWC" by default
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var"}
    source = SOURCE
    subnormals = jc.SUBNORMALS
    paths = jc.JAX_PATHS

    def setup(self) -> None:
        self.jax = jc.import_jax()
        import haiku as hk

        self.hk = hk
        self.jitted = jc.Jitted(self.jax)
        self.modules: dict = {}
        self.device = jc.device(self.jax)

    def precision(self, problem: Problem) -> Precision:
        return Precision.uniform(problem.dtype, accumulate_low_precision_in=problem.dtype)  # all in the input dtype

    def expected_dtype(self, quantity: str, problem: Problem) -> str:
        if quantity == "num_batches_tracked":
            return "int32"  # hk.get_state("counter", (), jnp.int32, ...)
        return super().expected_dtype(quantity, problem)

    def path_expected_dtype(self, quantity: str, problem: Problem, path: str) -> str:
        return self.expected_dtype(quantity, problem)  # every path computes as the jitted call does

    def unsupported(self, problem: Problem) -> str | None:
        if problem.use_defaults:
            return "hk.BatchNorm has no default decay_rate: it is a required argument"
        if problem.momentum is None:
            return "haiku's BatchNorm has no cumulative average"
        if problem.memory_format != "contiguous":
            return "JAX arrays have no memory format; the case would repeat the contiguous one"
        if problem.axis not in (1, len(problem.shape) - 1):
            return "hk.BatchNorm data_format puts channels on axis 1 (channels_first) or last (channels_last)"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        last = problem.axis == len(problem.shape) - 1
        return {"create_scale": problem.affine, "create_offset": problem.affine,
                "decay_rate": self.native_momentum(problem), "eps": problem.eps,
                "data_format": "channels_last" if last else "channels_first"}

    def _apply(self, p: Problem, path: str = EAGER):
        cfg = self.native_config(p)
        if path == jc.SYNC:  # mean and mean of squares pmean'd over the devices (haiku/_src/batch_norm.py)
            cfg["cross_replica_axis"] = jc.DEVICE_AXIS
        key = tuple(sorted(cfg.items()))
        if key not in self.modules:
            hk = self.hk
            f = hk.transform_with_state(lambda x, is_training: hk.BatchNorm(**cfg)(x, is_training))

            def apply(params, state, x, train):
                prm = {"batch_norm": {"scale": params["gamma"], "offset": params["beta"]}} if params else {}
                return f.apply(prm, state, None, x, train)
            self.modules[key] = (f, apply)
        return (key, *self.modules[key])

    def path_unsupported(self, p: Problem, path: str) -> str | None:
        return jc.path_unsupported(self, p, path, masks=False)

    def run_path(self, p: Problem, path: str) -> Observation:
        return self.run(p, path)

    def run(self, p: Problem, path: str = EAGER) -> Observation:
        key, _, apply = self._apply(p, path)
        _, f, _ = self._apply(p)  # init outside any device axis (cross_replica_axis needs one bound)
        jax = self.jax
        shape = tuple(p.channels if i == p.axis else 1 for i in range(len(p.shape)))
        # the state's structure from haiku itself (traced, not run), then filled with the case's values
        _, abstract = jax.eval_shape(lambda x: f.init(None, x, True), jax.ShapeDtypeStruct(p.shape, jc.np_dtype(p.dtype)))
        state = {}
        for name, init in zip(EMA, (p.running_mean, p.running_var)):
            s = abstract[name]
            # native init: haiku's own, ExponentialMovingAverage's get_state(..., init=jnp.zeros) for hidden and
            # average alike (haiku/_src/moving_averages.py): the variance's average starts at 0, not 1
            average = np.zeros(shape) if p.native_init else init.reshape(shape)
            state[name] = {"counter": jc.to_jax(jax, 0, "int32"), "hidden": jc.to_jax(jax, np.zeros(shape), p.dtype),
                           "average": jc.to_jax(jax, average, p.dtype)}
            assert all(state[name][k].shape == s[k].shape and state[name][k].dtype == s[k].dtype for k in s)
        obs = Observation(facts={"device": self.device})
        jc.run(self, p, key, apply, jc.initial_params(jax, p, p.dtype, shape), state,
               lambda s: {"running_mean": s[EMA[0]]["average"], "running_var": s[EMA[1]]["average"],
                          "num_batches_tracked": s[EMA[0]]["counter"]}, obs, path)
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "haiku.BatchNorm does not return the batch statistics"
        return obs

    def snippet(self, p: Problem) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.native_config(p).items())
        shape = tuple(p.channels if i == p.axis else 1 for i in range(len(p.shape)))
        return snippet(p, [
            "import haiku as hk",
            f"f = hk.transform_with_state(lambda x, is_training: hk.BatchNorm({cfg})(x, is_training))",
            "def apply(params, state, x, train):",
            "    prm = {'batch_norm': {'scale': params['gamma'], 'offset': params['beta']}} if params else {}",
            "    return f.apply(prm, state, None, x, train)",
            f"shape = {shape}",
        ], "{'gamma': cast(p.gamma.reshape(shape), dt), 'beta': cast(p.beta.reshape(shape), dt)}",
            "{f'batch_norm/~/{s}_ema': {'counter': cast(0, np.int32), 'hidden': cast(np.zeros(shape), dt),"
            " 'average': cast(r.reshape(shape), dt)} for s, r in (('mean', p.running_mean), ('var', p.running_var))}",
            "{'running_mean': state['batch_norm/~/mean_ema']['average'],"
            " 'running_var': state['batch_norm/~/var_ema']['average']}")

    def bench(self, shape, dtype, what):
        """transform_with_state's apply on NHWC (data_format="channels_last", haiku's default), jitted and
        compiled ahead of time; the state as run() fills it."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "last")
        jax = self.jax
        _, _, apply = self._apply(p)
        shape_c = tuple(p.channels if i == p.axis else 1 for i in range(len(p.shape)))
        state = {name: {"counter": jc.to_jax(jax, 0, "int32"), "hidden": jc.to_jax(jax, np.zeros(shape_c), p.dtype),
                        "average": jc.to_jax(jax, init.reshape(shape_c), p.dtype)}
                 for name, init in zip(EMA, (p.running_mean, p.running_var))}
        fn = bs.jax_ops(jax, apply, jc.initial_params(jax, p, p.dtype, shape_c), state,
                        jc.to_jax(jax, p.xs[0], p.dtype), jc.to_jax(jax, p.dy, p.dtype), what)
        return bs.make(fn, p, layout, what)
