"""The engines' docstring examples (pytest's --doctest-modules cannot import
``backends/`` by path: it is installed as ``batchmv.backends``)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util

import pytest

import batchmv._registry as registry

NAMES = sorted({*registry.ENGINES, *getattr(registry, "ADAPTERS", {})})


@pytest.mark.parametrize("name", NAMES)
def test_engine_module_examples_run(name):
    if importlib.util.find_spec(f"batchmv.backends.{name}") is None:
        pytest.skip(f"batchmv has no {name} module yet")
    package = registry.ENGINES[name].package if name in registry.ENGINES else registry.ADAPTERS[name].package
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    result = doctest.testmod(importlib.import_module(f"batchmv.backends.{name}"))
    assert result.failed == 0
