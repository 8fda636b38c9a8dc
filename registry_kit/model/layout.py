"""One path layout for the registry container: where it sees its files. Fixed: the host
folders (registry_config_dir, registry_data_dir) are bind-mounted here, so a changed host
folder does not change the registry's view. config.yml (registry_kit.render.config), the
`docker run` arguments (registry_kit.commands) and scripts/registry-gc.sh (`inner=`) use
these; the folders on the host are registry_kit.roles.server.ServerPaths.
"""

CONTAINER_CONFIG_DIR = "/etc/registry-kit"
CONTAINER_DATA_DIR = "/var/lib/registry"
CONTAINER_CONFIG_FILE = f"{CONTAINER_CONFIG_DIR}/config.yml"
CONTAINER_CERT = f"{CONTAINER_CONFIG_DIR}/certs/server.crt"
CONTAINER_KEY = f"{CONTAINER_CONFIG_DIR}/certs/server.key"
CONTAINER_HTPASSWD = f"{CONTAINER_CONFIG_DIR}/auth/htpasswd"
# Access rules: the token signing certificate the registry checks tokens against.
CONTAINER_TOKEN_SIGNING_CERT = f"{CONTAINER_CONFIG_DIR}/certs/token-signing.crt"
