"""The few S3 calls the control machine makes on a registry's bucket: list (ListObjectsV2,
paginated), get (bounded) and delete one object, each signed with AWS Signature Version 4
(registry_kit.s3check.sign: urllib and hmac, no botocore). Used by shared-storage garbage
collection to measure the bucket (registry_kit.sharedgc.bucket_bytes) and by retention on
S3 (registry_kit.sharedretention) to read and delete tags and manifest revisions.

The keys stay in this process's memory (registry_kit.model.settings.Secret, revealed only
to sign); nothing is written to disk, nothing reaches a command line.
"""

from __future__ import annotations

import ssl
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from registry_kit import s3check
from registry_kit.model.settings import Secret

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
TIMEOUT = 30  # seconds per request
Opener = Callable[..., Any]


@dataclass(frozen=True)
class S3Object:
    name: str  # the object's key
    size: int
    modified: float  # LastModified, epoch seconds (the store's clock)
    etag: str


@dataclass(frozen=True)
class Page:
    objects: tuple[S3Object, ...]
    continuation: str | None  # NextContinuationToken when the listing is truncated


def _find(element: Any, name: str) -> Any:
    found = element.find(NS + name)
    return found if found is not None else element.find(name)


def _text(element: Any, name: str) -> str:
    found = _find(element, name)
    return found.text or "" if found is not None else ""


def _epoch(text: str) -> float:
    """LastModified (ISO 8601, e.g. 2026-12-08T01:02:03.456Z) in epoch seconds; 0 when not
    readable (such an object is then the oldest, never the newest)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_page(xml: bytes) -> Page:
    """The objects of one ListObjectsV2 answer and its continuation token. An entry without a
    key is skipped; a size that is not a number counts 0."""
    root = ElementTree.fromstring(xml)
    objects = []
    for item in list(root.iter(NS + "Contents")) + list(root.iter("Contents")):
        key = _text(item, "Key")
        if not key:
            continue
        size = _text(item, "Size")
        objects.append(S3Object(name=key, size=int(size) if size.isdigit() else 0,
                                modified=_epoch(_text(item, "LastModified")),
                                etag=_text(item, "ETag").strip('"')))
    token = _text(root, "NextContinuationToken")
    truncated = _text(root, "IsTruncated") == "true"
    return Page(tuple(objects), token if truncated and token else None)


def object_url(params: Mapping[str, Any], key: str = "", query: Mapping[str, str] | None = None
               ) -> str:
    """The URL of a key in the bucket (or of the bucket, key ""), path style on a given
    endpoint as the registry's driver does. The key is percent-encoded once; s3check.sign
    signs the path as S3 wants it (encoded once, whatever characters the key holds)."""
    url = s3check.bucket_url(params)
    if key:
        url = url.rstrip("/") + "/" + urllib.parse.quote(key, safe="/-_.~")
    if query:
        url += "?" + urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)
    return url


def _context(params: Mapping[str, Any], url: str) -> ssl.SSLContext | None:
    if params.get("skipverify") is True and url.startswith("https:"):
        return ssl._create_unverified_context()  # the registry is told the same
    return None


def request(params: Mapping[str, Any], method: str, url: str,
            headers: Mapping[str, str] | None = None, opener: Opener | None = None) -> Any:
    """Send one signed request; the answer (a context manager) or urllib's HTTPError."""
    access, secret = params["accesskey"], params["secretkey"]
    assert isinstance(access, Secret) and isinstance(secret, Secret)
    amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    signed = s3check.sign(method=method, url=url,
                          headers={"x-amz-content-sha256": s3check.EMPTY_SHA256},
                          access_key=access.reveal(), secret_key=secret.reveal(),
                          region=str(params["region"]), service="s3", amz_date=amz_date)
    prepared = urllib.request.Request(url, method=method, headers={**signed, **(headers or {})})
    return (opener or urllib.request.urlopen)(prepared, timeout=TIMEOUT,
                                              context=_context(params, url))


def _date(answer: Any) -> float | None:
    try:
        return parsedate_to_datetime(answer.headers.get("Date", "")).timestamp()
    except (TypeError, ValueError, AttributeError):
        return None


def list_objects(params: Mapping[str, Any], prefix: str, opener: Opener | None = None
                 ) -> tuple[list[S3Object], float | None]:
    """(every object whose name starts with `prefix`, following the continuation token
    page after page; the store's clock at the first page)."""
    found: list[S3Object] = []
    now: float | None = None
    continuation: str | None = None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if continuation:
            query["continuation-token"] = continuation
        with request(params, "GET", object_url(params, "", query), opener=opener) as answer:
            page = parse_page(answer.read())
            now = _date(answer) if now is None else now
        found.extend(page.objects)
        continuation = page.continuation
        if continuation is None:
            return found, now


def get_object(params: Mapping[str, Any], key: str, limit: int,
               opener: Opener | None = None) -> tuple[bytes, int]:
    """(at most `limit` bytes of the object, its whole size): a Range request, read bounded
    whatever the store answers."""
    url = object_url(params, key)
    with request(params, "GET", url, {"Range": f"bytes=0-{max(limit, 1) - 1}"},
                 opener) as answer:
        data = answer.read(limit)
        total = answer.headers.get("Content-Range", "").rpartition("/")[2]
        length = answer.headers.get("Content-Length", "")
    if total.isdigit():
        return data, int(total)
    return data, int(length) if length.isdigit() else len(data)


def delete_object(params: Mapping[str, Any], key: str, opener: Opener | None = None) -> None:
    """DELETE one key (S3 answers 204, also for a key that is already gone)."""
    with request(params, "DELETE", object_url(params, key), opener=opener) as answer:
        answer.read()
