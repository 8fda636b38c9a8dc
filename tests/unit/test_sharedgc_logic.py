"""Unit tests for garbage collection on shared storage (registry_kit.sharedgc): which servers
share storage, the refusals (a replica not in the run, a timer on shared storage), where the
timer goes, the step command lines, and the bucket listing that measures the bytes freed."""

from __future__ import annotations

import dataclasses
import http.server
import shlex
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from registry_kit import sharedgc
from registry_kit.model.settings import Settings
from registry_kit.roles import gc_timer

S3 = {"driver": "s3", "bucket": "registry", "region": "us-east-1",
      "regionendpoint": "http://10.9.0.5:7480", "accesskey_env": "RK_AK",
      "secretkey_env": "RK_SK"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RK_AK", "AKIDLAB")
    monkeypatch.setenv("RK_SK", "lab-secret")
    monkeypatch.setenv("RK_AK2", "OTHERKEY")


def _hosts(make: Callable[..., Settings], storages: list[dict[str, Any]],
           **data: Any) -> list[Settings]:
    return [dataclasses.replace(make(registry_storage=storage, **data), host=f"rep{i + 1}")
            for i, storage in enumerate(storages)]


def test_same_bucket_shares_whatever_the_keys(make_settings: Callable[..., Settings]) -> None:
    other_keys = {**S3, "accesskey_env": "RK_AK2", "regionendpoint": "http://10.9.0.5:7480/"}
    servers = _hosts(make_settings, [S3, other_keys])
    groups = sharedgc.storage_groups(servers)
    assert [[s.host for s in g] for g in groups] == [["rep1", "rep2"]]


def test_other_bucket_root_or_endpoint_does_not_share(
        make_settings: Callable[..., Settings]) -> None:
    servers = _hosts(make_settings, [
        S3, {**S3, "bucket": "other"}, {**S3, "rootdirectory": "/two"},
        {**S3, "regionendpoint": "http://10.9.0.6:7480"}, {**S3, "rootdirectory": "two/"}])
    groups = sharedgc.storage_groups(servers)
    assert [[s.host for s in g] for g in groups] == [["rep1"], ["rep2"], ["rep3", "rep5"],
                                                    ["rep4"]]


def test_filesystem_and_inmemory_are_each_servers_own(
        make_settings: Callable[..., Settings]) -> None:
    servers = _hosts(make_settings, [{"driver": "filesystem"}, {"driver": "filesystem"},
                                     {"driver": "inmemory"}, {"driver": "inmemory"}])
    assert [len(g) for g in sharedgc.storage_groups(servers)] == [1, 1, 1, 1]
    assert sharedgc.storage_location(servers[0].registry_storage) is None


def test_region_counts_only_with_an_endpoint(make_settings: Callable[..., Settings]) -> None:
    aws = {k: v for k, v in S3.items() if k != "regionendpoint"}
    # On AWS a bucket name is global: another region names the same bucket (in doubt:
    # shared); with an endpoint the region only signs.
    servers = _hosts(make_settings, [aws, {**aws, "region": "eu-west-1"},
                                     S3, {**S3, "region": "eu-west-1"},
                                     {**aws, "regionendpoint": "https://s3.eu-west-1."
                                      "amazonaws.com"}])
    assert [[s.host for s in g] for g in sharedgc.storage_groups(servers)] == \
        [["rep1", "rep2", "rep5"], ["rep3", "rep4"]]


def _fake_dns(table: dict[str, frozenset[str]]) -> sharedgc.Resolver:
    def resolve(host: str, port: int) -> frozenset[str] | None:
        return table.get(host)
    return resolve


def _shared(make: Callable[..., Settings], endpoints: list[Any],
            resolve: sharedgc.Resolver | None = None, **extra: Any) -> list[list[str]]:
    storages = [{**S3, "regionendpoint": e, **extra} if isinstance(e, str) else {**S3, **e}
                for e in endpoints]
    groups = sharedgc.storage_groups(_hosts(make, storages),
                                     *(() if resolve is None else (resolve,)))
    return [[s.host for s in g] for g in groups]


def test_one_endpoint_however_it_is_spelled(make_settings: Callable[..., Settings]) -> None:
    nowhere = _fake_dns({})
    # Case and a trailing slash (main compared the strings: two storages, GC per server).
    assert _shared(make_settings, ["https://MINIO.lab:9000", "https://minio.lab:9000/"],
                   nowhere) == [["rep1", "rep2"]]
    # Default ports by scheme, a scheme in capitals, a trailing dot, a path.
    assert _shared(make_settings, ["https://minio.lab", "HTTPS://minio.lab:443/",
                                   "https://minio.lab.:443/registry", "http://minio.lab:80",
                                   "minio.lab", {"regionendpoint": "minio.lab:80",
                                                 "secure": False}], nowhere) == \
        [["rep1", "rep2", "rep3", "rep5"], ["rep4", "rep6"]]
    # The bucket in the host name (virtual-host style) or in the path.
    assert _shared(make_settings, ["https://registry.minio.lab:9000",
                                   "https://minio.lab:9000/registry/"], nowhere) == \
        [["rep1", "rep2"]]
    # IPv6 literals, however written; another port is another service.
    assert _shared(make_settings, ["http://[FD00::5]:7480", "http://[fd00:0::5]:7480/",
                                   "http://[fd00::5]:7481"], nowhere) == \
        [["rep1", "rep2"], ["rep3"]]


def test_a_name_and_its_address_are_one_endpoint(
        make_settings: Callable[..., Settings]) -> None:
    # The control machine's own resolver: localhost is 127.0.0.1 (and maybe ::1).
    assert _shared(make_settings, ["http://localhost:7480", "http://127.0.0.1:7480/"]) == \
        [["rep1", "rep2"]]
    dns = _fake_dns({"minio.lab": frozenset({"10.9.0.5"}),
                     "s3.lab": frozenset({"10.9.0.5", "fd00::5"}),
                     "other.lab": frozenset({"10.9.0.6"})})
    assert _shared(make_settings, ["http://10.9.0.5:7480", "http://minio.lab:7480",
                                   "http://s3.lab:7480", "http://[fd00::5]:7480",
                                   "http://other.lab:7480", "http://10.9.0.6:7481"], dns) == \
        [["rep1", "rep2", "rep3", "rep4"], ["rep5"], ["rep6"]]


def test_doubt_counts_as_shared(make_settings: Callable[..., Settings]) -> None:
    dns = _fake_dns({"minio.lab": frozenset({"10.9.0.5"})})
    # One side resolves, the other does not: maybe the same store.
    assert _shared(make_settings, ["http://minio.lab:7480", "http://minio.internal:7480"],
                   dns) == [["rep1", "rep2"]]
    assert _shared(make_settings, ["http://10.9.0.7:7480", "http://minio.internal:7480"],
                   dns) == [["rep1", "rep2"]]
    # Two names that do not resolve compare by name; another bucket is another store.
    assert _shared(make_settings, ["http://a.internal:7480", "http://b.internal:7480"],
                   dns) == [["rep1"], ["rep2"]]
    assert _shared(make_settings, ["http://minio.lab:7480", {"bucket": "other",
                                    "regionendpoint": "http://minio.internal:7480"}],
                   dns) == [["rep1"], ["rep2"]]
    # Linked through a third spelling: one group, in inventory order.
    assert _shared(make_settings, ["http://a.internal:7480", "http://b.internal:7480",
                                   "http://10.9.0.5:7480", "http://minio.lab:7480/"],
                   _fake_dns({"a.internal": frozenset({"10.9.0.5"})})) == \
        [["rep1", "rep2", "rep3", "rep4"]]


def test_spelled_differently_refuses_a_timer_and_a_partial_run(
        make_settings: Callable[..., Settings]) -> None:
    when = "Sun *-*-* 03:00:00"
    servers = _hosts(make_settings, [{**S3, "regionendpoint": "https://MINIO.lab:9000"},
                                     {**S3, "regionendpoint": "https://minio.lab:9000/"}],
                     registry_gc_schedule=when)
    error = sharedgc.schedule_refusal(servers)
    assert error is not None and "\n" not in str(error) and \
        "share one storage (rep1, rep2)" in str(error)
    group = sharedgc.group_of("rep1", sharedgc.storage_groups(servers))
    line = sharedgc.unreachable_refusal(group, ["rep1"])
    assert line is not None and line.startswith(
        "rep2: garbage_collect.py refused: rep2 not reachable")


def test_a_replica_missing_from_the_run_refuses(make_settings: Callable[..., Settings]) -> None:
    group = _hosts(make_settings, [S3, S3, S3])
    assert sharedgc.unreachable_refusal(group, ["rep1", "rep2", "rep3", "lb"]) is None
    # garbage_collect.py passes a generator over pyinfra's active hosts.
    assert sharedgc.unreachable_refusal(group, (n for n in ("lb", "rep3", "rep2", "rep1"))) \
        is None
    line = sharedgc.unreachable_refusal(group, ["rep1", "rep3"])
    assert line == ("rep2: garbage_collect.py refused: rep2 not reachable (or left out by "
                    "--limit); a collection on shared storage makes every replica read-only first "
                    "(rep1, rep2, rep3): nothing was changed")
    assert "\n" not in line


def test_schedule_refused_on_shared_storage_only(make_settings: Callable[..., Settings]) -> None:
    when = "Sun *-*-* 03:00:00"
    shared = _hosts(make_settings, [S3, S3], registry_gc_schedule=when)
    error = sharedgc.schedule_refusal(shared)
    assert error is not None and str(error).startswith(
        "rep1: setting registry_gc_schedule='Sun *-*-* 03:00:00' is not allowed: None where "
        "several registry_servers share one storage (rep1, rep2)")
    assert sharedgc.schedule_refusal(_hosts(make_settings, [S3, S3])) is None
    own = _hosts(make_settings, [{"driver": "filesystem"}, {"driver": "filesystem"}],
                 registry_gc_schedule=when)
    assert sharedgc.schedule_refusal(own) is None
    # One server on S3 has nobody to race with: its timer is allowed.
    assert sharedgc.schedule_refusal(_hosts(make_settings, [S3],
                                            registry_gc_schedule=when)) is None


def test_timer_on_the_first_server_of_each_storage(
        make_settings: Callable[..., Settings]) -> None:
    when = "Sun *-*-* 03:00:00"
    servers = _hosts(make_settings, [{"driver": "filesystem"}, S3, {"driver": "filesystem"},
                                     S3], registry_gc_schedule=when)
    assert [sharedgc.timer_wanted(s, servers) for s in servers] == [True, True, True, False]
    off = _hosts(make_settings, [S3])
    assert not sharedgc.timer_wanted(off[0], off)


def test_step_command_lines(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_storage=S3, registry_gc_delete_untagged=True)
    args = gc_timer.gc_arguments(settings, dry_run=False)
    member = sharedgc.member(settings, args, "rep_1")
    assert set(member.commands) == {"check", "readonly", "collect", "writable"}
    words = shlex.split(str(member.commands["readonly"]))
    assert words[:3] == ["/usr/local/lib/registry-kit/registry-gc.sh", "--step", "readonly"]
    assert words[3:] == args[1:]
    assert words[5] == "-"  # no data folder to measure on S3
    with pytest.raises(ValueError):
        sharedgc.step_arguments(args, "rm -rf /")


def test_cache_flush_reads_the_password_on_the_host(
        make_settings: Callable[..., Settings]) -> None:
    cache = make_settings(registry_internal_address="10.0.0.20", registry_cache_db=3)
    command = sharedgc.cache_flush_command(cache)
    assert "-h 10.0.0.20 -p 6379 -n 3 flushdb" in command
    assert "sed -n 's/^requirepass //p' /etc/redis/redis.conf" in command


# --- bucket listing -------------------------------------------------------------------------

PAGE = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.'
        'com/doc/2006-03-01/"><Name>registry</Name><IsTruncated>{truncated}</IsTruncated>'
        '{token}<Contents><Key>docker/a</Key><Size>{a}</Size></Contents><Contents><Key>'
        'docker/b</Key><Size>{b}</Size></Contents></ListBucketResult>')


def test_parse_listing_pages() -> None:
    first = PAGE.format(truncated="true", token="<NextContinuationToken>t/1=</NextContinuation"
                        "Token>", a=10, b=32).encode()
    assert sharedgc.parse_listing(first) == (42, "t/1=")
    last = PAGE.format(truncated="false", token="", a=1, b=2).encode()
    assert sharedgc.parse_listing(last) == (3, None)


class _Bucket(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        self.seen.append((self.path, self.headers.get("authorization", "")))
        if "continuation-token" not in query:
            body = PAGE.format(truncated="true", token="<NextContinuationToken>next+/=</Next"
                               "ContinuationToken>", a=100, b=20)
        else:
            assert query["continuation-token"] == "next+/="
            body = PAGE.format(truncated="false", token="", a=3, b=4)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bucket() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Bucket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Bucket.seen.clear()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_bucket_bytes_follows_pages_and_signs(make_settings: Callable[..., Settings],
                                              bucket: str) -> None:
    settings = make_settings(registry_storage={**S3, "regionendpoint": bucket,
                                               "rootdirectory": "/reg/"})
    assert sharedgc.bucket_bytes(settings.registry_storage.params) == 127
    assert len(_Bucket.seen) == 2
    for path, authorization in _Bucket.seen:
        assert path.startswith("/registry?")
        assert "prefix=reg%2Fdocker%2F" in path
        assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDLAB/")
        assert "lab-secret" not in path + authorization
