"""What teardown.py runs for one host: deploy's steps in reverse, each removing only what
the kit put there, driven by one probe per host (a second teardown changes nothing).

Clients: the kit's docker login (logout + marker), the OS trust entry, the
/etc/docker/certs.d trust folder, the /etc/hosts lines marked "# registry-kit".
Servers: the GC timer, the registry container, config.yml/certs/htpasswd, the kit's scripts;
the data folder only with registry_purge_data=True (announced, host and path, first).
Files go by the names the kit writes; a folder only when the kit created it (its marker,
registry_kit.operations.ownership) and nothing else is left in it. Folders kept are named, one line
each (host and path), on every teardown.
Every host: the kit's daemon.json keys (daemon_json.unmerge; others kept; Docker reloaded),
and the Docker engine itself only with docker_remove_on_teardown=True.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation

from registry_kit.commands import DOCKER_CE_PACKAGES, q
from registry_kit.facts import HostState, RegistryHostState
from registry_kit.jobs import gc
from registry_kit.model.inventory import (
    DEFAULT_GROUPS,
    Groups,
    merge_probe,
    roles,
    validated_settings,
)
from registry_kit.model.settings import Settings
from registry_kit.operations.ownership import (
    MARKER,
    FolderPlan,
    owned,
    plan_folder,
    remove_folders,
)
from registry_kit.render import daemon_json
from registry_kit.render import token_auth as token_render
from registry_kit.roles import client, roles_teardown, server, token_server, webui
from registry_kit.roles.engine import configure_daemon, refuse_host
from registry_kit.roles.server import RUNTIME_DIR, SCRIPTS_DIR, ServerPaths

# Files the kit writes in /run/registry-kit (tmpfs): the check's curl config (server), the
# login's password file (client) and the GC log; the first two live there for seconds.
RUNTIME_FILES = ("verify.curlrc", "login.pw", "gc.log")


def probe_args(settings: Settings, is_server: bool, is_client: bool) -> dict[str, Any]:
    parts = []
    if is_server:
        paths = ServerPaths(settings.registry_config_dir)
        listed = [paths.certs_dir, paths.auth_dir, settings.registry_config_dir, SCRIPTS_DIR,
                  RUNTIME_DIR]
        # What else each folder holds (entries) decides whether the folder itself can go.
        parts += [server.probe_args(settings), gc.probe_args(settings),
                  token_server.teardown_probe_args(settings), webui.probe_args(settings),
                  {"dirs": listed, "listings": listed}]
    if is_client:
        parts += [client.probe_args(settings), {"listings": [client.trust_dir(settings)]}]
        if not is_server:  # the login's password file lives in RUNTIME_DIR for seconds
            parts += [{"dirs": [RUNTIME_DIR], "listings": [RUNTIME_DIR]}]
    return merge_probe(parts)


def log_kept(plans: list[FolderPlan]) -> None:
    # Named before anything runs, on every teardown (the second one too): these stay.
    for plan in plans:
        if plan.kept:
            logger.warning(f"{host.name}: {plan.kept}")


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


def client_teardown(settings: Settings, state: HostState, also_server: bool = False) -> None:
    docker_logout(settings, state, name=f"docker logout from {settings.registry_address}")
    remove_system_trust(
        [client.system_ca_path(settings, family) for family in client.SYSTEM_CA_DIRS], state,
        name="Remove the registry CA from the OS trust store")
    # Docker's trust folder for this address: the kit's ca.crt goes; the folder too unless
    # it holds files of others (client certificates, put there by hand).
    trust = [plan_folder(state, client.trust_dir(settings), ["ca.crt"], needs_marker=False)]
    log_kept(trust)
    remove_folders(trust, name=f"Remove {client.trust_dir(settings)}")
    client.hosts_entries({}, state, name="Remove the kit's /etc/hosts entries")
    if not also_server:  # a server's teardown removes RUNTIME_DIR itself
        runtime = [plan_folder(state, RUNTIME_DIR, RUNTIME_FILES, needs_marker=False)]
        log_kept(runtime)
        remove_folders(runtime, name=f"Remove {RUNTIME_DIR}")


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


def config_plans(settings: Settings, state: HostState) -> list[FolderPlan]:
    """config.yml, certs/ and auth/ (the files gc.py's script stages next to config.yml
    included), then each folder the kit created that holds nothing else."""
    paths = ServerPaths(settings.registry_config_dir)
    certs = plan_folder(state, paths.certs_dir, ["server.crt", "server.key", "ca.crt",
                                                 *token_render.CERT_FILES])
    auth = plan_folder(state, paths.auth_dir, ["htpasswd"])
    # Access rules: the token server's key and policy (a folder the kit names, no marker).
    token = plan_folder(state, token_render.TokenPaths(settings.registry_config_dir).token_dir,
                        token_render.TOKEN_DIR_FILES, needs_marker=False)
    gone = [plan.folder.rsplit("/", 1)[1] for plan in (certs, auth, token)
            if plan.remove_folder]
    config = plan_folder(state, settings.registry_config_dir, ["config.yml"],
                         removed_subfolders=gone)
    return [certs, auth, *([token] if token.folder in state.dirs else []), config]


def _announce(state: Any, host: Any, message: str) -> bool:
    # FunctionCommand passes state and host only to parameters with exactly these names.
    host.log_styled(message, fg="yellow", log_func=logger.warning)
    return True


def purge_warning(settings: Settings) -> str:
    return (f"{settings.host}: registry_purge_data=True: DELETING the registry data in "
            f"{settings.registry_data_dir} (every image stored there)")


def purge_refusal(settings: Settings) -> str:
    return (f"{settings.host}: registry_purge_data=True: KEPT {settings.registry_data_dir}: "
            f"registry-kit did not create it (no {MARKER} in it); delete it by hand if the "
            "images in it are no longer needed")


def data_action(settings: Settings, state: HostState) -> str:
    """"absent", "keep" (no purge asked), "refuse" (purge asked, folder not the kit's) or
    "purge"."""
    path = settings.registry_data_dir
    if path not in state.dirs:
        return "absent"
    if not settings.registry_purge_data:
        return "keep"
    # A refused purge keeps the folder and the run goes on (exit 0): the folder is not the
    # kit's to delete, and no later run makes it so (it never gets a marker), so failing
    # would make every teardown of this host fail and stop the rest of it (container,
    # config, clients) for good. purge_refusal, printed before the run, names host and path.
    return "purge" if owned(state, path) else "refuse"


@operation()
def remove_data(settings: Settings, state: HostState):
    path = settings.registry_data_dir
    action = data_action(settings, state)
    if action == "absent":
        host.noop(f"no registry data in {path}")
    elif action == "keep":
        host.noop(f"kept the registry data in {path} (registry_purge_data=True deletes it)")
    elif action == "refuse":
        host.noop(purge_refusal(settings))
    else:
        yield FunctionCommand(_announce, (purge_warning(settings),), {})
        yield f"rm -rf {q(path)}"


def server_teardown(settings: Settings, state: HostState) -> None:
    gc.schedule_remove(state, name="Remove the garbage collection timer")
    webui.webui_remove(state)
    remove_container(settings, state, name="Remove the registry container")
    token_server.remove_token_service(state, name="Remove the token server (access rules)")
    plans = config_plans(settings, state)
    log_kept(plans)
    remove_folders(plans, name="Remove the registry config, certificates and htpasswd")
    # Folders named after the kit itself: its files go, the folder when nothing else is in it.
    kit_dirs = [plan_folder(state, SCRIPTS_DIR, [*server.SCRIPT_NAMES, token_render.SCRIPT_NAME],
                            needs_marker=False),
                plan_folder(state, RUNTIME_DIR, RUNTIME_FILES, needs_marker=False)]
    log_kept(kit_dirs)
    remove_folders(kit_dirs, name="Remove the kit's scripts")
    remove_data(settings, state, name="Remove the registry data (registry_purge_data)")
    action = data_action(settings, state)
    if action in ("purge", "refuse"):
        # Before any operation runs: the whole run's output starts with this line.
        logger.warning(purge_warning(settings) if action == "purge" else purge_refusal(settings))


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


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    settings = validated_settings(groups, defaults=defaults)[host.name]
    is_server, is_client = roles(host, groups)
    is_lb, is_cache = roles_teardown.roles(host, groups)
    if not (is_server or is_client or is_lb or is_cache):
        return
    state = host.get_fact(RegistryHostState, **merge_probe([
        probe_args(settings, is_server, is_client),
        roles_teardown.probe_args(settings, is_lb, is_cache)]))
    if is_lb:
        roles_teardown.lb_teardown(settings, state)
    if is_cache:
        roles_teardown.cache_teardown(settings, state)
    if is_client:
        client_teardown(settings, state, also_server=is_server)
    if is_server:
        server_teardown(settings, state)
    if is_server or is_client:  # load balancer and cache hosts get no Docker engine
        engine_teardown(settings, state)
