"""The Helm chart: it lints, renders valid hardened manifests, and agrees with the settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesial.common.settings import Mode, Settings, VaultAuth

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesial"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
)


def helm(k8s_tools: dict[str, Path], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(k8s_tools["helm"]), *args], capture_output=True, text=True, check=check)


def render(k8s_tools: dict[str, Path], *args: str) -> list[dict[str, Any]]:
    out = helm(k8s_tools, "template", "rel", str(CHART), "--namespace", "mesial-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            specs.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            specs.append((f"Pod/{doc['metadata']['name']}", doc["spec"]))
    return specs


def test_generated_chart_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "-P", str(ROOT / "scripts" / "chart.py"), "check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_helm_lint_strict(k8s_tools: dict[str, Path]) -> None:
    for values in [None, *SCENARIOS]:
        args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
        result = helm(k8s_tools, *args, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.name if v else "defaults")
def test_manifests_are_valid_kubernetes(k8s_tools: dict[str, Path], values: Path | None) -> None:
    docs = render(k8s_tools, *(["-f", str(values)] if values else []))
    assert {doc["kind"] for doc in docs} >= {"Deployment", "Service", "ServiceAccount", "ClusterRole"}
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator kinds: test_chart_features.py checks them
        kubernetes_validate.validate(doc, "1.35.0", strict=True)
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"


def test_every_pod_is_hardened(k8s_tools: dict[str, Path]) -> None:
    for name, spec in pod_specs(render(k8s_tools)):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("enableServiceLinks", False) is False, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["limits"], name


def test_operator_is_a_single_replica_recreated(k8s_tools: dict[str, Path]) -> None:
    (deployment,) = [
        d for d in render(k8s_tools) if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("api.replicas=two", "at '/api/replicas': got string, want integer"),
        ("global.image.pullPolicy=Sometimes", "value must be one of 'Always', 'IfNotPresent', 'Never'"),
        ("vault.addr=vault:8200", "'/vault/addr'"),
        ("api.servce.port=1", "additional properties 'servce' not allowed"),
    ],
)
def test_schema_refuses_wrong_values_with_a_readable_message(
    k8s_tools: dict[str, Path], setting: str, message: str
) -> None:
    result = helm(k8s_tools, "template", "rel", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_several_api_replicas_need_a_shared_link_secret(k8s_tools: dict[str, Path]) -> None:
    result = helm(
        k8s_tools, "template", "rel", str(CHART), "--set", "api.replicas=3", "--set", "api.linkSecret=", check=False
    )
    assert result.returncode != 0
    assert "api.linkSecret is required" in result.stderr


def test_notes_warn_about_plain_http(k8s_tools: dict[str, Path]) -> None:
    def notes(*args: str) -> str:
        return helm(k8s_tools, "install", "rel", str(CHART), "--dry-run=client", *args).stdout

    assert "WARNING" not in notes()
    assert "vault.addr (http://vault:8200) is not https" in notes("--set", "vault.addr=http://vault:8200")


def settings_from(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a container would build from its environment (secrets stand in as text)."""
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("MESIAL_")]:
            patch.delenv(key)
        for item in container["env"]:
            patch.setenv(item["name"], item.get("value", f"secret-{item['name'].lower()}"))
        return Settings(_env_file=None)


def test_chart_environment_is_understood_by_the_settings(
    k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(k8s_tools, "-f", str(CHART / "ci" / "strict-values.yaml"))
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    operator = settings_from(
        deployments["rel-mesial-operator"]["spec"]["template"]["spec"]["containers"][0], monkeypatch
    )
    api = settings_from(deployments["rel-mesial-api"]["spec"]["template"]["spec"]["containers"][0], monkeypatch)
    for settings in (operator, api):
        assert settings.mode is Mode.cluster
        assert settings.vault.auth is VaultAuth.kubernetes
        assert settings.vault.addr == "https://vault.internal.example:8200"
        assert str(settings.vault.ca_cert) == "/etc/mesial/vault-ca/ca.crt"
        assert settings.store.endpoint_url == "https://s3.internal.example"
    assert operator.vault.kubernetes_role == "mesial-operator"
    assert api.vault.kubernetes_role == "mesial-api"
    assert operator.operator.egress_vault.cidrs == ["10.20.0.10/32"]
    assert operator.operator.egress_audit.pod_selector["app.kubernetes.io/component"] == "api"
    assert operator.operator.aligner_image == "ghcr.io/mesial/mesial:0.1.0"
    assert api.api.migrate_on_start is False
    assert operator.operator.job_store_access_key is not None  # from aligner.storeCredentialsSecret
    assert operator.operator.job_store_identity == "shared"  # that one identity, by the installer's choice


def test_every_pod_gets_the_pull_secrets(k8s_tools: dict[str, Path]) -> None:
    docs = render(k8s_tools, "--set", "global.imagePullSecrets[0].name=regcred")
    specs = pod_specs(docs)
    assert {name.split("/")[0] for name, _ in specs} == {"Deployment", "Job", "Pod"}  # migrate hook, helm test
    for name, spec in specs:
        assert spec.get("imagePullSecrets") == [{"name": "regcred"}], name


def test_store_ca_reaches_the_store_client_settings(
    k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(k8s_tools, "-f", str(CHART / "ci" / "strict-values.yaml"))
    for doc in (d for d in docs if d["kind"] == "Deployment"):
        pod = doc["spec"]["template"]["spec"]
        settings = settings_from(pod["containers"][0], monkeypatch)
        assert str(settings.store.ca_cert) == "/etc/mesial/store-ca/ca.crt"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["store-ca"] == "/etc/mesial/store-ca"
        assert volumes["store-ca"]["secret"]["secretName"] == "store-ca"


def test_the_operator_gets_the_pull_secrets_to_copy_for_aligner_jobs(
    k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(k8s_tools, "--set", "global.imagePullSecrets[0].name=regcred")
    (pod,) = [
        d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    settings = settings_from(pod["containers"][0], monkeypatch)
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert settings.operator.pull_secrets_dir is not None
    assert str(settings.operator.pull_secrets_dir) == mounts["pull-secrets"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "pull-secrets"]
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "regcred", "items": [{"key": ".dockerconfigjson", "path": "regcred/.dockerconfigjson"}]}}
    ]
    plain = render(k8s_tools)
    assert "MESIAL_OPERATOR__PULL_SECRETS_DIR" not in str(plain)
