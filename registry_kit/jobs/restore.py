"""restore.py: put a backup made by backup.py onto a registry server and bring the
registry up on it: a fresh server, or the same one after a purge.

The deploy runs first (Docker, config, certificates, the container, the data folder with
its ownership marker), then the blobs the server lacks are copied from the backup and its
repositories tree replaces the server's, and the registry is restarted (it forgets what
it cached about the old storage) and must answer /v2/. A server already holding exactly
the backup (the same blobs and the same repositories tree) is left alone.

The backup is `registry_restore_from` (a backup folder) or else this host's,
`<registry_backup_dir>/<host>`, on the control machine or on registry_backup_host; of it,
the generation `registry_restore_generation` or else the newest (a backup made before
generations is one generation). Before any host is touched, one line stops the run when
there is no index.json, when the generation's tree does not match its index, or when the
backup lacks a blob the index names. The backup's side may be broken into: what it sends
is checked as in backup.py (only the blobs asked for and `link` files, as regular files).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand
from pyinfra.facts.server import Command

from registry_kit import package_data
from registry_kit.commands import join, q
from registry_kit.jobs import backup, deploy
from registry_kit.jobs.backup import BackupError, Side
from registry_kit.model.inventory import DEFAULT_GROUPS, Groups, refusal
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.operations.typed import operation
from registry_kit.roles import server

# Sent on stdin after lib.sh, which it cannot source from a folder.
RESTART_SCRIPT = package_data.script("lib.sh") + package_data.script("registry-restart.sh")


def restart_and_wait(sink: Side, settings: Settings) -> None:
    url, resolve, ca = server.health_target(settings)
    sink.check("sh -s " + join([settings.registry_container_name, url, resolve, ca,
                                settings.registry_verify_timeout]), RESTART_SCRIPT)


def _run_restore(state: Any, host: Any, settings: Settings, root: str,
                 generation: str | None, missing: list[str], sizes: dict[str, int],
                 index: dict[str, Any]) -> bool:
    # FunctionCommand passes state and host only to parameters with exactly these names.
    try:
        source = backup.side_for_store(root, settings)
        sink = Side(settings.registry_data_dir, host.name, host.connector.client)
        moved, received = backup.copy_blobs(source, sink, missing, sizes)
        if len(received) != len(missing):
            raise BackupError(f"{source.name}: sent {len(received)} of the {len(missing)} "
                              "blobs asked for; repositories left as they were")
        tree = backup.repositories_tar(source, backup.generation_base(root, generation),
                                       settings.registry_backup_tree_max_bytes)
        # Read again now: the tree must still be the one the plan checked against the index.
        backup.tree_matches_index(tree, index, f"{source.name}:{root}")
        backup.put_repositories(sink, tree)
        restart_and_wait(sink, settings)
    except BackupError as error:
        host.log_styled(f"registry-kit: restore failed: {error}", fg="red", log_func=logger.error)
        return False
    host.log_styled(f"registry-kit: restored {source.name}:{root} (generation "
                    f"{generation or 'from before generations'}) onto {host.name}: "
                    f"{len(missing)} blobs copied ({moved} bytes of tar), repositories "
                    "replaced, registry restarted and answering", fg="cyan",
                    log_func=logger.info)
    return True


@operation()
def restore(settings: Settings, root: str, generation: str | None, missing: list[str],
            sizes: dict[str, int], index: dict[str, Any], same_tree: bool):
    if not missing and same_tree:
        host.noop(f"{settings.registry_data_dir} already holds the backup in {root}")
        return
    yield FunctionCommand(_run_restore, (settings, root, generation, missing, sizes, index), {})


def refuse(settings: Settings, root: str, why: str) -> BaseException:
    return refusal(SettingsError(
        f"{host.name}: setting registry_restore_from={root!r} is not allowed: {why}"))


def choose_generation(settings: Settings, root: str) -> str | None:
    """The generation to restore: registry_restore_generation, else the newest; None for
    a backup made before generations (its tree and index.json in the old places)."""
    names = backup.parse_generations(backup.store_fact(settings,
                                                       backup.generations_command(root)))
    wanted = settings.registry_restore_generation
    if wanted is not None and wanted not in names:
        raise refusal(SettingsError(
            f"{host.name}: setting registry_restore_generation={wanted!r} is not allowed: "
            f"{root} has {', '.join(names) or 'no generations'}"))
    return wanted or (names[-1] if names else None)


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    all_settings = deploy.validated_settings(groups, defaults)
    settings = all_settings[host.name]
    if groups.servers not in host.groups:
        deploy.plan_host(groups, defaults)
        return
    backup.refuse_unsupported(settings, "restore.py")
    root = settings.registry_restore_from or f"{backup.backup_base(settings)}/{host.name}"
    generation = choose_generation(settings, root)
    index_path = backup.generation_index(root, generation)
    raw_index = backup.store_fact(settings, f"cat {q(index_path)} 2>/dev/null; true")
    where = settings.registry_backup_host or "the control machine"
    try:
        index = json.loads(raw_index)
        assert isinstance(index, dict) and "blobs" in index
    except (ValueError, AssertionError):
        raise refuse(settings, root, f"no backup there ({where} has no readable {index_path}; "
                     "make one with backup.py)") from None
    base = backup.generation_base(root, generation)
    backup_tree = backup.store_fact(settings, backup.tree_hash_command(base)).strip()
    try:
        needed = backup.index_blobs(index, index_path)
        named_tags = backup.index_tags(index, index_path)
        in_backup = backup.parse_blobs(backup.store_fact(settings, backup.blob_listing_command(
            root)), where)
    except BackupError as error:
        raise refuse(settings, root, str(error)) from None
    # A tree that does not match its index (cut short, or changed since) is not restored:
    # it would replace the server's whole repositories folder.
    recorded = index.get("tree_sha256")
    if (recorded and recorded != backup_tree) or (not recorded and named_tags and
                                                  not backup_tree):
        raise refuse(settings, root, f"the repositories tree in {base} does not match "
                     f"{index_path} (tree sha256 {backup_tree or 'none'}, index says "
                     f"{recorded or 'tags'}); restore another generation with "
                     "registry_restore_generation")
    lacking = [d for d, size in needed.items() if in_backup.get(d) != size]
    if lacking:
        raise refuse(settings, root, f"it lacks {len(lacking)} of the blobs {index_path} names "
                     f"(first: sha256:{lacking[0]}); check it with registry_backup_verify=True")
    # Planned before the deploy's operations run: the data folder may not exist yet.
    try:
        on_server = backup.parse_blobs(host.get_fact(Command, backup.blob_listing_command(
            settings.registry_data_dir)), host.name)
    except BackupError as error:
        raise backup.store_refusal(error) from None
    server_tree = str(host.get_fact(Command, backup.repositories_hash_command(
        settings.registry_data_dir)) or "").strip()
    deploy.plan_host(groups, defaults)  # the registry itself, as deploy.py sets it up
    restore(settings, root, generation, backup.missing_blobs(on_server, needed), needed, index,
            bool(backup_tree) and server_tree == backup_tree,
            name=f"Restore registry data from {root}", _serial=True)
