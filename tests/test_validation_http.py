"""Every invalid body is refused with fal's 422 shape before a credit is spent; boundary values pass."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Upstream
from tests.invalid_bodies import BOUNDARY_BODIES, INVALID_BODIES


def _case_id(case: tuple) -> str:
    model_id, _, loc = case[0], case[1], case[2]
    return f"{model_id.split('/')[1]}-{'.'.join(map(str, loc))}"


@pytest.mark.parametrize("case", INVALID_BODIES, ids=[_case_id(c) for c in INVALID_BODIES])
def test_invalid_body_is_422_and_not_forwarded(client: httpx.Client, upstream: Upstream, case: tuple) -> None:
    model_id, body, loc = case
    upstream.clear()
    response = client.post(f"/{model_id}", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert any(tuple(err["loc"]) == tuple(loc) for err in detail), detail
    for err in detail:
        assert set(err) == {"loc", "msg", "type"}
    assert upstream.count() == 0


@pytest.mark.parametrize("case", BOUNDARY_BODIES, ids=[c[0].split("/")[1] for c in BOUNDARY_BODIES])
def test_boundary_body_passes(client: httpx.Client, case: tuple) -> None:
    model_id, body = case
    response = client.post(f"/{model_id}", json=body)
    assert response.status_code == 200, response.text
