"""What the lab's hosts are: `HostSpec` and the default topology.

Tests and later work bring up more hosts by passing their own list of specs to `lab.up()`;
the CLI takes extra hosts as ``name:release[:group,...[:alias,...]]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lab.config import LabError

# Hosts without an explicit index get the lowest free one from here on, so they never take
# the ports and addresses of the default hosts.
AUTO_INDEX_START = 3


@dataclass(frozen=True)
class HostSpec:
    """One lab host. `index` fixes its SSH port (base + index) and IP (.11 + index)."""

    name: str
    release: str = "bookworm"
    aliases: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    index: int | None = None

    def __post_init__(self) -> None:
        # Accept lists for convenience but keep the spec hashable.
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.name or not self.name.replace("-", "").isalnum():
            raise LabError(f"invalid host name {self.name!r}: letters, digits, dashes")


DEFAULT_TOPOLOGY: tuple[HostSpec, ...] = (
    HostSpec("lab-reg", "bookworm", ("registry.lab",), ("registry_servers",), index=0),
    HostSpec("lab-client1", "bookworm", ("client1.lab",), ("registry_clients",), index=1),
    HostSpec("lab-client2", "trixie", ("client2.lab",), ("registry_clients",), index=2),
)


def parse_extra(text: str) -> HostSpec:
    """``name:release[:group,group[:alias,alias]]`` -> HostSpec."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise LabError(f"bad --extra {text!r}: use name:release[:group,...[:alias,...]]")
    name, release = parts[0], parts[1]
    groups = tuple(g for g in (parts[2] if len(parts) > 2 else "").split(",") if g)
    aliases = tuple(a for a in (parts[3] if len(parts) > 3 else "").split(",") if a)
    return HostSpec(name, release, aliases, groups)


def check_unique(specs: Iterable[HostSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise LabError(f"host {spec.name} is listed twice")
        seen.add(spec.name)
