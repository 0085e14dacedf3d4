"""How large the HTML report of a run is, and what makes it so (prints numbers; asserts nothing).

    python benchmarks/report_size.py reports/runs/<run-id> [--adapters 18]

renders the report of the given results and prints its size, each part's share (sections, the compressed
parts inserted when opened) and the time to render; with `--open` (playwright and a chromium), how long
headless Chromium takes to show it (DOMContentLoaded, load, the findings' list inserted). `--adapters N` also estimates a run over N adapters by
renaming the run's adapters into N (their records repeated as copies): the size of a default run over every
core adapter (18) from a run over a few.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.outputs import report, results  # noqa: E402


def measure(rs, label: str, browse: bool = False) -> None:
    t0 = time.perf_counter()
    html = report.render(rs)
    took = time.perf_counter() - t0
    print(f"{label}: {len(rs.records)} checks, {len({r['adapter'] for r in rs.records})} adapters -> "
          f"{len(html.encode()) / 1e6:.2f} MB (rendered in {took:.1f} s)")
    for m in re.finditer(r'<section id="([\w-]+)"', html):
        end = html.find("</section>", m.start())
        size = end - m.start()
        if size > 20_000:
            print(f"  section {m.group(1):28s} {size / 1e3:8.0f} kB")
    for m in re.finditer(r'<script type="application/octet-stream" id="data-(\w+)">([^<]*)</script>', html):
        print(f"  compressed part {m.group(1):20s} {len(m.group(2)) / 1e3:8.0f} kB")
    if browse:
        open_in_chromium(html)


def open_in_chromium(html: str) -> None:
    import os
    import shutil
    import tempfile

    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("BNCONFORM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        path = Path(tmp) / "index.html"
        path.write_text(html, encoding="utf-8")
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # the page's own clock when the findings' list is in the DOM (the driver's round trips left out)
        page.add_init_script("new MutationObserver(function (m, o) {"
                             " if (document.querySelector('#findings details.finding')) {"
                             " window.__listed = performance.now(); o.disconnect(); } })"
                             ".observe(document, {subtree: true, childList: true});")
        for attempt in ("cold", "warm", "warm"):
            t0 = time.perf_counter()
            page.goto(path.as_uri())
            page.locator("#findings details.finding").first.wait_for(timeout=60_000)
            driver = time.perf_counter() - t0
            timing = page.evaluate("JSON.stringify({nav: performance.getEntriesByType('navigation')[0].toJSON(),"
                                   " listed: window.__listed})")
            t = __import__("json").loads(timing)
            nav = t["nav"]
            print(f"  chromium ({attempt}): DOMContentLoaded {nav['domContentLoadedEventEnd']:.0f} ms, load "
                  f"{nav['loadEventEnd']:.0f} ms, findings listed at {t['listed']:.0f} ms "
                  f"(the driver saw them after {driver * 1000:.0f} ms)")
        browser.close()


def scaled(rs, n: int):
    names = sorted({r["adapter"] for r in rs.records})
    records, metas = [], []
    for i in range(n):
        src = names[i % len(names)]
        name = src if i < len(names) else f"{src}~{i}"
        for r in rs.records:
            if r["adapter"] == src:
                records.append({**r, "adapter": name, "check_id": r["check_id"].replace(src, name, 1)})
    for m in rs.metas:
        adapters = []
        for i in range(n):
            src = names[i % len(names)]
            a = next((a for a in m.get("adapters", []) if a["name"] == src), None)
            if a:
                adapters.append({**a, "name": src if i < len(names) else f"{src}~{i}"})
        metas.append({**m, "adapters": adapters})
    return results.ResultSet(sorted(records, key=lambda r: r["check_id"]), metas, rs.tables)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--adapters", type=int, default=0, help="also estimate a run over this many adapters")
    ap.add_argument("--open", action="store_true", help="time opening the report in headless Chromium")
    args = ap.parse_args()
    rs = results.load(args.results)
    measure(rs, "this run", args.open)
    if args.adapters:
        measure(scaled(rs, args.adapters), f"estimate for {args.adapters} adapters")


if __name__ == "__main__":
    main()
