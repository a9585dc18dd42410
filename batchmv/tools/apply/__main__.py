"""``python -m batchmv.tools.apply``: ``batchmv apply`` alone."""

import sys

from .command import main

sys.exit(main())
