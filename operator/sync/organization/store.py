"""The aligner Jobs' store credentials: a Secret in the tenant namespace, kept by the operator.

A pod can reference Secrets of its own namespace only, so the identity aligner Jobs use
is put here. By default (``operator.job_store_identity: per-tenant``) it is the tenant's
own store identity, limited to ``tenants/<org>/`` (:mod:`mesial.common.store_identity`):
made at provisioning, its key kept while the Secret holds a working one and replaced
otherwise, removed at deletion. ``shared`` copies one identity into every tenant
(``operator.job_store_access_key``/``job_store_secret_key``, else the operator's own:
development only). Nothing in the namespace may read the Secret through the API (the
aligner's Role grants ``get`` on scanjobs only); the Job's container gets the two values
as environment variables by ``secretKeyRef``. Store objects are envelope-encrypted with
the tenant's own Vault key on top.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from mesial.common.settings import Settings
from mesial.common.store_identity import StoreCredentials, TenantStoreIdentities
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import OrgView

ACCESS_KEY = "access-key"
SECRET_KEY = "secret-key"


def job_store_credentials(settings: Settings) -> tuple[str, str]:
    op = settings.operator
    if op.job_store_access_key is not None and op.job_store_secret_key is not None:
        return op.job_store_access_key.get_secret_value(), op.job_store_secret_key.get_secret_value()
    return settings.store.access_key.get_secret_value(), settings.store.secret_key.get_secret_value()


def desired_store_secret(org: OrgView, settings: Settings, credentials: StoreCredentials | None = None) -> Obj:
    """The Secret with ``credentials`` (the tenant's own identity), or the shared ones."""
    access, secret = (
        (credentials.access_key, credentials.secret_key) if credentials else job_store_credentials(settings)
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": settings.operator.job_store_secret,
            "namespace": org.namespace,
            "labels": org.labels(settings.operator),
        },
        "data": {ACCESS_KEY: _b64(access), SECRET_KEY: _b64(secret)},
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _held(secret: Obj | None) -> StoreCredentials | None:
    """The credentials a live Secret holds, if it holds a readable pair."""
    data = (secret or {}).get("data") or {}
    try:
        return StoreCredentials(
            base64.b64decode(data[ACCESS_KEY]).decode(), base64.b64decode(data[SECRET_KEY]).decode()
        )
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None


async def sync_store_secret(
    k8s: K8s, org: OrgView, settings: Settings, identities: TenantStoreIdentities | None = None
) -> list[Applied]:
    credentials = None
    if identities is not None:
        live = await k8s.get("v1", "Secret", settings.operator.job_store_secret, org.namespace)
        credentials = await asyncio.to_thread(identities.ensure, org.name, _held(live))
    return [await k8s.apply(desired_store_secret(org, settings, credentials))]
