"""Backup/restore decisions (what is missing, the index from the repositories tree) and the
pull-through cache settings and config section, without hosts."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from registry_kit import pull_through
from registry_kit.operations import backup
from registry_kit.render.config import render_config
from registry_kit.settings import Settings, SettingsError

HEX_A, HEX_B = "a" * 64, "b" * 64


def test_parse_blobs_keeps_only_well_formed_lines() -> None:
    text = f"12 {HEX_A}\n7 {HEX_B}\ngarbage\n5 short\n"
    assert backup.parse_blobs(text) == {HEX_A: 12, HEX_B: 7}
    assert backup.parse_blobs(None) == {}


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
    with pytest.raises(SystemExit) as raised:
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
