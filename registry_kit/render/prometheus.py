"""Prometheus' side of registry_metrics: a scrape config listing every metrics endpoint of
the inventory, alert rules on the metrics those endpoints serve, and the kit's own facts as
text files of gauges (the exposition format a node exporter's textfile collector reads).
The config and rules are data, written by PyYAML (registry_kit.jobs.prometheus puts them in
the control machine's `<registry_state_dir>/prometheus/`). Checked by `promtool check
config` and `promtool check rules` (tests/unit/test_prometheus.py).

A rule is written only where some endpoint serves its metric: a rule that can never fire
reads as "all is well".
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import yaml

REGISTRY_JOB = "registry-kit-registry"
HAPROXY_JOB = "registry-kit-haproxy"
FACTS_JOB = "registry-kit-facts"  # the kit's own facts on servers (layout.FACTS_PATH)
# Debian's exporters behind the same endpoints (registry_kit.roles.exporters).
REDIS_JOB = "registry-kit-redis"
NODE_JOB = "registry-kit-node"
# The load balancers' facts (the same path of haproxy's metrics frontend): whether each
# holds the floating address (registry_kit_lb_holds_address).
LB_FACTS_JOB = "registry-kit-lb-facts"
HOLDS_ADDRESS = "registry_kit_lb_holds_address"
# keepalived moves the address in about 3 s (a priority-0 advert, or three missed adverts of
# VRRPv2's second). Each LB is scraped at its own offset within the interval, so around a
# move Prometheus may see it on no LB or on two for up to one interval plus those seconds
# (the old holder's last sample and the new one's first), i.e. in at most two evaluations
# in a row. The address rules' `for:` is three intervals, at least 30 s: a handover never
# fires them, a lasting split or loss does within that time plus an evaluation.
ADDRESS_FOR_MIN = 30
CONFIG_FILE = "prometheus.yml"
RULES_FILE = "registry-kit.rules.yml"
HEADER = ("# Managed by registry-kit (registry_kit/render/prometheus.py): rewritten by each "
          "deploy.\n")
# 5xx answers above this share of a replica's requests, over 5 minutes, for 5 minutes.
ERROR_RATIO = 0.05
# The kit renews its certificates at 30 days left: under this, renewal has failed.
CERTIFICATE_DAYS = 21
# No `for:`: a certificate's end date changes only when it is replaced, so there is no
# noise to wait out (the widely copied awesome-prometheus-alerts collection's certificate
# rule for the blackbox exporter has `for: 0m` too).
CERTIFICATE_FOR = "0s"
DISK_RATIO = 0.85  # the data filesystem's used share, as df counts it (Use%)
# Between collections the used share only grows (a push adds, nothing but the GC frees;
# an upload lands in the same filesystem): a minute, as the disk guard's own rule, is
# enough to let a short blip of df's counts pass.
DISK_FOR = "1m"
# Failed logins a minute on one server (over 5 minutes) above which FailedLoginsHigh fires.
# Half the token server's per-address limit (10 a minute): one guesser at half its allowed
# pace for the rule's minutes fires it, many addresses guessing slowly too; people who
# mistype a password rarely fail 25 times in 5 minutes. A constant like the rules' other
# thresholds, not a setting: no setting's key, doc, table row and property test for a
# number nobody has asked to change yet.
FAILED_LOGINS_PER_MINUTE = 5
BACKUP_HOURS = 26  # a daily backup that missed one day (and a couple of hours' slack)
# The kit's facts (registry_kit.roles.metrics, the guard's and the GC's scripts, the token
# server's counters, backup.py; "gc" covers retention's result too), each the family of
# rules written when some server serves it.
FACTS = ("certificate", "disk", "disk_guard", "gc", "token", "backup")


# The scrape jobs, in the config's order: the job of each kind of endpoint a role serves
# (registry_kit.model.layout.metrics_endpoints).
JOB_ORDER = (REGISTRY_JOB, HAPROXY_JOB, FACTS_JOB, LB_FACTS_JOB, REDIS_JOB, NODE_JOB)


def scrape_config(jobs: Mapping[str, Sequence[tuple[str, str]]], interval: int = 15) -> str:
    """prometheus.yml: one job per kind of endpoint, each target labelled with its
    inventory host. `jobs`: job name (of JOB_ORDER) -> (host, URL) of each endpoint, the
    URLs of one job sharing their path; `interval`: seconds between scrapes and between
    rule evaluations (registry_prometheus_interval)."""
    unknown = set(jobs) - set(JOB_ORDER)
    if unknown:
        raise ValueError(f"no scrape job {sorted(unknown)}")
    scrape_configs = []
    for job in JOB_ORDER:
        targets = [(host, urllib.parse.urlsplit(url)) for host, url in jobs.get(job, ())]
        if not targets:
            continue
        paths = {url.path for _, url in targets}
        if len(paths) != 1:  # one metrics_path per job
            raise ValueError(f"{job}: endpoints on several paths {sorted(paths)}")
        scrape_configs.append(
            {"job_name": job, "metrics_path": paths.pop(),
             "static_configs": [{"targets": [url.netloc], "labels": {"host": host}}
                                for host, url in targets]})
    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{interval}s", "evaluation_interval": f"{interval}s",
                   # Prometheus refuses a timeout longer than the interval (default 10s).
                   "scrape_timeout": f"{min(interval, 10)}s"},
        "rule_files": [RULES_FILE],
        "scrape_configs": scrape_configs,
    }
    return HEADER + yaml.safe_dump(config, sort_keys=False)


def _rule(name: str, expr: str, duration: str, severity: str, summary: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": duration, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def alert_rules(backend: str, with_lbs: bool, facts: Collection[str] = (),
                address: str | None = None, interval: int = 15, redis: bool = False) -> str:
    """The rules whose metrics exist: the registry's per replica, haproxy's for the load
    balancers (its `backend` of replicas), those on the kit's `facts` (of FACTS) that
    some server serves, and with `address` (the floating address, when the load balancers
    serve their facts) where it is; `interval`: registry_prometheus_interval."""
    rules = [
        _rule("RegistryDown", f'up{{job="{REGISTRY_JOB}"}} == 0', "1m", "critical",
              "registry on {{ $labels.host }} does not answer its metrics (down, or its "
              "filter is)"),
        _rule("Registry5xxRate",
              f'sum by (host) (rate(registry_http_requests_total{{job="{REGISTRY_JOB}",'
              f'code=~"5.."}}[5m])) / sum by (host) (rate(registry_http_requests_total'
              f'{{job="{REGISTRY_JOB}"}}[5m])) > {ERROR_RATIO}', "5m", "warning",
              f"over {ERROR_RATIO:.0%} of requests to {{{{ $labels.host }}}} answer 5xx"),
        *_fact_rules(facts),
        *_exporter_rules(redis),
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
    if address is not None:
        rules += _address_rules(address, interval)
    return HEADER + yaml.safe_dump({"groups": [{"name": "registry-kit", "rules": rules}]},
                                   sort_keys=False)


def _exporter_rules(redis: bool) -> list[dict[str, Any]]:
    """RedisDown with the redis exporter: its endpoint unanswered, or redis itself (the
    exporter's redis_up). The replicas then fall back to the storage: slower, not down."""
    if not redis:
        return []
    job = f'job="{REDIS_JOB}"'
    return [_rule("RedisDown", f"up{{{job}}} == 0 or redis_up{{{job}}} == 0", "1m", "warning",
                  "redis (the replicas' blob-descriptor cache) on {{ $labels.host }} does not "
                  "answer: the replicas read the storage instead (slower)")]


def _address_rules(address: str, interval: int) -> list[dict[str, Any]]:
    """Where the floating address is, from each load balancer's registry_kit_lb_holds_address
    (0 or 1). An LB that does not answer has no sample (Prometheus marks its series stale at
    the failed scrape), so the sum counts the LBs that answer and say they hold it; with none
    answering, the sum is empty and `or vector(0)` makes it 0: "on no load balancer" fires
    then too, with LoadBalancerFactsDown (or LoadBalancerDown) saying which do not answer.
    `address` is an IPv4 address (registry_lb_vip's check), shown in the summaries only."""
    held = f'{HOLDS_ADDRESS}{{job="{LB_FACTS_JOB}"}}'
    duration = f"{max(ADDRESS_FOR_MIN, 3 * interval)}s"
    return [
        _rule("AddressOnNoLoadBalancer", f"(sum({held}) or vector(0)) == 0", duration,
              "critical", f"no load balancer that answers holds the registry's address "
                          f"{address}: clients reach no registry through it"),
        _rule("AddressOnTwoLoadBalancers", f"sum({held}) > 1", duration, "critical",
              f"{{{{ $value }}}} load balancers hold the registry's address {address} (they "
              "do not hear each other's VRRP adverts): connections break"),
        _rule("LoadBalancerFactsDown", f'up{{job="{LB_FACTS_JOB}"}} == 0', "5m", "warning",
              "the kit's facts on {{ $labels.host }} are not served: where the registry's "
              "address is cannot be told there"),
    ]


def _fact_rules(facts: Collection[str]) -> list[dict[str, Any]]:
    """The rules on the kit's own gauges (fact_gauges' names), for the facts served."""
    if not facts:
        return []
    job = f'job="{FACTS_JOB}"'
    used, avail = (f"registry_kit_data_filesystem_{kind}_bytes{{{job}}}"
                   for kind in ("used", "avail"))
    # With facts off for a while (the endpoint down), the other four cannot fire: say so.
    rules = [_rule("RegistryFactsDown", f"up{{{job}}} == 0", "5m", "warning",
                   "the kit's facts on {{ $labels.host }} are not served: its certificate, "
                   "disk, garbage collection, login and backup alerts cannot fire")]
    if "certificate" in facts:
        rules.append(_rule(
            "RegistryCertificateExpiresSoon",
            f"registry_kit_certificate_not_after_timestamp_seconds{{{job}}} - time() < "
            f"{CERTIFICATE_DAYS} * 86400", CERTIFICATE_FOR, "critical",
            f"the {{{{ $labels.certificate }}}} certificate of {{{{ $labels.host }}}} expires "
            f"in under {CERTIFICATE_DAYS} days (the kit renews at 30: renewal failed)"))
    if "disk" in facts:
        rules.append(_rule(
            "RegistryDataDiskAbove85", f"{used} / ({used} + {avail}) > {DISK_RATIO}", DISK_FOR,
            "warning", f"the registry's data filesystem on {{{{ $labels.host }}}} is over "
                       f"{DISK_RATIO:.0%} full"))
    if "disk_guard" in facts:
        rules.append(_rule(
            "RegistryDiskGuardReadOnly", f"registry_kit_disk_guard_read_only{{{job}}} == 1",
            "1m", "critical", "the disk guard holds the registry on {{ $labels.host }} "
                              "read-only: pushes are refused (405)"))
    if "gc" in facts:
        rules += [
            _rule("RegistryGCFailed", f"registry_kit_gc_last_success{{{job}}} == 0", "1m",
                  "warning", "the last garbage collection on {{ $labels.host }} failed "
                             "(journalctl -u registry-kit-gc)"),
            _rule("RegistryRetentionFailed", f"registry_kit_retention_last_success{{{job}}} "
                  "== 0", "1m", "warning", "the last retention run on {{ $labels.host }} "
                                          "failed (retention.py's output says why)")]
    if "token" in facts:
        # The token server's own count (the registry's 401s are mostly normal challenges).
        rules.append(_rule(
            "FailedLoginsHigh",
            f"rate(registry_kit_token_failed_logins_total{{{job}}}[5m]) * 60 > "
            f"{FAILED_LOGINS_PER_MINUTE}", "1m", "warning",
            f"over {FAILED_LOGINS_PER_MINUTE} failed logins a minute at the token server "
            "of {{ $labels.host }} (someone guessing passwords?): journalctl -u "
            "registry-kit-token"))
    if "backup" in facts:
        # backup.py leaves the fact after its first successful backup of a server: a server
        # never backed up has no series, so this never fires for it (an absent() rule would
        # fire on every server whose backups are made some other way, or not wanted).
        rules.append(_rule(
            "BackupTooOld",
            f"time() - registry_kit_backup_last_success_timestamp_seconds{{{job}}} > "
            f"{BACKUP_HOURS} * 3600", "10m", "warning",
            f"the last successful backup.py run for {{{{ $labels.host }}}} is over "
            f"{BACKUP_HOURS} h old"))
    return rules


# --- the kit's facts as text files of gauges (the exposition format, version 0.0.4)

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


Families = Sequence[tuple[str, str, Sequence[tuple[Mapping[str, str], float]]]]


def gauges(families: Families, kind: str = "gauge") -> str:
    """Text of gauge families: (name, help, [(labels, value), ...]). Names and label names
    are checked (ValueError), label values escaped, so no value adds a line or a sample.
    `kind`: "counter" for counters (counters() checks their names and values)."""
    if kind not in ("gauge", "counter"):
        raise ValueError(f"not a metric type the kit writes: {kind!r}")
    lines: list[str] = []
    for name, help_text, samples in families:
        if not _NAME.match(name) or "\n" in help_text:
            raise ValueError(f"not a metric name and one-line help: {name!r}")
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            if not all(_NAME.match(label) and ":" not in label for label in labels):
                raise ValueError(f"not label names: {sorted(labels)!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: not a finite value: {value!r}")
            inner = ",".join(f'{key}="{_label_value(val)}"' for key, val in labels.items())
            number = str(int(value)) if float(value).is_integer() else repr(float(value))
            lines.append(f"{name}{{{inner}}} {number}" if inner else f"{name} {number}")
    return "".join(f"{line}\n" for line in lines)


def counters(families: Families) -> str:
    """Text of counter families (as gauges()): names end in `_total`, values are whole and
    not negative (a counter only grows; it restarts at 0 with its process)."""
    for name, _, samples in families:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name!r}")
        if any(not float(value).is_integer() or value < 0 for _, value in samples):
            raise ValueError(f"{name}: a counter is a whole number, 0 or more")
    return gauges(families, kind="counter")


def certificate_facts(not_after: datetime, certificate: str = "server") -> str:
    """The deploy's facts file: when the certificate the server serves expires. It changes
    only when the certificate does, so a second run changes nothing."""
    return gauges([("registry_kit_certificate_not_after_timestamp_seconds",
                    "when the certificate expires (notAfter), seconds since the epoch",
                    [({"certificate": certificate}, int(not_after.timestamp()))])])


def backup_facts(when: float) -> str:
    """backup.py's facts file on a server: when its last successful backup began (the time
    backup.py planned it: the backup holds the data as of then or newer)."""
    return gauges([("registry_kit_backup_last_success_timestamp_seconds",
                    "when the last successful backup.py run of this server began, seconds "
                    "since the epoch", [({}, int(when))])])
