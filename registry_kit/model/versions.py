"""Docker engine version parsing and the minimum-version gate.

Engines report versions in many shapes: Debian's "20.10.24+dfsg1", old "1.13.1",
Docker CE's "17.03.0-ce", current "26.1.5". Only the numeric release matters for the gate.
"""

from __future__ import annotations

import re

_VERSION_RE = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?=$|[^\d.]|\.\D)")


class VersionError(ValueError):
    pass


def parse_version(text: str) -> tuple[int, int, int]:
    """Return (major, minor, patch); suffixes like "+dfsg1", "-ce", "~3" are ignored."""
    match = _VERSION_RE.match(text or "")
    if not match:
        raise VersionError(f"not a version: {text!r}")
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    return major, minor, patch


def is_valid_version(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        parse_version(text)
    except VersionError:
        return False
    return True


def meets_minimum(found: str, minimum: str) -> bool:
    return parse_version(found) >= parse_version(minimum)
