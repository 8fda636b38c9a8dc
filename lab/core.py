"""Lab lifecycle: up, down, status, and per-host reset/restart/remove.

`up()` is idempotent and reconciles with whatever the engine holds under the lab's label
(including stopped leftovers of an earlier session whose dockerd was killed): matching
objects are reused, outdated ones replaced, missing ones created.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from lab import hosts, images, state, upstream
from lab.config import LabConfig, LabError, get_config, locked, say
from lab.engine import docker, engine_answers, ensure_engine, ensure_inotify, ensure_tools
from lab.ssh import ensure_key
from lab.topology import DEFAULT_TOPOLOGY, HostSpec, check_unique

State = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")


def _serialised(fn: Callable[P, R]) -> Callable[P, R]:
    """Hold the namespace's lock (keyword `name`) while `fn` changes the lab."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ns = kwargs.get("name")
        with locked(get_config(ns if isinstance(ns, str) else None)):
            return fn(*args, **kwargs)

    return wrapper


@_serialised
def up(
    specs: Sequence[HostSpec] | None = None,
    *,
    prune: bool = False,
    with_upstream: bool = True,
    name: str | None = None,
) -> State:
    """Bring the lab up and return its state (also written to .lab/state.json).

    specs: hosts wanted (default: DEFAULT_TOPOLOGY). Other lab hosts already in the engine
    are kept and brought up too, unless `prune` removes them. `name` selects a separate lab
    namespace (own containers, network, subnet, ports, label value).
    """
    cfg = get_config(name)
    wanted = list(DEFAULT_TOPOLOGY if specs is None else specs)
    check_unique(wanted)
    ensure_tools()
    ensure_engine()
    ensure_inotify()
    existing = hosts.existing_hosts(cfg)
    names = {s.name for s in wanted}
    for leftover in sorted(set(existing) - names):
        if prune:
            say(f"{leftover}: not wanted, removing")
            hosts.remove_host(cfg, leftover)
            del existing[leftover]
        else:
            wanted.append(hosts.spec_from_labels(existing[leftover]))
    if prune:
        hosts.prune_orphan_volumes(cfg, [s.name for s in wanted])
    indexes = hosts.assign_indexes(wanted, existing)
    host_images, small = images.build_images({s.release for s in wanted})
    key = ensure_key(cfg)
    hosts.ensure_network(cfg)

    def bring_up(spec: HostSpec) -> str:
        index = indexes[spec.name]
        action = hosts.ensure_host(cfg, spec, index, host_images[spec.release],
                                   existing.get(spec.name))
        systemd = hosts.wait_ready(cfg, spec.name, cfg.ssh_port(index), key)
        return f"{spec.name}: {action}, systemd {systemd}, ssh ok"

    with ThreadPoolExecutor(max_workers=len(wanted) + 1) as pool:
        up_future: Future[dict[str, str]] | None = None
        if with_upstream:
            up_future = pool.submit(upstream.ensure_upstream, cfg, small)
        futures = [pool.submit(bring_up, s) for s in wanted]
        errors: list[str] = []
        for fut in futures:
            try:
                say(fut.result())
            except LabError as exc:
                errors.append(str(exc))
        if up_future is not None:
            try:
                pushed = up_future.result()
                say("upstream: " + ", ".join(f"{r} {a}" for r, a in pushed.items()))
            except LabError as exc:
                errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))
    current = state.collect(cfg)
    state.write(cfg, current)
    return current


def _refresh(cfg: LabConfig) -> State:
    current = state.collect(cfg)
    state.write(cfg, current)
    return current


def _spec(cfg: LabConfig, host: str) -> tuple[HostSpec, dict[str, Any] | None]:
    found = hosts.existing_hosts(cfg).get(host)
    if found is not None:
        return hosts.spec_from_labels(found), found
    for spec in DEFAULT_TOPOLOGY:
        if spec.name == host and cfg.is_default:
            return spec, None
    raise LabError(f"no lab host {host!r}")


@_serialised
def reset_host(host: str, *, docker: bool = False, name: str | None = None) -> State:
    """Recreate `host` from its image with a fresh /var/lib/docker volume: a new machine,
    without Docker, or with Debian's docker.io already in (`docker=True`: the `-docker` image
    of its release) for tests whose subject is not the kit installing Docker."""
    cfg = get_config(name)
    ensure_engine()
    ensure_inotify()
    spec, _ = _spec(cfg, host)
    release = images.base_release(spec.release) + (images.DOCKER_FLAVOUR if docker else "")
    spec = dataclasses.replace(spec, release=release)
    image = images.build_host_image(spec.release)
    key = ensure_key(cfg)
    say(f"{host}: resetting")
    hosts.remove_host(cfg, host)
    index = spec.index if spec.index is not None else hosts.assign_indexes(
        [spec], hosts.existing_hosts(cfg))[host]
    hosts.ensure_host(cfg, spec, index, image, None)
    hosts.wait_ready(cfg, host, cfg.ssh_port(index), key)
    return _refresh(cfg)


@_serialised
def restart_host(host: str, *, name: str | None = None) -> State:
    """Reboot `host` (docker restart), then wait for systemd and sshd."""
    cfg = get_config(name)
    ensure_engine()
    ensure_inotify()
    spec, _ = _spec(cfg, host)
    say(f"{host}: restarting")
    hosts.restart(cfg, host)
    index = spec.index or 0
    hosts.wait_ready(cfg, host, cfg.ssh_port(index), ensure_key(cfg))
    return _refresh(cfg)


@_serialised
def add_sudo_user(host: str, user: str, *, name: str | None = None) -> None:
    """Let the lab key log in to `host` as `user`, who has passwordless sudo (not root)."""
    cfg = get_config(name)
    ensure_engine()
    _spec(cfg, host)  # the host must exist
    hosts.add_sudo_user(cfg, host, user, ensure_key(cfg))


@_serialised
def remove_host(host: str, *, name: str | None = None) -> State:
    """Remove one host (container and docker volume) from the lab."""
    cfg = get_config(name)
    ensure_engine()
    hosts.remove_host(cfg, host)
    return _refresh(cfg)


@_serialised
def down(*, remove_images: bool = False, name: str | None = None) -> dict[str, list[str]]:
    """Remove every container, volume and network of the lab, and its files under .lab/.

    Nothing without the lab's label is touched. Built images are kept (they are shared by
    all namespaces and slow to build) unless `remove_images`.
    """
    cfg = get_config(name)
    ensure_engine()  # leftovers may sit in a stopped engine's /var/lib/docker
    found = state.engine_objects(cfg)
    if found["containers"]:
        docker("rm", "-f", "-v", *found["containers"])
    if found["volumes"]:
        docker("volume", "rm", "-f", *found["volumes"])
    if found["networks"]:
        docker("network", "rm", *found["networks"])
    if remove_images:
        found["images"] = images.remove_images()
    _remove_files(cfg)
    return found


def _remove_files(cfg: LabConfig) -> None:
    if not cfg.is_default:
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
        for parent in (cfg.state_dir.parent, cfg.state_dir.parent.parent):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()  # .lab/ns and .lab, when nothing else is left in them
        return
    # The main lab's folder also holds other namespaces' folders (ns/): keep those.
    for path in (cfg.state_file, cfg.state_file.with_suffix(".tmp"), cfg.key_file,
                 cfg.key_file.with_suffix(".pub")):
        path.unlink(missing_ok=True)
    ns = cfg.state_dir / "ns"
    if ns.is_dir() and not any(ns.iterdir()):
        ns.rmdir()
    if cfg.state_dir.is_dir() and not any(cfg.state_dir.iterdir()):
        cfg.state_dir.rmdir()


def status(*, name: str | None = None) -> list[dict[str, str]]:
    """One row per lab host (and the upstream), read from the engine."""
    cfg = get_config(name)
    if not engine_answers():
        raise LabError("Docker engine not answering: run `python -m lab up`")
    current = state.collect(cfg)
    rows = [
        {
            "name": host,
            "release": info["release"],
            "state": info["status"],
            "ssh": str(info["port"]),
            "ip": info["ip"],
            "aliases": ",".join(info["aliases"]),
            "groups": ",".join(info["groups"]),
        }
        for host, info in current["hosts"].items()
    ]
    up_info = current["upstream"]
    rows.append({
        "name": "(upstream)", "release": "registry", "state": up_info["status"],
        "ssh": "-", "ip": up_info["ip"],
        "aliases": f"{upstream.ALIASES[0]} (127.0.0.1:{up_info['local_port']})", "groups": "-",
    })
    return rows
