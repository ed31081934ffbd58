"""How ``mesial api serve`` runs the app: uvicorn over h11, with its own error answers hardened.

uvicorn answers a request it cannot parse (bad request line, malformed header, oversized
headers) with a 400 of its own, before the app sees anything, so the app's security
headers middleware never touches it. :class:`HardenedH11Protocol` adds the same headers
(:data:`mesial.api.middleware.headers.SECURITY_HEADERS`) to that answer.
"""

from __future__ import annotations

from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mesial.api.middleware.headers import SECURITY_HEADERS


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol whose own 400 carries the security headers."""

    def send_400_response(self, msg: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"), *SECURITY_HEADERS]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=msg.encode("ascii"))))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


def server_config(app: Any, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``mesial api serve`` (tests start the same one)."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,  # X-Forwarded-For is judged by the app (trusted proxies only)
        "server_header": False,
        "http": HardenedH11Protocol,
        **overrides,
    }
    return uvicorn.Config(app, **options)
