"""Open a run's report.html in headless Chromium (Debian's `chromium`) and save a PNG screenshot.

    .venv/bin/python scripts/report_screenshot.py RUN_DIR docs/report.png [--element CSS | --full]

Used to make the README's screenshot from a real run; tests/test_report_browser.py drives the same
browser the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--element", default="#claims", help="CSS selector of the part to capture (default: "
                        "the measured claims table)")
    parser.add_argument("--full", action="store_true", help="the whole page instead")
    parser.add_argument("--height", type=int, default=1400)
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": args.height}, device_scale_factor=1)
        page.goto((args.run_dir / "report.html").resolve().as_uri())
        page.wait_for_function("document.querySelectorAll('.plot .main-svg').length > 0")
        if args.full:
            page.screenshot(path=str(args.png), full_page=True)
        else:
            page.locator(args.element).screenshot(path=str(args.png))
        browser.close()


if __name__ == "__main__":
    main()
