"""The Prometheus folder (registry_kit.render.prometheus, registry_kit.jobs.prometheus):
Prometheus' own promtool checks the scrape config and the rules, and `promtool test rules`
proves each rule fires on the series it is written for (and stays quiet otherwise)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry_kit.jobs import prometheus as folder
from registry_kit.model import layout
from registry_kit.model import settings as settings_mod
from registry_kit.model import topology as topo
from registry_kit.render import prometheus

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus "
                                    "package; .ci/run installs it) is not installed")
ON = {"registry_anonymous_acknowledged": True, "registry_metrics": True,
      "registry_metrics_allow": ["10.0.0.5/32"]}


VIP = "10.0.0.250"


def _hosts(tmp_path: Path, vip: bool = False, **data: Any) -> topo.Topology:
    """Two replicas and one load balancer; with `vip`, two load balancers sharing VIP."""
    common = {**ON, "registry_state_dir": str(tmp_path / "state"), **data}

    def load(name: str, address: str, server: bool = True) -> settings_mod.Settings:
        return settings_mod.load(name, {**common, "registry_internal_address": address,
                                        **({"registry_lb_vip": f"{VIP}/24"} if vip else {})},
                                 server=server)

    lbs = (load("lb1", "10.0.0.11", server=False),
           *((load("lb2", "10.0.0.12", server=False),) if vip else ()))
    return topo.Topology(servers=(load("rep1", "10.0.0.21"), load("rep2", "10.0.0.22")),
                         lbs=lbs, caches=())


def _promtool(*args: str) -> str:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_scrape_config_lists_every_endpoint(tmp_path: Path) -> None:
    written = folder.write_folder(_hosts(tmp_path))
    assert written == tmp_path / "state" / "prometheus"
    config = yaml.safe_load((written / prometheus.CONFIG_FILE).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert [c["targets"] for c in jobs[prometheus.REGISTRY_JOB]["static_configs"]] == \
        [["10.0.0.21:9195"], ["10.0.0.22:9195"]]
    assert jobs[prometheus.HAPROXY_JOB]["static_configs"] == \
        [{"targets": ["10.0.0.11:9195"], "labels": {"host": "lb1"}}]
    # The kit's facts: the same filter of each server, another path.
    assert jobs[prometheus.FACTS_JOB]["metrics_path"] == "/kit/metrics"
    assert jobs[prometheus.FACTS_JOB]["static_configs"] == \
        jobs[prometheus.REGISTRY_JOB]["static_configs"]
    assert config["rule_files"] == [prometheus.RULES_FILE]
    # No floating address: nothing to say about where it is.
    assert prometheus.LB_FACTS_JOB not in jobs


def test_scrape_config_lists_the_load_balancers_facts_with_a_floating_address(
        tmp_path: Path) -> None:
    """Each LB's facts (whether it holds the address) on its haproxy's metrics endpoint,
    the path of the servers' facts; the address rules are written with them."""
    written = folder.write_folder(_hosts(tmp_path, vip=True))
    assert written is not None
    config = yaml.safe_load((written / prometheus.CONFIG_FILE).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[prometheus.LB_FACTS_JOB] == {
        "job_name": prometheus.LB_FACTS_JOB, "metrics_path": "/kit/metrics",
        "static_configs": [{"targets": ["10.0.0.11:9195"], "labels": {"host": "lb1"}},
                           {"targets": ["10.0.0.12:9195"], "labels": {"host": "lb2"}}]}
    assert jobs[prometheus.HAPROXY_JOB]["static_configs"] == \
        jobs[prometheus.LB_FACTS_JOB]["static_configs"]
    rules = yaml.safe_load((written / prometheus.RULES_FILE).read_text())["groups"][0]["rules"]
    address = {rule["alert"]: rule for rule in rules if "Address" in rule["alert"]
               or rule["alert"] == "LoadBalancerFactsDown"}
    assert sorted(address) == ["AddressOnNoLoadBalancer", "AddressOnTwoLoadBalancers",
                               "LoadBalancerFactsDown"]
    # Three intervals, at least 30 s (a handover's glimpse lasts at most two evaluations).
    assert address["AddressOnTwoLoadBalancers"]["for"] == "45s"
    assert VIP in address["AddressOnNoLoadBalancer"]["annotations"]["summary"]
    fast = folder.write_folder(_hosts(tmp_path, vip=True, registry_prometheus_interval=2))
    assert fast is not None
    assert "for: 30s" in (fast / prometheus.RULES_FILE).read_text()
    # Without metrics on the load balancers (servers only): no LB facts, no address rules.
    assert "Address" not in prometheus.alert_rules(topo.BACKEND, with_lbs=True)


def test_written_once_and_removed_when_metrics_go(tmp_path: Path) -> None:
    written = folder.write_folder(_hosts(tmp_path))
    assert written is not None
    before = {p.name: p.stat().st_mtime_ns for p in written.iterdir()}
    folder.write_folder(_hosts(tmp_path))
    assert {p.name: p.stat().st_mtime_ns for p in written.iterdir()} == before
    (written / "mine.yml").write_text("kept")
    assert folder.write_folder(_hosts(tmp_path, registry_metrics=False)) is None
    assert sorted(p.name for p in written.iterdir()) == ["mine.yml"]


@needs_promtool
def test_promtool_checks_config_and_rules(tmp_path: Path) -> None:
    written = folder.write_folder(_hosts(tmp_path))
    assert written is not None
    assert "SUCCESS" in _promtool("check", "config", str(written / prometheus.CONFIG_FILE))
    # The registry's two, the load balancers' three, the kit's facts' seven (the failed
    # logins' with token auth; no backup's: backup.py has not run).
    assert "SUCCESS: 12 rules found" in _promtool("check", "rules",
                                                  str(written / prometheus.RULES_FILE))
    # Two LBs with a floating address: its three rules more.
    with_vip = folder.write_folder(_hosts(tmp_path, vip=True))
    assert with_vip is not None
    assert "SUCCESS" in _promtool("check", "config", str(with_vip / prometheus.CONFIG_FILE))
    assert "SUCCESS: 15 rules found" in _promtool("check", "rules",
                                                  str(with_vip / prometheus.RULES_FILE))
    # A single server without load balancers or facts: the registry's two rules only.
    single = tmp_path / "single.yml"
    single.write_text(prometheus.alert_rules(topo.BACKEND, with_lbs=False))
    assert "SUCCESS: 2 rules found" in _promtool("check", "rules", str(single))


@needs_promtool
def test_interval_is_a_setting_promtool_accepts(tmp_path: Path) -> None:
    """registry_prometheus_interval: scrapes and evaluations every N seconds (the e2e runs
    a real Prometheus at 2 s); the scrape timeout stays within the interval."""
    written = folder.write_folder(_hosts(tmp_path, registry_prometheus_interval=2))
    assert written is not None
    config = yaml.safe_load((written / prometheus.CONFIG_FILE).read_text())
    assert config["global"] == {"scrape_interval": "2s", "evaluation_interval": "2s",
                                "scrape_timeout": "2s"}
    assert "SUCCESS" in _promtool("check", "config", str(written / prometheus.CONFIG_FILE))
    default = yaml.safe_load(prometheus.scrape_config(
        {prometheus.REGISTRY_JOB: [("r", "http://10.0.0.1:9195/m")]}))
    assert default["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s",
                                 "scrape_timeout": "10s"}


def _alert(name: str, at: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": {"summary": summary}}]}


@needs_promtool
def test_each_rule_fires_on_its_series(tmp_path: Path) -> None:
    """promtool test rules: series sampled every minute; an alert fires after its `for:`."""
    rules = tmp_path / prometheus.RULES_FILE
    rules.write_text(prometheus.alert_rules(topo.BACKEND, with_lbs=True))
    reg, lb = prometheus.REGISTRY_JOB, prometheus.HAPROXY_JOB
    backend = topo.BACKEND
    tests = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f'up{{job="{reg}",host="rep1"}}', "values": "1 1 0 0 0 0"},
            {"series": f'up{{job="{reg}",host="rep2"}}', "values": "1 1 1 1 1 1"},
            {"series": f'registry_http_requests_total{{job="{reg}",host="rep2",code="200"}}',
             "values": "0+100x20"},
            {"series": f'registry_http_requests_total{{job="{reg}",host="rep2",code="503"}}',
             "values": "0+20x20"},
            {"series": f'haproxy_server_status{{job="{lb}",host="lb1",proxy="{backend}",'
                       'server="rep1",state="UP"}', "values": "1 0x15"},
            {"series": f'haproxy_backend_active_servers{{job="{lb}",host="lb1",'
                       f'proxy="{backend}"}}', "values": "2 1 0 0 0"},
            {"series": f'up{{job="{lb}",host="lb1"}}', "values": "1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "RegistryDown", "exp_alerts": []},
            _alert("RegistryDown", "4m", {"severity": "critical", "job": reg, "host": "rep1"},
                   "registry on rep1 does not answer its metrics (down, or its filter is)"),
            _alert("Registry5xxRate", "15m", {"severity": "warning", "host": "rep2"},
                   "over 5% of requests to rep2 answer 5xx"),
            {"eval_time": "5m", "alertname": "ReplicaOutOfRotation", "exp_alerts": []},
            _alert("ReplicaOutOfRotation", "12m", {
                "severity": "warning", "job": lb, "host": "lb1", "proxy": backend,
                "server": "rep1", "state": "UP"}, "replica rep1 is out of rotation on lb1"),
            _alert("RegistryDownThroughLoadBalancer", "4m", {
                "severity": "critical", "job": lb, "host": "lb1", "proxy": backend},
                "lb1 has no replica in rotation: the registry's address serves nothing there"),
            {"eval_time": "10m", "alertname": "LoadBalancerDown", "exp_alerts": []},
        ]}]}
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in _promtool("test", "rules", str(test_file))


@needs_promtool
def test_each_fact_rule_fires_after_its_for(tmp_path: Path) -> None:
    """The rules on the kit's own gauges: each fires on its series once its `for:` has
    passed, not before (promtool's time() starts at 0, so the certificate's notAfter is
    written as seconds from the start)."""
    rules = tmp_path / prometheus.RULES_FILE
    rules.write_text(prometheus.alert_rules(topo.BACKEND, False, prometheus.FACTS))
    job = f'job="{prometheus.FACTS_JOB}",host="rep1"'
    labels = {"job": prometheus.FACTS_JOB, "host": "rep1"}
    days = prometheus.CERTIFICATE_DAYS
    tests = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f"up{{{job}}}", "values": "1 1 0x10"},
            # Under 21 days left from 11 minutes on.
            {"series": f'registry_kit_certificate_not_after_timestamp_seconds{{{job},'
                       'certificate="server"}', "values": f"{days * 86400 + 600}x30"},
            {"series": f"registry_kit_data_filesystem_used_bytes{{{job}}}",
             "values": "80 80 90x10"},
            {"series": f"registry_kit_data_filesystem_avail_bytes{{{job}}}",
             "values": "20 20 10x10"},
            {"series": f"registry_kit_disk_guard_read_only{{{job}}}", "values": "0 0 1x10"},
            {"series": f"registry_kit_gc_last_success{{{job}}}", "values": "1 1 0x10"},
            {"series": f"registry_kit_retention_last_success{{{job}}}", "values": "1 1 1 0x10"},
        ],
        "alert_rule_test": [
            {"eval_time": "6m", "alertname": "RegistryFactsDown", "exp_alerts": []},
            _alert("RegistryFactsDown", "7m", {"severity": "warning", **labels},
                   "the kit's facts on rep1 are not served: its certificate, disk, "
                   "garbage collection, login and backup alerts cannot fire"),
            # No `for:`: firing at the first evaluation with under 21 days left.
            {"eval_time": "10m", "alertname": "RegistryCertificateExpiresSoon",
             "exp_alerts": []},
            _alert("RegistryCertificateExpiresSoon", "11m",
                   {"severity": "critical", "certificate": "server", **labels},
                   "the server certificate of rep1 expires in under 21 days (the kit renews "
                   "at 30: renewal failed)"),
            {"eval_time": "2m", "alertname": "RegistryDataDiskAbove85", "exp_alerts": []},
            _alert("RegistryDataDiskAbove85", "3m", {"severity": "warning", **labels},
                   "the registry's data filesystem on rep1 is over 85% full"),
            {"eval_time": "2m", "alertname": "RegistryDiskGuardReadOnly", "exp_alerts": []},
            _alert("RegistryDiskGuardReadOnly", "3m", {"severity": "critical", **labels},
                   "the disk guard holds the registry on rep1 read-only: pushes are refused "
                   "(405)"),
            {"eval_time": "2m", "alertname": "RegistryGCFailed", "exp_alerts": []},
            _alert("RegistryGCFailed", "3m", {"severity": "warning", **labels},
                   "the last garbage collection on rep1 failed (journalctl -u "
                   "registry-kit-gc)"),
            {"eval_time": "3m", "alertname": "RegistryRetentionFailed", "exp_alerts": []},
            _alert("RegistryRetentionFailed", "4m", {"severity": "warning", **labels},
                   "the last retention run on rep1 failed (retention.py's output says why)"),
        ]}]}
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in _promtool("test", "rules", str(test_file))


@needs_promtool
def test_failed_logins_and_backup_age_fire_and_stay_quiet(tmp_path: Path) -> None:
    """FailedLoginsHigh: rep1's token server counts 10 failed logins a minute (fires once
    the 5-minute rate is over 5 a minute and its `for:` of 1m has passed; not in the first
    2 minutes, whose rate promtool puts under 5), rep2's 3 a minute (under 5: never).
    BackupTooOld: rep1 last backed up at time 0 (older than 26 h from 26h00m01s on, fires
    10 minutes later), rep2 backed up all along (the gauge follows the clock), rep3 never
    backed up (no series: never, as the rule's comment says)."""
    rules = tmp_path / prometheus.RULES_FILE
    rules.write_text(prometheus.alert_rules(topo.BACKEND, False, {"token", "backup"}))

    def labels(host: str) -> dict[str, str]:
        return {"job": prometheus.FACTS_JOB, "host": host}

    def series(name: str, host: str) -> str:
        return f'{name}{{job="{prometheus.FACTS_JOB}",host="{host}"}}'

    failed, backup = ("registry_kit_token_failed_logins_total",
                      "registry_kit_backup_last_success_timestamp_seconds")
    hours = prometheus.BACKUP_HOURS
    tests = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": series(failed, "rep1"), "values": "0+10x30"},
            {"series": series(failed, "rep2"), "values": "0+3x30"},
            {"series": series(backup, "rep1"), "values": f"0x{hours * 60 + 20}"},
            {"series": series(backup, "rep2"), "values": f"0+60x{hours * 60 + 20}"},
            {"series": series("up", "rep3"), "values": f"1x{hours * 60 + 20}"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "FailedLoginsHigh", "exp_alerts": []},
            _alert("FailedLoginsHigh", "10m", {"severity": "warning", **labels("rep1")},
                   "over 5 failed logins a minute at the token server of rep1 (someone "
                   "guessing passwords?): journalctl -u registry-kit-token"),
            _alert("FailedLoginsHigh", "30m", {"severity": "warning", **labels("rep1")},
                   "over 5 failed logins a minute at the token server of rep1 (someone "
                   "guessing passwords?): journalctl -u registry-kit-token"),
            {"eval_time": f"{hours}h10m", "alertname": "BackupTooOld", "exp_alerts": []},
            _alert("BackupTooOld", f"{hours}h11m", {"severity": "warning", **labels("rep1")},
                   f"the last successful backup.py run for rep1 is over {hours} h old"),
        ]}]}
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in _promtool("test", "rules", str(test_file))


def _address_test(rules: Path, input_series: list[dict[str, str]],
                  checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"interval": "15s", "input_series": input_series, "alert_rule_test": checks}


def _none(name: str, *times: str) -> list[dict[str, Any]]:
    return [{"eval_time": at, "alertname": name, "exp_alerts": []} for at in times]


@needs_promtool
def test_address_rules_fire_on_none_or_two_holders_not_on_a_handover(tmp_path: Path) -> None:
    """promtool test rules at the default 15 s interval (`for:` 45 s), with one sample
    every 15 s: one holder is quiet; a handover's glimpse of two holders or of none (one
    evaluation, as when the scrapes of the two LBs straddle the move, or the holder dies and
    the other takes over) is quiet; two holders or none for 45 s fire; no LB answering at
    all fires too (no series: `or vector(0)`)."""
    rules = tmp_path / prometheus.RULES_FILE
    rules.write_text(prometheus.alert_rules(topo.BACKEND, True, address=VIP))
    job = prometheus.LB_FACTS_JOB

    def held(lb: str, values: str) -> dict[str, str]:
        return {"series": f'registry_kit_lb_holds_address{{job="{job}",host="{lb}",'
                          f'address="{VIP}"}}', "values": values}

    def up(lb: str, values: str) -> dict[str, str]:
        return {"series": f'up{{job="{job}",host="{lb}"}}', "values": values}

    two = f"2 load balancers hold the registry's address {VIP} (they do not hear each " \
          "other's VRRP adverts): connections break"
    nobody = f"no load balancer that answers holds the registry's address {VIP}: clients " \
             "reach no registry through it"
    critical = {"severity": "critical"}
    # Steps of 15 s: 0-3 lb1 holds; 4 both (a glimpse); 5-9 lb2 holds; 10-15 both;
    # 16-21 neither.
    steps = _address_test(rules, [
        held("lb1", "1 1 1 1 1 0 0 0 0 0 1 1 1 1 1 1 0 0 0 0 0 0"),
        held("lb2", "0 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0")], [
        *_none("AddressOnTwoLoadBalancers", "45s", "60s", "75s", "90s", "180s"),
        *_none("AddressOnNoLoadBalancer", "0s", "45s", "120s", "225s", "270s"),
        _alert("AddressOnTwoLoadBalancers", "195s", critical, two),
        _alert("AddressOnNoLoadBalancer", "285s", critical, nobody)])
    # The holder's host killed: its series goes stale at the failed scrape, the other LB
    # says 0 once, then 1 (keepalived moved the address within the interval).
    killed = _address_test(rules, [
        held("lb1", "1 1 1 1 stale"), up("lb1", "1 1 1 1 0x10"),
        held("lb2", "0 0 0 0 0 1x10")], [
        *_none("AddressOnNoLoadBalancer", "60s", "75s", "90s", "120s", "150s"),
        *_none("AddressOnTwoLoadBalancers", "60s", "150s")])
    # No LB answers: no series at all; after 45 s "on no load balancer", after 5 minutes
    # each LB's facts down.
    down = _address_test(rules, [up("lb1", "0x30"), up("lb2", "0x30")], [
        *_none("AddressOnNoLoadBalancer", "30s"),
        _alert("AddressOnNoLoadBalancer", "45s", critical, nobody),
        *_none("LoadBalancerFactsDown", "285s"),
        {"eval_time": "300s", "alertname": "LoadBalancerFactsDown", "exp_alerts": [
            {"exp_labels": {"severity": "warning", "job": job, "host": lb},
             "exp_annotations": {"summary": f"the kit's facts on {lb} are not served: where "
                                            "the registry's address is cannot be told there"}}
            for lb in ("lb1", "lb2")]}])
    tests = {"rule_files": [rules.name], "evaluation_interval": "15s",
             "tests": [steps, killed, down]}
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    assert "SUCCESS" in _promtool("test", "rules", str(test_file))


def test_fact_rules_only_for_the_facts_served(tmp_path: Path) -> None:
    """A rule on a gauge no server serves could never fire: not written."""
    def written(**data: Any) -> set[str]:
        folder.write_folder(_hosts(tmp_path, **data))
        text = (tmp_path / "state" / "prometheus" / prometheus.RULES_FILE).read_text()
        return {rule["alert"] for rule in yaml.safe_load(text)["groups"][0]["rules"]}

    facts = {"RegistryFactsDown", "RegistryCertificateExpiresSoon", "RegistryDataDiskAbove85",
             "RegistryDiskGuardReadOnly", "RegistryGCFailed", "RegistryRetentionFailed"}
    assert facts <= written()
    bare = written(registry_tls_mode="none", registry_storage={"driver": "inmemory"})
    assert bare & facts == {"RegistryFactsDown", "RegistryGCFailed", "RegistryRetentionFailed"}
    assert "RegistryDiskGuardReadOnly" not in written(registry_disk_readonly_percent=None)
    # Backups: filesystem storage (backup.py's); failed logins: token auth (users).
    assert "BackupTooOld" in written() and "BackupTooOld" not in bare
    assert "FailedLoginsHigh" not in written()
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    assert "FailedLoginsHigh" in written(registry_users=users)
    assert prometheus.alert_rules(topo.BACKEND, with_lbs=False).count("alert:") == 2


def test_every_rule_with_every_fact_served() -> None:
    text = prometheus.alert_rules(topo.BACKEND, with_lbs=True, facts=prometheus.FACTS)
    written = {rule["alert"] for rule in yaml.safe_load(text)["groups"][0]["rules"]}
    assert written == {"RegistryDown", "Registry5xxRate", "LoadBalancerDown",
                       "RegistryDownThroughLoadBalancer", "ReplicaOutOfRotation",
                       "RegistryFactsDown", "RegistryCertificateExpiresSoon",
                       "RegistryDataDiskAbove85", "RegistryDiskGuardReadOnly",
                       "RegistryGCFailed", "RegistryRetentionFailed", "FailedLoginsHigh",
                       "BackupTooOld"}
    with_address = prometheus.alert_rules(topo.BACKEND, True, prometheus.FACTS, address=VIP)
    assert {rule["alert"] for rule in yaml.safe_load(with_address)["groups"][0]["rules"]} == \
        written | {"AddressOnNoLoadBalancer", "AddressOnTwoLoadBalancers",
                   "LoadBalancerFactsDown"}


def test_counters_and_backup_facts_text() -> None:
    text = prometheus.counters([("registry_kit_token_issued_total", "tokens", [({}, 3)])])
    assert text.splitlines() == ["# HELP registry_kit_token_issued_total tokens",
                                 "# TYPE registry_kit_token_issued_total counter",
                                 "registry_kit_token_issued_total 3"]
    for bad in [("registry_kit_x", "h", [({}, 1)]), ("x_total", "h", [({}, -1)]),
                ("x_total", "h", [({}, 1.5)])]:
        with pytest.raises(ValueError):
            prometheus.counters([bad])
    with pytest.raises(ValueError):
        prometheus.gauges([], kind="histogram")
    assert prometheus.backup_facts(1803859200.7).splitlines()[1:] == [
        "# TYPE registry_kit_backup_last_success_timestamp_seconds gauge",
        "registry_kit_backup_last_success_timestamp_seconds 1803859200"]


def test_gauges_text_is_checked_and_escaped() -> None:
    text = prometheus.gauges([("registry_kit_x", "help", [({"a": 'q"\\\n'}, 1.5),
                                                          ({}, 1803859200)])])
    assert text.splitlines() == ["# HELP registry_kit_x help", "# TYPE registry_kit_x gauge",
                                 'registry_kit_x{a="q\\"\\\\\\n"} 1.5',
                                 "registry_kit_x 1803859200"]
    for bad in [("x y", "h", []), ("x", "two\nlines", []), ("x", "h", [({"a b": "v"}, 1)]),
                ("x", "h", [({}, float("nan"))])]:
        with pytest.raises(ValueError):
            prometheus.gauges([bad])


def test_every_endpoint_status_lists_is_scraped(tmp_path: Path) -> None:
    """The scrape config's targets are layout.metrics_endpoints' URLs, role by role: every
    endpoint `status --json` lists (metrics) is a target of its job, and nothing else is."""
    hosts = _hosts(tmp_path, vip=True, registry_node_exporter=True)
    config = yaml.safe_load(prometheus.scrape_config(folder.scrape_jobs(hosts)))
    scraped = {(target["labels"]["host"], f"http://{address}{job['metrics_path']}")
               for job in config["scrape_configs"] for target in job["static_configs"]
               for address in target["targets"]}
    roles: list[tuple[layout.MetricsRole, tuple[settings_mod.Settings, ...]]] = [
        ("server", hosts.servers), ("lb", hosts.lbs)]
    listed = {(s.host, url) for role, members in roles for s in members
              for url in layout.metrics_endpoints(s, role).values()}
    assert scraped == listed and len(listed) == 2 * 3 + 2 * 3


def test_a_scrape_job_has_one_path_and_a_known_name() -> None:
    with pytest.raises(ValueError, match="several paths"):
        prometheus.scrape_config({prometheus.NODE_JOB: [("a", "http://10.0.0.1:9195/x"),
                                                        ("b", "http://10.0.0.2:9195/y")]})
    with pytest.raises(ValueError, match="no scrape job"):
        prometheus.scrape_config({"other": [("a", "http://10.0.0.1:9195/x")]})
