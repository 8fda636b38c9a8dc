"""TLS material for the registry, managed on the control machine.

Two modes feed the deploy code a :class:`ServerCertificate`:

* self-signed: the kit keeps its own CA under ``<state_dir>/ca/`` (``ca.key``, ``ca.crt``)
  and a server certificate per domain under ``<state_dir>/servers/<domain>/``
  (``server.key``, ``server.crt``). Existing files are reused unchanged unless they no
  longer fit (names changed, close to expiry, CA replaced), so reruns are idempotent and
  return byte-identical PEM. The CA carries a critical NameConstraints extension that permits
  only the names its server certificates need (see :func:`_name_constraints`).
* provided: the operator's certificate, key and CA files are read and checked here, so a
  bad file fails the run with one clear line before any host is touched.

Only the ``cryptography`` package is used; nothing shells out to openssl.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import secrets
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry_kit.model.settings import is_hostname, masked_repr

__all__ = [
    "ServerCertificate",
    "TLSError",
    "certificate_days_left",
    "ensure_ca",
    "ensure_server_certificate",
    "load_provided",
]

CA_VALID_DAYS = 3650
# Re-sign the CA certificate (same key) this long before it expires, so every server
# certificate it signs (clamped to the CA's own lifetime) still has a useful life left.
CA_RENEW_DAYS = 90
# Backdate notBefore a little: clients whose clocks lag the control machine would otherwise
# reject a certificate issued seconds ago.
CLOCK_SKEW = timedelta(hours=1)

_CA_DIR = "ca"
_SERVERS_DIR = "servers"
_LOCK_FILE = ".tls.lock"


# Keys the kit can sign with / serve; others (DSA, X25519...) are not usable for TLS here.
_SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_ALL_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

# One process may call in from several greenlets/threads; the file lock covers other processes.
_process_lock = threading.Lock()


class TLSError(Exception):
    """TLS material is missing or unusable; the message is one human-readable line."""


@masked_repr("key_pem")
@dataclass(frozen=True)
class ServerCertificate:
    """What the deploy code installs on registry servers and clients."""

    cert_pem: bytes  # server certificate (leaf) PEM
    key_pem: bytes  # PKCS8, unencrypted; *** in repr so logs stay clean
    ca_pem: bytes  # what clients must trust: the CA, or the whole chain above a provided leaf
    reissued: bool  # True when this call created a new server certificate


# --------------------------------------------------------------------------- helpers


def _utc(now: datetime | None) -> datetime:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    # Certificates carry whole seconds; trimming here keeps comparisons honest.
    return now.astimezone(UTC).replace(microsecond=0)


def _fmt(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    # Comparing SubjectPublicKeyInfo DER works for every key type.
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: _SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate, universally supported by Docker/Go TLS clients.
    return ec.generate_private_key(ec.SECP256R1())


def _load_key(data: bytes) -> _SigningKey | None:
    """Parse an unencrypted PEM key the kit can use, or return None."""
    if not data:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None


def _load_first_cert(data: bytes) -> x509.Certificate | None:
    if not data:
        return None
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Return None if ``issuer`` signed ``cert``, else why not (for error messages)."""
    if cert.issuer != issuer.subject:
        return f"its issuer '{cert.issuer.rfc4514_string()}' is not '{_name(issuer)}'"
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return f"its signature does not verify with the public key of '{_name(issuer)}'"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"its signature cannot be checked ({exc})"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file + rename so readers never see a half-written key or cert."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL on a fresh random name: never follows a planted symlink; mode applies at creation
    # so a key is never world-readable, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _tighten(path: Path, mode: int) -> None:
    # mkdir/open modes are ignored for existing paths (and masked by umask): enforce them.
    if path.stat().st_mode & 0o777 != mode:
        path.chmod(mode)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)
    return path


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise issuance: two callers must not mint two different CAs or certificates."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _process_lock:
        if sys.platform == "win32":  # no flock; the in-process lock is the best we can do
            yield
            return
        import fcntl

        fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def _key_usage(**wanted: bool) -> x509.KeyUsage:
    """A KeyUsage with the named bits set and every other bit clear."""
    bits = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{bit: wanted.get(bit, False) for bit in bits})


def _normalise_dns(name: str, *, what: str, allow_wildcard: bool) -> str:
    # DNS is case-insensitive and a trailing dot is the same name; compare canonical forms.
    norm = name.strip().lower().rstrip(".")
    # One hostname rule for the whole kit (settings.is_hostname: no `_`, whole string).
    if is_hostname(norm) or (allow_wildcard and norm.startswith("*.") and is_hostname(norm[2:])):
        return norm
    raise TLSError(
        f"{what} {name!r} is not a valid DNS name (use ASCII/punycode labels, "
        f"{'an optional leading *. , ' if allow_wildcard else ''}at most 253 characters)"
    )


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


# --------------------------------------------------------------------------- CA


def ensure_ca(
    state_dir: Path,
    common_name: str = "registry-kit CA",
    *,
    names: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Create the kit's CA once under ``state_dir/ca`` and return ``(cert_path, key_path)``.

    A new CA may sign only for ``names`` (DNS, ``*.`` allowed) and ``ips``: a critical
    NameConstraints extension permits those and nothing else. An existing, valid CA that
    covers them is reused untouched; one whose constraints do not is re-signed with the same
    key to permit them too (:func:`_ensure_ca_locked`). A CA without constraints (made by an
    older kit) is left as it is. A missing certificate, or one within
    ``CA_RENEW_DAYS`` of expiry, is re-signed with the existing key and subject, so server
    certificates it signed stay valid. An existing CA key is never replaced: an unreadable
    key, or a certificate that does not belong to it, raises TLSError; removing the ``ca``
    directory is the deliberate way to start a new CA.
    """
    if not 1 <= len(common_name) <= 64:
        raise TLSError(f"CA common name {common_name!r} must be 1 to 64 characters")
    state_dir = Path(state_dir)
    want_dns, want_ips = _wanted_names(names, ips)
    with _locked(state_dir):
        _ensure_ca_locked(state_dir, common_name, _utc(None), CA_RENEW_DAYS, want_dns, want_ips)
    ca_dir = state_dir / _CA_DIR
    return ca_dir / "ca.crt", ca_dir / "ca.key"


def _ca_problem(cert: x509.Certificate, key: _SigningKey) -> str | None:
    """Why ``cert`` cannot be the CA certificate for ``key`` (dates aside), or None."""
    if _spki(cert.public_key()) != _spki(key.public_key()):
        return "certificate does not match ca.key"
    if not _is_ca(cert):
        return "certificate is not a CA (CA:TRUE missing)"
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    return None if ku.key_cert_sign else "certificate may not sign certificates (keyCertSign)"


def _ensure_ca_locked(
    state_dir: Path,
    common_name: str,
    now: datetime,
    min_days_left: int,
    want_dns: set[str],
    want_ips: set[_IP],
) -> tuple[x509.Certificate, _SigningKey]:
    ca_dir = _private_dir(state_dir / _CA_DIR)
    key_path, cert_path = ca_dir / "ca.key", ca_dir / "ca.crt"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "registry-kit"),
        ]
    )

    ca_key: _SigningKey
    wanted = ({_dns_subtree(n) for n in want_dns}, {ipaddress.ip_network(ip) for ip in want_ips})
    # What the CA certificate written below may sign for; None keeps an older kit's
    # unconstrained CA unconstrained when it is renewed (no surprise change on upgrade).
    permitted: tuple[set[str], set[_Net]] | None = wanted
    if key_path.exists():
        loaded = _load_key(key_path.read_bytes())
        if loaded is None:
            # Never clobber a CA key we cannot read: it may be the operator's, or encrypted.
            raise TLSError(
                f"{key_path}: not an unencrypted PEM EC/RSA private key; "
                f"fix it or remove {ca_dir} to create a new CA"
            )
        ca_key = loaded
        _tighten(key_path, 0o600)
        if cert_path.exists():
            old = _load_first_cert(cert_path.read_bytes())
            problem = "not a PEM certificate" if old is None else _ca_problem(old, ca_key)
            if old is None or problem is not None:
                raise TLSError(f"{cert_path}: {problem}; fix it or remove {ca_dir} for a new CA")
            had = _permitted(old)
            covers = had is None or _covers(had, want_dns, want_ips)
            if (
                covers
                and old.not_valid_before_utc <= now
                and old.not_valid_after_utc - now >= timedelta(days=min_days_left)
            ):
                return old, ca_key
            # Renewal, or a name the CA may not sign for yet: re-sign with the same key and
            # subject, permitting what it permitted plus the wanted names. Existing server
            # certificates still chain, and clients receive the new certificate through the
            # CA-rotation path (registry_kit.roles.trust: new + old trusted before any server
            # serves a certificate for the new name). Widening rather than refusing: a changed
            # name list is an ordinary deploy (README "Certificate rotation") and several
            # registries may share one state dir; a refusal would send the operator to replace
            # the CA by hand, which invalidates every copy of ca.crt handed out (the key
            # changes), where this keeps every certificate for the old names valid under the
            # old ca.crt. Only clients that should reach a new name need the new ca.crt.
            subject = old.subject
            permitted = None if had is None else (had[0] | wanted[0], had[1] | wanted[1])
    else:
        ca_key = _new_key()
        # Key first: a crash before the cert is written leaves a key the next run completes.
        _write_atomic(key_path, _key_pem(ca_key), 0o600)

    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=CA_VALID_DAYS))
        # path_length=0: this CA only ever signs server certificates, never other CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if permitted is not None:
        # Critical, as RFC 5280 4.2.1.10 requires: a client that cannot apply the constraints
        # must reject the CA rather than trust it for every name.
        cert = cert.add_extension(_name_constraints(*permitted), critical=True)
    signed = cert.sign(ca_key, hashes.SHA256())
    _write_atomic(cert_path, _cert_pem(signed), 0o644)
    return signed, ca_key


# --------------------------------------------------------------------------- name constraints

def _dns_subtree(name: str) -> str:
    # A dNSName constraint covers the name and every name below it (RFC 5280 4.2.1.10), so
    # "*.example.com" needs "example.com". A leading-dot form would exclude example.com
    # itself, but cryptography's verifier rejects it as malformed; Go and OpenSSL accept both.
    return name[2:] if name.startswith("*.") else name


def _name_constraints(dns: set[str], nets: set[_Net]) -> x509.NameConstraints:
    """Permit exactly ``dns`` and ``nets``. A name type without a permitted subtree is not
    constrained at all (RFC 5280), so a type the certificates do not use is excluded as a
    whole: every DNS name (the empty dNSName matches all names in Go and OpenSSL), or every
    IPv4 and IPv6 address. Permitting an IPv4 address alone already rules out all IPv6
    (an address only matches a subtree of its own length)."""
    permitted: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(dns)]
    permitted += [x509.IPAddress(n) for n in sorted(nets, key=lambda n: (n.version, str(n)))]
    excluded: list[x509.GeneralName] = [] if dns else [x509.DNSName("")]
    excluded += [] if nets else [x509.IPAddress(n) for n in _ALL_IPS]
    return x509.NameConstraints(permitted_subtrees=permitted or None,
                                excluded_subtrees=excluded or None)


def _permitted(ca_cert: x509.Certificate) -> tuple[set[str], set[_Net]] | None:
    """The DNS and IP subtrees a CA certificate permits, or None when it has no constraints."""
    try:
        nc = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    dns: set[str] = set()
    nets: set[_Net] = set()
    for name in nc.permitted_subtrees or ():
        if isinstance(name, x509.DNSName):
            dns.add(name.value.lower())
        elif isinstance(name, x509.IPAddress) and isinstance(
            name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            nets.add(name.value)
    return dns, nets


def _covers(permitted: tuple[set[str], set[_Net]], dns: set[str], ips: set[_IP]) -> bool:
    """Whether a CA permitting ``permitted`` (as the kit writes it) may sign every name."""
    bases, nets = permitted
    return all(any(n == b or n.endswith("." + b) for b in bases) for n in dns) and all(
        any(ip in net for net in nets if net.version == ip.version) for ip in ips
    )


# --------------------------------------------------------------------------- self-signed


def _wanted_sans(
    domain: str, extra_names: Sequence[str], extra_ips: Sequence[str]
) -> tuple[str, set[str], set[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Return (canonical domain, DNS names, IPs) the server certificate must carry."""
    dns: set[str] = set()
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    domain_ip = _parse_ip(domain)
    if domain_ip is not None:
        canonical = str(domain_ip)
        ips.add(domain_ip)
    else:
        canonical = _normalise_dns(domain, what="registry domain", allow_wildcard=False)
        dns.add(canonical)
    for name in extra_names:
        dns.add(_normalise_dns(name, what="extra TLS name", allow_wildcard=True))
    for raw in extra_ips:
        ip = _parse_ip(raw)
        if ip is None:
            raise TLSError(f"extra TLS IP {raw!r} is not an IP address")
        ips.add(ip)
    return canonical, dns, ips


def _wanted_names(names: Sequence[str], ips: Sequence[str]) -> tuple[set[str], set[_IP]]:
    """DNS names (an IP among ``names`` counts as an IP, like an IP domain) and IPs."""
    dns: set[str] = set()
    addresses: set[_IP] = set()
    for name in names:
        ip = _parse_ip(name)
        if ip is not None:
            addresses.add(ip)
        else:
            dns.add(_normalise_dns(name, what="CA name", allow_wildcard=True))
    for raw in ips:
        ip = _parse_ip(raw)
        if ip is None:
            raise TLSError(f"CA IP {raw!r} is not an IP address")
        addresses.add(ip)
    return dns, addresses


def _cert_sans(
    cert: x509.Certificate,
) -> tuple[set[str], set[ipaddress.IPv4Address | ipaddress.IPv6Address]] | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    dns = {n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)}
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for ip in san.get_values_for_type(x509.IPAddress):
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            ips.add(ip)
    return dns, ips


def _has_server_auth(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no EKU means "any purpose" to Go's verifier
    return (
        ExtendedKeyUsageOID.SERVER_AUTH in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku
    )


def ensure_server_certificate(
    state_dir: Path,
    domain: str,
    extra_names: Sequence[str],
    extra_ips: Sequence[str],
    *,
    now: datetime | None = None,
    renew_days: int = 30,
    valid_days: int = 825,
) -> ServerCertificate:
    """Return the kit-CA-signed server certificate for ``domain``, issuing it when needed.

    The stored certificate and key are returned byte-for-byte unless the certificate is
    missing or unreadable, its SANs differ from ``{domain} ∪ extra_names ∪ extra_ips``, it
    is within ``renew_days`` of expiry (or not yet valid), it lacks serverAuth, it does not
    match the key, or it was not signed by the current CA. On reissue the existing server
    key is kept when usable, so only the certificate changes.
    """
    if not 1 <= valid_days <= CA_VALID_DAYS:
        raise ValueError(f"valid_days must be between 1 and {CA_VALID_DAYS}")
    if not 0 <= renew_days < valid_days:
        # Otherwise every fresh certificate would already be "due" and each run would reissue.
        raise ValueError("renew_days must be >= 0 and smaller than valid_days")
    state_dir = Path(state_dir)
    at = _utc(now)
    canonical, want_dns, want_ips = _wanted_sans(domain, extra_names, extra_ips)

    with _locked(state_dir):
        # The CA must outlive the renewal window, or a clamped server cert would be "due" forever.
        ca_cert, ca_key = _ensure_ca_locked(
            state_dir, "registry-kit CA", at, max(CA_RENEW_DAYS, renew_days + 1), want_dns, want_ips
        )
        ca_pem = (state_dir / _CA_DIR / "ca.crt").read_bytes()
        srv_dir = _private_dir(state_dir / _SERVERS_DIR / canonical)
        key_path, cert_path = srv_dir / "server.key", srv_dir / "server.crt"

        key_bytes = key_path.read_bytes() if key_path.exists() else b""
        key = _load_key(key_bytes)
        if key is None:
            # Our own key, absent or unusable: replacing it loses nothing.
            key = _new_key()
            key_bytes = _key_pem(key)
            _write_atomic(key_path, key_bytes, 0o600)
        else:
            _tighten(key_path, 0o600)

        cert_bytes = cert_path.read_bytes() if cert_path.exists() else b""
        cert = _load_first_cert(cert_bytes)
        if cert is not None and _server_cert_ok(
            cert, key, ca_cert, want_dns, want_ips, at, renew_days
        ):
            return ServerCertificate(cert_bytes, key_bytes, ca_pem, reissued=False)

        new_cert = _issue_server_cert(
            canonical, want_dns, want_ips, key, ca_cert, ca_key, at, valid_days
        )
        cert_bytes = _cert_pem(new_cert)
        _write_atomic(cert_path, cert_bytes, 0o644)
        return ServerCertificate(cert_bytes, key_bytes, ca_pem, reissued=True)


def _server_cert_ok(
    cert: x509.Certificate,
    key: _SigningKey,
    ca_cert: x509.Certificate,
    want_dns: set[str],
    want_ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
    now: datetime,
    renew_days: int,
) -> bool:
    sans = _cert_sans(cert)
    return (
        sans == (want_dns, want_ips)
        and _spki(cert.public_key()) == _spki(key.public_key())
        and cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc - now >= timedelta(days=renew_days)
        and _has_server_auth(cert)
        and _signed_by(cert, ca_cert) is None
    )


def _issue_server_cert(
    canonical: str,
    dns: set[str],
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address],
    key: _SigningKey,
    ca_cert: x509.Certificate,
    ca_key: _SigningKey,
    now: datetime,
    valid_days: int,
) -> x509.Certificate:
    # Sorted so the same inputs always produce the same SAN order.
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(dns)]
    names += [x509.IPAddress(ip) for ip in sorted(ips, key=lambda i: (i.version, int(i)))]
    # CN is limited to 64 characters; longer names live in the SAN only, which must then be
    # critical because the subject is empty (RFC 5280 4.2.1.6). An IP domain gets no CN
    # either: OpenSSL checks a CN that looks like a host name ("10.0.0.5" does) against the
    # CA's DNS constraints when the certificate has no DNS SAN, and those exclude every name.
    fits = len(canonical) <= 64 and canonical in dns
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, canonical)] if fits else [])
    # A server certificate must not outlive the CA that vouches for it.
    not_after = min(now + timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # RSA key exchange (old TLS) encrypts to the key; harmless for EC keys.
            _key_usage(digital_signature=True,
                       key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=not fits)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


# --------------------------------------------------------------------------- provided


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TLSError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise TLSError(f"{path}: {what} file is a directory") from None
    except OSError as exc:
        raise TLSError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None


def _read_certs(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSError(f"{path}: {what} file is not a PEM certificate (BEGIN CERTIFICATE)")
    return certs


def _check_dates(cert: x509.Certificate, path: Path, label: str, now: datetime) -> None:
    if cert.not_valid_after_utc < now:
        raise TLSError(f"{path}: {label} expired on {_fmt(cert.not_valid_after_utc)}")
    if cert.not_valid_before_utc > now:
        raise TLSError(f"{path}: {label} is not valid until {_fmt(cert.not_valid_before_utc)}")


def _san_matches(pattern: str, host: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    if pattern == host:
        return True
    # A wildcard stands for exactly one whole leftmost label, as browsers and Go do.
    if pattern.startswith("*.") and "." in host:
        first, rest = host.split(".", 1)
        return bool(first) and rest == pattern[2:]
    return False


def _check_covers(cert: x509.Certificate, path: Path, domain: str) -> None:
    sans = _cert_sans(cert)
    if sans is None:
        raise TLSError(
            f"{path}: certificate has no subjectAltName, so Docker clients cannot match "
            f"'{domain}' (the CN is ignored)"
        )
    dns, ips = sans
    ip = _parse_ip(domain)
    if ip is not None:
        ok = ip in ips
    else:
        host = domain.strip().lower().rstrip(".")
        ok = any(_san_matches(p, host) for p in dns)
    if not ok:
        listed = ", ".join(sorted(dns) + [str(i) for i in sorted(ips, key=str)]) or "none"
        raise TLSError(f"{path}: certificate names ({listed}) do not cover '{domain}'")


def load_provided(
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None,
    domain: str,
    *,
    now: datetime | None = None,
) -> ServerCertificate:
    """Read and check operator-provided TLS files; every failure is one TLSError line.

    ``cert_file`` holds the leaf, optionally followed by intermediates. Each link must be
    signed by the next, and the last one by a certificate in ``ca_file`` (or be one of
    them). Without ``ca_file`` the leaf must be self-signed, or the chain's last
    certificate is taken as the CA. ``ca_pem`` is everything above the leaf; ``key_pem``
    is re-encoded as unencrypted PKCS8.
    """
    at = _utc(now)
    cert_file, key_file = Path(cert_file), Path(key_file)

    chain = _read_certs(cert_file, "certificate")
    key_data = _read(key_file, "private key")
    cas = _read_certs(Path(ca_file), "CA") if ca_file is not None else []

    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSError(f"{key_file}: private key is encrypted; provide it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSError(f"{key_file}: not a PEM private key (BEGIN ... PRIVATE KEY)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TLSError(f"{key_file}: unsupported key type {type(key).__name__}; use RSA or EC")

    leaf = chain[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSError(f"{key_file}: private key does not match the certificate in {cert_file}")

    _check_dates(leaf, cert_file, "certificate", at)
    _check_covers(leaf, cert_file, domain)
    if not _has_server_auth(leaf):
        raise TLSError(f"{cert_file}: certificate is not for TLS servers (no serverAuth EKU)")

    for i, (child, parent) in enumerate(itertools.pairwise(chain), start=1):
        label = f"certificate #{i + 1} ('{_name(parent)}')"
        why = _signed_by(child, parent)
        if why is not None:
            raise TLSError(f"{cert_file}: chain broken at certificate #{i}: {why}")
        if not _is_ca(parent):
            raise TLSError(f"{cert_file}: {label} is not a CA (basicConstraints CA:TRUE missing)")
        _check_dates(parent, cert_file, label, at)

    top = chain[-1]
    if ca_file is None:
        if len(chain) == 1:
            if _signed_by(leaf, leaf) is not None:
                raise TLSError(
                    f"{cert_file}: certificate is not self-signed and no CA file was given"
                )
            above = [leaf]  # clients trust the self-signed leaf itself
        else:
            above = chain[1:]
    else:
        ca_path = Path(ca_file)
        top_der = top.public_bytes(serialization.Encoding.DER)
        if any(c.public_bytes(serialization.Encoding.DER) == top_der for c in cas):
            anchor = None  # the chain already ends in a certificate from the CA file
        else:
            reasons = [(c, _signed_by(top, c)) for c in cas]
            anchor = next((c for c, why in reasons if why is None), None)
            if anchor is None:
                raise TLSError(
                    f"{cert_file}: chain does not verify against {ca_path}: "
                    f"'{_name(top)}' {reasons[0][1]}"
                )
            if not _is_ca(anchor):
                raise TLSError(f"{ca_path}: '{_name(anchor)}' is not a CA (CA:TRUE missing)")
            _check_dates(anchor, ca_path, "CA certificate", at)
        # Intermediates from cert_file (minus any that repeat the CA file), then the CA file.
        ca_ders = {c.public_bytes(serialization.Encoding.DER) for c in cas}
        above = [c for c in chain[1:] if c.public_bytes(serialization.Encoding.DER) not in ca_ders]
        above += cas

    return ServerCertificate(
        cert_pem=_cert_pem(leaf),
        key_pem=_key_pem(key),
        ca_pem=b"".join(_cert_pem(c) for c in above),
        reissued=False,
    )


# --------------------------------------------------------------------------- inspection


def certificate_days_left(cert_pem: bytes, *, now: datetime | None = None) -> int:
    """Whole days until the first certificate in ``cert_pem`` expires (negative if expired)."""
    cert = _load_first_cert(cert_pem)
    if cert is None:
        raise TLSError("not a PEM certificate")
    return (cert.not_valid_after_utc - _utc(now)).days

