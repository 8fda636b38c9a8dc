"""Tiny distinct images for push/pull tests, written as OCI image layouts on the control
machine (no engine needed): one layer holding `payload` as /data. skopeo pushes them with
`oci:DIR` as source; two payloads give two images with different digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def _layer(payload: bytes) -> tuple[bytes, str]:
    """(gzip-compressed tar, digest of the uncompressed tar). Compressed already, so skopeo
    pushes the blobs and the manifest unchanged and the registry's digest is ours."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data")
        info.size, info.mode, info.mtime = len(payload), 0o644, 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = buffer.getvalue()
    diff_id = f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), diff_id


def write_image(layout: Path, payload: bytes) -> str:
    """Write an OCI layout with one image into `layout`; return its manifest digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layer, diff_id = _layer(payload)
    layer_digest = _blob(layout, layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}},
                        sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _blob(layout, config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(layer)}],
    }, sort_keys=True).encode()
    manifest_digest = _blob(layout, manifest)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST, "digest": manifest_digest, "size": len(manifest)}]}))
    return manifest_digest


def random_image(layout: Path, size: int) -> str:
    return write_image(layout, os.urandom(size))


def layout_digest(layout: Path) -> str:
    """The manifest digest of the (single) image in an OCI layout, e.g. one skopeo pulled."""
    index = json.loads((layout / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


INDEX = "application/vnd.oci.image.index.v1+json"


def _image_blobs(layout: Path, payload: bytes, arch: str, subject: dict | None) -> bytes:
    """Write one image's layer and config; return its manifest (not yet a blob)."""
    layer, diff_id = _layer(payload)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}},
                        sort_keys=True).encode()
    document: dict = {
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _blob(layout, config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": _blob(layout, layer), "size": len(layer)}]}
    if subject is not None:
        document["subject"] = subject
    return json.dumps(document, sort_keys=True).encode()


def _write_top(layout: Path, media_type: str, manifest: bytes) -> str:
    digest = _blob(layout, manifest)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": digest, "size": len(manifest)}]}))
    return digest


def write_index(layout: Path, payloads: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    """An OCI layout holding a multi-arch index of one image per architecture (payloads:
    arch -> layer payload); return (index digest, {arch: child manifest digest})."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    children, entries = {}, []
    for arch, payload in payloads.items():
        manifest = _image_blobs(layout, payload, arch, None)
        children[arch] = _blob(layout, manifest)
        entries.append({"mediaType": MANIFEST, "digest": children[arch], "size": len(manifest),
                        "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries},
                       sort_keys=True).encode()
    return _write_top(layout, INDEX, index), children


def write_artifact(layout: Path, payload: bytes, subject: str, subject_size: int,
                   subject_type: str = INDEX) -> str:
    """An OCI layout holding an image manifest whose `subject` is another manifest (how
    OCI 1.1 signatures and SBOMs point at what they describe); return its digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    manifest = _image_blobs(layout, payload, "amd64", {
        "mediaType": subject_type, "digest": subject, "size": subject_size})
    return _write_top(layout, MANIFEST, manifest)
