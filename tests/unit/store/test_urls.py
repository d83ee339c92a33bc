"""``async_url``: a plain database URL gets its async driver (docs/operations.md §Databases)."""

import pytest

from clusterchat.store.sql import async_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///chat.db", "sqlite+aiosqlite:///chat.db"),
        ("postgresql://u:p@db:5432/chat", "postgresql+asyncpg://u:p@db:5432/chat"),
        ("postgres://u@db/chat", "postgresql+asyncpg://u@db/chat"),
        ("mysql://u:p@db:3306/chat", "mysql+asyncmy://u:p@db:3306/chat?charset=utf8mb4"),
        ("mariadb://u@db/chat", "mysql+asyncmy://u@db/chat?charset=utf8mb4"),
        ("mysql+aiomysql://u@db/chat", "mysql+aiomysql://u@db/chat?charset=utf8mb4"),
        ("mysql://u@db/chat?charset=utf8mb3", "mysql+asyncmy://u@db/chat?charset=utf8mb3"),
    ],
)
def test_plain_urls_get_their_async_driver(url: str, expected: str) -> None:
    """postgres(ql) -> asyncpg, mysql/mariadb -> asyncmy with utf8mb4; explicit choices stay."""
    assert async_url(url) == expected
