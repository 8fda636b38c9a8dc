"""The load balancer on hosts in registry_lb: haproxy from the distro in front of the
registry_servers replicas (registry_lb_mode passthrough or terminate), each replica's /v2/
checked; a new haproxy.cfg is checked with `haproxy -c`, then reloaded in place (the floating
address stays: a move would cut the connections in flight, a reload keeps them). The admin
socket and haproxy-server.sh let the servers' rolling replacement drain a replica
(registry_kit.model.topology.OutOfRotation).
"""

from __future__ import annotations

from collections.abc import Iterable

from pyinfra import host

from registry_kit.commands import q
from registry_kit.facts import HostState, first_line, section_command
from registry_kit.model import layout
from registry_kit.model.inventory import merge_probe
from registry_kit.model.layout import HAPROXY_CFG, LB_CA, LB_CERT_DIR, LB_PEM
from registry_kit.model.settings import Settings, host_port
from registry_kit.model.topology import BACKEND, Topology, server_name
from registry_kit.operations import files, packages, services
from registry_kit.operations.ownership import plan_folder, remove_folders
from registry_kit.operations.removal import log_kept, purge_packages, remove_files
from registry_kit.operations.typed import operation
from registry_kit.render import haproxy
from registry_kit.render.tls import ServerCertificate
from registry_kit.roles import exporters, keepalived, metrics, server

SERVICE = "haproxy"
PACKAGES = ("haproxy", "socat")  # socat talks to the admin socket
COMMANDS = ("haproxy", "socat")
SCRIPT = layout.LB_SCRIPT_NAME


def probe_args(settings: Settings) -> dict:
    return merge_probe([
        {"files": [HAPROXY_CFG, LB_PEM, LB_CA, layout.script(SCRIPT),
                   layout.script(keepalived.HANDOVER_SCRIPT)],
         "dirs": [LB_CERT_DIR, layout.SCRIPTS_DIR],
         "commands": list(COMMANDS), "services": [SERVICE]},
        metrics.lb_probe_args(settings)])  # the address holder's facts server


def render(settings: Settings, topology: Topology) -> str:
    """haproxy.cfg (registry_kit.render.haproxy), every value checked to be one word."""

    def checked(value: object, field: str) -> str:
        return haproxy.word(value, file=HAPROXY_CFG, field=field)

    domain = checked(settings.registry_domain, "registry_domain")
    for replica in topology.replicas:
        checked(replica.server_name, f"{replica.host}: server name")
        checked(replica.address, f"{replica.host}: registry_internal_address")
        checked(replica.port, f"{replica.host}: registry_port")
    terminate = settings.registry_lb_mode == "terminate"
    if terminate:
        # Re-encrypted to the replicas, checked against the CA and the domain.
        server_opts = f" ssl verify required ca-file {LB_CA} verifyhost {domain}"
    elif settings.tls_enabled:
        server_opts = " check-ssl verify none"  # only the health check speaks TLS itself
    else:
        server_opts = ""
    # Token auth: clients fetch tokens through the load balancer too (the realm's host).
    # The replicas decide (users may be declared for registry_servers only).
    tokens = any(replica.registry_access is not None for replica in topology.servers)
    token_port = settings.registry_token_port if tokens else None
    realm_servers = [(replica.server_name, host_port(replica.address, token_port))
                     for replica in topology.replicas] if token_port else []
    # The web page: every replica that serves it, on the port the first one serves it on.
    pages = [server for server in topology.servers if server.registry_webui_enabled]
    webui_servers = [(server_name(page.host), checked(host_port(
        page.registry_internal_address, page.registry_webui_port), f"{page.host}: "
        "registry_webui_port")) for page in pages]
    metrics_at = layout.metrics_listen(settings)
    return haproxy.load_balancer(haproxy.LoadBalancer(
        port=checked(settings.registry_port, "registry_port"), domain=domain, backend=BACKEND,
        replicas=[(replica.server_name, replica.endpoint) for replica in topology.replicas],
        terminate=terminate, server_options=server_opts, token_port=token_port,
        realm_servers=realm_servers,
        webui_port=str(pages[0].registry_webui_port) if pages else None,
        webui_servers=webui_servers,
        stats=None if settings.registry_lb_stats is None else
        checked(settings.registry_lb_stats, "registry_lb_stats"),
        metrics=None if metrics_at is None else checked(metrics_at, "registry_metrics_bind"),
        metrics_allow=[checked(net, "registry_metrics_allow")
                       for net in settings.registry_metrics_allow],
        facts=None if metrics_at is None else layout.lb_facts_listen(settings),
        exporters=exporters.routes(settings, topology)),
        header="Managed by registry-kit (render/haproxy.py): edits here are replaced on the "
               "next deploy.")


@operation()
def haproxy_config(content: bytes, state: HostState):
    """Replace haproxy.cfg only with a config `haproxy -c` accepts, then reload. No address
    handover: haproxy's master-worker reload passes its listeners to the new worker and lets
    the old one finish its connections, whereas moving the floating address resets (or
    stalls until it comes back) every connection in flight through this LB."""
    yield from services.replace_checked(HAPROXY_CFG, content, "0644", state,
                                        ("haproxy", "-c", "-f"), SERVICE)


def lb_deploy(settings: Settings, state: HostState, topology: Topology,
              cert: ServerCertificate | None) -> None:
    packages.install_packages(PACKAGES, COMMANDS, state,
                              name="Install haproxy and socat from the distro")
    server.install_scripts([SCRIPT, keepalived.HANDOVER_SCRIPT], state)
    if settings.registry_lb_mode == "terminate" and cert is not None:
        files.managed_dir(LB_CERT_DIR, "0700", state.dirs.get(LB_CERT_DIR),
                          name=f"Create {LB_CERT_DIR}")
        files.managed_file(LB_PEM, server.served_certificate(settings, cert) + cert.key_pem,
                           "0600", state.files.get(LB_PEM),
                           name="Upload the load balancer's certificate and key")
        files.managed_file(LB_CA, cert.ca_pem, "0644", state.files.get(LB_CA),
                           name="Upload the CA the replicas are checked against")
    else:
        files.absent_paths([LB_CERT_DIR], list(state.dirs),
                           name="Remove the load balancer's certificate (passthrough)")
    haproxy_config(render(settings, topology).encode(), state,
                   name="Check and apply haproxy.cfg (haproxy -c, then reload)")
    services.start(state, SERVICE, name=f"Enable and start {SERVICE}")


# --- teardown: the reverse of lb_deploy and keepalived.keepalived_deploy ---

LB_SCRIPTS = (SCRIPT, keepalived.CHECK_SCRIPT, keepalived.HANDOVER_SCRIPT,
              layout.FACTS_SCRIPT_NAME)
LB_PACKAGES = (*PACKAGES, *keepalived.PACKAGES)


def teardown_probe_args(settings: Settings) -> dict:
    listed = [layout.SCRIPTS_DIR, LB_CERT_DIR, layout.HAPROXY_DROPIN_DIR]
    return merge_probe([probe_args(settings), keepalived.probe_args(settings),
                        {"dirs": listed, "listings": listed}])


@operation()
def stop_lb(state: HostState, handover: keepalived.Handover | None):
    """keepalived first (a MASTER's priority-0 advert hands the address over; with LBs that
    stay, wait until one answers on it), then haproxy; then the runtime files both leave."""
    running = [name for name in (keepalived.SERVICE, SERVICE)
               if any(state.services.get(name, (False, False)))]
    if not running:
        host.noop(f"{keepalived.SERVICE}, {SERVICE}: not running, not enabled")
        return
    if handover is not None and keepalived.SERVICE in running:
        yield handover.away_command()
    for name in running:
        yield f"systemctl disable --now {q(name)}"
    yield "rm -f " + " ".join(q(path) for path in keepalived.RUNTIME_FILES)


def lb_remove(settings: Settings, state: HostState, others_stay: bool = False) -> None:
    """keepalived and haproxy stopped and disabled (the floating address goes with
    keepalived, to an LB that stays when there is one), the facts server too, then the kit's
    files: keepalived.conf, haproxy.cfg (the kit wrote the whole file), haproxy's drop-in, the
    facts server's unit, the terminate-mode certificate folder, the kit's scripts (their
    folder when nothing else is in it); the packages only with
    registry_packages_remove_on_teardown (python3, which the facts server runs on, stays).
    A registry_lb host is never a registry_servers host (topology.validate)."""
    moving = keepalived.teardown_handover(settings, others_stay)
    stop_lb(state, moving, _serial=moving is not None,
            name="Stop and disable keepalived, then haproxy")
    services.stop(state, metrics.FACTS_SERVICE, layout.FACTS_UNIT,
                  name=f"Stop and disable {metrics.FACTS_SERVICE}")
    removed = remove_files([layout.KEEPALIVED_CONF, HAPROXY_CFG, layout.HAPROXY_DROPIN,
                            *keepalived.RUNTIME_FILES, layout.FACTS_UNIT], state,
                           name="Remove keepalived.conf, haproxy.cfg, haproxy's drop-in and "
                                "the facts server's unit")
    keepalived.reload_units(name="Reload systemd's units (haproxy's drop-in)",
                            _if=removed.did_change)
    plans = [plan_folder(state, LB_CERT_DIR, ["registry.pem", "ca.crt"], needs_marker=False),
             plan_folder(state, layout.HAPROXY_DROPIN_DIR, ["registry-kit.conf"],
                         needs_marker=False),
             plan_folder(state, layout.SCRIPTS_DIR, LB_SCRIPTS, needs_marker=False)]
    log_kept(plans)
    remove_folders(plans, name="Remove the LB's certificate folder, drop-in folder and scripts")
    purge_packages(LB_PACKAGES, (*COMMANDS, *keepalived.COMMANDS), settings,
                   state, name="Remove haproxy, socat, keepalived "
                   "(registry_packages_remove_on_teardown)")


# --- status.py: haproxy, keepalived, each replica as haproxy sees it, the floating address ---

def status_command(settings: Settings) -> str:
    parts = [section_command("haproxy"), f"systemctl is-active {q(SERVICE)} || true",
             section_command("keepalived"),
             f"systemctl is-active {q(keepalived.SERVICE)} || true",
             # Columns 1, 2 and 18 of haproxy's CSV (its admin socket's `show stat`): proxy,
             # server, status (UP, DOWN, MAINT, DRAIN...).
             section_command("servers"),
             f"echo 'show stat' | socat -t 2 stdio {q(layout.HAPROXY_SOCKET)} 2>/dev/null | "
             f"awk -F, -v b={q(BACKEND)} '$1 == b && $2 != \"BACKEND\" && $2 != \"FRONTEND\" "
             "{print $2, $18}' || true"]
    if settings.registry_lb_vip:  # whether this LB holds the floating address now
        vip = keepalived.vip_address(settings)
        parts += [section_command("vip"),
                  f"ip -o -4 addr show to {q(vip + '/32')} 2>/dev/null || true"]
    return "; ".join(parts)


def replica_states(lines: Iterable[str]) -> str:
    states = [" ".join(line.split()[:2]) for line in lines if line.strip()]
    return ", ".join(states) or "-"


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    vip = settings.registry_lb_vip
    holds = "-"
    if vip:
        holds = "holds " + keepalived.vip_address(settings) if first_line(sections, "vip") \
            else "backup"
    return {
        "load balancer": settings.host,
        "haproxy": first_line(sections, "haproxy") or "-",
        "keepalived": first_line(sections, "keepalived") or "-" if vip else "not used",
        "floating address": holds,
        "replicas (haproxy's view)": replica_states(sections.get("servers", [])),
    }
