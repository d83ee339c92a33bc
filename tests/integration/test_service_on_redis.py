"""The service tests again, with every node's bus on a real redis-server.

tests/unit/service runs the chat rules on the in-process bus and starts
nothing. The plan (docs/architecture.md) wants the same tests run against
``RedisBus``: this module collects every test of tests/unit/service that
takes the ``chat_cluster`` fixture (tests on ``local_chat_cluster`` inject
the local bus's faults by hand and stay local), under the name
``test_<module>__<test>``, and gives them a cluster on a real redis-server.
"""

import importlib
import inspect
import pkgutil

import pytest

import tests.unit.service
from tests.support.service import ChatCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def chat_cluster(redis_chat_cluster: ChatCluster) -> ChatCluster:
    """Here ``chat_cluster`` is a cluster whose nodes talk through a real redis-server."""
    return redis_chat_cluster


def _service_tests_on_a_cluster() -> dict[str, object]:
    """The tests of tests/unit/service that take ``chat_cluster``, by their name here."""
    found: dict[str, object] = {}
    package = tests.unit.service
    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        short = info.name.rpartition(".")[2]
        if not short.startswith("test_"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                name.startswith("test_")
                and inspect.isfunction(value)
                and value.__module__ == module.__name__
                and "chat_cluster" in inspect.signature(value).parameters
            ):
                found[f"{short}__{name.removeprefix('test_')}"] = value
    return found


globals().update(_service_tests_on_a_cluster())
