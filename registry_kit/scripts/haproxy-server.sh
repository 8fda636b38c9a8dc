#!/bin/sh
# Managed by registry-kit: take a replica out of haproxy's rotation before it is replaced,
# and put it back afterwards, through haproxy's admin socket.
# Usage: haproxy-server.sh drain|ready BACKEND SERVER TIMEOUT SOCKET
#   drain: no new connections, wait (up to TIMEOUT s) for its connections to end, then
#          maintenance. ready: back in rotation, wait (up to TIMEOUT s) until its health
#          check says UP; exit 1 if it does not. SOCKET: haproxy's admin socket.
set -u
action=$1 backend=$2 server=$3 timeout=$4 sock=$5

cli() { printf '%s\n' "$1" | socat -t 5 stdio "unix-connect:$sock"; }
# One column of this server's line in `show stat` (5 = current sessions, 18 = status).
field() {
    cli "show stat" | awk -F, -v b="$backend" -v s="$server" -v f="$1" \
        '$1 == b && $2 == s { print $f }'
}

if [ ! -S "$sock" ]; then
    echo "registry-kit: haproxy is not running here: $server not ${action}ed"
    exit 0
fi
if [ -z "$(field 18)" ]; then
    echo "registry-kit: $server is not in haproxy backend $backend yet: not ${action}ed"
    exit 0
fi
deadline=$(( $(date +%s) + timeout ))
case $action in
drain)
    cli "set server $backend/$server state drain" >/dev/null
    while [ "$(field 5)" != 0 ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done
    left=$(field 5)
    cli "set server $backend/$server state maint" >/dev/null
    echo "registry-kit: $server taken out of haproxy backend $backend ($left connections were open)"
    ;;
ready)
    cli "set server $backend/$server state ready" >/dev/null
    while [ "$(field 18)" != UP ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done
    status=$(field 18)
    if [ "$status" != UP ]; then
        echo "registry-kit: $server is $status in haproxy backend $backend after ${timeout}s" >&2
        exit 1
    fi
    echo "registry-kit: $server is back in haproxy backend $backend (UP)"
    ;;
*)
    echo "usage: $0 drain|ready BACKEND SERVER TIMEOUT SOCKET" >&2
    exit 2
    ;;
esac
