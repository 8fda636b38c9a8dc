#!/bin/sh
# Managed by registry-kit (backup.py, restore.py): sent on stdin (`sh -s`), never installed.
# on:      restart the registry read-only (pulls keep working, pushes get the registry's
#          read-only refusal) and wait until it answers again;
# off:     put its own config.yml back, restart it, wait until it answers;
# restart: restart it on the same config (restore.py, after new data), wait.
# Usage: sh -s on|off|restart NAME CONFIG_DIR URL RESOLVE CACERT TIMEOUT < registry-window.sh
set -u
mode=$1 name=$2 config_dir=$3 url=$4 resolve=$5 cacert=$6 timeout=$7
config=$config_dir/config.yml
saved=$config_dir/config.yml.registry-kit-saved

curl_opts=""
[ "$resolve" != "-" ] && curl_opts="$curl_opts --resolve $resolve"
[ "$cacert" != "-" ] && curl_opts="$curl_opts --cacert $cacert"

wait_healthy() {
    deadline=$(( $(date +%s) + timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        # shellcheck disable=SC2086
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 $curl_opts "$url/v2/")
        { [ "$code" = 200 ] || [ "$code" = 401 ]; } && return 0
        sleep 0.1
    done
    echo "registry-kit: $name does not answer $url/v2/ after a restart ($mode)" >&2
    return 1
}

case $mode in
on)
    if [ -e "$saved" ]; then
        echo "registry-kit: $saved exists: an earlier gc.py or backup.py did not finish." \
             "Move it back to $config, restart $name, and run again" >&2
        exit 1
    fi
    cp -p "$config" "$saved"
    install -m 0600 /dev/null "$config.registry-kit-new"
    # The same edit as registry-gc.sh: render.py writes "enabled: false" under "readonly:".
    sed '/^    readonly:$/{n;s/^      enabled: false$/      enabled: true/;}' \
        <"$saved" >"$config.registry-kit-new"
    if ! grep -A1 '^    readonly:$' "$config.registry-kit-new" | grep -q 'enabled: true'; then
        rm -f "$config.registry-kit-new" "$saved"
        echo "registry-kit: $config has no readonly section the kit wrote; run deploy.py" >&2
        exit 1
    fi
    mv -f "$config.registry-kit-new" "$config"
    docker restart -t 2 "$name" >/dev/null && wait_healthy && exit 0
    mv -f "$saved" "$config"
    docker restart "$name" >/dev/null
    exit 1
    ;;
off)
    [ -e "$saved" ] && mv -f "$saved" "$config"
    docker restart -t 2 "$name" >/dev/null && wait_healthy
    ;;
restart)
    docker restart "$name" >/dev/null && wait_healthy
    ;;
*)
    echo "registry-kit: unknown mode $mode" >&2
    exit 2
    ;;
esac
