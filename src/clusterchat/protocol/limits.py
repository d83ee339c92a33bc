"""Input limits enforced by the decoder and the codec (docs/protocol.md §4)."""

from dataclasses import dataclass

__all__ = ["CLASSIC_FRAME_MAX", "Limits"]

#: The classic client reads at most 1024 bytes per recv and parses them as one
#: C string, so every frame sent to it (NUL included) must be shorter than this.
CLASSIC_FRAME_MAX = 1023


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a client may send.

    No field has a default: a node builds its limits from its settings
    (``Settings.pick(Limits)``, defaults in ``clusterchat.settings``).

    Attributes:
        max_frame: Largest JSON object accepted, in bytes. A larger one closes
            the connection (it cannot be skipped without reading it all).
        max_depth: Deepest nesting of objects and arrays in a frame.
        max_name: Longest user name, in characters.
        max_password: Longest password, in characters.
        max_group_name: Longest group name, in characters.
        max_group_desc: Longest group description, in characters.
        max_message: Longest chat message text, in characters.
        max_token: Longest client token (``device``, ``cid``), in characters.
    """

    max_frame: int
    max_depth: int
    max_name: int
    max_password: int
    max_group_name: int
    max_group_desc: int
    max_message: int
    max_token: int
