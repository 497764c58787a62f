"""Firebase Cloud Messaging, HTTP v1: `POST {FALGATE_FCM_URL}/v1/projects/{project}/messages:send`.

The OAuth2 access token comes from google-auth's service-account credentials (a JWT grant signed RS256
with the account's key, sent to the file's own `token_uri`); google-auth refreshes it before it expires.
google-auth's refresh is synchronous, so it runs on a worker thread (`asyncio.to_thread`) through a
small httpx transport adapter (google-auth's own transports need `requests` or `urllib3`, neither of
which the gateway otherwise uses). A lock keeps concurrent sends to one refresh.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx
from google.auth import exceptions as google_exceptions
from google.auth import transport as google_transport
from google.oauth2 import service_account

from app.ops.logs import register_secret
from app.relay.push.result import PushResult, from_status, timed, transport_failure
from app.relay.push.tls import push_ssl_context

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class _Response(google_transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxRequest(google_transport.Request):
    """google-auth's transport interface on a synchronous httpx client (called on a worker thread)."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs) -> _Response:  # noqa: ANN001
        try:
            response = self._client.request(method, url, content=body, headers=headers, timeout=timeout or 10.0)
        except httpx.HTTPError as exc:
            raise google_exceptions.TransportError(type(exc).__name__) from None
        return _Response(response)


class FcmSender:
    def __init__(self, credentials_file: str, base_url: str, ca_file: str | None) -> None:
        with open(credentials_file) as f:
            info = json.load(f)
        register_secret(info.get("private_key"))
        self._credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self._project = self._credentials.project_id
        if not self._project:
            raise ValueError("FALGATE_FCM_CREDENTIALS: the service-account file has no project_id")
        self._url = f"{base_url}/v1/projects/{self._project}/messages:send"
        context = push_ssl_context(ca_file)
        self._sync = httpx.Client(verify=context, trust_env=False, timeout=10.0)
        self._http = httpx.AsyncClient(verify=context, trust_env=False, timeout=10.0)
        self._lock = asyncio.Lock()

    async def _token(self, *, force: bool = False) -> str:
        async with self._lock:
            if force or not self._credentials.valid:
                await asyncio.to_thread(self._credentials.refresh, _HttpxRequest(self._sync))
                register_secret(self._credentials.token)  # scrubbed from any log line from now on
            return str(self._credentials.token)

    async def send(self, token: str, note: dict[str, Any]) -> PushResult:
        started = time.monotonic()
        message = {
            "message": {
                "token": token,
                "notification": {"title": note["title"], "body": note["body"]},
                "data": note["data"],
            }
        }
        try:
            result = await self._post(message, force=False)
            if result.status_code == 401:  # revoked or expired early: one fresh token, then the verdict
                result = await self._post(message, force=True)
        except google_exceptions.GoogleAuthError as exc:
            result = PushResult(False, None, f"oauth_failed: {type(exc).__name__}")
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            result = transport_failure(exc)
        return timed(result, started)

    async def _post(self, message: dict, *, force: bool) -> PushResult:
        access = await self._token(force=force)
        response = await self._http.post(self._url, json=message, headers={"authorization": f"Bearer {access}"})
        code = _error_code(response)
        return from_status(response, dead=code == "UNREGISTERED", reason=code)

    async def aclose(self) -> None:
        await self._http.aclose()
        self._sync.close()


def _error_code(response: httpx.Response) -> str | None:
    """FCM's errorCode from `error.details[]` (UNREGISTERED, QUOTA_EXCEEDED, ...), or its `error.status`."""
    if response.status_code < 400:
        return None
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return detail["errorCode"]
    status = error.get("status")
    return status if isinstance(status, str) else None

