"""torch.nn.functional.batch_norm: the stateless function with caller-owned running-statistics tensors."""
from __future__ import annotations

from reference import QUANTITIES, Problem

from . import torch_common as tc
from .base import Observation


_FORMAT = {4: "channels_last", 5: "channels_last_3d"}


class TorchFunctional(tc.TorchAdapter):
    name = "torch.nn.functional.batch_norm"
    api = "torch.nn.functional.batch_norm"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "num_batches_tracked"}

    def unsupported(self, problem: Problem) -> str | None:
        if problem.momentum is None and not problem.use_defaults:
            return "F.batch_norm has no cumulative average (momentum=None needs the module's num_batches_tracked)"
        return super().unsupported(problem)

    def native_config(self, problem: Problem) -> dict[str, object]:
        if problem.use_defaults:
            return {}  # F.batch_norm's own defaults: momentum=0.1, eps=1e-5
        return {"momentum": self.native_momentum(problem), "eps": problem.eps}

    def run(self, p: Problem) -> Observation:
        torch = self.torch
        F = torch.nn.functional
        dt = getattr(torch, p.dtype)
        to = lambda a: torch.tensor(a).to(self.device, dt)  # noqa: E731
        weight = to(p.gamma).requires_grad_(True) if p.affine else None
        bias = to(p.beta).requires_grad_(True) if p.affine else None
        rm = to(p.running_mean) if p.track_running_stats else None
        rv = to(p.running_var) if p.track_running_stats else None
        cfg = self.native_config(p)
        fmt = tc.memory_format(torch, p)
        obs = Observation(facts={"device": self.device})
        ys, means, vars_ = [], [], []
        grads = self.wants_gradients(p)
        for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
            xt = to(x)
            if fmt is not None:
                xt = xt.contiguous(memory_format=fmt)
            xt.requires_grad_(grads and k == p.steps - 1)
            # Without running statistics the batch statistics are the only ones: training=True, as the
            # module does for track_running_stats=False.
            training = mode == "train" or not p.track_running_stats
            try:
                y = F.batch_norm(xt, rm, rv, weight, bias, training=training, **cfg)
            except ValueError as e:
                obs.raised = str(e)
                return obs
            ys.append(y)
            if p.track_running_stats:
                means.append(rm.clone())
                vars_.append(rv.clone())
        tc.put(obs, "y", ys)
        if p.track_running_stats:
            tc.put(obs, "running_mean", means)
            tc.put(obs, "running_var", vars_)
        if grads:
            params = [weight, bias] if p.affine else []
            tc.gradients(torch, obs, ys[-1], xt, params, to(p.dy), to(p.v), self.wants_second_order(p))
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "F.batch_norm does not return the batch statistics"
        obs.unsupported["num_batches_tracked"] = "F.batch_norm keeps no step counter"
        return obs

    def snippet(self, p: Problem) -> str:
        cfg = "".join(f", {k}={v!r}" for k, v in self.native_config(p).items())
        track = p.track_running_stats
        lines = [
            "import torch",
            "import torch.nn.functional as F",
            f"dt = torch.{p.dtype}",
            "to = lambda a: torch.tensor(a).to(dt)",
            ("w, b = to(p.gamma).requires_grad_(), to(p.beta).requires_grad_()" if p.affine else "w = b = None"),
            ("rm, rv = to(p.running_mean), to(p.running_var)" if track else "rm = rv = None"),
            "ys, means, vars_ = [], [], []",
            "for k, (x, mode) in enumerate(zip(p.xs, p.modes)):",
            "    xt = to(x)" + (f".contiguous(memory_format=torch.{_FORMAT[len(p.shape)]})"
                                if p.memory_format == "channels_last" else "") + ".requires_grad_(k == len(p.xs) - 1)",
            f"    y = F.batch_norm(xt, rm, rv, w, b, training={'mode == ' + repr('train') if track else 'True'}{cfg})",
            "    ys.append(y.detach().double().numpy())",
        ]
        if track:
            lines += ["    means.append(rm.double().numpy().copy()); vars_.append(rv.double().numpy().copy())"]
        lines += ["observed = {'y': np.stack(ys)}"]
        if track:
            lines += ["observed.update(running_mean=np.stack(means), running_var=np.stack(vars_))"]
        params = ", w, b" if p.affine else ""
        lines += [f"g = torch.autograd.grad(y, (xt{params}), to(p.dy))", "observed['dx'] = g[0].double().numpy()"]
        if p.affine:
            lines += ["observed.update(dgamma=g[1].double().numpy(), dbeta=g[2].double().numpy())"]
        return "\n".join(lines)

    def bench(self, shape, dtype, what):
        """F.batch_norm on NCHW (contiguous) with caller-owned running statistics; inference under no_grad."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "first")
        torch = self.torch
        F = torch.nn.functional
        dt = getattr(torch, p.dtype)
        to = lambda a: torch.tensor(a).to(self.device, dt)  # noqa: E731
        weight, bias = to(p.gamma).requires_grad_(True), to(p.beta).requires_grad_(True)
        rm, rv, x = to(p.running_mean), to(p.running_var), to(p.xs[0])
        cfg, training = self.native_config(p), what != "eval"

        def forward():
            return F.batch_norm(x, rm, rv, weight, bias, training=training, **cfg)
        if what == "eval":
            def fn():
                with torch.no_grad():
                    return (forward(),)
        elif what == "train":
            def fn():
                return (forward(),)
        else:
            x.requires_grad_(True)
            dy = to(p.dy)

            def fn():
                return bs.torch_grad(torch, forward, x, [weight, bias], dy)
        return bs.make(fn, p, layout, what)
