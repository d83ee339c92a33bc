"""The PROXY protocol header (version 1, text), as nginx sends it with ``proxy_protocol on``.

Behind nginx every client of a node connects from nginx's address, so limits
per address (connections, login attempts) would count all users as one. With
``clusterchat node --proxy-protocol`` each connection must begin with the
line nginx writes before the client's bytes::

    PROXY TCP4 203.0.113.7 127.0.0.1 51234 8000\\r\\n

and the node takes the client's address and port from it. The specification
(haproxy.org, proxy-protocol.txt) bounds the line at 107 bytes; ``UNKNOWN``
(a health check, or a source nginx cannot name) keeps the connection's own
address. Only nginx may reach a node that expects the header: anyone who can
connect to the node directly can claim any address.
"""

import ipaddress

__all__ = ["MAX_HEADER", "ProxyHeaderError", "parse_proxy_header"]

#: The longest version 1 header, CRLF included.
MAX_HEADER = 107


class ProxyHeaderError(ValueError):
    """The connection did not begin with a valid PROXY header."""


def parse_proxy_header(data: bytes) -> tuple[int, tuple[str, int] | None] | None:
    """Read the header at the start of ``data``.

    Returns:
        None when more bytes are needed; otherwise the number of bytes the
        header took and the client's (address, port), or None for ``UNKNOWN``.

    Raises:
        ProxyHeaderError: ``data`` does not start with a valid header.
    """
    end = data.find(b"\r\n", 0, MAX_HEADER)
    if end < 0:
        if len(data) >= MAX_HEADER or not b"PROXY ".startswith(data[:6]):
            raise ProxyHeaderError("no PROXY header")
        return None
    parts = data[:end].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyHeaderError("no PROXY header")
    if parts[1] == b"UNKNOWN":
        return end + 2, None
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyHeaderError("malformed PROXY header")
    try:
        source = ipaddress.ip_address(parts[2].decode("ascii"))
        port = int(parts[4])
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("malformed PROXY header") from None
    if source.version != (4 if parts[1] == b"TCP4" else 6) or not 0 <= port <= 65535:
        raise ProxyHeaderError("malformed PROXY header")
    return end + 2, (str(source), port)
