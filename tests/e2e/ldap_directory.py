"""A real directory for the e2e tests: Debian's slapd on a lab host of its own (never the
registry's), installed noninteractively (debconf preseed), served over LDAPS and StartTLS
with a certificate from a CA made here with cryptography, and seeded by LDIF with users
(inetOrgPerson under ou=people), groups (groupOfNames under ou=groups) and the service
account the kit binds as (cn=registry).

Everything goes through SSH as an operator would (harness.ssh); secrets reach the host on
stdin or in files, never in a command line.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field

import harness
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SUFFIX = "dc=lab"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=registry,{SUFFIX}"
TLS_DIR = "/etc/ldap/registry-kit-lab"


@dataclass
class Directory:
    host: str  # lab host name (lab-ldap)
    name: str  # the DNS name the certificate covers and servers use (ldap.lab)
    admin_password: str
    service_password: str
    users: dict[str, str]  # uid: password
    groups: dict[str, list[str]]  # cn: member uids
    ca_pem: bytes = field(default=b"", repr=False)

    def dn(self, uid: str) -> str:
        return f"uid={uid},{PEOPLE}"


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def tls_material(name: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate for `name`, server key), all PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("registry-kit lab directory CA"))
          .issuer_name(_name("registry-kit lab directory CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()))


def _ldif(directory: Directory) -> str:
    entries = [
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: "
        f"simpleSecurityObject\ncn: registry\nuserPassword: {directory.service_password}\n",
    ]
    for uid, password in directory.users.items():
        entries.append(f"dn: {directory.dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                       f"cn: {uid}\nsn: {uid}\nuserPassword: {password}\n")
    for group, members in directory.groups.items():
        entries.append(f"dn: cn={group},{GROUPS}\nobjectClass: groupOfNames\ncn: {group}\n" +
                       "".join(f"member: {directory.dn(uid)}\n" for uid in members))
    return "\n".join(entries)


def _tls_ldif() -> str:
    return (f"dn: cn=config\nchangetype: modify\nreplace: olcTLSCACertificateFile\n"
            f"olcTLSCACertificateFile: {TLS_DIR}/ca.crt\n-\n"
            f"replace: olcTLSCertificateFile\nolcTLSCertificateFile: {TLS_DIR}/server.crt\n-\n"
            f"replace: olcTLSCertificateKeyFile\n"
            f"olcTLSCertificateKeyFile: {TLS_DIR}/server.key\n-\n"
            # "stats": one journal line per bind, so a test can count them.
            "replace: olcLogLevel\nolcLogLevel: stats\n")


def install(directory: Directory, material: tuple[bytes, bytes, bytes]) -> float:
    """slapd up on `directory.host` with TLS (`material`: tls_material's CA, certificate
    and key) and the seed; seconds it took."""
    start = time.monotonic()
    ca, cert, key = material
    directory.ca_pem = ca
    preseed = "".join(f"slapd {line}\n" for line in (
        "slapd/no_configuration boolean false", "slapd/domain string lab",
        "shared/organization string registry-kit lab",
        f"slapd/password1 password {directory.admin_password}",
        f"slapd/password2 password {directory.admin_password}",
        "slapd/purge_database boolean true", "slapd/move_old_database boolean true"))
    ssh = harness.ssh
    ssh(directory.host, "debconf-set-selections", stdin=preseed)
    ssh(directory.host, "export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null "
        "&& apt-get install -y -q --no-install-recommends slapd ldap-utils >/dev/null")
    for name, content, mode in (("ca.crt", ca, "644"), ("server.crt", cert, "644"),
                                ("server.key", key, "600")):
        ssh(directory.host, f"install -d -m 755 {TLS_DIR} && cat > {TLS_DIR}/{name} && "
            f"chown openldap:openldap {TLS_DIR}/{name} && chmod {mode} {TLS_DIR}/{name}",
            stdin=content.decode())
    ssh(directory.host, "ldapmodify -Q -Y EXTERNAL -H ldapi:/// >/dev/null", stdin=_tls_ldif())
    ssh(directory.host, "sed -i 's|^SLAPD_SERVICES=.*|SLAPD_SERVICES=\"ldap:/// ldaps:/// "
        "ldapi:///\"|' /etc/default/slapd && systemctl restart slapd")
    admin(directory, "ldapadd", _ldif(directory))
    return round(time.monotonic() - start, 1)


def admin(directory: Directory, tool: str, ldif: str) -> None:
    """ldapadd / ldapmodify as the directory's admin (its password from a 0600 file)."""
    harness.ssh(directory.host, "umask 077 && cat > /root/.ldap-admin",
                stdin=directory.admin_password)
    harness.ssh(directory.host, f"{tool} -x -H ldapi:/// -D cn=admin,{SUFFIX} "
                "-y /root/.ldap-admin >/dev/null", stdin=ldif)


def binds(directory: Directory) -> list[str]:
    """Every DN slapd logged a simple bind for, in order, once its log stopped growing
    (slapd logs through syslog: under load a line reaches the journal a moment late)."""
    seen: list[str] = []
    for _ in range(30):
        out = harness.ssh(directory.host, "journalctl -u slapd -o cat --no-pager | grep -o "
                          "'BIND dn=\"[^\"]*\" method=128' || true").stdout
        now = [line.split('"')[1] for line in out.splitlines()]
        if now == seen:
            return now
        seen = now
        time.sleep(1)
    return seen


def remove_member(directory: Directory, group: str, uid: str) -> None:
    admin(directory, "ldapmodify", f"dn: cn={group},{GROUPS}\nchangetype: modify\n"
          f"delete: member\nmember: {directory.dn(uid)}\n")


def add_member(directory: Directory, group: str, uid: str) -> None:
    admin(directory, "ldapmodify", f"dn: cn={group},{GROUPS}\nchangetype: modify\n"
          f"add: member\nmember: {directory.dn(uid)}\n")
