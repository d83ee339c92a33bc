"""A node told to stop while its database does not answer (issue 11, seen on several hosts).

Found by the network-namespace test: a node SIGTERMed with its database
unreachable waited for the database without end (still running 40 s later;
one stayed up more than 10 minutes). It must stop within
``shutdown_timeout``, and say what it could not store.
"""

import time
from collections.abc import Callable

import pytest

from tests.support.classic import login, register
from tests.support.database import migrated
from tests.support.node import NodeFactory
from tests.support.postgres import PostgresServer
from tests.support.proxy import TcpProxy
from tests.support.timing import seconds

pytestmark = pytest.mark.integration


def test_a_node_stops_within_its_shutdown_timeout_when_the_database_is_gone(
    node_factory: NodeFactory,
    postgres_server: PostgresServer,
    tcp_proxy_factory: Callable[[tuple[str, int]], TcpProxy],
) -> None:
    url = migrated(postgres_server.create_database())
    proxy = tcp_proxy_factory((postgres_server.host, postgres_server.port))
    through = url.replace(f":{postgres_server.port}/", f":{proxy.listen_port}/")
    node = node_factory(db_url=through, env={"CLUSTERCHAT_SHUTDOWN_TIMEOUT": "3"})
    alice, bob = register(node, "alice", "bob")
    client, _ = login(node, alice)
    proxy.cut()
    # Accepted (it is in the node's queue for the log), never acknowledged: no ref.
    client.send({"msgid": 6, "toid": bob, "msg": "cannot be stored"})
    time.sleep(0.5)
    started = time.monotonic()
    status = node.stop()
    took = time.monotonic() - started
    client.close()
    assert status == 0
    assert took < seconds(20), f"stopping took {took:.1f} s"
    log = node.child.log_path.read_text()
    assert "1 accepted message(s) not stored" in log
    assert "Traceback" not in log.split("shutting down", 1)[-1]
