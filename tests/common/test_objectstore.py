"""The encrypted object store against the real SeaweedFS S3 gateway and OpenBao."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import botocore.session
import pytest

from mesial.common import envelope
from mesial.common.errors import (
    IntegrityError,
    InvalidObjectKey,
    LegalHoldActive,
    ObjectNotFound,
    StoreUnavailable,
    UnsupportedFormat,
    VaultError,
)
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings, StoreSettings
from mesial.common.vault import TenantKeys

SMALL_PARTS = {"part_size": 5 << 20, "chunk_size": 64 << 10}


@pytest.fixture(scope="module")
def keys(service_settings: Settings) -> TenantKeys:
    tenant_keys = TenantKeys(service_settings.vault)
    tenant_keys.ensure_transit()
    for org in ("clinic-a", "clinic-b"):
        tenant_keys.ensure_key(org)
    return tenant_keys


@pytest.fixture
async def store(service_settings: Settings, keys: TenantKeys) -> AsyncIterator[ObjectStore]:
    settings = service_settings.store.model_copy(update=SMALL_PARTS)
    async with ObjectStore(settings, keys) as opened:
        yield opened


def raw_client(settings: Settings):
    s = settings.store
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s.endpoint_url,
        region_name=s.region,
        aws_access_key_id=s.access_key.get_secret_value(),
        aws_secret_access_key=s.secret_key.get_secret_value(),
    )


async def test_round_trip_is_encrypted_at_rest(store: ObjectStore, service_settings: Settings) -> None:
    data = os.urandom(300_000)
    stored = await store.put("clinic-a", "scans/s1", data)
    assert stored.key == "tenants/clinic-a/scans/s1"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await store.read_bytes("clinic-a", "scans/s1") == data
    at_rest = raw_client(service_settings).get_object(Bucket=store.bucket, Key=stored.key)
    body = at_rest["Body"].read()
    assert body.startswith(envelope.MAGIC)
    assert data[:64] not in body
    assert at_rest["Metadata"]["mesial-key-version"] == str(stored.key_version)


async def test_empty_object(store: ObjectStore) -> None:
    await store.put("clinic-a", "scans/empty", b"")
    assert await store.read_bytes("clinic-a", "scans/empty") == b""


async def test_multipart_stream_round_trip(store: ObjectStore) -> None:
    pieces = [os.urandom(777_777) for _ in range(20)]  # ~15 MiB: three 5 MiB parts

    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    stored = await store.put("clinic-a", "results/big", source())
    assert stored.parts >= 3
    got = hashlib.sha256()
    async for piece in store.get("clinic-a", "results/big"):
        got.update(piece)
    assert got.hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest() == stored.sha256


async def test_failed_stream_leaves_no_object_and_no_upload(store: ObjectStore, service_settings: Settings) -> None:
    async def broken() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield os.urandom(1 << 20)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put("clinic-a", "scans/half", broken())
    assert not await store.exists("clinic-a", "scans/half")
    uploads = raw_client(service_settings).list_multipart_uploads(Bucket=store.bucket, Prefix="tenants/clinic-a/")
    assert not uploads.get("Uploads")


async def test_cancelled_upload_is_aborted(store: ObjectStore, service_settings: Settings) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield os.urandom(1 << 20)
        started.set()
        await asyncio.sleep(60)
        yield b"never"

    task = asyncio.create_task(store.put("clinic-a", "scans/cancelled", slow()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.exists("clinic-a", "scans/cancelled")
    uploads = raw_client(service_settings).list_multipart_uploads(Bucket=store.bucket, Prefix="tenants/clinic-a/")
    assert not uploads.get("Uploads")


@pytest.mark.parametrize(
    "bad", ["../clinic-b/scans/s1", "/etc/passwd", "scans/../../x", "tenants/clinic-b/x", "a//b", ""]
)
async def test_hostile_keys_are_refused(store: ObjectStore, bad: str) -> None:
    with pytest.raises(InvalidObjectKey):
        await store.put("clinic-a", bad, b"x")


async def test_object_moved_to_another_tenant_does_not_open(store: ObjectStore, service_settings: Settings) -> None:
    await store.put("clinic-a", "scans/moved", b"patient scan")
    s3 = raw_client(service_settings)
    blob = s3.get_object(Bucket=store.bucket, Key="tenants/clinic-a/scans/moved")["Body"].read()
    s3.put_object(Bucket=store.bucket, Key="tenants/clinic-b/scans/moved", Body=blob)
    with pytest.raises(VaultError):  # clinic-b's key cannot unwrap clinic-a's data key
        await store.read_bytes("clinic-b", "scans/moved")
    s3.put_object(Bucket=store.bucket, Key="tenants/clinic-a/scans/renamed", Body=blob)
    with pytest.raises(IntegrityError):  # same tenant, other path: the chunks are bound to the key
        await store.read_bytes("clinic-a", "scans/renamed")


async def test_tampered_and_truncated_ciphertext_fail(store: ObjectStore, service_settings: Settings) -> None:
    await store.put("clinic-a", "scans/t", os.urandom(200_000))
    s3 = raw_client(service_settings)
    key = "tenants/clinic-a/scans/t"
    blob = bytearray(s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    s3.put_object(Bucket=store.bucket, Key=key, Body=bytes(flipped))
    with pytest.raises(IntegrityError):
        await store.read_bytes("clinic-a", "scans/t")
    s3.put_object(Bucket=store.bucket, Key=key, Body=bytes(blob[: len(blob) - 100]))
    with pytest.raises(IntegrityError):
        await store.read_bytes("clinic-a", "scans/t")
    s3.put_object(Bucket=store.bucket, Key=key, Body=b"not an envelope at all")
    with pytest.raises(UnsupportedFormat):
        await store.read_bytes("clinic-a", "scans/t")


async def test_legal_hold_blocks_deletion(store: ObjectStore) -> None:
    await store.put("clinic-a", "holds/h1", b"evidence")
    await store.put("clinic-a", "holds/h2", b"routine")
    await store.set_legal_hold("clinic-a", "holds/h1", True)
    assert await store.legal_hold("clinic-a", "holds/h1")
    with pytest.raises(LegalHoldActive):
        await store.delete("clinic-a", "holds/h1")
    report = await store.delete_prefix("clinic-a", "holds/")
    assert (report.deleted, report.held) == (1, 1)
    assert await store.read_bytes("clinic-a", "holds/h1") == b"evidence"
    await store.set_legal_hold("clinic-a", "holds/h1", False)
    await store.delete("clinic-a", "holds/h1")
    with pytest.raises(ObjectNotFound):
        await store.read_bytes("clinic-a", "holds/h1")


async def test_list_is_scoped_to_the_tenant(store: ObjectStore) -> None:
    await store.put("clinic-a", "list/one", b"1")
    await store.put("clinic-b", "list/two", b"2")
    keys_a = [meta.key async for meta in store.list("clinic-a", "list/")]
    assert keys_a == ["tenants/clinic-a/list/one"]
    assert [meta.key async for meta in store.list("clinic-b", "list/")] == ["tenants/clinic-b/list/two"]


async def test_rewrap_after_rotation_keeps_data(store: ObjectStore, keys: TenantKeys) -> None:
    data = os.urandom(6 << 20)
    before = await store.put("clinic-a", "scans/rot", data)
    await store.set_legal_hold("clinic-a", "scans/rot", True)
    rotated = await asyncio.to_thread(keys.rotate, "clinic-a")
    assert await store.rewrap("clinic-a", "scans/rot") == rotated.latest_version > before.key_version
    assert (await store.head("clinic-a", "scans/rot")).key_version == rotated.latest_version
    assert await store.read_bytes("clinic-a", "scans/rot") == data
    assert await store.legal_hold("clinic-a", "scans/rot")  # tags survive the rewrite


async def test_store_down_is_a_typed_error(keys: TenantKeys) -> None:
    settings = StoreSettings(endpoint_url="http://127.0.0.1:9", max_attempts=1, timeout_s=1)
    async with ObjectStore(settings, keys) as down:
        with pytest.raises(StoreUnavailable):
            await down.put("clinic-a", "scans/x", b"x")


@pytest.mark.slow
async def test_one_gib_streams_through_with_bounded_memory(service_settings: Settings, keys: TenantKeys) -> None:
    """1 GiB up and down through the envelope and S3 multipart: RSS grows by well under 64 MiB."""
    import psutil

    process = psutil.Process()
    block = os.urandom(1 << 20)
    total = 1 << 30
    peak = 0

    def sample() -> None:
        nonlocal peak
        peak = max(peak, process.memory_info().rss)

    async def source() -> AsyncIterator[bytes]:
        for index in range(total // len(block)):
            sample()
            # Every MiB differs, so a reordered or repeated chunk would change the digest.
            yield index.to_bytes(8, "big") + block[8:]

    expected = hashlib.sha256()
    for index in range(total // len(block)):
        expected.update(index.to_bytes(8, "big") + block[8:])

    async with ObjectStore(service_settings.store, keys) as store:
        baseline = process.memory_info().rss
        stored = await store.put("clinic-a", "scans/one-gib", source())
        assert stored.size == total
        assert stored.sha256 == expected.hexdigest()
        got = hashlib.sha256()
        size = 0
        async for piece in store.get("clinic-a", "scans/one-gib"):
            got.update(piece)
            size += len(piece)
            sample()
        await store.delete("clinic-a", "scans/one-gib")
    assert size == total
    assert got.hexdigest() == expected.hexdigest()
    growth_mib = (peak - baseline) / (1 << 20)
    print(f"RSS growth streaming 1 GiB up and down: {growth_mib:.1f} MiB")
    assert growth_mib < 64, f"RSS grew by {growth_mib:.1f} MiB streaming 1 GiB"


async def test_a_prefix_of_more_than_a_thousand_objects_is_listed_and_deleted_whole(store: ObjectStore) -> None:
    """docs/storage.md: `delete_prefix` deletes in batches of 1000 (S3's limit per request), and S3 lists
    1000 keys a page: a tenant with 1 050 objects loses every one (its deletion, `include_held`), not the
    first thousand. The held one stays without `include_held`."""
    org, prefix, count = "clinic-b", "many/", 1050
    keys = [f"tenants/{org}/{prefix}{i:05d}" for i in range(count)]
    for start in range(0, count, 100):  # raw objects: listing and deletion never read them
        await asyncio.gather(
            *(store.client.put_object(Bucket=store.bucket, Key=k, Body=b"x") for k in keys[start : start + 100])
        )
    assert len([m async for m in store.list(org, prefix)]) == count
    await store.set_legal_hold(org, f"{prefix}01000", True)
    first = await store.delete_prefix(org, prefix)
    assert (first.deleted, first.held) == (count - 1, 1)
    assert [m.key async for m in store.list(org, prefix)] == [f"tenants/{org}/{prefix}01000"]
    last = await store.delete_prefix(org, prefix, include_held=True)
    assert (last.deleted, last.held) == (1, 0)
    assert [m async for m in store.list(org, prefix)] == []
