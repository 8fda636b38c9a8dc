"""registry-kit's test lab: Debian hosts with systemd and sshd in Docker containers.

Public API (see lab.core): ``up(specs=None, *, prune=False, with_upstream=True, name=None)``,
``down()``, ``status()``, ``reset_host(name)``, ``restart_host(name)``, ``remove_host(name)``,
``add_sudo_user(host, user)`` (a non-root login with passwordless sudo);
``HostSpec`` and ``DEFAULT_TOPOLOGY`` describe hosts; ``lab.state.load()`` and
``lab.state.pyinfra_host(name)`` read the state file written by ``up`` (its
``upstream.tags`` are the tags the upstream registry serves); ``lab.images.registry3_available()``
says whether the registry 3.0.0 binary is there, and if not, which file is missing.
"""

from lab.config import LabError, get_config
from lab.core import add_sudo_user, down, remove_host, reset_host, restart_host, status, up
from lab.topology import DEFAULT_TOPOLOGY, HostSpec

__all__ = [
    "DEFAULT_TOPOLOGY",
    "HostSpec",
    "LabError",
    "add_sudo_user",
    "down",
    "get_config",
    "remove_host",
    "reset_host",
    "restart_host",
    "status",
    "up",
]
