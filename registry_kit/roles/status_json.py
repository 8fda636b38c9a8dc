"""status.py's JSON document (`--data registry_status_json=True`): the facts of the text
tables as typed values, for a monitoring script or a CI job. Built from the same status
sections the tables are (each role's status_command, one probe per host): no host is asked
anything more. The schema is the README's "Status as JSON"; SCHEMA goes up when a field
changes meaning or goes away (new fields keep it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry_kit.facts import first_line
from registry_kit.model import layout
from registry_kit.model.registry_version import binary_version
from registry_kit.model.settings import Settings
from registry_kit.render import tls
from registry_kit.roles import disk_guard, keepalived, metrics_status, usage

# 2: `metrics` is an object, kind -> URL, of every endpoint ({} when off); in 1 it was one
# URL or null.
SCHEMA = 2
Sections = dict[str, list[str]]


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _certificate(settings: Settings, sections: Sections) -> dict[str, Any] | None:
    """None without TLS; else days left and the end date, or why neither is known."""
    if not settings.tls_enabled:
        return None
    pem = "\n".join(sections.get("cert", [])).encode()
    cert = tls.load_first_cert(pem) if pem.strip() else None
    if cert is None:
        return {"days_left": None, "not_after": None,
                "error": "unreadable" if pem.strip() else "missing"}
    return {"days_left": tls.certificate_days_left(pem),
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "error": None}


def _storage(settings: Settings, sections: Sections) -> dict[str, Any]:
    # Sizes and counts are read from the data folder: filesystem storage only.
    own = settings.registry_storage.driver == "filesystem"
    return {"driver": settings.registry_storage.driver,
            "bytes": _int(first_line(sections, "bytes")) if own else None,
            "repositories": _int(first_line(sections, "repos")) if own else None,
            "tags": _int(first_line(sections, "tags")) if own else None}


def last_backup(settings: Settings, root: str) -> dict[str, Any]:
    """The newest backup's time from its index.json on the control machine (`root`: the
    server's backup folder). Backups on a backup host are not read: that would be another
    host's probe."""
    if settings.registry_backup_host is not None:
        return {"where": settings.registry_backup_host, "time": None}
    index = Path(root) / "index.json"
    try:
        when = json.loads(index.read_text()).get("time")
    except (OSError, ValueError, AttributeError):
        when = None
    return {"where": "control machine", "time": when if isinstance(when, str) else None}


def _gc(sections: Sections, timer: str = "timer", last: str = "gc-last") -> dict[str, Any]:
    """The GC timer and its service's last run (gc_timer.status_command's sections), or the
    retention timer's (retention_timer.status_command's, named by `timer` and `last`)."""
    load, result, finished = ([*sections.get(last, []), "", "", ""])[:3]
    scheduled = load.strip() == "loaded"
    return {"timer": first_line(sections, timer) or None if scheduled else None,
            "last_run": finished.strip() or None if scheduled else None,
            "last_result": result.strip() or None if scheduled and finished.strip() else None}


def _disk(settings: Settings, sections: Sections) -> dict[str, Any]:
    """The data filesystem (`df -P -B1`, filesystem storage), the disk guard's word and the
    GC and retention records' times (roles.disk_guard and roles.usage read the same lines)."""
    fields = first_line(sections, "disk").split()
    numbers = [int(v) for v in fields[1:4]] if len(fields) >= 4 and all(
        v.isdigit() for v in fields[1:4]) else [None, None, None]
    records = usage.status_row(settings, sections)
    return {"size": numbers[0], "used": numbers[1], "free": numbers[2],
            "guard": disk_guard.guard_state(settings, sections),
            "last_gc": None if records["last gc"] == "never" else records["last gc"],
            "last_retention": None if records["last retention"] == "never"
            else records["last retention"]}


def server_facts(settings: Settings, sections: Sections,
                 status: metrics_status.MetricsStatus = metrics_status.SERVER
                 ) -> dict[str, Any]:
    """The server's facts; `status`: its metrics column as bound to the host's roles (as
    for the load balancers' and the caches' facts: a cache host that is also a load
    balancer is fronted by haproxy)."""
    image, state, started, restarts = ([*first_line(sections, "container").split("|"),
                                        "", "", "", ""])[:4]
    code = _int(first_line(sections, "health"))
    return {
        "image": image or None,
        "version": binary_version(first_line(sections, "version")),
        "state": state or None,  # Docker's word (running, exited, ...); None: no container
        "restarts": _int(restarts),
        "started_at": started or None,
        "uptime_seconds": _int(first_line(sections, "uptime")) if state == "running" else None,
        "url": layout.Endpoints.of(settings).url,
        "v2_status": code,  # /v2/ asked on the server itself; 0: no answer
        # 401 is a healthy registry asking for credentials.
        "healthy": state == "running" and code in (200, 401),
        "certificate": _certificate(settings, sections),
        "storage": _storage(settings, sections),
        "gc": _gc(sections),
        "retention": _gc(sections, "retention-timer", "retention-last"),
        "disk": _disk(settings, sections),
        # kind -> URL (registry, facts, node); {} without registry_metrics
        "metrics": layout.metrics_endpoints(settings, "server"),
        "metrics_state": status.states(settings, sections),
    }


def load_balancer_facts(settings: Settings, sections: Sections,
                        status: metrics_status.MetricsStatus = metrics_status.LB
                        ) -> dict[str, Any]:
    replicas = {}
    for line in sections.get("servers", []):
        words = line.split()
        if len(words) >= 2:
            replicas[words[0]] = words[1]
    vip = keepalived.vip_address(settings) if settings.registry_lb_vip else None
    return {
        "haproxy": first_line(sections, "haproxy") or None,
        "keepalived": first_line(sections, "keepalived") or None if vip else None,
        "address": vip,
        "holds_address": bool(first_line(sections, "vip")) if vip else None,
        "replicas": replicas,  # server name -> haproxy's status (UP, DOWN, MAINT, ...)
        # kind -> URL (haproxy, facts with a floating address, node); {} without metrics
        "metrics": layout.metrics_endpoints(settings, "lb"),
        "metrics_state": status.states(settings, sections),
    }


def cache_facts(settings: Settings, sections: Sections,
                status: metrics_status.MetricsStatus = metrics_status.CACHE
                ) -> dict[str, Any]:
    return {"redis": first_line(sections, "redis") or None,
            "memory": first_line(sections, "memory") or None,
            "keys": _int(first_line(sections, "keys")),
            # kind -> URL (redis, node); {} without registry_metrics
            "metrics": layout.metrics_endpoints(settings, "cache"),
            "metrics_state": status.states(settings, sections)}


def client_facts(row: Mapping[str, str]) -> dict[str, Any]:
    """A client's text row (client.status_row: trust and login are words, not measures)."""
    hosts = row.get("hosts entries", "")
    return {"docker": row.get("docker") if row.get("docker") != "not running" else None,
            "registry": row.get("registry"), "trust": row.get("trust"),
            "login": row.get("login"), "hosts_entries": _int(hosts)}


def document(servers: Mapping[str, dict[str, Any]], lbs: Mapping[str, dict[str, Any]],
             caches: Mapping[str, dict[str, Any]], clients: Mapping[str, dict[str, str]],
             access: Mapping[str, list[str]]) -> dict[str, Any]:
    """The whole document: every host's facts, and who holds the floating address."""
    holders = sorted(name for name, lb in lbs.items() if lb["holds_address"])
    return {
        "schema": SCHEMA,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "servers": dict(sorted(servers.items())),
        "load_balancers": dict(sorted(lbs.items())),
        # Every LB holding the floating address: one is right, none or two is an outage.
        "address_holders": holders if any(lb["address"] for lb in lbs.values()) else None,
        "caches": dict(sorted(caches.items())),
        "clients": {name: client_facts(row) for name, row in sorted(clients.items())},
        "access": dict(sorted(access.items())),
    }

