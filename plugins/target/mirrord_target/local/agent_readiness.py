"""Waiting for an agent container to be ready, and saying precisely why it is not.

The agent is ready when its container runs and it has printed its ready line (one JSON
object ``{"ready": {...}}`` on stdout, hence in the container's log). Until then the
container's state explains the wait: an image that cannot be pulled, a pod the scheduler
cannot place, an agent that exited. Each becomes its own one-line error, not a timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mirrord_core.user_errors import UserError
from mirrord_target.local.agent_spec import AgentSpec
from mirrord_target.local.kube_client import KubeApi
from mirrord_target.local.progress import Progress

# Seconds between two looks at the agent's pod; a start takes seconds, not milliseconds.
POLL_INTERVAL = 0.25
IMAGE_PULL_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
# Waiting reasons that will not resolve by themselves.
CONTAINER_FAILURES = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
)


class AgentStartError(UserError):
    """The agent did not become ready; the message says why and what to do."""


class AgentImageError(AgentStartError):
    """The agent's image cannot be pulled."""


class AgentPendingError(AgentStartError):
    """The agent's pod stayed pending (unschedulable, or still pulling) past the timeout."""


def _short(text: str | None, limit: int = 240) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def image_error(image: str, reason: str, message: str | None) -> AgentImageError:
    detail = f": {_short(message)}" if message else ""
    return AgentImageError(
        f"the agent image {image} cannot be pulled ({reason}{detail}); set agent.image to "
        "an image the cluster can pull (docs/kubernetes.md says how to build and push it) "
        "or adjust agent.image_pull_policy"
    )


def exited_error(
    where: str, exit_code: int | None, reason: str | None, detail: str
) -> AgentStartError:
    """The agent ended before its ready line; ``detail`` is its last words (log or
    termination message)."""
    how = f"exit code {exit_code}" if exit_code is not None else "no exit code"
    return AgentStartError(
        f"the agent in {where} exited before it was ready ({how}, "
        f"{reason or 'no reason given'})" + (f": {_short(detail)}" if detail else "")
    )


def check_container(
    status: client.V1ContainerStatus | None,
    image: str,
    where: str,
    last_words: Callable[[], str] = lambda: "",
) -> None:
    """Raise when the agent container's state says it will never become ready.

    ``last_words`` gives the agent's last log line, asked for only when it exited.
    """
    state = status.state if status is not None else None
    if state is None:
        return
    waiting, terminated = state.waiting, state.terminated
    if waiting is not None and waiting.reason in IMAGE_PULL_FAILURES:
        raise image_error(image, waiting.reason, waiting.message)
    if waiting is not None and waiting.reason in CONTAINER_FAILURES:
        raise AgentStartError(
            f"the agent container of {where} cannot start ({waiting.reason}: "
            f"{_short(waiting.message)}); check agent.image"
        )
    if terminated is not None:
        raise exited_error(
            where, terminated.exit_code, terminated.reason, terminated.message or last_words()
        )


def ready_line(log: str) -> dict[str, object] | None:
    """The agent's ready announcement in its log, if it printed it."""
    for line in log.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and isinstance(document.get("ready"), dict):
            return document["ready"]
    return None


def read_log(api: KubeApi, pod: str, namespace: str, container: str) -> str:
    """The container's log so far ("" while it has none to give)."""
    try:
        log = api.call(api.core.read_namespaced_pod_log, pod, namespace, container=container)
    except ApiException as err:
        # 400 while the container is still being created: nothing to read yet.
        if err.status in (400, 404):
            return ""
        raise
    return log.decode(errors="replace") if isinstance(log, bytes) else str(log or "")


def scheduling_message(pod: client.V1Pod) -> str:
    """Why a pending pod is pending: the scheduler's condition, else a waiting reason."""
    for condition in (pod.status.conditions if pod.status else None) or []:
        if condition.status != "True" and condition.message:
            return _short(condition.message)
    statuses = [
        *((pod.status.container_statuses if pod.status else None) or []),
        *((pod.status.ephemeral_container_statuses if pod.status else None) or []),
    ]
    for status in statuses:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason:
            return _short(
                f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
            )
    return ""


def describe_wait(status: client.V1ContainerStatus | None, phase: str | None) -> str:
    """A progress step for the agent container's current state."""
    waiting = status.state.waiting if status is not None and status.state else None
    if waiting is not None and waiting.reason == "ContainerCreating":
        return "pulling the image and creating the agent container"
    if waiting is not None and waiting.reason:
        return f"agent container {waiting.reason}"
    if is_running(status):
        return "waiting for the agent to listen"
    return (
        "waiting for the agent pod to be scheduled"
        if phase == "Pending"
        else "waiting for the agent pod"
    )


def is_running(status: client.V1ContainerStatus | None) -> bool:
    return status is not None and status.state is not None and status.state.running is not None


class AgentWatch:
    """Polls the agent's container until the agent is ready, or says why it is not.

    Subclasses say where the agent's pod is (:meth:`find_pod`) and which of its container
    statuses is the agent's (:meth:`agent_status`).
    """

    def __init__(
        self, api: KubeApi, spec: AgentSpec, namespace: str, container: str, progress: Progress
    ) -> None:
        self.api, self.spec, self.namespace, self.container = api, spec, namespace, container
        self.progress = progress
        self.pod: client.V1Pod | None = None

    def find_pod(self) -> client.V1Pod | None:
        """The agent's pod, ``None`` while there is none."""
        raise NotImplementedError

    def agent_status(self, pod: client.V1Pod) -> client.V1ContainerStatus | None:
        """The agent container's status in ``pod`` (a regular container by default)."""
        statuses = (pod.status.container_statuses if pod.status else None) or []
        return next((s for s in statuses if s.name == self.container), None)

    def where(self) -> str:
        """The agent's place, for messages."""
        return f"pod {self.pod.metadata.name if self.pod else '?'}"

    def no_pod_error(self) -> AgentStartError:
        return AgentPendingError(f"the agent's pod did not appear within {self._waited()}")

    def _waited(self) -> str:
        return f"{self.spec.startup_timeout:g} s"

    def _logs_hint(self) -> str:
        name = self.pod.metadata.name if self.pod else "?"
        return f"kubectl logs -n {self.namespace} {name} -c {self.container}"

    def check(self) -> bool:
        """One look: ``True`` once the agent announced it is ready."""
        self.pod = pod = self.find_pod()
        if pod is None:
            self.progress.step("waiting for the agent's pod")
            return False
        status = self.agent_status(pod)
        check_container(status, self.spec.image, self.where(), self._last_log_line)
        phase = pod.status.phase if pod.status else None
        if phase in ("Failed", "Succeeded"):
            raise exited_error(self.where(), None, f"pod {phase}", self._last_log_line())
        self.progress.step(describe_wait(status, phase))
        if not is_running(status):
            return False
        log = read_log(self.api, pod.metadata.name, self.namespace, self.container)
        return ready_line(log) is not None

    def timeout_error(self) -> AgentStartError:
        if self.pod is None:
            return self.no_pod_error()
        if not is_running(self.agent_status(self.pod)):
            why = scheduling_message(self.pod)
            return AgentPendingError(
                f"the agent ({self.where()}) is stuck pending after {self._waited()}"
                + (f": {why}" if why else "")
                + f"; see kubectl describe pod -n {self.namespace} {self.pod.metadata.name}, "
                "or raise agent.startup_timeout"
            )
        detail = self._last_log_line()
        return AgentStartError(
            f"the agent in {self.where()} did not report ready within {self._waited()}"
            + (f" (last log line: {detail})" if detail else "")
            + f"; see {self._logs_hint()}, or raise agent.startup_timeout"
        )

    def _last_log_line(self) -> str:
        assert self.pod is not None
        try:
            log = read_log(self.api, self.pod.metadata.name, self.namespace, self.container)
        except (ApiException, UserError):
            return ""
        lines = [line for line in log.splitlines() if line.strip()]
        return _short(lines[-1]) if lines else ""

    def wait(self) -> client.V1Pod:
        """Poll until ready; raise the reason after ``agent.startup_timeout``. Returns the
        agent's pod."""
        deadline = time.monotonic() + self.spec.startup_timeout
        while not self.check():
            if time.monotonic() >= deadline:
                raise self.timeout_error()
            time.sleep(POLL_INTERVAL)
        assert self.pod is not None
        return self.pod
