"""Access control per repository: the model and its validation (registry_kit.model.access), the
token server's grants and tokens (scripts/registry-token-server.py, imported from its
file), and what config.yml and haproxy.cfg get for it. The lab proves the behaviour end to
end (tests/e2e/test_access.py); these pin the decisions."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
import script_module
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_kit.model import access, keystore, layout
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.package_data import SCRIPTS
from registry_kit.render import token_auth
from registry_kit.render.config import render_config

HOST = "reg-host-1"
SCRIPT = Path(str(SCRIPTS / layout.TOKEN_SCRIPT_NAME))
USERS = ["ci", "reader", "admin", "ops"]
RULES: list[dict[str, Any]] = [
    {"repository": "team-a/*", "actions": ["pull", "push"], "users": ["ci"]},
    {"repository": "team-a/*", "actions": ["pull"], "groups": ["readers"]},
    {"repository": "*", "actions": ["pull", "push", "delete"], "users": ["admin"]},
    {"repository": "public/*", "actions": ["pull"], "anonymous": True},
]
GROUPS = {"readers": ["reader", "ops"]}


def _script() -> Any:
    return script_module.load(SCRIPT, "registry_token_server")


server = _script()


def _policy() -> access.Policy:
    policy = access.parse(HOST, GROUPS, RULES, USERS)
    assert policy is not None
    return policy


def test_patterns_match_whole_names() -> None:
    regex = access.pattern_regex("team-a/*")
    assert re.fullmatch(regex, "team-a/app") and re.fullmatch(regex, "team-a/x/app")
    assert not re.fullmatch(regex, "team-ab/app") and not re.fullmatch(regex, "team-a")
    assert re.fullmatch(access.pattern_regex("*"), "anything/at/all")
    assert not re.fullmatch(access.pattern_regex("lib.x"), "libyx")  # "." is literal


def test_effective_rules_per_user() -> None:
    policy = _policy()
    assert policy.allowed("ci", "team-a/app") == {"pull", "push"}
    assert policy.allowed("ci", "team-b/app") == set()
    assert policy.allowed("ci", "public/base") == {"pull"}  # anonymous grants apply to all
    assert policy.allowed("reader", "team-a/app") == {"pull"}
    assert policy.allowed("admin", "team-b/app") == {"pull", "push", "delete"}
    assert policy.allowed(None, "public/base") == {"pull"}
    assert policy.allowed(None, "team-a/app") == set()
    assert policy.catalog_users(USERS) == ["admin"]
    lines = access.describe(policy, USERS)
    assert lines[0] == "ci: team-a/*: pull,push; public/*: pull"
    assert "admin: *: pull,push,delete; public/*: pull (+catalog)" in lines
    assert lines[-1] == "(anonymous): public/*: pull"
    assert access.describe(None, USERS) == [
        "access control off: every user may pull, push and delete everything"]


@pytest.mark.parametrize(("groups", "rules", "wanted"), [
    ({}, [{**RULES[0], "users": ["bob"]}], "user 'bob' is not in registry_users"),
    ({}, [RULES[1]], "group 'readers' is not in registry_groups"),
    ({"readers": ["carol"]}, [], "group 'readers': user 'carol' is not in registry_users"),
    ({}, [{**RULES[0], "repository": "Team-A/*"}], "repository pattern 'Team-A/*'"),
    ({}, [{**RULES[0], "repository": "team-a//x"}], "repository pattern 'team-a//x'"),
    ({}, [{**RULES[0], "repository": "/team"}], "repository pattern '/team'"),
    ({}, [{**RULES[3], "actions": ["pull", "push"]}], "anonymous clients may only be "
     "granted pull"),
    ({}, [{**RULES[3], "actions": ["delete"]}], "anonymous clients may only be granted pull"),
    ({}, [{**RULES[0], "actions": ["write"]}], "actions: one or more of pull, push, delete"),
    ({}, [{**RULES[0], "actions": []}], "actions: one or more of pull, push, delete"),
    ({}, [{**RULES[0], "user": ["ci"]}], "no other keys"),
    ({}, [{"repository": "x", "actions": ["pull"]}], "grants to users, groups or anonymous"),
    ({}, "team-a", "None or a list of rules"),
])
def test_bad_access_settings_are_one_line(groups: dict, rules: Any, wanted: str) -> None:
    with pytest.raises(access.AccessError) as caught:
        access.parse(HOST, groups, rules, USERS)
    message = str(caught.value)
    assert "\n" not in message and wanted in message
    assert re.match(rf"{HOST}: setting registry_(access_rules|groups)=.* is not allowed: ",
                    message)


def test_groups_without_rules_are_refused() -> None:
    with pytest.raises(access.AccessError, match="groups only take effect in rules"):
        access.parse(HOST, GROUPS, None, USERS)
    assert access.parse(HOST, {}, None, USERS) is None


def test_settings_refuse_before_any_host(make_settings: Callable[..., Settings],
                                         tmp_path: Path) -> None:
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    with pytest.raises(SettingsError) as caught:
        make_settings(registry_users=users, registry_access_rules=[
            {"repository": "public/*", "actions": ["push"], "anonymous": True}])
    assert str(caught.value).startswith(f"{HOST}: setting registry_access_rules=")
    with pytest.raises(SettingsError, match="registry_token_port=5000 is not allowed"):
        make_settings(registry_users=users, registry_token_port=5000,
                      registry_access_rules=[RULES[0]])
    made = make_settings(registry_users=users, registry_access_rules=[RULES[0]])
    assert made.registry_access is not None and made.registry_token_port == 5443


def test_config_yml_token_section_for_2_and_3(make_settings: Callable[..., Settings]) -> None:
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    made = make_settings(registry_users=users, registry_access_rules=[RULES[0]],
                         registry_domain="registry.lab")
    two = yaml.safe_load(render_config(made, "s", major=2))["auth"]
    three = yaml.safe_load(render_config(made, "s", major=3))["auth"]
    assert two == {"token": {"realm": "https://registry.lab:5443/token",
                             "service": "registry.lab:5000", "issuer": token_auth.ISSUER,
                             "rootcertbundle": "/etc/registry-kit/certs/token-signing.crt"}}
    assert three == {"token": {**two["token"], "signingalgorithms": ["ES256"]}}
    # Without rules: the same token section by default, htpasswd only when asked for.
    implicit = make_settings(registry_users=users, registry_domain="registry.lab")
    assert yaml.safe_load(render_config(implicit, "s", major=2))["auth"] == two
    plain = make_settings(registry_users=users, registry_auth_mode="htpasswd")
    assert "htpasswd" in yaml.safe_load(render_config(plain, "s"))["auth"]


def _document() -> dict[str, Any]:
    return access.policy_document(_policy(), USERS, service="registry.lab:5000",
                                  issuer=token_auth.ISSUER)


def test_users_without_rules_get_token_auth_with_htpasswd_rights(
        make_settings: Callable[..., Settings]) -> None:
    """registry_auth_mode "auto" (the default): users and no rules mean token auth whose
    policy grants each user what htpasswd auth does (everything, the catalog too) and
    anonymous nothing; the token server grants exactly that."""
    users = [{"name": name, "password_hash": "$2y$10$" + "a" * 53} for name in USERS]
    made = make_settings(registry_users=users)
    policy = made.registry_access
    assert policy is not None and policy.implicit and token_auth.enabled(made)
    assert policy == access.all_rights(USERS)
    for user in USERS:
        assert policy.allowed(user, "any/repo-1") == {"pull", "push", "delete"}
    assert policy.allowed(None, "any/repo-1") == set()
    assert policy.catalog_users(USERS) == USERS
    assert access.describe(policy, USERS) == [
        "access control off: every user may pull, push and delete everything (token auth)"]
    document = access.policy_document(policy, USERS, service="registry.lab:5000",
                                      issuer=token_auth.ISSUER)
    assert document["catalog_users"] == USERS
    for user in USERS:
        assert server.grant(document, user, "repository:a/b:pull,push,delete")["actions"] == [
            "pull", "push", "delete"]
        assert server.grant(document, user, "registry:catalog:*")["actions"] == ["*"]
    assert server.grant(document, None, "repository:a/b:pull") is None
    assert server.grant(document, None, "registry:catalog:*") is None
    assert server.grant(document, "stranger", "repository:a/b:pull") is None


def test_auth_mode_setting(make_settings: Callable[..., Settings]) -> None:
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    plain = make_settings(registry_users=users, registry_auth_mode="htpasswd")
    assert plain.registry_access is None and not token_auth.enabled(plain)
    # No users: nothing to check, so no token server either (an open registry).
    assert make_settings(registry_anonymous_acknowledged=True).registry_access is None
    with pytest.raises(SettingsError) as caught:
        make_settings(registry_users=users, registry_auth_mode="token")
    assert str(caught.value) == (f"{HOST}: setting registry_auth_mode='token' is not allowed: "
                                 "one of auto, htpasswd")
    with pytest.raises(SettingsError) as caught:
        make_settings(registry_users=users, registry_auth_mode="htpasswd",
                      registry_access_rules=[RULES[0]])
    assert str(caught.value) == (f"{HOST}: setting registry_auth_mode='htpasswd' is not "
                                 "allowed: auto when registry_access_rules is set (the "
                                 "registry enforces rules through tokens)")
    # The token server's port is checked whenever it runs, rules or not.
    with pytest.raises(SettingsError, match="registry_token_port=5000 is not allowed"):
        make_settings(registry_users=users, registry_token_port=5000)
    assert make_settings(registry_users=users, registry_token_port=5000,
                         registry_auth_mode="htpasswd").registry_token_port == 5000


def test_token_server_grants_what_the_policy_allows() -> None:
    document = _document()
    grant = server.grant
    assert grant(document, "ci", "repository:team-a/app:pull,push") == {
        "type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}
    assert grant(document, "ci", "repository:team-b/app:pull,push") is None
    assert grant(document, "reader", "repository:team-a/app:push,pull")["actions"] == ["pull"]
    assert grant(document, None, "repository:public/x:pull,push")["actions"] == ["pull"]
    assert grant(document, "ci", "repository:team-a/app:*")["actions"] == ["pull", "push"]
    assert grant(document, "admin", "repository:x:*")["actions"] == [
        "pull", "push", "delete", "*"]
    assert grant(document, "admin", "registry:catalog:*")["actions"] == ["*"]
    assert grant(document, "ci", "registry:catalog:*") is None
    assert grant(document, None, "registry:catalog:*") is None
    assert grant(document, "admin", "repository(plugin):x:pull") is None
    assert grant(document, "admin", "nonsense") is None


names = st.from_regex(r"[a-z0-9]{1,6}(-[a-z]{1,3})?(/[a-z0-9]{1,5}){0,2}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(user=st.sampled_from([*USERS, None]), name=st.one_of(
    names, names.map(lambda n: f"team-a/{n}"), names.map(lambda n: f"public/{n}")))
def test_token_server_and_model_agree(user: str | None, name: str) -> None:
    """One meaning of a rule: the server's grants equal the model's (status.py's view)."""
    entry = server.grant(_document(), user, f"repository:{name}:pull,push,delete")
    assert set(entry["actions"] if entry else []) == _policy().allowed(user, name)


def test_bcrypt_is_checked_once_per_password_and_again_after_a_change() -> None:
    checker = server.Checker()
    hashed = "$2y$" + bcrypt.hashpw(b"pw-1", bcrypt.gensalt(rounds=4)).decode()[4:]
    assert checker.check("ci", "pw-1", hashed) == (True, 1)
    assert checker.check("ci", "pw-1", hashed) == (True, 0)  # remembered
    assert checker.check("ci", "wrong", hashed) == (False, 1)
    assert checker.check("ci", "wrong", hashed) == (False, 1)  # failures are not remembered
    rotated = "$2y$" + bcrypt.hashpw(b"pw-2", bcrypt.gensalt(rounds=4)).decode()[4:]
    assert checker.check("ci", "pw-1", rotated) == (False, 1)
    assert checker.check("ci", "pw-1", "plain") == (False, 1)  # a dummy check: same cost


def test_unknown_users_and_nul_passwords_are_refused_never_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The unknown user's dummy hash is made from text (random bytes held a NUL, which
    Debian's python3-bcrypt refuses, in 6% of the token server's starts: CI saw the first
    unknown user's login get no answer); a password with a NUL is refused for any user, not
    an error. PyPI's bcrypt 5 (this venv's) takes NUL bytes: Debian's 3.2 is stood in for."""
    def refusing_nul(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(password: bytes, *rest: Any) -> Any:
            if b"\0" in password:
                raise ValueError("password may not contain NUL bytes")  # Debian's bcrypt 3.2
            return real(password, *rest)
        return call

    monkeypatch.setattr(bcrypt, "hashpw", refusing_nul(bcrypt.hashpw))
    monkeypatch.setattr(bcrypt, "checkpw", refusing_nul(bcrypt.checkpw))
    for _ in range(150):  # with 16 random bytes, all 150 would pass in 1 of 12,000 runs
        assert server.Checker().check("nobody", "pw", None, b"04") == (False, 1)
    checker = server.Checker()
    hashed = "$2y$" + bcrypt.hashpw(b"pw-1", bcrypt.gensalt(rounds=4)).decode()[4:]
    assert checker.check("ci", "pw-1\0", hashed) == (False, 1)
    assert checker.check("nobody", "pw\0", None, b"04") == (False, 1)


def test_signing_key_is_private_and_the_token_verifies_with_its_certificate(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    made = make_settings(registry_users=users, registry_access_rules=[RULES[0]],
                         registry_state_dir=str(tmp_path / "state"))
    key_pem, cert_pem = keystore.token_signing_material(made)
    assert keystore.token_signing_material(made) == (key_pem, cert_pem)  # made once, kept
    key_file = tmp_path / "state" / "token" / f"signing-{made.registry_domain}.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_pem)
    chain = server.x5c(cert_pem)
    assert base64.b64decode(chain[0]) == cert.public_bytes(Encoding.DER)
    token = jwt.encode({"iss": token_auth.ISSUER, "aud": "registry.lab:5000", "access": []},
                       load_pem_private_key(key_pem, None), algorithm="ES256",
                       headers={"x5c": chain})
    assert jwt.get_unverified_header(token)["x5c"] == chain
    claims = jwt.decode(token, cert.public_key(), algorithms=["ES256"],
                        audience="registry.lab:5000")
    assert claims["iss"] == token_auth.ISSUER
    # No extended key usage: 2.8's chain check (default usage ServerAuth) passes it.
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    policy = json.loads(token_auth.policy_text(made))
    assert policy["rules"][0]["users"] == ["ci"]


def test_haproxy_forwards_the_token_port_only_with_token_auth(
        make_settings: Callable[..., Settings]) -> None:
    import dataclasses

    from registry_kit.model import topology as scaleout
    from registry_kit.roles import loadbalancer

    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    base = make_settings(registry_users=users, registry_access_rules=[RULES[0]],
                         registry_storage={"driver": "s3", "bucket": "b", "region": "r"},
                         registry_storage_check=False)

    def host(name: str, address: str) -> Settings:
        return dataclasses.replace(base, host=name, registry_internal_address=address)

    topology = scaleout.Topology(servers=(host("rep0", "10.9.0.10"), host("rep1", "fd00::11")),
                                 lbs=(host("lb0", "10.9.0.20"),), caches=())
    text = loadbalancer.render(topology.lbs[0], topology)
    assert "frontend registry-token\n    mode tcp\n    option tcplog\n    bind *:5443\n" in text
    assert "server rep0 10.9.0.10:5443\n" in text and "server rep1 [fd00::11]:5443\n" in text
    # The replicas decide: a balancer whose own settings have no users still forwards.
    bare_lb = dataclasses.replace(topology, lbs=(dataclasses.replace(
        topology.lbs[0], registry_access=None),))
    assert "frontend registry-token\n" in loadbalancer.render(bare_lb.lbs[0], bare_lb)
    plain = dataclasses.replace(bare_lb, servers=tuple(
        dataclasses.replace(replica, registry_access=None) for replica in topology.servers))
    assert "registry-token" not in loadbalancer.render(plain.lbs[0], plain)


def test_token_server_rereads_changed_files_and_keeps_the_last_good(tmp_path: Path) -> None:
    htpasswd, policy = tmp_path / "htpasswd", tmp_path / "policy.json"
    htpasswd.write_text("ci:$2y$10$x\n")
    policy.write_text(json.dumps(_document()))
    files = server.Files(str(htpasswd), str(policy))
    users, document = files.current(strict=True)
    assert users == {"ci": "$2y$10$x"} and document["catalog_users"] == ["admin"]
    replacement = tmp_path / "new"  # the kit replaces files by rename: a new inode
    replacement.write_text("ci:$2y$10$y\nops:$2y$10$z\n")
    replacement.replace(htpasswd)
    assert files.current()[0] == {"ci": "$2y$10$y", "ops": "$2y$10$z"}
    policy.write_text("{broken")
    assert files.current()[1]["catalog_users"] == ["admin"]  # the last good policy
    with pytest.raises(ValueError):
        server.Files(str(htpasswd), str(policy)).current(strict=True)


@settings(max_examples=2000, deadline=None)
@given(pattern=st.text(min_size=0, max_size=40), name=st.text(min_size=0, max_size=20))
def test_hostile_patterns_and_names_are_refused_or_plain(pattern: str, name: str) -> None:
    """Whatever a rule holds reaches policy.json (JSON) and status.py's output: an accepted
    pattern is plain repository-name text, an accepted group name one word."""
    rule = {"repository": pattern, "actions": ["pull"], "users": ["ci"]}
    try:
        policy = access.parse(HOST, {name: ["ci"]}, [rule], USERS)
    except access.AccessError as error:
        assert "\n" not in str(error)  # repr shows a line break escaped
        return
    assert policy is not None
    assert re.fullmatch(r"[a-z0-9._*/-]+", pattern) and re.fullmatch(r"[A-Za-z0-9._-]+", name)


def test_token_server_unit_runs_sandboxed_on_copies_of_its_files(
        make_settings: Callable[..., Settings]) -> None:
    """A dynamic user without capabilities, every cheap systemd sandbox option, and the
    files it needs copied at start by a privileged ExecStartPre into its own runtime
    directory: it never opens the root-only originals under registry_config_dir."""
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    made = make_settings(registry_users=users, registry_access_rules=[RULES[0]],
                         registry_tls_mode="self-signed")
    lines = token_auth.unit_text(made).decode().splitlines()
    for setting in ("DynamicUser=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
                    "ProtectSystem=strict", "PrivateTmp=yes",
                    "RestrictAddressFamilies=AF_INET AF_INET6",
                    "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes",
                    "UMask=0077", "ProtectProc=invisible", "ProcSubset=pid"):
        assert setting in lines, setting
    assert not any(line.startswith(("User=", "Group=", "AmbientCapabilities=CAP"))
                   for line in lines)
    start = next(line for line in lines if line.startswith("ExecStart=")).split()
    copied = {arg for arg in start if arg.startswith(layout.TOKEN_RUNTIME_DIR + "/")}
    # Besides: where it writes its counters (a folder of its own, opened to the facts server).
    assert {arg for arg in start if arg.startswith("/run/")} - copied == {layout.TOKEN_COUNTERS}
    assert not any(made.registry_config_dir in arg for arg in start)
    copy = next(line for line in lines if line.startswith("ExecStartPre=+/bin/cp ")).split()
    sources, target = copy[1:-1], copy[-1]
    assert target == f"{layout.TOKEN_RUNTIME_DIR}/"
    assert all(source.startswith(made.registry_config_dir + "/") for source in sources)
    # Each copy keeps its file name: the server's arguments name exactly the copies.
    assert copied == {target + source.rsplit("/", 1)[1] for source in sources}
    # signing key and certificate, htpasswd, policy, TLS pair, the CA (GET /catalog)
    assert len(copied) == 7
    # The web page's haproxy (layout.Endpoints.local) is the one proxy whose header counts.
    assert " --trusted-proxy 127.0.0.1 --trusted-proxy ::1" in " ".join(start)
    bound = make_settings(registry_users=users, registry_access_rules=[RULES[0]],
                          registry_bind_address="10.1.2.3")
    assert token_auth.trusted_proxies(bound) == ["127.0.0.1", "::1", "10.1.2.3"]
    assert (f"ExecStartPre=+/bin/chown -R --reference={layout.TOKEN_RUNTIME_DIR} "
            f"{layout.TOKEN_RUNTIME_DIR}") in lines
    # A reload renews the copies of htpasswd and the policy only (the server re-reads
    # those by itself), staged and then renamed over them: never read half written.
    stage = f"{layout.TOKEN_RUNTIME_DIR}/.reload"
    assert [line for line in lines if line.startswith("ExecReload=")] == [
        f"ExecReload=+/bin/mkdir -p {stage}",
        f"ExecReload=+/bin/cp {made.registry_config_dir}/auth/htpasswd "
        f"{made.registry_config_dir}/token/policy.json {stage}/",
        f"ExecReload=+/bin/chown -R --reference={layout.TOKEN_RUNTIME_DIR} {stage}",
        f"ExecReload=+/bin/mv -f {stage}/htpasswd {stage}/policy.json "
        f"{layout.TOKEN_RUNTIME_DIR}/",
        f"ExecReload=+/bin/chmod 0755 {layout.TOKEN_COUNTERS_DIR}"]
    assert {f"{target}htpasswd", f"{target}policy.json"} <= copied


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_thousand_wrong_passwords_from_one_address_take_over_ten_minutes() -> None:
    """A guesser that waits exactly as long as each 429's Retry-After says."""
    clock = Clock()
    limits = server.LoginLimits(clock=clock)
    failures = refusals = 0
    while failures < 1000:
        wait = limits.begin("198.51.100.7", f"user{failures % 7}")
        if wait:
            refusals += 1
            clock.now += wait
            continue
        failures += 1  # a wrong password: nothing given back
        limits.failed("198.51.100.7")
    elapsed = clock.now - 1000.0
    assert elapsed >= 600, elapsed
    assert 5900 <= elapsed <= 6000  # 10 at once, then one every 6 s: 99 minutes


def test_a_locked_address_does_not_lock_the_user_out_elsewhere() -> None:
    clock = Clock()
    limits = server.LoginLimits(clock=clock)
    for _ in range(10):
        assert limits.begin("198.51.100.7", "ci") == 0
    wait = limits.begin("198.51.100.7", "ci")
    assert wait == 6  # Retry-After: the next failure is allowed in 6 s
    assert limits.begin("198.51.100.7", "reader") == 6  # per address, whatever the user
    # The ten above were counted before any check (as concurrent guesses are).
    assert limits.begin("198.51.100.8", "reader") == 0
    # Many addresses guessing ci spend ci's own bucket (30 a minute over all addresses).
    for index in range(20):
        assert limits.begin(f"203.0.113.{index}", "ci") == 0
        limits.failed(f"203.0.113.{index}")
    assert limits.begin("203.0.113.1", "ci") > 0  # an address that failed: refused
    assert limits.begin("203.0.113.1", "ops") == 0  # other users are not affected
    # 13 s on, its own bucket is full again but the address failed recently: while others
    # keep ci's bucket spent, it gets no second guess at ci (for 15 minutes).
    clock.now += 13
    assert limits.addresses.level("203.0.113.1") == 10
    for index in range(20, 27):
        assert limits.begin(f"203.0.113.{index}", "ci") == 0
        limits.failed(f"203.0.113.{index}")
    assert limits.begin("203.0.113.1", "ci") > 0
    # The real user from an address without failures gets in at once, and is not counted.
    for _ in range(50):
        assert limits.begin("192.0.2.10", "ci") == 0
        limits.succeeded("192.0.2.10", "ci")
    clock.now += 60
    assert limits.begin("198.51.100.7", "ci") == 0  # a minute later: allowed again


def test_limits_remember_a_bounded_number_of_keys() -> None:
    clock = Clock()
    bucket = server.Bucket(10, clock=clock, max_keys=100)
    for index in range(1000):
        bucket.take(f"user-{index}")
    assert len(bucket.keys) == 100 and "user-999" in bucket.keys


def test_client_address_from_forwarded_only_behind_the_own_proxy() -> None:
    trusted = frozenset({"127.0.0.1", "::1"})
    address = server.client_address
    assert address("198.51.100.7", "10.0.0.1", trusted) == "198.51.100.7"  # spoof ignored
    assert address("127.0.0.1", "198.51.100.7", trusted) == "198.51.100.7"
    assert address("::ffff:127.0.0.1", "spoof, 2001:db8::1", trusted) == "2001:db8::1"
    assert address("127.0.0.1", "not-an-address", trusted) == "127.0.0.1"
    assert address("127.0.0.1", None, trusted) == "127.0.0.1"


def test_unknown_user_costs_one_bcrypt_at_the_users_cost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same work for an unknown user as for a wrong password: one bcrypt check against
    a hash of the users' cost (the time of a 401 does not tell whether the user exists)."""
    checker = server.Checker()
    hashed = "$2y$" + bcrypt.hashpw(b"pw-1", bcrypt.gensalt(rounds=5)).decode()[4:]
    cost = server.users_cost({"ci": hashed, "old": "plain"})
    assert cost == b"05" and server.users_cost({}) == b"10"
    checked: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw",
                        lambda password, stored: checked.append(stored[:7]) or real(password,
                                                                                     stored))
    assert checker.check("ci", "guess", hashed, cost) == (False, 1)
    assert checker.check("nobody", "guess", None, cost) == (False, 1)
    assert checker.check("old", "guess", "plain", cost) == (False, 1)
    assert checked == [b"$2b$05$"] * 3


# --------------------------------------------------------------- the server over HTTP
RIGHT = "right-password-1"


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """start(**Server options) -> the real server (plain HTTP) on 127.0.0.1, in a thread,
    with user ci (password RIGHT) and the test rules; 127.0.0.1 is its trusted proxy, so a
    test names client addresses with X-Forwarded-For."""
    from cryptography.hazmat.primitives.asymmetric import ec

    started: list[Any] = []

    def start(**options: Any) -> Any:
        htpasswd, policy = tmp_path / "htpasswd", tmp_path / "policy.json"
        hashed = bcrypt.hashpw(RIGHT.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"ci:$2y${hashed[4:]}\n")
        policy.write_text(json.dumps(_document()))
        files = server.Files(str(htpasswd), str(policy))
        files.current(strict=True)
        handler = type("Handler", (server.Handler,), {
            "files": files, "checker": server.Checker(), "limits": server.LoginLimits(),
            "trusted_proxies": frozenset({"127.0.0.1"}), "chain": [],
            "signing_key": ec.generate_private_key(ec.SECP256R1())})
        running = server.Server(("127.0.0.1", 0), handler, None, **options)
        threading.Thread(target=running.serve_forever, daemon=True).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.shutdown()
        running.server_close()


AUDIT_PREFIX = "registry-token-server: audit "


def ask(running: Any, *, user: str | None = "ci", password: str = RIGHT,
        client: str | None = None, scope: str = "repository:team-a/app:pull",
        timeout: float = 10) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection(*running.server_address, timeout=timeout)
    headers = {"X-Forwarded-For": client} if client else {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()
    query = urllib.parse.urlencode({"service": "registry.lab:5000", "scope": scope})
    connection.request("GET", f"/token?{query}", headers=headers)
    answer = connection.getresponse()
    answer.read()
    connection.close()
    return answer.status, dict(answer.headers)


def test_guessing_gets_429_and_the_user_still_logs_in_from_elsewhere(
        token_server: Callable[..., Any]) -> None:
    running = token_server()
    assert [ask(running, password=f"guess-{i}", client="198.51.100.7")[0]
            for i in range(10)] == [401] * 10
    status, headers = ask(running, client="198.51.100.7")  # even the right password
    assert status == 429 and headers["Retry-After"] == "6"
    assert ask(running, client="192.0.2.10")[0] == 200  # the user, from elsewhere
    assert ask(running, user="nobody", client="198.51.100.7")[0] == 429
    assert ask(running, user=None, client="198.51.100.7")[0] == 200  # anonymous: no check


def test_counters_count_tokens_denials_failures_and_429s(
        token_server: Callable[..., Any], tmp_path: Path) -> None:
    """The token server's counters file (--counters): rewritten at each change, 0644 even
    under the unit's UMask 0077, in a folder it opens (0755) at start, totals only (no
    user name or address in it)."""
    path = tmp_path / "counters" / "token.prom"
    path.parent.mkdir(mode=0o700)  # as systemd makes it (RuntimeDirectoryMode)
    old_umask = os.umask(0o077)
    try:
        running = token_server()
        running.RequestHandlerClass.counters = server.Counters(str(path))
    finally:
        os.umask(old_umask)

    def counted() -> dict[str, int]:
        return {line.split()[0].removeprefix("registry_kit_token_"): int(line.split()[1])
                for line in path.read_text().splitlines() if not line.startswith("#")}

    assert counted() == {"issued_total": 0, "denied_total": 0, "failed_logins_total": 0,
                         "rate_limited_total": 0}
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.parent.stat().st_mode & 0o777 == 0o755  # opened at start
    assert ask(running)[0] == 200  # ci may pull team-a/app
    assert ask(running, scope="repository:team-b/app:push")[0] == 200  # granted nothing
    assert [ask(running, password="guess", client="198.51.100.7")[0]
            for _ in range(11)] == [401] * 10 + [429]
    assert ask(running, user="nobody", password="x", client="192.0.2.9")[0] == 401
    assert counted() == {"issued_total": 2, "denied_total": 1, "failed_logins_total": 11,
                         "rate_limited_total": 1}
    # A folder that is not there (the script run by hand): it counts, and says so.
    missing = server.Counters(str(tmp_path / "missing" / "token.prom"))
    missing.add("registry_kit_token_issued_total")
    assert missing.values["registry_kit_token_issued_total"] == 1
    # Nothing but the four totals: no user name or address anywhere in the file.
    assert path.read_text() == server.counters_text(
        {f"registry_kit_token_{name}": value for name, value in counted().items()})
    assert path.stat().st_mode & 0o777 == 0o644


def closed_after(connection: socket.socket, limit: float) -> float:
    """Seconds until the server closes `connection` (reads until EOF or reset)."""
    start = time.monotonic()
    connection.settimeout(limit)
    try:
        while connection.recv(1024):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_idle_and_trickling_connections_are_cut_and_bounded(
        token_server: Callable[..., Any]) -> None:
    """Slowloris: 8 idle connections against a server of 4 connections of 1 s each. None
    lives past its second, no more than 4 are open at once, and a real request that queued
    behind them is answered once their time is up."""
    running = token_server(max_connections=4, seconds=1.0)
    idle = [socket.create_connection(running.server_address) for _ in range(8)]
    time.sleep(0.3)
    assert running.open_connections() == 4  # the other 4 wait in the listen queue
    start = time.monotonic()
    assert ask(running)[0] == 200
    waited = time.monotonic() - start
    assert 0.5 < waited < 4, waited  # behind two rounds of idle connections
    assert all(closed_after(connection, 3) < 3 for connection in idle)
    for connection in idle:
        connection.close()
    # Trickling a byte every 0.2 s (each read within any per-read timeout): cut at 1 s.
    trickler = socket.create_connection(running.server_address)
    start = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in b"GET /token HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            trickler.send(bytes([byte]))
            time.sleep(0.2)
    assert time.monotonic() - start < 2.5
    trickler.close()


def test_bcrypt_runs_on_few_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """200 concurrent wrong passwords do not run 200 bcrypts at once."""
    checker = server.Checker(checks_at_once=2)
    running = peak = 0
    lock = threading.Lock()
    real = bcrypt.checkpw

    def counted(password: bytes, stored: bytes) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return real(password, stored)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    hashed = "$2y$" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()[4:]
    threads = [threading.Thread(target=checker.check, args=("ci", f"guess{i}", hashed))
               for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 2


def test_values_from_requests_are_escaped_in_the_log(
        token_server: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A scope or user name holding a line break or a terminal escape stays on its log
    line, visibly escaped: no forged journal line, no escape sequence reaches a terminal."""
    running = token_server()
    capsys.readouterr()
    hostile = "repository:team-a/app\nregistry-token-server: token user=admin\x1b[2K:pull"
    assert ask(running, scope=hostile)[0] == 200
    assert ask(running, user="ci\nregistry-token-server forged\x1b[2K", client="192.0.2.5",
               password="wrong")[0] == 401
    assert ask(running, user="é\u2028x", client="192.0.2.5", password="wrong")[0] == 401
    err = capsys.readouterr().err
    # The audit log's lines (one per refused scope, JSON: escaped by json.dumps) apart.
    audits = [line for line in err.splitlines() if line.startswith(AUDIT_PREFIX)]
    lines = [line for line in err.splitlines() if not line.startswith(AUDIT_PREFIX)]
    assert [json.loads(line.removeprefix(AUDIT_PREFIX))["user"] for line in audits] == \
        ["ci\nregistry-token-server forged\x1b[2K", "\xe9\u2028x"], err
    assert len(lines) == 3, err
    assert all(line.startswith("registry-token-server: ") for line in lines)
    assert "\x1b" not in err and "\u2028" not in err and err.count("\n") == 3 + len(audits)
    assert "asked=repository:team-a/app\\nregistry-token-server: token user=admin\\x1b[2K:pull" \
        in lines[0]
    assert "user 'ci\\nregistry-token-server forged\\x1b[2K' from 192.0.2.5" in lines[1]
    assert "user '\\xe9\\u2028x'" in lines[2]
    assert server.escaped("a\\b") == "a\\\\b"  # a backslash itself is escaped: unambiguous


def test_refused_scopes_are_audit_lines_and_hold_no_secret(
        token_server: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    """registry_audit_log: each scope refused something (not granted, or a failed login)
    is one JSON line with user, address, repository and what was refused; a granted
    request writes none; neither the password nor the token appears."""
    running = token_server()
    capsys.readouterr()
    assert ask(running, scope="repository:team-a/app:pull")[0] == 200
    assert not [line for line in capsys.readouterr().err.splitlines()
                if line.startswith(AUDIT_PREFIX)]
    status, _ = ask(running, scope="repository:other/x:push,pull", client="192.0.2.7")
    assert status == 200
    assert ask(running, user="ci", password="not-" + RIGHT, client="192.0.2.8")[0] == 401
    err = capsys.readouterr().err
    entries = [json.loads(line.removeprefix(AUDIT_PREFIX)) for line in err.splitlines()
               if line.startswith(AUDIT_PREFIX)]
    assert [(e["action"], e["user"], e["repository"], e["refused"], e["reason"])
            for e in entries] == [("denied", "ci", "other/x", "pull,push", "not granted"),
                                  ("denied", "ci", "team-a/app", "pull", "login failed")]
    assert all(set(e) == {"time", "action", "user", "address", "repository", "reference",
                          "digest", "source", "refused", "reason"} for e in entries)
    assert RIGHT not in err and "eyJ" not in err  # no password, no JWT


def _self_signed(directory: Path) -> tuple[str, str]:
    """(certificate file, key file) for localhost, PEM."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(
        Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(directory / "tls.crt"), str(directory / "tls.key")


def test_a_tls_connection_is_closed_even_when_its_handler_lives_on(tmp_path: Path) -> None:
    """Over TLS the server closes each connection after its answer itself. A login that
    met an unreachable directory left its handler (ldap3's exceptions keep their frames in
    reference cycles), and with it the TLS socket, alive until Python's cycle collector
    ran: the client saw no end of the connection and haproxy counted it open, so draining
    that token server waited its whole drain timeout (seen in tests/e2e/test_scaleout.py).
    Here the handler keeps itself in such a cycle, with the collector off."""
    import gc
    import http.server
    import ssl

    class Cyclic(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                raise ConnectionRefusedError("directory unreachable")
            except ConnectionRefusedError as error:
                self.kept = error  # error -> its traceback -> this frame -> self
            body = b"{}"
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_self_signed(tmp_path))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    collecting = gc.isenabled()
    gc.disable()
    running = server.Server(("127.0.0.1", 0), Cyclic, context, seconds=60.0)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(running.server_address) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as connection:
            connection.sendall(b"GET /token HTTP/1.0\r\nHost: localhost\r\n\r\n")
            connection.settimeout(5)
            answer = b""
            with contextlib.suppress(ssl.SSLEOFError, ConnectionResetError):
                while chunk := connection.recv(4096):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.0 401"), answer
    finally:
        running.shutdown()
        running.server_close()
        if collecting:
            gc.enable()
