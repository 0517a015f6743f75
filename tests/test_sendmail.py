"""``txmailhub.sendmail`` without a hub: sendmail(8) option parsing, the
message read from stdin (lone dot, line ends), the header fields of a
local submission (-t with Bcc removed, -F, Date, Message-ID), the
listeners it can reach, and the exit codes of the command line."""

from __future__ import annotations

import io
import os
import re
import time
from dataclasses import replace
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub import cli
from txmailhub.address import Address, AddressError
from txmailhub.config import LocalSubmission, load_local_submission
from txmailhub.errors import ConfigError
from txmailhub.sendmail import (
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOUSER,
    EX_USAGE,
    LoginNotAddress,
    MessageTooBig,
    Options,
    Prepared,
    Target,
    UsageError,
    hub_targets,
    parse_args,
    prepare,
    run,
    trace_field,
)
from txmailhub.sendmail_input import read_message
from txmailhub.smtp._data import DotReader
from txmailhub.smtp.reply import Reply

SETTINGS = LocalSubmission(path="/etc/txmailhub/mailhub.toml", hostname="mail.example.org",
                           domains=("example.org", "example.net"), listen=("tcp:25",),
                           max_message_size=10_000)
LOGIN = ("joe", "Joe Bloggs")


def read_whole(stdin: io.BytesIO, ignore_dots: bool, limit: int) -> bytes:
    """What ``read_message`` read, as one text: the header section, the
    empty line when there was one, the body."""
    read = read_message(stdin, ignore_dots, limit)
    with read.body:
        head = b"".join(text for _, text in read.fields)
        return head + (b"\r\n" if head else b"") + read.body.read()


def prep(raw: bytes, options: Options, settings: LocalSubmission = SETTINGS,
         login: tuple[str, str] = LOGIN, uid: int = 1000) -> Prepared:
    """``prepare`` for a message given as text (read as with ``-i``)."""
    return prepare(read_message(io.BytesIO(raw), True, 10**8), options, settings, login, uid)


def sent(p: Prepared) -> bytes:
    """The whole message as ``p`` sends it."""
    p.body.seek(0)
    return p.header + p.body.read()


def untraced(p: Prepared) -> bytes:
    """The message as ``p`` sends it, without the Received field naming the
    local user, which it always starts with."""
    trace, rest = re.match(rb"(Received: by [^\r]*\r\n\t[^\r]*\r\n)(.*)\Z", sent(p),
                           re.S).groups()
    assert trace.startswith(b"Received: by mail.example.org (txmailhub sendmail, from userid ")
    return rest


def fields(message: bytes) -> list[bytes]:
    """The header lines of a prepared message (continuations included)."""
    return message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def field(message: bytes, name: bytes) -> list[bytes]:
    return [line for line in fields(message) if line.lower().startswith(name.lower() + b":")]


# --- options ----------------------------------------------------------------


def test_options_as_cron_php_git_and_mutt_give_them() -> None:
    assert parse_args(["-t", "-i"]) == Options(extract=True, ignore_dots=True)
    assert parse_args(["-ti"]) == Options(extract=True, ignore_dots=True)  # grouped
    assert parse_args(["-oi", "-f", "a@x.org", "bob"]) == Options(
        recipients=("bob",), sender="a@x.org", ignore_dots=True)
    assert parse_args(["-fa@x.org", "-FJoe Bloggs", "bob"]) == Options(
        recipients=("bob",), sender="a@x.org", full_name="Joe Bloggs")
    assert parse_args(["-r", "a@x.org", "bob"]).sender == "a@x.org"
    assert parse_args(["-f", "", "bob"]).sender == ""  # the null sender
    # mutt: -oem -oi --; a recipient after -- may start with a dash
    assert parse_args(["-oem", "-oi", "--", "-odd@x.org"]) == Options(
        recipients=("-odd@x.org",), ignore_dots=True, error_mode="m")
    assert parse_args(["-C", "/etc/x.toml", "bob"]).config == "/etc/x.toml"
    assert parse_args(["-v", "bob"]).verbose
    # the DSN parameters (RFC 3461), passed on when the hub offers DSN
    assert parse_args(["-N", "success, Failure", "-Rhdrs", "-V", "id+1", "bob"]) == Options(
        recipients=("bob",), notify="SUCCESS,FAILURE", ret="HDRS", envid="id+1")
    # 34 characters, 100 as xtext: the longest RFC 3461 4.4 allows
    assert parse_args(["-V", "+" * 33 + "b", "bob"]).envid == "+" * 33 + "b"
    assert parse_args(["-Nnever", "bob"]).notify == "NEVER"


@pytest.mark.parametrize("argv", [
    ["-odb"], ["-odi"], ["-oQ/var/spool"], ["-bm"], ["-U"], ["-m"],
    ["-B", "8BITMIME"], ["-h", "10"],
    ["-L", "label"], ["-X", "/dev/null"], ["-O", "DeliveryMode=b"], ["-n"], ["-c"],
    ["-s"], ["-d0.1"], ["-Am"], ["-p", "smtp:host"],
])
def test_common_options_without_effect_are_accepted(argv: list[str]) -> None:
    assert parse_args([*argv, "bob"]) == Options(recipients=("bob",))


@pytest.mark.parametrize("argv", [["-Z", "bob"], ["--verbose"],
                                  ["-bd"], ["-q1h"], ["-q"], ["-f"], ["-N", "sometimes"],
                                  ["-N", "never,success"], ["-R", "body"], ["-V", "a b\n"],
                                  # 100 characters, 120 as xtext (RFC 3461 4.4)
                                  ["-V", "a+" * 10 + "b" * 80]])
def test_unknown_options_and_modes_not_offered_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)
    err = io.StringIO()
    # exit 64 before anything is read or any config is needed
    assert run(argv, "/nonexistent.toml", "sendmail", stdin=io.BytesIO(b"x"), err=err) == 64
    assert err.getvalue().startswith("sendmail: ") and "usage:" in err.getvalue()


@pytest.mark.parametrize("argv", [["bob", "-oi"], ["bob", "-f", "app@example.net"],
                                  ["-t", "bob", "-fapp@example.net"], ["-"], ["-i", "-", "bob"]])
def test_an_option_after_a_recipient_is_a_usage_error_not_a_recipient(argv: list[str]) -> None:
    # getopt ends the options at the first recipient: "-f" and
    # "app@example.net" were two more recipients (a remote one relayed
    # and bounced later), the sender never set, and exit 0
    with pytest.raises(UsageError, match="goes after --"):
        parse_args(argv)
    err = io.StringIO()
    assert run(argv, "/nonexistent.toml", "sendmail", stdin=io.BytesIO(b"x"), err=err) == 64
    # after --, a recipient may start with a dash (mutt passes them so)
    assert parse_args(["-i", "--", "bob", "-odd"]).recipients == ("bob", "-odd")


@pytest.mark.parametrize("argv", [["bob", "-f", "app@example.net", "--"], ["bob", "-oi", "--"],
                                  ["-F", "--", "bob", "-f", "app@example.net"]])
def test_a_dash_dash_that_ends_no_options_lets_no_option_pass_as_a_recipient(
        argv: list[str]) -> None:
    # a "--" that is the last word (no option before the recipients) or
    # -F's value: the options ended at bob all the same, and "-f" was a
    # recipient again, the sender unset
    with pytest.raises(UsageError, match="after the recipient bob"):
        parse_args(argv)
    assert parse_args(["-F", "--", "--", "-bob"]) == Options(recipients=("-bob",),
                                                              full_name="--")


@pytest.mark.parametrize(("argv", "said"), [
    (["-"], "-: a recipient starting with '-' goes after --"),
    (["bob", "-f", "app@example.net", "-v"], "-f after the recipient bob: options go before "
                                             "the recipients"),
])
def test_a_recipient_with_a_dash_is_named_in_the_usage_error(argv: list[str], said: str) -> None:
    # the first word that is out of place, as the command line has it
    with pytest.raises(UsageError) as e:
        parse_args(argv)
    assert str(e.value).startswith(said), str(e.value)


def test_a_dash_dash_before_other_options_does_not_end_them() -> None:
    # -F takes "--" as its value, and the options go on: they end at bob,
    # and "-f" after it is out of place
    with pytest.raises(UsageError, match="-f after the recipient bob"):
        parse_args(["-F", "--", "-v", "bob", "-f", "app@example.net"])


def test_the_usage_lines_name_the_values_as_the_docs_do() -> None:
    # docs/sendmail.rst's table of options: ``-f ADDR``, ``-F NAME``,
    # ``-C PATH``; the usage lines said ``-C config`` (and sender, name)
    err = io.StringIO()
    assert run(["-Z"], "/nonexistent.toml", "sendmail", stdin=io.BytesIO(b""), err=err) == 64
    usage = err.getvalue().splitlines()[1:]
    assert usage == [
        "usage: sendmail [-t] [-i] [-f ADDR] [-F NAME] [-C PATH] [--] [recipient ...] < message",
        "       sendmail -bs [-C PATH]   (SMTP on standard input and output)",
        "       sendmail -bv [-C PATH] [--] recipient ...   (verify; nothing is sent)"], usage
    documented = (Path(__file__).parent.parent / "docs" / "sendmail.rst").read_text()
    for option in ("-f ADDR", "-F NAME", "-C PATH"):
        assert f"``{option}``" in documented, option


@pytest.mark.parametrize("argv", [["-C", "", "bob"], ["-C", "", "-bs"], ["-bp", "-C", ""]])
def test_an_empty_config_path_is_a_usage_error(tmp_path: Path, argv: list[str]) -> None:
    # ``sendmail -C "$CONF"`` with $CONF unset: exit 64 before stdin is
    # read, not a message sent with the default config
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    stdin, err, out = io.BytesIO(b"To: bob\n\nbody\n"), io.StringIO(), io.StringIO()
    assert run(argv, str(config), "sendmail", stdin=stdin, err=err, out=out,
               stdout=io.BytesIO()) == EX_USAGE
    assert stdin.tell() == 0 and out.getvalue() == ""
    assert err.getvalue().splitlines()[0] == (
        "sendmail: -C: the path is empty; leave the option out to read $MAILHUB_CONFIG, "
        "else /etc/txmailhub/mailhub.toml")


def _hub_config(tmp_path: Path) -> Path:
    """A config naming the primary domain and a hub on port 2525."""
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:2525"]\n')
    return config


def test_no_recipients_without_t_is_a_usage_error_before_stdin_is_read(tmp_path: Path) -> None:
    config = _hub_config(tmp_path)
    stdin, err = io.BytesIO(b"Subject: x\n\nbody\n"), io.StringIO()
    assert run([], str(config), "sendmail", stdin=stdin, err=err) == EX_USAGE
    assert stdin.tell() == 0 and "NOT sent" in err.getvalue()


@pytest.mark.parametrize("argv", [[""], ["", ","], ["undisclosed-recipients:;"], ["--", " "]])
def test_arguments_that_hold_no_address_without_t_are_a_usage_error(
        tmp_path: Path, argv: list[str]) -> None:
    # ``sendmail "$TO" < msg`` with $TO empty: no recipient and no -t is
    # exit 64 (docs/sendmail.rst), not 65 "no recipient addresses in the
    # message's To, Cc or Bcc", which -t was not asked to read
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    stdin, err = io.BytesIO(b"To: bob\n\nbody\n"), io.StringIO()
    assert run(argv, str(config), "sendmail", stdin=stdin, err=err) == EX_USAGE
    assert stdin.tell() == 0 and "NOT sent" in err.getvalue()
    assert "To, Cc or Bcc" not in err.getvalue() and "no address" in err.getvalue()
    # with -t they add nothing to what the message names
    assert run(["-t", *argv], str(config), "sendmail", stdin=io.BytesIO(b"\nbody\n"),
               err=io.StringIO()) == EX_DATAERR


# --- reading stdin ---------------------------------------------------------


def test_a_lone_dot_ends_the_message_and_what_follows_is_not_read() -> None:
    stdin = io.BytesIO(b"Subject: x\n\nline\n..two dots stay\n.\nnot mine\n")
    assert read_whole(stdin, ignore_dots=False, limit=1000) == (
        b"Subject: x\r\n\r\nline\r\n..two dots stay\r\n")
    assert stdin.read() == b"not mine\n"
    # a final "." without its line end ends it too
    assert read_whole(io.BytesIO(b"a\n."), False, 1000) == b"a\r\n"


def test_with_i_a_lone_dot_is_text() -> None:
    stdin = io.BytesIO(b"a\n.\nb\n")
    assert read_whole(stdin, ignore_dots=True, limit=1000) == b"a\r\n.\r\nb\r\n"


def test_lf_becomes_crlf_and_crlf_stays() -> None:
    assert read_whole(io.BytesIO(b"a\nb\r\nc"), True, 1000) == b"a\r\nb\r\nc\r\n"


def hub_verdict(message: bytes) -> Reply | None:
    """What the hub's DATA reader says of ``message`` as smtplib sends it
    (dot-stuffed, then the end-of-data line): None when it takes it."""
    reader = DotReader(None, 10**7)
    assert reader.feed(re.sub(rb"(?m)^\.", b"..", message) + b".\r\n") == b""
    return reader.error


def test_a_cr_without_lf_ends_a_line_so_the_hub_takes_the_message() -> None:
    # a cron job's progress meter: the hub refuses a bare CR (550 5.6.11),
    # so sent as it was the message could never be delivered
    raw = b"Subject: backup\n\n 10%\r 50%\r100%\ndone\r"
    message = read_whole(io.BytesIO(raw), True, 1000)
    assert message == b"Subject: backup\r\n\r\n 10%\r\n 50%\r\n100%\r\ndone\r\n"
    assert hub_verdict(message) is None
    assert hub_verdict(sent(prep(message, Options(recipients=("bob",))))) is None


def test_a_line_longer_than_a_read_keeps_its_crlf_and_dot_rule() -> None:
    long = b"x" * 65535 + b"\r\n"  # the CR ends one read, the LF starts the next
    message = read_whole(io.BytesIO(long + b".\n"), False, 100_000)
    assert message.replace(b"\r\n ", b"") == long  # (folded: see below)
    dots = b"." + b"y" * 70000 + b"\n"  # starts with a dot, but is no lone dot
    message = read_whole(io.BytesIO(dots), False, 100_000)
    assert message.replace(b"\r\n ", b"") == dots[:-1] + b"\r\n"


def test_a_line_over_998_octets_is_folded_so_the_hub_takes_the_message() -> None:
    # the hub refuses a line over 1000 octets with its CRLF (500 5.5.2):
    # a long log line in a cron job's output must not lose the mail
    body = b"x" * 2500 + b"\na" + "\u00e9".encode() * 600 + b"\n"  # a cut is mid-"é"
    message = read_whole(io.BytesIO(b"Subject: " + b"s" * 1200 + b"\n\n" + body), True,
                           100_000)
    assert hub_verdict(message) is None
    lines = message.split(b"\r\n")
    assert max(len(line) for line in lines) == 998
    # the field is folded before its own space first, then cut with a space added
    assert lines[:3] == [b"Subject:", b" " + b"s" * 997, b" " + b"s" * 203]
    assert all(line.startswith(b" ") for line in lines[5:7] + lines[8:9])
    for line in lines:
        line.decode("utf-8")  # no UTF-8 sequence cut in two
    assert b"\r\n".join(lines[4:]).replace(b"\r\n ", b"").split(b"\r\n") == [
        b"x" * 2500, b"a" + "\u00e9".encode() * 600, b""]
    # a line of exactly 998 octets stays whole
    assert read_whole(io.BytesIO(b"y" * 998 + b"\n"), True, 2000) == b"y" * 998 + b"\r\n"


def test_a_long_header_field_folds_at_its_white_space_and_t_reads_it_whole() -> None:
    # a script's To: line of 70 addresses: cut inside an address, -t would
    # read "user 048@..." (refused, or worse) and the recipients see it so
    to = "To: " + ", ".join(f"user{i:03d}@example.com" for i in range(70))
    subject = "Subject: " + " ".join(["word"] * 300)
    raw = f"{to}\n{subject}\nFrom: joe@example.org\n\nbody\n".encode()
    p = prep(raw, Options(extract=True))
    assert p.recipients == tuple(f"user{i:03d}@example.com" for i in range(70))
    fields = p.header.split(b"\r\n")
    assert max(len(line) for line in fields) <= 998
    # RFC 5322 2.2.3 unfolding (a CRLF before white space goes) gives each back
    unfolded = re.sub(rb"\r\n(?=[ \t])", b"", p.header).split(b"\r\n")
    assert to.encode() in unfolded and subject.encode() in unfolded


@pytest.mark.parametrize("first", ["a", "ab", "abc", "abcd"])
def test_a_long_address_field_without_white_space_is_cut_after_a_comma(first: str) -> None:
    # a script's ",".join(addresses): no white space to fold before, and a
    # cut at 998 octets wherever it fell put a space inside an address
    # ("user049@example.c om"), which -t refused (exit 65) and the
    # recipients saw; after a comma, the space changes no address
    addresses = [f"{first}@example.com", *(f"user{i:03d}@example.com" for i in range(80))]
    to = "To: " + ",".join(addresses)
    raw = f"{to}\nFrom: joe@example.org\n\nbody\n".encode()
    p = prep(raw, Options(extract=True, recipients=("ann",)))
    assert p.recipients == ("ann@example.org", *addresses)
    lines = p.header.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    (field_,) = [f for f in re.sub(rb"\r\n(?=[ \t])", b"", p.header).split(b"\r\n")
                 if f.startswith(b"To:")]
    assert field_.replace(b", ", b",") == to.encode()  # only a space after a comma added
    assert hub_verdict(untraced(p)) is None


def test_a_message_over_the_hub_limit_stops_the_read() -> None:
    with pytest.raises(MessageTooBig, match="max_message_size"):
        read_whole(io.BytesIO(b"x" * 200 + b"\n" + b"y" * 10**6), True, 100)


# --- header fields -----------------------------------------------------------


def test_t_takes_to_cc_and_bcc_and_removes_bcc() -> None:
    raw = (b"From: Joe <joe@example.org>\r\nTo: a@x.org, Bob <bob@example.net>\r\n"
           b"Cc: carol\r\nBcc: secret@y.org,\r\n  hidden@z.org\r\nSubject: hi\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\n"
           b"Bcc: in the body stays\r\n")
    p = prep(raw, Options(extract=True))
    assert p.recipients == ("a@x.org", "bob@example.net", "carol@example.org",
                            "secret@y.org", "hidden@z.org")
    assert p.sender == "joe@example.org"
    assert untraced(p) == raw.replace(b"Bcc: secret@y.org,\r\n  hidden@z.org\r\n", b"").replace(
        b"Cc: carol\r\n", b"Cc: carol@example.org\r\n")  # qualified as its recipient is


def test_t_adds_to_the_arguments_and_reads_resent_fields_when_present() -> None:
    raw = b"To: a@x.org\r\nResent-To: r@x.org\r\nResent-Bcc: rb@x.org\r\n\r\nbody\r\n"
    p = prep(raw, Options(extract=True, recipients=("arg@x.org", "r@x.org")))
    assert p.recipients == ("arg@x.org", "r@x.org", "rb@x.org")  # once each
    assert field(untraced(p), b"Resent-Bcc") == [] and field(untraced(p), b"To") == [b"To: a@x.org"]


def test_a_from_of_several_mailboxes_gets_a_sender() -> None:
    # RFC 5322 3.6.2: with more than one mailbox in From, a Sender MUST
    # name the one who sent it: the envelope sender, else the user
    raw = b"From: ann@x.org, Bob <bob@y.org>\r\nTo: c@z.org\r\n\r\nbody\r\n"
    p = prep(raw, Options(extract=True))
    assert field(untraced(p), b"Sender") == [b"Sender: joe@example.org"]
    p = prep(raw, Options(extract=True, sender="app@example.net"))
    assert field(untraced(p), b"Sender") == [b"Sender: app@example.net"]
    p = prep(raw, Options(extract=True, sender=""))  # <>: the user who ran the command
    assert field(untraced(p), b"Sender") == [b"Sender: joe@example.org"]
    assert len(field(untraced(p), b"From")) == 1
    # one mailbox, a Sender of its own, a From that cannot be read: none added
    for kept in (b"From: ann@x.org\r\n", b"From: ann@x.org, b@y.org\r\nSender: ann@x.org\r\n",
                 b"From: Ann Smith\r\n"):
        p = prep(kept + b"To: c@z.org\r\n\r\nbody\r\n", Options(extract=True))
        assert field(untraced(p), b"Sender") == field(kept, b"Sender"), kept


def test_a_resent_message_gets_the_fields_its_resent_block_lacks() -> None:
    # mutt's bounce, or -t with Resent-To: RFC 5322 3.6.6 has each resent
    # block hold a Resent-Date and a Resent-From (as Postfix adds them),
    # in front of its fields; the original's fields are left alone
    raw = (b"From: ann@x.org\r\nTo: joe@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <1@x>\r\nResent-To: bob@example.net\r\n\r\nbody\r\n")
    p = prep(raw, Options(extract=True, full_name="J. Doe"))
    assert p.recipients == ("bob@example.net",)
    lines = fields(untraced(p))
    assert lines[:4] == raw.split(b"\r\n")[:4]
    assert lines[4] == b'Resent-From: "J. Doe" <joe@example.org>'
    assert lines[5].startswith(b"Resent-Date: ") and email_date(lines[5].split(b": ", 1)[1])
    assert re.fullmatch(rb"Resent-Message-ID: <[^@>]+@mail\.example\.org>", lines[6])
    assert lines[7:] == [b"Resent-To: bob@example.net"]
    # a block that has them is left as it is; a Resent-From of two
    # mailboxes gets its Resent-Sender (RFC 5322 3.6.6: as Sender, 3.6.2)
    block = (b"Resent-From: a@x.org, b@x.org\r\nResent-Date: Tue, 2 Jan 2024 00:00:00 +0000\r\n"
             b"Resent-Message-ID: <2@x>\r\nResent-To: bob@example.net\r\n")
    p = prep(raw.replace(b"Resent-To: bob@example.net\r\n", block), Options(extract=True))
    assert fields(untraced(p))[4:] == [b"Resent-Sender: joe@example.org",
                                       *block.split(b"\r\n")[:-1]]
    # a message that is not sent on again gets no Resent- field
    p = prep(raw.replace(b"Resent-To", b"Cc"), Options(extract=True))
    assert not [line for line in fields(untraced(p)) if line.startswith(b"Resent-")]


def test_a_resent_message_s_original_from_of_several_mailboxes_gets_no_sender() -> None:
    # mutt's bounce of a message whose From names two authors and no
    # Sender: the user who sends it on is named by Resent-From (and a
    # Resent-Sender when that names several); a Sender in the original's
    # fields would say they sent the original for its authors
    raw = (b"From: ann@x.org, Bob <bob@y.org>\r\nTo: joe@example.org\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\n"
           b"Resent-To: carol@example.net\r\n\r\nbody\r\n")
    p = prep(raw, Options(extract=True))
    assert field(untraced(p), b"Sender") == []
    assert field(untraced(p), b"Resent-From") == [b"Resent-From: Joe Bloggs <joe@example.org>"]
    assert fields(untraced(p))[:4] == raw.split(b"\r\n")[:4]


@pytest.mark.parametrize("name", [b"Resent-Date", b"Resent-From", b"Resent-Sender",
                                  b"Resent-To", b"Resent-Cc", b"Resent-Bcc",
                                  b"Resent-Message-ID"])
def test_any_resent_field_marks_a_message_sent_on_again(name: bytes) -> None:
    # RFC 5322 3.6.6: each is a field of a resent block; the block gets
    # what it lacks (a Resent-From naming the user when it has none), and
    # the original's From of two authors no Sender
    raw = (b"From: ann@x.org, bob@y.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <1@x>\r\n" + name + b": carol@example.net\r\n\r\nbody\r\n")
    p = prep(raw, Options(recipients=("carol@example.net",)))
    assert field(untraced(p), b"Sender") == []
    expected = [] if name == b"Resent-From" else [b"Resent-From: Joe Bloggs <joe@example.org>"]
    assert [f for f in field(untraced(p), b"Resent-From") if b"carol" not in f] == expected
    assert field(untraced(p), b"Date") == [b"Date: Mon, 1 Jan 2024 00:00:00 +0000"]


def test_a_from_of_several_mailboxes_gets_no_sender_when_nobody_can_be_named() -> None:
    # -f '' and a login that can be no address: no Sender (and no error:
    # the message has its From)
    p = prep(b"From: a@x.org, b@x.org\r\n\r\nbody\r\n", Options(recipients=("bob",),
             sender=""), login=("joe\tsmith", ""))
    assert field(untraced(p), b"Sender") == [] and field(untraced(p), b"From") == [
        b"From: a@x.org, b@x.org"]


def test_bcc_is_removed_without_t_too() -> None:
    p = prep(b"To: a@x.org\r\nBCC: b@x.org\r\n\r\nx\r\n", Options(recipients=("a@x.org",
                "b@x.org")))
    assert field(untraced(p), b"Bcc") == [] and p.recipients == ("a@x.org", "b@x.org")


def test_a_saved_messages_return_path_and_content_length_are_removed() -> None:
    # ``sendmail -t < saved.eml``: RFC 5321 4.4 has the originating system
    # send no Return-Path (a relay passes it on, the final delivery adds
    # another); an mbox Content-Length counted LF line ends
    raw = (b"Return-Path: <old@x.org>\nDelivered-To: joe@example.org\nContent-Length: 5\n"
           b"From: ann@x.org\nTo: bob@example.org\nreturn-path : <x>\n\nbody\n")
    p = prep(raw, Options(extract=True))
    assert not field(untraced(p), b"Return-Path") and not field(untraced(p), b"Content-Length")
    assert b"return-path" not in untraced(p).lower()  # (with a blank before its colon too)
    assert field(untraced(p), b"Delivered-To") == [b"Delivered-To: joe@example.org"]
    assert untraced(p).endswith(b"\r\n\r\nbody\r\n")


def test_missing_from_date_and_message_id_are_added_and_f_name_used() -> None:
    p = prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",), full_name="J. Doe"))
    assert p.recipients == ("bob@example.org",)
    assert field(untraced(p), b"From") == [b'From: "J. Doe" <joe@example.org>']
    assert len(field(untraced(p), b"Date")) == 1
    (msgid,) = field(untraced(p), b"Message-ID")
    assert msgid.startswith(b"Message-ID: <") and msgid.endswith(b"@mail.example.org>")
    assert untraced(p).startswith(b"Subject: hi\r\n") and untraced(p).endswith(b"\r\n\r\nbody\r\n")


@pytest.mark.parametrize("name", ["Joe\nBcc: evil@x.org", "Joe\r\nBcc: evil@x.org",
                                  "Joe\rBcc: evil@x.org", "J\u00f6e\r\nBcc: evil@x.org"])
@pytest.mark.parametrize("source", ["-F", "$NAME", "password file"])
def test_a_full_name_with_line_ends_stays_in_one_from_field(
    name: str, source: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # -F, $NAME and the password file's name come from whoever runs the
    # command: a line end in one must not start a header field of its own
    # (a Bcc, which would then go out to every recipient), nor leave a
    # bare CR or LF, for which the hub refuses the message
    monkeypatch.setenv("NAME", name if source == "$NAME" else "")
    p = prep(b"Subject: hi\r\n\r\nbody\r\n",
                Options(recipients=("bob",), full_name=name if source == "-F" else None),
                SETTINGS, ("joe", name if source == "password file" else ""))
    assert hub_verdict(untraced(p)) is None
    assert not field(untraced(p), b"Bcc")
    (line,) = field(untraced(p), b"From")
    assert line.endswith(b"<joe@example.org>")
    assert b" " not in fields(untraced(p))[fields(untraced(p)).index(line) + 1][:1]  # not folded
    assert line.startswith(b'From: "Joe Bcc: evil@x.org"') or b"=?utf-8?" in line


@pytest.mark.parametrize("source", ["-F", "$NAME", "password file"])
def test_a_full_name_that_is_not_utf8_is_replaced_not_a_traceback(
    source: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "J\xf6rg" in Latin-1 in /etc/passwd (or $NAME, -F in a Latin-1
    # locale): Python hands it over with a surrogate, which no codec takes
    name = b"J\xf6rg".decode("utf-8", "surrogateescape")
    monkeypatch.setenv("NAME", name if source == "$NAME" else "")
    p = prep(b"Subject: hi\r\n\r\nbody\r\n",
                Options(recipients=("bob",), full_name=name if source == "-F" else None),
                SETTINGS, ("joe", name if source == "password file" else ""))
    (line,) = field(untraced(p), b"From")
    assert line == b"From: =?utf-8?b?Su+/vXJn?= <joe@example.org>"  # "J\ufffdrg"


def test_from_date_and_message_id_of_the_message_are_kept_and_f_ignored() -> None:
    raw = b"From: x@y.org\r\nDate: whenever\r\nMessage-Id: <a@b>\r\n\r\nbody\r\n"
    p = prep(raw, Options(recipients=("bob",), full_name="Ignored"))
    assert untraced(p) == raw


def test_the_from_name_is_the_users_own_only_for_the_users_own_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAME", raising=False)
    p = prep(b"\r\nx\r\n", Options(recipients=("bob",)))
    assert field(untraced(p), b"From") == [b"From: Joe Bloggs <joe@example.org>"]
    p = prep(b"\r\nx\r\n", Options(recipients=("bob",), sender="app@example.net"))
    assert p.sender == "app@example.net"
    assert field(untraced(p), b"From") == [b"From: app@example.net"]
    # a non-ASCII -F name is an encoded word (RFC 2047)
    p = prep(b"\r\nx\r\n", Options(recipients=("bob",), full_name="Jöe"))
    assert field(untraced(p), b"From") == [b"From: =?utf-8?q?J=C3=B6e?= <joe@example.org>"]


def test_null_sender_keeps_a_from_of_the_user() -> None:
    p = prep(b"\r\nx\r\n", Options(recipients=("bob",), sender="<>"))
    assert p.sender == ""
    assert field(untraced(p), b"From") == [b"From: Joe Bloggs <joe@example.org>"]


def test_text_without_a_header_section_gets_one_and_an_mbox_line_goes() -> None:
    p = prep(b"From joe Mon Jan  1 00:00:00 2024\r\nHi Dave -\r\n", Options(
        recipients=("bob",)))
    assert [f.split(b":")[0] for f in fields(untraced(p))] == [b"From", b"Date", b"Message-ID"]
    assert untraced(p).endswith(b">\r\n\r\nHi Dave -\r\n")
    # a header section ended by a line that is no field gets its empty line
    p = prep(b"Subject: s\r\nno field here\r\n", Options(recipients=("bob",)))
    assert untraced(p).startswith(b"Subject: s\r\nFrom: ")
    assert untraced(p).endswith(b">\r\n\r\nno field here\r\n")


@pytest.mark.parametrize("recipient", ["a@b@c", "joe@", "<>", "two words@x.org"])
def test_an_unreadable_recipient_is_an_address_error(recipient: str) -> None:
    with pytest.raises(AddressError):
        prep(b"\r\n", Options(recipients=(recipient,)))


@pytest.mark.parametrize("recipients", ["a@x.org b@y.org", "a@x.org;b@y.org",
                                        "a@x.org, Bob <b@y.org> c@z.org", "a@x.org\tb@y.org"])
def test_addresses_not_separated_by_commas_are_an_error_not_a_recipient_left_out(
    recipients: str,
) -> None:
    # the parser reads the first and skips the rest as "invalid": sent to
    # the first alone, the others would never know, and the exit was 0
    with pytest.raises(AddressError, match="commas"):
        prep(b"\r\n", Options(recipients=(recipients,)))
    with pytest.raises(AddressError, match="commas"):
        prep(b"To: c@w.org,\r\n " + recipients.encode() + b"\r\n\r\n",
                Options(extract=True))
    # what the parser reads whole still goes
    ok = prep(b"To: a@x.org, (c) b@y.org (B), g: c@z.org;, joe\r\n\r\n",
                 Options(extract=True))
    assert ok.recipients == ("a@x.org", "b@y.org", "c@z.org", "joe@example.org")


def test_bad_addresses_exit_65_before_connecting(tmp_path: Path) -> None:
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    err = io.StringIO()
    assert run(["a@b@c"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == EX_DATAERR
    assert "NOT sent" in err.getvalue() and "Connection refused" not in err.getvalue()
    err = io.StringIO()
    assert run(["-t"], str(config), "sendmail", io.BytesIO(b"Subject: x\n\n"),
               err) == EX_DATAERR
    assert "no recipient addresses" in err.getvalue()


@pytest.mark.parametrize(("argv", "raw", "said"), [
    # smtplib encodes the command line as UTF-8, which a surrogate cannot
    # be: an uncaught UnicodeEncodeError (exit 1) after connecting
    (["-t"], b"To: j\xf6rg@example.net\n\nLatin-1, not UTF-8\n", "UTF-8"),
    (["j\udcf6rg@example.net"], b"x\n", "UTF-8"),  # an argument os.fsdecode kept as a surrogate
    (["-f", "j\udcf6rg@example.org", "bob"], b"x\n", "UTF-8"),
    # the stdlib's parser raises AttributeError here
    (["-t"], b"To: .:\n\nx\n", "cannot read"),
    (["-f", ".:", "bob"], b"x\n", "cannot read"),
    (["bob", "x@y.org, .:"], b"x\n", "cannot read"),
    (["-t"], b"To: ,[b.c.,b.c@[ \n\nx\n", "cannot read"),  # ... and UnboundLocalError here
])
def test_an_address_that_cannot_be_used_exits_65_not_with_a_traceback(
    argv: list[str], raw: bytes, said: str, tmp_path: Path,
) -> None:
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    err = io.StringIO()
    assert run(argv, str(config), "sendmail", io.BytesIO(raw), err) == EX_DATAERR
    assert said in err.getvalue() and "NOT sent" in err.getvalue()


@pytest.mark.parametrize(("name", "shown"), [
    ("J\u00f6rg M\u00fcller", '"J\u00f6rg M\u00fcller"'),
    ('A "B" C\\', '"A \\"B\\" C\\\\"'),
])
def test_a_name_beside_a_utf8_address_is_a_quoted_string(name: str, shown: str) -> None:
    # the stdlib's Address refuses every non-ASCII local part: the From
    # field of -f j\u00f6rg@... -F "J\u00f6rg" was a traceback (exit 1)
    p = prep(b"Subject: hi\r\n\r\nbody\r\n",
             Options(recipients=("bob",), sender="j\u00f6rg@example.org", full_name=name))
    (line,) = field(untraced(p), b"From")
    assert line == f"From: {shown} <j\u00f6rg@example.org>".encode()
    assert hub_verdict(untraced(p)) is None


# --- where the hub is ----------------------------------------------------------


def test_targets_from_the_listen_endpoints() -> None:
    targets = hub_targets(["tcp:25", "tcp:2525:interface=127.0.0.2", "tcp:0", "tcp6:26",
                           "tcp:27:interface=192.0.2.1", "unix:/run/mailhub/smtp.sock"])
    assert targets == [Target("localhost", 0, "/run/mailhub/smtp.sock"),
                       Target("127.0.0.1", 25), Target("127.0.0.2", 2525), Target("::1", 26),
                       Target("192.0.2.1", 27)]


def test_a_config_with_no_reachable_listener_is_ex_config(tmp_path: Path) -> None:
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:0"]\n')
    err = io.StringIO()
    assert run(["bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == EX_CONFIG
    assert "[smtp] listen" in err.getvalue()
    err = io.StringIO()
    assert run(["bob"], str(tmp_path / "none.toml"), "sendmail", io.BytesIO(b""),
               err) == EX_CONFIG
    assert "cannot read the config file" in err.getvalue()


def test_the_local_view_of_the_config_ignores_what_the_user_cannot_read(
        tmp_path: Path) -> None:
    """A cron job's user cannot read the TLS key; sendmail needs only the
    [hub] and [smtp] tables."""
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      '[tls]\ncertificate = "missing.pem"\nkey = "missing.key"\n'
                      '[smtp]\nlisten = ["tcp:2525:interface=127.0.0.1"]\n'
                      'max_message_size = 1000000\n')
    settings = load_local_submission(str(config))
    assert (settings.primary_domain, settings.hostname, settings.listen,
            settings.max_message_size) == (
        "example.org", "mail.example.org", ("tcp:2525:interface=127.0.0.1",), 1000000)
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["udp:25"]\n')
    with pytest.raises(ConfigError, match=r"\[smtp\] listen"):
        load_local_submission(str(config))


# --- mailhub sendmail ----------------------------------------------------------


def test_mailhub_sendmail_takes_the_global_config_and_sendmail_options(
        tmp_path: Path) -> None:
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:0"]\n')
    for argv in (["--config", str(config), "sendmail", "-oi", "bob"],
                 [f"--config={config}", "sendmail", "-oi", "bob"],
                 ["-c", str(config), "sendmail", "-oi", "bob"]):
        err = io.StringIO()
        # the config was read (its tcp:0 is what it objects to), -oi was taken
        assert cli.main(argv, err=err) == EX_CONFIG, argv
        assert f"{config}: [smtp] listen names no listener" in err.getvalue()
    err = io.StringIO()
    assert cli.main(["--config", str(config), "sendmail", "-Z"], err=err) == EX_USAGE
    assert err.getvalue().startswith("mailhub sendmail: option -Z not recognized")


@pytest.mark.parametrize(("stage", "code", "reply", "status"), [
    ("RCPT", 550, "5.1.1 No such user here", 67),
    ("RCPT", 551, "5.1.6 User not local", 67),
    ("RCPT", 550, "5.7.1 Relaying denied", 69),
    ("RCPT", 553, "5.1.3 Bad destination mailbox address syntax", 65),
    ("RCPT", 452, "4.5.3 Too many recipients", 75),
    # [hub] mailbox_quota: the message is over a mailbox's quota itself, a
    # refusal of the message (as 552 to its size), not an unknown user
    ("RCPT", 550, "5.2.3 Message too big for this mailbox", 65),
    ("RCPT", 452, "4.2.2 Mailbox full, try again later", 75),
    ("MAIL", 501, "5.1.7 Bad sender address syntax", 65),
    ("MAIL", 421, "4.4.2 Idle timeout", 75),
    ("DATA", 552, "5.3.4 Message too big", 65),
    # RFC 1870 6.1: the size the MAIL declared is over the hub's limit (the
    # fields the command adds can take a message read within it over)
    ("MAIL", 552, "5.3.4 Message size exceeds fixed maximum message size", 65),
    ("DATA", 554, "5.6.0 Bad content", 65),
    ("DATA", 554, "5.7.0 Refused", 69),
    ("DATA", 451, "4.3.0 Try again", 75),
    ("greeting", 554, "5.3.2 No service", 69),
])
def test_replies_become_sysexits_codes(stage: str, code: int, reply: str, status: int) -> None:
    from txmailhub.sendmail_smtp import _status

    assert _status(stage, code, reply) == status


# --- the local user, on record --------------------------------------------------


def test_a_received_field_on_top_names_the_user_who_ran_the_command() -> None:
    p = prep(b"Received: by forged.example (txmailhub sendmail, from userid 0 root);\r\n"
             b" Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: hi\r\n\r\nbody\r\n",
             Options(recipients=("bob",)), login=("www-data", ""), uid=33)
    lines = fields(sent(p))
    assert re.fullmatch(rb"Received: by mail\.example\.org \(txmailhub sendmail, from userid 33 "
                        rb"www-data\);", lines[0]), lines[0]
    assert lines[1].startswith(b"\t") and email_date(lines[1].strip())
    assert lines[2].startswith(b"Received: by forged.example")  # the user's own: below ours
    assert hub_verdict(sent(p)) is None


def email_date(text: bytes) -> bool:
    import email.utils

    return email.utils.parsedate_to_datetime(text.decode()) is not None


@pytest.mark.parametrize(("login", "shown"), [("joe", "joe"), ("uid1234", "uid1234"),
                                              ("a(b)\\c\u00e9 d", "a?b??c? d")])
def test_the_login_name_cannot_break_out_of_the_comment(login: str, shown: str) -> None:
    field_text = trace_field("mail.example.org.", login, 1234, "Mon, 1 Jan 2024 00:00:00 +0000")
    assert field_text == (f"Received: by mail.example.org (txmailhub sendmail, from userid 1234 "
                          f"{shown});\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n").encode()


def test_the_uid_is_the_real_one_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.getuid", lambda: 4321)
    p = prepare(read_message(io.BytesIO(b"\n"), True, 100), Options(recipients=("bob",)),
                SETTINGS, LOGIN)
    assert b"from userid 4321 joe)" in p.header.split(b"\r\n")[0]


# --- a login name that is no Dot-string ------------------------------------------

# logins some systems allow (useradd --badname, directory services) that no
# unquoted local part has -- a Quoted-string holds them (RFC 5321 4.1.2) --
# and the ones no local part can hold: not UTF-8, empty, a control character
QUOTED_LOGINS = {"joe smith": '"joe smith"@example.org',
                 "a(b)\\c": '"a(b)\\\\c"@example.org',
                 "ann@evil.example": '"ann@evil.example"@example.org',
                 '"q"': '"\\"q\\""@example.org',
                 "<joe>": '"<joe>"@example.org',
                 "joe.": '"joe."@example.org',
                 "j\u00f6rg smith": '"j\u00f6rg smith"@example.org'}
UNUSABLE_LOGINS = ["joe\udcf6", "", "joe\tsmith", "a\x7fb", "a\x85b"]
ODD_LOGINS = [*QUOTED_LOGINS, *UNUSABLE_LOGINS]


@pytest.mark.parametrize("login", ODD_LOGINS)
def test_with_f_an_odd_login_only_names_the_user_in_the_trace(login: str) -> None:
    p = prep(b"Subject: hi\r\n\r\nbody\r\n",
             Options(recipients=("bob",), sender="joe@example.org"), login=(login, "Joe"))
    assert p.sender == "joe@example.org"
    assert field(untraced(p), b"From") == [b"From: joe@example.org"]  # not the GECOS name
    trace = trace_field("mail.example.org", login, 1000, "x").split(b"\r\n")[0]
    assert sent(p).split(b"\r\n")[0] == trace  # the login, made safe for a comment
    assert hub_verdict(sent(p)) is None


@pytest.mark.parametrize(("gecos", "name"), [
    ("Joe Bloggs,Room 1,555-0100,", "Joe Bloggs"),
    ("& Bloggs,Room 1", "Joe Bloggs"),        # BSD: & is the login, capitalized
    ("& & Co", "Joe Joe Co"),
    ("Joe Bloggs;ops", "Joe Bloggs"),          # as sendmail and Postfix stop
    ("Joe Bloggs%x", "Joe Bloggs"),
    ("", ""),
])
def test_the_full_name_is_read_from_gecos_as_sendmail_and_postfix_do(
        gecos: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from txmailhub import sendmail

    entry = pwd.struct_passwd(("joe", "x", 1000, 1000, gecos, "/home/joe", "/bin/sh"))
    monkeypatch.setattr(sendmail.pwd, "getpwuid", lambda uid: entry)
    assert sendmail._login() == ("joe", name)
    monkeypatch.delenv("NAME", raising=False)
    p = prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",)),
             login=sendmail._login())
    assert field(untraced(p), b"From") == [
        f"From: {name} <joe@example.org>".encode() if name else b"From: joe@example.org"]


@pytest.mark.parametrize(("login", "name"), [
    ("ßen", "Ssen Co"),        # upper case would be "SSen"
    ("ǆemal", "ǅemal Co"),     # the title-case letter, not the capital "Ǆ"
    ("élodie", "Élodie Co"),
    ("", " Co"),               # no login name: the & is left out
])
def test_gecos_ampersand_capitalizes_a_login_first_letter_in_title_case(
        login: str, name: str) -> None:
    from txmailhub.sendmail import _gecos_name

    assert _gecos_name("& Co,Room 1", login) == name


@pytest.mark.parametrize(("login", "sender"), QUOTED_LOGINS.items())
def test_a_login_that_is_no_dot_string_is_quoted_as_the_default_sender(
        login: str, sender: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import email.policy

    from txmailhub.smtp._parse import parse_mail

    monkeypatch.delenv("NAME", raising=False)
    p = prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",)),
             login=(login, "Joe Bloggs"))
    assert p.sender == sender
    # the hub reads it back as the same address (a UTF-8 one under SMTPUTF8)
    utf8 = "" if sender.isascii() else " SMTPUTF8"
    assert str(parse_mail(f"FROM:<{sender}>{utf8}", "example.org")[0]) == sender
    # and the From field added names it, as a mail reader reads it
    (line,) = field(untraced(p), b"From")
    assert line.endswith(f"<{sender}>".encode())
    (read,) = email.policy.default.header_factory("From", line[6:].decode()).addresses
    assert (read.username, read.domain) == (login, "example.org")
    assert hub_verdict(sent(p)) is None
    # a null sender's message without a From gets the same address there
    p = prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",), sender=""),
             login=(login, ""))
    assert p.sender == "" and field(untraced(p), b"From") == [f"From: {sender}".encode()]


@pytest.mark.parametrize("login", UNUSABLE_LOGINS)
def test_a_login_no_local_part_can_hold_cannot_be_the_default_sender(login: str) -> None:
    with pytest.raises(LoginNotAddress, match="-f ADDRESS"):
        prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",)),
             login=(login, ""))
    # nor the From of a null sender's message that has none (it names a mailbox)
    with pytest.raises(LoginNotAddress):
        prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",), sender=""),
             login=(login, ""))
    p = prep(b"From: joe@example.org\r\n\r\nbody\r\n",
             Options(recipients=("bob",), sender=""), login=(login, ""))
    assert p.sender == ""


@pytest.mark.parametrize(("login", "sender"), [("joe", "joe@example.org"),
                                                ("j\u00f6rg", "j\u00f6rg@example.org"),
                                                ("www-data", "www-data@example.org"),
                                                ("o'neil+x", "o'neil+x@example.org")])
def test_a_login_that_is_a_local_part_is_the_default_sender(login: str, sender: str) -> None:
    p = prep(b"\r\n", Options(recipients=("bob",)), login=(login, ""))
    assert p.sender == sender


def test_a_null_sender_s_odd_login_is_told_to_add_a_from_field() -> None:
    # -f '' was given: the login would be the From field's address, not the
    # sender's, so "give -f ADDRESS" would send the user the wrong way
    with pytest.raises(LoginNotAddress) as raised:
        prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",), sender=""),
             login=("joe\tsmith", ""))
    said = str(raised.value)
    assert "From field" in said and "-f ADDRESS" not in said
    # a message sent on again that has its From, not its Resent-From
    with pytest.raises(LoginNotAddress) as raised:
        prep(b"From: a@x.org\r\nResent-To: b@x.org\r\n\r\nbody\r\n",
             Options(recipients=("bob",), sender=""), login=("joe\tsmith", ""))
    assert "give the message a Resent-From field" in str(raised.value)


def test_an_unusable_login_without_f_exits_67_before_connecting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    monkeypatch.setattr("txmailhub.sendmail._login", lambda: ("joe\tsmith", ""))
    err = io.StringIO()
    assert run(["bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == EX_NOUSER
    said = err.getvalue()
    assert "'joe\\x{9}smith'" in said and "-f ADDRESS" in said and "NOT sent" in said
    assert "Connection refused" not in said


# --- mailq and newaliases ----------------------------------------------------------


def test_bp_and_bi_are_modes() -> None:
    assert parse_args(["-bp"]).mode == "p"
    assert parse_args(["-bi"]).mode == "i"
    assert parse_args(["-bm", "bob"]).mode == parse_args(["bob"]).mode == "m"


def test_capital_i_is_bi_as_in_sendmail_and_postfix() -> None:
    """``sendmail -I`` is how sendmail and Postfix spell ``newaliases``
    too: a package script that runs it gets exit 0, not a usage error."""
    assert parse_args(["-I"]).mode == "i"
    out, err = io.StringIO(), io.StringIO()
    assert run(["-I"], "/nonexistent.toml", "sendmail", io.BytesIO(b""), err, out) == 0
    assert "nothing to rebuild" in out.getvalue() and err.getvalue() == ""


@pytest.mark.parametrize("argv", [["-I", "bob"], ["-bi", "bob"], ["-bi", "--", "bob"],
                                  ["-Ii", "-f", "app", "bob"]])
def test_a_recipient_with_bi_is_a_usage_error(argv: list[str]) -> None:
    """``sendmail -I bob < msg`` (meant as ``-i``) exited 0 and sent
    nothing; Postfix refuses a recipient in this mode (EX_USAGE).  The
    message is not read."""
    stdin, out, err = io.BytesIO(b"Subject: x\n\nbody\n"), io.StringIO(), io.StringIO()
    assert run(argv, "/nonexistent.toml", "sendmail", stdin, err, out) == EX_USAGE
    assert stdin.tell() == 0 and out.getvalue() == ""
    assert err.getvalue().splitlines()[0] == (
        "sendmail: bob: -bi and -I (newaliases) take no recipient; -i is the option "
        "that keeps a line of a single dot in the message")


def test_bi_says_there_is_nothing_to_rebuild_without_a_config() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(["-bi"], "/nonexistent.toml", "newaliases", io.BytesIO(b""), err, out) == 0
    assert out.getvalue().count("\n") == 1 and "nothing to rebuild" in out.getvalue()
    assert err.getvalue() == ""


def test_bp_lists_the_queue_as_mailhub_queue_list_does(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from txmailhub.address import Address
    from txmailhub.config import load
    from txmailhub.envelope import Envelope, SpooledMessage
    from txmailhub.relay.queue import OutboundQueue

    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\nstate_dir = "state"\n'
                      '[smtp]\nlisten = ["tcp:2525"]\n')
    out, err = io.StringIO(), io.StringIO()
    assert run(["-bp"], str(config), "mailq", io.BytesIO(b""), err, out) == 0
    # no queue yet: the line Postfix's mailq prints, which its scripts look for
    assert (out.getvalue(), err.getvalue()) == ("Mail queue is empty\n", "")
    clock = Clock()
    # the wall clock, as the hub's: a retry time written by a clock far
    # ahead is listed as the schedule's step from the moment of listing
    clock.advance(time.time())
    queue = OutboundQueue(load(str(config)).queue_dir, clock)
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    for rcpt in ("bob", "carol"):
        queue.enqueue(Envelope(sender=Address("alice", "example.org"),
                               recipients=(Address(rcpt, "remote.test"),)),
                      SpooledMessage(str(spool), 17, 20))
    listed = io.StringIO()
    assert cli.main(["--config", str(config), "queue", "list"], out=listed) == 0
    assert len(listed.getvalue().splitlines()) == 2
    for argv in (["-bp"], ["-bp", "-v"], ["-C", str(config), "-bp"]):
        out = io.StringIO()
        assert run(argv, str(config), "mailq", io.BytesIO(b""), err, out) == 0
        assert out.getvalue() == listed.getvalue()
    out = io.StringIO()
    assert cli.main(["--config", str(config), "sendmail", "-bp"], out=out) == 0
    assert out.getvalue() == listed.getvalue()
    # emptied again: the same line as before anything was queued
    for qid in queue.ids():
        queue.delete(qid)
    out = io.StringIO()
    assert run(["-bp"], str(config), "mailq", io.BytesIO(b""), err, out) == 0
    assert (out.getvalue(), err.getvalue()) == ("Mail queue is empty\n", "")


def test_bp_into_a_reader_that_went_away_is_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ``mailq | head -1``: the queue was read; the output is what failed.
    # No "cannot read the queue: Broken pipe" (as mailhub queue list).
    class GoneReader(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    listed = []

    def listing(settings: object, out: io.StringIO) -> int:
        listed.append(True)
        print("1A3185C5000000DBD alice@example.org bob@remote.test 0 - -", file=out)
        return 1

    monkeypatch.setattr("txmailhub.relay.admin.list_queue", listing)
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\nstate_dir = "state"\n')
    err = io.StringIO()
    assert run(["-bp"], str(config), "mailq", io.BytesIO(b""), err, GoneReader()) == EX_IOERR
    assert listed == [True]  # the reader went away during the listing itself
    assert err.getvalue() == ""


def test_a_default_config_that_cannot_be_read_says_why_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # a cron job's sendmail on a machine with no /etc/txmailhub/mailhub.toml:
    # the line named that file alone, as if the command had asked for it,
    # where ``mailhub`` and ``twistd mailhub`` say that none was given
    from txmailhub import sendmail

    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("MAILHUB_CONFIG", str(missing))
    monkeypatch.setattr("txmailhub.cli.DEFAULT_CONFIG", str(missing))
    note = (f"no -C PATH given: reading {missing} "
            "($MAILHUB_CONFIG, else /etc/txmailhub/mailhub.toml)")
    why = f"{missing}: cannot read the config file: No such file or directory"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Subject: x\n\ny\n")))
    for argv, lines in (
        (["/usr/sbin/sendmail", "joe"], [note, why, "the message was NOT sent"]),
        (["/usr/bin/mailq"], [note, why]),
        (["/usr/sbin/sendmail", "-C", str(missing), "joe"], [why, "the message was NOT sent"]),
    ):
        monkeypatch.setattr("sys.argv", argv)
        assert sendmail.main() == EX_CONFIG
        prog = argv[0].rsplit("/", 1)[1]
        assert capsys.readouterr().err.splitlines() == [f"{prog}: {line}" for line in lines]
    # -bs: on standard error, the SMTP client gets its 421 as before
    out = io.BytesIO()
    assert run(["-bs"], str(missing), "sendmail", io.BytesIO(b"QUIT\r\n"), io.StringIO(),
               stdout=out, config_option="-C") == EX_CONFIG
    assert out.getvalue().startswith(b"421 ")
    err = io.StringIO()
    run(["-bs"], str(missing), "sendmail", io.BytesIO(b"QUIT\r\n"), err, stdout=io.BytesIO(),
        config_option="-C")
    assert err.getvalue().splitlines() == [f"sendmail: {note}", f"sendmail: {why}"]
    # mailhub sendmail names mailhub's own option
    err = io.StringIO()
    assert cli.main(["sendmail", "joe"], out=io.StringIO(), err=err,
                    stdin=io.TextIOWrapper(io.BytesIO(b"x\n"))) == EX_CONFIG
    assert err.getvalue().splitlines()[0] == (
        f"mailhub sendmail: no --config PATH given: reading {missing} "
        "($MAILHUB_CONFIG, else /etc/txmailhub/mailhub.toml)")


def test_installed_as_mailq_or_newaliases_it_is_bp_or_bi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from txmailhub import sendmail

    config = _hub_config(tmp_path)
    monkeypatch.setenv("MAILHUB_CONFIG", str(config))
    monkeypatch.setattr("txmailhub.cli.DEFAULT_CONFIG", str(config))
    seen = []
    monkeypatch.setattr(sendmail, "_list_queue", lambda *a: seen.append(a) or 0)
    monkeypatch.setattr("sys.argv", ["/usr/bin/mailq"])
    assert sendmail.main() == 0 and len(seen) == 1
    monkeypatch.setattr("sys.argv", ["/usr/bin/newaliases"])
    assert sendmail.main() == 0 and "nothing to rebuild" in capsys.readouterr().out


def test_python_m_txmailhub_sendmail_is_the_command() -> None:
    """``python -m txmailhub.sendmail`` runs the command (as ``python -m
    txmailhub`` runs ``mailhub``): a module run that did nothing would end
    with status 0, and the message given it would be lost unsaid."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "txmailhub.sendmail"]
    r = subprocess.run([*command, "-Q", "bob"], input=b"x\n", capture_output=True, timeout=60)
    assert r.returncode == 64, r
    assert r.stderr.decode().startswith("sendmail: option -Q not recognized\nusage: sendmail ")
    r = subprocess.run([*command, "-bi"], capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, b""), r
    assert r.stdout.decode().startswith("sendmail: nothing to rebuild")


def test_bp_on_a_queue_this_user_cannot_read_is_77(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object) -> int:
        raise PermissionError(13, "Permission denied", str(tmp_path / "state" / "queue"))

    monkeypatch.setattr("txmailhub.relay.admin.list_queue", denied)
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\nstate_dir = "state"\n')
    err = io.StringIO()
    assert run(["-bp"], str(config), "mailq", io.BytesIO(b""), err, io.StringIO()) == 77
    assert err.getvalue() == (
        f"mailq: cannot read the queue: {tmp_path / 'state' / 'queue'}: Permission denied "
        "(it belongs to the user the hub runs as; run mailq as that user or root)\n")
    # the owner named when state_dir tells it, as mailhub queue names it
    from txmailhub.hub_access import name_of

    (tmp_path / "state").mkdir()
    user = name_of(os.geteuid())
    run_as = "root" if user == "root" else f"{user} or root"
    err = io.StringIO()
    assert run(["-bp"], str(config), "mailq", io.BytesIO(b""), err, io.StringIO()) == 77
    assert err.getvalue() == (
        f"mailq: cannot read the queue: {tmp_path / 'state' / 'queue'}: Permission denied "
        f"(it belongs to {user}, the user the hub runs as; run mailq as {run_as})\n")


@pytest.mark.parametrize("good", [b"", b"Subject: x\n\nthe first line\n"])
def test_a_standard_input_that_cannot_be_read_is_74_not_75(tmp_path: Path, good: bytes) -> None:
    # ``sendmail joe 0>file`` (opened for writing only: EBADF), a terminal
    # that hung up (EIO): as for ``<&-``, trying again later cannot help
    class Unreadable(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            if not line:
                raise OSError(9, "Bad file descriptor")
            return line

    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    err = io.StringIO()
    assert run(["bob"], str(config), "sendmail", Unreadable(good), err) == EX_IOERR
    assert err.getvalue() == ("sendmail: cannot read standard input: Bad file descriptor; "
                              "the message was NOT sent\n")


def test_no_room_for_the_spool_is_75_before_connecting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr("txmailhub.sendmail_input.SPOOL_IN_MEMORY", 100)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    err = io.StringIO()
    assert run(["-oi", "bob"], str(config), "sendmail", io.BytesIO(b"x\n" * 200), err) == 75
    assert "cannot read and spool the message" in err.getvalue()
    assert "NOT sent" in err.getvalue() and "Connection refused" not in err.getvalue()


@pytest.mark.parametrize("argv", [["-q"], ["-q1h"], ["-q", "30m"]])
def test_q_says_the_hub_runs_its_own_queue_however_it_is_spelled(argv: list[str]) -> None:
    # `sendmail -q` (run the queue now), the commonest spelling, was
    # getopt's "option -q requires argument", as if `-q VALUE` would work
    with pytest.raises(UsageError, match="the hub runs its own queue; see mailhub queue flush"):
        parse_args(argv)


# --- quoted local parts the user types ----------------------------------------

#: what the user writes -> the address the envelope carries (the hub's
#: canonical form: quotes kept only where a Dot-string cannot be the local part)
QUOTED_ADDRESSES = {
    '"joe smith"@example.org': '"joe smith"@example.org',
    '"odd name"': '"odd name"@example.org',  # bare: the primary domain
    '"a\\"b\\\\c"@example.net': '"a\\"b\\\\c"@example.net',
    '"joe"@example.org': "joe@example.org",  # a quoted Dot-string is the Dot-string
    '"ann@home"@example.org': '"ann@home"@example.org',
    '"a\\ b"@example.org': '"a b"@example.org',  # a needless quoted-pair dropped
    '"j\u00f6rg m"@example.org': '"j\u00f6rg m"@example.org',  # UTF-8 (SMTPUTF8)
    'Odd <"odd name"@example.org>': '"odd name"@example.org',
    '"odd name"@example.org (a comment)': '"odd name"@example.org',
    '""@example.org': '""@example.org',  # RFC 5321's Quoted-string may be empty
    '<@relay.example:"odd name"@example.org>': '"odd name"@example.org',  # a route dropped
}


def hub_reads(address: str, sender: bool = False) -> str:
    """``address`` as the hub's MAIL or RCPT reads it back (SMTPUTF8 when
    it is not ASCII, as the command asks for it then)."""
    from txmailhub.smtp._parse import parse_mail, parse_rcpt

    utf8 = not address.isascii()
    if sender:
        return str(parse_mail(f"FROM:<{address}>{' SMTPUTF8' if utf8 else ''}",
                              "example.org")[0])
    return str(parse_rcpt(f"TO:<{address}>", "example.org", utf8)[0])


@pytest.mark.parametrize(("typed", "envelope"), QUOTED_ADDRESSES.items())
def test_a_quoted_local_part_is_read_everywhere_an_address_is(typed: str, envelope: str) -> None:
    # -f, a recipient argument, and with -t the To, Cc and Bcc fields
    p = prep(b"To: " + typed.encode() + b"\r\nCc: bob, " + typed.encode()
             + b"\r\nBcc: " + typed.encode() + b"\r\n\r\nbody\r\n",
             Options(recipients=(typed, f"ann, {typed}"), sender=typed, extract=True))
    assert p.sender == envelope
    assert p.recipients == (envelope, "ann@example.org", "bob@example.org")
    # the hub takes each as it is sent, and reads it as the same address
    assert hub_reads(p.sender, sender=True) == envelope
    assert hub_reads(envelope) == envelope
    # the From field added names the sender as -f gave it
    (line,) = field(untraced(p), b"From")
    assert line.endswith(f"<{envelope}>".encode()) or line == f"From: {envelope}".encode()
    assert hub_verdict(untraced(p)) is None


def test_f_with_a_quoted_local_part_and_a_full_name() -> None:
    p = prep(b"Subject: hi\r\n\r\nbody\r\n",
             Options(recipients=("bob",), sender='"joe smith"@example.org',
                     full_name="Joe Smith"))
    (line,) = field(untraced(p), b"From")
    assert line == b'From: Joe Smith <"joe smith"@example.org>'


@pytest.mark.parametrize("typed", [
    '"a\tb"@example.org',   # a control character, quoted or not (RFC 5321 4.1.2)
    '"a\x01b"@example.org',
    '"a\x7fb"@example.org',
    '"a\x85b"@example.org',  # a C1 control
    '"ab@example.org',      # an unbalanced quote
    'ab"@example.org',
    '"a"b"@example.org',
    '"a b" c@example.org',  # a quoted string and an atom: no local part
    '"a b"."c"@example.org',  # obs-local-part: no SMTP path can carry it
    '"a b"@',
    '"' + "a " * 130 + '"@example.org',  # over the 256 octets of a path the hub takes
    '"' + "a " * 123 + '"',  # ... with the primary domain it gets
    '"a\\\u00f6b"@example.org',  # a quoted-pair is a backslash and printable ASCII
])
def test_what_rfc_5321_forbids_in_a_quoted_local_part_is_refused(typed: str) -> None:
    for options, raw in [(Options(recipients=(typed,)), b"\r\n"),
                         (Options(recipients=("bob",), sender=typed), b"\r\n"),
                         (Options(extract=True), f"To: {typed}\r\n\r\n".encode())]:
        with pytest.raises(AddressError):
            prep(raw, options)


def test_a_bad_quoted_local_part_exits_65_before_connecting(tmp_path: Path) -> None:
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    err = io.StringIO()
    assert run(["-f", '"a\tb"@example.org', "bob"], str(config), "sendmail",
               io.BytesIO(b"x\n"), err) == EX_DATAERR
    assert "NOT sent" in err.getvalue() and "Connection refused" not in err.getvalue()


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1, max_size=60))
def test_any_printable_local_part_quoted_is_sent_as_the_hub_reads_it(local: str) -> None:
    from txmailhub.smtp._parse import parse_rcpt

    typed = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"@example.org'
    (envelope,) = prep(b"\r\n", Options(recipients=(typed,))).recipients
    address = parse_rcpt(f"TO:<{envelope}>", "example.org")[0]
    assert str(address) == envelope  # the hub's canonical form, as it is
    quoted = address.local
    if quoted.startswith('"'):
        quoted = re.sub(r"\\(.)", r"\1", quoted[1:-1])
    assert quoted == local and address.domain == "example.org"


def test_bp_with_standard_output_closed_is_74_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ``mailq >&-``: sys.stdout is None; the listing's flush was a traceback
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\nstate_dir = "state"\n')
    monkeypatch.setattr("sys.stdout", None)
    err = io.StringIO()
    assert run(["-bp"], str(config), "mailq", io.BytesIO(b""), err) == EX_IOERR
    assert err.getvalue() == "mailq: standard output is closed: nowhere to list the queue\n"


def test_a_message_with_standard_input_closed_is_74_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ``sendmail joe <&-`` (a cron job's or daemon's closed descriptor):
    # sys.stdin is None, and reading it was an AttributeError, exit 1
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\nstate_dir = "state"\n'
                      '[smtp]\nlisten = ["tcp:2525"]\n')
    monkeypatch.setattr("sys.stdin", None)
    err = io.StringIO()
    assert run(["joe"], str(config), "sendmail", err=err) == EX_IOERR
    assert err.getvalue() == ("sendmail: standard input is closed: there is no message to "
                              "read; the message was NOT sent\n")


def test_bp_bounds_a_clock_set_back_by_the_configured_schedule(tmp_path: Path,
                                                               monkeypatch) -> None:
    # mailq reads [relay] retry_schedule too: an entry whose retry time a
    # clock a day ahead wrote is due its first step (2 minutes) from now,
    # as the hub keeps it, not the default schedule's minute
    import dataclasses

    from twisted.internet.task import Clock

    from txmailhub.address import Address
    from txmailhub.config import load
    from txmailhub.envelope import Envelope, SpooledMessage
    from txmailhub.relay import admin
    from txmailhub.relay.queue import OutboundQueue
    from txmailhub.relay.schedule import utc_text

    now = 1_800_000_000.0
    monkeypatch.setattr(admin._WallClock, "seconds", staticmethod(lambda: now))
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\nstate_dir = "state"\n'
                      '[smtp]\nlisten = ["tcp:2525"]\n'
                      '[relay]\nretry_schedule = ["2m", "10m"]\n')
    clock = Clock()
    clock.advance(now)
    queue = OutboundQueue(load(str(config)).queue_dir, clock)
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    qid = queue.enqueue(Envelope(sender=Address("alice", "example.org"),
                                 recipients=(Address("bob", "remote.test"),)),
                        SpooledMessage(str(spool), 17, 20)).result
    queue.update(qid, lambda e: dataclasses.replace(e, attempts=1, next_attempt=now + 86400))
    out, err = io.StringIO(), io.StringIO()
    assert run(["-bp"], str(config), "mailq", io.BytesIO(b""), err, out) == 0
    assert utc_text(now + 120) in out.getvalue(), out.getvalue()


def _from_field(p: Prepared, field: bytes = b"From") -> bytes:
    """The added From (``field``) field, its continuation lines included (CRLF kept)."""
    head = untraced(p).split(b"\r\n\r\n", 1)[0] + b"\r\n"
    return re.search(rb"^" + field + rb":.*\r\n(?:[ \t].*\r\n)*", head, re.M).group()


@pytest.mark.parametrize("name", [
    "Jürgen Müller-Lüdenscheidt von und zu Großbürgerhausen",
    "Ü" * 400,
    "Joe " * 60 + "Bloggs",
    "x" * 1200,
    "Doe, " + "Jane " * 50,
])
@pytest.mark.parametrize("field", [b"From", b"Resent-From"])
def test_a_long_full_name_gives_a_from_field_of_short_lines_and_short_words(name, field) -> None:
    # RFC 2047 2: an encoded word is at most 75 characters, a line with
    # one at most 76; RFC 5322 2.1.1: a line at most 998 (78 SHOULD), and
    # a field folds at its blanks (2.2.3).  One encoded word of the whole
    # name made a 1096-octet line of a 400-letter name, which the hub
    # refuses; the reader gets the name back all the same
    # (a Resent-From, for a message sent on again, has a longer name before it)
    raw = (b"Resent-To: bob" if field == b"Resent-From" else b"Subject: hi") + b"\r\n\r\nbody\r\n"
    p = prep(raw, Options(recipients=("bob",), full_name=name))
    text = _from_field(p, field)
    assert text.isascii()
    lines = text[:-2].split(b"\r\n")
    assert all(len(line) <= 76 for line in lines), [len(line) for line in lines]
    assert all(line.strip() for line in lines)
    assert all(len(w) <= 75 for w in re.findall(rb"=\?[^?]*\?[bBqQ]\?[^?]*\?=", text))
    assert hub_verdict(untraced(p)) is None
    # decoded as RFC 2047 6.2 says (the blanks between two encoded words
    # go; the stdlib's header registry keeps them)
    value = text.decode("ascii").replace("\r\n", "")[len(field) + 2:]
    shown, _, address = value.rpartition(" ")
    assert address == "<joe@example.org>"
    decoded = str(make_header(decode_header(shown)))
    assert decoded in (name.strip(), f'"{name.strip()}"')


def test_a_long_full_name_beside_a_utf8_address_is_folded_at_its_blanks() -> None:
    # RFC 6532: the name goes as UTF-8 in a quoted string; folded at its
    # blanks (RFC 5322 3.2.4 allows FWS inside a quoted string)
    name = "Jürgen " * 60 + "Müller"
    p = prep(b"Subject: hi\r\n\r\nbody\r\n",
             Options(recipients=("bob",), sender="jürgen@example.org", full_name=name))
    text = _from_field(p)
    lines = text[:-2].split(b"\r\n")
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert text.replace(b"\r\n", b"") == f'From: "{name}" <jürgen@example.org>'.encode()


@pytest.mark.parametrize("hostname", ["mail.example.org", "mail.example.org.", "[192.0.2.1]"])
def test_the_added_date_and_message_id_are_rfc_5322_syntax(hostname) -> None:
    # RFC 5322 3.3: date-time with a numeric zone (+hhmm / -hhmm); 3.6.4:
    # "<" id-left "@" id-right ">" without blanks, id-right a dot-atom-text
    # (no root's dot) or a literal
    settings = LocalSubmission(path="/x.toml", hostname=hostname, domains=("example.org",),
                               listen=("tcp:25",), max_message_size=10_000)
    p = prep(b"Subject: hi\r\n\r\nbody\r\n", Options(recipients=("bob",)), settings)
    (date,) = field(sent(p), b"Date")
    assert re.fullmatch(rb"Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
                        rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
                        rb"[0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}", date), date
    (msgid,) = field(sent(p), b"Message-ID")
    atom = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    right = rb"\[[!-Z^-~]*\]" if hostname.startswith("[") else atom + rb"(?:\." + atom + rb")*"
    assert re.fullmatch(rb"Message-ID: <" + atom + rb"(?:\." + atom + rb")*@" + right + rb">",
                        msgid), msgid
    assert re.match(rb"Received: by " + re.escape(hostname.rstrip(".").encode()) + rb" \(",
                    sent(p))


def _break_prepare(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    from txmailhub import sendmail

    def prepare(*args: object, **kwargs: object) -> Prepared:
        raise error

    monkeypatch.setattr(sendmail, "prepare", prepare)


def test_an_internal_error_is_70_with_one_line_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # cron, PHP's mail() and scripts read sysexits(3) codes: a traceback's
    # status 1 is none of them; 70 is EX_SOFTWARE
    config = _hub_config(tmp_path)
    _break_prepare(monkeypatch, RuntimeError("no such\nthing"))
    err = io.StringIO()
    assert run(["bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70
    assert err.getvalue() == ("sendmail: internal error (a bug in the command): RuntimeError: "
                              "no such\\x{A}thing (-v shows where)\n")
    # mailhub sendmail is the same command
    err = io.StringIO()
    assert cli.main(["--config", str(config), "sendmail", "bob"], out=io.StringIO(), err=err,
                    stdin=io.TextIOWrapper(io.BytesIO(b"x\n"))) == 70
    assert err.getvalue().startswith("mailhub sendmail: internal error (a bug in the command): "
                                     "RuntimeError: "), err.getvalue()
    # -v: the traceback follows the line
    err = io.StringIO()
    assert run(["-v", "bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70
    first, *rest = err.getvalue().splitlines()
    assert first == ("sendmail: internal error (a bug in the command): RuntimeError: "
                     "no such\\x{A}thing")
    assert rest[0] == "Traceback (most recent call last):" and "in prepare" in err.getvalue()
    # the exception's text escaped as on the line above: not raw in the traceback
    assert rest[-1] == "RuntimeError: no such\\x{A}thing"


def test_the_traceback_of_v_lets_no_control_of_the_exceptions_text_reach_the_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an exception's text may hold what the command read (a header line):
    # an ESC in it would drive the terminal the traceback is read on
    config = _hub_config(tmp_path)
    _break_prepare(monkeypatch, ValueError("Subject: \x1b]0;owned\x07\rx\u202e"))
    err = io.StringIO()
    assert run(["-v", "bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70
    text = err.getvalue()
    assert not any(c in text for c in "\x1b\x07\r\u202e"), text
    assert text.splitlines()[-1] == (
        "ValueError: Subject: \\x{1B}]0;owned\\x{7}\\x{D}x\\x{202E}")


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
def test_ctrl_c_and_system_exit_keep_their_meaning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    config = _hub_config(tmp_path)
    _break_prepare(monkeypatch, error)
    err = io.StringIO()
    with pytest.raises(type(error)):
        run(["bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err)
    assert err.getvalue() == ""


@pytest.mark.parametrize("field", [b"From", b"Resent-From"])
@pytest.mark.parametrize("length", [76, 77])
def test_an_added_from_field_is_one_line_up_to_76_octets(field: bytes, length: int) -> None:
    # counted with the field's own name: "Resent-From: " is 7 octets longer
    room = length - len(field) - len(b": ") - len(b" <joe@example.org>")
    name = ("Jo " * 40)[:room].rstrip() + "x" * (room - len(("Jo " * 40)[:room].rstrip()))
    raw = (b"Resent-To: bob" if field == b"Resent-From" else b"Subject: hi") + b"\r\n\r\nbody\r\n"
    p = prep(raw, Options(recipients=("bob",), full_name=name))
    text = _from_field(p, field)
    lines = text[:-2].split(b"\r\n")
    assert all(len(line) <= 76 for line in lines), lines
    assert (len(lines) == 1) == (length == 76), lines
    assert len(b" ".join(line.strip() for line in lines)) == length


def test_a_long_name_beside_a_utf8_address_is_folded_for_its_field() -> None:
    # a quoted name beside a UTF-8 address (RFC 6532), folded to lines of
    # at most 76 octets, the first counted after "Resent-From: "
    raw = b"From: ann@x.org\r\nResent-To: bob\r\n\r\nbody\r\n"
    p = prep(raw, Options(recipients=("bob",), sender="j\u00f6rg@example.org",
                          full_name="J\u00f6rg " * 20))
    text = _from_field(p, b"Resent-From")
    lines = text[:-2].split(b"\r\n")
    assert len(lines) > 1 and all(len(line) <= 76 for line in lines), lines
    assert text.startswith('Resent-From: "J\u00f6rg J\u00f6rg'.encode())


def test_an_internal_error_without_text_is_named_by_its_type_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _hub_config(tmp_path)
    _break_prepare(monkeypatch, RuntimeError())
    err = io.StringIO()
    assert run(["bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70
    assert err.getvalue() == ("sendmail: internal error (a bug in the command): RuntimeError "
                              "(-v shows where)\n")


def test_an_internal_error_of_the_command_line_reading_is_70_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the line about it reads the command line again for -v: a second
    # failure there must not take the place of the first
    from txmailhub import sendmail

    def parse_args(argv: list[str]) -> object:
        raise RuntimeError("the options")

    monkeypatch.setattr(sendmail, "parse_args", parse_args)
    err = io.StringIO()
    assert run(["bob"], str(tmp_path / "mailhub.toml"), "sendmail", io.BytesIO(b"x\n"),
               err) == 70
    assert err.getvalue() == ("sendmail: internal error (a bug in the command): RuntimeError: "
                              "the options (-v shows where)\n")


def test_an_internal_error_with_standard_error_closed_is_still_70(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _hub_config(tmp_path)
    _break_prepare(monkeypatch, RuntimeError("broken"))
    err = io.StringIO()
    err.close()  # a write: ValueError
    assert run(["bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70


def test_recipients_that_aliases_lead_to_one_mailbox_are_put_side_by_side(
        tmp_path: Path) -> None:
    # the hub's own router reads the aliases: an alias goes beside a
    # mailbox it reaches through another alias (staff, team, ann), and
    # beside another spelling of its member (Joe, JOE); an alias beside the
    # remote address it forwards to; the others keep their places
    aliases = tmp_path / "aliases"
    aliases.write_text("staff: Joe, team\nteam: ann\nfwd: carol@elsewhere.test\n"
                       "loop1: loop2\nloop2: loop1\n")
    settings = LocalSubmission(path="/x.toml", hostname="mail.example.org",
                               domains=("example.org", "example.net"), listen=("tcp:25",),
                               max_message_size=10_000, aliases_file=str(aliases),
                               max_recipients=2)
    argv = ("r1", "ann", "r2", "carol@elsewhere.test", "staff", "loop1", "fwd", "JOE",
            "joe@example.net")
    p = prep(b"x\r\n", Options(recipients=argv), settings)
    assert p.recipients == (
        "r1@example.org", "ann@example.org", "staff@example.org", "JOE@example.org",
        "r2@example.org", "carol@elsewhere.test", "fwd@example.org", "loop1@example.org",
        "joe@example.net")
    assert p.groups == (1, 3, 1, 2, 1, 1)
    # no aliases file, none that can be read, or no alias among the
    # recipients: each is a run of its own, in the order given
    for unread in (None, str(tmp_path / "gone"), str(tmp_path)):
        p = prep(b"x\r\n", Options(recipients=argv), replace(settings, aliases_file=unread))
        assert p.groups == () and p.recipients[:3] == ("r1@example.org", "ann@example.org",
                                                       "r2@example.org")
    assert prep(b"x\r\n", Options(recipients=("r1", "r2", "loop1")), settings).groups == ()


def test_a_list_that_fits_in_one_transaction_is_kept_as_given_and_reads_no_aliases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the hub merges a transaction's recipients itself: the command read
    # the aliases file (loading Twisted for the router, a time every run
    # paid) and reordered the list for a single transaction all the same
    import txmailhub.router

    def no_router(*args: object) -> None:
        raise AssertionError("the aliases were read for a list of one transaction")

    aliases = tmp_path / "aliases"
    aliases.write_text("staff: joe\n")
    settings = replace(SETTINGS, aliases_file=str(aliases))  # [smtp] max_recipients: 100
    monkeypatch.setattr(txmailhub.router, "Router", no_router)
    p = prep(b"x\r\n", Options(recipients=("staff", "bob", "joe")), settings)
    assert p.recipients == ("staff@example.org", "bob@example.org", "joe@example.org")
    assert p.groups == ()
    # one more than the hub's limit: read, and grouped
    monkeypatch.undo()
    p = prep(b"x\r\n", Options(recipients=("staff", "bob", "joe", "ann")),
             replace(settings, max_recipients=3))
    assert p.recipients == ("staff@example.org", "joe@example.org", "bob@example.org",
                            "ann@example.org")
    assert p.groups == (2, 1, 1)


def test_the_aliases_file_changing_mid_run_leaves_the_grouping_as_read_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the command groups by one view of the file: its router reads it
    # once and neither looks at it again nor reads it again per recipient,
    # so an edit while it runs cannot group half the list by each version
    import txmailhub.router

    aliases = tmp_path / "aliases"
    aliases.write_text("staff: joe\n")
    lookups = 0
    resolve = txmailhub.router.Router.resolve

    def edited_after_the_first(self: txmailhub.router.Router, address: Address
                               ) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            aliases.write_text("staff: bob, ann\n")  # another size: a stamp that changed
        return resolve(self, address)

    monkeypatch.setattr(txmailhub.router.Router, "resolve", edited_after_the_first)
    settings = replace(SETTINGS, aliases_file=str(aliases), max_recipients=2)
    p = prep(b"x\r\n", Options(recipients=("bob", "staff", "joe")), settings)
    assert lookups == 3
    assert p.recipients == ("bob@example.org", "staff@example.org", "joe@example.org")
    assert p.groups == (1, 2)


def test_a_list_of_exactly_max_recipients_is_one_transaction_kept_as_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as many recipients as the hub takes in one transaction: the hub
    # merges them itself, so the order given is kept and no file is read
    import txmailhub.router

    def no_router(*args: object) -> None:
        raise AssertionError("the aliases were read for a list of one transaction")

    aliases = tmp_path / "aliases"
    aliases.write_text("staff: joe\n")
    monkeypatch.setattr(txmailhub.router, "Router", no_router)
    settings = replace(SETTINGS, aliases_file=str(aliases), max_recipients=3)
    p = prep(b"x\r\n", Options(recipients=("staff", "bob", "joe")), settings)
    assert p.recipients == ("staff@example.org", "bob@example.org", "joe@example.org")
    assert p.groups == ()


def test_a_list_of_one_transaction_loads_no_twisted(tmp_path: Path) -> None:
    """The command loads the hub's router, and with it Twisted, only to
    group a list longer than one transaction: a start-up time every run,
    of a cron job or a web page's mail, would pay otherwise."""
    import subprocess
    import sys

    aliases = tmp_path / "aliases"
    aliases.write_text("staff: joe\n")
    code = (
        "import io, sys\n"
        "from txmailhub.config import LocalSubmission\n"
        "from txmailhub.sendmail import Options, prepare\n"
        "from txmailhub.sendmail_input import read_message\n"
        "settings = LocalSubmission(path='/x.toml', hostname='mail.example.org',\n"
        "    domains=('example.org',), listen=('tcp:25',), max_message_size=10_000,\n"
        f"    aliases_file={str(aliases)!r})\n"
        "prepare(read_message(io.BytesIO(b'x\\n'), True, 100),\n"
        "    Options(recipients=('staff', 'joe')), settings, ('joe', ''), 1000)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"[]\n"), r


def test_a_postmaster_of_another_local_domain_goes_with_the_primary_postmasters_mailbox(
        tmp_path: Path) -> None:
    # RFC 5321 4.5.1: postmaster@example.net that is no user is the primary
    # domain's postmaster, which aliases lead to joe here: the command
    # cannot tell, so it keeps it beside joe (one copy, one transaction)
    aliases = tmp_path / "aliases"
    aliases.write_text("postmaster: joe\n")
    settings = replace(SETTINGS, aliases_file=str(aliases), max_recipients=2)
    p = prep(b"x\r\n", Options(recipients=("postmaster@example.net", "bob", "joe", "ann")),
             settings)
    assert p.recipients == ("postmaster@example.net", "joe@example.org", "bob@example.org",
                            "ann@example.org")
    assert p.groups == (2, 1, 1)
    # a remote postmaster is just an address
    p = prep(b"x\r\n", Options(recipients=("postmaster@elsewhere.test", "bob", "joe")),
             settings)
    assert p.recipients == ("postmaster@elsewhere.test", "bob@example.org", "joe@example.org")
    assert p.groups == ()


def test_max_recipients_is_read_from_the_config_a_bad_one_is_the_default(
        tmp_path: Path) -> None:
    config = _hub_config(tmp_path)
    assert load_local_submission(str(config)).max_recipients == 100
    text = config.read_text()
    config.write_text(text.replace("[smtp]\n", "[smtp]\nmax_recipients = 7\n"))
    assert load_local_submission(str(config)).max_recipients == 7
    # a bad value is the hub's to report: the command sends all the same
    config.write_text(text.replace("[smtp]\n", '[smtp]\nmax_recipients = "7"\n'))
    assert load_local_submission(str(config)).max_recipients == 100


def test_a_chain_of_aliases_deeper_than_pythons_stack_still_groups_the_recipients(
        tmp_path: Path) -> None:
    # reading the file found its loops by recursion: a chain nested deeper
    # than the recursion limit ended the command in exit 70, not sent
    import sys

    depth = sys.getrecursionlimit() + 100
    aliases = tmp_path / "aliases"
    aliases.write_text("".join(f"a{i}: a{i + 1}\n" for i in range(depth)) + f"a{depth}: joe\n")
    settings = replace(SETTINGS, aliases_file=str(aliases), max_recipients=2)
    p = prep(b"x\r\n", Options(recipients=("a0", "bob", "joe")), settings)
    assert p.recipients == ("a0@example.org", "joe@example.org", "bob@example.org")
    assert p.groups == (2, 1)


def test_the_aliases_file_is_read_from_the_config_relative_to_it(tmp_path: Path) -> None:
    config = _hub_config(tmp_path)
    assert load_local_submission(str(config)).aliases_file is None
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    assert load_local_submission(str(config)).aliases_file == str(tmp_path / "aliases")
    # a bad value is the hub's to report: the command sends all the same
    config.write_text(config.read_text().replace('"aliases"', "3"))
    assert load_local_submission(str(config)).aliases_file is None
    # a NUL, which no path holds: the look at the file raised ValueError,
    # and a long list ended in exit 70, not sent
    config.write_text(config.read_text().replace("= 3", '= "a\\u0000b"')
                      .replace("[smtp]\n", "[smtp]\nmax_recipients = 2\n"))
    settings = load_local_submission(str(config))
    assert settings.aliases_file is None
    assert prep(b"x\r\n", Options(recipients=("a", "b", "c")), settings).groups == ()


class _TextlessError(Exception):
    """An exception whose own ``__str__`` is broken (a bug in its class)."""

    def __init__(self, broken: str) -> None:
        super().__init__()
        self.broken = broken

    def __str__(self) -> str:
        if self.broken == "raises":
            raise RuntimeError("no text")
        return 3  # type: ignore[return-value]  # not a string: str() raises TypeError


@pytest.mark.parametrize("broken", ["raises", "returns no string"])
def test_an_internal_error_whose_text_cannot_be_read_is_still_70_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    # the line naming the error read its text unguarded: the failure there
    # was Python's traceback and exit 1
    config = _hub_config(tmp_path)
    _break_prepare(monkeypatch, _TextlessError(broken))
    err = io.StringIO()
    assert run(["bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70
    assert err.getvalue() == ("sendmail: internal error (a bug in the command): "
                              "_TextlessError: <exception str() failed> (-v shows where)\n")
    err = io.StringIO()
    assert run(["-v", "bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70
    first, *rest = err.getvalue().splitlines()
    assert first == ("sendmail: internal error (a bug in the command): "
                     "_TextlessError: <exception str() failed>")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1].endswith("_TextlessError: <exception str() failed>"), rest


def test_the_traceback_of_v_escapes_a_line_break_in_an_exception_groups_member(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a group's members are printed behind a margin ("    | "): their text,
    # a line break too, is escaped as the one-line message escapes it
    config = _hub_config(tmp_path)
    try:
        raise ValueError("bad header\nSubject: \x1b]0;owned\x07")
    except ValueError as e:
        member = e
    _break_prepare(monkeypatch, ExceptionGroup("prepare\nfailed", [member]))
    err = io.StringIO()
    assert run(["-v", "bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err) == 70
    text = err.getvalue()
    assert not any(c in text for c in "\x1b\x07"), text
    lines = text.splitlines()
    assert lines[0] == ("sendmail: internal error (a bug in the command): ExceptionGroup: "
                        "prepare\\x{A}failed (1 sub-exception)")
    assert "  | ExceptionGroup: prepare\\x{A}failed (1 sub-exception)" in lines, text
    assert "    | ValueError: bad header\\x{A}Subject: \\x{1B}]0;owned\\x{7}" in lines, text
    assert not any("Subject:" in line and "ValueError" not in line for line in lines), text


class _UnformattableError(Exception):
    """An exception whose traceback Python cannot format (its notes raise)."""

    @property
    def __notes__(self) -> list[str]:  # type: ignore[override]
        raise RuntimeError("no notes")


def test_an_internal_error_whose_traceback_cannot_be_formatted_is_70_with_v(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _hub_config(tmp_path)
    _break_prepare(monkeypatch, _UnformattableError("broken"))
    err = io.StringIO()
    try:
        status: object = run(["-v", "bob"], str(config), "sendmail", io.BytesIO(b"x\n"), err)
    except Exception as e:  # (named outside the handler: pytest cannot format its chain)
        status = f"raised {type(e).__name__}"
    assert status == 70
    assert err.getvalue() == ("sendmail: internal error (a bug in the command): "
                              "_UnformattableError: broken\n"
                              "(no traceback: reading it raised RuntimeError)\n")


# --- -bp's arguments ------------------------------------------------------------


@pytest.mark.parametrize(("argv", "prog"), [(["-bp", "bob"], "sendmail"), (["bob"], "mailq"),
                                            (["-bp", "--", "bob"], "sendmail")])
def test_bp_with_a_recipient_is_a_usage_error_as_in_postfix(
        monkeypatch: pytest.MonkeyPatch, argv: list[str], prog: str) -> None:
    # ``mailq bob`` listed the whole queue as if bob were a filter
    def listing(*args: object) -> int:
        raise AssertionError("the queue was listed")

    monkeypatch.setattr("txmailhub.relay.admin.list_queue", listing)
    monkeypatch.setattr("sys.argv", [f"/usr/bin/{prog}", *argv])
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    from txmailhub.sendmail import main

    assert main() == EX_USAGE
    assert out.getvalue() == ""
    assert err.getvalue().splitlines()[0] == (
        f"{prog}: bob: -bp (mailq) takes no recipient: it lists the whole queue "
        "(mailhub queue list)")


# --- an aliases file that cannot be read ------------------------------------------


def test_an_aliases_file_that_cannot_be_read_is_one_warning_and_the_list_goes_on(
        tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.mkdir()  # read() fails: IsADirectoryError (root reads any mode)
    settings = replace(SETTINGS, aliases_file=str(aliases), max_recipients=2)
    said: list[str] = []
    p = prepare(read_message(io.BytesIO(b"x\r\n"), True, 10**8),
                Options(recipients=("ann", "bob", "carol")), settings, LOGIN, 1000, said.append)
    assert p.recipients == ("ann@example.org", "bob@example.org", "carol@example.org")
    assert len(said) == 1, said
    assert said[0].startswith(f"warning: cannot read aliases file {aliases}: ")
    assert said[0].endswith("recipients that lead to one mailbox through it may get a copy "
                            "each (sending on)")
    # none for a file that is not there (no aliases), or one read
    for path in (tmp_path / "gone", tmp_path / "readable"):
        if path.name == "readable":
            path.write_text("staff: joe\n")
        said.clear()
        prepare(read_message(io.BytesIO(b"x\r\n"), True, 10**8),
                Options(recipients=("ann", "bob", "carol")),
                replace(settings, aliases_file=str(path)), LOGIN, 1000, said.append)
        assert said == []


# --- a NUL in a header field ---------------------------------------------------------


@pytest.mark.parametrize(("raw", "said"), [
    (b"Subject: a\x00b\n\nbody\n", "the header field Subject holds a NUL octet"),
    (b"To: ann@example.org\x00, bob@example.org\n\nbody\n", "the header field To holds"),
    (b"Subject: a\n b\x00\n\nbody\n", "Subject holds a NUL octet, line 2 of the field"),
])
def test_a_nul_in_a_header_field_is_65_before_connecting(
        tmp_path: Path, raw: bytes, said: str) -> None:
    # RFC 5322 3.5: no NUL in a header field; ``To: ann<NUL>, bob`` shows
    # a C reader one address and names two
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:1"]\n')
    err = io.StringIO()
    assert run(["-t", "joe"], str(config), "sendmail", io.BytesIO(raw), err) == EX_DATAERR
    text = err.getvalue()
    assert said in text and "NOT sent" in text and "Connection refused" not in text
    # in the body it is passed on, as documented
    p = prep(b"Subject: x\n\na\x00b\n", Options(recipients=("joe",)))
    assert b"a\x00b" in untraced(p)


# --- -G ------------------------------------------------------------------------------


def test_g_leaves_the_bare_names_of_a_gateways_message_as_written() -> None:
    # Postfix rewrites a -G submission's fields with remote_header_rewrite_domain,
    # empty by default: not at all.  The envelope is the hub's, as ever.
    assert parse_args(["-G", "bob"]) == Options(recipients=("bob",), gateway=True)
    raw = b"From: root\r\nTo: bob, Ann <ann>\r\nSubject: x\r\n\r\nbody\r\n"
    p = prep(raw, Options(recipients=("bob",), gateway=True))
    assert field(untraced(p), b"To") == [b"To: bob, Ann <ann>"]
    assert field(untraced(p), b"From") == [b"From: root"]
    assert p.recipients == ("bob@example.org",)
    # without -G they are qualified
    p = prep(raw, Options(recipients=("bob",)))
    assert field(untraced(p), b"To") == [b"To: bob@example.org, Ann <ann@example.org>"]


def test_g_adds_no_field_to_a_gateways_message_but_the_trace() -> None:
    # -G: the message is relayed, not submitted.  RFC 5321 6.4: adding a
    # Date or a Message-ID "MUST NOT be applied by an SMTP server that
    # provides an intermediate relay function"; RFC 6409 8 leaves such
    # fix-ups to an MSA.  The Received field is a trace field (RFC 5321 4.4)
    raw = b"To: bob@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    p = prep(raw, Options(recipients=("bob",), gateway=True))
    assert untraced(p) == raw
    assert p.header.startswith(b"Received: by ")
    # nor to a message sent on again, nor a Sender for several authors
    raw = (b"From: ann@example.net, cid@example.net\r\nResent-To: bob@example.org\r\n"
           b"Subject: x\r\n\r\nbody\r\n")
    p = prep(raw, Options(recipients=("bob",), gateway=True))
    assert untraced(p) == raw
    # without -G the message gets what RFC 5322 3.6 asks of it
    p = prep(b"To: bob@example.org\r\n\r\nbody\r\n", Options(recipients=("bob",)))
    for name in (b"From", b"Date", b"Message-ID"):
        assert len(field(untraced(p), name)) == 1


# --- the error modes -----------------------------------------------------------------


@pytest.mark.parametrize(("argv", "mode"), [(["-oem"], "m"), (["-oee"], "e"), (["-em"], "m"),
                                            (["-oep"], "p"), (["-oeq"], "q"), (["-oew"], "w")])
def test_the_error_modes_are_read_and_accepted(argv: list[str], mode: str) -> None:
    assert parse_args([*argv, "bob"]) == Options(recipients=("bob",), error_mode=mode)


@pytest.mark.parametrize("mode", ["m", "e"])
def test_oem_and_oee_say_that_errors_are_not_mailed_back(tmp_path: Path, mode: str) -> None:
    # mutt's default command line has -oem: the error is on stderr and in
    # the status, and one line says no report was mailed (sendmail would
    # have mailed one); -oee's exit 0 would say a message not sent was sent
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\ndomains = ["example.org"]\n[smtp]\nlisten = ["tcp:0"]\n')
    err = io.StringIO()
    assert run([f"-oe{mode}", "-oi", "--", "bob"], str(config), "sendmail",
               io.BytesIO(b"x\n"), err) == EX_CONFIG
    lines = err.getvalue().splitlines()
    assert "NOT sent" in lines[0]
    zero = " and the exit status is not made 0" if mode == "e" else ""
    assert lines[1:] == [f"sendmail: -oe{mode}: errors are not mailed back{zero}: the lines "
                         "above and the exit status (78) are the report"]
    # the other modes print, as without one: no line of their own
    for other in ("-oep", "-oeq", "-oew", "-oi"):
        err = io.StringIO()
        assert run([other, "bob"], str(config), "sendmail", io.BytesIO(b"x\n"),
                   err) == EX_CONFIG
        assert "mailed back" not in err.getvalue() and "NOT sent" in err.getvalue()


@pytest.mark.parametrize("argv", [["-bp", "\x1b[2Jx"], ["-bi", "\x1b[2Jx"], ["-bs", "\x1b[2Jx"],
                                  ["-N", "\x1b[2Jx", "bob"], ["bob", "-\x1b[2Jx"]])
def test_a_usage_error_escapes_the_words_of_the_command_line_it_quotes(
        argv: list[str]) -> None:
    # ``mailq ARG`` quotes ARG: a terminal control in it is shown, not obeyed
    err = io.StringIO()
    assert run(argv, "/nonexistent.toml", "sendmail", io.BytesIO(b""), err,
               io.StringIO()) == EX_USAGE
    first = err.getvalue().splitlines()[0]
    assert "\x1b" not in first and "\\x{1B}[2Jx" in first, first
