"""Test-only adapters, registered through BNCONFORM_EXTRA_ADAPTERS=tests.unit.fake_catalogue (see
conformance.catalogue), so the runner and the pytest plugin drive them in worker processes like real ones.

  fake.oracle          the oracle rounded to the case dtype: passes everything, needs no framework
  fake.wrong_var       running variance scaled by 1.5: its running_var checks fail
  fake.killer          the oracle, except that on the case named by BNCONFORM_FAKE_KILL it SIGKILLs its own
                       process, and on the case named by BNCONFORM_FAKE_HANG it sleeps forever
  fake.absent          needs a module that does not exist: "not installed", skipped with its install hint
  fake.family.oracle, fake.family.killer
                       the oracle and the killer sharing one worker process (process "fake-family"); each
                       writes the pid it was set up in to $BNCONFORM_FAKE_PIDS/<name>.<pid> when that is set
  fake.noisy           the oracle, logging like a framework: C-level lines on stderr and stdout at import and
                       on every case, and a FutureWarning per case
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


class FamilyMember(SelfKilling):
    """Kills or hangs on the named cases only when its name ends in "killer"; records where it was set up."""

    def setup(self):
        where = os.environ.get("BNCONFORM_FAKE_PIDS")
        if where:
            open(os.path.join(where, f"{self.name}.{os.getpid()}"), "w").close()

    def run(self, p):
        return super().run(p) if self.name.endswith("killer") else OracleAdapter.run(self, p)


class Noisy(OracleAdapter):
    NOISE = "I0000 00:00:1 port.cc:153] oneDNN custom operations are on (fake framework log line)"

    def setup(self):
        os.write(2, (self.NOISE + "\n").encode())  # below Python, as TensorFlow's C++ logging writes
        super().setup()

    def run(self, p):
        import warnings

        os.write(1, b"fake framework: a line on stdout\n")
        warnings.warn("fake.noisy: this argument is deprecated", FutureWarning, stacklevel=1)
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
    AdapterSpec("fake.noisy", HERE, "Noisy", ("numpy",), _NUMPY, "fake", {"name": "fake.noisy"}, False),
    AdapterSpec("fake.absent", HERE, "OracleAdapter", ("bnconform_no_such_framework",),
                "pip install bnconform-no-such-framework", "fake", {"name": "fake.absent"}, False),
    AdapterSpec("fake.family.oracle", HERE, "FamilyMember", ("numpy",), _NUMPY, "fake", {"name": "fake.family.oracle"},
                False, process="fake-family"),
    AdapterSpec("fake.family.killer", HERE, "FamilyMember", ("numpy",), _NUMPY, "fake", {"name": "fake.family.killer"},
                False, process="fake-family"),
    AdapterSpec("torch.nn.BatchNorm[misdeclared]", HERE, "MisdeclaredTorch", ("torch",),
                'pip install "bnconform[torch]"', "fake", {}, False),
)
