"""The garbage collection timer on registry servers (registry_gc_schedule): a systemd
service and timer running scripts/registry-gc.sh as garbage_collect.py does
(registry_kit.jobs.gc), on the first server of each storage (registry_kit.sharedgc); removed
when unset and by teardown.py. Also the script's arguments, which garbage_collect.py runs by hand.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from pyinfra import host

from registry_kit import sharedgc
from registry_kit.commands import q
from registry_kit.facts import HostState, first_line, section_command
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.operations import files, services
from registry_kit.operations.typed import operation
from registry_kit.render import textfile
from registry_kit.roles import server

SCRIPT = "registry-gc.sh"
TIMER_NAME = layout.GC_TIMER_NAME
SERVICE = layout.GC_SERVICE_UNIT
TIMER = layout.GC_TIMER_UNIT


def probe_args(settings: Settings) -> dict[str, Any]:
    return {"files": [SERVICE, TIMER, layout.script(SCRIPT)]}


def gc_arguments(settings: Settings, *, dry_run: bool) -> list[str]:
    url, resolve, ca = server.health_target(settings)
    data = settings.registry_data_dir if settings.registry_storage.driver == "filesystem" \
        else "-"
    args = [layout.script(SCRIPT), settings.registry_container_name,
            settings.registry_config_dir, data, url, resolve, ca,
            str(settings.registry_verify_timeout), layout.CONTAINER_CONFIG_FILE,
            layout.RUNTIME_DIR]
    if dry_run:
        args.append("--dry-run")
    if settings.registry_gc_delete_untagged:
        args.append("--delete-untagged")
    return [*args, f"--facts={layout.FACTS_GC}"]


def unit(sections: dict[str, list[str]]) -> bytes:
    return textfile.systemd_unit("Managed by registry-kit (registry_gc_schedule): replaced on "
                                 "the next deploy.", sections).encode()


def locked(args: list[str]) -> list[str]:
    """`args` run under the maintenance lock the GC and retention timers share: one of them
    at a time on a server (each makes the registry read-only and writable again); the later
    one waits."""
    return [layout.FLOCK, layout.MAINTENANCE_LOCK, *args]


def service_unit(settings: Settings) -> bytes:
    # Arguments checked, quoted and %/$-escaped for systemd (textfile.systemd_exec_args).
    exec_start = textfile.systemd_exec_args(locked(gc_arguments(settings, dry_run=False)),
                                            file=SERVICE, field="ExecStart")
    return unit({"Unit": ["Description=registry-kit: garbage-collect the registry (read-only "
                          "while it runs)", "Requires=docker.service", "After=docker.service"],
                 "Service": ["Type=oneshot", f"ExecStart={exec_start}"]})


def calendar_sections(schedule: Any, file: str, field: str,
                      description: str) -> dict[str, list[str]]:
    """A timer unit's sections for an OnCalendar setting. Calendar expressions hold spaces
    ("Sun *-*-* 03:00:00"): one line, no backslash (a line continuation), "%" escaped.
    Whether systemd accepts it is checked on the host (calendar_timer)."""
    line = textfile.rest_of_line(schedule, file=file, field=field, forbidden="\\")
    return {"Unit": [f"Description={description}"],
            "Timer": [f"OnCalendar={textfile.systemd_specifiers(line)}", "Persistent=true"],
            "Install": ["WantedBy=timers.target"]}


def timer_unit(settings: Settings) -> bytes:
    return unit(calendar_sections(settings.registry_gc_schedule, TIMER, "registry_gc_schedule",
                                  "registry-kit: scheduled registry garbage collection"))


def calendar_timer(units: dict[str, bytes], timer: str, key: str, schedule: str,
                   state: HostState) -> Iterator[Any]:
    """Check the OnCalendar expression on the host (systemd-analyze) before any unit is
    written, so a bad schedule never lands; then enable and (re)start the timer. Shared by
    the GC and retention timers."""
    if files.up_to_date(units, state.files):
        host.noop(f"{timer} runs on {schedule!r}")
        return
    refusal = f"registry-kit: {host.name}: {key}={schedule!r} is not a " \
        "systemd OnCalendar expression (see: systemd-analyze calendar)"
    yield (f"systemd-analyze calendar {q(schedule)} >/dev/null 2>&1 || "
           f"{{ echo {q(refusal)} >&2; exit 1; }}")
    yield from files.install_units(units, timer)


@operation()
def install_timer(settings: Settings, state: HostState):
    units = {SERVICE: service_unit(settings), TIMER: timer_unit(settings)}
    yield from calendar_timer(units, TIMER_NAME, "registry_gc_schedule",
                              str(settings.registry_gc_schedule), state)


def schedule_remove(state: HostState) -> None:
    services.remove_timer(state, TIMER_NAME, [TIMER, SERVICE], "no garbage collection timer",
                          name="Remove the garbage collection timer")


def schedule_deploy(settings: Settings, state: HostState,
                    servers: tuple[Settings, ...] = ()) -> None:
    """deploy.py, servers: the timer when registry_gc_schedule is set, on the first server
    of each storage (registry_kit.sharedgc), else none."""
    if not sharedgc.timer_wanted(settings, servers or (settings,)):
        schedule_remove(state)
    else:
        install_timer(settings, state, name="Schedule garbage collection (systemd timer)")


def timer_status_command(timer_name: str, service_path: str, timer_section: str,
                         last_section: str) -> str:
    """A timer's status sections: whether it is active, then (status --json) its service's
    load state, last result and when it last ended, in UTC (systemd prints local time)."""
    service = q(posixpath.basename(service_path))
    timer = q(timer_name)
    return "; ".join([
        section_command(timer_section), f"systemctl is-active {timer} 2>/dev/null || true",
        section_command(last_section),
        f"systemctl show -p LoadState --value {service} 2>/dev/null || echo",
        f"systemctl show -p Result --value {service} 2>/dev/null || echo",
        f"t=$(systemctl show -p ExecMainExitTimestamp --value {service} 2>/dev/null); "
        "[ -z \"$t\" ] || date -u -d \"$t\" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || true"])


def status_command(settings: Settings) -> str:
    return timer_status_command(TIMER_NAME, SERVICE, "timer", "gc-last")


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    """The server table's last column (status.py puts it after server.status_row's)."""
    return {"gc timer": first_line(sections, "timer") or "-"}
