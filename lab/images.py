"""Images the lab runs, all built locally (Docker Hub is unreachable) and cached by content key.

- Host images: Debian (bookworm, trixie) with systemd and sshd, built by debootstrap from the
  machine's own apt mirror, imported with `docker import`. No Docker inside: the kit installs
  it, like on a real server.
- Registry images, laid out like the official ones and pushed into the upstream registry:
  `registry` (the machine's Debian bookworm docker-registry, distribution 2.8.2),
  `registry_trixie` (Debian trixie's docker-registry, 2.8.3, with trixie's libc and loader,
  taken from a throwaway container of the trixie host image) and `registry3` (the genuine
  3.0.0 binary from ../shared/registry3/, checked against its sha256; left out, with the
  reason, when that file is missing: see `registry3_available()`).
- `busybox` (busybox-static) and `broken` (starts and exits non-zero whatever it is asked).
- Host images with Docker already in (release `<release>-docker`, e.g. `bookworm-docker`):
  the host image plus Debian's `docker.io`, installed the way the kit installs it. For
  benches with many clients (bench/fleet.py), which must not each spend a cold install.

Each image's tag ends with the first 12 hex digits of a hash over everything that goes into
it, so a changed recipe, package list or mirror builds a new image and an unchanged one is
never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab.config import LABEL, PROJECT_ROOT, LabError, file_lock, say
from lab.engine import docker, docker_inspect, run

# Bump when the way an image is made changes, so cached images are rebuilt.
HOST_RECIPE = "3"
DOCKER_HOST_RECIPE = "1"
SMALL_RECIPE = "1"
TRIXIE_REGISTRY_RECIPE = "1"
REGISTRY3_RECIPE = "1"

RELEASES = ("bookworm", "trixie")
# The host images the test suite starts hosts from (`python -m lab images` builds them all).
SUITE_RELEASES = ("bookworm", "bookworm-docker", "trixie", "trixie-docker")
HOST_PACKAGES = (
    "systemd", "systemd-sysv", "openssh-server", "ca-certificates", "iproute2", "procps",
    "curl", "gnupg", "sudo", "python3",
)
HOST_REPO = "registry-kit-lab/host"
BUILD_ROOT = Path("/var/tmp")

# Units that only fail or hang in a container (no kernel modules, no real consoles).
MASKED_UNITS = (
    "systemd-modules-load.service",
    "getty@tty1.service",
    "console-getty.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-firstboot.service",
)

SSHD_LAB_CONF = """\
# registry-kit lab: root logs in with the lab's key only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers root
UseDNS no
"""

REGISTRY_CONFIG = """\
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


@dataclass(frozen=True)
class Image:
    """A lab image: its tag, content key and, for registry images, the registry's version."""

    tag: str
    key: str
    version: str = ""


# --- apt mirror --------------------------------------------------------------------------


def apt_mirror() -> str:
    """The main Debian mirror URI of this machine's apt sources (not -security, not others)."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled") != "no":
                candidates += fields.get("uris", "").split()
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if words and words[0] == "deb" and len(words) > 1:
                candidates.append(words[1])
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    for uri in candidates:
        if "debian" in uri and "security" not in uri and "debian-ports" not in uri:
            return uri.rstrip("/")
    raise LabError("no main Debian mirror found in /etc/apt/sources.list(.d)")


# --- helpers -------------------------------------------------------------------------------


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_exists(tag: str) -> bool:
    return bool(docker_inspect("image", [tag]))


def _unmount_below(root: Path) -> None:
    # A failed debootstrap can leave /proc or /sys mounted inside the target: never rmtree
    # through a live mount.
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def _import_dir(rootfs: Path, tag: str, changes: list[str]) -> None:
    """`tar -C rootfs -c . | docker import --change ... - tag`."""
    args = ["docker", "import"]
    for change in changes:
        args += ["--change", change]
    args += ["-", tag]
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    imp = subprocess.run(args, stdin=tar.stdout, capture_output=True, text=True)
    assert tar.stdout is not None
    tar.stdout.close()
    tar_err = tar.stderr.read().decode() if tar.stderr else ""
    if tar.wait() != 0 or imp.returncode != 0:
        raise LabError(f"import of {tag} failed: {(imp.stderr or tar_err).strip()[-300:]}")


def _labels(kind: str, key: str, **extra: str) -> list[str]:
    items = {f"{LABEL}.image": kind, f"{LABEL}.key": key, **extra}
    return [f"LABEL {k}={json.dumps(v)}" for k, v in items.items()]


# --- host images -----------------------------------------------------------------------------


def base_release(release: str) -> str:
    """The Debian release a host image is made from: `bookworm-docker` -> `bookworm`."""
    return release.removesuffix(DOCKER_FLAVOUR)


def host_image(release: str) -> Image:
    """Tag and key of the host image for `release` (whether built or not)."""
    base = base_release(release)
    if base not in RELEASES:
        names = ", ".join(f"{r}, {r}{DOCKER_FLAVOUR}" for r in RELEASES)
        raise LabError(f"unknown release {release!r}: use one of {names}")
    if base != release:
        return docker_host_image(release, host_image(base))
    key = _key("host", HOST_RECIPE, release, sorted(HOST_PACKAGES), apt_mirror(),
               sorted(MASKED_UNITS), SSHD_LAB_CONF)
    return Image(tag=f"{HOST_REPO}:{release}-{key[:12]}", key=key)


def _prepare_host_rootfs(rootfs: Path) -> None:
    """Container-friendly tweaks applied to a debootstrapped tree before import."""
    sshd_conf = rootfs / "etc/ssh/sshd_config.d/registry-kit-lab.conf"
    sshd_conf.parent.mkdir(parents=True, exist_ok=True)
    sshd_conf.write_text(SSHD_LAB_CONF)
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    ssh_dir.chmod(0o700)
    # Empty machine-id: systemd makes a fresh one per container boot, so hosts differ.
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    systemd_dir = rootfs / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = systemd_dir / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # No .debs or apt lists in the image: a host runs `apt-get update` like a fresh server.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*"):
        for path in rootfs.glob(pattern):
            path.unlink()


def build_host_image(release: str) -> Image:
    """Build (once) the host image for `release` with debootstrap (a `-docker` one from
    its base image, built first when missing)."""
    if base_release(release) != release:
        return build_docker_host_image(release, build_host_image(base_release(release)))
    image = host_image(release)
    if image_exists(image.tag):
        return image
    mirror = apt_mirror()
    say(f"building host image {image.tag} (debootstrap {release} from {mirror})")
    workdir = Path(tempfile.mkdtemp(prefix=f"registry-kit-lab-{release}-", dir=BUILD_ROOT))
    rootfs = workdir / "rootfs"
    try:
        proc = run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(HOST_PACKAGES)}",
             release, str(rootfs), mirror],
            check=False, timeout=900,
        )
        if proc.returncode != 0:
            log = rootfs / "debootstrap/debootstrap.log"
            tail = log.read_text()[-400:] if log.exists() else proc.stderr[-400:]
            raise LabError(f"debootstrap {release} failed: {tail.strip().splitlines()[-1:]}")
        _prepare_host_rootfs(rootfs)
        _import_dir(rootfs, image.tag, [
            'CMD ["/sbin/init"]',
            *_labels("host", image.key, **{f"{LABEL}.release": release}),
        ])
    finally:
        _unmount_below(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"built {image.tag}")
    return image


# --- host images with Docker: bench fleets -------------------------------------------------

DOCKER_FLAVOUR = "-docker"
# Runs in a throwaway container of the base host image (its apt source is the machine's own
# mirror). The same install as the kit's on a Debian host without Docker (`apt-get install
# -y -q docker.io`, recommends included), so a client from this image is what a cold deploy
# leaves; then no apt lists or .debs, as in the base image. The unit is enabled by the
# package, so dockerd starts when the host boots.
DOCKER_HOST_SCRIPT = r"""set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q docker.io
apt-get clean
rm -f /var/lib/apt/lists/*_* /var/cache/apt/*.bin
: > /etc/machine-id
"""


def docker_host_image(release: str, base: Image) -> Image:
    """Tag and key of the image of `release` (`bookworm-docker`) made from host image `base`
    (whether built or not)."""
    key = _key("host-docker", DOCKER_HOST_RECIPE, base.key, DOCKER_HOST_SCRIPT)
    return Image(tag=f"{HOST_REPO}:{release}-{key[:12]}", key=key)


def build_docker_host_image(release: str, base: Image) -> Image:
    """Build (once) the image of `release` (`bookworm-docker`): `docker.io` installed into
    host image `base`, committed."""
    image = docker_host_image(release, base)
    if image_exists(image.tag):
        return image
    say(f"building {image.tag} (docker.io into {base.tag})")
    # Per process, as for the 2.8.3 image: other namespaces may build it at the same time.
    name = f"registry-kit-lab-build-{image.key[:12]}-{os.getpid()}"
    try:
        docker("run", "--name", name, base.tag, "sh", "-c", DOCKER_HOST_SCRIPT, timeout=900)
        changes = ['CMD ["/sbin/init"]',
                   *_labels("host", image.key, **{f"{LABEL}.release": release})]
        docker("commit", *(arg for change in changes for arg in ("--change", change)),
               name, image.tag)
    finally:
        docker("rm", "-f", name, check=False)
    say(f"built {image.tag}")
    return image


# --- small images: registry, busybox, broken -----------------------------------------------

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
BUSYBOX_BINARY = Path("/bin/busybox")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
# Default config paths of the official images: 2.x and 3.x differ.
CONFIG_PATH_2 = "/etc/docker/registry/config.yml"
CONFIG_PATH_3 = "/etc/distribution/config.yml"


def _shared_libs(binary: Path) -> list[Path]:
    """Absolute paths of the shared objects `binary` loads (per ldd), the loader included."""
    out = run(["ldd", str(binary)]).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        for word in parts:
            if word.startswith("/"):
                libs.append(Path(word))
                break
    return libs


def _copy_in(rootfs: Path, src: Path, dest: str | None = None) -> None:
    target = rootfs / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), target)


def _base_rootfs(rootfs: Path) -> None:
    for sub in ("etc", "tmp", "root", "var/lib"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "etc/passwd").write_text(PASSWD)
    (rootfs / "etc/group").write_text(GROUP)


def _import_registry(rootfs: Path, img: Image, config_path: str,
                     env: tuple[str, ...] = ()) -> None:
    """Finish a registry rootfs that holds /bin/registry (and its libs, CA bundle) and import
    it the way the official image is laid out."""
    _base_rootfs(rootfs)
    conf = rootfs / config_path.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(REGISTRY_CONFIG)
    (rootfs / "var/lib/registry").mkdir(parents=True, exist_ok=True)
    _import_dir(rootfs, img.tag, [
        'ENTRYPOINT ["/bin/registry"]',
        f'CMD ["serve",{json.dumps(config_path)}]',
        "EXPOSE 5000",
        'VOLUME ["/var/lib/registry"]',
        *(f"ENV {item}" for item in env),
        *_labels("registry", img.key, **{f"{LABEL}.version": img.version}),
    ])


def parse_registry_version(output: str) -> str:
    """`registry --version` output -> "2.8.3" (Debian's "+ds1" suffix dropped); "" if none.

    "github.com/docker/distribution 2.8.3+ds1" and
    "registry github.com/distribution/distribution/v3 3.0.0" both end with the version.
    """
    words = output.split()
    return words[-1].split("+")[0].removeprefix("v") if words else ""


def _image_version(tag: str) -> str:
    """Registry version a built lab image was labelled with ("" when absent)."""
    found = docker_inspect("image", [tag])
    labels = (found[0].get("Config") or {}).get("Labels") or {} if found else {}
    return str(labels.get(f"{LABEL}.version", ""))


def _check_image_version(img: Image) -> None:
    # The image itself, run as a container, must say what it is: proves binary, libc and
    # loader fit together.
    out = docker("run", "--rm", "--network", "none", img.tag, "--version", check=False)
    found = parse_registry_version(out.stdout)
    if out.returncode != 0 or found != img.version:
        docker("image", "rm", "-f", img.tag, check=False)
        detail = (out.stdout + out.stderr).strip()[-200:]
        raise LabError(f"{img.tag}: `--version` gave {detail!r}, expected {img.version}")


# --- registry 2.8.3: Debian trixie's package with trixie's libc ----------------------------

# Runs in a throwaway container of the trixie host image (its apt source is the machine's
# own mirror, written by debootstrap): puts the binary, the libs ldd names (resolved, at the
# paths the loader looks for them) and trixie's CA bundle under /out, prints the version.
TRIXIE_REGISTRY_SCRIPT = r"""set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
cd /tmp
apt-get download -qq docker-registry
dpkg-deb -x docker-registry_*.deb pkg
bin=/tmp/pkg/usr/bin/docker-registry
install -D -m 0755 "$bin" /out/bin/registry
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$(readlink -f "$lib")" "/out$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt
"$bin" --version
"""
TRIXIE_REGISTRY_REPO = "registry-kit-lab/registry"


def trixie_registry_image(trixie_host: Image | None = None) -> Image:
    """Tag and key of the 2.8.3 image; its version is known once built (from its label).

    Keyed on the trixie host image (release, packages, mirror): the package comes from the
    same mirror and release.
    """
    host = trixie_host or host_image("trixie")
    key = _key("registry-trixie", TRIXIE_REGISTRY_RECIPE, host.key, TRIXIE_REGISTRY_SCRIPT,
               REGISTRY_CONFIG, PASSWD, GROUP, CONFIG_PATH_2)
    tag = f"{TRIXIE_REGISTRY_REPO}:trixie-{key[:12]}"
    return Image(tag, key, _image_version(tag))


def build_trixie_registry_image(trixie_host: Image) -> Image:
    """Build (once) the 2.8.3 image from Debian trixie's docker-registry package."""
    image = trixie_registry_image(trixie_host)
    if image.version:
        return image
    say(f"building {image.tag} (docker-registry from trixie)")
    workdir = Path(tempfile.mkdtemp(prefix="registry-kit-lab-trixie-reg-", dir=BUILD_ROOT))
    # Per process: labs in other namespaces may build the same image at the same time.
    # `--rm` is done by the engine, so even a killed build's container goes once it ends.
    name = f"registry-kit-lab-build-{image.key[:12]}-{os.getpid()}"
    try:
        rootfs = workdir / "rootfs"
        rootfs.mkdir(mode=0o755)  # becomes the image's /: not mkdtemp's 0700
        proc = docker("run", "--rm", "--name", name, "-v", f"{rootfs}:/out",
                      trixie_host.tag, "sh", "-c", TRIXIE_REGISTRY_SCRIPT, timeout=600)
        version = parse_registry_version(proc.stdout)
        if not version:
            raise LabError(f"{image.tag}: no version from trixie's docker-registry")
        image = Image(image.tag, image.key, version)
        _import_registry(rootfs, image, CONFIG_PATH_2)
        _check_image_version(image)
    finally:
        docker("rm", "-f", name, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"built {image.tag} (registry {image.version})")
    return image


# --- registry 3.0.0: the genuine binary from ../shared/registry3/ --------------------------

REGISTRY3_XZ_ENV = "REGISTRY_KIT_REGISTRY3_XZ"
REGISTRY3_XZ_NAME = "registry-3.0.0.xz"
REGISTRY3_XZ_SHA256 = "d60ae752476be84946f190797a5ea8a5c9e366c90488df7b6bc7edbe641239d5"
REGISTRY3_SHA256 = "f91be40fba1589581fe4a94ce50394d21aa119417e868276daa3c8a0338f3637"
REGISTRY3_VERSION = "3.0.0"
# As in the official 3.0.0 image: without it 3.0.0 tries to send traces to localhost:4318
# and logs an error every 5 s.
REGISTRY3_ENV = ("OTEL_TRACES_EXPORTER=none",)


def registry3_xz_path(env: Mapping[str, str] | None = None,
                      project_root: Path = PROJECT_ROOT) -> Path:
    """Where the registry 3.0.0 binary (xz) is: $REGISTRY_KIT_REGISTRY3_XZ, else
    <project>/../shared/registry3/registry-3.0.0.xz (the session's and CI's layout)."""
    env = os.environ if env is None else env
    override = env.get(REGISTRY3_XZ_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return project_root.parent / "shared" / "registry3" / REGISTRY3_XZ_NAME


def registry3_available(env: Mapping[str, str] | None = None,
                        project_root: Path = PROJECT_ROOT) -> tuple[bool, str]:
    """(True, where) when the 3.0.0 binary is there; (False, reason naming the missing file).

    Without it the upstream serves no `registry:3` / `registry:3.0.0`, and 3.x tests skip
    with this reason.
    """
    path = registry3_xz_path(env, project_root)
    if path.is_file():
        return True, f"registry {REGISTRY3_VERSION} from {path}"
    return False, (f"registry {REGISTRY3_VERSION} binary not found: {path} is missing "
                   f"(set {REGISTRY3_XZ_ENV} to its path): the lab's upstream has no "
                   "registry:3 / registry:3.0.0")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(what: str, path: Path, found: str, expected: str) -> None:
    if found != expected:
        raise LabError(f"{what} {path}: sha256 {found}, expected {expected}: "
                       "refusing to use it (replace the file with the genuine one)")


def unpack_registry3(xz: Path, dest: Path) -> None:
    """Check the xz file's sha256, unpack it to `dest` (0755), check the binary's sha256.

    A mismatch at either step raises LabError and leaves no `dest` behind.
    """
    check_sha256("registry 3 archive", xz, sha256_of(xz), REGISTRY3_XZ_SHA256)
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with lzma.open(xz, "rb") as src, dest.open("wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except lzma.LZMAError as exc:
        dest.unlink(missing_ok=True)
        raise LabError(f"registry 3 archive {xz}: not a valid xz file ({exc})") from None
    try:
        check_sha256("registry 3 binary unpacked from", xz, digest.hexdigest(), REGISTRY3_SHA256)
    except LabError:
        dest.unlink(missing_ok=True)
        raise
    dest.chmod(0o755)


def registry3_image() -> Image | None:
    """Tag and key of the 3.0.0 image, or None when the binary is not there.

    The xz file's hash is checked here (every `up`, about 30 ms) so a wrong file is refused
    even when an image built from the right one is cached.
    """
    available, _ = registry3_available()
    if not available:
        return None
    xz = registry3_xz_path()
    check_sha256("registry 3 archive", xz, sha256_of(xz), REGISTRY3_XZ_SHA256)
    key = _key("registry3", REGISTRY3_RECIPE, REGISTRY3_XZ_SHA256, REGISTRY3_SHA256,
               REGISTRY_CONFIG, _file_hash(CA_BUNDLE), PASSWD, GROUP, CONFIG_PATH_3,
               REGISTRY3_ENV)
    return Image(f"registry-kit-lab/registry:{REGISTRY3_VERSION}-{key[:12]}", key,
                 REGISTRY3_VERSION)


def _build_registry3(img: Image, workdir: Path) -> None:
    rootfs = workdir / "registry3"
    unpack_registry3(registry3_xz_path(), rootfs / "bin/registry")
    _copy_in(rootfs, CA_BUNDLE)  # statically linked: no libc needed
    _import_registry(rootfs, img, CONFIG_PATH_3, REGISTRY3_ENV)
    _check_image_version(img)


# --- busybox and the broken image -----------------------------------------------------------


def _busybox_rootfs(rootfs: Path) -> None:
    _base_rootfs(rootfs)
    _copy_in(rootfs, BUSYBOX_BINARY, "/bin/busybox")
    applets = run([str(BUSYBOX_BINARY), "--list-full"]).stdout.split()
    for applet in applets:  # e.g. bin/sh, usr/bin/wc
        link = rootfs / applet
        if link.name == "busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def small_images() -> dict[str, Image]:
    """Tags and keys of the images made from this machine's files (whether built or not):
    registry (2.8.2), busybox, broken, and registry3 when its binary is there."""
    reg_libs = _shared_libs(REGISTRY_BINARY)
    reg_key = _key("registry", SMALL_RECIPE, _file_hash(REGISTRY_BINARY),
                   [_file_hash(p) for p in reg_libs], REGISTRY_CONFIG, _file_hash(CA_BUNDLE))
    bb_key = _key("busybox", SMALL_RECIPE, _file_hash(BUSYBOX_BINARY))
    broken_key = _key("broken", bb_key)
    version = _registry_version()
    images = {
        "registry": Image(f"registry-kit-lab/registry:{version}-{reg_key[:12]}", reg_key,
                          version),
        "busybox": Image(f"registry-kit-lab/busybox:{bb_key[:12]}", bb_key),
        "broken": Image(f"registry-kit-lab/broken:{broken_key[:12]}", broken_key),
    }
    reg3 = registry3_image()
    if reg3 is not None:
        images["registry3"] = reg3
    return images


def _registry_version() -> str:
    # "github.com/docker/distribution 2.8.2+ds1" -> "2.8.2"
    return parse_registry_version(run([str(REGISTRY_BINARY), "--version"]).stdout) or "unknown"


def build_small_images() -> dict[str, Image]:
    images = small_images()
    todo = {name: img for name, img in images.items() if not image_exists(img.tag)}
    if not todo:
        return images
    workdir = Path(tempfile.mkdtemp(prefix="registry-kit-lab-small-", dir=BUILD_ROOT))
    try:
        if "registry" in todo:
            img = todo["registry"]
            say(f"building {img.tag}")
            rootfs = workdir / "registry"
            _base_rootfs(rootfs)
            _copy_in(rootfs, REGISTRY_BINARY, "/bin/registry")
            for lib in _shared_libs(REGISTRY_BINARY):
                _copy_in(rootfs, lib)
            _copy_in(rootfs, CA_BUNDLE)
            conf = rootfs / "etc/docker/registry/config.yml"
            conf.parent.mkdir(parents=True)
            conf.write_text(REGISTRY_CONFIG)
            (rootfs / "var/lib/registry").mkdir(parents=True)
            _import_dir(rootfs, img.tag, [
                'ENTRYPOINT ["/bin/registry"]',
                'CMD ["serve","/etc/docker/registry/config.yml"]',
                "EXPOSE 5000",
                'VOLUME ["/var/lib/registry"]',
                *_labels("registry", img.key),
            ])
        if "registry3" in todo:
            say(f"building {todo['registry3'].tag} (from {registry3_xz_path()})")
            _build_registry3(todo["registry3"], workdir)
        for name, entry in (("busybox", None), ("broken", '["/bin/false"]')):
            if name not in todo:
                continue
            img = todo[name]
            say(f"building {img.tag}")
            rootfs = workdir / name
            _busybox_rootfs(rootfs)
            changes = ['CMD ["sh"]', *_labels(name, img.key)]
            if entry:
                # /bin/false ignores its arguments: any command given exits 1.
                changes.append(f"ENTRYPOINT {entry}")
            _import_dir(rootfs, img.tag, changes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return images


def build_images(releases: set[str]) -> tuple[dict[str, Image], dict[str, Image]]:
    """Build what is missing: host images in parallel (one debootstrap each), small images,
    and the 2.8.3 registry image once the trixie host image is there.

    Returns (release -> host image for `releases`, name -> small image); the small images
    include `registry_trixie` (2.8.3) and, when its binary is there, `registry3`.
    """
    needed = set(releases) | {"trixie"}  # the 2.8.3 image is made from trixie's own files
    bases = {base_release(r) for r in needed}
    # Every namespace shares the images: parallel test lanes that start together must build
    # each one once, so builds are serialised machine-wide (the namespace lock is not).
    with file_lock("registry-kit-lab-images.lock", "another lab's image build"), \
            ThreadPoolExecutor(max_workers=len(bases) + len(needed) + 2) as pool:
        small = pool.submit(build_small_images)
        hosts = {r: pool.submit(build_host_image, r) for r in sorted(bases)}
        trixie_registry = pool.submit(
            lambda: build_trixie_registry_image(hosts["trixie"].result()))
        # A `-docker` image waits for its base, built once above even when both are wanted.
        for release in sorted(needed - bases):
            base = hosts[base_release(release)]
            hosts[release] = pool.submit(
                lambda r, b: build_docker_host_image(r, b.result()), release, base)
        host_images = {r: f.result() for r, f in hosts.items() if r in releases}
        return host_images, {**small.result(), "registry_trixie": trixie_registry.result()}


def removable(listing: str) -> list[str]:
    """What `docker image rm` takes for each line of `docker image ls --format '{{.ID}}
    {{.Repository}}:{{.Tag}}'`: the tag, or the ID of an image a rebuild left untagged
    (`<none>:<none>`, which docker refuses as a reference)."""
    refs = set()
    for line in listing.splitlines():
        image_id, _, ref = line.strip().partition(" ")
        if image_id:
            refs.add(image_id if not ref or "<none>" in ref else ref)
    return sorted(refs)


def remove_images() -> list[str]:
    """Remove every image the lab built (all namespaces share them)."""
    refs = removable(docker("image", "ls", "--filter", f"label={LABEL}.image",
                            "--format", "{{.ID}} {{.Repository}}:{{.Tag}}").stdout)
    if refs:
        docker("image", "rm", "-f", *refs)
    return refs
