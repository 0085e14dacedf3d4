"""Test support for the exchange protocol: a runner written in Python that answers a case with the oracle
under a chosen convention (what a correct outside runtime returns), so the import path is tested without Node
or MATLAB. Its observations are marked as a stand-in, like every test double of a runtime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conformance.execution import exchange as ex
from conformance.core.cases import case_by_id
from conformance.core.engine import applicable
from conformance.core.inputs import materialize
from reference import SECOND_ORDER, round_to, simulate

GRADS = ("dx", "dgamma", "dbeta", "d2x", "d2gamma")


def oracle_runner(folder: Path, adapter: str, convention, dtype_out: str = "float32", mutate=None) -> None:
    """Write observations/<adapter>/<case>.json for every case of the folder's manifest."""
    manifest = json.loads((folder / ex.MANIFEST).read_text())
    for entry in manifest["cases"]:
        case = case_by_id(entry["id"])
        p = materialize(case)
        trace = simulate(p, convention, second_order=bool(p.quantities & SECOND_ORDER))
        values, unsupported = {}, {}
        for q in applicable(case):
            if q in ("batch_mean", "batch_var", "num_batches_tracked"):
                unsupported[q] = "not exposed"
                continue
            arr = round_to(np.asarray(trace[q], dtype=np.float64), dtype_out)
            if mutate is not None:
                arr = mutate(q, arr)
            values[q] = ex.encode_array(arr, dtype_out)
        doc = {"format": ex.OBSERVATION_FORMAT, "version": ex.VERSION, "case_id": case.id, "adapter": adapter,
               "case_sha256": entry["sha256"],
               "runtime": {"name": "python", "version": "1.0", "standin": "oracle"},
               "skip": None, "raised": None, "values": values, "unsupported": unsupported}
        path = folder / ex.OBSERVATIONS / adapter / f"{case.id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
