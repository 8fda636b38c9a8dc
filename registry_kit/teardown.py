"""What teardown.py runs for one host: deploy's steps in reverse, each removing only what
the kit put there, driven by one probe per host (a second teardown changes nothing).

Clients: the kit's docker login (logout + marker), the OS trust entry, the
/etc/docker/certs.d trust folder, the /etc/hosts lines marked "# registry-kit".
Servers: the GC timer, the registry container, config.yml/certs/htpasswd, the kit's scripts;
the data folder only with registry_purge_data=True (announced, host and path, first).
Every host: the kit's daemon.json keys (daemon_json.unmerge; others kept; Docker reloaded),
and the Docker engine itself only with docker_remove_on_teardown=True.
Reads: the same settings as deploy, plus registry_purge_data and docker_remove_on_teardown.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation

from registry_kit import client, daemon_json, gc, pyinfra_patches, remote, server
from registry_kit.commands import DOCKER_CE_PACKAGES, q
from registry_kit.engine import configure_daemon, refuse_host
from registry_kit.facts import HostState, RegistryHostState
from registry_kit.lifecycle import merge_probe, roles, validated_settings
from registry_kit.server import RUNTIME_DIR, SCRIPTS_DIR, ServerPaths
from registry_kit.settings import Settings


def probe_args(settings: Settings, is_server: bool, is_client: bool) -> dict[str, Any]:
    parts = []
    if is_server:
        parts += [server.probe_args(settings), gc.probe_args(settings),
                  {"dirs": [RUNTIME_DIR]}]
    if is_client:
        parts.append(client.probe_args(settings))
    return merge_probe(parts)


# --- client: the reverse of client.client_deploy ---

@operation()
def docker_logout(settings: Settings, state: HostState):
    """Log out where the kit logged in: its marker says so (or the login user is set)."""
    address = settings.registry_address
    logged_in = address in state.docker_auths
    marker = bool(state.login_marker.strip())
    if not (marker or (logged_in and settings.registry_client_login_user)):
        host.noop(f"no docker login of the kit to {address}")
        return
    if logged_in and state.docker_installed:
        yield f"docker logout {q(address)} >/dev/null"
    yield (f"rm -f {q(client.login_marker_path(settings))}; "
           f"rmdir {q(client.CLIENT_STATE_DIR)} 2>/dev/null; true")


@operation()
def remove_system_trust(paths: list[str], state: HostState):
    present = [path for path in paths if path in state.files]
    if not present:
        host.noop("the OS trust store holds no registry-kit CA")
        return
    yield "rm -f " + " ".join(q(path) for path in present)
    yield client.SYSTEM_CA_UPDATE.get(state.os.family, client.SYSTEM_CA_UPDATE["debian"])
    if state.docker_active:
        # The engine reads the OS trust store at start only (as on deploy).
        yield "systemctl restart docker.service"


def client_teardown(settings: Settings, state: HostState) -> None:
    docker_logout(settings, state, name=f"docker logout from {settings.registry_address}")
    remove_system_trust(
        [client.system_ca_path(settings, family) for family in client.SYSTEM_CA_DIRS], state,
        name="Remove the registry CA from the OS trust store")
    remote.absent_paths([client.trust_dir(settings)], list(state.dirs),
                        name=f"Remove {client.trust_dir(settings)}")
    client.hosts_entries({}, state, name="Remove the kit's /etc/hosts entries")


# --- server: the reverse of server.server_deploy ---

@operation()
def remove_container(settings: Settings, state: HostState):
    name = settings.registry_container_name
    if state.container is None:
        host.noop(f"no container {name}")
        return
    # -previous: left by a replacement that was interrupted half way (replace-container.sh).
    yield f"docker rm -f {q(name)} >/dev/null; docker rm -f {q(name + '-previous')} " \
          ">/dev/null 2>&1; true"


@operation()
def remove_config(settings: Settings, state: HostState):
    """config.yml, certs/ and auth/ (htpasswd), then the folder if nothing else is in it."""
    paths = ServerPaths(settings.registry_config_dir)
    kit_files = [paths.config, paths.cert, paths.key, paths.ca, paths.htpasswd]
    kit_dirs = [paths.certs_dir, paths.auth_dir, settings.registry_config_dir]
    if not any(path in state.files for path in kit_files) and \
            not any(path in state.dirs for path in kit_dirs):
        host.noop(f"{settings.registry_config_dir} is gone")
        return
    kept = f"registry-kit: kept {settings.registry_config_dir}: it holds other files"
    yield (f"rm -rf {q(paths.certs_dir)} {q(paths.auth_dir)}; "
           f"rm -f {q(paths.config)} {q(paths.config)}.registry-kit-*; "
           f"rmdir {q(settings.registry_config_dir)} 2>/dev/null || echo {q(kept)}")


def _announce(state: Any, host: Any, message: str) -> bool:
    # FunctionCommand passes state and host only to parameters with exactly these names.
    host.log_styled(message, fg="yellow", log_func=logger.warning)
    return True


def purge_warning(settings: Settings) -> str:
    return (f"{settings.host}: registry_purge_data=True: DELETING the registry data in "
            f"{settings.registry_data_dir} (every image stored there)")


@operation()
def remove_data(settings: Settings, state: HostState):
    path = settings.registry_data_dir
    if path not in state.dirs:
        host.noop(f"no registry data in {path}")
        return
    if not settings.registry_purge_data:
        host.noop(f"kept the registry data in {path} (registry_purge_data=True deletes it)")
        return
    yield FunctionCommand(_announce, (purge_warning(settings),), {})
    yield f"rm -rf {q(path)}"


def server_teardown(settings: Settings, state: HostState) -> None:
    gc.schedule_remove(state, name="Remove the garbage collection timer")
    remove_container(settings, state, name="Remove the registry container")
    remove_config(settings, state, name="Remove the registry config, certificates and htpasswd")
    remote.absent_paths([SCRIPTS_DIR, RUNTIME_DIR], list(state.dirs),
                        name="Remove the kit's scripts")
    remove_data(settings, state, name="Remove the registry data (registry_purge_data)")
    if settings.registry_purge_data and settings.registry_data_dir in state.dirs:
        # Before any operation runs: the whole run's output starts with this line.
        logger.warning(purge_warning(settings))


# --- engine: the reverse of engine.engine_deploy ---

@operation()
def unmerge_daemon(current: dict, wanted: dict, state: HostState):
    """Remove the kit's daemon.json keys (others stay), applied by reload, not restart."""
    if current == wanted:
        host.noop("daemon.json holds none of the kit's keys")
        return
    yield from configure_daemon._inner(current, wanted, state)


def remove_docker_commands(settings: Settings, state: HostState) -> list[str]:
    """The reverse of commands.docker_install_commands (packages and Docker's repository)."""
    if state.os.family == "rhel":
        return ["dnf -y remove " + " ".join(DOCKER_CE_PACKAGES),
                "rm -f /etc/yum.repos.d/docker-ce.repo"]
    apt = "DEBIAN_FRONTEND=noninteractive apt-get"
    if settings.docker_install_method == "docker-ce":
        return [f"{apt} purge -y -q " + " ".join(DOCKER_CE_PACKAGES),
                "rm -f /etc/apt/sources.list.d/docker.list /etc/apt/keyrings/docker.asc"]
    return [f"{apt} purge -y -q docker.io"]


@operation()
def remove_docker(settings: Settings, state: HostState):
    """Only with docker_remove_on_teardown=True. Images and volumes in /var/lib/docker stay."""
    if not settings.docker_remove_on_teardown:
        host.noop("Docker stays (docker_remove_on_teardown=False)")
        return
    if not state.docker_installed:
        host.noop("Docker is not installed")
        return
    yield from remove_docker_commands(settings, state)


def engine_teardown(settings: Settings, state: HostState) -> None:
    try:
        current = daemon_json.parse(state.daemon_json)
    except daemon_json.DaemonJsonError as error:
        refuse_host(f"{host.name}: {error}", name="Refuse a broken daemon.json")
        return
    wanted = daemon_json.unmerge(
        current, mirrors=settings.docker_registry_mirrors,
        live_restore=settings.docker_live_restore,
        insecure=client.insecure_entries(settings)[0] + client.insecure_entries(settings)[1])
    unmerge_daemon(current, wanted, state, name="Remove the kit's keys from daemon.json")
    remove_docker(settings, state, name="Remove the Docker engine (docker_remove_on_teardown)")


def plan_host() -> None:
    pyinfra_patches.install()  # cheaper operation calls (see that module)
    settings = validated_settings()[host.name]
    is_server, is_client = roles(host)
    if not (is_server or is_client):
        return
    state = host.get_fact(RegistryHostState, **probe_args(settings, is_server, is_client))
    if is_client:
        client_teardown(settings, state)
    if is_server:
        server_teardown(settings, state)
    engine_teardown(settings, state)
