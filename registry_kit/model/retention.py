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

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


def rule_document(rule: Rule) -> dict[str, Any]:
    """The rule as registry_retention_rules writes it (parse_rule reads it back): what the
    server-side run (scripts/registry-retention.py) is given, as JSON."""
    document: dict[str, Any] = {"repository": rule.repository, "tags": list(rule.tags),
                                "exclude": list(rule.exclude)}
    if rule.keep_last is not None:
        document["keep_last"] = rule.keep_last
    if rule.keep_days is not None:
        document["keep_days"] = rule.keep_days
    if rule.keep_always:
        document["keep_always"] = list(rule.keep_always)
    document["untagged"] = "delete" if rule.untagged_delete else "keep"
    return document


# --- What a storage holds (gathered on the server by retention.py) ----------

@dataclass(frozen=True)
class Tag:
    name: str
    digest: str
    pushed: float  # the storage's time for the tag's current link (push time), epoch seconds


@dataclass(frozen=True)
class Manifest:
    digest: str
    size: int  # of the manifest blob itself
    media_type: str = ""
    children: tuple[str, ...] = ()  # an index's manifests
    subject: str | None = None  # an artifact's subject (signatures, SBOMs)
    blobs: tuple[tuple[str, int], ...] = ()  # config and layers: (digest, size)


@dataclass(frozen=True)
class Repository:
    name: str
    tags: tuple[Tag, ...]
    manifests: Mapping[str, Manifest]  # digest -> manifest: every revision of the repository


def manifest_from_document(digest: str, size: int, document: Any) -> Manifest:
    """A Manifest from its parsed JSON (anything unexpected is read as no references)."""
    doc = document if isinstance(document, Mapping) else {}

    def descriptors(key: str) -> list[Mapping[str, Any]]:
        value = doc.get(key)
        items = value if isinstance(value, list) else [value] if isinstance(value, Mapping) \
            else []
        return [d for d in items if isinstance(d, Mapping) and isinstance(d.get("digest"), str)]

    def size_of(d: Mapping[str, Any]) -> int:
        return d["size"] if isinstance(d.get("size"), int) and d["size"] >= 0 else 0

    subject = descriptors("subject")
    return Manifest(
        digest=digest, size=size, media_type=str(doc.get("mediaType") or ""),
        children=tuple(d["digest"] for d in descriptors("manifests")),
        subject=subject[0]["digest"] if subject else None,
        blobs=tuple((d["digest"], size_of(d)) for d in descriptors("config") +
                    descriptors("layers") + descriptors("blobs")))


# --- The plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TagDecision:
    tag: Tag
    keep: bool
    reason: str
    tag_only: bool = False  # deleted, but its manifest stays (something kept holds it)


@dataclass(frozen=True)
class RepositoryPlan:
    name: str
    tags: tuple[TagDecision, ...]
    delete_manifests: tuple[tuple[str, str], ...]  # (digest, reason)

    @property
    def deleted_tags(self) -> tuple[TagDecision, ...]:
        return tuple(d for d in self.tags if not d.keep)

    @property
    def empty(self) -> bool:
        return not self.deleted_tags and not self.delete_manifests


@dataclass(frozen=True)
class Plan:
    repositories: tuple[RepositoryPlan, ...]
    freed_bytes: int  # blobs referenced only by deleted manifests: what GC then frees
    rules: tuple[Rule, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return all(r.empty for r in self.repositories)


def _age(now: float, pushed: float) -> str:
    return f"{max(0.0, now - pushed) / DAY:.1f} days ago"


def _rule_keeps(rule: Rule, number: int, tags: Sequence[Tag], now: float) -> dict[str, str]:
    """tag name -> why rule `number` keeps it, for the tags it covers."""
    kept: dict[str, str] = {}
    newest = sorted(tags, key=lambda t: (t.pushed, t.name), reverse=True)
    for tag in newest:
        if _matches(rule.keep_always, tag.name):
            pattern = next(p for p in rule.keep_always if re.fullmatch(pattern_regex(p),
                                                                        tag.name))
            kept.setdefault(tag.name, f"keep_always {pattern!r} (rule {number})")
    for rank, tag in enumerate(newest[:rule.keep_last or 0], start=1):
        kept.setdefault(tag.name, f"#{rank} of the last {rule.keep_last} pushed (rule "
                        f"{number})")
    if rule.keep_days:
        for tag in tags:
            if tag.pushed >= now - rule.keep_days * DAY:
                kept.setdefault(tag.name, f"pushed {_age(now, tag.pushed)}, within "
                                f"{rule.keep_days} days (rule {number})")
    return kept


def _why_deleted(rule: Rule, number: int, tag: Tag, now: float) -> str:
    parts = []
    if rule.keep_last is not None:
        parts.append(f"not among the last {rule.keep_last} pushed")
    if rule.keep_days is not None:
        parts.append(f"pushed {_age(now, tag.pushed)} (over {rule.keep_days} days)")
    if rule.keep_always:
        parts.append(f"matches no keep_always {list(rule.keep_always)}")
    return f"rule {number}: " + ", ".join(parts)


def judge_tags(repository: Repository, rules: Sequence[Rule], now: float) \
        -> dict[str, tuple[bool, str]]:
    """tag name -> (keep, reason) from the rules alone (before manifests are considered)."""
    judging = [(n, rule) for n, rule in enumerate(rules, start=1)
               if rule.judges_tags and rule.covers_repository(repository.name)]
    keeps: dict[str, str] = {}
    for number, rule in judging:
        covered = [t for t in repository.tags if rule.covers_tag(t.name)]
        for name, why in _rule_keeps(rule, number, covered, now).items():
            keeps.setdefault(name, why)
    decided: dict[str, tuple[bool, str]] = {}
    for tag in repository.tags:
        first = next(((n, r) for n, r in judging if r.covers_tag(tag.name)), None)
        if tag.name in keeps:
            decided[tag.name] = (True, keeps[tag.name])
        elif first is None:
            decided[tag.name] = (True, "no rule covers it")
        else:
            decided[tag.name] = (False, _why_deleted(first[1], first[0], tag, now))
    return decided


def _closure(start: Iterable[str], manifests: Mapping[str, Manifest]) -> set[str]:
    """`start` and what it holds: an index's children, and artifacts whose subject is in."""
    held = set(start)
    referrers: dict[str, list[str]] = {}
    for manifest in manifests.values():
        if manifest.subject is not None:
            referrers.setdefault(manifest.subject, []).append(manifest.digest)
    todo = list(held)
    while todo:
        digest = todo.pop()
        found = list(manifests[digest].children) if digest in manifests else []
        found += referrers.get(digest, [])
        for other in found:
            if other not in held:
                held.add(other)
                todo.append(other)
    return held


def plan_repository(repository: Repository, rules: Sequence[Rule], now: float) \
        -> RepositoryPlan:
    judged = judge_tags(repository, rules, now)
    manifests = repository.manifests
    # Artifacts follow their subject: a tagged signature of a kept image keeps its tag.
    kept = _closure((t.digest for t in repository.tags if judged[t.name][0]), manifests)
    for tag in repository.tags:
        subject = manifests[tag.digest].subject if tag.digest in manifests else None
        if not judged[tag.name][0] and subject is not None and subject in kept:
            judged[tag.name] = (True, f"artifact of kept {subject[:19]}")
    decisions = []
    for tag in repository.tags:
        keep, reason = judged[tag.name]
        shared = not keep and tag.digest in kept
        if shared:
            reason += "; tag only: its manifest stays (held by a kept tag, index or subject)"
        decisions.append(TagDecision(tag, keep, reason, tag_only=shared))
    tagged = {t.digest for t in repository.tags}
    dropped = {d.tag.digest for d in decisions if not d.keep and not d.tag_only}
    untagged = set()
    if any(r.untagged_delete and r.covers_repository(repository.name) for r in rules):
        # Not the subject of anything that stays: a kept signature keeps its image.
        subjects = {manifests[d].subject for d in kept if d in manifests}
        untagged = {d for d in manifests if d not in tagged | kept | subjects}
    reasons: dict[str, str] = {}
    for digest in sorted(dropped):
        reasons[digest] = "every tag of it deleted"
    for digest in sorted(_closure(dropped, manifests) - dropped - kept - tagged):
        reasons.setdefault(digest, "child or artifact of a deleted manifest")
    for digest in sorted(untagged):
        reasons.setdefault(digest, "untagged (untagged: delete)")
    deleted = tuple((d, reasons[d]) for d in sorted(reasons) if d in manifests)
    return RepositoryPlan(repository.name, tuple(sorted(decisions, key=lambda d: d.tag.name)),
                          deleted)


def freed_bytes(repositories: Sequence[Repository], plans: Sequence[RepositoryPlan]) -> int:
    """Bytes of the blobs only deleted manifests reference (manifest blobs included): what a
    garbage collection frees once they are gone, blobs being shared across repositories."""
    gone = {(p.name, digest) for p in plans for digest, _ in p.delete_manifests}
    sizes: dict[str, int] = {}
    kept: set[str] = set()
    dropped: set[str] = set()
    for repository in repositories:
        for digest, manifest in repository.manifests.items():
            refs = {digest: manifest.size, **dict(manifest.blobs),
                    **dict.fromkeys(manifest.children, 0)}
            for blob, size in refs.items():
                sizes[blob] = max(sizes.get(blob, 0), size)
            (dropped if (repository.name, digest) in gone else kept).update(refs)
    return sum(sizes[blob] for blob in dropped - kept)


def plan(repositories: Sequence[Repository], rules: Sequence[Rule], now: float) -> Plan:
    """What retention does to a storage: per repository, tags kept and deleted (with the
    reason) and manifests deleted; and the bytes a garbage collection then frees."""
    plans = tuple(plan_repository(r, rules, now) for r in sorted(repositories,
                                                                  key=lambda r: r.name))
    return Plan(plans, freed_bytes(repositories, plans), tuple(rules))


def delete_paths(result: Plan) -> list[str]:
    """The folders removed, relative to the storage's v2 folder: each deleted tag's, then
    each deleted manifest's revision (what the registry's own DELETE removes on filesystem
    storage; names come from the server's listing, matched against the registry's grammar
    by read_listing)."""
    paths = [f"repositories/{repo.name}/_manifests/tags/{d.tag.name}"
             for repo in result.repositories for d in repo.deleted_tags]
    paths += [f"repositories/{repo.name}/_manifests/revisions/sha256/"
              f"{digest.removeprefix('sha256:')}"
              for repo in result.repositories for digest, _ in repo.delete_manifests]
    return paths


def report_lines(result: Plan) -> list[str]:
    """The report, one line per repository and per tag deleted or kept."""
    lines = []
    for repo in result.repositories:
        kept = [d for d in repo.tags if d.keep]
        lines.append(f"{repo.name}: {len(kept)} tags kept, {len(repo.deleted_tags)} deleted, "
                     f"{len(repo.delete_manifests)} manifests deleted")
        for decision in repo.tags:
            verb = "keep" if decision.keep else "delete tag" if decision.tag_only else "delete"
            lines.append(f"  {verb} {repo.name}:{decision.tag.name} "
                         f"({decision.tag.digest[:19]}): {decision.reason}")
        for digest, reason in repo.delete_manifests:
            lines.append(f"  delete manifest {repo.name}@{digest}: {reason}")
    return lines


# --- Reading what retention.py's one command on the server printed -----------------------

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG_LINK = re.compile(rf"repositories/({_REPO})/_manifests/tags/({_TAG.pattern})/current/link")
_REVISION = re.compile(rf"repositories/({_REPO})/_manifests/revisions/sha256/([0-9a-f]{{64}})/link")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def tag_link(path: str) -> tuple[str, str] | None:
    """(repository, tag) when `path` (relative to the storage's v2 folder) is a tag's
    current link in the registry's grammar; None for anything else."""
    found = _TAG_LINK.fullmatch(path)
    return (found[1], found[2]) if found else None


def revision_link(path: str) -> tuple[str, str] | None:
    """(repository, digest) when `path` is a manifest revision link in the registry's
    grammar; None for anything else."""
    found = _REVISION.fullmatch(path)
    return (found[1], f"sha256:{found[2]}") if found else None


@dataclass(frozen=True)
class Listing:
    now: float  # the server's clock when it listed
    fingerprint: str  # of the tag and revision links with their times: unchanged = no push
    repositories: tuple[Repository, ...]


def _line_fields(lines: Iterable[str]) -> list[tuple[str, str, str]]:
    """(kind, first field, the rest) of each line."""
    fields = []
    for line in lines:
        kind, _, rest = line.partition(" ")
        first, _, second = rest.partition(" ")
        fields.append((kind, first, second))
    return fields


def read_listing(lines: Iterable[str]) -> Listing:
    """The storage as listed on the server: `N now`, `F fingerprint`, `P mtime path` per tag
    and revision link, `L path digest` per tag link, `M hex size json` per manifest. Paths
    are matched against the registry's grammar; anything else is ignored."""
    now, fingerprint = 0.0, ""
    pushed: dict[tuple[str, str], float] = {}
    points: dict[tuple[str, str], str] = {}
    revisions: dict[str, set[str]] = {}
    documents: dict[str, Manifest] = {}
    for kind, first, second in _line_fields(lines):
        tag, revision = _TAG_LINK.fullmatch(second), _REVISION.fullmatch(second)
        if kind == "N" and first.isdigit():
            now = float(first)
        elif kind == "F":
            fingerprint = first
        elif kind == "P" and tag:
            pushed[(tag[1], tag[2])] = float(first)
        elif kind == "P" and revision:
            revisions.setdefault(revision[1], set()).add(f"sha256:{revision[2]}")
        elif kind == "L" and _TAG_LINK.fullmatch(first) and _DIGEST.fullmatch(second):
            found = _TAG_LINK.fullmatch(first)
            assert found is not None
            points[(found[1], found[2])] = second
        elif kind == "M" and re.fullmatch("[0-9a-f]{64}", first):
            size, _, text = second.partition(" ")
            documents[f"sha256:{first}"] = _document(f"sha256:{first}", size, text)
    names = sorted(set(revisions) | {repo for repo, _ in points})
    repositories = tuple(Repository(
        name, tuple(Tag(tag, points[(repo, tag)], pushed.get((repo, tag), 0.0))
                    for repo, tag in sorted(points) if repo == name),
        {d: documents.get(d, Manifest(d, 0)) for d in sorted(revisions.get(name, ()))})
        for name in names)
    return Listing(now, fingerprint, repositories)


def _document(digest: str, size: str, text: str) -> Manifest:
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    return manifest_from_document(digest, int(size) if size.isdigit() else 0, document)
