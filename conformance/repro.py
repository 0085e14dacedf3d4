"""Runnable repro snippets: regenerate the case's inputs from its id, run the framework natively, compare."""
from __future__ import annotations


def snippet(adapter, case, problem, quantity: str) -> str | None:
    native = adapter.snippet(problem)
    if not native:
        return None
    conv = repr(adapter.convention)
    return "\n".join([
        f"# bnconform repro: {adapter.name}, {quantity}, case {case.id}",
        "import numpy as np",
        "from conformance.cases import case_by_id",
        "from conformance.inputs import materialize",
        "from reference import Convention, simulate",
        f"p = materialize(case_by_id({case.id!r}))",
        native,
        f"expected = simulate(p, {conv}).quantities[{quantity!r}]",
        f"err = np.abs(observed[{quantity!r}] - expected)",
        f"print({quantity!r}, 'max abs error', err.max(), 'at', np.unravel_index(err.argmax(), err.shape))",
    ])
