"""mindspore.nn.BatchNorm{1,2}d (optional extra `mindspore`, CPU): the cell, set_train, mindspore.grad."""
from __future__ import annotations

import numpy as np

from reference import QUANTITIES, SECOND_ORDER, Convention, Problem

from .base import Adapter, Observation, Precision

# mindspore/nn/layer/normalization.py (_BatchNorm, mindspore 2.10): momentum=0.9 is the weight on the OLD
# value at the API (the cell passes 1 - momentum to ops.BatchNorm, whose momentum weights the new value),
# eps=1e-5, gamma/beta/moving_mean/moving_variance Parameters, set_train(True) normalizes with the batch
# statistics (bn_train) and updates the moving ones; the CPU kernel's running variance is declared unbiased
# (as measured in conventions.md) and two-pass.
SOURCE = "mindspore/nn/layer/normalization.py (_BatchNorm, BatchNorm1d, BatchNorm2d), mindspore ops.BatchNorm"
_CLASS = {2: "BatchNorm1d", 4: "BatchNorm2d"}


class MindSporeBatchNorm(Adapter):
    name = "mindspore"
    framework = "mindspore"
    api = "mindspore.nn.BatchNorm{1,2}d"
    convention = Convention(momentum_form="weight_on_old", default_momentum=0.9, default_eps=1e-5,
                            running_var="unbiased", averaging="ema", variance="two_pass")
    dtypes = frozenset({"float32", "float16"})  # the CPU BatchNorm kernel: float32/float16
    channel_axes = "first"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"} - SECOND_ORDER
    source = SOURCE

    def setup(self) -> None:
        import mindspore as ms

        ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
        self.ms = ms
        self.device = "cpu"

    def precision(self, problem: Problem) -> Precision:
        # Cell.to_float(float16) casts the computation; gamma/beta/moving statistics stay float32 Parameters
        dt = problem.dtype
        return Precision(io=dt, compute="float32", stats="float32", params="float32")

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "mindspore BatchNorm has no cumulative average"
        if len(problem.shape) not in _CLASS:
            return "mindspore.nn has BatchNorm1d for (N, C) and BatchNorm2d for (N, C, H, W) only"
        if problem.memory_format != "contiguous" or not problem.affine or not problem.track_running_stats:
            return "not covered by this optional adapter (memory format / affine=False / no running statistics)"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {"num_features": problem.channels}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["eps"] = problem.eps
        return cfg

    def run(self, p: Problem) -> Observation:
        ms = self.ms
        dt = getattr(ms, p.dtype)
        to = lambda a: ms.Tensor(np.asarray(a, dtype=p.dtype), dt)  # noqa: E731
        cell = getattr(ms.nn, _CLASS[len(p.shape)])(**self.native_config(p)).to_float(dt)
        for name, v in (("gamma", p.gamma), ("beta", p.beta), ("moving_mean", p.running_mean),
                        ("moving_variance", p.running_var)):
            param = getattr(cell, name)
            param.set_data(ms.Tensor(np.asarray(v, dtype=p.dtype), dt))
        obs = Observation(facts={"device": "cpu"})
        ys, means, vars_ = [], [], []
        for x, mode in zip(p.xs, p.modes):
            cell.set_train(mode == "train")
            xt = to(x)
            y = cell(xt)
            ys.append(y.asnumpy().astype(np.float64))
            means.append(cell.moving_mean.asnumpy().astype(np.float64))
            vars_.append(cell.moving_variance.asnumpy().astype(np.float64))
        obs.put("y", np.stack(ys), str(y.dtype).lower())
        obs.put("running_mean", np.stack(means), str(cell.moving_mean.dtype).lower())
        obs.put("running_var", np.stack(vars_), str(cell.moving_variance.dtype).lower())
        if self.wants_gradients(p):
            # the last step again, from the statistics before it, differentiated (the update is a side effect)
            cell.moving_mean.set_data(ms.Tensor(means[-2] if p.steps > 1 else p.running_mean, dt))
            cell.moving_variance.set_data(ms.Tensor(vars_[-2] if p.steps > 1 else p.running_var, dt))
            params = [cell.gamma, cell.beta]
            grad_fn = ms.value_and_grad(lambda x: (cell(x) * to(p.dy)).sum(), grad_position=0, weights=params)
            _, (dx, (dg, db)) = grad_fn(xt)
            for q, t in (("dx", dx), ("dgamma", dg), ("dbeta", db)):
                obs.put(q, t.asnumpy().astype(np.float64), str(t.dtype).lower())
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "mindspore.nn.BatchNorm does not return the batch statistics"
        obs.unsupported["num_batches_tracked"] = "mindspore.nn.BatchNorm keeps no step counter"
        return obs
