"""Each tenant's store identity, against the real SeaweedFS (IAM API on its S3 port) and OpenBao.

Tenant A's Job credentials read and write A's prefix (through the encrypted object store,
multipart included) and cannot list, read, write or delete anything of tenant B's, nor list
the bucket. Provisioning is idempotent and corrects drift; deletion removes the identity
and its keys stop working.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session
import pytest
from pydantic import SecretStr

from mesial.common.errors import StorageError
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.store_identity import (
    POLICY_NAME,
    StoreCredentials,
    TenantStoreIdentities,
    normalized_policy,
    tenant_policy,
    user_name_for,
)
from mesial.common.vault import TenantKeys


def s3(settings: Settings, credentials: StoreCredentials | None = None) -> Any:
    store = settings.store
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=store.endpoint_url,
        region_name=store.region,
        aws_access_key_id=credentials.access_key if credentials else store.access_key.get_secret_value(),
        aws_secret_access_key=credentials.secret_key if credentials else store.secret_key.get_secret_value(),
        config=botocore.config.Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def refused(call: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def eventually(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the store did not apply the identity change in time"
        time.sleep(0.2)


@pytest.fixture
def identities(service_settings: Settings) -> TenantStoreIdentities:
    return TenantStoreIdentities(service_settings.store)


async def test_a_job_identity_reaches_its_own_prefix_and_nothing_of_another(
    service_settings: Settings, identities: TenantStoreIdentities
) -> None:
    a, b = f"ta-{secrets.token_hex(3)}", f"tb-{secrets.token_hex(3)}"
    keys = TenantKeys(service_settings.vault)
    keys.ensure_transit()
    for org in (a, b, a + "x"):
        keys.ensure_key(org)
    creds_a = identities.ensure(a)
    identities.ensure(b)
    bucket = service_settings.store.bucket
    platform = s3(service_settings)
    platform.put_object(Bucket=bucket, Key=f"tenants/{b}/scans/secret", Body=b"B's ciphertext")
    platform.put_object(Bucket=bucket, Key=f"tenants/{a}x/scans/lookalike", Body=b"a prefix of A's name")

    # A's Job, as it runs: the encrypted store with A's credentials, small and multipart objects
    job_store = service_settings.store.model_copy(
        update={
            "access_key": SecretStr(creds_a.access_key),
            "secret_key": SecretStr(creds_a.secret_key),
            "part_size": 5 << 20,
        }
    )
    big = secrets.token_bytes(6 << 20)
    async with ObjectStore(job_store, keys) as store:
        await store.put(a, "jobs/j1/progress.json", b'{"percent": 1}')
        stored = await store.put(a, "jobs/j1/artifacts/aligned.stl", big)
        assert stored.parts == 2
        assert await store.read_bytes(a, "jobs/j1/artifacts/aligned.stl") == big
        assert sorted(o.key for o in [m async for m in store.list(a)]) == [
            f"tenants/{a}/jobs/j1/artifacts/aligned.stl",
            f"tenants/{a}/jobs/j1/progress.json",
        ]
        with pytest.raises(StorageError):
            await store.read_bytes(b, "scans/secret")
        with pytest.raises(StorageError):
            [m async for m in store.list(b)]
        with pytest.raises(StorageError):
            await store.put(b, "scans/planted", b"A writes into B")

    job = s3(service_settings, creds_a)
    assert refused(lambda: job.get_object(Bucket=bucket, Key=f"tenants/{b}/scans/secret")) == "AccessDenied"
    assert refused(lambda: job.head_object(Bucket=bucket, Key=f"tenants/{b}/scans/secret")) in ("403", "AccessDenied")
    assert refused(lambda: job.get_object(Bucket=bucket, Key=f"tenants/{a}x/scans/lookalike")) == "AccessDenied"
    for prefix in (f"tenants/{b}/", "tenants/", f"tenants/{a}", ""):
        assert refused(lambda p=prefix: job.list_objects_v2(Bucket=bucket, Prefix=p)) == "AccessDenied", prefix
    assert refused(lambda: job.put_object(Bucket=bucket, Key=f"tenants/{b}/x", Body=b"x")) == "AccessDenied"
    assert refused(lambda: job.delete_object(Bucket=bucket, Key=f"tenants/{b}/scans/secret")) == "AccessDenied"
    # no deletion, no tagging (legal holds), no bucket administration even on its own prefix
    assert refused(lambda: job.delete_object(Bucket=bucket, Key=f"tenants/{a}/jobs/j1/progress.json")) == (
        "AccessDenied"
    )
    assert (
        refused(
            lambda: job.put_object_tagging(
                Bucket=bucket,
                Key=f"tenants/{a}/jobs/j1/progress.json",
                Tagging={"TagSet": [{"Key": "mesial-legal-hold", "Value": "false"}]},
            )
        )
        == "AccessDenied"
    )
    assert refused(lambda: job.create_bucket(Bucket="mesial-other")) == "AccessDenied"
    assert platform.get_object(Bucket=bucket, Key=f"tenants/{b}/scans/secret")["Body"].read() == b"B's ciphertext"
    identities.remove(a)
    identities.remove(b)


def test_ensure_is_idempotent_corrects_drift_and_remove_revokes(
    service_settings: Settings, identities: TenantStoreIdentities
) -> None:
    org = f"tc-{secrets.token_hex(3)}"
    user = user_name_for(org)
    first = identities.ensure(org)
    assert identities.works(org, first)
    assert identities.ensure(org, first) == first  # the Secret's key is kept while it works
    # someone widens the policy: the next pass restores the tenant's own
    wide = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]}]}
    identities.iam.put_user_policy(UserName=user, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(wide))
    assert identities.ensure(org, first) == first
    stored = identities.iam.get_user_policy(UserName=user, PolicyName=POLICY_NAME)["PolicyDocument"]
    assert normalized_policy(stored) == normalized_policy(tenant_policy(org, service_settings.store.bucket))
    # a Secret that lost its key, or holds a foreign one, gets a new key; the old one is deleted
    second = identities.ensure(org, StoreCredentials("AKIAFOREIGN0000000", "nope"))
    assert second.access_key != first.access_key
    assert [k["AccessKeyId"] for k in identities.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]] == [
        second.access_key
    ]
    eventually(lambda: not identities.works(org, first))
    assert identities.remove(org) is True
    assert not identities.exists(org)
    eventually(lambda: not identities.works(org, second))
    assert identities.remove(org) is False  # idempotent
