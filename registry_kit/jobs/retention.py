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
one at a time, each on its own storage.
The same steps run on a server from its own timer with registry_retention_schedule
(registry_kit.roles.retention_timer: the same listing command, planner and delete paths).

S3 storage (registry_kit.sharedretention): the bucket is listed from the control machine
into the same listing lines, planned and reported once per storage group (the replicas
sharing it), and applied as a shared-storage collection whose deletes run while every
replica is read-only. azure, gcs and inmemory storage, and S3 without keys, are refused in
one line; the schedule stays refused off filesystem storage (model/settings.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyinfra import host, inventory, logger
from pyinfra import state as pyinfra_state
from pyinfra.api import FunctionCommand, StringCommand
from pyinfra.facts.server import Command

from registry_kit import sharedgc, sharedretention
from registry_kit.commands import join, q
from registry_kit.facts import HostState, RegistryHostState
from registry_kit.model import layout, retention, topology
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
    work += (" && msg=$(printf 'retention: %s tag and manifest folders deleted, %s bytes of "
             f"blobs freed' {q(len(paths))} \"$((before - after))\") && "
             f"{record_command(settings)}")
    # Held read-only by the disk guard: no check step (it wants the deployed writable config);
    # the readonly step pauses the guard, writable puts its read-only config back.
    guard = layout.ServerLayout.of(settings).disk_guard_flag
    result = result_command(settings)
    # The timers' lock (gc_timer.locked), held by this shell and what it starts: never
    # beside a scheduled GC or retention run of this registry.
    return (f"exec 9>>{q(layout.MAINTENANCE_LOCK)} && {layout.FLOCK} 9 || exit 1; "
            f"{{ [ -e {q(guard)} ] || {check}; }} && {readonly} || exit 1; ( {work} ); ok=$?; "
            f"{writable} || ok=1; {result} \"$ok\"; exit $ok")


def record_command(settings: Settings) -> str:
    """The run's record, the shell variable `msg` after the UTC time: status.py shows its
    time (roles/usage.py), the journal keeps them all."""
    record = layout.ServerLayout.of(settings).retention_record
    return (f"echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) $msg\" >{q(record + '.new')} && "
            f"mv -f {q(record + '.new')} {q(record)} && "
            "{ logger -t registry-kit \"$msg\" 2>/dev/null || true; }")


def result_command(settings: Settings) -> str:
    """The run's result for Prometheus (registry_metrics), as a collection leaves its own:
    the run's exit status follows as the last argument."""
    return join([gc_arguments(settings, dry_run=False)[0], "--retention-result",
                 layout.FACTS_RETENTION])


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


def storage_refusal(settings: Settings) -> SettingsError | None:
    """One line for a storage retention.py cannot read and delete in; None when it can."""
    driver = settings.registry_storage.driver
    if driver not in ("filesystem", "s3"):
        return SettingsError(
            f"{settings.host}: setting registry_storage={{'driver': {driver!r}}} is not "
            "allowed: retention.py reads and deletes on filesystem or s3 storage only (azure, "
            "gcs, inmemory: not yet); nothing was changed")
    if driver == "s3" and not sharedgc.measurable(settings.registry_storage):
        return SettingsError(
            f"{settings.host}: setting registry_storage={{'driver': 's3'}} without accesskey "
            "and secretkey is not allowed for retention.py: it lists and deletes in the "
            "bucket from the control machine with the storage's keys (instance credentials: "
            "not supported); nothing was changed")
    return None


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    settings = server_settings(groups, defaults)
    if settings is None:
        return
    why = storage_refusal(settings)
    if why is not None:
        raise refusal(why)
    scripts = ["lib.sh", SCRIPT]  # registry-gc.sh sources lib.sh
    state = host.get_fact(RegistryHostState, files=list(map(layout.script, scripts)),
                          dirs=[layout.SCRIPTS_DIR], container=settings.registry_container_name)
    if settings.registry_storage.driver == "s3":
        plan_s3(settings, state, groups, defaults)
        return
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


# --- S3 storage: once per storage group, from the control machine (sharedretention) ---

def _record_message(deleted: int, freed: int | None, bucket: str) -> str:
    return (f"retention: {deleted} tag and manifest folders deleted, "
            f"{freed if freed is not None else 'an unmeasured number of'} bytes freed in "
            f"s3://{bucket}")


def _finisher(settings: Settings, deleted: int, bucket: str) -> Any:
    """The record and result command of one replica, given the run's outcome."""
    def command(ok: bool, freed: int | None) -> StringCommand:
        if not ok:
            return StringCommand(f"{result_command(settings)} 1")
        message = _record_message(deleted, freed, bucket)
        return StringCommand(f"msg={q(message)} && {record_command(settings)}; "
                             f"{result_command(settings)} 0")
    return command


def plan_s3(settings: Settings, state: HostState, groups: Groups,
            defaults: Mapping[str, Any] | None) -> None:
    """Plan (and with registry_retention_apply, apply) once for the servers sharing this
    server's bucket, on the first of them in this run."""
    hosts = topology.build(validated_settings(groups, defaults=defaults),
                           topology.members(inventory, groups))
    group = sharedgc.group_of(settings.host, sharedgc.storage_groups(hosts.servers))
    active = [h.name for h in pyinfra_state.active_hosts]
    if settings.registry_retention_apply:
        why = sharedgc.unreachable_refusal(group, active, "retention.py",
                                           "deleting with registry_retention_apply")
        if why:
            raise refusal(SettingsError(why))
    leader = next(s for s in group if s.host in active)
    if settings.registry_retention_apply and state.container is not None:
        server.install_scripts(["lib.sh", SCRIPT], state)
    if host.name != leader.host:
        return  # planned, reported and applied once, on the group's first replica
    storage = settings.registry_storage
    try:
        listing = sharedretention.read(storage.params)
    except sharedretention.Errors as error:
        raise refusal(SettingsError(
            f"{host.name}: setting registry_storage.bucket={storage.params.get('bucket')!r}: "
            f"retention.py cannot list the bucket from the control machine ({error}); "
            "nothing was changed")) from None
    plan = retention.plan(listing.repositories, settings.registry_retention_rules, listing.now)
    names = ", ".join(s.host for s in group)
    report([f"s3://{storage.params.get('bucket')} shared by {names}: listed from the control "
            "machine",
            *retention.report_lines(plan), summary(plan, settings.registry_retention_apply)])
    if settings.registry_retention_apply:
        apply_shared(settings, group, hosts, state, plan, listing.fingerprint,
                     name="Apply retention rules on shared storage (every replica read-only "
                     "meanwhile)")


@operation()
def apply_shared(settings: Settings, group: tuple[Settings, ...], hosts: topology.Topology,
                 state: HostState, plan: retention.Plan, fingerprint: str):
    if state.container is None:
        yield FunctionCommand(fail_host, (no_container(settings),), {})
        return
    if plan.empty:
        host.noop("retention: nothing to delete")
        return
    args = {s.host: [a for a in gc_arguments(s, dry_run=False) if a != "--delete-untagged"]
            for s in group}
    members = [sharedgc.member(s, args[s.host], topology.server_name(s.host)) for s in group]
    flush = None
    if hosts.caches:
        flush = sharedgc.CacheFlush(hosts.caches[0].host, StringCommand(
            sharedgc.cache_flush_command(hosts.caches[0])))
    bucket = str(settings.registry_storage.params.get("bucket"))
    deleted = len(retention.delete_paths(plan))
    yield sharedretention.SharedRetention(
        members, hosts.rotation(), flush, settings.registry_storage, plan, fingerprint,
        {s.host: _finisher(s, deleted, bucket) for s in group})
