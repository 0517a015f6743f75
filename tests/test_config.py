"""The config schema: every key's parsing and every validation message."""

from __future__ import annotations

import dataclasses
import os
import pickle
import pwd
import re
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import DEFAULT_LISTENER_WARNING, as_user, make_certificate
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.config import (
    Settings,
    SMTPSettings,
    load,
    load_local_submission,
    load_text,
    parse_duration,
)
from txmailhub.errors import ConfigError

# a hostname: the default (the machine's name) may be a warning
MINIMAL = '[hub]\nhostname = "mail.example.org"\ndomains = ["Example.org.", "example.net"]\n'


def load_quiet(text: str, path: str) -> Settings:
    """``load_text`` without the warnings of the default [submission] and
    [pop3] listeners (every address, and these configs have no [tls]):
    for the tests of other warnings."""
    settings = load_text(text, path)
    return dataclasses.replace(settings, warnings=tuple(others(settings.warnings)))


def others(warnings: Iterable[str]) -> list[str]:
    """``warnings`` but those of the default listeners (``load_quiet``)."""
    return [w for w in warnings if not DEFAULT_LISTENER_WARNING.search(w)]


def problems(text: str, path: str = "/etc/mh/mailhub.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, path)
    return info.value.problems


def test_minimal_config_gets_documented_defaults() -> None:
    s = load_text(MINIMAL, "/etc/mh/mailhub.toml")
    assert s.hub.domains == ("example.org", "example.net")
    assert s.hub.primary_domain == "example.org"
    assert s.hub.state_dir == "/etc/mh/var"
    assert s.users.file == "/etc/mh/users"
    assert s.users.min_password_length == 8  # NIST SP 800-63B
    assert s.users.password_policy == "warn"
    assert s.aliases.file is None
    assert s.tls is None
    assert s.smtp.listen == ("tcp:25",)
    assert s.smtp.relay_networks == ("127.0.0.0/8", "::1/128")
    assert s.smtp.max_message_size == 26214400
    assert s.smtp.max_recipients == 100
    assert s.smtp.idle_timeout == 300
    assert s.smtp.max_connections == 500
    assert s.smtp.max_connections_per_client == 50
    assert (s.smtp.max_errors, s.smtp.max_junk_commands) == (10, 100)
    assert (s.smtp.max_auth_failures, s.smtp.auth_failure_delay) == (3, 1.0)
    assert (s.smtp.vrfy, s.smtp.expn) == (True, True)
    assert s.submission.listen == ("tcp:587",)
    assert s.submission.tls_listen == ()
    assert s.pop3.listen == ("tcp:110",)
    assert s.pop3.idle_timeout == 600
    assert s.pop3.allow_plaintext_auth is False
    assert s.pop3.tls_listen == ()
    assert (s.pop3.max_auth_failures, s.pop3.auth_failure_delay) == (3, 1.0)
    assert (s.pop3.max_connections, s.pop3.max_connections_per_client) == (200, 20)
    assert s.pop3.max_errors == 10
    assert s.relay.port == 25
    assert s.relay.nameservers == ()
    assert s.relay.smarthost == ""
    assert s.relay.smarthost_tls == "verify"
    assert s.relay.queue_lifetime == 5 * 86400
    assert s.relay.delay_warning == 4 * 3600
    assert s.relay.smarthost_auth_file == ""
    # docs/configuration.rst: "1m", "5m", "15m", "30m", "1h", "2h", "4h"
    assert s.relay.retry_schedule == (60, 300, 900, 1800, 3600, 7200, 14400)
    assert (s.relay.max_per_destination, s.relay.max_concurrent_deliveries) == (10, 50)
    assert s.relay.require_tls_after_seen is False
    assert s.mail_dir == "/etc/mh/var/mail"
    assert s.queue_dir == "/etc/mh/var/queue"
    # the default submission and POP3 listeners, on every address, without [tls]
    assert [w.split(": ")[1] for w in s.warnings] == ["[submission] listen", "[pop3] listen"]


def test_every_key_is_read(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    (tmp_path / "aliases").write_text("info: alice\n")
    (tmp_path / "auth").write_text("u:p\n")
    text = f"""
[hub]
hostname = "mx.example.org"
state_dir = "/srv/mail"
domains = ["example.org"]
mailbox_quota = 5000
log_files_kept = 3
[users]
file = "u.txt"
min_password_length = 12
password_policy = "enforce"
[aliases]
file = "aliases"
[tls]
certificate = "{cert}"
key = "{key}"
[smtp]
listen = ["tcp:2525:interface=127.0.0.1", "tcp6:2526"]
relay_networks = ["10.0.0.0/8"]
max_message_size = 1000
max_recipients = 5
idle_timeout = "10m"
max_connections = 7
max_connections_per_client = 3
max_errors = 4
max_junk_commands = 7
max_auth_failures = 2
auth_failure_delay = 0.5
vrfy = false
expn = false
[submission]
listen = ["tcp:1587"]
tls_listen = ["tcp:1465"]
[pop3]
listen = []
tls_listen = ["tcp:1995"]
idle_timeout = "1h"
max_connections = 11
max_connections_per_client = 4
allow_plaintext_auth = true
max_auth_failures = 9
auth_failure_delay = 2
max_errors = 25
[relay]
port = 2526
nameservers = ["127.0.0.1:5353", "::1", "[::1]:53"]
smarthost = "smtp.example.net:587"
smarthost_tls = "opportunistic"
smarthost_auth_file = "auth"
queue_lifetime = "2d"
delay_warning = "0s"
retry_schedule = ["1m", "2m"]
max_per_destination = 2
max_concurrent_deliveries = 8
require_tls_after_seen = true
hosts_time_budget = "20m"
"""
    s = load_text(text, str(tmp_path / "c.toml"))
    assert s.hub.hostname == "mx.example.org"
    assert s.hub.state_dir == "/srv/mail"
    assert s.hub.domains == ("example.org",)
    assert (s.hub.mailbox_quota, s.hub.log_files_kept) == (5000, 3)
    assert s.users.file == str(tmp_path / "u.txt")
    assert s.users.min_password_length == 12
    assert s.users.password_policy == "enforce"
    assert s.aliases.file == str(tmp_path / "aliases")
    assert s.tls is not None and s.tls.certificate == str(cert)
    assert s.tls.key == str(key)
    assert s.smtp.listen == ("tcp:2525:interface=127.0.0.1", "tcp6:2526")
    assert s.smtp.relay_networks == ("10.0.0.0/8",)
    assert (s.smtp.max_message_size, s.smtp.max_recipients) == (1000, 5)
    assert s.smtp.idle_timeout == 600
    assert (s.smtp.max_connections, s.smtp.max_connections_per_client) == (7, 3)
    assert (s.smtp.max_errors, s.smtp.max_auth_failures) == (4, 2)
    assert s.smtp.max_junk_commands == 7
    assert s.smtp.auth_failure_delay == 0.5
    assert (s.smtp.vrfy, s.smtp.expn) == (False, False)
    assert s.submission.listen == ("tcp:1587",)
    assert s.submission.tls_listen == ("tcp:1465",)
    assert s.pop3.listen == ()
    assert s.pop3.tls_listen == ("tcp:1995",)
    assert s.pop3.idle_timeout == 3600
    assert (s.pop3.max_connections, s.pop3.max_connections_per_client) == (11, 4)
    assert s.pop3.allow_plaintext_auth is True
    assert (s.pop3.max_auth_failures, s.pop3.auth_failure_delay) == (9, 2.0)
    assert s.pop3.max_errors == 25
    assert s.relay.port == 2526
    assert s.relay.nameservers == ("127.0.0.1:5353", "::1", "[::1]:53")
    assert s.relay.smarthost == "smtp.example.net:587"
    assert s.relay.smarthost_tls == "opportunistic"
    assert s.relay.smarthost_auth_file == str(tmp_path / "auth")
    assert s.relay.queue_lifetime == 2 * 86400
    assert s.relay.delay_warning == 0
    assert s.relay.retry_schedule == (60, 120)
    assert (s.relay.max_per_destination, s.relay.max_concurrent_deliveries) == (2, 8)
    assert s.relay.require_tls_after_seen is True
    assert s.relay.hosts_time_budget == 1200


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("5m", 300), ("4h", 14400), ("5d", 432000), ("90", 90), (45, 45), (" 2m ", 120)],
)
def test_durations(value: str | int, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5x", "m", "", "-1s", "1.5h", True, 1.5, -3,
                                   # other scripts' digits, a newline, a no-break space
                                   "\u0661\u0665m", "15m\n", "\u00a015m"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[smtp]\nidle_timeout = "5x"', "[smtp] idle_timeout: unknown duration '5x'"),
        ("[smtp]\nlisten = [\"tcp:abc\"]", "[smtp] listen: endpoint 'tcp:abc' is not valid"),
        ("[smtp]\nlisten = [\"ssl:465\"]", "[smtp] listen: endpoint 'ssl:465': use tcp:PORT"),
        ("[smtp]\nlisten = \"tcp:25\"", "[smtp] listen: expected a list of strings, got a string"),
        ("[smtp]\nlisten = [25]", "[smtp] listen: expected a list of strings, found a number 25"),
        ("[smtp]\nmax_recipients = 0", "[smtp] max_recipients: must be greater than 0, got 0"),
        ("[smtp]\nmax_recipients = \"10\"", "[smtp] max_recipients: expected a whole number"),
        ("[smtp]\nmax_message_size = true", "[smtp] max_message_size: expected a whole number"),
        ("[smtp]\nvrfy = \"yes\"", "[smtp] vrfy: expected true or false, got a string"),
        ("[smtp]\nrelay_networks = [\"10.0.0.300/8\"]", "[smtp] relay_networks: '10.0.0.300/8'"),
        ("[smtp]\nbogus = 1", "[smtp] bogus: unknown key (known keys: auth_failure_delay"),
        ("[smtp]\nauth_failure_delay = -1", "[smtp] auth_failure_delay: must not be negative"),
        ("[smtp]\nauth_failure_delay = true", "[smtp] auth_failure_delay: expected a number"),
        ("[pop3]\nallow_plaintext_auth = 1", "[pop3] allow_plaintext_auth: expected true or false"),
        ("[pop3]\ntls_listen = [\"tcp:995\"]", "[pop3] tls_listen: needs a [tls] section"),
        ("[submission]\ntls_listen = [\"tcp:465\"]", "[submission] tls_listen: needs a [tls]"),
        ("[relay]\nport = 70000", "[relay] port: 70000 is not a port number"),
        ("[relay]\nport = 65536", "[relay] port: 65536 is not a port number (1-65535)"),
        ("[relay]\nsmarthost = \"nohost\"", "[relay] smarthost: 'nohost': use \"host:port\""),
        ("[relay]\nsmarthost = \":587\"", "[relay] smarthost: ':587': use \"host:port\""),
        ("[relay]\nsmarthost = \"smtp.example.net:0\"", "[relay] smarthost: 'smtp.example.net:0'"),
        # what the relay could never connect to: said at load, not at the
        # first delivery
        ("[relay]\nsmarthost = \"[smtp..example.net]:25\"",
         "[relay] smarthost: '[smtp..example.net]:25': [smtp..example.net] is no IP address "
         "([192.0.2.1], [::1] or [IPv6:2001:db8::1]) and smtp..example.net can be no name "
         "in DNS"),
        ("[relay]\nsmarthost = \"[IPv6:smtp.example.net]:25\"",
         "[relay] smarthost: '[IPv6:smtp.example.net]:25': [IPv6:smtp.example.net] is no "
         "IP address"),
        ("[relay]\nsmarthost = \"smtp..example.net:25\"",
         "[relay] smarthost: 'smtp..example.net:25': smtp..example.net can be no name in DNS"),
        ("[relay]\nsmarthost = \"\u2603.example:25\"",
         "[relay] smarthost: '\u2603.example:25': \u2603.example has no IDNA2008"),
        # RFC 5321 4.1.3: after "IPv6:" an IPv6 address in one of its four
        # forms, never an IPv4 one (it was connected to as 192.0.2.1)
        ("[relay]\nsmarthost = \"[IPv6:192.0.2.1]:25\"",
         "[relay] smarthost: '[IPv6:192.0.2.1]:25': [IPv6:192.0.2.1] is no IPv6 address, "
         "the only kind an \"IPv6:\" literal holds (RFC 5321 4.1.3); write [192.0.2.1]"),
        ("[relay]\nsmarthost = \"[ipv6:192.0.2.1]:25\"", "[ipv6:192.0.2.1] is no IPv6 address"),
        ("[relay]\nsmarthost = \"12345:25\"",
         "[relay] smarthost: '12345:25': 12345 is read by the resolver as 0.0.48.57"),
        ("[relay]\nsmarthost = \"[IPv6:fe80::1%eth0]:25\"",
         "[relay] smarthost: '[IPv6:fe80::1%eth0]:25': [IPv6:fe80::1%eth0] is no IP address"),
        # a leading zero: the resolver (inet_aton) reads 010 as octal, and
        # the relay connected to 8.0.0.1, not to the 10.0.0.1 written
        ("[relay]\nsmarthost = \"010.0.0.1:25\"",
         "[relay] smarthost: '010.0.0.1:25': 010.0.0.1 is ambiguous: the resolver reads "
         "it as 8.0.0.1"),
        ("[relay]\nsmarthost = \"192.168.1.09:25\"",
         "[relay] smarthost: '192.168.1.09:25': 192.168.1.09 is ambiguous: the resolver "
         "reads no address in it"),
        ("[relay]\nsmarthost_tls = \"maybe\"", "[relay] smarthost_tls: 'maybe': use \"verify\""),
        ("[relay]\nnameservers = [\"dns.example\"]", "[relay] nameservers: 'dns.example'"),
        ("[relay]\nretry_schedule = []", "[relay] retry_schedule: expected a non-empty list"),
        ("[relay]\nsmarthost_auth_file = \"nope\"", "[relay] smarthost_auth_file: "),
        ("[aliases]\nfile = \"missing-aliases\"", "[aliases] file: "),
        ("[tls]\ncertificate = \"c.pem\"", "[tls] key: required when [tls] is present"),
        ("[weird]\nx = 1", "[weird]: unknown section"),
        ("[users]\nfile = \"\"", "[users] file: must not be empty"),
        ("[users]\nfile = \" \"", "[users] file: must not be empty"),
        ("[users]\nmin_password_length = 0", "[users] min_password_length: must be greater"),
        ("[users]\nmin_password_length = \"8\"", "[users] min_password_length: expected a "
         "whole number"),
        ("[users]\npassword_policy = \"strict\"", "[users] password_policy: 'strict': use "
         "\"warn\" or \"enforce\""),
        ("[users]\nmin_password_length = 129", "[users] min_password_length: 129 is over the "
         "longest password accepted (128 characters)"),
        ("[smtp]\nmax_connections = []", "[smtp] max_connections: expected a whole number, got"),
    ],
)
def test_each_problem_is_one_clear_line(snippet: str, expected: str) -> None:
    found = problems(MINIMAL + snippet + "\n")
    assert any(expected in p for p in found), found
    assert all(p.startswith("/etc/mh/mailhub.toml: ") for p in found)
    assert all("\n" not in p and "Traceback" not in p for p in found)


def test_a_byte_order_mark_is_named(tmp_path: Path) -> None:
    # a file saved by an editor that writes a BOM before UTF-8 text: it was
    # "Invalid statement (at line 1, column 1)", a line that looks right
    bom = ("not valid TOML: the file starts with a byte order mark (U+FEFF, which some "
           "editors write before UTF-8 text): save it as UTF-8 without a BOM")
    assert problems("\ufeff" + MINIMAL) == [f"/etc/mh/mailhub.toml: {bom}"]
    conf = tmp_path / "mailhub.toml"
    conf.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    for reader in (load, load_local_submission):  # the hub's and the sendmail command's
        with pytest.raises(ConfigError) as info:
            reader(str(conf))
        assert info.value.problems == [f"{conf}: {bom}"]
    # any other TOML error keeps tomllib's words and place
    assert problems(MINIMAL + "x = \n") == [
        "/etc/mh/mailhub.toml: not valid TOML: Invalid value (at line 4, column 5)"]


def test_a_file_that_is_not_utf8_is_named_so(tmp_path: Path) -> None:
    # TOML is UTF-8 (a file saved as Latin-1, a comment with an umlaut):
    # one line that says so, from the hub's reader and the sendmail
    # command's, not a traceback
    conf = tmp_path / "mailhub.toml"
    conf.write_bytes(MINIMAL.encode() + "# M\u00fcller's hub\n".encode("latin-1"))
    for reader in (load, load_local_submission):
        with pytest.raises(ConfigError) as info:
            reader(str(conf))
        line = MINIMAL.count("\n") + 1
        assert info.value.problems == [f"{conf}: the file is not UTF-8 text (the octet 0xFC "
                                       f"at line {line}, column 4): save it as UTF-8"]


def test_a_key_of_another_section_names_the_section_it_goes_in() -> None:
    # a new user's slip: the size limit put with the relay settings got
    # the list of [relay]'s keys only, and the search for it in the docs
    found = problems(MINIMAL + "[relay]\nmax_message_size = 1048576\n")
    assert found == [
        "/etc/mh/mailhub.toml: [relay] max_message_size: unknown key in [relay]: it goes in "
        "[smtp] (known keys of [relay]: delay_warning, hosts_time_budget, "
        "max_concurrent_deliveries, max_per_destination, nameservers, port, queue_lifetime, "
        "require_tls_after_seen, retry_schedule, smarthost, smarthost_auth_file, "
        "smarthost_tls) (at line 5)"]
    # the key of an optional section that is not there ([tls]), and one of
    # several sections: each named
    found = problems(MINIMAL.replace('domains', 'certificate = "c.pem"\ndomains')
                     + "[relay]\nidle_timeout = \"5m\"\n")
    assert any(p.startswith("/etc/mh/mailhub.toml: [hub] certificate: unknown key in [hub]: "
                            "it goes in [tls] (") for p in found), found
    assert any(p.startswith("/etc/mh/mailhub.toml: [relay] idle_timeout: unknown key in "
                            "[relay]: it goes in [smtp] or [pop3] (") for p in found), found
    # a key no section has keeps the plain line
    assert problems(MINIMAL + "[relay]\nsmarthost_tsl = \"none\"\n")[0].startswith(
        "/etc/mh/mailhub.toml: [relay] smarthost_tsl: unknown key (known keys: ")


def test_an_unknown_array_of_tables_is_an_unknown_section() -> None:
    # ``[[foo]]`` is a section line, not a key above the first one: the
    # top-level check took every value that is not a table for a key
    found = problems(MINIMAL + "[[smtpd]]\nlisten = []\n")
    assert found == ["/etc/mh/mailhub.toml: [smtpd]: unknown section (known: aliases, hub, "
                     "pop3, relay, smtp, submission, tls, users) (at line 4)"]
    # a plain list above the first section stays a key outside every section
    assert problems("ports = [25]\n" + MINIMAL)[0].startswith(
        "/etc/mh/mailhub.toml: ports: a key before the first [section] line, outside every ")


@pytest.mark.parametrize("line", [
    'smtpd = [{listen = []}]', 'smtpd = {listen = []}', 'smtpd.listen = []', 'smtpd = {}'])
def test_a_table_written_as_a_key_above_the_sections_is_no_section(line: str) -> None:
    # ``smtpd = [{listen = []}]`` above the first section line parses as
    # ``[[smtpd]]`` does (``smtpd = {...}`` as ``[smtpd]``): each was
    # "[smtpd]: unknown section", for a file with no such section line
    for text, at in ((f"{line}\n{MINIMAL}", 1), (f"# the hub\n\n  {line}  # inline\n{MINIMAL}", 3)):
        assert problems(text) == [
            "/etc/mh/mailhub.toml: smtpd: a key before the first [section] line, outside "
            "every section (sections: aliases, hub, pop3, relay, smtp, submission, tls, users)"
            f" (at line {at})"]
    # a line in a multi-line string is no section line, nor one an array
    # of arrays starts with "["; real section lines of such names still are
    text = (f'note = """\n[hub]\n"""\nnested = [\n[1],\n]\n{line}\n{MINIMAL}'
            "[[smtpd2]]\n[smtpd3.listen]\n")
    assert problems(text) == [
        "/etc/mh/mailhub.toml: note: a key before the first [section] line, outside every "
        "section (sections: aliases, hub, pop3, relay, smtp, submission, tls, users) "
        "(at line 1)",
        "/etc/mh/mailhub.toml: nested: a key before the first [section] line, outside every "
        "section (sections: aliases, hub, pop3, relay, smtp, submission, tls, users) "
        "(at line 4)",
        "/etc/mh/mailhub.toml: smtpd: a key before the first [section] line, outside every "
        "section (sections: aliases, hub, pop3, relay, smtp, submission, tls, users) "
        "(at line 7)",
        "/etc/mh/mailhub.toml: [smtpd2]: unknown section (known: aliases, hub, pop3, relay, "
        "smtp, submission, tls, users) (at line 11)",
        "/etc/mh/mailhub.toml: [smtpd3]: unknown section (known: aliases, hub, pop3, relay, "
        "smtp, submission, tls, users) (at line 12)"]


def test_a_table_written_as_a_key_says_the_section_it_belongs_to() -> None:
    # a known section's key, given as an inline table above the sections
    found = problems('max_message_size = {}\n' + MINIMAL)
    assert found == ["/etc/mh/mailhub.toml: max_message_size: a key before the first [section] "
                     "line, outside every section: it goes in [smtp] (at line 1)"]


def test_a_key_before_the_first_section_is_no_section() -> None:
    # ``state_dir = "var"`` at the top of the file: it was "[state_dir]:
    # unknown section", which sent the user looking for a section
    found = problems('state_dir = "var"\n' + MINIMAL)
    assert found == ["/etc/mh/mailhub.toml: state_dir: a key before the first [section] line, "
                     "outside every section: it goes in [hub] (at line 1)"]
    # the [hub] line left out: each key said so, then what [hub] lacks
    found = problems('hostname = "mail.example.org"\ndomains = ["example.org"]\nsize = 5\n')
    assert found == [
        "/etc/mh/mailhub.toml: hostname: a key before the first [section] line, outside every "
        "section: it goes in [hub] (at line 1)",
        "/etc/mh/mailhub.toml: domains: a key before the first [section] line, outside every "
        "section: it goes in [hub] (at line 2)",
        "/etc/mh/mailhub.toml: size: a key before the first [section] line, outside every "
        "section (sections: aliases, hub, pop3, relay, smtp, submission, tls, users) "
        "(at line 3)",
        # a key the file does not have: no line
        "/etc/mh/mailhub.toml: [hub] domains: required: the local domains, the primary one "
        "first"]
    # a real table of an unknown name is still an unknown section
    assert problems(MINIMAL + "[weird]\nx = 1\n") == [
        "/etc/mh/mailhub.toml: [weird]: unknown section (known: aliases, hub, pop3, relay, "
        "smtp, submission, tls, users) (at line 4)"]


@pytest.mark.parametrize(
    ("section", "key"),
    [("smtp", k) for k in ("max_message_size", "max_recipients", "max_connections",
                           "max_connections_per_client", "max_errors", "max_junk_commands",
                           "max_auth_failures")]
    + [("pop3", k) for k in ("max_auth_failures", "max_connections",
                             "max_connections_per_client")]
    + [("relay", k) for k in ("port", "max_per_destination", "max_concurrent_deliveries")],
)
def test_every_count_must_be_greater_than_0(section: str, key: str) -> None:
    # a limit of 0 or less would refuse everything (or nothing): a typo, said at once
    for bad in (0, -1):
        assert problems(MINIMAL + f"[{section}]\n{key} = {bad}\n") == [
            f"/etc/mh/mailhub.toml: [{section}] {key}: must be greater than 0, got {bad} "
            "(at line 5)"]


@pytest.mark.parametrize("section", ["smtp", "pop3"])
def test_every_auth_failure_delay_must_not_be_negative(section: str) -> None:
    assert problems(MINIMAL + f"[{section}]\nauth_failure_delay = -0.5\n") == [
        f"/etc/mh/mailhub.toml: [{section}] auth_failure_delay: must not be negative, got -0.5"
        " (at line 5)"]


def test_domains_required_and_validated() -> None:
    assert problems("[smtp]\n", "/x.toml") == [
        "/x.toml: [hub] domains: required: the local domains, the primary one first"
    ]
    assert "list at least one local domain" in problems('[hub]\ndomains = []\n')[0]
    assert "not a domain name" in problems('[hub]\ndomains = ["a b"]\n')[0]
    longest = ".".join(["x" * 63] * 3 + ["x" * 61])  # 253 characters (RFC 1035 2.3.4)
    load_text(f'[hub]\ndomains = ["{longest}"]\n', "/x.toml")
    for bad in ("Bad_dom!ain", "a..b", "-x-.test", "x-.test", "x" * 64 + ".test",
                longest + "x"):
        [problem] = problems(f'[hub]\ndomains = ["{bad}"]\n')
        assert "[hub] domains:" in problem and "is not a domain name" in problem, bad
    [twice] = problems('[hub]\ndomains = ["a.test", "A.test."]\n')
    assert twice.endswith("[hub] domains: 'a.test' is listed twice (at line 2)")
    # IDNs (combining marks included) and address literals: fine
    load_text('[hub]\ndomains = ["bücher.example", "x-1.test", "हिन्दी.example", '
              '"ตัวอย่าง.example", "தமிழ்.example", "[127.0.0.1]"]\n', "/x.toml")
    load_text('[hub]\nhostname = "[192.0.2.1]"\ndomains = ["a.test"]\n', "/x.toml")
    (problem,) = problems('[hub]\nhostname = "mx.test"\ndomains = ["[IPv6:1:2:3:4:5:6:7::]"]\n')
    assert "is not an address literal" in problem
    [bad] = problems('[hub]\ndomains = ["[300.1.1.1]"]\n')
    assert "is not an address literal" in bad


def test_the_hostname_must_be_a_domain_name() -> None:
    # it goes into the greeting, EHLO and Received: a space or CR would reach the wire
    for bad in ("mail audit test", "mail.test\\r\\n250 evil", "mail..test", "_x.test"):
        [problem] = problems(f'[hub]\nhostname = "{bad}"\ndomains = ["a.test"]\n')
        assert "[hub] hostname:" in problem and "is not a domain name" in problem, bad
    load_text('[hub]\nhostname = "mx1.example.org."\ndomains = ["a.test"]\n', "/x.toml")


def test_the_hostname_keeps_to_the_lengths_of_a_domain_name() -> None:
    # RFC 1035 2.3.4: labels of 63 octets or less, names of 253 (255 on
    # the wire).  A name or label over the length is told so first, before
    # what is wrong with its characters; "." is no name, not two dots
    def hub(name: str) -> str:
        return f'[hub]\nhostname = "{name}"\ndomains = ["a.test"]\n'

    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == 253
    assert load_text(hub(longest), "/x.toml").hub.hostname == longest
    load_text(hub("a" * 63 + ".example"), "/x.toml")
    tail = "(at line 2)"
    for name in (longest + "d", longest[:-1] + "_d", "."):
        [problem] = problems(hub(name))
        assert problem.endswith(f"is not a domain name (1 to 253 characters) {tail}"), problem
    for label in ("a" * 64, "a" * 63 + "_"):
        [problem] = problems(hub(label + ".example"))
        assert problem.endswith(f"is not a domain name: the label '{'a' * 20}'... is over 63 "
                                f"characters {tail}"), problem


def test_an_idn_is_one_domain_however_it_is_spelled() -> None:
    # the A-label, a capital and a decomposed spelling all name bücher.example
    s = load_text('[hub]\ndomains = ["XN--BCHER-KVA.example", "example.org"]\n', "/x.toml")
    assert s.hub.domains == ("bücher.example", "example.org")
    assert s.hub.primary_domain == "bücher.example"
    found = problems('[hub]\ndomains = ["bücher.example", "xn--bcher-kva.example", '
                     '"bu\u0308cher.example"]\n')
    assert [p.split(": ", 2)[2] for p in found] == [
        "'xn--bcher-kva.example' is listed twice (as bücher.example) (at line 2)",
        "'bu\u0308cher.example' is listed twice (as bücher.example) (at line 2)"], found
    [bad] = problems('[hub]\ndomains = ["xn--zz.example"]\n')
    assert "'xn--zz.example' is not a valid internationalized domain name" in bad


def test_local_domains_follow_the_smtp_paths_rule_label_by_label() -> None:
    # txmailhub.address.domain_problem for both: an ASCII label IDNA2008
    # would not convert ("ab--cd", RFC 5890 2.3.1's reserved LDH label; the
    # paths' underscore) beside a U-label or an A-label, as SMTP takes it
    s = load_text('[hub]\ndomains = ["ab--cd.b\u00fccher.test", "my_host.example", '
                  '"_dmarc.xn--bcher-kva.test"]\n', "/x.toml")
    assert s.hub.domains == ("ab--cd.b\u00fccher.test", "my_host.example",
                             "_dmarc.b\u00fccher.test")
    # its A-label spelling is the same domain
    s = load_text('[hub]\ndomains = ["AB--CD.XN--BCHER-KVA.test"]\n', "/x.toml")
    assert s.hub.domains == ("ab--cd.b\u00fccher.test",)
    [twice] = problems('[hub]\ndomains = ["ab--cd.b\u00fccher.test", '
                       '"ab--cd.xn--bcher-kva.test"]\n')
    assert twice.endswith("'ab--cd.xn--bcher-kva.test' is listed twice "
                          "(as ab--cd.b\u00fccher.test) (at line 2)"), twice
    # what SMTP refuses stays refused: a fake A-label beside a U-label or
    # not, a snowman, a label over 63 octets as an A-label
    for bad in ("xn--zz.b\u00fccher.test", "mail.xn--zz.test", "\u2603.test",
                "\u00fc" * 58 + ".test"):
        [problem] = problems(f'[hub]\ndomains = ["{bad}"]\n')
        assert "is not a valid internationalized domain name" in problem, problem


def test_an_idn_hostname_is_written_as_its_a_label() -> None:
    # greetings, EHLO and Received carry it: ASCII only (RFC 6531 3.7.1)
    [problem] = problems('[hub]\nhostname = "mail.bücher.example"\ndomains = ["a.test"]\n')
    assert problem.endswith("[hub] hostname: 'mail.bücher.example': write the name in its "
                            "ASCII (A-label) form, 'mail.xn--bcher-kva.example': it goes into "
                            "greetings, EHLO and Received fields (at line 2)"), problem
    load_text('[hub]\nhostname = "mail.xn--bcher-kva.example"\ndomains = ["a.test"]\n', "/x")


def test_all_problems_reported_together() -> None:
    found = problems(MINIMAL + '[smtp]\nidle_timeout = "5x"\nmax_recipients = -2\nfoo = 1\n')
    assert len(found) == 3


def test_invalid_toml_is_one_line() -> None:
    found = problems("[hub\n")
    assert len(found) == 1 and "not valid TOML" in found[0]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "absent.toml"))
    assert "cannot read the config file" in info.value.problems[0]


def test_tls_files_must_exist_and_match(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path / "a")
    _, other_key = make_certificate(tmp_path / "b")
    found = problems(MINIMAL + f'[tls]\ncertificate = "{cert}"\nkey = "{tmp_path}/none.pem"\n')
    assert any("[tls] key:" in p and "does not exist" in p for p in found)
    found = problems(MINIMAL + f'[tls]\ncertificate = "{cert}"\nkey = "{other_key}"\n')
    assert any(f"key {other_key} does not belong to the first certificate in {cert}" in p
               for p in found), found
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem")
    found = problems(MINIMAL + f'[tls]\ncertificate = "{garbage}"\nkey = "{key}"\n')
    assert any(f"certificate {garbage} holds no PEM certificate" in p for p in found), found


def deny_open(monkeypatch, denied: Path) -> None:
    """``open`` (and ``os.open``) of ``denied`` fails with EACCES (a key
    the hub's user may not read; the test may run as root, who reads
    every file)."""
    import builtins

    real_open, real_os_open = builtins.open, os.open

    def guarded(path, *args, **kwargs):
        if str(path) == str(denied):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def guarded_os(path, *args, **kwargs):
        if str(path) == str(denied):
            raise PermissionError(13, "Permission denied", str(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(os, "open", guarded_os)


def test_tls_file_the_hub_cannot_read_is_named(tmp_path: Path, monkeypatch) -> None:
    # the hub's user (not root) must read the key: say so, not "cannot be
    # used together: [('system library', '', ''), ('BIO routines', ...)]"
    cert, key = make_certificate(tmp_path)
    deny_open(monkeypatch, key)
    found = problems(MINIMAL + f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    assert len(found) == 1, found
    assert found[0].startswith(f"/etc/mh/mailhub.toml: [tls] key: {key} cannot be read by ")
    assert "Permission denied" in found[0] and "chmod 640" in found[0]
    assert "cannot be used together" not in found[0]
    # the group of the user who ran check (the hub's user, run as it), not
    # a "mailhub" group a hub user of another name does not have
    import grp

    group = grp.getgrgid(os.getegid()).gr_name
    assert f"(for a key: chgrp {group} {key} && chmod 640 {key})" in found[0]
    if os.geteuid() != 0:
        return
    # run by another user (root, or one with no business there): the group
    # of state_dir's owner, the user the hub runs as
    import pwd

    state = tmp_path / "state"
    state.mkdir()
    hub_user = pwd.getpwnam("nobody")
    os.chown(state, hub_user.pw_uid, hub_user.pw_gid)
    found = problems(MINIMAL + f'state_dir = "{state}"\n'
                     f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    group = grp.getgrgid(hub_user.pw_gid).gr_name
    assert f"(for a key: chgrp {group} {key} && chmod 640 {key})" in found[0], found


@pytest.mark.skipif(os.geteuid() != 0, reason="gives state_dir to other users")
@pytest.mark.parametrize("owner, group, named", [
    # twistd --uid nobody --gid daemon: the hub's folder and process have
    # group daemon, and nobody's own group may not be among the hub's
    ("nobody", "daemon", "daemon"),
    # deployment.rst's "install -d -o root -g mailhub -m 0770" shape
    ("root", "daemon", "daemon"),
    # a hub user with no name (a numeric uid, systemd's DynamicUser=)
    (54321, 54322, "54322"),
    # a folder chowned to the user alone keeps root's group: the user's own
    ("nobody", "root", "nogroup"),
])
def test_an_unreadable_keys_hint_names_the_group_of_the_hubs_state_dir(
        tmp_path: Path, monkeypatch, owner, group, named) -> None:
    # check run by someone else than the hub's user: the chgrp names the
    # group the hub has, which its state folder shows; the owner's login
    # group (or the group of whoever ran check) is not always one of it
    import grp
    import pwd

    cert, key = make_certificate(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    uid = owner if isinstance(owner, int) else pwd.getpwnam(owner).pw_uid
    gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
    os.chown(state, uid, gid)
    deny_open(monkeypatch, key)
    found = problems(MINIMAL + f'state_dir = "{state}"\n'
                     f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    assert f"(for a key: chgrp {named} {key} && chmod 640 {key})" in found[0], found


@pytest.mark.skipif(os.geteuid() != 0, reason="loads the config as other users")
def test_a_key_unreadable_by_a_user_neither_root_nor_the_hubs_says_whom_to_run_as(
        open_tmp: Path) -> None:
    # `mailhub queue list` (any command: each loads the config) run by an
    # admin of their own: "[tls] key ... cannot be read by admin ... chgrp
    # <state_dir's group> key.pem", which lets the hub read it, not admin
    cert, key = make_certificate(open_tmp)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)  # root's: the hub's user may not read it either
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, 4343, 4343)  # the hub's user, a uid with no name
    text = MINIMAL + f'state_dir = "{state}"\n[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
    load_text(text, "/etc/mh/mailhub.toml")  # as root first (as_user)
    found = as_user(65534, 65534, lambda: problems(text))
    assert found == [
        f"/etc/mh/mailhub.toml: [tls] key: {key} cannot be read by nobody: Permission denied; "
        f"nobody is neither root nor the user the hub runs as (uid 4343, the owner of "
        f"state_dir {state}): run the mailhub commands as root or as uid 4343 "
        "(docs/deployment.rst) (at line 7)"], found
    # the hub's user: the chgrp that lets it read the key, as before
    found = as_user(4343, 4343, lambda: problems(text))
    assert len(found) == 1 and found[0].endswith(
        f"cannot be read by uid 4343: Permission denied; the user the hub runs as needs read "
        f"access (for a key: chgrp 4343 {key} && chmod 640 {key}) (at line 7)"), found


@pytest.mark.skipif(os.geteuid() != 0, reason="loads the config as the hub's user")
@pytest.mark.parametrize("name", ["tls dir", "tls;touch pwned", "$(touch pwned)", "it's",
                                  "tls\ndir"])
def test_the_chgrp_for_an_unreadable_key_pasted_into_a_shell_lets_the_hub_read_it(
        open_tmp: Path, name: str) -> None:
    # the line is for root's shell: a key in a folder with a space made
    # chgrp and chmod act on two paths, and `;` or `$(...)` ran a command
    import json
    import shlex

    folder = open_tmp / name
    folder.mkdir(mode=0o755)
    cert, key = make_certificate(folder)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)  # root's: the hub's user may not read it
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    text = (MINIMAL + f'state_dir = "{state}"\n[tls]\ncertificate = {json.dumps(str(cert))}\n'
            f'key = {json.dumps(str(key))}\n')
    load_text(text, "/etc/mh/mailhub.toml")  # as root first (as_user)
    found = as_user(65534, 65534, lambda: problems(text))
    assert len(found) == 1, found
    assert found[0].endswith(") (at line 7)"), found
    line = found[0][found[0].index("(for a key: ") + len("(for a key: "):-len(") (at line 7)")]
    assert shlex.split(line) == ["chgrp", "nogroup", str(key), "&&", "chmod", "640",
                                 str(key)], line
    subprocess.run(["sh", "-c", line], cwd=open_tmp, check=True)
    assert not (open_tmp / "pwned").exists()
    assert as_user(65534, 65534, lambda: load_text(text, "/etc/mh/mailhub.toml")) is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="loads the config as another user")
def test_a_key_unreadable_by_an_admin_of_a_hub_run_as_root_names_root_once(
        open_tmp: Path) -> None:
    # state_dir root's: the hub runs as root, and "run the mailhub commands
    # as root or as root" named it twice
    cert, key = make_certificate(open_tmp)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)
    state = open_tmp / "state"
    state.mkdir()
    text = MINIMAL + f'state_dir = "{state}"\n[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
    load_text(text, "/etc/mh/mailhub.toml")  # as root first (as_user)
    found = as_user(65534, 65534, lambda: problems(text))
    assert found == [
        f"/etc/mh/mailhub.toml: [tls] key: {key} cannot be read by nobody: Permission denied; "
        f"nobody is not root, the user the hub runs as (the owner of state_dir {state}): "
        "run the mailhub commands as root (docs/deployment.rst) (at line 7)"], found


@pytest.mark.skipif(os.geteuid() != 0, reason="gives folders to other users")
def test_an_unreadable_keys_hint_leaves_out_a_group_a_setgid_folder_handed_down(
        tmp_path: Path, monkeypatch) -> None:
    # /var/lib g+s to daemon: `install -d -o nobody /var/lib/hub` (or the
    # hub's own first start) gives the folder group daemon, which nobody
    # is not in; "chgrp daemon key.pem" let the hub read nothing
    import grp
    import pwd

    cert, key = make_certificate(tmp_path)
    daemon = grp.getgrnam("daemon").gr_gid
    nobody = pwd.getpwnam("nobody")
    assert daemon not in os.getgrouplist("nobody", nobody.pw_gid)
    lib = tmp_path / "lib"
    lib.mkdir()
    os.chown(lib, 0, daemon)
    os.chmod(lib, 0o2755)
    state = lib / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, -1)
    assert state.stat().st_gid == daemon  # handed down
    deny_open(monkeypatch, key)
    text = MINIMAL + f'state_dir = "{state}"\n[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
    own = grp.getgrgid(nobody.pw_gid).gr_name
    assert f"(for a key: chgrp {own} {key} && chmod 640 {key})" in problems(text)[0]
    # the same group given on purpose (twistd --gid daemon: no setgid
    # folder above to have handed it down): that group, as before
    os.chmod(lib, 0o755)
    assert f"(for a key: chgrp daemon {key} && chmod 640 {key})" in problems(text)[0]


def test_listeners_for_other_machines_without_tls_are_warned_of(tmp_path: Path) -> None:
    # AUTH is offered only under TLS or to this machine, and POP3 takes
    # USER/PASS and AUTH PLAIN the same way: the example configuration with
    # its [tls] section dropped (as the README offers) served other hosts
    # nothing they could log in to, and check said "ok"
    listeners = ('[submission]\nlisten = ["tcp:587"]\n'
                 '[pop3]\nlisten = ["tcp:110"]\nallow_plaintext_auth = false\n')
    s = load_text(MINIMAL + listeners, "/c")
    above = MINIMAL.count("\n")  # the lines before [submission]
    assert list(s.warnings) == [
        "/c: [submission] listen: without [tls], clients on other machines cannot log in, "
        "and so cannot submit mail (AUTH is offered only under TLS or to a client on this "
        f'machine); add [tls] (docs/deployment.rst, "TLS certificates") (at line {above + 2})',
        "/c: [pop3] listen: without [tls], clients on other machines can log in only with "
        "APOP (users added with --allow-apop): USER/PASS and AUTH PLAIN need TLS there "
        '([pop3] allow_plaintext_auth = false); add [tls] (docs/deployment.rst, '
        f'"TLS certificates") (at line {above + 4})']
    # the line of the first listener other machines reach, in a list over lines
    s = load_text(MINIMAL + '[submission]\nlisten = [\n  "tcp:2587:interface=127.0.0.1",\n'
                  '  "tcp:587",\n]\n', "/c")
    assert s.warnings[0].endswith(f"(at line {above + 4})"), s.warnings
    # one listener other hosts reach is enough, an interface by name too
    s = load_text(MINIMAL + '[submission]\nlisten = ["tcp:2587:interface=127.0.0.1", '
                  '"tcp:587:interface=192.0.2.25"]\n[pop3]\nlisten = '
                  '[\'tcp6:110:interface=\\:\\:\']\n', "/c")
    assert [w.split(":")[1] for w in s.warnings] == [" [submission] listen", " [pop3] listen"]
    # this machine only (the demo), plaintext allowed, or TLS: nothing to say
    for text in (
        '[submission]\nlisten = ["tcp:2587:interface=127.0.0.1", "unix:/run/s.sock", '
        '\'tcp6:587:interface=\\:\\:1\']\n[pop3]\nlisten = ["tcp:110:interface=127.0.0.2", '
        '"tcp:2110:interface=localhost"]\n',
        '[submission]\nlisten = []\n[pop3]\nlisten = ["tcp:110"]\nallow_plaintext_auth = true\n',
    ):
        assert load_text(MINIMAL + text, "/c").warnings == (), text
    cert, key = make_certificate(tmp_path, "mail.example.org")
    tls = f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
    assert load_text(MINIMAL + tls + listeners, "/c").warnings == ()


def test_default_listeners_for_other_machines_without_tls_are_warned_of(tmp_path: Path) -> None:
    # a file without [submission] or [pop3] listen still listens on
    # tcp:587 and tcp:110 on every address: check said nothing of them,
    # though clients elsewhere can log in to neither without [tls]
    submission = (
        "/c: [submission] listen: the default submission listener tcp:587 (no [submission] "
        "listen is set) takes connections from other machines, and without [tls], clients "
        "on other machines cannot log in, and so cannot submit mail (AUTH is offered only "
        'under TLS or to a client on this machine); add [tls] (docs/deployment.rst, "TLS '
        'certificates"); or set [submission] listen (a loopback address, or [] for none)')
    pop3 = (
        "/c: [pop3] listen: the default pop3 listener tcp:110 (no [pop3] listen is set) takes "
        "connections from other machines, and without [tls], clients on other machines can "
        "log in only with APOP (users added with --allow-apop): USER/PASS and AUTH PLAIN need "
        'TLS there ([pop3] allow_plaintext_auth = false); add [tls] (docs/deployment.rst, '
        '"TLS certificates"); or set [pop3] listen (a loopback address, or [] for none)')
    # no line: the file writes neither, even with its section there
    for text in (MINIMAL, MINIMAL + "[submission]\n[pop3]\nidle_timeout = \"10m\"\n"):
        assert list(load_text(text, "/c").warnings) == [submission, pop3], text
    # one written, one left to its default: each said as what it is
    s = load_text(MINIMAL + '[pop3]\nlisten = ["tcp:110"]\n', "/c")
    assert list(s.warnings) == [submission, pop3.replace(
        "the default pop3 listener tcp:110 (no [pop3] listen is set) takes connections from "
        "other machines, and without [tls], ", "without [tls], ").replace(
        "; or set [pop3] listen (a loopback address, or [] for none)", "")
        + f" (at line {MINIMAL.count(chr(10)) + 2})"]
    # plaintext POP3 logins allowed, listeners turned off, or TLS: nothing to say
    assert list(load_text(MINIMAL + "[pop3]\nallow_plaintext_auth = true\n", "/c").warnings) \
        == [submission]
    assert load_text(MINIMAL + "[submission]\nlisten = []\n[pop3]\nlisten = []\n",
                     "/c").warnings == ()
    cert, key = make_certificate(tmp_path, "mail.example.org")
    assert load_text(MINIMAL + f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n',
                     "/c").warnings == ()


def test_a_listener_on_the_ipv4_mapped_loopback_is_this_machines_only() -> None:
    # bound to ::ffff:127.0.0.1, a socket takes connections to 127.0.0.1
    # only, whose peers the SMTP and POP3 servers take for loopback (an
    # IPv4-mapped address is read as its IPv4 one): AUTH and plaintext
    # logins work there, so nothing to warn of
    for interface in ("\\\\:\\\\:ffff\\\\:127.0.0.1", "\\\\:\\\\:FFFF\\\\:7f00\\\\:1"):
        text = (f'[submission]\nlisten = ["tcp6:2587:interface={interface}"]\n'
                f'[pop3]\nlisten = ["tcp6:2110:interface={interface}"]\n')
        assert load_text(MINIMAL + text, "/c").warnings == (), text
    # other IPv4-mapped addresses are reached by other machines, as the IPv4 ones
    text = ('[submission]\nlisten = ["tcp6:587:interface=\\\\:\\\\:ffff\\\\:192.0.2.25"]\n'
            '[pop3]\nlisten = ["tcp6:110:interface=\\\\:\\\\:ffff\\\\:0.0.0.0"]\n')
    assert [w.split(":")[1] for w in load_text(MINIMAL + text, "/c").warnings] == [
        " [submission] listen", " [pop3] listen"]


def test_warnings_below_rfc_minimums() -> None:
    s = load_quiet(MINIMAL + '[smtp]\nidle_timeout = "30s"\n[pop3]\nidle_timeout = "1m"\n', "/c")
    assert any("[smtp] idle_timeout" in w and "5 minutes" in w for w in s.warnings)
    assert any("[pop3] idle_timeout" in w and "10 minutes" in w for w in s.warnings)
    s = load_quiet(MINIMAL + '[smtp]\nidle_timeout = 0\n[pop3]\nidle_timeout = "0s"\n', "/c")
    assert [w for w in s.warnings if "idle_timeout" in w] == [
        "/c: [smtp] idle_timeout: 0 turns the idle timeout off; a client that stops "
        "talking holds its connection until it goes away (at line 5)"
    ]
    assert s.smtp.idle_timeout == 0 and s.pop3.idle_timeout == 0
    # RFC 5321 4.5.3.1.7 and 4.5.3.1.8: at least 64K and 100 recipients
    s = load_quiet(MINIMAL + "[smtp]\nmax_message_size = 65535\nmax_recipients = 99\n", "/c")
    assert list(s.warnings) == [
        "/c: [smtp] max_message_size: 65535 octets is below the 64K RFC 5321 4.5.3.1.7 "
        "requires a server to accept (at line 5)",
        "/c: [smtp] max_recipients: 99 is below the 100 recipients RFC 5321 4.5.3.1.8 "
        "requires a server to take in one message (at line 6)",
    ]
    s = load_quiet(MINIMAL + "[smtp]\nmax_message_size = 65536\nmax_recipients = 100\n", "/c")
    assert s.warnings == ()
    # the minimums themselves are fine; one second less is not
    s = load_quiet(MINIMAL + '[smtp]\nidle_timeout = "5m"\n[pop3]\nidle_timeout = "10m"\n', "/c")
    assert s.warnings == ()
    s = load_quiet(MINIMAL + "[smtp]\nidle_timeout = 299\n[pop3]\nidle_timeout = 599\n", "/c")
    assert [w.split(":")[1] for w in s.warnings] == [" [smtp] idle_timeout", " [pop3] idle_timeout"]


def test_a_session_cut_off_before_three_failed_logins_is_warned_of() -> None:
    # RFC 4954 9: a server that drops the connection after failed logins
    # "SHOULD NOT drop the connection until at least 3 attempts to
    # authenticate have failed"
    s = load_quiet(MINIMAL + "[smtp]\nmax_auth_failures = 2\n", "/c")
    assert list(s.warnings) == [
        "/c: [smtp] max_auth_failures: 2 closes a session before the 3 failed logins "
        "RFC 4954 9 asks a server to allow (at line 5)"
    ]
    assert s.smtp.max_auth_failures == 2  # taken all the same
    assert load_quiet(MINIMAL + "[smtp]\nmax_auth_failures = 3\n", "/c").warnings == ()


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "m.toml"
    path.write_text(
        MINIMAL.replace("[hub]\n", '[hub]\nstate_dir = "../var"\n') + '[users]\nfile = "users"\n'
    )
    old = os.getcwd()
    try:
        os.chdir("/")
        s = load(str(path))
    finally:
        os.chdir(old)
    assert s.hub.state_dir == str(tmp_path / "var")
    assert s.users.file == str(tmp_path / "etc" / "users")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("192.0.2.1", False), ("2001:db8::1", False), ("not-an-ip", False)],
)
def test_relay_networks_membership(host: str, allowed: bool) -> None:
    assert SMTPSettings().relay_allowed_from(host) is allowed


def test_example_configs_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    demo = load(str(root / "etc" / "demo.toml"))
    assert demo.hub.domains == ("example.test",)
    assert all("127.0.0.1" in e for e in demo.smtp.listen + demo.pop3.listen)
    text = (root / "etc" / "mailhub.toml").read_text()
    # the production example names files that only exist on a real server
    with pytest.raises(ConfigError) as info:
        load_text(text, "/etc/txmailhub/mailhub.toml")
    assert all(("does not exist" in p) for p in info.value.problems), info.value.problems
    # nothing it sets is warned of in [relay] (smarthost_tls is its default)
    assert not [w for w in info.value.warnings if "[relay]" in w], info.value.warnings


def test_twistd_lifts_the_open_files_limit():
    import resource

    from txmailhub.tap import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lower = min(256, soft)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
        got = raise_fd_limit(want=lower + 100)
        expected = lower + 100 if hard == resource.RLIM_INFINITY else min(lower + 100, hard)
        assert got == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_open_files_limit_below_the_connection_limits_is_warned_of() -> None:
    # past the limit Twisted cuts new clients without a 421 (and logs a few
    # lines for each): twistd mailhub says so at start
    from txmailhub.tap import fd_limit_warning

    # 2 x (500 + 200) sessions, each with the message it receives or sends
    # open; 50 relay sessions with the message each sends and 100 attempt
    # markers (up to twice as many messages in flight as deliveries, each
    # holding its marker) + 64
    s = load_text(MINIMAL, "/x.toml")
    assert fd_limit_warning(s, 1664) is None and fd_limit_warning(s, -1) is None
    why = fd_limit_warning(s, 1663)
    assert why is not None and why.startswith(
        "/x.toml: the open-files limit is 1663, below the 1664 ")
    # defaults: written nowhere, so no line
    assert "2 x ([smtp] max_connections 500 + [pop3] max_connections 200)" in why
    assert "4 x [relay] max_concurrent_deliveries 50 (a session and the message" in why
    assert "LimitNOFILE=" in why
    small = load_text(MINIMAL + "[smtp]\nmax_connections = 10\n[pop3]\nmax_connections = 5\n"
                      "[relay]\nmax_concurrent_deliveries = 2\n", "/x.toml")
    assert fd_limit_warning(small, 102) is None
    # each key the file writes at its line, where the admin lowers it (the
    # warning named the keys alone, unlike every other one about the config)
    why = fd_limit_warning(small, 101)
    above = MINIMAL.count("\n")
    assert why is not None and (
        f"(2 x ([smtp] max_connections 10 (at line {above + 2}) + [pop3] max_connections 5 "
        f"(at line {above + 4})) (a connection and the message it sends or receives) "
        f"+ 4 x [relay] max_concurrent_deliveries 2 (at line {above + 6}) "
        "(a session and the message it sends each") in why, why


def test_the_default_limits_are_warned_of_under_the_usual_1024_open_files() -> None:
    # 500 SMTP sessions each in the middle of a message hold 1,000
    # descriptors (their connection and spool file), measured on a live
    # hub with a hard limit of 1,024: past it clients waited in the listen
    # queue with no 421, and the warning had counted one descriptor a
    # session (914 in all) and said nothing
    from txmailhub.tap import fd_limit_warning

    s = load_text(MINIMAL, "/x.toml")
    assert fd_limit_warning(s, 1024) is not None


def test_two_listeners_on_one_address_are_a_problem() -> None:
    text = MINIMAL + (
        '[smtp]\nlisten = ["tcp:2725:interface=127.0.0.1"]\n'
        '[submission]\nlisten = ["tcp:2587"]\n'
        '[pop3]\nlisten = ["tcp:port=2725:interface=127.0.0.1", "tcp:2587:interface=127.0.0.1",'
        ' "unix:/run/a.sock", "unix:address=/run/a.sock"]\n'
    )
    found = problems(text)
    assert found == [
        "/etc/mh/mailhub.toml: [pop3] listen: 'tcp:port=2725:interface=127.0.0.1' is the same "
        "address as 'tcp:2725:interface=127.0.0.1' in [smtp] listen: only one of them could listen"
        " (at line 9)",
        # all interfaces (the default) include 127.0.0.1
        "/etc/mh/mailhub.toml: [pop3] listen: 'tcp:2587:interface=127.0.0.1' is the same "
        "address as 'tcp:2587' in [submission] listen: only one of them could listen"
        " (at line 9)",
        "/etc/mh/mailhub.toml: [pop3] listen: 'unix:address=/run/a.sock' is the same "
        "address as 'unix:/run/a.sock' in [pop3] listen: only one of them could listen"
        " (at line 9)",
    ]


def test_shared_addresses_are_found_however_they_are_spelled(monkeypatch) -> None:
    import txmailhub.config as config

    def clash(*descriptions: str) -> bool:
        listeners = [("smtp", "listen", i, d) for i, d in enumerate(descriptions)]
        return bool(config._shared_addresses(listeners))

    assert clash("tcp:25:127.0.0.1", "tcp:port=025:interface=127.0.0.1")  # positional, named
    assert not clash("tcp:2525:127.0.0.1", "tcp:2525:127.0.0.2")
    assert clash("tcp6:25:interface=\\:\\:1", "tcp6:25:interface=0\\:0\\:\\:1")
    assert clash("tcp6:25:interface=\\:\\:ffff\\:127.0.0.1", "tcp:25:127.0.0.1")
    assert clash("tcp6:25:interface=\\:\\:ffff\\:127.0.0.1", "tcp:25")
    assert not clash("tcp6:25:interface=\\:\\:1", "tcp:25")
    assert clash("unix:/run/a.sock", "unix:address=/run//a.sock")
    # a host name binds the IPv4 address it has, whatever the endpoint type
    assert clash("tcp:25:interface=localhost", "tcp:25:interface=127.0.0.1")
    assert clash("tcp6:25:interface=localhost", "tcp:25:127.0.0.1")
    assert not clash("tcp:25:interface=localhost", "tcp:26:interface=localhost")
    assert clash("tcp:25:interface=localhost", "tcp:25")
    # one that does not resolve is compared as a name (no real lookup here)
    real = config.socket.gethostbyname

    def lookup(name):
        if name.lower() == "nowhere.invalid":
            raise OSError("Name or service not known")
        return real(name)

    monkeypatch.setattr(config.socket, "gethostbyname", lookup)
    assert clash("tcp:25:interface=nowhere.invalid", "tcp:25:interface=NOWHERE.invalid")
    assert not clash("tcp:25:interface=nowhere.invalid", "tcp:25:interface=127.0.0.1")
    # IPv6 on every address takes IPv4 too, unless net.ipv6.bindv6only is set
    monkeypatch.setattr(config, "_dual_stack", lambda: True)
    assert clash("tcp:25:127.0.0.1", "tcp6:25")
    monkeypatch.setattr(config, "_dual_stack", lambda: False)
    assert not clash("tcp:25:127.0.0.1", "tcp6:25")


def test_listeners_on_different_addresses_are_fine() -> None:
    text = MINIMAL + (
        '[smtp]\nlisten = ["tcp:2525:interface=127.0.0.1", "tcp:0",'
        ' "tcp6:2525:interface=\\\\:\\\\:1"]\n'
        '[submission]\nlisten = ["tcp:2525:interface=127.0.0.2", "tcp:0"]\n'
        '[pop3]\nlisten = ["tcp6:2110:interface=\\\\:\\\\:1", "tcp6:2111:interface=\\\\:\\\\:1"]\n'
    )
    s = load_text(text, "/etc/mh/mailhub.toml")
    assert s.smtp.listen[2] == "tcp6:2525:interface=\\:\\:1"


def test_nameservers_are_canonical() -> None:
    from txmailhub.config import split_nameserver

    # answers are matched against the address as a string: "0:0::1" would
    # never match the "::1" an answer comes from
    assert split_nameserver("0:0:0:0:0:0:0:1") == ("::1", 53)
    assert split_nameserver("[::0001]:5353") == ("::1", 5353)
    assert split_nameserver("[FE80::1]") == ("fe80::1", 53)
    assert split_nameserver("::ffff:7f00:1") == ("::ffff:127.0.0.1", 53)  # as recvfrom says
    assert split_nameserver("127.0.0.1:65535") == ("127.0.0.1", 65535)
    for bad in ("127.0.0.1:65536", "127.0.0.1:0", "[::1]:65536"):
        with pytest.raises(ValueError, match="bad port"):
            split_nameserver(bad)


def test_a_link_local_nameserver_takes_a_zone_as_resolv_conf_does() -> None:
    """A zone by interface name or index, as resolv.conf has it, becomes
    the index: the scope recvfrom reports an answer's source with, which
    the DNS port hands on as ``fe80::1%INDEX`` (relay/dnsport.py)."""
    from txmailhub.config import split_nameserver

    lo, name = socket.if_nameindex()[0]  # an interface this host has ("lo": 1)
    assert split_nameserver(f"fe80::1%{name}") == (f"fe80::1%{lo}", 53)
    assert split_nameserver(f"FE80::0:1%{lo}") == (f"fe80::1%{lo}", 53)
    assert split_nameserver(f"[fe80::1%{name}]:5353") == (f"fe80::1%{lo}", 5353)
    assert split_nameserver(f"[fe80::1%{lo}]") == (f"fe80::1%{lo}", 53)
    assert split_nameserver("fe80::1%0") == ("fe80::1", 53)  # scope 0: none
    # the kernel ignores a scope on any other address: dropped, as for resolv.conf
    assert split_nameserver(f"[2001:db8::53%{name}]:53") == ("2001:db8::53", 53)
    s = load_text(MINIMAL + f'[relay]\nnameservers = ["[fe80::1%{name}]:5353"]\n',
                  "/etc/mh/c.toml")
    # kept by name: its index is read at the start
    assert s.relay.nameservers == (f"[fe80::1%{name}]:5353",)


def test_a_nameserver_zone_this_host_lacks_is_one_clear_problem() -> None:
    from txmailhub.config import split_nameserver

    with pytest.raises(ValueError, match="no network interface 'nosuch0'"):
        split_nameserver("fe80::1%nosuch0")
    with pytest.raises(ValueError, match="no network interface 4294967295"):
        split_nameserver("[fe80::1%4294967295]:53")
    with pytest.raises(ValueError, match="no network interface 99999999999"):
        split_nameserver("fe80::1%99999999999")  # beyond a scope id's 32 bits
    with pytest.raises(ValueError, match="empty zone"):
        split_nameserver("fe80::1%")
    with pytest.raises(ValueError, match="IPv6 address only"):
        split_nameserver("192.0.2.53%lo")
    found = problems(MINIMAL + '[relay]\nnameservers = ["127.0.0.1", "[fe80::1%nosuch0]:53"]\n',
                     "/etc/mh/c.toml")
    assert found == ["/etc/mh/c.toml: [relay] nameservers: '[fe80::1%nosuch0]:53': "
                     "this host has no network interface 'nosuch0' (at line 5)"], found


def test_a_port_after_an_unbracketed_zone_is_not_taken_for_the_interface() -> None:
    """Linux reads an interface name up to a ``:`` (an address label's
    form, ``eth0:1``): ``fe80::1%lo:5353`` would be lo's, on port 53, the
    5353 silently lost.  No interface's name has a ``:``: one in a zone
    is a problem, without brackets one that names the bracketed form."""
    from txmailhub.config import split_nameserver

    lo, name = socket.if_nameindex()[0]  # an interface this host has
    with pytest.raises(ValueError) as info:
        split_nameserver(f"fe80::1%{name}:5353")
    assert str(info.value) == (f"'fe80::1%{name}:5353': with a port, the address goes in "
                               f"brackets: '[fe80::1%{name}]:5353'")
    with pytest.raises(ValueError, match="with a port, the address goes in brackets"):
        split_nameserver(f"fe80::1%{lo}:53")
    with pytest.raises(ValueError, match=f"no network interface '{name}:1'"):
        split_nameserver(f"[fe80::1%{name}:1]:5353")
    with pytest.raises(ValueError, match=f"no network interface '{name}:'"):
        split_nameserver(f"[fe80::1%{name}:]")
    assert split_nameserver(f"[fe80::1%{name}]:5353") == (f"fe80::1%{lo}", 5353)
    found = problems(MINIMAL + f'[relay]\nnameservers = ["fe80::1%{name}:5353"]\n',
                     "/etc/mh/c.toml")
    assert len(found) == 1 and "in brackets" in found[0], found


def test_a_smarthost_auth_file_without_a_smarthost_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "auth").write_text("u:p\n")
    found = problems(MINIMAL + '[relay]\nsmarthost_auth_file = "auth"\n',
                     str(tmp_path / "c.toml"))
    assert found == [f"{tmp_path / 'c.toml'}: [relay] smarthost_auth_file: only used with "
                     "[relay] smarthost (at line 5)"]


def test_listen_endpoints_that_cannot_be_are_problems() -> None:
    cases = {
        "tcp:99999": "port 99999 is not in 0-65535",
        "tcp:25:interface=::1": "the colons of an IPv6 address are escaped",
    }
    for endpoint, expected in cases.items():
        [problem] = problems(MINIMAL + f"[smtp]\nlisten = ['{endpoint}']\n")
        assert "[smtp] listen:" in problem and expected in problem, (endpoint, problem)
    load_text(MINIMAL + "[smtp]\nlisten = ['tcp6:2525:interface=\\:\\:1', 'tcp:0']\n", "/c")
    # what needs a lookup is check's alone (every CLI command loads the
    # config: it must not depend on DNS or on the current folder)
    load_text(MINIMAL + "[smtp]\nlisten = ['tcp:25:interface=no.such.host.invalid', "
                        "'unix:sockets/smtp.sock']\n", "/c")


def test_check_finds_listen_endpoints_that_would_fail_at_start(tmp_path: Path) -> None:
    from txmailhub.config import endpoint_readiness

    cases = {
        "tcp:25:interface=1.2.3.4.5": "is neither an IP address nor a name that resolves",
        "tcp:25:interface=no.such.host.invalid": "is neither an IP address",
        f"unix:{tmp_path}/missing/sock": f"the folder {tmp_path}/missing does not exist",
    }
    for endpoint, expected in cases.items():
        assert expected in (endpoint_readiness(endpoint) or ""), endpoint
    for fine in ("tcp:25", "tcp:25:interface=127.0.0.1", f"unix:{tmp_path}/sock",
                 "unix:relative/sock"):
        assert endpoint_readiness(fine) is None, fine


def test_relay_networks_of_every_address_are_warned_of_as_an_open_relay() -> None:
    s = load_text(MINIMAL + '[smtp]\nrelay_networks = ["0.0.0.0/0", "::/0", "10.0.0.0/8"]\n',
                  "/c")
    relay = [w for w in s.warnings if "relay_networks" in w]
    assert len(relay) == 2 and all("open relay" in w for w in relay)
    assert not [w for w in load_text(MINIMAL, "/c").warnings if "relay_networks" in w]


@pytest.mark.parametrize("name", ["localhost", "mx", "localhost.localdomain", "box.localdomain",
                                  "localhost.example.org", "mx.", "box.LocalDomain",
                                  "LOCALHOST.example.org"])
def test_a_hostname_that_is_no_fqdn_is_a_warning(monkeypatch, name):
    # it goes into the greeting, EHLO and Received: servers refuse or
    # distrust a client that says EHLO localhost
    s = load_quiet(f'[hub]\nhostname = "{name}"\ndomains = ["example.org"]\n', "/c")
    (w,) = s.warnings
    assert w.startswith(f"/c: [hub] hostname '{name}' is no fully qualified domain name")
    # the default is the machine's name, which is often just that
    monkeypatch.setattr(socket, "getfqdn", lambda: name)
    s = load_quiet('[hub]\ndomains = ["example.org"]\n', "/c")
    assert s.hub.hostname == name
    (w,) = s.warnings
    assert w.startswith(f"/c: [hub] hostname is not set, and the machine's name '{name}' is "
                        "no fully qualified domain name")
    # a hostname that is no name at all is a problem, not also this warning
    with pytest.raises(ConfigError) as info:
        load_quiet('[hub]\nhostname = "bad name"\ndomains = ["example.org"]\n', "/c")
    assert not [w for w in info.value.warnings if "fully qualified" in w]
    monkeypatch.setattr(socket, "getfqdn", lambda: "mail.example.org")
    assert load_quiet('[hub]\ndomains = ["example.org"]\n', "/c").warnings == ()
    assert load_quiet('[hub]\nhostname = "mx.example.org."\ndomains = ["example.org"]\n',
                     "/c").warnings == ()
    # an address literal is a host without a name, not a short name
    for literal in ("[192.0.2.1]", "[IPv6:2001:db8::1]"):
        assert load_quiet(f'[hub]\nhostname = "{literal}"\ndomains = ["example.org"]\n',
                         "/c").warnings == ()


def test_a_bad_hostname_is_named_once_and_its_bad_label_said() -> None:
    (p,) = problems('[hub]\nhostname = "mail example"\ndomains = ["example.org"]\n')
    assert p.endswith("[hub] hostname: 'mail example' is not a domain name (letters, digits "
                      "and inner hyphens only) (at line 2)"), p
    (p,) = problems('[hub]\nhostname = "mx.-bad.example"\ndomains = ["example.org"]\n')
    assert p.endswith("[hub] hostname: 'mx.-bad.example' is not a domain name: the label "
                      "'-bad' is not letters, digits and inner hyphens only (at line 2)"), p


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp:2x5", "endpoint 'tcp:2x5' is not valid: '2x5' is not a number"),
        ("tcp:25:iface=127.0.0.1", "endpoint 'tcp:25:iface=127.0.0.1' is not valid: unknown "
         "option 'iface' (tcp takes interface and backlog)"),
        ("tcp", "endpoint 'tcp' is not valid: no port (tcp:PORT)"),
        ("unix:/run/s:mode=999", "endpoint 'unix:/run/s:mode=999' is not valid: '999' is not "
         "an octal number"),
        ("tcp:25:interface=127.0.0.1:x", "endpoint 'tcp:25:interface=127.0.0.1:x' is not valid: "
         "more than one interface (a colon inside a value is written \\:)"),
    ],
)
def test_a_bad_endpoint_is_explained_in_the_config_s_words(endpoint: str, expected: str) -> None:
    # not Python's: "_parseTCP() got an unexpected keyword argument 'iface'",
    # "invalid literal for int() with base 10: '2x5'"
    found = problems(MINIMAL + f'[smtp]\nlisten = ["{endpoint}"]\n')
    assert f"/etc/mh/mailhub.toml: [smtp] listen: {expected} (at line 5)" in found, found
    assert not any("_parse" in p or "int()" in p or "argument" in p for p in found), found


def test_a_min_password_length_below_nists_8_is_a_warning() -> None:
    s = load_quiet(MINIMAL + "[users]\nmin_password_length = 6\n", "/x.toml")
    assert s.users.min_password_length == 6
    assert s.warnings == ("/x.toml: [users] min_password_length: 6 is below the 8 characters "
                          "NIST SP 800-63B requires of a password (at line 5)",)
    assert load_quiet(MINIMAL + "[users]\nmin_password_length = 128\n", "/x.toml").warnings == ()


def test_a_relative_unix_socket_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    # docs/configuration.rst: "Relative paths resolve against the folder of
    # the config file, not the working directory" -- a socket's path too,
    # or twistd started elsewhere would listen where `txmailhub-sendmail`
    # (run from a cron job's folder) never looks
    from txmailhub.config import listen_address, load_local_submission

    text = MINIMAL + (
        "[smtp]\nlisten = ['unix:run/smtp.sock', 'unix:address=run/b.sock:mode=660', "
        "'unix:/abs/c.sock', 'unix:./d\\:e.sock:lockfile=0']\n"
        "[submission]\nlisten = ['unix:../sub.sock']\n[pop3]\nlisten = ['unix:pop3.sock']\n")
    s = load_text(text, "/etc/mh/mailhub.toml")
    assert s.smtp.listen == (
        "unix:/etc/mh/run/smtp.sock", "unix:address=/etc/mh/run/b.sock:mode=660",
        "unix:/abs/c.sock", "unix:/etc/mh/d\\:e.sock:lockfile=0")
    assert s.submission.listen == ("unix:/etc/sub.sock",)
    assert s.pop3.listen == ("unix:/etc/mh/pop3.sock",)
    assert [listen_address(e)[1] for e in s.smtp.listen] == [
        "/etc/mh/run/smtp.sock", "/etc/mh/run/b.sock", "/abs/c.sock", "/etc/mh/d:e.sock"]
    (tmp_path / "m.toml").write_text(text)
    assert load_local_submission(str(tmp_path / "m.toml")).listen[0] == \
        f"unix:{tmp_path}/run/smtp.sock"
    # the same socket however it is spelled: one listener only
    [problem] = problems(MINIMAL + "[smtp]\nlisten = ['unix:s.sock']\n"
                                   "[pop3]\nlisten = ['unix:/etc/mh/s.sock']\n")
    assert "is the same address as 'unix:/etc/mh/s.sock'" in problem


@given(st.text(alphabet="ab/.:=\\ -_é", min_size=1, max_size=30).filter(
    lambda p: not p.startswith("/") and os.path.normpath(p) != "."))
def test_any_relative_socket_path_is_resolved_as_twisted_reads_it(path: str) -> None:
    from txmailhub.config import listen_address

    escaped = "".join("\\" + c if c in ":=\\" else c for c in path)
    [endpoint] = load_text(MINIMAL + f"[smtp]\nlisten = ['unix:{escaped}:mode=600']\n",
                           "/etc/mh/mailhub.toml").smtp.listen
    assert listen_address(endpoint) == (
        "unix", os.path.normpath(os.path.join("/etc/mh", path)), None)
    assert endpoint.endswith(":mode=600")


def test_a_retry_wait_of_zero_is_refused() -> None:
    # a failing destination would be tried again at every poll of the queue,
    # hammering a host that just refused or could not be reached
    found = problems(MINIMAL + '[relay]\nretry_schedule = ["1m", "0s"]\n')
    assert len(found) == 1, found
    assert "[relay] retry_schedule" in found[0] and "0" in found[0]
    assert "at least 1s" in found[0]


def test_retry_waits_under_a_minute_and_a_zero_queue_lifetime_are_warned_of() -> None:
    s = load_text(MINIMAL + '[relay]\nretry_schedule = ["30s", "5m"]\n', "/c")
    assert [w for w in s.warnings if "retry_schedule" in w] == [
        "/c: [relay] retry_schedule: a wait of 30s is under a minute; RFC 5321 4.5.4.1 "
        "asks for retries spaced well apart (the default starts at 1m) (at line 5)"
    ]
    assert s.relay.retry_schedule == (30, 300)
    s = load_text(MINIMAL + '[relay]\nretry_schedule = ["1m", "1h"]\n', "/c")
    assert not [w for w in s.warnings if "retry_schedule" in w]
    s = load_text(MINIMAL + '[relay]\nqueue_lifetime = "0s"\n', "/c")
    assert [w for w in s.warnings if "queue_lifetime" in w] == [
        "/c: [relay] queue_lifetime: 0 bounces every message that cannot be delivered "
        "at its first attempt (RFC 5321 4.5.4.1 suggests 4-5 days) (at line 5)"
    ]
    # (1h would now be warned of: the default delay_warning is 4h)
    s = load_text(MINIMAL + '[relay]\nqueue_lifetime = "1d"\n', "/c")
    assert not [w for w in s.warnings if "queue_lifetime" in w]


LIFETIME_FIRST = ("a message whose first attempt fails is tried again at most once, when the "
                  "lifetime ends, then bounced (RFC 5321 4.5.4.1 suggests 4-5 days)")
NO_NOTICE = 'no "delayed" notice is ever sent (delay_warning = 0 turns it off)'


@pytest.mark.parametrize(("relay", "warning"), [
    # "5" meant as days is 5 seconds, and was taken without a word
    ('queue_lifetime = "5"', "[relay] queue_lifetime: 5s (a number without a unit is seconds) "
     f"is shorter than the first wait of retry_schedule (1m): {LIFETIME_FIRST} (at line 5)"),
    ("queue_lifetime = 5", "[relay] queue_lifetime: 5s (a number without a unit is seconds) "
     f"is shorter than the first wait of retry_schedule (1m): {LIFETIME_FIRST} (at line 5)"),
    ('queue_lifetime = "59s"', "[relay] queue_lifetime: 59s is shorter than the first wait "
     f"of retry_schedule (1m): {LIFETIME_FIRST} (at line 5)"),
    ('queue_lifetime = "1h"\nretry_schedule = [\n  "2h",\n]',
     "[relay] queue_lifetime: 1h is shorter than the first wait of retry_schedule (2h): "
     f"{LIFETIME_FIRST} (at line 5)"),
    ('retry_schedule = [\n  "6d",\n]', "[relay] retry_schedule: the first wait, 6d, is longer "
     f"than queue_lifetime (5d): {LIFETIME_FIRST} (at line 6)"),
    # the "delayed" notice goes out only before the lifetime is over
    ('delay_warning = "5d"', f"[relay] delay_warning: 5d is not shorter than queue_lifetime "
     f"(5d): {NO_NOTICE} (at line 5)"),
    ('queue_lifetime = "1h"\n\ndelay_warning = "2h"', "[relay] delay_warning: 2h is not "
     f"shorter than queue_lifetime (1h): {NO_NOTICE} (at line 7)"),
    ('queue_lifetime = "4h"', "[relay] queue_lifetime: 4h is not longer than delay_warning "
     f"(4h): {NO_NOTICE} (at line 5)"),
    ('queue_lifetime = "60"', "[relay] queue_lifetime: 1m (a number without a unit is "
     f"seconds) is not longer than delay_warning (4h): {NO_NOTICE} (at line 5)"),
])
def test_a_queue_lifetime_too_short_for_the_schedule_or_the_notice_is_warned_of(
        relay: str, warning: str) -> None:
    s = load_quiet(MINIMAL + f"[relay]\n{relay}\n", "/c")
    assert s.warnings == (f"/c: {warning}",)


@pytest.mark.parametrize("relay", [
    'queue_lifetime = "4h1s"', 'queue_lifetime = "1h"\ndelay_warning = 0',
    'queue_lifetime = "1h"\ndelay_warning = "59m"', 'delay_warning = "4d"',
    'retry_schedule = ["5d"]', 'queue_lifetime = "2m"\nretry_schedule = ["2m"]\n'
    'delay_warning = "1m"', "queue_lifetime = 432000",
    'queue_lifetime = "3h"\ndelay_warning = "4x"',  # a problem, said once
])
def test_a_queue_lifetime_the_schedule_and_the_notice_fit_in_is_no_warning(relay: str) -> None:
    try:
        s = load_quiet(MINIMAL + f"[relay]\n{relay}\n", "/c")
    except ConfigError as e:
        assert len(e.problems) == 1 and not others(e.warnings), (e.problems, e.warnings)
    else:
        assert s.warnings == ()


def test_the_time_an_attempt_may_spend_on_a_destinations_hosts() -> None:
    # a site with many slow MX hosts (or few delivery slots) may need
    # another budget than 15 minutes: [relay] hosts_time_budget
    assert load_quiet(MINIMAL, "/c").relay.hosts_time_budget == 15 * 60
    s = load_quiet(MINIMAL + '[relay]\nhosts_time_budget = "30m"\n', "/c")
    assert s.relay.hosts_time_budget == 1800 and not s.warnings
    assert load_quiet(MINIMAL + "[relay]\nhosts_time_budget = 600\n", "/c").relay \
        .hosts_time_budget == 600
    for bad, shown in (('"0s"', "'0s'"), ("0", "0")):  # one host at most: a typo
        assert problems(MINIMAL + f"[relay]\nhosts_time_budget = {bad}\n", "/c") == [
            f"/c: [relay] hosts_time_budget: must be greater than 0, got {shown} (at line 5)"]
    [found] = problems(MINIMAL + '[relay]\nhosts_time_budget = "5x"\n', "/c")
    assert found.startswith("/c: [relay] hosts_time_budget: ")
    s = load_quiet(MINIMAL + '[relay]\nhosts_time_budget = "2m"\n', "/c")
    assert s.relay.hosts_time_budget == 120
    assert s.warnings == (
        "/c: [relay] hosts_time_budget: 120s is under the 5 minutes one silent host may "
        "take (RFC 5321 4.5.3.2): after such a host, an attempt tries no other (the "
        "default is 15m) (at line 5)",)


def test_a_quota_below_the_largest_message_is_warned_of() -> None:
    # "100" meant as megabytes: a quota most messages cannot fit
    s = load_quiet(MINIMAL + "mailbox_quota = 100\n", "/c")
    assert s.warnings == (
        "/c: [hub] mailbox_quota: 100 octets is less than [smtp] max_message_size "
        "(26214400): a message the hub takes can be one no mailbox may hold (the quota is "
        "in octets: 1 GiB is 1073741824) (at line 4)",)
    assert not load_quiet(MINIMAL + "mailbox_quota = 26214400\n", "/c").warnings


def test_a_relay_network_with_host_bits_set_is_warned_of() -> None:
    # the walkthrough: "10.0.0.1/8" (one host meant, or a typo of the
    # network) let all of 10.0.0.0/8 relay without a word
    s = load_quiet(MINIMAL + '[smtp]\nrelay_networks = ["127.0.0.0/8", "10.0.0.1/8",\n'
                             '  "2001:db8::5/64", "192.0.2.7", "192.0.2.0/24"]\n', "/c")
    assert s.smtp.relay_networks[1] == "10.0.0.1/8"  # taken: a warning, as Postfix's
    assert s.warnings == (
        "/c: [smtp] relay_networks: 10.0.0.1/8 has host bits set: it is read as 10.0.0.0/8, "
        "and every address in it may relay without AUTH (for that host alone write "
        "10.0.0.1/32; for the network, 10.0.0.0/8) (at line 5)",
        "/c: [smtp] relay_networks: 2001:db8::5/64 has host bits set: it is read as "
        "2001:db8::/64, and every address in it may relay without AUTH (for that host alone "
        "write 2001:db8::5/128; for the network, 2001:db8::/64) (at line 6)")


def test_a_relay_network_with_a_zone_and_no_host_bits_is_not_warned_of() -> None:
    # a link-local network written with its zone (fe80::%eth0/64, as `ip
    # -6 route` shows it) has no host bits: the zone is no part of the
    # address's bits, and a warning that it "is read as" itself was false
    s = load_quiet(MINIMAL + '[smtp]\nrelay_networks = ["fe80::%eth0/64", "fe80::1%eth0/128",'
                             ' "fe80::1%eth0"]\n', "/c")
    assert s.warnings == ()
    # one with host bits and a zone is still said
    s = load_quiet(MINIMAL + '[smtp]\nrelay_networks = ["fe80::1%eth0/64"]\n', "/c")
    assert len(s.warnings) == 1 and "has host bits set" in s.warnings[0], s.warnings


# each warning about a key or a value, in a file where none of them is on
# the line a naive count would give: (the start of the warning, its line)
WARNED_AT = [
    ("[hub] hostname 'mx' is no fully qualified domain name", 4),
    ("[users] min_password_length: 6 is below", 10),
    ("[smtp] relay_networks: ::/0 is every address", 14),  # the item's own line
    ("[smtp] idle_timeout: 30s is below", 16),
    ("[smtp] max_message_size: 1000 octets is below", 17),  # a quoted key
    ("[hub] mailbox_quota: 100 octets is less than [smtp] max_message_size", 6),
    ("[smtp] max_auth_failures: 2 closes a session", 19),
    ("[smtp] max_recipients: 99 is below", 18),
    ("[pop3] idle_timeout: 60s is below", 1),  # a dotted key above [hub]
    ("[relay] smarthost: '::1:25' is read as", 21),
    ("[relay] retry_schedule: a wait of 30s is under a minute", 24),  # the item's
    ("[relay] hosts_time_budget: 120s is under", 27),
    ("[relay] queue_lifetime: 0 bounces", 28),
]
WARNED = """\
pop3.idle_timeout = "1m"
# the hub
[hub]
hostname = "mx"
domains = ["example.org"]
mailbox_quota = 100  # octets: meant as MB

[users]
# weaker than the default
min_password_length = 6
[smtp]
relay_networks = [
  "10.0.0.0/8",
  "::/0",
]
idle_timeout = "30s"
"max_message_size" = 1000
max_recipients = 99
max_auth_failures = 2
[relay]
smarthost = "::1:25"
retry_schedule = [
  "5m",
  "30s",
  "1h",
]
hosts_time_budget = "2m"
queue_lifetime = 0
"""


@pytest.mark.parametrize(("start", "line"), WARNED_AT)
def test_each_warning_says_the_line_its_key_or_item_is_written_on(start: str, line: int) -> None:
    # warnings gave no line: in a long file the admin searched for the key
    s = load_quiet(WARNED, "/c")
    assert len(s.warnings) == len(WARNED_AT), s.warnings
    [found] = [w for w in s.warnings if w.startswith(f"/c: {start}")]
    assert found.endswith(f" (at line {line})") and found.count("(at line") == 1, found


def test_the_warnings_of_a_file_with_problems_say_their_lines_too() -> None:
    # check prints both: the warnings as a file without the problem has them
    s = load_quiet(WARNED, "/c")
    with pytest.raises(ConfigError) as info:
        load_quiet(WARNED + "max_per_destination = 0\n", "/c")
    assert others(info.value.warnings) == list(s.warnings)
    assert all(" (at line " in w for w in s.warnings), s.warnings
    assert info.value.problems == [
        "/c: [relay] max_per_destination: must be greater than 0, got 0 (at line 29)"]


def test_a_warning_with_nothing_in_the_file_to_blame_has_no_line(monkeypatch) -> None:
    # the machine's name, taken because [hub] hostname is left out
    monkeypatch.setattr(socket, "getfqdn", lambda: "box")
    (w,) = load_quiet('\n\n[hub]\ndomains = ["example.org"]\n', "/c").warnings
    assert w.startswith("/c: [hub] hostname is not set, and the machine's name 'box' is "), w
    assert "(at line" not in w
    (w,) = load_quiet('[hub]\n\nhostname = "box"\ndomains = ["example.org"]\n', "/c").warnings
    assert w.endswith("such as mail.example.org (at line 3)"), w
    # a quota under the default max_message_size: the quota's line
    (w,) = load_quiet(MINIMAL + "\nmailbox_quota = 7\n", "/c").warnings
    assert w.startswith("/c: [hub] mailbox_quota: 7 octets") and w.endswith("(at line 5)"), w


def test_a_certificate_warning_says_the_line_of_the_key_naming_it(tmp_path: Path) -> None:
    # the certificate names another host: the line of [tls] certificate,
    # not of [tls] (written after key here)
    cert, key = make_certificate(tmp_path, "mx.example.net")
    s = load_text(MINIMAL + f'[tls]\nkey = "{key}"\n\ncertificate = "{cert}"\n', "/c")
    [found] = [w for w in s.warnings if "is not valid for" in w]
    assert found.startswith(f"/c: [tls] certificate {cert} is not valid for mail.example.org "
                            "([hub] hostname)"), found
    assert found.endswith(" is valid for (at line 7)"), found


def test_settings_say_where_the_file_wrote_a_key_for_later_checks(monkeypatch) -> None:
    # `mailhub check` and the start judge files the config names after it
    # is loaded, with only the Settings: they ask them for the key's line
    from txmailhub import config_lines
    from txmailhub.config import AliasesSettings, HubSettings, Settings, UsersSettings

    calls = []
    real = config_lines.key_lines

    def counted(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(config_lines, "key_lines", counted)
    text = (MINIMAL + 'state_dir = "var"\n'        # 4
            '# file = "not the users file"\n'       # 5
            '[smtp]\nlisten = [\n'                 # 6, 7
            '  "tcp:2525",\n'                       # 8
            '  # the other\n'
            '  "tcp:2526",\n'                       # 10
            ']\n[users]\n"file" = "people"\n')     # 12, 13
    s = load_quiet(text, "/c")
    # a file with nothing to point at is read once, by tomllib, as the
    # hub loads it at its start
    assert calls == []
    assert s.at("hub", "state_dir") == " (at line 4)"
    assert len(calls) == 1
    assert s.at("users", "file") == " (at line 13)"
    assert s.at("smtp", "listen") == " (at line 7)"
    assert s.at("smtp", "listen", 1) == " (at line 10)"
    assert s.at("smtp", "listen", 5) == " (at line 7)"  # no such item: the key's line
    assert s.at("smtp") == " (at line 6)"
    # a default is written nowhere
    assert s.at("hub", "log_files_kept") == "" and s.at("relay", "smarthost_auth_file") == ""
    assert s.at("relay") == ""
    assert len(calls) == 1  # read once, whatever is asked after
    # the lines are no part of what the settings are: the same values laid
    # out otherwise are the same settings, and settings made in code have none
    assert load_quiet("\n\n" + text, "/c") == s
    made = Settings(path="/c", hub=HubSettings("mail.example.org", "/var", ("a.test",)),
                    users=UsersSettings("/u"), aliases=AliasesSettings(None), tls=None)
    assert made.at("hub", "state_dir") == "" and "lines" not in repr(made)


def test_settings_lines_are_those_of_the_text_loaded_not_of_the_file_now(
        tmp_path: Path) -> None:
    # check asks for a line after loading: an editor that saved the file
    # in between must not move the line onto another key
    config = tmp_path / "mailhub.toml"
    config.write_text(MINIMAL + 'state_dir = "var"\n')
    s = load(str(config))
    config.write_text("# moved\n\n" + MINIMAL + 'log_files_kept = 3\nstate_dir = "var"\n')
    assert s.at("hub", "state_dir") == " (at line 4)"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_settings_pickle_with_their_lines_in_every_protocol(protocol: int) -> None:
    # the lines (an object of their own) must not make the frozen value
    # type any less picklable than it was: protocols 0 and 1 refused a
    # class with __slots__ and no __getstate__
    s = load_text(MINIMAL + 'state_dir = "var"\n', "/c")
    copied = pickle.loads(pickle.dumps(s, protocol))
    assert copied == s and copied.at("hub", "state_dir") == " (at line 4)"


def test_the_mailbox_quota_is_off_by_default_and_read_in_octets() -> None:
    assert load_text(MINIMAL, "/etc/mh/mailhub.toml").hub.mailbox_quota == 0
    s = load_text(MINIMAL + "mailbox_quota = 104857600\n", "/etc/mh/mailhub.toml")
    assert s.hub.mailbox_quota == 104857600
    assert load_text(MINIMAL + "mailbox_quota = 0\n", "/etc/mh/mailhub.toml").hub.mailbox_quota == 0


@pytest.mark.parametrize(
    ("value", "why"),
    [("-1", "must be 0 or more, got -1"),
     ('"100M"', "expected a whole number, got a string"),
     ("1.5", "expected a whole number, got"),
     ("true", "expected a whole number, got")],
)
def test_a_bad_mailbox_quota_is_one_clear_line(value: str, why: str) -> None:
    found = problems(MINIMAL + f"mailbox_quota = {value}\n")
    assert len(found) == 1, found
    assert found[0].startswith("/etc/mh/mailhub.toml: [hub] mailbox_quota: " + why), found


def test_log_files_kept_is_ten_unless_set_and_a_bad_one_is_one_clear_line() -> None:
    assert load_text(MINIMAL, "/c").hub.log_files_kept == 10
    assert load_text(MINIMAL + "log_files_kept = 0\n", "/c").hub.log_files_kept == 0
    assert load_text(MINIMAL + "log_files_kept = 30\n", "/c").hub.log_files_kept == 30
    found = problems(MINIMAL + "log_files_kept = -1\n")
    assert found == ["/etc/mh/mailhub.toml: [hub] log_files_kept: must be 0 or more, got -1 "
                     "(at line 4)"]


# -- bounds and value lists the docs state (docs/configuration.rst) -------------


def test_a_negative_whole_number_of_seconds_is_no_duration() -> None:
    assert problems(MINIMAL + "[relay]\ndelay_warning = -1\n") == [
        "/etc/mh/mailhub.toml: [relay] delay_warning: a duration cannot be negative (at line 5)"]


@pytest.mark.parametrize("section", ["smtp", "pop3"])
def test_an_auth_failure_delay_of_0_is_taken(section: str) -> None:
    # "must not be negative": 0 (no delay) is a value, not a problem
    s = load_text(MINIMAL + f"[{section}]\nauth_failure_delay = 0\n", "/etc/mh/mailhub.toml")
    assert getattr(s, section).auth_failure_delay == 0.0


def test_port_numbers_run_to_65535() -> None:
    s = load_text(MINIMAL + "[relay]\nport = 65535\nsmarthost = \"mx.example.net:65535\"\n",
                  "/etc/mh/mailhub.toml")
    assert s.relay.port == 65535 and s.relay.smarthost == "mx.example.net:65535"
    assert problems(MINIMAL + "[relay]\nport = 65536\n") == [
        "/etc/mh/mailhub.toml: [relay] port: 65536 is not a port number (1-65535) (at line 5)"]
    assert len(problems(MINIMAL + "[relay]\nsmarthost = \"mx.example.net:65536\"\n")) == 1


def test_a_bracketed_nameserver_is_followed_by_a_port_or_nothing() -> None:
    # "[::1]:53" or "[::1]"; anything else after the bracket is no port
    s = load_text(MINIMAL + "[relay]\nnameservers = [\"[::1]\", \"[::1]:5353\"]\n",
                  "/etc/mh/mailhub.toml")
    assert s.relay.nameservers == ("[::1]", "[::1]:5353")
    assert len(problems(MINIMAL + "[relay]\nnameservers = [\"[::1]53\"]\n")) == 1


@pytest.mark.parametrize("section, key, bad", [
    ("users", "password_policy", "off"),  # "warn" or "enforce"
    ("relay", "smarthost_tls", "require"),  # "verify", "opportunistic" or "none"
])
def test_a_value_outside_the_documented_list_is_a_problem(section: str, key: str,
                                                           bad: str) -> None:
    [problem] = problems(MINIMAL + f"[{section}]\n{key} = \"{bad}\"\n")
    assert problem.startswith(f"/etc/mh/mailhub.toml: [{section}] {key}: '{bad}': use ")


def test_a_smarthost_may_be_a_bracketed_ipv6_address() -> None:
    # "host:port" split at the last colon: the relay takes "[2001:db8::1]"
    # as the host (brackets stripped), so the check must not refuse it
    s = load_text(MINIMAL + "[relay]\nsmarthost = \"[2001:db8::1]:587\"\n",
                  "/etc/mh/mailhub.toml")
    assert s.relay.smarthost == "[2001:db8::1]:587"


def test_a_tls_listener_on_another_listeners_address_is_a_problem(tmp_path: Path) -> None:
    # the TLS listeners are listeners too: only one socket can listen on
    # an address, whichever section names it
    cert, key = make_certificate(tmp_path)
    tls = f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
    for section in ("submission", "pop3"):
        found = problems(MINIMAL + tls + '[smtp]\nlisten = ["tcp:2525"]\n'
                         + f'[{section}]\ntls_listen = ["tcp:2525"]\n')
        assert any(f"[{section}] tls_listen: 'tcp:2525' is the same address as" in p
                   for p in found), found


def test_a_bad_listen_is_one_problem_not_a_clash_with_its_default_too() -> None:
    # a bad listen value stands in for its default meanwhile; that default
    # sharing an address with another listener is no problem of the file
    found = problems(MINIMAL + '[smtp]\nlisten = ["tcp:110"]\n[pop3]\nlisten = ["tcp:nope"]\n')
    assert len(found) == 1 and "[pop3] listen:" in found[0]


def test_a_smarthost_auth_file_that_does_not_exist_is_a_problem(tmp_path: Path) -> None:
    # docs/configuration.rst: the auth file is checked like the others
    found = problems(MINIMAL + '[relay]\nsmarthost = "mx.example.net:587"\n'
                     f'smarthost_auth_file = "{tmp_path}/absent"\n')
    assert found == [f"/etc/mh/mailhub.toml: [relay] smarthost_auth_file: "
                     f"{tmp_path}/absent does not exist (at line 6)"]


def test_smarthost_tls_without_a_smarthost_is_warned_of() -> None:
    # the key was taken without a word: an admin who set it for MX
    # delivery believed a setting that does nothing
    for relay, line in (('smarthost_tls = "none"\n', 5),
                        ('smarthost = ""\n\nsmarthost_tls = "opportunistic"\n', 7),
                        # blank: no smarthost, as the relay takes it
                        ('smarthost = "  "\nsmarthost_tls = "none"\n', 6)):
        s = load_quiet(MINIMAL + "[relay]\n" + relay, "/c")
        [found] = s.warnings
        assert found.startswith("/c: [relay] smarthost_tls: ") and found.endswith(
            f" has no effect without [relay] smarthost: mail goes to each domain's MX hosts, "
            f"with STARTTLS when they offer it (docs/relay.rst, TLS policy) (at line {line})"
        ), found
    s = load_quiet(MINIMAL + '[relay]\nsmarthost = "mx.example.net:587"\nsmarthost_tls = "none"\n',
                  "/c")
    assert s.warnings == ()
    # the default written out beside an empty smarthost (the example
    # configuration's lines) says nothing wrong
    s = load_quiet(MINIMAL + '[relay]\nsmarthost = ""\nsmarthost_tls = "verify"\n'
                  'smarthost_auth_file = ""\n', "/c")
    assert s.warnings == ()
    # a smarthost that is a problem is said once, not as if none were set
    found = problems(MINIMAL + '[relay]\nsmarthost = 25\nsmarthost_tls = "none"\n')
    assert len(found) == 1 and "[relay] smarthost: " in found[0], found


@pytest.mark.parametrize("key, short, enough", [
    ("retry_schedule", '["59s"]', '["60s"]'),  # RFC 5321 4.5.4.1: a warning under a minute
    ("hosts_time_budget", '"299s"', '"300s"'),  # RFC 5321 4.5.3.2: under 5 minutes
])
def test_relay_warnings_start_just_under_their_bound(key: str, short: str, enough: str) -> None:
    def warned(value: str) -> bool:
        s = load_text(MINIMAL + f"[relay]\n{key} = {value}\n", "/etc/mh/mailhub.toml")
        return any(f"[relay] {key}:" in w for w in s.warnings)

    assert warned(short) and not warned(enough)


def test_a_section_that_is_no_table_is_one_problem() -> None:
    assert problems('smtp = "tcp:25"\n' + MINIMAL) == [
        "/etc/mh/mailhub.toml: [smtp]: must be a table (at line 1)"]


def test_local_submission_reads_hub_with_the_checks_of_load(tmp_path: Path) -> None:
    from txmailhub.config import load_local_submission

    # load_local_submission: "[hub] and [smtp] of the config, with the
    # same checks as load"; a relative state_dir resolves against the
    # config's folder, as load resolves it
    cfg = tmp_path / "mailhub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   'state_dir = "state"\n')
    assert load_local_submission(str(cfg)).state_dir == str(tmp_path / "state")
    cfg.write_text('[hub]\nhostname = "mail.example.org"\n')
    with pytest.raises(ConfigError) as info:
        load_local_submission(str(cfg))
    assert info.value.problems == [f"{cfg}: [hub] domains: required: the local domains, "
                                   "the primary one first"]
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   'domian = "typo"\n')
    with pytest.raises(ConfigError) as info:
        load_local_submission(str(cfg))
    assert [p.split(" (")[0] for p in info.value.problems] == [
        f"{cfg}: [hub] domian: unknown key"]


def test_load_keeps_the_config_path_absolute(tmp_path: Path, monkeypatch) -> None:
    # Settings.path names the file in the problems `mailhub check` reports
    # after loading (cli.py): the file itself, whatever folder it was run in
    (tmp_path / "mailhub.toml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert load("mailhub.toml").path == str(tmp_path / "mailhub.toml")
@pytest.mark.parametrize(("written", "split"), [
    ("localhost:25", ("localhost", 25)),
    ("127.0.0.1:2525", ("127.0.0.1", 2525)),
    ("smtp.example.net.:587", ("smtp.example.net.", 587)),
    ("SMTP.Example.NET:25", ("SMTP.Example.NET", 25)),
    ("my_host.example:25", ("my_host.example", 25)),
    ("xn--bcher-kva.example:25", ("xn--bcher-kva.example", 25)),
    ("[IPv6:2001:DB8::25]:587", ("2001:db8::25", 587)),
    # Postfix's spelling of "no MX lookup" (which the smarthost never gets):
    # the name, as the relay always took it -- refused at load for a while
    ("[smtp.example.net]:587", ("smtp.example.net", 587)),
    ("[bücher.example]:587", ("bücher.example", 587)),
    # leading zeros that read the same as octal and as decimal: the address
    # both readings give, connected to as such
    ("127.000.000.001:25", ("127.0.0.1", 25)),
    ("010.0.0.1", None),
    # the resolver's other spellings of an address (inet_aton), which it
    # connected to without asking DNS while the TLS check and the notices
    # took the text for a host name: that address
    ("127.1:25", ("127.0.0.1", 25)),
    ("10.1.2:25", ("10.1.0.2", 25)),
    ("2130706433:25", ("127.0.0.1", 25)),
    ("0x7f.0.0.1:25", ("127.0.0.1", 25)),
    ("0X7F.0.0.1:25", ("127.0.0.1", 25)),  # inet_aton takes 0X as 0x
    ("255.1:25", ("255.0.0.1", 25)),  # a first number of 255 is still an octet
    ("[127.1]:25", ("127.0.0.1", 25)),
    ("0x7f.1:25", ("127.0.0.1", 25)),
    ("1.0xbeef:25", ("1.0.190.239", 25)),
    # labels that only look like numbers, which the resolver reads as no
    # address (0xcafe is over 255), the top one not all digits (RFC 3696
    # 2): a host name, looked up as such -- it was refused "as numbers"
    ("0xcafe.0xbeef:25", ("0xcafe.0xbeef", 25)),
    ("[0xcafe.0xbeef]:25", ("0xcafe.0xbeef", 25)),
    ("0xcafe.0xbeef.:25", ("0xcafe.0xbeef.", 25)),
    ("0x1.0x2.0x3.0x4.0x5:25", ("0x1.0x2.0x3.0x4.0x5", 25)),
    ("0177.0.0.1", None),  # octal 127, decimal 177
    # an IPv4-mapped IPv6 address is the IPv4 host's (RFC 4291 2.5.5.2)
    ("[::ffff:127.0.0.1]:25", ("127.0.0.1", 25)),
    ("[IPv6:::FFFF:192.0.2.25]:25", ("192.0.2.25", 25)),
    ("[::ffff:c000:219]:25", ("192.0.2.25", 25)),
    # an IPv6 address with a port: in brackets, or (no other reading) a
    # text whose whole is no address
    ("[2001:db8::25]:587", ("2001:db8::25", 587)),
    ("1:2:3:4:5:6:7:8:587", ("1:2:3:4:5:6:7:8", 587)),
])
def test_split_smarthost(written: str, split: tuple[str, int] | None) -> None:
    from txmailhub.config import split_smarthost

    if split is None:
        with pytest.raises(ValueError, match="ambiguous"):
            split_smarthost(written + ":25")
    else:
        assert split_smarthost(written) == split


@pytest.mark.parametrize(("written", "split"), [
    # an address by itself, and 2001:db8::25 with port 587: read as the
    # second, as it always was (a configuration that worked goes on
    # working), with a warning that the text has two readings
    ("2001:db8::25:587", ("2001:db8::25", 587)),
    ("::ffff:c000:219:25", ("192.0.2.25", 25)),
    ("::1:25", ("::1", 25)),
])
def test_a_bare_ipv6_address_and_port_is_read_so_with_a_warning(
        written: str, split: tuple[str, int]) -> None:
    from txmailhub.config import split_smarthost

    assert split_smarthost(written) == split
    s = load_text(MINIMAL + f'[relay]\nsmarthost = "{written}"\n', "/etc/mh/mailhub.toml")
    host = written.rpartition(":")[0]
    assert [w for w in s.warnings if "smarthost" in w] == [
        f"/etc/mh/mailhub.toml: [relay] smarthost: {written!r} is read as "
        f"[{host}]:{split[1]}, address {host} and port {split[1]}, but all of it is an "
        f"IPv6 address too; write [{host}]:{split[1]} to say so (a bare IPv6 address "
        "followed by a port may be read either way) (at line 5)"]
    s = load_text(MINIMAL + f'[relay]\nsmarthost = "[{host}]:{split[1]}"\n',
                  "/etc/mh/mailhub.toml")
    assert not [w for w in s.warnings if "smarthost" in w]


@pytest.mark.parametrize("written", ["2001:db8::25", "::1"])
def test_a_bare_ipv6_address_with_no_port_is_a_problem(written: str) -> None:
    from txmailhub.config import split_smarthost

    why = (f"'{written}': a bare IPv6 address has no port; a port after an IPv6 address "
           f"goes after brackets around it: write [{written}]:<port>")
    with pytest.raises(ValueError, match=re.escape(why)):
        split_smarthost(written)
    [problem] = problems(MINIMAL + f'[relay]\nsmarthost = "{written}"\n')
    assert problem == f"/etc/mh/mailhub.toml: [relay] smarthost: {why} (at line 5)"


def test_the_resolver_shorthand_for_0_0_0_0_is_taken_as_the_address_in_full_is() -> None:
    from txmailhub.config import split_smarthost

    assert split_smarthost("0:25") == split_smarthost("0.0.0.0:25") == ("0.0.0.0", 25)


def test_a_host_name_of_hex_looking_labels_is_a_name() -> None:
    from txmailhub.config import split_smarthost

    # LDH labels, the top one not all digits: a name DNS can hold, which
    # the resolver (inet_aton: 0xcafe is over 255) reads as no address
    s = load_text(MINIMAL + '[relay]\nsmarthost = "0xcafe.0xbeef:587"\n', "/etc/mh/mailhub.toml")
    assert s.relay.smarthost == "0xcafe.0xbeef:587"
    # what the resolver reads as an address is still that address
    s = load_text(MINIMAL + '[relay]\nsmarthost = "0x7f.1:587"\n', "/etc/mh/mailhub.toml")
    assert split_smarthost(s.relay.smarthost) == ("127.0.0.1", 587)


@pytest.mark.parametrize(("written", "why"), [
    # numbers the resolver reads as no address, or looks up (a final dot)
    # as a name no DNS holds: every attempt failed its lookup
    ("999.1.1.1:25", "999.1.1.1 is no address, and no name in DNS is all numbers"),
    ("1.2.3.4.5:25", "1.2.3.4.5 is no address"),
    ("192.0.2.25.:25", "192.0.2.25. is an address with a final dot, which the resolver "
     "looks up as a name and never finds; write 192.0.2.25"),
    ("[192.0.2.25.]:25", "write 192.0.2.25"),
    ("010.0.0.1.:25", "010.0.0.1 is ambiguous"),
    ("0x7f.1.:25", "write 127.0.0.1"),
    ("0xcafe.12:25", "0xcafe.12 is no address, and no name in DNS is all numbers"),
    ("1.2.3.256:25", "1.2.3.256 is no address, and no name in DNS is all numbers"),
    ("08.0.0.1:25", "08.0.0.1 is ambiguous: the resolver reads no address in it"),
    # a reading in 0.0.0.0/8, "this host on this network" (RFC 1122
    # 3.2.1.3): no host to connect to, and a number that small is a port
    # or a typo -- 12345 was connected to as 0.0.48.57
    ("12345:25", "12345 is read by the resolver as 0.0.48.57, in 0.0.0.0/8, which names "
     "no host to connect to (RFC 1122 3.2.1.3); write the address in full"),
    ("[12345]:25", "12345 is read by the resolver as 0.0.48.57, in 0.0.0.0/8"),
    ("0x3039:25", "0x3039 is read by the resolver as 0.0.48.57"),
    ("0.1:25", "0.1 is read by the resolver as 0.0.0.1"),
])
def test_split_smarthost_refuses_numbers_that_are_no_address(written: str, why: str) -> None:
    from txmailhub.config import split_smarthost

    with pytest.raises(ValueError, match=re.escape(why)):
        split_smarthost(written)


@pytest.mark.parametrize("written", ["[a:b]:25", "[]:25"])
def test_brackets_around_no_address_and_no_name_say_only_that(written: str) -> None:
    from txmailhub.config import split_smarthost

    with pytest.raises(ValueError) as caught:
        split_smarthost(written)
    host = written.rpartition(":")[0]
    assert str(caught.value) == (f"{written!r}: {host} is no IP address ([192.0.2.1], [::1] "
                                 "or [IPv6:2001:db8::1])")


def test_a_smarthost_port_in_other_digits_than_ascii_is_a_problem() -> None:
    # str.isdigit() and int() take fullwidth digits; the relay's port is
    # what the file says in ASCII, or a problem
    [problem] = problems(MINIMAL + '[relay]\nsmarthost = "smtp.example.net:\uff12\uff15"\n')
    assert problem.endswith('use "host:port" (for example "smtp.example.net:587") (at line 5)'), \
        problem


@pytest.mark.parametrize("written", ["fe80::1%eth0:25", "fe80::1%eth0", "fe80::1%25"])
def test_a_bare_ipv6_address_with_a_zone_is_refused_for_its_zone(written: str) -> None:
    from txmailhub.config import split_smarthost

    # Python reads "%eth0:25" as the zone: the bare address rule's advice
    # ("[fe80::1%eth0]:25") named a value that is refused in turn
    with pytest.raises(ValueError) as caught:
        split_smarthost(written)
    assert str(caught.value) == f"{written!r}: an address with a zone names a local interface"


def test_local_submission_takes_the_retry_schedule_for_mailq(tmp_path: Path) -> None:
    from txmailhub.config import RelaySettings, load_local_submission

    # mailq (sendmail -bp) prints queue list's next attempt, which a clock
    # set back brings within the entry's schedule step: the schedule is
    # [relay]'s.  A bad one is the hub's and `mailhub check`'s to report:
    # it never stops sendmail handing a message to the hub
    cfg = tmp_path / "mailhub.toml"
    base = '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
    cfg.write_text(base)
    assert load_local_submission(str(cfg)).retry_schedule == RelaySettings().retry_schedule
    cfg.write_text(base + '[relay]\nretry_schedule = ["2m", "1h"]\n')
    assert load_local_submission(str(cfg)).retry_schedule == (120, 3600)
    cfg.write_text(base + '[relay]\nretry_schedule = ["soon"]\nsome_typo = 1\n')
    assert load_local_submission(str(cfg)).retry_schedule == RelaySettings().retry_schedule


@pytest.mark.parametrize("section", ["smtp", "pop3"])
@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "3601"])
def test_auth_failure_delay_must_be_finite_and_bounded(section: str, value: str) -> None:
    # TOML has inf and nan: a failed login waited for ever for its answer
    # (the client got no 535 / -ERR), and a huge delay times the failure
    # count is inf too
    found = problems(MINIMAL + f"[{section}]\nauth_failure_delay = {value}\n")
    assert len(found) == 1
    assert found[0].startswith(f"/etc/mh/mailhub.toml: [{section}] auth_failure_delay: ")
    assert "at most 3600" in found[0]


def test_auth_failure_delay_of_an_hour_is_taken() -> None:
    assert load_text(MINIMAL + "[smtp]\nauth_failure_delay = 3600\n",
                     "/etc/mh/mailhub.toml").smtp.auth_failure_delay == 3600.0


@pytest.mark.parametrize("value", ["99999999999d", 9223372036854775807, "36501d"])
def test_durations_over_a_hundred_years_are_refused(value: object) -> None:
    # a queue_lifetime past the year 9999 made every "delayed" notice
    # fail (its Will-Retry-Until date cannot be written), and no timer
    # needs more than a century
    with pytest.raises(ValueError, match="at most 36500d"):
        parse_duration(value)  # type: ignore[arg-type]
    toml = f'"{value}"' if isinstance(value, str) else str(value)
    found = problems(MINIMAL + f"[relay]\nqueue_lifetime = {toml}\n")
    assert len(found) == 1 and "[relay] queue_lifetime: " in found[0]


@pytest.mark.parametrize("value", ["9" * 5000 + "s", " " + "1" * 4301 + " d", "0" * 5000 + "5m"])
def test_a_duration_of_thousands_of_digits_is_said_too_long(value: str) -> None:
    # Python refuses to read an integer of over 4300 digits (the problem
    # line told the admin to call sys.set_int_max_str_digits()); leading
    # zeros are no length: "000...05m" is 5 minutes
    if value.startswith("0"):
        assert parse_duration(value) == 300
        return
    with pytest.raises(ValueError, match="at most 36500d"):
        parse_duration(value)
    found = problems(MINIMAL + f'[relay]\nretry_schedule = ["1m", "{value}"]\n')
    assert len(found) == 1 and "[relay] retry_schedule: " in found[0], found
    assert "sys." not in found[0] and "is too long" in found[0]


def test_a_duration_of_a_hundred_years_is_taken() -> None:
    assert parse_duration("36500d") == 36500 * 86400


# -- where each problem is written (docs/configuration.rst) ---------------------

# a file long enough that a problem without its line sends the user searching
LONG = MINIMAL + "".join(f"# note {n}\n" for n in range(20)) + "\n"  # 24 lines


def test_an_unknown_key_says_its_line() -> None:
    text = LONG + '[smtp]\n# limits\n"max_conections" = 5\n'
    [found] = problems(text)
    assert found.startswith("/etc/mh/mailhub.toml: [smtp] max_conections: unknown key (known "
                            "keys: "), found
    assert found.endswith(" (at line 27)"), found
    # a key of another section, its home said: the line too
    [found] = problems(LONG + "[relay]\n\n  max_message_size = 5\n")
    assert found.startswith("/etc/mh/mailhub.toml: [relay] max_message_size: unknown key in "
                            "[relay]: it goes in [smtp] ("), found
    assert found.endswith(" (at line 27)"), found


def test_an_unknown_section_says_its_header_line() -> None:
    assert problems(LONG + "[smtp]\nmax_errors = 5\n\n[smtpd]\nlisten = []\n") == [
        "/etc/mh/mailhub.toml: [smtpd]: unknown section (known: aliases, hub, pop3, relay, "
        "smtp, submission, tls, users) (at line 28)"]
    # a key above the first section line: the key's line
    assert problems("# the hub\n\nstate_dir = 'var'\n" + MINIMAL) == [
        "/etc/mh/mailhub.toml: state_dir: a key before the first [section] line, outside "
        "every section: it goes in [hub] (at line 3)"]


def test_a_value_of_the_wrong_type_says_its_line() -> None:
    assert problems(LONG + '[pop3]\nmax_errors = 3\nallow_plaintext_auth = "yes"\n') == [
        "/etc/mh/mailhub.toml: [pop3] allow_plaintext_auth: expected true or false, got a "
        "string (at line 27)"]
    # a dotted key or an inline table is where its line is
    assert problems("smtp.max_connections = '5'\n" + MINIMAL) == [
        "/etc/mh/mailhub.toml: [smtp] max_connections: expected a whole number, got a string "
        "(at line 1)"]
    assert problems("relay = {port = 25, nameservers = 'x'}\n" + MINIMAL) == [
        "/etc/mh/mailhub.toml: [relay] nameservers: expected a list of strings, got a string "
        "(at line 1)"]


def test_a_bad_value_says_its_line() -> None:
    assert problems(LONG + "[relay]\nqueue_lifetime = '5 days'\n") == [
        "/etc/mh/mailhub.toml: [relay] queue_lifetime: unknown duration '5 days': use a number "
        'with s, m, h or d ("30s", "5m", "4h", "5d") (at line 26)']
    assert problems(LONG + "[smtp]\n\nmax_connections = 0\n") == [
        "/etc/mh/mailhub.toml: [smtp] max_connections: must be greater than 0, got 0 "
        "(at line 27)"]


def test_a_bad_list_item_says_the_line_the_item_is_on() -> None:
    text = ('[hub]\nhostname = "mail.example.org"\ndomains = [\n  "example.org",\n'
            '  "bad domain",  # a typo\n  "example.org",\n]\n'
            '[smtp]\nrelay_networks = [\n  "10.0.0.0/8",\n  "10.0.0.0/33",\n]\n'
            'listen = ["tcp:25", 25]\n'
            '[relay]\nretry_schedule = [\n  "1m",\n  "5x",\n]\n')
    found = problems(text)
    assert [p for p in found if "[hub] domains:" in p] == [
        "/etc/mh/mailhub.toml: [hub] domains: 'bad domain' is not a domain name (letters, "
        "digits, underscores and inner hyphens only) (at line 5)",
        "/etc/mh/mailhub.toml: [hub] domains: 'example.org' is listed twice (at line 6)"], found
    assert ("/etc/mh/mailhub.toml: [smtp] relay_networks: '10.0.0.0/33' is not a network "
            "(use CIDR like 192.0.2.0/24) (at line 11)") in found, found
    assert ("/etc/mh/mailhub.toml: [smtp] listen: expected a list of strings, found a number "
            "25 (at line 13)") in found, found
    assert [p for p in found if "retry_schedule" in p] == [
        "/etc/mh/mailhub.toml: [relay] retry_schedule: unknown duration '5x': use a number "
        'with s, m, h or d ("30s", "5m", "4h", "5d") (at line 17)'], found
    # two listeners on one address: the line of the second one
    text = (MINIMAL + '[smtp]\nlisten = ["tcp:2525"]\n'
            '[pop3]\nlisten = [\n  "tcp:110",\n  "tcp:2525",\n]\n')
    assert problems(text) == [
        "/etc/mh/mailhub.toml: [pop3] listen: 'tcp:2525' is the same address as 'tcp:2525' in "
        "[smtp] listen: only one of them could listen (at line 9)"]


def test_a_key_in_a_multi_line_string_is_not_taken_for_the_key() -> None:
    # the lines of the string look like [smtp] and its key; the real ones
    # come after it
    text = (MINIMAL + 'state_dir = "var"\nmotd = """\n[smtp]\nmax_connections = 0\n"""\n'
            "[smtp]\nmax_recipients = [\n  # max_connections = 1\n]\nmax_connections = 0\n")
    assert problems(text) == [
        "/etc/mh/mailhub.toml: [hub] motd: unknown key (known keys: domains, hostname, "
        "log_files_kept, mailbox_quota, state_dir) (at line 5)",
        "/etc/mh/mailhub.toml: [smtp] max_recipients: expected a whole number, got a list "
        "(at line 10)",
        "/etc/mh/mailhub.toml: [smtp] max_connections: must be greater than 0, got 0 "
        "(at line 13)"]


def test_a_problem_with_no_line_in_the_file_says_none() -> None:
    # required and left out, or found in a file the config names: nothing
    # of the config's text to point at
    assert problems("[hub]\nhostname = 'mail.example.org'\n") == [
        "/etc/mh/mailhub.toml: [hub] domains: required: the local domains, the primary one "
        "first"]
    found = problems(MINIMAL + "[tls]\ncertificate = '/nonexistent/c.pem'\n")
    assert "/etc/mh/mailhub.toml: [tls] key: required when [tls] is present" in found, found
    # (and the one that is written has its line)
    assert ("/etc/mh/mailhub.toml: [tls] certificate: /nonexistent/c.pem does not exist "
            "(at line 5)") in found, found


def test_local_submission_says_the_line_too(tmp_path: Path) -> None:
    cfg = tmp_path / "mailhub.toml"
    cfg.write_text(MINIMAL + "\n[smtp]\nmax_message_size = -1\n")
    with pytest.raises(ConfigError) as info:
        load_local_submission(str(cfg))
    assert info.value.problems == [
        f"{cfg}: [smtp] max_message_size: must be greater than 0, got -1 (at line 6)"]


def test_a_smarthost_password_over_tls_that_checks_no_certificate_is_warned_of(
        tmp_path: Path) -> None:
    # RFC 8314 5.3 (a submission client MUST check the server's certificate,
    # RFC 7817): under "opportunistic" the password goes only over TLS, but
    # to whoever answers with any certificate -- an attacker on the path
    # too.  Said, not refused: a smarthost on a network the admin trusts
    (tmp_path / "auth").write_text("relay:secret\n")
    text = MINIMAL + '[relay]\nsmarthost = "smtp.example.net:587"\nsmarthost_auth_file = "auth"\n'
    s = load_quiet(text + 'smarthost_tls = "opportunistic"\n', str(tmp_path / "c.toml"))
    [found] = s.warnings
    assert found == (
        f'{tmp_path / "c.toml"}: [relay] smarthost_tls: "opportunistic" sends the password of '
        "smarthost_auth_file over TLS without checking the smarthost's certificate: whoever "
        "can come between the hub and smtp.example.net (DNS, the network) can pose as it and "
        'take the password (RFC 8314 5.3); use "verify", the default (at line 7)'), found
    # "verify" checks it; "none" says outright that the password goes in clear
    for policy in ('smarthost_tls = "verify"\n', "", 'smarthost_tls = "none"\n'):
        assert load_quiet(text + policy, str(tmp_path / "c.toml")).warnings == ()


@pytest.mark.parametrize("smarthost", [
    "127.0.0.1:587", "[127.0.0.1]:587", "127.0.0.2:465", "[::1]:587", "[IPv6:::1]:587",
    "localhost:587", "LocalHost.:587"])
def test_a_password_to_a_smarthost_on_this_machine_is_not_warned_of(
        tmp_path: Path, smarthost: str) -> None:
    # nothing comes between the hub and its own machine (a local MTA, a
    # TLS tunnel's end): the warning's attacker is not there, and its
    # advice ("verify") seldom passes there, no certificate naming 127.0.0.1
    (tmp_path / "auth").write_text("relay:secret\n")
    text = MINIMAL + (f'[relay]\nsmarthost = "{smarthost}"\nsmarthost_auth_file = "auth"\n'
                      'smarthost_tls = "opportunistic"\n')
    assert load_quiet(text, str(tmp_path / "c.toml")).warnings == ()
    # the same to another machine is warned of
    other = text.replace(smarthost, "192.0.2.25:587")
    [found] = load_quiet(other, str(tmp_path / "c.toml")).warnings
    assert "between the hub and 192.0.2.25" in found, found


@pytest.mark.skipif(os.geteuid() != 0, reason="loads the config as the hub's user")
def test_check_as_the_hubs_user_says_usermod_for_a_key_its_own_group_reads(
        open_tmp: Path) -> None:
    # root:daemon 0640, a key other services read through their group:
    # run as the hub's user, the hint said "chgrp <hub's group> key",
    # which would take it from them (run as root, check says usermod)
    cert, key = make_certificate(open_tmp)
    os.chmod(cert, 0o644)
    os.chown(key, 0, 1)  # daemon
    os.chmod(key, 0o640)
    state = open_tmp / "state"
    state.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    text = MINIMAL + f'state_dir = "{state}"\n[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
    found = as_user(nobody.pw_uid, nobody.pw_gid, lambda: problems(text))
    assert len(found) == 1 and "chgrp" not in found[0], found
    assert found[0].endswith(
        "cannot be read by nobody: Permission denied; its group daemon reads it (other "
        "services' too, perhaps): rather than change the file's group, add the user the hub "
        "runs as to that one (as root: usermod -a -G daemon nobody), then restart the hub "
        "(docs/deployment.rst) (at line 7)"), found
