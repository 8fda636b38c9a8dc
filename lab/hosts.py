"""The lab network and host containers: systemd as PID 1, sshd on a loopback port.

Containers are reconciled from the engine's own labelled objects: a host whose labels match
what is asked is reused (started if stopped), anything else carrying the lab's label under
that name is replaced. A replaced host also gets a fresh /var/lib/docker volume: it is a new
machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lab.config import LABEL, LabConfig, LabError, say
from lab.engine import docker, docker_inspect, run
from lab.images import Image
from lab.ssh import wait_ssh
from lab.topology import AUTO_INDEX_START, HostSpec

# Bump when the docker run flags below change, so running hosts are recreated.
RUN_RECIPE = "1"
SYSTEMD_TIMEOUT = 90.0
SSH_TIMEOUT = 60.0

# --privileged fails on this kind of machine (root lacks CAP_SYS_RESOURCE): grant the rest.
# systempaths=unconfined makes /proc/sys writable, which nested Docker 26 needs (IPv6 sysctls).
HOST_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    # systemd halts cleanly on SIGRTMIN+3; SIGTERM would only make it re-exec itself.
    "--stop-signal", "SIGRTMIN+3",
)


# --- network -------------------------------------------------------------------------------


def _routes() -> list[str]:
    out = run(["ip", "-4", "-o", "route", "show"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line and line.split()[0] != "default"]


def ensure_network(cfg: LabConfig) -> None:
    """Create the lab's bridge network with its fixed subnet, or check the existing one."""
    found = docker_inspect("network", [cfg.network])
    if found:
        net = found[0]
        if (net.get("Labels") or {}).get(LABEL) != cfg.label_value:
            raise LabError(f"docker network {cfg.network} exists but is not this lab's")
        subnets = [c.get("Subnet") for c in (net.get("IPAM", {}).get("Config") or [])]
        if cfg.subnet not in subnets:
            raise LabError(f"network {cfg.network} has {subnets}, not {cfg.subnet}: run down")
        return
    wanted = ipaddress.ip_network(cfg.subnet)
    others = docker("network", "ls", "-q").stdout.split()
    used: list[str] = []
    for net in docker_inspect("network", others):
        used += [c.get("Subnet", "") for c in (net.get("IPAM", {}).get("Config") or [])]
    for cidr in [*used, *_routes()]:
        try:
            other = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if other.version == 4 and wanted.overlaps(other):
            raise LabError(f"lab subnet {cfg.subnet} collides with {cidr} on this machine")
    docker("network", "create", "--driver", "bridge", "--subnet", cfg.subnet,
           "--gateway", cfg.gateway, *cfg.label_args(role="network"), cfg.network)


# --- host containers -----------------------------------------------------------------------


def existing_hosts(cfg: LabConfig) -> dict[str, dict[str, Any]]:
    """Host name -> `docker inspect` of every host container of this lab, any state."""
    ids = docker("ps", "-aq", "--filter", f"label={cfg.label}",
                 "--filter", f"label={LABEL}.role=host").stdout.split()
    result = {}
    for info in docker_inspect("container", ids):
        name = (info["Config"].get("Labels") or {}).get(f"{LABEL}.host")
        if name:
            result[name] = info
    return result


def spec_from_labels(info: dict[str, Any]) -> HostSpec:
    labels = info["Config"].get("Labels") or {}

    def items(key: str) -> tuple[str, ...]:
        return tuple(x for x in labels.get(f"{LABEL}.{key}", "").split(",") if x)

    return HostSpec(
        name=labels[f"{LABEL}.host"],
        release=labels.get(f"{LABEL}.release", "bookworm"),
        aliases=items("aliases"),
        groups=items("groups"),
        index=int(labels[f"{LABEL}.index"]),
    )


def assign_indexes(specs: Sequence[HostSpec], existing: dict[str, dict[str, Any]]
                   ) -> dict[str, int]:
    """Stable index per host: explicit, else the one it already has, else the lowest free."""
    result: dict[str, int] = {}
    for spec in specs:
        if spec.index is not None:
            result[spec.name] = spec.index
        elif spec.name in existing:
            result[spec.name] = spec_from_labels(existing[spec.name]).index or 0
    for spec in specs:
        if spec.name not in result:
            index = AUTO_INDEX_START
            while index in result.values():
                index += 1
            result[spec.name] = index
    taken: dict[int, str] = {}
    for name, index in result.items():
        if index in taken:
            raise LabError(f"hosts {taken[index]} and {name} both want index {index}")
        taken[index] = name
    return result


def _config_hash(cfg: LabConfig, spec: HostSpec, index: int, image: Image) -> str:
    data = [RUN_RECIPE, cfg.name, cfg.subnet, image.key, spec.release, index,
            cfg.host_ip(index), cfg.ssh_port(index), list(spec.aliases), list(spec.groups)]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def remove_host(cfg: LabConfig, name: str) -> None:
    """Remove a host's container and its docker volume (no error if absent)."""
    docker("rm", "-f", "-v", cfg.container(name), check=False)
    docker("volume", "rm", "-f", cfg.volume(name), check=False)


def _create(cfg: LabConfig, spec: HostSpec, index: int, image: Image) -> None:
    container, volume = cfg.container(spec.name), cfg.volume(spec.name)
    docker("volume", "rm", "-f", volume, check=False)  # never inherit an old machine's data
    docker("volume", "create", *cfg.label_args(role="volume", host=spec.name), volume)
    aliases: list[str] = []
    for alias in (spec.name, *spec.aliases):
        aliases += ["--network-alias", alias]
    labels = cfg.label_args(
        role="host", host=spec.name, release=spec.release, index=str(index),
        aliases=",".join(spec.aliases), groups=",".join(spec.groups),
        image_key=image.key, config=_config_hash(cfg, spec, index, image),
    )
    docker(
        "run", "-d", "--name", container, "--hostname", spec.name,
        "--network", cfg.network, "--ip", cfg.host_ip(index), *aliases,
        *HOST_FLAGS, "-v", f"{volume}:/var/lib/docker",
        "-p", f"127.0.0.1:{cfg.ssh_port(index)}:22", *labels, image.tag,
    )


def ensure_host(cfg: LabConfig, spec: HostSpec, index: int, image: Image,
                existing: dict[str, Any] | None) -> str:
    """Bring one host to running, reusing its container when it matches. Returns the action."""
    name = spec.name
    if existing is not None:
        labels = existing["Config"].get("Labels") or {}
        status = existing["State"]["Status"]
        if labels.get(f"{LABEL}.config") != _config_hash(cfg, spec, index, image):
            say(f"{name}: settings or image changed, replacing")
        elif status == "running":
            return "kept"
        elif status == "paused":
            docker("unpause", cfg.container(name))
            return "unpaused"
        elif status in ("created", "exited"):
            if docker("start", cfg.container(name), check=False).returncode == 0:
                say(f"{name}: started existing container")
                return "started"
            say(f"{name}: could not start leftover container, replacing")
        else:
            say(f"{name}: container is {status}, replacing")
        remove_host(cfg, name)
    say(f"{name}: creating from {image.tag}")
    _create(cfg, spec, index, image)
    return "created"


def authorize_key(cfg: LabConfig, name: str, key: Path) -> None:
    """Authorise the lab's public key for root.

    Appended, not overwritten: another checkout on this machine (CI's fresh clone) has a key
    of its own and shares the same hosts.
    """
    script = ('umask 077 && mkdir -p /root/.ssh && f=/root/.ssh/authorized_keys && '
              'touch "$f" && (grep -qxF "$1" "$f" || echo "$1" >> "$f")')
    docker("exec", cfg.container(name), "sh", "-c", script, "sh",
           key.with_suffix(".pub").read_text().strip())


def add_sudo_user(cfg: LabConfig, name: str, user: str, key: Path) -> None:
    """Give host `name` a login `user` (own home, umask 022 as on a stock install) that the
    lab key reaches and that may run anything through sudo without a password: how many
    sites reach their servers (pyinfra's --sudo). Idempotent."""
    script = ('set -e; u="$1"; id -u "$u" >/dev/null 2>&1 || useradd -m -s /bin/sh "$u"; '
              'h=$(getent passwd "$u" | cut -d: -f6); install -d -m 0700 -o "$u" -g "$u" '
              '"$h/.ssh"; f="$h/.ssh/authorized_keys"; touch "$f"; grep -qxF "$2" "$f" || '
              'echo "$2" >> "$f"; chown "$u:$u" "$f"; chmod 0600 "$f"; '
              'printf "%s ALL=(ALL) NOPASSWD: ALL\\n" "$u" > "/etc/sudoers.d/lab-$u"; '
              'chmod 0440 "/etc/sudoers.d/lab-$u"; visudo -c -q; '
              # sshd concatenates AllowUsers lines: this adds to the image's `AllowUsers root`.
              'c="/etc/ssh/sshd_config.d/lab-user-$u.conf"; if [ ! -e "$c" ]; then '
              'echo "AllowUsers $u" > "$c"; sshd -t; systemctl reload ssh; fi')
    docker("exec", cfg.container(name), "sh", "-c", script, "sh", user,
           key.with_suffix(".pub").read_text().strip())


def wait_systemd(cfg: LabConfig, name: str, timeout: float = SYSTEMD_TIMEOUT) -> str:
    """Wait until systemd in the host reports running or degraded; return that state."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        remaining = max(1.0, deadline - time.monotonic())
        proc = docker("exec", cfg.container(name), "systemctl", "is-system-running", "--wait",
                      check=False, timeout=remaining + 5)
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return state
        # Right after (re)start the bus is not up yet: systemctl fails fast, so retry.
        time.sleep(0.3)
    raise LabError(f"{name}: systemd not ready after {timeout:.0f}s (state: {state or '?'})")


def wait_ready(cfg: LabConfig, name: str, port: int, key: Path) -> str:
    authorize_key(cfg, name, key)
    state = wait_systemd(cfg, name)
    wait_ssh(name, key, port, SSH_TIMEOUT)
    return state


def restart(cfg: LabConfig, name: str) -> None:
    """`docker restart` = a reboot: systemd halts on SIGRTMIN+3 and boots again."""
    docker("restart", "-t", "30", cfg.container(name), timeout=120)


def prune_orphan_volumes(cfg: LabConfig, keep: Iterable[str]) -> None:
    """Remove host volumes left without their container (e.g. a container removed by hand)."""
    out = docker("volume", "ls", "--filter", f"label={cfg.label}",
                 "--filter", f"label={LABEL}.role=volume",
                 "--format", f'{{{{.Name}}}} {{{{.Label "{LABEL}.host"}}}}').stdout
    keep = set(keep)
    for line in out.splitlines():
        volume, _, host = line.partition(" ")
        if host and host not in keep:
            say(f"removing orphan volume {volume}")
            docker("volume", "rm", "-f", volume, check=False)
