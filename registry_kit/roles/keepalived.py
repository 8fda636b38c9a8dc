"""A floating address across the registry_lb hosts (registry_lb_vip): keepalived (VRRPv2
with a password, or VRRPv3 with adverts under a second: registry_lb_vrrp_version) from the
distro, priorities from inventory order, haproxy's health followed by a drop-in's down file
and scripts/haproxy-alive.sh; planned changes move the address first (Handover,
scripts/lb-handover.sh), except a keepalived.conf change that keeps the VRRP instance:
reloaded in place (lb-handover.sh keeps). keepalived.conf is root 0600 (the VRRP password),
built from checked words and checked with `keepalived -t`. README "No single load balancer"
tells the whole behaviour.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase

from registry_kit import package_data
from registry_kit.commands import join, q
from registry_kit.facts import HostState
from registry_kit.model import keystore, layout
from registry_kit.model.layout import KEEPALIVED_CONF
from registry_kit.model.settings import Settings, SettingsError, is_ip
from registry_kit.model.topology import Topology
from registry_kit.operations import files, packages, services
from registry_kit.operations.typed import operation
from registry_kit.render import textfile

SERVICE = "keepalived"
PACKAGES = ("keepalived",)
COMMANDS = ("keepalived",)
CHECK_SCRIPT = "haproxy-alive.sh"
CHECK = layout.script(CHECK_SCRIPT)
TOP_PRIORITY, PRIORITY_STEP, MAX_LBS = 200, 10, 20
PREEMPT_DELAY = 5  # seconds a returning LB waits (healthy) before it takes the address back
HANDOVER_SCRIPT = layout.LB_HANDOVER_SCRIPT_NAME
# Another LB takes the address within a fraction of a second of a priority-0 advert: 10 s
# is a dead or unreachable peer. The way back: rise 2 (2 s), three missed adverts or a
# lower one heard (about 3 s), preempt_delay, and room for a loaded host.
AWAY_TIMEOUT = 10
BACK_TIMEOUT = 3 * PREEMPT_DELAY + 15
RUNTIME_FILES = (layout.HAPROXY_DOWN_FILE, layout.LB_HANDOVER_MARK)


def probe_args(settings: Settings) -> dict:
    # Probed with or without a VIP: a VIP removed from the settings removes keepalived's config.
    return {"files": [KEEPALIVED_CONF, CHECK, layout.HAPROXY_DROPIN, *RUNTIME_FILES],
            "dirs": [layout.HAPROXY_DROPIN_DIR], "commands": list(COMMANDS),
            "services": [SERVICE]}


@dataclass(frozen=True)
class Handover:
    """Planned maintenance on an LB that may hold the floating address: `away_command` before
    haproxy or keepalived is restarted or reconfigured there, `back_command` after
    (scripts/lb-handover.sh). Run one LB at a time (_serial): two LBs away at once would
    leave nobody to hold the address. With `unless_kept` (the current keepalived.conf and
    its replacement) the address moves only when the new file does not keep the VRRP
    instance (lb-handover.sh keeps); otherwise keepalived's reload applies it in place, and
    `back_command` does nothing (nothing was stopped)."""

    vip: str
    port: int
    preferred: bool  # the top priority: the address comes back here when it is healthy
    unless_kept: tuple[str, str] | None = None

    def _command(self, action: str, timeout: int) -> str:
        return join([layout.script(HANDOVER_SCRIPT), action, self.vip, str(self.port),
                     str(timeout), "1" if self.preferred else "0", layout.LB_HANDOVER_MARK])

    def away_command(self) -> str:
        away = self._command("away", AWAY_TIMEOUT)
        if self.unless_kept is None:
            return away
        return f"{join([layout.script(HANDOVER_SCRIPT), 'keeps', *self.unless_kept])} || {away}"

    def back_command(self) -> str:
        return self._command("back", BACK_TIMEOUT)


def handover(settings: Settings, topology: Topology) -> Handover | None:
    """None without a floating address or with a single LB: nobody to hand it to (haproxy's
    reload keeps its connections; a keepalived change is applied in place). keepalived_config
    hands over only for a change its reload cannot apply in place."""
    if settings.registry_lb_vip is None or len(topology.lbs) < 2:
        return None
    return Handover(vip=vip_address(settings), port=settings.registry_port,
                    preferred=priority(topology, settings.host) == TOP_PRIORITY)


def teardown_handover(settings: Settings, others_stay: bool) -> Handover | None:
    """Teardown of some LBs only (pyinfra --limit): the address goes to one that stays."""
    if settings.registry_lb_vip is None or not others_stay:
        return None
    return Handover(vip=vip_address(settings), port=settings.registry_port, preferred=False)


HANDOVER_PAUSE = 1  # s a stopping haproxy keeps serving while the address moves away


def haproxy_dropin() -> bytes:
    """haproxy.service's drop-in: the file keepalived follows says at once when haproxy
    crashed or was killed (ExecStopPost runs on every end, before any restart), and before
    a stop or restart (ExecStop) haproxy serves on for HANDOVER_PAUSE while the address
    moves, so a `systemctl stop haproxy` refuses no connection on the address."""
    down = layout.HAPROXY_DOWN_FILE
    return "\n".join([
        "# Managed by registry-kit (registry_kit/roles/keepalived.py): keepalived follows",
        f"# {down} (track_file) and hands the floating address over when haproxy ends.",
        "[Service]",
        f"ExecStartPost=/bin/sh -c {q('echo 0 > ' + down)}",
        f"ExecStop=/bin/sh -c {q(f'echo 1 > {down}; sleep {HANDOVER_PAUSE}')}",
        f"ExecStopPost=/bin/sh -c {q('echo 1 > ' + down)}",
        ""]).encode()


def _fail(settings: Settings, key: str, value: object, allowed: str) -> SettingsError:
    return SettingsError(f"{settings.host}: setting {key}={value!r} is not allowed: {allowed}")


def vip_address(settings: Settings) -> str:
    assert settings.registry_lb_vip is not None
    return settings.registry_lb_vip.split("/", 1)[0]


def validate(topology: Topology) -> None:
    """The registry_lb hosts agree on the floating address and can run VRRP together."""
    lbs = topology.lbs
    if not lbs or all(lb.registry_lb_vip is None for lb in lbs):
        return
    first = lbs[0]
    for lb in lbs[1:]:
        for key in ("registry_lb_vip", "registry_lb_vrrp_router_id", "registry_lb_vrrp_unicast",
                    "registry_lb_vrrp_version", "registry_lb_vrrp_advert_seconds"):
            if getattr(lb, key) != getattr(first, key):
                raise _fail(lb, key, getattr(lb, key), f"the same value on every registry_lb "
                            f"host ({first.host} has {getattr(first, key)!r})")
        if lb.registry_lb_vrrp_password != first.registry_lb_vrrp_password:
            raise _fail(lb, "registry_lb_vrrp_password", "***", "the same password on every "
                        f"registry_lb host (it differs from {first.host}'s)")
    if len(lbs) > MAX_LBS:
        raise _fail(lbs[MAX_LBS], "registry_lb_vip", first.registry_lb_vip,
                    f"at most {MAX_LBS} registry_lb hosts (VRRP priorities from inventory order)")
    vip = vip_address(first)
    for other in (*topology.servers, *lbs, *topology.caches):
        if other.registry_internal_address == vip:
            raise _fail(first, "registry_lb_vip", first.registry_lb_vip,
                        f"an address no host has ({other.host}'s registry_internal_address)")
    if first.registry_lb_vrrp_unicast:
        for lb in lbs:
            address = lb.registry_internal_address
            if not (is_ip(address) and ipaddress.ip_address(address).version == 4):
                raise _fail(lb, "registry_internal_address", address, "an IPv4 address of "
                            "the LB (registry_lb_vrrp_unicast sends VRRP to it)")


def priority(topology: Topology, name: str) -> int:
    index = [lb.host for lb in topology.lbs].index(name)
    return TOP_PRIORITY - PRIORITY_STEP * index


def password(settings: Settings) -> str | None:
    """VRRPv2's PASS authentication; None with VRRPv3, which has none (RFC 5798)."""
    if settings.registry_lb_vrrp_version == 3:
        return None
    return keystore.vrrp_password(settings)


def advert_word(seconds: float) -> str:
    """advert_int as keepalived reads it: 1, 0.5, 0.25 (settings checked 0.01 steps)."""
    hundredths = round(seconds * 100)
    whole, rest = divmod(hundredths, 100)
    return str(whole) if not rest else f"{whole}.{rest:02d}".rstrip("0")


def derive_interface(lines: Iterable[str], vip: str) -> str | None:
    """From `ip -o -4 addr show`: the interface whose network holds the VIP (the VIP's
    own /32 or secondary entry does not count: it moves)."""
    wanted = ipaddress.ip_address(vip)
    for line in lines:
        words = line.split()
        if len(words) < 4 or words[2] != "inet":
            continue
        try:
            network = ipaddress.ip_interface(words[3])
        except ValueError:
            continue
        if network.ip != wanted and wanted in network.network and network.network.prefixlen < 32:
            return words[1].split("@", 1)[0]
    return None


class Interfaces(FactBase):
    """This host's IPv4 addresses (`ip -o -4 addr show`), read only when
    registry_lb_vip_interface is None."""

    def command(self):
        return "ip -o -4 addr show"

    def process(self, output):
        return list(output)

    @staticmethod
    def default():
        return []


def interface(settings: Settings) -> str:
    if settings.registry_lb_vip_interface is not None:
        return settings.registry_lb_vip_interface
    found = derive_interface(host.get_fact(Interfaces), vip_address(settings))
    if found is None:
        raise _fail(settings, "registry_lb_vip_interface", None, "the name of the interface to "
                    f"put {settings.registry_lb_vip} on: no interface of {settings.host} is in "
                    "a network that holds it")
    return found


def render(settings: Settings, topology: Topology, interface_name: str,
           secret: str | None) -> str:
    """keepalived.conf. Every value that is not a literal here is checked to be one
    keepalived word (textfile.word): no value can add a line, a block or a comment. No
    `secret` (VRRPv3): no authentication block."""

    def checked(value: object, field: str, secret: bool = False) -> str:
        return textfile.word(value, file=KEEPALIVED_CONF, field=field,
                             forbidden=textfile.KEEPALIVED_SYNTAX, secret=secret)

    peers: list[str] = []
    if settings.registry_lb_vrrp_unicast:
        peers = [checked(lb.registry_internal_address, f"{lb.host}: registry_internal_address")
                 for lb in topology.lbs if lb.host != settings.host]
    return package_data.ENVIRONMENT.get_template("keepalived.conf.j2").render(
        source="templates/keepalived.conf.j2", check=f"{CHECK} {layout.HAPROXY_SOCKET}",
        down_file=layout.HAPROXY_DOWN_FILE,
        preempt_delay=PREEMPT_DELAY,
        vip=checked(settings.registry_lb_vip, "registry_lb_vip"),
        router_name=checked(settings.host.replace(" ", "_"), "host name"),
        interface=checked(interface_name, "registry_lb_vip_interface"),
        router_id=checked(settings.registry_lb_vrrp_router_id, "registry_lb_vrrp_router_id"),
        priority=priority(topology, settings.host),
        version=settings.registry_lb_vrrp_version,
        advert=advert_word(settings.registry_lb_vrrp_advert_seconds),
        password=None if secret is None else checked(secret, "registry_lb_vrrp_password",
                                                     secret=True),
        peers=peers, source_ip=checked(settings.registry_internal_address,
                                       "registry_internal_address"))


@operation()
def keepalived_config(content: bytes, state: HostState, handover: Handover | None = None):
    """Replace keepalived.conf (0600) only with a config `keepalived -t` accepts, then
    reload. With a handover: when the new file keeps the VRRP instance (lb-handover.sh
    keeps: only the priority, unicast peers, host name or a VRRPv3 advert interval differ),
    keepalived's reload applies it in place and a MASTER keeps the address, so nothing in
    flight is cut; otherwise (version, address, interface, router id, password, unicast, the
    kit's template) the address moves away first (keepalived stopped) and keepalived starts
    on the new file. Its output may quote the password: never shown."""
    if handover is not None:
        staging = services.staging_path(KEEPALIVED_CONF)
        handover = dataclasses.replace(handover, unless_kept=(KEEPALIVED_CONF, staging))
    yield from services.replace_checked(KEEPALIVED_CONF, content, "0600", state,
                                        ("keepalived", "-t", "-f"), SERVICE, handover,
                                        parent=posixpath.dirname(KEEPALIVED_CONF), quiet=True)


@operation()
def remove_keepalived(state: HostState):
    """No registry_lb_vip (any more): stop keepalived (the address goes) and remove the
    kit's config and check script; the package stays."""
    active, enabled = state.services.get(SERVICE, (False, False))
    present = [path for path in (KEEPALIVED_CONF, CHECK, layout.HAPROXY_DROPIN, *RUNTIME_FILES)
               if path in state.files]
    if not present:  # keepalived without the kit's config is not the kit's to stop
        host.noop("no floating address (registry_lb_vip=None)")
        return
    if active or enabled:
        yield f"systemctl disable --now {SERVICE}"
    yield "rm -f " + " ".join(q(path) for path in present)
    if layout.HAPROXY_DROPIN in present:
        yield f"rmdir {q(layout.HAPROXY_DROPIN_DIR)} 2>/dev/null; systemctl daemon-reload"


@operation()
def reload_units():
    yield "systemctl daemon-reload"


def keepalived_deploy(settings: Settings, state: HostState, topology: Topology) -> None:
    """After loadbalancer.lb_deploy on a registry_lb host (its scripts folder and haproxy)."""
    if settings.registry_lb_vip is None:
        remove_keepalived(state, name="Remove keepalived's config (no registry_lb_vip)")
        return
    config = render(settings, topology, interface(settings), password(settings)).encode()
    packages.install_packages(PACKAGES, COMMANDS, state,
                              name="Install keepalived from the distro")
    files.managed_file(CHECK, package_data.script(CHECK_SCRIPT), "0755",
                       state.files.get(CHECK), name=f"Install {CHECK}")
    files.managed_dir(layout.HAPROXY_DROPIN_DIR, "0755", state.dirs.get(layout.HAPROXY_DROPIN_DIR),
                      name=f"Create {layout.HAPROXY_DROPIN_DIR}")
    dropin = files.managed_file(layout.HAPROXY_DROPIN, haproxy_dropin(), "0644",
                                state.files.get(layout.HAPROXY_DROPIN),
                                name="Tell keepalived when haproxy ends (haproxy's drop-in)")
    reload_units(name="Reload systemd's units (haproxy's drop-in)", _if=dropin.did_change)
    moving = handover(settings, topology)
    keepalived_config(config, state, moving, _serial=moving is not None,
                      name="Check and apply keepalived.conf (keepalived -t, then reload)")
    services.start(state, SERVICE, name=f"Enable and start {SERVICE}")
