"""Lab namespace: names, labels, subnet and ports of one lab, and where its files live.

Every engine object the lab creates carries the label ``registry-kit-lab=<value>`` (``1`` for
the default lab, the namespace name otherwise), so a lab can be found, reused or removed from
the engine's own objects alone, even in a fresh checkout whose ``.lab/`` is empty.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The package lives at <project>/lab, so the project root is its parent: no hard-coded path.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

LABEL = "registry-kit-lab"
DEFAULT_NAME = "registry-kit-lab"
# Env var that selects a non-default namespace for the CLI, the inventory and the API.
NAME_ENV = "REGISTRY_KIT_LAB_NAME"

# Hosts get IPs from this offset on (.1 is the gateway, .2 the upstream registry).
HOST_IP_OFFSET = 11
UPSTREAM_IP_OFFSET = 2


class LabError(Exception):
    """A lab failure with a one-line message meant for the user."""


_T0 = time.monotonic()


def say(message: str) -> None:
    """Print a progress line on stderr (stdout stays clean for `status` and scripts)."""
    print(f"lab [{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LabConfig:
    """Names and addresses of one lab namespace."""

    name: str = DEFAULT_NAME
    prefix: str = "rk-"
    subnet: str = "172.30.77.0/24"
    ssh_port_base: int = 2221
    upstream_port: int = 5099

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_NAME

    @property
    def label_value(self) -> str:
        return "1" if self.is_default else self.name

    @property
    def label(self) -> str:
        """``key=value`` form, as used by ``--label`` and ``--filter label=``."""
        return f"{LABEL}={self.label_value}"

    @property
    def network(self) -> str:
        return self.name

    @property
    def state_dir(self) -> Path:
        base = PROJECT_ROOT / ".lab"
        return base if self.is_default else base / "ns" / self.name

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "id_ed25519"

    def container(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def volume(self, host: str) -> str:
        return f"{self.prefix}{host}-docker"

    @property
    def upstream_container(self) -> str:
        return f"{self.prefix}upstream"

    @property
    def upstream_volume(self) -> str:
        return f"{self.prefix}upstream-data"

    @property
    def gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    @property
    def upstream_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + UPSTREAM_IP_OFFSET)

    def host_ip(self, index: int) -> str:
        net = ipaddress.IPv4Network(self.subnet)
        addr = net.network_address + HOST_IP_OFFSET + index
        if addr >= net.broadcast_address:
            raise LabError(f"host index {index} does not fit in {self.subnet}")
        return str(addr)

    def ssh_port(self, index: int) -> int:
        return self.ssh_port_base + index

    def label_args(self, **extra: str) -> list[str]:
        """``--label`` arguments: the namespace label plus ``registry-kit-lab.<k>=<v>``."""
        args = ["--label", self.label]
        for key, value in extra.items():
            args += ["--label", f"{LABEL}.{key.replace('_', '-')}={value}"]
        return args


def get_config(name: str | None = None) -> LabConfig:
    """The config of namespace ``name`` (default: $REGISTRY_KIT_LAB_NAME or the main lab).

    Other namespaces get their own subnet and port ranges, derived from the name so that they
    are stable across runs and do not overlap the main lab's.
    """
    name = name or os.environ.get(NAME_ENV) or DEFAULT_NAME
    if name == DEFAULT_NAME:
        return LabConfig()
    if not name.replace("-", "").isalnum() or not name[0].isalpha():
        raise LabError(f"invalid lab name {name!r}: use letters, digits and dashes")
    slot = zlib.crc32(name.encode()) % 40 + 1  # 1..40: never the main lab's slot 0
    return LabConfig(
        name=name,
        prefix=f"{name}-",
        subnet=f"172.30.{77 + slot}.0/24",
        # Clear of every upstream port (5099 + slot): at 2221 + 100 * slot, slots 28 to 30
        # handed a host the port of an upstream (seen: slot 29's lab-cache).
        ssh_port_base=10021 + 100 * slot,
        upstream_port=5099 + slot,
    )


@contextmanager
def locked(cfg: LabConfig) -> Iterator[None]:
    """Serialise lab changes per namespace across processes (parallel test runs, checkouts).

    The lock lives in the temp dir, not in .lab/, because every checkout on this machine
    shares the same engine objects.
    """
    with file_lock(f"{cfg.name}.lock", "another lab command"):
        yield


@contextmanager
def file_lock(name: str, holder: str) -> Iterator[None]:
    """An exclusive flock on <tempdir>/NAME, saying once that it waits for HOLDER."""
    path = Path(tempfile.gettempdir()) / name
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {holder} ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
