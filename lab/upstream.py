"""The upstream registry: a plain-HTTP registry on the lab network standing in for Docker Hub.

Hosts reach it as ``http://upstream.lab:5000`` (the kit lists it in daemon.json
``registry-mirrors``); the control machine pushes into it through 127.0.0.1:<local port>.
It holds ``library/registry:2`` and ``:2.8.2`` (Debian bookworm's distribution), ``:2.8.3``
(Debian trixie's), ``:3`` and ``:3.0.0`` (the genuine 3.0.0 binary, only when
``lab.images.registry3_available()``), ``library/busybox:latest`` and
``library/registry:broken``. A tag is pushed only when its image differs from what is there;
a ``library/registry`` tag the lab no longer wants (e.g. ``3`` once the binary is gone) is
deleted, so the tags served are exactly ``contents()``'s. The lab state lists them
(``upstream.tags``).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lab.config import LABEL, LabConfig, LabError, say
from lab.engine import docker, docker_inspect, run
from lab.images import Image

ALIASES = ("upstream.lab", "upstream")
PORT = 5000
MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
))


def url() -> str:
    return f"http://{ALIASES[0]}:{PORT}"


def contents(small: dict[str, Image]) -> dict[str, Image]:
    """Upstream reference -> lab image that must be behind it.

    Full-version tags come from the registry images' own versions (2.8.2, 2.8.3, 3.0.0);
    `registry3` is absent from `small` when its binary is missing, and so are its tags.
    """
    refs = {
        "library/registry:2": small["registry"],
        f"library/registry:{small['registry'].version}": small["registry"],
    }
    if "registry_trixie" in small:
        refs[f"library/registry:{small['registry_trixie'].version}"] = small["registry_trixie"]
    if "registry3" in small:
        reg3 = small["registry3"]
        refs[f"library/registry:{reg3.version.split('.')[0]}"] = reg3
        refs[f"library/registry:{reg3.version}"] = reg3
    refs["library/busybox:latest"] = small["busybox"]
    refs["library/registry:broken"] = small["broken"]
    return refs


def _http(address: str, accept: str | None = None,
          method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(address, headers={"Accept": accept} if accept else {},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, b"", {}
    except (urllib.error.URLError, OSError):
        return 0, b"", {}


def _http_get(address: str, accept: str | None = None) -> tuple[int, bytes]:
    status, body, _ = _http(address, accept)
    return status, body


# Deletes are on so that tags the lab no longer wants can be removed (see _prune).
ENV = ("REGISTRY_STORAGE_DELETE_ENABLED=true",)


def _config_hash(cfg: LabConfig, image: Image) -> str:
    data = [cfg.name, cfg.subnet, cfg.upstream_ip, cfg.upstream_port, image.key, ENV]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _run(cfg: LabConfig, image: Image) -> None:
    volume = cfg.upstream_volume
    if not docker_inspect("volume", [volume]):
        docker("volume", "create", *cfg.label_args(role="volume"), volume)
    aliases: list[str] = []
    for alias in ALIASES:
        aliases += ["--network-alias", alias]
    docker(
        "run", "-d", "--name", cfg.upstream_container, "--hostname", "upstream",
        "--network", cfg.network, "--ip", cfg.upstream_ip, *aliases,
        "-p", f"127.0.0.1:{cfg.upstream_port}:{PORT}", "-v", f"{volume}:/var/lib/registry",
        *(arg for env in ENV for arg in ("-e", env)),
        *cfg.label_args(role="upstream", config=_config_hash(cfg, image)), image.tag,
    )


def _ensure_container(cfg: LabConfig, registry: Image) -> None:
    found = docker_inspect("container", [cfg.upstream_container])
    if found:
        info: dict[str, Any] = found[0]
        labels = info["Config"].get("Labels") or {}
        if labels.get(LABEL) != cfg.label_value:
            raise LabError(f"container {cfg.upstream_container} exists but is not this lab's")
        status = info["State"]["Status"]
        if labels.get(f"{LABEL}.config") == _config_hash(cfg, registry):
            if status == "running":
                return
            if status in ("created", "exited") and docker(
                "start", cfg.upstream_container, check=False
            ).returncode == 0:
                return
        say("upstream: replacing container (its data volume is kept)")
        docker("rm", "-f", cfg.upstream_container)
    say("upstream: creating container")
    _run(cfg, registry)


def _wait_http(cfg: LabConfig, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _http_get(f"http://127.0.0.1:{cfg.upstream_port}/v2/")[0] == 200:
            return
        time.sleep(0.2)
    raise LabError(f"upstream registry not answering on 127.0.0.1:{cfg.upstream_port}")


def remote_config_digest(cfg: LabConfig, reference: str) -> str | None:
    """Config digest of `repo:tag` in the upstream (== the local image ID when in sync)."""
    repo, tag = reference.rsplit(":", 1)
    status, body = _http_get(
        f"http://127.0.0.1:{cfg.upstream_port}/v2/{repo}/manifests/{tag}", MANIFEST_TYPES
    )
    if status != 200:
        return None
    digest = json.loads(body).get("config", {}).get("digest")
    return str(digest) if digest else None


def _push(cfg: LabConfig, reference: str, image: Image) -> str:
    local_id = docker("image", "inspect", "--format", "{{.Id}}", image.tag).stdout.strip()
    if remote_config_digest(cfg, reference) == local_id:
        return "kept"
    say(f"upstream: pushing {reference}")
    run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"docker-daemon:{image.tag}",
         f"docker://127.0.0.1:{cfg.upstream_port}/{reference}"], timeout=300)
    if remote_config_digest(cfg, reference) != local_id:
        raise LabError(f"upstream: {reference} does not match {image.tag} after push")
    return "pushed"


def served_tags(cfg: LabConfig, repos: tuple[str, ...] = ("library/registry",
                                                           "library/busybox")) -> list[str]:
    """`repo:tag` for every tag the upstream serves in `repos` (empty when it is down)."""
    refs: list[str] = []
    for repo in repos:
        status, body = _http_get(f"http://127.0.0.1:{cfg.upstream_port}/v2/{repo}/tags/list")
        if status == 200:
            refs += [f"{repo}:{tag}" for tag in json.loads(body).get("tags") or []]
    return sorted(refs)


def _manifest_digest(cfg: LabConfig, reference: str) -> str | None:
    repo, tag = reference.rsplit(":", 1)
    status, _, headers = _http(
        f"http://127.0.0.1:{cfg.upstream_port}/v2/{repo}/manifests/{tag}", MANIFEST_TYPES,
        method="HEAD",
    )
    return headers.get("Docker-Content-Digest") if status == 200 else None


def _prune(cfg: LabConfig, wanted: dict[str, Image]) -> dict[str, str]:
    """Delete the upstream's tags that `wanted` does not list (their manifests, unless a
    wanted tag shares one); returns reference -> "deleted"."""
    stale = [ref for ref in served_tags(cfg) if ref not in wanted]
    if not stale:
        return {}
    keep = {_manifest_digest(cfg, ref) for ref in wanted}
    # A manifest is deleted once, with every tag on it (3 and 3.0.0 share one).
    by_digest: dict[tuple[str, str], list[str]] = {}
    for ref in stale:
        digest = _manifest_digest(cfg, ref)
        if digest is not None and digest not in keep:
            by_digest.setdefault((ref.rsplit(":", 1)[0], digest), []).append(ref)
    done: dict[str, str] = {}
    for (repo, digest), refs in by_digest.items():
        say(f"upstream: deleting {', '.join(refs)} (no longer part of the lab)")
        status, _, _ = _http(
            f"http://127.0.0.1:{cfg.upstream_port}/v2/{repo}/manifests/{digest}",
            method="DELETE",
        )
        if status != 202:
            raise LabError(f"upstream: deleting {', '.join(refs)} answered HTTP {status}")
        done.update(dict.fromkeys(refs, "deleted"))
    return done


def ensure_upstream(cfg: LabConfig, small: dict[str, Image]) -> dict[str, str]:
    """Run the upstream registry and fill it with exactly `contents(small)`; returns
    reference -> pushed/kept/deleted."""
    _ensure_container(cfg, small["registry"])
    _wait_http(cfg)
    # One thread per image; tags of the same image go one after the other so that the
    # second push finds the blobs already there.
    by_image: dict[Image, list[str]] = {}
    for ref, img in contents(small).items():
        by_image.setdefault(img, []).append(ref)

    def push_all(img: Image, refs: list[str]) -> dict[str, str]:
        return {ref: _push(cfg, ref, img) for ref in refs}

    with ThreadPoolExecutor(max_workers=len(by_image)) as pool:
        futures = [pool.submit(push_all, img, refs) for img, refs in by_image.items()]
        results = {ref: res for fut in futures for ref, res in fut.result().items()}
    return {**results, **_prune(cfg, contents(small))}
