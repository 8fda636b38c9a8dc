"""backup.py, restore.py and the pull-through cache mode on real lab hosts (issue 17).

One server (lab-reg) with 20 then 25 images pushed by skopeo (OCI layouts; groups of
images share a base layer). Backups go to a folder on the control machine, checked there
with plain file tools and json; images are checked with skopeo before and after (digests).
Every apply is run twice and the second run must change nothing. Figures go to
bench/results/ (backup MB/s first and incremental, restore time, pushes and pulls
during a backup).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
from oci_images import CONFIG, LAYER, MANIFEST, _blob, _layer

import lab as lab_api
from lab.topology import HostSpec

DOMAIN, PORT = "registry.lab", 5000
ADDRESS = f"{DOMAIN}:{PORT}"
SERVER, SECOND, CACHE = "lab-reg", "lab-reg17b", "lab-cache17"
CLIENTS = ["lab-client1", "lab-client2"]
USER = "ci"
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
FIGURES: dict[str, Any] = {}

pytestmark = pytest.mark.e2e


def write_image(layout: Path, layers: list[bytes]) -> str:
    """An OCI layout with one image of the given (already gzip-compressed) layers."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    descriptors, diff_ids = [], []
    for payload in layers:
        layer, diff_id = _layer(payload)
        descriptors.append({"mediaType": LAYER, "digest": _blob(layout, layer),
                            "size": len(layer)})
        diff_ids.append(diff_id)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": CONFIG, "digest": _blob(layout, config),
                                      "size": len(config)},
                           "layers": descriptors}).encode()
    digest = _blob(layout, manifest)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST, "digest": digest, "size": len(manifest)}]}))
    return digest


class Site(harness.OwnStateSite):
    def __init__(self, directory: Path, servers: list[str], **data: Any) -> None:
        super().__init__(directory, servers=servers, clients=[], user=USER,
                         password="backup-password-17", times={}, data={
                             "registry_domain": DOMAIN, "registry_port": PORT,
                             "registry_verify_timeout": 30,
                             "registry_backup_dir": str(directory / "backups"), **data})
        self.server = servers[0]

    def skopeo(self, args: list[str], timeout: int = 300) -> Any:
        return harness.skopeo(args, hosts={DOMAIN: harness.host_ip(self.server)},
                              auth={ADDRESS: (USER, self.password)}, timeout=timeout)

    def push(self, layout: Path, ref: str) -> Any:
        return self.skopeo(["copy", "--quiet", "--dest-cert-dir", str(self.certs),
                            f"oci:{layout}", f"docker://{ADDRESS}/{ref}"], timeout=120)

    def digest(self, ref: str) -> str:
        proc = self.skopeo(["inspect", "--cert-dir", str(self.certs), f"docker://{ADDRESS}/{ref}"])
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["Digest"])

    def pull(self, ref: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            proc = self.skopeo(["copy", "--quiet", "--src-cert-dir", str(self.certs),
                                f"docker://{ADDRESS}/{ref}", f"dir:{tmp}/i"])
        assert proc.returncode == 0, f"pull {ref}: {proc.stderr}"

    def twice(self, script: str = "deploy.py", *extra: str) -> harness.Run:
        start = time.monotonic()
        first = self.run(script, *extra).assert_ok()
        FIGURES.setdefault("runs", {})[f"{script} {' '.join(extra)}".strip()] = round(
            time.monotonic() - start, 1)
        self.run(script, *extra).assert_no_changes()
        return first

    def backup_root(self, server: str = SERVER) -> Path:
        return self.dir / "backups" / server

    def index(self) -> dict[str, Any]:
        return dict(json.loads((self.backup_root() / "index.json").read_text()))


def backup_blob_files(root: Path) -> set[str]:
    base = root / "docker/registry/v2/blobs/sha256"
    return {p.parent.name for p in base.glob("*/*/data")} if base.exists() else set()


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for name in (SERVER, *CLIENTS):
        lab_api.reset_host(name, docker=True)  # Docker in: its install is test_deploy's
    site = Site(tmp_path_factory.mktemp("backup"), [SERVER])
    yield site
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    (RESULTS / f"{stamp}-backup-restore.json").write_text(json.dumps(FIGURES, indent=1) + "\n")


@pytest.fixture(scope="module")
def images(site: Site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """25 layouts: 5 groups sharing a 4 MB base layer, each image with a 1 MB layer of its own."""
    root = tmp_path_factory.mktemp("layouts")
    bases = [os.urandom(4_000_000) for _ in range(5)]
    layouts = {}
    for i in range(25):
        layout = root / f"img{i}"
        write_image(layout, [bases[i % 5], os.urandom(1_000_000)])
        layouts[f"app{i % 7}/svc{i}:v{i % 3}"] = layout
    return layouts


def test_a_backup_is_incremental_and_indexed(site: Site, images: dict[str, Path]) -> None:
    site.twice()
    site.refresh_certs()
    refs = list(images)
    for ref in refs[:20]:
        assert site.push(images[ref], ref).returncode == 0
    first = site.twice("backup.py")
    assert "registry-kit: backup of" in first.stderr, first.describe()
    index = site.index()
    files_after_first = backup_blob_files(site.backup_root())
    assert index["tag_count"] == 20 and index["this_backup"]["blobs_copied"] == 20 * 3 + 5
    assert len(files_after_first) == 65
    for ref in refs[:20]:
        repo, tag = ref.split(":")
        assert index["repositories"][repo]["tags"][tag]["digest"] == site.digest(ref)
    FIGURES["backup_first"] = index["this_backup"]
    for ref in refs[20:]:
        assert site.push(images[ref], ref).returncode == 0
    site.twice("backup.py")
    index = site.index()
    new_files = backup_blob_files(site.backup_root()) - files_after_first
    # 5 new images: a layer, a config and a manifest each; their base layers were there.
    assert len(new_files) == 15 and index["this_backup"]["blobs_copied"] == 15, index
    assert index["tag_count"] == 25
    FIGURES["backup_incremental"] = index["this_backup"]
    # Two generations (each backup that found a change), the blobs shared between them.
    generations = sorted((site.backup_root() / "generations").iterdir())
    assert [g.name for g in generations] == sorted(index["generation"] for index in [
        json.loads((g / "index.json").read_text()) for g in generations]), generations
    assert len(generations) == 2 and generations[-1].name == index["generation"]


def test_b_verify_reports_a_corrupted_blob(site: Site) -> None:
    # Read-only: reported, and counted as no change.
    run = site.run("backup.py", "--data", "registry_backup_verify=True").assert_no_changes()
    assert "verify: all 80 blobs" in run.stderr, run.describe()
    # Corrupt one blob in a copy of the backup (the original stays good for the restore).
    copy = site.dir / "corrupt"
    os.system(f"cp -a {site.dir / 'backups'} {copy}")
    victim = sorted((copy / SERVER / "docker/registry/v2/blobs/sha256").glob("*/*/data"))[3]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    run = site.run("backup.py", "--data", "registry_backup_verify=True", "--data",
                   f"registry_backup_dir={copy}")
    assert run.returncode != 0
    assert f"MISMATCH sha256:{victim.parent.name}" in run.stderr, run.describe()
    assert hashlib.sha256(bytes(data)).hexdigest() in run.stderr
    assert "1 mismatched, 0 missing, 79 good" in run.stderr


def test_c_purge_then_restore_keeps_every_digest(site: Site, images: dict[str, Path]) -> None:
    before = {ref: site.digest(ref) for ref in images}
    site.run("teardown.py", "--data", "registry_purge_data=True").assert_ok()
    assert harness.ssh(SERVER, "test -e /var/lib/registry-kit/data", check=False).returncode != 0
    start = time.monotonic()
    run = site.run("restore.py").assert_ok()
    FIGURES["restore_after_purge_s"] = round(time.monotonic() - start, 1)
    assert "registry-kit: restored" in run.stderr, run.describe()
    site.run("restore.py").assert_no_changes()
    assert {ref: site.digest(ref) for ref in images} == before
    for ref in images:
        site.pull(ref)


def test_d_restore_onto_a_second_fresh_server(site: Site, images: dict[str, Path],
                                              extra_host: Any) -> None:
    extra_host(HostSpec(SECOND, "bookworm-docker", aliases=("registry17b.lab",)))
    (site.dir / "second").mkdir()
    other = Site(site.dir / "second", [SECOND], registry_backup_dir=str(site.dir / "backups"),
                 registry_restore_from=str(site.backup_root()))
    other.state_dir = site.state_dir  # the same CA, so certs/ca.crt stays valid
    other.data["registry_state_dir"] = str(site.state_dir)
    other.write()
    other.certs = site.certs
    start = time.monotonic()
    other.run("restore.py").assert_ok()
    FIGURES["restore_fresh_server_s"] = round(time.monotonic() - start, 1)
    other.run("restore.py").assert_no_changes()
    for ref in images:
        assert other.digest(ref) == site.digest(ref)
        other.pull(ref)


def test_e_no_window_pushes_and_pulls_go_on(site: Site, images: dict[str, Path],
                                            tmp_path: Path) -> None:
    """A push loop and a pull loop run through a backup: none fails, and every tag pushed
    before the backup started is in its index and restores with its digest."""
    pushes: list[tuple[float, float, int, str, str]] = []
    pulls: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def push_loop() -> None:
        i = 0
        while not stop.is_set():
            layout = tmp_path / f"loop{i}"
            write_image(layout, [os.urandom(200_000)])
            started = time.time()
            proc = site.push(layout, f"loop/img:{i}")
            pushes.append((started, time.time(), proc.returncode, proc.stderr.strip(),
                           f"loop/img:{i}"))
            i += 1

    def pull_loop() -> None:
        refs = list(images)
        i = 0
        while not stop.is_set():
            ref = refs[i % len(refs)]
            started = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                proc = site.skopeo(["copy", "--quiet", "--src-cert-dir", str(site.certs),
                                    f"docker://{ADDRESS}/{ref}", f"dir:{tmp}/i"])
            pulls.append((started, time.time(), proc.returncode, proc.stderr.strip()))
            i += 1

    # An 80 MB image the backup lacks: its first pass lasts seconds, so the loops overlap
    # every pass (the backups before copied everything else).
    big = tmp_path / "big"
    write_image(big, [os.urandom(80_000_000)])
    assert site.push(big, "big/one:1").returncode == 0
    threads = [threading.Thread(target=push_loop), threading.Thread(target=pull_loop)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(5)
        site.run("backup.py").assert_ok()
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    this_backup = site.index()["this_backup"]
    started, ended = this_backup["started"], this_backup["started"] + this_backup["seconds"]
    during = [r for r in pushes if r[1] > started and r[0] < ended]
    pulls_during = [r for r in pulls if r[1] > started and r[0] < ended]
    # One of each overlapping the backup is the proof (a read-only window would fail it,
    # checked next); more depends on how busy the machine is (a 200 kB push took 1-8 s).
    assert len(during) >= 1 and len(pulls_during) >= 1, (pushes, pulls, this_backup)
    assert [r for r in pushes if r[2] != 0] == [], "a push failed during the backup"
    assert [r for r in pulls if r[2] != 0] == [], "a pull failed during the backup"
    # Every tag pushed before the backup started is in its index with its digest.
    before = {ref: site.digest(ref) for ref in [*images, "big/one:1"]}
    before.update({r[4]: site.digest(r[4]) for r in pushes if r[1] < started})
    index = site.index()
    listed = {f"{repo}:{tag}": entry["digest"]
              for repo, body in index["repositories"].items()
              for tag, entry in body["tags"].items()}
    assert {ref: listed.get(ref) for ref in before} == before
    FIGURES["backup_under_load"] = {
        "backup_seconds": this_backup["seconds"], "pushes": len(pushes),
        "pushes_during_backup": len(during), "pulls": len(pulls),
        "pulls_during_backup": len(pulls_during),
        "blob_bytes_copied": this_backup["blob_bytes_copied"],
        "failed_pushes": 0, "failed_pulls": 0,
        "blobs_copied_after_tree": this_backup["blobs_copied_after_tree"],
        "links_reread": this_backup["links_reread"],
        "tags_left_out": len(index["tags_left_out"])}
    # That backup restores: purge, restore, every one of those tags has its digest.
    site.run("teardown.py", "--data", "registry_purge_data=True").assert_ok()
    site.run("restore.py").assert_ok()
    site.run("restore.py").assert_no_changes()
    assert {ref: site.digest(ref) for ref in before} == before
    for ref in [r for r in before if r.startswith("loop/")][:3]:
        site.pull(ref)


def _need_registry3(lab: dict[str, Any]) -> None:
    """A cache runs registry 3 (2.8 is refused: it does not start while its remote is
    down, registry_kit.model.pull_through)."""
    from lab.images import registry3_available
    available, reason = registry3_available()
    if not available or not lab["upstream"].get("registry3", {}).get("available"):
        pytest.skip(reason)


# Known only to the cache host's /etc/hosts: not to the lab's DNS, nor inside a container.
REMOTE_NAME = "upstream25.hosts-only"


def _cache_ready(client: str, timeout: float = 30) -> float:
    """Seconds until the cache answers /v2/ (401: it has users) to a client, by name."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        code = harness.ssh(client, "curl -s -o /dev/null -w '%{http_code}' --max-time 3 "
                                   f"--cacert /etc/docker/certs.d/cache.lab:{PORT}/ca.crt "
                                   f"https://cache.lab:{PORT}/v2/", check=False).stdout
        if code.strip() == "401":
            return round(time.monotonic() - start, 1)
        time.sleep(0.3)
    raise AssertionError(f"the cache did not answer within {timeout} s")


def _serves_with_upstream_down(upstream: dict[str, Any], image: str) -> float:
    """With the upstream stopped the cache serves what it holds, restarted included (no
    start-up request to the remote, no restart loop); with the upstream back, an image it
    never had pulls through. Returns the seconds the restarted cache took to answer."""
    os.system(f"docker stop {upstream['container']} >/dev/null")
    try:
        harness.ssh(CLIENTS[1], f"docker rmi {image} >/dev/null && docker pull {image}")
        # Restarted with the upstream down: it starts (no start-up request to the remote)
        # and serves what it holds, without a restart loop.
        harness.ssh(CACHE, "docker restart registry >/dev/null")
        ready_s = _cache_ready(CLIENTS[0])
        harness.ssh(CLIENTS[0], f"docker rmi {image} >/dev/null && docker pull {image}")
        state = harness.ssh(CACHE, "docker inspect --format "
                                   "'{{.State.Status}} {{.RestartCount}}' registry").stdout.split()
        assert state == ["running", "0"], state
    finally:
        os.system(f"docker start {upstream['container']} >/dev/null")
    # The upstream back: an image the cache never had pulls through it.
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    harness.ssh(CLIENTS[0], "docker rmi cache.lab:5000/library/registry:broken >/dev/null "
                            "2>&1; docker pull cache.lab:5000/library/registry:broken")
    logs = os.popen(f"docker logs --since {since} {upstream['container']} 2>&1").read()
    assert [line for line in logs.splitlines() if "/v2/library/registry/manifests/" in line
            and "response completed" in line], "the new image did not come from upstream"
    return ready_s


def test_f_pull_through_cache(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
                              extra_host: Any) -> None:
    """A registry 3 cache of the lab's upstream, named only in the cache host's /etc/hosts
    (issue 25: the container gets it as --add-host); pulled through by two clients; pushes
    refused; cached images pull with the upstream stopped, the cache restarted included;
    with the upstream back new images pull through and a rerun changes nothing."""
    _need_registry3(lab)
    extra_host(HostSpec(CACHE, "bookworm-docker", aliases=("cache.lab",)))
    directory = tmp_path_factory.mktemp("cache")
    upstream = lab["upstream"]
    # In place, not by rename (sed -i): Docker bind-mounts the lab host's /etc/hosts.
    harness.ssh(CACHE, f"grep -v ' {REMOTE_NAME}$' /etc/hosts > /tmp/hosts; "
                       f"echo '{upstream['ip']} {REMOTE_NAME}' >> /tmp/hosts && "
                       "cat /tmp/hosts > /etc/hosts && rm /tmp/hosts")
    remote = f"http://{REMOTE_NAME}:5000"
    site = harness.OwnStateSite(
        directory, servers=[CACHE], clients=CLIENTS, user=USER, password="cache-pass-17x",
        times={}, data={"registry_domain": "cache.lab", "registry_port": PORT,
                        "registry_mode": "pull-through-cache", "registry_image": "registry:3",
                        "registry_proxy_remoteurl": remote,
                        "registry_client_login_user": USER,
                        "registry_client_hosts_entries": {"cache.lab": harness.host_ip(CACHE)}})
    site.run().assert_ok()
    site.run().assert_no_changes()
    image = "cache.lab:5000/library/busybox:latest"
    config = harness.ssh(CACHE, "cat /etc/registry-kit/config.yml").stdout
    assert f"remoteurl: {remote}" in config and "no-credential-helper" in config, config
    extra_hosts = harness.ssh(CACHE, "docker inspect --format '{{json .HostConfig.ExtraHosts}}' "
                                     "registry").stdout
    assert json.loads(extra_hosts) == [f"{REMOTE_NAME}:{upstream['ip']}"]

    def upstream_blob_gets() -> int:
        logs = os.popen(f"docker logs {upstream['container']} 2>&1").read()
        return sum(1 for line in logs.splitlines()
                   if "library/busybox/blobs/sha256:" in line and "GET" in line
                   and "response completed" in line)

    before = upstream_blob_gets()
    harness.ssh(CLIENTS[0], f"docker rmi {image} >/dev/null 2>&1; docker pull {image}")
    after_first = upstream_blob_gets()
    assert after_first > before, "the first pull should fetch from upstream"
    stored = harness.ssh(CACHE, "find /var/lib/registry-kit/data/docker/registry/v2/blobs "
                                "-name data | wc -l").stdout.strip()
    assert int(stored) >= 2
    harness.ssh(CLIENTS[1], f"docker rmi {image} >/dev/null 2>&1; docker pull {image}")
    assert upstream_blob_gets() == after_first, "the second client's pull came from upstream"
    pushed = harness.ssh(CLIENTS[0], f"docker tag {image} cache.lab:5000/mine/bb:1 && "
                                     "docker push cache.lab:5000/mine/bb:1", check=False)
    assert pushed.returncode != 0
    FIGURES["cache_push_refusal"] = (pushed.stdout + pushed.stderr).strip()[-200:]
    start = time.monotonic()
    ready_s = _serves_with_upstream_down(upstream, image)
    down_s = round(time.monotonic() - start, 1)
    # Resolved again: the same address, nothing changes.
    start = time.monotonic()
    site.run().assert_no_changes()
    FIGURES["cache"] = {"upstream_blob_gets_first_pull": after_first - before,
                        "upstream_blob_gets_second_pull": 0, "blobs_in_cache": int(stored),
                        "ready_after_restart_with_upstream_down_s": ready_s,
                        "upstream_down_and_back_s": down_s,
                        "rerun_s": round(time.monotonic() - start, 1)}


class AnonymousCache(harness.OwnStateSite):
    """A cache without users (registry_anonymous_acknowledged: nobody can push to a cache)
    whose clients use it as their Docker Hub mirror, not by name."""

    def write(self) -> None:
        mirror = {"docker_registry_mirrors": [f"https://cache.lab:{PORT}"]}
        harness.write_inventory(self.inventory, servers=self.servers, clients=self.clients,
                                data={**self.data, "registry_users": []},
                                per_host={name: mirror for name in self.clients})


def test_f2_cache_as_a_docker_hub_mirror(lab: dict[str, Any], extra_host: Any,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """dockerd consults registry-mirrors for Docker Hub names only: `busybox` (that is
    docker.io/library/busybox; the lab upstream stands in for Docker Hub) pulled on a
    client whose only mirror is the cache comes through the cache, never straight from
    the upstream, and still pulls with the upstream stopped."""
    _need_registry3(lab)
    extra_host(HostSpec(CACHE, "bookworm-docker", aliases=("cache.lab",)))
    upstream = lab["upstream"]
    client = CLIENTS[0]
    client_ip = harness.host_ip(client)
    site = AnonymousCache(
        tmp_path_factory.mktemp("mirror"), servers=[CACHE], clients=[client], user=USER,
        password="unused-17", times={},
        data={"registry_domain": "cache.lab", "registry_port": PORT,
              "registry_mode": "pull-through-cache", "registry_anonymous_acknowledged": True,
              "registry_image": "registry:3",
              "registry_proxy_remoteurl": f"http://{upstream['ip']}:5000",
              "registry_client_hosts_entries": {"cache.lab": harness.host_ip(CACHE)}})
    site.run().assert_ok()
    site.run().assert_no_changes()
    mirrors = harness.ssh(client, "docker info --format '{{json .RegistryConfig.Mirrors}}'")
    assert [m.rstrip("/") for m in json.loads(mirrors.stdout)] == [f"https://cache.lab:{PORT}"]
    harness.ssh(client, "docker rmi -f busybox:latest cache.lab:5000/library/busybox:latest "
                        ">/dev/null 2>&1; true")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    harness.ssh(client, "docker pull busybox:latest")
    logs = os.popen(f"docker logs --since {since} {upstream['container']} 2>&1").read()
    fetched = [line for line in logs.splitlines() if "/v2/library/busybox/" in line
               and "response completed" in line]
    assert fetched, "the cache did not fetch busybox from the upstream"
    assert not [line for line in fetched if re.search(f'remoteaddr="?{re.escape(client_ip)}:',
                                                      line)], \
        "the client went to the upstream itself"
    # The proxy stores what it served in the background (seen: a moment after the pull;
    # the client may hold busybox's layer from an earlier test, then only the manifest and
    # config come through), so wait up to 10 s for the repository and a blob.
    stored = harness.ssh(CACHE, "d=/var/lib/registry-kit/data/docker/registry/v2; "
                                "for i in $(seq 20); do n=$(find $d/blobs -name data | wc -l); "
                                "[ $n -ge 1 ] && [ -d $d/repositories/library/busybox ] && "
                                "break; sleep 0.5; done; echo $n").stdout
    assert int(stored) >= 1
    os.system(f"docker stop {upstream['container']} >/dev/null")
    try:
        harness.ssh(client, "docker rmi busybox:latest >/dev/null && docker pull busybox:latest")
    finally:
        os.system(f"docker start {upstream['container']} >/dev/null")
    FIGURES["cache_as_mirror"] = {"upstream_requests_from_cache": len(fetched),
                                  "upstream_requests_from_client": 0,
                                  "blobs_cached": int(stored)}


@pytest.mark.parametrize(("data", "expected"), [
    ({"registry_backup_dir": "backups"}, "setting registry_backup_dir='backups' is not allowed"),
    ({"registry_restore_from": "/nonexistent/backup"},
     "setting registry_restore_from='/nonexistent/backup' is not allowed: no backup there"),
    ({"registry_mode": "pull-through-cache", "registry_proxy_remoteurl": "upstream.lab:5000"},
     "setting registry_proxy_remoteurl='upstream.lab:5000' is not allowed"),
    # Issue 25: 2.8 does not start while its remote is down; a name the server does not
    # resolve would not resolve inside the container either.
    ({"registry_mode": "pull-through-cache",
      "registry_proxy_remoteurl": "http://upstream.lab:5000"},
     "setting registry_image='registry:2' is not allowed: registry 2.8 as a pull-through "
     "cache does not start while its remote is down"),
    ({"registry_mode": "pull-through-cache", "registry_image": "registry:3",
      "registry_proxy_remoteurl": "http://nowhere.invalid:5000"},
     "setting registry_proxy_remoteurl='http://nowhere.invalid:5000' is not allowed: "
     "nowhere.invalid does not resolve on lab-reg (getent ahosts)"),
])
def test_g_bad_input_one_line_nothing_touched(site: Site, data: dict[str, Any],
                                              expected: str) -> None:
    script = "restore.py" if "registry_restore_from" in data else (
        "deploy.py" if "registry_mode" in data else "backup.py")
    started = harness.started_at(SERVER)
    listing = harness.ssh(SERVER, "ls -la --time-style=full-iso /etc/registry-kit "
                                  "/var/lib/registry-kit/data").stdout
    extra = [arg for key, value in data.items() for arg in ("--data", f"{key}={value}")]
    run = site.run(script, *extra)
    assert run.returncode != 0
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith(f"{SERVER}: {expected}"), run.stderr
    assert not run.results or not run.changed
    assert harness.started_at(SERVER) == started
    assert harness.ssh(SERVER, "ls -la --time-style=full-iso /etc/registry-kit "
                               "/var/lib/registry-kit/data").stdout == listing


# --- issue 22: a broken-into server gains nothing through backup.py ---

WRAPPERS = "/usr/local/sbin"  # first in the PATH of the kit's SSH commands on the server
HOSTILE_TAR = r"""#!/bin/sh
# The server's tar, broken into: `tar -c` sends /root/hostile/<mode>[.<pass>].tar.
mode=$(cat /root/hostile/mode)
case " $* " in *' -cf '*) ;; *) exec /usr/bin/tar "$@";; esac
case "$mode" in
  endless) exec cat /dev/zero;;
  endless-tree) case " $* " in *' --no-recursion '*) exec cat /dev/zero;; esac
                exec /usr/bin/tar "$@";;
  bogus) exec /usr/bin/tar "$@";;
esac
cat > /dev/null  # the name list: read, so the find feeding it ends well
n=$(cat /root/hostile/pass 2>/dev/null || echo 0); echo $((n + 1)) > /root/hostile/pass
if [ -e "/root/hostile/$mode.$n.tar" ]; then cat "/root/hostile/$mode.$n.tar"
else cat "/root/hostile/$mode.tar"; fi
"""
HOSTILE_FIND = r"""#!/bin/sh
# The server's find, broken into: its blob listing names a digest that is a path.
case "$(cat /root/hostile/mode) $*" in
  bogus*-printf*) echo "5 ./../../../../../../../../../../root/.ssh/authorized_keys/xx"
                  echo "7 ./aa/$(printf 'a%.0s' $(seq 61))/.."; exit 0;;
esac
exec /usr/bin/find "$@"
"""


def _hostile_tars(canary: Path) -> dict[str, bytes]:
    """The members a broken-into server sends: built here with tarfile, any type and name."""
    import io
    import tarfile

    def tar(*members: tuple[str, bytes, bytes, str]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as out:
            for name, kind, data, link in members:
                info = tarfile.TarInfo(name)
                info.type, info.size, info.linkname = kind, len(data), link
                if kind == tarfile.CHRTYPE:
                    info.devmajor, info.devminor = 1, 3
                out.addfile(info, io.BytesIO(data) if data else None)
        return buffer.getvalue()

    key = b"ssh-ed25519 AAAAC3Nza attacker\n"
    blob = "blobs/sha256/" + "ab" + "/" + "ab" * 32 + "/data"
    return {
        # Pass 0 plants blobs/sha256/zz -> the canary; pass 1 writes a file through it.
        "symlink.0.tar": tar(("blobs/sha256/zz", tarfile.SYMTYPE, b"", str(canary))),
        "symlink.1.tar": tar(("blobs/sha256/zz/authorized_keys", tarfile.REGTYPE, key, "")),
        "dotdot.tar": tar((f"../../../../../..{canary}/escaped", tarfile.REGTYPE, key, "")),
        "device.tar": tar((blob, tarfile.CHRTYPE, b"", "")),
    }


def _state_of(folder: Path) -> dict[str, str]:
    """path -> sha256 (or `-> target` for a symlink) of everything under folder."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_h_a_broken_into_server_gains_nothing(site: Site, images: dict[str, Path],
                                              tmp_path: Path) -> None:
    """lab-reg's tar and find replaced (for the kit's SSH commands) by scripts sending a
    symlink then a file through it, a `../` name, a device node, bogus digests in the
    blob listing, and endless streams: each backup run fails with one line naming the
    server and what it sent; nothing changes on the control machine outside the backup
    folder (a canary folder the symlink points at stays empty); the backup's generations
    stay as they were; once the server is clean again the next backup works."""
    canary = tmp_path / "canary-ssh"
    canary.mkdir()
    small = tmp_path / "small"
    write_image(small, [os.urandom(50_000)])
    assert site.push(small, "hostile/new:1").returncode == 0  # a blob for pass 1 to ask for
    root = site.backup_root()
    generations_before = _state_of(root / "generations")
    index_before = (root / "index.json").read_bytes()
    blobs_before = backup_blob_files(root)
    dot_ssh_before = _state_of(Path("/root/.ssh")) if Path("/root/.ssh").exists() else {}
    import base64
    tars = _hostile_tars(canary)
    setup = "mkdir -p /root/hostile && " + " && ".join(
        f"echo {base64.b64encode(data).decode()} | base64 -d > /root/hostile/{name}"
        for name, data in tars.items())
    harness.ssh(SERVER, setup)
    harness.ssh(SERVER, f"cat > {WRAPPERS}/tar && chmod 755 {WRAPPERS}/tar", stdin=HOSTILE_TAR)
    harness.ssh(SERVER, f"cat > {WRAPPERS}/find && chmod 755 {WRAPPERS}/find",
                stdin=HOSTILE_FIND)
    cases = [
        ("symlink", [], "backup failed: lab-reg: sent symlink 'blobs/sha256/zz', which is not "
                        "a blob asked for"),
        ("symlink", [], "backup failed: lab-reg: sent file 'blobs/sha256/zz/authorized_keys', "
                        "which is not a blob asked for"),
        ("dotdot", [], "backup failed: lab-reg: sent file '../../../../../.."),
        ("device", [], "backup failed: lab-reg: sent device 'blobs/sha256/ab/"),
        ("bogus", [], "lab-reg: blob listing line '5 ./../../../../../../../../../../root/.ssh"),
        ("endless", [], "backup failed: lab-reg: sent more than 1048576 bytes after the end "
                        "of its tar; stopped reading"),
        ("endless-tree", ["--data", "registry_backup_tree_max_bytes=1048576"],
         "backup failed: lab-reg: repositories tar is larger than 1048576 bytes"),
    ]
    seconds = {}
    try:
        for mode, extra, expected in cases:
            harness.ssh(SERVER, f"echo {mode} > /root/hostile/mode")
            start = time.monotonic()
            run = site.run("backup.py", *extra)
            seconds[mode] = round(time.monotonic() - start, 1)
            assert run.returncode != 0, run.describe()
            errors = [line for line in run.stderr.splitlines()
                      if "backup failed" in line or "blob listing line" in line]
            assert len(errors) == 1 and expected in errors[0], (mode, run.describe())
            assert list(canary.iterdir()) == [], mode
    finally:
        harness.ssh(SERVER, f"rm -rf {WRAPPERS}/tar {WRAPPERS}/find /root/hostile")
    FIGURES["hostile_server_runs_s"] = seconds
    # The control machine: nothing outside the backup folder, no link inside it.
    assert list(canary.iterdir()) == []
    assert (_state_of(Path("/root/.ssh")) if Path("/root/.ssh").exists() else {}) == \
        dot_ssh_before
    assert not [p for p in root.rglob("*") if p.is_symlink()]
    assert not [p for p in root.rglob("*") if not (p.is_file() or p.is_dir())]
    # Earlier generations as they were (the endless-tree run copied the new blobs only).
    assert _state_of(root / "generations") == generations_before
    assert (root / "index.json").read_bytes() == index_before
    assert blobs_before <= backup_blob_files(root)
    # Clean again: the next backup is a new generation holding the new tag.
    site.twice("backup.py")
    assert "hostile/new" in site.index()["repositories"]


class BackupHostSite(Site):
    """The same server, its backups on another inventory host (a group of its own, which
    deploy.py and backup.py leave alone)."""

    def __init__(self, directory: Path, backup_host: str, **data: Any) -> None:
        self.backup_host = backup_host
        super().__init__(directory, [SERVER], registry_backup_host=backup_host, **data)

    def write(self) -> None:
        super().write()
        entry = harness.host_entry(self.backup_host, {})
        with self.inventory.open("a") as inventory:
            inventory.write(f"registry_backup_hosts = {[entry]!r}\n")


def test_i_a_backup_host_other_than_the_control_machine(site: Site, images: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """Backups on lab-client1 (through the control machine, no key between the hosts);
    a restore refuses a generation whose tree lost a tag its index names, and a broken-into
    backup host sending a symlink during a restore writes nothing on the server."""
    store, folder = CLIENTS[0], "/srv/registry-backups"
    other = BackupHostSite(tmp_path, store, registry_backup_dir=folder)
    other.state_dir = site.state_dir  # the same CA and secrets: the same deployed server
    other.data["registry_state_dir"] = str(site.state_dir)
    other.password = site.password
    other.write()
    harness.ssh(store, f"rm -rf {folder}")
    start = time.monotonic()
    other.twice("backup.py")
    FIGURES["backup_to_backup_host_s"] = round(time.monotonic() - start, 1)
    root = f"{folder}/{SERVER}"
    on_store = harness.ssh(store, f"cd {root}/docker/registry/v2/blobs/sha256 && "
                                  f"find . -name data -type f | wc -l; find {root} ! -type f "
                                  "! -type d | wc -l").stdout.split()
    on_server = harness.ssh(SERVER, "find /var/lib/registry-kit/data/docker/registry/v2/blobs "
                                    "-name data -type f | wc -l").stdout.strip()
    assert on_store == [on_server, "0"], on_store
    index = json.loads(harness.ssh(store, f"cat {root}/index.json").stdout)
    assert index["tag_count"] == site.index()["tag_count"] and index["generation"]
    newest = f"{root}/generations/{index['generation']}"
    # A tree that lost a tag its index names: refused in one line, the server untouched.
    victim = next(iter(index["repositories"]))
    tag = next(iter(index["repositories"][victim]["tags"]))
    link = f"{newest}/repositories/{victim}/_manifests/tags/{tag}/current/link"
    saved = harness.ssh(store, f"cat {link} && rm {link}").stdout
    started = harness.started_at(SERVER)
    run = other.run("restore.py")
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"{SERVER}: setting registry_restore_from='{root}' is not allowed: the repositories "
        f"tree in {newest} does not match"), run.describe()
    assert harness.started_at(SERVER) == started
    harness.ssh(store, f"printf %s {saved} > {link}")
    # The backup host broken into: its tar sends a symlink into the server's /root/.ssh.
    harness.ssh(store, f"cat > {WRAPPERS}/tar && chmod 755 {WRAPPERS}/tar && mkdir -p "
                       "/root/hostile && echo symlink > /root/hostile/mode", stdin=HOSTILE_TAR)
    import base64
    payload = _hostile_tars(Path("/root/.ssh"))["symlink.0.tar"]
    harness.ssh(store, f"echo {base64.b64encode(payload).decode()} | base64 -d > "
                       "/root/hostile/symlink.tar")
    ssh_before = harness.ssh(SERVER, "ls -la --time-style=full-iso /root/.ssh; "
                                     "sha256sum /root/.ssh/*").stdout
    later = tmp_path / "later"
    write_image(later, [os.urandom(30_000)])
    assert site.push(later, "after/backup:1").returncode == 0  # the trees now differ
    try:
        run = other.run("restore.py")
    finally:
        harness.ssh(store, f"rm -rf {WRAPPERS}/tar /root/hostile")
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if "restore failed" in line]
    assert len(errors) == 1, run.describe()
    assert f"restore failed: {store}: sent symlink 'blobs/sha256/zz' in the repositories " \
        "tree" in errors[0], run.describe()
    assert harness.ssh(SERVER, "ls -la --time-style=full-iso /root/.ssh; "
                               "sha256sum /root/.ssh/*").stdout == ssh_before
    assert harness.ssh(SERVER, "find /var/lib/registry-kit/data ! -type f ! -type d | "
                               "wc -l").stdout.strip() == "0"
    assert site.digest("after/backup:1")  # the server's tree was not touched
    # Clean again: the restore from the backup host puts its newest generation back.
    other.run("restore.py").assert_ok()
    other.run("restore.py").assert_no_changes()
    assert site.skopeo(["inspect", "--cert-dir", str(site.certs),
                        f"docker://{ADDRESS}/after/backup:1"]).returncode != 0
    for ref in list(images)[:3]:
        site.pull(ref)


def test_j_backup_and_restore_of_a_registry_3_server(lab: dict[str, Any], site: Site,
                                                      tmp_path: Path) -> None:
    """lab-reg upgraded to the genuine registry 3.0.0: an image pushed under 3 is backed
    up (a new generation), lost on the server (its repository and blobs removed), and
    restored with its digest."""
    from lab.images import registry3_available
    available, reason = registry3_available()
    if not available or not lab["upstream"].get("registry3", {}).get("available"):
        pytest.skip(reason)
    site.data["registry_image"] = "registry:3"
    site.write()
    site.twice()
    assert "registry:3" in harness.ssh(SERVER, "docker inspect --format '{{.Config.Image}}' "
                                               "registry").stdout
    layout = tmp_path / "three"
    write_image(layout, [os.urandom(100_000)])
    assert site.push(layout, "three/only:1").returncode == 0
    digest = site.digest("three/only:1")
    site.twice("backup.py")
    index = site.index()
    assert index["repositories"]["three/only"]["tags"]["1"]["digest"] == digest
    data = "/var/lib/registry-kit/data/docker/registry/v2"
    harness.ssh(SERVER, f"rm -rf {data}/repositories/three")
    layer = json.loads(harness.ssh(SERVER, f"cat {data}/blobs/sha256/{digest[7:9]}/"
                                           f"{digest[7:]}/data").stdout)["layers"][0]["digest"]
    # The manifest and its own layer lost too (the config may be shared, so it stays).
    harness.ssh(SERVER, f"rm -rf {data}/blobs/sha256/{layer[7:9]}/{layer[7:]} "
                        f"{data}/blobs/sha256/{digest[7:9]}/{digest[7:]}")
    start = time.monotonic()
    run = site.run("restore.py").assert_ok()
    FIGURES["registry3_restore_s"] = round(time.monotonic() - start, 1)
    assert "registry-kit: restored" in run.stderr, run.describe()
    site.run("restore.py").assert_no_changes()
    assert site.digest("three/only:1") == digest
    site.pull("three/only:1")
