"""The main deploy on real lab hosts: one bookworm registry server installed from scratch,
a bookworm client with a Docker engine of its own (other daemon.json keys, a running
container) and a trixie client.

Scenarios run in order and share the hosts (the module's fixture resets what the module
changes). Every check uses tools other than the kit: curl and skopeo from the control
machine, the docker CLI and systemctl on the hosts.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import harness
import prometheus_lab
import pytest
import yaml
from harness import Run

import lab as lab_api

DOMAIN = "registry.lab"
PORT = 5000
ADDRESS = f"{DOMAIN}:{PORT}"
SERVER = "lab-reg"
CLIENTS = ["lab-client1", "lab-client2"]
SEED_IMAGE = f"{ADDRESS}/itmuch/microservice-discovery-eureka:0.0.1"
FOREIGN_DAEMON_JSON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "5m"},
    "insecure-registries": ["upstream.lab:5000"],
}

pytestmark = pytest.mark.e2e


class Site:
    """The scenario's settings, inventory and passwords; each change rewrites the inventory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.py"
        self.passwords = {"alice": "alice-first-password", "bob": "bob-password"}
        self.data: dict[str, Any] = {
            "registry_domain": DOMAIN,
            "registry_port": PORT,
            "registry_client_login_user": "alice",
        }
        self.users = ["alice", "bob"]
        self.write()

    def write(self) -> None:
        users = [{"name": name, "password_file": harness.write_secret(
            self.dir, f"{name}.password", self.passwords[name])} for name in self.users]
        harness.write_inventory(self.inventory, servers=[SERVER], clients=CLIENTS,
                                data={**self.data, "registry_users": users})

    def deploy(self) -> Run:
        return harness.run_kit(self.inventory)

    def status(self, user: str | None = None, password: str | None = None) -> int:
        if user is not None and password is None:
            password = self.passwords[user]
        return harness.curl_status(DOMAIN, harness.host_ip(SERVER), PORT, user=user,
                                   password=password)


def prepare_client_with_own_docker(name: str) -> None:
    """A client that already runs Docker with keys of its own and a container, as a
    team's build host would; kit state from earlier runs is cleared."""
    # apt-get update first: a fresh lab host has no package lists (this module may be the
    # first of its lane to use the host).
    harness.ssh(name, "command -v dockerd >/dev/null || { apt-get update -qq && "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null; }")
    harness.ssh(name, "rm -rf /etc/docker/certs.d /etc/registry-kit-client /root/.docker; "
                "docker rm -f sleeper >/dev/null 2>&1; true")
    harness.ssh(name, "cat > /etc/docker/daemon.json && systemctl restart docker",
                stdin=json.dumps(FOREIGN_DAEMON_JSON, indent=2))
    harness.ssh(name, "docker run -d --name sleeper upstream.lab:5000/library/busybox "
                "sleep 86400 >/dev/null")


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Site:
    # The server starts as a fresh machine: no Docker, no kit files.
    lab_api.reset_host(SERVER)
    lab_api.reset_host("lab-client2")
    prepare_client_with_own_docker("lab-client1")
    return Site(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def first_run(site: Site) -> dict[str, Any]:
    sleeper_started = harness.started_at("lab-client1", "sleeper")
    run = site.deploy().assert_ok()
    return {"run": run, "sleeper_started": sleeper_started,
            "registry_started": harness.started_at(SERVER)}


def test_first_deploy_installs_docker_and_serves_tls_with_auth(site: Site,
                                                                first_run: dict) -> None:
    changed = dict(first_run["run"].changed)
    assert SERVER in changed["Install the Docker engine"]
    version = harness.ssh(SERVER, "docker version --format '{{.Server.Version}}'").stdout
    assert version.strip().startswith("20.10"), version
    assert harness.ssh(SERVER, "systemctl is-active docker").stdout.strip() == "active"
    policy = harness.ssh(SERVER, "docker inspect -f '{{.HostConfig.RestartPolicy.Name}}' "
                         "registry").stdout.strip()
    assert policy == "always"
    assert site.status() == 401
    assert site.status("alice") == 200
    assert site.status("bob") == 200
    assert site.status("alice", "not-the-password") == 401
    # Users without rules: token auth (registry_auth_mode "auto"). The registry answers
    # basic credentials with a Bearer challenge naming the kit's token server (running
    # beside it): it checks a token's signature per request, never a bcrypt hash.
    config = harness.ssh(SERVER, "cat /etc/registry-kit/config.yml").stdout
    assert "realm: https://registry.lab:5443/token" in config and "htpasswd:" not in config
    assert harness.ssh(SERVER, "systemctl is-active registry-kit-token").stdout.strip() == \
        "active"
    status, _, headers = harness._curl(["--resolve", f"{DOMAIN}:{PORT}:{harness.host_ip(SERVER)}",
                                        "--cacert", str(harness.CA_CERT),
                                        f"https://{ADDRESS}/v2/"])
    assert status == 401
    assert harness.bearer_challenge(headers) == {
        "realm": "https://registry.lab:5443/token", "service": ADDRESS}, headers


def test_second_run_changes_nothing(site: Site, first_run: dict) -> None:
    site.deploy().assert_no_changes()
    assert harness.started_at(SERVER) == first_run["registry_started"]


def test_skopeo_copies_in_and_out_and_catalog_lists_it(site: Site, first_run: dict,
                                                        tmp_path: Path) -> None:
    hosts = {DOMAIN: harness.host_ip(SERVER)}
    auth = {ADDRESS: ("alice", site.passwords["alice"])}
    copy_in = harness.skopeo(["copy", "--src-tls-verify=false", "--dest-cert-dir", "@CERTS@",
                              harness.upstream_source("library/busybox:latest"),
                              f"docker://{ADDRESS}/tests/busybox:1"], hosts=hosts, auth=auth)
    assert copy_in.returncode == 0, copy_in.stderr
    copy_out = harness.skopeo(["copy", "--src-cert-dir", "@CERTS@",
                               f"docker://{ADDRESS}/tests/busybox:1", f"dir:{tmp_path}/out"],
                              hosts=hosts, auth=auth)
    assert copy_out.returncode == 0, copy_out.stderr
    assert (tmp_path / "out" / "manifest.json").exists()
    catalog = json.loads(harness.curl_body(DOMAIN, harness.host_ip(SERVER), PORT,
                                           "/v2/_catalog", user="alice",
                                           password=site.passwords["alice"]))
    assert "tests/busybox" in catalog["repositories"]


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))


def test_status_json_matches_the_lab(site: Site, first_run: dict) -> None:
    """status --json: one JSON document on stdout (pyinfra's own lines go to stderr),
    each field checked against the hosts with docker, curl, openssl and du."""
    started = time.monotonic()
    proc = subprocess.run([harness.PYINFRA, "-y", "--data", "registry_status_json=True",
                           str(site.inventory), "status.py"], cwd=harness.ROOT,
                          capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 2 and abs(_epoch(doc["time"]) - time.time()) < 120
    facts = doc["servers"][SERVER]
    assert facts["metrics"] == facts["metrics_state"] == {}  # registry_metrics is off here
    image, state, restarts, since = harness.ssh(SERVER, "docker inspect --format '{{.Config."
                                                "Image}} {{.State.Status}} {{.RestartCount}} "
                                                "{{.State.StartedAt}}' registry").stdout.split()
    assert (facts["image"], facts["state"], str(facts["restarts"])) == (image, state, restarts)
    assert facts["started_at"] == since
    assert abs(time.time() - _epoch(since) - facts["uptime_seconds"]) < seconds + 5
    assert facts["version"] == "2.8.2"  # the lab's registry:2 is Debian bookworm's 2.8.2
    assert facts["url"] == f"https://{ADDRESS}"
    assert facts["v2_status"] == site.status() == 401 and facts["healthy"] is True
    end = subprocess.run(f"openssl s_client -connect {harness.host_ip(SERVER)}:{PORT} "
                         f"-servername {DOMAIN} </dev/null 2>/dev/null | openssl x509 -noout "
                         "-enddate -dateopt iso_8601", shell=True, capture_output=True,
                         text=True, check=True).stdout  # notAfter=2028-03-11 02:40:00Z
    not_after = end.strip().split("=", 1)[1].replace(" ", "T")
    assert facts["certificate"]["not_after"] == not_after, end
    left = (_epoch(not_after) - time.time()) / 86400
    # Whole days, rounded down (a second between the two readings may cross a day).
    assert 0 <= left - facts["certificate"]["days_left"] < 1.01, (left, facts)
    assert facts["certificate"]["error"] is None
    used = harness.ssh(SERVER, "du -sb /var/lib/registry-kit/data | cut -f1").stdout.strip()
    catalog = json.loads(harness.curl_body(DOMAIN, harness.host_ip(SERVER), PORT,
                                           "/v2/_catalog", user="alice",
                                           password=site.passwords["alice"]))["repositories"]
    tags = sum(len(json.loads(harness.curl_body(
        DOMAIN, harness.host_ip(SERVER), PORT, f"/v2/{name}/tags/list", user="alice",
        password=site.passwords["alice"]))["tags"] or []) for name in catalog)
    assert facts["storage"] == {"driver": "filesystem", "bytes": int(used),
                                "repositories": len(catalog), "tags": tags}
    assert facts["gc"] == {"timer": None, "last_run": None, "last_result": None}  # no schedule
    size, df_used = harness.ssh(SERVER, "df -P -B1 /var/lib/registry-kit/data | awk 'NR==2 "
                                "{print $2, $3}'").stdout.split()
    assert facts["disk"]["size"] == int(size)  # the lab host's disk: other writes move `used`
    assert abs(facts["disk"]["used"] - int(df_used)) < 200 << 20, (facts["disk"], df_used)
    assert facts["disk"]["guard"].startswith("writable"), facts["disk"]  # 90% by default
    records = harness.ssh(SERVER, "for f in last-gc last-retention; do head -n1 "
                          "/etc/registry-kit/$f 2>/dev/null | cut -d' ' -f1 | grep . || echo -; "
                          "done").stdout.split()
    assert [facts["disk"]["last_gc"], facts["disk"]["last_retention"]] == \
        [None if word == "-" else word for word in records], (facts["disk"], records)
    index = harness.STATE_DIR / "backups" / SERVER / "index.json"
    assert facts["backup"] == {"where": "control machine", "time": json.loads(
        index.read_text())["time"] if index.is_file() else None}
    for name in CLIENTS:
        engine = harness.ssh(name, "docker info --format '{{.ServerVersion}}'").stdout.strip()
        assert doc["clients"][name]["docker"] == engine
        assert doc["clients"][name]["login"] == "yes (alice)"
        assert doc["clients"][name]["trust"] == "ok"
        lines = harness.ssh(name, "grep -c '# registry-kit$' /etc/hosts || true").stdout
        assert doc["clients"][name]["hosts_entries"] == int(lines.strip() or 0)
    assert (doc["load_balancers"], doc["caches"], doc["address_holders"]) == ({}, {}, None)
    assert doc["access"][SERVER], doc["access"]


@pytest.mark.parametrize("client", CLIENTS)
def test_seed_flow_on_client_with_ca_trust_only(site: Site, first_run: dict,
                                                client: str) -> None:
    """The tutorial's flow, with the kit's registry instead of localhost:5000."""
    flow = (f"docker pull -q busybox >/dev/null && docker tag busybox {SEED_IMAGE} && "
            f"docker push {SEED_IMAGE} && docker rmi {SEED_IMAGE} >/dev/null && "
            f"docker pull {SEED_IMAGE} && docker run --rm {SEED_IMAGE} echo seed-flow-ok")
    out = harness.ssh(client, flow).stdout
    assert "seed-flow-ok" in out
    assert "digest: sha256:" in out
    ca = harness.ssh(client, f"cat /etc/docker/certs.d/{ADDRESS}/ca.crt").stdout
    assert ca == harness.CA_CERT.read_text()
    insecure = harness.ssh(client, "docker info --format '{{json .RegistryConfig}}'").stdout
    assert ADDRESS not in insecure, "TLS mode must not use insecure-registries"


def test_client_keeps_its_daemon_json_keys_and_running_container(site: Site,
                                                                  first_run: dict) -> None:
    daemon = json.loads(harness.ssh("lab-client1", "cat /etc/docker/daemon.json").stdout)
    for key, value in FOREIGN_DAEMON_JSON.items():
        assert daemon[key] == value
    assert daemon["registry-mirrors"] == harness.lab_site_data()["docker_registry_mirrors"]
    assert harness.started_at("lab-client1", "sleeper") == first_run["sleeper_started"]
    running = harness.ssh("lab-client1", "docker inspect -f '{{.State.Running}}' sleeper")
    assert running.stdout.strip() == "true"


def test_changed_setting_recreates_the_container_once(site: Site, first_run: dict) -> None:
    before = harness.started_at(SERVER)
    site.data["registry_log_level"] = "debug"
    site.write()
    run = site.deploy().assert_ok()
    assert dict(run.changed)["Start or replace the registry container"] == [SERVER]
    after = harness.started_at(SERVER)
    assert after != before
    assert "level=debug" in harness.ssh(SERVER, "docker logs registry 2>&1 | tail -50").stdout
    # Same data: the image pushed before is still there.
    tags = harness.curl_body(DOMAIN, harness.host_ip(SERVER), PORT,
                             "/v2/itmuch/microservice-discovery-eureka/tags/list",
                             user="alice", password=site.passwords["alice"])
    assert "0.0.1" in tags
    site.deploy().assert_no_changes()
    assert harness.started_at(SERVER) == after


def _token_server_pid() -> str:
    return harness.ssh(SERVER, "systemctl show -p MainPID --value registry-kit-token"
                       ).stdout.strip()


def test_added_user_works_without_restart(site: Site, first_run: dict) -> None:
    before, pid = harness.started_at(SERVER), _token_server_pid()
    site.passwords["carol"] = "carol-password"
    site.users.append("carol")
    site.write()
    run = site.deploy().assert_ok()
    # Token auth: the token server's policy names every user. A reload renews its copies
    # of htpasswd and the policy, which it re-reads by itself: neither it nor the registry
    # restarts, so no login is refused meanwhile.
    assert [name for name, _ in run.changed] == [
        "Upload htpasswd (bcrypt)", "Upload the access policy",
        "Reload registry-kit-token.service for its changed users or rules",
        "Check /v2/: 401 without, 200 with credentials"]
    assert site.status("carol") == 200
    assert harness.started_at(SERVER) == before
    assert pid != "0" and _token_server_pid() == pid
    site.deploy().assert_no_changes()


def test_removed_user_is_refused(site: Site, first_run: dict) -> None:
    pid = _token_server_pid()
    site.users.remove("bob")
    site.write()
    site.deploy().assert_ok()
    assert _token_server_pid() == pid  # reloaded, not restarted
    status = site.status("bob")
    # One CI run saw 0 here (no answer within curl's 10 s) once: say what served then.
    assert status == 401, (status, harness.ssh(
        SERVER, "systemctl status --no-pager -n 15 registry-kit-token.service; "
        "docker ps -a --format '{{.Names}} {{.Status}}'; uptime", check=False).stdout)
    assert site.status("alice") == 200
    site.deploy().assert_no_changes()


def test_password_change_renews_client_login_without_restart(site: Site,
                                                             first_run: dict) -> None:
    before = harness.started_at(SERVER)
    old = site.passwords["alice"]
    marker = "cat /etc/registry-kit-client/login-registry.lab_5000"
    markers = {client: harness.ssh(client, marker).stdout for client in CLIENTS}
    site.passwords["alice"] = "alice-second-password"
    site.write()
    run = site.deploy().assert_ok()
    assert sorted(dict(run.changed)[f"docker login to {ADDRESS}"]) == CLIENTS
    assert site.status("alice", old) == 401
    assert site.status("alice") == 200
    assert harness.started_at(SERVER) == before
    for client in CLIENTS:
        assert harness.ssh(client, marker).stdout != markers[client]
        # The renewed login is what lets the client pull a private image.
        harness.ssh(client, f"docker rmi {SEED_IMAGE} >/dev/null 2>&1; docker pull -q "
                    f"{SEED_IMAGE}")
    site.deploy().assert_no_changes()


# An engine 1.5.0 stands in as two scripts: the CLI answers the server version it would
# read from a running engine, dockerd its own version; "running" adds a docker.service.
OLD_CLI = ("#!/bin/sh\ncase \"$*\" in *ServerVersion*|*Server.Version*) echo 1.5.0;; "
           "*) echo 'Docker version 1.5.0, build a8a31ef';; esac\n")
OLD_DAEMON = ("#!/bin/sh\n[ \"$1\" = --version ] && "
              "exec echo 'Docker version 1.5.0, build a8a31ef'\nexec sleep infinity\n")
OLD_UNIT = "[Service]\nExecStart=/usr/local/bin/dockerd\n[Install]\nWantedBy=multi-user.target\n"


@pytest.mark.parametrize("engine", ["stopped", "running"])
def test_old_engine_is_refused_and_left_untouched(site: Site, first_run: dict,
                                                  extra_host: Any, engine: str) -> None:
    """An engine below docker_min_version: refused before anything on the host changes,
    whether it runs (asked for its version) or not (its binary is asked, and nothing
    starts it)."""
    extra_host(lab_api.HostSpec("lab-old", "bookworm"))
    for path, body in (("/usr/local/bin/docker", OLD_CLI), ("/usr/local/bin/dockerd", OLD_DAEMON)):
        harness.ssh("lab-old", f"cat > {path} && chmod 755 {path}", stdin=body)
    if engine == "running":
        harness.ssh("lab-old", "cat > /etc/systemd/system/docker.service && "
                    "systemctl daemon-reload && systemctl enable --now docker.service",
                    stdin=OLD_UNIT)
    listing = "find /etc /usr/local /root -newer /etc/hostname 2>/dev/null | sort"
    before = harness.ssh("lab-old", listing).stdout
    inventory = site.dir / "old-engine.py"
    harness.write_inventory(inventory, servers=[SERVER], clients=["lab-client1", "lab-old"],
                            data={**site.data, "registry_users": [
                                {"name": "alice", "password_file": str(site.dir /
                                                                       "alice.password")}]})
    run = harness.run_kit(inventory)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert ("lab-old: Docker engine 1.5.0 is older than docker_min_version 1.6.0" in output), \
        output[-3000:]
    assert harness.ssh("lab-old", listing).stdout == before
    assert harness.ssh("lab-old", "test -e /etc/docker/daemon.json", check=False).returncode
    active = harness.ssh("lab-old", "systemctl is-active docker.service", check=False)
    assert active.stdout.strip() == ("active" if engine == "running" else "inactive")
    # The other hosts were not held back by the refused one.
    errors = {name: hosts for name, hosts in run.errors}
    assert all(hosts == ["lab-old"] for hosts in errors.values()), errors


def test_env_password_source(site: Site, first_run: dict) -> None:
    """A password from an environment variable of the control machine."""
    os.environ["REGISTRY_KIT_TEST_DAVE"] = "dave-from-env"
    try:
        harness.write_inventory(site.dir / "env.py", servers=[SERVER], clients=[], data={
            **site.data, "registry_client_login_user": None, "registry_users": [
                *({"name": n, "password_file": str(site.dir / f"{n}.password")}
                  for n in site.users),
                {"name": "dave", "password_env": "REGISTRY_KIT_TEST_DAVE"}]})
        harness.run_kit(site.dir / "env.py").assert_ok()
        assert site.status("dave", "dave-from-env") == 200
        harness.run_kit(site.dir / "env.py").assert_no_changes()
    finally:
        del os.environ["REGISTRY_KIT_TEST_DAVE"]


def test_config_changed_on_disk_is_restored_and_loaded(site: Site, first_run: dict) -> None:
    """A config.yml changed behind the kit's back (a hand edit, a garbage_collect.py killed
    while the registry was read-only) is put back and the registry restarted to load it."""
    before = harness.started_at(SERVER)
    harness.ssh(SERVER, "sed -i 's/enabled: false/enabled: true/' /etc/registry-kit/config.yml")
    run = site.deploy().assert_ok()
    changed = dict(run.changed)
    assert changed["Upload the registry config.yml"] == [SERVER]
    assert changed["Restart the registry to load its changed files"] == [SERVER]
    assert "Start or replace the registry container" not in changed
    assert harness.started_at(SERVER) != before
    assert site.status("alice") == 200
    site.deploy().assert_no_changes()


METRICS_PORT = 9195
PROMETHEUS_DIR = harness.STATE_DIR / "prometheus"
SCRAPE = "rm -f /tmp/scrape; curl -sS -o /tmp/scrape -w '%{http_code}' --max-time 5 "


PROMETHEUS_INTERVAL = prometheus_lab.INTERVAL
REGISTRY_DOWN_FOR = 60  # RegistryDown's `for:` (registry_kit/render/prometheus.py)
SCREENSHOTS = Path(os.environ.get("REGISTRY_KIT_TEST_OUTPUT",
                                  harness.ROOT / ".test-output")) / "prometheus"


def _prometheus_sees_the_registry_go_down_and_come_back(site: Site) -> None:
    """Debian's prometheus, on the control machine, with the kit's own prometheus.yml and
    rules (registry_prometheus_interval 2 s): every target up; the registry stopped fires
    RegistryDown within its `for:` plus two scrape intervals (and an evaluation's); the
    alerts page in headless chromium; started again, the alert resolves."""
    with prometheus_lab.running(PROMETHEUS_DIR) as port:
        try:
            _prometheus_checks(site, port)
        finally:
            harness.ssh(SERVER, "docker start registry >/dev/null")
    assert site.status("alice") == 200


FACT_RULES = {"RegistryFactsDown", "RegistryCertificateExpiresSoon", "RegistryDataDiskAbove85",
              "RegistryDiskGuardReadOnly", "RegistryGCFailed", "RegistryRetentionFailed",
              "FailedLoginsHigh", "BackupTooOld"}


def _prometheus_checks(site: Site, port: int) -> None:
    jobs = prometheus_lab.wait_targets_up(port)
    assert jobs == {"registry-kit-registry", "registry-kit-facts"}, jobs
    # The kit's rules on its facts loaded, the facts scraped, none of those alerts active
    # but the disk's (this machine's own disk may be that full).
    rules = prometheus_lab.rules(port)
    assert rules >= FACT_RULES, rules
    size = prometheus_lab.api(port, "/api/v1/query?query=registry_kit_data_filesystem_size_bytes")
    assert [r["metric"]["host"] for r in size["result"]] == [SERVER], size
    for stored in ("registry_kit_token_failed_logins_total",
                   "registry_kit_backup_last_success_timestamp_seconds"):
        found = prometheus_lab.api(port, f"/api/v1/query?query={stored}")
        assert [r["metric"]["host"] for r in found["result"]] == [SERVER], found
    assert all(prometheus_lab.alerts(port, name) == []
               for name in FACT_RULES - {"RegistryDataDiskAbove85"})
    assert prometheus_lab.alerts(port, "RegistryDown") == []
    harness.ssh(SERVER, "docker stop registry >/dev/null")
    bound = REGISTRY_DOWN_FOR + 3 * PROMETHEUS_INTERVAL
    fired = prometheus_lab.wait(
        lambda: prometheus_lab.alerts(port, "RegistryDown") == ["firing"], bound + 5,
        "RegistryDown firing")
    print(f"RegistryDown fired {fired:.1f} s after the registry stopped (bound {bound} s)")
    assert REGISTRY_DOWN_FOR <= fired <= bound + 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "alerts-registry-down.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--window-size=1280,900", "--virtual-time-budget=5000",
                    # Debian builds Prometheus without the React UI: its classic one.
                    f"--screenshot={shot}", f"http://127.0.0.1:{port}/classic/alerts"],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    harness.ssh(SERVER, "docker start registry >/dev/null")
    resolved = prometheus_lab.wait(lambda: prometheus_lab.alerts(port, "RegistryDown") == [],
                                   30, "RegistryDown resolved")
    print(f"RegistryDown resolved {resolved:.1f} s after the registry started")


def _gauges(text: str) -> dict[str, float]:
    """NAME{LABELS} -> value, from Prometheus' text format (comments left out)."""
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def _kit_facts_match_the_server(site: Site, reg: str) -> None:
    """GET /kit/metrics from the allowed client, each gauge checked against the server with
    other tools: the certificate the registry serves (read over TLS here), df, the guard's
    flag file, a garbage_collect.py run; cut off for the other client like /metrics."""
    import ssl

    from cryptography import x509
    url = f"http://{reg}:{METRICS_PORT}/kit/metrics"

    def scrape() -> dict[str, float]:
        assert harness.ssh(CLIENTS[0], SCRAPE + url).stdout == "200"
        return _gauges(harness.ssh(CLIENTS[0], "cat /tmp/scrape").stdout)

    # The guard writes its state at its next check (every 5 s) once the folder exists.
    prometheus_lab.wait(lambda: "registry_kit_disk_guard_read_only" in scrape(), 15,
                        "the guard's state")
    facts = scrape()
    served = x509.load_pem_x509_certificate(ssl.get_server_certificate((reg, PORT)).encode())
    assert facts['registry_kit_certificate_not_after_timestamp_seconds{certificate="server"}'] \
        == calendar.timegm(served.not_valid_after_utc.utctimetuple())
    data = site.data.get("registry_data_dir", "/var/lib/registry-kit/data")
    size, used, avail = (int(v) for v in harness.ssh(
        SERVER, f"df -P -B1 {data} | tail -n 1").stdout.split()[1:4])
    assert facts["registry_kit_data_filesystem_size_bytes"] == size
    # This machine's disk is shared with whatever else runs: within 1% of it.
    assert abs(facts["registry_kit_data_filesystem_used_bytes"] - used) < size / 100
    assert abs(facts["registry_kit_data_filesystem_avail_bytes"] - avail) < size / 100
    flag = harness.ssh(SERVER, "test -e /etc/registry-kit/disk-guard-readonly", check=False)
    assert flag.returncode != 0 and facts["registry_kit_disk_guard_read_only"] == 0
    assert not any(name.startswith("registry_kit_gc_") for name in facts)  # none run yet
    before = time.time()
    harness.run_kit(site.inventory, "garbage_collect.py").assert_ok()
    facts = scrape()
    assert facts["registry_kit_gc_last_success"] == 1
    assert before - 1 <= facts["registry_kit_gc_last_end_timestamp_seconds"] <= time.time() + 1
    refused = harness.ssh(CLIENTS[1], SCRAPE + url, check=False)
    assert refused.returncode != 0 and refused.stdout in ("", "000"), refused
    # Every fact file is root's and world-readable; none holds a secret (no user's password
    # is in the scrape).
    listing = harness.ssh(SERVER, "stat -c '%U %a %n' /var/lib/registry-kit-metrics/*").stdout
    assert all(line.split()[:2] == ["root", "644"] for line in listing.splitlines()), listing
    body = harness.ssh(CLIENTS[0], "cat /tmp/scrape").stdout
    assert not any(password in body for password in site.passwords.values())


def _token_counters_and_backup_time(site: Site, reg: str) -> None:
    """The token server's counters and backup.py's time, scraped like the facts above:
    3 logins with a wrong password (curl from the control machine, through the registry's
    challenge) raise the failed logins by exactly 3, one right login the tokens issued by
    exactly 1; a backup.py run leaves its start time (within the run), root's 0644, and a
    second run right after changes nothing (the backup and its time are up to date)."""
    url = f"http://{reg}:{METRICS_PORT}/kit/metrics"

    def scrape() -> dict[str, float]:
        assert harness.ssh(CLIENTS[0], SCRAPE + url).stdout == "200"
        return _gauges(harness.ssh(CLIENTS[0], "cat /tmp/scrape").stdout)

    names = ("issued", "denied", "failed_logins", "rate_limited")

    def counters() -> dict[str, float]:
        facts = scrape()
        return {name: facts[f"registry_kit_token_{name}_total"] for name in names}

    before = counters()
    assert [site.status("alice", "not-the-password") for _ in range(3)] == [401] * 3
    assert site.status("alice") == 200
    after = counters()
    assert {name: after[name] - before[name] for name in names} == {
        "issued": 1, "denied": 0, "failed_logins": 3, "rate_limited": 0}, (before, after)
    fact = "registry_kit_backup_last_success_timestamp_seconds"
    assert fact not in scrape()  # never backed up: no series, BackupTooOld cannot fire
    started = time.time()
    run = harness.run_kit(site.inventory, "backup.py").assert_ok()
    ended = time.time()
    try:
        assert dict(run.changed)["Record the backup's time in /var/lib/registry-kit-metrics/"
                                 "backup.prom (metrics)"] == [SERVER]
        assert int(started) <= scrape()[fact] <= ended
        assert harness.ssh(SERVER, "stat -c '%U %a' /var/lib/registry-kit-metrics/backup.prom"
                           ).stdout.split() == ["root", "644"]
        harness.run_kit(site.inventory, "backup.py").assert_no_changes()
    finally:
        shutil.rmtree(harness.STATE_DIR / "backups", ignore_errors=True)


def test_metrics_on_the_internal_address_for_the_allowed_only(site: Site,
                                                             first_run: dict) -> None:
    """registry_metrics: the registry's /metrics on the server's own lab address, scraped
    from an allowed client, refused to another, absent on the public port; turned off, its
    filter is gone. Checked with curl on the clients and ss on the server."""
    reg, allowed = harness.host_ip(SERVER), harness.host_ip(CLIENTS[0])
    # The control machine's address on the lab network (the server's default gateway):
    # the Prometheus this test runs scrapes from there.
    control = prometheus_lab.control_address(SERVER)
    site.data.update({"registry_metrics": True, "registry_metrics_bind": reg,
                      "registry_metrics_allow": [f"{allowed}/32", f"{control}/32"],
                      "registry_prometheus_interval": PROMETHEUS_INTERVAL})
    site.write()
    try:
        changed = dict(site.deploy().assert_ok().changed)
        assert changed["Enable and start registry-kit-metrics"] == [SERVER]
        site.deploy().assert_no_changes()
        # The control machine's scrape config lists the endpoint (promtool: unit tests).
        scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        assert scrape["scrape_configs"][0]["static_configs"] == [
            {"targets": [f"{reg}:{METRICS_PORT}"], "labels": {"host": SERVER}}]
        # Some traffic first, so the registry has HTTP counters to show.
        assert site.status("alice") == 200
        url = f"http://{reg}:{METRICS_PORT}/metrics"
        assert harness.ssh(CLIENTS[0], SCRAPE + url).stdout == "200"
        body = harness.ssh(CLIENTS[0], "cat /tmp/scrape").stdout
        assert "# TYPE registry_http_requests_total counter" in body, body[:2000]
        assert 'registry_http_requests_total{code="200",handler="base",method="get"}' in body
        # The debug server's other pages stay private, even for the allowed address.
        pprof = f"http://{reg}:{METRICS_PORT}/debug/pprof/"
        assert harness.ssh(CLIENTS[0], SCRAPE + pprof).stdout == "403"
        refused = harness.ssh(CLIENTS[1], SCRAPE + url, check=False)
        assert refused.returncode != 0 and refused.stdout in ("", "000"), refused
        for port in (5001, PORT):  # the debug port is loopback only; the public port, no
            out = harness.ssh(CLIENTS[0], SCRAPE + f"-k https://{reg}:{port}/metrics; "
                              "cat /tmp/scrape 2>/dev/null | grep -c '^# TYPE'", check=False).stdout
            assert not out.startswith("200") and out.endswith("0\n"), (port, out)
        listening = harness.ssh(SERVER, "ss -Htln").stdout.split()
        assert f"{reg}:{METRICS_PORT}" in listening and f"0.0.0.0:{METRICS_PORT}" not in \
            listening and "127.0.0.1:5001" in listening and "0.0.0.0:5001" not in listening
        assert "127.0.0.1:9196" in listening and "0.0.0.0:9196" not in listening  # facts
        started = time.monotonic()
        _kit_facts_match_the_server(site, reg)
        print(f"the kit's facts checked in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        _token_counters_and_backup_time(site, reg)
        print(f"token counters and backup time checked in {time.monotonic() - started:.1f} s")
        _prometheus_sees_the_registry_go_down_and_come_back(site)
    finally:
        for key in ("registry_metrics", "registry_metrics_bind", "registry_metrics_allow",
                    "registry_prometheus_interval"):
            site.data.pop(key, None)
        site.write()
    site.deploy().assert_ok()
    assert not (PROMETHEUS_DIR / "prometheus.yml").exists()
    assert harness.ssh(SERVER, f"ss -Htln | grep -c ':{METRICS_PORT} ' || true").stdout \
        .strip() == "0"
    assert harness.ssh(SERVER, "ls /etc/registry-kit-metrics /etc/systemd/system/"
                       "registry-kit-metrics.service /var/lib/registry-kit-metrics "
                       "/etc/systemd/system/registry-kit-facts.service "
                       "/usr/local/lib/registry-kit/registry-kit-facts.py 2>&1 || true"
                       ).stdout.count("No such file") == 5
    assert harness.ssh(SERVER, "ss -Htln | grep -c ':9196 ' || true").stdout.strip() == "0"
    site.deploy().assert_no_changes()
