"""The registry web page (registry_webui_enabled) in a real browser: Debian's chromium,
driven by selenium through chromium-driver, against a kit-deployed lab registry.

Deploy (twice: the second run changes nothing), then check what the page serves with curl
(CSP, no Basic challenge, nothing of the contents without a login), then in the browser:
a wrong password, the login, the repository list against the catalog (more than one
catalog page: the page follows `Link`), the filter, one repository's tags against
`skopeo list-tags` / `skopeo inspect` (a Docker v2 image, an OCI image, an OCI index),
the copied pull line run on a client, a delete that skopeo then reports gone, the logout.
Turning the setting off and the teardown remove it (each twice, the second a no-op).
Screenshots of the main views go to $REGISTRY_KIT_TEST_OUTPUT/webui (default
.test-output/webui).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
import pytest
import webui_browser as wb
from harness import Run

import lab as lab_api

DOMAIN = "registry.lab"
PORT = 5000
WEBUI_PORT = 5443
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
        self.data: dict[str, Any] = {
            "registry_domain": DOMAIN, "registry_port": PORT,
            "registry_delete_enabled": True, "registry_webui_enabled": True,
            "registry_webui_port": WEBUI_PORT, "registry_client_login_user": USER}
        self.write()

    def write(self) -> None:
        users = [{"name": USER, "password_file": harness.write_secret(
            self.dir, f"{USER}.password", self.password)}]
        harness.write_inventory(self.inventory, servers=[SERVER], clients=[CLIENT],
                                data={**self.data, "registry_users": users})

    def run(self, script: str = "deploy.py") -> Run:
        return harness.run_kit(self.inventory, script)

    @property
    def ip(self) -> str:
        return harness.host_ip(SERVER)

    def skopeo(self, *args: str) -> Any:
        return harness.skopeo(list(args), hosts={DOMAIN: self.ip},
                              auth={ADDRESS: (USER, self.password)})

    def api(self) -> wb.RegistryApi:
        return wb.RegistryApi(DOMAIN, self.ip, PORT, harness.CA_CERT, USER, self.password)


def curl(path: str, *, port: int = WEBUI_PORT, user: str | None = None,
         password: str | None = None, ip: str) -> tuple[int, dict[str, str], str]:
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
    lab_api.reset_host(SERVER)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return Site(tmp_path_factory.mktemp("webui"))


@pytest.fixture(scope="module")
def deployed(site: Site) -> Run:
    return site.run().assert_ok()


@pytest.fixture(scope="module")
def seeded(site: Site, deployed: Run) -> dict[str, str]:
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
    return {}


@pytest.fixture(scope="module")
def browser(site: Site, deployed: Run) -> Any:
    spki = wb.verified_spki(DOMAIN, site.ip, WEBUI_PORT, harness.CA_CERT)
    with wb.chromium(DOMAIN, site.ip, spki) as driver:
        driver.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": PAGE_URL.rstrip("/"),
            "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
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


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(OUTPUT / f"{name}.png"))


def log_in(driver: Any, user: str, password: str, page: str = "") -> None:
    driver.get(PAGE_URL + page)
    wait_for(driver, lambda d: by_id(d, "login-user").is_displayed())
    by_id(driver, "login-user").clear()
    by_id(driver, "login-user").send_keys(user)
    by_id(driver, "login-password").send_keys(password)
    by_id(driver, "login-submit").click()


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
    assert headers["x-registry-authenticate"].startswith("Basic ")
    assert curl("/v2/_catalog", ip=site.ip, user=USER, password="wrong")[0] == 401
    status, _, body = curl("/v2/_catalog?n=1000", ip=site.ip, user=USER,
                           password=site.password)
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
    assert not by_id(browser, "repos-view").is_displayed()
    assert by_css(browser, "button.repo") == []
    shot(browser, "login-wrong-password")


def test_login_lists_the_catalog_and_filters(site: Site, browser: Any, seeded: dict) -> None:
    log_in(browser, USER, site.password, page="?n=50")  # 50 a page: Link is followed
    wait_for(browser, lambda d: d.find_element("id", "repo-list").get_attribute(
        "data-loaded-ms"))
    shown = [button.get_attribute("data-repo") for button in by_css(browser, "button.repo")]
    expected = catalog(site)
    assert len(expected) > 100  # the page followed Link through three pages of 50
    assert shown == expected
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
    digest = harness.ssh(CLIENT, "docker image inspect --format '{{index .RepoDigests 0}}' "
                         + shlex.quote(words[2])).stdout.strip()
    assert digest.endswith(rows(browser)["1.0"]["digest"])


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


BENCH_REPOS = 1000  # repositories in the registry for the measurement
BENCH_TAGS = 50  # tags in one of them


def seed_bench(site: Site) -> int:
    """Fill the registry up to BENCH_REPOS repositories, one of them (big/fifty) with
    BENCH_TAGS tags: blobs mounted from team/app, one small manifest per tag; four
    connections at once."""
    have = catalog(site)
    api = site.api()
    try:
        oci = api.manifest("team/app", "1.1", OCI_MANIFEST)
    finally:
        api.close()
    blobs = [oci["config"]["digest"], *(layer["digest"] for layer in oci["layers"])]
    missing = BENCH_REPOS - len(have) - (0 if "big/fifty" in have else 1)
    start = len([name for name in have if name.startswith("bulk/")])
    names = ["big/fifty", *(f"bulk/repo-{i:03d}" for i in range(start, start + missing))]
    api = site.api()
    try:
        base_config = json.loads(api.request(
            "GET", f"/v2/team/app/blobs/{oci['config']['digest']}")[2])
    finally:
        api.close()

    def push(part: list[str]) -> None:
        api = site.api()
        try:
            for name in part:
                for blob in blobs:
                    api.mount(name, blob, "team/app")
                if name != "big/fifty":  # its tags: push_fifty, after the mounts
                    body, media = wb.variant(oci, f"{name}:1")
                    api.put_manifest(name, "1", body, media)
        finally:
            api.close()

    def push_fifty(tags: list[int]) -> None:
        # Each tag its own image config, as separate builds have: the page fetches each.
        api = site.api()
        try:
            for tag in tags:
                config = json.dumps({**base_config, "created": f"2026-01-01T00:00:{tag:02d}Z"},
                                    sort_keys=True).encode()
                digest = wb.push_blob(api, "big/fifty", config)
                manifest = {**oci, "config": {**oci["config"], "digest": digest,
                                              "size": len(config)}}
                api.put_manifest("big/fifty", f"v{tag}",
                                 json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
        finally:
            api.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(push, [names[i::4] for i in range(4)]))
        list(pool.map(push_fifty, [list(range(BENCH_TAGS))[i::4] for i in range(4)]))
    return len(catalog(site))


def test_measure_1000_repositories_and_50_tags(site: Site, browser: Any, seeded: dict) -> None:
    """Reported, not asserted: time to the first list after the login, and to one
    repository's 50 tags with digest, size, created time and platform."""
    started = time.monotonic()
    repos = seed_bench(site)
    seed_s = time.monotonic() - started
    assert repos >= BENCH_REPOS
    runs: dict[str, list[float]] = {"login_to_list_s": [], "list_page_ms": [],
                                    "open_50_tags_s": [], "open_page_ms": [],
                                    "open_tag_names_ms": [], "filter_s": []}
    for _ in range(3):
        if by_css(browser, "#logout") and by_id(browser, "logout").is_displayed():
            by_id(browser, "logout").click()
        log_in_started = time.monotonic()
        log_in(browser, USER, site.password)
        wait_for(browser, lambda d: d.find_element("id", "repo-list").get_attribute(
            "data-loaded-ms"))
        runs["login_to_list_s"].append(time.monotonic() - log_in_started)
        runs["list_page_ms"].append(float(
            by_id(browser, "repo-list").get_attribute("data-loaded-ms")))
        assert len(by_css(browser, "button.repo")) == repos
        filter_started = time.monotonic()
        by_id(browser, "repo-filter").send_keys("big/fifty")
        wait_for(browser, lambda d: len(by_css(d, "button.repo")) == 1)
        runs["filter_s"].append(time.monotonic() - filter_started)
        open_started = time.monotonic()
        by_css(browser, "button.repo")[0].click()
        wait_for(browser, lambda d: d.find_element("id", "tag-rows").get_attribute(
            "data-loaded-ms"))
        runs["open_50_tags_s"].append(time.monotonic() - open_started)
        runs["open_page_ms"].append(float(
            by_id(browser, "tag-rows").get_attribute("data-loaded-ms")))
        runs["open_tag_names_ms"].append(float(
            by_id(browser, "tag-rows").get_attribute("data-listed-ms")))
        assert len(rows(browser)) == BENCH_TAGS
    shot(browser, "tags-50")
    by_id(browser, "back").click()
    by_id(browser, "repo-filter").clear()
    by_id(browser, "repo-filter").send_keys(" ")  # the filter's input event: show all again
    shot(browser, "repositories-1000")
    result = {
        "date": time.strftime("%Y-%m-%d"), "repositories": repos, "tags_in_one": BENCH_TAGS,
        "seed_s": round(seed_s, 1), "runs": len(runs["login_to_list_s"]),
        **{key: [round(v, 3) for v in values] for key, values in runs.items()},
        **{f"median_{key}": round(statistics.median(values), 3)
           for key, values in runs.items()},
        "browser": "Debian chromium (headless), selenium; lab registry on this machine",
    }
    (OUTPUT / "bench-webui.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


@pytest.mark.skip(reason="needs per-repository access control (issue 16): enable when a user "
                  "with rights to team/* only exists, set RESTRICTED_USER to that user")
def test_user_without_rights_sees_neither_repository_nor_delete(site: Site, browser: Any,
                                                                seeded: dict) -> None:
    user, password = os.environ["RESTRICTED_USER"], os.environ["RESTRICTED_PASSWORD"]
    log_in(browser, user, password)
    wait_for(browser, lambda d: d.find_element("id", "repo-list").get_attribute(
        "data-loaded-ms") or by_id(d, "repos-status").text)
    shown = [button.text for button in by_css(browser, "button.repo")]
    assert "other/thing" not in shown
    by_id(browser, "open-name").send_keys("other/thing")
    by_id(browser, "open-name").submit()
    wait_for(browser, lambda d: "may not see" in by_id(d, "tags-status").text)
    assert by_css(browser, "button.delete") == []


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
