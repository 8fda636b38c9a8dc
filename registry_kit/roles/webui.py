"""The registry web page on hosts in registry_servers (registry_webui_enabled): a static
page (registry_kit/webui_static) and /v2/ of the registry on one origin, served by a haproxy
of the kit's own, `registry-kit-webui.service`, with the registry's certificate; see README
"The web page" (why one origin, how logins and challenges pass).
"""

from __future__ import annotations

from pyinfra.operations.util import any_changed

from registry_kit.facts import HostState
from registry_kit.model.layout import (
    WEBUI_DIR,
    WEBUI_HAPROXY_CFG,
    WEBUI_PEM,
    WEBUI_SERVICE,
    WEBUI_UNIT,
)
from registry_kit.model.settings import Settings
from registry_kit.operations import files, packages, services
from registry_kit.render.tls import ServerCertificate
from registry_kit.render.webui import (
    FILE_NAMES,
    PAGE_CONFIG,
    STATIC,
    page_config,
    render_haproxy,
    render_unit,
    static_content,
)
from registry_kit.roles import server

PACKAGES = ("haproxy",)
COMMANDS = ("haproxy",)


def probe_args(settings: Settings) -> dict:
    return {"files": [f"{WEBUI_DIR}/{name}" for name in FILE_NAMES] + [WEBUI_UNIT],
            "dirs": [WEBUI_DIR], "commands": list(COMMANDS), "services": [WEBUI_SERVICE]}


def webui_deploy(settings: Settings, state: HostState, cert: ServerCertificate | None) -> None:
    if not settings.registry_webui_enabled or cert is None:
        webui_remove(state)
        return
    packages.install_packages(PACKAGES, COMMANDS, state, name="Install haproxy (web page)")
    files.managed_dir(WEBUI_DIR, "0700", state.dirs.get(WEBUI_DIR),
                      name=f"Create {WEBUI_DIR}")
    contents = {name: static_content(name) for name in STATIC}
    contents[PAGE_CONFIG] = page_config(settings)
    contents["haproxy.cfg"] = render_haproxy(settings).encode()
    contents["ca.crt"] = cert.ca_pem
    ops = [files.managed_file(f"{WEBUI_DIR}/{name}", content, "0644",
                              state.files.get(f"{WEBUI_DIR}/{name}"),
                              name=f"Upload the web page's {name}")
           for name, content in contents.items()]
    pem = server.served_certificate(settings, cert) + cert.key_pem
    ops.append(files.managed_file(WEBUI_PEM, pem, "0600", state.files.get(WEBUI_PEM),
                                  name="Upload the web page's certificate and key"))
    ops.append(files.managed_file(WEBUI_UNIT, render_unit().encode(), "0644",
                                  state.files.get(WEBUI_UNIT),
                                  name=f"Install {WEBUI_SERVICE}.service"))
    services.restart_haproxy(WEBUI_HAPROXY_CFG, WEBUI_SERVICE,
                             name=f"Check and restart {WEBUI_SERVICE}", _if=any_changed(*ops))
    services.start(state, WEBUI_SERVICE, daemon_reload=True,
                   name=f"Enable and start {WEBUI_SERVICE}")


def webui_remove(state: HostState) -> None:
    """The reverse of webui_deploy (teardown, or registry_webui_enabled=False). haproxy
    stays installed: other software (or the kit's load balancer) may use it."""
    services.stop(state, WEBUI_SERVICE, WEBUI_UNIT, name=f"Stop and disable {WEBUI_SERVICE}")
    files.absent_paths([WEBUI_UNIT, WEBUI_DIR], [*state.files, *state.dirs],
                       name="Remove the web page's files")
