"""Material made and kept on the control machine: certificates and the http secret.

Everything lives in registry_state_dir (git-ignored, 0700). Made once and reused, so
reruns upload nothing new. The CA private key stays here; servers get the CA certificate,
their certificate and its key only.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from registry_kit.model.inventory import run_cache
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render import tls


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
        tls.ensure_ca(state_dir, names=sorted(names), ips=sorted(ips))


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
        return tls.ensure_server_certificate(state_dir, domain, names, ips)
    return _once_per_run("self-signed", state_dir, domain, names, ips, make=make)


def _provided(cert: Path, key: Path, ca: Path | None, domain: str) -> tls.ServerCertificate:
    return _once_per_run("provided", cert, key, ca, domain,
                         make=lambda: tls.load_provided(cert, key, ca, domain))


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
