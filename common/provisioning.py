"""The tenancy service's Vault side: a tenant's transit key and its login role.

For an Organization ``<org>`` this keeps, idempotently:

- the transit key ``mesial-org-<org>`` (``aes256-gcm96``, never exportable, auto-rotated), named as
  the tenant namespace;
- the Kubernetes-auth role ``mesial-org-<org>`` bound to the tenant's aligner ServiceAccount in the
  tenant namespace, with the Vault audience, granting the one fixed aligner policy
  (``operator.vault_aligner_policy``, the chart's ``files/vault/aligner-policy.hcl``). That policy is
  templated on the login's Kubernetes alias (the ServiceAccount's namespace names the key), so a
  Job's token reaches its own tenant's key only. The operator writes no policy.

``provision`` reports what it had to create or correct (drift), ``revoke_access`` removes
the role, and shredding the key is :meth:`TenantKeys.shred`. The calls are
synchronous (hvac); async callers use ``asyncio.to_thread``. The operator and the local
mode both call this service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac.exceptions

from mesial.common.errors import VaultError
from mesial.common.settings import OperatorSettings, VaultSettings
from mesial.common.tenancy import namespace_for, transit_key_for, validate_org_name
from mesial.common.vault import KeyInfo, ShredReceipt, TenantKeys

DEFAULT_POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"
ROLE_TOKEN_TTL = "1h"


def role_name_for(org: str) -> str:
    """The Kubernetes-auth role name of an Organization's aligner Jobs."""
    return f"mesial-org-{validate_org_name(org)}"


@dataclass(frozen=True)
class VaultTenant:
    """What Vault holds for a tenant after ``provision``, and what had to be fixed."""

    key: KeyInfo
    policy: str  # the fixed aligner policy the role grants (not the tenant's: there is none)
    role: str
    corrected: list[str] = field(default_factory=list)


class TenantProvisioner:
    """Creates, checks and removes a tenant's key and login role in Vault."""

    def __init__(self, keys: TenantKeys, vault: VaultSettings, operator: OperatorSettings) -> None:
        self.keys = keys
        self.vault = vault
        self.operator = operator
        self.client: hvac.Client = keys.client
        self.auth_mount = vault.kubernetes_mount
        self._auth_ready = False

    def _call(self, call: Any, *, what: str, key: str | None = None) -> Any:
        # The retry budget and error translation of TenantKeys, shared on purpose.
        return self.keys._retrying(call, what=what, key=key)

    # -- the role -------------------------------------------------------------------------
    def desired_role(self, org: str, service_account: str) -> dict[str, Any]:
        return {
            "bound_service_account_names": [service_account],
            "bound_service_account_namespaces": [namespace_for(validate_org_name(org))],
            "policies": [self.operator.vault_aligner_policy],
            "audience": self.operator.vault_token_audience,
            "ttl": ROLE_TOKEN_TTL,
        }

    # -- the auth method --------------------------------------------------------------------
    def ensure_kubernetes_auth(self) -> None:
        """Mount transit and enable the kubernetes auth method if missing; configure it on a dev server if asked."""
        if self._auth_ready:
            return
        self.keys.ensure_transit()

        def probe() -> str:  # only sys/auth/<mount>: the shipped operator policy has no sys/ path
            try:
                self.client.adapter.get(f"/v1/sys/auth/{self.auth_mount}")
            except hvac.exceptions.Forbidden:
                return "not ours"  # the platform team mounts and configures the auth method
            except hvac.exceptions.InvalidRequest as exc:  # "No auth engine at <mount>/"
                if "no auth engine" in str(exc).lower():
                    return "missing"
                raise
            return "mounted"

        if self._call(probe, what="read auth method") == "missing":
            self._call(
                lambda: self.client.sys.enable_auth_method("kubernetes", path=self.auth_mount),
                what="enable kubernetes auth",
            )
        if self.operator.vault_configure_kubernetes_auth:
            try:
                config = self._call(
                    lambda: self.client.auth.kubernetes.read_config(mount_point=self.auth_mount),
                    what="read kubernetes auth config",
                )
                configured = bool((config or {}).get("kubernetes_host"))
            except VaultError:
                configured = False
            if not configured:
                self._call(
                    lambda: self.client.auth.kubernetes.configure(
                        kubernetes_host=self.operator.vault_kubernetes_host,
                        kubernetes_ca_cert=self.operator.vault_kubernetes_ca_cert or _throwaway_ca(),
                        disable_local_ca_jwt=True,
                        mount_point=self.auth_mount,
                    ),
                    what="configure kubernetes auth",
                )
        self._auth_ready = True

    # -- provisioning -------------------------------------------------------------------
    def provision(self, org: str, *, service_account: str, rotation_period: str) -> VaultTenant:
        """Create or correct the tenant's key and role; idempotent."""
        self.ensure_kubernetes_auth()
        corrected: list[str] = []
        keys = TenantKeys(self.vault.model_copy(update={"key_rotation_period": rotation_period}), self.client)
        try:
            before: KeyInfo | None = keys.key_info(org)
        except VaultError:
            before = None
        if before is None:
            corrected.append(f"transit key {transit_key_for(org)} was missing")
            info = keys.ensure_key(org)
        elif before.auto_rotate_period_s != _period_s(rotation_period):
            info = keys.ensure_key(org)
            if before.auto_rotate_period_s != info.auto_rotate_period_s:
                corrected.append(f"rotation period of {info.name} set to {rotation_period}")
        else:
            info = before  # as wanted: no create, configure and re-read (4 Vault calls) on every drift pass
        name = role_name_for(org)
        desired = self.desired_role(org, service_account)
        if not self._role_matches(name, desired):
            corrected.append(f"Vault role {name} was missing or edited")
            # Single names as strings, not lists: the operator's Vault policy globs string
            # values only (mesial-org-*) and pins the policy, and hvac's create_role would send lists.
            body = {field: ",".join(value) if isinstance(value, list) else value for field, value in desired.items()}
            self._call(
                lambda: self.client.adapter.post(f"/v1/auth/{self.auth_mount}/role/{name}", json=body),
                what="write role",
            )
        return VaultTenant(key=info, policy=self.operator.vault_aligner_policy, role=name, corrected=corrected)

    def _role_matches(self, name: str, desired: dict[str, Any]) -> bool:
        try:
            response = self._call(
                lambda: self.client.auth.kubernetes.read_role(name, mount_point=self.auth_mount), what="read role"
            )
        except (VaultError, hvac.exceptions.InvalidPath):
            return False
        data = response.get("data", response) if isinstance(response, dict) else {}
        return bool(
            sorted(data.get("bound_service_account_names") or []) == desired["bound_service_account_names"]
            and sorted(data.get("bound_service_account_namespaces") or [])
            == desired["bound_service_account_namespaces"]
            and sorted(data.get("token_policies") or data.get("policies") or []) == desired["policies"]
            and data.get("audience", "") == desired["audience"]
        )

    # -- deprovisioning -------------------------------------------------------------------
    def revoke_access(self, org: str) -> None:
        """Delete the tenant's login role (idempotent): its Jobs can no longer log in."""
        self.ensure_kubernetes_auth()
        name = role_name_for(org)
        try:
            self._call(
                lambda: self.client.auth.kubernetes.delete_role(name, mount_point=self.auth_mount), what="delete role"
            )
        except VaultError as exc:
            if "no such path" not in str(exc):
                raise

    def shred(self, org: str) -> ShredReceipt:
        """Crypto-shred the tenant key, with proof (idempotent)."""
        return self.keys.shred(org)


def _period_s(period: str) -> int | None:
    """Seconds of a Vault duration such as ``720h`` or ``1h30m`` (None: not understood)."""
    text = period.strip()
    if text.isdigit():
        return int(text)
    if not re.fullmatch(r"(\d+[hms])+", text):
        return None
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(amount) * units[unit] for amount, unit in re.findall(r"(\d+)([hms])", text))


def _throwaway_ca() -> str:
    """A self-signed certificate for a dev server's kubernetes auth config (no cluster behind it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesial-dev-kubernetes-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()
