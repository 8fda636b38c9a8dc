"""What clients trust across a CA change, within one run.

When the CA changes (`.registry-kit/ca` replaced, a provided CA file changed), a client's
ca.crt differs from the new CA. In that run:

* before any server step (jobs.deploy.plan_host orders client trust first), the client gets a
  bundle of the new CA followed by the CA it trusted until now (concatenated on the host:
  the old file is never read back to the control machine);
* after every server serves its new certificate (the servers_ready step), the client's
  file becomes the new CA alone, unless a host failed in this run: then the bundle stays
  and the next run finishes the switch.

So clients never face a certificate they do not trust, and a second run changes nothing.
"""

from __future__ import annotations

from io import BytesIO

from pyinfra import host

from registry_kit.commands import q
from registry_kit.model.settings import Settings
from registry_kit.operations import files
from registry_kit.operations.typed import operation
from registry_kit.render.tls import ServerCertificate


def client_ca(settings: Settings, cert: ServerCertificate | None) -> bytes | None:
    """What clients of this host's registry trust: the CA above the server certificate."""
    return None if cert is None else cert.ca_pem


@operation()
def bridge_ca(path: str, new_ca: bytes):
    """Trust the new CA next to the one trusted until now (both, for this run)."""
    staging = f"{path}.registry-kit-new"
    yield f"install -m 0644 -o root -g root /dev/null {q(staging)}"
    yield files.upload(BytesIO(new_ca if new_ca.endswith(b"\n") else new_ca + b"\n"),
                       staging)
    yield f"cat {q(path)} >> {q(staging)} && mv -f {q(staging)} {q(path)}"


def no_host_failed() -> bool:
    """True when every host of this run is still going (a failed server may still serve a
    certificate signed by the old CA, so its clients keep both)."""
    return not host.state.failed_hosts


@operation()
def clients_trust_ready():
    """A step every host shares: it orders client trust before every server step."""
    host.noop("ordering point between client trust and server steps")
    return
    yield  # an operation is a generator
