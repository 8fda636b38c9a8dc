"""Bad input through the real CLI: `pyinfra -y INVENTORY deploy.py` with one bad setting
stops while loading deploy.py, before any operation, with a non-zero exit and exactly one
line "HOST: setting KEY=VALUE is not allowed: WHAT" (no traceback), and leaves the hosts as
they were: nothing under /etc, /usr, /var, /root, /tmp, /run/registry-kit changed (ctime
against a marker) and the same containers, started at the same time, and images.

The unit tests (tests/unit/test_settings.py) cover settings.load itself; this suite covers
what the operator sees: the CLI's output and exit code, and the hosts.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

pytestmark = pytest.mark.e2e

SERVER = "lab-reg"
CLIENT = "lab-client1"
DOMAIN = "registry.lab"
MARKER = "/var/tmp/registry-kit-bad-input.marker"
# Everything the kit could write to, minus what a live system changes by itself.
WATCHED = "/etc /usr /opt /srv /home /root /var /tmp /run/registry-kit"
# /var/backups: Debian's daily dpkg-db-backup.timer (a fresh lab image runs it soon after
# its first boot; CI saw it land inside one case's run).
NOISY = ("/var/log", "/var/lib/systemd", "/var/cache", "/var/lib/apt", "/var/backups", MARKER)
EXPIRED_ON = dt.datetime(2020, 1, 2, tzinfo=dt.UTC)
LONG_PASSWORD = "L" * 73  # one byte over bcrypt's limit
INLINE_SECRET = "inline-s3-secret-4471"
PLAIN_PASSWORD = "plain-password-9090"
EMPTY_ENV = "RK_BAD_INPUT_EMPTY"
LONG_ENV = "RK_BAD_INPUT_LONG"
UNSET_ENV = "RK_BAD_INPUT_NOT_SET"
GOOD_ENV = "RK_BAD_INPUT_GOOD"
GOOD_PASSWORD = "good-password-2"
FILE_PASSWORD = "good-password-1"


@dataclass(frozen=True)
class Case:
    id: str
    data: dict[str, Any] | Callable[[Path], dict[str, Any]]
    # The exact message; {tmp} is the case's folder of files on the control machine.
    message: str
    client_data: dict[str, Any] = field(default_factory=dict)  # for the client host only
    secrets: tuple[str, ...] = ()  # must not show in the output
    group_data: bool = False  # settings as conflicting group data, host in both groups


def _users(**entry: Any) -> dict[str, Any]:
    return {"registry_users": [{"name": "ci", **entry}]}


def _provided(cert: str, key: str = "good.key") -> Callable[[Path], dict[str, Any]]:
    return lambda tmp: {"registry_tls_mode": "provided",
                        "registry_tls_cert_file": str(tmp / cert),
                        "registry_tls_key_file": str(tmp / key),
                        "registry_tls_ca_file": str(tmp / "ca.crt")}


def _empty_password_file(tmp: Path) -> dict[str, Any]:
    (tmp / "empty.pw").write_text("")
    return _users(password_file=str(tmp / "empty.pw"))


_NOT_ALLOWED = " is not allowed: "


def _msg(host: str, key: str, value: str, allowed: str) -> str:
    return f"{host}: setting {key}={value}{_NOT_ALLOWED}{allowed}"


def _s(key: str, value: str, allowed: str) -> str:
    return _msg(SERVER, key, value, allowed)


PORTS = "a whole number from 1 to 65535"
DOMAIN_RULE = "a DNS name or IP address, without scheme, port, path or spaces"
IMAGE_RULE = ("an image reference like registry:2, registry:2.8.3 or "
              "host:5000/library/registry@sha256:<64 hex>")
SYSTEM_DIR = ("a folder of the registry's own, not one the operating system or other software "
              "owns (e.g. /srv/registry, /var/lib/registry-kit/data)")
ABSOLUTE = ("an absolute path of letters, digits and . _ @ + - between slashes, without '.' "
            "or '..' parts")

CASES = [
    Case("port-0", {"registry_port": 0}, _s("registry_port", "0", PORTS)),
    Case("port-70000", {"registry_port": 70000}, _s("registry_port", "70000", PORTS)),
    Case("port-abc", {"registry_port": "abc"}, _s("registry_port", "'abc'", PORTS)),
    Case("domain-scheme", {"registry_domain": "https://registry.lab"},
         _s("registry_domain", "'https://registry.lab'", DOMAIN_RULE)),
    Case("domain-path", {"registry_domain": "registry.lab/v2"},
         _s("registry_domain", "'registry.lab/v2'", DOMAIN_RULE)),
    Case("domain-spaces", {"registry_domain": "registry lab"},
         _s("registry_domain", "'registry lab'", DOMAIN_RULE)),
    Case("domain-port", {"registry_domain": "registry.lab:5000"},
         _s("registry_domain", "'registry.lab:5000'", DOMAIN_RULE)),
    Case("tls-cert-missing", _provided("missing.crt"),
         _s("registry_tls_cert_file", "'{tmp}/missing.crt'",
            "an existing file on the control machine ({tmp}/missing.crt)")),
    Case("tls-key-missing", {"registry_tls_mode": "provided",
                             "registry_tls_cert_file": "/etc/hostname"},
         _s("registry_tls_key_file", "None",
            "a certificate/key file path when registry_tls_mode='provided'")),
    Case("tls-key-mismatch", _provided("good.crt", key="other.key"),
         _s("registry_tls_cert_file", "'{tmp}/good.crt'",
            "{tmp}/other.key: private key does not match the certificate in {tmp}/good.crt")),
    Case("tls-cert-expired", _provided("expired.crt"),
         _s("registry_tls_cert_file", "'{tmp}/expired.crt'",
            "{tmp}/expired.crt: certificate expired on 2020-01-02 00:00 UTC")),
    Case("tls-san-misses-domain", _provided("elsewhere.crt"),
         _s("registry_tls_cert_file", "'{tmp}/elsewhere.crt'",
            "{tmp}/elsewhere.crt: certificate names (elsewhere.lab) do not cover "
            "'registry.lab'")),
    Case("user-colon", {"registry_users": [{"name": "ci:admin", "password_env": GOOD_ENV}]},
         _s("registry_users", "'ci:admin'",
            "a user name of letters, digits, '.', '_', '@', '-' (no ':')")),
    Case("password-empty-file", _empty_password_file,
         _s("registry_users", "'<empty>'",
            "user 'ci': password from password_file='{tmp}/empty.pw' must not be empty")),
    Case("password-empty-env", _users(password_env=EMPTY_ENV),
         _s("registry_users", "'<empty>'",
            f"user 'ci': password from password_env='{EMPTY_ENV}' must not be empty")),
    Case("password-73-bytes", _users(password_env=LONG_ENV),
         _s("registry_users", "'<73 bytes>'",
            f"user 'ci': password from password_env='{LONG_ENV}' must be at most 72 bytes "
            "(bcrypt's limit)"), secrets=(LONG_PASSWORD,)),
    Case("password-env-unset", _users(password_env=UNSET_ENV),
         _s("registry_users", f"'{UNSET_ENV}'", "an environment variable that is set")),
    Case("password-plain", _users(password=PLAIN_PASSWORD),
         _s("registry_users", "'***'",
            "user 'ci': password_env, password_file or password_hash (plain passwords need "
            "registry_allow_plain_passwords=True)"), secrets=(PLAIN_PASSWORD,)),
    Case("user-twice", {"registry_users": [{"name": "ci", "password_env": GOOD_ENV},
                                           {"name": "ci", "password_env": GOOD_ENV}]},
         _s("registry_users", "'ci'", "each user name once")),
    Case("storage-unknown-driver", {"registry_storage": {"driver": "ftp"}},
         _s("registry_storage", "'ftp'", "driver one of filesystem, s3, azure, gcs, inmemory")),
    Case("s3-no-bucket", {"registry_storage": {"driver": "s3", "region": "eu-west-1"}},
         _s("registry_storage", "{'driver': 's3', 'region': 'eu-west-1'}",
            "s3 storage needs 'bucket'")),
    Case("s3-no-region", {"registry_storage": {"driver": "s3", "bucket": "images"}},
         _s("registry_storage", "{'driver': 's3', 'bucket': 'images'}",
            "s3 storage needs 'region'")),
    Case("s3-inline-secret", {"registry_storage": {"driver": "s3", "bucket": "images",
                                                   "region": "eu-west-1",
                                                   "secretkey": INLINE_SECRET}},
         _s("registry_storage", "'secretkey=***'",
            "s3 secretkey from secretkey_env or secretkey_file, never inline"),
         secrets=(INLINE_SECRET,)),
    Case("image-double-colon", {"registry_image": "registry::2"},
         _s("registry_image", "'registry::2'", IMAGE_RULE)),
    Case("image-uppercase", {"registry_image": "Registry:2"},
         _s("registry_image", "'Registry:2'", IMAGE_RULE)),
    Case("min-version-abc", {"docker_min_version": "abc"},
         _s("docker_min_version", "'abc'", "a version like 1.6.0")),
    Case("typo-port", {"registry_prot": 5000},
         _s("registry_prot", "5000", "unknown setting; did you mean registry_port?")),
    Case("typo-docker-key", {"docker_live_restor": True},
         _s("docker_live_restor", "True", "unknown setting; did you mean docker_live_restore?")),
    Case("tls-none-users-unacknowledged", {"registry_tls_mode": "none"},
         _s("registry_tls_mode", "'none'",
            "plain HTTP with users sends passwords in clear; set "
            "registry_tls_none_acknowledged=True or use TLS")),
    Case("data-dir-relative", {"registry_data_dir": "var/lib/registry"},
         _s("registry_data_dir", "'var/lib/registry'", ABSOLUTE)),
    Case("data-dir-dotdot", {"registry_data_dir": "/var/lib/../../etc"},
         _s("registry_data_dir", "'/var/lib/../../etc'", ABSOLUTE)),
    Case("data-dir-root", {"registry_data_dir": "/"},
         _s("registry_data_dir", "'/'", SYSTEM_DIR)),
    Case("config-dir-relative", {"registry_config_dir": "etc/registry-kit"},
         _s("registry_config_dir", "'etc/registry-kit'", ABSOLUTE)),
    Case("groups-conflict", {"registry_port": 5001},
         _s("registry_port", "5001", "one value; group registry_servers sets 5000 and group "
            "registry_clients sets 5001: set it for the host instead"), group_data=True),
    Case("log-level", {"registry_log_level": "verbose"},
         _s("registry_log_level", "'verbose'", "one of error, warn, info, debug")),
    Case("verify-timeout", {"registry_verify_timeout": 1},
         _s("registry_verify_timeout", "1", "a whole number from 5 to 600")),
    Case("debug-addr-public", {"registry_debug_addr": "0.0.0.0:5001"},
         _s("registry_debug_addr", "'0.0.0.0:5001'",
            "None or 127.0.0.1:PORT (1-65535, not registry_port)")),
    Case("login-user-unknown", {"registry_client_login_user": "bob"},
         _s("registry_client_login_user", "'bob'",
            "a name from registry_users with a password_env or password_file")),
    Case("install-method", {"docker_install_method": "snap"},
         _s("docker_install_method", "'snap'", "one of distro, docker-ce, none")),
    Case("mirror-without-scheme", {"docker_registry_mirrors": ["upstream.lab:5000"]},
         _s("docker_registry_mirrors", "'upstream.lab:5000'",
            "mirror URLs like https://mirror.example:5000")),
    Case("extra-ip", {"registry_tls_extra_ips": ["10.0.0"]},
         _s("registry_tls_extra_ips", "'10.0.0'", "IP addresses")),
    Case("delete-enabled-string", {"registry_delete_enabled": "yes"},
         _s("registry_delete_enabled", "'yes'", "True or False")),
    Case("container-name-space", {"registry_container_name": "my registry"},
         _s("registry_container_name", "'my registry'", "a Docker container name")),
    # A bad value on the client alone stops the whole run: the server is not touched either.
    Case("client-only-bad-version", {}, _msg(CLIENT, "docker_min_version", "'1.x'",
                                             "a version like 1.6.0"),
         client_data={"docker_min_version": "1.x"}),
    # Access rules (registry_kit.model.access): unknown user or group, a bad pattern, a push
    # granted to anonymous clients.
    *(Case(f"access-{name}", {"registry_access_rules": [rule]},
           _s("registry_access_rules", repr(rule), why))
      for name, rule, why in (
          ("unknown-user", {"repository": "team-a/*", "actions": ["pull"], "users": ["bob"]},
           "user 'bob' is not in registry_users"),
          ("unknown-group", {"repository": "team-a/*", "actions": ["pull"], "groups": ["qa"]},
           "group 'qa' is not in registry_groups"),
          ("bad-pattern", {"repository": "team-a/**/..", "actions": ["pull"], "users": ["ci"]},
           "repository pattern 'team-a/**/..': lowercase letters, digits, '.', '_', '-' and "
           "'*' in '/'-separated parts (like team-a/*, library/*, *)"),
          ("anonymous-push", {"repository": "public/*", "actions": ["pull", "push"],
                              "anonymous": True},
           "anonymous clients may only be granted pull (push and delete need a user)"))),
    Case("access-group-member", {"registry_groups": {"qa": ["ci", "eve"]},
                                 "registry_access_rules": []},
         _s("registry_groups", "{'qa': ['ci', 'eve']}",
            "group 'qa': user 'eve' is not in registry_users")),
]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _cert(subject_key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey,
          name: str, issuer: str, *, ca: bool, not_after: dt.datetime,
          sans: tuple[str, ...] = ()) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(subject_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(dt.datetime(2019, 1, 1, tzinfo=dt.UTC))
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_tls_files(tmp: Path) -> None:
    """A CA, a good leaf for DOMAIN with its key, another key, an expired leaf and a leaf
    for another name: the files an operator might hand over by mistake."""
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    ca_key, leaf_key = _key(), _key()
    pem = serialization.Encoding.PEM
    (tmp / "ca.crt").write_bytes(_cert(ca_key, ca_key, "bad-input CA", "bad-input CA", ca=True,
                                       not_after=later).public_bytes(pem))
    _write_key(tmp / "good.key", leaf_key)
    _write_key(tmp / "other.key", _key())
    for name, sans, not_after in (("good", (DOMAIN,), later),
                                  ("expired", (DOMAIN,), EXPIRED_ON),
                                  ("elsewhere", ("elsewhere.lab",), later)):
        cert = _cert(leaf_key, ca_key, sans[0], "bad-input CA", ca=False, not_after=not_after,
                     sans=sans)
        (tmp / f"{name}.crt").write_bytes(cert.public_bytes(pem))


def _snapshot_command() -> str:
    prune = " -o ".join(f"-path {path}" for path in NOISY)
    return (f"find {WATCHED} -xdev \\( {prune} \\) -prune -o -cnewer {MARKER} -print "
            "2>/dev/null | sort; echo @@docker; "
            "docker ps -aq --no-trunc 2>/dev/null | xargs -r docker inspect -f "
            "'{{.Name}} {{.Id}} {{.State.StartedAt}} {{.State.Running}}' 2>/dev/null | sort; "
            f"docker images -q --no-trunc 2>/dev/null | sort; touch {MARKER}")


def host_changes(name: str) -> tuple[list[str], str]:
    """(paths changed since the marker, containers and images) on one host; the marker
    moves to now, so each case is judged on its own run."""
    out = harness.ssh(name, _snapshot_command()).stdout
    files, _, docker_state = out.partition("@@docker\n")
    return files.split(), docker_state


@pytest.fixture(scope="module")
def hosts(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[dict[str, str]]:
    """Both hosts deployed with good settings (whatever earlier suites left: a deploy of a
    bad value would then have to change something), the marker, and their containers and
    images before any case."""
    good = tmp_path_factory.mktemp("good-settings")
    password_file = good / "ci.password"
    password_file.write_text(FILE_PASSWORD + "\n")
    harness.write_inventory(good / "inventory.py", servers=[SERVER], clients=[CLIENT], data={
        "registry_domain": DOMAIN, "registry_client_login_user": "ci",
        "registry_users": [{"name": "ci", "password_file": str(password_file)}]})
    harness.run_kit(good / "inventory.py").assert_ok()
    before = {}
    for name in (SERVER, CLIENT):
        harness.ssh(name, f"touch {MARKER}")
        before[name] = host_changes(name)[1]
    yield before
    for name in (SERVER, CLIENT):
        harness.ssh(name, f"rm -f {MARKER}", check=False)


def _group_inventory(path: Path, data: dict[str, Any], password_file: Path) -> None:
    """The server also in registry_clients, with group data that disagree on `data`."""
    entry = harness.host_entry(SERVER, {**harness.lab_site_data(), "registry_domain": DOMAIN})
    servers = {"registry_users": [{"name": "ci", "password_file": str(password_file)}],
               **{key: 5000 for key in data}}
    path.write_text(f"registry_servers = ([{entry!r}], {servers!r})\n"
                    f"registry_clients = ([{entry!r}], {data!r})\n")


def run_case(case: Case, tmp: Path) -> subprocess.CompletedProcess[str]:
    write_tls_files(tmp)
    password_file = tmp / "ci.password"
    password_file.write_text(FILE_PASSWORD + "\n")
    password_file.chmod(0o600)
    data = case.data(tmp) if callable(case.data) else dict(case.data)
    inventory = tmp / "inventory.py"
    if case.group_data:
        _group_inventory(inventory, data, password_file)
    else:
        base = {"registry_domain": DOMAIN, "registry_client_login_user": "ci",
                "registry_users": [{"name": "ci", "password_file": str(password_file)}]}
        if "registry_users" in data or data.get("registry_client_login_user"):
            base.pop("registry_client_login_user")
        harness.write_inventory(inventory, servers=[SERVER], clients=[CLIENT],
                                data={**base, **data}, per_host={CLIENT: case.client_data})
    env = {k: v for k, v in os.environ.items() if k != UNSET_ENV}
    env.update({EMPTY_ENV: "", LONG_ENV: LONG_PASSWORD, GOOD_ENV: GOOD_PASSWORD})
    return subprocess.run([harness.PYINFRA, "-y", str(inventory), "deploy.py"],
                          cwd=harness.ROOT, capture_output=True, text=True, timeout=120,
                          env=env)


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_setting_stops_before_any_host_is_touched(case: Case, hosts: dict[str, str],
                                                      tmp_path: Path) -> None:
    proc = run_case(case, tmp_path)
    output = proc.stdout + proc.stderr
    expected = case.message.replace("{tmp}", str(tmp_path))
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    reported = [line for line in output.splitlines() if _NOT_ALLOWED in line]
    assert len(reported) == 1, output
    # Exactly the line, alone: no "pyinfra error in <the kit's source file>" before it.
    assert reported[0] == expected, f"wanted: {expected}\ngot:    {reported[0]}"
    assert "registry_kit/" not in output and ".py line" not in output, output
    # Nothing ran: no operation started and nothing changed on either host.
    assert "Starting operation" not in output and "Beginning operation run" not in output
    for secret in (*case.secrets, FILE_PASSWORD, GOOD_PASSWORD):
        assert secret not in output
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:  # both hosts at once
        snapshots = dict(zip(hosts, pool.map(host_changes, hosts), strict=True))
    for name, (changed, now) in snapshots.items():
        before, hosts[name] = hosts[name], now
        assert changed == [], f"{name}: changed by a run that should have stopped: {changed}"
        assert now == before, f"{name}: containers or images changed"


def test_marker_check_sees_a_change(hosts: dict[str, str]) -> None:
    """The untouched-host check itself can fail: a file written after the marker shows."""
    probe = "/etc/registry-kit-bad-input-probe"
    try:
        harness.ssh(SERVER, f"touch {MARKER} && sleep 0.05 && touch {probe}")
        assert probe in host_changes(SERVER)[0]
    finally:
        # Removing the probe changes /etc itself: move the marker past it.
        harness.ssh(SERVER, f"rm -f {probe}; touch {MARKER}", check=False)
