"""mlx.nn.BatchNorm (optional extra `mlx`, CPU build): the module, its running statistics, mx.vjp / mx.grad."""
from __future__ import annotations

import numpy as np

from reference import QUANTITIES, Convention, Problem

from .base import Adapter, Observation

# mlx/nn/layers/normalization.py (mlx 0.32): BatchNorm(eps=1e-5, momentum=0.1), momentum the weight on the
# NEW batch statistic; training normalizes with mean and var(ddof=0) and updates the running variance with
# var(ddof=1) (unbiased); inference uses the running statistics; track_running_stats=False normalizes with
# the batch statistics always; channels last, 2-4 dimensional input; training with one value per channel
# raises ValueError. Statistics by mx.mean / mx.var in the input dtype.
SOURCE = "mlx/nn/layers/normalization.py (BatchNorm), mlx/ops (mean, var)"


class MLXBatchNorm(Adapter):
    name = "mlx"
    framework = "mlx"
    api = "mlx.nn.BatchNorm"
    convention = Convention(momentum_form="weight_on_new", default_momentum=0.1, default_eps=1e-5,
                            running_var="unbiased", averaging="ema", variance="two_pass")
    channel_axes = "last"
    conventional_layout = "channels_last"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"}
    single_element_training = "raises"
    source = SOURCE

    def setup(self) -> None:
        import mlx.core as mx
        import mlx.nn as nn

        mx.set_default_device(mx.cpu)
        self.mx, self.nn = mx, nn
        self.device = "cpu"

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "mlx BatchNorm has no cumulative average"
        if not 2 <= len(problem.shape) <= 4:
            return "mlx.nn.BatchNorm takes 2- to 4-dimensional input"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {"num_features": problem.channels}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["eps"] = problem.eps
        cfg.update(affine=problem.affine, track_running_stats=problem.track_running_stats)
        return cfg

    def _module(self, p: Problem, train: bool, stats, w=None, b=None):
        bn = self.nn.BatchNorm(**self.native_config(p))
        if p.affine:
            bn.weight, bn.bias = w, b
        if p.track_running_stats:
            bn.running_mean, bn.running_var = stats
        bn.train(train)
        return bn

    def run(self, p: Problem) -> Observation:
        mx = self.mx
        dt = getattr(mx, p.dtype)
        to = lambda a: mx.array(np.asarray(a, dtype=np.float32 if p.dtype == "bfloat16" else p.dtype), dtype=dt)  # noqa
        w, b = (to(p.gamma), to(p.beta)) if p.affine else (None, None)
        stats = (to(p.running_mean), to(p.running_var))
        obs = Observation(facts={"device": "cpu"})
        ys, means, vars_ = [], [], []
        for x, mode in zip(p.xs, p.modes):
            train, before = mode == "train", stats
            bn = self._module(p, train, stats, w, b)
            try:
                y = bn(to(x))
            except ValueError as e:  # one value per channel in training: documented refusal
                obs.raised = str(e)
                return obs
            if p.track_running_stats:
                stats = (bn.running_mean, bn.running_var)
            mx.eval(y, *stats)
            ys.append(y), means.append(stats[0]), vars_.append(stats[1])
        f64 = lambda a: np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a).astype(np.float64)  # noqa
        name = lambda a: str(a.dtype).removeprefix("mlx.core.")  # noqa: E731
        obs.put("y", np.stack([f64(y) for y in ys]), name(ys[0]))
        if p.track_running_stats:
            obs.put("running_mean", np.stack([f64(m) for m in means]), name(means[0]))
            obs.put("running_var", np.stack([f64(v) for v in vars_]), name(vars_[0]))
        if self.wants_gradients(p):
            xt, dy = to(p.xs[-1]), to(p.dy)
            fwd = lambda x, w, b: self._module(p, train, before, w, b)(x)  # noqa: E731
            args = [xt, w, b] if p.affine else [xt]
            _, g = mx.vjp(lambda *a: fwd(*a) if p.affine else fwd(a[0], None, None), args, [dy])
            for q, t in zip(("dx", "dgamma", "dbeta"), g):
                obs.put(q, f64(t), name(t))
            if self.wants_second_order(p):
                v = to(p.v)

                def inner(x, w):
                    d = mx.vjp(lambda xx: fwd(xx, w, b), [x], [dy])[1][0]
                    return (d * v).sum()
                g2 = mx.grad(inner, argnums=(0, 1) if p.affine else 0)(xt, w)
                d2x, d2g = (g2 if p.affine else (g2, None))
                obs.put("d2x", f64(d2x), name(d2x))
                if p.affine:
                    obs.put("d2gamma", f64(d2g), name(d2g))
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "mlx.nn.BatchNorm does not return the batch statistics"
        obs.unsupported["num_batches_tracked"] = "mlx.nn.BatchNorm keeps no step counter"
        return obs
