"""e2e fixtures: the lab (real Debian hosts with systemd and sshd, see lab/).

`lab` brings up the default topology once per session (reusing running hosts, removing any
other lab host) and returns the lab state (see lab.state). `extra_host` adds a host for one
test and removes it afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The project is not necessarily installed: make `lab` importable from the checkout.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lab as lab_api  # noqa: E402  (imported as lab_api: `lab` is the fixture's name)
from lab.config import NAME_ENV  # noqa: E402
from lab.topology import HostSpec  # noqa: E402

# A parallel run (pytest-xdist): the first worker uses the lab it was given (the main lab, or
# $REGISTRY_KIT_LAB_NAME), every other worker a namespace of its own, e.g. lane-gw1, so two
# lanes never share a host. Set before any test runs: the lab, the inventories and the pyinfra
# processes the tests start all read it from the environment.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if _WORKER != "gw0":
    os.environ[NAME_ENV] = f"{os.environ.get(NAME_ENV) or 'lane'}-{_WORKER}"

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/e2e needs the lab: mark it so `-m "not e2e"` skips it.
    for item in items:
        if E2E_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab() -> dict[str, Any]:
    """The default lab, up and reachable over SSH: exactly the default hosts (prune)."""
    try:
        return lab_api.up(prune=True)
    except lab_api.LabError as exc:
        pytest.fail(f"lab up failed: {exc}", pytrace=False)


@pytest.fixture
def extra_host(lab: dict[str, Any]) -> Iterator[Callable[[HostSpec], dict[str, Any]]]:
    """Factory: `extra_host(HostSpec("lab-spare"))` -> that host's entry in the state.

    The default hosts stay as they are; the hosts added here are removed (container and
    docker volume) when the test ends.
    """
    added: list[str] = []

    def add(spec: HostSpec) -> dict[str, Any]:
        added.append(spec.name)
        current = lab_api.up([spec])
        return dict(current["hosts"][spec.name])

    yield add
    for name in added:
        lab_api.remove_host(name)
