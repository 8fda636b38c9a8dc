"""Unit tests for registry_kit.model.settings: validation, one-line errors, defaults, secrets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from registry_kit.model import checks
from registry_kit.model import settings as settings_mod
from registry_kit.model.checks import is_image_reference
from registry_kit.model.layout import Endpoints
from registry_kit.model.settings import (
    DECLARATIONS,
    SECTIONS,
    Secret,
    Settings,
    SettingsError,
    Storage,
    check_group_conflicts,
    check_unknown_keys,
)

HOST = "reg-host-1"  # the host name conftest.make_settings uses
BCRYPT_HASH = "$2y$10$" + "abcdefghijklmnopqrstuv" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ01234"
PLAIN_SECRET = "plain-Secret-0451"
INLINE_S3_SECRET = "inline-S3-key-7788"
LONG_PASSWORD = "p" * 73
ENV = {"REGKIT_PW": "env-password-1", "REGKIT_PW2": "env-password-2",
       "REGKIT_LONG_PW": LONG_PASSWORD, "REGKIT_AK": "akid", "REGKIT_SK": "s3-secret-value"}
UNSET_ENV = "REGKIT_NOT_SET_ANYWHERE"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(UNSET_ENV, raising=False)


def _user(**entry: Any) -> dict[str, Any]:
    return {"registry_users": [{"name": "ci", **entry}]}


def _empty_password_file(tmp: Path) -> dict[str, Any]:
    path = tmp / "empty.pw"
    path.write_text("")
    return _user(password_file=str(path))


def _provided_missing_cert(tmp: Path) -> dict[str, Any]:
    key = tmp / "server.key"
    key.write_text("key")
    return {"registry_tls_mode": "provided", "registry_tls_cert_file": str(tmp / "nope.crt"),
            "registry_tls_key_file": str(key)}


def _s3(**params: Any) -> dict[str, Any]:
    return {"registry_storage": {"driver": "s3", **params}}


# (id, data builder(tmp_path) or data, key named in the message, fragment of the allowed
#  text, a secret that must not appear in the message or None)
BAD_CASES: list[tuple[str, Any, str, str, str | None]] = [
    ("port-0", {"registry_port": 0}, "registry_port", "a whole number from 1 to 65535", None),
    ("port-70000", {"registry_port": 70000}, "registry_port", "from 1 to 65535", None),
    ("port-str", {"registry_port": "abc"}, "registry_port", "from 1 to 65535", None),
    ("port-bool", {"registry_port": True}, "registry_port", "from 1 to 65535", None),
    ("domain-scheme", {"registry_domain": "https://reg.example"}, "registry_domain",
     "without scheme, port, path or spaces", None),
    ("domain-path", {"registry_domain": "reg.example/path"}, "registry_domain",
     "a DNS name or IP address", None),
    ("domain-space", {"registry_domain": "reg example"}, "registry_domain",
     "a DNS name or IP address", None),
    ("domain-empty", {"registry_domain": ""}, "registry_domain", "a DNS name or IP address",
     None),
    ("image-upper", {"registry_image": "Registry:2"}, "registry_image",
     "an image reference like registry:2", None),
    ("image-empty-tag", {"registry_image": "registry:"}, "registry_image",
     "an image reference", None),
    ("image-space", {"registry_image": "a b"}, "registry_image", "an image reference", None),
    ("min-version", {"docker_min_version": "abc"}, "docker_min_version",
     "a version like 1.6.0", None),
    ("min-version-x", {"docker_min_version": "1.x"}, "docker_min_version",
     "a version like 1.6.0", None),
    ("min-version-dots", {"docker_min_version": "1..6"}, "docker_min_version",
     "a version like 1.6.0", None),
    ("typo-domain", {"registry_domian": "reg.example"}, "registry_domian",
     "unknown setting; did you mean registry_domain?", None),
    ("typo-min-version", {"docker_min_verison": "1.6.0"}, "docker_min_verison",
     "did you mean docker_min_version?", None),
    ("data-dir-relative", {"registry_data_dir": "var/lib/x"}, "registry_data_dir",
     "an absolute path of letters", None),
    ("data-dir-dotdot", {"registry_data_dir": "/var/../etc"}, "registry_data_dir",
     "without '.' or '..' parts", None),
    ("tls-mode", {"registry_tls_mode": "tls"}, "registry_tls_mode",
     "one of self-signed, provided, none", None),
    ("tls-none-users", {"registry_tls_mode": "none", **_user(password_env="REGKIT_PW")},
     "registry_tls_mode", "set registry_tls_none_acknowledged=True", ENV["REGKIT_PW"]),
    ("user-colon", {"registry_users": [{"name": "ci:bot", "password_env": "REGKIT_PW"}]},
     "registry_users", "(no ':')", ENV["REGKIT_PW"]),
    ("user-empty-password", _empty_password_file, "registry_users", "must not be empty", None),
    ("user-long-password", _user(password_env="REGKIT_LONG_PW"), "registry_users",
     "must be at most 72 bytes", LONG_PASSWORD),
    ("user-env-unset", _user(password_env=UNSET_ENV), "registry_users",
     "an environment variable that is set", None),
    ("user-two-sources", _user(password_env="REGKIT_PW", password=PLAIN_SECRET),
     "registry_users", "exactly one of password_env, password_file, password_hash",
     PLAIN_SECRET),
    ("user-plain", _user(password=PLAIN_SECRET), "registry_users",
     "registry_allow_plain_passwords=True", PLAIN_SECRET),
    ("user-md5-hash", _user(password_hash="$apr1$abcdefgh$0123456789abcdefghijkl"),
     "registry_users", "a bcrypt hash", None),
    ("storage-ftp", {"registry_storage": {"driver": "ftp"}}, "registry_storage",
     "driver one of filesystem, s3, azure, gcs, inmemory", None),
    ("s3-no-bucket", _s3(region="eu-west-1"), "registry_storage", "s3 storage needs 'bucket'",
     None),
    ("s3-no-region", _s3(bucket="b"), "registry_storage", "s3 storage needs 'region'", None),
    ("s3-inline-secret", _s3(bucket="b", region="r", secretkey=INLINE_S3_SECRET),
     "registry_storage", "secretkey from secretkey_env or secretkey_file, never inline",
     INLINE_S3_SECRET),
    ("provided-no-cert", {"registry_tls_mode": "provided"}, "registry_tls_cert_file",
     "when registry_tls_mode='provided'", None),
    ("provided-cert-missing", _provided_missing_cert, "registry_tls_cert_file",
     "an existing file on the control machine", None),
    ("install-snap", {"docker_install_method": "snap"}, "docker_install_method",
     "one of distro, docker-ce, none", None),
    ("docker-ce-no-repo", {"docker_install_method": "docker-ce"}, "docker_ce_repo_url",
     "the https:// base URL", None),
    ("mirror-no-scheme", {"docker_registry_mirrors": ["mirror.example"]},
     "docker_registry_mirrors", "mirror URLs like https://mirror.example:5000", None),
    ("login-unknown-user", {"registry_client_login_user": "nobody",
                            **_user(password_env="REGKIT_PW")},
     "registry_client_login_user", "a name from registry_users", ENV["REGKIT_PW"]),
    ("login-hash-only-user", {"registry_client_login_user": "ci",
                              **_user(password_hash=BCRYPT_HASH)},
     "registry_client_login_user", "with a password_env or password_file", None),
    ("debug-public", {"registry_debug_addr": "0.0.0.0:5001"}, "registry_debug_addr",
     "127.0.0.1:PORT (1-65535", None),
    ("log-level", {"registry_log_level": "verbose"}, "registry_log_level",
     "one of error, warn, info, debug", None),
    ("delete-yes", {"registry_delete_enabled": "yes"}, "registry_delete_enabled",
     "True or False", None),
    ("live-restore-str", {"docker_live_restore": "true"}, "docker_live_restore",
     "True, False or None", None),
    ("timeout-low", {"registry_verify_timeout": 4}, "registry_verify_timeout",
     "from 5 to 600", None),
    ("container-name", {"registry_container_name": "my registry"}, "registry_container_name",
     "a Docker container name", None),
    ("extra-ips", {"registry_tls_extra_ips": ["10.0.0.300"]}, "registry_tls_extra_ips",
     "IP addresses", None),
    ("hosts-entries", {"registry_client_hosts_entries": {"reg.example": "not-an-ip"}},
     "registry_client_hosts_entries", "a mapping of host name to IP address", None),
    # --- hardening (issue 12): whole-string matches, control characters, system folders
    ("config-dir-quote", {"registry_config_dir": "/etc/rk';id;'"}, "registry_config_dir",
     "an absolute path of letters", None),
    ("data-dir-comma", {"registry_data_dir": "/srv/reg,source=/etc"}, "registry_data_dir",
     "an absolute path of letters", None),
    ("data-dir-space", {"registry_data_dir": "/srv/my registry"}, "registry_data_dir",
     "an absolute path of letters", None),
    ("config-dir-etc-ssl", {"registry_config_dir": "/etc/ssl"}, "registry_config_dir",
     "not one the operating system or other software owns", None),
    ("config-dir-etc-ssl-certs", {"registry_config_dir": "/etc/ssl/certs"},
     "registry_config_dir", "not one the operating system", None),
    ("data-dir-var-lib", {"registry_data_dir": "/var/lib/"}, "registry_data_dir",
     "not one the operating system", None),
    ("data-dir-usr-sub", {"registry_data_dir": "/usr/share/registry"}, "registry_data_dir",
     "not one the operating system", None),
    ("data-dir-docker", {"registry_data_dir": "/var/lib/docker/volumes/x"},
     "registry_data_dir", "not one the operating system", None),
    ("data-in-config", {"registry_config_dir": "/srv/rk", "registry_data_dir": "/srv/rk/data"},
     "registry_data_dir", "neither may hold the other", None),
    ("repo-url-subshell", {"docker_install_method": "docker-ce",
                           "docker_ce_repo_url": "https://x/$(id -un)"},
     "docker_ce_repo_url", "the https:// base URL", None),
    ("user-trailing-newline", {"registry_users": [{"name": "ci\n", "password_env": "REGKIT_PW"}]},
     "registry_users", "text without line breaks", None),
    ("image-trailing-newline", {"registry_image": "registry:2\n"}, "registry_image",
     "text without line breaks", None),
    ("container-trailing-newline", {"registry_container_name": "registry\n"},
     "registry_container_name", "text without line breaks", None),
    ("schedule-newline", {"registry_gc_schedule": "weekly\nExecStart=/bin/sh"},
     "registry_gc_schedule", "text without line breaks", None),
    ("schedule-percent", {"registry_gc_schedule": "%n"}, "registry_gc_schedule",
     "OnCalendar", None),
    ("domain-line-separator", {"registry_domain": "reg.example\u2028x"}, "registry_domain",
     "text without line breaks", None),
    ("extra-ip-scope", {"registry_tls_extra_ips": ["fe80::1%eth0"]}, "registry_tls_extra_ips",
     "IP addresses", None),
    ("hosts-entry-scope", {"registry_client_hosts_entries": {"reg.example": "fe80::1%lo"}},
     "registry_client_hosts_entries", "a mapping of host name to IP address", None),
    ("internal-address-scope", {"registry_internal_address": "fe80::1%eth0"},
     "registry_internal_address", "DNS name or IP address", None),
    ("mirror-path", {"docker_registry_mirrors": ["http://m.example/$(id)"]},
     "docker_registry_mirrors", "mirror URLs", None),
    ("bind-address-name", {"registry_bind_address": "registry.example"},
     "registry_bind_address", "one IP address", None),
    ("storage-rootdirectory", {"registry_storage": {"driver": "filesystem",
                                                    "rootdirectory": "/var/lib/registry"}},
     "registry_storage", "choose the folder on the server with registry_data_dir", None),
    ("storage-param-name", {"registry_storage": {"driver": "s3", "bucket": "b", "region": "r",
                                                 "x: y": "z"}},
     "registry_storage", "parameter names", None),
    ("storage-nul", {"registry_storage": {"driver": "s3", "bucket": "b\x00", "region": "r"}},
     "registry_storage", "text without line breaks", "b\x00"),
]


@pytest.mark.parametrize(("data", "key", "fragment", "secret"),
                         [case[1:] for case in BAD_CASES], ids=[case[0] for case in BAD_CASES])
def test_bad_setting_raises_one_line(make_settings: Callable[..., Settings], tmp_path: Path,
                                     data: Any, key: str, fragment: str,
                                     secret: str | None) -> None:
    if callable(data):
        data = data(tmp_path)
    with pytest.raises(SettingsError) as caught:
        make_settings(**data)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{HOST}: setting {key}=")
    assert fragment in message
    if secret is not None:
        assert secret not in message


def test_bad_case_table_is_big_enough() -> None:
    assert len(BAD_CASES) >= 25
    assert len({case[0] for case in BAD_CASES}) == len(BAD_CASES)


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "127.0.0.1:70000"])
def test_debug_addr_port_out_of_range(make_settings: Callable[..., Settings],
                                      addr: str) -> None:
    with pytest.raises(SettingsError, match="registry_debug_addr"):
        make_settings(registry_debug_addr=addr)


# --------------------------------------------------------------------------- good values


def test_defaults_load(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    s = make_settings()
    assert s.host == HOST
    assert s.registry_domain == "registry.example.internal"
    assert s.registry_port == 5000
    assert s.registry_image == "registry:2"
    assert s.registry_config_dir == "/etc/registry-kit"
    assert s.registry_data_dir == "/var/lib/registry-kit/data"
    assert s.registry_storage == Storage(driver="filesystem", params={}, secret_keys=())
    assert s.registry_tls_mode == "self-signed"
    assert s.tls_enabled is True
    assert s.registry_users == ()
    assert s.registry_http_secret is None
    assert s.registry_debug_addr is None
    assert s.registry_state_dir == tmp_path / ".registry-kit"
    assert s.docker_install_method == "distro"
    assert s.docker_min_version == "1.6.0"
    assert s.docker_registry_mirrors == ()
    assert s.docker_live_restore is None
    assert Endpoints.of(s).address == "registry.example.internal:5000"
    assert Endpoints.of(s).url == "https://registry.example.internal:5000"


def test_load_without_known_reads_group_data(tmp_path: Path) -> None:
    assert settings_mod.load(HOST, {}, base_dir=tmp_path, server=False).registry_port == 5000


@pytest.mark.parametrize(
    ("data", "address", "url"),
    [
        ({"registry_port": 443}, "reg.example", "https://reg.example:443"),
        ({"registry_port": 443, "registry_tls_mode": "none"}, "reg.example:443",
         "http://reg.example:443"),
        ({"registry_port": 5000}, "reg.example:5000", "https://reg.example:5000"),
        ({"registry_port": 5000, "registry_tls_mode": "none"}, "reg.example:5000",
         "http://reg.example:5000"),
    ],
)
def test_registry_address(make_settings: Callable[..., Settings], data: dict[str, Any],
                          address: str, url: str) -> None:
    s = make_settings(registry_domain="reg.example", **data)
    assert Endpoints.of(s).address == address
    assert Endpoints.of(s).url == url


def test_domain_is_lowercased_and_ip_allowed(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(registry_domain="Reg.Example").registry_domain == "reg.example"
    assert Endpoints.of(make_settings(registry_domain="10.1.2.3")).address == "10.1.2.3:5000"


def test_foreign_keys_are_ignored(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(ssh_user="deploy", _sudo=True)
    assert s.registry_port == 5000


def test_absolute_path_strips_trailing_slash(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(registry_data_dir="/srv/reg/").registry_data_dir == "/srv/reg"


def test_secret_repr_hides_value() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == "Secret(***)"
    assert str(secret) == "Secret(***)"
    assert f"{secret}" == "Secret(***)"
    assert "hunter2" not in repr([secret, {"k": secret}])
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2")
    assert secret != Secret("other")
    assert secret != "hunter2"


def test_settings_repr_hides_passwords(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(registry_users=[{"name": "ci", "password_env": "REGKIT_PW"}],
                      registry_http_secret={"env": "REGKIT_PW2"})
    assert ENV["REGKIT_PW"] not in repr(s)
    assert ENV["REGKIT_PW2"] not in repr(s)
    assert s.registry_http_secret is not None
    assert s.registry_http_secret.reveal() == ENV["REGKIT_PW2"]


@pytest.mark.parametrize(("content", "expected"),
                         [("s3cret\n", "s3cret"), ("s3cret", "s3cret"), (" sp ace \n", " sp ace ")])
def test_password_file_strips_one_trailing_newline(make_settings: Callable[..., Settings],
                                                   tmp_path: Path, content: str,
                                                   expected: str) -> None:
    path = tmp_path / "pw"
    path.write_text(content)
    s = make_settings(registry_users=[{"name": "ci", "password_file": str(path)}])
    user = s.user("ci")
    assert user is not None and user.password is not None
    assert user.password.reveal() == expected
    assert user.password_hash is None


def test_password_file_with_two_newlines_is_multi_line(make_settings: Callable[..., Settings],
                                                        tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret\n\n")
    with pytest.raises(SettingsError, match="a secret without line breaks"):
        make_settings(registry_users=[{"name": "ci", "password_file": str(path)}])


def test_relative_password_file_uses_base_dir(make_settings: Callable[..., Settings],
                                              tmp_path: Path) -> None:
    (tmp_path / "ci.pw").write_text("rel-pw\n")
    s = make_settings(registry_users=[{"name": "ci", "password_file": "ci.pw"}])
    assert s.registry_users[0].password == Secret("rel-pw")


def test_users_of_every_kind(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(
        registry_allow_plain_passwords=True,
        registry_client_login_user="ci",
        registry_users=[{"name": "ci", "password_env": "REGKIT_PW"},
                        {"name": "ops@example", "password_hash": BCRYPT_HASH},
                        {"name": "dev.one", "password": "plain-pw"}])
    assert [u.name for u in s.registry_users] == ["ci", "ops@example", "dev.one"]
    assert s.registry_users[0].password == Secret(ENV["REGKIT_PW"])
    assert s.registry_users[1].password is None
    assert s.registry_users[1].password_hash == BCRYPT_HASH
    assert s.registry_users[2].password == Secret("plain-pw")
    assert s.user("nobody") is None


def test_tls_none_with_users_acknowledged(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(registry_tls_mode="none", registry_tls_none_acknowledged=True,
                      registry_users=[{"name": "ci", "password_env": "REGKIT_PW"}])
    assert s.tls_enabled is False


def test_s3_secrets_resolved(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(registry_storage={"driver": "s3", "bucket": "b", "region": "eu-west-1",
                                        "accesskey_env": "REGKIT_AK",
                                        "secretkey_env": "REGKIT_SK"})
    assert s.registry_storage.driver == "s3"
    assert dict(s.registry_storage.params) == {
        "bucket": "b", "region": "eu-west-1",
        "accesskey": Secret("akid"), "secretkey": Secret("s3-secret-value")}
    assert s.registry_storage.secret_keys == ("accesskey", "secretkey")


def test_provided_tls_files(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_text(name)
    s = make_settings(registry_tls_mode="provided", registry_tls_cert_file="server.crt",
                      registry_tls_key_file=str(tmp_path / "server.key"))
    assert s.registry_tls_cert_file == tmp_path / "server.crt"
    assert s.registry_tls_key_file == tmp_path / "server.key"
    assert s.registry_tls_ca_file is None


def test_docker_ce_and_mirrors(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(docker_install_method="docker-ce",
                      docker_ce_repo_url="https://download.docker.com/linux",
                      docker_registry_mirrors=["https://mirror.example:5000"],
                      docker_live_restore=True, registry_debug_addr="127.0.0.1:5001")
    assert s.docker_ce_repo_url == "https://download.docker.com/linux"
    assert s.docker_registry_mirrors == ("https://mirror.example:5000",)
    assert s.docker_live_restore is True
    assert s.registry_debug_addr == "127.0.0.1:5001"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("registry:2", True),
        ("registry:2.8.3", True),
        ("library/registry", True),
        ("host:5000/library/registry@sha256:" + "a" * 64, True),
        ("registry@sha256:" + "0" * 64, True),
        ("Registry:2", False),
        ("registry:", False),
        ("a b", False),
        ("registry@sha256:abc", False),
        ("", False),
        (None, False),
        ("r" * 256, False),
    ],
)
def test_is_image_reference(text: object, ok: bool) -> None:
    assert is_image_reference(text) is ok


# --------------------------------------------------------------------------- keys and groups


def test_check_unknown_keys_ignores_foreign_keys(known: Mapping[str, Any]) -> None:
    check_unknown_keys(HOST, {"ssh_port": 22, "registry_port": 1}, known)
    # docker_* keys of other deploys are theirs (issue 14); the kit's own are still checked.
    check_unknown_keys(HOST, {"docker_qqqqqqqqqqqq": 1, "docker_version": "27"}, known)
    with pytest.raises(SettingsError, match=r"registry_qqqqqqqqqqqq=1 .*see registry_kit/"):
        check_unknown_keys(HOST, {"registry_qqqqqqqqqqqq": 1}, known)
    with pytest.raises(SettingsError, match=r"did you mean docker_install_method\?"):
        check_unknown_keys(HOST, {"docker_instal_method": "distro"}, known)


def test_group_conflict_raises() -> None:
    groups = {"registry_servers": {"registry_port": 5000, "ssh_user": "a"},
              "registry_clients": {"registry_port": 443, "ssh_user": "b"}}
    with pytest.raises(SettingsError) as caught:
        check_group_conflicts(HOST, groups, {})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{HOST}: setting registry_port=443 ")
    assert "group registry_servers sets 5000 and group registry_clients sets 443" in message
    assert "set it for the host instead" in message


def test_group_conflict_resolved_by_host_data() -> None:
    groups = {"a": {"registry_port": 5000}, "b": {"registry_port": 443}}
    check_group_conflicts(HOST, groups, {"registry_port": 8443})


def test_group_agreement_and_foreign_keys_are_fine() -> None:
    groups = {"a": {"registry_port": 443, "ssh_user": "x"},
              "b": {"registry_port": 443, "ssh_user": "y"}}
    check_group_conflicts(HOST, groups, {})


# --------------------------------------------------------------------------- declarations


def test_every_setting_is_declared_once_with_a_doc_and_a_section(
        known: Mapping[str, Any]) -> None:
    """The Settings class is the one declaration: every key prefixed, with a one-line doc,
    in exactly one section; known_keys() is exactly the declared keys and defaults."""
    assert len(DECLARATIONS) >= 70
    assert sorted(known) == sorted(DECLARATIONS)
    in_sections = [key for block in SECTIONS for key in block.keys]
    assert sorted(in_sections) == sorted(DECLARATIONS)
    for key, item in DECLARATIONS.items():
        assert key.startswith(("registry_", "docker_")), key
        assert item.doc and "\n" not in item.doc, key
        assert known[key] == item.default
    assert len(SECTIONS) == 17 and all(block.reads.startswith("registry_kit/")
                                       for block in SECTIONS)


def test_known_keys_are_fresh_copies() -> None:
    first = settings_mod.known_keys()
    first["registry_storage"]["driver"] = "s3"
    first["registry_users"].append({"name": "x"})
    again = settings_mod.known_keys()
    assert again["registry_storage"] == {"driver": "filesystem"}
    assert again["registry_users"] == []


# --------------------------------------------------------------------------- hardening


def test_no_users_is_refused_unless_acknowledged(known: Mapping[str, Any],
                                                 tmp_path: Path) -> None:
    """The default (no users) is an open registry: refused, with the setting to ask for it."""
    with pytest.raises(SettingsError) as caught:
        settings_mod.load(HOST, {}, base_dir=tmp_path, known=known)
    assert str(caught.value) == (
        f"{HOST}: setting registry_users=[] is not allowed: at least one user: without users "
        "anyone who reaches the port can push and overwrite images; set "
        "registry_anonymous_acknowledged=True if that is what you want")
    acknowledged = settings_mod.load(HOST, {"registry_anonymous_acknowledged": True},
                                     base_dir=tmp_path, known=known)
    assert acknowledged.registry_users == ()
    # Clients run no registry: the check is for servers.
    assert settings_mod.load(HOST, {}, base_dir=tmp_path, known=known, server=False)


@pytest.mark.parametrize("path", ["/srv/registry", "/var/lib/registry-kit",
                                  "/var/lib/registry-kit/data", "/etc/registry-data",
                                  "/opt/registry", "/data/registry@2", "/home/ops/registry"])
def test_dedicated_folders_are_fine(make_settings: Callable[..., Settings], path: str) -> None:
    assert make_settings(registry_data_dir=path + "/").registry_data_dir == path


@pytest.mark.parametrize("path", sorted(checks.SYSTEM_DIRS))
def test_every_system_folder_is_refused(make_settings: Callable[..., Settings],
                                        path: str) -> None:
    with pytest.raises(SettingsError, match="registry_config_dir"):
        make_settings(registry_config_dir=path)


def test_ipv6_addresses_are_bracketed_in_addresses_and_urls(
        make_settings: Callable[..., Settings]) -> None:
    s = make_settings(registry_domain="fd00::5", registry_port=5000)
    assert Endpoints.of(s).address == "[fd00::5]:5000"
    assert Endpoints.of(s).url == "https://[fd00::5]:5000"
    assert Endpoints.of(make_settings(registry_domain="fd00::5", registry_port=443)).address == \
        "[fd00::5]"
    assert settings_mod.host_port("10.0.0.1", 80) == "10.0.0.1:80"


@pytest.mark.parametrize("text", ["fe80::1%eth0", "fe80::1%\nx", "10.0.0.1\n", " 10.0.0.1"])
def test_is_ip_refuses_scopes_and_padding(text: str) -> None:
    assert not settings_mod.is_ip(text)


def test_bind_address_publishes_on_one_address(make_settings: Callable[..., Settings]) -> None:
    from registry_kit.commands import ContainerSpec

    s = make_settings(registry_bind_address="fd00::5")
    spec = ContainerSpec(name="registry", image="registry:2", port=5000, config_dir="/e",
                         data_dir="/d", bind_address=s.registry_bind_address)
    assert spec.run_args()[spec.run_args().index("-p") + 1] == "[fd00::5]:5000:5000"


def test_mirror_urls(make_settings: Callable[..., Settings]) -> None:
    good = ["http://m.example:5000", "https://10.0.0.1/", "http://[fd00::1]:5000"]
    assert make_settings(docker_registry_mirrors=good).docker_registry_mirrors == tuple(good)


def test_secret_with_a_control_character_is_refused_without_showing_it(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGKIT_ESC", "pass\x1bword-9911")
    with pytest.raises(SettingsError) as caught:
        make_settings(registry_http_secret={"env": "REGKIT_ESC"})
    assert "word-9911" not in str(caught.value) and "REGKIT_ESC" in str(caught.value)


def _api_inventory() -> Any:
    from pyinfra.api import Config, Inventory, State

    inventory = Inventory(
        (["plain", ("own", {"registry_domain": "own.example"}), "outsider"],
         {"registry_anonymous_acknowledged": True}),
        hub=(["plain", "own"], {}), other=(["outsider"], {"registry_port": 0}))
    State(inventory, Config())
    return inventory


def test_api_settings_sit_above_deploy_defaults_and_below_host_data(tmp_path: Path,
                                                                    monkeypatch: Any) -> None:
    """pyinfra's order: the @deploy's data_defaults, then the API's settings=, then group and
    host data (host wins): the same for every host, though pyinfra adds deploy data to the
    host being planned only."""
    monkeypatch.chdir(tmp_path)
    inventory = _api_inventory()
    plain = inventory.get_host("plain")
    deploy_data = {**settings_mod.known_keys(), "registry_port": 443}
    with plain.deploy("registry-kit", {}, deploy_data):
        assert plain.data.registry_domain == "registry.example.internal"  # the deploy's default
        loaded = settings_mod.load_inventory(
            inventory, groups=("hub",), server_group="hub",
            deploy_data={**plain.get_deploy_data(),
                         "registry_domain": "from-settings.example"})
    assert loaded["plain"].registry_domain == "from-settings.example"
    assert loaded["own"].registry_domain == "own.example"
    # data_defaults are honoured, for the host being planned and for the others alike.
    assert loaded["plain"].registry_port == loaded["own"].registry_port == 443


def test_only_the_named_groups_are_validated(tmp_path: Path, monkeypatch: Any) -> None:
    """"outsider" (in another group, with a bad port) is neither read nor refused."""
    monkeypatch.chdir(tmp_path)
    inventory = _api_inventory()
    loaded = settings_mod.load_inventory(inventory, groups=("hub",), server_group="hub")
    assert sorted(loaded) == ["own", "plain"]
    with pytest.raises(SettingsError, match=r"^outsider: setting registry_port=0 "):
        settings_mod.load_inventory(inventory, groups=("hub", "other"), server_group="hub")


def test_unknown_key_in_api_settings_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=r"^settings: setting registry_prot=1 .*registry_port"):
        settings_mod.load_inventory(_api_inventory(), groups=("hub",), server_group="hub",
                                    deploy_data={"registry_prot": 1})


def test_a_refused_setting_is_a_registry_kit_error() -> None:
    from registry_kit.errors import RegistryKitError

    assert issubclass(SettingsError, RegistryKitError)
    assert not issubclass(SettingsError, SystemExit)
