"""What the registry deploy (registry_kit.api.registry, deploy.py) runs for one host:
validate every host's settings once, probe this host once, then add the engine, server and
client steps for the groups it is in.

All validation happens while pyinfra loads the deploy (before any operation runs), so a
bad setting on any host stops the whole run with one line and nothing touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra import host, inventory, logger

from registry_kit import s3check, sharedgc
from registry_kit.facts import HostState, RegistryHostState
from registry_kit.jobs import prometheus
from registry_kit.model import keystore, pull_through, topology
from registry_kit.model.inventory import DEFAULT_GROUPS, Groups, merge_probe, refusal, run_cache
from registry_kit.model.inventory import validated_settings as validated_inventory
from registry_kit.model.registry_version import RegistryVersion, RegistryVersionError, running_major
from registry_kit.model.registry_version import resolve as resolve_version
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.operations.typed import operation
from registry_kit.roles import (
    audit,
    cache,
    client,
    disk_guard,
    exporters,
    gc_timer,
    keepalived,
    loadbalancer,
    metrics,
    retention_timer,
    server,
    token_server,
    trust,
    webui,
)
from registry_kit.roles.engine import engine_deploy, install_curl

# The roles of a registry server, each with its part of the one probe.
SERVER_ROLES = (server, gc_timer, retention_timer, disk_guard, token_server, webui, metrics, audit)


def _serves_tls(target: Any, groups: Groups) -> bool:
    return groups.servers in target.groups or groups.lb in target.groups


def validated_settings(groups: Groups = DEFAULT_GROUPS,
                       defaults: Mapping[str, Any] | None = None) -> dict[str, Settings]:
    """Settings of every host in the inventory, validated once per run; the kit's CA and
    every certificate checked, and the scale-out hosts checked together."""

    def check(loaded: dict[str, Settings]) -> None:
        # The kit's CA first permits every name the inventory serves, then each host's
        # certificate is issued (or provided files checked) against it.
        serving = [target for target in inventory if _serves_tls(target, groups)]
        keystore.prepare_ca(loaded[target.name] for target in serving)
        for target in serving:
            keystore.server_certificate(loaded[target.name])  # provided files checked up front
        _check_scale_out(loaded, groups)

    return validated_inventory(groups, defaults=defaults, after=check)


def hosts_by_role(groups: Groups = DEFAULT_GROUPS,
                  defaults: Mapping[str, Any] | None = None) -> topology.Topology:
    """Which hosts are replicas, load balancers and the cache (registry_kit.model.topology)."""
    return topology.build(validated_settings(groups, defaults), topology.members(inventory, groups))


def _check_scale_out(all_settings: dict[str, Settings], groups: Groups) -> None:
    """Hosts that cannot work together, and an S3 bucket that is missing or refuses the
    keys, stop the run here: before the first replica starts, before any host is touched."""
    members = topology.members(inventory, groups)
    topology.validate(topology.build(all_settings, members))
    keepalived.validate(topology.build(all_settings, members))
    topology.validate_metrics(topology.build(all_settings, members))
    schedule = sharedgc.schedule_refusal(
        [all_settings[name] for name in members[topology.SERVER_GROUP]])
    if schedule is not None:
        raise schedule
    s3check.check_storage(all_settings[name] for name in members[topology.SERVER_GROUP])


@operation()
def step_done(what: str):
    """A step every host shares: what comes before it on any host runs before what comes
    after it on any host (cache before the load balancer before the replicas)."""
    host.noop(f"ordering point: {what}")
    return
    yield  # an operation is a generator


@operation()
def servers_ready():
    """A step every host shares: it orders all server steps before all client steps."""
    host.noop("ordering point between server and client steps")
    return
    yield  # an operation is a generator


def server_version(settings: Settings, state: HostState) -> RegistryVersion:
    """The registry version this server will run (registry_kit.model.registry_version), told by
    the tag, registry_version or the label of the image already on the server; a run whose
    version cannot be told stops here, before any host is touched (one line)."""
    try:
        version = resolve_version(host.name, settings.registry_image, settings.registry_version,
                                  state.image_version_label or None)
        pull_through.check_version(settings, version.major)
    except RegistryVersionError as error:
        raise refusal(SettingsError(str(error))) from None
    except SettingsError as error:
        raise refusal(error) from None
    running = state.container
    before = running_major(running.image, running.version_label) if running else None
    if running is not None and before is not None and before != version.major:
        # 3 -> 2 is allowed: in the lab, 2.8.3 served everything 3.0.0 had written (image
        # manifests, OCI index and artifact, same digests and tags; README "Downgrade").
        what = "an upgrade" if version.major > before else "a downgrade"
        logger.warning(f"{host.print_prefix}registry {before} -> {version.major} "
                       f"({running.image} -> {settings.registry_image}): {what}; config.yml "
                       f"is rendered for registry {version.major} ({version.source})")
    return version


def remote_hosts(settings: Settings, state: HostState) -> tuple[tuple[str, str], ...]:
    """A cache's remote as the server resolves it, for the container's --add-host
    (registry_kit.model.pull_through); one line and nothing touched when it does not."""
    try:
        return pull_through.extra_hosts(settings, state.resolved)
    except SettingsError as error:
        raise refusal(error) from None


def _exporters(settings: Settings, state: HostState, hosts: topology.Topology, password: str,
               is_server: bool, is_lb: bool, is_cache: bool) -> None:
    """Debian's exporters (registry_kit.roles.exporters), before the filters that pass to
    them; a cache host that is no server and no load balancer gets a filter of its own."""
    if is_server or is_lb or is_cache:
        exporters.exporters_deploy(settings, state, is_cache, password)
    if is_cache and not (is_server or is_lb):
        metrics.exporter_filter_deploy(settings, state, exporters.routes(settings, hosts))


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    all_settings = validated_settings(groups, defaults)
    settings = all_settings[host.name]
    is_server, is_client = groups.servers in host.groups, groups.clients in host.groups
    is_lb, is_cache = groups.lb in host.groups, groups.cache in host.groups
    if not (is_server or is_client or is_lb or is_cache):
        return
    probe = merge_probe(part.probe_args(settings) for part, wanted in (
        *((role, is_server) for role in SERVER_ROLES), (client, is_client),
        (loadbalancer, is_lb), (keepalived, is_lb), (cache, is_cache), (metrics, is_cache),
        (exporters, is_server or is_lb or is_cache)) if wanted)
    state = host.get_fact(RegistryHostState, **probe)
    # Before anything else is planned: a server whose registry version is unknown is refused,
    # and so is a cache whose remote's name the server does not resolve.
    major = server_version(settings, state).major if is_server else None
    extra_hosts = remote_hosts(settings, state) if is_server else ()
    add, remove = client.insecure_entries(settings) if is_client else ([], [])
    # Load balancer and cache hosts need no Docker engine.
    if (is_server or is_client) and not engine_deploy(
            settings, state, is_server=is_server, insecure_add=add, insecure_remove=remove):
        return
    cert = keystore.server_certificate(settings)
    if is_client:
        client_ca = trust.client_ca(settings, cert)
        client.client_trust(settings, state, client_ca)
    # Every client trusts a new CA before any server serves a certificate it signed.
    trust.clients_trust_ready(name="Clients trust the registry CA")
    hosts = hosts_by_role(groups, defaults)
    run_cache("prometheus", lambda: prometheus.write_folder(hosts))  # once per run
    password = keystore.cache_password(hosts.caches[0]) if hosts.caches else ""
    if is_cache:
        cache.cache_deploy(settings, state, password)
    _exporters(settings, state, hosts, password, is_server, is_lb, is_cache)
    if hosts.caches:
        step_done("registry cache", name="Registry cache is set up")
    if is_lb:
        loadbalancer.lb_deploy(settings, state, hosts, cert)
        keepalived.keepalived_deploy(settings, state, hosts)
        metrics.lb_facts_deploy(settings, state)
    if hosts.lbs:
        step_done("load balancer", name="Load balancer is set up")
    if is_server:
        install_curl(state, name="Install curl (health checks)")
        server.server_deploy(settings, state, cert=cert, http_secret=keystore.http_secret(settings),
                             cache=topology.cache_target(hosts, password),
                             rotation=hosts.rotation(), major=major or 2,
                             extra_hosts=extra_hosts,
                             read_only=disk_guard.holds_read_only(settings, state))
        gc_timer.schedule_deploy(settings, state, hosts.servers)
        retention_timer.retention_deploy(settings, state)
        disk_guard.guard_deploy(settings, state)
        webui.webui_deploy(settings, state, cert)
        metrics.metrics_deploy(settings, state, cert, exporters.routes(settings, hosts))
        audit.audit_deploy(settings, state)
    # pyinfra orders operations by merging each host's sequence, so without an operation
    # that every host shares, client steps (a login) could run before the servers' steps.
    servers_ready(name="Registry servers are set up")
    if is_client:
        client.client_login(settings, state, client_ca)
