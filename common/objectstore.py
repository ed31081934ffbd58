"""The encrypted object store: tenant objects in S3, sealed with the envelope format.

Every object lives under ``tenants/<org>/`` and is sealed with a fresh data key of that
tenant (see :mod:`mesial.common.envelope` and :mod:`mesial.common.vault`). Writes
stream: the plaintext is hashed and sealed as it arrives and goes out in S3 multipart
parts, so memory stays around one part whatever the size. A write that fails for any
reason (source error, cancellation, store error) aborts its multipart upload: no
partial object is ever visible, and a small object is a single atomic PUT.

S3 metadata repeats the key version and the wrapped data key for inventory (which
objects still use an old key version), but the envelope header is what decryption
trusts. A legal hold is an object tag; a held object is never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aiobotocore.session
import botocore.exceptions
from aiobotocore.config import AioConfig

from mesial.common import envelope
from mesial.common.errors import IntegrityError, LegalHoldActive, ObjectNotFound, StorageError, StoreUnavailable
from mesial.common.settings import StoreSettings
from mesial.common.tenancy import object_key_for, tenant_prefix, validate_org_name, validate_relative_key
from mesial.common.vault import TenantKeys, key_version_of

LEGAL_HOLD_TAG = "mesial-legal-hold"
META_FORMAT = "mesial-format"
META_KEY_VERSION = "mesial-key-version"
META_WRAPPED_KEY = "mesial-wrapped-key"
META_TENANT = "mesial-tenant"
# When the object was first uploaded (ISO 8601, UTC); kept by rewrap, which resets the store's timestamp.
META_CREATED = "mesial-created"
FORMAT_NAME = f"MSLE{envelope.FORMAT_VERSION}"
READ_SIZE = 1 << 20

_UNAVAILABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


@dataclass(frozen=True)
class StoredObject:
    """What a write stored: plaintext size and SHA-256, and the key version that sealed it."""

    key: str
    size: int
    sha256: str
    key_version: int
    stored_bytes: int
    parts: int


@dataclass(frozen=True)
class ObjectMeta:
    """An object as the store lists it (no decryption)."""

    key: str
    stored_bytes: int
    last_modified: datetime
    key_version: int | None = None


@dataclass(frozen=True)
class DeleteReport:
    deleted: int
    held: int


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _translated(key: str) -> Any:
    """Translate botocore's errors into the storage error tree, at this one edge."""
    try:
        yield
    except botocore.exceptions.SSLError as exc:
        # a certificate no trusted CA signed: store.ca_cert (the chart's store.caSecret) names the CA
        raise StoreUnavailable(f"object store TLS failed (is its CA in store.ca_cert?): {exc}"[:300]) from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"object store unreachable: {type(exc).__name__}") from exc
    except botocore.exceptions.ClientError as exc:
        if _code(exc) in ("NoSuchKey", "404", "NotFound"):
            raise ObjectNotFound(key) from exc
        raise StorageError(f"object store refused the request ({_code(exc) or 'unknown error'})") from exc


class ObjectStore:
    """Encrypted, tenant-scoped object storage over one S3 bucket. Use as ``async with``."""

    def __init__(self, settings: StoreSettings, keys: TenantKeys) -> None:
        self.settings = settings
        self.keys = keys
        self.bucket = settings.bucket
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> Self:
        session = aiobotocore.session.get_session()
        config = AioConfig(
            connect_timeout=self.settings.timeout_s,
            read_timeout=self.settings.timeout_s,
            retries={"max_attempts": self.settings.max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=self.settings.endpoint_url,
                region_name=self.settings.region,
                aws_access_key_id=self.settings.access_key.get_secret_value(),
                aws_secret_access_key=self.settings.secret_key.get_secret_value(),
                verify=self._verify(),
                config=config,
            )
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
        self._client = None

    def _verify(self) -> bool | str:
        """botocore's ``verify``: the private CA's path when one is set (``True`` would make botocore
        ignore ``AWS_CA_BUNDLE`` and trust only its own bundle), else whether to check at all."""
        if not self.settings.verify_tls:
            return False
        return str(self.settings.ca_cert) if self.settings.ca_cert else True

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StorageError("ObjectStore used outside `async with`")
        return self._client

    # -- writing ---------------------------------------------------------------------
    async def put(
        self,
        org: str,
        relative: str,
        source: bytes | Iterable[bytes] | AsyncIterable[bytes],
        *,
        legal_hold: bool = False,
    ) -> StoredObject:
        """Seal ``source`` with a fresh data key of ``org`` and store it at ``relative``."""
        key = object_key_for(org, relative)
        data_key = await asyncio.to_thread(self.keys.data_key, org)
        sealer = envelope.Sealer(
            data_key.plaintext,
            data_key.wrapped,
            data_key.key_version,
            tenant=org,
            object_key=key,
            chunk_size=self.settings.chunk_size,
        )
        hasher = hashlib.sha256()
        size = 0

        async def sealed() -> AsyncIterator[bytes]:
            nonlocal size
            yield sealer.header
            async for piece in _aiter(source):
                hasher.update(piece)
                size += len(piece)
                out = sealer.update(piece)
                if out:
                    yield out
            yield sealer.finalize()

        metadata = _metadata(
            org, data_key.wrapped, data_key.key_version, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        stored, parts = await self._upload(key, sealed(), metadata, {LEGAL_HOLD_TAG: "true"} if legal_hold else {})
        return StoredObject(key, size, hasher.hexdigest(), data_key.key_version, stored, parts)

    async def _upload(
        self, key: str, body: AsyncIterator[bytes], metadata: dict[str, str], tags: dict[str, str]
    ) -> tuple[int, int]:
        """Upload a stream: one PUT if it fits a part, else multipart, aborted on any failure."""
        part_size = self.settings.part_size
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        total = 0
        tagging = "&".join(f"{k}={v}" for k, v in tags.items())
        extra: dict[str, Any] = {"Metadata": metadata, "ContentType": "application/octet-stream"}
        if tagging:
            extra["Tagging"] = tagging
        try:
            async for piece in body:
                buffer += piece
                while len(buffer) >= part_size:
                    if upload_id is None:
                        with _translated(key):
                            created = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)
                        upload_id = created["UploadId"]
                    view = memoryview(buffer)
                    part = bytes(view[:part_size])
                    view.release()
                    del buffer[:part_size]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
                    total += len(part)
            if upload_id is None:
                with _translated(key):
                    await self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer), **extra)
                return len(buffer), 1
            if buffer or not parts:
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
                total += len(buffer)
            with _translated(key):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            return total, len(parts)
        except BaseException:
            if upload_id is not None:
                # Shielded: a cancelled upload must still be aborted, or its parts linger.
                await asyncio.shield(self._abort(key, upload_id))
            raise

    async def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        with _translated(key):
            response = await self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        return {"PartNumber": number, "ETag": response["ETag"]}

    async def _abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    # -- reading ---------------------------------------------------------------------
    async def get(self, org: str, relative: str) -> AsyncIterator[bytes]:
        """Authenticated plaintext of an object, streamed.

        Only a fully consumed iterator means the object is intact: the last step raises
        ``IntegrityError`` if it was cut. Callers that publish bytes as they come (an HTTP
        download) must treat an error mid-stream as a failed transfer.
        """
        key = object_key_for(org, relative)
        with _translated(key):
            response = await self.client.get_object(Bucket=self.bucket, Key=key)
        body = response["Body"]

        async def unwrap(header: envelope.Header) -> bytes:
            return await asyncio.to_thread(self.keys.unwrap, org, header.wrapped_key)

        try:
            async for piece in envelope.aopen_iter(_body_chunks(body, key), unwrap, tenant=org, object_key=key):
                yield piece
        finally:
            body.close()

    async def read_bytes(self, org: str, relative: str) -> bytes:
        """A whole small object, authenticated (for anything large, iterate ``get``)."""
        return b"".join([piece async for piece in self.get(org, relative)])

    async def head(self, org: str, relative: str) -> ObjectMeta:
        key = object_key_for(org, relative)
        with _translated(key):
            response = await self.client.head_object(Bucket=self.bucket, Key=key)
        version = response.get("Metadata", {}).get(META_KEY_VERSION)
        return ObjectMeta(
            key=key,
            stored_bytes=int(response["ContentLength"]),
            last_modified=response["LastModified"],
            key_version=int(version) if version and version.isdigit() else None,
        )

    async def exists(self, org: str, relative: str) -> bool:
        try:
            await self.head(org, relative)
        except ObjectNotFound:
            return False
        return True

    async def list(self, org: str, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        """Every object of ``org`` whose key (below the tenant prefix) starts with ``prefix``."""
        if prefix:
            validate_relative_key(prefix, allow_prefix=True)
        full_prefix = tenant_prefix(org) + prefix
        paginator = self.client.get_paginator("list_objects_v2")
        with _translated(full_prefix):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    yield ObjectMeta(
                        key=item["Key"], stored_bytes=int(item["Size"]), last_modified=item["LastModified"]
                    )

    # -- legal hold and deletion ---------------------------------------------------------
    async def _tags(self, key: str) -> dict[str, str]:
        with _translated(key):
            response = await self.client.get_object_tagging(Bucket=self.bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in response.get("TagSet", [])}

    async def set_legal_hold(self, org: str, relative: str, on: bool) -> None:
        """Place or lift a legal hold (an object tag); other tags are kept."""
        key = object_key_for(org, relative)
        tags = await self._tags(key)
        if on:
            tags[LEGAL_HOLD_TAG] = "true"
        else:
            tags.pop(LEGAL_HOLD_TAG, None)
        with _translated(key):
            await self.client.put_object_tagging(
                Bucket=self.bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
            )

    async def legal_hold(self, org: str, relative: str) -> bool:
        return (await self._tags(object_key_for(org, relative))).get(LEGAL_HOLD_TAG) == "true"

    async def delete(self, org: str, relative: str) -> None:
        """Delete one object; refused with ``LegalHoldActive`` while it is held."""
        key = object_key_for(org, relative)
        if (await self._tags(key)).get(LEGAL_HOLD_TAG) == "true":
            raise LegalHoldActive(key)
        with _translated(key):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def delete_prefix(self, org: str, prefix: str = "", *, include_held: bool = False) -> DeleteReport:
        """Delete every object of ``org`` under ``prefix``; held ones stay unless ``include_held``.

        ``include_held`` is for tenant deletion, where the data is crypto-shredded anyway.
        """
        validate_org_name(org)
        doomed: list[str] = []
        held = 0
        async for meta in self.list(org, prefix):
            if not include_held and (await self._tags(meta.key)).get(LEGAL_HOLD_TAG) == "true":
                held += 1
                continue
            doomed.append(meta.key)
        for start in range(0, len(doomed), 1000):
            batch = doomed[start : start + 1000]
            with _translated(prefix):
                response = await self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            if response.get("Errors"):
                raise StorageError(f"{len(response['Errors'])} object(s) under {prefix!r} could not be deleted")
        return DeleteReport(deleted=len(doomed), held=held)

    # -- key rotation ------------------------------------------------------------------
    async def rewrap(self, org: str, relative: str) -> int:
        """Re-wrap the object's data key under the newest key version; the chunks are copied unchanged.

        Returns the key version now in the header. Vault never reveals the data key here.
        """
        key = object_key_for(org, relative)
        with _translated(key):
            response = await self.client.get_object(Bucket=self.bucket, Key=key)
        body = response["Body"]
        tags = await self._tags(key)
        try:
            chunks = _body_chunks(body, key)
            buffered = bytearray()
            while envelope.header_bytes_needed(buffered):
                piece = await anext(chunks, None)
                if piece is None:
                    raise IntegrityError("object ends inside its envelope header")
                buffered += piece
            header = envelope.parse_header(buffered)
            new_wrapped = await asyncio.to_thread(self.keys.rewrap, org, header.wrapped_key)
            new_version = key_version_of(new_wrapped)
            if new_version == header.key_version:
                return new_version
            rest = bytes(buffered[header.size :])

            async def rewritten() -> AsyncIterator[bytes]:
                yield envelope.rewrap_header(header, new_wrapped, new_version)
                if rest:
                    yield rest
                async for piece in chunks:
                    yield piece

            created = (response.get("Metadata") or {}).get(META_CREATED)
            metadata = _metadata(org, new_wrapped, new_version, created)
            await self._upload(key, rewritten(), metadata, tags)
            return new_version
        finally:
            body.close()


def _metadata(org: str, wrapped: str, key_version: int, created: str | None) -> dict[str, str]:
    """S3 metadata of a sealed object (inventory only: decryption trusts the header)."""
    metadata = {
        META_FORMAT: FORMAT_NAME,
        META_KEY_VERSION: str(key_version),
        META_WRAPPED_KEY: wrapped,
        META_TENANT: org,
    }
    if created:
        metadata[META_CREATED] = created
    return metadata


async def _aiter(source: bytes | Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
    elif isinstance(source, AsyncIterable):
        async for piece in source:
            yield piece
    else:
        for piece in source:
            yield piece


async def _body_chunks(body: Any, key: str) -> AsyncIterator[bytes]:
    with _translated(key):
        async for piece in body.iter_chunks(READ_SIZE):
            yield piece
