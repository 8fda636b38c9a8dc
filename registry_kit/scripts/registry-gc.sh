#!/bin/sh
# Managed by registry-kit: garbage-collect the registry's storage safely. For the collection
# the registry is restarted in read-only mode (pulls keep working, pushes get 405) and
# afterwards restarted with its own config.yml again, whatever happened. --dry-run only
# reports what would be deleted. Prints one "registry-kit:" summary line with the freed bytes.
# Usage: registry-gc.sh NAME CONFIG_DIR DATA_DIR URL RESOLVE CACERT TIMEOUT INNER LOG_DIR
#                       [--dry-run] [--delete-untagged] [--facts=FILE]
#   FILE: where a whole collection (not a dry run, not a step) leaves its result and end time
#   for Prometheus, however it ends; only when FILE's folder exists (registry_metrics).
#   DATA_DIR "-": storage is not a folder. INNER: CONFIG_DIR/config.yml as the container
#   sees it. LOG_DIR: where garbage-collect's output goes (gc.log).
#        registry-gc.sh --readonly-config < config.yml > read-only-config.yml
#        registry-gc.sh --retention-result FILE STATUS
#   retention.py's run on this server ended with STATUS: its result and end time in FILE,
#   as a collection leaves its own (only when FILE's folder exists).
#        registry-gc.sh --step check|readonly|collect|writable NAME CONFIG_DIR ... (as above)
#   One step of a collection on shared storage (registry_kit/sharedgc.py runs them in order
#   on every replica from the control machine): check changes nothing; readonly restarts
#   the registry read-only (and puts the saved config back if that fails); collect runs
#   garbage-collect on a registry that is read-only; writable puts the saved config back
#   and restarts (nothing to do when there is no saved config).
set -u
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

readonly_config() {
    # registry_kit/render.py writes "readonly:" with "enabled: false" on the next line, and
    # every value on one line (a line break in a value is written "\n"), so no value can
    # hold a line this matches.
    sed '/^    readonly:$/{n;s/^      enabled: false$/      enabled: true/;}'
}
if [ "${1:-}" = "--readonly-config" ]; then
    readonly_config
    exit 0
fi

# A run's result (KIND: gc or retention; STATUS: its exit status) and end time as gauges
# in FILE for Prometheus, when FILE's folder exists (registry_metrics).
export_result() {  # FILE KIND STATUS
    [ -n "$1" ] && [ -d "$(dirname "$1")" ] || return 0
    success=0
    [ "$3" = 0 ] && success=1
    metric=registry_kit_$2_last
    printf '%s\n' "# HELP ${metric}_success 1 if the last $2 run succeeded, else 0" \
        "# TYPE ${metric}_success gauge" "${metric}_success $success" \
        "# HELP ${metric}_end_timestamp_seconds when the last $2 run ended" \
        "# TYPE ${metric}_end_timestamp_seconds gauge" \
        "${metric}_end_timestamp_seconds $(date +%s)" >"$1.new" &&
        chmod 0644 "$1.new" && mv -f "$1.new" "$1"
}
if [ "${1:-}" = "--retention-result" ]; then
    export_result "$2" retention "$3"
    exit 0
fi

step=""
if [ "${1:-}" = "--step" ]; then
    step=$2
    shift 2
fi
name=$1 config_dir=$2 data=$3 url=$4 resolve=$5 cacert=$6 timeout=$7 inner=$8 log_dir=$9
shift 9
dry_run=0 untagged="" facts=""
for arg in "$@"; do
    case $arg in
        --dry-run) dry_run=1 ;;
        --delete-untagged) untagged=--delete-untagged ;;
        --facts=*) facts=${arg#--facts=} ;;
        *) echo "registry-kit: unknown option $arg" >&2; exit 2 ;;
    esac
done
config=$config_dir/config.yml
saved=$config_dir/config.yml.registry-kit-saved
# One line, "UTC-TIME what was done", for status.py (layout.GC_RECORD_NAME); written by a
# whole collection of a server's own storage (not yet by the steps on shared storage).
record=$config_dir/last-gc
log=$log_dir/gc.log
# The log is read here and its summary reported; nothing of it stays in the runtime folder.
# A whole collection (not a step, not a dry run) leaves its result, however it ends.
on_exit() {
    status=$?
    rm -f "$log"
    [ -z "$step" ] && [ "$dry_run" = 0 ] && export_result "$facts" gc "$status"
}
trap on_exit EXIT
set_curl_opts "$resolve" "$cacert"

write_record() {
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $1" >"$record.new" && mv -f "$record.new" "$record"
}

used() {
    if [ "$data" = "-" ]; then echo 0; else du -sb "$data" | cut -f1; fi
}

collect() {
    # shellcheck disable=SC2086
    if docker exec "$name" registry garbage-collect "$@" $untagged "$inner" >"$log" 2>&1; then
        # e.g. "6 blobs marked, 2 blobs and 1 manifests eligible for deletion"
        summary=$(grep -E '^[0-9]+ blobs marked, ' "$log" | tail -n 1)
        [ -n "$summary" ] || summary="garbage-collect printed no summary"
        return 0
    fi
    # A registry nothing was ever pushed to has no repositories folder (seen on S3:
    # "failed to mark: s3aws: Path not found: /docker/registry/v2/repositories").
    if grep -q 'Path not found: .*/docker/registry/v2/repositories$' "$log"; then
        summary="no repositories yet: nothing to collect"
        return 0
    fi
    echo "registry-kit: garbage-collect failed; its last lines:" >&2
    tail -n 20 "$log" | sed 's/^/    /' >&2
    return 1
}

if [ "$step" != writable ] &&
       [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
    echo "registry-kit: container $name is not running: run deploy.py first" >&2
    exit 1
fi
install -d -m 0700 "$log_dir"
before=$(used)

case $step in
"") ;;
check)
    if [ -e "$saved" ]; then
        echo "registry-kit: $saved exists: an earlier collection did not finish. Move it" \
             "back to $config, restart $name, and run again" >&2
        exit 1
    fi
    if ! grep -A1 '^    readonly:$' "$config" | grep -q 'enabled: false'; then
        echo "registry-kit: $config has no storage.maintenance.readonly section the kit" \
             "wrote; run deploy.py first" >&2
        exit 1
    fi
    healthy || { echo "registry-kit: $name does not answer $url/v2/" >&2; exit 1; }
    echo "registry-kit: $name is ready for a collection"
    exit 0 ;;
readonly)
    [ -e "$saved" ] && { echo "registry-kit: $saved exists already" >&2; exit 1; }
    cp -p "$config" "$saved"
    install -m 0600 /dev/null "$config.registry-kit-new"
    readonly_config <"$saved" >"$config.registry-kit-new"
    mv -f "$config.registry-kit-new" "$config"
    if ! restart_healthy; then
        echo "registry-kit: $name in read-only mode does not answer $url/v2/" >&2
        mv -f "$saved" "$config"
        restart_healthy
        exit 1
    fi
    echo "registry-kit: $name is read-only (pushes refused, pulls served)"
    exit 0 ;;
collect)
    if [ "$dry_run" = 0 ] && ! grep -A1 '^    readonly:$' "$config" | grep -q 'enabled: true'
    then
        echo "registry-kit: $name is not read-only: no collection" >&2
        exit 1
    fi
    if [ "$dry_run" = 1 ]; then collect --dry-run || exit 1; else collect || exit 1; fi
    echo "registry-kit: collected: $summary"
    exit 0 ;;
writable)
    if [ -e "$saved" ]; then
        mv -f "$saved" "$config"
        docker restart "$name" >/dev/null
    elif [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
        docker start "$name" >/dev/null
    fi
    if ! wait_healthy; then
        echo "registry-kit: $name does not answer $url/v2/ after leaving read-only mode" >&2
        exit 1
    fi
    echo "registry-kit: $name is read-write again"
    exit 0 ;;
*) echo "registry-kit: unknown step $step" >&2; exit 2 ;;
esac

if [ "$dry_run" = 1 ]; then
    collect --dry-run || exit 1
    echo "registry-kit: dry run: $summary; nothing deleted ($before bytes in ${data})"
    exit 0
fi

if [ -e "$saved" ]; then
    echo "registry-kit: $saved exists: an earlier collection did not finish. Move it back to" \
         "$config, restart $name, and run again" >&2
    exit 1
fi
cp -p "$config" "$saved"

restore() {
    mv -f "$saved" "$config"
    if ! restart_healthy; then
        echo "registry-kit: $name does not answer $url/v2/ after leaving read-only mode" >&2
        return 1
    fi
}
trap 'restore; exit 1' HUP INT TERM

install -m 0600 /dev/null "$config.registry-kit-new"
readonly_config <"$saved" >"$config.registry-kit-new"
if ! grep -A1 '^    readonly:$' "$config.registry-kit-new" | grep -q 'enabled: true'; then
    rm -f "$config.registry-kit-new" "$saved"
    echo "registry-kit: $config has no storage.maintenance.readonly section the kit wrote;" \
         "run deploy.py first" >&2
    exit 1
fi
mv -f "$config.registry-kit-new" "$config"
if ! restart_healthy; then
    echo "registry-kit: $name in read-only mode does not answer $url/v2/" >&2
    restore
    exit 1
fi

ok=1
collect || ok=0
trap - HUP INT TERM
restore || exit 1
[ "$ok" = 1 ] || exit 1
after=$(used)
write_record "freed $((before - after)) bytes ($summary)"
echo "registry-kit: garbage collection freed $((before - after)) bytes" \
     "($before -> $after bytes in ${data}; $summary)"
