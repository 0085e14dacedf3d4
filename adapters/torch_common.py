"""What the two torch adapters share: import, deterministic flags, tensor conversion, gradients."""
from __future__ import annotations

import os

import numpy as np

from reference import Convention

from .base import Adapter, Observation

# torch/nn/modules/batchnorm.py (_BatchNorm, _NormBase) and torch/nn/functional.py (batch_norm):
# momentum is the weight on the new batch statistic (default 0.1; None: cumulative average over
# num_batches_tracked), eps 1e-5, the running variance is updated with the unbiased batch variance,
# training normalizes with the biased batch variance. aten/src/ATen/native/Normalization.cpp computes the
# batch statistics two-pass (mean, then sum of squared deviations) and accumulates float16/bfloat16 in
# float32 (opmath) on CPU.
TORCH_CONVENTION = Convention(
    momentum_form="weight_on_new",
    default_momentum=0.1,
    default_eps=1e-5,
    running_var="unbiased",
    averaging="ema",
    variance="two_pass",
)
SOURCE = "torch/nn/modules/batchnorm.py, torch/nn/functional.py, aten/src/ATen/native/Normalization.cpp"


def precision(problem):
    """aten/src/ATen/native/cpu/batch_norm_kernel.cpp: float16/bfloat16 reductions accumulate in float
    (opmath_t), but with parameters in the input dtype (module.half(), or tensors of that dtype) the saved
    mean and inverse std are read through conditional_accessor_1d<param_t>: held in float16/bfloat16 before
    alpha = invstd * weight and beta = bias - mean * alpha are formed."""
    from .base import Precision

    dt = problem.dtype
    low = dt in ("float16", "bfloat16")
    return Precision(io=dt, compute="float32" if low else dt, stats=dt, params=dt, saved=dt)


def import_torch():
    import torch

    threads = os.environ.get("BNCONFORM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    # No TF32 anywhere (it would silently lower float32 matmul/conv precision on Ampere+ GPUs).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch


def device() -> str:
    return os.environ.get("BNCONFORM_DEVICE", "cpu")


def dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def to_numpy(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy().copy()


def put(obs: Observation, name: str, tensors) -> None:
    """Stack per-step tensors (or store one tensor) into the observation, keeping the framework dtype."""
    if isinstance(tensors, list):
        obs.put(name, np.stack([to_numpy(t) for t in tensors]), dtype_name(tensors[0]))
    else:
        obs.put(name, to_numpy(tensors), dtype_name(tensors))


def gradients(torch, obs: Observation, y, x, params: list, dy, v, second_order: bool) -> None:
    """dx (and dgamma, dbeta when params are given) of <y, dy>; second order: grads of <dx, v>."""
    inputs = [x] + params
    grads = torch.autograd.grad(y, inputs, grad_outputs=dy, create_graph=second_order)
    put(obs, "dx", grads[0])
    if params:
        put(obs, "dgamma", grads[1])
        put(obs, "dbeta", grads[2])
    if second_order:
        wrt = [x] + params[:1]
        g2 = torch.autograd.grad(grads[0], wrt, grad_outputs=v, allow_unused=True)
        # allow_unused: in inference dx = gamma * r * dy does not depend on x; torch returns None for it.
        d2x = g2[0] if g2[0] is not None else torch.zeros_like(x)
        put(obs, "d2x", d2x)
        if params:
            put(obs, "d2gamma", g2[1] if g2[1] is not None else torch.zeros_like(params[0]))


def memory_format(torch, problem):
    if problem.memory_format != "channels_last":
        return None
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(problem.shape))


class TorchAdapter(Adapter):
    """What the module and the functional adapters share: torch's convention, precision and set-up."""

    framework = "torch"
    convention = TORCH_CONVENTION
    channel_axes = "first"
    single_element_training = "raises"  # _verify_batch_size: "Expected more than 1 value per channel"
    source = SOURCE

    def precision(self, problem):
        return precision(problem)

    def setup(self) -> None:
        self.torch = import_torch()
        self.device = device()

    def unsupported(self, problem) -> str | None:
        if problem.memory_format == "channels_last" and len(problem.shape) not in (4, 5):
            return "channels_last memory format exists for 4-D and 5-D tensors only"
        return super().unsupported(problem)
