"""What clients trust across a CA change: the current CA plus, for one run, the one before.

The control machine keeps every CA certificate it has deployed for a domain under
<registry_state_dir>/trust/<domain>/<fingerprint>.pem (certificates only, never keys).
When the CA changes (`.registry-kit/ca` replaced, a provided CA file changed):

* the first run with the new CA gives clients a bundle of new + old CA, before any server
  gets its new certificate (main.plan_host orders client trust before server steps), and
  marks the old CA "retiring" (<fingerprint>.retiring holds the new CA's fingerprint);
* the next run (same new CA) drops the old CA from the bundle and from the history.

So clients never face a certificate they do not trust, during the switch or while some
servers still serve the old certificate. Reads: registry_state_dir, registry_domain.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import cache
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation

from registry_kit.settings import Settings
from registry_kit.tls import ServerCertificate

_lock = threading.Lock()


def fingerprint(pem: bytes) -> str:
    return hashlib.sha256(pem.strip()).hexdigest()[:16]


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _history_dir(state_dir: Path, domain: str) -> Path:
    path = state_dir / "trust" / domain
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@cache
def client_bundle(state_dir: Path, domain: str, ca_pem: bytes) -> bytes:
    """The CA file clients get (once per run and domain): `ca_pem`, then retiring CAs."""
    with _lock:
        history = _history_dir(state_dir, domain)
        current = fingerprint(ca_pem)
        if not (history / f"{current}.pem").exists():
            _write(history / f"{current}.pem", ca_pem)
        bundle = ca_pem if ca_pem.endswith(b"\n") else ca_pem + b"\n"
        for old in sorted(history.glob("*.pem")):
            if old.stem == current:
                continue
            marker = old.with_suffix(".retiring")
            retired_by = marker.read_text().strip() if marker.exists() else ""
            if retired_by == current:
                # An earlier run already shipped new + old: the old CA goes now.
                old.unlink()
                marker.unlink()
                continue
            _write(marker, f"{current}\n".encode())
            bundle += old.read_bytes()
        return bundle


def client_ca(settings: Settings, cert: ServerCertificate | None) -> bytes | None:
    """What clients of this host's registry put in certs.d/ADDRESS/ca.crt."""
    if cert is None:
        return None
    return client_bundle(settings.registry_state_dir, settings.registry_domain, cert.ca_pem)


@operation()
def clients_trust_ready():
    """A step every host shares: it orders client trust before every server step."""
    host.noop("ordering point between client trust and server steps")
    return
    yield  # an operation is a generator
