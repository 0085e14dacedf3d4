"""Run the bnconform command line in a subprocess, as a user would, with the test-only adapters of
tests/unit/fake_catalogue.py selectable (BNCONFORM_EXTRA_ADAPTERS)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKES = "tests.unit.fake_catalogue"


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("BNCONFORM_")}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["BNCONFORM_EXTRA_ADAPTERS"] = FAKES
    e.update(extra)
    return e


def bnconform(*args, cwd=None, timeout: float = 300, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformance", *map(str, args)], cwd=cwd or ROOT,
                          env=env(**extra), capture_output=True, text=True, timeout=timeout)


def run_dir(out: Path) -> Path:
    """The single run directory under OUT/runs/."""
    (d,) = sorted((out / "runs").iterdir())
    return d
