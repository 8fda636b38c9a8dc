#!/bin/sh
# Managed by registry-kit (registry_disk_readonly_percent): run by a systemd timer every few
# seconds. When the registry's data filesystem is HIGH percent full or more, restart the
# registry with storage.maintenance.readonly on (pulls served, pushes get the registry's 405)
# and leave FLAG (the UTC time of the switch); below LOW percent, turn it off again and remove
# FLAG. Between the marks nothing changes. A registry made read-only by anything else (no
# FLAG) is left as it is. Each switch is one journal line (priority warning or notice); a
# check that changes nothing logs nothing.
# With FACTS (registry_metrics: its folder exists), each check leaves the guard's state there
# for Prometheus, rewritten only when it changes: read-only 1 while FLAG holds the registry.
# Usage: registry-disk-guard.sh NAME CONFIG_DIR DATA_DIR HIGH LOW URL RESOLVE CACERT TIMEOUT
#                               LOCK FLAG [FACTS]
#        registry-disk-guard.sh --percent DATA_DIR   (how full, as the guard counts it)
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# df's own Use%: used / (used + available), rounded up; blocks reserved for root count as
# full, since the registry cannot use them either.
percent() {
    df -P "$1" | awk 'NR == 2 { t = $3 + $4; if (t == 0) print 0;
                                else print int(($3 * 100 + t - 1) / t) }'
}
if [ "${1:-}" = "--percent" ]; then
    percent "$2"
    exit
fi

name=$1 config_dir=$2 data=$3 high=$4 low=$5 url=$6 resolve=$7 cacert=$8 timeout=$9
shift 9
lock=$1 flag=$2 facts=${3:-}
config=$config_dir/config.yml
# registry-gc.sh's copy of config.yml while it collects: it puts that copy back itself.
saved=$config_dir/config.yml.registry-kit-saved

[ -e "$saved" ] && exit 0
# A deploy replacing the container holds this lock; check again at the next tick.
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
flock -n 9 || exit 0

export_state() {
    [ -n "$facts" ] && [ -d "$(dirname "$facts")" ] || return 0
    metric=registry_kit_disk_guard_read_only
    state="# HELP $metric 1 while the disk guard holds the registry read-only
# TYPE $metric gauge"
    if [ -e "$flag" ]; then
        state="$state
$metric 1
# HELP ${metric}_since_timestamp_seconds when the guard made it read-only
# TYPE ${metric}_since_timestamp_seconds gauge
${metric}_since_timestamp_seconds $(stat -c %Y "$flag")"
    else
        state="$state
$metric 0"
    fi
    [ "$(cat "$facts" 2>/dev/null)" = "$state" ] && return 0
    printf '%s\n' "$state" >"$facts.new" && chmod 0644 "$facts.new" && mv -f "$facts.new" "$facts"
}
# Whichever way a check ends, the state it leaves is exported.
trap export_state EXIT

used=$(percent "$data") || exit 1
[ -n "$used" ] || exit 1
mine=false
[ -e "$flag" ] && mine=true
if [ "$used" -ge "$high" ]; then
    want=true
elif [ "$used" -lt "$low" ]; then
    want=false
else
    want=$mine  # between the marks: as it is (read-only again after a deploy's race)
fi

# registry_kit/render/config.py writes "readonly:" with "enabled: ..." on the next line and
# every value on one line (registry-gc.sh edits the same line).
now=$(grep -A1 '^    readonly:$' "$config" | sed -n 's/^      enabled: \(true\|false\)$/\1/p')
[ -n "$now" ] || { echo "<3>registry-kit: $config has no readonly line the kit wrote"; exit 1; }
# Read-only without the flag is someone else's (a hand edit, an interrupted collection):
# the guard neither takes it over nor ends it.
[ "$mine" = false ] && [ "$now" = true ] && exit 0
if [ "$want" = true ] && [ "$mine" = false ]; then
    date -u +%Y-%m-%dT%H:%M:%SZ >"$flag.new" && mv -f "$flag.new" "$flag"
elif [ "$want" = false ]; then
    rm -f "$flag"
fi
[ "$now" = "$want" ] && exit 0

install -m 0600 /dev/null "$config.registry-kit-guard"  # it holds secrets
sed "/^    readonly:\$/{n;s/^      enabled: $now\$/      enabled: $want/;}" "$config" \
    >"$config.registry-kit-guard"
mv -f "$config.registry-kit-guard" "$config"
if [ "$want" = true ]; then
    switched="<4>registry-kit: $data is $used% full (mark $high%): $name made read-only"
    switched="$switched (pulls served, pushes refused with 405) until it is below $low%"
else
    switched="<5>registry-kit: $data is $used% full (below $low%): $name made writable again"
fi
# A stopped registry stays stopped: it reads the new config.yml when it starts.
if [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ]; then
    set_curl_opts "$resolve" "$cacert"
    if ! restart_healthy; then
        echo "<3>registry-kit: $name does not answer $url/v2/ after the switch"
        exit 1
    fi
fi
# Logged once the registry answers in its new mode, so the line means it is in effect.
echo "$switched"
