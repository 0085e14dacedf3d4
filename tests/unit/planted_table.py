"""Print the planted-bug table (bug, failing checks on the default tier, diagnoses named) as markdown:
`python -m tests.unit.planted_table [torch|numpy]`. The tests assert the same; this prints it for the notes."""
from __future__ import annotations

import sys
from collections import Counter

from conformance.core.cases import cases_for_tier
from conformance.explain.diagnose import diagnose
from conformance.core.engine import evaluate
from conformance.core.registry import Registry


def rows(kind: str):
    if kind == "torch":
        from .planted import BUGS, HandWrittenTorchBN as Impl
    else:
        from .planted_numpy import BUGS, HandWrittenNumpyBN as Impl
    registry = Registry.load()
    for bug in sorted(BUGS):
        adapter = Impl(bug)
        adapter.setup()
        failing = [r for case in cases_for_tier("default") for r in evaluate(adapter, case, registry,
                                                                              diagnose=diagnose)
                   if r["verdict"] == "fail"]
        names = Counter(str(r["diagnosis"]["hypothesis"]) for r in failing)
        yield kind, bug, len(failing), len({r["case"] for r in failing}), names


if __name__ == "__main__":
    print("| implementation | bug | failing checks (cases) | diagnosis named (checks) |\n|---|---|---|---|")
    for kind in sys.argv[1:] or ["torch", "numpy"]:
        for impl, bug, n, cases, names in rows(kind):
            named = ", ".join(f"{k} ({v})" for k, v in names.most_common())
            print(f"| {impl} | {bug} | {n} ({cases}) | {named} |", flush=True)
