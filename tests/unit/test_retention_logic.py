"""Retention (registry_kit.model.retention): the rules refused before any host is touched,
one line each, and the planner, rule by rule and for indexes, artifacts and shared
manifests. Pure: no host, no pyinfra."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from registry_kit.model import retention
from registry_kit.model.retention import Manifest, Repository, Rule, Tag
from registry_kit.model.settings import Settings, SettingsError

HOST = "reg-host-1"  # conftest.HOST
NOW = 1_800_000_000.0
DAY = 86400


# --- settings ------------------------------------------------------------------------------

def test_defaults_no_rules_and_report_only(make_settings: Callable[..., Settings]) -> None:
    made = make_settings()
    assert made.registry_retention_rules == () and made.registry_retention_apply is False


def test_a_full_rule_is_read(make_settings: Callable[..., Settings]) -> None:
    made = make_settings(registry_retention_rules=[
        {"repository": "ci/*", "tags": ["*"], "exclude": ["release-*"], "keep_last": 3,
         "keep_days": 7, "keep_always": ["latest", "v*"], "untagged": "delete"},
        {"repository": "tmp", "untagged": "delete"}], registry_retention_apply=True)
    assert made.registry_retention_rules == (
        Rule("ci/*", ("*",), ("release-*",), 3, 7, ("latest", "v*"), True),
        Rule("tmp", untagged_delete=True))
    assert made.registry_retention_apply is True


@pytest.mark.parametrize(("value", "allowed"), [
    ([{"repository": "a", "keep_last": 1, "keep_first": 2}], "no other keys"),
    ([{"keep_last": 1}], "a rule with 'repository'"),
    (["a"], "a rule with 'repository'"),
    ({"repository": "a"}, "a list of rules"),
    ([{"repository": "a", "keep_last": -1}], "keep_last: a whole number from 0"),
    ([{"repository": "a", "keep_days": -5}], "keep_days: a whole number from 0"),
    ([{"repository": "a", "keep_last": True}], "keep_last: a whole number"),
    ([{"repository": "a", "keep_last": "3"}], "keep_last: a whole number"),
    ([{"repository": "A/b", "keep_last": 1}], "repository pattern 'A/b'"),
    ([{"repository": "a//b", "keep_last": 1}], "repository pattern"),
    ([{"repository": "-a", "keep_last": 1}], "repository pattern"),
    ([{"repository": "a", "keep_last": 1, "tags": [".x*"]}], "tags: a list of tag patterns"),
    ([{"repository": "a", "keep_last": 1, "tags": []}], "tags: at least one"),
    ([{"repository": "a", "keep_last": 1, "exclude": ["a b"]}], "exclude: a list of tag"),
    ([{"repository": "a", "keep_always": ["-*"]}], "keep_always: a list of tag patterns"),
    ([{"repository": "a", "keep_always": "latest"}], "keep_always: a list of tag patterns"),
    ([{"repository": "a", "keep_last": 1, "tags": ["x" * 129]}], "tags: a list of tag"),
    ([{"repository": "a", "keep_last": 0}], "keep_last 0 (or keep_days 0) with no other"),
    ([{"repository": "a", "keep_last": 0, "keep_days": 0}], "keep_last 0"),
    ([{"repository": "a", "keep_last": 0, "untagged": "delete"}], "keep_last 0"),
    ([{"repository": "a"}], "one or more of 'keep_last'"),
    ([{"repository": "a", "tags": ["v*"]}], "one or more of 'keep_last'"),
    ([{"repository": "a", "untagged": "remove"}], "untagged: 'delete' or 'keep'"),
    ([{"repository": "a", "untagged": "keep"}], "one or more of 'keep_last'"),
])
def test_bad_rules_are_refused_in_one_line(make_settings: Callable[..., Settings], value: Any,
                                           allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(registry_retention_rules=value)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{HOST}: setting registry_retention_rules=")
    assert re.search(r" is not allowed: .*" + re.escape(allowed), message), message


@pytest.mark.parametrize("rule", [
    {"repository": "a", "keep_last": 0, "keep_days": 1},
    {"repository": "a", "keep_last": 0, "keep_always": ["latest"]},
    {"repository": "*", "keep_days": 30},
    {"repository": "team-a/*/x", "keep_always": ["*"], "tags": ["*.sig", "_x"]},
    {"repository": "a", "keep_last": 1_000_000},
])
def test_good_rules_pass(make_settings: Callable[..., Settings], rule: dict[str, Any]) -> None:
    assert len(make_settings(registry_retention_rules=[rule]).registry_retention_rules) == 1


def test_apply_must_be_a_boolean(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError, match="registry_retention_apply='yes' is not allowed"):
        make_settings(registry_retention_apply="yes")


def test_tag_patterns() -> None:
    assert retention.is_tag_pattern("v*") and retention.is_tag_pattern("*.sig")
    assert retention.is_tag_pattern("_") and retention.is_tag_pattern("*")
    assert not retention.is_tag_pattern(".*") and not retention.is_tag_pattern("*/x")
    assert not retention.is_tag_pattern("") and not retention.is_tag_pattern(3)


# --- the planner ---------------------------------------------------------------------------

def digest(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


def image(name: str, *layers: tuple[str, int], subject: str | None = None) -> Manifest:
    return Manifest(digest(name), 500, "application/vnd.oci.image.manifest.v1+json",
                    subject=digest(subject) if subject else None,
                    blobs=((digest(name + "-config"), 100),
                           *((digest(layer), size) for layer, size in layers)))


def index(name: str, *children: str) -> Manifest:
    return Manifest(digest(name), 300, retention.INDEX_TYPES[0],
                    children=tuple(digest(c) for c in children))


def repo(name: str, tags: dict[str, tuple[str, float]], *manifests: Manifest) -> Repository:
    """tags: tag -> (manifest name, age in days)."""
    return Repository(name, tuple(Tag(tag, digest(m), NOW - age * DAY)
                                  for tag, (m, age) in tags.items()),
                      {m.digest: m for m in manifests})


def rules(*entries: dict[str, Any]) -> tuple[Rule, ...]:
    return retention.parse(HOST, list(entries))


def decisions(plan: retention.RepositoryPlan) -> dict[str, str]:
    return {d.tag.name: "keep" if d.keep else "tag-only" if d.tag_only else "delete"
            for d in plan.tags}


def five(name: str = "app") -> Repository:
    """Tags t1 (newest) .. t5 (oldest), 1, 10, 20, 40, 80 days old, one image each."""
    ages = {"t1": 1, "t2": 10, "t3": 20, "t4": 40, "t5": 80}
    return repo(name, {t: (f"m{t}", age) for t, age in ages.items()},
                *(image(f"m{t}", (f"l{t}", 1000)) for t in ages))


def test_keep_last_keeps_the_newest_by_push_time() -> None:
    plan = retention.plan_repository(five(), rules({"repository": "app", "keep_last": 2}), NOW)
    assert decisions(plan) == {"t1": "keep", "t2": "keep", "t3": "delete", "t4": "delete",
                               "t5": "delete"}
    reasons = {d.tag.name: d.reason for d in plan.tags}
    assert reasons["t1"] == "#1 of the last 2 pushed (rule 1)"
    assert reasons["t3"] == "rule 1: not among the last 2 pushed"
    assert [d for d, _ in plan.delete_manifests] == sorted(digest(f"mt{n}") for n in (3, 4, 5))


def test_keep_days_keeps_what_was_pushed_within() -> None:
    plan = retention.plan_repository(five(), rules({"repository": "app", "keep_days": 15}), NOW)
    assert decisions(plan) == {"t1": "keep", "t2": "keep", "t3": "delete", "t4": "delete",
                               "t5": "delete"}
    assert "pushed 20.0 days ago (over 15 days)" in plan.tags[2].reason


def test_keeps_are_a_union_and_keep_always_wins() -> None:
    plan = retention.plan_repository(five(), rules(
        {"repository": "app", "keep_last": 1, "keep_days": 15, "keep_always": ["t5"]}), NOW)
    assert decisions(plan) == {"t1": "keep", "t2": "keep", "t3": "delete", "t4": "delete",
                               "t5": "keep"}
    assert plan.tags[4].reason == "keep_always 't5' (rule 1)"


def test_tags_and_exclude_limit_what_a_rule_judges() -> None:
    plan = retention.plan_repository(five(), rules(
        {"repository": "app", "tags": ["t*"], "exclude": ["t4"], "keep_last": 1}), NOW)
    assert decisions(plan) == {"t1": "keep", "t2": "delete", "t3": "delete", "t4": "keep",
                               "t5": "delete"}
    assert plan.tags[3].reason == "no rule covers it"


def test_a_repository_no_rule_covers_is_untouched() -> None:
    plan = retention.plan([five("other"), five("team/app")],
                          rules({"repository": "team/*", "keep_last": 1}), NOW)
    assert plan.repositories[0].name == "other" and plan.repositories[0].empty
    assert len(plan.repositories[1].deleted_tags) == 4


def test_any_rule_keeping_a_tag_keeps_it() -> None:
    plan = retention.plan_repository(five(), rules(
        {"repository": "app", "keep_last": 1}, {"repository": "*", "keep_days": 30}), NOW)
    assert decisions(plan) == {"t1": "keep", "t2": "keep", "t3": "keep", "t4": "delete",
                               "t5": "delete"}


def test_a_tag_sharing_a_kept_tags_manifest_loses_only_its_tag() -> None:
    repository = repo("app", {"new": ("a", 1), "old": ("a", 50), "gone": ("b", 60)},
                      image("a", ("la", 10)), image("b", ("lb", 20)))
    plan = retention.plan_repository(repository, rules({"repository": "app", "keep_last": 1}),
                                     NOW)
    assert decisions(plan) == {"new": "keep", "old": "tag-only", "gone": "delete"}
    assert [d for d, _ in plan.delete_manifests] == [digest("b")]


def test_children_of_a_kept_index_stay_and_a_deleted_index_takes_its_own() -> None:
    repository = repo(
        "app", {"multi": ("idx", 1), "amd64": ("c1", 90), "old": ("idx2", 90)},
        index("idx", "c1", "c2"), image("c1", ("l1", 10)), image("c2", ("l2", 10)),
        index("idx2", "c3", "c1"), image("c3", ("l3", 10)))
    plan = retention.plan_repository(repository, rules({"repository": "app", "keep_last": 1}),
                                     NOW)
    # amd64's manifest is a child of the kept index: only its tag goes.
    assert decisions(plan) == {"multi": "keep", "amd64": "tag-only", "old": "delete"}
    assert dict(plan.delete_manifests) == {
        digest("idx2"): "every tag of it deleted",
        digest("c3"): "child or artifact of a deleted manifest"}


def test_artifacts_follow_their_subject() -> None:
    repository = repo(
        "app", {"v2": ("img2", 1), "v1": ("img1", 50), "sig2": ("s2", 60)},
        image("img2", ("l2", 10)), image("img1", ("l1", 10)),
        image("s2", ("ls2", 5), subject="img2"), image("s1", ("ls1", 5), subject="img1"),
        image("sbom2", ("lb2", 5), subject="img2"))
    plan = retention.plan_repository(repository, rules(
        {"repository": "app", "tags": ["v*", "sig*"], "keep_last": 1,
         "untagged": "delete"}), NOW)
    # The signature's tag follows its kept subject; v1's untagged signature goes with v1.
    assert decisions(plan) == {"v2": "keep", "v1": "delete", "sig2": "keep"}
    reasons = {d.tag.name: d.reason for d in plan.tags}
    assert reasons["sig2"] == f"artifact of kept {digest('img2')[:19]}"
    assert dict(plan.delete_manifests) == {
        digest("img1"): "every tag of it deleted",
        digest("s1"): "child or artifact of a deleted manifest"}


def test_untagged_delete_spares_children_subjects_and_other_repositories() -> None:
    repository = repo(
        "app", {"multi": ("idx", 1), "sig": ("s", 1)},
        index("idx", "c1"), image("c1", ("l1", 10)), image("loose", ("l9", 10)),
        image("base", ("l8", 10)), image("s", ("l7", 1), subject="base"))
    kept_all = retention.plan_repository(
        repository, rules({"repository": "app", "keep_last": 5}), NOW)
    assert kept_all.empty  # untagged manifests stay unless a rule says delete
    plan = retention.plan_repository(repository, rules(
        {"repository": "app", "untagged": "delete"}), NOW)
    assert decisions(plan) == {"multi": "keep", "sig": "keep"}
    assert dict(plan.delete_manifests) == {digest("loose"): "untagged (untagged: delete)"}
    other = retention.plan_repository(repository, rules(
        {"repository": "other", "untagged": "delete"}), NOW)
    assert other.empty


def test_freed_bytes_count_only_blobs_nothing_kept_references() -> None:
    shared = ("shared", 7000)
    app = repo("app", {"new": ("a", 1), "old": ("b", 50)},
               image("a", shared, ("la", 1000)), image("b", shared, ("lb", 2000)))
    other = repo("other", {"x": ("c", 100)}, image("c", ("lb", 2000)))
    plan = retention.plan([app, other], rules({"repository": "app", "keep_last": 1}), NOW)
    # b's manifest (500) and config (100); lb is still used by "other", shared by "a".
    assert plan.freed_bytes == 600
    alone = retention.plan([app], rules({"repository": "app", "keep_last": 1}), NOW)
    assert alone.freed_bytes == 2600
    assert not plan.empty and retention.plan([app], (), NOW).empty


def test_a_second_plan_after_the_first_deletes_nothing() -> None:
    first = retention.plan([five()], rules({"repository": "app", "keep_last": 2}), NOW)
    gone = {d for r in first.repositories for d, _ in r.delete_manifests}
    left = five()
    left = Repository(left.name, tuple(t for t in left.tags if t.name in ("t1", "t2")),
                      {d: m for d, m in left.manifests.items() if d not in gone})
    assert retention.plan([left], rules({"repository": "app", "keep_last": 2}), NOW).empty


def test_manifest_documents_are_read_tolerantly() -> None:
    made = retention.manifest_from_document("sha256:x", 10, {
        "mediaType": retention.INDEX_TYPES[0],
        "manifests": [{"digest": "sha256:a", "size": 5}, {"nodigest": 1}, "junk"],
        "subject": {"digest": "sha256:s", "size": 3},
        "config": {"digest": "sha256:c", "size": -1}, "layers": "junk"})
    assert made.children == ("sha256:a",) and made.subject == "sha256:s"
    assert made.blobs == (("sha256:c", 0),)
    assert retention.manifest_from_document("sha256:y", 1, ["not", "a", "dict"]).blobs == ()


def test_report_lines_say_what_and_why() -> None:
    plan = retention.plan([five()], rules({"repository": "app", "keep_last": 4}), NOW)
    lines = retention.report_lines(plan)
    assert lines[0] == "app: 4 tags kept, 1 deleted, 1 manifests deleted"
    assert any(line.startswith("  delete app:t5 (sha256:") for line in lines)
    assert lines[-1].startswith(f"  delete manifest app@{digest('mt5')}:")


# --- what the server lists, and the commands (registry_kit.jobs.retention) -------------------

HEX = {name: name.encode().hex().ljust(64, "0")[:64] for name in ("a", "b", "i", "c")}


def listing_lines() -> list[str]:
    manifest_a = ('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
                  '"config":{"digest":"sha256:' + "1" * 64 + '","size":10},"layers":[{"digest":'
                  '"sha256:' + "2" * 64 + '","size":2000}]}')
    index_i = ('{"mediaType":"' + retention.INDEX_TYPES[0] + '","manifests":[{"digest":"sha256:'
               + HEX["c"] + '","size":5}]}')
    tags = "repositories/team/app/_manifests/tags"
    revs = "repositories/team/app/_manifests/revisions/sha256"
    return [
        "N 1800000000",
        "F " + "f" * 64,
        f"P 1799990000.5 {tags}/v1/current/link",
        f"P 1799000000.0 {tags}/old/current/link",
        f"P 1.0 {revs}/{HEX['a']}/link", f"P 1.0 {revs}/{HEX['b']}/link",
        f"P 1.0 {revs}/{HEX['i']}/link", f"P 1.0 {revs}/{HEX['c']}/link",
        f"L {tags}/v1/current/link sha256:{HEX['a']}",
        f"L {tags}/old/current/link sha256:{HEX['b']}",
        f"L repositories/Bad/_manifests/tags/x/current/link sha256:{HEX['a']}",  # not a name
        "P 1.0 repositories/x/../../etc/_manifests/tags/t/current/link",
        f"M {HEX['a']} 321 {manifest_a}",
        f"M {HEX['i']} 99 {index_i}",
        f"M {HEX['b']} 50 not json",
        "garbage line",
    ]


def test_the_listing_is_read_and_anything_odd_ignored() -> None:
    listing = retention.read_listing(listing_lines())
    assert listing.now == 1_800_000_000 and listing.fingerprint == "f" * 64
    [repository] = listing.repositories
    assert repository.name == "team/app"
    assert repository.tags == (Tag("old", f"sha256:{HEX['b']}", 1799000000.0),
                               Tag("v1", f"sha256:{HEX['a']}", 1799990000.5))
    a = repository.manifests[f"sha256:{HEX['a']}"]
    assert a.size == 321 and a.blobs == (("sha256:" + "1" * 64, 10), ("sha256:" + "2" * 64, 2000))
    assert repository.manifests[f"sha256:{HEX['i']}"].children == (f"sha256:{HEX['c']}",)
    assert repository.manifests[f"sha256:{HEX['b']}"] == Manifest(f"sha256:{HEX['b']}", 50)
    assert repository.manifests[f"sha256:{HEX['c']}"] == Manifest(f"sha256:{HEX['c']}", 0)
    assert retention.read_listing([]).repositories == ()


def test_apply_command_quotes_every_path_and_guards_with_the_fingerprint(
        make_settings: Callable[..., Settings]) -> None:
    from registry_kit.jobs import retention as job

    settings = make_settings(registry_data_dir="/srv/reg", registry_gc_delete_untagged=True)
    listing = retention.read_listing(listing_lines())
    plan = retention.plan(listing.repositories, rules({"repository": "team/*",
                                                       "keep_last": 1}), listing.now)
    paths = retention.delete_paths(plan)
    assert paths == ["repositories/team/app/_manifests/tags/old",
                     f"repositories/team/app/_manifests/revisions/sha256/{HEX['b']}"]
    command = job.apply_command(settings, plan, listing.fingerprint)
    assert "cd /srv/reg/docker/registry/v2 &&" in command
    assert f"!= {'f' * 64} ]; then" in command and "rm -rf -- " + " ".join(paths) in command
    assert "--delete-untagged" not in command  # only what the rules selected goes
    steps = [re.search(rf"--step {s} ", command) for s in ("check", "readonly", "collect",
                                                             "writable")]
    assert all(steps) and [m.start() for m in steps if m] == sorted(m.start() for m in steps
                                                                     if m)
    assert command.endswith("|| ok=1; /usr/local/lib/registry-kit/registry-gc.sh "
                            "--retention-result /var/lib/registry-kit-metrics/retention.prom "
                            '"$ok"; exit $ok')
    listed = job.listing_command(settings)
    assert listed.startswith("echo \"N $(date +%s)\"; cd /srv/reg/docker/registry/v2")
    assert job.LISTING in listed and job.LISTING in command


def test_the_summary_line() -> None:
    from registry_kit.jobs import retention as job

    plan = retention.plan([five()], rules({"repository": "app", "keep_last": 4}), NOW)
    assert job.summary(plan, False) == (
        "retention (report only: nothing deleted) 4 tags kept, 1 deleted (0 tag only), 1 "
        "manifests deleted; a garbage collection then frees 1600 bytes")
    assert job.summary(plan, True).startswith("retention (deleting) ")
    assert job.summary(retention.plan([five()], (), NOW), True).startswith(
        "retention (nothing to delete) 5 tags kept, 0 deleted")
