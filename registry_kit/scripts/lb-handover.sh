#!/bin/sh
# Managed by registry-kit: planned maintenance on a registry_lb host that may hold the
# floating address. The kit runs `away` before it restarts or reconfigures haproxy or
# keepalived here, and `back` afterwards, one load balancer at a time.
# Usage: lb-handover.sh away|back VIP PORT TIMEOUT PREFERRED MARK
#        lb-handover.sh keeps OLD NEW
#   away: stop keepalived (a MASTER sends a priority-0 advert on the way out, so another LB
#         takes the address within a fraction of a second); when this LB held VIP, wait up
#         to TIMEOUT s until VIP:PORT answers from another LB. If none does, keepalived
#         starts again and this fails: nothing was changed. MARK records that keepalived
#         was stopped here.
#   back: start keepalived again if away stopped it; PREFERRED=1 (this LB has the top
#         priority): wait up to TIMEOUT s until VIP is here again.
#   keeps: exit 0 when keepalived.conf NEW keeps OLD's VRRP instance as keepalived and the
#         other LBs know it, so keepalived's reload (SIGHUP) applies it in place: a MASTER
#         stays MASTER with the address (keepalived 2.2 matches the instance by router id,
#         interface and unicast source, and keeps its state), and the other LBs, still on
#         OLD until their turn, accept its adverts. Only these may differ: comments, the
#         priority (inventory order), the unicast peers (an LB added or removed), the
#         global router_id (the host's name), and advert_int with VRRPv3 (RFC 5798: a
#         backup follows the master's interval; VRRPv2 drops an advert whose interval is
#         not its own). Anything else (version, address, interface, router id, password,
#         unicast or its source, the kit's own template) exits 1: hand the address over.
set -u

# The lines of a keepalived.conf that must not change for a reload in place.
vrrp_identity() {
    awk '{ sub(/[#!].*/, ""); gsub(/^[ \t]+|[ \t]+$/, "") }
        $0 == "" { next }
        peers { if ($0 == "}") peers = 0; next }
        $0 == "unicast_peer {" { peers = 1; print; next }
        $1 == "priority" || $1 == "router_id" { next }
        $1 == "advert_int" { advert = $0; next }
        $0 == "version 3" { v3 = 1 }
        { print }
        END { if (!v3) print advert }' "$1"
}

if [ "${1:-}" = keeps ]; then
    [ "$#" = 3 ] && [ -f "$2" ] && [ -f "$3" ] || exit 1
    old=$(vrrp_identity "$2") && new=$(vrrp_identity "$3") || exit 1
    [ "$old" = "$new" ] || exit 1
    echo "registry-kit: the new keepalived.conf keeps the VRRP instance: reloaded in place," \
        "the address stays"
    exit 0
fi
action=$1 vip=$2 port=$3 timeout=$4 preferred=$5 mark=$6

holds() { ip -o -4 addr show to "$vip/32" | grep -q .; }
# A TCP connection to the address that this host does not hold: another LB's haproxy.
elsewhere() { ! holds && socat -u OPEN:/dev/null "TCP:$vip:$port,connect-timeout=1" 2>/dev/null; }
now() { date +%s.%N | cut -c1-14; }
before() { awk -v a="$(now)" -v b="$1" 'BEGIN { exit !(a < b) }'; }

case $action in
away)
    rm -f "$mark"
    systemctl is-active -q keepalived || exit 0  # not running: holds nothing, nothing to stop
    held=0; holds && held=1
    start=$(now); deadline=$(awk -v s="$start" -v t="$timeout" 'BEGIN { printf "%.2f", s + t }')
    echo stopped > "$mark"
    systemctl stop keepalived
    [ "$held" = 1 ] || exit 0
    while before "$deadline"; do
        if elsewhere; then
            echo "registry-kit: $vip moved to another load balancer in" \
                "$(awk -v s="$start" -v e="$(now)" 'BEGIN { printf "%.2f", e - s }') s"
            exit 0
        fi
        sleep 0.1
    done
    systemctl start keepalived && rm -f "$mark"
    echo "registry-kit: no other load balancer took over $vip within ${timeout}s;" \
        "haproxy and keepalived were not changed here" >&2
    exit 1
    ;;
back)
    [ -e "$mark" ] || exit 0
    systemctl start keepalived || exit 1
    rm -f "$mark"
    [ "$preferred" = 1 ] || exit 0
    deadline=$(awk -v s="$(now)" -v t="$timeout" 'BEGIN { printf "%.2f", s + t }')
    while before "$deadline"; do
        if holds; then echo "registry-kit: $vip is back on this load balancer"; exit 0; fi
        sleep 0.2
    done
    echo "registry-kit: keepalived runs again but $vip did not come back within" \
        "${timeout}s" >&2
    exit 1
    ;;
*)
    echo "usage: $0 away|back VIP PORT TIMEOUT PREFERRED MARK, or keeps OLD NEW" >&2
    exit 2
    ;;
esac
