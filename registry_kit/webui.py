"""The registry web page on hosts in registry_servers (registry_webui_enabled): browse
repositories and tags, copy the `docker pull` line, delete where registry_delete_enabled.

A static page (registry_kit/webui_static: HTML, JS, CSS; no outside assets) served by a
haproxy instance of its own, `registry-kit-webui.service`, on registry_webui_port of the
server, with the registry's certificate. The same haproxy passes /v2/ to the registry on
the server's loopback (TLS, checked against the CA), so page and API share one origin: no
CORS, and a Content-Security-Policy that allows this origin only. The page asks the
registry with the logged-in user's credentials and shows what the registry answers; it
holds no data of its own, so a visitor who is not logged in gets the empty page only.
haproxy moves the registry's `WWW-Authenticate` to `X-Registry-Authenticate` on the way
out, so the browser never opens its own Basic login dialog (the page reads the moved
header, which also carries a token server's Bearer challenge, see README "The web page").

Reads: registry_webui_enabled, registry_webui_port, registry_domain, registry_port,
registry_address, registry_bind_address, registry_delete_enabled, registry_tls_mode.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations.util import any_changed

from registry_kit import packages, remote, server, textfile
from registry_kit.commands import q
from registry_kit.facts import HostState
from registry_kit.settings import Settings
from registry_kit.tls import ServerCertificate

SERVICE = "registry-kit-webui"
UNIT = f"/etc/systemd/system/{SERVICE}.service"
CONFIG_DIR = "/etc/registry-kit-webui"  # root only: haproxy reads it as root, then drops
HAPROXY_CFG = f"{CONFIG_DIR}/haproxy.cfg"
PEM = f"{CONFIG_DIR}/webui.pem"  # certificate (+ chain) and key, 0600
CA = f"{CONFIG_DIR}/ca.crt"  # what the registry's certificate is checked against
PAGE_CONFIG = "config.json"
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
FILE_NAMES = ("haproxy.cfg", "webui.pem", "ca.crt", PAGE_CONFIG, *STATIC)
PACKAGES = ("haproxy",)
COMMANDS = ("haproxy",)
STATIC_DIR = Path(__file__).resolve().parent / "webui_static"
# haproxy serves a file from one buffer: each must fit in tune.bufsize with its headers.
BUFSIZE = 65536
MAX_FILE = BUFSIZE - 4096

# This origin only; no inline script or style (the page has none), no frames, no forms
# posted anywhere, no <base>. connect-src 'self': the page can talk to this origin's /v2/.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def probe_args(settings: Settings) -> dict:
    return {"files": [f"{CONFIG_DIR}/{name}" for name in FILE_NAMES] + [UNIT],
            "dirs": [CONFIG_DIR], "commands": list(COMMANDS), "services": [SERVICE]}


def static_content(name: str) -> bytes:
    content = (STATIC_DIR / name).read_bytes()
    if len(content) > MAX_FILE:  # a developer error, caught by the unit tests
        raise ValueError(f"{name} is {len(content)} bytes; haproxy serves at most {MAX_FILE}")
    return content


def page_config(settings: Settings) -> bytes:
    """What the page needs to know that the API does not tell: the name clients pull from
    and whether the registry accepts DELETE. Nothing about the registry's contents."""
    return (json.dumps({"registry": settings.registry_address,
                        "deleteEnabled": settings.registry_delete_enabled},
                       sort_keys=True) + "\n").encode()


def registry_target(settings: Settings) -> str:
    """address:port where the registry's port is published on this server."""
    bind = settings.registry_bind_address
    local = "127.0.0.1" if bind in (None, "0.0.0.0", "::") else str(bind)
    return f"{local}:{settings.registry_port}"  # haproxy splits at the last colon (IPv6 too)


def render_haproxy(settings: Settings) -> str:
    """haproxy.cfg. Values that are not literals here are checked to be one haproxy word
    (textfile.word): none can add a line, an argument or a comment."""

    def checked(value: object, field: str) -> str:
        return textfile.word(value, file=HAPROXY_CFG, field=field,
                             forbidden=textfile.HAPROXY_SYNTAX)

    domain = checked(settings.registry_domain, "registry_domain")
    target = checked(registry_target(settings), "registry_bind_address")
    port = settings.registry_webui_port
    bind = settings.registry_bind_address
    if bind in (None, "0.0.0.0", "::"):
        listen = f":::{port} v4v6"  # every address, IPv4 and IPv6
    else:
        listen = checked(f"{bind}:{port}", "registry_bind_address")
    lines = [
        "# managed by registry-kit (registry_kit/webui.py): the registry web page",
        "global",
        "    user haproxy",
        "    group haproxy",
        "    chroot /var/lib/haproxy",  # files and certificates are read before the chroot
        f"    tune.bufsize {BUFSIZE}",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 300s",
        "    timeout http-request 30s",
        "",
        "frontend webui",
        f"    bind {listen} ssl crt {PEM} alpn h2,http/1.1",
        # http-after-response: also on the answers haproxy makes itself (the page's files).
        f'    http-after-response set-header Content-Security-Policy "{CSP}"',
        "    http-after-response set-header X-Content-Type-Options nosniff",
        "    http-after-response set-header Referrer-Policy no-referrer",
        "    http-after-response set-header X-Frame-Options DENY",
        "    http-after-response set-header Cache-Control no-store",
        "    acl api path /v2 /v2/",
        "    acl api path_beg /v2/",
        "    use_backend registry if api",
    ]
    for name, path in (("index.html", "/"), ("index.html", "/index.html"),
                       *((name, f"/{name}") for name in (*STATIC, PAGE_CONFIG)
                         if name != "index.html")):
        kind = STATIC.get(name, "application/json")
        lines.append(f'    http-request return status 200 content-type "{kind}; charset=utf-8" '
                     f"file {CONFIG_DIR}/{name} if {{ path {path} }} METH_GET")
    lines += [
        '    http-request return status 404 content-type "text/plain" string "not found"'
        " unless api",
        "",
        "backend registry",
        # The browser must not open its own login dialog on a 401 (Basic challenge): the
        # page reads the challenge from this header instead.
        "    http-response set-header X-Registry-Authenticate %[res.hdr(WWW-Authenticate)]"
        " if { res.hdr(WWW-Authenticate) -m found }",
        "    http-response del-header WWW-Authenticate",
        f"    server registry {target} ssl verify required ca-file {CA} verifyhost {domain}"
        f" sni str({domain})",
        "",
    ]
    return "\n".join(lines)


def render_unit() -> str:
    config = q(HAPROXY_CFG)
    return "\n".join([
        "# managed by registry-kit (registry_kit/webui.py)",
        "[Unit]",
        "Description=registry-kit web page (haproxy: the page and /v2/ of the registry)",
        "After=network-online.target docker.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        f"ExecStartPre=/usr/sbin/haproxy -c -q -f {config}",
        f"ExecStart=/usr/sbin/haproxy -Ws -f {config} -p /run/{SERVICE}.pid",
        f"ExecReload=/usr/sbin/haproxy -c -q -f {config}",
        "ExecReload=/bin/kill -USR2 $MAINPID",
        "Type=notify",
        "KillMode=mixed",
        "Restart=always",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


@operation()
def restart_webui():
    """Check the config, then restart: haproxy reads the page's files at start only."""
    yield (f"haproxy -c -q -f {q(HAPROXY_CFG)} && systemctl daemon-reload && "
           f"systemctl restart {q(SERVICE)}")


@operation()
def enable_webui(state: HostState):
    active, enabled = state.services.get(SERVICE, (False, False))
    if active and enabled:
        host.noop(f"{SERVICE} is enabled and running")
        return
    yield f"systemctl daemon-reload && systemctl enable --now {q(SERVICE)}"


@operation()
def disable_webui(state: HostState):
    active, enabled = state.services.get(SERVICE, (False, False))
    if not (active or enabled or UNIT in state.files):
        host.noop(f"no {SERVICE}")
        return
    yield f"systemctl disable --now {q(SERVICE)} 2>/dev/null; true"


def webui_deploy(settings: Settings, state: HostState, cert: ServerCertificate | None) -> None:
    if not settings.registry_webui_enabled or cert is None:
        webui_remove(state)
        return
    packages.install_packages(PACKAGES, COMMANDS, state, name="Install haproxy (web page)")
    remote.managed_dir(CONFIG_DIR, "0700", state.dirs.get(CONFIG_DIR),
                       name=f"Create {CONFIG_DIR}")
    files = {name: static_content(name) for name in STATIC}
    files[PAGE_CONFIG] = page_config(settings)
    files["haproxy.cfg"] = render_haproxy(settings).encode()
    files["ca.crt"] = cert.ca_pem
    ops = [remote.managed_file(f"{CONFIG_DIR}/{name}", content, "0644",
                               state.files.get(f"{CONFIG_DIR}/{name}"),
                               name=f"Upload the web page's {name}")
           for name, content in files.items()]
    ops.append(remote.managed_file(PEM, server.served_certificate(settings, cert) + cert.key_pem,
                                   "0600", state.files.get(PEM),
                                   name="Upload the web page's certificate and key"))
    ops.append(remote.managed_file(UNIT, render_unit().encode(), "0644", state.files.get(UNIT),
                                   name=f"Install {SERVICE}.service"))
    restart_webui(name=f"Check and restart {SERVICE}", _if=any_changed(*ops))
    enable_webui(state, name=f"Enable and start {SERVICE}")


def webui_remove(state: HostState) -> None:
    """The reverse of webui_deploy (teardown, or registry_webui_enabled=False). haproxy
    stays installed: other software (or the kit's load balancer) may use it."""
    disable_webui(state, name=f"Stop and disable {SERVICE}")
    remote.absent_paths([UNIT, CONFIG_DIR], [*state.files, *state.dirs],
                        name="Remove the web page's files")
