"""Hostile setting values on real lab hosts (issue 12): each is refused before any host is
touched, or deployed and torn down with no injected command run and no system folder
changed.

Every injection in these values would `touch` a canary file (on the hosts or the control
machine); the canary must never exist. System folders (/etc/ssl/certs, /var/lib, /usr,
/etc, /srv) are fingerprinted by mode, owner and names (and the CA bundle by content)
before and after. Refused values must stop the run with exactly one line
"HOST: setting KEY=VALUE is not allowed: ..." and change nothing on either host (the same
ctime-against-a-marker check as test_bad_input). Accepted values go through a whole deploy
(applied twice: the second run changes nothing), checked with curl, the docker CLI and the
files on the hosts, then a teardown with purge (also twice).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
import yaml
from test_bad_input import MARKER, host_changes

pytestmark = pytest.mark.e2e

SERVER, CLIENT = "lab-reg", "lab-client1"
DOMAIN = "registry.lab"
CANARY = "/tmp/registry-kit-canary"
INJECT = f"touch {CANARY}"
NOT_ALLOWED = "is not allowed:"
# Mode, owner, group and name of every entry (no times: a live system changes those).
FINGERPRINT = (
    "for d in /etc/ssl/certs /etc/ssl /var/lib /usr /etc /srv /var; do "
    "echo \"== $d $(stat -c '%a %U %G' \"$d\")\"; "
    "find \"$d\" -mindepth 1 -maxdepth 1 -printf '%m %u %g %p\\n' | sort; done; "
    "find /etc/ssl/certs -printf '%m %u %g %p %l\\n' | sort | sha256sum; "
    "sha256sum /etc/ssl/certs/ca-certificates.crt"
)
# Entries that a deploy or a running system adds on its own, not the kit's doing to them.
LIVE = ("/var/lib/docker", "/var/lib/containerd", "/var/lib/systemd", "/var/lib/apt",
        "/var/lib/dpkg", "/var/lib/registry-kit", "/etc/docker", "/etc/registry-kit",
        "/var/cache", "/var/log", "/var/tmp", "/etc/ld.so.cache", "/etc/registry-kit-client",
        "/usr/local", "/etc/systemd", "/srv/rk-hostile", "/etc/rk-hostile", "/var/backups",
        "/etc/hosts", "/etc/ssl/certs/ca-certificates.crt")


def fingerprint(name: str) -> list[str]:
    lines = harness.ssh(name, FINGERPRINT).stdout.splitlines()
    return [line for line in lines if not any(f" {path}" in line for path in LIVE)]


def canaries() -> dict[str, bool]:
    found = {name: harness.ssh(name, f"test -e {CANARY}", check=False).returncode == 0
             for name in (SERVER, CLIENT)}
    found["control"] = Path(CANARY).exists()
    return found


def _secret_file(tmp: Path, name: str, value: str) -> str:
    path = tmp / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def _with_file(key: str, content: str) -> Callable[[Path], dict[str, Any]]:
    def data(tmp: Path) -> dict[str, Any]:
        return {key: {"file": _secret_file(tmp, "secret", content)}}
    return data


def _user_named(name: str) -> Callable[[Path], dict[str, Any]]:
    def data(tmp: Path) -> dict[str, Any]:
        return {"registry_users": [{"name": name,
                                    "password_file": _secret_file(tmp, "pw", "pw-1234")}],
                "registry_client_login_user": None}
    return data


# (id, data, the key the one line names). Issue 12's list first, then ten more.
REFUSED: list[tuple[str, dict[str, Any] | Callable[[Path], dict[str, Any]], str]] = [
    ("config-dir-quote", {"registry_config_dir": f"/etc/rk';{INJECT};'"}, "registry_config_dir"),
    ("repo-url-subshell", {"docker_install_method": "docker-ce",
                           "docker_ce_repo_url": f"https://x/$({INJECT})"},
     "docker_ce_repo_url"),
    ("extra-ip-scope-newline", {"registry_tls_extra_ips": ["fe80::1%eth0\nbind 0.0.0.0"]},
     "registry_tls_extra_ips"),
    ("internal-address-scope", {"registry_internal_address": "fe80::1%x\nlisten evil"},
     "registry_internal_address"),
    ("hosts-entry-scope", {"registry_client_hosts_entries": {DOMAIN: "fe80::1%lo"}},
     "registry_client_hosts_entries"),
    ("data-dir-mount-option", {"registry_data_dir": "/srv/reg,source=/etc"},
     "registry_data_dir"),
    ("user-newline", _user_named("ci\n"), "registry_users"),
    ("image-newline", {"registry_image": "registry:2\n"}, "registry_image"),
    ("container-newline", {"registry_container_name": "registry\n"},
     "registry_container_name"),
    ("schedule-newline", {"registry_gc_schedule": f"weekly\nExecStartPre=/bin/sh -c '{INJECT}'"},
     "registry_gc_schedule"),
    ("http-secret-yaml-lines", _with_file("registry_http_secret", "x\nauth: {}"),
     "registry_http_secret"),
    ("cache-password-yaml-lines", _with_file("registry_cache_password",
                                             "abcdefghijklmnop\nauth: {}"),
     "registry_cache_password"),
    ("config-dir-etc-ssl", {"registry_config_dir": "/etc/ssl"}, "registry_config_dir"),
    ("data-dir-var-lib", {"registry_data_dir": "/var/lib"}, "registry_data_dir"),
    ("no-users", {"registry_users": [], "registry_client_login_user": None}, "registry_users"),
    ("storage-rootdirectory", {"registry_storage": {"driver": "filesystem",
                                                    "rootdirectory": "/tmp/registry"}},
     "registry_storage"),
    # --- ten more
    ("domain-line-separator", {"registry_domain": "registry.lab\u2028auth: {}"},
     "registry_domain"),
    ("schedule-specifier", {"registry_gc_schedule": "%n"}, "registry_gc_schedule"),
    ("maxmemory-newline", {"registry_cache_maxmemory": "1mb\nbind 0.0.0.0"},
     "registry_cache_maxmemory"),
    ("mirror-subshell", {"docker_registry_mirrors": [f"http://m.lab/$({INJECT})"]},
     "docker_registry_mirrors"),
    ("container-semicolon", {"registry_container_name": f"registry;{INJECT}"},
     "registry_container_name"),
    ("image-extra-flag", {"registry_image": "registry:2 --privileged"}, "registry_image"),
    ("data-dir-nul", {"registry_data_dir": "/srv/reg\x00/etc"}, "registry_data_dir"),
    ("hosts-entry-two-lines", {"registry_client_hosts_entries": {DOMAIN: "10.0.0.1\n6.6.6.6 x"}},
     "registry_client_hosts_entries"),
    ("debug-addr-newline", {"registry_debug_addr": "127.0.0.1:5001\n"}, "registry_debug_addr"),
    ("bind-address-words", {"registry_bind_address": f"0.0.0.0 -v /:/host; {INJECT}"},
     "registry_bind_address"),
    ("extra-name-wildcard", {"registry_tls_extra_names": ["*.example.com"]},
     "registry_tls_extra_names"),
    ("data-dir-usr", {"registry_data_dir": "/usr/lib/registry"}, "registry_data_dir"),
    ("config-dir-docker", {"registry_config_dir": "/etc/docker"}, "registry_config_dir"),
    ("storage-key-yaml", {"registry_storage": {"driver": "s3", "bucket": "b", "region": "r",
                                               "a: b\nc": "d"}}, "registry_storage"),
]


@pytest.fixture(scope="module")
def baseline(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[dict[str, Any]]:
    """Both hosts deployed with good settings, no canary anywhere, the fingerprints."""
    for name in (SERVER, CLIENT):
        harness.ssh(name, f"rm -f {CANARY}")
    Path(CANARY).unlink(missing_ok=True)
    good = tmp_path_factory.mktemp("hostile-good")
    inventory = harness.write_inventory(good / "inventory.py", servers=[SERVER],
                                        clients=[CLIENT], data=good_data(good))
    harness.run_kit(inventory).assert_ok()
    yield {"fingerprints": {name: fingerprint(name) for name in (SERVER, CLIENT)}}


def good_data(tmp: Path) -> dict[str, Any]:
    return {"registry_domain": DOMAIN, "registry_client_login_user": "ci",
            "registry_users": [{"name": "ci", "password_file": _secret_file(tmp, "ci.pw",
                                                                             "ci-pw-77")}]}


def run_deploy(inventory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([harness.PYINFRA, "-y", *extra, str(inventory), "deploy.py"],
                          cwd=harness.ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))


def test_refused_values_stop_before_any_host_is_touched(baseline: dict[str, Any],
                                                        tmp_path: Path) -> None:
    for name in (SERVER, CLIENT):
        harness.ssh(name, f"touch {MARKER}")
    before = {name: host_changes(name)[1] for name in (SERVER, CLIENT)}
    tried = 0
    for case_id, data, key in REFUSED:
        tmp = tmp_path / case_id
        tmp.mkdir()
        values = data(tmp) if callable(data) else dict(data)
        inventory = harness.write_inventory(tmp / "inventory.py", servers=[SERVER],
                                            clients=[CLIENT],
                                            data={**good_data(tmp), **values})
        proc = run_deploy(inventory)
        output = proc.stdout + proc.stderr
        lines = [line for line in output.splitlines() if NOT_ALLOWED in line]
        assert proc.returncode != 0, f"{case_id}: not refused\n{output}"
        assert "Traceback" not in output, f"{case_id}\n{output}"
        assert len(lines) == 1, f"{case_id}: wanted one line\n{output}"
        assert lines[0].startswith((f"{SERVER}: setting {key}=", f"{CLIENT}: setting {key}=")), \
            f"{case_id}: {lines[0]}"
        assert "Starting operation" not in output, f"{case_id}: an operation ran\n{output}"
        tried += 1
    print(f"{tried} hostile values refused")
    for name in (SERVER, CLIENT):
        changed, now = host_changes(name)
        assert changed == [], f"{name}: changed by runs that should have stopped: {changed}"
        assert now == before[name], f"{name}: containers or images changed"
        assert fingerprint(name) == baseline["fingerprints"][name]
    assert not any(canaries().values()), canaries()


# Values that are allowed and must be harmless all the same.
# (bcrypt takes at most 72 bytes: one injection of each kind.)
HOSTILE_PASSWORD = f"a'b\"$({INJECT})%,;|`x`\\h #i"
HOSTILE_SECRET = f"x: {{auth: none}} # $({INJECT}) '\"%{{}}[],&*!|>"
HOSTILE_DATA_DIR = "/srv/rk-hostile@1+x_y.z-w"
HOSTILE_CONFIG_DIR = "/etc/rk-hostile+1"
HOSTILE_CONTAINER = "rk-hostile.1_x"


def _curl_status(password: str | None) -> int:
    """/v2/ from the control machine with the kit's CA; credentials in a curl config file,
    escaped as curl's config syntax asks (never on the command line), and under token auth
    a token for them from the token server (harness.curl_docker)."""
    ip = harness.host_ip(SERVER)
    args = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            "--resolve", f"{DOMAIN}:5000:{ip}", "--cacert", str(harness.CA_CERT),
            f"https://{DOMAIN}:5000/v2/"]
    if password is None:
        out = subprocess.run(["curl", *args], capture_output=True, text=True,
                             timeout=30).stdout
    else:
        escaped = password.replace("\\", "\\\\").replace('"', '\\"')
        out = harness.curl_docker(args, user="ci", password=escaped, ip=ip).stdout
    return int(out or 0)


def test_accepted_hostile_values_deploy_and_tear_down_harmlessly(
        baseline: dict[str, Any], tmp_path: Path) -> None:
    ip = harness.host_ip(SERVER)
    data = {
        "registry_domain": DOMAIN, "registry_client_login_user": "ci",
        "registry_users": [{"name": "ci", "password_file": _secret_file(
            tmp_path, "ci.pw", HOSTILE_PASSWORD)}],
        "registry_http_secret": {"file": _secret_file(tmp_path, "http", HOSTILE_SECRET)},
        "registry_data_dir": HOSTILE_DATA_DIR, "registry_config_dir": HOSTILE_CONFIG_DIR,
        "registry_container_name": HOSTILE_CONTAINER, "registry_bind_address": ip,
        "registry_client_hosts_entries": {DOMAIN: ip},
    }
    inventory = harness.write_inventory(tmp_path / "inventory.py", servers=[SERVER],
                                        clients=[CLIENT], data=data)
    # The baseline's registry holds port 5000 on every address: take it away first.
    harness.ssh(SERVER, "docker rm -f registry >/dev/null 2>&1; true")
    try:
        harness.run_kit(inventory).assert_ok()
        harness.run_kit(inventory).assert_no_changes()

        # The values arrived whole and did nothing else.
        assert _curl_status(None) == 401
        assert _curl_status(HOSTILE_PASSWORD) == 200
        assert _curl_status(HOSTILE_PASSWORD + "x") == 401
        config = yaml.safe_load(harness.ssh(
            SERVER, f"cat {HOSTILE_CONFIG_DIR}/config.yml").stdout)
        assert config["http"]["secret"] == HOSTILE_SECRET
        assert "auth" in config and set(config["auth"]) == {"token"}  # users: token auth
        assert set(config) <= {"version", "log", "storage", "http", "auth", "health", "redis"}
        htpasswd = harness.ssh(SERVER, f"cat {HOSTILE_CONFIG_DIR}/auth/htpasswd").stdout
        assert len(htpasswd.splitlines()) == 1 and htpasswd.startswith("ci:$2y$")
        bindings = harness.ssh(SERVER, "docker inspect -f '{{json .HostConfig.PortBindings}}' "
                               f"{HOSTILE_CONTAINER}").stdout
        assert f'"HostIp":"{ip}"' in bindings and '"HostIp":""' not in bindings, bindings
        mounts = harness.ssh(SERVER, "docker inspect -f '{{range .Mounts}}{{.Source}} "
                             f"{{{{end}}}}' {HOSTILE_CONTAINER}").stdout.split()
        assert sorted(mounts) == sorted([HOSTILE_CONFIG_DIR, HOSTILE_DATA_DIR]), mounts
        hosts = harness.ssh(CLIENT, "cat /etc/hosts").stdout
        assert f"{ip} {DOMAIN} # registry-kit" in hosts
        # docker login with that password worked: the client pushes and pulls.
        push = harness.ssh(CLIENT, f"docker pull -q busybox >/dev/null && docker tag busybox "
                           f"{DOMAIN}:5000/hostile/box:1 && docker push -q "
                           f"{DOMAIN}:5000/hostile/box:1 && docker rmi -f "
                           f"{DOMAIN}:5000/hostile/box:1 >/dev/null && docker pull -q "
                           f"{DOMAIN}:5000/hostile/box:1", check=False)
        assert push.returncode == 0, push.stdout + push.stderr
        assert not any(canaries().values()), canaries()

        teardown = ("teardown.py", "--data", "registry_purge_data=True")
        harness.run_kit(inventory, *teardown).assert_ok()
        harness.run_kit(inventory, *teardown).assert_no_changes()
        gone = harness.ssh(SERVER, f"ls -d {HOSTILE_DATA_DIR} {HOSTILE_CONFIG_DIR} 2>&1; "
                           f"docker ps -a --format '{{{{.Names}}}}'", check=False).stdout
        assert "No such file" in gone and HOSTILE_CONTAINER not in gone, gone
    finally:
        harness.ssh(CLIENT, f"docker rmi -f {DOMAIN}:5000/hostile/box:1 >/dev/null 2>&1; true")
    assert not any(canaries().values()), canaries()
    for name in (SERVER, CLIENT):
        assert fingerprint(name) == baseline["fingerprints"][name], name
