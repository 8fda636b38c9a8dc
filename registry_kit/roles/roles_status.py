"""status.py on the registry_lb and registry_cache hosts: one read-only command per host.

Load balancers: haproxy and keepalived running, each replica's state as haproxy sees it
(its admin socket's `show stat`: UP, DOWN, MAINT, DRAIN...), and whether this LB holds the
floating address (registry_lb_vip) now. Cache: redis running, its memory in use and key
count (`INFO memory`, `DBSIZE`; the password read from redis.conf into REDISCLI_AUTH on the
host, never in argv or output).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyinfra.api import FactBase

from registry_kit.commands import q
from registry_kit.facts import split_sections
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.model.topology import BACKEND
from registry_kit.roles import keepalived, loadbalancer

_SECTION = "@@registry-kit-roles:"


def _section_command(name: str) -> str:
    return f"echo {q(_SECTION + name)}"


def lb_command(vip: str | None) -> str:
    parts = [_section_command("haproxy"), f"systemctl is-active {q(loadbalancer.SERVICE)} || true",
             _section_command("keepalived"), f"systemctl is-active {q(keepalived.SERVICE)} || true",
             # Columns 1, 2 and 18 of haproxy's CSV: proxy, server, status.
             _section_command("servers"),
             f"echo 'show stat' | socat -t 2 stdio {q(layout.HAPROXY_SOCKET)} 2>/dev/null | "
             f"awk -F, -v b={q(BACKEND)} '$1 == b && $2 != \"BACKEND\" && $2 != \"FRONTEND\" "
             "{print $2, $18}' || true"]
    if vip:
        parts += [_section_command("vip"),
                  f"ip -o -4 addr show to {q(vip + '/32')} 2>/dev/null || true"]
    return "; ".join(parts)


def cache_command(port: int) -> str:
    auth = f"REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' {q(layout.REDIS_CONF)} 2>/dev/null)\""
    cli = f"{auth} redis-cli --no-auth-warning -h 127.0.0.1 -p {q(port)}"
    return "; ".join([
        # Debian's unit, then the RHEL family's.
        _section_command("redis"), "systemctl is-active redis-server redis 2>/dev/null | "
        "grep -m1 -x active || echo inactive",
        _section_command("memory"), f"{cli} info memory 2>/dev/null | "
        "sed -n 's/^used_memory_human:\\([^\\r]*\\).*/\\1/p' || true",
        _section_command("keys"), f"{cli} dbsize 2>/dev/null || true"])


class RolesStatus(FactBase):
    """Read-only status of a load balancer and/or the cache."""

    def command(self, lb=False, vip=None, cache_port=None):
        lb_part = lb_command(vip) if lb else "true"
        cache_part = cache_command(cache_port) if cache_port is not None else "true"
        return f"{lb_part}; {cache_part}"

    def process(self, output):
        return split_sections(output, _SECTION)

    @staticmethod
    def default():
        return {}


def _first(sections: dict[str, list[str]], name: str) -> str:
    return "".join(sections.get(name, [])).strip()


def replica_states(lines: Iterable[str]) -> str:
    states = [" ".join(line.split()[:2]) for line in lines if line.strip()]
    return ", ".join(states) or "-"


def lb_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    vip = settings.registry_lb_vip
    holds = "-"
    if vip:
        holds = "holds " + keepalived.vip_address(settings) if _first(sections, "vip") \
            else "backup"
    return {
        "load balancer": settings.host,
        "haproxy": _first(sections, "haproxy") or "-",
        "keepalived": _first(sections, "keepalived") or "-" if vip else "not used",
        "floating address": holds,
        "replicas (haproxy's view)": replica_states(sections.get("servers", [])),
    }


def cache_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    return {
        "cache": settings.host,
        "redis": _first(sections, "redis") or "-",
        "memory": _first(sections, "memory") or "-",
        "keys": _first(sections, "keys") or "-",
    }


def fact_args(settings: Settings, is_lb: bool, is_cache: bool) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if is_lb:
        args.update(lb=True, vip=keepalived.vip_address(settings)
                    if settings.registry_lb_vip else None)
    if is_cache:
        args.update(cache_port=settings.registry_cache_port)
    return args
