"""backup.py and the copies restore.py makes: each server's registry data (filesystem
storage) into `<registry_backup_dir>/<server>/` on the control machine or a backup host, new
blobs only, one generation per change, with the registry serving throughout. README
"Backup and restore" describes the layout, the generations, why no read-only window is
needed (see WRITE ORDER below) and what the other side may send; the tar read from it is
re-packed here (check_blob_member, check_tree_member). With registry_metrics, a successful
backup leaves its time in the server's facts for Prometheus (record_success).
"""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import re
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra import host, inventory, logger
from pyinfra.api import FunctionCommand
from pyinfra.facts.server import Command

from registry_kit.commands import q
from registry_kit.model import layout, pull_through
from registry_kit.model.inventory import DEFAULT_GROUPS, Groups, refusal, server_settings
from registry_kit.model.settings import BACKUP_GENERATION_RE, Settings, SettingsError
from registry_kit.operations import files
from registry_kit.operations.typed import operation
from registry_kit.render import prometheus

V2 = "docker/registry/v2"
INDEX = "index.json"
GENERATIONS = "generations"
CHUNK = 1 << 20
# Blobs the registry may write in place (PutContent: manifests, at most 4 MiB, see WRITE
# ORDER); bigger ones arrive by rename, whole. Copied ones up to this size are re-hashed.
IN_PLACE_MAX = 4 << 20
LINK = re.compile(rb"sha256:[0-9a-f]{64}")
HEX64 = re.compile(r"[0-9a-f]{64}")
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
# What the other side may send (it may be broken into): regular files under exactly these
# names, nothing else. Blobs: the registry's layout. The tree: `link` files under a
# repository's _layers or _manifests, each folder name starting with a letter, digit or
# `_` (so never `.` or `..`); tag names and repository paths fit (distribution's grammar).
BLOB_MEMBER = re.compile(r"blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})/data")
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}"
TREE_MEMBER = re.compile(rf"repositories(?:/{_PART})+/(?:_layers|_manifests)(?:/{_PART})*/link")
TREE_NAME_MAX = 4096
LINK_FILE_MAX = 1024  # a link holds `sha256:<64 hex>` (71 bytes)
# GNU tar pads its archive to a 10 KiB record; more than this after the end is refused.
TRAILING_MAX = 1 << 20
LISTING_LINE = re.compile(r"([0-9]{1,20}) \./([0-9a-f]{2})/([0-9a-f]{64})")
OBJECT_STORE_TOOLS = {
    "s3": "the object store's own tools (bucket versioning or replication, `aws s3 sync`, "
          "`rclone sync`)",
    "azure": "Azure's own tools (blob versioning or snapshots, `azcopy sync`)",
    "gcs": "Google Cloud's own tools (object versioning, `gcloud storage rsync`)",
    "inmemory": "nothing: inmemory storage keeps nothing to back up",
}


class BackupError(RuntimeError):
    pass


def blob_listing_command(root: str) -> str:
    """`SIZE ./xx/HEX` per blob under ROOT (a registry data folder or a backup); nothing
    when the folder is missing. A find that fails fails the command."""
    return (f"cd {q(root + '/' + V2 + '/blobs/sha256')} 2>/dev/null || exit 0; "
            "find . -ignore_readdir_race -mindepth 3 -maxdepth 3 -name data -type f "
            "-printf '%s %h\\n'")


def tree_hash_command(base: str) -> str:
    """sha256 over `sha256  path` of every file in BASE/repositories (no _uploads): equal
    on both sides means the same manifests, tags and links (tree_hash computes it too)."""
    return (f"cd {q(base)} 2>/dev/null && [ -d repositories ] && "
            "find repositories -name _uploads -prune -o -type f ! -name 'link.*.tmp' -print0 "
            "| LC_ALL=C sort -z "
            "| xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1; true")


def repositories_hash_command(root: str) -> str:
    """tree_hash_command of a registry's data folder ROOT. Before the first push the registry
    has not made ROOT/docker/registry/v2 yet: its tree is the empty one (the hash of no
    files, as an empty backup's), so a second backup of an empty registry changes nothing;
    a missing ROOT stays unknown (no output)."""
    empty = hashlib.sha256(b"").hexdigest()
    return (f"if [ -d {q(root)} ] && [ ! -e {q(root + '/' + V2)} ]; then echo {q(empty)}; "
            f"else {tree_hash_command(root + '/' + V2)}; fi")


def parse_blobs(text: str | None, where: str = "") -> dict[str, int]:
    """{hex digest: size} from a blob listing; a line of any other shape (a server that
    lies, a name with a newline) stops the backup: digests become paths and commands."""
    blobs: dict[str, int] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        match = LISTING_LINE.fullmatch(line.strip())
        if not match or match[3][:2] != match[2]:
            raise BackupError(f"{where}: blob listing line {line.strip()[:120]!r} is not "
                              "'SIZE ./xx/<64 hex digest>'")
        blobs[match[3]] = int(match[1])
    return blobs


def digest_hex(value: object, where: str) -> str:
    """The 64 hex of `sha256:<64 hex>` or of a bare `<64 hex>`; anything else stops."""
    text = value if isinstance(value, str) else ""
    match = DIGEST.fullmatch(text) or HEX64.fullmatch(text)
    if not match:
        raise BackupError(f"{where}: {str(value)[:120]!r} is not a sha256 digest")
    return match[1] if match.re is DIGEST else match[0]


def missing_blobs(have: dict[str, int], want: dict[str, int]) -> list[str]:
    """Blobs of `want` that `have` lacks or holds with another size (a cut-short copy)."""
    return sorted(digest for digest, size in want.items() if have.get(digest) != size)


def blob_path(digest: str) -> str:
    assert HEX64.fullmatch(digest), digest
    return f"blobs/sha256/{digest[:2]}/{digest}/data"


def tree_hash(tree: bytes) -> str:
    """tree_hash_command's result for a tree tar (our own, checked): what the folder it
    extracts to must hash to."""
    lines = [(member.name.encode(), hashlib.sha256(data).hexdigest().encode())
             for member, data in tar_members(tree)]
    listing = b"".join(digest + b"  " + name + b"\n" for name, digest in sorted(lines))
    return hashlib.sha256(listing).hexdigest()


def check_blob_member(member: tarfile.TarInfo, wanted: dict[str, int], where: str) -> str:
    """The digest of a blob member the other side sent; BackupError unless it is a regular
    file named as a blob we asked for, of a size that blob can have."""
    match = BLOB_MEMBER.fullmatch(member.name)
    kind = _kind(member)
    if kind != "file" or not match or match[1] != match[2][:2] or match[2] not in wanted:
        raise BackupError(f"{where}: sent {kind} {member.name[:200]!r}, which is not a blob "
                          "asked for; nothing of it was written")
    if member.size > max(wanted[match[2]], IN_PLACE_MAX):
        raise BackupError(f"{where}: sent {member.name!r} with {member.size} bytes, more than "
                          f"the {wanted[match[2]]} it listed")
    return match[2]


def check_tree_member(member: tarfile.TarInfo, where: str) -> None:
    kind = _kind(member)
    if kind != "file" or len(member.name) > TREE_NAME_MAX or not TREE_MEMBER.fullmatch(
            member.name) or member.size > LINK_FILE_MAX:
        raise BackupError(f"{where}: sent {kind} {member.name[:200]!r} in the repositories "
                          "tree (only `link` files under repositories/<name>/_layers or "
                          "_manifests are taken); nothing of it was written")


def _kind(member: tarfile.TarInfo) -> str:
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return "file"
    return {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.DIRTYPE:
            "directory", tarfile.CHRTYPE: "device", tarfile.BLKTYPE: "device",
            tarfile.FIFOTYPE: "fifo"}.get(member.type, f"member of type {member.type!r}")


def clean_member(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """A fresh header for a checked member: a regular file, root's, 0644; nothing else of
    what the other side sent (owner, mode, pax keys) is passed on."""
    info = tarfile.TarInfo(member.name)
    info.size, info.mode, info.mtime = member.size, 0o644, int(member.mtime)
    return info


# --- where a backup lives: the control machine or a backup host ---

class _Source:
    """A command's stdout as a stream (local process or SSH channel); stdin is written by
    a thread so a long name list cannot deadlock against the output."""

    def __init__(self, side: Side, command: str, stdin: bytes = b"") -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Any = None
        self.moved = 0
        if side.ssh is None:
            # stderr to a file: a pipe left unread could stall the command.
            self.err_file = tempfile.TemporaryFile()  # noqa: SIM115  # closed with self
            self.proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.err_file)
            assert self.proc.stdin is not None and self.proc.stdout is not None
            stdin_stream: Any = self.proc.stdin
            self.out: Any = self.proc.stdout
        else:
            stdin_stream, self.out, self.err = side.ssh.exec_command(command)
            self.channel = self.out.channel
        self.writer = threading.Thread(target=_feed, args=(stdin_stream, stdin), daemon=True)
        self.writer.start()

    def read(self, size: int = CHUNK) -> bytes:
        chunk: bytes = self.out.read(min(size, CHUNK) if size > 0 else CHUNK)
        self.moved += len(chunk)
        return chunk

    def finish(self) -> tuple[int, str]:
        self.writer.join()
        if self.proc is not None:
            code = self.proc.wait()
            self.err_file.seek(0)
            return code, self.err_file.read()[-4000:].decode(errors="replace")
        return int(self.channel.recv_exit_status()), self.err.read()[-4000:].decode(
            errors="replace")

    def abort(self) -> None:
        """Stop reading: the other side may send forever."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        else:
            self.channel.close()


def _feed(stream: Any, data: bytes) -> None:
    try:
        if data:
            stream.write(data)
    except OSError:
        pass  # the command ended (or was stopped) before reading all of it
    finally:
        try:
            if hasattr(stream, "channel"):
                stream.channel.shutdown_write()
            else:
                stream.close()
        except OSError:
            pass


class _Sink:
    """A command's stdin as a stream; `write` is what tarfile's 'w|' mode calls."""

    def __init__(self, side: Side, command: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if side.ssh is None:
            self.proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
            self.stdin: Any = self.proc.stdin
        else:
            self.stdin, _out, self.err = side.ssh.exec_command(command)

    def write(self, data: bytes) -> int:
        self.stdin.write(data)
        return len(data)

    def finish(self) -> tuple[int, str]:
        if self.proc is not None:
            assert self.proc.stderr is not None
            self.stdin.close()
            code = self.proc.wait()
            return code, self.proc.stderr.read()[-4000:].decode(errors="replace")
        self.stdin.channel.shutdown_write()
        code = int(self.stdin.channel.recv_exit_status())
        return code, self.err.read()[-4000:].decode(errors="replace")


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

    def check_bounded(self, command: str, limit: int, what: str) -> bytes:
        """check(), reading the output in chunks and stopping past `limit` bytes (the
        other side may send without end)."""
        return read_bounded(_Source(self, command), limit, f"{self.name}: {what}")


def read_bounded(source: Any, limit: int, what: str) -> bytes:
    """All of `source` (read/finish/abort) if it ends within `limit` bytes and succeeds."""
    chunks, total = [], 0
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            source.abort()
            raise BackupError(f"{what} is larger than {limit} bytes "
                              "(registry_backup_tree_max_bytes); stopped reading it")
        chunks.append(chunk)
    code, err = source.finish()
    if code != 0:
        raise BackupError(f"{what} failed ({code}): {err.strip()[-500:]}")
    return b"".join(chunks)


def copy_blobs(source: Side, sink: Side, digests: list[str],
               sizes: Mapping[str, int]) -> tuple[int, set[str]]:
    """The blobs from source into sink (same layout) through a tar the kit writes itself:
    the source's tar is read here and only blobs asked for, as regular files, go on.
    (bytes of tar read, digests received)."""
    if not digests:
        return 0, set()
    wanted = {d: sizes.get(d, 0) for d in digests}
    names = b"".join(blob_path(d).encode() + b"\0" for d in digests)
    sink_v2 = sink.root + "/" + V2
    reader: Any = _Source(source, tolerant_tar(
        f"tar -C {q(source.root + '/' + V2)} -cf - --null -T -"), names)
    writer: Any = _Sink(sink, f"mkdir -p {q(sink_v2)} && tar -C {q(sink_v2)} -xf - "
                         "--no-same-owner --no-same-permissions")
    received: set[str] = set()
    current = ""
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar_in, \
                tarfile.open(fileobj=writer, mode="w|", format=tarfile.GNU_FORMAT) as tar_out:
            for member in tar_in:
                digest = check_blob_member(member, wanted, source.name)
                if digest in received:
                    raise BackupError(f"{source.name}: sent {member.name!r} twice")
                current = member.name
                tar_out.addfile(clean_member(member), tar_in.extractfile(member))
                received.add(digest)
                current = ""
        rest = 0
        while chunk := reader.read(CHUNK):
            rest += len(chunk)
            if rest > TRAILING_MAX:
                raise BackupError(f"{source.name}: sent more than {TRAILING_MAX} bytes after "
                                  "the end of its tar; stopped reading")
    except (BackupError, tarfile.TarError, OSError, EOFError) as error:
        reader.abort()
        writer.finish()
        if current:  # cut short in the middle: not left in the backup as if whole
            sink.run(f"rm -f {q(sink_v2 + '/' + current)}")
        message = str(error) if isinstance(error, BackupError) else \
            f"{source.name}: its tar of blobs is broken ({error})"
        raise BackupError(message) from None
    source_code, source_err = reader.finish()
    sink_code, sink_err = writer.finish()
    if source_code != 0 or sink_code != 0:
        raise BackupError(f"copy {source.name} -> {sink.name} failed ({source_code}/"
                          f"{sink_code}): {(source_err + sink_err).strip()[-500:]}")
    return reader.moved, received


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
# Blobs are only removed by garbage collection, which garbage_collect.py runs with the
# registry stopped.


def tolerant_tar(create: str) -> str:
    """`tar -c...` that copes with a registry writing meanwhile: a file that changed or went
    away while read is not an error (GNU tar exit 1); anything worse still is."""
    return (f"{create} --ignore-failed-read --warning=no-file-changed "
            "--warning=no-file-removed; rc=$?; [ $rc -le 1 ]")


CURRENT = "*/_manifests/tags/*/current/link"


def tree_tar_command(base: str, tags: bool) -> str:
    """A tar of BASE/repositories' tag links (`tags`) or of its other files, run by bash: it
    fails when find fails (sh has no pipefail, and a tar cut short by a find error would
    look like an empty registry); no repositories folder, or no BASE at all (nothing pushed
    yet: the registry makes docker/registry/v2 at its first push), is an empty tar, as the
    blob listing is empty then."""
    find_args = (f"-path {q(CURRENT)} -type f" if tags
                 else f"-type f ! -path {q(CURRENT)} ! -name 'link.*.tmp'")
    script = (f"if [ ! -d {q(base + '/repositories')} ]; then "
              "exec tar --null --no-recursion -T /dev/null -cf -; fi; "
              f"cd {q(base)} || exit 1; "
              "find repositories -ignore_readdir_race -name _uploads -prune -o "
              f"{find_args} -print0 | tar --null --no-recursion -T - -cf - "
              "--ignore-failed-read --warning=no-file-changed --warning=no-file-removed; "
              's=("${PIPESTATUS[@]}"); [ "${s[0]}" = 0 ] && [ "${s[1]}" -le 1 ]')
    return f"bash -c {q(script)}"


def tar_members(tar_bytes: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """(member, content) of a tar held in memory; an empty archive (all zeros) has none."""
    if not tar_bytes.strip(b"\0"):
        return []
    found = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            found.append((member, handle.read() if handle else b""))
    return found


def checked_tree(tar_bytes: bytes, where: str) -> None:
    """BackupError unless every member is a `link` file of the repositories tree, once."""
    seen: set[str] = set()
    try:
        for member, _data in tar_members(tar_bytes):
            check_tree_member(member, where)
            if member.name in seen:
                raise BackupError(f"{where}: sent {member.name!r} twice")
            seen.add(member.name)
    except tarfile.TarError as error:
        raise BackupError(f"{where}: its repositories tar is broken ({error})") from None


def _tree_part(source: Side, base: str, tags: bool, limit: int) -> bytes:
    raw = source.check_bounded(tree_tar_command(base, tags), limit, "repositories tar")
    checked_tree(raw, source.name)
    return raw


def tree_snapshot(source: Side, base: str | None = None,
                  limit: int = 4 << 30) -> tuple[bytes, int]:
    """The repositories tree under BASE (default: the source's registry data) as one tar
    the kit writes itself (checked members, fresh headers), without _uploads; (tar, links
    read again). tar is no snapshot, so the order makes it one: every tag's current/link
    is read (and settled) first, and only then the rest. A tag is written last (after its
    index link, the manifest's revision link and the layer links the registry checked), so
    every link it needs exists when the second tar reads."""
    base = base or source.root + "/" + V2
    tags, reread_tags = settle_links(source, _tree_part(source, base, True, limit), base=base)
    rest, reread_rest = settle_links(source, _tree_part(source, base, False, limit), base=base)
    out = io.BytesIO()
    seen: set[str] = set()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as merged:
        for part in (tags, rest):
            for member, data in tar_members(part):
                if member.name in seen:
                    raise BackupError(f"{source.name}: sent {member.name!r} twice")
                seen.add(member.name)
                merged.addfile(clean_member(member), io.BytesIO(data))
    return out.getvalue(), reread_tags + reread_rest


def repositories_tar(source: Side, base: str | None = None, limit: int = 4 << 30) -> bytes:
    return tree_snapshot(source, base, limit)[0]


def bad_links(tar_bytes: bytes) -> list[str]:
    """Members named `link` whose content is not a whole `sha256:<64 hex>` (caught while the
    registry wrote it in place)."""
    return [member.name for member, data in tar_members(tar_bytes)
            if member.isfile() and member.name.rsplit("/", 1)[-1] == "link"
            and not LINK.fullmatch(data)]


def settle_links(source: Side, tar_bytes: bytes, tries: int = 20,
                 base: str | None = None) -> tuple[bytes, int]:
    """The tree with every half-written link read again until whole (a link that went away
    is left out); (tar, links re-read). A link that stays bad stops the backup."""
    names = bad_links(tar_bytes)
    if not names:
        return tar_bytes, 0
    base = base or source.root + "/" + V2
    fixed: dict[str, bytes | None] = {}
    for name in names:
        path = base + "/" + name
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
    with tarfile.open(fileobj=out_buffer, mode="w", format=tarfile.GNU_FORMAT) as new:
        for member, data in tar_members(tar_bytes):
            if member.name in fixed:
                data = fixed[member.name]  # type: ignore[assignment]
                if data is None:
                    continue
            info = clean_member(member)
            info.size = len(data)
            new.addfile(info, io.BytesIO(data))
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


EXTRACT = "tar -xf - --no-same-owner --no-same-permissions"


def extract_checked(sink: Side, folder: str, tree: bytes) -> None:
    """The tree tar (the kit's own) into a fresh FOLDER, then FOLDER/repositories must hash
    as the tar does: a tree cut short never replaces or becomes a good one."""
    sink.check(f"rm -rf {q(folder)} && mkdir -p {q(folder)} && cd {q(folder)} && {EXTRACT} "
               "&& mkdir -p repositories", tree)
    got = sink.check(tree_hash_command(folder)).decode().strip()
    if got != tree_hash(tree):
        raise BackupError(f"{sink.name}: the repositories tree extracted into {folder} hashes "
                          f"to {got or 'nothing'}, not {tree_hash(tree)}; left as it was")


def put_repositories(sink: Side, tar_bytes: bytes) -> None:
    """Replace the sink's repositories tree with the tar's, in one swap, once the new tree
    is extracted and checked."""
    v2 = sink.root + "/" + V2
    new, old = f"{v2}/.repositories-new", f"{v2}/.repositories-old"
    sink.check(f"mkdir -p {q(v2)} && rm -rf {q(old)}")
    extract_checked(sink, new, tar_bytes)
    sink.check(f"{{ [ ! -e {q(v2 + '/repositories')} ] || "
               f"mv {q(v2 + '/repositories')} {q(old)}; }} && "
               f"mv {q(new + '/repositories')} {q(v2 + '/repositories')} && "
               f"rm -rf {q(new)} {q(old)}")


def tags_from_tar(tar_bytes: bytes) -> dict[str, dict[str, str]]:
    """{repository: {tag: digest}} from the repositories tree's tag links."""
    found: dict[str, dict[str, str]] = {}
    for member, data in tar_members(tar_bytes):
        parts = member.name.split("/")
        if not (member.isfile() and len(parts) > 6 and parts[-1] == "link"
                and parts[-2] == "current" and parts[-5:-3] == ["_manifests", "tags"]):
            continue
        digest = data.decode(errors="replace").strip()
        digest_hex(digest, member.name)
        found.setdefault("/".join(parts[1:-5]), {})[parts[-3]] = digest
    return found


def build_index(settings: Settings, tags: dict[str, dict[str, str]], blobs: dict[str, int],
                this_backup: dict[str, Any], generation: str = "",
                tree_sha256: str = "") -> dict[str, Any]:
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
        "format": 2,
        "server": settings.host,
        "generation": generation,
        "tree_sha256": tree_sha256,
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


# --- generations: <root>/generations/<UTC time>/{repositories,index.json}, blobs shared ---

def generation_name(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"


def generations_command(root: str) -> str:
    return f"ls -1 {q(root + '/' + GENERATIONS)} 2>/dev/null; true"


def parse_generations(text: str | None) -> list[str]:
    """Complete generations, oldest first (a folder being written is `.<name>.partial`)."""
    return sorted(n for n in (text or "").split() if BACKUP_GENERATION_RE.fullmatch(n))


def generation_base(root: str, name: str | None) -> str:
    """The folder holding a generation's repositories and index.json; None: a backup in
    the layout before generations (the tree in the registry layout, index.json at root)."""
    return f"{root}/{GENERATIONS}/{name}" if name else f"{root}/{V2}"


def generation_index(root: str, name: str | None) -> str:
    return f"{generation_base(root, name)}/{INDEX}" if name else f"{root}/{INDEX}"


def index_blobs(index: Any, where: str) -> dict[str, int]:
    """{hex: size} of the blobs an index names, every digest checked."""
    if not isinstance(index, dict) or not isinstance(index.get("blobs"), dict):
        raise BackupError(f"{where}: not a backup index (no blobs)")
    blobs = {}
    for digest, size in index["blobs"].items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BackupError(f"{where}: blob {digest!r} has size {size!r}")
        blobs[digest_hex(digest, where)] = size
    return blobs


def index_tags(index: Any, where: str) -> dict[str, dict[str, str]]:
    """{repository: {tag: digest}} an index names, each digest checked."""
    found: dict[str, dict[str, str]] = {}
    repositories = index.get("repositories", {}) if isinstance(index, dict) else None
    if not isinstance(repositories, dict):
        raise BackupError(f"{where}: not a backup index (repositories)")
    for repository, body in repositories.items():
        for tag, entry in (body.get("tags", {}) if isinstance(body, dict) else {}).items():
            digest = entry.get("digest") if isinstance(entry, dict) else None
            digest_hex(digest, where)
            found.setdefault(str(repository), {})[str(tag)] = str(digest)
    return found


def tree_matches_index(tree: bytes, index: dict[str, Any], where: str) -> None:
    """BackupError unless the tree holds every tag the index names with its digest (and,
    for an index that records it, hashes as the index says)."""
    tags = tags_from_tar(tree)
    wrong = [f"{repo}:{tag}" for repo, repo_tags in index_tags(index, where).items()
             for tag, digest in repo_tags.items() if tags.get(repo, {}).get(tag) != digest]
    if wrong:
        raise BackupError(f"{where}: its repositories tree lacks {len(wrong)} tags its "
                          f"{INDEX} names (first: {wrong[0]}); not restoring it")
    if index.get("tree_sha256") and tree_hash(tree) != index["tree_sha256"]:
        raise BackupError(f"{where}: its repositories tree does not hash to the tree_sha256 "
                          f"of its {INDEX}; not restoring it")


def prune_plan(generations: list[str], keep: int, needs: Mapping[str, set[str] | None],
               in_store: set[str]) -> tuple[list[str], list[str]]:
    """(generations to remove: all but the newest `keep`, blobs to remove: those no kept
    generation needs). A kept generation whose needs are unknown (its index unreadable)
    keeps every blob."""
    ordered = sorted(generations)
    dropped = ordered[:max(0, len(ordered) - keep)]
    kept = ordered[len(dropped):]
    known = [needs.get(name) for name in kept]
    if any(need is None for need in known):
        return dropped, []
    needed: set[str] = set().union(*[need for need in known if need is not None])
    return dropped, sorted(in_store - needed)


def read_index(side: Side, path: str, limit: int) -> Any:
    try:
        return json.loads(side.check_bounded(f"cat {q(path)}", limit, path))
    except ValueError:
        raise BackupError(f"{side.name}: {path} is not JSON") from None


def prune(sink: Side, root: str, keep: int, newest: str, newest_blobs: set[str],
          limit: int) -> tuple[list[str], int]:
    names = parse_generations(sink.check(generations_command(root)).decode())
    needs: dict[str, set[str] | None] = {newest: newest_blobs}
    for name in names[max(0, len(names) - keep):]:
        if name != newest:
            try:
                needs[name] = set(index_blobs(read_index(
                    sink, generation_index(root, name), limit), name))
            except BackupError:
                needs[name] = None
    in_store = set(parse_blobs(sink.check(blob_listing_command(root)).decode(), sink.name))
    dropped, blobs = prune_plan(names, keep, needs, in_store)
    if dropped:
        sink.check("rm -rf " + " ".join(q(generation_base(root, name)) for name in dropped))
    if blobs:
        sink.check(f"cd {q(root + '/' + V2 + '/blobs/sha256')} && xargs -0 -r rm -rf --",
                   b"".join(f"{d[:2]}/{d}".encode() + b"\0" for d in blobs))
    return dropped, len(blobs)


def migrate_layout(sink: Side, root: str) -> str | None:
    """A backup from before generations (its tree in the registry layout, index.json at
    root) becomes the oldest generation, named by its index's time; its name or None."""
    v2 = root + "/" + V2
    if sink.run(f"test -d {q(v2 + '/repositories')}")[0] != 0:
        return None
    _code, raw, _err = sink.run(f"cat {q(root + '/' + INDEX)}")
    try:
        when = float(calendar.timegm(time.strptime(json.loads(raw)["time"],
                                                   "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, KeyError, TypeError):
        when, raw = 0.0, json.dumps({"blobs": {}, "repositories": {}}).encode()
    target = generation_base(root, generation_name(when))
    sink.check(f"mkdir -p {q(target)} && cat > {q(target + '/' + INDEX)} && "
               f"mv {q(v2 + '/repositories')} {q(target)}", raw)
    return generation_name(when)


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


def _copy_again_if_torn(source: Side, sink: Side, bad: list[str],
                        sizes: dict[str, int]) -> tuple[int, list[str]]:
    """(tar bytes moved, blobs still bad): blobs caught while the registry wrote them are
    copied once more, now that they are whole."""
    if not bad:
        return 0, []
    moved, got_again = copy_blobs(source, sink, bad, sizes)
    return moved, check_copied(sink, [d for d in bad if d in got_again], sizes) + [
        d for d in bad if d not in got_again]


def _publish(sink: Side, root: str, name: str, partial: str, index: dict[str, Any]) -> None:
    """The generation gets its name once its index is in it; then the top index.json."""
    text = json.dumps(index, indent=1, sort_keys=True).encode() + b"\n"
    sink.check(f"cat > {q(partial + '/' + INDEX)} && mv {q(partial)} "
               f"{q(generation_base(root, name))}", text)
    sink.check(f"cat > {q(root + '/' + INDEX + '.new')} && "
               f"mv -f {q(root + '/' + INDEX + '.new')} {q(root + '/' + INDEX)}", text)


def run_backup(target: Any, settings: Settings, root: str) -> str:
    limit = settings.registry_backup_tree_max_bytes
    source = Side(settings.registry_data_dir, target.name, target.connector.client)
    sink = side_for_store(root, settings)
    sink.check(f"mkdir -p {q(root)} && chmod 0700 {q(root)}")
    migrated = migrate_layout(sink, root)
    started, started_at = time.monotonic(), time.time()
    in_backup = parse_blobs(sink.check(blob_listing_command(sink.root)).decode(), sink.name)
    # Pass 1: the blobs the backup lacks (the registry takes pushes and pulls meanwhile).
    on_server = parse_blobs(source.check(blob_listing_command(source.root)).decode(),
                            source.name)
    first = missing_blobs(in_backup, on_server)
    bytes_first, got_first = copy_blobs(source, sink, first, on_server)
    have = {**in_backup, **{d: on_server[d] for d in got_first}}
    # Pass 2: the repositories tree; every blob its links name exists from now on.
    tree, links_reread = tree_snapshot(source, None, limit)
    # Pass 3: the blobs pushed since pass 1 began (a superset of those the tree names).
    final = parse_blobs(source.check(blob_listing_command(source.root)).decode(), source.name)
    late = missing_blobs(have, final)
    bytes_late, got_late = copy_blobs(source, sink, late, final)
    sizes = {**on_server, **final}
    copied_now = [d for d in first if d in got_first] + [d for d in late if d in got_late]
    moved, bad = _copy_again_if_torn(source, sink, check_copied(sink, copied_now, sizes), sizes)
    bytes_late += moved
    # The generation names what the server listed and the backup now holds, whole.
    in_store = parse_blobs(sink.check(blob_listing_command(sink.root)).decode(), sink.name)
    blobs = {d: s for d, s in sizes.items() if in_store.get(d) == s and d not in bad}
    # A new generation: extracted into a fresh folder and checked; it gets its name (and
    # the generations before it are touched) only once its index is in it.
    name = generation_name(started_at)
    partial = f"{root}/{GENERATIONS}/.{name}.partial"
    extract_checked(sink, partial, tree)
    seconds = time.monotonic() - started
    copied_digests = [d for d in dict.fromkeys(copied_now) if d in blobs]
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
    index = build_index(settings, tags_from_tar(tree), blobs, this_backup, name, tree_hash(tree))
    _publish(sink, root, name, partial, index)
    dropped, pruned_blobs = prune(sink, root, settings.registry_backup_keep, name,
                                  set(blobs), limit)
    return (f"backup of {target.name} in {sink.name}:{root}: generation {name}, "
            f"{len(copied_digests)} blobs copied ({copied} bytes, {len(late)} of them after "
            f"the tree), {index['tag_count']} tags in {len(index['repositories'])} "
            f"repositories, {len(index['tags_left_out'])} tags left out (manifest not in the "
            f"backup), {this_backup['seconds']} s ({this_backup['mb_per_s']} MB/s); pushes and "
            f"pulls went on throughout; {len(dropped)} old generations and {pruned_blobs} "
            f"blobs no kept generation needs removed (keep {settings.registry_backup_keep})"
            + (f"; the backup before generations became generation {migrated}"
               if migrated else ""))


def up_to_date(server_blobs: dict[str, int], server_tree: str,
               backup_blobs: dict[str, int], backup_tree: str) -> bool:
    """Whether the backup holds every blob of the server and its newest generation the
    server's repositories tree."""
    return not missing_blobs(backup_blobs, server_blobs) and server_tree == backup_tree \
        and bool(server_tree)


@operation()
def back_up(settings: Settings, root: str, server_blobs: dict[str, int], server_tree: str,
            backup_blobs: dict[str, int], backup_tree: str):
    if up_to_date(server_blobs, server_tree, backup_blobs, backup_tree):
        host.noop(f"backup in {root} is up to date ({len(server_blobs)} blobs, its newest "
                  "generation has the same repositories tree)")
        return
    yield FunctionCommand(_run_backup, (settings, root), {})


# --- the backup's fact for Prometheus (registry_metrics): BackupTooOld watches it ---

# A run that found the backup up to date counts as a success too (a registry nobody pushed
# to over a weekend is backed up all the same), but rewrites the fact only when the one
# there is this old: a second run right after the first changes nothing.
FACT_REFRESH_SECONDS = 3600
FACT_LINE = re.compile(r"registry_kit_backup_last_success_timestamp_seconds ([0-9]{1,12})")
NO_FACTS_FOLDER = "no facts folder"


def fact_command() -> str:
    """The server's facts folder and the backup's fact in it, read while planning."""
    return (f"if test -d {q(layout.FACTS_DIR)}; then cat {q(layout.FACTS_BACKUP)} "
            f"2>/dev/null; true; else echo {q(NO_FACTS_FOLDER)}; fi")


def recorded_time(text: str | None) -> int | None:
    """The time the fact on the server holds (None: none, or not as the kit writes it:
    the server may be broken into; the fact is then written anew)."""
    for line in (text or "").splitlines():
        match = FACT_LINE.fullmatch(line.strip())
        if match:
            return int(match[1])
    return None


@operation()
def record_success(when: float, fact: str | None, fresh: bool):
    """`fact`: what fact_command read; `fresh`: this run makes a new generation (its
    operation ran before this one, so this one runs only when that one succeeded)."""
    if fact is not None and fact.strip() == NO_FACTS_FOLDER:
        host.noop(f"no {layout.FACTS_DIR} on this server (deploy with registry_metrics on "
                  "first): the backup's time is not recorded")
        return
    recorded = recorded_time(fact)
    if not fresh and recorded is not None and when - recorded < FACT_REFRESH_SECONDS:
        host.noop(f"the backup is up to date; {layout.FACTS_BACKUP} records it "
                  f"{int(when - recorded)} s ago")
        return
    yield from files.managed_file._inner(layout.FACTS_BACKUP,
                                         prometheus.backup_facts(when).encode(), "0644", None)


# --- verify (read-only: it runs while planning and reports without changing anything) ---

def verify_command(root: str) -> str:
    """`OK|BAD HEX` per blob of a backup: its sha256 against the digest in its path."""
    return (f"cd {q(root + '/' + V2 + '/blobs/sha256')} && "
            "find . -mindepth 3 -maxdepth 3 -name data -type f | while read -r f; do "
            "d=${f#./??/}; d=${d%/data}; "
            "s=$(sha256sum \"$f\" | cut -d' ' -f1); "
            "if [ \"$s\" = \"$d\" ]; then echo \"OK $d\"; else echo \"BAD $d $s\"; fi; done")


VERIFY_LINE = re.compile(r"OK ([0-9a-f]{64})|BAD ([0-9a-f]{64}) ([0-9a-f]{64})")


def run_verify(settings: Settings, root: str) -> tuple[bool, list[str]]:
    """(all good, report lines): every blob re-hashed against its digest, and every blob
    each generation's index names present."""
    sink = side_for_store(root, settings)
    names: list[str | None] = list(parse_generations(
        sink.check(generations_command(root)).decode()))
    if not names and sink.run(f"test -e {q(root + '/' + INDEX)}")[0] == 0:
        names = [None]  # the layout before generations
    if not names:
        return False, [f"verify: no backup (no {INDEX}) in {sink.name}:{root}"]
    named: dict[str, str] = {}
    for name in names:
        where = generation_index(root, name)
        for digest in index_blobs(read_index(sink, where, settings.registry_backup_tree_max_bytes),
                                  where):
            named.setdefault(digest, where)
    code, out, err = sink.run(verify_command(root))
    good, bad = set(), []
    for line in out.decode(errors="replace").splitlines():
        match = VERIFY_LINE.fullmatch(line.strip())
        if match and match[1]:
            good.add(match[1])
        elif match:
            bad.append((match[2], match[3]))
    lines = [f"verify: MISMATCH sha256:{digest} in {sink.name}:{root}: content hashes to "
             f"sha256:{actual}" for digest, actual in bad]
    bad_set = {digest for digest, _ in bad}
    absent = sorted(d for d in named if d not in good and d not in bad_set)
    lines += [f"verify: MISSING sha256:{d} (named in {named[d]})" for d in absent]
    if code != 0 or bad or absent:
        return False, [*lines, f"verify: {len(bad)} mismatched, {len(absent)} missing, "
                               f"{len(good)} good blobs in {sink.name}:{root} "
                               f"{err.strip()[-200:]}"]
    return True, [f"verify: all {len(good)} blobs in {sink.name}:{root} match their digests "
                  f"({len(names)} generations, each with every blob its index names)"]


def _log_failure(state: Any, host: Any, lines: list[str]) -> bool:
    for line in lines:
        host.log_styled(f"registry-kit: {line}", fg="red", log_func=logger.error)
    return False


@operation()
def verify_report(ok: bool, lines: list[str]):
    if ok:
        host.noop("registry-kit: " + " ".join(lines))
        return
    yield FunctionCommand(_log_failure, (lines,), {})


def store_refusal(error: BackupError) -> BaseException:
    """What a backup's other side sent while planning (a listing, an index) stops the run
    with one line, before anything is copied."""
    return refusal(SettingsError(str(error)))


# --- backup.py ---

def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    settings = server_settings(groups, defaults)
    if settings is None:
        return
    refuse_unsupported(settings, "backup.py")
    root = f"{backup_base(settings)}/{host.name}"
    try:
        if settings.registry_backup_verify:
            ok, lines = run_verify(settings, root)
            if ok:  # said once here: the operation's body runs twice, and noops need -v
                report(host, lines[0])
            verify_report(ok, lines, name=f"Verify every blob of the backup in {root}")
            return
        server_blobs = parse_blobs(host.get_fact(Command, blob_listing_command(
            settings.registry_data_dir)), host.name)
        backup_blobs = parse_blobs(store_fact(settings, blob_listing_command(root)),
                                   settings.registry_backup_host or "control machine")
    except BackupError as error:
        raise store_refusal(error) from None
    server_tree = str(host.get_fact(Command, repositories_hash_command(
        settings.registry_data_dir)) or "")
    generations = parse_generations(store_fact(settings, generations_command(root)))
    # The newest generation, or a backup made before generations (migrated on its next run).
    newest = generations[-1] if generations else None
    backup_tree = store_fact(settings, tree_hash_command(generation_base(root, newest))).strip()
    # The time the fact records: now, before the backup reads anything (it holds the data
    # as of then or newer).
    when = time.time()
    # One server at a time: each backup reads its server's disk hard.
    back_up(settings, root, server_blobs, server_tree.strip(), backup_blobs, backup_tree,
            name=f"Back up registry data to {root}", _serial=True)
    if settings.registry_metrics:
        fresh = not up_to_date(server_blobs, server_tree.strip(), backup_blobs, backup_tree)
        record_success(when, host.get_fact(Command, fact_command()), fresh,
                       name=f"Record the backup's time in {layout.FACTS_BACKUP} (metrics)")
