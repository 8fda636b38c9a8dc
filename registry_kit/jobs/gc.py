"""Garbage collection of the registry's storage (gc.py).

gc.py runs scripts/registry-gc.sh on each server, one server at a time (servers sharing one
storage: registry_kit.sharedgc, every replica read-only, one collects): the registry is
restarted in read-only mode (pulls keep working, pushes are refused), `registry
garbage-collect` runs inside the container (`registry` is on PATH in the official 2.x and
3.x images and in the lab's), the registry is restarted with its own config.yml again,
and the bytes freed in the data folder are reported. registry_gc_dry_run=True only reports.
registry_gc_schedule runs the same script from a timer: registry_kit.roles.gc_timer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra import host, inventory
from pyinfra import state as pyinfra_state
from pyinfra.api import FunctionCommand, StringCommand

from registry_kit import sharedgc
from registry_kit.commands import join
from registry_kit.facts import HostState, RegistryHostState
from registry_kit.model import layout, topology
from registry_kit.model.inventory import (
    DEFAULT_GROUPS,
    Groups,
    ReportedCommand,
    fail_host,
    no_container,
    refusal,
    server_settings,
    validated_settings,
)
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.operations.typed import operation
from registry_kit.roles import server
from registry_kit.roles.gc_timer import SCRIPT, gc_arguments, locked


@operation()
def collect_garbage(settings: Settings, state: HostState):
    if state.container is None:
        yield FunctionCommand(fail_host, (no_container(settings),), {})
        return
    # Under the timers' lock: never beside a scheduled GC or retention run.
    yield ReportedCommand(join(locked(gc_arguments(settings,
                                                   dry_run=settings.registry_gc_dry_run))))


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    settings = server_settings(groups, defaults)
    if settings is None:
        return
    paths = layout.ServerLayout.of(settings)
    scripts = ["lib.sh", SCRIPT]  # registry-gc.sh sources lib.sh
    state = host.get_fact(RegistryHostState, files=[*map(layout.script, scripts), paths.config],
                          dirs=[layout.SCRIPTS_DIR],
                          container=settings.registry_container_name)
    if state.container is not None:
        # Servers deployed before the script existed get it here.
        server.install_scripts(scripts, state)
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
        yield FunctionCommand(fail_host, (no_container(settings),), {})
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
