#!/usr/bin/python3
# Managed by registry-kit: the token server for the registry's `auth.token` (Docker registry
# token specification). GET /token with HTTP basic credentials (or none: anonymous) and
# scope=TYPE:NAME:ACTIONS parameters answers a JWT (ES256, the signing certificate in its
# x5c header, which registry 2.8 and 3.0 both verify against `rootcertbundle`) granting
# the requested actions the policy allows. Users come from the registry's htpasswd (bcrypt),
# rules from the kit's policy.json. Under the kit's unit it runs as a sandboxed dynamic user
# and reads copies of both made at start (the kit restarts it when they change); it also
# re-reads a file that changes on disk.
#
# Failed logins are limited per client address and per user name (LoginLimits): a guesser
# gets 429 with Retry-After, and an unknown user costs the same bcrypt as a known one.
#
# With policy.json's "ldap" (registry_ldap) a name htpasswd does not hold is checked against
# the directory (Directory: a search as the service account, one bind as the user) and its
# groups go into this token's grants only.
#
# Runs with Debian's python3-jwt, python3-bcrypt and python3-cryptography (no pip), and
# python3-ldap3 with a directory.
# Logs one line per token request (user, scopes asked and granted, bcrypt checks made):
# never a password or a token. Counts tokens issued, requests denied, failed logins and
# rate-limited ones (totals since start) into the --counters file (Counters), which the
# kit's facts server serves to Prometheus.
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_SECONDS = 300
ACTIONS = ("pull", "push", "delete")
# Failed logins: per client address 10 a minute (1,000 guesses take 99 minutes); per user
# name 30 a minute, enforced only on addresses that failed themselves (see LoginLimits).
ADDRESS_FAILURES_PER_MINUTE = 10
USER_FAILURES_PER_MINUTE = 30
FAILED_ADDRESS_SECONDS = 900  # an address with a failure this recent counts as a guesser
LIMIT_KEYS = 50_000  # addresses or names remembered at most (memory stays bounded)
# Floods: open connections (one thread each) at most; more wait in the kernel's listen
# queue. Each connection lives at most CONNECTION_SECONDS (TLS handshake, request and
# answer; a slowloris trickling a byte at a time is cut too). bcrypt runs on at most
# one thread per core.
MAX_CONNECTIONS = 1024
CONNECTION_SECONDS = 10.0
LISTEN_QUEUE = 1024
THREAD_STACK = 512 * 1024
DEFAULT_BCRYPT_COST = 10  # registry_kit.render.htpasswd.BCRYPT_ROUNDS


class Files:
    """htpasswd and policy.json, re-read when their (inode, size, mtime) change."""

    def __init__(self, htpasswd: str, policy: str) -> None:
        self.paths = {"htpasswd": htpasswd, "policy": policy}
        self.stamps: dict[str, tuple[int, int, int]] = {}
        self.users: dict[str, str] = {}
        self.policy: dict = {"rules": [], "catalog_users": []}
        self.lock = threading.Lock()

    def current(self, *, strict: bool = False) -> tuple[dict[str, str], dict]:
        """The files' content; one that cannot be read now keeps its last good content
        (the kit replaces files by rename, so this is a broken hand edit), except at
        start (`strict`), where systemd shows the error."""
        with self.lock:
            for kind, path in self.paths.items():
                try:
                    info = os.stat(path)
                    stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
                    if self.stamps.get(kind) == stamp:
                        continue
                    with open(path, encoding="utf-8") as handle:
                        text = handle.read()
                    if kind == "htpasswd":
                        self.users = parse_htpasswd(text)
                    else:
                        self.policy = json.loads(text)
                except (OSError, ValueError) as error:
                    if strict:
                        raise
                    log(f"kept the last good {path}: {error}")
                    continue
                self.stamps[kind] = stamp
                log(f"loaded {path}")
            return self.users, self.policy


def parse_htpasswd(text: str) -> dict[str, str]:
    users = {}
    for line in text.splitlines():
        name, sep, hashed = line.strip().partition(":")
        if sep and name and not name.startswith("#"):
            users[name] = hashed
    return users


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """TYPE:NAME:ACTIONS; the name may hold ':' (a registry host with a port)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


def applies(rule: dict, user: str | None, groups: frozenset[str]) -> bool:
    """A rule covers anonymous, a local user it names, or a directory user in one of its
    ldap_groups (`groups`: read from the directory at this login)."""
    return rule["anonymous"] or (user is not None and user in rule["users"]) or \
        bool(groups.intersection(rule.get("ldap_groups", ())))


def allowed_actions(policy: dict, user: str | None, name: str,
                    groups: frozenset[str] = frozenset()) -> set[str]:
    granted: set[str] = set()
    for rule in policy["rules"]:
        if applies(rule, user, groups) and re.fullmatch(rule["regex"], name):
            granted.update(rule["actions"])
    return granted


def grant(policy: dict, user: str | None, scope: str,
          groups: frozenset[str] = frozenset()) -> dict | None:
    """The access entry a scope earns (None: nothing); `groups`: a directory user's."""
    parsed = parse_scope(scope)
    if parsed is None:
        return None
    kind, name, wanted = parsed
    if kind == "registry" and name == "catalog":
        ok = user is not None and (user in policy["catalog_users"] or bool(
            groups.intersection(policy.get("catalog_ldap_groups", ()))))
        return {"type": "registry", "name": "catalog", "actions": ["*"]} if ok else None
    if kind != "repository":
        return None
    allowed = allowed_actions(policy, user, name, groups)
    # "*" asks for every action: give what is allowed, "*" itself only with all of them.
    actions = [a for a in ACTIONS if a in allowed and (a in wanted or "*" in wanted)]
    if "*" in wanted and allowed >= set(ACTIONS):
        actions.append("*")
    return {"type": "repository", "name": name, "actions": actions} if actions else None


class Bucket:
    """Failures allowed per key: a token bucket of `burst` refilled at `per_minute`.
    `clock` is injected so tests can step through minutes."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = LIMIT_KEYS) -> None:
        self.burst = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_keys = max_keys
        self.keys: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (level, at)

    def level(self, key: str) -> float:
        """Failures still allowed now (fractional)."""
        level, at = self.keys.get(key, (self.burst, 0.0))
        return min(self.burst, level + (self.clock() - at) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until the next failure is allowed (0: now)."""
        level = self.level(key)
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, key: str, amount: float = 1.0) -> None:
        """One failure (negative: give one back)."""
        level = min(self.burst, self.level(key) - amount)
        self.keys[key] = (level, self.clock())
        self.keys.move_to_end(key)
        while len(self.keys) > self.max_keys:  # the least recently used key goes first
            self.keys.popitem(last=False)



class LoginLimits:
    """Failed logins limited per client address and per user name.

    - Per address (10 a minute): a guesser from one address gets 429 with Retry-After once
      it spent its failures, whatever user it tries.
    - Per user name (30 a minute, over all addresses): slows guessing one user from many
      addresses. It refuses only addresses with a failure in the last 15 minutes: a
      per-user limit enforced everywhere would let anyone lock a user out, and the real
      user, from an address without recent failures, still logs in at once. (So each
      address of a distributed guesser gets one guess per 15 minutes at a user whose
      bucket is spent.)
    An attempt is counted before bcrypt runs and given back when it succeeds, so concurrent
    guesses cannot overrun a limit and a refused guess costs no bcrypt."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 per_address: int = ADDRESS_FAILURES_PER_MINUTE,
                 per_user: int = USER_FAILURES_PER_MINUTE,
                 max_keys: int = LIMIT_KEYS) -> None:
        self.clock = clock
        self.addresses = Bucket(per_address, clock=clock, max_keys=max_keys)
        self.users = Bucket(per_user, clock=clock, max_keys=max_keys)
        self.max_keys = max_keys
        self.failed_at: OrderedDict[str, float] = OrderedDict()  # address: last failure
        self.lock = threading.Lock()

    def recently_failed(self, address: str) -> bool:
        at = self.failed_at.get(address)
        return at is not None and self.clock() - at < FAILED_ADDRESS_SECONDS

    def begin(self, address: str, user: str) -> int:
        """Before a password check: 0 (go on; counted as a failure until `succeeded`) or
        the seconds to wait (refused, nothing counted)."""
        with self.lock:
            wait = self.addresses.wait(address)
            if not wait and self.recently_failed(address):
                wait = self.users.wait(user)
            if wait:
                return max(1, int(wait + 0.999))
            self.addresses.take(address)
            self.users.take(user)
            return 0

    def succeeded(self, address: str, user: str) -> None:
        with self.lock:
            self.addresses.take(address, -1)
            self.users.take(user, -1)

    def failed(self, address: str) -> None:
        with self.lock:
            self.failed_at[address] = self.clock()
            self.failed_at.move_to_end(address)
            while len(self.failed_at) > self.max_keys:
                self.failed_at.popitem(last=False)


# The counters since start (totals only: no user name or address, for privacy and so that
# their number stays four), written to --counters as Prometheus text at each change; the
# facts server (registry-kit-facts.py, registry_metrics) serves them. Names and help are
# constants: no value from a request reaches the file.
COUNTERS = {
    "registry_kit_token_issued_total": "tokens issued since the token server started",
    "registry_kit_token_denied_total": "token requests that were refused some action they "
                                       "asked for (the audit log's denied lines)",
    "registry_kit_token_failed_logins_total": "logins refused for a wrong password or an "
                                              "unknown user",
    "registry_kit_token_rate_limited_total": "logins refused with 429 for too many failed "
                                             "logins (LoginLimits)",
}


def counters_text(values: dict[str, int]) -> str:
    """Prometheus text (version 0.0.4) of COUNTERS, in their order: what the kit's
    registry_kit.render.prometheus.counters() renders for the same values."""
    lines = []
    for name, help_text in COUNTERS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter",
                  f"{name} {int(values.get(name, 0))}"]
    return "".join(f"{line}\n" for line in lines)


class Counters:
    """COUNTERS, written to `path` (None: kept in memory only) whole at each change: a
    temporary file made world-readable (the unit's UMask is 0077), then renamed, so a
    reader never sees half a file. The file's folder, this server's own (a RuntimeDirectory
    of its unit, which systemd makes 0700), is opened to other users at start: the facts
    server runs as another dynamic user."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.values = dict.fromkeys(COUNTERS, 0)
        self.lock = threading.Lock()
        if path is not None:
            try:
                os.chmod(os.path.dirname(path) or ".", 0o755)
            except OSError as error:  # tokens go on; the facts server shows no counters
                log(f"could not open the counters' folder to the facts server: {error}")
        self.write()

    def add(self, name: str) -> None:
        with self.lock:
            self.values[name] += 1
            self.write()

    def write(self) -> None:
        if self.path is None:
            return
        temporary = f"{self.path}.new"
        try:
            with open(temporary, "w", encoding="ascii") as handle:
                os.fchmod(handle.fileno(), 0o644)
                handle.write(counters_text(self.values))
            os.replace(temporary, self.path)
        except OSError as error:  # a full /run: counting goes on, the file catches up
            log(f"could not write {self.path}: {error}")


class Checker:
    """bcrypt checks, remembered per (user, hash, password) for the process's life: a pull
    asks one token per repository, and bcrypt at cost 10 is ~60 ms. The memory holds an
    HMAC of the password under a random per-process key, never the password; a changed
    hash in htpasswd (password rotation) misses it and is checked again."""

    def __init__(self, checks_at_once: int = os.cpu_count() or 2) -> None:
        self.key = secrets.token_bytes(32)
        self.known: set[bytes] = set()
        self.dummies: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.checking = threading.BoundedSemaphore(checks_at_once)

    def dummy(self, cost: bytes) -> bytes:
        """A hash of a random password at `cost` ("10"), made once per cost. The password is
        text: bcrypt refuses a NUL byte, which 16 random bytes held in 6% of starts, and
        the first unknown user's login then got no answer at all."""
        import bcrypt

        with self.lock:
            if cost not in self.dummies:
                salt = bcrypt.gensalt(rounds=int(cost))
                self.dummies[cost] = bcrypt.hashpw(secrets.token_urlsafe(16).encode(), salt)
            return self.dummies[cost]

    def check(self, user: str, password: str, hashed: str | None,
              cost: bytes = b"%d" % DEFAULT_BCRYPT_COST) -> tuple[bool, int]:
        """(right password, bcrypt checks made). An unknown user (`hashed` None) or an
        unusable hash costs one bcrypt at `cost` too (the users' own cost): the time of an
        answer does not tell whether a user exists."""
        import bcrypt  # imported late: the server starts even while apt installs it

        usable = hashed is not None and re.fullmatch(r"\$2[aby]\$\d\d\$.{53}", hashed)
        if not usable:
            dummy = self.dummy(cost)
            try:
                with self.checking:
                    bcrypt.checkpw(password.encode(), dummy)
            except ValueError:  # a NUL in the password: refused, as for a known user
                pass
            return False, 1
        assert hashed is not None
        mark = hmac.new(self.key, f"{user}\0{hashed}\0{password}".encode(),
                        hashlib.sha256).digest()
        with self.lock:
            if mark in self.known:
                return True, 0
        try:
            with self.checking:
                ok = bcrypt.checkpw(password.encode(), ("$2b$" + hashed[4:]).encode())
        except ValueError:
            ok = False
        if ok:
            with self.lock:
                self.known.add(mark)
        return ok, 1


# --- Users and groups from a directory (registry_ldap): Debian's python3-ldap3 ---

LDAP_NAME_MAX = 256  # longer user names are refused before the directory is asked


DIRECTORY_UNREACHABLE = "directory unreachable"  # a refusal that is no failed login


class DirectoryError(Exception):
    """The directory could not answer (unreachable, TLS, the service account refused): a
    directory user gets 401, with this as the log line's cause."""


def ldap_escape(value: str) -> str:
    """A value for an LDAP filter (RFC 4515 section 3): `\\`, `*`, `(`, `)` and NUL as
    `\\5c`, `\\2a`, `\\28`, `\\29`, `\\00`, so a user name like `*)(uid=*` is matched
    literally and cannot widen the search."""
    special = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\0": r"\00"}
    return "".join(special.get(char, char) for char in value)


def fill_filter(template: str, **values: str) -> str:
    """`template` with each {NAME} replaced by its escaped value (str.format would read
    braces in a value)."""
    # One pass: a value that holds "{user}" is not expanded again.
    return re.sub(r"\{(" + "|".join(map(re.escape, values)) + r")\}",
                  lambda match: ldap_escape(values[match[1]]), template)


def rdn_value(dn: str) -> str:
    """The first RDN's value of a DN ("cn=devs,ou=groups,..." -> "devs"): a group's name
    from a memberOf value. Escaped characters (RFC 4514) are unescaped."""
    value, index, escaped_next = [], dn.find("=") + 1, False
    while 0 < index < len(dn):
        char = dn[index]
        index += 1
        if escaped_next:
            escaped_next = False
            pair = dn[index - 1:index + 1]
            if re.fullmatch(r"[0-9A-Fa-f]{2}", pair):
                value.append(chr(int(pair, 16)))
                index += 1
            else:
                value.append(char)
        elif char == "\\":
            escaped_next = True
        elif char in ",+":
            break
        else:
            value.append(char)
    return "".join(value).strip()


class Directory:
    """LDAP logins: one service-account connection, kept open and shared under a lock, finds
    the user's entry (and its groups); the password is checked by one bind as that entry on
    a connection of its own. So a token costs one bind; the service account binds again
    only when its connection broke. `config` is policy.json's "ldap"."""

    def __init__(self, config: dict, password: str) -> None:
        self.config = config
        self.password = password
        self.lock = threading.Lock()
        self.service: Any = None

    def server(self) -> Any:
        import ldap3  # imported late: the server starts even while apt installs it

        config = self.config
        tls = None
        if config["tls"] != "none":
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=config["ca_file"],
                            sni=config["host"])
        return ldap3.Server(config["host"], port=config["port"],
                            use_ssl=config["tls"] == "ldaps", tls=tls, get_info=ldap3.NONE,
                            connect_timeout=config["timeout"])

    def bind(self, dn: str, password: str) -> tuple[Any, bool]:
        """A new connection bound as `dn`: (connection, whether the bind succeeded)."""
        import ldap3

        connection = ldap3.Connection(self.server(), user=dn, password=password,
                                      receive_timeout=self.config["timeout"],
                                      raise_exceptions=False)
        connection.open()
        if self.config["tls"] == "starttls" and not connection.start_tls():
            raise DirectoryError(f"StartTLS refused: {connection.result.get('description')}")
        return connection, bool(connection.bind())

    def search(self, base: str, query: str, attributes: list[str]) -> list[tuple[str, dict]]:
        """(dn, attributes) of the entries found, as the service account; a broken
        connection is opened again once."""
        import ldap3
        from ldap3.core.exceptions import LDAPException

        with self.lock:
            for attempt in (1, 2):
                try:
                    if self.service is None:
                        connection, ok = self.bind(self.config["bind_dn"], self.password)
                        if not ok:
                            raise DirectoryError("the service account's bind was refused: "
                                                 f"{connection.result.get('description')}")
                        self.service = connection
                    if not self.service.search(base, query, ldap3.SUBTREE,
                                               attributes=attributes, size_limit=100) and \
                            self.service.result.get("result") not in (0, 4, 32):
                        raise DirectoryError(f"search failed: "
                                             f"{self.service.result.get('description')}")
                    return [(entry["dn"], dict(entry.get("attributes", {})))
                            for entry in self.service.response or []
                            if entry.get("type") == "searchResEntry"]
                except (LDAPException, OSError) as error:
                    self.close()
                    if attempt == 2:
                        raise DirectoryError(f"{type(error).__name__}: {error}") from None
                except DirectoryError:
                    self.close()
                    raise
        return []

    def close(self) -> None:
        if self.service is not None:
            with contextlib.suppress(Exception):
                self.service.unbind()
        self.service = None

    def find(self, name: str) -> list[tuple[str, dict]]:
        config = self.config
        wanted = [config["member_of"]] if config["member_of"] else []
        return self.search(config["base_dn"], fill_filter(config["user_filter"], user=name),
                           wanted)

    def groups(self, name: str, dn: str, attributes: dict) -> frozenset[str]:
        config = self.config
        if config["member_of"]:
            values = attributes.get(config["member_of"]) or []
            return frozenset(rdn_value(value) for value in values)
        if not config["group_filter"]:
            return frozenset()
        attribute = config["group_name_attribute"]
        found = self.search(config["group_base_dn"],
                            fill_filter(config["group_filter"], dn=dn, user=name), [attribute])
        return frozenset(str(value) for _, attrs in found for value in
                         (attrs.get(attribute) or []) if value)

    def login(self, name: str, password: str) -> tuple[bool, frozenset[str], str]:
        """(right password, the user's groups, what happened, for the log line). Raises
        DirectoryError when the directory could not answer."""
        if not name or not password or len(name) > LDAP_NAME_MAX:
            # An empty password would be an unauthenticated bind, which "succeeds".
            return False, frozenset(), "directory: empty or too long name or password"
        found = self.find(name)
        if len(found) != 1:
            return False, frozenset(), f"directory: {len(found)} entries match (binds=0)"
        dn, attributes = found[0]
        try:
            connection, ok = self.bind(dn, password)
            with contextlib.suppress(Exception):
                connection.unbind()
        except Exception as error:  # ldap3's errors, OSError, ssl errors: all unreachable
            raise DirectoryError(f"{type(error).__name__}: {error}") from None
        if not ok:
            return False, frozenset(), "directory: wrong password (binds=1)"
        return True, self.groups(name, dn, attributes), "directory (binds=1)"

    def conflicts(self, names: list[str]) -> list[str]:
        """Local (htpasswd) users the directory knows too."""
        return [name for name in names if self.find(name)]


def users_cost(users: dict[str, str]) -> bytes:
    """The bcrypt cost of the users' hashes (the highest), for an unknown user's check."""
    costs = [hashed[4:6] for hashed in users.values()
             if re.fullmatch(r"\$2[aby]\$\d\d\$.{53}", hashed)]
    return max(costs, default=str(DEFAULT_BCRYPT_COST)).encode()


def client_address(peer: str, forwarded: str | None, trusted: frozenset[str]) -> str:
    """The client's address: the peer's, or from a trusted proxy (the web page's haproxy
    on this server, which sets the header itself) the X-Forwarded-For it sent. Anyone
    else's header is ignored: a client could name any address."""
    address = normal_address(peer)
    if forwarded is not None and address in trusted:
        claimed = forwarded.rpartition(",")[2].strip()
        try:
            return normal_address(claimed)
        except ValueError:
            return address
    return address


def normal_address(text: str) -> str:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def x5c(cert_pem: bytes) -> list[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(cert_pem)
    return [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]


def escaped(value: str) -> str:
    """A value from a request, for a log line: backslash escapes for every control
    character, backslash and non-ASCII character ("a\\nb" for a line break): a user name
    or scope cannot end a journal line, add one or send terminal escapes."""
    return value.encode("unicode_escape").decode("ascii")


def audit_denied(user: str | None, address: str, scopes: list[str],
                 access: list[dict], reason: str) -> int:
    """The audit log's line (registry_audit_log) for each repository scope this request
    was refused something of: the same JSON fields as the audit receiver's lines
    (registry-audit-receiver.py), in this server's journal. Never a password or token.
    Returns how many lines."""
    lines = 0
    granted = {(e["type"], e["name"]): set(e["actions"]) for e in access}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is None or parsed[0] != "repository":
            continue
        _, name, wanted = parsed
        wanted_set = set(ACTIONS) if "*" in wanted else set(wanted)
        refused = sorted(wanted_set - granted.get(("repository", name), set()))
        if refused:
            entry = {"time": now, "action": "denied", "user": user, "address": address,
                     "repository": name, "reference": None, "digest": None,
                     "source": "token", "refused": ",".join(refused), "reason": reason}
            log("audit " + json.dumps(entry, ensure_ascii=True))
            lines += 1
    return lines


def sign(policy: dict, subject: str, access: list[dict], key: Any, chain: list[str],
         now: int) -> str:
    """A token for `access` (ES256, the signing certificate in its x5c header)."""
    import jwt

    claims = {"iss": policy["issuer"], "sub": subject, "aud": policy["service"],
              "iat": now, "nbf": now - 10, "exp": now + TOKEN_SECONDS,
              "jti": secrets.token_hex(16), "access": access}
    return jwt.encode(claims, key, algorithm="ES256", headers={"x5c": chain})


# --- GET /catalog: the repositories a user may pull (distribution's _catalog cannot filter) ---

CATALOG_PATH = "/catalog"  # registry_kit.model.layout.CATALOG_PATH
CATALOG_ACCESS = {"type": "registry", "name": "catalog", "actions": ["*"]}
CATALOG_PAGE = 1000  # the registry's default catalog.maxentries: the most one page holds
CATALOG_PAGES_MAX = 1000  # a million repositories; a registry that pages on is cut off
CATALOG_PAGE_BYTES = 64 * 1024 * 1024
# The whole read, every page: it ends, with a line saying so, before Server cuts the
# page's connection at CONNECTION_SECONDS (which would end it without a word).
CATALOG_SECONDS = CONNECTION_SECONDS - 2


class RegistryError(Exception):
    """The registry's catalog could not be read (status, paging); the page gets 502."""


def pullable(policy: dict, user: str | None, groups: frozenset[str],
             names: list) -> list[str]:
    """The names of the registry's catalog `user` may pull, by the same rules as a token's
    grant (directory groups included). The names are what the registry sent: data, only
    matched against the rules' regexes; one that is not a string is left out."""
    return [name for name in names if isinstance(name, str)
            and "pull" in allowed_actions(policy, user, name, groups)]


def catalog_order(name: str) -> str:
    """The key of the registry's order of names: path component by component, "/" before
    any other character (distribution's lessPath), so "a/b" comes before "a-b", which a
    plain string comparison puts the other way round."""
    return name.replace("/", "\x00")


def catalog_page(status: int, body: bytes) -> list:
    """One answer of /v2/_catalog: its list of names (whatever they are; pullable sorts)."""
    if status != 200:
        raise RegistryError(f"/v2/_catalog answered {status}")
    document = json.loads(body)
    page = (document.get("repositories") or []) if isinstance(document, dict) else None
    if not isinstance(page, list):
        raise RegistryError("/v2/_catalog's answer holds no list of repositories")
    return page


def read_catalog(get: Callable[[str, float], tuple[int, str, bytes]], *,
                 seconds: float = CATALOG_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> list:
    """Every page of the registry's /v2/_catalog, following its paging with `last=`, within
    `seconds`. `get(path, seconds left)` answers (status, Link header, body)."""
    names: list = []
    last: str | None = None
    deadline = clock() + seconds
    for _ in range(CATALOG_PAGES_MAX):
        left = deadline - clock()
        if left <= 0:
            raise RegistryError(f"/v2/_catalog not read in time ({len(names)} names read)")
        query = {"n": str(CATALOG_PAGE), **({"last": last} if last is not None else {})}
        status, link, body = get("/v2/_catalog?" + urllib.parse.urlencode(query), left)
        page = catalog_page(status, body)
        names += page
        if not page or 'rel="next"' not in link:
            return names
        if not isinstance(page[-1], str) or (
                last is not None and catalog_order(page[-1]) <= catalog_order(last)):
            raise RegistryError("/v2/_catalog's pages do not advance")
        last = page[-1]
    raise RegistryError(f"/v2/_catalog has more than {CATALOG_PAGES_MAX} pages")


class Registry:
    """This server's registry, reached at `address` (its local address) under its name in
    `origin` (scheme://DOMAIN:PORT: the Host header and the name its certificate is
    checked for, against `ca_file`)."""

    def __init__(self, origin: str, address: str, ca_file: str | None) -> None:
        url = urllib.parse.urlsplit(origin)
        self.name = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.address = address.strip("[]")
        self.context = None
        if url.scheme == "https":
            self.context = ssl.create_default_context(cafile=ca_file)

    def get(self, path: str, token: str, seconds: float) -> tuple[int, str, bytes]:
        """(status, Link header, body) of one GET, each wait at most `seconds`."""
        raw = socket.create_connection((self.address, self.port), timeout=seconds)
        connection = http.client.HTTPConnection(self.name, self.port, timeout=seconds)
        try:
            connection.sock = raw if self.context is None else \
                self.context.wrap_socket(raw, server_hostname=self.name)
            connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            answer = connection.getresponse()
            body = answer.read(CATALOG_PAGE_BYTES + 1)
            if len(body) > CATALOG_PAGE_BYTES:
                raise RegistryError(f"/v2/_catalog sent more than {CATALOG_PAGE_BYTES} bytes")
            return answer.status, answer.getheader("Link") or "", body
        finally:
            connection.close()
            raw.close()


def log(message: str) -> None:
    """One journal line. Values from requests are `escaped` where they are formatted in;
    anything unprintable left is escaped here too."""
    line = "".join(char if char.isprintable() else escaped(char) for char in message)
    print(f"registry-token-server: {line}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "registry-kit-token"
    sys_version = ""
    files: Files
    checker: Checker
    limits: LoginLimits
    counters: Counters = Counters(None)
    trusted_proxies: frozenset[str] = frozenset()
    directory: Directory | None = None
    signing_key: Any
    chain: list[str]
    registry: Registry | None = None  # where GET /catalog reads the registry's catalog

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per token request instead, without the query string

    def reply(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")
        return (user, password) if sep else ("", "")

    def refuse(self, why: str) -> None:
        log(f"refused: {why}")
        self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication "
                                     "required", "detail": None}]},
                   {"WWW-Authenticate": 'Basic realm="registry-kit"'})

    def directory_login(self, name: str, password: str, address: str) \
            -> tuple[bool, frozenset[str], str]:
        """A user htpasswd does not hold, checked against the directory: (ok, groups, what
        happened). A failure counts against the login limits; a directory that cannot
        answer does not (the user did nothing wrong) and logs its cause."""
        assert self.directory is not None
        try:
            ok, groups, why = self.directory.login(name, password)
        except DirectoryError as error:
            self.limits.succeeded(address, name)
            return False, frozenset(), f"{DIRECTORY_UNREACHABLE}: {escaped(str(error))}"
        if ok:
            self.limits.succeeded(address, name)
            log(f"directory user '{escaped(name)}' groups="
                f"{escaped(','.join(sorted(groups))) or '-'}")
        else:
            self.limits.failed(address)
        return ok, groups, why

    def login(self, scopes: list[str]) -> tuple[str | None, frozenset[str], int] | None:
        """The request's user (None: anonymous), their directory groups and the bcrypt
        checks made; None when refused (answered here: 401 or 429)."""
        users, _ = self.files.current()
        given = self.credentials()
        if given is None:
            return None, frozenset(), 0
        address = client_address(self.client_address[0],
                                 self.headers.get("X-Forwarded-For"), self.trusted_proxies)
        name, password = given
        wait = self.limits.begin(address, name)
        if wait:
            self.counters.add("registry_kit_token_rate_limited_total")
            log(f"too many failed logins: user '{escaped(name)}' from {escaped(address)} "
                f"(retry in {wait} s)")
            self.reply(429, {"errors": [{"code": "TOOMANYREQUESTS", "message": "too many "
                                         "failed logins", "detail": None}]},
                       {"Retry-After": str(wait)})
            return None
        groups: frozenset[str] = frozenset()  # a directory user's, read at this login
        checks = 0
        if name not in users and self.directory is not None:
            ok, groups, why = self.directory_login(name, password, address)
            if not ok:
                if not why.startswith(DIRECTORY_UNREACHABLE):  # the user did nothing wrong
                    self.counters.add("registry_kit_token_failed_logins_total")
                audit_denied(name, address, scopes, [], "login failed")
                self.refuse(f"user '{escaped(name)}' from {escaped(address)}: {why}")
                return None
        else:
            ok, checks = self.checker.check(name, password, users.get(name), users_cost(users))
        if not ok:
            self.limits.failed(address)
            self.counters.add("registry_kit_token_failed_logins_total")
            audit_denied(name, address, scopes, [], "login failed")
            self.refuse(f"user '{escaped(name)}' from {escaped(address)}: unknown user or "
                        f"wrong password (bcrypt={checks})")
            return None
        self.limits.succeeded(address, name)
        return name, groups, checks

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/token":
            self.token(urllib.parse.parse_qs(url.query))
        elif url.path == CATALOG_PATH and self.registry is not None:
            self.catalog(self.registry)
        else:
            self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": "not found"}]})

    def token(self, query: dict[str, list[str]]) -> None:
        """GET /token: a JWT granting what the policy allows of the scopes asked."""
        _, policy = self.files.current()
        if query.get("service", [policy["service"]])[0] != policy["service"]:
            self.reply(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
            return
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        who = self.login(scopes)
        if who is None:
            return
        user, groups, checks = who
        address = client_address(self.client_address[0],
                                 self.headers.get("X-Forwarded-For"), self.trusted_proxies)
        access = [entry for entry in (grant(policy, user, s, groups) for s in scopes) if entry]
        if audit_denied(user, address, scopes, access, "not granted"):
            self.counters.add("registry_kit_token_denied_total")
        now = int(time.time())
        token = sign(policy, user or "", access, self.signing_key, self.chain, now)
        shown = ", ".join(f"{e['type']}:{e['name']}:{','.join(e['actions'])}" for e in access)
        log(f"token user={escaped(user) if user else '(anonymous)'} "
            f"asked={escaped(' '.join(scopes)) or '-'} granted={escaped(shown) or '-'} "
            f"bcrypt={checks}")
        self.counters.add("registry_kit_token_issued_total")
        self.reply(200, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def catalog(self, registry: Registry) -> None:
        """GET /catalog (a login required): the repositories this user may pull, from the
        registry's whole catalog read with this server's own catalog token."""
        started = time.monotonic()
        if self.credentials() is None:
            self.refuse("catalog without a login")
            return
        who = self.login([])
        if who is None:
            return
        user, groups, checks = who
        _, policy = self.files.current()
        # Signed here for this read only: the user never holds a catalog token.
        token = sign(policy, "", [CATALOG_ACCESS], self.signing_key, self.chain,
                     int(time.time()))
        try:
            names = read_catalog(lambda path, left: registry.get(path, token, left),
                                 seconds=CATALOG_SECONDS - (time.monotonic() - started))
        except (RegistryError, OSError, ValueError) as error:
            log(f"catalog for user={escaped(str(user))}: the registry's catalog could not be "
                f"read: {escaped(str(error))}")
            self.reply(502, {"errors": [{"code": "UNAVAILABLE", "message": "the registry's "
                                         "catalog could not be read", "detail": None}]})
            return
        shown = pullable(policy, user, groups, names)
        log(f"catalog user={escaped(str(user))} listed={len(shown)} of {len(names)} "
            f"bcrypt={checks} ms={round((time.monotonic() - started) * 1000)}")
        self.reply(200, {"repositories": shown})


class Server(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once: when all are taken,
    the accept loop waits and further connections queue in the kernel. A connection lives
    at most `seconds` from its accept, whatever it sends: a reaper thread shuts down the
    ones over time (a per-read timeout alone lets a client trickle a byte at a time).
    TLS handshakes happen in each connection's thread (a slow client cannot hold up the
    accept loop)."""

    daemon_threads = True
    request_queue_size = LISTEN_QUEUE

    def __init__(self, address: tuple[str, int], handler: type, context, *,
                 max_connections: int = MAX_CONNECTIONS,
                 seconds: float = CONNECTION_SECONDS) -> None:
        self.context = context
        self.seconds = seconds
        self.slots = threading.BoundedSemaphore(max_connections)
        # id(accepted socket) -> (a duplicate to shut the connection down with, deadline)
        self.connections: dict[int, tuple[socket.socket, float]] = {}
        self.connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        threading.Thread(target=self.reap_forever, name="reaper", daemon=True).start()

    def process_request(self, request, client_address) -> None:
        self.slots.acquire()
        try:
            request.settimeout(self.seconds)
            with self.connections_lock:
                self.connections[id(request)] = (request.dup(),
                                                 time.monotonic() + self.seconds)
            super().process_request(request, client_address)
        except BaseException:
            self.forget(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.forget(request)

    def forget(self, request) -> None:
        with self.connections_lock:
            entry = self.connections.pop(id(request), None)
        if entry is not None:
            entry[0].close()
        self.slots.release()

    def reap_forever(self, interval: float = 0.25) -> None:
        while True:
            time.sleep(interval)
            self.reap()

    def reap(self) -> int:
        """Shut down the connections over their time; how many."""
        now = time.monotonic()
        with self.connections_lock:
            late = [(key, duplicate) for key, (duplicate, deadline)
                    in self.connections.items() if deadline <= now]
            for key, duplicate in late:
                self.connections[key] = (duplicate, float("inf"))  # once
        for _, duplicate in late:
            with contextlib.suppress(OSError):
                duplicate.shutdown(socket.SHUT_RDWR)  # the thread's reads end at once
        return len(late)

    def open_connections(self) -> int:
        with self.connections_lock:
            return len(self.connections)

    def handle_error(self, request, client_address) -> None:
        # A load balancer's TCP check, a client that hangs up mid-handshake or a connection
        # cut at its deadline: one line at most, not a traceback every two seconds.
        error = sys.exc_info()[1]
        if not isinstance(error, ssl.SSLError | ConnectionError | TimeoutError | OSError):
            log(f"request from {escaped(str(client_address[0]))} failed: {error!r}")

    def finish_request(self, request, client_address) -> None:
        if self.context is None:
            super().finish_request(request, client_address)
            return
        # wrap_socket detaches the accepted socket: the socketserver's own close after the
        # request no longer reaches it, so the TLS socket is closed here, not left to
        # reference counting. A login that met an unreachable directory kept its handler
        # (and so this socket) alive in ldap3's exception cycles until the cycle collector
        # ran: the client never saw the end and haproxy counted the connection open, so
        # draining that token server waited its whole timeout (scale-out e2e: 60 s each).
        tls = self.context.wrap_socket(request, server_side=True)
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


def open_directory(policy: dict, password_file: str | None) -> Directory | None:
    """The directory of policy.json's "ldap" (None: none), its service password read from
    its own 0600 copy (never argv or the environment)."""
    if not policy.get("ldap"):
        return None
    if password_file is None:
        raise SystemExit("registry-token-server: policy.json names a directory: "
                         "--ldap-password-file is required")
    with open(password_file, encoding="utf-8") as handle:
        return Directory(policy["ldap"], handle.read().removesuffix("\n"))


def check_names(directory: Directory, users: dict[str, str], report: str | None = None) -> int:
    """`--check-names` (the unit's ExecStartPre): when a local user's name is in the
    directory too, one line naming them, also written to `report` (the deploy reads it
    after its restart and fails with it). The start goes on either way: at login htpasswd
    wins, so the directory's user of that name can never log in, and a name added to the
    directory later must not stop every login at the next reboot. A directory that cannot
    answer now is logged too. Returns 1 on a conflict (0 with `report`: the start goes on)."""
    try:
        both = directory.conflicts(sorted(users))
    except DirectoryError as error:
        log(f"could not compare local users with the directory: {escaped(str(error))}")
        return 0
    finally:
        directory.close()
    if not both:
        return 0
    line = (f"refused: user name {', '.join(repr(escaped(n)) for n in both)} is both in "
            "registry_users and the directory (registry_ldap): rename or remove the local user")
    log(line)
    if report is None:
        return 1
    with open(report, "w", encoding="utf-8") as handle:
        handle.write(f"registry-token-server: {line}\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--signing-key", required=True)
    parser.add_argument("--signing-cert", required=True)
    parser.add_argument("--htpasswd", required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--trusted-proxy", action="append", default=[],
                        help="an address whose X-Forwarded-For names the client (repeat)")
    parser.add_argument("--ldap-password-file", help="the directory's service password")
    parser.add_argument("--check-names", action="store_true",
                        help="only check that no local user is in the directory too")
    parser.add_argument("--names-report", help="--check-names: where a conflict is written")
    parser.add_argument("--counters", help="where the counters are written (Prometheus text)")
    parser.add_argument("--registry", help="scheme://DOMAIN:PORT of the registry (GET /catalog)")
    parser.add_argument("--registry-address", default="127.0.0.1",
                        help="where this server reaches the registry")
    parser.add_argument("--registry-ca", help="the CA the registry's certificate is checked with")
    args = parser.parse_args()
    if args.check_names:
        users, policy = Files(args.htpasswd, args.policy).current(strict=True)
        directory = open_directory(policy, args.ldap_password_file)
        return check_names(directory, users, args.names_report) if directory else 0
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with open(args.signing_key, "rb") as handle:
        Handler.signing_key = load_pem_private_key(handle.read(), password=None)
    with open(args.signing_cert, "rb") as handle:
        Handler.chain = x5c(handle.read())
    Handler.files = Files(args.htpasswd, args.policy)
    # A broken file stops the start (systemd shows it).
    Handler.directory = open_directory(Handler.files.current(strict=True)[1],
                                       args.ldap_password_file)
    Handler.checker = Checker()
    if args.registry:
        Handler.registry = Registry(args.registry, args.registry_address, args.registry_ca)
    Handler.limits = LoginLimits()
    Handler.counters = Counters(args.counters)
    Handler.trusted_proxies = frozenset(normal_address(a) for a in args.trusted_proxy)
    address, _, port = args.listen.rpartition(":")
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_cert, args.tls_key)
    threading.stack_size(THREAD_STACK)  # up to MAX_CONNECTIONS threads: small stacks
    server = Server((address.strip("[]"), int(port)), Handler, context)
    log(f"listening on {args.listen} ({'TLS' if args.tls_cert else 'plain HTTP'})")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
