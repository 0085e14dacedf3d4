"""benchmarks/harness_speed.py: a case id it does not measure gets one message naming the ones it does, no
traceback; its selection holds the 2000-step corpus case, the largest harness cost of a default run."""
from __future__ import annotations

import subprocess
import sys

from .clirun import ROOT, env

MANY_STEPS = "f16-1x776x1-ax1-T1999E-defaults-loc-1000-sc1000-s557"


def test_an_unknown_case_gets_one_message_listing_the_measured_ones():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "harness_speed.py"), "--cases", "f32-no-such"],
                          capture_output=True, text=True, cwd=ROOT, env=env(), timeout=120)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("harness_speed: not a realistic default-tier case: f32-no-such")
    assert MANY_STEPS in proc.stderr and "f32-8x64x56x56" in proc.stderr
    assert "Traceback" not in proc.stderr
