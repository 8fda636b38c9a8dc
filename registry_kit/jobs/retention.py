"""Retention (retention.py): apply registry_retention_rules to each server's storage.

One read-only command per server lists its storage (filesystem storage): every tag's current
link with its time (the push time as the storage records it: the link is rewritten at each
push of the tag; not the image's `created`, which is build time), every manifest revision of
every repository, and each manifest's JSON; registry_kit.model.retention decides. By default
the run only reports, per repository, the tags kept and deleted with the reason, the
manifests deleted and the bytes a garbage collection would then free, and changes nothing.

With registry_retention_apply=True, on a server with something to delete: the registry goes
read-only (registry-gc.sh's readonly step, as garbage_collect.py does), the storage is listed
again and compared with what was planned (a push since then refuses the run, nothing
deleted), the selected tag folders and manifest revisions are removed (what the registry's
own DELETE does on filesystem storage: the revision link goes, and with it every tag of
it), garbage collection runs (without --delete-untagged: it must delete only what the rules
selected), and the registry is made writable again whatever happened. Bytes freed are
measured on the blobs folder. Filesystem storage is each server's own, so servers are done
one at a time, each on its own storage; other storage drivers are refused in one line.
The same steps run on a server from its own timer with registry_retention_schedule
(registry_kit.roles.retention_timer: the same listing command, planner and delete paths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand
from pyinfra.facts.server import Command

from registry_kit import sharedgc
from registry_kit.commands import join, q
from registry_kit.facts import HostState, RegistryHostState
from registry_kit.model import layout, retention
from registry_kit.model.inventory import (
    DEFAULT_GROUPS,
    Groups,
    ReportedCommand,
    fail_host,
    no_container,
    refusal,
    server_settings,
)
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.operations.typed import operation
from registry_kit.roles import server
from registry_kit.roles.gc_timer import SCRIPT, gc_arguments
from registry_kit.roles.retention_timer import (
    FINGERPRINT,
    LISTING,
    listing_command,
)


def apply_command(settings: Settings, plan: retention.Plan, fingerprint: str) -> str:
    """Read-only, check nothing changed, delete, collect, writable again (always)."""
    args = [a for a in gc_arguments(settings, dry_run=False) if a != "--delete-untagged"]
    check = join(sharedgc.step_arguments(args, "check"))
    readonly = join(sharedgc.step_arguments(args, "readonly"))
    collect = join(sharedgc.step_arguments(args, "collect"))
    writable = join(sharedgc.step_arguments(args, "writable"))
    v2 = layout.ServerLayout.of(settings).storage_v2
    paths = retention.delete_paths(plan)
    removal = " ".join(q(path) for path in paths)
    work = (
        f"cd {q(v2)} && before=$(du -sb blobs | cut -f1) && list=$({LISTING}) && "
        f"if [ \"$({FINGERPRINT})\" != {q(fingerprint)} ]; then echo 'registry-kit: "
        "retention refused: the storage changed since it was read (a push?); nothing was "
        "deleted: run retention.py again' >&2; exit 1; fi && "
        f"rm -rf -- {removal} && echo 'registry-kit: retention removed {q(len(paths))} tag and "
        f"manifest folders' && {collect} && after=$(du -sb blobs | cut -f1) && "
        "echo \"registry-kit: retention: garbage collection freed $((before - after)) bytes "
        f"of blobs (planned {q(plan.freed_bytes)})\"")
    # The run's record: status.py shows its time (roles/usage.py), the journal keeps them all.
    record = layout.ServerLayout.of(settings).retention_record
    work += (" && msg=$(printf 'retention: %s tag and manifest folders deleted, %s bytes of "
             f"blobs freed' {q(len(paths))} \"$((before - after))\") && "
             f"echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) $msg\" >{q(record + '.new')} && "
             f"mv -f {q(record + '.new')} {q(record)} && "
             "{ logger -t registry-kit \"$msg\" 2>/dev/null || true; }")
    # Held read-only by the disk guard: no check step (it wants the deployed writable config);
    # the readonly step pauses the guard, writable puts its read-only config back.
    guard = layout.ServerLayout.of(settings).disk_guard_flag
    # The run's result for Prometheus (registry_metrics), as a collection leaves its own.
    result = join([args[0], "--retention-result", layout.FACTS_RETENTION])
    # The timers' lock (gc_timer.locked), held by this shell and what it starts: never
    # beside a scheduled GC or retention run of this registry.
    return (f"exec 9>>{q(layout.MAINTENANCE_LOCK)} && {layout.FLOCK} 9 || exit 1; "
            f"{{ [ -e {q(guard)} ] || {check}; }} && {readonly} || exit 1; ( {work} ); ok=$?; "
            f"{writable} || ok=1; {result} \"$ok\"; exit $ok")


@operation()
def apply_retention(settings: Settings, state: HostState, plan: retention.Plan,
                    fingerprint: str):
    if state.container is None:
        yield FunctionCommand(fail_host, (no_container(settings),), {})
        return
    if plan.empty:
        host.noop("retention: nothing to delete")
        return
    yield ReportedCommand(apply_command(settings, plan, fingerprint))


def summary(plan: retention.Plan, apply: bool) -> str:
    tags = [d for r in plan.repositories for d in r.tags]
    deleted = [d for d in tags if not d.keep]
    manifests = sum(len(r.delete_manifests) for r in plan.repositories)
    what = "report only: nothing deleted" if not apply else \
        "nothing to delete" if plan.empty else "deleting"
    return (f"retention ({what}) {len(tags) - len(deleted)} tags kept, {len(deleted)} "
            f"deleted ({sum(d.tag_only for d in deleted)} tag only), {manifests} manifests "
            f"deleted; a garbage collection then frees {plan.freed_bytes} bytes")


def report(lines: Sequence[str]) -> None:
    for line in lines:
        logger.info(f"{host.print_prefix}registry-kit: {line}")


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    settings = server_settings(groups, defaults)
    if settings is None:
        return
    if settings.registry_storage.driver != "filesystem":
        raise refusal(SettingsError(
            f"{host.name}: setting registry_storage={{'driver': "
            f"{settings.registry_storage.driver!r}}} is not allowed: retention.py reads and "
            "deletes on filesystem storage only (other drivers: not yet); nothing was changed"))
    scripts = ["lib.sh", SCRIPT]  # registry-gc.sh sources lib.sh
    state = host.get_fact(RegistryHostState, files=list(map(layout.script, scripts)),
                          dirs=[layout.SCRIPTS_DIR], container=settings.registry_container_name)
    listing = retention.read_listing((host.get_fact(Command, listing_command(settings))
                                      or "").splitlines())
    plan = retention.plan(listing.repositories, settings.registry_retention_rules, listing.now)
    report([*retention.report_lines(plan), summary(plan, settings.registry_retention_apply)])
    if not settings.registry_retention_apply:
        return
    if state.container is not None and not plan.empty:
        server.install_scripts(scripts, state)  # servers deployed before the script existed
    # One server at a time: each is read-only while it deletes and collects.
    apply_retention(settings, state, plan, listing.fingerprint,
                    name="Apply retention rules (registry read-only meanwhile)", _serial=True)
