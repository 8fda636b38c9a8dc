"""Building blocks of a role's removal (teardown), driven by the probe snapshot: services
stopped, files and packages removed only where they are, folders kept named.

Each role's `remove` (registry_kit.roles) is made of these and of its own operations; a
second teardown finds nothing and changes nothing.
"""

from __future__ import annotations

from pyinfra import host, logger

from registry_kit.commands import join, q
from registry_kit.facts import HostState
from registry_kit.model.settings import Settings
from registry_kit.operations.ownership import FolderPlan
from registry_kit.operations.typed import operation


def log_kept(plans: list[FolderPlan]) -> None:
    # Named before anything runs, on every teardown (the second one too): these stay.
    for plan in plans:
        if plan.kept:
            logger.warning(f"{host.name}: {plan.kept}")


@operation()
def stop_services(services: list[str], state: HostState):
    """Stop and disable what the kit enabled (the unit files are the packages')."""
    running = [name for name in services if any(state.services.get(name, (False, False)))]
    if not running:
        host.noop(f"{', '.join(services)}: not running, not enabled")
        return
    yield f"systemctl disable --now {join(running)}"


@operation()
def remove_files(paths: list[str], state: HostState):
    present = [path for path in paths if path in state.files]
    if not present:
        host.noop("none of the kit's files left")
        return
    yield "rm -f " + " ".join(q(path) for path in present)


@operation()
def purge_packages(names: tuple[str, ...], commands: tuple[str, ...], settings: Settings,
                   state: HostState):
    """Only with registry_packages_remove_on_teardown=True, like docker_remove_on_teardown."""
    if not settings.registry_packages_remove_on_teardown:
        host.noop(f"{', '.join(names)} stay (registry_packages_remove_on_teardown=False)")
        return
    if not any(command in state.commands for command in commands):
        host.noop(f"{', '.join(names)} not installed")
        return
    if state.os.family == "rhel":
        yield "dnf -y remove " + join(names)
    else:
        yield "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q " + join(names)
