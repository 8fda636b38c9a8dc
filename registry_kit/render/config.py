"""The registry's config.yml: built as data from Settings, serialized by PyYAML.

`config_data()` returns the configuration as a dict and `dump_config()` turns it into text,
so no value is ever pasted into YAML text: a secret holding "x\\nauth: {}" stays one string
value. What differs between registry versions belongs in `config_data()`; the dump is one.

Deterministic: keys sorted, no line wrapping, no timestamps or randomness, so the same
settings give the same bytes and an unchanged deploy uploads and recreates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from registry_kit.model import pull_through
from registry_kit.model.checks import unsafe_character
from registry_kit.model.layout import (
    CONTAINER_CERT,
    CONTAINER_DATA_DIR,
    CONTAINER_DEBUG_PORT,
    CONTAINER_HTPASSWD,
    CONTAINER_KEY,
    CONTAINER_PORT,
    METRICS_PATH,
    Endpoints,
)
from registry_kit.model.settings import Secret, Settings, masked_repr
from registry_kit.render.audit import notifications_section
from registry_kit.render.token_auth import auth_section as token_auth_section

HEADER = ("# Managed by registry-kit (registry_kit/render.py): edits here are replaced on the "
          "next deploy.\n")
_LINE_BREAKS = frozenset("\n\r\x85\u2028\u2029")


@masked_repr("password")
@dataclass(frozen=True)
class CacheTarget:
    """What a replica's config.yml needs to reach the redis cache (model.topology)."""

    addr: str  # host:port
    password: str
    db: int


class _ConfigDumper(yaml.SafeDumper):
    """SafeDumper that keeps every scalar on one line: strings with a line break are
    written double-quoted ("\\n"), never as multi-line single-quoted text. The GC script
    edits the deployed file line by line (scripts/registry-gc.sh), so no value may span
    lines. No anchors/aliases either: a dict used twice is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class _FastConfigDumper(yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper):  # type: ignore[misc]
    """The same dumper on libyaml's emitter (PyPI's PyYAML wheels carry it): about 5x
    faster, the same bytes (tests/unit/test_render.py compares the two on hostile values)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if _LINE_BREAKS.intersection(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)
_FastConfigDumper.add_representer(str, _represent_str)


def _storage_section(settings: Settings, major: int) -> dict[str, Any]:
    storage = settings.registry_storage
    params: dict[str, Any] = {}
    for key, value in storage.params.items():
        params[key] = value.reveal() if isinstance(value, Secret) else value
    if storage.driver == "filesystem":
        params.setdefault("rootdirectory", CONTAINER_DATA_DIR)
    if major >= 3 and storage.driver == "s3" and params.get("regionendpoint"):
        # 2.8 addressed buckets path-style whenever regionendpoint was set (s3-aws/s3.go:
        # WithS3ForcePathStyle(true)); 3.0 reads `forcepathstyle` and defaults it to false
        # (bucket.host names), which a store reached by IP or without wildcard DNS (Ceph
        # RGW, MinIO) cannot serve. Keep 2.8's behaviour unless the user chose.
        params.setdefault("forcepathstyle", True)
    if major >= 3 and storage.driver == "azure" and params.get("accountkey"):
        # 3.0's azure driver needs credentials.type (azure/auth.go refuses ""): an account
        # key, which was 2.8's only way, is type shared_key.
        params.setdefault("credentials", {"type": "shared_key"})
    return {storage.driver: params or None}


def _redis_section(cache: CacheTarget, major: int) -> dict[str, Any]:
    if major >= 3:
        # 3.0 reads go-redis UniversalOptions (one address: a plain client); it ignores the
        # 2.x keys addr/pool, and with blobdescriptor: redis then panics at start.
        return {"addrs": [cache.addr], "password": cache.password, "db": cache.db,
                "dialtimeout": "1s", "readtimeout": "1s", "writetimeout": "1s",
                "maxidleconns": 16, "poolsize": 64, "connmaxidletime": "300s"}
    return {"addr": cache.addr, "password": cache.password, "db": cache.db,
            "dialtimeout": "1s", "readtimeout": "1s", "writetimeout": "1s",
            "pool": {"maxidle": 16, "maxactive": 64, "idletimeout": "300s"}}


def config_data(settings: Settings, http_secret: str, *, read_only: bool = False,
                cache: CacheTarget | None = None, drain_timeout: int | None = None,
                major: int = 2) -> dict[str, Any]:
    """config.yml as data, for registry `major` version 2 or 3 (registry_kit.model.registry_version;
    2 is the default image's). What 3.0 reads differently: the redis section, S3 path-style
    addressing, Azure credentials (README, "Running and upgrading to registry 3"); every
    other key the kit writes means the same in 2.8 and 3.0, and 2.x output is unchanged.

    cache: the shared redis blob-descriptor cache (scale-out); drain_timeout: seconds a
    stopping registry keeps serving open requests (replicas behind a load balancer)."""
    storage: dict[str, Any] = _storage_section(settings, major)
    if cache is not None:
        storage["cache"] = {"blobdescriptor": "redis"}
    if settings.registry_storage_redirect_disabled:
        # Blobs come through the registry: clients need not reach the object store.
        storage["redirect"] = {"disable": True}
    storage["delete"] = {"enabled": settings.registry_delete_enabled}
    storage["maintenance"] = {
        "uploadpurging": {"enabled": True, "age": "168h", "interval": "24h", "dryrun": False},
        # registry-gc.sh flips this to true while it collects (garbage_collect.py).
        "readonly": {"enabled": read_only},
    }
    http: dict[str, Any] = {
        "addr": f":{CONTAINER_PORT}",
        "host": Endpoints.of(settings).public_url,
        "secret": http_secret,
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if drain_timeout:
        # On SIGTERM, finish open requests (the load balancer sends no new ones) first.
        http["draintimeout"] = f"{drain_timeout}s"
    if settings.tls_enabled:
        http["tls"] = {"certificate": CONTAINER_CERT,
                       "key": CONTAINER_KEY,
                       "minimumtls": "tls1.2"}
    if settings.registry_debug_addr is not None:
        # Published on the server's loopback only (see the container's port mapping).
        http["debug"] = {"addr": f":{CONTAINER_DEBUG_PORT}",
                         "prometheus": {"enabled": True, "path": METRICS_PATH}}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": settings.registry_log_level, "fields": {"service": "registry"}},
        "storage": storage,
        "http": http,
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }
    if settings.registry_access is not None:
        config["auth"] = token_auth_section(settings, major)  # users or rules: token auth
    elif settings.registry_users:
        config["auth"] = {"htpasswd": {"realm": "registry-kit",
                                       "path": CONTAINER_HTPASSWD}}
    if cache is not None:
        config["redis"] = _redis_section(cache, major)
    if settings.registry_audit_log:
        config["notifications"] = notifications_section(settings)  # the audit log's receiver
    if pull_through.is_cache(settings):
        # A read-through cache of another registry; the registry then refuses pushes.
        config["proxy"] = pull_through.proxy_section(settings, major)
    return config


def dump_config(config: dict[str, Any], *, dumper: type = _FastConfigDumper) -> str:
    """The one serializer for config.yml: header line, then block-style YAML, keys sorted,
    ASCII only (other characters escaped), no line wrapping."""
    options: dict[str, Any] = {"default_flow_style": False, "sort_keys": True,
                               "allow_unicode": False, "width": 2**31 - 1}
    if not _same_in_both_emitters(config):
        dumper = _ConfigDumper
    try:
        body = yaml.dump(config, Dumper=dumper, **options)
    except UnicodeEncodeError:  # a lone surrogate: libyaml cannot; settings refuse them anyway
        body = yaml.dump(config, Dumper=_ConfigDumper, **options)
    return HEADER + body


def _same_in_both_emitters(value: Any) -> bool:
    """False where libyaml and PyYAML's own emitter write different bytes: a key that is
    empty, holds a control or line-break character, or nears YAML's 128-character limit
    for simple keys (each decides those differently). Settings refuse such keys anyway."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and 0 < len(key) < 100 and unsafe_character(key) is None
                   and _same_in_both_emitters(item)
                   for key, item in value.items())
    if isinstance(value, list):
        return all(_same_in_both_emitters(item) for item in value)
    return True


def render_config(settings: Settings, http_secret: str, *, read_only: bool = False,
                  cache: CacheTarget | None = None, drain_timeout: int | None = None,
                  major: int = 2) -> str:
    return dump_config(config_data(settings, http_secret, read_only=read_only, cache=cache,
                                   drain_timeout=drain_timeout, major=major))
