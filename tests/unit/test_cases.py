"""The case table: ids stable and unique, tiers nested, a discriminating case for every knob."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance.cli import TIERS_HELP
from conformance.core.cases import CASES, TIERS, Case, _modes_code, cases_for_tier, discriminating_cases, parse_modes

# Knobs of reference.Convention and the case that separates their settings in the default tier.
REQUIRED_KNOBS = {
    "momentum_form", "running_var", "normalize_var", "averaging", "cumulative_offset", "debias",
    "first_step", "train_normalizer", "eps_placement", "eps", "variance", "stats_dtype",
}


def test_ids_are_stable():
    """Ids name results, registry entries and diffs across versions: they must not drift silently."""
    assert Case((4, 3, 2, 3), "float32", ("train", "train", "eval"), init_stats="random").id == \
        "f32-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"
    assert Case((8, 4), "float64", ("train",) * 3 + ("eval",), momentum=None, affine=False).id == \
        "f64-8x4-ax1-T3E-acum-eps1e-05-noaffine-s0"
    assert Case((4, 2, 3, 3), "bfloat16", ("eval",), axis=-1, defaults=True).id == \
        "bf16-4x2x3x3-ax-1-E-defaults-s0"


def test_ids_unique_and_index_the_table():
    assert len({c.id for c in CASES.values()}) == len(CASES)
    assert all(CASES[c.id] is c for c in CASES.values())


@pytest.mark.parametrize("modes", [("train",), ("eval",), ("train",) * 60 + ("eval",),
                                   ("eval", "train", "eval"), ("train", "train")])
def test_modes_code_round_trips(modes):
    assert parse_modes(_modes_code(modes)) == modes


def test_tiers_nest():
    sizes = [len(cases_for_tier(t)) for t in TIERS]
    assert sizes == sorted(sizes) and sizes[0] >= 2
    smoke = {c.id for c in cases_for_tier("smoke")}
    assert smoke <= {c.id for c in cases_for_tier("default")}
    with pytest.raises(ValueError, match="unknown tier"):
        cases_for_tier("weekly")


def test_the_readmes_tier_table_counts_the_cases_each_tier_has():
    """The README's Tiers table said 38 default cases for days after the corpus and the realistic shapes made
    it 90: what it states is held to the table."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    stated = {tier: int(n) for tier, n in re.findall(r"^\| `(\w+)` \| (\d+) cases", readme, flags=re.M)}
    actual = {t: len(cases_for_tier(t)) for t in TIERS}
    assert stated == actual, f"README.md, Tiers: the tiers have {actual} cases (a corpus file adds one)"
    assert f"smoke ({actual['smoke']} cases" in TIERS_HELP  # `bnconform --help` and `run --help` say it too


def test_every_knob_has_a_discriminating_case_in_the_default_tier():
    found = discriminating_cases()
    assert REQUIRED_KNOBS <= set(found), REQUIRED_KNOBS - set(found)
    default = {c.id for c in cases_for_tier("default")}
    assert all(c.id in default for c in found.values())


def test_default_tier_covers_dtypes_ranks_axes_and_modes():
    cases = cases_for_tier("default")
    assert {c.dtype for c in cases} == {"float64", "float32", "float16", "bfloat16"}
    assert {c.ndim for c in cases} == {2, 3, 4, 5}
    assert {c.axis_index == c.ndim - 1 for c in cases if c.ndim > 2} == {True, False}
    assert any(c.modes[-1] == "train" for c in cases) and any(c.modes[-1] == "eval" for c in cases)
    assert any(c.momentum is None for c in cases) and any(c.defaults for c in cases)
    assert any(not c.affine for c in cases) and any(not c.track_running_stats for c in cases)
    assert any(c.memory_format == "channels_last" for c in cases)
    assert any(c.reduced_count == 1 for c in cases)
