"""Token auth on registry servers: the kit's token server (scripts/registry-token-server.py)
as a systemd service beside the registry, its signing key, and the policy it enforces.

Used when `registry_access_rules` is set (registry_kit.access). The registry's config.yml
then has `auth.token` (realm: this server's https://DOMAIN:registry_token_port/token,
rootcertbundle: the signing certificate) instead of `auth.htpasswd`; the token server
reads the same htpasswd and the kit's policy.json, and re-reads both when they change, so a
run that changes users, groups or rules restarts nothing.

Control machine: the signing key (EC P-256, made with cryptography, 0600) and its
self-signed certificate live in registry_state_dir/token/, one per domain, so every replica
behind a load balancer signs with the same key.
Reads: registry_access_rules (through Settings.registry_access), registry_token_port,
registry_domain, registry_port, registry_bind_address, registry_config_dir, registry_users.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyinfra import host
from pyinfra.api import operation

from registry_kit import access, remote
from registry_kit.commands import join, q
from registry_kit.facts import HostState
from registry_kit.settings import Settings, host_port, url_host

ISSUER = "registry-kit token server"
SERVICE_NAME = "registry-kit-token.service"
UNIT_PATH = f"/etc/systemd/system/{SERVICE_NAME}"
SCRIPT_NAME = "registry-token-server.py"
SCRIPT_PATH = f"/usr/local/lib/registry-kit/{SCRIPT_NAME}"  # server.SCRIPTS_DIR
# Debian's packages; the probe looks for their files (python3 itself comes with them).
PACKAGES = ("python3", "python3-jwt", "python3-bcrypt", "python3-cryptography")
MODULE_FILES = tuple(f"/usr/lib/python3/dist-packages/{name}/__init__.py"
                     for name in ("jwt", "bcrypt", "cryptography"))
CONTAINER_SIGNING_CERT = "/etc/registry-kit/certs/token-signing.crt"


@dataclass(frozen=True)
class TokenPaths:
    config_dir: str

    @property
    def token_dir(self) -> str:
        return f"{self.config_dir}/token"

    @property
    def signing_key(self) -> str:
        return f"{self.token_dir}/signing.key"

    @property
    def policy(self) -> str:
        return f"{self.token_dir}/policy.json"

    @property
    def signing_cert(self) -> str:
        # In certs/, which the registry container sees as /etc/registry-kit/certs/.
        return f"{self.config_dir}/certs/token-signing.crt"


def enabled(settings: Settings) -> bool:
    return settings.registry_access is not None


def realm(settings: Settings) -> str:
    scheme = "https" if settings.tls_enabled else "http"
    return f"{scheme}://{host_port(settings.registry_domain, settings.registry_token_port)}/token"


def service(settings: Settings) -> str:
    """The token's audience: what clients call the registry (Docker sends it back)."""
    return settings.registry_address


def auth_section(settings: Settings, major: int) -> dict:
    """config.yml's `auth` for token auth. Both 2.8 and 3.0 verify the x5c chain in the
    token's header against rootcertbundle (3.0 also reads `jwks`, which the kit does not
    need). 3.0 accepts every algorithm by default; the kit pins the one it signs with."""
    token: dict = {"realm": realm(settings), "service": service(settings), "issuer": ISSUER,
                   "rootcertbundle": CONTAINER_SIGNING_CERT}
    if major >= 3:
        token["signingalgorithms"] = ["ES256"]
    return {"token": token}


def signing_material(settings: Settings) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM), made once per domain on the control machine and kept."""
    folder = settings.registry_state_dir / "token"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = folder / f"signing-{settings.registry_domain}.key"
    cert_path = folder / f"signing-{settings.registry_domain}.crt"
    if key_path.exists() and cert_path.exists():
        return key_path.read_bytes(), cert_path.read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"registry-kit token signing {settings.registry_domain}")])
    now = datetime.datetime.now(datetime.UTC)
    # No extended key usage: the registry verifies the chain for any usage (3.0 asks
    # ExtKeyUsageAny; 2.8's default ServerAuth passes a certificate that names none).
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_pem, cert_path.read_bytes()


def _write_private(path: Path, content: bytes) -> None:
    temp = path.with_suffix(".tmp")
    temp.unlink(missing_ok=True)
    with open(temp, "xb", opener=lambda p, flags: __import__("os").open(p, flags, 0o600)) as f:
        f.write(content)
    temp.replace(path)


def policy_text(settings: Settings) -> bytes:
    assert settings.registry_access is not None
    document = access.policy_document(settings.registry_access,
                                      [user.name for user in settings.registry_users],
                                      service=service(settings), issuer=ISSUER)
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def listen_address(settings: Settings) -> str:
    bind = settings.registry_bind_address
    address = "0.0.0.0" if bind is None else url_host(str(bind))
    return f"{address}:{settings.registry_token_port}"


def unit_text(settings: Settings) -> bytes:
    """The systemd unit; every value in it is a checked path or address (no spaces)."""
    paths = TokenPaths(settings.registry_config_dir)
    certs = f"{settings.registry_config_dir}/certs"
    argv = ["/usr/bin/python3", SCRIPT_PATH,
            "--listen", listen_address(settings),
            "--signing-key", paths.signing_key, "--signing-cert", paths.signing_cert,
            "--htpasswd", f"{settings.registry_config_dir}/auth/htpasswd",
            "--policy", paths.policy]
    if settings.tls_enabled:
        argv += ["--tls-cert", f"{certs}/server.crt", "--tls-key", f"{certs}/server.key"]
    return ("# Managed by registry-kit (registry_kit/token_auth.py)\n"
            "[Unit]\nDescription=registry-kit token server for the registry's token auth\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\n"
            f"ExecStart={' '.join(argv)}\n"
            "Restart=always\nRestartSec=2\n"
            "NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\n"
            "PrivateDevices=yes\nProtectKernelTunables=yes\nProtectControlGroups=yes\n"
            "\n[Install]\nWantedBy=multi-user.target\n").encode()


def probe_args(settings: Settings) -> dict:
    if not enabled(settings):
        # Rules switched off: a token server left from before is stopped (token_off).
        return teardown_probe_args(settings)
    paths = TokenPaths(settings.registry_config_dir)
    return {"files": [paths.signing_key, paths.policy, paths.signing_cert, UNIT_PATH,
                      SCRIPT_PATH, *MODULE_FILES],
            "dirs": [paths.token_dir], "services": [SERVICE_NAME]}


@operation()
def install_python_packages(state: HostState):
    if all(path in state.files for path in MODULE_FILES):
        host.noop("python3-jwt, python3-bcrypt and python3-cryptography are installed")
        return
    yield ("DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND="
           "noninteractive apt-get install -y -q --no-install-recommends " + join(PACKAGES))


@operation()
def token_service(state: HostState, restart: bool):
    """Started and enabled; restarted when its unit, script, key or TLS files changed
    (never for htpasswd or the policy: the server re-reads those itself)."""
    active, is_enabled = state.services.get(SERVICE_NAME, (False, False))
    if restart:
        yield (f"systemctl daemon-reload && systemctl enable {q(SERVICE_NAME)} && "
               f"systemctl restart {q(SERVICE_NAME)}")
        return
    if active and is_enabled:
        host.noop(f"{SERVICE_NAME} is running")
        return
    yield f"systemctl daemon-reload && systemctl enable --now {q(SERVICE_NAME)}"


def token_deploy(settings: Settings, state: HostState, script: bytes, tls_ops: list):
    """Files and the service, on a server with access rules. Returns the signing
    certificate's upload (a changed certificate needs a registry restart)."""
    paths = TokenPaths(settings.registry_config_dir)
    key_pem, cert_pem = signing_material(settings)
    install_python_packages(state, name="Install the token server's Python packages")
    remote.managed_dir(paths.token_dir, "0700", state.dirs.get(paths.token_dir),
                       name=f"Create {paths.token_dir}")
    key_op = remote.managed_file(paths.signing_key, key_pem, "0600",
                                 state.files.get(paths.signing_key),
                                 name="Upload the token signing key")
    cert_op = remote.managed_file(paths.signing_cert, cert_pem, "0644",
                                  state.files.get(paths.signing_cert),
                                  name="Upload the token signing certificate")
    remote.managed_file(paths.policy, policy_text(settings), "0600",
                        state.files.get(paths.policy),
                        name="Upload the access policy (re-read by the token server)")
    script_op = remote.managed_file(SCRIPT_PATH, script, "0755", state.files.get(SCRIPT_PATH),
                                    name=f"Install {SCRIPT_PATH}")
    unit_op = remote.managed_file(UNIT_PATH, unit_text(settings), "0644",
                                  state.files.get(UNIT_PATH), name=f"Install {UNIT_PATH}")
    changed = [key_op, cert_op, script_op, unit_op, *tls_ops]
    token_service(state, restart=False, name=f"Start {SERVICE_NAME}",
                  _if=lambda: not any(op.did_change() for op in changed))
    token_service(state, restart=True, name=f"Restart {SERVICE_NAME} for its changed files",
                  _if=lambda: any(op.did_change() for op in changed))
    return cert_op


# --- teardown: the reverse of token_deploy (whatever the settings say now) ---

def teardown_probe_args(settings: Settings) -> dict:
    token_dir = TokenPaths(settings.registry_config_dir).token_dir
    return {"files": [UNIT_PATH], "dirs": [token_dir], "listings": [token_dir],
            "services": [SERVICE_NAME]}


@operation()
def remove_token_service(state: HostState):
    active, is_enabled = state.services.get(SERVICE_NAME, (False, False))
    if UNIT_PATH not in state.files and not (active or is_enabled):
        host.noop(f"no {SERVICE_NAME}")
        return
    yield (f"systemctl disable --now {q(SERVICE_NAME)} >/dev/null 2>&1; rm -f {q(UNIT_PATH)} "
           "&& systemctl daemon-reload")


TOKEN_DIR_FILES = ("signing.key", "policy.json")
CERT_FILES = ("token-signing.crt",)


@operation()
def remove_token_files(settings: Settings, state: HostState):
    """Rules switched off: the signing key and policy go too (teardown does the same by
    folder plans); the signing certificate is public and goes with teardown."""
    token_dir = TokenPaths(settings.registry_config_dir).token_dir
    if token_dir not in state.dirs:
        host.noop(f"no {token_dir}")
        return
    files = " ".join(q(f"{token_dir}/{name}") for name in TOKEN_DIR_FILES)
    yield f"rm -f {files} && rmdir {q(token_dir)}"


def token_off(settings: Settings, state: HostState) -> None:
    """A server without access rules runs no token server (it may have had one)."""
    remove_token_service(state, name=f"Stop {SERVICE_NAME} (no access rules)")
    remove_token_files(settings, state, name="Remove the token signing key and policy "
                       "(no access rules)")
