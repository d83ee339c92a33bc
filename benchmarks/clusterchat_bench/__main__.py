"""``python -m clusterchat_bench``: the same as ``clusterchat bench``."""

import sys

from clusterchat_bench.main import main

sys.exit(main())
