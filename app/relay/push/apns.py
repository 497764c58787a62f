"""Apple Push Notification service: the provider API over HTTP/2 with token-based authentication.

`POST {FALGATE_APNS_URL}/3/device/{token}` with `authorization: bearer <JWT>`: an ES256 JWT signed with
the team's `.p8` key (header `kid`, claims `iss` = team id and `iat`). Apple refuses a token older than
an hour and throttles one renewed more often than every 20 minutes, so it is renewed every 40.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from app.ops.logs import register_secret
from app.relay.push.result import PushResult, from_status, timed, transport_failure
from app.relay.push.tls import push_ssl_context

_TOKEN_LIFETIME = 40 * 60
# At DEBUG, hpack logs every header it encodes, `:path` (the device token) included: never below WARNING.
for _name in ("hpack", "h2"):
    logging.getLogger(_name).setLevel(logging.WARNING)
_DEAD_REASONS = frozenset({"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"})


class ApnsSender:
    def __init__(self, key_file: str, key_id: str, team_id: str, topic: str, base_url: str, ca_file: str | None) -> None:
        self._key = Path(key_file).read_text()
        register_secret(self._key)
        self._key_id = key_id
        self._team_id = team_id
        self._topic = topic
        self._base_url = base_url
        self._http = httpx.AsyncClient(http2=True, verify=push_ssl_context(ca_file), trust_env=False, timeout=10.0)
        self._jwt: tuple[str, float] | None = None

    def _provider_token(self) -> str:
        now = time.time()
        if self._jwt is None or now - self._jwt[1] > _TOKEN_LIFETIME:
            token = jwt.encode({"iss": self._team_id, "iat": int(now)}, self._key, "ES256", {"kid": self._key_id})
            self._jwt = (token, now)
        return self._jwt[0]

    async def send(self, token: str, note: dict[str, Any]) -> PushResult:
        started = time.monotonic()
        payload = {"aps": {"alert": {"title": note["title"], "body": note["body"]}, "sound": "default"}, **note["data"]}
        headers = {
            "authorization": f"bearer {self._provider_token()}",
            "apns-topic": self._topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
        }
        try:
            response = await self._http.post(f"{self._base_url}/3/device/{token}", json=payload, headers=headers)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return timed(transport_failure(exc), started)
        reason = _reason(response)
        if reason == "ExpiredProviderToken":
            self._jwt = None  # the next attempt signs afresh
        dead = response.status_code == 410 or reason in _DEAD_REASONS
        result = from_status(response, dead=dead, reason=reason)
        if reason == "ExpiredProviderToken":
            result = PushResult(False, result.status_code, result.error)  # retried with a new token
        return timed(result, started)

    async def aclose(self) -> None:
        await self._http.aclose()


def _reason(response: httpx.Response) -> str | None:
    if response.status_code < 300:
        return None
    try:
        reason = response.json().get("reason")
    except ValueError:
        return None
    return reason if isinstance(reason, str) else None
