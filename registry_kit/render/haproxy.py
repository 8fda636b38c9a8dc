"""haproxy configurations: the load balancer's (registry_kit.roles.loadbalancer) and the web
page's (registry_kit.render.webui), both made here from values. A config is a header line
and sections (`global`, `defaults`, `frontend NAME`, `backend NAME`), each a head line and
its lines indented by four spaces, one blank line between sections.

Callers check every value that is not a literal of this module with word() (one haproxy
word, textfile.word): none can add a line, an argument or a comment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from registry_kit.commands import q
from registry_kit.model import layout
from registry_kit.render import textfile

# The replicas' and the registry's health: /v2/ answers 401 (auth on) or 200 (auth off).
HEALTHY = "^(200|401)$"
TLS_FLOOR = "ssl-default-bind-options ssl-min-ver TLSv1.2"


@dataclass(frozen=True)
class Section:
    head: str  # "global", "frontend registry", ...
    lines: Sequence[str]  # the body, unindented; "# ..." lines are comments
    comment: Sequence[str] = ()  # comment lines above the head


def text(header: str, sections: Sequence[Section]) -> str:
    """The whole file: `# header`, then the sections."""
    out = [f"# {header}"]
    for index, section in enumerate(sections):
        if index:
            out.append("")
        out += [f"# {line}" for line in section.comment]
        out.append(section.head)
        out += [f"    {line}" for line in section.lines]
    return "\n".join(out) + "\n"


def word(value: object, *, file: str, field: str) -> str:
    """value as one haproxy word of `file`, or ValueError naming file and field."""
    return textfile.word(value, file=file, field=field, forbidden=textfile.HAPROXY_SYNTAX)


@dataclass(frozen=True)
class Exporter:
    """An exporter on the host's loopback that a metrics endpoint passes GET PATH to."""

    name: str  # its haproxy backend: exporter-NAME
    path: str
    listen: str  # 127.0.0.1:PORT


def _exporter_lines(exporters: Sequence[Exporter]) -> list[str]:
    return [f"use_backend exporter-{e.name} if {{ path {e.path} }}" for e in exporters]


def _exporter_backends(exporters: Sequence[Exporter]) -> list[Section]:
    return [Section(f"backend exporter-{e.name}", ["mode http", f"server {e.name} {e.listen}"])
            for e in exporters]


@dataclass(frozen=True)
class LoadBalancer:
    """What the load balancer's haproxy.cfg is made of (words checked by the caller)."""

    port: str
    domain: str
    backend: str
    replicas: Sequence[tuple[str, str]]  # (server name, ADDRESS:PORT)
    terminate: bool  # TLS ends here (pem), re-encrypted to the replicas
    server_options: str  # after `default-server check ...`: TLS towards the replicas
    token_port: int | None = None  # access rules: the replicas' token servers
    realm_servers: Sequence[tuple[str, str]] = ()
    stats: str | None = None  # ADDRESS:PORT of the stats page
    webui_port: str | None = None  # the replicas' web page, on the same domain and address
    webui_servers: Sequence[tuple[str, str]] = ()  # (server name, ADDRESS:WEBUI_PORT)
    metrics: str | None = None  # ADDRESS:PORT of haproxy's Prometheus exporter
    metrics_allow: Sequence[str] = ()  # the networks that may scrape it
    facts: str | None = None  # ADDRESS:PORT of the kit's facts server (on loopback)
    exporters: Sequence[Exporter] = ()  # Debian's exporters passed on the same endpoint


def load_balancer(lb: LoadBalancer, header: str) -> str:
    """haproxy.cfg of a registry_lb host: the replicas behind registry_port, drained
    through the admin socket during a rolling replacement."""
    return text(header, [*_lb_base(lb), *_lb_registry(lb), *_lb_extras(lb)])


def _lb_base(lb: LoadBalancer) -> list[Section]:
    """global and defaults: TCP for passthrough, HTTP when TLS ends here."""
    terminate = lb.terminate
    return [
        Section("global", [
            "log /dev/log local0",
            f"chroot {layout.HAPROXY_CHROOT}",
            "# Admin socket: registry-kit drains a replica here before replacing it.",
            f"stats socket {layout.HAPROXY_SOCKET} mode 660 level admin",
            "stats timeout 30s",
            "user haproxy",
            "group haproxy",
            "daemon",
            *([TLS_FLOOR] if terminate else []),
        ]),
        Section("defaults", [
            "log global",
            f"mode {'http' if terminate else 'tcp'}",
            f"option {'httplog' if terminate else 'tcplog'}",
            "option dontlognull",
            "# A replica that refuses the connection: try again on another one.",
            "option redispatch",
            "retries 3",
            "timeout connect 5s",
            "# Inactivity limits, not transfer limits: a large layer may take long but keeps "
            "moving.",
            "timeout client 10m",
            "timeout server 10m",
            *(["timeout http-request 30s", "timeout http-keep-alive 30s"] if terminate
              else []),
        ]),
    ]


def _lb_registry(lb: LoadBalancer) -> list[Section]:
    """The registry's frontend and the replicas' backend, checked on /v2/."""
    terminate = lb.terminate
    return [
        Section("frontend registry", [
            *([f"bind *:{lb.port} ssl crt {layout.LB_PEM} alpn http/1.1",
               "# What the registry's deployment docs ask of a TLS-terminating proxy. haproxy "
               "sets",
               "# no request body limit unless told to, so layer uploads of any size pass.",
               "# X-Forwarded-For replaced, not appended to (option forwardfor): the registry "
               "logs",
               "# the header's first address, which would otherwise be whatever the client "
               "wrote.",
               "http-request set-header X-Forwarded-For %[src]",
               "http-request set-header X-Forwarded-Proto https"] if terminate else
              [f"# TLS passthrough: the replicas terminate TLS with the certificate for "
               f"{lb.domain}.",
               f"bind *:{lb.port}"]),
            f"default_backend {lb.backend}",
        ]),
        Section(f"backend {lb.backend}", [
            "balance leastconn",
            "# Healthy = /v2/ answers 401 (auth on) or 200 (auth off).",
            "option httpchk",
            f"http-check send meth GET uri /v2/ ver HTTP/1.1 hdr Host {lb.domain}",
            f"http-check expect rstatus {HEALTHY}",
            "# Fast while a replica changes state, calm otherwise: each check is a log line "
            "there.",
            "default-server check inter 2s fastinter 500ms downinter 500ms fall 2 rise 2"
            f"{lb.server_options}",
            *(f"server {name} {endpoint}" for name, endpoint in lb.replicas),
        ]),
    ]


def _lb_extras(lb: LoadBalancer) -> list[Section]:
    """The token servers (token auth) and the stats page, each only when asked for."""
    sections: list[Section] = []
    if lb.token_port:
        sections += [
            Section("frontend registry-token", [
                "mode tcp", "option tcplog", f"bind *:{lb.token_port}",
                f"default_backend {layout.TOKEN_BACKEND}",
            ], comment=[
                "Access rules: the replicas' token servers (TLS passthrough; they serve the "
                "domain's",
                "certificate). Any replica's token is good on every replica: one signing key.",
            ]),
            Section(f"backend {layout.TOKEN_BACKEND}", [
                "mode tcp", "balance roundrobin", "default-server check inter 2s fall 2 rise 2",
                *(f"server {name} {endpoint}" for name, endpoint in lb.realm_servers),
            ]),
        ]
    if lb.webui_port:
        sections += _lb_webui(lb)
    if lb.stats:
        sections.append(Section("frontend stats", [
            "mode http", f"bind {lb.stats}", "stats enable", "stats uri /", "stats refresh 5s",
        ]))
    if lb.metrics:
        paths = " ".join([*([layout.FACTS_PATH] if lb.facts else []),
                          *(e.path for e in lb.exporters)])
        sections.append(Section("frontend metrics", [
            *metrics_frontend(lb.metrics, lb.metrics_allow),
            # haproxy's own exporter (Debian builds haproxy with it: `haproxy -vv`).
            f"http-request use-service prometheus-exporter if {{ path {layout.METRICS_PATH} }}",
            # The kit's facts (whether this LB holds the floating address) and the
            # exporters: GET only.
            f"http-request deny unless {{ path {paths} }} {{ method GET }}" if paths else
            "http-request deny",
            *_exporter_lines(lb.exporters),
            *(["default_backend facts"] if lb.facts else []),
        ]))
        if lb.facts:
            sections.append(Section("backend facts", ["mode http",
                                                      f"server facts {lb.facts}"]))
        sections += _exporter_backends(lb.exporters)
    return sections


def _lb_webui(lb: LoadBalancer) -> list[Section]:
    """The replicas' web page behind the same domain and address: TLS passthrough (each
    replica's page serves the domain's certificate), any replica (the page keeps nothing:
    each request carries the user's credentials). Healthy = /v2/ through the page answers
    401 or 200, so a replica whose registry is down is out of rotation too."""
    return [
        Section("frontend webui", [
            "mode tcp", "option tcplog", f"bind *:{lb.webui_port}", "default_backend webui",
        ], comment=["The web page (registry_webui_enabled on the replicas)."]),
        Section("backend webui", [
            "mode tcp", "balance leastconn",
            "option httpchk",
            f"http-check send meth GET uri /v2/ ver HTTP/1.1 hdr Host {lb.domain}",
            f"http-check expect rstatus {HEALTHY}",
            "default-server check check-ssl verify none inter 2s fastinter 500ms "
            "downinter 500ms fall 2 rise 2",
            *(f"server {name} {endpoint}" for name, endpoint in lb.webui_servers),
        ]),
    ]
def metrics_frontend(listen: str, allow: Sequence[str]) -> list[str]:
    """A metrics endpoint's first lines: HTTP on one address, every other network cut at
    the connection (registry_metrics_allow; haproxy enforces it on the host itself, so the
    kit owns no firewall rule that another tool could reorder or flush)."""
    return ["mode http", f"bind {listen}", "timeout http-request 10s",
            f"tcp-request connection reject unless {{ src {' '.join(allow)} }}"]


def metrics_filter(listen: str, allow: Sequence[str], debug: str | None, header: str,
                   facts: str | None = None, exporters: Sequence[Exporter] = ()) -> str:
    """The haproxy.cfg in front of a server's registry debug server (on loopback): only
    GET /metrics passes; /debug/pprof and /debug/vars, which the same server answers
    (distribution v2.8.2 and v3.0.0 import net/http/pprof and expvar), stay private. With
    `facts` (the kit's facts server, ADDRESS:PORT on loopback), GET on FACTS_PATH goes there;
    each of `exporters` gets GET on its path. `debug` None (a cache host that is no server):
    no registry behind it, the exporters only."""
    paths = " ".join([*([layout.METRICS_PATH] if debug else []),
                      *([layout.FACTS_PATH] if facts else []), *(e.path for e in exporters)])
    return text(header, [
        Section("global", ["user haproxy", "group haproxy", f"chroot {layout.HAPROXY_CHROOT}"]),
        Section("defaults", ["timeout connect 5s", "timeout client 30s",
                             "timeout server 30s"]),
        Section("frontend metrics", [
            *metrics_frontend(listen, allow),
            f"http-request deny unless {{ path {paths} }} {{ method GET }}",
            *([f"use_backend facts if {{ path {layout.FACTS_PATH} }}"] if facts else []),
            *_exporter_lines(exporters),
            *(["default_backend registry"] if debug else [])]),
        *([Section("backend registry", ["mode http", f"server registry {debug}"])]
          if debug else []),
        *([Section("backend facts", ["mode http", f"server facts {facts}"])] if facts else []),
        *_exporter_backends(exporters),
    ])


def unit(source: str, description: str, config: str, pidfile: str,
         reload: bool = False) -> str:
    """The systemd unit of a haproxy of the kit's own (the web page, the metrics filter): the
    config is checked before each start (and reload)."""
    check = f"/usr/sbin/haproxy -c -q -f {q(config)}"
    reloads = [f"ExecReload={check}", "ExecReload=/bin/kill -USR2 $MAINPID"] if reload else []
    return textfile.systemd_unit(f"managed by registry-kit ({source})", {
        "Unit": [f"Description=registry-kit {description}",
                 "After=network-online.target docker.service", "Wants=network-online.target"],
        "Service": [f"ExecStartPre={check}",
                    f"ExecStart=/usr/sbin/haproxy -Ws -f {q(config)} -p {q(pidfile)}", *reloads,
                    "Type=notify", "KillMode=mixed", "Restart=always"],
        "Install": ["WantedBy=multi-user.target"]})
