"""status.py's `metrics` column on the servers, load balancers and caches tables (and the
`metrics_state` of status --json): each endpoint the host serves in that role
(layout.metrics_endpoints) and whether the units behind it are active, read by one
`systemctl is-active` in the host's single status command.

An endpoint needs its front (the metrics filter `registry-kit-metrics`, or haproxy on a
load balancer and on a cache host that is also one) and, but for the registry's own
metrics and haproxy's, the unit that answers behind it: `registry-kit-facts`,
`prometheus-redis-exporter`, `prometheus-node-exporter` (roles.metrics, roles.exporters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from registry_kit.commands import join
from registry_kit.facts import section_command
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.roles import exporters, loadbalancer

# The unit behind each kind of endpoint, beside the front (none: the front answers itself).
BEHIND = {"registry": (), "haproxy": (), "facts": (layout.FACTS_SERVICE,),
          "redis": (exporters.REDIS.package,), "node": (exporters.NODE.package,)}
# systemctl is-active's words (active, inactive, failed, activating...): anything else read
# from the host is not believed.
_STATE = re.compile(r"[a-z][a-z-]{0,31}")


@dataclass(frozen=True)
class MetricsStatus:
    role: layout.MetricsRole
    behind_lb: bool = False  # a cache host that is also a load balancer: haproxy fronts it

    @property
    def section(self) -> str:
        return f"metrics-{self.role}"

    @property
    def front(self) -> str:
        return loadbalancer.SERVICE if self.role == "lb" or self.behind_lb \
            else layout.METRICS_SERVICE

    def for_host(self, tables: set[str]) -> MetricsStatus:
        """This status as a host in `tables` (status.py's table names) has it."""
        return replace(self, behind_lb=self.role == "cache" and "lbs" in tables)

    def units(self, settings: Settings) -> dict[str, tuple[str, ...]]:
        """Kind -> the units its endpoint needs, the front first."""
        return {kind: (self.front, *BEHIND[kind])
                for kind in layout.metrics_endpoints(settings, self.role)}

    def _names(self, settings: Settings) -> list[str]:
        return list(dict.fromkeys(u for units in self.units(settings).values() for u in units))

    def status_command(self, settings: Settings) -> str:
        names = self._names(settings)
        if not names:
            return "true"
        # One line per unit, in this order (an unknown unit is "inactive").
        return f"{section_command(self.section)}; " \
               f"systemctl is-active {join(names)} 2>/dev/null || true"

    def _read(self, settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
        """Unit -> systemd's word; {} when the lines are not one word per unit asked."""
        names = self._names(settings)
        lines = [line.strip() for line in sections.get(self.section, [])]
        if len(lines) != len(names) or not all(_STATE.fullmatch(line) for line in lines):
            return {}
        return dict(zip(names, lines, strict=True))

    def endpoints(self, settings: Settings, sections: dict[str, list[str]]
                  ) -> dict[str, tuple[str | None, str | None]]:
        """Kind -> (`active` or the first needed unit's word that is not, that unit);
        (None, None): not read."""
        read = self._read(settings, sections)
        result: dict[str, tuple[str | None, str | None]] = {}
        for kind, needed in self.units(settings).items():
            if not read:
                result[kind] = (None, None)
                continue
            down = [unit for unit in needed if read[unit] != "active"]
            result[kind] = (read[down[0]], down[0]) if down else ("active", None)
        return result

    def states(self, settings: Settings, sections: dict[str, list[str]]
               ) -> dict[str, str | None]:
        """status --json's `metrics_state`: kind -> systemd's word (None: not read)."""
        return {kind: state for kind, (state, _) in self.endpoints(settings, sections).items()}

    def status_row(self, settings: Settings, sections: dict[str, list[str]]
                   ) -> dict[str, str]:
        if not settings.registry_metrics:
            return {"metrics": "off"}
        # e.g. "registry active, facts failed (registry-kit-facts)"
        words = [f"{kind} {state or 'unknown'}" + (f" ({unit})" if unit else "")
                 for kind, (state, unit) in self.endpoints(settings, sections).items()]
        return {"metrics": ", ".join(words)}


SERVER = MetricsStatus("server")
LB = MetricsStatus("lb")
CACHE = MetricsStatus("cache")
