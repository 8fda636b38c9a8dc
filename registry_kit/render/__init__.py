"""Pure renderers: settings in, bytes or data out (config.yml, htpasswd, TLS material,
daemon.json, line-based text files). No host access."""
