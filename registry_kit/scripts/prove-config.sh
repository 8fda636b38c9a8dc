#!/bin/sh
# Managed by registry-kit: prove the registry's new files on a candidate container before
# they replace the running registry's. The candidate runs the same image on the staged
# folder and the same data (read-only) on a loopback port the engine picks; it is removed,
# with the staged folder, whatever happens. On a refusal nothing else was touched: print
# one line quoting the registry's own error and fail.
# Usage: prove-config.sh CANDIDATE STAGED BASE-URL NAME CACERT TIMEOUT PORT -- DOCKER-RUN-ARGS...
#   BASE-URL: scheme://NAME (no port); PORT: the registry's port inside the container.
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
candidate=$1 staged=$2 base=$3 domain=$4 cacert=$5 timeout=$6 port=$7
shift 7
[ "${1:-}" = "--" ] && shift

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    docker rm -f "$candidate" >/dev/null 2>&1
    rm -rf "$staged"
}
# A run killed half way leaves nothing behind (and the next proof removes what a hard
# kill left).
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# The registry's own words: the panic or configuration error line, else its last error,
# else its last line; colours and control characters removed, one line, bounded.
registry_error() {
    logs=$(docker logs "$candidate" 2>&1 | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' \
        | tr -d '\000-\010\013-\037\177')
    line=$(printf '%s\n' "$logs" | grep -E '^panic: |configuration error|level=(fatal|panic)' \
        | tail -n 1)
    [ -n "$line" ] || line=$(printf '%s\n' "$logs" | grep -E 'level=error' | tail -n 1)
    [ -n "$line" ] || line=$(printf '%s\n' "$logs" | grep -v '^[[:space:]]*$' | tail -n 1)
    printf '%s' "${line:-(no log output)}" | cut -c 1-400
}

refused() {
    echo "registry-kit: the registry refused the new files ($1); the running registry and its files were kept: $(registry_error)" >&2
    exit 1
}

docker rm -f "$candidate" >/dev/null 2>&1
docker run "$@" >/dev/null 2>&1 || refused "the candidate container did not start"
published=$(docker port "$candidate" "$port/tcp" 2>/dev/null | head -n 1)
url="$base:${published##*:}"
set_curl_opts "$domain:${published##*:}:127.0.0.1" "$cacert"

deadline=$(( $(date +%s) + timeout ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    # No restart policy: a registry that refuses its config exits, and stays exited.
    [ "$(docker inspect -f '{{.State.Running}}' "$candidate" 2>/dev/null)" = true ] \
        || refused "it exited at start"
    if healthy; then
        echo "registry-kit: the new files were proven on $candidate ($url/v2/ answered)"
        exit 0
    fi
    sleep 0.5
done
refused "$url/v2/ did not answer within ${timeout}s"
