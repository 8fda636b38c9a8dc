"""Unit tests for registry_kit.render.htpasswd: bcrypt lines, reused while they still verify."""

from __future__ import annotations

from collections.abc import Callable

import bcrypt
import pytest

from registry_kit.model import keystore
from registry_kit.model.settings import Secret, Settings, User
from registry_kit.render import htpasswd

# A real bcrypt hash (cost 4) of "ops-password", kept verbatim by render().
OPS_HASH = bcrypt.hashpw(b"ops-password", bcrypt.gensalt(rounds=4)).decode()
OPS_HASH_2Y = "$2y$" + OPS_HASH[4:]


def _user(name: str, password: str) -> User:
    return User(name=name, password=Secret(password))


@pytest.fixture(scope="module")
def first_render() -> str:
    """alice and bob, hashed once at the kit's real cost (10) for the whole module."""
    return htpasswd.render([_user("alice", "alice-pw"), _user("bob", "bob-pw")])


@pytest.fixture
def fast_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(htpasswd, "BCRYPT_ROUNDS", 4)


def test_render_writes_2y_cost_10_hashes_that_verify(first_render: str) -> None:
    assert first_render.endswith("\n")
    lines = first_render.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["alice", "bob"]
    entries = htpasswd.parse(first_render)
    for name, password in (("alice", "alice-pw"), ("bob", "bob-pw")):
        hashed = entries[name]
        assert hashed.startswith("$2y$10$")
        assert len(hashed) == 60
        # bcrypt itself (as $2b$, the same algorithm) accepts it
        assert bcrypt.checkpw(password.encode(), ("$2b$" + hashed[4:]).encode())
        assert htpasswd.verifies(password, hashed) is True
        assert htpasswd.verifies("wrong", hashed) is False
    assert entries["alice"] != entries["bob"]


def test_rerun_is_byte_identical(first_render: str) -> None:
    users = [_user("alice", "alice-pw"), _user("bob", "bob-pw")]
    assert htpasswd.render(users, first_render) == first_render


def test_changed_password_is_rehashed(first_render: str, fast_bcrypt: None) -> None:
    old = htpasswd.parse(first_render)
    out = htpasswd.render([_user("alice", "new-alice-pw"), _user("bob", "bob-pw")],
                          first_render)
    new = htpasswd.parse(out)
    assert new["bob"] == old["bob"]  # unchanged user keeps its line
    assert new["alice"] != old["alice"]
    assert new["alice"].startswith("$2y$04$")
    assert htpasswd.verifies("new-alice-pw", new["alice"]) is True
    assert htpasswd.verifies("alice-pw", new["alice"]) is False


def test_removed_user_is_dropped(first_render: str) -> None:
    old = htpasswd.parse(first_render)
    out = htpasswd.render([_user("bob", "bob-pw")], first_render)
    assert out == f"bob:{old['bob']}\n"


def test_password_hash_user_kept_verbatim(first_render: str) -> None:
    existing = first_render + f"ops:{htpasswd.parse(first_render)['alice']}\n"
    users = [User(name="ops", password=None, password_hash=OPS_HASH_2Y),
             _user("alice", "alice-pw")]
    out = htpasswd.render(users, existing)
    assert out == f"ops:{OPS_HASH_2Y}\nalice:{htpasswd.parse(first_render)['alice']}\n"


def test_existing_non_bcrypt_line_is_replaced(fast_bcrypt: None) -> None:
    out = htpasswd.render([_user("alice", "alice-pw")], "alice:$apr1$salt$abcdefghij\n")
    hashed = htpasswd.parse(out)["alice"]
    assert hashed.startswith("$2y$04$")
    assert htpasswd.verifies("alice-pw", hashed)


def test_parse_skips_comments_and_junk() -> None:
    text = "# comment: here\nalice:$2y$x\n\nnot-a-line\n  bob:hash  \n:nouser\n"
    assert htpasswd.parse(text) == {"alice": "$2y$x", "bob": "hash"}


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_verifies_all_bcrypt_spellings(prefix: str) -> None:
    assert htpasswd.verifies("ops-password", prefix + OPS_HASH[4:]) is True


@pytest.mark.parametrize(
    "hashed",
    [
        "$apr1$rOaP9Ga0$Ti2MUQGOzqBQjTpV2Z0n/.",  # Apache MD5
        "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # SHA-1
        "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",  # crypt MD5
        "$6$saltsalt$abcdefghijklmnopqrstuvwxyz",  # crypt SHA-512
        "plaintext",
        "",
        "$2y$10$tooshort",  # bcrypt prefix, malformed: no exception, just False
    ],
)
def test_verifies_false_for_other_hashes(hashed: str) -> None:
    assert htpasswd.verifies("password", hashed) is False


@pytest.mark.parametrize("name", ["a:b", "a\nevil", "a b", "#alice", "", "a\x00"])
def test_render_refuses_names_that_change_lines(name: str) -> None:
    with pytest.raises(ValueError, match="htpasswd: user name="):
        htpasswd.render([User(name=name, password=None, password_hash=OPS_HASH_2Y)])


# ids: the hash has a random salt, and parallel workers must collect the same test names.
@pytest.mark.parametrize("hashed", [OPS_HASH_2Y + "\nevil:" + OPS_HASH_2Y, OPS_HASH_2Y + " x",
                                    ""], ids=["newline", "space", "empty"])
def test_render_refuses_hashes_that_change_lines(hashed: str) -> None:
    with pytest.raises(ValueError, match=r"htpasswd: user 'ops': password_hash=\(secret\)"):
        htpasswd.render([User(name="ops", password=None, password_hash=hashed)])


@pytest.mark.parametrize("name", ["r\u00e9my", "ci$(x)", "a#b", "ci-bot.1"])
def test_render_odd_names_stay_one_entry(name: str) -> None:
    text = htpasswd.render([User(name=name, password=None, password_hash=OPS_HASH_2Y)])
    assert len(text.splitlines()) == 1
    assert htpasswd.parse(text) == {name: OPS_HASH_2Y}


def test_password_check_remembers_verified_pairs_between_runs(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """keystore.password_check: a pair that verified once is not bcrypt-checked again, in
    this run or the next (each call outside a run reads the memo again); the memo holds
    neither the password nor the hash, 0600; a wrong password is still bcrypt's to refuse."""
    settings = make_settings()
    keystore.password_check(settings)("ops-password", OPS_HASH_2Y)  # bcrypt, then kept
    memo = settings.registry_state_dir / "secrets" / f"verified-{settings.registry_domain}"
    text = memo.read_text()
    assert len(text.split()) == 1 and "ops-password" not in text and OPS_HASH[7:] not in text
    assert memo.stat().st_mode & 0o777 == 0o600
    checked: list[str] = []

    def counting(password: str, hashed: str) -> bool:
        checked.append(password)
        return False

    monkeypatch.setattr(htpasswd, "verifies", counting)
    check = keystore.password_check(settings)
    assert check("ops-password", OPS_HASH_2Y) is True
    assert check("wrong", OPS_HASH_2Y) is False
    assert check("ops-password", OPS_HASH) is False  # another hash: bcrypt decides
    assert checked == ["wrong", "ops-password"]
    assert memo.read_text() == text


def test_render_asks_the_check_it_is_given(first_render: str) -> None:
    asked: list[tuple[str, str]] = []

    def check(password: str, hashed: str) -> bool:
        asked.append((password, hashed))
        return True  # a remembered answer: no bcrypt check, the line is kept

    users = [_user("alice", "not-checked-by-bcrypt"), _user("bob", "bob-pw")]
    assert htpasswd.render(users, first_render, check) == first_render
    assert [password for password, _ in asked] == ["not-checked-by-bcrypt", "bob-pw"]
