"""Generic operations on managed files and folders, driven by the probe snapshot.

Compared with pyinfra's files.put/files.directory these ask no facts of their own: the
probe (registry_kit.facts) already holds each file's checksum, mode and owner, so an
unchanged file costs no remote command. Uploads go over SFTP into a temporary file that
was created with the final mode first (a key is never readable by others, not even for a
moment), then are renamed into place.
"""

from __future__ import annotations

import hashlib
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from registry_kit.commands import q
from registry_kit.facts import FileState


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _mode(mode: str) -> str:
    return mode.lstrip("0") or "0"


@operation()
def managed_file(path: str, content: bytes, mode: str, current: FileState | None,
                 owner: str = "root", group: str = "root"):
    """Make `path` hold `content` with `mode`; content never appears in a command."""
    if current is not None and current.sha256 == sha256_of(content):
        if (current.mode, current.owner, current.group) == (_mode(mode), owner, group):
            host.noop(f"{path} is up to date")
            return
        yield f"chown {q(owner + ':' + group)} {q(path)} && chmod {q(mode)} {q(path)}"
        return
    staging = f"{path}.registry-kit-new"
    yield f"install -m {q(mode)} -o {q(owner)} -g {q(group)} /dev/null {q(staging)}"
    yield FileUploadCommand(BytesIO(content), staging)
    yield f"mv -f {q(staging)} {q(path)}"


@operation()
def managed_dir(path: str, mode: str, current_mode: str | None):
    if current_mode == _mode(mode):
        host.noop(f"{path} exists")
        return
    yield f"install -d -m {q(mode)} -o root -g root {q(path)}"


@operation()
def absent_paths(paths: list[str], present: list[str]):
    """Remove the listed files or folders that the probe saw (teardown)."""
    existing = [path for path in paths if path in present]
    if not existing:
        host.noop("nothing to remove")
        return
    yield "rm -rf " + " ".join(q(path) for path in existing)
