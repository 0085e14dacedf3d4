"""An execution path's checks can fail: a broken path of each kind (compiled, decomposed, exported, folded, mixed
precision) is caught on that path — with the path in the check id — and named by the diagnosis, while the same
adapter's eager path passes the same cases."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")

from conformance.core.cases import cases_for_tier  # noqa: E402
from conformance.explain.diagnose import diagnose  # noqa: E402
from conformance.core.engine import evaluate  # noqa: E402
from conformance.core.paths import cases_on  # noqa: E402

from .planted_paths import PATH_BUGS, PlantedPath  # noqa: E402

DIAGNOSIS = {
    "compiled_wrong_eps": "eps=0.001",
    "decomposition_detached_var": "no_grad_var",
    "export_momentum_unconverted": "momentum_flipped",
    "folded_with_batch_statistics": "eval_uses_batch_stats",
    "mixed_kernel_biased_running_var": "running_var_biased",
}


def _records(adapter, path, on=None):
    """Records of the path's cases (`on`: another path's cases, for the eager control on the same cases)."""
    return [r for case in cases_on(on or path, cases_for_tier("default"), "default")
            for r in evaluate(adapter, case, path=path, diagnose=diagnose)]


@pytest.mark.parametrize("bug", sorted(PATH_BUGS))
def test_broken_path_is_caught_on_its_path_and_named(bug):
    adapter = PlantedPath(bug)
    adapter.setup()
    path = PATH_BUGS[bug][0]
    records = _records(adapter, path)
    failing = [r for r in records if r["verdict"] == "fail"]
    assert failing, f"{bug} ({PATH_BUGS[bug][1]}) passed every check of path {path}"
    assert all(r["path"] == path and f"@{path}::" in r["check_id"] for r in failing)
    # Named on every failing float32/float64 check (and on the bfloat16 path's own cases). On float16 cases the
    # bug is caught but the whole-case fit does not always name it: with the flipped momentum the float16
    # inference output stays ~10x outside its bound under the right hypothesis (a gap of the 16-bit error model
    # under large weights on the new batch, left open in the closing note).
    named = [r for r in failing if r["dtype"] in ("float32", "float64") or path == "autocast-bf16"]
    assert named, "no float32/float64 check failed: nothing to name"
    misnamed = [f"{r['case']}/{r['quantity']}: {r['diagnosis']['summary']}" for r in named
                if r["diagnosis"]["hypothesis"] != DIAGNOSIS[bug]]
    assert not misnamed, "\n".join(misnamed)
    eager = [r for r in _records(adapter, "eager", on=path) if r["verdict"] in ("fail", "error")]
    assert not eager, f"the eager path of the same adapter must pass the same cases: {eager[0]['check_id']}"
