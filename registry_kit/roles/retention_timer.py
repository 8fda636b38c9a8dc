"""Scheduled retention on registry servers (registry_retention_schedule, filesystem storage
only): a systemd service and timer running scripts/registry-retention.py, which applies
registry_retention_rules on the server as retention.py --data registry_retention_apply=True
does from the control machine (registry_kit.jobs.retention), with the same planner
(registry_kit/model/retention.py and the access patterns it uses, installed beside the
runner: one source), the same listing command (below) and registry-gc.sh's steps. The rules
reach it as JSON rendered at deploy (no secret in it). Its runs and the GC timer's take one
lock (gc_timer.locked), so the two never run at once. Removed when unset and by teardown.py.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from registry_kit import package_data
from registry_kit.commands import q
from registry_kit.facts import HostState, first_line
from registry_kit.model import layout
from registry_kit.model.layout import ServerLayout
from registry_kit.model.settings import Settings
from registry_kit.operations import files, packages, services
from registry_kit.operations.typed import operation
from registry_kit.render import textfile
from registry_kit.roles import server
from registry_kit.roles.gc_timer import (
    calendar_sections,
    calendar_timer,
    gc_arguments,
    locked,
    timer_status_command,
)

TIMER_NAME = layout.RETENTION_TIMER_NAME
SERVICE = layout.RETENTION_SERVICE_UNIT
TIMER = layout.RETENTION_TIMER_UNIT
RUNNER = layout.script(layout.RETENTION_SCRIPT_NAME)
# The planner's modules, as the package holds them, under the runner's import folder.
PLANNER_MODULES = ("model/access.py", "model/retention.py")
PLANNER_PACKAGES = ("", "model")  # each with an __init__.py of its own (below)
PACKAGE_INIT = b"# Managed by registry-kit: registry-retention.py imports the planner.\n"
PACKAGES = ("python3",)
IDENTIFIER = "registry-kit-retention"  # the journal's name for its lines (not "flock")

# Every tag's current link and every manifest revision link, with its time, sorted: listed
# when planning and again, read-only, right before deleting (in the storage's v2 folder).
LISTING = ("find repositories \\( -path '*/_manifests/tags/*/current/link' -o -path "
           "'*/_manifests/revisions/sha256/*/link' \\) -printf '%T@ %p\\n' | LC_ALL=C sort")
FINGERPRINT = "printf '%s\\n' \"$list\" | sha256sum | cut -c1-64"
MANIFEST_MAX = 4 << 20  # the registry refuses larger manifests


def listing_command(settings: Settings) -> str:
    """The one read-only command that lists a server's storage (retention.read_listing),
    run by retention.py over SSH and by the scheduled runner on the server."""
    v2 = layout.ServerLayout.of(settings).storage_v2
    manifests = (
        "printf '%s\\n' \"$list\" | sed -n "
        "'s|.*/_manifests/revisions/sha256/\\([0-9a-f]\\{64\\}\\)/link$|\\1|p' | sort -u | "
        "while read -r d; do p=blobs/sha256/$(printf %.2s \"$d\")/$d/data; "
        "[ -f \"$p\" ] || continue; printf 'M %s %s ' \"$d\" \"$(stat -c %s \"$p\")\"; "
        f"head -c {MANIFEST_MAX} \"$p\" | tr -d '\\r\\n'; echo; done")
    return (f"echo \"N $(date +%s)\"; cd {q(v2)} 2>/dev/null && [ -d repositories ] || "
            f"exit 0; list=$({LISTING}); echo \"F $({FINGERPRINT})\"; "
            "printf '%s\\n' \"$list\" | sed 's/^/P /'; "
            "find repositories -path '*/_manifests/tags/*/current/link' "
            "-exec awk '{print \"L \" FILENAME \" \" $0}' {} +; " + manifests)


def wanted(settings: Settings) -> bool:
    # The settings refuse a schedule off filesystem storage or without rules.
    return settings.registry_retention_schedule is not None


def planner_dirs() -> list[str]:
    root = posixpath.join(layout.RETENTION_PLANNER_DIR, "registry_kit")
    return [layout.RETENTION_PLANNER_DIR, *(posixpath.join(root, p).rstrip("/")
                                             for p in PLANNER_PACKAGES)]


def planner_files() -> dict[str, bytes]:
    """Installed path -> content: the package's own modules, and empty packages."""
    root = posixpath.join(layout.RETENTION_PLANNER_DIR, "registry_kit")
    found = {posixpath.join(root, p, "__init__.py").replace("//", "/"): PACKAGE_INIT
             for p in PLANNER_PACKAGES}
    found.update({posixpath.join(root, name): package_data.module(name)
                  for name in PLANNER_MODULES})
    return found


def probe_args(settings: Settings) -> dict[str, Any]:
    return {"files": [SERVICE, TIMER, RUNNER, ServerLayout.of(settings).retention_config,
                      *planner_files()],
            "dirs": [layout.SCRIPTS_DIR, *planner_dirs()], "commands": list(PACKAGES)}


def runner_config(settings: Settings) -> bytes:
    """The runner's JSON: the rules as the setting writes them, and where everything is."""
    from registry_kit.model import retention  # imported only where rules are set (issue 29)

    args = [a for a in gc_arguments(settings, dry_run=False) if a != "--delete-untagged"]
    config = {"host": settings.host,
              "rules": [retention.rule_document(r) for r in settings.registry_retention_rules],
              "planner": layout.RETENTION_PLANNER_DIR,
              "storage": ServerLayout.of(settings).storage_v2,
              "listing": listing_command(settings), "gc": args,
              "record": ServerLayout.of(settings).retention_record,
              "guard_flag": ServerLayout.of(settings).disk_guard_flag,
              "facts": layout.FACTS_RETENTION}
    return (json.dumps(config, indent=1, sort_keys=True) + "\n").encode()


def runner_arguments(settings: Settings) -> list[str]:
    return locked([layout.PYTHON, RUNNER, ServerLayout.of(settings).retention_config])


def unit(sections: dict[str, list[str]]) -> bytes:
    return textfile.systemd_unit("Managed by registry-kit (registry_retention_schedule): "
                                 "replaced on the next deploy.", sections).encode()


def service_unit(settings: Settings) -> bytes:
    exec_start = textfile.systemd_exec_args(runner_arguments(settings), file=SERVICE,
                                            field="ExecStart")
    return unit({"Unit": ["Description=registry-kit: apply the retention rules (registry "
                          "read-only while it deletes and collects)",
                          "Requires=docker.service", "After=docker.service"],
                 "Service": ["Type=oneshot", f"SyslogIdentifier={IDENTIFIER}",
                             f"ExecStart={exec_start}"]})


def timer_unit(settings: Settings) -> bytes:
    return unit(calendar_sections(settings.registry_retention_schedule, TIMER,
                                  "registry_retention_schedule",
                                  "registry-kit: scheduled retention"))


@operation()
def install_timer(settings: Settings, state: HostState):
    units = {SERVICE: service_unit(settings), TIMER: timer_unit(settings)}
    yield from calendar_timer(units, TIMER_NAME, "registry_retention_schedule",
                              str(settings.registry_retention_schedule), state)


def retention_remove(settings: Settings, state: HostState) -> None:
    """The units, the runner, the planner's files and folders, the rules; the record stays
    (status.py's last retention run)."""
    services.remove_timer(state, TIMER_NAME, [TIMER, SERVICE], "no retention timer",
                          name="Remove the retention timer")
    # The planner's folder goes whole (rm -rf), with its files.
    paths = [RUNNER, ServerLayout.of(settings).retention_config, layout.RETENTION_PLANNER_DIR]
    files.absent_paths(paths, [*state.files, *state.dirs],
                       name="Remove the retention runner and its planner")


def retention_deploy(settings: Settings, state: HostState) -> None:
    """deploy.py, servers: the timer and what it runs while registry_retention_schedule is
    set (each server with filesystem storage of its own), else none."""
    if not wanted(settings):
        retention_remove(settings, state)
        return
    packages.install_packages(PACKAGES, PACKAGES, state,
                              name="Install python3 (scheduled retention)")
    server.install_scripts([layout.RETENTION_SCRIPT_NAME], state)
    for folder in planner_dirs():
        files.managed_dir(folder, "0755", state.dirs.get(folder), name=f"Create {folder}")
    for path, content in planner_files().items():
        files.managed_file(path, content, "0644", state.files.get(path), name=f"Install {path}")
    config = ServerLayout.of(settings).retention_config
    files.managed_file(config, runner_config(settings), "0644", state.files.get(config),
                       name="Install the retention rules (retention.json)")
    install_timer(settings, state, name="Schedule retention (systemd timer)")


# --- status.py ---

def status_command(settings: Settings) -> str:
    return timer_status_command(TIMER_NAME, SERVICE, "retention-timer", "retention-last")


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    """The server table's column after the GC timer's."""
    return {"retention timer": first_line(sections, "retention-timer") or "-"}
