"""What the handlers share: settings and the clients of the services they drive.

One :class:`Runtime` per operator process (or per emulated operator in the tests),
handed to every handler through kopf's ``memo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mesial.common.audit import AuditSink, HttpAuditSink
from mesial.common.audit_sinks import CollectorAuditSink, JsonlAuditSink
from mesial.common.objectstore import ObjectStore
from mesial.common.provisioning import TenantProvisioner
from mesial.common.retention import RecordSweeper
from mesial.common.settings import Settings
from mesial.common.store_identity import TenantStoreIdentities
from mesial.common.vault import TenantKeys
from mesial.operator.k8s import K8s
from mesial.operator.reporting import JobReporter, api_client


@dataclass
class Runtime:
    settings: Settings
    k8s: K8s
    keys: TenantKeys
    provisioner: TenantProvisioner
    store: ObjectStore
    audit: AuditSink
    # The database side of retention (rows belong to the API); None until the API provides it.
    records: RecordSweeper | None = None
    # Job states to the API (cluster mode, ``operator.api_url`` set); None: ScanJobs are not reported.
    reporter: JobReporter | None = None
    # Tenants' own store identities (``operator.job_store_identity: per-tenant``); None: one shared identity.
    identities: TenantStoreIdentities | None = None
    # The clock retention sweeps by (tests move it to age objects).
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _locks: weakref.WeakValueDictionary[tuple[str, ...], asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )

    def org_lock(self, org: str) -> asyncio.Lock:
        """One Organization's lock: a drift pass caught mid-run by a deletion (kopf runs the deletion
        handler while the timer is still exiting) must not recreate what the deletion removes."""
        return self.lock("organization", org)

    def lock(self, *key: str) -> asyncio.Lock:
        """The lock of one object (``key``: its kind, namespace and name), held while a handler
        decides and writes: kopf runs an object's deletion handler while a timer tick of it is still
        running. Kept while someone holds or waits for it, then dropped."""
        found = self._locks.get(key)
        if found is None:
            found = self._locks[key] = asyncio.Lock()
        return found

    @classmethod
    async def create(
        cls,
        settings: Settings,
        k8s: K8s,
        *,
        audit: AuditSink | None = None,
        records: RecordSweeper | None = None,
    ) -> Runtime:
        keys = TenantKeys(settings.vault)
        provisioner = TenantProvisioner(keys, settings.vault, settings.operator)
        stack = contextlib.AsyncExitStack()
        store = await stack.enter_async_context(ObjectStore(settings.store, keys))
        sink = audit if audit is not None else default_audit_sink(settings)
        reporter = JobReporter.from_settings(settings.operator)
        per_tenant = settings.operator.job_store_identity == "per-tenant"
        identities = TenantStoreIdentities(settings.store) if per_tenant else None
        return cls(settings, k8s, keys, provisioner, store, sink, records, reporter, identities, _stack=stack)

    def now(self) -> datetime:
        return self.clock()

    async def close(self) -> None:
        await self._stack.aclose()
        await self.k8s.close()


def default_audit_sink(settings: Settings) -> AuditSink:
    """The API's collector when the operator knows the API (cluster mode), else the JSON Lines file."""
    http = api_client(settings.operator, HttpAuditSink)
    return CollectorAuditSink(http) if http is not None else JsonlAuditSink(settings.operator.audit_jsonl_path)
