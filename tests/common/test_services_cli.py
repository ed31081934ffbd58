"""`mesial services up / status / env / down` as a user runs them (README.md, docs/services.md):
up prints URLs and credentials, `eval "$(mesial services env)"` gives the shell `MESIAL_*` settings
that reach the running services, down stops what up started, and PostgreSQL's and SeaweedFS's data
survive a down/up. A recorded stack whose processes are gone (or whose pid another program took) is
shown stopped and not exported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def test_a_recorded_stack_whose_process_was_killed_is_shown_stopped_and_not_exported(tmp_path: Path) -> None:
    """OpenBao started by `up`, then killed (as a restart of the machine leaves it): `status` shows
    its block as stopped, its pid gone, and says what to run; `env` exports nothing and fails, naming
    `down` and `up`; `down` clears the record."""
    stack = tmp_path / "stack"
    try:
        assert _services(tmp_path, stack, "up", "--only", "openbao").returncode == 0
        [info] = svc.read_state(stack / "services.json").values()
        assert info.pid is not None
        running = _services(tmp_path, stack, "status")
        assert running.returncode == 0 and "running" in running.stdout and "stopped" not in running.stdout

        os.killpg(info.pid, signal.SIGKILL)  # its own process group, started by `up` for this test
        deadline = time.monotonic() + 10
        while svc._alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

        status = _services(tmp_path, stack, "status")
        assert status.returncode == 0 and f"openbao (pid {info.pid})" in status.stdout, status.stdout
        assert f"stopped: pid {info.pid} is gone" in status.stdout and info.url in status.stdout
        assert "the recorded stack is not running" in " ".join(status.stdout.split())
        env = _services(tmp_path, stack, "env")
        assert env.returncode == 1 and env.stdout == ""
        assert "`mesial services down`" in env.stderr and "`mesial services up`" in env.stderr, env.stderr
        assert f"openbao: pid {info.pid} is gone" in env.stderr
        assert _services(tmp_path, stack, "down").returncode == 0
        assert not (stack / "services.json").exists()
    finally:
        _services(tmp_path, stack, "down")


def test_a_recorded_pid_that_another_program_now_has_is_not_the_service(tmp_path: Path) -> None:
    """A recorded pid reused by another program (here a `sleep` of this test's) is not taken for the
    service: `status` shows it stopped, `env` refuses, and `down` leaves that program running."""
    stack = tmp_path / "stack"
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        recorded = svc.ServiceInfo(
            name="openbao",
            url="http://127.0.0.1:1",
            pid=other.pid,
            data_dir=str(stack / "openbao"),
            log=str(stack / "openbao.log"),
            env={"MESIAL_VAULT__ADDR": "http://127.0.0.1:1"},
            command=[str(svc.bao_binary()), "server", "-dev"],
        )
        svc.write_state(stack / "services.json", {"openbao": recorded})

        status = _services(tmp_path, stack, "status")
        assert status.returncode == 0 and f"stopped: pid {other.pid} is another program" in status.stdout
        env = _services(tmp_path, stack, "env")
        assert env.returncode == 1 and env.stdout == "" and "is another program" in env.stderr
        assert _services(tmp_path, stack, "down").returncode == 0
        assert other.poll() is None, "down signalled a program that is not the service"
        assert not (stack / "services.json").exists()
    finally:
        other.kill()
        other.wait()
