"""The playground at `/`: when it is served, and a real headless Chromium driving it end to end.

The browser runs against a real gateway in front of an emulator of its own (jobs of 3 s): it uploads
generated PNGs through the gateway, submits to two models, follows the request over the gateway's
Server-Sent Events, plays the resulting MP4, and shows both the browser's and the gateway's validation
errors next to the field. Screenshots go to tests/artifacts/.

Chromium is Debian's (`apt-get install chromium`, done by `make test` through tests/setup-system.sh),
never a Playwright download.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from app.callers.keys import new_api_key
from app.settings import Settings
from app.web.playground import playground_enabled
from tests.servers import ROOT, Server, free_port, start_emulator, start_gateway

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Locator, Request, Response, Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = ROOT / "tests" / "artifacts"

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
WAN = "fal-ai/wan-i2v"
MAGI = "fal-ai/magi-distilled/image-to-video"

# Waits for the <video>, plays it, and reports what the media element knows (or why it failed).
PLAY_VIDEO_JS = """async () => {
  const v = document.querySelector('#result video');
  if (!v) return {error: 'no <video> element'};
  const timeout = (ms, what) => new Promise((_, fail) => setTimeout(() => fail(new Error(what)), ms));
  const loaded = new Promise((ok, fail) => {
    if (v.readyState >= 2) return ok();
    v.addEventListener('loadeddata', ok, {once: true});
    v.addEventListener('error', () => fail(new Error('media error ' + (v.error && v.error.code))), {once: true});
  });
  try {
    await Promise.race([loaded, timeout(10000, 'no data in 10 s')]);
    await Promise.race([v.play(), timeout(5000, 'play() did not resolve')]);
    const advanced = new Promise((ok) => v.addEventListener('timeupdate', () => v.currentTime > 0.2 && ok()));
    await Promise.race([advanced, timeout(5000, 'playback did not advance')]);
  } catch (e) {
    return {error: String(e), readyState: v.readyState, src: v.currentSrc};
  }
  return {readyState: v.readyState, duration: v.duration, paused: v.paused, currentTime: v.currentTime,
          src: v.currentSrc, width: v.videoWidth, height: v.videoHeight};
}"""

# A real drag-and-drop: the page sees the same DragEvents a user's drop produces.
DROP_FILE_JS = """([selector, b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type: 'image/png'}));
  const zone = document.querySelector(selector);
  for (const type of ['dragenter', 'dragover', 'drop']) {
    zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
  }
}"""


def make_png(width: int, height: int, seed: int) -> bytes:
    """A small gradient PNG, built by hand so the test needs no image library."""
    # Each row: filter type 0, then RGB pixels.
    rows = b"".join(
        b"\x00" + b"".join(bytes(((x * 4 + seed) % 256, (y * 5) % 256, (seed * 40) % 256)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------- when it is served


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"upstream": "emulator"}, True),
        ({"upstream": "emulator", "playground": False}, False),
        ({"fal_key": "k:s", "allow_anonymous": True, "public_url": "https://falgate.example.com"}, False),
        ({"fal_key": "k:s", "allow_anonymous": True, "public_url": "https://falgate.example.com", "playground": True}, True),
    ],
)
def test_playground_enabled(settings: dict[str, Any], expected: bool) -> None:
    assert playground_enabled(Settings(_env_file=None, **settings)) is expected


def test_playground_is_off_in_live_mode_by_default(gateway: Server) -> None:
    for path in ("/", "/static/playground.js", "/static/quote.js", "/static/playground.css"):
        response = httpx.get(gateway.url + path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("application/json")
        assert "detail" in response.json()


def test_playground_is_on_in_emulator_mode_by_default() -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_"))}
    env = {**clean, "FALGATE_PORT": str(port), "FALGATE_STORE_URL": f"sqlite:///{tempfile.mkdtemp()}/falgate.db"}
    server = Server("gateway-emulated", [sys.executable, "-m", "app.cli", "serve"], port, env)
    try:
        server.wait_ready()
        page = httpx.get(server.url + "/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/static/playground.js"' in page.text
        assert '<script src="/static/quote.js"' in page.text
        for script in ("playground.js", "quote.js"):
            assert httpx.get(f"{server.url}/static/{script}").headers["content-type"].startswith("text/javascript")
        assert httpx.get(server.url + "/static/playground.css").headers["content-type"].startswith("text/css")
        # The page is no API route: it stays out of the OpenAPI schema.
        assert "/" not in httpx.get(server.url + "/openapi.json").json()["paths"]
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (`make test` does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (no `playwright install` needed)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Long enough that the page's EventSource is open before the job logs anything, even on a loaded CI
# machine: with the suite's 1 s jobs, fal's webhook sometimes finished the job before the browser had
# connected, and the page (rightly) showed no log lines.
PLAYGROUND_JOB_SECONDS = 3.0


@pytest.fixture(scope="module")
def playground_emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=PLAYGROUND_JOB_SECONDS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def playground(playground_emulator: Server) -> Iterator[Server]:
    # The shared test gateway runs in live mode (against the emulator), where the playground is off.
    server = start_gateway(playground_emulator, FALGATE_PLAYGROUND="true")
    yield server
    server.stop()


class Session:
    """One browser page on the playground, with what it requested and any script or CSP errors."""

    def __init__(self, browser: Browser, base_url: str, allowed_origins: list[str]) -> None:
        self.context = browser.new_context(viewport={"width": 1360, "height": 1000})
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.requests: list[Request] = []
        self.problems: list[str] = []
        self.allowed = allowed_origins
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        self.page.on("console", self._console)
        self.page.goto(base_url + "/")

    def _console(self, message: ConsoleMessage) -> None:
        # Failed-resource lines (a 422 answer, say) are expected; CSP violations and script errors are not.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(message.text)

    def close(self) -> None:
        self.context.close()

    def check_clean(self) -> None:
        assert not self.problems, self.problems
        # No CDN, no fonts, nothing from the web: only the gateway, and the emulator's storage for media.
        allowed = (*(origin + "/" for origin in self.allowed), "data:", "blob:")
        outside = [r.url for r in self.requests if not r.url.startswith(allowed)]
        assert not outside, outside

    def fields(self, name: str) -> Locator:
        return self.page.locator(f'[data-field="{name}"]')

    def pick_model(self, model_id: str) -> None:
        self.page.wait_for_selector("#model:not([disabled])")
        self.page.select_option("#model", model_id)
        self.page.wait_for_selector('[data-field="prompt"]')

    def drop_image(self, png: bytes, name: str) -> None:
        selector = '[data-field="image_url"] .dropzone'
        self.page.evaluate(DROP_FILE_JS, [selector, base64.b64encode(png).decode(), name])
        self.wait_uploaded(name)

    def pick_image(self, png: bytes, name: str) -> None:
        picker = self.fields("image_url").locator('input[type="file"]')
        picker.set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": png}])
        self.wait_uploaded(name)

    def wait_uploaded(self, name: str) -> None:
        self.fields("image_url").get_by_text(f"Uploaded {name}").wait_for()

    def submit(self, model_id: str) -> tuple[int, dict]:
        """Click submit; the JSON body the page sent and the gateway's status."""
        def is_submit(r: Response) -> bool:  # a live quote's URL ends with the model id too
            return r.request.method == "POST" and r.url.endswith("/" + model_id) and "/v1/quote/" not in r.url

        with self.page.expect_response(is_submit) as info:
            self.page.click("#submit")
        response = info.value
        return response.status, response.request.post_data_json

    def run_to_completion(self, model_id: str, screenshot: str) -> dict:
        status, body = self.submit(model_id)
        assert status == 200, body
        self.page.wait_for_selector('#run[data-state="completed"]')
        timeline = self.page.inner_text("#timeline")
        # The live states and log lines came from the event stream (the page connects well within a job).
        assert re.search(r"IN_QUEUE|IN_PROGRESS", timeline), timeline
        assert self.page.locator("#logs li").count() >= 1
        video = self.page.evaluate(PLAY_VIDEO_JS)
        assert "error" not in video, video
        assert video["readyState"] >= 2, video  # HAVE_CURRENT_DATA: the MP4 was fetched and decoded
        assert video["duration"] > 0, video
        assert not video["paused"], video
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        return body


def test_playground_end_to_end_in_chromium(browser: Browser, playground: Server, playground_emulator: Server) -> None:
    emulator = playground_emulator
    session = Session(browser, playground.url, [playground.url, emulator.url])
    page = session.page
    try:
        assert page.is_hidden("#auth")  # no authentication on this gateway: no key field
        assert page.inner_text("#mode") == "live: submits spend fal credits"

        # Model A, Kling 2.1: a dropped image, one optional number; the enum left at its default.
        session.pick_model(KLING)
        assert session.fields("duration").locator("select").input_value() != ""  # the default is selected
        assert session.fields("cfg_scale").locator("input").get_attribute("max") == "1"
        page.fill("#f-prompt", "a red square slowly spinning")
        page.fill("#f-cfg_scale", "0.7")
        session.drop_image(make_png(64, 48, seed=1), "square.png")
        image_url = page.input_value("#f-image_url")
        assert image_url.startswith(emulator.url), image_url
        body = session.run_to_completion(KLING, "playground-kling.png")
        # Only what the user set: fal applies its own defaults to the rest.
        assert body == {"prompt": "a red square slowly spinning", "image_url": image_url, "cfg_scale": 0.7}
        events = [r for r in session.requests if "/events" in r.url]
        assert events and events[0].resource_type == "eventsource", [r.url for r in session.requests]
        assert not [r for r in session.requests if "/status" in r.url]  # progress came from SSE, not polling

        # Model B, Wan 2.1: the prompt carries over; a new image through the file picker; an enum and a number.
        session.pick_model(WAN)
        assert page.input_value("#f-prompt") == "a red square slowly spinning"
        session.pick_image(make_png(80, 60, seed=7), "gradient.png")
        page.fill("#f-num_frames", "90")
        page.select_option("#f-resolution", label="480p")
        body = session.run_to_completion(WAN, "playground-wan.png")
        assert body["num_frames"] == 90 and body["resolution"] == "480p", body
        assert body["image_url"] != image_url

        # Out of range: the browser's own check catches it first, and nothing is sent...
        page.fill("#f-num_frames", "500")
        submits = lambda: [r for r in session.requests if r.method == "POST" and "/v1/quote/" not in r.url]  # noqa: E731
        posts = len(submits())
        page.click("#submit")
        field_error = session.fields("num_frames").locator(".field-error")
        assert field_error.inner_text() != ""
        assert len(submits()) == posts
        # ...and with the browser's checks off, the gateway's 422 shows next to the same field.
        page.check("#skip-checks")
        status, body = session.submit(WAN)
        assert status == 422 and body["num_frames"] == 500
        field_error.get_by_text("less than or equal to 100").wait_for()
        assert session.fields("num_frames").get_attribute("class") == "field invalid"
        assert page.locator(".field-error:not(:empty)").count() == 1
        page.screenshot(path=str(ARTIFACTS / "playground-422.png"), full_page=True)
        session.check_clean()
    finally:
        session.close()


def test_playground_with_authentication(browser: Browser, playground_emulator: Server) -> None:
    emulator = playground_emulator
    key, entry = new_api_key("playground-tester")
    server = start_gateway(emulator, FALGATE_PLAYGROUND="true", FALGATE_AUTH="api_key", FALGATE_API_KEYS=entry)
    session = Session(browser, server.url, [server.url, emulator.url])
    page = session.page
    try:
        # /v1/models answered 401: the page asks for a key instead of showing a form.
        page.wait_for_selector("#auth:not([hidden])")
        assert page.inner_text("#auth-message") != ""
        assert page.is_disabled("#submit")
        page.fill("#api-key", key)
        page.click("#api-key-use")
        session.pick_model(MAGI)
        page.fill("#f-prompt", "waves on a beach")
        session.pick_image(make_png(32, 32, seed=3), "tiny.png")
        page.select_option("#f-num_inference_steps", label="8")
        body = session.run_to_completion(MAGI, "playground-auth.png")
        assert body["num_inference_steps"] == 8  # an integer enum goes out as a number, not "8"
        # EventSource cannot send headers: the key went as access_token, and only on the events URL.
        events = [r.url for r in session.requests if "/events" in r.url]
        assert events and all("access_token=" in url for url in events)
        assert not [r.url for r in session.requests if "access_token" in r.url and "/events" not in r.url]
        session.check_clean()
    finally:
        session.close()
        server.stop()


# The browser's own push service is the one part a test cannot run: headless Chromium refuses
# pushManager.subscribe ("Registration failed - permission denied") and its service is FCM on the
# internet. So the page's subscribe() answers a subscription to the Web Push stand-in (its keys the
# test's), and what the stand-in decrypts is handed to the page's service worker over DevTools
# (ServiceWorker.deliverPushMessage), as the browser's push service would. Everything else is real.
FAKE_SUBSCRIBE_JS = """(subscription) => {
  const fake = { toJSON: () => subscription, endpoint: subscription.endpoint };
  PushManager.prototype.getSubscription = async () => null;
  PushManager.prototype.subscribe = async function (options) {
    window.__applicationServerKey = btoa(String.fromCharCode(...new Uint8Array(options.applicationServerKey)));
    return fake;
  };
}"""


def test_playground_notifies_when_done(browser: Browser, playground_emulator: Server) -> None:
    from app.relay.push.vapid import new_key_pem
    from tests.push_standins import Tally, WebPushStandin

    subject = "mailto:ops@falgate.test"
    web = WebPushStandin(Tally(), subject)
    pem, public_key = new_key_pem()
    web.vapid_public_key = public_key
    server = start_gateway(
        playground_emulator,
        FALGATE_PLAYGROUND="true",
        FALGATE_VAPID_PRIVATE_KEY=pem,
        FALGATE_VAPID_SUBJECT=subject,
        FALGATE_WEBHOOK_ALLOW_PRIVATE="true",
    )
    session = Session(browser, server.url, [server.url, playground_emulator.url])
    try:
        page = session.page
        session.context.grant_permissions(["notifications"], origin=server.url)
        subscription = web.browser().subscription()
        page.add_init_script(f"({FAKE_SUBSCRIBE_JS})({json.dumps(subscription)})")
        page.reload()
        cdp = session.context.new_cdp_session(page)
        registrations: list[str] = []
        cdp.on("ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(r["registrationId"] for r in e["registrations"]))
        cdp.send("ServiceWorker.enable")
        page.click("#notify")
        page.get_by_text("You will be notified").wait_for()
        assert page.evaluate("window.__applicationServerKey"), "subscribe() was given the gateway's VAPID key"
        devices = httpx.get(server.url + "/v1/devices").json()["devices"]
        assert [d["label"] for d in devices] == ["playground"]

        session.pick_model(KLING)
        session.pick_image(make_png(64, 64, 7), "cat.png")
        page.fill("#f-prompt", "a cat")
        status, _ = session.submit(KLING)
        assert status == 200
        [note] = web.tally.wait_accepted(1, timeout=30)
        assert note["data"]["video_url"] and note["data"]["status"] == "OK"
        assert registrations, "the service worker registered"
        cdp.send("ServiceWorker.deliverPushMessage", {"origin": server.url + "/", "registrationId": registrations[-1], "data": json.dumps(note)})
        shown = page.wait_for_function(
            """async () => {
                const notes = await (await navigator.serviceWorker.ready).getNotifications();
                return notes.length ? notes.map((n) => ({title: n.title, body: n.body, data: n.data})) : null;
            }""",
            timeout=10_000,
        ).json_value()
        assert shown == [{"title": note["title"], "body": note["body"], "data": note["data"]}]
        session.check_clean()
    finally:
        session.close()
        server.stop()
        web.close()


def _js_number(value: float) -> str:
    """A number as the page's template strings print it (JavaScript drops a float's trailing `.0`)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _quote_text(quote: dict) -> str:
    units, unit = quote["units"], quote["unit"]
    text = (f"Estimated cost: ${_js_number(quote['cost'])} ({_js_number(units)} {unit}{'' if units == 1 else 's'}"
            f" × ${_js_number(quote['unit_price'])} per {unit})")
    return text if quote["remaining"] is None else f"{text}. Remaining budget today: ${_js_number(quote['remaining'])}"


def test_playground_shows_a_live_quote(browser: Browser, playground_emulator: Server) -> None:
    from playwright.sync_api import Error as PlaywrightError

    emulator = playground_emulator
    server = start_gateway(emulator, FALGATE_PLAYGROUND="true", FALGATE_BUDGET_PER_DAY="10")
    httpx.delete(emulator.url + "/_control/requests").raise_for_status()
    session = Session(browser, server.url, [server.url, emulator.url])
    page = session.page
    quotes = lambda: [r for r in session.requests if "/v1/quote/" in r.url]  # noqa: E731
    try:
        session.pick_model(KLING)
        # The required image is missing: the gateway's 422 is shown, and the form stays usable.
        page.get_by_text("not priced: prompt Field required; image_url Field required").wait_for()
        assert page.is_enabled("#submit")
        image_url = emulator.url + "/storage/cat.png"
        page.fill("#f-prompt", "a cat")
        page.fill("#f-image_url", image_url)
        body = {"prompt": "a cat", "image_url": image_url}
        expected = httpx.post(f"{server.url}/v1/quote/{KLING}", json=body).json()
        assert expected["unit"] == "second" and expected["remaining"] == 10, expected
        page.wait_for_function("t => document.getElementById('quote').textContent === t", arg=_quote_text(expected))
        # A longer video: the shown cost follows the new quote.
        page.select_option("#f-duration", label="10")
        longer = httpx.post(f"{server.url}/v1/quote/{KLING}", json={**body, "duration": "10"}).json()
        assert longer["cost"] > expected["cost"], (longer, expected)
        page.wait_for_function("t => document.getElementById('quote').textContent === t", arg=_quote_text(longer))
        assert quotes()[-1].post_data_json == {**body, "duration": "10"}
        # An older answer arriving late never overwrites a newer one: hold the 10 s quote, pick 5 s, then let it go.
        held: list[Route] = []

        def hold_ten(route: Route) -> None:
            if not held and (route.request.post_data_json or {}).get("duration") == "10":
                held.append(route)
            else:
                route.continue_()

        shown = "t => document.getElementById('quote').textContent === t"
        page.route("**/v1/quote/**", hold_ten)
        page.select_option("#f-duration", index=0)  # 5 s, the default: left out of the body
        page.wait_for_function(shown, arg=_quote_text(expected))
        page.select_option("#f-duration", index=1)
        page.wait_for_timeout(500)  # past the debounce: the 10 s quote is asked for, and held
        assert len(held) == 1
        with page.expect_response(lambda r: "/v1/quote/" in r.url and r.request.post_data_json == body):
            page.select_option("#f-duration", index=0)
        try:
            held[0].continue_()  # the page aborted it: Chromium may refuse to send it at all
        except PlaywrightError:
            pass
        page.wait_for_timeout(500)
        assert page.inner_text("#quote") == _quote_text(expected)
        page.unroute("**/v1/quote/**")
        # Debounced: typing a word asks for one quote, not one per keystroke.
        before = len(quotes())
        page.locator("#f-prompt").press_sequentially(" sleeping", delay=20)
        page.wait_for_function("() => document.getElementById('quote').textContent.startsWith('Estimated')")
        page.wait_for_timeout(600)
        assert len(quotes()) - before == 1, [r.post_data_json for r in quotes()[before:]]
        # Quotes are reads: fal (the emulator) never saw a submit.
        seen = httpx.get(emulator.url + "/_control/requests").json()
        assert not [r for r in seen if r["method"] == "POST"], seen
        session.check_clean()
    finally:
        session.close()
        server.stop()
