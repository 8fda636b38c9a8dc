"""The load balancer on hosts in registry_lb: haproxy from the distro in front of the
registry_servers replicas, on the domain and port clients use.

passthrough (default): TCP; clients' TLS goes through to the replicas, which all serve the
certificate for the domain. terminate: haproxy serves that certificate, sets
X-Forwarded-Proto/For (Host passes unchanged) as the registry's deployment docs ask, and
talks TLS to the replicas, verifying them against the kit's CA. Either way haproxy checks
each replica's /v2/ (401 or 200 is healthy). A new config is checked with `haproxy -c`
before it replaces the old one, then applied with a reload (running connections stay).
The admin socket and haproxy-server.sh let the servers' rolling replacement drain a replica
first (registry_kit.model.topology.OutOfRotation).
"""

from __future__ import annotations

from io import BytesIO

from pyinfra import host
from pyinfra.api import operation

from registry_kit.facts import HostState
from registry_kit.model import layout
from registry_kit.model.layout import HAPROXY_CFG, LB_CA, LB_CERT_DIR, LB_PEM
from registry_kit.model.settings import Settings, host_port
from registry_kit.model.topology import BACKEND, Topology
from registry_kit.operations import files, packages
from registry_kit.render import haproxy
from registry_kit.render.tls import ServerCertificate
from registry_kit.roles import server

SERVICE = "haproxy"
PACKAGES = ("haproxy", "socat")  # socat talks to the admin socket
COMMANDS = ("haproxy", "socat")
SCRIPT = layout.LB_SCRIPT_NAME


def probe_args(settings: Settings) -> dict:
    return {"files": [HAPROXY_CFG, LB_PEM, LB_CA, layout.script(SCRIPT)],
            "dirs": [LB_CERT_DIR, layout.SCRIPTS_DIR],
            "commands": list(COMMANDS), "services": [SERVICE]}


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
    # Access rules: clients fetch tokens through the load balancer too (the realm's host).
    token_port = settings.registry_token_port if settings.registry_access is not None else None
    realm_servers = [(replica.server_name, host_port(replica.address, token_port))
                     for replica in topology.replicas] if token_port else []
    return haproxy.load_balancer(haproxy.LoadBalancer(
        port=checked(settings.registry_port, "registry_port"), domain=domain, backend=BACKEND,
        replicas=[(replica.server_name, replica.endpoint) for replica in topology.replicas],
        terminate=terminate, server_options=server_opts, token_port=token_port,
        realm_servers=realm_servers,
        stats=None if settings.registry_lb_stats is None else
        checked(settings.registry_lb_stats, "registry_lb_stats")),
        header="Managed by registry-kit (render/haproxy.py): edits here are replaced on the "
               "next deploy.")


@operation()
def haproxy_config(content: bytes, state: HostState):
    """Replace haproxy.cfg only with a config `haproxy -c` accepts, then reload."""
    current = state.files.get(HAPROXY_CFG)
    if current is not None and current.sha256 == files.sha256_of(content) and \
            current.mode == "644":
        host.noop(f"{HAPROXY_CFG} is up to date")
        return
    staging = f"{HAPROXY_CFG}.registry-kit-new"
    yield f"install -m 0644 -o root -g root /dev/null {staging}"
    yield files.upload(BytesIO(content), staging)
    yield (f"haproxy -c -f {staging} >/dev/null || {{ rm -f {staging}; echo 'registry-kit: "
           f"haproxy rejected the new configuration; {HAPROXY_CFG} was not changed' >&2; "
           "exit 1; }")
    yield f"mv -f {staging} {HAPROXY_CFG}"
    # reload-or-restart: a reload when haproxy runs (connections stay), a start otherwise.
    yield f"systemctl reload-or-restart {SERVICE}"


@operation()
def start_haproxy(state: HostState):
    active, enabled = state.services.get(SERVICE, (False, False))
    if active and enabled:
        host.noop(f"{SERVICE} is enabled and running")
        return
    yield f"systemctl enable --now {SERVICE}"


def lb_deploy(settings: Settings, state: HostState, topology: Topology,
              cert: ServerCertificate | None) -> None:
    packages.install_packages(PACKAGES, COMMANDS, state,
                              name="Install haproxy and socat from the distro")
    server.install_scripts([SCRIPT], state)
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
    start_haproxy(state, name=f"Enable and start {SERVICE}")
