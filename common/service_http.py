"""JSON POSTs to the API's internal endpoints with a service key (standard library: urllib in a thread).

The operator's audit sink and its job reports speak to the same API the same way; what
an HTTP error status means differs (the caller decides), so it is raised as
:class:`HttpRefused` with the status, and everything that got no answer at all as a plain
:class:`~mesial.common.errors.ServiceError`.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from mesial.common.errors import ServiceError


class HttpRefused(ServiceError):
    """The service answered with an HTTP error status (``code``); ``detail`` is its body's start."""

    def __init__(self, service: str, code: int, detail: str) -> None:
        super().__init__(f"{service} refused the request ({code}): {detail}")
        self.code = code
        self.detail = detail


def tls_context(base_url: str, cafile: str | None = None) -> ssl.SSLContext | None:
    """A verifying TLS context for an ``https`` URL (``cafile``: the service's CA), else None."""
    return ssl.create_default_context(cafile=cafile) if base_url.startswith("https") else None


def post_json(
    url: str, token: str, body: bytes, *, service: str, timeout_s: float, context: ssl.SSLContext | None
) -> dict[str, Any]:
    """POST ``body`` (JSON) with the bearer ``token``; the JSON answer.

    Raises :class:`HttpRefused` on an HTTP error status, ``ServiceError`` when nothing
    (or no JSON) came back.
    """
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise HttpRefused(service, exc.code, exc.read()[:500].decode(errors="replace")) from exc
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise ServiceError(f"{service} unreachable: {type(exc).__name__}") from exc
