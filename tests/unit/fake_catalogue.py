"""Test-only adapters, registered through BNCONFORM_EXTRA_ADAPTERS=tests.unit.fake_catalogue (see
conformance.core.catalogue), so the runner and the pytest plugin drive them in worker processes like real ones.

  fake.oracle          the oracle rounded to the case dtype: passes everything, needs no framework
  fake.wrong_var       running variance scaled by 1.5: its running_var checks fail
  fake.killer          the oracle, except that on the case named by BNCONFORM_FAKE_KILL it SIGKILLs its own
                       process, and on the case named by BNCONFORM_FAKE_HANG it sleeps forever
  fake.absent          needs a module that does not exist: "not installed", skipped with its install hint
  fake.family.oracle, fake.family.killer
                       the oracle and the killer sharing one worker process (process "fake-family"); each
                       writes the pid it was set up in to $BNCONFORM_FAKE_PIDS/<name>.<pid> when that is set
  fake.slow            the oracle, taking BNCONFORM_FAKE_SLEEP seconds (default 0.2) per case, like a framework
                       that compiles every case; writes its pids as fake.family.* does
  fake.noisy           the oracle, logging like a framework: C-level lines on stderr and stdout at import and
                       on every case, and a FutureWarning per case
  torch.nn.BatchNorm[misdeclared]  the real torch module declared with a biased running variance: real
                       failures from a real framework
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from adapters import AdapterSpec
from adapters.base import Observation
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


class Slow(FamilyMember):
    def run(self, p):
        time.sleep(float(os.environ.get("BNCONFORM_FAKE_SLEEP", "0.2")))
        return OracleAdapter.run(self, p)


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
    AdapterSpec("fake.slow", HERE, "Slow", ("numpy",), _NUMPY, "fake", {"name": "fake.slow"}, False),
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


# -- Faulty adapters: each one does one thing wrong (tests/unit/test_faults.py drives them all in one run).
# BNCONFORM_FAKE_PIDS names a directory where every worker and every process a fault forks leaves its pid, so
# the test can check that nothing is left running after the run.
def _note_pid(tag: str) -> None:
    where = os.environ.get("BNCONFORM_FAKE_PIDS")
    if where:
        with open(os.path.join(where, str(os.getpid())), "w") as f:
            f.write(tag)


def _fork_sleeper(tag: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child: outlives its parent unless someone kills it; holds the worker's pipe open
        _note_pid(tag + " (forked child)")
        while True:
            time.sleep(1)
    return pid


class Faulty(OracleAdapter):
    """The oracle with one fault, named by `fault` (see FAULTS)."""

    def __init__(self, name="fake.fault", fault="", **kwargs):
        super().__init__(name=name, **kwargs)
        self.fault = fault

    def setup(self):
        _note_pid(self.fault)
        f = self.fault
        if f == "setup_raises":
            raise RuntimeError("cannot initialise the fake framework")
        if f == "setup_hangs":
            while True:
                time.sleep(1)
        if f == "setup_exits":
            os._exit(3)
        if f == "setup_sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if f == "device_object":
            self.device = object()

    def versions(self):
        f = self.fault
        if f == "versions_not_dict":
            return 5
        if f == "versions_object":
            return {"numpy": object()}
        if f == "versions_number":
            return {"numpy": 1.5}
        return super().versions()

    def unsupported(self, p):
        if self.fault == "unsupported_raises":
            raise LookupError("unsupported() itself failed")
        if self.fault == "unsupported_not_text":
            return 5
        return super().unsupported(p)

    def run(self, p):  # noqa: C901  one branch per fault, on purpose
        f = self.fault
        if f == "raise_huge":
            raise ValueError("x" * 20_000_000)
        if f == "raise_escapes":
            raise ValueError("\x1b]0;owned\x07\x1b[31mred[/] [bold]markup\x1b[0m \x1b]8;;javascript:alert(1)\x1b\\link")
        if f == "raise_surrogate":
            raise ValueError("bad bytes \udcff\udcfe")
        if f == "raise_keyboard_interrupt":
            raise KeyboardInterrupt
        if f == "raise_system_exit":
            raise SystemExit(3)
        if f == "exit_zero":
            os._exit(0)
        if f == "segfault":
            import ctypes

            ctypes.string_at(0)
        if f in ("hang", "fork_then_hang"):
            if f == "fork_then_hang":
                _fork_sleeper(f)
            while True:
                time.sleep(1)
        if f == "fork_then_crash":
            _fork_sleeper(f)
            os.kill(os.getpid(), signal.SIGKILL)
        if f == "returns_none":
            return None
        obs = super().run(p)
        if f == "fork_and_leave":
            _fork_sleeper(f)
        if f == "no_quantities":
            return Observation()
        if f == "drops_y":
            del obs.values["y"]
        if f == "nan_everywhere":
            obs.values = {q: v * np.nan for q, v in obs.values.items()}
        if f == "inf_running_var":
            obs.values["running_var"] = obs.values["running_var"] + np.inf
        if f == "wrong_shape_y":
            obs.values["y"] = obs.values["y"].reshape(-1)
        if f == "scalar_running_mean":
            obs.values["running_mean"] = np.float64(0.0)
        if f == "too_few_channels":
            obs.values["dgamma"] = obs.values["dgamma"][..., :1]
        if f == "not_numbers":
            obs.values["y"] = "abc"
        if f == "dtype_not_named":
            obs.dtypes["y"] = 5
        if f == "dtype_missing":
            del obs.dtypes["y"]
        if f == "device_number":
            obs.facts["device"] = 5
        if f == "unpicklable_fact":
            obs.facts["device"] = lambda: "cpu"
        if f == "raised_not_text":
            return Observation(raised=5)
        return obs


FAULTS = (
    "setup_raises", "setup_hangs", "setup_exits", "setup_sigkill", "device_object", "versions_not_dict",
    "versions_object", "versions_number", "unsupported_raises", "unsupported_not_text", "raise_huge",
    "raise_escapes", "raise_surrogate", "raise_keyboard_interrupt", "raise_system_exit", "exit_zero", "segfault",
    "hang", "fork_then_hang", "fork_then_crash", "fork_and_leave", "returns_none", "no_quantities", "drops_y", "nan_everywhere",
    "inf_running_var", "wrong_shape_y", "scalar_running_mean", "too_few_channels", "not_numbers",
    "dtype_not_named", "dtype_missing", "device_number", "unpicklable_fact", "raised_not_text",
)
SPECS += tuple(AdapterSpec(f"fake.fault.{f}", HERE, "Faulty", ("numpy",), _NUMPY, "fake",
                           {"name": f"fake.fault.{f}", "fault": f}, False) for f in FAULTS)
