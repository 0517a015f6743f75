"""A client's longest AUTH name, against a running hub's standard output.

An application's portal (docs/embedding.rst) may put the name a client
gave in the text of its error, which the hub logs with its traceback as
it is: the hub is started through a launcher that registers such a
checker, one that names the user twice.  An AUTH PLAIN response of the
most octets an AUTH line may have (12,288, RFC 4954 4) holds a name of
over 9,000 control characters, each ``\\x01`` once escaped: as Twisted
writes it, the error's line is some 73,700 octets, which journald
(``--logfile=-`` under systemd) would cut into two records at its
``LineMax`` of 48 KiB.  No line of what the hub writes may be over
``LINE_LOG_MAX`` octets; the cut one ends with the mark of a cut.
"""

from __future__ import annotations

import base64
import sys

from relayutil import wait_for
from test_fail2ban_doc import as_python, documented_filter
from test_log_injection import STAMP, UNSAFE, Line

from txmailhub.logsafe import CUT
from txmailhub.logtext import LINE_LOG_MAX

_LAUNCHER = """\
import sys

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from zope.interface import implementer

import txmailhub.service


@implementer(ICredentialsChecker)
class Directory:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials):
        name = credentials.username.decode("utf-8", "surrogateescape")
        return defer.fail(LookupError(
            f"no record for {name!r} (looked up as {name.lower()!r})"))


built = txmailhub.service.build_portal


def build_portal(*args, **kwargs):
    portal = built(*args, **kwargs)
    portal.registerChecker(Directory())
    return portal


txmailhub.service.build_portal = build_portal
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""

ERROR = "builtins.LookupError: no record for "
AUTH_LINE = 12288  # octets, CRLF included (txmailhub.smtp.events.max_auth_line)


def test_the_longest_auth_name_makes_no_line_over_the_limit(make_hub, tmp_path) -> None:
    launcher = tmp_path / "twistd-directory.py"
    launcher.write_text(_LAUNCHER)
    hub = make_hub(launcher=[sys.executable, str(launcher)],
                   sections={"smtp": {"auth_failure_delay": 0}})
    # the longest response an AUTH line takes: base64 in 4-character
    # groups, its CRLF within the 12,288 octets
    room = (AUTH_LINE - 2) // 4 * 3
    name = "\x01" * (room - len("\0\0pw"))
    response = base64.b64encode(f"\0{name}\0pw".encode()).decode()
    assert len(response) + 2 <= AUTH_LINE
    s = Line(hub.smtp_port)
    s.say("EHLO c")
    assert s.say("AUTH PLAIN").startswith(b"334")
    assert s.say(response).startswith(b"454 4.7.0"), "the checker's error"
    s.say("QUIT")
    s.close()

    def logged() -> list[str]:
        lines = hub.log_text().split("\n")
        return lines if any(ERROR in line for line in lines) else []

    lines = wait_for(logged, what="the checker's error")
    assert isinstance(lines, list)
    first = next(i for i, line in enumerate(lines) if STAMP.match(line))
    longest = max(lines[first:], key=lambda line: len(line.encode()))
    assert longest.startswith("\t") and f"{ERROR}'\\x01\\x01" in longest
    assert longest.endswith(CUT) and len(longest.encode()) <= LINE_LOG_MAX
    # a line as long as the limit: the error's text, escaped, is longer
    assert len(longest.encode()) > LINE_LOG_MAX - len(CUT) - 4
    prefregex, failregexes = documented_filter()
    for line in lines[first:-1]:
        assert STAMP.match(line) or line.startswith("\t"), repr(line[:200])
        assert not UNSAFE.search(line), repr(line[:200])
        m = as_python(prefregex).search(line)
        assert not (m and any(as_python(r).search(m.group("content")) for r in failregexes))
