"""The kit removes only what it owns, on a real server (lab-reg): deploy marks each folder it
creates (.registry-kit-owned), teardown and purge delete a folder only when it carries that
marker, and name every folder they keep (one line: host and path).

Scenarios share lab-reg (reset once, Docker installed by the first deploy) and run in order:
a fresh deploy torn down with purge; a data folder left by a registry run by hand, adopted
and kept by purge; a config folder shared with other files; the folders of a deploy made
before markers existed (no marker: kept), handed to the kit by hand afterwards. Every deploy
is applied twice and the second changes nothing (one remote command: the probe). Checked
over SSH with stat, sha256sum, ls and curl, never with the kit's code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import harness
import pytest
from harness import Run

import lab as lab_api

SERVER = "lab-reg"
CONFIG = "/etc/registry-kit"
DATA = "/var/lib/registry-kit/data"
MARKER = ".registry-kit-owned"
HAND_DATA = "/srv/registry"  # `docker run -v /srv/registry:/var/lib/registry registry:2`
HAND_FILE = f"{HAND_DATA}/docker/registry/v2/repositories/hand/busybox/_layers/link"
SHARED = "/etc/rk-shared"

pytestmark = pytest.mark.e2e


class Kit:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.py"
        self.users = [{"name": "ci", "password_file": harness.write_secret(
            directory, "ci.password", "ownership-pw-1")}]

    def run(self, script: str, *extra: str, **data: Any) -> Run:
        harness.write_inventory(self.inventory, servers=[SERVER], clients=[], data={
            "registry_domain": "registry.lab", "registry_users": self.users,
            "registry_state_dir": str(self.dir / "state"), "registry_verify_timeout": 30,
            **data})
        return harness.run_kit(self.inventory, script, *extra)

    def deploy_twice(self, **data: Any) -> Run:
        first = self.run("deploy.py", **data).assert_ok()
        second = self.run("deploy.py", "--debug", **data).assert_no_changes()
        # The no-op costs the probe alone: markers come from it, no extra command.
        assert len(re.findall(rf"Running command on {SERVER}:", second.stderr)) == 1, \
            second.stderr[-3000:]
        assert sh("curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:5000/v2/") \
            == "401"
        return first


def sh(command: str) -> str:
    return harness.ssh(SERVER, command).stdout.strip()


def exists(path: str) -> bool:
    return harness.ssh(SERVER, f"test -e {path}", check=False).returncode == 0


def marker_stat(folder: str) -> str:
    """'MODE OWNER GROUP' of the folder's marker, or '' when it has none."""
    return harness.ssh(SERVER, f"stat -c '%a %U %G' {folder}/{MARKER}", check=False
                       ).stdout.strip()


@pytest.fixture(scope="module")
def kit(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Kit:
    lab_api.reset_host(SERVER)  # a fresh machine, whatever earlier modules left
    return Kit(tmp_path_factory.mktemp("ownership"))


def test_fresh_deploy_marks_its_folders_and_purge_removes_them(kit: Kit) -> None:
    kit.deploy_twice()
    for folder in (CONFIG, f"{CONFIG}/certs", f"{CONFIG}/auth", DATA):
        assert marker_stat(folder) == "644 root root", folder
        assert sh(f"stat -c '%a %U' {folder}") == "700 root"
    assert marker_stat("/var/lib/registry-kit") == ""  # a parent made on the way: unmarked
    run = kit.run("teardown.py", "--data", "registry_purge_data=True").assert_ok()
    assert f"{SERVER}: registry_purge_data=True: DELETING the registry data in {DATA}" \
        in run.stderr
    assert "kept" not in run.stderr.lower(), run.stderr[-3000:]
    for path in (CONFIG, DATA, "/usr/local/lib/registry-kit"):
        assert not exists(path), path
    kit.run("teardown.py", "--data", "registry_purge_data=True").assert_no_changes()


def test_hand_run_registry_data_is_adopted_and_kept_by_purge(kit: Kit) -> None:
    harness.ssh(SERVER, f"mkdir -p {Path(HAND_FILE).parent} && chmod 0755 {HAND_DATA} && "
                f"echo sha256:0123abcd > {HAND_FILE}")
    before = sh(f"sha256sum {HAND_FILE}")
    kit.deploy_twice(registry_data_dir=HAND_DATA)
    assert marker_stat(HAND_DATA) == ""  # not the kit's: no marker, mode left alone
    assert sh(f"stat -c '%a' {HAND_DATA}") == "755"
    assert marker_stat(CONFIG) == "644 root root"  # created by this deploy: the kit's
    assert sh("docker inspect -f '{{range .Mounts}}{{.Source}} {{end}}' registry").split() \
        .count(HAND_DATA) == 1  # the registry uses the adopted folder
    kept = f"{SERVER}: registry_purge_data=True: KEPT {HAND_DATA}: registry-kit did not create it"
    for _ in range(2):
        run = kit.run("teardown.py", "--data", "registry_purge_data=True",
                      registry_data_dir=HAND_DATA).assert_ok()
        assert kept in run.stderr, run.stderr[-3000:]
        assert "DELETING" not in run.stderr
        assert sh(f"sha256sum {HAND_FILE}") == before
        assert not exists(CONFIG)
    run.assert_no_changes()  # the second teardown


def test_shared_config_folder_keeps_its_other_files(kit: Kit) -> None:
    harness.ssh(SERVER, f"mkdir -p {SHARED} && chmod 0755 {SHARED} && "
                f"echo 'theirs=1' > {SHARED}/theirs.conf")
    before = sh(f"sha256sum {SHARED}/theirs.conf")
    kit.deploy_twice(registry_config_dir=SHARED)
    assert marker_stat(SHARED) == ""
    assert marker_stat(f"{SHARED}/certs") == "644 root root"  # created by the kit
    assert exists(f"{SHARED}/config.yml")
    for _ in range(2):
        run = kit.run("teardown.py", registry_config_dir=SHARED).assert_ok()
        assert f"{SERVER}: kept {SHARED}: registry-kit did not create it" in run.stderr
        assert sh(f"ls -A {SHARED}") == "theirs.conf"  # the kit's files and subfolders gone
        assert sh(f"sha256sum {SHARED}/theirs.conf") == before
        assert sh(f"stat -c '%a' {SHARED}") == "755"
        assert marker_stat(DATA) == "644 root root"  # no purge asked: data kept
    run.assert_no_changes()


def test_folders_of_a_deploy_before_markers_are_kept_until_handed_over(kit: Kit) -> None:
    kit.run("teardown.py", "--data", "registry_purge_data=True").assert_ok()
    kit.deploy_twice()
    # What the kit's earlier version left: the same folders, no marker in any of them.
    legacy = [CONFIG, f"{CONFIG}/certs", f"{CONFIG}/auth", DATA]
    harness.ssh(SERVER, "rm -f " + " ".join(f"{folder}/{MARKER}" for folder in legacy) +
                f" && echo image-data > {DATA}/pushed-before")
    kit.run("deploy.py").assert_no_changes()  # adopted: no marker added, nothing changed
    run = kit.run("teardown.py", "--data", "registry_purge_data=True").assert_ok()
    for folder in legacy[:3]:
        assert f"{SERVER}: kept {folder}: registry-kit did not create it" in run.stderr
    assert f"KEPT {DATA}" in run.stderr
    assert sh(f"find {CONFIG} -type f") == ""  # the kit's files went all the same
    assert sh(f"cat {DATA}/pushed-before") == "image-data"  # the data stayed
    kit.run("teardown.py", "--data", "registry_purge_data=True").assert_no_changes()
    # The README's hand-over: a root-owned marker makes the folders the kit's to remove.
    harness.ssh(SERVER, "touch " + " ".join(f"{folder}/{MARKER}" for folder in legacy))
    run = kit.run("teardown.py", "--data", "registry_purge_data=True").assert_ok()
    assert f"DELETING the registry data in {DATA}" in run.stderr
    for folder in (CONFIG, DATA):
        assert not exists(folder), folder
