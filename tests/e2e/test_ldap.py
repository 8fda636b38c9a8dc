"""Users and groups from a directory (registry_ldap) on real lab hosts: Debian's slapd on a
host of its own (lab-ldap, `ldap.lab`, LDAPS with a CA this module makes), the registry on
lab-reg (registry:3 when the lab has it, else registry:2), the docker CLI on lab-client1.

One deploy, applied twice (the second run changes nothing), shared by the scenarios in
order: a directory user pushes where its group is granted and gets Docker's own denial
elsewhere; a wrong password is 401; removed from the group (ldapmodify on the directory's
host, no kit run) the user's next push is denied; slapd stopped, directory users get 401
while a local user still pushes; the token server's /catalog lists each user what their
groups may pull (and nothing once out of the group), and so does the web page in Debian's
chromium (selenium, tests/e2e/webui_browser.py), on registry 3 and 2.8; names with LDAP
filter characters cannot log in; the bind password is in no journal, log or command line on
the server. Checks use the docker CLI, curl, chromium and journalctl over SSH, never the
kit's code.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import ldap_directory
import pytest
import webui_browser as wb

import lab as lab_api
from lab.images import registry3_available
from lab.topology import HostSpec

DOMAIN = "registry.lab"
PORT = 5000
TOKEN_PORT = 5443
WEBUI_PORT = 5444
ADDRESS = f"{DOMAIN}:{PORT}"
PAGE_URL = f"https://{DOMAIN}:{WEBUI_PORT}/"
SERVER = "lab-reg"
CLIENT = "lab-client1"
DIRECTORY_HOST = HostSpec("lab-ldap", "bookworm", ("ldap.lab",), ())
DENIED = "denied: requested access to the resource is denied"
LOCAL = {"ci": "ci-local-password-1"}
DIRECTORY_USERS = {"dana": "dana-directory-pw-1", "erin": "erin-directory-pw-1"}
DIRECTORY_GROUPS = {"team-a": ["dana", "erin"], "team-b": ["erin"]}
SERVICE_PASSWORD = "svc-bind-Secret-90210"
RULES: list[dict[str, Any]] = [
    {"repository": "team-a/*", "actions": ["pull", "push"], "ldap_groups": ["team-a"]},
    {"repository": "*", "actions": ["pull", "push", "delete"], "users": ["ci"]},
]
TIMES: dict[str, float] = {}

pytestmark = pytest.mark.e2e


class Site:
    def __init__(self, directory: Path, ldap: ldap_directory.Directory,
                 bring_up: concurrent.futures.Future[float]) -> None:
        self.bring_up = bring_up
        self.dir = directory
        self.inventory = directory / "inventory.py"
        self.state_dir = directory / "state"
        self.ldap = ldap
        (directory / "ldap-ca.crt").write_bytes(ldap.ca_pem)
        available, _ = registry3_available()
        self.image = "registry:3" if available else "registry:2"
        self.data: dict[str, Any] = {
            "registry_domain": DOMAIN, "registry_port": PORT, "registry_image": self.image,
            "registry_verify_timeout": 30, "registry_state_dir": str(self.state_dir),
            "registry_access_rules": RULES,
            # The web page shares this deploy: the per-user list in the browser.
            "registry_webui_enabled": True, "registry_webui_port": WEBUI_PORT,
            "registry_ldap": {
                "url": "ldaps://ldap.lab", "base_dn": ldap_directory.PEOPLE,
                "bind_dn": ldap_directory.SERVICE_DN,
                "bind_password_file": harness.write_secret(directory, "ldap.password",
                                                           SERVICE_PASSWORD),
                "user_filter": "(&(objectClass=inetOrgPerson)(uid={user}))",
                "group_filter": "(&(objectClass=groupOfNames)(member={dn}))",
                "group_base_dn": ldap_directory.GROUPS,
                "ca_file": str(directory / "ldap-ca.crt")},
        }
        self.write()

    def write(self, extra_local: dict[str, str] | None = None) -> None:
        local = {**LOCAL, **(extra_local or {})}
        users = [{"name": name, "password_file": harness.write_secret(
            self.dir, f"{name}.password", password)} for name, password in local.items()]
        harness.write_inventory(self.inventory, servers=[SERVER], clients=[CLIENT],
                                data={**self.data, "registry_users": users})

    def twice(self, timing: str) -> None:
        start = time.monotonic()
        harness.run_kit(self.inventory).assert_ok()
        TIMES[timing] = round(time.monotonic() - start, 1)
        TIMES["slapd bring-up (beside the first deploy)"] = self.bring_up.result(timeout=600)
        harness.run_kit(self.inventory).assert_no_changes()

    def token_rate(self, user: str, password: str, count: int = 40) -> float:
        """Token requests per second, one curl process asking `count` tokens in a row (a
        TLS handshake each, as every docker command makes one)."""
        ca = self.state_dir / "ca" / "ca.crt"
        url = (f"https://{DOMAIN}:{TOKEN_PORT}/token?service={ADDRESS}&scope=repository:"
               "team-a/app:pull")
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "curlrc"
            config.write_text(f'user = "{user}:{password}"\n')
            start = time.monotonic()
            proc = subprocess.run(
                ["curl", "-s", "--max-time", "60", "--cacert", str(ca), "-w", "%{http_code}\n",
                 "--resolve", f"{DOMAIN}:{TOKEN_PORT}:{harness.host_ip(SERVER)}", "-K",
                 str(config), *["-o", "/dev/null", url] * count],  # one -o per URL
                capture_output=True, text=True, timeout=90)
            seconds = time.monotonic() - start
        assert proc.stdout.split() == ["200"] * count, proc.stdout
        return round(count / seconds, 1)

    def token_status(self, user: str, password: str, scope: str) -> tuple[int, dict]:
        """(HTTP status, body) of a token request with curl (credentials from a file)."""
        ca = self.state_dir / "ca" / "ca.crt"
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "curlrc"
            escaped = (user + ":" + password).replace("\\", "\\\\").replace('"', '\\"')
            config.write_text(f'user = "{escaped}"\n')
            proc = subprocess.run(
                ["curl", "-s", "--max-time", "20", "--cacert", str(ca), "-w", "\n%{http_code}",
                 "--resolve", f"{DOMAIN}:{TOKEN_PORT}:{harness.host_ip(SERVER)}", "-G",
                 "--data-urlencode", f"service={ADDRESS}", "--data-urlencode",
                 f"scope={scope}", "-K", str(config), f"https://{DOMAIN}:{TOKEN_PORT}/token"],
                capture_output=True, text=True, timeout=30)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), (json.loads(body) if body.startswith("{") else {})

    def catalog(self, user: str | None, password: str = "") -> tuple[int, list[str] | None]:
        """(HTTP status, repositories) of the token server's GET /catalog with curl."""
        ca = self.state_dir / "ca" / "ca.crt"
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "curlrc"
            config.write_text(f'user = "{user}:{password}"\n' if user else "")
            proc = subprocess.run(
                ["curl", "-s", "--max-time", "20", "--cacert", str(ca), "-w", "\n%{http_code}",
                 "--resolve", f"{DOMAIN}:{TOKEN_PORT}:{harness.host_ip(SERVER)}", "-K",
                 str(config), f"https://{DOMAIN}:{TOKEN_PORT}/catalog"],
                capture_output=True, text=True, timeout=30)
        body, _, code = proc.stdout.rpartition("\n")
        return int(code or 0), (json.loads(body)["repositories"] if int(code or 0) == 200
                                else None)


def docker(command: str, *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return harness.ssh(CLIENT, command, check=False, stdin=stdin)


def login(user: str, password: str) -> subprocess.CompletedProcess[str]:
    docker(f"docker logout {ADDRESS}")
    return docker(f"docker login -u {user} --password-stdin {ADDRESS}", stdin=password)


def push(image: str) -> subprocess.CompletedProcess[str]:
    return docker(f"docker tag busybox {ADDRESS}/{image} && docker push {ADDRESS}/{image}")


def assert_pushed(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_denied(proc: subprocess.CompletedProcess[str], what: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{what} was allowed:\n{out}"
    assert DENIED in out, f"{what}: not Docker's denial:\n{out}"


def pullable_by_the_rules(user: str, repositories: list[str]) -> list[str]:
    """What RULES let `user` pull through the directory groups DIRECTORY_GROUPS gives it
    (a pattern's `*` is any characters, `/` included)."""
    groups = {group for group, members in DIRECTORY_GROUPS.items() if user in members}
    patterns = [rule["repository"] for rule in RULES if "pull" in rule["actions"]
                and groups & set(rule.get("ldap_groups", ()))]
    return [name for name in repositories
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]


def page_list(driver: Any, user: str, password: str) -> list[str]:
    """The repositories the web page lists `user` at a fresh login in the browser."""
    wb.log_in(driver, PAGE_URL, user, password)
    shown = wb.listed_repos(driver)
    assert wb.by_id(driver, "session-user").text == user
    if not shown:
        assert wb.by_id(driver, "repos-status").text == "No repositories you may see."
    wb.by_id(driver, "logout").click()
    return shown


def journal_since(since: str) -> str:
    return harness.ssh(SERVER, "journalctl -u registry-kit-token.service -o cat --no-pager "
                       f"--since @{since} | tail -n 50").stdout


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    """Debian's chromium for the web page; made at the first test that asks for it, after
    the deploy (test_a)."""
    if wb.missing_browser():
        pytest.skip(str(wb.missing_browser()))
    with wb.page_browser(DOMAIN, harness.host_ip(SERVER), WEBUI_PORT,
                         site.state_dir / "ca" / "ca.crt") as driver:
        yield driver


@pytest.fixture(scope="module")
def site(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    start = time.monotonic()
    lab_api.up([DIRECTORY_HOST])
    directory = ldap_directory.Directory(
        DIRECTORY_HOST.name, "ldap.lab", admin_password="lab-directory-admin-1",
        service_password=SERVICE_PASSWORD, users=dict(DIRECTORY_USERS),
        groups={group: list(members) for group, members in DIRECTORY_GROUPS.items()})
    material = ldap_directory.tls_material(directory.name)
    directory.ca_pem = material[0]
    # A fresh server, as test_access does: repositories of other modules stay out.
    lab_api.reset_host(SERVER, docker=True)  # Docker in: its install is test_deploy's
    # slapd comes up while the first deploy runs (Site.twice waits for it before the
    # second): the suite's time. A token server started before it logs that it could not
    # compare names and starts anyway; the rerun and the checks then have the directory.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        bring_up = pool.submit(ldap_directory.install, directory, material)
        yield Site(tmp_path_factory.mktemp("ldap"), directory, bring_up)
    lab_api.remove_host(DIRECTORY_HOST.name)
    TIMES["module"] = round(time.monotonic() - start, 1)
    print("\nldap timings (s):", json.dumps(TIMES, indent=1))


def test_a_directory_user_pushes_where_its_group_is_granted(site: Site) -> None:
    site.twice(f"deploy {site.image} with registry_ldap")
    assert docker("docker pull busybox").returncode == 0
    assert login("dana", DIRECTORY_USERS["dana"]).returncode == 0
    assert_pushed(push("team-a/app:dana"))
    assert_denied(push("team-b/app:dana"), "dana pushing team-b/app")
    code, body = site.token_status("dana", DIRECTORY_USERS["dana"],
                                   "repository:team-a/app:pull,push")
    assert code == 200 and body["expires_in"] == 300, body
    assert site.token_status("dana", "wrong-password", "repository:team-a/app:pull")[0] == 401
    assert login("dana", "wrong-password").returncode != 0


# Unescaped, "dana)(uid=*" and "dan*" would find dana's entry alone and her password would
# log them in; "*" would match every user. Six failures from the control machine's address
# (the wrong password above makes seven) stay under its 10 a minute.
@pytest.mark.parametrize("name", ["*", "*)(uid=*", "\\", "(", "dana)(uid=*", "dan*"])
def test_b_names_with_filter_characters_cannot_log_in(site: Site, name: str) -> None:
    code, _ = site.token_status(name, DIRECTORY_USERS["dana"], "repository:team-a/app:pull")
    assert code == 401, (name, code)


def test_c_the_bind_password_is_in_no_log_journal_or_command_line(site: Site) -> None:
    # The password reaches the host on stdin, into a file grep reads its pattern from.
    harness.ssh(SERVER, "umask 077 && cat > /run/ldap-test.pattern", stdin=SERVICE_PASSWORD)
    out = harness.ssh(SERVER, "{ journalctl --no-pager -o cat; cat /var/log/*.log "
                      "/var/log/*/*.log 2>/dev/null; ps -eo args; "
                      "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; "
                      "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; } "
                      "| grep -cF -f /run/ldap-test.pattern; rm -f /run/ldap-test.pattern",
                      check=False)
    assert out.stdout.strip() == "0", out.stdout
    mode = harness.ssh(SERVER, "stat -c '%U %a' /etc/registry-kit/token/ldap.password").stdout
    assert mode.split() == ["root", "600"]


def test_d_removed_from_the_group_the_next_push_is_denied(site: Site) -> None:
    start = time.monotonic()
    assert login("dana", DIRECTORY_USERS["dana"]).returncode == 0
    assert_pushed(push("team-a/app:before"))
    ldap_directory.remove_member(site.ldap, "team-a", "dana")
    try:
        # Groups are read at each token request; a token lives 300 s (expires_in above) and
        # each docker command asks for a new one, so the next push is already refused.
        assert_denied(push("team-a/app:after"), "dana pushing after leaving team-a")
        code, body = site.token_status("dana", DIRECTORY_USERS["dana"],
                                       "repository:team-a/app:pull,push")
        assert code == 200 and body.get("token"), body
    finally:
        ldap_directory.add_member(site.ldap, "team-a", "dana")
    assert_pushed(push("team-a/app:back"))
    TIMES["group removal"] = round(time.monotonic() - start, 1)


def test_e_directory_stopped_local_users_still_push(site: Site) -> None:
    start = time.monotonic()
    since = harness.ssh(SERVER, "date +%s").stdout.strip()
    harness.ssh(site.ldap.host, "systemctl stop slapd")
    try:
        code, _ = site.token_status("dana", DIRECTORY_USERS["dana"],
                                    "repository:team-a/app:pull")
        assert code == 401
        journal = journal_since(since)
        assert "user 'dana'" in journal and "directory unreachable:" in journal, journal
        assert login("ci", LOCAL["ci"]).returncode == 0
        assert_pushed(push("team-b/app:ci-while-directory-down"))
        assert login("dana", DIRECTORY_USERS["dana"]).returncode != 0
    finally:
        harness.ssh(site.ldap.host, "systemctl start slapd")
    # Back: the service account's connection is opened again.
    deadline = time.monotonic() + 30
    while site.token_status("dana", DIRECTORY_USERS["dana"],
                            "repository:team-a/app:pull")[0] != 200:
        assert time.monotonic() < deadline, "dana still refused after slapd started"
        time.sleep(1)
    TIMES["directory stopped"] = round(time.monotonic() - start, 1)


def test_e_catalog_lists_what_each_directory_user_may_pull(site: Site) -> None:
    """Issue 28.5 with curl: the token server's /catalog for directory users follows their
    groups read at this login (team-b/app, pushed by ci above, is listed to ci alone); out
    of the group, dana's next list is empty, with no kit run."""
    start = time.monotonic()
    since = harness.ssh(SERVER, "date +%s").stdout.strip()
    assert site.catalog("ci", LOCAL["ci"]) == (200, ["team-a/app", "team-b/app"])
    assert site.catalog("dana", DIRECTORY_USERS["dana"]) == (200, ["team-a/app"])
    # erin is in team-b too, a group no rule names.
    assert site.catalog("erin", DIRECTORY_USERS["erin"]) == (200, ["team-a/app"])
    assert site.catalog(None) == (401, None)
    assert site.catalog("dana", "wrong-password") == (401, None)
    ldap_directory.remove_member(site.ldap, "team-a", "dana")
    try:
        assert site.catalog("dana", DIRECTORY_USERS["dana"]) == (200, [])
    finally:
        ldap_directory.add_member(site.ldap, "team-a", "dana")
    assert site.catalog("dana", DIRECTORY_USERS["dana"]) == (200, ["team-a/app"])
    journal = journal_since(since)
    assert "catalog user=dana listed=1 of 2 " in journal, journal
    assert "catalog user=dana listed=0 of 2 " in journal, journal
    TIMES["catalog per directory user"] = round(time.monotonic() - start, 1)


def assert_page_lists_what_the_groups_may_pull(site: Site, browser: Any) -> None:
    """Each directory user's list in the web page is what RULES give their groups, the
    same as the token server's /catalog answers them, and less than the whole catalog
    (ci may pull `*`); out of team-a, dana's next login lists none of team-a's
    repositories, with no kit run; back in, they return."""
    since = harness.ssh(SERVER, "date +%s").stdout.strip()
    code, everything = site.catalog("ci", LOCAL["ci"])
    assert code == 200 and everything and "team-b/app" in everything, everything
    for user, password in DIRECTORY_USERS.items():
        expected = pullable_by_the_rules(user, everything)
        assert expected and set(expected) < set(everything), (user, expected)
        assert page_list(browser, user, password) == expected == site.catalog(user, password)[1]
    ldap_directory.remove_member(site.ldap, "team-a", "dana")
    try:
        assert page_list(browser, "dana", DIRECTORY_USERS["dana"]) == []
    finally:
        ldap_directory.add_member(site.ldap, "team-a", "dana")
    assert page_list(browser, "dana", DIRECTORY_USERS["dana"]) == \
        pullable_by_the_rules("dana", everything)
    # The page's lists came from the token server's /catalog, asked as each user.
    journal = journal_since(since)
    assert f"catalog user=dana listed=0 of {len(everything)} " in journal, journal
    erin = len(pullable_by_the_rules("erin", everything))
    assert f"catalog user=erin listed={erin} of {len(everything)} " in journal, journal


def test_e_web_page_lists_what_each_directory_user_may_pull(site: Site, browser: Any) -> None:
    """Issue 28.6 in the browser: the web page's list for directory users (selenium)."""
    start = time.monotonic()
    assert_page_lists_what_the_groups_may_pull(site, browser)
    TIMES[f"web page per directory user ({site.image})"] = round(time.monotonic() - start, 1)


def test_f_a_token_costs_one_bind_the_service_account_none(site: Site) -> None:
    """slapd's own log: five tokens for dana are five binds as dana; the service account's
    connection stays open (it bound again only if slapd restarted, as in test_e)."""
    site.token_status("dana", DIRECTORY_USERS["dana"], "repository:team-a/app:pull")
    before = len(ldap_directory.binds(site.ldap))
    for _ in range(5):
        code, _ = site.token_status("dana", DIRECTORY_USERS["dana"], "repository:team-a/app:pull")
        assert code == 200
    binds = ldap_directory.binds(site.ldap)[before:]
    assert binds == [site.ldap.dn("dana")] * 5, binds
    # What a directory login costs against a local one (bcrypt remembered after the first):
    # tokens per second, and docker pulls (one token each) on the client.
    TIMES["tokens/s directory user"] = site.token_rate("dana", DIRECTORY_USERS["dana"])
    TIMES["tokens/s local user"] = site.token_rate("ci", LOCAL["ci"])
    for user, password in (("dana", DIRECTORY_USERS["dana"]), ("ci", LOCAL["ci"])):
        assert login(user, password).returncode == 0
        start = time.monotonic()
        for _ in range(5):
            proc = docker(f"docker rmi -f {ADDRESS}/team-a/app:dana >/dev/null 2>&1; "
                          f"docker pull -q {ADDRESS}/team-a/app:dana")
            assert proc.returncode == 0, proc.stdout + proc.stderr
        TIMES[f"pulls/s {user}"] = round(5 / (time.monotonic() - start), 2)


def test_g_a_name_both_local_and_in_the_directory_is_refused_at_deploy(site: Site) -> None:
    """erin is a directory user: as a local user too, the deploy fails with the token
    server's one line naming her while logins go on; without her the next deploy works."""
    start = time.monotonic()
    site.write(extra_local={"erin": "erin-local-password-1"})
    run = harness.run_kit(site.inventory)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "user name 'erin' is both in registry_users and the directory" in out, out
    # The refused run leaves the token server serving (htpasswd wins the name): local
    # users and the directory's others still log in.
    assert login("ci", LOCAL["ci"]).returncode == 0
    assert login("dana", DIRECTORY_USERS["dana"]).returncode == 0
    site.write()
    harness.run_kit(site.inventory).assert_ok()
    assert login("dana", DIRECTORY_USERS["dana"]).returncode == 0
    assert_pushed(push("team-a/app:after-conflict"))
    TIMES["name conflict refused"] = round(time.monotonic() - start, 1)


def test_h_the_same_on_registry_2(site: Site) -> None:
    """Registry 2.8 (registry:2) with the same directory: the kit switches the image (3 -> 2
    is a downgrade it allows); group-granted push, Docker's denial elsewhere."""
    if site.image == "registry:2":
        pytest.skip("the module already ran on registry:2 (no registry:3 in this lab)")
    site.data["registry_image"] = "registry:2"
    site.write()
    site.twice("deploy registry:2 with registry_ldap")
    assert login("dana", DIRECTORY_USERS["dana"]).returncode == 0
    assert_pushed(push("team-a/app:dana-on-2"))
    assert_denied(push("team-b/app:dana-on-2"), "dana pushing team-b/app on registry:2")


def test_h_the_web_page_on_registry_2(site: Site, browser: Any) -> None:
    """The browser's per-user list again on registry 2.8 (test_h's deploy)."""
    if site.image == "registry:2":
        pytest.skip("the module already ran on registry:2 (no registry:3 in this lab)")
    start = time.monotonic()
    assert_page_lists_what_the_groups_may_pull(site, browser)
    TIMES["web page per directory user (registry:2)"] = round(time.monotonic() - start, 1)


def test_i_rerun_changes_nothing(site: Site) -> None:
    harness.run_kit(site.inventory).assert_no_changes()
