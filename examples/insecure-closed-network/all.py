"""Plain HTTP on a closed network: clients list the registry in daemon.json
insecure-registries (applied by reload, running containers keep running). Passwords
would cross the network in clear, so this example has no users, which makes the registry
open to anyone who reaches the port: both are asked for by name below. With users, set
registry_tls_none_acknowledged = True instead.
"""

registry_domain = "registry.lab.internal"
registry_port = 5000
registry_tls_mode = "none"
registry_users = []
registry_anonymous_acknowledged = True  # no users: anyone on the network may push
registry_bind_address = "192.0.2.10"  # publish on the closed network's address only
registry_client_hosts_entries = {"registry.lab.internal": "192.0.2.10"}  # no internal DNS
