"""Running jobs: the local executor (a subprocess per job, bounded queue) and the cluster seam.

Both run the same Job entrypoint. The contract with it (``mesial job run``):

* arguments: ``--org ORG --job JOB_ID --upper SCAN_ID --lower SCAN_ID [--bite SCAN_ID]...
  --options JSON``, appended to ``ApiSettings.job_command``; Vault and store settings
  come in the usual ``MESIAL_*`` environment variables;
* input: the scans at ``tenants/<org>/scans/<scan id>`` (sealed; read with ObjectStore.get);
* output: artifacts at ``tenants/<org>/jobs/<job id>/artifacts/<name>`` (ObjectStore.put)
  and a status object at ``tenants/<org>/jobs/<job id>/status.json``, rewritten as it
  goes: ``{"state": "running"|"succeeded"|"failed", "progress": 0..1, "metrics":
  {name: number}, "artifacts": [{"name", "size", "sha256"}], "message": str}``
  (no PHI in ``message``);
* exit code 0 with ``state: succeeded`` is success; anything else is failure.

The local executor polls the status object for progress, registers the artifacts the
final status lists (each must exist in the store), and audits the job's lifecycle in
its tenant's chain. In cluster mode the dispatcher renders a ScanJob for the operator
(`ClusterDispatcher`); the operator reports the same status through the internal API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from mesial.api.audit.collector import AuditCollector
from mesial.api.errors import Busy
from mesial.api.models import Artifact, Job
from mesial.api.services.jobs import ARTIFACT_NAME_RE, FINAL, JobSpec, JobState, artifact_key, status_key
from mesial.api.types import new_id, utcnow
from mesial.common.audit import AuditEvent
from mesial.common.errors import ConfigurationError, MesialError, ObjectNotFound
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.tenancy import namespace_for

log = logging.getLogger("mesial.api.executor")
ACTOR = "service:executor"


class Dispatcher(Protocol):
    def has_room(self) -> bool: ...
    async def submit(self, job: JobSpec) -> None: ...
    async def cancel(self, job_id: str) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def job_arguments(job: JobSpec) -> list[str]:
    args = ["--org", job.org, "--job", job.id, "--upper", job.upper, "--lower", job.lower]
    for bite in job.bites:
        args += ["--bite", bite]
    return [*args, "--options", json.dumps(job.options, sort_keys=True)]


def job_environment(settings: Settings) -> dict[str, str]:
    """The settings a job needs, as ``MESIAL_*`` variables (over a minimal base environment)."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    vault, store = settings.vault, settings.store
    env.update(
        {
            "MESIAL_MODE": settings.mode.value,
            "MESIAL_LOG_LEVEL": settings.log_level,
            "MESIAL_VAULT__ADDR": vault.addr,
            "MESIAL_VAULT__TOKEN": vault.token.get_secret_value(),
            "MESIAL_VAULT__TRANSIT_MOUNT": vault.transit_mount,
            "MESIAL_STORE__ENDPOINT_URL": store.endpoint_url,
            "MESIAL_STORE__BUCKET": store.bucket,
            "MESIAL_STORE__REGION": store.region,
            "MESIAL_STORE__ACCESS_KEY": store.access_key.get_secret_value(),
            "MESIAL_STORE__SECRET_KEY": store.secret_key.get_secret_value(),
            "MESIAL_STORE__CHUNK_SIZE": str(store.chunk_size),
            "MESIAL_STORE__VERIFY_TLS": str(store.verify_tls).lower(),
        }
    )
    return env


class LocalExecutor:
    """Runs jobs as subprocesses: ``workers`` at a time, ``queue_size`` waiting, then 503."""

    def __init__(self, settings: Settings, store: ObjectStore, collector: AuditCollector) -> None:
        self.settings = settings
        self.store = store
        self.collector = collector
        self.queue: asyncio.Queue[JobSpec] = asyncio.Queue(maxsize=settings.api.executor_queue_size)
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self.cancelled: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []

    def has_room(self) -> bool:
        return not self.queue.full()

    async def submit(self, job: JobSpec) -> None:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            await Job.filter(id=job.id).update(state=JobState.failed.value, message="queue full", finished_at=utcnow())
            raise Busy("the job queue is full; retry later") from None

    async def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)
        process = self.running.get(job_id)
        if process is not None:
            await _terminate(process)

    async def start(self) -> None:
        for _ in range(self.settings.api.executor_workers):
            self._workers.append(asyncio.create_task(self._work()))

    async def stop(self) -> None:
        for process in list(self.running.values()):
            await _terminate(process)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one job's failure never stops the worker
                log.error("job %s: executor error %s", job.id, type(exc).__name__, exc_info=exc)
                await self._finish(job, JobState.failed, "executor error", {})
            finally:
                self.queue.task_done()

    async def _audit(self, job: JobSpec, action: str, **details: str | int | float | bool) -> None:
        await self.collector.append(AuditEvent(job.org, ACTOR, action, "job", job.id, details=details))

    async def _run(self, job: JobSpec) -> None:
        if job.id in self.cancelled:
            return
        updated = await Job.filter(id=job.id, state=JobState.queued.value).update(
            state=JobState.running.value, started_at=utcnow()
        )
        if not updated:
            return  # cancelled while queued
        await self._audit(job, "job.started")
        workdir = Path(self.settings.data_dir) / "jobs" / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        with (workdir / "job.log").open("wb") as logfile:
            process = await asyncio.create_subprocess_exec(
                *self.settings.api.job_command,
                *job_arguments(job),
                cwd=workdir,
                env=job_environment(self.settings),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            self.running[job.id] = process
            try:
                code = await self._watch(job, process)
            finally:
                self.running.pop(job.id, None)
        if job.id in self.cancelled:
            await self._finish(job, JobState.cancelled, "cancelled", {})
            return
        if code is None:
            await self._finish(job, JobState.failed, "deadline exceeded", {})
            return
        status = await self._status(job)
        if code != 0 or status.get("state") != JobState.succeeded.value:
            message = str(status.get("message") or f"job exited with code {code}")[:500]
            await self._finish(job, JobState.failed, message, status)
            return
        await self._register_artifacts(job, status.get("artifacts") or [])
        await self._finish(job, JobState.succeeded, str(status.get("message", ""))[:500], status)

    async def _watch(self, job: JobSpec, process: asyncio.subprocess.Process) -> int | None:
        """Wait for the process, copying progress into the row; None if the deadline passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.api.job_timeout_s
        while True:
            try:
                return await asyncio.wait_for(process.wait(), timeout=self.settings.api.job_poll_s)
            except TimeoutError:
                pass
            status = await self._status(job)
            if "progress" in status:
                await Job.filter(id=job.id, state=JobState.running.value).update(progress=_progress(status))
            if loop.time() > deadline:
                await _terminate(process)
                return None

    async def _status(self, job: JobSpec) -> dict[str, Any]:
        try:
            data = json.loads(await self.store.read_bytes(job.org, status_key(job.id)))
        except (ObjectNotFound, ValueError):
            return {}
        except MesialError as exc:
            log.warning("job %s: status unreadable (%s)", job.id, type(exc).__name__)
            return {}
        return data if isinstance(data, dict) else {}

    async def _register_artifacts(self, job: JobSpec, listed: list[Any]) -> None:
        for entry in listed:
            name = str(entry.get("name", "")) if isinstance(entry, dict) else ""
            if not ARTIFACT_NAME_RE.fullmatch(name):
                raise MesialError("job listed an artifact with an invalid name")
            meta = await self.store.head(job.org, artifact_key(job.id, name))
            await Artifact.create(
                id=new_id("art"),
                org_id=job.org_id,
                job_id=job.id,
                name=name,
                size=int(entry.get("size", meta.stored_bytes)),
                sha256=str(entry.get("sha256", ""))[:64],
                created_at=utcnow(),
            )

    async def _finish(self, job: JobSpec, state: JobState, message: str, status: dict[str, Any]) -> None:
        metrics = status.get("metrics") if isinstance(status.get("metrics"), dict) else {}
        fields: dict[str, Any] = {"state": state.value, "message": message, "finished_at": utcnow(), "metrics": metrics}
        if state is JobState.succeeded:
            fields["progress"] = 1.0
        done = await Job.filter(id=job.id).exclude(state__in=[s.value for s in FINAL]).update(**fields)
        if done or state is JobState.cancelled:
            await self._audit(job, f"job.{state.value}")
        self.cancelled.discard(job.id)


def _progress(status: dict[str, Any]) -> float:
    try:
        return min(1.0, max(0.0, float(status["progress"])))
    except (TypeError, ValueError):
        return 0.0


async def _terminate(process: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def scanjob_manifest(job: JobSpec) -> dict[str, Any]:
    """The ScanJob the operator runs in the tenant namespace (group mesial.dev, v1alpha1)."""
    return {
        "apiVersion": "mesial.dev/v1alpha1",
        "kind": "ScanJob",
        "metadata": {
            "name": job.id.replace("_", "-"),
            "namespace": namespace_for(job.org),
            "labels": {"mesial.dev/job-id": job.id},
        },
        "spec": {"upper": job.upper, "lower": job.lower, "bites": list(job.bites), "options": job.options},
    }


class ClusterDispatcher:
    """Cluster mode: each job becomes a ScanJob; ``submit`` is the seam the operator side fills.

    ``create``/``delete`` are coroutines taking the manifest (e.g. a kubernetes-asyncio
    custom-objects call); the API itself does not import a Kubernetes client.
    """

    def __init__(
        self,
        create: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        delete: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.create = create
        self.delete = delete
        self.manifests: dict[str, dict[str, Any]] = {}

    def has_room(self) -> bool:
        return True  # Kubernetes queues: ResourceQuota bounds what runs

    async def submit(self, job: JobSpec) -> None:
        if self.create is None:
            raise ConfigurationError("cluster mode: no ScanJob client is wired into the API")
        manifest = scanjob_manifest(job)
        await self.create(manifest)
        self.manifests[job.id] = manifest

    async def cancel(self, job_id: str) -> None:
        manifest = self.manifests.get(job_id)
        if manifest is not None and self.delete is not None:
            await self.delete(manifest)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
