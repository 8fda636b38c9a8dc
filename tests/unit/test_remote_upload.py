"""remote.upload(): what it asks the connector to do, with and without --sudo.

The e2e proof is tests/e2e/test_sudo.py; this pins the sequence for each case (and that
every upload of the kit goes through it) without a lab.
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from registry_kit.operations import files as remote

PACKAGE = Path(remote.__file__).resolve().parent.parent


class RecordingHost:
    """Stands in for pyinfra's Host: records put_file and run_shell_command calls."""

    print_prefix = "[test] "

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail = fail

    def get_temp_dir_config(self) -> str:
        return "/tmp"

    def put_file(self, src: Any, dest: str, remote_temp_filename: Any = None,
                 print_output: bool = False, print_input: bool = False,
                 **arguments: Any) -> bool:
        assert remote_temp_filename is None  # pyinfra's own temp file is never used
        self.calls.append(("put", dest, arguments))
        return True

    def run_shell_command(self, command: Any, print_output: bool = False,
                          print_input: bool = False, **arguments: Any) -> tuple[bool, Any]:
        text = command.get_raw_value()
        self.calls.append(("run", text, arguments))
        ok = not (self.fail and text.startswith(self.fail))
        return ok, SimpleNamespace(stderr="failed")


STATE = SimpleNamespace(print_output=False, print_input=False)


def execute(arguments: dict[str, Any], fail: str = "") -> tuple[Any, RecordingHost]:
    host = RecordingHost(fail)
    command = remote.upload(BytesIO(b"s3cret"), "/etc/x/key.registry-kit-new")
    return command.execute(STATE, host, dict(arguments)), host


def test_without_elevation_one_sftp_transfer_to_the_staging_file() -> None:
    ok, host = execute({"_sudo": False, "_timeout": 5})
    assert ok is True
    assert host.calls == [("put", "/etc/x/key.registry-kit-new",
                           {"_sudo": False, "_timeout": 5})]


def test_with_sudo_a_private_folder_then_one_elevated_copy() -> None:
    ok, host = execute({"_sudo": True, "_timeout": 5, "_chdir": "/srv"})
    assert ok is True
    (k1, setup, a1), (k2, temp, a2), (k3, copy, a3) = host.calls
    match = re.fullmatch(r"umask 077 && mkdir (/tmp/registry-kit-upload-[0-9a-f]{16}) && "
                         r": > \1/upload", setup)
    assert k1 == "run" and match, setup
    folder = match[1]
    # Folder, file and transfer as the login user; only the copy is elevated.
    for arguments in (a1, a2):
        assert arguments["_sudo"] is False and "_chdir" not in arguments
        assert arguments["_timeout"] == 5
    assert (k2, temp) == ("put", f"{folder}/upload")
    assert k3 == "run" and a3["_sudo"] is True and a3["_chdir"] == "/srv"
    assert copy == (f"cp {folder}/upload /etc/x/key.registry-kit-new; status=$?; "
                    f"rm -rf {folder}; exit $status")
    assert all("s3cret" not in str(call) for call in host.calls)


def test_each_upload_gets_its_own_folder() -> None:
    _, first = execute({"_sudo": True})
    _, second = execute({"_sudo": True})
    assert first.calls[0][1] != second.calls[0][1]


def test_sudo_to_another_user_grants_it_the_file_and_the_login_user_cleans_up() -> None:
    ok, host = execute({"_sudo": True, "_sudo_user": "registry"})
    assert ok is True
    setup, copy, cleanup = host.calls[0][1], host.calls[2][1], host.calls[3]
    assert setup.endswith("setfacl -m u:registry:r " + setup.split()[4] + "/upload")
    assert "rm -rf" not in copy
    assert cleanup[1].startswith("rm -rf /tmp/registry-kit-upload-")
    assert cleanup[2]["_sudo"] is False and cleanup[2]["_sudo_user"] is None


def test_a_failed_copy_still_removes_the_folder() -> None:
    ok, host = execute({"_sudo": True}, fail="cp ")
    assert ok is False
    assert host.calls[-1][1].startswith("rm -rf /tmp/registry-kit-upload-")
    assert host.calls[-1][2]["_sudo"] is False


def test_every_upload_of_the_kit_goes_through_remote_upload() -> None:
    direct = [path.name for path in PACKAGE.rglob("*.py")
              if path.name != "files.py" and "FileUploadCommand" in path.read_text()]
    assert direct == []
