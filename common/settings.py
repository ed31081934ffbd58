"""One settings object for every Mesial component.

Read once from the environment (prefix ``MESIAL_``, nested fields with ``__``, e.g.
``MESIAL_VAULT__ADDR``) and from a ``.env`` file if present. The defaults are the
embedded local mode: SQLite, a local OpenBao dev server, a local S3 server, and the
local executor instead of Kubernetes Jobs.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesial.common.limits import MAX_SCAN_BYTES, MAX_TRIANGLES


class Mode(enum.StrEnum):
    local = "local"
    cluster = "cluster"


class VaultAuth(enum.StrEnum):
    token = "token"
    kubernetes = "kubernetes"


class VaultSettings(BaseModel):
    addr: str = "http://127.0.0.1:8200"
    auth: VaultAuth = VaultAuth.token
    # Only for ``auth=token`` (local mode, tests, the operator's own bootstrap).
    token: SecretStr = SecretStr("mesial-dev-root")
    # Only for ``auth=kubernetes`` (aligner Jobs, API and operator pods).
    kubernetes_role: str = ""
    kubernetes_mount: str = "kubernetes"
    service_account_token_path: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    transit_mount: str = "transit"
    # Tenant keys rotate on their own this often (Vault ``auto_rotate_period``); 0 = never.
    key_rotation_period: str = "720h"
    # The key that signs audit checkpoints (ed25519, in the same transit mount).
    audit_signing_key: str = "mesial-audit"
    # One request: connect + read. Past ``max_attempts`` a typed VaultUnavailable is raised.
    timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(4, ge=1, le=20)
    backoff_s: float = Field(0.2, ge=0)
    ca_cert: Path | None = None


class StoreSettings(BaseModel):
    endpoint_url: str = "http://127.0.0.1:8333"
    bucket: str = "mesial"
    region: str = "us-east-1"
    access_key: SecretStr = SecretStr("mesial")
    secret_key: SecretStr = SecretStr("mesial-dev-secret")
    # Plaintext bytes per AES-GCM chunk of the envelope format.
    chunk_size: int = Field(1 << 20, ge=4096, le=64 << 20)
    # S3 multipart part size (S3 needs >= 5 MiB for all parts but the last).
    part_size: int = Field(8 << 20, ge=5 << 20, le=512 << 20)
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(4, ge=1, le=20)
    verify_tls: bool = True
    # PEM CA bundle the endpoint's certificate is checked against (a private CA); None: the system's.
    ca_cert: Path | None = None
    # The store's IAM API, where tenants' own identities are managed (empty: ``endpoint_url``, as
    # SeaweedFS serves it on its S3 port; AWS: https://iam.amazonaws.com). See common/store_identity.py.
    iam_endpoint_url: str = ""

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if (
            not (3 <= len(value) <= 63)
            or not value.replace("-", "").replace(".", "").isalnum()
            or value.lower() != value
        ):
            raise ValueError("bucket must be 3-63 lower-case letters, digits, '-' or '.'")
        return value


class AlignerSettings(BaseModel):
    # Refuse mesh files larger than this before reading them (bytes); see common/limits.py.
    max_scan_bytes: int = Field(MAX_SCAN_BYTES, gt=0)
    # Refuse meshes with more triangles than this.
    max_triangles: int = Field(MAX_TRIANGLES, gt=0)


class OperatorSettings(BaseModel):
    """The kopf operator (issue 4). Fields are added by the operator's owner."""

    class Egress(BaseModel):
        """One egress destination of tenant pods: CIDRs and/or namespace/pod selectors, and ports."""

        # IP blocks allowed (e.g. an external Vault); each becomes one NetworkPolicy peer.
        cidrs: list[str] = Field(default_factory=list)
        # In-cluster peers: namespace labels (and, if set, pod labels within them).
        namespace_selector: dict[str, str] = Field(default_factory=dict)
        pod_selector: dict[str, str] = Field(default_factory=dict)
        # TCP ports (DNS also gets UDP on the same ports).
        ports: list[int] = Field(default_factory=list)

    class Tier(BaseModel):
        """What an Organization's tier grants: namespace quota, container defaults, job pod size."""

        # ResourceQuota ``spec.hard`` of the tenant namespace.
        quota: dict[str, str]
        # LimitRange container defaults (limits) and default requests.
        default_limits: dict[str, str]
        default_requests: dict[str, str]
        # Resources of one aligner Job's container.
        job_requests: dict[str, str]
        job_limits: dict[str, str]
        # Upper bound of a ScanJob's deadline in this tier (seconds).
        max_deadline_s: int = Field(3600, ge=60)
        # Size limit of the aligner's emptyDir scratch volume.
        scratch_size: str = "2Gi"

    # Finalizer put on Organizations so that deletion shreds keys and data first.
    finalizer: str = "mesial.dev/cleanup"
    # Label on tenant namespaces and owned objects naming the Organization.
    tenant_label: str = "mesial.dev/tenant"
    # Egress allowed from tenant pods (everything else is denied by the default-deny policy).
    egress_dns: Egress = Egress(
        namespace_selector={"kubernetes.io/metadata.name": "kube-system"},
        pod_selector={"k8s-app": "kube-dns"},
        ports=[53],
    )
    egress_vault: Egress = Egress(
        namespace_selector={"kubernetes.io/metadata.name": "mesial-system"},
        pod_selector={"app.kubernetes.io/name": "openbao"},
        ports=[8200],
    )
    egress_store: Egress = Egress(
        namespace_selector={"kubernetes.io/metadata.name": "mesial-system"},
        pod_selector={"app.kubernetes.io/name": "seaweedfs"},
        ports=[8333],
    )
    egress_audit: Egress = Egress(
        namespace_selector={"kubernetes.io/metadata.name": "mesial-system"},
        pod_selector={"app.kubernetes.io/component": "api"},
        ports=[8080],
    )
    # The cluster's own ranges (pod and service CIDRs, node network): an Organization's
    # spec.egress.extra may not reach into them, nor cover them (nor 169.254.0.0/16, 127.0.0.0/8
    # or 0.0.0.0/8, always refused), unless the destination lies inside egress_extra_allowed.
    cluster_cidrs: list[str] = Field(default_factory=list)
    # Destinations the platform explicitly allows in spec.egress.extra although they overlap a
    # refused range (e.g. a database inside the cluster network).
    egress_extra_allowed: list[str] = Field(default_factory=list)

    @field_validator("cluster_cidrs", "egress_extra_allowed")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.IPv4Network(item, strict=True)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IPv4 CIDR: {exc}") from None
        return value

    # Tier table: quota, LimitRange and Job resources per Organization tier.
    tiers: dict[str, OperatorSettings.Tier] = Field(
        default_factory=lambda: {
            "small": OperatorSettings.Tier(
                quota={
                    "requests.cpu": "4",
                    "requests.memory": "8Gi",
                    "limits.cpu": "8",
                    "limits.memory": "16Gi",
                    "pods": "10",
                    "count/jobs.batch": "10",
                },
                default_limits={"cpu": "1", "memory": "2Gi"},
                default_requests={"cpu": "250m", "memory": "512Mi"},
                job_requests={"cpu": "1", "memory": "2Gi"},
                job_limits={"cpu": "2", "memory": "4Gi"},
                max_deadline_s=3600,
            ),
            "medium": OperatorSettings.Tier(
                quota={
                    "requests.cpu": "16",
                    "requests.memory": "32Gi",
                    "limits.cpu": "32",
                    "limits.memory": "64Gi",
                    "pods": "40",
                    "count/jobs.batch": "40",
                },
                default_limits={"cpu": "2", "memory": "4Gi"},
                default_requests={"cpu": "500m", "memory": "1Gi"},
                job_requests={"cpu": "2", "memory": "4Gi"},
                job_limits={"cpu": "4", "memory": "8Gi"},
                max_deadline_s=7200,
            ),
            "large": OperatorSettings.Tier(
                quota={
                    "requests.cpu": "64",
                    "requests.memory": "128Gi",
                    "limits.cpu": "128",
                    "limits.memory": "256Gi",
                    "pods": "200",
                    "count/jobs.batch": "200",
                },
                default_limits={"cpu": "4", "memory": "8Gi"},
                default_requests={"cpu": "1", "memory": "2Gi"},
                job_requests={"cpu": "4", "memory": "8Gi"},
                job_limits={"cpu": "8", "memory": "16Gi"},
                max_deadline_s=14400,
                scratch_size="8Gi",
            ),
        }
    )
    # The aligner Job: image, entrypoint (``mesial job run ...``), ServiceAccount name in each tenant namespace.
    aligner_image: str = "ghcr.io/mesial/mesial:0.1.0"
    aligner_command: list[str] = Field(default_factory=lambda: ["mesial", "job", "run"])
    aligner_service_account: str = "mesial-aligner"
    # Job defaults: retries of a failed pod, seconds a finished Job is kept.
    job_backoff_limit: int = Field(2, ge=0, le=10)
    job_ttl_after_finished_s: int = Field(3600, ge=0)
    # The store identity aligner Jobs use, put by the operator into a Secret in each tenant namespace
    # (a pod can only reference Secrets of its own namespace). ``per-tenant``: each Organization gets an
    # identity of its own, limited to tenants/<org>/, made through the store's IAM API at provisioning
    # and removed at deletion (common/store_identity.py). ``shared``: every tenant gets the one below
    # (unset: the operator's own credentials; development only), which reaches every tenant's prefix.
    # Local mode follows it too: ``per-tenant`` gives each job subprocess its tenant's identity (made or
    # checked before each job, api/executor.py), ``shared`` the API's own store credentials.
    job_store_identity: Literal["per-tenant", "shared"] = "per-tenant"
    job_store_access_key: SecretStr | None = None
    job_store_secret_key: SecretStr | None = None
    # Name of that Secret in tenant namespaces, and the store endpoint as seen from tenant pods
    # (defaults to ``store.endpoint_url``).
    job_store_secret: str = "mesial-store"
    store_endpoint_in_cluster: str = ""
    # Audience of the projected ServiceAccount token the aligner logs in to Vault with.
    vault_token_audience: str = "vault"
    # The one Vault policy every tenant's login role grants (the chart's files/vault/aligner-policy.hcl,
    # written by the platform team): templated on the Job's ServiceAccount namespace, that tenant's key only.
    vault_aligner_policy: str = Field("mesial-aligner", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # Vault address as seen from tenant pods (defaults to ``vault.addr``).
    vault_addr_in_cluster: str = ""
    # The ClusterRole the operator binds itself to in each tenant namespace (RoleBinding ``mesial-operator``)
    # and its own ServiceAccount as ``<namespace>/<name>``; empty: no binding (the operator's role is broad).
    tenant_cluster_role: str = ""
    service_account: str = ""
    # Seconds to wait, after creating that binding, until the API server's authorizer applies it
    # (a SelfSubjectAccessReview polled; its RBAC cache may lag the new binding for a moment).
    access_wait_s: float = Field(10.0, ge=0)
    # Registry pull secrets for aligner Jobs: one folder per Secret name holding its ``.dockerconfigjson``
    # (the chart mounts global.imagePullSecrets here); copied into each tenant namespace. None: none.
    pull_secrets_dir: Path | None = None
    # Configure the kubernetes auth method if it is not (dev servers); a real cluster sets it up itself.
    vault_configure_kubernetes_auth: bool = True
    vault_kubernetes_host: str = "https://kubernetes.default.svc"
    # PEM CA of that API server for the auth config (empty on a dev server: a throwaway one is made).
    vault_kubernetes_ca_cert: str = ""
    # Where the NetworkPolicy templates are read from (None: the project's policies/).
    policies_dir: Path | None = None
    # Seconds between drift checks of each Organization's owned objects.
    drift_interval_s: float = Field(60.0, gt=0)
    # Seconds between ScanJob status mirrorings (Job, pod and progress object).
    scanjob_sync_interval_s: float = Field(5.0, gt=0)
    # Seconds between retention timer ticks; a sweep runs when the policy's sweepInterval is due.
    retention_tick_s: float = Field(60.0, gt=0)
    # Delay before a handler retries after a temporary failure (Vault or the store down).
    retry_delay_s: float = Field(15.0, gt=0)
    # Seconds between kopf's checks that a timer caught mid-run by a deletion has exited (kopf's default
    # is 60: a ScanJob deleted while its status was being mirrored kept its finalizer for a minute).
    timer_exit_poll_s: float = Field(1.0, gt=0)
    # kopf's wait for a patched object's new version before running handlers on it again (seconds).
    consistency_timeout_s: float = Field(2.0, gt=0)
    # kopf batching: seconds an idle per-object worker lives; ceiling on concurrent workers (0: none).
    worker_idle_s: float = Field(5.0, gt=0)
    worker_limit: int = Field(0, ge=0)
    # Tolerated clock skew: an object dated further in the future is kept and reported.
    clock_skew_s: float = Field(300.0, ge=0)
    # kopf peering: standalone (one replica, strategy Recreate) or a peering object's name.
    standalone: bool = True
    peering_name: str = "mesial"
    # Prometheus metrics and readiness (``/metrics``, ``/readyz``) on this address; port 0: not served.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(0, ge=0, le=65535)
    # kopf liveness endpoint (empty: none).
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    # Lowest level of kopf log lines posted as Kubernetes Events.
    posting_level: str = "INFO"
    # Log lines as JSON (one object a line) instead of text.
    log_json: bool = True
    # The operator's audit sink when the API is not configured (local mode, development): a JSON Lines file.
    audit_jsonl_path: Path = Path(".mesial/audit/operator.jsonl")
    # The API as seen from the operator (cluster mode), e.g. ``http://mesial-api.mesial-system:8080``, and the
    # operator's service key (``mesial admin service-key operator``, from a mounted Secret; never logged). Both
    # set: receipts go to the API's audit collector and ScanJobs created by the API are reported to it
    # (``POST /internal/v1/jobs/{id}/status``). No key (the URL alone is ignored, with a warning at start):
    # receipts go to ``audit_jsonl_path`` and nothing is reported (local mode, development).
    api_url: str = ""
    api_service_key: SecretStr | None = None
    # PEM CA bundle of the API's certificate (https only; None: the system's), and one request's timeout.
    api_ca_cert: Path | None = None
    api_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _api_url_with_key(self) -> OperatorSettings:
        if self.api_url and not self.api_url.startswith(("http://", "https://")):
            raise ValueError("operator.api_url must be an http:// or https:// URL")
        if self.api_service_key is not None and self.api_service_key.get_secret_value() and not self.api_url:
            raise ValueError("operator.api_service_key is set but operator.api_url is not")
        return self

    @property
    def api_configured(self) -> bool:
        """Whether the operator talks to the API: its URL and the service key are both set."""
        key = self.api_service_key
        return bool(self.api_url) and key is not None and bool(key.get_secret_value())


class ApiSettings(BaseModel):
    """The tenant API and audit collector (issue 5). Fields are added by the API's owner."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # Largest scan upload accepted (bytes); larger bodies are refused with 413 while streaming.
    max_upload_bytes: int = Field(512 << 20, gt=0)
    # Largest body of any other request (JSON), bytes.
    max_json_bytes: int = Field(1 << 20, gt=0)
    # Apply pending database migrations when the API starts (local mode); else run `mesial api migrate`.
    migrate_on_start: bool = True
    # HMAC key of signed artifact links; empty = a random key per process (links die with it).
    link_secret: SecretStr = SecretStr("")
    # Lifetime of a signed artifact link, seconds.
    link_ttl_s: int = Field(900, gt=0, le=86400)
    # Requests per minute per API key, per client IP, and per IP on credential-checking paths.
    rate_per_key_per_min: int = Field(600, ge=1)
    rate_per_ip_per_min: int = Field(1200, ge=1)
    # failed authentications and refused signed links per address (valid ones never spend it)
    rate_auth_per_ip_per_min: int = Field(30, ge=1)
    # Trust X-Forwarded-For from these proxy addresses only (the ingress), else use the peer.
    trusted_proxies: list[str] = []
    # Command that runs one job (local executor); job arguments are appended.
    job_command: list[str] = ["mesial", "job", "run"]
    # Local executor: concurrent jobs, queued jobs beyond those (503 when full), job deadline.
    executor_workers: int = Field(1, ge=1, le=64)
    executor_queue_size: int = Field(16, ge=1, le=10_000)
    job_timeout_s: float = Field(3600.0, gt=0)
    # Seconds between progress polls of a running local job.
    job_poll_s: float = Field(1.0, gt=0)
    # At start, fail jobs a previous local executor left running and queue again the ones it left queued.
    executor_recover_on_start: bool = True
    # Seconds between scheduled audit checkpoints (0 = only on export).
    checkpoint_interval_s: float = Field(300.0, ge=0)
    # Local mode: seconds between retention sweeps of every organization (0 = none).
    retention_interval_s: float = Field(3600.0, ge=0)
    # OIDC: issuer, audience, JWKS (URL or a local JSON file path), claims giving org and role.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks: str = ""
    oidc_org_claim: str = "mesial_org"
    oidc_role_claim: str = "mesial_role"
    # Seconds a fetched JWKS is reused before it is fetched again.
    oidc_jwks_ttl_s: float = Field(300.0, gt=0)
    # Seconds between JWKS fetches at most: a token with an unknown key id (a new IdP key, or a
    # forged one) triggers one fetch, not one per token, and an IdP that is down is not hammered.
    oidc_jwks_min_refetch_s: float = Field(30.0, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESIAL_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    mode: Mode = Mode.local
    # Where local mode keeps its database, service data and job scratch space.
    data_dir: Path = Path(".mesial")
    # tortoise-orm URL: sqlite://... (local) or postgres://... (cluster, tests).
    database_url: str = "sqlite://.mesial/mesial.sqlite3"
    log_level: str = "INFO"
    vault: VaultSettings = VaultSettings()
    store: StoreSettings = StoreSettings()
    aligner: AlignerSettings = AlignerSettings()
    operator: OperatorSettings = OperatorSettings()
    api: ApiSettings = ApiSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (tests build their own ``Settings``)."""
    return Settings()
