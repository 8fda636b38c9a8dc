"""The registry service on hosts in registry_servers: folders, certificates, htpasswd,
config.yml, the image, the container (recreated exactly when its inputs change) and a
health check after any change.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand
from pyinfra.operations.util import any_changed

from registry_kit import package_data
from registry_kit.commands import ContainerSpec, join, q
from registry_kit.facts import HostState, first_line, section_command
from registry_kit.model import keystore, layout, pull_through
from registry_kit.model.inventory import merge_probe, run_cache
from registry_kit.model.layout import Endpoints, ServerLayout
from registry_kit.model.registry_version import binary_version
from registry_kit.model.settings import Settings, User
from registry_kit.model.topology import CacheTarget, OutOfRotation, Rotation, server_name
from registry_kit.operations import files, ownership
from registry_kit.operations.ownership import MARKER, FolderPlan, owned, plan_folder, remove_folders
from registry_kit.operations.removal import log_kept
from registry_kit.operations.typed import operation
from registry_kit.render import audit, htpasswd, textfile, tls
from registry_kit.render import token_auth as token_render
from registry_kit.render.config import render_config
from registry_kit.render.tls import ServerCertificate
from registry_kit.roles import client, token_server

# A replica behind a load balancer finishes open requests this long after SIGTERM; less
# than the 10 s `docker stop` waits before it kills.
REPLICA_DRAIN_SECONDS = 5


# lib.sh: what the others share, sourced from their own folder.
SCRIPT_NAMES = ("lib.sh", "replace-container.sh", "verify-auth.sh", "registry-gc.sh",
                "verify-token.sh", "prove-config.sh", "registry-disk-guard.sh")


def install_scripts(names: Sequence[str], state: HostState) -> None:
    """scripts/NAME for each name into the kit's scripts folder (root's, 0755)."""
    files.managed_dir(layout.SCRIPTS_DIR, "0755", state.dirs.get(layout.SCRIPTS_DIR),
                      name=f"Create {layout.SCRIPTS_DIR}")
    for name in names:
        path = layout.script(name)
        files.managed_file(path, package_data.script(name), "0755", state.files.get(path),
                           name=f"Install {path}")


def owned_folders(settings: Settings) -> list[tuple[str, str]]:
    """(folder, what it is) for each server folder the kit may create, parents first."""
    paths = ServerLayout.of(settings)
    return [(settings.registry_config_dir, "registry_config_dir"),
            (paths.certs_dir, "registry_config_dir/certs"),
            (paths.auth_dir, "registry_config_dir/auth"),
            (settings.registry_data_dir, "registry_data_dir")]


def probe_args(settings: Settings) -> dict:
    """What the server part asks of the probe (registry_kit.facts)."""
    paths = ServerLayout.of(settings)
    remote = pull_through.remote_name(settings)
    return {
        # Resolved again every run, so the container follows a changed address.
        **({"resolve": [remote]} if remote else {}),
        "files": [paths.config, paths.cert, paths.key, paths.ca, paths.htpasswd,
                  *(layout.script(name) for name in SCRIPT_NAMES),
                  *(ownership.marker_path(folder) for folder, _ in owned_folders(settings))],
        "dirs": [settings.registry_config_dir, paths.certs_dir, paths.auth_dir,
                 settings.registry_data_dir, layout.SCRIPTS_DIR],
        "container": settings.registry_container_name,
        "image": settings.registry_image,
        "htpasswd": paths.htpasswd,
    }


def served_certificate(settings: Settings, cert: ServerCertificate) -> bytes:
    """A provided certificate is served with the chain above it, so clients that trust
    only the root (or the OS store) can build the path."""
    return cert.cert_pem + (cert.ca_pem if settings.registry_tls_mode == "provided" else b"")


def container_spec(settings: Settings, config: bytes, cert: ServerCertificate | None,
                   extra_hosts: tuple[tuple[str, str], ...] = ()) -> ContainerSpec:
    """The container's spec, labelled with a hash of everything that needs a recreate:
    run arguments, image, config and certificates (not htpasswd: the registry re-reads
    it by itself). pyinfra 3.10's docker.container never recreates on change (upstream
    issue 1561), so the kit compares this label instead."""
    debug_port = int(settings.registry_debug_addr.rsplit(":", 1)[1]) \
        if settings.registry_debug_addr else None
    spec = ContainerSpec(
        name=settings.registry_container_name, image=settings.registry_image,
        port=settings.registry_port, config_dir=settings.registry_config_dir,
        data_dir=settings.registry_data_dir
        if settings.registry_storage.driver == "filesystem" else None,
        debug_port=debug_port, bind_address=settings.registry_bind_address,
        extra_hosts=extra_hosts + audit.extra_hosts(settings))
    inputs = {
        "run": spec.run_args(),
        "config": files.sha256_of(config),
        "cert": files.sha256_of(served_certificate(settings, cert) + cert.key_pem)
        if cert else None,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return ContainerSpec(**{**spec.__dict__, "spec_hash": digest})


def health_target(settings: Settings) -> tuple[str, str, str]:
    """(url, curl --resolve value, CA path) to check the registry from the server itself,
    by its real name but through the local address (layout.Endpoints)."""
    endpoints = Endpoints.of(settings)
    ca = ServerLayout.of(settings).ca if settings.tls_enabled else "-"
    return endpoints.url, endpoints.resolve, ca


@operation()
def ensure_image(settings: Settings, state: HostState):
    """Pull (through the engine, so registry-mirrors apply) or load the pinned image,
    before the running container is touched."""
    if state.image_id:
        host.noop(f"image {settings.registry_image} is present")
        return
    if settings.registry_image_archive is not None:
        staging = layout.IMAGE_STAGING
        yield files.upload(str(settings.registry_image_archive), staging)
        yield f"docker load -i {q(staging)} && rm -f {q(staging)}"
        missing = (f"registry-kit: {settings.registry_image_archive.name} does not hold "
                   f"{settings.registry_image}")
        yield (f"docker image inspect {q(settings.registry_image)} >/dev/null || "
               f"{{ echo {q(missing)} >&2; exit 1; }}")
        return
    yield f"docker pull {q(settings.registry_image)}"


def _failed_replacements(state: Any) -> list[str]:
    """Servers whose container replacement failed in this run (kept on its State).
    ensure_container runs one server at a time (_serial), so the servers after a failed
    one are left as they are."""
    return run_cache("failed-replacements", list, state)  # type: ignore[no-any-return]


class _ReplaceCommand(StringCommand):
    """The replace-container.sh (or prove-config.sh) call; remembers a failure for the
    servers still to come."""

    def execute(self, state, host, connector_arguments):
        status, output = super().execute(state, host, connector_arguments)
        if status is False:
            _failed_replacements(state).append(host.name)
        return status, output


def _stop_rollout(state, host, failed: str) -> bool:
    host.log_styled(f"{host.name}: registry container not replaced: the replacement failed "
                    f"on {failed} earlier in this run (servers are changed one at a time; "
                    "fix that first and run again)", fg="red", log_func=logger.error)
    return False


@operation()
def ensure_container(settings: Settings, spec: ContainerSpec, state: HostState,
                     rotation: Rotation | None = None):
    """Create or replace the container (replace-container.sh rolls back on failure). Called
    with _serial=True: one server at a time, and none after a server whose new container
    failed. The op body runs at execution time (pyinfra -y), so the check sees this run."""
    current = state.container
    if current and current.spec_hash == spec.spec_hash:
        if current.running:
            host.noop(f"container {spec.name} is up to date ({spec.spec_hash})")
            return
        yield f"docker start {q(spec.name)}"
        return
    if _failed_replacements(host.state):
        yield FunctionCommand(_stop_rollout, (", ".join(_failed_replacements(host.state)),), {})
        return
    url, resolve, ca = health_target(settings)
    reason = "create" if current is None else f"recreate ({current.spec_hash or 'unlabelled'}"\
        f" -> {spec.spec_hash})"
    # Say why, so a recreate is never a surprise in the run's output.
    logger.info(f"{host.print_prefix}{reason} container {spec.name}")
    replace = _ReplaceCommand(join([layout.script("replace-container.sh"), spec.name, url,
                                    resolve, ca, settings.registry_verify_timeout,
                                    layout.replace_lock(spec.name), "--",
                                    *spec.create_args(state.server_version)]))
    # Behind a load balancer: out of rotation while replaced, back in (and UP) before the
    # next server's turn.
    yield OutOfRotation(replace, rotation, server_name(host.name)) if rotation else replace


@operation()
def restart_registry(settings: Settings):
    yield f"docker restart {q(settings.registry_container_name)}"


def _verify_user(settings: Settings):
    return next((user for user in settings.registry_users if user.password is not None), None)


@operation()
def verify_registry(settings: Settings):
    """401 without credentials and 200 with a configured user, checked on the server."""
    url, resolve, ca = health_target(settings)
    user = _verify_user(settings)
    timeout = settings.registry_verify_timeout
    if token_render.enabled(settings):
        yield from _verify_token(settings, user)
        return
    if user is None or user.password is None:
        # No user with a known password (none, or hashes only): 401/200 without creds.
        yield join([layout.script("verify-auth.sh"), url, resolve, ca, timeout])
        return
    yield from _with_curlrc([layout.script("verify-auth.sh"), url, resolve, ca, timeout], user)


def _verify_token(settings: Settings, user: User | None):
    """Access rules: a Bearer challenge, a token from the kit's token server (as a user
    with a password, else anonymously), and 200 with it."""
    url, resolve, ca = health_target(settings)
    endpoints = Endpoints.of(settings)
    args = [layout.script("verify-token.sh"), url, resolve, ca, settings.registry_verify_timeout,
            endpoints.realm, endpoints.realm_resolve, token_render.service(settings)]
    if user is None or user.password is None:
        yield join(args)
        return
    yield from _with_curlrc(args, user)


def _with_curlrc(args: list[Any], user: User):
    """The check's command with the user's credentials in a curl config file on tmpfs
    (0600), never on its command line; the script removes the file."""
    curlrc = f"{layout.RUNTIME_DIR}/verify.curlrc"
    yield (f"install -d -m 0700 {q(layout.RUNTIME_DIR)} && "
           f"install -m 0600 /dev/null {q(curlrc)}")
    yield files.upload(BytesIO(curlrc_text(user).encode()), curlrc)
    yield join([*args, curlrc])


def curlrc_text(user: User) -> str:
    """The check's curl config: one quoted `user` line (escaped: textfile)."""
    assert user.password is not None
    credentials = f"{user.name}:{user.password.reveal()}"
    return f'user = "{textfile.curl_config_string(credentials, field="user")}"\n'


def registry_reads(settings: Settings, config: bytes, cert: ServerCertificate | None,
                   users: bytes) -> dict[str, bytes]:
    """The files the registry reads, by path: a change to any but htpasswd is proven on a
    candidate first, which then gets them all. htpasswd alone is not: the registry parses
    it at the first request after it changes, not at start (distribution's
    auth/htpasswd/access.go), so a candidate's /v2/ check would prove nothing about it.
    The CA is not read by the registry, but the candidate's check trusts the new one."""
    paths = ServerLayout.of(settings)
    wanted = {paths.config: config, paths.htpasswd: users}
    if cert is not None:
        wanted.update({paths.cert: served_certificate(settings, cert),
                       paths.key: cert.key_pem, paths.ca: cert.ca_pem})
    if token_render.enabled(settings):
        wanted[paths.signing_cert] = keystore.token_signing_material(settings)[1]
    return wanted


@operation()
def prove_files(settings: Settings, spec: ContainerSpec, wanted: dict[str, bytes],
                candidate_config: bytes, state: HostState):
    """Before any file the running registry reads is replaced: the new files (`wanted`,
    path -> content; config.yml as `candidate_config`, read-only storage) staged in a
    root-only folder on tmpfs and proven on a candidate container (scripts/prove-config.sh).
    A refusal fails the run here, so the uploads and the container swap after it never
    happen. Nothing to prove: no changed file, or no registry running yet to protect (a
    first deploy's replace-container.sh reports a refusal with the registry's log)."""
    config_dir = settings.registry_config_dir
    changed = [path for path, content in wanted.items()
               if getattr(state.files.get(path), "sha256", None) != files.sha256_of(content)]
    if state.container is None or changed in ([], [ServerLayout.of(settings).htpasswd]):
        host.noop("nothing to prove: " + (
            "no registry container yet" if state.container is None and changed else
            "only htpasswd changed (read at its first use)" if changed else
            "the registry's files are unchanged"))
        return
    if _failed_replacements(host.state):
        yield FunctionCommand(_stop_rollout, (", ".join(_failed_replacements(host.state)),), {})
        return
    candidate, staged = layout.candidate(spec.name), layout.candidate_dir(spec.name)
    # The current folder first, the changed files over it: what the swap will leave there.
    yield (f"docker rm -f {q(candidate)} >/dev/null 2>&1; rm -rf {q(staged)} && "
           f"install -d -m 0700 {q(layout.RUNTIME_DIR)} {q(staged)} && "
           f"cp -a {q(config_dir + '/.')} {q(staged)}")
    staged_layout = ServerLayout(staged)
    for path in changed:
        if path != ServerLayout.of(settings).config:
            yield files.upload(BytesIO(wanted[path]), staged + path[len(config_dir):])
    yield files.upload(BytesIO(candidate_config), staged_layout.config)
    endpoints = Endpoints.of(settings)
    # A refusal stops the rollout like a failed replacement (_ReplaceCommand records it).
    yield _ReplaceCommand(join([
        layout.script("prove-config.sh"), candidate, staged, endpoints.origin, endpoints.name,
        staged_layout.ca if settings.tls_enabled else "-", settings.registry_verify_timeout,
        layout.CONTAINER_PORT, "--", *spec.candidate_args(staged, state.server_version)]))


def _upload_certificates(settings: Settings, state: HostState,
                         cert: ServerCertificate | None) -> list:
    """The server certificate and key (returned: a change needs a registry restart) and
    the CA."""
    if cert is None:
        return []
    paths = ServerLayout.of(settings)
    cert_ops = [files.managed_file(paths.cert, served_certificate(settings, cert), "0644",
                                   state.files.get(paths.cert),
                                   name="Upload the server certificate"),
                files.managed_file(paths.key, cert.key_pem, "0600", state.files.get(paths.key),
                                   name="Upload the server private key")]
    files.managed_file(paths.ca, cert.ca_pem, "0644", state.files.get(paths.ca),
                       name="Upload the CA certificate")
    return cert_ops


def server_deploy(settings: Settings, state: HostState, *, cert: ServerCertificate | None,
                  http_secret: str, cache: CacheTarget | None = None,
                  rotation: Rotation | None = None, major: int = 2,
                  extra_hosts: tuple[tuple[str, str], ...] = (), read_only: bool = False) -> None:
    """`major`: the registry version the image runs (registry_kit.model.registry_version), which
    config.yml is rendered for; `extra_hosts`: the container's --add-host
    (pull_through.extra_hosts); `read_only`: the disk guard holds it read-only
    (roles.disk_guard), so config.yml stays so (the container's label does not change)."""
    paths = ServerLayout.of(settings)
    # Folders a setting names: created and marked by the kit, or adopted (ownership.py).
    for path, setting in owned_folders(settings):
        ownership.owned_dir(path, "0700", setting, state, name=f"Create {path}")
    install_scripts(SCRIPT_NAMES, state)

    def config_for(read_only: bool) -> bytes:
        return render_config(settings, http_secret, read_only=read_only, cache=cache,
                             drain_timeout=REPLICA_DRAIN_SECONDS if rotation else None,
                             major=major).encode()

    config = config_for(read_only=False)
    on_disk = config_for(read_only=True) if read_only else config
    users = htpasswd.render(settings.registry_users, state.htpasswd,
                            keystore.password_check(settings)).encode()
    # The image first: the candidate runs the one the new container will.
    ensure_image(settings, state, name=f"Pull or load {settings.registry_image}")
    spec = container_spec(settings, config, cert, extra_hosts)
    prove_files(settings, spec, registry_reads(settings, on_disk, cert, users),
                config_for(read_only=True), state, _serial=True,
                name="Prove the registry's new files on a candidate container")
    cert_ops = _upload_certificates(settings, state, cert)
    # htpasswd before the first start: a registry that finds none invents a user.
    htpasswd_op = files.managed_file(paths.htpasswd, users, "0600",
                                     state.files.get(paths.htpasswd),
                                     name="Upload htpasswd (bcrypt)")
    # Access rules: the token server beside the registry (registry_kit.roles.token_server).
    token_ops = []
    if token_render.enabled(settings):
        token_ops.append(token_server.token_deploy(settings, state, tls_ops=cert_ops,
                                                   htpasswd_op=htpasswd_op, rotation=rotation))
    else:
        token_server.token_off(settings, state)
    config_op = files.managed_file(paths.config, on_disk, "0600",
                                   state.files.get(paths.config),
                                   name="Upload the registry config.yml")
    container_op = ensure_container(settings, spec, state, rotation,
                                    name="Start or replace the registry container",
                                    _serial=True)
    # Files on disk can differ from what the running container was started with even when
    # its spec label matches (a garbage_collect.py killed mid-run leaves a read-only config; a hand
    # edit): the registry reads config and certificates at start only, so restart it.
    file_ops = [config_op, *cert_ops, *token_ops]
    restart_op = restart_registry(
        settings, name="Restart the registry to load its changed files",
        _if=lambda: any(op.did_change() for op in file_ops) and not container_op.did_change())
    verify_registry(settings, name="Check /v2/: 401 without, 200 with credentials",
                    _if=any_changed(container_op, htpasswd_op, restart_op))


# --- teardown: the reverse of server_deploy (the GC timer and the web page go first, by
# their own modules) ---

def teardown_probe_args(settings: Settings) -> dict:
    paths = ServerLayout.of(settings)
    listed = [paths.certs_dir, paths.auth_dir, settings.registry_config_dir, layout.SCRIPTS_DIR,
              layout.RUNTIME_DIR]
    # What else each folder holds (entries) decides whether the folder itself can go.
    return merge_probe([probe_args(settings), token_server.teardown_probe_args(settings),
                        {"dirs": listed, "listings": listed}])


@operation()
def remove_container(settings: Settings, state: HostState):
    name = settings.registry_container_name
    if state.container is None:
        host.noop(f"no container {name}")
        return
    # -previous: left by a replacement that was interrupted half way (replace-container.sh);
    # the candidate and its staged files: by a proof killed hard (prove-config.sh).
    yield f"docker rm -f {q(name)} >/dev/null; docker rm -f {q(name + '-previous')} " \
          f"{q(layout.candidate(name))} >/dev/null 2>&1; " \
          f"rm -rf {q(layout.candidate_dir(name))}; true"


def config_plans(settings: Settings, state: HostState) -> list[FolderPlan]:
    """config.yml, certs/ and auth/ (the files garbage_collect.py's script stages next to config.yml
    included), then each folder the kit created that holds nothing else."""
    paths = ServerLayout.of(settings)
    certs = plan_folder(state, paths.certs_dir, ["server.crt", "server.key", "ca.crt",
                                                 *token_render.CERT_FILES])
    auth = plan_folder(state, paths.auth_dir, ["htpasswd"])
    # Access rules: the token server's key and policy (a folder the kit names, no marker).
    token = plan_folder(state, paths.token_dir,
                        token_render.TOKEN_DIR_FILES, needs_marker=False)
    gone = [plan.folder.rsplit("/", 1)[1] for plan in (certs, auth, token)
            if plan.remove_folder]
    config = plan_folder(state, settings.registry_config_dir,
                         ["config.yml", layout.DISK_GUARD_FLAG_NAME, layout.GC_RECORD_NAME,
                          layout.RETENTION_RECORD_NAME],
                         removed_subfolders=gone)
    return [certs, auth, *([token] if token.folder in state.dirs else []), config]


def _announce(state: Any, host: Any, message: str) -> bool:
    # FunctionCommand passes state and host only to parameters with exactly these names.
    host.log_styled(message, fg="yellow", log_func=logger.warning)
    return True


def purge_warning(settings: Settings) -> str:
    return (f"{settings.host}: registry_purge_data=True: DELETING the registry data in "
            f"{settings.registry_data_dir} (every image stored there)")


def purge_refusal(settings: Settings) -> str:
    return (f"{settings.host}: registry_purge_data=True: KEPT {settings.registry_data_dir}: "
            f"registry-kit did not create it (no {MARKER} in it); delete it by hand if the "
            "images in it are no longer needed")


def data_action(settings: Settings, state: HostState) -> str:
    """"absent", "keep" (no purge asked), "refuse" (purge asked, folder not the kit's) or
    "purge"."""
    path = settings.registry_data_dir
    if path not in state.dirs:
        return "absent"
    if not settings.registry_purge_data:
        return "keep"
    # A refused purge keeps the folder and the run goes on (exit 0): the folder is not the
    # kit's to delete, and no later run makes it so (it never gets a marker), so failing
    # would make every teardown of this host fail and stop the rest of it (container,
    # config, clients) for good. purge_refusal, printed before the run, names host and path.
    return "purge" if owned(state, path) else "refuse"


@operation()
def remove_data(settings: Settings, state: HostState):
    path = settings.registry_data_dir
    action = data_action(settings, state)
    if action == "absent":
        host.noop(f"no registry data in {path}")
    elif action == "keep":
        host.noop(f"kept the registry data in {path} (registry_purge_data=True deletes it)")
    elif action == "refuse":
        host.noop(purge_refusal(settings))
    else:
        yield FunctionCommand(_announce, (purge_warning(settings),), {})
        yield f"rm -rf {q(path)}"


# Every file and folder a server's roles put in the scripts folder. The roles remove their
# own earlier in the same teardown, but the plan is made from the probe taken before it: one
# missing here kept the folder as "not the kit's only", and a second teardown removed it.
SERVER_SCRIPTS = (*SCRIPT_NAMES, layout.TOKEN_SCRIPT_NAME, layout.AUDIT_SCRIPT_NAME,
                  layout.FACTS_SCRIPT_NAME, layout.RETENTION_SCRIPT_NAME)
SERVER_SCRIPT_FOLDERS = (layout.RETENTION_PLANNER_DIR.rpartition("/")[2],)


def scripts_plan(state: HostState) -> FolderPlan:
    """The scripts folder's teardown on a server (a folder named after the kit: no marker)."""
    return plan_folder(state, layout.SCRIPTS_DIR, SERVER_SCRIPTS, needs_marker=False,
                       removed_subfolders=SERVER_SCRIPT_FOLDERS)


def server_remove(settings: Settings, state: HostState) -> None:
    """The container, config.yml/certs/htpasswd, the token server, the kit's scripts; the
    data folder only with registry_purge_data=True (announced, host and path, first)."""
    remove_container(settings, state, name="Remove the registry container")
    token_server.remove_token_service(state, name="Remove the token server (token auth)")
    plans = config_plans(settings, state)
    log_kept(plans)
    remove_folders(plans, name="Remove the registry config, certificates and htpasswd")
    # Folders named after the kit itself: its files go, the folder when nothing else is in it.
    kit_dirs = [scripts_plan(state),
                plan_folder(state, layout.RUNTIME_DIR, client.RUNTIME_FILES, needs_marker=False,
                            removed_subfolders=[layout.candidate(settings.registry_container_name)])]
    log_kept(kit_dirs)
    remove_folders(kit_dirs, name="Remove the kit's scripts")
    remove_data(settings, state, name="Remove the registry data (registry_purge_data)")
    action = data_action(settings, state)
    if action in ("purge", "refuse"):
        # Before any operation runs: the whole run's output starts with this line.
        logger.warning(purge_warning(settings) if action == "purge" else purge_refusal(settings))


# --- status.py: the container, /v2/, the certificate and the storage, read-only ---

REPOSITORIES = "docker/registry/v2/repositories"


def status_command(settings: Settings) -> str:
    container = q(settings.registry_container_name)
    fmt = "{{.Config.Image}}|{{.State.Status}}|{{.State.StartedAt}}|{{.RestartCount}}"
    url, resolve, ca = health_target(settings)
    ca_opt = "" if ca == "-" else f" --cacert {q(ca)}"
    parts = [
        section_command("container"),
        f"docker inspect --type container --format {q(fmt)} {container} 2>/dev/null || true",
        section_command("uptime"),
        f"s=$(docker inspect --type container --format '{{{{.State.StartedAt}}}}' "
        f"{container} 2>/dev/null) && echo $(( $(date +%s) - $(date -d \"$s\" +%s)"
        " )) || true",
        # The registry binary says its own version (`registry` is on PATH in the official
        # 2.x and 3.x images; garbage_collect.py runs it the same way). Read-only.
        section_command("version"),
        f"docker exec {container} registry --version 2>/dev/null | head -n 1 || true",
        section_command("health"),
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --resolve {q(resolve)}"
        f"{ca_opt} {q(url + '/v2/')} 2>/dev/null; echo"]
    if settings.tls_enabled:
        cert = ServerLayout.of(settings).cert
        parts += [section_command("cert"), f"cat {q(cert)} 2>/dev/null || true"]
    data_dir = settings.registry_data_dir
    repos = posixpath.join(data_dir, REPOSITORIES)
    parts += [section_command("bytes"), f"du -sb {q(data_dir)} 2>/dev/null | cut -f1",
              section_command("repos"),
              f"find {q(repos)} -type d -name _manifests 2>/dev/null | wc -l",
              section_command("tags"),
              f"find {q(repos)} -path '*/_manifests/tags/*/current/link' 2>/dev/null | wc -l"]
    return "; ".join(parts)


def human_bytes(value: str) -> str:
    if not value.isdigit():
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return value


def human_duration(seconds: str) -> str:
    if not seconds.lstrip("-").isdigit():
        return "-"
    left = max(int(seconds), 0)
    days, left = divmod(left, 86400)
    hours, left = divmod(left, 3600)
    minutes, secs = divmod(left, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    """The server table's columns; the GC timer's (gc_timer.status_row) follows."""
    image, state, _, restarts = ([*first_line(sections, "container").split("|"),
                                  "", "", "", ""])[:4]
    cert_pem = "\n".join(sections.get("cert", [])).encode()
    try:
        days = f"{tls.certificate_days_left(cert_pem)}" if cert_pem.strip() else "-"
    except (tls.TLSError, ValueError):  # a garbled file is a status to show, not a crash
        days = "unreadable"
    filesystem = settings.registry_storage.driver == "filesystem"
    return {
        "server": settings.host,
        "image": image or "-",
        "version": binary_version(first_line(sections, "version")) or "-",
        "state": (state + (f" ({restarts} restarts)" if restarts not in ("", "0") else ""))
        if state else "no container",
        "uptime": human_duration(first_line(sections, "uptime")) if state == "running" else "-",
        "/v2/": first_line(sections, "health") or "-",
        "cert days": days if settings.tls_enabled else "no TLS",
        "storage": human_bytes(first_line(sections, "bytes")) if filesystem else
        settings.registry_storage.driver,
        "repos": first_line(sections, "repos") if filesystem else "-",
        "tags": first_line(sections, "tags") if filesystem else "-",
    }
