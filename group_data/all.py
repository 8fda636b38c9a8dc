"""registry-kit settings for this project: the documented example of overrides.

Every setting is shown here at its default. The declarations in
registry_kit/model/settings.py hold the defaults, so the kit works without this file; this
file is generated from them (`make settings-docs`) and a test fails when it is stale.
Change what this project needs, or override per group in group_data/<group>.py
(registry_servers, registry_clients), per host in the inventory, or per run with
`--data key=value`. Plain literals only: registry_kit.model.settings reads and validates
them once, before any host is touched.
"""

# --- Registry service (hosts in registry_servers) ---
registry_domain = "registry.example.internal"  # name clients push to; the certificate covers it
registry_port = 5000  # published TCP port; 443 lets clients use the bare domain
registry_image = "registry:2"  # registry image reference; pin a tag or a digest
# 2 or 3: the registry's major version, when `registry_image`'s tag does not tell it (see "Running
# and upgrading to registry 3")
registry_version = None
registry_image_archive = None  # control-machine `docker save` tar, loaded on air-gapped servers
registry_container_name = "registry"  # name of the registry container on servers
registry_bind_address = None  # publish the port on this server address only; None: every address
registry_config_dir = "/etc/registry-kit"  # servers: config.yml, certs/, auth/ (root only)
registry_data_dir = "/var/lib/registry-kit/data"  # servers: image data (filesystem storage)
registry_delete_enabled = False  # allow DELETE of manifests (needed before garbage collection)
registry_http_secret = None  # {"env": NAME} or {"file": PATH}; None: generated once, kept locally
registry_log_level = "info"  # error / warn / info / debug
registry_debug_addr = None  # e.g. "127.0.0.1:5001": debug and /metrics, localhost only
registry_verify_timeout = 60  # seconds to wait for /v2/ after a (re)start before failing

# --- Storage ---
registry_storage = {"driver": "filesystem"}  # filesystem / s3 / azure / gcs / inmemory, see README
# `storage.redirect.disable`: replicas serve blobs instead of redirecting clients to S3
registry_storage_redirect_disabled = False
# s3: signed HEAD on the bucket from the control machine before any change
registry_storage_check = True

# --- TLS ---
registry_tls_mode = "self-signed"  # self-signed (kit's own CA) / provided / none (plain HTTP)
registry_tls_cert_file = None  # provided: server certificate (chain allowed), control machine
registry_tls_key_file = None  # provided: its private key, control machine
registry_tls_ca_file = None  # provided: CA certificate clients must trust, control machine
registry_tls_extra_names = []  # extra DNS names in the certificate
registry_tls_extra_ips = []  # extra IP addresses in the certificate
registry_tls_none_acknowledged = False  # must be True to send passwords over plain HTTP

# --- Users (htpasswd, bcrypt) ---
registry_allow_plain_passwords = False  # allow {"password": "..."} in group data (not advised)
registry_users = []  # [{"name": "ci", "password_env": VAR}] or password_file / password_hash
registry_anonymous_acknowledged = False  # must be True to run a registry without users (open)

# --- Access per repository ---
registry_groups = {}  # {"readers": ["alice", "bob"]}: groups of registry_users, for access rules
# None: every user may do everything; a list of rules: per-repository access control (see "Access
# control per repository")
registry_access_rules = None
# auto: token auth (the kit's token server) whenever there are users, so a request costs a signature
# check, not a bcrypt check; htpasswd: the registry checks bcrypt per request (no access rules)
registry_auth_mode = "auto"
# token auth: the token server's TLS port on each server (and on the load balancer)
registry_token_port = 5443
# users and groups from a directory: {'url': 'ldaps://...', 'base_dn': ..., 'bind_dn': ...,
# 'bind_password_env' or 'bind_password_file': ..., 'user_filter': '(uid={user})', 'group_filter' or
# 'member_of', 'ca_file'} (see "Users and groups from a directory")
registry_ldap = None
# must be True for a plain ldap:// registry_ldap without start_tls (passwords in clear)
registry_ldap_plaintext_acknowledged = False

# --- Client hosts (registry_clients) ---
registry_client_login_user = None  # `docker login` on clients as this user (with a password)
registry_client_system_trust = False  # also add the CA to the OS trust store (restarts Docker once)
registry_client_hosts_entries = {}  # {"registry.example.internal": "10.0.0.5"} for /etc/hosts

# --- Scale-out: several registry_servers, registry_lb (haproxy), registry_cache (redis) ---
# address other kit hosts reach this host at; None: its ssh_hostname (replicas and the cache need a
# non-loopback one; the cache's must be an IP)
registry_internal_address = None
# passthrough (TCP, replicas terminate TLS) / terminate (haproxy serves the certificate, sets
# X-Forwarded-Proto/For, re-encrypts)
registry_lb_mode = "passthrough"
# e.g. "127.0.0.1:8404": haproxy stats page on the load balancer's loopback
registry_lb_stats = None
# seconds a drained replica gets to finish its connections before it is replaced
registry_lb_drain_timeout = 10
registry_cache_port = 6379  # redis port on the registry_cache host
# {"env": NAME} or {"file": PATH}; None: generated once into .registry-kit/secrets/
registry_cache_password = None
registry_cache_db = 0  # redis database number the replicas use (0-15)
# redis maxmemory; evicts with allkeys-lru, as the registry docs ask
registry_cache_maxmemory = "256mb"

# --- Floating address over registry_lb (keepalived) ---
# floating address over the `registry_lb` hosts (keepalived), e.g. `"10.0.0.100/24"`; IPv4; clients'
# domain resolves to it
registry_lb_vip = None
# interface for the floating address, e.g. `"eth0"`; None: the interface whose network holds it, on
# each LB
registry_lb_vip_interface = None
# {"env": NAME} or {"file": PATH}, 1-8 characters (VRRP's limit); None: generated once, kept locally
registry_lb_vrrp_password = None
# VRRP virtual_router_id (1-255), unique among VRRP groups on the network
registry_lb_vrrp_router_id = 51
# True: VRRP to the other LBs' `registry_internal_address` (IPv4) instead of multicast
registry_lb_vrrp_unicast = False
# 2: VRRPv2 with the password; 3: VRRPv3 (RFC 5798), adverts faster than 1 s but no authentication
# (trusted segment only)
registry_lb_vrrp_version = 2
# seconds between VRRP adverts (three missed: a dead holder); version 2: whole, 1-255; version 3:
# 0.01-40.95 in 0.01 steps
registry_lb_vrrp_advert_seconds = 1

# --- Pull-through cache (registry_mode = "pull-through-cache") ---
# registry / pull-through-cache (a read-only cache of `registry_proxy_remoteurl`, registry 3 only,
# see below)
registry_mode = "registry"
# cache: URL of the registry it caches, e.g. `https://upstream.example:5000`
registry_proxy_remoteurl = None
registry_proxy_username = None  # cache: user at the remote registry (with the password)
# cache: {"env": NAME} or {"file": PATH}; written only into config.yml (0600)
registry_proxy_password = None
# cache: how long pulled content is kept, e.g. "72h"; registry 3 only (2.8: fixed 168h)
registry_proxy_ttl = None
# cache: must be True to use `registry_proxy_username` on a cache without `registry_users` (anyone
# who reaches it reads the private upstream)
registry_proxy_anonymous_acknowledged = False
# cache: must be True to send the upstream credentials to an `http://` `registry_proxy_remoteurl`
# (in clear)
registry_proxy_plaintext_acknowledged = False

# --- The web page ---
# serve the web page (browse, delete) on `registry_webui_port` (see "The web page")
registry_webui_enabled = False
# the page's HTTPS port on servers: same domain, TLS and users as the registry (not
# `registry_token_port`)
registry_webui_port = 5444

# --- Observability (status.py, metrics) ---
# status.py: print one JSON document on stdout instead of the tables (schema: "Status as JSON")
registry_status_json = False
# serve Prometheus metrics on the host's internal address: the registry's (servers), haproxy's (load
# balancers), redis' (the cache, Debian's prometheus-redis-exporter); see "Metrics"
registry_metrics = False
# metrics: the endpoint's TCP port on servers, load balancers and the cache
registry_metrics_port = 9195
# metrics: the IP address the endpoint listens on; None: `registry_internal_address` (then an IP)
registry_metrics_bind = None
# metrics: networks allowed to scrape, e.g. `["10.0.0.5/32"]`; the host refuses every other address
registry_metrics_allow = []
# metrics: also serve each host's own metrics (Debian's prometheus-node-exporter: CPU, memory,
# disks) on `/node/metrics` of its metrics endpoint; needs registry_metrics
registry_node_exporter = False
# servers: record each push, delete and denied request as a JSON line (journal and
# /var/log/registry-kit/audit.log); needs Docker 20.10+; see "Audit log"
registry_audit_log = False
# audit log: the receiver's TCP port on the Docker bridge's address (docker0)
registry_audit_port = 5002
# metrics: seconds between scrapes and between rule evaluations in the control machine's generated
# prometheus.yml
registry_prometheus_interval = 15

# --- Docker engine (every managed host) ---
docker_install_method = "distro"  # distro (docker.io) / docker-ce (Docker's repository) / none
docker_ce_repo_url = None  # docker-ce: base URL of Docker's package repository for your OS family
docker_min_version = "1.6.0"  # refuse engines older than this (the registry's minimum)
docker_registry_mirrors = []  # daemon.json registry-mirrors (pull-through for Docker Hub images)
docker_live_restore = None  # daemon.json live-restore: True/False to manage it, None to leave it

# --- Lifecycle (teardown.py, garbage_collect.py) ---
# teardown.py: also delete registry_data_dir (announced first) if the kit created it
registry_purge_data = False
registry_gc_dry_run = False  # garbage_collect.py: only report what garbage collection would delete
# garbage_collect.py: also delete manifests no tag points to (see "Garbage collection")
registry_gc_delete_untagged = False
# systemd OnCalendar, e.g. "Sun *-*-* 03:00:00": timed GC on servers (first server of each storage;
# refused on shared storage)
registry_gc_schedule = None
docker_remove_on_teardown = False  # teardown.py: also remove the Docker engine the kit installed
# teardown.py: also purge haproxy, socat, keepalived (LBs), redis and haproxy (cache) and the
# exporters the kit set up
registry_packages_remove_on_teardown = False

# --- Retention (retention.py) ---
# retention.py: which tags and manifests go, a list of rules like {'repository': 'ci/*',
# 'keep_last': 10, 'keep_always': ['latest']} (see "Retention")
registry_retention_rules = []
# retention.py: delete what the rules select, then collect garbage; False: only report
registry_retention_apply = False
# systemd OnCalendar, e.g. "*-*-* 02:30:00": the rules applied (and GC) by a timer on each server
# (filesystem storage only)
registry_retention_schedule = None

# --- Backup and restore (backup.py, restore.py; filesystem storage) ---
# backup.py: absolute folder for backups (one subfolder per server); None:
# `<registry_state_dir>/backups` on the control machine
registry_backup_dir = None
# inventory host that holds `registry_backup_dir`; None: the control machine
registry_backup_host = None
# backup.py: only re-hash every blob of the backup against its digest and report mismatches (read-
# only: reported as no change)
registry_backup_verify = False
# backup.py: generations (repositories tree + index) kept per server, 1 to 1000; blobs are shared
# between them by digest and removed only when no kept generation needs them
registry_backup_keep = 7
# backup.py/restore.py: a repositories tree tar larger than this (4 GiB) stops the run (the tree is
# held in memory); 1 MiB to 1 TiB
registry_backup_tree_max_bytes = 4 << 30
# restore.py: backup folder holding index.json; None: `<registry_backup_dir>/<server>`
registry_restore_from = None
# restore.py: the generation to restore (its folder name under `generations/`, like
# `20260101T120000.000Z`); None: the newest
registry_restore_generation = None

# --- Disk guard (filesystem storage) ---
# servers on filesystem storage: the registry turns read-only when its data filesystem is this full
# (percent, 50 to 99); None: no guard
registry_disk_readonly_percent = 90
# the guard makes it writable again below this (percent, 1 to 98, under
# registry_disk_readonly_percent)
registry_disk_writable_percent = 85

# --- Control machine ---
registry_state_dir = ".registry-kit"  # CA key, issued certificates, http secret (git-ignored)
# use the kit's two pyinfra speed-ups (same result, less CPU; only on the pyinfra versions they were
# tested on); process-wide: False on any host of a run turns them off for the run
registry_pyinfra_patches = True
