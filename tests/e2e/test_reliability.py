"""Faults on real lab hosts: the registry server rebooted, docker.service restarted, a
deploy killed part-way (after the first uploads, and in the middle of the container swap),
an SSH connection dropped mid-run, and the data directory full.

One server (lab-reg) and two clients. Each scenario ends with the kit converged and a rerun
that changes nothing; the registry is checked from the control machine (curl, skopeo) and
on the host with the docker CLI, never with the kit's own code. Hosts are reused (nothing
here needs a fresh machine) and may hold state from other suites.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import oci_images
import pytest
import yaml
from harness import PROVE_OPERATION
from registry_site import ADDRESS, SERVER, Site

import lab as lab_api
from lab import state as lab_state

pytestmark = pytest.mark.e2e

CLIENTS = ["lab-client1", "lab-client2"]
DROPPED = "lab-client2"
REFERENCE = "reliability/reference:1"
SMALL_DATA_DIR = "/var/lib/registry-kit/small-data"
DEFAULT_DATA_DIR = "/var/lib/registry-kit/data"
# Staging files of the kit's uploads: none may be left once a run has converged.
STAGING_GLOB = "*.registry-kit-new"
KIT_PATHS = "/etc/registry-kit /usr/local/lib/registry-kit /etc/docker /etc/registry-kit-client"


@dataclass
class Streamed:
    returncode: int
    results: dict[str, Any] | None
    log: str
    triggered_after: float | None  # seconds into the run when the trigger line appeared
    elapsed: float


def run_with_trigger(inventory: Path, trigger: str,
                     action: Callable[[subprocess.Popen[str]], object], *,
                     timeout: float = 300) -> Streamed:
    """Run the kit (--json), reading its log as it comes; call `action(process)` once when
    a log line contains `trigger`. A watchdog kills the run after `timeout` seconds."""
    proc = subprocess.Popen([harness.PYINFRA, "-y", "--json", str(inventory), "deploy.py"],
                            cwd=harness.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read()))  # type: ignore
    reader.start()
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    started = time.monotonic()
    log: list[str] = []
    triggered = None
    assert proc.stderr is not None
    for line in proc.stderr:
        log.append(line)
        if triggered is None and trigger in line:
            triggered = time.monotonic() - started
            action(proc)
    proc.wait()
    watchdog.cancel()
    reader.join(timeout=30)
    results = None
    text = "".join(stdout)
    if text.strip():
        try:
            results = json.loads(text).get("results")
        except json.JSONDecodeError:
            results = None
    return Streamed(proc.returncode, results, "".join(log), triggered,
                    time.monotonic() - started)


def container_facts(name: str = SERVER) -> dict[str, str]:
    """The registry containers on the server, read with the docker CLI."""
    out = harness.ssh(name, "docker ps -a --filter label=registry-kit.managed=true --format "
                      "'{{.Names}}' | xargs -r docker inspect -f '{{.Name}} {{.Id}} "
                      "{{.State.Running}} {{.HostConfig.RestartPolicy.Name}} {{.RestartCount}}'"
                      ).stdout
    return {line.split()[0].lstrip("/"): line for line in out.splitlines()}


def staging_leftovers() -> dict[str, str]:
    found = {}
    for name in [SERVER, *CLIENTS]:
        out = harness.ssh(name, f"find {KIT_PATHS} -name '{STAGING_GLOB}' 2>/dev/null; true")
        if out.stdout.strip():
            found[name] = out.stdout
    return found


@pytest.fixture(scope="module")
def site(lab: dict[str, Any]) -> Iterator[Site]:
    """A converged deploy with one image pushed (its digest in site.reference)."""
    with tempfile.TemporaryDirectory(prefix="rk-reliability-") as tmp:
        site = Site(Path(tmp), CLIENTS, registry_log_level="info",
                    registry_data_dir=DEFAULT_DATA_DIR)
        site.deploy().assert_ok()
        site.deploy().assert_no_changes()
        layout = Path(tmp) / "reference"
        digest = oci_images.random_image(layout, 64 * 1024)
        proc, pushed = site.push(layout, REFERENCE)
        assert proc.returncode == 0 and pushed == digest, proc.stderr
        site.reference = digest  # type: ignore[attr-defined]
        yield site


def assert_registry_intact(site: Site, tmp: Path) -> None:
    assert site.status() == 401
    assert site.status("alice") == 200
    assert site.pull(REFERENCE, tmp / f"pulled-{time.monotonic_ns()}") == \
        site.reference  # type: ignore[attr-defined]


def test_registry_host_reboot(site: Site, tmp_path: Path) -> None:
    before = container_facts()["registry"].split()[1]
    started = time.monotonic()
    lab_api.restart_host(SERVER)
    back = site.wait_serving()
    print(f"\nreboot: host up again and registry serving after "
          f"{time.monotonic() - started:.1f}s ({back:.1f}s after sshd answered)")
    facts = container_facts()
    assert list(facts) == ["registry"]
    _, container_id, running, policy, _ = facts["registry"].split()
    assert (container_id, running, policy) == (before, "true", "always")
    assert_registry_intact(site, tmp_path)
    site.deploy().assert_no_changes()


def test_docker_service_restart(site: Site, tmp_path: Path) -> None:
    before = container_facts()["registry"].split()[1]
    started = time.monotonic()
    harness.ssh(SERVER, "systemctl restart docker.service")
    back = site.wait_serving()
    print(f"\ndocker.service restart: registry serving again after "
          f"{time.monotonic() - started:.1f}s ({back:.1f}s after systemctl returned)")
    facts = container_facts()
    assert list(facts) == ["registry"]
    assert facts["registry"].split()[1:4] == [before, "true", "always"]
    assert_registry_intact(site, tmp_path)
    site.deploy().assert_no_changes()


# (trigger: the operation whose start kills the run, seconds to wait before the kill)
KILL_POINTS = {
    # Scripts, the certificate and its key are uploaded; the rest is not.
    "after-first-uploads": ("operation: Upload the CA certificate", 0.0),
    # The old container is stopped or renamed, the new one starting: the swap script
    # goes on alone on the host while the operator reruns at once.
    "mid-container-swap": ("operation: Start or replace the registry container", 0.4),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_deploy_killed_part_way(site: Site, point: str, tmp_path: Path) -> None:
    trigger, delay = KILL_POINTS[point]
    # Work for every part of the run: a new log level (config.yml, container swap),
    # scripts and certificates gone on the server, trust and login gone on the clients.
    level = "warn" if site.data["registry_log_level"] == "info" else "info"
    site.write(registry_log_level=level)
    harness.ssh(SERVER, "rm -f /usr/local/lib/registry-kit/*.sh /etc/registry-kit/certs/*")
    for client in CLIENTS:
        harness.ssh(client, f"rm -f /etc/docker/certs.d/{ADDRESS}/ca.crt "
                    "/etc/registry-kit-client/login-*")

    def kill(proc: subprocess.Popen[str]) -> None:
        time.sleep(delay)
        proc.kill()  # the run's own pyinfra process; SIGKILL: no cleanup at all

    killed = run_with_trigger(site.inventory, trigger, kill)
    assert killed.triggered_after is not None, killed.log[-3000:]
    assert killed.returncode == -9, killed.log[-3000:]
    # Killed during the operation that triggered it, before the run's end.
    started_ops = [line for line in killed.log.splitlines() if "operation: " in line]
    assert trigger in started_ops[-1], started_ops[-3:]
    assert "Success" in killed.log and "--> Results" not in killed.log
    # The next run, started at once, converges without errors; a rerun changes nothing.
    started = time.monotonic()
    harness.run_kit(site.inventory).assert_ok()
    converge = time.monotonic() - started
    harness.run_kit(site.inventory).assert_no_changes()
    print(f"\nkilled {point} after {killed.triggered_after:.1f}s; next run converged in "
          f"{converge:.1f}s")
    facts = container_facts()
    assert list(facts) == ["registry"], facts  # no registry-previous left behind
    assert facts["registry"].split()[2:4] == ["true", "always"]
    assert f"level: {level}" in harness.ssh(SERVER, "cat /etc/registry-kit/config.yml").stdout
    assert staging_leftovers() == {}
    assert_registry_intact(site, tmp_path)


def test_overlapping_container_swaps_leave_one_serving_registry(site: Site) -> None:
    """What a swap left running by a killed deploy meets when the operator reruns at once,
    made certain: two deploys that both replace the container, started together. They may
    report errors (they share the health check's credentials file), but the host must be
    left with exactly one registry container, running and serving."""
    level = "warn" if site.data["registry_log_level"] == "info" else "info"
    # A run whose health check loses that file waits out the timeout: keep it short.
    site.write(registry_log_level=level, registry_verify_timeout=20)
    runs = [subprocess.Popen([harness.PYINFRA, "-y", "--json", str(site.inventory),
                              "deploy.py"], cwd=harness.ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [proc.communicate(timeout=300)[1] for proc in runs]
    facts = container_facts()
    assert list(facts) == ["registry"], (facts, [log[-2000:] for log in logs])
    assert facts["registry"].split()[2:4] == ["true", "always"], facts
    assert site.status() == 401
    harness.run_kit(site.inventory).assert_ok()
    harness.run_kit(site.inventory).assert_no_changes()


def _in_host(name: str, command: str) -> subprocess.CompletedProcess[str]:
    """A command inside a lab host through the outer engine (works while its sshd is down)."""
    container = lab_state.load()["hosts"][name]["container"]
    return subprocess.run(["docker", "exec", container, "sh", "-c", command],
                          capture_output=True, text=True, timeout=60)


def test_deploy_killed_during_docker_install(site: Site) -> None:
    """The longest step: killed while apt-get installs Docker on a fresh client. The
    orphaned apt-get goes on holding dpkg's lock; the rerun must wait for it, not fail."""
    fresh = DROPPED
    lab_api.reset_host(fresh)

    def kill_once_apt_installs(proc: subprocess.Popen[str]) -> None:
        for _ in range(240):  # up to ~60 s for `apt-get install` to start on the host
            if "apt-get" in _in_host(fresh, "ps -eo args | grep '^apt-get .*install' "
                                     "|| true").stdout:
                break
            time.sleep(0.25)
        proc.kill()

    killed = run_with_trigger(site.inventory, "operation: Install the Docker engine",
                              kill_once_apt_installs)
    assert killed.returncode == -9, killed.log[-3000:]
    orphan = _in_host(fresh, "ps -eo args | grep -c '^apt-get .*install' || true").stdout
    started = time.monotonic()
    rerun = harness.run_kit(site.inventory)
    print(f"\nkilled during the Docker install after {killed.elapsed:.1f}s (apt-get still "
          f"running on the host: {orphan.strip() != '0'}); the next run took "
          f"{time.monotonic() - started:.1f}s")
    rerun.assert_ok()
    harness.run_kit(site.inventory).assert_no_changes()
    assert harness.ssh(fresh, "systemctl is-active docker.service").stdout.strip() == "active"
    assert ADDRESS in harness.ssh(fresh, "cat /root/.docker/config.json").stdout
    assert staging_leftovers() == {}


# sshd's listener is stopped (no reconnect) and every sshd session process killed by PID:
# the run's SSH connection to the host drops with a reset, as when a host goes away.
DROP_SSH = ("systemctl stop ssh.service; systemctl stop ssh.socket 2>/dev/null; "
            "for pid in $(ps -eo pid=,comm= | awk '$2 ~ /^sshd/ {print $1}'); do "
            "kill -9 \"$pid\"; done; true")


def test_ssh_connection_drops_mid_run(site: Site) -> None:
    level = "warn" if site.data["registry_log_level"] == "info" else "info"
    site.write(registry_log_level=level)
    for client in CLIENTS:  # each client has a login to do after the servers' steps
        harness.ssh(client, "rm -f /etc/registry-kit-client/login-*")
    socket_was_active = _in_host(DROPPED, "systemctl is-active ssh.socket").stdout.strip() \
        == "active"
    try:
        run = run_with_trigger(site.inventory,
                               "operation: Start or replace the registry container",
                               lambda _proc: _in_host(DROPPED, DROP_SSH), timeout=180)
    finally:
        _in_host(DROPPED, "systemctl start ssh.socket" if socket_was_active
                 else "systemctl start ssh.service")
    print(f"\nSSH to {DROPPED} dropped after {run.triggered_after:.1f}s; run ended after "
          f"{run.elapsed:.1f}s with rc={run.returncode}")
    assert run.triggered_after is not None and run.results is not None, run.log[-3000:]
    assert run.returncode != 0
    operations = run.results["operations"]
    failed = {host for op in operations for host in op["error"]}
    assert failed == {DROPPED}, operations
    assert f"[{DROPPED}]" in run.log and "SSH" in run.log
    succeeded = {host for op in operations for host in op["success"]}
    assert {SERVER, "lab-client1"} <= succeeded
    login = next(op for op in operations if op["name"].startswith("docker login"))
    assert "lab-client1" in login["success"]
    assert run.elapsed < 120

    for _ in range(60):  # sshd back (bounded)
        if harness.ssh(DROPPED, "true", check=False).returncode == 0:
            break
        time.sleep(1)
    rerun = harness.run_kit(site.inventory).assert_ok()
    assert {host for _, hosts in rerun.changed for host in hosts} == {DROPPED}, rerun.changed
    harness.run_kit(site.inventory).assert_no_changes()
    assert staging_leftovers() == {}


def test_a_change_the_registry_refuses_never_takes_it_down(site: Site, tmp_path: Path) -> None:
    """Each change of harness.REFUSALS, deployed while a client pulls back to back: refused
    by the proof with the registry's own words, 0 failed pulls, config.yml and container
    unchanged; the deployed settings again change nothing. Then a change the registry
    accepts is proven and swapped in, and a rerun changes nothing."""
    config = yaml.safe_load(harness.ssh(SERVER, "cat /etc/registry-kit/config.yml").stdout)
    secrets = [config["http"]["secret"], site.passwords["alice"]]
    deployed = dict(site.data)

    def pull() -> bool:
        layout = tmp_path / f"pulled-{time.monotonic_ns()}"
        return site.pull(REFERENCE, layout) == site.reference  # type: ignore[attr-defined]

    for bad, registry_error in harness.REFUSALS.values():
        site.write(**bad)
        try:
            harness.assert_refused_and_kept(SERVER, site.deploy, pull, registry_error, secrets)
        finally:  # the later tests of this module share the site
            site.data = dict(deployed)
            site.write()
        site.deploy().assert_no_changes()
    site.write(**harness.UNRESOLVABLE_REMOTE)
    try:
        harness.assert_refused_before_any_change(
            SERVER, site.deploy, "registry 2.8 as a pull-through cache does not start")
    finally:
        site.data = dict(deployed)
        site.write()
    site.deploy().assert_no_changes()
    level = "warn" if site.data["registry_log_level"] == "info" else "info"
    site.write(registry_log_level=level)
    started = time.monotonic()
    run = site.deploy().assert_ok()
    print(f"\naccepted change (proven, then swapped in): {time.monotonic() - started:.1f}s")
    assert {PROVE_OPERATION, "Start or replace the registry container"} <= \
        {name for name, _ in run.changed}
    site.deploy().assert_no_changes()
    assert_registry_intact(site, tmp_path)
    assert harness.ssh(SERVER, harness.CANDIDATE_LEFTOVERS).stdout.split() == ["0", "0"]


def test_data_dir_full(site: Site, tmp_path: Path) -> None:
    """A 20 MB tmpfs as the data dir: a push that does not fit fails with the registry's
    error, pulls keep working, and pushes work again once space is freed."""
    mount = (f"mkdir -p {SMALL_DATA_DIR} && (mountpoint -q {SMALL_DATA_DIR} || mount -t tmpfs "
             f"-o size=20m,mode=0700 registry-kit-small {SMALL_DATA_DIR})")
    harness.ssh(SERVER, mount)
    try:
        # The registry's own behaviour on a full disk: without the disk guard, which would
        # turn it read-only at 90% first (that is test_disk_guard.py's subject).
        site.write(registry_data_dir=SMALL_DATA_DIR, registry_disk_readonly_percent=None)
        site.deploy().assert_ok()
        site.deploy().assert_no_changes()
        # 13 MB of filler leaves about 7 MB: room for 1 MB, not for 8 MB.
        harness.ssh(SERVER, f"head -c 13M /dev/urandom > {SMALL_DATA_DIR}/filler")
        small, big = tmp_path / "small", tmp_path / "big"
        small_digest = oci_images.random_image(small, 1 << 20)
        big_digest = oci_images.random_image(big, 8 << 20)
        proc, pushed = site.push(small, "full/small:1")
        assert proc.returncode == 0 and pushed == small_digest, proc.stderr

        proc, _ = site.push(big, "full/big:1")
        assert proc.returncode != 0
        # The registry answers 500 and closes; a client still sending the blob may see the
        # connection reset before it reads the answer. Either way the registry says why.
        assert "500 Internal Server Error" in proc.stderr or \
            "connection reset by peer" in proc.stderr, proc.stderr
        logs = harness.ssh(SERVER, "docker logs --since 2m registry 2>&1 | tail -50").stdout
        assert "no space left on device" in logs
        # Still serving: anonymous 401, and the image that fit pulls with its digest.
        assert site.status() == 401
        assert site.pull("full/small:1", tmp_path / "small-pulled") == small_digest

        harness.ssh(SERVER, f"rm -f {SMALL_DATA_DIR}/filler")
        proc, pushed = site.push(big, "full/big:1")
        assert proc.returncode == 0 and pushed == big_digest, proc.stderr
        assert site.pull("full/big:1", tmp_path / "big-pulled") == big_digest
        site.deploy().assert_no_changes()
    finally:
        # Back to the usual data dir (the container is recreated), then the tmpfs goes.
        site.data.pop("registry_disk_readonly_percent", None)
        site.write(registry_data_dir=DEFAULT_DATA_DIR)
        restored = site.deploy()
        harness.ssh(SERVER, f"mountpoint -q {SMALL_DATA_DIR} && umount {SMALL_DATA_DIR}; "
                    f"rmdir {SMALL_DATA_DIR}; true", check=False)
    restored.assert_ok()
    assert_registry_intact(site, tmp_path)
