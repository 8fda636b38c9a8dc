"""systemd services of the kit: start once, stop where they are, and the configs of the
kit's haproxy and keepalived instances, each checked before it replaces the old one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from io import BytesIO
from typing import Any, Protocol

from pyinfra import host

from registry_kit.commands import join, q
from registry_kit.facts import HostState
from registry_kit.operations import files
from registry_kit.operations.typed import operation


class Around(Protocol):
    """Commands run before and after a config takes effect (keepalived.Handover)."""

    def away_command(self) -> str: ...

    def back_command(self) -> str: ...


@operation()
def start(state: HostState, service: str, daemon_reload: bool = False):
    """Enable and start `service` unless it is both already (`daemon_reload`: a unit the
    kit wrote itself)."""
    active, enabled = state.services.get(service, (False, False))
    if active and enabled:
        host.noop(f"{service} is enabled and running")
        return
    reload = "systemctl daemon-reload && " if daemon_reload else ""
    yield f"{reload}systemctl enable --now {q(service)}"


@operation()
def stop(state: HostState, service: str, unit: str):
    """Stop and disable `service` where it runs, is enabled or has its unit file."""
    active, enabled = state.services.get(service, (False, False))
    if not (active or enabled or unit in state.files):
        host.noop(f"no {service}")
        return
    yield f"systemctl disable --now {q(service)} 2>/dev/null; true"


@operation()
def restart_haproxy(config: str, service: str):
    """Check the config, then restart: haproxy reads its files at start only."""
    yield (f"haproxy -c -q -f {q(config)} && systemctl daemon-reload && "
           f"systemctl restart {q(service)}")


@operation()
def remove_timer(state: HostState, timer: str, paths: Sequence[str], absent: str):
    """Stop a timer of the kit and remove those of its `paths` that exist; `absent` is the
    no-op message."""
    present = [path for path in paths if path in state.files]
    if not present:
        host.noop(absent)
        return
    yield f"systemctl disable --now {q(timer)} >/dev/null 2>&1; true"
    yield "rm -f " + " ".join(q(path) for path in present)
    yield "systemctl daemon-reload"


def staging_path(path: str) -> str:
    """Where replace_checked puts the new file while it is checked."""
    return f"{path}.registry-kit-new"


def replace_checked(path: str, content: bytes, mode: str, state: HostState,
                    checker: Sequence[str], service: str, around: Around | None = None,
                    parent: str | None = None, quiet: bool = False) -> Iterator[Any]:
    """Commands that replace `path` (root, `mode`) only with a file `checker` (its words,
    the file comes last) accepts, then reload `service`; `around`'s commands run right before
    and after the swap. The content travels over SFTP, never in a command; `quiet`: the
    checker's output is never shown (it may quote a secret)."""
    current = state.files.get(path)
    if current is not None and current.sha256 == files.sha256_of(content) and \
            (current.mode, current.owner, current.group) == (mode.lstrip("0"), "root", "root"):
        host.noop(f"{path} is up to date")
        return
    staging = staging_path(path)
    if parent is not None:
        yield f"install -d -m 0755 -o root -g root {q(parent)}"
    yield f"install -m {q(mode)} -o root -g root /dev/null {q(staging)}"
    yield files.upload(BytesIO(content), staging)
    refused = f"registry-kit: {checker[0]} rejected the new configuration; {path} was not " \
        "changed"
    hush = " 2>&1" if quiet else ""
    yield (f"{join([*checker, staging])} >/dev/null{hush} || {{ rm -f {q(staging)}; "
           f"echo {q(refused)} >&2; exit 1; }}")
    if around is not None:
        yield around.away_command()
    yield f"mv -f {q(staging)} {q(path)}"
    # reload-or-restart: a reload when it runs (connections stay), a start otherwise.
    yield f"systemctl reload-or-restart {q(service)}"
    if around is not None:
        yield around.back_command()
