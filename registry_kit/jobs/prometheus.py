"""The control machine's Prometheus folder, `<registry_state_dir>/prometheus/`
(registry_kit.model.layout.prometheus_dir): the scrape config and the alert rules
(registry_kit.render.prometheus) for every metrics endpoint of the inventory, written by
each deploy once its settings are validated, and only when they changed. Without any
host serving metrics the kit's two files are removed (the folder and anything else in it
stay).
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import logger

from registry_kit.model import layout, pull_through
from registry_kit.model.settings import Settings
from registry_kit.model.topology import BACKEND, Topology
from registry_kit.render import prometheus
from registry_kit.render.token_auth import enabled as token_auth
from registry_kit.roles import disk_guard, keepalived


def _write(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)  # a reader (Prometheus' reload) never sees half a file
    return True


def served_facts(servers: list[Settings]) -> set[str]:
    """Which of the kit's facts (prometheus.FACTS) the servers serving metrics have: the
    rules on the others could never fire."""
    served: set[str] = set()
    for settings in servers:
        filesystem = settings.registry_storage.driver == "filesystem"
        served |= {"gc", *(["certificate"] if settings.tls_enabled else []),
                   *(["disk"] if filesystem else []),
                   *(["disk_guard"] if disk_guard.wanted(settings) else []),
                   *(["token"] if token_auth(settings) else []),
                   # What backup.py backs up (its fact appears with the first backup).
                   *(["backup"] if filesystem and not pull_through.is_cache(settings)
                     else [])}
    return served


# The scrape job of each endpoint layout.metrics_endpoints lists, by role and kind.
JOBS: dict[tuple[layout.MetricsRole, str], str] = {
    ("server", "registry"): prometheus.REGISTRY_JOB, ("server", "facts"): prometheus.FACTS_JOB,
    ("lb", "haproxy"): prometheus.HAPROXY_JOB, ("lb", "facts"): prometheus.LB_FACTS_JOB,
    ("cache", "redis"): prometheus.REDIS_JOB,
    **{(role, "node"): prometheus.NODE_JOB for role in ("server", "lb", "cache")},
}


def scrape_jobs(hosts: Topology) -> dict[str, list[tuple[str, str]]]:
    """Job -> (host, URL) of every metrics endpoint of the inventory, as
    layout.metrics_endpoints gives them per role (the one place that says what a role
    serves, which status shows too); a host in several roles has its node exporter once."""
    jobs: dict[str, list[tuple[str, str]]] = {}
    roles: tuple[tuple[layout.MetricsRole, tuple[Settings, ...]], ...] = (
        ("server", hosts.servers), ("lb", hosts.lbs), ("cache", hosts.caches))
    for role, members in roles:
        for settings in members:
            for kind, url in layout.metrics_endpoints(settings, role).items():
                targets = jobs.setdefault(JOBS[role, kind], [])
                if (settings.host, url) not in targets:
                    targets.append((settings.host, url))
    return jobs


def write_folder(hosts: Topology) -> Path | None:
    """Write (or clear) the folder; its path, or None when nothing serves metrics. The
    first host serving metrics names the state folder (one per inventory, in practice)."""
    anyone = [s for s in (*hosts.servers, *hosts.lbs, *hosts.caches) if s.registry_metrics]
    if not anyone:
        for settings in (*hosts.servers, *hosts.lbs, *hosts.caches)[:1]:
            for name in (prometheus.CONFIG_FILE, prometheus.RULES_FILE):
                (layout.prometheus_dir(settings) / name).unlink(missing_ok=True)
        return None
    folder = layout.prometheus_dir(anyone[0])
    interval = anyone[0].registry_prometheus_interval
    jobs = scrape_jobs(hosts)
    # keepalived.validate: every LB has the same floating address.
    holders = [s for s in hosts.lbs if layout.lb_facts_listen(s) is not None]
    address = keepalived.vip_address(holders[0]) if holders else None
    files = {prometheus.CONFIG_FILE: prometheus.scrape_config(jobs, interval),
             prometheus.RULES_FILE: prometheus.alert_rules(
                 BACKEND, prometheus.HAPROXY_JOB in jobs,
                 served_facts([s for s in hosts.servers if s.registry_metrics]),
                 address=address, interval=interval, redis=prometheus.REDIS_JOB in jobs)}
    for name, text in files.items():
        if _write(folder / name, text):
            logger.info(f"registry-kit: wrote {folder / name}")
    return folder
