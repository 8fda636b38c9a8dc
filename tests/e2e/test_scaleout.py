"""Scale-out in the lab: two registry replicas behind haproxy on shared S3 (a real
single-node Ceph RGW, lab/ceph.py), a redis blob-descriptor cache, one client.

Order matters (one scenario, step by step): a missing bucket and wrong keys stop the run
before any host is touched; the first deploy, then a rerun with zero changes; a push
through the load balancer's domain lands every blob in the bucket; pulls work with either
replica stopped; one blob upload moves between replicas; a rolling upgrade
(registry:2.8.3 -> registry:3, the genuine 3.0.0; -> registry:2.8.2 where the lab has no
3.x image) under a pull loop loses no pull; on 3.x a new push lands in the bucket and in
the redis cache; access rules and users from a directory (Debian's slapd on a host of its
own, registry_ldap) through the load balancer's token port; retention.py on the shared
bucket on 3.0.0 and, after the downgrade, on 2.8.3 (tests/e2e/retention_scenario.py).
(Throughput with one and two replicas is a benchmark: bench/scaleout.py.)
Everything is checked with curl, skopeo, s3cmd, radosgw-admin, redis-cli, socat,
ldapmodify, journalctl and docker on the hosts, never with the kit's own code. Figures go to
<lab state dir>/scaleout-figures.json.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import secrets
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import clientload
import harness
import ldap_directory
import pytest
import retention_scenario

import lab as lab_api
from lab import ceph
from lab import state as lab_state
from lab.images import registry3_available
from lab.topology import HostSpec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REP1, REP2, LB, CACHE, CLIENT = "lab-rep1", "lab-rep2", "lab-lb", "lab-cache", "lab-sclient"
SPECS = [HostSpec(REP1, "bookworm-docker", groups=("registry_servers",)),
         HostSpec(REP2, "bookworm-docker", groups=("registry_servers",)),
         HostSpec(LB, "bookworm", groups=("registry_lb",)),
         HostSpec(CACHE, "bookworm", groups=("registry_cache",)),
         HostSpec(CLIENT, "bookworm-docker", groups=("registry_clients",))]
DOMAIN = "registry.scale.lab"
PORT = 5000
ADDRESS = f"{DOMAIN}:{PORT}"
USER = "scale"
IMAGE = f"{ADDRESS}/scale/random:1"
SOCKET = "/run/haproxy/admin.sock"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
KEEP_ENV = "REGISTRY_KIT_SCALE_KEEP"  # set: hosts and bucket stay after the run
LOOP_SECONDS = 240  # the loops' own bound; they are stopped as soon as the upgrade is done
BASE_IMAGE = "registry:2.8.3"
REGISTRY3, REGISTRY3_MISSING = registry3_available()
# The upgrade: 2.8.3 -> 3 (the redis section and S3 path style change with the major
# version); a drained replica may take 25 s to see its slow downloads finish.
UPGRADE_IMAGE = "registry:3" if REGISTRY3 else "registry:2.8.2"
UPGRADE = {"registry_image": UPGRADE_IMAGE, "registry_lb_drain_timeout": 60}
# registry_ldap behind the load balancer (test_access_rules_through_the_load_balancer):
# Debian's slapd on a host of its own (not lab-ldap: test_ldap's, which may run in this
# lane before), installed beside the first deploys, so its 30 to 60 s add no wall time.
DIRECTORY = "ldap.scale.lab"
DIRECTORY_HOST = HostSpec("lab-sldap", "bookworm", (DIRECTORY,))
# erin keeps team-a a valid groupOfNames (one member at least) while dana is out of it.
DIRECTORY_USERS = {"dana": "dana-scale-directory-pw-1", "erin": "erin-scale-directory-pw-1"}
DIRECTORY_GROUPS = {"team-a": ["dana", "erin"]}
SERVICE_PASSWORD = "svc-scale-bind-Secret-4711"
TOKEN_PORT = 5443  # registry_token_port's default: the load balancer's token frontend


@dataclass
class Scale:
    tmp: Path
    ceph: dict[str, Any]
    bucket: str
    password: str
    figures: dict[str, Any] = field(default_factory=dict)
    image: str = BASE_IMAGE  # what the replicas run (the upgrade moves it on)
    directory: ldap_directory.Directory | None = None  # slapd on DIRECTORY_HOST
    directory_up: concurrent.futures.Future[float] | None = None  # its install's seconds
    deployed: dict[str, Any] = field(default_factory=dict)  # the last deploy's overrides

    def inventory(self, name: str, **overrides: Any) -> Path:
        """A scenario inventory with the four groups; overrides apply to every host."""
        state = lab_state.load()
        data = {**harness.lab_site_data(),
                "registry_domain": DOMAIN, "registry_port": PORT,
                "registry_image": self.image,
                "registry_users": [{"name": USER, "password_file": str(self.tmp / "pw")}],
                "registry_client_login_user": USER,
                "registry_client_hosts_entries": {DOMAIN: harness.host_ip(LB)},
                "registry_storage": _storage(self),
                "registry_storage_redirect_disabled": True,
                "registry_lb_stats": "127.0.0.1:8404",
                **overrides}

        def entries(*names: str) -> list[Any]:
            return [harness.host_entry(n, {**data, "registry_internal_address":
                                           state["hosts"][n]["ip"]}) for n in names]

        path = self.tmp / f"{name}.py"
        path.write_text("# Written by tests/e2e/test_scaleout.py.\n"
                        f"registry_servers = {entries(REP1, REP2)!r}\n"
                        f"registry_lb = {entries(LB)!r}\n"
                        f"registry_cache = {entries(CACHE)!r}\n"
                        f"registry_clients = {entries(CLIENT)!r}\n")
        return path

    def skopeo(self, args: list[str], via: str = LB) -> subprocess.CompletedProcess[str]:
        return harness.skopeo(args, hosts={DOMAIN: harness.host_ip(via)},
                              auth={ADDRESS: (USER, self.password)})


def _random_image(layout: Path, size: int) -> None:
    """An OCI image layout with one layer of `size` random bytes (uncompressed: random
    data does not compress), for skopeo to push with `oci:DIR`."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("data")
        info.size = size
        tar.addfile(info, io.BytesIO(secrets.token_bytes(size)))
    layer = blob(buffer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [layer["digest"]]}}).encode(),
        "application/vnd.oci.image.config.v1+json")
    manifest = blob(json.dumps({"schemaVersion": 2, "config": config, "layers": [layer],
                                "mediaType": OCI_MANIFEST}).encode(), OCI_MANIFEST)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                   "manifests": [manifest]}))


def _s3cmd(command: str) -> str:
    return harness.ssh(ceph.CEPH_HOST, f"s3cmd {command}").stdout


@contextmanager
def scale_site(tmp: Path, extra: Sequence[HostSpec] = ()) -> Iterator[Scale]:
    """Ceph (reused when up), fresh kit hosts (and `extra` hosts, brought up with them) and a
    bucket of this run's own; the hosts and the bucket are removed afterwards
    (bench/scaleout.py uses it too)."""
    started = time.monotonic()
    info = ceph.ceph_up()
    # Fresh machines for the kit (Docker already in on the replicas and the client: its
    # install is test_deploy's; no haproxy or redis yet); lab-ceph is reused.
    for spec in [*SPECS, *extra]:
        lab_api.remove_host(spec.name)
    lab_api.up([*SPECS, *extra])
    bucket = f"scale-{secrets.token_hex(4)}"  # this run's blobs only
    _s3cmd(f"mb s3://{bucket}")
    password = f"scale-{secrets.token_hex(8)}"
    (tmp / "pw").write_text(password + "\n")
    (tmp / "pw").chmod(0o600)
    run = Scale(tmp=tmp, ceph=info, bucket=bucket, password=password)
    run.figures["ceph_up_seconds"] = info["seconds"]
    run.figures["ceph_cold_setup"] = info["cold"]
    run.figures["lab_ready_seconds"] = round(time.monotonic() - started, 1)
    yield run
    if os.environ.get(KEEP_ENV):
        return  # left running to look at; the next run starts from fresh hosts anyway
    _s3cmd(f"rb --recursive s3://{bucket}")
    # The Ceph host stays for the next run (python -m lab down removes it).
    for spec in [*SPECS, *extra]:
        lab_api.remove_host(spec.name)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    with scale_site(tmp_path_factory.mktemp("scale"), [DIRECTORY_HOST]) as run, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        # slapd is installed while the first tests deploy (the access-rules test waits for
        # it): LDAPS with a CA made here, users and groups from LDIF.
        run.directory = ldap_directory.Directory(
            DIRECTORY_HOST.name, DIRECTORY, admin_password="scale-directory-admin-1",
            service_password=SERVICE_PASSWORD, users=dict(DIRECTORY_USERS),
            groups={group: list(members) for group, members in DIRECTORY_GROUPS.items()})
        material = ldap_directory.tls_material(DIRECTORY)
        run.directory.ca_pem = material[0]
        run.directory_up = pool.submit(ldap_directory.install, run.directory, material)
        yield run
        out = lab_api.get_config().state_dir / "scaleout-figures.json"
        out.write_text(json.dumps(run.figures, indent=2) + "\n")
        print(f"\nscale-out figures ({out}):\n{json.dumps(run.figures, indent=2)}")


def _untouched() -> dict[str, str]:
    """What the kit would have installed or started first, on every kit host: Docker is
    already in on the replicas and the client (see scale_site), so its containers count."""
    probe = ("command -v haproxy socat redis-server; ls /etc/registry-kit "
             "/etc/haproxy /etc/redis 2>/dev/null; docker ps -aq 2>/dev/null; true")
    return {name: harness.ssh(name, probe).stdout for name in (REP1, REP2, LB, CACHE, CLIENT)}


def test_missing_bucket_or_wrong_keys_stop_before_any_change(scale: Scale) -> None:
    before = _untouched()
    assert all(text == "" for text in before.values()), before
    missing = harness.run_kit(scale.inventory("no-bucket", registry_storage={
        **_storage(scale), "bucket": "no-such-bucket"}))
    assert missing.returncode != 0
    assert (f"{REP1}: setting registry_storage.bucket='no-such-bucket' is not allowed: bucket "
            f"'no-such-bucket' does not exist at {scale.ceph['endpoint']}/no-such-bucket"
            in missing.stderr), missing.stderr[-2000:]
    wrong = scale.tmp / "wrong-secret"
    wrong.write_text("not-the-secret\n")
    refused = harness.run_kit(scale.inventory("wrong-key", registry_storage={
        **_storage(scale), "secretkey_file": str(wrong)}))
    assert refused.returncode != 0
    assert (f"{REP1}: setting registry_storage.bucket='{scale.bucket}' is not allowed: the "
            "access key or secret key is not accepted" in refused.stderr), refused.stderr[-2000:]
    assert "not-the-secret" not in refused.stderr + refused.stdout
    assert _untouched() == before  # no replica started, nothing installed anywhere


def _storage(scale: Scale) -> dict[str, Any]:
    return {"driver": "s3", "bucket": scale.bucket, "region": scale.ceph["region"],
            "regionendpoint": scale.ceph["endpoint"],
            "accesskey_file": scale.ceph["access_key_file"],
            "secretkey_file": scale.ceph["secret_key_file"]}


def _haproxy(command: str) -> str:
    return harness.ssh(LB, f"echo {command!r} | socat stdio {SOCKET}").stdout


def _states() -> dict[str, str]:
    """haproxy's view: server name -> status (UP, DOWN, MAINT, ...)."""
    rows = [line.split(",") for line in _haproxy("show stat").splitlines()]
    return {row[1]: row[17] for row in rows if len(row) > 17 and row[0] == "registry"
            and row[1] in (REP1, REP2)}


def _wait_states(wanted: dict[str, str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _states() == wanted:
            return
        time.sleep(0.5)
    raise AssertionError(f"haproxy states {_states()} != {wanted}")


def test_deploy_then_rerun_changes_nothing(scale: Scale) -> None:
    started = time.monotonic()
    first = harness.run_kit(scale.inventory("deploy")).assert_ok()
    scale.figures["first_deploy_seconds"] = round(time.monotonic() - started, 1)
    assert first.changed
    started = time.monotonic()
    harness.run_kit(scale.inventory("deploy")).assert_no_changes()
    scale.figures["rerun_seconds"] = round(time.monotonic() - started, 1)

    # The load balancer: its domain answers like a registry; both replicas UP.
    lb_ip = harness.host_ip(LB)
    assert harness.curl_status(DOMAIN, lb_ip, PORT) == 401
    assert harness.curl_status(DOMAIN, lb_ip, PORT, user=USER, password=scale.password) == 200
    assert _states() == {REP1: "UP", REP2: "UP"}
    harness.ssh(LB, "haproxy -c -f /etc/haproxy/haproxy.cfg >/dev/null && "
                "systemctl is-active haproxy && curl -sf -o /dev/null http://127.0.0.1:8404/")
    # The cache: password required, bound to its lab address, allkeys-lru, config root:redis.
    cache_ip = harness.host_ip(CACHE)
    auth = "REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' /etc/redis/redis.conf)\""
    cli = f"redis-cli --no-auth-warning -h {cache_ip}"
    out = harness.ssh(CACHE, f"{cli} ping; {auth} {cli} config get maxmemory-policy; "
                      "ss -ltnH 'sport = :6379' | awk '{print $4}' | sort; "
                      "stat -c '%a %U %G' /etc/redis/redis.conf").stdout.split()
    assert out[0] == "NOAUTH" and out[out.index("maxmemory-policy") + 1] == "allkeys-lru"
    assert f"{cache_ip}:6379" in out and "0.0.0.0:6379" not in out
    assert out[-3:] == ["640", "root", "redis"]
    # The replicas share one http secret (compared by hash, never shown) and use redis.
    sums = {harness.ssh(name, "grep -m1 '^  secret:' /etc/registry-kit/config.yml | "
                        "sha256sum").stdout for name in (REP1, REP2)}
    assert len(sums) == 1
    config = harness.ssh(REP1, "grep -A2 -E '^  cache:|^redis:|^  redirect:' "
                         "/etc/registry-kit/config.yml").stdout
    assert "blobdescriptor: redis" in config and f"addr: {cache_ip}:6379" in config
    assert "disable: true" in config


def test_a_config_haproxy_rejects_is_not_applied(scale: Scale) -> None:
    """A replica address haproxy cannot resolve: `haproxy -c` refuses the new config, the
    old one keeps serving, and the next good run puts the right one in place."""
    before = harness.ssh(LB, "sha256sum /etc/haproxy/haproxy.cfg").stdout
    inventory = scale.inventory("unresolvable")
    text = inventory.read_text().replace(f"'registry_internal_address': "
                                         f"'{harness.host_ip(REP2)}'",
                                         "'registry_internal_address': 'nowhere.invalid'", 1)
    inventory.write_text(text)
    bad = harness.run_kit(inventory)
    assert bad.returncode != 0
    assert "haproxy rejected the new configuration" in bad.stderr, bad.stderr[-3000:]
    assert harness.ssh(LB, "sha256sum /etc/haproxy/haproxy.cfg").stdout == before
    assert "registry-kit-new" not in harness.ssh(LB, "ls /etc/haproxy/").stdout
    assert _states() == {REP1: "UP", REP2: "UP"}
    harness.run_kit(scale.inventory("deploy")).assert_no_changes()


def _manifest(scale: Scale, repo: str, tag: str) -> dict[str, Any]:
    proc = harness.curl_docker(
        ["-s", "--cacert", str(harness.CA_CERT), "--resolve",
         f"{DOMAIN}:{PORT}:{harness.host_ip(LB)}", "-H",
         "Accept: application/vnd.docker.distribution.manifest.v2+json",
         f"https://{ADDRESS}/v2/{repo}/manifests/{tag}"],
        user=USER, password=scale.password, ip=harness.host_ip(LB))
    return dict(json.loads(proc.stdout))


def _push_random_image(scale: Scale, image: str, size: int) -> tuple[str, list[str]]:
    """A fresh random image made on the client and pushed through the load balancer:
    (its image ID, the digests of its config and layers); every blob is in the bucket and
    some are in the redis blob-descriptor cache."""
    image_id = harness.ssh(CLIENT, f"head -c {size} /dev/urandom > /tmp/data && tar -C /tmp "
                           f"-c data | docker import - {image} && docker push -q {image} "
                           ">/dev/null").stdout.strip()
    assert image_id.startswith("sha256:")
    repository, tag = image.removeprefix(ADDRESS + "/").rsplit(":", 1)
    manifest = _manifest(scale, repository, tag)
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    listing = _s3cmd(f"ls -r s3://{scale.bucket}/docker/registry/v2/blobs/")
    for digest in digests:
        hexa = digest.removeprefix("sha256:")
        assert f"/blobs/sha256/{hexa[:2]}/{hexa}/data" in listing, (digest, listing)
    keys = harness.ssh(CACHE, "REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' "
                       f"/etc/redis/redis.conf)\" redis-cli --no-auth-warning -h "
                       f"{harness.host_ip(CACHE)} --scan --pattern 'blobs::*'").stdout
    assert any(d in keys for d in digests), keys
    return image_id, digests


def _pulls_survive_either_replica_stopped(image: str, image_id: str) -> None:
    for stopped in (REP1, REP2):
        harness.ssh(stopped, "docker stop -t 5 registry >/dev/null")
        try:
            for _ in range(3):  # round robin would hit the stopped one at least once
                pulled = harness.ssh(CLIENT, f"docker rmi -f {image} >/dev/null 2>&1; "
                                     f"docker pull -q {image} >/dev/null && "
                                     f"docker image inspect -f '{{{{.Id}}}}' {image}").stdout
                assert pulled.strip() == image_id
        finally:
            harness.ssh(stopped, "docker start registry >/dev/null")
        _wait_states({REP1: "UP", REP2: "UP"})


def test_push_lands_every_blob_in_the_bucket_and_pulls_survive_a_stopped_replica(
        scale: Scale) -> None:
    image_id, _ = _push_random_image(scale, IMAGE, 3_000_000)
    _pulls_survive_either_replica_stopped(IMAGE, image_id)


def test_one_upload_across_both_replicas(scale: Scale, tmp_path: Path) -> None:
    """POST on replica 1, PATCH on 2, PATCH on 1, PUT on 2: only works when both sign and
    read upload state with the same http secret and see the same storage."""
    blob = tmp_path / "blob"
    blob.write_bytes(secrets.token_bytes(2_000_000))
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    (tmp_path / "part1").write_bytes(blob.read_bytes()[:1_000_000])
    (tmp_path / "part2").write_bytes(blob.read_bytes()[1_000_000:])

    def call(replica: str, method: str, url: str, body: Path | None = None) -> tuple[int, str]:
        args = ["-s", "-o", "/dev/null", "-w", "%{http_code} %header{location}",
                "--cacert", str(harness.CA_CERT), "--resolve",
                f"{DOMAIN}:{PORT}:{harness.host_ip(replica)}", "-X", method]
        if body is not None:
            args += ["-H", "Content-Type: application/octet-stream", "--data-binary",
                     f"@{body}"]
        # Token auth: each replica's own token server answers (one signing key for all).
        out = harness.curl_docker([*args, url], user=USER, password=scale.password,
                                  ip=harness.host_ip(replica), timeout=60).stdout
        code, _, location = out.partition(" ")
        return int(code or 0), location

    code, url = call(REP1, "POST", f"https://{ADDRESS}/v2/scale/cross/blobs/uploads/")
    assert code == 202, code
    code, url = call(REP2, "PATCH", url, tmp_path / "part1")
    assert code == 202, (code, url)
    code, url = call(REP1, "PATCH", url, tmp_path / "part2")
    assert code == 202, (code, url)
    code, _ = call(REP2, "PUT", url + ("&" if "?" in url else "?") + f"digest={digest}")
    assert code == 201, code
    for replica in (REP1, REP2):
        code, _ = call(replica, "HEAD", f"https://{ADDRESS}/v2/scale/cross/blobs/{digest}")
        assert code == 200, (replica, code)


_LOOP = """
img=$1; bound=$2
ok=0 fail=0 i=0 end=$(( $(date +%s) + bound ))
: > /tmp/scale-loop.err
while [ -e /tmp/scale-loop.run ] && [ $i -lt 1000 ] && [ "$(date +%s)" -lt "$end" ]; do
    docker rmi -f "$img" >/dev/null 2>&1
    if docker pull -q "$img" >/dev/null 2>>/tmp/scale-loop.err; then ok=$((ok+1));
    else fail=$((fail+1)); fi
    i=$((i+1))
done
echo "$ok $fail" > /tmp/scale-loop.result
"""


# Slow downloads (48 MB at 2 MB/s: the registry is still writing long after a stopping
# replica's own 5 s drain, even with socket buffers absorbing about 10 MB) in flight when a
# replica is replaced. Only a replica taken out of the load balancer first, and stopped
# once its connections are done (registry_lb_drain_timeout), lets them all finish. Seen:
# without that step, a stopped replica cut such a download.
_DOWNLOAD_LOOP = """
url=$1; digest=$2; bound=$3; n=$4; realm=$5
ok=0 fail=0 i=0 end=$(( $(date +%s) + bound ))
ca=/etc/docker/certs.d/registry.scale.lab:5000/ca.crt
while [ -e /tmp/scale-loop.run ] && [ $i -lt 100 ] && [ "$(date +%s)" -lt "$end" ]; do
    # A token for the blob's repository first (token auth; basic credentials from the
    # curlrc), as Docker asks one per pull; its header through stdin, not argv.
    token=$(curl -s --max-time 30 -K /root/scale-curlrc --cacert $ca "$realm" |
            sed -n 's/.*"token": *"\\([^"]*\\)".*/\\1/p')
    got=$(printf 'Authorization: Bearer %s\\n' "$token" |
          curl -s --max-time 90 --limit-rate 2M -H @- --cacert $ca "$url" |
          sha256sum | cut -d' ' -f1)
    if [ "sha256:$got" = "$digest" ]; then ok=$((ok+1)); else fail=$((fail+1)); fi
    i=$((i+1))
done
echo "$ok $fail" > /tmp/scale-download-$n.result
"""


def _upload_blob(scale: Scale, data: bytes) -> str:
    """A blob upload through the load balancer (POST, then PUT with the body); returns
    the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "blob").write_bytes(data)
        base = ["-s", "-o", "/dev/null", "--cacert", str(harness.CA_CERT),
                "--resolve", f"{DOMAIN}:{PORT}:{harness.host_ip(LB)}"]
        auth = {"user": USER, "password": scale.password, "ip": harness.host_ip(LB)}
        started = harness.curl_docker(
            [*base, "-w", "%{http_code} %header{location}", "-X", "POST",
             f"https://{ADDRESS}/v2/scale/slow/blobs/uploads/"], timeout=60, **auth).stdout
        code, _, location = started.partition(" ")
        assert code == "202", started
        finished = harness.curl_docker(
            [*base, "-w", "%{http_code} %{errormsg}", "-X", "PUT", "-H",
             "Content-Type: application/octet-stream", "--data-binary", f"@{tmp}/blob",
             location + ("&" if "?" in location else "?") + f"digest={digest}"],
            timeout=120, **auth).stdout
    assert finished.startswith("201 "), finished
    return digest


def _result(name: str) -> tuple[int, int]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        out = harness.ssh(CLIENT, f"cat /tmp/{name}.result 2>/dev/null || true").stdout.split()
        if out:
            return int(out[0]), int(out[1])
        time.sleep(0.5)
    raise AssertionError(f"no /tmp/{name}.result on {CLIENT}")


def test_rolling_upgrade_loses_no_pull(scale: Scale) -> None:
    digest = _upload_blob(scale, secrets.token_bytes(48_000_000))
    blob_url = f"https://{ADDRESS}/v2/scale/slow/blobs/{digest}"
    realm = (f"https://{DOMAIN}:5443/token?service={ADDRESS}&"
             "scope=repository:scale/slow:pull")
    harness.ssh(CLIENT, "umask 077 && cat > /root/scale-curlrc",
                stdin=f'user = "{USER}:{scale.password}"\n')
    harness.ssh(CLIENT, "cat > /tmp/scale-loop.sh && rm -f /tmp/scale-*.result && "
                "touch /tmp/scale-loop.run", stdin=_LOOP)
    harness.ssh(CLIENT, "cat > /tmp/scale-download.sh", stdin=_DOWNLOAD_LOOP)
    harness.ssh(CLIENT, f"nohup sh /tmp/scale-loop.sh {IMAGE} {LOOP_SECONDS} "
                ">/dev/null 2>&1 &")
    for n in (1, 2):  # two at a time: leastconn puts one on each replica
        harness.ssh(CLIENT, f"nohup sh /tmp/scale-download.sh {blob_url} {digest} "
                    f"{LOOP_SECONDS} {n} {shlex.quote(realm)} >/dev/null 2>&1 &")
    load = _load(scale)
    try:
        with load:
            time.sleep(3)  # pulls and downloads are running before the first replica goes
            started = time.monotonic()
            with load.window(f"image upgrade {BASE_IMAGE} -> {UPGRADE_IMAGE}"):
                upgrade = harness.run_kit(scale.inventory("upgrade", **UPGRADE))
            scale.figures["rolling_upgrade_seconds"] = round(time.monotonic() - started, 1)
    finally:
        harness.ssh(CLIENT, "rm -f /tmp/scale-loop.run /root/scale-curlrc")
    upgrade.assert_ok()
    _record_load(scale, load)
    ok, failed = _result("scale-loop")
    errors = harness.ssh(CLIENT, "cat /tmp/scale-loop.err").stdout
    downloads = [_result(f"scale-download-{n}") for n in (1, 2)]
    scale.figures["pulls_during_upgrade"] = {"ok": ok, "failed": failed}
    scale.figures["slow_downloads_during_upgrade"] = {
        "ok": sum(d[0] for d in downloads), "failed": sum(d[1] for d in downloads)}
    assert failed == 0, errors
    assert ok >= 5, f"only {ok} pulls ran during the upgrade"
    assert sum(d[1] for d in downloads) == 0, downloads
    assert sum(d[0] for d in downloads) >= 2, downloads
    # One replica at a time (in whatever order pyinfra takes them): out, replaced, back UP,
    # then the next.
    log = upgrade.stderr
    events = sorted((log.index(f"{name} {what}"), name, what)
                    for name in (REP1, REP2) for what in ("taken out", "is back"))
    first, second = events[0][1], events[2][1]
    assert [(n, w) for _, n, w in events] == [(first, "taken out"), (first, "is back"),
                                             (second, "taken out"), (second, "is back")]
    assert first != second, log[-3000:]
    for name in (REP1, REP2):
        image = harness.ssh(name, "docker inspect -f '{{.Config.Image}}' registry").stdout
        assert image.strip() == UPGRADE_IMAGE
    assert _states() == {REP1: "UP", REP2: "UP"}
    _assert_load(scale, load)
    harness.run_kit(scale.inventory("upgrade", **UPGRADE)).assert_no_changes()
    scale.image = UPGRADE_IMAGE


@pytest.mark.skipif(not REGISTRY3, reason=REGISTRY3_MISSING or "")
def test_registry3_replicas_use_the_bucket_and_the_redis_cache(scale: Scale) -> None:
    """After the rolling upgrade both replicas run 3.0.0: a new image pushed through the
    load balancer lands in the bucket (3.x reaches Ceph by IP only with path-style
    requests) and its blobs in redis (3.x reads the go-redis section: with 2.x keys it
    would panic), and pulls come back through either replica."""
    assert scale.image == "registry:3", "runs after the rolling upgrade"
    for name in (REP1, REP2):
        version = harness.ssh(name, "docker exec registry /bin/registry --version").stdout
        assert version.split()[-1] == "3.0.0", version
    # A new image: its blobs and cache keys can only come from the 3.0.0 replicas.
    image = f"{ADDRESS}/scale/after3:1"
    image_id, _ = _push_random_image(scale, image, 2_000_000)
    _pulls_survive_either_replica_stopped(image, image_id)


def test_tls_termination_on_the_load_balancer(scale: Scale) -> None:
    """registry_lb_mode='terminate': only the load balancer changes (replicas keep running),
    haproxy serves the certificate and forwards with X-Forwarded-For/Proto; back to
    passthrough afterwards. Each mode's rerun changes nothing."""
    started = {name: harness.ssh(name, "docker inspect -f '{{.State.StartedAt}}' registry")
               .stdout for name in (REP1, REP2)}
    image = UPGRADE
    terminate = scale.inventory("terminate", registry_lb_mode="terminate", **image)
    run = harness.run_kit(terminate).assert_ok()
    assert {host for _, hosts in run.changed for host in hosts} == {LB}, run.changed
    harness.run_kit(terminate).assert_no_changes()
    assert "ssl crt /etc/haproxy/registry-kit/registry.pem" in harness.ssh(
        LB, "cat /etc/haproxy/haproxy.cfg").stdout
    layout = scale.tmp / "terminate-image"
    _random_image(layout, 1_000_000)
    pushed = scale.skopeo(["copy", "--dest-cert-dir", "@CERTS@", f"oci:{layout}",
                           f"docker://{ADDRESS}/scale/terminated:1"])
    assert pushed.returncode == 0, pushed.stderr
    pulled = scale.skopeo(["copy", "--src-cert-dir", "@CERTS@",
                           f"docker://{ADDRESS}/scale/terminated:1", f"dir:{layout}-out"])
    assert pulled.returncode == 0, pulled.stderr
    # The replicas saw haproxy's connections, with the client's address forwarded.
    logs = "".join(harness.ssh(name, "docker logs --since 2m registry 2>&1 | "
                               "grep 'scale/terminated' || true").stdout for name in (REP1, REP2))
    assert f'\n{harness.host_ip(LB)} - - [' in "\n" + logs, logs[-2000:]
    # The control machine reaches the lab through the network's gateway address.
    gateway = lab_state.load()["gateway"]
    assert f"http.request.remoteaddr={gateway} " in logs, logs[-2000:]
    # A client's own X-Forwarded-For is replaced by the LB, not appended to: the registry
    # (and so the audit log) takes the header's first address.
    forged = "203.0.113.66"
    subprocess.run(["curl", "-sk", "-o", "/dev/null", "--max-time", "10", "--resolve",
                    f"{ADDRESS}:{harness.host_ip(LB)}", "-H", f"X-Forwarded-For: {forged}",
                    "-A", "forged-xff", f"https://{ADDRESS}/v2/scale/terminated/tags/list"],
                   check=True)
    seen = "".join(harness.ssh(name, "docker logs --since 2m registry 2>&1 | "
                               "grep -F forged-xff || true").stdout for name in (REP1, REP2))
    assert f"http.request.remoteaddr={gateway} " in seen and forged not in seen, seen[-2000:]
    assert {name: harness.ssh(name, "docker inspect -f '{{.State.StartedAt}}' registry").stdout
            for name in (REP1, REP2)} == started
    back = scale.inventory("passthrough", **image)
    harness.run_kit(back).assert_ok()
    harness.run_kit(back).assert_no_changes()
    assert harness.ssh(LB, "test ! -e /etc/haproxy/registry-kit && echo gone").stdout.strip() \
        == "gone"


# --- Garbage collection on the shared bucket (registry_kit/sharedgc.py) ----------------------

# Deletes allowed (a manifest is deleted before the collection); a short drain keeps each
# replica's read-only and read-write restart quick.
GC = {"registry_delete_enabled": True, "registry_lb_drain_timeout": 5}
CONFIG_SHA = "sha256sum /etc/registry-kit/config.yml | cut -d' ' -f1"


def _gc_inventory(scale: Scale, name: str = "gc", **overrides: Any) -> Path:
    return scale.inventory(name, registry_image=scale.image, **GC, **overrides)


def _replica_view() -> dict[str, tuple[str, str]]:
    """Each replica's config.yml checksum and container start time."""
    return {name: (harness.ssh(name, CONFIG_SHA).stdout.strip(), harness.started_at(name))
            for name in (REP1, REP2)}


def _bucket_objects(scale: Scale) -> dict[str, int]:
    """Every object under the registry's prefix with its size, read with s3cmd on the Ceph
    host (not with the kit's listing)."""
    objects = {}
    for line in _s3cmd(f"ls -r s3://{scale.bucket}/docker/").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1].startswith("s3://"):
            objects[parts[-1]] = int(parts[2])
    return objects


def _blob_key(scale: Scale, digest: str) -> str:
    hexa = digest.removeprefix("sha256:")
    return f"s3://{scale.bucket}/docker/registry/v2/blobs/sha256/{hexa[:2]}/{hexa}/data"


def _manifest_digest(scale: Scale, repository: str, tag: str) -> str:
    inspected = scale.skopeo(["inspect", "--cert-dir", "@CERTS@",
                              f"docker://{ADDRESS}/{repository}:{tag}"])
    assert inspected.returncode == 0, inspected.stderr
    return str(json.loads(inspected.stdout)["Digest"])


def _upload_code(scale: Scale, replica: str) -> int:
    """Status of a blob upload start (POST) sent to one replica directly: 202 writable,
    405 read-only."""
    out = harness.curl_docker(
        ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
         "--cacert", str(harness.CA_CERT), "--resolve",
         f"{DOMAIN}:{PORT}:{harness.host_ip(replica)}", "-X", "POST",
         f"https://{ADDRESS}/v2/gc/probe/blobs/uploads/"],
        user=USER, password=scale.password, ip=harness.host_ip(replica)).stdout
    return int(out or 0)


def _assert_serving_read_write(scale: Scale, deployed: dict[str, tuple[str, str]]) -> None:
    for name in (REP1, REP2):
        assert harness.ssh(name, CONFIG_SHA).stdout.strip() == deployed[name][0], name
        assert harness.ssh(name, "ls /etc/registry-kit/").stdout.split() == \
            ["auth", "certs", "config.yml", "token"], name  # token: the token server's files
        assert _upload_code(scale, name) == 202, name
    _wait_states({REP1: "UP", REP2: "UP"})


def test_gc_shared_deploy_then_an_unreachable_replica_refuses(scale: Scale) -> None:
    harness.run_kit(_gc_inventory(scale)).assert_ok()
    harness.run_kit(_gc_inventory(scale)).assert_no_changes()
    before = _replica_view()
    inventory = _gc_inventory(scale, "gc-unreachable")
    port = lab_state.load()["hosts"][REP2]["port"]
    # rep2's SSH is a closed port: pyinfra cannot reach it.
    inventory.write_text(inventory.read_text().replace(f"'ssh_port': {port}",
                                                       "'ssh_port': 9", 1))
    refused = harness.run_kit(inventory, "garbage_collect.py")
    assert refused.returncode != 0
    assert (f"{REP2}: garbage_collect.py refused: {REP2} not reachable (or left out by "
            "--limit); a collection on shared storage makes every replica read-only first "
            f"({REP1}, {REP2}): nothing was changed") in refused.stderr, refused.stderr[-3000:]
    limited = harness.run_kit(_gc_inventory(scale), "garbage_collect.py", "--limit", REP1)
    assert limited.returncode != 0
    assert f"{REP2}: garbage_collect.py refused: {REP2} not reachable" in limited.stderr
    assert _replica_view() == before  # no restart, no config change on either replica
    # With both reachable the run goes ahead: a dry run reports once and restarts nothing.
    dry = harness.run_kit(_gc_inventory(scale), "garbage_collect.py", "--data",
                          "registry_gc_dry_run=True")
    dry.assert_ok()
    assert len([line for line in dry.stderr.splitlines()
                if "registry-kit: dry run on shared storage" in line]) == 1, dry.stderr[-3000:]
    assert _replica_view() == before


def test_gc_shared_schedule_is_refused_and_no_replica_keeps_a_timer(scale: Scale) -> None:
    units = "/etc/systemd/system/registry-kit-gc.timer /etc/systemd/system/registry-kit-gc" \
        ".service"
    before = _replica_view()
    refused = harness.run_kit(_gc_inventory(scale, "gc-timer",
                                            registry_gc_schedule="Sun *-*-* 03:00:00"))
    assert refused.returncode != 0
    assert (f"{REP1}: setting registry_gc_schedule='Sun *-*-* 03:00:00' is not allowed: None "
            f"where several registry_servers share one storage ({REP1}, {REP2})"
            in refused.stderr), refused.stderr[-2000:]
    assert len([line for line in refused.stderr.splitlines() if "not allowed" in line]) == 1
    assert _replica_view() == before
    # Timers an earlier kit installed on every replica (they raced): the deploy removes them.
    for name in (REP1, REP2):
        harness.ssh(name, "printf '[Service]\\nType=oneshot\\nExecStart=/bin/true\\n' > "
                    "/etc/systemd/system/registry-kit-gc.service && printf '[Timer]\\n"
                    "OnCalendar=Sun *-*-* 03:00:00\\n[Install]\\nWantedBy=timers.target\\n' > "
                    "/etc/systemd/system/registry-kit-gc.timer && systemctl daemon-reload && "
                    "systemctl enable --now registry-kit-gc.timer 2>/dev/null")
    harness.run_kit(_gc_inventory(scale)).assert_ok()
    harness.run_kit(_gc_inventory(scale)).assert_no_changes()
    for name in (REP1, REP2):
        assert harness.ssh(name, f"ls {units} 2>/dev/null; systemctl list-timers --all "
                           "--no-legend | grep -c registry-kit; true").stdout.split() == ["0"]


_PUSH_LOOP = """
reg=$1; n=0
: > /tmp/gc-loop.log
while [ -e /tmp/gc-loop.run ] && [ $n -lt 300 ]; do
    n=$((n+1)); img=$reg/gc/during-$n:1
    head -c 200000 /dev/urandom > /tmp/gcd && tar -C /tmp -c gcd | docker import - $img >/dev/null
    if out=$(docker push $img 2>&1); then
        echo "ok $img $(echo "$out" | sed -n 's/.*digest: \\(sha256:[0-9a-f]*\\).*/\\1/p')"
    else
        echo "refused $img $(echo "$out" | tr '\\n' ' ' | tail -c 400)"
    fi >> /tmp/gc-loop.log
    docker rmi $img >/dev/null 2>&1
done
echo end >> /tmp/gc-loop.log
"""


def _push_log() -> list[list[str]]:
    return [line.split(" ", 2) for line in
            harness.ssh(CLIENT, "cat /tmp/gc-loop.log").stdout.splitlines()]


def test_gc_shared_under_pushes_keeps_every_tag_and_frees_the_deleted(scale: Scale) -> None:
    deployed = _replica_view()
    kept: dict[str, str] = {}  # image reference -> manifest digest
    for n in (1, 2):
        image = f"{ADDRESS}/gc/before-{n}:1"
        _push_random_image(scale, image, 500_000)
        kept[image] = _manifest_digest(scale, f"gc/before-{n}", "1")
    doomed = f"{ADDRESS}/gc/doomed:1"
    _, blobs = _push_random_image(scale, doomed, 3_000_000)
    doomed_digest = _manifest_digest(scale, "gc/doomed", "1")
    deleted = harness.curl_docker(
        ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
         str(harness.CA_CERT), "--resolve",
         f"{DOMAIN}:{PORT}:{harness.host_ip(LB)}", "-X", "DELETE",
         f"https://{ADDRESS}/v2/gc/doomed/manifests/{doomed_digest}"],
        user=USER, password=scale.password, ip=harness.host_ip(LB)).stdout
    assert deleted == "202", deleted
    objects_before = _bucket_objects(scale)
    unique = [_blob_key(scale, d) for d in (*blobs, doomed_digest)]
    assert all(key in objects_before for key in unique)
    unique_bytes = sum(objects_before[key] for key in unique)

    harness.ssh(CLIENT, "cat > /tmp/gc-loop.sh && touch /tmp/gc-loop.run", stdin=_PUSH_LOOP)
    harness.ssh(CLIENT, f"nohup sh /tmp/gc-loop.sh {ADDRESS} >/dev/null 2>&1 &")
    try:
        deadline = time.monotonic() + 60
        while sum(row[0] == "ok" for row in _push_log()) < 2:  # pushes before the collection
            assert time.monotonic() < deadline, _push_log()
            time.sleep(1)
        started = time.monotonic()
        run = harness.run_kit(_gc_inventory(scale), "garbage_collect.py")
        scale.figures["gc_shared_seconds"] = round(time.monotonic() - started, 1)
        done = len(_push_log())
        deadline = time.monotonic() + 120
        while sum(row[0] == "ok" for row in _push_log()[done:]) < 2:  # and after it
            assert time.monotonic() < deadline, _push_log()
            time.sleep(1)
    finally:
        harness.ssh(CLIENT, "rm -f /tmp/gc-loop.run")
    deadline = time.monotonic() + 150
    while _push_log()[-1:] != [["end"]]:
        assert time.monotonic() < deadline, _push_log()
        time.sleep(1)
    run.assert_ok()
    log = run.stderr
    # The order: both read-only, the collection on rep1 only, both read-write.
    order = [log.index(f"{REP1}: registry-kit: registry is read-only"),
             log.index(f"{REP2}: registry-kit: registry is read-only"),
             log.index(f"{REP1}: registry-kit: collected: "),
             log.index(f"{REP1}: registry-kit: registry is read-write again"),
             log.index(f"{REP2}: registry-kit: registry is read-write again")]
    assert order == sorted(order), log[-4000:]
    assert log.count("registry-kit: collected: ") == 1
    assert f"{REP2}: registry-kit: collected: " not in log
    freed_lines = [line for line in log.splitlines() if " freed " in line]
    assert len(freed_lines) == 1, freed_lines  # bytes freed reported once
    freed = int(freed_lines[0].split(" freed ")[1].split()[0])
    scale.figures["gc_shared_freed_bytes"] = freed

    # Every push succeeded or met the read-only refusal (405).
    rows = [row for row in _push_log() if row != ["end"]]
    refused = [row for row in rows if row[0] != "ok"]
    for row in refused:
        assert "405" in row[2], row
    scale.figures["gc_shared_pushes"] = {"ok": len(rows) - len(refused),
                                         "refused_read_only": len(refused)}
    assert len(refused) >= 1, rows  # the collection did overlap pushes
    for _, image, digest in (row for row in rows if row[0] == "ok"):
        assert digest.startswith("sha256:"), image
        kept[image] = digest
    # Every tag pushed before, during and after still pulls, with its digest.
    for image, digest in kept.items():
        repository, tag = image.removeprefix(ADDRESS + "/").rsplit(":", 1)
        assert _manifest_digest(scale, repository, tag) == digest, image
        pulled = scale.skopeo(["copy", "--src-cert-dir", "@CERTS@", f"docker://{image}",
                               f"dir:{scale.tmp}/gc-pull"])
        assert pulled.returncode == 0, (image, pulled.stderr)
    # The deleted manifest's blobs are gone from the bucket; what the collection freed is at
    # least them and what vanished from the bucket (pushes only add).
    objects_after = _bucket_objects(scale)
    assert not [key for key in unique if key in objects_after]
    vanished = sum(size for key, size in objects_before.items() if key not in objects_after)
    assert freed >= max(unique_bytes, vanished), (freed, unique_bytes, vanished)
    assert freed - vanished < len(refused) * 300_000 + 100_000, (freed, vanished)
    _assert_serving_read_write(scale, deployed)
    # The redis cache was emptied: the deleted layer is uploaded again when pushed again.
    again = harness.ssh(CLIENT, f"docker push {doomed} 2>&1").stdout
    assert "Pushed" in again and "Layer already exists" not in again, again
    harness.run_kit(_gc_inventory(scale)).assert_no_changes()
    second = harness.run_kit(_gc_inventory(scale), "garbage_collect.py").assert_ok()
    assert len([line for line in second.stderr.splitlines() if " freed " in line]) == 1


def test_gc_shared_failing_collect_leaves_every_replica_read_write(scale: Scale) -> None:
    """A manifest in the bucket that is not JSON (planted with s3cmd): garbage-collect stops
    in its mark phase. Every replica must be read-write and serving afterwards."""
    deployed = _replica_view()
    bad = b"not a manifest\n"
    digest = hashlib.sha256(bad).hexdigest()
    # garbage-collect finds a repository by its _layers folder, then reads its manifests.
    repository = f"s3://{scale.bucket}/docker/registry/v2/repositories/gc/broken"
    harness.ssh(ceph.CEPH_HOST, f"printf 'not a manifest\\n' > /tmp/bad && printf "
                f"'sha256:{digest}' > /tmp/link && s3cmd put -q /tmp/bad "
                f"{_blob_key(scale, 'sha256:' + digest)} && s3cmd put -q /tmp/link "
                f"{repository}/_manifests/revisions/sha256/{digest}/link && s3cmd put -q "
                f"/tmp/link {repository}/_layers/sha256/{digest}/link")
    try:
        failed = harness.run_kit(_gc_inventory(scale), "garbage_collect.py")
        assert failed.returncode != 0
        assert (f"registry-kit: garbage collection on shared storage failed at step 'collect' "
                f"on {REP1}; every replica is read-write again") in failed.stderr, \
            failed.stderr[-4000:]
        assert " freed " not in failed.stderr
        _assert_serving_read_write(scale, deployed)
    finally:
        _s3cmd(f"del -r {repository}/")
        _s3cmd(f"del {_blob_key(scale, 'sha256:' + digest)}")
    harness.run_kit(_gc_inventory(scale)).assert_no_changes()


# --- Retention on the shared bucket (registry_kit/sharedretention.py) ------------------------

class ScaleRetention:
    """The scale-out as retention_scenario's site: the inventory last deployed plus the
    rules, clients through the load balancer, the bucket read on the Ceph host (s3cmd,
    radosgw-admin), never with the kit's code."""

    certs = Path("@CERTS@")  # harness.skopeo's CA folder

    def __init__(self, scale: Scale, name: str, deployed: dict[str, Any]) -> None:
        self.scale, self.name, self.data = scale, name, dict(deployed)
        self.inventory = scale.inventory(name, **self.data)

    def set(self, **data: Any) -> None:
        for key, value in data.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.inventory = self.scale.inventory(self.name, **self.data)

    def run(self, script: str = "deploy.py", *extra: str,
            timing: str | None = None) -> harness.Run:
        return harness.run_kit(self.inventory, script, *extra)

    def skopeo(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return self.scale.skopeo(args)

    def _curl(self, args: list[str]) -> str:
        return harness.curl_docker(
            ["-s", "--cacert", str(harness.CA_CERT), "--resolve",
             f"{DOMAIN}:{PORT}:{harness.host_ip(LB)}", *args],
            user=USER, password=self.scale.password, ip=harness.host_ip(LB)).stdout

    def tags(self, repository: str) -> list[str]:
        return sorted(json.loads(self._curl([f"https://{ADDRESS}/v2/{repository}/tags/list"]))
                      ["tags"])

    def put_manifest(self, repository: str, tag: str, manifest: Path) -> None:
        media_type = json.loads(manifest.read_bytes())["mediaType"]
        code = self._curl(["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H",
                           f"Content-Type: {media_type}", "--data-binary", f"@{manifest}",
                           f"https://{ADDRESS}/v2/{repository}/manifests/{tag}"])
        assert code == "201", (repository, tag, code)

    def bucket_objects(self) -> dict[str, int]:
        return _bucket_objects(self.scale)

    def link_times(self, prefix: str) -> dict[tuple[str, str], float]:
        """(repository under prefix, tag) -> its current/link's mtime, from radosgw-admin."""
        listed = json.loads(harness.ssh(
            ceph.CEPH_HOST, f"radosgw-admin bucket list --bucket={self.scale.bucket} "
            "--max-entries=100000").stdout)
        found = {}
        head = f"docker/registry/v2/repositories/{prefix}/"
        for entry in listed:
            name = entry["name"]
            if name.startswith(head) and name.endswith("/current/link"):
                repo, _, rest = name.removeprefix(head).partition("/_manifests/tags/")
                mtime = entry["meta"]["mtime"]  # 2026-12-08T01:21:59.526265Z
                found[(repo, rest.removesuffix("/current/link"))] = datetime.fromisoformat(
                    mtime.replace("Z", "+00:00")).timestamp()
        return found


def _retention_on_shared_storage(scale: Scale, prefix: str, deployed: dict[str, Any],
                                 status: bool = False) -> None:
    """retention_scenario.run_s3_scenario on both replicas, then: the run's record on each
    replica (with `status`: status.py --json shows it as the last retention), and a deploy
    of the same settings changes nothing."""
    started = time.monotonic()
    site = ScaleRetention(scale, f"retention-{prefix}", deployed)
    phases: dict[str, Any] = scale.figures.setdefault(f"retention_{prefix}_seconds", {})
    figures = retention_scenario.run_s3_scenario(site, leader=REP1, address=ADDRESS,
                                                 prefix=prefix, times=phases)
    scale.figures[f"retention_{prefix}"] = figures
    records: dict[str, str] = {}
    for name in (REP1, REP2):
        record = harness.ssh(name, "cat /etc/registry-kit/last-retention").stdout.split()
        assert record[1:] == ["retention:", str(figures["folders_deleted"]), "tag", "and",
                              "manifest", "folders", "deleted,", str(figures["freed_bytes"]),
                              "bytes", "freed", "in", f"s3://{scale.bucket}"], (name, record)
        # Writable again and back in the load balancer.
        assert _upload_code(scale, name) == 202, name
        records[name] = record[0]
    _wait_states({REP1: "UP", REP2: "UP"})
    if status:
        shown = subprocess.run([harness.PYINFRA, "-y", "--data", "registry_status_json=True",
                                str(site.inventory), "status.py"], cwd=harness.ROOT,
                               capture_output=True, text=True, timeout=300)
        assert shown.returncode == 0, shown.stderr[-3000:]
        servers = json.loads(shown.stdout)["servers"]
        assert {name: servers[name]["disk"]["last_retention"] for name in records} == records
    site.run().assert_no_changes()
    phases["records, status, deploy again"] = round(
        time.monotonic() - started - sum(phases.values()), 1)
    scale.figures[f"retention_{prefix}_total_seconds"] = round(time.monotonic() - started, 1)


def test_retention_on_shared_s3_with_3(scale: Scale) -> None:
    """retention.py on the bucket both 3.0.0 replicas share (retention_scenario.py): a run
    that would delete with a replica left out is refused in one line; then the scenario,
    planned once for the group, applied with every replica read-only."""
    assert scale.image == UPGRADE_IMAGE, "runs after the rolling upgrade"
    before = _replica_view()
    limited = harness.run_kit(_gc_inventory(scale), "retention.py", "--data",
                              "registry_retention_apply=True", "--limit", REP1)
    assert limited.returncode != 0
    assert (f"{REP2}: retention.py refused: {REP2} not reachable (or left out by --limit); "
            "deleting with registry_retention_apply on shared storage makes every replica "
            f"read-only first ({REP1}, {REP2}): nothing was changed") in limited.stderr, \
        limited.stderr[-3000:]
    assert _replica_view() == before
    _retention_on_shared_storage(scale, "rt3", {"registry_image": scale.image, **GC},
                                 status=True)


def _token_status(user: str, password: str, scope: str = "repository:team-a/app:pull") -> int:
    """HTTP status of one token request through the load balancer's token port (curl; the
    credentials from a file, not argv)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "curlrc"
        config.write_text(f'user = "{user}:{password}"\n')
        proc = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
             "--cacert", str(harness.CA_CERT), "--resolve",
             f"{DOMAIN}:{TOKEN_PORT}:{harness.host_ip(LB)}", "-G", "--data-urlencode",
             f"service={ADDRESS}", "--data-urlencode", f"scope={scope}", "-K", str(config),
             f"https://{DOMAIN}:{TOKEN_PORT}/token"], capture_output=True, text=True, timeout=30)
    return int(proc.stdout or 0)


def _token_log(since: int, text: str) -> dict[str, int]:
    """Per replica: the lines of its token server's journal since `since` (epoch seconds)
    that hold `text`."""
    return {name: int(harness.ssh(name, "journalctl -u registry-kit-token -o cat --no-pager "
                                  f"--since @{since} | grep -cF {shlex.quote(text)} || true")
                      .stdout.strip() or 0) for name in (REP1, REP2)}


def test_access_rules_through_the_load_balancer(scale: Scale) -> None:
    """registry_access_rules on both replicas behind haproxy, on 2.8.3 and then on 3: clients
    fetch tokens through the load balancer's token port from either replica's token server
    (one signing key), and the docker CLI on the client sees the same grants and denials as
    on one server. With users from a directory too (registry_ldap; slapd on lab-sldap, over
    LDAPS): on both versions a directory user pushes where its group is granted and gets
    Docker's denial elsewhere, a wrong password is 401, and both replicas' token servers log
    its logins; on 3, removed from the group (ldapmodify, no kit run) its next push is
    denied, and with slapd stopped both replicas answer it 401 while a local user pushes.
    Each step applied twice; a changed rule and a changed password take effect without
    touching either container; registry_ldap unset ends the directory's logins."""
    assert scale.directory is not None and scale.directory_up is not None
    reader_pw = scale.tmp / "reader.pw"
    reader_pw.write_text("scale-reader-password\n")
    reader_pw.chmod(0o600)
    rules = [{"repository": "*", "actions": ["pull", "push", "delete"], "users": [USER]},
             {"repository": "scale/*", "actions": ["pull"], "groups": ["readers"]},
             {"repository": "public/*", "actions": ["pull"], "anonymous": True},
             {"repository": "team-a/*", "actions": ["pull", "push"], "ldap_groups": ["team-a"]}]
    users = [{"name": USER, "password_file": str(scale.tmp / "pw")},
             {"name": "reader", "password_file": str(reader_pw)}]
    (scale.tmp / "ldap-ca.crt").write_bytes(scale.directory.ca_pem)
    ldap = {"url": f"ldaps://{DIRECTORY}", "base_dn": ldap_directory.PEOPLE,
            "bind_dn": ldap_directory.SERVICE_DN,
            "bind_password_file": harness.write_secret(scale.tmp, "ldap.password",
                                                       SERVICE_PASSWORD),
            "user_filter": "(&(objectClass=inetOrgPerson)(uid={user}))",
            "group_filter": "(&(objectClass=groupOfNames)(member={dn}))",
            "group_base_dn": ldap_directory.GROUPS, "ca_file": str(scale.tmp / "ldap-ca.crt")}
    access = {"registry_users": users, "registry_groups": {"readers": ["reader"]},
              "registry_access_rules": rules, "registry_ldap": ldap}
    dana = DIRECTORY_USERS["dana"]
    denied = "denied: requested access to the resource is denied"

    def docker(command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return harness.ssh(CLIENT, command, check=False, stdin=stdin)

    def refused(proc: subprocess.CompletedProcess[str]) -> bool:
        return proc.returncode != 0 and denied in proc.stdout + proc.stderr

    def containers() -> dict[str, str]:
        return {name: harness.ssh(name, "docker inspect -f '{{.Id}} {{.State.StartedAt}}' "
                                  "registry").stdout for name in (REP1, REP2)}

    def reader_skopeo(args: list[str], password: str) -> subprocess.CompletedProcess[str]:
        return harness.skopeo(args, hosts={DOMAIN: harness.host_ip(LB)},
                              auth={ADDRESS: ("reader", password)})

    def push(name: str) -> subprocess.CompletedProcess[str]:
        return docker(f"docker tag busybox {ADDRESS}/{name} && docker push {ADDRESS}/{name}")

    phases: dict[str, float] = scale.figures.setdefault("access_rules_seconds", {})
    clock = [time.monotonic()]

    def lap(name: str) -> None:
        """Seconds since the last lap, into the figures under `name`."""
        now = time.monotonic()
        phases[name] = round(now - clock[0], 1)
        clock[0] = now

    # slapd was installed beside the first deploys; up before the token servers start, so
    # their start compares the local names with the directory's.
    scale.figures["slapd_install_seconds"] = scale.directory_up.result(timeout=600)
    lap("waiting for slapd")
    for step, image in (("2", {"registry_image": BASE_IMAGE}), ("3", UPGRADE)):
        inventory = scale.inventory(f"access-{step}", **access, **image)
        harness.run_kit(inventory).assert_ok()
        lap(f"deploy {step}")
        harness.run_kit(inventory).assert_no_changes()
        lap(f"rerun {step}")
        assert "frontend registry-token" in harness.ssh(LB, "cat /etc/haproxy/haproxy.cfg").stdout
        # The kit logged the client in as USER (registry_client_login_user): push works.
        docker(f"docker login -u {USER} --password-stdin {ADDRESS}", stdin=scale.password)
        for name in (f"scale/app:{step}", f"public/base:{step}", f"team-b/app:{step}"):
            proc = docker(f"docker pull -q busybox >/dev/null; docker tag busybox "
                          f"{ADDRESS}/{name} && docker push {ADDRESS}/{name}")
            assert proc.returncode == 0, proc.stdout + proc.stderr
        assert docker(f"docker login -u reader --password-stdin {ADDRESS}",
                      stdin="scale-reader-password").returncode == 0
        for _ in range(4):  # several token requests: both replicas' token servers answer
            proc = docker(f"docker rmi -f {ADDRESS}/scale/app:{step} >/dev/null; "
                          f"docker pull {ADDRESS}/scale/app:{step}")
            assert proc.returncode == 0, proc.stdout + proc.stderr
        assert refused(docker(f"docker push {ADDRESS}/scale/app:{step}"))
        assert refused(docker(f"docker pull {ADDRESS}/team-b/app:{step}"))
        docker(f"docker logout {ADDRESS}")
        proc = docker(f"docker rmi -f {ADDRESS}/public/base:{step} >/dev/null; "
                      f"docker pull {ADDRESS}/public/base:{step}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert refused(docker(f"docker pull {ADDRESS}/scale/app:{step}"))
        # Delete: refused to the reader (no grant), the image stays.
        target = f"docker://{ADDRESS}/public/base:{step}"
        no = reader_skopeo(["delete", "--cert-dir", "@CERTS@", target], "scale-reader-password")
        assert no.returncode != 0, no.stdout
        kept = scale.skopeo(["inspect", "--cert-dir", "@CERTS@", target])
        assert kept.returncode == 0, kept.stderr
        lap(f"local users {step}")
        # The directory user through the load balancer: its group's repository, Docker's
        # denial elsewhere, 401 for a wrong password; four token requests in a row are two
        # for each replica (haproxy's roundrobin), and each logs the directory login.
        since = int(time.time()) - 1
        assert docker(f"docker login -u dana --password-stdin {ADDRESS}",
                      stdin=dana).returncode == 0
        proc = push(f"team-a/app:{step}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert refused(docker(f"docker push {ADDRESS}/team-b/app:{step}"))
        assert [_token_status("dana", dana) for _ in range(4)] == [200] * 4
        assert _token_status("dana", "wrong-password") == 401
        logins = _token_log(since, "directory user 'dana' groups=team-a")
        assert all(count > 0 for count in logins.values()), logins
        lap(f"directory user {step}")
    # On 3, the directory changes with no kit run: out of team-a, dana's next push is denied.
    directory = scale.directory
    ldap_directory.remove_member(directory, "team-a", "dana")
    try:
        assert refused(push("team-a/app:out-of-the-group"))
    finally:
        ldap_directory.add_member(directory, "team-a", "dana")
    proc = push("team-a/app:back-in-the-group")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lap("out of the group and back")
    # slapd stopped: both replicas answer dana 401 and log why; a local user still pushes.
    since = int(time.time()) - 1
    harness.ssh(directory.host, "systemctl stop slapd")
    try:
        assert [_token_status("dana", dana) for _ in range(2)] == [401, 401]
        unreachable = _token_log(since, "directory unreachable: ")
        assert all(count > 0 for count in unreachable.values()), unreachable
        assert docker(f"docker login -u {USER} --password-stdin {ADDRESS}",
                      stdin=scale.password).returncode == 0
        proc = push("scale/app:directory-down")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        harness.ssh(directory.host, "systemctl start slapd")
    # Back: each replica opens its service connection again at the next directory login.
    deadline = time.monotonic() + 30
    while [_token_status("dana", dana) for _ in range(2)] != [200, 200]:
        assert time.monotonic() < deadline, "dana still refused after slapd started"
        time.sleep(1)
    lap("slapd stopped and started")
    served = {name: harness.ssh(name, "journalctl -u registry-kit-token -o cat --no-pager | "
                                "grep -c 'token user=' || true").stdout.strip()
              for name in (REP1, REP2)}
    assert all(int(count) > 0 for count in served.values()), served
    # A removed grant and a changed password: refused after the next run; containers kept.
    # registry_ldap unset (and its rule gone): the directory's password leaves both replicas
    # and dana is an unknown user to both.
    started = containers()
    reader_pw.write_text("scale-reader-password-2\n")
    without_directory = {key: value for key, value in access.items() if key != "registry_ldap"}
    narrowed = scale.inventory("access-narrowed", **UPGRADE, **{
        **without_directory, "registry_access_rules": [rules[0], rules[2]]})
    harness.run_kit(narrowed).assert_ok()
    lap("deploy narrowed, registry_ldap unset")
    harness.run_kit(narrowed).assert_no_changes()
    lap("rerun narrowed")
    assert docker(f"docker login -u reader --password-stdin {ADDRESS}",
                  stdin="scale-reader-password").returncode != 0
    assert docker(f"docker login -u reader --password-stdin {ADDRESS}",
                  stdin="scale-reader-password-2").returncode == 0
    assert refused(docker(f"docker rmi -f {ADDRESS}/scale/app:3 >/dev/null; "
                          f"docker pull {ADDRESS}/scale/app:3"))
    assert containers() == started
    docker(f"docker logout {ADDRESS}")
    assert [_token_status("dana", dana) for _ in range(2)] == [401, 401]
    for name in (REP1, REP2):
        left = harness.ssh(name, "ls /etc/registry-kit/token/").stdout.split()
        assert "ldap.password" not in left and "ldap-ca.crt" not in left, (name, left)
    lap("narrowed checks")


# --- Every lifecycle operation under a client load (tests/e2e/clientload.py) ----------------

# Failed requests (pulls of the docker CLI and skopeo, pushes, logins) allowed per
# operation: 0 wherever the kit reaches it; any other figure is what was measured, with its
# cause in the README's "What clients see during each operation". A replica host that goes
# down unannounced cuts the connections it holds, whatever request they carry: seen, one in
# each run, a pull's or a token request's EOF through haproxy's TCP passthrough, and a
# push's `POST .../blobs/uploads/: EOF` (haproxy sends a refused connection elsewhere, an
# established one it cannot). The kit cannot drain a host that just dies; the two clients'
# loops may each have a request on it.
REQUESTS_MAY_FAIL: dict[str, int] = {"one replica rebooted": 2}


def _load(scale: Scale) -> clientload.ClientLoad:
    """Both clients through the load balancer: the client host's docker CLI (push, pull,
    login, /v2/ probe) and the control machine's skopeo pulls."""
    control = clientload.ControlPulls(IMAGE, domain=DOMAIN, ip=harness.host_ip(LB),
                                      address=ADDRESS, user=USER, password=scale.password)
    return clientload.ClientLoad(CLIENT, ADDRESS, USER, scale.password, IMAGE, control=control)


def _record_load(scale: Scale, load: clientload.ClientLoad) -> None:
    figures = load.figures()
    scale.figures.setdefault("operations_under_load", {}).update(figures)
    print("\nwhat clients saw:\n" + json.dumps(figures, indent=1))


def _assert_load(scale: Scale, load: clientload.ClientLoad) -> None:
    for name, _, _ in load.windows:
        figures = scale.figures["operations_under_load"][name]
        assert figures["pull"]["requests"] + figures["control_pull"]["requests"] >= 2, figures
        failed = clientload.failed(figures, "pull", "control_pull", "push", "login")
        assert failed <= REQUESTS_MAY_FAIL.get(name, 0), (name, figures)


def _renew_certificate() -> None:
    """Renewal as the kit does it when a certificate nears its end: the stored one is
    gone, the next run issues a new one (same key, same CA)."""
    (harness.STATE_DIR / "servers" / DOMAIN / "server.crt").unlink()


def _rotate_ca() -> None:
    shutil.rmtree(harness.STATE_DIR / "ca")  # the deliberate way to start a new CA


def _reboot(name: str) -> None:
    """A replica host rebooted (its lab container restarted: systemd stops every unit), until
    its registry answers again and haproxy has it UP."""
    subprocess.run(["docker", "restart", "-t", "20", lab_api.get_config().container(name)],
                   check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 120
    while harness.curl_status(DOMAIN, harness.host_ip(name), PORT) != 401:
        assert time.monotonic() < deadline, f"{name}'s registry did not come back"
        time.sleep(0.5)
    _wait_states({REP1: "UP", REP2: "UP"}, timeout=120)


def test_lifecycle_operations_under_load(scale: Scale) -> None:
    """Every operation the kit performs on the scale-out layout, each applied (and applied
    again: no change) while both clients push, pull and log in through the load balancer:
    access rules changed and a user removed, a user added, a password changed, a config
    change, a TLS certificate renewal, a CA rotation, a redis restart, a replica rebooted,
    a garbage collection (pushes answered 405 in its read-only window are retried), and the
    image downgrade 3 -> 2.8.3 (the upgrade is measured in test_rolling_upgrade_loses_no_pull).
    Backup is for filesystem storage only: on S3 the kit refuses it (the bucket's own tools)."""
    assert scale.image == UPGRADE_IMAGE, "runs after the rolling upgrade"
    extra = harness.write_secret(scale.tmp, "extra.pw", "extra-password-1")
    users = [{"name": USER, "password_file": str(scale.tmp / "pw")}]
    with_extra = [*users, {"name": "extra", "password_file": extra}]
    settings: dict[str, Any] = dict(UPGRADE)
    steps: list[tuple[str, dict[str, Any], Any]] = [
        ("access rules changed, a user removed", {"registry_users": users}, None),
        ("a user added", {"registry_users": with_extra}, None),
        ("a password changed", {}, lambda: harness.write_secret(
            scale.tmp, "extra.pw", "extra-password-2")),
        ("config change (deletes enabled)", GC, None),
        ("TLS certificate renewal", {}, _renew_certificate),
        ("CA rotation", {}, _rotate_ca),
    ]
    load = _load(scale)
    with load:
        for name, changes, before in steps:
            settings.update(changes)
            if before:
                before()
            inventory = scale.inventory(f"load-{len(load.windows)}", **settings)
            with load.window(name):
                run = harness.run_kit(inventory)
            run.assert_ok()
            harness.run_kit(inventory).assert_no_changes()
        with load.window("redis restarted"):
            harness.ssh(CACHE, "systemctl restart redis-server")
        with load.window("one replica rebooted"):
            _reboot(REP2)
        with load.window("garbage collection"):
            gc = harness.run_kit(inventory, "garbage_collect.py")
        gc.assert_ok()
        settings["registry_image"] = BASE_IMAGE
        inventory = scale.inventory("load-downgrade", **settings)
        with load.window(f"image downgrade {UPGRADE_IMAGE} -> {BASE_IMAGE}"):
            run = harness.run_kit(inventory)
        run.assert_ok()
        harness.run_kit(inventory).assert_no_changes()
    scale.image = BASE_IMAGE
    scale.deployed = settings
    _record_load(scale, load)
    gc_window = scale.figures["operations_under_load"]["garbage collection"]
    assert gc_window["push"]["refused_read_only"] >= 1, gc_window  # the window overlapped
    _assert_load(scale, load)


def test_retention_on_shared_s3_with_2_8(scale: Scale) -> None:
    """The same retention scenario on the bucket after the downgrade, both replicas on
    2.8.3 (whose registry has no tag delete API: the tag folders are deleted in storage,
    every replica read-only; see sharedretention's docstring)."""
    assert scale.image == BASE_IMAGE and scale.deployed, "runs after the downgrade"
    for name in (REP1, REP2):
        version = harness.ssh(name, "docker exec registry /bin/registry --version").stdout
        assert "2.8.3" in version, version
    _retention_on_shared_storage(scale, "rt2", scale.deployed)
