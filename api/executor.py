"""Running jobs: the local executor (a subprocess per job, bounded queue) and the cluster seam.

Both run the same Job entrypoint, under the job contract of :mod:`mesial.common.contract`:

* arguments: ``JobSpec.argv()`` then ``--scratch DIR``, appended to
  ``ApiSettings.job_command``; Vault and store settings come in the ``MESIAL_*``
  environment variables of ``job_environment``, the store credentials of the job's tenant's
  own identity (``operator.job_store_identity: per-tenant``, :mod:`mesial.common.store_identity`);
  the working directory is a scratch directory of the job;
* input: the scans (``scan_key``, sealed; ObjectStore.get);
* output: artifacts (``artifact_key``) and the progress document (``progress_key``),
  rewritten after each stage (state, stage, percent, message, flat metrics, artifact keys);
* exit code 0 means success; anything else (1 failure, 2 invalid input) is failure
  (the last progress message, which ``parse_progress`` sanitizes, becomes the job's message).

The local executor polls the progress document while the job runs, and at the end
registers the artifacts it lists (the job's own artifact keys only; each is
read back once, authenticated, to record its size and SHA-256), and audits the job's
lifecycle in its tenant's chain. In cluster mode the dispatcher renders a ScanJob for
the operator (`ClusterDispatcher`), which mirrors the same document into the ScanJob.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from mesial.api.audit.collector import AuditCollector
from mesial.api.errors import Busy
from mesial.api.models import Artifact, Job, Organization
from mesial.api.services.jobs import ACTOR, FINAL, JobState, job_spec
from mesial.api.types import new_id, utcnow
from mesial.common.audit import AuditEvent
from mesial.common.contract import JobProgress, JobSpec, artifact_key, artifact_name, job_environment, read_progress
from mesial.common.errors import ConfigurationError, MesialError, StorageError
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.store_identity import StoreCredentials, TenantStoreIdentities
from mesial.common.tenancy import namespace_for

log = logging.getLogger("mesial.api.executor")


class Dispatcher(Protocol):
    def has_room(self) -> bool: ...
    async def submit(self, job: JobSpec) -> None: ...
    async def cancel(self, job_id: str) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def job_arguments(job: JobSpec, scratch: Path) -> list[str]:
    """The arguments of ``mesial job run`` for one job (appended to ``job_command``)."""
    return [*job.argv(), "--scratch", str(scratch)]


def resolve_command(command: list[str]) -> list[str]:
    """``mesial`` from the API's own environment when it is not on PATH (a venv not activated)."""
    if command and shutil.which(command[0]) is None:
        sibling = Path(sys.executable).parent / command[0]
        if sibling.is_file():
            return [str(sibling), *command[1:]]
    return list(command)


class JobResults:
    """Reads a job's progress document and records its end: row, artifacts, audit event.

    Shared by the local executor and the internal status endpoint the operator calls in
    cluster mode, so both modes finish a job the same way.
    """

    def __init__(self, store: ObjectStore, collector: AuditCollector) -> None:
        self.store = store
        self.collector = collector

    async def audit(self, job: JobSpec, action: str, actor: str = ACTOR) -> None:
        await self.collector.append(AuditEvent(job.org, actor, action, "job", job.job_id))

    async def progress(self, job: JobSpec) -> JobProgress | None:
        try:
            return await read_progress(self.store, job.org, job.job_id)
        except MesialError as exc:  # unreadable or malformed: keep the last known state
            log.warning("job %s: progress unreadable (%s)", job.job_id, type(exc).__name__)
            return None

    async def register_artifacts(self, job: JobSpec, keys: list[str]) -> None:
        row = await Job.get(id=job.job_id)
        for key in keys:
            name = artifact_name(job.job_id, key)
            if name is None:
                log.warning("job %s: artifact outside its job's prefix ignored", job.job_id)
                continue
            if await Artifact.exists(job_id=job.job_id, name=name):
                continue  # a repeated report (operator retry)
            hasher, size = hashlib.sha256(), 0
            async for piece in self.store.get(job.org, artifact_key(job.job_id, name)):
                hasher.update(piece)
                size += len(piece)
            await Artifact.create(
                id=new_id("art"), org_id=row.org_id, job_id=job.job_id, name=name, size=size,
                sha256=hasher.hexdigest(), created_at=utcnow(),
            )  # fmt: skip

    async def finish(
        self, job: JobSpec, state: JobState, message: str, progress: JobProgress | None, actor: str = ACTOR
    ) -> None:
        fields: dict[str, Any] = {"state": state.value, "message": message, "finished_at": utcnow()}
        if progress is not None:
            fields["metrics"] = progress.metrics
            fields["result"] = progress.result
        if state is JobState.succeeded:
            fields["progress"] = 1.0
        done = await Job.filter(id=job.job_id).exclude(state__in=[s.value for s in FINAL]).update(**fields)
        if done or state is JobState.cancelled:
            await self.audit(job, f"job.{state.value}", actor)

    async def conclude(self, job: JobSpec, succeeded: bool, message: str, actor: str = ACTOR) -> None:
        """The end of a job that ran: its last progress, its artifacts if it succeeded."""
        if await Job.filter(id=job.job_id, state__in=[s.value for s in FINAL]).exists():
            return  # already concluded (or cancelled)
        progress = await self.progress(job)
        if not succeeded:
            text = progress.message if progress and progress.message else message
            await self.finish(job, JobState.failed, text[:500], progress, actor)
            return
        await self.register_artifacts(job, progress.artifacts if progress else [])
        await self.finish(job, JobState.succeeded, progress.message if progress else "", progress, actor)


class LocalExecutor:
    """Runs jobs as subprocesses: ``workers`` at a time, ``queue_size`` waiting, then 503."""

    def __init__(self, settings: Settings, store: ObjectStore, collector: AuditCollector) -> None:
        self.settings = settings
        self.store = store
        self.results = JobResults(store, collector)
        self.queue: asyncio.Queue[JobSpec] = asyncio.Queue(maxsize=settings.api.executor_queue_size)
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self.cancelled: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        # Jobs read and write with their tenant's own store identity (tenants/<org>/ only, no delete,
        # as the operator's Jobs do), not with the API's credentials; ``shared``: the API's.
        per_tenant = settings.operator.job_store_identity == "per-tenant"
        self.identities = TenantStoreIdentities(settings.store) if per_tenant else None
        self._credentials: dict[str, StoreCredentials] = {}
        self._identity_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def has_room(self) -> bool:
        return not self.queue.full()

    async def submit(self, job: JobSpec) -> None:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:  # its row is failed with an event of its own (services.jobs.hand_over)
            raise Busy("the job queue is full; retry later") from None

    async def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)
        process = self.running.get(job_id)
        if process is not None:
            await _terminate(process)

    async def start(self) -> None:
        if self.settings.api.executor_recover_on_start:
            await self.recover()
        for _ in range(self.settings.api.executor_workers):
            self._workers.append(asyncio.create_task(self._work()))

    async def recover(self) -> None:
        """Jobs a previous process left behind: running ones failed, queued ones queued again (among
        them a job whose hand-over failed and whose failing failed too: :func:`~mesial.api.services.jobs.hand_over`)."""
        for job in await Job.filter(state__in=[JobState.running.value, JobState.queued.value]).order_by("created_at"):
            org = await Organization.get_or_none(id=job.org_id)
            if org is None:
                continue
            spec = job_spec(job, org.name)
            if job.state == JobState.queued.value and self.has_room():
                self.queue.put_nowait(spec)
            else:
                reason = (
                    "interrupted: the API restarted" if job.state == JobState.running.value else "queue full at restart"
                )
                await self.results.finish(spec, JobState.failed, reason, None)

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
                log.error("job %s: executor error %s", job.job_id, type(exc).__name__, exc_info=exc)
                await self.results.finish(job, JobState.failed, "executor error", None)
            finally:
                self.queue.task_done()

    async def _run(self, job: JobSpec) -> None:
        if job.job_id in self.cancelled:
            return
        updated = await Job.filter(id=job.job_id, state=JobState.queued.value).update(
            state=JobState.running.value, started_at=utcnow()
        )
        if not updated:
            return  # cancelled while queued
        await self.results.audit(job, "job.started")
        try:
            env = await self.environment(job.org)
        except StorageError as exc:
            log.error("job %s: no store identity for its tenant: %s", job.job_id, exc)
            await self.results.finish(job, JobState.failed, "the tenant's store identity is unavailable", None)
            return
        workdir = Path(self.settings.data_dir) / "jobs" / job.job_id
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "scratch").mkdir(mode=0o700, exist_ok=True)  # decrypted inputs: this user only
        with (workdir / "job.log").open("wb") as logfile:
            process = await asyncio.create_subprocess_exec(
                *resolve_command(self.settings.api.job_command),
                *job_arguments(job, workdir / "scratch"),
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            self.running[job.job_id] = process
            try:
                code = await self._watch(job, process)
            finally:
                self.running.pop(job.job_id, None)
        if job.job_id in self.cancelled:
            await self.results.finish(job, JobState.cancelled, "cancelled", None)
            self.cancelled.discard(job.job_id)
        elif code is None:
            await self.results.finish(job, JobState.failed, "deadline exceeded", None)
        else:
            await self.results.conclude(job, code == 0, f"job exited with code {code}")

    async def environment(self, org: str) -> dict[str, str]:
        """A job's environment: the API's settings, with the tenant's own store identity (made or
        checked through the store's IAM API, kept for the next job) in place of the API's credentials."""
        env = job_environment(self.settings)
        if self.identities is not None:
            async with self._identity_locks[org]:  # ensure() replaces keys it does not know: one at a time
                credentials = await asyncio.to_thread(self.identities.ensure, org, self._credentials.get(org))
                self._credentials[org] = credentials
            env["MESIAL_STORE__ACCESS_KEY"] = credentials.access_key
            env["MESIAL_STORE__SECRET_KEY"] = credentials.secret_key
        return env

    async def _watch(self, job: JobSpec, process: asyncio.subprocess.Process) -> int | None:
        """Wait for the process, copying progress into the row; None if the deadline passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.api.job_timeout_s
        while True:
            try:
                return await asyncio.wait_for(process.wait(), timeout=self.settings.api.job_poll_s)
            except TimeoutError:
                pass
            progress = await self.results.progress(job)
            if progress is not None:
                await Job.filter(id=job.job_id, state=JobState.running.value).update(
                    progress=progress.percent / 100, metrics=progress.metrics
                )
            if loop.time() > deadline:
                await _terminate(process)
                return None


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
    """The ScanJob the operator runs in the tenant namespace (``crds/scanjob.yaml``).

    Its ``spec`` is the job contract's (``JobSpec.scanjob_spec``), which the operator reads
    back with ``JobSpec.from_scanjob``; the label carries the API's job id.
    """
    return {
        "apiVersion": "mesial.dev/v1alpha1",
        "kind": "ScanJob",
        "metadata": {
            "name": job.job_id.replace("_", "-"),
            "namespace": namespace_for(job.org),
            "labels": {"mesial.dev/job-id": job.job_id},
        },
        "spec": job.scanjob_spec(),
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

    @classmethod
    def for_api(cls, kube: Any) -> ClusterDispatcher:
        """A dispatcher over a :class:`~mesial.api.kube.KubeApi` (in-cluster in production)."""
        return cls(kube.create, kube.delete)

    def has_room(self) -> bool:
        return True  # Kubernetes queues: ResourceQuota bounds what runs

    async def submit(self, job: JobSpec) -> None:
        if self.create is None:
            raise ConfigurationError("cluster mode: no ScanJob client is wired into the API")
        await self.create(scanjob_manifest(job))

    async def cancel(self, job_id: str) -> None:
        job = await Job.get_or_none(id=job_id)
        org = await Organization.get_or_none(id=job.org_id) if job else None
        if job is None or org is None or self.delete is None:
            return
        await self.delete(scanjob_manifest(job_spec(job, org.name)))  # the operator stops the Job with its ScanJob

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
