#!/usr/bin/python3
# Managed by registry-kit: the kit's own facts as Prometheus gauges (registry_metrics),
# answered on GET --path at --listen (the loopback: the metrics filter, a haproxy of the kit's
# own, passes it on from registry_metrics_allow only). Each answer is, read at that moment:
# every *.prom file of --dir (written as root by whoever changes a fact: the deploy, the disk
# guard, the garbage collection; none holds a secret) and, with --data-dir, the bytes of the
# registry's data filesystem as df counts them (statvfs), and with --token-counters the token
# server's counters. The token server is the kit's one process that answers the Internet as
# a user of its own: its file is not passed on as it is, only the numbers of the counters
# named here are read from it and written out anew (token_counters), so whatever it holds
# cannot add or change another fact. With --address (load balancers): whether this host
# holds that address now (`ip -j addr show`, read at each scrape: a fact written by
# keepalived's notify scripts would go stale when keepalived dies). The output of `ip` is
# parsed as JSON and compared, never run or written anywhere.
#
# Debian's python3 only (standard library). Runs as a dynamic user, read-only.
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# registry-token-server.py's COUNTERS (tests/unit/test_metrics.py checks they are the same).
TOKEN_COUNTERS = {
    "registry_kit_token_issued_total": "tokens issued since the token server started",
    "registry_kit_token_denied_total": "token requests that were refused some action they "
                                       "asked for (the audit log's denied lines)",
    "registry_kit_token_failed_logins_total": "logins refused for a wrong password or an "
                                              "unknown user",
    "registry_kit_token_rate_limited_total": "logins refused with 429 for too many failed "
                                             "logins (LoginLimits)",
}
SAMPLE = re.compile(r"([a-z_]+) ([0-9]{1,19})")


def filesystem(data_dir: str) -> str:
    """The data filesystem's size, used and available bytes (df's Size, Used, Avail: blocks
    reserved for root are neither used nor available)."""
    try:
        fs = os.statvfs(data_dir)
    except OSError as error:
        print(f"registry-kit-facts: {data_dir}: {error.strerror}", file=sys.stderr)
        return ""
    values = {"size": fs.f_blocks * fs.f_frsize,
              "used": (fs.f_blocks - fs.f_bfree) * fs.f_frsize,
              "avail": fs.f_bavail * fs.f_frsize}
    lines = []
    for kind, value in values.items():
        name = f"registry_kit_data_filesystem_{kind}_bytes"
        lines += [f"# HELP {name} the registry's data filesystem: {kind} bytes (df)",
                  f"# TYPE {name} gauge", f"{name} {value}"]
    return "".join(f"{line}\n" for line in lines)


def token_counters(path: Path) -> str:
    """The token server's counters: from its file, only a line `NAME NUMBER` of a name in
    TOKEN_COUNTERS counts (the first for each name); the text is this server's own. No
    file (the token server is down or not there): nothing."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:65536]
    except OSError:
        return ""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = SAMPLE.fullmatch(line)
        if match and match[1] in TOKEN_COUNTERS:
            values.setdefault(match[1], str(int(match[2])))
    lines = []
    for name, help_text in TOKEN_COUNTERS.items():
        if name in values:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter",
                      f"{name} {values[name]}"]
    return "".join(f"{line}\n" for line in lines)


HOLDS = "registry_kit_lb_holds_address"
IP = ("ip", "-j", "addr", "show")
IP_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def holds(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool | None:
    """Whether an interface of this host has `address` now; None when `ip` does not say."""
    try:
        out = subprocess.run(IP, capture_output=True, timeout=5, env=IP_ENV, check=True).stdout
        links = json.loads(out)
        local = [info.get("local") for link in links for info in link.get("addr_info", [])]
    except (OSError, subprocess.SubprocessError, ValueError, AttributeError, TypeError) as error:
        print(f"registry-kit-facts: {' '.join(IP)}: {error}", file=sys.stderr)
        return None
    for value in local:
        try:
            if isinstance(value, str) and ipaddress.ip_address(value) == address:
                return True
        except ValueError:
            continue
    return False


def address_fact(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    held = holds(address)
    if held is None:
        return None
    return (f"# HELP {HOLDS} 1 while this load balancer holds the registry's floating "
            f"address\n# TYPE {HOLDS} gauge\n{HOLDS}{{address=\"{address}\"}} {int(held)}\n")


def facts(folder: Path | None, data_dir: str | None, counters: Path | None = None) -> bytes:
    parts = []
    for path in sorted(folder.glob("*.prom")) if folder else []:
        try:
            text = path.read_text()
        except OSError:  # replaced or removed meanwhile: it is there at the next scrape
            continue
        parts.append(text if text.endswith("\n") or not text else text + "\n")
    if data_dir:
        parts.append(filesystem(data_dir))
    if counters is not None:
        parts.append(token_counters(counters))
    return "".join(parts).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT (the loopback)")
    parser.add_argument("--dir", type=Path, help="the facts files' folder (servers)")
    parser.add_argument("--path", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--token-counters", type=Path, help="the token server's counters")
    parser.add_argument("--address", type=ipaddress.ip_address,
                        help="the floating address (load balancers)")
    args = parser.parse_args()
    address, _, port = args.listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that sends nothing is dropped

        def do_GET(self) -> None:
            if self.path != args.path:
                self.send_error(404)
                return
            body = facts(args.dir, args.data_dir, args.token_counters)
            if args.address is not None:
                held = address_fact(args.address)
                if held is None:  # unknown is not "not held": the scrape fails (up == 0)
                    self.send_error(503, "ip -j addr show failed (see the journal)")
                    return
                body += held.encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *values: object) -> None:
            pass  # a scrape every few seconds: nothing to the journal

    HTTPServer((address, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
