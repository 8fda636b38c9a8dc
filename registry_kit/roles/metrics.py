"""The registry's Prometheus metrics on hosts in registry_servers (registry_metrics): a
haproxy of the kit's own, `registry-kit-metrics.service`, on the server's internal address
passes GET /metrics from registry_metrics_allow only to the registry's debug server, which
stays on the loopback (it also answers /debug/pprof), and GET /kit/metrics to
`registry-kit-facts.service` (scripts/registry-kit-facts.py, loopback): the kit's own facts
as gauges. The deploy writes the server certificate's expiry there; the disk guard, the
garbage collection and backup.py write theirs (layout.FACTS_*); with token auth the facts
server also reads the token server's counters (layout.TOKEN_COUNTERS). See README "Metrics".

On hosts in registry_lb with a floating address, the same facts server (no files there)
says whether this LB holds the address now (registry_kit_lb_holds_address, from `ip -j addr`
at each scrape), behind haproxy's own metrics frontend (registry_kit.roles.loadbalancer).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.operations.util import any_changed

from registry_kit import package_data
from registry_kit.commands import q
from registry_kit.facts import HostState
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.operations import files, packages, services
from registry_kit.operations.typed import operation
from registry_kit.render import haproxy, prometheus, textfile, tls, token_auth
from registry_kit.render.token_auth import SANDBOX
from registry_kit.roles import keepalived

SERVICE = layout.METRICS_SERVICE
FACTS_SERVICE = layout.FACTS_SERVICE
PACKAGES = ("haproxy", "python3")
COMMANDS = ("haproxy", "python3")


def probe_args(settings: Settings) -> dict:
    return {"files": [layout.METRICS_HAPROXY_CFG, layout.METRICS_UNIT, layout.FACTS_UNIT,
                      layout.FACTS_SCRIPT, layout.FACTS_CERTIFICATE],
            "dirs": [layout.METRICS_DIR, layout.FACTS_DIR], "commands": list(COMMANDS),
            "services": [SERVICE, FACTS_SERVICE]}


def render(settings: Settings, exporters: Sequence[haproxy.Exporter] = (),
           server: bool = True) -> str:
    """The filter's haproxy.cfg: on a server, the registry's metrics and the kit's facts;
    `exporters` (registry_kit.roles.exporters) beside them; `server` False (a cache host):
    the exporters only."""
    def checked(value: object, field: str) -> str:
        return haproxy.word(value, file=layout.METRICS_HAPROXY_CFG, field=field)

    listen = layout.metrics_listen(settings)
    assert listen is not None and settings.registry_debug_addr is not None
    return haproxy.metrics_filter(
        checked(listen, "registry_metrics_bind"),
        [checked(net, "registry_metrics_allow") for net in settings.registry_metrics_allow],
        checked(settings.registry_debug_addr, "registry_debug_addr") if server else None,
        header="managed by registry-kit (registry_kit/roles/metrics.py): the registry's "
               "metrics and the kit's facts, for registry_metrics_allow only" if server else
               "managed by registry-kit (registry_kit/roles/metrics.py): the exporters' "
               "metrics, for registry_metrics_allow only",
        facts=layout.FACTS_LISTEN if server else None, exporters=exporters)


def render_unit() -> str:
    return haproxy.unit("registry_kit/roles/metrics.py",
                        "metrics (haproxy: the registry's metrics, filtered)",
                        layout.METRICS_HAPROXY_CFG, layout.METRICS_PIDFILE)


def facts_arguments(settings: Settings) -> list[str]:
    argv = [layout.PYTHON, layout.FACTS_SCRIPT, "--listen", layout.FACTS_LISTEN,
            "--dir", layout.FACTS_DIR, "--path", layout.FACTS_PATH]
    if settings.registry_storage.driver == "filesystem":
        argv += ["--data-dir", settings.registry_data_dir]
    if token_auth.enabled(settings):
        argv += ["--token-counters", layout.TOKEN_COUNTERS]
    return argv


def lb_facts_arguments(settings: Settings) -> list[str]:
    """A load balancer's facts server: the floating address only (registry_lb_vip, an
    IPv4 address checked by its setting)."""
    return [layout.PYTHON, layout.FACTS_SCRIPT, "--listen", layout.FACTS_LISTEN,
            "--path", layout.FACTS_PATH, "--address", keepalived.vip_address(settings)]


# `ip -j addr show` reads the host's addresses over netlink: the one address family the load
# balancer's facts server needs beyond the token server's sandbox. And iproute2's `ip`, run
# as a user other than root, first drops its capabilities (capset(2), in @privileged, which
# the sandbox denies: `ip` then exits 1 without a word, seen on a bookworm lab host); the
# process has none (an empty bounding set), so allowing capset grants nothing. A later
# allow entry takes the call out of the deny list (systemd.exec, SystemCallFilter=).
LB_SANDBOX = (*("RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK"
                if line.startswith("RestrictAddressFamilies=") else line for line in SANDBOX),
              "SystemCallFilter=capset")


def facts_unit(settings: Settings, lb: bool = False) -> bytes:
    """The facts server's unit: the token server's sandbox (a dynamic user, no capabilities,
    a read-only system); it reads the facts folder and, on filesystem storage, statvfs()es
    the data folder. On a load balancer (`lb`) it runs `ip -j addr show` instead."""
    argv = lb_facts_arguments(settings) if lb else facts_arguments(settings)
    exec_start = textfile.systemd_exec_args(argv, file=layout.FACTS_UNIT, field="ExecStart")
    return textfile.systemd_unit(
        "Managed by registry-kit (registry_kit/roles/metrics.py)",
        {"Unit": ["Description=registry-kit facts: the kit's own gauges for Prometheus",
                  "After=network-online.target"],
         "Service": [f"ExecStart={exec_start}", "Restart=always", "RestartSec=2",
                     *(LB_SANDBOX if lb else SANDBOX)],
         "Install": ["WantedBy=multi-user.target"]}).encode()


def certificate_facts(cert: tls.ServerCertificate | None) -> bytes | None:
    """The facts file of the certificate this server serves; None without TLS."""
    leaf = tls.load_first_cert(cert.cert_pem) if cert else None
    return prometheus.certificate_facts(leaf.not_valid_after_utc).encode() if leaf else None


@operation()
def restart_facts():
    yield f"systemctl daemon-reload && systemctl restart {q(FACTS_SERVICE)}"


def metrics_deploy(settings: Settings, state: HostState,
                   cert: tls.ServerCertificate | None = None,
                   exporters: Sequence[haproxy.Exporter] = ()) -> None:
    if not settings.registry_metrics:
        metrics_remove(state)
        return
    packages.install_packages(PACKAGES, COMMANDS, state,
                              name="Install haproxy and python3 (metrics)")
    files.managed_dir(layout.METRICS_DIR, "0700", state.dirs.get(layout.METRICS_DIR),
                      name=f"Create {layout.METRICS_DIR}")
    facts_deploy(settings, state, cert)
    filter_deploy(render(settings, exporters), state)


def exporter_filter_deploy(settings: Settings, state: HostState,
                           exporters: Sequence[haproxy.Exporter]) -> None:
    """A registry_cache host that is no server and no load balancer: the same filter in
    front of its exporters only (none: the filter removed)."""
    if not exporters:
        metrics_remove(state)
        return
    packages.install_packages(("haproxy",), ("haproxy",), state,
                              name="Install haproxy (metrics)")
    files.managed_dir(layout.METRICS_DIR, "0700", state.dirs.get(layout.METRICS_DIR),
                      name=f"Create {layout.METRICS_DIR}")
    filter_deploy(render(settings, exporters, server=False), state)


def filter_deploy(config_text: str, state: HostState) -> None:
    config = files.managed_file(layout.METRICS_HAPROXY_CFG, config_text.encode(), "0644",
                                state.files.get(layout.METRICS_HAPROXY_CFG),
                                name="Upload the metrics filter's haproxy.cfg")
    unit = files.managed_file(layout.METRICS_UNIT, render_unit().encode(), "0644",
                              state.files.get(layout.METRICS_UNIT),
                              name=f"Install {SERVICE}.service")
    services.restart_haproxy(layout.METRICS_HAPROXY_CFG, SERVICE,
                             name=f"Check and restart {SERVICE}", _if=any_changed(config, unit))
    services.start(state, SERVICE, daemon_reload=True, name=f"Enable and start {SERVICE}")


def facts_deploy(settings: Settings, state: HostState,
                 cert: tls.ServerCertificate | None) -> None:
    """The facts folder (world-readable: no fact is a secret), the certificate's file and
    the facts server."""
    files.managed_dir(layout.FACTS_DIR, "0755", state.dirs.get(layout.FACTS_DIR),
                      name=f"Create {layout.FACTS_DIR}")
    certificate = certificate_facts(cert)
    if certificate is not None:
        files.managed_file(layout.FACTS_CERTIFICATE, certificate, "0644",
                           state.files.get(layout.FACTS_CERTIFICATE),
                           name="Write the server certificate's expiry (metrics)")
    else:
        files.absent_paths([layout.FACTS_CERTIFICATE], list(state.files),
                           name="Remove the certificate's expiry (no TLS)")
    script = files.managed_file(layout.FACTS_SCRIPT, package_data.script(
        layout.FACTS_SCRIPT_NAME), "0755", state.files.get(layout.FACTS_SCRIPT),
        name=f"Install {layout.FACTS_SCRIPT}")
    unit = files.managed_file(layout.FACTS_UNIT, facts_unit(settings), "0644",
                              state.files.get(layout.FACTS_UNIT),
                              name=f"Install {FACTS_SERVICE}.service")
    restart_facts(name=f"Restart {FACTS_SERVICE}", _if=any_changed(script, unit))
    services.start(state, FACTS_SERVICE, daemon_reload=True,
                   name=f"Enable and start {FACTS_SERVICE}")


def metrics_remove(state: HostState) -> None:
    """The reverse of metrics_deploy (teardown, or registry_metrics=False). haproxy stays
    installed: other software (the web page, a load balancer) may use it; so does python3.
    The facts folder goes with what the guard and the garbage collection wrote there."""
    services.stop(state, SERVICE, layout.METRICS_UNIT, name=f"Stop and disable {SERVICE}")
    services.stop(state, FACTS_SERVICE, layout.FACTS_UNIT,
                  name=f"Stop and disable {FACTS_SERVICE}")
    files.absent_paths([layout.METRICS_UNIT, layout.METRICS_DIR, layout.FACTS_UNIT,
                        layout.FACTS_SCRIPT, layout.FACTS_DIR], [*state.files, *state.dirs],
                       name="Remove the metrics filter's files")


# --- load balancers: whether this LB holds the floating address

LB_FACTS_FILES = (layout.FACTS_UNIT, layout.FACTS_SCRIPT)


def lb_probe_args(settings: Settings) -> dict:
    return {"files": list(LB_FACTS_FILES), "commands": ["python3"],
            "services": [FACTS_SERVICE]}


def lb_facts_deploy(settings: Settings, state: HostState) -> None:
    """After loadbalancer.lb_deploy (the scripts folder, python3 checked below): the facts
    server on a load balancer with registry_metrics and a floating address, else removed."""
    if layout.lb_facts_listen(settings) is None:
        lb_facts_remove(state)
        return
    packages.install_packages(("python3",), ("python3",), state,
                              name="Install python3 (metrics: the address holder)")
    script = files.managed_file(layout.FACTS_SCRIPT, package_data.script(
        layout.FACTS_SCRIPT_NAME), "0755", state.files.get(layout.FACTS_SCRIPT),
        name=f"Install {layout.FACTS_SCRIPT}")
    unit = files.managed_file(layout.FACTS_UNIT, facts_unit(settings, lb=True), "0644",
                              state.files.get(layout.FACTS_UNIT),
                              name=f"Install {FACTS_SERVICE}.service")
    restart_facts(name=f"Restart {FACTS_SERVICE}", _if=any_changed(script, unit))
    services.start(state, FACTS_SERVICE, daemon_reload=True,
                   name=f"Enable and start {FACTS_SERVICE}")


def lb_facts_remove(state: HostState) -> None:
    """The reverse of lb_facts_deploy (registry_metrics or registry_lb_vip off, teardown)."""
    services.stop(state, FACTS_SERVICE, layout.FACTS_UNIT,
                  name=f"Stop and disable {FACTS_SERVICE}")
    files.absent_paths(list(LB_FACTS_FILES), list(state.files),
                       name="Remove the address holder's facts server")
