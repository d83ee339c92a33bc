"""Names of users and groups: one form, nothing invisible, no look-alikes.

On main `alice\\u0000`, `\\u0430lice` (a Cyrillic a) and `bob\\u202e` all
registered beside `alice` and `bob`, and a classic C client showed the first
as "alice". Here a name is enforced with the PRECIS Nickname profile (RFC
8266, precis-i18n): width and compatibility forms folded (NFKC), spaces
trimmed and collapsed, and control, format (zero-width, bidi), ignorable and
unassigned characters refused. Two names may not look alike: each name's
key is the Unicode confusable skeleton (UTS #39, computed by ICU's
SpoofChecker) of its case-folded form, and keys are unique in the store, so
`\\u0430lice`, `a1ice`, `ALICE` and `alice` are one name.

The rules stand alone (no service, no store): the service refuses new names
with them (``service/names.py``), and the migration that introduced the keys
checked the names already stored with them (``store/migrations``).
"""

import icu
import precis_i18n

__all__ = ["MAX_KEY", "MAX_NAME", "NameRefused", "look_alike_key", "normalize"]

_NICKNAME = precis_i18n.get_profile("NicknameCasePreserved")
_SPOOF = icu.SpoofChecker()
#: Longest key the store holds (a skeleton can be longer than its name).
MAX_KEY = 255
#: Longest name the store holds (users.name, chat_groups.name): NFKC can make a
#: name longer than the request's (U+FDFA becomes 18 characters), and PostgreSQL
#: and MySQL refuse what does not fit where SQLite would keep it.
MAX_NAME = 64


class NameRefused(ValueError):
    """A name that may not be stored; the message says why, in words."""


def normalize(name: str) -> str:
    """The name as it is stored and shown.

    Raises:
        NameRefused: Naming the refused character, or saying that the name is
            empty or became longer than ``MAX_NAME``.
    """
    try:
        enforced: str = _NICKNAME.enforce(name)
    except UnicodeEncodeError as exc:
        reason = _explain(exc.reason)
        if exc.reason != "DISALLOWED/empty":
            reason += f" (U+{ord(exc.object[exc.start]):04X})"
        raise NameRefused(reason) from None
    if len(enforced) > MAX_NAME:
        raise NameRefused(
            f"too long once normalised ({len(enforced)} characters, at most {MAX_NAME})"
        )
    return enforced


def look_alike_key(name: str) -> str:
    """The key that two names share when they could be taken for each other.

    Raises:
        NameRefused: The key is longer than the store holds.
    """
    key: str = _SPOOF.getSkeleton(0, name.casefold())
    if len(key) > MAX_KEY:
        raise NameRefused("name too long once normalised")
    return key


def _explain(reason: str) -> str:
    """PRECIS's reason (``DISALLOWED/controls``...) in words."""
    words = {
        "DISALLOWED/controls": "control characters are not allowed",
        "DISALLOWED/precis_ignorable_properties": "invisible characters are not allowed",
        "DISALLOWED/unassigned": "unassigned characters are not allowed",
        "DISALLOWED/empty": "must not be empty",
    }
    return words.get(reason, f"not allowed ({reason})")
