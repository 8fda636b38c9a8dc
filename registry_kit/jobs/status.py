"""What status.py reports: one read-only fact per host, printed as two tables on the control
machine once every host has answered. Changes nothing (the run has no operations).

Servers: image, registry version (the binary's own `--version`), container state and
uptime, /v2/ status code (checked on the server, by name, through loopback, with the kit's
CA), certificate days left, bytes in the data
folder, repositories and tags on disk (docker/registry/v2/repositories: no credentials
needed), the GC timer. Clients: engine version, trust file (holds the current CA?), the
kit's docker login, the kit's /etc/hosts lines.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host, inventory, logger
from pyinfra.api import FactBase

from registry_kit.commands import q
from registry_kit.facts import AUTHS_COMMAND, HOSTS_COMMAND, split_sections
from registry_kit.jobs import gc
from registry_kit.model import access, keystore
from registry_kit.model.inventory import (
    DEFAULT_GROUPS,
    Groups,
    in_groups,
    roles,
    run_cache,
    validated_settings,
)
from registry_kit.model.registry_version import binary_version
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render import tls
from registry_kit.roles import client, roles_status, roles_teardown, server

_SECTION = "@@registry-kit-status:"
REPOSITORIES = "docker/registry/v2/repositories"


def status_command(*, container: str | None = None, health: tuple[str, str, str] | None = None,
                   cert: str | None = None, data_dir: str | None = None,
                   trust_file: str | None = None, marker: str | None = None) -> str:
    def section_command(name: str) -> str:
        return f"echo {q(_SECTION + name)}"

    parts = [section_command("docker"),
             "docker info --format '{{.ServerVersion}}' 2>/dev/null || true"]
    if container:
        fmt = "{{.Config.Image}}|{{.State.Status}}|{{.State.StartedAt}}|{{.RestartCount}}"
        parts += [section_command("container"),
                  f"docker inspect --type container --format {q(fmt)} {q(container)}"
                  " 2>/dev/null || true",
                  section_command("uptime"),
                  f"s=$(docker inspect --type container --format '{{{{.State.StartedAt}}}}' "
                  f"{q(container)} 2>/dev/null) && echo $(( $(date +%s) - $(date -d \"$s\" +%s)"
                  " )) || true",
                  # The registry binary says its own version (`registry` is on PATH in the
                  # official 2.x and 3.x images; gc.py runs it the same way). Read-only.
                  section_command("version"),
                  f"docker exec {q(container)} registry --version 2>/dev/null | head -n 1"
                  " || true"]
    if health:
        url, resolve, ca = health
        ca_opt = "" if ca == "-" else f" --cacert {q(ca)}"
        parts += [section_command("health"),
                  f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {q(resolve)}"
                  f"{ca_opt} {q(url + '/v2/')} 2>/dev/null; echo"]
    if cert:
        parts += [section_command("cert"), f"cat {q(cert)} 2>/dev/null || true"]
    if data_dir:
        repos = posixpath.join(data_dir, REPOSITORIES)
        parts += [section_command("bytes"), f"du -sb {q(data_dir)} 2>/dev/null | cut -f1",
                  section_command("repos"),
                  f"find {q(repos)} -type d -name _manifests 2>/dev/null | wc -l",
                  section_command("tags"),
                  f"find {q(repos)} -path '*/_manifests/tags/*/current/link' 2>/dev/null | wc -l",
                  section_command("timer"),
                  f"systemctl is-active {gc.TIMER_NAME} 2>/dev/null || true"]
    if trust_file:
        parts += [section_command("trust"), f"cat {q(trust_file)} 2>/dev/null || true",
                  section_command("auths"), AUTHS_COMMAND,
                  section_command("hosts"), HOSTS_COMMAND]
    if marker:
        # Only the user name before the ':' (the rest is a bcrypt hash).
        parts += [section_command("marker"), f"cut -d: -f1 {q(marker)} 2>/dev/null || true"]
    return "; ".join(parts)


def parse_status(lines: Iterable[str]) -> dict[str, list[str]]:
    return split_sections(lines, _SECTION)


class RegistryStatus(FactBase):
    """Read-only status of the registry (servers) or of trust and login (clients)."""

    def command(self, container=None, health=None, cert=None, data_dir=None, trust_file=None,
                marker=None):
        return status_command(container=container, health=health, cert=cert,
                              data_dir=data_dir, trust_file=trust_file, marker=marker)

    def process(self, output):
        return parse_status(output)

    @staticmethod
    def default():
        return {}


def _first(sections: dict[str, list[str]], name: str) -> str:
    return "".join(sections.get(name, [])).strip()


def human_bytes(value: str) -> str:
    if not value.isdigit():
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return value


def human_duration(seconds: str) -> str:
    if not seconds.lstrip("-").isdigit():
        return "-"
    left = max(int(seconds), 0)
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def server_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    image, state, _, restarts = ([*_first(sections, "container").split("|"), "", "", "", ""])[:4]
    cert_pem = "\n".join(sections.get("cert", [])).encode()
    try:
        days = f"{tls.certificate_days_left(cert_pem)}" if cert_pem.strip() else "-"
    except (tls.TLSError, ValueError):  # a garbled file is a status to show, not a crash
        days = "unreadable"
    filesystem = settings.registry_storage.driver == "filesystem"
    return {
        "server": settings.host,
        "image": image or "-",
        "version": binary_version(_first(sections, "version")) or "-",
        "state": (state + (f" ({restarts} restarts)" if restarts not in ("", "0") else ""))
        if state else "no container",
        "uptime": human_duration(_first(sections, "uptime")) if state == "running" else "-",
        "/v2/": _first(sections, "health") or "-",
        "cert days": days if settings.tls_enabled else "no TLS",
        "storage": human_bytes(_first(sections, "bytes")) if filesystem else
        settings.registry_storage.driver,
        "repos": _first(sections, "repos") if filesystem else "-",
        "tags": _first(sections, "tags") if filesystem else "-",
        "gc timer": _first(sections, "timer") or "-",
    }


def _current_ca(settings: Settings) -> bytes | None:
    """The CA clients should trust, read from the control machine; never creates one."""
    if not settings.tls_enabled:
        return None
    if settings.registry_tls_mode == "self-signed":
        path = settings.registry_state_dir / "ca" / "ca.crt"
        return path.read_bytes() if path.is_file() else None
    try:
        cert = keystore.server_certificate(settings)
    except SettingsError:
        return None
    return cert.ca_pem if cert else None


def client_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    trusted = "\n".join(sections.get("trust", [])).strip()
    if not settings.tls_enabled:
        trust = "insecure (plain HTTP)"
    elif not trusted:
        trust = "missing"
    else:
        ca = _current_ca(settings)
        if ca is None:
            trust = "present"
        else:
            trust = "ok" if ca.decode().strip() in trusted else "stale CA"
            if trust == "ok" and trusted.count("BEGIN CERTIFICATE") > ca.count(
                    b"BEGIN CERTIFICATE"):
                trust = "ok (+old CA)"
    user = _first(sections, "marker")
    logged_in = settings.registry_address in [line.strip() for line in sections.get("auths", [])]
    login = (f"yes ({user})" if user else "yes") if logged_in else "no"
    if settings.registry_client_login_user is None and not logged_in:
        login = "not asked"
    hosts = [line for line in sections.get("hosts", []) if line.strip()]
    return {
        "client": settings.host,
        "docker": _first(sections, "docker") or "not running",
        "registry": settings.registry_address,
        "trust": trust,
        "login": login,
        "hosts entries": str(len(hosts)),
    }


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
    servers: dict[str, dict[str, str]] = field(default_factory=dict)
    clients: dict[str, dict[str, str]] = field(default_factory=dict)
    lbs: dict[str, dict[str, str]] = field(default_factory=dict)
    caches: dict[str, dict[str, str]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    printed: bool = False
    access: dict[str, list[str]] = field(default_factory=dict)  # server -> rules per user


def _collected() -> _Collected:
    """This run's rows (pyinfra runs the deploy file for every host in turn; the rows of all
    hosts are kept on the run's State until the last one answers)."""
    return run_cache("status", _Collected)  # type: ignore[no-any-return]


def _print_tables(collected: _Collected) -> None:
    lines = [f"registry-kit status ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}):"]
    for rows in (collected.servers, collected.lbs, collected.caches, collected.clients):
        if rows:
            lines += ["", *table([rows[name] for name in sorted(rows)])]
    # Effective access rules per user (registry_kit.model.access), once per distinct policy.
    by_policy: dict[tuple[str, ...], list[str]] = {}
    for name in sorted(collected.access):
        by_policy.setdefault(tuple(collected.access[name]), []).append(name)
    for rules, names in by_policy.items():
        lines += ["", f"access ({', '.join(names)}):", *(f"  {rule}" for rule in rules)]
    for line in lines:
        logger.info(line)


def plan_host(groups: Groups = DEFAULT_GROUPS,
              defaults: Mapping[str, Any] | None = None) -> None:
    """status.py: collect this host's status; the last host to answer prints the tables."""
    collected = _collected()
    settings = validated_settings(groups, defaults=defaults)[host.name]
    is_server, is_client = roles(host, groups)
    if is_server or is_client:
        args: dict[str, Any] = {}
        if is_server:
            paths = server.ServerPaths(settings.registry_config_dir)
            args.update(container=settings.registry_container_name,
                        health=server.health_target(settings),
                        cert=paths.cert if settings.tls_enabled else None,
                        data_dir=settings.registry_data_dir)
        if is_client:
            args.update(trust_file=f"{client.trust_dir(settings)}/ca.crt",
                        marker=client.login_marker_path(settings))
        sections = host.get_fact(RegistryStatus, **args)
        if is_server:
            collected.servers[host.name] = server_row(settings, sections)
            collected.access[host.name] = access.describe(
                settings.registry_access, [user.name for user in settings.registry_users])
        if is_client:
            collected.clients[host.name] = client_row(settings, sections)
    is_lb, is_cache = roles_teardown.roles(host, groups)
    if is_lb or is_cache:
        found = host.get_fact(roles_status.RolesStatus,
                              **roles_status.fact_args(settings, is_lb, is_cache))
        if is_lb:
            collected.lbs[host.name] = roles_status.lb_row(settings, found)
        if is_cache:
            collected.caches[host.name] = roles_status.cache_row(settings, found)
    collected.done.add(host.name)
    waiting = {t.name for t in inventory.get_active_hosts() if in_groups(t, groups)}
    waiting -= collected.done
    if not waiting and not collected.printed:
        collected.printed = True
        _print_tables(collected)
