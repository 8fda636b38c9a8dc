"""The kit's CA vouches for the registry's names only, proven on a real lab client.

A server and a client with the kit's own CA, which the client also adds to its OS trust
store (`registry_client_system_trust`, the case where an unconstrained CA would be trusted
for every TLS connection of the host). With the CA's private key from the control machine
the test signs a certificate for another name, built by hand here (not by the kit), and
shows on the client, with the client's own tools, that nothing accepts it: `openssl verify`
against the CA file the kit installed ("permitted subtree violation"), and a TLS server on
the client presenting it, refused by curl and by the Docker engine (Go's crypto/x509), while
the same hand-made certificate for the registry's own name is accepted, and the real
registry keeps working (curl 401/200, docker push and pull).
"""

from __future__ import annotations

import ipaddress
import secrets
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOMAIN = "registry.lab"
PORT = 5000
ADDRESS = f"{DOMAIN}:{PORT}"
SERVER, CLIENT = "lab-reg", "lab-client1"
TRUST_FILE = f"/etc/docker/certs.d/{ADDRESS}/ca.crt"
WORK = "/root/name-constraints"  # on the client
EVIL = "evil.example"
EVIL_PORT = 8443
IMAGE = f"{ADDRESS}/nc/busybox:1"
# The test's own TLS server on the client, stopped by its pid (never by a name pattern).
# /etc/hosts is a bind mount in a lab host: rewritten in place (sed -i cannot rename onto it).
DROP_HOSTS_LINE = (f"grep -v ' {EVIL}$' /etc/hosts > /etc/hosts.nc-test; "
                   "cat /etc/hosts.nc-test > /etc/hosts && rm -f /etc/hosts.nc-test")
STOP_SERVER = f"[ -f {WORK}/s_server.pid ] && kill $(cat {WORK}/s_server.pid) 2>/dev/null"


class Site:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.state_dir = directory / "state"  # a CA of its own, made by this kit
        self.inventory = directory / "inventory.py"
        self.password = f"nc-{secrets.token_urlsafe(12)}"
        password_file = directory / "alice.password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        harness.write_inventory(self.inventory, servers=[SERVER], clients=[CLIENT], data={
            "registry_domain": DOMAIN, "registry_port": PORT,
            "registry_state_dir": str(self.state_dir),
            "registry_users": [{"name": "alice", "password_file": str(password_file)}],
            "registry_client_login_user": "alice",
            "registry_client_system_trust": True,
        })

    def run(self) -> harness.Run:
        return harness.run_kit(self.inventory)


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("name-constraints"))
    site.run().assert_ok()
    site.run().assert_no_changes()
    yield site
    harness.ssh(CLIENT, f"{STOP_SERVER}; {DROP_HOSTS_LINE}; rm -rf {WORK}", check=False)


def _sign(state_dir: Path, name: str) -> tuple[bytes, bytes]:
    """A server certificate for `name` signed with the kit's CA key: (cert PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate((state_dir / "ca" / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((state_dir / "ca" / "ca.key").read_bytes(),
                                                password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _put(path: str, data: bytes, mode: str = "0600") -> None:
    harness.ssh(CLIENT, f"install -d -m 0700 {WORK} && install -m {mode} /dev/null "
                f"{shlex.quote(path)} && cat > {shlex.quote(path)}", stdin=data.decode())


def _serve(cert: str, key: str) -> None:
    """openssl s_server on the client's loopback presenting `cert` (replacing one before)."""
    harness.ssh(CLIENT, f"{STOP_SERVER}; sleep 0.3; timeout 300 openssl s_server -accept "
                f"{EVIL_PORT} -cert {cert} -key {key} -www >{WORK}/s_server.log 2>&1 "
                f"</dev/null & echo $! > {WORK}/s_server.pid; for i in $(seq 50); do "
                f"(exec 3<>/dev/tcp/127.0.0.1/{EVIL_PORT}) 2>/dev/null && exit 0; sleep 0.1; "
                "done; exit 1", check=True)


def test_ca_carries_critical_name_constraints(site: Site) -> None:
    ca = x509.load_pem_x509_certificate((site.state_dir / "ca" / "ca.crt").read_bytes())
    ext = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert ext.value.permitted_subtrees == [x509.DNSName(DOMAIN)]
    assert set(ext.value.excluded_subtrees or ()) == {
        x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
        x509.IPAddress(ipaddress.ip_network("::/0"))}
    # The client trusts exactly this CA, for Docker and in its OS store.
    assert harness.ssh(CLIENT, f"cat {TRUST_FILE}").stdout.encode() == \
        (site.state_dir / "ca" / "ca.crt").read_bytes()
    text = harness.ssh(CLIENT, f"openssl x509 -noout -ext nameConstraints -in {TRUST_FILE}")
    assert "critical" in text.stdout and f"DNS:{DOMAIN}" in text.stdout, text.stdout


def test_certificate_for_another_name_fails_on_the_client(site: Site) -> None:
    evil_cert, evil_key = _sign(site.state_dir, EVIL)
    good_cert, good_key = _sign(site.state_dir, DOMAIN)
    _put(f"{WORK}/evil.crt", evil_cert, "0644")
    _put(f"{WORK}/evil.key", evil_key)
    _put(f"{WORK}/good.crt", good_cert, "0644")
    _put(f"{WORK}/good.key", good_key)

    # openssl verify against the CA file the kit installed for Docker.
    evil = harness.ssh(CLIENT, f"openssl verify -CAfile {TRUST_FILE} {WORK}/evil.crt",
                       check=False)
    assert evil.returncode != 0
    assert "permitted subtree violation" in evil.stdout + evil.stderr, evil
    good = harness.ssh(CLIENT, f"openssl verify -CAfile {TRUST_FILE} {WORK}/good.crt",
                       check=False)
    assert good.returncode == 0 and good.stdout.strip().endswith(": OK"), good
    # The real server's certificate, fetched from the registry, verifies too.
    served = harness.ssh(CLIENT, f"openssl s_client -connect {ADDRESS} -servername {DOMAIN} "
                         f"</dev/null 2>/dev/null | openssl x509 > {WORK}/served.crt && "
                         f"openssl verify -CAfile {TRUST_FILE} {WORK}/served.crt", check=False)
    assert served.returncode == 0, served

    # A TLS server on the client presenting the forged certificate. curl uses the OS trust
    # store, which holds the kit's CA (registry_client_system_trust). The name points at the
    # client's lab address, not loopback: Docker skips verification for 127.0.0.0/8.
    harness.ssh(CLIENT, f"{DROP_HOSTS_LINE} && echo '{harness.host_ip(CLIENT)} {EVIL}' "
                ">> /etc/hosts")
    _serve(f"{WORK}/evil.crt", f"{WORK}/evil.key")
    curl = harness.ssh(CLIENT, f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 10 "
                       f"https://{EVIL}:{EVIL_PORT}/", check=False)
    assert curl.returncode == 60, curl  # CURLE_PEER_FAILED_VERIFICATION
    assert "permitted subtree violation" in curl.stderr, curl.stderr
    # The Docker engine (Go's crypto/x509, with the OS trust store) refuses it as well.
    pull = harness.ssh(CLIENT, f"docker pull {EVIL}:{EVIL_PORT}/x:1", check=False)
    assert pull.returncode != 0
    assert "not permitted by any constraint" in pull.stdout + pull.stderr, pull

    # Control: the same hand-made certificate for the registry's own name is accepted by
    # curl through the same OS trust store, so the refusal above is the name constraint.
    _serve(f"{WORK}/good.crt", f"{WORK}/good.key")
    ok = harness.ssh(CLIENT, f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 10 "
                     f"--resolve {DOMAIN}:{EVIL_PORT}:127.0.0.1 https://{DOMAIN}:{EVIL_PORT}/",
                     check=False)
    assert ok.returncode == 0 and ok.stdout == "200", ok


def test_real_registry_still_works(site: Site) -> None:
    anonymous = harness.ssh(CLIENT, f"curl -s -o /dev/null -w '%{{http_code}}' "
                            f"https://{ADDRESS}/v2/").stdout
    assert anonymous == "401"
    # Token auth (users): a token from the token server on the same name, as Docker asks.
    token = (f"curl -s -K - 'https://{DOMAIN}:5443/token?service={ADDRESS}' | "
             "sed -n 's/.*\"token\": *\"\\([^\"]*\\)\".*/\\1/p'")
    authed = harness.ssh(CLIENT, f"printf 'Authorization: Bearer %s\\n' \"$({token})\" | "
                         f"curl -s -o /dev/null -w '%{{http_code}}' -H @- "
                         f"https://{ADDRESS}/v2/", stdin=f'user = "alice:{site.password}"\n')
    assert authed.stdout == "200"
    # The kit logged the client in; push and pull through Docker (Go) with the kit's CA.
    harness.ssh(CLIENT, f"docker pull busybox && docker tag busybox {IMAGE} && "
                f"docker push {IMAGE} && docker rmi {IMAGE} && docker pull {IMAGE} && "
                f"docker run --rm {IMAGE} true")
    site.run().assert_no_changes()
