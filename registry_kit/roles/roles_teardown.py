"""teardown.py on the registry_lb and registry_cache hosts: the reverse of
loadbalancer.lb_deploy, keepalived.keepalived_deploy and cache.cache_deploy.

Load balancers: keepalived and haproxy are stopped and disabled (the floating address goes
with keepalived), then the kit's files go: keepalived.conf, haproxy.cfg (the kit wrote the
whole file), the terminate-mode certificate folder, the kit's scripts (their folder when
nothing else is in it). Cache: redis is stopped and disabled, the kit's redis.conf goes.
The cache keeps nothing on disk (no RDB or AOF: redis.conf sets `save ""` and `appendonly
no`), so stopping it is its purge: there is no cache data to keep (registry_purge_data
changes nothing there; the images live in the replicas' storage). The distro packages
stay unless registry_packages_remove_on_teardown=True (purged by name, like
docker_remove_on_teardown). A second teardown finds nothing and changes nothing.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.api import operation

from registry_kit.commands import join, q
from registry_kit.facts import HostState
from registry_kit.model import layout
from registry_kit.model.inventory import DEFAULT_GROUPS, Groups, merge_probe
from registry_kit.model.settings import Settings
from registry_kit.operations.ownership import plan_folder, remove_folders
from registry_kit.roles import cache, keepalived, loadbalancer

LB_SCRIPTS = (loadbalancer.SCRIPT, keepalived.CHECK_SCRIPT)
LB_PACKAGES = (*loadbalancer.PACKAGES, *keepalived.PACKAGES)
# redis-cli comes from redis-tools on Debian (a dependency of redis-server).
CACHE_PACKAGES = {"debian": ("redis-server", "redis-tools"), "rhel": ("redis",)}


def roles(target: Any, groups: Groups = DEFAULT_GROUPS) -> tuple[bool, bool]:
    """(is_lb, is_cache) of an inventory host."""
    return groups.lb in target.groups, groups.cache in target.groups


def probe_args(settings: Settings, is_lb: bool, is_cache: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if is_lb:
        listed = [layout.SCRIPTS_DIR, layout.LB_CERT_DIR]
        parts += [loadbalancer.probe_args(settings), keepalived.probe_args(settings),
                  {"dirs": listed, "listings": listed}]
    if is_cache:
        parts += [cache.probe_args(settings)]
    return merge_probe(parts)


@operation()
def stop_services(services: list[str], state: HostState):
    """Stop and disable what the kit enabled (the unit files are the packages')."""
    running = [name for name in services if any(state.services.get(name, (False, False)))]
    if not running:
        host.noop(f"{', '.join(services)}: not running, not enabled")
        return
    yield f"systemctl disable --now {join(running)}"


@operation()
def remove_files(paths: list[str], state: HostState):
    present = [path for path in paths if path in state.files]
    if not present:
        host.noop("none of the kit's files left")
        return
    yield "rm -f " + " ".join(q(path) for path in present)


@operation()
def purge_packages(names: tuple[str, ...], commands: tuple[str, ...], settings: Settings,
                   state: HostState):
    """Only with registry_packages_remove_on_teardown=True, like docker_remove_on_teardown."""
    if not settings.registry_packages_remove_on_teardown:
        host.noop(f"{', '.join(names)} stay (registry_packages_remove_on_teardown=False)")
        return
    if not any(command in state.commands for command in commands):
        host.noop(f"{', '.join(names)} not installed")
        return
    if state.os.family == "rhel":
        yield "dnf -y remove " + join(names)
    else:
        yield "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q " + join(names)


def lb_teardown(settings: Settings, state: HostState) -> None:
    """A registry_lb host is never a registry_servers host (scaleout.validate)."""
    stop_services([keepalived.SERVICE, loadbalancer.SERVICE], state,
                  name="Stop and disable keepalived and haproxy")
    remove_files([layout.KEEPALIVED_CONF, layout.HAPROXY_CFG], state,
                 name="Remove keepalived.conf and haproxy.cfg")
    plans = [plan_folder(state, layout.LB_CERT_DIR, ["registry.pem", "ca.crt"],
                         needs_marker=False),
             plan_folder(state, layout.SCRIPTS_DIR, LB_SCRIPTS, needs_marker=False)]
    for plan in plans:
        if plan.kept:
            logger.warning(f"{host.name}: {plan.kept}")
    remove_folders(plans, name="Remove the LB's certificate folder and scripts")
    purge_packages(LB_PACKAGES, (*loadbalancer.COMMANDS, *keepalived.COMMANDS), settings,
                   state, name="Remove haproxy, socat, keepalived "
                   "(registry_packages_remove_on_teardown)")


def cache_teardown(settings: Settings, state: HostState) -> None:
    redis = cache.family(state)
    stop_services([redis.service], state, name=f"Stop and disable {redis.service}")
    remove_files([layout.REDIS_CONF], state, name="Remove the kit's redis.conf")
    names = CACHE_PACKAGES.get(state.os.family, CACHE_PACKAGES["debian"])
    purge_packages(names, cache.COMMANDS, settings, state,
                   name=f"Remove {', '.join(names)} (registry_packages_remove_on_teardown)")
