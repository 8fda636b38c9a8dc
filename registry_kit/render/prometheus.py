"""Prometheus' side of registry_metrics: a scrape config listing every metrics endpoint of
the inventory, and alert rules on the metrics those endpoints serve. Both are data,
written by PyYAML (registry_kit.jobs.prometheus puts them in the control machine's
`<registry_state_dir>/prometheus/`). Checked by `promtool check config` and
`promtool check rules` (tests/unit/test_prometheus.py).

Alerts from the issue that need a metric no endpoint serves yet are not written (a rule
that can never fire reads as "all is well"); RULES_NOT_YET says which and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

REGISTRY_JOB = "registry-kit-registry"
HAPROXY_JOB = "registry-kit-haproxy"
CONFIG_FILE = "prometheus.yml"
RULES_FILE = "registry-kit.rules.yml"
HEADER = ("# Managed by registry-kit (registry_kit/render/prometheus.py): rewritten by each "
          "deploy.\n")
# 5xx answers above this share of a replica's requests, over 5 minutes, for 5 minutes.
ERROR_RATIO = 0.05

RULES_NOT_YET = {
    "CertificateExpiresSoon": "no endpoint serves a certificate's expiry (a blackbox or "
                              "node exporter textfile would)",
    "DataDiskFull / DiskGuardReadOnly": "no node exporter yet, and no disk guard metric",
    "AddressOnNoLoadBalancer / AddressOnTwo": "keepalived has no exporter here; haproxy does "
                                              "not know who holds the address",
    "BackupTooOld": "backups run from the control machine and leave no metric",
    "GarbageCollectionFailed": "the GC timer's result is in systemd only (status --json shows "
                               "it), no metric",
    "FailedLoginsHigh": "the token server's counters are not served yet; the registry's 401s "
                        "are mostly normal auth challenges",
}


def scrape_config(registries: Sequence[tuple[str, str]],
                  lbs: Sequence[tuple[str, str]], metrics_path: str, interval: int = 15) -> str:
    """prometheus.yml: one job per kind of endpoint, each target labelled with its
    inventory host. `registries`, `lbs`: (host, ADDRESS:PORT); `interval`: seconds between
    scrapes and between rule evaluations (registry_prometheus_interval)."""
    jobs = [(REGISTRY_JOB, registries), (HAPROXY_JOB, lbs)]
    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{interval}s", "evaluation_interval": f"{interval}s",
                   # Prometheus refuses a timeout longer than the interval (default 10s).
                   "scrape_timeout": f"{min(interval, 10)}s"},
        "rule_files": [RULES_FILE],
        "scrape_configs": [
            {"job_name": job, "metrics_path": metrics_path,
             "static_configs": [{"targets": [target], "labels": {"host": host}}
                                for host, target in targets]}
            for job, targets in jobs if targets],
    }
    return HEADER + yaml.safe_dump(config, sort_keys=False)


def _rule(name: str, expr: str, duration: str, severity: str, summary: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": duration, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def alert_rules(backend: str, with_lbs: bool) -> str:
    """The rules whose metrics exist: the registry's per replica, haproxy's for the load
    balancers (its `backend` of replicas)."""
    rules = [
        _rule("RegistryDown", f'up{{job="{REGISTRY_JOB}"}} == 0', "1m", "critical",
              "registry on {{ $labels.host }} does not answer its metrics (down, or its "
              "filter is)"),
        _rule("Registry5xxRate",
              f'sum by (host) (rate(registry_http_requests_total{{job="{REGISTRY_JOB}",'
              f'code=~"5.."}}[5m])) / sum by (host) (rate(registry_http_requests_total'
              f'{{job="{REGISTRY_JOB}"}}[5m])) > {ERROR_RATIO}', "5m", "warning",
              f"over {ERROR_RATIO:.0%} of requests to {{{{ $labels.host }}}} answer 5xx"),
    ]
    if with_lbs:
        rules += [
            _rule("LoadBalancerDown", f'up{{job="{HAPROXY_JOB}"}} == 0', "1m", "critical",
                  "haproxy on {{ $labels.host }} does not answer its metrics"),
            # Through the load balancer's address: no replica left to send a client to.
            _rule("RegistryDownThroughLoadBalancer",
                  f'haproxy_backend_active_servers{{job="{HAPROXY_JOB}",proxy="{backend}"}} '
                  "== 0", "1m", "critical",
                  "{{ $labels.host }} has no replica in rotation: the registry's address "
                  "serves nothing there"),
            _rule("ReplicaOutOfRotation",
                  f'haproxy_server_status{{job="{HAPROXY_JOB}",proxy="{backend}",'
                  'state="UP"} == 0', "10m", "warning",
                  "replica {{ $labels.server }} is out of rotation on {{ $labels.host }}"),
        ]
    return HEADER + yaml.safe_dump({"groups": [{"name": "registry-kit", "rules": rules}]},
                                   sort_keys=False)
