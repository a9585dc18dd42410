"""The tools: the ``batchmv`` command (``info``, ``demo``, ``bench``, ``apply``) and the
benchmark suite.

They are built on the library (``import batchmv`` and its modules); the library never
imports this package, so ``import batchmv`` loads none of it.  Importing a module here
imports no array library: each subcommand imports what it uses when it runs.
"""
