"""Security on real lab hosts: secrets, file modes, the CA key, and who gets in.

Secrets: a deploy that uploads every secret (new passwords, the server key and config.yml
removed first) runs with -vv --debug while a sampler on each host records `ps -eo args`
about 20 times a second; no password, private-key line or http secret may appear in the
output, in any argv, or in any file on the hosts (bcrypt hashes in htpasswd excepted).
Access is checked from the control machine with curl: 401 without or with wrong
credentials, no answer over plain HTTP, TLS 1.0/1.1 refused (with a client that can speak
them: shown against a local openssl s_server), and a user removed from the settings is
refused after the next run.
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import harness
import pytest

from lab import state as lab_state

pytestmark = pytest.mark.e2e

SERVER = "lab-reg"
CLIENT = "lab-client1"
DOMAIN = "registry.lab"
PORT = 5000
CONFIG_DIR = "/etc/registry-kit"
STATE_DIR = harness.STATE_DIR
# Where a leaked secret could land on a host (the list plus the kit's own folders).
SEARCHED = "/etc /root /run /var/lib/registry-kit /tmp /var/tmp /usr/local /home"
SAMPLES_MAX = 4000  # bounds the sampler: at most ~4000 x 50 ms per host
# The one place the password lives on a client in a reversible form: Docker's own
# credential store after `docker login` (base64 of user:password, root only).
DOCKER_CREDENTIALS = "/root/.docker/config.json"
SECRET_OPS = ("Upload the server private key", "Upload htpasswd (bcrypt)",
              "Upload the registry config.yml", "Check /v2/: 401 without, 200 with credentials",
              f"docker login to {DOMAIN}:{PORT}")


class Site:
    """Scenario settings with fresh random passwords; write() renders the inventory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.py"
        self.passwords = {name: f"{name}-{secrets.token_urlsafe(18)}" for name in ("alice", "bob")}
        self.users = ["alice", "bob"]

    def write(self) -> Path:
        users = []
        for name in self.users:
            path = self.dir / f"{name}.password"
            path.write_text(self.passwords[name] + "\n")
            path.chmod(0o600)
            users.append({"name": name, "password_file": str(path)})
        return harness.write_inventory(
            self.inventory, servers=[SERVER], clients=[CLIENT],
            data={"registry_domain": DOMAIN, "registry_port": PORT,
                  "registry_client_login_user": "alice", "registry_users": users})

    def status(self, user: str | None = None, password: str | None = None) -> int:
        return harness.curl_status(DOMAIN, harness.host_ip(SERVER), PORT, user=user,
                                   password=password)


class ArgvSampler:
    """`ps -eo args` on lab hosts in a loop over one SSH session each, written to local
    files (a pipe left unread would stall the loop). Bounded by SAMPLES_MAX and stopped
    by terminating the ssh clients this object started."""

    def __init__(self, hosts: list[str], directory: Path) -> None:
        self.hosts = hosts
        self.dir = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> ArgvSampler:
        state = lab_state.load()
        loop = (f"i=0; while [ $i -lt {SAMPLES_MAX} ]; do ps -eo args; echo @@sample; "
                "sleep 0.05; i=$((i+1)); done")
        for name in self.hosts:
            out = (self.dir / f"argv-{name}.txt").open("wb")
            self.procs[name] = subprocess.Popen(
                ["ssh", "-i", state["key"], "-p", str(state["hosts"][name]["port"]),
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "root@127.0.0.1", loop],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL)
            out.close()
        time.sleep(1)  # the first samples are in before the run starts
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # the last commands of the run are sampled too
        for proc in self.procs.values():
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def output(self, name: str) -> str:
        return (self.dir / f"argv-{name}.txt").read_text(errors="replace")


def pem_body_lines(path: Path) -> list[str]:
    """The base64 lines of a PEM file (what a leak of the key would contain)."""
    return [line for line in path.read_text().splitlines()
            if line and not line.startswith("-----")]


def hosts_grep(name: str, patterns: list[str], *, exclude: str = "") -> list[str]:
    """Files on a host that contain any of the fixed strings (patterns sent on stdin, so
    they never show in the host's argv either)."""
    skip = f" | grep -v -x -F {shlex.quote(exclude)}" if exclude else ""
    proc = harness.ssh(name, f"grep -rlIF -f - {SEARCHED} 2>/dev/null{skip}; true",
                       stdin="\n".join(patterns) + "\n")
    return proc.stdout.split()


def ops_that_changed(output: str, names: tuple[str, ...]) -> dict[str, int]:
    """From the results table of a pyinfra run: how many hosts each operation changed."""
    changed = {}
    for name in names:
        match = re.search(rf"^\s+{re.escape(name)}\s+\d+\s+(\d+|-)\s", output, re.MULTILINE)
        changed[name] = int(match[1]) if match and match[1] != "-" else 0
    return changed


@pytest.fixture(scope="module")
def site(lab: dict[str, Any]) -> Iterator[Site]:
    with tempfile.TemporaryDirectory(prefix="rk-security-") as tmp:
        site = Site(Path(tmp))
        site.write()
        yield site


@pytest.fixture(scope="module")
def secret_run(site: Site) -> dict[str, Any]:
    """The deploy under observation, with everything secret uploaded during it."""
    # Earlier runs may have converged these hosts: make the run upload every secret.
    harness.ssh(SERVER, f"rm -f {CONFIG_DIR}/certs/server.key {CONFIG_DIR}/config.yml")
    with ArgvSampler([SERVER, CLIENT], site.dir) as sampler:
        proc = subprocess.run([harness.PYINFRA, "-y", "-vv", "--debug", str(site.inventory),
                               "deploy.py"], cwd=harness.ROOT, capture_output=True, text=True,
                              timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return {"output": output, "argv": {name: sampler.output(name) for name in sampler.hosts}}


def secret_strings(site: Site) -> dict[str, str]:
    """Every secret of the scenario, by what it is."""
    found = {f"password of {name}": pw for name, pw in site.passwords.items()}
    found.update({f"base64 of {name}:password": base64.b64encode(f"{name}:{pw}".encode())
                  .decode() for name, pw in site.passwords.items()})
    for label, path in (("CA key", STATE_DIR / "ca" / "ca.key"),
                        ("server key", STATE_DIR / "servers" / DOMAIN / "server.key")):
        for i, line in enumerate(pem_body_lines(path)):
            found[f"{label} line {i + 1}"] = line
    found["http secret"] = (STATE_DIR / "secrets" / f"http-secret-{DOMAIN}").read_text().strip()
    return found


def test_secret_run_uploaded_every_secret(secret_run: dict[str, Any]) -> None:
    # Otherwise the checks below would pass on a run that had nothing secret to send.
    changed = ops_that_changed(secret_run["output"], SECRET_OPS)
    assert all(changed.values()), changed


def test_no_secret_in_verbose_output(site: Site, secret_run: dict[str, Any]) -> None:
    output = secret_run["output"]
    assert "Running command on" in output  # -vv --debug really printed the commands
    leaked = [what for what, value in secret_strings(site).items() if value in output]
    assert leaked == [], f"in the -vv --debug output: {leaked}"


def test_no_secret_in_any_argv_on_the_hosts(site: Site, secret_run: dict[str, Any]) -> None:
    for name, samples in secret_run["argv"].items():
        count = samples.count("@@sample")
        assert count >= 20, f"{name}: only {count} samples"
        leaked = [what for what, value in secret_strings(site).items() if value in samples]
        assert leaked == [], f"{name}: in a process's argv: {leaked}"
    # The sampler saw the run's own commands on each host (any one of them is enough to
    # show it sampled while the run worked there).
    for name, seen_one_of in ((SERVER, ("verify-auth.sh", "@@registry-kit:", "mv -f /etc/")),
                              (CLIENT, ("docker login", "@@registry-kit:", "login.pw"))):
        samples = secret_run["argv"][name]
        assert any(mark in samples for mark in seen_one_of), f"{name}: run not sampled"


def test_passwords_on_hosts_only_as_bcrypt_hashes(site: Site,
                                                  secret_run: dict[str, Any]) -> None:
    patterns = list(site.passwords.values())
    # base64 of user:password (HTTP basic auth, Docker's config.json) is the same secret.
    patterns += [base64.b64encode(f"{n}:{p}".encode()).decode() for n, p in
                 site.passwords.items()]
    for name in (SERVER, CLIENT):
        assert hosts_grep(name, patterns, exclude=DOCKER_CREDENTIALS) == [], name
    htpasswd = harness.ssh(SERVER, f"cat {CONFIG_DIR}/auth/htpasswd").stdout
    entries = dict(line.split(":", 1) for line in htpasswd.splitlines()
                   if line and not line.startswith("#"))
    assert set(entries) == {"alice", "bob"}
    for user, hashed in entries.items():
        assert re.match(r"^\$2[aby]\$\d\d\$", hashed), hashed
        assert bcrypt.checkpw(site.passwords[user].encode(), hashed.encode())
    # Runtime copies (the health check's curl config, the login password) are gone.
    leftovers = harness.ssh(SERVER, "ls -A /run/registry-kit 2>/dev/null; true").stdout.split()
    leftovers += harness.ssh(CLIENT, "ls -A /run/registry-kit 2>/dev/null; true").stdout.split()
    assert leftovers == []


def test_ca_key_never_leaves_the_control_machine(secret_run: dict[str, Any]) -> None:
    ca_lines = pem_body_lines(STATE_DIR / "ca" / "ca.key")
    for name in (SERVER, CLIENT):
        assert hosts_grep(name, ca_lines) == [], f"{name} holds the CA private key"
    # The same search finds the server key where it belongs: the search itself works.
    server_lines = pem_body_lines(STATE_DIR / "servers" / DOMAIN / "server.key")
    # With users, token auth is the default: the token server serves TLS with its own copy,
    # made at each start in its runtime folder, readable by its dynamic user only.
    copy = "/run/registry-kit-token/server.key"
    assert sorted(hosts_grep(SERVER, server_lines)) == [f"{CONFIG_DIR}/certs/server.key", copy]
    mode = harness.ssh(SERVER, f"stat -c '%a %U' {copy} /run/registry-kit-token").stdout.split()
    assert mode[0] in ("400", "600") and mode[1] != "root" and mode[2][-1] == "0", mode


def test_modes_and_owners_on_the_server(secret_run: dict[str, Any]) -> None:
    paths = [f"{CONFIG_DIR}/certs/server.key", f"{CONFIG_DIR}/auth/htpasswd",
             f"{CONFIG_DIR}/config.yml", CONFIG_DIR, f"{CONFIG_DIR}/certs", f"{CONFIG_DIR}/auth"]
    out = harness.ssh(SERVER, "stat -c '%a %U %G %n' " + " ".join(paths)).stdout
    found = {line.split()[3]: line.split()[:3] for line in out.splitlines()}
    for path, (_mode, owner, group) in found.items():
        assert (owner, group) == ("root", "root"), (path, owner, group)
    assert found[f"{CONFIG_DIR}/certs/server.key"][0] == "600"
    assert found[f"{CONFIG_DIR}/auth/htpasswd"][0] in ("600", "640")
    assert int(found[f"{CONFIG_DIR}/config.yml"][0], 8) & ~0o640 == 0  # 0640 or tighter
    for folder in (CONFIG_DIR, f"{CONFIG_DIR}/certs", f"{CONFIG_DIR}/auth"):
        assert int(found[folder][0], 8) & 0o077 == 0, (folder, found[folder])
    client = harness.ssh(CLIENT, f"stat -c '%a %U' {DOCKER_CREDENTIALS} "
                         "/etc/registry-kit-client/login-*").stdout.split("\n")
    for line in filter(None, client):
        assert line.split() == ["600", "root"], line


def test_anonymous_and_wrong_password_get_401(site: Site, secret_run: dict[str, Any]) -> None:
    assert site.status() == 401
    assert site.status("alice", "not-" + site.passwords["alice"]) == 401
    assert site.status("nobody", site.passwords["alice"]) == 401
    assert site.status("alice", site.passwords["alice"]) == 200


def test_plain_http_to_the_tls_port_gets_nothing(site: Site,
                                                 secret_run: dict[str, Any]) -> None:
    status = harness.curl_status(DOMAIN, harness.host_ip(SERVER), PORT, tls=False)
    assert status not in (200, 401), status
    with_creds = harness.curl_status(DOMAIN, harness.host_ip(SERVER), PORT, tls=False,
                                     user="alice", password=site.passwords["alice"])
    assert with_creds not in (200, 401), with_creds


def _curl_tls(url: str, resolve: str | None, versions: list[str],
              cacert: str | None = None) -> subprocess.CompletedProcess[str]:
    # SECLEVEL=0: the control machine's OpenSSL refuses TLS < 1.2 by itself otherwise, and
    # the check would pass whatever the server does.
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            *versions, "--ciphers", "DEFAULT@SECLEVEL=0"]
    args += ["--resolve", resolve] if resolve else []
    args += ["--cacert", cacert] if cacert else ["-k"]
    return subprocess.run([*args, url], capture_output=True, text=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_old_tls_versions_are_refused(secret_run: dict[str, Any], tmp_path: Path) -> None:
    resolve = f"{DOMAIN}:{PORT}:{harness.host_ip(SERVER)}"
    url = f"https://{DOMAIN}:{PORT}/v2/"
    old = ["--tlsv1.0", "--tls-max", "1.1"]
    # This client does speak TLS 1.0/1.1: shown against a local server that offers them.
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-subj", "/CN=localhost", "-days", "1"], check=True, capture_output=True)
    port = _free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
                               str(crt), "-key", str(key), "-tls1_1", "-cipher",
                               "DEFAULT@SECLEVEL=0", "-www"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answered = None
        for _ in range(50):  # up to ~5 s for s_server to listen
            answered = _curl_tls(f"https://127.0.0.1:{port}/", None, old)
            if answered.returncode == 0:
                break
            time.sleep(0.1)
        assert answered is not None and answered.stdout == "200", answered
    finally:
        server.terminate()
        server.wait(timeout=10)
    refused = _curl_tls(url, resolve, old, str(harness.CA_CERT))
    assert refused.returncode != 0 and refused.stdout in ("", "000"), refused
    modern = _curl_tls(url, resolve, ["--tlsv1.2"], str(harness.CA_CERT))
    assert modern.returncode == 0 and modern.stdout == "401", modern


def test_removed_user_is_refused_after_the_next_run(site: Site,
                                                    secret_run: dict[str, Any]) -> None:
    assert site.status("bob", site.passwords["bob"]) == 200
    site.users = ["alice"]
    site.write()
    harness.run_kit(site.inventory).assert_ok()
    # The run restarts the token server (README: about a second without tokens); a token
    # request in that second gets no answer (0), so ask until it answers.
    deadline = time.monotonic() + 15
    while (code := site.status("bob", site.passwords["bob"])) == 0 and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert code == 401
    assert site.status("alice", site.passwords["alice"]) == 200
    harness.run_kit(site.inventory).assert_no_changes()
