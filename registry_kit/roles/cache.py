"""The registry's shared blob-descriptor cache on the registry_cache host: redis-server
from the distro, password set, bound to the host's internal address (and loopback), no
persistence, `maxmemory-policy allkeys-lru` as the registry's docs ask (it sets no expiry).

The kit owns the whole redis.conf (root:redis 0640: it holds the password). A changed
config restarts redis (it has no reload); the replicas fall back to storage while it is
away. Checked after a change: PONG with the password, NOAUTH without, the eviction policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host

from registry_kit import package_data
from registry_kit.commands import q
from registry_kit.facts import HostState, first_line, section_command
from registry_kit.model.layout import REDIS_CONF, REDIS_RUNTIME
from registry_kit.model.settings import Settings, host_port
from registry_kit.operations import files, packages
from registry_kit.operations.removal import purge_packages, remove_files, stop_services
from registry_kit.operations.typed import operation
from registry_kit.render import textfile

_environment = package_data.ENVIRONMENT


@dataclass(frozen=True)
class RedisFamily:
    """What differs between OS families: data, not if-ladders."""

    package: str
    service: str
    pidfile: str
    logfile: str


FAMILIES = {
    "debian": RedisFamily("redis-server", "redis-server", *REDIS_RUNTIME["debian"]),
    "rhel": RedisFamily("redis", "redis", *REDIS_RUNTIME["rhel"]),
}
COMMANDS = ("redis-server", "redis-cli")


def family(state: HostState) -> RedisFamily:
    return FAMILIES.get(state.os.family, FAMILIES["debian"])


def probe_args(settings: Settings) -> dict:
    return {"files": [REDIS_CONF], "commands": list(COMMANDS),
            "services": sorted({f.service for f in FAMILIES.values()})}


def render(settings: Settings, password: str, redis: RedisFamily) -> str:
    """redis.conf. Every value that is not a literal here is checked to be one redis word
    (textfile.word): no value can add a line or an argument. The password is written as
    is, unquoted: verify_command reads it back with sed."""

    def checked(value: object, field: str, secret: bool = False) -> str:
        return textfile.word(value, file=REDIS_CONF, field=field,
                             forbidden=textfile.REDIS_SYNTAX, secret=secret)

    address = checked(settings.registry_internal_address, "registry_internal_address")
    bind = address if address == "127.0.0.1" else f"{address} 127.0.0.1"
    return _environment.get_template("redis.conf.j2").render(
        source="templates/redis.conf.j2", bind=bind,
        port=checked(settings.registry_cache_port, "registry_cache_port"),
        pidfile=redis.pidfile, logfile=redis.logfile,
        password=checked(password, "registry_cache_password", secret=True),
        maxmemory=checked(settings.registry_cache_maxmemory, "registry_cache_maxmemory"))


@operation()
def restart_redis(redis: RedisFamily):
    yield f"systemctl restart {q(redis.service)}"


@operation()
def start_redis(redis: RedisFamily, state: HostState):
    active, enabled = state.services.get(redis.service, (False, False))
    if active and enabled:
        host.noop(f"{redis.service} is enabled and running")
        return
    yield f"systemctl enable --now {q(redis.service)}"


def verify_command(settings: Settings) -> str:
    """PONG with the password (read from redis.conf into REDISCLI_AUTH, never argv), NOAUTH
    without it, allkeys-lru: what the replicas rely on."""
    address, port = settings.registry_internal_address, settings.registry_cache_port
    where = host_port(address, port)
    cli = f"redis-cli --no-auth-warning -h {q(address)} -p {q(port)}"
    auth = f"REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' {q(REDIS_CONF)})\""
    return (
        f"i=0; while [ $i -lt 30 ]; do a=$({auth} {cli} ping 2>&1); [ \"$a\" = PONG ] && "
        "break; i=$((i+1)); sleep 1; done; "
        f"[ \"$a\" = PONG ] || {{ echo {q('registry-kit: redis on ' + where)}\" does not "
        "answer PONG with its password: $a\" >&2; exit 1; }; "
        f"case \"$({cli} ping 2>&1)\" in *NOAUTH*) ;; *) echo 'registry-kit: redis answers "
        "without the password' >&2; exit 1;; esac; "
        f"p=$({auth} {cli} config get maxmemory-policy | tail -n 1); "
        "[ \"$p\" = allkeys-lru ] || { echo \"registry-kit: redis maxmemory-policy is $p\" >&2;"
        " exit 1; }; "
        f"echo {q('registry-kit: redis answers on ' + where + ' (password, allkeys-lru)')}"
    )


@operation()
def verify_redis(settings: Settings):
    yield verify_command(settings)


def cache_deploy(settings: Settings, state: HostState, password: str) -> None:
    redis = family(state)
    packages.install_packages((redis.package,), COMMANDS, state,
                              name=f"Install {redis.package} from the distro")
    config_op = files.managed_file(
        REDIS_CONF, render(settings, password, redis).encode(), "0640",
        state.files.get(REDIS_CONF),
        group="redis", name="Upload redis.conf (password, bind, allkeys-lru)")
    restart_op = restart_redis(redis, name=f"Restart {redis.service} (config changed)",
                               _if=config_op.did_change)
    start_redis(redis, state, name=f"Enable and start {redis.service}")
    verify_redis(settings, name="Check redis: PONG with, NOAUTH without the password",
                 _if=restart_op.did_change)


# --- teardown: the reverse of cache_deploy ---

# redis-cli comes from redis-tools on Debian (a dependency of redis-server).
PURGE_PACKAGES = {"debian": ("redis-server", "redis-tools"), "rhel": ("redis",)}


def teardown_probe_args(settings: Settings) -> dict:
    return probe_args(settings)


def cache_remove(settings: Settings, state: HostState) -> None:
    """redis stopped and disabled, the kit's redis.conf removed. The cache keeps nothing on
    disk (no RDB or AOF: redis.conf sets `save ""` and `appendonly no`), so stopping it is
    its purge (registry_purge_data changes nothing here; the images live in the replicas'
    storage). The packages go only with registry_packages_remove_on_teardown=True."""
    redis = family(state)
    stop_services([redis.service], state, name=f"Stop and disable {redis.service}")
    remove_files([REDIS_CONF], state, name="Remove the kit's redis.conf")
    names = PURGE_PACKAGES.get(state.os.family, PURGE_PACKAGES["debian"])
    purge_packages(names, COMMANDS, settings, state,
                   name=f"Remove {', '.join(names)} (registry_packages_remove_on_teardown)")


# --- status.py: redis running, its memory in use and key count ---

def status_command(settings: Settings) -> str:
    # The password read from redis.conf into REDISCLI_AUTH on the host, never in argv.
    auth = f"REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' {q(REDIS_CONF)} 2>/dev/null)\""
    cli = f"{auth} redis-cli --no-auth-warning -h 127.0.0.1 -p {q(settings.registry_cache_port)}"
    return "; ".join([
        # Debian's unit, then the RHEL family's.
        section_command("redis"), "systemctl is-active redis-server redis 2>/dev/null | "
        "grep -m1 -x active || echo inactive",
        section_command("memory"), f"{cli} info memory 2>/dev/null | "
        "sed -n 's/^used_memory_human:\\([^\\r]*\\).*/\\1/p' || true",
        section_command("keys"), f"{cli} dbsize 2>/dev/null || true"])


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    return {
        "cache": settings.host,
        "redis": first_line(sections, "redis") or "-",
        "memory": first_line(sections, "memory") or "-",
        "keys": first_line(sections, "keys") or "-",
    }
