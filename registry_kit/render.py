"""Rendering the registry's config.yml from templates/ and Settings.

Deterministic: the same settings give the same bytes (no timestamps, no randomness), so
an unchanged deploy uploads nothing and recreates nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

from registry_kit.scaleout import CacheTarget
from registry_kit.settings import Secret, Settings

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
# Fixed paths inside the container; the host folders are bind-mounted there, so a changed
# registry_config_dir on the host does not change the registry's view.
CONTAINER_CONFIG_DIR = "/etc/registry-kit"
CONTAINER_DATA_DIR = "/var/lib/registry"
CONTAINER_CONFIG_FILE = f"{CONTAINER_CONFIG_DIR}/config.yml"

_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # YAML, not HTML
)


def _storage_section(settings: Settings) -> dict[str, Any]:
    storage = settings.registry_storage
    params: dict[str, Any] = {}
    for key, value in storage.params.items():
        params[key] = value.reveal() if isinstance(value, Secret) else value
    if storage.driver == "filesystem":
        params.setdefault("rootdirectory", CONTAINER_DATA_DIR)
    return {storage.driver: params or None}


def render_config(settings: Settings, http_secret: str, *, read_only: bool = False,
                  cache: CacheTarget | None = None, drain_timeout: int | None = None) -> str:
    """cache: the shared redis blob-descriptor cache (scale-out); drain_timeout: seconds a
    stopping registry keeps serving open requests (replicas behind a load balancer)."""
    template = _environment.get_template("config.yml.j2")
    storage_yaml = yaml.safe_dump(_storage_section(settings), default_flow_style=False,
                                  sort_keys=True).rstrip("\n")
    public_url = settings.registry_url.removesuffix(":443") if settings.tls_enabled else \
        settings.registry_url
    return template.render(
        source="templates/config.yml.j2",
        log_level=settings.registry_log_level,
        storage_yaml=storage_yaml,
        delete_enabled=settings.registry_delete_enabled,
        read_only=read_only,
        public_url=public_url,
        http_secret=yaml.safe_dump(http_secret, default_style='"').strip(),
        tls=settings.tls_enabled,
        debug=settings.registry_debug_addr is not None,
        users=bool(settings.registry_users),
        container_dir=CONTAINER_CONFIG_DIR,
        redirect_disabled=settings.registry_storage_redirect_disabled,
        drain_timeout=drain_timeout,
        cache=cache,
        cache_password=yaml.safe_dump(cache.password, default_style='"').strip()
        if cache else None,
    )
