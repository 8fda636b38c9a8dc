"""Images the lab runs, all built locally (Docker Hub is unreachable) and cached by content key.

- Host images: Debian (bookworm, trixie) with systemd and sshd, built by debootstrap from the
  machine's own apt mirror, imported with `docker import`. No Docker inside: the kit installs
  it, like on a real server.
- `registry` (Debian's docker-registry, distribution 2.8.2), `busybox` (busybox-static) and
  `broken` (starts and exits non-zero whatever it is asked): pushed into the upstream registry.

Each image's tag ends with the first 12 hex digits of a hash over everything that goes into
it, so a changed recipe, package list or mirror builds a new image and an unchanged one is
never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab.config import LABEL, LabError, say
from lab.engine import docker, docker_inspect, run

# Bump when the way an image is made changes, so cached images are rebuilt.
HOST_RECIPE = "3"
SMALL_RECIPE = "1"

RELEASES = ("bookworm", "trixie")
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
    """A lab image: its tag and content key."""

    tag: str
    key: str


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


def host_image(release: str) -> Image:
    """Tag and key of the host image for `release` (whether built or not)."""
    if release not in RELEASES:
        raise LabError(f"unknown release {release!r}: use one of {', '.join(RELEASES)}")
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
    """Build (once) the host image for `release` with debootstrap."""
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


# --- small images: registry, busybox, broken -----------------------------------------------

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
BUSYBOX_BINARY = Path("/bin/busybox")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


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
    """Tags and keys of the registry, busybox and broken images (whether built or not)."""
    reg_libs = _shared_libs(REGISTRY_BINARY)
    reg_key = _key("registry", SMALL_RECIPE, _file_hash(REGISTRY_BINARY),
                   [_file_hash(p) for p in reg_libs], REGISTRY_CONFIG, _file_hash(CA_BUNDLE))
    bb_key = _key("busybox", SMALL_RECIPE, _file_hash(BUSYBOX_BINARY))
    broken_key = _key("broken", bb_key)
    version = _registry_version()
    return {
        "registry": Image(f"registry-kit-lab/registry:{version}-{reg_key[:12]}", reg_key),
        "busybox": Image(f"registry-kit-lab/busybox:{bb_key[:12]}", bb_key),
        "broken": Image(f"registry-kit-lab/broken:{broken_key[:12]}", broken_key),
    }


def _registry_version() -> str:
    # "github.com/docker/distribution 2.8.2+ds1" -> "2.8.2"
    out = run([str(REGISTRY_BINARY), "--version"]).stdout.split()
    return out[-1].split("+")[0] if out else "unknown"


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
    """Build what is missing: host images in parallel (one debootstrap each), small images."""
    with ThreadPoolExecutor(max_workers=len(releases) + 1) as pool:
        small = pool.submit(build_small_images)
        hosts = {r: pool.submit(build_host_image, r) for r in sorted(releases)}
        return {r: f.result() for r, f in hosts.items()}, small.result()


def remove_images() -> list[str]:
    """Remove every image the lab built (all namespaces share them)."""
    out = docker("image", "ls", "--filter", f"label={LABEL}.image",
                 "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    tags = sorted(set(out))
    if tags:
        docker("image", "rm", "-f", *tags)
    return tags
