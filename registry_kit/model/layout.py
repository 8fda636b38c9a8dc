"""Where everything is: every path on a host, every path inside the registry container and
every endpoint, each written once here. Fixed paths are constants; what depends on settings
is computed by ServerLayout (the folders a setting names) and Endpoints (addresses and URLs).
Modules and scripts take their paths from here (scripts as arguments), so changing a path
or a port is one edit; a unit test fails when one of these paths is written elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from registry_kit.model.settings import (
    FACTS_PORT,
    NODE_EXPORTER_PORT,
    REDIS_EXPORTER_PORT,
    Settings,
    host_port,
    url_host,
)

# --- Inside the registry container: fixed, the host folders are bind-mounted here, so a
# changed host folder does not change the registry's view.
CONTAINER_CONFIG_DIR = "/etc/registry-kit"
CONTAINER_DATA_DIR = "/var/lib/registry"
CONTAINER_CONFIG_FILE = f"{CONTAINER_CONFIG_DIR}/config.yml"
CONTAINER_CERT = f"{CONTAINER_CONFIG_DIR}/certs/server.crt"
CONTAINER_KEY = f"{CONTAINER_CONFIG_DIR}/certs/server.key"
CONTAINER_HTPASSWD = f"{CONTAINER_CONFIG_DIR}/auth/htpasswd"
# Access rules: the token signing certificate the registry checks tokens against.
CONTAINER_TOKEN_SIGNING_CERT = f"{CONTAINER_CONFIG_DIR}/certs/token-signing.crt"
CONTAINER_PORT = 5000  # what the registry listens on; published on registry_port
CONTAINER_DEBUG_PORT = 5001  # registry_debug_addr: debug and /metrics
# A pull-through cache on registry 3 without upstream credentials names this as its
# credential helper (`proxy.exec`), which 3.0 runs only when the remote asks for
# credentials; the kit never creates it, so it fails and the request goes on anonymously
# (registry_kit.model.pull_through says why).
CONTAINER_NO_CREDENTIAL_HELPER = f"{CONTAINER_CONFIG_DIR}/no-credential-helper"

# --- The kit's own folders on every host type.
SCRIPTS_DIR = "/usr/local/lib/registry-kit"  # servers and load balancers
RUNTIME_DIR = "/run/registry-kit"  # tmpfs: a check's or a login's secret, for seconds
LOCK_DIR = "/run/lock"
IMAGE_STAGING = "/var/tmp/registry-kit-image.tar"  # registry_image_archive, before docker load
SYSTEMD_DIR = "/etc/systemd/system"


def script(name: str) -> str:
    """Where scripts/NAME is installed."""
    return f"{SCRIPTS_DIR}/{name}"


def replace_lock(container: str) -> str:
    """replace-container.sh's lock: one swap of CONTAINER at a time."""
    return f"{LOCK_DIR}/registry-kit-{container}.lock"


def candidate(container: str) -> str:
    """The container that proves new files before CONTAINER's are replaced."""
    return f"{container}-candidate"


def candidate_dir(container: str) -> str:
    """Where the files a candidate of CONTAINER proves are staged: on tmpfs (config.yml
    holds secrets), root only, removed after each proof."""
    return f"{RUNTIME_DIR}/{candidate(container)}"


def unit(name: str) -> str:
    """Where the systemd unit NAME (with its suffix) is written."""
    return f"{SYSTEMD_DIR}/{name}"


# --- Docker engine and clients.
DAEMON_JSON = "/etc/docker/daemon.json"
# The engine's API (its default socket): the probe asks it through curl.
DOCKER_SOCKET = "/var/run/docker.sock"
CERTS_D = "/etc/docker/certs.d"  # Docker's trust folders, one per registry address
CLIENT_STATE_DIR = "/etc/registry-kit-client"  # login markers (bcrypt, never passwords)
SYSTEM_CA_DIRS = {"debian": "/usr/local/share/ca-certificates",
                  "rhel": "/etc/pki/ca-trust/source/anchors"}

# --- Load balancer (haproxy, keepalived) and cache (redis).
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
HAPROXY_CHROOT = "/var/lib/haproxy"
LB_SCRIPT_NAME = "haproxy-server.sh"  # drains a replica through the admin socket
LB_CERT_DIR = "/etc/haproxy/registry-kit"
LB_PEM = f"{LB_CERT_DIR}/registry.pem"  # terminate: certificate (+ chain) and key, root only
LB_CA = f"{LB_CERT_DIR}/ca.crt"  # terminate: what the replicas' certificates are checked against
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
LB_HANDOVER_SCRIPT_NAME = "lb-handover.sh"  # moves the floating address away before a change
LB_HANDOVER_MARK = "/run/registry-kit-lb-handover"  # lb-handover.sh stopped keepalived here
# 1 while haproxy is down, 0 while it runs: written by haproxy's unit (the drop-in below),
# followed by keepalived (track_file), which gives the address away the moment it reads 1.
HAPROXY_DOWN_FILE = "/run/registry-kit-haproxy-down"
HAPROXY_DROPIN_DIR = f"{SYSTEMD_DIR}/haproxy.service.d"
HAPROXY_DROPIN = f"{HAPROXY_DROPIN_DIR}/registry-kit.conf"
REDIS_CONF = "/etc/redis/redis.conf"
# Per OS family (the distro's own names): (pid file, log file).
REDIS_RUNTIME = {"debian": ("/run/redis/redis-server.pid", "/var/log/redis/redis-server.log"),
                 "rhel": ("/run/redis/redis.pid", "/var/log/redis/redis.log")}

# --- Token server (token auth: users or access rules).
TOKEN_SERVICE = "registry-kit-token.service"
TOKEN_UNIT = unit(TOKEN_SERVICE)
TOKEN_SCRIPT_NAME = "registry-token-server.py"
TOKEN_SCRIPT = script(TOKEN_SCRIPT_NAME)
TOKEN_RUNTIME_DIR = "/run/registry-kit-token"  # its copies of its files, made at each start
# --check-names writes a local name found in the directory here (fresh at each start).
TOKEN_NAME_CONFLICT = f"{TOKEN_RUNTIME_DIR}/name-conflict"
# Its counters since start (tokens issued, denied, failed logins, rate-limited) as a text
# file, rewritten at each change: a second RuntimeDirectory of its unit (the dynamic user's,
# removed at stop), the folder 0755 (the server opens it) and the file 0644 so that the
# facts server can read them (registry_metrics). Totals only: no user name or address.
TOKEN_COUNTERS_DIR = "/run/registry-kit-token-counters"
TOKEN_COUNTERS = f"{TOKEN_COUNTERS_DIR}/token.prom"
PYTHON = "/usr/bin/python3"
PYTHON_MODULES_DIR = "/usr/lib/python3/dist-packages"  # Debian's python3-* packages
TOKEN_BACKEND = "registry-token"  # haproxy backend of the replicas' token servers
TOKEN_PATH = "/token"  # the URL path registry-token-server.py serves (realm, web page)
CATALOG_PATH = "/catalog"  # its list of the repositories a user may pull (web page)

# --- Web page (its own haproxy).
WEBUI_SERVICE = "registry-kit-webui"
WEBUI_UNIT = unit(f"{WEBUI_SERVICE}.service")
WEBUI_DIR = "/etc/registry-kit-webui"  # root only: haproxy reads it as root, then drops
WEBUI_HAPROXY_CFG = f"{WEBUI_DIR}/haproxy.cfg"
WEBUI_PEM = f"{WEBUI_DIR}/webui.pem"  # certificate (+ chain) and key, 0600
WEBUI_CA = f"{WEBUI_DIR}/ca.crt"  # what the registry's certificate is checked against
WEBUI_PIDFILE = f"/run/{WEBUI_SERVICE}.pid"

# --- Metrics (registry_metrics): the registry's, filtered by a haproxy of the kit's own.
METRICS_PATH = "/metrics"
METRICS_SERVICE = "registry-kit-metrics"
METRICS_UNIT = unit(f"{METRICS_SERVICE}.service")
METRICS_DIR = "/etc/registry-kit-metrics"
METRICS_HAPROXY_CFG = f"{METRICS_DIR}/haproxy.cfg"
METRICS_PIDFILE = f"/run/{METRICS_SERVICE}.pid"
PROMETHEUS_DIR_NAME = "prometheus"  # under registry_state_dir: scrape config, alert rules
# The kit's own facts as Prometheus gauges (certificate expiry, data disk, disk guard, last
# garbage collection), served by the same filter on FACTS_PATH. Whoever changes a fact writes
# its FACTS_DIR/NAME.prom (root, 0644, no secret in any); FACTS_SERVICE (scripts/
# registry-kit-facts.py, a sandboxed dynamic user) reads them at each scrape and adds the data
# filesystem's bytes, on the loopback only. On load balancers with a floating address the
# same server says whether the LB holds it (no files there), behind haproxy's metrics frontend.
FACTS_PATH = "/kit/metrics"
FACTS_DIR = "/var/lib/registry-kit-metrics"
FACTS_SERVICE = "registry-kit-facts"
FACTS_UNIT = unit(f"{FACTS_SERVICE}.service")
FACTS_SCRIPT_NAME = "registry-kit-facts.py"
FACTS_SCRIPT = script(FACTS_SCRIPT_NAME)
FACTS_LISTEN = f"127.0.0.1:{FACTS_PORT}"
FACTS_CERTIFICATE = f"{FACTS_DIR}/certificate.prom"  # the deploy: the server certificate
FACTS_DISK_GUARD = f"{FACTS_DIR}/disk-guard.prom"  # registry-disk-guard.sh
FACTS_GC = f"{FACTS_DIR}/gc.prom"  # registry-gc.sh: the last whole collection
FACTS_RETENTION = f"{FACTS_DIR}/retention.prom"  # retention.py's last applied run
FACTS_BACKUP = f"{FACTS_DIR}/backup.prom"  # backup.py: the last successful backup's time

# Debian's exporters behind the same endpoint (registry_kit/roles/exporters.py): each on the
# host's loopback, configured by a drop-in of the kit's (written before the package is
# installed, so the package's first start already listens there), passed by the endpoint's
# haproxy on its own path.
REDIS_EXPORTER_PATH = "/redis/metrics"  # registry_cache hosts: prometheus-redis-exporter
NODE_EXPORTER_PATH = "/node/metrics"  # registry_node_exporter: prometheus-node-exporter
REDIS_EXPORTER_LISTEN = f"127.0.0.1:{REDIS_EXPORTER_PORT}"
NODE_EXPORTER_LISTEN = f"127.0.0.1:{NODE_EXPORTER_PORT}"
EXPORTER_DROPIN_NAME = "registry-kit.conf"  # in SYSTEMD_DIR/<service>.service.d/
REDIS_EXPORTER_ENV_NAME = "registry-kit.env"  # beside it, 0600: REDIS_PASSWORD (systemd reads
# only *.conf in a drop-in folder)


def dropin_dir(service: str) -> str:
    """The folder of systemd drop-ins for SERVICE.service."""
    return unit(f"{service}.service.d")


# --- Audit log (registry_audit_log): the registry's notifications, received on the host.
AUDIT_SERVICE = "registry-kit-audit"
AUDIT_UNIT = unit(f"{AUDIT_SERVICE}.service")
AUDIT_SCRIPT_NAME = "registry-audit-receiver.py"
AUDIT_SCRIPT = script(AUDIT_SCRIPT_NAME)
AUDIT_LOG_DIR = "/var/log/registry-kit"  # systemd's LogsDirectory= (the unit's user owns it)
AUDIT_LOG = f"{AUDIT_LOG_DIR}/audit.log"
AUDIT_LOGROTATE = "/etc/logrotate.d/registry-kit-audit"
AUDIT_BRIDGE = "docker0"  # the receiver listens on this interface's address (the gateway)
# The name the registry container resolves to its host's gateway (--add-host NAME:
# host-gateway, Docker 20.10+), and the path the receiver answers.
AUDIT_HOST_NAME = "registry-kit-audit.host"
AUDIT_EVENTS_PATH = "/events"

# --- Garbage collection timer.
GC_TIMER_NAME = "registry-kit-gc.timer"
GC_SERVICE_UNIT = unit("registry-kit-gc.service")
GC_TIMER_UNIT = unit(GC_TIMER_NAME)

# --- Scheduled retention (registry_retention_schedule): a timer running the planner on the
# server (scripts/registry-retention.py), with the planner's modules in a folder of their own
# (put on the runner's import path) and the rules as JSON rendered at deploy.
RETENTION_TIMER_NAME = "registry-kit-retention.timer"
RETENTION_SERVICE_UNIT = unit("registry-kit-retention.service")
RETENTION_TIMER_UNIT = unit(RETENTION_TIMER_NAME)
RETENTION_SCRIPT_NAME = "registry-retention.py"
RETENTION_PLANNER_DIR = f"{SCRIPTS_DIR}/retention-planner"
RETENTION_CONFIG_NAME = "retention.json"  # in registry_config_dir
FLOCK = "/usr/bin/flock"  # util-linux, on every Debian and RHEL host
# Held by the GC and retention timers' runs, garbage_collect.py's and retention.py's apply:
# one at a time on a server, each restarting the registry read-only and back.
MAINTENANCE_LOCK = f"{LOCK_DIR}/registry-kit-maintenance.lock"


# --- Disk guard (registry_disk_readonly_percent).
DISK_GUARD_TIMER_NAME = "registry-kit-disk-guard.timer"
DISK_GUARD_SERVICE_UNIT = unit("registry-kit-disk-guard.service")
DISK_GUARD_TIMER_UNIT = unit(DISK_GUARD_TIMER_NAME)
# In registry_config_dir: present while the guard holds the registry read-only, holding
# the UTC time it switched (the deploy reads it: a run then keeps config.yml read-only).
DISK_GUARD_FLAG_NAME = "disk-guard-readonly"
# In registry_config_dir: one line, "UTC-TIME what it did", left by the last garbage
# collection (scripts/registry-gc.sh) and the last retention run; status.py shows them.
GC_RECORD_NAME = "last-gc"
RETENTION_RECORD_NAME = "last-retention"


@dataclass(frozen=True)
class ServerLayout:
    """A server's folders and files under registry_config_dir and registry_data_dir."""

    config_dir: str
    data_dir: str = ""

    @classmethod
    def of(cls, settings: Settings) -> ServerLayout:
        return cls(settings.registry_config_dir, settings.registry_data_dir)

    @property
    def config(self) -> str:
        return f"{self.config_dir}/config.yml"

    @property
    def certs_dir(self) -> str:
        return f"{self.config_dir}/certs"

    @property
    def auth_dir(self) -> str:
        return f"{self.config_dir}/auth"

    @property
    def cert(self) -> str:
        return f"{self.certs_dir}/server.crt"

    @property
    def key(self) -> str:
        return f"{self.certs_dir}/server.key"

    @property
    def ca(self) -> str:
        return f"{self.certs_dir}/ca.crt"

    @property
    def htpasswd(self) -> str:
        return f"{self.auth_dir}/htpasswd"

    @property
    def disk_guard_flag(self) -> str:
        return f"{self.config_dir}/{DISK_GUARD_FLAG_NAME}"

    @property
    def gc_record(self) -> str:
        return f"{self.config_dir}/{GC_RECORD_NAME}"

    @property
    def retention_record(self) -> str:
        return f"{self.config_dir}/{RETENTION_RECORD_NAME}"

    @property
    def retention_config(self) -> str:
        return f"{self.config_dir}/{RETENTION_CONFIG_NAME}"

    @property
    def token_dir(self) -> str:
        return f"{self.config_dir}/token"

    @property
    def signing_key(self) -> str:
        return f"{self.token_dir}/signing.key"

    @property
    def policy(self) -> str:
        return f"{self.token_dir}/policy.json"

    @property
    def ldap_password(self) -> str:
        """registry_ldap: the directory's service password (0600)."""
        return f"{self.token_dir}/ldap.password"

    @property
    def ldap_ca(self) -> str:
        """registry_ldap: the CA the directory's certificate is checked against."""
        return f"{self.token_dir}/ldap-ca.crt"

    @property
    def signing_cert(self) -> str:
        # In certs/, which the container sees as CONTAINER_TOKEN_SIGNING_CERT.
        return f"{self.certs_dir}/token-signing.crt"

    @property
    def storage_v2(self) -> str:
        # filesystem storage: the registry's own tree (repositories/, blobs/) under the data dir
        return f"{self.data_dir}/docker/registry/v2"


def _local_ip(settings: Settings) -> str:
    """Where this server's published ports are reached from the server itself: loopback,
    or the one address of registry_bind_address."""
    bind = settings.registry_bind_address
    return "127.0.0.1" if bind in (None, "0.0.0.0", "::") else str(bind)


@dataclass(frozen=True)
class Endpoints:
    """The registry's addresses as clients, checks and proxies use them. In URLs and
    HOST:PORT forms an IPv6 address is bracketed."""

    address: str  # what clients type before the image name: no ":443" on TLS's port
    authority: str  # DOMAIN:PORT, the port always written
    url: str  # scheme://DOMAIN:PORT
    public_url: str  # config.yml's http.host: as url, no ":443" on TLS's port
    resolve: str  # curl --resolve DOMAIN:PORT:LOCAL, the registry by name over LOCAL
    local_ip: str  # the server's own address for its published ports, as an IP
    # Access rules: the token server, on registry_token_port of the same addresses.
    realm: str  # scheme://DOMAIN:TOKEN_PORT/token
    realm_resolve: str  # curl --resolve for the realm, over the same LOCAL
    realm_listen: str  # where the token server listens (ADDRESS:PORT)
    # A candidate's check (server.prove_files): scheme://NAME and NAME, its port added there.
    origin: str
    name: str

    @classmethod
    def of(cls, settings: Settings) -> Endpoints:
        domain, tls = settings.registry_domain, settings.tls_enabled
        scheme = "https" if tls else "http"
        authority = host_port(domain, settings.registry_port)
        bare = url_host(domain) if tls and settings.registry_port == 443 else authority
        local = _local_ip(settings)
        realm = host_port(domain, settings.registry_token_port)
        bind = settings.registry_bind_address
        return cls(
            address=bare, authority=authority, url=f"{scheme}://{authority}",
            public_url=f"{scheme}://{bare}", resolve=f"{authority}:{url_host(local)}",
            local_ip=local, realm=f"{scheme}://{realm}{TOKEN_PATH}",
            realm_resolve=f"{realm}:{url_host(local)}",
            realm_listen=host_port("0.0.0.0" if bind is None else str(bind),
                                   settings.registry_token_port),
            origin=f"{scheme}://{url_host(domain)}", name=url_host(domain))

    def local(self, port: int) -> str:
        """LOCAL:PORT where a port of this server is reached from the server itself."""
        return host_port(self.local_ip, port)


def metrics_listen(settings: Settings) -> str | None:
    """ADDRESS:PORT where this host serves its metrics (registry_metrics), or None."""
    if not settings.registry_metrics:
        return None
    address = settings.registry_metrics_bind or settings.registry_internal_address
    return host_port(address, settings.registry_metrics_port)


def lb_facts_listen(settings: Settings) -> str | None:
    """A load balancer's facts server (FACTS_LISTEN), reached through its haproxy's metrics
    frontend on FACTS_PATH: with registry_metrics and a floating address (whether this LB
    holds it, registry_kit_lb_holds_address), else None."""
    if not settings.registry_metrics or settings.registry_lb_vip is None:
        return None
    return FACTS_LISTEN


# The roles a host serves metrics in (metrics_endpoints): registry_servers, registry_lb,
# registry_cache. A cache host that is also a server or a load balancer serves both roles'
# endpoints on the same address.
MetricsRole = Literal["server", "lb", "cache"]


def metrics_endpoints(settings: Settings, role: MetricsRole) -> dict[str, str]:
    """Kind -> URL of every endpoint this host serves in `role` on its metrics address
    (registry_metrics; {} without): a server's registry (the filtered /metrics) and the
    kit's facts; a load balancer's haproxy exporter and, with a floating address, the facts
    server saying whether it holds it; the cache's redis exporter; each with
    registry_node_exporter, the node exporter."""
    listen = metrics_listen(settings)
    if listen is None:
        return {}
    paths = {"server": [("registry", METRICS_PATH), ("facts", FACTS_PATH)],
             "lb": [("haproxy", METRICS_PATH),
                    *([("facts", FACTS_PATH)] if lb_facts_listen(settings) else [])],
             "cache": [("redis", REDIS_EXPORTER_PATH)]}[role]
    if settings.registry_node_exporter:
        paths.append(("node", NODE_EXPORTER_PATH))
    return {kind: f"http://{listen}{path}" for kind, path in paths}


def prometheus_dir(settings: Settings) -> Path:
    """The control machine's folder for Prometheus: the scrape config and alert rules."""
    return settings.registry_state_dir / PROMETHEUS_DIR_NAME


def audit_url(settings: Settings) -> str:
    """Where the registry container sends its notifications (registry_audit_log)."""
    return f"http://{AUDIT_HOST_NAME}:{settings.registry_audit_port}{AUDIT_EVENTS_PATH}"
