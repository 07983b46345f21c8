"""The README's screenshots of the run browser, taken with the headless Chromium the browser
test uses (playwright with the system's chromium):

    .venv/bin/python docs/browser/screenshots.py runs/smollm2-135m/default

writes docs/browser/{index,features,rules}.png at 1200x800, reduced to a 64-colour palette
so that each stays well under 100 kB in the repository."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent


def main(run_dir: str) -> None:
    pages = Path(run_dir).resolve() / "browser"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        tab = chromium.new_page(viewport={"width": 1200, "height": 800})
        tab.goto((pages / "index.html").as_uri())
        _shot(tab, "index")
        tab.goto((pages / "features.html").as_uri())
        _shot(tab, "features")
        tab.goto((pages / "rules.html").as_uri())
        tab.select_option("#category", "judged")  # the judged sample, with the judge's labels
        _shot(tab, "rules")
        chromium.close()


def _shot(tab, name: str) -> None:
    path = HERE / f"{name}.png"
    tab.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main(sys.argv[1])
