"""Shared helpers for the fast unit tests: settings built from group_data/all.py defaults."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from registry_kit.model import settings as settings_mod
from registry_kit.model.settings import Settings

HOST = "reg-host-1"


@pytest.fixture(scope="session")
def known() -> Mapping[str, Any]:
    """The kit's settings and defaults, read once per session."""
    return settings_mod.known_keys()


@pytest.fixture
def make_settings(known: Mapping[str, Any], tmp_path: Path) -> Callable[..., Settings]:
    """make_settings(key=value, ...) -> validated Settings for HOST (base dir: tmp_path)."""

    def make(**data: Any) -> Settings:
        # Most tests are about something else than users: an open registry is acknowledged
        # here (test_settings checks that it is refused without that).
        data = {"registry_anonymous_acknowledged": True, **data}
        return settings_mod.load(HOST, data, base_dir=tmp_path, known=known)

    return make


@pytest.fixture(autouse=True)
def _fresh_bcrypt_memo() -> None:
    """htpasswd remembers hashes and checks for one run; each test is a run of its own."""
    from registry_kit.render import htpasswd

    htpasswd.hash_password.cache_clear()
    htpasswd.verifies.cache_clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many generated values each setting's property test tried (test_hostile_settings)."""
    module = sys.modules.get("test_hostile_settings") or sys.modules.get(
        "tests.unit.test_hostile_settings")
    counts = getattr(module, "COUNTS", None)
    if not counts:
        return
    terminalreporter.section("hostile setting values")
    for key, (tried, refused) in sorted(counts.items()):
        terminalreporter.write_line(f"{key}: {tried} values tried, {refused} refused, "
                                    f"{tried - refused} accepted and checked harmless")
    total = sum(tried for tried, _ in counts.values())
    terminalreporter.write_line(f"total: {total} values over {len(counts)} settings")
