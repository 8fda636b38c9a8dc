"""Retention rules (retention.py): the rules' model and checks, and the planner that decides,
from what a server's storage holds, which tags and manifests go.

Setting `registry_retention_rules`, a list of rules:

    {"repository": "ci/*", "tags": ["*"], "exclude": ["release-*"],
     "keep_last": 10, "keep_days": 30, "keep_always": ["latest", "v*"], "untagged": "delete"}

`repository` uses the access rules' syntax (registry_kit.model.access: `*` is any run of
characters, `/` included); `tags`, `exclude` and `keep_always` are tag patterns (`*` the
same). A rule judges the tags it covers (its repositories, `tags` minus `exclude`) when it
has a keep (`keep_last`, `keep_days`, `keep_always`): a tag one of its rules keeps stays,
a tag judged by rules none of which keeps it goes, and a tag no rule judges stays.
`untagged: "delete"` deletes manifests no tag points to in the rule's repositories.

Manifests follow what points at them: the manifest of a kept tag, the children of a kept
index and an artifact whose `subject` is kept all stay, so a tag whose manifest stays loses
only its tag. A deleted manifest takes its children and its artifacts with it unless
something kept holds them.

Pure data and checks: nothing here touches a host. Errors are one line in the house format,
raised as RetentionError, which registry_kit.model.settings turns into its SettingsError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from registry_kit.model.access import is_pattern, pattern_regex

KEY = "registry_retention_rules"
RULE_KEYS = ("repository", "tags", "exclude", "keep_last", "keep_days", "keep_always",
             "untagged")
MAX_COUNT = 1_000_000
# distribution's tag grammar; a tag pattern is a tag where `*` stands for any run of
# characters, and must match at least one valid tag.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_TAG_PATTERN = re.compile(r"[A-Za-z0-9_.*-]{1,128}")
DAY = 86400
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")


class RetentionError(ValueError):
    """A bad retention rule; str() is the one line shown to the user."""


@dataclass(frozen=True)
class Rule:
    repository: str
    tags: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    keep_last: int | None = None
    keep_days: int | None = None
    keep_always: tuple[str, ...] = ()
    untagged_delete: bool = False

    @property
    def judges_tags(self) -> bool:
        return self.keep_last is not None or self.keep_days is not None or \
            bool(self.keep_always)

    def covers_repository(self, name: str) -> bool:
        return re.fullmatch(pattern_regex(self.repository), name) is not None

    def covers_tag(self, tag: str) -> bool:
        return _matches(self.tags, tag) and not _matches(self.exclude, tag)


def _matches(patterns: Iterable[str], tag: str) -> bool:
    return any(re.fullmatch(pattern_regex(p), tag) for p in patterns)


def is_tag_pattern(value: object) -> bool:
    """A tag pattern that matches at least one valid tag (`*` tried empty and as one
    character: a pattern that fails both, like `.x*`, matches nothing valid)."""
    return isinstance(value, str) and _TAG_PATTERN.fullmatch(value) is not None and any(
        _TAG.fullmatch(value.replace("*", fill)) for fill in ("", "a"))


def _fail(host: str, value: Any, allowed: str) -> RetentionError:
    return RetentionError(f"{host}: setting {KEY}={value!r} is not allowed: {allowed}")


RULE_SHAPE = ("a rule with 'repository' and one or more of 'keep_last', 'keep_days', "
              "'keep_always', 'untagged' (and optionally 'tags', 'exclude'; no other keys)")


def _patterns(host: str, shown: Any, entry: Mapping[str, Any], key: str,
              default: tuple[str, ...]) -> tuple[str, ...]:
    value = entry.get(key, list(default))
    if not isinstance(value, list | tuple) or not all(is_tag_pattern(v) for v in value):
        raise _fail(host, shown, f"{key}: a list of tag patterns (letters, digits, '_', '.', "
                    "'-' and '*', like 'v*' or 'latest') each matching some valid tag (a tag "
                    "starts with a letter, digit or '_', at most 128 characters)")
    if key == "tags" and not value:
        raise _fail(host, shown, "tags: at least one tag pattern (default ['*'])")
    return tuple(value)


def _count(host: str, shown: Any, entry: Mapping[str, Any], key: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _fail(host, shown, f"{key}: a whole number from 0 to {MAX_COUNT}")
    return value


def parse_rule(host: str, entry: Any) -> Rule:
    if not isinstance(entry, Mapping) or "repository" not in entry or \
            set(entry) - set(RULE_KEYS):
        raise _fail(host, entry, RULE_SHAPE)
    shown = dict(entry)
    if not is_pattern(entry["repository"]):
        raise _fail(host, shown, f"repository pattern {entry['repository']!r}: lowercase "
                    "letters, digits, '.', '_', '-' and '*' in '/'-separated parts (like "
                    "team-a/*, library/*, *)")
    untagged = entry.get("untagged", "keep")
    if untagged not in ("delete", "keep"):
        raise _fail(host, shown, "untagged: 'delete' or 'keep'")
    rule = Rule(repository=entry["repository"], tags=_patterns(host, shown, entry, "tags", ("*",)),
                exclude=_patterns(host, shown, entry, "exclude", ()),
                keep_last=_count(host, shown, entry, "keep_last"),
                keep_days=_count(host, shown, entry, "keep_days"),
                keep_always=_patterns(host, shown, entry, "keep_always", ()),
                untagged_delete=untagged == "delete")
    if not rule.judges_tags and not rule.untagged_delete:
        raise _fail(host, shown, RULE_SHAPE)
    if rule.judges_tags and not rule.keep_always and not rule.keep_last and not rule.keep_days:
        raise _fail(host, shown, "a rule that keeps some tags: keep_last 0 (or keep_days 0) "
                    "with no other keep would delete every tag it covers; raise it, add "
                    "keep_days or keep_always, or delete the repository instead")
    return rule


def parse(host: str, value: Any) -> tuple[Rule, ...]:
    """The rules of `registry_retention_rules` ([] or None: no rules), or RetentionError."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise _fail(host, value, "a list of rules like {'repository': 'ci/*', 'keep_last': "
                    "10, 'keep_always': ['latest']}")
    return tuple(parse_rule(host, entry) for entry in value)
