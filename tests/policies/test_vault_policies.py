"""Every Vault call of each component, with a token holding exactly its shipped policy.

The API's and the operator's policies are the chart's own (``charts/mesial/files/vault/*.hcl``,
rendered by ``helm template`` with the values under test); the aligner Job's is the tenant
policy the operator writes (``policies/vault/tenant-policy.hcl.tmpl``) behind the login role it
writes. Vault is the real OpenBao of the test run, set up as the platform team does it
(docs/install.md): transit and the Kubernetes auth method mounted at the values' paths, the
policies written as rendered. Tokens carry the one policy and not even ``default``.
Non-default mounts, audit key and audience prove that the values reach the policies.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import hvac
import hvac.exceptions
import pytest
import yaml

from mesial.common import services as svc
from mesial.common.errors import KeyAccessDenied, KeyNotFound
from mesial.common.provisioning import TenantProvisioner, policy_name_for
from mesial.common.settings import OperatorSettings, Settings, VaultSettings
from mesial.common.vault import TenantKeys

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesial"

VALUE_SETS = {
    "defaults": {},
    "custom": {
        "vault.transitMount": "kms/mesial",
        "vault.kubernetesMount": "k8s-prod",
        "vault.auditSigningKey": "audit-checkpoints",
        "vault.tokenAudience": "https://vault.example.com",
    },
}


def chart_policies(helm: Path, values: dict[str, str]) -> dict[str, str]:
    """The policies the chart renders for ``values``: {"api": hcl, "operator": hcl}."""
    sets = [arg for key, value in values.items() for arg in ("--set-string", f"{key}={value}")]
    out = subprocess.run(
        [str(helm), "template", "rel", str(CHART), "--show-only", "templates/vault-policies.yaml", *sets],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = yaml.safe_load(out)["data"]
    return {name.removesuffix(".hcl"): text for name, text in data.items()}


def value(values: dict[str, str], key: str) -> str:
    defaults = {
        "vault.transitMount": "transit",
        "vault.kubernetesMount": "kubernetes",
        "vault.auditSigningKey": "mesial-audit",
        "vault.tokenAudience": "vault",
    }
    return values.get(key, defaults[key])


@dataclass
class Platform:
    """OpenBao as the platform team leaves it, and a token per component."""

    root: hvac.Client
    url: str
    values: dict[str, str]
    tokens: dict[str, str]

    def vault(self, token: str) -> VaultSettings:
        return VaultSettings(
            addr=self.url,
            token=token,
            transit_mount=value(self.values, "vault.transitMount"),
            kubernetes_mount=value(self.values, "vault.kubernetesMount"),
            audit_signing_key=value(self.values, "vault.auditSigningKey"),
            backoff_s=0.05,
            max_attempts=2,
        )

    def keys(self, component: str) -> TenantKeys:
        return TenantKeys(self.vault(self.tokens[component]))

    def client(self, component: str) -> hvac.Client:
        return hvac.Client(url=self.url, token=self.tokens[component])

    def token_for(self, *policies: str) -> str:
        created = self.root.auth.token.create(policies=list(policies), no_default_policy=True, ttl="1h")
        token: str = created["auth"]["client_token"]
        return token

    def provisioner(self) -> TenantProvisioner:
        # As the chart runs the operator: the platform configures the auth method, not the operator.
        operator = OperatorSettings(
            vault_token_audience=value(self.values, "vault.tokenAudience"), vault_configure_kubernetes_auth=False
        )
        vault = self.vault(self.tokens["operator"])
        return TenantProvisioner(TenantKeys(vault), vault, operator)


@pytest.fixture(params=sorted(VALUE_SETS), scope="module")
def platform(request: pytest.FixtureRequest, openbao: svc.ServiceInfo, k8s_tools: dict[str, Path]) -> Platform:
    values = VALUE_SETS[request.param]
    root = hvac.Client(url=openbao.url, token=openbao.credentials["root_token"])
    transit, auth = value(values, "vault.transitMount"), value(values, "vault.kubernetesMount")
    if f"{transit}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit", path=transit)
    if f"{auth}/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("kubernetes", path=auth)
    tokens = {}
    for component, hcl in chart_policies(k8s_tools["helm"], values).items():
        name = f"policy-test-{request.param}-{component}"
        root.sys.create_or_update_acl_policy(name, hcl)
        tokens[component] = root.auth.token.create(policies=[name], no_default_policy=True, ttl="1h")["auth"][
            "client_token"
        ]
    assert sorted(tokens) == ["api", "operator"]
    return Platform(root=root, url=openbao.url, values=values, tokens=tokens)


def org_name() -> str:
    return f"pol-{secrets.token_hex(4)}"


def denied(call: Any) -> bool:
    try:
        call()
    except (hvac.exceptions.Forbidden, KeyAccessDenied):
        return True
    return False


def test_the_api_starts_creates_an_organization_seals_rewraps_and_signs(platform: Platform) -> None:
    keys = platform.keys("api")
    for _ in range(2):  # a first start creates the audit key, a restart finds it
        keys.ensure_transit()
        keys.ensure_signing_key()
    org = org_name()
    info = keys.ensure_key(org)  # POST /v1/orgs
    assert info.name == f"org-{org}" and info.latest_version == 1 and not info.exportable
    data_key = keys.data_key(org)
    assert keys.unwrap(org, data_key.wrapped) == data_key.plaintext
    # Vault rotates the key on its own (auto_rotate_period); the API rewraps to the new version.
    platform.root.secrets.transit.rotate_key(f"org-{org}", mount_point=platform.vault("").transit_mount)
    rewrapped = keys.rewrap(org, data_key.wrapped)
    assert rewrapped.startswith("vault:v2:") and keys.unwrap(org, rewrapped) == data_key.plaintext
    assert keys.key_info(org).latest_version == 2
    signature = keys.sign(b"checkpoint")
    assert keys.verify(b"checkpoint", signature) and not keys.verify(b"tampered", signature)
    assert list(keys.public_keys()) == [1]

    # What the API cannot do: delete, export, back up, retire versions, touch sys/.
    client, transit = platform.client("api"), keys.mount
    key = f"org-{org}"
    assert denied(lambda: client.secrets.transit.delete_key(key, mount_point=transit))
    for config in ({"deletion_allowed": True}, {"exportable": True}, {"min_decryption_version": 2}):
        assert denied(lambda c=config: client.secrets.transit.update_key_configuration(key, mount_point=transit, **c))
    assert denied(lambda: client.secrets.transit.create_key(f"org-{org_name()}", exportable=True, mount_point=transit))
    assert denied(lambda: client.secrets.transit.export_key(key, "encryption-key", mount_point=transit))
    assert denied(lambda: client.secrets.transit.backup_key(key, mount_point=transit))
    assert denied(client.sys.list_mounted_secrets_engines)
    assert denied(
        lambda: client.sys.create_or_update_acl_policy("mesial-org-x", 'path "*" { capabilities = ["sudo"] }')
    )
    assert platform.root.secrets.transit.read_key(key, mount_point=transit)["data"]["exportable"] is False


def test_the_operator_provisions_corrects_revokes_and_shreds_and_the_aligner_unwraps(platform: Platform) -> None:
    provisioner = platform.provisioner()
    root, auth = platform.root, provisioner.auth_mount
    org, other = org_name(), org_name()
    api = platform.keys("api")
    api.ensure_key(org)  # the API created the tenant's key; the operator finds it
    made = provisioner.provision(org, service_account="mesial-aligner", rotation_period="720h")
    assert made.corrected == [
        f"Vault policy mesial-org-{org} was missing or edited",
        f"Vault role mesial-org-{org} was missing or edited",
    ]
    assert provisioner.provision(org, service_account="mesial-aligner", rotation_period="720h").corrected == []
    provisioner.provision(other, service_account="mesial-aligner", rotation_period="720h")
    role = root.auth.kubernetes.read_role(f"mesial-org-{org}", mount_point=auth)
    assert role["bound_service_account_names"] == ["mesial-aligner"]
    assert role["bound_service_account_namespaces"] == [f"mesial-org-{org}"]
    assert role["audience"] == value(platform.values, "vault.tokenAudience")
    assert role["token_policies"] == [policy_name_for(org)]

    # Rotation period from the Organization's spec; drift (an edited policy) corrected.
    changed = provisioner.provision(org, service_account="mesial-aligner", rotation_period="24h")
    assert changed.corrected == [f"rotation period of org-{org} set to 24h"]
    root.sys.create_or_update_acl_policy(policy_name_for(org), 'path "sys/*" { capabilities = ["sudo"] }')
    fixed = provisioner.provision(org, service_account="mesial-aligner", rotation_period="24h")
    assert fixed.corrected == [f"Vault policy mesial-org-{org} was missing or edited"]

    # The aligner Job: a token with exactly the policies its login role grants.
    aligner = TenantKeys(platform.vault(platform.token_for(*role["token_policies"])))
    sealed_by_api = api.data_key(org)
    assert aligner.unwrap(org, sealed_by_api.wrapped) == sealed_by_api.plaintext
    result_key = aligner.data_key(org)  # results are sealed under the tenant's key too
    assert api.unwrap(org, result_key.wrapped) == result_key.plaintext
    with pytest.raises(KeyAccessDenied):
        aligner.data_key(other)
    with pytest.raises(KeyAccessDenied):
        aligner.unwrap(other, api.data_key(other).wrapped)
    # Nothing but those two calls on its own key either.
    for call in (
        lambda: aligner.rewrap(org, sealed_by_api.wrapped),
        lambda: aligner.key_info(org),
        lambda: aligner.client.secrets.transit.encrypt_data(f"org-{org}", "eA==", mount_point=aligner.mount),
        lambda: aligner.client.secrets.transit.delete_key(f"org-{org}", mount_point=aligner.mount),
        aligner.ensure_signing_key,
    ):
        assert denied(call)

    # Deletion: role and policy removed, then the key shredded with proof.
    provisioner.revoke_access(org)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.auth.kubernetes.read_role(f"mesial-org-{org}", mount_point=auth)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.sys.read_acl_policy(policy_name_for(org))
    receipt = provisioner.shred(org)
    assert receipt.versions_destroyed == 1 and "no longer unwraps" in receipt.proof
    with pytest.raises(KeyNotFound):
        api.unwrap(org, sealed_by_api.wrapped)
    assert provisioner.shred(org).versions_destroyed == 0  # idempotent


def test_the_operator_cannot_bind_other_accounts_policies_or_namespaces(platform: Platform) -> None:
    client = platform.client("operator")
    provisioner = platform.provisioner()
    auth, transit = provisioner.auth_mount, provisioner.keys.mount
    org = org_name()
    good = {
        "bound_service_account_names": "mesial-aligner",
        "bound_service_account_namespaces": f"mesial-org-{org}",
        "policies": f"mesial-org-{org}",
        "audience": value(platform.values, "vault.tokenAudience"),
        "ttl": "1h",
    }
    path = f"/v1/auth/{auth}/role/mesial-org-{org}"
    client.adapter.post(path, json=good)  # what provision writes
    for change in (
        {"bound_service_account_names": "default"},
        {"bound_service_account_names": ["mesial-aligner", "default"]},
        {"bound_service_account_namespaces": "kube-system"},
        {"bound_service_account_namespaces": f"mesial-org-{org},kube-system"},
        {"bound_service_account_namespaces": ["mesial-org-a", "kube-system"]},
        {"policies": "root"},
        {"policies": f"mesial-org-{org},root"},
        {"token_policies": "root"},
        {"audience": "other"},
        {"ttl": "768h"},
        {"token_period": "768h"},
    ):
        assert denied(lambda c=change: client.adapter.post(path, json={**good, **c})), change
    assert denied(lambda: client.adapter.post(f"/v1/auth/{auth}/role/mesial-api", json=good))
    assert denied(lambda: client.sys.create_or_update_acl_policy("mesial-api", 'path "*" { capabilities = ["read"] }'))
    assert denied(client.sys.list_mounted_secrets_engines)
    assert denied(client.sys.list_auth_methods)
    key = f"org-{org}"
    provisioner.keys.ensure_key(org)
    for config in ({"exportable": True}, {"min_decryption_version": 1}, {"allow_plaintext_backup": True}):
        assert denied(lambda c=config: client.secrets.transit.update_key_configuration(key, mount_point=transit, **c))
    assert denied(lambda: client.secrets.transit.export_key(key, "encryption-key", mount_point=transit))
    audit = value(platform.values, "vault.auditSigningKey")
    assert denied(lambda: client.secrets.transit.sign_data(audit, hash_input="eA==", mount_point=transit))
    assert denied(lambda: client.secrets.transit.delete_key(audit, mount_point=transit))


def test_a_dev_server_token_still_mounts_what_is_missing(openbao: svc.ServiceInfo) -> None:
    # Local mode and the tests run with a root token: the narrow probes (sys/mounts/<mount>,
    # sys/auth/<mount>) find the mounts missing and create them, as the list calls did.
    suffix = secrets.token_hex(3)
    vault = VaultSettings(
        addr=openbao.url,
        token=openbao.credentials["root_token"],
        transit_mount=f"transit-{suffix}",
        kubernetes_mount=f"k8s-{suffix}",
        backoff_s=0.05,
    )
    keys = TenantKeys(vault)
    keys.ensure_transit()
    keys.ensure_transit()  # found the second time
    root = keys.client
    assert root.sys.list_mounted_secrets_engines()["data"][f"transit-{suffix}/"]["type"] == "transit"
    TenantProvisioner(keys, vault, OperatorSettings()).ensure_kubernetes_auth()
    assert root.sys.list_auth_methods()["data"][f"k8s-{suffix}/"]["type"] == "kubernetes"
    assert root.auth.kubernetes.read_config(mount_point=f"k8s-{suffix}")["kubernetes_host"]


async def test_the_api_app_starts_and_serves_with_exactly_its_policy(
    platform: Platform, service_settings: Settings, postgres: svc.ServiceInfo, tmp_path: Path
) -> None:
    """The real app (lifespan, routes) with the API's token: start, an organization, a sealed
    upload, a signed audit export. Its own database, so no other test's rows meet it."""
    from tests.api.conftest import _started, make_settings

    name = f"pol_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    base = service_settings.model_copy(update={"vault": platform.vault(platform.tokens["api"])})
    settings = make_settings(base, tmp_path, postgres.url.rsplit("/", 1)[0] + "/" + name)
    async for api in _started(settings, "postgres"):
        org, org_admin = await api.new_org()
        key = platform.root.secrets.transit.read_key(f"org-{org}", mount_point=settings.vault.transit_mount)
        assert key["data"]["exportable"] is False
        scan = await api.upload(org_admin, "upper")
        assert scan["id"]
        auditor = await api.key(org_admin, "auditor")
        response = await api.client.get("/v1/audit/export", headers={"authorization": f"Bearer {auditor}"})
        assert response.status_code == 200, response.text
        manifest = [json.loads(line) for line in response.text.splitlines()][-1]
        assert manifest["signature"].startswith("vault:v1:")
