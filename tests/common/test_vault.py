"""Tenant keys against the real OpenBao: lifecycle, isolation, rotation, shredding, failures."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from mesial.common import envelope
from mesial.common.errors import (
    InputError,
    IntegrityError,
    KeyAccessDenied,
    KeyNotFound,
    VaultError,
    VaultUnavailable,
)
from mesial.common.settings import Settings, VaultSettings
from mesial.common.vault import TenantKeys, key_version_of


@pytest.fixture(scope="module")
def keys(service_settings: Settings) -> TenantKeys:
    tenant_keys = TenantKeys(service_settings.vault)
    tenant_keys.ensure_transit()
    return tenant_keys


def test_ensure_key_is_idempotent_and_not_exportable(keys: TenantKeys) -> None:
    first = keys.ensure_key("acme-lab")
    second = keys.ensure_key("acme-lab")
    assert first.name == "mesial-org-acme-lab"
    assert first == second
    assert first.exportable is False
    assert first.auto_rotate_period_s == 720 * 3600
    assert len(first.fingerprint) == 32


def test_invalid_org_names_never_reach_vault(keys: TenantKeys) -> None:
    for bad in ("", "../x", "Acme", "a/b", "x" * 60, "-lead"):
        with pytest.raises(InputError):
            keys.ensure_key(bad)


def test_data_key_unwraps_for_its_tenant_only(keys: TenantKeys) -> None:
    keys.ensure_key("tenant-a")
    keys.ensure_key("tenant-b")
    dk = keys.data_key("tenant-a")
    assert len(dk.plaintext) == 32
    assert keys.unwrap("tenant-a", dk.wrapped) == dk.plaintext
    with pytest.raises(VaultError):
        keys.unwrap("tenant-b", dk.wrapped)


def test_tenant_a_key_cannot_open_tenant_b_object(keys: TenantKeys) -> None:
    keys.ensure_key("tenant-a")
    keys.ensure_key("tenant-b")
    dk_b = keys.data_key("tenant-b")
    sealed = envelope.seal_bytes(
        b"scan bytes", dk_b.plaintext, dk_b.wrapped, dk_b.key_version, tenant="tenant-b", object_key="scans/1"
    )
    dk_a = keys.data_key("tenant-a")
    with pytest.raises(IntegrityError):
        envelope.open_bytes(sealed, dk_a.plaintext, tenant="tenant-b", object_key="scans/1")


def test_rotation_rewrap_and_fingerprint(keys: TenantKeys) -> None:
    before = keys.ensure_key("rotating")
    old = keys.data_key("rotating")
    after = keys.rotate("rotating")
    assert after.latest_version == before.latest_version + 1
    assert after.fingerprint != before.fingerprint
    new_wrapped = keys.rewrap("rotating", old.wrapped)
    assert key_version_of(new_wrapped) == after.latest_version
    assert keys.unwrap("rotating", new_wrapped) == old.plaintext
    assert keys.data_key("rotating").key_version == after.latest_version


def test_shred_makes_every_data_key_unreadable(keys: TenantKeys) -> None:
    keys.ensure_key("leaving")
    wrapped = [keys.data_key("leaving").wrapped for _ in range(3)]
    keys.rotate("leaving")
    wrapped.append(keys.data_key("leaving").wrapped)
    receipt = keys.shred("leaving")
    assert receipt.key_name == "mesial-org-leaving"
    assert receipt.versions_destroyed == 2
    assert "no longer unwraps" in receipt.proof
    for value in wrapped:
        with pytest.raises(KeyNotFound):
            keys.unwrap("leaving", value)
    with pytest.raises(KeyNotFound):
        keys.key_info("leaving")
    assert "already shredded" in keys.shred("leaving").proof


def test_garbage_wrapped_key_is_refused(keys: TenantKeys) -> None:
    keys.ensure_key("tenant-a")
    for bad in ("", "plain", "vault:v1:", "vault:vX:AAAA"):
        with pytest.raises(VaultError):
            keys.unwrap("tenant-a", bad)
    with pytest.raises(VaultError):
        keys.unwrap("tenant-a", "vault:v1:" + "A" * 40)


def test_audit_signing_round_trip(keys: TenantKeys) -> None:
    keys.ensure_signing_key()
    signature = keys.sign(b"chain head 42")
    assert signature.startswith("vault:v1:")
    assert keys.verify(b"chain head 42", signature)
    assert not keys.verify(b"chain head 43", signature)
    assert not keys.verify(b"chain head 42", "vault:v1:AAAA")
    assert 1 in keys.public_keys()


def _settings_for(port: int, **overrides: object) -> VaultSettings:
    return VaultSettings.model_validate({"addr": f"http://127.0.0.1:{port}", **overrides})


def test_vault_down_gives_a_typed_error_after_bounded_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    keys = TenantKeys(_settings_for(port, max_attempts=3, backoff_s=0.05, timeout_s=1))
    started = time.monotonic()
    with pytest.raises(VaultUnavailable, match="after 3 attempt"):
        keys.data_key("acme")
    assert time.monotonic() - started < 5


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers: a Vault that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_slow_vault_times_out_instead_of_hanging(silent_server: int) -> None:
    keys = TenantKeys(_settings_for(silent_server, max_attempts=2, backoff_s=0.01, timeout_s=0.5))
    started = time.monotonic()
    with pytest.raises(VaultUnavailable):
        keys.key_info("acme")
    assert time.monotonic() - started < 4


@pytest.fixture
def answering() -> Iterator[tuple[list[int], Callable[[int], int]]]:
    """A server that answers every request with the status it is given: ``(requests seen, start)``."""
    seen: list[int] = []
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int) -> int:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append(status)
                body = b"<html>upstream said no</html>"  # what a proxy in front of Vault sends
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *_: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield seen, start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_5xx_and_429_are_retried_then_unavailable(
    answering: tuple[list[int], Callable[[int], int]], status: int
) -> None:
    """storage.md: connection errors, timeouts, 5xx and 429 are retried (MAX_ATTEMPTS attempts), then
    `VaultUnavailable`; a 504 of a proxy in front of Vault is as transient as Vault's own 503."""
    seen, start = answering
    keys = TenantKeys(_settings_for(start(status), max_attempts=3, backoff_s=0.01, timeout_s=2, token="t"))
    with pytest.raises(VaultUnavailable, match="after 3 attempt"):
        keys.data_key("acme")
    assert seen == [status] * 3


@pytest.mark.parametrize(("status", "error"), [(400, VaultError), (403, KeyAccessDenied), (405, VaultError)])
def test_other_errors_are_not_retried(
    answering: tuple[list[int], Callable[[int], int]], status: int, error: type[Exception]
) -> None:
    seen, start = answering
    keys = TenantKeys(_settings_for(start(status), max_attempts=3, backoff_s=0.01, timeout_s=2, token="t"))
    with pytest.raises(error) as caught:
        keys.data_key("acme")
    assert not isinstance(caught.value, VaultUnavailable)
    assert seen == [status]
