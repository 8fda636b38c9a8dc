"""pyinfra's --sudo on real lab hosts: no secret passes through a file others can read.

Both hosts are reached as `deployer`, a login with passwordless sudo (lab.add_sudo_user).
Over SSH as that user, pyinfra can only write files the user may write: with --sudo each
upload goes over SFTP into a temporary file and is then copied into place with sudo.

The module first deploys as root (the normal case) and records the modes and owners of
every file the kit writes. It then deletes those files, so that the --sudo run uploads
every one of them again (server key, htpasswd, config.yml with the http secret, the health
check's curl config, the client's login password), while a sampler on each host (over SSH
as root) lists every file and folder under /tmp, /var/tmp and deployer's home with its
mode, about 100 times a second, and greps each file changed since it started for the
scenario's secrets. No sampled file that held a secret may be readable by group or others.
So that this cannot pass on a blind sampler, it must have seen the kit's private upload
folders and secrets in them, and must catch a canary (a file with a secret under umask 022
in /tmp for one second, as pyinfra's own upload leaves one). The files must end with the
modes and owners of the root run, a second --sudo run must change nothing, and a no-op
costs one remote command per host with and without --sudo.
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import pytest

import lab as lab_api
from lab import state as lab_state

pytestmark = pytest.mark.e2e

SERVER = "lab-reg"
CLIENT = "lab-client1"
USER = "deployer"
HOME = f"/home/{USER}"
DOMAIN = "registry.lab"
PORT = 5000
STATE_DIR = harness.STATE_DIR
WATCHED = f"/tmp /var/tmp {HOME}"
PATTERNS = "/root/.rk-sudo-sampler-patterns"  # on the hosts; root's home is not watched
STOP = "/root/.rk-sudo-sampler-stop"
SAMPLES_MAX = 20000  # bounds the sampler with `timeout` below: at most ~20000 x 20 ms
CANARY = "/tmp/pyinfra-rk-sudo-canary"
UPLOAD_DIR = re.compile(r"^/tmp/registry-kit-upload-[0-9a-f]+$")

SERVER_FILES = ["/etc/registry-kit/config.yml", "/etc/registry-kit/certs/server.crt",
                "/etc/registry-kit/certs/server.key", "/etc/registry-kit/certs/ca.crt",
                "/etc/registry-kit/auth/htpasswd", "/etc/docker/daemon.json",
                "/usr/local/lib/registry-kit/replace-container.sh",
                "/usr/local/lib/registry-kit/verify-auth.sh"]
SERVER_DIRS = ["/etc/registry-kit", "/etc/registry-kit/certs", "/etc/registry-kit/auth"]
CLIENT_FILES = [f"/etc/docker/certs.d/{DOMAIN}:{PORT}/ca.crt",
                f"/etc/registry-kit-client/login-{DOMAIN}_{PORT}", "/etc/docker/daemon.json",
                "/root/.docker/config.json"]
TARGETS = {SERVER: SERVER_FILES + SERVER_DIRS, CLIENT: CLIENT_FILES}


@dataclass
class Samples:
    """What a host's sampler saw: (kind, mode, owner, path) per entry, per sample."""

    count: int = 0
    entries: set[tuple[str, str, str, str]] = field(default_factory=set)
    secrets: set[tuple[str, str, str]] = field(default_factory=set)  # (mode, owner, path)


class FileSampler:
    """The sampler loop on each host over one root SSH session each, written to local
    files. Stopped by a stop file (then by terminating the ssh clients this object
    started); bounded by SAMPLES_MAX and `timeout` on the host."""

    def __init__(self, hosts: list[str], directory: Path, patterns: list[str]) -> None:
        self.hosts = hosts
        self.dir = directory
        self.patterns = patterns
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> FileSampler:
        state = lab_state.load()
        # One find per sample; only files changed since the patterns were written (all a
        # run could have leaked into) are grepped, so a sample takes a few milliseconds.
        loop = (
            f"i=0; while [ $i -lt {SAMPLES_MAX} ] && [ ! -e {STOP} ]; do echo @@sample; "
            f"find {WATCHED} -xdev \\( -type d -printf 'd %m %u %p\\n' \\) -o \\( -type f "
            "-printf 'f %m %u %p\\n' -size +0 "
            f"-newer {PATTERNS} -exec grep -qF -f {PATTERNS} {{}} \\; "
            "-printf '@@secret %m %u %p\\n' \\) 2>/dev/null; sleep 0.01; i=$((i+1)); done")
        for name in self.hosts:
            # Patterns on stdin into a root-only file: they never show in any argv.
            harness.ssh(name, f"rm -f {STOP}; umask 077; cat > {PATTERNS}",
                        stdin="\n".join(self.patterns) + "\n")
            out = (self.dir / f"files-{name}.txt").open("wb")
            self.procs[name] = subprocess.Popen(
                ["ssh", "-i", state["key"], "-p", str(state["hosts"][name]["port"]),
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "root@127.0.0.1",
                 f"timeout 900 sh -c {shlex.quote(loop)}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL)
            out.close()
        time.sleep(1)  # the first samples are in before the run starts
        # The positive control: what pyinfra 3.10 itself leaves for the length of a `cp`,
        # a file with a secret under umask 022 in /tmp, here for a second.
        for name in self.hosts:
            harness.ssh(name, f"umask 022; cat > {CANARY}; sleep 1; rm -f {CANARY}",
                        stdin=self.patterns[0] + "\n")
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # the last commands of the run are sampled too
        for name, proc in self.procs.items():
            harness.ssh(name, f"touch {STOP}", check=False)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=10)
            harness.ssh(name, f"rm -f {STOP} {PATTERNS}", check=False)

    def samples(self, name: str) -> Samples:
        found = Samples()
        for line in (self.dir / f"files-{name}.txt").read_text(errors="replace").splitlines():
            if line == "@@sample":
                found.count += 1
            elif line.startswith("@@secret "):
                mode, owner, path = line.split(" ", 3)[1:]
                found.secrets.add((mode, owner, path))
            elif line[:2] in ("f ", "d "):
                kind, mode, owner, path = line.split(" ", 3)
                found.entries.add((kind, mode, owner, path))
        return found


def pem_body_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines()
            if line and not line.startswith("-----")]


def modes(name: str) -> dict[str, str]:
    """`stat -c '%a %U %G'` of the host's target files, by path."""
    out = harness.ssh(name, "stat -c '%a %U %G %n' " + " ".join(TARGETS[name])).stdout
    return {line.split(" ", 3)[3]: " ".join(line.split(" ", 3)[:3])
            for line in out.splitlines()}


class Site:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.passwords = {name: f"{name}-{secrets.token_urlsafe(18)}" for name in ("alice", "bob")}
        users = [{"name": name, "password_file": harness.write_secret(
            directory, f"{name}.password", password)}
            for name, password in self.passwords.items()]
        data = {"registry_domain": DOMAIN, "registry_port": PORT,
                "registry_tls_mode": "self-signed", "registry_users": users,
                "registry_client_login_user": "alice"}
        self.root_inventory = harness.write_inventory(
            directory / "root.py", servers=[SERVER], clients=[CLIENT], data=data)
        self.sudo_inventory = harness.write_inventory(
            directory / "sudo.py", servers=[SERVER], clients=[CLIENT], data=data,
            per_host={name: {"ssh_user": USER} for name in (SERVER, CLIENT)})

    def secret_strings(self) -> list[str]:
        found = list(self.passwords.values())
        found += [base64.b64encode(f"{n}:{p}".encode()).decode()
                  for n, p in self.passwords.items()]
        found += pem_body_lines(STATE_DIR / "servers" / DOMAIN / "server.key")
        found.append((STATE_DIR / "secrets" / f"http-secret-{DOMAIN}").read_text().strip())
        return found


def clear_targets() -> None:
    """Remove the files the kit writes (scripts aside), so the next run uploads them all."""
    harness.ssh(SERVER, "rm -f " + " ".join(SERVER_FILES[:-2]))
    harness.ssh(CLIENT, "rm -f " + " ".join(CLIENT_FILES[:3]) +
                f"; docker logout {DOMAIN}:{PORT} >/dev/null 2>&1; true")


def commands_run(run: harness.Run) -> dict[str, int]:
    """Remote shell commands per host, from pyinfra's --debug log."""
    return {name: run.stderr.count(f"Running command on {name}:") for name in (SERVER, CLIENT)}


def timed(inventory: Path, *extra: str) -> tuple[harness.Run, float]:
    started = time.monotonic()
    run = harness.run_kit(inventory, "deploy.py", "--debug", *extra)
    return run, time.monotonic() - started


@pytest.fixture(scope="module")
def runs(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="rk-sudo-") as tmp:
        site = Site(Path(tmp))
        for name in (SERVER, CLIENT):
            lab_api.add_sudo_user(name, USER)
        clear_targets()  # the root run writes every file itself
        root_run, root_seconds = timed(site.root_inventory)
        root_run.assert_ok()
        root_modes = {name: modes(name) for name in (SERVER, CLIENT)}
        root_noop, _ = timed(site.root_inventory)
        clear_targets()
        with FileSampler([SERVER, CLIENT], Path(tmp), site.secret_strings()) as sampler:
            sudo_run, sudo_seconds = timed(site.sudo_inventory, "--sudo")
        sudo_modes = {name: modes(name) for name in (SERVER, CLIENT)}
        second, second_seconds = timed(site.sudo_inventory, "--sudo")
        leftovers = {name: harness.ssh(name, "ls -d /tmp/registry-kit-upload-* /tmp/pyinfra-* "
                                       "2>/dev/null; true").stdout.split()
                     for name in (SERVER, CLIENT)}
        samples = {name: sampler.samples(name) for name in (SERVER, CLIENT)}
        print(f"\nroot run {root_seconds:.1f} s ({commands_run(root_run)} commands), root "
              f"no-op {commands_run(root_noop)}; --sudo run {sudo_seconds:.1f} s "
              f"({commands_run(sudo_run)} commands, "
              f"{sudo_run.stderr.count('Attempting upload')} SFTP uploads), second --sudo run "
              f"{second_seconds:.1f} s ({commands_run(second)} commands)")
        for name, found in samples.items():
            folders = {e[3] for e in found.entries if UPLOAD_DIR.match(e[3])}
            print(f"{name}: {found.count} samples, {len(folders)} upload folders seen, "
                  f"secrets seen in {sorted(found.secrets)}")
        yield {"site": site, "root": root_run, "root_noop": root_noop, "sudo": sudo_run,
               "second": second, "root_modes": root_modes, "sudo_modes": sudo_modes,
               "leftovers": leftovers, "samples": samples}


def test_sudo_run_uploads_every_secret(runs: dict[str, Any]) -> None:
    run = runs["sudo"].assert_ok()
    changed = dict(run.changed)
    for op in ("Upload the server private key", "Upload the registry config.yml",
               "Upload htpasswd (bcrypt)", "Check /v2/: 401 without, 200 with credentials",
               f"docker login to {DOMAIN}:{PORT}"):
        assert op in changed, f"{op} did not run:\n{run.describe()}"
    site = runs["site"]
    status = harness.curl_status(DOMAIN, harness.host_ip(SERVER), PORT, user="alice",
                                 password=site.passwords["alice"])
    assert status == 200
    auths = harness.ssh(CLIENT, "cat /root/.docker/config.json").stdout
    assert f"{DOMAIN}:{PORT}" in auths


def test_no_file_others_can_read_ever_held_a_secret(runs: dict[str, Any]) -> None:
    for name, samples in runs["samples"].items():
        assert samples.count >= 20, f"{name}: only {samples.count} samples"
        readable = sorted(s for s in samples.secrets if int(s[0], 8) & 0o044)
        # The sampler does catch a readable file holding a secret: the canary's.
        assert ("644", "root", CANARY) in readable, f"{name}: canary not caught: {readable}"
        readable.remove(("644", "root", CANARY))
        assert readable == [], f"{name}: a secret in a file others can read: {readable}"
        # Folders: a secret file sits only in folders others cannot enter or list.
        for _mode, _owner, path in samples.secrets - {("644", "root", CANARY)}:
            parent = path.rsplit("/", 1)[0]
            parents = [e for e in samples.entries if e[0] == "d" and e[3] == parent]
            assert parents and all(int(e[1], 8) & 0o077 == 0 for e in parents), \
                (name, path, parents)


def test_sampler_saw_the_uploads_in_private_folders(runs: dict[str, Any]) -> None:
    # Else the test above could pass on a sampler that never sees an upload.
    in_transit = set()
    for name, samples in runs["samples"].items():
        folders = {(e[1], e[2]) for e in samples.entries
                   if e[0] == "d" and UPLOAD_DIR.match(e[3])}
        assert folders == {("700", USER)}, f"{name}: upload folders seen: {folders}"
        in_transit |= {s for s in samples.secrets if UPLOAD_DIR.match(s[2].rsplit("/", 1)[0])}
    # A secret lives in its folder for about one SSH round trip: caught on some host (3 of
    # the 4 secret uploads of the server and the client's 1 in the runs measured).
    assert in_transit, "no secret seen in transit"
    assert {(mode, owner) for mode, owner, _ in in_transit} == {("600", USER)}, in_transit


def test_no_upload_leftovers(runs: dict[str, Any]) -> None:
    assert runs["leftovers"] == {SERVER: [], CLIENT: []}


def test_modes_and_owners_as_in_a_root_run(runs: dict[str, Any]) -> None:
    root, sudo = runs["root_modes"], runs["sudo_modes"]
    assert set(root[SERVER]) == set(SERVER_FILES + SERVER_DIRS)
    assert set(root[CLIENT]) == set(CLIENT_FILES)
    assert sudo == root
    assert root[SERVER]["/etc/registry-kit/certs/server.key"] == "600 root root"
    assert root[SERVER]["/etc/registry-kit/auth/htpasswd"] == "600 root root"


def test_second_sudo_run_changes_nothing(runs: dict[str, Any]) -> None:
    runs["second"].assert_no_changes()


def test_a_no_op_is_one_remote_command_per_host_with_and_without_sudo(
        runs: dict[str, Any]) -> None:
    runs["root_noop"].assert_no_changes()
    assert commands_run(runs["root_noop"]) == {SERVER: 1, CLIENT: 1}
    assert commands_run(runs["second"]) == {SERVER: 1, CLIENT: 1}


def test_gc_runs_as_root_under_sudo(runs: dict[str, Any]) -> None:
    # garbage_collect.py's command once ran through host.run_shell_command without the operation's
    # arguments, so --sudo was lost and the script failed as the login user.
    harness.ssh(CLIENT, f"docker pull -q busybox >/dev/null && docker tag busybox "
                f"{DOMAIN}:{PORT}/sudo/busybox:1 && docker push -q {DOMAIN}:{PORT}/sudo/busybox:1")
    run = harness.run_kit(runs["site"].sudo_inventory, "garbage_collect.py", "--sudo").assert_ok()
    assert re.search(r"\[lab-reg\]\s+registry-kit: garbage collection freed \d+ bytes",
                     run.stderr), run.describe()
