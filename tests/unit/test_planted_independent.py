"""Planted bugs written as independent NumPy implementations (tests/unit/planted_numpy.py): every one is
caught by the default tier and named by the diagnosis, which fits the whole case, on every failing check."""
from __future__ import annotations

import pytest

from conformance.core import regressions
from conformance.core.cases import cases_for_tier
from conformance.explain.diagnose import diagnose
from conformance.core.engine import evaluate
from conformance.core.registry import Registry

from .planted_numpy import BUGS, HandWrittenNumpyBN

# What names each bug: "+"-joined components; a diagnosis names the bug when each of its components is one
# of them (a case that shows only one of two effects names only that one). A component ending in "~" or ","
# is a prefix (an estimated value: "alpha~0.3"); "eps" is any eps, named or estimated (the bug's eps depends
# on the case's).
DIAGNOSIS = {
    "momentum_0.3": "alpha~0.3",
    "update_twice": "alpha~+step_weights~",  # 1 - (1 - w)^2: 0.19 for 0.1, 1, 0.75, 0.556 for 1/t
    "skip_first_update": "step_weights~0,+alpha~0",
    "forgot_eval": "forgot_eval",
    "broadcast_last_axis": "broadcast_last_axis",
    "broadcast_last_axis_ddof1": "broadcast_last_axis+normalize_unbiased",
    "sqrt_eps_outside": "outside_sqrt+eps",
    "float32_hyperparameters": "hyperparameters_float32",
    "float16_accumulation": "two_pass_var_float16",
    "fast_var_float32": "fast_var_float32+fast_clamped_var_float32",
    "bessel_n_plus_1": "running_var_factor~",
    "stats_bfloat16": "stats_bfloat16",
    "debiased_running": "debiased_ema",
    "init_from_first_batch": "first_step_replace",
    "train_uses_running": "train_normalizer_running",
    "flipped_and_biased": "momentum_flipped+running_var_biased",
    "keras_eps_and_ddof1": "eps=0.001+eps~0.001+normalize_unbiased",
    "cumulative_as_ema": "ema_instead_of_cumulative+alpha~0.1",
}
REGISTRY = Registry.load()
TABLE: dict[str, tuple[int, set[str]]] = {}


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    print("\n| bug | failing checks | diagnosis named |\n|---|---|---|")
    for bug, (n, names) in sorted(TABLE.items()):
        print(f"| {bug} | {n} | {', '.join(sorted(names))} |")


def _component_matches(found: str, wanted: str) -> bool:
    if wanted == "eps":
        return found.startswith(("eps=", "eps~"))
    return found == wanted or (wanted.endswith(("~", ",")) and found.startswith(wanted))


def names_bug(diagnosis: dict, wanted: str) -> bool:
    """The diagnosis (or an explanation the case cannot tell from it) names the bug."""
    pattern = wanted.split("+")
    for name in [diagnosis.get("hypothesis")] + list(diagnosis.get("indistinguishable") or []):
        if name and all(any(_component_matches(c, w) for w in pattern) for c in name.split("+")):
            return True
    return False


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_independent_planted_bug_is_caught_and_named(bug):
    adapter = HandWrittenNumpyBN(bug)
    adapter.setup()
    records = [r for case in cases_for_tier("default") for r in evaluate(adapter, case, REGISTRY, diagnose=diagnose)]
    failing = [r for r in records if r["verdict"] == "fail"]
    assert failing, f"planted bug {bug!r} ({BUGS[bug]}) passed the whole default tier"
    TABLE[bug] = (len(failing), {str(r["diagnosis"]["hypothesis"]) for r in failing})
    # named on the designed cases; the corpus's degenerate replays (n = 2, subnormal inputs, |x| ~ 1e-3 at
    # momentum 0.99) must catch it, but one story need not fit there (as in test_planted_bugs)
    corpus = {reg.case.id for reg in regressions.load()}
    misnamed = [f"{r['case']}/{r['quantity']}: {r['diagnosis']['summary']}" for r in failing
                if not names_bug(r["diagnosis"], DIAGNOSIS[bug]) and r["case"] not in corpus]
    assert not misnamed, "\n".join(misnamed[:6])
    assert any(r["case"] not in corpus for r in failing), f"{bug!r} caught only on corpus cases"


def test_independent_control_passes():
    adapter = HandWrittenNumpyBN(None)
    adapter.setup()
    bad = [f"{r['case']}/{r['quantity']}: {r['verdict']} {r['reason'][:120]}" for case in cases_for_tier("default")
           for r in evaluate(adapter, case, REGISTRY) if r["verdict"] in ("fail", "error", "xpass")]
    assert not bad, "\n".join(bad)
