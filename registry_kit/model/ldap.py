"""Users and groups from a directory (LDAP, Active Directory): the `registry_ldap` setting,
checked on the control machine, and the part of the token server's policy it becomes.

    registry_ldap = {
        "url": "ldaps://ldap.example.internal",      # or ldap://...:389 with start_tls
        "base_dn": "ou=people,dc=example,dc=internal",
        "bind_dn": "cn=registry,dc=example,dc=internal",
        "bind_password_env": "LDAP_BIND_PASSWORD",   # or bind_password_file (control machine)
        "user_filter": "(&(objectClass=inetOrgPerson)(uid={user}))",
        "group_filter": "(&(objectClass=groupOfNames)(member={dn}))",   # or member_of
        "ca_file": "ldap-ca.crt",                    # control machine; None: system CAs
    }

The token server (scripts/registry-token-server.py) searches `base_dn` with `user_filter`
as the service account (`{user}` replaced by the RFC 4515-escaped name), then binds as the
entry it found with the given password. Groups come from `group_filter` (searched under
`group_base_dn`, default `base_dn`; the group's `group_name_attribute`, default `cn`) or
from the user entry's `member_of` attribute (the first RDN value of each DN). TLS is
verified against `ca_file`; plain `ldap://` without `start_tls` is refused unless
`registry_ldap_plaintext_acknowledged` is True (the bind password and every user's
password would cross the network in clear).

Pure data and checks: nothing here touches a host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_kit.model.checks import Reader, Secret, is_hostname, is_ip, masked_repr

KEY = "registry_ldap"
KEYS = frozenset({"url", "base_dn", "bind_dn", "bind_password_env", "bind_password_file",
                  "user_filter", "group_filter", "group_base_dn", "group_name_attribute",
                  "member_of", "ca_file", "start_tls", "timeout"})
_URL = re.compile(r"(ldaps?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]{1,5}))?/?")
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")
# A DN as the kit passes it on: printable, no control characters (checked for every
# setting), at most 1024 characters, at least one attribute=value.
_DN = re.compile(r"(?=.{3,1024}\Z)[^=,]+=[^,]+(,[^=,]+=[^,]+)*")


@masked_repr("bind_password")
@dataclass(frozen=True)
class Directory:
    """`registry_ldap`, checked."""
    url: str
    host: str
    port: int
    tls: str  # "ldaps", "starttls" or "none" (acknowledged)
    base_dn: str
    bind_dn: str
    bind_password: Secret
    user_filter: str
    group_filter: str | None
    group_base_dn: str
    group_name_attribute: str
    member_of: str | None
    ca_file: Path | None
    timeout: int

    def document(self, ca_path: str | None) -> dict[str, Any]:
        """What the token server reads (policy.json's "ldap"): no password (it has its own
        0600 file); `ca_path` where the CA file is on the server."""
        return {"host": self.host, "port": self.port, "tls": self.tls,
                "base_dn": self.base_dn, "bind_dn": self.bind_dn,
                "user_filter": self.user_filter, "group_filter": self.group_filter,
                "group_base_dn": self.group_base_dn,
                "group_name_attribute": self.group_name_attribute,
                "member_of": self.member_of, "ca_file": ca_path, "timeout": self.timeout}


def _filter(r: Reader, shown: Any, value: Any, name: str, fields: tuple[str, ...]) -> str:
    allowed = (f"{name}: an LDAP filter in parentheses holding " +
               " or ".join("{" + f + "}" for f in fields) +
               ", like (uid={user}), without other braces")
    if not isinstance(value, str) or not value.startswith("(") or not value.endswith(")") \
            or len(value) > 1024:
        raise r.fail(KEY, shown, allowed)
    stripped = value
    for placeholder in fields:
        stripped = stripped.replace("{" + placeholder + "}", "")
    if stripped == value or "{" in stripped or "}" in stripped:
        raise r.fail(KEY, shown, allowed)
    return value


def _dn(r: Reader, shown: Any, value: Any, name: str) -> str:
    if not isinstance(value, str) or not _DN.fullmatch(value):
        raise r.fail(KEY, shown, f"{name}: a distinguished name like "
                     "ou=people,dc=example,dc=internal")
    return value


def _url(r: Reader, shown: Any, value: Any) -> tuple[str, str, int]:
    match = _URL.fullmatch(value) if isinstance(value, str) else None
    host = match[2].strip("[]") if match else ""
    port = int(match[3]) if match and match[3] else 0
    if not match or not (is_hostname(host) or is_ip(host)) or not 0 <= port <= 65535:
        raise r.fail(KEY, shown, "url: ldaps://HOST[:PORT] or ldap://HOST[:PORT]")
    scheme = match[1]
    return scheme, host, port or (636 if scheme == "ldaps" else 389)


def _tls(r: Reader, shown: Any, scheme: str, start_tls: Any, plaintext_ok: bool) -> str:
    if not isinstance(start_tls, bool):
        raise r.fail(KEY, shown, "start_tls: True or False")
    if scheme == "ldaps":
        if start_tls:
            raise r.fail(KEY, shown, "start_tls: False with ldaps:// (already TLS)")
        return "ldaps"
    if start_tls:
        return "starttls"
    if not plaintext_ok:
        raise r.fail(KEY, shown, "ldaps:// or ldap:// with start_tls: True (plain ldap:// "
                     "sends every password in clear; set "
                     "registry_ldap_plaintext_acknowledged=True if that is what you want)")
    return "none"


def _optional(r: Reader, shown: Any, value: Any, name: str) -> str | None:
    if value is not None and not (isinstance(value, str) and _ATTRIBUTE.fullmatch(value)):
        raise r.fail(KEY, shown, f"{name}: None or an attribute name like memberOf")
    return value


def parse(r: Reader, value: Any, plaintext_ok: bool) -> Directory | None:
    """`registry_ldap` checked (None: no directory). One-line errors name the setting; the
    shown value never holds the password (it is only named by env or file)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise r.fail(KEY, value, "None or a mapping with url, base_dn, bind_dn, "
                     "bind_password_env or bind_password_file and user_filter (see README)")
    unknown = sorted(map(str, set(value) - KEYS))
    if unknown:
        raise r.fail(KEY, unknown, "keys among " + ", ".join(sorted(KEYS)))
    shown = dict(value)
    for key in ("url", "base_dn", "bind_dn"):
        if key not in value:
            raise r.fail(KEY, shown, f"a mapping with {key}")
    scheme, host, port = _url(r, shown, value["url"])
    tls = _tls(r, shown, scheme, value.get("start_tls", False), plaintext_ok)
    password = r.secret_source(KEY, {k: v for k, v in value.items()
                                     if k in ("bind_password_env", "bind_password_file")},
                               "bind_password")
    if not password.reveal():
        raise r.fail(KEY, shown, "a bind password that is not empty (an empty one is an "
                     "anonymous bind)")
    group_filter = value.get("group_filter")
    member_of = _optional(r, shown, value.get("member_of"), "member_of")
    if group_filter is not None and member_of is not None:
        raise r.fail(KEY, shown, "group_filter or member_of, not both")
    timeout = value.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 60:
        raise r.fail(KEY, shown, "timeout: seconds, a whole number from 1 to 60")
    ca_file = value.get("ca_file")
    base_dn = _dn(r, shown, value["base_dn"], "base_dn")
    return Directory(
        url=value["url"], host=host, port=port, tls=tls, base_dn=base_dn,
        bind_dn=_dn(r, shown, value["bind_dn"], "bind_dn"), bind_password=password,
        user_filter=_filter(r, shown, value.get("user_filter", "(uid={user})"),
                            "user_filter", ("user",)),
        group_filter=None if group_filter is None else
        _filter(r, shown, group_filter, "group_filter", ("dn", "user")),
        group_base_dn=_dn(r, shown, value.get("group_base_dn", base_dn), "group_base_dn"),
        group_name_attribute=_optional(r, shown, value.get("group_name_attribute", "cn"),
                                       "group_name_attribute") or "cn",
        member_of=member_of,
        ca_file=None if ca_file is None else r.local_path(KEY, ca_file),
        timeout=timeout)
