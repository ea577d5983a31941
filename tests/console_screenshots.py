"""The screenshots of docs/console.md, taken in headless Chromium against a real server (30 corpus photos):

    MATCHDB_TEST_CORPUS=../shared/corpus MATCHDB_TEST_CHROMIUM=/usr/bin/chromium \\
        .venv/bin/python -m tests.console_screenshots docs/images

PNGs are reduced to a 256-colour palette to keep the repository small. Any JavaScript error stops the run.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import sync_playwright

from tests.conftest import load_corpus
from tests.console_setup import COLLECTION, TOKEN, PhotoServer, edited_copy, photo_server, record_id

# every answer's thumbnail has its source and has loaded it
ALL_LOADED = "() => [...document.querySelectorAll('.answer img')].every(i => i.complete && i.src)"


def save(page: Any, path: Path, full_page: bool = False) -> None:
    shot: Image.Image = Image.open(io.BytesIO(page.screenshot(full_page=full_page)))
    if full_page and shot.height > 1800:
        shot = shot.crop((0, 0, shot.width, 1800))
    shot.convert("RGB").quantize(256).save(path, optimize=True)
    print(f"{path}: {shot.width}x{shot.height}, {path.stat().st_size // 1024} KiB")


def jpeg(data: bytes, name: str) -> dict[str, Any]:
    return {"name": name, "mimeType": "image/jpeg", "buffer": data}


def shoot(server: PhotoServer, chromium: str, out: Path) -> list[str]:
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)

        def page(width: int, height: int) -> Any:
            tab = browser.new_page(viewport={"width": width, "height": height})
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.on("console", lambda message: errors.extend([message.text] if message.type == "error" else []))
            return tab

        tab = page(1280, 520)
        tab.goto(server.url + "/")
        tab.wait_for_selector("#token")
        save(tab, out / "console-sign-in.png")
        tab.fill("#token", TOKEN)
        tab.click("#sign-in button[type=submit]")
        tab.wait_for_selector("table.list")
        save(tab, out / "console-collections.png")

        tab.set_viewport_size({"width": 1280, "height": 860})
        tab.click(f"table.list a:text-is('{COLLECTION}')")
        tab.wait_for_function("() => document.querySelectorAll('#records img.thumb:not(.pending)').length === 24")
        tab.wait_for_timeout(300)
        save(tab, out / "console-collection.png")

        target = server.photos[7]
        tab.click("text=Search this collection by image")
        tab.set_input_files("#search-files", files=[jpeg(edited_copy(target), "edited-copy.jpg")])
        tab.wait_for_selector(f".answer[data-id='{record_id(target)}']")
        tab.wait_for_function(ALL_LOADED)
        tab.wait_for_timeout(300)
        save(tab, out / "console-search.png")

        phone = page(390, 844)
        phone.goto(server.url + "/")
        phone.fill("#token", TOKEN)
        phone.click("#sign-in button[type=submit]")
        phone.wait_for_selector("table.list")
        phone.goto(server.url + "/#search")
        phone.set_input_files("#search-files", files=[jpeg(edited_copy(server.photos[3]), "copy.jpg")])
        phone.wait_for_selector(".answer")
        phone.wait_for_function(ALL_LOADED)
        save(phone, out / "console-search-phone.png", full_page=True)

        tab.goto(server.url + "/#compare")
        tab.set_input_files("#compare-0", files=[jpeg(server.photos[7].path.read_bytes(), server.photos[7].name)])
        tab.set_input_files("#compare-1", files=[jpeg(edited_copy(server.photos[7]), "edited-copy.jpg")])
        tab.wait_for_selector("canvas.bits")
        save(tab, out / "console-compare.png")

        tab.goto(server.url + "/#dedupe")
        chosen = server.photos[10:14]
        files = [jpeg(p.path.read_bytes(), p.name) for p in chosen]
        files += [jpeg(edited_copy(p), f"copy-of-{p.name}") for p in chosen[:2]]
        tab.set_input_files("#dedupe-files", files=files)
        tab.wait_for_selector("section.group")
        save(tab, out / "console-dedupe.png")

        reader = page(1280, 420)
        reader.goto(server.url + "/")
        reader.fill("#token", server.reader)
        reader.click("#sign-in button[type=submit]")
        reader.wait_for_selector("table.list")
        save(reader, out / "console-read-only.png")
        browser.close()
    return errors


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    chromium = os.environ["MATCHDB_TEST_CHROMIUM"]
    with tempfile.TemporaryDirectory() as tmp, photo_server(load_corpus(), Path(tmp)) as server:
        errors = shoot(server, chromium, out)
    if errors:
        print("JavaScript errors:", *errors, sep="\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
