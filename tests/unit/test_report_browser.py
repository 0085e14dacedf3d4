"""The report of a real small run, opened in a real browser (headless Chromium driven by playwright).

The run: the torch adapters on the smoke tier, plus a misdeclared torch adapter whose checks really fail (one
of them registered: xfail), a fake adapter whose worker is SIGKILLed on one case (errors) and one that is not
installed (install hint), and an analysis.json with an extra table. Without torch the fake adapters stand in.
The test asserts on the DOM (matrix, a failing check expands, filters, sorting, the cross-framework picker,
no network request, no script error) and saves screenshots under reports/screenshots/.

Without chromium or playwright the browser test is skipped, unless BNCONFORM_REQUIRE_BROWSER=1 (set by
.ci/run), which turns the skip into a failure.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from conformance.core.cases import cases_for_tier

from .clirun import ROOT, bnconform, run_dir
from .test_results import validate_dir

pytestmark = pytest.mark.xdist_group("report-browser")  # one small run (module fixture) per session, not per worker
SMOKE = cases_for_tier("smoke")
HAVE_TORCH = importlib.util.find_spec("torch") is not None
FAILING = "torch.nn.BatchNorm[misdeclared]" if HAVE_TORCH else "fake.wrong_var"
SELECTION = ",".join((["torch", FAILING] if HAVE_TORCH else ["fake.oracle", FAILING]) + ["fake.killer", "fake.absent"])
SCREENSHOTS = ROOT / "reports" / "screenshots"
CHROMIUM = os.environ.get("BNCONFORM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ANALYSIS = {"schema": 1, "tables": [{
    "id": "defaults-hazard", "title": "Defaults hazard (example table)",
    "description": "An analysis.json table, rendered as its own section.",
    "columns": ["adapter", "momentum (weight on new)", "eps"],
    "rows": [["torch.nn.BatchNorm", 0.1, 1e-5], ["keras (example)", 0.01, 1e-3]]}]}


def _browser():
    why = None
    if importlib.util.find_spec("playwright") is None:
        why = "the playwright package is not installed (pip install playwright)"
    elif not CHROMIUM:
        why = "no chromium browser found (apt-get install chromium, or set BNCONFORM_CHROMIUM)"
    if why:
        if os.environ.get("BNCONFORM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BNCONFORM_REQUIRE_BROWSER=1, but {why}", pytrace=False)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    return sync_playwright


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report-run")
    reg = out / "registry.toml"
    glob = FAILING.replace("[", "?").replace("]", "?")  # registry adapters are globs: [ ] is a class there
    reg.write_text(f'[[deviation]]\nid = "planted-xfail"\nadapter = "{glob}"\ncases = "{SMOKE[0].id}"\n'
                   f'quantities = "running_var"\nreason = "planted: registered to show an xfail"\n'
                   f'link = "https://example.invalid/issue/1"\naction = "xfail"\n')
    r = bnconform("run", "--frameworks", SELECTION, "--tier", "smoke", "--out", out, "--registry", reg,
                  BNCONFORM_FAKE_KILL=SMOKE[1].id, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    d = run_dir(out)
    (d / "analysis.json").write_text(json.dumps(ANALYSIS))
    rep = bnconform("report", d, "--out", out / "index.html")
    assert rep.returncode == 0, rep.stderr
    return out, d


def test_small_run_results_validate(small_run):
    recs = validate_dir(small_run[1])
    verdicts = {(x["adapter"], x["verdict"]) for x in recs}
    assert {(FAILING, "fail"), (FAILING, "xfail"), ("fake.killer", "error")} <= verdicts


@pytest.fixture(scope="module")
def sync_playwright():
    return _browser()  # before small_run: a missing browser skips without running the suite first


def test_report_in_chromium(sync_playwright, small_run):
    out, _ = small_run
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda req: requests.append(req.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto((out / "index.html").as_uri())
            _check_page(page, out)
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.startswith(("file:", "data:", "blob:")) for u in requests), requests


def test_report_at_800px_and_anchors_below_the_sticky_bar(sync_playwright, small_run):
    """A narrow window: nothing widens the page (wide tables scroll in their box), and a link to a finding
    lands below the sticky filter bar, opened and filled."""
    out, _ = small_run
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "index.html").as_uri())
            page.locator("#findings details.finding").first.wait_for()
            page.locator("#all-checks > summary").click()
            # a locator, not wait_for_function: a string predicate that is polled is eval'd in the page, which
            # the report's Content-Security-Policy (no 'unsafe-eval') refuses whenever the rows come late
            page.locator("#checks-table tbody tr").first.wait_for(state="attached")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            page.screenshot(path=str(SCREENSHOTS / "report-800-top.png"))
            target = page.locator("#key table.key a[href^='#c-']").first.get_attribute("href")
            page.locator(f"#key table.key a[href='{target}']").first.click()
            finding = page.locator(target)
            finding.locator(".content").wait_for()
            page.wait_for_timeout(200)
            assert finding.evaluate("e => e.open")
            bar = page.locator("#check-filters").bounding_box()
            box = finding.bounding_box()
            assert box["y"] >= bar["y"] + bar["height"] - 1, (box, bar)
            page.screenshot(path=str(SCREENSHOTS / "report-800-finding.png"))
        finally:
            browser.close()
    assert not errors, errors


def _visible(page, selector):
    return [e for e in page.locator(selector).all() if e.is_visible()]


def _check_page(page, out):
    page.locator("#findings details.finding").first.wait_for()  # the list is read from the page's data
    # -- the first screen leads with the why: the key findings, most severe first, each linking to a check
    key = page.locator("#key")
    assert key.is_visible() and key.bounding_box()["y"] < 1000  # within the first screen at 1400 x 1000
    first_key = page.locator("#key table.key tr").first
    assert "fail" in first_key.locator(".badge").inner_text() and FAILING in first_key.inner_text()
    assert "error/bound up to" in first_key.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "report-top.png"))

    # -- summary and matrix
    assert "failing" in page.locator("#summary").inner_text()
    rows = page.locator("#matrix-table tbody tr")
    names = {r.get_attribute("data-adapter") for r in rows.all()}
    assert {FAILING, "fake.killer", "fake.absent"} <= names
    assert page.locator("#matrix-table td.cell.v-fail").count() > 0
    assert page.locator("#matrix-table td.cell.v-error").count() > 0
    assert "pip install bnconform-no-such-framework" in page.locator("#matrix-table tr.missing").first.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)

    # -- a failing check expands
    finding = page.locator(f'details.finding.v-fail[data-adapter="{FAILING}"]').first
    assert finding.is_visible() and not finding.evaluate("e => e.open")
    assert not finding.locator("svg.hist").is_visible()
    finding.locator(":scope > summary").click()
    assert finding.evaluate("e => e.open")
    finding.locator("svg.hist").wait_for()  # the body is inserted from the page's compressed data
    assert finding.locator("svg.hist").is_visible()
    body = finding.inner_text()
    assert "Worst element" in body.title() or "WORST ELEMENT" in body
    assert "Tolerance provenance".upper() in body.upper() and "safety" in body
    if HAVE_TORCH:
        assert finding.locator("pre.code").is_visible()
        repro = finding.locator("pre.code").inner_text()  # rebuilt in the page from the part's line pool
        assert repro.startswith("# bnconform repro: ") and "\nimport numpy as np\n" in repro
        assert "import torch" in repro
    finding.screenshot(path=str(SCREENSHOTS / "finding.png"))

    # -- verdict filter hides and shows it again
    fail_box = page.locator('#check-filters input[value="fail"]')
    fail_box.uncheck()
    assert not finding.is_visible()
    assert not _visible(page, "details.finding.v-fail")
    fail_box.check()
    assert finding.is_visible()

    # -- adapter filter: only the killed adapter's errors remain
    page.select_option("#f-adapter", "fake.killer")
    shown = _visible(page, "details.finding")
    assert shown and {e.get_attribute("data-adapter") for e in shown} == {"fake.killer"}
    assert {e.get_attribute("data-verdict") for e in shown} == {"error"}
    assert "SIGKILL" in shown[0].locator(":scope > summary").inner_text()
    page.select_option("#f-adapter", "")

    # -- text filter on the case id
    page.fill("#f-text", SMOKE[0].id)
    assert all(SMOKE[0].id in e.locator(":scope > summary").inner_text() for e in _visible(page, "details.finding"))
    page.fill("#f-text", "")

    # -- matrix: text filter, and sorting by the 'all' column puts the worst row first
    page.fill("#matrix-filter", "killer")
    assert {r.get_attribute("data-adapter") for r in _visible(page, "#matrix-table tbody tr")} == {"fake.killer"}
    page.fill("#matrix-filter", "")
    header = page.locator("#matrix-table thead th", has_text="all")
    header.click()
    header.click()  # descending: worst first
    first = page.locator("#matrix-table tbody tr").first
    assert "v-error" in first.locator("td.total").get_attribute("class")

    # -- a matrix cell lists its checks in the (opened) checks table
    page.locator(f'#matrix-table tr[data-adapter="{FAILING}"] td.cell[data-q="running_var"]').first.click()
    assert page.locator("#all-checks").evaluate("e => e.open")
    page.locator("#checks-table tbody tr:not([hidden])").first.wait_for(state="attached")  # as above: no eval
    rows = _visible(page, "#checks-table tbody tr")
    assert rows and {r.get_attribute("data-quantity") for r in rows} == {"running_var"}
    assert {r.get_attribute("data-adapter") for r in rows} == {FAILING}

    # -- cross-framework view: choose the second case
    page.select_option("#xcase", SMOKE[1].id)
    page.locator(f'.xcase[data-case="{SMOKE[1].id}"] tr.oracle').first.wait_for()
    assert page.locator(f'.xcase[data-case="{SMOKE[1].id}"]').is_visible()
    assert not page.locator(f'.xcase[data-case="{SMOKE[0].id}"]').is_visible()
    assert page.locator(f'.xcase[data-case="{SMOKE[1].id}"] tr.oracle').count() > 0

    # -- the per-step plots are drawn when their section comes into view
    page.locator("#steps").scroll_into_view_if_needed()
    page.locator("#steps svg.steps").first.wait_for()
    assert page.locator("#steps svg.steps polyline").count() >= 2

    # -- the analysis.json table is a section
    assert page.locator("#t-defaults-hazard table.analysis-table tbody tr").count() == 2

    # -- the adapters section names the registered deviation with its link
    card = page.locator(f'article.card:has(h3:text-is("{FAILING}"))')
    assert "planted-xfail" in card.inner_text()
    assert card.locator('a[href="https://example.invalid/issue/1"]').count() == 1
