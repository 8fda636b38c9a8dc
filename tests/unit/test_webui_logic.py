"""The web page's settings and files (registry_kit.webui): what is refused, what haproxy is
told, and that the page fetches nothing from anywhere else. The page itself is proven in a
browser by tests/e2e/test_webui.py."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render import webui


def test_off_by_default(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert settings.registry_webui_enabled is False
    assert settings.registry_webui_port == 5444


@pytest.mark.parametrize(("data", "words"), [
    ({"registry_webui_port": 5000}, "registry_webui_port=5000 is not allowed: a port other"),
    ({"registry_webui_port": 5001, "registry_debug_addr": "127.0.0.1:5001"}, "a port other"),
    ({"registry_webui_port": 0}, "a whole number from 1 to 65535"),
    ({"registry_webui_port": "5443"}, "a whole number from 1 to 65535"),
    ({"registry_webui_enabled": "yes"}, "True or False"),
    ({"registry_webui_enabled": True, "registry_tls_mode": "none"},
     "registry_webui_enabled=True is not allowed: False when registry_tls_mode='none'"),
])
def test_refused(make_settings: Callable[..., Settings], data: dict, words: str) -> None:
    with pytest.raises(SettingsError) as error:
        make_settings(**data)
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def _config(make_settings: Callable[..., Settings], **data: object) -> str:
    return webui.render_haproxy(make_settings(registry_webui_enabled=True,
                                              registry_domain="registry.lab", **data))


def test_haproxy_serves_the_files_and_passes_v2_only(
        make_settings: Callable[..., Settings]) -> None:
    config = _config(make_settings)
    assert "bind :::5444 v4v6 ssl crt /etc/registry-kit-webui/webui.pem" in config
    for name in ("index.html", "app.js", "app.css", "config.json"):
        assert f"file /etc/registry-kit-webui/{name} if" in config
    assert "acl api path /v2 /v2/\n    acl api path_beg /v2/\n" in config
    assert "use_backend registry if api" in config
    # Anything else is a 404: no other path reaches the registry.
    assert 'string "not found" unless api' in config
    assert ("server registry 127.0.0.1:5000 ssl verify required ca-file "
            "/etc/registry-kit-webui/ca.crt verifyhost registry.lab") in config
    assert "http-response del-header WWW-Authenticate" in config
    # The security headers on every answer, also the ones haproxy makes itself.
    assert f'http-after-response set-header Content-Security-Policy "{webui.CSP}"' in config


def test_bind_address_is_used_both_ways(make_settings: Callable[..., Settings]) -> None:
    config = _config(make_settings, registry_bind_address="10.0.0.5")
    assert "bind 10.0.0.5:5444 ssl" in config
    assert "server registry 10.0.0.5:5000 ssl" in config


def test_csp_allows_this_origin_only() -> None:
    directives = dict(part.strip().split(" ", 1) for part in webui.CSP.split(";"))
    assert directives["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[directive] == "'self'"
    assert "unsafe" not in webui.CSP and "http" not in webui.CSP and "*" not in webui.CSP


def test_static_files_fit_haproxy_and_fetch_nothing_outside() -> None:
    for name in webui.STATIC:
        text = webui.static_content(name).decode()
        assert len(text.encode()) <= webui.MAX_FILE
        assert "http://" not in text and "https://" not in text, name
        assert "@import" not in text and "url(" not in text, name
    page = webui.static_content("index.html").decode()
    # No inline script or style (the CSP would block them), only this origin's files.
    assert re.findall(r'<script[^>]*src="([^"]+)"', page) == ["app.js"]
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    # The login form shows only once app.js handles it (a native submit puts the password
    # in the URL): a test or a quick user cannot submit it before.
    assert '<section id="login-view" hidden>' in page
    # The code without its comments (which name what it avoids).
    script = re.sub(r"//[^\n]*|/\*.*?\*/", "", webui.static_content("app.js").decode(),
                    flags=re.S)
    # Credentials in memory: nothing stored, no HTML built from strings.
    for word in ("localStorage", "sessionStorage", "document.cookie", "innerHTML",
                 "insertAdjacentHTML", "eval("):
        assert word not in script, word


def test_page_config_tells_no_contents(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_domain="registry.lab", registry_delete_enabled=True)
    assert json.loads(webui.page_config(settings)) == {"registry": "registry.lab:5000",
                                                       "deleteEnabled": True}
    settings = make_settings(registry_domain="registry.lab", registry_port=443)
    assert json.loads(webui.page_config(settings))["registry"] == "registry.lab"


def test_unit_checks_the_config_before_start() -> None:
    unit = webui.render_unit()
    assert "ExecStartPre=/usr/sbin/haproxy -c -q -f /etc/registry-kit-webui/haproxy.cfg" in unit
    assert "Type=notify" in unit and "WantedBy=multi-user.target" in unit


def test_with_access_rules_the_token_server_is_on_this_origin(
        make_settings: Callable[..., Settings]) -> None:
    """The registry's realm names the token port (another origin, which the CSP refuses):
    the page asks /token here and haproxy passes it to this server's token server."""
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    rules = [{"repository": "team-a/*", "actions": ["pull"], "users": ["ci"]}]
    settings = make_settings(registry_webui_enabled=True, registry_domain="registry.lab",
                             registry_users=users, registry_access_rules=rules)
    config = webui.render_haproxy(settings)
    assert "    use_backend token if { path /token /catalog }" in config
    assert ("    server token 127.0.0.1:5443 ssl verify required ca-file "
            "/etc/registry-kit-webui/ca.crt verifyhost registry.lab sni str(registry.lab)"
            ) in config
    assert 'string "not found" unless api || { path /token /catalog }' in config
    assert json.loads(webui.page_config(settings))["catalog"] == "/catalog"
    # The token server limits failed logins per client address: haproxy names the client
    # (set: a client's own X-Forwarded-For does not pass), for the token backend only.
    token_backend = config.split("backend token\n")[1]
    assert "    http-request set-header X-Forwarded-For %[src]\n" in token_backend
    assert config.count("X-Forwarded-For") == 1
    # The whole challenge: res.hdr would split Bearer realm="..",service="..",scope=".." at
    # its commas and keep the last part (seen in the lab before this was fhdr).
    assert config.count("X-Registry-Authenticate %[res.fhdr(WWW-Authenticate)]") == 2
    # The token server's Basic challenge (wrong password) is moved too.
    assert config.count("http-response del-header WWW-Authenticate") == 2
    assert json.loads(webui.page_config(settings))["token"] == "/token"
    # Without rules: no /token (404 like any other path).
    plain = _config(make_settings)
    assert "/token" not in plain and "backend token" not in plain
    # The page's port is not the token server's.
    with pytest.raises(SettingsError, match="registry_webui_port=5443 is not allowed"):
        make_settings(registry_webui_port=5443, registry_users=users,
                      registry_access_rules=rules)
