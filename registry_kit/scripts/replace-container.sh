#!/bin/sh
# Managed by registry-kit: replace the registry container; if the new one does not become
# healthy, put the previous container (same image, same data) back and fail.
# Usage: replace-container.sh NAME URL RESOLVE CACERT TIMEOUT LOCK -- DOCKER-CREATE-ARGS...
# The new container is created while the old one still serves under its other name, so
# clients wait only for the old one's stop and the new one's start (the port is one).
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
name=$1 url=$2 resolve=$3 cacert=$4 timeout=$5 lock=$6
shift 6
[ "${1:-}" = "--" ] && shift
previous="$name-previous"

# One swap at a time: a deploy killed mid-swap leaves this script running here, and a
# rerun's swap interleaving with it (rename, run, rollback) can leave no registry at all.
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
if ! flock -w $(( timeout * 2 + 60 )) 9; then
    echo "registry-kit: another replacement of $name is still running" >&2
    exit 1
fi

set_curl_opts "$resolve" "$cacert"

docker rm -f "$previous" >/dev/null 2>&1
had_previous=0
if docker inspect "$name" >/dev/null 2>&1; then
    had_previous=1
    docker rename "$name" "$previous"
    # A reboot during the swap must not start two registries on one port.
    docker update --restart=no "$previous" >/dev/null
fi

if docker create "$@" >/dev/null && { [ "$had_previous" = 0 ] ||
        docker stop "$previous" >/dev/null; } && docker start "$name" >/dev/null; then
    deadline=$(( $(date +%s) + timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        restarts=$(docker inspect -f '{{.RestartCount}}' "$name" 2>/dev/null || echo 99)
        [ "$restarts" -ge 3 ] && break  # crash loop: no point waiting out the timeout
        if [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] && healthy; then
            docker rm -f "$previous" >/dev/null 2>&1
            echo "registry-kit: $name is serving $url/v2/"
            exit 0
        fi
        # The registry listens a fraction of a second after its start: check as often as
        # wait_healthy does, so the run goes on (and the old container goes) that soon.
        sleep 0.1
    done
fi

image=$(docker inspect -f '{{.Config.Image}}' "$name" 2>/dev/null || echo "?")
# A crash-looping container may be caught between two restarts (running, exit code 0):
# stop the loop and give it a few seconds to exit, so the report shows how it ended.
docker update --restart=no "$name" >/dev/null 2>&1
for _ in 1 2 3 4 5; do
    [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
    sleep 1
done
how=$(docker inspect -f 'state {{.State.Status}}, exit code {{.State.ExitCode}}, restarted {{.RestartCount}} times' "$name" 2>/dev/null || echo "not created")
echo "registry-kit: the new $name container ($image) did not become healthy ($how; waited up to ${timeout}s)." >&2
echo "registry-kit: its last log lines:" >&2
logs=$(docker logs --tail 20 "$name" 2>&1)
[ -n "$logs" ] || logs="(no log output)"
printf '%s\n' "$logs" | sed 's/^/    /' >&2
docker rm -f "$name" >/dev/null 2>&1
if [ "$had_previous" = 1 ]; then
    docker rename "$previous" "$name"
    docker update --restart=always "$name" >/dev/null
    docker start "$name" >/dev/null
    old_image=$(docker inspect -f '{{.Config.Image}}' "$name" 2>/dev/null || echo "?")
    deadline=$(( $(date +%s) + timeout ))
    while [ "$(date +%s)" -lt "$deadline" ] && ! healthy; do sleep 1; done
    if healthy; then
        echo "registry-kit: rolled back: the previous $name container ($old_image) is serving $url/v2/ again." >&2
    else
        echo "registry-kit: rolled back to the previous $name container ($old_image), but it does not answer $url/v2/ either." >&2
    fi
fi
exit 1
