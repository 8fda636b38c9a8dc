"""Self-signed TLS (the default): the kit's own CA on the control machine, clients trust it
under /etc/docker/certs.d/. Use: pyinfra --group-data examples/self-signed INV deploy.py
"""

registry_domain = "registry.example.internal"
registry_port = 5000
registry_tls_mode = "self-signed"
registry_tls_extra_ips = ["10.0.0.5"]  # clients that use the IP too
registry_users = [
    {"name": "ci", "password_env": "REGISTRY_CI_PASSWORD"},
    {"name": "alice", "password_file": "secrets/alice.password"},
]
registry_client_login_user = "ci"
