"""POP3 over loopback against a running hub, with Python's poplib and raw sockets."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import poplib
import re
import subprocess
import sys
import time

import pytest
from pop3util import RawPOP3, drop

from txmailhub.pop3 import replies as R

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
BOB, BOB_PW = "bob@example.org", "bob-secret"

MSG1 = b"From: a@example.net\nTo: alice@example.org\nSubject: one\n\nfirst body\n.dotted\n"
MSG2 = (b"From: b@example.net\nTo: alice@example.org\nSubject: two\n\n"
        + b"".join(b"line %d\n" % i for i in range(20)))
MSG3 = b"Subject: three\n\nno final newline"


def crlf(data: bytes) -> bytes:
    out = data.replace(b"\n", b"\r\n")
    return out if out.endswith(b"\r\n") else out + b"\r\n"


@pytest.fixture
def filled(hub):
    box = hub.maildir(ALICE)
    drop(box, MSG1)
    drop(box, MSG2)
    drop(box, MSG3, sizes=False)  # a plain name, as another program writes it
    return hub


def pop(hub, user=ALICE, pw=ALICE_PW) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    p.user(user)
    p.pass_(pw)
    return p


def pop_when_free(hub, timeout: float = 60.0) -> poplib.POP3:
    """Log in, retrying while the server has not yet noticed a closed session
    (as long as a loaded machine may take to tell it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return pop(hub)
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0] or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def retrieved(p: poplib.POP3, n: int) -> bytes:
    _, lines, _octets = p.retr(n)
    return b"".join(x + b"\r\n" for x in lines)


def test_retr_flags_the_message_seen_at_quit_not_before(filled):
    """A retrieved message stays in new/ for the rest of the session and
    moves to cur/ with S in the UPDATE state, on a worker thread, before
    the +OK to QUIT (docs/pop3.rst "Seen flag")."""
    p = pop(filled)
    retrieved(p, 1)
    p.noop()  # the RETR is answered, and the session goes on
    files = filled.message_files(ALICE)
    assert len(files) == 3 and all(f.parent.name == "new" for f in files)
    assert p.quit().startswith(b"+OK")
    # the answer came after the rename: no waiting here
    files = filled.message_files(ALICE)
    assert sorted(f.parent.name for f in files) == ["cur", "new", "new"]
    [seen] = [f for f in files if f.parent.name == "cur"]
    assert seen.name.endswith(":2,S") and seen.read_bytes() == MSG1


def test_user_pass_stat_list_retr_sizes_are_exact(filled):
    p = pop(filled)
    count, total = p.stat()
    assert count == 3
    _, listing, _ = p.list()
    sizes = [int(x.split()[1]) for x in listing]
    assert sum(sizes) == total
    bodies = [retrieved(p, i) for i in (1, 2, 3)]
    assert sorted(bodies) == sorted(crlf(m) for m in (MSG1, MSG2, MSG3))
    assert [len(b) for b in bodies] == sizes  # LIST octets == what RETR sends
    assert p.quit().startswith(b"+OK")
    files = filled.message_files(ALICE)
    assert len(files) == 3 and all(f.parent.name == "cur" and f.name.endswith("S") for f in files)


def test_capa_exactly(hub):
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    assert re.fullmatch(rb"\+OK POP3 server mail\.example\.org ready <\d+\.\d+\.\w+@mail"
                        rb"\.example\.org>", p.getwelcome())
    assert p.capa() == {
        "TOP": [], "UIDL": [], "USER": [], "SASL": ["PLAIN"], "RESP-CODES": [],
        "AUTH-RESP-CODE": [], "PIPELINING": [], "EXPIRE": ["NEVER"], "UTF8": ["USER"],
        "LANG": [],
        "IMPLEMENTATION": ["txmailhub"],
    }
    p.quit()


def test_top_and_uidl_stable_across_sessions(filled):
    p = pop(filled)
    _, lines, _ = p.top(2, 3)
    assert lines == [b"From: b@example.net", b"To: alice@example.org", b"Subject: two", b"",
                     b"line 0", b"line 1", b"line 2"]
    _, uidl, _ = p.uidl()
    assert p.uidl(1).split()[1:] == uidl[0].split()
    p.dele(1)
    p.quit()
    p = pop(filled)
    _, uidl2, _ = p.uidl()
    old = {x.split()[1] for x in uidl}
    new = {x.split()[1] for x in uidl2}
    assert len(new) == 2 and new < old
    assert all(re.fullmatch(rb"[\x21-\x7e]{1,70}", u) for u in new)
    p.quit()


def test_dele_rset_quit_semantics(filled):
    p = pop(filled)
    p.dele(1)
    p.dele(2)
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(1)
    assert p.stat()[0] == 1
    p.rset()
    assert p.stat()[0] == 3
    p.dele(3)
    resp = p.quit()
    assert resp == R.bye_updated(2).to_bytes().rstrip()
    assert len(filled.message_files(ALICE)) == 2


def test_dropped_connection_deletes_nothing_and_new_mail_waits(filled):
    p = pop(filled)
    p.dele(1)
    p.dele(2)
    p.close()  # no QUIT: just drop the connection
    p2 = pop_when_free(filled)  # the lock is released once the server sees the close
    assert p2.stat()[0] == 3
    # new mail waits for the next session: numbers stay stable
    drop(filled.maildir(ALICE), b"Subject: late\n\nlate\n")
    assert p2.stat()[0] == 3
    p2.quit()
    p3 = pop(filled)
    assert p3.stat()[0] == 4
    p3.quit()


def test_apop(filled):
    p = poplib.POP3("127.0.0.1", filled.pop3_port, timeout=10)
    assert p.apop(ALICE, ALICE_PW).startswith(b"+OK")
    assert p.stat()[0] == 3
    p.quit()
    # by hand: the digest covers the timestamp of this connection's greeting
    c = RawPOP3(filled.pop3_port)
    ts = re.search(rb"<[^>]+>", c.line()).group(0)
    digest = hashlib.md5(ts + ALICE_PW.encode()).hexdigest().encode()
    c.send(b"APOP alice " + digest + b"\r\nSTAT\r\nQUIT\r\n")
    assert c.line().startswith(b"+OK Logged in")
    assert c.line().startswith(b"+OK 3 ")
    c.close()
    p = poplib.POP3("127.0.0.1", filled.pop3_port, timeout=10)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.apop(BOB, BOB_PW)  # bob has no APOP secret
    p.close()


def test_auth_plain_both_forms_and_cancel(filled):
    p = poplib.POP3("127.0.0.1", filled.pop3_port, timeout=10)
    token = base64.b64encode(f"\0{ALICE}\0{ALICE_PW}".encode()).decode()
    assert p._shortcmd("AUTH PLAIN").startswith(b"+ ")
    with pytest.raises(poplib.error_proto, match="cancel"):
        p._shortcmd("*")
    assert p._shortcmd("AUTH PLAIN " + token).startswith(b"+OK")
    assert p.stat()[0] == 3
    p.quit()
    p = poplib.POP3("127.0.0.1", filled.pop3_port, timeout=10)
    p._shortcmd("AUTH PLAIN")
    assert p._shortcmd(token).startswith(b"+OK")
    p.quit()


def test_bad_password_is_auth_and_closes_after_limit(make_hub):
    hub = make_hub(sections={"pop3": {"auth_failure_delay": 0.2, "max_auth_failures": 3}})
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=20)
    for _ in range(2):
        p.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
            p.pass_("wrong")
    p.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"Too many"):
        p.pass_("wrong")
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        p.noop()


def test_a_guesser_that_hangs_up_after_pass_frees_its_slot_at_once(make_hub):
    # With one connection allowed and a failure delay of ten minutes: the
    # slot of a client that hung up right after PASS is free again long
    # before its answer would have been sent (it was held until then).
    # The waits below are caps for a loaded machine, far below the delay.
    hub = make_hub(sections={"pop3": {"auth_failure_delay": 600.0, "max_connections": 1}})

    def greeted(within: float) -> RawPOP3 | None:
        started = time.monotonic()
        while time.monotonic() - started < within:
            client = RawPOP3(hub.pop3_port)
            try:
                if client.line().startswith(b"+OK"):
                    return client
            except OSError:
                # refused and cut without its -ERR (limits.REFUSALS_WAITING
                # refused connections were closing): no greeting either
                pass
            client.sock.close()
            time.sleep(0.05)
        return None

    guesser = greeted(60)  # the start-up probe's slot may not be free yet
    assert guesser is not None
    guesser.send(f"USER {ALICE}\r\nPASS wrong\r\n".encode())
    assert guesser.line().startswith(b"+OK")  # the USER's answer
    guesser.sock.close()
    after = greeted(60)  # the wrong PASS would be answered after 600 s
    assert after is not None
    after.sock.close()


def assert_locked_until_quit(holder, port):
    """While ``holder`` is logged in, a login on ``port`` gets [IN-USE];
    after holder's QUIT the same connection logs in."""
    p2 = poplib.POP3("127.0.0.1", port, timeout=10)
    p2.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        p2.pass_(ALICE_PW)
    holder.quit()
    p2.user(ALICE)
    assert p2.pass_(ALICE_PW).startswith(b"+OK")
    p2.quit()


def test_in_use_across_two_connections(filled):
    assert_locked_until_quit(pop(filled), filled.pop3_port)


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_in_use_across_two_processes(filled):
    """The mailbox lock is the kernel's (flock on the Maildir's lock file):
    another process that holds it keeps a login out, and its crash leaves
    no stale lock."""
    from txmailhub.store.maildir import LOCK_NAME

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(filled.maildir(ALICE) / LOCK_NAME)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        p2 = poplib.POP3("127.0.0.1", filled.pop3_port, timeout=10)
        p2.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            p2.pass_(ALICE_PW)
        p2.quit()
    finally:
        holder.kill()
        holder.wait(10)
    assert pop_when_free(filled).stat()[0] == 3


def test_seed_exchange_verbatim(hub):
    body = (b"Return-Path: <hollingd>\n"
            b"Date: Mon, 20 Mar 2000 13:49:54 -0500\n"
            b"From: Dave Hollinger <hollingd@monte.cs.rpi.edu>\n"
            b"To: joe@monte.cs.rpi.edu\nStatus: O\n\nblah\n")
    drop(hub.maildir(ALICE), body)
    size = len(crlf(body))
    c = RawPOP3(hub.pop3_port)
    assert c.line().startswith(b"+OK")
    c.send(b"user alice\r\n")
    assert c.line().startswith(b"+OK")
    c.send(b"pass alice-secret\r\n")
    assert c.line().startswith(b"+OK")
    c.send(b"stat\r\n")
    assert c.line() == b"+OK 1 %d" % size
    c.send(b"list\r\n")
    assert c.multiline().split(b"\r\n", 1)[1] == b"1 %d\r\n.\r\n" % size
    c.send(b"retr 1\r\n")
    assert c.multiline() == b"+OK %d octets\r\n" % size + crlf(body) + b".\r\n"
    c.send(b"quit\r\n")
    assert c.line().startswith(b"+OK")
    c.close()


def test_pipelined_batch_and_bad_input_over_the_wire(filled):
    c = RawPOP3(filled.pop3_port)
    c.line()
    c.send(b"CAPA\r\nUSER alice\r\nPASS alice-secret\r\nSTAT\r\nLIST 9\r\nRETR x\r\n"
           b"FOO\r\n" + b"NOOP " + b"a" * 300 + b"\r\nTOP 1 0\r\nNOOP\r\n")
    assert c.multiline().startswith(b"+OK Capability")
    assert c.line() == R.USER_ACCEPTED.to_bytes().rstrip()
    assert c.line().startswith(b"+OK Logged in, 3 messages")
    assert c.line().startswith(b"+OK 3 ")
    assert c.line() == R.NO_SUCH_MESSAGE.to_bytes().rstrip()
    assert c.line() == R.INVALID_NUMBER.to_bytes().rstrip()
    assert c.line() == R.UNKNOWN_COMMAND.to_bytes().rstrip()
    assert c.line() == R.LINE_TOO_LONG.to_bytes().rstrip()
    assert c.multiline().startswith(b"+OK Top")
    assert c.line() == b"+OK"
    c.send(b"X" * 1_000_000 + b"\r\nNOOP\r\n")  # a huge line: refused, session goes on
    assert c.line() == R.LINE_TOO_LONG.to_bytes().rstrip()
    assert c.line() == b"+OK"
    c.send(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")
    assert c.closed()
    assert "Traceback" not in filled.log_text()


# -- RFC 6856: UTF-8 mode ------------------------------------------------------

JOERG, JOERG_PW = "j\u00f6rg@example.org", "j\u00f6rgs passw\u00f6rt"
INTL = ("From: J\u00f6rg <j\u00f6rg@example.org>\r\nTo: j\u00f6rg@example.org\r\n"
        "Subject: Gr\u00fc\u00dfe\r\n\r\nHallo \u00e9t\u00e9\r\n").encode()


def test_utf8_mode_with_poplib_after_an_smtputf8_delivery(make_hub):
    import smtplib

    hub = make_hub(users={JOERG: JOERG_PW})
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.sendmail("\u00e9mile@remote.test", [JOERG], INTL,
                          mail_options=["SMTPUTF8"]) == {}
    # a client that has not issued UTF8 gets it downgraded (RFC 6857)
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    assert p.capa()["UTF8"] == ["USER"]
    p.user("jo\u0308rg")  # UTF-8 on the wire (poplib's encoding), decomposed
    p.pass_(JOERG_PW)
    count, octets = p.stat()
    assert count == 1
    _, listing, _ = p.list()
    status, lines, _ = p.retr(1)
    data = b"".join(x + b"\r\n" for x in lines)
    # LIST, STAT and RETR's status line count what RETR sent (RFC 1939)
    assert int(listing[0].split()[1]) == octets == len(data)
    assert status == b"+OK %d octets" % len(data)
    header, _, body = data.partition(b"\r\n\r\n")
    assert header.isascii() and body == "Hallo \u00e9t\u00e9\r\n".encode()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert str(msg["subject"]) == "Gr\u00fc\u00dfe"
    # the sender's local part is not ASCII: an empty group named by the original
    assert msg["from"].groups[0].display_name == "J\u00f6rg <j\u00f6rg@example.org>"
    assert str(msg["return-path"]).startswith("<\u00e9mile@remote.test>")
    assert "j\u00f6rg" not in msg["received"]  # its for clause is gone
    with pytest.raises(poplib.error_proto, match="not valid in the TRANSACTION"):
        p.utf8()
    p.quit()
    # one that has issued UTF8 gets it as it was stored (after the hub's trace fields)
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    assert p.utf8() == R.UTF8_ENABLED.to_bytes().rstrip()
    p.user(JOERG)
    p.pass_(JOERG_PW)
    _, listing, _ = p.list()
    _, lines, _ = p.retr(1)
    data = b"".join(x + b"\r\n" for x in lines)
    assert data.endswith(INTL)
    assert data.startswith("Return-Path: <\u00e9mile@remote.test>\r\n".encode())
    assert int(listing[0].split()[1]) == len(data)  # LIST counts what RETR sends
    assert p.quit().startswith(b"+OK")


MIXED_NAME = "Gr\u00fc\u00dfe \u65e5\u672c.txt"


def test_mime_part_headers_downgraded_for_poplib_without_utf8(make_hub):
    """RFC 6857 for the header sections of MIME parts: a UTF-8 file name
    after an attachment longer than a chunk (the message is streamed)
    reaches a client without UTF8 as 7-bit RFC 2231, and reads back."""
    import smtplib

    attachment = base64.encodebytes(bytes(range(256)) * 400)  # 102,400 octets, 138 KB in base64
    message = (
        "From: J\u00f6rg <j\u00f6rg@example.org>\r\nTo: j\u00f6rg@example.org\r\n"
        "Subject: Anhang\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"=_part\"\r\n\r\n"
        "--=_part\r\nContent-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + attachment.replace(b"\n", b"\r\n") + (
        f"--=_part\r\nContent-Type: text/plain; charset=utf-8; name=\"{MIXED_NAME}\"\r\n"
        f"Content-Disposition: attachment; filename=\"{MIXED_NAME}\"\r\n\r\n"
        "Hallo\r\n--=_part--\r\n"
    ).encode()
    hub = make_hub(users={JOERG: JOERG_PW})
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.sendmail("\u00e9mile@remote.test", [JOERG], message,
                          mail_options=["SMTPUTF8"]) == {}
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    p.user(JOERG)
    p.pass_(JOERG_PW)
    _, listing, _ = p.list()
    status, lines, _ = p.retr(1)
    data = b"".join(x + b"\r\n" for x in lines)
    assert int(listing[0].split()[1]) == len(data)
    assert status == b"+OK %d octets" % len(data)
    assert data.isascii()  # 7-bit, body parts' header sections included
    msg = email.message_from_bytes(data, policy=email.policy.default)
    parts = list(msg.walk())
    assert [p.get_content_type() for p in parts] == [
        "multipart/mixed", "application/octet-stream", "text/plain"]
    assert parts[1].get_content() == bytes(range(256)) * 400
    assert parts[2].get_filename() == MIXED_NAME
    assert parts[2].get_param("name") == MIXED_NAME
    assert parts[2].get_content_charset() == "utf-8"
    assert p.quit().startswith(b"+OK")


def test_lang_and_utf8_over_the_wire(hub):
    raw = RawPOP3(hub.pop3_port)
    raw.line()
    raw.send(b"LANG\r\n")
    assert raw.multiline() == R.LANG_FOLLOWS.to_bytes() + b"en English\r\n.\r\n"
    for command, reply in ((b"LANG en-GB", R.language_selected("en", "English")),
                           (b"LANG fr", R.LANG_UNKNOWN), (b"UTF8", R.UTF8_ENABLED)):
        raw.send(command + b"\r\n")
        assert raw.line() + b"\r\n" == reply.to_bytes(), command
    raw.close()


def test_capa_between_user_and_pass_keeps_the_user(filled):
    # RFC 2449 5: CAPA has no restrictions; the USER name waits for PASS
    p = poplib.POP3("127.0.0.1", filled.pop3_port, timeout=10)
    p.user(ALICE)
    assert "USER" in p.capa()
    assert p.pass_(ALICE_PW).startswith(b"+OK")
    assert p.stat()[0] == 3
    assert p.quit().startswith(b"+OK")


def test_users_added_and_deleted_while_the_hub_runs(filled):
    """``mailhub user`` needs no restart (README): a user added while the
    hub runs logs in at once; one deleted keeps a session already open up
    to its QUIT, deletions included, and the next login is refused."""
    done = filled.mailhub("user", "add", "carol", "--password-stdin", input="carol-secret-9\n")
    assert done.returncode == 0, done.stderr
    carol = pop(filled, "carol@example.org", "carol-secret-9")
    assert carol.stat() == (0, 0)
    carol.quit()

    p = pop(filled)
    done = filled.mailhub("user", "del", ALICE)
    assert done.returncode == 0, done.stderr
    assert p.stat()[0] == 3
    assert p.dele(1).startswith(b"+OK")
    assert p.quit().startswith(b"+OK")
    assert len(filled.message_files(ALICE)) == 2  # the Maildir stays, less the deleted one
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        pop(filled)


def test_a_session_open_when_the_hub_stops_gets_err_and_a_clean_close(filled) -> None:
    # the stop cut POP3 sessions with a reset (ConnectionResetError in the
    # client, as for a network failure) where SMTP sessions got their 421:
    # now -ERR [SYS/TEMP] and a FIN, and nothing is deleted
    import signal

    p = pop(filled)
    assert p.stat()[0] == 3
    p.dele(1)  # marked only: the stop is no QUIT
    try:
        assert filled.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert p.file.readline() == b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n"
        assert p.file.readline() == b""  # a clean end of file, no reset
    finally:
        p.sock.close()
    assert len(filled.message_files(ALICE)) == 3


def test_an_auth_line_past_4096_octets_is_logged_as_smtp_logs_one(hub):
    # an AUTH PLAIN line whose initial response made it longer than the
    # 4096 octets the hub keeps of a line was dropped unread with no log
    # line at all (a shorter one was logged, and SMTP logs one at any
    # length): the fail2ban filter of docs/deployment.rst saw nothing
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    for size in (300, 5000, 70000):
        with pytest.raises(poplib.error_proto, match=r"-ERR Line too long"):
            p._shortcmd("AUTH PLAIN " + "A" * size)
    p.user(ALICE)  # the session goes on
    assert p.pass_(ALICE_PW).startswith(b"+OK")
    p.quit()
    line = "malformed authentication response from 127.0.0.1 (PLAIN)"
    deadline = time.monotonic() + 60
    while hub.log_text().count(line) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.log_text().count(line) == 3, hub.log_text()


class _SmallWindowPOP3(poplib.POP3):
    """poplib with a small receive buffer, so a large answer the client has
    not read yet waits in the hub, not in the kernel's buffers."""

    def _create_socket(self, timeout):
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.settimeout(timeout)
        s.connect((self.host, self.port))
        return s


def test_a_message_being_sent_when_the_hub_stops_is_finished_then_err(hub) -> None:
    # the stop cut a session in the middle of a RETR with a reset: the
    # client lost the message (ConnectionResetError).  Now it gets the
    # whole message, then -ERR [SYS/TEMP] and a clean end of file; the
    # message stays (no QUIT)
    import signal

    big = b"Subject: big\n\n" + b"".join(b"line %07d of a long message\n" % i
                                          for i in range(280_000))  # 8 MiB
    drop(hub.maildir(ALICE), big)
    p = _SmallWindowPOP3("127.0.0.1", hub.pop3_port, timeout=10)
    try:
        p.user(ALICE)
        p.pass_(ALICE_PW)
        p._putcmd("RETR 1")
        assert p.file.readline().startswith(b"+OK ")
        first = p.file.readline()  # the hub is streaming the rest
        hub.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while "Received SIGTERM" not in hub.log_text():
            assert time.monotonic() < deadline, hub.log_text()
            time.sleep(0.02)
        body = [first]
        while True:
            line = p.file.readline()
            assert line, "the connection ended in the middle of the message"
            if line == b".\r\n":
                break
            body.append(line[1:] if line.startswith(b"..") else line)
        assert b"".join(body) == crlf(big)
        assert p.file.readline() == R.SHUTTING_DOWN.to_bytes()
        assert p.file.readline() == b""  # a clean end of file, no reset
    finally:
        p.sock.close()
    assert hub.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert hub.messages(ALICE) == [big]
    assert "cut as the hub stops" not in hub.log_text()


def test_a_client_still_sending_commands_when_the_hub_stops_reads_the_line_and_the_end(
        filled) -> None:
    # commands keep coming after the stop's -ERR: the hub shuts down its
    # side and reads on (LINGER_OCTETS) instead of closing with octets
    # unread, which Linux answers with a reset (a broken pipe or
    # ECONNRESET in the client, which could lose the line with it)
    import signal
    import socket

    s = socket.create_connection(("127.0.0.1", filled.pop3_port), timeout=10)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(f"USER {ALICE}\r\nPASS {ALICE_PW}\r\n".encode())
        assert f.readline().startswith(b"+OK")
        assert f.readline().startswith(b"+OK")
        filled.proc.send_signal(signal.SIGTERM)
        for _ in range(8):  # 8 KiB more as the hub stops (BrokenPipeError: the bug)
            s.sendall(b"NOOP\r\n" * 170)
            time.sleep(0.01)
        lines = f.readlines()  # ConnectionResetError: the bug
        assert lines and lines[-1] == R.SHUTTING_DOWN.to_bytes()
        assert set(lines[:-1]) <= {b"+OK\r\n"}  # NOOPs read before the stop
    finally:
        s.close()
    assert filled.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert len(filled.messages(ALICE)) == 3
