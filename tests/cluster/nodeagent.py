"""A test node agent: registers a Node and really runs the pods bound to it, on this host.

No kubelet can run here (no container runtime). Like KWOK the agent keeps a Node and writes pod
status, but it runs the work: each container's command (the image's entrypoint when the pod
gives none: ``--entrypoint``, by default ``mesial``, found on this checkout's virtualenv PATH; the
trial mode's OpenBao, SeaweedFS and PostgreSQL images run the host's programs, tests/cluster/images.py)
as a process of the host, with

- the pod's environment (``env`` with values, ``secretKeyRef``, ``configMapKeyRef``,
  ``fieldRef``; ``envFrom``; ``$(VAR)`` expansion; ``KUBERNETES_SERVICE_HOST/PORT``),
- Services, as kube-proxy and cluster DNS give them: ``kubernetes.default.svc:443`` reaches the
  API server, and every Service with a selector (``name.namespace.svc:port``, the pod's /etc/hosts)
  reaches the ``targetPort`` of a running pod it selects, through the agent's proxy on an address
  of 127.0.0.0/8 of its own (``<pods-dir>/services.json`` lists them for clients on the host),
- its volumes at their mount paths, in a private mount namespace of the container (``unshare``
  and bind mounts): ``emptyDir``, ``secret``, ``configMap``, ``projected`` (ServiceAccount
  tokens from TokenRequest bound to the pod, with their audience and expiry; ConfigMaps,
  Secrets, the downward API's namespace) — every read goes through the API server as
  ``system:node:<node>``, so the Node authorizer decides what the pod may see,
- the pod's ``runAsUser``/``runAsGroup``/``fsGroup`` (``setpriv``) and a read-only root
  filesystem when ``readOnlyRootFilesystem`` is set (the root mount of its namespace is
  remounted read-only),

and writes the pod's status back (``Running``, container states, exit codes, ``Succeeded``
or ``Failed``; restarts for ``restartPolicy: Always/OnFailure``). A pod being deleted has its
processes stopped (SIGTERM, SIGKILL after the grace period) and is then removed, as a kubelet
does. Not emulated: images (the host's programs run, not the image's), network namespaces
(every pod shares the host's loopback; NetworkPolicies are stored but not enforced), cgroups
(resource limits are not enforced), probes, ``kubectl logs``/``exec`` (logs are files under
``--pods-dir``), capabilities and seccomp (the process runs with what ``setpriv`` leaves).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.images import Image, image_map, repository
from tests.cluster.relay import pipe

log = logging.getLogger("node-agent")
Obj = dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status


class Api:
    """The API server as the node sees it (client certificate from a kubeconfig)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        self.context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.context.load_cert_chain(user["client-certificate"], user["client-key"])

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")) from exc
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")


# -- one pod ---------------------------------------------------------------------------------------


class PodError(Exception):
    """The pod cannot start (a missing Secret, a bad reference): reported as a waiting reason."""

    def __init__(self, reason: str, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.missing = missing  # the object does not exist (404): an `optional` reference is then skipped


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` is a literal ``$``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(repl, value)


class Container:
    """One container's process and what the status needs of it."""

    def __init__(self, spec: Obj) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.process: subprocess.Popen[bytes] | None = None
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.restarts = 0
        self.probed_ready = False  # the readiness probe's last answer (no probe: ready while running)

    @property
    def ready(self) -> bool:
        return "running" in self.state and (self.probed_ready or not self.spec.get("readinessProbe"))

    def status(self) -> Obj:
        running = "running" in self.state
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"host://{self.process.pid}" if self.process else "",
            "ready": self.ready,
            "started": running,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }


class PodRunner(threading.Thread):
    """Runs one pod to its end (or until stopped) and keeps its status in the API."""

    def __init__(self, agent: Agent, pod: Obj) -> None:
        super().__init__(name=f"pod-{pod['metadata']['namespace']}/{pod['metadata']['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.dir = agent.pods_dir / f"{self.ns}_{self.pod_name}_{self.uid[:8]}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.init = [Container(c) for c in pod["spec"].get("initContainers") or []]
        self.main = [Container(c) for c in pod["spec"]["containers"]]
        self.started_at = _now()
        self.phase = "Pending"
        self.waiting: tuple[str, str] | None = None
        self.finished = threading.Event()

    # -- status -------------------------------------------------------------------------------
    def write_status(self) -> None:
        with self.lock:
            ready = self.phase == "Running" and all(c.ready for c in self.main)
            initialized = all("terminated" in c.state for c in self.init)
            conditions = [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True" if initialized else "False"},
                {"type": "ContainersReady", "status": "True" if ready else "False"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ]
            for cond in conditions:
                cond["lastTransitionTime"] = self.started_at
            status: Obj = {
                "phase": self.phase,
                "conditions": conditions,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.started_at,
                "initContainerStatuses": [c.status() for c in self.init] or None,
                "containerStatuses": [c.status() for c in self.main],
            }
            if self.waiting is not None:
                for c in status["containerStatuses"]:
                    c["state"] = {"waiting": {"reason": self.waiting[0], "message": self.waiting[1]}}
                status["message"] = self.waiting[1]
        try:
            self.agent.api.merge_patch(f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status", {"status": status})
        except ApiError as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s", self.ns, self.pod_name, exc)

    # -- volumes and environment ---------------------------------------------------------------
    def _secret(self, name: str) -> Obj:
        try:
            data: Obj = self.agent.api.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
        except ApiError as exc:
            # Not found: an optional reference is skipped. Anything else (a 403 while the Node authorizer
            # has not yet seen this pod's reference to the Secret) is retried, as a kubelet does.
            raise PodError("CreateContainerConfigError", f'secret "{name}": {exc}', missing=exc.status == 404) from exc
        return {k: base64.b64decode(v) for k, v in (data.get("data") or {}).items()}

    def _configmap(self, name: str) -> Obj:
        try:
            data: Obj = self.agent.api.get(f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
        except ApiError as exc:
            raise PodError(
                "CreateContainerConfigError", f'configmap "{name}": {exc}', missing=exc.status == 404
            ) from exc
        return {k: v.encode() for k, v in (data.get("data") or {}).items()}

    def _token(self, sa: str, audience: str | None, seconds: int) -> bytes:
        spec: Obj = {
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid},
        }
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            answer = self.agent.api.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
        except ApiError as exc:
            raise PodError("CreateContainerConfigError", f"token for serviceaccount {sa}: {exc}") from exc
        return str(answer["status"]["token"]).encode()

    def _ids(self, container: Obj | None = None) -> tuple[int, int, int | None]:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = (container or {}).get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", 0))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid if uid else 0))
        return int(uid), int(gid), pod_sc.get("fsGroup")

    def _write(self, directory: Path, files: dict[str, bytes], items: list[Obj] | None, mode: int) -> None:
        uid, gid, fs_group = self._ids()
        chosen: dict[str, str] = (
            {i["key"]: str(i.get("path", i["key"])) for i in items} if items else {k: k for k in files}
        )
        for key, rel in chosen.items():
            if key not in files:
                raise PodError("CreateContainerConfigError", f"key {key} not found")
            path = directory / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[key])
            path.chmod(mode)
            os.chown(path, uid, fs_group if fs_group is not None else gid)

    def prepare_volumes(self) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        uid, gid, fs_group = self._ids()
        for volume in self.pod["spec"].get("volumes") or []:
            path = self.dir / "volumes" / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            volumes[volume["name"]] = path
            if "emptyDir" in volume:
                path.chmod(0o777)
            elif "secret" in volume:
                src = volume["secret"]
                try:
                    files = self._secret(src["secretName"])
                except PodError as exc:
                    if src.get("optional") and exc.missing:
                        continue
                    raise
                self._write(path, files, src.get("items"), src.get("defaultMode", 0o644))
            elif "configMap" in volume:
                src = volume["configMap"]
                try:
                    files = self._configmap(src["name"])
                except PodError as exc:
                    if src.get("optional") and exc.missing:
                        continue
                    raise
                self._write(path, files, src.get("items"), src.get("defaultMode", 0o644))
            elif "projected" in volume:
                mode = volume["projected"].get("defaultMode", 0o644)
                for source in volume["projected"].get("sources") or []:
                    if "serviceAccountToken" in source:
                        tok = source["serviceAccountToken"]
                        token = self._token(sa, tok.get("audience"), int(tok.get("expirationSeconds", 3600)))
                        # A token is readable by the pod's user only (kubelet: 0600, or 0640 with fsGroup).
                        target = path / str(tok["path"])
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(token)
                        target.chmod(0o640 if fs_group is not None else 0o600)
                        os.chown(target, uid, fs_group if fs_group is not None else gid)
                    elif "configMap" in source:
                        self._write(
                            path, self._configmap(source["configMap"]["name"]), source["configMap"].get("items"), mode
                        )
                    elif "secret" in source:
                        self._write(path, self._secret(source["secret"]["name"]), source["secret"].get("items"), mode)
                    elif "downwardAPI" in source:
                        for item in source["downwardAPI"].get("items") or []:
                            value = self._field(item.get("fieldRef", {}).get("fieldPath", ""))
                            self._write(path, {item["path"]: value.encode()}, None, mode)
            else:
                raise PodError(
                    "CreateContainerConfigError", f"volume {volume['name']}: type not supported by the node agent"
                )
            if fs_group is not None:
                os.chown(path, 0, int(fs_group))
                path.chmod(0o2777 if "emptyDir" in volume else 0o2755)
        return volumes

    def _field(self, field_path: str) -> str:
        meta = self.pod["metadata"]
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.agent.node,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if field_path not in values:
            raise PodError("CreateContainerConfigError", f"fieldRef {field_path} not supported by the node agent")
        return str(values[field_path])

    def environment(self, spec: Obj) -> dict[str, str]:
        image = self.agent.image(spec)
        env: dict[str, str] = {
            **(image.env if image else {}),
            "PATH": ":".join([*(image.path if image else ()), self.agent.path]),
            "HOSTNAME": self.pod_name,
            "HOME": "/",
            "KUBERNETES_SERVICE_HOST": self.agent.service_ip,
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        }
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._secret(source["secretRef"]["name"])
            else:
                data = self._configmap(source["configMapRef"]["name"])
            env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in spec.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
                continue
            ref = var.get("valueFrom") or {}
            if "fieldRef" in ref:
                env[var["name"]] = self._field(ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                key_ref = ref.get("secretKeyRef") or ref["configMapKeyRef"]
                try:
                    data = self._secret(key_ref["name"]) if "secretKeyRef" in ref else self._configmap(key_ref["name"])
                    env[var["name"]] = data[key_ref["key"]].decode()
                except (PodError, KeyError) as exc:
                    if key_ref.get("optional") and (isinstance(exc, KeyError) or exc.missing):
                        continue
                    raise PodError("CreateContainerConfigError", f"env {var['name']}: {exc}") from exc
            elif "resourceFieldRef" in ref:
                resources = spec.get("resources") or {}
                field = ref["resourceFieldRef"]["resource"]
                kind, _, name = field.partition(".")
                env[var["name"]] = str((resources.get(kind) or {}).get(name, ""))
            else:
                env[var["name"]] = ""
        return env

    # -- running ----------------------------------------------------------------------------------
    def _argv(self, spec: Obj, env: dict[str, str]) -> list[str]:
        """The container's command and args over the image's ENTRYPOINT and CMD (tests/cluster/images.py;
        Mesial's image: ``--entrypoint``), as a runtime combines them."""
        image = self.agent.image(spec)
        if spec.get("command"):
            argv = [*spec["command"], *(spec.get("args") or [])]
        elif image is None:
            argv = [*self.agent.entrypoint, *(spec.get("args") or [])]
        elif image.entrypoint:
            argv = [*image.entrypoint, *(spec.get("args") or image.cmd)]
        else:
            raise PodError("CreateContainerError", f"image {spec.get('image')}: give a command (no entrypoint known)")
        return [expand(a, env) for a in argv]

    def _script(self, spec: Obj, volumes: dict[str, Path], argv: list[str]) -> str:
        """The shell that sets up the container's mount namespace, then becomes its process."""
        lines = ["set -e"]
        for mount in spec.get("volumeMounts") or []:
            src = volumes[mount["name"]]
            if mount.get("subPath"):
                src = src / mount["subPath"]
            target = shlex.quote(mount["mountPath"])
            lines.append(f"mkdir -p {target}")
            lines.append(f"mount --bind {shlex.quote(str(src))} {target}")
            if mount.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {target}")
        uid, gid, fs_group = self._ids(spec)
        lines += self._identity(uid, gid)
        hosts = self.write_hosts()
        lines.append(f"mount --bind {shlex.quote(str(hosts))} /etc/hosts")
        sc = spec.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem"):
            lines.append("mount -o remount,bind,ro /")
        workdir = spec.get("workingDir") or "/"
        lines.append(f"cd {shlex.quote(workdir)}")
        groups = f"--groups={fs_group}" if fs_group is not None else "--clear-groups"
        setpriv = f"setpriv --reuid={uid} --regid={gid} {groups} --no-new-privs --"
        lines.append(f"exec {setpriv} {shlex.join(argv)}")
        return "\n".join(lines)

    def write_hosts(self) -> Path:
        """The pod's /etc/hosts: the cluster's Services by their DNS names (as cluster DNS answers them:
        ``name.namespace.svc[.cluster.local]``, ``name.namespace``, and ``name`` in the pod's own
        namespace). Rewritten in place (the bind mount keeps the inode) when Services change."""
        hosts = self.dir / "hosts"
        lines = ["127.0.0.1\tlocalhost", f"127.0.0.1\t{self.pod_name}"]
        for (namespace, name), ip in sorted(self.agent.service_addresses().items()):
            names = [f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}.svc", f"{name}.{namespace}"]
            if namespace == self.ns:
                names.append(name)
            lines.append(f"{ip}\t{' '.join(names)}")
        text = "\n".join(lines) + "\n"
        if not hosts.exists() or hosts.read_text() != text:
            with hosts.open("w") as out:  # truncate and write: the same inode, seen through the bind mount
                out.write(text)
            hosts.chmod(0o644)
        return hosts

    def ports(self) -> dict[str, int]:
        """The pod's named container ports (name -> port), and every port by its number."""
        found: dict[str, int] = {}
        for container in self.pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                found[str(port["containerPort"])] = int(port["containerPort"])
                if port.get("name"):
                    found[port["name"]] = int(port["containerPort"])
        return found

    def _identity(self, uid: int, gid: int) -> list[str]:
        """The image names its user (Mesial's: ``mesial``, 10001, in /etc/passwd; some programs, kopf
        among them, look the user up): a user the host lacks gets an entry in a copy of the host's
        /etc/passwd and /etc/group, bind-mounted over them in the container's namespace only."""
        import grp
        import pwd

        lines: list[str] = []
        try:
            pwd.getpwuid(uid)
        except KeyError:
            passwd = self.dir / "passwd"
            passwd.write_text(
                Path("/etc/passwd").read_text() + f"pod{uid}:x:{uid}:{gid}::/nonexistent:/usr/sbin/nologin\n"
            )
            passwd.chmod(0o644)
            lines.append(f"mount --bind {shlex.quote(str(passwd))} /etc/passwd")
        try:
            grp.getgrgid(gid)
        except KeyError:
            group = self.dir / "group"
            group.write_text(Path("/etc/group").read_text() + f"pod{gid}:x:{gid}:\n")
            group.chmod(0o644)
            lines.append(f"mount --bind {shlex.quote(str(group))} /etc/group")
        return lines

    def start_container(self, container: Container, volumes: dict[str, Path]) -> None:
        env = self.environment(container.spec)
        argv = self._argv(container.spec, env)
        if shutil.which(argv[0], path=env["PATH"]) is None and not Path(argv[0]).is_absolute():
            raise PodError("CreateContainerError", f"{argv[0]}: not found on the node agent's PATH")
        script = self._script(container.spec, volumes, argv)
        log_path = self.dir / f"{container.name}.log"
        with log_path.open("ab") as out:
            out.write(f"--- {_now()} {shlex.join(argv)}\n".encode())
            out.flush()
            container.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        container.state = {"running": {"startedAt": _now()}}

    def _wait(self, container: Container) -> int:
        assert container.process is not None
        code = container.process.wait()
        # The container's first process is gone: so is the rest of it, as when a runtime tears down the
        # container's PID namespace (a shell's `weed server &` would otherwise outlive the pod).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(container.process.pid, signal.SIGKILL)
        finished = _now()
        started = container.state.get("running", {}).get("startedAt", finished)
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal, as a runtime reports it
        container.state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started,
                "finishedAt": finished,
            }
        }
        return code

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s", self.ns, self.pod_name)
        finally:
            self.finished.set()

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        restart = self.pod["spec"].get("restartPolicy", "Always")
        while not self.stopping.is_set():
            try:
                volumes = self.prepare_volumes()
                break
            except PodError as exc:
                self.waiting = (exc.reason, str(exc))
                self.write_status()
                self.stopping.wait(2.0)
        else:
            return
        self.waiting = None
        for container in self.init:
            if self.stopping.is_set():
                return
            try:
                self.start_container(container, volumes)
            except PodError as exc:
                self.waiting = (exc.reason, str(exc))
                self.write_status()
                return
            self.write_status()
            if self._wait(container) != 0:
                self.phase = "Failed"
                self.write_status()
                return
        self.phase = "Running"
        threads = [threading.Thread(target=self._keep, args=(c, volumes, restart), daemon=True) for c in self.main]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.stopping.is_set():
            return
        codes = [c.state.get("terminated", {}).get("exitCode", 1) for c in self.main]
        self.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        self.write_status()

    def _keep(self, container: Container, volumes: dict[str, Path], restart: str) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self.start_container(container, volumes)
            except PodError as exc:
                self.waiting = (exc.reason, str(exc))
                self.write_status()
                self.stopping.wait(2.0)
                continue
            self.waiting = None
            self.write_status()
            if container.spec.get("readinessProbe"):
                threading.Thread(target=self._probe, args=(container, container.process), daemon=True).start()
            code = self._wait(container)
            container.probed_ready = False
            self.write_status()
            if self.stopping.is_set() or restart == "Never" or (restart == "OnFailure" and code == 0):
                return
            container.restarts += 1
            container.last_state, container.state = container.state, {"waiting": {"reason": "CrashLoopBackOff"}}
            self.write_status()
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _probe(self, container: Container, process: subprocess.Popen[bytes] | None) -> None:
        """The container's readiness probe (``httpGet``, ``tcpSocket``, ``exec``) while this process
        runs, every ``min(periodSeconds, 2)`` seconds after ``initialDelaySeconds``; a change of its
        answer is written to the pod's status (Ready, and the Services' endpoints)."""
        probe = container.spec["readinessProbe"]
        period = min(float(probe.get("periodSeconds", 10)), 2.0)
        threshold = int(probe.get("failureThreshold", 3))
        self.stopping.wait(float(probe.get("initialDelaySeconds", 0)))
        failures = 0
        while process is not None and process.poll() is None and not self.stopping.is_set():
            ok = self._probe_once(container, probe, process.pid)
            failures = 0 if ok else failures + 1
            answer = ok or (container.probed_ready and failures < threshold)
            if answer != container.probed_ready:
                container.probed_ready = answer
                self.write_status()
            self.stopping.wait(period)

    def _probe_once(self, container: Container, probe: Obj, pid: int) -> bool:
        import socket

        timeout = float(probe.get("timeoutSeconds", 1)) + 1.0
        ports = self.ports()
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = ports.get(str(get["port"]), get["port"])
                url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{get.get('path', '/')}"
                context = ssl._create_unverified_context()  # a kubelet does not verify probe certificates
                with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
                    return bool(200 <= response.status < 400)
            if "tcpSocket" in probe:
                port = ports.get(str(probe["tcpSocket"]["port"]), probe["tcpSocket"]["port"])
                with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout):
                    return True
            if "exec" in probe:
                # In the container's mount namespace, as its user, with its environment.
                uid, gid, _ = self._ids(container.spec)
                env = self.environment(container.spec)
                command = ["nsenter", f"--target={pid}", "--mount", "--", "setpriv", f"--reuid={uid}",
                           f"--regid={gid}", "--clear-groups", "--", *probe["exec"]["command"]]  # fmt: skip
                return subprocess.run(command, env=env, capture_output=True, timeout=timeout + 5).returncode == 0
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired, PodError):
            return False
        return True  # a probe of another kind (grpc): not run here, taken as passing

    def stop(self, grace: float) -> None:
        """SIGTERM every process of the pod, SIGKILL what is left after ``grace`` seconds."""
        self.stopping.set()
        processes = [c.process for c in self.init + self.main if c.process is not None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            # Every process of the container (its process group), not only the first, gets SIGKILL at
            # the deadline.
            while time.monotonic() < deadline and _group_alive(process.pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- Services -------------------------------------------------------------------------------------


def _pipe_both(client: Any, upstream: Any) -> None:
    upstream.settimeout(None)
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    pipe(client, upstream)
    with contextlib.suppress(OSError):
        client.close()
    with contextlib.suppress(OSError):
        upstream.close()


class ServiceProxy(threading.Thread):
    """One port of a Service as kube-proxy gives it: ``ip:port`` forwards each connection to the port
    ``target()`` answers on this host's loopback (every pod shares the host's network), or refuses it
    when ``target()`` answers None (no running pod behind the Service). ``ip`` is an address of
    127.0.0.0/8 of this cluster's own, so two clusters on one host do not meet."""

    def __init__(self, ip: str, port: int, target: Any, netns: str | None = None) -> None:
        super().__init__(name=f"service-proxy-{ip}:{port}", daemon=True)
        import socket

        self.target = target if callable(target) else (lambda: target)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        # The listener lives in ``netns`` when given; the connections it makes, in the agent's own.
        self.server = in_netns(netns, lambda: socket.create_server((ip, port), family=family, reuse_port=False))

    def run(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def close(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()

    def _serve(self, client: Any) -> None:
        import socket

        port = self.target()
        try:
            if port is None:
                raise OSError("no endpoint")
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            client.close()
            return
        _pipe_both(client, upstream)


_CLONE_NEWNET = 0x40000000


def in_netns(netns: str | None, make: Any) -> Any:
    """``make()`` run in the network namespace ``netns`` (a /proc/<pid>/ns/net path; None: here), on a
    thread of its own: setns(2) moves only the calling thread, and a socket stays in the namespace it
    was made in."""
    if netns is None:
        return make()
    import ctypes

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result["value"] = make()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name="netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class Services:
    """The cluster's Services (type ClusterIP with a selector), as kube-proxy and cluster DNS give them
    to pods: each gets an IPv6 address of its own (its ``spec.clusterIP`` does not route here), from
    a random unique-local /64 of this agent's, with a listener per port that forwards to the
    ``targetPort`` (a number, or a container port's name) of a running pod of this node matching the
    selector; pods find it by name in their /etc/hosts.

    The listeners live in a network namespace of their own, reached from the host through a veth
    pair (the host's end ``<prefix>::1``): pods share the host's network and listen on
    ``0.0.0.0:<port>`` (Go programs on ``[::]`` as well), which a listener of the Service's on the same
    port in the host's namespace would take from them. Every address is written to
    ``<pods-dir>/services.json`` (``namespace/name`` -> address) for clients outside the cluster
    (what ``kubectl port-forward svc/...`` would give them)."""

    def __init__(self, agent: Agent) -> None:
        import secrets

        self.agent = agent
        self.known: dict[tuple[str, str], tuple[str, str, list[ServiceProxy]]] = {}  # key -> (version, ip, proxies)
        a, b, c = secrets.randbelow(256), secrets.randbelow(65536), secrets.randbelow(65536)
        self.prefix = f"fd{a:02x}:{b:04x}:{c:04x}::"
        self.next_host = 16  # ::1 is the host's end of the veth pair, ::2 the namespace's
        self.holder: subprocess.Popen[bytes] | None = None
        self.netns: str | None = None
        self.link = f"mvs{secrets.token_hex(4)}"  # the namespace's end; the host's: "mvh" + the same

    def _ip(self, *args: str, inside: bool = False) -> None:
        command = ["ip", *args]
        if inside:
            assert self.holder is not None
            command = ["nsenter", f"--net={self.netns}", "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    def _namespace(self) -> None:
        """The Services' network namespace (held by a `sleep` of the agent's process group) and its link."""
        if self.holder is not None:
            return
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.readlink(self.netns) == os.readlink("/proc/self/ns/net"):  # unshare has not yet run
            if time.monotonic() > deadline:
                raise RuntimeError("the Services' network namespace did not appear")
            time.sleep(0.02)
        host = "mvh" + self.link[3:]
        self._ip("link", "add", host, "type", "veth", "peer", "name", self.link, "netns", str(self.holder.pid))
        self._ip("addr", "add", f"{self.prefix}1/64", "dev", host, "nodad")
        self._ip("link", "set", host, "up")
        self._ip("link", "set", "lo", "up", inside=True)
        self._ip("addr", "add", f"{self.prefix}2/64", "dev", self.link, "nodad", inside=True)
        self._ip("link", "set", self.link, "up", inside=True)

    def _new_address(self) -> str:
        self._namespace()
        ip = f"{self.prefix}{self.next_host:x}"
        self.next_host += 1
        self._ip("addr", "add", f"{ip}/128", "dev", self.link, "nodad", inside=True)
        return ip

    def close(self) -> None:
        """Stop every proxy; the namespace goes with its holder, the veth pair with it."""
        for _, _, proxies in self.known.values():
            for proxy in proxies:
                proxy.close()
        self.known.clear()
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None

    def addresses(self) -> dict[tuple[str, str], str]:
        found = {key: ip for key, (_, ip, _) in self.known.items()}
        found[("default", "kubernetes")] = self.agent.service_ip
        return found

    def _endpoint(self, namespace: str, selector: dict[str, str], target: int | str) -> int | None:
        for runner in list(self.agent.runners.values()):
            labels = runner.pod["metadata"].get("labels") or {}
            if runner.ns != namespace or runner.phase != "Running" or runner.stopping.is_set():
                continue
            if not all(c.ready for c in runner.main):  # kube-proxy routes to ready endpoints only
                continue
            if all(labels.get(k) == v for k, v in selector.items()):
                port = runner.ports().get(str(target))
                if port is None and isinstance(target, int):
                    port = target
                if port is not None:
                    return port
        return None

    def sync(self) -> bool:
        """Open and close proxies as Services come and go; True when the set of addresses changed."""
        items = self.agent.api.get("/api/v1/services")["items"]
        seen: set[tuple[str, str]] = set()
        changed = False
        for svc in items:
            meta, spec = svc["metadata"], svc.get("spec") or {}
            key = (meta["namespace"], meta["name"])
            if key == ("default", "kubernetes") or not spec.get("selector") or spec.get("clusterIP") == "None":
                continue
            seen.add(key)
            version = meta["resourceVersion"]
            if key in self.known and self.known[key][0] == version:
                continue
            ip = self.known[key][1] if key in self.known else self._new_address()
            if key in self.known:
                for proxy in self.known.pop(key)[2]:
                    proxy.close()
            proxies = []
            for port in spec.get("ports") or []:
                if port.get("protocol", "TCP") != "TCP":
                    continue
                target = port.get("targetPort", port["port"])
                selector = dict(spec["selector"])

                def resolve(ns: str = key[0], sel: dict[str, str] = selector, t: int | str = target) -> int | None:
                    return self._endpoint(ns, sel, t)

                proxy = ServiceProxy(ip, int(port["port"]), resolve, netns=self.netns)
                proxy.start()
                proxies.append(proxy)
            self.known[key] = (version, ip, proxies)
            changed = True
        for key in set(self.known) - seen:
            for proxy in self.known.pop(key)[2]:
                proxy.close()
            changed = True
        if changed:
            listing = {f"{ns}/{name}": ip for (ns, name), ip in self.addresses().items()}
            (self.agent.pods_dir / "services.json").write_text(json.dumps(listing, indent=2, sort_keys=True))
        return changed


# -- the node ----------------------------------------------------------------------------------------


class Agent:
    def __init__(
        self, api: Api, node: str, pods_dir: Path, api_port: int, service_ip: str, entrypoint: list[str], path: str
    ) -> None:
        self.api = api
        self.service_ip = service_ip
        self.node = node
        self.pods_dir = pods_dir
        self.api_port = api_port
        self.entrypoint = entrypoint
        self.path = path
        self.runners: dict[str, PodRunner] = {}
        self.stopped = threading.Event()
        self.services = Services(self)
        self.images: dict[str, Image] = image_map()

    def image(self, spec: Obj) -> Image | None:
        """What a container's image runs here (tests/cluster/images.py); None: Mesial's image."""
        return self.images.get(repository(str(spec.get("image", ""))))

    def service_addresses(self) -> dict[tuple[str, str], str]:
        return self.services.addresses()

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        try:
            self.api.request("POST", "/api/v1/nodes", node)
        except ApiError as exc:
            if exc.status != 409:
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        now = _now()
        resources = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        status = {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "NodeAgentReady",
                    "message": "mesial test node agent (runs pods' commands on the host)",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "v1.35.4-mesial-node-agent",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "host://",
                "osImage": "host",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.api.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": status})

    def sync(self) -> None:
        if self.services.sync():
            for live in list(self.runners.values()):
                if live.dir.exists():
                    live.write_hosts()
        selector = urllib.parse.quote(f"spec.nodeName={self.node}")
        pods = self.api.get(f"/api/v1/pods?fieldSelector={selector}")["items"]
        seen = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            runner = self.runners.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                self._delete(pod, runner)
                continue
            if runner is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                runner = PodRunner(self, pod)
                self.runners[uid] = runner
                runner.write_status()
                runner.start()
        for uid in set(self.runners) - seen:
            # Deleted from the API without us (force deletion): stop what still runs.
            runner = self.runners.pop(uid)
            threading.Thread(target=runner.stop, args=(2.0,), daemon=True).start()

    def _delete(self, pod: Obj, runner: PodRunner | None) -> None:
        meta = pod["metadata"]
        if runner is not None and not runner.stopping.is_set():
            grace = float(meta.get("deletionGracePeriodSeconds") or 30)

            def finish() -> None:
                runner.stop(grace)
                self._remove(meta)

            threading.Thread(target=finish, daemon=True).start()
        elif runner is None or runner.finished.is_set() or not runner.is_alive():
            self._remove(meta)

    def _remove(self, meta: Obj) -> None:
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        with contextlib.suppress(ApiError):
            self.api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)
        self.runners.pop(meta["uid"], None)

    def run(self) -> None:
        self.register()
        last_beat = time.monotonic()
        while not self.stopped.is_set():
            try:
                self.sync()
                if time.monotonic() - last_beat > 20:
                    self.heartbeat()
                    last_beat = time.monotonic()
            except (ApiError, OSError) as exc:
                log.warning("sync: %s", exc)
            self.stopped.wait(0.5)
        for runner in list(self.runners.values()):
            runner.stop(5.0)
        self.services.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="node-agent", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", default="mesial-node")
    parser.add_argument("--pods-dir", type=Path, required=True)
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--service-ip", required=True, help="the kubernetes Service's address (in 127.0.0.0/8)")
    parser.add_argument(
        "--entrypoint", default="mesial", help="the images' entrypoint (when a container has no command)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    venv_bin = str(Path(sys.executable).parent)
    path = f"{venv_bin}:/usr/local/bin:/usr/bin:/bin"
    args.pods_dir.mkdir(parents=True, exist_ok=True)
    ServiceProxy(args.service_ip, 443, args.api_port).start()
    agent = Agent(
        Api(args.kubeconfig),
        args.node,
        args.pods_dir,
        args.api_port,
        args.service_ip,
        shlex.split(args.entrypoint),
        path,
    )
    signal.signal(signal.SIGTERM, lambda *_: agent.stopped.set())
    agent.run()
