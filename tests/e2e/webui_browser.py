"""Helpers for the web page's e2e tests (test_webui, test_ldap) and benchmarks: Debian's
chromium driven by selenium (chromium-driver), the page's login and repository list, and
cheap pushes through the registry's HTTP API.

The browser reaches the lab by name (`--host-resolver-rules`), and trusts exactly the
certificate the server presents after Python's ssl has checked it against the kit's CA
(its public key pinned with `--ignore-certificate-errors-spki-list`): no blanket
`--ignore-certificate-errors`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import shutil
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM or not CHROMEDRIVER:
        return ("Debian's chromium and chromium-driver are not installed "
                "(apt-get install chromium chromium-driver; .ci/run installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def verified_spki(domain: str, ip: str, port: int, ca: Path) -> str:
    """base64 sha256 of the public key of the certificate served at ip:port, after it was
    checked against `ca` for `domain`."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((ip, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=domain) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(domain: str, ip: str, spki: str, *, width: int = 1400,
             height: int = 1000) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                         f"--window-size={width},{height}",
                         f"--host-resolver-rules=MAP {domain} {ip}",
                         f"--ignore-certificate-errors-spki-list={spki}"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


@contextmanager
def page_browser(domain: str, ip: str, port: int, ca: Path) -> Iterator[Any]:
    """chromium trusting exactly the certificate the page at ip:port serves for `domain`,
    once Python's ssl checked it against `ca`."""
    with chromium(domain, ip, verified_spki(domain, ip, port, ca)) as driver:
        yield driver


def wait_for(driver: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def by_id(driver: Any, name: str) -> Any:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, name)


def by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def log_in(driver: Any, url: str, user: str, password: str, *,
           before: str | None = None) -> None:
    """Log in on the page at `url`, freshly loaded; `before`: a script run in it first."""
    driver.get(url)
    wait_for(driver, lambda d: by_id(d, "login-user").is_displayed())
    if before is not None:
        driver.execute_script(before)
    by_id(driver, "login-user").clear()
    by_id(driver, "login-user").send_keys(user)
    by_id(driver, "login-password").send_keys(password)
    by_id(driver, "login-submit").click()


def listed_repos(driver: Any) -> list[str]:
    """The repositories the page lists once the list has loaded after a login (a refused
    login fails with the page's message)."""
    from selenium.common.exceptions import TimeoutException
    try:
        wait_for(driver, lambda d: by_id(d, "repo-list").get_attribute("data-loaded-ms")
                 or by_id(d, "login-error").is_displayed())
    except TimeoutException:
        raise AssertionError(f"no list at {driver.current_url}: " + ", ".join(
            f"{name} {by_id(driver, name).is_displayed()}: {by_id(driver, name).text!r}"
            for name in ("login-view", "repos-status", "login-error"))) from None
    assert not by_id(driver, "login-error").is_displayed(), by_id(driver, "login-error").text
    return [button.get_attribute("data-repo") for button in by_css(driver, "button.repo")]


class RegistryApi:
    """The registry's HTTP API from the control machine: one TLS connection to `ip`,
    checked against the CA for `domain`; Basic auth, and under token auth a token per
    challenged scope from the realm (asked on the same address), as Docker does."""

    def __init__(self, domain: str, ip: str, port: int, ca: Path, user: str,
                 password: str) -> None:
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.ip, self.domain = ip, domain
        self.context = ssl.create_default_context(cafile=str(ca))
        self.conn = self._connect(port)
        self.tokens: dict[str, str] = {}  # scope -> token

    def _connect(self, port: int) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.domain, port, context=self.context, timeout=30)
        # Connect to the lab address, check the certificate for the domain.
        ip = self.ip
        conn._create_connection = (  # type: ignore[attr-defined]
            lambda _address, timeout=30, source=None: socket.create_connection(
                (ip, port), timeout))
        return conn

    def _send(self, conn: http.client.HTTPSConnection, method: str, path: str, body: bytes,
              headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def _token(self, challenge: str, scope: str) -> str:
        """A token from the challenge's realm (the same lab address), with the user's
        credentials."""
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = urllib.parse.urlsplit(fields["realm"])
        query = urllib.parse.urlencode({"service": fields.get("service", ""),
                                        **({"scope": scope} if scope else {})})
        conn = self._connect(realm.port or 443)
        try:
            status, _, data = self._send(conn, "GET", f"{realm.path}?{query}", b"",
                                         {"Authorization": self.auth})
        finally:
            conn.close()
        assert status == 200, (status, data[:300])
        return str(json.loads(data)["token"])

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        status, seen, data = self._send(self.conn, method, path, body,
                                        {"Authorization": self.auth, **(headers or {})})
        challenge = seen.get("www-authenticate", "")
        if status != 401 or not challenge.lower().startswith("bearer "):
            return status, seen, data
        scope = dict(re.findall(r'(\w+)="([^"]*)"', challenge)).get("scope", "")
        for fresh in (False, True):  # a remembered token may have expired
            if fresh or scope not in self.tokens:
                self.tokens[scope] = self._token(challenge, scope)
            status, seen, data = self._send(
                self.conn, method, path, body,
                {"Authorization": f"Bearer {self.tokens[scope]}", **(headers or {})})
            if status != 401:
                break
        return status, seen, data

    def mount(self, name: str, digest: str, source: str) -> None:
        """Cross-repository blob mount: the blob is stored once."""
        status, _, body = self.request(
            "POST", f"/v2/{name}/blobs/uploads/?mount={digest}&from={source}")
        assert status == 201, (status, body[:300])

    def put_manifest(self, name: str, tag: str, manifest: bytes, media_type: str) -> str:
        status, headers, body = self.request(
            "PUT", f"/v2/{name}/manifests/{tag}", manifest, {"Content-Type": media_type})
        assert status == 201, (status, body[:300])
        return headers["docker-content-digest"]

    def manifest(self, name: str, reference: str, accept: str) -> dict[str, Any]:
        status, _, body = self.request("GET", f"/v2/{name}/manifests/{reference}",
                                       headers={"Accept": accept})
        assert status == 200, (status, body[:300])
        return dict(json.loads(body))

    def close(self) -> None:
        self.conn.close()


def variant(manifest: dict[str, Any], label: str) -> tuple[bytes, str]:
    """The same image under another manifest digest (an annotation differs): many tags
    and repositories for the price of one blob set."""
    changed = {**manifest, "annotations": {**manifest.get("annotations", {}),
                                           "org.example.variant": label}}
    return json.dumps(changed, sort_keys=True).encode(), str(manifest["mediaType"])


def push_blob(api: RegistryApi, name: str, data: bytes) -> str:
    """A monolithic blob upload (POST, then PUT with the digest)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, body = api.request("POST", f"/v2/{name}/blobs/uploads/")
    assert status == 202, (status, body[:300])
    location = headers["location"]
    path = location.split("://", 1)[-1]
    path = path[path.index("/"):] if "://" in location else location
    separator = "&" if "?" in path else "?"
    status, _, body = api.request("PUT", f"{path}{separator}digest={digest}", data,
                                  {"Content-Type": "application/octet-stream"})
    assert status == 201, (status, body[:300])
    return digest
