"""``sendmail -bs``: SMTP on stdin and stdout, mediated to the hub.

The session logic against a scripted hub (deterministic: the client's
whole input is a buffer, as a pipelining client may write it), then the
real command as a subprocess against a real hub on 127.0.0.1, driven
both pipelined and in lock-step."""

from __future__ import annotations

import hashlib
import io
import os
import smtplib
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import read_empty

from txmailhub.errors import RemoteProtocolError
from txmailhub.sendmail import parse_args
from txmailhub.sendmail_bs import Session, format_reply
from txmailhub.smtp._data import DotReader
from txmailhub.smtp._parse import parse_command

TRACE = b"Received: by mail.example.org (txmailhub sendmail, from userid 1000 joe);\r\n\tnow\r\n"
EHLO = b"hub.example.org\nPIPELINING\nCHUNKING\nSIZE 1000\nSTARTTLS\n8BITMIME"


class ScriptedHub:
    """The hub side: a reply per command, the data read by the hub's own
    DATA reader (kept as a digest and a size), and ways to fail."""

    def __init__(self, replies: dict[bytes, tuple[int, bytes]] | None = None,
                 drop: str | None = None) -> None:
        self.replies = replies or {}
        self.drop = drop  # "reply": no reply to a command; "data": send fails mid-data
        self.commands: list[bytes] = []
        self.reader: DotReader | None = None
        self.stored = hashlib.sha256()
        self.stored_size = 0
        self.first: bytes = b""  # the start of the last message stored
        self.messages = 0
        self.pending: list[tuple[int, bytes]] = []
        self.closed = False
        self.largest_send = 0
        self.wire = hashlib.sha256()  # the data as sent, dot-stuffed

    def _store(self, data: bytes) -> None:
        if self.stored_size == 0 or len(self.first) < 200:
            self.first += data
        self.stored.update(data)
        self.stored_size += len(data)

    def send(self, data: bytes) -> None:
        assert not self.closed
        self.largest_send = max(self.largest_send, len(data))
        if self.reader is not None:
            if self.drop == "data":
                raise smtplib.SMTPServerDisconnected("Server not connected")
            self.wire.update(data)
            rest = self.reader.feed(data)
            if rest is not None:
                assert rest == b""
                self.reader = None
                self.messages += 1
                self.pending.append((250, b"2.0.0 Ok: queued"))
            return
        assert data.endswith(b"\r\n") and data.count(b"\n") == 1, data
        assert not self.pending, "a command sent before the last reply was read"
        command = data[:-2]
        self.commands.append(command)
        try:
            verb = parse_command(command)[0].encode()  # as the real hub reads it
        except RemoteProtocolError as e:  # a NUL, a bare CR: the hub's 500
            self.pending.append((e.reply.code, e.reply.text().encode()[4:]))
            return
        if verb == b"DATA":
            self.reader = DotReader(self._store, 10**10)
            self.first = b""
            self.stored_size = 0
        default = {b"EHLO": (250, EHLO), b"DATA": (354, b"End data with <CR><LF>.<CR><LF>"),
                   b"QUIT": (221, b"2.0.0 Bye")}.get(verb, (250, b"2.0.0 Ok"))
        self.pending.append(self.replies.get(verb, default))

    def getreply(self) -> tuple[int, bytes]:
        if self.drop == "reply" or not self.pending:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return self.pending.pop(0)

    def close(self) -> None:
        self.closed = True


def session(stdin: bytes | io.BufferedIOBase, hub: ScriptedHub) -> tuple[int, bytes, Session]:
    out = io.BytesIO()
    source = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
    s = Session(source, out, hub, lambda: TRACE, "mail.example.org")  # type: ignore[arg-type]
    status = s.run((220, b"hub.example.org ESMTP"))
    return status, out.getvalue(), s


def codes(out: bytes) -> list[bytes]:
    """The code of each reply (its last line), in order."""
    assert out.endswith(b"\r\n") and b"\n" not in out.replace(b"\r\n", b"")
    return [line[:3] for line in out.split(b"\r\n")[:-1] if line[3:4] != b"-"]


MESSAGE = b"Subject: hi\n\n..a stuffed dot\nline two\r\n"
PIPELINED = (b"EHLO alpine\r\nMAIL FROM:<joe@example.org>\r\nRCPT TO:<bob@example.org>\n"
             b"DATA\r\n" + MESSAGE + b".\r\n")


def test_a_pipelined_session_is_answered_in_order_and_the_message_gets_the_trace() -> None:
    hub = ScriptedHub()
    status, out, _ = session(PIPELINED + b"QUIT\r\n", hub)
    assert status == 0
    assert codes(out) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    assert out.startswith(b"220 hub.example.org ESMTP\r\n250-hub.example.org\r\n")
    assert hub.commands == [b"EHLO alpine", b"MAIL FROM:<joe@example.org>",
                            b"RCPT TO:<bob@example.org>", b"DATA", b"QUIT"]
    # stored as the hub stores (LF): the trace on top, the dot unstuffed once
    assert hub.first == (TRACE + b"Subject: hi\r\n\r\n.a stuffed dot\r\nline two\r\n"
                         ).replace(b"\r\n", b"\n")
    assert hub.closed


def test_the_ehlo_reply_loses_chunking_and_starttls_and_bdat_is_refused_here() -> None:
    hub = ScriptedHub()
    status, out, _ = session(b"EHLO a\r\nBDAT 10 LAST\r\nSTARTTLS\r\nQUIT\r\n", hub)
    assert status == 0
    assert out.split(b"\r\n")[1:6] == [b"250-hub.example.org", b"250-PIPELINING",
                                       b"250-SIZE %d" % (1000 - len(TRACE)), b"250 8BITMIME",
                                       b"502 5.5.1 BDAT is not offered here: use DATA"]
    assert b"502 5.5.1 STARTTLS" in out
    assert hub.commands == [b"EHLO a", b"QUIT"]


def test_a_verb_after_blanks_is_read_as_the_hub_reads_it() -> None:
    # the hub skips blanks and tabs before the verb: " DATA" starts the
    # data there, so it must here too (not wait for a reply to each line)
    hub = ScriptedHub()
    stdin = (b" EHLO alpine\r\n\tBDAT 10 LAST\r\nMAIL FROM:<joe@example.org>\r\n"
             b"RCPT TO:<bob@example.org>\r\n \tDATA\r\n" + MESSAGE + b".\r\nQUIT\r\n")
    status, out, _ = session(stdin, hub)
    assert status == 0 and hub.messages == 1
    assert codes(out) == [b"220", b"250", b"502", b"250", b"250", b"354", b"250", b"221"]
    assert b"CHUNKING" not in out and b"STARTTLS" not in out
    assert hub.first.startswith(TRACE.replace(b"\r\n", b"\n") + b"Subject: hi\n")
    assert not any(b"BDAT" in c for c in hub.commands)


def test_a_tab_after_the_verb_ends_it_as_the_hub_reads_it() -> None:
    # the hub ends a verb at a tab as at a space: "BDAT<TAB>10 LAST" went
    # to it as an unknown verb here, and the hub then waited for a chunk;
    # "EHLO<TAB>alpine"'s reply was passed on unfiltered (CHUNKING, STARTTLS)
    hub = ScriptedHub()
    stdin = (b"EHLO\talpine\r\nBDAT\t10 LAST\r\nSTARTTLS\t\r\nMAIL\tFROM:<joe@example.org>\r\n"
             b"RCPT TO:<bob@example.org>\r\nDATA\t\r\n" + MESSAGE + b".\r\nQUIT\r\n")
    status, out, _ = session(stdin, hub)
    assert status == 0 and hub.messages == 1
    assert codes(out) == [b"220", b"250", b"502", b"502", b"250", b"250", b"354", b"250",
                          b"221"]
    assert b"CHUNKING" not in out and b"250-STARTTLS" not in out
    assert not any(b"BDAT" in c or b"STARTTLS" in c for c in hub.commands)


def test_a_cr_after_bdat_ends_the_verb_as_the_hub_reads_a_chunk_size_after_it() -> None:
    # the hub refuses a line with a bare CR, but reads a chunk after one
    # that names a size all the same ("BDAT\r10 LAST": its 10 octets are
    # drained first, smtp._transfer's _unreadable_line), so that the chunk
    # never runs as commands.  Passed on from here, the hub waited for
    # octets this command never sends, and the session hung until the
    # hub's idle timeout
    from tests.test_smtp_server import Driver

    hub_engine = Driver()
    hub_engine.send("EHLO c\r\n")
    assert hub_engine.send("BDAT\r10 LAST\r\n") == []  # waiting for the chunk
    hub = ScriptedHub()
    stdin = (b"EHLO alpine\r\nBDAT\r10 LAST\r\n \tbdat\r0\r\nNOOP\r\nQUIT\r\n")
    status, out, _ = session(stdin, hub)
    assert status == 0
    assert codes(out) == [b"220", b"250", b"502", b"502", b"250", b"221"]
    assert not any(b"BDAT" in c.upper() for c in hub.commands)


@pytest.mark.parametrize("blank", [b"\x0b", b"\x0c", b"\x1f", b"\xc2\xa0", b"\xe3\x80\x80"])
def test_bdat_joined_to_its_size_by_another_blank_is_refused_here(blank: bytes) -> None:
    # the hub answers "BDAT<FF>3" 500 (no verb of its), but reads the 3
    # octets after it first, as a client that splits at any white space
    # sends them: passed on from here, the hub waited for octets this
    # command never sends, and the session hung until its idle timeout
    from tests.test_smtp_server import Driver

    hub_engine = Driver()
    hub_engine.send("EHLO c\r\n")
    assert hub_engine.send(b"BDAT" + blank + b"3 LAST\r\n") == []  # waiting for the chunk
    hub = ScriptedHub()
    stdin = b"EHLO alpine\r\nBDAT" + blank + b"3 LAST\r\nbdat" + blank + b"0\r\nNOOP\r\nQUIT\r\n"
    status, out, _ = session(stdin, hub)
    assert status == 0
    assert codes(out) == [b"220", b"250", b"502", b"502", b"250", b"221"]
    assert not any(b"BDAT" in c.upper() for c in hub.commands)


def test_a_bare_cr_before_the_line_end_goes_to_the_hub_as_it_reads_it() -> None:
    # only the line end (CRLF or LF) is taken off: "NOOP\r\r\n" (line ends
    # converted twice) lost every CR here and was a 250 through -bs where
    # the hub, spoken to directly, answers it 500 (a bare CR)
    from tests.test_smtp_server import Driver

    hub_engine = Driver()
    hub_engine.send("EHLO c\r\n")
    assert hub_engine.codes("NOOP\r\r\n") == ["500"]
    hub = ScriptedHub()
    status, out, _ = session(b"EHLO alpine\r\nNOOP\r\r\nNOOP\nQUIT\r\n", hub)
    assert status == 0
    assert codes(out) == [b"220", b"250", b"500", b"250", b"221"]
    assert hub.commands[1:3] == [b"NOOP\r", b"NOOP"]


def test_a_quit_the_hub_refuses_does_not_end_the_session() -> None:
    # the hub answers "QUIT now" 501 (QUIT takes no parameter) and stays:
    # the session goes on until the hub's 221
    hub = ScriptedHub(replies={b"QUIT": (501, b"5.5.4 Syntax error: no parameters here")})
    status, out, _ = session(b"QUIT now\r\nNOOP\r\n", hub)
    assert status == 0
    assert codes(out) == [b"220", b"501", b"250"]
    assert hub.commands == [b"QUIT now", b"NOOP", b"QUIT"] and hub.closed


def test_two_messages_and_rset_in_one_session() -> None:
    hub = ScriptedHub()
    stdin = (PIPELINED + b"RSET\r\nMAIL FROM:<a@example.org>\r\nRSET\r\n"
             + PIPELINED.split(b"\r\n", 1)[1] + b"QUIT\r\n")
    status, out, _ = session(stdin, hub)
    assert status == 0 and hub.messages == 2
    assert codes(out).count(b"354") == 2
    assert hub.commands.count(b"RSET") == 2


def test_the_end_of_stdin_between_commands_ends_the_session_with_quit() -> None:
    hub = ScriptedHub()
    status, out, _ = session(PIPELINED, hub)
    assert status == 0 and hub.messages == 1
    assert hub.commands[-1] == b"QUIT" and hub.closed
    assert not out.endswith(b"221 2.0.0 Bye\r\n")  # the client is gone: no reply for it


def test_the_end_of_stdin_inside_the_data_sends_no_final_dot() -> None:
    hub = ScriptedHub()
    status, _, s = session(PIPELINED[:-3], hub)
    assert status == 65 and hub.messages == 0 and hub.closed
    assert hub.reader is not None  # the hub is still inside the data: it keeps nothing
    assert s.why and "NOT sent" in s.why


def test_a_421_from_the_hub_is_passed_on_and_ends_the_session() -> None:
    hub = ScriptedHub(replies={b"MAIL": (421, b"4.3.2 Shutting down")})
    status, out, _ = session(PIPELINED, hub)
    assert status == 75
    assert out.endswith(b"250 8BITMIME\r\n421 4.3.2 Shutting down\r\n")
    assert hub.commands == [b"EHLO alpine", b"MAIL FROM:<joe@example.org>"] and hub.closed


def test_a_hub_that_goes_away_gets_the_client_a_421() -> None:
    hub = ScriptedHub(drop="reply")
    status, out, s = session(PIPELINED, hub)
    assert status == 75
    assert out == b"220 hub.example.org ESMTP\r\n421 4.4.2 mail.example.org mail hub " \
                  b"connection lost\r\n"
    assert s.why and "Connection unexpectedly closed" in s.why


def test_a_hub_lost_inside_the_data_is_told_after_the_clients_final_dot() -> None:
    # the client writes the whole data before it reads a reply: it is
    # read to its final dot, then answered
    hub = ScriptedHub(drop="data")
    status, out, _ = session(PIPELINED + b"QUIT\r\n", hub)
    assert status == 75
    assert codes(out) == [b"220", b"250", b"250", b"250", b"354", b"421"]


def test_a_command_line_too_long_is_refused_and_the_session_goes_on() -> None:
    hub = ScriptedHub()
    status, out, _ = session(b"NOOP " + b"x" * 20_000 + b"\r\nNOOP\r\nQUIT\r\n", hub)
    assert status == 0
    assert codes(out) == [b"220", b"500", b"250", b"221"]
    assert hub.commands == [b"NOOP", b"QUIT"]


def test_a_closed_stdout_ends_the_session() -> None:
    hub = ScriptedHub()
    out = io.BytesIO()
    out.close()
    s = Session(io.BytesIO(PIPELINED), out, hub, lambda: TRACE, "h")  # type: ignore[arg-type]
    assert s.run((220, b"hi")) == 74 and hub.closed


class _Unreadable(io.RawIOBase):
    """A standard input that fails to read after ``good`` octets, as one
    opened for writing does (``sendmail -bs 0>file``: EBADF), or a
    terminal that hung up (EIO)."""

    def __init__(self, good: bytes, error: OSError) -> None:
        self.good, self.error = io.BytesIO(good), error

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        line = self.good.readline(size)
        if not line:
            raise self.error
        return line


@pytest.mark.parametrize("where", ["commands", "data"])
def test_a_standard_input_that_cannot_be_read_is_74_not_a_traceback(where: str) -> None:
    good = b"EHLO alpine\r\n" if where == "commands" else PIPELINED[:-3]
    hub = ScriptedHub()
    status, _, s = session(_Unreadable(good, OSError(9, "Bad file descriptor")), hub)
    assert status == 74 and hub.closed and hub.messages == 0
    assert s.why is not None and "cannot read standard input: Bad file descriptor" in s.why
    assert where == "commands" or "NOT sent" in s.why


@pytest.mark.parametrize(("closed", "named"), [("stdout", "output"), ("stdin", "input")])
def test_a_descriptor_closed_from_the_start_is_exit_74(
        closed: str, named: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Python has None in sys for a descriptor closed when it started
    from txmailhub.sendmail import run

    monkeypatch.setattr(sys, closed, None)
    err = io.StringIO()
    assert run(["-bs"], str(tmp_path / "none.toml"), "sendmail", err=err) == 74
    assert f"standard {named} is closed" in err.getvalue()


@pytest.mark.parametrize(("code", "text", "wire"), [
    (250, b"a\nb\nc", b"250-a\r\n250-b\r\n250 c\r\n"),
    (250, b"", b"250\r\n"),
    (354, b"go on", b"354 go on\r\n"),
])
def test_replies_are_written_as_smtp_lines(code: int, text: bytes, wire: bytes) -> None:
    assert format_reply(code, text) == wire


def test_a_big_message_passes_in_bounded_memory() -> None:
    MiB = 1 << 20
    block = b".dot\n" + b"y" * 1018 + b"\n"  # 1 KiB of LF lines
    wire = hashlib.sha256(TRACE)
    hub = ScriptedHub()
    with tempfile.TemporaryFile() as stdin:
        stdin.write(b"MAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        stdin.write(b"z" * 200_000 + b"\n")  # a line longer than a read
        wire.update(b"z" * 200_000 + b"\r\n")
        for _ in range(30 * 1024):
            stdin.write(b"." + block)
            wire.update(b"." + block.replace(b"\n", b"\r\n"))
        stdin.write(b".\r\nQUIT\r\n")
        stdin.seek(0)
        tracemalloc.start()
        try:
            status, out, _ = session(stdin, hub)  # type: ignore[arg-type]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert status == 0 and codes(out) == [b"220", b"250", b"250", b"354", b"250", b"221"]
    assert peak < 4 * MiB, f"{peak} octets at the peak"
    assert hub.largest_send <= 65536 + 2
    wire.update(b".\r\n")
    assert hub.wire.digest() == wire.digest()  # as it came, but each LF a CRLF


def test_a_cr_lf_cut_by_a_read_stays_one_line_end() -> None:
    hub = ScriptedHub()
    line = b"x" * (65536 - 1) + b"\r\n"  # the read ends after the CR
    status, _, _ = session(b"DATA\r\n" + line + b".\r\nQUIT\r\n", hub)
    assert status == 0 and hub.messages == 1
    assert hub.wire.digest() == hashlib.sha256(TRACE + line + b".\r\n").digest()


@pytest.mark.parametrize("argv", [
    ["-bs"], ["-bs", "-odb", "-oem"], ["-bs", "-oi", "-f", "joe", "-F", "Joe", "-t"],
    ["-bs", "-v"],
])
def test_bs_is_a_mode_and_the_other_options_do_not_break_it(argv: list[str]) -> None:
    assert parse_args(argv).mode == "s"


@pytest.mark.parametrize("argv", [["-bs", "bob"], ["-bs", "--", "bob"], ["-bs", "-v", "bob"]])
def test_bs_with_a_recipient_is_a_usage_error_as_in_postfix(
        argv: list[str], tmp_path: Path) -> None:
    # the client names the recipients with RCPT TO; Postfix refuses this
    # ("stand-alone mode requires no recipient", EX_USAGE), and no
    # greeting may reach the client on standard output
    from txmailhub.sendmail import EX_USAGE, UsageError, run

    with pytest.raises(UsageError):
        parse_args(argv)
    stdin, stdout, err = io.BytesIO(b"QUIT\r\n"), io.BytesIO(), io.StringIO()
    assert run(argv, str(tmp_path / "none.toml"), "sendmail", stdin, err,
               stdout=stdout) == EX_USAGE
    assert stdout.getvalue() == b"" and stdin.tell() == 0
    assert err.getvalue().splitlines()[0] == (
        "sendmail: bob: -bs (SMTP on standard input and output) takes no recipient: the "
        "client names them with RCPT TO")


# --- the real command against a real hub ---------------------------------


def command(config: Path, *argv: str) -> subprocess.Popen[bytes]:
    """The console script's code (``main``, named ``sendmail``), as Alpine runs it."""
    code = "import sys; from txmailhub.sendmail import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code, "-C", str(config), *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command (if a failed assertion left it running), wait for it
    and close its pipes, so that no process or descriptor outlives the test."""
    proc.kill()
    proc.wait()
    proc.stdin.close()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]


def sendmail_config(folder: Path, port: int) -> Path:
    path = folder / "sendmail.toml"
    path.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                    f'[smtp]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n')
    return path


def read_reply(stdout: io.BufferedReader) -> bytes:
    """One reply, all its lines, as read from the command's stdout."""
    lines = b""
    while True:
        line = stdout.readline()
        assert line.endswith(b"\r\n"), (lines, line)
        lines += line
        if line[3:4] != b"-":
            return lines


def test_live_lock_step_two_messages_and_rset(make_hub: Callable[..., object]) -> None:
    hub = make_hub()
    proc = command(sendmail_config(hub.folder, hub.smtp_port), "-bs", "-odb", "-oem")
    assert proc.stdin and proc.stdout

    def say(line: bytes) -> bytes:
        proc.stdin.write(line + b"\n")  # LF only, as a Unix client may write
        proc.stdin.flush()
        return read_reply(proc.stdout)

    try:
        assert read_reply(proc.stdout).startswith(b"220 mail.example.org")
        ehlo = say(b"EHLO alpine.example.org")
        assert ehlo.startswith(b"250-") and b"PIPELINING" in ehlo
        assert b"CHUNKING" not in ehlo and b"STARTTLS" not in ehlo
        for n in (1, 2):
            assert say(b"MAIL FROM:<joe@example.org>").startswith(b"250")
            if n == 2:
                assert say(b"RSET").startswith(b"250")
                assert say(b"RCPT TO:<bob@example.org>").startswith(b"503")  # no MAIL now
                assert say(b"MAIL FROM:<joe@example.org>").startswith(b"250")
            assert say(b"RCPT TO:<bob@example.org>").startswith(b"250")
            assert say(b"DATA").startswith(b"354")
            proc.stdin.write(b"Subject: lock-step %d\n\n..dotted\n" % n)
            assert say(b".").startswith(b"250")
        assert say(b"QUIT").startswith(b"221")
        assert proc.wait(timeout=30) == 0
    finally:
        reap(proc)
    messages = sorted(hub.messages("bob@example.org"))
    assert len(messages) == 2
    for message in messages:
        fields = message.split(b"\n\n", 1)[0]
        # the hub's own Received field, then ours right below it
        received = [f for f in fields.split(b"\n") if f.startswith(b"Received: ")]
        assert received[0].startswith(b"Received: from alpine.example.org ([127.0.0.1])")
        assert received[1].startswith(
            b"Received: by mail.example.org (txmailhub sendmail, from userid %d " % os.getuid())
        assert message.endswith(b"\n\n.dotted\n")


def test_live_pipelined_session_ending_at_stdin_eof(make_hub: Callable[..., object]) -> None:
    hub = make_hub()
    proc = command(sendmail_config(hub.folder, hub.smtp_port), "-bs", "-oi", "-f", "x", "-t")
    stdin = (b"EHLO a\r\nMAIL FROM:<joe@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
             b"RCPT TO:<alice@example.org>\r\nDATA\r\nSubject: piped\r\n\r\nhello\r\n.\r\n")
    out, err = proc.communicate(stdin, timeout=60)
    assert proc.returncode == 0, err
    assert codes(out) == [b"220", b"250", b"250", b"250", b"250", b"354", b"250"]
    for who in ("bob@example.org", "alice@example.org"):
        (message,) = hub.messages(who)
        assert b"(txmailhub sendmail, from userid" in message
        assert message.endswith(b"Subject: piped\n\nhello\n")


def test_live_unreachable_hub_is_421_and_75(tmp_path: Path) -> None:
    from conftest import dead_port

    # nothing listens there, and the port stays bound (not listening) until
    # the end: a port picked free and released could meanwhile become
    # another test's server, which would answer
    with dead_port() as port:
        proc = command(sendmail_config(tmp_path, port), "-bs", "-odb", "-oem")
        out, err = proc.communicate(b"EHLO a\r\n", timeout=60)
    assert proc.returncode == 75
    assert out.startswith(b"421 4.3.0 mail.example.org mail hub not available: cannot reach")
    assert out.endswith(b"\r\n") and out.count(b"\n") == 1
    assert b"cannot reach the hub" in err


def test_live_mailhub_sendmail_bs(make_hub: Callable[..., object]) -> None:
    hub = make_hub()
    config = sendmail_config(hub.folder, hub.smtp_port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "txmailhub", "--config", str(config), "sendmail", "-bs"],
        input=b"HELO a\nMAIL FROM:<>\nRCPT TO:<bob@example.org>\nDATA\nSubject: m\n\nx\n.\n"
              b"QUIT\n", capture_output=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert codes(done.stdout) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    assert len(hub.messages("bob@example.org")) == 1


def test_live_hub_stopped_mid_session_is_421_and_75(make_hub: Callable[..., object]) -> None:
    hub = make_hub()
    proc = command(sendmail_config(hub.folder, hub.smtp_port), "-bs")
    assert proc.stdin and proc.stdout
    try:
        assert read_reply(proc.stdout).startswith(b"220 ")
        proc.stdin.write(b"EHLO a\r\n")
        proc.stdin.flush()
        assert read_reply(proc.stdout).startswith(b"250-")
        hub.stop()
        proc.stdin.write(b"MAIL FROM:<joe@example.org>\r\n")
        proc.stdin.flush()
        # the hub's own 421 at its shutdown, or ours for a connection lost
        assert read_reply(proc.stdout).startswith(b"421 4.")
        assert proc.wait(timeout=30) == 75
        assert proc.stdout.read() == b""
    finally:
        reap(proc)


def test_the_size_offered_leaves_room_for_the_trace_field() -> None:
    # the command adds its Received field to each message: a client that
    # declares SIZE= within the hub's limit must not be refused with 552
    # after its data for the octets added here (RFC 1870: SIZE offers what
    # the server will take)
    hub = ScriptedHub()
    status, out, _ = session(b"EHLO a\r\nQUIT\r\n", hub)
    assert status == 0
    assert b"250-SIZE %d\r\n" % (1000 - len(TRACE)) in out
    # a SIZE without a number (no limit announced) and a limit smaller than
    # the field are passed on as they are and as 0 octets left
    for offered, shown in ((b"SIZE", b"SIZE"), (b"SIZE 10", b"SIZE 1")):
        hub = ScriptedHub({b"EHLO": (250, b"hub.example.org\n" + offered + b"\n8BITMIME")})
        _, out, _ = session(b"EHLO a\r\nQUIT\r\n", hub)
        assert b"250-" + shown + b"\r\n" in out


def test_an_auth_response_as_long_as_the_hub_takes_is_passed_on() -> None:
    # RFC 4954 4: a line of the AUTH exchange may be 12,288 octets with its
    # CRLF; the hub reads that much, so this side must not answer 500 before it
    response = b"A" * (12288 - 2)
    hub = ScriptedHub({b"AUTH": (334, b"")})
    status, out, _ = session(b"EHLO a\r\nAUTH PLAIN\r\n" + response + b"\r\nQUIT\r\n", hub)
    assert status == 0
    assert response in hub.commands
    assert b"500" not in codes(out)


# --- cases a mutation audit found untested ---------------------------------


def test_the_ehlo_reply_loses_binarymime_too() -> None:
    hub = ScriptedHub(replies={b"EHLO": (250, b"hub.example.org\nBINARYMIME\nDSN")})
    status, out, _ = session(b"EHLO a\r\nQUIT\r\n", hub)
    assert status == 0
    assert out.split(b"\r\n")[1:3] == [b"250-hub.example.org", b"250 DSN"]


def test_only_the_ehlo_reply_is_edited() -> None:
    # another reply passes whole, even with a line that starts like an
    # extension the EHLO reply loses
    hub = ScriptedHub(replies={b"HELP": (214, b"Commands:\nSTARTTLS EHLO"),
                               b"NOOP": (250, b"ok\nCHUNKING is not an extension here")})
    status, out, _ = session(b"HELP\r\nNOOP\r\nQUIT\r\n", hub)
    assert status == 0
    assert out.split(b"\r\n")[1:5] == [b"214-Commands:", b"214 STARTTLS EHLO", b"250-ok",
                                       b"250 CHUNKING is not an extension here"]


def test_a_command_line_of_the_limit_passes_and_one_octet_more_is_refused() -> None:
    from txmailhub.sendmail_bs import COMMAND_LINE

    assert COMMAND_LINE >= 512  # RFC 5321 4.5.3.1.4, CRLF included
    fits = b"NOOP " + b"x" * (COMMAND_LINE - 7)
    hub = ScriptedHub()
    status, out, _ = session(fits + b"\r\n" + fits + b"x\r\nQUIT\r\n", hub)
    assert status == 0
    assert out.split(b"\r\n")[1:3] == [b"250 2.0.0 Ok", b"500 5.5.2 Line too long"]
    assert hub.commands == [fits, b"QUIT"]


def test_stdin_ending_inside_a_command_line_ends_the_session() -> None:
    # no line end: the client is gone, and half a command is not sent
    hub = ScriptedHub()
    status, out, _ = session(b"EHLO a\r\nNOOP", hub)
    assert status == 0 and codes(out) == [b"220", b"250"]
    assert hub.commands == [b"EHLO a", b"QUIT"] and hub.closed
    assert not hub.pending  # the hub's reply to QUIT was read before closing


def test_a_refused_data_leaves_the_session_reading_commands() -> None:
    class RefusingData(ScriptedHub):
        def send(self, data: bytes) -> None:
            super().send(data)
            if data == b"DATA\r\n":
                self.reader = None  # the hub's 554: no data follows

    hub = RefusingData(replies={b"DATA": (554, b"5.5.1 No valid recipients")})
    status, out, _ = session(b"MAIL FROM:<>\r\nDATA\r\nRSET\r\nQUIT\r\n", hub)
    assert status == 0
    assert codes(out) == [b"220", b"250", b"554", b"250", b"221"]
    assert hub.commands == [b"MAIL FROM:<>", b"DATA", b"RSET", b"QUIT"]


@pytest.mark.parametrize("dot", [b".\r\n", b".\n"])
def test_an_empty_message_is_the_trace_field_alone(dot: bytes) -> None:
    hub = ScriptedHub()
    status, out, _ = session(b"DATA\r\n" + dot + b"QUIT\r\n", hub)
    assert status == 0 and hub.messages == 1
    assert codes(out) == [b"220", b"354", b"250", b"221"]
    assert hub.wire.digest() == hashlib.sha256(TRACE + b".\r\n").digest()


def test_a_dot_that_goes_on_a_long_line_after_a_read_is_not_the_end() -> None:
    # a read ends inside a line and the next starts with ".\r\n": that is
    # the end of the long line, not the final dot
    from txmailhub.sendmail_bs import DATA_PIECE

    line = b"x" * DATA_PIECE + b".\r\n"
    hub = ScriptedHub()
    status, out, _ = session(b"DATA\r\n" + line + b".\r\nQUIT\r\n", hub)
    assert status == 0 and codes(out) == [b"220", b"354", b"250", b"221"]
    assert hub.commands == [b"DATA", b"QUIT"]
    assert hub.wire.digest() == hashlib.sha256(TRACE + line + b".\r\n").digest()


def test_a_bare_cr_cut_by_a_read_goes_on_as_it_came() -> None:
    # the hub judges a bare CR (RFC 5321 2.3.8), not this command: a CR held
    # back at the end of a read goes on in front of the next
    from txmailhub.sendmail_bs import DATA_PIECE

    line = b"x" * (DATA_PIECE - 1) + b"\ry\r\n"
    hub = ScriptedHub()
    status, _, _ = session(b"DATA\r\n" + line + b".\r\nQUIT\r\n", hub)
    assert status == 0
    assert hub.wire.digest() == hashlib.sha256(TRACE + line + b".\r\n").digest()


@pytest.mark.parametrize("code", [-1, 99])
def test_a_reply_without_a_code_is_a_hub_lost(code: int) -> None:
    # smtplib gives -1 for a reply line that does not start with a number,
    # and 99 for one that starts "099"
    hub = ScriptedHub(replies={b"NOOP": (code, b"garbage")})
    status, out, s = session(b"NOOP\r\nQUIT\r\n", hub)
    assert status == 75 and hub.closed
    assert codes(out) == [b"220", b"421"]
    assert s.why == "the hub's reply had no code: b'garbage'"


def test_why_a_421_from_the_hub_ended_the_session() -> None:
    hub = ScriptedHub(replies={b"NOOP": (421, b"4.3.2 Shutting down \xff")})
    status, _, s = session(b"NOOP\r\n", hub)
    assert status == 75
    assert s.why == "the hub closed the session: 421 4.3.2 Shutting down \ufffd"


def test_why_a_closed_stdout_ended_the_session() -> None:
    hub = ScriptedHub()
    out = io.BytesIO()
    out.close()
    s = Session(io.BytesIO(b"NOOP\r\n"), out, hub, lambda: TRACE, "h")  # type: ignore[arg-type]
    assert s.run((220, b"hi")) == 74
    assert s.why == "standard output was closed"


def test_a_closed_stdout_keeps_why_the_hub_went_first() -> None:
    class ClosingAfterTheGreeting(io.BytesIO):
        def flush(self) -> None:
            super().flush()
            self.close()

    hub = ScriptedHub(drop="reply")
    s = Session(io.BytesIO(b"NOOP\r\n"), ClosingAfterTheGreeting(), hub,  # type: ignore[arg-type]
                lambda: TRACE, "h")
    assert s.run((220, b"hi")) == 74 and hub.closed
    assert s.why == "reading the hub's reply: Connection unexpectedly closed"


def test_a_hub_lost_while_sending_the_data_says_so() -> None:
    hub = ScriptedHub(drop="data")
    status, _, s = session(PIPELINED + b"QUIT\r\n", hub)
    assert status == 75
    assert s.why == "sending to the hub: Server not connected"


def test_a_hub_lost_after_the_final_dot_may_have_taken_the_message() -> None:
    class NoAnswerToTheDot(ScriptedHub):
        def getreply(self) -> tuple[int, bytes]:
            if self.messages:
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            return super().getreply()

    hub = NoAnswerToTheDot()
    status, out, s = session(PIPELINED + b"QUIT\r\n", hub)
    assert status == 75 and hub.closed
    assert codes(out) == [b"220", b"250", b"250", b"250", b"354", b"421"]
    assert s.why == ("reading the hub's reply: Connection unexpectedly closed (after the "
                     "whole message was sent: the hub MAY have taken it)")


def test_the_unavailable_greeting_is_one_line_whatever_why_holds() -> None:
    from txmailhub.sendmail_bs import unavailable

    assert unavailable("h.example", "cannot reach\n the hub:  refused") == (
        b"421 4.3.0 h.example mail hub not available: cannot reach the hub: refused\r\n")
    # a file name from an OSError may hold an undecodable octet (surrogateescape)
    assert unavailable("h", "no /etc/\udcff") == (
        b"421 4.3.0 h mail hub not available: no /etc/?\r\n")


def test_each_reply_is_flushed_before_the_next_line_is_read() -> None:
    # a lock-step client waits for the reply before it writes on: one held
    # in stdout's buffer (a pipe's is, without PYTHONUNBUFFERED) would hang
    # the session
    class Out(io.BytesIO):
        held = 0

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.held += len(data)
            return super().write(data)

        def flush(self) -> None:
            self.held = 0

    class In(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            assert out.held == 0, "a reply was not flushed before reading on"
            return super().readline(size)

    out = Out()
    hub = ScriptedHub()
    s = Session(In(PIPELINED + b"QUIT\r\n"), out, hub, lambda: TRACE, "h")  # type: ignore[arg-type]
    assert s.run((220, b"hi")) == 0
    assert codes(out.getvalue()) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]


def test_a_hub_lost_inside_the_data_is_told_by_its_first_error() -> None:
    # smtplib closes at a failed send, and every send after says only
    # "please run connect() first": the first error is the one that says why
    class LikeSmtplib(ScriptedHub):
        failed = False

        def send(self, data: bytes) -> None:
            if self.reader is not None:
                if self.failed:
                    raise smtplib.SMTPServerDisconnected("please run connect() first")
                self.failed = True
                raise OSError(32, "Broken pipe")
            super().send(data)

    hub = LikeSmtplib()
    status, out, s = session(PIPELINED + b"QUIT\r\n", hub)
    assert status == 75
    assert codes(out) == [b"220", b"250", b"250", b"250", b"354", b"421"]
    assert s.why == "sending to the hub: [Errno 32] Broken pipe"


def test_commands_and_ehlo_keywords_are_read_case_blind() -> None:
    # RFC 5321 2.4: verbs and extension keywords in any case
    hub = ScriptedHub(replies={b"EHLO": (250, b"hub.example.org\nChunking\nstarttls\nDSN")})
    stdin = (b"ehlo a\r\nbdat 3 last\r\nmail FROM:<>\r\nrcpt TO:<bob@example.org>\r\n"
             b"data\r\nhi\r\n.\r\nquit\r\n")
    status, out, _ = session(stdin, hub)
    assert status == 0 and hub.messages == 1
    assert out.split(b"\r\n")[1:4] == [b"250-hub.example.org", b"250 DSN",
                                       b"502 5.5.1 BDAT is not offered here: use DATA"]
    assert codes(out) == [b"220", b"250", b"502", b"250", b"250", b"354", b"250", b"221"]
    assert hub.closed and not hub.pending


def test_a_non_blocking_stdin_is_a_client_that_pauses_not_one_gone() -> None:
    # O_NONBLOCK is the pipe's (a parent may have set it): a read before
    # the client wrote on was empty and ended the session with a QUIT to
    # the hub, the message unsent.  The client here writes its DATA once
    # the session has read the pipe empty.
    import threading

    r, w = os.pipe()
    os.set_blocking(r, False)

    def client() -> None:
        os.write(w, b"EHLO alpine\r\nMAIL FROM:<joe@example.org>\r\nRCPT TO:<bob@example.org>\r\n")
        read_empty(r)
        os.write(w, b"DATA\r\n" + MESSAGE + b".\r\nQUIT\r\n")
        os.close(w)

    writer = threading.Thread(target=client)
    writer.start()
    hub = ScriptedHub()
    try:
        with os.fdopen(r, "rb") as stream:
            status, out, _ = session(stream, hub)
    finally:
        writer.join()
    assert status == 0 and hub.messages == 1
    assert codes(out) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]


class _Bug(Exception):
    """An exception nobody expected: a bug of the command's."""


INTERNAL_421 = (b"421 4.3.0 mail.example.org internal error in the sendmail command: "
                b"closing the session\r\n")


class _BuggyHub(ScriptedHub):
    """A hub connection whose ``getreply`` (or ``close``) meets a bug."""

    def __init__(self, at: bytes | None = None, at_close: bool = False) -> None:
        super().__init__()
        self.at, self.at_close = at, at_close

    def getreply(self) -> tuple[int, bytes]:
        if self.commands and self.commands[-1].startswith(self.at or b"\0"):
            raise _Bug("at " + self.commands[-1].decode())
        return super().getreply()

    def close(self) -> None:
        super().close()
        if self.at_close:
            raise _Bug("at close")


def _session_raising(stdin: bytes, hub: ScriptedHub, trace: Callable[[], bytes] = lambda: TRACE,
                     out: io.BytesIO | None = None) -> bytes:
    out = out if out is not None else io.BytesIO()
    s = Session(io.BytesIO(stdin), out, hub, trace, "mail.example.org")  # type: ignore[arg-type]
    with pytest.raises(_Bug):
        s.run((220, b"hub.example.org ESMTP"))
    return out.getvalue()


def test_an_internal_error_between_commands_gets_the_client_a_421_first() -> None:
    # RFC 5321 3.8: a server that closes the channel says 421 first; the
    # error goes on to ``sendmail.run`` (exit 70) as it was
    hub = _BuggyHub(at=b"MAIL")
    out = _session_raising(PIPELINED, hub)
    assert codes(out) == [b"220", b"250", b"421"]
    assert out.endswith(b"250 8BITMIME\r\n" + INTERNAL_421)
    assert hub.closed


def test_an_internal_error_inside_the_data_gets_a_421_and_the_hub_keeps_nothing() -> None:
    calls = []

    def trace() -> bytes:  # the EHLO reply's SIZE asks for it first; DATA then
        calls.append(1)
        if len(calls) > 1:
            raise _Bug("in the trace field")
        return TRACE

    hub = ScriptedHub()
    out = _session_raising(PIPELINED + b"QUIT\r\n", hub, trace)
    assert codes(out) == [b"220", b"250", b"250", b"250", b"354", b"421"]
    assert out.endswith(INTERNAL_421)
    assert hub.closed and hub.messages == 0  # no final dot went to the hub


class _BuggyInData(ScriptedHub):
    """A hub connection whose ``send`` meets a bug at the data's second
    piece (its first line, after the trace field)."""

    def __init__(self) -> None:
        super().__init__()
        self.data_sends = 0

    def send(self, data: bytes) -> None:
        if self.reader is not None:
            self.data_sends += 1
            if self.data_sends == 2:
                raise _Bug("in the data")
        super().send(data)


def test_an_internal_error_inside_the_data_is_answered_after_the_clients_final_dot() -> None:
    # the client reads no reply before its dot: a 421 written before it
    # waits unread while the client writes on into a command that has ended
    hub = _BuggyInData()
    stdin = io.BytesIO(b"EHLO a\r\nMAIL FROM:<joe@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
                       b"DATA\r\nline 1\r\nline 2\r\n.\r\nQUIT\r\n")
    out = io.BytesIO()
    s = Session(stdin, out, hub, lambda: TRACE, "mail.example.org")  # type: ignore[arg-type]
    with pytest.raises(_Bug, match="in the data"):
        s.run((220, b"hub.example.org ESMTP"))
    assert codes(out.getvalue()) == [b"220", b"250", b"250", b"250", b"354", b"421"]
    assert out.getvalue().endswith(INTERNAL_421)
    assert stdin.read() == b"QUIT\r\n"  # read to the final dot, and no further
    assert hub.closed and hub.messages == 0


def test_an_internal_error_inside_data_the_client_ends_early_is_still_the_error() -> None:
    # the input ends before the final dot: still the bug (exit 70), not 65
    hub = _BuggyInData()
    out = _session_raising(b"EHLO a\r\nMAIL FROM:<joe@example.org>\r\n"
                           b"RCPT TO:<bob@example.org>\r\nDATA\r\nline 1\r\n", hub)
    assert codes(out) == [b"220", b"250", b"250", b"250", b"354", b"421"]
    assert hub.closed and hub.messages == 0


def test_an_internal_error_inside_data_the_client_cannot_send_on_is_still_the_error() -> None:
    # standard input unreadable after the bug: still the bug (exit 70), not 74
    class Unreadable(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
            if self.tell() >= len(head):
                raise OSError(5, "Input/output error")
            return super().readline(size)

    head = (b"EHLO a\r\nMAIL FROM:<joe@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
            b"DATA\r\nline 1\r\n")
    hub = _BuggyInData()
    out = io.BytesIO()
    s = Session(Unreadable(head + b"line 2\r\n.\r\n"), out, hub, lambda: TRACE,
                "mail.example.org")  # type: ignore[arg-type]
    with pytest.raises(_Bug, match="in the data"):
        s.run((220, b"hub.example.org ESMTP"))
    assert codes(out.getvalue()) == [b"220", b"250", b"250", b"250", b"354", b"421"]
    assert hub.closed and hub.messages == 0


def test_an_internal_error_with_stdout_gone_still_goes_on_as_it_was() -> None:
    # the 421 cannot be written: the error is still the one reported (70), not a 74
    class Closing(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            if data.startswith(b"421"):
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(data)

    hub = _BuggyHub(at=b"MAIL")
    out = _session_raising(PIPELINED, hub, out=Closing())
    assert codes(out) == [b"220", b"250"] and hub.closed


def test_an_internal_error_after_the_sessions_last_reply_adds_no_421() -> None:
    # the client has its 221: the session is over, nothing follows it
    hub = _BuggyHub(at_close=True)
    out = _session_raising(b"EHLO a\r\nQUIT\r\n", hub)
    assert codes(out) == [b"220", b"250", b"221"]


def _command_with_hub(monkeypatch: pytest.MonkeyPatch, hub: ScriptedHub) -> None:
    from txmailhub import sendmail

    monkeypatch.setattr(sendmail, "open_session",
                        lambda targets: (hub, targets[0], (220, b"hub.example.org ESMTP")))


def test_an_internal_error_before_the_greeting_is_a_421_greeting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from txmailhub import sendmail

    def login() -> tuple[str, str]:
        raise _Bug("no login")

    hub = ScriptedHub()
    _command_with_hub(monkeypatch, hub)
    monkeypatch.setattr(sendmail, "_login", login)
    out, err = io.BytesIO(), io.StringIO()
    status = sendmail.run(["-bs"], str(sendmail_config(tmp_path, 2525)), "sendmail",
                          io.BytesIO(PIPELINED), err, stdout=out)
    assert status == 70
    assert out.getvalue() == INTERNAL_421
    assert "internal error (a bug in the command): _Bug: no login" in err.getvalue()
    assert hub.closed and hub.commands == []


def test_an_internal_error_inside_the_data_closes_the_hubs_connection_at_once() -> None:
    # not at the client's final dot, which may be long in coming: the
    # hub's connection has nothing more to carry, and is let go at the bug
    hub = _BuggyInData()
    closed_at_dot: list[bool] = []

    class Watching(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
            line = super().readline(size)
            if line == b".\r\n":
                closed_at_dot.append(hub.closed)
            return line

    stdin = Watching(b"EHLO a\r\nMAIL FROM:<joe@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
                     b"DATA\r\nline 1\r\nline 2\r\n.\r\nQUIT\r\n")
    s = Session(stdin, io.BytesIO(), hub, lambda: TRACE, "mail.example.org")  # type: ignore[arg-type]
    with pytest.raises(_Bug, match="in the data"):
        s.run((220, b"hub.example.org ESMTP"))
    assert closed_at_dot == [True]


class _TextlessBug(Exception):
    """A bug whose exception's own ``__str__`` raises too."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


class _TextlessHub(ScriptedHub):
    """A hub connection whose ``getreply`` to RCPT meets ``_TextlessBug``."""

    def getreply(self) -> tuple[int, bytes]:
        if self.commands and self.commands[-1].startswith(b"RCPT"):
            raise _TextlessBug()
        return super().getreply()


@pytest.mark.parametrize("make_hub, said", [
    (lambda: _BuggyHub(at=b"RCPT"), "_Bug: at RCPT TO:<bob@example.org>"),
    # the line naming the error on stderr must not read the error's text
    # unguarded: that ended in Python's traceback, exit 1
    (_TextlessHub, "_TextlessBug: <exception str() failed>"),
])
def test_the_command_gives_the_client_a_421_before_its_exit_70(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_hub, said: str) -> None:
    from txmailhub.sendmail import run

    hub = make_hub()
    _command_with_hub(monkeypatch, hub)
    out, err = io.BytesIO(), io.StringIO()
    status = run(["-bs"], str(sendmail_config(tmp_path, 2525)), "sendmail",
                 io.BytesIO(PIPELINED), err, stdout=out)
    assert status == 70
    assert codes(out.getvalue()) == [b"220", b"250", b"250", b"421"]
    assert out.getvalue().endswith(INTERNAL_421)
    assert err.getvalue() == (f"sendmail: internal error (a bug in the command): {said} "
                              "(-v shows where)\n")
    assert hub.closed
