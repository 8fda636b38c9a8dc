"""Which server folders the kit owns: a marker file in each folder deploy created.

registry_config_dir (and its certs/ and auth/) and registry_data_dir are settings: they can
name a folder that was there before the kit (the data of a registry first run by hand, a
shared config folder). Deploy creates a folder only when the probe saw none, and marks it
then (`.registry-kit-owned`, root, 0644); a folder that was already there is used as it is
("adopted": no marker, its mode and owner left alone). Teardown removes the kit's own files
by name from every folder, but a folder itself only when it carries a root-owned marker
and holds nothing else; registry_purge_data deletes a data folder only when it is marked.

Folders of a deploy made before markers existed carry none, so they count as adopted:
teardown keeps and names them. That is the safe side: the kit cannot tell a folder it made
from one it was pointed at (the same container used both), and a wrong guess on the data
folder deletes images. `touch PATH/.registry-kit-owned` (as root) hands one to the kit.
Everything here is decided from the probe (registry_kit.facts), before any change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pyinfra import host

from registry_kit.commands import q
from registry_kit.facts import HostState
from registry_kit.operations import files
from registry_kit.operations.typed import operation

MARKER = ".registry-kit-owned"
MARKER_MODE = "0644"
# Suffixes of the kit's temporary files next to a file it writes (files.managed_file,
# scripts/registry-gc.sh): left behind only by a run that was interrupted.
STAGING_SUFFIXES = (".registry-kit-new", ".registry-kit-saved")


def marker_path(folder: str) -> str:
    return f"{folder}/{MARKER}"


def marker_content(setting: str) -> bytes:
    # Fixed text (no date or run id): a second deploy must find it unchanged.
    return (f"registry-kit created this folder ({setting}) and owns it.\n"
            "teardown.py deletes it once nothing but the kit's files is left in it;\n"
            "registry_purge_data=True deletes a data folder with everything in it.\n"
            "A folder without this file is never deleted by registry-kit.\n").encode()


def owned(state: HostState, folder: str) -> bool:
    """The folder carries the kit's marker, owned by root (a marker another user could
    plant must not make root delete a folder)."""
    marker = state.files.get(marker_path(folder))
    return marker is not None and marker.owner == "root"


def with_staging(names: Iterable[str]) -> set[str]:
    return {variant for name in names for variant in (name, *(name + suffix for suffix in
                                                             STAGING_SUFFIXES))}


@dataclass(frozen=True)
class FolderPlan:
    """What teardown does with one folder: delete these files (full paths), then the folder
    itself or not; `kept` is one line saying why the folder stays (None: removed or gone)."""

    folder: str
    files: tuple[str, ...] = ()
    remove_folder: bool = False
    kept: str | None = None

    @property
    def changes(self) -> bool:
        return bool(self.files) or self.remove_folder


def plan_folder(state: HostState, folder: str, kit_names: Iterable[str], *,
                needs_marker: bool = True, removed_subfolders: Iterable[str] = ()) -> FolderPlan:
    """Teardown of one folder the probe listed (state.entries): the kit's files go; the
    folder goes when it is the kit's (marked, or needs_marker=False for folders named after
    the kit) and nothing else is left in it. removed_subfolders: entries that other plans
    remove first. The marker stays while the folder stays, so a second teardown finds the
    same state and changes nothing."""
    if folder not in state.dirs:
        return FolderPlan(folder)
    entries = state.entries.get(folder, set())
    kit = with_staging(kit_names)
    files = tuple(f"{folder}/{name}" for name in sorted(entries & kit))
    others = entries - kit - {MARKER} - set(removed_subfolders)
    if needs_marker and not owned(state, folder):
        return FolderPlan(folder, files, kept=f"kept {folder}: registry-kit did not create "
                          f"it (no {MARKER} in it)")
    if others:
        shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
        return FolderPlan(folder, files, kept=f"kept {folder}: it holds other files ({shown})")
    marker = (marker_path(folder),) if MARKER in entries else ()
    return FolderPlan(folder, files + marker, remove_folder=True)


def folder_action(state: HostState, folder: str) -> str:
    """Deploy: "create" (and mark) a folder the probe did not see, "keep" a marked one (its
    mode and marker kept as they should be), "adopt" one that was there without a marker."""
    if folder not in state.dirs:
        return "create"
    return "keep" if owned(state, folder) else "adopt"


def create_command(folder: str, mode: str, setting: str) -> str:
    """Create `folder` with its marker already inside: built under a staging name and
    renamed into place, so a run killed half way never leaves the folder unmarked (which
    would make the kit's own folder look adopted for good). Parents are created as usual
    (unmarked: only the folder a setting names is the kit's)."""
    staging = folder + STAGING_SUFFIXES[0]
    parent = folder.rsplit("/", 1)[0] or "/"
    marker = marker_path(staging)
    return (f"mkdir -p {q(parent)} && rm -rf {q(staging)} && "
            f"install -d -m {q(mode)} -o root -g root {q(staging)} && "
            f"printf %s {q(marker_content(setting).decode())} > {q(marker)} && "
            f"chmod {MARKER_MODE} {q(marker)} && mv -T {q(staging)} {q(folder)}")


@operation()
def owned_dir(folder: str, mode: str, setting: str, state: HostState):
    """Deploy: create and mark a folder the probe did not see; keep a marked one's mode and
    marker; leave a folder that was there before the kit as it is (adopted)."""
    action = folder_action(state, folder)
    if action == "create":
        yield create_command(folder, mode, setting)
        return
    if action == "adopt":
        host.noop(f"{folder} was there before registry-kit: used as it is, never deleted")
        return
    yield from files.managed_dir._inner(folder, mode, state.dirs.get(folder))
    yield from files.managed_file._inner(marker_path(folder), marker_content(setting),
                                          MARKER_MODE, state.files.get(marker_path(folder)))


@operation()
def remove_folders(plans: list[FolderPlan]):
    """The kit's files in each folder, then the folders that are left empty (in order:
    subfolders first); never `rm -rf` (see this module's docstring)."""
    files = [path for plan in plans for path in plan.files]
    folders = [plan.folder for plan in plans if plan.remove_folder]
    if not files and not folders:
        kept = [plan.folder for plan in plans if plan.kept]
        host.noop("nothing of the kit's left" + (f" (kept: {', '.join(kept)})" if kept else ""))
        return
    if files:
        yield "rm -f " + " ".join(q(path) for path in files)
    if folders:
        yield "rmdir " + " ".join(q(path) for path in folders)
