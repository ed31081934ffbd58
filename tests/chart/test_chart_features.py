"""What users of good charts expect, one `helm template` test each: disruption budget, spread,
priority, pod annotations, extra env and volumes, image digest, NetworkPolicies, metrics with
ServiceMonitor and PrometheusRule (runbooks in docs/operator.md), the operator's readiness probe,
and the trial mode."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kopf
import kubernetes_validate
import pytest

from mesial.common.settings import OperatorSettings
from mesial.operator.main import build_registry, configure
from tests.chart.test_chart import ROOT, helm, pod_specs, render, settings_from

DIGEST = "sha256:" + "ab" * 32


def kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return dict(kinds(docs, "Deployment")[f"rel-mesial-{component}"]["spec"]["template"])


def test_api_pod_disruption_budget(k8s_tools: dict[str, Path]) -> None:
    (pdb,) = kinds(render(k8s_tools), "PodDisruptionBudget").values()
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert not kinds(render(k8s_tools, "-f", str(ROOT / "charts/mesial/ci/minimal-values.yaml")), "PodDisruptionBudget")


def test_topology_spread_default_and_own(k8s_tools: dict[str, Path]) -> None:
    (spread,) = pod(render(k8s_tools), "api")["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    own = render(k8s_tools, "--set", "operator.topologySpreadConstraints[0].maxSkew=1",
                 "--set", "operator.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
                 "--set", "operator.topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule")  # fmt: skip
    assert pod(own, "operator")["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


@pytest.mark.parametrize("component", ["api", "operator"])
def test_priority_annotations_extra_env_and_volumes(k8s_tools: dict[str, Path], component: str) -> None:
    docs = render(
        k8s_tools,
        "--set", f"{component}.priorityClassName=mesial-critical",
        "--set", f"{component}.podAnnotations.backup\\.velero\\.io/backup-volumes=none",
        "--set", f"{component}.extraEnv[0].name=HTTPS_PROXY",
        "--set", f"{component}.extraEnv[0].value=http://proxy:3128",
        "--set", f"{component}.extraVolumes[0].name=extra-ca",
        "--set", f"{component}.extraVolumes[0].configMap.name=corp-ca",
        "--set", f"{component}.extraVolumeMounts[0].name=extra-ca",
        "--set", f"{component}.extraVolumeMounts[0].mountPath=/etc/corp-ca",
    )  # fmt: skip
    template = pod(docs, component)
    spec, container = template["spec"], template["spec"]["containers"][0]
    assert spec["priorityClassName"] == "mesial-critical"
    assert template["metadata"]["annotations"] == {"backup.velero.io/backup-volumes": "none"}
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]
    assert {"name": "extra-ca", "configMap": {"name": "corp-ca"}} in spec["volumes"]
    assert {"name": "extra-ca", "mountPath": "/etc/corp-ca"} in container["volumeMounts"]
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, "1.35.0", strict=True)


def test_image_digest_everywhere(k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(k8s_tools, "--set", f"global.image.digest={DIGEST}")
    for name, spec in pod_specs(docs):
        assert spec["containers"][0]["image"] == f"ghcr.io/mesial/mesial@{DIGEST}", name
    operator = settings_from(pod(docs, "operator")["spec"]["containers"][0], monkeypatch)
    assert operator.operator.aligner_image == f"ghcr.io/mesial/mesial@{DIGEST}"
    (policy,) = kinds(docs, "ValidatingAdmissionPolicy").values()
    assert f"ghcr.io/mesial/mesial@{DIGEST}" in str(policy["spec"]["validations"])


def test_network_policies_for_the_release_namespace(k8s_tools: dict[str, Path]) -> None:
    assert not kinds(render(k8s_tools), "NetworkPolicy")
    docs = render(
        k8s_tools,
        "--set", "networkPolicy.enabled=true",
        "--set", "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=ingress-nginx",
        "--set", "networkPolicy.egress[0].ports[0].port=5432",
    )  # fmt: skip
    policies = kinds(docs, "NetworkPolicy")
    default = policies["rel-mesial-default"]
    assert default["spec"]["policyTypes"] == ["Ingress", "Egress"] and default["spec"]["ingress"] == []
    assert default["spec"]["egress"][1] == {"ports": [{"port": 5432}]}
    api = policies["rel-mesial-api"]["spec"]["ingress"][0]
    assert api["ports"] == [{"port": "http"}]
    assert api["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert policies["rel-mesial-operator-metrics"]["spec"]["ingress"][0] == {"ports": [{"port": "metrics"}]}
    for doc in policies.values():
        kubernetes_validate.validate(doc, "1.35.0", strict=True)
    open_egress = kinds(render(k8s_tools, "--set", "networkPolicy.enabled=true"), "NetworkPolicy")
    assert open_egress["rel-mesial-default"]["spec"]["policyTypes"] == ["Ingress"]


def test_operator_metrics_port_readiness_and_service(
    k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(k8s_tools)
    container = pod(docs, "operator")["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert settings_from(container, monkeypatch).operator.metrics_port == ports["metrics"] == 8082
    service = kinds(docs, "Service")["rel-mesial-operator-metrics"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    off = pod(render(k8s_tools, "--set", "operator.metrics.enabled=false"), "operator")["spec"]["containers"][0]
    assert "readinessProbe" not in off and settings_from(off, monkeypatch).operator.metrics_port == 0


def test_service_monitor_and_prometheus_rule_with_runbooks(k8s_tools: dict[str, Path]) -> None:
    assert not [d for d in render(k8s_tools) if d["apiVersion"].startswith("monitoring.coreos.com/")]
    docs = render(
        k8s_tools,
        "--set", "operator.metrics.serviceMonitor.enabled=true",
        "--set", "operator.metrics.serviceMonitor.labels.release=prometheus",
        "--set", "operator.metrics.prometheusRule.enabled=true",
    )  # fmt: skip
    (monitor,) = kinds(docs, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    service = kinds(docs, "Service")["rel-mesial-operator-metrics"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (rule,) = kinds(docs, "PrometheusRule").values()
    alerts = rule["spec"]["groups"][0]["rules"]
    operator_md = (ROOT / "docs" / "operator.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", operator_md, re.M)
    }
    exported = {"mesial_operator_reconciles_total", "mesial_operator_service_errors_total", "mesial_operator_ready",
                "mesial_operator_retries_pending", "mesial_operator_organizations_by_phase", "up"}  # fmt: skip
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url.endswith("#" + alert["alert"].lower()), url
        assert alert["alert"].lower() in anchors, f"docs/operator.md has no section for {alert['alert']}"
        assert set(re.findall(r"\b(mesial_operator_[a-z_]+|up)\{", alert["expr"])) <= exported, alert["expr"]


def test_trial_mode_bundles_its_services(k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert not [d for d in render(k8s_tools) if "trial" in d["metadata"]["name"]]
    docs = render(k8s_tools, "--set", "trial.enabled=true")
    deployments = kinds(docs, "Deployment")
    assert {"rel-mesial-trial-openbao", "rel-mesial-trial-seaweedfs", "rel-mesial-trial-postgres"} <= set(deployments)
    assert not kinds(docs, "Job")  # no pre-install hook: the database is part of the release
    api = settings_from(pod(docs, "api")["spec"]["containers"][0], monkeypatch)
    assert api.vault.addr == "http://rel-mesial-trial-openbao.mesial-system.svc:8200"
    assert api.store.endpoint_url == "http://rel-mesial-trial-seaweedfs.mesial-system.svc:8333"
    assert api.api.migrate_on_start is True
    env = {e["name"]: e for e in pod(docs, "api")["spec"]["containers"][0]["env"]}
    assert env["MESIAL_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "rel-mesial-trial", "key": "url"}
    operator = settings_from(pod(docs, "operator")["spec"]["containers"][0], monkeypatch).operator
    assert operator.egress_vault.pod_selector["app.kubernetes.io/component"] == "trial-openbao"
    script = pod(docs, "trial-openbao")["spec"]["containers"][0]["args"][0]
    for line in ("secrets enable -path=transit transit", "keys/mesial-audit type=ed25519",
                 "bound_service_account_names=rel-mesial-api", "audience=vault"):  # fmt: skip
        assert line in script
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, "1.35.0", strict=True)
    notes = helm(
        k8s_tools, "install", "rel", str(ROOT / "charts/mesial"), "--dry-run=client", "--set", "trial.enabled=true"
    )
    assert "WARNING: trial mode" in notes.stdout


def test_trial_ports_move_every_listener_of_the_bundled_services(
    k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trial.ports`: the pods listen where told (OpenBao, SeaweedFS's master, volume server, filer and
    S3, PostgreSQL and its readiness probe); the Services keep their ports, the tenants' egress follows
    the pods' ports (a NetworkPolicy matches the pod's port)."""
    ports = {"openbao": 21200, "s3": 21333, "seaweedfsMaster": 21933, "seaweedfsVolume": 21080,
             "seaweedfsFiler": 21888, "postgres": 21432}  # fmt: skip
    docs = render(k8s_tools, "--set", "trial.enabled=true", *[f"--set=trial.ports.{k}={v}" for k, v in ports.items()])
    services = {d["metadata"]["name"]: d["spec"]["ports"][0] for d in kinds(docs, "Service").values()}
    assert services["rel-mesial-trial-openbao"] == {"name": "main", "port": 8200, "targetPort": "main"}
    assert services["rel-mesial-trial-seaweedfs"]["port"] == 8333
    assert services["rel-mesial-trial-postgres"]["port"] == 5432
    containers = {c["name"]: c for c in (pod(docs, f"trial-{n}")["spec"]["containers"][0] for n in ("openbao", "seaweedfs", "postgres"))}  # fmt: skip
    assert containers["openbao"]["ports"] == [{"name": "main", "containerPort": 21200}]
    assert "-dev-listen-address=0.0.0.0:21200" in containers["openbao"]["args"][0]
    assert {"name": "BAO_ADDR", "value": "http://127.0.0.1:21200"} in containers["openbao"]["env"]
    weed = containers["seaweedfs"]["args"][0]
    for flag in ("-master.port=21933", "-volume.port=21080", "-filer.port=21888", "-s3.port=21333",
                 "-master=127.0.0.1:21933", "-filer=127.0.0.1:21888"):  # fmt: skip
        assert flag in weed, flag
    assert containers["seaweedfs"]["ports"] == [{"name": "main", "containerPort": 21333}]
    assert containers["postgres"]["ports"] == [{"name": "main", "containerPort": 21432}]
    assert {"name": "PGPORT", "value": "21432"} in containers["postgres"]["env"]
    assert containers["postgres"]["readinessProbe"]["exec"]["command"] == ["pg_isready", "-U", "mesial", "-p", "21432"]
    operator = settings_from(pod(docs, "operator")["spec"]["containers"][0], monkeypatch).operator
    assert operator.egress_vault.ports == [21200] and operator.egress_store.ports == [21333]
    # The defaults are the programs' own ports.
    default = {c["name"]: c for d in render(k8s_tools, "--set", "trial.enabled=true") if d["kind"] == "Deployment"
               for c in d["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert "-master.port=9333 -volume.port=8080 -filer.port=8888 -s3 -s3.port=8333" in default["seaweedfs"]["args"][0]
    assert default["postgres"]["ports"] == [{"name": "main", "containerPort": 5432}]


def test_notes_name_only_what_the_packaged_chart_holds(k8s_tools: dict[str, Path], tmp_path: Path) -> None:
    package = helm(k8s_tools, "package", str(ROOT / "charts/mesial"), "-d", str(tmp_path)).stdout
    assert "Successfully packaged" in package
    import tarfile

    (archive,) = tmp_path.glob("mesial-*.tgz")
    packaged = {name.split("/", 1)[1] for name in tarfile.open(archive).getnames() if "/" in name}
    notes = helm(k8s_tools, "install", "rel", str(archive), "--dry-run=client").stdout.split("NOTES:", 1)[1]
    for path in re.findall(r"-f\s+(\S+\.ya?ml)", notes):
        assert path in packaged, f"NOTES.txt names {path}, which the packaged chart does not hold"
    assert "crds/examples" not in notes


def test_each_runbook_states_the_time_its_alert_waits(k8s_tools: dict[str, Path]) -> None:
    """docs/operator.md's runbooks say how long a condition lasts before its alert fires
    ('not ready for 5 minutes'): that is the rule's `for` (or the window of an alert without one)."""
    docs = render(k8s_tools, "--set", "operator.metrics.prometheusRule.enabled=true")
    (rule,) = kinds(docs, "PrometheusRule").values()
    operator_md = (ROOT / "docs" / "operator.md").read_text()
    stated = {}
    for alert, body in re.findall(r"^#### (\w+)\n\n(.*?)(?=\n#|\Z)", operator_md, re.M | re.S):
        minutes = re.findall(r"\b(\d+) minutes\b", " ".join(body.split()))
        if minutes:
            stated[alert] = f"{minutes[0]}m"
    waits = {a["alert"]: a.get("for") for a in rule["spec"]["groups"][0]["rules"]}
    assert stated == {a: waits[a] for a in stated}
    assert stated == {
        "MesialOperatorDown": "5m",
        "MesialOperatorReconcileErrors": "15m",
        "MesialOperatorRetriesPiling": "30m",
        "MesialOrganizationNotReady": "15m",
    }


def test_the_operator_the_chart_deploys_runs_the_documented_intervals(
    k8s_tools: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's defaults, through the Deployment's environment and the settings, into the operator
    as it is assembled: drift every 60 s (operator.md), ScanJobs mirrored every 5 s and temporary
    failures retried after 15 s (the chart's values), the same as the settings' own defaults."""
    container = pod(render(k8s_tools), "operator")["spec"]["containers"][0]
    settings = settings_from(container, monkeypatch)
    timers: dict[str, Any] = {h.id: vars(h)["interval"] for h in build_registry(settings)._spawning.get_all_handlers()}
    kopf_settings = kopf.OperatorSettings()
    configure(kopf_settings, settings)
    assert (timers["drift"], timers["mirror"], kopf_settings.execution.default_backoff) == (60, 5, 15)
    defaults = OperatorSettings()
    assert (defaults.drift_interval_s, defaults.scanjob_sync_interval_s, defaults.retry_delay_s) == (60, 5, 15)
