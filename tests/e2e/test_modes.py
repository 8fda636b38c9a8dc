"""TLS modes on a trixie server (Docker 26): the kit's own CA, provided certificates on
port 443 (clients address the bare domain), and plain HTTP through insecure-registries.

One server (lab-client2, trixie, reached as client2.lab) and one bookworm client; each
scenario applies twice and checks the client's push and pull with the docker CLI.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import prometheus_lab
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER = "lab-client2"
CLIENT = "lab-client1"
DOMAIN = "client2.lab"
PROVIDED_DAYS = 20  # under the alert's 21 days
CERT_ALERT = "RegistryCertificateExpiresSoon"

pytestmark = pytest.mark.e2e


def push_pull(client: str, address: str, repository: str) -> str:
    image = f"{address}/{repository}:1"
    return harness.ssh(client, (
        f"docker pull -q busybox >/dev/null && docker tag busybox {image} && "
        f"docker push {image} >/dev/null && docker rmi {image} >/dev/null && "
        f"docker pull -q {image} && docker run --rm {image} echo pulled-ok")).stdout


def make_provided_certificates(directory: Path) -> dict[str, str]:
    """An organisation's own CA and a server certificate for DOMAIN, made outside the kit."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp Root CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=PROVIDED_DAYS))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(DOMAIN),
                x509.IPAddress(ipaddress.ip_address(harness.host_ip(SERVER)))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {
        "registry_tls_ca_file": ca.public_bytes(serialization.Encoding.PEM),
        "registry_tls_cert_file": cert.public_bytes(serialization.Encoding.PEM),
        "registry_tls_key_file": key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()),
    }
    paths = {}
    for setting, content in files.items():
        path = directory / setting.removeprefix("registry_tls_").replace("_file", ".pem")
        path.write_bytes(content)
        path.chmod(0o600)
        paths[setting] = str(path)
    return paths


@pytest.fixture(scope="module")
def scenario(lab: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("modes")
    password = harness.write_secret(directory, "ci.password", "ci-password-on-trixie")
    base = {
        "registry_domain": DOMAIN,
        "registry_users": [{"name": "ci", "password_file": password}],
        "registry_client_login_user": "ci",
    }
    # The provided scenario's Prometheus runs until the plain-HTTP one has seen its alert go.
    with contextlib.ExitStack() as stack:
        yield {"dir": directory, "base": base, "stack": stack}


def deploy_twice(scenario: dict[str, Any], name: str, data: dict[str, Any]) -> harness.Run:
    inventory = harness.write_inventory(scenario["dir"] / f"{name}.py", servers=[SERVER],
                                        clients=[CLIENT], data={**scenario["base"], **data})
    run = harness.run_kit(inventory).assert_ok()
    harness.run_kit(inventory).assert_no_changes()
    return run


def test_self_signed_on_trixie_docker_26(scenario: dict[str, Any]) -> None:
    deploy_twice(scenario, "self-signed", {"registry_port": 5000})
    version = harness.ssh(SERVER, "docker version --format '{{.Server.Version}}'").stdout
    assert version.startswith("26."), version
    ip = harness.host_ip(SERVER)
    assert harness.curl_status(DOMAIN, ip, 5000) == 401
    assert harness.curl_status(DOMAIN, ip, 5000, user="ci",
                               password="ci-password-on-trixie") == 200
    assert "pulled-ok" in push_pull(CLIENT, f"{DOMAIN}:5000", "modes/self-signed")


def metrics_for_the_control_machine() -> dict[str, Any]:
    """registry_metrics on the server's lab address, scraped by the test's Prometheus."""
    return {"registry_metrics": True, "registry_metrics_bind": harness.host_ip(SERVER),
            "registry_metrics_allow": [f"{prometheus_lab.control_address(SERVER)}/32"],
            "registry_prometheus_interval": prometheus_lab.INTERVAL}


# From a deploy to the alert's change: a scrape and a rule evaluation, with room.
SEEN_WITHIN = 3 * prometheus_lab.INTERVAL + 10


def test_provided_certificates_on_443(scenario: dict[str, Any]) -> None:
    """Port 443: clients type the bare domain, so the trust folder has no ':443'. The
    certificate's 20 days left make its alert fire in Prometheus."""
    provided = make_provided_certificates(scenario["dir"])
    deploy_twice(scenario, "provided", {"registry_port": 443, "registry_tls_mode": "provided",
                                        **provided, **metrics_for_the_control_machine()})
    prometheus = scenario["prometheus"] = scenario["stack"].enter_context(
        prometheus_lab.running())
    prometheus_lab.wait_targets_up(prometheus)
    # Firing at its first evaluation (the rule has no `for:`: an end date does not flap).
    seen = prometheus_lab.wait(
        lambda: prometheus_lab.alerts(prometheus, CERT_ALERT) == ["firing"], SEEN_WITHIN,
        f"{CERT_ALERT} firing")
    print(f"{CERT_ALERT} firing {seen:.1f} s after Prometheus' targets were up")
    trusted = harness.ssh(CLIENT, f"cat /etc/docker/certs.d/{DOMAIN}/ca.crt").stdout
    assert trusted == Path(provided["registry_tls_ca_file"]).read_text()
    served = harness.ssh(CLIENT, f"echo | openssl s_client -connect {DOMAIN}:443 "
                         f"-servername {DOMAIN} 2>/dev/null | openssl x509 -noout -issuer",
                         check=False).stdout
    if served:  # openssl is not in every lab image; curl below checks the chain anyway
        assert "Example Corp Root CA" in served
    check = harness.ssh(CLIENT, f"curl -s -o /dev/null -w '%{{http_code}}' --cacert "
                        f"/etc/docker/certs.d/{DOMAIN}/ca.crt https://{DOMAIN}/v2/").stdout
    assert check == "401"
    assert "pulled-ok" in push_pull(CLIENT, DOMAIN, "modes/provided")


def test_plain_http_through_insecure_registries_keeps_containers_running(
        scenario: dict[str, Any]) -> None:
    # busybox comes through the lab's mirror, which the first scenario's deploy set.
    harness.ssh(CLIENT, "docker rm -f http-sleeper >/dev/null 2>&1; docker run -d --name "
                "http-sleeper busybox sleep 86400 >/dev/null")
    started = harness.started_at(CLIENT, "http-sleeper")
    run = deploy_twice(scenario, "none", {"registry_port": 5000, "registry_tls_mode": "none",
                                          "registry_tls_none_acknowledged": True,
                                          **metrics_for_the_control_machine()})
    if "prometheus" in scenario:  # no certificate served now: its alert resolves
        prometheus_lab.wait(lambda: prometheus_lab.alerts(scenario["prometheus"],
                                                          CERT_ALERT) == [],
                            SEEN_WITHIN, f"{CERT_ALERT} resolved")
        scenario["stack"].close()
    assert CLIENT in dict(run.changed)["Merge the kit's keys into daemon.json"]
    daemon = json.loads(harness.ssh(CLIENT, "cat /etc/docker/daemon.json").stdout)
    assert f"{DOMAIN}:5000" in daemon["insecure-registries"]
    assert not any("://" in entry for entry in daemon["insecure-registries"])
    live = harness.ssh(CLIENT, "docker info --format '{{json .RegistryConfig}}'").stdout
    assert f"{DOMAIN}:5000" in live, "the reload applied the entry"
    assert harness.started_at(CLIENT, "http-sleeper") == started
    ip = harness.host_ip(SERVER)
    assert harness.curl_status(DOMAIN, ip, 5000, tls=False) == 401
    assert "pulled-ok" in push_pull(CLIENT, f"{DOMAIN}:5000", "modes/plain-http")
    harness.ssh(CLIENT, "docker rm -f http-sleeper >/dev/null")


def test_air_gapped_server_loads_the_image_from_an_archive(scenario: dict[str, Any]) -> None:
    """registry_image_archive: the image comes from a `docker save` tar on the control
    machine, uploaded only while the server does not have it."""
    archive = scenario["dir"] / "registry-airgap.tar"
    archive.unlink(missing_ok=True)
    copied = harness.skopeo(["copy", "--src-tls-verify=false",
                             harness.upstream_source("library/registry:2.8.2"),
                             f"docker-archive:{archive}:registry-airgap:2.8.2"], hosts={})
    assert copied.returncode == 0, copied.stderr
    harness.ssh(SERVER, "docker image rm registry-airgap:2.8.2 >/dev/null 2>&1; true")
    run = deploy_twice(scenario, "airgap", {"registry_port": 5000,
                                            "registry_image": "registry-airgap:2.8.2",
                                            # a custom repository name: its tag is not read
                                            "registry_version": 2,
                                            "registry_image_archive": str(archive)})
    assert SERVER in dict(run.changed)["Pull or load registry-airgap:2.8.2"]
    image = harness.ssh(SERVER, "docker inspect -f '{{.Config.Image}}' registry").stdout
    assert image.strip() == "registry-airgap:2.8.2"
    assert harness.curl_status(DOMAIN, harness.host_ip(SERVER), 5000) == 401
    assert harness.ssh(SERVER, "ls /var/tmp/registry-kit-image.tar", check=False).returncode
    # Back on TLS after the plain-HTTP scenario: the client's insecure entry is gone from
    # daemon.json and from the running engine (a reload alone keeps a removed key).
    daemon = json.loads(harness.ssh(CLIENT, "cat /etc/docker/daemon.json").stdout)
    assert f"{DOMAIN}:5000" not in daemon.get("insecure-registries", [])
    live = harness.ssh(CLIENT, "docker info --format '{{json .RegistryConfig}}'").stdout
    assert f"{DOMAIN}:5000" not in live
