"""The sizes a POP3 client is told, at the edges where a login starts
measuring them on the worker threads (more than ``INLINE_SIZES`` messages,
more than ``INLINE_OCTETS`` octets), with clients written elsewhere:
Python's poplib and Twisted's ``AdvancedPOP3Client`` (in a process of its
own, as it needs a reactor).  RFC 1939: ``STAT`` and ``LIST`` give the
octets ``RETR`` sends before dot-stuffing; for a client without UTF8 that
is the downgraded copy (RFC 6857), for one with UTF8 the stored message
(RFC 6856)."""

from __future__ import annotations

import json
import poplib
import smtplib
import threading

import pytest
from pop3util import drop, twisted_pop3_client

from txmailhub.pop3 import protocol

PW = "pw-for-sizes"
BOXES = ("m64", "m65", "k64", "k64p1", "long")
USERS = {f"{name}@example.org": PW for name in BOXES}

UTF8_MESSAGE = ("From: Jörg <jörg@example.net>\r\nTo: {to}\r\n"
                "Subject: Grüße Nr. {n}\r\n\r\nKörper\r\n.leading dot\r\n").format


def deliver_utf8(hub, to: str, n: int, extra: str = "") -> None:
    """Through the hub's own SMTP, as SMTPUTF8 mail (RFC 6531)."""
    message = UTF8_MESSAGE(to=to, n=n).replace("\r\n\r\n", "\r\n" + extra + "\r\n", 1)
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
        s.sendmail("jörg@example.net", [to], message.encode(),
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])


def crlf_octets(hub, address: str) -> int:
    """The mailbox's size as the Maildir names give it (``,W=``)."""
    return sum(int(p.name.split(",W=")[1].split(":")[0].split(",")[0])
               for p in hub.message_files(address))


def ascii_message(n: int) -> bytes:
    return b"From: a@example.net\nSubject: plain %d\n\nbody\n..two dots\n" % n


def fill_to(hub, address: str, octets: int) -> None:
    """One ASCII message that brings the mailbox to exactly ``octets``."""
    rest = octets - crlf_octets(hub, address)
    head = b"Subject: filler\n\n"
    # LF-stored: each LF is two octets on the wire; the last line is the body
    body = rest - len(head) - head.count(b"\n") - 2
    assert body > 0
    drop(hub.maildir(address), head + b"y" * body + b"\n")
    assert crlf_octets(hub, address) == octets


@pytest.fixture(autouse=True)
def _long_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """poplib refuses lines over 2,048 octets; the filler has one of 64 KiB."""
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)


@pytest.fixture
def boxes(make_hub):
    hub = make_hub(users=USERS)
    for count, name in ((64, "m64"), (65, "m65")):
        address = f"{name}@example.org"
        deliver_utf8(hub, address, 0)
        for n in range(count - 1):
            drop(hub.maildir(address), ascii_message(n))
    for octets, name in ((protocol.INLINE_OCTETS, "k64"), (protocol.INLINE_OCTETS + 1, "k64p1")):
        address = f"{name}@example.org"
        deliver_utf8(hub, address, 0)
        fill_to(hub, address, octets)
    # a job that takes its turns: long UTF-8 header sections to downgrade
    folded = "\r\n ".join(["ü" * 400] * 2)
    fields = "".join(f"X-Long-{k}: {folded}\r\n" for k in range(40))
    for n in range(12):
        deliver_utf8(hub, "long@example.org", n, fields)
    return hub


def poplib_view(hub, name: str, utf8: bool = False) -> dict:
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=60)
    try:
        if utf8:
            p.utf8()
        p.user(f"{name}@example.org")
        p.pass_(PW)
        count, total = p.stat()
        listed = [int(line.split()[1]) for line in p.list()[1]]
        sent, claimed = [], []
        for n in range(1, count + 1):
            first, _lines, octets = p.retr(n)  # octets: unstuffed, with CRLFs
            sent.append(octets)
            claimed.append(int(first.split()[1]))
        uidl = p.uidl()[1]
        p.rset()
    finally:
        p.quit()
    return {"stat": (count, total), "list": listed, "sent": sent, "claimed": claimed,
            "uidl": uidl}


@pytest.mark.parametrize("name", ["m64", "m65", "k64", "k64p1"])
def test_sizes_at_the_inline_boundaries_with_poplib(boxes, name):
    plain = poplib_view(boxes, name)
    assert plain["list"] == plain["sent"] == plain["claimed"]
    assert plain["stat"] == (len(plain["sent"]), sum(plain["sent"]))
    # the downgraded copy of the UTF-8 message is longer than as stored
    stored = crlf_octets(boxes, f"{name}@example.org")
    assert plain["stat"][1] > stored
    utf8 = poplib_view(boxes, name, utf8=True)
    assert utf8["list"] == utf8["sent"] == utf8["claimed"]
    assert utf8["stat"] == (len(utf8["sent"]), stored)  # RFC 6856: as stored
    assert utf8["uidl"] == plain["uidl"]


# the client's main() for pop3util.twisted_pop3_client
TWISTED_CLIENT = r"""@defer.inlineCallbacks
def main(port, user, password):
    c = yield protocol.ClientCreator(reactor, AdvancedPOP3Client).connectTCP("127.0.0.1", port)
    c.MAX_LENGTH = 1 << 20  # the filler is one long line
    # USER/PASS by hand: login() takes APOP where the greeting has a timestamp
    yield c.user(user.encode())
    yield c.password(password.encode())
    sizes = yield c.listSize()
    sent = []
    for i in range(len(sizes)):
        lines = yield c.retrieve(i)  # unstuffed lines without their CRLF
        sent.append(sum(len(line) + 2 for line in lines))
    stat = yield c.stat()
    yield c.quit()
    print(json.dumps({"list": sizes, "sent": sent, "stat": list(stat)}))
"""


@pytest.mark.parametrize("name", ["m65", "k64p1"])
def test_sizes_with_twisted_pop3_client(boxes, name):
    result = twisted_pop3_client(TWISTED_CLIENT, boxes.pop3_port, f"{name}@example.org", PW,
                                 timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["list"] == got["sent"]
    assert got["stat"] == [len(got["sent"]), sum(got["sent"])]


def test_a_login_during_another_sessions_long_job_sees_right_sizes(boxes):
    """The size jobs take turns: a login whose mailbox is measured while
    another session's long job goes on gets its own sizes, and so does
    the other session."""
    expected = {name: poplib_view(boxes, name) for name in ("long", "k64p1", "m65")}
    seen: dict[str, dict] = {}
    errors: list[BaseException] = []

    def view(name: str) -> None:
        try:
            seen[name] = poplib_view(boxes, name)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=view, args=(name,)) for name in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for name, want in expected.items():
        got = seen[name]
        assert got["list"] == got["sent"] == want["sent"], name
        assert got["stat"] == want["stat"], name
