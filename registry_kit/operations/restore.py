"""restore.py: put a backup made by backup.py onto a registry server and bring the
registry up on it: a fresh server, or the same one after a purge.

The deploy runs first (Docker, config, certificates, the container, the data folder with
its ownership marker), then the blobs the server lacks are copied from the backup and its
repositories tree replaces the server's, and the registry is restarted (it forgets what
it cached about the old storage) and must answer /v2/. A server already holding exactly
the backup (the same blobs and the same repositories tree) is left alone.

The backup is `registry_restore_from` (a folder holding index.json) or else the latest
backup of this host, `<registry_backup_dir>/<host>`, on the control machine or on
registry_backup_host. A folder without index.json stops the run with one line before any
host is touched.

Reads: what deploy.py reads, and registry_restore_from, registry_backup_dir,
registry_backup_host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation
from pyinfra.facts.server import Command

from registry_kit import package_data, plan
from registry_kit.commands import join, q
from registry_kit.inventory import DEFAULT_GROUPS, Groups, refusal
from registry_kit.operations import backup, server
from registry_kit.operations.backup import INDEX, BackupError, Side
from registry_kit.settings import Settings, SettingsError

RESTART_SCRIPT = package_data.script("registry-restart.sh")


def restart_and_wait(sink: Side, settings: Settings) -> None:
    url, resolve, ca = server.health_target(settings)
    sink.check("sh -s " + join([settings.registry_container_name, url, resolve, ca,
                                settings.registry_verify_timeout]), RESTART_SCRIPT)


def _run_restore(state: Any, host: Any, settings: Settings, root: str,
                 missing: list[str]) -> bool:
    # FunctionCommand passes state and host only to parameters with exactly these names.
    try:
        source = backup.side_for_store(root, settings)
        sink = Side(settings.registry_data_dir, host.name, host.connector.client)
        moved = backup.copy_blobs(source, sink, missing)
        backup.put_repositories(sink, backup.repositories_tar(source))
        restart_and_wait(sink, settings)
    except BackupError as error:
        host.log_styled(f"registry-kit: restore failed: {error}", fg="red", log_func=logger.error)
        return False
    host.log_styled(f"registry-kit: restored {source.name}:{root} onto {host.name}: "
                    f"{len(missing)} blobs copied ({moved} bytes of tar), repositories "
                    "replaced, registry restarted and answering", fg="cyan",
                    log_func=logger.info)
    return True


@operation()
def restore(settings: Settings, root: str, missing: list[str], same_tree: bool):
    if not missing and same_tree:
        host.noop(f"{settings.registry_data_dir} already holds the backup in {root}")
        return
    yield FunctionCommand(_run_restore, (settings, root, missing), {})


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    all_settings = plan.validated_settings(groups, defaults)
    settings = all_settings[host.name]
    if groups.servers not in host.groups:
        plan.plan_host(groups, defaults)
        return
    backup.refuse_unsupported(settings, "restore.py")
    root = settings.registry_restore_from or f"{backup.backup_base(settings)}/{host.name}"
    raw_index = backup.store_fact(settings, f"cat {q(root + '/' + INDEX)} 2>/dev/null; true")
    try:
        index = json.loads(raw_index)
        assert isinstance(index, dict) and "blobs" in index
    except (ValueError, AssertionError):
        where = settings.registry_backup_host or "the control machine"
        raise refusal(SettingsError(
            f"{host.name}: setting registry_restore_from={root!r} is not allowed: no "
            f"backup there ({where} has no readable {root}/{INDEX}; make one with "
            "backup.py)")) from None
    # Planned before the deploy's operations run: the data folder may not exist yet.
    on_server = backup.parse_blobs(host.get_fact(Command, backup.blob_listing_command(
        settings.registry_data_dir)))
    server_tree = str(host.get_fact(Command, backup.repositories_hash_command(
        settings.registry_data_dir)) or "").strip()
    in_backup = backup.parse_blobs(backup.store_fact(settings, backup.blob_listing_command(root)))
    backup_tree = backup.store_fact(settings, backup.repositories_hash_command(root)).strip()
    plan.plan_host(groups, defaults)  # the registry itself, as deploy.py sets it up
    restore(settings, root, backup.missing_blobs(on_server, in_backup),
            bool(backup_tree) and server_tree == backup_tree,
            name=f"Restore registry data from {root}", _serial=True)
