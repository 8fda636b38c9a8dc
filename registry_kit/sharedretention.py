"""Retention (retention.py) on S3 storage: registry_retention_rules applied to a bucket that
several replicas share (or one server uses), from the control machine.

Listing: the control machine lists the bucket (ListObjectsV2, paginated, signed:
registry_kit.s3objects) under `<rootdirectory>/docker/registry/v2/repositories/`. A tag's
push time is the LastModified of its `_manifests/tags/TAG/current/link` object, which the
registry writes again at every push of the tag (not the image's `created`, which is build
time). Each tag link and each manifest revision's blob (at most MANIFEST_MAX bytes) is read
with a GET. This builds the same lines the filesystem listing prints (`N`, `F`, `P`, `L`,
`M`: registry_kit.model.retention.read_listing), so one parser and one planner decide on
both storages, and a key that is not a valid repository/tag/digest path in the registry's
grammar is ignored there, never planned, never deleted. The fingerprint covers every tag and
revision link with its LastModified and ETag.

Planning happens once per storage group (registry_kit.sharedgc.storage_groups), on the
group's first replica in the run; the report is printed once for the group.

Applying (registry_retention_apply=True) is a shared-storage garbage collection
(sharedgc.SharedCollection: every replica of the group in the run, each made read-only while
drained out of the load balancers, the collection on the first one without
--delete-untagged, the redis blob-descriptor cache flushed, every replica writable again
whatever happened) with the deletes done between the read-only steps and the collection:
the bucket is listed again and its fingerprint compared with the plan's (a push since then
refuses the run: nothing deleted), then for each planned tag folder and manifest revision
the exact prefix `.../tags/TAG/` or `.../revisions/sha256/HEX/` (with its trailing slash, so
`a1/` never takes `a10/`) is listed and every key under it deleted (one signed DELETE per
key). That is what the registry itself does in storage: registry 3's tag delete
(TagStore.Untag) and 2.8's both delete the tag's folder through the storage driver, and a
manifest delete removes its revision link; doing it here with every replica read-only and
the cache flushed afterwards works the same on 2.x and 3.x, and does not depend on 2.x's S3
driver's prefix handling in Delete (distribution/distribution#3142, #3479).
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.error
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyinfra.api import StringCommand

from registry_kit import s3objects, sharedgc
from registry_kit.model import retention
from registry_kit.model.settings import Storage
from registry_kit.model.topology import Rotation
from registry_kit.roles.retention_timer import MANIFEST_MAX

LINK_MAX = 1024  # a link holds one digest
PARALLEL = 8  # GETs at once while listing
# Candidates for the fingerprint (the grammar is checked later, by read_listing).
_TAG_CANDIDATE = re.compile(r"repositories/.+/_manifests/tags/[^/]+/current/link")
_REVISION_CANDIDATE = re.compile(r"repositories/.+/_manifests/revisions/sha256/[^/]+/link")
_NO_SPACE = re.compile(r"\S+")
Errors = (urllib.error.URLError, OSError, ElementTree.ParseError, ValueError)


def v2_prefix(params: Mapping[str, Any]) -> str:
    """The registry's v2 folder in the bucket: `<rootdirectory>/docker/registry/v2/`."""
    return sharedgc.s3_prefix(params) + "registry/v2/"


def links(objects: Iterable[s3objects.S3Object], v2: str) \
        -> list[tuple[str, s3objects.S3Object]]:
    """(path relative to the v2 folder, object) of every tag current link and manifest
    revision link, by path."""
    found = []
    for item in objects:
        if not item.name.startswith(v2):
            continue
        path = item.name[len(v2):]
        if _TAG_CANDIDATE.fullmatch(path) or _REVISION_CANDIDATE.fullmatch(path):
            found.append((path, item))
    return sorted(found, key=lambda pair: pair[0])


def fingerprint(found: Sequence[tuple[str, s3objects.S3Object]]) -> str:
    """Of the links with their LastModified and ETag: unchanged = no push, no delete."""
    text = "".join(f"{item.modified:.3f} {item.etag} {path}\n" for path, item in found)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _one_line(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r", "").replace("\n", "")


def listing_lines(params: Mapping[str, Any], opener: s3objects.Opener | None = None,
                  clock: Callable[[], float] = time.time) -> list[str]:
    """The bucket as retention.read_listing reads it (the filesystem listing's lines)."""
    v2 = v2_prefix(params)
    objects, now = s3objects.list_objects(params, v2 + "repositories/", opener)
    found = links(objects, v2)
    lines = [f"N {int(now if now is not None else clock())}", f"F {fingerprint(found)}"]
    # A path with white space cannot be a registry path; it never reaches a line.
    usable = [(path, item) for path, item in found if _NO_SPACE.fullmatch(path)]
    lines += [f"P {item.modified:.3f} {path}" for path, item in usable]
    tags = [path for path, _ in usable if retention.tag_link(path)]
    digests = sorted({link[1] for path, _ in usable
                      if (link := retention.revision_link(path)) is not None})

    def tag(path: str) -> str:
        return _one_line(s3objects.get_object(params, v2 + path, LINK_MAX, opener)[0]).strip()

    def manifest(digest: str) -> str | None:
        hexa = digest.removeprefix("sha256:")
        try:
            data, size = s3objects.get_object(
                params, f"{v2}blobs/sha256/{hexa[:2]}/{hexa}/data", MANIFEST_MAX, opener)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None  # a revision whose blob is gone: read as no references
            raise
        return f"M {hexa} {size} {_one_line(data)}"

    with ThreadPoolExecutor(PARALLEL) as pool:
        pointed = list(pool.map(tag, tags))
        documents = list(pool.map(manifest, digests))
    lines += [f"L {path} {digest}" for path, digest in zip(tags, pointed, strict=True)
              if _NO_SPACE.fullmatch(digest)]
    lines += [line for line in documents if line is not None]
    return lines


def read(params: Mapping[str, Any], opener: s3objects.Opener | None = None
         ) -> retention.Listing:
    return retention.read_listing(listing_lines(params, opener))


def current_fingerprint(params: Mapping[str, Any],
                        opener: s3objects.Opener | None = None) -> str:
    v2 = v2_prefix(params)
    return fingerprint(links(s3objects.list_objects(params, v2 + "repositories/", opener)[0],
                             v2))


# --- Deleting ----------------------------------------------------------------------------

def delete_prefixes(params: Mapping[str, Any], plan: retention.Plan) -> list[str]:
    """The exact folders the plan deletes, each as a key prefix ending in `/`."""
    v2 = v2_prefix(params)
    return [f"{v2}{path}/" for path in retention.delete_paths(plan)]


def keys_under(prefix: str, keys: Iterable[str]) -> list[str]:
    """The keys inside the folder `prefix` (which ends with `/`): never a sibling whose name
    merely starts the same (`tags/a1/` is not `tags/a10/`)."""
    if not prefix.endswith("/") or prefix == "/":
        raise ValueError(f"not a folder prefix: {prefix!r}")
    return sorted(key for key in keys if key.startswith(prefix))


def delete_planned(params: Mapping[str, Any], prefixes: Sequence[str],
                   opener: s3objects.Opener | None = None) -> int:
    """Delete every key under each prefix; the number of keys deleted."""
    count = 0
    for prefix in prefixes:
        objects, _ = s3objects.list_objects(params, prefix, opener)
        for key in keys_under(prefix, (item.name for item in objects)):
            s3objects.delete_object(params, key, opener)
            count += 1
    return count


class SharedRetention(sharedgc.SharedCollection):
    """The apply run of one S3 storage group: sharedgc's collection with the planned deletes
    between the read-only steps and the collection (see the module docstring)."""

    what = "retention"

    def __init__(self, members: Sequence[sharedgc.Member], rotation: Rotation | None,
                 cache: sharedgc.CacheFlush | None, storage: Storage, plan: retention.Plan,
                 planned_fingerprint: str,
                 finish: Mapping[str, Callable[[bool, int | None], StringCommand]],
                 opener: s3objects.Opener | None = None) -> None:
        super().__init__(members, rotation, cache, storage, dry_run=False)
        self.opener = opener  # urllib's by default (tests give a fake bucket)
        self.plan = plan
        self.planned_fingerprint = planned_fingerprint
        self.finishers = finish  # host -> its record and result command
        self.deleted = 0

    def _between(self, state: Any, host: Any, auth: dict[str, Any],
                 report: Callable[..., None]) -> tuple[str, str] | None:
        params = self.storage.params
        where = f"s3://{params.get('bucket')}"
        try:
            now = current_fingerprint(params, self.opener)
        except Errors as error:
            report(f"registry-kit: retention: cannot list {where}: {error}", ok=False)
            return ("list again", where)
        if now != self.planned_fingerprint:
            report("registry-kit: retention refused: the storage changed since it was read "
                   "(a push?); nothing was deleted: run retention.py again", ok=False)
            return ("compare", where)
        prefixes = delete_prefixes(params, self.plan)
        try:
            self.deleted = delete_planned(params, prefixes, self.opener)
        except Errors as error:
            report(f"registry-kit: retention: deleting in {where} failed: {error}", ok=False)
            return ("delete", where)
        report(f"registry-kit: retention removed {len(prefixes)} tag and manifest folders "
               f"({self.deleted} objects) in {where}")
        return None

    def _finish(self, state: Any, host: Any, auth: dict[str, Any], ok: bool,
                freed: int | None) -> None:
        for member in self.members:
            command = self.finishers.get(member.host)
            if command is not None:
                self._run(state, host, auth, member.host, command(ok, freed))

    def _planned(self) -> str:
        return f"; planned {self.plan.freed_bytes} bytes"
