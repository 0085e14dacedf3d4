"""Test-only adapters, registered through BNCONFORM_EXTRA_ADAPTERS=tests.unit.fake_catalogue (see
conformance.catalogue), so the runner and the pytest plugin drive them in worker processes like real ones.

  fake.oracle          the oracle rounded to the case dtype: passes everything, needs no framework
  fake.wrong_var       running variance scaled by 1.5: its running_var checks fail
  fake.killer          the oracle, except that on the case named by BNCONFORM_FAKE_KILL it SIGKILLs its own
                       process, and on the case named by BNCONFORM_FAKE_HANG it sleeps forever
  fake.absent          needs a module that does not exist: "not installed", skipped with its install hint
  torch.nn.BatchNorm[misdeclared]  the real torch module declared with a biased running variance: real
                       failures from a real framework
"""
from __future__ import annotations

import os
import signal
import time

from adapters import AdapterSpec
from adapters.torch_module import TorchModule

from .fakes import OracleAdapter

HERE = __name__


class SelfKilling(OracleAdapter):
    def run(self, p):
        if p.label and p.label == os.environ.get("BNCONFORM_FAKE_KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        if p.label and p.label == os.environ.get("BNCONFORM_FAKE_HANG"):
            while True:
                time.sleep(1)
        return super().run(p)


class MisdeclaredTorch(TorchModule):
    """The real module with a wrong declaration (biased running variance): its checks fail for real."""

    name = "torch.nn.BatchNorm[misdeclared]"
    convention = TorchModule.convention.with_(running_var="biased")


_NUMPY = "pip install numpy"
SPECS = (
    AdapterSpec("fake.oracle", HERE, "OracleAdapter", ("numpy",), _NUMPY, "fake", {"name": "fake.oracle"}, False),
    AdapterSpec("fake.wrong_var", HERE, "OracleAdapter", ("numpy",), _NUMPY, "fake",
                {"name": "fake.wrong_var", "scale_running_var": 1.5}, False),
    AdapterSpec("fake.killer", HERE, "SelfKilling", ("numpy",), _NUMPY, "fake", {"name": "fake.killer"}, False),
    AdapterSpec("fake.absent", HERE, "OracleAdapter", ("bnconform_no_such_framework",),
                "pip install bnconform-no-such-framework", "fake", {"name": "fake.absent"}, False),
    AdapterSpec("torch.nn.BatchNorm[misdeclared]", HERE, "MisdeclaredTorch", ("torch",),
                'pip install "bnconform[torch]"', "fake", {}, False),
)
