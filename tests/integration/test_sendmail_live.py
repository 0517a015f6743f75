"""The sendmail command against a real hub: a message piped into
``mailhub sendmail`` or the ``txmailhub-sendmail`` console script (as a
subprocess, as cron or PHP run it) arrives in the Maildir; a refused
recipient is exit 67 with nothing delivered; a hub that is down is exit
75, and stderr says the message was not sent."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_toml

#: what the console script runs (setup.cfg: txmailhub-sendmail)
CONSOLE_SCRIPT = [sys.executable, "-c",
                  "import sys; from txmailhub.sendmail import main; sys.exit(main())"]


def sendmail(config: Path, *args: str, message: bytes,
             console_script: bool = False) -> subprocess.CompletedProcess:
    if console_script:
        argv = [*CONSOLE_SCRIPT, "-C", str(config), *args]
    else:
        argv = [sys.executable, "-m", "txmailhub", "--config", str(config), "sendmail", *args]
    return subprocess.run(argv, input=message, capture_output=True, timeout=60)


def unix_hub(make_hub, folder: Path, tcp: bool = False, **options):
    """A hub whose MX listener is a UNIX socket only (its path is in the
    config, unlike a tcp:0 port), or with ``tcp`` a fixed loopback port;
    ``options`` are ``make_hub``'s (``users=``)."""
    hub = make_hub(start=False, fixed_ports=tcp, **options)
    sock = folder / "smtp.sock"
    if not tcp:
        hub.doc["smtp"]["listen"] = [f"unix:{sock}"]
        hub.ports.pop("smtp")
        write_toml(hub.config_path, hub.doc)
    hub.start()
    # the socket's file is made by its bind, before the listen: a connect
    # in between is refused, so the wait is for one that is taken
    deadline = time.monotonic() + 60
    while not tcp and not _answers(sock):
        assert time.monotonic() < deadline, hub.log_text()
        time.sleep(0.05)
    return hub


def _answers(path: Path) -> bool:
    """Whether a connection to the UNIX socket ``path`` is taken."""
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:  # not there yet, or not listening yet
            return False
    return True


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_a_piped_message_arrives_with_date_message_id_and_from(make_hub, tmp_path: Path):
    hub = unix_hub(make_hub, tmp_path)
    # (with the DSN options, which the hub checks: a bad parameter is a 501)
    r = sendmail(hub.config_path, "-oi", "-F", "Cron Daemon", "-f", "alice", "-N", "never",
                 "-R", "hdrs", "-V", "cron+1=x", "bob",
                 message=b"Subject: cron output\n\nline one\n.\nline three\n")
    assert r.returncode == 0, r.stderr
    (data,) = hub.messages("bob@example.org")
    msg = parsed(data)
    assert msg["Subject"] == "cron output"
    assert msg["From"] == "Cron Daemon <alice@example.org>"
    assert msg["Date"] and msg["Message-ID"].endswith("@mail.example.org>")
    # the lone dot (with -oi) is text; the Maildir keeps lines with LF, so
    # a CR left over from the wire's CRLF (or a CRLF made twice) would show
    assert data.endswith(b"\n\nline one\n.\nline three\n")
    assert b"\r" not in data
    assert "from <alice@example.org> to bob@example.org" in hub.log_text()


def test_the_console_script_over_tcp_with_t_removes_bcc(make_hub, tmp_path: Path):
    hub = unix_hub(make_hub, tmp_path, tcp=True)  # [smtp] listen = tcp:PORT:interface=...
    message = (b"From: Alice <alice@example.org>\nTo: bob@example.org\n"
               b"Bcc: carol@example.net\nSubject: t\n\nbody\n.\nafter the dot\n")
    r = sendmail(hub.config_path, "-t", message=message, console_script=True)
    assert r.returncode == 0, r.stderr
    for rcpt in ("bob@example.org", "carol@example.net"):
        (data,) = hub.messages(rcpt)
        msg = parsed(data)
        assert msg["Bcc"] is None and b"carol" not in data.split(b"\n\n")[0], data
        assert msg["From"] == "Alice <alice@example.org>"
        assert data.endswith(b"\n\nbody\n")  # without -i the dot ended it
    assert hub.messages("alice@example.org") == []


def test_an_unknown_local_user_is_67_and_nobody_gets_the_message(make_hub, tmp_path: Path):
    hub = unix_hub(make_hub, tmp_path)
    r = sendmail(hub.config_path, "bob", "nosuchuser",
                 message=b"Subject: x\n\nbody\n")
    assert r.returncode == 67, r
    err = r.stderr.decode()
    assert "<nosuchuser@example.org>: 550 5.1.1" in err and "NOT sent" in err, err
    assert hub.messages("bob@example.org") == []  # all or nothing: no duplicate on a resend


def test_a_hub_that_is_down_is_75_and_says_not_sent(make_hub, tmp_path: Path):
    hub = unix_hub(make_hub, tmp_path, tcp=True)
    hub.stop()
    r = sendmail(hub.config_path, "bob", message=b"Subject: x\n\nbody\n")
    assert r.returncode == 75, r
    err = r.stderr.decode()
    assert "cannot reach the hub" in err and f"127.0.0.1:{hub.smtp_port}" in err, err
    assert "NOT sent" in err
    # the UNIX socket listener's config, with no hub on it, is the same
    r = sendmail(hub.config_path, "-C", str(_unix_config(hub, tmp_path)), "bob",
                 message=b"x\n", console_script=True)
    assert r.returncode == 75 and b"NOT sent" in r.stderr, r


def _unix_config(hub, folder: Path) -> Path:
    doc = {**hub.doc, "smtp": {"listen": [f"unix:{folder / 'gone.sock'}"]}}
    path = folder / "unix.toml"
    write_toml(path, doc)
    return path


def test_utf8_header_and_8bit_body_arrive_intact(make_hub, tmp_path: Path):
    """A UTF-8 header field needs SMTPUTF8, an 8-bit body BODY=8BITMIME:
    the command asks for both, and the bytes arrive as written."""
    hub = unix_hub(make_hub, tmp_path)
    body = "Subject: Grüße\nTo: bob\n\nÄrger über Öl\n".encode()
    r = sendmail(hub.config_path, "-t", "-F", "Jörg", message=body)
    assert r.returncode == 0, r.stderr
    (data,) = hub.messages("bob@example.org")
    assert data.endswith("\n\nÄrger über Öl\n".encode()) and "Subject: Grüße\n".encode() in data
    assert parsed(data)["From"] == "Jörg <root@example.org>".replace(
        "root", __import__("pwd").getpwuid(__import__("os").getuid()).pw_name)


def sendmail_to_a_fake_hub(hub, serve, *args: str, message: bytes):
    """``sendmail`` with the config's ``[smtp] listen`` pointed at a one-shot
    server on 127.0.0.1: ``serve(conn)`` plays the hub for one connection."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            serve(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    hub.doc["smtp"]["listen"] = [f"tcp:{server.getsockname()[1]}:interface=127.0.0.1"]
    write_toml(hub.config_path, hub.doc)
    try:
        return sendmail(hub.config_path, *args, message=message)
    finally:
        thread.join(10)
        server.close()


def test_a_greeting_that_is_no_220_is_not_sent(make_hub, tmp_path: Path):
    """A 421 greeting (the hub's connection limit) is for later, 75; a 554
    is a refusal, 69; neither is taken for an accepted message."""
    hub = make_hub(start=False)
    for greeting, status in ((b"421 4.7.0 Too many connections\r\n", 75),
                             (b"554 5.3.2 No service here\r\n", 69)):

        def greet(conn, greeting=greeting) -> None:
            conn.sendall(greeting)
            conn.recv(1024)  # whatever comes (QUIT), then close

        r = sendmail_to_a_fake_hub(hub, greet, "bob", message=b"x\n")
        assert r.returncode == status, r
        assert greeting.decode().strip() in r.stderr.decode() and b"NOT sent" in r.stderr


def test_a_big_message_streams_through_with_flat_memory(make_hub, tmp_path: Path):
    """20 MiB on stdin, piped: the command's peak traced allocation stays
    under 4 MiB (it held the whole message, several times, before), and
    the message arrives whole."""
    hub = unix_hub(make_hub, tmp_path)
    line = b"0123456789" * 7 + b"abcde\n"  # 76 octets, as base64 lines are
    body = line * (20 * (1 << 20) // len(line))
    # (the modules imported first -- the config check of [smtp] listen
    # imports Twisted's endpoints -- for tracemalloc counts what an import
    # allocates)
    script = ("import email.headerregistry, smtplib, sys, tempfile, tracemalloc, txmailhub.cli; "
              "import twisted.internet.endpoints, twisted.internet.testing; "
              "from txmailhub.sendmail import main; "
              "tracemalloc.start(); status = main(); "
              "print('peak', tracemalloc.get_traced_memory()[1], file=sys.stderr); "
              "sys.exit(status)")
    r = subprocess.run([sys.executable, "-c", script, "-C", str(hub.config_path), "-oi", "bob"],
                       input=b"Subject: big\n\n" + body, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    peak = int(r.stderr.decode().split("peak ")[1])
    assert peak < 4 * (1 << 20), peak
    (data,) = hub.messages("bob@example.org")
    assert data.endswith(b"\n\n" + body)


def test_the_received_field_names_the_local_user(make_hub, tmp_path: Path):
    import os
    import pwd

    hub = unix_hub(make_hub, tmp_path)
    r = sendmail(hub.config_path, "bob", message=b"Subject: who\n\nbody\n")
    assert r.returncode == 0, r.stderr
    (data,) = hub.messages("bob@example.org")
    header = data.split(b"\n\n")[0].decode()
    received = [f for f in parsed(data).get_all("Received")]
    # the hub's own on top (a local connection), ours right below it
    assert len(received) == 2 and "txmailhub sendmail" not in received[0], header
    login = pwd.getpwuid(os.getuid()).pw_name
    assert received[1].startswith(f"by mail.example.org (txmailhub sendmail, from userid "
                                  f"{os.getuid()} {login});"), received[1]


def test_a_connection_lost_after_the_final_dot_is_75_and_may_have_been_sent(
        make_hub, tmp_path: Path):
    """RFC 1047's case: the whole message went out, the reply never came.
    The hub may have it: the command must not say it was NOT sent."""

    def serve(conn) -> None:
        f = conn.makefile("rb")
        conn.sendall(b"220 test ESMTP\r\n")
        while line := f.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-test\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                while f.readline() != b".\r\n":
                    pass
                return  # the dot came: close without a reply
            else:
                conn.sendall(b"250 ok\r\n")

    r = sendmail_to_a_fake_hub(make_hub(start=False), serve, "bob",
                               message=b"Subject: x\n\nbody\n")
    assert r.returncode == 75, r
    err = r.stderr.decode()
    assert "MAY have been sent" in err and "NOT sent" not in err, err


def test_mailq_and_newaliases_by_name(make_hub, tmp_path: Path):
    hub = unix_hub(make_hub, tmp_path)
    for name, text in (("mailq", "Mail queue is empty\n"), ("newaliases", "nothing to rebuild")):
        r = subprocess.run(
            [sys.executable, "-c", f"import sys; sys.argv[0] = '/usr/bin/{name}'; "
             "from txmailhub.sendmail import main; sys.exit(main())", "-C",
             str(hub.config_path)], capture_output=True, timeout=60)
        assert r.returncode == 0 and text in r.stdout.decode() and not r.stderr, r
    listed = subprocess.run([sys.executable, "-m", "txmailhub", "--config", str(hub.config_path),
                             "queue", "list"], capture_output=True, timeout=60)
    # an empty queue: no line from queue list to a pipe, Postfix's line from mailq
    assert (listed.returncode, listed.stdout) == (0, b"")
    r = sendmail(hub.config_path, "-bp", message=b"")
    assert (r.returncode, r.stdout) == (0, b"Mail queue is empty\n"), r


def test_bare_names_in_the_header_arrive_qualified_as_the_envelope_reads_them(
        make_hub, tmp_path: Path):
    """``mail -s hi bob`` (and cron) write bare names in To, Cc and From:
    they arrive as the addresses the envelope made of them, every other
    field as it was written."""
    hub = unix_hub(make_hub, tmp_path)
    message = (b"From: root\nTo: bob\nCc: team: Alice <alice>;\nSubject: To: bob\n"
               b"X-Note: alice\n\nTo: bob\n")
    r = sendmail(hub.config_path, "-t", "-oi", message=message)
    assert r.returncode == 0, r.stderr
    for rcpt in ("bob@example.org", "alice@example.org"):
        (data,) = hub.messages(rcpt)
        head, body = data.split(b"\n\n", 1)
        assert (b"\nFrom: root@example.org\nTo: bob@example.org\n"
                b"Cc: team: Alice <alice@example.org>;\nSubject: To: bob\n"
                b"X-Note: alice\n") in head, head
        assert body == b"To: bob\n"


def test_a_login_with_a_space_sends_from_its_quoted_local_part(
        make_hub, tmp_path: Path, monkeypatch):
    """A login no unquoted local part can hold is the sender as a
    Quoted-string (RFC 5321 4.1.2), which the hub takes."""
    import io

    from txmailhub import sendmail as command

    hub = unix_hub(make_hub, tmp_path)
    monkeypatch.setattr(command, "_login", lambda: ("joe smith", "Joe Smith"))
    monkeypatch.delenv("NAME", raising=False)
    err = io.StringIO()
    status = command.run(["bob"], str(hub.config_path), "sendmail",
                         io.BytesIO(b"Subject: odd login\n\nbody\n"), err)
    assert status == 0, err.getvalue()
    (data,) = hub.messages("bob@example.org")
    assert parsed(data)["From"] == 'Joe Smith <"joe smith"@example.org>'
    assert 'from <"joe smith"@example.org> to bob@example.org' in hub.log_text()


def test_quoted_local_parts_the_user_types_reach_the_hub_as_it_reads_them(
        make_hub, tmp_path: Path):
    """``-f '"joe smith"@example.org'``, a recipient argument and, with
    ``-t``, To and Cc fields with quoted local parts: the hub takes each
    in the form the command sends, delivers to a local user whose local
    part needs its quotes, and queues for a remote one."""
    hub = unix_hub(make_hub, tmp_path,
                   users={"bob@example.org": "pw", '"ann@home"@example.org': "pw"})
    message = (b'To: bob, "odd name"@remote.example\nCc: Ann <"ann@home">\n'
               b"Subject: quoted\n\nbody\n")
    r = sendmail(hub.config_path, "-t", "-f", '"joe smith"@example.org',
                 '"x y"@remote.example', message=message)
    assert r.returncode == 0, r.stderr
    for rcpt in ("bob@example.org", '"ann@home"@example.org'):
        (data,) = hub.messages(rcpt)
        head = data.split(b"\n\n", 1)[0]
        assert (b'\nTo: bob@example.org, "odd name"@remote.example\n'
                b'Cc: Ann <"ann@home"@example.org>\n') in head, head
        assert parsed(data)["Return-Path"] == '<"joe smith"@example.org>'
    log = hub.log_text()
    for rcpt in ('"x y"@remote.example', "bob@example.org", '"odd name"@remote.example',
                 '"ann@home"@example.org'):
        assert rcpt in log, log
    assert 'from <"joe smith"@example.org>' in log


def test_a_bounced_message_gets_a_resent_block_and_a_message_sent_a_sender(make_hub,
                                                                          tmp_path: Path):
    """mutt's bounce without its own Resent- fields (``-t``, Resent-To):
    RFC 5322 3.6.6's Resent-From and Resent-Date are added, and no Sender
    in the original's fields (alice sent it on, not the original); sent
    itself, a From of two mailboxes gets the Sender 3.6.2 requires."""
    hub = unix_hub(make_hub, tmp_path)
    message = (b"From: carol@example.net, alice@example.org\nTo: carol@example.net\n"
               b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@x>\n"
               b"Resent-To: bob\n\nbody\n")
    r = sendmail(hub.config_path, "-t", "-oi", "-f", "alice", "-F", "Alice", message=message)
    assert r.returncode == 0, r.stderr
    (data,) = hub.messages("bob@example.org")
    msg = parsed(data)
    assert msg["Resent-From"] == "Alice <alice@example.org>" and msg["Resent-Date"]
    assert msg["Resent-Message-ID"].endswith("@mail.example.org>")
    assert msg["Sender"] is None
    assert b"\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@x>\n" in data, data
    assert hub.messages("carol@example.net") == []  # Resent-To, not To, with -t
    r = sendmail(hub.config_path, "-t", "-oi", "-f", "alice",
                 message=message.replace(b"Resent-To: bob", b"Cc: bob"))
    assert r.returncode == 0, r.stderr
    (data,) = hub.messages("carol@example.net")
    assert parsed(data)["Sender"] == "alice@example.org"


def test_more_recipients_than_max_recipients_all_get_the_message(make_hub, tmp_path: Path):
    """The hub's ``452 4.5.3`` past ``[smtp] max_recipients`` sends the
    rest in another transaction (RFC 5321 4.5.3.1.10): it was exit 75 at
    every try.  All or none still holds: an unknown user past the limit
    stops the message for everyone."""
    hub = unix_hub(make_hub, tmp_path, sections={"smtp": {"max_recipients": 2}})
    everyone = ("bob", "alice", "carol@example.net")
    r = sendmail(hub.config_path, "-oi", *everyone, message=b"Subject: x\n\nbody\n")
    assert r.returncode == 0, r.stderr
    for rcpt in ("bob@example.org", "alice@example.org", "carol@example.net"):
        (data,) = hub.messages(rcpt)
        assert data.endswith(b"\n\nbody\n")
        hub.message_files(rcpt)[0].unlink()
    r = sendmail(hub.config_path, "-oi", *everyone, "nosuchuser", message=b"x\n")
    assert r.returncode == 67 and b"<nosuchuser@example.org>: 550 5.1.1" in r.stderr, r
    assert all(hub.messages(a) == [] for a in ("bob@example.org", "carol@example.net"))


def test_one_mailbox_spelled_twice_in_two_transactions_gets_one_copy(make_hub, tmp_path: Path):
    """The hub merges the spellings of one mailbox within a transaction;
    past ``max_recipients`` they may land in different ones, where only
    the command can merge them."""
    hub = unix_hub(make_hub, tmp_path, sections={"smtp": {"max_recipients": 2}})
    r = sendmail(hub.config_path, "-oi", "Bob", "alice", "bob@EXAMPLE.ORG", "carol@example.net",
                 "CAROL@example.NET.", "alice", message=b"Subject: x\n\nbody\n")
    assert r.returncode == 0, r.stderr
    for rcpt in ("bob@example.org", "alice@example.org", "carol@example.net"):
        assert len(hub.messages(rcpt)) == 1, rcpt



def test_aliases_that_lead_to_one_mailbox_in_a_long_list_give_it_one_copy(
        make_hub, tmp_path: Path):
    """The hub merges the recipients an alias leads to with the others of
    a transaction only; the command reads the aliases file the hub reads
    and keeps those that share a mailbox in one transaction (a ``-t``
    with a long To: list gets one copy per mailbox, as in one)."""
    aliases = tmp_path / "aliases"
    aliases.write_text("staff: bob\nteam: Carol@example.net, dave@elsewhere.test\n")
    hub = unix_hub(make_hub, tmp_path, sections={"smtp": {"max_recipients": 2},
                                                 "aliases": {"file": str(aliases)}})
    message = (b"To: bob, alice, carol@example.net, staff, team\n"
               b"Subject: x\n\nbody\n")
    r = sendmail(hub.config_path, "-t", "-oi", message=message)
    assert r.returncode == 0, r.stderr
    for rcpt in ("bob@example.org", "alice@example.org", "carol@example.net"):
        assert len(hub.messages(rcpt)) == 1, rcpt


def test_more_batches_than_the_junk_limit_still_all_get_the_message(make_hub, tmp_path: Path):
    """Each transaction the command asks for is ended with RSET, which the
    hub counts towards ``max_junk_commands`` and then ``max_errors``: the
    command starts another session before the count would close one."""
    hub = unix_hub(make_hub, tmp_path, sections={"smtp": {
        "max_recipients": 1, "max_junk_commands": 2, "max_errors": 1}})
    everyone = ("bob@example.org", "alice@example.org", "carol@example.net",
                "postmaster@example.org")  # four transactions: two sessions
    r = sendmail(hub.config_path, "-oi", *everyone, message=b"Subject: x\n\nbody\n")
    assert r.returncode == 0, r.stderr
    for rcpt in everyone:
        (data,) = hub.messages(rcpt)
        assert data.endswith(b"\n\nbody\n")
    # a 421 reply, not the digits inside a message id (the pid in it)
    assert not re.search(r"(?<![\w.])421 4\.\d", hub.log_text())
