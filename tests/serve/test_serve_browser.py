"""The page at / in real headless Chromium (Debian's chromium, driven by Playwright), against the real server.

Skips, saying why, where /usr/bin/chromium or Playwright is missing (`.ci/run` installs chromium with apt-get).
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("HEADSTART_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (the test extra)")
from servetools import photos, served_models, server  # noqa: F401  (the fixtures; tests/serve/servetools.py)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 120_000  # two shared cores: a first Grad-CAM can take a while


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


class Page:
    """A page on the server, with what it asked for and any script error it hit."""

    def __init__(self, browser, server, *, with_key: bool = True) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        if with_key:  # what the key form stores
            self.context.add_init_script(f"sessionStorage.setItem('headstart-key', {json.dumps(server.api_key)})")
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.script_errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.script_errors.append(str(e)))
        self.url = server.url

    def open(self, path: str = "/") -> None:
        self.page.goto(self.url + path)

    def ready(self) -> None:
        self.open()
        self.page.wait_for_selector("#status.ready")

    def wait_results(self, n: int) -> None:
        self.page.wait_for_function(f"document.querySelectorAll('.photo.done, .photo.error').length >= {n}")

    def close(self) -> None:
        assert not self.script_errors, self.script_errors
        assert all(u.startswith(self.url) or u.startswith(("blob:", "data:")) for u in self.requests), [
            u for u in self.requests if not u.startswith(self.url)
        ]
        self.context.close()


@pytest.fixture()
def page(browser, server):
    p = Page(browser, server)
    yield p
    p.close()


def files(photos, n: int) -> list[dict]:
    return [{"name": name, "mimeType": "image/jpeg", "buffer": data} for name, data in photos[:n]]


def test_page_has_a_file_input_and_the_model_card(page, server) -> None:
    page.ready()
    p = page.page
    assert p.locator("input[type=file]#file").get_attribute("multiple") is not None
    assert p.locator("#model option").all_inner_texts() == ["pets", "flip"]
    assert p.locator("#model-choice").is_visible()
    assert p.inner_text("#card-name") == "pets"
    assert p.inner_text("#card-n-classes") == "12"
    assert p.locator("#card-classes li").count() == 12
    assert "%" in p.inner_text("#card-accuracy")
    assert "tf_efficientnet_lite0" in p.inner_text("#card-backbone")
    p.select_option("#model", "flip")
    assert p.inner_text("#card-name") == "flip" and "mirror-averaged" in p.inner_text("#card-input")


def test_chosen_photos_get_their_top5_and_bad_files_an_error(page, server, photos) -> None:
    page.ready()
    p = page.page
    chosen = [
        *files(photos, 3),
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"},
        {"name": "empty.jpg", "mimeType": "image/jpeg", "buffer": b""},
    ]
    p.set_input_files("#file", chosen)
    page.wait_results(5)
    cards = p.locator(".photo")
    assert cards.locator(".name").all_inner_texts() == [f["name"] for f in chosen]  # in the order chosen
    expected = server.client().predict(photos[:3], model="pets", top_k=5)["results"]
    for i, result in enumerate(expected):
        card = cards.nth(i)
        assert "done" in card.get_attribute("class")
        assert card.locator(".bars li").count() == 5
        assert card.locator(".bars .label").all_inner_texts() == [x["label"] for x in result["predictions"]]
        width = card.locator(".bars .fill").first.evaluate("e => e.style.width")
        assert abs(float(width.rstrip("%")) - 100 * result["predictions"][0]["probability"]) < 0.1
        for text in card.locator(".bars .p").all_inner_texts():  # one rule for every probability (format.js)
            assert re.fullmatch(r"<0\.1%|>99\.9%|\d{1,2}\.\d%", text), text
        assert card.locator(".toggle").is_visible()
    assert "not an image" in cards.nth(3).locator(".error").inner_text()
    assert "empty" in cards.nth(4).locator(".error").inner_text()
    assert not cards.nth(3).locator(".toggle").is_visible()


def test_dropped_photos_are_classified(page, server, photos) -> None:
    page.ready()
    p = page.page
    payload = [{"name": n, "b64": base64.b64encode(d).decode()} for n, d in photos[3:5]]
    transfer = p.evaluate_handle(
        """files => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, {type: "image/jpeg"}));
        }
        return dt;
    }""",
        payload,
    )
    p.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    assert "over" in p.get_attribute("#drop", "class")
    p.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_results(2)
    assert p.locator(".photo").count() == 2  # once each, though the drop bubbles to the document
    assert p.locator(".photo .name").all_inner_texts() == [x["name"] for x in payload]
    expected = server.client().predict(photos[3:5], model="pets")["results"]
    assert p.locator(".photo .bars li:first-child .label").all_inner_texts() == [
        r["predictions"][0]["label"] for r in expected
    ]


def test_gradcam_toggle_shows_the_overlay(page, server, photos) -> None:
    page.ready()
    p = page.page
    p.select_option("#model", "flip")
    p.set_input_files("#file", files(photos, 1))
    page.wait_results(1)
    card = p.locator(".photo").first
    card.locator(".cam").check()
    p.wait_for_function(
        "(() => { const o = document.querySelector('.photo .overlay'); "
        "return !o.hidden && o.complete && o.naturalWidth > 0; })()"
    )
    assert card.locator(".thumb").is_hidden()
    assert card.locator(".cam-note").inner_text() == "for " + card.locator(".bars .label").first.inner_text()
    assert any("/v1/explain?model=flip" in u for u in page.requests)
    card.locator(".cam").uncheck()
    assert card.locator(".thumb").is_visible() and card.locator(".overlay").is_hidden()


def test_the_page_asks_for_the_api_key(browser, server, photos) -> None:
    page = Page(browser, server, with_key=False)
    try:
        page.open()
        p = page.page
        p.wait_for_selector("#key-form", state="visible")
        assert "API key" in p.inner_text("#banner-text")
        p.fill("#key", server.api_key)
        p.click("#key-form button")
        p.wait_for_selector("#status.ready")
        assert p.locator("#banner").is_hidden()
        p.set_input_files("#file", files(photos, 1))
        page.wait_results(1)
        assert p.locator(".photo.done").count() == 1
    finally:
        page.close()


def test_a_failing_server_is_shown_in_the_page(page, photos) -> None:
    page.ready()
    p = page.page
    p.route("**/v1/predict**", lambda route: route.abort())
    p.set_input_files("#file", files(photos, 1))
    page.wait_results(1)
    assert "could not reach the server" in p.locator(".photo .error").inner_text()
    assert p.locator("#status.ready").is_visible()  # the page itself is still there


def test_api_docs_render_offline(page) -> None:
    page.open("/docs")
    p = page.page
    p.wait_for_selector(".swagger-ui .opblock")
    text = p.inner_text(".swagger-ui")
    for path in ("/v1/predict", "/v1/explain", "/v1/models", "/v2/models/{name}/infer"):
        assert path in text, path
