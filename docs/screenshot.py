"""Take the README's screenshot (docs/screenshot.png) of the live app in headless Chromium.

Run from the repository root with the app already serving the bundled checkpoints, e.g.
    .venv/bin/python app.py --port 7930 &
    .venv/bin/python docs/screenshot.py http://127.0.0.1:7930/
It opens the first example (the synthetic haemorrhage), waits for the whole volume to be scored,
folds the extra-map rows away and saves the top of the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent / "screenshot.png"


def main(url: str = "http://127.0.0.1:7860/", height: int = 2600) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        page = b.new_page(viewport={"width": 1500, "height": 1200})
        page.goto(url, wait_until="load")
        page.get_by_text("synthetic_haemorrhage_t1.nii.gz").first.click()
        page.wait_for_selector("text=scored in", timeout=600_000)
        # the whole volume, not its preview ("Slice 45 scored first; scoring all 90 slices...")
        page.wait_for_function("() => !document.body.innerText.includes('scoring all')", timeout=600_000)
        page.get_by_label("Extra maps (uncertainty, discrepancies, votes) as rows of their own").uncheck()
        page.wait_for_timeout(8000)
        page.screenshot(path=str(OUT), full_page=True)
        b.close()
    im = Image.open(OUT)
    im.crop((0, 0, im.width, min(im.height, height))).save(OUT, optimize=True)
    print(f"wrote {OUT} ({im.width} x {min(im.height, height)})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
