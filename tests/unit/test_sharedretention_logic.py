"""Unit tests for retention on S3 storage (registry_kit.sharedretention, s3objects): the
ListObjectsV2 parser and its pagination, the listing built from a bucket (hostile keys are
ignored, never planned, never deleted), the delete-key selection (only keys inside the
planned folders) and the refusals. The bucket is a fake S3 answering the signed requests
in memory."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import urllib.error
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import Message
from email.utils import format_datetime
from typing import Any

import pytest

from registry_kit import s3check, s3objects, sharedgc, sharedretention
from registry_kit.jobs import retention as job
from registry_kit.model import retention
from registry_kit.model.settings import Settings

S3 = {"driver": "s3", "bucket": "registry", "region": "us-east-1",
      "regionendpoint": "http://10.9.0.5:7480", "rootdirectory": "/reg/",
      "accesskey_env": "RK_AK", "secretkey_env": "RK_SK"}
V2 = "reg/docker/registry/v2/"
NOW = 1_800_000_000
DAY = 86400


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RK_AK", "AKIDLAB")
    monkeypatch.setenv("RK_SK", "lab-secret")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Answer(io.BytesIO):
    def __init__(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        super().__init__(body)
        self.headers = Message()
        for name, value in headers.items():
            self.headers[name] = value
        self.status = status


@dataclasses.dataclass
class FakeBucket:
    """Keys -> (content, LastModified); ListObjectsV2 pages of `page` keys."""
    objects: dict[str, tuple[bytes, float]]
    page: int = 3
    requests: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def put(self, key: str, data: bytes, modified: float) -> None:
        self.objects[key] = (data, modified)

    def __call__(self, request: Any, timeout: float, context: Any) -> _Answer:
        parts = urllib.parse.urlsplit(request.full_url)
        assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential="
                                                            "AKIDLAB/")
        assert "lab-secret" not in request.full_url + str(request.headers)
        self.requests.append((request.method, request.full_url))
        date = {"Date": format_datetime(datetime.fromtimestamp(NOW, UTC), usegmt=True)}
        assert parts.path.startswith("/registry")
        key = urllib.parse.unquote(parts.path.removeprefix("/registry").removeprefix("/"))
        if request.method == "DELETE":
            self.objects.pop(key, None)
            return _Answer(b"", date, 204)
        if not key:
            query = dict(urllib.parse.parse_qsl(parts.query))
            keys = sorted(k for k in self.objects if k.startswith(query["prefix"]))
            start = int(query.get("continuation-token", "0"))
            chunk = keys[start:start + self.page]
            more = start + self.page < len(keys)
            contents = "".join(
                f"<Contents><Key>{_xml(k)}</Key><LastModified>{_iso(self.objects[k][1])}"
                f"</LastModified><ETag>&quot;{hashlib.md5(self.objects[k][0]).hexdigest()}"
                f"&quot;</ETag><Size>{len(self.objects[k][0])}</Size></Contents>"
                for k in chunk)
            token = f"<NextContinuationToken>{start + self.page}</NextContinuationToken>" \
                if more else ""
            body = (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://'
                    f's3.amazonaws.com/doc/2006-03-01/"><IsTruncated>{str(more).lower()}'
                    f"</IsTruncated>{token}{contents}</ListBucketResult>")
            return _Answer(body.encode(), date)
        if key not in self.objects:
            raise urllib.error.HTTPError(request.full_url, 404, "Not Found", Message(), None)
        data = self.objects[key][0]
        last = int(request.headers["Range"].removeprefix("bytes=0-"))
        return _Answer(data[:last + 1], {**date, "Content-Range":
                                         f"bytes 0-{min(last, len(data) - 1)}/{len(data)}"},
                       206)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(bucket: FakeBucket, data: bytes) -> str:
    digest = _digest(data)
    hexa = digest.removeprefix("sha256:")
    bucket.put(f"{V2}blobs/sha256/{hexa[:2]}/{hexa}/data", data, NOW - 100 * DAY)
    return digest


def _image(bucket: FakeBucket, repo: str, name: str, layer_size: int) -> str:
    layer = _blob(bucket, name.encode() * layer_size)
    manifest = json.dumps({"schemaVersion": 2, "mediaType":
                           "application/vnd.oci.image.manifest.v1+json",
                           "config": {"digest": _blob(bucket, b"{}" + name.encode()), "size": 4},
                           "layers": [{"digest": layer, "size": layer_size * len(name)}]},
                          indent=1).encode()  # line breaks, as a pushed manifest may have
    digest = _blob(bucket, manifest)
    hexa = digest.removeprefix("sha256:")
    bucket.put(f"{V2}repositories/{repo}/_manifests/revisions/sha256/{hexa}/link",
               digest.encode(), NOW - 100 * DAY)
    bucket.put(f"{V2}repositories/{repo}/_layers/sha256/{layer.removeprefix('sha256:')}/link",
               layer.encode(), NOW - 100 * DAY)
    return digest


def _tag(bucket: FakeBucket, repo: str, tag: str, digest: str, age_days: float) -> None:
    base = f"{V2}repositories/{repo}/_manifests/tags/{tag}"
    bucket.put(f"{base}/current/link", digest.encode(), NOW - age_days * DAY)
    bucket.put(f"{base}/index/sha256/{digest.removeprefix('sha256:')}/link", digest.encode(),
               NOW - age_days * DAY)


def _storage(make_settings: Callable[..., Settings]) -> Any:
    return make_settings(registry_storage=S3).registry_storage


def _ci_bucket() -> tuple[FakeBucket, dict[str, str]]:
    """ci/app: a1 (newest) .. a11 (oldest), 1 KB layers each; `stable` on a11's manifest."""
    bucket = FakeBucket({})
    digests = {}
    for n in range(1, 12):
        digests[f"a{n}"] = _image(bucket, "ci/app", f"a{n}", 1000)
        _tag(bucket, "ci/app", f"a{n}", digests[f"a{n}"], n)
    _tag(bucket, "ci/app", "stable", digests["a11"], 50)
    return bucket, digests


RULES = [{"repository": "ci/*", "keep_last": 3, "keep_always": ["stable"]}]


def _plan(make_settings: Callable[..., Settings], bucket: FakeBucket,
          rules: list[dict[str, Any]] = RULES) -> tuple[retention.Listing, retention.Plan]:
    storage = _storage(make_settings)
    listing = sharedretention.read(storage.params, bucket)
    parsed = make_settings(registry_retention_rules=rules).registry_retention_rules
    return listing, retention.plan(listing.repositories, parsed, listing.now)


def test_parse_page_reads_keys_times_etags_and_the_token() -> None:
    page = s3objects.parse_page(
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>true'
        b"</IsTruncated><NextContinuationToken>t/1+=</NextContinuationToken><Contents><Key>a/b"
        b"</Key><LastModified>2026-12-08T01:02:03.500Z</LastModified><ETag>&quot;abc&quot;"
        b"</ETag><Size>12</Size></Contents><Contents><Size>7</Size></Contents><Contents><Key>c"
        b"</Key><LastModified>yesterday</LastModified><Size>x</Size></Contents>"
        b"</ListBucketResult>")
    assert page.continuation == "t/1+="
    assert page.objects == (
        s3objects.S3Object("a/b", 12, datetime(2026, 12, 8, 1, 2, 3, 500000, UTC).timestamp(),
                           "abc"),
        s3objects.S3Object("c", 0, 0.0, ""))  # no key: skipped; odd fields: 0
    last = s3objects.parse_page(b"<ListBucketResult><IsTruncated>false</IsTruncated>"
                                b"<NextContinuationToken>x</NextContinuationToken>"
                                b"</ListBucketResult>")
    assert last.continuation is None and last.objects == ()  # not truncated: no next page


def test_listing_follows_pages_and_reads_push_times_from_last_modified(
        make_settings: Callable[..., Settings]) -> None:
    bucket, digests = _ci_bucket()
    listing = sharedretention.read(_storage(make_settings).params, bucket)
    lists = [url for method, url in bucket.requests if "list-type=2" in url]
    assert len(lists) > 5  # 3 keys a page
    assert all("prefix=reg%2Fdocker%2Fregistry%2Fv2%2Frepositories%2F" in url for url in lists)
    assert listing.now == NOW  # the store's Date header
    (repo,) = listing.repositories
    assert repo.name == "ci/app"
    tags = {t.name: (t.digest, round((NOW - t.pushed) / DAY)) for t in repo.tags}
    assert tags["a1"] == (digests["a1"], 1) and tags["stable"] == (digests["a11"], 50)
    assert set(repo.manifests) == set(digests.values())
    manifest = repo.manifests[digests["a4"]]
    assert manifest.blobs[1][1] == 2000 and manifest.size > 0  # JSON with line breaks read


def test_plan_once_deletes_old_tags_and_a_shared_manifest_stays(
        make_settings: Callable[..., Settings]) -> None:
    bucket, digests = _ci_bucket()
    listing, plan = _plan(make_settings, bucket)
    (repo,) = plan.repositories
    assert [d.tag.name for d in repo.deleted_tags] == [f"a{n}" for n in (10, 11, 4, 5, 6, 7,
                                                                         8, 9)]
    assert {d.tag.name for d in repo.deleted_tags if d.tag_only} == {"a11"}
    assert {digest for digest, _ in repo.delete_manifests} == \
        {digests[f"a{n}"] for n in range(4, 11)}
    prefixes = sharedretention.delete_prefixes(_storage(make_settings).params, plan)
    assert f"{V2}repositories/ci/app/_manifests/tags/a1/" not in prefixes
    assert f"{V2}repositories/ci/app/_manifests/tags/a10/" in prefixes
    assert all(p.startswith(V2 + "repositories/ci/app/_manifests/") and p.endswith("/")
               for p in prefixes)
    assert len(prefixes) == 8 + 7
    assert sharedretention.current_fingerprint(_storage(make_settings).params, bucket) == \
        listing.fingerprint


HOSTILE = [
    f"{V2}repositories/CI/App/_manifests/tags/x/current/link",  # upper case repository
    f"{V2}repositories/ci/app/_manifests/tags/-x/current/link",  # not a tag
    f"{V2}repositories/ci/app/_manifests/tags/a 1/current/link",  # white space
    f"{V2}repositories/ci/app/_manifests/tags/n\nL x/current/link",  # a line break
    f"{V2}repositories/ci/../etc/_manifests/tags/x/current/link",  # dot segments
    f"{V2}repositories//ci/_manifests/tags/x/current/link",  # empty component
    f"{V2}repositories/ci/app/_manifests/revisions/sha256/{'A' * 64}/link",  # upper hex
    f"{V2}repositories/ci/app/_manifests/revisions/sha256/{'a' * 63}/link",  # short
    f"{V2}repositories/ci/app/_manifests/tags/bad-link/current/link",  # content not a digest
    "elsewhere/docker/registry/v2/repositories/ci/app/_manifests/tags/x/current/link",
]


def test_hostile_keys_are_ignored_never_planned_never_deleted(
        make_settings: Callable[..., Settings]) -> None:
    bucket, _ = _ci_bucket()
    clean_listing, clean_plan = _plan(make_settings, bucket)
    for key in HOSTILE:
        content = b"not a digest" if "bad-link" in key else _digest(b"x").encode()
        bucket.put(key, content, NOW - 400 * DAY)
    listing, plan = _plan(make_settings, bucket,
                          [{"repository": "*", "keep_last": 1, "untagged": "delete"}])
    assert [r.name for r in listing.repositories] == ["ci/app"]
    assert {t.name for t in listing.repositories[0].tags} == \
        {t.name for t in clean_listing.repositories[0].tags}
    prefixes = sharedretention.delete_prefixes(_storage(make_settings).params, plan)
    for key in HOSTILE:
        assert not any(key.startswith(p) for p in prefixes), key
    # The hostile keys change the fingerprint (they are links where a push would write).
    assert listing.fingerprint != clean_listing.fingerprint
    # Only valid names were read with a GET.
    gets = [urllib.parse.unquote(url) for method, url in bucket.requests
            if method == "GET" and "list-type" not in url]
    assert not [url for url in gets if "CI/App" in url or " " in url or "\n" in url]
    assert clean_plan.freed_bytes > 0


def test_keys_under_a_folder_never_take_a_sibling() -> None:
    prefix = f"{V2}repositories/ci/app/_manifests/tags/a1/"
    keys = [f"{prefix}current/link", f"{prefix}index/sha256/{'b' * 64}/link",
            f"{V2}repositories/ci/app/_manifests/tags/a10/current/link",
            f"{V2}repositories/ci/app/_manifests/tags/a1", f"{V2}repositories/ci/app-2/x",
            f"{V2}repositories/ci/app/_manifests/tags/a1-old/current/link"]
    assert sharedretention.keys_under(prefix, keys) == sorted(keys[:2])
    for bad in (prefix.rstrip("/"), "", "/"):
        with pytest.raises(ValueError):
            sharedretention.keys_under(bad, keys)


def test_delete_planned_deletes_exactly_the_planned_folders(
        make_settings: Callable[..., Settings]) -> None:
    bucket, digests = _ci_bucket()
    _, plan = _plan(make_settings, bucket)
    before = set(bucket.objects)
    bucket.requests.clear()
    params = _storage(make_settings).params
    prefixes = sharedretention.delete_prefixes(params, plan)
    count = sharedretention.delete_planned(params, prefixes, bucket)
    gone = before - set(bucket.objects)
    assert count == len(gone) == 8 * 2 + 7  # each tag: current and index link; revisions
    assert all(any(key.startswith(p) for p in prefixes) for key in gone)
    deletes = [url for method, url in bucket.requests if method == "DELETE"]
    assert len(deletes) == count
    # Kept: a1-a3, stable (a11's manifest: tag only), every blob (GC's work) and layer link.
    listing = sharedretention.read(params, bucket)
    (repo,) = listing.repositories
    assert sorted(t.name for t in repo.tags) == ["a1", "a2", "a3", "stable"]
    assert set(repo.manifests) == {digests[n] for n in ("a1", "a2", "a3", "a11")}
    assert not [k for k in gone if "/blobs/" in k or "/_layers/" in k]
    # A second plan deletes nothing.
    parsed = make_settings(registry_retention_rules=RULES).registry_retention_rules
    assert retention.plan(listing.repositories, parsed, listing.now).empty


def _apply(make_settings: Callable[..., Settings], bucket: FakeBucket, plan: retention.Plan,
           fingerprint: str) -> tuple[tuple[str, str] | None, list[str]]:
    """SharedRetention's deletes (between the read-only steps and the collection) on the
    fake bucket: (the failed step or None, the lines reported)."""
    lines: list[str] = []
    run = sharedretention.SharedRetention([], None, None, _storage(make_settings), plan,
                                          fingerprint, {}, opener=bucket)
    failed = run._between(None, None, {}, lambda line, ok=True: lines.append(line))
    return failed, lines


def test_a_push_since_the_plan_refuses_and_deletes_nothing(
        make_settings: Callable[..., Settings]) -> None:
    bucket, digests = _ci_bucket()
    listing, plan = _plan(make_settings, bucket)
    _tag(bucket, "ci/app", "a9", digests["a9"], 0)  # pushed again since the listing
    before = dict(bucket.objects)
    bucket.requests.clear()
    failed, lines = _apply(make_settings, bucket, plan, listing.fingerprint)
    assert failed == ("compare", "s3://registry")
    assert lines == ["registry-kit: retention refused: the storage changed since it was read "
                     "(a push?); nothing was deleted: run retention.py again"]
    assert bucket.objects == before
    assert [method for method, _ in bucket.requests] == ["GET"] * len(bucket.requests)
    # Unchanged: the planned folders go.
    listing, plan = _plan(make_settings, bucket)
    failed, lines = _apply(make_settings, bucket, plan, listing.fingerprint)
    assert failed is None
    assert lines == ["registry-kit: retention removed 15 tag and manifest folders (23 "
                     "objects) in s3://registry"]


def test_a_key_with_odd_characters_is_signed_as_s3_reads_it(
        make_settings: Callable[..., Settings]) -> None:
    bucket = FakeBucket({})
    odd = f"{V2}repositories/ci/app/_manifests/tags/a1/x y%41+z"
    bucket.put(odd, b"x", NOW)
    params = _storage(make_settings).params
    assert sharedretention.delete_planned(params, [f"{V2}repositories/ci/app/_manifests/tags/"
                                                   "a1/"], bucket) == 1
    assert bucket.objects == {}
    (delete,) = [url for method, url in bucket.requests if method == "DELETE"]
    assert delete.endswith("/a1/x%20y%2541%2Bz")
    # Signed as S3 computes it: the key encoded once, not the URL's encoding encoded again.
    request, _ = s3check.canonical_request("DELETE", urllib.parse.urlsplit(delete).path, "",
                                           {"host": "h"}, s3check.EMPTY_SHA256)
    assert request.split("\n")[1].endswith("/a1/x%20y%2541%2Bz")


def test_other_drivers_and_keyless_s3_are_refused_in_one_line(
        make_settings: Callable[..., Settings], tmp_path: Any) -> None:
    for driver, params in (("azure", {"accountname": "a", "accountkey_env": "RK_SK",
                                      "container": "c"}),
                           ("gcs", {"bucket": "b"}), ("inmemory", {})):
        settings = make_settings(registry_storage={"driver": driver, **params})
        error = job.storage_refusal(settings)
        assert error is not None
        assert str(error).startswith(f"{settings.host}: setting registry_storage={{'driver': "
                                     f"'{driver}'}} is not allowed: retention.py reads and "
                                     "deletes on filesystem or s3 storage only")
        assert "\n" not in str(error)
    assert job.storage_refusal(make_settings()) is None
    assert job.storage_refusal(make_settings(registry_storage=S3)) is None
    keyless = {k: v for k, v in S3.items() if not k.startswith(("accesskey", "secretkey"))}
    error = job.storage_refusal(make_settings(registry_storage=keyless))
    assert error is not None and "without accesskey and secretkey" in str(error)


def test_a_replica_missing_from_an_apply_run_refuses(
        make_settings: Callable[..., Settings]) -> None:
    group = [dataclasses.replace(make_settings(registry_storage=S3), host=name)
             for name in ("rep1", "rep2")]
    line = sharedgc.unreachable_refusal(group, ["rep1"], "retention.py",
                                        "deleting with registry_retention_apply")
    assert line == ("rep2: retention.py refused: rep2 not reachable (or left out by --limit); "
                    "deleting with registry_retention_apply on shared storage makes every "
                    "replica read-only first (rep1, rep2): nothing was changed")
    assert sharedgc.unreachable_refusal(group, ["rep2", "rep1"], "retention.py") is None


def test_the_schedule_stays_refused_on_s3(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(Exception, match=r"registry_retention_schedule.*filesystem storage only"):
        make_settings(registry_storage=S3, registry_retention_schedule="daily",
                      registry_retention_rules=RULES)
