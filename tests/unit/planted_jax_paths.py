"""Deliberately broken JAX execution paths: flax.linen.BatchNorm whose jitted (default) path is right and whose path
of one kind (op by op, vmapped ensemble, synchronized across devices) computes something else.

Each broken path stands in for what goes wrong there: an op-by-op primitive that differs from its compiled
lowering, a batching rule that indexes the ensemble axis wrongly, a synchronized model whose statistics never
leave the device (the `axis_name` dropped), a synchronized BatchNorm whose forward is right but whose backward
uses each device's own statistics (the gradient terms Σdy, Σdy·x̂ not summed over the devices), and a
data-parallel step whose replicated parameters' gradients are not summed over the devices (one device's part).
The jitted path of the same adapter is the control: it passes.
"""
from __future__ import annotations

from adapters import jax_common as jc
from adapters.base import EAGER
from adapters.flax_linen import FlaxLinen

# bug -> (path, what the broken path does)
JAX_PATH_BUGS = {
    "nojit_wrong_eps": (jc.NO_JIT, "an op-by-op rsqrt(var + eps) that adds eps 1e-3 (Keras' default) instead of "
                                   "the module's eps"),
    "vmap_reads_other_copy": (jc.VMAP, "a batching rule that mis-indexes the ensemble axis: every copy gets "
                                       "copy 0's output"),
    "sync_statistics_stay_local": (jc.SYNC, "synchronized BatchNorm whose device axis is dropped: each device "
                                            "normalizes with (and averages into its state) its own shard's "
                                            "statistics"),
    "sync_backward_sums_stay_local": (jc.SYNC, "synchronized BatchNorm whose forward is right but whose backward "
                                               "takes the means of dy and dy*xhat over the device's own shard (no "
                                               "psum of the gradient terms): dx = gamma/sigma (dy - mean_local(dy) - "
                                               "xhat mean_local(dy xhat)) with the global sigma and xhat"),
    "sync_averages_device_variances": (jc.SYNC, "synchronized BatchNorm that combines the devices' statistics as "
                                                "the mean of their means and the mean of their own variances (each "
                                                "about its device's mean), not the global batch's variance, in the "
                                                "output and in the running variance"),
    "sync_parameter_gradients_of_one_device": (jc.SYNC, "the gradients of the replicated gamma and beta taken from "
                                                        "device 0's shard only (no sum over the devices)"),
}


class PlantedJaxPath(FlaxLinen):
    """flax.linen.BatchNorm with one broken execution path."""

    def __init__(self, bug: str):
        assert bug in JAX_PATH_BUGS, bug
        super().__init__()
        self.bug = bug
        self.broken = JAX_PATH_BUGS[bug][0]
        self.name = f"planted.jaxpath.{bug}"

    def run_path(self, p, path):
        if path == self.broken and self.bug == "nojit_wrong_eps":
            return self.run(p.with_(eps=1e-3), path)
        return super().run_path(p, path)

    def ensemble(self, apply):
        if self.bug != "vmap_reads_other_copy":
            return jc.vmapped(self.jax, apply)

        def ensemble(params, state, x, train):
            ys, states = self.jax.vmap(lambda prm, st: apply(prm, st, x, train))(params, state)
            return ys[0], states
        return ensemble

    def _apply(self, p, path=EAGER):
        if path == jc.SYNC and self.bug == "sync_statistics_stay_local":
            return super()._apply(p, EAGER)  # the module without axis_name, run on the devices all the same
        key, apply = super()._apply(p, path)
        if path != jc.SYNC or self.bug not in ("sync_backward_sums_stay_local", "sync_parameter_gradients_of_one_device",
                                               "sync_averages_device_variances"):
            return key, apply
        lax = self.jax.lax
        if self.bug == "sync_backward_sums_stay_local":
            return key, self._backward_sums_stay_local(p, apply)
        if self.bug == "sync_averages_device_variances":
            return key, self._averages_device_variances(p, apply)

        def one_device_parameter_gradients(params, state, x, train, mask=None):
            first = lax.axis_index(jc.DEVICE_AXIS) == 0  # inside shard_map: the same values, device 0's gradient
            params = {k: self.jax.numpy.where(first, v, lax.stop_gradient(v)) for k, v in params.items()}
            return apply(params, state, x, train, mask=mask)
        return key, one_device_parameter_gradients

    def _backward_sums_stay_local(self, p, apply):
        """`apply` with the same values and a wrong derivative: y + (G - G) where only G carries a derivative,
        G = gamma inv (x - mean_local(x)) - gamma inv xhat mean_local(x xhat) + gamma xhat + beta, with inv, xhat
        the global (device-combined) statistics held constant and gamma held constant in the first two terms.
        Its vjp is the textbook BatchNorm backward with the two sums left on the device; d gamma and d beta
        (sum dy xhat, sum dy) stay right."""
        jnp, lax = self.jax.numpy, self.jax.lax
        sg = lax.stop_gradient
        axis = p.axis % len(p.shape)
        axes = tuple(i for i in range(len(p.shape)) if i != axis)
        shape = tuple(p.channels if i == axis else 1 for i in range(len(p.shape)))
        eps = self.native_config(p).get("epsilon", 1e-5)
        local = lambda a: jnp.mean(a, axes, keepdims=True)  # noqa: E731

        def backward_sums_stay_local(params, state, x, train, mask=None):
            y, state = apply(params, state, x, train, mask=mask)
            if not train:  # inference: the statistics are constants, there is nothing to sum
                return y, state
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mu = lax.pmean(local(xf), jc.DEVICE_AXIS)
            inv = sg(lax.rsqrt(lax.pmean(local(xf * xf), jc.DEVICE_AXIS) - mu * mu + eps))
            xhat = sg((xf - mu) * inv)
            gamma = params["gamma"].reshape(shape) if params else jnp.ones(shape, xf.dtype)
            g = sg(gamma) * inv
            fake = g * (xf - local(xf)) - g * xhat * local(xf * xhat)
            if params:
                fake = fake + gamma * xhat + params["beta"].reshape(shape)
            fake = fake.astype(y.dtype)
            return sg(y) + (fake - sg(fake)), state
        return backward_sums_stay_local

    def _averages_device_variances(self, p, apply):
        """`apply` whose training steps normalize with, and fold into the running variance, the mean of the
        devices' own variances: global var = that + the variance of the devices' means, so equal shards differ
        wherever the devices' means do."""
        jnp, lax = self.jax.numpy, self.jax.lax
        axis = p.axis % len(p.shape)
        axes = tuple(i for i in range(len(p.shape)) if i != axis)
        shape = tuple(p.channels if i == axis else 1 for i in range(len(p.shape)))
        cfg = self.native_config(p)
        eps, momentum = cfg.get("epsilon", 1e-5), cfg.get("momentum", 0.99)
        local = lambda a: jnp.mean(a, axes, keepdims=True)  # noqa: E731

        def averages_device_variances(params, state, x, train, mask=None):
            y, new = apply(params, state, x, train, mask=mask)
            if not train:
                return y, new
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mu = lax.pmean(local(xf), jc.DEVICE_AXIS)
            var = lax.pmean(local((xf - local(xf)) ** 2), jc.DEVICE_AXIS)
            y = (xf - mu) * lax.rsqrt(var + eps)
            if params:
                y = y * params["gamma"].reshape(shape) + params["beta"].reshape(shape)
            ra = momentum * state["var"] + (1 - momentum) * var.reshape(-1)
            return y.astype(x.dtype), dict(new, var=ra.astype(new["var"].dtype))
        return averages_device_variances
