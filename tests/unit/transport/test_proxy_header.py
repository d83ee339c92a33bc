"""The PROXY protocol v1 header that nginx sends with ``proxy_protocol on``."""

import pytest

from clusterchat.transport.proxy_protocol import (
    MAX_HEADER,
    ProxyHeaderError,
    parse_proxy_header,
)


def test_the_client_address_comes_from_the_header() -> None:
    data = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8000\r\n{}"
    assert parse_proxy_header(data) == (len(data) - 2, ("203.0.113.7", 51234))
    six = b"PROXY TCP6 2001:db8::1 ::1 4000 8000\r\n"
    assert parse_proxy_header(six) == (len(six), ("2001:db8::1", 4000))
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == (15, None)


@pytest.mark.parametrize("partial", [b"", b"PRO", b"PROXY TCP4 203.0.113.7 127.0"])
def test_an_incomplete_header_asks_for_more(partial: bytes) -> None:
    assert parse_proxy_header(partial) is None


@pytest.mark.parametrize(
    "data",
    [
        b'{"msgid":1}\0',
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 2\r\n",
        b"PROXY TCP4 203.0.113.7\r\n",
        b"PROXY " + b"1" * MAX_HEADER,
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)
