"""clusterchat.cluster.nginx: the rendered config (run for real: tests/integration)."""

from pathlib import Path

import pytest

from clusterchat.cluster import nginx as nginx_conf
from clusterchat.cluster.nginx import render_nginx_conf


def test_config_loads_stream_module_first_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_module comes before everything when the Debian stream module exists, else not."""
    fake = tmp_path / "ngx_stream_module.so"
    fake.touch()
    monkeypatch.setattr(nginx_conf, "STREAM_MODULE", fake)
    conf = render_nginx_conf(tmp_path, listen=("127.0.0.1", 1), upstreams=[("127.0.0.1", 2)])
    directives = [x for x in conf.splitlines() if x.strip() and not x.startswith("#")]
    assert directives[0] == f"load_module {fake};"
    fake.unlink()
    conf = render_nginx_conf(tmp_path, listen=("127.0.0.1", 1), upstreams=[("127.0.0.1", 2)])
    assert "load_module" not in conf


def test_config_keeps_state_in_prefix_and_quiet_clients_connected(tmp_path: Path) -> None:
    """Foreground, pid, logs and temp paths in the prefix; idle timeout an hour; health checks."""
    conf = render_nginx_conf(
        tmp_path,
        listen=("127.0.0.1", 7000),
        upstreams=[("127.0.0.1", 7001), ("127.0.0.1", 7002)],
        http_listen=("127.0.0.1", 8000),
        http_upstreams=[("127.0.0.1", 8001)],
    )
    lines = [x.strip() for x in conf.splitlines()]
    assert "daemon off;" in lines
    assert f"pid {tmp_path}/nginx.pid;" in lines
    assert f"error_log {tmp_path}/error.log warn;" in lines
    temp_paths = [x for x in lines if x.split(" ")[0].endswith("_temp_path")]
    assert len(temp_paths) == 5
    assert all(x.split(" ")[1].startswith(f"{tmp_path}/") for x in temp_paths)
    assert "proxy_timeout 3600s;" in lines
    assert "proxy_read_timeout 3600s;" in lines
    assert "proxy_connect_timeout 2s;" in lines
    assert "server 127.0.0.1:7001 max_fails=1 fail_timeout=5s;" in lines
    assert "server 127.0.0.1:7002 max_fails=1 fail_timeout=5s;" in lines
    assert "listen 127.0.0.1:7000 sndbuf=64k;" in lines
    assert "listen 127.0.0.1:8000;" in lines


def test_config_refuses_missing_upstreams(tmp_path: Path) -> None:
    """A front door with nothing behind it is a configuration error, not a silent nginx."""
    with pytest.raises(ValueError, match="TCP upstream"):
        render_nginx_conf(tmp_path, listen=("127.0.0.1", 1), upstreams=[])
    with pytest.raises(ValueError, match="HTTP upstream"):
        render_nginx_conf(
            tmp_path,
            listen=("127.0.0.1", 1),
            upstreams=[("127.0.0.1", 2)],
            http_listen=("127.0.0.1", 3),
        )


def test_proxy_protocol_names_the_client_to_the_nodes(tmp_path: Path) -> None:
    """Nodes count limits per client address: nginx must name the client (PROXY header)."""
    plain = render_nginx_conf(tmp_path, listen=("127.0.0.1", 1), upstreams=[("127.0.0.1", 2)])
    assert "proxy_protocol on;" not in plain
    conf = render_nginx_conf(
        tmp_path, listen=("127.0.0.1", 1), upstreams=[("127.0.0.1", 2)], proxy_protocol=True
    )
    stream = conf[conf.index("stream {") :]
    assert "        proxy_protocol on;" in stream.splitlines()


def test_tls_on_the_public_port_only(tmp_path: Path) -> None:
    """With a certificate, the TCP front door speaks TLS 1.2+; nodes stay in clear behind it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    conf = render_nginx_conf(
        tmp_path, listen=("127.0.0.1", 1), upstreams=[("127.0.0.1", 2)], tls=(cert, key)
    )
    lines = [line.strip() for line in conf.splitlines()]
    assert "listen 127.0.0.1:1 ssl sndbuf=64k;" in lines
    assert f"ssl_certificate {cert};" in lines
    assert f"ssl_certificate_key {key};" in lines
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in lines
    assert "proxy_ssl on;" not in lines
