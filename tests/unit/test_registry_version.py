"""Unit tests for registry 3 support: the major version (registry_kit.model.registry_version and
the registry_version setting) and config.yml per version (registry_kit.render.config)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from registry_kit.model.registry_version import (
    RegistryVersionError,
    binary_version,
    major_from_tag,
    resolve,
    running_major,
    split_reference,
)
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render.config import CacheTarget, config_data, render_config

DIGEST = "sha256:" + "a" * 64
CACHE = CacheTarget("10.0.0.5:6379", "redis-password-123456", 2)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGKIT_AK", "AKIA-test")
    monkeypatch.setenv("REGKIT_SK", "sk-secret")
    monkeypatch.setenv("REGKIT_PW", "pw")


# --------------------------------------------------------------------------- version


@pytest.mark.parametrize(("image", "major"), [
    ("registry:2", 2), ("registry:3", 3), ("registry:3.0.0", 3), ("registry:2.8.3", 2),
    ("registry:3.0", 3), ("registry:v3.0.0", 3), ("registry:3.0.0-rc.1", 3),
    ("registry:2.8.3-alpine", 2), ("host:5000/library/registry:2.8.3", 2),
    ("ghcr.io/distribution/distribution:3.0.0", 3), (f"registry:3@{DIGEST}", 3),
    ("[::1]:5000/registry:3", 3), ("registry:4", 4),
    # The tag does not tell:
    ("registry", None), ("registry:latest", None), ("registry:edge", None),
    ("registry:broken", None), (f"registry@{DIGEST}", None), ("host:5000/registry", None),
    ("mycorp/registry-mirror:3", None), ("mycorp/reg:3.0.0", None),
])
def test_major_from_tag(image: str, major: int | None) -> None:
    assert major_from_tag(image) == major


def test_split_reference_tells_a_port_from_a_tag() -> None:
    assert split_reference("host:5000/registry") == ("host:5000/registry", None, None)
    assert split_reference(f"host:5000/registry:3@{DIGEST}") == ("host:5000/registry", "3",
                                                                 DIGEST)


def test_resolve_order_and_sources() -> None:
    assert resolve("h", "registry:3", None).major == 3
    assert resolve("h", "registry:latest", 2).major == 2
    version = resolve("h", f"registry@{DIGEST}", None, "3.0.0")
    assert (version.major, version.source) == (
        3, f"registry@{DIGEST}'s label org.opencontainers.image.version=3.0.0")
    # Agreeing sources are fine; a label without a version ("edge") says nothing.
    assert resolve("h", "registry:3", 3, "3.0.0").major == 3
    assert resolve("h", "registry:edge", 3, "edge").major == 3


@pytest.mark.parametrize(("image", "setting", "label", "message"), [
    (f"registry@{DIGEST}", None, None,
     f"h: setting registry_version=None is not allowed: registry_image 'registry@{DIGEST}' "
     "does not tell the registry's major version (no version tag, and no "
     "org.opencontainers.image.version label on the server's copy); set registry_version to "
     "2 or 3"),
    ("registry:latest", None, "edge", "h: setting registry_version=None is not allowed: "),
    ("registry:3", 2, None, "h: setting registry_version=2 is not allowed: the tag of "
     "registry:3 says registry 3, registry_version=2 says 2; make them agree"),
    ("mycorp/reg:x", None, "2.8.3", None),
    ("registry:latest", 3, "2.8.3", "h: setting registry_version=3 is not allowed: "
     "registry_version=3 says registry 3, registry:latest's label "
     "org.opencontainers.image.version=2.8.3 says 2; make them agree"),
    ("registry:4", None, None, "h: setting registry_image='registry:4' is not allowed: the tag "
     "of registry:4 says registry 4; the kit renders config.yml for registry 2 and 3 only"),
])
def test_resolve_refusals_are_one_line(image: str, setting: int | None, label: str | None,
                                       message: str | None) -> None:
    if message is None:
        assert resolve("h", image, setting, label).major == 2
        return
    with pytest.raises(RegistryVersionError) as error:
        resolve("h", image, setting, label)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_running_major() -> None:
    assert running_major("registry:3", "") == 3
    assert running_major("registry:2.8.3", "3.0.0") == 2  # the tag it was started with
    assert running_major(f"registry@{DIGEST}", "3.0.0") == 3
    assert running_major("registry:latest", "") is None
    assert running_major(None, None) is None


@pytest.mark.parametrize(("output", "version"), [
    ("registry github.com/distribution/distribution/v3 3.0.0", "3.0.0"),
    ("/bin/registry github.com/distribution/distribution/v3 3.0.0\n", "3.0.0"),
    ("registry github.com/docker/distribution 2.8.3+ds1", "2.8.3"),
    ("/bin/registry github.com/docker/distribution v2.8.3", "2.8.3"),
    ("", None), ("Error: No such container: registry", None),
])
def test_binary_version(output: str, version: str | None) -> None:
    assert binary_version(output) == version


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize(("value", "expected"), [(None, None), (2, 2), (3, 3), ("2", 2),
                                                 ("3", 3)])
def test_registry_version_setting_accepted(make_settings: Callable[..., Settings],
                                           value: Any, expected: int | None) -> None:
    image = "registry:2" if expected != 3 else "registry:3"
    assert make_settings(registry_image=image, registry_version=value).registry_version == \
        expected
    assert make_settings(registry_image="registry:latest",
                         registry_version=value).registry_version == expected


@pytest.mark.parametrize("value", [1, 4, 2.0, "3.0", "v3", " 3", "3\n", True, "", [3]])
def test_registry_version_setting_refused(make_settings: Callable[..., Settings],
                                          value: Any) -> None:
    with pytest.raises(SettingsError) as error:
        make_settings(registry_image="registry:latest", registry_version=value)
    text = str(error.value)
    assert text.startswith("reg-host-1: setting registry_version=")
    assert "is not allowed: " in text and "\n" not in text


def test_registry_version_setting_must_agree_with_the_tag(
        make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError, match=r"setting registry_version=2 is not allowed: the "
                       r"tag of registry:3 says registry 3, registry_version=2 says 2"):
        make_settings(registry_image="registry:3", registry_version=2)
    with pytest.raises(SettingsError, match=r"registry_image='registry:4' is not allowed"):
        make_settings(registry_image="registry:4")
    # Without a version tag and without the setting, the probe's label may still tell.
    assert make_settings(registry_image=f"registry@{DIGEST}").registry_version is None


# --------------------------------------------------------------------------- config per version

# sha256 of config.yml as the kit rendered it before registry 3 support (commit 1f4a4bf),
# for the same settings: existing 2.x deployments must see the same bytes (no restart).
GOLDEN_2X = {
    "default": "545594d5727087cf47e636c39e4884a3a19225a5ae698b6df93c21052f1c6a6b",
    "default-ro": "bde7ef37cb0e24f57296fb70a7aed4628b1b89044f73864181c63a50100d563e",
    "users-debug": "4587c2af8ed13326b47b8d17aff1efdd6fe8b6f5ba19737d56b78d8b87261719",
    "users-debug-ro": "82f21e5fe90ec2694f0f32ce636674aa7902e86aed45dc4aa2ec5dbdece3abb5",
    "s3-cache": "f15274719a80d23c20e28732faa825b91aec0e8a9a61b9d603de0b0447dc6e65",
    "s3-cache-ro": "89289e91b0e4e814d233420f0fe450751fc002f88f612826b061372b5e007c99",
    "azure": "979b6bab0379f9caea495d38f7ba4b39a337724ddb131b9cc09a230f1f426202",
    "azure-ro": "1e66fe6f6ca7ed39ceea34d9c96fbdb89f8b04cfd8c6709c2a1b7e1b20c96ad8",
    "notls": "b46148917b18275403e1228a4c95665642015457604dd1589c57c3e052428711",
    "notls-ro": "02144b495b11b52df03975feba75d0324edd363c6083aff4c7cc007f5f1061ec",
}
S3 = {"driver": "s3", "bucket": "b", "region": "us-east-1",
      "regionendpoint": "http://10.0.0.9:8080", "accesskey_env": "REGKIT_AK",
      "secretkey_env": "REGKIT_SK"}
AZURE = {"driver": "azure", "accountname": "acc", "container": "c", "accountkey_env": "REGKIT_AK"}
CASES: dict[str, dict[str, Any]] = {
    "default": {},
    # htpasswd auth asked for by name: with "auto" (the default) users mean token auth.
    "users-debug": {"registry_users": [{"name": "ci", "password_env": "REGKIT_PW"}],
                    "registry_debug_addr": "127.0.0.1:5001", "registry_auth_mode": "htpasswd"},
    "s3-cache": {"registry_storage": S3, "registry_storage_redirect_disabled": True},
    "azure": {"registry_storage": AZURE},
    "notls": {"registry_tls_mode": "none"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_2x_config_is_byte_identical_to_before(make_settings: Callable[..., Settings],
                                               case: str) -> None:
    settings = make_settings(**CASES[case])
    extra: dict[str, Any] = {"cache": CACHE, "drain_timeout": 5} if case == "s3-cache" else {}
    for suffix, read_only in (("", False), ("-ro", True)):
        text = render_config(settings, "http-secret", read_only=read_only, major=2, **extra)
        assert hashlib.sha256(text.encode()).hexdigest() == GOLDEN_2X[case + suffix]
        # The default is the default image's version.
        assert render_config(settings, "http-secret", read_only=read_only, **extra) == text


def test_redis_section_per_version(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_storage=S3)
    two = config_data(settings, "s", cache=CACHE, major=2)
    three = config_data(settings, "s", cache=CACHE, major=3)
    assert two["redis"] == {"addr": "10.0.0.5:6379", "password": "redis-password-123456",
                            "db": 2, "dialtimeout": "1s", "readtimeout": "1s",
                            "writetimeout": "1s",
                            "pool": {"maxidle": 16, "maxactive": 64, "idletimeout": "300s"}}
    # go-redis UniversalOptions: 3.0.0 ignores addr/pool and panics without addrs.
    assert three["redis"] == {"addrs": ["10.0.0.5:6379"], "password": "redis-password-123456",
                              "db": 2, "dialtimeout": "1s", "readtimeout": "1s",
                              "writetimeout": "1s", "maxidleconns": 16, "poolsize": 64,
                              "connmaxidletime": "300s"}
    assert two["storage"]["cache"] == three["storage"]["cache"] == {"blobdescriptor": "redis"}
    # IPv6: one list item, bracketed as host_port writes it.
    v6 = config_data(settings, "s", cache=CacheTarget("[fd00::5]:6379", "p" * 16, 0), major=3)
    assert v6["redis"]["addrs"] == ["[fd00::5]:6379"]
    assert "redis" not in config_data(settings, "s", major=3)


def test_s3_forcepathstyle_per_version(make_settings: Callable[..., Settings]) -> None:
    with_endpoint = make_settings(registry_storage=S3)
    assert "forcepathstyle" not in config_data(with_endpoint, "s", major=2)["storage"]["s3"]
    assert config_data(with_endpoint, "s", major=3)["storage"]["s3"]["forcepathstyle"] is True
    # AWS itself (no regionendpoint): virtual-hosted names, 3.x's default.
    aws = {k: v for k, v in S3.items() if k != "regionendpoint"}
    assert "forcepathstyle" not in config_data(make_settings(registry_storage=aws), "s",
                                               major=3)["storage"]["s3"]
    # The user's own choice wins, in both versions (2.8 ignores the key).
    chosen = make_settings(registry_storage={**S3, "forcepathstyle": False})
    assert config_data(chosen, "s", major=3)["storage"]["s3"]["forcepathstyle"] is False
    assert config_data(chosen, "s", major=2)["storage"]["s3"]["forcepathstyle"] is False


def test_azure_credentials_per_version(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_storage=AZURE)
    assert "credentials" not in config_data(settings, "s", major=2)["storage"]["azure"]
    azure3 = config_data(settings, "s", major=3)["storage"]["azure"]
    assert azure3["credentials"] == {"type": "shared_key"}
    assert azure3["accountkey"] == "AKIA-test"
    own = make_settings(registry_storage={**AZURE, "credentials": {"type": "default_credentials"}})
    assert config_data(own, "s", major=3)["storage"]["azure"]["credentials"] == \
        {"type": "default_credentials"}


def test_3x_config_differs_only_where_3_reads_differently(
        make_settings: Callable[..., Settings]) -> None:
    """Filesystem storage, TLS, users, debug: the same file for 2 and 3."""
    settings = make_settings(**CASES["users-debug"])
    assert render_config(settings, "s", major=3) == render_config(settings, "s", major=2)
    # Token auth (users, "auto"): 3.x also pins the signing algorithm, nothing else differs.
    tokens = make_settings(**{**CASES["users-debug"], "registry_auth_mode": "auto"})
    two_token = yaml.safe_load(render_config(tokens, "s", major=2))
    three_token = yaml.safe_load(render_config(tokens, "s", major=3))
    assert three_token["auth"]["token"].pop("signingalgorithms") == ["ES256"]
    assert three_token == two_token
    text = render_config(make_settings(registry_storage=S3), "s", cache=CACHE, major=3)
    config = yaml.safe_load(text)
    two = yaml.safe_load(render_config(make_settings(registry_storage=S3), "s", cache=CACHE))
    assert {k: v for k, v in config.items() if k != "redis"} | {"storage": None} == \
        {k: v for k, v in two.items() if k != "redis"} | {"storage": None}
    # GC's read-only switch (scripts/registry-gc.sh edits these two lines) is the same.
    assert "    readonly:\n      enabled: false\n" in text
