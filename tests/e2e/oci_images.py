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
