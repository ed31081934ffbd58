"""The aligner Jobs' store credentials: a Secret in the tenant namespace, kept by the operator.

A pod can reference Secrets of its own namespace only, so the identity aligner Jobs use
(``operator.job_store_access_key``/``job_store_secret_key``: object read/write on the
bucket, no bucket administration) is copied here. Nothing in the namespace may read it
through the API (the aligner's Role grants ``get`` on scanjobs only); the Job's container
gets the two values as environment variables by ``secretKeyRef``. Store objects are
envelope-encrypted with the tenant's own Vault key, which only the tenant's Vault role
can use: a store credential alone reads ciphertext, never another tenant's plaintext.
"""

from __future__ import annotations

import base64

from mesial.common.settings import Settings
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import OrgView

ACCESS_KEY = "access-key"
SECRET_KEY = "secret-key"


def job_store_credentials(settings: Settings) -> tuple[str, str]:
    op = settings.operator
    if op.job_store_access_key is not None and op.job_store_secret_key is not None:
        return op.job_store_access_key.get_secret_value(), op.job_store_secret_key.get_secret_value()
    return settings.store.access_key.get_secret_value(), settings.store.secret_key.get_secret_value()


def desired_store_secret(org: OrgView, settings: Settings) -> Obj:
    access, secret = job_store_credentials(settings)
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


async def sync_store_secret(k8s: K8s, org: OrgView, settings: Settings) -> list[Applied]:
    return [await k8s.apply(desired_store_secret(org, settings))]
