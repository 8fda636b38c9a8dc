"""Garbage collection when several registry replicas share one storage (garbage_collect.py,
scale-out).

Which replicas share storage: those whose `registry_storage` has the same driver and the
same location (s3: bucket, rootdirectory and the endpoint, normalised and compared by the
addresses it resolves to on the control machine, any doubt counting as shared; azure:
account, container, realm/serviceurl, rootdirectory; gcs: bucket, rootdirectory).
Credentials do not matter: two key pairs on one bucket still share it. filesystem and
inmemory storage are each server's own (a filesystem folder on NFS is not detected: the
kit cannot see that), so those servers keep the one-server-at-a-time collection of
registry_kit.jobs.gc.

The registry's docs require every writer to be read-only for the whole collection (mark
and sweep): a blob pushed through a writable replica during the mark phase is swept. So a
shared-storage collection is: every replica read-only, collection on one replica only,
every replica read-write again, in that order, the last step whatever happened.

Why one control-side operation and not three operation stages: pyinfra runs an operation
on every host and waits before the next, but drops a host whose step failed from every
later operation. With stages "read-only on all / collect on one / read-write on all", a
replica whose read-only restart failed (or the collecting one, when the collection failed)
would never get the read-write stage. So the whole collection is one operation on the
group's first replica (inventory order); its command runs each step from the control
machine over the other replicas' own connections (as topology.OutOfRotation does with the
load balancers), in order, with the read-write steps in a `finally`. Each read-only or
read-write restart happens while that replica is drained out of every load balancer, so
requests in flight finish instead of being cut. After the collection the redis
blob-descriptor cache is emptied while still read-only: garbage-collect does not evict it
(distribution/distribution#2945, #4269), and a stale entry makes a later push of a deleted
layer "already exist" without its data.

Before anything changes: every replica of the group must be in this run (an unreachable
one, or one left out by --limit, refuses the run at planning time) and pass a check step.

The timer (registry_gc_schedule) cannot do this: it runs on one replica, which has no way
to make the others read-only (the control machine does that over SSH here). So on shared
storage the setting is refused; run garbage_collect.py from the control machine on a
schedule instead.
Servers that share nothing keep their own timer.
"""

from __future__ import annotations

import functools
import ipaddress
import posixpath
import socket
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyinfra import logger
from pyinfra.api import StringCommand
from pyinfra.connectors.util import CommandOutput

from registry_kit import s3objects
from registry_kit.commands import auth_arguments, join, q
from registry_kit.model import layout
from registry_kit.model.settings import Settings, SettingsError, Storage
from registry_kit.model.topology import OutOfRotation, Rotation

# The keys that say where a driver keeps its data (not how it authenticates or tunes).
LOCATION_KEYS: Mapping[str, tuple[str, ...]] = {
    "s3": ("regionendpoint", "region", "bucket", "rootdirectory"),
    "azure": ("accountname", "container", "realm", "serviceurl", "rootdirectory"),
    "gcs": ("bucket", "rootdirectory"),
}
STEPS = ("check", "readonly", "collect", "writable")


def storage_location(storage: Storage) -> tuple[Any, ...] | None:
    """What identifies the place a storage keeps its data; None: this server's own. For s3
    the endpoint is normalised (s3_endpoint) but not resolved: may_share compares that."""
    keys = LOCATION_KEYS.get(storage.driver)
    if keys is None:
        return None
    params = dict(storage.params)
    if storage.driver == "s3":
        params.pop("region", None)  # the endpoint names the store; region only signs
        params.pop("regionendpoint", None)
        params["bucket"] = str(params.get("bucket", "")).lower()
        endpoint = s3_endpoint(storage.params)
        return ("s3", ("endpoint", f"{endpoint.host}:{endpoint.port}"),
                ("bucket", params["bucket"]), ("rootdirectory", _root(params)))
    if "rootdirectory" in params:
        params["rootdirectory"] = _root(params)
    return (storage.driver, *((key, str(params[key])) for key in keys
                               if params.get(key) not in (None, "")))


def _root(params: Mapping[str, Any]) -> str:
    root = str(params.get("rootdirectory") or "")
    return posixpath.normpath("/" + root).strip("/") if root.strip("/") else ""


# --- Which S3 endpoints are the same store -----------------------------------------------
# The same store can be spelled many ways: MINIO.lab or minio.lab, with or without the
# default port or a trailing slash, the bucket in the path or in the host name, a name or
# its address. A per-server collection on a storage that is in fact shared sweeps blobs the
# other replicas are writing, so every doubt counts as shared (the shared collection is
# safe on storages that turn out to be distinct: it only makes them read-only a while).

AWS = "amazonaws.com"  # bucket names are global there: a region does not tell buckets apart
Resolver = Callable[[str, int], "frozenset[str] | None"]


@dataclass(frozen=True)
class Endpoint:
    host: str  # lower case, no trailing dot, an IP address in its canonical form
    port: int


def s3_endpoint(params: Mapping[str, Any]) -> Endpoint:
    """The S3 service a storage talks to: scheme and default port folded into the port,
    case, trailing dot and slash, path and a virtual-host bucket prefix dropped; without
    regionendpoint, AWS (whatever the region)."""
    raw = str(params.get("regionendpoint") or "").strip()
    if not raw:
        return Endpoint(AWS, 443)
    if "://" not in raw:
        raw = ("https://" if params.get("secure", True) is not False else "http://") + raw
    parts = urllib.parse.urlsplit(raw)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")  # urlsplit lowercases it, drops [ ]
    try:
        port = parts.port
    except ValueError:  # settings validation rejects it; never crash on it here
        port = None
    if port is None:
        port = 443 if scheme == "https" else 80
    bucket = str(params.get("bucket", "")).lower()
    if bucket and host.startswith(bucket + "."):  # virtual-host style
        host = host[len(bucket) + 1:]
    if host == AWS or host.endswith("." + AWS):
        host = AWS
    return Endpoint(_canonical_ip(host) or host, port)


def _canonical_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


@functools.cache
def resolve_addresses(host: str, port: int) -> frozenset[str] | None:
    """The addresses the control machine resolves a name to; None when it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    found = {_canonical_ip(str(info[4][0])) for info in infos}
    return frozenset(address for address in found if address) or None


def same_endpoint(a: Endpoint, b: Endpoint, resolve: Resolver = resolve_addresses) -> bool:
    """Equal once normalised, or resolving to a common address, or in doubt (one name
    resolves and the other does not). Two names that do not resolve compare by name."""
    if a == b:
        return True
    if a.port != b.port or AWS in (a.host, b.host):
        return False

    def addresses(endpoint: Endpoint) -> frozenset[str] | None:
        literal = _canonical_ip(endpoint.host)
        return frozenset({literal}) if literal else resolve(endpoint.host, endpoint.port)

    mine, theirs = addresses(a), addresses(b)
    if mine is None and theirs is None:
        return False  # different names (a == b failed), neither resolves
    if mine is None or theirs is None:
        return True  # in doubt
    return bool(mine & theirs)


def may_share(a: Storage, b: Storage, resolve: Resolver = resolve_addresses) -> bool:
    """Whether two storages are, or may be, the same place."""
    first, second = storage_location(a), storage_location(b)
    if first is None or second is None or a.driver != b.driver:
        return False
    if a.driver != "s3":
        return first == second
    return first[2:] == second[2:] and \
        same_endpoint(s3_endpoint(a.params), s3_endpoint(b.params), resolve)


def storage_groups(servers: Sequence[Settings],
                   resolve: Resolver = resolve_addresses) -> tuple[tuple[Settings, ...], ...]:
    """Servers (inventory order) grouped by the storage they share or may share (linked
    through any member); a server sharing nothing is a group of one. Groups in the order
    of their first server."""
    groups: list[list[int]] = []  # positions in servers
    for index, settings in enumerate(servers):
        linked = [group for group in groups
                  if any(may_share(settings.registry_storage, servers[other].registry_storage,
                                   resolve) for other in group)]
        groups = [group for group in groups if group not in linked]
        groups.append(sorted([other for group in linked for other in group] + [index]))
    groups.sort(key=lambda group: group[0])
    return tuple(tuple(servers[index] for index in group) for group in groups)


def group_of(name: str, groups: Iterable[tuple[Settings, ...]]) -> tuple[Settings, ...]:
    for group in groups:
        if any(settings.host == name for settings in group):
            return group
    raise KeyError(name)


def unreachable_refusal(group: Sequence[Settings], active: Iterable[str],
                        script: str = "garbage_collect.py",
                        run: str = "a collection") -> str | None:
    """One line when a replica sharing the storage is not in this run."""
    present = set(active)  # once: `active` may be a generator
    missing = [s.host for s in group if s.host not in present]
    if not missing:
        return None
    names = ", ".join(s.host for s in group)
    return (f"{missing[0]}: {script} refused: {', '.join(missing)} not reachable "
            f"(or left out by --limit); {run} on shared storage makes every replica "
            f"read-only first ({names}): nothing was changed")


def schedule_refusal(servers: Sequence[Settings]) -> SettingsError | None:
    """registry_gc_schedule is refused where several servers share one storage."""
    for group in storage_groups(servers):
        if len(group) < 2:
            continue
        for settings in group:
            if settings.registry_gc_schedule is not None:
                names = ", ".join(s.host for s in group)
                return SettingsError(
                    f"{settings.host}: setting registry_gc_schedule="
                    f"{settings.registry_gc_schedule!r} is not allowed: None where several "
                    f"registry_servers share one storage ({names}): a timer runs on one "
                    "replica and cannot make the others read-only; schedule "
                    "garbage_collect.py on the control machine instead")
    return None


def timer_wanted(settings: Settings, servers: Sequence[Settings]) -> bool:
    """The GC timer goes on the first server of its storage group only (a group of one
    with schedule_refusal in force); every other server has it removed."""
    if settings.registry_gc_schedule is None:
        return False
    return group_of(settings.host, storage_groups(servers))[0].host == settings.host


def step_arguments(gc_arguments: Sequence[str], step: str) -> list[str]:
    """registry-gc.sh's arguments for one step: `--step STEP` after the script path."""
    if step not in STEPS:
        raise ValueError(step)
    return [gc_arguments[0], "--step", step, *gc_arguments[1:]]


def cache_flush_command(cache: Settings) -> str:
    """Empty the registry's redis database, password read from redis.conf into
    REDISCLI_AUTH on the cache host (never in argv)."""
    auth = f"REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' {q(layout.REDIS_CONF)})\""
    cli = (f"redis-cli --no-auth-warning -h {q(cache.registry_internal_address)} -p "
           f"{q(cache.registry_cache_port)} -n {q(cache.registry_cache_db)}")
    return (f"a=$({auth} {cli} flushdb 2>&1); [ \"$a\" = OK ] && echo 'registry-kit: redis "
            f"blob-descriptor cache emptied' || {{ echo \"registry-kit: redis flushdb: $a\" "
            ">&2; exit 1; }")


# --- Bytes in an S3 bucket (ListObjectsV2, signed like s3check's HEAD) -----------------------

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def s3_prefix(params: Mapping[str, Any]) -> str:
    root = str(params.get("rootdirectory") or "").strip("/")
    return f"{root}/docker/" if root else "docker/"


def parse_listing(xml: bytes) -> tuple[int, str | None]:
    """(bytes of the objects in one ListObjectsV2 page, continuation token or None)."""
    page = s3objects.parse_page(xml)
    return sum(o.size for o in page.objects), page.continuation


def bucket_bytes(params: Mapping[str, Any], opener: Callable[..., Any] | None = None) -> int:
    """Bytes under the registry's prefix in the bucket, listed from the control machine."""
    return sum(o.size for o in s3objects.list_objects(params, s3_prefix(params), opener)[0])


def measurable(storage: Storage) -> bool:
    return storage.driver == "s3" and "accesskey" in storage.params and \
        "secretkey" in storage.params


# --- The collection ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    host: str  # inventory name
    server_name: str  # its name in haproxy's backend
    commands: Mapping[str, StringCommand]  # step -> registry-gc.sh command line


@dataclass(frozen=True)
class CacheFlush:
    host: str
    command: StringCommand


class SharedCollection(StringCommand):
    """The whole collection of one shared storage, run from the group's first replica's
    operation (see the module docstring for the order and why). Retention on S3
    (registry_kit.sharedretention) is this with its deletes in `_between`."""

    what = "garbage collection"  # the run's name in its lines

    def __init__(self, members: Sequence[Member], rotation: Rotation | None,
                 cache: CacheFlush | None, storage: Storage, dry_run: bool) -> None:
        super().__init__("registry-gc.sh", "--step", "...",
                         "(every replica of the shared storage, from the control machine)")
        self.members = tuple(members)
        self.rotation = rotation
        self.cache = cache
        self.storage = storage
        self.dry_run = dry_run

    def _run(self, state: Any, leader: Any, auth: dict[str, Any], name: str,
             command: StringCommand, drained: bool = False) -> tuple[bool, list[str]]:
        target = state.inventory.get_host(name)
        try:
            if drained and self.rotation is not None:
                wrapped = OutOfRotation(command, self.rotation,
                                        next(m.server_name for m in self.members
                                             if m.host == name))
                status, output = wrapped.execute(state, target, auth)
            else:
                status, output = target.run_shell_command(command, **auth)
        except Exception as error:  # an SSH connection lost mid-way: that step failed
            logger.error(f"{leader.print_prefix}{name}: {error}")
            return False, []
        for line in output:
            if line.line.startswith("registry-kit: ") or not status:
                log = logger.error if line.buffer_name == "stderr" else logger.info
                log(f"{leader.print_prefix}{name}: {line.line}")
        return bool(status), list(output.stdout_lines)

    def _bytes(self, leader: Any) -> int | None:
        if not measurable(self.storage):
            return None
        try:
            return bucket_bytes(self.storage.params)
        except (urllib.error.URLError, OSError, ElementTree.ParseError) as error:
            logger.warning(f"{leader.print_prefix}cannot list the bucket to measure: {error}")
            return None

    def _dry_run(self, state: Any, host: Any, auth: Any, report: Any) -> bool:
        """Collect with --dry-run on the first replica: every replica stays writable."""
        leader, names = self.members[0], ", ".join(m.host for m in self.members)
        ok, out = self._run(state, host, auth, leader.host, leader.commands["collect"])
        report(f"registry-kit: dry run on shared storage ({names}; from {leader.host}): "
               f"{_summary(out)}; nothing deleted" if ok else
               "registry-kit: dry run failed (see above)", ok)
        return ok

    def execute(self, state: Any, host: Any, connector_arguments: Any) -> Any:
        auth = auth_arguments({**connector_arguments, **self.connector_arguments})
        leader, names = self.members[0], ", ".join(m.host for m in self.members)

        def report(line: str, ok: bool = True) -> None:
            host.log_styled(line, fg="cyan" if ok else "red",
                            log_func=logger.info if ok else logger.error)

        for member in self.members:  # nothing changes until every replica passed
            if not self._run(state, host, auth, member.host, member.commands["check"])[0]:
                report(f"registry-kit: {self.what} refused: the check failed on "
                       f"{member.host}; nothing was changed", ok=False)
                return False, CommandOutput([])
        if self.dry_run:  # nothing is deleted: no replica needs to be read-only
            return self._dry_run(state, host, auth, report), CommandOutput([])
        failed: tuple[str, str] | None = None
        touched: list[Member] = []
        before = after = None
        summary = ""
        try:
            for member in self.members:
                touched.append(member)  # a failed step may have half run: writable undoes it
                if not self._run(state, host, auth, member.host, member.commands["readonly"],
                                 drained=True)[0]:
                    failed = ("read-only", member.host)
                    break
            if failed is None:
                before = self._bytes(host)
                failed = self._between(state, host, auth, report)
            if failed is None:
                ok, out = self._run(state, host, auth, leader.host, leader.commands["collect"])
                summary = _summary(out)
                if not ok:
                    failed = ("collect", leader.host)
            if failed is None and self.cache is not None and \
                    not self._run(state, host, auth, self.cache.host, self.cache.command)[0]:
                failed = ("cache flush", self.cache.host)
            if failed is None:
                after = self._bytes(host)
        finally:
            not_back = [m.host for m in touched
                        if not self._run(state, host, auth, m.host, m.commands["writable"],
                                         drained=True)[0]]
        back = "every replica is read-write again" if not not_back else \
            f"NOT read-write again: {', '.join(not_back)} (see above; deploy.py restores it)"
        freed_bytes = before - after if before is not None and after is not None else None
        self._finish(state, host, auth, failed is None and not not_back, freed_bytes)
        if failed is not None:
            report(f"registry-kit: {self.what} on shared storage failed at step "
                   f"'{failed[0]}' on {failed[1]}; {back}", ok=False)
            return False, CommandOutput([])
        if not_back:
            report(f"registry-kit: {self.what} on shared storage done ({summary}), "
                   f"but {back}", ok=False)
            return False, CommandOutput([])
        report(self._done_line(names, leader.host, before, after, summary))
        return True, CommandOutput([])

    def _done_line(self, names: str, leader: str, before: int | None, after: int | None,
                   summary: str) -> str:
        where = f"s3://{self.storage.params.get('bucket')}"
        freed = f"freed {before - after} bytes ({before} -> {after} bytes in {where}; " \
            if before is not None and after is not None else \
            f"freed an unmeasured number of bytes ({self.storage.driver} storage is not " \
            "measured; "
        return (f"registry-kit: {self.what} on shared storage ({names}; collected on "
                f"{leader}) {freed}{summary}){self._planned()}")

    # --- What a run that deletes before its collection adds (sharedretention) ---

    def _between(self, state: Any, host: Any, auth: dict[str, Any],
                 report: Callable[..., None]) -> tuple[str, str] | None:
        """Run with every replica read-only, before the collection: None, or the failed
        (step, where). A collection alone has nothing to do here."""
        return None

    def _finish(self, state: Any, host: Any, auth: dict[str, Any], ok: bool,
                freed: int | None) -> None:
        """After every replica was made writable again: the run's record, if it keeps one."""

    def _planned(self) -> str:
        """Text after the bytes freed (a retention run: the figure it planned)."""
        return ""


def _summary(stdout: Iterable[str]) -> str:
    prefix = "registry-kit: collected: "
    for line in stdout:
        if line.startswith(prefix):
            return line.removeprefix(prefix)
    return "garbage-collect printed no summary"


def member(settings: Settings, gc_arguments: Sequence[str], server_name: str) -> Member:
    return Member(host=settings.host, server_name=server_name,
                  commands={step: StringCommand(join(step_arguments(gc_arguments, step)))
                            for step in STEPS})
