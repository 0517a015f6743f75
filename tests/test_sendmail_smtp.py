"""``txmailhub.sendmail_smtp`` against a scripted hub (an object with
``smtplib.SMTP``'s methods): the data streamed from the spool in bounded
pieces, dot-stuffed as the hub's own DATA reader reads it, SIZE declared,
all recipients or none, and the one failure whose outcome is unknown."""

from __future__ import annotations

import hashlib
import io
import smtplib
import tempfile
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub import sendmail_smtp
from txmailhub.sendmail import EX_NOUSER, EX_TEMPFAIL, Options, Prepared, prepare, run
from txmailhub.sendmail_input import read_message
from txmailhub.sendmail_smtp import CHUNK, OutcomeUnknown, Refused, Target, dot_stuffed, submit
from txmailhub.smtp._data import DotReader
from txmailhub.smtp.replies import MAIL_NESTED

MiB = 1 << 20


class ScriptedHub:
    """What ``submit`` talks to: replies by command, and what arrived --
    the data run through the hub's own DATA reader, kept only as a digest
    and a size, so the test holds no copy of a big message either."""

    def __init__(self, rcpt: dict[str, tuple[int, bytes]] | None = None,
                 drop: str | None = None) -> None:
        self.rcpt = rcpt or {}
        self.drop = drop  # "data": mid-data; "reply": after the final dot
        self.commands: list[str] = []
        self.largest_send = 0
        self.stored = hashlib.sha256()
        self.stored_size = 0
        self.reader = DotReader(self._store, 10**9)
        self.ended: bytes | None = None
        self.command_encoding = "ascii"

    def _store(self, data: bytes) -> None:
        self.stored.update(data)
        self.stored_size += len(data)

    def ehlo(self) -> tuple[int, bytes]:
        return 250, b"hub\nSIZE 100000000\n8BITMIME\nDSN"

    def has_extn(self, name: str) -> bool:
        return name.lower() in ("size", "8bitmime", "dsn")

    def docmd(self, verb: str, args: str = "") -> tuple[int, bytes]:
        self.commands.append(f"{verb} {args}".strip())
        if verb == "RCPT":
            return self.rcpt.get(args.split(">")[0][4:], (250, b"2.1.5 Ok"))
        if verb == "DATA":
            return 354, b"End data with <CR><LF>.<CR><LF>"
        return 250, b"2.1.0 Ok"

    def send(self, data: bytes) -> None:
        if self.drop == "data":
            raise smtplib.SMTPServerDisconnected("Server not connected")
        self.largest_send = max(self.largest_send, len(data))
        assert self.ended is None
        self.ended = self.reader.feed(data)

    def getreply(self) -> tuple[int, bytes]:
        if self.drop == "reply":
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        assert self.ended == b"" and self.reader.error is None
        return 250, b"2.0.0 Ok: queued as 1234"

    def rset(self) -> None:
        self.commands.append("RSET")

    def quit(self) -> None:
        if self.drop:
            raise smtplib.SMTPServerDisconnected("Server not connected")

    def close(self) -> None:
        pass


def prepared(body: io.BufferedIOBase | None = None, size: int = 0,
             recipients: tuple[str, ...] = ("bob@example.org",)) -> Prepared:
    return Prepared("joe@example.org", recipients, b"Subject: big\r\n\r\n",
                    body or io.BytesIO(b"x\r\n"), size or 3, False)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list[ScriptedHub]:
    hubs: list[ScriptedHub] = []

    def connect(targets: list[Target], timeout: float) -> tuple[ScriptedHub, Target]:
        return hubs[0], targets[0]

    monkeypatch.setattr(sendmail_smtp, "_connect", connect)
    return hubs


def test_a_50_mib_message_goes_out_in_bounded_pieces(hub: list[ScriptedHub]) -> None:
    hub.append(ScriptedHub())
    block = b".dot at the start of a line\r\n" + b"y" * 993 + b"\r\n"  # 1 KiB of lines
    digest = hashlib.sha256(b"Subject: big\n\n")  # what the hub stores: LF line ends
    with tempfile.TemporaryFile() as spool:
        for _ in range(50 * 1024):
            spool.write(block)
            digest.update(block.replace(b"\r\n", b"\n"))
        spool.seek(0)
        tracemalloc.start()
        try:
            reply = submit(prepared(spool, 50 * MiB), [Target("127.0.0.1", 25)])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert reply == "250 2.0.0 Ok: queued as 1234"
    assert peak < 4 * MiB, f"{peak} octets at the peak"
    assert hub[0].largest_send <= 2 * CHUNK  # (a piece may double its dots)
    # the hub's reader undid the dot-stuffing: what it stored is the message
    assert hub[0].stored_size == 50 * MiB - 2 * 50 * 1024 + 14
    assert hub[0].stored.digest() == digest.digest()
    assert hub[0].commands[0] == f"MAIL FROM:<joe@example.org> SIZE={50 * MiB + 16}"


def test_a_refused_recipient_stops_it_before_the_data(hub: list[ScriptedHub]) -> None:
    hub.append(ScriptedHub(rcpt={"nobody@example.org": (550, b"5.1.1 No such user")}))
    with pytest.raises(Refused) as e:
        submit(prepared(recipients=("bob@example.org", "nobody@example.org")),
               [Target("127.0.0.1", 25)])
    assert e.value.status == EX_NOUSER
    assert hub[0].commands[-1] == "RSET" and not any(c == "DATA" for c in hub[0].commands)
    assert hub[0].stored_size == 0


def test_a_connection_lost_during_the_data_is_not_sent(hub: list[ScriptedHub]) -> None:
    hub.append(ScriptedHub(drop="data"))
    with pytest.raises(smtplib.SMTPServerDisconnected):
        submit(prepared(), [Target("127.0.0.1", 25)])


def test_a_connection_lost_after_the_final_dot_is_an_unknown_outcome(
        hub: list[ScriptedHub]) -> None:
    hub.append(ScriptedHub(drop="reply"))
    with pytest.raises(OutcomeUnknown, match="after the whole message was sent"):
        submit(prepared(), [Target("127.0.0.1", 25)])
    assert hub[0].ended == b""  # the final dot did go out


def _config(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A config whose [smtp] listen the command reaches (the hub is scripted)."""
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:2525"]\n')
    return str(config)


@pytest.mark.parametrize(("drop", "says"), [("data", "NOT sent"), ("reply", "MAY have been")])
def test_the_command_says_which(hub: list[ScriptedHub], drop: str, says: str,
                                tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub.append(ScriptedHub(drop=drop))
    config = _config(tmp_path)
    err = io.StringIO()
    assert run(["bob"], config, "sendmail", io.BytesIO(b"Subject: x\n\nbody\n"),
               err) == EX_TEMPFAIL
    assert says in err.getvalue()
    assert ("NOT sent" in err.getvalue()) == (drop == "data")


@pytest.mark.parametrize("argv", [["bob", "nobody"], ["-t"]])
def test_all_or_nothing_holds_for_a_big_streamed_message(
    hub: list[ScriptedHub], argv: list[str], tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    # with -t the recipients come from the header section, read before
    # the body; either way every RCPT is answered before DATA is sent
    hub.append(ScriptedHub(rcpt={"nobody@example.org": (550, b"5.1.1 No such user")}))
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:2525"]\n'
                      f"max_message_size = {8 * MiB}\n")
    stdin = io.BytesIO(b"To: bob, nobody\n\n" + b"z" * 75 * 80_000 + b"\n")
    err = io.StringIO()
    assert run(argv, config, "sendmail", stdin, err) == EX_NOUSER
    assert "<nobody@example.org>: 550 5.1.1" in err.getvalue() and "NOT sent" in err.getvalue()
    assert "DATA" not in hub[0].commands and hub[0].stored_size == 0


@given(st.lists(st.sampled_from([b".", b"..", b"\r\n", b"a", b".\r\n", b"\r\n.."]),
                max_size=30), st.integers(1, 7))
def test_dot_stuffing_does_not_depend_on_the_pieces(parts: list[bytes], size: int) -> None:
    text = b"".join(parts) + b"\r\n"  # CRLF lines: no CR or LF but in CRLF
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    whole = b"".join(dot_stuffed([text]))
    assert b"".join(dot_stuffed(pieces)) == whole
    reader = DotReader(None, 10**6)
    assert reader.feed(whole + b".\r\n") == b"" and reader.error is None
    stored: list[bytes] = []
    DotReader(stored.append, 10**6).feed(whole + b".\r\n")
    assert b"".join(stored) == text.replace(b"\r\n", b"\n")  # (stored with LF)


def test_prepare_keeps_the_body_in_its_spool() -> None:
    read = read_message(io.BytesIO(b"Subject: x\n\n.body\n"), True, 1000)
    p = prepare(read, Options(recipients=("bob",)), _settings(), ("joe", ""), 1000)
    assert p.body is read.body and p.size == len(p.header) + len(b".body\r\n")


def _settings():  # type: ignore[no-untyped-def]
    from txmailhub.config import LocalSubmission

    return LocalSubmission(path="/x.toml", hostname="mail.example.org",
                           domains=("example.org",), listen=("tcp:25",),
                           max_message_size=10_000)


class LimitedHub(ScriptedHub):
    """A hub that takes ``limit`` recipients in a transaction (its ``[smtp]
    max_recipients``: ``452 4.5.3`` beyond), refuses those in ``rcpt``
    from the ``refuse_from``-th transaction on, and keeps each message
    it took with the recipients it was for."""

    def __init__(self, limit: int, rcpt: dict[str, tuple[int, bytes]] | None = None,
                 refuse_from: int = 0) -> None:
        super().__init__()
        self.limit = limit
        self.refusals = rcpt or {}
        self.refuse_from = refuse_from
        self.transactions = 0
        self.taken: list[str] = []
        self.delivered: list[tuple[list[str], bytes]] = []
        self.data: list[bytes] = []
        self.open = False  # a MAIL taken, and no RSET or message since

    def docmd(self, verb: str, args: str = "") -> tuple[int, bytes]:
        self.commands.append(f"{verb} {args}".strip())
        assert self.transactions < 50, "no end to the transactions"
        if verb == "MAIL":
            if self.open:  # as the hub answers it (RFC 5321 4.1.4)
                return MAIL_NESTED.code, f"{MAIL_NESTED.status} {MAIL_NESTED.lines[0]}".encode()
            self.open = True
            self.transactions += 1
            self.taken = []
            return 250, b"2.1.0 Ok"
        assert self.open, f"{verb} outside a transaction"
        if verb == "RCPT":
            address = args.split(">")[0][4:]
            if len(self.taken) >= self.limit:
                return 452, b"4.5.3 Too many recipients"
            if address in self.refusals and self.transactions >= self.refuse_from:
                return self.refusals[address]
            self.taken.append(address)
            return 250, b"2.1.5 Ok"
        assert verb == "DATA" and self.taken
        self.data = []
        return 354, b"End data with <CR><LF>.<CR><LF>"

    def send(self, data: bytes) -> None:
        self.data.append(data)

    def getreply(self) -> tuple[int, bytes]:
        stored: list[bytes] = []
        assert DotReader(stored.append, 10**6).feed(b"".join(self.data)) == b""
        self.delivered.append((self.taken, b"".join(stored)))
        self.open = False
        return 250, b"2.0.0 Ok: queued"

    def rset(self) -> None:
        self.commands.append("RSET")
        self.taken = []
        self.open = False


FIVE = tuple(f"r{i}@example.org" for i in range(1, 6))


def test_the_scripted_hub_answers_a_nested_mail_and_rset_as_the_hub_does() -> None:
    # the hub's engine answers from the same catalog (tests/test_smtp_server.py)
    hub = LimitedHub(5)
    assert hub.docmd("MAIL", "FROM:<joe@example.org>")[0] == 250
    code, text = hub.docmd("MAIL", "FROM:<joe@example.org>")
    assert f"{code} {text.decode()}" == MAIL_NESTED.text()
    hub.rset()  # RSET ends the transaction: a MAIL is taken again
    assert hub.docmd("MAIL", "FROM:<joe@example.org>")[0] == 250


def test_more_recipients_than_the_hub_takes_go_in_several_transactions(
        hub: list[ScriptedHub]) -> None:
    # RFC 5321 4.5.3.1.10: a 452 4.5.3 to RCPT is the server's limit, and
    # the client sends the rest in another transaction; exit 75 ("try
    # again later") failed the same way at every try, for good
    hub.append(LimitedHub(2))
    assert submit(prepared(io.BytesIO(b"body\r\n"), 6, FIVE),
                  [Target("127.0.0.1", 25)]) == "250 2.0.0 Ok: queued"
    assert hub[0].delivered == [(["r1@example.org", "r2@example.org"], message := (
        b"Subject: big\n\nbody\n")), (["r3@example.org", "r4@example.org"], message),
        (["r5@example.org"], message)]
    # each recipient is asked for once before the message goes to any
    first_data = hub[0].commands.index("DATA")
    asked = [c for c in hub[0].commands[:first_data] if c.startswith("RCPT")]
    assert {c.split("<")[1].split(">")[0] for c in asked} == set(FIVE)


def test_a_recipient_refused_in_a_later_transaction_stops_the_message_for_all(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    hub.append(LimitedHub(2, {"r4@example.org": (550, b"5.1.1 No such user")}))
    config = _config(tmp_path)
    err = io.StringIO()
    assert run(list(FIVE), config, "sendmail", io.BytesIO(b"x\n"), err) == EX_NOUSER
    assert "<r4@example.org>: 550 5.1.1" in err.getvalue() and "NOT sent" in err.getvalue()
    assert "DATA" not in hub[0].commands and hub[0].delivered == []
    assert hub[0].commands[-1] == "RSET"


def test_a_later_transaction_that_fails_after_all_says_who_has_the_message(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # r3 was taken when first asked (transaction 2), refused when the
    # message was sent (transaction 5: removed meanwhile)
    hub.append(LimitedHub(2, {"r3@example.org": (550, b"5.1.1 No such user")}, refuse_from=5))
    config = _config(tmp_path)
    err = io.StringIO()
    assert run(list(FIVE), config, "sendmail", io.BytesIO(b"x\n"), err) == EX_NOUSER
    said = err.getvalue()
    assert "WAS sent to 2 recipients (<r1@example.org>, <r2@example.org>)" in said, said
    assert "<r3@example.org>: 550 5.1.1" in said and "NOT sent to the other" in said
    assert [rcpts for rcpts, _ in hub[0].delivered] == [["r1@example.org", "r2@example.org"]]


class Dropping(LimitedHub):
    """A ``LimitedHub`` whose connection fails before its reply to the
    ``lost``-th message (counted from 0)."""

    def __init__(self, limit: int, lost: int) -> None:
        super().__init__(limit)
        self.lost = lost

    def getreply(self) -> tuple[int, bytes]:
        if len(self.delivered) == self.lost:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().getreply()


@pytest.mark.parametrize(("lost", "told"), [
    # r3 and r4 may have it (their transaction's reply was lost); r5's
    # transaction was never tried: it certainly has not, and is told so
    (1, "WAS sent to 2 recipients (<r1@example.org>, <r2@example.org>), in transactions of "
        "as many as the hub takes, but then: the connection to the hub failed after the "
        "whole message was sent, before the hub's reply to it: Connection unexpectedly "
        "closed; it MAY have been sent to 2 recipients (<r3@example.org>, <r4@example.org>), "
        "and was NOT sent to the remaining 1\n"),
    # the last transaction's reply lost: nobody is left who has it not
    (2, "WAS sent to 4 recipients (<r1@example.org>, <r2@example.org>, <r3@example.org>, "
        "<r4@example.org>), in transactions of as many as the hub takes, but then: the "
        "connection to the hub failed after the whole message was sent, before the hub's "
        "reply to it: Connection unexpectedly closed; it MAY have been sent to 1 recipients "
        "(<r5@example.org>)\n"),
])
def test_a_later_transaction_whose_reply_is_lost_may_have_been_sent(
        hub: list[ScriptedHub], tmp_path, lost: int, told: str) -> None:  # type: ignore[no-untyped-def]
    hub.append(Dropping(2, lost))
    config = _config(tmp_path)
    err = io.StringIO()
    assert run(list(FIVE), config, "sendmail", io.BytesIO(b"x\n"), err) == EX_TEMPFAIL
    assert err.getvalue() == "sendmail: the message " + told, err.getvalue()


def test_one_mailbox_in_two_transactions_is_sent_once_as_first_spelled(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the hub merges the spellings of one mailbox within a transaction;
    # at two recipients a transaction, these would be in different ones.
    # Another domain's local part keeps its case (RFC 5321 2.4), as the
    # hub keeps it: Dave and dave at example.net are two recipients
    hub.append(LimitedHub(2))
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org", "bücher.example"]\n'
                      '[smtp]\nlisten = ["tcp:2525"]\n')
    argv = ["Bob", "r1@example.org", "bob@EXAMPLE.ORG", "Dave@example.net",
            "dave@EXAMPLE.NET.", "Dave@example.net", "bob", "ann@xn--bcher-kva.example",
            '"ANN"@BÜCHER.example']
    err = io.StringIO()
    assert run(argv, config, "sendmail", io.BytesIO(b"x\n"), err) == 0, err.getvalue()
    assert [r for rcpts, _ in hub[0].delivered for r in rcpts] == [
        "Bob@example.org", "r1@example.org", "Dave@example.net", "dave@example.net",
        "ann@xn--bcher-kva.example"]


def _aliases_config(tmp_path, aliases: str) -> str:  # type: ignore[no-untyped-def]
    """``_config`` with an ``[aliases] file`` holding ``aliases``, named
    relative to the config, as the hub names it, and the limit of
    ``LimitedHub(2)``: a longer list is one the command reads it for."""
    (tmp_path / "aliases").write_text(aliases)
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:2525"]\n'
                      'max_recipients = 2\n[aliases]\nfile = "aliases"\n')
    return str(config)


def test_recipients_that_aliases_lead_to_one_mailbox_share_a_transaction(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the hub merges staff's joe and joe within a transaction only: at two
    # recipients a transaction, "r1 staff | r2 joe | ann r3 | team" gave
    # joe and ann two copies each.  joe goes beside staff, ann's alias
    # beside ann (its other member is remote), and a limit that falls
    # inside such a run ends the transaction before it instead
    hub.append(LimitedHub(2))
    config = _aliases_config(tmp_path, "staff: joe\nteam: Ann, bob@elsewhere.test\n")
    err = io.StringIO()
    argv = ["r1", "staff", "r2", "joe", "ann", "r3", "team"]
    assert run(argv, config, "sendmail", io.BytesIO(b"x\n"), err) == 0, err.getvalue()
    assert [rcpts for rcpts, _ in hub[0].delivered] == [
        ["r1@example.org"], ["staff@example.org", "joe@example.org"], ["r2@example.org"],
        ["ann@example.org", "team@example.org"], ["r3@example.org"]]


def test_a_run_longer_than_the_limit_is_cut_and_the_last_transaction_holds_whole_runs(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # staff, team and joe lead to one mailbox: three, where the hub takes
    # two a transaction, so no transaction can hold them (joe gets two
    # copies); the runs after them fill the transactions as the limit
    # allows, the last one two runs of one
    hub.append(LimitedHub(2))
    config = _aliases_config(tmp_path, "staff: joe\nteam: joe\n")
    err = io.StringIO()
    argv = ["staff", "team", "joe", "r1", "r2", "r3"]
    assert run(argv, config, "sendmail", io.BytesIO(b"x\n"), err) == 0, err.getvalue()
    assert [rcpts for rcpts, _ in hub[0].delivered] == [
        ["staff@example.org", "team@example.org"], ["joe@example.org", "r1@example.org"],
        ["r2@example.org", "r3@example.org"]]


def test_a_refusal_in_a_run_the_limit_cut_is_told_once(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # "staff" refused in the transaction the limit cut before it, and in the
    # next, which asks it again: one refusal, said once
    hub.append(LimitedHub(2, {"staff@example.org": (550, b"5.1.1 No such user")}))
    config = _aliases_config(tmp_path, "staff: joe\nteam: joe\n")
    err = io.StringIO()
    assert run(["r1", "staff", "team", "joe"], config, "sendmail", io.BytesIO(b"x\n"),
               err) == EX_NOUSER
    assert err.getvalue().count("<staff@example.org>: 550 5.1.1") == 1, err.getvalue()
    assert hub[0].delivered == []


class JunkCountingHub(LimitedHub):
    """A ``LimitedHub`` that, as the hub with ``[smtp] max_errors = 1``,
    takes ``junk`` RSETs in a session (``max_junk_commands``), counted
    anew in each session (EHLO) and after each message it takes."""

    def __init__(self, limit: int, junk: int) -> None:
        super().__init__(limit)
        self.junk = junk
        self.resets: list[int] = []  # of each session
        self.quits = 0

    def ehlo(self) -> tuple[int, bytes]:
        self.resets.append(0)
        return super().ehlo()

    def rset(self) -> None:
        self.resets[-1] += 1
        assert self.resets[-1] <= self.junk, "421 4.7.0 Too many errors"
        super().rset()

    def getreply(self) -> tuple[int, bytes]:
        self.resets[-1] = 0
        return super().getreply()

    def quit(self) -> None:
        self.quits += 1
        super().quit()


def test_a_list_of_more_transactions_than_the_junk_limit_asks_in_new_sessions(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # five transactions of one recipient, each asked for and ended with
    # RSET: two in a session, as the config's max_junk_commands allows
    hub.append(JunkCountingHub(1, 2))
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n'
                      '[smtp]\nlisten = ["tcp:2525"]\nmax_junk_commands = 2\n')
    err = io.StringIO()
    assert run(list(FIVE), config, "sendmail", io.BytesIO(b"x\n"), err) == 0, err.getvalue()
    assert [rcpts for rcpts, _ in hub[0].delivered] == [[r] for r in FIVE]
    assert len(hub[0].resets) == 3  # sessions: 2 + 2 + 1 transactions asked for
    assert hub[0].quits == 3  # each session ended by QUIT, not left open
    # all or none: every recipient asked for before the first message
    first_data = hub[0].commands.index("DATA")
    asked = [c for c in hub[0].commands[:first_data] if c.startswith("RCPT")]
    assert {c.split("<")[1].split(">")[0] for c in asked} == set(FIVE)


def test_a_452_other_than_the_recipient_limit_is_a_refusal_not_a_new_transaction(
        hub: list[ScriptedHub]) -> None:
    # only 4.5.3 is the limit of recipients (RFC 5321 4.5.3.1.10); the
    # hub's 452 4.3.1 (its disk) and 4.2.2 (a mailbox full) refuse that
    # recipient, and the message goes to nobody
    hub.append(ScriptedHub(rcpt={
        "r2@example.org": (452, b"4.3.1 Insufficient system storage, try again later")}))
    with pytest.raises(Refused) as e:
        submit(prepared(recipients=FIVE), [Target("127.0.0.1", 25)])
    assert e.value.status == EX_TEMPFAIL
    assert str(e.value) == ("<r2@example.org>: 452 4.3.1 Insufficient system storage, "
                            "try again later")
    assert sum(c.startswith("MAIL") for c in hub[0].commands) == 1
    assert hub[0].commands[-1] == "RSET" and "DATA" not in hub[0].commands


def test_a_recipient_limit_at_a_transactions_first_recipient_is_a_refusal(
        hub: list[ScriptedHub]) -> None:
    # a transaction holds one recipient at least: a 452 4.5.3 to its first
    # RCPT is no limit another transaction gets past (taken for one, the
    # client would open new ones for ever); each recipient is refused once
    hub.append(LimitedHub(0))
    with pytest.raises(Refused) as e:
        submit(prepared(recipients=FIVE), [Target("127.0.0.1", 25)])
    assert e.value.status == EX_TEMPFAIL
    assert str(e.value) == "; ".join(f"<{r}>: 452 4.5.3 Too many recipients" for r in FIVE)
    assert hub[0].transactions == len(FIVE) and hub[0].delivered == []


def test_a_recipient_the_hub_will_forward_is_taken(hub: list[ScriptedHub]) -> None:
    # 251 "User not local; will forward" (RFC 5321 4.2.2) takes it too
    hub.append(ScriptedHub(rcpt={"bob@example.org": (251, b"2.1.5 will forward")}))
    assert submit(prepared(), [Target("127.0.0.1", 25)]) == "250 2.0.0 Ok: queued as 1234"
    assert hub[0].stored_size == len(b"Subject: big\n\nx\n")


class RefusingSender(ScriptedHub):
    def docmd(self, verb: str, args: str = "") -> tuple[int, bytes]:
        if verb == "MAIL":
            self.commands.append(f"{verb} {args}")
            return 451, b"4.3.0 Try again later"
        return super().docmd(verb, args)


def test_a_transient_refusal_of_the_sender_is_a_deferral(hub: list[ScriptedHub]) -> None:
    hub.append(RefusingSender())
    with pytest.raises(Refused) as e:
        submit(prepared(), [Target("127.0.0.1", 25)])
    assert e.value.status == EX_TEMPFAIL
    assert str(e.value) == "sender <joe@example.org>: 451 4.3.0 Try again later"
    assert not any(c.startswith(("RCPT", "DATA")) for c in hub[0].commands)


def test_recipients_within_the_limit_go_in_one_transaction_without_rset(
        hub: list[ScriptedHub]) -> None:
    # the recipients asked for once, DATA in the same transaction: no
    # RSET, no second MAIL (the hub answers a MAIL inside one with 503)
    hub.append(LimitedHub(5))
    assert submit(prepared(io.BytesIO(b"body\r\n"), 6, FIVE),
                  [Target("127.0.0.1", 25)]) == "250 2.0.0 Ok: queued"
    assert hub[0].delivered == [(list(FIVE), b"Subject: big\n\nbody\n")]
    assert hub[0].transactions == 1 and "RSET" not in hub[0].commands


def test_the_first_of_several_refusals_that_is_permanent_gives_the_status(
        hub: list[ScriptedHub]) -> None:
    hub.append(ScriptedHub(rcpt={"r1@example.org": (450, b"4.2.1 busy"),
                                 "r2@example.org": (550, b"5.1.1 No such user"),
                                 "r3@example.org": (553, b"5.1.3 Bad address")}))
    with pytest.raises(Refused) as e:
        submit(prepared(recipients=FIVE), [Target("127.0.0.1", 25)])
    assert e.value.status == EX_NOUSER
    assert str(e.value) == ("<r1@example.org>: 450 4.2.1 busy; <r2@example.org>: 550 5.1.1 "
                            "No such user; <r3@example.org>: 553 5.1.3 Bad address")


def test_no_recipients_is_a_usage_error_before_any_connection(hub: list[ScriptedHub]) -> None:
    with pytest.raises(Refused) as e:  # (no hub: a connection would fail the test)
        submit(prepared(recipients=()), [Target("127.0.0.1", 25)])
    assert e.value.status == sendmail_smtp.EX_USAGE


class Shrinking(LimitedHub):
    """A ``LimitedHub`` whose limit drops to 1 from its ``at``-th
    transaction on (its ``max_recipients`` lowered, and the hub restarted,
    between the recipients asked for and the message sent)."""

    def __init__(self, limit: int, at: int) -> None:
        super().__init__(limit)
        self.at = at

    def docmd(self, verb: str, args: str = "") -> tuple[int, bytes]:
        if verb == "MAIL" and self.transactions + 1 == self.at:
            self.limit = 1
        return super().docmd(verb, args)


@pytest.mark.parametrize(("at", "status", "told"), [
    # the first batch short: nobody has it yet
    (4, EX_TEMPFAIL, "<r2@example.org>: 452 the hub took fewer recipients than before; "
                     "the message was NOT sent\n"),
    # the second: the first batch has it
    (5, EX_TEMPFAIL, "the message WAS sent to 2 recipients (<r1@example.org>, "
                     "<r2@example.org>), in transactions of as many as the hub takes, but "
                     "then: <r4@example.org>: 452 the hub took fewer recipients than before; "
                     "it was NOT sent to the other recipients\n"),
])
def test_a_batch_the_hub_takes_fewer_of_when_sent_gets_no_message(
        hub: list[ScriptedHub], tmp_path, at: int, status: int,  # type: ignore[no-untyped-def]
        told: str) -> None:
    # its recipients past the new limit would lose the message unsaid
    hub.append(Shrinking(2, at))
    err = io.StringIO()
    assert run(list(FIVE), _config(tmp_path), "sendmail", io.BytesIO(b"x\n"), err) == status
    assert err.getvalue() == "sendmail: " + told, err.getvalue()
    assert [rcpts for rcpts, _ in hub[0].delivered] == [list(FIVE[:2])][:at - 4]
    assert hub[0].commands[-1] == "RSET"


class LostAtMail(LimitedHub):
    """A ``LimitedHub`` whose connection is lost at the MAIL of its
    ``at``-th transaction."""

    def __init__(self, limit: int, at: int) -> None:
        super().__init__(limit)
        self.at = at

    def docmd(self, verb: str, args: str = "") -> tuple[int, bytes]:
        if verb == "MAIL" and self.transactions + 1 == self.at:
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().docmd(verb, args)


def test_a_connection_lost_between_the_transactions_says_who_has_the_message(
        hub: list[ScriptedHub], tmp_path) -> None:  # type: ignore[no-untyped-def]
    # not "the connection to the hub failed ... NOT sent": r1 and r2 have it
    hub.append(LostAtMail(2, 5))
    err = io.StringIO()
    assert run(list(FIVE), _config(tmp_path), "sendmail", io.BytesIO(b"x\n"), err) == EX_TEMPFAIL
    assert err.getvalue() == (
        "sendmail: the message WAS sent to 2 recipients (<r1@example.org>, <r2@example.org>), "
        "in transactions of as many as the hub takes, but then: Connection unexpectedly "
        "closed; it was NOT sent to the other recipients\n"), err.getvalue()


def test_partly_sent_names_who_has_the_message_and_who_may(hub: list[ScriptedHub]) -> None:
    hub.append(Dropping(2, 1))
    with pytest.raises(sendmail_smtp.PartlySent) as e:
        submit(prepared(recipients=FIVE), [Target("127.0.0.1", 25)])
    assert e.value.status == EX_TEMPFAIL
    assert e.value.sent == list(FIVE[:2]) and e.value.maybe == list(FIVE[2:4])


@pytest.mark.parametrize(("count", "named"), [
    (10, ", ".join(f"<r{i}@example.org>" for i in range(10))),
    (12, ", ".join(f"<r{i}@example.org>" for i in range(10)) + " and 2 more"),
])
def test_partly_sent_names_ten_recipients_at_most(count: int, named: str) -> None:
    sent = [f"r{i}@example.org" for i in range(count)]
    text = str(sendmail_smtp.PartlySent(EX_TEMPFAIL, sent, "why"))
    assert text.startswith(f"the message WAS sent to {count} recipients ({named}), "), text


class QuitFailingHub(ScriptedHub):
    """A hub whose connection is gone by the QUIT: the client closes it."""

    closed = 0

    def quit(self) -> None:
        raise smtplib.SMTPServerDisconnected("Server not connected")

    def close(self) -> None:
        self.closed += 1


def test_a_session_whose_quit_fails_is_closed(hub: list[ScriptedHub]) -> None:
    # the message was taken: a QUIT that meets a closed connection changes
    # nothing but the way the socket is let go
    hub.append(QuitFailingHub())
    assert submit(prepared(), [Target("127.0.0.1", 25)]) == "250 2.0.0 Ok: queued as 1234"
    assert hub[0].closed == 1
