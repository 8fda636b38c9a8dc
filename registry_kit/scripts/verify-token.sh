#!/bin/sh
# Managed by registry-kit: check a registry under token auth. /v2/ without a token must
# answer 401 with a Bearer challenge naming REALM; the token server must hand out a token
# (for the user in CURLRC, or anonymously when CURLRC is "-"), and /v2/ with that token
# must answer 200. Credentials come in a curl config file (0600, tmpfs), never on a
# command line; the file is removed whatever the result.
# Usage: verify-token.sh URL RESOLVE CACERT TIMEOUT REALM TOKEN_RESOLVE SERVICE [CURLRC]
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
url=$1 resolve=$2 cacert=$3 timeout=$4 realm=$5 token_resolve=$6 service=$7 curlrc=${8:--}
trap '[ "$curlrc" != "-" ] && rm -f "$curlrc"' EXIT

# --resolve differs between the registry and the realm: given per request.
set_curl_opts - "$cacert"

deadline=$(( $(date +%s) + timeout ))
challenge="" token="" code=""
while [ "$(date +%s)" -lt "$deadline" ]; do
    # shellcheck disable=SC2086
    challenge=$(curl -s -o /dev/null -D - --max-time 3 $curl_opts --resolve "$resolve" "$url/v2/" \
        | tr -d '\r' | grep -i '^www-authenticate: bearer ')
    case "$challenge" in
    *"realm=\"$realm\""*)
        auth=""
        [ "$curlrc" != "-" ] && auth="-K $curlrc"
        # shellcheck disable=SC2086
        token=$(curl -sf --max-time 5 $curl_opts --resolve "$token_resolve" $auth -G \
            --data-urlencode "service=$service" "$realm" \
            | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
        if [ -n "$token" ]; then
            # The token goes to curl through a header file on stdin, not argv.
            # shellcheck disable=SC2086
            code=$(printf 'Authorization: Bearer %s\n' "$token" | curl -s -o /dev/null \
                -w '%{http_code}' --max-time 3 $curl_opts --resolve "$resolve" -H @- "$url/v2/")
            if [ "$code" = 200 ]; then
                echo "registry-kit: $url/v2/ answers 401 with a Bearer challenge, and 200" \
                     "with a token from $realm"
                exit 0
            fi
        fi;;
    esac
    sleep 1
done
echo "registry-kit: $url/v2/ under token auth: challenge '${challenge:-none}'," \
     "token ${token:+received}${token:-not received} from $realm, /v2/ with it:" \
     "${code:-n/a} (wanted 401 with realm=\"$realm\", a token, 200) after ${timeout}s" >&2
exit 1
