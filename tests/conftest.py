"""Suite-wide plugin: time on record per module, and the lanes of a parallel run.

Time on record: every test's setup, call and teardown are summed per module (so a module's
fixtures, the lab's start included, count where they run) and pytest's summary ends with a
table (module, tests, seconds, lane) and the run's wall time. The same figures are written
to `.test-output/durations.json` (or `$REGISTRY_KIT_TEST_OUTPUT/durations.json`), from
which `tests/durations.json` is refreshed after a full run (`make durations`).

Lanes: under pytest-xdist (`make test` runs `-n 2`), each e2e module is
one work unit (its module-scoped deploys are shared by its tests), modules are handed out
longest first by their recorded time, and each worker brings up a lab namespace of its own
(tests/e2e/conftest.py). Modules that must share one lab run in one unit, in this order:
test_lab.py counts the hosts of its namespace, so it runs before the Ceph host exists, and
test_scaleout_ha.py reuses the Ceph that test_scaleout.py brought up.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
RECORDED = TESTS / "durations.json"
# Modules that run in one lane, in this order (see the docstring).
SAME_LANE = {"tests/e2e/test_lab.py": ("lab-ceph", 0),
             "tests/e2e/test_scaleout.py": ("lab-ceph", 1),
             "tests/e2e/test_scaleout_ha.py": ("lab-ceph", 2)}
UNRECORDED_SECONDS = 60.0  # a new module's guess until a full run records it
UNIT_TESTS = "tests/unit/"
# Set by .ci/run, whose lab images are built beside the tests on a fresh machine: the unit
# tests (which need no lab) run first, while the e2e lanes could only wait for the images.
UNIT_TESTS_FIRST_ENV = "REGISTRY_KIT_UNIT_TESTS_FIRST"

_seconds: dict[str, float] = defaultdict(float)
_tests: dict[str, set[str]] = defaultdict(set)
_lanes: dict[str, set[str]] = defaultdict(set)
_started = time.monotonic()


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def recorded() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(RECORDED.read_text()).items()}
    except (OSError, ValueError):
        return {}


def lane_order(modules: list[str], seconds: dict[str, float],
               unit_tests_first: bool = False) -> dict[str, tuple[str, int]]:
    """module -> (work unit, rank): units longest first (a unit's time is the sum of its
    modules'), SAME_LANE modules in their fixed order inside their unit. With
    `unit_tests_first`, the unit tests' modules (no lab) come before every e2e unit."""
    unit_seconds: dict[str, float] = defaultdict(float)
    for module in modules:
        unit_seconds[unit_of(module)] += seconds.get(module, UNRECORDED_SECONDS)
    ranked = sorted(unit_seconds, key=lambda unit: (
        not (unit_tests_first and unit.startswith(UNIT_TESTS)), -unit_seconds[unit], unit))
    rank = {unit: index for index, unit in enumerate(ranked)}
    return {m: (unit_of(m), rank[unit_of(m)] * 10 + SAME_LANE.get(m, ("", 0))[1])
            for m in modules}


def unit_of(module: str) -> str:
    return SAME_LANE.get(module, (module, 0))[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # not an xdist worker: files run in the order pytest collects them
    # Every worker collects the same order, which is the order xdist hands units out.
    order = lane_order(sorted({module_of(item.nodeid) for item in items}), recorded(),
                       unit_tests_first=os.environ.get(UNIT_TESTS_FIRST_ENV) == "1")
    items.sort(key=lambda item: order[module_of(item.nodeid)][1])  # stable inside a module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load-scope scheduler with a module (or a SAME_LANE group) as the unit, handed
    out in collection order. (Not `--dist loadgroup`: on pytest 9 its group suffix no longer
    reaches the test ids, and it would split every module into single tests.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(module_of(nodeid))

    config.option.loadscopereorder = False  # keep longest first, not most tests first
    return ModuleUnits(config, log)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = module_of(report.nodeid)
    _seconds[module] += report.duration
    _tests[module].add(report.nodeid)
    worker = getattr(report, "node", None)  # xdist: the worker that ran it
    _lanes[module].add(worker.gateway.id if worker is not None else "main")


def output_dir() -> Path:
    return Path(os.environ.get("REGISTRY_KIT_TEST_OUTPUT") or ROOT / ".test-output")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not _seconds:
        return  # a worker: the controller prints the table
    wall = time.monotonic() - _started
    write = terminalreporter.write_line
    terminalreporter.section("time per module (setup + tests + teardown, longest first)")
    write(f"{'module':44} {'tests':>5} {'seconds':>8}  lane")
    for module in sorted(_seconds, key=lambda m: -_seconds[m]):
        write(f"{module:44} {len(_tests[module]):5d} {_seconds[module]:8.1f}  "
              f"{','.join(sorted(_lanes[module]))}")
    write(f"{'sum over modules':44} {sum(len(t) for t in _tests.values()):5d} "
          f"{sum(_seconds.values()):8.1f}")
    write(f"wall time of the run: {wall:.1f} s")
    target = output_dir()
    target.mkdir(parents=True, exist_ok=True)
    (target / "durations.json").write_text(json.dumps(
        {m: round(s, 1) for m, s in sorted(_seconds.items())}, indent=1) + "\n")
