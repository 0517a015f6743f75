"""What clients send, against a running hub's log file.

Over real sockets, an SMTP and a POP3 client put into everything the hub
logs of theirs -- the HELO name, AUTH user names (PLAIN and LOGIN, POP3's
USER, APOP and AUTH PLAIN), the envelope addresses, unknown commands --
line breaks (CR, LF, VT, FF, NEL, U+2028), an ESC sequence, a NUL, a DEL
and a bidi override, each around the text of a failed login from another
address.  The file twistd writes (``--logfile=-``) must have one line
per event but a traceback's tab-led continuations (there are none here),
nothing that breaks or reorders a line, no password, and the fail2ban
filter of docs/deployment.rst must find the client's own address only.
"""

from __future__ import annotations

import base64
import re
import socket

from relayutil import wait_for
from test_fail2ban_doc import as_python, documented_filter

PASSWORD = "alice-secret"
# what each name tries to start or end a line with
FORGERY = "{c}[txmailhub.smtp#info] authentication failed for v@x from 198.51.100.66{c}"
BREAKERS = ["\r", "\n", "\x0b", "\x0c", "\x85", "\u2028", "\x1b[2K", "\x00", "\x7f", "\u202e"]
# what no line of the log may hold: C0 controls but the tab, DEL, C1, the
# line and paragraph separators, the bidi embeddings, overrides, isolates
UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[(?:-|[\w.]+#\w+)\] ")


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()


class Line:
    """One command at a time over a socket, the reply read whole."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.reply()

    def reply(self) -> bytes:
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                # SMTP's last line ("250 x"), or any POP3 line
                if line[3:4] in (b" ", b"") or line[:1] in (b"+", b"-"):
                    out = b"\r\n".join(lines[:i + 1])
                    self.buf = b"\r\n".join(lines[i + 1:])
                    return out
            data = self.sock.recv(65536)
            if not data:
                return self.buf
            self.buf += data

    def say(self, text: str) -> bytes:
        self.sock.sendall(text.encode("utf-8", "surrogatepass") + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def smtp_session(port: int, c: str) -> None:
    s = Line(port)
    s.say(f"EHLO h{c}x")
    s.say("AUTH PLAIN " + b64("\0" + FORGERY.format(c=c) + "\0wrong"))
    s.say("AUTH LOGIN")
    s.say(b64(FORGERY.format(c=c)))
    s.say(b64("wrong"))
    s.say(f"MAIL FROM:<a{c}b@example.org> SMTPUTF8")
    s.say(f"RCPT TO:<x{c}y@example.org>")
    s.say(f"X{c}Y {FORGERY.format(c=c)}")
    s.say("QUIT")
    s.close()


def pop3_session(port: int, c: str) -> None:
    s = Line(port)
    s.say("AUTH PLAIN " + b64("\0" + FORGERY.format(c=c) + "\0wrong"))
    s.close()
    s = Line(port)
    s.say(f"USER x{c}y")
    s.say("PASS wrong")
    s.close()
    s = Line(port)
    s.say(f"APOP x{c}y 0123456789abcdef0123456789abcdef")
    s.close()


def test_client_text_forges_no_log_line_and_bans_no_other_address(make_hub) -> None:
    # (no delay before a refusal: loopback logins are never throttled,
    # but each failure's answer waits)
    hub = make_hub(sections={"smtp": {"auth_failure_delay": 0},
                             "pop3": {"auth_failure_delay": 0}})
    for c in BREAKERS:
        smtp_session(hub.smtp_port, c)
        pop3_session(hub.pop3_port, c)
    # and logins that pass, so that their lines are in the file too
    s = Line(hub.smtp_port)
    s.say("EHLO c")
    assert s.say("AUTH PLAIN " + b64(f"\0alice@example.org\0{PASSWORD}")).startswith(b"235")
    s.close()
    s = Line(hub.pop3_port)
    s.say("USER alice@example.org")
    assert s.say(f"PASS {PASSWORD}").startswith(b"+OK")
    s.say("QUIT")
    s.close()

    def logged() -> list[str]:
        lines = hub.log_text().split("\n")
        done = sum("POP3 logout alice@example.org" in line for line in lines)
        return lines if done else []

    lines = wait_for(logged, what="the last session's line")
    assert isinstance(lines, list)
    failed = [line for line in lines if "authentication failed for" in line
              or ") refused: AUTH" in line]
    assert len(failed) >= 3 * len(BREAKERS), failed
    prefregex, failregexes = documented_filter()
    banned = []
    # (twistd's log starts after what the hub's start wrote to standard
    # error, in the same file; the last line is the empty one after the
    # final newline)
    first = next(i for i, line in enumerate(lines) if STAMP.match(line))
    for line in lines[first:-1]:
        # a line of its own has the time stamp; a continuation the tab
        assert STAMP.match(line) or line.startswith("\t"), repr(line)
        assert not UNSAFE.search(line), repr(line)
        assert PASSWORD not in line and b64(PASSWORD) not in line, line
        for seen in (STAMP.sub(lambda m: " " + m.group()[25:], line, count=1),
                     f"mail.example.org twistd[4321]: {line}"):
            m = as_python(prefregex).search(seen)
            for regex in map(as_python, failregexes) if m else ():
                hit = regex.search(m.group("content"))
                if hit:
                    banned.append(hit.group("host"))
                    break
    assert banned and set(banned) == {"127.0.0.1"}, set(banned)
