"""htpasswd for the registry's basic auth: bcrypt only (the registry ignores other hashes).

bcrypt salts are random, so hashing on every run would rewrite the file each time and
change its mtime (the registry re-reads it then). An existing line is therefore kept while
its hash still verifies the configured password; only new or changed users get a new hash.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import bcrypt

from registry_kit.model.settings import User
from registry_kit.render import textfile

BCRYPT_ROUNDS = 10  # the registry checks a hash on every request: keep it affordable


def parse(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, hashed = line.strip().partition(":")
        if sep and name and not line.lstrip().startswith("#"):
            entries[name] = hashed
    return entries


# bcrypt is slow by design (about 60 ms a check at cost 10 here), and a run checks the same
# password against the same hash on every server and client: remember answers and hashes
# for the run, so a no-op run over many hosts costs one check per password, not one a host.
@functools.lru_cache(maxsize=1024)
def verifies(password: str, hashed: str) -> bool:
    if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
        return False
    try:
        # $2y$ (Apache's spelling) and $2b$ are the same algorithm.
        return bcrypt.checkpw(password.encode(), ("$2b$" + hashed[4:]).encode())
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)
def hash_password(password: str) -> str:
    """One hash per password per run: every host written in a run gets the same line."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    return "$2y$" + hashed[4:]  # the spelling Apache's htpasswd writes


def render(users: Sequence[User], existing_text: str = "",
           verify: Callable[[str, str], bool] = verifies) -> str:
    """The htpasswd file for `users`, reusing every existing hash that still verifies
    (`verify(password, hash)`: this module's check, or one that remembers its answers)."""
    existing = parse(existing_text)
    lines = []
    for user in users:
        # The registry reads "name:hash" lines, "#" lines are comments: a name or hash that
        # could add a line or move the ":" is refused (settings.py checks them first).
        textfile.word(user.name, file="htpasswd", field="user name", forbidden=":")
        if user.name.startswith("#"):
            raise ValueError(f"registry-kit: htpasswd: user name={user.name!r} cannot be "
                             "written: a line starting with '#' is a comment")
        if user.password is None:
            assert user.password_hash is not None
            hashed = textfile.word(user.password_hash, file="htpasswd",
                                   field=f"user {user.name!r}: password_hash", secret=True)
        else:
            current = existing.get(user.name)
            password = user.password.reveal()
            hashed = current if current and verify(password, current) else \
                hash_password(password)
        lines.append(f"{user.name}:{hashed}\n")
    return "".join(lines)
