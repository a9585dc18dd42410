"""``python -m batchmv``: the command-line interface of :mod:`batchmv.tools.cli`."""

from .tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
