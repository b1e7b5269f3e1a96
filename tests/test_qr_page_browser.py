"""The QR page in headless Chromium: the QR decodes, and the status is pushed."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

import pytest
import zxingcpp
from PIL import Image
from redis.asyncio import Redis

from journey.package import KeyPair
from tests.chromium import Browser, Page, chromium_path, launch
from tests.test_pairing_security import serve
from tests.test_pairing_service import Harness

STATUS_WAIT_MS = 10_000
"""Upper bound for the page to show "paired"; the push takes milliseconds."""

# Resolves with the status once the line shows ``wanted``, without a reload.
_WAIT_FOR_STATUS = """
new Promise((resolve, reject) => {
  const line = document.getElementById("status");
  const check = () => {
    if (line.getAttribute("data-status") === %(wanted)r) {
      resolve(line.getAttribute("data-status"));
      return true;
    }
    return false;
  };
  if (check()) return;
  new MutationObserver(check).observe(line, { attributes: true });
  setTimeout(() => reject(new Error("status stayed " +
    line.getAttribute("data-status"))), %(timeout)d);
})
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


@pytest.fixture
async def service(redis: Redis, key_pair: KeyPair) -> AsyncIterator[Harness]:
    async with serve(redis, key_pair) as harness:
        yield harness


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with launch(chromium) as running:
        yield running


async def open_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page()
    await page.send("Page.enable")
    await page.send("Network.enable")
    await page.send(
        "Emulation.setDeviceMetricsOverride",
        width=800,
        height=1000,
        deviceScaleFactor=1,
        mobile=False,
    )
    # Scripts added over DevTools run outside the page's content policy, so
    # this listener can record the policy's violations.
    await page.send(
        "Page.addScriptToEvaluateOnNewDocument",
        source="window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__violations.push(e.violatedDirective));",
    )
    loaded = page.wait_for("Page.loadEventFired")
    await page.send("Page.navigate", url=url)
    await loaded
    return page


async def screenshot_texts(page: Page) -> list[str]:
    shot = await page.send("Page.captureScreenshot", format="png")
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
    return [result.text for result in zxingcpp.read_barcodes(image)]


async def test_page_shows_decodable_qr(service: Harness, browser: Browser) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    page = await open_page(browser, f"{service.base_url}/koppel/{pairing['page_id']}")

    texts = await screenshot_texts(page)
    typed = await page.evaluate("document.getElementById('typed-code').textContent")
    violations = await page.evaluate("window.__violations")

    assert texts == [pairing["app_link"]]
    assert typed == pairing["typed_code"]
    assert violations == []


async def test_page_turns_paired_without_reload(
    service: Harness, browser: Browser
) -> None:
    case_id = await service.case_in_app_step()
    pairing = await service.create_pairing(case_id)
    page = await open_page(browser, f"{service.base_url}/koppel/{pairing['page_id']}")
    before = await page.evaluate("document.getElementById('status').textContent")
    # A reload would drop this property, so its survival proves there was none.
    await page.evaluate("window.__same_document = true")
    # Wait until the stream is open, so the claim happens while it listens.
    await page.evaluate(
        _WAIT_FOR_STATUS % {"wanted": "waiting", "timeout": STATUS_WAIT_MS}
    )

    await service.simulator().claim(pairing["app_link"])
    status = await page.evaluate(
        _WAIT_FOR_STATUS % {"wanted": "paired", "timeout": STATUS_WAIT_MS}
    )
    after = await page.evaluate("document.getElementById('status').textContent")
    same_document = await page.evaluate("window.__same_document === true")
    qr_hidden = await page.evaluate("document.getElementById('qr').hidden")
    pushed = [
        event["data"] for event in page.events("Network.eventSourceMessageReceived")
    ]
    polled = [
        event["request"]["url"]
        for event in page.events("Network.requestWillBeSent")
        if event["request"]["url"].endswith("/status")
    ]
    texts_after = await screenshot_texts(page)

    assert status == "paired"
    assert after != before
    assert "gekoppeld" in after
    assert same_document is True
    assert qr_hidden is True
    # The change arrived over the event stream, not by polling.
    assert any('"paired"' in data for data in pushed)
    assert polled == []
    assert texts_after == []
