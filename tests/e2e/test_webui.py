"""The registry web page (registry_webui_enabled) in a real browser: Debian's chromium,
driven by selenium through chromium-driver, against a kit-deployed lab registry.

Deploy (twice: the second run changes nothing), then check what the page serves with curl
(CSP, no Basic challenge, nothing of the contents without a login), then in the browser:
a wrong password, the login, the repository list against the catalog (more than one
catalog page: the page follows `Link`), the filter, one repository's tags against
`skopeo list-tags` / `skopeo inspect` (a Docker v2 image, an OCI image, an OCI index),
the copied pull line run on a client, a delete that skopeo then reports gone, the logout.
Then the same registry with access rules (token auth; deployed twice): the page's
/token, the Bearer step in the browser for a user who may do everything, and a user who
may pull team/* and delete in team/app only (no catalog: "Open by name"; delete buttons only
where granted). Turning the setting off and the teardown remove it (each twice, the second
a no-op). The audit log (registry_audit_log) is on in this deploy: the seed's pushes, the
web page's deletes and a denied push appear with their users, in the file, the journals
and status, and no password appears anywhere on the server. The 1,000-repository
measurement is bench/webui.py.
Screenshots of the main views go to $REGISTRY_KIT_TEST_OUTPUT/webui (default
.test-output/webui).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Any

import harness
import pytest
import webui_browser as wb
from harness import Run
from webui_browser import by_css, by_id, wait_for

import lab as lab_api

DOMAIN = "registry.lab"
PORT = 5000
WEBUI_PORT = 5444
ADDRESS = f"{DOMAIN}:{PORT}"
SERVER = "lab-reg"
CLIENT = "lab-client1"
USER = "alice"
PAGE_URL = f"https://{DOMAIN}:{WEBUI_PORT}/"
BULK = 120  # more repositories than two catalog pages of 50
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OUTPUT = Path(os.environ.get("REGISTRY_KIT_TEST_OUTPUT",
                             harness.ROOT / ".test-output")) / "webui"

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(wb.missing_browser() is not None,
                                 reason=str(wb.missing_browser()))]


class Site:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.inventory = directory / "inventory.py"
        self.password = "alice-webui-password"
        self.users = {USER: self.password}  # the rules test adds a user
        self.data: dict[str, Any] = {
            "registry_domain": DOMAIN, "registry_port": PORT,
            "registry_delete_enabled": True, "registry_webui_enabled": True,
            "registry_webui_port": WEBUI_PORT, "registry_client_login_user": USER,
            # The audit log shares this deploy: pushes, web page deletes, denied pushes.
            "registry_audit_log": True}
        self.write()

    def write(self) -> None:
        users = [{"name": name, "password_file": harness.write_secret(
            self.dir, f"{name}.password", password)} for name, password in self.users.items()]
        harness.write_inventory(self.inventory, servers=[SERVER], clients=[CLIENT],
                                data={**self.data, "registry_users": users})

    def run(self, script: str = "deploy.py") -> Run:
        return harness.run_kit(self.inventory, script)

    @property
    def ip(self) -> str:
        return harness.host_ip(SERVER)

    def skopeo(self, *args: str, user: str = USER) -> Any:
        return harness.skopeo(list(args), hosts={DOMAIN: self.ip},
                              auth={ADDRESS: (user, self.users[user])})

    def api(self) -> wb.RegistryApi:
        return wb.RegistryApi(DOMAIN, self.ip, PORT, harness.CA_CERT, USER, self.password)


def curl(path: str, *, port: int = WEBUI_PORT, user: str | None = None,
         password: str | None = None, bearer: str | None = None,
         ip: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) from the control machine with curl and the kit's CA."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        args = ["curl", "-s", "--max-time", "10", "-D", f"{tmp}/headers", "-o", f"{tmp}/body",
                "-w", "%{http_code}", "--resolve", f"{DOMAIN}:{port}:{ip}",
                "--cacert", str(harness.CA_CERT)]
        if user is not None:
            (Path(tmp) / "curlrc").write_text(f'user = "{user}:{password}"\n')
            args += ["-K", f"{tmp}/curlrc"]
        if bearer is not None:  # in a config file: not in argv
            (Path(tmp) / "bearerrc").write_text(f'header = "Authorization: Bearer {bearer}"\n')
            args += ["-K", f"{tmp}/bearerrc"]
        out = subprocess.run([*args, f"https://{DOMAIN}:{port}{path}"], capture_output=True,
                             text=True, timeout=30).stdout
        headers: dict[str, str] = {}
        if (Path(tmp) / "headers").exists():
            for line in (Path(tmp) / "headers").read_text().splitlines()[1:]:
                key, _, value = line.partition(":")
                if value:
                    headers[key.strip().lower()] = value.strip()
        body = (Path(tmp) / "body").read_text() if (Path(tmp) / "body").exists() else ""
    return int(out or 0), headers, body


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Site:
    lab_api.reset_host(SERVER, docker=True)  # Docker in: its install is test_deploy's
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return Site(tmp_path_factory.mktemp("webui"))


@pytest.fixture(scope="module")
def deployed(site: Site) -> Run:
    return site.run().assert_ok()


@pytest.fixture(scope="module")
def seeded(site: Site, deployed: Run) -> dict[str, str]:
    seed(site)
    return {}


def seed(site: Site) -> None:
    """team/app: 1.0 and latest (one Docker v2 image), 1.1 (OCI), old (OCI, its own
    digest); team/multi:1.0 an OCI index (amd64 + arm64); other/thing:1; bulk/repo-NNN."""
    copy = site.skopeo("copy", "--src-tls-verify=false", "--dest-cert-dir", "@CERTS@",
                       harness.upstream_source("library/busybox:latest"),
                       f"docker://{ADDRESS}/team/app:1.0")
    assert copy.returncode == 0, copy.stderr
    for args in (["--format", "oci", f"docker://{ADDRESS}/team/app:1.0",
                  f"docker://{ADDRESS}/team/app:1.1"],
                 [f"docker://{ADDRESS}/team/app:1.0", f"docker://{ADDRESS}/team/app:latest"]):
        copy = site.skopeo("copy", "--src-cert-dir", "@CERTS@", "--dest-cert-dir", "@CERTS@",
                           *args)
        assert copy.returncode == 0, copy.stderr
    api = site.api()
    try:
        oci = api.manifest("team/app", "1.1", OCI_MANIFEST)
        body, media = wb.variant(oci, "old")
        api.put_manifest("team/app", "old", body, media)
        # An index: the OCI image as amd64, and an arm64 image (its own config) on the
        # same layers.
        status, _, config = api.request("GET", f"/v2/team/app/blobs/{oci['config']['digest']}")
        assert status == 200
        arm_config = json.dumps({**json.loads(config), "architecture": "arm64",
                                 "variant": "v8"}).encode()
        for layer in oci["layers"]:
            api.mount("team/multi", layer["digest"], "team/app")
        api.mount("team/multi", oci["config"]["digest"], "team/app")
        arm_digest = wb.push_blob(api, "team/multi", arm_config)
        children = []
        for arch, manifest in (("amd64", oci), ("arm64", {**oci, "config": {
                **oci["config"], "digest": arm_digest, "size": len(arm_config)}})):
            raw = json.dumps(manifest, sort_keys=True).encode()
            digest = api.put_manifest("team/multi", f"{arch}-only", raw, OCI_MANIFEST)
            children.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(raw),
                             "platform": {"os": "linux", "architecture": arch,
                                          **({"variant": "v8"} if arch == "arm64" else {})}})
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": children}).encode()
        api.put_manifest("team/multi", "1.0", index, OCI_INDEX)
        for name in ["other/thing", *(f"bulk/repo-{i:03d}" for i in range(BULK))]:
            for blob in [oci["config"]["digest"], *(la["digest"] for la in oci["layers"])]:
                api.mount(name, blob, "team/app")
            body, media = wb.variant(oci, name)
            api.put_manifest(name, "1", body, media)
    finally:
        api.close()


@pytest.fixture(scope="module")
def browser(site: Site, deployed: Run) -> Any:
    with wb.page_browser(DOMAIN, site.ip, WEBUI_PORT, harness.CA_CERT) as driver:
        driver.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": PAGE_URL.rstrip("/"),
            "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
        yield driver


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(OUTPUT / f"{name}.png"))


def log_in(driver: Any, user: str, password: str, page: str = "", *,
           before: str | None = None) -> None:
    """Log in on a freshly loaded page (`page`: its query); `before`: a script run first."""
    wb.log_in(driver, PAGE_URL + page, user, password, before=before)


def catalog(site: Site) -> list[str]:
    body = harness.curl_body(DOMAIN, site.ip, PORT, "/v2/_catalog?n=1000", user=USER,
                             password=site.password)
    return list(json.loads(body)["repositories"])


# --- deploy and what curl sees ---

def test_second_deploy_changes_nothing(site: Site, deployed: Run) -> None:
    site.run().assert_no_changes()


def test_page_has_csp_and_no_contents_without_login(site: Site, seeded: dict) -> None:
    status, headers, body = curl("/", ip=site.ip)
    assert status == 200 and "<title>" in body
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "http" not in csp  # no outside source
    assert headers["x-content-type-options"] == "nosniff"
    for path in ("/", "/app.js", "/app.css", "/config.json"):
        status, _, text = curl(path, ip=site.ip)
        assert status == 200 and "team/" not in text and "bulk/" not in text, path
        assert "http://" not in text and "https://" not in text, path  # no outside asset
    # The API through the page's port: refused without credentials, and no Basic
    # challenge that would open the browser's own dialog.
    status, headers, body = curl("/v2/_catalog", ip=site.ip)
    assert status == 401 and "team/" not in body
    assert "www-authenticate" not in headers
    # Users without rules mean token auth (registry_auth_mode "auto"): the challenge names
    # the token server, which the page reaches on its own origin (/token).
    assert headers["x-registry-authenticate"].startswith(
        f'Bearer realm="https://{DOMAIN}:{TOKEN_PORT}/token"'), headers
    assert json.loads(curl("/config.json", ip=site.ip)[2])["token"] == "/token"
    assert curl("/v2/_catalog", ip=site.ip, user=USER, password=site.password)[0] == 401
    catalog = f"/token?service={ADDRESS}&scope=registry:catalog:*"
    assert curl(catalog, ip=site.ip, user=USER, password="wrong")[0] == 401
    status, _, body = curl(catalog, ip=site.ip, user=USER, password=site.password)
    assert status == 200
    token = json.loads(body)["token"]
    assert claims(token)["access"] == [{"type": "registry", "name": "catalog",
                                        "actions": ["*"]}]
    status, _, body = curl("/v2/_catalog?n=1000", ip=site.ip, bearer=token)
    assert status == 200 and "team/app" in body
    assert curl("/etc/passwd", ip=site.ip)[0] == 404
    # The registry's own port is unchanged: docker clients still get the challenge.
    assert "www-authenticate" in curl("/v2/", port=PORT, ip=site.ip)[1]


# --- the browser ---

def test_wrong_password_shows_a_clear_message(browser: Any, seeded: dict) -> None:
    log_in(browser, USER, "not-the-password")
    wait_for(browser, lambda d: by_id(d, "login-error").is_displayed())
    assert "Wrong user name or password" in by_id(browser, "login-error").text
    assert by_id(browser, "login-view").is_displayed()
    assert not by_id(browser, "logout").is_displayed()  # nobody is logged in
    assert not by_id(browser, "repos-view").is_displayed()
    assert by_css(browser, "button.repo") == []
    shot(browser, "login-wrong-password")


def test_login_lists_the_catalog_and_filters(site: Site, browser: Any, seeded: dict) -> None:
    # 50 a page: Link is followed (under htpasswd auth; under token auth, the default, the
    # list is the token server's /catalog, which pages the registry's catalog itself).
    log_in(browser, USER, site.password, page="?n=50")
    wait_for(browser, lambda d: d.find_element("id", "repo-list").get_attribute(
        "data-loaded-ms"))
    shown = [button.get_attribute("data-repo") for button in by_css(browser, "button.repo")]
    expected = catalog(site)
    assert len(expected) > 100  # more than two pages of 50
    assert shown == expected
    assert by_id(browser, "logout").is_displayed() and by_id(browser, "session-user").text == USER
    assert by_id(browser, "repo-count").text == str(len(expected))
    shot(browser, "repositories")
    by_id(browser, "repo-filter").send_keys("team/")
    shown = [button.text for button in by_css(browser, "button.repo")]
    assert shown == [name for name in expected if "team/" in name] == ["team/app", "team/multi"]
    assert by_id(browser, "repo-count").text == f"2 of {len(expected)}"
    shot(browser, "repositories-filtered")


def rows(driver: Any) -> dict[str, dict[str, str]]:
    found = {}
    for row in by_css(driver, "#tag-rows tr"):
        tag = row.get_attribute("data-tag")
        errors = row.find_elements("css selector", "td.error")
        assert not errors, f"{tag}: {errors[0].text}"
        cells = {"digest": "code.digest", "bytes": "td.size", "created": "td.created",
                 "arch": "td.arch", "pull": "code.pull-line"}
        values = {}
        for key, selector in cells.items():
            element = row.find_element("css selector", selector)
            values[key] = (element.get_attribute("data-digest") if key == "digest" else
                           element.get_attribute("data-bytes") if key == "bytes" else
                           element.get_attribute("data-created") if key == "created" else
                           element.text)
        found[tag] = values
    return found


def open_repo(driver: Any, name: str) -> dict[str, dict[str, str]]:
    by_id(driver, "repo-filter").clear()
    by_id(driver, "repo-filter").send_keys(name)
    button = next(b for b in by_css(driver, "button.repo") if b.text == name)
    button.click()
    wait_for(driver, lambda d: d.find_element("id", "tag-rows").get_attribute(
        "data-loaded-ms"))
    return rows(driver)


def inspect(site: Site, reference: str, *, raw: bool = False) -> Any:
    args = ["inspect", "--cert-dir", "@CERTS@", *(["--raw"] if raw else []),
            f"docker://{ADDRESS}/{reference}"]
    result = site.skopeo(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout if raw else json.loads(result.stdout)


def test_repository_tags_match_skopeo(site: Site, browser: Any, seeded: dict) -> None:
    found = open_repo(browser, "team/app")
    tags = site.skopeo("list-tags", "--cert-dir", "@CERTS@", f"docker://{ADDRESS}/team/app")
    assert tags.returncode == 0, tags.stderr
    assert sorted(found) == sorted(json.loads(tags.stdout)["Tags"]) == \
        ["1.0", "1.1", "latest", "old"]
    for tag, row in found.items():
        info = inspect(site, f"team/app:{tag}")
        raw = inspect(site, f"team/app:{tag}", raw=True)
        assert row["digest"] == info["Digest"] == \
            "sha256:" + hashlib.sha256(raw.encode()).hexdigest(), tag
        # Compressed layer bytes, from the manifest skopeo fetched (bookworm's skopeo 1.9
        # has no LayersData).
        assert int(row["bytes"]) == sum(layer["size"] for layer in json.loads(raw)["layers"])
        assert row["created"] == info["Created"] or \
            row["created"].rstrip("Z") in info["Created"], (row, info["Created"])
        assert row["arch"] == f"{info['Os']}/{info['Architecture']}", tag
        assert row["pull"] == f"docker pull {ADDRESS}/team/app:{tag}"
    assert found["1.0"]["digest"] == found["latest"]["digest"] != found["1.1"]["digest"]
    shot(browser, "tags")
    by_id(browser, "back").click()


def test_index_shows_each_platform(site: Site, browser: Any, seeded: dict) -> None:
    found = open_repo(browser, "team/multi")
    raw = inspect(site, "team/multi:1.0", raw=True)
    index = json.loads(raw)
    assert found["1.0"]["digest"] == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    platforms = [f"{m['platform']['os']}/{m['platform']['architecture']}"
                 + (f"/{m['platform']['variant']}" if "variant" in m["platform"] else "")
                 for m in index["manifests"]]
    assert found["1.0"]["arch"] == ", ".join(platforms) + " (index)"
    assert platforms == ["linux/amd64", "linux/arm64/v8"]
    # Each platform's layers, summed (both images share them here).
    sizes = [sum(layer["size"] for layer in json.loads(inspect(
        site, f"team/multi@{m['digest']}", raw=True))["layers"]) for m in index["manifests"]]
    assert int(found["1.0"]["bytes"]) == sum(sizes)
    shot(browser, "tags-index")
    by_id(browser, "back").click()


def test_copied_pull_line_pulls_on_a_client(site: Site, browser: Any, seeded: dict) -> None:
    open_repo(browser, "team/app")
    row = next(r for r in by_css(browser, "#tag-rows tr") if r.get_attribute("data-tag") == "1.0")
    row.find_element("css selector", "button.copy").click()
    wait_for(browser, lambda d: row.find_element("css selector", "button.copy").text
             in ("Copied", "Press Ctrl+C"))
    assert row.find_element("css selector", "button.copy").text == "Copied"
    copied = browser.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, "
        "(e) => done('ERROR ' + e));")
    assert copied == f"docker pull {ADDRESS}/team/app:1.0"
    words = copied.split()
    harness.ssh(CLIENT, f"docker rmi -f {shlex.quote(words[2])} >/dev/null 2>&1; true")
    pulled = harness.ssh(CLIENT, shlex.join(words))
    assert "team/app:1.0" in pulled.stdout
    # The same image may also be known under another repository on this client (the
    # lab's modes tests push it elsewhere), so pick the digest of the name just pulled.
    digests = json.loads(harness.ssh(CLIENT, "docker image inspect --format "
                                     "'{{json .RepoDigests}}' " + shlex.quote(words[2])).stdout)
    assert f"{ADDRESS}/team/app@{rows(browser)['1.0']['digest']}" in digests


def test_delete_asks_then_skopeo_reports_the_tag_gone(site: Site, browser: Any,
                                                       seeded: dict) -> None:
    found = rows(browser)
    assert inspect(site, "team/app:old")["Digest"] == found["old"]["digest"]
    row = next(r for r in by_css(browser, "#tag-rows tr") if r.get_attribute("data-tag") == "old")
    assert by_id(browser, "gc-note").is_displayed()
    row.find_element("css selector", "button.delete").click()
    wait_for(browser, lambda d: by_id(d, "confirm-delete").is_displayed())
    dialog = by_id(browser, "confirm-delete").text
    assert "team/app:old" in dialog and found["old"]["digest"] in dialog
    assert "garbage collection" in dialog
    shot(browser, "delete-confirm")
    by_id(browser, "confirm-ok").click()
    wait_for(browser, lambda d: by_id(d, "message").is_displayed()
             and "Deleted" in by_id(d, "message").text)
    assert "garbage collection" in by_id(browser, "message").text
    wait_for(browser, lambda d: d.find_element("id", "tag-rows").get_attribute(
        "data-loaded-ms"))
    assert sorted(rows(browser)) == ["1.0", "1.1", "latest"]
    shot(browser, "deleted")
    gone = site.skopeo("inspect", "--cert-dir", "@CERTS@", f"docker://{ADDRESS}/team/app:old")
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr, gone.stderr
    assert inspect(site, "team/app:1.1")["Digest"] == found["1.1"]["digest"]


def test_logout_forgets_everything(browser: Any, seeded: dict) -> None:
    by_id(browser, "logout").click()
    assert by_id(browser, "login-view").is_displayed()
    assert by_css(browser, "button.repo") == [] and by_css(browser, "#tag-rows tr") == []
    stored = browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    assert by_id(browser, "login-password").get_attribute("value") == ""


# --- access rules: the Bearer token step, a user with rights to some repositories ---

LIMITED = "bob"  # may pull team/*, delete in team/app only
RULES = [
    {"repository": "*", "actions": ["pull", "push", "delete"], "users": [USER]},
    {"repository": "team/*", "actions": ["pull"], "users": [LIMITED]},
    {"repository": "team/app", "actions": ["delete"], "users": [LIMITED]},
]
TOKEN_PORT = 5443


def claims(token: str) -> dict[str, Any]:
    """A JWT's payload, read (not verified: the registry verifies)."""
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def token_from(site: Site, user: str, scope: str, *, port: int = WEBUI_PORT) \
        -> tuple[int, dict[str, str], str]:
    return curl(f"/token?service={ADDRESS}&scope={scope}", port=port, user=user,
                password=site.users[user], ip=site.ip)


@pytest.fixture(scope="module")
def with_rules(site: Site, seeded: dict) -> Site:
    """The same registry with registry_access_rules (token auth), deployed twice."""
    site.users[LIMITED] = "bob-webui-password"
    site.data["registry_access_rules"] = RULES
    site.write()
    site.run().assert_ok()
    site.run().assert_no_changes()
    return site


def test_rules_page_passes_token_requests_to_the_token_server(with_rules: Site) -> None:
    site = with_rules
    status, headers, _ = curl("/v2/", ip=site.ip)
    assert status == 401 and "www-authenticate" not in headers
    challenge = headers["x-registry-authenticate"]
    # The registry's realm is the token port: another origin, so the page asks /token here.
    assert challenge.startswith(f'Bearer realm="https://{DOMAIN}:{TOKEN_PORT}/token"'), challenge
    status, _, config = curl("/config.json", ip=site.ip)
    assert json.loads(config)["token"] == "/token"
    status, _, body = token_from(site, LIMITED, "repository:team/app:pull,delete")
    assert status == 200
    granted = claims(json.loads(body)["token"])["access"]
    assert granted == [{"type": "repository", "name": "team/app", "actions": ["pull", "delete"]}]
    # The same answer the token server gives on its own port (its grant, not the proxy's).
    status, _, body = token_from(site, LIMITED, "repository:team/multi:pull,delete",
                                 port=TOKEN_PORT)
    assert status == 200
    assert claims(json.loads(body)["token"])["access"] == [
        {"type": "repository", "name": "team/multi", "actions": ["pull"]}]
    # A wrong password: 401 with the challenge moved (no browser dialog).
    status, headers, _ = curl(f"/token?service={ADDRESS}", user=LIMITED, password="wrong",
                              ip=site.ip)
    assert status == 401 and "www-authenticate" not in headers
    # The token server limits failed logins per client address: through the page it names
    # the client (X-Forwarded-For, set by haproxy), not haproxy's own 127.0.0.1.
    line = harness.ssh(SERVER, "journalctl -u registry-kit-token.service -o cat -n 200 | "
                       f"grep -a \"refused: user '{LIMITED}' from\" | tail -n 1").stdout
    assert " from " in line and " from 127.0.0.1:" not in line, line


def test_rules_catalog_lists_what_each_user_may_pull(with_rules: Site) -> None:
    """Issue 28.5, with curl: the token server's /catalog (through the page's origin and
    on its own port) answers the repositories each user may pull: all for the full user
    (the registry's own _catalog), team/* for LIMITED; no login, no list."""
    site = with_rules
    everything = catalog(site)
    assert "other/thing" in everything and len(everything) > BULK
    for port in (WEBUI_PORT, TOKEN_PORT):
        status, _, body = curl("/catalog", port=port, user=USER, password=site.password,
                               ip=site.ip)
        assert status == 200 and json.loads(body)["repositories"] == everything
        status, _, body = curl("/catalog", port=port, user=LIMITED,
                               password=site.users[LIMITED], ip=site.ip)
        assert status == 200, body
        assert json.loads(body)["repositories"] == [
            name for name in everything if name.startswith("team/")]
        assert curl("/catalog", port=port, ip=site.ip)[0] == 401
        assert curl("/catalog", port=port, user=LIMITED, password="wrong", ip=site.ip)[0] == 401
    line = harness.ssh(SERVER, "journalctl -u registry-kit-token.service -o cat -n 200 | "
                       f"grep -a 'catalog user={LIMITED} ' | tail -n 1").stdout
    assert f"listed={len([n for n in everything if n.startswith('team/')])} of " \
        f"{len(everything)} " in line, line


def test_rules_wrong_password_at_the_token_server(browser: Any, with_rules: Site) -> None:
    log_in(browser, LIMITED, "not-the-password")
    wait_for(browser, lambda d: by_id(d, "login-error").is_displayed())
    assert "Wrong user name or password" in by_id(browser, "login-error").text
    assert not by_id(browser, "logout").is_displayed()


def test_rules_full_user_lists_the_catalog_through_tokens(browser: Any,
                                                          with_rules: Site) -> None:
    site = with_rules
    log_in(browser, USER, site.password)
    wait_for(browser, lambda d: d.find_element("id", "repo-list").get_attribute(
        "data-loaded-ms"))
    shown = [button.get_attribute("data-repo") for button in by_css(browser, "button.repo")]
    # The catalog as curl gets it with a token from the token server's own port.
    status, _, body = token_from(site, USER, "registry:catalog:*", port=TOKEN_PORT)
    assert status == 200
    status, _, listed = curl("/v2/_catalog?n=1000", port=PORT, ip=site.ip,
                             bearer=json.loads(body)["token"])
    assert status == 200
    assert shown == json.loads(listed)["repositories"] and "other/thing" in shown
    found = open_repo(browser, "team/multi")
    assert sorted(found) == ["1.0", "amd64-only", "arm64-only"]
    assert len(by_css(browser, "button.delete")) == 3
    by_id(browser, "back").click()
    by_id(browser, "logout").click()


def open_by_name(driver: Any, name: str) -> None:
    by_id(driver, "open-name").clear()
    by_id(driver, "open-name").send_keys(name)
    by_id(driver, "open-name").submit()


def test_rules_user_without_rights_sees_neither_repository_nor_delete(
        browser: Any, with_rules: Site) -> None:
    site = with_rules
    log_in(browser, LIMITED, site.users[LIMITED])
    wait_for(browser, lambda d: d.find_element("id", "repo-list").get_attribute(
        "data-loaded-ms"))
    # Issue 28.5: the list is what this user may pull (team/*), from the token server's
    # /catalog, not the registry's all-or-nothing _catalog.
    shown = [button.get_attribute("data-repo") for button in by_css(browser, "button.repo")]
    team = [name for name in catalog(site) if name.startswith("team/")]
    assert shown == team and "team/app" in shown and "other/thing" not in shown
    shot(browser, "rules-pullable-catalog")
    # team/app: may pull and delete.
    open_by_name(browser, "team/app")
    wait_for(browser, lambda d: d.find_element("id", "tag-rows").get_attribute(
        "data-loaded-ms"))
    found = rows(browser)
    tags = site.skopeo("list-tags", "--cert-dir", "@CERTS@", f"docker://{ADDRESS}/team/app",
                       user=LIMITED)
    assert tags.returncode == 0, tags.stderr
    assert sorted(found) == sorted(json.loads(tags.stdout)["Tags"]) and "1.1" in found
    assert len(by_css(browser, "button.delete")) == len(found)
    assert by_id(browser, "gc-note").is_displayed()
    shot(browser, "rules-tags-delete")
    by_id(browser, "back").click()
    # team/multi: may pull only: no delete button.
    open_by_name(browser, "team/multi")
    wait_for(browser, lambda d: d.find_element("id", "tag-rows").get_attribute(
        "data-loaded-ms"))
    assert sorted(rows(browser)) == ["1.0", "amd64-only", "arm64-only"]
    assert by_css(browser, "button.delete") == [] and not by_id(browser, "gc-note").is_displayed()
    by_id(browser, "back").click()
    # other/thing: nothing.
    open_by_name(browser, "other/thing")
    wait_for(browser, lambda d: "may not see" in by_id(d, "tags-status").text)
    assert by_css(browser, "#tag-rows tr") == [] and by_css(browser, "button.delete") == []
    shot(browser, "rules-not-allowed")
    refused = site.skopeo("list-tags", "--cert-dir", "@CERTS@",
                          f"docker://{ADDRESS}/other/thing", user=LIMITED)
    assert refused.returncode != 0
    by_id(browser, "back").click()
    # The granted delete works: skopeo (as the full user) reports the tag gone.
    open_by_name(browser, "team/app")
    wait_for(browser, lambda d: d.find_element("id", "tag-rows").get_attribute(
        "data-loaded-ms"))
    digest = rows(browser)["1.1"]["digest"]
    row = next(r for r in by_css(browser, "#tag-rows tr") if r.get_attribute("data-tag") == "1.1")
    row.find_element("css selector", "button.delete").click()
    wait_for(browser, lambda d: by_id(d, "confirm-delete").is_displayed())
    by_id(browser, "confirm-ok").click()
    wait_for(browser, lambda d: by_id(d, "message").is_displayed()
             and "Deleted" in by_id(d, "message").text)
    assert digest in by_id(browser, "message").text
    gone = site.skopeo("inspect", "--cert-dir", "@CERTS@", f"docker://{ADDRESS}/team/app:1.1")
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr, gone.stderr
    by_id(browser, "logout").click()

# Installed in the page before the login: counts the token requests and the Bearer
# requests the registry refuses; mode "expired-first" answers the first token request of
# each scope with that token made expired (exp in the past, so its signature no longer
# matches either: the registry refuses it, as it refuses a token past its lifetime);
# __tokens.asUser sends later token requests as another user (other rights); __shift moves
# the page's clock (Date.now) forward, as if that many milliseconds had passed.
TOKEN_SPY = """
const state = window.__tokens = {asked: 0, expired: 0, refused: 0, mode: "expired-first",
                                 asUser: null};
const realFetch = window.fetch.bind(window);
const realNow = Date.now.bind(Date);
const seen = new Set();
window.__shift = 0;
Date.now = () => realNow() + window.__shift;
const b64url = (text) => btoa(text).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
window.fetch = async (input, init = {}) => {
  const url = new URL(String(input), location.href);
  const headers = {...(init.headers || {})};
  if (url.pathname === "/token") {
    state.asked++;
    if (state.asUser) headers.Authorization = `Basic ${state.asUser}`;
    const response = await realFetch(input, {...init, headers});
    const scope = url.searchParams.get("scope") || "";
    if (state.mode !== "expired-first" || !response.ok || seen.has(scope)) return response;
    seen.add(scope);
    const body = await response.json();
    const [head, payload, signature] = body.token.split(".");
    const claims = JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/")));
    claims.exp = Math.floor(realNow() / 1000) - 60;
    const expired = [head, b64url(JSON.stringify(claims)), signature].join(".");
    state.expired++;
    return new Response(JSON.stringify({...body, token: expired, access_token: expired}),
                        {status: 200, headers: {"Content-Type": "application/json"}});
  }
  const response = await realFetch(input, init);
  if (response.status === 401 && String(headers.Authorization || "").startsWith("Bearer ")) {
    state.refused++;
  }
  return response;
};
"""


def test_rules_page_renews_expired_tokens_and_follows_their_rights(
        browser: Any, with_rules: Site) -> None:
    """Tokens live TOKEN_SECONDS (300 s): the page renews a token the registry refuses
    (asked once more with the credentials in memory) and one past its expires_in on the
    page's clock, and the delete buttons follow the renewed token's rights."""
    site = with_rules
    log_in(browser, USER, site.password, before=TOKEN_SPY)
    wait_for(browser, lambda d: d.find_element("id", "repo-list").get_attribute(
        "data-loaded-ms") or by_id(d, "login-error").is_displayed())
    assert not by_id(browser, "login-error").is_displayed(), by_id(browser, "login-error").text
    spy = browser.execute_script("return window.__tokens")
    assert spy["expired"] == 1 and spy["refused"] == 1, spy  # /v2/: renewed once
    status, _, body = token_from(site, USER, "registry:catalog:*", port=TOKEN_PORT)
    assert status == 200
    status, _, listed = curl("/v2/_catalog?n=1000", port=PORT, ip=site.ip,
                             bearer=json.loads(body)["token"])
    assert status == 200
    assert [b.get_attribute("data-repo") for b in by_css(browser, "button.repo")] == \
        json.loads(listed)["repositories"]
    found = open_repo(browser, "team/multi")
    assert sorted(found) == ["1.0", "amd64-only", "arm64-only"]
    assert len(by_css(browser, "button.delete")) == 3
    spy = browser.execute_script("return window.__tokens")
    # /v2/ and team/multi's tags each got an expired token first, refused by the registry
    # (the list came from the token server's /catalog, with no token; the delete token is
    # only read, never sent).
    assert spy["expired"] >= 2 and spy["refused"] >= 2, spy
    # 301 s later on the page's clock, every token is past its expires_in; the token server
    # now answers as LIMITED (team/multi: pull only), as after a change of the rules.
    asked = browser.execute_script(
        "window.__tokens.mode = 'real'; window.__tokens.asUser = arguments[0];"
        "window.__shift = 301000; return window.__tokens.asked;",
        base64.b64encode(f"{LIMITED}:{site.users[LIMITED]}".encode()).decode())
    row = next(r for r in by_css(browser, "#tag-rows tr")
               if r.get_attribute("data-tag") == "arm64-only")
    row.find_element("css selector", "button.delete").click()
    wait_for(browser, lambda d: by_id(d, "confirm-delete").is_displayed())
    by_id(browser, "confirm-ok").click()
    wait_for(browser, lambda d: by_id(d, "message").is_displayed())
    assert "You may not delete team/multi:arm64-only" in by_id(browser, "message").text
    # The renewed delete token grants no delete here: the buttons went with it.
    wait_for(browser, lambda d: by_css(d, "button.delete") == [], timeout=10)
    assert not by_id(browser, "gc-note").is_displayed()
    assert browser.execute_script("return window.__tokens.asked") > asked
    kept = site.skopeo("inspect", "--cert-dir", "@CERTS@",
                       f"docker://{ADDRESS}/team/multi:arm64-only")
    assert kept.returncode == 0, kept.stderr
    # Reopened: listed with the renewed (pull) token, still without delete buttons.
    by_id(browser, "back").click()
    found = open_repo(browser, "team/multi")
    assert sorted(found) == ["1.0", "amd64-only", "arm64-only"]
    assert by_css(browser, "button.delete") == []
    by_id(browser, "logout").click()
    assert not by_id(browser, "logout").is_displayed()


# --- the audit log (registry_audit_log) of everything above ---

def _audit_file() -> list[dict[str, Any]]:
    text = harness.ssh(SERVER, "cat /var/log/registry-kit/audit.log").stdout
    return [json.loads(line) for line in text.splitlines()]


def _denied() -> list[dict[str, Any]]:
    text = harness.ssh(SERVER, "journalctl -u registry-kit-token.service -o cat --no-pager "
                       "| grep -F 'audit {' || true").stdout
    return [json.loads(line.partition("audit ")[2]) for line in text.splitlines()]


def test_audit_log_names_who_pushed_deleted_and_was_refused(with_rules: Site) -> None:
    """The seed's pushes (alice), the web page's deletes (alice; bob under the rules) and
    a push bob may not make, each with its user, in the receiver's file and journal (the
    denial in the token server's journal) and in status; no password on the server."""
    site = with_rules
    refused = site.skopeo("copy", "--src-cert-dir", "@CERTS@", "--dest-cert-dir", "@CERTS@",
                          f"docker://{ADDRESS}/team/app:1.0",
                          f"docker://{ADDRESS}/team/app:bob-was-here", user=LIMITED)
    assert refused.returncode != 0
    entries = _audit_file()
    pushes = {(e["user"], e["repository"], e["reference"]) for e in entries
              if e["action"] == "push"}
    assert {(USER, "team/app", "1.0"), (USER, "team/app", "latest"),
            (USER, "team/multi", "1.0")} <= pushes, entries
    # The page deletes a manifest by digest; 2.8 also tells each tag it took away.
    deletes = [(e["user"], e["repository"], e["reference"] or e["digest"][:7])
               for e in entries if e["action"] == "delete"]
    assert {(USER, "team/app", "old"), (USER, "team/app", "sha256:"),
            (LIMITED, "team/app", "1.1"), (LIMITED, "team/app", "sha256:")} <= set(deletes)
    assert all(e["address"] for e in entries)
    journal = harness.ssh(SERVER, "journalctl -u registry-kit-audit -o cat --no-pager").stdout
    assert all(json.dumps(e) in journal for e in entries)
    denied = [e for e in _denied() if e["user"] == LIMITED and e["repository"] == "team/app"
              and "push" in e["refused"]]
    assert denied and denied[-1]["address"], _denied()
    status = site.run("status.py").assert_ok()
    shown = status.stdout + status.stderr
    assert f"audit ({SERVER}): the last 20 entries:" in shown, shown[-3000:]
    assert f"denied  {LIMITED} from" in shown and "(push refused: not granted)" in shown
    # No password anywhere in the logs: the files under /var/log and the whole journal.
    passwords = "\n".join(site.users.values()) + "\n"
    found = harness.ssh(SERVER, 'f=$(mktemp) && cat > "$f" && grep -rlaF -f "$f" /var/log; '
                        'journalctl -o cat --no-pager | grep -caF -f "$f"; rm -f "$f"',
                        stdin=passwords, check=False).stdout
    assert found.split() in ([], ["0"]), found


# --- off, and teardown ---

def test_setting_off_removes_the_page(site: Site, seeded: dict) -> None:
    site.data["registry_webui_enabled"] = False
    site.write()
    try:
        site.run().assert_ok()
        site.run().assert_no_changes()
        assert curl("/", ip=site.ip)[0] == 0  # nothing listens
        gone = harness.ssh(SERVER, "systemctl is-active registry-kit-webui; "
                           "ls /etc/registry-kit-webui /etc/systemd/system/"
                           "registry-kit-webui.service 2>&1", check=False).stdout
        assert "No such file" in gone and gone.count("No such file") == 2, gone
    finally:
        site.data["registry_webui_enabled"] = True
        site.write()


def test_teardown_removes_the_page(site: Site, seeded: dict) -> None:
    site.run().assert_ok()
    assert curl("/", ip=site.ip)[0] == 200
    site.run("teardown.py").assert_ok()
    site.run("teardown.py").assert_no_changes()
    assert curl("/", ip=site.ip)[0] == 0
    left = harness.ssh(SERVER, "ls -d /etc/registry-kit-webui "
                       "/etc/systemd/system/registry-kit-webui.service 2>&1; "
                       "systemctl is-active registry-kit-webui 2>&1", check=False).stdout
    assert left.count("No such file") == 2 and left.split()[-1] == "inactive", left


def test_report_screenshots(seeded: dict) -> None:
    names = sorted(path.name for path in OUTPUT.glob("*.png"))
    print(f"web page screenshots in {OUTPUT}: {', '.join(names)}")
    assert {"login-wrong-password.png", "repositories.png", "tags.png",
            "delete-confirm.png"} <= set(names)
