"""Token auth's files and config, rendered from settings: the registry's `auth.token`
section, the token server's policy.json and systemd unit, and its signing key and
certificate (made once per domain on the control machine). No host access; the steps that
put these on servers are registry_kit.roles.token_server.

Used when the settings have a policy (registry_kit.model.access: access rules, or users
with `registry_auth_mode = "auto"`). The registry's config.yml then has `auth.token`
(realm: this server's https://DOMAIN:registry_token_port/token,
rootcertbundle: the signing certificate) instead of `auth.htpasswd`; the token server
(scripts/registry-token-server.py) reads the same htpasswd and the kit's policy.json
(copies made at its start: see unit_text).

Control machine: the signing key (EC P-256, made with cryptography, 0600) and its
self-signed certificate live in registry_state_dir/token/, one per domain, so every replica
behind a load balancer signs with the same key.
"""

from __future__ import annotations

import datetime
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from registry_kit.model import access, layout
from registry_kit.model.layout import (
    CONTAINER_TOKEN_SIGNING_CERT,
    TOKEN_RUNTIME_DIR,
    Endpoints,
    ServerLayout,
)
from registry_kit.model.settings import Settings
from registry_kit.render import textfile

ISSUER = "registry-kit token server"
TOKEN_DIR_FILES = ("signing.key", "policy.json", "ldap.password", "ldap-ca.crt")
CERT_FILES = ("token-signing.crt",)


def enabled(settings: Settings) -> bool:
    return settings.registry_access is not None


def realm(settings: Settings) -> str:
    return Endpoints.of(settings).realm


def service(settings: Settings) -> str:
    """The token's audience: what clients call the registry (Docker sends it back)."""
    return Endpoints.of(settings).address


def auth_section(settings: Settings, major: int) -> dict:
    """config.yml's `auth` for token auth. Both 2.8 and 3.0 verify the x5c chain in the
    token's header against rootcertbundle (3.0 also reads `jwks`, which the kit does not
    need). 3.0 accepts every algorithm by default; the kit pins the one it signs with."""
    token: dict = {"realm": realm(settings), "service": service(settings), "issuer": ISSUER,
                   "rootcertbundle": CONTAINER_TOKEN_SIGNING_CERT}
    if major >= 3:
        token["signingalgorithms"] = ["ES256"]
    return {"token": token}


def new_signing_material(domain: str) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a new token signing key for `domain`; kept by
    registry_kit.model.keystore.token_signing_material."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"registry-kit token signing {domain}")])
    now = datetime.datetime.now(datetime.UTC)
    # No extended key usage: the registry verifies the chain for any usage (3.0 asks
    # ExtKeyUsageAny; 2.8's default ServerAuth passes a certificate that names none).
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def policy_text(settings: Settings) -> bytes:
    assert settings.registry_access is not None
    document = access.policy_document(settings.registry_access,
                                      [user.name for user in settings.registry_users],
                                      service=service(settings), issuer=ISSUER)
    directory = settings.registry_ldap
    if directory is not None:
        # The CA as the server sees it: its runtime copy (see unit_text).
        ca = f"{TOKEN_RUNTIME_DIR}/ldap-ca.crt" if directory.ca_file is not None else None
        document["ldap"] = directory.document(ca)
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


# Every systemd sandboxing option the server works under (systemd 252, Debian 12): it only
# reads its copied files and answers on one TCP port. MemoryDenyWriteExecute holds with
# Debian's python3, bcrypt and cryptography (seen in the lab).
SANDBOX = (
    "DynamicUser=yes", "UMask=0077", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
    "AmbientCapabilities=", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
    "PrivateDevices=yes", "DevicePolicy=closed", "PrivateIPC=yes", "ProtectHostname=yes",
    "ProtectClock=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectProc=invisible",
    "ProcSubset=pid", "RestrictAddressFamilies=AF_INET AF_INET6", "RestrictNamespaces=yes",
    "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes", "RemoveIPC=yes", "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
    # Connections are bounded in the server (two descriptors each): room for them.
    "LimitNOFILE=4096",
)


def trusted_proxies(settings: Settings) -> list[str]:
    """Where the web page's haproxy connects from (Endpoints.local): the only peers whose
    X-Forwarded-For the server believes, for its per-address login limits."""
    local = Endpoints.of(settings).local_ip
    return ["127.0.0.1", "::1", *([local] if local not in ("127.0.0.1", "::1") else [])]


# RuntimeDirectory= is relative to /run. Both folders are the dynamic user's and go at
# stop. RuntimeDirectoryMode is one mode for both, and systemd sets it again at each Exec
# line it spawns (an ExecStartPre's chmod was undone by ExecStart's start: seen in the
# lab), so the server itself opens the counters' folder (nothing secret: four totals,
# layout.TOKEN_COUNTERS) to the facts server's user when it starts (Counters).
RUNTIME_DIRECTORIES = (
    f"RuntimeDirectory={TOKEN_RUNTIME_DIR.removeprefix('/run/')} "
    f"{layout.TOKEN_COUNTERS_DIR.removeprefix('/run/')}",
    "RuntimeDirectoryMode=0700",
)


# The files a reload copies again (`systemctl reload`): the server re-reads these two by
# themselves when their copies change (their inode, size or mtime), so users, groups and
# rules change without a restart and no login is refused meanwhile. Keys, certificates
# and the directory's files are read once at start: changing them restarts the server.
RELOADED = ("htpasswd", "policy.json")
RELOAD_STAGE = f"{TOKEN_RUNTIME_DIR}/.reload"


def reload_lines(sources: dict[str, str]) -> list[str]:
    """ExecReload: copy RELOADED into a staging folder of the runtime directory, hand them
    to the server's user, then rename them over the copies it reads: a rename replaces a
    file at once, so the server never reads one half written."""
    staged = " ".join(f"{RELOAD_STAGE}/{name}" for name in RELOADED)
    return [f"ExecReload=+/bin/mkdir -p {RELOAD_STAGE}",
            f"ExecReload=+/bin/cp {' '.join(sources[name] for name in RELOADED)} "
            f"{RELOAD_STAGE}/",
            f"ExecReload=+/bin/chown -R --reference={TOKEN_RUNTIME_DIR} {RELOAD_STAGE}",
            f"ExecReload=+/bin/mv -f {staged} {TOKEN_RUNTIME_DIR}/",
            # systemd sets RuntimeDirectoryMode (0700) again on both folders at each line
            # it spawns: the counters' folder is opened to the facts server once more, last
            # (the server opens it itself at start; seen closed after a reload in the lab).
            f"ExecReload=+/bin/chmod 0755 {layout.TOKEN_COUNTERS_DIR}"]


def unit_text(settings: Settings) -> bytes:
    """The systemd unit; every value in it is a checked path or address (no spaces).

    The server runs as a dynamic user with no capabilities. Its files stay root 0600 on
    disk: a privileged ExecStartPre ("+") copies them into its runtime directory (fresh at
    each start, the dynamic user's, 0700) and hands them over. LoadCredential= would do the
    same, but its ramfs needs shared mount propagation, which systemd does not set up in a
    container host (the credentials came out empty in the lab). The copies are made at
    start; a reload (reload_lines) renews those of htpasswd and the policy, which the
    server re-reads by itself, so users and rules change without a restart."""
    paths = ServerLayout.of(settings)
    sources = {"signing.key": paths.signing_key, "token-signing.crt": paths.signing_cert,
               "htpasswd": paths.htpasswd, "policy.json": paths.policy}
    if settings.tls_enabled:
        sources |= {"server.crt": paths.cert, "server.key": paths.key, "ca.crt": paths.ca}
    directory = settings.registry_ldap
    if directory is not None:
        sources["ldap.password"] = paths.ldap_password
        if directory.ca_file is not None:
            sources["ldap-ca.crt"] = paths.ldap_ca
    copy = {name: f"{TOKEN_RUNTIME_DIR}/{name}" for name in sources}
    argv = [layout.PYTHON, layout.TOKEN_SCRIPT,
            "--listen", Endpoints.of(settings).realm_listen,
            "--signing-key", copy["signing.key"], "--signing-cert", copy["token-signing.crt"],
            "--htpasswd", copy["htpasswd"], "--policy", copy["policy.json"],
            "--counters", layout.TOKEN_COUNTERS]
    if settings.tls_enabled:
        argv += ["--tls-cert", copy["server.crt"], "--tls-key", copy["server.key"]]
    # GET /catalog reads this server's registry by its name over the local address.
    endpoints = Endpoints.of(settings)
    argv += ["--registry", endpoints.url, "--registry-address", endpoints.local_ip]
    if settings.tls_enabled:
        argv += ["--registry-ca", copy["ca.crt"]]
    for address in trusted_proxies(settings):
        argv += ["--trusted-proxy", address]
    checks = []
    if directory is not None:
        argv += ["--ldap-password-file", copy["ldap.password"]]
        # A local user's name in the directory too is written down, not fatal: the start
        # goes on (htpasswd wins that name) and the deploy's restart fails with the line
        # (roles/token_server.py), so a name added to the directory later cannot stop
        # every login at the next reboot.
        checks = [f"ExecStartPre={' '.join(argv)} --check-names "
                  f"--names-report {layout.TOKEN_NAME_CONFLICT}"]
    service = [
        *RUNTIME_DIRECTORIES,
        f"ExecStartPre=+/bin/cp {' '.join(sources.values())} {TOKEN_RUNTIME_DIR}/",
        f"ExecStartPre=+/bin/chown -R --reference={TOKEN_RUNTIME_DIR} {TOKEN_RUNTIME_DIR}",
        *checks,
        f"ExecStart={' '.join(argv)}",
        *reload_lines(sources),
        "Restart=always", "RestartSec=2", *SANDBOX,
    ]
    return textfile.systemd_unit(
        "Managed by registry-kit (registry_kit/render/token_auth.py)",
        {"Unit": ["Description=registry-kit token server for the registry's token auth",
                  "After=network-online.target", "Wants=network-online.target"],
         "Service": service, "Install": ["WantedBy=multi-user.target"]}).encode()
