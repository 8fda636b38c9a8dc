"""Backup/restore decisions (what is missing, the index from the repositories tree) and the
pull-through cache settings and config section, without hosts."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from registry_kit.jobs import backup
from registry_kit.model import pull_through
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render.config import render_config

HEX_A, HEX_B = "a" * 64, "b" * 64


def test_parse_blobs_reads_the_listing() -> None:
    text = f"12 ./aa/{HEX_A}\n7 ./bb/{HEX_B}\n\n"
    assert backup.parse_blobs(text) == {HEX_A: 12, HEX_B: 7}
    assert backup.parse_blobs(None) == {}


@pytest.mark.parametrize("line", [
    "garbage", f"5 ./aa/{'a' * 63}", f"5 ./aa/{'A' * 64}", f"5 ./bb/{HEX_A}",
    f"5 ./aa/{HEX_A[:-3]}/..", "5 ./../" + "." * 62, f"x ./aa/{HEX_A}",
    f"5 ./aa/{HEX_A} extra", f"5 ../aa/{HEX_A}"])
def test_a_listing_line_of_another_shape_stops_the_backup(line: str) -> None:
    """A server's listing names paths and `rm -f` arguments: anything but `SIZE ./xx/<64
    hex>` (with xx its first two) is refused, not skipped or passed on."""
    with pytest.raises(backup.BackupError, match="srv: blob listing line"):
        backup.parse_blobs(f"12 ./aa/{HEX_A}\n{line}\n", "srv")


def test_digests_must_be_sha256_hex() -> None:
    assert backup.digest_hex(f"sha256:{HEX_A}", "x") == HEX_A
    assert backup.digest_hex(HEX_B, "x") == HEX_B
    for bad in ["sha256:" + "../" * 21 + "a", HEX_A.upper(), HEX_A + "\n", "sha512:" + HEX_A,
                None, 5, HEX_A[:63]]:
        with pytest.raises(backup.BackupError, match="is not a sha256 digest"):
            backup.digest_hex(bad, "x")


def test_missing_blobs_counts_absent_and_cut_short() -> None:
    have = {HEX_A: 12, HEX_B: 3}
    want = {HEX_A: 12, HEX_B: 7, "c" * 64: 1}
    assert backup.missing_blobs(have, want) == [HEX_B, "c" * 64]
    assert backup.missing_blobs(want, want) == []


def test_blob_path_is_the_registry_layout() -> None:
    assert backup.blob_path(HEX_A) == f"blobs/sha256/aa/{HEX_A}/data"


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tags_from_the_repositories_tree() -> None:
    tree = _tar({
        "repositories/app/svc/_manifests/tags/v1/current/link": f"sha256:{HEX_A}".encode(),
        "repositories/app/svc/_manifests/tags/v1/index/sha256/x/link": b"sha256:old",
        "repositories/solo/_manifests/tags/latest/current/link": f"sha256:{HEX_B}".encode(),
        "repositories/solo/_layers/sha256/ff/link": b"sha256:ff",
    })
    assert backup.tags_from_tar(tree) == {"app/svc": {"v1": f"sha256:{HEX_A}"},
                                          "solo": {"latest": f"sha256:{HEX_B}"}}


def test_index_names_tags_digests_sizes(make_settings: Callable[..., Settings]) -> None:
    index = backup.build_index(make_settings(), {"solo": {"latest": f"sha256:{HEX_B}"}},
                               {HEX_A: 10, HEX_B: 5}, {"blobs_copied": 2})
    assert index["repositories"] == {"solo": {"tags": {"latest": {
        "digest": f"sha256:{HEX_B}", "size": 5}}}}
    assert index["blob_count"] == 2 and index["blob_bytes"] == 15
    assert index["tag_count"] == 1


def test_object_storage_is_refused_with_its_tools(make_settings: Callable[..., Settings],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AK", "a")
    monkeypatch.setenv("SK", "s")
    settings = make_settings(registry_storage={"driver": "s3", "bucket": "b", "region": "r",
                                               "accesskey_env": "AK", "secretkey_env": "SK"})
    with pytest.raises(SettingsError) as raised:  # a RegistryKitError, not a SystemExit
        backup.refuse_unsupported(settings, "backup.py")
    message = str(raised.value)
    assert "\n" not in message and "aws s3 sync" in message


@pytest.mark.parametrize(("data", "key"), [
    ({"registry_backup_dir": "backups"}, "registry_backup_dir"),
    ({"registry_backup_dir": "/a/../etc"}, "registry_backup_dir"),
    ({"registry_restore_from": "relative/x"}, "registry_restore_from"),
    ({"registry_backup_host": "a b"}, "registry_backup_host"),
    ({"registry_mode": "cache"}, "registry_mode"),
    ({"registry_mode": "pull-through-cache"}, "registry_proxy_remoteurl"),
    ({"registry_mode": "pull-through-cache", "registry_proxy_remoteurl": "upstream:5000"},
     "registry_proxy_remoteurl"),
    ({"registry_proxy_remoteurl": "https://u", "registry_proxy_username": "me"},
     "registry_proxy_username"),
    ({"registry_proxy_ttl": "7 days"}, "registry_proxy_ttl"),
])
def test_bad_backup_and_cache_settings(make_settings: Callable[..., Settings],
                                       data: dict[str, Any], key: str) -> None:
    with pytest.raises(SettingsError, match=f"setting {key}="):
        make_settings(**data)


def _cache(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
           **data: Any) -> Settings:
    monkeypatch.setenv("UP_PW", "up-secret")
    monkeypatch.setenv("CACHE_USER_PW", "cache-user-pw")
    return make_settings(**{"registry_mode": "pull-through-cache",
                            "registry_proxy_remoteurl": "https://upstream.example:5000",
                            "registry_proxy_username": "mirror",
                            "registry_proxy_password": {"env": "UP_PW"},
                            "registry_users": [{"name": "puller",
                                                "password_env": "CACHE_USER_PW"}], **data})


def test_cache_lending_its_upstream_login_to_anyone_is_refused(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as refused:
        _cache(make_settings, monkeypatch, registry_users=[])
    line = str(refused.value)
    assert line == ("reg-host-1: setting registry_proxy_username='mirror' is not allowed: None "
                    "on a cache without registry_users: anyone who reaches the cache could "
                    "pull the private upstream's images with these credentials; add "
                    "registry_users or set registry_proxy_anonymous_acknowledged=True")
    assert "up-secret" not in line
    assert _cache(make_settings, monkeypatch, registry_users=[],
                  registry_proxy_anonymous_acknowledged=True).registry_proxy_username == "mirror"
    # With users of its own, or without upstream credentials (a public upstream): allowed.
    assert _cache(make_settings, monkeypatch).registry_users
    assert _cache(make_settings, monkeypatch, registry_users=[], registry_proxy_username=None,
                  registry_proxy_password=None).registry_proxy_username is None


@pytest.mark.parametrize("url", ["http://upstream.example:5000", "http://10.0.0.5:5000"])
def test_upstream_login_over_plain_http_is_refused(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
        url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        _cache(make_settings, monkeypatch, registry_proxy_remoteurl=url)
    assert str(refused.value) == (
        f"reg-host-1: setting registry_proxy_remoteurl={url!r} is not allowed: an https:// "
        "URL when registry_proxy_username is set: the upstream password would cross the "
        "network in clear; use https or set registry_proxy_plaintext_acknowledged=True")
    # Acknowledging the other risk does not do: each names its own.
    with pytest.raises(SettingsError, match="registry_proxy_plaintext_acknowledged"):
        _cache(make_settings, monkeypatch, registry_proxy_remoteurl=url,
               registry_proxy_anonymous_acknowledged=True)
    assert _cache(make_settings, monkeypatch, registry_proxy_remoteurl=url,
                  registry_proxy_plaintext_acknowledged=True).registry_proxy_remoteurl == url
    assert _cache(make_settings, monkeypatch, registry_proxy_remoteurl=url,
                  registry_proxy_username=None, registry_proxy_password=None)


def test_proxy_section(make_settings: Callable[..., Settings],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _cache(make_settings, monkeypatch, registry_proxy_ttl="72h")
    two = yaml.safe_load(render_config(settings, "s", major=2))["proxy"]
    three = yaml.safe_load(render_config(settings, "s", major=3))["proxy"]
    assert two == {"remoteurl": "https://upstream.example:5000", "username": "mirror",
                   "password": "up-secret"}
    assert three == {**two, "ttl": "72h"}
    assert "up-secret" not in repr(settings)
    assert "proxy" not in yaml.safe_load(render_config(make_settings(), "s"))


def test_ttl_with_registry_2_is_refused(make_settings: Callable[..., Settings],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _cache(make_settings, monkeypatch, registry_proxy_ttl="72h")
    with pytest.raises(SettingsError, match="registry_proxy_ttl='72h' is not allowed"):
        pull_through.check_version(settings, 2)
    pull_through.check_version(settings, 3)
    # Without a TTL, 2.8 is refused as a cache all the same (test_cache_serving.py).
    with pytest.raises(SettingsError, match="registry_image='registry:2' is not allowed"):
        pull_through.check_version(_cache(make_settings, monkeypatch), 2)


def test_index_leaves_out_tags_whose_manifest_is_not_in_the_backup(
        make_settings: Callable[..., Settings]) -> None:
    index = backup.build_index(make_settings(), {"solo": {"a": f"sha256:{HEX_A}",
                                                          "b": f"sha256:{HEX_B}"}},
                               {HEX_A: 10}, {})
    assert index["repositories"] == {"solo": {"tags": {"a": {"digest": f"sha256:{HEX_A}",
                                                              "size": 10}}}}
    assert index["tags_left_out"] == [f"solo:b@sha256:{HEX_B}"] and index["tag_count"] == 1


def _tree_on_disk(root: Any, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / backup.V2 / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_a_half_written_link_is_read_again(tmp_path: Any) -> None:
    good = f"sha256:{HEX_A}".encode()
    current = "repositories/solo/_manifests/tags/latest/current/link"
    layer = "repositories/solo/_layers/sha256/" + HEX_B + "/link"
    gone = "repositories/solo/_layers/sha256/" + "c" * 64 + "/link"
    # The tar as caught mid-write: current/link truncated, a layer link short, one removed.
    caught = _tar({current: b"", layer: b"sha256:bb", gone: b""})
    _tree_on_disk(tmp_path, {current: good, layer: f"sha256:{HEX_B}".encode()})
    side = backup.Side(str(tmp_path), "here")
    assert backup.bad_links(caught) == [current, layer, gone]
    settled, reread = backup.settle_links(side, caught, tries=2)
    assert reread == 3 and backup.bad_links(settled) == []
    assert backup.tags_from_tar(settled) == {"solo": {"latest": f"sha256:{HEX_A}"}}
    with tarfile.open(fileobj=io.BytesIO(settled)) as tar:
        assert sorted(tar.getnames()) == sorted([current, layer])
    # A link that stays bad stops the backup instead of landing in it.
    _tree_on_disk(tmp_path, {current: b"sha256:"})
    with pytest.raises(backup.BackupError, match="not a digest after 2 reads"):
        backup.settle_links(side, caught, tries=2)


def test_repositories_tar_leaves_out_uploads_and_temp_links(tmp_path: Any) -> None:
    link = f"sha256:{HEX_A}".encode()
    _tree_on_disk(tmp_path, {
        "repositories/solo/_manifests/tags/t/current/link": link,
        "repositories/solo/_manifests/tags/t/current/link.0f1e.tmp": b"sha2",
        "repositories/solo/_uploads/u1/data": b"partial",
    })
    tree = backup.repositories_tar(backup.Side(str(tmp_path), "here"))
    with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
        names = tar.getnames()
    assert "repositories/solo/_manifests/tags/t/current/link" in names
    assert not [n for n in names if "_uploads" in n or n.endswith(".tmp")], names


def test_a_blob_copied_mid_write_is_dropped(tmp_path: Any) -> None:
    whole, partial = b"{manifest}", b"{mani"
    whole_hex = hashlib.sha256(whole).hexdigest()
    partial_hex = hashlib.sha256(b"{manifest2}").hexdigest()
    big_hex = "d" * 64
    _tree_on_disk(tmp_path, {backup.blob_path(whole_hex): whole,
                             backup.blob_path(partial_hex): partial,
                             backup.blob_path(big_hex): b"x"})
    side = backup.Side(str(tmp_path), "here")
    sizes = {whole_hex: len(whole), partial_hex: 5, big_hex: backup.IN_PLACE_MAX + 1}
    assert backup.check_copied(side, [whole_hex, partial_hex, big_hex], sizes) == [partial_hex]
    assert not (tmp_path / backup.V2 / backup.blob_path(partial_hex)).exists()
    assert (tmp_path / backup.V2 / backup.blob_path(whole_hex)).exists()


def test_the_tree_is_read_tags_first(tmp_path: Any) -> None:
    link = f"sha256:{HEX_A}".encode()
    tag = "repositories/solo/_manifests/tags/t/current/link"
    others = ["repositories/solo/_manifests/tags/t/index/sha256/" + HEX_A + "/link",
              "repositories/solo/_manifests/revisions/sha256/" + HEX_A + "/link",
              "repositories/solo/_layers/sha256/" + HEX_A + "/link"]
    _tree_on_disk(tmp_path, {name: link for name in [*others, tag]})
    tree, reread = backup.tree_snapshot(backup.Side(str(tmp_path), "here"))
    with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
        names = tar.getnames()
    # The tag first: what the rest is read for exists by the time it is read.
    assert names[0] == tag and sorted(names[1:]) == sorted(others) and reread == 0


# --- what the other side may send (issue 22) ---

def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 10,
            link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


BLOB = f"blobs/sha256/aa/{HEX_A}/data"
TAG = "repositories/team/app-1/_manifests/tags/v1.0_rc-2/current/link"


def test_only_asked_for_blobs_as_regular_files_pass() -> None:
    wanted = {HEX_A: 10}
    assert backup.check_blob_member(_member(BLOB), wanted, "srv") == HEX_A
    assert backup.check_blob_member(_member(BLOB, tarfile.AREGTYPE), wanted, "srv") == HEX_A
    refused = [
        _member("blobs/sha256/zz", tarfile.SYMTYPE, 0, "/root/.ssh"),
        _member(BLOB, tarfile.SYMTYPE, 0, "/etc/passwd"),
        _member(BLOB, tarfile.LNKTYPE, 0, "etc/passwd"),
        _member(BLOB, tarfile.CHRTYPE, 0), _member(BLOB, tarfile.BLKTYPE, 0),
        _member(BLOB, tarfile.FIFOTYPE, 0), _member(BLOB, tarfile.DIRTYPE, 0),
        _member(BLOB, tarfile.GNUTYPE_SPARSE),
        _member("blobs/sha256/zz/authorized_keys"), _member("../" + BLOB),
        _member("/" + BLOB), _member(f"blobs/sha256/bb/{HEX_A}/data"),
        _member(f"blobs/sha256/bb/{HEX_B}/data"),  # a real blob, not asked for
        _member(BLOB + "/x"), _member("./" + BLOB)]
    for member in refused:
        with pytest.raises(backup.BackupError, match=r"^srv: sent .* not a blob asked for"):
            backup.check_blob_member(member, wanted, "srv")
    with pytest.raises(backup.BackupError, match="more than"):
        backup.check_blob_member(_member(BLOB, size=backup.IN_PLACE_MAX + 1), wanted, "srv")


def test_only_link_files_of_the_tree_pass() -> None:
    for name in [TAG, f"repositories/a/_layers/sha256/{HEX_A}/link",
                 f"repositories/a/b/c/_manifests/revisions/sha256/{HEX_A}/link",
                 f"repositories/a/_manifests/tags/t/index/sha256/{HEX_A}/link"]:
        backup.check_tree_member(_member(name, size=71), "srv")
    for member in [
            _member(TAG, tarfile.SYMTYPE, 0, "/root/.ssh/authorized_keys"),
            _member("repositories/a", tarfile.SYMTYPE, 0, "/root"),
            _member(TAG, tarfile.LNKTYPE, 0, "x"), _member(TAG, tarfile.CHRTYPE, 0),
            _member(TAG, tarfile.DIRTYPE, 0),
            _member("repositories/../../root/_layers/link"),
            _member("repositories/a/../../_layers/link"), _member("/" + TAG),
            _member("repositories/.ssh/_layers/link"), _member("repositories/a//_layers/link"),
            _member("repositories/a/_manifests/tags/t/current/data"),
            _member("repositories/a/_uploads/u/data"), _member("etc/_layers/link"),
            _member(TAG, size=backup.LINK_FILE_MAX + 1)]:
        with pytest.raises(backup.BackupError, match=r"^srv: sent .* in the repositories tree"):
            backup.check_tree_member(member, "srv")


class EndlessSource:
    def __init__(self) -> None:
        self.aborted = False
        self.reads = 0

    def read(self, size: int = backup.CHUNK) -> bytes:
        self.reads += 1
        return b"\0" * size

    def finish(self) -> tuple[int, str]:
        raise AssertionError("an endless source never ends")

    def abort(self) -> None:
        self.aborted = True


def test_the_bounded_reader_stops_an_endless_stream(tmp_path: Any) -> None:
    source = EndlessSource()
    with pytest.raises(backup.BackupError, match="larger than 3145728 bytes"):
        backup.read_bounded(source, 3 << 20, "srv: repositories tar")
    assert source.aborted and source.reads == 4
    side = backup.Side(str(tmp_path), "here")
    assert side.check_bounded("printf abc", 1 << 20, "t") == b"abc"
    started = time.monotonic()
    with pytest.raises(backup.BackupError, match="here: endless is larger than"):
        side.check_bounded("yes", 1 << 20, "endless")
    assert time.monotonic() - started < 10
    with pytest.raises(backup.BackupError, match="here: t failed"):
        side.check_bounded("echo x; exit 3", 1 << 20, "t")


def test_the_tree_hash_is_the_shell_one(tmp_path: Any) -> None:
    files = {TAG: f"sha256:{HEX_A}".encode(),
             f"repositories/a/_layers/sha256/{HEX_B}/link": f"sha256:{HEX_B}".encode(),
             f"repositories/B/_layers/sha256/{HEX_A}/link": f"sha256:{HEX_A}".encode()}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    shell = backup.Side(str(tmp_path), "here").check(backup.tree_hash_command(str(tmp_path)))
    assert backup.tree_hash(_tar(files)) == shell.decode().strip()
    (tmp_path / "empty" / "repositories").mkdir(parents=True)
    empty = backup.Side("", "here").check(backup.tree_hash_command(str(tmp_path / "empty")))
    assert backup.tree_hash(_tar({})) == empty.decode().strip()


def _fake_tools(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, tar_create: str = "",
                find: str = "") -> None:
    """`tar -c...` (and `find`) replaced for commands run here, as a broken-into server's."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    if tar_create:
        (bin_dir / "tar").write_text(
            "#!/bin/sh\ncase \" $* \" in *' -cf '*) " + tar_create + ";; esac\n"
            'exec /usr/bin/tar "$@"\n')
    if find:
        (bin_dir / "find").write_text("#!/bin/sh\n" + find + "\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _hostile_blob_tar(path: Any, outside: Any) -> None:
    """A symlink member into `outside`, then a file through it (the issue's two passes)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_member("blobs/sha256/zz", tarfile.SYMTYPE, 0, str(outside)))
        payload = b"ssh-ed25519 AAAA attacker\n"
        info = _member("blobs/sha256/zz/authorized_keys", size=len(payload))
        tar.addfile(info, io.BytesIO(payload))


def test_a_symlink_from_the_server_writes_nothing_outside(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "dot-ssh"
    outside.mkdir()
    hostile = tmp_path / "hostile.tar"
    _hostile_blob_tar(hostile, outside)
    server, store = tmp_path / "server", tmp_path / "store"
    _tree_on_disk(server, {backup.blob_path(HEX_A): b"x" * 10})
    _fake_tools(tmp_path, monkeypatch, tar_create=f"cat {hostile}; exit 0")
    source, sink = backup.Side(str(server), "srv"), backup.Side(str(store), "store")
    for _pass in range(2):
        with pytest.raises(backup.BackupError, match=r"^srv: sent symlink 'blobs/sha256/zz'"):
            backup.copy_blobs(source, sink, [HEX_A], {HEX_A: 10})
    assert list(outside.iterdir()) == []
    assert not [p for p in store.rglob("*") if p.is_symlink()]


@pytest.mark.parametrize(("stream", "expected"), [
    ("head -c 3000000 /dev/zero", "after the end of its tar"),
    ("yes", "its tar of blobs is broken"),
    ("cat BOGUS", "sent file '../../escape', which is not a blob"),
])
def test_a_broken_blob_stream_stops_the_copy(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                             stream: str, expected: str) -> None:
    with tarfile.open(tmp_path / "bogus.tar", "w") as tar:
        tar.addfile(_member("../../escape", size=3), io.BytesIO(b"abc"))
    _fake_tools(tmp_path, monkeypatch, tar_create=stream.replace(
        "BOGUS", str(tmp_path / "bogus.tar")))
    (tmp_path / "store").mkdir()
    with pytest.raises(backup.BackupError, match=expected):
        backup.copy_blobs(backup.Side(str(tmp_path), "srv"),
                          backup.Side(str(tmp_path / "store"), "store"), [HEX_A], {HEX_A: 3})
    assert not (tmp_path.parent / "escape").exists()


def test_a_failing_find_fails_the_tree_copy(tmp_path: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """find failing half-way made an empty or partial tree look like the server's."""
    _tree_on_disk(tmp_path, {TAG: f"sha256:{HEX_A}".encode()})
    _fake_tools(tmp_path, monkeypatch, find="exit 1")
    with pytest.raises(backup.BackupError, match="repositories tar failed"):
        backup.tree_snapshot(backup.Side(str(tmp_path), "srv"))


def test_a_tree_stream_past_the_limit_is_stopped(tmp_path: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _tree_on_disk(tmp_path, {TAG: f"sha256:{HEX_A}".encode()})
    _fake_tools(tmp_path, monkeypatch, tar_create="exec yes")
    with pytest.raises(backup.BackupError, match="larger than 1048576 bytes"):
        backup.tree_snapshot(backup.Side(str(tmp_path), "srv"), None, 1 << 20)


def test_a_tree_that_does_not_hash_as_sent_never_replaces_the_live_one(tmp_path: Any) -> None:
    live = {TAG: f"sha256:{HEX_A}".encode()}
    _tree_on_disk(tmp_path, live)
    sink = backup.Side(str(tmp_path), "srv")
    new_tree = _tar({TAG: f"sha256:{HEX_B}".encode()})
    sink_broken = backup.Side(str(tmp_path), "srv")
    sink_broken.run = lambda command, stdin=b"": (  # type: ignore[method-assign]
        backup.Side.run(sink, command.replace(backup.EXTRACT, "cat >/dev/null"), stdin))
    with pytest.raises(backup.BackupError, match="hashes to"):
        backup.put_repositories(sink_broken, new_tree)
    assert (tmp_path / backup.V2 / TAG).read_bytes() == live[TAG]
    backup.put_repositories(sink, new_tree)
    assert (tmp_path / backup.V2 / TAG).read_bytes() == f"sha256:{HEX_B}".encode()


def test_pruning_keeps_the_newest_and_every_blob_they_need() -> None:
    names = ["20260101T000000.000Z", "20260102T000000.000Z", "20260103T000000.000Z"]
    needs: dict[str, set[str] | None] = {names[1]: {"a", "b"}, names[2]: {"b", "c"}}
    assert backup.prune_plan(names, 2, needs, {"a", "b", "c", "d"}) == ([names[0]], ["d"])
    assert backup.prune_plan(names, 7, {**needs, names[0]: {"d"}}, {"a", "b", "c", "d"}) == (
        [], [])
    assert backup.prune_plan(names, 1, needs, {"a", "b", "c"}) == (names[:2], ["a"])
    # An unreadable index of a kept generation: no blob is removed.
    assert backup.prune_plan(names, 2, {**needs, names[1]: None}, {"a", "d"}) == ([names[0]], [])
    assert backup.parse_generations(f"{names[1]}\n.{names[2]}.partial\nx\n{names[0]}\n") == \
        names[:2]


def test_a_tree_must_match_its_index(make_settings: Callable[..., Settings]) -> None:
    tree = _tar({TAG: f"sha256:{HEX_A}".encode()})
    index = backup.build_index(make_settings(), backup.tags_from_tar(tree), {HEX_A: 3}, {},
                               "g", backup.tree_hash(tree))
    backup.tree_matches_index(tree, index, "b")
    with pytest.raises(backup.BackupError, match="lacks 1 tags"):
        backup.tree_matches_index(_tar({}), index, "b")
    with pytest.raises(backup.BackupError, match="does not hash"):
        backup.tree_matches_index(_tar({TAG: f"sha256:{HEX_A}".encode(),
                                        "repositories/x/_layers/link": b"sha256:" + b"c" * 64}),
                                  index, "b")


# --- generations, run here against a registry data folder in tmp_path ---

def _registry(root: Any, images: dict[str, bytes]) -> dict[str, str]:
    """A registry data folder with one manifest blob per tag `repo:tag`; {ref: hex}."""
    digests = {}
    for ref, content in images.items():
        repo, tag = ref.split(":")
        digest = hashlib.sha256(content).hexdigest()
        base = f"repositories/{repo}/_manifests"
        _tree_on_disk(root, {backup.blob_path(digest): content,
                             f"{base}/tags/{tag}/current/link": f"sha256:{digest}".encode(),
                             f"{base}/revisions/sha256/{digest}/link":
                                 f"sha256:{digest}".encode()})
        digests[ref] = digest
    return digests


def test_generations_share_blobs_and_are_pruned(
        tmp_path: Any, make_settings: Callable[..., Settings]) -> None:
    server, store = tmp_path / "server", tmp_path / "backups"
    settings = dataclasses.replace(make_settings(
        registry_backup_dir=str(store), registry_backup_keep=2), registry_data_dir=str(server))
    target = types.SimpleNamespace(name="srv", connector=types.SimpleNamespace(client=None))
    root = str(store / "srv")
    digests = _registry(server, {"a:1": b"one"})
    backup.run_backup(target, settings, root)
    time.sleep(0.01)
    digests.update(_registry(server, {"b:1": b"two"}))
    backup.run_backup(target, settings, root)
    generations = backup.parse_generations(" ".join(os.listdir(store / "srv/generations")))
    assert len(generations) == 2
    first = json.loads((store / "srv/generations" / generations[0] / "index.json").read_text())
    assert first["tag_count"] == 1 and first["generation"] == generations[0]
    assert backup_blob_count(store / "srv") == 2  # "one" copied once, shared
    # The server loses a:1 (deleted, then GC): the next generation lacks it, and the
    # oldest generations still hold it until they are pruned.
    shutil.rmtree(server / backup.V2 / "repositories/a")
    (server / backup.V2 / backup.blob_path(digests["a:1"])).unlink()
    time.sleep(0.01)
    backup.run_backup(target, settings, root)
    kept = backup.parse_generations(" ".join(os.listdir(store / "srv/generations")))
    assert kept == sorted(kept) and len(kept) == 2 and generations[0] not in kept
    assert backup_blob_count(store / "srv") == 2  # a:1's still needed by a kept generation
    time.sleep(0.01)
    _registry(server, {"c:1": b"three"})
    backup.run_backup(target, settings, root)
    assert backup_blob_count(store / "srv") == 2  # b:1 and c:1; a:1's blob went with its last
    newest = json.loads((store / "srv/index.json").read_text())
    assert set(newest["repositories"]) == {"b", "c"}


def backup_blob_count(root: Any) -> int:
    return len(list((root / backup.V2 / "blobs/sha256").glob("*/*/data")))


def test_a_backup_before_generations_becomes_the_oldest(
        tmp_path: Any, make_settings: Callable[..., Settings]) -> None:
    server, root = tmp_path / "server", tmp_path / "backups" / "srv"
    _registry(server, {"a:1": b"one"})
    _tree_on_disk(root, {TAG: f"sha256:{HEX_A}".encode()})
    (root / "index.json").write_text(json.dumps({"time": "2025-05-04T03:02:01Z", "blobs": {},
                                                 "repositories": {}}))
    settings = dataclasses.replace(make_settings(registry_backup_dir=str(root.parent)),
                                   registry_data_dir=str(server))
    target = types.SimpleNamespace(name="srv", connector=types.SimpleNamespace(client=None))
    message = backup.run_backup(target, settings, str(root))
    assert "became generation 20250504T030201.000Z" in message
    old = root / "generations/20250504T030201.000Z"
    assert (old / TAG).read_bytes() == f"sha256:{HEX_A}".encode()
    assert not (root / backup.V2 / "repositories").exists()


# The new settings of issue 22 against a reviewer's hostile values: one line naming the key.
@pytest.mark.parametrize("value", ["$(id)", "20261206T120000.000Z\nx", "../..", "/etc",
                                   "20261206T120000.000Z'", "%s,a", "fe80::1%eth0", ""])
def test_hostile_restore_generation_is_refused(make_settings: Any, value: str) -> None:
    with pytest.raises(SettingsError, match="registry_restore_generation"):
        make_settings(registry_restore_generation=value)


@pytest.mark.parametrize("key", ["registry_proxy_anonymous_acknowledged",
                                 "registry_proxy_plaintext_acknowledged",
                                 "registry_backup_keep", "registry_backup_tree_max_bytes"])
@pytest.mark.parametrize("value", ["yes", "$(id)", "1,2", -1])
def test_hostile_new_flags_and_counts_are_refused(make_settings: Any, key: str,
                                                   value: object) -> None:
    with pytest.raises(SettingsError, match=key):
        make_settings(**{key: value})


def test_tree_tar_of_a_registry_nothing_was_pushed_to_is_empty(tmp_path: Any) -> None:
    """The registry makes docker/registry/v2 at its first push: before it, the tree tar is an
    empty archive (as the blob listing is empty), not `cd: No such file or directory`."""
    import subprocess

    base = tmp_path / "data" / backup.V2
    for tags in (True, False):
        run = subprocess.run(backup.tree_tar_command(str(base), tags), shell=True,
                             capture_output=True, check=False)
        assert run.returncode == 0, run.stderr
        assert backup.tar_members(run.stdout) == []
    link = base / "repositories/team/app/_manifests/tags/1/current/link"
    link.parent.mkdir(parents=True)
    link.write_text("sha256:" + "a" * 64)
    run = subprocess.run(backup.tree_tar_command(str(base), True), shell=True,
                         capture_output=True, check=True)
    assert [member.name for member, _ in backup.tar_members(run.stdout)] == [
        "repositories/team/app/_manifests/tags/1/current/link"]


def test_repositories_hash_of_an_empty_registry_is_the_empty_backups(tmp_path: Any) -> None:
    """Nothing pushed yet: the server's tree hashes as an empty backup's does (so a second
    backup changes nothing); a missing data folder is unknown (empty output)."""
    import subprocess

    def hashed(command: str) -> str:
        return subprocess.run(command, shell=True, capture_output=True, text=True,
                              check=True).stdout.strip()

    root = tmp_path / "data"
    root.mkdir()
    empty_backup = tmp_path / "generation"
    (empty_backup / "repositories").mkdir(parents=True)
    assert hashed(backup.repositories_hash_command(str(root))) == \
        hashed(backup.tree_hash_command(str(empty_backup))) == backup.tree_hash(b"")
    assert hashed(backup.repositories_hash_command(str(tmp_path / "absent"))) == ""
    link = root / backup.V2 / "repositories/team/app/_manifests/tags/1/current/link"
    link.parent.mkdir(parents=True)
    link.write_text("sha256:" + "b" * 64)
    assert hashed(backup.repositories_hash_command(str(root))) not in ("", backup.tree_hash(b""))
