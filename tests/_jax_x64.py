"""Imported by forked test children: jax in 64 bits, as the test process runs it (conftest)."""

import jax

jax.config.update("jax_enable_x64", True)
