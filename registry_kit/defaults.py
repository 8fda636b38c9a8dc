"""registry-kit's settings and their package defaults: every knob, its default and what it
means. The kit reads this module (registry_kit.model.settings.known_keys); a project needs no
group_data of its own. Override per group in group_data/<group>.py, per host in the
inventory, per run with `--data key=value`, or for one call of the API
(`registry_kit.api.registry(settings={...})`). Plain literals only. The README's settings
table and the repo's group_data/all.py (the documented example) mirror this file; tests
check that they agree.
"""

# --- Registry service (hosts in registry_servers) ---
registry_domain = "registry.example.internal"  # name clients push to; the certificate covers it
registry_port = 5000  # published TCP port; 443 lets clients use the bare domain
registry_image = "registry:2"  # registry image reference; pin a tag or a digest
registry_version = None  # 2 or 3: the registry's major version when registry_image's tag can't tell
registry_image_archive = None  # control-machine `docker save` tar, loaded on air-gapped servers
registry_container_name = "registry"  # name of the registry container on servers
registry_bind_address = None  # publish the port on this server address only; None: every address
registry_config_dir = "/etc/registry-kit"  # servers: config.yml, certs/, auth/ (root only)
registry_data_dir = "/var/lib/registry-kit/data"  # servers: image data (filesystem storage)
registry_storage = {"driver": "filesystem"}  # filesystem | s3 | azure | gcs | inmemory, see README
registry_delete_enabled = False  # allow DELETE of manifests (needed before garbage collection)
registry_http_secret = None  # {"env": NAME} or {"file": PATH}; None: generated once, kept locally
registry_log_level = "info"  # error | warn | info | debug
registry_debug_addr = None  # e.g. "127.0.0.1:5001": debug and /metrics, localhost only
registry_webui_enabled = False  # serve the web page (browse, delete) on registry_webui_port
registry_webui_port = 5444  # the page's HTTPS port on servers: same domain, TLS, users
registry_verify_timeout = 60  # seconds to wait for /v2/ after a (re)start before failing

# --- TLS ---
registry_tls_mode = "self-signed"  # self-signed (kit's own CA) | provided | none (plain HTTP)
registry_tls_cert_file = None  # provided: server certificate (chain allowed), control machine
registry_tls_key_file = None  # provided: its private key, control machine
registry_tls_ca_file = None  # provided: CA certificate clients must trust, control machine
registry_tls_extra_names = []  # extra DNS names in the certificate
registry_tls_extra_ips = []  # extra IP addresses in the certificate
registry_tls_none_acknowledged = False  # must be True to send passwords over plain HTTP

# --- Users (htpasswd, bcrypt) ---
registry_users = []  # [{"name": "ci", "password_env": VAR}] or password_file / password_hash
registry_allow_plain_passwords = False  # allow {"password": "..."} in group data (not advised)
registry_groups = {}  # {"readers": ["alice", "bob"]}: groups of registry_users for rules
registry_access_rules = None  # None: users may do everything; a list: per-repository rules (README)
registry_token_port = 5443  # access rules: the token server's port on each server (and the LB)
registry_anonymous_acknowledged = False  # must be True to run a registry without users (open)

# --- Scale-out: several registry_servers, registry_lb (haproxy), registry_cache (redis) ---
registry_internal_address = None  # address other kit hosts reach this host at; None: ssh_hostname
registry_storage_redirect_disabled = False  # True: replicas serve blobs, no redirect to S3
registry_storage_check = True  # s3: HEAD the bucket from the control machine before any change
registry_lb_mode = "passthrough"  # passthrough (TCP, replicas terminate TLS) | terminate (haproxy)
registry_lb_stats = None  # e.g. "127.0.0.1:8404": haproxy stats page on the LB's loopback
registry_lb_drain_timeout = 10  # seconds a drained replica gets to finish its connections
registry_cache_port = 6379  # redis port on the registry_cache host
registry_cache_password = None  # {"env": NAME} or {"file": PATH}; None: generated once, kept
registry_cache_db = 0  # redis database number the registry uses (0-15)
registry_cache_maxmemory = "256mb"  # redis maxmemory; evicts with allkeys-lru (registry docs)
registry_lb_vip = None  # e.g. "10.0.0.100/24": floating address over registry_lb (keepalived)
registry_lb_vip_interface = None  # e.g. "eth0"; None: the interface whose network holds the VIP
registry_lb_vrrp_password = None  # {"env": NAME} or {"file": PATH}, 1-8 chars; None: generated
registry_lb_vrrp_router_id = 51  # VRRP virtual_router_id (1-255), unique on the network
registry_lb_vrrp_unicast = False  # True: VRRP to the other LBs' internal addresses, no multicast
registry_packages_remove_on_teardown = False  # teardown.py: also purge haproxy/keepalived/redis

# --- Client hosts (registry_clients) ---
registry_client_login_user = None  # `docker login` on clients as this user (with a password)
registry_client_system_trust = False  # also add the CA to the OS trust store (restarts Docker once)
registry_client_hosts_entries = {}  # {"registry.example.internal": "10.0.0.5"} for /etc/hosts

# --- Lifecycle (teardown.py, gc.py) ---
registry_purge_data = False  # teardown.py: also delete registry_data_dir if the kit created it
registry_gc_dry_run = False  # gc.py: only report what garbage collection would delete
registry_gc_delete_untagged = False  # gc.py: also delete manifests no tag points to (see README)
registry_gc_schedule = None  # OnCalendar, e.g. "Sun *-*-* 03:00:00": timed GC (not: shared storage)

# --- Backup and restore (backup.py, restore.py; filesystem storage) ---
registry_backup_dir = None  # absolute folder for backups; None: <registry_state_dir>/backups
registry_backup_host = None  # inventory host holding registry_backup_dir; None: control machine
registry_backup_verify = False  # backup.py: re-hash every blob in the backup, report mismatches
registry_backup_keep = 7  # backup.py: generations (tree + index) kept; blobs shared by digest
registry_backup_tree_max_bytes = 4 << 30  # backup/restore: stop a repositories tar past this size
registry_restore_from = None  # restore.py: backup folder (with index.json); None: latest of host
registry_restore_generation = None  # restore.py: generation folder name; None: the newest

# --- Pull-through cache (registry_mode = "pull-through-cache") ---
registry_mode = "registry"  # registry | pull-through-cache (read-only copy of another registry)
registry_proxy_remoteurl = None  # cache: URL of the registry to cache, e.g. https://upstream:5000
registry_proxy_username = None  # cache: user at the remote registry (with the password)
registry_proxy_password = None  # cache: {"env": NAME} or {"file": PATH} for that user
registry_proxy_ttl = None  # cache: e.g. "72h", registry 3 only (2.8 keeps blobs 168h)
registry_proxy_anonymous_acknowledged = False  # cache: True: no users though it logs in upstream
registry_proxy_plaintext_acknowledged = False  # cache: True to send the upstream login over http://

# --- Control machine ---
registry_state_dir = ".registry-kit"  # CA key, issued certificates, http secret (git-ignored)

# --- Docker engine (every managed host) ---
docker_install_method = "distro"  # distro (docker.io) | docker-ce (Docker's repository) | none
docker_ce_repo_url = None  # docker-ce: base URL of Docker's package repository for your OS family
docker_min_version = "1.6.0"  # refuse engines older than this (the registry's minimum)
docker_registry_mirrors = []  # daemon.json registry-mirrors (pull-through for Docker Hub images)
docker_live_restore = None  # daemon.json live-restore: True/False to manage it, None to leave it
docker_remove_on_teardown = False  # teardown.py: also remove the Docker engine the kit installed
