"""Fixtures for the client library tests: a scripted peer and a client connected to it."""

from collections.abc import AsyncIterator

import pytest

from clusterchat.client import ChatClient
from tests.unit.client.peer import CannedPeer, PeerConnection


@pytest.fixture
async def peer() -> AsyncIterator[CannedPeer]:
    """A listening scripted peer, closed after the test."""
    canned = await CannedPeer.start()
    yield canned
    await canned.aclose()


@pytest.fixture
async def pair(peer: CannedPeer) -> AsyncIterator[tuple[ChatClient, PeerConnection]]:
    """A client (newline framing) and the server side of its connection."""
    client = await ChatClient.connect(peer.host, peer.port)
    connection = await peer.accept()
    yield client, connection
    await client.close()
