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
"""

from __future__ import annotations

from typing import Any

from registry_kit.model.settings import Settings, SettingsError

MODE = "pull-through-cache"


def is_cache(settings: Settings) -> bool:
    return settings.registry_mode == MODE


def check_version(settings: Settings, major: int) -> None:
    """registry_proxy_ttl needs registry 3: 2.8 has no `proxy.ttl` (its scheduler keeps
    every pulled-through blob and manifest 168h, registry/proxy/proxyregistry.go), so a TTL
    there would be silently ignored: refuse it instead."""
    if is_cache(settings) and settings.registry_proxy_ttl is not None and major < 3:
        raise SettingsError(
            f"{settings.host}: setting registry_proxy_ttl={settings.registry_proxy_ttl!r} is "
            "not allowed: registry 2.8 ignores proxy.ttl (fixed 168h); use registry 3 or None")


def proxy_section(settings: Settings, major: int) -> dict[str, Any]:
    """config.yml's `proxy:`. The password goes into config.yml (0600, root), as the
    registry reads it from there; it never reaches a command line or the run's output."""
    section: dict[str, Any] = {"remoteurl": settings.registry_proxy_remoteurl}
    if settings.registry_proxy_username is not None and settings.registry_proxy_password:
        section["username"] = settings.registry_proxy_username
        section["password"] = settings.registry_proxy_password.reveal()
    if settings.registry_proxy_ttl is not None and major >= 3:
        section["ttl"] = settings.registry_proxy_ttl
    return section
