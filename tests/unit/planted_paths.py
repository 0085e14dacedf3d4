"""Deliberately broken execution paths: torch.nn.BatchNorm whose eager path is right and whose path of one kind
(compiled, exported, folded, mixed precision) computes something else — the bugs of the last years lived there.

Each broken path stands in for what the real path would call (a compiled callable, an exported graph, folded
weights, the mixed-type kernel), written in torch ops so that the tests run in seconds without Inductor or an
exporter. The eager path of the same adapter is the control: it passes.
"""
from __future__ import annotations

from adapters.torch_module import TorchModule

# bug -> (path, what the broken path does)
PATH_BUGS = {
    "compiled_wrong_eps": ("compile", "a compiled graph that baked in eps 1e-3 (Keras' default) instead of the "
                                      "module's eps"),
    "decomposition_detached_var": ("compile-aot", "a decomposition whose backward treats the batch variance as "
                                                  "a constant"),
    "export_momentum_unconverted": ("export-onnx", "an exporter that writes torch's momentum 0.1 into ONNX's "
                                                   "momentum attribute (the weight on the OLD value) unconverted"),
    "folded_with_batch_statistics": ("fold-eval", "folded weights computed from the statistics of the batch being "
                                                  "inferred (a calibration pass) instead of the running statistics"),
    "mixed_kernel_biased_running_var": ("autocast-bf16", "the mixed-type (bfloat16 activations, float32 "
                                                         "statistics) kernel updates the running variance with the "
                                                         "biased batch variance"),
}


class PlantedPath(TorchModule):
    """torch.nn.BatchNorm with one broken execution path."""

    def __init__(self, bug: str):
        assert bug in PATH_BUGS, bug
        self.bug = bug
        self.broken = PATH_BUGS[bug][0]
        self.name = f"planted.path.{bug}"

    def run_path(self, p, path):
        if path != self.broken:
            return super().run_path(p, path)
        torch = self.torch
        view = [1] * len(p.shape)
        view[1] = p.channels
        if self.bug == "compiled_wrong_eps":
            def call(m, mode, x):
                eps, m.eps = m.eps, 1e-3
                try:
                    return m(x)
                finally:
                    m.eps = eps
            return _no_second_order(self.steps(p, self.build(p), call=call, second_order=False))
        if self.bug == "decomposition_detached_var":
            return _no_second_order(self.steps(p, self.build(p), call=lambda m, mode, x: _decomposed(
                torch, m, mode, x, view), second_order=False))
        if self.bug == "export_momentum_unconverted":
            module = self.build(p)
            if p.momentum is not None:
                module.momentum = 1.0 - module.momentum  # the ONNX attribute read back as torch's momentum
            return self.steps(p, module)
        if self.bug == "folded_with_batch_statistics":
            def call(m, mode, x):
                if mode == "train":
                    return m(x)
                axes = [d for d in range(x.dim()) if d != 1]
                mean = x.mean(dim=axes)
                var = ((x - mean.view(view)) ** 2).mean(dim=axes)
                scale = (m.weight if p.affine else 1.0) / torch.sqrt(var + m.eps)
                shift = (m.bias if p.affine else 0.0) - mean * scale
                return x * scale.view(view) + shift.view(view)
            return self.steps(p, self.build(p), call=call, param_grads=p.modes[-1] != "eval")
        if self.bug == "mixed_kernel_biased_running_var":
            module = self.build(p, dtype=torch.float32)
            n = p.reduced_count

            def call(m, mode, x):
                before = m.running_var.clone()
                y = m(x)
                if mode == "train" and m.momentum is not None:  # redo the variance update without Bessel
                    with torch.no_grad():
                        batch_var = x.float().transpose(0, 1).reshape(p.channels, -1).var(dim=1, unbiased=True)
                        m.running_var.copy_((1 - m.momentum) * before + m.momentum * batch_var * (n - 1) / n)
                return y
            return self.steps(p, module, call=call, input_dtype=torch.bfloat16,
                              context=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        raise AssertionError(self.bug)


def _no_second_order(obs):
    """As the real compile paths declare: AOTAutograd has no double backward."""
    from adapters.torch_paths import NO_DOUBLE_BACKWARD

    for q in ("d2x", "d2gamma"):
        obs.unsupported[q] = NO_DOUBLE_BACKWARD
    return obs


def _decomposed(torch, m, mode, x, view):
    """BatchNorm in torch ops (what a decomposition produces), with the batch variance detached."""
    if mode != "train":
        scale = torch.rsqrt(m.running_var + m.eps)
        return (x - m.running_mean.view(view)) * scale.view(view) * m.weight.view(view) + m.bias.view(view)
    axes = [d for d in range(x.dim()) if d != 1]
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True).detach()  # the bug
    n = x.numel() // x.shape[1]
    with torch.no_grad():
        m.num_batches_tracked.add_(1)
        a = m.momentum
        m.running_mean.mul_(1 - a).add_(a * mean.reshape(-1))
        m.running_var.mul_(1 - a).add_(a * var.reshape(-1) * n / (n - 1))
    return (x - mean) * torch.rsqrt(var + m.eps) * m.weight.view(view) + m.bias.view(view)
