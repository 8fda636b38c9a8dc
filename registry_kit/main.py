"""What deploy.py runs for one host: validate every host's settings once, probe this host
once, then add the engine, server and client steps for the groups it is in.

All validation happens while pyinfra loads the deploy (before any operation runs), so a
bad setting on any host stops the whole run with one line and nothing touched.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, inventory
from pyinfra.api import operation

from registry_kit import client, control, gc, server, trust
from registry_kit import settings as settings_module
from registry_kit.engine import engine_deploy, install_curl
from registry_kit.facts import RegistryHostState
from registry_kit.settings import Settings

SERVER_GROUP = "registry_servers"
CLIENT_GROUP = "registry_clients"

_validated: dict[str, Settings] | None = None


def _host_settings(target: Any, known: dict[str, Any]) -> Settings:
    data = target.data.dict()
    groups = [group for group in target.groups if group in (SERVER_GROUP, CLIENT_GROUP)]
    if len(groups) > 1:
        settings_module.check_group_conflicts(
            target.name, {group: inventory.get_group_data(group) for group in groups},
            {**inventory.get_host_data(target.name), **inventory.get_override_data()})
    value = settings_module.load(target.name, data, known=known)
    if SERVER_GROUP in target.groups:
        control.server_certificate(value)  # provided files are checked here, up front
    return value


def validated_settings() -> dict[str, Settings]:
    """Settings of every host in the inventory, validated once per run."""
    global _validated
    if _validated is None:
        known = settings_module.known_keys()
        _validated = {target.name: _host_settings(target, known) for target in inventory}
    return _validated


@operation()
def servers_ready():
    """A step every host shares: it orders all server steps before all client steps."""
    host.noop("ordering point between server and client steps")
    return
    yield  # an operation is a generator


def plan_host() -> None:
    all_settings = validated_settings()
    settings = all_settings[host.name]
    is_server = SERVER_GROUP in host.groups
    is_client = CLIENT_GROUP in host.groups
    if not (is_server or is_client):
        return
    probe: dict[str, Any] = {"files": [], "dirs": []}
    for part, wanted in ((server, is_server), (gc, is_server), (client, is_client)):
        if wanted:
            for key, value in part.probe_args(settings).items():
                if isinstance(value, list):
                    probe[key] = probe.get(key, []) + value
                else:
                    probe[key] = value
    state = host.get_fact(RegistryHostState, **probe)

    add, remove = client.insecure_entries(settings) if is_client else ([], [])
    if not engine_deploy(settings, state, insecure_add=add, insecure_remove=remove):
        return
    cert = control.server_certificate(settings)
    if is_client:
        client.client_trust(settings, state, trust.client_ca(settings, cert))
    # Every client trusts a new CA before any server serves a certificate it signed.
    trust.clients_trust_ready(name="Clients trust the registry CA")
    if is_server:
        install_curl(state, name="Install curl (health checks)")
        server.server_deploy(settings, state, cert=cert, http_secret=control.http_secret(settings))
        gc.schedule_deploy(settings, state)
    # pyinfra orders operations by merging each host's sequence, so without an operation
    # that every host shares, client steps (a login) could run before the servers' steps.
    servers_ready(name="Registry servers are set up")
    if is_client:
        client.client_login(settings, state)
