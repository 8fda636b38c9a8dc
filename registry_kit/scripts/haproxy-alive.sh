#!/bin/sh
# registry-kit: keepalived's health check of haproxy on a registry_lb host (exit 0: healthy).
# haproxy answers on its admin socket only while it runs and serves: a stopped, crashed or
# hung haproxy fails this, and keepalived gives the floating address to another LB.
# Usage: haproxy-alive.sh SOCKET
echo 'show info' | socat -t 2 stdio "$1" 2>/dev/null | grep -q '^Pid: '
