"""Bare names in the address header fields of a message given to the
sendmail command (``To: joe``, cron's ``From: root``) qualified with the
domain a bare envelope name gets; every other field, every address that
has a domain, and every field that cannot be read with certainty left
byte for byte; the folding kept within 998 octets."""

from __future__ import annotations

import io
import re
import time
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.config import LocalSubmission
from txmailhub.sendmail import Options, Prepared, prepare
from txmailhub.sendmail_bs import Session
from txmailhub.sendmail_headers import (
    ADDRESS_FIELDS,
    MAX_LINE,
    Unreadable,
    addr_specs,
    qualify_field,
)
from txmailhub.sendmail_input import read_message

SETTINGS = LocalSubmission(path="/etc/txmailhub/mailhub.toml", hostname="mail.example.org",
                           domains=("example.org", "example.net"), listen=("tcp:25",),
                           max_message_size=10_000)
IDN_SETTINGS = LocalSubmission(path="/etc/txmailhub/mailhub.toml", hostname="mail.example.org",
                               domains=("B\u00dcCHER.example.",), listen=("tcp:25",),
                               max_message_size=10_000)


def example(local: str) -> str:
    return "example.org"


def prep(raw: bytes, options: Options, settings: LocalSubmission = SETTINGS) -> Prepared:
    return prepare(read_message(io.BytesIO(raw), True, 10**8), options, settings,
                   ("joe", "Joe Bloggs"), 1000)


def header(p: Prepared) -> bytes:
    """The header section as sent, without the Received field on top."""
    return p.header.split(b"\r\n", 2)[2]


def unfolded(text: bytes) -> bytes:
    return re.sub(rb"\r\n(?=[ \t])", b"", text)


# --- the forms of an address ------------------------------------------------------


@pytest.mark.parametrize(("value", "qualified"), [
    ("joe", "joe@example.org"),
    ("root", "root@example.org"),
    ("ann, bob", "ann@example.org, bob@example.org"),
    ("Joe Bloggs <joe>", "Joe Bloggs <joe@example.org>"),
    ('"Bloggs, Joe" <joe>', '"Bloggs, Joe" <joe@example.org>'),
    ("J. Bloggs <joe>", "J. Bloggs <joe@example.org>"),
    ("<joe>", "<joe@example.org>"),
    ("joe (Joe Bloggs)", "joe@example.org (Joe Bloggs)"),
    ("(the boss) joe", "(the boss) joe@example.org"),
    ("Joe <joe (at home)>", "Joe <joe@example.org (at home)>"),
    ("joe.bloggs", "joe.bloggs@example.org"),
    ("o'neil+tag", "o'neil+tag@example.org"),
    ('"odd name"', '"odd name"@example.org'),
    ('"odd \\"name\\""', '"odd \\"name\\""@example.org'),
    ('Odd <"odd name">', 'Odd <"odd name"@example.org>'),
    ("team: ann, bob;", "team: ann@example.org, bob@example.org;"),
    ("team: ann, Bob <bob>;, carol", "team: ann@example.org, Bob <bob@example.org>;, "
                                     "carol@example.org"),
    ("a@x.org, joe, B <b@y.org>", "a@x.org, joe@example.org, B <b@y.org>"),
    ("=?utf-8?q?J=C3=B6e?= <joe>", "=?utf-8?q?J=C3=B6e?= <joe@example.org>"),
    ("joe,", "joe@example.org,"),
    ("j\u00f6rg", "j\u00f6rg@example.org"),
    ("J\u00f6rg <j\u00f6rg>", "J\u00f6rg <j\u00f6rg@example.org>"),
])
def test_a_bare_local_part_is_qualified_in_every_form(value: str, qualified: str) -> None:
    field = f"To: {value}\r\n".encode()
    assert qualify_field(field, example) == f"To: {qualified}\r\n".encode()


@pytest.mark.parametrize("value", [
    "joe@example.com",
    "Joe <joe@example.com>",
    '"joe"@example.com',
    "<>",
    "undisclosed-recipients:;",
    "<@relay.example:joe@example.com>",  # a source route (RFC 5322 4.4)
    "joe@[192.0.2.1]",
    "=?utf-8?q?J=C3=B6e?= <joe@example.com>",
    # what cannot be read with certainty stays as written
    "Joe Bloggs",            # a phrase, no address
    "joe bloggs@example.com",
    "joe.",
    "a..b",
    "joe . bloggs",
    "<joe",
    "joe>",
    "Joe <joe> <ann>",
    "team: ann, bob",        # a group that does not end
    "team: ann; bob",
    "a: b: c;;",
    '"unterminated',
    "(unterminated comment joe",
    "joe\\x",
    "Joe@home <joe>",
    "",
])
def test_qualified_empty_and_unreadable_fields_are_left_byte_for_byte(value: str) -> None:
    field = f"To: {value}\r\n".encode()
    assert qualify_field(field, example) == field


def test_a_field_that_is_not_utf8_is_left_as_it_is() -> None:
    field = b"To: J\xf6rg <joe>\r\n"  # Latin-1
    assert qualify_field(field, example) == field


def test_the_domain_is_asked_for_with_the_local_part_as_written() -> None:
    asked: list[str] = []

    def domain(local: str) -> str:
        asked.append(local)
        return "d.example"

    field = 'To: joe, "a b", j\u00f6rg\r\n'.encode()
    assert qualify_field(field, domain) == (
        'To: joe@d.example, "a b"@d.example, j\u00f6rg@d.example\r\n'.encode())
    assert asked == ["joe", '"a b"', "j\u00f6rg"]


# --- folding --------------------------------------------------------------------


def test_a_folded_field_keeps_its_folds_and_only_the_lines_that_change_change() -> None:
    field = b"Cc: a@x.org,\r\n\tjoe,\r\n b@y.org\r\n"
    assert qualify_field(field, example) == b"Cc: a@x.org,\r\n\tjoe@example.org,\r\n b@y.org\r\n"


def test_a_line_that_grows_past_998_octets_is_folded_at_its_white_space() -> None:
    names = [f"user{i:03d}" for i in range(105)]
    line = "To: " + ", ".join(names)
    assert len(line) < MAX_LINE < len(line) + 12 * len(names)
    result = qualify_field(line.encode() + b"\r\n", example)
    assert result.endswith(b"\r\n")
    assert max(len(x) for x in result[:-2].split(b"\r\n")) <= MAX_LINE
    assert unfolded(result) == ("To: " + ", ".join(f"{n}@example.org" for n in names)
                                + "\r\n").encode()
    assert all(x.strip() for x in result[:-2].split(b"\r\n"))  # no blank line


def _qualified(name: str) -> str:
    return name.replace(">", "@example.org>") if "<" in name else f"{name}@example.org"


@pytest.mark.parametrize("names", [
    [f"user{i:03d}" for i in range(60)],
    ["ann", '"odd,name"', *(f"user{i:03d}" for i in range(60)), "Bob <bob>"],
])
def test_a_line_without_white_space_grows_a_space_after_its_commas_to_fold(
        names: list[str]) -> None:
    # a script's ",".join(names): qualified, the line is over 998 octets
    # with no white space to fold before, and the field was left bare --
    # while the envelope took each name at the primary domain.  A space
    # after a comma between addresses changes none (one inside the quoted
    # string would)
    line = "To: " + ",".join(names)
    assert len(line) < MAX_LINE
    result = qualify_field(line.encode() + b"\r\n", example)
    assert max(len(x) for x in result[:-2].split(b"\r\n")) <= MAX_LINE
    assert unfolded(result).decode() == "To: " + ", ".join(map(_qualified, names)) + "\r\n"
    # the envelope reads the same addresses in the field as sent
    p = prep(result + b"\r\nbody\r\n", Options(extract=True))
    assert p.recipients == tuple(
        _qualified(n).rpartition("<")[2].rstrip(">") for n in names)


def test_a_group_without_white_space_grows_a_space_after_its_commas_to_fold() -> None:
    line = "To: team:" + ",".join(f"user{i:03d}" for i in range(60)) + ";"
    result = qualify_field(line.encode() + b"\r\n", example)
    assert max(len(x) for x in result[:-2].split(b"\r\n")) <= MAX_LINE
    assert unfolded(result).decode() == (
        "To: team:" + ", ".join(f"user{i:03d}@example.org" for i in range(60)) + ";\r\n")


def test_a_line_that_cannot_be_folded_leaves_the_field_as_it_was() -> None:
    # one run without white space: 998 octets with the domain would need a cut inside it
    field = b"To: " + b"x" * 990 + b"\r\n"
    assert qualify_field(field, example) == field


_LOCAL = st.text("abcxyz.!#-", min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith(".") and ".." not in s)
_QUALIFIED = st.builds("{}@{}".format, _LOCAL, st.sampled_from(["x.org", "[192.0.2.1]"]))
_MAILBOX = st.one_of(
    _LOCAL, _QUALIFIED, st.builds("Name <{}>".format, st.one_of(_LOCAL, _QUALIFIED)),
    st.builds('"{}"'.format, st.text("ab ,@<>", min_size=1, max_size=8)),
    st.builds("{} (c)".format, _LOCAL))


@given(st.lists(_MAILBOX, min_size=1, max_size=200), st.sampled_from([", ", ",\r\n ", ","]))
def test_every_bare_mailbox_is_qualified_and_the_lines_stay_short(
        mailboxes: list[str], comma: str) -> None:
    field = ("To: " + comma.join(mailboxes) + "\r\n").encode()
    field = b"\r\n ".join(_short_lines(field))  # as the reader folds the input
    result = qualify_field(field, lambda local: "q.invalid")
    assert max(len(x) for x in result.split(b"\r\n")) <= MAX_LINE
    bare = sum(1 for m in mailboxes if "@" not in re.sub(r'"[^"]*"', "", m))
    if result != field:
        assert unfolded(result).count(b"@q.invalid") == bare
        # nothing but the domains (and folds) added
        assert re.sub(rb"\s", b"", unfolded(result).replace(b"@q.invalid", b"")) == \
            re.sub(rb"\s", b"", unfolded(field))
    else:
        assert bare == 0 or max(len(x) for x in field.split(b"\r\n")) > MAX_LINE - 11 * bare


def _short_lines(field: bytes) -> list[bytes]:
    lines, line = [], field
    while len(line) > MAX_LINE:
        cut = line.rfind(b" ", 1, MAX_LINE)
        lines.append(line[:cut])
        line = line[cut + 1:]
    return [*lines, line]


@given(st.binary(max_size=300))
def test_any_field_comes_back_whole_or_with_domains_added(value: bytes) -> None:
    field = b"To: " + value.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"
    result = qualify_field(field, lambda local: "q.invalid")
    assert result == field or result.replace(b"@q.invalid", b"") == field


# --- in the message the command sends -------------------------------------------


def test_only_the_address_fields_are_rewritten_and_the_rest_stays_byte_for_byte() -> None:
    raw = (b"From: root\r\nSender: cron\r\nReply-To: Ops <ops>\r\nTo: joe, ann@x.org\r\n"
           b"Cc: team: ann, bob;\r\nBcc: secret\r\nSubject: To: joe\r\n"
           b"X-Original-To: joe\r\nDisposition-Notification-To: root\r\n"
           b"Return-Receipt-To: root\r\nResent-From: root\r\nResent-Sender: root\r\n"
           b"Resent-Date: Tue, 2 Jan 2024 00:00:00 +0000\r\nResent-Message-ID: <2@x>\r\n"
           b"Resent-To: joe\r\nResent-Cc: ann\r\nResent-Bcc: secret\r\n"
           b"Comments: to joe\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <1@x>\r\n\r\nTo: joe\r\nFrom: root\r\n")
    p = prep(raw, Options(recipients=("joe",)))
    assert header(p) == (
        b"From: root@example.org\r\nSender: cron@example.org\r\n"
        b"Reply-To: Ops <ops@example.org>\r\nTo: joe@example.org, ann@x.org\r\n"
        b"Cc: team: ann@example.org, bob@example.org;\r\nSubject: To: joe\r\n"
        b"X-Original-To: joe\r\nDisposition-Notification-To: root@example.org\r\n"
        b"Return-Receipt-To: root@example.org\r\nResent-From: root@example.org\r\n"
        b"Resent-Sender: root@example.org\r\n"
        b"Resent-Date: Tue, 2 Jan 2024 00:00:00 +0000\r\nResent-Message-ID: <2@x>\r\n"
        b"Resent-To: joe@example.org\r\n"
        b"Resent-Cc: ann@example.org\r\nComments: to joe\r\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\n")
    p.body.seek(0)
    assert p.body.read() == b"To: joe\r\nFrom: root\r\n"  # the body is never read as fields


def test_mail_s_hi_joe_sends_to_the_address_its_header_names() -> None:
    # what mail(1) hands to sendmail -t: the envelope and the header agree
    p = prep(b"To: joe\nCc: ann, Bob <bob>\nSubject: hi\n\nhello\n", Options(extract=True))
    assert p.recipients == ("joe@example.org", "ann@example.org", "bob@example.org")
    assert header(p).startswith(b"To: joe@example.org\r\n"
                                b"Cc: ann@example.org, Bob <bob@example.org>\r\n"
                                b"Subject: hi\r\n")


def test_the_header_gets_the_domain_the_envelope_does_an_idn_too() -> None:
    # the primary domain as written in the config (upper case, a final
    # dot, a U-label): the envelope's rule -- A-labels beside an ASCII
    # local part, the UTF-8 form beside a UTF-8 one -- for both
    p = prep("To: joe, j\u00f6rg\n\nx\n".encode(), Options(extract=True), IDN_SETTINGS)
    assert p.recipients == ("joe@xn--bcher-kva.example", "j\u00f6rg@b\u00fccher.example")
    assert header(p).startswith(
        "To: joe@xn--bcher-kva.example, j\u00f6rg@b\u00fccher.example\r\n".encode())


def test_the_added_fields_are_unchanged_and_every_address_field_is_listed() -> None:
    p = prep(b"Subject: s\n\nx\n", Options(recipients=("bob",)))
    assert b"From: Joe Bloggs <joe@example.org>\r\n" in p.header
    assert {b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"resent-from",
            b"resent-sender", b"resent-to", b"resent-cc", b"resent-bcc"} <= ADDRESS_FIELDS


def test_bs_passes_the_clients_header_on_without_qualifying_it() -> None:
    """``-bs``: the client, a mail program, writes its own header section;
    the command adds its Received field and nothing else."""
    sent = bytearray()

    class Hub:
        def send(self, data: bytes) -> None:
            sent.extend(data)
            if data.startswith(b"DATA"):
                self.reply = (354, b"go ahead")
            elif data.endswith(b"\r\n.\r\n") or data == b".\r\n":
                self.reply = (250, b"2.0.0 Ok")
            else:
                self.reply = (250, b"ok")

        def getreply(self) -> tuple[int, bytes]:
            return self.reply

        def close(self) -> None:
            pass

    stdin = (b"MAIL FROM:<joe@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
             b"To: bob\r\nFrom: root\r\n\r\nx\r\n.\r\n")
    out = io.BytesIO()
    Session(io.BytesIO(stdin), out, Hub(), lambda: b"Received: x\r\n",  # type: ignore[arg-type]
            "mail.example.org").run((220, b"hub"))
    assert b"Received: x\r\nTo: bob\r\nFrom: root\r\n\r\nx\r\n.\r\n" in bytes(sent)


def _many_bare_names(count: int) -> bytes:
    field = ("To: " + ", ".join(["a"] * count) + "\r\n").encode()
    return b"\r\n ".join(_short_lines(field))


def _fastest_qualify(field: bytes) -> float:
    times = []
    for _ in range(3):
        started = time.process_time()
        qualify_field(field, example)
        times.append(time.process_time() - started)
    return min(times)


def test_a_field_of_many_bare_names_takes_linear_time_and_bounded_memory() -> None:
    # the header is bounded only by [smtp] max_message_size (25 MiB by
    # default): each name qualified must not copy the whole field again
    # (quadratic: minutes for a few hundred KiB), nor every token of it
    # be held at once (dozens of times the field's size)
    count = 150_000
    field = _many_bare_names(count)
    tracemalloc.start()
    try:
        result = qualify_field(field, example)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert unfolded(result).count(b"a@example.org") == count
    assert peak < 40 * len(field)
    # four times the names, about four times the time (a copy of the
    # field per name made it sixteen); a ratio, so a slow machine passes,
    # of this process's CPU time, so tests running beside it do not count
    small, large = _many_bare_names(20_000), _many_bare_names(80_000)
    assert _fastest_qualify(large) < 8 * _fastest_qualify(small)


@pytest.mark.parametrize(("value", "qualified"), [
    # a comma left unencoded in a Q-encoded "Last, First" (RFC 2047 5 (3)
    # forbids it; some encoders write it): one word to every decoder, the
    # envelope's included -- not a bare name "=?utf-8?q?Bloggs" before it
    ("=?utf-8?q?Bloggs,_Joe?= <joe>", "=?utf-8?q?Bloggs,_Joe?= <joe@example.org>"),
    ("=?iso-8859-1?q?M=FCller,_J=F6rg?= <joerg>, ann",
     "=?iso-8859-1?q?M=FCller,_J=F6rg?= <joerg@example.org>, ann@example.org"),
    ("=?utf-8?q?J._Bloggs?= <joe>", "=?utf-8?q?J._Bloggs?= <joe@example.org>"),
    ("=?utf-8?q?a,b?= =?utf-8?b?Sm9l?=: joe;", "=?utf-8?q?a,b?= =?utf-8?b?Sm9l?=: "
                                               "joe@example.org;"),
])
def test_an_encoded_word_is_one_word_of_a_display_name(value: str, qualified: str) -> None:
    field = f"To: {value}\r\n".encode()
    assert qualify_field(field, example) == f"To: {qualified}\r\n".encode()


@pytest.mark.parametrize("value", [
    "=?utf-8?q?Bloggs,_Joe?=",
    "=?utf-8?q?joe?=",  # no address may be encoded (RFC 2047 5): a phrase
])
def test_an_encoded_word_alone_is_no_bare_name(value: str) -> None:
    field = f"To: {value}\r\n".encode()
    assert qualify_field(field, example) == field


def test_a_line_is_not_folded_between_a_backslash_and_the_space_it_quotes() -> None:
    # "\ " is a quoted-pair (RFC 5322 3.2.1): a fold between its two
    # characters leaves a line ending in a lone backslash
    line = 'To: ann, "' + "y" * 960 + '\\ ' + "z" * 20 + '", joe'
    assert len(line) == MAX_LINE
    result = qualify_field(line.encode() + b"\r\n", example)
    lines = result[:-2].split(b"\r\n")
    assert len(lines) > 1 and max(map(len, lines)) <= MAX_LINE
    assert not any(x.endswith(b"\\") for x in lines)
    assert unfolded(result) == ('To: ann@example.org, "' + "y" * 960 + '\\ ' + "z" * 20
                                + '"@example.org, joe@example.org\r\n').encode()


def test_a_field_with_white_space_before_its_colon_is_qualified_and_its_bcc_removed() -> None:
    p = prep(b"To : joe\nBcc : ann\n\nbody\n", Options(extract=True))
    assert p.recipients == ("joe@example.org", "ann@example.org")
    assert header(p).startswith(b"To : joe@example.org\r\nFrom: ")
    assert p.body.read() == b"body\r\n"


def _fastest_extract(field: bytes) -> float:
    times = []
    for _ in range(3):
        started = time.process_time()
        p = prep(field + b"\r\nbody\r\n", Options(extract=True))
        times.append(time.process_time() - started)
        assert p.recipients == ("a@example.org",)
    return min(times)


def test_t_reads_the_recipients_of_a_huge_field_in_linear_time() -> None:
    # -t read To with the standard library's header parser, quadratic in
    # the field: 15 s for 32,000 bare names, minutes for 100,000.  Eight
    # times the names must take about eight times as long, not fifty; a
    # ratio, so a slow machine passes
    small, large = _many_bare_names(4_000), _many_bare_names(32_000)
    assert _fastest_extract(large) < 24 * _fastest_extract(small)


@pytest.mark.parametrize(("value", "specs"), [
    ('a@x.org, Bob <b@y.org>, team: c, "d e";, ', ["a@x.org", "b@y.org", "c", '"d e"']),
    ('"a b" (a comment) @ x . org', ['"a b"@x.org']),  # white space and comments out
    ('=?utf-8?q?Bloggs,_Joe?= <"j b"@x.org>', ['"j b"@x.org']),
    ("Joe <@relay.example:joe@x.org>", ["@relay.example:joe@x.org"]),  # the hub drops it
    ('"a\\"b"@x.org', ['"a\\"b"@x.org']),
    ("undisclosed-recipients:;", []),
])
def test_addr_specs_reads_the_structure_and_leaves_each_address_to_the_hub(
        value: str, specs: list[str]) -> None:
    assert addr_specs(value) == specs


@pytest.mark.parametrize(("value", "why"), [
    ("a@x.org b@y.org", "commas"),
    ("a@x.org;b@y.org", "commas"),
    ("a@x.org <b@y.org>", "commas"),
    ("Bob <b@y.org> c@z.org", "commas"),
    ('"a b" c@x.org', "no address"),
    ("Joe Bloggs", "no address"),
    ("Joe <>", "<>"),
    ('"a b@x.org', "not an address list"),  # an unbalanced quote
    ('"a\x01b"@x.org', ""),  # (quoted: the hub's grammar refuses it)
])
def test_addr_specs_refuses_what_is_no_list_of_mailboxes(value: str, why: str) -> None:
    if why:
        with pytest.raises(Unreadable, match=why):
            addr_specs(value)
    else:
        assert addr_specs(value) == [value]
