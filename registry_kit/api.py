"""registry-kit's API: the @deploy functions a pyinfra project calls, e.g.
`api.registry(servers="hub", clients="builders", settings={"registry_port": 443})`.

README "Use as a library" tells which hosts each acts on, the order of settings and how a
refused setting is raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pyinfra import host
from pyinfra.api import deploy

from registry_kit.model.inventory import Groups, in_groups
from registry_kit.model.settings import known_keys

# Each function below imports its own job when called: a run loads the job it runs and not
# the five others (a deploy need not import backup's thousand lines; issue 29).
DATA_DEFAULTS = known_keys()
F = TypeVar("F")


def _keep_operation_names(function: F) -> F:
    """pyinfra shows each operation of a @deploy as "DEPLOY NAME | operation name". The
    kit's operation names already say what they do, and users (and the e2e suites) read
    and match them as they are, so the kit's deploys keep them unprefixed."""
    function._inner.deploy_name = ""  # type: ignore[attr-defined]
    return function


def _plan(job: Any, servers: str, clients: str, lb: str, cache: str,
          settings: Mapping[str, Any] | None) -> None:
    """Plan `job` for the current host when it is in one of the named groups."""
    groups = Groups(servers=servers, clients=clients, lb=lb, cache=cache)
    if in_groups(host, groups):
        job.plan_host(groups, settings)


@_keep_operation_names
@deploy("registry-kit: registry", data_defaults=DATA_DEFAULTS)
def registry(servers: str = "registry_servers", clients: str = "registry_clients",
             lb: str = "registry_lb", cache: str = "registry_cache",
             settings: Mapping[str, Any] | None = None) -> None:
    """The registry service: Docker and the registry on `servers`, trust (and an optional
    login) on `clients`, haproxy on `lb` and redis on `cache` (scale-out). Idempotent."""
    from registry_kit.jobs import deploy as job

    _plan(job, servers, clients, lb, cache, settings)


@_keep_operation_names
@deploy("registry-kit: teardown", data_defaults=DATA_DEFAULTS)
def teardown(servers: str = "registry_servers", clients: str = "registry_clients",
             lb: str = "registry_lb", cache: str = "registry_cache",
             settings: Mapping[str, Any] | None = None) -> None:
    """Remove what registry() set up (data only with registry_purge_data=True, the engine
    only with docker_remove_on_teardown=True). A second teardown changes nothing."""
    from registry_kit.jobs import teardown as job

    _plan(job, servers, clients, lb, cache, settings)


@_keep_operation_names
@deploy("registry-kit: garbage collection", data_defaults=DATA_DEFAULTS)
def garbage_collect(servers: str = "registry_servers", clients: str = "registry_clients",
                    lb: str = "registry_lb", cache: str = "registry_cache",
                    settings: Mapping[str, Any] | None = None) -> None:
    """Garbage-collect each server's storage, one server at a time (read-only meanwhile)."""
    from registry_kit.jobs import gc as job

    _plan(job, servers, clients, lb, cache, settings)


@_keep_operation_names
@deploy("registry-kit: retention", data_defaults=DATA_DEFAULTS)
def retention(servers: str = "registry_servers", clients: str = "registry_clients",
              lb: str = "registry_lb", cache: str = "registry_cache",
              settings: Mapping[str, Any] | None = None) -> None:
    """Apply registry_retention_rules on each server (filesystem storage) or once per S3
    bucket the servers share: report the tags and manifests they delete and the bytes a GC
    then frees; with registry_retention_apply=True, delete them and collect garbage, one
    server at a time (read-only meanwhile; on S3 every replica of the bucket)."""
    from registry_kit.jobs import retention as job

    _plan(job, servers, clients, lb, cache, settings)


@_keep_operation_names
@deploy("registry-kit: status", data_defaults=DATA_DEFAULTS)
def status(servers: str = "registry_servers", clients: str = "registry_clients",
           lb: str = "registry_lb", cache: str = "registry_cache",
           settings: Mapping[str, Any] | None = None) -> None:
    """Print the servers' and clients' state as two tables; changes nothing."""
    from registry_kit.jobs import status as job

    _plan(job, servers, clients, lb, cache, settings)


@_keep_operation_names
@deploy("registry-kit: backup", data_defaults=DATA_DEFAULTS)
def backup(servers: str = "registry_servers", clients: str = "registry_clients",
           lb: str = "registry_lb", cache: str = "registry_cache",
           settings: Mapping[str, Any] | None = None) -> None:
    """Copy each server's registry data (filesystem storage) to registry_backup_dir on the
    control machine or registry_backup_host: new blobs only, the registry serving throughout;
    with registry_backup_verify=True, re-hash the backup's blobs instead."""
    from registry_kit.jobs import backup as job

    _plan(job, servers, clients, lb, cache, settings)


@_keep_operation_names
@deploy("registry-kit: restore", data_defaults=DATA_DEFAULTS)
def restore(servers: str = "registry_servers", clients: str = "registry_clients",
            lb: str = "registry_lb", cache: str = "registry_cache",
            settings: Mapping[str, Any] | None = None) -> None:
    """Deploy as registry() does, then put a backup made by backup() onto each server."""
    from registry_kit.jobs import restore as job

    _plan(job, servers, clients, lb, cache, settings)
