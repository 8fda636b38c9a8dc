"""registry_metrics: the settings' refusals, the registry's debug server on loopback, the
filter in front of it on servers and haproxy's exporter on load balancers."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import script_module
import yaml
from cryptography import x509

from registry_kit.facts import parse_status
from registry_kit.model import keystore, layout
from registry_kit.model import settings as settings_mod
from registry_kit.model import topology as topo
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.package_data import SCRIPTS
from registry_kit.render import prometheus, token_auth
from registry_kit.render.config import render_config
from registry_kit.roles import loadbalancer, metrics, metrics_status, server, status_json

ON = {"registry_metrics": True, "registry_metrics_allow": ["10.0.0.5", "192.168.1.0/24"],
      "registry_internal_address": "10.0.0.11"}


def test_off_by_default_and_nothing_served(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert not settings.registry_metrics
    assert [layout.metrics_endpoints(settings, role) for role in ("server", "lb", "cache")] \
        == [{}, {}, {}]
    assert "debug" not in yaml.safe_load(render_config(settings, "secret"))["http"]


def test_on_puts_the_debug_server_on_loopback(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**ON)
    assert settings.registry_metrics_allow == ("10.0.0.5/32", "192.168.1.0/24")
    assert settings.registry_debug_addr == "127.0.0.1:5001"
    assert layout.metrics_endpoints(settings, "server") == {
        "registry": "http://10.0.0.11:9195/metrics",
        "facts": "http://10.0.0.11:9195/kit/metrics"}
    http = yaml.safe_load(render_config(settings, "secret"))["http"]
    assert http["debug"] == {"addr": ":5001",
                             "prometheus": {"enabled": True, "path": "/metrics"}}
    spec = server.container_spec(settings, b"config", None)
    published = [spec.run_args()[i + 1] for i, arg in enumerate(spec.run_args()) if arg == "-p"]
    assert published == ["5000:5000", "127.0.0.1:5001:5001"]  # never the public port
    # An explicit debug address is kept.
    assert make_settings(**ON, registry_debug_addr="127.0.0.1:6001").registry_debug_addr == \
        "127.0.0.1:6001"


@pytest.mark.parametrize(("data", "key"), [
    ({"registry_metrics_allow": []}, "registry_metrics_allow"),
    ({"registry_metrics_allow": ["10.0.0.0/33"]}, "registry_metrics_allow"),
    ({"registry_metrics_allow": ["10.0.0.1 10.0.0.2"]}, "registry_metrics_allow"),
    ({"registry_metrics_allow": "10.0.0.0/8"}, "registry_metrics_allow"),
    ({"registry_internal_address": "reg1.example.internal"}, "registry_metrics_bind"),
    ({"registry_metrics_bind": "0.0.0.0"}, "registry_metrics_bind"),
    ({"registry_metrics_bind": "host name"}, "registry_metrics_bind"),
    ({"registry_metrics_port": 5000}, "registry_metrics_port"),
    ({"registry_metrics_port": 5001}, "registry_metrics_port"),
    ({"registry_port": 5001}, "registry_debug_addr"),
    # The kit's facts server's loopback port.
    ({"registry_port": 9196}, "registry_port"),
    ({"registry_metrics_port": 9196}, "registry_metrics_port"),
    ({"registry_debug_addr": "127.0.0.1:9196"}, "registry_debug_addr"),
    ({"registry_webui_enabled": True, "registry_webui_port": 9196}, "registry_webui_port"),
])
def test_refused_with_one_line(make_settings: Callable[..., Settings], data: dict[str, Any],
                               key: str) -> None:
    with pytest.raises(SettingsError) as error:
        make_settings(**{**ON, **data})
    assert f"setting {key}=" in str(error.value) and "\n" not in str(error.value)


def test_a_client_needs_no_metrics_address() -> None:
    # registry_metrics in group data for all hosts: a client's DNS name is no refusal.
    loaded = settings_mod.load("client1", {**ON, "registry_internal_address": "c1.example"},
                               server=False)
    assert loaded.registry_metrics


def test_server_filter_passes_get_metrics_only(make_settings: Callable[..., Settings]) -> None:
    text = metrics.render(make_settings(**ON))
    assert "    bind 10.0.0.11:9195\n" in text
    assert "    tcp-request connection reject unless { src 10.0.0.5/32 192.168.1.0/24 }\n" in text
    assert "    http-request deny unless { path /metrics /kit/metrics } { method GET }\n" \
        in text
    assert "    use_backend facts if { path /kit/metrics }\n    default_backend registry\n" \
        in text
    assert "    server registry 127.0.0.1:5001\n" in text
    assert text.endswith("backend facts\n    mode http\n    server facts 127.0.0.1:9196\n")
    unit = metrics.render_unit()
    assert "ExecStartPre=/usr/sbin/haproxy -c -q -f /etc/registry-kit-metrics/haproxy.cfg" in unit


def _lb(**data: Any) -> tuple[Settings, topo.Topology]:
    base = {"registry_anonymous_acknowledged": True, **ON, **data}
    rep = settings_mod.load("rep1", {**base, "registry_internal_address": "10.0.0.21"})
    lb = settings_mod.load("lb1", base, server=False)
    return lb, topo.Topology(servers=(rep,), lbs=(lb,), caches=())


def test_load_balancer_serves_haproxys_exporter_to_the_allowed_only() -> None:
    lb, topology = _lb()
    text = loadbalancer.render(lb, topology)
    frontend = text.split("frontend metrics\n", 1)[1]
    assert frontend.startswith("    mode http\n    bind 10.0.0.11:9195\n")
    assert "tcp-request connection reject unless { src 10.0.0.5/32 192.168.1.0/24 }" in frontend
    assert "http-request use-service prometheus-exporter if { path /metrics }" in frontend
    assert status_json.load_balancer_facts(lb, {})["metrics"] == {
        "haproxy": "http://10.0.0.11:9195/metrics"}
    off, topology = _lb(registry_metrics=False)
    assert "frontend metrics" not in loadbalancer.render(off, topology)


def test_load_balancer_with_a_floating_address_passes_get_facts_only() -> None:
    """With registry_lb_vip, haproxy's metrics frontend passes GET /kit/metrics to the facts
    server on the loopback (whether this LB holds the address); anything else but /metrics
    is denied. Without it, nothing but /metrics."""
    lb, topology = _lb(registry_lb_vip="10.0.0.250/24")
    text = loadbalancer.render(lb, topology)
    frontend = text.split("frontend metrics\n", 1)[1]
    assert frontend.endswith(
        "    http-request use-service prometheus-exporter if { path /metrics }\n"
        "    http-request deny unless { path /kit/metrics } { method GET }\n"
        "    default_backend facts\n\nbackend facts\n    mode http\n"
        "    server facts 127.0.0.1:9196\n")
    plain, topology = _lb()
    assert "backend facts" not in loadbalancer.render(plain, topology)
    assert loadbalancer.render(plain, topology).endswith("    http-request deny\n")
    assert layout.lb_facts_listen(plain) is None
    off, topology = _lb(registry_lb_vip="10.0.0.250/24", registry_metrics=False)
    assert "facts" not in loadbalancer.render(off, topology)
    assert layout.lb_facts_listen(off) is None


def test_metrics_endpoints_of_each_role(make_settings: Callable[..., Settings]) -> None:
    """Every path the host's endpoint serves in each role: the facts on a load balancer only
    with a floating address, the node exporter on every role when asked for."""
    lb, _ = _lb(registry_lb_vip="10.0.0.250/24", registry_node_exporter=True)
    url = "http://10.0.0.11:9195"
    assert layout.metrics_endpoints(lb, "lb") == {
        "haproxy": f"{url}/metrics", "facts": f"{url}/kit/metrics",
        "node": f"{url}/node/metrics"}
    bound = make_settings(**ON, registry_metrics_bind="10.0.0.99")
    assert layout.metrics_endpoints(bound, "cache") == {
        "redis": "http://10.0.0.99:9195/redis/metrics"}
    assert layout.metrics_endpoints(make_settings(**ON, registry_node_exporter=True),
                                    "server") == {
        "registry": f"{url}/metrics", "facts": f"{url}/kit/metrics",
        "node": f"{url}/node/metrics"}


def test_status_metrics_column_reads_every_unit_once(
        make_settings: Callable[..., Settings]) -> None:
    """status.py's metrics column: one `systemctl is-active` of the units behind the
    endpoints (the front first), each endpoint's state, the unit that is down named."""
    on = make_settings(**ON, registry_node_exporter=True)
    command = metrics_status.SERVER.status_command(on)
    assert command == ("echo @@registry-kit-status:metrics-server; systemctl is-active "
                       "registry-kit-metrics registry-kit-facts prometheus-node-exporter "
                       "2>/dev/null || true")
    sections = parse_status([*command_output(command, "active", "failed", "active")])
    assert metrics_status.SERVER.status_row(on, sections) == {
        "metrics": "registry active, facts failed (registry-kit-facts), node active"}
    down = parse_status(command_output(command, "inactive", "active", "active"))
    assert metrics_status.SERVER.status_row(on, down) == {"metrics": ", ".join(
        f"{kind} inactive (registry-kit-metrics)" for kind in ("registry", "facts", "node"))}
    # What the host said is data: not one word per unit, and nothing is believed.
    for lines in (["active"], ["active", "active", "active", "active"],
                  ["active", "active", "active; rm -rf /"], ["active", "", "active"]):
        assert metrics_status.SERVER.status_row(on, parse_status(command_output(
            command, *lines))) == {"metrics": "registry unknown, facts unknown, node unknown"}
    off = make_settings()
    assert metrics_status.SERVER.status_command(off) == "true"
    assert metrics_status.LB.status_row(off, {}) == {"metrics": "off"}
    # The cache: its own filter, or haproxy on a host that is also a load balancer.
    cache = make_settings(**ON)
    assert metrics_status.CACHE.for_host({"caches"}).status_command(cache).endswith(
        "is-active registry-kit-metrics prometheus-redis-exporter 2>/dev/null || true")
    fronted = metrics_status.CACHE.for_host({"caches", "lbs"})
    assert fronted.status_command(cache).endswith(
        "is-active haproxy prometheus-redis-exporter 2>/dev/null || true")
    assert fronted.status_row(cache, {"metrics-cache": ["active", "activating"]}) == {
        "metrics": "redis activating (prometheus-redis-exporter)"}
    assert metrics_status.LB.for_host({"lbs", "caches"}) == metrics_status.LB
    lb, _ = _lb(registry_lb_vip="10.0.0.250/24")
    assert metrics_status.LB.status_row(lb, {"metrics-lb": ["active", "active"]}) == {
        "metrics": "haproxy active, facts active"}


def command_output(command: str, *lines: str) -> list[str]:
    """What the host prints for `command`: its section marker, then `lines`."""
    marker = command.split(";", 1)[0].removeprefix("echo ")
    return [marker, *lines]


def test_load_balancer_facts_server_unit() -> None:
    """The address only, in the token server's sandbox plus netlink (`ip -j addr`)."""
    lb, _ = _lb(registry_lb_vip="10.0.0.250/24")
    unit = metrics.facts_unit(lb, lb=True).decode()
    assert ("ExecStart=/usr/bin/python3 /usr/local/lib/registry-kit/registry-kit-facts.py "
            "--listen 127.0.0.1:9196 --path /kit/metrics --address 10.0.0.250\n") in unit
    families = [line for line in unit.splitlines()
                if line.startswith("RestrictAddressFamilies=")]
    assert families == ["RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK"]
    # `ip` drops its (absent) capabilities: capset allowed after the deny list.
    filters = [line for line in unit.splitlines() if line.startswith("SystemCallFilter=")]
    assert filters == ["SystemCallFilter=@system-service",
                       "SystemCallFilter=~@privileged @resources", "SystemCallFilter=capset"]
    assert "DynamicUser=yes\n" in unit and "CapabilityBoundingSet=\n" in unit
    # The stats page shares the LB's loopback: not on the facts server's port.
    with pytest.raises(SettingsError, match=re.escape("registry_lb_stats='127.0.0.1:9196'")):
        _lb(registry_lb_stats="127.0.0.1:9196")


def _facts_module() -> Any:
    return script_module.load(SCRIPTS / layout.FACTS_SCRIPT_NAME, "facts")


@pytest.mark.parametrize(("output", "expected"), [
    (b'[{"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.0.11"},'
     b'{"family":"inet","local":"10.0.0.250"}]}]', True),
    (b'[{"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.0.11"}]},'
     b'{"ifname":"lo"}]', False),
    # What a host says is compared, never written as it is: no sample from it.
    (b'[{"addr_info":[{"local":"10.0.0.250\\"} 1\\nevil 1"},{"local":7}]}]', False),
    (b"not json", None), (b'{"addr_info": 1}', None), (b"[1]", None),
])
def test_address_fact_from_ip_json(monkeypatch: pytest.MonkeyPatch, output: bytes,
                                   expected: bool | None) -> None:
    facts = _facts_module()
    monkeypatch.setattr(facts.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, output, b""))
    vip = ipaddress.ip_address("10.0.0.250")
    assert facts.holds(vip) is expected
    text = facts.address_fact(vip)
    if expected is None:
        assert text is None
    else:
        assert text.splitlines()[-1] == \
            f'registry_kit_lb_holds_address{{address="10.0.0.250"}} {int(expected)}'
        assert len(text.splitlines()) == 3


def test_load_balancer_without_an_ip_is_refused_before_any_host() -> None:
    _, topology = _lb(registry_internal_address="lb1.example")
    with pytest.raises(SettingsError, match="lb1: setting registry_metrics_bind=None"):
        topo.validate_metrics(topology)


def test_facts_server_unit(make_settings: Callable[..., Settings]) -> None:
    unit = metrics.facts_unit(make_settings(**ON)).decode()
    assert ("ExecStart=/usr/bin/python3 /usr/local/lib/registry-kit/registry-kit-facts.py "
            "--listen 127.0.0.1:9196 --dir /var/lib/registry-kit-metrics --path /kit/metrics "
            "--data-dir /var/lib/registry-kit/data\n") in unit
    assert "DynamicUser=yes\n" in unit and "ProtectSystem=strict\n" in unit
    # No filesystem of this server to measure on object storage.
    memory = metrics.facts_unit(make_settings(**ON, registry_storage={"driver": "inmemory"}))
    assert b"--data-dir" not in memory


def _script(name: str) -> Any:
    return script_module.load(SCRIPTS / name, name.replace("-", "_").removesuffix(".py"))


def test_facts_server_reads_the_token_counters_with_token_auth(
        make_settings: Callable[..., Settings]) -> None:
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    unit = metrics.facts_unit(make_settings(**ON, registry_users=users)).decode()
    assert " --token-counters /run/registry-kit-token-counters/token.prom\n" in unit
    assert b"--token-counters" not in metrics.facts_unit(make_settings(**ON))
    # The token server writes them there, into a folder of its own (the dynamic user's,
    # gone at stop), which it opens to other users (test_access_logic): nothing in it is
    # secret.
    token_unit = token_auth.unit_text(make_settings(registry_users=users)).decode()
    assert "RuntimeDirectory=registry-kit-token registry-kit-token-counters\n" in token_unit
    assert " --counters /run/registry-kit-token-counters/token.prom " in token_unit


def test_token_counters_text_is_the_kits_renderers() -> None:
    """The token server's file (standard library only, so its own renderer) is what
    render.prometheus.counters() makes of the same values; the facts server knows the same
    counters."""
    token, facts = _script(layout.TOKEN_SCRIPT_NAME), _script(layout.FACTS_SCRIPT_NAME)
    values = {name: index * 7 for index, name in enumerate(token.COUNTERS)}
    assert token.counters_text(values) == prometheus.counters(
        [(name, text, [({}, values[name])]) for name, text in token.COUNTERS.items()])
    assert facts.TOKEN_COUNTERS == token.COUNTERS
    assert list(token.COUNTERS) == ["registry_kit_token_issued_total",
                                    "registry_kit_token_denied_total",
                                    "registry_kit_token_failed_logins_total",
                                    "registry_kit_token_rate_limited_total"]


def test_facts_server_takes_only_the_counters_numbers(tmp_path: Path) -> None:
    """What the token server's file holds (it answers the Internet: it may be broken into)
    cannot add a fact, change one, label one or make the scrape fail: only the first
    `NAME NUMBER` line of each known counter is read, and written out anew."""
    facts = _script(layout.FACTS_SCRIPT_NAME)
    hostile = tmp_path / "token.prom"
    hostile.write_text(
        "# TYPE registry_kit_token_issued_total gauge\n"
        "registry_kit_disk_guard_read_only 0\n"
        'registry_kit_token_denied_total{user="x"} 9\n'
        "registry_kit_token_issued_total 5\n"
        "registry_kit_token_issued_total 6\n"
        "registry_kit_token_failed_logins_total -1\n"
        "registry_kit_token_rate_limited_total 1e9\n"
        "registry_kit_token_denied_total 2 1700000000\n")
    assert facts.token_counters(hostile).splitlines() == [
        "# HELP registry_kit_token_issued_total tokens issued since the token server started",
        "# TYPE registry_kit_token_issued_total counter", "registry_kit_token_issued_total 5"]
    assert facts.token_counters(tmp_path / "missing.prom") == ""
    hostile.write_bytes(b"registry_kit_token_issued_total 3\n\xff\x00\n")
    assert facts.token_counters(hostile).endswith("registry_kit_token_issued_total 3\n")


def test_certificate_facts_hold_its_not_after(tmp_path: Path) -> None:
    cert = keystore.server_certificate(settings_mod.load("reg", {
        "registry_anonymous_acknowledged": True, "registry_state_dir": str(tmp_path)}))
    assert cert is not None
    text = metrics.certificate_facts(cert)
    assert text is not None
    not_after = x509.load_pem_x509_certificate(cert.cert_pem).not_valid_after_utc
    assert text.decode().splitlines()[-1] == (
        "registry_kit_certificate_not_after_timestamp_seconds{certificate=\"server\"} "
        f"{int(not_after.timestamp())}")
    assert metrics.certificate_facts(None) is None


def test_facts_server_answers_the_files_and_the_disk(tmp_path: Path) -> None:
    """scripts/registry-kit-facts.py, run here: every *.prom file of its folder and the
    data filesystem's bytes on its path, 404 elsewhere."""
    (tmp_path / "gc.prom").write_text("registry_kit_gc_last_success 1\n")
    (tmp_path / "notes.txt").write_text("not served\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(SCRIPTS / layout.FACTS_SCRIPT_NAME),
                               "--listen", f"127.0.0.1:{port}", "--dir", str(tmp_path),
                               "--path", "/kit/metrics", "--data-dir", str(tmp_path)])
    try:
        body = ""
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/kit/metrics",
                                            timeout=5) as answer:
                    body = answer.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "registry_kit_gc_last_success 1\n" in body and "not served" not in body
        values = {line.split()[0]: int(line.split()[1]) for line in body.splitlines()
                  if line.startswith("registry_kit_data_filesystem_")}
        fs = os.statvfs(tmp_path)
        assert values["registry_kit_data_filesystem_size_bytes"] == fs.f_blocks * fs.f_frsize
        assert set(values) == {f"registry_kit_data_filesystem_{kind}_bytes"
                               for kind in ("size", "used", "avail")}
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _serve_facts(*args: str) -> str:
    """The facts script's answer on /kit/metrics, run here with `args`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(SCRIPTS / layout.FACTS_SCRIPT_NAME),
                               "--listen", f"127.0.0.1:{port}", "--path", "/kit/metrics",
                               *args])
    try:
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/kit/metrics",
                                            timeout=5) as answer:
                    return answer.read().decode()  # type: ignore[no-any-return]
            except urllib.error.URLError:
                time.sleep(0.1)
        raise AssertionError("the facts server did not answer")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_facts_server_says_whether_this_host_holds_the_address() -> None:
    """On a load balancer (no facts folder): this machine's `ip -j addr` read at the scrape;
    the loopback's address is held, a documentation address is not."""
    assert _serve_facts("--address", "127.0.0.1").splitlines()[-1] == \
        'registry_kit_lb_holds_address{address="127.0.0.1"} 1'
    assert _serve_facts("--address", "192.0.2.7").splitlines()[-1] == \
        'registry_kit_lb_holds_address{address="192.0.2.7"} 0'
