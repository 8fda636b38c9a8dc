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
# Runs with Debian's python3-jwt, python3-bcrypt and python3-cryptography (no pip).
# Logs one line per token request (user, scopes asked and granted, bcrypt checks made):
# never a password or a token.
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
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


def allowed_actions(policy: dict, user: str | None, name: str) -> set[str]:
    granted: set[str] = set()
    for rule in policy["rules"]:
        if (rule["anonymous"] or (user is not None and user in rule["users"])) and \
                re.fullmatch(rule["regex"], name):
            granted.update(rule["actions"])
    return granted


def grant(policy: dict, user: str | None, scope: str) -> dict | None:
    """The access entry a scope earns (None: nothing)."""
    parsed = parse_scope(scope)
    if parsed is None:
        return None
    kind, name, wanted = parsed
    if kind == "registry" and name == "catalog":
        ok = user is not None and user in policy["catalog_users"]
        return {"type": "registry", "name": "catalog", "actions": ["*"]} if ok else None
    if kind != "repository":
        return None
    allowed = allowed_actions(policy, user, name)
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
        """A hash of a random password at `cost` ("10"), made once per cost."""
        import bcrypt

        with self.lock:
            if cost not in self.dummies:
                salt = bcrypt.gensalt(rounds=int(cost))
                self.dummies[cost] = bcrypt.hashpw(secrets.token_bytes(16), salt)
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
            with self.checking:
                bcrypt.checkpw(password.encode(), dummy)
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
                 access: list[dict], reason: str) -> None:
    """The audit log's line (registry_audit_log) for each repository scope this request
    was refused something of: the same JSON fields as the audit receiver's lines
    (registry-audit-receiver.py), in this server's journal. Never a password or token."""
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
    trusted_proxies: frozenset[str] = frozenset()
    signing_key: Any
    chain: list[str]

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

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self.reply(404, {"errors": [{"code": "NOT_FOUND", "message": "not found"}]})
            return
        query = urllib.parse.parse_qs(url.query)
        users, policy = self.files.current()
        if query.get("service", [policy["service"]])[0] != policy["service"]:
            self.reply(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
            return
        given = self.credentials()
        user: str | None = None
        checks = 0
        address = client_address(self.client_address[0],
                                 self.headers.get("X-Forwarded-For"), self.trusted_proxies)
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        if given is not None:
            name, password = given
            wait = self.limits.begin(address, name)
            if wait:
                log(f"too many failed logins: user '{escaped(name)}' from {escaped(address)} "
                    f"(retry in {wait} s)")
                self.reply(429, {"errors": [{"code": "TOOMANYREQUESTS", "message": "too many "
                                             "failed logins", "detail": None}]},
                           {"Retry-After": str(wait)})
                return
            ok, checks = self.checker.check(name, password, users.get(name), users_cost(users))
            if not ok:
                self.limits.failed(address)
                audit_denied(name, address, scopes, [], "login failed")
                self.refuse(f"user '{escaped(name)}' from {escaped(address)}: unknown user or "
                            f"wrong password (bcrypt={checks})")
                return
            self.limits.succeeded(address, name)
            user = name
        access = [entry for entry in (grant(policy, user, s) for s in scopes) if entry]
        audit_denied(user, address, scopes, access, "not granted")
        now = int(time.time())
        claims = {"iss": policy["issuer"], "sub": user or "", "aud": policy["service"],
                  "iat": now, "nbf": now - 10, "exp": now + TOKEN_SECONDS,
                  "jti": secrets.token_hex(16), "access": access}
        import jwt

        token = jwt.encode(claims, self.signing_key, algorithm="ES256",
                           headers={"x5c": self.chain})
        shown = ", ".join(f"{e['type']}:{e['name']}:{','.join(e['actions'])}" for e in access)
        log(f"token user={escaped(user) if user else '(anonymous)'} "
            f"asked={escaped(' '.join(scopes)) or '-'} granted={escaped(shown) or '-'} "
            f"bcrypt={checks}")
        self.reply(200, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})


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
        if self.context is not None:
            request = self.context.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)


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
    args = parser.parse_args()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with open(args.signing_key, "rb") as handle:
        Handler.signing_key = load_pem_private_key(handle.read(), password=None)
    with open(args.signing_cert, "rb") as handle:
        Handler.chain = x5c(handle.read())
    Handler.files = Files(args.htpasswd, args.policy)
    Handler.files.current(strict=True)  # a broken file stops the start (systemd shows it)
    Handler.checker = Checker()
    Handler.limits = LoginLimits()
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
