"""The lab itself: hosts reachable by pyinfra, reboots, nested Docker through the upstream,
idempotent `up`, and a `down` that leaves nothing behind (in a namespace of its own).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lab as lab_api
from lab import config as lab_config
from lab import state as lab_state
from lab.engine import docker
from lab.images import registry3_available, registry3_image, small_images, trixie_registry_image
from lab.ssh import ssh_argv
from lab.topology import HostSpec

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def ssh(state: dict[str, Any], host: str, command: str, *, check: bool = True,
        timeout: int = 600) -> subprocess.CompletedProcess[str]:
    port = int(state["hosts"][host]["port"])
    proc = subprocess.run(ssh_argv(Path(state["key"]), port, [command]), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"{host}: {command!r}: {proc.stdout}\n{proc.stderr}"
    return proc


def pyinfra(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The host/group overrides are the test's to set; the namespace stays the run's.
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("REGISTRY_KIT_LAB_") or k == lab_config.NAME_ENV}
    return subprocess.run([PYINFRA, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**clean, **(env or {})})


def test_pyinfra_reads_facts_of_all_hosts(lab: dict[str, Any]) -> None:
    proc = pyinfra("-y", "inventories/lab.py", "fact", "server.LinuxDistribution",
                   "server.Command", "command=systemctl is-system-running || true", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout)
    dist = facts["server.LinuxDistribution"]
    assert set(dist) == {"lab-reg", "lab-client1", "lab-client2"}
    codenames = sorted(d["release_meta"]["VERSION_CODENAME"] for d in dist.values())
    assert codenames == ["bookworm", "bookworm", "trixie"]
    systemd = next(v for k, v in facts.items() if k.startswith("server.Command"))
    assert all(s in ("running", "degraded") for s in systemd.values()), systemd


def test_inventory_env_overrides(lab: dict[str, Any]) -> None:
    proc = pyinfra("inventories/lab.py", "debug-inventory", "--json", env={
        "REGISTRY_KIT_LAB_HOSTS": "lab-reg,lab-client2",
        "REGISTRY_KIT_LAB_GROUPS": "registry_servers=lab-client2;registry_clients=lab-reg",
    })
    assert proc.returncode == 0, proc.stderr[-3000:]
    hosts = {h["name"]: h for h in json.loads(proc.stdout)}
    assert set(hosts) == {"lab-reg", "lab-client2"}
    assert "registry_servers" in hosts["lab-client2"]["groups"]
    assert "registry_clients" in hosts["lab-reg"]["groups"]
    assert hosts["lab-reg"]["data"]["ssh_port"] == lab["hosts"]["lab-reg"]["port"]


def test_pyinfra_host_tuple(lab: dict[str, Any]) -> None:
    name, data = lab_state.pyinfra_host("lab-reg")
    assert name == "lab-reg"
    assert data["ssh_hostname"] == "127.0.0.1" and data["ssh_user"] == "root"
    assert data["ssh_port"] == lab["hosts"]["lab-reg"]["port"]
    assert Path(data["ssh_key"]).stat().st_mode & 0o777 == 0o600
    assert data["lab_ip"] == lab["hosts"]["lab-reg"]["ip"]


def test_second_up_is_quick_and_keeps_containers(lab: dict[str, Any]) -> None:
    def ids() -> dict[str, str]:
        names = [h["container"] for h in lab["hosts"].values()] + [lab["upstream"]["container"]]
        out = docker("inspect", "--format", "{{.Name}} {{.Id}}", *names).stdout
        return dict(line.split() for line in out.splitlines())

    before = ids()
    started = time.monotonic()
    again = lab_api.up()
    elapsed = time.monotonic() - started
    assert ids() == before
    assert again["hosts"].keys() == lab["hosts"].keys()
    assert elapsed < 20, f"second up took {elapsed:.1f}s"


def test_upstream_serves_the_images(lab: dict[str, Any]) -> None:
    base = lab["upstream"]["local_url"]
    with urllib.request.urlopen(f"{base}/v2/library/registry/tags/list", timeout=10) as resp:
        tags = set(json.load(resp)["tags"])
    with urllib.request.urlopen(f"{base}/v2/library/busybox/tags/list", timeout=10) as resp:
        assert json.load(resp)["tags"] == ["latest"]
    available, reason = registry3_available()
    wanted = {"2", "2.8.2", "2.8.3", "broken"} | ({"3", "3.0.0"} if available else set())
    # Exactly these: without the 3.0.0 binary there is no stale registry:3 either.
    assert tags == wanted, reason
    assert lab["upstream"]["tags"] == sorted(
        ["library/busybox:latest", *(f"library/registry:{t}" for t in wanted)])
    assert lab["upstream"]["registry3"] == {"available": available, "reason": reason}
    # Hosts reach it by name on the lab network.
    out = ssh(lab, "lab-client1", "curl -sf http://upstream.lab:5000/v2/_catalog").stdout
    assert "library/registry" in out


def test_restart_brings_systemd_and_sshd_back(lab: dict[str, Any]) -> None:
    # /run is a tmpfs: a marker there is gone after a reboot.
    ssh(lab, "lab-client1", "touch /run/registry-kit-lab-marker")
    lab_api.restart_host("lab-client1")
    proc = ssh(lab, "lab-client1", "test ! -e /run/registry-kit-lab-marker && "
               "systemctl is-active ssh && systemctl is-system-running || true")
    lines = proc.stdout.split()
    assert lines[0] == "active"
    assert lines[1] in ("running", "degraded")


@pytest.mark.slow
def test_nested_docker_pulls_through_upstream(lab: dict[str, Any], extra_host: Any) -> None:
    """A spare host installs Docker, uses the upstream as mirror, pulls and runs images.

    Then `reset_host` makes it a fresh machine again (no Docker, empty /var/lib/docker).
    """
    spare = extra_host(HostSpec("lab-spare", "bookworm"))
    state = lab_state.load()
    assert state["hosts"]["lab-spare"]["port"] == spare["port"]
    mirror = state["upstream"]["url"]
    ssh(state, "lab-spare", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y -qq docker.io >/dev/null")
    ssh(state, "lab-spare", "mkdir -p /etc/docker && printf '%s' "
        f"'{json.dumps({'registry-mirrors': [mirror]})}' > /etc/docker/daemon.json && "
        "systemctl reload docker && sleep 1")
    info = ssh(state, "lab-spare", "docker info --format '{{json .RegistryConfig.Mirrors}}'")
    assert mirror.rstrip("/") in info.stdout
    ssh(state, "lab-spare", "docker pull -q registry:2 && docker pull -q busybox")
    local_id = docker("image", "inspect", "--format", "{{.Id}}",
                      "registry-kit-lab/registry:" + _registry_tag()).stdout.strip()
    remote_id = ssh(state, "lab-spare",
                    "docker image inspect --format '{{.Id}}' registry:2").stdout.strip()
    assert remote_id == local_id
    assert ssh(state, "lab-spare", "docker run --rm busybox echo hi").stdout.strip() == "hi"
    broken = ssh(state, "lab-spare", "docker run --rm registry:broken echo hi", check=False)
    assert broken.returncode != 0

    lab_api.reset_host("lab-spare")
    state = lab_state.load()
    fresh = ssh(state, "lab-spare", "command -v dockerd; ls -A /var/lib/docker | wc -l",
                check=False)
    assert fresh.stdout.split() == ["0"], fresh.stdout


def _registry_tag() -> str:
    return small_images()["registry"].tag.split(":", 1)[1]


def test_down_leaves_nothing_in_its_namespace(lab: dict[str, Any]) -> None:
    """A separate namespace goes up and down; the session's lab is untouched."""
    ns = "rk-downtest"
    cfg = lab_api.get_config(ns)
    flt = f"label={cfg.label}"
    try:
        state = lab_api.up([HostSpec("t1", "bookworm")], prune=True, name=ns)
        assert list(state["hosts"]) == ["t1"]
        assert state["network"] != lab["network"]
        assert docker("ps", "-q", "--filter", flt).stdout.split()
    finally:
        lab_api.down(name=ns)
    assert docker("ps", "-aq", "--filter", flt).stdout.split() == []
    assert docker("volume", "ls", "-q", "--filter", flt).stdout.split() == []
    assert docker("network", "ls", "-q", "--filter", flt).stdout.split() == []
    assert not cfg.state_dir.exists()
    # The main lab is still there.
    main = docker("ps", "-q", "--filter", f"label={lab_api.get_config().label}").stdout.split()
    assert len(main) == len(lab["hosts"]) + 1
    assert lab_state.load()["hosts"].keys() == lab["hosts"].keys()


# --- the registry images on a lab host: 2.8.3 and 3.0.0 through the mirror ----------------


@pytest.fixture(scope="class")
def docker_host(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A spare trixie host (Docker 26 from Debian) whose engine uses the upstream as its
    Docker Hub mirror; removed when the class is done. Returns the lab state."""
    name = "lab-mirror"
    lab_api.up([HostSpec(name, "trixie")])
    try:
        state = lab_state.load()
        mirror = state["upstream"]["url"]
        ssh(state, name, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y -qq docker.io >/dev/null")
        ssh(state, name, "mkdir -p /etc/docker && printf '%s' "
            f"'{json.dumps({'registry-mirrors': [mirror]})}' > /etc/docker/daemon.json && "
            "systemctl reload docker && sleep 1")
        yield state
    finally:
        lab_api.remove_host(name)


def _local_id(tag: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


@pytest.mark.slow
class TestRegistryImagesThroughTheMirror:
    HOST = "lab-mirror"

    def test_registry_2_8_3_pulls_and_runs(self, docker_host: dict[str, Any]) -> None:
        ssh(docker_host, self.HOST, "docker pull -q registry:2.8.3")
        remote = ssh(docker_host, self.HOST,
                     "docker image inspect --format '{{.Id}}' registry:2.8.3").stdout.strip()
        assert remote == _local_id(trixie_registry_image().tag)
        words = ssh(docker_host, self.HOST,
                    "docker run --rm registry:2.8.3 --version").stdout.split()
        assert Path(words[0]).name == "registry"
        assert words[1:] == ["github.com/docker/distribution", "2.8.3+ds1"]
        # Linked against trixie's glibc, and it carries its own: the image's libc is trixie's.
        host_libc = ssh(docker_host, self.HOST,
                        "sha256sum /lib/x86_64-linux-gnu/libc.so.6").stdout.split()[0]
        ssh(docker_host, self.HOST, "docker rm -f libc-probe >/dev/null 2>&1; "
            "docker create --name libc-probe registry:2.8.3 >/dev/null")
        image_libc = ssh(docker_host, self.HOST,
                         "docker cp libc-probe:/lib/x86_64-linux-gnu/libc.so.6 - | tar -xO | "
                         "sha256sum; docker rm -f libc-probe >/dev/null").stdout.split()[0]
        assert image_libc == host_libc

    def test_registry_3_pulls_and_prints_its_version(self,
                                                     docker_host: dict[str, Any]) -> None:
        available, reason = registry3_available()
        if not available:
            pytest.skip(reason)
        ssh(docker_host, self.HOST, "docker pull -q registry:3 && docker pull -q registry:3.0.0")
        ids = ssh(docker_host, self.HOST, "docker image inspect --format '{{.Id}}' "
                  "registry:3 registry:3.0.0").stdout.split()
        image = registry3_image()
        assert image is not None
        assert ids == [_local_id(image.tag)] * 2
        words = ssh(docker_host, self.HOST,
                    "docker run --rm registry:3 --version").stdout.split()
        # argv[0] is the entrypoint's path, /bin/registry, as in an image whose entrypoint
        # is ["/bin/registry"].
        assert Path(words[0]).name == "registry"
        assert words[1:] == ["github.com/distribution/distribution/v3", "3.0.0"]

    def test_registry_3_default_command_serves(self, docker_host: dict[str, Any]) -> None:
        available, reason = registry3_available()
        if not available:
            pytest.skip(reason)
        config = json.loads(ssh(docker_host, self.HOST, "docker pull -q registry:3 >/dev/null "
                                "&& docker image inspect --format '{{json .Config}}' "
                                "registry:3").stdout)
        assert config["Entrypoint"] == ["/bin/registry"]
        assert config["Cmd"] == ["serve", "/etc/distribution/config.yml"]
        assert list(config["ExposedPorts"]) == ["5000/tcp"]
        assert list(config["Volumes"]) == ["/var/lib/registry"]
        ssh(docker_host, self.HOST, "docker rm -f r3 >/dev/null 2>&1; "
            "docker run -d --name r3 -p 127.0.0.1:5000:5000 registry:3 >/dev/null")
        try:
            code = ssh(docker_host, self.HOST, "for i in $(seq 50); do "
                       "c=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/v2/);"
                       " [ \"$c\" = 200 ] && break; sleep 0.2; done; echo $c").stdout.strip()
            assert code == "200"
            # The data lands in the image's volume path: a push proves storage works too.
            ssh(docker_host, self.HOST, "docker pull -q busybox >/dev/null && "
                "docker tag busybox 127.0.0.1:5000/probe:1 && "
                "docker push -q 127.0.0.1:5000/probe:1 >/dev/null")
            listed = ssh(docker_host, self.HOST,
                         "curl -sf http://127.0.0.1:5000/v2/probe/tags/list").stdout
            assert json.loads(listed) == {"name": "probe", "tags": ["1"]}
            mounts = json.loads(ssh(docker_host, self.HOST,
                                    "docker inspect --format '{{json .Mounts}}' r3").stdout)
            assert [m["Destination"] for m in mounts] == ["/var/lib/registry"]
            ca = ssh(docker_host, self.HOST, "docker cp r3:/etc/ssl/certs/ca-certificates.crt - "
                     "| tar -xO | grep -c 'BEGIN CERTIFICATE'").stdout.strip()
            assert int(ca) > 50
            # As in the official image: no trace exporter, so no "traces export" error,
            # which 3.0.0 would otherwise log every 5 s (hence the wait).
            assert "OTEL_TRACES_EXPORTER=none" in config["Env"]
            time.sleep(6)
            logs = ssh(docker_host, self.HOST, "docker logs r3 2>&1").stdout
            assert "version=3.0.0" in logs
            assert "traces export" not in logs
        finally:
            ssh(docker_host, self.HOST, "docker rm -f r3 >/dev/null", check=False)
