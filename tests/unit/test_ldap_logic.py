"""Unit tests for users and groups from a directory (registry_ldap): the setting's checks,
the policy and unit the token server gets, and the token server's pure parts (RFC 4515
escaping, group names from DNs, grants from directory groups). The directory itself is
proven by tests/e2e/test_ldap.py against Debian's slapd."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import script_module

from registry_kit.model import layout
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.package_data import SCRIPTS
from registry_kit.render import token_auth

HOST = "reg-host-1"
PASSWORD = "bind-Secret-2718"
RULES = [{"repository": "team-a/*", "actions": ["pull", "push"], "ldap_groups": ["devs"]},
         {"repository": "*", "actions": ["pull"], "ldap_groups": ["auditors"]}]


def _script() -> Any:
    return script_module.load(SCRIPTS / layout.TOKEN_SCRIPT_NAME, "registry_token_server_ldap")


server = _script()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGKIT_LDAP_PW", PASSWORD)


def _ldap(**changes: Any) -> dict[str, Any]:
    return {"url": "ldaps://ldap.example.internal", "base_dn": "ou=people,dc=example,dc=org",
            "bind_dn": "cn=registry,dc=example,dc=org", "bind_password_env": "REGKIT_LDAP_PW",
            "user_filter": "(uid={user})",
            "group_filter": "(&(objectClass=groupOfNames)(member={dn}))", **changes}


def _made(make_settings: Callable[..., Settings], **data: Any) -> Settings:
    return make_settings(**{"registry_ldap": _ldap(), "registry_access_rules": RULES, **data})


def test_directory_settings_are_checked(make_settings: Callable[..., Settings]) -> None:
    made = _made(make_settings)
    directory = made.registry_ldap
    assert directory is not None and directory.port == 636 and directory.tls == "ldaps"
    assert PASSWORD not in repr(made) and PASSWORD not in repr(directory)
    starttls = _made(make_settings, registry_ldap=_ldap(url="ldap://ldap:389", start_tls=True))
    assert starttls.registry_ldap is not None and starttls.registry_ldap.tls == "starttls"
    plain = _made(make_settings, registry_ldap=_ldap(url="ldap://10.0.0.9"),
                  registry_ldap_plaintext_acknowledged=True)
    assert plain.registry_ldap is not None and plain.registry_ldap.tls == "none"


@pytest.mark.parametrize(("data", "wanted"), [
    ({"registry_ldap": _ldap(url="ldap://ldap.example.internal")},
     "registry_ldap_plaintext_acknowledged=True"),
    ({"registry_ldap": _ldap(url="http://ldap")}, "url: ldaps://HOST[:PORT]"),
    ({"registry_ldap": _ldap(user_filter="(uid=%s)")}, "holding {user}"),
    ({"registry_ldap": _ldap(user_filter="(uid={user}){x}")}, "without other braces"),
    ({"registry_ldap": _ldap(bind_password_env="REGKIT_NOT_SET_ANYWHERE")},
     "an environment variable that is set"),
    ({"registry_ldap": _ldap(member_of="memberOf")}, "group_filter or member_of, not both"),
    ({"registry_ldap": _ldap(colour="blue")}, "keys among"),
    ({"registry_ldap": _ldap(base_dn="people")}, "base_dn: a distinguished name"),
    ({"registry_access_rules": None}, "a list of rules when registry_ldap is set"),
    ({"registry_ldap": None}, "ldap_groups only with registry_ldap set"),
])
def test_bad_directory_settings_are_one_line(make_settings: Callable[..., Settings],
                                             data: dict[str, Any], wanted: str) -> None:
    with pytest.raises(SettingsError) as caught:
        _made(make_settings, **data)
    message = str(caught.value)
    assert message.startswith(f"{HOST}: setting registry_") and "\n" not in message
    assert wanted in message and PASSWORD not in message


def test_policy_and_unit_name_the_directory_never_its_password(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    made = _made(make_settings, registry_ldap=_ldap(ca_file=str(ca)),
                 registry_users=[{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}])
    document = json.loads(token_auth.policy_text(made))
    assert document["ldap"]["host"] == "ldap.example.internal"
    assert document["ldap"]["ca_file"] == f"{layout.TOKEN_RUNTIME_DIR}/ldap-ca.crt"
    assert document["rules"][0]["ldap_groups"] == ["devs"]
    assert document["catalog_ldap_groups"] == ["auditors"]
    unit = token_auth.unit_text(made).decode()
    assert f"--ldap-password-file {layout.TOKEN_RUNTIME_DIR}/ldap.password" in unit
    assert "--check-names --names-report /run/registry-kit-token/name-conflict" in unit
    assert "ldap-ca.crt" in unit
    # The deploy's restart fails with the check's line when there is one.
    from pyinfra.context import ctx_host

    from registry_kit.facts import HostState
    from registry_kit.roles import token_server
    from tests.unit.test_operations import FakeHost
    with ctx_host.use(FakeHost()):
        [restart] = list(token_server.token_service._inner(made, HostState(), restart=True))
    assert str(restart).endswith(
        "&& { ! test -e /run/registry-kit-token/name-conflict || "
        "{ cat /run/registry-kit-token/name-conflict >&2; exit 1; }; }")
    for text in (json.dumps(document), unit):
        assert PASSWORD not in text


@pytest.mark.parametrize(("name", "escaped"), [
    ("alice", "alice"), ("*", r"\2a"), ("*)(uid=*", r"\2a\29\28uid=\2a"), ("\\", r"\5c"),
    ("(", r"\28"), ("a\0b", r"a\00b"), ("ünï", "ünï"),
])
def test_user_names_are_escaped_in_filters(name: str, escaped: str) -> None:
    assert server.ldap_escape(name) == escaped
    assert server.fill_filter("(&(objectClass=person)(uid={user}))", user=name) == \
        f"(&(objectClass=person)(uid={escaped}))"
    # A value holding a placeholder is not expanded again.
    assert server.fill_filter("(member={dn})", dn="cn={user}", user="x") == "(member=cn={user})"


@pytest.mark.parametrize(("dn", "name"), [
    ("cn=devs,ou=groups,dc=example,dc=org", "devs"), ("CN=Team A,OU=Groups", "Team A"),
    (r"cn=a\,b,ou=g", "a,b"), (r"cn=x\2cy,ou=g", "x,y"), ("cn=solo", "solo"),
])
def test_group_names_from_member_of(dn: str, name: str) -> None:
    assert server.rdn_value(dn) == name


def test_grants_from_directory_groups(make_settings: Callable[..., Settings]) -> None:
    policy = json.loads(token_auth.policy_text(_made(make_settings)))
    devs = frozenset({"devs"})
    assert server.grant(policy, "dana", "repository:team-a/app:pull,push", devs)["actions"] == \
        ["pull", "push"]
    assert server.grant(policy, "dana", "repository:team-b/app:push", devs) is None
    assert server.grant(policy, "dana", "repository:team-a/app:push") is None  # no groups
    assert server.grant(policy, "eve", "registry:catalog:*", frozenset({"auditors"}))
    assert server.grant(policy, "dana", "registry:catalog:*", devs) is None
    # A local user named like a group gets nothing from it.
    assert server.grant(policy, "devs", "repository:team-a/app:pull") is None


class _Directory:
    def __init__(self, known: set[str] | None) -> None:
        self.known = known

    def conflicts(self, names: list[str]) -> list[str]:
        if self.known is None:
            raise server.DirectoryError("connection refused")
        return [name for name in names if name in self.known]

    def close(self) -> None:
        pass


def test_a_name_both_local_and_in_the_directory_stops_the_start(
        capsys: pytest.CaptureFixture[str]) -> None:
    users = {"ci": "$2y$...", "alice": "$2y$..."}
    assert server.check_names(_Directory({"alice"}), users) == 1
    assert "user name 'alice' is both in registry_users and the directory" in \
        capsys.readouterr().err
    assert server.check_names(_Directory({"bob"}), users) == 0
    # A directory that cannot answer at start does not stop local users.
    assert server.check_names(_Directory(None), users) == 0
    assert "could not compare local users with the directory" in capsys.readouterr().err


def test_a_name_conflict_at_start_is_written_down_and_the_start_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The unit's check (--names-report): the start goes on (htpasswd wins the name), the
    deploy reads the report after its restart and fails with that line."""
    users = {"ci": "$2y$...", "alice": "$2y$..."}
    report = tmp_path / "name-conflict"
    assert server.check_names(_Directory({"bob"}), users, str(report)) == 0
    assert not report.exists()
    assert server.check_names(_Directory({"alice"}), users, str(report)) == 0
    assert "user name 'alice' is both in registry_users" in report.read_text()
    assert "user name 'alice'" in capsys.readouterr().err


def test_empty_password_never_reaches_the_directory() -> None:
    directory = server.Directory({}, "x")
    assert directory.login("alice", "")[0] is False
    assert directory.login("", "pw")[0] is False
    assert directory.login("a" * 300, "pw")[0] is False


def test_status_shows_what_directory_groups_get(make_settings: Callable[..., Settings]) -> None:
    from registry_kit.model import access

    made = _made(make_settings)
    lines = access.describe(made.registry_access, [])
    assert "ldap group devs: team-a/*: pull,push" in lines
    assert "ldap group auditors: *: pull (+catalog)" in lines
