"""The suite can fail: every planted bug is caught by the default tier; the control and the real torch
adapters pass it. Which cases catch which bug is printed (and kept in the closing notes)."""
from __future__ import annotations

from collections import defaultdict

import pytest

pytest.importorskip("torch")

from adapters import load  # noqa: E402
from conformance.cases import cases_for_tier  # noqa: E402
from conformance.engine import evaluate  # noqa: E402
from conformance.registry import Registry  # noqa: E402

from .planted import BUGS, HandWrittenTorchBN  # noqa: E402

REGISTRY = Registry.load()
caught_by: dict[str, list[str]] = defaultdict(list)


def _verdicts(adapter):
    adapter.setup()
    out = []
    for case in cases_for_tier("default"):
        out += evaluate(adapter, case, REGISTRY)
    return out


@pytest.fixture(scope="module", autouse=True)
def print_catch_table():
    yield
    print("\nplanted bug -> catching checks (case/quantity), first three:")
    for bug, hits in sorted(caught_by.items()):
        print(f"  {bug:28s} {len(hits):4d} failing checks, e.g. {'; '.join(hits[:3])}")


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_bug_is_caught(bug):
    records = _verdicts(HandWrittenTorchBN(bug))
    failing = [f"{r['case']}/{r['quantity']}" for r in records if r["verdict"] == "fail"]
    caught_by[bug] = failing
    assert failing, f"planted bug {bug!r} ({BUGS[bug]}) passed the whole default tier"


@pytest.mark.parametrize("name", ["control", "torch.nn.BatchNorm", "torch.nn.functional.batch_norm"])
def test_correct_implementations_pass(name):
    adapter = HandWrittenTorchBN(None) if name == "control" else load(name)
    bad = [f"{r['case']}/{r['quantity']}: {r['verdict']} {r['reason'][:120]}" for r in _verdicts(adapter)
           if r["verdict"] in ("fail", "error", "xpass")]
    assert not bad, "\n".join(bad)
