"""registry_kit.pyinfra_patches gives pyinfra the same operation order and global argument
types as pyinfra's own functions, from the same call stacks."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyinfra
import pytest

from registry_kit import pyinfra_patches

# A deploy file as pyinfra runs one (compiled with its file name, then exec'd): nested
# calls, a loop and a branch, each reaching `probe` from a different line.
DEPLOY = '''
def leaf(probe):
    return probe()

def middle(probe, results):
    for _ in range(2):
        results.append(leaf(probe))
    if results:
        results.append(leaf(probe))

def plan(probe, results):
    middle(probe, results)
    results.append(probe())
'''


def _both(state: SimpleNamespace) -> tuple[list[int], list[int]]:
    # One line: both functions see the same line numbers in every frame.
    return pyinfra_patches.ORIGINAL_ORDER(state), pyinfra_patches.frame_order(state)


def _run_deploy(tmp_path: Path, deploy_name: str, state: SimpleNamespace,
                on_disk: bool) -> list[tuple[list[int], list[int]]]:
    if on_disk:
        (tmp_path / deploy_name).write_text(DEPLOY)
    namespace: dict = {"__file__": deploy_name}
    exec(compile(DEPLOY, deploy_name, "exec"), namespace)
    results: list[tuple[list[int], list[int]]] = []
    namespace["plan"](lambda: _both(state), results)
    return results


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("on_disk", [True, False])
@pytest.mark.parametrize("deploy_name", ["deploy.py", "sub/deploy.py", "ABSOLUTE"])
def test_frame_order_matches_pyinfra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     is_cli: bool, on_disk: bool, deploy_name: str) -> None:
    monkeypatch.chdir(tmp_path)  # pyinfra gets the deploy file's name as typed
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    (tmp_path / "sub").mkdir()
    if deploy_name == "ABSOLUTE":
        deploy_name = str(tmp_path / "deploy.py")
    state = SimpleNamespace(current_deploy_filename=deploy_name, current_op_file_number=3)
    results = _run_deploy(tmp_path, deploy_name, state, on_disk)
    assert len(results) == 4
    for original, patched in results:
        assert patched == original
    orders = [patched for _, patched in results]
    # In call order; the loop calls twice from one line (pyinfra numbers such repeats).
    assert orders == sorted(orders) and len(set(map(tuple, orders))) == 3
    if is_cli:
        assert all(order[0] == 3 for order in orders)


@pytest.mark.parametrize("deploy_name", [None, "", "not-on-the-stack.py"])
def test_frame_order_without_the_deploy_file_on_the_stack(
        deploy_name: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyinfra, "is_cli", True)
    state = SimpleNamespace(current_deploy_filename=deploy_name, current_op_file_number=0)
    original, patched = _both(state)
    assert patched == original
    if deploy_name:  # pyinfra then keeps no line numbers of the stack
        assert patched == [0]


def test_cached_global_arguments_match_pyinfra() -> None:
    first = pyinfra_patches.cached_global_arguments()
    assert first == pyinfra_patches.ORIGINAL_ARGUMENTS()
    first.append(("changed by a caller", str))
    assert pyinfra_patches.cached_global_arguments() == pyinfra_patches.ORIGINAL_ARGUMENTS()


def test_install_patches_once_and_only_pyinfra_3(monkeypatch: pytest.MonkeyPatch) -> None:
    operation_module = pyinfra_patches._operation_module
    arguments_module = pyinfra_patches._arguments_module
    monkeypatch.setattr(operation_module, "get_operation_order_from_stack",
                        pyinfra_patches.ORIGINAL_ORDER)
    monkeypatch.setattr(arguments_module, "all_global_arguments",
                        pyinfra_patches.ORIGINAL_ARGUMENTS)
    monkeypatch.setattr(pyinfra, "__version__", "4.0.0")
    assert pyinfra_patches.install() is False
    assert operation_module.get_operation_order_from_stack is pyinfra_patches.ORIGINAL_ORDER

    monkeypatch.setattr(pyinfra, "__version__", "3.10.0")
    assert pyinfra_patches.install() is True
    assert pyinfra_patches.install() is True  # again: no change
    assert operation_module.get_operation_order_from_stack is pyinfra_patches.frame_order
    assert arguments_module.all_global_arguments is pyinfra_patches.cached_global_arguments

    # Someone else replaced pyinfra's function: leave theirs alone.
    def other(state: object) -> list[int]:
        return []
    monkeypatch.setattr(operation_module, "get_operation_order_from_stack", other)
    assert pyinfra_patches.install() is False
    assert operation_module.get_operation_order_from_stack is other


def test_the_install_dir_check_uses_pyinfras_own_path() -> None:
    install_dir = pyinfra_patches._util_module.PYINFRA_INSTALL_DIR
    assert os.path.isdir(install_dir)
    assert pyinfra.__file__.startswith(install_dir)


def test_untested_pyinfra_runs_unpatched_and_says_so_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    operation_module = pyinfra_patches._operation_module
    monkeypatch.setattr(operation_module, "get_operation_order_from_stack",
                        pyinfra_patches.ORIGINAL_ORDER)
    for version in ("3.10.1", "3.9.0", "3.10.1"):
        assert pyinfra_patches.install(version) is False
    assert operation_module.get_operation_order_from_stack is pyinfra_patches.ORIGINAL_ORDER
    said = [r.getMessage() for r in caplog.records if "not a version" in r.getMessage()]
    assert said == [
        "registry-kit: pyinfra 3.10.1 is not a version its speed-ups were tested on (3.10.0); "
        "running without them",
        "registry-kit: pyinfra 3.9.0 is not a version its speed-ups were tested on (3.10.0); "
        "running without them"]


def test_one_setting_switches_the_patches_for_the_process(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """registry_pyinfra_patches: applied with the run's validation (once per run, installed
    once per process); False on a host of the run puts pyinfra's own functions back."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_inventory, ctx_state

    from registry_kit.model.inventory import validated_settings

    operation_module = pyinfra_patches._operation_module
    arguments_module = pyinfra_patches._arguments_module
    monkeypatch.setattr(operation_module, "get_operation_order_from_stack",
                        pyinfra_patches.ORIGINAL_ORDER)
    monkeypatch.setattr(arguments_module, "all_global_arguments",
                        pyinfra_patches.ORIGINAL_ARGUMENTS)
    monkeypatch.setattr(pyinfra, "__version__", "3.10.0")
    monkeypatch.chdir(tmp_path)
    for wanted in (True, True, False, True):
        inventory = Inventory((["h1", "h2"], {"registry_anonymous_acknowledged": True}),
                              registry_servers=(["h1", "h2"], {}))
        inventory.host_data["h2"] = {"registry_pyinfra_patches": wanted}
        state = State(inventory, Config())
        with ctx_state.use(state), ctx_inventory.use(inventory):
            validated_settings()
        patched = operation_module.get_operation_order_from_stack is pyinfra_patches.frame_order
        assert patched is wanted
        assert (arguments_module.all_global_arguments is
                pyinfra_patches.cached_global_arguments) is wanted
    assert pyinfra_patches.use(False) is False
    assert operation_module.get_operation_order_from_stack is pyinfra_patches.ORIGINAL_ORDER
