#!/usr/bin/python3
# Managed by registry-kit: the audit log's receiver (registry_audit_log). The registry sends
# its notifications here (config.yml `notifications`, registry 2.8 and 3.0 alike): POST
# (to --path) with an envelope of events. Each manifest push and each delete becomes one JSON
# line, on stdout (the journal of this unit: `journalctl -u registry-kit-audit -o cat`) and
# appended to the audit file (logrotate rotates it: the file is opened for each line, so a
# rotated file is never written to again). Blob pushes, pulls and mounts are not recorded.
#
# It listens on the Docker bridge's address of this host (--interface, docker0), which the
# registry container reaches as the host's gateway: the host's loopback is not reachable
# from a container. It answers only peers inside that bridge's network (the host's
# containers), never the host's other addresses. Events carry no secret: the registry's
# request headers are not part of them, and this server logs nothing of the request but
# the events' fields.
#
# Debian's python3 only (standard library).
from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20  # an envelope holds a few events: a bigger body is refused
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
# Media types of manifests and indexes end so: blobs are application/octet-stream (or a
# layer type), and the registry config already leaves them out (ignoredmediatypes).
MANIFEST_HINTS = ("manifest", "index")


def interface_network(name: str) -> ipaddress.IPv4Interface:
    """The IPv4 address and network of interface `name` (docker0: 172.17.0.1/16)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        packed = struct.pack("256s", name.encode()[:15])
        address = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), SIOCGIFADDR, packed)[20:24])
        mask = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), SIOCGIFNETMASK, packed)[20:24])
    return ipaddress.IPv4Interface(f"{address}/{mask}")


def bare_address(text: str) -> str:
    """A request's address without its port ("10.0.0.5:41234" -> "10.0.0.5")."""
    text = text.strip()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return text


def record(event: dict[str, Any]) -> dict[str, Any] | None:
    """One audit entry for a notification event, None for an event not audited."""
    action = event.get("action")
    target = event.get("target") or {}
    media = str(target.get("mediaType") or "")
    if action == "push":
        if not target.get("tag") and not any(hint in media for hint in MANIFEST_HINTS):
            return None  # a blob
    elif action != "delete":
        return None
    request = event.get("request") or {}
    return {"time": event.get("timestamp"), "action": action,
            "user": (event.get("actor") or {}).get("name") or None,
            "address": bare_address(str(request.get("addr") or "")) or None,
            "repository": target.get("repository"), "reference": target.get("tag") or None,
            "digest": target.get("digest") or None, "source": "registry"}


def line(entry: dict[str, Any]) -> str:
    """One JSON line: ASCII only, so no value can end a line or send terminal escapes."""
    return json.dumps(entry, ensure_ascii=True, sort_keys=False)


class Handler(BaseHTTPRequestHandler):
    server_version = "registry-kit-audit"
    sys_version = ""
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    log_file: str
    events_path: str
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the journal holds audit lines only

    def answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def allowed(self) -> bool:
        try:
            peer = ipaddress.ip_address(self.client_address[0])
        except ValueError:
            return False
        return peer in self.network and peer != self.gateway

    def do_POST(self) -> None:
        if not self.allowed():
            self.answer(403)
            return
        if self.path != self.events_path:
            self.answer(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self.answer(413 if length else 400)
            return
        try:
            events = json.loads(self.rfile.read(length)).get("events") or []
        except (ValueError, AttributeError):
            self.answer(400)
            return
        lines = [line(entry) for entry in map(record, events) if entry is not None]
        if lines:
            text = "".join(f"{one}\n" for one in lines)
            with self.lock:
                with open(self.log_file, "a", encoding="ascii") as handle:
                    handle.write(text)
                sys.stdout.write(text)
                sys.stdout.flush()
        self.answer(200)  # the registry retries anything else, forever


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interface", required=True, help="listen on this interface's IPv4")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("--path", required=True, help="the URL path events are posted to")
    args = parser.parse_args()
    bridge = interface_network(args.interface)
    Handler.network, Handler.gateway = bridge.network, bridge.ip
    Handler.log_file, Handler.events_path = args.log_file, args.path
    server = ThreadingHTTPServer((str(bridge.ip), args.port), Handler)
    print(f"registry-kit-audit: listening on {bridge.ip}:{args.port} for {bridge.network}",
          file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
