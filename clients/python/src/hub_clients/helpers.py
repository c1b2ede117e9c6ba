"""Small helpers for talking to a hub from Python (standard library only).

- `connection_token(sub, secret)`: an HS256 connection token, as the hub's `token_hmac_secret`
  expects (docs/protocol.md, "Authentication"), for any Centrifuge SDK (centrifuge-python).
- `HubAPI(url, api_key)`: the server API (`POST /api/<method>`, docs/protocol.md, "Server API"):
  publish, broadcast, history, presence, info, … — the same calls `cent` makes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def connection_token(sub: str, secret: str, ttl: Optional[int] = 3600, **claims: Any) -> str:
    """An HS256 JWT for user `sub` (extra claims: `channels`, `info`, …); ttl=None: no expiry."""
    body: Dict[str, Any] = {"sub": sub, **claims}
    if ttl is not None:
        body["exp"] = int(time.time()) + ttl
    signing_input = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(body).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


class HubAPIError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HubAPI:
    """The hub's server API. Every method returns the call's `result` or raises HubAPIError."""

    def __init__(self, url: str = "http://localhost:8000", api_key: str = "", timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/api/{method}", data=json.dumps(params or {}).encode(), method="POST",
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise HubAPIError(error.code, error.read().decode(errors="replace")) from None
        if "error" in answer:
            raise HubAPIError(answer["error"].get("code", 0), answer["error"].get("message", ""))
        return answer.get("result", {})

    def publish(self, channel: str, data: Any) -> Dict[str, Any]:
        return self.call("publish", {"channel": channel, "data": data})

    def broadcast(self, channels: list, data: Any) -> Dict[str, Any]:
        return self.call("broadcast", {"channels": channels, "data": data})

    def history(self, channel: str, limit: int = 10, reverse: bool = False) -> Dict[str, Any]:
        return self.call("history", {"channel": channel, "limit": limit, "reverse": reverse})

    def presence(self, channel: str) -> Dict[str, Any]:
        return self.call("presence", {"channel": channel}).get("presence", {})

    def presence_stats(self, channel: str) -> Dict[str, Any]:
        return self.call("presence_stats", {"channel": channel})

    def info(self) -> Dict[str, Any]:
        return self.call("info")
