"""One module per array library (installed as ``batchmv.backends``).

An engine module (numpy, torch, jax, cupy) defines ``ENGINE_CLASS``, a subclass of
:class:`batchmv._engine.Engine`; an adapter module (dask) defines ``ADAPTER_CLASS``, which
takes whole calls on lazy collections above the public API.  Modules whose names start with
an underscore hold one part of a library's module (how memory enters JAX, dask's graphs).
"""
