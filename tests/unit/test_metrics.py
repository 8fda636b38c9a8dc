"""registry_metrics: the settings' refusals, the registry's debug server on loopback, the
filter in front of it on servers and haproxy's exporter on load balancers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from registry_kit.model import layout
from registry_kit.model import settings as settings_mod
from registry_kit.model import topology as topo
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render.config import render_config
from registry_kit.roles import loadbalancer, metrics, server, status_json

ON = {"registry_metrics": True, "registry_metrics_allow": ["10.0.0.5", "192.168.1.0/24"],
      "registry_internal_address": "10.0.0.11"}


def test_off_by_default_and_nothing_served(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert not settings.registry_metrics and layout.metrics_url(settings) is None
    assert "debug" not in yaml.safe_load(render_config(settings, "secret"))["http"]


def test_on_puts_the_debug_server_on_loopback(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**ON)
    assert settings.registry_metrics_allow == ("10.0.0.5/32", "192.168.1.0/24")
    assert settings.registry_debug_addr == "127.0.0.1:5001"
    assert layout.metrics_url(settings) == "http://10.0.0.11:9195/metrics"
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
    assert "    http-request deny unless { path /metrics } { method GET }\n" in text
    assert "    server registry 127.0.0.1:5001\n" in text
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
    assert status_json.load_balancer_facts(lb, {})["metrics"] == "http://10.0.0.11:9195/metrics"
    off, topology = _lb(registry_metrics=False)
    assert "frontend metrics" not in loadbalancer.render(off, topology)


def test_load_balancer_without_an_ip_is_refused_before_any_host() -> None:
    _, topology = _lb(registry_internal_address="lb1.example")
    with pytest.raises(SettingsError, match="lb1: setting registry_metrics_bind=None"):
        topo.validate_metrics(topology)
