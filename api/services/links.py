"""Signed, time-limited download links, each scoped to one artifact of one tenant.

A link token is ``<payload>.<mac>``: the payload (base64url JSON) names the tenant, the
job, the artifact, the expiry and the key that asked for it; the MAC is HMAC-SHA256
under the API's link secret. Changing any byte breaks the MAC; an expired link is
refused; the artifact is then looked up *within the tenant the token names*, so a
token cannot reach another tenant's data even with a valid MAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass

from mesial.api.errors import LinkRefused

_DOMAIN = b"mesial-artifact-link-v1\x00"


@dataclass(frozen=True)
class LinkClaims:
    org_id: str
    job_id: str
    artifact: str
    expires: int
    issued_by: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    def __init__(self, secret: bytes | None, ttl_s: int) -> None:
        self.secret = secret or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, _DOMAIN + payload.encode(), hashlib.sha256).digest())

    def sign(self, org_id: str, job_id: str, artifact: str, issued_by: str, now: float | None = None) -> LinkClaims:
        # rounded up to the whole second the token carries: a link opens for ttl_s at least (int() took up to a
        # second off it)
        expires = math.ceil((now if now is not None else time.time()) + self.ttl_s)
        return LinkClaims(org_id, job_id, artifact, expires, issued_by)

    def token(self, claims: LinkClaims) -> str:
        payload = _b64(
            json.dumps(
                {
                    "o": claims.org_id,
                    "j": claims.job_id,
                    "a": claims.artifact,
                    "e": claims.expires,
                    "k": claims.issued_by,
                },
                separators=(",", ":"),
            ).encode()
        )
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, now: float | None = None) -> LinkClaims:
        """The claims of an authentic link that has not expired; else :class:`LinkRefused`."""
        claims = self.authentic(token)
        if expired(claims, now):
            raise LinkRefused("link has expired")
        return claims

    def authentic(self, token: str) -> LinkClaims:
        """The claims of a link this API signed, expired or not (its tenant can be trusted)."""
        # Tokens are URL-safe base64: anything else is refused before compare_digest,
        # which raises on non-ASCII text.
        if not token.isascii():
            raise LinkRefused("link is invalid")
        payload, dot, mac = token.partition(".")
        if not dot or not hmac.compare_digest(self._mac(payload), mac):
            raise LinkRefused("link is invalid")
        try:
            data = json.loads(_unb64(payload))
            claims = LinkClaims(str(data["o"]), str(data["j"]), str(data["a"]), int(data["e"]), str(data["k"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise LinkRefused("link is invalid") from None
        return claims


def expired(claims: LinkClaims, now: float | None = None) -> bool:
    return (now if now is not None else time.time()) >= claims.expires
