"""Issue 28 item 5: the token server's GET /catalog, the repositories a user may pull
(scripts/registry-token-server.py, imported from its file): the filter by the same grants a
token gets, the registry's paging with `last=`, and the real server in a thread against a
stand-in registry (a hostile repository name is data: JSON out, never in a log line)."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
import script_module

from registry_kit.model import access, layout
from registry_kit.model.settings import Settings
from registry_kit.package_data import SCRIPTS
from registry_kit.render import token_auth

SCRIPT = Path(str(SCRIPTS / layout.TOKEN_SCRIPT_NAME))
USERS = ["ci", "reader", "admin"]
RULES: list[dict[str, Any]] = [
    {"repository": "team-a/*", "actions": ["pull", "push"], "users": ["ci"]},
    {"repository": "team-b/*", "actions": ["push"], "users": ["ci"]},  # push only: not listed
    {"repository": "*", "actions": ["pull", "push", "delete"], "users": ["admin"]},
    {"repository": "public/*", "actions": ["pull"], "anonymous": True},
]
RIGHT = "right-password-1"
HOSTILE = 'team-a/x"<script>alert(1)</script> registry-token-server: forged\x1b[2K\u2028'
# A line break is not matched by a rule's `*` (re's "."), for a token's grant neither.
BROKEN = "team-a/x\nregistry-token-server: forged"


def _script() -> Any:
    return script_module.load(SCRIPT, "registry_token_server_catalog")


server = _script()


def _document() -> dict[str, Any]:
    policy = access.parse("reg-host-1", {}, RULES, USERS)
    assert policy is not None
    return access.policy_document(policy, USERS, service="registry.lab:5000",
                                  issuer=token_auth.ISSUER)


NAMES = ["other/thing", "public/base", "team-a/app", "team-a/x/deep", "team-ab/app",
         "team-b/app"]


def test_a_user_sees_what_they_may_pull() -> None:
    policy = _document()
    assert server.pullable(policy, "ci", frozenset(), NAMES) == [
        "public/base", "team-a/app", "team-a/x/deep"]  # team-b: push only; team-ab: no
    assert server.pullable(policy, "admin", frozenset(), NAMES) == NAMES
    assert server.pullable(policy, "reader", frozenset(), NAMES) == ["public/base"]
    assert server.pullable(policy, None, frozenset(), NAMES) == ["public/base"]


def test_directory_groups_count_like_a_token_grant() -> None:
    policy = {"rules": [{"repository": "team-a/*", "regex": access.pattern_regex("team-a/*"),
                         "actions": ["pull"], "users": [], "anonymous": False,
                         "ldap_groups": ["devs"]}]}
    assert server.pullable(policy, "dora", frozenset({"devs"}), NAMES) == [
        "team-a/app", "team-a/x/deep"]
    assert server.pullable(policy, "dora", frozenset({"ops"}), NAMES) == []
    # The filter is the token grant: what it lists, a pull token is granted for.
    for name in NAMES:
        listed = name in server.pullable(policy, "dora", frozenset({"devs"}), [name])
        granted = server.grant(policy, "dora", f"repository:{name}:pull", frozenset({"devs"}))
        assert listed == (granted is not None)


def test_hostile_names_are_only_matched() -> None:
    policy = _document()
    names = [HOSTILE, BROKEN, "team-a/(.*)", None, 7, ["team-a/app"], {"x": 1}, "team-a/ok"]
    # Strings are matched literally against the rules; anything else is left out.
    assert server.pullable(policy, "ci", frozenset(), names) == [HOSTILE, "team-a/(.*)",
                                                                 "team-a/ok"]
    assert server.pullable(policy, "reader", frozenset(), names) == []
    assert server.grant(policy, "ci", f"repository:{BROKEN}:pull") is None


def _registry_sorted(names: list[str]) -> list[str]:
    """The registry's order: component by component, "/" first ("a/b" before "a-b")."""
    return sorted(names, key=lambda name: name.split("/"))


def _pages(names: list[str], size: int) -> Callable[[str, float], tuple[int, str, bytes]]:
    """A registry's _catalog over `names` in pages of `size` (it caps n= as maxentries
    does), with Link rel="next" while more follow; the paths asked are kept."""
    asked: list[str] = []
    ordered = _registry_sorted(names)

    def get(path: str, seconds: float) -> tuple[int, str, bytes]:
        assert seconds > 0
        asked.append(path)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        last = query.get("last", [None])[0]
        n = min(size, int(query["n"][0]))
        rest = ordered if last is None else ordered[ordered.index(last) + 1:]
        page = rest[:n]
        link = f'</v2/_catalog?last={page[-1]}&n={n}>; rel="next"' if rest[n:] else ""
        return 200, link, json.dumps({"repositories": page}).encode()

    get.asked = asked  # type: ignore[attr-defined]
    return get


def test_reading_follows_last_through_every_page() -> None:
    names = [f"team-a/app-{i:04}" for i in range(2500)]
    get = _pages(names, 1000)
    assert server.read_catalog(get) == names
    assert get.asked == ["/v2/_catalog?n=1000", "/v2/_catalog?n=1000&last=team-a%2Fapp-0999",
                         "/v2/_catalog?n=1000&last=team-a%2Fapp-1999"]
    small = _pages(names[:7], 3)  # a registry with a smaller maxentries
    assert server.read_catalog(small) == names[:7]
    assert server.read_catalog(_pages([], 1000)) == []


def test_reading_follows_the_registrys_order_not_string_order() -> None:
    # The registry lists team/app before team-x/app ("/" sorts first, distribution's
    # lessPath; seen in the lab on 2.8 and 3.0.0 with n=1: team/z, team-a/app, team-b/app);
    # a page ending on team/app followed by one ending on team-x/... advances, though
    # "team-x/..." < "team/app" as plain strings.
    names = ["team/app", "team/b", "team-x/app", "team-x/b", "team.y/app", "teamz"]
    assert _registry_sorted(names) == names and sorted(names) != names
    for size in (1, 2, 4):
        get = _pages(names, size)
        assert server.read_catalog(get) == names, size
    assert [server.catalog_order(name) for name in names] == sorted(
        server.catalog_order(name) for name in names)


def test_reading_stops_in_time() -> None:
    now = [0.0]
    pages = _pages([f"bulk/repo-{i:04}" for i in range(5000)], 1000)

    def slow(path: str, seconds: float) -> tuple[int, str, bytes]:
        now[0] += 3.0  # each page takes 3 s
        return pages(path, seconds)

    with pytest.raises(server.RegistryError, match=r"not read in time \(2000 names read\)"):
        server.read_catalog(slow, seconds=5.0, clock=lambda: now[0])
    assert server.CATALOG_SECONDS < server.CONNECTION_SECONDS  # a line before the cut


@pytest.mark.parametrize(("answer", "wanted"), [
    ((401, "", b'{"errors": []}'), "answered 401"),
    ((200, "", b'{"repositories": "team-a/app"}'), "no list"),
    ((200, "", b'["team-a/app"]'), "no list"),
    ((200, "", b'"team-a/app"'), "no list"),
    ((200, '<x>; rel="next"', b'{"repositories": ["b", "a"]}'), "do not advance"),
    ((200, '<x>; rel="next"', b'{"repositories": ["a-b", "a/b"]}'), "do not advance"),
    ((200, '<x>; rel="next"', b'{"repositories": ["a", 7]}'), "do not advance"),
])
def test_a_registry_that_misbehaves_is_an_error(answer: tuple, wanted: str) -> None:
    calls = []

    def get(path: str, seconds: float) -> tuple[int, str, bytes]:
        calls.append(path)
        return answer

    with pytest.raises(server.RegistryError, match=wanted):
        server.read_catalog(get)
    assert len(calls) <= 2  # a registry that pages on the same names is not followed


class FakeRegistry:
    """Stands in for server.Registry: the catalog pages, the tokens it was given."""

    def __init__(self, names: list[str], status: int = 200) -> None:
        self.pages = _pages(names, 1000)
        self.status = status
        self.tokens: list[str] = []

    def get(self, path: str, token: str, seconds: float) -> tuple[int, str, bytes]:
        self.tokens.append(token)
        _, link, body = self.pages(path, seconds)
        return self.status, link, body


@pytest.fixture
def catalog_server(tmp_path: Path) -> Iterator[Callable[[FakeRegistry], Any]]:
    from cryptography.hazmat.primitives.asymmetric import ec

    started: list[Any] = []

    def start(registry: FakeRegistry) -> Any:
        htpasswd, policy = tmp_path / "htpasswd", tmp_path / "policy.json"
        hashed = bcrypt.hashpw(RIGHT.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"ci:$2y${hashed[4:]}\nadmin:$2y${hashed[4:]}\n")
        policy.write_text(json.dumps(_document()))
        files = server.Files(str(htpasswd), str(policy))
        files.current(strict=True)
        handler = type("Handler", (server.Handler,), {
            "files": files, "checker": server.Checker(), "limits": server.LoginLimits(),
            "trusted_proxies": frozenset({"127.0.0.1"}), "chain": [], "registry": registry,
            "signing_key": ec.generate_private_key(ec.SECP256R1())})
        running = server.Server(("127.0.0.1", 0), handler, None)
        threading.Thread(target=running.serve_forever, daemon=True).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.shutdown()
        running.server_close()


def ask_catalog(running: Any, user: str | None, password: str = RIGHT) \
        -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*running.server_address, timeout=10)
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()
    connection.request("GET", layout.CATALOG_PATH, headers=headers)
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    return answer.status, body


def test_the_endpoint_lists_per_user(catalog_server: Callable[[FakeRegistry], Any],
                                     capfd: pytest.CaptureFixture[str]) -> None:
    names = [*NAMES, HOSTILE, BROKEN, *(f"bulk/repo-{i:04}" for i in range(1500))]
    registry = FakeRegistry(names)
    running = catalog_server(registry)
    status, body = ask_catalog(running, "ci")
    assert status == 200
    listed = json.loads(body)["repositories"]
    # In the registry's order, as it sent them.
    assert listed == _registry_sorted(["public/base", "team-a/app", HOSTILE, "team-a/x/deep"])
    assert b"<script>" in body and b"\x1b" not in body  # JSON: the name as data, escaped
    status, body = ask_catalog(running, "admin")
    assert status == 200
    assert json.loads(body)["repositories"] == _registry_sorted(
        [name for name in names if name != BROKEN])
    # The registry was asked with the server's own catalog token, never the user's.
    claims = jwt.decode(registry.tokens[0], options={"verify_signature": False})
    assert claims["access"] == [{"type": "registry", "name": "catalog", "actions": ["*"]}]
    assert claims["sub"] == "" and claims["aud"] == "registry.lab:5000"
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if " catalog user=" in line]
    assert len(lines) == 2 and "listed=4 of 1508" in lines[0], err
    assert "forged" not in err and "<script>" not in err  # names are never logged


def test_the_endpoint_wants_a_login(catalog_server: Callable[[FakeRegistry], Any]) -> None:
    running = catalog_server(FakeRegistry(NAMES))
    assert ask_catalog(running, None)[0] == 401
    assert ask_catalog(running, "ci", "wrong")[0] == 401
    assert ask_catalog(running, "nobody")[0] == 401


def test_a_registry_that_refuses_gives_502(catalog_server: Callable[[FakeRegistry], Any],
                                           capfd: pytest.CaptureFixture[str]) -> None:
    running = catalog_server(FakeRegistry(NAMES, status=401))
    assert ask_catalog(running, "ci")[0] == 502
    assert "the registry's catalog could not be read: /v2/_catalog answered 401" in \
        capfd.readouterr().err


def test_the_unit_names_the_registry_by_its_name_over_the_local_address(
        make_settings: Callable[..., Settings]) -> None:
    users = [{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}]
    made = make_settings(registry_users=users, registry_access_rules=RULES[:1],
                         registry_domain="registry.lab", registry_tls_mode="self-signed",
                         registry_bind_address="10.1.2.3")
    unit = token_auth.unit_text(made).decode()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert (" --registry https://registry.lab:5000 --registry-address 10.1.2.3"
            f" --registry-ca {layout.TOKEN_RUNTIME_DIR}/ca.crt") in start
