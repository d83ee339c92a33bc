"""TLS on a node's listener, and credentials kept out of logs (issue: hostile clients)."""

import asyncio
import json
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from clusterchat.client import ChatClient
from clusterchat.cluster.node_command import node_argv
from clusterchat.cluster.tls import self_signed
from tests.support.classic import PASSWORD, ClassicClient, register
from tests.support.node import NodeFactory
from tests.support.redis import RedisFactory
from tests.support.timing import seconds

pytestmark = pytest.mark.integration


def _tls_client(host: str, port: int, cert: Path) -> ClassicClient:
    """A classic-protocol client over TLS that trusts ``cert`` (and checks the host name)."""
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection((host, port), timeout=seconds(10))
    return ClassicClient.over(context.wrap_socket(raw, server_hostname=host))


def test_a_node_speaks_tls_with_a_generated_certificate(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path / "tls")
    node = node_factory(extra_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    assert "TLS)" in node.child.log_path.read_text()

    client = _tls_client(node.host, node.port, cert)
    registered = client.request({"msgid": 4, "name": "tina", "password": PASSWORD})
    assert registered["errno"] == 0
    answer = client.request({"msgid": 1, "id": registered["id"], "password": PASSWORD})
    assert (answer["errno"], answer["name"]) == (0, "tina")
    client.close()

    # The library client, over TLS.
    context = ssl.create_default_context(cafile=str(cert))

    async def library_login() -> int:
        chat = await ChatClient.connect(node.host, node.port, tls=context)
        async with chat:
            return (await chat.login(int(registered["id"]), PASSWORD)).errno

    assert asyncio.run(library_login()) == 0

    # Plain TCP gets no chat at all (the handshake fails), and the node serves on.
    plain = socket.create_connection((node.host, node.port), timeout=seconds(10))
    plain.sendall(json.dumps({"msgid": 120, "ref": 1}).encode() + b"\0")
    data = b""
    try:
        while chunk := plain.recv(4096):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    plain.close()
    assert b"msgid" not in data
    again = _tls_client(node.host, node.port, cert)
    assert again.request({"msgid": 120, "ref": 2}) == {"msgid": 121, "ref": 2}
    again.close()


def test_tls_flags_are_checked_before_anything_starts(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    cases = [
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", str(cert), "--tls-key", str(key), "--proxy-protocol"],
            "--proxy-protocol is for nodes behind nginx",
        ),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "none.pem")], "No such file"),
    ]
    for flags, message in cases:
        done = subprocess.run(
            node_argv(0, db_url=f"sqlite:///{tmp_path / 'chat.db'}", extra=flags),
            capture_output=True,
            text=True,
            timeout=seconds(30),
            cwd=tmp_path,
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr


def test_credentials_in_urls_never_reach_the_log(
    node_factory: NodeFactory, redis_factory: RedisFactory
) -> None:
    """A Redis password in --redis is used, and the node's log shows *** in its place."""
    secret = "s3cret-Pa55word"
    server = redis_factory("--requirepass", secret)
    url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
    node = node_factory(extra_args=["--redis", url, "--node-id", "n1"])
    (user,) = register(node, "quinn")
    client = ClassicClient(node.host, node.port)
    assert client.request({"msgid": 1, "id": user, "password": PASSWORD})["errno"] == 0
    client.close()
    node.stop()
    text = node.child.log_path.read_text()
    assert f"redis://:***@127.0.0.1:{server.port}/0" in text
    assert secret not in text
    assert PASSWORD not in text
