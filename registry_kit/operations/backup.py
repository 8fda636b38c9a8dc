"""backup.py: copy each registry server's data (filesystem storage) into a backup folder
on the control machine or on a backup host, incrementally, with an index.

A backup folder `<registry_backup_dir>/<server>/` mirrors the registry's own layout
(`docker/registry/v2/blobs`, `.../repositories`), so restore.py puts it back as it is:

- blobs are content-addressed and never change: only blobs the backup lacks (or holds
  with another size, e.g. cut short by an interrupted copy) are copied;
- the repositories tree (manifest revisions, tags, layer links) is copied whole each time,
  without `_uploads` (unfinished pushes);
- `index.json`: repositories, tags and their digests and sizes, every blob with its size,
  the time, what this backup copied and how long the registry was read-only; each backup's
  index is also kept under `indexes/`.

Consistency without a read-only window (pushes and pulls go on throughout): the registry
writes a blob's data before any link to it, and a manifest's revision link before the tag's
current/link (see WRITE ORDER below). So the backup copies, while the registry serves:
pass 1 the blobs the backup lacks; pass 2 the repositories tree whole (tags first); pass 3
every blob that exists now and the backup still lacks, which covers every blob a link
copied in pass 2 can name. A link caught half-written is read again; the index lists only
tags whose manifest blob is in the backup.

Transport: tar over the SSH connection pyinfra already holds (paramiko), piped straight
into `tar -x` on the control machine or on the backup host: no extra package on the hosts,
no second login or key, and the kit decides what is missing from the blob names (which are
their digests) instead of rsync comparing every file. Only paths reach the commands.

`registry_backup_verify=True` re-hashes every blob of the backup against its digest and
checks that every digest the index names is there; it copies nothing.

Reads: registry_storage, registry_data_dir, registry_config_dir, registry_container_name,
registry_verify_timeout, registry_backup_dir, registry_backup_host, registry_backup_verify,
registry_state_dir, registry_mode.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra import host, inventory, logger
from pyinfra.api import FunctionCommand, operation
from pyinfra.facts.server import Command

from registry_kit import pull_through, pyinfra_patches
from registry_kit.commands import q
from registry_kit.inventory import DEFAULT_GROUPS, Groups, refusal, roles, validated_settings
from registry_kit.settings import Settings, SettingsError

V2 = "docker/registry/v2"
INDEX = "index.json"
CHUNK = 1 << 20
# Blobs the registry may write in place (PutContent: manifests, at most 4 MiB, see WRITE
# ORDER); bigger ones arrive by rename, whole. Copied ones up to this size are re-hashed.
IN_PLACE_MAX = 4 << 20
LINK = re.compile(rb"sha256:[0-9a-f]{64}")
OBJECT_STORE_TOOLS = {
    "s3": "the object store's own tools (bucket versioning or replication, `aws s3 sync`, "
          "`rclone sync`)",
    "azure": "Azure's own tools (blob versioning or snapshots, `azcopy sync`)",
    "gcs": "Google Cloud's own tools (object versioning, `gcloud storage rsync`)",
    "inmemory": "nothing: inmemory storage keeps nothing to back up",
}


def blob_listing_command(root: str) -> str:
    """`SIZE HEX` per blob under ROOT (a registry data folder or a backup); nothing when
    the folder is missing."""
    return (f"cd {q(root + '/' + V2 + '/blobs/sha256')} 2>/dev/null && "
            "find . -mindepth 3 -maxdepth 3 -name data -type f -printf '%s %h\\n' "
            "| sed 's|^\\([0-9]*\\) \\./../|\\1 |'; true")


def repositories_hash_command(root: str) -> str:
    """sha256 over `sha256  path` of every file in the repositories tree (no _uploads):
    equal on both sides means the same manifests, tags and links."""
    return (f"cd {q(root + '/' + V2)} 2>/dev/null && [ -d repositories ] && "
            "find repositories -name _uploads -prune -o -type f ! -name 'link.*.tmp' -print0 "
            "| LC_ALL=C sort -z "
            "| xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1; true")


def parse_blobs(text: str | None) -> dict[str, int]:
    blobs: dict[str, int] = {}
    for line in (text or "").splitlines():
        size, _, digest = line.strip().partition(" ")
        if size.isdigit() and len(digest) == 64:
            blobs[digest] = int(size)
    return blobs


def missing_blobs(have: dict[str, int], want: dict[str, int]) -> list[str]:
    """Blobs of `want` that `have` lacks or holds with another size (a cut-short copy)."""
    return sorted(digest for digest, size in want.items() if have.get(digest) != size)


def blob_path(digest: str) -> str:
    return f"blobs/sha256/{digest[:2]}/{digest}/data"


# --- where a backup lives: the control machine or a backup host ---

@dataclass
class Side:
    """One end of a copy: a folder on the control machine (`ssh` None) or on a host
    reached through pyinfra's SSH connection. `run` and `open_*` take shell text built
    with commands.q()."""

    root: str
    name: str
    ssh: Any = None  # paramiko SSHClient of a pyinfra host

    def run(self, command: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
        if self.ssh is None:
            proc = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True)
            return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")
        channel_in, channel_out, channel_err = self.ssh.exec_command(command)
        if stdin:
            channel_in.write(stdin)
        channel_in.channel.shutdown_write()
        out = channel_out.read()
        err = channel_err.read().decode(errors="replace")
        return channel_out.channel.recv_exit_status(), out, err

    def check(self, command: str, stdin: bytes = b"") -> bytes:
        code, out, err = self.run(command, stdin)
        if code != 0:
            raise BackupError(f"{self.name}: {command.split(' ', 1)[0]} failed ({code}): "
                              f"{err.strip()[-500:]}")
        return out


class BackupError(RuntimeError):
    pass


def pipe(source: Side, source_cmd: str, source_stdin: bytes, sink: Side, sink_cmd: str) -> int:
    """Run source_cmd on one side and pipe its stdout into sink_cmd on the other; bytes moved."""
    moved = 0
    if sink.ssh is None:
        local = subprocess.Popen(["sh", "-c", sink_cmd], stdin=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        assert local.stdin is not None
        writer: Callable[[bytes], Any] = local.stdin.write
    else:
        sink_in, _sink_out, sink_err = sink.ssh.exec_command(sink_cmd)
        writer = sink_in.write
    src_in, src_out, src_err = source.ssh.exec_command(source_cmd) if source.ssh is not None \
        else _local_streams(source_cmd)
    src_in.write(source_stdin)
    _close_write(src_in)
    while True:
        chunk = src_out.read(CHUNK)
        if not chunk:
            break
        writer(chunk)
        moved += len(chunk)
    source_code = _exit_code(src_out)
    source_err = src_err.read().decode(errors="replace")
    if sink.ssh is None:
        assert local.stdin is not None and local.stderr is not None
        local.stdin.close()
        sink_code = local.wait()
        sink_message = local.stderr.read().decode(errors="replace")
    else:
        sink_in.channel.shutdown_write()
        sink_code = sink_in.channel.recv_exit_status()
        sink_message = sink_err.read().decode(errors="replace")
    if source_code != 0 or sink_code != 0:
        raise BackupError(f"copy {source.name} -> {sink.name} failed ({source_code}/"
                          f"{sink_code}): {(source_err + sink_message).strip()[-500:]}")
    return moved


def _local_streams(command: str) -> tuple[Any, Any, Any]:
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdout.proc = proc  # type: ignore[attr-defined]  # for _exit_code
    return proc.stdin, proc.stdout, proc.stderr


def _close_write(stream: Any) -> None:
    if hasattr(stream, "channel"):
        stream.channel.shutdown_write()
    else:
        stream.close()


def _exit_code(stream: Any) -> int:
    if hasattr(stream, "channel"):
        return int(stream.channel.recv_exit_status())
    return int(stream.proc.wait())


def copy_blobs(source: Side, sink: Side, digests: list[str]) -> int:
    """tar the blobs from source into sink (same layout); bytes of tar stream moved."""
    if not digests:
        return 0
    names = b"".join(blob_path(d).encode() + b"\0" for d in digests)
    return pipe(source, tolerant_tar(f"tar -C {q(source.root + '/' + V2)} -cf - --null -T -"),
                names,
                sink, f"mkdir -p {q(sink.root + '/' + V2)} && "
                      f"tar -C {q(sink.root + '/' + V2)} -xf -")


# WRITE ORDER (distribution v2.8.3 and v3.0.0, filesystem driver), why no window is needed:
# - a layer's data is renamed into blobs/ whole (blobWriter.Commit: moveBlob, then linkBlob;
#   driver Move is os.Rename), so it exists before any _layers link names it:
#   https://github.com/distribution/distribution/blob/v3.0.0/registry/storage/blobwriter.go
#   https://github.com/distribution/distribution/blob/v3.0.0/registry/storage/driver/filesystem/driver.go
# - a manifest's blob is written (blobStore.Put -> PutContent) and only then its revision
#   link (linkedBlobStore.Put: "Place the data in the blob store first"):
#   https://github.com/distribution/distribution/blob/v3.0.0/registry/storage/linkedblobstore.go
#   https://github.com/distribution/distribution/blob/v3.0.0/registry/storage/blobstore.go
# - the manifest PUT handler tags after the manifest is stored (manifests.Put, then
#   tags.Tag), and Tag writes the tag's index link before overwriting current/link:
#   https://github.com/distribution/distribution/blob/v3.0.0/registry/handlers/manifests.go
#   https://github.com/distribution/distribution/blob/v3.0.0/registry/storage/tagstore.go
# - PutContent (links, manifest blobs) truncates and writes IN PLACE up to v3.0.x, so a
#   reader can catch a link empty or short: such a link is read again (settle_links), and a
#   copied blob of PutContent size is re-hashed (check_copied). From v3.1.0 PutContent
#   writes `<path>.<uuid>.tmp` and renames it; those temp files are left out of the copy:
#   https://github.com/distribution/distribution/blob/v3.1.0/registry/storage/driver/filesystem/driver.go
# - `_uploads` holds pushes in progress: never copied (a restored registry has no use for
#   them, and they change while tar reads).
# - tar reads the tree over time, not at one instant: tree_snapshot reads the tags first.
# Blobs are only removed by garbage collection, which gc.py runs with the registry stopped.


def tolerant_tar(create: str) -> str:
    """`tar -c...` that copes with a registry writing meanwhile: a file that changed or went
    away while read is not an error (GNU tar exit 1); anything worse still is."""
    return (f"{create} --ignore-failed-read --warning=no-file-changed "
            "--warning=no-file-removed; rc=$?; [ $rc -le 1 ]")


CURRENT = "*/_manifests/tags/*/current/link"


def _tree_tar(source: Side, find_args: str) -> bytes:
    return source.check(f"cd {q(source.root + '/' + V2)} && " + tolerant_tar(
        f"find repositories -name _uploads -prune -o {find_args} -print0 "
        "| tar --null --no-recursion -T - -cf -"))


def tree_snapshot(source: Side) -> tuple[bytes, int]:
    """The repositories tree as one tar (small: links and tag folders), without _uploads;
    (tar, links read again). tar is no snapshot, so the order makes it one: every tag's
    current/link is read (and settled) first, and only then the rest. A tag is written
    last (after its index link, the manifest's revision link and the layer links the
    registry checked), so every link it needs exists when the second tar reads."""
    tags, reread_tags = settle_links(source, _tree_tar(source, f"-path {q(CURRENT)} -type f"))
    rest, reread_rest = settle_links(source, _tree_tar(
        source, f"-type f ! -path {q(CURRENT)} ! -name 'link.*.tmp'"))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as merged:
        for part in (tags, rest):
            with tarfile.open(fileobj=io.BytesIO(part), mode="r:") as tar:
                for member in tar:
                    merged.addfile(member, tar.extractfile(member))
    return out.getvalue(), reread_tags + reread_rest


def repositories_tar(source: Side) -> bytes:
    return tree_snapshot(source)[0]


def bad_links(tar_bytes: bytes) -> list[str]:
    """Members named `link` whose content is not a whole `sha256:<64 hex>` (caught while the
    registry wrote it in place)."""
    bad = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for member in tar:
            if member.isfile() and member.name.rsplit("/", 1)[-1] == "link":
                handle = tar.extractfile(member)
                if not LINK.fullmatch(handle.read() if handle else b""):
                    bad.append(member.name)
    return bad


def settle_links(source: Side, tar_bytes: bytes, tries: int = 20) -> tuple[bytes, int]:
    """The tree with every half-written link read again until whole (a link that went away
    is left out); (tar, links re-read). A link that stays bad stops the backup."""
    names = bad_links(tar_bytes)
    if not names:
        return tar_bytes, 0
    fixed: dict[str, bytes | None] = {}
    for name in names:
        path = source.root + "/" + V2 + "/" + name
        for _ in range(tries):
            code, out, _err = source.run(f"cat {q(path)}")
            if code != 0 and source.run(f"test -e {q(path)}")[0] != 0:
                fixed[name] = None
                break
            if LINK.fullmatch(out):
                fixed[name] = out
                break
            time.sleep(0.05)
        else:
            raise BackupError(f"{source.name}: {path} is not a digest after {tries} reads")
    out_buffer = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar, \
            tarfile.open(fileobj=out_buffer, mode="w") as new:
        for member in tar:
            if member.name in fixed:
                data = fixed[member.name]
                if data is not None:
                    member.size = len(data)
                    new.addfile(member, io.BytesIO(data))
            else:
                new.addfile(member, tar.extractfile(member) if member.isfile() else None)
    return out_buffer.getvalue(), len(names)


def check_copied(sink: Side, digests: list[str], sizes: dict[str, int]) -> list[str]:
    """Copied blobs of PutContent size whose content does not hash to their digest (caught
    mid-write); they are deleted from the backup."""
    small = [d for d in digests if sizes.get(d, 0) <= IN_PLACE_MAX]
    if not small:
        return []
    names = b"".join(blob_path(d).encode() + b"\0" for d in small)
    # A blob tar skipped (gone meanwhile) makes sha256sum fail: it counts as bad, no error.
    _code, out, _err = sink.run(f"cd {q(sink.root + '/' + V2)} && xargs -0 -r sha256sum --",
                                names)
    good = {line.split()[0].decode() for line in out.splitlines() if line.strip()}
    bad = [d for d in small if d not in good]
    for digest in bad:
        sink.check(f"rm -f {q(sink.root + '/' + V2 + '/' + blob_path(digest))}")
    return bad


def put_repositories(sink: Side, tar_bytes: bytes) -> None:
    """Replace the sink's repositories tree with the tar's, in one swap."""
    v2 = sink.root + "/" + V2
    new, old = f"{v2}/.repositories-new", f"{v2}/.repositories-old"
    sink.check(f"mkdir -p {q(v2)} && rm -rf {q(new)} {q(old)} && mkdir {q(new)} && "
               f"tar -C {q(new)} -xf - && {{ [ ! -e {q(v2 + '/repositories')} ] || "
               f"mv {q(v2 + '/repositories')} {q(old)}; }} && "
               f"mv {q(new + '/repositories')} {q(v2 + '/repositories')} && "
               f"rm -rf {q(new)} {q(old)}", tar_bytes)


def tags_from_tar(tar_bytes: bytes) -> dict[str, dict[str, str]]:
    """{repository: {tag: digest}} from the repositories tree's tag links."""
    found: dict[str, dict[str, str]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not (member.isfile() and len(parts) > 6 and parts[-1] == "link"
                    and parts[-2] == "current" and parts[-5:-3] == ["_manifests", "tags"]):
                continue
            repository = "/".join(parts[1:-5])
            handle = tar.extractfile(member)
            digest = handle.read().decode(errors="replace").strip() if handle else ""
            found.setdefault(repository, {})[parts[-3]] = digest
    return found


def build_index(settings: Settings, tags: dict[str, dict[str, str]], blobs: dict[str, int],
                this_backup: dict[str, Any]) -> dict[str, Any]:
    """The index; a tag whose manifest blob is not in `blobs` (the backup) is left out and
    named under `tags_left_out`."""
    kept: dict[str, dict[str, str]] = {}
    left_out = []
    for repository, repo_tags in sorted(tags.items()):
        for tag, digest in sorted(repo_tags.items()):
            if digest.removeprefix("sha256:") in blobs:
                kept.setdefault(repository, {})[tag] = digest
            else:
                left_out.append(f"{repository}:{tag}@{digest}")
    repositories = {
        repository: {"tags": {tag: {"digest": digest,
                                    "size": blobs.get(digest.removeprefix("sha256:"))}
                              for tag, digest in repo_tags.items()}}
        for repository, repo_tags in kept.items()}
    return {
        "format": 1,
        "server": settings.host,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "registry_image": settings.registry_image,
        "registry_data_dir": settings.registry_data_dir,
        "repositories": repositories,
        "tag_count": sum(len(t) for t in kept.values()),
        "tags_left_out": left_out,
        "blob_count": len(blobs),
        "blob_bytes": sum(blobs.values()),
        "blobs": {f"sha256:{digest}": size for digest, size in sorted(blobs.items())},
        "this_backup": this_backup,
    }


# --- settings to sides ---

def backup_base(settings: Settings) -> str:
    if settings.registry_backup_dir is not None:
        return settings.registry_backup_dir
    return str(settings.registry_state_dir.resolve() / "backups")


def store_ssh_host(settings: Settings) -> Any:
    """The pyinfra host holding the backups, or None for the control machine. A name that
    is not in the inventory stops the run (one line) before any host is touched."""
    name = settings.registry_backup_host
    if name is None:
        return None
    target = inventory.get_host(name, None)
    if target is None:
        raise refusal(SettingsError(
            f"{settings.host}: setting registry_backup_host={name!r} is not allowed: the "
            "name of a host in this inventory (the kit reaches it over pyinfra's SSH)"))
    return target


def store_fact(settings: Settings, command: str) -> str:
    """Run a read-only command where the backups live, while planning."""
    target = store_ssh_host(settings)
    if target is None:
        proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
        return proc.stdout
    return str(target.get_fact(Command, command) or "")


def side_for_store(root: str, settings: Settings) -> Side:
    target = store_ssh_host(settings)
    if target is None:
        return Side(root, "control machine")
    return Side(root, target.name, target.connector.client)


def refuse_unsupported(settings: Settings, what: str) -> None:
    driver = settings.registry_storage.driver
    if driver != "filesystem":
        raise refusal(SettingsError(
            f"{settings.host}: setting registry_storage={{'driver': {driver!r}}} is not "
            f"allowed: {what} covers filesystem storage; back up {driver} storage with "
            f"{OBJECT_STORE_TOOLS[driver]}"))
    if pull_through.is_cache(settings) and what == "backup.py":
        raise refusal(SettingsError(
            f"{settings.host}: setting registry_mode='pull-through-cache' is not allowed: "
            "backup.py backs up registries; a cache holds copies of "
            f"{settings.registry_proxy_remoteurl} and refills itself"))


def report(target: Any, message: str) -> None:
    target.log_styled(f"registry-kit: {message}", fg="cyan", log_func=logger.info)


# --- the backup itself (runs when the operation executes) ---

def _run_backup(state: Any, host: Any, settings: Settings, root: str) -> bool:
    # FunctionCommand passes state and host only to parameters with exactly these names.
    try:
        report(host, run_backup(host, settings, root))
        return True
    except BackupError as error:
        host.log_styled(f"registry-kit: backup failed: {error}", fg="red", log_func=logger.error)
        return False


def run_backup(target: Any, settings: Settings, root: str) -> str:
    source = Side(settings.registry_data_dir, target.name, target.connector.client)
    sink = side_for_store(root, settings)
    sink.check(f"mkdir -p {q(root)} && chmod 0700 {q(root)}")
    started, started_at = time.monotonic(), time.time()
    in_backup = parse_blobs(sink.check(blob_listing_command(sink.root)).decode())
    # Pass 1: the blobs the backup lacks (the registry takes pushes and pulls meanwhile).
    on_server = parse_blobs(source.check(blob_listing_command(source.root)).decode())
    first = missing_blobs(in_backup, on_server)
    bytes_first = copy_blobs(source, sink, first)
    have = {**in_backup, **{d: on_server[d] for d in first}}
    # Pass 2: the repositories tree; every blob its links name exists from now on.
    tree, links_reread = tree_snapshot(source)
    # Pass 3: the blobs pushed since pass 1 began (a superset of those the tree names).
    final = parse_blobs(source.check(blob_listing_command(source.root)).decode())
    late = missing_blobs(have, final)
    bytes_late = copy_blobs(source, sink, late)
    sizes = {**on_server, **final}
    bad = check_copied(sink, first + late, sizes)
    if bad:  # caught while the registry wrote them: once more, now that they are whole
        bytes_late += copy_blobs(source, sink, bad)
        bad = check_copied(sink, bad, sizes)
    blobs = {d: s for d, s in {**have, **final}.items() if d not in bad}
    put_repositories(sink, tree)
    seconds = time.monotonic() - started
    copied_digests = [d for d in dict.fromkeys(first + late) if d in blobs]
    copied = sum(blobs[d] for d in copied_digests)
    this_backup = {
        "blobs_copied": len(copied_digests),
        "blob_bytes_copied": copied,
        "tar_bytes_moved": bytes_first + bytes_late,
        "seconds": round(seconds, 2),
        "mb_per_s": round(copied / 1e6 / seconds, 2) if seconds else None,
        "started": round(started_at, 3),
        "blobs_copied_after_tree": len(late),
        "links_reread": links_reread,
        "blobs_left_out": [f"sha256:{d}" for d in bad],
    }
    # Blobs the server no longer lists (none, unless gc.py ran meanwhile) stay in the
    # backup and the index: a backup only grows.
    index = build_index(settings, tags_from_tar(tree), blobs, this_backup)
    text = json.dumps(index, indent=1, sort_keys=True).encode() + b"\n"
    stamp = index["time"].replace(":", "")
    sink.check(f"mkdir -p {q(root + '/indexes')} && cat > {q(root + '/' + INDEX + '.new')} && "
               f"cp {q(root + '/' + INDEX + '.new')} {q(root + '/indexes/' + stamp + '.json')} "
               f"&& mv -f {q(root + '/' + INDEX + '.new')} {q(root + '/' + INDEX)}", text)
    return (f"backup of {target.name} in {sink.name}:{root}: {len(copied_digests)} blobs "
            f"copied ({copied} bytes, {len(late)} of them after the tree), "
            f"{index['tag_count']} tags in {len(index['repositories'])} repositories, "
            f"{len(index['tags_left_out'])} tags left out (manifest not in the backup), "
            f"{this_backup['seconds']} s ({this_backup['mb_per_s']} MB/s); pushes and pulls "
            "went on throughout")


@operation()
def back_up(settings: Settings, root: str, server_blobs: dict[str, int], server_tree: str,
            backup_blobs: dict[str, int], backup_tree: str):
    missing = missing_blobs(backup_blobs, server_blobs)
    if not missing and server_tree == backup_tree and server_tree:
        host.noop(f"backup in {root} is up to date ({len(server_blobs)} blobs, same "
                  "repositories tree)")
        return
    yield FunctionCommand(_run_backup, (settings, root), {})


# --- verify ---

def verify_command(root: str) -> str:
    """`OK|BAD HEX` per blob of a backup: its sha256 against the digest in its path."""
    return (f"cd {q(root + '/' + V2 + '/blobs/sha256')} && "
            "find . -mindepth 3 -maxdepth 3 -name data -type f | while read -r f; do "
            "d=${f#./??/}; d=${d%/data}; "
            "s=$(sha256sum \"$f\" | cut -d' ' -f1); "
            "if [ \"$s\" = \"$d\" ]; then echo \"OK $d\"; else echo \"BAD $d $s\"; fi; done")


def _run_verify(state: Any, host: Any, settings: Settings, root: str) -> bool:
    sink = side_for_store(root, settings)
    code, raw_index, _ = sink.run(f"cat {q(root + '/' + INDEX)}")
    if code != 0:
        host.log_styled(f"registry-kit: verify: no {INDEX} in {sink.name}:{root}", fg="red",
                        log_func=logger.error)
        return False
    index = json.loads(raw_index)
    code, out, err = sink.run(verify_command(root))
    lines = out.decode().splitlines()
    good = {line.split()[1] for line in lines if line.startswith("OK ")}
    bad = [line.split()[1:] for line in lines if line.startswith("BAD ")]
    absent = sorted(d for d in index.get("blobs", {})
                    if d.removeprefix("sha256:") not in good
                    and d.removeprefix("sha256:") not in {b[0] for b in bad})
    for digest, actual in bad:
        host.log_styled(f"registry-kit: verify: MISMATCH sha256:{digest} in {sink.name}:{root}: "
                        f"content hashes to sha256:{actual}", fg="red", log_func=logger.error)
    for digest in absent:
        host.log_styled(f"registry-kit: verify: MISSING {digest} (named in {INDEX})",
                        fg="red", log_func=logger.error)
    if code != 0 or bad or absent:
        host.log_styled(f"registry-kit: verify: {len(bad)} mismatched, {len(absent)} missing, "
                        f"{len(good)} good blobs in {sink.name}:{root} {err.strip()[-200:]}",
                        fg="red", log_func=logger.error)
        return False
    report(host, f"verify: all {len(good)} blobs in {sink.name}:{root} match their digests "
                 f"(index of {index.get('time')})")
    return True


@operation()
def verify(settings: Settings, root: str):
    yield FunctionCommand(_run_verify, (settings, root), {})


# --- backup.py ---

def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    pyinfra_patches.install()  # cheaper operation calls (see that module)
    settings = validated_settings(groups, defaults=defaults)[host.name]
    is_server, _ = roles(host, groups)
    if not is_server:
        return
    refuse_unsupported(settings, "backup.py")
    root = f"{backup_base(settings)}/{host.name}"
    if settings.registry_backup_verify:
        verify(settings, root, name=f"Verify every blob of the backup in {root}")
        return
    server_blobs = parse_blobs(host.get_fact(Command, blob_listing_command(
        settings.registry_data_dir)))
    server_tree = str(host.get_fact(Command, repositories_hash_command(
        settings.registry_data_dir)) or "")
    backup_blobs = parse_blobs(store_fact(settings, blob_listing_command(root)))
    backup_tree = store_fact(settings, repositories_hash_command(root)).strip()
    # One server at a time: each backup reads its server's disk hard.
    back_up(settings, root, server_blobs, server_tree.strip(), backup_blobs, backup_tree,
            name=f"Back up registry data to {root}", _serial=True)

