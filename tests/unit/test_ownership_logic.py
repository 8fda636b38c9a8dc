"""Unit tests for the ownership markers (operations/ownership.py) and the teardown decisions
built on them: which folders deploy creates and marks, which files and folders teardown
removes, what a purge does with a folder the kit did not create. Facts in, plan out; the
probe's folder listing and the create command run in a real shell."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_kit.facts import FileState, HostState, parse_probe, probe_command
from registry_kit.jobs import deploy as main
from registry_kit.jobs import teardown
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.operations import ownership
from registry_kit.operations.ownership import MARKER, FolderPlan, folder_action, owned, plan_folder
from registry_kit.roles import server

CONFIG = "/etc/registry-kit"
CERTS, AUTH = f"{CONFIG}/certs", f"{CONFIG}/auth"
DATA = "/var/lib/registry-kit/data"


def _file(owner: str = "root") -> FileState:
    return FileState(sha256="a" * 64, mode="644", owner=owner, group=owner)


def host_state(folders: dict[str, set[str]], marked: set[str] | None = None,
               marker_owner: str = "root") -> HostState:
    """A probe snapshot: each folder with its entries; `marked` folders carry a marker."""
    state, marked = HostState(), marked or set()
    for folder, names in folders.items():
        state.dirs[folder] = "700"
        state.entries[folder] = set(names) | ({MARKER} if folder in marked else set())
        if folder in marked:
            state.files[f"{folder}/{MARKER}"] = _file(marker_owner)
    return state


# --------------------------------------------------------------------------- deploy


def test_deploy_creates_absent_keeps_marked_adopts_the_rest() -> None:
    state = host_state({CONFIG: {"config.yml"}, "/srv/registry": {"docker"}}, marked={CONFIG})
    assert folder_action(state, CERTS) == "create"
    assert folder_action(state, CONFIG) == "keep"
    assert folder_action(state, "/srv/registry") == "adopt"


def test_a_marker_another_user_owns_does_not_count() -> None:
    state = host_state({"/srv/shared": set()}, marked={"/srv/shared"}, marker_owner="bob")
    assert not owned(state, "/srv/shared")
    assert folder_action(state, "/srv/shared") == "adopt"


def test_marker_text_is_fixed_and_names_the_setting() -> None:
    text = ownership.marker_content("registry_data_dir")
    assert text == ownership.marker_content("registry_data_dir")  # no date: idempotent
    assert b"registry_data_dir" in text and b"registry-kit" in text


def test_server_probe_asks_for_every_marker_and_lists_nothing(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_config_dir="/etc/rk", registry_data_dir="/srv/reg")
    probe = server.probe_args(settings)
    for folder in ("/etc/rk", "/etc/rk/certs", "/etc/rk/auth", "/srv/reg"):
        assert f"{folder}/{MARKER}" in probe["files"]
        assert folder in probe["dirs"]
    # The deploy's probe (and so a no-op deploy) stays what it was: no folder listing.
    assert "listings" not in probe
    assert [folder for folder, _ in server.owned_folders(settings)] == \
        ["/etc/rk", "/etc/rk/certs", "/etc/rk/auth", "/srv/reg"]
    assert main.DEFAULT_GROUPS.servers == "registry_servers"  # the plan merges server.probe_args


def _run(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          timeout=10, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="install -o root needs root")
def test_create_command_leaves_a_marked_folder(tmp_path: Path) -> None:
    folder = tmp_path / "new parent" / "data"
    result = _run(ownership.create_command(str(folder), "0700", "registry_data_dir"))
    assert result.returncode == 0, result.stderr
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    marker = folder / MARKER
    assert marker.read_bytes() == ownership.marker_content("registry_data_dir")
    assert oct(marker.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["data"]  # no staging left
    # A half-built staging folder from a killed run is replaced, not an obstacle.
    shutil.rmtree(folder)
    (tmp_path / "new parent" / "data.registry-kit-new").mkdir()
    assert _run(ownership.create_command(str(folder), "0700", "x")).returncode == 0
    assert (folder / MARKER).exists()


# --------------------------------------------------------------------------- teardown


def test_owned_folder_with_only_kit_files_goes() -> None:
    state = host_state({CERTS: {"server.crt", "server.key", "ca.crt.registry-kit-new"}},
                       marked={CERTS})
    plan = plan_folder(state, CERTS, ["server.crt", "server.key", "ca.crt"])
    assert plan == FolderPlan(CERTS, files=(f"{CERTS}/ca.crt.registry-kit-new",
                                            f"{CERTS}/server.crt", f"{CERTS}/server.key",
                                            f"{CERTS}/{MARKER}"), remove_folder=True)


def test_owned_folder_with_foreign_files_keeps_them_and_its_marker() -> None:
    state = host_state({CONFIG: {"config.yml", "notes.txt"}}, marked={CONFIG})
    plan = plan_folder(state, CONFIG, ["config.yml"])
    assert plan.files == (f"{CONFIG}/config.yml",)
    assert not plan.remove_folder
    assert plan.kept == f"kept {CONFIG}: it holds other files (notes.txt)"


def test_folder_without_marker_loses_only_the_kit_files() -> None:
    state = host_state({"/etc/rk-shared": {"config.yml", "config.yml.registry-kit-saved",
                                           "theirs.conf", "certs"}})
    plan = plan_folder(state, "/etc/rk-shared", ["config.yml"])
    assert plan.files == ("/etc/rk-shared/config.yml",
                          "/etc/rk-shared/config.yml.registry-kit-saved")
    assert not plan.remove_folder
    assert plan.kept == f"kept /etc/rk-shared: registry-kit did not create it (no {MARKER} in it)"


def test_empty_folder_without_marker_is_kept_too() -> None:
    """A folder the kit did not create stays even when nothing is left in it."""
    plan = plan_folder(host_state({"/etc/ssl": set()}), "/etc/ssl", ["config.yml"])
    assert not plan.changes and plan.kept


def test_kit_named_folders_need_no_marker() -> None:
    state = host_state({layout.SCRIPTS_DIR: set(server.SCRIPT_NAMES)})
    plan = plan_folder(state, layout.SCRIPTS_DIR, server.SCRIPT_NAMES, needs_marker=False)
    assert plan.remove_folder and len(plan.files) == len(server.SCRIPT_NAMES)
    plan = plan_folder(host_state({layout.SCRIPTS_DIR: {"local-hook.sh"}}),
                       layout.SCRIPTS_DIR, server.SCRIPT_NAMES, needs_marker=False)
    assert not plan.changes and plan.kept and "local-hook.sh" in plan.kept


def test_scripts_folder_goes_with_every_script_a_server_role_installs() -> None:
    """The stop 34 disk-guard e2e with metrics on: the facts server's script was missing
    from the list, so the first teardown kept the (emptied) folder and a second removed it."""
    installed = {value for name, value in vars(layout).items()
                 if name.endswith("_SCRIPT_NAME") and not name.startswith("LB_")}
    assert installed >= {layout.FACTS_SCRIPT_NAME, layout.RETENTION_SCRIPT_NAME}
    assert installed <= set(server.SERVER_SCRIPTS)
    state = host_state({layout.SCRIPTS_DIR: {*server.SERVER_SCRIPTS, "retention-planner"}})
    plan = server.scripts_plan(state)
    assert plan.remove_folder and len(plan.files) == len(server.SERVER_SCRIPTS)
    kept = server.scripts_plan(host_state({layout.SCRIPTS_DIR: {"local-hook.sh"}}))
    assert not kept.remove_folder and "local-hook.sh" in kept.kept


def test_absent_folder_plans_nothing() -> None:
    assert plan_folder(HostState(), CONFIG, ["config.yml"]) == FolderPlan(CONFIG)


def test_config_plans_remove_subfolders_before_the_folder(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    state = host_state({CONFIG: {"config.yml", "certs", "auth"},
                        CERTS: {"server.crt", "server.key", "ca.crt"}, AUTH: {"htpasswd"}},
                       marked={CONFIG, CERTS, AUTH})
    plans = server.config_plans(settings, state)
    assert [(plan.folder, plan.remove_folder, plan.kept) for plan in plans] == \
        [(CERTS, True, None), (AUTH, True, None), (CONFIG, True, None)]
    # certs/ not the kit's (a deploy before markers): it stays, and so does its parent.
    state.files.pop(f"{CERTS}/{MARKER}")
    state.entries[CERTS].discard(MARKER)
    plans = server.config_plans(settings, state)
    assert [(plan.folder, plan.remove_folder) for plan in plans] == \
        [(CERTS, False), (AUTH, True), (CONFIG, False)]
    assert plans[2].kept == f"kept {CONFIG}: it holds other files (certs)"
    assert f"{CERTS}/server.key" in plans[0].files  # the kit's files go all the same


def _after(state: HostState, plans: list[FolderPlan]) -> HostState:
    """The probe snapshot after the plans ran (files deleted, folders rmdir'ed)."""
    for plan in plans:
        for path in plan.files:
            folder, _, name = path.rpartition("/")
            state.entries[folder].discard(name)
            state.files.pop(path, None)
        if plan.remove_folder:
            del state.dirs[plan.folder]
            del state.entries[plan.folder]
            parent, _, name = plan.folder.rpartition("/")
            state.entries.get(parent, set()).discard(name)
    return state


@pytest.mark.parametrize("marked", [{CONFIG, CERTS, AUTH}, set(), {CERTS, AUTH}])
def test_second_teardown_changes_nothing(make_settings: Callable[..., Settings],
                                         marked: set[str]) -> None:
    settings = make_settings()
    state = host_state({CONFIG: {"config.yml", "certs", "auth", "mine.txt"},
                        CERTS: {"server.crt", "server.key", "ca.crt"}, AUTH: {"htpasswd"}},
                       marked=marked)
    first = server.config_plans(settings, state)
    assert any(plan.changes for plan in first)
    second = server.config_plans(settings, _after(state, first))
    assert not any(plan.changes for plan in second)
    assert [plan.kept for plan in first if plan.folder == CONFIG] == \
        [plan.kept for plan in second if plan.folder == CONFIG]


@pytest.mark.parametrize(("purge", "marked", "present", "action"), [
    (True, True, True, "purge"),
    (True, False, True, "refuse"),
    (False, True, True, "keep"),
    (True, True, False, "absent"),
])
def test_data_action(make_settings: Callable[..., Settings], purge: bool, marked: bool,
                     present: bool, action: str) -> None:
    settings = make_settings(registry_data_dir="/srv/registry", registry_purge_data=purge)
    state = host_state({"/srv/registry": {"docker"}} if present else {},
                       marked={"/srv/registry"} if marked and present else set())
    assert server.data_action(settings, state) == action


def test_purge_refusal_names_host_and_path(make_settings: Callable[..., Settings]) -> None:
    line = server.purge_refusal(make_settings(registry_data_dir="/srv/registry"))
    assert line.startswith("reg-host-1: registry_purge_data=True: KEPT /srv/registry: ")
    assert "\n" not in line and MARKER in line


def test_teardown_probe_lists_the_folders_it_may_remove(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_config_dir="/etc/rk")
    probe = teardown.probe_args(settings, True, True)
    for folder in ("/etc/rk", "/etc/rk/certs", "/etc/rk/auth", layout.SCRIPTS_DIR,
                   layout.RUNTIME_DIR, "/etc/docker/certs.d/registry.example.internal:5000"):
        assert folder in probe["listings"] and folder in probe["dirs"]
    assert settings.registry_data_dir not in probe["listings"]  # rm -rf or kept: no listing


# --------------------------------------------------------------------------- probe listing


def test_listing_in_a_real_shell(tmp_path: Path) -> None:
    folder = tmp_path / "with space"
    folder.mkdir()
    for name in ("config.yml", MARKER, "..odd", "a b"):
        (folder / name).write_text("x")
    (folder / "certs").mkdir()
    (folder / "dangling").symlink_to(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    command = probe_command(dirs=[str(folder), str(empty)],
                            listings=[str(folder), str(empty), str(tmp_path / "missing")])
    # Only the listing part matters here: run it alone (the rest needs docker, systemctl).
    listing = command[command.index("echo @@registry-kit:entries"):]
    result = _run(listing)
    assert result.returncode == 0, result.stderr
    state = parse_probe(result.stdout.split("\n")[:-1])
    assert state.entries == {str(folder): {"config.yml", MARKER, "..odd", "a b", "certs",
                                           "dangling"}}
