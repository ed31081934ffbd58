"""The service manager: real processes, free ports, readiness, clean stops, clear failures."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from mesial.common import services as svc
from mesial.common.errors import ServiceError, ServiceStartError


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def test_free_port_returns_a_bindable_span() -> None:
    port = svc.free_port(span=3)
    for offset in range(3):
        with socket.socket() as sock:
            sock.bind((svc.LOOPBACK, port + offset))


def test_postgres_fixture_is_a_real_server(postgres: svc.ServiceInfo) -> None:
    psql = svc.postgres_bin_dir() / "psql"
    out = subprocess.run(
        [str(psql), postgres.url, "-qAt", "-c", "show server_version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.split(".")[0] == "15"


def test_openbao_fixture_answers_the_vault_api(openbao: svc.ServiceInfo) -> None:
    request = urllib.request.Request(
        f"{openbao.url}/v1/auth/token/lookup-self", headers={"X-Vault-Token": openbao.credentials["root_token"]}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.load(response)
    assert "root" in body["data"]["policies"]


def test_service_stops_and_frees_its_port(tmp_path: Path) -> None:
    service = svc.OpenBaoService(tmp_path)
    info = service.start()
    assert _answers(info.url + "/v1/sys/health")
    service.stop()
    assert not _answers(info.url + "/v1/sys/health")


def test_startup_failure_names_the_service_and_shows_its_log(tmp_path: Path) -> None:
    class Broken(svc.OpenBaoService):
        deadline_s = 5.0

        def command(self) -> list[str]:
            return [*super().command(), "-no-such-flag"]

    with pytest.raises(ServiceStartError) as caught:
        Broken(tmp_path).start()
    message = str(caught.value)
    assert "openbao did not start" in message
    assert "no-such-flag" in message  # the tail of the server's own log


def test_startup_deadline_is_enforced(tmp_path: Path) -> None:
    class NeverReady(svc.OpenBaoService):
        deadline_s = 1.0

        def is_ready(self) -> bool:
            return False

    with pytest.raises(ServiceStartError, match="not ready after 1 s"):
        NeverReady(tmp_path).start()


def test_a_failed_setup_after_ready_stops_the_process(tmp_path: Path) -> None:
    # SeaweedFS on a full disk answers, then its bucket cannot be written: the server must not be left behind.
    class SetupFails(svc.OpenBaoService):
        def after_ready(self) -> None:
            raise ServiceStartError(self.name, "setup refused", "")

    service = SetupFails(tmp_path)
    with pytest.raises(ServiceStartError, match="setup refused"):
        service.start()
    assert service.process is None or service.process.poll() is not None, "the server was left running"
    assert not _answers(f"http://{svc.LOOPBACK}:{service.port}/v1/sys/health")


def test_recorded_stack_is_stopped_by_down(tmp_path: Path) -> None:
    stack = svc.ServiceStack(tmp_path, ["openbao"])
    infos = stack.start()
    state = tmp_path / "services.json"
    svc.write_state(state, infos)
    assert state.stat().st_mode & 0o777 == 0o600
    assert svc.stop_recorded(state) == ["openbao"]
    assert not _answers(infos["openbao"].url + "/v1/sys/health")
    assert not state.exists()
    stack.running.clear()  # already stopped through the record


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="unknown services: nope"):
        svc.ServiceStack(tmp_path, ["nope"])


def test_two_postgres_clusters_side_by_side(service_tmp: Path, postgres: svc.ServiceInfo) -> None:
    with svc.running(service_tmp, ["postgres"]) as infos:
        assert infos["postgres"].url != postgres.url
        psql = svc.postgres_bin_dir() / "psql"
        for url in (postgres.url, infos["postgres"].url):
            subprocess.run([str(psql), url, "-qAt", "-c", "select 1"], check=True, capture_output=True)


def test_tied_services_die_with_their_parent(tmp_path: Path) -> None:
    """A killed test run leaves no server behind: the service dies with the process that started it."""
    script = tmp_path / "starter.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mesial.common.services import OpenBaoService\n"
        "info = OpenBaoService(Path(sys.argv[1]), tied_to_parent=True).start()\n"
        "print(info.pid, info.url, flush=True)\n"
        "time.sleep(120)\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-P", str(script), str(tmp_path / "stack")], stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout is not None
    pid_text, url = starter.stdout.readline().split()
    assert _answers(url + "/v1/sys/health")
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and svc._alive(int(pid_text)):
        time.sleep(0.1)
    assert not svc._alive(int(pid_text))


@pytest.fixture
def nearly_full_disk(tmp_path: Path) -> Iterator[Path]:
    """A mounted 40 GiB file system with 300 MiB free (0.7 %): a shared disk near its end.

    The image is sparse and the filler ``fallocate``d, so it costs a few MiB of real disk.
    Needs root (mount -o loop), as CI has.
    """
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with image.open("wb") as handle:
        handle.truncate(40 << 30)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-m", "0", "-N", "4096", "-O", "^has_journal", "-E", "nodiscard", str(image)],
        capture_output=True,
    )
    mounted = made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(mount)]).returncode == 0
    if not mounted:
        pytest.skip(f"cannot make and mount a loop file system here (needs root): {made.stderr.decode()[-200:]}")
    try:
        free_mib = shutil.disk_usage(mount).free >> 20
        subprocess.run(["fallocate", "-l", f"{free_mib - 300}M", str(mount / "filler")], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _s3(info: svc.ServiceInfo) -> Any:
    """A client of the S3 gateway of the SeaweedFS ``info`` describes, as its own identity."""
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=info.url,
        region_name="us-east-1",
        aws_access_key_id=info.credentials["access_key"],
        aws_secret_access_key=info.credentials["secret_key"],
    )


def test_seaweedfs_stores_objects_on_a_disk_under_one_percent_free(nearly_full_disk: Path) -> None:
    # weed's default turns its volumes read-only under 1 % free: on CI's shared disk that was
    # 2.5 GB, and every test that stores an object failed with InternalError.
    usage = shutil.disk_usage(nearly_full_disk)
    assert usage.free < usage.total / 100
    service = svc.SeaweedFSService(nearly_full_disk)
    info = service.start()
    try:
        client = _s3(info)
        client.put_object(Bucket=info.credentials["bucket"], Key="scan", Body=b"\x01" * 200_000)
        assert client.get_object(Bucket=info.credentials["bucket"], Key="scan")["Body"].read() == b"\x01" * 200_000
    finally:
        service.stop()


@pytest.fixture
def ports_taken_at_bind(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[int], list[int]]]:
    """The race docs/services.md names, made to happen: after ``free_port`` checked a port, another
    program binds it. ``(checked, to_take)``: every base port handed out, in order; the first
    ``to_take[0]`` of them are taken (listened on) before the service binds."""
    checked: list[int] = []
    to_take = [0]
    holders: list[socket.socket] = []
    real = svc.free_port

    def free_then_taken(span: int = 1) -> int:
        port = real(span)
        checked.append(port)
        if len(checked) <= to_take[0]:
            holder = socket.socket()
            holder.bind((svc.LOOPBACK, port))  # SeaweedFS's master port
            holder.listen()
            holders.append(holder)
        return port

    monkeypatch.setattr(svc, "free_port", free_then_taken)
    yield checked, to_take
    for holder in holders:
        holder.close()


def test_seaweedfs_whose_port_is_taken_at_bind_starts_on_new_ports(
    tmp_path: Path, ports_taken_at_bind: tuple[list[int], list[int]]
) -> None:
    checked, to_take = ports_taken_at_bind
    to_take[0] = 2
    service = svc.SeaweedFSService(tmp_path, tied_to_parent=True)
    try:
        info = service.start()
        assert len(checked) == 3 and service.port == checked[2], checked
        assert info.url == f"http://{svc.LOOPBACK}:{checked[2] + 6}"
        client = _s3(info)
        client.put_object(Bucket=info.credentials["bucket"], Key="k", Body=b"stored")
        assert client.get_object(Bucket=info.credentials["bucket"], Key="k")["Body"].read() == b"stored"
    finally:
        service.stop()
    log = Path(info.log).read_text().lower()
    assert [f"127.0.0.1:{port}: bind: address already in use" in log for port in checked] == [True, True, False]


def test_seaweedfs_gives_up_after_three_attempts_on_taken_ports(
    tmp_path: Path, ports_taken_at_bind: tuple[list[int], list[int]]
) -> None:
    checked, to_take = ports_taken_at_bind
    to_take[0] = 4
    service = svc.SeaweedFSService(tmp_path, tied_to_parent=True)
    with pytest.raises(ServiceStartError) as caught:
        service.start()
    assert len(checked) == 3, f"three attempts in all, not {len(checked)}"
    assert "seaweedfs did not start" in str(caught.value)
    assert "address already in use" in str(caught.value)  # the tail of weed's own log
    assert service.process is None


def test_a_failure_that_is_not_a_taken_port_is_not_retried(
    tmp_path: Path, ports_taken_at_bind: tuple[list[int], list[int]]
) -> None:
    checked, _ = ports_taken_at_bind

    class BadFlag(svc.SeaweedFSService):
        def command(self) -> list[str]:
            return [*super().command(), "-no-such-flag"]

    with pytest.raises(ServiceStartError, match="exited with code"):
        BadFlag(tmp_path, tied_to_parent=True).start()
    assert len(checked) == 1


def test_an_early_exit_fails_at_once_with_its_code_and_the_logs_last_40_lines(tmp_path: Path) -> None:
    class ExitsEarly(svc.OpenBaoService):
        def command(self) -> list[str]:
            return ["sh", "-c", "for i in $(seq 1 100); do echo log-line-$i; done; exit 3"]

    started = time.monotonic()
    with pytest.raises(ServiceStartError) as caught:
        ExitsEarly(tmp_path).start()
    assert time.monotonic() - started < 10  # at once, not at the 60 s deadline
    message = str(caught.value)
    assert "exited with code 3 before it was ready" in message
    shown = [line for line in message.splitlines() if line.startswith("log-line-")]
    assert shown == [f"log-line-{i}" for i in range(61, 101)]
    assert all(kind.deadline_s == 60 for kind in svc.SERVICES.values())


def test_a_stop_signals_the_whole_group_then_kills_what_ignores_it(tmp_path: Path) -> None:
    """services.md: a clean stop sends the service's own process group its shutdown signal (SIGINT
    to PostgreSQL, SIGTERM to the others), then SIGKILL after a grace period."""
    assert svc.PostgresService.stop_signal is signal.SIGINT
    assert svc.OpenBaoService.stop_signal is svc.SeaweedFSService.stop_signal is signal.SIGTERM
    marks = tmp_path / "marks"
    # a server that ignores SIGTERM, and a child of its that notes the signal and leaves
    script = f"trap '' TERM; (trap 'echo child-term >> {marks}; exit 0' TERM; while :; do sleep 0.05; done) & while :; do sleep 0.05; done"
    server = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    time.sleep(0.3)
    started = time.monotonic()
    svc.stop_process_group(server.pid, server, grace_s=1.0)
    assert 1.0 <= time.monotonic() - started < 5  # waited its grace, then killed
    assert server.returncode == -signal.SIGKILL
    assert marks.read_text() == "child-term\n"  # the group got the signal, not the leader alone
