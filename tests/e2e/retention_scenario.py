"""Retention (retention.py) on a running registry, shared by the modules that run it:
filesystem storage in test_registry3.py (on 3.0.0, and on 2.8.3 after its downgrade), S3
shared by two replicas in test_scaleout.py (run_s3_scenario, on 3.0.0 and 2.8.3).

30 tags across 3 repositories under PREFIX, each tag's push time set on the server
(`touch -d` on the tag's current link, which is what the kit reads as push time; on S3,
run_s3_scenario: put again in order, its LastModified), among
them a multi-arch index, a tag on one of its children, and a signature artifact whose
`subject` is the index. The report run must delete nothing; the apply run must leave
exactly the expected tags, which pull (skopeo checks every blob's digest) with the digests
they were pushed with, the kept index with both children and the artifact still pulling
after the garbage collection; the bytes the report announced must match the blobs folder's
own count (du) within 5%; a second run deletes nothing. With `scheduled`, the apply is the
server's own timer service (registry_retention_schedule), started with systemctl, its JSON
journal line, record and status checked. Checked with curl, skopeo, du, systemctl and
journalctl over SSH, never with the kit's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import harness
import oci_images

DAY = 86400
LAYER_BYTES = 1 << 20  # random, so gzip keeps it whole: GC's freed bytes are mostly layers
PARALLEL = 4  # skopeo copies at once
DATA_DIR = "/var/lib/registry-kit/data"
TIMER = "registry-kit-retention.timer"
SERVICE = "registry-kit-retention.service"
# Far away: the service is started by hand, the calendar never fires during the test.
SCHEDULE = "2099-01-01 03:00:00"
V2 = f"{DATA_DIR}/docker/registry/v2"


class RetentionSite(Protocol):
    certs: Path
    inventory: Path

    def set(self, **data: Any) -> None: ...
    def run(self, script: str = ..., *extra: str, timing: str | None = ...) -> harness.Run: ...
    def skopeo(self, args: list[str]) -> Any: ...
    def tags(self, repository: str) -> list[str]: ...


def rules(prefix: str, by_days: bool = True) -> list[dict[str, Any]]:
    """`by_days`: web keeps 10 days (push times set with touch, filesystem); else the 3 last
    pushed, which keeps the same tags (S3, where push times are only an order)."""
    web = {"keep_days": 10} if by_days else {"keep_last": 3}
    return [
        {"repository": f"{prefix}/app", "keep_last": 3, "keep_always": ["stable"]},
        {"repository": f"{prefix}/web", **web, "exclude": ["release-*"]},
        {"repository": f"{prefix}/multi", "keep_last": 2, "untagged": "delete"},
    ]


# repository -> tag -> age in days; `stable` shares a11's manifest, `c1` is a child of idx.
AGES = {
    "app": {**{f"a{n}": n for n in range(1, 12)}, "stable": 100},
    "web": {**{f"w{n}": 3 * n for n in range(1, 9)}, "release-1": 50, "release-2": 51},
    "multi": {"idx": 1, "m1": 5, "c1": 40, "sig": 60, **{f"m{n}": 48 + n for n in range(2, 6)}},
}
EXPECTED = {
    "app": ["a1", "a2", "a3", "stable"],
    "web": ["release-1", "release-2", "w1", "w2", "w3"],
    "multi": ["idx", "m1", "sig"],
}
DELETED_MANIFESTS = {"app": 7, "web": 5, "multi": 4}  # a4-a10; w4-w8; m2-m5


def _push_layout(site: RetentionSite, layout: Path, reference: str, *all_: str) -> None:
    proc = site.skopeo(["copy", *all_, "--dest-cert-dir", str(site.certs), f"oci:{layout}",
                        f"docker://{reference}"])
    assert proc.returncode == 0, proc.stderr


def push_all(site: RetentionSite, address: str, prefix: str, tmp: Path) -> dict[str, str]:
    """Push the 30 tags; return reference -> digest (and 'child:<arch>' -> child digest)."""
    digests: dict[str, str] = {}
    plain = [(repo, tag) for repo, ages in AGES.items() for tag in ages
             if (repo, tag) not in (("app", "stable"), ("multi", "c1"), ("multi", "sig"),
                                    ("multi", "idx"))]
    for repo, tag in plain:
        digests[f"{repo}:{tag}"] = oci_images.random_image(tmp / f"{repo}-{tag}", LAYER_BYTES)
    with ThreadPoolExecutor(PARALLEL) as pool:  # the push order does not matter: mtimes are set
        list(pool.map(lambda item: _push_layout(site, tmp / f"{item[0]}-{item[1]}",
                                                f"{address}/{prefix}/{item[0]}:{item[1]}"),
                      plain))
    _push_layout(site, tmp / "app-a11", f"{address}/{prefix}/app:stable")
    digests["app:stable"] = digests["app:a11"]
    index, children = oci_images.write_index(tmp / "idx", {
        "amd64": os.urandom(LAYER_BYTES),
        "arm64": os.urandom(LAYER_BYTES)})
    _push_layout(site, tmp / "idx", f"{address}/{prefix}/multi:idx", "--all")
    digests["multi:idx"] = index
    digests.update({f"child:{arch}": d for arch, d in children.items()})
    # A tag on the amd64 child: its manifest is the index's own, already pushed.
    child = _child_layout(tmp / "idx", tmp / "c1", children["amd64"])
    _push_layout(site, child, f"{address}/{prefix}/multi:c1")
    digests["multi:c1"] = children["amd64"]
    size = (tmp / "idx" / "blobs" / "sha256" / index.removeprefix("sha256:")).stat().st_size
    digests["multi:sig"] = oci_images.write_artifact(tmp / "sig", b"signature", index, size)
    _push_layout(site, tmp / "sig", f"{address}/{prefix}/multi:sig")
    return digests


def _child_layout(index_layout: Path, layout: Path, child: str) -> Path:
    """An OCI layout whose one image is `child` of `index_layout` (same blobs)."""
    shutil.copytree(index_layout, layout)
    manifest = layout / "blobs" / "sha256" / child.removeprefix("sha256:")
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": oci_images.MANIFEST, "digest": child,
         "size": manifest.stat().st_size}]}))
    return layout


def set_push_times(server: str, prefix: str) -> None:
    now = int(harness.ssh(server, "date +%s").stdout)
    commands = [f"touch -d @{now - age * DAY + 60} "
                f"{V2}/repositories/{prefix}/{repo}/_manifests/tags/{tag}/current/link"
                for repo, ages in AGES.items() for tag, age in ages.items()]
    harness.ssh(server, " && ".join(commands))


def blobs_bytes(server: str) -> int:
    return int(harness.ssh(server, f"du -sb {V2}/blobs | cut -f1").stdout)


def reported(run: harness.Run, server: str) -> re.Match[str]:
    found = re.search(rf"\[{server}\]\s+registry-kit: retention \(([^)]*)\) (\d+) tags kept, "
                      r"(\d+) deleted \((\d+) tag only\), (\d+) manifests deleted; a garbage "
                      r"collection then frees (\d+) bytes", run.stderr)
    assert found, run.describe()
    return found


def run_scenario(site: RetentionSite, *, server: str, address: str, prefix: str,
                 times: dict[str, float], scheduled: bool = False) -> None:
    """`scheduled`: the rules are applied by the server's own timer service
    (registry_retention_schedule, started by hand) instead of retention.py's apply run; the
    checks after it are the same, and retention.py's second apply run must find nothing."""
    clock = [time.monotonic()]

    def phase(name: str) -> None:  # where the scenario's time goes, in the module's timings
        now = time.monotonic()
        times[f"retention {prefix}: {name}"] = round(now - clock[0], 1)
        clock[0] = now

    with tempfile.TemporaryDirectory() as tmp:
        digests = push_all(site, address, prefix, Path(tmp))
    set_push_times(server, prefix)
    phase("build and push 30 tags")
    site.set(registry_retention_rules=rules(prefix))
    site.run("garbage_collect.py").assert_ok()  # earlier scenarios' garbage is not ours
    phase("garbage_collect.py first")
    before = {repo: site.tags(f"{prefix}/{repo}") for repo in AGES}
    assert sum(map(len, before.values())) == 30
    used = blobs_bytes(server)

    report = site.run("retention.py", timing=f"retention report ({prefix})").assert_no_changes()
    found = check_report(report, server, prefix)
    assert {repo: site.tags(f"{prefix}/{repo}") for repo in AGES} == before
    assert blobs_bytes(server) == used
    planned = int(found[6])
    phase("report run and its checks")

    if scheduled:
        freed = _apply_on_the_server(site, server, prefix, times, found)
    else:
        freed = _apply_from_the_control_machine(site, server, prefix, times, found)
    times[f"retention planned/freed bytes ({prefix})"] = planned  # type: ignore[assignment]
    assert used - blobs_bytes(server) == freed
    assert abs(freed - planned) <= 0.05 * freed, (planned, freed)
    assert freed > DELETED_MANIFESTS["app"] * LAYER_BYTES
    times[f"retention freed bytes, du of blobs ({prefix})"] = freed  # type: ignore[assignment]
    check_kept(site, address, prefix, digests)
    phase("apply run, 14 pulls")

    if scheduled:
        _second_run_on_the_server(site, server, prefix)
        phase("second scheduled run, status, deploy again")
    again = site.run("retention.py", "--data", "registry_retention_apply=True")
    again.assert_no_changes()
    assert reported(again, server).group(3, 4, 5) == ("0", "0", "0")
    phase("second apply run")


def check_report(report: harness.Run, server: str, prefix: str) -> re.Match[str]:
    """The report run's summary (printed once, by `server`) and its telling lines."""
    found = reported(report, server)
    assert found[1] == "report only: nothing deleted"
    assert report.stderr.count("registry-kit: retention (") == 1, report.stderr[-4000:]
    # Only this scenario's repositories are covered: every other tag is kept.
    assert (int(found[3]), int(found[4]), int(found[5])) == (18, 2, 16)
    assert re.search(rf"delete tag {prefix}/app:a11 \(sha256:\w+\): rule 1: not among the "
                     r"last 3 pushed, matches no keep_always \['stable'\]; tag only",
                     report.stderr), report.stderr
    assert re.search(rf"keep {prefix}/multi:sig \(sha256:\w+\): artifact of kept", report.stderr)
    assert re.search(rf"delete tag {prefix}/multi:c1 \(sha256:\w+\): .*; tag only",
                     report.stderr)
    return found


def check_kept(site: RetentionSite, address: str, prefix: str, digests: dict[str, str]) \
        -> None:
    """Exactly the expected tags are left, and they pull (skopeo checks every blob) with the
    digests they were pushed with, the kept index's two children by digest too."""
    assert {repo: site.tags(f"{prefix}/{repo}") for repo in AGES} == EXPECTED
    pulls = [(f"{address}/{prefix}/{repo}:{tag}", digests[f"{repo}:{tag}"])
             for repo, tags in EXPECTED.items() for tag in tags]
    pulls += [(f"{address}/{prefix}/multi@{digests[f'child:{arch}']}", digests[f"child:{arch}"])
              for arch in ("amd64", "arm64")]
    with ThreadPoolExecutor(PARALLEL) as pool:
        pulled = dict(zip(pulls, pool.map(lambda item: _pull(site, item[0]), pulls),
                          strict=True))
    assert all(digest == expected for (_, expected), digest in pulled.items()), pulled


def _apply_from_the_control_machine(site: RetentionSite, server: str, prefix: str,
                                    times: dict[str, float], found: re.Match[str]) -> int:
    """retention.py with registry_retention_apply=True: the bytes of blobs it freed."""
    used = blobs_bytes(server)
    start = time.monotonic()
    applied = site.run("retention.py", "--data", "registry_retention_apply=True").assert_ok()
    times[f"retention apply ({prefix})"] = round(time.monotonic() - start, 1)
    assert reported(applied, server)[1] == "deleting"
    assert applied.changed, applied.describe()
    freed = used - blobs_bytes(server)
    # The run's record (status.py's "last retention") and its journal line, with the bytes.
    record = harness.ssh(server, "cat /etc/registry-kit/last-retention").stdout.split()
    assert record[1:] == ["retention:", str(int(found[3]) + int(found[5])), "tag", "and",
                          "manifest", "folders", "deleted,", str(freed), "bytes", "of", "blobs",
                          "freed"], record
    assert f"{freed} bytes of blobs freed" in harness.ssh(
        server, "journalctl -t registry-kit --no-pager -q | grep 'retention:' | tail -n 1").stdout
    return freed


# --- S3 storage shared by replicas (test_scaleout.py) --------------------------------------

class S3RetentionSite(RetentionSite, Protocol):
    def put_manifest(self, repository: str, tag: str, manifest: Path) -> None: ...
    def bucket_objects(self) -> dict[str, int]: ...
    def link_times(self, prefix: str) -> dict[tuple[str, str], float]: ...


def push_order() -> list[tuple[str, str]]:
    """(repository, tag), oldest first: the order the tags are put again on S3."""
    return sorted(((repo, tag) for repo, ages in AGES.items() for tag in ages),
                  key=lambda item: (-AGES[item[0]][item[1]], item))


def _manifest_file(tmp: Path, digest: str) -> Path:
    """The manifest (or index) blob `digest` in one of the OCI layouts push_all wrote."""
    found = sorted(tmp.glob(f"*/blobs/sha256/{digest.removeprefix('sha256:')}"))
    assert found, digest
    return found[0]


def run_s3_scenario(site: S3RetentionSite, *, leader: str, address: str, prefix: str,
                    times: dict[str, Any]) -> dict[str, int]:
    """The scenario on S3 shared by replicas: push times are an order here (a tag's
    current/link LastModified, rewritten at each put of the tag), so the 30 tags are pushed,
    then put again oldest first and their order read back with radosgw-admin; the web rule
    keeps the last 3 instead of 10 days (keep_days on real days is proven on filesystem
    storage only). The report is printed once for the replicas (by `leader`) and deletes
    nothing; the apply leaves exactly the expected tags, which pull with their digests; the
    bytes it reports freed are what the bucket lost (s3cmd, on the Ceph host), of which
    this scenario's links and blobs are within 5% of the planned figure (the rest: garbage
    earlier steps left, which the collection frees too); only links under this scenario's
    repositories and blobs vanished; a second run deletes nothing. Returns the figures."""
    clock = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        times[f"{name}"] = round(now - clock[0], 1)
        clock[0] = now

    order = push_order()
    with tempfile.TemporaryDirectory() as tmp:
        digests = push_all(site, address, prefix, Path(tmp))
        blobs = {path.name for path in Path(tmp).glob("*/blobs/sha256/*")}  # all of ours
        phase("build and push 30 tags")
        for repo, tag in order:  # one manifest PUT each: the registry rewrites current/link
            site.put_manifest(f"{prefix}/{repo}", tag,
                              _manifest_file(Path(tmp), digests[f"{repo}:{tag}"]))
    pushed = site.link_times(prefix)
    assert sorted(pushed, key=lambda item: pushed[item]) == order, pushed
    assert len(set(pushed.values())) == len(order)
    phase("put the 30 tags again, oldest first")
    site.set(registry_retention_rules=rules(prefix, by_days=False))
    before = {repo: site.tags(f"{prefix}/{repo}") for repo in AGES}
    assert sum(map(len, before.values())) == 30
    objects = site.bucket_objects()

    report = site.run("retention.py").assert_no_changes()
    found = check_report(report, leader, prefix)
    assert {repo: site.tags(f"{prefix}/{repo}") for repo in AGES} == before
    assert site.bucket_objects() == objects
    planned = int(found[6])
    phase("report run and its checks")

    applied = site.run("retention.py", "--data", "registry_retention_apply=True").assert_ok()
    assert applied.changed, applied.describe()
    assert reported(applied, leader)[1] == "deleting"
    done = re.search(r"registry-kit: retention on shared storage \(([^;]+); collected on (\S+)\) "
                     r"freed (\d+) bytes \((\d+) -> (\d+) bytes in s3://\S+; .*\); planned "
                     r"(\d+) bytes", applied.stderr)
    assert done, applied.describe()
    assert (done[2], int(done[6])) == (leader, planned)
    removed = re.search(r"registry-kit: retention removed (\d+) tag and manifest folders",
                        applied.stderr)
    assert removed and int(removed[1]) == int(found[3]) + int(found[5]), applied.describe()
    after = site.bucket_objects()
    phase("apply run")
    lost = sum(objects.values()) - sum(after.values())  # the bucket's own count (s3cmd)
    assert not set(after) - set(objects)  # nothing new: every replica was read-only
    assert int(done[3]) == lost, (done[0], lost)
    # What vanished: links under this scenario's repositories, and blobs (the collection):
    # this scenario's, and garbage earlier steps left (the collection frees that too).
    links = f"/docker/registry/v2/repositories/{prefix}/"
    vanished = set(objects) - set(after)
    assert all(links in key or "/docker/registry/v2/blobs/" in key for key in vanished)
    mine = sum(objects[key] for key in vanished
               if links in key or key.rsplit("/", 2)[-2] in blobs)
    assert abs(mine - planned) <= 0.05 * mine, (planned, mine, lost)
    assert mine > DELETED_MANIFESTS["app"] * LAYER_BYTES
    check_kept(site, address, prefix, digests)
    phase("14 pulls")
    again = site.run("retention.py", "--data", "registry_retention_apply=True")
    again.assert_no_changes()
    assert reported(again, leader).group(3, 4, 5) == ("0", "0", "0")
    assert site.bucket_objects() == after
    phase("second apply run")
    return {"planned_bytes": planned, "freed_bytes": lost, "freed_bytes_of_the_scenario": mine,
            "folders_deleted": int(removed[1])}


def _start(server: str) -> None:
    """Start the scheduled run's service (a oneshot: systemctl returns when it is done);
    its journal shown if it failed."""
    harness.ssh(server, f"systemctl start {SERVICE} || {{ journalctl -u {SERVICE} -o cat "
                "--no-pager -n 40; exit 1; }")


def _journal_entry(server: str) -> dict[str, Any]:
    """The scheduled run's last JSON line in the journal."""
    out = harness.ssh(server, f"journalctl -u {SERVICE} -o cat --no-pager -q | grep '^{{' | "
                      "tail -n 1").stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _apply_on_the_server(site: RetentionSite, server: str, prefix: str,
                         times: dict[str, float], found: re.Match[str]) -> int:
    """registry_retention_schedule deployed (twice: the second run changes nothing), its
    service started by hand (not waiting for the calendar): the bytes of blobs it freed."""
    site.set(registry_retention_schedule=SCHEDULE)
    deployed = site.run(timing=f"deploy with the retention schedule ({prefix})").assert_ok()
    assert deployed.changed, deployed.describe()
    site.run().assert_no_changes()
    assert harness.ssh(server, f"systemctl is-active {TIMER} && systemctl is-enabled {TIMER}"
                       ).stdout.split() == ["active", "enabled"]
    used = blobs_bytes(server)
    start = time.monotonic()
    _start(server)
    times[f"retention scheduled run ({prefix})"] = round(time.monotonic() - start, 1)
    freed = used - blobs_bytes(server)
    entry = _journal_entry(server)
    assert (entry["result"], entry["bytes_freed"]) == ("ok", freed), entry
    assert (entry["tags_deleted"], entry["manifests_deleted"]) == \
        (int(found[3]), int(found[5])), entry
    assert entry["bytes_planned"] == int(found[6]) and entry["seconds"] > 0
    assert f"{prefix}/app:a4" in entry["tags"] and f"{prefix}/app:a1" not in entry["tags"]
    record = harness.ssh(server, "cat /etc/registry-kit/last-retention").stdout
    assert record == (f"{entry['time']} retention (timer): ok: {found[3]} tags and {found[5]} "
                      f"manifests deleted, {freed} bytes of blobs freed (planned {found[6]}) in "
                      f"{entry['seconds']} s\n"), record
    assert harness.ssh(server, f"systemctl show -p Result --value {SERVICE}").stdout.strip() \
        == "success"
    # Writable again: the deployed config.yml is back, nothing saved is left.
    assert harness.ssh(server, "ls /etc/registry-kit/config.yml.registry-kit-saved "
                       "2>/dev/null | wc -l").stdout.strip() == "0"
    return freed


def _second_run_on_the_server(site: RetentionSite, server: str, prefix: str) -> None:
    """A second run deletes nothing; status shows the timer and the run; a deploy changes
    nothing."""
    _start(server)
    entry = _journal_entry(server)
    assert (entry["result"], entry["tags_deleted"], entry["manifests_deleted"],
            entry["bytes_freed"]) == ("ok: nothing to delete", 0, 0, 0), entry
    # status --json prints its document on stdout (the harness' --json runs use it too).
    status = subprocess.run([harness.PYINFRA, "-y", "--data", "registry_status_json=True",
                             str(site.inventory), "status.py"], cwd=harness.ROOT,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-3000:]
    facts = json.loads(status.stdout)["servers"][server]
    assert facts["retention"]["timer"] == "active", facts
    assert facts["retention"]["last_result"] == "success", facts
    assert facts["disk"]["last_retention"] == entry["time"], facts
    site.run(timing=f"deploy after the scheduled runs ({prefix})").assert_no_changes()


def _pull(site: RetentionSite, reference: str) -> str:
    """Pull every blob (skopeo checks each against its digest); return the digest of the
    manifest as served (an index with every child: --all)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = site.skopeo(["copy", "--all", "--src-cert-dir", str(site.certs),
                            f"docker://{reference}", f"dir:{tmp}/image"])
        assert proc.returncode == 0, (reference, proc.stderr)
        return "sha256:" + hashlib.sha256((Path(tmp) / "image" / "manifest.json")
                                          .read_bytes()).hexdigest()
