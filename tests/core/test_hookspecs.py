"""The hook specs: each is documented, tested, and behaves as its documentation says.

The first part checks every spec in ``mirrord_core.hookspecs`` (found both by its pluggy
marker and through a plugin manager): it has a docstring, a ``### <name>`` section in
``docs/plugins.md`` and a ``test_hook_<name>`` test somewhere under ``tests/``. The second
part is those tests: small plugin objects registered into a plugin manager made by
``load_plugins``, called the way the core calls them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pluggy
import pytest

from mirrord_core import hookspecs
from mirrord_core.agent.handlers import AgentHandlers, merge_handlers
from mirrord_core.config import ConfigLayout, SectionSpec, resolve, setting
from mirrord_core.config.plugin_catalogue import FIRST_PARTY_SECTIONS
from mirrord_core.handler_protocols import SyscallHandler
from mirrord_core.hookspecs import hookimpl
from mirrord_core.plugin_manager import PluginError, apply_env_filters, load_plugins
from mirrord_core.protocol import Message
from mirrord_core.target_model import AgentEndpoint, ResolvedTarget

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGINS_MD = REPO_ROOT / "docs" / "plugins.md"
TESTS = REPO_ROOT / "tests"
SPEC_MARKER = f"{hookspecs.PROJECT_NAME}_spec"

#: The hooks DESIGN §3 asks for.
DESIGN_HOOKS = {
    "register_config_sections",
    "resolve_target",
    "spawn_agent",
    "filter_env",
    "hook_fs",
    "handle_outgoing",
    "handle_incoming",
    "register_agent_handlers",
}


def _marked_specs() -> dict[str, Callable[..., Any]]:
    """The functions of ``mirrord_core.hookspecs`` that carry the hook-spec marker."""
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if inspect.isfunction(value) and hasattr(value, SPEC_MARKER)
    }


def _spec_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def _registered_specs() -> dict[str, pluggy.HookCaller]:
    return {
        name: caller
        for name, caller in vars(_spec_manager().hook).items()
        if getattr(caller, "spec", None) is not None
    }


SPEC_NAMES = sorted(_marked_specs())


def _hook_section(name: str) -> str:
    """The text of the ``### name`` section of docs/plugins.md (empty when missing)."""
    lines = PLUGINS_MD.read_text().splitlines()
    if f"### {name}" not in lines:
        return ""
    body: list[str] = []
    for line in lines[lines.index(f"### {name}") + 1 :]:
        if line.startswith("#"):
            break
        body.append(line)
    return "\n".join(body)


def _test_function_names() -> set[str]:
    """Names of every function defined in the test files under tests/ (at any depth)."""
    names: set[str] = set()
    for path in TESTS.rglob("test_*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names.update(
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        )
    return names


# -- every spec is documented and tested ---------------------------------------------------


def test_spec_enumerations_agree() -> None:
    """The marker scan and pluggy see the same specs, and they include DESIGN §3's hooks."""
    assert set(_marked_specs()) == set(_registered_specs())
    assert set(SPEC_NAMES) >= DESIGN_HOOKS


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_hook_spec_has_docstring(name: str) -> None:
    doc = inspect.getdoc(_marked_specs()[name]) or ""
    assert len(doc.split()) >= 10, f"{name}: the hook spec needs a docstring"
    assert "Receives" in doc and "Returns" in doc, f"{name}: say what it receives and returns"


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_hook_spec_is_documented_in_plugins_md(name: str) -> None:
    section = _hook_section(name)
    assert section, f"docs/plugins.md has no '### {name}' section"
    caller = _registered_specs()[name]
    assert caller.spec is not None
    for argument in caller.spec.argnames:
        assert f"`{argument}`" in section or f"{argument}:" in section, (
            f"docs/plugins.md '### {name}' does not describe the argument {argument!r}"
        )
    kind = "firstresult" if caller.spec.opts.get("firstresult") else ("Collected", "Chained")
    assert any(word in section for word in ((kind,) if isinstance(kind, str) else kind)), (
        f"docs/plugins.md '### {name}' does not say how results are combined"
    )


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_hook_spec_has_a_test(name: str) -> None:
    assert f"test_hook_{name}" in _test_function_names(), (
        f"no test_hook_{name} test function under tests/"
    )


def test_documented_hooks_exist() -> None:
    """Every hook section of the reference in docs/plugins.md names a real hook spec."""
    text = PLUGINS_MD.read_text()
    reference = text[text.index("## Hook reference") :]
    reference = reference[: reference.index("\n## ", 1)]
    documented = re.findall(r"^### (\w+)$", reference, flags=re.MULTILINE)
    assert sorted(documented) == SPEC_NAMES


# -- helpers for the behaviour tests -------------------------------------------------------


def _manager() -> pluggy.PluginManager:
    """A plugin manager with the hook specs and no plugins, made by ``load_plugins``."""
    return load_plugins(entry_points=[], environ={}).manager


@attrs.frozen
class Handler:
    """A syscall handler as feature hooks return them."""

    syscalls: frozenset[str]
    owner: str

    def handle(self, notification: Any) -> Any:
        return (self.owner, notification)


@pytest.fixture
def config(resolve_config: Callable[..., Any]) -> Any:
    return resolve_config(
        'target = "pid/4242"\n[feature]\nfs = "write"\n[feature.network]\nincoming = "steal"\n'
    ).config


@pytest.fixture
def plugin_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` for plugin modules written by a test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("hookspec_test_plugin"):
            del sys.modules[name]


def _entry_point(name: str, module: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=module, group="mirrord")


SECTION_MODULE = '''
import attrs
from mirrord_core.config import setting
from mirrord_core.hookspecs import hookimpl


@attrs.frozen(kw_only=True)
class {cls}:
    """A test section."""

    level: str = setting(default="3", doc="A level.")


@hookimpl
def register_config_sections():
    return {{"{path}": {cls}}}
'''


# -- register_config_sections --------------------------------------------------------------


def test_hook_register_config_sections() -> None:
    """The installed first-party plugins return their sections; the layout is built from them."""
    loaded = load_plugins(environ={})
    results = loaded.manager.hook.register_config_sections()
    assert all(isinstance(result, Mapping) for result in results)
    merged = {path: cls for result in results for path, cls in result.items()}
    by_distribution = {plugin.distribution: plugin for plugin in loaded.plugins}
    for path, distribution in FIRST_PARTY_SECTIONS.items():
        assert distribution in by_distribution, f"{distribution} is not installed"
        plugin = by_distribution[distribution]
        assert path in plugin.sections
        assert "register_config_sections" in plugin.hooks
        assert attrs.has(merged[path])
        assert loaded.layout.section_owner(path) == plugin.name
        assert loaded.layout.class_at(path) is merged[path]
    # Each plugin's PluginInfo lists exactly what its implementation returned.
    for plugin in loaded.plugins:
        impl = getattr(loaded.manager.get_plugin(plugin.name), "register_config_sections", None)
        assert plugin.sections == tuple(sorted((impl() or {}) if impl else {}))


def test_hook_register_config_sections_is_collected() -> None:
    """Every plugin's mapping is returned; a plugin returning None contributes nothing."""

    @attrs.frozen(kw_only=True)
    class Alpha:
        """Alpha."""

        on: bool = setting(default=True, doc="Alpha switch.")

    @attrs.frozen(kw_only=True)
    class Beta:
        """Beta."""

        name: str = setting(default="b", doc="Beta name.")

    class AlphaPlugin:
        @hookimpl
        def register_config_sections(self) -> Mapping[str, type]:
            return {"feature.alpha": Alpha}

    class BetaPlugin:
        @hookimpl
        def register_config_sections(self) -> Mapping[str, type]:
            return {"beta": Beta}

    class NothingPlugin:
        @hookimpl
        def register_config_sections(self) -> None:
            return None

    manager = _manager()
    for name, plugin in (("alpha", AlphaPlugin()), ("beta", BetaPlugin()), ("x", NothingPlugin())):
        manager.register(plugin, name=name)
    results = manager.hook.register_config_sections()
    assert sorted(results, key=lambda r: sorted(r)) == [{"beta": Beta}, {"feature.alpha": Alpha}]

    # The sections become config keys with their defaults, file values and errors.
    layout = ConfigLayout(
        {
            "feature.alpha": SectionSpec("feature.alpha", Alpha, "alpha"),
            "beta": SectionSpec("beta", Beta, "beta"),
        }
    )
    resolved = resolve(layout, environ={})
    assert resolved.config.feature.alpha.on is True
    assert resolved.to_dict()["beta"] == {"name": "b"}


def test_hook_register_config_sections_from_entry_points(plugin_modules: Path) -> None:
    """A section registered by an entry-point plugin is in the layout; two claims conflict."""
    for index, path in ((1, "feature.gamma"), (2, "feature.gamma"), (3, "delta")):
        source = SECTION_MODULE.format(cls=f"Section{index}", path=path)
        (plugin_modules / f"hookspec_test_plugin_{index}.py").write_text(source)

    loaded = load_plugins(
        entry_points=[
            _entry_point("gamma", "hookspec_test_plugin_1"),
            _entry_point("delta", "hookspec_test_plugin_3"),
        ],
        environ={},
    )
    assert {p.name: p.sections for p in loaded.plugins} == {
        "gamma": ("feature.gamma",),
        "delta": ("delta",),
    }
    assert loaded.layout.section_owner("feature.gamma") == "gamma"
    assert loaded.layout.field_at("delta.level") is not None

    with pytest.raises(PluginError, match=r"feature\.gamma") as raised:
        load_plugins(
            entry_points=[
                _entry_point("gamma", "hookspec_test_plugin_1"),
                _entry_point("gamma2", "hookspec_test_plugin_2"),
            ],
            environ={},
        )
    assert "'gamma'" in str(raised.value) and "'gamma2'" in str(raised.value)


# -- register_agent_handlers ---------------------------------------------------------------


def test_hook_register_agent_handlers() -> None:
    """Collected: the agent merges every plugin's request and stream handler tables."""

    @attrs.frozen(kw_only=True)
    class OpenFile(Message):
        TAG = "test.hookspec.open"
        path: str

    async def open_file(connection: Any, request: Any) -> Any:
        return ("open", request)

    async def connect(stream: Any, payload: Any) -> None:
        return None

    class FilePlugin:
        @hookimpl
        def register_agent_handlers(self) -> AgentHandlers:
            return AgentHandlers(requests={OpenFile: open_file})

    class NetPlugin:
        @hookimpl
        def register_agent_handlers(self) -> AgentHandlers:
            return AgentHandlers(streams={"test.connect": connect})

    class LocalOnlyPlugin:
        @hookimpl
        def filter_env(self, remote_env: Mapping[str, str]) -> None:
            return None

    manager = _manager()
    manager.register(FilePlugin(), name="files")
    manager.register(LocalOnlyPlugin(), name="local-only")
    manager.register(NetPlugin(), name="net")
    results = manager.hook.register_agent_handlers()
    assert len(results) == 2
    merged = merge_handlers([("files", results[1]), ("net", results[0])])
    assert merged.requests == {OpenFile: open_file}
    assert merged.streams == {"test.connect": connect}
    assert not manager.hook.register_agent_handlers.spec.opts.get("firstresult")
    with pytest.raises(ValueError, match=r"'files' and 'again' both handle test\.hookspec\.open"):
        merge_handlers([("files", results[1]), ("again", results[1])])

    # The installed plugins answer with AgentHandlers too (or not at all).
    installed = load_plugins(environ={}).manager.hook.register_agent_handlers()
    assert all(isinstance(result, AgentHandlers) for result in installed)


# -- resolve_target ------------------------------------------------------------------------


class PidTargets:
    """Resolves ``pid/`` targets only."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def resolve_target(self, config: Any) -> ResolvedTarget | None:
        self.calls += 1
        path = config.target.path
        if path is None or path.kind != "pid":
            return None
        return ResolvedTarget(kind="pid", name=path.name, pid=int(path.name))


class KubernetesTargets:
    """Resolves ``pod/`` and ``deployment/`` targets only."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def resolve_target(self, config: Any) -> ResolvedTarget | None:
        self.calls += 1
        path = config.target.path
        if path is None or path.kind not in ("pod", "deployment"):
            return None
        return ResolvedTarget(
            kind=path.kind, name=path.name, namespace=config.target.namespace or "default"
        )


def test_hook_resolve_target(config: Any, resolve_config: Callable[..., Any]) -> None:
    """firstresult: None means "not mine"; the first real answer is used."""
    assert _spec_manager().hook.resolve_target.spec.opts["firstresult"] is True
    pids, kube = PidTargets(), KubernetesTargets()
    manager = _manager()
    manager.register(pids, name="pids")
    manager.register(kube, name="kube")  # registered last: asked first

    target = manager.hook.resolve_target(config=config)
    assert target == ResolvedTarget(kind="pid", name="4242", pid=4242)
    assert kube.calls == 1 and pids.calls == 1  # kube said "not mine", pids answered

    pod_config = resolve_config('[target]\npath = "pod/web"\nnamespace = "shop"\n').config
    target = manager.hook.resolve_target(config=pod_config)
    assert target == ResolvedTarget(kind="pod", name="web", namespace="shop")
    assert pids.calls == 1  # not asked once kube answered

    no_target = resolve_config(None).config
    assert manager.hook.resolve_target(config=no_target) is None
    assert _manager().hook.resolve_target(config=config) is None  # no plugins at all


def test_hook_resolve_target_first_answer_wins(config: Any) -> None:
    class Claimer:
        def __init__(self, name: str) -> None:
            self.name, self.calls = name, 0

        @hookimpl
        def resolve_target(self, config: Any) -> ResolvedTarget:
            self.calls += 1
            return ResolvedTarget(kind="pid", name=self.name, pid=1)

    early, late = Claimer("early"), Claimer("late")
    manager = _manager()
    manager.register(early, name="early")
    manager.register(late, name="late")
    assert manager.hook.resolve_target(config=config).name == "late"
    assert early.calls == 0

    class Preferred(Claimer):
        @hookimpl(tryfirst=True)
        def resolve_target(self, config: Any) -> ResolvedTarget:
            self.calls += 1
            return ResolvedTarget(kind="pid", name=self.name, pid=2)

    preferred = Preferred("preferred")
    manager.register(preferred, name="preferred")
    manager.register(Claimer("latest"), name="latest")
    assert manager.hook.resolve_target(config=config).name == "preferred"


# -- spawn_agent ---------------------------------------------------------------------------


class LocalAgents:
    """Spawns agents for ``pid`` targets; records what it started and released."""

    def __init__(self) -> None:
        self.spawned: list[ResolvedTarget] = []
        self.released: list[int] = []

    @hookimpl
    def spawn_agent(self, config: Any, target: ResolvedTarget | None) -> AgentEndpoint | None:
        if target is None or target.kind != "pid":
            return None
        self.spawned.append(target)
        pid = target.pid
        assert pid is not None
        return AgentEndpoint(
            host="127.0.0.1",
            port=40000 + len(self.spawned),
            token=f"token-{pid}",
            release=lambda: self.released.append(pid),
        )


class ExistingAgent:
    """Answers only when ``connect_tcp`` names an agent that is already running."""

    @hookimpl
    def spawn_agent(self, config: Any, target: ResolvedTarget | None) -> AgentEndpoint | None:
        if target is not None or config.connect_tcp is None:
            return None
        host, _, port = config.connect_tcp.rpartition(":")
        return AgentEndpoint(host=host, port=int(port), token="")


def test_hook_spawn_agent(config: Any, resolve_config: Callable[..., Any]) -> None:
    """firstresult: the endpoint of the plugin that can spawn for the target; it owns release."""
    assert _spec_manager().hook.spawn_agent.spec.opts["firstresult"] is True
    local = LocalAgents()
    manager = _manager()
    manager.register(local, name="local")
    manager.register(ExistingAgent(), name="existing")

    target = ResolvedTarget(kind="pid", name="4242", pid=4242)
    endpoint = manager.hook.spawn_agent(config=config, target=target)
    assert (endpoint.host, endpoint.port, endpoint.token) == ("127.0.0.1", 40001, "token-4242")
    assert local.spawned == [target] and local.released == []
    endpoint.release()
    assert local.released == [4242]

    # connect_tcp: there is no target; only the plugin that handles that case answers.
    reuse = resolve_config('connect_tcp = "10.0.0.7:7777"\n').config
    endpoint = manager.hook.spawn_agent(config=reuse, target=None)
    assert (endpoint.host, endpoint.port) == ("10.0.0.7", 7777)
    assert len(local.spawned) == 1

    # A target kind nobody can spawn for: None, which mirrord run reports as an error.
    pod = ResolvedTarget(kind="pod", name="web", namespace="default")
    assert manager.hook.spawn_agent(config=config, target=pod) is None


# -- filter_env ----------------------------------------------------------------------------


class EnvStep:
    """A filter_env implementation that records the order and input of its calls."""

    def __init__(self, name: str, log: list[tuple[str, dict[str, str]]], change: Any) -> None:
        self.name, self.log, self.change = name, log, change

    @hookimpl
    def filter_env(self, config: Any, remote_env: Mapping[str, str]) -> Mapping[str, str] | None:
        self.log.append((self.name, dict(remote_env)))
        return self.change(remote_env)


def test_hook_filter_env(config: Any) -> None:
    """Chained by apply_env_filters in registration order; None leaves the environment as is."""
    log: list[tuple[str, dict[str, str]]] = []
    drop_secret = EnvStep(
        "drop-secret", log, lambda env: {k: v for k, v in env.items() if k != "SECRET"}
    )
    unchanged = EnvStep("unchanged", log, lambda env: None)
    greet = EnvStep("greet", log, lambda env: {**env, "GREETING": f"hi {len(env)}"})
    manager = _manager()
    for step in (drop_secret, unchanged, greet):
        manager.register(step, name=step.name)

    remote = {"APP": "1", "SECRET": "s"}
    result = apply_env_filters(manager, config, remote)
    assert result == {"APP": "1", "GREETING": "hi 1"}
    assert [name for name, _ in log] == ["drop-secret", "unchanged", "greet"]
    assert log[0][1] == remote  # the first step gets the target's environment
    assert log[1][1] == log[2][1] == {"APP": "1"}  # later steps get the previous result
    assert remote == {"APP": "1", "SECRET": "s"}  # the input is not modified

    # Called directly, pluggy would not chain: each plugin sees the same input, and the
    # non-None results come back as a list. That is why the core uses apply_env_filters.
    assert not manager.hook.filter_env.spec.opts.get("firstresult")
    assert len(manager.hook.filter_env(config=config, remote_env=remote)) == 2

    assert apply_env_filters(_manager(), config, remote) == remote  # no plugins: unchanged


def test_hook_filter_env_tryfirst_and_trylast(config: Any) -> None:
    """tryfirst implementations run first and trylast ones last, whatever the load order."""
    log: list[tuple[str, dict[str, str]]] = []

    class First(EnvStep):
        @hookimpl(tryfirst=True)
        def filter_env(self, config: Any, remote_env: Mapping[str, str]) -> Any:
            self.log.append((self.name, dict(remote_env)))
            return self.change(remote_env)

    class Last(EnvStep):
        @hookimpl(trylast=True)
        def filter_env(self, config: Any, remote_env: Mapping[str, str]) -> Any:
            self.log.append((self.name, dict(remote_env)))
            return self.change(remote_env)

    def tag(letter: str) -> Callable[[Mapping[str, str]], dict[str, str]]:
        return lambda env: {**env, "ORDER": env.get("ORDER", "") + letter}

    manager = _manager()
    manager.register(Last("last", log, tag("L")), name="last")
    manager.register(First("first", log, tag("F")), name="first")
    manager.register(EnvStep("middle", log, tag("M")), name="middle")
    manager.register(EnvStep("middle2", log, tag("N")), name="middle2")
    manager.register(First("first2", log, tag("G")), name="first2")
    assert apply_env_filters(manager, config, {})["ORDER"] == "FGMNL"
    assert [name for name, _ in log] == ["first", "first2", "middle", "middle2", "last"]


def test_hook_filter_env_of_the_env_plugin(resolve_config: Callable[..., Any]) -> None:
    """The real mirrord-env implementation applies include, exclude and override."""
    env_entry_points = [
        ep for ep in importlib.metadata.entry_points(group="mirrord") if ep.name == "env"
    ]
    assert env_entry_points, "mirrord-env is not installed"
    loaded = load_plugins(entry_points=env_entry_points, environ={})
    resolved = resolve(
        loaded.layout,
        environ={
            "MIRRORD_OVERRIDE_ENV_VARS_INCLUDE": "APP_*;JAVA_HOME",
            "MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE": "APP_SECRET",
        },
    )
    remote = {
        "APP_NAME": "shop",
        "APP_SECRET": "s3cr3t",
        "JAVA_HOME": "/opt/java",
        "HOME": "/root",
        "OTHER": "x",
    }
    assert apply_env_filters(loaded.manager, resolved.config, remote) == {
        "APP_NAME": "shop",
        "JAVA_HOME": "/opt/java",
    }


# -- hook_fs, handle_outgoing, handle_incoming ---------------------------------------------


def _check_handler_hook(
    name: str, config: Any, off_config: Any, wanted: Callable[[Any], list[Handler] | None]
) -> None:
    """A collected per-session hook: every plugin's handler list, None when the feature is off.

    Two plugins implement the hook (one decides from the config with ``wanted``), one does
    not; each implementation gets the same config and session objects once.
    """
    calls: list[tuple[str, Any, Any]] = []

    def plugin_class(owner: str, produce: Callable[[Any], list[Handler] | None]) -> type:
        def impl(self: Any, config: Any, session: Any) -> list[Handler] | None:
            calls.append((owner, config, session))
            return produce(config)

        impl.__name__ = name
        return type(f"{owner}Plugin", (), {name: hookimpl(impl)})

    extra = [Handler(frozenset({"getpeername"}), "extra")]
    manager = _manager()
    manager.register(plugin_class("feature", wanted)(), name="feature")
    manager.register(plugin_class("extra", lambda cfg: extra)(), name="extra")
    manager.register(object(), name="bystander")
    caller = getattr(manager.hook, name)
    assert not caller.spec.opts.get("firstresult")

    session = object()
    results = caller(config=config, session=session)
    assert len(results) == 2 and extra in results
    handlers = [handler for result in results for handler in result]
    assert all(isinstance(handler, SyscallHandler) for handler in handlers)
    assert {owner for owner, _, _ in calls} == {"feature", "extra"} and len(calls) == 2
    assert all(cfg is config and sess is session for _, cfg, sess in calls)
    # The engine calls the handler objects directly, never the hook, for each syscall.
    assert handlers[0].handle("notification")[1] == "notification"

    # Feature off: that plugin returns None, which pluggy leaves out of the list.
    assert caller(config=off_config, session=session) == [extra]


def test_hook_hook_fs(config: Any, resolve_config: Callable[..., Any]) -> None:
    def fs_handlers(cfg: Any) -> list[Handler] | None:
        if cfg.feature.fs.mode.value == "local":
            return None
        syscalls = {"openat", "newfstatat"}
        if cfg.feature.fs.mode.value == "write":
            syscalls |= {"unlinkat", "mkdirat"}
        return [Handler(frozenset(syscalls), "fs")]

    off = resolve_config('[feature]\nfs = "local"\n').config
    _check_handler_hook("hook_fs", config, off, fs_handlers)
    assert "unlinkat" in fs_handlers(config)[0].syscalls  # config has fs = "write"


def test_hook_handle_outgoing(config: Any, resolve_config: Callable[..., Any]) -> None:
    def outgoing_handlers(cfg: Any) -> list[Handler] | None:
        network = cfg.feature.network
        if not (network.outgoing.tcp or network.outgoing.udp or network.dns):
            return None
        return [Handler(frozenset({"connect", "sendto", "sendmsg"}), "outgoing")]

    off = resolve_config("[feature.network]\noutgoing = false\ndns = false\n").config
    _check_handler_hook("handle_outgoing", config, off, outgoing_handlers)


def test_hook_handle_incoming(config: Any, resolve_config: Callable[..., Any]) -> None:
    def incoming_handlers(cfg: Any) -> list[Handler] | None:
        if cfg.feature.network.incoming.mode.value == "off":
            return None
        return [Handler(frozenset({"bind", "listen", "accept", "accept4"}), "incoming")]

    off = resolve_config('[feature.network]\nincoming = "off"\n').config
    _check_handler_hook("handle_incoming", config, off, incoming_handlers)


# -- what implementations may look like ----------------------------------------------------


def test_implementations_may_take_fewer_arguments(config: Any) -> None:
    class OnlyEnv:
        @hookimpl
        def filter_env(self, remote_env: Mapping[str, str]) -> Mapping[str, str]:
            return {**remote_env, "SEEN": "1"}

    manager = _manager()
    manager.register(OnlyEnv(), name="only-env")
    assert apply_env_filters(manager, config, {"A": "a"}) == {"A": "a", "SEEN": "1"}


def test_implementation_with_an_unknown_argument_is_rejected() -> None:
    class Wrong:
        @hookimpl
        def resolve_target(self, config: Any, cluster: Any) -> None:
            return None

    with pytest.raises(pluggy.PluginValidationError):
        _manager().register(Wrong(), name="wrong")


# -- register_cli_commands -------------------------------------------------------------------


def test_hook_register_cli_commands() -> None:
    """Collected: every plugin adds its sub-commands to the one command line."""
    import argparse

    class GreetPlugin:
        @hookimpl
        def register_cli_commands(self, commands: Any) -> None:
            parser = commands.add_parser("greet")
            parser.add_argument("name")
            parser.set_defaults(handler=lambda args: f"hello {args.name}")

    class CountPlugin:
        @hookimpl
        def register_cli_commands(self, commands: Any) -> None:
            commands.add_parser("count").set_defaults(handler=lambda args: 3)

    manager = _manager()
    manager.register(GreetPlugin(), name="greet")
    manager.register(CountPlugin(), name="count")
    parser = argparse.ArgumentParser(prog="mirrord")
    commands = parser.add_subparsers(dest="command")
    assert manager.hook.register_cli_commands(commands=commands) == []
    greet = parser.parse_args(["greet", "ada"])
    assert greet.handler(greet) == "hello ada"
    count = parser.parse_args(["count"])
    assert count.handler(count) == 3

    # The first-party plugins contribute env, fs and net.
    installed = load_plugins(environ={}).manager
    parser = argparse.ArgumentParser(prog="mirrord")
    commands = parser.add_subparsers(dest="command")
    installed.hook.register_cli_commands(commands=commands)
    assert {"env", "fs", "net"} <= set(commands.choices)


# -- fetch_remote_env ------------------------------------------------------------------------


def test_hook_fetch_remote_env() -> None:
    """First result wins: one plugin provides the target's environment as an awaitable."""
    import asyncio

    async def remote() -> dict[str, str]:
        return {"GREETING": "hi"}

    class NotMine:
        @hookimpl
        def fetch_remote_env(self, config: Any, session: Any) -> None:
            return None

    class Provider:
        @hookimpl
        def fetch_remote_env(self, config: Any, session: Any) -> Any:
            return remote()

    manager = _manager()
    assert manager.hook.fetch_remote_env(config=None, session=None) is None
    manager.register(Provider(), name="provider")
    manager.register(NotMine(), name="not-mine")
    pending = manager.hook.fetch_remote_env(config=None, session=None)
    assert asyncio.run(pending) == {"GREETING": "hi"}
    assert manager.hook.fetch_remote_env.spec.opts.get("firstresult")
