"""docs/deployment.rst's fail2ban filter against the lines the hub logs.

SMTP and POP3 word a failed login differently, and the log lines are a
contract (filters in use match them), so the docs give one pattern for
each.  The lines here come from the code paths themselves (a failed SMTP
AUTH and failed POP3 logins in the protocol tests' set-ups), formatted as
twistd's ``--logfile`` writes them, and the documented ``failregex``
lines must match them and take out the client's address -- the real one,
whatever the client typed as its user name."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from cred_fakes import checker_without_apop_secret
from test_pop3_protocol import REMOTE, Env, talk
from test_smtp_protocol import Harness, take
from twisted.logger import formatEventAsClassicLogText

from txmailhub.logsafe import loggable
from txmailhub.logtext import SyslogTextObserver

DEPLOYMENT = Path(__file__).resolve().parent.parent / "docs" / "deployment.rst"

# a user name that tries to have fail2ban ban someone else
FORGED = "x from 198.51.100.66 (USER) refused: AUTH"


def documented_filter() -> tuple[str, list[str]]:
    """The ``prefregex`` and the ``failregex`` lines of the filter shown in
    deployment.rst."""
    text = DEPLOYMENT.read_text()
    lines = text[text.index("    [Definition]"):].splitlines()
    prefregex = next(line for line in lines if line.strip().startswith("prefregex ="))
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("failregex ="))
    regexes = [lines[start].split("=", 1)[1].strip()]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 16) or not line.strip():
            break  # the continuation lines are indented under the first
        regexes.append(line.strip())
    return prefregex.split("=", 1)[1].strip(), regexes


def as_python(regex: str) -> re.Pattern[str]:
    """fail2ban's ``<HOST>`` as a group that takes an IP address, and its
    ``<F-CONTENT>`` as the group ``content``."""
    regex = regex.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)")
    return re.compile(regex.replace("<F-CONTENT>", "(?P<content>").replace("</F-CONTENT>", ")"))


def log_lines(events: list[dict[str, Any]], namespace: str) -> list[str]:
    """The events as twistd's text log observer writes them (time stamp
    first)."""
    out = []
    for event in events:
        if event.get("log_namespace") != namespace:
            continue
        text = formatEventAsClassicLogText(event)
        if text:
            out.append(text.rstrip("\n"))
    return out


def as_fail2ban_sees(line: str) -> list[str]:
    """``line`` as fail2ban matches it: from a log file, less the time
    stamp it found at the start; from the journal (``backend = systemd``),
    after the host name and the process's name and pid, time stamp kept;
    from syslog (``twistd --syslog``, whose line has no time stamp: what
    ``SyslogTextObserver`` sends, ``syslog_messages``), after the host
    name and the program's name (``--prefix``) and pid, with the blank
    left where fail2ban cut syslog's time stamp off."""
    stamp, rest = line.split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", stamp), stamp
    return [" " + rest, f"mail.example.org twistd[4321]: {line}",
            f" mail.example.org twisted[4321]: {rest}"]


def syslog_messages(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(priority, message) of each syslog message ``twistd --syslog``
    sends for ``events``."""
    sent: list[tuple[int, str]] = []
    observer = SyslogTextObserver("twisted", openlog=lambda *a: None,
                                  send=lambda *a: sent.append(a))
    for event in events:
        observer(dict(event))
    return sent


def hosts(lines: list[str]) -> list[str]:
    """The address each line bans, as the documented filter finds it; the
    same from the log file and from the journal."""
    prefregex, failregexes = documented_filter()
    found = []
    for line in lines:
        per_form = []
        for seen in as_fail2ban_sees(line):
            m = as_python(prefregex).search(seen)
            hit = None
            if m:
                for regex in map(as_python, failregexes):
                    hit = regex.search(m.group("content"))
                    if hit:
                        break
            per_form.append(hit.group("host") if hit else None)
        assert len(set(per_form)) == 1, (line, per_form)
        if per_form[0]:
            found.append(per_form[0])
    return found


def test_the_filter_has_one_regex_for_smtp_and_one_for_pop3_and_one_for_both() -> None:
    _, regexes = documented_filter()
    assert len(regexes) == 3 and all("<HOST>" in r for r in regexes), regexes


MALFORMED_SMTP = [
    ("AUTH PLAIN !!!\r\n", "PLAIN"),  # not base64: 501
    ("AUTH PLAIN =\r\n", "PLAIN"),  # empty: 501
    ("AUTH PLAIN\r\n" + base64.b64encode(b"no nuls").decode() + "\r\n", "PLAIN"),  # no message
    ("AUTH LOGIN\r\n \r\n", "LOGIN"),  # a blank is no base64
    ("AUTH PLAIN " + base64.b64encode(b"\0\xff\0pw").decode() + "\r\n", "PLAIN"),  # not UTF-8
    ("AUTH PLAIN\r\n" + "A" * 13000 + "\r\n", "PLAIN"),  # a line too long
    ("AUTH PLAIN " + "A" * 600 + "\r\n", "PLAIN"),  # an initial response past 512 octets
]


@pytest.mark.parametrize(("commands", "mechanism"), MALFORMED_SMTP)
def test_the_filter_matches_a_malformed_smtp_auth_response(log_events, commands: str,
                                                           mechanism: str) -> None:
    # a client that sends only garbage AUTH responses left no line (501,
    # before any password check): it does now, naming no user
    h = Harness()
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True  # AUTH off loopback needs TLS (as after STARTTLS)
    take(t)
    p.dataReceived(f"EHLO c\r\n{commands}".encode())
    h.clock.advance(60)
    assert take(t)[-1][:1] == "5"
    lines = log_lines(log_events, "txmailhub.smtp")
    assert [line.split(" ", 1)[1] for line in lines if "authentication" in line] == [
        "[txmailhub.smtp#info] malformed authentication response from 192.0.2.1 "
        f"({mechanism})"]
    assert hosts(lines) == ["192.0.2.1"]


def test_a_cancelled_smtp_auth_is_no_failure(log_events) -> None:
    h = Harness()
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True
    take(t)
    p.dataReceived(b"EHLO c\r\nAUTH PLAIN\r\n*\r\n")
    assert take(t)[-1].startswith("501 ")
    assert hosts(log_lines(log_events, "txmailhub.smtp")) == []


@pytest.mark.parametrize("commands", [
    b"AUTH PLAIN !!!\r\n", b"AUTH PLAIN\r\n \r\n", b"AUTH PLAIN =\r\n",
    b"AUTH PLAIN\r\n" + base64.b64encode(b"joe\0pw") + b"\r\n",
    b"AUTH PLAIN\r\n" + b"A" * 5000 + b"\r\n",
    b"AUTH PLAIN " + b"A" * 300 + b"\r\n",  # an initial response past 255 octets
    b"AUTH PLAIN " + b"A" * 5000 + b"\r\n",  # past 4096: dropped unread (it left no line)
    b"AUTH PLAIN " + base64.b64encode(b"ann\0joe\0joepw") + b"\r\n"])  # as another user
def test_the_filter_matches_a_malformed_pop3_auth_response(log_events, commands: bytes) -> None:
    env = Env(allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    talk(proto, t, commands)
    env.clock.advance(60)
    assert t.value().split(b"\r\n")[-2].startswith(b"-ERR"), t.value()
    lines = log_lines(log_events, "txmailhub.pop3")
    assert [line.split(" ", 1)[1] for line in lines if "authentication" in line] == [
        "[txmailhub.pop3#info] malformed authentication response from 192.0.2.7 (PLAIN)"]
    assert hosts(lines) == ["192.0.2.7"]


def test_the_filter_matches_a_pop3_auth_line_past_4096_octets_read_in_pieces(log_events) -> None:
    # dropped as it arrives, the line left no line in the log (SMTP logs
    # one at any length); the same line as SMTP's, once
    env = Env(allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    line = b"AUTH PLAIN " + b"A" * 20000 + b"\r\n"
    for i in range(0, len(line), 1000):
        proto.dataReceived(line[i:i + 1000])
    assert t.value().split(b"\r\n")[-2] == b"-ERR Line too long (at most 255 octets)"
    lines = log_lines(log_events, "txmailhub.pop3")
    assert [line.split(" ", 1)[1] for line in lines if "authentication" in line] == [
        "[txmailhub.pop3#info] malformed authentication response from 192.0.2.7 (PLAIN)"]
    assert hosts(lines) == ["192.0.2.7"]


@pytest.mark.parametrize("user", ["alice@example.org", FORGED])
def test_the_filter_matches_a_failed_smtp_auth(log_events, user: str) -> None:
    # (one such line, and the filter finds no other host in the session's)
    assert smtp_auth_failed_line(log_events, user) == (
        f"[txmailhub.smtp#info] authentication failed for {user} from 192.0.2.1")


# (no FORGED name for USER: POP3 refuses a user name with a space in it,
# by RFC 8265, before a password is given; AUTH PLAIN's is below)
@pytest.mark.parametrize(("user", "mechanism"), [("joe", "USER"), ("joe", "PLAIN")])
def test_the_filter_matches_a_failed_pop3_login(log_events, user: str, mechanism: str) -> None:
    if mechanism == "USER":
        said = [f"USER {user}\r\n".encode(), b"PASS wrong\r\n"]
    else:
        said = [b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0wrong".encode()) + b"\r\n"]
    assert pop3_refused_lines(log_events, said) == [
        f"[txmailhub.pop3#info] POP3 login {user} from 192.0.2.7 ({mechanism}) refused: AUTH"]


def pop3_refused_lines(log_events: list[dict[str, Any]], said: list[bytes]) -> list[str]:
    """The "refused" lines, less their time stamps, of a POP3 session from
    192.0.2.7 that said ``said`` and was refused ``[AUTH]``; the filter
    finds no other host in the session's lines."""
    env = Env(allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    for line in said:
        talk(proto, t, line)
    env.clock.advance(60)
    assert t.value().startswith(b"-ERR [AUTH]"), t.value()
    lines = log_lines(log_events, "txmailhub.pop3")
    assert hosts(lines) == ["192.0.2.7"]
    return [line.split(" ", 1)[1] for line in lines if "refused" in line]


def smtp_auth_failed_line(log_events: list[dict[str, Any]], user: str) -> str:
    """The line a failed SMTP AUTH PLAIN of ``user`` from 192.0.2.1 logs,
    less its time stamp."""
    h = Harness()
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True  # AUTH off loopback needs TLS (as after STARTTLS)
    take(t)
    creds = base64.b64encode(f"\0{user}\0wrong".encode()).decode()
    p.dataReceived(f"EHLO c\r\nAUTH PLAIN {creds}\r\n".encode())
    h.clock.advance(60)
    assert take(t)[-1].startswith("535 ")
    lines = log_lines(log_events, "txmailhub.smtp")
    assert hosts(lines) == ["192.0.2.1"]
    [line] = [line for line in lines if "authentication failed" in line]
    return line.split(" ", 1)[1]


def pop3_refused_line(log_events: list[dict[str, Any]], user: str, mechanism: str) -> str:
    """The line a failed POP3 login of ``user`` from 192.0.2.7 logs, less
    its time stamp."""
    env = Env(allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    if mechanism == "USER":
        talk(proto, t, f"USER {user}\r\n".encode())
        talk(proto, t, b"PASS wrong\r\n")
    else:
        talk(proto, t, b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0wrong".encode())
             + b"\r\n")
    env.clock.advance(60)
    assert t.value().startswith(b"-ERR [AUTH]"), t.value()
    lines = log_lines(log_events, "txmailhub.pop3")
    assert hosts(lines) == ["192.0.2.7"]
    [line] = [line for line in lines if "refused" in line]
    return line.split(" ", 1)[1]


# deployment.rst says what USER is in each: SMTP logs the address the
# name stands for (a bare one at the primary domain, the domain in lower
# case), or the text as it came where it is no address; POP3 the name as
# the client gave it
@pytest.mark.parametrize(("typed", "logged"), [
    ("joe", "joe@example.org"), ("Joe@EXAMPLE.ORG.", "Joe@example.org"),
    (" joe ", "joe@example.org"), ("a@b@example.org", "a@b@example.org"),
    ("joe\x7f", "joe\\x7f")])
def test_smtp_logs_the_address_the_name_stands_for(log_events, typed: str, logged: str) -> None:
    assert smtp_auth_failed_line(log_events, typed) == (
        f"[txmailhub.smtp#info] authentication failed for {logged} from 192.0.2.1")


@pytest.mark.parametrize("mechanism", ["USER", "PLAIN"])
@pytest.mark.parametrize("typed", ["joe", "Joe@EXAMPLE.ORG."])
def test_pop3_logs_the_name_as_the_client_gave_it(log_events, typed: str,
                                                  mechanism: str) -> None:
    assert pop3_refused_line(log_events, typed, mechanism) == (
        f"[txmailhub.pop3#info] POP3 login {typed} from 192.0.2.7 ({mechanism}) refused: AUTH")


@pytest.mark.parametrize("mechanism", ["USER", "PLAIN"])
@pytest.mark.parametrize(("typed", "logged"), [
    ("jo\u0308rg", "j\u00f6rg"), ("a\u037e", "a;")])
def test_pop3_logs_a_non_ascii_name_in_nfc(
        log_events, typed: str, logged: str, mechanism: str) -> None:
    # deployment.rst: in NFC, as it is looked up; a\u037e (the Greek
    # question mark) is "a;" in NFC, the same user "a;" (docs/pop3.rst)
    assert pop3_refused_line(log_events, typed, mechanism) == (
        f"[txmailhub.pop3#info] POP3 login {logged} from 192.0.2.7 ({mechanism}) refused: AUTH")


def test_the_documented_example_lines_are_what_a_client_that_typed_joe_leaves(
        log_events) -> None:
    # the examples after "each line starts with the time", less the time:
    # the same name, joe, typed to both, shows in the two forms
    text = DEPLOYMENT.read_text()
    start = text.rindex("\n", 0, text.index("[txmailhub.smtp#info] authentication failed for "))
    examples = [line.strip().split(" ", 1)[1] for line in text[start + 1:].splitlines()[:2]]
    assert examples == [smtp_auth_failed_line(log_events, "joe"),
                        pop3_refused_line(log_events, "joe", "USER")]


def test_the_filter_matches_a_failed_apop_login_with_its_detail(log_events, tmp_path) -> None:
    # the refusal of a user added without --allow-apop ends with a remark
    env = Env(checker=checker_without_apop_secret(tmp_path))
    proto, t = env.connect(peer=REMOTE)
    stamp = re.search(rb"<[^>]+>", t.value()).group(0)
    talk(proto, t, b"APOP joe " + hashlib.md5(stamp + b"joepw").hexdigest().encode() + b"\r\n")
    env.clock.advance(60)
    lines = log_lines(log_events, "txmailhub.pop3")
    assert any(line.endswith("(APOP) refused: AUTH (the user has no APOP secret: it was added "
                             "without mailhub user add --allow-apop)") for line in lines), lines
    assert hosts(lines) == ["192.0.2.7"]


def test_the_filter_leaves_a_successful_login_alone(log_events) -> None:
    env = Env(allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    talk(proto, t, b"USER joe\r\n")
    talk(proto, t, b"PASS joepw\r\n")
    assert t.value().startswith(b"+OK"), t.value()
    assert hosts(log_lines(log_events, "txmailhub.pop3")) == []


def test_the_filter_leaves_a_successful_smtp_login_alone(log_events) -> None:
    # the login line names the mechanism and the TLS version in brackets
    # after the user: no failregex may take it for a failure
    h = Harness()
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True  # AUTH off loopback needs TLS (as after STARTTLS)
    take(t)
    creds = base64.b64encode(b"\0alice\0secret").decode()
    p.dataReceived(f"EHLO c\r\nAUTH PLAIN {creds}\r\n".encode())
    assert take(t)[-1].startswith("235 ")
    lines = log_lines(log_events, "txmailhub.smtp")
    assert any("authenticated as alice@example.org (PLAIN, TLS)" in line for line in lines), lines
    assert hosts(lines) == []


@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_a_pop3_plain_message_acting_as_another_user_is_logged_without_a_delay(
        log_events, delay: float) -> None:
    # [pop3] auth_failure_delay = 0 is a valid setting: the line was keyed
    # on the answer's delay, and with none the failed login left no line
    env = Env(allow_plaintext_auth=True, auth_failure_delay=delay)
    proto, t = env.connect(peer=REMOTE)
    talk(proto, t, b"AUTH PLAIN " + base64.b64encode(b"ann\0joe\0joepw") + b"\r\n")
    env.clock.advance(60)
    assert t.value().startswith(b"-ERR [AUTH]"), t.value()
    lines = log_lines(log_events, "txmailhub.pop3")
    assert [line.split(" ", 1)[1] for line in lines if "authentication" in line] == [
        "[txmailhub.pop3#info] malformed authentication response from 192.0.2.7 (PLAIN)"]
    assert hosts(lines) == ["192.0.2.7"]


@pytest.mark.parametrize("user", ["a b", FORGED, "joe\x7f"])
def test_the_filter_matches_a_pop3_plain_login_of_a_name_no_user_can_have(
        log_events, user: str) -> None:
    # SMTP logs this PLAIN message as a failed login of that name; POP3
    # refused the name with no line at all (and counted nothing), so the
    # filter saw one protocol's guesses and not the other's.  The name is
    # the client's text, the address the real one at the end
    message = base64.b64encode(f"\0{user}\0wrong".encode())
    h = Harness()
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True
    take(t)
    p.dataReceived(b"EHLO c\r\nAUTH PLAIN " + message + b"\r\n")
    h.clock.advance(60)
    assert take(t)[-1].startswith("535 ")
    assert hosts(log_lines(log_events, "txmailhub.smtp")) == ["192.0.2.1"]
    assert pop3_refused_lines(log_events, [b"AUTH PLAIN " + message + b"\r\n"]) == [
        f"[txmailhub.pop3#info] POP3 login {loggable(user)} from 192.0.2.7 (PLAIN) refused: AUTH"]


def test_the_filter_matches_an_apop_login_of_a_name_no_user_can_have(log_events) -> None:
    # a digest came with it, as AUTH PLAIN's password: a failed login,
    # logged as one (it was refused with no line)
    env = Env()
    proto, t = env.connect(peer=REMOTE)
    talk(proto, t, b"APOP joe\x7f " + b"0" * 32 + b"\r\n")
    env.clock.advance(60)
    assert t.value().startswith(b"-ERR [AUTH]"), t.value()
    lines = log_lines(log_events, "txmailhub.pop3")
    assert any(line.endswith("(APOP) refused: AUTH") for line in lines), lines
    assert hosts(lines) == ["192.0.2.7"]


# the hub's own refusal of an address past its failed logins is no wrong
# password (deployment.rst: leave it out), whatever name the client gave,
# the malformed SMTP response refused so included: fail2ban bans on the
# failures themselves, not on the hub's answer to them
@pytest.mark.parametrize("response", [
    base64.b64encode(b"\0alice\0wrong"), base64.b64encode(f"\0{FORGED}\0wrong".encode()),
    base64.b64encode(b"bob\0alice\0secret")])  # acting as another user: malformed
def test_the_filter_does_not_match_an_smtp_login_refused_for_too_many_failures(
        log_events, response: bytes) -> None:
    h = Harness()
    for _ in range(10):
        h.factory.login_failures.failed("192.0.2.1")
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True
    take(t)
    p.dataReceived(b"EHLO c\r\nAUTH PLAIN " + response + b"\r\n")
    assert take(t)[-1].startswith("454 ")
    lines = log_lines(log_events, "txmailhub.smtp")
    assert [line for line in lines if "too many failures" in line]
    assert hosts(lines) == []


@pytest.mark.parametrize("response", [
    base64.b64encode(b"\0joe\0wrong"), base64.b64encode(f"\0{FORGED}\0wrong".encode()),
    base64.b64encode(b"ann\0joe\0joepw")])  # acting as another user: malformed
def test_the_filter_does_not_match_a_pop3_login_refused_for_too_many_failures(
        log_events, response: bytes) -> None:
    env = Env(allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    for _ in range(10):
        proto.factory.login_failures.failed("192.0.2.7")
    assert talk(proto, t, b"AUTH PLAIN " + response + b"\r\n").startswith(b"-ERR [SYS/TEMP]")
    lines = log_lines(log_events, "txmailhub.pop3")
    assert [line for line in lines if "too many failures" in line]
    assert hosts(lines) == []


class NameInMessagePortal:
    """An embedding application's portal whose login fails with the name
    the client gave in the exception's text (docs/embedding.rst: the
    portal is the application's), line breaks and all."""

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> Any:
        raise LookupError(f"no record for {credentials.username.decode()}")


# a name whose line break starts a line of a traceback with the text of
# a failed login, as a file and the journal would hold it
FORGED_LINES = [f"\n{start}[txmailhub.smtp#info] authentication failed for x from 198.51.100.66"
                for start in ("", "2026-11-30T07:13:12+0000 ", " 2026-11-30T07:13:12+0000 ")]


def failed_auth_with_forged_name(forged: str) -> None:
    """A failed AUTH PLAIN from 192.0.2.1 whose portal raises an error with
    the client's name in its text: a traceback in the log holding
    ``forged`` (line breaks and a failed login of another address)."""
    h = Harness()
    h.components.portal = NameInMessagePortal()
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True
    take(t)
    creds = base64.b64encode(f"\0x{forged}\0wrong".encode()).decode()
    p.dataReceived(f"EHLO c\r\nAUTH PLAIN {creds}\r\n".encode())
    h.clock.advance(60)
    assert take(t)[-1].startswith("454 ")


@pytest.mark.parametrize("forged", FORGED_LINES)
def test_the_filter_takes_no_address_from_a_tracebacks_lines(log_events, forged: str) -> None:
    # a traceback's lines after its first start with a tab in what twistd
    # writes, and its exception's text may hold what the client sent (an
    # unforeseen error: the hub cannot escape it); fail2ban reads each as
    # a line of its own, without a time stamp or with one it finds in the
    # text, and the filter matched it ("\s*" took the tab)
    failed_auth_with_forged_name(forged)
    [failure] = [e for e in log_events if "log_failure" in e]
    text = formatEventAsClassicLogText(failure)
    assert "\n\t" + forged.lstrip("\n") in text  # the forged line is there, behind a tab
    prefregex, failregexes = documented_filter()
    for line in text.rstrip("\n").split("\n")[1:]:
        for seen in (line, f"mail.example.org twistd[4321]: {line}",
                     re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", "", line)):
            m = as_python(prefregex).search(seen)
            assert m is None or not any(as_python(r).search(m.group("content"))
                                        for r in failregexes), seen
    # and in syslog, where each line of the traceback is a message of its
    # own behind the event's [system], the tab as it is or as rsyslog
    # escapes it by default (#011)
    messages = [m for _, m in syslog_messages([failure])]
    file_lines = text.rstrip("\n").split("\n")
    while file_lines[-1].strip() == "":
        file_lines.pop()  # (the traceback's last line break: no message of its own)
    assert [m.split("] ", 1)[1] for m in messages] == [
        file_lines[0].split("] ", 1)[1], *file_lines[1:]]
    assert any(forged.lstrip("\n") in m for m in messages)
    for message in messages[1:]:
        assert message.startswith("[txmailhub.smtp#critical] \t"), message
        for seen in (f" mail.example.org twisted[4321]: {message}",
                     f" mail.example.org twisted[4321]: {message.replace(chr(9), '#011')}"):
            m = as_python(prefregex).search(seen)
            assert m is None or not any(as_python(r).search(m.group("content"))
                                        for r in failregexes), seen


def test_syslog_has_the_log_files_line_less_its_time(log_events) -> None:
    # Twisted's own syslog observer sent "[-] authentication failed ...":
    # the filter took nothing from syslog, and could not have told the
    # hub's line from another program's
    import syslog

    smtp_auth_failed_line(log_events, "alice@example.org")
    events = [e for e in log_events if e.get("log_namespace") == "txmailhub.smtp"]
    sent = syslog_messages(events)
    assert [m for _, m in sent] == [line.split(" ", 1)[1]
                                    for line in log_lines(events, "txmailhub.smtp")]
    [(priority, _)] = [(p, m) for p, m in sent if "authentication failed" in m]
    assert priority == syslog.LOG_INFO


def test_a_nul_in_a_tracebacks_text_starts_no_journal_record(log_events) -> None:
    # journald splits standard output (the systemd unit's --logfile=-) into
    # records at a NUL as at a line break: an AUTH LOGIN name with a NUL
    # then a failed login's words, in an application portal's exception
    # text, made a record of its own that the filter took for a failed
    # login of 198.51.100.66; syslog(3) ended its message at the NUL
    from txmailhub.logtext import ClassicTextObserver

    h = Harness()
    h.components.portal = NameInMessagePortal()
    p, t = h.connect("192.0.2.1")
    p.engine.session.tls = True
    take(t)
    name = "x\0[txmailhub.smtp#info] authentication failed for x from 198.51.100.66"
    p.dataReceived(b"EHLO c\r\nAUTH LOGIN\r\n" + base64.b64encode(name.encode()) + b"\r\n"
                   + base64.b64encode(b"wrong") + b"\r\n")
    h.clock.advance(60)
    assert take(t)[-1].startswith("454 ")
    [failure] = [e for e in log_events if "log_failure" in e]
    written = ClassicTextObserver(io.StringIO()).line(dict(failure))
    assert "no record for x\\x00[txmailhub.smtp#info] authentication failed" in written
    prefregex, failregexes = documented_filter()
    for record in re.split("[\n\0]", written):
        seen = f"mail.example.org twistd[4321]: {record}"
        m = as_python(prefregex).search(seen)
        assert m is None or not any(as_python(r).search(m.group("content"))
                                    for r in failregexes), seen
    messages = [m for _, m in syslog_messages([failure])]
    assert any("no record for x\\x00[txmailhub.smtp#info] authentication failed" in m
               for m in messages)
    assert not any("\0" in m for m in messages)
