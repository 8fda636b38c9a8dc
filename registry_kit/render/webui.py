"""The registry web page's files, rendered from settings: its haproxy config (the page's
files, /v2/ to the registry, /token to the token server when access rules are on), its
systemd unit, and config.json (what the page needs to know). No host access; the steps that
put these on servers are registry_kit.roles.webui.
"""

from __future__ import annotations

import json

from registry_kit import package_data
from registry_kit.model import layout
from registry_kit.model.layout import (
    CATALOG_PATH,
    TOKEN_PATH,
    WEBUI_CA,
    WEBUI_DIR,
    WEBUI_HAPROXY_CFG,
    WEBUI_PEM,
    Endpoints,
)
from registry_kit.model.settings import Settings, host_port
from registry_kit.render import haproxy
from registry_kit.render import token_auth as token_render

PAGE_CONFIG = "config.json"
STATIC = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
FILE_NAMES = ("haproxy.cfg", "webui.pem", "ca.crt", PAGE_CONFIG, *STATIC)
# haproxy serves a file from one buffer: each must fit in tune.bufsize with its headers.
BUFSIZE = 65536
MAX_FILE = BUFSIZE - 4096

# This origin only; no inline script or style (the page has none), no frames, no forms
# posted anywhere, no <base>. connect-src 'self': the page can talk to this origin's /v2/.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def static_content(name: str) -> bytes:
    content = package_data.webui_static(name)
    if len(content) > MAX_FILE:  # a developer error, caught by the unit tests
        raise ValueError(f"{name} is {len(content)} bytes; haproxy serves at most {MAX_FILE}")
    return content


def page_config(settings: Settings) -> bytes:
    """What the page needs to know that the API does not tell: the name clients pull from,
    whether the registry accepts DELETE, and where this origin serves the token server
    (access rules on: the registry's realm names the token port, another origin, which the
    CSP does not allow). Nothing about the registry's contents."""
    document: dict = {"registry": Endpoints.of(settings).address,
                      "deleteEnabled": settings.registry_delete_enabled}
    if token_render.enabled(settings):
        document["token"] = TOKEN_PATH
        document["catalog"] = CATALOG_PATH  # the repositories the user may pull
    return (json.dumps(document, sort_keys=True) + "\n").encode()


def _frontend(listen: str, tokens: bool) -> list[str]:
    """The page's frontend: security headers, /v2/ (and /token) to the backends, the page's
    own files answered by haproxy itself, 404 for the rest."""
    files = [("index.html", "/"), ("index.html", "/index.html"),
             *((name, f"/{name}") for name in (*STATIC, PAGE_CONFIG) if name != "index.html")]
    return [
        f"bind {listen} ssl crt {WEBUI_PEM} alpn h2,http/1.1",
        # http-after-response: also on the answers haproxy makes itself (the page's files).
        f'http-after-response set-header Content-Security-Policy "{CSP}"',
        "http-after-response set-header X-Content-Type-Options nosniff",
        "http-after-response set-header Referrer-Policy no-referrer",
        "http-after-response set-header X-Frame-Options DENY",
        "http-after-response set-header Cache-Control no-store",
        "acl api path /v2 /v2/",
        "acl api path_beg /v2/",
        "use_backend registry if api",
        *([f"use_backend token if {{ path {TOKEN_PATH} {CATALOG_PATH} }}"] if tokens else []),
        *(f'http-request return status 200 content-type "{STATIC.get(name, "application/json")}'
          f'; charset=utf-8" file {WEBUI_DIR}/{name} if {{ path {path} }} METH_GET'
          for name, path in files),
        'http-request return status 404 content-type "text/plain" string "not found" unless api'
        + (f" || {{ path {TOKEN_PATH} {CATALOG_PATH} }}" if tokens else ""),
    ]


def render_haproxy(settings: Settings) -> str:
    """haproxy.cfg (registry_kit.render.haproxy): the page's files, /v2/ to the registry and
    /token to the token server, both on this server's local address."""

    def checked(value: object, field: str) -> str:
        return haproxy.word(value, file=WEBUI_HAPROXY_CFG, field=field)

    domain = checked(settings.registry_domain, "registry_domain")
    endpoints = Endpoints.of(settings)
    port = settings.registry_webui_port
    bind = settings.registry_bind_address
    if bind in (None, "0.0.0.0", "::"):
        listen = f":::{port} v4v6"  # every address, IPv4 and IPv6
    else:
        listen = checked(host_port(str(bind), port), "registry_bind_address")
    tokens = token_render.enabled(settings)
    frontend = _frontend(listen, tokens)
    backends = [("registry", settings.registry_port)]
    if tokens:
        backends.append(("token", settings.registry_token_port))
    return haproxy.text("managed by registry-kit (registry_kit/render/webui.py): the registry "
                        "web page", [
        # Files and certificates are read before the chroot.
        haproxy.Section("global", ["user haproxy", "group haproxy",
                                   f"chroot {layout.HAPROXY_CHROOT}", f"tune.bufsize {BUFSIZE}",
                                   haproxy.TLS_FLOOR]),
        haproxy.Section("defaults", ["mode http", "timeout connect 5s", "timeout client 60s",
                                     "timeout server 300s", "timeout http-request 30s"]),
        haproxy.Section("frontend webui", frontend),
        *(haproxy.Section(f"backend {backend}", [
            # The browser must not open its own login dialog on a 401 (Basic challenge):
            # the page reads the challenge from this header instead. fhdr: the whole value
            # (hdr splits at commas and would keep only a Bearer challenge's last part).
            "http-response set-header X-Registry-Authenticate %[res.fhdr(WWW-Authenticate)]"
            " if { res.hdr(WWW-Authenticate) -m found }",
            "http-response del-header WWW-Authenticate",
            # The token server limits failed logins per client address and trusts this
            # header from here only: set (a client's own value is dropped), not appended.
            *(["http-request set-header X-Forwarded-For %[src]"] if backend == "token"
              else []),
            f"server {backend} {checked(endpoints.local(target), 'registry_bind_address')}"
            f" ssl verify required ca-file {WEBUI_CA} verifyhost {domain} sni str({domain})",
        ]) for backend, target in backends),
    ])


def render_unit() -> str:
    return haproxy.unit("registry_kit/render/webui.py",
                        "web page (haproxy: the page and /v2/ of the registry)",
                        WEBUI_HAPROXY_CFG, layout.WEBUI_PIDFILE, reload=True)


