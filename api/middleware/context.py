"""Per-request context: the database context, the request id and the client address."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tortoise.context import _current_context

# Incoming ids are kept only in trace-id shapes (hex, UUID): they enter the audit chain,
# which takes no free text (a name in a header must not become part of the log).
_REQUEST_ID_RE = re.compile(r"^[0-9a-fA-F-]{8,64}$")


class DatabaseContext:
    """Makes the app's tortoise context current for each request (tortoise 1.x contexts)."""

    def __init__(self, app: ASGIApp, tortoise_context: Callable[[], Any]) -> None:
        self.app = app
        self.tortoise_context = tortoise_context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _current_context.set(self.tortoise_context())
        try:
            await self.app(scope, receive, send)
        finally:
            _current_context.reset(token)


class RequestContext:
    """Gives each request an id (an incoming hex/UUID ``X-Request-ID`` or a new one) and its client IP.

    ``X-Forwarded-For`` is believed only from ``trusted_proxies`` (the ingress); anyone
    else could write any address into it.
    """

    def __init__(self, app: ASGIApp, trusted_proxies: list[str]) -> None:
        self.app = app
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _client_ip(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        peer = (scope.get("client") or ("", 0))[0] or ""
        forwarded = headers.get(b"x-forwarded-for")
        if forwarded and self.trusted:
            try:
                peer_ip = ipaddress.ip_address(peer)
            except ValueError:
                return str(peer)
            if any(peer_ip in net for net in self.trusted):
                candidate = forwarded.decode("latin-1").split(",")[-1].strip()
                try:
                    return str(ipaddress.ip_address(candidate))
                except ValueError:
                    return str(peer)
        return str(peer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(12)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_ip"] = self._client_ip(scope, headers)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)
