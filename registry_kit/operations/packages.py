"""Distro packages on the load balancer and cache hosts (haproxy, socat, redis).

One operation: install the packages whose commands the probe did not find, with the OS
family's package manager.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra import host

from registry_kit.commands import join
from registry_kit.facts import HostState
from registry_kit.operations.typed import operation

_INSTALL = {
    # Fresh hosts have no package lists yet; update first.
    "debian": "DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND="
              "noninteractive apt-get install -y -q --no-install-recommends",
    "rhel": "dnf -y install",
}


@operation()
def install_packages(packages: Sequence[str], commands: Sequence[str], state: HostState):
    """`packages` provide `commands`; install them unless every command is there."""
    missing = [command for command in commands if command not in state.commands]
    if not missing:
        host.noop(f"{', '.join(packages)} installed")
        return
    yield _INSTALL.get(state.os.family, _INSTALL["debian"]) + " " + join(packages)
