"""The registry's Prometheus metrics on hosts in registry_servers (registry_metrics): a
haproxy of the kit's own, `registry-kit-metrics.service`, on the server's internal address
passes GET /metrics from registry_metrics_allow only to the registry's debug server, which
stays on the loopback (it also answers /debug/pprof). See README "Metrics".
"""

from __future__ import annotations

from pyinfra.operations.util import any_changed

from registry_kit.facts import HostState
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.operations import files, packages, services
from registry_kit.render import haproxy

SERVICE = layout.METRICS_SERVICE
PACKAGES = ("haproxy",)
COMMANDS = ("haproxy",)


def probe_args(settings: Settings) -> dict:
    return {"files": [layout.METRICS_HAPROXY_CFG, layout.METRICS_UNIT],
            "dirs": [layout.METRICS_DIR], "commands": list(COMMANDS), "services": [SERVICE]}


def render(settings: Settings) -> str:
    def checked(value: object, field: str) -> str:
        return haproxy.word(value, file=layout.METRICS_HAPROXY_CFG, field=field)

    listen = layout.metrics_listen(settings)
    assert listen is not None and settings.registry_debug_addr is not None
    return haproxy.metrics_filter(
        checked(listen, "registry_metrics_bind"),
        [checked(net, "registry_metrics_allow") for net in settings.registry_metrics_allow],
        checked(settings.registry_debug_addr, "registry_debug_addr"),
        header="managed by registry-kit (registry_kit/roles/metrics.py): the registry's "
               "metrics, for registry_metrics_allow only")


def render_unit() -> str:
    return haproxy.unit("registry_kit/roles/metrics.py",
                        "metrics (haproxy: the registry's metrics, filtered)",
                        layout.METRICS_HAPROXY_CFG, layout.METRICS_PIDFILE)


def metrics_deploy(settings: Settings, state: HostState) -> None:
    if not settings.registry_metrics:
        metrics_remove(state)
        return
    packages.install_packages(PACKAGES, COMMANDS, state, name="Install haproxy (metrics)")
    files.managed_dir(layout.METRICS_DIR, "0700", state.dirs.get(layout.METRICS_DIR),
                      name=f"Create {layout.METRICS_DIR}")
    config = files.managed_file(layout.METRICS_HAPROXY_CFG, render(settings).encode(), "0644",
                                state.files.get(layout.METRICS_HAPROXY_CFG),
                                name="Upload the metrics filter's haproxy.cfg")
    unit = files.managed_file(layout.METRICS_UNIT, render_unit().encode(), "0644",
                              state.files.get(layout.METRICS_UNIT),
                              name=f"Install {SERVICE}.service")
    services.restart_haproxy(layout.METRICS_HAPROXY_CFG, SERVICE,
                             name=f"Check and restart {SERVICE}", _if=any_changed(config, unit))
    services.start(state, SERVICE, daemon_reload=True, name=f"Enable and start {SERVICE}")


def metrics_remove(state: HostState) -> None:
    """The reverse of metrics_deploy (teardown, or registry_metrics=False). haproxy stays
    installed: other software (the web page, a load balancer) may use it."""
    services.stop(state, SERVICE, layout.METRICS_UNIT, name=f"Stop and disable {SERVICE}")
    files.absent_paths([layout.METRICS_UNIT, layout.METRICS_DIR], [*state.files, *state.dirs],
                       name="Remove the metrics filter's files")
