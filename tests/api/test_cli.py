"""`mesial admin`, `mesial audit` and `mesial api serve` as an operator runs them (subprocesses)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mesial.common import services as svc
from mesial.common.errors import KeyNotFound
from mesial.common.settings import Settings
from mesial.common.vault import TenantKeys

MESIAL = str(Path(sys.executable).parent / "mesial")


def cli_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MESIAL_DATABASE_URL": f"sqlite://{tmp_path / 'db' / 'cli.sqlite3'}",  # db/ does not exist yet
        "MESIAL_DATA_DIR": str(tmp_path / "data"),
        "MESIAL_VAULT__ADDR": settings.vault.addr,
        "MESIAL_VAULT__TOKEN": settings.vault.token.get_secret_value(),
        "MESIAL_STORE__ENDPOINT_URL": settings.store.endpoint_url,
        "MESIAL_STORE__BUCKET": settings.store.bucket,
        "MESIAL_STORE__ACCESS_KEY": settings.store.access_key.get_secret_value(),
        "MESIAL_STORE__SECRET_KEY": settings.store.secret_key.get_secret_value(),
        "MESIAL_API__CHECKPOINT_INTERVAL_S": "0",
    }


def serve(env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    """``mesial api serve`` on a free port, ready (``/readyz`` answers 200)."""
    port = svc.free_port()
    server = subprocess.Popen(
        [MESIAL, "api", "serve", "--port", str(port)], env=env, cwd=cwd,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise AssertionError("server did not become ready")
        time.sleep(0.2)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESIAL, *args], env=env, capture_output=True, text=True, timeout=60, cwd=env["HOME"])


def test_admin_bootstrap_org_keys_serve_and_audit(service_settings: Settings, tmp_path: Path) -> None:
    env = cli_env(service_settings, tmp_path)
    env["HOME"] = str(tmp_path)
    boot = run(env, "admin", "bootstrap")
    assert boot.returncode == 0, boot.stderr
    platform_key = boot.stdout.strip()
    assert platform_key.startswith("mesial_")
    again = run(env, "admin", "bootstrap")
    assert again.returncode != 0 and "exists already" in again.stderr
    org = run(env, "admin", "create-org", "cli-lab")
    assert org.returncode == 0, org.stderr
    issued = run(env, "admin", "issue-key", "--org", "cli-lab", "--role", "org-admin")
    assert issued.returncode == 0, issued.stderr
    admin_key = issued.stdout.strip()

    server, base = serve(env, tmp_path)
    try:
        me = httpx.get(f"{base}/v1/me", headers={"authorization": f"Bearer {admin_key}"})
        assert me.json()["organization"] == "cli-lab"
        orgs = httpx.get(f"{base}/v1/orgs", headers={"authorization": f"Bearer {platform_key}"})
        assert [o["name"] for o in orgs.json()["items"]] == ["cli-lab"]
    finally:
        server.terminate()
        server.wait(timeout=20)

    out = tmp_path / "platform.jsonl"
    exported = run(env, "audit", "export", "--org", "_platform", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    actions = [json.loads(line).get("action") for line in out.read_text().splitlines()]
    assert "platform_admin.bootstrapped" in actions and "org.created" in actions
    # Verification needs nothing but the file: no settings, no services.
    offline = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    verified = run(offline, "audit", "verify", str(out))
    assert verified.returncode == 0 and verified.stdout.startswith("OK:"), verified.stdout + verified.stderr
    out.write_text(out.read_text().replace("org.created", "org.deleted"))
    broken = run(offline, "audit", "verify", str(out))
    assert broken.returncode == 1 and "FAILED at line" in broken.stdout


async def test_http_audit_sink_appends_through_the_internal_endpoint(
    service_settings: Settings, tmp_path: Path
) -> None:
    from mesial.common.audit import AuditEvent, HttpAuditSink
    from mesial.common.errors import ServiceError

    env = {**cli_env(service_settings, tmp_path), "HOME": str(tmp_path)}
    assert run(env, "admin", "create-org", "sink-lab").returncode == 0
    operator_key = run(env, "admin", "service-key", "operator").stdout.strip()
    server, base = serve(env, tmp_path)
    try:
        sink = HttpAuditSink(base, operator_key)
        # receipts for keys outside the layout, which the store does not hold (the collector checks)
        first = await sink.append_record(AuditEvent("sink-lab", "ignored", "retention.deleted", "object", "stray-1"))
        await sink.append(AuditEvent("sink-lab", "ignored", "retention.deleted", "object", "stray-2"))
        assert first["tenant"] == "sink-lab" and first["sequence"] >= 1
        with pytest.raises(ServiceError, match="403"):
            await HttpAuditSink(base, operator_key).append(AuditEvent("no-such-org", "x", "a.b", "scan", "s"))
        with pytest.raises(ServiceError, match="401"):
            await HttpAuditSink(base, "mesial_000000000000_" + "x" * 43).append(
                AuditEvent("sink-lab", "x", "a.b", "scan", "s")
            )
    finally:
        server.terminate()
        server.wait(timeout=20)
    with pytest.raises(ServiceError, match="unreachable"):
        await HttpAuditSink(base, operator_key, timeout_s=2).append(AuditEvent("sink-lab", "x", "a.b", "scan", "s"))
    out = tmp_path / "sink.jsonl"
    assert run(env, "audit", "export", "--org", "sink-lab", "-o", str(out)).returncode == 0
    events = [json.loads(line) for line in out.read_text().splitlines() if '"event"' in line]
    assert [(e["action"], e["actor"]) for e in events][-2:] == [
        ("retention.deleted", "service:operator"),
        ("retention.deleted", "service:operator"),
    ]


def test_admin_refuses_the_ranges_the_api_refuses_and_stores_nothing(
    service_settings: Settings, tmp_path: Path
) -> None:
    """`mesial admin` writes the database itself, past the API's schemas: their ranges hold here too
    (docs/api.md: retention 1-36500 days; keys expire after 1-3650 days or never). A retention of 0 days or
    fewer would have the next local sweep delete every scan of the organization at once; a key asked for
    0 days was read as "no expiry" and never expired."""
    env = {**cli_env(service_settings, tmp_path), "HOME": str(tmp_path)}
    name = f"cli-{secrets.token_hex(3)}"
    for days in ("0", "-1", "36501"):
        refused = run(env, "admin", "create-org", name, "--retention-days", days)
        assert refused.returncode != 0, (days, refused.stdout)
        assert "--retention-days" in refused.stderr and "1<=x<=36500" in refused.stderr, refused.stderr
    with pytest.raises(KeyNotFound):  # refused before anything was made, in Vault too
        TenantKeys(service_settings.vault).key_info(name)
    assert run(env, "admin", "create-org", name, "--retention-days", "36500").returncode == 0
    for days in ("0", "-1", "3651"):
        refused = run(env, "admin", "issue-key", "--org", name, "--role", "auditor", "--expires-in-days", days)
        assert refused.returncode != 0, (days, refused.stdout)
        assert "--expires-in-days" in refused.stderr and "1<=x<=3650" in refused.stderr, refused.stderr
    issued = run(env, "admin", "issue-key", "--org", name, "--role", "auditor", "--expires-in-days", "1")
    assert issued.returncode == 0, issued.stderr

    with contextlib.closing(sqlite3.connect(tmp_path / "db" / "cli.sqlite3")) as db:
        [(org_id, retention)] = db.execute("SELECT id, retention_days FROM organizations WHERE name = ?", (name,))
        keys = db.execute("SELECT created_at, expires_at FROM api_keys WHERE org_id = ?", (org_id,)).fetchall()
        members = db.execute("SELECT count(*) FROM members WHERE org_id = ?", (org_id,)).fetchone()[0]
        issued_events = db.execute(
            "SELECT count(*) FROM audit_events WHERE tenant = ? AND action = 'key.issued'", (name,)
        ).fetchone()[0]
    assert retention == 36500
    assert members == 1 and issued_events == 1 and len(keys) == 1  # the refused ones left no member, key or event
    [(created, expires)] = keys
    assert datetime.fromisoformat(expires) - datetime.fromisoformat(created) == timedelta(days=1)


def test_audit_export_refuses_an_unknown_organization_and_a_reversed_range(
    service_settings: Settings, tmp_path: Path
) -> None:
    """An export of a mistyped organization, or with --from after --to, was an empty export that verified
    ("OK: 0 events"): an auditor could take it for an empty chain. Both are now a clear error, non-zero,
    and no file is written. A known organization, and the platform chain, still export."""
    env = {**cli_env(service_settings, tmp_path), "HOME": str(tmp_path)}
    name = f"cli-{secrets.token_hex(3)}"
    assert run(env, "admin", "create-org", name).returncode == 0
    out = tmp_path / "export.jsonl"
    unknown = run(env, "audit", "export", "--org", name + "x", "-o", str(out))
    assert unknown.returncode == 1 and f"no organization or audit chain named {name}x" in unknown.stderr, unknown
    reversed_range = run(
        env, "audit", "export", "--org", name, "--from", "2027-01-01", "--to", "2026-01-01", "-o", str(out)
    )
    assert reversed_range.returncode == 2 and "--from is after --to" in reversed_range.stderr, reversed_range
    assert not out.exists()
    for tenant in (name, "_platform"):
        exported = run(env, "audit", "export", "--org", tenant, "--from", "2026-01-01", "-o", str(out))
        assert exported.returncode == 0 and out.exists(), exported.stderr
