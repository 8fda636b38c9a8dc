"""Plain HTTP on a closed network: clients list the registry in daemon.json
insecure-registries (applied by reload, running containers keep running). Passwords
would cross the network in clear, so this example has no users; with users, set
registry_tls_none_acknowledged = True.
"""

registry_domain = "registry.lab.internal"
registry_port = 5000
registry_tls_mode = "none"
registry_users = []
registry_client_hosts_entries = {"registry.lab.internal": "192.0.2.10"}  # no internal DNS
