"""Deliberately broken JAX execution paths: flax.linen.BatchNorm whose jitted (default) path is right and whose path
of one kind (op by op, vmapped ensemble, synchronized across devices) computes something else.

Each broken path stands in for what goes wrong there: an op-by-op primitive that differs from its compiled
lowering, a batching rule that indexes the ensemble axis wrongly, a synchronized model whose statistics never
leave the device (the `axis_name` dropped). The jitted path of the same adapter is the control: it passes.
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
        return super()._apply(p, path)
