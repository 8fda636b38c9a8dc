"""control.prepare_ca: one CA per state dir that permits every name the inventory serves."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from registry_kit.model import keystore as control
from registry_kit.model import settings


def _host(name: str, state_dir: Path, **data: object) -> settings.Settings:
    return settings.load(name, {"registry_state_dir": str(state_dir),
                                 "registry_anonymous_acknowledged": True, **data},
                         base_dir=state_dir)


def test_one_ca_permits_every_served_name_before_any_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    hosts = [
        _host("reg1", state, registry_domain="registry.one.example",
              registry_tls_extra_names=["alt.one.example"]),
        _host("reg2", state, registry_domain="10.0.0.7", registry_tls_extra_ips=["10.0.0.8"]),
        _host("prov", state, registry_domain="ignored.example", registry_tls_mode="none",
              registry_tls_none_acknowledged=True),
    ]
    control.prepare_ca(hosts)
    ca_pem = (state / "ca" / "ca.crt").read_bytes()
    permitted = x509.load_pem_x509_certificate(ca_pem).extensions.get_extension_for_class(
        x509.NameConstraints).value.permitted_subtrees
    assert set(permitted or ()) == {
        x509.DNSName("registry.one.example"), x509.DNSName("alt.one.example"),
        x509.IPAddress(ipaddress.ip_network("10.0.0.7/32")),
        x509.IPAddress(ipaddress.ip_network("10.0.0.8/32")),
    }
    # Each host's certificate is then issued under that CA, which stays as it is.
    one = control.ensure_server_certificate(state, "registry.one.example", ["alt.one.example"], [])
    two = control.ensure_server_certificate(state, "10.0.0.7", [], ["10.0.0.8"])
    assert one.ca_pem == two.ca_pem == ca_pem
    control.prepare_ca(hosts)  # a second run changes nothing
    assert (state / "ca" / "ca.crt").read_bytes() == ca_pem
