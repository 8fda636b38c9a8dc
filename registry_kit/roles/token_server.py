"""Token auth on registry servers: the kit's token server (scripts/registry-token-server.py)
as a systemd service beside the registry, its signing key, and the policy it enforces.

Used whenever the settings have a policy (registry_kit.model.access): access rules, or,
with `registry_auth_mode = "auto"` (the default), users without rules (every user may do
everything, as with htpasswd, and a request costs the registry a signature check instead of
a bcrypt check). What the files hold is registry_kit.render.token_auth. The token server
reads copies of the registry's htpasswd and the kit's policy.json (it runs as a dynamic
user that cannot read the originals). A run that changes users, groups or rules renews
those copies with `systemctl reload` and the server re-reads them by itself: nothing is
refused. A run that changes what it reads only at start (keys, certificates, its unit or
script, the directory's files; with registry_ldap, users too) restarts it (a second or so;
one replica at a time, drained in the load balancers' token backend meanwhile); the
registry itself is not touched.
"""

from __future__ import annotations

import dataclasses

from pyinfra import host
from pyinfra.api import StringCommand

from registry_kit import package_data
from registry_kit.commands import join, q, wait_until_answers_command
from registry_kit.facts import HostState
from registry_kit.model import keystore, layout
from registry_kit.model.layout import (
    TOKEN_BACKEND,
    TOKEN_SCRIPT,
    TOKEN_SERVICE,
    TOKEN_UNIT,
    Endpoints,
    ServerLayout,
)
from registry_kit.model.settings import Settings
from registry_kit.model.topology import OutOfRotation, Rotation, server_name
from registry_kit.operations import files
from registry_kit.operations.typed import operation
from registry_kit.render.token_auth import (
    TOKEN_DIR_FILES,
    enabled,
    policy_text,
    unit_text,
)

# Debian's packages; the probe looks for their files (python3 itself comes with them).
PACKAGES = ("python3", "python3-jwt", "python3-bcrypt", "python3-cryptography")
MODULE_FILES = tuple(f"{layout.PYTHON_MODULES_DIR}/{name}/__init__.py"
                     for name in ("jwt", "bcrypt", "cryptography"))
# registry_ldap: Debian's python3-ldap3 (pure Python, one package beside python3-pyasn1;
# python3-ldap would bring libldap's C bindings for the same searches and binds).
LDAP_PACKAGES = ("python3-ldap3",)
LDAP_MODULE_FILES = (f"{layout.PYTHON_MODULES_DIR}/ldap3/__init__.py",)


def packages(settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(Debian packages, the files that show they are installed) for these settings."""
    if settings.registry_ldap is None:
        return PACKAGES, MODULE_FILES
    return PACKAGES + LDAP_PACKAGES, MODULE_FILES + LDAP_MODULE_FILES


def probe_args(settings: Settings) -> dict:
    if not enabled(settings):
        # Token auth off: a token server left from before is stopped (token_off).
        return teardown_probe_args(settings)
    paths = ServerLayout.of(settings)
    return {"files": [paths.signing_key, paths.policy, paths.signing_cert, TOKEN_UNIT,
                      TOKEN_SCRIPT, *packages(settings)[1], paths.ldap_password,
                      paths.ldap_ca],
            "dirs": [paths.token_dir], "services": [TOKEN_SERVICE]}


@operation()
def install_python_packages(state: HostState, wanted: tuple[str, ...] = PACKAGES,
                            module_files: tuple[str, ...] = MODULE_FILES):
    if all(path in state.files for path in module_files):
        names = wanted[1:]  # python3 itself goes without saying
        host.noop(f"{', '.join(names[:-1])} and {names[-1]} are installed")
        return
    yield ("DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND="
           "noninteractive apt-get install -y -q --no-install-recommends " + join(wanted))


def answers_command(settings: Settings) -> str:
    """Waits until the token server answers on its realm, from the server itself."""
    endpoints = Endpoints.of(settings)
    ca = ServerLayout.of(settings).ca if settings.tls_enabled else "-"
    return wait_until_answers_command(endpoints.realm, endpoints.realm_resolve, ca,
                                      settings.registry_verify_timeout)


@operation()
def token_service(settings: Settings, state: HostState, restart: bool,
                  rotation: Rotation | None = None):
    """Started and enabled; restarted when its unit, script or any file it copies at start
    (key, certificates, htpasswd, policy) changed, then answering before the run goes on.
    Behind load balancers (`rotation`) it is drained in their token backend first and put
    back once UP there, as a replica's container is (topology.OutOfRotation)."""
    active, is_enabled = state.services.get(TOKEN_SERVICE, (False, False))
    if restart:
        # A start the server refuses (registry_ldap: a local user's name in the directory)
        # fails the run with the server's own last line (_SYSTEMD_UNIT: its output, not
        # systemd's lines about it). reset-failed: the refused starts' retries may have hit
        # systemd's start limit, which would refuse the fixed start too.
        command = (f"systemctl daemon-reload && systemctl enable {q(TOKEN_SERVICE)} && "
                   f"{{ systemctl reset-failed {q(TOKEN_SERVICE)} 2>/dev/null; "
                   f"systemctl restart {q(TOKEN_SERVICE)} || {{ journalctl "
                   f"{q('_SYSTEMD_UNIT=' + TOKEN_SERVICE)} -o cat -n 1 --no-pager >&2; "
                   f"exit 1; }}; }} && {answers_command(settings)}")
        if settings.registry_ldap is not None:
            # The start went on with a local name that is in the directory too (htpasswd
            # wins it): the run still fails with the server's line, so it gets renamed.
            conflict = q(layout.TOKEN_NAME_CONFLICT)
            command += f" && {{ ! test -e {conflict} || {{ cat {conflict} >&2; exit 1; }}; }}"
        if rotation is None:
            yield command
            return
        token = dataclasses.replace(rotation, backend=TOKEN_BACKEND)
        yield OutOfRotation(StringCommand(command), token, server_name(host.name))
        return
    if active and is_enabled:
        host.noop(f"{TOKEN_SERVICE} is running")
        return
    yield f"systemctl daemon-reload && systemctl enable --now {q(TOKEN_SERVICE)}"


def token_deploy(settings: Settings, state: HostState, tls_ops: list, htpasswd_op,
                 rotation: Rotation | None = None):
    """Files and the service, on a server with token auth. Returns the signing
    certificate's upload (a changed certificate needs a registry restart). `tls_ops` and
    `htpasswd_op`: the uploads of the other files the server copies at start; `rotation`:
    the load balancers it is drained in while it restarts."""
    paths = ServerLayout.of(settings)
    key_pem, cert_pem = keystore.token_signing_material(settings)
    install_python_packages(state, *packages(settings),
                            name="Install the token server's Python packages")
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
    script_op = files.managed_file(TOKEN_SCRIPT, package_data.script(layout.TOKEN_SCRIPT_NAME),
                                   "0755", state.files.get(TOKEN_SCRIPT),
                                   name=f"Install {TOKEN_SCRIPT}")
    unit_op = files.managed_file(TOKEN_UNIT, unit_text(settings), "0644",
                                 state.files.get(TOKEN_UNIT), name=f"Install {TOKEN_UNIT}")
    # What the server reads once at start, and what it re-reads by itself once a reload has
    # renewed its copies (render.token_auth.RELOADED). With a directory, the start's check
    # of local names against it (--check-names) must see a new user: a restart then.
    at_start = [key_op, cert_op, script_op, unit_op, *tls_ops,
                *directory_files(settings, state)]
    reread = [policy_op, htpasswd_op]
    if settings.registry_ldap is not None:
        at_start, reread = at_start + reread, []

    def restart() -> bool:
        return any(op.did_change() for op in at_start)

    def reload() -> bool:
        return not restart() and any(op.did_change() for op in reread)

    token_service(settings, state, restart=False, name=f"Start {TOKEN_SERVICE}",
                  _if=lambda: not restart() and not reload())
    reload_token_service(settings, name=f"Reload {TOKEN_SERVICE} for its changed users or "
                         "rules", _if=reload)
    # One replica at a time, out of the load balancers' rotation meanwhile: restarted
    # together (seen in the scale-out e2e under load), every token request failed for a
    # second or more and clients saw EOF from the load balancer's token port.
    token_service(settings, state, restart=True, rotation=rotation, _serial=True,
                  name=f"Restart {TOKEN_SERVICE} for its changed files", _if=restart)
    return cert_op


@operation()
def reload_token_service(settings: Settings):
    """Users, groups or rules changed and nothing the server reads only at start: its
    copies are renewed in place (the unit's ExecReload) and it re-reads them at its next
    request. Its socket stays open, so no login is refused and, behind load balancers, no
    drain is needed. Started if it was not running."""
    yield (f"systemctl reload-or-restart {q(TOKEN_SERVICE)} && "
           f"{answers_command(settings)}")


def directory_files(settings: Settings, state: HostState) -> list:
    """registry_ldap's service password (0600, never in a command) and CA on the server,
    or their removal when it is unset; the uploads, for the restart."""
    paths = ServerLayout.of(settings)
    directory = settings.registry_ldap
    wanted: dict[str, tuple[bytes, str]] = {}
    if directory is not None:
        wanted[paths.ldap_password] = (directory.bind_password.reveal().encode(), "0600")
        if directory.ca_file is not None:
            wanted[paths.ldap_ca] = (directory.ca_file.read_bytes(), "0644")
    ops = [files.managed_file(path, content, mode, state.files.get(path),
                              name=f"Upload {path}") for path, (content, mode) in wanted.items()]
    stale = [path for path in (paths.ldap_password, paths.ldap_ca) if path not in wanted]
    ops.append(files.absent_paths(stale, list(state.files), name="Remove the directory's "
                                  "password and CA (registry_ldap unset)"))
    return ops


# --- teardown: the reverse of token_deploy (whatever the settings say now) ---

def teardown_probe_args(settings: Settings) -> dict:
    token_dir = ServerLayout.of(settings).token_dir
    return {"files": [TOKEN_UNIT], "dirs": [token_dir], "listings": [token_dir],
            "services": [TOKEN_SERVICE]}


@operation()
def remove_token_service(state: HostState):
    active, is_enabled = state.services.get(TOKEN_SERVICE, (False, False))
    if TOKEN_UNIT not in state.files and not (active or is_enabled):
        host.noop(f"no {TOKEN_SERVICE}")
        return
    yield (f"systemctl disable --now {q(TOKEN_SERVICE)} >/dev/null 2>&1; "
           f"rm -f {q(TOKEN_UNIT)} && systemctl daemon-reload")


@operation()
def remove_token_files(settings: Settings, state: HostState):
    """Token auth switched off: the signing key and policy go too (teardown does the same by
    folder plans); the signing certificate is public and goes with teardown."""
    token_dir = ServerLayout.of(settings).token_dir
    if token_dir not in state.dirs:
        host.noop(f"no {token_dir}")
        return
    files = " ".join(q(f"{token_dir}/{name}") for name in TOKEN_DIR_FILES)
    yield f"rm -f {files} && rmdir {q(token_dir)}"


def token_off(settings: Settings, state: HostState) -> None:
    """A server without token auth runs no token server (it may have had one)."""
    remove_token_service(state, name=f"Stop {TOKEN_SERVICE} (no token auth)")
    remove_token_files(settings, state, name="Remove the token signing key and policy "
                       "(no token auth)")
