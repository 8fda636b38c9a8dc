#!/bin/sh
# Managed by registry-kit: check that /v2/ refuses anonymous requests (401) and accepts a
# configured user (200). The user's credentials come in a curl config file (0600, on
# tmpfs), never on a command line; the file is removed whatever the result.
# Usage: verify-auth.sh URL RESOLVE CACERT TIMEOUT [CURLRC]
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
url=$1 resolve=$2 cacert=$3 timeout=$4 curlrc=${5:--}
trap '[ "$curlrc" != "-" ] && rm -f "$curlrc"' EXIT

set_curl_opts "$resolve" "$cacert"

deadline=$(( $(date +%s) + timeout ))
anonymous="" user=""
while [ "$(date +%s)" -lt "$deadline" ]; do
    anonymous=$(v2_status)
    if [ "$curlrc" = "-" ]; then
        [ "$anonymous" = 200 ] && { echo "registry-kit: $url/v2/ answers 200"; exit 0; }
    else
        user=$(v2_status -K "$curlrc")
        if [ "$anonymous" = 401 ] && [ "$user" = 200 ]; then
            echo "registry-kit: $url/v2/ answers 401 without and 200 with credentials"
            exit 0
        fi
    fi
    sleep 1
done
echo "registry-kit: $url/v2/ answered $anonymous without credentials and ${user:-n/a} with" \
     "them after ${timeout}s (wanted 401 and 200)" >&2
exit 1
