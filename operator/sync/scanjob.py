"""ScanJobs: admission to a ready tenant namespace, the hardened Job, and status mirroring.

The Job's pod is locked down: non-root, read-only root filesystem with an ``emptyDir``
scratch, all capabilities dropped, seccomp ``RuntimeDefault``, no privilege escalation,
no service links, no automounted API token; a projected ServiceAccount token with the
Vault audience is its only credential (for Vault's kubernetes login). The spec is
untrusted: every value that reaches the pod is re-validated here and passed as an
argument list, never through a shell.

The Job runs the job contract of :mod:`mesial.common.contract` (one ``JobSpec``: its
arguments and progress document). Progress comes from the object the Job writes under
its tenant prefix, read and sanitized by the operator: tenant pods may not patch
ScanJob status.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mesial.common.contract import EXIT_INVALID, ID_RE, JobSpec, read_progress, sanitize_text
from mesial.common.errors import InputError, MesialError
from mesial.common.provisioning import role_name_for
from mesial.common.settings import OperatorSettings, Settings
from mesial.common.tenancy import namespace_for
from mesial.operator.errors import describe
from mesial.operator.k8s import K8s, K8sError, Obj
from mesial.operator.reporting import JOB_ID_RE
from mesial.operator.runtime import Runtime
from mesial.operator.sync.conditions import now_iso
from mesial.operator.sync.organization.trust import job_trust
from mesial.operator.sync.tenancy import OWNER_ANNOTATION, NotATenantNamespace, tenant_namespace

SCANJOB = ("mesial.dev/v1alpha1", "ScanJob")
JOB = ("batch/v1", "Job")
ORG = ("mesial.dev/v1alpha1", "Organization")
TERMINAL = ("Succeeded", "Failed")
SCANJOB_LABEL = "mesial.dev/scanjob"
# The API's job id on the ScanJobs it creates (api/executor.py scanjob_manifest).
JOB_ID_LABEL = "mesial.dev/job-id"
VAULT_TOKEN_DIR = "/var/run/secrets/vault"
# On every aligner Job and pod: the NetworkPolicy allowing Vault and the store selects them.
ALIGNER_LABELS = {"app.kubernetes.io/managed-by": "mesial-operator", "app.kubernetes.io/component": "aligner"}


class ScanJobRefused(MesialError):
    """The ScanJob cannot run here (not a ready tenant namespace, or an invalid spec)."""

    def __init__(self, reason: str, message: str, tenant: str | None = None) -> None:
        self.reason = reason
        self.message = message
        self.tenant = tenant  # the Organization, when the namespace is known to be its own
        super().__init__(reason, message)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class RunLimits:
    """What the Kubernetes Job adds to the job contract: its deadline and its retries."""

    deadline_s: int
    retries: int

    @classmethod
    def from_spec(cls, spec: Any) -> RunLimits:
        timeouts = spec.get("timeouts") or {}
        deadline = _number(timeouts.get("activeDeadlineSeconds", 1800), 60, 86400, "timeouts.activeDeadlineSeconds")
        return cls(int(deadline), int(_number(spec.get("retries", 2), 0, 5, "retries")))


def _number(value: Any, low: float, high: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(f"{name} must be a number from {low} to {high}")
    return float(value)


def job_spec(body: Any, org: str) -> tuple[JobSpec, RunLimits]:
    """The job contract's spec and the run limits of a ScanJob (re-validated: the emulator and a
    misconfigured cluster do not)."""
    spec = body.get("spec") or {}
    return JobSpec.from_scanjob(org, job_id_of(body), spec), RunLimits.from_spec(spec)


def api_job_id(body: Any) -> str | None:
    """The API's job id of a ScanJob, or None for one made by hand (or a malformed label)."""
    value = ((body.get("metadata") or {}).get("labels") or {}).get(JOB_ID_LABEL)
    return value if isinstance(value, str) and JOB_ID_RE.fullmatch(value) else None


def job_id_of(body: Any) -> str:
    """Where the Job keeps its progress and artifacts: the API's job id, else the ScanJob's name
    (a name that is no job id, with dots or over 64 characters, as a stable hash of it)."""
    name = str(body["metadata"]["name"])
    return api_job_id(body) or (
        name if ID_RE.fullmatch(name) else "sj-" + hashlib.sha256(name.encode()).hexdigest()[:32]
    )


def job_name_for(scanjob: str) -> str:
    """A Job name (<= 63 characters) derived from the ScanJob's name."""
    name = f"scanjob-{scanjob}"
    if len(name) <= 63:
        return name
    return f"{name[:54]}-{hashlib.sha256(scanjob.encode()).hexdigest()[:8]}"


class TenantNotReady(MesialError):
    """The tenant namespace is the operator's but its Organization is not Ready yet: retry."""

    def __init__(self, message: str, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(message)


async def tenant_of(k8s: K8s, namespace: str, settings: Settings) -> tuple[str, Obj]:
    """The Organization (name, object) whose ready tenant namespace this is, else ``ScanJobRefused``
    (not the operator's tenant namespace: final) or ``TenantNotReady`` (wait and retry)."""
    try:
        tenant = await tenant_namespace(k8s, namespace, settings)
    except NotATenantNamespace as exc:
        raise ScanJobRefused(NotATenantNamespace.reason, str(exc)) from None
    phase = (tenant.organization.get("status") or {}).get("phase")
    if phase != "Ready":
        raise TenantNotReady(f"Organization {tenant.org} is not Ready (phase {phase}); waiting", tenant.org)
    # Ready in status is no proof that the boundary exists (a stale or hand-written status):
    # a job runs only in a namespace that is closed by default and has its quota
    missing = await _missing_boundary(k8s, namespace)
    if missing:
        raise TenantNotReady(f"tenant namespace {namespace} lacks {missing}; waiting for the operator", tenant.org)
    return tenant.org, tenant.organization


# What a tenant namespace must show before a job runs in it: the default-deny NetworkPolicy
# (policies/network/default-deny.yaml.tmpl) and the ResourceQuota (sync/organization/quotas.py).
DEFAULT_DENY = "mesial-default-deny"
QUOTA = "mesial-quota"


async def _missing_boundary(k8s: K8s, namespace: str) -> str:
    """The first part of the tenant's boundary missing from ``namespace`` ("" when all are there)."""
    deny = await k8s.get("networking.k8s.io/v1", "NetworkPolicy", DEFAULT_DENY, namespace)
    spec = (deny or {}).get("spec") or {}
    if (
        deny is None
        or spec.get("podSelector") not in ({}, None)
        or set(spec.get("policyTypes") or ())
        != {
            "Ingress",
            "Egress",
        }
    ):
        return f"NetworkPolicy {DEFAULT_DENY} (deny all in and out)"
    if await k8s.get("v1", "ResourceQuota", QUOTA, namespace) is None:
        return f"ResourceQuota {QUOTA}"
    return ""


def recorded_tenant(body: Any) -> str | None:
    """The tenant in the ScanJob's status, if it is the one its namespace belongs to.

    The status is a record, not a proof: a ScanJob in ``mesial-org-a`` is a's, whatever its
    status says, so a hand-set ``tenant`` never makes the operator read another tenant's objects."""
    org = (body.get("status") or {}).get("tenant")
    try:
        return org if isinstance(org, str) and namespace_for(org) == body["metadata"]["namespace"] else None
    except InputError:
        return None


def label_value(name: str) -> str:
    """A label value (<= 63 characters) for a name of up to 253: the name, or a prefix and a hash."""
    if len(name) <= 63:
        return name
    return f"{name[:54]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def owns_job(scanjob: Any, job: Obj) -> bool:
    """Whether ``job`` is the one the operator made for ``scanjob``: its controller is that ScanJob (uid)."""
    uid = (scanjob.get("metadata") or {}).get("uid")
    refs = (job.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(
        r.get("uid") == uid and r.get("kind") == "ScanJob" and r.get("controller") is True for r in refs
    )


ACTIVE_PHASES = (None, "", "Pending", "Running")


async def scanjob_running(k8s: K8s, scanjob: Any) -> bool:
    """Whether a ScanJob still runs, judged from its Job (an active Job the operator made for it)
    as well as its status: a hand-set terminal phase does not stop a running Job (status is no proof)."""
    if (scanjob.get("status") or {}).get("phase") in ACTIVE_PHASES:
        return True
    meta = scanjob["metadata"]
    job = await k8s.get("batch/v1", "Job", job_name_for(meta["name"]), meta["namespace"])
    if job is None or not owns_job(scanjob, job):
        return False
    conditions = {c.get("type") for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    return not conditions & {"Complete", "Failed"}


def build_job(body: Any, spec: JobSpec, limits: RunLimits, settings: Settings, tier: OperatorSettings.Tier) -> Obj:
    """The hardened batch/v1 Job of a ScanJob, sized by the tenant's tier."""
    op = settings.operator
    meta = body["metadata"]
    name, namespace, org = meta["name"], meta["namespace"], spec.org
    labels = {op.tenant_label: org, SCANJOB_LABEL: label_value(name), **ALIGNER_LABELS}
    # `mesial job run`'s own options (tests/operator parses them with its click command)
    args = spec.argv()
    env = [
        {"name": "MESIAL_MODE", "value": "cluster"},
        {"name": "MESIAL_VAULT__ADDR", "value": op.vault_addr_in_cluster or settings.vault.addr},
        {"name": "MESIAL_VAULT__AUTH", "value": "kubernetes"},
        {"name": "MESIAL_VAULT__KUBERNETES_ROLE", "value": role_name_for(org)},
        {"name": "MESIAL_VAULT__KUBERNETES_MOUNT", "value": settings.vault.kubernetes_mount},
        {"name": "MESIAL_VAULT__TRANSIT_MOUNT", "value": settings.vault.transit_mount},
        {"name": "MESIAL_VAULT__SERVICE_ACCOUNT_TOKEN_PATH", "value": f"{VAULT_TOKEN_DIR}/token"},
        {"name": "MESIAL_STORE__ENDPOINT_URL", "value": op.store_endpoint_in_cluster or settings.store.endpoint_url},
        {"name": "MESIAL_STORE__BUCKET", "value": settings.store.bucket},
        {"name": "MESIAL_STORE__REGION", "value": settings.store.region},
        *(
            {"name": f"MESIAL_STORE__{var}", "valueFrom": {"secretKeyRef": {"name": op.job_store_secret, "key": key}}}
            for var, key in (("ACCESS_KEY", "access-key"), ("SECRET_KEY", "secret-key"))
        ),
        {"name": "MESIAL_DATA_DIR", "value": "/scratch"},
        # The scratch volume itself: nothing creates a subdirectory first, and the root filesystem
        # (/tmp included) is read-only, so Python found no temporary directory at all.
        {"name": "TMPDIR", "value": "/scratch"},
    ]
    # private CAs and registry credentials, copied into the tenant namespace by the operator
    trust = job_trust(settings)
    env += trust.env
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name_for(name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "mesial.dev/v1alpha1",
                    "kind": "ScanJob",
                    "name": name,
                    "uid": meta.get("uid", ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": limits.retries,
            # `mesial job run` exits 2 on invalid input: no retry can fix the scans. A pod
            # evicted or preempted (DisruptionTarget) is retried without using up the budget.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": "aligner", "operator": "In", "values": [EXIT_INVALID]},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "activeDeadlineSeconds": min(limits.deadline_s, tier.max_deadline_s),
            "ttlSecondsAfterFinished": op.job_ttl_after_finished_s,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": op.aligner_service_account,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    **({"imagePullSecrets": trust.image_pull_secrets} if trust.image_pull_secrets else {}),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "aligner",
                            "image": op.aligner_image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": list(op.aligner_command),
                            "args": args,
                            "env": env,
                            "resources": {"requests": dict(tier.job_requests), "limits": dict(tier.job_limits)},
                            "securityContext": {
                                "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "privileged": False,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "volumeMounts": [
                                {"name": "scratch", "mountPath": "/scratch"},
                                {"name": "vault-token", "mountPath": VAULT_TOKEN_DIR, "readOnly": True},
                                *trust.mounts,
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "scratch", "emptyDir": {"sizeLimit": tier.scratch_size}},
                        {
                            "name": "vault-token",
                            "projected": {
                                "sources": [
                                    {
                                        "serviceAccountToken": {
                                            "audience": op.vault_token_audience,
                                            "expirationSeconds": 3600,
                                            "path": "token",
                                        }
                                    }
                                ]
                            },
                        },
                        *trust.volumes,
                    ],
                },
            },
        },
    }


async def dispatch(rt: Runtime, body: Any) -> dict[str, Any]:
    """Admit the ScanJob and create its Job; the status to write (Failed with a reason if refused).

    ``TenantNotReady`` propagates: the handler retries until the Organization is Ready."""
    namespace = body["metadata"]["namespace"]
    # the tenant first: a refusal in a tenant's own namespace is reported to the API as that tenant's
    try:
        org, organization = await tenant_of(rt.k8s, namespace, rt.settings)
    except ScanJobRefused as exc:
        refused = {"phase": "Failed", "reason": exc.reason, "message": exc.message, "completionTime": now_iso()}
        return refused | ({"tenant": exc.tenant} if exc.tenant else {})
    try:
        spec, limits = job_spec(body, org)
    except InputError as exc:
        return _refused("InvalidSpec", sanitize_text(exc), org)
    tiers = rt.settings.operator.tiers
    tier = tiers.get(str((organization.get("spec") or {}).get("tier", "small"))) or tiers["small"]
    job = build_job(body, spec, limits, rt.settings, tier)
    name = job["metadata"]["name"]
    try:
        created = await rt.k8s.create(job)
    except K8sError as exc:
        if not exc.conflict:
            raise
        existing = await rt.k8s.get(*JOB, name, namespace)
        if existing is None or not owns_job(body, existing):
            # a Job of that name the operator did not make for this ScanJob: never adopted
            return _refused("JobNameTaken", f"a Job named {name} exists and is not this ScanJob's", org)
        created = existing
    return {
        "phase": "Pending",
        "reason": "JobCreated",
        "message": "",
        "jobName": name,
        "jobUid": str((created or {}).get("metadata", {}).get("uid") or ""),
        "tenant": org,
    }


def _refused(reason: str, message: str, org: str) -> dict[str, Any]:
    return {"phase": "Failed", "reason": reason, "message": message, "completionTime": now_iso(), "tenant": org}


async def mirror(rt: Runtime, body: Any) -> dict[str, Any] | None:
    """The ScanJob status from its Job, pod and progress object (None: nothing to write)."""
    status = dict(body.get("status") or {})
    if status.get("phase") in TERMINAL or not status.get("jobName"):
        return None
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    job = await rt.k8s.get(*JOB, status["jobName"], namespace)
    new: dict[str, Any] = {}
    if job is not None and not owns_job(body, job):
        new.update(phase="Failed", reason="JobNotOwned", message=f"the Job {status['jobName']} is not this ScanJob's")
        new["completionTime"] = now_iso()
        return _changed(status, new)
    if job is None:
        new.update(phase="Failed", reason="JobMissing", message="the Job was deleted before it finished")
        new["completionTime"] = now_iso()
        return _changed(status, new)
    js = job.get("status") or {}
    conditions = {c.get("type"): c for c in js.get("conditions") or [] if c.get("status") == "True"}
    if js.get("startTime"):
        new["startTime"] = js["startTime"]
    if "Complete" in conditions or js.get("succeeded"):
        new.update(phase="Succeeded", reason="Completed", message="")
        new["completionTime"] = js.get("completionTime") or now_iso()
    elif "Failed" in conditions:
        failed = conditions["Failed"]
        new.update(phase="Failed", reason=sanitize_text(failed.get("reason") or "JobFailed", 64))
        new["message"] = sanitize_text(failed.get("message") or await _pod_message(rt.k8s, namespace, name), 512)
        new["completionTime"] = failed.get("lastTransitionTime") or now_iso()
    elif js.get("active"):
        new.update(phase="Running", reason="PodRunning")
    else:
        new.update(phase="Pending", reason=await _pod_waiting(rt.k8s, namespace, name) or "JobCreated")
    org = recorded_tenant(body)
    if org:
        try:
            progress = await read_progress(rt.store, org, job_id_of(body))
        except MesialError as exc:
            new["stage"] = sanitize_text(f"progress unreadable: {describe(exc)}", 64)
            progress = None
        if progress is not None:
            new["progress"] = 100 if new["phase"] == "Succeeded" else progress.percent
            new["stage"] = progress.stage
            if progress.metrics:
                new["metrics"] = progress.metrics
            if progress.result:
                new["result"] = progress.result
            if new["phase"] == "Succeeded":
                new["artifacts"] = progress.artifacts
            if progress.message and new["phase"] != "Failed":
                new["message"] = progress.message
    if new.get("startTime") and new.get("completionTime"):
        new["duration"] = _duration(new["startTime"], new["completionTime"])
    return _changed(status, new)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    return new if any(old.get(k) != v for k, v in new.items()) else None


async def _pods(k8s: K8s, namespace: str, scanjob: str) -> list[Obj]:
    return await k8s.list("v1", "Pod", namespace=namespace, labels={SCANJOB_LABEL: label_value(scanjob)})


async def _pod_waiting(k8s: K8s, namespace: str, scanjob: str) -> str:
    for pod in await _pods(k8s, namespace, scanjob):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason"):
                return sanitize_text(waiting["reason"], 64)
    return ""


async def _pod_message(k8s: K8s, namespace: str, scanjob: str) -> str:
    for pod in await _pods(k8s, namespace, scanjob):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated:
                return f"aligner exited with code {terminated.get('exitCode')} ({terminated.get('reason', '')})"
    return "the job failed"


def _duration(start: str, end: str) -> str:
    try:
        seconds = int(
            (
                datetime.fromisoformat(end.replace("Z", "+00:00"))
                - datetime.fromisoformat(start.replace("Z", "+00:00"))
            ).total_seconds()
        )
    except ValueError:
        return ""
    minutes, secs = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


async def stop(rt: Runtime, body: Any) -> None:
    """Deleting a ScanJob stops its Job (and its pods: propagation Foreground), and only its own.

    Not when its namespace is going (an Organization's deletion): the namespace takes the Job
    with it, and the operator's access there (its RoleBinding) may already be gone."""
    meta = body["metadata"]
    job_name = job_name_for(meta["name"])
    ns = await rt.k8s.get("v1", "Namespace", meta["namespace"])
    if ns is None or ns["metadata"].get("deletionTimestamp"):
        return
    if OWNER_ANNOTATION not in (ns["metadata"].get("annotations") or {}):
        return  # not a namespace the operator created: it ran no Job there (and may not look)
    job = await rt.k8s.get(*JOB, job_name, meta["namespace"])
    if job is not None and owns_job(body, job):
        await rt.k8s.delete(*JOB, job_name, meta["namespace"], propagation="Foreground")


async def succeeded_in_world(rt: Runtime, body: Any) -> bool:
    """Whether the world shows the ScanJob succeeded: its own Job complete, or (that Job gone after
    its TTL) the job's last progress document saying so. A phase written by hand proves nothing."""
    meta = body["metadata"]
    job = await rt.k8s.get(*JOB, job_name_for(meta["name"]), meta["namespace"])
    if job is not None:
        js = job.get("status") or {}
        complete = any(c.get("type") == "Complete" and c.get("status") == "True" for c in js.get("conditions") or [])
        return owns_job(body, job) and (complete or bool(js.get("succeeded")))
    org = recorded_tenant(body)
    if not org:
        return False
    try:
        progress = await read_progress(rt.store, org, job_id_of(body))
    except MesialError:
        return False
    return progress is not None and progress.state == "succeeded"
