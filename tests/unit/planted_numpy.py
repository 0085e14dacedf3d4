"""Deliberately broken BatchNorms written from scratch in NumPy: one realistic mistake each.

Independent of the oracle (no `reference` arithmetic is used to compute anything): the forward, the running
update and the bookkeeping are written here as a user would, in the case's dtype. Gradients are those of this
very forward, taken by complex step in float64 (so a bug in the forward shows in the gradients exactly as
autograd would show it). `bug=None` is the control: it must pass every check the broken ones fail.
"""
from __future__ import annotations

import numpy as np

from reference import QUANTITIES, Convention, Problem

from adapters.base import Adapter, Observation

BUGS = {
    "momentum_0.3": "hard-codes momentum 0.3 (a value from another model's config)",
    "update_twice": "applies the running update twice per training step (forward called twice per batch)",
    "skip_first_update": "skips the running update on the first batch (a warm-up flag)",
    "forgot_eval": "never switches to inference: eval steps normalize with batch statistics and update the "
                   "running statistics",
    "broadcast_last_axis": "computes the per-channel statistics right, but broadcasts them (and gamma, beta) "
                           "along the last axis: `(x - mean) / np.sqrt(var + eps)` with mean of shape (C,)",
    "broadcast_last_axis_ddof1": "the StackOverflow answer: broadcast along the last axis and x.var(ddof=1)",
    "sqrt_eps_outside": "divides by std + sqrt(eps)",
    "float32_hyperparameters": "stores momentum and eps as np.float32 in a float64 computation",
    "float16_accumulation": "accumulates the statistics of float32 inputs in float16 (two-pass)",
    "fast_var_float32": "computes the variance of float64 inputs as E[x^2] - E[x]^2 in float32",
    "bessel_n_plus_1": "Bessel's correction typed as n/(n+1)",
    "stats_bfloat16": "keeps the running statistics in bfloat16 (emulated by truncating the mantissa)",
    "debiased_running": "divides the EMA of the statistics by 1 - (1 - momentum)^t (Adam-style debiasing)",
    "init_from_first_batch": "initializes the running statistics from the first batch",
    "train_uses_running": "normalizes the training output with the freshly updated running statistics",
    "flipped_and_biased": "passes the weight on the old value AND feeds the biased variance to the running one",
    "keras_eps_and_ddof1": "uses Keras' eps 1e-3 and normalizes with the unbiased variance",
    "cumulative_as_ema": "treats momentum=None as 0.1 instead of a cumulative average",
}
NO_GRADIENTS = {"broadcast_last_axis", "broadcast_last_axis_ddof1", "float16_accumulation", "fast_var_float32",
                "stats_bfloat16"}  # the complex step cannot pass through emulated narrow arithmetic


def _bf16(a):
    """Round-to-nearest-even to bfloat16, in float32 bits."""
    b = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


# The realistic default-tier cases (up to 1.6 M elements) would need terabytes for a complex step of the input:
# their forward (statistics, output) is still checked; the gradients on every case of the sizes it was written for
# (4,096 elements at most: the largest default case before the realistic shapes).
MAX_GRADIENT_SIZE = 4096

class HandWrittenNumpyBN(Adapter):
    framework = "numpy"
    api = "hand-written BatchNorm in NumPy"
    convention = Convention()  # what it means to implement: torch's documented behaviour
    dtypes = frozenset({"float64", "float32"})
    channel_axes = "first"
    quantities = frozenset(QUANTITIES) - {"batch_mean", "batch_var", "d2x", "d2gamma"}
    single_element_training = "raises"

    def __init__(self, bug: str | None = None):
        assert bug is None or bug in BUGS, bug
        self.bug = bug
        self.name = f"planted_numpy.{bug or 'control'}"

    def setup(self) -> None:
        self.device = "cpu"

    def native_config(self, problem: Problem) -> dict:
        alpha, eps = problem.effective(self.convention)
        return {"momentum": alpha, "eps": eps}

    def snippet(self, problem):
        return ""

    # -- one step, written as a user would; x may carry leading batch axes (for the complex step)
    def _step(self, x, mode, state, p: Problem, dt, count):
        bug, nd = self.bug, len(p.shape)
        ax = p.axis - nd  # negative: leading batch axes broadcast
        red = tuple(a for a in range(-nd, 0) if a != ax)
        n = p.reduced_count
        cfg = self.native_config(p)
        momentum, eps = cfg["momentum"], cfg["eps"]
        if bug == "float32_hyperparameters":
            momentum = None if momentum is None else float(np.float32(momentum))  # via a float32 config
            eps = float(np.float32(eps))
        if bug == "momentum_0.3":
            momentum = 0.3
        if bug == "keras_eps_and_ddof1":
            eps = 1e-3
        if bug == "flipped_and_biased" and momentum is not None:
            momentum = 1 - momentum
        if bug == "cumulative_as_ema" and momentum is None:
            momentum = 0.1

        def ch(v):  # a (C,) vector against x
            if bug in ("broadcast_last_axis", "broadcast_last_axis_ddof1"):
                return v  # NumPy aligns trailing axes: the vector lands on the last axis
            shape = [1] * nd
            shape[ax] = np.shape(v)[-1]
            return np.reshape(v, np.shape(v)[:-1] + tuple(shape))

        def squeeze(s):
            return s.reshape(s.shape[:s.ndim - nd] + (-1,))

        gamma, beta = p.gamma_or_ones().astype(dt), p.beta_or_zeros().astype(dt)
        rm, rv, hm, hv = state
        train = mode == "train" or (bug == "forgot_eval") or not p.track_running_stats
        update = p.track_running_stats and (mode == "train" or bug == "forgot_eval")
        if train:
            if bug == "float16_accumulation":
                xh = x.astype(np.float16)
                mean = np.mean(xh, axis=red, keepdims=True, dtype=np.float16)
                var = np.mean((xh - mean) ** 2, axis=red, keepdims=True, dtype=np.float16)
                mean, var = mean.astype(dt), var.astype(dt)
            elif bug == "fast_var_float32":
                xs = x.astype(np.float32)
                mean32 = np.mean(xs, axis=red, keepdims=True, dtype=np.float32)
                var = (np.mean(xs * xs, axis=red, keepdims=True, dtype=np.float32) - mean32 * mean32).astype(dt)
                mean = mean32.astype(dt)
            else:
                mean = np.mean(x, axis=red, keepdims=True)
                var = np.mean((x - mean) ** 2, axis=red, keepdims=True)
            if update:
                count += 1
                bessel = n / (n + 1) if bug == "bessel_n_plus_1" else (1.0 if bug == "flipped_and_biased"
                                                                       else n / (n - 1))
                bm, bv = squeeze(mean), squeeze(var) * bessel
                w = momentum if momentum is not None else 1.0 / count
                for _ in range(2 if bug == "update_twice" else 1):
                    if bug == "skip_first_update" and count == 1:
                        break
                    if bug == "init_from_first_batch" and count == 1:
                        rm, rv = bm, bv
                    elif bug == "debiased_running" and momentum is not None:
                        hm, hv = (1 - w) * hm + w * bm, (1 - w) * hv + w * bv
                        rm, rv = hm / (1 - (1 - w) ** count), hv / (1 - (1 - w) ** count)
                    else:
                        rm, rv = (1 - w) * rm + w * bm, (1 - w) * rv + w * bv
                if bug == "stats_bfloat16":
                    rm, rv = _bf16(rm).astype(dt), _bf16(rv).astype(dt)
            if bug == "train_uses_running" and update:
                m, s2 = ch(rm), ch(rv)
            else:
                m, s2 = (ch(squeeze(mean)), ch(squeeze(var))) if ch(np.ones(1)).ndim == 1 else (mean, var)
            if bug in ("broadcast_last_axis_ddof1", "keras_eps_and_ddof1"):
                s2 = s2 * (n / (n - 1))
        else:
            m, s2 = ch(rm), ch(rv)
        if bug == "sqrt_eps_outside":
            y = ch(gamma) * (x - m) / (np.sqrt(s2) + np.sqrt(eps)) + ch(beta)
        else:
            y = ch(gamma) * (x - m) / np.sqrt(s2 + eps) + ch(beta)
        return y.astype(dt) if np.isrealobj(y) else y, (rm, rv, hm, hv), count

    def _run(self, p: Problem, dt, xs=None):
        C = p.channels
        state = (p.running_mean.astype(dt), p.running_var.astype(dt), np.zeros(C, dt), np.zeros(C, dt))
        count, ys, means, vars_, counts = 0, [], [], [], []
        xs = xs or [x.astype(dt) for x in p.xs]
        for x, mode in zip(xs, p.modes):
            y, state, count = self._step(x, mode, state, p, dt, count)
            ys.append(y)
            means.append(np.array(state[0]))
            vars_.append(np.array(state[1]))
            counts.append(count)
        return ys, means, vars_, counts

    def unsupported(self, p: Problem) -> str | None:
        if p.xs[-1].size > MAX_GRADIENT_SIZE:  # realistic sizes: checked on the real adapters, not on this one
            return (f"the independent NumPy BatchNorm is written for small inputs (at most {MAX_GRADIENT_SIZE} "
                    "elements: its complex-step gradients cost size^2, its diagnosis fits too)")
        return super().unsupported(p)

    def run(self, p: Problem) -> Observation:
        obs = Observation(facts={"device": "cpu", "bug": self.bug or "none"})
        if p.reduced_count == 1 and "train" in p.modes:
            obs.raised = "Expected more than 1 value per channel when training"
            return obs
        if p.axis != 1:
            raise ValueError("channels on axis 1 only")
        dt = np.dtype(p.dtype)
        ys, means, vars_, counts = self._run(p, dt)
        obs.put("y", np.stack(ys), p.dtype)
        if p.track_running_stats:
            obs.put("running_mean", np.stack(means), p.dtype)
            obs.put("running_var", np.stack(vars_), p.dtype)
            obs.put("num_batches_tracked", np.asarray(counts), "int64")
        for q in ("batch_mean", "batch_var", "d2x", "d2gamma"):
            obs.unsupported[q] = "not exposed"
        if self.bug in NO_GRADIENTS:
            for q in ("dx", "dgamma", "dbeta"):
                obs.unsupported[q] = "this hand-written BatchNorm has no backward"
        elif p.xs[-1].size > MAX_GRADIENT_SIZE:
            for q in ("dx", "dgamma", "dbeta"):
                obs.unsupported[q] = (f"its complex-step gradients cost size^2 (memory and time): kept to inputs of "
                                      f"at most {MAX_GRADIENT_SIZE} elements")
        elif self.wants_gradients(p):
            dx, dgamma, dbeta = self._gradients(p)
            obs.put("dx", dx, p.dtype)
            if p.affine:
                obs.put("dgamma", dgamma, p.dtype)
                obs.put("dbeta", dbeta, p.dtype)
        return obs

    def _gradients(self, p: Problem):
        """d<y_last, dy>/d(x_last, gamma, beta) of this forward, by complex step (exact to rounding)."""
        h, last = 1e-20, p.steps - 1
        x = p.xs[last]
        flat = x.reshape(-1)
        dx = np.empty(x.size)
        for start in range(0, x.size, 256):
            idx = np.arange(start, min(x.size, start + 256))
            xb = np.repeat(flat[None].astype(np.complex128), len(idx), axis=0)
            xb[np.arange(len(idx)), idx] += 1j * h
            xs = [xx.astype(np.complex128) for xx in p.xs[:last]] + [xb.reshape((len(idx),) + x.shape)]
            y = self._run(p, np.complex128, xs)[0][-1]
            dx[idx] = np.imag(np.sum(y * p.dy, axis=tuple(range(1, x.ndim + 1)))) / h
        C = p.channels
        dgamma, dbeta = np.zeros(C), np.zeros(C)
        for c in range(C):
            for which, out in (("gamma", dgamma), ("beta", dbeta)):
                g, b = p.gamma_or_ones().astype(complex), p.beta_or_zeros().astype(complex)
                (g if which == "gamma" else b)[c] += 1j * h
                q = p.with_(gamma=g, beta=b)
                y = self._run(q, np.complex128, [xx.astype(np.complex128) for xx in p.xs])[0][-1]
                out[c] = np.imag(np.sum(y * p.dy)) / h
        return dx.reshape(x.shape), dgamma, dbeta
