#!/bin/sh
# Managed by registry-kit (restore.py): sent on stdin (`sh -s`) after lib.sh, never
# installed.
# Restart the registry on its own config (it forgets what it cached about the old storage)
# and wait until it answers /v2/ (200 or 401).
# Usage: sh -s NAME URL RESOLVE CACERT TIMEOUT < registry-restart.sh
set -u
# shellcheck disable=SC2034 # timeout: read by lib.sh's wait_healthy
name=$1 url=$2 resolve=$3 cacert=$4 timeout=$5

set_curl_opts "$resolve" "$cacert"

restart_healthy && exit 0
echo "registry-kit: $name does not answer $url/v2/ after a restart" >&2
exit 1
