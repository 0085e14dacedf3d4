"""Adapters for the fuzzer's own tests (registered through BNCONFORM_EXTRA_ADAPTERS=tests.unit.fuzz_fakes).

  fake.size_bug   the oracle, except that from THRESHOLD elements per channel on (a kernel switching to
                  another code path for large reductions, as real kernels do) its output is off by 1e-3
                  relative: a bug no case below the threshold can see
"""
from __future__ import annotations

from adapters import AdapterSpec

from .fakes import OracleAdapter

HERE = __name__
THRESHOLD = 1000  # elements reduced per channel


class SizeThresholdBug(OracleAdapter):
    def run(self, p):
        obs = super().run(p)
        if p.reduced_count >= THRESHOLD and "y" in obs.values:
            obs.values["y"] = obs.values["y"] * (1.0 + 1e-3)
        return obs


SPECS = (
    AdapterSpec("fake.size_bug", HERE, "SizeThresholdBug", ("numpy",), "pip install numpy", "fake",
                {"name": "fake.size_bug"}, False),
)
