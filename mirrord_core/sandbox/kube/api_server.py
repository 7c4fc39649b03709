"""The emulated Kubernetes API server: HTTP routes over the store, node and controllers.

Serves exactly what mirrord's Kubernetes support uses, with a real API server's paths,
JSON shapes and errors (see docs/kubernetes-emulator.md for the list). Request handling:
bearer token (401) → RBAC-style policy (403) → the operation, whose failures are
``Status`` objects (404 NotFound, 409 AlreadyExists, 422 Invalid, …).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from mirrord_core.sandbox import Sandbox

from . import discovery, resources
from .access import AccessPolicy
from .agent_jobs import JobController
from .cgroups import ContainerGroups
from .container_runtime import LocalContainerRuntime
from .ephemeral import EphemeralContainers
from .events import EventRecorder
from .kubelet import Kubelet
from .node import EmulatedNode
from .port_forward import LiveForwards, NamespaceDialer, parse_ports, serve_port_forward
from .resources import Resource
from .selectors import (
    COMMON_FIELDS,
    EVENT_FIELDS,
    JOB_FIELDS,
    POD_FIELDS,
    FieldGetter,
    FieldSelector,
    LabelSelector,
)
from .status import (
    ApiError,
    bad_request,
    forbidden,
    invalid,
    method_not_allowed,
    no_such_route,
    not_found,
    status_body,
    unauthorized,
)
from .store import Obj, ObjectStore
from .validation import check_body, check_stored, job_causes
from .workloads import SandboxWorkloads

log = logging.getLogger("mirrord.sandbox.kube")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
DEFAULT_WATCH_TIMEOUT = 1800.0
REFRESH_INTERVAL = 0.5
_FIELDS: dict[str, dict[str, FieldGetter]] = {
    "pods": POD_FIELDS,
    "jobs": JOB_FIELDS,
    "events": EVENT_FIELDS,
}


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(
        obj, status=status, dumps=lambda o: json.dumps(o, separators=(",", ":"))
    )


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _waiting_message(state: dict[str, Any]) -> str:
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason", "ContainerCreating")
    return {
        "ErrImagePull": "trying and failing to pull image",
        "ImagePullBackOff": "image can't be pulled",
    }.get(reason, reason)


class KubeApiServer:
    """The API server over one sandbox; ``start()``/``stop()`` on a running event loop."""

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        workdir: Path,
        token: str,
        policy: AccessPolicy,
        images: Iterable[str],
        pending_pods: Iterable[str] = (),
        cgroups: bool = True,
    ) -> None:
        self.sandbox = sandbox
        self.token = token
        self.policy = policy
        self.store = ObjectStore(validate=check_stored)
        self.node = EmulatedNode(LocalContainerRuntime(workdir / "logs"), images)
        self.events = EventRecorder(self.store, self.node.name)
        self.kubelet = Kubelet(self.store, self.node, self.events)
        self.jobs = JobController(self.store, self.node, self.kubelet, self.events)
        self.ephemeral = EphemeralContainers(self.store, self.kubelet)
        groups = ContainerGroups(sandbox.name) if cgroups else None
        self.workloads = SandboxWorkloads(sandbox, self.store, self.node, groups, pending_pods)
        self.dialer = NamespaceDialer()
        #: Port-forward websockets being served (tests drop them).
        self.forwards = LiveForwards()
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.address = ""

    # lifecycle ------------------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        """Publish the sandbox's objects and serve on the bound socket ``sock``."""
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        for namespace in sorted(
            {
                *SYSTEM_NAMESPACES,
                *self.policy.forbidden_namespaces,
                *(p.namespace for p in self.sandbox.pods),
            }
        ):
            self.store.create(
                resources.NAMESPACES,
                {
                    "metadata": {
                        "name": namespace,
                        "labels": {"kubernetes.io/metadata.name": namespace},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )
        self.store.create(resources.NODES, self.node.node_object())
        self.workloads.publish()
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> list[str]:
        """Stop serving, stop every process started, undo the cgroups; what is left."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.jobs.shutdown()
        await self.node.runtime.stop_all()
        self.dialer.close()
        return self.workloads.release()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                self.workloads.refresh()
            except Exception:  # a refresh failure must not end the refresher
                log.exception("refreshing the sandbox pods' status failed")

    # app --------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors, self._authenticate], client_max_size=16 * 1024 * 1024
        )
        routes: list[tuple[str, str, Handler]] = [
            # The generated client asks for discovery paths with a trailing slash.
            *(
                ("GET", path + slash, handler)
                for path, handler in (
                    ("/version", self._version),
                    ("/api", self._api),
                    ("/apis", self._apis),
                    ("/api/{version}", self._resource_list),
                    ("/apis/{group}", self._group),
                    ("/apis/{group}/{version}", self._resource_list),
                )
                for slash in ("", "/")
            ),
            # core/v1
            ("GET", "/api/v1/namespaces", self._collection(resources.NAMESPACES)),
            ("GET", "/api/v1/namespaces/{name}", self._read(resources.NAMESPACES)),
            ("GET", "/api/v1/nodes", self._collection(resources.NODES)),
            ("GET", "/api/v1/nodes/{name}", self._read(resources.NODES)),
            ("GET", "/api/v1/pods", self._collection(resources.PODS)),
            ("GET", "/api/v1/namespaces/{namespace}/pods", self._collection(resources.PODS)),
            ("GET", "/api/v1/namespaces/{namespace}/pods/{name}", self._read(resources.PODS)),
            ("DELETE", "/api/v1/namespaces/{namespace}/pods/{name}", self._delete_pod),
            ("GET", "/api/v1/namespaces/{namespace}/pods/{name}/log", self._pod_log),
            (
                "GET",
                "/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers",
                self._read_ephemeral,
            ),
            (
                "PUT",
                "/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers",
                self._replace_ephemeral,
            ),
            (
                "PATCH",
                "/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers",
                self._patch_ephemeral,
            ),
            ("GET", "/api/v1/namespaces/{namespace}/pods/{name}/portforward", self._port_forward),
            ("POST", "/api/v1/namespaces/{namespace}/pods/{name}/portforward", self._port_forward),
            ("GET", "/api/v1/events", self._collection(resources.EVENTS)),
            ("GET", "/api/v1/namespaces/{namespace}/events", self._collection(resources.EVENTS)),
            # apps/v1
            ("GET", "/apis/apps/v1/deployments", self._collection(resources.DEPLOYMENTS)),
            (
                "GET",
                "/apis/apps/v1/namespaces/{namespace}/deployments",
                self._collection(resources.DEPLOYMENTS),
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                self._read(resources.DEPLOYMENTS),
            ),
            ("GET", "/apis/apps/v1/replicasets", self._collection(resources.REPLICASETS)),
            (
                "GET",
                "/apis/apps/v1/namespaces/{namespace}/replicasets",
                self._collection(resources.REPLICASETS),
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
                self._read(resources.REPLICASETS),
            ),
            # batch/v1
            ("GET", "/apis/batch/v1/jobs", self._collection(resources.JOBS)),
            ("GET", "/apis/batch/v1/namespaces/{namespace}/jobs", self._collection(resources.JOBS)),
            ("POST", "/apis/batch/v1/namespaces/{namespace}/jobs", self._create_job),
            (
                "GET",
                "/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                self._read(resources.JOBS),
            ),
            ("DELETE", "/apis/batch/v1/namespaces/{namespace}/jobs/{name}", self._delete_job),
            # authorization.k8s.io/v1
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", self._access_review),
        ]
        seen: dict[str, set[str]] = {}
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            seen.setdefault(path, set()).add(method)
        for path, methods in seen.items():
            # Any other verb on a served path is 405, as on a real server.
            for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - methods:
                app.router.add_route(method, path, self._not_allowed)
        app.router.add_route("*", "/{tail:.*}", self._no_route)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            return _json(err.body(), err.code)
        except web.HTTPException:
            raise
        except Exception as err:  # a bug in the emulator: say so, as a real server's 500
            log.exception("%s %s failed", request.method, request.path)
            return _json(status_body(500, "InternalError", f"Internal error occurred: {err}"), 500)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {self.token}":
            raise unauthorized()
        return await handler(request)

    async def _not_allowed(self, request: web.Request) -> web.StreamResponse:
        raise method_not_allowed(request.method)

    async def _no_route(self, request: web.Request) -> web.StreamResponse:
        raise no_such_route()

    # discovery -------------------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return _json(discovery.version())

    async def _api(self, request: web.Request) -> web.StreamResponse:
        return _json(discovery.core_versions(self.address))

    async def _apis(self, request: web.Request) -> web.StreamResponse:
        return _json(discovery.group_list())

    async def _group(self, request: web.Request) -> web.StreamResponse:
        found = discovery.group(request.match_info["group"])
        if found is None:
            raise no_such_route()
        return _json(found)

    async def _resource_list(self, request: web.Request) -> web.StreamResponse:
        found = discovery.resource_list(
            request.match_info.get("group", ""), request.match_info["version"]
        )
        if found is None:
            raise no_such_route()
        return _json(found)

    # generic reads ---------------------------------------------------------------------

    def _before_read(self, resource: Resource) -> None:
        if resource in (resources.PODS, resources.DEPLOYMENTS, resources.REPLICASETS):
            self.workloads.refresh()

    def _read(self, resource: Resource) -> Handler:
        async def read(request: web.Request) -> web.StreamResponse:
            namespace = request.match_info.get("namespace")
            name = request.match_info["name"]
            self.policy.check("get", resource, namespace, name)
            self._before_read(resource)
            return _json(self.store.require(resource, namespace, name))

        return read

    def _collection(self, resource: Resource) -> Handler:
        async def collection(request: web.Request) -> web.StreamResponse:
            namespace = request.match_info.get("namespace")
            query = request.query
            watch = _true(query.get("watch"))
            self.policy.check("watch" if watch else "list", resource, namespace)
            labels = LabelSelector.parse(query.get("labelSelector"))
            fields = FieldSelector.parse(
                query.get("fieldSelector"), _FIELDS.get(resource.plural, COMMON_FIELDS)
            )

            def selected(obj: Obj) -> bool:
                in_namespace = namespace is None or obj["metadata"].get("namespace") == namespace
                return (
                    in_namespace
                    and labels.matches(obj["metadata"].get("labels"))
                    and fields.matches(obj)
                )

            self._before_read(resource)
            if watch:
                return await self._watch(request, resource, selected)
            items = [obj for obj in self.store.list(resource, namespace) if selected(obj)]
            limit = query.get("limit")
            if limit is not None and limit.isdigit() and int(limit) > 0:
                items = items[: int(limit)]
            for item in items:
                # List items carry no kind/apiVersion, as from a real server.
                item.pop("kind", None)
                item.pop("apiVersion", None)
            return _json(
                {
                    "kind": resource.list_kind,
                    "apiVersion": resource.api_version,
                    "metadata": {"resourceVersion": self.store.resource_version},
                    "items": items,
                }
            )

        return collection

    async def _watch(
        self, request: web.Request, resource: Resource, selected: Callable[[Obj], bool]
    ) -> web.StreamResponse:
        query = request.query
        since = query.get("resourceVersion")
        resume = int(since) if since and since.isdigit() and since != "0" else None
        watcher = self.store.watch(resource, resume)
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)

            async def emit(kind: str, obj: Obj) -> None:
                line = json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n"
                await response.write(line.encode())

            if resume is None:
                # No version to resume from: the current state first, as ADDED events.
                for obj in self.store.list(resource):
                    if selected(obj):
                        await emit("ADDED", obj)
            deadline = asyncio.get_running_loop().time() + timeout
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                event = await watcher.next_event(remaining)
                if event is None:
                    break
                if selected(event.obj):
                    await emit(event.type, event.obj)
            await response.write_eof()
            return response
        except ConnectionError:
            return web.Response(status=499)
        finally:
            watcher.close()

    # pods --------------------------------------------------------------------------------

    async def _delete_pod(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.policy.check("delete", resources.PODS, namespace, name)
        pod = self.store.require(resources.PODS, namespace, name)
        backing = self.node.backing(namespace, name)
        if backing is not None and backing.main_pid is not None:
            # A sandbox pod's processes belong to the sandbox; the emulator cannot recreate
            # them, so it refuses as a cluster would refuse a user without that right.
            raise forbidden(self.policy.user, "delete", resources.PODS, namespace, name)
        grace = request.query.get("gracePeriodSeconds")
        body = await self._optional_body(request)
        if isinstance(body, dict) and body.get("gracePeriodSeconds") is not None:
            grace = str(body["gracePeriodSeconds"])
        self.jobs.spawn(
            self.kubelet.delete_pod(
                namespace, name, float(grace) if grace and grace.isdigit() else None
            )
        )
        await asyncio.sleep(0)
        return _json(self.store.get(resources.PODS, namespace, name) or pod)

    async def _pod_log(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.policy.check("get", resources.POD_LOG, namespace, name)
        self.workloads.refresh()
        pod = self.store.require(resources.PODS, namespace, name)
        query = request.query
        regular = [c["name"] for c in pod["spec"]["containers"]]
        ephemeral = [c["name"] for c in pod["spec"].get("ephemeralContainers") or []]
        container = query.get("container")
        if not container:
            if len(regular) != 1:
                raise bad_request(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(regular)}] or one of the ephemeral containers: "
                    f"[{' '.join(ephemeral)}]"
                )
            container = regular[0]
        if container not in regular + ephemeral:
            raise bad_request(f"container {container} is not valid for pod {name}")
        statuses = pod["status"].get("containerStatuses", []) + pod["status"].get(
            "ephemeralContainerStatuses", []
        )
        status = next((s for s in statuses if s["name"] == container), None)
        if status is None or "waiting" in status["state"]:
            state = status["state"] if status else {}
            raise bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: '
                + _waiting_message(state)
            )
        if _true(query.get("previous")):
            raise bad_request(
                f'previous terminated container "{container}" in pod "{name}" not found'
            )
        backing = self.node.backing(namespace, name)
        path = backing.logs.get(container) if backing is not None else None
        tail = query.get("tailLines")
        limit = query.get("limitBytes")
        content = _read_log(path, int(tail) if tail and tail.isdigit() else None)
        if limit and limit.isdigit():
            content = content[: int(limit)]
        if not _true(query.get("follow")) or path is None:
            return web.Response(body=content, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(content)
        run = backing.processes.get(container) if backing is not None else None
        await self._follow(
            response, path, len(_read_log(path, None)), lambda: run is None or run.running
        )
        await response.write_eof()
        return response

    async def _follow(
        self, response: web.StreamResponse, path: Path, offset: int, alive: Callable[[], bool]
    ) -> None:
        while True:
            still_running = alive()
            try:
                with open(path, "rb") as log:
                    log.seek(offset)
                    chunk = log.read()
            except OSError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                try:
                    await response.write(chunk)
                except ConnectionError:
                    return
            elif not still_running:
                return
            await asyncio.sleep(0.1)

    async def _read_ephemeral(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.policy.check("get", resources.POD_EPHEMERAL, namespace, name)
        return _json(self.ephemeral.read(namespace, name))

    async def _replace_ephemeral(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.policy.check("update", resources.POD_EPHEMERAL, namespace, name)
        return _json(self.ephemeral.replace(namespace, name, await self._body(request)))

    async def _patch_ephemeral(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.policy.check("patch", resources.POD_EPHEMERAL, namespace, name)
        body = await self._body(request)
        return _json(self.ephemeral.patch(namespace, name, request.content_type, body))

    async def _port_forward(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.policy.check("create", resources.POD_PORTFORWARD, namespace, name)
        self.workloads.refresh()
        pod = self.store.require(resources.PODS, namespace, name)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise bad_request(
                "Upgrade request required (the emulated API server forwards ports over "
                "websockets only, not SPDY)"
            )
        ports = parse_ports(request.query.getall("ports", []))
        phase = pod["status"].get("phase")
        backing = self.node.backing(namespace, name)
        if phase != "Running" or backing is None:
            raise bad_request(
                f"unable to upgrade connection: pod is not running. Current status={phase}"
            )
        return await serve_port_forward(
            request, backing, ports, self.dialer, pod["metadata"]["uid"], self.forwards
        )

    # jobs --------------------------------------------------------------------------------

    async def _create_job(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        self.policy.check("create", resources.JOBS, namespace)
        body = await self._body(request)
        meta = body.get("metadata") if isinstance(body, dict) else None
        name = (meta or {}).get("name") or (meta or {}).get("generateName") or ""
        check_body(resources.JOBS, body, name)
        if body.get("kind") not in (None, "Job") or body.get("apiVersion") not in (
            None,
            "batch/v1",
        ):
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                "expected API version (batch/v1)"
            )
        body_namespace = body["metadata"].get("namespace")
        if body_namespace not in (None, namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        if causes := job_causes(body):
            raise invalid(resources.JOBS, name, causes)
        if self.store.get(resources.NAMESPACES, None, namespace) is None:
            raise not_found(resources.NAMESPACES, namespace)
        if _true(request.query.get("dryRun")) or request.query.get("dryRun") == "All":
            return _json(body, 201)
        return _json(self.jobs.create(namespace, body), 201)

    async def _delete_job(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.policy.check("delete", resources.JOBS, namespace, name)
        policy = request.query.get("propagationPolicy")
        body = await self._optional_body(request)
        if isinstance(body, dict) and body.get("propagationPolicy"):
            policy = body["propagationPolicy"]
        if isinstance(body, dict) and body.get("orphanDependents") is False and policy is None:
            policy = "Background"
        return _json(await self.jobs.delete(namespace, name, policy))

    # authorization -----------------------------------------------------------------------

    async def _access_review(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        check_body(resources.ACCESS_REVIEWS, body, "")
        attributes = body["spec"].get("resourceAttributes") or {}
        plural = attributes.get("resource", "")
        if attributes.get("subresource"):
            plural = f"{plural}/{attributes['subresource']}"
        resource = resources.find(attributes.get("group", ""), plural) or Resource(
            attributes.get("group", ""), "v1", plural, "", True, ()
        )
        allowed = self.policy.allows(
            attributes.get("verb", ""), resource, attributes.get("namespace")
        )
        body["status"] = {"allowed": allowed}
        if not allowed:
            body["status"]["reason"] = (
                f'User "{self.policy.user}" cannot {attributes.get("verb")} resource "{plural}"'
            )
        body.setdefault("metadata", {})
        body["kind"], body["apiVersion"] = "SelfSubjectAccessReview", "authorization.k8s.io/v1"
        return _json(body, 201)

    # bodies --------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError as err:
            raise bad_request(f"couldn't get version/kind; json parse error: {err}") from None

    async def _optional_body(self, request: web.Request) -> Any:
        if not request.can_read_body:
            return None
        raw = await request.read()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as err:
            raise bad_request(f"couldn't get version/kind; json parse error: {err}") from None


def _read_log(path: Path | None, tail: int | None) -> bytes:
    if path is None:
        return b""
    try:
        data = path.read_bytes()
    except OSError:
        return b""
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail > 0 else b""
    return data


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for the API server (port 0: any free port)."""
    sock = socket.create_server((host, port), reuse_port=False, backlog=128)
    os.set_inheritable(sock.fileno(), False)
    return sock
