"""Unit tests for registry_kit.render.tls and the files registry_kit.model.keystore keeps: the
kit's CA, self-signed certs, provided files."""

from __future__ import annotations

import ipaddress
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry_kit.model.keystore import ensure_ca, ensure_server_certificate, load_provided
from registry_kit.render import tls
from registry_kit.render.tls import ServerCertificate, TLSError, certificate_days_left

NOW = datetime.now(UTC).replace(microsecond=0)
DOMAIN = "registry.example.internal"


# --------------------------------------------------------------------------- helpers


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _make_ca(
    key: ec.EllipticCurvePrivateKey,
    cn: str,
    *,
    signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    """A root CA, or an intermediate when ``signer`` (issuer cert, issuer key) is given."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = (signer[0].subject, signer[1]) if signer else (subject, key)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def _make_leaf(
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    dns: Sequence[str] = (DOMAIN,),
    ips: Sequence[str] = (),
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=90),
) -> x509.Certificate:
    """A server certificate; ``issuer=None`` makes it self-signed."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "leaf")])
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Keys:
    ca: ec.EllipticCurvePrivateKey
    other_ca: ec.EllipticCurvePrivateKey
    intermediate: ec.EllipticCurvePrivateKey
    leaf: ec.EllipticCurvePrivateKey
    other: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    # Generated once: key generation is the slow part of these tests.
    return Keys(*(ec.generate_private_key(ec.SECP256R1()) for _ in range(5)))


@pytest.fixture(scope="module")
def ca(keys: Keys) -> x509.Certificate:
    return _make_ca(keys.ca, "Test Root CA")


@dataclass
class Files:
    root: Path

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def _provided(
    files: Files,
    keys: Keys,
    ca: x509.Certificate,
    leaf: x509.Certificate,
    *,
    domain: str = DOMAIN,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> ServerCertificate:
    return load_provided(
        files.write("server.crt", _pem(leaf)),
        files.write("server.key", _key_pem(key or keys.leaf)),
        files.write("ca.crt", _pem(ca)),
        domain,
        now=NOW,
    )


def _sans(pem: bytes) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        set(san.get_values_for_type(x509.DNSName)),
        {str(i) for i in san.get_values_for_type(x509.IPAddress)},
    )


def _issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(
            x509.load_pem_x509_certificate(ca_pem)
        )
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- CA


def test_ensure_ca_created_once(tmp_path: Path) -> None:
    cert_path, key_path = ensure_ca(tmp_path)
    assert cert_path == tmp_path / "ca" / "ca.crt"
    assert key_path == tmp_path / "ca" / "ca.key"
    assert _mode(key_path) == 0o600
    assert _mode(key_path.parent) == 0o700
    first = (cert_path.read_bytes(), key_path.read_bytes())

    cert = x509.load_pem_x509_certificate(first[0])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert cert.not_valid_after_utc - NOW > timedelta(days=3640)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "registry-kit CA"

    assert ensure_ca(tmp_path) == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == first
    assert _mode(key_path) == 0o600


def test_ensure_ca_tightens_key_mode(tmp_path: Path) -> None:
    _, key_path = ensure_ca(tmp_path)
    key_path.chmod(0o644)
    ensure_ca(tmp_path)
    assert _mode(key_path) == 0o600


def test_ensure_ca_refuses_to_overwrite_unreadable_key(tmp_path: Path) -> None:
    _, key_path = ensure_ca(tmp_path)
    key_path.write_bytes(b"not a key")
    with pytest.raises(TLSError, match=r"ca\.key"):
        ensure_ca(tmp_path)
    assert key_path.read_bytes() == b"not a key"


def test_ensure_ca_refuses_cert_of_another_key(tmp_path: Path, keys: Keys) -> None:
    cert_path, key_path = ensure_ca(tmp_path)
    key_before = key_path.read_bytes()
    cert_path.write_bytes(_pem(_make_ca(keys.other_ca, "stray")))
    with pytest.raises(TLSError, match=r"ca\.crt: certificate does not match ca\.key"):
        ensure_ca(tmp_path)
    assert key_path.read_bytes() == key_before


def test_ensure_ca_recreates_missing_cert_from_existing_key(tmp_path: Path) -> None:
    cert_path, key_path = ensure_ca(tmp_path)
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key_before = key_path.read_bytes()
    cert_path.unlink()
    ensure_ca(tmp_path)
    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert key_path.read_bytes() == key_before
    assert new.subject == old.subject
    assert new.public_key() == old.public_key()


def test_ca_renewed_near_expiry_keeps_key_and_server_cert(tmp_path: Path) -> None:
    server = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    cert_path, key_path = tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key"
    ca_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    # Same CA, but about to expire.
    expiring = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=3640))
        .not_valid_after(NOW + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path.write_bytes(_pem(expiring))

    again = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    renewed = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert renewed.not_valid_after_utc - NOW > timedelta(days=3640)
    assert again.ca_pem == cert_path.read_bytes() != _pem(expiring)
    assert not again.reissued  # same CA key and name: the server certificate still chains
    assert again.cert_pem == server.cert_pem
    assert _issued_by(again.cert_pem, again.ca_pem)


def test_ensure_ca_rejects_long_common_name(tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="1 to 64"):
        ensure_ca(tmp_path, "x" * 65)


# --------------------------------------------------------------------------- self-signed


def test_server_certificate_issued_then_reused(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, DOMAIN, ["registry"], ["10.0.0.5"])
    assert first.reissued
    server_dir = tmp_path / "servers" / DOMAIN
    assert (server_dir / "server.crt").read_bytes() == first.cert_pem
    assert (server_dir / "server.key").read_bytes() == first.key_pem
    assert _mode(server_dir / "server.key") == 0o600
    assert _mode(server_dir) == 0o700
    assert first.ca_pem == (tmp_path / "ca" / "ca.crt").read_bytes()
    assert first.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")

    cert = x509.load_pem_x509_certificate(first.cert_pem)
    assert _sans(first.cert_pem) == ({DOMAIN, "registry"}, {"10.0.0.5"})
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DOMAIN
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _issued_by(first.cert_pem, first.ca_pem)

    again = ensure_server_certificate(tmp_path, DOMAIN, ["registry"], ["10.0.0.5"])
    assert not again.reissued
    assert (again.cert_pem, again.key_pem, again.ca_pem) == (
        first.cert_pem,
        first.key_pem,
        first.ca_pem,
    )


def test_same_names_in_other_order_or_case_reuse(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, DOMAIN, ["a.example", "b.example"], ["10.0.0.5"])
    again = ensure_server_certificate(
        tmp_path, DOMAIN.upper(), ["B.example.", "a.example", "a.example"], ["10.0.0.5"]
    )
    assert not again.reissued
    assert again.cert_pem == first.cert_pem


def test_server_certificate_reissued_when_names_change(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    assert _sans(first.cert_pem) == ({DOMAIN}, set())

    added = ensure_server_certificate(tmp_path, DOMAIN, ["registry"], [])
    assert added.reissued
    assert added.cert_pem != first.cert_pem
    assert added.key_pem == first.key_pem  # key kept, only the certificate changes
    assert _sans(added.cert_pem) == ({DOMAIN, "registry"}, set())

    with_ip = ensure_server_certificate(tmp_path, DOMAIN, ["registry"], ["192.0.2.7", "::1"])
    assert with_ip.reissued
    assert _sans(with_ip.cert_pem) == ({DOMAIN, "registry"}, {"192.0.2.7", "::1"})

    removed = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    assert removed.reissued
    assert _sans(removed.cert_pem) == ({DOMAIN}, set())


def test_server_certificate_renewed_near_expiry(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, DOMAIN, [], [], now=NOW)
    days = certificate_days_left(first.cert_pem, now=NOW)
    assert 824 <= days <= 825

    not_yet = ensure_server_certificate(tmp_path, DOMAIN, [], [], now=NOW + timedelta(days=700))
    assert not not_yet.reissued

    later = NOW + timedelta(days=825 - 29)
    renewed = ensure_server_certificate(tmp_path, DOMAIN, [], [], now=later)
    assert renewed.reissued
    assert renewed.key_pem == first.key_pem
    assert certificate_days_left(renewed.cert_pem, now=later) >= 824

    # Reruns at the same moment are idempotent again.
    rerun = ensure_server_certificate(tmp_path, DOMAIN, [], [], now=later)
    assert not rerun.reissued
    assert rerun.cert_pem == renewed.cert_pem


def test_server_certificate_reissued_when_ca_replaced(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    shutil.rmtree(tmp_path / "ca")

    second = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    assert second.reissued
    assert second.ca_pem != first.ca_pem
    assert _issued_by(second.cert_pem, second.ca_pem)
    assert not _issued_by(second.cert_pem, first.ca_pem)
    assert not ensure_server_certificate(tmp_path, DOMAIN, [], []).reissued


def test_server_certificate_recovers_from_missing_files(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    (tmp_path / "servers" / DOMAIN / "server.crt").unlink()
    second = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    assert second.reissued and second.key_pem == first.key_pem

    (tmp_path / "servers" / DOMAIN / "server.key").unlink()
    third = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    assert third.reissued and third.key_pem != first.key_pem
    cert = x509.load_pem_x509_certificate(third.cert_pem)
    key = serialization.load_pem_private_key(third.key_pem, password=None)
    assert cert.public_key() == key.public_key()


def test_ip_domain_goes_in_ip_san(tmp_path: Path) -> None:
    result = ensure_server_certificate(tmp_path, "10.1.2.3", ["registry"], [])
    assert _sans(result.cert_pem) == ({"registry"}, {"10.1.2.3"})
    assert (tmp_path / "servers" / "10.1.2.3" / "server.crt").exists()


@pytest.mark.parametrize("domain", ["../escape", "a/b", "", "bad domain", "bücher.example"])
def test_invalid_domain_rejected(tmp_path: Path, domain: str) -> None:
    with pytest.raises(TLSError, match="not a valid DNS name"):
        ensure_server_certificate(tmp_path, domain, [], [])


def test_invalid_extra_ip_rejected(tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="not an IP address"):
        ensure_server_certificate(tmp_path, DOMAIN, [], ["10.0.0.0/8"])


def test_renew_days_must_be_below_valid_days(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="renew_days"):
        ensure_server_certificate(tmp_path, DOMAIN, [], [], renew_days=30, valid_days=30)


# --------------------------------------------------------------------------- provided


def test_load_provided_good(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca)
    result = _provided(files, keys, ca, leaf)
    assert result.cert_pem == _pem(leaf)
    assert result.ca_pem == _pem(ca)
    assert result.key_pem == _key_pem(keys.leaf)
    assert not result.reissued


def test_load_provided_converts_key_to_pkcs8(
    files: Files, keys: Keys, ca: x509.Certificate
) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca)
    sec1 = keys.leaf.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    result = load_provided(
        files.write("s.crt", _pem(leaf)),
        files.write("s.key", sec1),
        files.write("ca.crt", _pem(ca)),
        DOMAIN,
        now=NOW,
    )
    assert result.key_pem == _key_pem(keys.leaf)


def test_load_provided_missing_file(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = files.write("server.crt", _pem(_make_leaf(keys.leaf, ca, keys.ca)))
    key = files.write("server.key", _key_pem(keys.leaf))
    missing = files.root / "nope.crt"
    with pytest.raises(TLSError, match=r"nope\.crt.*not found") as info:
        load_provided(missing, key, None, DOMAIN, now=NOW)
    assert "\n" not in str(info.value)
    with pytest.raises(TLSError, match=r"nope\.crt.*not found"):
        load_provided(leaf, key, missing, DOMAIN, now=NOW)
    with pytest.raises(TLSError, match=r"nope\.crt.*not found"):
        load_provided(leaf, missing, None, DOMAIN, now=NOW)


def test_load_provided_not_pem(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca)
    key = files.write("server.key", _key_pem(keys.leaf))
    ca_file = files.write("ca.crt", _pem(ca))
    der = files.write("server.der", leaf.public_bytes(serialization.Encoding.DER))
    with pytest.raises(TLSError, match=r"server\.der.*not a PEM certificate"):
        load_provided(der, key, ca_file, DOMAIN, now=NOW)
    crt = files.write("server.crt", _pem(leaf))
    junk = files.write("junk.key", b"hello")
    with pytest.raises(TLSError, match=r"junk\.key.*not a PEM private key"):
        load_provided(crt, junk, ca_file, DOMAIN, now=NOW)


def test_load_provided_encrypted_key(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = files.write("server.crt", _pem(_make_leaf(keys.leaf, ca, keys.ca)))
    enc = keys.leaf.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(TLSError, match="encrypted"):
        load_provided(leaf, files.write("k.pem", enc), None, DOMAIN, now=NOW)


def test_load_provided_key_mismatch(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca)
    with pytest.raises(TLSError, match=r"server\.key.*does not match"):
        _provided(files, keys, ca, leaf, key=keys.other)


def test_load_provided_expired(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(
        keys.leaf,
        ca,
        keys.ca,
        not_before=NOW - timedelta(days=100),
        not_after=NOW - timedelta(days=1),
    )
    with pytest.raises(TLSError, match=r"server\.crt.*expired"):
        _provided(files, keys, ca, leaf)


def test_load_provided_not_yet_valid(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca, not_before=NOW + timedelta(days=2))
    with pytest.raises(TLSError, match="not valid until"):
        _provided(files, keys, ca, leaf)


def test_load_provided_san_missing_domain(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca, dns=["other.example.internal"])
    with pytest.raises(TLSError, match=r"do not cover 'registry\.example\.internal'"):
        _provided(files, keys, ca, leaf)


def test_load_provided_signed_by_other_ca(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    other_ca = _make_ca(keys.other_ca, "Other CA")
    leaf = _make_leaf(keys.leaf, other_ca, keys.other_ca)
    with pytest.raises(TLSError, match=r"does not verify against .*ca\.crt"):
        _provided(files, keys, ca, leaf)


def test_load_provided_same_name_other_ca_key(
    files: Files, keys: Keys, ca: x509.Certificate
) -> None:
    # Same issuer name, different key: only the signature check can catch this.
    impostor = _make_ca(keys.other_ca, "Test Root CA")
    leaf = _make_leaf(keys.leaf, impostor, keys.other_ca)
    with pytest.raises(TLSError, match="signature does not verify"):
        _provided(files, keys, ca, leaf)


def test_load_provided_wildcard_matches_one_label(
    files: Files, keys: Keys, ca: x509.Certificate
) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca, dns=["*.example.internal"])
    assert _provided(files, keys, ca, leaf).cert_pem == _pem(leaf)


def test_load_provided_wildcard_does_not_match_two_labels(
    files: Files, keys: Keys, ca: x509.Certificate
) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca, dns=["*.internal"])
    with pytest.raises(TLSError, match="do not cover"):
        _provided(files, keys, ca, leaf)


def test_load_provided_ip_domain(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca, dns=[DOMAIN], ips=["10.0.0.5"])
    assert not _provided(files, keys, ca, leaf, domain="10.0.0.5").reissued
    with pytest.raises(TLSError, match=r"do not cover .10\.0\.0\.6."):
        _provided(files, keys, ca, leaf, domain="10.0.0.6")


def test_load_provided_chain_with_intermediate(
    files: Files, keys: Keys, ca: x509.Certificate
) -> None:
    inter = _make_ca(keys.intermediate, "Test Intermediate", signer=(ca, keys.ca))
    leaf = _make_leaf(keys.leaf, inter, keys.intermediate)
    cert_file = files.write("chain.crt", _pem(leaf, inter))
    key_file = files.write("server.key", _key_pem(keys.leaf))

    result = load_provided(cert_file, key_file, files.write("ca.crt", _pem(ca)), DOMAIN, now=NOW)
    assert result.cert_pem == _pem(leaf)
    assert result.ca_pem == _pem(inter, ca)

    # Without a CA file, the last certificate of the chain is the CA.
    result = load_provided(cert_file, key_file, None, DOMAIN, now=NOW)
    assert result.ca_pem == _pem(inter)

    # Leaf alone cannot reach the root.
    with pytest.raises(TLSError, match="does not verify against"):
        load_provided(
            files.write("leaf.crt", _pem(leaf)), key_file, files.root / "ca.crt", DOMAIN, now=NOW
        )


def test_load_provided_broken_chain(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    inter = _make_ca(keys.intermediate, "Test Intermediate", signer=(ca, keys.ca))
    leaf = _make_leaf(keys.leaf, ca, keys.ca)  # not signed by the intermediate it ships with
    with pytest.raises(TLSError, match="chain broken at certificate #1"):
        load_provided(
            files.write("chain.crt", _pem(leaf, inter)),
            files.write("server.key", _key_pem(keys.leaf)),
            files.write("ca.crt", _pem(ca)),
            DOMAIN,
            now=NOW,
        )


def test_load_provided_without_ca_file(files: Files, keys: Keys, ca: x509.Certificate) -> None:
    key_file = files.write("server.key", _key_pem(keys.leaf))
    self_signed = _make_leaf(keys.leaf, None, keys.leaf)
    result = load_provided(
        files.write("self.crt", _pem(self_signed)), key_file, None, DOMAIN, now=NOW
    )
    assert result.ca_pem == _pem(self_signed)

    ca_signed = files.write("leaf.crt", _pem(_make_leaf(keys.leaf, ca, keys.ca)))
    with pytest.raises(TLSError, match="not self-signed and no CA file"):
        load_provided(ca_signed, key_file, None, DOMAIN, now=NOW)


# --------------------------------------------------------------------------- inspection


def test_certificate_days_left(keys: Keys, ca: x509.Certificate) -> None:
    leaf = _make_leaf(keys.leaf, ca, keys.ca, not_after=NOW + timedelta(days=10, hours=1))
    assert certificate_days_left(_pem(leaf), now=NOW) == 10
    assert certificate_days_left(_pem(leaf), now=NOW + timedelta(days=11)) == -1
    assert certificate_days_left(_pem(leaf)) in (9, 10)
    with pytest.raises(TLSError):
        certificate_days_left(b"nope")


# --------------------------------------------------------------------------- name constraints

try:
    from cryptography.x509 import verification
except ImportError:  # cryptography < 42 has no path validation; pyproject allows >= 41
    verification = None  # type: ignore[assignment]

ALL_IPS = {
    x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
    x509.IPAddress(ipaddress.ip_network("::/0")),
}


def _constraints(ca_pem: bytes) -> x509.Extension[x509.NameConstraints]:
    return x509.load_pem_x509_certificate(ca_pem).extensions.get_extension_for_class(
        x509.NameConstraints
    )


def _net(text: str) -> x509.IPAddress:
    return x509.IPAddress(ipaddress.ip_network(text))


def _forge(state_dir: Path, dns: Sequence[str], ips: Sequence[str] = ()) -> bytes:
    """A server certificate signed with the kit's CA key for names of our choosing, built
    exactly like the kit's own, so only the names differ from a legitimate one."""
    ca_cert = x509.load_pem_x509_certificate((state_dir / "ca" / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key(
        (state_dir / "ca" / "ca.key").read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    addresses = {ipaddress.ip_address(i) for i in ips}
    canonical = dns[0] if dns else ips[0]
    leaf = tls._issue_server_cert(
        canonical, set(dns), addresses, ec.generate_private_key(ec.SECP256R1()),
        ca_cert, ca_key, datetime.now(UTC).replace(microsecond=0), 90,
    )
    return _pem(leaf)


def _verify(leaf_pem: bytes, ca_pem: bytes, name: str) -> str:
    """'ok' or the verifier's reason, from cryptography's own path validation (webpki rules)."""
    if verification is None:
        pytest.skip("cryptography.x509.verification needs cryptography >= 42")
    anchors = x509.load_pem_x509_certificates(ca_pem)
    subject: x509.GeneralName
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(anchors))
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(x509.load_pem_x509_certificate(leaf_pem), [])
    except verification.VerificationError as error:
        return str(error)
    return "ok"


def _openssl_verify(tmp_path: Path, leaf_pem: bytes, ca_pem: bytes) -> str:
    """OpenSSL's verdict (it also checks a host-name-like CN against DNS constraints)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    (tmp_path / "v-ca.pem").write_bytes(ca_pem)
    (tmp_path / "v-leaf.pem").write_bytes(leaf_pem)
    result = subprocess.run(
        [openssl, "verify", "-CAfile", str(tmp_path / "v-ca.pem"), str(tmp_path / "v-leaf.pem")],
        capture_output=True, text=True, check=False,
    )
    return (result.stdout + result.stderr).strip()


def test_new_ca_permits_exactly_the_certificate_names(tmp_path: Path) -> None:
    server = ensure_server_certificate(
        tmp_path, DOMAIN, ["*.alt.example", "registry"], ["10.0.0.5", "2001:db8::1"]
    )
    ext = _constraints(server.ca_pem)
    assert ext.critical
    assert set(ext.value.permitted_subtrees or ()) == {
        x509.DNSName(DOMAIN), x509.DNSName("alt.example"), x509.DNSName("registry"),
        _net("10.0.0.5/32"), _net("2001:db8::1/128"),
    }
    assert ext.value.excluded_subtrees is None  # both name types have a permitted subtree
    assert _verify(server.cert_pem, server.ca_pem, DOMAIN) == "ok"
    assert _verify(server.cert_pem, server.ca_pem, "x.alt.example") == "ok"
    assert _verify(server.cert_pem, server.ca_pem, "10.0.0.5") == "ok"


def test_ca_for_a_dns_domain_excludes_every_ip(tmp_path: Path) -> None:
    server = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    ext = _constraints(server.ca_pem)
    assert ext.critical
    assert set(ext.value.permitted_subtrees or ()) == {x509.DNSName(DOMAIN)}
    assert set(ext.value.excluded_subtrees or ()) == ALL_IPS
    assert _verify(server.cert_pem, server.ca_pem, DOMAIN) == "ok"
    assert "OK" in _openssl_verify(tmp_path, server.cert_pem, server.ca_pem)

    evil = _forge(tmp_path, ["evil.example"])
    assert "no permitted name constraints matched" in _verify(evil, server.ca_pem, "evil.example")
    assert "permitted subtree violation" in _openssl_verify(tmp_path, evil, server.ca_pem)
    # The right name plus an address: the address is excluded.
    with_ip = _forge(tmp_path, [DOMAIN], ["10.9.9.9"])
    assert "excluded name constraint matched" in _verify(with_ip, server.ca_pem, DOMAIN)
    assert "excluded subtree violation" in _openssl_verify(tmp_path, with_ip, server.ca_pem)


def test_ca_for_an_ip_domain_excludes_every_dns_name(tmp_path: Path) -> None:
    server = ensure_server_certificate(tmp_path, "10.1.2.3", [], [])
    ext = _constraints(server.ca_pem)
    assert set(ext.value.permitted_subtrees or ()) == {_net("10.1.2.3/32")}
    assert set(ext.value.excluded_subtrees or ()) == {x509.DNSName("")}  # every DNS name
    leaf = x509.load_pem_x509_certificate(server.cert_pem)
    # No CN: OpenSSL would check "10.1.2.3" as a host name against the DNS exclusion.
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert _verify(server.cert_pem, server.ca_pem, "10.1.2.3") == "ok"
    assert "OK" in _openssl_verify(tmp_path, server.cert_pem, server.ca_pem)

    assert _verify(_forge(tmp_path, [], ["10.1.2.4"]), server.ca_pem, "10.1.2.4") != "ok"
    assert "violation" in _openssl_verify(tmp_path, _forge(tmp_path, [], ["10.1.2.4"]),
                                          server.ca_pem)
    assert _verify(_forge(tmp_path, ["evil.example"]), server.ca_pem, "evil.example") != "ok"
    assert "excluded subtree violation" in _openssl_verify(
        tmp_path, _forge(tmp_path, ["evil.example"]), server.ca_pem)


def test_ipv4_only_ca_does_not_leave_ipv6_open(tmp_path: Path) -> None:
    server = ensure_server_certificate(tmp_path, DOMAIN, [], ["10.0.0.5"])
    assert _verify(_forge(tmp_path, [DOMAIN], ["2001:db8::5"]), server.ca_pem, DOMAIN) != "ok"
    assert "violation" in _openssl_verify(tmp_path, _forge(tmp_path, [DOMAIN], ["2001:db8::5"]),
                                          server.ca_pem)


def test_new_name_widens_the_ca_with_the_same_key(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    key_before = (tmp_path / "ca" / "ca.key").read_bytes()
    added = ensure_server_certificate(tmp_path, DOMAIN, ["registry-alt.example"], ["10.0.0.5"])
    assert added.reissued
    # A new CA certificate (so clients go through the rotation bridge) for the same key and
    # subject: certificates for the old names still verify under the old ca.crt.
    assert added.ca_pem != first.ca_pem
    assert (tmp_path / "ca" / "ca.key").read_bytes() == key_before
    old_ca = x509.load_pem_x509_certificate(first.ca_pem)
    new_ca = x509.load_pem_x509_certificate(added.ca_pem)
    assert new_ca.subject == old_ca.subject and new_ca.public_key() == old_ca.public_key()
    assert set(_constraints(added.ca_pem).value.permitted_subtrees or ()) == {
        x509.DNSName(DOMAIN), x509.DNSName("registry-alt.example"), _net("10.0.0.5/32"),
    }
    assert _constraints(added.ca_pem).value.excluded_subtrees is None
    assert _verify(added.cert_pem, added.ca_pem, "registry-alt.example") == "ok"
    assert _verify(first.cert_pem, added.ca_pem, DOMAIN) == "ok"
    # The old CA certificate does not vouch for the new name: clients need the new one.
    assert _verify(added.cert_pem, first.ca_pem, "registry-alt.example") != "ok"
    # During the switch clients hold new + old (roles/trust.py): the new name verifies.
    assert _verify(added.cert_pem, added.ca_pem + first.ca_pem, "registry-alt.example") == "ok"
    assert "OK" in _openssl_verify(tmp_path, added.cert_pem, added.ca_pem + first.ca_pem)

    # Dropping the name again stays inside the CA: certificate re-issued, CA unchanged.
    removed = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    assert removed.reissued and removed.ca_pem == added.ca_pem
    again = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    assert not again.reissued and again.ca_pem == added.ca_pem


def test_second_domain_in_one_state_dir_keeps_the_first_covered(tmp_path: Path) -> None:
    ensure_ca(tmp_path, names=[DOMAIN, "registry.other.example"])
    ca_pem = (tmp_path / "ca" / "ca.crt").read_bytes()
    one = ensure_server_certificate(tmp_path, DOMAIN, [], [])
    two = ensure_server_certificate(tmp_path, "registry.other.example", [], [])
    assert one.ca_pem == two.ca_pem == ca_pem  # prepared once for both: no re-signing
    assert _verify(one.cert_pem, ca_pem, DOMAIN) == "ok"
    assert _verify(two.cert_pem, ca_pem, "registry.other.example") == "ok"


def test_existing_ca_without_constraints_is_kept(tmp_path: Path, keys: Keys) -> None:
    # A CA made by an older kit: no NameConstraints. Upgrading the kit must not replace it.
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir(mode=0o700)
    (ca_dir / "ca.key").write_bytes(_key_pem(keys.other_ca))
    (ca_dir / "ca.key").chmod(0o600)
    legacy = _pem(_make_ca(keys.other_ca, "registry-kit CA"))
    (ca_dir / "ca.crt").write_bytes(legacy)
    server = ensure_server_certificate(tmp_path, DOMAIN, ["new.example"], ["10.0.0.5"])
    assert server.ca_pem == legacy == (ca_dir / "ca.crt").read_bytes()
    with pytest.raises(x509.ExtensionNotFound):
        _constraints(server.ca_pem)
    assert _issued_by(server.cert_pem, legacy)
