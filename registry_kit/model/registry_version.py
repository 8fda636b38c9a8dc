"""Which major version of the registry (distribution 2.x or 3.x) a server runs or will run.

config.yml differs between the two (the redis section, S3 path-style addressing, Azure
credentials: see README "Running and upgrading to registry 3"), so the kit must know the
major version before it renders anything. Where it comes from, in this order:

1. the tag of `registry_image`, for a repository named `registry` or `distribution`
   (`registry:3`, `registry:3.0.0`, `host:5000/library/registry:2.8.3`,
   `ghcr.io/distribution/distribution:3.0.0`). The tag is what the user asked for and is
   known before any host is touched;
2. the setting `registry_version` (2 or 3), for what the tag cannot tell: a digest-only
   reference, `latest`, `edge`, a custom tag or a repository of another name;
3. the image's own OCI label `org.opencontainers.image.version` (set by distribution's
   release images on Docker Hub and ghcr.io; the Docker Official Image has none), read by
   the one probe (`docker image inspect`) only when the image is already on the server:
   no extra remote command, and no pull or `docker run` just to ask.

Where two of them speak they must agree; where none does, the run is refused with one
line naming the host, the image and the setting to set. The kit never guesses: rendering
a 2.x config for a 3.x registry is what makes an upgrade end in a rollback (issue 13).
Nothing here reads host data or runs commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUPPORTED_MAJORS = (2, 3)
OCI_VERSION_LABEL = "org.opencontainers.image.version"
# Repository names (last path component) whose tags are registry versions.
REGISTRY_REPOSITORIES = ("registry", "distribution")
# 3, 3.0, 3.0.0, v3.0.0, 3.0.0-rc.1, 2.8.3-alpine, 2.8.3+ds1: the first number is the major.
_VERSION_TAG_RE = re.compile(r"v?(\d{1,4})(?:\.\d{1,4}){0,2}(?:[-+][0-9A-Za-z._+-]*)?")


class RegistryVersionError(ValueError):
    """The major version cannot be told, or its sources disagree. str() is one line."""


def split_reference(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference; tag/digest None when absent."""
    rest, _, digest = image.partition("@")
    # A ':' after the last '/' is the tag's; one before it is a registry host's port.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1:], digest or None
    return rest, None, digest or None


def major_from_version_text(text: str | None) -> int | None:
    """The major number of a version string ("3.0.0", "v2.8.3", "3"); None otherwise."""
    if not text:
        return None
    match = _VERSION_TAG_RE.fullmatch(text.strip())
    return int(match[1]) if match else None


def major_from_tag(image: str) -> int | None:
    """The major version the tag of `image` names, or None when the tag does not tell
    (no tag, `latest`, a custom tag, or a repository not named registry/distribution)."""
    repository, tag, _ = split_reference(image)
    if repository.rsplit("/", 1)[-1] not in REGISTRY_REPOSITORIES:
        return None
    return major_from_version_text(tag)


@dataclass(frozen=True)
class RegistryVersion:
    major: int
    source: str  # where it came from, for log lines and refusals

    def __str__(self) -> str:
        return f"{self.major} ({self.source})"


def resolve(host: str, image: str, setting: int | None,
            image_label: str | None = None) -> RegistryVersion:
    """The major version `host` will run `image` as (see the module docstring). Raises
    RegistryVersionError with one line when it cannot be told or the sources disagree."""
    said: list[tuple[int, str]] = []
    from_tag = major_from_tag(image)
    if from_tag is not None:
        said.append((from_tag, f"the tag of {image}"))
    if setting is not None:
        said.append((setting, f"registry_version={setting}"))
    from_label = major_from_version_text(image_label)
    if from_label is not None:
        said.append((from_label, f"{image}'s label {OCI_VERSION_LABEL}={image_label}"))
    if not said:
        raise RegistryVersionError(
            f"{host}: setting registry_version=None is not allowed: registry_image "
            f"{image!r} does not tell the registry's major version (no version tag, and no "
            f"{OCI_VERSION_LABEL} label on the server's copy); set registry_version to 2 or 3")
    major, source = said[0]
    for other, other_source in said[1:]:
        if other != major:
            raise RegistryVersionError(
                f"{host}: setting registry_version={setting!r} is not allowed: {source} says "
                f"registry {major}, {other_source} says {other}; make them agree")
    if major not in SUPPORTED_MAJORS:
        raise RegistryVersionError(
            f"{host}: setting registry_image={image!r} is not allowed: {source} says registry "
            f"{major}; the kit renders config.yml for registry 2 and 3 only")
    return RegistryVersion(major, source)


def running_major(config_image: str | None, label: str | None) -> int | None:
    """The major version of a running container, from the image reference it was started
    with (its tag) or the image's OCI label; None when neither tells."""
    if config_image:
        from_tag = major_from_tag(config_image)
        if from_tag is not None:
            return from_tag
    return major_from_version_text(label)


def binary_version(output: str) -> str | None:
    """`registry --version` output -> "3.0.0" / "2.8.3" (a leading "v" and a "+ds1"-style
    suffix dropped): "registry github.com/distribution/distribution/v3 3.0.0",
    "/bin/registry github.com/docker/distribution v2.8.3", Debian's "... 2.8.3+ds1"."""
    words = output.split()
    if len(words) < 2:
        return None
    version = words[-1].removeprefix("v").split("+")[0]
    return version if major_from_version_text(version) is not None else None
