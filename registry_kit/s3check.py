"""Check, from the control machine, that an S3 bucket exists and the keys may use it.

The registry starts happily without its bucket (or with wrong keys), answers /v2/, and
then fails every upload with `500 unknown error`. So before any host is touched, the kit
sends one signed HEAD-bucket request (AWS Signature Version 4, urllib + hmac: botocore is
not a dependency) and stops with one line when the answer is not 200.

Why the control machine and not the first server (curl --aws-sigv4): the check then runs
before anything changes, like every other settings check; the keys stay in this process's
memory (nothing to upload, no config file on a server); and it does not depend on the
servers' curl (--aws-sigv4 needs curl 7.75; RHEL 8 ships 7.61). The price: the endpoint
must be reachable from the control machine. When it is not, the error says so and
`registry_storage_check = False` skips the check.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from registry_kit.model.settings import Secret, Settings, SettingsError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"
TIMEOUT = 10  # seconds for the HEAD request


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    # SigV4: unreserved characters as they are, everything else %XX (upper case).
    return urllib.parse.quote(text, safe="-_.~" + ("/" if keep_slash else ""))


def canonical_request(method: str, path: str, query: str, headers: Mapping[str, str],
                      payload_sha256: str) -> tuple[str, str]:
    """(canonical request, signed header list) as SigV4 defines them."""
    pairs = sorted((_uri_encode(urllib.parse.unquote(k), keep_slash=False),
                    _uri_encode(urllib.parse.unquote(v), keep_slash=False))
                   for k, _, v in (item.partition("=") for item in query.split("&") if item))
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    lowered = sorted((name.lower().strip(), " ".join(value.strip().split()))
                     for name, value in headers.items())
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in lowered)
    signed = ";".join(name for name, _ in lowered)
    # S3 paths are encoded once (not twice, as other services do): `path` as the URL holds
    # it (a key may have been percent-encoded there) is decoded first.
    uri = _uri_encode(urllib.parse.unquote(path or "/"), keep_slash=True)
    request = "\n".join([method, uri, canonical_query, canonical_headers, signed,
                         payload_sha256])
    return request, signed


def sign(*, method: str, url: str, headers: Mapping[str, str], access_key: str,
         secret_key: str, region: str, service: str, amz_date: str,
         payload_sha256: str = EMPTY_SHA256) -> dict[str, str]:
    """The Authorization header (and the ones it signs) for one request.

    `headers` must hold every header to sign except host and x-amz-date, which are added.
    `amz_date` is YYYYMMDD'T'HHMMSS'Z' (UTC)."""
    parts = urllib.parse.urlsplit(url)
    all_headers = {"host": parts.netloc, "x-amz-date": amz_date, **headers}
    request, signed = canonical_request(method, parts.path, parts.query, all_headers,
                                        payload_sha256)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope,
                                hashlib.sha256(request.encode()).hexdigest()])
    key = _hmac(f"AWS4{secret_key}".encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return {**all_headers, "authorization": f"{ALGORITHM} Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"}


def bucket_url(params: Mapping[str, object]) -> str:
    """Path style on a given endpoint (what the registry's driver does there), else AWS's
    virtual-hosted style."""
    bucket = str(params["bucket"])
    endpoint = params.get("regionendpoint")
    if endpoint:
        base = str(endpoint).rstrip("/")
        if "://" not in base:
            secure = params.get("secure", True) is not False
            base = ("https://" if secure else "http://") + base
        return f"{base}/{urllib.parse.quote(bucket)}"
    return f"https://{bucket}.s3.{params['region']}.amazonaws.com/"


def head_bucket(params: Mapping[str, object], *, now: datetime | None = None) -> \
        tuple[int, str]:
    """(HTTP status, detail) of a signed HEAD on the bucket; status 0 when unreachable."""
    url = bucket_url(params)
    access, secret = params["accesskey"], params["secretkey"]
    assert isinstance(access, Secret) and isinstance(secret, Secret)
    amz_date = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    headers = sign(method="HEAD", url=url, headers={"x-amz-content-sha256": EMPTY_SHA256},
                   access_key=access.reveal(), secret_key=secret.reveal(),
                   region=str(params["region"]), service="s3", amz_date=amz_date)
    request = urllib.request.Request(url, method="HEAD", headers=headers)
    context = None
    if params.get("skipverify") is True and url.startswith("https:"):
        context = ssl._create_unverified_context()  # the registry is told the same
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:
            return answer.status, ""
    except urllib.error.HTTPError as error:
        region = error.headers.get("x-amz-bucket-region", "")
        return error.code, f"bucket region {region}" if region else ""
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return 0, str(reason)


def explain(status: int, detail: str, params: Mapping[str, object]) -> str | None:
    """None when the bucket is usable; else what is wrong, in words."""
    bucket, url = params["bucket"], bucket_url(params)
    if status == 200:
        return None
    if status == 404:
        return (f"bucket {bucket!r} does not exist at {url} (create it first: the registry "
                "does not, and would fail every upload)")
    if status == 403:
        return (f"the access key or secret key is not accepted for bucket {bucket!r} at {url} "
                "(403: wrong keys or no permission)")
    if status in (301, 400) and detail:
        return f"bucket {bucket!r} is in another region ({detail}); set region to match"
    if status == 0:
        return (f"the S3 endpoint {url} is not reachable from the control machine ({detail}); "
                "fix regionendpoint, or set registry_storage_check=False to skip this check")
    return f"HEAD {url} answered {status} {detail}".rstrip()


def check_storage(all_settings: Iterable[Settings]) -> None:
    """Raise SettingsError (one line) for the first s3 storage that is not usable. Each
    distinct (endpoint, bucket, key) is asked once per run."""
    seen: set[tuple[str, str]] = set()
    for settings in all_settings:
        storage = settings.registry_storage
        if storage.driver != "s3" or not settings.registry_storage_check:
            continue
        if "accesskey" not in storage.params or "secretkey" not in storage.params:
            continue  # instance credentials (IAM role): only the servers can tell
        key = (bucket_url(storage.params), storage.params["accesskey"].reveal())
        if key in seen:
            continue
        seen.add(key)
        problem = explain(*head_bucket(storage.params), storage.params)
        if problem:
            raise SettingsError(f"{settings.host}: setting registry_storage.bucket="
                                f"{storage.params['bucket']!r} is not allowed: {problem}")
