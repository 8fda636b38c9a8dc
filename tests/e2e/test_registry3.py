"""Registry 3 (the genuine 3.0.0 binary, served by the lab's upstream as registry:3) on real
lab hosts: a fresh deploy, 2.8.3 -> 3 on the same data, garbage collection on 3.x, broken
3.x rollouts rolled back, the version told by the image's label (or refused), and the
3 -> 2 downgrade the kit allows (README "Running and upgrading to registry 3").

One server (lab-reg, bookworm) and one client with the docker CLI (lab-client1), reset
once for the module; scenarios run in order and share them. Every scenario is applied
twice and the second run must change nothing. Checks use curl, skopeo, openssl and the
docker CLI over SSH, never the kit's code. Skipped, with the lab's reason, when the lab has
no registry 3.0.0 (its binary file is missing).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
import retention_scenario
import yaml
from harness import Run

import lab as lab_api
from lab.images import registry3_available

DOMAIN = "registry.lab"
PORT = 5000
ADDRESS = f"{DOMAIN}:{PORT}"
SERVER = "lab-reg"
CLIENT = "lab-client1"
USER = "ci"
DATA_DIR = "/var/lib/registry-kit/data"
TUTORIAL = f"{ADDRESS}/itmuch/microservice-discovery-eureka:0.0.1"
# Pushed under 2.8.3 before the upgrade (docker v2 and OCI manifests), and under 3.0.0.
BEFORE = {"r3/bb:1": ("library/busybox:latest", None),
          "r3/reg:1": ("library/registry:2", None),
          "r3/bb-oci:1": ("library/busybox:latest", "oci")}
UNDER_3 = {"r3/bb3:1": ("library/busybox:latest", None),
           "r3/reg3-oci:1": ("library/registry:2.8.3", "oci")}
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.manifest.v1+json")
LABELLED = "lab/custom-registry:stable"  # registry:3 re-tagged, with an OCI version label
UNLABELLED = "lab/plain-registry:stable"  # registry:3 re-tagged, nothing tells its version
TIMES: dict[str, float] = {}

pytestmark = pytest.mark.e2e


class Site(harness.OwnStateSite):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory, servers=[SERVER], clients=[CLIENT], user=USER,
                         password="registry3-password-1", times=TIMES, data={
                             "registry_domain": DOMAIN,
                             "registry_port": PORT,
                             "registry_image": "registry:3",
                             "registry_delete_enabled": True,
                             "registry_client_login_user": USER,
                             "registry_verify_timeout": 30,
                         })

    def set(self, **data: Any) -> None:
        for key, value in data.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.write()

    def twice(self, timing: str) -> Run:
        """Apply, then apply again: the second run must change nothing."""
        first = self.run(timing=timing).assert_ok()
        self.run(timing=f"{timing} (again)").assert_no_changes()
        return first

    def skopeo(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return harness.skopeo(args, hosts={DOMAIN: harness.host_ip(SERVER)},
                              auth={ADDRESS: (USER, self.password)})

    def push(self, source: str, reference: str, fmt: str | None = None) -> None:
        proc = self.skopeo(["copy", "--src-tls-verify=false", "--dest-cert-dir",
                            str(self.certs), *(["--format", fmt] if fmt else []),
                            harness.upstream_source(source), f"docker://{ADDRESS}/{reference}"])
        assert proc.returncode == 0, proc.stderr

    def digest(self, reference: str) -> str:
        proc = self.skopeo(["inspect", "--cert-dir", str(self.certs),
                            f"docker://{ADDRESS}/{reference}"])
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["Digest"])

    def pull(self, reference: str) -> None:
        """Every blob of the image, fetched and checked against its digest by skopeo."""
        with tempfile.TemporaryDirectory() as tmp:
            proc = self.skopeo(["copy", "--src-cert-dir", str(self.certs),
                                f"docker://{ADDRESS}/{reference}", f"dir:{tmp}/image"])
        assert proc.returncode == 0, proc.stderr

    def curl(self, path: str, *, method: str = "GET", user: bool = True,
             headers: tuple[str, ...] = ()) -> tuple[int, str]:
        args = ["-s", "-i", "-w", "\n%{http_code}", "--max-time", "10", "-X", method,
                "--resolve", f"{DOMAIN}:{PORT}:{harness.host_ip(SERVER)}",
                "--cacert", str(self.certs / "ca.crt")]
        for header in headers:
            args += ["-H", header]
        args.append(f"https://{ADDRESS}{path}")
        if user:  # basic credentials, or a token for them under token auth
            out = harness.curl_docker(args, user=USER, password=self.password,
                                      ip=harness.host_ip(SERVER), ca=self.certs / "ca.crt").stdout
        else:
            out = subprocess.run(["curl", *args], capture_output=True, text=True,
                                 timeout=30).stdout
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def tags(self, repository: str) -> list[str]:
        code, text = self.curl(f"/v2/{repository}/tags/list")
        assert code == 200, text
        return sorted(json.loads(text.split("\n\n", 1)[1])["tags"])


def container() -> dict[str, str]:
    fmt = "{{.Id}}|{{.Config.Image}}|{{.State.Status}}|{{.RestartCount}}"
    out = harness.ssh(SERVER, f"docker inspect -f '{fmt}' registry", check=False).stdout.strip()
    if not out:
        return {}
    cid, image, state, restarts = out.split("|")
    return {"id": cid, "image": image, "state": state, "restarts": restarts}


def registry_binary_version() -> str:
    """What the running registry binary says it is (Debian's 2.8.3 says "2.8.3+ds1")."""
    out = harness.ssh(SERVER, "docker exec registry registry --version").stdout
    return out.split()[-1].split("+")[0]


def stderr_position(run: Run, text: str) -> int:
    position = run.stderr.find(text)
    assert position >= 0, f"{text!r} not in the run's output:\n{run.describe()}"
    return position


def snapshot(site: Site, references: list[str]) -> dict[str, Any]:
    """What clients see: the catalog, each repository's tags, each image's digest."""
    code, text = site.curl("/v2/_catalog")
    assert code == 200, text
    seen: dict[str, Any] = {"catalog": sorted(json.loads(text.split("\n\n", 1)[1])
                                              ["repositories"])}
    for repository in sorted({ref.split(":")[0] for ref in references}):
        seen[f"tags {repository}"] = site.tags(repository)
    for reference in references:
        seen[reference] = site.digest(reference)
    return seen


def status_row(run: Run) -> list[str]:
    for line in run.stderr.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == SERVER and len(cells) > 3:
            return cells
    raise AssertionError(f"no status row for {SERVER}:\n{run.stderr[-3000:]}")


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    available, reason = registry3_available()
    if not available or not lab["upstream"].get("registry3", {}).get("available"):
        pytest.skip(reason)
    start = time.monotonic()
    for name in (SERVER, CLIENT):
        # Fresh machines with Docker in (its install is test_deploy's): no registry, no data.
        lab_api.reset_host(name, docker=True)
    site = Site(tmp_path_factory.mktemp("registry3"))
    yield site
    TIMES["module"] = round(time.monotonic() - start, 1)
    print("\nregistry3 timings (s):", json.dumps(TIMES, indent=1))


@pytest.fixture(scope="module")
def pushed(site: Site) -> dict[str, str]:
    """Digests of what scenario (b) pushed, by reference (filled in by that scenario)."""
    return {}


def test_a_fresh_registry3_deploy_tls_htpasswd_and_the_tutorial(site: Site) -> None:
    site.twice("fresh deploy of registry:3 (Docker installed)")
    site.refresh_certs()
    assert container()["image"] == "registry:3"
    assert registry_binary_version() == "3.0.0"
    assert site.curl("/v2/", user=False)[0] == 401
    assert site.curl("/v2/")[0] == 200
    right = site.password
    site.password = "not-the-password"
    assert site.curl("/v2/")[0] == 401
    site.password = right
    # Users, no rules: token auth (registry_auth_mode "auto"), 3.x pinned to ES256.
    config = harness.ssh(SERVER, "cat /etc/registry-kit/config.yml").stdout
    assert "realm: https://registry.lab:5443/token" in config and "- ES256" in config, config
    # TLS: the certificate the server presents is the kit CA's, for the domain.
    served = subprocess.run(
        f"openssl s_client -connect {harness.host_ip(SERVER)}:{PORT} -servername {DOMAIN} "
        f"-CAfile {shlex.quote(str(site.certs / 'ca.crt'))} -verify_return_error </dev/null "
        "2>&1", shell=True, capture_output=True, text=True, timeout=30).stdout
    assert "Verify return code: 0 (ok)" in served, served[-2000:]
    assert harness.ssh(SERVER, "stat -c '%a %U' /etc/registry-kit/auth/htpasswd "
                       "/etc/registry-kit/config.yml").stdout.split() == \
        ["600", "root", "600", "root"]
    # The tutorial, with the client's docker CLI (its login and trust come from the kit).
    out = harness.ssh(CLIENT, " && ".join([
        "docker pull -q busybox >/dev/null",
        f"docker tag busybox {TUTORIAL}",
        f"docker push {TUTORIAL} >/dev/null",
        f"docker rmi {TUTORIAL} >/dev/null",
        f"docker pull -q {TUTORIAL} >/dev/null",
        f"docker run --rm {TUTORIAL} echo hello-from-registry-3"])).stdout
    assert out.strip() == "hello-from-registry-3"
    assert site.tags("itmuch/microservice-discovery-eureka") == ["0.0.1"]
    status = site.run("status.py", timing="status").assert_no_changes()
    row = status_row(status)
    assert row[1:4] == ["registry:3", "3.0.0", "running"], row


def test_a2_metrics_of_registry3(site: Site) -> None:
    """registry_metrics on 3.0: the same http.debug.prometheus keys as 2.8 (config.yml),
    scraped through the kit's filter from the allowed client; the control machine, not in
    registry_metrics_allow, is cut off."""
    reg, port = harness.host_ip(SERVER), 9195
    site.set(registry_metrics=True, registry_metrics_bind=reg,
             registry_metrics_allow=[f"{harness.host_ip(CLIENT)}/32"],
             registry_node_exporter=True, registry_audit_log=True)  # the audit log too
    try:
        site.twice("metrics on")
        _check_node_exporter(reg, port)
        _check_audit_log_on_3(site)
        assert site.curl("/v2/")[0] == 200
        url = f"http://{reg}:{port}/metrics"
        out = harness.ssh(CLIENT, f"curl -sS --max-time 5 {url}").stdout
        assert 'registry_http_requests_total{code="200",handler="base",method="get"}' in out, \
            out[:2000]
        denied = subprocess.run(["curl", "-sS", "--max-time", "5", url], capture_output=True,
                                text=True, timeout=30)
        assert denied.returncode != 0 and "# TYPE" not in denied.stdout, denied
    finally:
        site.set(registry_metrics=None, registry_metrics_bind=None, registry_metrics_allow=None,
                 registry_node_exporter=None, registry_audit_log=None)
    site.twice("metrics off")
    # The audit receiver stopped, its unit, script and logrotate snippet gone; the log kept.
    out = harness.ssh(SERVER, "systemctl is-active registry-kit-audit; ls "
                      "/etc/systemd/system/registry-kit-audit.service /usr/local/lib/"
                      "registry-kit/registry-audit-receiver.py /etc/logrotate.d/registry-kit-"
                      "audit 2>&1 | grep -c 'No such file'; test -s /var/log/registry-kit/"
                      "audit.log && echo kept; true").stdout.split()
    assert out == ["inactive", "3", "kept"], out
    assert harness.ssh(SERVER, f"ss -Htln | grep -c ':{port} ' || true").stdout.strip() == "0"
    # The node exporter stopped and disabled, the kit's drop-in gone.
    out = harness.ssh(SERVER, "systemctl is-active prometheus-node-exporter; systemctl "
                      f"is-enabled prometheus-node-exporter; ls {NODE_EXPORTER_DIR} 2>&1; "
                      "ss -Htln | grep -c ':9100 '; true").stdout.split("\n")
    assert out[0] == "inactive" and out[1] == "disabled" and "No such file" in out[2] and \
        out[3] == "0", out


NODE_EXPORTER_DIR = "/etc/systemd/system/prometheus-node-exporter.service.d"


def _check_audit_log_on_3(site: Site) -> None:
    """registry_audit_log on 3.0 (sharing the metrics deploy): a push (skopeo from the
    control machine) and a delete of its manifest by digest through the API, each once in
    the receiver's file with the user, the tag or digest and the control machine's address;
    the same lines in its journal; status shows them."""
    site.push("library/busybox:latest", "r3/audit:1")
    digest = site.digest("r3/audit:1")
    assert site.curl(f"/v2/r3/audit/manifests/{digest}", method="DELETE")[0] == 202
    deadline = time.monotonic() + 30  # the registry posts its events after it answered
    while True:
        text = harness.ssh(SERVER, "cat /var/log/registry-kit/audit.log 2>/dev/null; "
                           "true").stdout
        entries = [e for e in map(json.loads, text.splitlines())
                   if e["repository"] == "r3/audit"]
        if any(e["action"] == "delete" for e in entries) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    address = harness.ssh(SERVER, "ip -4 route show default").stdout.split()[2]
    pushes = [e for e in entries if e["action"] == "push"]
    deletes = [e for e in entries if e["action"] == "delete"]
    assert [(e["user"], e["reference"], e["digest"], e["address"]) for e in pushes] == \
        [(USER, "1", digest, address)], entries
    assert [(e["user"], e["digest"], e["address"]) for e in deletes if e["digest"]] == \
        [(USER, digest, address)], entries
    # 3.0 also tells the tag the delete took away (as 2.8 does): the tag, no digest.
    assert [(e["user"], e["reference"]) for e in deletes if not e["digest"]] == \
        [(USER, "1")], entries
    journal = harness.ssh(SERVER, "journalctl -u registry-kit-audit -o cat --no-pager").stdout
    assert all(json.dumps(e) in journal for e in entries), (entries, journal[-3000:])
    status = site.run("status.py", timing="status (audit)").assert_no_changes()
    shown = status.stdout + status.stderr
    assert f"audit ({SERVER}): the last " in shown and \
        f"{'push':7} {USER} from {address}  r3/audit:1@{digest}" in shown, shown[-3000:]


def _check_node_exporter(reg: str, port: int) -> None:
    """registry_node_exporter: Debian's node exporter on the server's loopback, served on
    /node/metrics of the metrics endpoint to the allowed client only."""
    url = f"http://{reg}:{port}/node/metrics"
    out = harness.ssh(CLIENT, f"curl -sS --max-time 5 {url}").stdout
    assert "\nnode_filesystem_size_bytes{" in out, out[:2000]
    denied = subprocess.run(["curl", "-sS", "--max-time", "5", url], capture_output=True,
                            text=True, timeout=30)
    assert denied.returncode != 0 and "# TYPE" not in denied.stdout, denied
    listening = harness.ssh(SERVER, "ss -Htln").stdout.split()
    assert "127.0.0.1:9100" in listening and not [word for word in listening if word in (
        "0.0.0.0:9100", "*:9100", "[::]:9100")], listening


def test_b_upgrade_2_8_3_to_3_keeps_images_and_digests(site: Site,
                                                        pushed: dict[str, str]) -> None:
    # Start over as a 2.8.3 registry: the kit's teardown with purge, then deploy 2.8.3.
    site.run("teardown.py", "--data", "registry_purge_data=True").assert_ok()
    assert harness.ssh(SERVER, f"test -e {DATA_DIR}", check=False).returncode == 1
    site.set(registry_image="registry:2.8.3")
    site.twice("deploy registry:2.8.3")
    assert registry_binary_version() == "2.8.3"
    for reference, (source, fmt) in BEFORE.items():
        site.push(source, reference, fmt)
    before = snapshot(site, list(BEFORE))
    pushed.update({ref: before[ref] for ref in BEFORE})
    old = container()
    config_before = yaml.safe_load(harness.ssh(SERVER, "cat /etc/registry-kit/config.yml").stdout)

    site.set(registry_image="registry:3")
    run = site.twice("upgrade 2.8.3 -> 3")
    stderr_position(run, "registry 2 -> 3 (registry:2.8.3 -> registry:3): an upgrade")
    assert sorted(dict(run.changed)["Start or replace the registry container"]) == [SERVER]
    # Token auth (users): 3.x's config.yml also pins the signing algorithm, nothing else.
    assert dict(run.changed)["Upload the registry config.yml"] == [SERVER]
    config = yaml.safe_load(harness.ssh(SERVER, "cat /etc/registry-kit/config.yml").stdout)
    assert config["auth"]["token"].pop("signingalgorithms") == ["ES256"]
    assert config == config_before
    new = container()
    assert new["id"] != old["id"] and (new["image"], new["state"]) == ("registry:3", "running")
    assert registry_binary_version() == "3.0.0"
    assert snapshot(site, list(BEFORE)) == before  # catalog, tags, digests
    for reference in BEFORE:
        site.pull(reference)  # every blob, digest-checked
    harness.ssh(CLIENT, f"docker rmi -f {ADDRESS}/r3/reg:1 >/dev/null 2>&1; "
                f"docker pull -q {ADDRESS}/r3/reg:1 >/dev/null")
    # Pushes under 3 work (also the data for the scenarios below).
    for reference, (source, fmt) in UNDER_3.items():
        site.push(source, reference, fmt)
        pushed[reference] = site.digest(reference)


def test_c_garbage_collection_on_3(site: Site, pushed: dict[str, str]) -> None:
    code, head = site.curl("/v2/r3/reg/manifests/1", method="HEAD",
                           headers=tuple(f"Accept: {t}" for t in MANIFEST_TYPES))
    assert code == 200
    digest = re.search(r"(?im)^docker-content-digest:\s*(\S+)", head)[1]  # type: ignore[index]
    assert site.curl(f"/v2/r3/reg/manifests/{digest}", method="DELETE")[0] == 202
    du = f"du -sb {DATA_DIR} | cut -f1"
    config_sha = "sha256sum /etc/registry-kit/config.yml | cut -d' ' -f1"
    used_before = int(harness.ssh(SERVER, du).stdout)
    sha_before = harness.ssh(SERVER, config_sha).stdout

    # A push attempt (start of a blob upload) every 0.2 s on the server while
    # garbage_collect.py runs.
    harness.ssh(SERVER, "install -d -m 0700 /run/r3test && install -m 0600 /dev/null "
                "/run/r3test/curlrc && cat > /run/r3test/curlrc",
                stdin=f'user = "{USER}:{site.password}"\n')
    # Token auth (users): a token for the probe's repository from the token server (its
    # password from the curlrc), as Docker asks one, then the upload start with it.
    ca = "/etc/registry-kit/certs/ca.crt"
    token = (f"curl -s --max-time 2 --resolve {DOMAIN}:5443:127.0.0.1 --cacert {ca} "
             f"-K /run/r3test/curlrc 'https://{DOMAIN}:5443/token?service={ADDRESS}"
             "&scope=repository:r3/gc-probe:pull,push' | "
             "sed -n 's/.*\"token\": *\"\\([^\"]*\\)\".*/\\1/p'")
    probe = (f"printf 'Authorization: Bearer %s\\n' \"$({token})\" | "
             f"curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 2 -X POST -H @- "
             f"--resolve {DOMAIN}:{PORT}:127.0.0.1 --cacert {ca} "
             f"https://{ADDRESS}/v2/r3/gc-probe/blobs/uploads/")
    harness.ssh(SERVER, "rm -f /run/r3test/stop /run/r3test/codes; nohup sh -c "
                + shlex.quote(f"while [ ! -e /run/r3test/stop ]; do {probe} "
                              ">> /run/r3test/codes; sleep 0.2; done")
                + " >/dev/null 2>&1 &")
    time.sleep(1)
    run = site.run("garbage_collect.py", timing="gc on registry 3").assert_ok()
    time.sleep(1)
    harness.ssh(SERVER, "touch /run/r3test/stop; sleep 1")
    codes = harness.ssh(SERVER, "cat /run/r3test/codes; rm -rf /run/r3test").stdout.split()
    # Writable, then refused while read-only (405; 000 while it restarts), writable again.
    assert codes[0] == "202" and codes[-1] == "202", codes
    window = codes[codes.index("405"):len(codes) - codes[::-1].index("405")]
    assert set(window) <= {"405", "000"}, codes
    assert "405" in codes and codes.count("202") >= 2

    freed = int(re.search(r"\[lab-reg\]\s+registry-kit: garbage collection freed (\d+) bytes",
                          run.stderr)[1])  # type: ignore[index]
    # The probe's own upload folders (r3/gc-probe) are not what GC freed.
    used_after = int(harness.ssh(SERVER, f"du -sb --exclude=gc-probe {DATA_DIR} | cut -f1")
                     .stdout)
    TIMES["gc freed bytes"] = freed
    assert freed > 1_000_000  # registry:2's layers
    # garbage_collect.py measures while the probe adds a few uploads in its writable moments.
    assert 0 <= (used_before - used_after) - freed < 100_000
    assert harness.ssh(SERVER, config_sha).stdout == sha_before  # back to the deployed file
    assert site.curl(f"/v2/r3/reg/manifests/{digest}")[0] == 404
    for reference in (*BEFORE, *UNDER_3):
        if reference != "r3/reg:1":
            assert site.digest(reference) == pushed[reference]
            site.pull(reference)
    again = site.run("garbage_collect.py", timing="gc on registry 3 (again)").assert_ok()
    stderr_position(again, "[lab-reg]     registry-kit: garbage collection freed 0 bytes")
    site.run().assert_no_changes()


def test_c2_retention_on_3(site: Site) -> None:
    """retention.py on 3.0.0, filesystem storage (tests/e2e/retention_scenario.py)."""
    assert container()["image"] == "registry:3"
    retention_scenario.run_scenario(site, server=SERVER, address=ADDRESS, prefix="rt3",
                                    times=TIMES)
    site.set(registry_retention_rules=None)
    site.run(timing="deploy after retention (rt3)").assert_no_changes()


def _assert_rolled_back(run: Run, before: dict[str, str], new_image: str) -> None:
    assert run.returncode != 0
    assert dict(run.errors)["Start or replace the registry container"] == [SERVER]
    for text in (f"registry-kit: the new registry container ({new_image}) did not become "
                 "healthy", "its last log lines:",
                 "rolled back: the previous registry container (registry:3) is serving"):
        stderr_position(run, text)
    after = container()
    assert (after["id"], after["image"], after["state"]) == \
        (before["id"], "registry:3", "running")
    assert harness.ssh(SERVER, "docker ps -a --format '{{.Names}}'").stdout.split() == \
        ["registry"]


def test_d_broken_3x_rollouts_roll_back(site: Site, pushed: dict[str, str]) -> None:
    before = container()
    # The lab's image that cannot start; its custom tag needs registry_version. (A config.yml
    # the registry refuses never gets this far: the next scenario.)
    site.set(registry_image="registry:broken", registry_version=3)
    for attempt in ("", " (again)"):
        run = site.run(timing=f"broken image rollout{attempt}")
        _assert_rolled_back(run, before, "registry:broken")
        # (Not "exit code 1": caught between two of its restarts, the crash-looping container
        # reads "state running, exit code 0, restarted 3 times" - seen.)
    assert site.digest("r3/bb3:1") == pushed["r3/bb3:1"]
    site.pull("r3/bb3:1")
    # The deployed settings again: the rollback left exactly the deployed state.
    site.set(registry_image="registry:3", registry_version=None)
    site.run().assert_no_changes()
    assert container()["id"] == before["id"]


def test_d_changes_registry3_refuses_never_take_it_down(site: Site,
                                                        pushed: dict[str, str]) -> None:
    """harness.REFUSALS on 3.0.0, a client pulling back to back (skopeo, every blob):
    refused by the proof with 3.0.0's own words, 0 failed pulls, config.yml and container
    unchanged; the deployed settings again change nothing."""
    config = yaml.safe_load(harness.ssh(SERVER, "cat /etc/registry-kit/config.yml").stdout)
    secrets = [config["http"]["secret"], site.password]

    def pull() -> bool:
        site.pull("r3/bb3:1")  # asserts skopeo's success
        return True

    for name, (bad, registry_error) in harness.REFUSALS.items():
        site.set(**bad)
        try:
            harness.assert_refused_and_kept(
                SERVER, functools.partial(site.run, timing=f"refused {name}"), pull,
                registry_error, secrets)
        finally:  # the later tests of this module share the site
            site.set(**{key: None for key in bad})
        site.run().assert_no_changes()
    site.set(**harness.UNRESOLVABLE_REMOTE)
    try:
        harness.assert_refused_before_any_change(
            SERVER, site.run, "nosuch-remote.invalid does not resolve on")
    finally:
        site.set(**{key: None for key in harness.UNRESOLVABLE_REMOTE})
    site.run().assert_no_changes()
    assert site.digest("r3/bb3:1") == pushed["r3/bb3:1"]


def test_e_version_from_the_image_label_or_refused(site: Site) -> None:
    # Two custom tags of registry:3 on the server: one with distribution's release-image
    # label, one with nothing that tells the version.
    harness.ssh(SERVER, "docker rm -f r3-label >/dev/null 2>&1; docker create --name r3-label "
                "registry:3 >/dev/null && docker commit --change "
                "'LABEL org.opencontainers.image.version=3.0.0' r3-label "
                f"{LABELLED} >/dev/null && docker rm r3-label >/dev/null && "
                f"docker tag registry:3 {UNLABELLED}")
    before = container()
    site.set(registry_image=UNLABELLED)
    refused = site.run(timing="unknown version refused")
    assert refused.returncode == 1 and not refused.changed
    line = (f"{SERVER}: setting registry_version=None is not allowed: registry_image "
            f"'{UNLABELLED}' does not tell the registry's major version")
    assert line in refused.stderr, refused.describe()
    assert container()["id"] == before["id"]

    site.set(registry_image=LABELLED)
    run = site.twice("version from the image label")
    assert dict(run.changed)["Start or replace the registry container"] == [SERVER]
    assert container()["image"] == LABELLED and registry_binary_version() == "3.0.0"
    site.set(registry_version=2)  # contradicts the label: refused, nothing touched
    conflict = site.run()
    assert conflict.returncode == 1 and not conflict.changed
    assert (f"{SERVER}: setting registry_version=2 is not allowed: registry_version=2 says "
            f"registry 2, {LABELLED}'s label org.opencontainers.image.version=3.0.0 says 3"
            ) in conflict.stderr, conflict.describe()
    site.set(registry_version=None)


def test_f_downgrade_3_to_2_is_allowed_and_serves_everything(site: Site,
                                                             pushed: dict[str, str]) -> None:
    references = [ref for ref in (*BEFORE, *UNDER_3) if ref != "r3/reg:1"]  # GC deleted it
    before = snapshot(site, references)
    assert {ref: before[ref] for ref in references} == {ref: pushed[ref] for ref in references}
    site.set(registry_image="registry:2.8.3")
    run = site.twice("downgrade 3 -> 2.8.3")
    # The running container's version came from its image's label (its tag does not tell).
    stderr_position(run, f"registry 3 -> 2 ({LABELLED} -> registry:2.8.3): a downgrade")
    assert container()["image"] == "registry:2.8.3" and registry_binary_version() == "2.8.3"
    assert snapshot(site, references) == before  # catalog, tag sets, digests
    for reference in references:
        site.pull(reference)
    pushed_under_3 = f"{ADDRESS}/r3/bb3:1"  # the client's docker CLI, login and trust
    harness.ssh(CLIENT, f"docker rmi -f {pushed_under_3} >/dev/null 2>&1; docker pull -q "
                f"{pushed_under_3} >/dev/null && docker run --rm {pushed_under_3} true")
    site.push("library/busybox:latest", "r3/after-downgrade:1")  # 2.8.3 writes on 3's data
    status = site.run("status.py").assert_no_changes()
    assert status_row(status)[1:4] == ["registry:2.8.3", "2.8.3", "running"]
    harness.ssh(SERVER, f"docker rmi {LABELLED} {UNLABELLED} >/dev/null")


def test_g_retention_on_2_8(site: Site) -> None:
    """Retention on 2.8.3 (after the downgrade), filesystem storage: the same scenario
    (tests/e2e/retention_scenario.py), beside what registry 3 left, applied by the server's
    own timer service (registry_retention_schedule) instead of retention.py's apply run; a
    deploy without the schedule removes the timer, the runner, its planner and rules."""
    assert container()["image"] == "registry:2.8.3"
    retention_scenario.run_scenario(site, server=SERVER, address=ADDRESS, prefix="rt2",
                                    times=TIMES, scheduled=True)
    site.set(registry_retention_rules=None, registry_retention_schedule=None)
    site.run(timing="deploy without the retention schedule").assert_ok()
    gone = harness.ssh(SERVER, "ls /etc/systemd/system/registry-kit-retention.service "
                       "/etc/systemd/system/registry-kit-retention.timer "
                       "/usr/local/lib/registry-kit/registry-retention.py "
                       "/usr/local/lib/registry-kit/retention-planner "
                       "/etc/registry-kit/retention.json 2>/dev/null | wc -l; systemctl "
                       "is-active registry-kit-retention.timer || true").stdout.split()
    assert gone == ["0", "inactive"], gone
    # The record stays: status.py's last retention run.
    assert harness.ssh(SERVER, "test -s /etc/registry-kit/last-retention && echo kept"
                       ).stdout.strip() == "kept"
    site.run().assert_no_changes()
