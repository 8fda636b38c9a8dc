"""Lifecycle on real lab hosts: upgrade (and a failed one rolled back), password, SAN and CA
rotation, garbage collection, status, teardown (keep data, redeploy, purge, remove Docker).

Two registry servers (lab-reg, bookworm; lab-client2, trixie) so that "one server at a
time" is visible, one client (lab-client1) with a daemon.json key of its own. The module
keeps its own control-machine state (CA, certificates, http secret) in a temporary folder,
so rotating the CA here never touches the shared .registry-kit. Scenarios run in order and
share the hosts; each one checks before and after with curl, skopeo, openssl and the
docker CLI / systemctl over SSH, never with the kit's code. The module ends with every kit
trace removed (teardown with purge); Docker stays on the default hosts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clientload
import harness
import pytest
from harness import Run

import lab as lab_api
from lab.topology import HostSpec

DOMAIN = "registry.lab"
PORT = 5000
ADDRESS = f"{DOMAIN}:{PORT}"
SERVERS = ["lab-reg", "lab-client2"]
CLIENT = "lab-client1"
USER = "ci"
DATA_DIR = "/var/lib/registry-kit/data"
TRUST_FILE = f"/etc/docker/certs.d/{ADDRESS}/ca.crt"
FOREIGN_DAEMON_JSON = {"max-concurrent-downloads": 4}
BUSYBOX = f"{ADDRESS}/lc/busybox:1"
BIG = f"{ADDRESS}/lc/reg:1"
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.manifest.v1+json")
TIMES: dict[str, float] = {}
# What the client saw during each operation (clientload): printed at the module's end.
LOAD: dict[str, dict[str, Any]] = {}
# A restart on one server is unavoidable (issue 25's goal: under 2 s, not met here). Measured
# on this 2-core machine shared by six labs (load average 35 to 55), two runs, 2026-12-07:
# /v2/ silent for 4.0 and 2.0 s (upgrade), 3.6 and 7.5 s (certificate change), 3.0 and 2.8 s
# (CA rotation), 8.3 and 1.6 s (GC: two restarts, read-only and back), with up to 2, 3, 3
# and 2 failed pulls (the token server restarts too: refused on its port). The bounds are
# those figures with room for a busy machine; README, "What clients see during each
# operation".
SILENT_AT_MOST = {"image upgrade 2 -> 2.8.2": 8.0, "TLS certificate change (a name added)": 10.0,
                  "CA rotation": 8.0, "garbage collection": 12.0}

pytestmark = pytest.mark.e2e


class Site(harness.OwnStateSite):
    """Two servers and a client with the module's own control-machine state."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, servers=SERVERS, clients=[CLIENT], user=USER,
                         password="first-password-1", times=TIMES, data={
                             "registry_domain": DOMAIN,
                             "registry_port": PORT,
                             "registry_image": "registry:2",
                             "registry_delete_enabled": True,
                             "registry_client_login_user": USER,
                             "registry_client_hosts_entries": {
                                 DOMAIN: harness.host_ip("lab-reg")},
                             "registry_verify_timeout": 30,
                         })

    def curl(self, server: str, *, user: str | None = None, password: str | None = None,
             ca: Path | None = None, name: str = DOMAIN, path: str = "/v2/",
             method: str = "GET", headers: tuple[str, ...] = ()) -> tuple[int, str]:
        """(status, response headers and body) from the control machine, by name, to one
        server. Text mode: lines end in "\\n", so a blank line ends the headers."""
        args = ["-s", "-i", "-w", "\n%{http_code}", "--max-time", "10",
                "--resolve", f"{name}:{PORT}:{harness.host_ip(server)}",
                "--cacert", str(ca or self.ca), "-X", method]
        for header in headers:
            args += ["-H", header]
        args.append(f"https://{name}:{PORT}{path}")
        if user is None:
            out = subprocess.run(["curl", *args], capture_output=True, text=True,
                                 timeout=30).stdout
        else:  # basic credentials, or a token for them under token auth
            out = harness.curl_docker(args, user=user, password=str(password),
                                      ip=harness.host_ip(server), ca=ca or self.ca).stdout
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def status(self, server: str, password: str | None = None, **kwargs: Any) -> int:
        if password is None:
            return self.curl(server, **kwargs)[0]
        return self.curl(server, user=USER, password=password, **kwargs)[0]

    def skopeo(self, args: list[str], server: str = "lab-reg") -> subprocess.CompletedProcess:
        return harness.skopeo(args, hosts={DOMAIN: harness.host_ip(server)},
                              auth={ADDRESS: (USER, self.password)})

    def digest(self, reference: str, server: str = "lab-reg") -> str:
        proc = self.skopeo(["inspect", "--cert-dir", str(self.certs), f"docker://{reference}"],
                           server)
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["Digest"])

    def push(self, source: str, reference: str, server: str) -> None:
        proc = self.skopeo(["copy", "--src-tls-verify=false", "--dest-cert-dir",
                            str(self.certs), harness.upstream_source(source),
                            f"docker://{reference}"], server)
        assert proc.returncode == 0, proc.stderr


def container(server: str) -> dict[str, str]:
    fmt = "{{.Id}}|{{.Config.Image}}|{{.State.Status}}|{{.State.StartedAt}}"
    out = harness.ssh(server, f"docker inspect -f '{fmt}' registry", check=False).stdout.strip()
    if not out:
        return {}
    cid, image, state, started = out.split("|")
    return {"id": cid, "image": image, "state": state, "started": started}


def client_pull(reference: str) -> None:
    """The client's docker CLI pulls with its own login and trust (rmi first)."""
    harness.ssh(CLIENT, f"docker rmi -f {reference} >/dev/null 2>&1; docker pull -q {reference}"
                " >/dev/null")


def docker_started(host: str) -> str:
    return harness.ssh(host, "systemctl show docker -p ActiveEnterTimestamp").stdout.strip()


def engine_mirrors(host: str) -> list[str]:
    """The mirrors the running engine uses (Docker 26 prints null for none, 20.10 [])."""
    return json.loads(harness.ssh(
        host, "docker info --format '{{json .RegistryConfig.Mirrors}}'").stdout) or []


def stderr_position(run: Run, text: str) -> int:
    position = run.stderr.find(text)
    assert position >= 0, f"{text!r} not in the run's output:\n{run.describe()}"
    return position


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Site:
    # Fresh machines: whatever earlier modules left (containers, ports, kit files) is gone.
    for name in (*SERVERS, CLIENT):
        lab_api.reset_host(name)
    # The client's own daemon.json key, there before Docker and the kit arrive.
    harness.ssh(CLIENT, "mkdir -p /etc/docker && cat > /etc/docker/daemon.json",
                stdin=json.dumps(FOREIGN_DAEMON_JSON))
    site = Site(tmp_path_factory.mktemp("lifecycle"))
    site.run(timing="first deploy (3 fresh hosts)").assert_ok()
    site.run(timing="no-op deploy").assert_no_changes()
    site.refresh_certs()
    for server in SERVERS:
        site.push("library/busybox:latest", BUSYBOX, server)
    site.push("library/registry:2", BIG, "lab-reg")
    yield site
    print("\nlifecycle timings (s):", json.dumps(TIMES, indent=1))
    print("\nwhat the client saw (lab-reg):", json.dumps(LOAD, indent=1))


@contextmanager
def under_load(site: Site, name: str, kinds: tuple[str, ...] = clientload.KINDS) \
        -> Iterator[None]:
    """The client's push, pull and login loops and /v2/ probe (to lab-reg, which its
    hosts entry names) around one operation; its figures go to LOAD[name]."""
    load = clientload.ClientLoad(CLIENT, ADDRESS, USER, site.password, BUSYBOX, kinds=kinds)
    with load, load.window(name):
        yield
    LOAD[name] = load.figures()[name]


def assert_restart_seen(name: str) -> None:
    """A restart on one server: /v2/ silent within the measured bound, and the failed pulls
    all inside one stretch no longer than that (a failing pull returns at once and the loop
    tries again, so their count follows the silence and the machine's load: 7 in one CI run,
    1 to 3 on a quiet machine; a second outage would stretch the window)."""
    figures = LOAD[name]
    assert figures["probe"]["requests"] >= 5, figures
    assert figures["probe"]["longest_gap_seconds"] < SILENT_AT_MOST[name], (name, figures)
    assert figures["pull"]["failure_window_seconds"] < SILENT_AT_MOST[name], (name, figures)


@pytest.fixture(scope="module")
def pushed(site: Site) -> dict[str, str]:
    return {server: site.digest(BUSYBOX, server) for server in SERVERS}


def test_upgrade_to_2_8_2_keeps_data_one_server_at_a_time(site: Site,
                                                          pushed: dict[str, str]) -> None:
    before = {server: container(server) for server in SERVERS}
    assert all(c["image"] == "registry:2" and c["state"] == "running" for c in before.values())
    site.data["registry_image"] = "registry:2.8.2"
    site.write()
    with under_load(site, "image upgrade 2 -> 2.8.2"):
        run = site.run(timing="upgrade 2 -> 2.8.2 (2 servers)")
    run.assert_ok()
    assert_restart_seen("image upgrade 2 -> 2.8.2")
    stderr_position(run, "Starting serial operation: Start or replace the registry container")
    assert run.stderr.count("recreate (") == len(SERVERS), run.describe()
    pull = stderr_position(run, "Starting operation: Pull or load registry:2.8.2")
    assert pull < stderr_position(run, "Start or replace the registry container")
    for server in SERVERS:
        after = container(server)
        assert after["id"] != before[server]["id"]
        assert (after["image"], after["state"]) == ("registry:2.8.2", "running")
        names = harness.ssh(server, "docker ps -a --format '{{.Names}}'").stdout.split()
        assert names == ["registry"]  # no -previous container left behind
        assert site.status(server) == 401
        assert site.status(server, site.password) == 200
        assert site.digest(BUSYBOX, server) == pushed[server]
    client_pull(BUSYBOX)
    site.run().assert_no_changes()


def test_broken_upgrade_fails_and_previous_registry_serves(site: Site,
                                                           pushed: dict[str, str]) -> None:
    before = {server: container(server) for server in SERVERS}
    site.data["registry_image"] = "registry:broken"
    site.data["registry_version"] = 2  # a custom tag: the kit is told the major version
    site.write()
    run = site.run(timing="failed upgrade with rollback")
    assert run.returncode != 0
    errors = dict(run.errors)
    assert sorted(errors["Start or replace the registry container"]) == sorted(SERVERS)
    failed = re.findall(r"\[([\w-]+)\]\s+registry-kit: the new registry container "
                        r"\(registry:broken\) did not become healthy", run.stderr)
    assert len(failed) == 1, run.describe()
    first = failed[0]
    other = next(server for server in SERVERS if server != first)
    for text in ("its last log lines:", "exit code 1",
                 "rolled back: the previous registry container (registry:2.8.2) is serving",
                 f"{other}: registry container not replaced: the replacement failed on {first}"):
        stderr_position(run, text)
    # The same containers as before, serving the same data; the second server untouched.
    for server in SERVERS:
        after = container(server)
        assert (after["id"], after["image"], after["state"]) == \
            (before[server]["id"], "registry:2.8.2", "running")
        assert site.status(server) == 401
        assert site.status(server, site.password) == 200
        assert site.digest(BUSYBOX, server) == pushed[server]
    assert container(other)["started"] == before[other]["started"]
    client_pull(BUSYBOX)
    site.data["registry_image"] = "registry:2.8.2"
    del site.data["registry_version"]
    site.write()
    site.run().assert_no_changes()  # the rollback left exactly the deployed state


def test_password_change_without_restart_and_client_login_renewed(site: Site) -> None:
    started = {server: container(server)["started"] for server in SERVERS}
    old = site.password
    site.password = "second-password-2"
    site.write()
    # No restart: /v2/ answers throughout (the client's own login is the old password's).
    with under_load(site, "password change", kinds=("probe",)):
        run = site.run(timing="password rotation")
    run.assert_ok()
    assert LOAD["password change"]["probe"]["failed"] == 0, LOAD["password change"]
    changed = dict(run.changed)
    assert sorted(changed["Upload htpasswd (bcrypt)"]) == sorted(SERVERS)
    assert changed[f"docker login to {ADDRESS}"] == [CLIENT]
    assert "Start or replace the registry container" not in changed
    for server in SERVERS:
        assert container(server)["started"] == started[server]  # no restart
        assert site.status(server, old) == 401
        assert site.status(server, site.password) == 200
    client_pull(BUSYBOX)  # with the renewed login
    site.run().assert_no_changes()


def test_san_change_restarts_registry_once_and_widens_the_ca(site: Site) -> None:
    ca_before = harness.ssh(CLIENT, f"sha256sum {TRUST_FILE}").stdout.split()[0]
    key_before = (site.state_dir / "ca" / "ca.key").read_bytes()
    before = {server: container(server) for server in SERVERS}
    assert site.status("lab-reg", name="registry-alt.lab") == 0  # not in the certificate
    site.data["registry_tls_extra_names"] = ["registry-alt.lab"]
    site.write()
    with under_load(site, "TLS certificate change (a name added)"):
        run = site.run(timing="SAN change (2 servers)")
    run.assert_ok()
    assert_restart_seen("TLS certificate change (a name added)")
    changed = dict(run.changed)
    assert sorted(changed["Upload the server certificate"]) == sorted(SERVERS)
    assert sorted(changed["Start or replace the registry container"]) == sorted(SERVERS)
    # The CA's name constraints did not cover the new name: its certificate is re-signed
    # (same key) and clients switch through the rotation bridge, before and after the servers.
    assert (site.state_dir / "ca" / "ca.key").read_bytes() == key_before
    bridge = stderr_position(run, "Starting operation: Trust the new registry CA next to the old")
    replace = stderr_position(run, "Start or replace the registry container")
    final = stderr_position(run, "Starting operation: Trust only the new registry CA")
    assert bridge < replace < final
    assert harness.ssh(CLIENT, f"cat {TRUST_FILE}").stdout.strip() == \
        site.ca.read_text().strip()
    for server in SERVERS:
        assert container(server)["id"] != before[server]["id"]
        assert site.status(server, name="registry-alt.lab") == 401
    client_pull(BUSYBOX)
    site.run().assert_no_changes()

    # Dropping the name again stays inside the CA: restart once, clients keep their CA file.
    ca_widened = harness.ssh(CLIENT, f"sha256sum {TRUST_FILE}").stdout.split()[0]
    assert ca_widened != ca_before
    site.data["registry_tls_extra_names"] = []
    site.write()
    changed = dict(site.run(timing="SAN removal (2 servers)").assert_ok().changed)
    assert sorted(changed["Start or replace the registry container"]) == sorted(SERVERS)
    assert not any("registry CA" in name for name in changed)
    assert harness.ssh(CLIENT, f"sha256sum {TRUST_FILE}").stdout.split()[0] == ca_widened
    client_pull(BUSYBOX)
    site.run().assert_no_changes()


def test_ca_rotation_keeps_old_ca_trusted_until_servers_switch(site: Site) -> None:
    old_ca = site.ca.read_bytes()
    old_ca_file = site.dir / "old-ca.crt"
    old_ca_file.write_bytes(old_ca)
    shutil.rmtree(site.state_dir / "ca")  # the deliberate way to start a new CA
    with under_load(site, "CA rotation"):
        run = site.run(timing="CA rotation")
    run.assert_ok()
    assert_restart_seen("CA rotation")
    new_ca = site.ca.read_bytes()
    assert new_ca != old_ca
    # Client trusts old + new first, then the servers switch, then the old CA goes.
    bridge = stderr_position(run, "Starting operation: Trust the new registry CA next to the old")
    replace = stderr_position(run, "Start or replace the registry container")
    final = stderr_position(run, "Starting operation: Trust only the new registry CA")
    assert bridge < replace < final
    changed = dict(run.changed)
    assert changed["Trust the new registry CA next to the old"] == [CLIENT]
    assert changed["Trust only the new registry CA"] == [CLIENT]
    assert harness.ssh(CLIENT, f"cat {TRUST_FILE}").stdout.strip() == new_ca.decode().strip()
    for server in SERVERS:
        assert site.status(server) == 401  # new CA alone verifies the new certificate
        assert site.status(server, ca=old_ca_file) == 0  # old CA alone does not
    site.refresh_certs()
    client_pull(BUSYBOX)
    site.run().assert_no_changes()


def test_gc_after_deleting_a_tag_frees_bytes_and_keeps_other_images(site: Site) -> None:
    code, head = site.curl("lab-reg", user=USER, password=site.password, method="HEAD",
                           path="/v2/lc/reg/manifests/1",
                           headers=tuple(f"Accept: {t}" for t in MANIFEST_TYPES))
    assert code == 200
    digest = re.search(r"(?im)^docker-content-digest:\s*(\S+)", head)[1]  # type: ignore[index]
    code, _ = site.curl("lab-reg", user=USER, password=site.password, method="DELETE",
                        path=f"/v2/lc/reg/manifests/{digest}")
    assert code == 202
    du = f"du -sb {DATA_DIR} | cut -f1"
    config_sha = "sha256sum /etc/registry-kit/config.yml | cut -d' ' -f1"
    used_before = int(harness.ssh("lab-reg", du).stdout)
    sha_before = harness.ssh("lab-reg", config_sha).stdout

    dry = site.run("garbage_collect.py", "--data", "registry_gc_dry_run=True").assert_ok()
    stderr_position(dry, "[lab-reg]     registry-kit: dry run:")
    assert re.search(r"[1-9]\d* blobs and \d+ manifests eligible for deletion", dry.stderr)
    assert int(harness.ssh("lab-reg", du).stdout) == used_before

    since = harness.ssh("lab-reg", "date +%s").stdout.strip()
    # No pushes from the load here: the bytes freed are compared with the folder's size.
    with under_load(site, "garbage collection", kinds=("pull", "login", "probe")):
        run = site.run("garbage_collect.py", timing="gc (2 servers, read-only meanwhile)")
    run.assert_ok()
    assert_restart_seen("garbage collection")
    freed = {name: int(n) for name, n in re.findall(
        r"\[([\w-]+)\]\s+registry-kit: garbage collection freed (\d+) bytes", run.stderr)}
    used_after = int(harness.ssh("lab-reg", du).stdout)
    TIMES["gc freed bytes (lab-reg)"] = freed["lab-reg"]
    assert freed["lab-reg"] == used_before - used_after > 1_000_000  # the registry:2 layers
    assert freed["lab-client2"] == 0
    # Read-only mode on and off: two restarts, and config.yml exactly as deployed.
    # --until one second ahead: events of the current second are complete (it waits 1 s).
    events = harness.ssh("lab-reg", f"docker events --since {since} --until "
                         "$(( $(date +%s) + 1 )) "
                         "--filter container=registry --filter event=restart "
                         "--format '{{.Action}}'").stdout.split()
    assert events == ["restart", "restart"]
    assert harness.ssh("lab-reg", config_sha).stdout == sha_before
    # last-gc: the collection's record for status.py (registry_kit.roles.usage).
    assert harness.ssh("lab-reg", "ls /etc/registry-kit").stdout.split() == \
        ["auth", "certs", "config.yml", "last-gc", "token"]  # token/: token auth (default)
    assert site.curl("lab-reg", user=USER, password=site.password,
                     path=f"/v2/lc/reg/manifests/{digest}")[0] == 404
    client_pull(BUSYBOX)
    site.push("library/busybox:latest", f"{ADDRESS}/lc/after-gc:1", "lab-reg")  # writable
    site.run().assert_no_changes()
    again = site.run("garbage_collect.py").assert_ok()
    stderr_position(again, "[lab-reg]     registry-kit: garbage collection freed 0 bytes")


def _table_row(run: Run, first_cell: str) -> list[str]:
    for line in run.stderr.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first_cell and len(cells) > 3:
            return cells
    raise AssertionError(f"no status row for {first_cell}:\n{run.stderr[-3000:]}")


def test_status_reports_servers_and_clients(site: Site) -> None:
    run = site.run("status.py", timing="status").assert_no_changes()
    assert run.results is not None and run.results["operations"] == []
    catalog = json.loads(site.curl("lab-reg", user=USER, password=site.password,
                                   path="/v2/_catalog")[1].split("\n\n", 1)[1])
    for server in SERVERS:
        row = _table_row(run, server)
        image, version, state, uptime, v2, days, storage, repos, tags, timer = row[1:11]
        assert (image, state, v2, timer) == ("registry:2.8.2", "running", "401", "inactive")
        assert version == "2.8.2"  # the binary's own --version (Debian's 2.8.2+ds1)
        assert re.fullmatch(r"(\d+m)?\d+s|\d+h\d+m", uptime), uptime
        served = subprocess.run(
            f"openssl s_client -connect {harness.host_ip(server)}:{PORT} -servername {DOMAIN}"
            " </dev/null 2>/dev/null | openssl x509 -noout -enddate", shell=True,
            capture_output=True, text=True, timeout=30).stdout.strip().split("=", 1)[1]
        expires = datetime.strptime(served, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
        assert abs((expires - datetime.now(UTC)).days - int(days)) <= 1
        on_disk = harness.ssh(server, f"find {DATA_DIR}/docker/registry/v2/repositories "
                              "-type d -name _manifests | wc -l").stdout.strip()
        assert repos == on_disk
        assert storage.endswith(("KB", "MB"))
        if server == "lab-reg":
            assert int(repos) == len(catalog["repositories"])
            assert int(tags) >= 2
    client = _table_row(run, CLIENT)
    assert client[2:6] == [ADDRESS, "ok", f"yes ({USER})", "1"]


def test_scheduled_gc_timer(site: Site) -> None:
    site.data["registry_gc_schedule"] = "Sun 99:99"  # passes the control-side pattern only
    site.write()
    bad = site.run()
    assert bad.returncode != 0
    stderr_position(bad, "registry_gc_schedule='Sun 99:99' is not a systemd OnCalendar")
    assert harness.ssh("lab-reg", "test -e /etc/systemd/system/registry-kit-gc.timer",
                       check=False).returncode == 1  # nothing written
    site.data["registry_gc_schedule"] = "Sun *-*-* 03:00:00"
    site.write()
    run = site.run().assert_ok()
    assert sorted(dict(run.changed)["Schedule garbage collection (systemd timer)"]) == \
        sorted(SERVERS)
    for server in SERVERS:
        assert harness.ssh(server, "systemctl is-enabled registry-kit-gc.timer; systemctl "
                           "is-active registry-kit-gc.timer").stdout.split() == \
            ["enabled", "active"]
    started = container("lab-reg")["started"]
    harness.ssh("lab-reg", "systemctl start registry-kit-gc.service")  # oneshot: waits
    journal = harness.ssh("lab-reg", "journalctl -u registry-kit-gc.service --no-pager").stdout
    assert "registry-kit: garbage collection freed" in journal
    assert container("lab-reg")["started"] != started  # it went read-only and back
    assert site.status("lab-reg", site.password) == 200
    site.run().assert_no_changes()


def test_teardown_keeps_data_then_redeploy_serves_old_images(site: Site,
                                                             pushed: dict[str, str]) -> None:
    engine_since = docker_started(CLIENT)
    run = site.run("teardown.py", timing="teardown (keep data)").assert_ok()
    for server in SERVERS:
        assert harness.ssh(server, "docker ps -aq").stdout.strip() == ""
        gone = harness.ssh(server, "ls -d /etc/registry-kit /usr/local/lib/registry-kit "
                           "/etc/systemd/system/registry-kit-gc.* 2>/dev/null; true"
                           ).stdout.strip()
        assert gone == ""
        harness.ssh(server, f"test -d {DATA_DIR}/docker/registry/v2/repositories/lc/busybox")
        assert engine_mirrors(server) == []
    assert "DELETING" not in run.stderr
    assert json.loads(harness.ssh(CLIENT, "cat /etc/docker/daemon.json").stdout) == \
        FOREIGN_DAEMON_JSON
    assert engine_mirrors(CLIENT) == []
    assert docker_started(CLIENT) == engine_since  # reloaded, not restarted
    auths = json.loads(harness.ssh(CLIENT, "cat /root/.docker/config.json").stdout)["auths"]
    assert ADDRESS not in auths
    assert harness.ssh(CLIENT, "grep -c '# registry-kit$' /etc/hosts", check=False
                       ).stdout.strip() == "0"
    assert harness.ssh(CLIENT, f"ls -d /etc/docker/certs.d/{ADDRESS} /etc/registry-kit-client"
                       " 2>/dev/null; true").stdout.strip() == ""
    site.run("teardown.py").assert_no_changes()

    site.run(timing="deploy after teardown").assert_ok()
    site.run().assert_no_changes()
    for server in SERVERS:
        assert site.digest(BUSYBOX, server) == pushed[server]
    client_pull(BUSYBOX)


def test_teardown_with_purge_announces_and_deletes_data(site: Site) -> None:
    run = site.run("teardown.py", "--data", "registry_purge_data=True",
                   timing="teardown (purge)").assert_ok()
    begin = stderr_position(run, "--> Beginning operation run")
    for server in SERVERS:
        warning = f"{server}: registry_purge_data=True: DELETING the registry data in {DATA_DIR}"
        assert stderr_position(run, warning) < begin  # announced before anything runs
        assert harness.ssh(server, f"test -e {DATA_DIR}", check=False).returncode == 1
        assert harness.ssh(server, "docker ps -aq").stdout.strip() == ""
    site.run("teardown.py", "--data", "registry_purge_data=True").assert_no_changes()
    assert json.loads(harness.ssh(CLIENT, "cat /etc/docker/daemon.json").stdout) == \
        FOREIGN_DAEMON_JSON
    gc = site.run("garbage_collect.py")
    assert gc.returncode != 0
    stderr_position(gc, "lab-reg: no container registry: run deploy.py first")


def test_teardown_removes_docker_only_when_asked(site: Site, extra_host: Any) -> None:
    extra_host(HostSpec("lab-life-spare"))
    inventory = site.dir / "spare.py"
    harness.write_inventory(inventory, servers=[], clients=["lab-life-spare"], data={
        "registry_domain": DOMAIN, "registry_state_dir": str(site.state_dir)})
    harness.run_kit(inventory).assert_ok()
    harness.run_kit(inventory, "teardown.py").assert_ok()
    harness.ssh("lab-life-spare", "command -v dockerd >/dev/null")  # Docker stayed
    start = time.monotonic()
    run = harness.run_kit(inventory, "teardown.py", "--data", "docker_remove_on_teardown=True")
    TIMES["teardown removing docker.io"] = round(time.monotonic() - start, 1)
    assert dict(run.assert_ok().changed) == {
        "Remove the Docker engine (docker_remove_on_teardown)": ["lab-life-spare"]}
    assert harness.ssh("lab-life-spare", "command -v dockerd", check=False).returncode != 0
    state = harness.ssh("lab-life-spare", "dpkg-query -W -f '${Status}' docker.io",
                        check=False).stdout
    assert "install ok installed" not in state
    harness.run_kit(inventory, "teardown.py", "--data",
                    "docker_remove_on_teardown=True").assert_no_changes()
