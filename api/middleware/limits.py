"""Request body limits and rate limits (token buckets per address; per key in the routes).

Buckets live in the process: with several replicas each enforces its own share, which
bounds the total at replicas × rate. Addresses are those :mod:`.context` decided.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesial.api.errors import PayloadTooLarge, RateLimited


class RateLimiter:
    """Token buckets of ``per_minute`` tokens, refilled continuously, one per key (LRU-bounded)."""

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after(self, key: str, *, cost: float = 1.0, now: float | None = None) -> int:
        """Spend ``cost`` tokens of ``key``; 0 if allowed, else seconds until it would be."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            wait = 0
        else:
            self._buckets[key] = (tokens, now)
            wait = max(1, int((cost - tokens) / self.rate + 0.999))
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def exhausted(self, key: str, now: float | None = None) -> int:
        """Seconds until ``key`` has a token again (0 if it has one), without spending."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        return 0 if tokens >= 1 else max(1, int((1 - tokens) / self.rate + 0.999))

    def check(self, key: str) -> None:
        wait = self.retry_after(key)
        if wait:
            raise RateLimited(wait)


class IpRateLimit:
    """Every API request spends a token of its client address.

    Refused credentials and refused signed links also spend the address's tighter failure
    budget (in the routes, where the refusal is known): valid ones never do."""

    def __init__(self, app: ASGIApp, per_ip: RateLimiter) -> None:
        self.app = app
        self.per_ip = per_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and (path.startswith("/v1/") or path.startswith("/internal/")):
            self.per_ip.check(scope.get("state", {}).get("client_ip", ""))
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses bodies above the limit: at once by Content-Length, else while they stream."""

    def __init__(self, app: ASGIApp, default_limit: int, upload_limit: int, upload_paths: tuple[str, ...]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope.get("path") in self.upload_paths else self.default_limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise PayloadTooLarge("malformed Content-Length") from None
                if declared > limit:
                    raise PayloadTooLarge(f"body larger than {limit} bytes")
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"body larger than {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)
