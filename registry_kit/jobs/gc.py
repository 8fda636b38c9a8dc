"""Garbage collection of the registry's storage (gc.py) and its optional systemd timer.

gc.py runs scripts/registry-gc.sh on each server, one server at a time (servers sharing one
storage: registry_kit.sharedgc, every replica read-only, one collects): the registry is
restarted in read-only mode (pulls keep working, pushes are refused), `registry
garbage-collect` runs inside the container (`registry` is on PATH in the official 2.x and
3.x images and in the lab's), the registry is restarted with its own config.yml again,
and the bytes freed in the data folder are reported. registry_gc_dry_run=True only reports.
registry_gc_schedule installs registry-kit-gc.service/.timer on servers (deploy.py; removed
when unset and by teardown.py) running the same script; refused on shared storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any

from pyinfra import host, inventory
from pyinfra import state as pyinfra_state
from pyinfra.api import FunctionCommand, StringCommand, operation

from registry_kit import sharedgc
from registry_kit.commands import join, q
from registry_kit.facts import HostState, RegistryHostState
from registry_kit.model import topology
from registry_kit.model.inventory import (
    DEFAULT_GROUPS,
    Groups,
    ReportedCommand,
    refusal,
    roles,
    validated_settings,
)
from registry_kit.model.inventory import (
    fail_host as _fail,
)
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.operations import files
from registry_kit.render import textfile
from registry_kit.roles import server

SCRIPT = "registry-gc.sh"
TIMER_NAME = "registry-kit-gc.timer"
SERVICE = "/etc/systemd/system/registry-kit-gc.service"
TIMER = f"/etc/systemd/system/{TIMER_NAME}"


def probe_args(settings: Settings) -> dict[str, Any]:
    return {"files": [SERVICE, TIMER, server.script_path(SCRIPT)]}


def gc_arguments(settings: Settings, *, dry_run: bool) -> list[str]:
    url, resolve, ca = server.health_target(settings)
    data = settings.registry_data_dir if settings.registry_storage.driver == "filesystem" \
        else "-"
    args = [server.script_path(SCRIPT), settings.registry_container_name,
            settings.registry_config_dir, data, url, resolve, ca,
            str(settings.registry_verify_timeout)]
    if dry_run:
        args.append("--dry-run")
    if settings.registry_gc_delete_untagged:
        args.append("--delete-untagged")
    return args


@operation()
def collect_garbage(settings: Settings, state: HostState):
    if state.container is None:
        yield FunctionCommand(_fail, (f"{host.name}: no container "
                                      f"{settings.registry_container_name}: run deploy.py "
                                      "first",), {})
        return
    yield ReportedCommand(join(gc_arguments(settings, dry_run=settings.registry_gc_dry_run)))


# --- the timer (registry_gc_schedule) ---

def service_unit(settings: Settings) -> bytes:
    # Arguments checked, quoted and %/$-escaped for systemd (textfile.systemd_exec_args).
    exec_start = textfile.systemd_exec_args(gc_arguments(settings, dry_run=False),
                                            file=SERVICE, field="ExecStart")
    return (
        "# Managed by registry-kit (registry_gc_schedule): replaced on the next deploy.\n"
        "[Unit]\n"
        "Description=registry-kit: garbage-collect the registry (read-only while it runs)\n"
        "Requires=docker.service\n"
        "After=docker.service\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={exec_start}\n"
    ).encode()


def timer_unit(settings: Settings) -> bytes:
    # Calendar expressions hold spaces ("Sun *-*-* 03:00:00"): one line, no backslash (a
    # line continuation), "%" escaped. Whether systemd accepts it is checked on the host.
    schedule = textfile.rest_of_line(settings.registry_gc_schedule, file=TIMER,
                                     field="registry_gc_schedule", forbidden="\\")
    return (
        "# Managed by registry-kit (registry_gc_schedule): replaced on the next deploy.\n"
        "[Unit]\n"
        "Description=registry-kit: scheduled registry garbage collection\n\n"
        "[Timer]\n"
        f"OnCalendar={textfile.systemd_specifiers(schedule)}\n"
        "Persistent=true\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    ).encode()


@operation()
def install_timer(settings: Settings, state: HostState):
    """Check the OnCalendar expression on the host (systemd-analyze) before any unit is
    written, so a bad schedule never lands; then enable and (re)start the timer."""
    units = {SERVICE: service_unit(settings), TIMER: timer_unit(settings)}
    if all(path in state.files and state.files[path].sha256 == files.sha256_of(content)
           for path, content in units.items()):
        host.noop(f"{TIMER_NAME} runs on {settings.registry_gc_schedule!r}")
        return
    schedule = str(settings.registry_gc_schedule)
    refusal = f"registry-kit: {host.name}: registry_gc_schedule={schedule!r} is not a " \
        "systemd OnCalendar expression (see: systemd-analyze calendar)"
    yield (f"systemd-analyze calendar {q(schedule)} >/dev/null 2>&1 || "
           f"{{ echo {q(refusal)} >&2; exit 1; }}")
    for path, content in units.items():
        staging = f"{path}.registry-kit-new"
        yield f"install -m 0644 /dev/null {q(staging)}"
        yield files.upload(BytesIO(content), staging)
        yield f"mv -f {q(staging)} {q(path)}"
    yield f"systemctl daemon-reload && systemctl enable {TIMER_NAME} >/dev/null 2>&1 && " \
          f"systemctl restart {TIMER_NAME}"


@operation()
def schedule_remove(state: HostState):
    present = [path for path in (TIMER, SERVICE) if path in state.files]
    if not present:
        host.noop("no garbage collection timer")
        return
    yield f"systemctl disable --now {TIMER_NAME} >/dev/null 2>&1; true"
    yield "rm -f " + " ".join(q(path) for path in present)
    yield "systemctl daemon-reload"


def schedule_deploy(settings: Settings, state: HostState,
                    servers: tuple[Settings, ...] = ()) -> None:
    """deploy.py, servers: the timer when registry_gc_schedule is set, on the first server
    of each storage (registry_kit.sharedgc), else none."""
    if not sharedgc.timer_wanted(settings, servers or (settings,)):
        schedule_remove(state, name="Remove the garbage collection timer")
    else:
        install_timer(settings, state, name="Schedule garbage collection (systemd timer)")


# --- gc.py ---

def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    settings = validated_settings(groups, defaults=defaults)[host.name]
    is_server, _ = roles(host, groups)
    if not is_server:
        return
    paths = server.ServerPaths(settings.registry_config_dir)
    script = server.script_path(SCRIPT)
    state = host.get_fact(RegistryHostState, files=[script, paths.config],
                          container=settings.registry_container_name)
    if state.container is not None:
        # Servers deployed before the script existed get it here.
        files.managed_file(script, server.script_content(SCRIPT), "0755",
                           state.files.get(script), name=f"Install {script}")
    hosts = topology.build(validated_settings(groups, defaults=defaults),
                           topology.members(inventory, groups))
    shared = _shared_group(settings, hosts)
    if len(shared) > 1:
        collect_shared(settings, shared, hosts, state.container is not None,
                       name="Collect garbage on shared storage (every replica read-only "
                       "meanwhile)" if not settings.registry_gc_dry_run else
                       "Report what garbage collection would delete (dry run, shared storage)")
        return
    what = "Report what garbage collection would delete (dry run)" \
        if settings.registry_gc_dry_run else "Collect garbage (registry read-only meanwhile)"
    # One server at a time: each is read-only (refusing pushes) while it collects.
    collect_garbage(settings, state, name=what, _serial=True)


# --- shared storage (registry_kit.sharedgc) ---

def _shared_group(settings: Settings, hosts: topology.Topology) -> tuple[Settings, ...]:
    """The servers sharing this one's storage (itself first if alone); refuses the run,
    before anything changes, when one of several is not in it."""
    group = sharedgc.group_of(settings.host, sharedgc.storage_groups(hosts.servers))
    if len(group) > 1:
        why = sharedgc.unreachable_refusal(group, (h.name for h in pyinfra_state.active_hosts))
        if why:
            raise refusal(SettingsError(why))
    return group


@operation()
def collect_shared(settings: Settings, group: tuple[Settings, ...],
                   hosts: topology.Topology, deployed: bool):
    leader = group[0]
    if not deployed:
        yield FunctionCommand(_fail, (f"{host.name}: no container "
                                      f"{settings.registry_container_name}: run deploy.py "
                                      "first",), {})
        return
    if host.name != leader.host:
        host.noop(f"collected from {leader.host} for every replica of this storage")
        return
    members = [sharedgc.member(s, gc_arguments(s, dry_run=s.registry_gc_dry_run),
                               topology.server_name(s.host)) for s in group]
    flush = None
    if hosts.caches and not settings.registry_gc_dry_run:
        flush = sharedgc.CacheFlush(hosts.caches[0].host, StringCommand(
            sharedgc.cache_flush_command(hosts.caches[0])))
    yield sharedgc.SharedCollection(members, hosts.rotation(), flush,
                                    settings.registry_storage, settings.registry_gc_dry_run)
