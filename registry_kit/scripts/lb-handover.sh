#!/bin/sh
# Managed by registry-kit: planned maintenance on a registry_lb host that may hold the
# floating address. The kit runs `away` before it restarts or reconfigures haproxy or
# keepalived here, and `back` afterwards, one load balancer at a time.
# Usage: lb-handover.sh away|back VIP PORT TIMEOUT PREFERRED MARK
#   away: stop keepalived (a MASTER sends a priority-0 advert on the way out, so another LB
#         takes the address within a fraction of a second); when this LB held VIP, wait up
#         to TIMEOUT s until VIP:PORT answers from another LB. If none does, keepalived
#         starts again and this fails: nothing was changed. MARK records that keepalived
#         was stopped here.
#   back: start keepalived again if away stopped it; PREFERRED=1 (this LB has the top
#         priority): wait up to TIMEOUT s until VIP is here again.
set -u
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
    echo "usage: $0 away|back VIP PORT TIMEOUT PREFERRED MARK" >&2
    exit 2
    ;;
esac
