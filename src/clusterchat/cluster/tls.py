"""A self-signed certificate for a local cluster (``clusterchat up --tls``).

Made with the ``openssl`` command line (installed by scripts/bootstrap): an
ECDSA P-256 key and a certificate for ``localhost`` and ``127.0.0.1``, valid
for a year, in ``<dir>/tls/``. An existing pair is reused while it has more
than a day to run. For a real deployment use a certificate from your CA
instead (docs/operations.md, "TLS").
"""

import subprocess
from pathlib import Path

from clusterchat.cluster.processes import find_executable

__all__ = ["self_signed"]

_DAYS = 365
_RENEW_BEFORE_S = 86_400


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """The (certificate, key) files in ``directory``, made now if missing or nearly expired.

    Raises:
        MissingDependency: No ``openssl`` command.
        subprocess.CalledProcessError: openssl failed.
    """
    openssl = find_executable("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.exists() and key.exists() and _valid_for(openssl, cert, _RENEW_BEFORE_S):
        return cert, key
    hosts = ["127.0.0.1"] if host == "127.0.0.1" else [host, "127.0.0.1"]
    names = "subjectAltName=DNS:localhost," + ",".join(f"IP:{h}" for h in hosts)
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-days", str(_DAYS), "-subj", "/CN=localhost", "-addext", names]
    argv += ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(argv, check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def _valid_for(openssl: str, cert: Path, seconds: int) -> bool:
    """Whether ``cert`` is still valid ``seconds`` from now."""
    done = subprocess.run(
        [openssl, "x509", "-checkend", str(seconds), "-noout", "-in", str(cert)],
        capture_output=True,
    )
    return done.returncode == 0
