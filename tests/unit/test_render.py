"""Unit tests for registry_kit.render.config (the registry's config.yml, built as data)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_kit.model.settings import Secret, Settings, Storage
from registry_kit.render.config import (
    CacheTarget,
    _ConfigDumper,
    config_data,
    dump_config,
    render_config,
)

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
    assert text.startswith("# Managed by registry-kit (registry_kit/render.py): ")
    assert text.count("# Managed by registry-kit") == 1
    assert text.endswith("\n")
    assert text.isascii()
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
    assert config["storage"]["maintenance"] == {
        "readonly": {"enabled": False},
        "uploadpurging": {"enabled": True, "age": "168h", "interval": "24h", "dryrun": False}}
    assert config["http"]["headers"] == {"X-Content-Type-Options": ["nosniff"]}
    assert "auth" not in config and "redis" not in config
    assert "cache" not in config["storage"] and "redirect" not in config["storage"]
    assert "draintimeout" not in config["http"]
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
    text, config = _config(make_settings, registry_users=USERS, registry_auth_mode="htpasswd")
    assert config["auth"] == {"htpasswd": {"realm": "registry-kit",
                                           "path": "/etc/registry-kit/auth/htpasswd"}}
    assert "ci-password" not in text
    # The default ("auto"): users mean token auth; the password is not in it either.
    text, config = _config(make_settings, registry_users=USERS)
    assert list(config["auth"]) == ["token"]
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


def test_text_is_the_dump_of_the_data(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_users=USERS)
    data = config_data(settings, HTTP_SECRET)
    assert render_config(settings, HTTP_SECRET) == dump_config(data)
    assert yaml.safe_load(dump_config(data)) == data


def test_scale_out_sections(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_storage_redirect_disabled=True)
    cache = CacheTarget(addr="10.0.0.5:6379", password="pw-1", db=3)
    config = yaml.safe_load(render_config(settings, HTTP_SECRET, cache=cache, drain_timeout=5))
    assert config["storage"]["cache"] == {"blobdescriptor": "redis"}
    assert config["storage"]["redirect"] == {"disable": True}
    assert config["http"]["draintimeout"] == "5s"
    assert config["redis"] == {
        "addr": "10.0.0.5:6379", "password": "pw-1", "db": 3, "dialtimeout": "1s",
        "readtimeout": "1s", "writetimeout": "1s",
        "pool": {"maxidle": 16, "maxactive": 64, "idletimeout": "300s"}}


def test_same_settings_in_another_order_same_bytes(make_settings: Callable[..., Settings]
                                                   ) -> None:
    storage = {"driver": "s3", "bucket": "images", "region": "eu-west-1",
               "accesskey_env": "REGKIT_AK", "secretkey_env": "REGKIT_SK"}
    reordered = dict(reversed(list(storage.items())))
    first = render_config(make_settings(registry_storage=storage), HTTP_SECRET)
    assert render_config(make_settings(registry_storage=reordered), HTTP_SECRET) == first


# Strings that would have changed the document's structure when pasted into YAML text.
HOSTILE = [
    "x\nauth: {}",
    "x\n  secret: other\nauth:\n  htpasswd: {}",
    "\n    readonly:\n      enabled: false",
    "# not a comment",
    "a #b",
    "'single' and \"double\" quotes",
    "%s %d %%",
    "$(reboot) `id` ${HOME}",
    "- item",
    "{flow: map}",
    "[1, 2]",
    "&anchor *alias !!python/object:os.system",
    "yes",
    "null",
    "0.1",
    "  leading and trailing  ",
    "tab\there\r\ncrlf",
    "unicode: \u00e9\u2603 \u2028 next \u2029 \x85 \ufeff",
    "\x00\x07\x1b[31m",
    "--- \n...\n",
    "a" * 300 + " " + "b" * 300,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_secrets_stay_one_value(make_settings: Callable[..., Settings],
                                        value: str) -> None:
    """The http secret and the redis password reach config.yml as data: whatever they hold,
    parsing the file gives them back intact, with no key added or lost, and every line
    outside them unchanged (the GC script edits the file line by line)."""
    settings = make_settings(registry_users=USERS)
    cache = CacheTarget(addr="10.0.0.5:6379", password=value, db=0)
    text = render_config(settings, value, cache=cache)
    config = yaml.safe_load(text)
    assert config["http"]["secret"] == value
    assert config["redis"]["password"] == value
    reference = render_config(settings, "s", cache=CacheTarget("10.0.0.5:6379", "s", 0))
    assert config.keys() == yaml.safe_load(reference).keys()
    assert len(text.splitlines()) == len(reference.splitlines())
    assert text.isascii()
    assert text.count("    readonly:\n") == 1


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_storage_params_stay_one_value(make_settings: Callable[..., Settings],
                                               value: str) -> None:
    # Storage built directly: this is the renderer's guard, whatever settings.py lets in.
    storage = Storage(driver="s3", params={"bucket": value, "secretkey": Secret(value),
                                           value: "as a key"})
    settings = dataclasses.replace(make_settings(), registry_storage=storage)
    config = yaml.safe_load(render_config(settings, HTTP_SECRET))
    assert config["storage"]["s3"] == {"bucket": value, "secretkey": value, value: "as a key"}
    assert set(config["storage"]) == {"s3", "delete", "maintenance"}
    assert set(config) == {"version", "log", "storage", "http", "health"}


# Values as settings can hold them (surrogates are refused there) and then some: every
# category but surrogates, with YAML's and the shell's metacharacters weighted in.
_METACHARACTERS = [*"'\"$`\\:#-?&*!|>%@,[]{} \t\n\r", "\x85", "\u2028", "\ufeff", "é"]
_ANY_TEXT = st.text(alphabet=st.one_of(st.sampled_from(_METACHARACTERS),
                                       st.characters(blacklist_categories=("Cs",))),
                    max_size=40)
# Keys: any text, empty and long ones included (those go through the Python emitter).
_KEYS = st.one_of(_ANY_TEXT, st.text(alphabet="ab ", min_size=95, max_size=135))
_SCALARS = st.one_of(_ANY_TEXT, st.integers(), st.booleans(), st.none(), st.floats())
_CONFIGS = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=12)


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml: one dumper only")
@settings(max_examples=500, deadline=None)
@given(data=st.dictionaries(_KEYS, _CONFIGS, max_size=5))
def test_libyaml_dumper_writes_the_same_bytes_as_the_python_one(data: dict[str, Any]) -> None:
    """config.yml is written with libyaml's emitter for speed; a changed byte would recreate
    every registry on upgrade, so the two must agree on whatever a setting can hold."""
    assert dump_config(data) == dump_config(data, dumper=_ConfigDumper)


def test_a_lone_surrogate_falls_back_to_the_python_dumper() -> None:
    assert '"\\uD800"' in dump_config({"k": "\ud800"})


@pytest.mark.parametrize("key", ["", "a" * 120, "a" * 128])
def test_keys_the_emitters_differ_on_go_through_the_python_one(key: str) -> None:
    assert dump_config({key: {key: 1}}) == dump_config({key: {key: 1}}, dumper=_ConfigDumper)
