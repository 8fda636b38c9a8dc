"""Unit tests for the lab's registry images: where the 3.0.0 binary is found, its checksum
checks, version parsing, and which tags the upstream is asked to serve (no Docker needed)."""

from __future__ import annotations

import contextlib
import hashlib
import lzma
from pathlib import Path

import pytest

from lab import images, upstream
from lab.config import PROJECT_ROOT, LabError
from lab.images import Image


def test_registry3_path_is_beside_the_repo_by_default(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    path = images.registry3_xz_path({}, repo)
    assert path == tmp_path / "shared" / "registry3" / "registry-3.0.0.xz"
    # The session's checkout: /work/main -> /work/shared/registry3/...
    assert images.registry3_xz_path({}, PROJECT_ROOT) == (
        PROJECT_ROOT.parent / "shared/registry3/registry-3.0.0.xz")


def test_registry3_path_env_override(tmp_path: Path) -> None:
    env = {images.REGISTRY3_XZ_ENV: str(tmp_path / "elsewhere.xz")}
    assert images.registry3_xz_path(env, tmp_path / "clone") == tmp_path / "elsewhere.xz"
    # Empty means unset.
    blank = {images.REGISTRY3_XZ_ENV: " "}
    assert images.registry3_xz_path(blank, tmp_path / "clone").name == "registry-3.0.0.xz"


def test_registry3_available_names_the_missing_file(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    ok, reason = images.registry3_available({}, repo)
    assert ok is False
    assert str(tmp_path / "shared/registry3/registry-3.0.0.xz") in reason
    assert images.REGISTRY3_XZ_ENV in reason
    xz = tmp_path / "shared/registry3/registry-3.0.0.xz"
    xz.parent.mkdir(parents=True)
    xz.write_bytes(b"x")
    ok, reason = images.registry3_available({}, repo)
    assert ok is True and str(xz) in reason


def _fake_xz(tmp_path: Path, payload: bytes) -> Path:
    xz = tmp_path / "registry-3.0.0.xz"
    xz.write_bytes(lzma.compress(payload, format=lzma.FORMAT_XZ))
    return xz


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_unpack_refuses_an_archive_with_the_wrong_sha256(tmp_path: Path) -> None:
    xz = _fake_xz(tmp_path, b"not the registry")
    dest = tmp_path / "rootfs/bin/registry"
    with pytest.raises(LabError) as err:
        images.unpack_registry3(xz, dest)
    msg = str(err.value)
    assert str(xz) in msg and images.REGISTRY3_XZ_SHA256 in msg and "refusing" in msg
    assert "\n" not in msg
    assert not dest.exists()


def test_unpack_refuses_a_binary_with_the_wrong_sha256(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"\x7fELF pretend binary" * 1000
    xz = _fake_xz(tmp_path, payload)
    monkeypatch.setattr(images, "REGISTRY3_XZ_SHA256", _sha(xz.read_bytes()))
    dest = tmp_path / "rootfs/bin/registry"
    with pytest.raises(LabError) as err:
        images.unpack_registry3(xz, dest)
    assert _sha(payload) in str(err.value) and images.REGISTRY3_SHA256 in str(err.value)
    assert not dest.exists()  # nothing half-checked is left to be imported


def test_unpack_refuses_a_file_that_is_not_xz(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    xz = tmp_path / "registry-3.0.0.xz"
    xz.write_bytes(b"plain bytes, not xz")
    monkeypatch.setattr(images, "REGISTRY3_XZ_SHA256", _sha(xz.read_bytes()))
    dest = tmp_path / "rootfs/bin/registry"
    with pytest.raises(LabError, match="not a valid xz file"):
        images.unpack_registry3(xz, dest)
    assert not dest.exists()


def test_unpack_writes_the_checked_binary(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    payload = bytes(range(256)) * 5000  # more than one read chunk
    xz = _fake_xz(tmp_path, payload)
    monkeypatch.setattr(images, "REGISTRY3_XZ_SHA256", _sha(xz.read_bytes()))
    monkeypatch.setattr(images, "REGISTRY3_SHA256", _sha(payload))
    dest = tmp_path / "rootfs/bin/registry"
    images.unpack_registry3(xz, dest)
    assert dest.read_bytes() == payload
    assert dest.stat().st_mode & 0o777 == 0o755


def test_the_shared_registry3_file_matches_its_published_sha256() -> None:
    ok, reason = images.registry3_available()
    if not ok:
        pytest.skip(reason)
    xz = images.registry3_xz_path()
    assert images.sha256_of(xz) == (
        "d60ae752476be84946f190797a5ea8a5c9e366c90488df7b6bc7edbe641239d5")


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("github.com/docker/distribution 2.8.2+ds1\n", "2.8.2"),
        ("/bin/registry github.com/docker/distribution 2.8.3+ds1\n", "2.8.3"),
        ("registry github.com/distribution/distribution/v3 3.0.0\n", "3.0.0"),
        ("registry github.com/distribution/distribution/v3 v3.0.0\n", "3.0.0"),
        ("", ""),
    ],
)
def test_parse_registry_version(output: str, version: str) -> None:
    assert images.parse_registry_version(output) == version


def _small(with_3: bool) -> dict[str, Image]:
    small = {
        "registry": Image("lab/registry:2.8.2-a", "a", "2.8.2"),
        "registry_trixie": Image("lab/registry:trixie-b", "b", "2.8.3"),
        "busybox": Image("lab/busybox:c", "c"),
        "broken": Image("lab/broken:d", "d"),
    }
    if with_3:
        small["registry3"] = Image("lab/registry:3.0.0-e", "e", "3.0.0")
    return small


def test_upstream_contents_with_registry3() -> None:
    small = _small(True)
    refs = upstream.contents(small)
    assert refs == {
        "library/registry:2": small["registry"],
        "library/registry:2.8.2": small["registry"],
        "library/registry:2.8.3": small["registry_trixie"],
        "library/registry:3": small["registry3"],
        "library/registry:3.0.0": small["registry3"],
        "library/busybox:latest": small["busybox"],
        "library/registry:broken": small["broken"],
    }


def test_upstream_contents_without_registry3() -> None:
    refs = upstream.contents(_small(False))
    assert set(refs) == {"library/registry:2", "library/registry:2.8.2",
                         "library/registry:2.8.3", "library/busybox:latest",
                         "library/registry:broken"}


def test_registry3_image_is_none_without_the_file(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv(images.REGISTRY3_XZ_ENV, str(tmp_path / "missing.xz"))
    assert images.registry3_image() is None


def test_registry3_image_refuses_a_wrong_file(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    xz = _fake_xz(tmp_path, b"something else")
    monkeypatch.setenv(images.REGISTRY3_XZ_ENV, str(xz))
    with pytest.raises(LabError, match="refusing to use it"):
        images.registry3_image()


def test_registry3_image_key_follows_its_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    ok, reason = images.registry3_available()
    if not ok:
        pytest.skip(reason)
    first = images.registry3_image()
    assert first is not None and first.version == "3.0.0"
    assert first.tag == f"registry-kit-lab/registry:3.0.0-{first.key[:12]}"
    assert images.registry3_image() == first  # same inputs, same key: no rebuild
    monkeypatch.setattr(images, "REGISTRY_CONFIG", images.REGISTRY_CONFIG + "# changed\n")
    changed = images.registry3_image()
    assert changed is not None and changed.key != first.key


# --- host images with Docker (bench fleets) ---------------------------------------------------


def test_docker_host_image_is_named_for_its_release_and_keyed_on_its_inputs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = Image("registry-kit-lab/host:bookworm-aaaaaaaaaaaa", "a" * 64)
    image = images.docker_host_image("bookworm-docker", base)
    assert image.tag == f"registry-kit-lab/host:bookworm-docker-{image.key[:12]}"
    assert image.key != base.key
    # A new base image or a changed install script builds a new image.
    other_base = Image("registry-kit-lab/host:bookworm-bbbbbbbbbbbb", "b" * 64)
    assert images.docker_host_image("bookworm-docker", other_base).key != image.key
    monkeypatch.setattr(images, "DOCKER_HOST_SCRIPT", images.DOCKER_HOST_SCRIPT + "true\n")
    assert images.docker_host_image("bookworm-docker", base).key != image.key


def test_docker_host_image_installs_docker_io_as_the_kit_does() -> None:
    # The kit's Debian install of Docker (registry_kit/commands.py): the same package with
    # its recommends, so a client from this image is what a cold deploy leaves behind.
    assert "apt-get install -y -q docker.io" in images.DOCKER_HOST_SCRIPT
    assert images.DOCKER_HOST_SCRIPT.startswith("set -eu\n")


def test_base_release_and_unknown_release() -> None:
    assert images.base_release("bookworm-docker") == "bookworm"
    assert images.base_release("trixie") == "trixie"
    with pytest.raises(LabError, match="unknown release 'sid-docker': use one of "
                                       "bookworm, bookworm-docker, trixie, trixie-docker"):
        images.host_image("sid-docker")


def test_build_images_builds_a_base_once_before_its_docker_image(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def host(release: str) -> Image:
        built.append(release)
        return Image(f"host:{release}", release)

    def with_docker(release: str, base: Image) -> Image:
        assert base.key in built  # the base is there first
        built.append(release)
        return Image(f"host:{release}", release)

    monkeypatch.setattr(images, "build_host_image", host)
    monkeypatch.setattr(images, "build_docker_host_image", with_docker)
    monkeypatch.setattr(images, "build_small_images", lambda: {})
    monkeypatch.setattr(images, "build_trixie_registry_image", lambda base: Image("r", "r"))
    monkeypatch.setattr(images, "file_lock", lambda *a: contextlib.nullcontext())
    hosts, _ = images.build_images({"bookworm", "bookworm-docker"})
    assert sorted(built) == ["bookworm", "bookworm-docker", "trixie"]
    assert {r: i.tag for r, i in hosts.items()} == {
        "bookworm": "host:bookworm", "bookworm-docker": "host:bookworm-docker"}


def test_suite_releases_cover_every_host_the_tests_start() -> None:
    """`python -m lab images` (started early by .ci/run) builds SUITE_RELEASES: a release a
    test host uses but the list lacks would be built later, on the lanes' critical path."""
    import re

    from lab.ceph import CEPH_SPEC
    from lab.topology import DEFAULT_TOPOLOGY

    used = {spec.release for spec in [*DEFAULT_TOPOLOGY, CEPH_SPEC]}
    # Any default host may be reset with Docker in (reset_host(name, docker=True)): its
    # release's -docker image (test_backup_cache resets the trixie client so).
    used |= {images.base_release(spec.release) + images.DOCKER_FLAVOUR
             for spec in DEFAULT_TOPOLOGY}
    scanned: set[str] = set()
    for path in (PROJECT_ROOT / "tests" / "e2e").glob("*.py"):
        scanned |= set(re.findall(r'HostSpec\([^)]*?"((?:bookworm|trixie)[a-z-]*)"',
                                  path.read_text()))
    assert "bookworm-docker" in scanned  # the scan reads the e2e modules' own hosts
    used |= scanned
    assert used <= set(images.SUITE_RELEASES), sorted(used - set(images.SUITE_RELEASES))


def test_removable_takes_tags_and_the_ids_of_untagged_images() -> None:
    listing = ("1a2b3c registry-kit-lab/host:bookworm-9eeed9e49ac2\n"
               "4d5e6f <none>:<none>\n"
               "1a2b3c registry-kit-lab/host:bookworm-9eeed9e49ac2\n\n")
    assert images.removable(listing) == ["4d5e6f", "registry-kit-lab/host:bookworm-9eeed9e49ac2"]
    assert images.removable("") == []
