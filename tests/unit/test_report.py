"""The HTML report, rendered in process from engine records: self-contained, deterministic, and showing what
each finding needs (diagnosis summary, histogram, tolerance, channel statistics, values side by side)."""
from __future__ import annotations

import base64
import gzip
import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.outputs import report, results, svg
from conformance.core.cases import case_by_id, cases_for_tier
from conformance.core.compare import HIST_EDGES
from conformance.core.engine import evaluate

from .fakes import OracleAdapter

SMALL_N = "f32-4x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"


@pytest.fixture(scope="module")
def records():
    out = []
    for case in cases_for_tier("smoke") + [case_by_id(SMALL_N)]:
        out += evaluate(OracleAdapter(name="fake.oracle"), case)
        out += evaluate(OracleAdapter(name="fake.wrong_var", scale_running_var=1.5), case)
    for r in out:
        if r["adapter"] == "fake.wrong_var" and r["quantity"] == "running_var" and r["verdict"] == "fail":
            r["diagnosis"] = {"summary": "running variance is 1.5 times the declared one", "fits": "scale 1.5"}
    return out


def _page(records, tables=(), metas=()):
    return report.render(results.ResultSet(sorted(records, key=lambda r: r["check_id"]), list(metas), list(tables)))


def _html(records, tables=(), metas=()):
    """The page with its lazily inserted parts (finding bodies, checks table, cross-framework cases) inlined."""
    return report.expand(_page(records, tables, metas))


def _data(html, name):
    m = re.search(rf'<script type="application/octet-stream" id="data-{name}">([^<]*)</script>', html)
    return report.unpack(m.group(1))


def test_self_contained(records):
    html = _html(records)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)
    assert "http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'" in html
    assert "<style>" in html and "<script>" in html


def test_findings_show_what_a_failure_needs(records):
    html = _html(records)
    assert html.count('class="finding v-fail"') == sum(1 for r in records if r["verdict"] == "fail")
    assert "running variance is 1.5 times the declared one" in html  # diagnosis summary
    assert 'class="hist"' in html and "bound at the worst element" in html
    assert "Tolerance provenance" in html and "safety" in html
    assert "normalized with var" in html  # the worst element's channel statistics


def test_output_is_deterministic_whatever_the_input_order(records):
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    assert _html(records) == _html(shuffled)


def test_analysis_tables_become_sections(records):
    tables = [{"id": "declared-vs-inferred", "title": "Declared vs inferred", "description": "knobs",
               "columns": ["adapter", "knob", "declared", "inferred"],
               "rows": [["fake.wrong_var", "running_var", "unbiased", "scaled <x>"], ["fake.oracle", "eps", 1e-5, None]]}]
    html = _html(records, tables)
    assert 'id="t-declared-vs-inferred"' in html and "Declared vs inferred" in html
    assert "scaled &lt;x&gt;" in html  # cells are escaped


def test_cross_framework_view_lists_oracle_and_each_adapter(records):
    html = _page(records)
    section = html[html.index('<section id="cross">'):html.index('<section id="runs">')]
    assert f'data-case="{SMALL_N}" data-lazy="cross"' in section  # filled from the page's data when chosen
    block = _data(html, "cross")[SMALL_N]
    assert "oracle" in block and "fake.oracle" in block and "fake.wrong_var" in block


def test_interrupted_run_and_not_installed_adapters_are_shown(records):
    meta = {"run_id": "20260101T000000-smoke-00000000", "status": "interrupted", "tier": "smoke",
            "adapters": [{"name": "fake.absent", "available": False, "missing": ["nothing"],
                          "install": "pip install nothing"}]}
    html = _html(records, metas=[meta])
    assert "did not complete" in html
    assert "pip install nothing" in html


def test_histogram_counts_and_marks():
    counts = [0] * (len(HIST_EDGES) - 1)
    counts[12] = 5
    out = str(svg.error_histogram(counts, allowed=1e-6, max_abs=1e-7, exact=3))
    assert out.startswith("<svg") and out.count('class="bar"') == 1 and "(3 exact)" in out
    assert 'class="allowed"' in out and 'class="worst"' in out
    assert svg.error_histogram(None) == ""


def test_write_is_atomic(records, tmp_path, monkeypatch):
    target = tmp_path / "index.html"
    target.write_text("previous report")

    def broken(*args):
        raise RuntimeError("template bug")

    monkeypatch.setattr(report, "render", broken)
    with pytest.raises(RuntimeError):
        report.write(results.ResultSet(records), target)
    assert target.read_text() == "previous report" and [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_nonfinite_values_render(records):
    recs = json.loads(json.dumps([results.sanitize(r) for r in records]))
    recs[0]["metrics"] = {**(recs[0]["metrics"] or {}), "ratio": "inf"}
    assert "inf" in _html(recs)


# -- the report leads with the why (issue 18)
def _records_with(records, changes):
    out = [dict(r) for r in records]
    for r in out:
        for (adapter, quantity), patch in changes.items():
            if r["adapter"] == adapter and r["quantity"] == quantity:
                r.update(patch)
    return out


def test_first_screen_names_the_key_findings_most_severe_first(records):
    reg = {"id": "planted-entry", "reason": "a registered planted deviation", "link": "https://example.invalid/1",
           "action": "xfail", "versions": "", "source": "planted.toml"}
    recs = _records_with(records, {})
    for r in recs:  # one of the passing adapter's checks becomes a registered deviation (xfail)
        if r["adapter"] == "fake.oracle" and r["quantity"] == "dx" and r["verdict"] == "pass":
            r.update(verdict="xfail", registry=reg)
    html = _page(recs)
    assert html.index('<section id="key">') < html.index('<section id="matrix">')
    key = html[html.index('<section id="key">'):html.index('<section id="matrix">')]
    fail_at, xfail_at = key.index("running variance is 1.5 times the declared one"), key.index("planted-entry")
    assert fail_at < xfail_at  # fail before xfail
    assert "error/bound up to" in key and 'href="https://example.invalid/1"' in key
    anchors = re.findall(r'href="#(c-[0-9a-f]+)"', key)
    listed = _data(html, "finding-list")  # the findings' list, inserted as the page is shown
    assert anchors and all(f'id="{a}"' in listed for a in anchors)  # each links to a finding
    # the findings themselves: fail, then xfail
    order = [m for m in re.findall(r'class="finding v-(\w+)"', listed)]
    assert order == sorted(order, key=report.FINDING_ORDER.index)


def test_finding_bodies_and_the_checks_table_are_inserted_when_opened(records):
    html = _page(records)
    assert '<div id="findings" data-lazy="finding-list">' in html and 'class="hist"' not in html
    assert '<tbody data-lazy="checks"></tbody>' in html
    listed = _data(html, "finding-list")
    assert '<div class="body" data-lazy="findings"></div>' in listed
    bodies = _data(html, "findings")
    assert set(bodies) == set(re.findall(r'<details class="finding v-\w+" id="(c-[0-9a-f]+)"', listed))
    assert all('class="hist"' in b for b in bodies.values() if "Metrics" in b)
    ran = [r for r in records if r["verdict"] != "skip"]
    assert len(_data(html, "checks")) == len(ran)  # skips are on the adapters' cards (the "skips" part)


@given(st.one_of(st.text(), st.lists(st.text(), max_size=6),
                 st.dictionaries(st.text(max_size=8), st.text(), max_size=6)))
@settings(max_examples=200, deadline=None)
def test_a_packed_part_unpacks_to_the_same_texts(texts):
    # lines end in "\n", "\r\n" or nothing, texts may be empty, repeat lines or hold only newlines
    assert report.unpack(report._pack(texts)) == texts


def test_a_packed_part_holds_each_distinct_line_once():
    repro = "\n".join(f"line {i}" for i in range(50))
    packed = report._pack({"a": repro + "\ny", "b": repro + "\ndx", "c": ""})
    data = json.loads(gzip.decompress(base64.b64decode(packed)))
    assert len(data["lines"]) == 53 and data["map"]["c"] == [52]


def test_an_interrupted_run_without_failures_is_labelled_incomplete(records):
    passing = [r for r in records if r["adapter"] == "fake.oracle"]
    meta = {"run_id": "r", "status": "interrupted", "tier": "smoke", "adapters": []}
    html = _page(passing, metas=[meta])
    summary = html[html.index('id="summary"'):html.index("</p>", html.index('id="summary"'))]
    assert "incomplete" in summary and "passing" not in summary
    assert "passing" in _page(passing, metas=[{**meta, "status": "complete"}])


def test_paths_are_shown_and_a_missing_path_is_eager(records):
    recs = _records_with(records, {("fake.wrong_var", "running_var"): {"path": "compile"}})
    html = _html(recs)
    assert "fake.wrong_var@compile" in html and "fake.oracle@eager" not in html


def test_running_statistics_per_step_and_ratio_distribution_are_plotted(records):
    html = _page(records)
    assert html.count('class="ratios"') == 2  # one per adapter card
    assert '<section id="steps">' in html and '<div class="plots" data-lazy="steps">' in html
    steps = "".join(_data(html, "steps"))
    assert "<polyline" in steps and "stroke-dasharray" in steps  # the oracle dashed, each framework solid
    # a multi-step case's running_var of both adapters: wrong_var's line leaves the oracle's
    assert "running_var[0] after each step" in steps and "fake.wrong_var (fail)" in steps


def test_ratio_distribution_marks_checks_outside_the_bound():
    out = svg.ratio_distribution([0.0, 1e-3, 0.5, 3.0, float("inf")])
    assert out.count('class="bad"') == 2 and out.count('class="ok"') == 3 and 'class="bound"' in out
    assert svg.ratio_distribution([]) == ""
