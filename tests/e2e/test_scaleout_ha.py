"""High availability in the lab: the scale-out layout (two replicas on a real Ceph RGW, a
redis cache, one client) with two load balancers sharing a floating address (keepalived,
VRRP on the lab's docker network); the client's domain resolves to that address.

One scenario, step by step: a VRRP password longer than 8 characters is refused before any
host is touched; deploy, then a rerun with zero changes; the first LB in inventory order
holds the address; status shows haproxy's view of each replica, who holds the address and
redis' memory and keys. registry_metrics on every role (applied twice): status --json and
every endpoint scraped from the allowed client, and each LB's gauge of whether it holds the
address, against ip, before and after a handover; the audit log there too (a push, a delete
through the web page and a push with a wrong password, all through the address). A planned
haproxy change
(registry_lb_stats moved, then back) under a back-to-back pull loop: each LB reloads in
place, the address stays, no pull fails. The web
page through the domain and the address, with each replica host stopped in turn. Then
failover under the pull loop: haproxy stopped on the LB holding the address, haproxy back,
haproxy killed, the whole LB host killed, the host back; the address moves each time and
settles on the first LB without flapping; failed pulls, the longest gap between pulls and
the time until /v2/ answers again through the domain are measured per event. Then VRRPv3
with 0.5 s adverts (applied through the kit's handover under the pull loop, a rerun changes
nothing): the whole holder host killed, the other LB is MASTER within 2 s; the host back,
the address returns once. A keepalived.conf change that keeps the VRRP instance (VRRPv3's
advert interval) under the pull loop: keepalived reloads in place, no state change, the
address never leaves the first LB (ip sampled on both every 0.1 s), no pull fails; then
the module's VRRPv2 again (a version switch: the handover, figures recorded). Finally
teardown.py --limit the holder under the pull loop (the address must move: figures
recorded), then a teardown over every role (twice: the second changes nothing) leaves no
kit file, unit or config on any host, and a deploy afterwards serves the old image again.
Checked with curl, docker, ip, systemctl, journalctl and stat on the hosts, never with the
kit's own code. Figures go to <lab state dir>/ha-figures.json.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import prometheus_lab
import pytest

import lab as lab_api
from lab import ceph
from lab import state as lab_state
from lab.topology import HostSpec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REP1, REP2, LB1, LB2, CACHE, CLIENT = ("lab-rep1", "lab-rep2", "lab-lb", "lab-lb2",
                                       "lab-cache", "lab-sclient")
SPECS = [HostSpec(REP1, "bookworm-docker", groups=("registry_servers",)),
         HostSpec(REP2, "bookworm-docker", groups=("registry_servers",)),
         HostSpec(LB1, "bookworm", groups=("registry_lb",)),
         HostSpec(LB2, "bookworm", groups=("registry_lb",)),
         HostSpec(CACHE, "bookworm", groups=("registry_cache",)),
         HostSpec(CLIENT, "bookworm-docker", groups=("registry_clients",))]
KIT_HOSTS = [spec.name for spec in SPECS]
DOMAIN = "registry.ha.lab"
PORT = 5000
WEBUI_PORT = 5444
ADDRESS = f"{DOMAIN}:{PORT}"
USER = "ha"
IMAGE = f"{ADDRESS}/ha/random:1"
VRRP_PASSWORD = "Vr7-k2Qz"  # 8 characters, VRRP's limit
LOOP_SECONDS = 420  # the pull loop's own bound; stopped as soon as the failover steps end
KEEP_ENV = "REGISTRY_KIT_HA_KEEP"


@dataclass
class Ha:
    tmp: Path
    ceph: dict[str, Any]
    bucket: str
    password: str
    vip: str
    figures: dict[str, Any] = field(default_factory=dict)

    def inventory(self, name: str, **overrides: Any) -> Path:
        state = lab_state.load()
        data = {**harness.lab_site_data(),
                "registry_domain": DOMAIN, "registry_port": PORT,
                "registry_image": "registry:2.8.3",
                "registry_users": [{"name": USER, "password_file": str(self.tmp / "pw")}],
                "registry_client_login_user": USER,
                "registry_client_hosts_entries": {DOMAIN: self.vip},
                "registry_storage": {"driver": "s3", "bucket": self.bucket,
                                     "region": self.ceph["region"],
                                     "regionendpoint": self.ceph["endpoint"],
                                     "accesskey_file": self.ceph["access_key_file"],
                                     "secretkey_file": self.ceph["secret_key_file"]},
                "registry_storage_redirect_disabled": True,
                "registry_lb_stats": "127.0.0.1:8404",
                "registry_webui_enabled": True,
                "registry_lb_vip": f"{self.vip}/24",
                "registry_lb_vrrp_password": {"file": str(self.tmp / "vrrp")},
                **overrides}

        def entries(*names: str) -> list[Any]:
            return [harness.host_entry(n, {**data, "registry_internal_address":
                                           state["hosts"][n]["ip"]}) for n in names]

        path = self.tmp / f"{name}.py"
        path.write_text("# Written by tests/e2e/test_scaleout_ha.py.\n"
                        f"registry_servers = {entries(REP1, REP2)!r}\n"
                        f"registry_lb = {entries(LB1, LB2)!r}\n"
                        f"registry_cache = {entries(CACHE)!r}\n"
                        f"registry_clients = {entries(CLIENT)!r}\n")
        return path


def _s3cmd(command: str) -> str:
    return harness.ssh(ceph.CEPH_HOST, f"s3cmd {command}").stdout


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ha]:
    info = ceph.ceph_up()
    for spec in SPECS:
        lab_api.remove_host(spec.name)
    lab_api.up(SPECS)
    bucket = f"ha-{secrets.token_hex(4)}"
    _s3cmd(f"mb s3://{bucket}")
    tmp = tmp_path_factory.mktemp("ha")
    password = f"ha-{secrets.token_hex(8)}"
    harness.write_secret(tmp, "pw", password)
    harness.write_secret(tmp, "vrrp", VRRP_PASSWORD)
    # A free address of the lab's network: hosts get .11 upwards, the upstream .2.
    subnet = ipaddress.ip_network(lab_api.get_config().subnet)
    vip = str(subnet.network_address + 250)
    run = Ha(tmp=tmp, ceph=info, bucket=bucket, password=password, vip=vip)
    yield run
    out = lab_api.get_config().state_dir / "ha-figures.json"
    out.write_text(json.dumps(run.figures, indent=2) + "\n")
    print(f"\nHA figures ({out}):\n{json.dumps(run.figures, indent=2)}")
    if os.environ.get(KEEP_ENV):
        return
    _s3cmd(f"rb --recursive s3://{bucket}")
    for spec in SPECS:
        lab_api.remove_host(spec.name)


def _holder(vip: str, lbs: tuple[str, ...] = (LB1, LB2)) -> list[str]:
    """The LBs that have the address on an interface now (ip, on each host)."""
    return [name for name in lbs
            if harness.ssh(name, f"ip -o -4 addr show to {vip}/32", check=False).stdout.strip()]


def _wait_holder(vip: str, wanted: str, timeout: float = 40,
                 lbs: tuple[str, ...] = (LB1, LB2)) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _holder(vip, lbs) == [wanted]:
            return time.monotonic() - started
        time.sleep(0.3)
    raise AssertionError(f"{vip} is on {_holder(vip, lbs)}, not on {wanted}")


def test_a_long_vrrp_password_is_refused_before_any_change(ha: Ha) -> None:
    long_password = harness.write_secret(ha.tmp, "vrrp-long", "nine-char")
    refused = harness.run_kit(ha.inventory("long", registry_lb_vrrp_password={
        "file": long_password}))
    assert refused.returncode != 0
    line = (f"{REP1}: setting registry_lb_vrrp_password='***' is not allowed: 1 to 8 "
            "characters (VRRP's limit)")
    assert line in refused.stderr, refused.stderr[-2000:]
    assert "nine-char" not in refused.stdout + refused.stderr
    untouched = harness.ssh(LB1, "command -v haproxy keepalived; ls /etc/keepalived "
                            "2>/dev/null; true").stdout
    assert untouched == ""


def test_deploy_then_rerun_changes_nothing(ha: Ha) -> None:
    started = time.monotonic()
    first = harness.run_kit(ha.inventory("deploy")).assert_ok()
    ha.figures["first_deploy_seconds"] = round(time.monotonic() - started, 1)
    assert first.changed
    assert VRRP_PASSWORD not in first.stdout + first.stderr
    started = time.monotonic()
    again = harness.run_kit(ha.inventory("deploy")).assert_no_changes()
    ha.figures["rerun_seconds"] = round(time.monotonic() - started, 1)
    assert VRRP_PASSWORD not in again.stdout + again.stderr
    # The first LB in inventory order holds the address; the domain answers through it.
    ha.figures["vip"] = ha.vip
    _wait_holder(ha.vip, LB1)
    assert harness.curl_status(DOMAIN, ha.vip, PORT) == 401
    assert harness.curl_status(DOMAIN, ha.vip, PORT, user=USER, password=ha.password) == 200
    for name, priority in ((LB1, 200), (LB2, 190)):
        out = harness.ssh(name, "stat -c '%a %U %G' /etc/keepalived/keepalived.conf; "
                          "grep -E '^ *(priority|auth_pass|interface) ' "
                          "/etc/keepalived/keepalived.conf; systemctl is-active keepalived "
                          "haproxy").stdout.split("\n")
        assert out[0] == "600 root root", out
        assert f"priority {priority}" in [line.strip() for line in out], out
        assert f"auth_pass {VRRP_PASSWORD}" in [line.strip() for line in out], out
        assert "interface eth0" in [line.strip() for line in out], out
        assert out[-3:-1] == ["active", "active"], out
    # The client's domain is the floating address.
    assert f"{ha.vip} {DOMAIN}" in harness.ssh(CLIENT, "cat /etc/hosts").stdout


def test_status_shows_every_role(ha: Ha) -> None:
    image_id = harness.ssh(CLIENT, f"head -c 3000000 /dev/urandom > /tmp/data && tar -C /tmp "
                           f"-c data | docker import - {IMAGE} && docker push -q {IMAGE} "
                           ">/dev/null").stdout.strip()
    assert image_id.startswith("sha256:")
    ha.figures["image_id"] = image_id
    run = harness.run_kit(ha.inventory("deploy"), "status.py").assert_no_changes()
    text = run.stderr + run.stdout
    lines = {line.split()[0] if line.split() else "": line
             for line in (raw.split("]", 1)[-1].strip() for raw in text.splitlines())}
    assert f"{REP1} UP, {REP2} UP" in lines[LB1] and f"{REP1} UP" in lines[LB2], text[-3000:]
    assert f"holds {ha.vip}" in lines[LB1] and "backup" in lines[LB2], text[-3000:]
    # The push put blob descriptors into redis: a key count above zero and memory in use.
    cache_words = lines[CACHE].split()  # cache, redis, memory, keys, metrics
    assert cache_words[1] == "active" and int(cache_words[3]) > 0, lines[CACHE]
    assert cache_words[4:] == ["off"] and lines[LB1].endswith("  off"), text[-3000:]
    assert cache_words[2].endswith(("K", "M")), lines[CACHE]


METRICS_PORT = 9195
SCRAPE = "rm -f /tmp/scrape; curl -sS -o /tmp/scrape -w '%{http_code}' --max-time 5 "


def _scrape(name: str, url: str) -> tuple[str, str]:
    """(HTTP code, body) of a GET from a lab host ('000' or '': no answer)."""
    code = harness.ssh(name, SCRAPE + url, check=False).stdout
    return code, harness.ssh(name, "cat /tmp/scrape 2>/dev/null; true").stdout


def _status_json(inventory: Path) -> dict[str, Any]:
    proc = subprocess.run([harness.PYINFRA, "-y", "--data", "registry_status_json=True",
                           str(inventory), "status.py"], cwd=harness.ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _check_status_json(ha: Ha, doc: dict[str, Any]) -> None:
    """Every role's facts against the hosts: ip, systemctl, redis-cli, haproxy's metrics;
    every metrics endpoint listed is scraped from the client (200) and the state of its
    units is systemctl's."""
    holders = _holder(ha.vip)
    urls: list[str] = []
    assert doc["address_holders"] == holders == [LB1], doc["address_holders"]
    for name in (LB1, LB2):
        facts = doc["load_balancers"][name]
        active = harness.ssh(name, "systemctl is-active haproxy keepalived registry-kit-facts; "
                             "true").stdout
        assert [facts["haproxy"], facts["keepalived"], "active"] == active.split(), \
            (facts, active)
        assert facts["address"] == ha.vip and facts["holds_address"] == (name in holders)
        assert facts["replicas"] == {REP1: "UP", REP2: "UP"}, facts
        url = f"http://{harness.host_ip(name)}:{METRICS_PORT}"
        assert facts["metrics"] == {"haproxy": f"{url}/metrics", "facts": f"{url}/kit/metrics"}
        assert facts["metrics_state"] == {"haproxy": "active", "facts": "active"}, facts
        urls += facts["metrics"].values()
        code, body = _scrape(CLIENT, facts["metrics"]["haproxy"])
        assert code == "200", code
        for rep in (REP1, REP2):  # haproxy's own view, through its exporter
            assert f'haproxy_server_status{{proxy="registry",server="{rep}",state="UP"}} 1' \
                in body, body[:3000]
    redis = harness.ssh(CACHE, "systemctl is-active redis-server; REDISCLI_AUTH=\"$(sed -n "
                        "'s/^requirepass //p' /etc/redis/redis.conf)\" redis-cli "
                        "--no-auth-warning dbsize; systemctl is-active registry-kit-metrics "
                        "prometheus-redis-exporter; true").stdout.split()
    cache = doc["caches"][CACHE]
    assert [cache["redis"], str(cache["keys"]), "active", "active"] == redis and \
        cache["memory"], (cache, redis)
    assert cache["metrics"] == {
        "redis": f"http://{harness.host_ip(CACHE)}:{METRICS_PORT}/redis/metrics"}
    assert cache["metrics_state"] == {"redis": "active"}, cache
    urls += cache["metrics"].values()
    for name in (REP1, REP2):
        facts = doc["servers"][name]
        state = harness.ssh(name, "docker inspect -f '{{.State.Status}}' registry; systemctl "
                            "is-active registry-kit-metrics registry-kit-facts; true").stdout
        assert [facts["state"], "active", "active"] == state.split() and \
            facts["healthy"] is True, (facts, state)
        assert facts["storage"] == {"driver": "s3", "bytes": None, "repositories": None,
                                    "tags": None}
        url = f"http://{harness.host_ip(name)}:{METRICS_PORT}"
        assert facts["metrics"] == {"registry": f"{url}/metrics", "facts": f"{url}/kit/metrics"}
        assert facts["metrics_state"] == {"registry": "active", "facts": "active"}, facts
        urls += facts["metrics"].values()
    assert doc["clients"][CLIENT]["login"] == f"yes ({USER})"
    # Every endpoint status lists answers the allowed client (one curl per URL, one ssh).
    codes = harness.ssh(CLIENT, " ".join(
        f"curl -s -o /dev/null -w '%{{http_code}} ' --max-time 5 '{u}';"
        for u in urls), check=False).stdout.split()
    assert len(urls) == 9 and codes == ["200"] * 9, (urls, codes)


def _holds_address(ha: Ha) -> dict[str, list[str]]:
    """Each LB's registry_kit_lb_holds_address lines, scraped from the allowed client."""
    lines = {}
    for name in (LB1, LB2):
        code, body = _scrape(CLIENT, f"http://{harness.host_ip(name)}:{METRICS_PORT}"
                             "/kit/metrics")
        assert code == "200", (name, code, body[:500])
        lines[name] = [line for line in body.splitlines()
                       if line.startswith("registry_kit_lb_holds_address")]
    return lines


def _check_holds_address(ha: Ha, holder: str) -> None:
    """The gauge is 1 on the LB that has the address (ip on each LB) and 0 on the other."""
    _wait_holder(ha.vip, holder)
    seen = _holds_address(ha)
    assert _holder(ha.vip) == [holder]  # it did not move meanwhile
    assert seen == {name: [f'registry_kit_lb_holds_address{{address="{ha.vip}"}} '
                           f"{int(name == holder)}"] for name in (LB1, LB2)}, seen


def test_status_json_and_metrics_of_every_role(ha: Ha) -> None:
    """registry_metrics on every role, applied twice; status --json checked against the
    hosts; metrics scraped from the allowed client, refused to another host, absent on the
    public address; each LB says whether it holds the floating address, before and after a
    handover (keepalived stopped on the holder, then started); the audit log on both
    replicas (the same deploy); turned off again, nothing listens, the audit receiver is
    gone and its log stays."""
    allowed = harness.host_ip(CLIENT)
    # The control machine too: a real Prometheus scrapes every role from there.
    inventory = ha.inventory("metrics", registry_metrics=True,
                             registry_metrics_allow=[
                                 f"{allowed}/32", f"{prometheus_lab.control_address(REP1)}/32"],
                             registry_prometheus_interval=prometheus_lab.INTERVAL,
                             # The audit log shares this deploy (a delete needs deletes on).
                             registry_audit_log=True, registry_delete_enabled=True)
    harness.run_kit(inventory).assert_ok()
    try:
        harness.run_kit(inventory).assert_no_changes()
        _check_status_json(ha, _status_json(inventory))
        _check_redis_exporter()
        _check_audit_log_on_the_ha_layout(ha, inventory)
        code, body = _scrape(CLIENT, f"http://{harness.host_ip(REP1)}:{METRICS_PORT}/metrics")
        assert code == "200" and "registry_http_requests_total" in body, (code, body[:2000])
        facts = f"http://{harness.host_ip(LB1)}:{METRICS_PORT}/kit/metrics"
        assert _scrape(CLIENT, f"-X POST {facts}")[0] == "403"  # GET only
        for target, path in ((LB1, "/metrics"), (LB1, "/kit/metrics"), (REP1, "/metrics")):
            url = f"http://{harness.host_ip(target)}:{METRICS_PORT}{path}"
            assert _scrape(LB2, url) == ("000", ""), url  # another lab host is cut off
        # The public address (passthrough to a replica) has no metrics.
        code, body = _scrape(CLIENT, f"-k https://{ha.vip}:{PORT}/metrics")
        assert code != "200" and "# TYPE" not in body, (code, body[:500])
        _prometheus_on_the_ha_layout(ha)
    finally:
        harness.run_kit(ha.inventory("deploy")).assert_ok()
    for name in (LB1, LB2, REP1, CACHE):  # nor the facts server (on the loopback)
        assert harness.ssh(name, f"ss -Htln | grep -Ec ':({METRICS_PORT}|9196) ' || true")\
            .stdout.strip() == "0", name
    assert "frontend metrics" not in harness.ssh(LB1, "cat /etc/haproxy/haproxy.cfg").stdout
    assert harness.ssh(LB2, "ls /etc/systemd/system /usr/local/lib/registry-kit | "
                       "grep -c facts || true").stdout.strip() == "0"
    _wait_holder(ha.vip, LB1)  # back on the first LB after the handover above
    _check_redis_exporter_gone()
    _check_audit_log_gone(ha)


REGISTRY_DOWN_FOR = 60  # RegistryDown's `for:` (registry_kit/render/prometheus.py)
REDIS_EXPORTER_DIR = "/etc/systemd/system/prometheus-redis-exporter.service.d"


def _check_redis_exporter() -> None:
    """Debian's redis exporter on the cache (registry_metrics): redis_up 1 through the
    cache's metrics endpoint from the allowed client, cut off for another host; the
    exporter on the loopback only; redis' password in no process' arguments, in a root-only
    file, not in the scrape."""
    url = f"http://{harness.host_ip(CACHE)}:{METRICS_PORT}/redis/metrics"
    code, body = _scrape(CLIENT, url)
    assert code == "200" and "\nredis_up 1\n" in body, (code, body[:2000])
    assert _scrape(LB2, url) == ("000", "")
    listening = harness.ssh(CACHE, "ss -Htln").stdout.split()
    assert "127.0.0.1:9121" in listening and not [word for word in listening if word in (
        "0.0.0.0:9121", "*:9121", "[::]:9121")], listening
    password = harness.ssh(CACHE, "sed -n 's/^requirepass //p' /etc/redis/redis.conf").stdout
    assert password.strip()
    out = harness.ssh(CACHE, f"stat -c '%a %U' {REDIS_EXPORTER_DIR}/registry-kit.env; "
                      "ps -eo args").stdout
    assert out.startswith("600 root\n") and "prometheus-redis-exporter" in out, out
    assert password.strip() not in out + body


def _check_redis_exporter_gone() -> None:
    """registry_metrics off: the kit's drop-in and password file gone, the exporter stopped
    and disabled (the package's own unit would listen on every address)."""
    out = harness.ssh(CACHE, "systemctl is-active prometheus-redis-exporter; systemctl "
                      f"is-enabled prometheus-redis-exporter; ls {REDIS_EXPORTER_DIR} 2>&1; "
                      "ss -Htln | grep -c ':9121 '; true").stdout.split("\n")
    assert out[0] == "inactive" and out[1] == "disabled" and "No such file" in out[2] and \
        out[3] == "0", out


AUDIT_LOG = "/var/log/registry-kit/audit.log"
AUDIT_GONE = ("/etc/systemd/system/registry-kit-audit.service "
              "/usr/local/lib/registry-kit/registry-audit-receiver.py "
              "/etc/logrotate.d/registry-kit-audit")


def _audit_entries(name: str) -> list[dict[str, Any]]:
    text = harness.ssh(name, f"cat {AUDIT_LOG} 2>/dev/null; true").stdout
    return [json.loads(line) for line in text.splitlines()]


def _served_once(found: dict[str, list[dict[str, Any]]], **wanted: Any) -> tuple[str, dict]:
    """The one replica whose audit file has the entry with these fields, and the entry:
    exactly one across both replicas."""
    hits = [(name, entry) for name, entries in found.items() for entry in entries
            if all(entry.get(key) == value for key, value in wanted.items())]
    assert len(hits) == 1, (wanted, found)
    return hits[0]


def _page_delete(ha: Ha, repository: str, digest: str) -> int:
    """DELETE of a manifest by digest through the web page's port on the address, as the
    page sends it (app.js): basic credentials first; token auth answers 401 with its
    challenge in X-Registry-Authenticate, the page asks its own origin's /token, then sends
    the same DELETE with the token. The HTTP status of the last answer."""
    base = ["--resolve", f"{DOMAIN}:{WEBUI_PORT}:{ha.vip}", "--cacert", str(harness.CA_CERT)]
    origin = f"https://{DOMAIN}:{WEBUI_PORT}"
    delete = ["-X", "DELETE", f"{origin}/v2/{repository}/manifests/{digest}"]
    with tempfile.TemporaryDirectory() as tmp:
        basic = Path(tmp) / "basic"  # credentials in a file, not in argv
        basic.write_text(f'user = "{USER}:{ha.password}"\n')
        status, _, headers = harness._curl([*base, "-K", str(basic), *delete])
        challenge = harness.bearer_challenge(headers.replace("x-registry-authenticate:",
                                                             "www-authenticate:"))
        if status != 401 or challenge is None:
            return status
        query = {key: challenge[key] for key in ("service", "scope") if key in challenge}
        status, body, _ = harness._curl([*base, "-K", str(basic),
                                         f"{origin}/token?{urllib.parse.urlencode(query)}"])
    assert status == 200, (status, body)
    return harness._curl([*base, "-H", "@-", *delete],
                         stdin=f"Authorization: Bearer {json.loads(body)['token']}\n")[0]


def _token_counter(name: str, counter: str) -> float:
    """A token server counter from the replica's /kit/metrics (scraped from the client)."""
    code, body = _scrape(CLIENT, f"http://{harness.host_ip(name)}:{METRICS_PORT}/kit/metrics")
    assert code == "200", (name, code, body[:500])
    values = [float(line.split()[-1]) for line in body.splitlines()
              if line.startswith(f"{counter} ") or line.startswith(f"{counter}{{")]
    assert len(values) == 1, (name, counter, body[:3000])
    return values[0]


def _check_audit_log_on_the_ha_layout(ha: Ha, inventory: Path) -> None:
    """registry_audit_log on both replicas (the metrics deploy; token auth, the kit's
    default with users): a push through the floating address (docker on the client), a
    delete through the web page's port on the address (the page's own requests) and a push
    with a wrong password. Each push and delete once across the replicas' audit files, on
    the replica that served it, with the user, the repository, the tag or digest and an
    address (for the push the LB that passed it on: TLS passthrough hides the client; for
    the page the replica's Docker bridge); the same lines in that replica's journal and in
    status. The refused push: no push line, a `denied` line (login failed) from a token
    server, counted in its failed-logins counter. No password of the layout under /var/log
    or in the journal of either replica."""
    repository = f"ha/audit-{secrets.token_hex(3)}"  # this run's own: counts are exact
    image = f"{ADDRESS}/{repository}"
    pushed = harness.ssh(CLIENT, f"head -c 200000 /dev/urandom > /tmp/audit && tar -C /tmp -c "
                         f"audit | docker import - {image}:1 >/dev/null && docker push -q "
                         f"{image}:1 >/dev/null && docker inspect -f "
                         "'{{index .RepoDigests 0}}' " f"{image}:1").stdout.strip()
    digest = pushed.partition("@")[2]
    assert digest.startswith("sha256:"), pushed
    # The same image pushed again with a wrong password (skopeo: Docker retries a refused
    # layer upload for 50 s), from a copy on the control machine.
    with tempfile.TemporaryDirectory() as copy:
        hosts = {DOMAIN: ha.vip}
        harness.skopeo(["copy", "--src-cert-dir", "@CERTS@", f"docker://{image}:1",
                        f"dir:{copy}"], hosts=hosts, auth={ADDRESS: (USER, ha.password)},
                       timeout=60).check_returncode()
        refused = harness.skopeo(["copy", "--dest-cert-dir", "@CERTS@", f"dir:{copy}",
                                  f"docker://{image}:refused"], hosts=hosts,
                                 auth={ADDRESS: (USER, f"not-{ha.password}")}, timeout=60)
    assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower(), refused.stderr
    assert _page_delete(ha, repository, digest) == 202
    deadline = time.monotonic() + 30  # the registry posts its events after it answered
    while True:
        found = {name: [e for e in _audit_entries(name) if e["repository"] == repository]
                 for name in (REP1, REP2)}
        if sum(map(len, found.values())) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lb = harness.host_ip(LB1)  # the LB holding the address (its own address, not the VIP)
    push_at, push = _served_once(found, action="push", user=USER, reference="1",
                                 digest=digest)
    assert push["address"] == lb, push
    delete_at, delete = _served_once(found, action="delete", user=USER, reference=None,
                                     digest=digest)
    # 2.8 also tells the tag the delete took away, on the replica that served it.
    assert _served_once(found, action="delete", user=USER, reference="1")[0] == delete_at
    bridge = harness.ssh(delete_at, "ip -4 -o addr show docker0").stdout.split()[3]
    assert delete["address"] == bridge.partition("/")[0], (delete, bridge)
    assert sum(map(len, found.values())) == 3, found  # no push line for the refused push
    # The refused push: the token server that had the request says so (login failed).
    denied: dict[str, list[dict[str, Any]]] = {}
    for name in (REP1, REP2):
        text = harness.ssh(name, "journalctl -u registry-kit-token -o cat --no-pager | "
                           "grep -F 'audit {' || true").stdout
        denied[name] = [entry for entry in (json.loads(line.partition("audit ")[2])
                                            for line in text.splitlines())
                        if entry["repository"] == repository]
    refusals = [entry for entries in denied.values() for entry in entries]
    assert refusals and all(
        (e["action"], e["user"], e["reason"], e["address"]) == ("denied", USER, "login failed",
                                                                lb) and "push" in e["refused"]
        for e in refusals), denied
    for name, entries in denied.items():
        failed = _token_counter(name, "registry_kit_token_failed_logins_total")
        assert failed >= len(entries), (name, failed, entries)
    ha.figures["audit"] = {"push_served_by": push_at, "delete_served_by": delete_at,
                           "push_address": push["address"],
                           "delete_address": delete["address"],
                           "denied_lines": {name: len(e) for name, e in denied.items()}}
    status = harness.run_kit(inventory, "status.py").assert_ok()
    shown = status.stdout + status.stderr
    for name, entries in found.items():
        if not entries:
            continue
        journal = harness.ssh(name, "journalctl -u registry-kit-audit -o cat --no-pager").stdout
        assert all(json.dumps(e) in journal for e in entries), (entries, journal[-3000:])
        assert f"audit ({name}): the last " in shown, shown[-3000:]
    for line in (f"{'push':7} {USER} from {lb}  {repository}:1@{digest}",
                 f"{'delete':7} {USER} from {delete['address']}  {repository}@{digest}",
                 f"{'denied':7} {USER} from {lb}  {repository}"):
        assert line in shown, (line, shown[-3000:])
    assert "refused: login failed)" in shown, shown[-3000:]
    # No password of the layout in any file under /var/log or in the journal.
    redis = harness.ssh(CACHE, "sed -n 's/^requirepass //p' /etc/redis/redis.conf").stdout
    passwords = [ha.password, VRRP_PASSWORD, redis.strip(),
                 Path(ha.ceph["access_key_file"]).read_text().strip(),
                 Path(ha.ceph["secret_key_file"]).read_text().strip()]
    assert all(passwords), "a password of the layout is empty"
    for name in (REP1, REP2):
        out = harness.ssh(name, 'f=$(mktemp) && cat > "$f" && grep -rlaF -f "$f" /var/log; '
                          'journalctl -o cat --no-pager | grep -caF -f "$f"; rm -f "$f"',
                          stdin="\n".join(passwords) + "\n", check=False).stdout
        assert out.split() == ["0"], (name, out)


def _check_audit_log_gone(ha: Ha) -> None:
    """registry_audit_log off again: the receiver stopped, its unit, script and logrotate
    snippet gone from both replicas, nothing on its port; the log stays on the replicas
    that served the events above (a replica that served none has no file)."""
    served = {ha.figures["audit"][key] for key in ("push_served_by", "delete_served_by")}
    for name in (REP1, REP2):
        out = harness.ssh(name, "systemctl is-active registry-kit-audit; "
                          f"ls {AUDIT_GONE} 2>&1 | grep -c 'No such file'; "
                          "ss -Htln | grep -c ':5002 '; "
                          f"test -s {AUDIT_LOG} && echo kept; true").stdout.split()
        assert out == ["inactive", "3", "0", *(["kept"] if name in served else [])], (name, out)


def _prometheus_on_the_ha_layout(ha: Ha) -> None:
    """A real Prometheus on the kit's folder for this layout: every target of every role up,
    no alert active; one replica's registry stopped makes RegistryDown fire for that replica
    alone within its `for:` (a minute) and two scrapes, and it resolves once the registry
    runs again. Meanwhile (sharing that minute) the address is handed over and back, which
    each LB's gauge follows and which fires neither address rule."""
    with prometheus_lab.running() as port:
        jobs = prometheus_lab.wait_targets_up(port)
        assert jobs >= {"registry-kit-registry", "registry-kit-facts", "registry-kit-haproxy",
                        "registry-kit-redis", "registry-kit-lb-facts"}
        hosts = {t["labels"]["host"] for t in prometheus_lab.api(
            port, "/api/v1/targets")["activeTargets"]}
        assert hosts >= {REP1, REP2, LB1, LB2, CACHE}, hosts
        # One evaluation after every target was scraped: nothing to say about the layout.
        time.sleep(2 * prometheus_lab.INTERVAL)
        assert prometheus_lab.api(port, "/api/v1/alerts")["alerts"] == []

        def down_hosts(state: str) -> list[str]:
            return [a["labels"]["host"] for a in prometheus_lab.api(
                port, "/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "RegistryDown" and a["state"] == state]

        harness.ssh(REP1, "docker stop registry >/dev/null")
        stopped = time.monotonic()
        try:
            _check_holds_address(ha, LB1)
            harness.ssh(LB1, "systemctl stop keepalived")  # a priority-0 advert: LB2 takes it
            _check_holds_address(ha, LB2)
            harness.ssh(LB1, "systemctl start keepalived")  # it comes back (checked below)
            prometheus_lab.wait(lambda: down_hosts("firing") == [REP1],
                                max(0.0, REGISTRY_DOWN_FOR + 3 * prometheus_lab.INTERVAL + 10
                                    - (time.monotonic() - stopped)),
                                f"RegistryDown firing for {REP1} only")
            ha.figures["RegistryDown firing after (s)"] = round(time.monotonic() - stopped, 1)
            assert down_hosts("pending") == []
        finally:
            harness.ssh(REP1, "docker start registry >/dev/null")
        # The handover never held the address on none or two LBs for the rules' `for:`.
        fired = prometheus_lab.api(port, "/api/v1/query?query=" + urllib.parse.quote(
            'count_over_time(ALERTS{alertname=~"AddressOn.*",alertstate="firing"}[10m])'))
        assert fired["result"] == [], fired
        prometheus_lab.wait(lambda: prometheus_lab.alerts(port, "RegistryDown") == [],
                            3 * prometheus_lab.INTERVAL + 20, "RegistryDown resolved")


# Back-to-back pulls; /tmp/ha-pulls.log: one line per pull, "START END ok|failed".
_LOOP = """
img=$1; bound=$2
ok=0 fail=0 i=0 end=$(( $(date +%s) + bound ))
: > /tmp/ha-loop.err; : > /tmp/ha-pulls.log
while [ -e /tmp/ha-loop.run ] && [ $i -lt 2000 ] && [ "$(date +%s)" -lt "$end" ]; do
    docker rmi -f "$img" >/dev/null 2>&1
    start=$(date +%s.%N)
    if docker pull -q "$img" >/dev/null 2>>/tmp/ha-loop.err; then ok=$((ok+1)); r=ok;
    else fail=$((fail+1)); r=failed; echo "$(date +%s.%N) failed" >> /tmp/ha-loop.err; fi
    echo "$start $(date +%s.%N) $r" >> /tmp/ha-pulls.log
    i=$((i+1))
done
echo "$ok $fail" > /tmp/ha-loop.result
"""

# /v2/ through the domain every 0.1 s: a timestamp and the status code (000: no answer).
_PROBE = """
bound=$1; ca=/etc/docker/certs.d/registry.ha.lab:5000/ca.crt
end=$(( $(date +%s) + bound )); : > /tmp/ha-probe.log
while [ -e /tmp/ha-loop.run ] && [ "$(date +%s)" -lt "$end" ]; do
    c=$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 1 --max-time 2 \
        --cacert $ca https://registry.ha.lab:5000/v2/)
    echo "$(date +%s.%N) $c" >> /tmp/ha-probe.log
    sleep 0.1
done
"""


def _outage(since: float, until: float) -> dict[str, Any]:
    """From the client's probe log: seconds from `since` until /v2/ answered again after
    the last failed probe in [since, until], and how many probes failed."""
    samples = [(float(t), code) for t, code in (line.split() for line in harness.ssh(
        CLIENT, "cat /tmp/ha-probe.log").stdout.splitlines() if len(line.split()) == 2)]
    window = [(t, code) for t, code in samples if since <= t <= until]
    failed = [t for t, code in window if code != "401"]
    if not failed:
        return {"seconds_until_v2_answers": 0.0, "failed_probes": 0, "probes": len(window)}
    back = next((t for t, code in window if t > failed[-1] and code == "401"), None)
    assert back is not None, window[-10:]
    return {"seconds_until_v2_answers": round(back - since, 2), "failed_probes": len(failed),
            "probes": len(window)}


def _transitions(name: str, since: float) -> list[str]:
    out = harness.ssh(name, f"journalctl -u keepalived --since @{int(since)} -o cat "
                      "--no-pager | grep -o 'Entering [A-Z]* STATE' || true").stdout
    return out.split("\n")[:-1] if out else []


def _container(name: str) -> str:
    return lab_api.get_config().container(name)


def _wait_ssh(name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if harness.ssh(name, "systemctl is-system-running --wait >/dev/null 2>&1; true",
                       check=False, timeout=60).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"{name} did not come back")


def _start_loop() -> None:
    harness.ssh(CLIENT, "cat > /tmp/ha-loop.sh && rm -f /tmp/ha-loop.result && "
                "touch /tmp/ha-loop.run", stdin=_LOOP)
    harness.ssh(CLIENT, "cat > /tmp/ha-probe.sh", stdin=_PROBE)
    harness.ssh(CLIENT, f"nohup sh /tmp/ha-loop.sh {IMAGE} {LOOP_SECONDS} >/dev/null 2>&1 &")
    harness.ssh(CLIENT, f"nohup sh /tmp/ha-probe.sh {LOOP_SECONDS} >/dev/null 2>&1 &")


def _stop_loop() -> dict[str, Any]:
    """Stop the loop; its totals and the end of its error output."""
    harness.ssh(CLIENT, "rm -f /tmp/ha-loop.run")
    deadline = time.monotonic() + 120
    result = ""
    while time.monotonic() < deadline and not result:
        result = harness.ssh(CLIENT, "cat /tmp/ha-loop.result 2>/dev/null || true").stdout
        time.sleep(0.5)
    ok, failed = (int(word) for word in result.split())
    return {"ok": ok, "failed": failed,
            "errors": harness.ssh(CLIENT, "cat /tmp/ha-loop.err").stdout[-1500:]}


def _pulls(since: float, until: float) -> dict[str, Any]:
    """From the client's pull log: the pulls that ended in [since, until], how many failed,
    and the longest time between two successful pulls' ends around that span."""
    rows = [(float(a), float(b), r) for a, b, r in (line.split() for line in harness.ssh(
        CLIENT, "cat /tmp/ha-pulls.log").stdout.splitlines() if len(line.split()) == 3)]
    inside = [row for row in rows if since <= row[1] <= until]
    ends = sorted(end for _, end, result in rows if result == "ok")
    gaps = [b - a for a, b in itertools.pairwise(ends) if b >= since and a <= until]
    return {"pulls": len(inside), "failed": sum(1 for row in inside if row[2] != "ok"),
            "longest_gap_seconds": round(max(gaps, default=0.0), 2)}


def _failed_pulls(since: float) -> list[list[float]]:
    """Each failed pull's start and end in seconds after `since` (the client's pull log)."""
    rows = [line.split() for line in harness.ssh(CLIENT, "cat /tmp/ha-pulls.log")
            .stdout.splitlines() if line.endswith(" failed")]
    return [[round(float(a) - since, 2), round(float(b) - since, 2)] for a, b, _ in rows]


def _failed_inside(figures: dict[str, Any]) -> None:
    """After the loop stopped (every pull ended): the failed pulls that started inside
    figures' window, even those that ended after it (a cut connection can hang for many
    seconds), as [start, end] in seconds after the window's start."""
    since, until = figures.pop("window")
    figures["failed_pulls_started_inside"] = [
        pull for pull in _failed_pulls(since) if 0 <= pull[0] <= until - since]


def _entered(name: str, state: str, since: float) -> float | None:
    """When NAME's keepalived entered STATE first after `since` (its journal, unix time)."""
    out = harness.ssh(name, f"journalctl -u keepalived --since @{int(since)} -o short-unix "
                      f"--no-pager | grep 'Entering {state} STATE' || true").stdout
    times = [float(line.split()[0]) for line in out.splitlines() if line.strip()]
    later = [t for t in times if t >= since]
    return later[0] if later else None


def _event(since: float, until: float) -> dict[str, Any]:
    return {"pulls": _pulls(since, until), "probe": _outage(since, until)}


def test_a_planned_haproxy_change_on_the_holder_fails_no_pull(ha: Ha) -> None:
    """registry_lb_stats moved, then back: haproxy.cfg changes on both LBs twice under a
    back-to-back pull loop. Each LB reloads in place and the address never moves (a move
    resets the connections in flight through the holder: 2 and 1 failed pulls, "connection
    reset by peer", in two CI runs when the kit still handed the address over for this)."""
    _wait_holder(ha.vip, LB1)
    moved = ha.inventory("stats", registry_lb_stats="127.0.0.1:8405")
    deployed = ha.inventory("deploy")
    _start_loop()
    runs, seconds = [], []
    try:
        time.sleep(4)
        t0 = time.time()
        for inventory in (moved, deployed):
            started = time.time()
            runs.append(harness.run_kit(inventory).assert_ok())
            seconds.append(round(time.time() - started, 1))
            if inventory is moved:
                assert "bind 127.0.0.1:8405" in \
                    harness.ssh(LB1, "cat /etc/haproxy/haproxy.cfg").stdout
            time.sleep(3)
    finally:
        totals = _stop_loop()
    figures = {"kit_run_seconds": seconds,
               **_event(t0, time.time()), "totals": totals,
               "lb2_entered_master": _entered(LB2, "MASTER", t0),
               "lb1_entered_backup": _entered(LB1, "BACKUP", t0)}
    ha.figures["planned_haproxy_change"] = figures
    for run in runs:
        assert ("Check and apply haproxy.cfg (haproxy -c, then reload)", [LB1, LB2]) in \
            run.changed, run.describe()
    assert "bind 127.0.0.1:8404" in harness.ssh(LB1, "cat /etc/haproxy/haproxy.cfg").stdout
    assert figures["lb2_entered_master"] is None and figures["lb1_entered_backup"] is None, \
        figures
    assert _holder(ha.vip) == [LB1]
    assert figures["pulls"]["failed"] == 0 and totals["failed"] == 0, figures
    assert figures["probe"]["failed_probes"] == 0, figures
    assert figures["pulls"]["pulls"] >= 3, figures
    harness.run_kit(deployed).assert_no_changes()


def _wait_lb_view(backend: str, server: str, status: str, timeout: float = 120) -> None:
    """Until the first LB's haproxy reports SERVER of BACKEND as STATUS (its admin socket)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = harness.ssh(LB1, "echo 'show stat' | socat -t 2 stdio /run/haproxy/admin.sock "
                           f"| awk -F, '$1 == \"{backend}\" && $2 == \"{server}\" "
                           "{print $18}'", check=False).stdout.strip()
        if seen.startswith(status):
            return
        time.sleep(0.5)
    raise AssertionError(f"{backend}/{server} is {seen!r} on {LB1}, not {status}")


def _page_answers(ha: Ha) -> dict[str, int]:
    """The web page through the domain and the floating address: its file, its config and
    the registry's API behind it, with and without the user's password."""
    return {"page": harness.curl_status(DOMAIN, ha.vip, WEBUI_PORT, path="/"),
            "config": harness.curl_status(DOMAIN, ha.vip, WEBUI_PORT, path="/config.json"),
            "v2": harness.curl_status(DOMAIN, ha.vip, WEBUI_PORT),
            "catalog": harness.curl_status(DOMAIN, ha.vip, WEBUI_PORT, user=USER,
                                           password=ha.password, path="/v2/_catalog")}


def test_the_web_page_through_the_address_with_either_replica_stopped(ha: Ha) -> None:
    served = {"page": 200, "config": 200, "v2": 401, "catalog": 200}
    assert _page_answers(ha) == served
    started = time.monotonic()
    for stopped, other in ((REP1, REP2), (REP2, REP1)):
        subprocess.run(["docker", "stop", "-t", "10", _container(stopped)], check=True,
                       capture_output=True, timeout=60)
        _wait_lb_view("webui", stopped, "DOWN")
        assert _page_answers(ha) == served, stopped
        subprocess.run(["docker", "start", _container(stopped)], check=True,
                       capture_output=True, timeout=60)
        _wait_ssh(stopped)
        for backend in ("webui", "registry"):
            _wait_lb_view(backend, stopped, "UP")
        _wait_lb_view("webui", other, "UP")
    ha.figures["web_page_replica_stops_seconds"] = round(time.monotonic() - started, 1)
    assert _page_answers(ha) == served


def _kill_holder_host(ha: Ha, figures: dict[str, Any], settle: float) -> float:
    """docker kill of the first LB's host (no goodbye advert, like a power loss): when the
    second LB held the address and entered MASTER (its journal), and what the pull loop and
    the probe saw until `settle` seconds after that; returns when the kill began."""
    killed = time.time()
    subprocess.run(["docker", "kill", _container(LB1)], check=True,
                   capture_output=True, timeout=60)
    figures["host_killed_address_moved_seconds"] = round(
        time.time() - killed + _wait_holder(ha.vip, LB2, lbs=(LB2,)), 2)
    time.sleep(settle)
    moved = _entered(LB2, "MASTER", killed)
    figures["host_killed_lb2_master_after_seconds"] = moved and round(moved - killed, 2)
    figures["host_killed"] = _event(killed, time.time())
    return killed


def _holder_host_back(ha: Ha, figures: dict[str, Any], settle: float) -> float:
    """The killed host started again: when the address was back on it, and what the clients
    saw until `settle` seconds after that; returns when the start began."""
    back = time.time()
    subprocess.run(["docker", "start", _container(LB1)], check=True,
                   capture_output=True, timeout=60)
    _wait_ssh(LB1)
    figures["host_back_address_returned_seconds"] = round(
        time.time() - back + _wait_holder(ha.vip, LB1, timeout=60), 2)
    time.sleep(settle)
    figures["host_back"] = _event(back, time.time())
    return back


def test_failover_under_a_pull_loop(ha: Ha) -> None:
    figures: dict[str, Any] = {}
    _wait_holder(ha.vip, LB1)
    _start_loop()
    try:
        time.sleep(4)
        # 1. haproxy stopped on the LB holding the address: its unit tells keepalived.
        assert _holder(ha.vip) == [LB1]
        t0 = time.time()
        harness.ssh(LB1, "systemctl stop haproxy")
        figures["haproxy_stopped_address_moved_seconds"] = round(_wait_holder(ha.vip, LB2), 2)
        time.sleep(6)
        figures["haproxy_stopped"] = _event(t0, time.time())
        # 2. haproxy back: the first LB takes the address back (priority), once.
        t1 = time.time()
        harness.ssh(LB1, "systemctl start haproxy")
        figures["haproxy_back_address_returned_seconds"] = round(
            _wait_holder(ha.vip, LB1), 2)
        time.sleep(6)
        figures["haproxy_back"] = _event(t1, time.time())
        # 3. haproxy killed (SIGKILL, every process of its unit) on the holder: systemd
        # restarts it at once; the address moves meanwhile and comes back after.
        killed = float(harness.ssh(LB1, "date +%s.%N; systemctl kill -s KILL haproxy")
                       .stdout.split()[0])
        time.sleep(2)
        moved = _entered(LB2, "MASTER", killed)
        figures["haproxy_killed_address_moved_seconds"] = moved and round(moved - killed, 2)
        _wait_holder(ha.vip, LB1)
        time.sleep(4)
        figures["haproxy_killed"] = _event(killed, time.time())
        # 4. The whole LB host killed (docker kill: no goodbye advert, like a power loss).
        _kill_holder_host(ha, figures, settle=6)
        # 5. The host back: boots, haproxy and keepalived start, the address returns once.
        t3 = _holder_host_back(ha, figures, settle=20)  # long enough for any flapping to show
    finally:
        figures["pulls"] = _stop_loop()
    # No flapping: after the host came back, LB2 gave the address up once and LB1 took it
    # once (LB1's journal starts at its boot), and it stayed there.
    figures["transitions_after_return"] = {LB1: _transitions(LB1, t3), LB2: _transitions(LB2, t3)}
    ha.figures["failover"] = figures
    assert figures["haproxy_killed_address_moved_seconds"] is not None, figures
    assert _holder(ha.vip) == [LB1]
    assert figures["transitions_after_return"][LB2] == ["Entering BACKUP STATE"], figures
    assert figures["transitions_after_return"][LB1].count("Entering MASTER STATE") == 1, figures
    assert figures["pulls"]["ok"] >= 10, figures
    assert harness.curl_status(DOMAIN, ha.vip, PORT) == 401


def _apply(inventory: Path) -> tuple[harness.Run, float]:
    started = time.monotonic()
    run = harness.run_kit(inventory).assert_ok()
    return run, round(time.monotonic() - started, 1)


_WATCH = """
vip=$1; bound=$2; end=$(( $(date +%s) + bound )); : > /tmp/ha-vip.log
while [ -e /tmp/ha-vip.run ] && [ "$(date +%s)" -lt "$end" ]; do
    if ip -o -4 addr show to "$vip/32" | grep -q .; then h=1; else h=0; fi
    echo "$(date +%s.%N) $h" >> /tmp/ha-vip.log
    sleep 0.1
done
"""


def _start_watch(ha: Ha) -> None:
    """Each LB samples with ip every 0.1 s whether it has the address (/tmp/ha-vip.log)."""
    for name in (LB1, LB2):
        harness.ssh(name, "cat > /tmp/ha-vip.sh && touch /tmp/ha-vip.run", stdin=_WATCH)
        harness.ssh(name, f"nohup sh /tmp/ha-vip.sh {ha.vip} {LOOP_SECONDS} >/dev/null 2>&1 &")


def _stop_watch() -> None:
    for name in (LB1, LB2):
        harness.ssh(name, "rm -f /tmp/ha-vip.run")
    time.sleep(0.5)


def _samples(name: str, since: float, until: float) -> list[tuple[float, bool]]:
    """NAME's ip samples in [since, until]: (time, had the address)."""
    rows = [line.split() for line in harness.ssh(name, "cat /tmp/ha-vip.log")
            .stdout.splitlines() if len(line.split()) == 2]
    return [(float(t), held == "1") for t, held in rows if since <= float(t) <= until]


def _holders_over_time(samples: dict[str, list[tuple[float, bool]]]) -> dict[str, float]:
    """From both LBs' samples merged in time order (the hosts share the kernel's clock):
    seconds during which both last samples said 'has the address', and neither did."""
    merged = sorted((t, name, held) for name, rows in samples.items() for t, held in rows)
    last: dict[str, bool] = {}
    both = none = 0.0
    for (t, name, held), following in itertools.pairwise(merged):
        last[name] = held
        if len(last) == len(samples):
            span = following[0] - t
            both += span if all(last.values()) else 0.0
            none += span if not any(last.values()) else 0.0
    return {"two_holders_seconds": round(both, 2), "no_holder_seconds": round(none, 2)}


def _keepalived_change(ha: Ha, inventory: Path) -> tuple[harness.Run, dict[str, Any]]:
    """A kit run that changes keepalived.conf on both LBs under the pull loop (running):
    its seconds, the pulls and probes from its start until 3 s after it (its "window", for
    _failed_inside once the loop stopped), each LB's keepalived state changes and reloads
    (journal) and its ip samples meanwhile."""
    t0 = time.time()
    run, seconds = _apply(inventory)
    time.sleep(3)
    t1 = time.time()
    figures: dict[str, Any] = {"kit_run_seconds": seconds, **_event(t0, t1),
                               "window": (t0, t1)}
    samples = {name: _samples(name, t0, t1) for name in (LB1, LB2)}
    figures["address"] = _holders_over_time(samples)
    for name in (LB1, LB2):
        # keepalived's own lines about the reload, scripts and states (not systemd's).
        journal = harness.ssh(name, f"journalctl -u keepalived --since @{int(t0)} -o cat "
                              "--no-pager | grep -E 'Reloading|VRRP_Script|STATE|interval' "
                              "| grep -v 'Reloading keepalived.service' || true").stdout
        figures[name] = {"state_changes": _transitions(name, t0),
                         "reloads": journal.count("Reloading"),
                         "address_samples": {"samples": len(samples[name]), "with_address":
                                             sum(held for _, held in samples[name])},
                         "journal": journal.splitlines()[:12]}
    return run, figures


def test_vrrp3_moves_the_address_off_a_dead_host_within_2_seconds(ha: Ha) -> None:
    """VRRPv3 with 0.5 s adverts (registry_lb_vrrp_version=3, no password): the whole holder
    host killed, the other LB enters MASTER after three missed adverts and its skew, 1.5 +
    0.13 s after the last advert heard (RFC 5798), where VRRPv2's whole second takes about
    3 s. The switch to VRRPv3 is a keepalived.conf change the kit applies through its
    handover (the versions do not hear each other), under the pull loop: its figures are
    recorded (the address moves away from the first LB and back)."""
    fast = ha.inventory("vrrp3", registry_lb_vrrp_version=3, registry_lb_vrrp_password=None,
                        registry_lb_vrrp_advert_seconds=0.5)
    figures: dict[str, Any] = {}
    _wait_holder(ha.vip, LB1)
    _start_loop()
    _start_watch(ha)
    try:
        time.sleep(4)
        run, figures["to_vrrp3"] = _keepalived_change(ha, fast)
        _stop_watch()
        harness.run_kit(fast).assert_no_changes()
        for name in (LB1, LB2):
            words = harness.ssh(name, "grep -E '^ *(version|advert_int|authentication|"
                                "auth_pass) ' /etc/keepalived/keepalived.conf").stdout
            assert [line.strip() for line in words.split("\n")[:-1]] == [
                "version 3", "advert_int 0.5"], words
        _wait_holder(ha.vip, LB1)
        killed = _kill_holder_host(ha, figures, settle=4)
        back = _holder_host_back(ha, figures, settle=8)  # room for a flap to show
    finally:
        _stop_watch()
        figures["pulls"] = _stop_loop()
    _failed_inside(figures["to_vrrp3"])
    figures["failed_pulls_after_kill_seconds"] = _failed_pulls(killed)
    figures["transitions_after_return"] = {LB1: _transitions(LB1, back),
                                           LB2: _transitions(LB2, back)}
    ha.figures["vrrp3_host_killed"] = figures
    assert ("Check and apply keepalived.conf (keepalived -t, then reload)", [LB1, LB2]) in \
        run.changed, run.describe()
    # The version switch went through the handover: the second LB held the address.
    assert "Entering MASTER STATE" in figures["to_vrrp3"][LB2]["state_changes"], figures
    assert figures["host_killed_lb2_master_after_seconds"] is not None, figures
    assert figures["host_killed_lb2_master_after_seconds"] < 2.0, figures
    assert figures["transitions_after_return"][LB2] == ["Entering BACKUP STATE"], figures
    assert figures["transitions_after_return"][LB1].count("Entering MASTER STATE") == 1, figures
    assert figures["pulls"]["ok"] >= 3, figures


def test_a_keepalived_change_that_keeps_the_vrrp_instance_fails_no_pull(ha: Ha) -> None:
    """A keepalived.conf change that keeps the VRRP instance (VRRPv3's advert interval,
    0.5 -> 0.4 s) under the pull loop: the kit reloads keepalived in place on each LB, so
    the first LB stays MASTER with the address (no state change in either journal, the
    address in every ip sample on it and in none on the other) and no pull or probe fails.
    Then back to the module's VRRPv2 (with the password), which the teardown below expects:
    a version switch, through the handover, under the same loop (figures recorded)."""
    faster = ha.inventory("vrrp3-fast", registry_lb_vrrp_version=3,
                          registry_lb_vrrp_password=None, registry_lb_vrrp_advert_seconds=0.4)
    deployed = ha.inventory("deploy")
    _wait_holder(ha.vip, LB1)
    _start_loop()
    _start_watch(ha)
    try:
        time.sleep(4)
        in_place_run, in_place = _keepalived_change(ha, faster)
        harness.run_kit(faster).assert_no_changes()
        _, to_vrrp2 = _keepalived_change(ha, deployed)
    finally:
        _stop_watch()
        totals = _stop_loop()
    _failed_inside(in_place)
    _failed_inside(to_vrrp2)
    ha.figures["keepalived_change_in_place"] = in_place
    ha.figures["to_vrrp2"] = to_vrrp2
    ha.figures["keepalived_changes_loop"] = totals
    assert ("Check and apply keepalived.conf (keepalived -t, then reload)", [LB1, LB2]) in \
        in_place_run.changed, in_place_run.describe()
    for name, holds in ((LB1, True), (LB2, False)):
        figures = in_place[name]
        assert figures["state_changes"] == [] and figures["reloads"] >= 1, (name, in_place)
        samples = figures["address_samples"]
        assert samples["samples"] >= 10, (name, in_place)
        assert samples["with_address"] == (samples["samples"] if holds else 0), (name, in_place)
    assert in_place["address"] == {"two_holders_seconds": 0.0, "no_holder_seconds": 0.0}, \
        in_place
    assert in_place["pulls"]["failed"] == 0 and in_place["probe"]["failed_probes"] == 0, \
        in_place
    assert in_place["failed_pulls_started_inside"] == [], in_place
    assert in_place["pulls"]["pulls"] >= 3, in_place
    # Back to VRRPv2: the handover moved the address to the second LB and back.
    assert "Entering MASTER STATE" in to_vrrp2[LB2]["state_changes"], to_vrrp2
    harness.run_kit(deployed).assert_no_changes()
    _wait_holder(ha.vip, LB1)
    for name in (LB1, LB2):  # VRRPv2 with the password again
        assert harness.ssh(name, f"grep -cx ' *auth_pass {VRRP_PASSWORD}' "
                           "/etc/keepalived/keepalived.conf").stdout == "1\n", name


_KIT_PATHS = ("/etc/registry-kit /usr/local/lib/registry-kit /run/registry-kit "
              "/etc/haproxy/registry-kit /etc/keepalived/keepalived.conf "
              "/etc/redis/redis.conf /etc/systemd/system/haproxy.service.d "
              "/run/registry-kit-haproxy-down /run/registry-kit-lb-handover "
              f"/etc/docker/certs.d/{ADDRESS} /etc/registry-kit-client /etc/registry-kit-webui "
              "/etc/registry-kit-metrics "
              "/etc/systemd/system/prometheus-redis-exporter.service.d/registry-kit.conf")


def _leftovers(name: str) -> str:
    """Any kit file, unit or config on a host, and any of the services still running. The
    replicas' web page and the cache's metrics filter (for its redis exporter) install
    Debian's haproxy, whose package (its own haproxy.cfg and service) stays like every
    package unless purged: there, haproxy.cfg counts only if the kit wrote it, and
    haproxy's service does not count. The kit's exporter drop-ins count everywhere."""
    replica = name in (REP1, REP2, CACHE)
    services = "keepalived redis-server" + ("" if replica else " haproxy")
    paths = _KIT_PATHS + ("" if replica else " /etc/haproxy/haproxy.cfg")
    return harness.ssh(name, f"for p in {paths}; do [ -e \"$p\" ] && echo \"$p\"; done; "
                       "grep -l registry-kit /etc/haproxy/haproxy.cfg 2>/dev/null; "
                       "ls /etc/systemd/system | grep -i registry; "
                       "grep -l registry-kit /etc/hosts /etc/docker/daemon.json 2>/dev/null; "
                       f"for s in {services}; do systemctl is-active -q $s "
                       "&& echo \"$s active\"; systemctl is-enabled -q $s 2>/dev/null && "
                       "echo \"$s enabled\"; done; docker ps -aq 2>/dev/null; true").stdout


def _teardown_of_the_holder(ha: Ha) -> dict[str, Any]:
    """teardown.py --limit the first LB (it holds the address) under the pull loop: the
    address goes to the second LB first (the handover), then keepalived and haproxy stop
    there. The LB goes away, so the address must move: its figures are recorded."""
    figures: dict[str, Any] = {}
    _wait_holder(ha.vip, LB1)
    _start_loop()
    try:
        time.sleep(4)
        t0 = time.time()
        harness.run_kit(ha.inventory("deploy"), "teardown.py", "--limit", LB1).assert_ok()
        figures["kit_run_seconds"] = round(time.time() - t0, 1)
        time.sleep(3)
        figures.update(_event(t0, time.time()), window=(t0, time.time()))
        figures["lb2_entered_master_after_seconds"] = (
            (moved := _entered(LB2, "MASTER", t0)) and round(moved - t0, 2))
    finally:
        figures["totals"] = _stop_loop()
    _failed_inside(figures)
    ha.figures["teardown_of_the_holder"] = figures
    assert _holder(ha.vip) == [LB2], figures
    assert figures["lb2_entered_master_after_seconds"] is not None, figures
    assert harness.ssh(LB1, "systemctl is-active keepalived haproxy; true").stdout.split() == \
        ["inactive", "inactive"]
    assert harness.curl_status(DOMAIN, ha.vip, PORT) == 401
    return figures


def test_teardown_over_every_role_then_deploy_serves_the_old_image(ha: Ha) -> None:
    _teardown_of_the_holder(ha)
    first = harness.run_kit(ha.inventory("deploy"), "teardown.py").assert_ok()
    assert first.changed
    harness.run_kit(ha.inventory("deploy"), "teardown.py").assert_no_changes()
    left = {name: _leftovers(name) for name in KIT_HOSTS}
    assert left == {name: "" for name in KIT_HOSTS}, left
    assert _holder(ha.vip) == []
    # The image stayed in the bucket: a new deploy serves it again.
    harness.run_kit(ha.inventory("deploy")).assert_ok()
    harness.run_kit(ha.inventory("deploy")).assert_no_changes()
    _wait_holder(ha.vip, LB1)
    pulled = harness.ssh(CLIENT, f"docker rmi -f {IMAGE} >/dev/null 2>&1; docker pull -q "
                         f"{IMAGE} >/dev/null && docker image inspect -f '{{{{.Id}}}}' "
                         f"{IMAGE}").stdout.strip()
    assert pulled == ha.figures["image_id"]
    # With registry_packages_remove_on_teardown the packages go too; twice changes nothing.
    purge = ha.inventory("purge", registry_packages_remove_on_teardown=True)
    harness.run_kit(purge, "teardown.py").assert_ok()
    harness.run_kit(purge, "teardown.py").assert_no_changes()
    for name in (LB1, LB2, CACHE):
        assert harness.ssh(name, "command -v haproxy keepalived socat redis-server; "
                           "dpkg -l haproxy keepalived redis-server 2>/dev/null | grep ^ii; "
                           "true").stdout == ""
    left = {name: _leftovers(name) for name in KIT_HOSTS}
    assert left == {name: "" for name in KIT_HOSTS}, left
