"""The batchmv benchmark suite: the same code as ``batchmv bench`` (batchmv/tools/bench/).

Run: ``.venv/bin/python benchmarks/run.py [--quick] [--json FILE] [--plot FILE.png] ...``
(``--help`` lists the grid and timing options).  The committed snapshot in
benchmarks/results/ was made with::

    .venv/bin/python benchmarks/run.py --force --json benchmarks/results/results.json \\
        --plot benchmarks/results/results.png > benchmarks/results/results.txt
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    try:
        import batchmv  # noqa: F401
    except ImportError:  # running from a checkout without batchmv installed
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from batchmv.tools.bench.command import main

    sys.exit(main())
