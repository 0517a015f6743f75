"""TOML configuration -> frozen, validated settings.

Owns the schema: every key, its type, its default, and the one-line
message a user sees when it is wrong.  It reads the file and checks that
files it names exist; it never creates anything, opens sockets or starts
services (that is ``service.py``).

Every problem is collected, not just the first, and reported as
``<file>: [section] key: why`` so ``mailhub check`` can list them all,
with `` (at line N)`` after it when the key (or the list item) is written
in the file (``config_lines``), as tomllib places a syntax error.  A
warning about a key or a value (``Settings.warnings``) ends the same way,
and ``Settings.at`` gives the same ending to what is found once the file
is loaded (``mailhub check``'s judgement of the files it names).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import stat
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from txmailhub import config_lines
from txmailhub.address import (
    address_literal,
    ascii_domain,
    canonical_domain,
    client_ip,
    dns_name_problem,
    domain_problem,
)
from txmailhub.disk_names import on_disk
from txmailhub.errors import ConfigError
from txmailhub.listen_spec import ListenSpec, parse_listen
from txmailhub.logsafe import quoted
from txmailhub.passwords import DEFAULT_MIN_LENGTH, MAX_LENGTH
from txmailhub.regular_file import NotRegularFile, PipeTimeout, read_regular
from txmailhub.relay.schedule import describe_delay

__all__ = [
    "AliasesSettings",
    "HubSettings",
    "KeyLines",
    "POP3Settings",
    "RelaySettings",
    "SMTPSettings",
    "Settings",
    "SubmissionSettings",
    "TLSSettings",
    "UsersSettings",
    "LocalSubmission",
    "CONFIG_MAX",
    "LINK_LOCAL",
    "SYSTEM_CONFIG",
    "default_config_path",
    "empty_config_path",
    "listen_address",
    "load",
    "load_local_submission",
    "load_text",
    "parse_duration",
]

#: the config file of a hub installed system-wide: what ``mailhub``,
#: ``twistd mailhub`` and ``txmailhub-sendmail`` read when neither their
#: option nor ``$MAILHUB_CONFIG`` names one
SYSTEM_CONFIG = "/etc/txmailhub/mailhub.toml"


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    """The config file to read when the command line names none:
    ``$MAILHUB_CONFIG``, else ``SYSTEM_CONFIG``.  An empty variable counts
    as unset (a shell's ``MAILHUB_CONFIG=`` clears it, and the current
    folder must not be read as a config file).  The one rule for every
    command, so that ``mailhub check`` checks the file the hub runs on."""
    env = os.environ if environ is None else environ
    return env.get("MAILHUB_CONFIG") or SYSTEM_CONFIG


def empty_config_path(option: str) -> str:
    """What every command says of an explicit empty config path
    (``--config=``, ``-c ''``, sendmail's ``-C ''``): a usage error, not
    the default file.  ``--config "$CONF"`` with ``$CONF`` unset or
    misspelt would otherwise run, or check, another file than the one
    meant, without a word.  (An empty ``$MAILHUB_CONFIG`` is different: a
    cleared variable, so unset.)"""
    return (f"{option}: the path is empty; leave the option out to read $MAILHUB_CONFIG, "
            f"else {SYSTEM_CONFIG}")


# ASCII digits and blanks only: Python's \d takes any script's digits
# (Arabic-Indic "15m" would be 15 minutes), and $ a trailing newline
_DURATION = re.compile(r"[ \t]*([0-9]+)[ \t]*([smhd]?)[ \t]*\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
SERVER_ENDPOINT_TYPES = ("tcp", "tcp6", "unix")
#: the longest duration any key takes (100 years): no timer needs more, and
#: a ``queue_lifetime`` past the year 9999 made every "delayed" notice fail
#: (its Will-Retry-Until date cannot be written)
MAX_DURATION = 36500 * 86400
#: the longest ``auth_failure_delay``, in seconds: a client waits minutes,
#: not hours, for a reply (RFC 5321 4.5.3.2), and a delay that grows to
#: infinity (TOML's ``inf``, or a huge one times the failures) never answers
MAX_AUTH_FAILURE_DELAY = 3600.0


def parse_duration(value: str | int) -> int:
    """``"30s"``, ``"5m"``, ``"4h"``, ``"5d"`` or plain seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"30s\", \"5m\", \"4h\" or \"5d\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _bounded_duration(value, value)
    if not isinstance(value, str):
        raise ValueError("expected a duration like \"30s\", \"5m\", \"4h\" or \"5d\"")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(
            f"unknown duration {quoted(value)}: use a number with s, m, h or d "
            '("30s", "5m", "4h", "5d")'
        )
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > 12:
        # over MAX_DURATION in any unit, and Python reads no integer of
        # over 4300 digits (its error named sys.set_int_max_str_digits)
        shown = value if len(value) <= 40 else value[:20] + "..." + value[-8:]
        raise ValueError(f"{quoted(shown)} is too long: a duration is at most 36500d (100 years)")
    return _bounded_duration(int(digits) * _UNITS[m.group(2)], value)


def _bounded_duration(seconds: int, value: str | int) -> int:
    """``seconds`` unless over ``MAX_DURATION``: a typo (or a "forever")
    is said at once, not found when a notice cannot be dated."""
    if seconds > MAX_DURATION:
        raise ValueError(f"{quoted(value)} is too long: a duration is at most 36500d (100 years)")
    return seconds


@dataclass(frozen=True)
class HubSettings:
    hostname: str
    state_dir: str
    domains: tuple[str, ...]
    # octets a local mailbox may hold before RCPT to it gets 452 4.2.2
    # (a soft quota, checked at RCPT only); 0: no quota
    mailbox_quota: int = 0
    # twistd's own numbered log files (``--logfile``: ``mailhub.log.1``,
    # ``.2``, ... made at 1 MB and on SIGUSR1) kept; older ones are
    # deleted.  0: all kept, as twistd keeps them (without an outside
    # rotator the log then fills the disk by 1 MB at a time)
    log_files_kept: int = 10

    @property
    def primary_domain(self) -> str:
        return self.domains[0]


@dataclass(frozen=True)
class UsersSettings:
    file: str
    # the shortest password `mailhub user add`/`passwd` accept (NIST SP
    # 800-63B: at least 8); existing users are not affected
    min_password_length: int = DEFAULT_MIN_LENGTH
    # "warn": a weak new password is taken with a warning (the commands'
    # behaviour before the policy, which scripts rely on); "enforce": it
    # is refused unless --allow-weak
    password_policy: str = "warn"


@dataclass(frozen=True)
class AliasesSettings:
    file: str | None


@dataclass(frozen=True)
class TLSSettings:
    certificate: str
    key: str


@dataclass(frozen=True)
class SMTPSettings:
    listen: tuple[str, ...] = ("tcp:25",)
    relay_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_message_size: int = 26214400
    max_recipients: int = 100
    idle_timeout: int = 300
    max_connections: int = 500
    max_connections_per_client: int = 50
    max_errors: int = 10
    max_junk_commands: int = 100
    max_auth_failures: int = 3
    auth_failure_delay: float = 1.0
    vrfy: bool = True
    expn: bool = True

    def relay_allowed_from(self, host: str) -> bool:
        """Whether a client at ``host`` may relay without AUTH."""
        ip = client_ip(host)
        if ip is None:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.relay_networks)


@dataclass(frozen=True)
class SubmissionSettings:
    listen: tuple[str, ...] = ("tcp:587",)
    tls_listen: tuple[str, ...] = ()


@dataclass(frozen=True)
class POP3Settings:
    listen: tuple[str, ...] = ("tcp:110",)
    tls_listen: tuple[str, ...] = ()
    idle_timeout: int = 600
    allow_plaintext_auth: bool = False
    max_auth_failures: int = 3
    auth_failure_delay: float = 1.0
    max_connections: int = 200
    max_connections_per_client: int = 20
    # commands refused with -ERR after login before the session closes
    max_errors: int = 10


@dataclass(frozen=True)
class RelaySettings:
    port: int = 25
    nameservers: tuple[str, ...] = ()
    smarthost: str = ""
    smarthost_tls: str = "verify"
    smarthost_auth_file: str = ""
    queue_lifetime: int = 5 * 86400
    delay_warning: int = 4 * 3600  # 0 disables the "delayed" DSN
    retry_schedule: tuple[int, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)
    max_per_destination: int = 10
    max_concurrent_deliveries: int = 50
    require_tls_after_seen: bool = False  # refuse a downgrade instead of logging it
    # what one attempt may spend on a destination's hosts before it starts
    # no further one (a session under way is not cut)
    hosts_time_budget: int = 15 * 60


class KeyLines:
    """Where each key of one config text is written, for `` (at line N)``
    after a line about it: the problems and warnings found while loading,
    and those ``mailhub check`` (or the start) finds later, which have only
    the ``Settings``.

    The text is read for its lines (``config_lines``) only once a line is
    asked for: loading a config with nothing to point at, as the hub does
    at its start (it reads the config then only: SIGHUP takes the TLS
    files again, not the config), costs no second read.  The text loaded
    is kept (a few KB, for the Settings' life), not read again: a file
    changed since (an editor saving during ``check``) cannot move a line
    onto another key.  Empty (no
    text): every line unknown, as for ``Settings`` made in code.  No
    ``__slots__``: pickle's protocols 0 and 1 refuse a class with them,
    and ``Settings`` pickled in every protocol before it held one."""

    def __init__(self, text: str = "", doc: dict[str, Any] | None = None) -> None:
        self._text = text
        self._doc = doc
        self._lines: dict[config_lines.Path, int] | None = None

    def line(self, *where: str | int) -> int | None:
        """The line (from 1) the table, key or list item ``where`` (a
        ``config_lines.Path``) is written on; None when the file does not
        hold it (a default, a required key left out) or it is not known."""
        if self._doc is None:
            return None
        if self._lines is None:
            self._lines = config_lines.key_lines(self._text, self._doc)
        return self._lines.get(where)

    def at(self, *where: str | int) -> str:
        """`` (at line N)`` for ``where``, as tomllib says where a syntax
        error is; nothing when its line is not known."""
        line = self.line(*where)
        return f" (at line {line})" if line else ""

    def key_at(self, section: str, key: str | None = None, item: int | None = None) -> str:
        """`` (at line N)`` for ``[section] key``: the line of its
        ``item``-th list item when one is to blame (the key's when the
        item's is not known), else the key's; the section's, with no key."""
        at = self.at(section, key) if key else self.at(section)
        if key and item is not None:
            at = self.at(section, key, item) or at
        return at


@dataclass(frozen=True)
class Settings:
    path: str
    hub: HubSettings
    users: UsersSettings
    aliases: AliasesSettings
    tls: TLSSettings | None
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    pop3: POP3Settings = field(default_factory=POP3Settings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    warnings: tuple[str, ...] = ()
    # where ``hub.hostname`` came from, in the words of the warnings that
    # judge a certificate by it (the start's and a renewal's alike): the
    # machine's name when [hub] hostname is not set
    hostname_from: str = "[hub] hostname"
    # where the file wrote each key: for a line about one found after
    # loading (``at``); not part of what the settings are
    lines: KeyLines = field(default_factory=KeyLines, compare=False, repr=False)
    # a TLS file this user cannot read, loaded for a command that uses no
    # TLS (``load(tls_needed=False)``): one line each, for it to warn of
    tls_unread: tuple[str, ...] = ()

    def at(self, section: str, key: str | None = None, item: int | None = None) -> str:
        """`` (at line N)`` for a line about ``[section] key`` (its
        ``item``-th list item): where the file writes it, as the problems
        and warnings found while loading say; nothing for a default."""
        return self.lines.key_at(section, key, item)

    @property
    def mail_dir(self) -> str:
        return os.path.join(self.hub.state_dir, "mail")

    @property
    def queue_dir(self) -> str:
        return os.path.join(self.hub.state_dir, "queue")

    @property
    def spool_dir(self) -> str:
        return os.path.join(self.hub.state_dir, "spool")


# --- the schema -----------------------------------------------------------


class _Reader:
    """Collects problems (and warnings) while reading one table of the
    TOML document."""

    def __init__(self, path: str, base: str, problems: list[str], text: str = "",
                 doc: dict[str, Any] | None = None,
                 warnings: list[str] | None = None) -> None:
        self.path = path
        self.base = base
        self.problems = problems
        self.warnings: list[str] = warnings if warnings is not None else []
        self.lines = KeyLines(text, doc)
        # each section's keys, as the tables are read: where a key that is
        # unknown where it stands belongs (see ``name_homes``)
        self.keys_of: dict[str, set[str]] = {}
        # (index in problems, section or None for the top level, key)
        self._strays: list[tuple[int, str | None, str]] = []

    def at(self, *where: str | int) -> str:
        """`` (at line N)``: where the table, key or list item ``where``
        is written in the file, as tomllib says where a syntax error is;
        nothing for one the file does not hold (a default, a required key
        left out).  The text is read for lines only once a problem or a
        warning needs one (``KeyLines``)."""
        return self.lines.at(*where)

    def _said(self, section: str, key: str | None, why: str, item: int | None) -> str:
        """``<file>: [section] key: why (at line N)``, the line of the
        ``item``-th list item when one is to blame (else the key's, else
        the section's when there is no key)."""
        where = f"[{section}] {key}" if key else f"[{section}]"
        return f"{self.path}: {where}: {why}{self.lines.key_at(section, key, item)}"

    def problem(self, section: str, key: str | None, why: str, item: int | None = None) -> None:
        """A problem with ``[section] key`` (its ``item``-th list item,
        when one is to blame), at the line it is written on."""
        self.problems.append(self._said(section, key, why, item))

    def warn(self, section: str, key: str | None, why: str, item: int | None = None) -> None:
        """A warning about ``[section] key`` (or its ``item``-th list
        item), at the line it is written on, as a problem is: the hub
        starts, but the admin who reads it goes to that line to change it."""
        self.warnings.append(self._said(section, key, why, item))

    def warn_of_default(self, section: str, key: str, why: str) -> None:
        """A warning about the default of ``[section] key``: the file does
        not write it, so there is no line to say (nor a reason to read the
        text for lines: ``KeyLines``)."""
        self.warnings.append(f"{self.path}: [{section}] {key}: {why}")

    def declare(self, section: str, keys: set[str]) -> None:
        """Record ``section``'s keys without reading it (a section that is
        optional and absent still names the home of a key put elsewhere)."""
        self.keys_of[section] = set(keys)

    def table(self, doc: dict[str, Any], section: str, keys: set[str]) -> dict[str, Any]:
        self.declare(section, keys)
        value = doc.get(section, {})
        if not isinstance(value, dict):
            self.problem(section, None, "must be a table")
            return {}
        for key in value:
            if key not in keys:
                known = ", ".join(sorted(keys))
                self._strays.append((len(self.problems), section, key))
                self.problem(section, key, f"unknown key (known keys: {known})")
        return value

    def top_level_key(self, key: str, sections: set[str]) -> None:
        """A value before the first ``[section]`` line (``state_dir = "var"``
        at the top of the file, or a ``[hub]`` line left out): a key outside
        every section, not a section of that name, as it was called."""
        self._strays.append((len(self.problems), None, key))
        self.problems.append(
            f"{self.path}: {key}: a key before the first [section] line, outside every "
            f"section (sections: {', '.join(sorted(sections))}){self.at(key)}")

    def name_homes(self) -> None:
        """Say, for each key unknown where it stands, the section it is a
        key of, once every section's keys are known: ``max_message_size``
        under ``[relay]`` is ``[smtp]``'s, and a list of ``[relay]``'s keys
        alone left the user to search the documentation for it."""
        for index, section, key in self._strays:
            homes = [f"[{home}]" for home, keys in self.keys_of.items()
                     if key in keys and home != section]
            if not homes:
                continue
            where = " or ".join(homes)
            if section is None:
                self.problems[index] = (
                    f"{self.path}: {key}: a key before the first [section] line, outside "
                    f"every section: it goes in {where}{self.at(key)}")
            else:
                known = ", ".join(sorted(self.keys_of[section]))
                self.problems[index] = (
                    f"{self.path}: [{section}] {key}: unknown key in [{section}]: it goes in "
                    f"{where} (known keys of [{section}]: {known}){self.at(section, key)}")

    def get(
        self,
        table: dict[str, Any],
        section: str,
        key: str,
        default: Any,
        convert: Callable[[Any], Any],
    ) -> Any:
        if key not in table:
            return default
        try:
            return convert(table[key])
        except ItemProblems as e:
            for why, item in zip(e.reasons, e.items, strict=True):
                self.problem(section, key, why, item)
            return default
        except (ValueError, TypeError) as e:
            self.problem(section, key, str(e))
            return default

    def resolve(self, p: str) -> str:
        # a path in the file (UTF-8 text) names the same octets whatever
        # the locale, as the config path given on the command line does
        p = on_disk(p)
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(self.base, p))

    def endpoints(self, v: Any) -> tuple[str, ...]:
        return _endpoints(v, self.base)


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {_tname(v)}")
    return v


def _nonempty_string(v: Any) -> str:
    s = _string(v)
    if not s.strip():
        raise ValueError("must not be empty")
    return s


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {_tname(v)}")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected a whole number, got {_tname(v)}")
    if v <= 0:
        raise ValueError(f"must be greater than 0, got {v}")
    return v


def _non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected a whole number, got {_tname(v)}")
    if v < 0:
        raise ValueError(f"must be 0 or more, got {v}")
    return v


def _non_negative_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {_tname(v)}")
    if v < 0:
        raise ValueError(f"must not be negative, got {v}")
    return float(v)


def _auth_failure_delay(v: Any) -> float:
    """Seconds before a failed login's answer: finite and at most
    ``MAX_AUTH_FAILURE_DELAY`` (``inf`` and ``nan`` are TOML floats; with
    either the answer never came)."""
    n = _non_negative_number(v)
    if not n <= MAX_AUTH_FAILURE_DELAY:  # nan compares false
        raise ValueError(f"must be at most {MAX_AUTH_FAILURE_DELAY:.0f} seconds, got {v}")
    return n


def _port(v: Any) -> int:
    n = _positive_int(v)
    if n > 65535:
        raise ValueError(f"{n} is not a port number (1-65535)")
    return n


def _string_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list of strings, got {_tname(v)}")
    for index, item in enumerate(v):
        if not isinstance(item, str):
            raise ItemProblems(
                [f"expected a list of strings, found {_tname(item)} {quoted(item)}"], [index])
    return tuple(v)


def _min_password_length(v: Any) -> int:
    n = _positive_int(v)
    if n > MAX_LENGTH:
        raise ValueError(f"{n} is over the longest password accepted ({MAX_LENGTH} characters): "
                         "no password could be set")
    return n


def _duration(v: Any) -> int:
    return parse_duration(v)


def _positive_duration(v: Any) -> int:
    n = parse_duration(v)
    if n <= 0:
        raise ValueError(f"must be greater than 0, got {quoted(v)}")
    return n


def _tname(v: Any) -> str:
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _not_a_file(path: str) -> str:
    """Why ``path``, which should be a file, is not one."""
    try:
        os.stat(path)
    except PermissionError:
        return f"{path} cannot be reached: permission denied on the way to it"
    except OSError:
        return f"{path} does not exist"
    if os.path.isdir(path):
        return f"{path} is a folder, not a file"
    return f"{path} is not a regular file"


def _listen_spec(description: str) -> ListenSpec:
    """What ``description`` binds, read by ``parse_listen`` when it can
    (``txmailhub-sendmail`` then never imports Twisted's endpoints), by
    Twisted's own parser otherwise; that one raises for a bad string.
    Types as Twisted's endpoint holds them (a port not an int: not TCP)."""
    spec = parse_listen(description)
    if spec is not None:
        return spec
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    endpoint = serverFromString(MemoryReactor(), description)
    path = getattr(endpoint, "_address", None)
    if isinstance(path, str):
        return ListenSpec("unix", path=path)
    return ListenSpec(description.split(":", 1)[0].lower(), getattr(endpoint, "_port", None),
                      getattr(endpoint, "_interface", None))


def _reaches_other_hosts(description: str) -> bool:
    """Whether a listener on ``description`` takes connections from other
    machines: a TCP one on every address or on one that is not loopback;
    not a ``unix:`` socket, nor one bound to a loopback address (a
    description that cannot be read is reported on its own: False)."""
    try:
        spec = _listen_spec(description)
    except Exception:  # a bad string: check_endpoint's problem line says it
        return False
    if spec.path is not None or spec.kind not in ("tcp", "tcp6"):
        return False
    # another name than localhost: whatever it resolves to may be reached
    return not _on_this_machine(spec.interface or "0.0.0.0")


def _warn_open_without_tls(r: _Reader, section: str, listen: tuple[str, ...],
                           given: bool, why: str) -> None:
    """Warn, once, of ``[section] listen`` when one of its listeners is
    reached by other machines (``_reaches_other_hosts``) and there is no
    ``[tls]``: at the line of the first such listener, or, for the
    default (no ``listen`` in the file, so no line), naming it as such,
    since the admin never wrote it and may not know it listens."""
    open_to_others = [i for i, d in enumerate(listen) if _reaches_other_hosts(d)]
    if not open_to_others:
        return
    if given:
        r.warn(section, "listen", f"without [tls], {why}", item=open_to_others[0])
        return
    default = ", ".join(listen[i] for i in open_to_others)
    r.warn_of_default(
        section, "listen",
        f"the default {section} listener {default} (no [{section}] listen is set) takes "
        f"connections from other machines, and without [tls], {why}; or set "
        f"[{section}] listen (a loopback address, or [] for none)")


def check_endpoint(description: str) -> None:
    """Raise ValueError unless ``description`` is a server endpoint we can listen on."""
    kind = description.split(":", 1)[0].lower()
    if kind not in SERVER_ENDPOINT_TYPES:
        raise ValueError(
            f"endpoint {quoted(description)}: use tcp:PORT, tcp6:PORT or unix:PATH "
            "(TLS listeners go in tls_listen)"
        )
    try:
        endpoint = _listen_spec(description)
    except Exception as e:  # twisted raises assorted types for bad strings
        hint = ""
        if re.search(r"interface=[0-9A-Fa-f]*:", description):
            hint = (" (the colons of an IPv6 address are escaped in an endpoint: "
                    "tcp6:25:interface=\\:\\:1)")
        why = _endpoint_error(kind, e, hint)
        raise ValueError(f"endpoint {quoted(description)} is not valid: {why}{hint}") from None
    port = endpoint.port
    if endpoint.path is None and isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"endpoint {quoted(description)}: port {port} is not in 0-65535")


_ENDPOINT_OPTIONS = {
    "tcp": "interface and backlog",
    "tcp6": "interface and backlog",
    "unix": "mode, backlog and lockfile",
}


def _endpoint_error(kind: str, e: Exception, hint: str) -> str:
    """What Twisted's parser said, in the words of the config file: not
    ``_parseTCP() got an unexpected keyword argument 'iface'``."""
    text = str(e)
    m = re.search(r"invalid literal for int\(\) with base (\d+): '(.*)'$", text)
    if m:
        octal = " an octal" if m.group(1) == "8" else " a"
        return f"{quoted(m.group(2))} is not{octal} number"
    m = re.search(r"unexpected keyword argument '(.*)'$", text)
    if m:
        return f"unknown option {quoted(m.group(1))} ({kind} takes {_ENDPOINT_OPTIONS[kind]})"
    if "missing 1 required positional argument: 'port'" in text:
        return f"no port ({kind}:PORT)"
    m = re.search(r"got multiple values for argument '(.*)'$", text)
    if m:
        if hint:
            return f"more than one {m.group(1)}"
        return f"more than one {m.group(1)} (a colon inside a value is written \\:)"
    return text


def endpoint_readiness(description: str) -> str | None:
    """Why a valid listen endpoint would still fail at the start (an
    interface name that does not resolve, the folder of an absolute unix
    socket path missing), or None.  For ``mailhub check`` only: it looks
    things up (DNS, the filesystem), which loading the config for every
    other command must not do."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception:
        return None  # reported by check_endpoint
    interface = getattr(endpoint, "_interface", None)
    if isinstance(interface, str) and interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            try:
                socket.gethostbyname(interface)
            except (OSError, UnicodeError):
                return (f"endpoint {quoted(description)}: the interface {quoted(interface)} "
                        "is neither an IP address nor a name that resolves")
    path = getattr(endpoint, "_address", None)
    if isinstance(path, str):
        if not path:
            return f"endpoint {quoted(description)}: the socket path is empty"
        folder = os.path.dirname(path)
        if os.path.isabs(path) and not os.path.isdir(folder):
            return f"endpoint {quoted(description)}: the folder {folder} does not exist"
    return None


def listen_address(description: str) -> tuple[str, Any, Any] | None:
    """What a valid listen endpoint binds: ``("unix", path, None)`` or
    ``(kind, port, ip)`` with ``ip`` an ``ipaddress`` address (a host name
    that does not resolve: the name), None for every address; None for
    port 0 (the system picks anew each time).
    Read as Twisted reads it (``_listen_spec``), so every spelling Twisted
    accepts (positional or named, escaped colons) means the same here."""
    endpoint = _listen_spec(description)
    if endpoint.path is not None:
        return "unix", os.path.normpath(endpoint.path), None
    port, interface = endpoint.port, endpoint.interface
    if not isinstance(port, int) or not isinstance(interface, str) or port == 0:
        return None
    kind = description.split(":", 1)[0].lower()
    ip: Any = None
    if interface:
        try:
            ip = ipaddress.ip_address(interface)
        except ValueError:
            # a host name: bound as the IPv4 address it has (Twisted picks
            # the family from the literal, a name gets IPv4), looked up as
            # bind() will; a name that does not resolve is compared as one
            kind = "tcp"
            try:
                ip = ipaddress.ip_address(socket.gethostbyname(interface))
            except (OSError, ValueError):
                ip = interface.lower()
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) and ip.is_unspecified:
            ip = None
    return kind, port, ip


def _dual_stack() -> bool:
    """Whether an IPv6 socket on every address takes IPv4 too (Linux's
    default; ``net.ipv6.bindv6only`` turns it off)."""
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


def _same_address(a: tuple[str, Any, Any], b: tuple[str, Any, Any]) -> bool:
    if a[0] == "unix" or b[0] == "unix":
        return a == b
    (kind_a, port_a, ip_a), (kind_b, port_b, ip_b) = a, b
    if port_a != port_b:
        return False
    if kind_a == kind_b:
        return ip_a is None or ip_b is None or ip_a == ip_b
    # tcp and tcp6: a v6 socket on every address (dual stack) or on a
    # v4-mapped address takes v4 connections too
    v4, v6 = (ip_a, ip_b) if kind_a == "tcp" else (ip_b, ip_a)
    if v6 is None:
        return _dual_stack()
    mapped = getattr(v6, "ipv4_mapped", None)  # None for a host name
    return mapped is not None and (v4 is None or v4 == mapped)


def _shared_addresses(
        listeners: list[tuple[str, str, int, str]]) -> list[tuple[str, str, int, str]]:
    """Problems for listeners that would bind the same address (the second
    one would fail at start with "Address already in use").  ``listeners``:
    ``(section, key, index in the list, description)``; each problem is
    ``(section, key, index, why)`` of the second listener."""
    problems = []
    seen: list[tuple[tuple[str, Any, Any], str]] = []
    for section, key, index, description in listeners:
        address = listen_address(description)
        if address is None:
            continue
        for other, where in seen:
            if _same_address(address, other):
                problems.append((section, key, index, f"{quoted(description)} is the same "
                                 f"address as {where}: only one of them could listen"))
                break
        else:
            seen.append((address, f"{quoted(description)} in [{section}] {key}"))
    return problems


class ItemProblems(ValueError):
    """Several items of one list are bad: each is reported on its own line,
    so that one run of ``mailhub check`` names them all.  ``items``: the
    index in the list of the item each reason is about (None: the list's),
    so the line names where that item is written."""

    def __init__(self, reasons: list[str], items: list[int | None] | None = None) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons
        self.items: list[int | None] = list(items) if items is not None else [None] * len(
            reasons)


def _each(items: tuple[str, ...], check: Callable[[str], Any]) -> tuple[str, ...]:
    """``items`` once ``check`` (which raises ValueError) passed each."""
    reasons = []
    where: list[int | None] = []
    for index, item in enumerate(items):
        try:
            check(item)
        except ValueError as e:
            reasons.append(str(e))
            where.append(index)
    if reasons:
        raise ItemProblems(reasons, where)
    return items


def _endpoints(v: Any, base: str | None = None) -> tuple[str, ...]:
    """Valid listen endpoints; with ``base`` (the config file's folder), a
    relative unix socket path made absolute against it, as every other
    path in the file is: the hub started from another folder must listen
    where ``txmailhub-sendmail``, run from anywhere, looks."""
    items = _each(_string_list(v), check_endpoint)
    if base is None:
        return items
    return tuple(_unix_path_resolved(item, base) for item in items)


def _split_unescaped(text: str, sep: str) -> list[str]:
    """``text`` cut at each ``sep`` not escaped by a backslash (Twisted's
    endpoint syntax), each piece still escaped."""
    pieces, current, chars = [], "", iter(text)
    for c in chars:
        if c == "\\":
            current += c + next(chars, "")
        elif c == sep:
            pieces.append(current)
            current = ""
        else:
            current += c
    pieces.append(current)
    return pieces


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.S)


def _unix_path_resolved(description: str, base: str) -> str:
    """``unix:PATH...`` or ``unix:address=PATH...`` with a relative PATH
    rewritten as ``base``/PATH, every option kept as written."""
    parts = _split_unescaped(description, ":")
    if parts[0].lower() != "unix":
        return description
    for i, part in enumerate(parts[1:], 1):
        # the first unescaped "=" makes an option; the value is the rest
        key, *value = _split_unescaped(part, "=")
        if value and _unescape(key) != "address":
            continue
        path = _unescape("=".join(value) if value else key)
        # a name outside ASCII is the socket of that UTF-8 name, whatever
        # the locale, as every path in the file (``on_disk``)
        if path and (not os.path.isabs(path) or not path.isascii()):
            path = on_disk(path)
            if not os.path.isabs(path):
                path = os.path.normpath(os.path.join(base, path))
            escaped = re.sub(r"([:=\\])", r"\\\1", path)
            parts[i] = f"{key}={escaped}" if value else escaped
        return ":".join(parts)  # the first positional value or address= is the path
    return description


def _network(item: str) -> None:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError(f"{quoted(item)} is not a network (use CIDR like 192.0.2.0/24)") from None


def _networks(v: Any) -> tuple[str, ...]:
    return _each(_string_list(v), _network)


# RFC 1035 2.3.4: 255 octets on the wire, 253 written out.  A local domain
# is one DNS can hold (its MX records name it); SMTP paths take RFC 5321's
# 255 (txmailhub.smtp._parse), the one place the two rules differ.
_MAX_DNS_NAME = 253


def _literal_problem(name: str) -> str | None:
    """Why an address literal (RFC 5321 4.1.3), as a host without a name
    uses, is none."""
    try:
        address_literal(name)
    except ValueError:
        return "is not an address literal ([192.0.2.1] or [IPv6:2001:db8::1])"
    return None


def _hostname_problem(name: str) -> str | None:
    """Why ``name`` (without a final dot) cannot be the hub's own name:
    labels of letters (any script: an IDN's U-labels), digits and inner
    hyphens -- no underscore, which an EHLO name cannot hold (RFC 5321
    4.1.2) -- then the rule every domain follows (``domain_problem``: an
    ``xn--`` label a true A-label, a U-label one IDNA2008 takes), at most
    253 characters (RFC 1035 2.3.4)."""
    if name.startswith("[") and name.endswith("]"):
        return _literal_problem(name)
    if not name or len(name) > 253:
        return "is not a domain name (1 to 253 characters)"
    for label in name.split("."):
        if not label:
            return "is not a domain name: it has an empty label (two dots in a row)"
        if len(label) > 63:
            return f"is not a domain name: the label {quoted(label[:20])}... is over 63 characters"
        # letters of any script, their combining marks (Devanagari, Thai,
        # Tamil vowel signs), digits and inner hyphens
        if label[0] == "-" or label[-1] == "-" or not all(
                c.isalnum() or c == "-" or unicodedata.category(c) in ("Mn", "Mc")
                for c in label):
            if label == name:  # the value is quoted before this already
                return "is not a domain name (letters, digits and inner hyphens only)"
            return (f"is not a domain name: the label {quoted(label)} is not letters, digits and "
                    "inner hyphens only")
    return domain_problem(name, _MAX_DNS_NAME)


def _domains(v: Any) -> tuple[str, ...]:
    items = _string_list(v)
    if not items:
        raise ValueError("list at least one local domain")
    out: list[str] = []
    reasons = []
    where: list[int | None] = []
    for index, d in enumerate(items):
        d = d.strip().rstrip(".").lower()
        # the rule SMTP paths follow (txmailhub.address.domain_problem),
        # label by label: any domain mail can be addressed to can be
        # listed, "ab--cd.bücher.test" and "my_host.example" too
        if d.startswith("[") and d.endswith("]"):
            why = _literal_problem(d)
        else:
            why = domain_problem(d, _MAX_DNS_NAME)
        if why:
            reasons.append(f"{quoted(d)} {why}")
            where.append(index)
            continue
        # one spelling per domain: an A-label and its U-label (or a
        # decomposed one) are the same domain, and the same Maildir folder
        canonical = canonical_domain(d)
        if canonical in out:
            same = "" if canonical == d else f" (as {canonical})"
            reasons.append(f"{quoted(d)} is listed twice{same}")
            where.append(index)
        else:
            out.append(canonical)
    if reasons:
        raise ItemProblems(reasons, where)
    return tuple(out)


def _hostname(v: Any) -> str:
    """The hub's own name: it goes into the greeting, EHLO and every
    Received field, so it must be a domain name (a space or a CR in it
    would reach the wire as it is), in ASCII: a greeting, an EHLO and a
    trace field carry the A-label form of an internationalized name (RFC
    6531 3.7.1), and a peer without SMTPUTF8 takes nothing else."""
    s = _nonempty_string(v).strip()
    why = _hostname_problem(s.rstrip("."))
    if why:
        raise ValueError(f"{quoted(s)} {why}")
    if not s.isascii():
        a_label = ascii_domain(s.rstrip("."))
        raise ValueError(f"{quoted(s)}: write the name in its ASCII (A-label) form, "
                         f"{quoted(a_label)}: it goes into greetings, EHLO and Received fields")
    return s


def _hostport(v: Any) -> str:
    s = _string(v).strip()
    if not s:
        return ""
    host, sep, port = s.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{quoted(s)}: use \"host:port\" (for example \"smtp.example.net:587\")")
    return s


def split_smarthost(value: str) -> tuple[str, int]:
    """``[relay] smarthost`` -> (host, port) as the relay connects to it:
    an IP address (``192.0.2.1:25``, ``[192.0.2.1]:25``, ``[::1]:587``, or
    SMTP's own literal ``[IPv6:2001:db8::1]:587``, RFC 5321 4.1.3) in its
    compressed form, or a host name as written -- in brackets too
    (``[smtp.example.net]:587``, Postfix's spelling of "no MX lookup",
    which the smarthost never gets anyway: the relay has always connected
    to that name).  ValueError, saying why, for anything the relay could
    never connect to: a name DNS cannot hold or one with no IDNA2008 form
    (the relay looks up the A-labels only), an ``IPv6:`` literal that is
    no IPv6 address (``[IPv6:192.0.2.1]``), an IPv6 zone.  Numbers and dots other than an address
    ``ipaddress`` reads are what the C resolver reads (``127.1``,
    ``0x7f.0.0.1``: 127.0.0.1), refused when a leading zero makes that
    reading doubtful (octal to it: ``010.0.0.1`` was connected to as
    ``8.0.0.1``), there is none, or it is in 0.0.0.0/8 (``12345``: see
    ``_numeric_ipv4``); labels that only look like numbers, with no such
    reading and a top label not all digits, are a host name
    (``0xcafe.0xbeef``).  A bare IPv6
    address with no port after its last colon is a problem: a port after
    one goes after brackets (see ``_bare_ipv6_problem``)."""
    why = _bare_ipv6_problem(value)
    if why is not None:
        raise ValueError(f"{quoted(value)}: {why}")
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        tagged = inner[:5].lower() == "ipv6:"
        if tagged:
            inner = inner[5:]
        try:
            if "%" in inner:
                raise ValueError
            # after the tag only IPv6 (RFC 5321 4.1.3: IPv6-full, -comp,
            # IPv6v4-full, -comp): "[IPv6:192.0.2.1]" was connected to
            # as 192.0.2.1, an IPv4 address no form of the literal holds
            ip = ipaddress.IPv6Address(inner) if tagged else ipaddress.ip_address(inner)
        except ValueError:
            no_ip = (f"{quoted(value)}: {host} is no IP address ([192.0.2.1], [::1] or "
                     "[IPv6:2001:db8::1])")
            if tagged and _is_ipv4(inner):
                raise ValueError(f"{quoted(value)}: {host} is no IPv6 address, the only kind an "
                                 f"\"IPv6:\" literal holds (RFC 5321 4.1.3); write "
                                 f"[{inner}]") from None
            if tagged or not inner or "%" in inner or ":" in inner:
                raise ValueError(no_ip) from None
            if not _is_numeric(inner):
                why = _smarthost_name_problem(inner)
                if why is not None:
                    raise ValueError(f"{no_ip} and {why}") from None
            host = inner  # a name (or numbers the resolver reads), read as written bare
        else:
            return _connected_address(ip), int(port)
    return _split_bare(value, host, int(port))


def _bare_ipv6_problem(value: str) -> str | None:
    """Why ``value``, written without brackets, cannot be a smarthost
    because all of it is an IPv6 address; ``None`` otherwise.

    URLs (RFC 3986 3.2.2) and most mail software put an IPv6 address in
    brackets when a port follows it, and so do these docs.  A bare one
    that is the whole value (``2001:db8::25``) has no port, and the
    smarthost has no default one: a problem.  One whose text before the
    last colon is an address too (``2001:db8::25:587``, ``::1:25``) has
    two readings; it has always been read as address and port, and still
    is, so a configuration that worked goes on working, with a warning
    (``smarthost_warning``).  A text whose whole is no address
    (``1:2:3:4:5:6:7:8:25``, nine groups) has only that reading."""
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    if "%" in value:
        # with brackets or without, a zone is refused: advice to write
        # "[fe80::1%eth0]:25" would only lead to the next refusal
        return "an address with a zone names a local interface"
    if _ipv6_and_port(value) is not None:
        return None
    return ("a bare IPv6 address has no port; a port after an IPv6 address goes after "
            f"brackets around it: write [{value}]:<port>")


def _ipv6_and_port(value: str) -> tuple[str, int] | None:
    """``value`` as an IPv6 address and a port after its last colon, if
    it reads so (``2001:db8::25:587``); ``None`` otherwise."""
    host, _, port = value.rpartition(":")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return None
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return None
    return host, int(port)


def _on_this_machine(host: str) -> bool:
    """Whether ``host`` (a smarthost's, ``split_smarthost``'s, or a
    listener's interface) is this machine: a loopback address, or
    ``localhost`` (RFC 6761 6.3: it is loopback).  An address is read as
    the servers read their clients' (``client_ip``): a socket bound to
    ::ffff:127.0.0.1 takes only peers they call loopback."""
    if host.lower().rstrip(".") == "localhost":
        return True
    ip = client_ip(host)
    return ip is not None and ip.is_loopback


def smarthost_warning(value: str) -> str | None:
    """What ``mailhub check`` and the start say of a smarthost that works
    but may not say what its writer meant: a bare IPv6 address followed by
    a port, whose whole text is an IPv6 address too."""
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    split = _ipv6_and_port(value)
    if split is None:
        return None
    host, port = split
    return (f"{quoted(value)} is read as [{host}]:{port}, address {host} and port {port}, but "
            f"all of it is an IPv6 address too; write [{host}]:{port} to say so (a bare "
            "IPv6 address followed by a port may be read either way)")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _connected_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address the relay reaches for ``ip``: an IPv4-mapped IPv6
    address (``::ffff:192.0.2.25``, RFC 4291 2.5.5.2) is the IPv4 host's
    own -- an IPv6 socket connected to it talks IPv4 to 192.0.2.25 -- so it
    is that IPv4 address, as its certificate names it (an IP-ID of the
    IPv6 form matched none: every verified attempt failed) and as notices
    give it (``[192.0.2.25]``, not ``[IPv6:::ffff:c000:219]``)."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else ip.compressed


def _split_bare(value: str, host: str, port: int) -> tuple[str, int]:
    """``split_smarthost`` of ``host``, no brackets around it (``value``:
    the setting as written, for the errors)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if "%" in host:
            raise ValueError(f"{quoted(value)}: an address with a zone names a local interface")
        return _connected_address(ip), port
    numeric = _numeric_ipv4(value, host)
    if numeric is not None:
        return numeric, port
    why = _smarthost_name_problem(host)
    if why is not None:
        raise ValueError(f"{quoted(value)}: {why}")
    return host, port


def _smarthost_name_problem(host: str) -> str | None:
    """Why the relay could never look ``host`` up (a final dot allowed),
    or ``None``."""
    name = host[:-1] if host.endswith(".") else host
    if not ascii_domain(name).isascii():
        return f"{host} has no IDNA2008 (RFC 5891) form, which is what the relay looks up"
    why = dns_name_problem(name)
    if why is not None:
        return f"{host} can be no name in DNS: {why}"
    return None


# A label of numbers as the C resolver's inet_aton reads one: hex after
# "0x", octal after a leading zero, decimal otherwise
_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]*|[0-9]+")


def _is_numeric(host: str) -> bool:
    """Whether ``host`` (a final dot allowed) is numbers and dots only, as
    ``inet_aton`` may read it: ``10.1``, ``2130706433``, ``0x7f.0.0.1``."""
    labels = (host[:-1] if host.endswith(".") else host).split(".")
    return all(_NUMBER.fullmatch(label) for label in labels)


def _read_ipv4(labels: list[str], octal: bool) -> str | None:
    """The IPv4 address ``inet_aton`` makes of ``labels`` -- one to four
    numbers, the last filling the octets the others leave (``127.1`` is
    127.0.0.1, ``2130706433`` too) -- a leading zero making a number
    octal when ``octal``, decimal otherwise; ``None`` when it makes none."""
    if not 1 <= len(labels) <= 4:
        return None
    numbers = []
    for label in labels:
        if label[:2].lower() == "0x":
            if len(label) == 2:
                return None
            numbers.append(int(label[2:], 16))
        elif octal and len(label) > 1 and label[0] == "0":
            if not set(label) <= set("01234567"):
                return None
            numbers.append(int(label, 8))
        else:
            numbers.append(int(label))
    *first, last = numbers
    if any(n > 255 for n in first) or last >= 256 ** (5 - len(numbers)):
        return None
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(first)) + last
    return str(ipaddress.IPv4Address(value))


def _numeric_ipv4(value: str, host: str) -> str | None:
    """The address the relay connects to for ``host`` when it is numbers
    and dots (``None`` for a name): ``ipaddress`` refuses every spelling
    but four plain decimal numbers, while ``getaddrinfo`` reads the C
    resolver's (``inet_aton``) as an address, without asking DNS --
    ``127.1`` and ``2130706433`` are 127.0.0.1, ``0x7f.0.0.1`` too.  Taken
    as a name, such a smarthost was connected to by that address but named
    by the text (``Remote-MTA: dns; 127.1``), and its TLS check was of the
    text as a host name: sent as SNI, which RFC 6066 3 forbids for an
    address, and never found in a certificate (``2130706433`` was no
    name to the check at all, a local error at every attempt).  So it is
    the address, as the resolver reads it; a ValueError, saying why, when
    that reading is in doubt -- a leading zero, octal to the resolver and
    decimal to a reader, unless both give the same address
    (``127.000.000.001``; ``010.0.0.1`` was connected to as ``8.0.0.1``)
    -- or when the resolver reads no address: no name in DNS is all
    numbers (a top-level domain never is, RFC 3696 2), and with a final
    dot the resolver asks DNS."""
    if not _is_numeric(host):
        return None
    labels = (host[:-1] if host.endswith(".") else host).split(".")
    resolver = _read_ipv4(labels, octal=True)
    decimal = _read_ipv4(labels, octal=False)
    if resolver is None and decimal is None and not labels[-1].isdigit():
        # no reading as an address, to the resolver or to a reader, and a
        # top label that is not all digits (RFC 3696 2): a host name of
        # hex-looking labels, "0xcafe.0xbeef", looked up as such
        return None
    if host.endswith("."):
        bare = _numeric_ipv4(value, host[:-1])  # (its own doubts said first)
        raise ValueError(f"{quoted(value)}: {host} is an address with a final dot, which the "
                         f"resolver looks up as a name and never finds; write {bare}")
    if resolver is not None and resolver == decimal:
        return _routable(value, host, resolver)
    if decimal is not None:
        read = f"it as {resolver}" if resolver else "no address in it"
        raise ValueError(f"{quoted(value)}: {host} is ambiguous: the resolver reads {read} "
                         "(a number with a leading zero is octal to it); write the "
                         "address without leading zeros")
    if resolver is not None:  # hex alone: no other reading
        return _routable(value, host, resolver)
    raise ValueError(f"{quoted(value)}: {host} is no address, and no name in DNS is all numbers")


# RFC 1122 3.2.1.3, RFC 6890 2.2.2: "this host on this network", a source
# address only; no host is reached at one
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def _routable(value: str, host: str, address: str) -> str:
    """``address``, the resolver's reading of the shorthand ``host``,
    unless it falls in 0.0.0.0/8: a number too small to fill the first
    octet (``12345``, read as 0.0.48.57; ``0x1``; ``0.1``) is a port or a
    typo far more often than an address, and none there names a host to
    connect to -- every attempt failed.  0.0.0.0 itself (``0``) is taken,
    as ``0.0.0.0`` written in full is: Linux connects to this host there,
    and a configuration that worked so goes on working."""
    if address != "0.0.0.0" and ipaddress.IPv4Address(address) in _THIS_NETWORK:
        raise ValueError(f"{quoted(value)}: {host} is read by the resolver as {address}, in "
                         "0.0.0.0/8, which names no host to connect to (RFC 1122 "
                         "3.2.1.3); write the address in full")
    return address


def _smarthost(v: Any) -> str:
    s = _hostport(v)
    if s:
        split_smarthost(s)
    return s


#: the addresses the kernel scopes, and reports an answer's scope for
#: (fe80::/10): not ``is_link_local``, which newer Pythons make true of
#: ``::ffff:169.254.0.0/112`` too, where the kernel reports scope 0
LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")


def split_nameserver(item: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"::1"``, ``"[::1]:5353"``,
    ``"fe80::1%eth0"``, ``"[fe80::1%2]:5353"`` -> (ip, port).

    The address comes back in the form the kernel gives an answer's source
    (``"::1"`` for ``"0:0::1"``; a link-local one with its interface's
    index, ``"fe80::1%2"``): answers are matched against it as a string
    (``relay/dnsport.py`` reads resolv.conf's servers into the same form).
    A zone names the interface, by name or index, as in resolv.conf; one
    on an address that is not link-local is dropped, as the kernel ignores
    it there.  An interface this host does not have is an error: a query
    to it could only fail."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("53" if not rest else "x")
    elif "%" in item:
        host, port = item, "53"  # an IPv6 address: with a port it is in brackets
    else:
        try:
            ipaddress.ip_address(item)
            host, port = item, "53"
        except ValueError:
            host, _, port = item.rpartition(":")
    host, percent, zone = host.partition("%")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{quoted(item)}: a nameserver is an IP address, optionally :port") from None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{quoted(item)}: bad port")
    if address.version == 4:
        if percent:
            raise ValueError(f"{quoted(item)}: a zone (%...) belongs to an IPv6 address only")
        return str(address), int(port)
    # the form the kernel reports an answer's source in (a v4-mapped
    # address in dotted form: "::ffff:127.0.0.1")
    text = socket.inet_ntop(socket.AF_INET6, address.packed)
    if ":" in zone and not item.startswith("["):
        # "fe80::1%eth0:5353": the port would be part of the zone
        name, _, after = zone.rpartition(":")
        raise ValueError(f"{quoted(item)}: with a port, the address goes in brackets: "
                         f"{quoted(f'[{host}%{name}]:{after}')}")
    index = _interface_index(item, zone) if percent else 0
    if index and address in LINK_LOCAL:
        return f"{text}%{index}", int(port)
    return text, int(port)


def _interface_index(item: str, zone: str) -> int:
    """The index of the interface a zone names (``eth0`` or ``2``), as the
    kernel reports it with an answer's source; 0 for ``0`` (no zone)."""
    if zone.isascii() and zone.isdigit():
        index = int(zone)
        if index:
            try:
                socket.if_indextoname(index)
            except (OSError, OverflowError, ValueError):
                raise ValueError(
                    f"{quoted(item)}: this host has no network interface {index}") from None
        return index
    if not zone:
        raise ValueError(f"{quoted(item)}: an empty zone after %")
    if ":" in zone:
        # no interface's name has one, and the kernel reads "eth0:5353"
        # (an address label's form) as eth0's
        raise ValueError(
            f"{quoted(item)}: this host has no network interface {quoted(zone)}")
    try:
        return socket.if_nametoindex(zone)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        raise ValueError(
            f"{quoted(item)}: this host has no network interface {quoted(zone)}") from None


def _nameservers(v: Any) -> tuple[str, ...]:
    return _each(_string_list(v), split_nameserver)


def _password_policy(v: Any) -> str:
    s = _string(v)
    if s not in ("warn", "enforce"):
        raise ValueError(f"{quoted(s)}: use \"warn\" or \"enforce\"")
    return s


def _tls_mode(v: Any) -> str:
    s = _string(v)
    if s not in ("verify", "opportunistic", "none"):
        raise ValueError(f"{quoted(s)}: use \"verify\", \"opportunistic\" or \"none\"")
    return s


def _schedule(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not v:
        raise TypeError("expected a non-empty list of durations")
    waits = []
    for index, x in enumerate(v):
        try:
            waits.append(parse_duration(x))
        except ValueError as e:
            raise ItemProblems([str(e)], [index]) from None
    if 0 in waits:
        # a failing destination would be tried again at every poll of the queue
        raise ItemProblems(["a wait of 0 would retry a failing destination at once, again and "
                            "again; each wait must be at least 1s"], [waits.index(0)])
    return tuple(waits)


# --- loading --------------------------------------------------------------


def load(path: str, *, tls_needed: bool = True) -> Settings:
    """Read and validate the config file; raise ``ConfigError`` listing every problem.

    ``tls_needed=False``: for a command that uses no TLS (``mailhub user``,
    ``alias``, ``queue``), a TLS certificate or key this user cannot read
    is no problem but a line of ``Settings.tls_unread``, which the command
    prints as a warning: a key only the hub's group reads must not keep
    root's ``user add`` from working.  The hub and ``check`` need it."""
    path = os.path.abspath(path)
    data, folder = _read_config(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([_not_utf8(path, data, e)]) from None
    return load_text(text, path, folder, tls_needed=tls_needed)


def _not_utf8(path: str, data: bytes, error: UnicodeDecodeError) -> str:
    """The line for a config file that is not UTF-8 (TOML is UTF-8): the
    first octet that is not, at its line and column as tomllib counts
    them, for the admin to find the word an editor saved as Latin-1."""
    start = data.rfind(b"\n", 0, error.start) + 1
    line = data.count(b"\n", 0, start) + 1
    column = len(data[start:error.start].decode("utf-8")) + 1
    return (f"{path}: the file is not UTF-8 text (the octet 0x{data[error.start]:02X} at "
            f"line {line}, column {column}): save it as UTF-8")


_PIPE_WAIT = 5.0  # seconds a config given as a pipe may take to be written, whole
#: octets a config file may hold: a real one is a few KiB
CONFIG_MAX = 4 * 1024 * 1024


def _read_config(path: str) -> tuple[bytes, str]:
    """The octets of the config file at ``path`` and the folder its
    relative paths resolve against; ``ConfigError`` (one line naming the
    path) when it cannot be read or is no regular file.

    Never a plain ``open()``: one of a named pipe with no writer
    (``-c FIFO``, or one put where the file was) waits for a writer for
    ever, and ``mailhub``, ``twistd mailhub`` and ``sendmail`` with it;
    one of a device reads what the device gives (``/dev/zero``: without
    end).  A pipe written to is read, as other servers read one: ``-c
    <(template ...)`` and ``... | mailhub -c /dev/stdin`` are common ways
    to hand over a generated config; one not written whole (its writer
    closing it) within a few seconds is refused.  A link to a regular
    file is followed, as for any file the config names.

    At most ``CONFIG_MAX`` octets are read; a file or pipe that holds
    more is refused: ``-c <(yes)``, or ``/dev/stdin`` fed by a runaway
    generator, would else take memory without end."""
    try:
        data, _ = read_regular(path, limit=CONFIG_MAX + 1, pipe_wait=_PIPE_WAIT)
    except PipeTimeout as e:
        if e.read == 0:
            why = f"it is a pipe that nothing was written to in {_PIPE_WAIT:g} seconds"
        else:
            why = (f"it is a pipe whose writer did not close it in {_PIPE_WAIT:g} seconds "
                   f"({e.read} octets read): the whole config must come by then")
        raise ConfigError([f"{path}: cannot read the config file: {why}"]) from None
    except NotRegularFile:
        raise ConfigError([f"{path}: cannot read the config file: it is not a regular file "
                           "or a pipe (a device or socket)"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror or e}"]) from None
    if len(data) > CONFIG_MAX:
        raise ConfigError([f"{path}: cannot read the config file: it holds more than "
                           f"{CONFIG_MAX // (1024 * 1024)} MiB, the most a config file may "
                           "hold"])
    return data, _paths_folder(path)


# the folders of a descriptor's name: /dev/stdin, /dev/fd/N (``<(...)``),
# /proc/self/fd/N and the like
_DESCRIPTOR_FOLDER = re.compile(r"/dev(/fd)?|/proc/(self|thread-self|[0-9]+)(/task/[0-9]+)?/fd")


def _paths_folder(path: str) -> str:
    """The folder the relative paths of the config at ``path`` resolve
    against: its own, as for any file -- a named pipe's too, put where the
    file was -- but for a config read through a descriptor's name
    (``<(...)``'s ``/dev/fd/63``, ``/dev/stdin``, a pipe or a file
    redirected there), whose folder holds none of the hub's files: the
    folder it was generated for is the one the command runs in."""
    folder = os.path.dirname(path)
    if _DESCRIPTOR_FOLDER.fullmatch(folder):
        return os.getcwd()
    return folder


def _not_toml(path: str, text: str, error: tomllib.TOMLDecodeError) -> str:
    """The line for a file TOML cannot read.  A byte order mark, which
    Notepad and other editors put before UTF-8 text and TOML does not
    allow, is named: tomllib's "Invalid statement (at line 1, column 1)"
    pointed at a first line that looks right in every editor."""
    if text.startswith("\ufeff"):
        return (f"{path}: not valid TOML: the file starts with a byte order mark (U+FEFF, "
                "which some editors write before UTF-8 text): save it as UTF-8 without a BOM")
    return f"{path}: not valid TOML: {error}"


def _names_above_sections(text: str, doc: dict[str, Any]) -> set[str]:
    """The top-level names of ``doc`` (``text`` parsed) that ``text``
    gives as keys above its first section line, not by section lines.

    tomllib makes the same value of ``foo = [{a = 1}]`` above the first
    section and of ``[[foo]]`` / ``a = 1``, and of ``foo = {a = 1}`` or
    ``foo.a = 1`` and ``[foo]`` / ``a = 1``; only where they stand tells
    them apart.  So the text is parsed again with a section line of a
    new name put first: what stood above every section line is then that
    section's, and only that (a table's keys follow TOML's grammar for
    the top level's).  Only for a config with an unknown name: a second
    parse of a small file, on the way to an error."""
    fresh = "_" * (1 + max((len(name) for name in doc), default=0))  # no name of doc's
    try:
        moved = tomllib.loads(f"[{fresh}]\n{text}")
    except tomllib.TOMLDecodeError:  # not expected: every name stays a section
        return set()
    return set(moved.get(fresh, {}))


def load_text(text: str, path: str, folder: str | None = None, *,
              tls_needed: bool = True) -> Settings:
    """Validate TOML ``text`` as if read from ``path``; relative paths
    resolve against ``folder``, by default ``path``'s; ``tls_needed`` as
    for ``load``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_not_toml(path, text, e)]) from None
    problems: list[str] = []
    warnings: list[str] = []
    if folder is None:
        folder = os.path.dirname(os.path.abspath(path))
    r = _Reader(path, folder, problems, text, doc, warnings)

    known = {"hub", "users", "aliases", "tls", "smtp", "submission", "pop3", "relay"}
    above: set[str] | None = None  # the names written above the first section line
    for section in doc:
        if section in known:
            continue
        value = doc[section]
        # ``[[name]]`` (an array of tables) is a section line too: a list of
        # tables, not a key above the first ``[section]`` line
        tables = isinstance(value, list) and bool(value) and all(
            isinstance(v, dict) for v in value)
        if isinstance(value, dict) or tables:
            # but so is ``name = [{...}]``, ``name = {...}`` or ``name.x = 1``
            # above the first section line: the text says which it was
            if above is None:
                above = _names_above_sections(text, doc)
            if section not in above:
                problems.append(
                    f"{path}: [{section}]: unknown section (known: {', '.join(sorted(known))})"
                    f"{r.at(section)}"
                )
                continue
        r.top_level_key(section, known)  # a key before any [section] line

    t = r.table(doc, "hub", {"hostname", "state_dir", "domains", "mailbox_quota",
                             "log_files_kept"})
    if "domains" not in t:
        r.problem("hub", "domains", "required: the local domains, the primary one first")
    hostname = r.get(t, "hub", "hostname", None, _hostname)
    hub = HubSettings(
        hostname=hostname or socket.getfqdn(),
        state_dir=r.resolve(r.get(t, "hub", "state_dir", "var", _nonempty_string)),
        domains=r.get(t, "hub", "domains", ("localhost",), _domains),
        mailbox_quota=r.get(t, "hub", "mailbox_quota", 0, _non_negative_int),
        log_files_kept=r.get(t, "hub", "log_files_kept", 10, _non_negative_int),
    )

    # the name a certificate must be valid for (None: a bad one, a problem
    # already), and where it comes from
    own_name = hub.hostname if ("hostname" not in t or hostname) else None
    own_name_from = ("[hub] hostname" if "hostname" in t
                     else "[hub] hostname is not set: the machine's name")
    # (a bad hostname is a problem already; an address literal is what it is)
    name = hub.hostname.rstrip(".").lower()
    if ("hostname" not in t or hostname) and not name.startswith("[") and (
            "." not in name or name.startswith("localhost.") or name.endswith(".localdomain")):
        where = ("[hub] hostname" if "hostname" in t
                 else "[hub] hostname is not set, and the machine's name")
        # at the key's line; none for the machine's name, which no line set
        warnings.append(
            f"{path}: {where} {quoted(hub.hostname)} is no fully qualified domain name: the hub "
            "greets with it, says it in EHLO to other servers and writes it into every "
            "Received field, and many servers refuse a client that calls itself so "
            "(RFC 5321 4.1.1.1, 2.3.5); set [hub] hostname to the name clients reach "
            f"the hub by, such as mail.example.org{r.at('hub', 'hostname')}"
        )

    t = r.table(doc, "users", {"file", "min_password_length", "password_policy"})
    users = UsersSettings(
        file=r.resolve(r.get(t, "users", "file", "users", _nonempty_string)),
        min_password_length=r.get(t, "users", "min_password_length", DEFAULT_MIN_LENGTH,
                                  _min_password_length),
        password_policy=r.get(t, "users", "password_policy", "warn", _password_policy),
    )
    if users.min_password_length < DEFAULT_MIN_LENGTH:
        r.warn("users", "min_password_length",
               f"{users.min_password_length} is below the {DEFAULT_MIN_LENGTH} characters "
               "NIST SP 800-63B requires of a password")

    t = r.table(doc, "aliases", {"file"})
    aliases_file = r.get(t, "aliases", "file", None, _nonempty_string)
    if aliases_file is not None:
        aliases_file = r.resolve(aliases_file)
        if not os.path.isfile(aliases_file):
            r.problem("aliases", "file", _not_a_file(aliases_file))
    aliases = AliasesSettings(file=aliases_file)

    tls = None
    tls_unread: list[str] = []
    r.declare("tls", {"certificate", "key"})
    if "tls" in doc:
        t = r.table(doc, "tls", {"certificate", "key"})
        for key in ("certificate", "key"):
            if key not in t:
                r.problem("tls", key, "required when [tls] is present")
        cert = r.resolve(r.get(t, "tls", "certificate", "", _nonempty_string) or "cert.pem")
        key = r.resolve(r.get(t, "tls", "key", "", _nonempty_string) or "key.pem")
        readable = True
        for name, p in (("certificate", cert), ("key", key)):
            if name in t and not os.path.isfile(p):
                r.problem("tls", name, _not_a_file(p))
            elif name in t:
                why = _unreadable(p, hub.state_dir)
                if why:
                    readable = False
                    if tls_needed:
                        r.problem("tls", name, why)
                    else:
                        tls_unread.append(r._said("tls", name, why, None))
        if ("certificate" in t and "key" in t and os.path.isfile(cert) and os.path.isfile(key)
                and readable):
            from txmailhub.tls import pair_findings

            # the hub's own name: the one clients reach it by, which a
            # client that checks the certificate compares it with
            problems_found, warned = pair_findings(cert, key, hostname=own_name,
                                                   hostname_from=own_name_from)
            for why in problems_found:
                r.problem("tls", None, why)
            # each names the certificate ("certificate PATH expires on ..."):
            # at the line of the key that names it, as a missing file is
            warnings.extend(f"{path}: [tls] {w}{r.at('tls', 'certificate')}" for w in warned)
        tls = TLSSettings(certificate=cert, key=key)

    d = SMTPSettings()
    t = r.table(
        doc,
        "smtp",
        {
            "listen", "relay_networks", "max_message_size", "max_recipients", "idle_timeout",
            "max_connections", "max_connections_per_client", "max_errors", "max_junk_commands",
            "max_auth_failures",
            "auth_failure_delay", "vrfy", "expn",
        },
    )
    smtp = SMTPSettings(
        listen=r.get(t, "smtp", "listen", d.listen, r.endpoints),
        relay_networks=r.get(t, "smtp", "relay_networks", d.relay_networks, _networks),
        max_message_size=r.get(t, "smtp", "max_message_size", d.max_message_size, _positive_int),
        max_recipients=r.get(t, "smtp", "max_recipients", d.max_recipients, _positive_int),
        idle_timeout=r.get(t, "smtp", "idle_timeout", d.idle_timeout, _duration),
        max_connections=r.get(t, "smtp", "max_connections", d.max_connections, _positive_int),
        max_connections_per_client=r.get(
            t, "smtp", "max_connections_per_client", d.max_connections_per_client, _positive_int
        ),
        max_errors=r.get(t, "smtp", "max_errors", d.max_errors, _positive_int),
        max_junk_commands=r.get(t, "smtp", "max_junk_commands", d.max_junk_commands,
                                _positive_int),
        max_auth_failures=r.get(t, "smtp", "max_auth_failures", d.max_auth_failures, _positive_int),
        auth_failure_delay=r.get(
            t, "smtp", "auth_failure_delay", d.auth_failure_delay, _auth_failure_delay
        ),
        vrfy=r.get(t, "smtp", "vrfy", d.vrfy, _bool),
        expn=r.get(t, "smtp", "expn", d.expn, _bool),
    )
    for index, network in enumerate(smtp.relay_networks):
        read = ipaddress.ip_network(network, strict=False)
        if read.prefixlen == 0:
            r.warn("smtp", "relay_networks",
                   f"{network} is every address: anyone who reaches the MX listener may "
                   "relay through this hub (an open relay)", index)
        elif "/" in network and int(read.network_address) != int(
                ipaddress.ip_interface(network).ip):
            # "192.0.2.10/24" meant one host, or a typo of the network: it
            # lets the whole network relay, which the admin may not know
            # (Postfix's mynetworks warns of the same).  Compared as
            # numbers: a zone (fe80::%eth0/64) stays on the network's
            # address but not on the interface's, and is no host bit
            one = f"{ipaddress.ip_interface(network).ip}/{read.max_prefixlen}"
            r.warn("smtp", "relay_networks",
                   f"{network} has host bits set: it is read as {read}, and every address "
                   f"in it may relay without AUTH (for that host alone write {one}; for the "
                   f"network, {read})", index)
    if "idle_timeout" in t and smtp.idle_timeout == 0:
        r.warn("smtp", "idle_timeout",
               "0 turns the idle timeout off; a client that stops talking holds its "
               "connection until it goes away")
    elif "idle_timeout" in t and smtp.idle_timeout < 300:
        r.warn("smtp", "idle_timeout",
               f"{smtp.idle_timeout}s is below the 5 minutes RFC 5321 4.5.3.2 asks servers "
               "to wait")
    if "max_message_size" in t and smtp.max_message_size < 65536:
        r.warn("smtp", "max_message_size",
               f"{smtp.max_message_size} octets is below the 64K RFC 5321 4.5.3.1.7 requires "
               "a server to accept")
    if 0 < hub.mailbox_quota < smtp.max_message_size:
        # a size in megabytes written as a number ("100") refuses nearly all mail
        r.warn("hub", "mailbox_quota",
               f"{hub.mailbox_quota} octets is less than [smtp] max_message_size "
               f"({smtp.max_message_size}): a message the hub takes can be one no mailbox "
               "may hold (the quota is in octets: 1 GiB is 1073741824)")
    if smtp.max_auth_failures < 3:
        r.warn("smtp", "max_auth_failures",
               f"{smtp.max_auth_failures} closes a session before the 3 failed logins "
               "RFC 4954 9 asks a server to allow")
    if "max_recipients" in t and smtp.max_recipients < 100:
        r.warn("smtp", "max_recipients",
               f"{smtp.max_recipients} is below the 100 recipients RFC 5321 4.5.3.1.8 "
               "requires a server to take in one message")

    d2 = SubmissionSettings()
    t = r.table(doc, "submission", {"listen", "tls_listen"})
    submission = SubmissionSettings(
        listen=r.get(t, "submission", "listen", d2.listen, r.endpoints),
        tls_listen=r.get(t, "submission", "tls_listen", d2.tls_listen, r.endpoints),
    )
    submission_listen_given = "listen" in t
    if submission.tls_listen and tls is None:
        r.problem("submission", "tls_listen", "needs a [tls] section with certificate and key")

    d3 = POP3Settings()
    t = r.table(
        doc,
        "pop3",
        {
            "listen", "tls_listen", "idle_timeout", "allow_plaintext_auth", "max_auth_failures",
            "auth_failure_delay", "max_connections", "max_connections_per_client",
            "max_errors",
        },
    )
    pop3 = POP3Settings(
        listen=r.get(t, "pop3", "listen", d3.listen, r.endpoints),
        tls_listen=r.get(t, "pop3", "tls_listen", d3.tls_listen, r.endpoints),
        idle_timeout=r.get(t, "pop3", "idle_timeout", d3.idle_timeout, _duration),
        allow_plaintext_auth=r.get(
            t, "pop3", "allow_plaintext_auth", d3.allow_plaintext_auth, _bool
        ),
        max_auth_failures=r.get(
            t, "pop3", "max_auth_failures", d3.max_auth_failures, _positive_int
        ),
        auth_failure_delay=r.get(
            t, "pop3", "auth_failure_delay", d3.auth_failure_delay, _auth_failure_delay
        ),
        max_connections=r.get(t, "pop3", "max_connections", d3.max_connections, _positive_int),
        max_connections_per_client=r.get(
            t, "pop3", "max_connections_per_client", d3.max_connections_per_client, _positive_int
        ),
        max_errors=r.get(t, "pop3", "max_errors", d3.max_errors, _positive_int),
    )
    pop3_listen_given = "listen" in t
    if pop3.tls_listen and tls is None:
        r.problem("pop3", "tls_listen", "needs a [tls] section with certificate and key")
    if "idle_timeout" in t and 0 < pop3.idle_timeout < 600:  # 0: no autologout
        r.warn("pop3", "idle_timeout",
               f"{pop3.idle_timeout}s is below the 10 minutes RFC 1939 section 3 requires")

    if tls is None:
        # AUTH (and so submission) and POP3's plaintext logins are only for
        # TLS or this machine: a listener other hosts reach is of no use to
        # them then, which nothing else said (the README offers dropping
        # [tls] as the way to start without a certificate; the example
        # configuration names its listeners).  A default listener counts
        # as one the file names: a file without [submission] still listens
        # on tcp:587 on every address
        _warn_open_without_tls(
            r, "submission", submission.listen, submission_listen_given,
            "clients on other machines cannot log in, and so cannot submit mail (AUTH is "
            "offered only under TLS or to a client on this machine); add [tls] "
            '(docs/deployment.rst, "TLS certificates")')
        if not pop3.allow_plaintext_auth:
            _warn_open_without_tls(
                r, "pop3", pop3.listen, pop3_listen_given,
                "clients on other machines can log in only with APOP (users added with "
                "--allow-apop): USER/PASS and AUTH PLAIN need TLS there ([pop3] "
                'allow_plaintext_auth = false); add [tls] (docs/deployment.rst, '
                '"TLS certificates")')

    listeners = [
        (section, key, index, description)
        for section, key, descriptions in (
            ("smtp", "listen", smtp.listen),
            ("submission", "listen", submission.listen),
            ("submission", "tls_listen", submission.tls_listen),
            ("pop3", "listen", pop3.listen),
            ("pop3", "tls_listen", pop3.tls_listen),
        )
        for index, description in enumerate(descriptions)
    ]
    if not any("listen:" in p for p in r.problems):  # a bad one was replaced by its default
        for section, key, index, why in _shared_addresses(listeners):
            r.problem(section, key, why, index)

    d4 = RelaySettings()
    t = r.table(
        doc,
        "relay",
        {
            "port", "nameservers", "smarthost", "smarthost_tls", "smarthost_auth_file",
            "queue_lifetime", "delay_warning", "retry_schedule", "max_per_destination",
            "max_concurrent_deliveries", "require_tls_after_seen", "hosts_time_budget",
        },
    )
    auth_file = r.get(t, "relay", "smarthost_auth_file", "", _string)
    if auth_file:
        auth_file = r.resolve(auth_file)
        if not os.path.isfile(auth_file):
            r.problem("relay", "smarthost_auth_file", _not_a_file(auth_file))
    relay = RelaySettings(
        port=r.get(t, "relay", "port", d4.port, _port),
        nameservers=r.get(t, "relay", "nameservers", d4.nameservers, _nameservers),
        smarthost=r.get(t, "relay", "smarthost", d4.smarthost, _smarthost),
        smarthost_tls=r.get(t, "relay", "smarthost_tls", d4.smarthost_tls, _tls_mode),
        smarthost_auth_file=auth_file,
        queue_lifetime=r.get(t, "relay", "queue_lifetime", d4.queue_lifetime, _duration),
        delay_warning=r.get(t, "relay", "delay_warning", d4.delay_warning, _duration),
        retry_schedule=r.get(t, "relay", "retry_schedule", d4.retry_schedule, _schedule),
        max_per_destination=r.get(
            t, "relay", "max_per_destination", d4.max_per_destination, _positive_int
        ),
        max_concurrent_deliveries=r.get(
            t, "relay", "max_concurrent_deliveries", d4.max_concurrent_deliveries, _positive_int
        ),
        require_tls_after_seen=r.get(
            t, "relay", "require_tls_after_seen", d4.require_tls_after_seen, _bool
        ),
        hosts_time_budget=r.get(
            t, "relay", "hosts_time_budget", d4.hosts_time_budget, _positive_duration
        ),
    )
    if auth_file and not relay.smarthost:
        r.problem("relay", "smarthost_auth_file", "only used with [relay] smarthost")
    if ("smarthost_tls" in t and relay.smarthost_tls != "verify" and not relay.smarthost
            and not any("[relay] smarthost: " in p for p in r.problems)):
        # MX delivery has a TLS policy of its own (docs/relay.rst): an
        # admin who chose another policy here for it believes a setting
        # that does nothing.  The default written out (ARCHITECTURE.md's
        # example config and etc/mailhub.toml have it beside an empty
        # smarthost) says nothing wrong.  No smarthost as the hub takes it
        # (a blank one is none), but not after a smarthost that is a
        # problem (its value is then "": said once)
        r.warn("relay", "smarthost_tls",
               f"{quoted(t['smarthost_tls'])} has no effect without [relay] smarthost: mail "
               "goes to each domain's MX hosts, with STARTTLS when they offer it "
               "(docs/relay.rst, TLS policy)")
    if (auth_file and relay.smarthost and relay.smarthost_tls == "opportunistic"
            and not _on_this_machine(split_smarthost(relay.smarthost)[0])):
        # the password goes only over TLS, but to any certificate: RFC 8314
        # 5.3 has a submission client check it (RFC 7817).  A warning, as
        # the admin may trust the network; "none" says in its own name that
        # nothing is protected, and is not warned of.  Nor is a smarthost
        # on this machine (a local MTA, a TLS tunnel's end): nothing can
        # come between, no DNS answer is asked for, and its certificate
        # seldom names 127.0.0.1 for "verify" to pass -- the hub's servers
        # take passwords in the clear from loopback clients for that reason
        host = split_smarthost(relay.smarthost)[0]  # (a smarthost that is a problem is "")
        r.warn("relay", "smarthost_tls",
               '"opportunistic" sends the password of smarthost_auth_file over TLS without '
               "checking the smarthost's certificate: whoever can come between the hub and "
               f"{host} (DNS, the network) can pose as it and take the password (RFC 8314 "
               '5.3); use "verify", the default')
    ambiguous = smarthost_warning(relay.smarthost) if relay.smarthost else None
    if ambiguous:
        r.warn("relay", "smarthost", ambiguous)
    short = [(i, w) for i, w in enumerate(relay.retry_schedule) if w < 60]
    if "retry_schedule" in t and short:
        index, wait = short[0]
        r.warn("relay", "retry_schedule",
               f"a wait of {wait}s is under a minute; RFC 5321 4.5.4.1 asks for retries "
               "spaced well apart (the default starts at 1m)", index)
    if "hosts_time_budget" in t and 0 < relay.hosts_time_budget < 300:
        r.warn("relay", "hosts_time_budget",
               f"{relay.hosts_time_budget}s is under the 5 minutes one silent host may take "
               "(RFC 5321 4.5.3.2): after such a host, an attempt tries no other (the "
               "default is 15m)")
    if "queue_lifetime" in t and relay.queue_lifetime == 0:
        r.warn("relay", "queue_lifetime",
               "0 bounces every message that cannot be delivered at its first attempt "
               "(RFC 5321 4.5.4.1 suggests 4-5 days)")
    _warn_of_lifetime_against_waits(r, t, relay)

    r.name_homes()
    if problems:
        raise ConfigError(problems, warnings)
    return Settings(
        path=path,
        hub=hub,
        users=users,
        aliases=aliases,
        tls=tls,
        smtp=smtp,
        submission=submission,
        pop3=pop3,
        relay=relay,
        warnings=tuple(warnings),
        hostname_from=own_name_from,
        lines=r.lines,
        tls_unread=tuple(tls_unread),
    )


def _warn_of_lifetime_against_waits(r: _Reader, t: dict[str, Any],
                                    relay: RelaySettings) -> None:
    """Warn of a ``queue_lifetime`` that leaves the retry schedule or the
    "delayed" notice nothing to do.  ``queue_lifetime = "5"`` (or ``5``)
    is five seconds, not days: a message whose first attempt fails gets
    one more at the lifetime's end (``schedule.next_attempt``) and is
    bounced, never waiting as ``retry_schedule`` says.  A notice after
    ``delay_warning`` is sent only before the lifetime is over, so one
    not shorter than it never goes out.  One warning a mistake: the
    notice's is left out where the lifetime's is said (it follows from
    it), and either only when the file sets one of the keys compared."""
    lifetime, first = relay.queue_lifetime, relay.retry_schedule[0]
    if lifetime == 0:  # warned of above
        return
    keys = ("queue_lifetime", "retry_schedule", "delay_warning")
    if any(f"[relay] {key}:" in p for key in keys for p in r.problems):
        return  # a default in place of a bad value: nothing the file says
    raw = t.get("queue_lifetime")
    # "5" meant as days: the reader is told how it was read
    unit = " (a number without a unit is seconds)" if (
        isinstance(raw, int) or (isinstance(raw, str) and raw.strip()[-1:].isdigit())) else ""
    then = ("a message whose first attempt fails is tried again at most once, when the "
            "lifetime ends, then bounced (RFC 5321 4.5.4.1 suggests 4-5 days)")
    if lifetime < first and "queue_lifetime" in t:
        r.warn("relay", "queue_lifetime",
               f"{describe_delay(lifetime)}{unit} is shorter than the first wait of "
               f"retry_schedule ({describe_delay(first)}): {then}")
        return
    if lifetime < first and "retry_schedule" in t:
        r.warn("relay", "retry_schedule",
               f"the first wait, {describe_delay(first)}, is longer than queue_lifetime "
               f"({describe_delay(lifetime)}): {then}", 0)
        return
    warning = relay.delay_warning
    if 0 < warning and lifetime <= warning:
        off = "no \"delayed\" notice is ever sent (delay_warning = 0 turns it off)"
        if "delay_warning" in t:
            r.warn("relay", "delay_warning",
                   f"{describe_delay(warning)} is not shorter than queue_lifetime "
                   f"({describe_delay(lifetime)}): {off}")
        elif "queue_lifetime" in t:
            r.warn("relay", "queue_lifetime",
                   f"{describe_delay(lifetime)}{unit} is not longer than delay_warning "
                   f"({describe_delay(warning)}): {off}")


@dataclass(frozen=True)
class LocalSubmission:
    """The part of the config a local program needs to hand a message to
    the running hub (``txmailhub-sendmail``): where its MX listener is, the
    domain that qualifies bare names, the name for Message-IDs, the size
    limit, how many RSETs a session may send."""

    path: str
    hostname: str
    domains: tuple[str, ...]
    listen: tuple[str, ...]
    max_message_size: int
    state_dir: str = "var"  # (absolute when read from a file)
    #: ``[smtp] max_junk_commands``: the RSETs a session of the command
    #: may send before the hub counts them as errors (``sendmail_smtp.submit``)
    max_junk_commands: int = SMTPSettings.max_junk_commands
    #: ``[relay] retry_schedule``, for ``sendmail -bp``'s next attempts
    #: (``relay.schedule.due_by``); the default when missing or bad
    retry_schedule: tuple[int, ...] = RelaySettings.retry_schedule
    #: ``[aliases] file`` (absolute), when set: the command reads it to
    #: keep the recipients that lead to one mailbox in one transaction
    #: (``sendmail.prepare``); ``None`` when unset or not a usable value
    aliases_file: str | None = None
    #: ``[smtp] max_recipients``, the hub's transaction: a list no longer
    #: goes in one, and needs no aliases read; the default when missing
    #: or bad
    max_recipients: int = SMTPSettings.max_recipients
    #: ``[users] file`` (absolute; ``users`` beside the config when unset):
    #: only ``sendmail -bv`` reads it, to say which local names are
    #: mailboxes; ``None`` when the value is no usable path
    users_file: str | None = None
    #: ``[smtp] relay_networks``: whether the hub relays for the address
    #: the command reaches it from (``sendmail -bv``'s answer for a remote
    #: recipient); ``None`` when the value is bad (the hub's to report)
    relay_networks: tuple[str, ...] | None = SMTPSettings.relay_networks
    #: ``[hub] mailbox_quota``: ``sendmail -bv`` says the ``452`` RCPT
    #: gives a full mailbox; 0 (no quota) when missing or bad
    mailbox_quota: int = 0

    @property
    def primary_domain(self) -> str:
        return self.domains[0]

    @property
    def mail_dir(self) -> str:
        """The Maildirs, as ``Settings.mail_dir`` (``sendmail -bv``
        measures them for ``mailbox_quota``)."""
        return os.path.join(self.state_dir, "mail")

    @property
    def queue_dir(self) -> str:
        """What ``sendmail -bp`` (``mailq``) lists, as ``Settings.queue_dir``."""
        return os.path.join(self.state_dir, "queue")


def load_local_submission(path: str) -> LocalSubmission:
    """Read only ``[hub]`` and ``[smtp]`` of the config, with the same
    checks as ``load``; raise ``ConfigError`` listing their problems.
    ``[relay] retry_schedule`` is taken too when valid (``mailq``'s times),
    and ``[aliases] file`` when set (which recipients share a mailbox),
    with ``[smtp] max_recipients`` (when a list needs to know it), and the
    path of ``[users] file``, ``[smtp] relay_networks`` and ``[hub]
    mailbox_quota`` (``-bv``; the file itself is not read here).

    Why not ``load``: the sendmail command runs as any local user (a web
    server, a cron job), who may not read the TLS key or the smarthost
    password the rest of the file names, and has no business with them:
    the hub and ``mailhub check`` judge those."""
    path = os.path.abspath(path)
    data, folder = _read_config(path)
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError([_not_utf8(path, data, e)]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_not_toml(path, text, e)]) from None
    problems: list[str] = []
    r = _Reader(path, folder, problems, text, doc)
    hub = r.table(doc, "hub", {f.name for f in fields(HubSettings)})
    if "domains" not in hub:
        r.problem("hub", "domains", "required: the local domains, the primary one first")
    smtp = r.table(doc, "smtp", {f.name for f in fields(SMTPSettings)})
    d = SMTPSettings()
    settings = LocalSubmission(
        path=path,
        hostname=r.get(hub, "hub", "hostname", None, _hostname) or socket.getfqdn(),
        domains=r.get(hub, "hub", "domains", ("localhost",), _domains),
        listen=r.get(smtp, "smtp", "listen", d.listen, r.endpoints),
        max_message_size=r.get(smtp, "smtp", "max_message_size", d.max_message_size,
                               _positive_int),
        state_dir=r.resolve(r.get(hub, "hub", "state_dir", "var", _nonempty_string)),
        max_junk_commands=r.get(smtp, "smtp", "max_junk_commands", d.max_junk_commands,
                                _positive_int),
    )
    if problems:
        raise ConfigError(problems)
    aliases = doc.get("aliases")
    aliases_file = aliases.get("file") if isinstance(aliases, dict) else None
    if isinstance(aliases_file, str) and aliases_file and "\0" not in aliases_file:
        # only to group the recipients: a bad value, like a file this user
        # cannot read, is the hub's and `mailhub check`'s to report (a NUL,
        # which no path holds, would make the look at the file raise)
        settings = replace(settings, aliases_file=r.resolve(aliases_file))
    users = doc.get("users")
    users_file = users.get("file", "users") if isinstance(users, dict) else "users"
    if isinstance(users_file, str) and users_file and "\0" not in users_file:
        # only for -bv, as above: a bad value is the hub's to report
        settings = replace(settings, users_file=r.resolve(users_file))
    if "relay_networks" in smtp:
        # only for -bv, as above
        try:
            networks: tuple[str, ...] | None = _networks(smtp["relay_networks"])
        except (TypeError, ValueError):
            networks = None
        settings = replace(settings, relay_networks=networks)
    if "mailbox_quota" in hub:
        # only for -bv, as above
        try:
            settings = replace(settings,
                               mailbox_quota=_non_negative_int(hub["mailbox_quota"]))
        except (TypeError, ValueError):
            pass
    if "max_recipients" in smtp:
        # only to know when a list needs the aliases: a bad value, as above
        try:
            settings = replace(settings, max_recipients=_positive_int(smtp["max_recipients"]))
        except (TypeError, ValueError):
            pass
    relay = doc.get("relay")
    if isinstance(relay, dict) and "retry_schedule" in relay:
        # only for mailq's times: a bad value is the hub's and `mailhub
        # check`'s to report, and must not stop a message being handed over
        try:
            settings = replace(
                settings, retry_schedule=_schedule(relay["retry_schedule"]))
        except (TypeError, ValueError):
            pass
    return settings


def _unreadable(path: str, state_dir: str | None = None) -> str | None:
    """Why this process cannot read ``path`` (``None`` when it can): the
    hub reads the TLS files as the user it runs as, not as root.

    Run by a user who is neither root nor the hub's (``state_dir``'s
    owner), what this user can read says nothing of the hub: every
    ``mailhub`` command loads the config, and the ``chgrp`` that lets the
    hub read a key does nothing for that user.  Said so, with the users
    deployment.rst runs the commands as.  Otherwise (the hub's user, or no
    ``state_dir`` yet to tell) the ``chgrp`` of the hint names the group
    the hub's user has (``_hub_group``)."""
    try:
        # opened, not read: O_NONBLOCK, or a FIFO put there since the
        # ``isfile`` before would wait for a writer for ever (``load_pair``
        # then refuses what is no regular file)
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)))
        return None
    except OSError as e:
        import grp
        import pwd

        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = f"uid {os.geteuid()}"
        try:
            st = os.stat(state_dir) if state_dir else None
        except OSError:  # not made yet: the hub makes it at its first start
            st = None
        if st is not None and os.geteuid() not in (0, st.st_uid):
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = f"uid {st.st_uid}"
            if st.st_uid == 0:  # a hub run as root: "as root or as root" said it twice
                return (f"{path} cannot be read by {user}: {e.strerror}; {user} is not root, "
                        f"the user the hub runs as (the owner of state_dir {state_dir}): run "
                        "the mailhub commands as root (docs/deployment.rst)")
            return (f"{path} cannot be read by {user}: {e.strerror}; {user} is neither root nor "
                    f"the user the hub runs as ({owner}, the owner of state_dir {state_dir}): "
                    f"run the mailhub commands as root or as {owner} (docs/deployment.rst)")
        gid = _hub_group(state_dir, st) if state_dir and st is not None else os.getegid()
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        # pasted into root's shell: a path with a space, `;` or `$(...)` is one word
        pasted = shlex.quote(path)
        try:
            file_st = os.stat(path)
        except OSError:
            file_st = None
        if file_st is not None and file_st.st_gid not in (0, gid) and file_st.st_mode & 0o040:
            # root:ssl-cert 0640, shared with other services through its
            # group: a chgrp would take it from them (as check run as root
            # says, cli._hub_read_advice); the hub's user joins the group
            try:
                shared = grp.getgrgid(file_st.st_gid).gr_name
            except KeyError:
                shared = str(file_st.st_gid)
            hub = user
            if st is not None and st.st_uid != os.geteuid():
                try:
                    hub = pwd.getpwuid(st.st_uid).pw_name
                except KeyError:
                    hub = f"uid {st.st_uid}"
            join = (" ".join(shlex.quote(w) for w in ("usermod", "-a", "-G", shared, hub))
                    if not hub.startswith("uid ") else
                    f"SupplementaryGroups={shared} in its systemd unit")
            return (f"{path} cannot be read by {user}: {e.strerror}; its group {shared} reads "
                    "it (other services' too, perhaps): rather than change the file's group, "
                    f"add the user the hub runs as to that one (as root: {join}), then "
                    "restart the hub (docs/deployment.rst)")
        return (f"{path} cannot be read by {user}: {e.strerror}; the user the hub runs as "
                f"needs read access (for a key: chgrp {shlex.quote(group)} {pasted} && "
                f"chmod 640 {pasted})")


def _hub_group(state_dir: str, st: os.stat_result) -> int:
    """The group the hub's user (the owner of the ``state_dir`` whose stat
    is ``st``) has, for a ``chgrp`` that lets it read a key: ``state_dir``'s
    group -- twistd's ``--gid`` (the owner's login group need not be among
    the hub's groups then), ``install -d -g``, or that of a uid with no
    name (DynamicUser=) -- unless that group is only the one a setgid
    folder above handed down (``/var/lib`` g+s to ``staff``: a new folder
    takes its parent's group, not its maker's) and the owner is not in it:
    then the owner's login group.  A folder chowned to the user alone
    (root's group kept) gives the owner's login group too."""
    import pwd

    try:
        entry = pwd.getpwuid(st.st_uid) if st.st_uid != 0 else None
    except KeyError:
        entry = None
    if st.st_gid != 0:
        if entry is None or st.st_gid == entry.pw_gid:
            return st.st_gid
        try:
            member = st.st_gid in os.getgrouplist(entry.pw_name, entry.pw_gid)
        except OSError:
            member = False
        try:  # a group the folder above hands every new folder in it
            above = os.stat(os.path.dirname(os.path.abspath(state_dir)))
            handed_down = bool(above.st_mode & stat.S_ISGID) and above.st_gid == st.st_gid
        except OSError:
            handed_down = False
        if member or not handed_down:
            return st.st_gid
        return entry.pw_gid
    return entry.pw_gid if entry is not None else os.getegid()
