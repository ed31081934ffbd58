"""What a running API process holds: settings, database context, keys, store, collector."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesial.api.audit.collector import AuditCollector
from mesial.api.auth import OidcVerifier
from mesial.api.middleware.limits import RateLimiter
from mesial.api.middleware.metrics import Metrics
from mesial.api.services.links import LinkSigner
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.vault import TenantKeys

if TYPE_CHECKING:
    from mesial.api.executor import Dispatcher


@dataclass
class Runtime:
    settings: Settings
    links: LinkSigner
    oidc: OidcVerifier
    per_key: RateLimiter
    auth_failures: RateLimiter
    metrics: Metrics
    tortoise: Any = None  # the TortoiseContext, set by the lifespan
    keys: TenantKeys | None = None
    store: ObjectStore | None = None
    collector: AuditCollector | None = None
    dispatcher: Dispatcher | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def need_store(self) -> ObjectStore:
        if self.store is None:
            raise RuntimeError("object store not started")
        return self.store

    def need_keys(self) -> TenantKeys:
        if self.keys is None:
            raise RuntimeError("key service not started")
        return self.keys

    def need_collector(self) -> AuditCollector:
        if self.collector is None:
            raise RuntimeError("audit collector not started")
        return self.collector
