"""Settings: the four sources in order, and the one place defaults are written."""

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterchat.bus.redis import RedisBus
from clusterchat.node import password_hasher
from clusterchat.presence.redis import RedisPresence
from clusterchat.protocol import Limits
from clusterchat.service.context import Policy
from clusterchat.service.passwords import PasswordHasher
from clusterchat.settings import Settings
from clusterchat.store.sql import SqlStore
from clusterchat.transport.tcp import ConnectionLimits

#: The layers below the composition root: they take values, never choose them.
_COMPONENT_PACKAGES = ("protocol", "service", "transport", "store", "bus", "presence")
_SETTING_NAMES = frozenset(field.name for field in dataclasses.fields(Settings))
#: Alembic's scripts: run by Alembic inside a migration, not imported as modules.
_SCRIPTS = "clusterchat.store.migrations"


def _callables() -> Iterator[tuple[str, Callable[..., Any]]]:
    """Every function and method defined in the component packages, by qualified name."""
    for package in _COMPONENT_PACKAGES:
        root = importlib.import_module(f"clusterchat.{package}")
        for info in pkgutil.walk_packages(root.__path__, f"{root.__name__}."):
            if info.name.startswith(_SCRIPTS):
                continue
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if getattr(value, "__module__", None) != module.__name__:
                    continue
                if inspect.isfunction(value):
                    yield f"{module.__name__}.{value.__qualname__}", value
                elif inspect.isclass(value):
                    for member in vars(value).values():
                        if inspect.isfunction(member):
                            yield f"{module.__name__}.{member.__qualname__}", member


@pytest.mark.parametrize("component", [Limits, Policy, ConnectionLimits])
def test_component_parameters_have_no_default_of_their_own(component: type[Any]) -> None:
    """Limits, Policy and ConnectionLimits have no field defaults, and every field is a setting."""
    for field in dataclasses.fields(component):
        assert field.default is dataclasses.MISSING, f"{component.__name__}.{field.name}"
        assert field.default_factory is dataclasses.MISSING, f"{component.__name__}.{field.name}"
        assert field.name in _SETTING_NAMES, f"{component.__name__}.{field.name} is no setting"


def test_no_component_parameter_named_like_a_setting_has_a_default() -> None:
    """Below the node, a parameter named like a setting must be passed: no second default."""
    seconds = [
        f"{name}({parameter.name}={parameter.default!r})"
        for name, function in _callables()
        for parameter in inspect.signature(function).parameters.values()
        if parameter.name in _SETTING_NAMES and parameter.default is not inspect.Parameter.empty
    ]
    assert seconds == []


def test_no_component_parameter_has_a_number_as_default() -> None:
    """A number written as a parameter default is a setting in hiding: it belongs in Settings.

    (Private classes are left out: their defaults are initial state, like a counter's 0.)
    """
    numbers = [
        f"{name}({parameter.name}={parameter.default!r})"
        for name, function in _callables()
        if not function.__qualname__.startswith("_")
        for parameter in inspect.signature(function).parameters.values()
        if isinstance(parameter.default, int | float) and not isinstance(parameter.default, bool)
    ]
    assert numbers == []


@pytest.mark.parametrize(
    ("component", "parameters"),
    [
        (PasswordHasher.__init__, ("time_cost", "memory_kib", "workers")),
        (SqlStore.__init__, ("pool_size",)),
        (
            RedisBus.__init__,
            ("probe_interval", "publish_timeout", "connect_timeout", "backoff_base", "backoff_cap"),
        ),
        (RedisPresence.__init__, ("heartbeat_interval", "expiry")),
    ],
)
def test_settings_passed_under_other_names_have_no_default(
    component: Callable[..., Any], parameters: tuple[str, ...]
) -> None:
    """Parameters that the node fills from a setting of another name have no default either."""
    signature = inspect.signature(component)
    for name in parameters:
        assert signature.parameters[name].default is inspect.Parameter.empty, name


def test_pick_builds_a_component_from_the_settings_of_its_field_names() -> None:
    """``pick`` copies each field's setting: a changed setting reaches the component."""
    settings = Settings(max_frame=100, max_friends=3, max_backlog=7)
    assert settings.pick(Limits).max_frame == 100
    assert settings.pick(Policy).max_friends == 3
    assert settings.pick(ConnectionLimits).max_backlog == 7


def test_pick_refuses_a_field_that_is_no_setting() -> None:
    """A component field without a setting of its name is a bug, found at start-up."""

    @dataclasses.dataclass
    class Odd:
        max_frame: int
        colour: str

    with pytest.raises(TypeError, match="colour"):
        Settings().pick(Odd)


def test_the_password_hasher_takes_the_node_settings() -> None:
    """The node's hasher hashes with the cost of its settings."""
    hasher = password_hasher(Settings(argon2_time_cost=1, argon2_memory_kib=1024, hash_workers=1))
    try:
        assert "m=1024,t=1,p=1" in hasher._argon2.hash("secret")
    finally:
        hasher.close()


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    """Flags > CLUSTERCHAT_* environment > TOML > defaults, converted to the field's type."""
    config = tmp_path / "node.toml"
    config.write_text("port = 7001\nmax_depth = 8\nread_batch = 50\n")
    settings = Settings.load(
        {"port": 7003, "read_batch": None},
        environ={"CLUSTERCHAT_PORT": "7002", "CLUSTERCHAT_MAX_DEPTH": "9"},
        config=config,
    )
    assert (settings.port, settings.max_depth, settings.read_batch) == (7003, 9, 50)
    assert settings.max_token == Settings().max_token


def test_operations_doc_lists_every_setting() -> None:
    """docs/operations.md has a row for each setting (the Settings docstring says so)."""
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ")]
    named = {name.strip() for row in rows for name in row.split("|")[1].split("/")}
    assert sorted(_SETTING_NAMES - named) == []
