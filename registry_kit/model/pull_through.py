"""registry_mode = "pull-through-cache": a registry server that serves another registry's
images read-through (distribution's `proxy` section). Not to be confused with
registry_kit.roles.cache, the redis blob-descriptor cache of the scale-out replicas.

The first pull of an image fetches it from `registry_proxy_remoteurl` and keeps its blobs
and manifests in the server's storage; later pulls are served from there (the tag is
still checked with the remote while it answers; when it does not, the cached copy is
served). The registry itself refuses pushes and deletes in this mode (405 UNSUPPORTED),
so clients cannot write into a cache. Cached content expires after the TTL: fixed at 168h
in 2.8 (its `proxy.ttl` is not read), `registry_proxy_ttl` in 3.x.

Upstream credentials on a cache without users, or over http://, are refused in
registry_kit.model.settings unless acknowledged (registry_proxy_anonymous_acknowledged,
registry_proxy_plaintext_acknowledged).

A cache keeps serving (issue 25):
- Name resolution: the container gets a copy of the host's resolv.conf without loopback
  nameservers (falling back to 8.8.8.8) and not the host's /etc/hosts, so a remote the
  server resolves may resolve nowhere inside. The probe resolves the remote's name on the
  server (`getent ahosts`, every run) and the container gets it as `--add-host`: a changed
  address recreates the container on the next deploy, an unchanged one changes nothing.
- Remote down at start: registry 2.8.2/2.8.3 and 3.0.0 ask the remote's /v2/ while
  configuring the proxy (proxy.NewRegistryPullThroughCache -> configureAuth ->
  getAuthURLs, credentials or not) and panic when it does not answer
  (handlers/app.go), so the container restarts in a loop while the remote is down. 3.0
  skips that request when `proxy.exec` (a credential helper) is set and asks the remote
  only per request, serving what it holds when the remote fails (proxytagservice.go).
  2.8 has no such switch: refused for cache mode.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from registry_kit.model import layout
from registry_kit.model.settings import Settings, SettingsError

MODE = "pull-through-cache"


def is_cache(settings: Settings) -> bool:
    return settings.registry_mode == MODE


def check_version(settings: Settings, major: int) -> None:
    """A cache needs registry 3: 2.8 does not start while its remote is down (module
    docstring). registry_proxy_ttl needs registry 3 too: 2.8 has no `proxy.ttl` (its
    scheduler keeps every pulled-through blob and manifest 168h,
    registry/proxy/proxyregistry.go), so a TTL there would be silently ignored."""
    if is_cache(settings) and settings.registry_proxy_ttl is not None and major < 3:
        raise SettingsError(
            f"{settings.host}: setting registry_proxy_ttl={settings.registry_proxy_ttl!r} is "
            "not allowed: registry 2.8 ignores proxy.ttl (fixed 168h); use registry 3 or None")
    if is_cache(settings) and major < 3:
        raise SettingsError(
            f"{settings.host}: setting registry_image={settings.registry_image!r} is not "
            "allowed: registry 2.8 as a pull-through cache does not start while its remote "
            "is down (it asks the remote at start and panics); set registry_image = "
            '"registry:3"')


def proxy_section(settings: Settings, major: int) -> dict[str, Any]:
    """config.yml's `proxy:`. The password goes into config.yml (0600, root), as the
    registry reads it from there; it never reaches a command line or the run's output."""
    section: dict[str, Any] = {"remoteurl": settings.registry_proxy_remoteurl}
    if settings.registry_proxy_username is not None and settings.registry_proxy_password:
        section["username"] = settings.registry_proxy_username
        section["password"] = settings.registry_proxy_password.reveal()
    elif major >= 3:
        # Without credentials: a helper that is never there. 3.0 then skips the start-up
        # request to the remote (proxyregistry.go: `case config.Exec != nil`), so the cache
        # starts while the remote is down; the helper runs only when the remote asks for
        # credentials, fails (logged) and the request goes on anonymously, as without it
        # (proxyauth_exec.go).
        section["exec"] = {"command": layout.CONTAINER_NO_CREDENTIAL_HELPER}
    if settings.registry_proxy_ttl is not None and major >= 3:
        section["ttl"] = settings.registry_proxy_ttl
    return section


def remote_name(settings: Settings) -> str | None:
    """The remote's host name, which the container must resolve (None: an IP address, or
    not a cache)."""
    if not is_cache(settings) or not settings.registry_proxy_remoteurl:
        return None
    name = urlsplit(settings.registry_proxy_remoteurl).hostname
    if not name:
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return None


def pick_address(addresses: Sequence[str]) -> str | None:
    """The address the container is given for the remote's name: the server's first IPv4
    answer (Docker's default bridge has no IPv6 unless configured), else its first IPv6."""
    for family in (4, 6):
        for address in addresses:
            if "%" in address:  # a scope: Python accepts any text after the '%'
                continue
            try:
                if ipaddress.ip_address(address).version == family:
                    return address
            except ValueError:
                continue
    return None


def extra_hosts(settings: Settings, resolved: Mapping[str, Sequence[str]]) -> \
        tuple[tuple[str, str], ...]:
    """(name, address) for the container's `--add-host`, from the probe's `getent ahosts`
    on the server; a name the server does not resolve, or resolves to its loopback (inside
    the container that is the container itself), is refused before anything is touched."""
    name = remote_name(settings)
    if name is None:
        return ()
    address = pick_address(resolved.get(name, []))
    url = settings.registry_proxy_remoteurl
    if address is None:
        raise SettingsError(
            f"{settings.host}: setting registry_proxy_remoteurl={url!r} is not allowed: "
            f"{name} does not resolve on {settings.host} (getent ahosts); use a name the "
            "server resolves (DNS or its /etc/hosts) or an IP address")
    if ipaddress.ip_address(address).is_loopback:
        raise SettingsError(
            f"{settings.host}: setting registry_proxy_remoteurl={url!r} is not allowed: "
            f"{name} resolves to {address} on {settings.host}, which inside the registry "
            "container is the container itself; use the remote's network address")
    return ((name, address),)
