"""Unit tests for registry_kit.model.versions: engine version parsing and the minimum gate."""

from __future__ import annotations

import pytest

from registry_kit.model.versions import VersionError, is_valid_version, meets_minimum, parse_version


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
