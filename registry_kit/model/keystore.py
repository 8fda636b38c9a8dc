"""The control machine's key store: the kit's CA, server certificates, the token signing
key, the http secret and the other generated secrets, as files.

Everything lives in registry_state_dir (git-ignored, 0700). Made once and reused, so
reruns upload nothing new. The CA private key stays here; servers get the CA certificate,
their certificate and its key only. Self-signed: the CA under ``<state_dir>/ca/``
(``ca.key``, ``ca.crt``) and a server certificate per domain under
``<state_dir>/servers/<domain>/`` (``server.key``, ``server.crt``); what goes in them is
registry_kit.render.tls (and render.token_auth for the token key), which writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509

from registry_kit.model.inventory import run_cache
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render import htpasswd, tls
from registry_kit.render.token_auth import new_signing_material

CA_DIR = "ca"
SERVERS_DIR = "servers"
_LOCK_FILE = ".tls.lock"

# One process may call in from several greenlets/threads; the file lock covers other processes.
_process_lock = threading.Lock()


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def prepare_ca(serving: Iterable[Settings]) -> None:
    """Before any certificate of this run: the kit's CA of each state dir permits every name
    the self-signed hosts in `serving` (servers and load balancers) put in their
    certificates, so one run of an inventory with several domains or name lists does not
    re-sign the CA between two of its hosts (clients would get a CA the next run changes)."""
    wanted: dict[Path, tuple[set[str], set[str]]] = {}
    for settings in serving:
        if settings.registry_tls_mode != "self-signed":
            continue
        names, ips = wanted.setdefault(settings.registry_state_dir, (set(), set()))
        names.update((settings.registry_domain, *settings.registry_tls_extra_names))
        ips.update(settings.registry_tls_extra_ips)
    for state_dir, (names, ips) in wanted.items():
        _private_dir(state_dir)
        ensure_ca(state_dir, names=sorted(names), ips=sorted(ips))


def _once_per_run(*key: object, make: Callable[[], tls.ServerCertificate]) \
        -> tls.ServerCertificate:
    """Every host of one run gets the same certificate object; the next run reads again."""
    made: dict[tuple[object, ...], tls.ServerCertificate] = run_cache("certificates", dict)
    if key not in made:
        made[key] = make()
    return made[key]


def _self_signed(state_dir: Path, domain: str, names: tuple[str, ...],
                 ips: tuple[str, ...]) -> tls.ServerCertificate:
    def make() -> tls.ServerCertificate:
        _private_dir(state_dir)
        return ensure_server_certificate(state_dir, domain, names, ips)
    return _once_per_run("self-signed", state_dir, domain, names, ips, make=make)


def _provided(cert: Path, key: Path, ca: Path | None, domain: str) -> tls.ServerCertificate:
    return _once_per_run("provided", cert, key, ca, domain,
                         make=lambda: load_provided(cert, key, ca, domain))


def server_certificate(settings: Settings) -> tls.ServerCertificate | None:
    """The certificate for this host's settings, or None in plain-HTTP mode. Raises
    SettingsError (one line) for unusable provided files."""
    if settings.registry_tls_mode == "none":
        return None
    if settings.registry_tls_mode == "provided":
        assert settings.registry_tls_cert_file and settings.registry_tls_key_file
        try:
            return _provided(settings.registry_tls_cert_file, settings.registry_tls_key_file,
                             settings.registry_tls_ca_file, settings.registry_domain)
        except tls.TLSError as error:
            raise SettingsError(f"{settings.host}: setting registry_tls_cert_file="
                                f"{str(settings.registry_tls_cert_file)!r} is not allowed: "
                                f"{error}") from None
    return _self_signed(settings.registry_state_dir, settings.registry_domain,
                        tuple(sorted(settings.registry_tls_extra_names)),
                        tuple(sorted(settings.registry_tls_extra_ips)))


def _local_secret(settings: Settings, kind: str) -> str:
    """A random secret made once on the control machine and kept (0600) in the state dir,
    per domain, so every host of a domain gets the same one and reruns change nothing."""
    path = _private_dir(settings.registry_state_dir / "secrets") / \
        f"{kind}-{settings.registry_domain}"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        return value


def http_secret(settings: Settings) -> str:
    """registry_http_secret if given; else one generated once and kept locally, so every
    replica of a domain shares it and reruns do not change config.yml."""
    if settings.registry_http_secret is not None:
        return settings.registry_http_secret.reveal()
    return _local_secret(settings, "http-secret")


def cache_password(settings: Settings) -> str:
    """registry_cache_password if given; else one generated once and kept locally (like the
    http secret), so the cache host and every replica agree and reruns change nothing.
    `settings` are the cache host's."""
    if settings.registry_cache_password is not None:
        return settings.registry_cache_password.reveal()
    return _local_secret(settings, "cache-password")


def vrrp_password(settings: Settings) -> str:
    """registry_lb_vrrp_password if given; else 8 characters (VRRP's limit) of a secret made
    once and kept locally, so every load balancer of a domain agrees and reruns change nothing."""
    if settings.registry_lb_vrrp_password is not None:
        return settings.registry_lb_vrrp_password.reveal()
    return _local_secret(settings, "vrrp-password")[:8]


def password_check(settings: Settings) -> Callable[[str, str], bool]:
    """htpasswd.verifies(password, hash), remembered on the control machine between runs.

    A no-op run checks the configured passwords against the hashes it finds on the hosts
    (htpasswd, the client's login marker): a bcrypt check each, about 70 ms of CPU at cost
    10 here, on every run (issue 29). Pairs that verified are kept as HMAC-SHA256(key, hash
    and password), never a password or a hash; the key is a secret of the state dir (0600,
    beside the CA key), so without it the memo tests no guess. A changed password or hash
    is not in the memo: bcrypt decides, as before."""
    key = _local_secret(settings, "verified-key").encode()
    path = settings.registry_state_dir / "secrets" / f"verified-{settings.registry_domain}"
    known: set[str] = run_cache(f"verified:{path}", lambda: _read_memo(path))

    def check(password: str, hashed: str) -> bool:
        digest = hmac.new(key, f"{hashed}\n{password}".encode(), hashlib.sha256).hexdigest()
        if digest in known:
            return True
        if not htpasswd.verifies(password, hashed):
            return False
        known.add(digest)
        # One line per password change and user: appended, never rewritten.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(digest + "\n")
        return True

    return check


def _read_memo(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except FileNotFoundError:
        return set()


def token_signing_material(settings: Settings) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) the token server signs with, made once per domain on the
    control machine and kept."""
    folder = settings.registry_state_dir / "token"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = folder / f"signing-{settings.registry_domain}.key"
    cert_path = folder / f"signing-{settings.registry_domain}.crt"
    if key_path.exists() and cert_path.exists():
        return key_path.read_bytes(), cert_path.read_bytes()
    key_pem, cert_pem = new_signing_material(settings.registry_domain)
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert_pem)
    return key_pem, cert_path.read_bytes()


def _write_private(path: Path, content: bytes) -> None:
    temp = path.with_suffix(".tmp")
    temp.unlink(missing_ok=True)
    with open(temp, "xb", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
        f.write(content)
    temp.replace(path)


# --- the kit's CA and server certificates (self-signed), provided files ---

def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file + rename so readers never see a half-written key or cert."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL on a fresh random name: never follows a planted symlink; mode applies at creation
    # so a key is never world-readable, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _tighten(path: Path, mode: int) -> None:
    # mkdir/open modes are ignored for existing paths (and masked by umask): enforce them.
    if path.stat().st_mode & 0o777 != mode:
        path.chmod(mode)


def _tls_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)
    return path


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise issuance: two callers must not mint two different CAs or certificates."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _process_lock:
        if sys.platform == "win32":  # no flock; the in-process lock is the best we can do
            yield
            return
        import fcntl

        fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def ensure_ca(state_dir: Path, common_name: str = "registry-kit CA", *,
              names: Sequence[str] = (), ips: Sequence[str] = ()) -> tuple[Path, Path]:
    """Create the kit's CA once under ``state_dir/ca`` and return ``(cert_path, key_path)``.

    A new CA may sign only for ``names`` (DNS, ``*.`` allowed) and ``ips``: a critical
    NameConstraints extension permits those and nothing else. An existing, valid CA that
    covers them is reused untouched; one whose constraints do not is re-signed with the same
    key to permit them too (tls.ca_certificate). A CA without constraints (made by an
    older kit) is left as it is. A missing certificate, or one within
    ``CA_RENEW_DAYS`` of expiry, is re-signed with the existing key and subject, so server
    certificates it signed stay valid. An existing CA key is never replaced: an unreadable
    key, or a certificate that does not belong to it, raises TLSError; removing the ``ca``
    directory is the deliberate way to start a new CA.
    """
    if not 1 <= len(common_name) <= 64:
        raise tls.TLSError(f"CA common name {common_name!r} must be 1 to 64 characters")
    state_dir = Path(state_dir)
    want_dns, want_ips = tls.wanted_names(names, ips)
    with _locked(state_dir):
        _ensure_ca_locked(state_dir, common_name, tls.utc(None), tls.CA_RENEW_DAYS, want_dns,
                          want_ips)
    ca_dir = state_dir / CA_DIR
    return ca_dir / "ca.crt", ca_dir / "ca.key"


def _ensure_ca_locked(state_dir: Path, common_name: str, now: datetime, min_days_left: int,
                      want_dns: set[str], want_ips: set) -> tuple[x509.Certificate,
                                                                   tls.SigningKey]:
    ca_dir = _tls_dir(state_dir / CA_DIR)
    key_path, cert_path = ca_dir / "ca.key", ca_dir / "ca.crt"
    old: bytes | None = None
    if key_path.exists():
        ca_key = tls.ca_key(key_path.read_bytes(), key_path, ca_dir)
        _tighten(key_path, 0o600)
        old = cert_path.read_bytes() if cert_path.exists() else None
    else:
        ca_key = tls.new_key()
        # Key first: a crash before the cert is written leaves a key the next run completes.
        _write_atomic(key_path, tls.key_to_pem(ca_key), 0o600)
    cert, signed = tls.ca_certificate(ca_key, old, common_name=common_name, now=now,
                                      min_days_left=min_days_left, want_dns=want_dns,
                                      want_ips=want_ips, cert_path=cert_path, ca_dir=ca_dir)
    if signed:
        _write_atomic(cert_path, tls.cert_to_pem(cert), 0o644)
    return cert, ca_key


def ensure_server_certificate(state_dir: Path, domain: str, extra_names: Sequence[str],
                              extra_ips: Sequence[str], *, now: datetime | None = None,
                              renew_days: int = 30, valid_days: int = 825) \
        -> tls.ServerCertificate:
    """Return the kit-CA-signed server certificate for ``domain``, issuing it when needed.

    The stored certificate and key are returned byte-for-byte unless the certificate is
    missing or unreadable, its SANs differ from ``{domain} ∪ extra_names ∪ extra_ips``, it
    is within ``renew_days`` of expiry (or not yet valid), it lacks serverAuth, it does not
    match the key, or it was not signed by the current CA. On reissue the existing server
    key is kept when usable, so only the certificate changes.
    """
    if not 1 <= valid_days <= tls.CA_VALID_DAYS:
        raise ValueError(f"valid_days must be between 1 and {tls.CA_VALID_DAYS}")
    if not 0 <= renew_days < valid_days:
        # Otherwise every fresh certificate would already be "due" and each run would reissue.
        raise ValueError("renew_days must be >= 0 and smaller than valid_days")
    state_dir = Path(state_dir)
    at = tls.utc(now)
    names = tls.wanted_sans(domain, extra_names, extra_ips)
    with _locked(state_dir):
        # The CA must outlive the renewal window, or a clamped server cert would be "due" forever.
        ca_cert, ca_key = _ensure_ca_locked(state_dir, "registry-kit CA", at,
                                            max(tls.CA_RENEW_DAYS, renew_days + 1), *names[1:])
        ca_pem = (state_dir / CA_DIR / "ca.crt").read_bytes()
        srv_dir = _tls_dir(state_dir / SERVERS_DIR / names[0])
        key_path, cert_path = srv_dir / "server.key", srv_dir / "server.crt"
        key_bytes = key_path.read_bytes() if key_path.exists() else b""
        key = tls.load_key(key_bytes)
        if key is None:
            # Our own key, absent or unusable: replacing it loses nothing.
            key = tls.new_key()
            key_bytes = tls.key_to_pem(key)
            _write_atomic(key_path, key_bytes, 0o600)
        else:
            _tighten(key_path, 0o600)
        cert_bytes = cert_path.read_bytes() if cert_path.exists() else b""
        new_cert = tls.server_certificate(cert_bytes, key, ca_cert, ca_key, names, at,
                                          renew_days, valid_days)
        if new_cert is None:
            return tls.ServerCertificate(cert_bytes, key_bytes, ca_pem, reissued=False)
        cert_bytes = tls.cert_to_pem(new_cert)
        _write_atomic(cert_path, cert_bytes, 0o644)
        return tls.ServerCertificate(cert_bytes, key_bytes, ca_pem, reissued=True)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise tls.TLSError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise tls.TLSError(f"{path}: {what} file is a directory") from None
    except OSError as exc:
        raise tls.TLSError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None


def load_provided(cert_file: Path, key_file: Path, ca_file: Path | None, domain: str, *,
                  now: datetime | None = None) -> tls.ServerCertificate:
    """Read operator-provided TLS files and check them (tls.check_provided); every failure
    is one TLSError line."""
    cert_file, key_file = Path(cert_file), Path(key_file)
    chain = tls.pem_certificates(_read(cert_file, "certificate"), cert_file, "certificate")
    key_data = _read(key_file, "private key")
    cas = tls.pem_certificates(_read(Path(ca_file), "CA"), Path(ca_file), "CA") \
        if ca_file is not None else []
    return tls.check_provided(chain, key_data, cas, cert_file=cert_file, key_file=key_file,
                              ca_file=ca_file, domain=domain, now=now)
