"""Unit tests for the floating address (registry_kit.keepalived) and the status rows of
the load balancer and cache hosts (registry_kit.roles.loadbalancer and cache)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from registry_kit.model import settings as settings_mod
from registry_kit.model import topology as scaleout
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.package_data import SCRIPTS
from registry_kit.roles import cache, keepalived, loadbalancer


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RK_VRRP", "abc12345")
    monkeypatch.setenv("RK_VRRP2", "other")


def lb(name: str, ip: str, **data: Any) -> Settings:
    return settings_mod.load(name, {"registry_anonymous_acknowledged": True,
                                    "registry_internal_address": ip,
                                    "registry_lb_vip": "10.0.0.250/24",
                                    "registry_lb_vrrp_password": {"env": "RK_VRRP"}, **data},
                             server=False)


def topology(*lbs: Settings, servers: tuple[Settings, ...] = ()) -> scaleout.Topology:
    return scaleout.Topology(servers=servers, lbs=lbs, caches=())


def refusal(topo: scaleout.Topology) -> str:
    with pytest.raises(SettingsError) as error:
        keepalived.validate(topo)
    return str(error.value)


def test_priorities_follow_inventory_order() -> None:
    topo = topology(lb("lb1", "10.0.0.11"), lb("lb2", "10.0.0.12"), lb("lb3", "10.0.0.13"))
    keepalived.validate(topo)
    assert [keepalived.priority(topo, name) for name in ("lb1", "lb2", "lb3")] == [200, 190, 180]
    conf = keepalived.render(topo.lbs[2], topo, "eth0", "abc12345")
    assert "    priority 180\n" in conf and "    state BACKUP\n" in conf
    assert "unicast_peer" not in conf  # multicast by default


def test_unicast_peers_are_the_other_lbs() -> None:
    topo = topology(*(lb(n, ip, registry_lb_vrrp_unicast=True)
                      for n, ip in (("lb1", "10.0.0.11"), ("lb2", "10.0.0.12"))))
    keepalived.validate(topo)
    lines = [line.strip() for line in keepalived.render(topo.lbs[0], topo, "eth0",
                                                        "abc12345").splitlines()]
    assert "unicast_src_ip 10.0.0.11" in lines
    start = lines.index("unicast_peer {")
    assert lines[start + 1:start + 3] == ["10.0.0.12", "}"]


@pytest.mark.parametrize(("second", "expected"), [
    ({"registry_lb_vip": "10.0.0.251/24"}, "lb2: setting registry_lb_vip='10.0.0.251/24' is "
     "not allowed: the same value on every registry_lb host (lb1 has '10.0.0.250/24')"),
    ({"registry_lb_vrrp_router_id": 52}, "lb2: setting registry_lb_vrrp_router_id=52 is not "
     "allowed: the same value on every registry_lb host (lb1 has 51)"),
    ({"registry_lb_vrrp_password": {"env": "RK_VRRP2"}}, "lb2: setting "
     "registry_lb_vrrp_password='***' is not allowed: the same password on every "
     "registry_lb host (it differs from lb1's)"),
    ({"registry_lb_vrrp_advert_seconds": 2}, "lb2: setting registry_lb_vrrp_advert_seconds=2 "
     "is not allowed: the same value on every registry_lb host (lb1 has 1)"),
    ({"registry_lb_vrrp_version": 3, "registry_lb_vrrp_password": None}, "lb2: setting "
     "registry_lb_vrrp_version=3 is not allowed: the same value on every registry_lb host "
     "(lb1 has 2)"),
])
def test_lbs_must_agree(second: dict[str, Any], expected: str) -> None:
    assert refusal(topology(lb("lb1", "10.0.0.11"), lb("lb2", "10.0.0.12", **second))) == \
        expected


def test_the_vip_is_no_hosts_address_and_unicast_needs_ipv4() -> None:
    assert "an address no host has (lb2's registry_internal_address)" in refusal(
        topology(lb("lb1", "10.0.0.11"), lb("lb2", "10.0.0.250")))
    assert refusal(topology(lb("lb1", "10.0.0.11", registry_lb_vrrp_unicast=True),
                            lb("lb2", "lb2.internal", registry_lb_vrrp_unicast=True))) == (
        "lb2: setting registry_internal_address='lb2.internal' is not allowed: an IPv4 "
        "address of the LB (registry_lb_vrrp_unicast sends VRRP to it)")


def test_no_vip_no_keepalived_checks() -> None:
    plain = [settings_mod.load(n, {"registry_anonymous_acknowledged": True,
                                   "registry_internal_address": ip}, server=False)
             for n, ip in (("lb1", "10.0.0.11"), ("lb2", "10.0.0.12"))]
    keepalived.validate(topology(*plain))


@pytest.mark.parametrize(("data", "allowed"), [
    ({"registry_lb_vip": "10.0.0.250/33"}, "None or an IPv4 address"),
    ({"registry_lb_vip": "fd00::250"}, "None or an IPv4 address"),
    ({"registry_lb_vip": "127.0.0.5"}, "not loopback"),
    ({"registry_lb_vip_interface": "eth0;id"}, "a network interface name"),
    ({"registry_lb_vip_interface": "a-very-long-interface"}, "a network interface name"),
    ({"registry_lb_vrrp_router_id": 256}, "a whole number from 1 to 255"),
    ({"registry_lb_vrrp_password": "plain"}, "{'env': NAME} or {'file': PATH}"),
])
def test_bad_values_are_refused_with_one_line(data: dict[str, Any], allowed: str) -> None:
    with pytest.raises(SettingsError) as error:
        lb("lb1", "10.0.0.11", **data)
    assert allowed in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("password", ["123456789", "has space", "quo'te", "br{ace", "ex!"])
def test_vrrp_passwords_keepalived_cannot_hold_are_refused(
        monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    monkeypatch.setenv("RK_VRRP", password)
    with pytest.raises(SettingsError) as error:
        lb("lb1", "10.0.0.11")
    assert str(error.value).startswith("lb1: setting registry_lb_vrrp_password='***' is not "
                                       "allowed: 1 to 8 characters (VRRP's limit)")
    assert password not in str(error.value)


def test_interface_from_the_network_holding_the_vip() -> None:
    lines = ["1: lo    inet 127.0.0.1/8 scope host lo",
             "5: eth1@if9    inet 192.168.5.3/24 brd 192.168.5.255 scope global eth1",
             "7: eth0@if12    inet 10.0.0.11/24 brd 10.0.0.255 scope global eth0",
             "7: eth0@if12    inet 10.0.0.250/24 scope global secondary eth0"]
    assert keepalived.derive_interface(lines, "10.0.0.250") == "eth0"
    assert keepalived.derive_interface(lines, "192.168.5.250") == "eth1"
    # Only the VIP itself (a /32 that moves) matches: not a network that holds it.
    assert keepalived.derive_interface(["2: eth0 inet 10.9.0.250/32 scope global eth0"],
                                       "10.9.0.250") is None


def test_status_rows() -> None:
    settings = lb("lb1", "10.0.0.11")
    row = loadbalancer.status_row(settings, {"haproxy": ["active"], "keepalived": ["active"],
                                             "servers": ["rep1 UP", "rep2 MAINT"],
                                             "vip": ["7: eth0 inet 10.0.0.250/24 ..."]})
    assert row["floating address"] == "holds 10.0.0.250"
    assert row["replicas (haproxy's view)"] == "rep1 UP, rep2 MAINT"
    assert loadbalancer.status_row(settings, {"vip": []})["floating address"] == "backup"
    found = cache.status_row(settings, {"redis": ["active"], "memory": ["1.02M"],
                                        "keys": ["17"]})
    assert (found["memory"], found["keys"]) == ("1.02M", "17")
    # The address and the VIP reach the shell quoted.
    assert "show to 10.0.0.250/32" in loadbalancer.status_command(settings)


def test_a_handover_needs_a_floating_address_and_another_lb() -> None:
    topo = topology(lb("lb1", "10.0.0.11"), lb("lb2", "10.0.0.12"))
    assert keepalived.handover(topo.lbs[0], topo) == keepalived.Handover(
        vip="10.0.0.250", port=5000, preferred=True)
    assert keepalived.handover(topo.lbs[1], topo) == keepalived.Handover(
        vip="10.0.0.250", port=5000, preferred=False)
    alone = topology(lb("lb1", "10.0.0.11"))
    assert keepalived.handover(alone.lbs[0], alone) is None  # nobody to hand it to
    plain = lb("lb1", "10.0.0.11", registry_lb_vip=None)
    assert keepalived.handover(plain, topology(plain, lb("lb2", "10.0.0.12"))) is None
    assert keepalived.teardown_handover(topo.lbs[0], others_stay=False) is None
    assert keepalived.teardown_handover(topo.lbs[0], others_stay=True) == keepalived.Handover(
        vip="10.0.0.250", port=5000, preferred=False)


def test_keepalived_follows_haproxys_end_through_a_file() -> None:
    """haproxy's unit writes the file keepalived follows (track_file, weight 0: 1 is FAULT)."""
    topo = topology(lb("lb1", "10.0.0.11"), lb("lb2", "10.0.0.12"))
    conf = keepalived.render(topo.lbs[0], topo, "eth0", "abc12345")
    block = conf[conf.index("track_file registry_kit_haproxy_down {"):]
    assert block.split("}")[0].split("\n")[1:4] == [
        '    file "/run/registry-kit-haproxy-down"', "    weight 0", "    init_file 0"]
    assert "    track_file {\n        registry_kit_haproxy_down weight 0\n    }" in conf
    assert keepalived.haproxy_dropin().decode().splitlines()[2:] == [
        "[Service]",
        "ExecStartPost=/bin/sh -c 'echo 0 > /run/registry-kit-haproxy-down'",
        "ExecStop=/bin/sh -c 'echo 1 > /run/registry-kit-haproxy-down; sleep 1'",
        "ExecStopPost=/bin/sh -c 'echo 1 > /run/registry-kit-haproxy-down'"]


def v3(name: str, ip: str, **data: Any) -> Settings:
    return lb(name, ip, registry_lb_vrrp_version=3, registry_lb_vrrp_password=None, **data)


def test_vrrp3_has_fast_adverts_and_no_authentication() -> None:
    """VRRPv3 (RFC 5798): `version 3`, advert_int in 0.01 s steps, no authentication block
    (keepalived refuses one with v3); the default stays VRRPv2, 1 s, with the password."""
    topo = topology(v3("lb1", "10.0.0.11", registry_lb_vrrp_advert_seconds=0.5),
                    v3("lb2", "10.0.0.12", registry_lb_vrrp_advert_seconds=0.5))
    keepalived.validate(topo)
    assert keepalived.password(topo.lbs[0]) is None
    conf = keepalived.render(topo.lbs[0], topo, "eth0", keepalived.password(topo.lbs[0]))
    lines = [line.strip() for line in conf.splitlines()]
    assert lines[lines.index("priority 200") + 1:][:4] == [
        "# VRRPv3 (RFC 5798): adverts in 0.01 s steps, no authentication (a trusted segment).",
        "version 3", "advert_int 0.5", "preempt_delay 5"]
    assert "authentication {" not in lines and "auth_pass" not in conf
    default = keepalived.render(lb("lb1", "10.0.0.11"), topo, "eth0", "abc12345")
    assert "    advert_int 1\n" in default and "version" not in default
    assert "        auth_pass abc12345\n" in default


@pytest.mark.parametrize(("seconds", "word"), [
    (1, "1"), (1.0, "1"), (255, "255"), (0.5, "0.5"), (0.25, "0.25"), (0.01, "0.01"),
    (0.1, "0.1"), (1.5, "1.5"), (40.95, "40.95"), (0.3, "0.3")])
def test_advert_interval_as_keepalived_reads_it(seconds: float, word: str) -> None:
    settings = v3("lb1", "10.0.0.11", registry_lb_vrrp_advert_seconds=seconds) \
        if seconds <= 40.95 and seconds != int(seconds) else \
        lb("lb1", "10.0.0.11", registry_lb_vrrp_advert_seconds=seconds)
    assert keepalived.advert_word(settings.registry_lb_vrrp_advert_seconds) == word


@pytest.mark.parametrize(("data", "line"), [
    ({"registry_lb_vrrp_advert_seconds": 0.5}, "registry_lb_vrrp_advert_seconds=0.5 is not "
     "allowed: a whole number of seconds (1 to 255) with registry_lb_vrrp_version=2; 0.01 to "
     "40.95 needs version 3"),
    ({"registry_lb_vrrp_version": 3, "registry_lb_vrrp_password": None,
      "registry_lb_vrrp_advert_seconds": 41}, "registry_lb_vrrp_advert_seconds=41 is not "
     "allowed: 0.01 to 40.95 seconds with registry_lb_vrrp_version=3"),
    ({"registry_lb_vrrp_version": 3}, "registry_lb_vrrp_password='***' is not allowed: None "
     "with registry_lb_vrrp_version=3 (VRRPv3 has no authentication)"),
    ({"registry_lb_vrrp_version": 4}, "registry_lb_vrrp_version=4 is not allowed: 2 (VRRPv2 "
     "with the password) or 3 (VRRPv3, no authentication)"),
    ({"registry_lb_vrrp_version": True}, "registry_lb_vrrp_version=True is not allowed"),
    ({"registry_lb_vrrp_version": "3"}, "registry_lb_vrrp_version='3' is not allowed"),
    ({"registry_lb_vrrp_advert_seconds": 0.005}, "registry_lb_vrrp_advert_seconds=0.005 is "
     "not allowed: a number of seconds from 0.01 to 255 in steps of 0.01"),
    ({"registry_lb_vrrp_advert_seconds": 0.333}, "in steps of 0.01"),
    ({"registry_lb_vrrp_advert_seconds": 256}, "in steps of 0.01"),
    ({"registry_lb_vrrp_advert_seconds": float("nan")}, "in steps of 0.01"),
    ({"registry_lb_vrrp_advert_seconds": "0.5"}, "in steps of 0.01"),
    ({"registry_lb_vrrp_advert_seconds": False}, "in steps of 0.01"),
])
def test_vrrp_version_and_interval_refused_with_one_line(data: dict[str, Any],
                                                         line: str) -> None:
    with pytest.raises(SettingsError) as error:
        lb("lb1", "10.0.0.11", **data)
    assert str(error.value).startswith("lb1: setting registry_lb_vrrp_")
    assert line in str(error.value) and "\n" not in str(error.value)
    assert "abc12345" not in str(error.value)


# A keepalived.conf change: keepalived's reload in place, or the address handed over first.

def _conf(settings: Settings, topo: scaleout.Topology, interface: str = "eth0") -> str:
    return keepalived.render(settings, topo, interface, keepalived.password(settings))


def _pair(**data: Any) -> scaleout.Topology:
    return topology(lb("lb1", "10.0.0.11", **data), lb("lb2", "10.0.0.12", **data))


def _keeps(tmp_path: Path, old: str | None, new: str) -> bool:
    """lb-handover.sh keeps OLD NEW, run by sh here: True means a reload in place."""
    old_path, new_path = tmp_path / "keepalived.conf", tmp_path / "keepalived.conf.new"
    if old is not None:
        old_path.write_text(old)
    new_path.write_text(new)
    done = subprocess.run(["sh", str(SCRIPTS / keepalived.HANDOVER_SCRIPT), "keeps",
                           str(old_path), str(new_path)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode in (0, 1) and not done.stderr, done
    assert (done.stdout == "registry-kit: the new keepalived.conf keeps the VRRP instance: "
            "reloaded in place, the address stays\n") == (done.returncode == 0), done
    return done.returncode == 0


THREE = ("lb1", "10.0.0.11"), ("lb2", "10.0.0.12"), ("lb3", "10.0.0.13")


def _in_place() -> list[tuple[str, str, str]]:
    """(what changed, old keepalived.conf, new) where keepalived's reload keeps MASTER and
    the address, and the LBs still on the old file accept the new one's adverts."""
    two = _pair()
    swapped = topology(two.lbs[1], two.lbs[0])
    uni2 = topology(*(lb(n, ip, registry_lb_vrrp_unicast=True) for n, ip in THREE[:2]))
    uni3 = topology(*(lb(n, ip, registry_lb_vrrp_unicast=True) for n, ip in THREE))
    fast = topology(*(v3(n, ip, registry_lb_vrrp_advert_seconds=0.5) for n, ip in THREE[:2]))
    faster = topology(*(v3(n, ip, registry_lb_vrrp_advert_seconds=0.4) for n, ip in THREE[:2]))
    renamed = lb("lb1-new", "10.0.0.11")
    return [
        ("nothing (rewritten with other permissions)", _conf(two.lbs[0], two),
         _conf(two.lbs[0], two)),
        ("priority (inventory order)", _conf(two.lbs[0], two), _conf(two.lbs[0], swapped)),
        ("an LB added: a unicast peer more", _conf(uni2.lbs[0], uni2),
         _conf(uni3.lbs[0], uni3)),
        ("the host's name (global router_id)", _conf(two.lbs[0], two),
         _conf(renamed, topology(renamed, two.lbs[1]))),
        ("VRRPv3 advert interval", _conf(fast.lbs[0], fast), _conf(faster.lbs[0], faster)),
    ]


def _handed_over() -> list[tuple[str, str | None, str]]:
    """(what changed, old, new) that needs the address moved first: keepalived would take
    the instance for a new one (router id, interface, unicast or its source), or the other
    LBs, still on the old file, would drop its adverts and take the address too (version,
    password, a VRRPv2 advert interval, the address), or the kit's template changed."""
    two = _pair()
    old = _conf(two.lbs[0], two)

    def changed(**data: Any) -> str:
        other = _pair(**data)
        return _conf(other.lbs[0], other)

    fast = topology(*(v3(n, ip) for n, ip in THREE[:2]))
    uni = topology(*(lb(n, ip, registry_lb_vrrp_unicast=True) for n, ip in THREE[:2]))
    moved = lb("lb1", "10.0.0.21", registry_lb_vrrp_unicast=True)
    return [
        ("no keepalived.conf yet", None, old),
        ("VRRP version 2 -> 3", old, _conf(fast.lbs[0], fast)),
        ("VRRP version 3 -> 2", _conf(fast.lbs[0], fast), old),
        ("the address", old, changed(registry_lb_vip="10.0.0.251/24")),
        ("the router id", old, changed(registry_lb_vrrp_router_id=52)),
        ("the password", old, changed(registry_lb_vrrp_password={"env": "RK_VRRP2"})),
        ("VRRPv2 advert interval", old, changed(registry_lb_vrrp_advert_seconds=2)),
        ("the interface", old, _conf(two.lbs[0], two, interface="eth1")),
        ("multicast -> unicast", old, _conf(uni.lbs[0], uni)),
        ("the unicast source", _conf(uni.lbs[0], uni),
         _conf(moved, topology(moved, uni.lbs[1]))),
        ("the kit's template (preempt_delay)", old,
         old.replace("preempt_delay 5", "preempt_delay 6")),
        ("the kit's template (a tracked script more)", old,
         old.replace("        registry_kit_haproxy\n", "        registry_kit_haproxy\n"
                     "        registry_kit_other\n")),
    ]


# Built inside each test: the settings read the password from the environment (_env).
IN_PLACE = ["nothing (rewritten with other permissions)", "priority (inventory order)",
            "an LB added: a unicast peer more", "the host's name (global router_id)",
            "VRRPv3 advert interval"]
HANDED_OVER = ["no keepalived.conf yet", "VRRP version 2 -> 3", "VRRP version 3 -> 2",
               "the address", "the router id", "the password", "VRRPv2 advert interval",
               "the interface", "multicast -> unicast", "the unicast source",
               "the kit's template (preempt_delay)",
               "the kit's template (a tracked script more)"]


@pytest.mark.parametrize("what", IN_PLACE)
def test_a_change_that_keeps_the_vrrp_instance_reloads_in_place(
        tmp_path: Path, what: str) -> None:
    cases = {name: (old, new) for name, old, new in _in_place()}
    assert list(cases) == IN_PLACE
    old, new = cases[what]
    assert (old == new) == (what == IN_PLACE[0]), what  # each case changes the file
    assert _keeps(tmp_path, old, new), what


@pytest.mark.parametrize("what", HANDED_OVER)
def test_a_change_that_breaks_the_vrrp_instance_hands_the_address_over(
        tmp_path: Path, what: str) -> None:
    cases = {name: (old, new) for name, old, new in _handed_over()}
    assert list(cases) == HANDED_OVER
    old, new = cases[what]
    assert not _keeps(tmp_path, old, new), what
    if old is not None:  # the other way round too
        assert not _keeps(tmp_path, new, old), what
