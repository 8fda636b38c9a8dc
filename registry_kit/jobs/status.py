"""What status.py reports: one read-only command per host (the status sections of each of
its roles), printed as tables on the control machine once every host has answered.
Changes nothing (the run has no operations).

Servers: image, registry version, container state and uptime, /v2/, certificate days left,
storage, repositories and tags, the GC and retention timers, the data filesystem and the disk
guard, the last GC and retention run, the largest repositories (roles.server, gc_timer,
retention_timer, disk_guard, usage). Load balancers: haproxy, keepalived, the replicas as
haproxy sees them, the floating address (roles.loadbalancer). Cache: redis, memory, keys
(roles.cache). Servers, load balancers and caches: each metrics endpoint and whether the
units behind it are active (roles.metrics_status). Clients: engine version, trust, the
kit's docker login and /etc/hosts lines (roles.client).
With registry_status_json the same facts print as one JSON document on stdout instead
(roles.status_json, built from the same sections: no second probe).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host, inventory, logger
from pyinfra.facts.server import Command

from registry_kit.facts import parse_status
from registry_kit.jobs.backup import backup_base
from registry_kit.model import access
from registry_kit.model.inventory import (
    DEFAULT_GROUPS,
    Groups,
    in_groups,
    run_cache,
    validated_settings,
)
from registry_kit.roles import (
    audit,
    cache,
    client,
    disk_guard,
    gc_timer,
    loadbalancer,
    metrics_status,
    retention_timer,
    server,
    status_json,
    usage,
)

# (role, its hosts' group in Groups, its table): the tables print in this order; a role
# that adds columns to another role's table (the GC timer) follows that role.
ROLES = ((server, "servers", "servers"), (gc_timer, "servers", "servers"),
         (retention_timer, "servers", "servers"),
         (disk_guard, "servers", "servers"), (usage, "servers", "servers"),
         (audit, "servers", "servers"), (metrics_status.SERVER, "servers", "servers"),
         (loadbalancer, "lb", "lbs"), (metrics_status.LB, "lb", "lbs"),
         (cache, "cache", "caches"), (metrics_status.CACHE, "cache", "caches"),
         (client, "clients", "clients"))


def table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return []
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in columns).rstrip() for row in rows]
    return lines


@dataclass
class _Collected:
    # table -> host -> row
    tables: dict[str, dict[str, dict[str, str]]] = field(
        default_factory=lambda: {name: {} for _, _, name in ROLES})
    done: set[str] = field(default_factory=set)
    printed: bool = False
    access: dict[str, list[str]] = field(default_factory=dict)  # server -> rules per user
    blocks: dict[str, list[str]] = field(default_factory=dict)  # host -> lines (usage)
    # status --json: table -> host -> typed facts, from the same sections as the rows.
    facts: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    json: bool = False


def _collected() -> _Collected:
    """This run's rows (pyinfra runs the deploy file for every host in turn; the rows of all
    hosts are kept on the run's State until the last one answers)."""
    return run_cache("status", _Collected)  # type: ignore[no-any-return]


def _print_tables(collected: _Collected) -> None:
    lines = [f"registry-kit status ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}):"]
    for rows in collected.tables.values():
        if rows:
            lines += ["", *table([rows[name] for name in sorted(rows)])]
    # Effective access rules per user (registry_kit.model.access), once per distinct policy.
    by_policy: dict[tuple[str, ...], list[str]] = {}
    for name in sorted(collected.access):
        by_policy.setdefault(tuple(collected.access[name]), []).append(name)
    for rules, names in by_policy.items():
        lines += ["", f"access ({', '.join(names)}):", *(f"  {rule}" for rule in rules)]
    for name in sorted(collected.blocks):
        if collected.blocks[name]:
            lines += ["", *collected.blocks[name]]
    for line in lines:
        logger.info(line)


# The facts of each table for status --json (registry_kit.roles.status_json).
FACTS = {"servers": status_json.server_facts, "lbs": status_json.load_balancer_facts,
         "caches": status_json.cache_facts}


def _keep_facts(collected: _Collected, settings: Any, sections: dict[str, list[str]],
                tables: list[str], metrics: dict[str, metrics_status.MetricsStatus]) -> None:
    """`metrics`: table -> its metrics column, as bound to this host."""
    for name in tables:
        if name in FACTS:
            collected.facts.setdefault(name, {})[host.name] = FACTS[name](
                settings, sections, metrics[name])
    if "servers" in tables:
        collected.facts["servers"][host.name]["backup"] = status_json.last_backup(
            settings, f"{backup_base(settings)}/{host.name}")
        collected.facts["servers"][host.name]["audit"] = audit.entries(settings, sections)


def _print_json(collected: _Collected) -> None:
    facts = collected.facts
    document = status_json.document(
        facts.get("servers", {}), facts.get("lbs", {}), facts.get("caches", {}),
        collected.tables["clients"], collected.access)
    # stdout holds the document alone: pyinfra's own output goes to stderr.
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    """status.py: collect this host's status; the last host to answer prints the tables."""
    collected = _collected()
    settings = validated_settings(groups, defaults=defaults)[host.name]
    mine: list[tuple[Any, str]] = [(role, name) for role, group, name in ROLES
                                   if getattr(groups, group) in host.groups]
    # The metrics column of each table knows the host's other tables (what fronts a cache).
    tables = {name for _, name in mine}
    mine = [(role.for_host(tables) if isinstance(role, metrics_status.MetricsStatus)
             else role, name) for role, name in mine]
    if mine:
        # One read-only command per host: each role's, every output after its marker.
        output = host.get_fact(Command, "; ".join(role.status_command(settings)
                                                  for role, _ in mine))
        sections = parse_status((output or "").splitlines())
        for role, name in mine:
            collected.tables[name].setdefault(host.name, {}).update(
                role.status_row(settings, sections))
            # A role with more to say than a row (usage: the largest repositories).
            lines = getattr(role, "status_lines", None)
            if lines is not None:
                collected.blocks.setdefault(host.name, []).extend(lines(settings, sections))
        _keep_facts(collected, settings, sections, sorted(tables),
                    {name: role for role, name in mine
                     if isinstance(role, metrics_status.MetricsStatus)})
    collected.json = collected.json or settings.registry_status_json
    if groups.servers in host.groups:
        collected.access[host.name] = access.describe(
            settings.registry_access, [user.name for user in settings.registry_users])
    collected.done.add(host.name)
    waiting = {t.name for t in inventory.get_active_hosts() if in_groups(t, groups)}
    waiting -= collected.done
    if not waiting and not collected.printed:
        collected.printed = True
        (_print_json if collected.json else _print_tables)(collected)
