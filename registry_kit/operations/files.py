"""Generic operations on managed files and folders, driven by the probe snapshot.

Compared with pyinfra's files.put/files.directory these ask no facts of their own: the
probe (registry_kit.facts) already holds each file's checksum, mode and owner, so an
unchanged file costs no remote command. Uploads go over SFTP into a temporary file that
was created with the final mode first (a key is never readable by others, not even for a
moment), then are renamed into place. Every upload of the kit goes through `upload()`,
which keeps that true under pyinfra's --sudo as well.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from io import BytesIO
from typing import IO, Any

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, StringCommand

from registry_kit.commands import q
from registry_kit.facts import FileState
from registry_kit.operations.typed import operation


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# Global arguments under which pyinfra's SSH put_file uploads as the login user into a
# temporary file and copies it into place as another user (pyinfra/connectors/ssh.py).
_ELEVATING = ("_sudo", "_doas", "_dzdo", "_su_user")
_TARGET_USERS = ("_su_user", "_sudo_user", "_doas_user", "_dzdo_user")
# The same arguments, off: a command or an SFTP transfer as the login user itself.
_AS_LOGIN_USER: dict[str, Any] = {
    "_sudo": False, "_sudo_user": None, "_doas": False, "_doas_user": None,
    "_dzdo": False, "_dzdo_user": None, "_su_user": None}
class _PrivateUpload(FileUploadCommand):
    """A FileUploadCommand whose temporary file (under --sudo & co.) no one else can read.

    pyinfra 3.10 puts that file at /tmp/pyinfra-<sha1>, created by SFTP with the login
    user's umask (0644 under the usual 022), and leaves it there until `sudo cp` has run:
    a window in which any local user can read a key or a password. Here the login user
    makes a folder of its own with `umask 077` under a random name (mkdir fails if the
    name exists, so nobody can plant it) and an empty 0600 file in it, which SFTP then
    fills (its open truncates an existing file and keeps the mode). The elevated `cp`
    writes into the staging file the caller created with the final mode, and removes the
    folder in the same command: as many commands per upload as pyinfra's own (cp, rm).
    Decided when the command runs, with the arguments it runs with: without elevation this
    is one SFTP transfer, as before.
    """

    def execute(self, state, host, connector_arguments):
        connector_arguments.update(self.connector_arguments)
        arguments = connector_arguments
        show = {"print_output": state.print_output, "print_input": state.print_input}
        if not any(arguments.get(key) for key in _ELEVATING):
            return host.put_file(self.src, self.dest, **show, **arguments)
        # pyinfra runs its own temp-file steps without _chdir (it may need the elevation).
        as_login = {**{k: v for k, v in arguments.items() if k != "_chdir"}, **_AS_LOGIN_USER}
        temp_dir = arguments.get("_temp_dir") or host.get_temp_dir_config()
        folder = f"{temp_dir.rstrip('/')}/registry-kit-upload-{secrets.token_hex(8)}"
        temp = f"{folder}/upload"
        other = next((arguments[key] for key in _TARGET_USERS if arguments.get(key)), None)
        setup = f"umask 077 && mkdir {q(folder)} && : > {q(temp)}"
        copy = f"cp {q(temp)} {q(self.dest)}"
        if other:  # a user other than root copies: grant it the file, as pyinfra does
            setup += f" && setfacl -m u:{q(other)}:x {q(folder)} && " \
                     f"setfacl -m u:{q(other)}:r {q(temp)}"
        else:  # root removes the folder right away; the login user does otherwise
            copy += f"; status=$?; rm -rf {q(folder)}; exit $status"

        def run(command: StringCommand, **command_arguments: Any) -> bool:
            status, output = host.run_shell_command(command, **show, **command_arguments)
            if status is False:
                logger.error(f"{host.print_prefix}upload to {self.dest} failed: "
                             f"{output.stderr}")
            return bool(status)

        copied = False
        try:
            copied = run(StringCommand(setup), **as_login) and \
                bool(host.put_file(self.src, temp, **show, **as_login)) and \
                run(StringCommand(copy), **arguments)
        finally:
            if other or not copied:
                run(StringCommand(f"rm -rf {q(folder)}"), **as_login)
        return copied


def upload(src: str | IO[bytes], dest: str) -> FileUploadCommand:
    """The kit's one way to put a file on a host: `src` (a control-machine path or bytes
    IO) to `dest`, which the caller has created with its final mode and owner. Safe with
    and without --sudo (see _PrivateUpload)."""
    return _PrivateUpload(src, dest)


def up_to_date(contents: dict[str, bytes], files: dict[str, FileState]) -> bool:
    """Whether every path of `contents` holds its content (the probe's checksums)."""
    return all(path in files and files[path].sha256 == sha256_of(content)
               for path, content in contents.items())


def install_units(units: dict[str, bytes], timer: str) -> Iterator[Any]:
    """Commands that put systemd units in place (each staged, then moved: never half
    written) and (re)start `timer` with them: shared by the kit's timers."""
    for path, content in units.items():
        staging = f"{path}.registry-kit-new"
        yield f"install -m 0644 /dev/null {q(staging)}"
        yield upload(BytesIO(content), staging)
        yield f"mv -f {q(staging)} {q(path)}"
    yield f"systemctl daemon-reload && systemctl enable {q(timer)} >/dev/null 2>&1 && " \
          f"systemctl restart {q(timer)}"


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
    yield upload(BytesIO(content), staging)
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
