"""The playground's form for a configured model (FALGATE_MODELS): built from fal's own document, in its
x-fal-order-properties order, with nested objects and arrays as JSON fields, in a real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.servers import Server, start_emulator, start_gateway
from tests.test_configured_models import FIXTURES, IMAGE, KLING, VEO
from tests.test_playground import Session, browser  # noqa: F401 - the browser fixture

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def models_playground() -> Iterator[tuple[Server, Server]]:
    emulator = start_emulator(job_seconds=1.0)
    server = start_gateway(emulator, FALGATE_PLAYGROUND="true", FALGATE_MODELS=f"{VEO},{KLING}",
                           FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi"))
    yield server, emulator
    server.stop()
    emulator.stop()


def test_form_for_a_configured_model(browser: Browser, models_playground: tuple[Server, Server]) -> None:  # noqa: F811
    server, emulator = models_playground
    session = Session(browser, server.url, [server.url, emulator.url])
    try:
        session.pick_model(VEO)
        names = session.page.eval_on_selector_all("#fields [data-field]", "rows => rows.map(r => r.dataset.field)")
        assert names == ["prompt", "image_url", "aspect_ratio", "duration", "generate_audio", "resolution",
                         "guidance_scale", "reference_image_urls", "sampling", "seed"]
        assert session.fields("sampling").get_attribute("data-kind") == "json"
        assert session.fields("duration").get_attribute("data-kind") == "enum"
        assert session.fields("guidance_scale").get_attribute("data-kind") == "number"  # anyOf [number, null]
        session.page.fill("#f-prompt", "a woman laughs")
        session.page.fill("#f-image_url", IMAGE)
        session.page.wait_for_function("() => document.getElementById('quote').textContent.startsWith('Estimated')")
        quotes = len([r for r in session.requests if "/v1/quote/" in r.url])
        session.page.fill("#f-sampling", "{not json")
        # No live quote for a body that is not JSON yet: the page says why instead.
        session.page.get_by_text("Not priced until sampling is valid JSON.").wait_for()
        session.page.wait_for_timeout(500)
        assert len([r for r in session.requests if "/v1/quote/" in r.url]) == quotes
        session.page.click("#submit")
        assert session.page.inner_text("#f-sampling-error") == "Not valid JSON"
        # A nested value the gateway refuses: its 422 lands on the field it belongs to.
        session.page.fill("#f-sampling", '{"steps": 20, "keyframes": [{"timestamp": 99}]}')
        status, body = session.submit(VEO)
        assert status == 422
        assert body["sampling"] == {"steps": 20, "keyframes": [{"timestamp": 99}]}
        assert "less than or equal to 8" in session.page.inner_text("#f-sampling-error")
        session.page.fill("#f-sampling", '{"steps": 20, "keyframes": [{"timestamp": 1.5}]}')
        session.page.fill("#f-reference_image_urls", f'["{IMAGE}"]')
        status, body = session.submit(VEO)
        assert status == 200, body
        assert body["reference_image_urls"] == [IMAGE]
        session.page.wait_for_selector('#run[data-state="completed"]')
        # An object-or-preset union (Kling's camera control) is a JSON field too: a preset is typed as a string.
        session.pick_model(KLING)
        assert session.fields("camera_control").get_attribute("data-kind") == "json"
        session.check_clean()
    finally:
        session.close()
