"""Benchmark of the envelope format (mesial.common.envelope) against raw AES-256-GCM.

    python bench/bench_envelope.py [--size-mib 256] [--stream-mib 1024] [--repeat 5]

Goals (exit status 1 if one fails):

* throughput: seal+open of the format >= 80% of raw ``AESGCM.encrypt`` + ``decrypt`` on
  the same 1 MiB buffers, single core (the process is pinned to one CPU);
* memory: streaming ``--stream-mib`` (1 GiB) from a generator through ``seal_iter`` and
  ``open_iter`` keeps the traced peak under 6 chunks (2 per direction + pieces in flight)
  and the peak RSS growth under 64 MiB.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import os
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterator

import cryptography
from _common import hardware
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mesial.common import envelope as env

MIB = 1 << 20
CHUNK = 1 << 20
THROUGHPUT_GOAL = 0.80
TRACED_GOAL_CHUNKS = 6
RSS_GOAL_MIB = 64
TENANT = "org-bench"
OBJECT_KEY = "org-bench/scans/bench.stl"
WRAPPED = "vault:v1:" + "A" * 80


def crypto_stack() -> str:
    """What AES-GCM runs on here: AES-NI, and the cryptography/OpenSSL versions."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            aesni = " aes " in f.read().replace("\n", " ")
    except OSError:
        aesni = False
    return (
        f"AES-NI {'yes' if aesni else 'no'}, cryptography {cryptography.__version__}, "
        f"{openssl_backend.openssl_version_text()}"
    )


def pin_single_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def tune_malloc() -> str:
    """Keep glibc from returning every freed 1 MiB buffer to the kernel.

    With the default dynamic thresholds, each fresh 1 MiB output page-faults in again,
    which costs more than the AES itself on some VMs and swamps what we compare (the
    framing overhead). Applied to every path alike; ``--default-malloc`` skips it.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = (
            libc.mallopt(m_trim_threshold, 512 * MIB)
            and libc.mallopt(m_top_pad, 16 * MIB)
            and libc.mallopt(m_mmap_threshold, 32 * MIB)
        )
    except (OSError, AttributeError):
        return "default (not glibc)"
    return "glibc tuned: trim 512 MiB, top pad 16 MiB, mmap threshold 32 MiB" if ok else "default (mallopt failed)"


def raw_round(aead: AESGCM, pieces: list[bytes]) -> float:
    """Each 1 MiB buffer encrypted then decrypted right away (no framing, no AAD)."""
    nonce = os.urandom(12)
    t0 = time.perf_counter()
    for p in pieces:
        aead.decrypt(nonce, aead.encrypt(nonce, p, None), None)
    return time.perf_counter() - t0


def format_round(key: bytes, pieces: list[bytes]) -> float:
    """The same buffers through a Sealer feeding an Opener, chunk by chunk."""
    t0 = time.perf_counter()
    s = env.Sealer(key, WRAPPED, 1, tenant=TENANT, object_key=OBJECT_KEY, chunk_size=CHUNK)
    o = env.Opener(key, s.header, tenant=TENANT, object_key=OBJECT_KEY)
    for p in pieces:
        o.update(s.update(p))
    o.update(s.finalize())
    o.finalize()
    return time.perf_counter() - t0


def raw_kept_round(aead: AESGCM, pieces: list[bytes]) -> float:
    """Encrypt every buffer, keep all ciphertexts, then decrypt them all."""
    nonce = os.urandom(12)
    t0 = time.perf_counter()
    cts = [aead.encrypt(nonce, p, None) for p in pieces]
    for c in cts:
        aead.decrypt(nonce, c, None)
    elapsed = time.perf_counter() - t0
    del cts
    return elapsed


def format_kept_round(key: bytes, pieces: list[bytes]) -> float:
    """Seal the whole object (ciphertext kept), then open it."""
    t0 = time.perf_counter()
    s = env.Sealer(key, WRAPPED, 1, tenant=TENANT, object_key=OBJECT_KEY, chunk_size=CHUNK)
    cts = [s.update(p) for p in pieces]
    cts.append(s.finalize())
    o = env.Opener(key, s.header, tenant=TENANT, object_key=OBJECT_KEY)
    for c in cts:
        o.update(c)
    o.finalize()
    elapsed = time.perf_counter() - t0
    del cts
    return elapsed


def iter_round(key: bytes, pieces: list[bytes]) -> float:
    t0 = time.perf_counter()
    sealed = list(env.seal_iter(pieces, key, WRAPPED, 1, tenant=TENANT, object_key=OBJECT_KEY, chunk_size=CHUNK))
    for _ in env.open_iter(sealed, key, tenant=TENANT, object_key=OBJECT_KEY):
        pass
    elapsed = time.perf_counter() - t0
    del sealed
    return elapsed


def check_correct(key: bytes, pieces: list[bytes]) -> None:
    s = env.Sealer(key, WRAPPED, 1, tenant=TENANT, object_key=OBJECT_KEY, chunk_size=CHUNK)
    cts = [s.update(p) for p in pieces] + [s.finalize()]
    o = env.Opener(key, s.header, tenant=TENANT, object_key=OBJECT_KEY)
    h_in, h_out = hashlib.sha256(), hashlib.sha256()
    for p in pieces:
        h_in.update(p)
    for c in cts:
        h_out.update(o.update(c))
    h_out.update(o.finalize())
    if h_in.digest() != h_out.digest():
        raise SystemExit("round trip mismatch: the benchmark would measure a broken format")


def stream_memory(total: int, key: bytes) -> tuple[float, int, int]:
    """Seal+open ``total`` bytes produced by a generator; (seconds, traced peak, RSS peak growth)."""
    piece = 1_000_003  # misaligned with the chunks on purpose
    block = random.Random(1).randbytes(piece)
    expect, got = hashlib.sha256(), hashlib.sha256()

    def source() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            n = min(piece, total - sent)
            out = bytes(memoryview(block)[:n])  # a fresh buffer per read, like a socket
            expect.update(out)
            sent += n
            yield out
            del out

    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    size = 0
    sealed = env.seal_iter(source(), key, WRAPPED, 1, tenant=TENANT, object_key=OBJECT_KEY, chunk_size=CHUNK)
    for p in env.open_iter(sealed, key, tenant=TENANT, object_key=OBJECT_KEY):
        got.update(p)
        size += len(p)
        del p
    elapsed = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    if size != total or got.digest() != expect.digest():
        raise SystemExit("streamed round trip mismatch")
    return elapsed, traced_peak, rss_growth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="throughput buffer size (default 256)")
    ap.add_argument("--stream-mib", type=int, default=1024, help="streamed size for the memory test (default 1024)")
    ap.add_argument("--default-malloc", action="store_true", help="do not tune glibc malloc (see tune_malloc)")
    ap.add_argument("--repeat", type=int, default=5, help="throughput rounds; the best one counts (default 5)")
    ap.add_argument("--quick", action="store_true", help="64 MiB buffers, 256 MiB stream, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.stream_mib, args.repeat = 64, 256, 2

    print("Mesial envelope benchmark")
    print("hardware:", hardware())
    print("crypto:", crypto_stack())
    print("affinity:", pin_single_core())
    failures: list[str] = []

    # Memory first, with the default allocator: ru_maxrss is a high-water mark, so measure
    # before the big buffers exist.
    key = AESGCM.generate_key(256)
    secs, traced, rss = stream_memory(args.stream_mib * MIB, key)
    print("malloc:  ", "default" if args.default_malloc else tune_malloc(), "(throughput section)")

    pieces = [os.urandom(CHUNK) for _ in range(args.size_mib)]
    check_correct(key, pieces)
    aead = AESGCM(key)
    rounds: dict[str, list[float]] = {"raw": [], "fmt": [], "raw_kept": [], "fmt_kept": [], "iter": []}
    for _ in range(args.repeat):  # interleaved, so that frequency drift hits all paths alike
        rounds["raw"].append(raw_round(aead, pieces))
        rounds["fmt"].append(format_round(key, pieces))
        rounds["raw_kept"].append(raw_kept_round(aead, pieces))
        rounds["fmt_kept"].append(format_kept_round(key, pieces))
        rounds["iter"].append(iter_round(key, pieces))
    size = args.size_mib * MIB
    mbs = {name: size / min(t) / 1e6 for name, t in rounds.items()}
    ratio = mbs["fmt"] / mbs["raw"]
    ratio_kept = mbs["fmt_kept"] / mbs["raw_kept"]
    ok_tp = ratio >= THROUGHPUT_GOAL and ratio_kept >= THROUGHPUT_GOAL
    if not ok_tp:
        failures.append("throughput")

    def verdict(r: float) -> str:
        return f">= {THROUGHPUT_GOAL:.0%}  {'PASS' if r >= THROUGHPUT_GOAL else 'FAIL'}"

    print()
    print(
        f"throughput: {args.size_mib} MiB in {CHUNK // MIB} MiB chunks, encrypt+decrypt, single core, best of {args.repeat}"
    )
    print(f"  {'path':<52}{'MB/s':>8}{'vs raw':>9}  goal")
    print(f"  {'raw AESGCM encrypt+decrypt, chunk by chunk':<52}{mbs['raw']:>8.0f}{1:>9.1%}")
    print(f"  {'Sealer -> Opener, chunk by chunk':<52}{mbs['fmt']:>8.0f}{ratio:>9.1%}  {verdict(ratio)}")
    print(f"  {'raw AESGCM, all ciphertext kept then decrypted':<52}{mbs['raw_kept']:>8.0f}{1:>9.1%}")
    print(
        f"  {'Sealer, all ciphertext kept, then Opener':<52}{mbs['fmt_kept']:>8.0f}{ratio_kept:>9.1%}  {verdict(ratio_kept)}"
    )
    print(
        f"  {'seal_iter -> list -> open_iter (info, vs kept raw)':<52}{mbs['iter']:>8.0f}{mbs['iter'] / mbs['raw_kept']:>9.1%}"
    )

    traced_goal = TRACED_GOAL_CHUNKS * CHUNK
    ok_traced = traced < traced_goal
    ok_rss = rss < RSS_GOAL_MIB * MIB
    if not ok_traced:
        failures.append("traced memory")
    if not ok_rss:
        failures.append("RSS")
    print()
    print(f"memory: {args.stream_mib} MiB streamed from a generator through seal_iter -> open_iter")
    print(f"  time {secs:.2f} s ({args.stream_mib * MIB / secs / 1e6:.0f} MB/s incl. tracemalloc and hashing)")
    print(
        f"  traced peak (tracemalloc)  {traced / MIB:8.2f} MiB = {traced / CHUNK:.1f} chunks"
        f"   goal < {TRACED_GOAL_CHUNKS} chunks  {'PASS' if ok_traced else 'FAIL'}"
    )
    print(
        f"  peak RSS growth            {rss / MIB:8.2f} MiB"
        f"                goal < {RSS_GOAL_MIB} MiB  {'PASS' if ok_rss else 'FAIL'}"
    )
    print()
    print("RESULT:", "PASS" if not failures else "FAIL (" + ", ".join(failures) + ")")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
