"""Streaming envelope encryption: the Mesial object format ("MSLE", version 1).

Pure code: no Vault, no object store. The caller brings a fresh 256-bit data key per
object (plaintext bytes) together with its Vault-wrapped form and key version; this
module turns a byte stream into ``header || chunk_0 || ... || chunk_n`` and back, with
bounded memory whatever the size. The byte layout, the nonce and associated-data
construction and the security argument are in ``docs/envelope-format.md``.

Layout in one paragraph. Header (big-endian)::

    magic "MSLE" (4) | version u8 = 1 | algorithm u8 = 1 (AES-256-GCM) | chunk_size u32
    | nonce_prefix (8) | key_version u32 | wrapped_key_len u16 | wrapped_key (ASCII)

then AES-256-GCM chunks. Chunk ``i`` encrypts ``chunk_size`` plaintext bytes (the last
one may be shorter, even empty) under nonce ``nonce_prefix || u32(i)`` with associated
data ``context_digest || u64(i) || u8(final)``, where ``context_digest`` is SHA-256 over
a domain label, the first 18 header bytes, the tenant and the object key (each
length-prefixed). The wrapped key and key version are *not* bound, on purpose, so that a
rewrap (key rotation) replaces them without touching the chunks.

Streaming contract: ``Opener.update`` returns plaintext that has passed its chunk's
authentication, but the *stream* (its end) is only authenticated once ``finalize``
returns. Do not act on or publish the plaintext of an object before then.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CryptoError, IntegrityError, UnsupportedFormat

__all__ = [
    "ALGORITHM_AES_256_GCM",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_FIXED_SIZE",
    "HEADER_MAX_SIZE",
    "MAGIC",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_WRAPPED_KEY_LEN",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "Header",
    "Opener",
    "Sealer",
    "aopen_iter",
    "aseal_iter",
    "ciphertext_size",
    "context_digest",
    "header_bytes_needed",
    "open_bytes",
    "open_iter",
    "parse_header",
    "plaintext_size",
    "rewrap_header",
    "seal_bytes",
    "seal_iter",
]

MAGIC: Final = b"MSLE"
FORMAT_VERSION: Final = 1
ALGORITHM_AES_256_GCM: Final = 1
DOMAIN_LABEL: Final = b"mesial-envelope-v1"

KEY_SIZE: Final = 32
TAG_SIZE: Final = 16
NONCE_PREFIX_SIZE: Final = 8
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MIN_CHUNK_SIZE: Final = 4 << 10
MAX_CHUNK_SIZE: Final = 64 << 20
MAX_WRAPPED_KEY_LEN: Final = 1024
#: The chunk index is a u32 inside the nonce: at most 2**32 chunks per data key.
MAX_CHUNKS: Final = 1 << 32

# magic(4) version(1) algorithm(1) chunk_size(4) nonce_prefix(8) key_version(4) wrapped_key_len(2)
_FIXED = struct.Struct(">4sBBI8sIH")
HEADER_FIXED_SIZE: Final = _FIXED.size  # 24
#: The authenticated part of the header: magic .. nonce_prefix.
_BOUND_SIZE: Final = 4 + 1 + 1 + 4 + NONCE_PREFIX_SIZE  # 18
HEADER_MAX_SIZE: Final = HEADER_FIXED_SIZE + MAX_WRAPPED_KEY_LEN
_MAX_U32: Final = (1 << 32) - 1

_FINAL = b"\x01"
_NOT_FINAL = b"\x00"


# --------------------------------------------------------------------------- header


def _check_wrapped_key(wrapped_key: str) -> bytes:
    if not isinstance(wrapped_key, str):
        raise TypeError("wrapped_key must be a str")
    try:
        raw = wrapped_key.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("wrapped_key must be printable ASCII") from None
    if not 1 <= len(raw) <= MAX_WRAPPED_KEY_LEN:
        raise ValueError(f"wrapped_key must be 1..{MAX_WRAPPED_KEY_LEN} bytes, got {len(raw)}")
    if not _printable(raw):
        raise ValueError("wrapped_key must be printable ASCII")
    return raw


def _printable(raw: bytes) -> bool:
    return all(0x21 <= b <= 0x7E for b in raw)


def _check_key_version(key_version: int) -> None:
    if isinstance(key_version, bool) or not isinstance(key_version, int):
        raise TypeError("key_version must be an int")
    if not 0 <= key_version <= _MAX_U32:
        raise ValueError(f"key_version must fit in a u32, got {key_version}")


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError("chunk_size must be an int")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, got {chunk_size}")


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed (or to-be-written) envelope header.

    ``size`` is the encoded length in bytes; the first chunk starts at that offset.
    """

    chunk_size: int
    nonce_prefix: bytes
    key_version: int
    wrapped_key: str
    version: int = FORMAT_VERSION
    algorithm: int = ALGORITHM_AES_256_GCM

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise ValueError(f"only format version {FORMAT_VERSION} can be written")
        if self.algorithm != ALGORITHM_AES_256_GCM:
            raise ValueError(f"only algorithm {ALGORITHM_AES_256_GCM} (AES-256-GCM) is defined")
        _check_chunk_size(self.chunk_size)
        if not isinstance(self.nonce_prefix, bytes) or len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError(f"nonce_prefix must be {NONCE_PREFIX_SIZE} bytes")
        _check_key_version(self.key_version)
        _check_wrapped_key(self.wrapped_key)

    @property
    def size(self) -> int:
        """Encoded header length in bytes (24 + len(wrapped_key))."""
        return HEADER_FIXED_SIZE + len(self.wrapped_key)

    @property
    def bound_bytes(self) -> bytes:
        """The authenticated part of the header (magic .. nonce_prefix, 18 bytes)."""
        return self.encode()[:_BOUND_SIZE]

    def encode(self) -> bytes:
        raw = self.wrapped_key.encode("ascii")
        return (
            _FIXED.pack(
                MAGIC,
                self.version,
                self.algorithm,
                self.chunk_size,
                self.nonce_prefix,
                self.key_version,
                len(raw),
            )
            + raw
        )

    def rewrap(self, wrapped_key: str, key_version: int) -> Header:
        """The same header with a replaced wrapped key and key version (key rotation)."""
        return Header(
            chunk_size=self.chunk_size,
            nonce_prefix=self.nonce_prefix,
            key_version=key_version,
            wrapped_key=wrapped_key,
            version=self.version,
            algorithm=self.algorithm,
        )


DataKey: TypeAlias = bytes | bytearray | memoryview
#: The data key itself, or a callable that unwraps it from the parsed header.
KeySource: TypeAlias = DataKey | Callable[[Header], DataKey]
AsyncKeySource: TypeAlias = DataKey | Callable[[Header], DataKey | Awaitable[DataKey]]


def header_bytes_needed(prefix: bytes | bytearray | memoryview) -> int:
    """How many more bytes ``parse_header`` needs after ``prefix`` (0: the header is complete).

    Fails early with ``UnsupportedFormat`` as soon as the prefix cannot start an envelope
    this build reads (wrong magic, version, algorithm, absurd chunk size or key length).
    """
    view = memoryview(prefix).cast("B")
    n = len(view)
    if bytes(view[:4]) != MAGIC[: min(n, 4)]:
        raise UnsupportedFormat("not a Mesial envelope (bad magic)")
    if n >= 5 and view[4] != FORMAT_VERSION:
        raise UnsupportedFormat(f"unsupported envelope format version {view[4]}")
    if n >= 6 and view[5] != ALGORITHM_AES_256_GCM:
        raise UnsupportedFormat(f"unsupported envelope algorithm {view[5]}")
    if n >= 10:
        chunk_size = int.from_bytes(view[6:10], "big")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise UnsupportedFormat(f"envelope chunk size {chunk_size} out of bounds")
    if n < HEADER_FIXED_SIZE:
        return HEADER_FIXED_SIZE - n
    wrapped_len = int.from_bytes(view[22:24], "big")
    if not 1 <= wrapped_len <= MAX_WRAPPED_KEY_LEN:
        raise UnsupportedFormat(f"envelope wrapped key length {wrapped_len} out of bounds")
    return max(0, HEADER_FIXED_SIZE + wrapped_len - n)


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse the header at the start of ``data`` (extra bytes after it are ignored).

    Raises ``UnsupportedFormat`` when the bytes are not an envelope this build reads and
    ``IntegrityError`` when ``data`` is shorter than the header it starts (use
    ``header_bytes_needed`` to read exactly enough, or read ``HEADER_MAX_SIZE`` bytes).
    """
    view = memoryview(data).cast("B")
    missing = header_bytes_needed(view)
    if missing:
        raise IntegrityError(f"truncated envelope header: {missing} more byte(s) needed")
    _magic, version, algorithm, chunk_size, prefix, key_version, wrapped_len = _FIXED.unpack_from(view)
    raw = bytes(view[HEADER_FIXED_SIZE : HEADER_FIXED_SIZE + wrapped_len])
    if not _printable(raw):
        raise UnsupportedFormat("envelope wrapped key is not printable ASCII")
    return Header(
        chunk_size=chunk_size,
        nonce_prefix=prefix,
        key_version=key_version,
        wrapped_key=raw.decode("ascii"),
        version=version,
        algorithm=algorithm,
    )


def rewrap_header(header: bytes | bytearray | memoryview | Header, wrapped_key: str, key_version: int) -> bytes:
    """Encoded header identical to ``header`` except for the wrapped key and key version.

    The chunks that followed the old header stay valid unchanged after the new one (the
    new header's length may differ: write header + old chunks as a new object).
    """
    parsed = header if isinstance(header, Header) else parse_header(header)
    return parsed.rewrap(wrapped_key, key_version).encode()


def context_digest(header: Header, *, tenant: str, object_key: str) -> bytes:
    """SHA-256 binding the authenticated header fields, the tenant and the object key."""
    h = hashlib.sha256()
    for part in (DOMAIN_LABEL, header.bound_bytes, tenant.encode("utf-8"), object_key.encode("utf-8")):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def ciphertext_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE, header_size: int = 0) -> int:
    """Total sealed size for ``plaintext_size`` bytes (pass ``header.size`` to include the header)."""
    if plaintext_size < 0:
        raise ValueError("plaintext_size must be >= 0")
    _check_chunk_size(chunk_size)
    chunks = max(1, -(-plaintext_size // chunk_size))
    if chunks > MAX_CHUNKS:
        raise ValueError("plaintext too large for one envelope (more than 2**32 chunks)")
    return header_size + plaintext_size + chunks * TAG_SIZE


def plaintext_size(ciphertext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE, header_size: int = 0) -> int:
    """Inverse of ``ciphertext_size``; ``IntegrityError`` if no plaintext size gives that length."""
    _check_chunk_size(chunk_size)
    body = ciphertext_size - header_size
    unit = chunk_size + TAG_SIZE
    full, rest = divmod(body, unit)
    if body < TAG_SIZE or (rest and rest < TAG_SIZE):
        raise IntegrityError(f"{ciphertext_size} bytes is not a valid envelope length")
    return full * chunk_size + (rest - TAG_SIZE if rest else 0)


def _key_bytes(data_key: DataKey) -> AESGCM:
    if len(memoryview(data_key).cast("B")) != KEY_SIZE:
        raise ValueError(f"data key must be {KEY_SIZE} bytes (AES-256)")
    return AESGCM(data_key)


# --------------------------------------------------------------------------- chunker


class _Chunker:
    """Lookahead-of-one-chunk framing shared by the sealer and the opener.

    ``unit`` bytes make a full chunk on the input side. A full chunk is processed as
    non-final only once at least one byte is known to follow it; the pending tail
    (at most ``unit`` bytes) is either a zero-copy view into an immutable ``bytes`` input
    no larger than two units, or a copy in a ``unit``-sized buffer of our own.
    """

    __slots__ = ("_buf", "_bufmv", "_done", "_pending", "_unit")

    def __init__(self, unit: int) -> None:
        self._unit = unit
        self._buf: bytearray | None = None
        self._bufmv: memoryview | None = None
        self._pending: memoryview | None = None  # view of the pending tail (len 1..unit)
        self._done = False

    def _chunk(self, data: memoryview, final: bool) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _own(self) -> memoryview:
        if self._bufmv is None:
            self._buf = bytearray(self._unit)
            self._bufmv = memoryview(self._buf)
        return self._bufmv

    def _feed(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._done:
            raise CryptoError("update() after finalize()")
        mv = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
        n = len(mv)
        if n == 0:
            return b""
        unit = self._unit
        out: list[bytes] = []
        pos = 0
        pending = self._pending
        if pending is not None:
            plen = len(pending)
            if plen < unit:
                own = self._own()
                if pending.obj is not self._buf:
                    own[:plen] = pending
                take = min(unit - plen, n)
                own[plen : plen + take] = mv[:take]
                pos = take
                pending = own[: plen + take]
            if pos == n:
                self._pending = pending
                return b""
            self._pending = None
            out.append(self._chunk(pending, False))
        while n - pos > unit:
            out.append(self._chunk(mv[pos : pos + unit], False))
            pos += unit
        tail = mv[pos:]
        base = mv.obj
        if isinstance(base, bytes) and len(base) <= 2 * unit:
            # Immutable and small: keep a view instead of copying (pins at most two units).
            self._pending = tail
        else:
            own = self._own()
            own[: len(tail)] = tail
            self._pending = own[: len(tail)]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _finish(self) -> memoryview:
        if self._done:
            raise CryptoError("finalize() called twice")
        self._done = True
        pending = self._pending if self._pending is not None else memoryview(b"")
        self._pending = None
        return pending

    def _release(self) -> None:
        self._pending = None
        self._bufmv = None
        self._buf = None


# --------------------------------------------------------------------------- sealer


class Sealer(_Chunker):
    """Encrypt one object incrementally.

    Write ``sealer.header`` first, then every ``update()`` result, then ``finalize()``.
    Memory stays under about two chunks plus the piece passed to ``update``.
    """

    __slots__ = ("_aead", "_digest", "_index", "_prefix", "header", "header_info")

    def __init__(
        self,
        data_key: DataKey,
        wrapped_key: str,
        key_version: int,
        *,
        tenant: str,
        object_key: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        _check_identity(tenant, object_key)
        info = Header(
            chunk_size=chunk_size,
            nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
            key_version=key_version,
            wrapped_key=wrapped_key,
        )
        super().__init__(chunk_size)
        self._aead: AESGCM | None = _key_bytes(data_key)
        self.header_info: Header = info
        self.header: bytes = info.encode()
        self._prefix = info.nonce_prefix
        self._digest = context_digest(info, tenant=tenant, object_key=object_key)
        self._index = 0

    def _chunk(self, data: memoryview, final: bool) -> bytes:
        i = self._index
        # A non-final chunk at the last index would need a chunk 2**32: refuse it already.
        if i >= MAX_CHUNKS - (0 if final else 1) or self._aead is None:
            raise CryptoError("envelope chunk limit reached (2**32 chunks under one data key)")
        self._index = i + 1
        return self._aead.encrypt(
            self._prefix + i.to_bytes(4, "big"),
            data,
            self._digest + i.to_bytes(8, "big") + (_FINAL if final else _NOT_FINAL),
        )

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Ciphertext ready so far (possibly ``b""``); the input may be split anywhere."""
        return self._feed(data)

    def finalize(self) -> bytes:
        """The last (final-flagged) chunk; an empty object yields one empty final chunk."""
        try:
            return self._chunk(self._finish(), True)
        finally:
            self._aead = None
            self._release()


# --------------------------------------------------------------------------- opener


class Opener(_Chunker):
    """Decrypt and authenticate one object incrementally.

    Feed the bytes that follow the header to ``update()``; each result has passed its
    chunk's authentication. ``finalize()`` authenticates the end of the stream and raises
    ``IntegrityError`` when the final chunk is missing (truncation): until it returns, treat
    the plaintext as unverified.
    """

    __slots__ = ("_aead", "_chunk_size", "_digest", "_index", "_prefix", "header")

    def __init__(
        self,
        data_key: DataKey,
        header: Header | bytes | bytearray | memoryview,
        *,
        tenant: str,
        object_key: str,
    ) -> None:
        _check_identity(tenant, object_key)
        info = header if isinstance(header, Header) else parse_header(header)
        super().__init__(info.chunk_size + TAG_SIZE)
        self.header: Header = info
        self._aead: AESGCM | None = _key_bytes(data_key)
        self._prefix = info.nonce_prefix
        self._digest = context_digest(info, tenant=tenant, object_key=object_key)
        self._index = 0

    def _chunk(self, data: memoryview, final: bool) -> bytes:
        i = self._index
        if self._aead is None:
            raise CryptoError("opener already finished")
        if i >= MAX_CHUNKS - (0 if final else 1):
            raise IntegrityError("envelope has more than 2**32 chunks")
        if len(data) < TAG_SIZE:
            raise IntegrityError(f"envelope truncated: chunk {i} shorter than its tag")
        try:
            plain = self._aead.decrypt(
                self._prefix + i.to_bytes(4, "big"),
                data,
                self._digest + i.to_bytes(8, "big") + (_FINAL if final else _NOT_FINAL),
            )
        except InvalidTag:
            self._aead = None
            self._done = True
            self._release()
            raise IntegrityError(
                f"envelope chunk {i} failed authentication (tampered, truncated, extended, "
                "reordered, or sealed for another object/tenant/key)"
            ) from None
        self._index = i + 1
        return plain

    def update(self, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Authenticated plaintext ready so far (possibly ``b""``)."""
        return self._feed(ciphertext)

    def finalize(self) -> bytes:
        """Plaintext of the final chunk; ``IntegrityError`` if the stream is cut short."""
        try:
            last = self._finish()
            if len(last) == 0:
                raise IntegrityError("envelope truncated: no final chunk")
            return self._chunk(last, True)
        finally:
            self._aead = None
            self._release()


def _check_identity(tenant: str, object_key: str) -> None:
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("tenant must be a non-empty str")
    if not isinstance(object_key, str) or not object_key:
        raise ValueError("object_key must be a non-empty str")


# --------------------------------------------------------------------------- helpers


def seal_bytes(
    data: bytes | bytearray | memoryview,
    data_key: DataKey,
    wrapped_key: str,
    key_version: int,
    *,
    tenant: str,
    object_key: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """Seal a small in-memory object: header + chunks in one ``bytes``."""
    s = Sealer(data_key, wrapped_key, key_version, tenant=tenant, object_key=object_key, chunk_size=chunk_size)
    return b"".join((s.header, s.update(data), s.finalize()))


def open_bytes(sealed: bytes | bytearray | memoryview, data_key: KeySource, *, tenant: str, object_key: str) -> bytes:
    """Open a whole sealed object held in memory.

    ``data_key`` is the plaintext data key, or a callable that gets the parsed header and
    returns it (e.g. unwraps ``header.wrapped_key`` in Vault).
    """
    view = memoryview(sealed).cast("B")
    header = parse_header(view)
    key = data_key(header) if callable(data_key) else data_key
    o = Opener(key, header, tenant=tenant, object_key=object_key)
    return b"".join((o.update(view[header.size :]), o.finalize()))


def seal_iter(
    chunks: Iterable[bytes | bytearray | memoryview],
    data_key: DataKey,
    wrapped_key: str,
    key_version: int,
    *,
    tenant: str,
    object_key: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield the header, then non-empty ciphertext pieces, for plaintext pieces of any size."""
    s = Sealer(data_key, wrapped_key, key_version, tenant=tenant, object_key=object_key, chunk_size=chunk_size)
    yield s.header
    for piece in chunks:
        out = s.update(piece)
        if out:
            yield out
        del out  # do not hold this piece while the next one is computed
    yield s.finalize()


async def aseal_iter(
    chunks: AsyncIterable[bytes | bytearray | memoryview],
    data_key: DataKey,
    wrapped_key: str,
    key_version: int,
    *,
    tenant: str,
    object_key: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> AsyncIterator[bytes]:
    """Async twin of ``seal_iter`` (AES-GCM runs inline: about 0.2 ms per 1 MiB chunk)."""
    s = Sealer(data_key, wrapped_key, key_version, tenant=tenant, object_key=object_key, chunk_size=chunk_size)
    yield s.header
    async for piece in chunks:
        out = s.update(piece)
        if out:
            yield out
        del out  # do not hold this piece while the next one is computed
    yield s.finalize()


class _HeaderReader:
    """Accumulate stream pieces until the header is complete (at most HEADER_MAX_SIZE bytes)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, piece: bytes | bytearray | memoryview) -> tuple[Header, memoryview] | None:
        view = memoryview(piece).cast("B")
        pos = 0
        while missing := header_bytes_needed(self.buf):
            if pos == len(view):
                return None
            take = min(missing, len(view) - pos)
            self.buf += view[pos : pos + take]
            pos += take
        return parse_header(self.buf), view[pos:]

    def eof(self) -> None:
        raise IntegrityError(
            f"envelope truncated inside its header ({len(self.buf)} byte(s), "
            f"{header_bytes_needed(self.buf)} more needed)"
        )


def open_iter(
    pieces: Iterable[bytes | bytearray | memoryview],
    data_key: KeySource,
    *,
    tenant: str,
    object_key: str,
) -> Iterator[bytes]:
    """Yield authenticated plaintext pieces of a sealed stream (header included).

    ``data_key`` is the data key or a callable ``(Header) -> key``. The last step raises
    ``IntegrityError`` if the stream was cut: only a fully consumed iterator means the
    object is authentic.
    """
    reader: _HeaderReader | None = _HeaderReader()
    opener: Opener | None = None
    for piece in pieces:
        if opener is None:
            assert reader is not None
            got = reader.feed(piece)
            if got is None:
                continue
            header, piece = got
            reader = None
            key = data_key(header) if callable(data_key) else data_key
            opener = Opener(key, header, tenant=tenant, object_key=object_key)
        out = opener.update(piece)
        if out:
            yield out
        del out  # do not hold this piece while the next one is computed
    if opener is None:
        assert reader is not None
        reader.eof()
        return
    yield opener.finalize()


async def aopen_iter(
    pieces: AsyncIterable[bytes | bytearray | memoryview],
    data_key: AsyncKeySource,
    *,
    tenant: str,
    object_key: str,
) -> AsyncIterator[bytes]:
    """Async twin of ``open_iter``; ``data_key`` may also be an async ``(Header) -> key``."""
    reader: _HeaderReader | None = _HeaderReader()
    opener: Opener | None = None
    async for piece in pieces:
        if opener is None:
            assert reader is not None
            got = reader.feed(piece)
            if got is None:
                continue
            header, piece = got
            reader = None
            if callable(data_key):
                produced = data_key(header)
                key = await produced if isinstance(produced, Awaitable) else produced
            else:
                key = data_key
            opener = Opener(key, header, tenant=tenant, object_key=object_key)
        out = opener.update(piece)
        if out:
            yield out
        del out  # do not hold this piece while the next one is computed
    if opener is None:
        assert reader is not None
        reader.eof()
        return
    yield opener.finalize()
