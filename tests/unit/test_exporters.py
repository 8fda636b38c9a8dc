"""Debian's exporters behind the metrics endpoint (registry_kit.roles.exporters): the redis
exporter on the cache host, the node exporter with registry_node_exporter. Their drop-ins
and password file, the filters that pass to them, the settings' refusals, the scrape config
and RedisDown (promtool), and the operations' exact commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry_kit.jobs import prometheus as folder
from registry_kit.model import settings as settings_mod
from registry_kit.model import topology as topo
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render import prometheus
from registry_kit.roles import exporters, loadbalancer, metrics
from tests.unit.test_operations import probe, run
from tests.unit.test_prometheus import _promtool, needs_promtool

ON = {"registry_anonymous_acknowledged": True, "registry_metrics": True,
      "registry_metrics_allow": ["10.0.0.5/32"]}


def _topology(tmp_path: Path, cache_is: str = "cache1", **data: Any) -> topo.Topology:
    base = {**ON, "registry_state_dir": str(tmp_path / "state"), **data}

    def load(name: str, address: str, server: bool = True) -> Settings:
        return settings_mod.load(name, {**base, "registry_internal_address": address},
                                 server=server)

    lb = load("lb1", "10.0.0.11", server=False)
    caches = {"cache1": load("cache1", "10.0.0.31", server=False), "lb1": lb}
    return topo.Topology(servers=(load("rep1", "10.0.0.21"),), lbs=(lb,),
                         caches=(caches[cache_is],))


def test_which_host_runs_which(tmp_path: Path) -> None:
    hosts = _topology(tmp_path, registry_node_exporter=True)
    rep, lb, cache = hosts.servers[0], hosts.lbs[0], hosts.caches[0]
    assert exporters.wanted(cache, True) == (exporters.REDIS, exporters.NODE)
    assert exporters.wanted(rep, False) == exporters.wanted(lb, False) == (exporters.NODE,)
    assert [r.path for r in exporters.routes(cache, hosts)] == ["/redis/metrics",
                                                                "/node/metrics"]
    off = _topology(tmp_path, registry_metrics=False)
    assert exporters.wanted(off.caches[0], True) == ()
    assert exporters.wanted(_topology(tmp_path).servers[0], False) == ()  # node: opt-in


def test_dropins_listen_on_the_loopback_and_the_password_is_in_a_file(tmp_path: Path) -> None:
    cache = _topology(tmp_path, registry_cache_port=6380).caches[0]
    redis = exporters.dropin(exporters.REDIS, cache).decode()
    assert redis.endswith(
        "[Service]\nEnvironmentFile=/etc/systemd/system/prometheus-redis-exporter.service.d/"
        "registry-kit.env\nExecStart=\nExecStart=/usr/bin/prometheus-redis-exporter "
        "--web.listen-address=127.0.0.1:9121 --web.telemetry-path=/redis/metrics "
        "--redis.addr=redis://127.0.0.1:6380\n")
    assert redis.startswith("# Managed by registry-kit")
    node = exporters.dropin(exporters.NODE, cache).decode()
    assert node.endswith("[Service]\nExecStart=\nExecStart=/usr/bin/prometheus-node-exporter "
                         "--web.listen-address=127.0.0.1:9100 "
                         "--web.telemetry-path=/node/metrics\n")
    assert exporters.redis_environment(exporters.REDIS, "pw-1_x") == b"REDIS_PASSWORD=pw-1_x\n"
    for bad in ("a b", "a\nREDIS_ADDR=x", 'a"b', "a$b", "a\\b"):
        with pytest.raises(ValueError) as error:
            exporters.redis_environment(exporters.REDIS, bad)
        assert "(secret)" in str(error.value) and bad not in str(error.value)


def test_filters_pass_each_exporter_on_its_path_only(tmp_path: Path) -> None:
    hosts = _topology(tmp_path, registry_node_exporter=True)
    cache = hosts.caches[0]
    text = metrics.render(cache, exporters.routes(cache, hosts), server=False)
    assert "    http-request deny unless { path /redis/metrics /node/metrics } " \
           "{ method GET }\n" in text
    assert "    use_backend exporter-redis if { path /redis/metrics }\n" \
           "    use_backend exporter-node if { path /node/metrics }\n" in text
    assert "backend registry" not in text and "default_backend" not in text
    assert "backend exporter-redis\n    mode http\n    server redis 127.0.0.1:9121\n" in text
    assert text.endswith("backend exporter-node\n    mode http\n    server node "
                         "127.0.0.1:9100\n")
    rep = hosts.servers[0]
    server_text = metrics.render(rep, exporters.routes(rep, hosts))
    assert "{ path /metrics /kit/metrics /node/metrics } { method GET }" in server_text
    assert "default_backend registry" in server_text
    # Without exporters, the server's filter is what it was.
    plain = _topology(tmp_path).servers[0]
    assert metrics.render(plain, exporters.routes(plain, _topology(tmp_path))) == \
        metrics.render(plain)
    lb = loadbalancer.render(hosts.lbs[0], hosts).split("frontend metrics\n", 1)[1]
    assert "    http-request use-service prometheus-exporter if { path /metrics }\n" \
           "    http-request deny unless { path /node/metrics } { method GET }\n" \
           "    use_backend exporter-node if { path /node/metrics }\n" in lb
    assert "backend exporter-redis" not in lb
    # A load balancer that is the cache too: redis' exporter on its endpoint.
    both = _topology(tmp_path, cache_is="lb1")
    assert "use_backend exporter-redis if { path /redis/metrics }" in \
        loadbalancer.render(both.lbs[0], both)
    bare = _topology(tmp_path)
    assert "    http-request deny\n" in loadbalancer.render(bare.lbs[0], bare)


@pytest.mark.parametrize(("data", "key"), [
    ({"registry_metrics": False, "registry_node_exporter": True}, "registry_node_exporter"),
    ({"registry_metrics_port": 9121}, "registry_metrics_port"),
    ({"registry_metrics_port": 9100}, "registry_metrics_port"),
    ({"registry_port": 9100}, "registry_port"),
    ({"registry_cache_port": 9121}, "registry_cache_port"),
    ({"registry_metrics_port": 6379}, "registry_metrics_port"),
    ({"registry_cache_password": {"env": "RK_TEST_CACHE_PASSWORD"}}, "registry_cache_password"),
])
def test_refused_with_one_line(make_settings: Callable[..., Settings], data: dict[str, Any],
                               key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cache password redis.conf takes but the exporter's EnvironmentFile would not.
    password = "abcdefghijklmnop$`"
    monkeypatch.setenv("RK_TEST_CACHE_PASSWORD", password)
    with pytest.raises(SettingsError) as error:
        make_settings(**{**ON, "registry_internal_address": "10.0.0.11", **data})
    assert f"setting {key}=" in str(error.value) and "\n" not in str(error.value)
    assert password not in str(error.value)


def test_a_cache_without_an_ip_for_metrics_is_refused(tmp_path: Path) -> None:
    hosts = _topology(tmp_path)
    cache = settings_mod.load("cache1", {**ON, "registry_internal_address": "10.0.0.31",
                                         "registry_metrics_bind": "0.0.0.0"}, server=False)
    with pytest.raises(SettingsError, match=re.escape(
            "cache1: setting registry_metrics_bind='0.0.0.0'")):
        topo.validate_metrics(topo.Topology(hosts.servers, hosts.lbs, (cache,)))


def test_scrape_config_and_redis_down(tmp_path: Path) -> None:
    written = folder.write_folder(_topology(tmp_path, registry_node_exporter=True))
    assert written is not None
    config = yaml.safe_load((written / prometheus.CONFIG_FILE).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[prometheus.REDIS_JOB] == {"job_name": prometheus.REDIS_JOB,
                                          "metrics_path": "/redis/metrics", "static_configs": [
                                              {"targets": ["10.0.0.31:9195"],
                                               "labels": {"host": "cache1"}}]}
    assert [c["labels"]["host"] for c in jobs[prometheus.NODE_JOB]["static_configs"]] == \
        ["rep1", "lb1", "cache1"]
    assert jobs[prometheus.NODE_JOB]["metrics_path"] == "/node/metrics"
    rules = yaml.safe_load((written / prometheus.RULES_FILE).read_text())["groups"][0]["rules"]
    assert [r["expr"] for r in rules if r["alert"] == "RedisDown"] == [
        'up{job="registry-kit-redis"} == 0 or redis_up{job="registry-kit-redis"} == 0']
    # No node exporter asked for: no such job; no cache: no RedisDown.
    plain = folder.write_folder(topo.Topology(_topology(tmp_path).servers, (), ()))
    assert plain is not None
    text = (plain / prometheus.CONFIG_FILE).read_text() + \
        (plain / prometheus.RULES_FILE).read_text()
    assert prometheus.NODE_JOB not in text and "RedisDown" not in text


@needs_promtool
def test_promtool_accepts_them_and_redis_down_fires(tmp_path: Path) -> None:
    written = folder.write_folder(_topology(tmp_path, registry_node_exporter=True))
    assert written is not None
    assert "SUCCESS" in _promtool("check", "config", str(written / prometheus.CONFIG_FILE))
    assert "SUCCESS: 13 rules found" in _promtool("check", "rules",
                                                  str(written / prometheus.RULES_FILE))
    labels = 'job="registry-kit-redis",host="cache1",instance="10.0.0.31:9195"'
    test = {"rule_files": [str(written / prometheus.RULES_FILE)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": [
                {"series": f"up{{{labels}}}", "values": "1x10"},
                {"series": f"redis_up{{{labels}}}", "values": "1 1 0 0 0 0 1 1 1 1 1"}],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "RedisDown", "exp_alerts": []},
                    {"eval_time": "4m", "alertname": "RedisDown", "exp_alerts": [{
                        "exp_labels": {"severity": "warning", "job": "registry-kit-redis",
                                       "host": "cache1", "instance": "10.0.0.31:9195"},
                        "exp_annotations": {"summary": "redis (the replicas' blob-descriptor "
                                            "cache) on cache1 does not answer: the replicas "
                                            "read the storage instead (slower)"}}]},
                    {"eval_time": "8m", "alertname": "RedisDown", "exp_alerts": []}]}]}
    test_file = tmp_path / "test.yml"
    test_file.write_text(yaml.safe_dump(test))
    assert "SUCCESS" in _promtool("test", "rules", str(test_file))


# --- operations: the exact commands

DROPIN = "/etc/systemd/system/prometheus-redis-exporter.service.d/registry-kit.conf"
ENV = "/etc/systemd/system/prometheus-redis-exporter.service.d/registry-kit.env"


def test_removal_only_where_the_kit_set_it_up() -> None:
    nothing = probe(services=["prometheus-redis-exporter active enabled"])
    assert run(exporters.remove_exporter, exporters.REDIS, nothing, False) == \
        ([], ["prometheus-redis-exporter: not set up by registry-kit"])
    ours = probe(files=[f"{'0' * 64} 644 root root {DROPIN}",
                        f"{'1' * 64} 600 root root {ENV}"],
                 commands=["/usr/bin/prometheus-redis-exporter"])
    assert run(exporters.remove_exporter, exporters.REDIS, ours, False) == ([
        "systemctl disable --now prometheus-redis-exporter >/dev/null 2>&1; true",
        f"rm -f {DROPIN} {ENV} && rmdir --ignore-fail-on-non-empty "
        "/etc/systemd/system/prometheus-redis-exporter.service.d && systemctl daemon-reload"],
        [])
    commands, _ = run(exporters.remove_exporter, exporters.REDIS, ours, True)
    assert commands[1] == "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q " \
                          "prometheus-redis-exporter"


def test_restart_after_a_changed_dropin() -> None:
    assert run(exporters.restart_exporter, exporters.NODE) == ([
        "systemctl daemon-reload && systemctl restart prometheus-node-exporter"], [])
