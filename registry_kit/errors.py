"""The kit's exceptions. A refused setting is a SettingsError whose str() is the one line
shown to the user; the repo's entry scripts (deploy.py, ...) turn a RegistryKitError into
exit code 1 with that line, a project using the API decides for itself."""


class RegistryKitError(Exception):
    """Anything the kit refuses; str() is one line naming host, setting and what is allowed."""


class SettingsError(RegistryKitError, ValueError):
    """A bad setting (or a host or backup that cannot be used as the settings say)."""
