"""The Docker engine on every managed host: install, daemon.json, service, version gate.
"""

from __future__ import annotations

from io import BytesIO

from pyinfra import host
from pyinfra.api import FunctionCommand

from registry_kit.commands import (
    APT_GET,
    DOCKER_CE_PACKAGES,
    ENABLE_DOCKER,
    UnsupportedOS,
    docker_install_commands,
)
from registry_kit.facts import EngineVersion, HostState
from registry_kit.model.inventory import fail_host as _fail_with
from registry_kit.model.layout import DAEMON_JSON
from registry_kit.model.settings import Settings
from registry_kit.model.versions import meets_minimum
from registry_kit.operations import files
from registry_kit.operations.typed import operation
from registry_kit.render import daemon_json

# The registry container reaches the audit receiver as `--add-host NAME:host-gateway`, which
# engines before 20.10 do not know (they refuse to create the container).
AUDIT_LOG_ENGINE = "20.10.0"


def engine_minimum(settings: Settings, is_server: bool) -> tuple[str, str]:
    """(the lowest engine this host may run, the setting that asks for it): the audit log's
    on a server that records one, when docker_min_version is lower."""
    if is_server and settings.registry_audit_log and not meets_minimum(
            settings.docker_min_version, AUDIT_LOG_ENGINE):
        return AUDIT_LOG_ENGINE, "registry_audit_log"
    return settings.docker_min_version, "docker_min_version"


def refusal(host_name: str, found: str, needed: str,
            setting: str = "docker_min_version") -> str:
    if setting == "registry_audit_log":
        return (f"{host_name}: Docker engine {found} is older than {needed}, which "
                "registry_audit_log needs (the registry reaches the receiver through "
                "--add-host ...:host-gateway); upgrade the engine or set registry_audit_log "
                "= False")
    return (f"{host_name}: Docker engine {found} is older than docker_min_version {needed}; "
            "upgrade the engine (the registry needs at least 1.6.0) and run again")


@operation()
def install_docker(settings: Settings, state: HostState):
    if state.docker_installed:
        host.noop("Docker is installed")
        return
    if settings.docker_install_method == "none":
        yield FunctionCommand(_fail_with, (f"{host.name}: Docker is not installed and "
                                           "docker_install_method='none'",), {})
        return
    try:
        commands = docker_install_commands(state.os, settings.docker_install_method,
                                           settings.docker_ce_repo_url)
    except UnsupportedOS as error:
        yield FunctionCommand(_fail_with, (f"{host.name}: {error}",), {})
        return
    yield from commands


@operation()
def install_curl(state: HostState):
    """The health checks run curl on the server itself."""
    if state.curl_installed:
        host.noop("curl is installed")
        return
    if state.os.family == "rhel":
        yield "dnf -y install curl"
    else:
        yield f"{APT_GET} install -y -q curl"


@operation()
def start_docker(state: HostState):
    if state.docker_installed and state.docker_active and state.docker_enabled:
        host.noop("docker.service is enabled and running")
        return
    yield ENABLE_DOCKER


def _check_engine_version(state, host, minimum: str,  # runs on the control side
                          setting: str) -> bool:
    found = host.get_fact(EngineVersion)
    if not found:
        return _fail_with(state, host, f"{host.name}: the Docker engine does not answer "
                          "`docker info`")
    if not meets_minimum(found, minimum):
        return _fail_with(state, host, refusal(host.name, found, minimum, setting))
    return True


@operation()
def gate_new_engine(minimum: tuple[str, str], state: HostState):
    """Engines found at the start were gated before anything ran (see jobs.deploy.plan_host);
    an engine installed by this run is checked here, before any registry change.
    `minimum`: engine_minimum's."""
    if state.server_version:
        host.noop(f"engine {state.server_version} was checked before the run")
        return
    yield FunctionCommand(_check_engine_version, minimum, {})


@operation()
def refuse_host(message: str):
    """Fails the host with `message` and nothing else; other hosts go on."""
    yield FunctionCommand(_fail_with, (message,), {})


def wanted_daemon_json(settings: Settings, state: HostState, *, insecure_add=(),
                       insecure_remove=()) -> tuple[dict, dict]:
    current = daemon_json.parse(state.daemon_json)
    wanted = daemon_json.merge(current, mirrors=settings.docker_registry_mirrors,
                               live_restore=settings.docker_live_restore,
                               insecure_add=insecure_add, insecure_remove=insecure_remove)
    return current, wanted


_ENGINE_VIEW = "{{json .RegistryConfig}} {{.LiveRestoreEnabled}}"


def _write_daemon_json(data: dict):
    if not data:
        yield f"rm -f {DAEMON_JSON}"  # only the kit's keys were in it
        return
    staging = f"{DAEMON_JSON}.registry-kit-new"
    yield f"install -d -m 0755 /etc/docker && install -m 0644 /dev/null {staging}"
    yield files.upload(BytesIO(daemon_json.render(data).encode()), staging)
    # Engines from 23.0 check a config file; asked here, when a file is written, rather
    # than in every run's probe (`dockerd --help` is the probe's most expensive command).
    yield (f"if dockerd --help 2>/dev/null | grep -q -- --validate; then "
           f"dockerd --validate --config-file {staging} >/dev/null || "
           f"{{ rm -f {staging}; echo 'registry-kit: daemon.json rejected' >&2; exit 1; }}; fi")
    yield f"mv -f {staging} {DAEMON_JSON}"


@operation()
def configure_daemon(current: dict, wanted: dict, state: HostState):
    """Write daemon.json as `wanted` (the kit's keys merged in or taken out, other keys
    kept); validate; apply by reload (SIGHUP), restart only when a key needs it."""
    if current == wanted:
        host.noop("daemon.json is as wanted")
        return
    if not state.docker_active:
        yield from _write_daemon_json(wanted)
        return
    if daemon_json.needs_restart(current, wanted):
        yield from _write_daemon_json(wanted)
        yield "systemctl restart docker.service"
        return
    reset = daemon_json.live_reset(current, wanted)
    if reset:
        yield from _write_daemon_json({**wanted, **reset})
        view = f"docker info --format '{_ENGINE_VIEW}' 2>/dev/null"
        # Wait (at most 10 s) until the engine shows the cleared values before the keys go.
        yield (f"before=$({view}); systemctl reload docker.service; for i in $(seq 40); do "
               f"[ \"$({view})\" != \"$before\" ] && break; sleep 0.25; done")
        yield from _write_daemon_json(wanted)
        return
    yield from _write_daemon_json(wanted)
    # reload = SIGHUP: mirrors, insecure-registries and live-restore apply live and
    # running containers keep running.
    yield "systemctl reload docker.service"


def engine_deploy(settings: Settings, state: HostState, *, is_server: bool, insecure_add=(),
                  insecure_remove=()) -> bool:
    """Engine steps shared by servers and clients (the same code on both). False when the
    host is refused: the caller then adds nothing else for it."""
    minimum = engine_minimum(settings, is_server)
    if state.server_version and not meets_minimum(state.server_version, minimum[0]):
        refuse_host(refusal(host.name, state.server_version, *minimum),
                    name="Refuse a Docker engine below docker_min_version"
                    if minimum[1] == "docker_min_version"
                    else f"Refuse a Docker engine too old for {minimum[1]}")
        return False
    try:
        current, wanted = wanted_daemon_json(settings, state, insecure_add=insecure_add,
                                             insecure_remove=insecure_remove)
    except daemon_json.DaemonJsonError as error:
        refuse_host(f"{host.name}: {error}", name="Refuse a broken daemon.json")
        return False
    # daemon.json first: a fresh engine then starts with the mirrors already in place.
    configure_daemon(current, wanted, state, name="Merge the kit's keys into daemon.json")
    install_docker(settings, state, name="Install the Docker engine")
    start_docker(state, name="Enable and start docker.service")
    gate_new_engine(minimum, state, name="Check the new engine against docker_min_version")
    return True



# --- teardown: the reverse of engine_deploy ---

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


def engine_remove(settings: Settings, state: HostState, insecure: list[str]) -> None:
    """The kit's daemon.json keys (`insecure`: every insecure-registries entry the kit may
    have added), then the engine itself only with docker_remove_on_teardown=True."""
    try:
        current = daemon_json.parse(state.daemon_json)
    except daemon_json.DaemonJsonError as error:
        refuse_host(f"{host.name}: {error}", name="Refuse a broken daemon.json")
        return
    wanted = daemon_json.unmerge(current, mirrors=settings.docker_registry_mirrors,
                                 live_restore=settings.docker_live_restore, insecure=insecure)
    unmerge_daemon(current, wanted, state, name="Remove the kit's keys from daemon.json")
    remove_docker(settings, state, name="Remove the Docker engine (docker_remove_on_teardown)")
