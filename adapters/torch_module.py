"""torch.nn.BatchNorm{1,2,3}d: the module, its buffers and num_batches_tracked."""
from __future__ import annotations

from reference import QUANTITIES, Problem

from . import torch_common as tc
from . import torch_paths as tp
from .base import Observation

_CLASS = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


class TorchModule(tc.TorchAdapter):
    name = "torch.nn.BatchNorm"
    api = "torch.nn.BatchNorm{1,2,3}d"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var"}

    def native_config(self, problem: Problem) -> dict[str, object]:
        cfg: dict[str, object] = {"num_features": problem.channels}
        if not problem.use_defaults:
            cfg["eps"] = problem.eps
            cfg["momentum"] = self.native_momentum(problem)
        cfg["affine"] = problem.affine
        cfg["track_running_stats"] = problem.track_running_stats
        return cfg

    def build(self, p: Problem, dtype=None):
        """The module with the problem's parameters and initial statistics (in `dtype`, default the case's)."""
        torch = self.torch
        dt = dtype or getattr(torch, p.dtype)
        module = getattr(torch.nn, _CLASS[len(p.shape)])(**self.native_config(p)).to(self.device, dt)
        with torch.no_grad():
            if p.affine:
                module.weight.copy_(torch.tensor(p.gamma))
                module.bias.copy_(torch.tensor(p.beta))
            if p.track_running_stats and not p.native_init:  # else: the constructor's zeros and ones
                module.running_mean.copy_(torch.tensor(p.running_mean))
                module.running_var.copy_(torch.tensor(p.running_var))
        return module

    def run(self, p: Problem) -> Observation:
        return self.steps(p, self.build(p), call=None)

    def steps(self, p: Problem, module, call=None, input_dtype=None, second_order: bool = True,
              context=None, param_grads: bool = True) -> Observation:
        """Run the case's steps through `call` (default: the module itself) and read everything back.

        call(module, mode, x) -> y lets an execution path stand between the user and the module (compiled,
        folded, under autocast); `context` is entered around every call; `second_order` False when the path
        cannot differentiate twice; `param_grads` False when gamma and beta are not in the last step's graph."""
        import contextlib

        torch = self.torch
        dt = input_dtype or getattr(torch, p.dtype)
        fmt = tc.memory_format(torch, p)
        obs = Observation(facts={"device": self.device, "module": _CLASS[len(p.shape)]})
        ys, means, vars_, counts = [], [], [], []
        grads = self.wants_gradients(p)
        for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
            module.train(mode == "train")
            xt = torch.tensor(x).to(self.device, dt)
            if fmt is not None:
                xt = xt.contiguous(memory_format=fmt)
            xt.requires_grad_(grads and k == p.steps - 1)
            try:
                with context() if context else contextlib.nullcontext():
                    y = module(xt) if call is None else call(module, mode, xt)
            except ValueError as e:  # one value per channel in training: documented refusal
                obs.raised = str(e)
                return obs
            ys.append(y)
            if p.track_running_stats:
                means.append(module.running_mean.clone())
                vars_.append(module.running_var.clone())
                counts.append(module.num_batches_tracked.clone())
        tc.put(obs, "y", ys)
        if p.track_running_stats:
            tc.put(obs, "running_mean", means)
            tc.put(obs, "running_var", vars_)
            tc.put(obs, "num_batches_tracked", counts)
        if grads:
            params = [module.weight, module.bias] if p.affine and param_grads else []
            to = lambda a, d=dt: torch.tensor(a).to(self.device, d)  # noqa: E731
            tc.gradients(torch, obs, ys[-1], xt, params, to(p.dy, ys[-1].dtype), to(p.v, dt),
                         second_order and self.wants_second_order(p))
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "torch.nn.BatchNorm does not expose the batch statistics"
        return obs

    # -- execution paths (adapters/torch_paths.py)
    paths = tp.MODULE_PATHS

    def run_path(self, p: Problem, path: str) -> Observation:
        return tp.run(self, p, path)

    def path_unsupported(self, p: Problem, path: str) -> str | None:
        return tp.unsupported(self, p, path)

    def path_precision(self, p: Problem, path: str):
        return tp.precision(self, p, path)

    def path_snippet(self, p: Problem, path: str) -> str:
        return tp.snippet(self, p, path)

    def snippet(self, p: Problem) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.native_config(p).items())
        fmt = {4: "channels_last", 5: "channels_last_3d"}.get(len(p.shape)) if p.memory_format != "contiguous" \
            else None
        lines = [
            "import torch",
            f"dt = torch.{p.dtype}",
            f"bn = torch.nn.{_CLASS[len(p.shape)]}({cfg}).to(dtype=dt)",
            "with torch.no_grad():",
        ]
        if p.affine:
            lines += ["    bn.weight.copy_(torch.tensor(p.gamma)); bn.bias.copy_(torch.tensor(p.beta))"]
        if p.track_running_stats:
            lines += ["    bn.running_mean.copy_(torch.tensor(p.running_mean))",
                      "    bn.running_var.copy_(torch.tensor(p.running_var))"]
        else:
            lines += ["    pass"]
        lines += [
            "ys, means, vars_ = [], [], []",
            "for k, (x, mode) in enumerate(zip(p.xs, p.modes)):",
            "    bn.train(mode == 'train')",
            "    xt = torch.tensor(x).to(dt)" + (f".contiguous(memory_format=torch.{fmt})" if fmt else ""),
            "    xt.requires_grad_(k == len(p.xs) - 1)",
            "    y = bn(xt)",
            "    ys.append(y.detach().double().numpy())",
        ]
        if p.track_running_stats:
            lines += ["    means.append(bn.running_mean.double().numpy().copy())",
                      "    vars_.append(bn.running_var.double().numpy().copy())"]
        lines += ["observed = {'y': np.stack(ys)}"]
        if p.track_running_stats:
            lines += ["observed.update(running_mean=np.stack(means), running_var=np.stack(vars_))"]
        params = ", bn.weight, bn.bias" if p.affine else ""
        lines += [f"g = torch.autograd.grad(y, (xt{params}), torch.tensor(p.dy).to(dt))",
                  "observed['dx'] = g[0].double().numpy()"]
        if p.affine:
            lines += ["observed.update(dgamma=g[1].double().numpy(), dbeta=g[2].double().numpy())"]
        return "\n".join(lines)

    def bench(self, shape, dtype, what):
        """nn.BatchNorm{1,2,3}d on NCHW (contiguous); inference under no_grad, training with autograd on."""
        from . import bench_support as bs

        p, layout = bs.start(self, shape, dtype, what, "first")
        torch = self.torch
        dt = getattr(torch, p.dtype)
        module = getattr(torch.nn, _CLASS[len(p.shape)])(**self.native_config(p)).to(self.device, dt)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(p.gamma))
            module.bias.copy_(torch.tensor(p.beta))
            module.running_mean.copy_(torch.tensor(p.running_mean))
            module.running_var.copy_(torch.tensor(p.running_var))
        module.train(what != "eval")
        x = torch.tensor(p.xs[0]).to(self.device, dt)
        if what == "eval":
            def fn():
                with torch.no_grad():
                    return (module(x),)
        elif what == "train":
            def fn():
                return (module(x),)
        else:
            x.requires_grad_(True)
            dy = torch.tensor(p.dy).to(self.device, dt)
            params = [module.weight, module.bias]

            def fn():
                return bs.torch_grad(torch, lambda: module(x), x, params, dy)
        return bs.make(fn, p, layout, what)
