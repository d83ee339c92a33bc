"""``clusterchat bench`` is a thin entry point into the separate benchmark package.

Each test runs ``clusterchat`` as a real process. Hiding the package is done
the way Python itself refuses a module: ``sys.modules["clusterchat_bench"] =
None`` before ``clusterchat.cli.main`` runs, so the test holds whether or not
the package is installed in this environment.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.timing import seconds

pytestmark = pytest.mark.integration

#: The bench package of this checkout (benchmarks/clusterchat_bench).
BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _clusterchat(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` with this checkout's bench package on the path."""
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=seconds(30),
        env={**os.environ, "PYTHONPATH": path},
        stdin=subprocess.DEVNULL,
    )


_MAIN = "import sys; from clusterchat.cli import main; sys.exit(main(sys.argv[1:]))"
_HIDDEN = (
    "import sys; sys.modules['clusterchat_bench'] = None;"
    " from clusterchat.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_bench_without_the_package_says_how_to_install_it() -> None:
    """Without clusterchat_bench, `clusterchat bench` exits 1 naming the install command."""
    done = _clusterchat(_HIDDEN, "bench", "--quick")
    assert done.returncode == 1, done.stderr
    assert "pip install -e benchmarks" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_bench_with_the_package_hands_over_its_arguments() -> None:
    """With the package, `clusterchat bench --help` is the bench's own help."""
    done = _clusterchat(_MAIN, "bench", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: clusterchat bench")
    for flag in ("--quick", "--cheap-hashing", "--scenario", "--target"):
        assert flag in done.stdout


def test_bench_is_listed_in_the_product_help() -> None:
    """`clusterchat --help` lists bench, and says where it comes from."""
    done = _clusterchat(_HIDDEN, "--help")
    assert done.returncode == 0, done.stderr
    assert "bench" in done.stdout
    assert "benchmarks/" in done.stdout
