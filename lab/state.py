"""The lab's state file (.lab/state.json) and pyinfra inventory helpers built on it.

The file is rewritten by every `up` from the engine's labelled objects (the source of
truth) and the upstream's own tag lists (``upstream.tags``; ``upstream.registry3`` says
whether the registry 3.0.0 binary was there, and if not, why); tests and the inventory read
it without talking to Docker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lab import upstream
from lab.config import LABEL, LabConfig, LabError, get_config
from lab.engine import docker, docker_inspect
from lab.hosts import existing_hosts, spec_from_labels
from lab.images import registry3_available

HOSTS_ENV = "REGISTRY_KIT_LAB_HOSTS"
GROUPS_ENV = "REGISTRY_KIT_LAB_GROUPS"
# Group holding every selected lab host, whatever its other groups.
ALL_GROUP = "lab_hosts"

State = dict[str, Any]


def collect(cfg: LabConfig) -> State:
    """Build the state from the engine's objects carrying this lab's label."""
    hosts: dict[str, Any] = {}
    for name, info in sorted(existing_hosts(cfg).items()):
        spec = spec_from_labels(info)
        index = spec.index or 0
        hosts[name] = {
            "container": cfg.container(name),
            "hostname": name,
            "release": spec.release,
            "port": cfg.ssh_port(index),
            "ip": cfg.host_ip(index),
            "aliases": list(spec.aliases),
            "groups": list(spec.groups),
            "volume": cfg.volume(name),
            "image": info["Config"].get("Image", ""),
            "status": info["State"]["Status"],
        }
    up = docker_inspect("container", [cfg.upstream_container])
    up_status = up[0]["State"]["Status"] if up else "absent"
    reg3, reg3_reason = registry3_available()
    return {
        "name": cfg.name,
        "label": cfg.label,
        "key": str(cfg.key_file),
        "network": cfg.network,
        "subnet": cfg.subnet,
        "gateway": cfg.gateway,
        "upstream": {
            "container": cfg.upstream_container,
            "url": upstream.url(),
            "ip": cfg.upstream_ip,
            "local_port": cfg.upstream_port,
            "local_url": f"http://127.0.0.1:{cfg.upstream_port}",
            "status": up_status,
            # What it serves (asked over HTTP): tests read this instead of guessing.
            "tags": upstream.served_tags(cfg) if up_status == "running" else [],
            "registry3": {"available": reg3, "reason": reg3_reason},
        },
        "hosts": hosts,
    }


def write(cfg: LabConfig, state: State) -> Path:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(cfg.state_file)  # atomic: readers never see half a file
    return cfg.state_file


def load(name: str | None = None) -> State:
    """The state written by the last `up` of namespace `name` (default: the main lab)."""
    cfg = get_config(name)
    try:
        return dict(json.loads(cfg.state_file.read_text()))
    except FileNotFoundError:
        flag = "" if cfg.is_default else f" --name {cfg.name}"
        raise LabError(
            f"no lab state at {cfg.state_file}: run `python -m lab up{flag}` first"
        ) from None


def pyinfra_host(name: str, state: State | None = None) -> tuple[str, dict[str, Any]]:
    """pyinfra inventory entry for lab host `name`: SSH to 127.0.0.1:<port> as root."""
    state = state if state is not None else load()
    try:
        host = state["hosts"][name]
    except KeyError:
        raise LabError(f"no lab host {name!r} in the state (have: "
                       f"{', '.join(state['hosts']) or 'none'})") from None
    return (name, {
        "ssh_hostname": "127.0.0.1",
        "ssh_port": host["port"],
        "ssh_user": "root",
        "ssh_key": state["key"],
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "lab_ip": host["ip"],
        "lab_release": host["release"],
        "lab_aliases": list(host["aliases"]),
        "lab_container": host["container"],
    })


def _split(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def inventory_groups(state: State | None = None) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Group name -> pyinfra host tuples, honouring the env overrides.

    REGISTRY_KIT_LAB_HOSTS=a,b keeps only those hosts. REGISTRY_KIT_LAB_GROUPS=
    "registry_servers=lab-client2;registry_clients=lab-client1" sets the members of the
    groups it names (other groups keep their members from the state).
    """
    state = state if state is not None else load()
    names = list(state["hosts"])
    if os.environ.get(HOSTS_ENV):
        wanted = _split(os.environ[HOSTS_ENV])
        unknown = [n for n in wanted if n not in state["hosts"]]
        if unknown:
            raise LabError(f"{HOSTS_ENV}: unknown lab hosts {', '.join(unknown)}")
        names = [n for n in names if n in wanted]
    members: dict[str, list[str]] = {"registry_servers": [], "registry_clients": []}
    for name in names:
        for group in state["hosts"][name]["groups"]:
            members.setdefault(group, []).append(name)
    for clause in os.environ.get(GROUPS_ENV, "").split(";"):
        if not clause.strip():
            continue
        group, _, hosts = clause.partition("=")
        members[group.strip()] = [n for n in _split(hosts) if n in names]
    members[ALL_GROUP] = names
    return {g: [pyinfra_host(n, state) for n in hs] for g, hs in members.items()}


def label_filter(cfg: LabConfig) -> str:
    return f"label={cfg.label}"


def engine_objects(cfg: LabConfig) -> dict[str, list[str]]:
    """Names of every container, volume and network carrying this lab's label."""
    flt = label_filter(cfg)
    return {
        "containers": docker("ps", "-a", "--filter", flt, "--format", "{{.Names}}").stdout.split(),
        "volumes": docker("volume", "ls", "--filter", flt, "--format", "{{.Name}}").stdout.split(),
        "networks": docker("network", "ls", "--filter", flt,
                           "--format", "{{.Name}}").stdout.split(),
    }


__all__ = ["LABEL", "collect", "engine_objects", "inventory_groups", "load", "pyinfra_host",
           "write"]
