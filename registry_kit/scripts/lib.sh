# Managed by registry-kit: the functions the kit's scripts share. Sourced, never run: by
# each installed script from its own folder, or sent ahead of a script on stdin.
# shellcheck shell=sh
# $url, $name, $timeout: set by the script that sources this, before it calls these.
# shellcheck disable=SC2154

# curl_opts for a check of the registry from its server: --resolve RESOLVE (its name over
# the local address) and --cacert CACERT, each left out when "-".
set_curl_opts() {
    curl_opts=""
    [ "$1" != "-" ] && curl_opts="$curl_opts --resolve $1"
    [ "$2" != "-" ] && curl_opts="$curl_opts --cacert $2"
    return 0
}

# The HTTP status of $url/v2/ ("000" when nothing answers); more curl arguments may follow.
# shellcheck disable=SC2120
v2_status() {
    # shellcheck disable=SC2086
    curl -s -o /dev/null -w '%{http_code}' --max-time 3 $curl_opts "$@" "$url/v2/"
}

# 401 (auth on) or 200 (auth off) from /v2/ means the registry serves requests.
healthy() {
    # shellcheck disable=SC2119
    code=$(v2_status)
    [ "$code" = 200 ] || [ "$code" = 401 ]
}

# Wait up to $timeout seconds until the registry is healthy.
wait_healthy() {
    deadline=$(( $(date +%s) + timeout ))
    until healthy; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# Restart container $name (it reads config.yml again), then wait_healthy.
restart_healthy() {
    docker restart "$name" >/dev/null || return 1
    wait_healthy
}
