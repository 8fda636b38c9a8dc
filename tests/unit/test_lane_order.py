"""The test lanes' order (tests/conftest.py, lane_order): longest work unit first, the
modules sharing a lab in their fixed order, and the unit tests first when asked (CI, while
the lab images build)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import script_module


def _suite_plugin() -> ModuleType:
    # Loaded from its file under another name: pytest has it registered as a conftest.
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    return script_module.load(path, "suite_plugin_under_test")


PLUGIN = _suite_plugin()
MODULES = ["tests/e2e/test_lab.py", "tests/e2e/test_scaleout.py",
           "tests/e2e/test_scaleout_ha.py", "tests/e2e/test_deploy.py",
           "tests/e2e/test_new.py", "tests/unit/test_render.py",
           "tests/unit/test_hostile_settings.py"]
SECONDS = {"tests/e2e/test_lab.py": 140, "tests/e2e/test_scaleout.py": 600,
           "tests/e2e/test_scaleout_ha.py": 430, "tests/e2e/test_deploy.py": 180,
           "tests/unit/test_render.py": 7, "tests/unit/test_hostile_settings.py": 100}


def _in_order(order: dict[str, tuple[str, int]]) -> list[str]:
    return sorted(order, key=lambda module: order[module][1])


def test_longest_unit_first_and_the_shared_lab_in_its_order() -> None:
    order = PLUGIN.lane_order(MODULES, SECONDS)
    assert _in_order(order) == [
        "tests/e2e/test_lab.py", "tests/e2e/test_scaleout.py",
        "tests/e2e/test_scaleout_ha.py", "tests/e2e/test_deploy.py",
        "tests/unit/test_hostile_settings.py",
        "tests/e2e/test_new.py",  # not on record: the guess, 60 s
        "tests/unit/test_render.py"]
    assert {order[m][0] for m in MODULES[:3]} == {"lab-ceph"}


def test_unit_tests_first_when_asked() -> None:
    order = PLUGIN.lane_order(MODULES, SECONDS, unit_tests_first=True)
    assert _in_order(order) == [
        "tests/unit/test_hostile_settings.py", "tests/unit/test_render.py",
        "tests/e2e/test_lab.py", "tests/e2e/test_scaleout.py",
        "tests/e2e/test_scaleout_ha.py", "tests/e2e/test_deploy.py", "tests/e2e/test_new.py"]
