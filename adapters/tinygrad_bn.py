"""tinygrad.nn.BatchNorm (optional extra `tinygrad`; its CPU device needs a system clang): Tensor.gradient."""
from __future__ import annotations

import numpy as np

from reference import QUANTITIES, Convention, Problem

from .base import Adapter, Observation, Precision

# tinygrad/nn/__init__.py (tinygrad 0.14), BatchNorm(sz, eps=1e-5, affine=True, track_running_stats=True,
# momentum=0.1): momentum is the weight on the NEW statistic; calc_stats is two-pass (mean, then mean of
# (x - mean.detach())^2, biased) over every axis but 1; the running variance gets the batch variance times
# numel / (numel - C) = n / (n - 1) (unbiased); training is the TRAINING context variable; inference uses
# the running statistics, or the batch ones without track_running_stats; num_batches_tracked counts steps.
# With one value per channel numel - C = 0: the update divides by zero (ZeroDivisionError), a refusal.
SOURCE = "tinygrad/nn/__init__.py (BatchNorm), tinygrad/tensor.py (Tensor.batchnorm)"
_NAMES = {"double": "float64", "float": "float32", "half": "float16", "long": "int64", "int": "int32"}


class TinygradBatchNorm(Adapter):
    name = "tinygrad"
    framework = "tinygrad"
    api = "tinygrad.nn.BatchNorm"
    convention = Convention(momentum_form="weight_on_new", default_momentum=0.1, default_eps=1e-5,
                            running_var="unbiased", averaging="ema", variance="two_pass")
    dtypes = frozenset({"float64", "float32", "float16"})  # bfloat16: the CPU device's clang rejects __bf16 here
    channel_axes = "first"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var"}
    single_element_training = "raises"
    source = SOURCE

    def setup(self) -> None:
        import tinygrad
        from tinygrad.helpers import Context

        self.tg, self.Context = tinygrad, Context
        self.device = tinygrad.Device.DEFAULT

    def precision(self, problem: Problem) -> Precision:
        # Tensor.batchnorm normalizes in the input dtype: float16 arithmetic is half (the suite found float16
        # outputs 4-10x outside a float32-arithmetic bound; within a half-arithmetic one they pass)
        return Precision.uniform(problem.dtype, accumulate_low_precision_in=problem.dtype)

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "tinygrad BatchNorm has no cumulative average"
        if problem.memory_format != "contiguous":
            return "tinygrad tensors have no memory format; the case would repeat the contiguous one"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {"sz": problem.channels}
        if not problem.use_defaults:
            cfg["momentum"] = self.native_momentum(problem)
            cfg["eps"] = problem.eps
        cfg.update(affine=problem.affine, track_running_stats=problem.track_running_stats)
        return cfg

    def run(self, p: Problem) -> Observation:
        Tensor, dtypes = self.tg.Tensor, self.tg.dtypes
        dt = getattr(dtypes, p.dtype)
        to = lambda a, grad=False: Tensor(np.asarray(a, dtype=np.float32 if p.dtype == "bfloat16" else p.dtype)).cast(dt)  # noqa
        bn = self.tg.nn.BatchNorm(**self.native_config(p))
        if p.affine:
            bn.weight, bn.bias = to(p.gamma, True), to(p.beta, True)
        if p.track_running_stats:
            bn.running_mean, bn.running_var = to(p.running_mean), to(p.running_var)
        obs = Observation(facts={"device": self.device})
        ys, means, vars_, counts = [], [], [], []
        grads = self.wants_gradients(p)
        g = g2 = None
        for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
            xt = to(x)
            with self.Context(TRAINING=int(mode == "train")):
                try:
                    y = bn(xt)
                except ZeroDivisionError as e:  # one value per channel: n / (n - 1) divides by zero
                    obs.raised = f"ZeroDivisionError: {e}"
                    return obs
                if grads and k == p.steps - 1:  # differentiate before anything is realized (lazy graph)
                    params = [bn.weight, bn.bias] if p.affine else []
                    g = y.gradient(xt, *params, gradient=to(p.dy))
                    if self.wants_second_order(p):
                        try:
                            g2 = g[0].gradient(xt, *params[:1], gradient=to(p.v))
                        except Exception as e:  # noqa: BLE001  reported as the reason, not hidden
                            for q in ("d2x", "d2gamma"):
                                obs.unsupported[q] = f"tinygrad second-order gradient raised {type(e).__name__}: {e}"
                y.realize()
            ys.append(y)
            if p.track_running_stats:
                means.append(bn.running_mean.numpy().copy())
                vars_.append(bn.running_var.numpy().copy())
                counts.append(bn.num_batches_tracked.numpy().copy())
        f64 = lambda t: t.float().numpy().astype(np.float64) if t.dtype == dtypes.bfloat16 else t.numpy().astype(np.float64)  # noqa
        name = lambda t: _NAMES.get(t.dtype.name, t.dtype.name)  # noqa: E731
        obs.put("y", np.stack([f64(y) for y in ys]), name(ys[0]))
        if p.track_running_stats:
            sd = name(bn.running_mean)
            obs.put("running_mean", np.stack(means).astype(np.float64), sd)
            obs.put("running_var", np.stack(vars_).astype(np.float64), sd)
            obs.put("num_batches_tracked", np.asarray(counts, dtype=np.float64), name(bn.num_batches_tracked))
        for q, t in zip(("dx", "dgamma", "dbeta"), g or ()):
            obs.put(q, f64(t), name(t))
        for q, t in zip(("d2x", "d2gamma"), g2 or ()):
            obs.put(q, f64(t), name(t))
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "tinygrad BatchNorm does not return the batch statistics"
        return obs
