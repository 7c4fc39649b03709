"""``EmulatedCluster``: the emulated Kubernetes API over a sandbox, for tests.

    with Sandbox.create(demo_pods()) as sandbox, EmulatedCluster(sandbox) as cluster:
        config.load_kube_config(config_file=str(cluster.kubeconfig_path))
        client.CoreV1Api().list_namespaced_pod("default")

The server runs on a background thread of this process with its own event loop; it
listens on 127.0.0.1 (any free port by default) and the kubeconfig it writes names it.
Leaving the ``with`` block (or ``stop()``) stops every process it started (agent Jobs,
ephemeral containers) and removes its cgroups and files; the sandbox is the caller's.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from mirrord_core.sandbox import Sandbox, SandboxError, list_sandboxes

from . import kubeconfig
from .access import DEFAULT_FORBIDDEN_NAMESPACES, DEFAULT_USER, AccessPolicy
from .api_server import KubeApiServer, bind
from .cgroups import remove_stale_groups

FALLBACK_AGENT_IMAGE = "ghcr.io/metalbear-co/mirrord:3.32.0"
_START_TIMEOUT = 30.0


def default_agent_image() -> str:
    """The image ``mirrord run`` uses when ``agent.image`` is unset (the target plugin's
    default), the one image every emulated node has."""
    try:
        from mirrord_target.agent_image import DEFAULT_AGENT_IMAGE
    except ImportError:
        return FALLBACK_AGENT_IMAGE
    return DEFAULT_AGENT_IMAGE


def default_images(sandbox: Sandbox) -> set[str]:
    """The agent image and the images the sandbox pods' containers name."""
    return {default_agent_image(), *(f"sandbox/{pod.name}:latest" for pod in sandbox.pods)}


class EmulatedCluster:
    """Serves ``sandbox`` as a Kubernetes API on a background thread.

    Knobs: ``forbidden_namespaces`` (every request there is 403), ``denied``
    (``"VERB RESOURCE"`` refused everywhere, e.g. ``"create pods/portforward"``),
    ``images`` (what the node can pull; default: the agent image and the sandbox pods'),
    ``pending_pods`` (extra Deployments whose pod cannot be scheduled). ``policy`` and
    ``images`` can also be changed while it runs.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workdir: Path | None = None,
        forbidden_namespaces: Iterable[str] = DEFAULT_FORBIDDEN_NAMESPACES,
        denied: Iterable[str] = (),
        images: Iterable[str] | None = None,
        pending_pods: Iterable[str] = (),
        user: str = DEFAULT_USER,
        token: str | None = None,
        cgroups: bool = True,
    ) -> None:
        self.sandbox = sandbox
        self.token = token or secrets.token_hex(24)
        self.policy = AccessPolicy(
            user=user, forbidden_namespaces=forbidden_namespaces, denied=denied
        )
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="mirrord-kube-")) if workdir is None else workdir
        )
        self._host, self._port = host, port
        self._images = set(default_images(sandbox) if images is None else images)
        self._pending = list(pending_pods)
        self._cgroups = cgroups
        self.server: KubeApiServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._problems: list[str] = []
        self.port = 0

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> EmulatedCluster:
        """Start serving; returns once the API answers (or raises why it cannot)."""
        remove_stale_groups(list_sandboxes())
        sock = bind(self._host, self._port)
        self.port = sock.getsockname()[1]
        try:
            self.server = KubeApiServer(
                self.sandbox,
                workdir=self.workdir,
                token=self.token,
                policy=self.policy,
                images=self._images,
                pending_pods=self._pending,
                cgroups=self._cgroups,
            )
        except BaseException:
            sock.close()
            self._remove_workdir()
            raise
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="kube-api-emulator", daemon=True
        )
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise SandboxError("the emulated Kubernetes API did not start")
        if self._error is not None:
            self.stop()
            raise self._error
        kubeconfig.write(self.kubeconfig_path, self.server_url, self.token, user=self.policy.user)
        return self

    def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        assert self.server is not None
        try:
            self._stop_event = asyncio.Event()
            loop.run_until_complete(self.server.start(sock))
        except BaseException as err:
            self._error = err
            self._problems = loop.run_until_complete(self.server.stop())
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_until_complete(self._stop_event.wait())
        finally:
            self._problems = loop.run_until_complete(self.server.stop())
            loop.close()

    def drop_port_forwards(self) -> int:
        """Break every port-forward websocket now (both ends aborted, no close frame), as a
        failing API server or network would; returns how many there were."""
        assert self._loop is not None and self.server is not None, "the cluster is not running"
        forwards = self.server.forwards

        async def drop() -> int:  # on the server's loop, which owns the websockets
            return forwards.drop_all()

        return asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout=10)

    def stop(self) -> None:
        """Stop serving and clean up; raises SandboxError if something was left behind."""
        if self._thread is not None:
            if (
                self._loop is not None
                and self._stop_event is not None
                and not self._loop.is_closed()
            ):
                self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join()
            self._thread = None
        self._remove_workdir()
        if self._problems:
            problems, self._problems = self._problems, []
            raise SandboxError("the emulated cluster left things behind: " + "; ".join(problems))

    def _remove_workdir(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # introspection -------------------------------------------------------------------------

    @property
    def server_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self._host}:{self.port}"

    @property
    def kubeconfig_path(self) -> Path:
        """The kubeconfig naming this server (context ``mirrord-sandbox``)."""
        return self.workdir / "kubeconfig"

    @property
    def images(self) -> set[str]:
        """The images the node can pull (add to it while running to make one pullable)."""
        return self.server.node.images if self.server is not None else self._images
