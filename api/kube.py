"""A minimal Kubernetes client for cluster mode: create and delete ScanJobs (stdlib only).

The API does not import a Kubernetes library (only the operator does); the two calls it
needs are plain HTTPS requests to the API server with the pod's ServiceAccount token,
re-read on every call because projected tokens rotate. RBAC: the API's ServiceAccount
needs ``create`` and ``delete`` on ``scanjobs.mesial.dev`` in tenant namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mesial.common.errors import ConfigurationError, ServiceError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP, VERSION, PLURAL = "mesial.dev", "v1alpha1", "scanjobs"


class KubeApi:
    def __init__(
        self, server: str, *, token: str | None = None, token_path: Path | None = None, ca_file: str | None = None,
        verify: bool = True, timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self.server = server.rstrip("/")
        self.token = token
        self.token_path = token_path
        self.timeout_s = timeout_s
        self.context: ssl.SSLContext | None = None
        if self.server.startswith("https"):
            self.context = ssl.create_default_context(cafile=ca_file)
            if not verify:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    @classmethod
    def in_cluster(cls) -> KubeApi:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigurationError("cluster mode needs the in-cluster Kubernetes API (KUBERNETES_SERVICE_HOST)")
        return cls(f"https://{host}:{port}", token_path=SA_DIR / "token", ca_file=str(SA_DIR / "ca.crt"))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        token = (
            self.token if self.token is not None else (self.token_path.read_text().strip() if self.token_path else "")
        )
        headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.context) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            if method == "DELETE" and exc.code == 404:
                return {}
            raise ServiceError(f"Kubernetes API refused {method} {path}: {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ServiceError(f"Kubernetes API unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _collection(manifest: dict[str, Any]) -> str:
        namespace = manifest["metadata"]["namespace"]
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"

    async def create(self, manifest: dict[str, Any]) -> None:
        await asyncio.to_thread(self._call, "POST", self._collection(manifest), manifest)

    async def delete(self, manifest: dict[str, Any]) -> None:
        path = f"{self._collection(manifest)}/{manifest['metadata']['name']}"
        await asyncio.to_thread(self._call, "DELETE", path)

    async def get(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        path = f"{self._collection(manifest)}/{manifest['metadata']['name']}"
        try:
            return await asyncio.to_thread(self._call, "GET", path)
        except ServiceError as exc:
            if ": 404" in str(exc):
                return None
            raise
