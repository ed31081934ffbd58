"""Every Vault call of each component, with a token holding exactly its shipped policy.

The three policies are the chart's own (``charts/mesial/files/vault/*.hcl``, rendered by
``helm template`` with the values under test): the API's, the operator's and the one fixed policy
of every tenant's aligner Jobs, templated on the Kubernetes-auth alias of the Job's ServiceAccount
(its namespace names the transit key). Vault is the real OpenBao of the test run, set up as the
platform team does it (docs/install.md): transit and the Kubernetes auth method mounted at the
values' paths, the auth method verifying tokens with a real kube-apiserver's TokenReview (the
control plane of tests/cluster, without node agent), the policies written as rendered. The API's
and the operator's tokens carry their one policy and not even ``default``; an aligner's token is
what a Kubernetes login with a real ServiceAccount token of the tenant namespace returns, through
the login role the operator wrote. Non-default mounts, audit key, audience and aligner policy name
prove that the values reach the policies.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
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
from mesial.common.provisioning import TenantProvisioner, role_name_for
from mesial.common.settings import OperatorSettings, Settings, VaultSettings
from mesial.common.tenancy import namespace_for, transit_key_for
from mesial.common.vault import TenantKeys
from tests.cluster.controlplane import ClusterInfo, kubectl, running_control_plane

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesial"

VALUE_SETS = {
    "defaults": {},
    "custom": {
        "vault.transitMount": "kms/mesial",
        "vault.kubernetesMount": "k8s-prod",
        "vault.auditSigningKey": "audit-checkpoints",
        "vault.tokenAudience": "https://vault.example.com",
        "vault.alignerPolicy": "mesial-jobs",
    },
}


def chart_policies(helm: Path, values: dict[str, str]) -> dict[str, str]:
    """The policies the chart renders for ``values``: {"api": hcl, "operator": hcl, "aligner": hcl}."""
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
        "vault.alignerPolicy": "mesial-aligner",
    }
    return values.get(key, defaults[key])


@pytest.fixture(scope="module")
def kube_api() -> Iterator[ClusterInfo]:
    """A real kube-apiserver (no node agent) whose TokenReview OpenBao's Kubernetes auth calls."""
    with running_control_plane("mesial-policies-", node_agent=False) as info:
        kubectl(info.kubeconfig, "create", "serviceaccount", "vault-auth", "-n", "kube-system")
        kubectl(
            info.kubeconfig,
            "create",
            "clusterrolebinding",
            "vault-auth-delegator",
            "--clusterrole=system:auth-delegator",
            "--serviceaccount=kube-system:vault-auth",
        )
        yield info


@dataclass
class Platform:
    """OpenBao as the platform team leaves it, a token per component, and the cluster of the Jobs."""

    root: hvac.Client
    url: str
    values: dict[str, str]
    tokens: dict[str, str]
    kube: ClusterInfo

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
            vault_token_audience=value(self.values, "vault.tokenAudience"),
            vault_aligner_policy=value(self.values, "vault.alignerPolicy"),
            vault_configure_kubernetes_auth=False,
        )
        vault = self.vault(self.tokens["operator"])
        return TenantProvisioner(TenantKeys(vault), vault, operator)

    def tenant_namespace(self, org: str) -> str:
        """The tenant's namespace with its aligner ServiceAccount, as the operator makes them."""
        ns = namespace_for(org)
        kubectl(self.kube.kubeconfig, "create", "namespace", ns)
        kubectl(self.kube.kubeconfig, "create", "serviceaccount", "mesial-aligner", "-n", ns)
        return ns

    def service_account_token(self, namespace: str, account: str = "mesial-aligner") -> str:
        """A real ServiceAccount token of the cluster (TokenRequest) with the values' audience."""
        audience = value(self.values, "vault.tokenAudience")
        args = ("create", "token", account, "-n", namespace, f"--audience={audience}", "--duration=1h")
        return kubectl(self.kube.kubeconfig, *args).stdout.strip()

    def login(self, role: str, jwt: str) -> TenantKeys:
        """Log in as an aligner Job does; the keys client holds the token Vault returned."""
        client = hvac.Client(url=self.url)
        auth = client.auth.kubernetes.login(role, jwt, mount_point=value(self.values, "vault.kubernetesMount"))
        return TenantKeys(self.vault(auth["auth"]["client_token"]))


@pytest.fixture(params=sorted(VALUE_SETS), scope="module")
def platform(
    request: pytest.FixtureRequest, openbao: svc.ServiceInfo, k8s_tools: dict[str, Path], kube_api: ClusterInfo
) -> Platform:
    values = dict(VALUE_SETS[request.param])
    root = hvac.Client(url=openbao.url, token=openbao.credentials["root_token"])
    transit, auth = value(values, "vault.transitMount"), value(values, "vault.kubernetesMount")
    if f"{transit}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit", path=transit)
    if f"{auth}/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("kubernetes", path=auth)
    reviewer = kubectl(kube_api.kubeconfig, "create", "token", "vault-auth", "-n", "kube-system", "--duration=2h")
    root.write(
        f"auth/{auth}/config",
        kubernetes_host=kube_api.server,
        kubernetes_ca_cert=Path(kube_api.ca).read_text(),
        token_reviewer_jwt=reviewer.stdout.strip(),
        disable_local_ca_jwt=True,
    )
    # The aligner policy names the auth method by its accessor (docs/install.md, "Vault policies").
    values["vault.kubernetesMountAccessor"] = root.sys.list_auth_methods()["data"][f"{auth}/"]["accessor"]
    tokens = {}
    for component, hcl in chart_policies(k8s_tools["helm"], values).items():
        if component == "aligner":
            root.sys.create_or_update_acl_policy(value(values, "vault.alignerPolicy"), hcl)
            continue
        name = f"policy-test-{request.param}-{component}"
        root.sys.create_or_update_acl_policy(name, hcl)
        tokens[component] = root.auth.token.create(policies=[name], no_default_policy=True, ttl="1h")["auth"][
            "client_token"
        ]
    assert sorted(tokens) == ["api", "operator"]
    return Platform(root=root, url=openbao.url, values=values, tokens=tokens, kube=kube_api)


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
    key = transit_key_for(org)
    assert key == f"mesial-org-{org}" == namespace_for(org)  # the aligner policy's template needs it so
    assert info.name == key and info.latest_version == 1 and not info.exportable
    data_key = keys.data_key(org)
    assert keys.unwrap(org, data_key.wrapped) == data_key.plaintext
    # Vault rotates the key on its own (auto_rotate_period); the API rewraps to the new version.
    platform.root.secrets.transit.rotate_key(key, mount_point=platform.vault("").transit_mount)
    rewrapped = keys.rewrap(org, data_key.wrapped)
    assert rewrapped.startswith("vault:v2:") and keys.unwrap(org, rewrapped) == data_key.plaintext
    assert keys.key_info(org).latest_version == 2
    signature = keys.sign(b"checkpoint")
    assert keys.verify(b"checkpoint", signature) and not keys.verify(b"tampered", signature)
    assert list(keys.public_keys()) == [1]

    # What the API cannot do: delete, export, back up, retire versions, touch sys/.
    client, transit = platform.client("api"), keys.mount
    assert denied(lambda: client.secrets.transit.delete_key(key, mount_point=transit))
    for config in ({"deletion_allowed": True}, {"exportable": True}, {"min_decryption_version": 2}):
        assert denied(lambda c=config: client.secrets.transit.update_key_configuration(key, mount_point=transit, **c))
    other = transit_key_for(org_name())
    assert denied(lambda: client.secrets.transit.create_key(other, exportable=True, mount_point=transit))
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
    aligner_policy = value(platform.values, "vault.alignerPolicy")
    org, other = org_name(), org_name()
    ns, other_ns = platform.tenant_namespace(org), platform.tenant_namespace(other)
    api = platform.keys("api")
    api.ensure_key(org)  # the API created the tenant's key; the operator finds it
    made = provisioner.provision(org, service_account="mesial-aligner", rotation_period="720h")
    assert made.corrected == [f"Vault role mesial-org-{org} was missing or edited"]  # no policy to write
    assert provisioner.provision(org, service_account="mesial-aligner", rotation_period="720h").corrected == []
    provisioner.provision(other, service_account="mesial-aligner", rotation_period="720h")
    role = root.auth.kubernetes.read_role(role_name_for(org), mount_point=auth)
    assert role["bound_service_account_names"] == ["mesial-aligner"]
    assert role["bound_service_account_namespaces"] == [ns]
    assert role["audience"] == value(platform.values, "vault.tokenAudience")
    assert role["token_policies"] == [aligner_policy]  # the chart's one fixed policy, for every tenant
    assert f"mesial-org-{org}" not in root.sys.list_acl_policies()["data"]["keys"]

    # Rotation period from the Organization's spec; drift (an edited role) corrected.
    changed = provisioner.provision(org, service_account="mesial-aligner", rotation_period="24h")
    assert changed.corrected == [f"rotation period of {transit_key_for(org)} set to 24h"]
    root.write(f"auth/{auth}/role/{role_name_for(org)}", token_policies="root", audience="vault")
    fixed = provisioner.provision(org, service_account="mesial-aligner", rotation_period="24h")
    assert fixed.corrected == [f"Vault role mesial-org-{org} was missing or edited"]

    # The aligner Job: a Kubernetes login with a real token of its ServiceAccount, through its role.
    aligner = platform.login(role_name_for(org), platform.service_account_token(ns))
    sealed_by_api = api.data_key(org)
    assert aligner.unwrap(org, sealed_by_api.wrapped) == sealed_by_api.plaintext
    result_key = aligner.data_key(org)  # results are sealed under the tenant's key too
    assert api.unwrap(org, result_key.wrapped) == result_key.plaintext
    # The same policy resolves to the other tenant's key for the other tenant's Job only.
    with pytest.raises(KeyAccessDenied):
        aligner.data_key(other)
    with pytest.raises(KeyAccessDenied):
        aligner.unwrap(other, api.data_key(other).wrapped)
    other_aligner = platform.login(role_name_for(other), platform.service_account_token(other_ns))
    assert other_aligner.unwrap(other, api.data_key(other).wrapped)
    with pytest.raises(KeyAccessDenied):
        other_aligner.unwrap(org, sealed_by_api.wrapped)
    # Nothing but those two calls on its own key either.
    for call in (
        lambda: aligner.rewrap(org, sealed_by_api.wrapped),
        lambda: aligner.key_info(org),
        lambda: aligner.client.secrets.transit.encrypt_data(transit_key_for(org), "eA==", mount_point=aligner.mount),
        lambda: aligner.client.secrets.transit.delete_key(transit_key_for(org), mount_point=aligner.mount),
        aligner.ensure_signing_key,
    ):
        assert denied(call)
    # A token with the policy but no Kubernetes identity (the template resolves to nothing) gets nothing.
    bare = TenantKeys(platform.vault(platform.token_for(aligner_policy)))
    with pytest.raises(KeyAccessDenied):
        bare.data_key(org)
    # The other tenant's ServiceAccount cannot log in through this tenant's role, nor another account here.
    for role_name, jwt in (
        (role_name_for(org), platform.service_account_token(other_ns)),
        (role_name_for(org), platform.service_account_token(ns, "default")),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            platform.login(role_name, jwt)

    # Deletion: the role removed (no login any more), then the key shredded with proof.
    provisioner.revoke_access(org)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.auth.kubernetes.read_role(role_name_for(org), mount_point=auth)
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath)):
        platform.login(role_name_for(org), platform.service_account_token(ns))
    receipt = provisioner.shred(org)
    assert receipt.versions_destroyed == 1 and "no longer unwraps" in receipt.proof
    with pytest.raises(KeyNotFound):
        api.unwrap(org, sealed_by_api.wrapped)
    assert provisioner.shred(org).versions_destroyed == 0  # idempotent
    assert aligner_policy in root.sys.list_acl_policies()["data"]["keys"]  # the fixed policy stays


def test_the_operator_writes_no_policy_and_binds_only_the_aligner_policy(platform: Platform) -> None:
    client = platform.client("operator")
    provisioner = platform.provisioner()
    auth, transit = provisioner.auth_mount, provisioner.keys.mount
    aligner_policy = value(platform.values, "vault.alignerPolicy")
    org = org_name()
    good = {
        "bound_service_account_names": "mesial-aligner",
        "bound_service_account_namespaces": f"mesial-org-{org}",
        "policies": aligner_policy,
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
        {"policies": f"mesial-org-{org}"},
        {"policies": f"{aligner_policy},root"},
        {"token_policies": "root"},
        {"audience": "other"},
        {"ttl": "768h"},
        {"token_period": "768h"},
    ):
        assert denied(lambda c=change: client.adapter.post(path, json={**good, **c})), change
    assert denied(lambda: client.adapter.post(f"/v1/auth/{auth}/role/mesial-api", json=good))
    # No policy at all, under any name or API: its own tenants', the aligner's, anything.
    grant_all = 'path "*" { capabilities = ["sudo", "create", "update", "read"] }'
    for name in (f"mesial-org-{org}", aligner_policy, "mesial-api", "mesial-operator", "x"):
        assert denied(lambda n=name: client.sys.create_or_update_acl_policy(n, grant_all)), name
        assert denied(lambda n=name: client.sys.create_or_update_policy(n, grant_all)), name
        assert denied(lambda n=name: client.sys.delete_acl_policy(n)), name
    assert denied(client.sys.list_mounted_secrets_engines)
    assert denied(client.sys.list_auth_methods)
    key = transit_key_for(org)
    provisioner.keys.ensure_key(org)
    for config in ({"exportable": True}, {"min_decryption_version": 1}, {"allow_plaintext_backup": True}):
        assert denied(lambda c=config: client.secrets.transit.update_key_configuration(key, mount_point=transit, **c))
    assert denied(lambda: client.secrets.transit.export_key(key, "encryption-key", mount_point=transit))
    audit = value(platform.values, "vault.auditSigningKey")
    assert denied(lambda: client.secrets.transit.sign_data(audit, hash_input="eA==", mount_point=transit))
    assert denied(lambda: client.secrets.transit.delete_key(audit, mount_point=transit))
    # A key named the former way (org-<name>) is out of the operator's and the API's reach: a deletion
    # cannot shred it, which is why docs/operator.md ("Vault powers") has it shredded by hand.
    old = f"org-{org}"
    platform.root.secrets.transit.create_key(old, key_type="aes256-gcm96", mount_point=transit)
    api = platform.client("api")
    for who in (client, api):
        assert denied(lambda c=who: c.secrets.transit.read_key(old, mount_point=transit))
        assert denied(lambda c=who: c.secrets.transit.delete_key(old, mount_point=transit))
        assert denied(lambda c=who: c.secrets.transit.decrypt_data(old, "vault:v1:eA==", mount_point=transit))


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
        key = platform.root.secrets.transit.read_key(transit_key_for(org), mount_point=settings.vault.transit_mount)
        assert key["data"]["exportable"] is False
        scan = await api.upload(org_admin, "upper")
        assert scan["id"]
        auditor = await api.key(org_admin, "auditor")
        response = await api.client.get("/v1/audit/export", headers={"authorization": f"Bearer {auditor}"})
        assert response.status_code == 200, response.text
        manifest = [json.loads(line) for line in response.text.splitlines()][-1]
        assert manifest["signature"].startswith("vault:v1:")


def test_a_logins_alias_carries_the_service_account_namespace_and_no_custom_metadata(platform: Platform) -> None:
    """Why the tenant's key is named as its namespace (docs/operator.md, "Vault powers"): a Kubernetes
    login's alias carries ``service_account_namespace``, and a role's custom ``alias_metadata`` is
    ignored by this OpenBao, so the Organization's name cannot be handed to the aligner policy."""
    root, auth = platform.root, value(platform.values, "vault.kubernetesMount")
    ns = platform.tenant_namespace(org_name())
    role = f"alias-probe-{secrets.token_hex(3)}"
    written = root.adapter.post(
        f"/v1/auth/{auth}/role/{role}",
        json={
            "bound_service_account_names": "mesial-aligner",
            "bound_service_account_namespaces": ns,
            "audience": value(platform.values, "vault.tokenAudience"),
            "alias_metadata": {"organization": "acme"},
        },
    )
    assert written.status_code == 204  # accepted without a word
    assert "organization" not in str(root.read(f"auth/{auth}/role/{role}")["data"].get("alias_metadata") or "")
    login = hvac.Client(url=platform.url).auth.kubernetes.login(
        role, platform.service_account_token(ns), mount_point=auth
    )
    entity = root.read(f"identity/entity/id/{login['auth']['entity_id']}")["data"]
    accessor = platform.values["vault.kubernetesMountAccessor"]
    (alias,) = [a for a in entity["aliases"] if a["mount_accessor"] == accessor]
    assert alias["metadata"]["service_account_namespace"] == ns
    assert "organization" not in alias["metadata"]
