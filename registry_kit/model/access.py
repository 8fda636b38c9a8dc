"""Access control per repository: the model, its validation, and the policy file the token
server reads (registry_kit/scripts/registry-token-server.py).

Settings: `registry_groups` ({"readers": ["alice", "bob"]}) and `registry_access_rules`
(None: every user may do everything; a list: only what a rule grants is allowed). Both go
through token auth; without rules and with `registry_auth_mode = "auto"` the policy is
`all_rights()`: every user may pull, push and delete everything and list the catalog,
exactly what htpasswd auth grants, so the registry checks a token's signature per request
instead of a bcrypt hash. A rule:

    {"repository": "team-a/*", "actions": ["pull", "push"], "users": ["ci"],
     "groups": ["readers"], "anonymous": False}

`*` in a pattern matches any characters, `/` included (`team-a/*` covers `team-a/app` and
`team-a/x/app`; `*` alone covers every repository). Anonymous clients may only be granted
`pull`. The catalog (`/v2/_catalog`) lists every repository and the registry cannot filter
it per user, so the token server grants it only to users who may pull `*`.

Pure data and checks: nothing here touches a host. Errors are one line in the house format
(`host: setting KEY=VALUE is not allowed: WHAT IS`), raised as AccessError, which
registry_kit.model.settings turns into its SettingsError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ACTIONS = ("pull", "push", "delete")
RULE_KEYS = frozenset({"repository", "actions", "users", "groups", "ldap_groups",
                       "anonymous"})
# A repository name component (distribution's reference grammar) where `*` may stand for any
# run of characters; components are joined by "/".
_PATTERN_COMPONENT = re.compile(r"(?=.{1,128}\Z)[a-z0-9*]+(?:(?:[._]|__|-+)[a-z0-9*]+)*")
_GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class AccessError(ValueError):
    """A bad access setting; str() is the one line shown to the user."""


@dataclass(frozen=True)
class Rule:
    repository: str
    actions: tuple[str, ...]
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    anonymous: bool = False
    ldap_groups: tuple[str, ...] = ()  # directory groups (registry_ldap), by name

    @property
    def regex(self) -> str:
        return pattern_regex(self.repository)


@dataclass(frozen=True)
class Policy:
    groups: Mapping[str, tuple[str, ...]]
    rules: tuple[Rule, ...]
    implicit: bool = False  # all_rights(): no rules were given

    def members(self, rule: Rule) -> frozenset[str]:
        names = set(rule.users)
        for group in rule.groups:
            names.update(self.groups[group])
        return frozenset(names)

    def effective(self, user: str | None) -> list[tuple[str, tuple[str, ...]]]:
        """(pattern, actions) granted to `user` (None: anonymous), merged per pattern, in
        rule order. Anonymous grants apply to every user too: what anyone may pull, a
        logged-in user may pull as well."""
        merged: dict[str, set[str]] = {}
        for rule in self.rules:
            if rule.anonymous or (user is not None and user in self.members(rule)):
                merged.setdefault(rule.repository, set()).update(rule.actions)
        return [(pattern, tuple(a for a in ACTIONS if a in actions))
                for pattern, actions in merged.items()]

    def allowed(self, user: str | None, repository: str) -> set[str]:
        """The actions `user` may take on `repository`."""
        return {action for pattern, actions in self.effective(user)
                if re.fullmatch(pattern_regex(pattern), repository) for action in actions}

    def catalog_ldap_groups(self) -> list[str]:
        """Directory groups whose members may list the catalog: a rule grants them pull on
        every repository."""
        return sorted({group for rule in self.rules if rule.repository == "*"
                       and "pull" in rule.actions for group in rule.ldap_groups})

    def catalog_users(self, users: Iterable[str]) -> list[str]:
        """Users who may list the catalog: those who may pull every repository."""
        return [user for user in users if "pull" in dict(self.effective(user)).get("*", ())]


def pattern_regex(pattern: str) -> str:
    """The anchored-by-fullmatch regex of a repository pattern: `*` is any characters."""
    return ".*".join(re.escape(part) for part in pattern.split("*"))


def is_pattern(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 255 and all(
        _PATTERN_COMPONENT.fullmatch(part) for part in value.split("/"))


def _fail(host: str, key: str, value: Any, allowed: str) -> AccessError:
    return AccessError(f"{host}: setting {key}={value!r} is not allowed: {allowed}")


def _names(host: str, key: str, shown: Any, value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _fail(host, key, shown, f"{what}: a list of names")
    return tuple(value)


def parse_groups(host: str, value: Any, users: Iterable[str]) -> dict[str, tuple[str, ...]]:
    key = "registry_groups"
    known = set(users)
    if not isinstance(value, Mapping):
        raise _fail(host, key, value, "a mapping of group name to a list of user names")
    groups: dict[str, tuple[str, ...]] = {}
    for name, members in value.items():
        if not isinstance(name, str) or not _GROUP_RE.fullmatch(name):
            raise _fail(host, key, name, "group names of letters, digits, '.', '_', '-'")
        members = _names(host, key, {name: members}, members, f"group {name!r}")
        for member in members:
            if member not in known:
                raise _fail(host, key, {name: list(members)},
                            f"group {name!r}: user {member!r} is not in registry_users")
        groups[name] = members
    return groups


def _ldap_groups(host: str, key: str, shown: Any, value: Any, directory: bool) \
        -> tuple[str, ...]:
    """A rule's directory groups: names as the directory spells them (matched exactly, case
    included), only with registry_ldap set."""
    found = _names(host, key, shown, value, "ldap_groups")
    if found and not directory:
        raise _fail(host, key, shown, "ldap_groups only with registry_ldap set")
    for name in found:
        if not name or len(name) > 256:
            raise _fail(host, key, shown, "ldap_groups: names of 1 to 256 characters")
    return found


def parse_rules(host: str, value: Any, users: Iterable[str],
                groups: Mapping[str, tuple[str, ...]], directory: bool = False) \
        -> tuple[Rule, ...]:
    key = "registry_access_rules"
    known = set(users)
    if not isinstance(value, list | tuple):
        raise _fail(host, key, value, "None or a list of rules like {'repository': "
                    "'team-a/*', 'actions': ['pull', 'push'], 'users': ['ci']}")
    rules = []
    for entry in value:
        if not isinstance(entry, Mapping) or "repository" not in entry or \
                "actions" not in entry or set(entry) - RULE_KEYS:
            raise _fail(host, key, entry, "a rule with 'repository' and 'actions', and "
                        "'users', 'groups', 'ldap_groups' or 'anonymous' (no other keys)")
        shown = dict(entry)
        pattern = entry["repository"]
        if not is_pattern(pattern):
            raise _fail(host, key, shown, f"repository pattern {pattern!r}: lowercase "
                        "letters, digits, '.', '_', '-' and '*' in '/'-separated parts "
                        "(like team-a/*, library/*, *)")
        actions = _names(host, key, shown, entry["actions"], "actions")
        unknown = [a for a in actions if a not in ACTIONS]
        if not actions or unknown:
            raise _fail(host, key, shown, "actions: one or more of " + ", ".join(ACTIONS))
        rule_users = _names(host, key, shown, entry.get("users", []), "users")
        rule_groups = _names(host, key, shown, entry.get("groups", []), "groups")
        for user in rule_users:
            if user not in known:
                raise _fail(host, key, shown, f"user {user!r} is not in registry_users")
        for group in rule_groups:
            if group not in groups:
                raise _fail(host, key, shown, f"group {group!r} is not in registry_groups")
        anonymous = entry.get("anonymous", False)
        if not isinstance(anonymous, bool):
            raise _fail(host, key, shown, "anonymous: True or False")
        if anonymous and set(actions) - {"pull"}:
            raise _fail(host, key, shown, "anonymous clients may only be granted pull "
                        "(push and delete need a user)")
        rule_ldap = _ldap_groups(host, key, shown, entry.get("ldap_groups", []), directory)
        if not (rule_users or rule_groups or rule_ldap or anonymous):
            raise _fail(host, key, shown, "a rule that grants to users, groups or anonymous "
                        "(or ldap_groups)")
        rules.append(Rule(repository=pattern, actions=tuple(a for a in ACTIONS if a in actions),
                          users=rule_users, groups=rule_groups, anonymous=anonymous,
                          ldap_groups=rule_ldap))
    return tuple(rules)


def parse(host: str, groups_value: Any, rules_value: Any, users: Iterable[str],
          directory: bool = False) -> Policy | None:
    """The access policy, or None when `registry_access_rules` is None (no access control:
    every user may do everything, as without this module). `directory`: registry_ldap is
    set, so rules may name `ldap_groups`, and rules are required (which directory users
    get what is the site's choice, not everything by default)."""
    names = list(users)
    groups = parse_groups(host, groups_value, names)
    if rules_value is None:
        if directory:
            raise _fail(host, "registry_access_rules", None, "a list of rules when "
                        "registry_ldap is set (rules with ldap_groups say what directory "
                        "users may do)")
        if groups:
            raise _fail(host, "registry_groups", dict(groups_value), "empty unless "
                        "registry_access_rules is set (groups only take effect in rules)")
        return None
    return Policy(groups=groups, rules=parse_rules(host, rules_value, names, groups,
                                                   directory))


def all_rights(users: Iterable[str]) -> Policy:
    """The policy without rules: every user may do everything (htpasswd auth's rights),
    anonymous nothing."""
    return Policy(groups={}, rules=(Rule(repository="*", actions=ACTIONS,
                                         users=tuple(users)),), implicit=True)


def policy_document(policy: Policy, users: Iterable[str], *, service: str, issuer: str) \
        -> dict[str, Any]:
    """What the token server reads (JSON): groups resolved into user lists, each pattern as
    its regex, so the server only matches and never interprets settings."""
    names = list(users)
    return {
        "service": service,
        "issuer": issuer,
        "rules": [{"repository": rule.repository, "regex": rule.regex,
                   "actions": list(rule.actions), "users": sorted(policy.members(rule)),
                   "anonymous": rule.anonymous,
                   **({"ldap_groups": sorted(rule.ldap_groups)} if rule.ldap_groups else {})}
                  for rule in policy.rules],
        "catalog_users": policy.catalog_users(names),
        **({"catalog_ldap_groups": policy.catalog_ldap_groups()}
           if any(rule.ldap_groups for rule in policy.rules) else {}),
    }


def describe(policy: Policy | None, users: Iterable[str]) -> list[str]:
    """Effective rules per user, one line each (status.py)."""
    if policy is None or policy.implicit:
        return ["access control off: every user may pull, push and delete everything" +
                (" (token auth)" if policy is not None else "")]
    names = list(users)
    lines = []
    for name in [*names, None]:
        granted = policy.effective(name)
        shown = "; ".join(f"{pattern}: {','.join(actions)}" for pattern, actions in granted)
        catalog = " (+catalog)" if name is not None and name in policy.catalog_users(names) \
            else ""
        lines.append(f"{name or '(anonymous)'}: {shown or 'nothing'}{catalog}")
    for group in sorted({group for rule in policy.rules for group in rule.ldap_groups}):
        # Directory groups: what their members get on top of what anonymous gets.
        shown = "; ".join(f"{rule.repository}: {','.join(rule.actions)}"
                          for rule in policy.rules if group in rule.ldap_groups)
        catalog = " (+catalog)" if group in policy.catalog_ldap_groups() else ""
        lines.append(f"ldap group {group}: {shown}{catalog}")
    return lines
