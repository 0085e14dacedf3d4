"""Framework-free adapters for testing the engine: the oracle itself, rounded to the case dtype, with
optional damage. They exercise every path of the verdict engine without installing a framework."""
from __future__ import annotations

import numpy as np

from adapters.base import Adapter, Observation
from reference import QUANTITIES, SECOND_ORDER, Convention, round_to, simulate


class OracleAdapter(Adapter):
    framework = "numpy"
    api = "reference.simulate rounded to the case dtype"
    convention = Convention()
    channel_axes = "any"
    quantities = frozenset(QUANTITIES)

    def __init__(self, name="fake.oracle", scale_running_var=1.0, raise_with=None, single="computes",
                 drop=(), nan_y=False):
        self.name = name
        self.scale_running_var = scale_running_var
        self.raise_with = raise_with
        self.single_element_training = single
        self.drop = set(drop)
        self.nan_y = nan_y

    def versions(self):
        return {"numpy": np.__version__}

    def run(self, p):
        if self.raise_with is not None:
            raise self.raise_with
        if p.reduced_count == 1 and "train" in p.modes and self.single_element_training == "raises":
            return Observation(raised="one value per channel")
        t = simulate(p, self.convention, second_order=bool(p.quantities & SECOND_ORDER))
        obs = Observation()
        for q in p.quantities:
            if q in t.not_applicable or q not in t.quantities:
                continue
            if q in self.drop:
                obs.unsupported[q] = "dropped by the fake"
                continue
            v = np.array(t[q], dtype=float)
            if q == "running_var":
                v = v * self.scale_running_var
            if q == "y" and self.nan_y:
                v.reshape(-1)[0] = np.nan
            dtype = "int64" if q == "num_batches_tracked" else p.dtype
            obs.put(q, v if q == "num_batches_tracked" else round_to(v, p.dtype), dtype)
        return obs

    def native_config(self, p):
        return {"momentum": p.momentum, "eps": p.eps}
