"""Engines, one module per array library (installed as ``batchmv.backends``).

Each module defines ``ENGINE_CLASS``, a class that implements :class:`batchmv._engine.Engine`.
"""
