"""TLS material for the registry, built and checked: values in, certificates out. The
files they live in are registry_kit.model.keystore's, which reads and writes them.

Two modes feed the deploy code a :class:`ServerCertificate`:

* self-signed: the kit's own CA (:func:`ca_key`, :func:`ca_certificate`) and a server
  certificate per domain (:func:`server_certificate`). A stored certificate is reused
  unchanged unless it no longer fits (names changed, close to expiry, CA replaced), so
  reruns are idempotent and return byte-identical PEM. The CA carries a critical
  NameConstraints extension that permits only the names its server certificates need (see
  :func:`_name_constraints`).
* provided: the operator's certificate, key and CA are checked (:func:`check_provided`),
  so a bad file fails the run with one clear line before any host is touched.

Only the ``cryptography`` package is used; nothing shells out to openssl.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence
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
    "ca_certificate",
    "ca_key",
    "certificate_days_left",
    "check_provided",
    "server_certificate",
]

CA_VALID_DAYS = 3650
# Re-sign the CA certificate (same key) this long before it expires, so every server
# certificate it signs (clamped to the CA's own lifetime) still has a useful life left.
CA_RENEW_DAYS = 90
# Backdate notBefore a little: clients whose clocks lag the control machine would otherwise
# reject a certificate issued seconds ago.
CLOCK_SKEW = timedelta(hours=1)



# Keys the kit can sign with / serve; others (DSA, X25519...) are not usable for TLS here.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_ALL_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))



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


def utc(now: datetime | None) -> datetime:
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


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate, universally supported by Docker/Go TLS clients.
    return ec.generate_private_key(ec.SECP256R1())


def load_key(data: bytes) -> SigningKey | None:
    """Parse an unencrypted PEM key the kit can use, or return None."""
    if not data:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None


def load_first_cert(data: bytes) -> x509.Certificate | None:
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


def _ca_problem(cert: x509.Certificate, key: SigningKey) -> str | None:
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


def ca_key(data: bytes, key_path: Path, ca_dir: Path) -> SigningKey:
    """The kit's CA key from ca.key's bytes. Never replaced when unreadable: it may be the
    operator's, or encrypted."""
    loaded = load_key(data)
    if loaded is None:
        raise TLSError(
            f"{key_path}: not an unencrypted PEM EC/RSA private key; "
            f"fix it or remove {ca_dir} to create a new CA"
        )
    return loaded


def ca_certificate(ca_key: SigningKey, old_pem: bytes | None, *, common_name: str,
                   now: datetime, min_days_left: int, want_dns: set[str], want_ips: set[_IP],
                   cert_path: Path, ca_dir: Path) -> tuple[x509.Certificate, bool]:
    """(the CA certificate, whether it is new): the stored one (`old_pem`) while it is valid
    for `min_days_left` more days and permits the wanted names, else one signed anew."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "registry-kit"),
        ]
    )
    wanted = ({_dns_subtree(n) for n in want_dns}, {ipaddress.ip_network(ip) for ip in want_ips})
    # What the CA certificate signed below may sign for; None keeps an older kit's
    # unconstrained CA unconstrained when it is renewed (no surprise change on upgrade).
    permitted: tuple[set[str], set[_Net]] | None = wanted
    if old_pem is not None:
        old = load_first_cert(old_pem)
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
            return old, False
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
    return _sign_ca(ca_key, subject, permitted, now), True


def _sign_ca(ca_key: SigningKey, subject: x509.Name,
             permitted: tuple[set[str], set[_Net]] | None, now: datetime) -> x509.Certificate:
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
    return cert.sign(ca_key, hashes.SHA256())


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


def wanted_sans(
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


def wanted_names(names: Sequence[str], ips: Sequence[str]) -> tuple[set[str], set[_IP]]:
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


def server_certificate(stored: bytes, key: SigningKey, ca_cert: x509.Certificate,
                       ca_key: SigningKey, names: tuple[str, set[str], set[_IP]], now: datetime,
                       renew_days: int, valid_days: int) -> x509.Certificate | None:
    """None while the `stored` certificate still fits (names, key, dates, serverAuth, signed
    by the current CA), else a new one for `names` (wanted_sans) signed by the CA."""
    canonical, want_dns, want_ips = names
    cert = load_first_cert(stored)
    if cert is not None and _server_cert_ok(cert, key, ca_cert, want_dns, want_ips, now,
                                            renew_days):
        return None
    return _issue_server_cert(canonical, want_dns, want_ips, key, ca_cert, ca_key, now, valid_days)


def _server_cert_ok(
    cert: x509.Certificate,
    key: SigningKey,
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
    key: SigningKey,
    ca_cert: x509.Certificate,
    ca_key: SigningKey,
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


def pem_certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
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


def check_provided(chain: list[x509.Certificate], key_data: bytes, cas: list[x509.Certificate],
                   *, cert_file: Path, key_file: Path, ca_file: Path | None, domain: str,
                   now: datetime | None = None) -> ServerCertificate:
    """Check operator-provided TLS material (registry_kit.model.keystore.load_provided reads
    it); every failure is one TLSError line.

    ``chain`` is the leaf, optionally followed by intermediates. Each link must be signed by
    the next, and the last one by a certificate in ``cas`` (or be one of them). Without
    ``ca_file`` the leaf must be self-signed, or the chain's last certificate is taken as
    the CA. ``ca_pem`` is everything above the leaf; ``key_pem`` is re-encoded as
    unencrypted PKCS8.
    """
    at = utc(now)
    key = _provided_key(key_data, key_file)
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

    return ServerCertificate(
        cert_pem=cert_to_pem(leaf),
        key_pem=key_to_pem(key),
        ca_pem=b"".join(cert_to_pem(c) for c in _above_leaf(chain, cas, cert_file, ca_file, at)),
        reissued=False,
    )


def _provided_key(key_data: bytes, key_file: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSError(f"{key_file}: private key is encrypted; provide it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSError(f"{key_file}: not a PEM private key (BEGIN ... PRIVATE KEY)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TLSError(f"{key_file}: unsupported key type {type(key).__name__}; use RSA or EC")
    return key


def _above_leaf(chain: list[x509.Certificate], cas: list[x509.Certificate], cert_file: Path,
                ca_file: Path | None, at: datetime) -> list[x509.Certificate]:
    """What clients must trust: the chain above the leaf, anchored in the CA file."""
    leaf, top = chain[0], chain[-1]
    if ca_file is None:
        if len(chain) == 1:
            if _signed_by(leaf, leaf) is not None:
                raise TLSError(
                    f"{cert_file}: certificate is not self-signed and no CA file was given"
                )
            return [leaf]  # clients trust the self-signed leaf itself
        return chain[1:]
    ca_path = Path(ca_file)
    top_der = top.public_bytes(serialization.Encoding.DER)
    if not any(c.public_bytes(serialization.Encoding.DER) == top_der for c in cas):
        # The chain does not already end in a certificate from the CA file.
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
    return above + cas


# --------------------------------------------------------------------------- inspection


def certificate_days_left(cert_pem: bytes, *, now: datetime | None = None) -> int:
    """Whole days until the first certificate in ``cert_pem`` expires (negative if expired)."""
    cert = load_first_cert(cert_pem)
    if cert is None:
        raise TLSError("not a PEM certificate")
    return (cert.not_valid_after_utc - utc(now)).days

