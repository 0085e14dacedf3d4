"""The fuzz tier: `bnconform fuzz` over the selected adapters as a test, failing when it finds something new.

Runs only when BNCONFORM_FUZZ_BUDGET (seconds) is set (`tox -e fuzz` sets it; CI does not run it).
BNCONFORM_FRAMEWORKS selects the adapters (default: every core adapter), BNCONFORM_FUZZ_SEED the seed
(default: random, printed). Minimal failing cases are written to conformance/corpus/fuzz/.
"""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.fuzz


def test_fuzz_finds_nothing_new(tmp_path):
    budget = os.environ.get("BNCONFORM_FUZZ_BUDGET")
    if not budget:
        pytest.skip("the fuzz tier runs when BNCONFORM_FUZZ_BUDGET is set (tox -e fuzz)")
    from conformance.execution.fuzz import FuzzOptions, run

    seed = os.environ.get("BNCONFORM_FUZZ_SEED")
    lines: list[str] = []
    opts = FuzzOptions(frameworks=os.environ.get("BNCONFORM_FRAMEWORKS", "all"), budget=float(budget),
                       seed=int(seed) if seed else None, out=os.environ.get("BNCONFORM_FUZZ_OUT", "reports"))
    status = run(opts, print_=lambda line: (lines.append(line), print(line)))
    assert status == 0, "bnconform fuzz found new failures:\n" + "\n".join(lines)
