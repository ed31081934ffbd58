"""Mesial's domain errors, one tree for every component.

Errors are raised as these types inside the services and translated only at the
edges (HTTP status in the API, Temporary/Permanent in the operator, exit codes in
the CLI)::

    MesialError
    ├── ConfigurationError            settings that cannot work
    ├── ServiceError                  a real service could not be started or reached
    │   └── ServiceStartError         started, but not ready before its deadline
    ├── VaultError                    the key service failed
    │   ├── VaultUnavailable          down or slow past the retry budget (retry later)
    │   ├── KeyNotFound               no such tenant key (never created, or shredded)
    │   └── KeyAccessDenied           the credential may not use that key
    ├── CryptoError                   an envelope could not be sealed or opened
    │   ├── UnsupportedFormat         not an envelope, or a version we do not read
    │   └── IntegrityError            tampered, truncated, extended, reordered or misplaced
    ├── StorageError                  the object store failed
    │   ├── StoreUnavailable          down or slow past the retry budget (retry later)
    │   ├── ObjectNotFound            no such object
    │   ├── InvalidObjectKey          a key outside the tenant's prefix, or malformed
    │   └── LegalHoldActive           deletion refused: the object is on legal hold
    └── InputError                    user input refused (bad mesh, bad id)
        └── ScanInputError            a mesh file or array refused before any work (common/meshformat.py)
            ├── ScanTooLarge          file size or triangle count over the limit
            ├── UnsupportedScanFormat not STL (binary/ASCII), PLY or OBJ
            ├── CorruptScan           truncated, malformed (with the line), inconsistent, NaN/inf
            ├── EmptyScan             no usable triangle
            ├── ImplausibleScale      not the size of a dental scan in millimetres
            └── NotADentalArch        an arch scan too small, too sparse, too flat or not U-shaped
"""

from __future__ import annotations


class MesialError(Exception):
    """Base of every error Mesial raises on purpose."""


class ConfigurationError(MesialError):
    """Settings that cannot work together."""


class ServiceError(MesialError):
    """A real service (PostgreSQL, OpenBao, SeaweedFS) could not be started or reached."""


class ServiceStartError(ServiceError):
    """A service process started but did not become ready before its deadline."""

    def __init__(self, service: str, reason: str, log_tail: str = "") -> None:
        self.service = service
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(service, reason)

    def __str__(self) -> str:
        text = f"{self.service} did not start: {self.reason}"
        if self.log_tail:
            text += f"\n--- last lines of the {self.service} log ---\n{self.log_tail}"
        return text


class VaultError(MesialError):
    """The key service failed."""


class VaultUnavailable(VaultError):
    """Vault did not answer (down, sealed or slow) within the retry budget."""


class KeyNotFound(VaultError):
    """The tenant key does not exist: never created, or crypto-shredded."""

    def __init__(self, key_name: str) -> None:
        self.key_name = key_name
        super().__init__(key_name)

    def __str__(self) -> str:
        return f"transit key {self.key_name!r} does not exist (never created, or shredded)"


class KeyAccessDenied(VaultError):
    """The credential in use may not use that key."""


class CryptoError(MesialError):
    """An envelope could not be sealed or opened."""


class UnsupportedFormat(CryptoError):
    """Not a Mesial envelope, or a format version this build does not read."""


class IntegrityError(CryptoError):
    """Authentication failed: the data was changed, cut, extended, reordered, or belongs elsewhere."""


class StorageError(MesialError):
    """The object store failed."""


class StoreUnavailable(StorageError):
    """The object store did not answer within the retry budget."""


class ObjectNotFound(StorageError):
    """No object under that key."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)

    def __str__(self) -> str:
        return f"no object at {self.key!r}"


class InvalidObjectKey(StorageError):
    """A key that is malformed or outside the caller's tenant prefix."""


class LegalHoldActive(StorageError):
    """The object is on legal hold and may not be deleted."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)

    def __str__(self) -> str:
        return f"object {self.key!r} is on legal hold"


class InputError(MesialError, ValueError):
    """User input refused with a reason a person can act on."""


class ScanInputError(InputError):
    """A scan refused before any work, with the reason and the scan's role."""

    def __init__(self, reason: str, role: str = "") -> None:
        self.reason = reason
        self.role = role
        super().__init__(reason, role)

    def __str__(self) -> str:
        return f"{self.role} scan: {self.reason}" if self.role else self.reason


class ScanTooLarge(ScanInputError):
    """The file or its triangle count exceeds the configured limit."""


class UnsupportedScanFormat(ScanInputError):
    """The file is not an STL (binary or ASCII), PLY or OBJ mesh."""


class CorruptScan(ScanInputError):
    """Truncated, malformed or inconsistent data, or non-finite coordinates."""


class EmptyScan(ScanInputError):
    """No usable triangle."""


class ImplausibleScale(ScanInputError):
    """The bounding box is not that of a dental scan in millimetres."""

    def __init__(self, reason: str, role: str = "", suggested_unit: str | None = None) -> None:
        self.suggested_unit = suggested_unit
        super().__init__(reason, role)


class NotADentalArch(ScanInputError):
    """An upper or lower arch scan that is too small, too sparse, too flat or not U-shaped."""
