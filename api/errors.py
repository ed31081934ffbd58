"""HTTP errors of the API and the one place domain errors become HTTP responses.

The API's own errors extend the project tree (:mod:`mesial.common.errors`)::

    MesialError
    └── ApiError                      a request refused by the API
        ├── Unauthenticated       401 no, bad, expired or revoked credential
        ├── Forbidden             403 the role may not call this route
        ├── NotFound              404 no such resource in the caller's organization
        ├── Conflict              409 the resource's state forbids it (e.g. job running)
        ├── LinkRefused           403 a signed link that is expired, altered or foreign
        ├── PayloadTooLarge       413 body above the route's limit
        ├── UnsupportedMediaType  415 not an STL, PLY or OBJ mesh
        ├── ValidationFailed      422 JSON or parameters that do not validate
        ├── RateLimited           429 too many requests for the key or the address
        └── Busy                  503 the job queue is full (retry later)

Every error body is ``{"error": {"code", "message", "request_id"}}``: no stack, no
internals. Unexpected exceptions become a bare 500 with the request id; the detail
goes to the log only.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.responses import JSONResponse

from mesial.common import errors as domain

log = logging.getLogger("mesial.api")


class ApiError(domain.MesialError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str = "", *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message or self.code.replace("_", " ")
        self.details = details


class Unauthenticated(ApiError):
    status, code = 401, "unauthenticated"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class LinkRefused(ApiError):
    status, code = 403, "link_refused"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    status, code = 422, "validation_failed"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests; retry after {retry_after} s")
        self.retry_after = retry_after


class Busy(ApiError):
    status, code = 503, "busy"


# Domain errors raised below the API → (status, code, message shown to the client).
# The message is fixed per class: the exception's own text may name keys or paths.
DOMAIN_MAP: dict[type[domain.MesialError], tuple[int, str, str]] = {
    domain.MesialError: (500, "internal", "internal error"),
    domain.ConfigurationError: (500, "internal", "internal error"),
    domain.ServiceError: (503, "unavailable", "a backing service is unavailable"),
    domain.ServiceStartError: (503, "unavailable", "a backing service is unavailable"),
    domain.VaultError: (500, "internal", "internal error"),
    domain.VaultUnavailable: (503, "unavailable", "the key service is unavailable; retry later"),
    domain.KeyNotFound: (410, "gone", "the organization's key no longer exists"),
    domain.KeyAccessDenied: (500, "internal", "internal error"),
    domain.CryptoError: (500, "internal", "internal error"),
    domain.UnsupportedFormat: (500, "internal", "stored data is unreadable"),
    domain.IntegrityError: (500, "internal", "stored data failed its integrity check"),
    domain.StorageError: (500, "internal", "internal error"),
    domain.StoreUnavailable: (503, "unavailable", "the object store is unavailable; retry later"),
    domain.ObjectNotFound: (404, "not_found", "not found"),
    domain.InvalidObjectKey: (404, "not_found", "not found"),
    domain.LegalHoldActive: (409, "legal_hold", "the resource is on legal hold"),
    domain.InputError: (422, "validation_failed", ""),  # InputError messages are written for users
    # a refused mesh (common/meshformat.py, the aligner's own checks): the reason, with the line
    domain.ScanInputError: (422, "validation_failed", ""),
    domain.ScanTooLarge: (413, "payload_too_large", ""),
    domain.UnsupportedScanFormat: (415, "unsupported_media_type", ""),
    domain.CorruptScan: (422, "validation_failed", ""),
    domain.EmptyScan: (422, "validation_failed", ""),
    domain.ImplausibleScale: (422, "validation_failed", ""),
    domain.NotADentalArch: (422, "validation_failed", ""),
}


def describe(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, error object, extra headers) for an exception; unknown ones are 500."""
    headers: dict[str, str] = {}
    if isinstance(exc, ApiError):
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.details:
            body["details"] = exc.details
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        return exc.status, body, headers
    if isinstance(exc, domain.MesialError):
        for klass in type(exc).__mro__:
            if klass in DOMAIN_MAP:
                status, code, message = DOMAIN_MAP[klass]
                return status, {"code": code, "message": message or str(exc)}, headers
    return 500, {"code": "internal", "message": "internal error"}, headers


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    status, body, headers = describe(exc)
    if status >= 500:
        log.error("request %s failed: %s", request_id, type(exc).__name__, exc_info=exc)
    body["request_id"] = request_id
    return JSONResponse({"error": body}, status_code=status, headers=headers)
