"""A JAX execution path's checks can fail: a broken path of each kind (op by op, vmapped ensemble, synchronized
across devices) is caught on that path, with the path in the check id, and named by the diagnosis where a
declared-convention hypothesis describes it; the same adapter's jitted path passes the same cases."""
from __future__ import annotations

import pytest

pytest.importorskip("flax")

from conformance.core.cases import cases_for_tier  # noqa: E402
from conformance.explain.diagnose import diagnose  # noqa: E402
from conformance.core.engine import evaluate  # noqa: E402
from conformance.core.paths import cases_on  # noqa: E402

from .planted_jax_paths import JAX_PATH_BUGS, PlantedJaxPath  # noqa: E402

# What the diagnosis names; None where no hypothesis of the convention space describes the bug (a mis-indexed
# ensemble or device-local statistics are not a different BatchNorm convention): caught, reported unexplained.
DIAGNOSIS = {"nojit_wrong_eps": "eps=0.001", "vmap_reads_other_copy": None, "sync_statistics_stay_local": None,
             "sync_backward_sums_stay_local": None, "sync_parameter_gradients_of_one_device": None,
             "sync_averages_device_variances": None}
# What must fail where the bug is in how the devices' statistics are combined.
MUST_FAIL = {"sync_averages_device_variances": {"y", "running_var"}}
# Bugs in the gradients only: what may fail (at least one of them must); every other quantity still passes.
GRADIENTS_ONLY = {"sync_backward_sums_stay_local": {"dx", "d2x", "d2gamma"},
                  "sync_parameter_gradients_of_one_device": {"dgamma", "dbeta", "d2gamma"}}


def _cases(path):
    return [c for c in cases_on(path, cases_for_tier("default"), "default", sharded=path == "sync")
            if not (c.shards and len(set(c.shards)) > 1)]  # unequal shards: flax's own registered deviation


def _records(adapter, path, cases):
    return [r for case in cases for r in evaluate(adapter, case, path=path, diagnose=diagnose)]


@pytest.mark.parametrize("bug", sorted(JAX_PATH_BUGS))
def test_broken_jax_path_is_caught_on_its_path(bug):
    adapter = PlantedJaxPath(bug)
    adapter.setup()
    path = JAX_PATH_BUGS[bug][0]
    cases = _cases(path)
    if bug in GRADIENTS_ONLY or bug in MUST_FAIL:  # training last: gradients through the batch statistics
        cases = [c for c in cases if c.modes[-1] == "train"]
    records = _records(adapter, path, cases)
    assert any(r["verdict"] == "pass" for r in records), f"path {path} ran nothing"
    failing = [r for r in records if r["verdict"] == "fail"]
    assert failing, f"{bug} ({JAX_PATH_BUGS[bug][1]}) passed every check of path {path}"
    assert all(r["path"] == path and f"@{path}::" in r["check_id"] for r in failing)
    if bug in GRADIENTS_ONLY:
        failed = {r["quantity"] for r in failing}
        assert failed <= GRADIENTS_ONLY[bug], failed  # the forward quantities still pass
        assert failed & GRADIENTS_ONLY[bug], failed
    if bug in MUST_FAIL:
        assert MUST_FAIL[bug] <= {r["quantity"] for r in failing}, {r["quantity"] for r in failing}
    if DIAGNOSIS[bug]:
        misnamed = [f"{r['case']}/{r['quantity']}: {r['diagnosis']['summary']}" for r in failing
                    if r["diagnosis"]["hypothesis"] != DIAGNOSIS[bug]]
        assert not misnamed, "\n".join(misnamed)
    eager = [r for r in _records(adapter, "eager", cases) if r["verdict"] in ("fail", "error")]
    assert not eager, f"the jitted path of the same adapter must pass: {eager[0]['check_id']}"
