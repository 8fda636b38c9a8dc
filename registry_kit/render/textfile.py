"""Values the kit pastes into line-based text files: haproxy.cfg, redis.conf, systemd units
and /etc/hosts lines.

These files have no serializer worth the name, so each value is checked here against what
the file's syntax allows before it is pasted: whatever string reaches a renderer (settings.py
validates first; this is the second line of defence), it cannot add a line, an argument, a
comment or a quoted section. A value that would raises ValueError naming the file and the
field; a secret's value is never shown in that message.
"""

from __future__ import annotations

import shlex

# Characters each file reads as syntax inside a line (beyond whitespace and line breaks).
HAPROXY_SYNTAX = "#\\\"'$"  # comment, escape, quotes, environment variable expansion
REDIS_SYNTAX = "\"'"  # quotes start a quoted argument anywhere in a word (sdssplitargs)
HOSTS_SYNTAX = "#"  # comment
KEEPALIVED_SYNTAX = "#!\"'{}\\"  # comments (# and !), quoted strings, blocks, escapes
# systemd Exec lines: quotes may only wrap a whole word, "\" starts C escapes and line
# continuations, a ";" word separates commands. "%" and "$" are escaped, not refused.
SYSTEMD_EXEC_SYNTAX = "\"'\\;"


def _refuse(file: str, field: str, value: str, secret: bool, what: str) -> ValueError:
    shown = "(secret)" if secret else repr(value)
    return ValueError(f"registry-kit: {file}: {field}={shown} cannot be written: {what}")


def word(value: object, *, file: str, field: str, forbidden: str = "",
         secret: bool = False) -> str:
    """value as one whitespace-free word of `file`: not empty, no whitespace, line break
    or other non-printable character, none of `forbidden`."""
    text = str(value)
    if not text:
        raise _refuse(file, field, text, secret, "it is empty")
    for char in text:
        if char.isspace() or not char.isprintable():
            raise _refuse(file, field, text, secret,
                          f"it holds whitespace or a control character ({char!r})")
        if char in forbidden:
            raise _refuse(file, field, text, secret,
                          f"it holds {char!r}, which {file} reads as syntax")
    return text


def rest_of_line(value: object, *, file: str, field: str, forbidden: str = "") -> str:
    """value as the rest of a line of `file`: words separated by single ASCII spaces are
    allowed; no other whitespace, line break or non-printable character, none of
    `forbidden`."""
    text = str(value)
    if text != text.strip(" ") or "  " in text:
        raise ValueError(f"registry-kit: {file}: {field}={text!r} cannot be written: "
                         "leading, trailing or repeated spaces")
    for part in text.split(" "):
        word(part, file=file, field=field, forbidden=forbidden)
    return text


def systemd_specifiers(text: str) -> str:
    """Any non-literal text in a unit file: "%" starts a specifier (%n, %h...)."""
    return text.replace("%", "%%")


def systemd_unit(header: str, sections: dict[str, list[str]]) -> str:
    """A systemd unit: a comment line, then each [section] with its lines."""
    return (f"# {header}\n" + "\n\n".join(f"[{name}]\n" + "\n".join(lines)
                                         for name, lines in sections.items()) + "\n")


def systemd_exec_args(args: list[str], *, file: str, field: str) -> str:
    """An Exec*= command line: each argument a checked word, shell-quoted (systemd reads
    whole-word single quotes), then "%" and "$" escaped as systemd expands both anywhere
    in the line, quoted or not."""
    words = [shlex.quote(word(arg, file=file, field=f"{field} argument {index}",
                              forbidden=SYSTEMD_EXEC_SYNTAX))
             for index, arg in enumerate(args)]
    return systemd_specifiers(" ".join(words)).replace("$", "$$")


# systemd EnvironmentFile= lines: quotes and "\\" are syntax there; "$" is refused as well
# (some systemd versions expand variables in these files) and so is "`".
SYSTEMD_ENV_SYNTAX = "\"'\\$`"


def systemd_environment(pairs: list[tuple[str, str]], *, file: str, secret: bool) -> str:
    """An EnvironmentFile: one KEY=VALUE line each, every value one checked word."""
    lines = [f"{key}=" + word(value, file=file, field=key, forbidden=SYSTEMD_ENV_SYNTAX,
                              secret=secret) for key, value in pairs]
    return "".join(f"{line}\n" for line in lines)


# curl -K reads these escapes inside a quoted string (tool_parsecfg.c, unslashquote).
_CURL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t",
                 "\v": "\\v"}


def curl_config_string(value: str, *, field: str) -> str:
    """value for a double-quoted string in a curl config file: the line cannot end and the
    string cannot close early, whatever value holds. NUL (curl would cut there): refused."""
    if "\0" in value:
        raise ValueError(f"registry-kit: curl config: {field}=(secret) cannot be written: "
                         "it holds a NUL character")
    return "".join(_CURL_ESCAPES.get(char, char) for char in value)
