"""A bounded client load around the kit's operations (issue 25, "every lifecycle operation
under load"): what clients see while the kit changes something.

Two clients. On a lab client host, with the docker CLI and a docker config of its own (so a
scenario's own `docker login` on that host is not disturbed): a push loop (a fresh small
image each time; a push answered 405, the read-only window of a garbage collection, is
retried a second later and counted apart), a pull loop (rmi, then pull), `docker login`
every 3 s, and a probe of /v2/ every 0.1 s (the seconds the registry does not answer). On
the control machine: a skopeo pull loop through the same name, which trusts every CA it has
seen in the kit's state (as a client the kit bridges through a CA rotation does).

Every request is one row: kind, start, end, ok|failed|refused, the error text. An operation
is a window (`with load.window("name"):`); its figures are the rows that ended inside it
(plus a few seconds after, for requests the operation slowed down): requests, failed, the
longest gap between two successful requests, the failures' window (first failed start to
last failed end) and each failure's error text. The loops stop themselves after `bound`
seconds even if the test dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness

SETTLE = 3.0  # seconds after an operation that still count as its own
KINDS = ("push", "pull", "login", "probe")

_SCRIPT = r"""
kind=$1 dir=$2 reg=$3 img=$4 bound=$5
export DOCKER_CONFIG=$dir/docker
log=$dir/$kind.log; : > "$log"
end=$(( $(date +%s) + bound )); n=0
now() { date +%s.%N; }
row() { printf '%s %s %s %s\n' "$1" "$(now)" "$2" \
        "$(printf '%s' "$3" | tr '\n' ' ' | tail -c 300)" >> "$log"; }
while [ -e "$dir/run" ] && [ "$(date +%s)" -lt "$end" ]; do
  n=$((n+1))
  case $kind in
  pull)
    docker rmi -f "$img" >/dev/null 2>&1
    t=$(now); if out=$(docker pull -q "$img" 2>&1); then row "$t" ok ""
    else row "$t" failed "$out"; fi ;;
  push)
    ref=$reg/load/push:$$-$n
    head -c 20000 /dev/urandom > "$dir/blob"
    tar -C "$dir" -c blob | docker import - "$ref" >/dev/null
    while [ -e "$dir/run" ] && [ "$(date +%s)" -lt "$end" ]; do
      t=$(now)
      if out=$(docker push "$ref" 2>&1); then row "$t" ok ""; break; fi
      case $out in *405*) row "$t" refused "$out"; sleep 1;;
                   *) row "$t" failed "$out"; break;; esac
    done
    docker rmi "$ref" >/dev/null 2>&1 ;;
  login)
    t=$(now)
    if out=$(docker login -u "$(cat "$dir/user")" --password-stdin "$reg" < "$dir/pw" 2>&1)
    then row "$t" ok ""; else row "$t" failed "$out"; fi
    sleep 3 ;;
  probe)
    t=$(now)
    c=$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 1 --max-time 2 \
        --cacert "/etc/docker/certs.d/$reg/ca.crt" "https://$reg/v2/")
    case $c in 401|200) row "$t" ok "";; *) row "$t" failed "http $c";; esac
    sleep 0.1 ;;
  esac
done
echo end >> "$log"
"""


@dataclass(frozen=True)
class Row:
    kind: str
    start: float
    end: float
    result: str  # ok, failed, refused (a push answered 405: read-only)
    error: str


def summarize(rows: list[Row], since: float, until: float) -> dict[str, Any]:
    """One kind's figures for the requests that ended in [since, until]."""
    inside = [row for row in rows if since <= row.end <= until]
    failed = [row for row in inside if row.result == "failed"]
    ends = sorted(row.end for row in rows if row.result == "ok")
    gaps = [b - a for a, b in itertools.pairwise(ends) if b >= since and a <= until]
    window = max(row.end for row in failed) - min(row.start for row in failed) if failed else 0
    return {"requests": len(inside), "failed": len(failed),
            "refused_read_only": sum(row.result == "refused" for row in inside),
            "longest_gap_seconds": round(max(gaps, default=0.0), 2),
            "failure_window_seconds": round(window, 2),
            "errors": [row.error for row in failed][:10]}


def parse(kind: str, text: str) -> list[Row]:
    rows = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[2] in ("ok", "failed", "refused"):
            rows.append(Row(kind, float(parts[0]), float(parts[1]), parts[2],
                            parts[3] if len(parts) > 3 else ""))
    return rows


class ControlPulls:
    """The second client: skopeo pulls from the control machine, back to back, through
    `domain` resolved to `ip`; it trusts every CA the kit's state has held since it began."""

    def __init__(self, image: str, *, domain: str, ip: str, address: str, user: str,
                 password: str, ca: Path = harness.CA_CERT) -> None:
        self.image, self.domain, self.ip, self.ca = image, domain, ip, ca
        self.auth = {address: (user, password)}
        self.rows: list[Row] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="rk-load-"))
        (self._tmp / "certs").mkdir()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _trust(self) -> None:
        with contextlib.suppress(OSError):
            pem = self.ca.read_bytes()
            (self._tmp / "certs" / f"ca-{hashlib.sha256(pem).hexdigest()[:12]}.crt") \
                .write_bytes(pem)

    def _loop(self) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                return
            self._trust()
            out = self._tmp / f"pull-{n}"
            start = time.time()
            try:
                proc = harness.skopeo(["copy", "--src-cert-dir", str(self._tmp / "certs"),
                                       f"docker://{self.image}", f"dir:{out}"],
                                      hosts={self.domain: self.ip}, auth=self.auth, timeout=120)
                ok, error = proc.returncode == 0, proc.stderr.strip()[-300:]
            except (subprocess.SubprocessError, OSError) as exc:  # a timeout fails it too
                ok, error = False, repr(exc)
            self.rows.append(Row("control_pull", start, time.time(), "ok" if ok else "failed",
                                 "" if ok else error.replace("\n", " ")))
            shutil.rmtree(out, ignore_errors=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=150)
        shutil.rmtree(self._tmp, ignore_errors=True)


@dataclass
class ClientLoad:
    """The loops on `client` (registry `address`, pulling `image`, logging in as `user`)
    and, when given, the control machine's pulls. Use as a context manager."""

    client: str
    address: str
    user: str
    password: str
    image: str
    control: ControlPulls | None = None
    kinds: tuple[str, ...] = KINDS
    bound: int = 900
    directory: str = "/root/rk-load"
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def start(self) -> None:
        d = self.directory
        harness.ssh(self.client, f"rm -rf {d} && mkdir -p {d}/docker && chmod 700 {d} && "
                    f"cat > {d}/load.sh && echo {self.user} > {d}/user", stdin=_SCRIPT)
        harness.ssh(self.client, f"umask 077 && cat > {d}/pw", stdin=self.password)
        if set(self.kinds) & {"push", "pull", "login"}:
            # One login first: the push and pull loops use the same docker config.
            harness.ssh(self.client, f"DOCKER_CONFIG={d}/docker docker login -u {self.user} "
                        f"--password-stdin {self.address} < {d}/pw >/dev/null")
        harness.ssh(self.client, f"touch {d}/run")
        for kind in self.kinds:
            harness.ssh(self.client, f"nohup sh {d}/load.sh {kind} {d} {self.address} "
                        f"{self.image} {self.bound} >/dev/null 2>&1 &")
        if self.control:
            self.control.start()
        time.sleep(SETTLE)  # every loop has made requests before the operation

    def stop(self) -> None:
        d = self.directory
        harness.ssh(self.client, f"rm -f {d}/run")
        if self.control:
            self.control.stop()
        deadline = time.monotonic() + 150
        logs = " ".join(f"{d}/{kind}.log" for kind in self.kinds)
        while time.monotonic() < deadline:  # each loop finishes its request in flight
            tails = harness.ssh(self.client, f"for f in {logs}; do tail -n1 $f; done").stdout
            if tails.split() == ["end"] * len(self.kinds):
                break
            time.sleep(1)
        for kind in self.kinds:
            self.rows += parse(kind, harness.ssh(self.client, f"cat {d}/{kind}.log").stdout)
        self.rows += self.control.rows if self.control else []

    def __enter__(self) -> ClientLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        """An operation: its figures are the requests that end while it runs, or within
        SETTLE seconds after."""
        since = time.time()
        yield
        time.sleep(SETTLE)
        self.windows.append((name, since, time.time()))

    def figures(self) -> dict[str, dict[str, Any]]:
        """Per window, per kind of request: summarize(); after stop()."""
        kinds = [*self.kinds, *(["control_pull"] if self.control else [])]
        return {name: {"seconds": round(until - since - SETTLE, 1),
                       **{kind: summarize([r for r in self.rows if r.kind == kind], since,
                                          until) for kind in kinds}}
                for name, since, until in self.windows}


def failed(figures: dict[str, Any], *kinds: str) -> int:
    """Failed requests of these kinds in one window's figures."""
    return sum(figures[kind]["failed"] for kind in kinds if kind in figures)


def pulls_failed(figures: dict[str, Any]) -> int:
    return failed(figures, "pull", "control_pull")
