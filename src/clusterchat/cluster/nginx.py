"""nginx.conf rendering for the cluster's front door, and nginx's command line.

nginx runs as a child process in the foreground under a private prefix
directory (FIELD-NOTES.md, "nginx on Debian, as a child process"):

- Debian builds the TCP ``stream`` module as a dynamic module
  (``libnginx-mod-stream``); a config that does not go through
  ``/etc/nginx/modules-enabled/`` must ``load_module`` it, at the top.
- ``daemon off``, the pid file, the error log and every temp path live inside
  the prefix, and ``-e`` names the error log on the command line so nginx never
  opens its compiled-in one. SIGQUIT stops it gracefully, SIGTERM fast.
- The stream proxy closes a connection that is idle for ``proxy_timeout``
  (10 minutes by default), on both sides. A quiet chat client must survive an
  hour, so the idle timeout defaults to 3600 s.

The ``stream {}`` block balances raw TCP (the classic JSON protocol); the
optional ``http {}`` block balances HTTP and WebSocket (Upgrade) traffic.
"""

import resource
from collections.abc import Sequence
from pathlib import Path

from clusterchat.cluster.processes import find_executable

__all__ = ["NGINX_PACKAGES", "STREAM_MODULE", "nginx_argv", "render_nginx_conf"]

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
NGINX_PACKAGES = "nginx-light libnginx-mod-stream"

_CONNECT_TIMEOUT = "2s"
_FAIL = "max_fails=1 fail_timeout=5s"


def _address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _servers(upstreams: Sequence[tuple[str, int]]) -> str:
    return "\n".join(f"        server {_address(u)} {_FAIL};" for u in upstreams)


def _rlimit_nofile(worker_connections: int) -> int:
    # Each proxied client holds two descriptors (client side and node side).
    wanted = 2 * worker_connections + 64
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _http_block(
    prefix: Path,
    listen: tuple[str, int],
    upstreams: Sequence[tuple[str, int]],
    idle_timeout_s: int,
) -> str:
    # Directly in the prefix: nginx creates the last path component, not its parents.
    return f"""
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;

    # "Connection: upgrade" only when the client asked for an upgrade (WebSocket).
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    # Round-robin (nginx's default): consecutive clients land on different nodes.
    upstream clusterchat_http {{
{_servers(upstreams)}
    }}

    server {{
        listen {_address(listen)};

        location / {{
            proxy_pass http://clusterchat_http;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout {_CONNECT_TIMEOUT};
            proxy_read_timeout {idle_timeout_s}s;
            proxy_send_timeout {idle_timeout_s}s;
            proxy_next_upstream error timeout;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def render_nginx_conf(
    prefix: Path,
    *,
    listen: tuple[str, int],
    upstreams: Sequence[tuple[str, int]],
    idle_timeout_s: int = 3600,
    http_listen: tuple[str, int] | None = None,
    http_upstreams: Sequence[tuple[str, int]] = (),
    worker_connections: int = 4096,
    proxy_protocol: bool = False,
    tls: tuple[Path, Path] | None = None,
) -> str:
    """Render an nginx.conf that balances TCP (and optionally HTTP) over the nodes.

    Whether ``load_module`` for the stream module is needed is decided now, by
    looking for ``STREAM_MODULE`` on this machine.

    Args:
        prefix: The directory nginx runs in (pid, error log, temp files).
        listen: Address for the TCP (classic protocol) front door.
        upstreams: The nodes' TCP addresses.
        idle_timeout_s: Seconds a proxied connection may stay silent.
        http_listen: Address for the HTTP/WebSocket front door, or None for none.
        http_upstreams: The nodes' HTTP/WebSocket addresses.
        worker_connections: Connections nginx accepts at once (two per client).
        proxy_protocol: Begin each TCP connection to a node with a PROXY header
            naming the client (nodes run with ``--proxy-protocol``), so that
            the nodes' limits per address see clients, not nginx.
        tls: (certificate, key) PEM files: the TCP front door speaks TLS
            (1.2 and 1.3) and nginx talks to the nodes in clear on loopback.

    Returns:
        The configuration text, to be written to ``prefix / "nginx.conf"``.

    Raises:
        ValueError: No upstreams, or an HTTP front door without HTTP upstreams.
    """
    if not upstreams:
        raise ValueError("nginx needs at least one TCP upstream")
    if http_listen is not None and not http_upstreams:
        raise ValueError("an HTTP front door needs at least one HTTP upstream")
    load = f"load_module {STREAM_MODULE};\n" if STREAM_MODULE.exists() else ""
    proxy_header = "\n        proxy_protocol on;" if proxy_protocol else ""
    ssl = ""
    tls_directives = ""
    if tls is not None:
        ssl = " ssl"
        tls_directives = (
            f"\n        ssl_certificate {tls[0]};"
            f"\n        ssl_certificate_key {tls[1]};"
            "\n        ssl_protocols TLSv1.2 TLSv1.3;"
            "\n        ssl_session_cache shared:clusterchat_tls:1m;"
            "\n        ssl_handshake_timeout 10s;"
        )
    conf = f"""# Generated by clusterchat: rewritten on every start, do not edit.
{load}daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {_rlimit_nofile(worker_connections)};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections {worker_connections};
}}

stream {{
    # Round-robin (nginx's default): consecutive clients land on different nodes.
    # Passive health checks: one failed connect takes a node out for 5 s.
    upstream clusterchat_tcp {{
{_servers(upstreams)}
    }}

    server {{
        # A bounded kernel send buffer toward clients bounds what a dying
        # connection can take with it (docs/delivery.md, classic sessions).
        listen {_address(listen)}{ssl} sndbuf=64k;{tls_directives}
        proxy_pass clusterchat_tcp;{proxy_header}
        proxy_connect_timeout {_CONNECT_TIMEOUT};
        # Idle timeout, both directions: a quiet chat client must not be cut.
        proxy_timeout {idle_timeout_s}s;
        # A node that refuses or times out the connect: try the next one.
        proxy_next_upstream on;
        proxy_next_upstream_tries {len(upstreams)};
    }}
}}
"""
    if http_listen is not None:
        conf += _http_block(prefix, http_listen, http_upstreams, idle_timeout_s)
    return conf


def nginx_argv(prefix: Path) -> list[str]:
    """Build the command line for a foreground nginx using ``prefix/nginx.conf``.

    Append ``"-t"`` to only test the configuration.

    Args:
        prefix: The directory holding ``nginx.conf``; logs and pid go there too.

    Returns:
        The command line, starting with the absolute path of nginx.

    Raises:
        MissingDependency: nginx is not installed.
    """
    return [
        find_executable("nginx", NGINX_PACKAGES),
        "-p",
        f"{prefix}/",
        "-c",
        f"{prefix}/nginx.conf",
        "-e",
        f"{prefix}/error.log",
    ]
