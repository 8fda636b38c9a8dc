"""Unit tests for registry_kit.model.versions: engine version parsing and the minimum gate."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from registry_kit.model.settings import Settings
from registry_kit.model.versions import VersionError, is_valid_version, meets_minimum, parse_version
from registry_kit.roles import engine


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20.10.24+dfsg1", (20, 10, 24)),
        ("1.13.1", (1, 13, 1)),
        ("17.03.0-ce", (17, 3, 0)),
        ("26.1.5", (26, 1, 5)),
        ("28.2.2", (28, 2, 2)),
        ("1.5.0", (1, 5, 0)),
        ("17.06.2-ee-16", (17, 6, 2)),
        ("v24.0", (24, 0, 0)),
        ("25", (25, 0, 0)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected
    assert is_valid_version(text) is True


@pytest.mark.parametrize("text", ["abc", "", "   ", "ce-17.03", ".1.2"])
def test_parse_version_rejects(text: str) -> None:
    with pytest.raises(VersionError, match="not a version"):
        parse_version(text)
    assert is_valid_version(text) is False


@pytest.mark.parametrize("value", [None, 1.6, 16, ["1.6.0"]])
def test_is_valid_version_rejects_non_strings(value: object) -> None:
    assert is_valid_version(value) is False


@pytest.mark.parametrize(
    ("found", "minimum", "expected"),
    [
        ("1.5.0", "1.6.0", False),
        ("1.6.0", "1.6.0", True),
        ("20.10.24+dfsg1", "1.6.0", True),
        ("17.03.0-ce", "17.3.0", True),
        ("17.03.0-ce", "17.6.0", False),
        ("1.13.1", "1.6.0", True),  # numeric, not string, comparison: 13 > 6
        ("1.10.0", "1.9.9", True),
        ("26.1.5", "26.1.6", False),
    ],
)
def test_meets_minimum(found: str, minimum: str, expected: bool) -> None:
    assert meets_minimum(found, minimum) is expected


def test_meets_minimum_rejects_garbage() -> None:
    with pytest.raises(VersionError):
        meets_minimum("abc", "1.6.0")


# --- the engine a server needs for the features in use (roles.engine.engine_minimum)

def test_the_audit_log_raises_a_servers_minimum_to_20_10(
        make_settings: Callable[..., Settings]) -> None:
    audit = make_settings(registry_audit_log=True)
    assert engine.engine_minimum(audit, is_server=True) == ("20.10.0", "registry_audit_log")
    # A client runs no registry; a stricter docker_min_version stays the one that counts.
    assert engine.engine_minimum(audit, is_server=False) == ("1.6.0", "docker_min_version")
    stricter = make_settings(registry_audit_log=True, docker_min_version="23.0")
    assert engine.engine_minimum(stricter, is_server=True) == ("23.0", "docker_min_version")
    assert engine.engine_minimum(make_settings(), is_server=True) == ("1.6.0",
                                                                      "docker_min_version")
    for found in ("19.03.15", "1.13.1", "20.9.9"):
        assert not meets_minimum(found, engine.AUDIT_LOG_ENGINE), found
    assert meets_minimum("20.10.24+dfsg1", engine.AUDIT_LOG_ENGINE)
    line = engine.refusal("rep1", "19.03.15", "20.10.0", "registry_audit_log")
    assert line.startswith("rep1: Docker engine 19.03.15 is older than 20.10.0, which "
                           "registry_audit_log needs") and "\n" not in line
