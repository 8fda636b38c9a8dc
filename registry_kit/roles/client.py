"""Client hosts (registry_clients) trust the registry and can log in to it.

TLS modes: the CA in Docker's trust folder for the registry's address (layout.CERTS_D),
the address exactly as clients type it (no ":443"); no Docker restart is needed.
Optionally the OS trust store as well (registry_client_system_trust), which needs one
Docker restart when the CA changed.
Mode none: ADDRESS in daemon.json insecure-registries (engine.configure_daemon, reload).
"""

from __future__ import annotations

from io import BytesIO

from pyinfra import host

from registry_kit.commands import q
from registry_kit.facts import (
    AUTHS_COMMAND,
    HOSTS_COMMAND,
    HOSTS_MARKER,
    HostState,
    first_line,
    section_command,
)
from registry_kit.model import keystore, layout
from registry_kit.model.inventory import merge_probe
from registry_kit.model.layout import CERTS_D, CLIENT_STATE_DIR, RUNTIME_DIR, Endpoints
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.operations import files
from registry_kit.operations.ownership import plan_folder, remove_folders
from registry_kit.operations.removal import log_kept
from registry_kit.operations.typed import operation
from registry_kit.render import htpasswd, textfile
from registry_kit.roles import trust

SYSTEM_CA_UPDATE = {"debian": "update-ca-certificates", "rhel": "update-ca-trust"}


def trust_dir(settings: Settings) -> str:
    return f"{CERTS_D}/{Endpoints.of(settings).address}"


def login_marker_path(settings: Settings) -> str:
    return f"{CLIENT_STATE_DIR}/login-{Endpoints.of(settings).address.replace(':', '_')}"


def system_ca_path(settings: Settings, family: str) -> str:
    return f"{layout.SYSTEM_CA_DIRS.get(family, layout.SYSTEM_CA_DIRS['debian'])}/" \
           f"registry-kit-{settings.registry_domain}.crt"


def probe_args(settings: Settings) -> dict:
    files = [f"{trust_dir(settings)}/ca.crt"]
    files += [system_ca_path(settings, family) for family in layout.SYSTEM_CA_DIRS]
    return {"files": files, "dirs": [CERTS_D, trust_dir(settings), CLIENT_STATE_DIR],
            "login_marker": login_marker_path(settings)}


def insecure_entries(settings: Settings) -> tuple[list[str], list[str]]:
    """(add, remove) for daemon.json insecure-registries: no scheme, Docker ignores it."""
    address = Endpoints.of(settings).authority  # with the port, even 443
    return ([address], []) if not settings.tls_enabled else ([], [address])


def hosts_lines(wanted: dict[str, str]) -> list[str]:
    """/etc/hosts lines "IP NAME # registry-kit": IP and NAME each one word without "#", so
    a line cannot hold more names, lose its marker or become two lines."""

    def checked(value: str, field: str) -> str:
        return textfile.word(value, file="/etc/hosts", field=field,
                             forbidden=textfile.HOSTS_SYNTAX)

    return [f"{checked(ip, f'registry_client_hosts_entries[{name!r}]')} "
            f"{checked(name, 'registry_client_hosts_entries key')} {HOSTS_MARKER}"
            for name, ip in sorted(wanted.items())]


@operation()
def hosts_entries(wanted: dict[str, str], state: HostState):
    lines = hosts_lines(wanted)
    if lines == state.hosts_lines:
        host.noop("/etc/hosts entries are in place")
        return
    # Rewrite in place (not by rename): /etc/hosts may be a bind mount (containers).
    keep = f"grep -v -e {q(HOSTS_MARKER + '$')} /etc/hosts > /etc/hosts.registry-kit-new"
    add = "".join(f"; echo {q(line)} >> /etc/hosts.registry-kit-new" for line in lines)
    yield (f"{keep}{add}; cat /etc/hosts.registry-kit-new > /etc/hosts; "
           "rm -f /etc/hosts.registry-kit-new")


@operation()
def docker_login(settings: Settings, state: HostState):
    """`docker login` with the password on stdin, again only when the password changed.

    pyinfra's docker.login only checks that an entry exists, so a rotated password would
    never reach the clients. The kit keeps a bcrypt hash of the password it logged in with
    (a marker file, root only) and compares the configured password with it."""
    user = settings.user(settings.registry_client_login_user or "")
    assert user is not None and user.password is not None, "validated in settings"
    password = user.password.reveal()
    name, _, hashed = state.login_marker.strip().partition(":")
    address = Endpoints.of(settings).address
    logged_in = address in state.docker_auths
    if logged_in and name == user.name and keystore.password_check(settings)(password, hashed):
        host.noop(f"logged in to {address} as {user.name}")
        return
    secret_file = f"{RUNTIME_DIR}/login.pw"
    marker = login_marker_path(settings)
    yield (f"install -d -m 0700 {RUNTIME_DIR} {CLIENT_STATE_DIR} && "
           f"install -m 0600 /dev/null {q(secret_file)}")
    yield files.upload(BytesIO(password.encode()), secret_file)
    yield (f"docker login --username {q(user.name)} --password-stdin "
           f"{q(address)} < {q(secret_file)} >/dev/null; "
           f"status=$?; rm -f {q(secret_file)}; exit $status")
    staging = f"{marker}.registry-kit-new"
    yield f"install -m 0600 /dev/null {q(staging)}"
    marker_line = f"{user.name}:{htpasswd.hash_password(password)}\n"
    yield files.upload(BytesIO(marker_line.encode()), staging)
    yield f"mv -f {q(staging)} {q(marker)}"


@operation()
def refresh_system_trust(family: str):
    yield SYSTEM_CA_UPDATE.get(family, SYSTEM_CA_UPDATE["debian"])
    # The engine reads the OS trust store at start only.
    yield "systemctl restart docker.service"


def client_trust(settings: Settings, state: HostState, ca_pem: bytes | None) -> None:
    """/etc/hosts and trust: registry_kit.jobs.deploy runs these before any server step, so a new CA
    is trusted before a server serves a certificate it signed (registry_kit.roles.trust)."""
    if settings.registry_client_hosts_entries or state.hosts_lines:
        hosts_entries(dict(settings.registry_client_hosts_entries), state,
                      name="Write /etc/hosts entries for the registry")
    if settings.tls_enabled and ca_pem is not None:
        files.managed_dir(CERTS_D, "0755", state.dirs.get(CERTS_D), name=f"Create {CERTS_D}")
        directory = trust_dir(settings)
        files.managed_dir(directory, "0755", state.dirs.get(directory),
                          name=f"Create {directory}")
        ca_file = f"{directory}/ca.crt"
        current = state.files.get(ca_file)
        if current is not None and current.sha256 != files.sha256_of(ca_pem):
            # A new CA: trust it next to the old one until the servers switch (trust.py).
            trust.bridge_ca(ca_file, ca_pem, name="Trust the new registry CA next to the old")
        else:
            files.managed_file(ca_file, ca_pem, "0644", current,
                               name="Trust the registry CA for Docker")
        if settings.registry_client_system_trust:
            path = system_ca_path(settings, state.os.family)
            ca_op = files.managed_file(path, ca_pem, "0644", state.files.get(path),
                                       name="Add the registry CA to the OS trust store")
            refresh_system_trust(state.os.family, name="Refresh the OS trust store",
                                 _if=ca_op.did_change)


def client_login(settings: Settings, state: HostState, ca_pem: bytes | None = None) -> None:
    """After the servers are up (jobs.deploy.plan_host: servers_ready): drop an old CA that
    client_trust kept for the switch, then log in."""
    ca_file = f"{trust_dir(settings)}/ca.crt"
    current = state.files.get(ca_file)
    if settings.tls_enabled and ca_pem is not None and current is not None and \
            current.sha256 != files.sha256_of(ca_pem):
        files.managed_file(ca_file, ca_pem, "0644", current,
                           name="Trust only the new registry CA",
                           _if=trust.no_host_failed)
    if settings.registry_client_login_user:
        docker_login(settings, state, name=f"docker login to {Endpoints.of(settings).address}")


# --- teardown: the reverse of client_trust and client_login ---

# Files the kit writes in layout.RUNTIME_DIR (tmpfs): the check's curl config (server), the
# login's password file (client) and the GC log; the first two live there for seconds.
RUNTIME_FILES = ("verify.curlrc", "login.pw", "gc.log")


def teardown_probe_args(settings: Settings, also_server: bool = False) -> dict:
    parts = [probe_args(settings), {"listings": [trust_dir(settings)]}]
    if not also_server:  # the login's password file lives in RUNTIME_DIR for seconds
        parts.append({"dirs": [RUNTIME_DIR], "listings": [RUNTIME_DIR]})
    return merge_probe(parts)


@operation()
def docker_logout(settings: Settings, state: HostState):
    """Log out where the kit logged in: its marker says so (or the login user is set)."""
    address = Endpoints.of(settings).address
    logged_in = address in state.docker_auths
    marker = bool(state.login_marker.strip())
    if not (marker or (logged_in and settings.registry_client_login_user)):
        host.noop(f"no docker login of the kit to {address}")
        return
    if logged_in and state.docker_installed:
        yield f"docker logout {q(address)} >/dev/null"
    yield (f"rm -f {q(login_marker_path(settings))}; "
           f"rmdir {q(CLIENT_STATE_DIR)} 2>/dev/null; true")


@operation()
def remove_system_trust(paths: list[str], state: HostState):
    present = [path for path in paths if path in state.files]
    if not present:
        host.noop("the OS trust store holds no registry-kit CA")
        return
    yield "rm -f " + " ".join(q(path) for path in present)
    yield SYSTEM_CA_UPDATE.get(state.os.family, SYSTEM_CA_UPDATE["debian"])
    if state.docker_active:
        # The engine reads the OS trust store at start only (as on deploy).
        yield "systemctl restart docker.service"


def client_remove(settings: Settings, state: HostState, also_server: bool = False) -> None:
    docker_logout(settings, state, name=f"docker logout from {Endpoints.of(settings).address}")
    remove_system_trust(
        [system_ca_path(settings, family) for family in layout.SYSTEM_CA_DIRS], state,
        name="Remove the registry CA from the OS trust store")
    # Docker's trust folder for this address: the kit's ca.crt goes; the folder too unless
    # it holds files of others (client certificates, put there by hand).
    trust_plans = [plan_folder(state, trust_dir(settings), ["ca.crt"], needs_marker=False)]
    log_kept(trust_plans)
    remove_folders(trust_plans, name=f"Remove {trust_dir(settings)}")
    hosts_entries({}, state, name="Remove the kit's /etc/hosts entries")
    if not also_server:  # a server's teardown removes RUNTIME_DIR itself
        runtime = [plan_folder(state, RUNTIME_DIR, RUNTIME_FILES, needs_marker=False)]
        log_kept(runtime)
        remove_folders(runtime, name=f"Remove {RUNTIME_DIR}")


# --- status.py: trust, login and /etc/hosts as this client has them ---

def status_command(settings: Settings) -> str:
    return "; ".join([
        section_command("docker"), "docker info --format '{{.ServerVersion}}' 2>/dev/null || true",
        section_command("trust"), f"cat {q(trust_dir(settings) + '/ca.crt')} 2>/dev/null || true",
        section_command("auths"), AUTHS_COMMAND, section_command("hosts"), HOSTS_COMMAND,
        # Only the user name before the ':' (the rest is a bcrypt hash).
        section_command("marker"),
        f"cut -d: -f1 {q(login_marker_path(settings))} 2>/dev/null || true"])


def _current_ca(settings: Settings) -> bytes | None:
    """The CA clients should trust, read from the control machine; never creates one."""
    if not settings.tls_enabled:
        return None
    if settings.registry_tls_mode == "self-signed":
        path = settings.registry_state_dir / "ca" / "ca.crt"
        return path.read_bytes() if path.is_file() else None
    try:
        cert = keystore.server_certificate(settings)
    except SettingsError:
        return None
    return cert.ca_pem if cert else None


def _trust_status(settings: Settings, trusted: str) -> str:
    if not settings.tls_enabled:
        return "insecure (plain HTTP)"
    if not trusted:
        return "missing"
    ca = _current_ca(settings)
    if ca is None:
        return "present"
    if ca.decode().strip() not in trusted:
        return "stale CA"
    old = trusted.count("BEGIN CERTIFICATE") > ca.count(b"BEGIN CERTIFICATE")
    return "ok (+old CA)" if old else "ok"


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    user = first_line(sections, "marker")
    address = Endpoints.of(settings).address
    logged_in = address in [line.strip() for line in sections.get("auths", [])]
    login = (f"yes ({user})" if user else "yes") if logged_in else "no"
    if settings.registry_client_login_user is None and not logged_in:
        login = "not asked"
    hosts = [line for line in sections.get("hosts", []) if line.strip()]
    return {
        "client": settings.host,
        "docker": first_line(sections, "docker") or "not running",
        "registry": address,
        "trust": _trust_status(settings, "\n".join(sections.get("trust", [])).strip()),
        "login": login,
        "hosts entries": str(len(hosts)),
    }
