"""Per-tenant keys in Vault's transit engine (OpenBao in local mode and tests).

Each Organization has one key-encryption key, ``mesial-org-<name>`` (``aes256-gcm96``, never
exportable, rotated by Vault on ``auto_rotate_period``). Objects are encrypted with a
fresh data key from ``transit/datakey``; only its wrapped form is stored. Deleting the
transit key (crypto-shredding) makes every wrapped data key of that tenant, and so every
copy of its data, unreadable.

Every call has a per-request timeout and a bounded number of attempts with exponential
backoff; past them a :class:`VaultUnavailable` is raised: Vault being down or slow never
hangs a caller. Vault's own errors are translated here, at the edge, into the tree of
:mod:`mesial.common.errors`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from mesial.common.errors import KeyAccessDenied, KeyNotFound, VaultError, VaultUnavailable
from mesial.common.settings import VaultAuth, VaultSettings
from mesial.common.tenancy import transit_key_for

T = TypeVar("T")

_WRAPPED_RE = re.compile(r"^vault:v(\d+):[A-Za-z0-9+/=]+$")
FINGERPRINT_LABEL = b"mesial-key-fingerprint-v1"


class _ServerError(Exception):
    """Vault, or a proxy in front of it, answered 5xx (hvac names only 500-503: a 504 was a VaultError)."""


def _raise_on_5xx(response: requests.Response, *_: Any, **__: Any) -> None:
    """A response hook of the client's session: every 5xx is ``_ServerError``, whatever its number."""
    if response.status_code >= 500:
        status = response.status_code
        response.close()
        raise _ServerError(f"HTTP {status}")


# Failures worth another attempt: the service is down, overloaded or slow.
_TRANSIENT: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    _ServerError,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
)


@dataclass(frozen=True)
class KeyInfo:
    """Public facts about a tenant key: never key material."""

    name: str
    latest_version: int
    min_decryption_version: int
    auto_rotate_period_s: int
    exportable: bool
    fingerprint: str


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: ``plaintext`` (32 bytes, keep in memory only) and its wrapped form."""

    plaintext: bytes
    wrapped: str
    key_version: int

    def __repr__(self) -> str:  # never print key material
        return f"DataKey(wrapped={self.wrapped[:16]}…, key_version={self.key_version})"


@dataclass(frozen=True)
class ShredReceipt:
    """What crypto-shredding a tenant key did, and the proof that it worked."""

    key_name: str
    versions_destroyed: int
    shredded_at: datetime
    proof: str


def key_version_of(wrapped: str) -> int:
    """The transit key version a wrapped value was made with (``vault:v<N>:...``)."""
    match = _WRAPPED_RE.fullmatch(wrapped)
    if match is None:
        raise VaultError("not a Vault transit ciphertext")
    return int(match.group(1))


class TenantKeys:
    """Transit keys of tenants and the audit signing key, through one Vault client."""

    def __init__(self, settings: VaultSettings, client: hvac.Client | None = None) -> None:
        self.settings = settings
        self.mount = settings.transit_mount
        self.client = client or self._login(settings)
        # on whichever client, ours or one handed in (provisioning shares ours): every 5xx is retried
        hooks = self.client.session.hooks["response"]
        if _raise_on_5xx not in hooks:
            hooks.append(_raise_on_5xx)

    # -- connection -------------------------------------------------------------------
    def _login(self, settings: VaultSettings) -> hvac.Client:
        verify: bool | str = str(settings.ca_cert) if settings.ca_cert else True
        client = hvac.Client(url=settings.addr, timeout=settings.timeout_s, verify=verify)
        client.session.hooks["response"].append(_raise_on_5xx)  # (before the login below, retried too)
        if settings.auth is VaultAuth.token:
            client.token = settings.token.get_secret_value()
        else:
            jwt = settings.service_account_token_path.read_text().strip()
            self._retrying(
                lambda: client.auth.kubernetes.login(
                    role=settings.kubernetes_role, jwt=jwt, mount_point=settings.kubernetes_mount
                ),
                what="kubernetes login",
            )
        return client

    def _retrying(self, call: Callable[[], T], *, what: str, key: str | None = None) -> T:
        """Run ``call`` with bounded attempts; translate Vault's errors into ours."""
        attempts = self.settings.max_attempts
        delay = self.settings.backoff_s
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except _TRANSIENT as exc:
                if attempt == attempts:
                    raise VaultUnavailable(
                        f"Vault at {self.settings.addr} did not answer {what} after {attempts} attempt(s): "
                        f"{type(exc).__name__}"
                    ) from exc
                time.sleep(delay)
                delay *= 2
            except hvac.exceptions.InvalidPath as exc:
                if key is not None:
                    raise KeyNotFound(key) from exc
                raise VaultError(f"{what}: no such path") from exc
            except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
                raise KeyAccessDenied(f"{what}: permission denied") from exc
            except hvac.exceptions.InvalidRequest as exc:
                text = str(exc).lower()
                if key is not None and ("not found" in text or "no existing key" in text):
                    raise KeyNotFound(key) from exc
                raise VaultError(f"{what}: {exc}") from exc
            except hvac.exceptions.VaultError as exc:
                raise VaultError(f"{what}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the transit engine -----------------------------------------------------------
    def ensure_transit(self) -> None:
        """Mount the transit engine at ``settings.transit_mount`` if it is not mounted.

        Reads only ``sys/mounts/<mount>``: a token of the shipped policies may not (the platform
        mounts transit), and then nothing is checked here; a missing mount shows in the first
        transit call. A token that may (local mode, a dev server) mounts it when missing.
        """

        def probe() -> str:
            try:
                self.client.adapter.get(f"/v1/sys/mounts/{self.mount}")
            except hvac.exceptions.Forbidden:
                return "not ours"  # least privilege: the mount is the platform's
            except hvac.exceptions.InvalidRequest as exc:  # "No secret engine mount at <mount>/"
                if "no secret engine mount" in str(exc).lower():
                    return "missing"
                raise
            return "mounted"

        if self._retrying(probe, what="read mount") == "missing":
            self._retrying(
                lambda: self.client.sys.enable_secrets_engine("transit", path=self.mount),
                what="enable transit",
            )

    # -- tenant keys ------------------------------------------------------------------
    def ensure_key(self, org: str) -> KeyInfo:
        """Create the tenant's key if missing (idempotent) and apply the rotation period."""
        name = transit_key_for(org)
        self._retrying(
            lambda: self.client.secrets.transit.create_key(
                name,
                key_type="aes256-gcm96",
                exportable=False,
                allow_plaintext_backup=False,
                auto_rotate_period=self.settings.key_rotation_period,
                mount_point=self.mount,
            ),
            what="create key",
            key=name,
        )
        # create_key on an existing key changes nothing: apply the period explicitly.
        self._retrying(
            lambda: self.client.secrets.transit.update_key_configuration(
                name, auto_rotate_period=self.settings.key_rotation_period, mount_point=self.mount
            ),
            what="configure key",
            key=name,
        )
        return self.key_info(org)

    def key_info(self, org: str) -> KeyInfo:
        """Version, rotation and a public fingerprint of the tenant key."""
        name = transit_key_for(org)
        data = self._read_key(name)
        latest = int(data["latest_version"])
        return KeyInfo(
            name=name,
            latest_version=latest,
            min_decryption_version=int(data["min_decryption_version"]),
            auto_rotate_period_s=_seconds(data.get("auto_rotate_period", 0)),
            exportable=bool(data.get("exportable", False)),
            fingerprint=self._fingerprint(name, latest),
        )

    def _read_key(self, name: str) -> dict[str, Any]:
        response = self._retrying(
            lambda: self.client.secrets.transit.read_key(name, mount_point=self.mount), what="read key", key=name
        )
        data: dict[str, Any] = response["data"]
        return data

    def _fingerprint(self, name: str, version: int) -> str:
        """An HMAC by the key version over a fixed label: identifies it, reveals nothing of it."""
        response = self._retrying(
            lambda: self.client.secrets.transit.generate_hmac(
                name,
                base64.b64encode(FINGERPRINT_LABEL).decode(),
                key_version=version,
                algorithm="sha2-256",
                mount_point=self.mount,
            ),
            what="fingerprint",
            key=name,
        )
        return hashlib.sha256(response["data"]["hmac"].encode()).hexdigest()[:32]

    def rotate(self, org: str) -> KeyInfo:
        """Add a new key version; new data keys use it, old wrapped keys still unwrap."""
        name = transit_key_for(org)
        self._retrying(
            lambda: self.client.secrets.transit.rotate_key(name, mount_point=self.mount), what="rotate", key=name
        )
        return self.key_info(org)

    def data_key(self, org: str) -> DataKey:
        """A fresh 256-bit data key, in plaintext and wrapped by the tenant key."""
        name = transit_key_for(org)
        response = self._retrying(
            lambda: self.client.secrets.transit.generate_data_key(
                name, key_type="plaintext", bits=256, mount_point=self.mount
            ),
            what="data key",
            key=name,
        )
        wrapped = response["data"]["ciphertext"]
        plaintext = base64.b64decode(response["data"]["plaintext"])
        if len(plaintext) != 32:
            raise VaultError(f"data key of {len(plaintext)} bytes, expected 32")
        return DataKey(plaintext=plaintext, wrapped=wrapped, key_version=key_version_of(wrapped))

    def unwrap(self, org: str, wrapped: str) -> bytes:
        """The plaintext data key of ``wrapped``; fails for another tenant's or a shredded key."""
        name = transit_key_for(org)
        key_version_of(wrapped)  # refuse garbage before it reaches Vault
        response = self._retrying(
            lambda: self.client.secrets.transit.decrypt_data(name, ciphertext=wrapped, mount_point=self.mount),
            what="unwrap",
            key=name,
        )
        try:
            plaintext = base64.b64decode(response["data"]["plaintext"], validate=True)
        except (binascii.Error, KeyError) as exc:
            raise VaultError("unwrap returned no data key") from exc
        if len(plaintext) != 32:
            raise VaultError("unwrap returned a value that is not a data key")
        return plaintext

    def rewrap(self, org: str, wrapped: str) -> str:
        """``wrapped`` re-encrypted under the newest key version (Vault never shows the key)."""
        name = transit_key_for(org)
        key_version_of(wrapped)
        response = self._retrying(
            lambda: self.client.secrets.transit.rewrap_data(name, ciphertext=wrapped, mount_point=self.mount),
            what="rewrap",
            key=name,
        )
        new: str = response["data"]["ciphertext"]
        return new

    def shred(self, org: str) -> ShredReceipt:
        """Crypto-shred the tenant key and prove that its data keys no longer unwrap.

        A probe data key is made before the deletion and must fail to unwrap after it.
        Idempotent: shredding a key that is already gone returns a receipt saying so.
        """
        name = transit_key_for(org)
        try:
            versions = int(self._read_key(name)["latest_version"])
            probe = self.data_key(org).wrapped
        except KeyNotFound:
            return ShredReceipt(name, 0, datetime.now(UTC), "key did not exist (already shredded)")
        self._retrying(
            lambda: self.client.secrets.transit.update_key_configuration(
                name, deletion_allowed=True, mount_point=self.mount
            ),
            what="allow deletion",
            key=name,
        )
        self._retrying(
            lambda: self.client.secrets.transit.delete_key(name, mount_point=self.mount), what="delete key", key=name
        )
        try:
            self.unwrap(org, probe)
        except KeyNotFound:
            proof = f"a data key wrapped by {name} v{key_version_of(probe)} no longer unwraps"
        else:  # pragma: no cover - would mean Vault kept the key
            raise VaultError(f"{name} was deleted but its data keys still unwrap")
        return ShredReceipt(name, versions, datetime.now(UTC), proof)

    # -- audit checkpoint signing -----------------------------------------------------
    def ensure_signing_key(self) -> None:
        """Create the ed25519 key that signs audit checkpoints (idempotent)."""
        name = self.settings.audit_signing_key
        self._retrying(
            lambda: self.client.secrets.transit.create_key(
                name, key_type="ed25519", exportable=False, mount_point=self.mount
            ),
            what="create signing key",
            key=name,
        )

    def sign(self, message: bytes) -> str:
        """Sign ``message`` with the audit key: ``vault:v<N>:<base64 signature>``."""
        name = self.settings.audit_signing_key
        response = self._retrying(
            lambda: self.client.secrets.transit.sign_data(
                name, hash_input=base64.b64encode(message).decode(), mount_point=self.mount
            ),
            what="sign",
            key=name,
        )
        signature: str = response["data"]["signature"]
        return signature

    def verify(self, message: bytes, signature: str) -> bool:
        """Ask Vault whether ``signature`` is the audit key's over ``message``."""
        name = self.settings.audit_signing_key
        try:
            response = self._retrying(
                lambda: self.client.secrets.transit.verify_signed_data(
                    name, hash_input=base64.b64encode(message).decode(), signature=signature, mount_point=self.mount
                ),
                what="verify",
                key=name,
            )
        except VaultError as exc:
            if isinstance(exc, VaultUnavailable | KeyNotFound):
                raise
            return False  # a malformed signature is an invalid one
        return bool(response["data"]["valid"])

    def public_keys(self) -> dict[int, str]:
        """The audit key's public keys by version (base64 raw ed25519), for offline verification."""
        data = self._read_key(self.settings.audit_signing_key)
        return {int(version): entry["public_key"] for version, entry in data["keys"].items()}


def _seconds(value: Any) -> int:
    """Vault reports ``auto_rotate_period`` as seconds (int) or a duration string."""
    if isinstance(value, int | float):
        return int(value)
    text = str(value)
    units = {"h": 3600, "m": 60, "s": 1}
    total = 0
    for amount, unit in re.findall(r"(\d+)([hms])", text):
        total += int(amount) * units[unit]
    return total
