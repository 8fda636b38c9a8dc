"""Unit tests for registry_kit.render.render_config (the registry's config.yml)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from registry_kit.render import render_config
from registry_kit.settings import Settings

HTTP_SECRET = "http-secret-0123456789"
USERS = [{"name": "ci", "password_env": "REGKIT_PW"}]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGKIT_PW", "ci-password")
    monkeypatch.setenv("REGKIT_AK", "AKIA-test")
    monkeypatch.setenv("REGKIT_SK", 'sk/with:"odd" chars')


def _config(make_settings: Callable[..., Settings], **data: Any) -> tuple[str, dict[str, Any]]:
    text = render_config(make_settings(**data), HTTP_SECRET)
    return text, yaml.safe_load(text)


def test_defaults(make_settings: Callable[..., Settings]) -> None:
    text, config = _config(make_settings)
    assert text.startswith("# Managed by registry-kit (templates/config.yml.j2): ")
    assert text.endswith("\n")
    assert config["version"] == 0.1
    assert config["log"] == {"level": "info", "fields": {"service": "registry"}}
    assert config["http"]["addr"] == ":5000"
    assert config["http"]["host"] == "https://registry.example.internal:5000"
    assert config["http"]["secret"] == HTTP_SECRET
    assert config["http"]["tls"] == {"certificate": "/etc/registry-kit/certs/server.crt",
                                     "key": "/etc/registry-kit/certs/server.key",
                                     "minimumtls": "tls1.2"}
    assert config["storage"]["filesystem"] == {"rootdirectory": "/var/lib/registry"}
    assert config["storage"]["delete"] == {"enabled": False}
    assert config["storage"]["maintenance"]["readonly"] == {"enabled": False}
    assert "auth" not in config
    assert "debug" not in config["http"]
    assert config["health"]["storagedriver"]["enabled"] is True


def test_deterministic(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_users=USERS, registry_debug_addr="127.0.0.1:5001")
    first = render_config(settings, HTTP_SECRET)
    assert render_config(settings, HTTP_SECRET) == first
    # a second, equal Settings object gives the same bytes too
    again = make_settings(registry_users=USERS, registry_debug_addr="127.0.0.1:5001")
    assert render_config(again, HTTP_SECRET).encode() == first.encode()


def test_tls_section_only_with_tls(make_settings: Callable[..., Settings]) -> None:
    _, with_tls = _config(make_settings, registry_port=443)
    assert with_tls["http"]["host"] == "https://registry.example.internal"  # no :443
    assert "tls" in with_tls["http"]
    text, plain = _config(make_settings, registry_tls_mode="none")
    assert "tls" not in plain["http"]
    assert "tls:" not in text
    assert "server.crt" not in text
    assert plain["http"]["host"] == "http://registry.example.internal:5000"


def test_auth_section_only_with_users(make_settings: Callable[..., Settings]) -> None:
    text, config = _config(make_settings, registry_users=USERS)
    assert config["auth"] == {"htpasswd": {"realm": "registry-kit",
                                           "path": "/etc/registry-kit/auth/htpasswd"}}
    assert "ci-password" not in text
    _, without = _config(make_settings)
    assert "auth" not in without


def test_debug_section(make_settings: Callable[..., Settings]) -> None:
    _, config = _config(make_settings, registry_debug_addr="127.0.0.1:5001")
    assert config["http"]["debug"] == {"addr": ":5001",
                                       "prometheus": {"enabled": True, "path": "/metrics"}}


def test_delete_and_log_level(make_settings: Callable[..., Settings]) -> None:
    _, config = _config(make_settings, registry_delete_enabled=True, registry_log_level="debug")
    assert config["storage"]["delete"] == {"enabled": True}
    assert config["log"]["level"] == "debug"


def test_read_only(make_settings: Callable[..., Settings]) -> None:
    config = yaml.safe_load(render_config(make_settings(), HTTP_SECRET, read_only=True))
    assert config["storage"]["maintenance"]["readonly"] == {"enabled": True}


def test_s3_params_with_resolved_secrets(make_settings: Callable[..., Settings]) -> None:
    text, config = _config(make_settings, registry_storage={
        "driver": "s3", "bucket": "images", "region": "eu-west-1",
        "accesskey_env": "REGKIT_AK", "secretkey_env": "REGKIT_SK"})
    assert config["storage"]["s3"] == {"bucket": "images", "region": "eu-west-1",
                                       "accesskey": "AKIA-test",
                                       "secretkey": 'sk/with:"odd" chars'}
    assert "filesystem" not in config["storage"]
    assert "Secret(" not in text
    assert "_env" not in text


def test_inmemory_is_null(make_settings: Callable[..., Settings]) -> None:
    text, config = _config(make_settings, registry_storage={"driver": "inmemory"})
    assert "\n  inmemory: null\n" in text
    assert "inmemory" in config["storage"]
    assert config["storage"]["inmemory"] is None


@pytest.mark.parametrize("secret", ['with "quotes" and \\ backslash', "colon: hash # x",
                                    "a" * 120])
def test_http_secret_is_quoted(make_settings: Callable[..., Settings], secret: str) -> None:
    config = yaml.safe_load(render_config(make_settings(), secret))
    assert config["http"]["secret"] == secret
