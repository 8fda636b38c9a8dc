"""A file loaded as a module for the unit tests: the kit's scripts (registry_kit/scripts/,
run on the hosts by Debian's python3, with dashes in their names) and the suite's own plugin
(tests/conftest.py, which pytest has registered under another name)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load(path: Path | str, name: str) -> ModuleType:
    """`path` executed as a new module called `name` (each name its own module, globals
    and all)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
