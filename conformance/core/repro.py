"""Runnable repro snippets: regenerate the case's inputs from its id, run the framework natively, and judge the
result with the suite's own bound and comparison (conformance.core.tolerance, conformance.core.compare), so the snippet
prints the verdict, the error, the bound and their ratio at the same worst element as the record.

The snippet is flush-left and self-contained: paste it into Python started in the repository root (or with
bnconform installed)."""
from __future__ import annotations

from reference import SECOND_ORDER


def snippet(adapter, case, problem, quantity: str) -> str | None:
    native = adapter.snippet(problem)
    if not native:
        return None
    second_order = bool(problem.quantities & SECOND_ORDER)
    dtype = adapter.expected_dtype(quantity, problem)
    return "\n".join([
        f"# bnconform repro: {adapter.name}, {quantity}, case {case.id}",
        "import numpy as np",
        "from adapters.base import Precision",
        "from conformance.core.cases import case_by_id",
        "from conformance.core.compare import compare",
        "from conformance.core.inputs import materialize",
        "from conformance.core.tolerance import bounds",
        "from reference import Convention, simulate",
        f"p = materialize(case_by_id({case.id!r}))",
        native.strip("\n"),
        f"convention = {adapter.convention!r}",
        f"trace = simulate(p, convention, second_order={second_order})",
        f"bound = bounds(p, trace, convention, {adapter.precision(problem)!r})[{quantity!r}]",
        "# values only: the record also compares dtypes and NaN/Inf patterns",
        f"c = compare({quantity!r}, trace[{quantity!r}], np.asarray(observed[{quantity!r}], dtype=np.float64), "
        f"bound.values, expected_dtype={dtype!r}, observed_dtype={dtype!r}, axis=p.axis)",
        "print('verdict:', 'pass' if c.ok else 'fail', '| error/bound', repr(c.ratio), '| max abs error', "
        "repr(c.max_abs))",
        "print('worst element (largest error/bound) at index', c.worst_index, '| observed', repr(c.observed), "
        "'| expected', repr(c.expected), '| error', repr(abs(c.observed - c.expected)), '| bound', repr(c.allowed))",
    ])
