"""The disk guard on registry servers with filesystem storage (registry_disk_readonly_percent,
registry_disk_writable_percent): a systemd timer runs scripts/registry-disk-guard.sh every
few seconds, which restarts the registry read-only when its data filesystem passes the mark
and writable again below the low mark, and logs each switch to the journal. Removed when
the setting is None, on other storage, and by teardown.py.

The registry reads storage.maintenance.readonly at start only, so a switch is a restart
(as registry-gc.sh does it). While read-only the guard leaves a flag file beside config.yml
(ServerLayout.disk_guard_flag); a deploy that finds it renders config.yml read-only too
(`holds_read_only`), so a run never turns the registry writable behind the guard's back
and a second run changes nothing. Object storage has no filesystem of this server to
fill: no guard there.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host

from registry_kit.commands import q
from registry_kit.facts import HostState, first_line, section_command
from registry_kit.model import layout
from registry_kit.model.layout import ServerLayout
from registry_kit.model.settings import Settings
from registry_kit.operations import files, services
from registry_kit.operations.typed import operation
from registry_kit.render import textfile
from registry_kit.roles import server

SCRIPT = "registry-disk-guard.sh"
TIMER_NAME = layout.DISK_GUARD_TIMER_NAME
SERVICE = layout.DISK_GUARD_SERVICE_UNIT
TIMER = layout.DISK_GUARD_TIMER_UNIT
# How often the filesystem is checked: the headroom above the mark must hold what pushes
# write in this time (README "Disk guard"). df costs a few milliseconds.
INTERVAL_SECONDS = 5
WRITABLE_AGAIN = "made writable again"  # the script's journal line for that switch


def probe_args(settings: Settings) -> dict[str, Any]:
    return {"files": [SERVICE, TIMER, ServerLayout.of(settings).disk_guard_flag,
                      layout.FACTS_DISK_GUARD]}


def wanted(settings: Settings) -> bool:
    return settings.registry_disk_readonly_percent is not None and \
        settings.registry_storage.driver == "filesystem"


def holds_read_only(settings: Settings, state: HostState) -> bool:
    """The guard has this registry read-only now: the deploy renders config.yml so."""
    return wanted(settings) and ServerLayout.of(settings).disk_guard_flag in state.files


def guard_arguments(settings: Settings) -> list[str]:
    url, resolve, ca = server.health_target(settings)
    name = settings.registry_container_name
    return [layout.script(SCRIPT), name, settings.registry_config_dir,
            settings.registry_data_dir, str(settings.registry_disk_readonly_percent),
            str(settings.registry_disk_writable_percent), url, resolve, ca,
            str(settings.registry_verify_timeout), layout.replace_lock(name),
            ServerLayout.of(settings).disk_guard_flag, layout.FACTS_DISK_GUARD]


def unit(sections: dict[str, list[str]]) -> bytes:
    return textfile.systemd_unit("Managed by registry-kit (registry_disk_readonly_percent): "
                                 "replaced on the next deploy.", sections).encode()


def service_unit(settings: Settings) -> bytes:
    exec_start = textfile.systemd_exec_args(guard_arguments(settings), file=SERVICE,
                                            field="ExecStart")
    # Runs every few seconds: only the switches (notice and above) reach the journal, not
    # systemd's start and stop lines of each check.
    return unit({"Unit": ["Description=registry-kit: registry read-only while its data "
                          "filesystem is full", "After=docker.service"],
                 "Service": ["Type=oneshot", "LogLevelMax=notice", f"ExecStart={exec_start}"]})


def timer_unit(settings: Settings) -> bytes:
    return unit({"Unit": ["Description=registry-kit: check the registry's data filesystem"],
                 "Timer": [f"OnActiveSec={INTERVAL_SECONDS}s",
                           f"OnUnitActiveSec={INTERVAL_SECONDS}s", "AccuracySec=1s"],
                 "Install": ["WantedBy=timers.target"]})


@operation()
def install_guard(settings: Settings, state: HostState):
    units = {SERVICE: service_unit(settings), TIMER: timer_unit(settings)}
    if files.up_to_date(units, state.files):
        host.noop(f"{TIMER_NAME} guards {settings.registry_data_dir} "
                  f"({settings.registry_disk_readonly_percent}%)")
        return
    yield from files.install_units(units, TIMER_NAME)


def guard_remove(settings: Settings, state: HostState) -> None:
    """The units and the flag (the server role renders config.yml writable once the guard
    is off, which restarts the registry)."""
    services.remove_timer(state, TIMER_NAME,
                          [TIMER, SERVICE, ServerLayout.of(settings).disk_guard_flag,
                           layout.FACTS_DISK_GUARD], "no disk guard", name="Remove the disk guard")


def guard_deploy(settings: Settings, state: HostState) -> None:
    """deploy.py, servers: the guard on filesystem storage while the setting is set."""
    if wanted(settings):
        install_guard(settings, state, name="Guard the registry's disk (systemd timer)")
    else:
        guard_remove(settings, state)


# --- status.py ---

def status_command(settings: Settings) -> str:
    flag = ServerLayout.of(settings).disk_guard_flag
    return "; ".join([
        section_command("disk"),
        f"df -P -B1 {q(settings.registry_data_dir)} 2>/dev/null | tail -n 1",
        section_command("guard"),
        f"systemctl is-active {TIMER_NAME} 2>/dev/null || true",
        section_command("guard-since"),
        f"cat {q(flag)} 2>/dev/null || true",
        section_command("guard-writable"),
        f"journalctl -q -o short-iso --no-pager -u {q(SERVICE.rsplit('/', 1)[1])} "
        f"2>/dev/null | grep -F {q(WRITABLE_AGAIN)} | tail -n 1 | cut -d' ' -f1"])


def disk_columns(line: str) -> dict[str, str]:
    """size, used, free of the data filesystem, from `df -P -B1`'s line."""
    fields = line.split()
    if len(fields) < 4 or not all(value.isdigit() for value in fields[1:4]):
        return {"disk size": "-", "disk used": "-", "disk free": "-"}
    size, used, free = fields[1:4]
    # Rounded up, as df and the guard count it.
    percent = f" ({-(-100 * int(used) // max(int(used) + int(free), 1))}%)"
    return {"disk size": server.human_bytes(size),
            "disk used": server.human_bytes(used) + percent,
            "disk free": server.human_bytes(free)}


def guard_state(settings: Settings, sections: dict[str, list[str]]) -> str:
    if not wanted(settings):
        return "off" if settings.registry_storage.driver == "filesystem" else \
            f"- ({settings.registry_storage.driver})"
    if first_line(sections, "guard") != "active":
        return "not running"
    since = first_line(sections, "guard-since")
    if since:
        return f"read-only since {since}"
    writable = first_line(sections, "guard-writable")
    return f"writable since {writable}" if writable else "writable"


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    """The server table's disk columns (status.py puts them after the GC timer's)."""
    if settings.registry_storage.driver != "filesystem":
        return {"disk size": "-", "disk used": "-", "disk free": "-",
                "disk guard": guard_state(settings, sections)}
    return {**disk_columns(first_line(sections, "disk")),
            "disk guard": guard_state(settings, sections)}
