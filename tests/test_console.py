"""The web console in a real browser: playwright driving Debian's Chromium (MATCHDB_TEST_CHROMIUM, never a
downloaded browser) against a real ``matchdb serve`` holding 30 corpus photos inserted as ``_base64``.

Every page's ``pageerror`` events and console errors are collected, and each test asserts there were none."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import CorpusImage
from tests.console_setup import COLLECTION, TOKEN, edited_copy, photo_server, record_id
from tests.servers import image_server, run_matchdb_server

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.chromium, pytest.mark.corpus]


# the element's image has arrived and decoded
LOADED = "selector => { const img = document.querySelector(selector + ' img'); return img && img.naturalWidth > 0; }"


@dataclass
class Console:
    url: str
    reader: str  # a read-only token
    photos: list[CorpusImage]
    browser: Any
    errors: list[str] = field(default_factory=list)

    def page(self, width: int = 1280, height: int = 900) -> Any:
        """A fresh tab (its own sessionStorage) whose JavaScript errors land in ``errors``."""
        page = self.browser.new_page(viewport={"width": width, "height": height})

        def on_console(message: Any) -> None:
            if message.type == "error":
                self.errors.append(f"console: {message.text}")

        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", on_console)
        return page

    def sign_in(self, page: Any, token: str) -> None:
        page.goto(self.url + "/")
        page.fill("#token", token)
        page.click("#sign-in button[type=submit]")
        page.wait_for_selector("table.list")


@pytest.fixture(scope="module")
def console(corpus: list[CorpusImage], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    chromium = os.environ.get("MATCHDB_TEST_CHROMIUM")
    if not chromium:
        pytest.skip("MATCHDB_TEST_CHROMIUM is not set (point it at a Chromium binary to run this test)")
    folder = tmp_path_factory.mktemp("console")
    with photo_server(corpus, folder) as server, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            yield Console(server.url, server.reader, server.photos, browser)
        finally:
            browser.close()


@pytest.fixture
def errors(console: Console) -> Iterator[list[str]]:
    console.errors.clear()
    yield console.errors
    assert console.errors == [], "JavaScript errors in the console"


def test_dropping_an_edited_copy_finds_the_stored_photo_with_its_thumbnail(console: Console, errors: list[str]) -> None:
    target = console.photos[7]
    page = console.page()
    console.sign_in(page, TOKEN)
    page.click(f"table.list a:text-is('{COLLECTION}')")
    page.wait_for_selector("#records figure")
    assert page.locator("#records figure").count() == 24  # the first page of the 30
    page.click("text=Search this collection by image")
    page.wait_for_selector("#search-files")
    assert page.eval_on_selector("#search-collection", "e => e.selectedOptions[0].textContent") == f"{COLLECTION} (30)"
    copy = {"name": "edited-copy.jpg", "mimeType": "image/jpeg", "buffer": edited_copy(target)}
    page.set_input_files("#search-files", files=[copy])
    answer = f".answer[data-id='{record_id(target)}']"
    page.wait_for_selector(answer)
    page.wait_for_function(LOADED, arg=answer)
    assert page.locator(".answer").first.get_attribute("data-id") == record_id(target)  # best first
    assert "near-duplicate" in page.locator(answer).inner_text()
    assert page.locator(".query-image img").evaluate("img => img.naturalWidth") > 0
    assert page.eval_on_selector(answer + " img", "img => img.src").startswith("blob:")
    assert page.evaluate("() => location.href").endswith("#search")
    assert TOKEN not in page.evaluate("() => location.href + document.cookie")
    page.close()


def test_several_dropped_images_run_in_turn_with_a_progress_bar(console: Console, errors: list[str]) -> None:
    page = console.page()
    console.sign_in(page, TOKEN)
    page.goto(console.url + "/#search")
    page.wait_for_selector("#search-files")
    copies = [
        {"name": f"copy-{i}.jpg", "mimeType": "image/jpeg", "buffer": edited_copy(console.photos[i])} for i in (1, 2, 3)
    ]
    # a real drop event, carrying the files in its DataTransfer
    page.evaluate(
        """files => {
            const transfer = new DataTransfer();
            for (const f of files) {
                transfer.items.add(new File([new Uint8Array(f.bytes)], f.name, {type: "image/jpeg"}));
            }
            const drop = new DragEvent("drop", {dataTransfer: transfer, bubbles: true});
            document.querySelector(".drop").dispatchEvent(drop);
        }""",
        [{"name": c["name"], "bytes": list(c["buffer"])} for c in copies],
    )
    page.wait_for_function("() => document.querySelector('#progress-text').textContent === '3 images searched.'")
    assert page.eval_on_selector("#progress", "p => [p.value, p.max, p.hidden]") == [3, 3, False]
    firsts = page.eval_on_selector_all("section.query", "s => s.map(q => q.querySelector('.answer').dataset.id)")
    assert firsts == [record_id(console.photos[i]) for i in (1, 2, 3)]
    page.close()


def test_a_pasted_image_is_searched(console: Console, errors: list[str]) -> None:
    target = console.photos[12]
    page = console.page()
    console.sign_in(page, TOKEN)
    page.goto(console.url + "/#search")
    page.wait_for_selector("#search-files")
    page.evaluate(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "pasted.jpg", {type: "image/jpeg"}));
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
        }""",
        list(edited_copy(target)),
    )
    page.wait_for_selector(".answer")
    assert page.locator(".answer").first.get_attribute("data-id") == record_id(target)
    page.close()


def test_create_and_delete_a_collection(console: Console, errors: list[str]) -> None:
    page = console.page()
    console.sign_in(page, TOKEN)
    page.fill("#new-collection", "scratch-shoes")
    page.click("#create-form button[type=submit]")
    row = "tr[data-name='scratch-shoes']"
    page.wait_for_selector(row)
    page.click(f"{row} button.danger")
    assert page.locator("#confirm").is_visible()
    assert "scratch-shoes" in page.inner_text("#confirm-text")
    page.click("#confirm button[value=cancel]")  # cancelling keeps it
    assert page.locator(row).count() == 1
    page.click(f"{row} button.danger")
    page.click("#confirm-ok")
    page.wait_for_selector(row, state="detached")
    listed = httpx.get(console.url + "/v2/collections", headers={"Authorization": f"Token {TOKEN}"}).json()
    assert [c["name"] for c in listed["collections"]] == [COLLECTION]
    page.close()


def test_a_read_only_token_sees_no_write_buttons(console: Console, errors: list[str]) -> None:
    page = console.page()
    console.sign_in(page, console.reader)
    assert "read-only" in page.inner_text("#who")
    assert page.locator("#create-form").count() == 0
    assert page.locator("main button").count() == 0
    page.click(f"table.list a:text-is('{COLLECTION}')")
    page.wait_for_selector("#records figure img.thumb:not(.pending)")
    assert page.locator("#records button").count() == 0
    assert page.locator("#records figure").count() == 24
    page.close()


def test_a_wrong_token_is_refused_in_words(console: Console) -> None:
    page = console.page()
    page.goto(console.url + "/")
    page.fill("#token", "not-a-token")
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("Invalid or revoked API token (`matchdb token create`")
    # the browser logs the refused request itself (a 401): that one console message is expected, nothing else
    assert all("401" in e for e in console.errors), console.errors
    console.errors.clear()
    page.close()


def test_readable_at_phone_width(console: Console, errors: list[str]) -> None:
    page = console.page(width=390, height=844)
    console.sign_in(page, TOKEN)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    page.close()


UNLABELLED = """() => [...document.querySelectorAll("main input, main select, main button, main textarea")]
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.textContent.trim())
    .map((e) => e.outerHTML)"""


def test_every_field_is_labelled_and_reachable_by_keyboard(console: Console, errors: list[str]) -> None:
    page = console.page()
    console.sign_in(page, TOKEN)
    collection_id = page.get_attribute(f"table.list a:text-is('{COLLECTION}')", "href")
    for view, ready in [
        ("#collections", "#new-collection"),
        (str(collection_id), "#filter"),
        ("#search", "#search-files"),
        ("#compare", "#compare-1"),
        ("#dedupe", "#dedupe-files"),
    ]:
        page.goto(console.url + "/" + view)
        page.wait_for_selector(ready)
        assert page.evaluate(UNLABELLED) == [], view
        # Tab from the top of the page reaches the view's main field
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        reached = []
        for _ in range(15):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("() => document.activeElement.id"))
        assert ready.removeprefix("#") in reached, (view, reached)
    page.close()


def test_open_mode_without_thumbnails_shows_url_images_and_placeholders(
    console: Console, errors: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second server, in open mode (no token: no sign-in box) with MATCHDB_THUMBNAILS=0: a record inserted by
    ``_url`` shows the image at its URL, one inserted as ``_base64`` a placeholder, and no request fails."""
    photo = console.photos[5]
    with image_server({"/photo.jpg": photo.path.read_bytes()}) as images:
        folder = tmp_path_factory.mktemp("open")
        env = {
            "MATCHDB_DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "MATCHDB_THUMBNAILS": "0",
            "MATCHDB_FETCH_ALLOW": images.allow,
        }
        with run_matchdb_server(env) as url:
            assert httpx.post(url + "/v2/collections", json={"name": "plain"}).status_code == 200
            records = [
                {"_id": "by-url", "_url": images.url("/photo.jpg")},
                {"_id": "by-base64", "_base64": base64.b64encode(photo.path.read_bytes()).decode()},
            ]
            inserted = httpx.post(url + "/v2/insert", json={"records": records}, headers={"collection-id": "plain"})
            assert inserted.json()["status"]["code"] == 200, inserted.text
            page = console.page()
            page.goto(url + "/")
            page.wait_for_selector("table.list")  # no sign-in in open mode
            assert "open mode" in page.inner_text("#who")
            page.click("table.list a:text-is('plain')")
            page.wait_for_function(LOADED, arg="figure[data-id='by-url']")
            assert page.get_attribute("figure[data-id='by-url'] img", "src") == images.url("/photo.jpg")
            page.wait_for_selector("figure[data-id='by-base64'] img.missing")
            page.close()
