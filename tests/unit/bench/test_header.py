"""The bench's header: how its nodes differ from a default node, said in words and in JSON."""

import pytest

from clusterchat.settings import Settings
from clusterchat_bench.cluster import (
    CHEAP_HASHING,
    RAISED_FOR_LOAD,
    node_configuration,
    node_environment,
)
from clusterchat_bench.header import SMOKE_RUN, header_lines

MACHINE = {
    "cores": 2,
    "cpu_model": "Some CPU",
    "memory_bytes": 4 * 2**30,
    "kernel": "6.1",
    "python": "3.11.7",
    "python_implementation": "CPython",
}


def _own(cheap: bool) -> dict[str, object]:
    return {"mode": "own", "node_configuration": node_configuration(cheap)}


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's CLUSTERCHAT_* variables would show up in the configuration read."""
    for name in ("ARGON2_TIME_COST", "ARGON2_MEMORY_KIB"):
        monkeypatch.delenv(f"CLUSTERCHAT_{name}", raising=False)


def test_default_hashing_is_what_a_node_ships_with() -> None:
    """Without --cheap-hashing the nodes get no argon2 variable and the defaults are in effect."""
    assert not any("ARGON2" in name for name in node_environment(False))
    hashing = node_configuration(False)["password_hashing"]
    default = Settings()
    assert hashing["cheap_hashing"] is False
    assert hashing["argon2_time_cost"] == default.argon2_time_cost
    assert hashing["argon2_memory_kib"] == default.argon2_memory_kib
    lines = header_lines(MACHINE, _own(False), quick=False)
    assert any(line.startswith("nodes: default password hashing") for line in lines)
    assert not any("CHEAP" in line for line in lines)


def test_cheap_hashing_is_named_and_reported() -> None:
    """--cheap-hashing puts its parameters in the nodes' environment, the JSON and the header."""
    env = node_environment(True)
    assert env["CLUSTERCHAT_ARGON2_TIME_COST"] == str(CHEAP_HASHING["argon2_time_cost"])
    hashing = node_configuration(True)["password_hashing"]
    assert hashing["cheap_hashing"] is True
    assert hashing["argon2_memory_kib"] == CHEAP_HASHING["argon2_memory_kib"]
    lines = header_lines(MACHINE, _own(True), quick=False)
    cheap = [line for line in lines if "CHEAP password hashing (--cheap-hashing" in line]
    assert len(cheap) == 1
    assert "login rates are not a default node's" in cheap[0]


def test_raised_limits_are_named_with_their_defaults() -> None:
    """Every limit raised for load generation is in the header with default -> bench value."""
    raised = node_configuration(False)["raised_for_load_generation"]
    assert set(raised) == set(RAISED_FOR_LOAD)
    for name, value in RAISED_FOR_LOAD.items():
        assert raised[name] == {"default": getattr(Settings(), name), "bench": value}
    line = next(
        line
        for line in header_lines(MACHINE, _own(False), quick=False)
        if "raised for load generation" in line
    )
    for name in RAISED_FOR_LOAD:
        assert name in line


def test_quick_header_starts_with_the_smoke_run_line() -> None:
    """A --quick run's header says first that it is a smoke run; a full run's does not."""
    assert header_lines(MACHINE, _own(False), quick=True)[0] == SMOKE_RUN
    assert SMOKE_RUN not in header_lines(MACHINE, _own(False), quick=False)
    assert header_lines(MACHINE, {"mode": "target"}, quick=False)[1].startswith(
        "cluster: a running"
    )
