"""Deliberately broken torch adapters: a BatchNorm written in torch tensor ops, with one bug each.

The same code with `bug=None` is a correct, independent implementation (the control): it must pass every
check the broken ones fail. Each bug is a mistake people make when porting or re-implementing BatchNorm.
"""
from __future__ import annotations

from reference import QUANTITIES, Problem

from adapters import torch_common as tc
from adapters.base import Adapter, Observation

BUGS = {
    "momentum_flipped": "passes the weight on the old value where torch expects the weight on the new batch",
    "biased_running_var": "updates the running variance with the biased batch variance",
    "unbiased_normalization": "normalizes the training output with the unbiased variance",
    "eps_outside_sqrt": "divides by sqrt(var) + eps instead of sqrt(var + eps)",
    "wrong_axes": "takes statistics over every axis but the last instead of the channel axis",
    "no_grad_mean": "detaches the batch mean: no gradient through it",
    "no_grad_var": "detaches the batch variance: no gradient through it",
    "keras_eps": "ignores the requested eps and uses Keras' default 1e-3",
    "float16_stats": "keeps the running statistics in float16",
    "cumulative_off_by_one": "divides the cumulative average by t + 1 instead of t",
    "stats_not_constant_in_eval": "normalizes inference with batch statistics",
    "variance_detached_mean": "takes the variance around mean.detach() (tf.nn.moments' stop_gradient)",
}


class HandWrittenTorchBN(Adapter):
    framework = "torch"
    api = "hand-written BatchNorm in torch ops"
    convention = tc.TORCH_CONVENTION
    dtypes = frozenset({"float64", "float32"})
    channel_axes = "first"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var"}
    single_element_training = "raises"

    def __init__(self, bug: str | None = None):
        assert bug is None or bug in BUGS, bug
        self.bug = bug
        self.name = f"planted.{bug or 'control'}"

    def setup(self) -> None:
        self.torch = tc.import_torch()
        self.device = "cpu"

    def native_config(self, problem: Problem) -> dict:
        alpha, eps = problem.effective(self.convention)
        if self.bug == "momentum_flipped" and alpha is not None:
            alpha = 1.0 - alpha
        if self.bug == "keras_eps":
            eps = 1e-3
        return {"momentum": alpha, "eps": eps}

    def run(self, p: Problem) -> Observation:
        torch, bug = self.torch, self.bug
        dt = getattr(torch, p.dtype)
        cfg = self.native_config(p)
        alpha, eps = cfg["momentum"], cfg["eps"]
        nd = len(p.shape)
        axis = nd - 1 if bug == "wrong_axes" else p.axis
        axes = tuple(a for a in range(nd) if a != axis)
        shape = [1] * nd
        shape[axis] = -1
        C = p.shape[axis]
        if C != p.channels:
            raise RuntimeError(f"running_mean should contain {C} elements not {p.channels}")
        to = lambda a: torch.tensor(a, dtype=dt)  # noqa: E731
        gamma = to(p.gamma_or_ones()).requires_grad_(True)
        beta = to(p.beta_or_zeros()).requires_grad_(True)
        rm, rv = to(p.running_mean), to(p.running_var)

        def store(t):  # the float16 bug rounds what it stores
            return t.to(torch.float16).to(dt) if bug == "float16_stats" else t

        count = 0
        n = p.reduced_count
        obs = Observation(facts={"device": "cpu", "bug": bug or "none"})
        ys, means, vars_, counts = [], [], [], []
        for k, (x, mode) in enumerate(zip(p.xs, p.modes)):
            xt = to(x).requires_grad_(k == p.steps - 1)
            use_batch = mode == "train" or not p.track_running_stats or bug == "stats_not_constant_in_eval"
            if use_batch:
                if mode == "train" and n == 1:
                    obs.raised = "Expected more than 1 value per channel when training"
                    return obs
                mu = xt.mean(dim=axes, keepdim=True)
                centre = mu.detach() if bug == "variance_detached_mean" else mu
                var = ((xt - centre) ** 2).mean(dim=axes, keepdim=True)
                if mode == "train" and p.track_running_stats:
                    count += 1
                    w = alpha if alpha is not None else 1.0 / (count + (1 if bug == "cumulative_off_by_one" else 0))
                    b_var = var if bug == "biased_running_var" else var * n / (n - 1)
                    with torch.no_grad():
                        rm = store((1 - w) * rm + w * mu.reshape(-1))
                        rv = store((1 - w) * rv + w * b_var.reshape(-1))
                m = mu.detach() if bug == "no_grad_mean" else mu
                s2 = var.detach() if bug == "no_grad_var" else var
                if bug == "unbiased_normalization":
                    s2 = s2 * n / (n - 1)
            else:
                m, s2 = rm.reshape(shape), rv.reshape(shape)
            denom = torch.sqrt(s2) + eps if bug == "eps_outside_sqrt" else torch.sqrt(s2 + eps)
            y = gamma.reshape(shape) * (xt - m) / denom + beta.reshape(shape)
            ys.append(y)
            if p.track_running_stats:
                means.append(rm.clone())
                vars_.append(rv.clone())
                counts.append(torch.tensor(count))
        tc.put(obs, "y", ys)
        if p.track_running_stats:
            tc.put(obs, "running_mean", means)
            tc.put(obs, "running_var", vars_)
            tc.put(obs, "num_batches_tracked", counts)
        if self.wants_gradients(p):
            params = [gamma, beta] if p.affine else []
            tc.gradients(torch, obs, ys[-1], xt, params, to(p.dy), to(p.v), self.wants_second_order(p))
        for q in ("batch_mean", "batch_var"):
            obs.unsupported[q] = "not exposed"
        return obs

    def snippet(self, problem):
        return ""
