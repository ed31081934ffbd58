"""Turns any exception into a sanitized JSON error with the request id (never a traceback)."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesial.api.errors import error_response

log = logging.getLogger("mesial.api")


class ErrorBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = scope.get("state", {}).get("request_id", "")
            if started:  # the client already has a status: cut the stream, log the cause
                log.error("request %s failed mid-response: %s", request_id, type(exc).__name__)
                raise
            await error_response(exc, request_id)(scope, receive, send)
