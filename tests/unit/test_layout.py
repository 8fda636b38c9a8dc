"""registry_kit.model.layout: the endpoints for IPv4, IPv6 (bracketed wherever a port
follows or a URL holds it) and port 443 (the bare domain clients type), the server's files,
and a guard: no absolute path of the layout is written as a literal anywhere else in the
package (modules, scripts, templates), so changing one is one edit."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import registry_kit
from registry_kit.model import layout
from registry_kit.model.layout import Endpoints, ServerLayout
from registry_kit.model.settings import Settings

PACKAGE = Path(registry_kit.__file__).parent
# Settings name system folders a setting may not point at, and hold the settings' defaults
# (registry_config_dir's is the container's folder name too): not paths of the layout.
EXEMPT = {"model/layout.py", "model/settings.py", "model/checks.py"}


def test_ipv4_defaults(make_settings: Callable[..., Settings]) -> None:
    ends = Endpoints.of(make_settings(registry_domain="registry.example.internal"))
    assert ends.address == ends.authority == "registry.example.internal:5000"
    assert ends.url == ends.public_url == "https://registry.example.internal:5000"
    assert ends.resolve == "registry.example.internal:5000:127.0.0.1"
    assert ends.local_ip == "127.0.0.1" and ends.local(5444) == "127.0.0.1:5444"
    assert ends.realm == "https://registry.example.internal:5443/token"
    assert ends.realm_resolve == "registry.example.internal:5443:127.0.0.1"
    assert ends.realm_listen == "0.0.0.0:5443"
    bound = Endpoints.of(make_settings(registry_bind_address="10.1.2.3"))
    assert bound.resolve.endswith(":5000:10.1.2.3") and bound.local(5000) == "10.1.2.3:5000"
    assert bound.realm_listen == "10.1.2.3:5443"


def test_ipv6_is_bracketed(make_settings: Callable[..., Settings]) -> None:
    ends = Endpoints.of(make_settings(registry_domain="fd00::5",
                                      registry_bind_address="fd00::7"))
    assert ends.address == ends.authority == "[fd00::5]:5000"
    assert ends.url == "https://[fd00::5]:5000"
    # curl --resolve HOST:PORT:ADDRESS and haproxy's ADDRESS:PORT: brackets on both sides.
    assert ends.resolve == "[fd00::5]:5000:[fd00::7]"
    assert ends.local(5444) == "[fd00::7]:5444"
    assert ends.local_ip == "fd00::7"  # an address to compare (trusted proxies), not a URL
    assert ends.realm == "https://[fd00::5]:5443/token"
    assert ends.realm_resolve == "[fd00::5]:5443:[fd00::7]"
    assert ends.realm_listen == "[fd00::7]:5443"
    # Every address: the loopback, whichever family "every address" was written in.
    assert Endpoints.of(make_settings(registry_bind_address="::")).local_ip == "127.0.0.1"


def test_port_443_is_the_bare_domain(make_settings: Callable[..., Settings]) -> None:
    ends = Endpoints.of(make_settings(registry_domain="registry.example.internal",
                                      registry_port=443))
    assert ends.address == "registry.example.internal"
    assert ends.public_url == "https://registry.example.internal"
    assert ends.authority == "registry.example.internal:443"  # curl and insecure entries
    assert ends.url == "https://registry.example.internal:443"
    six = Endpoints.of(make_settings(registry_domain="fd00::5", registry_port=443))
    assert six.address == "[fd00::5]" and six.public_url == "https://[fd00::5]"
    # Without TLS, 443 is just a port: clients name it.
    plain = Endpoints.of(make_settings(registry_domain="registry.example.internal",
                                       registry_port=443, registry_tls_mode="none"))
    assert plain.address == "registry.example.internal:443"
    assert plain.url == plain.public_url == "http://registry.example.internal:443"


def test_server_files_follow_registry_config_dir(make_settings: Callable[..., Settings]) \
        -> None:
    paths = ServerLayout.of(make_settings(registry_config_dir="/srv/rk"))
    assert (paths.config, paths.cert, paths.key, paths.ca, paths.htpasswd) == (
        "/srv/rk/config.yml", "/srv/rk/certs/server.crt", "/srv/rk/certs/server.key",
        "/srv/rk/certs/ca.crt", "/srv/rk/auth/htpasswd")
    assert (paths.signing_key, paths.policy, paths.signing_cert) == (
        "/srv/rk/token/signing.key", "/srv/rk/token/policy.json",
        "/srv/rk/certs/token-signing.crt")
    assert layout.script("lib.sh") == f"{layout.SCRIPTS_DIR}/lib.sh"
    assert f"{layout.CONTAINER_CONFIG_DIR}/config.yml" == layout.CONTAINER_CONFIG_FILE


def _layout_paths() -> set[str]:
    """Every absolute path the layout holds (not TOKEN_PATH and CATALOG_PATH: URL paths,
    the token server's own routes)."""
    found: set[str] = set()
    for value in vars(layout).values():
        values = value.values() if isinstance(value, dict) else [value]
        for item in values:
            for text in (item if isinstance(item, tuple) else (item,)):
                if isinstance(text, str) and text.startswith("/") and \
                        text not in (layout.TOKEN_PATH, layout.CATALOG_PATH):
                    found.add(text)
    return found


def _literals(path: Path) -> Iterator[str]:
    """String literals of a module (f-string parts too; docstrings and comments left
    out), or the non-comment lines of a script or template."""
    text = path.read_text()
    if path.suffix != ".py":
        yield from (line for line in text.splitlines() if not line.lstrip().startswith("#"))
        return
    tree = ast.parse(text)
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in docstrings:
            yield node.value


def test_the_layout_paths_are_written_only_in_the_layout() -> None:
    paths = _layout_paths()
    assert {layout.SCRIPTS_DIR, layout.RUNTIME_DIR, layout.REDIS_CONF,
            layout.CONTAINER_CONFIG_DIR} <= paths
    # A path as itself or as a folder of a longer path; not a prefix of another name.
    patterns = {path: re.compile(rf"(?<![\w./-]){re.escape(path)}(?![\w.-])") for path in paths}
    found = []
    for file in sorted(PACKAGE.rglob("*")):
        name = file.relative_to(PACKAGE).as_posix()
        if file.suffix not in (".py", ".sh", ".j2") or name in EXEMPT:
            continue
        for literal in _literals(file):
            found += [f"{name}: {path} in {literal!r}" for path, pattern in patterns.items()
                      if pattern.search(literal)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("literal", ['"/usr/local/lib/registry-kit/x.sh"',
                                     'f"/run/registry-kit/{name}"'])
def test_the_guard_sees_a_path_in_a_module(tmp_path: Path, literal: str) -> None:
    module = tmp_path / "m.py"
    module.write_text(f'"""doc: /run/registry-kit"""\nX = {literal}\n')
    assert any(layout.SCRIPTS_DIR in text or layout.RUNTIME_DIR in text
               for text in _literals(module))
    module.write_text('"""doc: /run/registry-kit"""\n# /run/registry-kit\nX = 1\n')
    assert not list(_literals(module))
