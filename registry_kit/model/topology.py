"""How the hosts of a scale-out inventory fit together, checked once before any change.

Several hosts in `registry_servers` (replicas) sit behind the hosts in `registry_lb`
(haproxy) and share S3 storage, the http secret (registry_kit.model.keystore, keyed by domain)
and, when `registry_cache` has a host, its redis blob-descriptor cache. This module builds
that picture from every host's Settings and refuses inventories that cannot work, with
one line naming host, key, value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyinfra import logger
from pyinfra.api import StringCommand
from pyinfra.connectors.util import CommandOutput

from registry_kit.commands import auth_arguments, join
from registry_kit.model import layout
from registry_kit.model.settings import (
    Settings,
    SettingsError,
    check_metrics_bind,
    host_port,
    is_ip,
)
from registry_kit.render.config import CacheTarget

SERVER_GROUP = "registry_servers"
LB_GROUP = "registry_lb"
CACHE_GROUP = "registry_cache"


def members(inventory: Any, groups: Any) -> dict[str, list[str]]:
    """Role -> host names of pyinfra's inventory for the user's group names
    (registry_kit.model.inventory.Groups); the roles are this module's names whatever those are."""
    return {role: [target.name for target in inventory.get_group(group, [])]
            for role, group in ((SERVER_GROUP, groups.servers), (LB_GROUP, groups.lb),
                                (CACHE_GROUP, groups.cache))}
BACKEND = "registry"  # haproxy backend holding the replicas
SHARED_STORAGE = ("s3", "azure", "gcs")  # drivers several replicas can share


@dataclass(frozen=True)
class Replica:
    host: str  # inventory name
    server_name: str  # its name in haproxy's backend
    address: str  # where the load balancer reaches it
    port: int

    @property
    def endpoint(self) -> str:
        """ADDRESS:PORT for haproxy's server line (IPv6 in brackets)."""
        return host_port(self.address, self.port)


@dataclass(frozen=True)
class Rotation:
    """Where a replica is taken out of and put back into the load balancers."""

    lb_hosts: tuple[str, ...]
    backend: str
    drain_timeout: int
    up_timeout: int


@dataclass(frozen=True)
class Topology:
    servers: tuple[Settings, ...]
    lbs: tuple[Settings, ...]
    caches: tuple[Settings, ...]

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return tuple(Replica(host=s.host, server_name=server_name(s.host),
                             address=s.registry_internal_address, port=s.registry_port)
                     for s in self.servers)

    def rotation(self) -> Rotation | None:
        if not self.lbs:
            return None
        lb = self.lbs[0]
        return Rotation(lb_hosts=tuple(s.host for s in self.lbs), backend=BACKEND,
                        drain_timeout=lb.registry_lb_drain_timeout,
                        up_timeout=max(s.registry_verify_timeout for s in self.servers))


def server_name(host: str) -> str:
    """haproxy server names: letters, digits, '.', '_', '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)


def build(all_settings: Mapping[str, Settings], groups: Mapping[str, Sequence[str]]) -> \
        Topology:
    def members(group: str) -> tuple[Settings, ...]:
        return tuple(all_settings[name] for name in groups.get(group, ()))

    return Topology(servers=members(SERVER_GROUP), lbs=members(LB_GROUP),
                    caches=members(CACHE_GROUP))


def _fail(settings: Settings, key: str, value: object, allowed: str) -> SettingsError:
    return SettingsError(f"{settings.host}: setting {key}={value!r} is not allowed: {allowed}")


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def validate_metrics(topology: Topology) -> None:
    """A load balancer's and the cache's metrics address (servers': checked with their
    settings)."""
    for other in (*topology.lbs, *topology.caches):
        if other.registry_metrics:
            check_metrics_bind(other.host, other.__dict__)


def validate(topology: Topology) -> None:
    """Raise SettingsError for an inventory whose hosts cannot work together."""
    servers, lbs, caches = topology.servers, topology.lbs, topology.caches
    if (lbs or caches) and not servers:
        some = (lbs or caches)[0]
        raise _fail(some, "registry_domain", some.registry_domain,
                    "a registry_lb or registry_cache host needs hosts in registry_servers")
    if len(caches) > 1:
        raise _fail(caches[1], "registry_cache_port", caches[1].registry_cache_port,
                    f"one host in registry_cache (the registry talks to one redis); "
                    f"{caches[0].host} is one already")
    first = servers[0] if servers else None
    for other in (*servers[1:], *lbs, *caches):
        assert first is not None
        for key in ("registry_domain", "registry_port", "registry_tls_mode"):
            if getattr(other, key) != getattr(first, key):
                raise _fail(other, key, getattr(other, key),
                            f"the same value on every registry_servers, registry_lb and "
                            f"registry_cache host ({first.host} has {getattr(first, key)!r})")
    if lbs:
        assert first is not None
        for lb in lbs:
            if lb.registry_lb_mode == "terminate" and not lb.tls_enabled:
                raise _fail(lb, "registry_lb_mode", "terminate",
                            "passthrough when registry_tls_mode='none' (nothing to terminate)")
            if lb.registry_lb_mode != lbs[0].registry_lb_mode:
                raise _fail(lb, "registry_lb_mode", lb.registry_lb_mode,
                            f"one mode for all registry_lb hosts ({lbs[0].host} has "
                            f"{lbs[0].registry_lb_mode!r})")
        if len(servers) > 1:
            for server in servers:
                if server.registry_storage.driver not in SHARED_STORAGE:
                    raise _fail(server, "registry_storage", server.registry_storage.driver,
                                "shared storage (" + ", ".join(SHARED_STORAGE) + ") for "
                                "several registry_servers behind registry_lb: each replica "
                                "must see every blob")
        lb_hosts = {lb.host for lb in lbs}
        for server in servers:
            if _is_loopback(server.registry_internal_address) and lb_hosts != {server.host}:
                raise _fail(server, "registry_internal_address",
                            server.registry_internal_address,
                            "an address the registry_lb hosts can reach (not loopback)")
            if server.host in lb_hosts:
                raise _fail(server, "registry_port", server.registry_port,
                            "a registry_servers host that is not also in registry_lb "
                            "(both listen on registry_port)")
    for cache in caches:
        address = cache.registry_internal_address
        if not is_ip(address):
            raise _fail(cache, "registry_internal_address", address,
                        "an IP address on the cache host (redis binds to it)")
        if _is_loopback(address) and {s.host for s in servers} != {cache.host}:
            raise _fail(cache, "registry_internal_address", address,
                        "an address the registry_servers can reach (not loopback)")
        if servers and cache.registry_cache_port == cache.registry_port and \
                cache.host in {s.host for s in servers}:
            raise _fail(cache, "registry_cache_port", cache.registry_cache_port,
                        "a port other than registry_port on a host that is both")


def cache_target(topology: Topology, password: str) -> CacheTarget | None:
    if not topology.caches:
        return None
    cache = topology.caches[0]
    address = cache.registry_internal_address
    return CacheTarget(addr=host_port(address, cache.registry_cache_port), password=password,
                       db=cache.registry_cache_db)


# --- Rolling replacement ---------------------------------------------------------------------

LB_SCRIPT = layout.script(layout.LB_SCRIPT_NAME)  # installed by loadbalancer.py


class OutOfRotation(StringCommand):
    """A replica's container replacement, run while that replica is out of every load
    balancer: drain it (haproxy admin socket on each registry_lb host), replace, then put
    it back and wait until haproxy's health check says UP, whether the replacement worked
    or was rolled back. The LB steps run from the control machine over the LB hosts' own
    connections, inside the replica's step: with `_serial` the next replica starts only
    after this one is back."""

    def __init__(self, inner: StringCommand, rotation: Rotation, server: str) -> None:
        super().__init__(*inner.bits, **inner.connector_arguments)
        self.inner = inner
        self.rotation = rotation
        self.server = server

    def _balancers(self, state: Any, host: Any, action: str, timeout: int,
                   auth: dict[str, Any]) -> bool:
        ok = True
        for name in self.rotation.lb_hosts:
            command = StringCommand(join([LB_SCRIPT, action, self.rotation.backend,
                                          self.server, timeout, layout.HAPROXY_SOCKET]))
            try:
                status, output = state.inventory.get_host(name).run_shell_command(command,
                                                                                  **auth)
            except Exception as error:  # an unreachable LB: do not touch the replica
                logger.error(f"{host.print_prefix}{name}: cannot {action} {self.server}: "
                             f"{error}")
                ok = False
                continue
            for line in output:
                log = logger.info if status else logger.error
                log(f"{host.print_prefix}{name}: {line.line}")
            ok = ok and bool(status)
        return ok

    def execute(self, state: Any, host: Any, connector_arguments: Any) -> Any:
        # The LB hosts' commands run with this step's --sudo & co. (a run's are the same).
        auth = auth_arguments({**connector_arguments, **self.connector_arguments})
        if not self._balancers(state, host, "drain", self.rotation.drain_timeout, auth):
            # Never stop a replica that may still get traffic.
            self._balancers(state, host, "ready", self.rotation.up_timeout, auth)
            return False, CommandOutput([])
        status, output = False, CommandOutput([])
        try:
            status, output = self.inner.execute(state, host, connector_arguments)
        finally:
            back = self._balancers(state, host, "ready", self.rotation.up_timeout, auth)
        return bool(status) and back, output
