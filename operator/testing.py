"""Running the real operator in-process against the kmock Kubernetes emulator.

Used by the test suite and the benchmark. kmock stores objects as plain JSON and merges
patches; a real API server also keeps ``metadata.resourceVersion`` (and checks kopf's
JSON-patch ``test`` on it), ``uid``, ``creationTimestamp`` and ``generation`` (bumped on
spec changes). :class:`Emulator` adds them. The resource version is set once at creation
and kept: kmock replays a list's objects on the watch stream, so a bumped version
would make kopf's optimistic JSON patches fail on replayed stale bodies and stall; a
constant one makes every ``test`` pass, as with a single writer. It also counts the
requests it serves. What it still does not do (garbage collection by owner references,
admission, RBAC, schema validation) is tested elsewhere: see ``docs/operator.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import uuid
import weakref
from collections.abc import AsyncIterator, Collection, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import kmock
import kopf
import yaml
from kmock._internal import enums, parsing

from mesial.common.settings import Settings
from mesial.operator.k8s import K8s
from mesial.operator.main import build_registry
from mesial.operator.runtime import Runtime

CRDS_DIR = Path(__file__).resolve().parent.parent / "crds"
# The bearer tokens of the operator (kopf and the runtime's client) and of the test's own client:
# the emulator tells the operator's requests apart by them (``Emulator.request_log``).
OPERATOR_TOKEN = "operator"
CLIENT_TOKEN = "emulated"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the operator made: method, path, query and JSON body (as sent)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


_parse_path = parsing.parse_path


def _parse_path_with_namespaces(path: str) -> Any:
    """kmock 0.8 reads ``/api/v1/namespaces[/<name>[/status]]`` as a namespace prefix with no
    resource; the API server reads it as the ``namespaces`` resource. Parse it as the server does."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        return parsing.ParsedPath(
            group="",
            version="v1",
            plural="namespaces",
            namespace=None,
            name=parts[3] if len(parts) > 3 else None,
            subresource=parts[4] if len(parts) > 4 else None,
        )
    return _parse_path(path)


parsing.parse_path = _parse_path_with_namespaces


class Emulator(kmock.KubernetesEmulator):
    """kmock with uids, creation timestamps, generations (bumped on spec changes) and generateName.

    While ``request_log`` is a list, every request made with the operator's token is appended to
    it (``tests/operator/test_least_privilege.py`` checks them against the chart's RBAC).
    :meth:`watch_held` delays every watch stream, as a lagging one (a slow network, a busy API
    server, a busy operator) does: kopf's cached bodies then lag behind the objects."""

    request_log: ClassVar[list[RecordedRequest] | None] = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.request_count = 0
        self._watch_open = asyncio.Event()
        self._watch_open.set()

    @contextlib.contextmanager
    def watch_held(self) -> Iterator[None]:
        """Inside: no watch event is delivered (requests are served as usual). On exit the events
        held are delivered, in order."""
        self._watch_open.clear()
        try:
            yield
        finally:
            self._watch_open.set()

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        async for payload in super()._serve_watch(request):
            if payload != b"":  # the stream's start (headers), then its events
                await self._watch_open.wait()
            yield payload

    async def _handle(self, request: Any) -> Any:
        self.request_count += 1
        log = Emulator.request_log
        if log is not None and request.headers.get("Authorization") == f"Bearer {OPERATOR_TOKEN}":
            body = request.data if request.method.value in ("POST", "PUT", "PATCH") else None
            log.append(RecordedRequest(request.method.value, request.url.path, dict(request.params), body))
        if request.resource is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:10]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = "1"
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
        elif request.resource is not None and request.action == enums.action.UPDATE and request.name is not None:
            current = self._current(request)
            spec_changed = (
                any(str(op.get("path", "")).startswith("/spec") for op in request.data)
                if isinstance(request.data, list)
                else isinstance(request.data, dict) and "spec" in request.data
            )
            if (
                spec_changed
                and current
                and isinstance(request.data, dict)
                and request.data["spec"] != current.get("spec")
            ):
                generation = int(current.get("metadata", {}).get("generation", 1)) + 1
                request.data.setdefault("metadata", {})["generation"] = generation
        try:
            return await super()._handle(request)
        finally:
            # kmock keeps every request it served, and matching each new request to its reactions
            # scans that whole history: quadratic, minutes at a few thousand requests. The harness
            # never asserts on the history, so only the requests in flight are kept.
            with contextlib.suppress(ValueError):
                self._requests.remove(request)

    async def _serve_list(self, request: Any) -> Any:
        """kmock's list with the ``apiVersion`` and ``kind`` a real server gives it (kubectl needs them)."""
        raw: Any = await super()._serve_list(request)
        payload: dict[str, Any] = dict(raw)
        items = payload.get("items") or []
        res = request.resource
        group_version = f"{res.group}/{res.version}" if res.group else res.version
        if items and items[0].get("kind"):
            return {"apiVersion": group_version, "kind": f"{items[0]['kind']}List", **payload}
        return {"apiVersion": "v1", "kind": "List", **payload}

    def _current(self, request: Any) -> dict[str, Any] | None:
        for (resource, namespace, name), obj in self._objects.items():
            if resource == request.resource and namespace == request.namespace and name == request.name:
                return None if obj.deleted else dict(obj.raw)
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    """The built-in resources (kmock's bundle) and Mesial's CRDs, read from ``crds/``."""
    emulator.resources.load_bundled()
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            emulator.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = kmock.ResourceInfo(
                kind=spec["names"]["kind"],
                singular=spec["names"]["singular"],
                namespaced=spec["scope"] == "Namespaced",
                verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
                shortnames=set(spec["names"].get("shortNames", [])),
                categories=set(spec["names"].get("categories", [])),
                subresources={"status"} if "status" in version.get("subresources", {}) else set(),
            )


# Set in the operator's task (and so inherited by every task kopf creates from it).
_in_operator: contextvars.ContextVar[bool] = contextvars.ContextVar("mesial_in_operator", default=False)


class _NotTheOperators(Collection[asyncio.Task[Any]]):
    """kopf's ``ignored`` tasks: every task the operator did not create.

    On exit, kopf waits up to 5 s for every task created since its start that is still pending,
    then cancels them. In a test those include the test's own task (it awaits the operator's
    end), the emulator's keep-alive connection handlers and the Vault proxy's pipes: the wait
    always ran to its end (the 5 s per teardown) and the cancellation killed the emulator's
    connections. Only the operator's own tasks are its to wait for and cancel."""

    def __init__(self, owned: weakref.WeakSet[asyncio.Task[Any]]) -> None:
        self.owned = owned

    def __contains__(self, task: object) -> bool:
        return task not in self.owned

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(t for t in asyncio.all_tasks() if t not in self.owned)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@contextlib.contextmanager
def _tracking_operator_tasks() -> Iterator[weakref.WeakSet[asyncio.Task[Any]]]:
    """A loop task factory that records the tasks created from within the operator's context."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    owned: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Future[Any]:
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        if _in_operator.get() and isinstance(task, asyncio.Task):
            owned.add(task)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        yield owned
    finally:
        loop.set_task_factory(previous)


@dataclass
class Harness:
    """An emulator, the operator running against it, and a client for the test's own requests."""

    emulator: Emulator
    url: str
    runtime: Runtime
    client: K8s
    task: asyncio.Task[None] | None = None
    stop_flag: asyncio.Event | None = None
    owned: weakref.WeakSet[asyncio.Task[Any]] | None = None
    root_tasks: list[asyncio.Task[Any]] | None = None

    async def _run_operator(self, registry: kopf.OperatorRegistry, stop_flag: asyncio.Event) -> None:
        """``kopf.operator`` (spawn + run), waiting at exit only for the operator's own tasks."""
        assert self.owned is not None
        tasks = await kopf.spawn_tasks(
            registry=registry,
            clusterwide=True,
            standalone=True,
            stop_flag=stop_flag,
            memo=kopf.Memo(runtime=self.runtime),
        )
        self.root_tasks = list(tasks)
        await kopf.run_tasks(tasks, ignored=_NotTheOperators(self.owned))

    async def start_operator(self, settings: Settings) -> None:
        """Start (or restart) the real operator against the emulator."""
        registry = build_registry(settings, login=self.login)
        self.stop_flag = asyncio.Event()
        self.runtime.settings = settings
        assert self.owned is not None, "start the harness through emulated()"
        context = contextvars.copy_context()
        context.run(_in_operator.set, True)
        self.task = asyncio.create_task(self._run_operator(registry, self.stop_flag), context=context)

    async def stop_operator(self) -> None:
        """Stop the operator (as a pod would be stopped). The clients are then replaced: on exit kopf
        cancels the tasks started in its lifetime, the emulator's connection handlers included, which
        leaves the clients' pooled keep-alive connections dead."""
        if self.task is None or self.stop_flag is None:
            return
        self.stop_flag.set()
        # Once kopf's root tasks have ended, what the operator left running (a timer respawned by
        # a watch event that arrived while stopping) is cancelled now; kopf would wait 5 s first.
        roots = [t for t in self.root_tasks or [] if not t.done()]
        if roots:
            await asyncio.wait(roots, timeout=10)
        for task in list(self.owned or ()):
            if task is not self.task and not task.done():
                task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 10)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()  # kopf did not stop in time (a daemon stuck in a request): end it
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.task = None
        for old in (self.client, self.runtime.k8s):
            await old.close()
        self.client = K8s.for_server(self.url, CLIENT_TOKEN)
        self.runtime.k8s = K8s.for_server(self.url, OPERATOR_TOKEN)

    def login(self, **_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=self.url, scheme="Bearer", token=OPERATOR_TOKEN, insecure=True)


@contextlib.asynccontextmanager
async def emulated(settings: Settings, runtime_factory: Any) -> AsyncIterator[Harness]:
    """``async with emulated(settings, factory) as h:`` an emulator with the operator running."""
    emulator = Emulator()
    declare_resources(emulator)
    async with emulator, kmock.Server(emulator):
        with _tracking_operator_tasks() as owned:
            url = str(emulator.url).rstrip("/")
            runtime: Runtime = await runtime_factory(K8s.for_server(url, OPERATOR_TOKEN))
            harness = Harness(emulator, url, runtime, K8s.for_server(url, CLIENT_TOKEN), owned=owned)
            await harness.start_operator(settings)
            try:
                yield harness
            finally:
                await harness.stop_operator()
                await harness.client.close()
                await runtime.close()
