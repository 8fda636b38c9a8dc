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


def exporter_targets(hosts: Topology) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(host, ADDRESS:PORT) of the redis exporter (the cache) and of each node exporter
    (registry_kit.roles.exporters), every host listed once."""
    unique = {s.host: s for s in (*hosts.servers, *hosts.lbs, *hosts.caches)}
    redis = [(s.host, listen) for s in hosts.caches
             if (listen := layout.metrics_listen(s)) is not None]
    node = [(s.host, listen) for s in unique.values()
            if s.registry_node_exporter and (listen := layout.metrics_listen(s)) is not None]
    return redis, node


def write_folder(hosts: Topology) -> Path | None:
    """Write (or clear) the folder; its path, or None when nothing serves metrics. The
    first host serving metrics names the state folder (one per inventory, in practice)."""
    registries = [(s.host, listen) for s in hosts.servers
                  if (listen := layout.metrics_listen(s)) is not None]
    lbs = [(s.host, listen) for s in hosts.lbs
           if (listen := layout.metrics_listen(s)) is not None]
    # The load balancers' facts: on their metrics endpoint, where haproxy passes the path on.
    holders = [s for s in hosts.lbs if layout.lb_facts_listen(s) is not None]
    lb_facts = [(s.host, listen) for s in holders
                if (listen := layout.metrics_listen(s)) is not None]
    anyone = [s for s in (*hosts.servers, *hosts.lbs, *hosts.caches) if s.registry_metrics]
    everyone = (*hosts.servers, *hosts.lbs, *hosts.caches)
    if not anyone:
        for settings in everyone[:1]:
            for name in (prometheus.CONFIG_FILE, prometheus.RULES_FILE):
                (layout.prometheus_dir(settings) / name).unlink(missing_ok=True)
        return None
    folder = layout.prometheus_dir(anyone[0])
    serving = [s for s in hosts.servers if s.registry_metrics]
    interval = anyone[0].registry_prometheus_interval
    # keepalived.validate: every LB has the same floating address.
    address = keepalived.vip_address(holders[0]) if holders else None
    redis, node = exporter_targets(hosts)
    files = {prometheus.CONFIG_FILE: prometheus.scrape_config(
        registries, lbs, layout.METRICS_PATH, interval,
        facts=registries, facts_path=layout.FACTS_PATH, lb_facts=lb_facts,
        exporters=prometheus.exporter_jobs(redis, layout.REDIS_EXPORTER_PATH, node,
                                           layout.NODE_EXPORTER_PATH)),
             prometheus.RULES_FILE: prometheus.alert_rules(
                 BACKEND, bool(lbs), served_facts(serving), address=address,
                 interval=interval, redis=bool(redis))}
    for name, text in files.items():
        if _write(folder / name, text):
            logger.info(f"registry-kit: wrote {folder / name}")
    return folder
