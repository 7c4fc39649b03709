"""The target's environment, read by a real agent from a sandbox pod's /proc/PID/environ."""

from __future__ import annotations

from typing import Any

from mirrord_core.sandbox import PodSpec, Sandbox
from mirrord_core.session import Session
from mirrord_env.local.remote_env import fetch_remote_env

ODD_ENV = {
    "PATH": "/bin",
    "EMPTY": "",
    "WITH_EQUALS": "a=b=c",
    "NEWLINES": "line one\nline two",
    "UNICODE": "grüße ✓",
    # Not UTF-8 in the pod (os.fsencode turns the escape back into the byte 0xff).
    "NOT_UTF8": "caf\udcff",
}
EXTRA_PODS = [PodSpec("odd", env=ODD_ENV)]


def fetch_env(run: Any, open_session: Any, endpoint: Any) -> dict[str, str]:
    async def go() -> dict[str, str]:
        async with open_session(endpoint) as session:
            return await fetch_remote_env(session)

    result: dict[str, str] = run(go())
    return result


def test_env_is_exactly_the_pods_environment(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    web = sandbox.pod("web")
    env = fetch_env(run, open_session, agent_for(web.pid))
    assert env == dict(web.env)
    assert env["GREETING"] == "hello from the web pod"
    assert env["DATABASE_URL"] == "postgres://db.default.svc.cluster.local:5432/shop"
    assert env["API_URL"] == "http://api.default.svc.cluster.local:8080/"
    # Nothing of the test process (or the agent's token) leaks in.
    assert "MIRRORD_AGENT_TOKEN" not in env
    assert "PYTEST_CURRENT_TEST" not in env


def test_each_agent_serves_its_own_targets_environment(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    api = sandbox.pod("api")
    env = fetch_env(run, open_session, agent_for(api.pid))
    assert env == {"PATH": "/bin", "HOSTNAME": "api", "ROLE": "api"}


def test_unusual_values_arrive_intact_and_non_utf8_is_replaced_not_fatal(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    env = fetch_env(run, open_session, agent_for(sandbox.pod("odd").pid))
    expected = dict(ODD_ENV, NOT_UTF8="caf\ufffd")
    assert env == expected


def test_two_sessions_and_repeated_requests_see_the_same_environment(
    sandbox: Sandbox, agent_for: Any, open_session: Any, run: Any
) -> None:
    web = sandbox.pod("web")
    endpoint = agent_for(web.pid)

    async def go() -> list[dict[str, str]]:
        async with open_session(endpoint, "first") as first, open_session(endpoint, "second") as s:
            second: Session = s
            return [
                await fetch_remote_env(first),
                await fetch_remote_env(second),
                await fetch_remote_env(first),
            ]

    results = run(go())
    assert results == [dict(web.env)] * 3
