"""The pure parts of the Redis Cluster support: URLs, slot maps, redirections."""

import pytest

from clusterchat.bus.channels import ChannelNames
from clusterchat.bus.cluster_publisher import _redirect
from clusterchat.bus.redis_publisher import PublishRefusedError
from clusterchat.bus.slots import SLOTS, parse_shards, slot_of
from clusterchat.redis_url import ClusterUrl, is_cluster_url, parse_cluster_url
from clusterchat.settings import redact_url


def test_cluster_url_names_every_seed_and_the_credentials() -> None:
    """Seeds come back in order, with credentials, and make per-node redis:// URLs."""
    url = parse_cluster_url("redis+cluster://bob:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/")
    assert url == ClusterUrl(
        (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)), "bob", "s@cret"
    )
    assert url.node_url(("::1", 7002)) == "redis://bob:s%40cret@[::1]:7002/0"
    assert parse_cluster_url("redis+cluster://h:1").node_url(("h", 1)) == "redis://h:1/0"
    assert is_cluster_url("REDIS+CLUSTER://h:1")
    assert not is_cluster_url("redis://h:1/0")


@pytest.mark.parametrize(
    "bad",
    [
        "redis://h:1",
        "redis+cluster://",
        "redis+cluster://h",
        "redis+cluster://h:x",
        "redis+cluster://h:1/2",
    ],
)
def test_bad_cluster_urls_are_refused(bad: str) -> None:
    """A URL without a seed, a port, or with a database other than 0 is refused."""
    with pytest.raises(ValueError, match=r"(?i)cluster"):
        parse_cluster_url(bad)


def test_redacted_cluster_url_keeps_every_seed() -> None:
    """The password is hidden; the list of seeds stays readable."""
    assert redact_url("redis+cluster://:pw@a:1,b:2") == "redis+cluster://:***@a:1,b:2"
    assert redact_url("redis://u:pw@[::1]:6379/0") == "redis://u:***@[::1]:6379/0"


def test_slot_map_from_cluster_shards_keeps_online_primaries_only() -> None:
    """Each slot maps to its shard's online primary; a shard whose primary failed maps to None."""
    reply = [
        [b"slots", [0, 99, 200, 16383], b"nodes", [
            [b"ip", b"10.0.0.1", b"endpoint", b"10.0.0.1", b"port", 7000, b"role", b"master",
             b"health", b"online"],
            [b"ip", b"10.0.0.4", b"endpoint", b"10.0.0.4", b"port", 7003, b"role", b"replica",
             b"health", b"online"],
        ]],
        [b"slots", [100, 199], b"nodes", [
            [b"ip", b"10.0.0.2", b"endpoint", b"10.0.0.2", b"port", 7001, b"role", b"master",
             b"health", b"fail"],
        ]],
    ]  # fmt: skip
    slot_map = parse_shards(reply)
    assert len(slot_map.owners) == SLOTS
    assert slot_map.owner(0) == slot_map.owner(16383) == ("10.0.0.1", 7000)
    assert slot_map.owner(150) is None
    assert not slot_map.complete
    assert slot_map.primaries == [("10.0.0.1", 7000)]
    assert set(slot_map.nodes) == {("10.0.0.1", 7000), ("10.0.0.4", 7003), ("10.0.0.2", 7001)}


def test_channels_group_by_owner_then_slot() -> None:
    """Hash-tagged names hash by their bare name; grouping keeps one list per slot."""
    names = ChannelNames("cc", hash_tag=True)
    assert slot_of(names.full("user:42")) == slot_of("user:42") == slot_of("other:{user:42}")
    full = [names.full(f"user:{i}") for i in range(50)]
    slot_map = parse_shards(
        [[b"slots", [0, 16383], b"nodes", [
            [b"ip", b"h", b"port", 1, b"role", b"master", b"health", b"online"]]]]
    )  # fmt: skip
    grouped = slot_map.by_owner(full)
    assert list(grouped) == [("h", 1)]
    assert sorted(n for names_ in grouped[("h", 1)].values() for n in names_) == sorted(full)
    assert all(slot_of(n) == slot for slot, ns in grouped[("h", 1)].items() for n in ns)


def test_redirections_are_recognised() -> None:
    """MOVED and ASK replies give the slot and the new address; other refusals give None."""
    assert _redirect(PublishRefusedError("MOVED 3999 127.0.0.1:6381")) == (
        "MOVED",
        3999,
        ("127.0.0.1", 6381),
    )
    assert _redirect(PublishRefusedError("ASK 1 [::1]:7000")) == ("ASK", 1, ("::1", 7000))
    assert _redirect(PublishRefusedError("CLUSTERDOWN The cluster is down")) is None
    assert _redirect(ValueError("MOVED 1 h:1")) is None
