"""The public surface of clusterchat.client, pinned."""

import clusterchat.client

EXPECTED = {
    "ChatClient",
    "ChatClientError",
    "friends",
    "groups",
    "offline_messages",
}


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ names exactly the intended public API, and each name exists."""
    assert set(clusterchat.client.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(clusterchat.client, name)
