"""Token auth on registry servers: the kit's token server (scripts/registry-token-server.py)
as a systemd service beside the registry, its signing key, and the policy it enforces.

Used when `registry_access_rules` is set (registry_kit.model.access); what the files hold is
registry_kit.render.token_auth. The token server reads copies of the registry's htpasswd
and the kit's policy.json made when it starts (it runs as a dynamic user that cannot read
the originals), so a run that changes users, groups or rules restarts it (a second or so);
the registry itself is not touched.
"""

from __future__ import annotations

from pyinfra import host

from registry_kit import package_data
from registry_kit.commands import join, q
from registry_kit.facts import HostState
from registry_kit.model import keystore
from registry_kit.model.settings import Settings
from registry_kit.operations import files
from registry_kit.operations.typed import operation
from registry_kit.render.token_auth import (
    SCRIPT_NAME,
    SCRIPT_PATH,
    SERVICE_NAME,
    TOKEN_DIR_FILES,
    UNIT_PATH,
    TokenPaths,
    enabled,
    policy_text,
    unit_text,
)

# Debian's packages; the probe looks for their files (python3 itself comes with them).
PACKAGES = ("python3", "python3-jwt", "python3-bcrypt", "python3-cryptography")
MODULE_FILES = tuple(f"/usr/lib/python3/dist-packages/{name}/__init__.py"
                     for name in ("jwt", "bcrypt", "cryptography"))


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
    """Started and enabled; restarted when its unit, script or any file it copies at start
    (key, certificates, htpasswd, policy) changed."""
    active, is_enabled = state.services.get(SERVICE_NAME, (False, False))
    if restart:
        yield (f"systemctl daemon-reload && systemctl enable {q(SERVICE_NAME)} && "
               f"systemctl restart {q(SERVICE_NAME)}")
        return
    if active and is_enabled:
        host.noop(f"{SERVICE_NAME} is running")
        return
    yield f"systemctl daemon-reload && systemctl enable --now {q(SERVICE_NAME)}"


def token_deploy(settings: Settings, state: HostState, tls_ops: list, htpasswd_op):
    """Files and the service, on a server with access rules. Returns the signing
    certificate's upload (a changed certificate needs a registry restart). `tls_ops` and
    `htpasswd_op`: the uploads of the other files the server copies at start."""
    paths = TokenPaths(settings.registry_config_dir)
    key_pem, cert_pem = keystore.token_signing_material(settings)
    install_python_packages(state, name="Install the token server's Python packages")
    files.managed_dir(paths.token_dir, "0700", state.dirs.get(paths.token_dir),
                      name=f"Create {paths.token_dir}")
    key_op = files.managed_file(paths.signing_key, key_pem, "0600",
                                state.files.get(paths.signing_key),
                                name="Upload the token signing key")
    cert_op = files.managed_file(paths.signing_cert, cert_pem, "0644",
                                 state.files.get(paths.signing_cert),
                                 name="Upload the token signing certificate")
    policy_op = files.managed_file(paths.policy, policy_text(settings), "0600",
                                   state.files.get(paths.policy),
                                   name="Upload the access policy")
    script_op = files.managed_file(SCRIPT_PATH, package_data.script(SCRIPT_NAME), "0755",
                                   state.files.get(SCRIPT_PATH),
                                   name=f"Install {SCRIPT_PATH}")
    unit_op = files.managed_file(UNIT_PATH, unit_text(settings), "0644",
                                 state.files.get(UNIT_PATH), name=f"Install {UNIT_PATH}")
    changed = [key_op, cert_op, policy_op, htpasswd_op, script_op, unit_op, *tls_ops]
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
