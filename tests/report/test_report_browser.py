"""report.html in a real browser: headless Chromium (Debian's `chromium` package) driven by playwright.

The page must open offline (every request that is not the file itself is blocked and recorded), log
no console error, render every plot and show every claims-table row. A screenshot is saved.
Skipped only when /usr/bin/chromium is absent (`apt-get install -y chromium`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_report import _cell
from typer.testing import CliRunner

from fedarena.cli import app
from fedarena.report.claims import CLAIMS
from fedarena.report.render import write_sweep_report

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PLOTS = ("plot-labels", "plot-acc-round", "plot-acc-bytes", "plot-clients", "plot-gain-scatter", "plot-pareto")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's headless Chromium at /usr/bin/chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster on a busy 2-core machine
    out = tmp_path_factory.mktemp("browser") / "run"
    args = ["compare", "--data", "digits", "--partition", "shards", "--clients", "8", "--clients-per-round", "4",
            "--rounds", "3", "--model", "mlr", "--set", "train.batch_size=32", "--new-clients", "0.25",
            "--algorithms", "fedavg,fedper,local,fedavg-ft,centralized", "--report", "--out", str(out)]
    try:
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


def open_in_chromium(browser, html: Path, screenshot: Path, ready: str) -> dict:
    """Load `html` with the network blocked; return console errors, blocked requests and page facts."""
    errors: list[str] = []
    outside: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    try:
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.goto(html.resolve().as_uri())
        page.wait_for_function(ready, timeout=30_000)
        facts = page.evaluate("""() => ({
            plots: Object.fromEntries([...document.querySelectorAll('[data-plot]')].map(d => {
                const gd = d.querySelector('.plotly-graph-div');
                return [d.dataset.plot, {svg: d.querySelectorAll('.main-svg').length,
                                         traces: gd && gd.data ? gd.data.length : 0}];
            })),
            rows: [...document.querySelectorAll('tr.claim-row')].map(r => r.dataset.key),
            verdicts: [...document.querySelectorAll('tr.claim-row .verdict')].map(v => v.textContent),
            tables: Object.fromEntries([...document.querySelectorAll('table[id]')].map(
                t => [t.id, t.querySelectorAll('tbody tr').length])),
        })""")
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    return {"errors": errors, "outside": outside, **facts}


ALL_PLOTS_DRAWN = ("() => [...document.querySelectorAll('[data-plot]')].every("
                   "d => d.querySelector('.main-svg') !== null)")


def test_harness_catches_console_errors_and_outside_requests(chromium, tmp_path):
    html = tmp_path / "bad.html"
    html.write_text('<img src="https://example.invalid/x.png"><script>console.error("boom")</script>'
                    '<div data-plot="x"><svg class="main-svg"></svg></div>')
    page = open_in_chromium(chromium, html, tmp_path / "bad.png", ALL_PLOTS_DRAWN)
    assert page["errors"] and page["outside"] == ["https://example.invalid/x.png"]


def test_report_opens_offline_and_renders_everything(chromium, report_dir, tmp_path):
    shot = tmp_path / "report.png"
    page = open_in_chromium(chromium, report_dir / "report.html", shot, ALL_PLOTS_DRAWN)
    assert page["errors"] == []
    assert page["outside"] == []  # self-contained: nothing fetched from a CDN or anywhere else
    assert sorted(page["plots"]) == sorted(PLOTS)
    for name, plot in page["plots"].items():
        assert plot["svg"] >= 1 and plot["traces"] >= 1, name
    assert page["rows"] == list(CLAIMS)
    assert all(v in ("holds", "partly", "does not hold", "within noise", "not measured") for v in page["verdicts"])
    summary = json.loads((report_dir / "summary.json").read_text())
    assert page["tables"]["algorithms-table"] == len(summary["runs"])
    assert page["tables"]["priorities-table"] == 5
    assert shot.stat().st_size > 50_000


def test_sweep_page_opens_offline(chromium, tmp_path):
    result = {"algorithms": ["fedavg", "fedper"], "seeds": [0, 1, 2], "data_similarity_verdict": "holds",
              "rule": "crafted", "crossover": {"text": "crafted crossover"},
              "cells": [_cell("iid", 0.01, [-0.02, -0.01, -0.03]) | _extra("iid"),
                        _cell("dirichlet-0.1", 0.5, [0.20, 0.22, 0.21]) | _extra("dirichlet-0.1")]}
    paths = write_sweep_report(result, tmp_path)
    page = open_in_chromium(chromium, paths.html, tmp_path / "sweep.png", ALL_PLOTS_DRAWN)
    assert page["errors"] == [] and page["outside"] == []
    assert page["plots"]["plot-crossover"]["traces"] == 2
    assert page["tables"]["cells-table"] == 2


def _extra(name: str) -> dict:
    return {"effective_classes_mean": 3.0, "best_pfl": "fedper", "best_global": "fedavg", "best_pfl_acc": 0.8,
            "best_global_acc": 0.7, "gain_text": "+10.0 pp", "ahead": "pFL", "run_dir": f"cells/{name}",
            "reused": False}
