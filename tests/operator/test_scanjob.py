"""ScanJob: a hardened Job in a ready tenant namespace, status mirrored from Job, pod and the
progress object, refusals, a hostile spec, and deletion stopping the Job."""

from __future__ import annotations

import base64
import json
from typing import Any

from mesial.common.contract import JobProgress, write_progress
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually
from tests.operator.helpers import SCANJOB, organization, ready

JOB = ("batch/v1", "Job")


def scanjob(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mesial.dev/v1alpha1",
        "kind": "ScanJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"scans": {"upper": "scan-u", "lower": "scan-l", "bites": ["scan-b"]}, **spec},
    }


async def sj_status(k8s, ns: str, name: str) -> dict[str, Any]:
    obj = await k8s.get(*SCANJOB, name, ns)
    return dict((obj or {}).get("status") or {})


async def tenant(harness: Harness, org_name) -> tuple[str, str]:
    name = org_name("jobs")
    await harness.client.create(organization(name, tier="medium"))
    await eventually(lambda: ready(harness.client, name))
    return name, f"mesial-org-{name}"


async def test_job_is_hardened_and_status_is_mirrored(harness: Harness, org_name) -> None:
    org, ns = await tenant(harness, org_name)
    k8s = harness.client
    options = {"contactThresholdMm": 0.25, "optimiseBite": False}
    await k8s.create(scanjob("case-1", ns, timeouts={"activeDeadlineSeconds": 900}, options=options))
    job = await eventually(lambda: k8s.get(*JOB, "scanjob-case-1", ns))
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == "mesial-aligner" and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["scratch"]
    token = volumes["vault-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "vault"
    # Vault login through the projected token and the tenant's role; store credentials from the
    # tenant namespace's Secret (by reference: the values are not in the Job).
    env = {e["name"]: e for e in container["env"]}
    assert env["MESIAL_VAULT__AUTH"]["value"] == "kubernetes"
    assert env["MESIAL_VAULT__KUBERNETES_ROLE"]["value"] == f"mesial-org-{org}"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "vault-token")
    assert env["MESIAL_VAULT__SERVICE_ACCOUNT_TOKEN_PATH"]["value"] == mount["mountPath"] + "/token"
    assert token["path"] == "token" and mount["readOnly"] is True
    assert "MESIAL_VAULT__TOKEN" not in env
    settings = harness.runtime.settings
    assert env["MESIAL_STORE__ENDPOINT_URL"]["value"] == settings.store.endpoint_url
    assert env["MESIAL_STORE__BUCKET"]["value"] == settings.store.bucket
    for var, key in (("MESIAL_STORE__ACCESS_KEY", "access-key"), ("MESIAL_STORE__SECRET_KEY", "secret-key")):
        assert "value" not in env[var]
        assert env[var]["valueFrom"] == {"secretKeyRef": {"name": "mesial-store", "key": key}}
    secret = await k8s.get("v1", "Secret", "mesial-store", ns)
    assert secret is not None and secret["metadata"]["labels"]["mesial.dev/tenant"] == org
    stored = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    # the tenant's own store identity (tests/operator/test_store_identity.py), never the operator's
    assert set(stored) == {"access-key", "secret-key"}
    assert stored["access-key"] != settings.store.access_key.get_secret_value()
    assert stored["secret-key"] != settings.store.secret_key.get_secret_value()
    assert settings.store.secret_key.get_secret_value() not in json.dumps(job)
    assert container["command"] == ["mesial", "job", "run"]
    # the arguments are those `mesial job run` takes: parsed by its own command line
    from mesial.aligner.job import run as job_run

    assert container["command"][-2:] == ["job", "run"]
    parsed = job_run.make_context("run", list(container["args"])).params
    assert (parsed["org"], parsed["job_id"], parsed["bites"]) == (org, "case-1", ("scan-b",))
    assert parsed["contact_threshold"] == 0.25 and parsed["no_optimise"] is True
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}  # the medium tier
    assert job["spec"]["activeDeadlineSeconds"] == 900 and job["spec"]["backoffLimit"] == 2
    # invalid input (exit 2) fails the Job at once; evictions do not use up the retries
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "aligner", "operator": "In", "values": [2]},
    }
    assert rules[1]["action"] == "Ignore"
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ScanJob" and owner["name"] == "case-1" and owner["controller"] is True
    assert job["metadata"]["labels"]["mesial.dev/tenant"] == org
    st = await eventually(lambda: sj_status(k8s, ns, "case-1"))
    assert st["phase"] == "Pending" and st["jobName"] == "scanjob-case-1"

    # The pod runs and reports progress through its tenant's object store.
    await k8s.patch(*JOB, "scanjob-case-1", {"status": {"active": 1, "startTime": "2026-01-01T10:00:00Z"}}, ns)
    await write_progress(harness.runtime.store, org, "case-1", JobProgress(stage="registration", percent=40))

    async def running() -> dict[str, Any] | None:
        st = await sj_status(k8s, ns, "case-1")
        return st if st.get("phase") == "Running" and st.get("progress") == 40 else None

    st = await eventually(running)
    assert st["stage"] == "registration" and st["startTime"] == "2026-01-01T10:00:00Z"

    # It succeeds with metrics and artifacts.
    done = JobProgress(stage="report", percent=100, metrics={"rmse_mm": 0.08},
                       artifacts=["results/case-1/report.json", "../../etc/passwd"])  # fmt: skip
    await write_progress(harness.runtime.store, org, "case-1", done)
    await k8s.patch(*JOB, "scanjob-case-1", {"status": {"active": 0, "succeeded": 1,
        "completionTime": "2026-01-01T10:02:05Z",
        "conditions": [{"type": "Complete", "status": "True"}]}}, ns)  # fmt: skip

    async def succeeded() -> dict[str, Any] | None:
        st = await sj_status(k8s, ns, "case-1")
        return st if st.get("phase") == "Succeeded" else None

    st = await eventually(succeeded)
    assert st["progress"] == 100 and st["metrics"] == {"rmse_mm": 0.08}
    assert st["artifacts"] == ["results/case-1/report.json"]  # the escaping key was dropped
    assert st["duration"] == "2m05s" and st["completionTime"] == "2026-01-01T10:02:05Z"


async def test_failure_message_is_sanitized(harness: Harness, org_name) -> None:
    _, ns = await tenant(harness, org_name)
    k8s = harness.client
    await k8s.create(scanjob("case-f", ns))
    await eventually(lambda: k8s.get(*JOB, "scanjob-case-f", ns))
    hostile = "<script>alert(1)</script>\n\x1b[31m" + "A" * 5000
    await k8s.patch(*JOB, "scanjob-case-f", {"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": hostile}]}}, ns)  # fmt: skip

    async def failed() -> dict[str, Any] | None:
        st = await sj_status(k8s, ns, "case-f")
        return st if st.get("phase") == "Failed" else None

    st = await eventually(failed)
    assert st["reason"] == "DeadlineExceeded"
    assert "<" not in st["message"] and "\x1b" not in st["message"] and "\n" not in st["message"]
    assert len(st["message"]) <= 512


async def test_refused_outside_a_ready_tenant_namespace(harness: Harness) -> None:
    k8s = harness.client
    await k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    await k8s.create(scanjob("sneaky", "default"))

    async def refused() -> dict[str, Any] | None:
        st = await sj_status(k8s, "default", "sneaky")
        return st if st.get("phase") == "Failed" else None

    st = await eventually(refused)
    assert st["reason"] == "NotATenantNamespace" and "default" in st["message"]
    assert await k8s.get(*JOB, "scanjob-sneaky", "default") is None
    # A namespace that merely carries the tenant label of an Organization it does not belong to.
    await k8s.create({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "fake", "labels": {"mesial.dev/tenant": "someone"}}})  # fmt: skip
    await k8s.create(scanjob("forged", "fake"))
    st = await eventually(lambda: _failed(k8s, "fake", "forged"))
    assert st["reason"] == "NotATenantNamespace"


async def test_hostile_spec_never_reaches_the_pod(harness: Harness, org_name) -> None:
    org, ns = await tenant(harness, org_name)
    k8s = harness.client
    hostile = scanjob("evil", ns)
    hostile["spec"]["scans"]["upper"] = "x; rm -rf / #"
    hostile["spec"]["podTemplate"] = {"hostNetwork": True, "privileged": True}
    await k8s.create(hostile)
    st = await eventually(lambda: _failed(k8s, ns, "evil"))
    assert st["reason"] == "InvalidSpec" and "rm -rf" not in json.dumps(st).replace("x; rm -rf / #", "")
    assert st["tenant"] == org  # refused in its tenant's namespace: the API is told that tenant's job failed
    assert await k8s.get(*JOB, "scanjob-evil", ns) is None
    # Unknown fields are ignored and a deadline past the tier's maximum is capped.
    sneaky = scanjob("sneaky", ns, timeouts={"activeDeadlineSeconds": 86400})
    sneaky["spec"]["image"] = "attacker/image"
    await k8s.create(sneaky)
    job = await eventually(lambda: k8s.get(*JOB, "scanjob-sneaky", ns))
    assert job["spec"]["activeDeadlineSeconds"] == 7200  # medium tier maximum
    assert "attacker" not in json.dumps(job) and "hostNetwork" not in json.dumps(job)


async def test_deleting_a_scanjob_stops_its_job(harness: Harness, org_name) -> None:
    _, ns = await tenant(harness, org_name)
    k8s = harness.client
    await k8s.create(scanjob("case-d", ns))
    await eventually(lambda: k8s.get(*JOB, "scanjob-case-d", ns))
    await k8s.delete(*SCANJOB, "case-d", ns)

    async def gone() -> bool:
        return await k8s.get(*JOB, "scanjob-case-d", ns) is None and await k8s.get(*SCANJOB, "case-d", ns) is None

    await eventually(gone)


async def _failed(k8s, ns: str, name: str) -> dict[str, Any] | None:
    st = await sj_status(k8s, ns, name)
    return st if st.get("phase") == "Failed" else None
