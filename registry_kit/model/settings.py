"""Settings: every setting declared once, in `Settings` below, with its default, a one-line
doc and its check; group_data -> host.data -> one typed, frozen Settings, validated once.

This is the only module that reads host data; every other module takes a Settings
argument. The declarations are grouped in sections, one per concern, each headed by the
module that reads it and followed by its cross-field check. A bad value raises
SettingsError with one line naming the host, the key, the value and what is allowed, before
any host is touched. Secrets (passwords, the http secret, storage keys) are read here from
the environment or from files on the control machine and wrapped in Secret, so they never
show in a repr or a log line.

The README's settings table and the repo's group_data/all.py are generated from these
declarations: `python -m registry_kit.model.settings_doc --write` (`make settings-docs`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry_kit.errors import SettingsError
from registry_kit.model import access
from registry_kit.model.checks import (
    BACKUP_GENERATION_RE,
    LOOPBACK_RULE,
    Check,
    Reader,
    Secret,
    Storage,
    User,
    address,
    as_given,
    backup_path,
    boolean,
    control_dir,
    fail,
    find_unsafe,
    host_dir,
    host_port,
    hosts_entries,
    image_reference,
    internal_address,
    ip_address,
    is_hostname,
    is_ip,
    is_mirror_url,
    local_file,
    loopback_address,
    masked_repr,
    matching,
    min_version,
    networks,
    one_of,
    optional_boolean,
    registry_major,
    secret,
    storage,
    string_list,
    unsafe_character,
    url_host,
    users,
    vip,
    whole,
)
from registry_kit.model.registry_version import RegistryVersionError, major_from_tag, resolve

if TYPE_CHECKING:
    # Imported where a setting asks for them: a deploy without a directory or retention
    # rules (most) does not compile or import them (issue 29).
    from registry_kit.model import ldap, retention

# Names other modules import from here (the value types and tests live in checks.py).
__all__ = ["BACKUP_GENERATION_RE", "Secret", "Settings", "SettingsError", "Storage", "User",
           "host_port", "is_hostname", "is_ip", "known_keys", "load", "load_inventory",
           "masked_repr", "unsafe_character", "url_host"]

SectionCheck = Callable[[Reader, dict[str, Any]], None]


@dataclass
class Section:
    """A block of declarations: its title, the module that reads it, its cross-field checks."""
    title: str
    reads: str
    keys: list[str] = field(default_factory=list)
    checks: list[SectionCheck] = field(default_factory=list)


@dataclass(frozen=True)
class Declaration:
    name: str
    default: Any  # as written in group data (plain literals)
    doc: str
    check: Check
    secret: bool  # never shown in an error, even when refused for a control character
    shown: str | None  # the default as group_data/all.py writes it, when not its repr
    section: Section


SECTIONS: list[Section] = []


def section(title: str, reads: str) -> None:
    """Start a block of declarations (called in the class body, above its settings)."""
    SECTIONS.append(Section(title, reads))


def setting(default: Any, doc: str, *, check: Check = as_given, secret: bool = False,
            shown: str | None = None) -> Any:
    """Declare a setting of the current section: its default as group data writes it, a
    one-line doc, and the check that turns the raw value into the field's type."""
    return field(metadata={"setting": (default, doc, check, secret, shown, SECTIONS[-1])})


def derived(doc: str) -> Any:
    """A field computed from settings (not a setting itself): set by a section's check."""
    return field(metadata={"derived": doc})


def cross_check(function: SectionCheck) -> Any:
    """Register a cross-field check of the current section (declared right below it)."""
    SECTIONS[-1].checks.append(function)
    return staticmethod(function)


_REPO_URL = r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~+-]+)*/?"
# systemd OnCalendar: letters, digits, and * - : , . / ~ space; systemd-analyze checks the rest.
# Words separated by single spaces (the timer unit's line is written as it is).
_CALENDAR = r"(?=.{1,100}\Z)[A-Za-z0-9*][A-Za-z0-9*:,./~-]*( [A-Za-z0-9*:,./~-]+)*"
_NO_QUOTES = r"[!#-&(-\[\]-~]"  # printable, no space ' " \\
# keepalived.conf reads # ! " ' { } \\ as syntax; VRRP PASS auth is at most 8 characters.
_VRRP_PASSWORD = r"[$-&(-\[\]-z|~]{1,8}"
# registry_metrics: the kit's facts server listens on the loopback of servers and of load
# balancers with a floating address at this port
# (registry_kit.model.layout.FACTS_LISTEN): no other port of the kit may be it.
FACTS_PORT = 9196
# Debian's exporters listen on the loopback at their own default ports (registry_kit.roles.
# exporters): the redis exporter on registry_cache hosts, the node exporter with
# registry_node_exporter.
REDIS_EXPORTER_PORT = 9121
NODE_EXPORTER_PORT = 9100
LOOPBACK_PORTS = {FACTS_PORT: "the kit's facts server", REDIS_EXPORTER_PORT: "the redis "
                  "exporter", NODE_EXPORTER_PORT: "the node exporter"}


_VRRP3_MAX_ADVERT = 40.95


def _vrrp_version(r: Reader, key: str, value: Any) -> int:
    if isinstance(value, bool) or value not in (2, 3):
        raise r.fail(key, value, "2 (VRRPv2 with the password) or 3 (VRRPv3, no "
                     "authentication)")
    return int(value)


def _advert_seconds(r: Reader, key: str, value: Any) -> float:
    """A number of seconds in keepalived's steps (0.01 s): 1.0 is read as 1, 0.5 stays."""
    allowed = "a number of seconds from 0.01 to 255 in steps of 0.01"
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not 0.01 <= value <= 255:
        raise r.fail(key, value, allowed)
    hundredths = round(value * 100)
    if abs(value * 100 - hundredths) > 1e-6:
        raise r.fail(key, value, allowed)
    return hundredths // 100 if hundredths % 100 == 0 else hundredths / 100


def _port_of(loopback: str | None) -> int | None:
    return int(loopback.rsplit(":", 1)[1]) if loopback else None


def check_metrics_bind(host: str, s: Mapping[str, Any]) -> None:
    """A host serving metrics listens on one IP address of its own: never every address,
    where the public side could reach it."""
    bind = s["registry_metrics_bind"] or s["registry_internal_address"]
    if not is_ip(bind) or ipaddress.ip_address(bind).is_unspecified:
        key = "registry_metrics_bind"
        raise fail(host, key, s[key], "one IP address of the host for the metrics endpoint "
                   f"(registry_internal_address {s['registry_internal_address']!r} is not "
                   "one)")


def _remote_url(r: Reader, key: str, value: Any) -> str | None:
    if value is not None and not is_mirror_url(value):
        raise r.fail(key, value, "None or the URL of the registry to cache, like "
                     "https://registry.example.com or http://10.0.0.5:5000")
    return value


def _percent_or_none(r: Reader, key: str, value: Any) -> int | None:
    # Below 50% a guard would make most registries read-only at once: a typo, not a choice.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 50 <= value <= 99:
        raise r.fail(key, value, "None (no guard) or a whole number from 50 to 99")
    return value


def _retention_rules(r: Reader, key: str, value: Any) -> tuple[retention.Rule, ...]:
    if value is None or (isinstance(value, list | tuple) and not value):
        return ()  # what retention.parse answers, without importing it
    from registry_kit.model import retention

    try:
        return retention.parse(r.host, value)
    except retention.RetentionError as error:
        raise SettingsError(str(error)) from None


@dataclass(frozen=True)
class Settings:
    """One host's settings, validated. Built only by load(): every field is required."""
    host: str = derived("the inventory host these settings are for")

    # --- Registry service (hosts in registry_servers): registry_kit/roles/server.py ---
    section("Registry service (hosts in registry_servers)", "registry_kit/roles/server.py")
    registry_domain: str = setting(
        "registry.example.internal", "name clients push to; the certificate covers it",
        check=address(optional=False, allowed="a DNS name or IP address, without scheme, "
                      "port, path or spaces"))
    registry_port: int = setting(
        5000, "published TCP port; 443 lets clients use the bare domain", check=whole(1, 65535))
    registry_image: str = setting(
        "registry:2", "registry image reference; pin a tag or a digest", check=image_reference)
    registry_version: int | None = setting(
        None, "2 or 3: the registry's major version, when `registry_image`'s tag does not "
        'tell it (see "Running and upgrading to registry 3")', check=registry_major)
    registry_image_archive: Path | None = setting(
        None, "control-machine `docker save` tar, loaded on air-gapped servers",
        check=local_file)
    registry_container_name: str = setting(
        "registry", "name of the registry container on servers",
        check=matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", "a Docker container name"))
    registry_bind_address: str | None = setting(
        None, "publish the port on this server address only; None: every address",
        check=ip_address("None (every address) or one IP address of the server to publish "
                         "the port on"))
    registry_config_dir: str = setting(
        "/etc/registry-kit", "servers: config.yml, certs/, auth/ (root only)", check=host_dir)
    registry_data_dir: str = setting(
        "/var/lib/registry-kit/data", "servers: image data (filesystem storage)",
        check=host_dir)
    registry_delete_enabled: bool = setting(
        False, "allow DELETE of manifests (needed before garbage collection)", check=boolean)
    registry_http_secret: Secret | None = setting(
        None, '{"env": NAME} or {"file": PATH}; None: generated once, kept locally',
        check=secret("secret"), secret=True)
    registry_log_level: str = setting(
        "info", "error / warn / info / debug", check=one_of("error", "warn", "info", "debug"))
    registry_debug_addr: str | None = setting(
        None, 'e.g. "127.0.0.1:5001": debug and /metrics, localhost only',
        check=loopback_address)
    registry_verify_timeout: int = setting(
        60, "seconds to wait for /v2/ after a (re)start before failing", check=whole(5, 600))

    @cross_check
    def _server(r: Reader, s: dict[str, Any]) -> None:
        try:
            # Without a setting and without a version tag, the label may still tell (later:
            # registry_kit.jobs.deploy, after the probe).
            if s["registry_version"] is not None or \
                    major_from_tag(s["registry_image"]) is not None:
                resolve(r.host, s["registry_image"], s["registry_version"])
        except RegistryVersionError as error:
            raise SettingsError(str(error)) from None
        if _port_of(s["registry_debug_addr"]) == s["registry_port"]:
            raise r.fail("registry_debug_addr", s["registry_debug_addr"], LOOPBACK_RULE)
        config_dir, data_dir = s["registry_config_dir"], s["registry_data_dir"]
        if config_dir == data_dir or data_dir.startswith(config_dir + "/") or \
                config_dir.startswith(data_dir + "/"):
            raise r.fail("registry_data_dir", data_dir, "a folder apart from "
                         f"registry_config_dir ({config_dir}): neither may hold the other")

    # --- Storage: registry_kit/render/config.py, registry_kit/s3check.py ---
    section("Storage", "registry_kit/render/config.py, registry_kit/s3check.py")
    registry_storage: Storage = setting(
        {"driver": "filesystem"}, "filesystem / s3 / azure / gcs / inmemory, see README",
        check=storage, secret=True)
    registry_storage_redirect_disabled: bool = setting(
        False, "`storage.redirect.disable`: replicas serve blobs instead of redirecting "
        "clients to S3", check=boolean)
    registry_storage_check: bool = setting(
        True, "s3: signed HEAD on the bucket from the control machine before any change",
        check=boolean)

    # --- TLS: registry_kit/model/keystore.py (certificates), registry_kit/roles/trust.py ---
    section("TLS", "registry_kit/model/keystore.py, registry_kit/roles/trust.py")
    registry_tls_mode: str = setting(
        "self-signed", "self-signed (kit's own CA) / provided / none (plain HTTP)",
        check=one_of("self-signed", "provided", "none"))
    registry_tls_cert_file: Path | None = setting(
        None, "provided: server certificate (chain allowed), control machine")
    registry_tls_key_file: Path | None = setting(
        None, "provided: its private key, control machine")
    registry_tls_ca_file: Path | None = setting(
        None, "provided: CA certificate clients must trust, control machine")
    registry_tls_extra_names: tuple[str, ...] = setting(
        [], "extra DNS names in the certificate", check=string_list(is_hostname, "DNS names"))
    registry_tls_extra_ips: tuple[str, ...] = setting(
        [], "extra IP addresses in the certificate", check=string_list(is_ip, "IP addresses"))
    registry_tls_none_acknowledged: bool = setting(
        False, "must be True to send passwords over plain HTTP", check=boolean)

    @cross_check
    def _tls(r: Reader, s: dict[str, Any]) -> None:
        files = ("registry_tls_cert_file", "registry_tls_key_file", "registry_tls_ca_file")
        if s["registry_tls_mode"] != "provided":
            s.update(dict.fromkeys(files))  # read only when the certificates are provided
            return
        for key in files[:2]:
            if s[key] is None:
                raise r.fail(key, None, "a certificate/key file path when "
                             "registry_tls_mode='provided'")
        s.update({key: local_file(r, key, s[key]) for key in files})

    # --- Users (htpasswd, bcrypt): registry_kit/render/htpasswd.py, roles/server.py ---
    section("Users (htpasswd, bcrypt)", "registry_kit/render/htpasswd.py, "
            "registry_kit/roles/server.py")
    registry_allow_plain_passwords: bool = setting(
        False, 'allow {"password": "..."} in group data (not advised)', check=boolean)
    registry_users: tuple[User, ...] = setting(
        [], '[{"name": "ci", "password_env": VAR}] or password_file / password_hash',
        check=users, secret=True)
    registry_anonymous_acknowledged: bool = setting(
        False, "must be True to run a registry without users (open)", check=boolean)

    @cross_check
    def _users(r: Reader, s: dict[str, Any]) -> None:
        if r.server and not s["registry_users"] and s["registry_ldap"] is None and \
                not s["registry_anonymous_acknowledged"]:
            raise r.fail("registry_users", [], "at least one user: without users anyone who "
                         "reaches the port can push and overwrite images; set "
                         "registry_anonymous_acknowledged=True if that is what you want")
        if s["registry_tls_mode"] == "none" and (s["registry_users"] or s["registry_ldap"]) and \
                not s["registry_tls_none_acknowledged"]:
            raise r.fail("registry_tls_mode", "none", "plain HTTP with users sends passwords "
                         "in clear; set registry_tls_none_acknowledged=True or use TLS")

    # --- Access per repository: registry_kit/model/access.py, roles/token_server.py ---
    section("Access per repository", "registry_kit/model/access.py, "
            "registry_kit/roles/token_server.py")
    registry_groups: Mapping[str, Any] = setting(
        {}, '{"readers": ["alice", "bob"]}: groups of registry_users, for access rules')
    registry_access_rules: Any = setting(
        None, "None: every user may do everything; a list of rules: per-repository access "
        'control (see "Access control per repository")')
    registry_auth_mode: str = setting(
        "auto", "auto: token auth (the kit's token server) whenever there are users, so a "
        "request costs a signature check, not a bcrypt check; htpasswd: the registry checks "
        "bcrypt per request (no access rules)", check=one_of("auto", "htpasswd"))
    registry_token_port: int = setting(
        5443, "token auth: the token server's TLS port on each server (and on the load "
        "balancer)", check=whole(1, 65535))
    registry_ldap: ldap.Directory | None = setting(
        None, "users and groups from a directory: {'url': 'ldaps://...', 'base_dn': ..., "
        "'bind_dn': ..., 'bind_password_env' or 'bind_password_file': ..., 'user_filter': "
        "'(uid={user})', 'group_filter' or 'member_of', 'ca_file'} (see \"Users and groups "
        'from a directory")', secret=True)
    registry_ldap_plaintext_acknowledged: bool = setting(
        False, "must be True for a plain ldap:// registry_ldap without start_tls (passwords "
        "in clear)", check=boolean)
    registry_access: access.Policy | None = derived(
        "the policy the token server enforces (registry_access_rules, or every user "
        "everything); None: no token auth")

    @cross_check
    def _access(r: Reader, s: dict[str, Any]) -> None:
        names = [user.name for user in s["registry_users"]]
        if s["registry_ldap"] is not None:  # ldap.parse(None) is None
            from registry_kit.model import ldap

            s["registry_ldap"] = ldap.parse(r, s["registry_ldap"],
                                            s["registry_ldap_plaintext_acknowledged"])
        try:
            s["registry_access"] = access.parse(
                r.host, s["registry_groups"], s["registry_access_rules"], names,
                directory=s["registry_ldap"] is not None)
        except access.AccessError as error:
            raise SettingsError(str(error)) from None
        if s["registry_auth_mode"] == "htpasswd" and s["registry_access"] is not None:
            raise r.fail("registry_auth_mode", "htpasswd", "auto when registry_access_rules "
                         "is set (the registry enforces rules through tokens)")
        if s["registry_access"] is None and names and s["registry_auth_mode"] == "auto":
            s["registry_access"] = access.all_rights(names)
        if s["registry_access"] is not None and s["registry_token_port"] == s["registry_port"]:
            raise r.fail("registry_token_port", s["registry_token_port"], "a port other than "
                         "registry_port (the token server listens beside the registry)")

    # --- Client hosts (registry_clients): registry_kit/roles/client.py, roles/trust.py ---
    section("Client hosts (registry_clients)", "registry_kit/roles/client.py, "
            "registry_kit/roles/trust.py")
    registry_client_login_user: str | None = setting(
        None, "`docker login` on clients as this user (with a password)")
    registry_client_system_trust: bool = setting(
        False, "also add the CA to the OS trust store (restarts Docker once)", check=boolean)
    registry_client_hosts_entries: Mapping[str, str] = setting(
        {}, '{"registry.example.internal": "10.0.0.5"} for /etc/hosts', check=hosts_entries)

    @cross_check
    def _clients(r: Reader, s: dict[str, Any]) -> None:
        name = s["registry_client_login_user"]
        if name is not None:
            user = next((u for u in s["registry_users"] if u.name == name), None)
            if user is None or user.password is None:
                raise r.fail("registry_client_login_user", name,
                             "a name from registry_users with a password_env or password_file")

    # --- Scale-out: registry_kit/roles/loadbalancer.py, roles/cache.py, model/topology.py ---
    section("Scale-out: several registry_servers, registry_lb (haproxy), registry_cache "
            "(redis)", "registry_kit/roles/loadbalancer.py, registry_kit/roles/cache.py, "
            "registry_kit/model/topology.py")
    registry_internal_address: str = setting(
        None, "address other kit hosts reach this host at; None: its ssh_hostname (replicas "
        "and the cache need a non-loopback one; the cache's must be an IP)",
        check=internal_address)
    registry_lb_mode: str = setting(
        "passthrough", "passthrough (TCP, replicas terminate TLS) / terminate (haproxy serves "
        "the certificate, sets X-Forwarded-Proto/For, re-encrypts)",
        check=one_of("passthrough", "terminate"))
    registry_lb_stats: str | None = setting(
        None, "e.g. \"127.0.0.1:8404\": haproxy stats page on the load balancer's loopback",
        check=loopback_address)
    registry_lb_drain_timeout: int = setting(
        10, "seconds a drained replica gets to finish its connections before it is replaced",
        check=whole(0, 600))
    registry_cache_port: int = setting(
        6379, "redis port on the registry_cache host", check=whole(1, 65535))
    registry_cache_password: Secret | None = setting(
        None, '{"env": NAME} or {"file": PATH}; None: generated once into '
        ".registry-kit/secrets/", secret=True,
        check=secret("password", _NO_QUOTES + "{16,256}", "16 to 256 characters, without "
                     "spaces, quotes or backslashes (it goes into redis.conf)"))
    registry_cache_db: int = setting(
        0, "redis database number the replicas use (0-15)", check=whole(0, 15))
    registry_cache_maxmemory: str = setting(
        "256mb", "redis maxmemory; evicts with allkeys-lru, as the registry docs ask",
        check=matching(r"[1-9][0-9]{0,5}(kb|mb|gb)", "a size like 64mb or 1gb"))

    @cross_check
    def _scale_out(r: Reader, s: dict[str, Any]) -> None:
        if _port_of(s["registry_lb_stats"]) == s["registry_port"]:
            raise r.fail("registry_lb_stats", s["registry_lb_stats"], LOOPBACK_RULE)

    # --- Floating address over registry_lb (HA): registry_kit/roles/keepalived.py ---
    section("Floating address over registry_lb (keepalived)",
            "registry_kit/roles/keepalived.py")
    registry_lb_vip: str | None = setting(
        None, "floating address over the `registry_lb` hosts (keepalived), e.g. "
        "`\"10.0.0.100/24\"`; IPv4; clients' domain resolves to it", check=vip)
    registry_lb_vip_interface: str | None = setting(
        None, 'interface for the floating address, e.g. `"eth0"`; None: the interface '
        "whose network holds it, on each LB",
        check=matching(r"[A-Za-z0-9_.-]{1,15}", "None (the interface whose network holds "
                       "registry_lb_vip) or a network interface name like eth0", optional=True))
    registry_lb_vrrp_password: Secret | None = setting(
        None, "{\"env\": NAME} or {\"file\": PATH}, 1-8 characters (VRRP's limit); None: "
        "generated once, kept locally", secret=True,
        check=secret("password", _VRRP_PASSWORD, "1 to 8 characters (VRRP's limit), "
                     "printable, without spaces, quotes, backslashes, #, !, { or }"))
    registry_lb_vrrp_router_id: int = setting(
        51, "VRRP virtual_router_id (1-255), unique among VRRP groups on the network",
        check=whole(1, 255))
    registry_lb_vrrp_unicast: bool = setting(
        False, "True: VRRP to the other LBs' `registry_internal_address` (IPv4) instead of "
        "multicast", check=boolean)
    registry_lb_vrrp_version: int = setting(
        2, "2: VRRPv2 with the password; 3: VRRPv3 (RFC 5798), adverts faster than 1 s but "
        "no authentication (trusted segment only)", check=_vrrp_version)
    registry_lb_vrrp_advert_seconds: float = setting(
        1, "seconds between VRRP adverts (three missed: a dead holder); version 2: whole, 1-255; "
        "version 3: 0.01-40.95 in 0.01 steps", check=_advert_seconds)

    @cross_check
    def _vrrp(r: Reader, s: dict[str, Any]) -> None:
        # keepalived 2.2.7 rounds a VRRPv2 interval to whole seconds and caps VRRPv3's at
        # 40.95 s (12 bits of centiseconds), each with a warning only: refused here instead.
        seconds, key = s["registry_lb_vrrp_advert_seconds"], "registry_lb_vrrp_advert_seconds"
        if s["registry_lb_vrrp_version"] == 2:
            if seconds != int(seconds):
                raise r.fail(key, seconds, "a whole number of seconds (1 to 255) with "
                             "registry_lb_vrrp_version=2; 0.01 to 40.95 needs version 3")
            return
        if seconds > _VRRP3_MAX_ADVERT:
            raise r.fail(key, seconds, f"0.01 to {_VRRP3_MAX_ADVERT} seconds with "
                         "registry_lb_vrrp_version=3")
        if s["registry_lb_vrrp_password"] is not None:  # it would be silently unused
            raise r.fail("registry_lb_vrrp_password", "***", "None with "
                         "registry_lb_vrrp_version=3 (VRRPv3 has no authentication)")

    # --- Pull-through cache mode: registry_kit/model/pull_through.py ---
    section('Pull-through cache (registry_mode = "pull-through-cache")',
            "registry_kit/model/pull_through.py")
    registry_mode: str = setting(
        "registry", "registry / pull-through-cache (a read-only cache of "
        "`registry_proxy_remoteurl`, registry 3 only, see below)",
        check=one_of("registry", "pull-through-cache"))
    registry_proxy_remoteurl: str | None = setting(
        None, "cache: URL of the registry it caches, e.g. `https://upstream.example:5000`",
        check=_remote_url)
    registry_proxy_username: str | None = setting(
        None, "cache: user at the remote registry (with the password)",
        check=matching(_NO_QUOTES + "{1,128}", "None or a user name without spaces or quotes",
                       optional=True))
    registry_proxy_password: Secret | None = setting(
        None, 'cache: {"env": NAME} or {"file": PATH}; written only into config.yml (0600)',
        check=secret("password"), secret=True)
    registry_proxy_ttl: str | None = setting(
        None, 'cache: how long pulled content is kept, e.g. "72h"; registry 3 only (2.8: '
        "fixed 168h)", check=matching(r"[1-9][0-9]{0,5}(m|h)", "None (the registry's 168h) "
                                      "or a duration like 72h or 90m", optional=True))
    registry_proxy_anonymous_acknowledged: bool = setting(
        False, "cache: must be True to use `registry_proxy_username` on a cache without "
        "`registry_users` (anyone who reaches it reads the private upstream)", check=boolean)
    registry_proxy_plaintext_acknowledged: bool = setting(
        False, "cache: must be True to send the upstream credentials to an `http://` "
        "`registry_proxy_remoteurl` (in clear)", check=boolean)

    @cross_check
    def _cache_mode(r: Reader, s: dict[str, Any]) -> None:
        cache, url = s["registry_mode"] == "pull-through-cache", s["registry_proxy_remoteurl"]
        username = s["registry_proxy_username"]
        if cache and url is None:
            raise r.fail("registry_proxy_remoteurl", None, "the URL of the registry to cache "
                         "when registry_mode='pull-through-cache'")
        if (username is None) != (s["registry_proxy_password"] is None):
            raise r.fail("registry_proxy_username", username, "set together with "
                         "registry_proxy_password (both or neither)")
        if not cache or username is None:
            return
        # The cache pulls with these credentials for whoever asks it: without users of its
        # own, anyone who reaches it reads the private upstream.
        if r.server and not s["registry_users"] and \
                not s["registry_proxy_anonymous_acknowledged"]:
            raise r.fail("registry_proxy_username", username, "None on a cache without "
                         "registry_users: anyone who reaches the cache could pull the private "
                         "upstream's images with these credentials; add registry_users or set "
                         "registry_proxy_anonymous_acknowledged=True")
        if str(url).lower().startswith("http://") and \
                not s["registry_proxy_plaintext_acknowledged"]:
            raise r.fail("registry_proxy_remoteurl", url, "an https:// URL when "
                         "registry_proxy_username is set: the upstream password would cross "
                         "the network in clear; use https or set "
                         "registry_proxy_plaintext_acknowledged=True")

    # --- The web page: registry_kit/roles/webui.py ---
    section("The web page", "registry_kit/roles/webui.py")
    registry_webui_enabled: bool = setting(
        False, 'serve the web page (browse, delete) on `registry_webui_port` (see "The web '
        'page")', check=boolean)
    registry_webui_port: int = setting(
        5444, "the page's HTTPS port on servers: same domain, TLS and users as the registry "
        "(not `registry_token_port`)", check=whole(1, 65535))

    @cross_check
    def _webui(r: Reader, s: dict[str, Any]) -> None:
        taken = {s["registry_port"], _port_of(s["registry_debug_addr"])}
        if s["registry_access"] is not None:
            taken.add(s["registry_token_port"])
        if s["registry_webui_port"] in taken:
            raise r.fail("registry_webui_port", s["registry_webui_port"], "a port other than "
                         "registry_port, registry_token_port and registry_debug_addr's")
        if s["registry_webui_enabled"] and s["registry_tls_mode"] == "none":
            raise r.fail("registry_webui_enabled", True, "False when registry_tls_mode='none' "
                         "(the page sends passwords: it is served over the registry's TLS "
                         "only)")

    # --- Observability: registry_kit/jobs/status.py, registry_kit/roles/status_json.py ---
    section("Observability (status.py, metrics)",
            "registry_kit/jobs/status.py, registry_kit/roles/status_json.py")
    registry_status_json: bool = setting(
        False, "status.py: print one JSON document on stdout instead of the tables (schema: "
        '"Status as JSON")', check=boolean)
    registry_metrics: bool = setting(
        False, "serve Prometheus metrics on the host's internal address: the registry's "
        "(servers), haproxy's (load balancers), redis' (the cache, Debian's "
        'prometheus-redis-exporter); see "Metrics"', check=boolean)
    registry_metrics_port: int = setting(
        9195, "metrics: the endpoint's TCP port on servers, load balancers and the cache",
        check=whole(1, 65535))
    registry_metrics_bind: str | None = setting(
        None, "metrics: the IP address the endpoint listens on; None: "
        "`registry_internal_address` (then an IP)",
        check=ip_address("None (registry_internal_address) or one IP address of the host"))
    registry_metrics_allow: tuple[str, ...] = setting(
        [], 'metrics: networks allowed to scrape, e.g. `["10.0.0.5/32"]`; the host refuses '
        "every other address", check=networks)
    registry_node_exporter: bool = setting(
        False, "metrics: also serve each host's own metrics (Debian's prometheus-node-exporter:"
        " CPU, memory, disks) on `/node/metrics` of its metrics endpoint; needs registry_metrics",
        check=boolean)

    registry_audit_log: bool = setting(
        False, "servers: record each push, delete and denied request as a JSON line "
        '(journal and /var/log/registry-kit/audit.log); needs Docker 20.10+; see "Audit log"',
        check=boolean)
    registry_audit_port: int = setting(
        5002, "audit log: the receiver's TCP port on the Docker bridge's address (docker0)",
        check=whole(1, 65535))

    @cross_check
    def _audit(r: Reader, s: dict[str, Any]) -> None:
        if not s["registry_audit_log"]:
            return
        # The registry's, token server's and web page's ports listen on every address (the
        # bridge's too, unless bound elsewhere): the receiver's must differ.
        taken = {s["registry_port"]: "registry_port"}
        if s["registry_access"] is not None:
            taken[s["registry_token_port"]] = "registry_token_port"
        if s["registry_webui_enabled"]:
            taken[s["registry_webui_port"]] = "registry_webui_port"
        if s["registry_audit_port"] in taken:
            raise r.fail("registry_audit_port", s["registry_audit_port"], "a port other "
                         f"than {taken[s['registry_audit_port']]}")

    registry_prometheus_interval: int = setting(
        15, "metrics: seconds between scrapes and between rule evaluations in the control "
        "machine's generated prometheus.yml", check=whole(1, 3600))

    @cross_check
    def _metrics(r: Reader, s: dict[str, Any]) -> None:
        if not s["registry_metrics"]:
            if s["registry_node_exporter"]:
                raise r.fail("registry_node_exporter", True, "False unless registry_metrics="
                             "True (the node exporter is served through the metrics endpoint)")
            return
        if not s["registry_metrics_allow"]:
            raise r.fail("registry_metrics_allow", [], "at least one network (your "
                         "Prometheus servers') when registry_metrics=True")
        password = s["registry_cache_password"]
        if password is not None and set(password.reveal()) & set("$`"):
            # The redis exporter reads it from a systemd EnvironmentFile (roles/exporters.py),
            # where they are syntax: refused here in one line, not at planning.
            raise r.fail("registry_cache_password", password, "no $ or ` when "
                         "registry_metrics=True (the redis exporter's environment file)")
        if r.server:  # load balancers: registry_kit.model.topology.validate
            check_metrics_bind(r.host, s)
        # The registry's debug server (its /metrics) on the server's loopback, behind the
        # kit's filter (registry_kit/roles/metrics.py); 5001 as the registry's docs use.
        if s["registry_debug_addr"] is None:
            s["registry_debug_addr"] = "127.0.0.1:5001"
        debug = _port_of(s["registry_debug_addr"])
        taken = {s["registry_port"]: "registry_port", debug: "registry_debug_addr's",
                 _port_of(s["registry_lb_stats"]): "registry_lb_stats'",
                 s["registry_cache_port"]: "registry_cache_port"}
        if s["registry_webui_enabled"]:
            taken[s["registry_webui_port"]] = "registry_webui_port"
        if s["registry_access"] is not None:
            taken[s["registry_token_port"]] = "registry_token_port"
        if debug == s["registry_port"]:
            raise r.fail("registry_debug_addr", s["registry_debug_addr"], "127.0.0.1:PORT, "
                         "a port other than registry_port (registry_metrics puts the "
                         "registry's debug server there)")
        if s["registry_metrics_port"] in taken:
            raise r.fail("registry_metrics_port", s["registry_metrics_port"], "a port other "
                         f"than {taken[s['registry_metrics_port']]}")
        ports = [("registry_port", s["registry_port"], s["registry_port"]),
                 ("registry_debug_addr", s["registry_debug_addr"], debug),
                 ("registry_metrics_port", s["registry_metrics_port"],
                  s["registry_metrics_port"]),
                 *((key, s[key], s[key]) for key in ("registry_webui_port",
                                                     "registry_token_port")
                   if taken.get(s[key]) == key),
                 # A load balancer's facts server shares its loopback with the stats page.
                 ("registry_lb_stats", s["registry_lb_stats"],
                  _port_of(s["registry_lb_stats"]))]
        if s["registry_cache_port"] in LOOPBACK_PORTS:
            ports.append(("registry_cache_port", s["registry_cache_port"],
                          s["registry_cache_port"]))
        for key, value, port in ports:
            if port in LOOPBACK_PORTS:
                raise r.fail(key, value, f"a port other than {port} (with registry_metrics "
                             f"{LOOPBACK_PORTS[port]} listens there, on the loopback)")

    # --- Docker engine (every managed host): registry_kit/roles/engine.py ---
    section("Docker engine (every managed host)", "registry_kit/roles/engine.py")
    docker_install_method: str = setting(
        "distro", "distro (docker.io) / docker-ce (Docker's repository) / none",
        check=one_of("distro", "docker-ce", "none"))
    docker_ce_repo_url: str | None = setting(
        None, "docker-ce: base URL of Docker's package repository for your OS family")
    docker_min_version: str = setting(
        "1.6.0", "refuse engines older than this (the registry's minimum)", check=min_version)
    docker_registry_mirrors: tuple[str, ...] = setting(
        [], "daemon.json registry-mirrors (pull-through for Docker Hub images)",
        check=string_list(is_mirror_url, "mirror URLs like https://mirror.example:5000"))
    docker_live_restore: bool | None = setting(
        None, "daemon.json live-restore: True/False to manage it, None to leave it",
        check=optional_boolean)

    @cross_check
    def _engine(r: Reader, s: dict[str, Any]) -> None:
        url = s["docker_ce_repo_url"]
        if s["docker_install_method"] == "docker-ce" and not (
                isinstance(url, str) and re.fullmatch(_REPO_URL, url)):
            raise r.fail("docker_ce_repo_url", url, "the https:// base URL of Docker's "
                         "package repository when docker_install_method='docker-ce'")

    # --- Lifecycle: registry_kit/jobs/teardown.py, registry_kit/jobs/gc.py ---
    section("Lifecycle (teardown.py, garbage_collect.py)",
            "registry_kit/jobs/teardown.py, registry_kit/jobs/gc.py")
    registry_purge_data: bool = setting(
        False, "teardown.py: also delete registry_data_dir (announced first) if the kit "
        "created it", check=boolean)
    registry_gc_dry_run: bool = setting(
        False, "garbage_collect.py: only report what garbage collection would delete",
        check=boolean)
    registry_gc_delete_untagged: bool = setting(
        False, 'garbage_collect.py: also delete manifests no tag points to (see "Garbage '
        'collection")', check=boolean)
    registry_gc_schedule: str | None = setting(
        None, 'systemd OnCalendar, e.g. "Sun *-*-* 03:00:00": timed GC on servers (first '
        "server of each storage; refused on shared storage)",
        check=matching(_CALENDAR, "None or a systemd OnCalendar expression like "
                       "'Sun *-*-* 03:00:00' or 'weekly'", optional=True))
    docker_remove_on_teardown: bool = setting(
        False, "teardown.py: also remove the Docker engine the kit installed", check=boolean)
    registry_packages_remove_on_teardown: bool = setting(
        False, "teardown.py: also purge haproxy, socat, keepalived (LBs), redis and haproxy "
        "(cache) and the exporters the kit set up",
        check=boolean)

    @cross_check
    def _lifecycle(r: Reader, s: dict[str, Any]) -> None:
        if s["docker_remove_on_teardown"] and s["docker_install_method"] == "none":
            raise r.fail("docker_remove_on_teardown", True, "False when docker_install_method="
                         "'none' (the kit did not install the engine)")

    # --- Retention: registry_kit/model/retention.py, registry_kit/jobs/retention.py ---
    section("Retention (retention.py)",
            "registry_kit/model/retention.py, registry_kit/jobs/retention.py, "
            "registry_kit/roles/retention_timer.py")
    registry_retention_rules: tuple[retention.Rule, ...] = setting(
        [], "retention.py: which tags and manifests go, a list of rules like {'repository': "
        "'ci/*', 'keep_last': 10, 'keep_always': ['latest']} (see \"Retention\")",
        check=_retention_rules)
    registry_retention_apply: bool = setting(
        False, "retention.py: delete what the rules select, then collect garbage; False: "
        "only report", check=boolean)
    registry_retention_schedule: str | None = setting(
        None, 'systemd OnCalendar, e.g. "*-*-* 02:30:00": the rules applied (and GC) by a '
        "timer on each server (filesystem storage only)",
        check=matching(_CALENDAR, "None or a systemd OnCalendar expression like "
                       "'*-*-* 02:30:00' or 'daily'", optional=True))

    @cross_check
    def _retention(r: Reader, s: dict[str, Any]) -> None:
        schedule = s["registry_retention_schedule"]
        if schedule is None:
            return
        if not s["registry_retention_rules"]:
            raise r.fail("registry_retention_schedule", schedule, "None while "
                         "registry_retention_rules is empty (a scheduled run applies the rules)")
        driver = s["registry_storage"].driver
        if driver != "filesystem":
            # The server-side run reads and deletes files; on shared storage it would also
            # need every replica read-only, which one server cannot do (as the GC timer).
            raise r.fail("registry_retention_schedule", schedule, "None with registry_storage "
                         f"driver {driver!r}: scheduled retention runs on filesystem storage "
                         "only (schedule retention.py on the control machine instead)")

    # --- Backup and restore (filesystem storage): registry_kit/jobs/backup.py, restore.py ---
    section("Backup and restore (backup.py, restore.py; filesystem storage)",
            "registry_kit/jobs/backup.py, registry_kit/jobs/restore.py")
    registry_backup_dir: str | None = setting(
        None, "backup.py: absolute folder for backups (one subfolder per server); None: "
        "`<registry_state_dir>/backups` on the control machine", check=backup_path)
    registry_backup_host: str | None = setting(
        None, "inventory host that holds `registry_backup_dir`; None: the control machine",
        check=matching(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}", "None (the control machine) or "
                       "the name of a host in the inventory", optional=True))
    registry_backup_verify: bool = setting(
        False, "backup.py: only re-hash every blob of the backup against its digest and report "
        "mismatches (read-only: reported as no change)", check=boolean)
    registry_backup_keep: int = setting(
        7, "backup.py: generations (repositories tree + index) kept per server, 1 to 1000; "
        "blobs are shared between them by digest and removed only when no kept generation "
        "needs them", check=whole(1, 1000))
    registry_backup_tree_max_bytes: int = setting(
        4 << 30, "backup.py/restore.py: a repositories tree tar larger than this (4 GiB) stops "
        "the run (the tree is held in memory); 1 MiB to 1 TiB", shown="4 << 30",
        check=whole(1 << 20, 1 << 40))
    registry_restore_from: str | None = setting(
        None, "restore.py: backup folder holding index.json; None: "
        "`<registry_backup_dir>/<server>`", check=backup_path)
    registry_restore_generation: str | None = setting(
        None, "restore.py: the generation to restore (its folder name under `generations/`, "
        "like `20260101T120000.000Z`); None: the newest",
        check=matching(BACKUP_GENERATION_RE.pattern, "None (the newest) or the name of a "
                       "generation folder, like 20260101T120000.000Z", optional=True))

    # --- Disk guard (filesystem storage): registry_kit/roles/disk_guard.py ---
    section("Disk guard (filesystem storage)", "registry_kit/roles/disk_guard.py")
    registry_disk_readonly_percent: int | None = setting(
        90, "servers on filesystem storage: the registry turns read-only when its data "
        "filesystem is this full (percent, 50 to 99); None: no guard", check=_percent_or_none)
    registry_disk_writable_percent: int = setting(
        85, "the guard makes it writable again below this (percent, 1 to 98, under "
        "registry_disk_readonly_percent)", check=whole(1, 98))

    @cross_check
    def _disk_guard(r: Reader, s: dict[str, Any]) -> None:
        high, low = s["registry_disk_readonly_percent"], s["registry_disk_writable_percent"]
        if high is not None and low >= high:
            raise r.fail("registry_disk_writable_percent", low, "a whole number below "
                         f"registry_disk_readonly_percent ({high})")

    # --- Control machine: registry_kit/model/keystore.py, registry_kit/pyinfra_patches.py ---
    section("Control machine", "registry_kit/model/keystore.py, registry_kit/pyinfra_patches.py")
    registry_state_dir: Path = setting(
        ".registry-kit", "CA key, issued certificates, http secret (git-ignored)",
        check=control_dir)
    registry_pyinfra_patches: bool = setting(
        True, "use the kit's two pyinfra speed-ups (same result, less CPU; only on the pyinfra "
        "versions they were tested on); process-wide: False on any host of a run turns them "
        "off for the run", check=boolean)

    @property
    def tls_enabled(self) -> bool:
        return self.registry_tls_mode != "none"

    def user(self, name: str) -> User | None:
        return next((user for user in self.registry_users if user.name == name), None)


def _declarations() -> dict[str, Declaration]:
    found = {}
    for item in dataclasses.fields(Settings):
        if "setting" in item.metadata:
            default, doc, check, is_secret, shown, where = item.metadata["setting"]
            found[item.name] = Declaration(item.name, default, doc, check, is_secret, shown,
                                           where)
            where.keys.append(item.name)
    return found


DECLARATIONS = _declarations()


def known_keys() -> dict[str, Any]:
    """Every setting and its default (a fresh copy: callers may keep or change it)."""
    return {key: copy.deepcopy(item.default) for key, item in DECLARATIONS.items()}


def check_unknown_keys(host: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    """Typos in the kit's own keys: every unknown registry_* key, and a docker_* key only when
    it is one slip away from one of the kit's (other deploys use docker_* keys of their own)."""
    known = list(known)
    for key in data:
        if key in known or not key.startswith(("registry_", "docker_")):
            continue
        close = difflib.get_close_matches(key, known, n=1,
                                          cutoff=0.6 if key.startswith("registry_") else 0.9)
        if key.startswith("docker_") and not close:
            continue
        hint = f"did you mean {close[0]}?" if close else "see registry_kit/model/settings.py"
        raise fail(host, key, data[key], f"unknown setting; {hint}")


def load(host: str, data: Mapping[str, Any], *, base_dir: Path | None = None,
         known: Mapping[str, Any] | None = None, server: bool = True) -> Settings:
    """Validate one host's data (missing settings from `known`, by default the declared
    defaults) into Settings. `server`: the host runs a registry (registry_servers), so the
    open-registry checks apply to it. Relative paths (the state folder, password and
    certificate files) are the user's: they resolve against `base_dir`, by default the
    current directory."""
    known = known if known is not None else known_keys()
    check_unknown_keys(host, data, known)
    merged = {**known, **{k: v for k, v in data.items() if k in known}}
    r = Reader(host, merged, Path.cwd() if base_dir is None else base_dir, data, server)
    # First, for every setting: no value reaches a file or a command with a line break,
    # NUL or another control character in it (repr shows them escaped, on one line).
    for key in sorted(merged):
        found = find_unsafe(merged[key])
        if found is not None:
            shown = "***" if DECLARATIONS[key].secret else found
            raise r.fail(key, shown, "text without line breaks or control characters")
    values: dict[str, Any] = {"host": host}
    for key, item in DECLARATIONS.items():
        values[key] = item.check(r, key, merged[key])
    for block in SECTIONS:
        for check in block.checks:
            check(r, values)
    return Settings(**values)


def check_group_conflicts(host: str, groups_data: Mapping[str, Mapping[str, Any]],
                          host_data: Mapping[str, Any]) -> None:
    """A host in several groups whose group data disagree on a key it does not set itself:
    which value wins depends on group order, so refuse instead of guessing."""
    seen: dict[str, tuple[str, Any]] = {}
    for group, data in groups_data.items():
        for key, value in data.items():
            if not key.startswith(("registry_", "docker_")) or key in host_data:
                continue
            if key in seen and seen[key][1] != value:
                other_group, other = seen[key]
                raise fail(host, key, value, f"one value; group {other_group} sets {other!r} "
                           f"and group {group} sets {value!r}: set it for the host instead")
            seen[key] = (group, value)


# The inventory groups the kit acts on; a host in several must not get conflicting values.
KIT_GROUPS = ("registry_servers", "registry_clients", "registry_lb", "registry_cache")


def host_data(inventory: Any, target: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A host's data in pyinfra's order (host.py HostData: --data, host, its groups, all),
    above `defaults`: the call's deploy data (its data_defaults and settings=). pyinfra adds
    deploy data to the host being planned only; the kit validates every host of the run up
    front, so it puts the same deploy data under each."""
    merged = dict(defaults)
    for layer in (inventory.get_data(), inventory.get_groups_data(target.groups),
                  inventory.get_host_data(target.name), inventory.get_override_data()):
        merged.update(layer)
    return merged


def load_inventory(inventory: Any, *, groups: Sequence[str] = KIT_GROUPS,
                   server_group: str = "registry_servers",
                   deploy_data: Mapping[str, Any] | None = None) -> dict[str, Settings]:
    """The Settings of every inventory host in one of `groups` (the groups a call names; no
    other host is read), validated. `deploy_data`: the data below group data (pyinfra's
    deploy data: the call's data_defaults with its settings= over them). A host in several
    of `groups` must get the same value from each. Raises SettingsError for the first bad
    value."""
    defaults = {**known_keys(), **(deploy_data or {})}
    check_unknown_keys("settings", defaults, DECLARATIONS)
    loaded: dict[str, Settings] = {}
    for target in inventory:
        named = [group for group in target.groups if group in groups]
        if not named:
            continue
        if len(named) > 1:
            check_group_conflicts(
                target.name, {group: inventory.get_group_data(group) for group in named},
                {**inventory.get_host_data(target.name), **inventory.get_override_data()})
        loaded[target.name] = load(target.name, host_data(inventory, target, defaults),
                                   server=server_group in target.groups)
    return loaded
