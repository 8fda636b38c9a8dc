"""Access control per repository (registry_access_rules: token auth with the kit's token
server) on real lab hosts: who may pull, push and delete what, seen through the docker CLI
on a client host and skopeo/curl on the control machine, never through the kit's code.

One server (lab-reg) and one client (lab-client1); scenarios run in order on registry:2
(2.8.x), then the same checks on registry:3 (3.0.0). Every scenario is applied twice and
the second run must change nothing. Rules and users change without the registry's
container being touched (same ID, same start time).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
from harness import Run

import lab as lab_api

DOMAIN = "registry.lab"
PORT = 5000
TOKEN_PORT = 5443
ADDRESS = f"{DOMAIN}:{PORT}"
SERVER = "lab-reg"
CLIENT = "lab-client1"
ATTACKER = "lab-client2"  # brute force and floods come from here (not a kit client)
DENIED = "denied: requested access to the resource is denied"
PASSWORDS = {"ci": "ci-password-0001", "reader": "reader-password-01",
             "admin": "admin-password-001"}
RULES: list[dict[str, Any]] = [
    {"repository": "team-a/*", "actions": ["pull", "push"], "users": ["ci"]},
    {"repository": "team-a/*", "actions": ["pull"], "groups": ["readers"]},
    {"repository": "*", "actions": ["pull", "push", "delete"], "users": ["admin"]},
    {"repository": "public/*", "actions": ["pull"], "anonymous": True},
]
TIMES: dict[str, float] = {}

pytestmark = pytest.mark.e2e


class Site:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.py"
        self.state_dir = directory / "state"
        self.passwords = dict(PASSWORDS)
        self.data: dict[str, Any] = {
            "registry_domain": DOMAIN, "registry_port": PORT,
            "registry_image": "registry:2", "registry_delete_enabled": True,
            "registry_verify_timeout": 30, "registry_state_dir": str(self.state_dir),
            "registry_groups": {"readers": ["reader"]}, "registry_access_rules": RULES,
        }
        self.write()

    def write(self) -> None:
        users = [{"name": name, "password_file": harness.write_secret(
            self.dir, f"{name}.password", password)} for name, password in self.passwords.items()]
        harness.write_inventory(self.inventory, servers=[SERVER], clients=[CLIENT],
                                data={**self.data, "registry_users": users})

    def twice(self, timing: str) -> Run:
        start = time.monotonic()
        first = harness.run_kit(self.inventory).assert_ok()
        TIMES[timing] = round(time.monotonic() - start, 1)
        harness.run_kit(self.inventory).assert_no_changes()
        return first

    @property
    def certs(self) -> Path:
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        (certs / "ca.crt").write_bytes((self.state_dir / "ca" / "ca.crt").read_bytes())
        return certs

    def skopeo(self, args: list[str], user: str | None) -> subprocess.CompletedProcess[str]:
        auth = {ADDRESS: (user, self.passwords[user])} if user else None
        return harness.skopeo(args, hosts={DOMAIN: harness.host_ip(SERVER)}, auth=auth)

    def seed(self, reference: str) -> None:
        """Push busybox as `reference` with the admin user (skopeo)."""
        proc = self.skopeo(["copy", "--src-tls-verify=false", "--dest-cert-dir",
                            str(self.certs), harness.upstream_source("library/busybox:latest"),
                            f"docker://{ADDRESS}/{reference}"], "admin")
        assert proc.returncode == 0, proc.stderr

    def token(self, user: str | None, scope: str) -> dict[str, Any]:
        """A token from the realm with curl, and its claims (decoded, not verified)."""
        with tempfile.TemporaryDirectory() as tmp:
            args = ["curl", "-sf", "--max-time", "10", "--cacert", str(self.certs / "ca.crt"),
                    "--resolve", f"{DOMAIN}:{TOKEN_PORT}:{harness.host_ip(SERVER)}", "-G",
                    "--data-urlencode", f"service={ADDRESS}", "--data-urlencode",
                    f"scope={scope}"]
            if user:
                config = Path(tmp) / "curlrc"
                config.write_text(f'user = "{user}:{self.passwords[user]}"\n')
                args += ["-K", str(config)]
            proc = subprocess.run([*args, f"https://{DOMAIN}:{TOKEN_PORT}/token"],
                                  capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        token = json.loads(proc.stdout)["token"]
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return {"token": token, **claims}

    def registry_get(self, path: str, token: str, *, method: str = "GET",
                     accept: str = "*/*") -> tuple[int, str]:
        proc = subprocess.run(
            ["curl", "-s", "-X", method, "-H", f"Accept: {accept}",
             "-w", "\n%{http_code}", "--max-time", "10", "--cacert",
             str(self.certs / "ca.crt"), "--resolve", f"{DOMAIN}:{PORT}:{harness.host_ip(SERVER)}",
             "-H", "@-", f"https://{ADDRESS}{path}"],
            input=f"Authorization: Bearer {token}\n", capture_output=True, text=True, timeout=30)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), body


def docker(command: str, *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The docker CLI on the client host."""
    return harness.ssh(CLIENT, command, check=False, stdin=stdin)


def login(site: Site, user: str | None) -> subprocess.CompletedProcess[str]:
    docker(f"docker logout {ADDRESS}")
    if user is None:
        return docker("true")
    return docker(f"docker login -u {user} --password-stdin {ADDRESS}",
                  stdin=site.passwords[user])


def push(image: str) -> subprocess.CompletedProcess[str]:
    return docker(f"docker tag busybox {ADDRESS}/{image} && docker push {ADDRESS}/{image}")


def pull(image: str) -> subprocess.CompletedProcess[str]:
    return docker(f"docker rmi -f {ADDRESS}/{image} >/dev/null 2>&1; "
                  f"docker pull {ADDRESS}/{image}")


def container() -> str:
    return harness.ssh(SERVER, "docker inspect -f '{{.Id}} {{.State.StartedAt}}' registry"
                       ).stdout.strip()


def assert_denied(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """Docker's own denial (push: the line itself; pull: "pull access denied for ...,
    repository does not exist or may require 'docker login': " before it)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{what} was allowed:\n{out}"
    assert DENIED in out, f"{what}: not Docker's denial:\n{out}"


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    start = time.monotonic()
    # A fresh server: the catalog checks count repositories, and another module (the web
    # page's seeds) may have left some there in a parallel lane, which takes modules in any order.
    lab_api.reset_host(SERVER, docker=True)  # Docker in: its install is test_deploy's
    site = Site(tmp_path_factory.mktemp("access"))
    yield site
    TIMES["module"] = round(time.monotonic() - start, 1)
    print("\naccess timings (s):", json.dumps(TIMES, indent=1))


def core_checks(site: Site, tag: str) -> None:
    """ci pushes team-a and is refused on team-b; reader pulls but may not push; anonymous
    pulls public/* and nothing else; delete only for admin; catalog only for admin."""
    site.seed(f"team-b/app:{tag}")
    site.seed(f"team-a/app:{tag}-keep")
    site.seed(f"public/base:{tag}")
    assert docker("docker pull busybox").returncode == 0
    assert login(site, "ci").returncode == 0
    proc = push(f"team-a/app:{tag}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_denied(push(f"team-b/app:{tag}-ci"), "ci pushing team-b/app")
    assert login(site, "reader").returncode == 0
    proc = pull(f"team-a/app:{tag}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_denied(push(f"team-a/app:{tag}-reader"), "reader pushing team-a/app")
    assert_denied(pull(f"team-b/app:{tag}"), "reader pulling team-b/app")
    login(site, None)
    proc = pull(f"public/base:{tag}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_denied(pull(f"team-a/app:{tag}"), "anonymous pulling team-a/app")
    assert_denied(push(f"public/base:{tag}-anon"), "anonymous pushing public/base")
    # Delete: skopeo as ci (push, no delete) is refused, as admin it works.
    target = f"docker://{ADDRESS}/team-a/app:{tag}"
    refused = site.skopeo(["delete", "--cert-dir", str(site.certs), target], "ci")
    assert refused.returncode != 0, refused.stdout
    deleted = site.skopeo(["delete", "--cert-dir", str(site.certs), target], "admin")
    assert deleted.returncode == 0, deleted.stderr
    # The catalog lists every repository: only for users who may pull `*`.
    admin = site.token("admin", "registry:catalog:*")
    code, body = site.registry_get("/v2/_catalog", admin["token"])
    assert code == 200 and "team-b/app" in body, body
    ci = site.token("ci", "registry:catalog:*")
    assert ci["access"] == []
    assert site.registry_get("/v2/_catalog", ci["token"])[0] == 401
    # A cross-repository mount needs pull on the source: ci may not mount team-b's blob.
    manifest = json.loads(site.registry_get(
        f"/v2/team-b/app/manifests/{tag}", site.token("admin", "repository:team-b/app:pull")
        ["token"], accept="application/vnd.docker.distribution.manifest.v2+json")[1])
    mount = (f"/v2/team-a/app/blobs/uploads/?mount={manifest['layers'][0]['digest']}"
             "&from=team-b/app")
    scopes = "repository:team-a/app:pull,push repository:team-b/app:pull"
    assert site.registry_get(mount, site.token("ci", scopes)["token"], method="POST")[0] == 401
    assert site.registry_get(mount, site.token("admin", scopes)["token"],
                             method="POST")[0] == 201


def test_a_deploy_with_rules_and_the_core_checks_on_2x(site: Site) -> None:
    site.twice("deploy registry:2 with access rules")
    core_checks(site, "v2")


def test_b_token_grants_what_the_rules_say(site: Site) -> None:
    claims = site.token("ci", "repository:team-a/app:pull,push repository:team-b/app:pull,push")
    assert claims["access"] == [{"type": "repository", "name": "team-a/app",
                                 "actions": ["pull", "push"]}]
    assert site.token("reader", "repository:team-a/app:pull,push")["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull"]}]
    assert site.token(None, "repository:public/x:pull,push")["access"] == [
        {"type": "repository", "name": "public/x", "actions": ["pull"]}]
    assert site.token(None, "repository:team-a/app:pull")["access"] == []


def test_b1_token_server_runs_as_a_sandboxed_dynamic_user(site: Site) -> None:
    """systemd's own view: `systemd-analyze security` scores the unit at most 3.0, the
    service has a dynamic user, its process is not root, and the files it reads stay
    root-only on disk."""
    start = time.monotonic()
    unit = "registry-kit-token.service"
    out = harness.ssh(SERVER, f"systemd-analyze security --no-pager {unit} | tail -n 1; "
                      f"systemctl show -p User -p DynamicUser {unit}; echo \"process user=$("
                      f"ps -o user= -p $(systemctl show -p MainPID --value {unit}))\"; "
                      "stat -c '%U %a %n' /etc/registry-kit/token/signing.key "
                      "/etc/registry-kit/token/policy.json /etc/registry-kit/auth/htpasswd").stdout
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)[1])
    TIMES["systemd-analyze security score"] = score
    print(f"\nsystemd-analyze security registry-kit-token.service: {score}")
    assert score <= 3.0, out
    assert "DynamicUser=yes" in out and "User=registry-kit-token" in out, out
    user = re.search(r"process user=(\S*)", out)[1]
    assert user and user != "root", out
    assert out.count("root 600 ") == 3, out
    TIMES["sandbox checks"] = round(time.monotonic() - start, 1)


def test_b2_failed_logins_are_limited_per_address_not_for_the_user_elsewhere(
        site: Site) -> None:
    """30 wrong passwords for ci from one lab host as fast as curl goes: 10 are checked
    (401), the rest refused with 429 and a Retry-After; ci's right password from another
    lab host works at once (docker login and a pull)."""
    start = time.monotonic()
    url = f"https://{DOMAIN}:{TOKEN_PORT}/token?service={ADDRESS}&scope=repository:team-a/app:pull"
    out = harness.ssh(ATTACKER, "for i in $(seq 30); do curl -sk -o /dev/null --max-time 10 "
                      "-u ci:wrong-password-$i -w '%{http_code} %header{retry-after}\\n' "
                      f"'{url}'; done").stdout
    answers = [line.split() for line in out.splitlines()]
    assert len(answers) == 30, out
    assert [answer[0] for answer in answers[:10]] == ["401"] * 10, out
    limited = [answer for answer in answers[10:] if answer[0] == "429"]
    assert len(limited) >= 15 and all(a[0] in ("401", "429") for a in answers), out
    assert all(1 <= int(answer[1]) <= 6 for answer in limited), out
    TIMES["30 wrong passwords from one host"] = round(time.monotonic() - start, 1)
    print(f"\n30 wrong passwords from {ATTACKER}: {[' '.join(a) for a in answers]}")
    assert login(site, "ci").returncode == 0  # the real user, from another host
    proc = pull("team-a/app:v2-keep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    TIMES["brute-force check"] = round(time.monotonic() - start, 1)


# Run on the attacking lab host (python3 there), against the lab server's token port only,
# bounded in time (argv) and count: IDLE connections held open and reopened when cut (a
# slowloris), WRONG threads asking tokens with wrong passwords, at most 40 requests each.
FLOOD = """
import base64, json, socket, ssl, sys, threading, time
host, port, service, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
IDLE, WRONG, PER_THREAD = 500, 200, 40
threading.stack_size(256 * 1024)
end = time.monotonic() + seconds
lock = threading.Lock()
stats = {"idle_opened": 0, "idle_cut_by_server": 0, "idle_open_max": 0, "answers": {}}
now_open = [0]

def idle():
    while time.monotonic() < end:
        try:
            conn = socket.create_connection((host, port), timeout=5)
        except OSError:
            time.sleep(0.5)
            continue
        with lock:
            stats["idle_opened"] += 1
            now_open[0] += 1
            stats["idle_open_max"] = max(stats["idle_open_max"], now_open[0])
        conn.settimeout(max(0.1, end - time.monotonic()))
        try:
            cut = not conn.recv(1)
        except socket.timeout:
            cut = False
        except OSError:
            cut = True
        conn.close()
        with lock:
            now_open[0] -= 1
            stats["idle_cut_by_server"] += cut

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE

def wrong(index):
    for n in range(PER_THREAD):
        if time.monotonic() >= end:
            return
        auth = base64.b64encode(f"ci:wrong-{index}-{n}".encode()).decode()
        try:
            with context.wrap_socket(socket.create_connection((host, port), timeout=15),
                                     server_hostname=host) as conn:
                conn.sendall(f"GET /token?service={service}&scope=repository:team-a/app:pull"
                             f" HTTP/1.0\\r\\nHost: {host}\\r\\nAuthorization: Basic {auth}"
                             "\\r\\n\\r\\n".encode())
                status = conn.recv(64).split(b" ")[1].decode()
        except (OSError, IndexError) as error:
            status = type(error).__name__
        with lock:
            stats["answers"][status] = stats["answers"].get(status, 0) + 1
        time.sleep(0.5)

threads = [threading.Thread(target=idle) for _ in range(IDLE)]
threads += [threading.Thread(target=wrong, args=(i,)) for i in range(WRONG)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(stats))
"""


def test_b3_a_pull_succeeds_during_a_connection_flood(site: Site) -> None:
    """500 idle connections (reopened when the server cuts them) and 200 threads of
    wrong-password token requests from one lab host for 20 s; meanwhile a docker pull
    through the access rules on the client host succeeds, in a stated time."""
    start = time.monotonic()
    quiet_start = time.monotonic()
    proc = pull("team-a/app:v2-keep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    quiet = time.monotonic() - quiet_start
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    flood = threading.Thread(target=lambda: result.update(flood=harness.ssh(
        ATTACKER, f"python3 - {DOMAIN} {TOKEN_PORT} {ADDRESS} 20", stdin=FLOOD, timeout=60)))
    flood.start()
    time.sleep(5)  # the idle connections are open, the guesses running
    during_start = time.monotonic()
    proc = pull("team-a/app:v2-keep")
    during = time.monotonic() - during_start
    flood.join()
    stats = json.loads(result["flood"].stdout)
    TIMES["pull without flood"] = round(quiet, 1)
    TIMES["pull during flood"] = round(during, 1)
    print(f"\nflood from {ATTACKER}: {json.dumps(stats)}\npull: {quiet:.1f} s without, "
          f"{during:.1f} s during the flood")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert during < 20, during
    assert stats["idle_open_max"] >= 450, stats  # the flood really held the connections
    assert stats["idle_cut_by_server"] >= 400, stats  # and the server cut them
    assert stats["answers"].get("429", 0) > 100, stats
    TIMES["flood check"] = round(time.monotonic() - start, 1)


def test_b4_a_line_break_in_a_scope_stays_on_its_journal_line(site: Site) -> None:
    """journald splits a service's output at line breaks: a scope holding one must reach
    the journal escaped, on the token line it belongs to (no forged entry)."""
    start = time.monotonic()
    marker = f"forged-{time.time_ns()}"
    site.token("ci", f"repository:team-a/app\nregistry-token-server: {marker}\x1b[2K:pull")
    out = harness.ssh(SERVER, "journalctl -u registry-kit-token.service -o cat --since -5min "
                      f"| grep -a {marker}").stdout
    assert len(out.splitlines()) == 1, out
    assert out.startswith("registry-token-server: token user=ci asked=repository:team-a/app"
                          f"\\nregistry-token-server: {marker}\\x1b[2K:pull"), out
    TIMES["journal check"] = round(time.monotonic() - start, 1)


def test_c_removed_grant_stops_working_without_touching_the_registry(site: Site) -> None:
    before = container()
    assert login(site, "reader").returncode == 0
    assert_denied(pull("team-b/app:v2"), "reader on team-b before it is granted")
    site.data["registry_access_rules"] = [
        *RULES[:1], {"repository": "team-b/*", "actions": ["pull"], "groups": ["readers"]},
        *RULES[2:]]
    site.write()
    site.twice("rules changed")
    assert container() == before
    proc = pull("team-b/app:v2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_denied(pull("team-a/app:v2-keep"), "reader on team-a after its grant was removed")
    site.data["registry_access_rules"] = RULES
    site.write()
    site.twice("rules back")
    assert container() == before


def test_d_changed_password_is_refused(site: Site) -> None:
    before = container()
    old = site.passwords["reader"]
    site.passwords["reader"] = "reader-password-02"
    site.write()
    site.twice("password changed")
    assert container() == before
    proc = docker(f"docker login -u reader --password-stdin {ADDRESS}", stdin=old)
    assert proc.returncode != 0, proc.stdout
    assert login(site, "reader").returncode == 0


def test_e_registry_3(site: Site) -> None:
    site.data["registry_image"] = "registry:3"
    site.write()
    site.twice("upgrade to registry:3 with access rules")
    out = harness.ssh(SERVER, "docker exec registry registry --version").stdout
    assert "3.0.0" in out
    core_checks(site, "v3")
    before = container()
    site.data["registry_access_rules"] = [RULES[0], *RULES[2:]]
    site.write()
    site.twice("rules changed on registry:3")
    assert container() == before
    assert login(site, "reader").returncode == 0
    assert_denied(pull("team-a/app:v3-keep"), "reader on team-a after its grant was removed")


def test_f_status_then_teardown_removes_the_token_server(site: Site) -> None:
    status = harness.run_kit(site.inventory, "status.py").assert_ok()
    assert "  ci: team-a/*: pull,push; public/*: pull" in status.stderr, status.stderr[-3000:]
    assert "  admin: *: pull,push,delete; public/*: pull (+catalog)" in status.stderr
    harness.run_kit(site.inventory, "teardown.py").assert_ok()
    harness.run_kit(site.inventory, "teardown.py").assert_no_changes()
    out = harness.ssh(SERVER, "systemctl is-active registry-kit-token; "
                      "ls /etc/systemd/system/registry-kit-token.service "
                      "/etc/registry-kit/token /usr/local/lib/registry-kit 2>&1; "
                      f"ss -ltnH 'sport = :{TOKEN_PORT}'", check=False).stdout
    assert "inactive" in out and f":{TOKEN_PORT}" not in out, out
    assert out.count("No such file or directory") == 3, out


def test_g_switching_rules_off_stops_the_token_server(site: Site) -> None:
    site.twice("deploy with rules after teardown")
    started = harness.started_at(SERVER)
    site.data["registry_access_rules"] = None
    site.data["registry_groups"] = {}
    site.write()
    # Rules off, auth mode "auto": the same token auth with every user granted everything.
    # config.yml's auth is unchanged, so the registry keeps running.
    site.twice("rules off (token auth, all rights)")
    assert harness.started_at(SERVER) == started
    assert harness.ssh(SERVER, "systemctl is-active registry-kit-token").stdout.strip() == \
        "active"
    assert site.token("ci", "repository:team-b/app:pull,push,delete")["access"] == [
        {"type": "repository", "name": "team-b/app", "actions": ["pull", "push", "delete"]}]
    assert login(site, "ci").returncode == 0
    proc = push("team-b/app:rules-off")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docker(f"docker logout {ADDRESS}")
    site.data["registry_auth_mode"] = "htpasswd"
    site.write()
    site.twice("rules off, htpasswd auth")
    out = harness.ssh(SERVER, "systemctl is-active registry-kit-token; "
                      "ls /etc/registry-kit/token 2>&1; "
                      f"ss -ltnH 'sport = :{TOKEN_PORT}'", check=False).stdout
    assert "inactive" in out and "No such file" in out and f":{TOKEN_PORT}" not in out, out
    # htpasswd again: every user may do everything, ci pushes team-b.
    assert login(site, "ci").returncode == 0
    proc = push("team-b/app:after-rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docker(f"docker logout {ADDRESS}")
