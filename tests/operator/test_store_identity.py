"""The store Secret in a tenant namespace holds that tenant's own identity (real SeaweedFS IAM), made
at provisioning, restored when tampered with, removed at deletion."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session
import pytest

from mesial.common.settings import Settings
from mesial.common.store_identity import StoreCredentials, TenantStoreIdentities, user_name_for
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually
from tests.operator.helpers import ORG, audit_events, organization, ready


async def _secret_credentials(k8s, ns: str) -> StoreCredentials | None:
    secret = await k8s.get("v1", "Secret", "mesial-store", ns)
    if secret is None:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return StoreCredentials(data["access-key"], data["secret-key"])


def _s3(settings: Settings, credentials: StoreCredentials) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=settings.store.endpoint_url,
        region_name=settings.store.region,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        config=botocore.config.Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


async def test_each_tenant_namespace_gets_its_own_store_identity(
    harness: Harness, operator_settings: Settings, org_name
) -> None:
    k8s = harness.client
    a, b = org_name("ida"), org_name("idb")
    for name in (a, b):
        await k8s.create(organization(name))
    await eventually(lambda: ready(k8s, a))
    await eventually(lambda: ready(k8s, b))
    creds_a = await _secret_credentials(k8s, f"mesial-org-{a}")
    creds_b = await _secret_credentials(k8s, f"mesial-org-{b}")
    assert creds_a is not None and creds_b is not None
    platform = operator_settings.store.access_key.get_secret_value()
    assert platform not in (creds_a.access_key, creds_b.access_key) and creds_a != creds_b
    identities = TenantStoreIdentities(operator_settings.store)
    keys = identities.iam.list_access_keys(UserName=user_name_for(a))["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [creds_a.access_key]

    await harness.runtime.store.put(b, "scans/s1", b"B's arch")
    job_a = _s3(operator_settings, creds_a)
    bucket = operator_settings.store.bucket
    assert job_a.list_objects_v2(Bucket=bucket, Prefix=f"tenants/{a}/").get("KeyCount") == 0
    calls: list[Callable[[], Any]] = [
        lambda: job_a.list_objects_v2(Bucket=bucket, Prefix=f"tenants/{b}/"),
        lambda: job_a.get_object(Bucket=bucket, Key=f"tenants/{b}/scans/s1"),
    ]
    for call in calls:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # someone overwrites the Secret with the platform's credentials: the drift pass restores A's own
    await k8s.patch(
        "v1",
        "Secret",
        "mesial-store",
        {"data": {"access-key": base64.b64encode(platform.encode()).decode()}},
        namespace=f"mesial-org-{a}",
    )

    async def restored() -> bool:
        now = await _secret_credentials(k8s, f"mesial-org-{a}")
        return now is not None and now.access_key != platform and identities.works(a, now)

    await eventually(restored)

    await k8s.delete(*ORG, a)
    await eventually(lambda: _gone(k8s, a))
    assert not identities.exists(a)
    receipt = next(e for e in audit_events(harness.runtime) if e["action"] == "organization.deleted")
    assert receipt["details"]["store_identity_removed"] is True
    assert identities.exists(b)
    await k8s.delete(*ORG, b)
    await eventually(lambda: _gone(k8s, b))
    assert not identities.exists(b)


async def _gone(k8s, name: str) -> bool:
    return await k8s.get(*ORG, name) is None
