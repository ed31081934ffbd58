"""`mesial services up / status / env / down` as a user runs them (README.md, docs/services.md):
up prints URLs and credentials, `eval "$(mesial services env)"` gives the shell `MESIAL_*` settings
that reach the running services, down stops what up started, and PostgreSQL's and SeaweedFS's data
survive a down/up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mesial.common import services as svc

MESIAL = str(Path(sys.executable).parent / "mesial")
STORE = "s3-stored"

# Run after `eval "$(mesial services env)"`: the settings the shell now has, used. Prints what it read back.
USE_SETTINGS = f"""
import subprocess, sys
import botocore.session, hvac
from mesial.common.settings import Settings

s = Settings()
assert hvac.Client(url=s.vault.addr, token=s.vault.token.get_secret_value()).is_authenticated()
psql = [{str(svc.postgres_bin_dir() / "psql")!r}, s.database_url, "-qAt", "-c"]
s3 = botocore.session.get_session().create_client(
    "s3", endpoint_url=s.store.endpoint_url, region_name="us-east-1",
    aws_access_key_id=s.store.access_key.get_secret_value(), aws_secret_access_key=s.store.secret_key.get_secret_value())
if sys.argv[1] == "write":
    subprocess.run([*psql, "create table kept (v text); insert into kept values ('pg-stored')"], check=True)
    s3.put_object(Bucket=s.store.bucket, Key="kept", Body=b"{STORE}")
row = subprocess.run([*psql, "select v from kept"], check=True, capture_output=True, text=True).stdout.strip()
print(row, s3.get_object(Bucket=s.store.bucket, Key="kept")["Body"].read().decode())
"""


def _env(home: Path) -> dict[str, str]:
    """A user's shell: no MESIAL_* of the test run's own."""
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(home)}


def _services(home: Path, stack: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MESIAL, "services", *args, "--dir", str(stack)],
        env=_env(home),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _in_shell_after_env(home: Path, stack: Path, step: str) -> str:
    """`eval "$(mesial services env)"`, then a program that reads its settings from that shell's environment."""
    script = home / "use_settings.py"
    script.write_text(USE_SETTINGS)
    shell = f'eval "$(mesial services env --dir {stack})" && exec {sys.executable} -P {script} {step}'
    done = subprocess.run(["bash", "-c", shell], env=_env(home), cwd=home, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _shows(output: str, info: svc.ServiceInfo) -> bool:
    """The service's block: its name and pid, URL, every credential, its log."""
    values = [f"{info.name} (pid {info.pid})", info.url, *info.credentials.values(), info.log]
    return all(value in output for value in values)


def test_services_up_status_env_and_down_as_a_user_runs_them(tmp_path: Path, service_tmp: Path) -> None:
    stack = service_tmp  # not under pytest's tmp_path: PostgreSQL runs as `postgres`
    state = stack / "services.json"
    try:
        up = _services(tmp_path, stack, "up")
        assert up.returncode == 0, up.stderr
        infos = svc.read_state(state)
        assert sorted(infos) == ["openbao", "postgres", "seaweedfs"]
        assert state.stat().st_mode & 0o777 == 0o600
        assert all(_shows(up.stdout, info) for info in infos.values()), up.stdout

        status = _services(tmp_path, stack, "status")
        assert status.returncode == 0 and all(_shows(status.stdout, info) for info in infos.values()), status.stdout

        env = _services(tmp_path, stack, "env")
        names = [line.split("=", 1)[0] for line in env.stdout.splitlines()]
        assert names == [
            "export MESIAL_DATABASE_URL",
            "export MESIAL_VAULT__ADDR",
            "export MESIAL_VAULT__TOKEN",
            "export MESIAL_STORE__ENDPOINT_URL",
            "export MESIAL_STORE__ACCESS_KEY",
            "export MESIAL_STORE__SECRET_KEY",
            "export MESIAL_STORE__BUCKET",
        ]
        assert _in_shell_after_env(tmp_path, stack, "write") == f"pg-stored {STORE}"

        again = _services(tmp_path, stack, "up")
        assert again.returncode == 1 and again.stdout == ""
        assert again.stderr.splitlines() == [
            f"Error: a stack is already recorded in {state}: run `mesial services down` first"
        ]

        down = _services(tmp_path, stack, "down")
        assert down.returncode == 0 and down.stdout.strip() == "stopped: postgres, openbao, seaweedfs"
        assert not any(svc._alive(info.pid) for info in infos.values() if info.pid is not None)
        assert not state.exists()
        after = _services(tmp_path, stack, "status")
        assert after.returncode == 0 and after.stdout.strip() == "no services recorded"
        nothing = _services(tmp_path, stack, "env")
        assert nothing.returncode == 0 and nothing.stdout == ""

        # PostgreSQL's and SeaweedFS's data survive a down/up (new processes, new ports, a new S3 identity).
        assert _services(tmp_path, stack, "up").returncode == 0
        restarted = svc.read_state(state)
        assert restarted["seaweedfs"].url != infos["seaweedfs"].url
        assert _in_shell_after_env(tmp_path, stack, "read") == f"pg-stored {STORE}"
    finally:
        _services(tmp_path, stack, "down")
