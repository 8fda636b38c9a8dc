"""What teardown.py runs for one host: deploy's steps in reverse, each role removing only
what the kit put there (its `*_remove`), driven by one probe per host (a second teardown
changes nothing).

Files go by the names the kit writes; a folder only when the kit created it (its marker,
registry_kit.operations.ownership) and nothing else is left in it. Folders kept are named,
one line each (host and path), on every teardown. The registry data goes only with
registry_purge_data=True, the Docker engine only with docker_remove_on_teardown=True.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra import host, inventory
from pyinfra import state as run_state

from registry_kit.facts import RegistryHostState
from registry_kit.model.inventory import (
    DEFAULT_GROUPS,
    Groups,
    merge_probe,
    roles,
    validated_settings,
)
from registry_kit.model.settings import Settings
from registry_kit.operations.removal import purge_packages
from registry_kit.roles import (
    audit,
    cache,
    client,
    disk_guard,
    engine,
    exporters,
    gc_timer,
    loadbalancer,
    metrics,
    retention_timer,
    server,
    webui,
)


def probe_args(settings: Settings, is_server: bool, is_client: bool, is_lb: bool = False,
               is_cache: bool = False) -> dict[str, Any]:
    """What every role of this host removes, in one probe."""
    return merge_probe(part for part, wanted in (
        (server.teardown_probe_args(settings), is_server),
        (gc_timer.probe_args(settings), is_server),
        (retention_timer.probe_args(settings), is_server),
        (disk_guard.probe_args(settings), is_server),
        (webui.probe_args(settings), is_server),
        (metrics.probe_args(settings), is_server or is_cache),
        (exporters.probe_args(settings), is_server or is_lb or is_cache),
        (audit.probe_args(settings), is_server),
        (client.teardown_probe_args(settings, also_server=is_server), is_client),
        (loadbalancer.teardown_probe_args(settings), is_lb),
        (cache.teardown_probe_args(settings), is_cache)) if wanted)


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    settings = validated_settings(groups, defaults=defaults)[host.name]
    is_server, is_client = roles(host, groups)
    is_lb, is_cache = groups.lb in host.groups, groups.cache in host.groups
    if not (is_server or is_client or is_lb or is_cache):
        return
    state = host.get_fact(RegistryHostState,
                          **probe_args(settings, is_server, is_client, is_lb, is_cache))
    # pyinfra orders operations across hosts by the line that calls them: one line per role.
    if is_lb:
        # LBs outside this run (pyinfra --limit) stay: the floating address moves to one.
        others_stay = any(not run_state.is_host_in_limit(other)
                          for other in inventory.get_group(groups.lb, []))
        loadbalancer.lb_remove(settings, state, others_stay)
    if is_cache:
        cache.cache_remove(settings, state)
        if not (is_server or is_lb):  # the exporters' filter (servers' below, LBs' above)
            metrics.metrics_remove(state)
            purge_packages(("haproxy",), ("haproxy",), settings, state,
                           name="Remove haproxy (registry_packages_remove_on_teardown)")
    if is_server or is_lb or is_cache:
        exporters.exporters_remove(settings, state)
    if is_client:
        client.client_remove(settings, state, also_server=is_server)
    if is_server:
        gc_timer.schedule_remove(state)
        retention_timer.retention_remove(settings, state)
        disk_guard.guard_remove(settings, state)
        webui.webui_remove(state)
        metrics.metrics_remove(state)
        audit.audit_remove(state)
        server.server_remove(settings, state)
    if is_server or is_client:  # load balancer and cache hosts get no Docker engine
        add, remove = client.insecure_entries(settings)
        engine.engine_remove(settings, state, insecure=add + remove)
