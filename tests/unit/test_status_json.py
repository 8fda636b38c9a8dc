"""status --json (registry_kit.roles.status_json): typed facts from the same status sections
the text tables read, and the document's shape (the README's "Status as JSON")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_kit.facts import parse_status
from registry_kit.model.keystore import ensure_server_certificate
from registry_kit.model.settings import Settings
from registry_kit.roles import gc_timer, status_json

MARK = "@@registry-kit-status:"


def _server_sections(cert_pem: str) -> dict[str, list[str]]:
    return parse_status([
        f"{MARK}container", "registry:2.8.2|running|2024-01-01T00:00:00Z|3",
        f"{MARK}uptime", "90061",
        f"{MARK}version", "/bin/registry github.com/docker/distribution 2.8.2+ds1",
        f"{MARK}health", "401",
        f"{MARK}cert", *cert_pem.splitlines(),
        f"{MARK}bytes", "1251680", f"{MARK}repos", "2", f"{MARK}tags", "1",
        f"{MARK}timer", "active",
        f"{MARK}gc-last", "loaded", "success", "2026-12-07T03:00:02Z",
        f"{MARK}disk", "/dev/loop0 1000 900 100 90% /var/lib/registry-kit/data",
        f"{MARK}guard", "active", f"{MARK}guard-since", "2026-12-07T03:10:00Z",
        f"{MARK}last-gc", "2026-12-07T03:20:00Z collected", f"{MARK}last-retention",
    ])


def test_server_facts_are_typed(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    cert = ensure_server_certificate(tmp_path, "registry.example.internal", (), ())
    settings = make_settings(registry_state_dir=str(tmp_path))
    facts = status_json.server_facts(settings, _server_sections(cert.cert_pem.decode()))
    assert facts["image"] == "registry:2.8.2" and facts["version"] == "2.8.2"
    assert (facts["state"], facts["restarts"], facts["uptime_seconds"]) == ("running", 3, 90061)
    assert facts["v2_status"] == 401 and facts["healthy"] is True
    assert facts["url"] == "https://registry.example.internal:5000"
    assert 820 <= facts["certificate"]["days_left"] <= 825
    assert facts["certificate"]["not_after"].endswith("Z") and facts["certificate"]["error"] is None
    assert facts["storage"] == {"driver": "filesystem", "bytes": 1251680, "repositories": 2,
                                "tags": 1}
    assert facts["gc"] == {"timer": "active", "last_run": "2026-12-07T03:00:02Z",
                           "last_result": "success"}
    assert facts["disk"] == {"size": 1000, "used": 900, "free": 100,
                             "guard": "read-only since 2026-12-07T03:10:00Z",
                             "last_gc": "2026-12-07T03:20:00Z", "last_retention": None}


def test_nothing_known_is_null_not_a_guess(make_settings: Callable[..., Settings]) -> None:
    facts = status_json.server_facts(make_settings(), parse_status([
        f"{MARK}health", "000", f"{MARK}cert", "garbage",
        # A GC service that does not exist: systemd's defaults say nothing of a run.
        f"{MARK}gc-last", "not-found", "success"]))
    assert (facts["image"], facts["version"], facts["state"], facts["uptime_seconds"]) == \
        (None, None, None, None)
    assert facts["v2_status"] == 0 and facts["healthy"] is False
    assert facts["certificate"] == {"days_left": None, "not_after": None,
                                    "error": "unreadable"}
    assert facts["gc"] == {"timer": None, "last_run": None, "last_result": None}
    assert facts["disk"] == {"size": None, "used": None, "free": None, "guard": "not running",
                             "last_gc": None, "last_retention": None}
    plain = make_settings(registry_tls_mode="none", registry_tls_none_acknowledged=True)
    assert status_json.server_facts(plain, {})["certificate"] is None


def test_gc_status_command_reads_the_service_without_changing_it(
        make_settings: Callable[..., Settings]) -> None:
    command = gc_timer.status_command(make_settings())
    assert "systemctl show -p LoadState --value registry-kit-gc.service" in command
    assert "ExecMainExitTimestamp" in command and "date -u -d" in command


def test_last_backup_from_the_control_machine(make_settings: Callable[..., Settings],
                                              tmp_path: Path) -> None:
    settings = make_settings()
    assert status_json.last_backup(settings, str(tmp_path)) == \
        {"where": "control machine", "time": None}
    (tmp_path / "index.json").write_text(json.dumps({"time": "2026-12-07T01:00:00Z"}))
    assert status_json.last_backup(settings, str(tmp_path))["time"] == "2026-12-07T01:00:00Z"
    (tmp_path / "index.json").write_text("[not an index")
    assert status_json.last_backup(settings, str(tmp_path))["time"] is None
    elsewhere = make_settings(registry_backup_host="backup1")
    assert status_json.last_backup(elsewhere, str(tmp_path)) == {"where": "backup1",
                                                                 "time": None}


def test_document_names_every_address_holder(make_settings: Callable[..., Settings],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RK_VRRP", "abc12345")
    settings = make_settings(registry_lb_vip="10.0.0.250/24",
                             registry_lb_vrrp_password={"env": "RK_VRRP"})
    holding = status_json.load_balancer_facts(settings, parse_status([
        f"{MARK}haproxy", "active", f"{MARK}keepalived", "active",
        f"{MARK}servers", "rep1 UP", "rep2 MAINT",
        f"{MARK}vip", "7: eth0 inet 10.0.0.250/24 scope global secondary eth0"]))
    assert holding == {"haproxy": "active", "keepalived": "active", "address": "10.0.0.250",
                       "holds_address": True, "replicas": {"rep1": "UP", "rep2": "MAINT"},
                       "metrics": {}, "metrics_state": {}}
    backup = status_json.load_balancer_facts(settings, {"haproxy": ["active"]})
    assert backup["holds_address"] is False
    cache = status_json.cache_facts(settings, {"redis": ["active"], "memory": ["1.02M"],
                                               "keys": ["17"]})
    assert cache == {"redis": "active", "memory": "1.02M", "keys": 17, "metrics": {},
                     "metrics_state": {}}
    on = make_settings(registry_metrics=True, registry_metrics_allow=["10.0.0.5/32"],
                       registry_internal_address="10.0.0.31")
    assert status_json.cache_facts(on, {})["metrics"] == {
        "redis": "http://10.0.0.31:9195/redis/metrics"}
    doc = status_json.document({}, {"lb2": backup, "lb1": holding}, {"c": cache}, {}, {})
    assert doc["schema"] == status_json.SCHEMA and list(doc["load_balancers"]) == ["lb1", "lb2"]
    assert doc["address_holders"] == ["lb1"]
    json.dumps(doc)  # serializable as it is
    no_vip = status_json.load_balancer_facts(make_settings(), {"haproxy": ["active"]})
    assert status_json.document({}, {"lb": no_vip}, {}, {}, {})["address_holders"] is None


def test_metrics_of_every_role_with_the_state_of_their_units(
        make_settings: Callable[..., Settings]) -> None:
    """Schema 2: `metrics` is kind -> URL of every endpoint, `metrics_state` kind -> the
    word of the first unit it needs that is not active (null: not read)."""
    assert status_json.SCHEMA == 2
    on = make_settings(registry_metrics=True, registry_metrics_allow=["10.0.0.5/32"],
                       registry_internal_address="10.0.0.11", registry_node_exporter=True)
    server = status_json.server_facts(on, parse_status([
        f"{MARK}metrics-server", "active", "failed", "active"]))
    url = "http://10.0.0.11:9195"
    assert server["metrics"] == {"registry": f"{url}/metrics", "facts": f"{url}/kit/metrics",
                                 "node": f"{url}/node/metrics"}
    assert server["metrics_state"] == {"registry": "active", "facts": "failed",
                                       "node": "active"}
    lb = status_json.load_balancer_facts(on, parse_status([
        f"{MARK}metrics-lb", "inactive", "active"]))
    assert lb["metrics"] == {"haproxy": f"{url}/metrics", "node": f"{url}/node/metrics"}
    assert lb["metrics_state"] == {"haproxy": "inactive", "node": "inactive"}  # the front
    cache = status_json.cache_facts(on, parse_status([f"{MARK}metrics-cache", "active"]))
    assert cache["metrics"] == {"redis": f"{url}/redis/metrics",
                                "node": f"{url}/node/metrics"}
    assert cache["metrics_state"] == {"redis": None, "node": None}  # 1 line for 3 units
    doc = json.loads(json.dumps(status_json.document({"s": server}, {"l": lb}, {"c": cache},
                                                     {}, {})))
    assert doc["schema"] == 2 and doc["caches"]["c"]["metrics_state"]["redis"] is None


def test_client_facts_from_the_text_row() -> None:
    row = {"client": "c1", "docker": "24.0.7", "registry": "r:5000", "trust": "ok",
           "login": "yes (ci)", "hosts entries": "1"}
    assert status_json.client_facts(row) == {"docker": "24.0.7", "registry": "r:5000",
                                             "trust": "ok", "login": "yes (ci)",
                                             "hosts_entries": 1}
    assert status_json.client_facts({"docker": "not running"})["docker"] is None
