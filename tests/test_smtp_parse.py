"""txmailhub.smtp._parse: command lines, paths and ESMTP parameters."""

from __future__ import annotations

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.address import Address
from txmailhub.errors import RemoteProtocolError
from txmailhub.smtp import replies
from txmailhub.smtp._parse import (
    MailParams,
    RcptParams,
    UnreadableArgument,
    find_unquoted,
    parse_command,
    parse_mail,
    parse_mailbox,
    parse_rcpt,
    rcpt_local,
)
from txmailhub.smtp.xtext import (
    utf8_addr_decode,
    utf8_addr_encode,
    utf8_addr_unitext,
    xtext_decode,
    xtext_encode,
)

P = "example.org"


def reply_of(fn, *args, **kw):
    with pytest.raises(RemoteProtocolError) as e:
        fn(*args, **kw)
    return e.value.reply


# --- command lines ---------------------------------------------------------


def test_parse_command():
    assert parse_command(b"mail FROM:<a@b>") == ("MAIL", "FROM:<a@b>")
    assert parse_command(b"QUIT") == ("QUIT", "")
    assert parse_command(b"  noop   x  ") == ("NOOP", "x")
    assert parse_command(b"") == ("", "")
    assert parse_command(b"\tnoop\t") == ("NOOP", "")  # blanks: spaces and tabs
    assert parse_command(b"rcpt \tTO:<a@b>\t ") == ("RCPT", "TO:<a@b>")
    # a tab ends the verb as a space does: "BDAT\t3 LAST" was the unknown
    # verb "BDAT\t3", and its chunk then ran as commands
    assert parse_command(b"BDAT\t3 LAST") == ("BDAT", "3 LAST")
    assert parse_command(b"mail\tFROM:<a@b>") == ("MAIL", "FROM:<a@b>")
    assert parse_command(b"ehlo\t \tc") == ("EHLO", "c")


def test_parse_command_nul_and_utf8():
    assert reply_of(parse_command, b"NO\x00OP") == replies.NUL_IN_COMMAND
    assert reply_of(parse_command, b"NOOP \xff\xfe") == replies.INVALID_UTF8
    # the verb read, the engine decides (NOOP and HELP ignore the argument)
    with pytest.raises(UnreadableArgument) as caught:
        parse_command(b"\tnoop\t\xff\xfe x")
    assert caught.value.verb == "NOOP" and caught.value.reply == replies.INVALID_UTF8
    # the argument as text for AUTH, which reads it as base64 (U+FFFD is none)
    assert caught.value.argument == "\ufffd\ufffd x"
    # a verb that is not UTF-8 is no command at all
    assert reply_of(parse_command, b"N\xffOP x") == replies.UNKNOWN_COMMAND
    assert replies.NUL_IN_COMMAND.code == 500 and replies.INVALID_UTF8.code == 501
    # RFC 5321 2.3.8: the line's CRLF is gone; any CR left is bare
    for line in (b"NOOP\r", b"NO\rOP", b"\r", b"MAIL FROM:<a@b>\r"):
        assert reply_of(parse_command, line) == replies.BARE_CR_IN_COMMAND


# --- the seed's lenient forms --------------------------------------------------


def test_seed_mail_from_space_no_brackets():
    sender, params = parse_mail("FROM: bill@microsoft.com", P)
    assert sender == Address("bill", "microsoft.com")
    assert params == MailParams()


def test_seed_rcpt_bare_local_part():
    rcpt, params = parse_rcpt("TO: hollindg", P)
    assert rcpt == Address("hollindg", P)
    assert params == RcptParams()


def test_a_tab_ends_an_unbracketed_path_as_a_space_does():
    # tabs are blanks between a bracketed path and its parameters, and
    # after the verb: the seed's lenient form read "bill@microsoft.com\tSIZE=1"
    # as one address (501 5.1.7) where a space before SIZE=1 was taken
    sender, params = parse_mail("FROM: bill@microsoft.com\tSIZE=1", P)
    assert (sender, params.size) == (Address("bill", "microsoft.com"), 1)
    rcpt, params = parse_rcpt("TO: hollindg\tNOTIFY=NEVER", P)
    assert (rcpt, params.notify) == (Address("hollindg", P), ("NEVER",))
    assert reply_of(parse_mail, "FROM: bill@microsoft.com\x0bSIZE=1", P) == (
        replies.SYNTAX_ADDRESS)  # a VT is no blank (RFC 5321 4.1.2)


@pytest.mark.parametrize("arg", ["FROM: SIZE=100", "FROM:SIZE=100", "FROM: size=100",
                                 "FROM: BODY=8BITMIME", "FROM: SIZE=100 BODY=8BITMIME",
                                 "FROM: RET=HDRS", "FROM: ENVID=x", "FROM: AUTH=+3C+3E",
                                 "FROM: SMTPUTF8=x", "FROM: SIZE=", "FROM: NOTIFY=NEVER"])
def test_a_known_parameter_where_the_sender_belongs_is_a_missing_path(arg):
    # The two leniencies (no brackets, a bare local part) meeting: the
    # client meant <> or left the path out; SIZE=100@<primary domain>
    # would get the message's bounces.  501 X.1.7 (the sender's), and the
    # reply says how to write a null sender.
    reply = reply_of(parse_mail, arg, P)
    assert reply == replies.PATH_MISSING
    assert (reply.code, reply.status) == (501, "5.1.7") and "MAIL FROM:<>" in reply.text()


@pytest.mark.parametrize("arg", ["TO: NOTIFY=NEVER", "TO:NOTIFY=SUCCESS,FAILURE",
                                 "TO: notify=never ORCPT=rfc822;a@b.test",
                                 "TO: ORCPT=rfc822;a+40b.test", "TO: notify=delay,success"])
def test_a_known_parameter_where_the_recipient_belongs_is_a_missing_path(arg):
    reply = reply_of(parse_rcpt, arg, P)
    assert reply == replies.RECIPIENT_PATH_MISSING
    assert (reply.code, reply.status) == (501, "5.1.3")


@pytest.mark.parametrize("name", ["size=big", "SIZE=1", "body=8bitmime", "notify=ops",
                                  "notify=", "orcpt=x", "auth=joe", "envid=x"])
def test_a_bare_recipient_that_is_no_rcpt_parameter_stays_a_local_part(name):
    # RFC 5321 4.1.2: a local part may hold "=".  RCPT's parameters are
    # NOTIFY and ORCPT; a word that is no well-formed one of them (MAIL's
    # SIZE, a NOTIFY that is no list of its words) cannot be one the
    # client left where the path belongs: it is the bare local part the
    # seed's "RCPT TO: hollindg" is, and a mailbox of that name gets its
    # mail (router's business: 550 when there is none)
    assert parse_rcpt(f"TO: {name}", P) == (Address(name, P), RcptParams())


def test_a_bare_name_that_is_no_known_parameter_stays_a_local_part():
    # the seed's leniency is kept: only KEYWORD= with a known keyword and no
    # "@" is taken for a parameter
    assert parse_mail("FROM: bill", P)[0] == Address("bill", P)
    assert parse_mail("FROM: a=b", P)[0] == Address("a=b", P)
    assert parse_mail("FROM: SMTPUTF8", P)[0] == Address("SMTPUTF8", P)  # no "=": a name
    assert parse_mail("FROM: sizes=1", P)[0] == Address("sizes=1", P)
    assert parse_mail("FROM: size=1@example.net", P)[0] == Address("size=1", "example.net")
    assert parse_mail("FROM:<size=1> SIZE=5", P) == (Address("size=1", P), MailParams(size=5))
    assert parse_mail("FROM: <> SIZE=100", P) == (None, MailParams(size=100))
    assert parse_rcpt("TO: hollindg NOTIFY=NEVER", P) == (
        Address("hollindg", P), RcptParams(notify=("NEVER",)))
    assert parse_rcpt("TO: notify=x@example.net", P)[0] == Address("notify=x", "example.net")
    assert parse_rcpt("TO: a=b", P)[0] == Address("a=b", P)


_PARAM_PARTS = ["SIZE=", "BODY=", "RET=", "ENVID=", "AUTH=", "SMTPUTF8", "X-P=", "100",
                "8BITMIME", "8b\u0131tmime", "FULL", "ü", "\u0131", "a+2Bb", "+C3+BC", "<>",
                "x@y.example", "x@ü.example", " ", "\t", "\u3000"]


@settings(max_examples=400)
@given(st.lists(st.sampled_from(_PARAM_PARTS), min_size=1, max_size=6))
def test_mail_parameters_without_smtputf8_are_ascii_whatever_the_parameter(parts):
    # RFC 6531 3.3: UTF-8 in MAIL's parameters only with SMTPUTF8; each
    # parameter's own check must refuse it (a new one too)
    tail = "".join(parts)
    try:
        _, params = parse_mail(f"FROM:<a@b.example> {tail}", P)
    except RemoteProtocolError as e:
        assert e.reply.code in (501, 553, 555), e.reply
        return
    assert params.smtputf8 or tail.isascii(), tail


def test_postmaster_any_case():
    rcpt, _ = parse_rcpt("TO:<PostMaster>", P)
    assert rcpt.is_postmaster and rcpt.domain == P


@pytest.mark.parametrize(
    "arg",
    ["FROM:<a@b.test>", "from:<a@b.test>", "FROM: <a@b.test>", "FROM:a@b.test", "FROM:<a@B.TEST.>"],
)
def test_mail_forms(arg):
    assert parse_mail(arg, P)[0] == Address("a", "b.test")


def test_null_reverse_path():
    assert parse_mail("FROM:<>", P) == (None, MailParams())
    assert parse_mail("FROM:<> SIZE=10", P) == (None, MailParams(size=10))
    assert reply_of(parse_rcpt, "TO:<>", P) == replies.SYNTAX_RECIPIENT


@pytest.mark.parametrize("params", ["FOO=1", "SMTPUTF8", "ORCPT=rfc822", "NOTIFY=SOMETIMES"])
def test_a_null_recipient_path_is_refused_before_its_parameters(params):
    # RFC 5321 4.1.1.3: RCPT takes a forward-path, and "<>" is none: the
    # reply names the missing recipient, as for a path too long, not a
    # parameter a client would drop only to be refused again
    for utf8 in (False, True):
        assert reply_of(parse_rcpt, f"TO:<> {params}", P, utf8) == replies.SYNTAX_RECIPIENT


def test_bad_address_syntax_names_the_sender_or_the_recipient():
    # RFC 3463: X.1.7 is "Bad sender's mailbox address syntax", X.1.3 "Bad
    # destination mailbox address syntax"
    for arg in ("TO:<a@@b.test>", "TO:<a@b..test>", "TO:<\"a@b.test>", "TO:<a@[1.2.3]>"):
        refused = reply_of(parse_rcpt, arg, P)
        assert (refused.code, refused.status) == (501, "5.1.3"), arg
    refused = reply_of(parse_mail, "FROM:<a@@b.test>", P)
    assert (refused.code, refused.status) == (501, "5.1.7")
    # the other refusals of a recipient keep their own codes
    assert reply_of(parse_rcpt, "TO:<δ@x.test>", P) == replies.SMTPUTF8_NOT_DECLARED
    assert reply_of(parse_rcpt, "TO:<a@b.test> FOO=1", P) == replies.PARAM_NOT_RECOGNIZED


def test_source_route_is_ignored():
    rcpt, _ = parse_rcpt("TO:<@a.test,@b.test:user@c.test>", P)
    assert rcpt == Address("user", "c.test")
    assert reply_of(parse_rcpt, "TO:<@a.test:>", P) == replies.SYNTAX_RECIPIENT
    assert reply_of(parse_rcpt, "TO:<@a.test,b.test:u@c.test>", P) == replies.SYNTAX_RECIPIENT
    # every hop is "@" domain (RFC 5321 4.1.2), not only the first: "xb.test"
    # is not "@b.test" with its "@" mistyped
    assert reply_of(parse_rcpt, "TO:<@a.test,xb.test:u@c.test>", P) == replies.SYNTAX_RECIPIENT


def test_a_source_route_with_a_u_label_needs_smtputf8():
    # ignored, but no way round RFC 6531: a U-label in the route is as
    # non-ASCII as one in the mailbox
    route = "@b\u00fccher.test:user@c.test"
    assert reply_of(parse_rcpt, f"TO:<{route}>", P) == replies.SMTPUTF8_NOT_DECLARED
    assert reply_of(parse_mail, f"FROM:<{route}>", P) == replies.SMTPUTF8_NOT_DECLARED_SENDER
    assert parse_rcpt(f"TO:<{route}>", P, utf8=True)[0] == Address("user", "c.test")
    assert parse_mail(f"FROM:<{route}> SMTPUTF8", P)[0] == Address("user", "c.test")


def test_quoted_local_parts():
    assert parse_mailbox('"joe"@example.org', P) == Address("joe", P)
    assert parse_mailbox('"joe"', P) == Address("joe", P)  # a bare local part, quoted
    assert parse_rcpt('TO:<"john doe">', P)[0] == Address('"john doe"', P)
    assert parse_mailbox('"john doe"@example.org', P) == Address('"john doe"', P)
    assert parse_mailbox('"a\\"b"@x.test', P) == Address('"a\\"b"', "x.test")
    assert parse_mailbox('"user@remote"@example.org', P) == Address('"user@remote"', P)
    rcpt, _ = parse_rcpt('TO:<"a>b"@x.test> NOTIFY=NEVER', P)
    assert rcpt == Address('"a>b"', "x.test")


def test_a_quoted_utf8_local_part_is_its_unquoted_form():
    # RFC 6531 3.3 adds UTF-8 to atext as to qtext: "jörg" needs its quotes
    # no more than "joe" does, and is the mailbox jörg (it was kept quoted,
    # a mailbox of its own no user or alias has, so RCPT got 550)
    assert parse_mailbox('"jörg"@example.org', P, utf8=True) == Address("jörg", P)
    assert parse_rcpt('TO:<"\\jö.rg">', P, utf8=True)[0] == Address("jö.rg", P)
    assert parse_mail('FROM:<"jörg"@x.test> SMTPUTF8', P)[0] == Address("jörg", "x.test")
    # what is no UTF-8 dot-string stays quoted
    assert parse_mailbox('"jö rg"@x.test', P, utf8=True) == Address('"jö rg"', "x.test")
    assert parse_mailbox('"jö..rg"@x.test', P, utf8=True) == Address('"jö..rg"', "x.test")
    # and still needs SMTPUTF8
    assert reply_of(parse_rcpt, 'TO:<"jörg">', P) == replies.SMTPUTF8_NOT_DECLARED


def test_whether_a_quoted_utf8_local_part_needs_its_quotes_is_judged_in_nfc():
    # canonical_local keys a mailbox by its NFC form, so the quotes must
    # come off (or stay) alike for every spelling of one NFC form.  "<"
    # and a combining long solidus overlay (U+0338) compose to U+226E:
    # '"<\u0338"' is '"\u226e"', which is the unquoted \u226e; the Greek
    # question mark U+037E is ";" in NFC: '"a\u037e"' is '"a;"', which
    # needs its quotes.  Judged as written, each pair got two keys (and a
    # user added as '"<\u0338"' was written '"\u226e"' to the users file,
    # which check then said no mail reaches).
    for one, other in (('"<\u0338"', '"\u226e"'), ('"a\u037e"', '"a;"')):
        assert (parse_mailbox(one, P, utf8=True).key
                == parse_mailbox(other, P, utf8=True).key), (one, other)
    assert parse_mailbox('"<\u0338"', P, utf8=True) == Address("\u226e", P)
    assert parse_mailbox('"a\u037e"', P, utf8=True) == Address('"a\u037e"', P)
    assert parse_mailbox('"jo\u0308rg"', P, utf8=True) == Address("jo\u0308rg", P)


def test_a_utf8_dot_string_that_nfc_makes_ascii_punctuation_is_its_quoted_form():
    # U+037E is ";" in NFC: a\u037e is a dot-string as written (UTF-8 is
    # atext, RFC 6531 3.3), and the same mailbox as '"a\u037e"' (4.1.2),
    # which NFC makes '"a;"'.  It was keyed a;, a name no RCPT can give:
    # RCPT TO:<a\u037e> and RCPT TO:<"a;"> were two mailboxes
    keys = {parse_mailbox(t, P, utf8=True).key for t in ("a\u037e", '"a\u037e"', '"a;"')}
    assert keys == {'"a;"@example.org'}
    assert parse_mailbox("a\u037e", P, utf8=True).local == "a\u037e"  # as written


@pytest.mark.parametrize(("typed", "key"), [
    ("joe", "joe"),
    ("j\u00f6rg", "j\u00f6rg"),
    ("a;", '"a;"'),
    ("a..b", '"a..b"'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ('"', '"\\""'),
])
def test_rcpt_local_is_the_form_rcpt_gives_a_name_typed_unquoted(typed: str, key: str) -> None:
    # `user add` and `alias add` take a name as typed and store it as RCPT
    # can name it: itself where it is a dot-string, else quoted (RCPT
    # TO:<a;@...> is a syntax error), escaping only " and \
    assert rcpt_local(typed) == key
    assert parse_mailbox(f"{key}@example.org", P, utf8=True).local == key


def test_a_bare_local_part_takes_the_primary_domain_in_the_form_the_session_allows() -> None:
    # the client wrote ASCII only: outside SMTPUTF8 the domain it gets is
    # the A-label form (RFC 5321 4.5.1: RCPT TO:<Postmaster> must be
    # taken); with SMTPUTF8, the domain as configured
    primary = "b\u00fccher.example"
    assert parse_mailbox("Postmaster", primary) == Address("Postmaster", "xn--bcher-kva.example")
    assert parse_mailbox('"joe"', primary) == Address("joe", "xn--bcher-kva.example")
    assert parse_mailbox("Postmaster", primary, utf8=True) == Address("Postmaster", primary)
    assert parse_mailbox('"joe"', primary, utf8=True) == Address("joe", primary)


def test_parse_mailbox_takes_no_utf8_unless_told() -> None:
    assert reply_of(parse_mailbox, "j\u00f6rg@x.test", P) == replies.SMTPUTF8_NOT_DECLARED


def test_a_quoted_pair_may_escape_a_space() -> None:
    # quoted-pairSMTP = %d92 %d32-126 (RFC 5321 4.1.2): the space is its first
    assert parse_mailbox('"a\\ b"@x.test', P) == Address('"a b"', "x.test")
    assert parse_mailbox('"a\\~b"@x.test', P) == Address("a~b", "x.test")


@pytest.mark.parametrize("text", ['"a"xexample.org', '"a"@', '"a" @example.org',
                                  '"a"x@example.org'])
def test_a_quoted_local_part_is_followed_by_at_and_a_domain_or_nothing(text: str) -> None:
    assert reply_of(parse_mailbox, text, P) == replies.SYNTAX_ADDRESS


def test_find_unquoted_skips_quoted_strings_and_their_escapes() -> None:
    assert find_unquoted('<"a>b"@x>', ">") == 8
    assert find_unquoted('<"a\\">b"@x>', ">") == 10  # \" does not end the quoted string
    assert find_unquoted('"a"<b>', "<") == 3
    assert find_unquoted('a>"b">', ">", 2) == 5  # from start on
    assert find_unquoted('"a>b"', ">") == -1
    assert find_unquoted("a>b", ">", 2) == -1
    # outside a quoted string a backslash escapes nothing
    assert find_unquoted('a\\>"b">', ">") == 2


def test_only_sp_and_htab_stand_between_the_colon_the_path_and_its_parameters() -> None:
    # anything else is no blank (RFC 5321 4.1.2: SP; HTAB taken too)
    for before in ("X", "\v", "\xa0"):
        assert reply_of(parse_rcpt, f"TO:{before}<a@b.test>", P).code == 501, before
        assert reply_of(parse_mail, f"FROM:<a@b.test>{before}SIZE=1", P) == (
            replies.SYNTAX_ARGUMENT), before
    assert parse_rcpt("TO: \t<a@b.test>\t NOTIFY=NEVER", P)[0] == Address("a", "b.test")


def test_address_literals():
    assert parse_mailbox("u@[192.0.2.1]", P).domain == "[192.0.2.1]"
    # the tag as RFC 5321 4.1.3 writes it, whatever case it came in
    assert parse_mailbox("u@[IPv6:2001:DB8::1]", P).domain == "[IPv6:2001:db8::1]"
    assert parse_mailbox("u@[ipv6:2001:DB8::1]", P).domain == "[IPv6:2001:db8::1]"
    assert parse_mailbox("u@[IPv6:::ffff:192.0.2.1]", P).domain == "[IPv6:::ffff:c000:201]"
    for bad in ("u@[300.1.1.1]", "u@[IPv6:zz]", "u@[1.2.3.4", "u@[x:y]",
                # a zone id (RFC 4007) is no part of RFC 5321's IPv6-addr:
                # ipaddress takes any characters after the "%"
                "u@[IPv6:fe80::1%eth0]", "u@[IPv6:::1%a\rX-Injected: yes\x1b[2J]",
                "u@[IPv6:::1%a b]", "u@[IPv6: ::1]",
                # a zone of hex digits only is still a zone
                "u@[IPv6:fe80::1%1]", "u@[IPv6:fe80::1%a]",
                # RFC 5321 4.1.3: at most 6 groups beside "::", 4 with an
                # IPv4 tail (ipaddress takes 7 and 5)
                "u@[IPv6:1:2:3:4:5:6:7::]", "u@[IPv6:::1:2:3:4:5:6:7]",
                "u@[IPv6:1:2:3:4:5::192.0.2.1]", "u@[IPv6:1:2:3:4::5:192.0.2.1]",
                "u@[IPv6:1::2:3:4:5:192.0.2.1]",
                # an IPv4 address is no IPv6 literal in any of its four forms
                "u@[IPv6:192.0.2.1]", "u@[ipv6:192.0.2.1]"):
        assert reply_of(parse_mailbox, bad, P) == replies.SYNTAX_ADDRESS, bad
    for good in ("u@[IPv6:1:2:3:4:5:6::]", "u@[IPv6:1:2:3::4:5:6]",
                 "u@[IPv6:1:2:3:4::192.0.2.1]", "u@[IPv6:1:2:3:4:5:6:7:8]",
                 "u@[IPv6:1:2:3:4:5:6:192.0.2.1]", "u@[IPv6:::]"):
        assert parse_mailbox(good, P).domain.startswith("[IPv6:"), good


@pytest.mark.parametrize(
    "bad",
    ["user@remote@example.org", "a..b@x.test", ".a@x.test", "a.@x.test", "a@-x.test",
     "a@x..test", "a b@x.test", "a@", "@x.test", '"unterminated@x.test', "(c)a@x.test"],
)
def test_bad_mailboxes(bad):
    assert reply_of(parse_mailbox, bad, P) == replies.SYNTAX_ADDRESS


def test_relay_trick_forms_parse_to_local_mailboxes():
    # They are syntactically local; the router then finds no such user.
    assert parse_mailbox("user%remote.test@example.org", P) == Address("user%remote.test", P)
    assert parse_mailbox("remote.test!user@example.org", P) == Address("remote.test!user", P)


def test_mail_prefix_and_brackets():
    assert reply_of(parse_mail, "TO:<a@b>", P) == replies.SYNTAX_ARGUMENT
    assert reply_of(parse_mail, "FROM", P) == replies.SYNTAX_ARGUMENT
    assert reply_of(parse_mail, "FROM:<a@b", P) == replies.SYNTAX_ADDRESS
    assert reply_of(parse_mail, "FROM:<a@b>SIZE=1", P) == replies.SYNTAX_ARGUMENT
    assert parse_mail("FROM:<a@b.test>\tSIZE=1", P)[1].size == 1  # a tab is a blank too
    assert reply_of(parse_rcpt, "TO:", P) == replies.SYNTAX_RECIPIENT
    assert reply_of(parse_mail, "FROM:<" + "a" * 300 + "@b.test>", P) == \
        replies.SENDER_PATH_TOO_LONG


# --- SMTPUTF8 ---------------------------------------------------------------------


def test_utf8_addresses_need_smtputf8():
    # RFC 6531 3.5: a sender is "mailbox unavailable" (550), a recipient
    # "mailbox name not allowed" (553), both X.6.7
    refused = reply_of(parse_mail, "FROM:<jöe@x.test>", P)
    assert (refused.code, refused.status) == (550, "5.6.7")
    assert reply_of(parse_mail, "FROM:<joe@bücher.test>", P).code == 550
    assert reply_of(parse_mail, 'FROM:<"jö e"@x.test>', P).code == 550
    assert reply_of(parse_rcpt, 'TO:<"joe"é>', P) == replies.SMTPUTF8_NOT_DECLARED
    sender, params = parse_mail("FROM:<jöe@bücher.test> SMTPUTF8", P)
    assert sender == Address("jöe", "bücher.test") and params.smtputf8
    assert reply_of(parse_rcpt, "TO:<δ@x.test>", P) == replies.SMTPUTF8_NOT_DECLARED
    assert (replies.SMTPUTF8_NOT_DECLARED.code, replies.SMTPUTF8_NOT_DECLARED.status) == (
        553, "5.6.7")
    assert parse_rcpt("TO:<δ@x.test>", P, utf8=True)[0] == Address("δ", "x.test")


def test_path_limit_counts_octets():
    # 256 octets (RFC 5321 4.5.3.1.3): "ü" is two, so 124 of them fit and
    # 125 do not, though both paths are far under 256 characters.
    fits, over = "ü" * 124 + "@x.test", "ü" * 125 + "@x.test"
    assert len(fits.encode()) == 255 and len(over.encode()) == 257
    assert parse_mail(f"FROM:<{fits}> SMTPUTF8", P)[0] == Address("ü" * 124, "x.test")
    assert reply_of(parse_mail, f"FROM:<{over}> SMTPUTF8", P) == replies.SENDER_PATH_TOO_LONG
    assert parse_rcpt(f"TO:<{fits}>", P, utf8=True)[0] == Address("ü" * 124, "x.test")
    assert reply_of(parse_rcpt, f"TO:<{over}>", P, utf8=True) == replies.PATH_TOO_LONG
    # with SMTPUTF8, exactly 256 octets fit and 257 do not
    fits, over = "ü" * 124 + "@xy.test", "ü" * 124 + "@xyz.test"
    assert len(fits.encode()) == 256 and len(over.encode()) == 257
    assert parse_mail(f"FROM:<{fits}> SMTPUTF8", P)[0] == Address("ü" * 124, "xy.test")
    assert parse_rcpt(f"TO:<{fits}>", P, utf8=True)[0] == Address("ü" * 124, "xy.test")
    assert reply_of(parse_mail, f"FROM:<{over}> SMTPUTF8", P) == replies.SENDER_PATH_TOO_LONG
    assert reply_of(parse_rcpt, f"TO:<{over}>", P, utf8=True) == replies.PATH_TOO_LONG
    # 256 octets inside the brackets: RFC 5321 4.5.3.1.3's 256 count the
    # brackets, a bound on what a server must take (4.5.3.1); the hub
    # takes two octets more, and refuses the next one
    ascii_max = "a" * 249 + "@x.test"
    assert parse_mail(f"FROM:<{ascii_max}>", P)[0].local == "a" * 249
    assert parse_rcpt(f"TO:<{ascii_max}>", P)[0].local == "a" * 249
    assert reply_of(parse_mail, f"FROM:<a{ascii_max}>", P) == replies.SENDER_PATH_TOO_LONG
    assert reply_of(parse_rcpt, f"TO:<a{ascii_max}>", P) == replies.PATH_TOO_LONG


def test_a_path_too_long_is_501_path_too_long_in_every_form():
    # RFC 5321 4.5.3.1.10's "501 Path too long", with the enhanced code of
    # a bad sender (X.1.7) or recipient (X.1.3), as every bad path's; it
    # was "Bad address syntax", which sent a client looking for a typo.
    # Counted as written in the lenient forms (no brackets, a bare name)
    # and with a source route; the null path is 2 octets.
    assert (replies.SENDER_PATH_TOO_LONG.code, replies.SENDER_PATH_TOO_LONG.status,
            replies.SENDER_PATH_TOO_LONG.lines) == (501, "5.1.7", ("Path too long",))
    assert (replies.PATH_TOO_LONG.code, replies.PATH_TOO_LONG.status,
            replies.PATH_TOO_LONG.lines) == (501, "5.1.3", ("Path too long",))
    over = "a" * 250 + "@x.test"  # 257 octets
    for mail in (f"FROM:<{over}>", f"FROM: {over}", f"FROM:{over} SIZE=10",
                 "FROM:<" + "b" * 257 + ">", "FROM: " + "b" * 257,
                 f"FROM:<@r.test:{over[5:]}>"):
        assert reply_of(parse_mail, mail, P) == replies.SENDER_PATH_TOO_LONG, mail
    for rcpt in (f"TO:<{over}>", f"TO: {over}", "TO: " + "b" * 257,
                 f"TO:<{over}> NOTIFY=NEVER", f"TO:<@r.test:{over[5:]}>"):
        assert reply_of(parse_rcpt, rcpt, P) == replies.PATH_TOO_LONG, rcpt
    assert parse_mail("FROM:<>", P)[0] is None
    assert parse_mail("FROM: " + "b" * 256, P)[0].local == "b" * 256
    assert parse_rcpt("TO: " + "b" * 256, P)[0].local == "b" * 256


# --- parameters ------------------------------------------------------------------


def test_mail_parameters():
    _, p = parse_mail(
        "FROM:<a@b.test> size=1000 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2Bx AUTH=<>", P
    )
    assert p == MailParams(1000, True, True, "<>", "HDRS", "QQ+x", "QQ+2Bx")
    _, p = parse_mail("FROM:<a@b.test> BODY=7BIT AUTH=joe+40example.org", P)
    assert p == MailParams(body_8bit=False, auth="joe@example.org")


def test_envid_and_orcpt_are_kept_as_sent_beside_their_decoded_form():
    # RFC 3461 5.2.1 (a), (d): relayed with the same esmtp-value, so the
    # spelling is kept: an unneeded escape, the case of letters and of the
    # address type, utf-8-addr-xtext's lower-case HEXPOINT (RFC 6533 3)
    _, p = parse_mail("FROM:<a@b.test> ENVID=a+41b", P)
    assert (p.envid, p.envid_raw) == ("aAb", "a+41b")
    for sent, decoded in (("rfc822;Joe+2BX@Example.COM", "rfc822;Joe+X@Example.COM"),
                          ("RFC822;j+6Fe@x.test", "RFC822;joe@x.test"),
                          ("UTF-8;j\\x{f6}rg@x.test", "UTF-8;j\u00f6rg@x.test")):
        _, r = parse_rcpt(f"TO:<a@b.test> ORCPT={sent}", P)
        assert (r.orcpt, r.orcpt_raw) == (decoded, sent)
    assert parse_rcpt("TO:<a@b.test>", P)[1].orcpt_raw is None


@pytest.mark.parametrize("arg", ["MAIL FROM:<a@b.test> ENVID=a+2bb",
                                 "RCPT TO:<a@b.test> ORCPT=rfc822;a+2bb@b.test"])
def test_lower_case_xtext_hex_is_a_syntax_error(arg):
    # RFC 3461 4: a hexchar is "+" and two *upper case* hexadecimal digits;
    # "+2b" is no xtext, so the value is not valid: 501 (5.1 (a), (b))
    verb, _, rest = arg.partition(" ")
    parse = parse_mail if verb == "MAIL" else parse_rcpt
    assert reply_of(parse, rest, P) == replies.PARAM_SYNTAX
    assert replies.PARAM_SYNTAX.code == 501


@pytest.mark.parametrize(
    "params, reply",
    [
        ("XFOO=1", replies.PARAM_NOT_RECOGNIZED),
        ("SMTPUTF8 XFOO=\u00e9", replies.PARAM_NOT_RECOGNIZED),  # RFC 6531 3.3's esmtp-value
        ("BODY=BINARYMIME", replies.PARAM_NOT_RECOGNIZED),
        ("SIZE=abc", replies.PARAM_SYNTAX),
        ("SIZE=\u00b2", replies.PARAM_SYNTAX),  # a digit to str.isdigit, not to RFC 1870
        ("SIZE=\u0661\u0660", replies.PARAM_SYNTAX),
        ("SIZE=" + "1" * 21, replies.PARAM_SYNTAX),  # RFC 1870: 1*20DIGIT
        ("SIZE=10\u00a0", replies.PARAM_SYNTAX),  # no blank to str.split but to SMTP
        ("BODY=9BIT", replies.PARAM_SYNTAX),
        ("BODY", replies.PARAM_SYNTAX),
        ("SIZE", replies.PARAM_SYNTAX),
        ("SIZE=1 SIZE=2", replies.PARAM_SYNTAX),
        ("SMTPUTF8=yes", replies.PARAM_SYNTAX),
        ("RET=ALL", replies.PARAM_SYNTAX),
        ("ENVID=a+zz", replies.PARAM_SYNTAX),
        ("=x", replies.PARAM_SYNTAX),
    ],
)
def test_bad_mail_parameters(params, reply):
    assert reply_of(parse_mail, "FROM:<a@b.test> " + params, P) == reply


def test_parameters_are_separated_by_blanks_only():
    # RFC 5321 4.1.2: esmtp-param *(SP esmtp-param).  str.split() also splits
    # at VT, FF, the ASCII separators FS..US and Unicode blanks, and would
    # drop them without a word.
    for sep in ("\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u2003"):
        assert reply_of(parse_mail, f"FROM:<a@b.test> SMTPUTF8{sep}SIZE=10", P) == (
            replies.PARAM_SYNTAX), repr(sep)
        assert reply_of(parse_mail, f"FROM:<a@b.test> {sep}", P) == replies.PARAM_SYNTAX
        assert reply_of(parse_rcpt, f"TO:<a@b.test> NOTIFY=NEVER{sep}", P, utf8=True) == (
            replies.PARAM_SYNTAX), repr(sep)
        assert reply_of(parse_rcpt, f"TO:<a@b.test> {sep}", P, utf8=True) == replies.PARAM_SYNTAX
    _, params = parse_mail("FROM:<a@b.test> \tSIZE=10 \t BODY=8BITMIME\t", P)
    assert (params.size, params.body_8bit) == (10, True)


def test_unknown_parameter_is_555():
    assert replies.PARAM_NOT_RECOGNIZED.code == 555
    assert replies.PARAM_NOT_RECOGNIZED.status == "5.5.4"
    assert reply_of(parse_rcpt, "TO:<a@b.test> FOO", P) == replies.PARAM_NOT_RECOGNIZED


def test_rcpt_dsn_parameters():
    _, p = parse_rcpt("TO:<a@b.test> NOTIFY=success,FAILURE ORCPT=rfc822;a+2Bb@b.test", P)
    assert p == RcptParams(("SUCCESS", "FAILURE"), "rfc822;a+b@b.test", "rfc822;a+2Bb@b.test")
    assert parse_rcpt("TO:<a@b.test> NOTIFY=NEVER", P)[1].notify == ("NEVER",)
    for bad in ("NOTIFY=NEVER,SUCCESS", "NOTIFY=", "NOTIFY=SUCCESS,SUCCESS", "ORCPT=rfc822",
                "ORCPT=;x"):
        assert reply_of(parse_rcpt, "TO:<a@b.test> " + bad, P) == replies.PARAM_SYNTAX


def test_notify_is_never_alone_or_a_list_without_empty_or_repeated_elements():
    # RFC 3461 4.1: "NEVER" / 1#("SUCCESS" / "FAILURE" / "DELAY"), keywords
    # in any case (ABNF strings are); an empty element, a repeated one,
    # NEVER beside another, or a value missing is refused, never read as
    # something the client may not have meant
    assert parse_rcpt("TO:<a@b.test> NOTIFY=Never", P)[1].notify == ("NEVER",)
    assert parse_rcpt("TO:<a@b.test> notify=delay,Success", P)[1].notify == (
        "DELAY", "SUCCESS")
    for bad in ("NOTIFY=SUCCESS,,FAILURE", "NOTIFY=,SUCCESS", "NOTIFY=SUCCESS,", "NOTIFY=,",
                "NOTIFY", "NOTIFY=NEVER,NEVER", "NOTIFY=FAILURE,NEVER", "NOTIFY=success,SUCCESS",
                "NOTIFY=SUCCESS NOTIFY=FAILURE", "NOTIFY=SUCCESS;FAILURE", "NOTIFY=ALWAYS"):
        assert reply_of(parse_rcpt, "TO:<a@b.test> " + bad, P) == replies.PARAM_SYNTAX, bad
    # a MAIL parameter on RCPT, and the other way round: not recognized there
    for mail_only in ("RET=FULL", "ENVID=x"):
        assert reply_of(parse_rcpt, "TO:<a@b.test> " + mail_only, P) == (
            replies.PARAM_NOT_RECOGNIZED)
    for rcpt_only in ("NOTIFY=NEVER", "ORCPT=rfc822;a@b.test"):
        assert reply_of(parse_mail, "FROM:<a@b.test> " + rcpt_only, P) == (
            replies.PARAM_NOT_RECOGNIZED)


def test_ret_and_envid_without_a_value_or_twice_are_501():
    assert parse_mail("FROM:<a@b.test> ret=Hdrs", P)[1].ret == "HDRS"
    for bad in ("RET", "RET=", "RET=NEVER", "RET=FULL RET=FULL", "RET=FULL ret=HDRS",
                "ENVID", "ENVID=", "ENVID=a ENVID=a", "AUTH", "AUTH=", "AUTH=<a@b.test>",
                "AUTH=+3Ca@b.test+3E"):
        assert reply_of(parse_mail, "FROM:<a@b.test> " + bad, P) == replies.PARAM_SYNTAX, bad


@pytest.mark.parametrize("orcpt", [
    # RFC 3461 4.2: the decoded value is printable US-ASCII
    "rfc822;a+0D+0ABcc:+20x@y",  # a line break: a header of its own in the notice
    "rfc822;a+00b@x",
    "rfc822;a+1Bb@x",
    "rfc822;+E2+82+AC@x",  # UTF-8, under a type that cannot carry it
    "rfc822;a+E9b@x",  # not even UTF-8
    # RFC 6533 3: utf-8-addr-xtext has no "+", "=" or stray "\", and each
    # escape is the shortest HEXPOINT of a character
    "utf-8;a+2Bb@x",
    "utf-8;a\\b@x",
    "utf-8;a\\x{0E9}@x",
    "utf-8;a\\x{0e9}@x",
    "utf-8;a\\X{E9}@x",  # the "\\x" itself is %x5C.78: a small x only
    "utf-8;a\\x{D800}@x",
    "utf-8;a\\x{110000}@x",
    "utf-8;a\\x{0A}b@x",
    "utf-8;",  # no address at all
    "rfc822;",
])
def test_orcpt_values_are_checked(orcpt):
    assert reply_of(parse_rcpt, f"TO:<a@b.test> ORCPT={orcpt}", P) == replies.PARAM_SYNTAX


def test_orcpt_of_type_utf8():
    # RFC 6533: \x{HEX} escapes decoded; raw UTF-8 only with SMTPUTF8
    got = parse_rcpt("TO:<a@b.test> ORCPT=utf-8;j\\x{F6}rg\\x{20AC}@x", P)[1].orcpt
    assert got == "utf-8;j\u00f6rg\u20ac@x"
    raw = "TO:<a@b.test> ORCPT=utf-8;j\u00f6rg@b\u00fccher.test"
    assert parse_rcpt(raw, P, utf8=True)[1].orcpt == "utf-8;j\u00f6rg@b\u00fccher.test"
    assert reply_of(parse_rcpt, raw, P) == replies.PARAM_SYNTAX
    assert parse_rcpt("TO:<a@b.test> ORCPT=UTF-8;plain@x", P)[1].orcpt == "UTF-8;plain@x"
    # HEXPOINT is made of RFC 5234 HEXDIGs and quoted strings ("D", "2B"),
    # which ABNF matches in either case (RFC 5234 2.3): small letters too
    got = parse_rcpt("TO:<a@b.test> ORCPT=utf-8;j\\x{f6}rg\\x{20ac}\\x{2b}@x", P)[1].orcpt
    assert got == "utf-8;j\u00f6rg\u20ac+@x"
    # the type is a keyword: any case (RFC 3461 4.2)
    assert parse_rcpt("TO:<a@b.test> ORCPT=UTF-8;j\\x{F6}rg@x", P)[1].orcpt == "UTF-8;j\u00f6rg@x"


def test_envid_is_ascii_unless_smtputf8():
    # RFC 3461 4.4: US-ASCII; UTF-8 only in an SMTPUTF8 transaction,
    # wherever SMTPUTF8 stands among the parameters
    for arg in ("FROM:<a@b.test> ENVID=a+E2+82+ACz", "FROM:<a@b.test> ENVID=a+E9"):
        assert reply_of(parse_mail, arg, P) == replies.PARAM_SYNTAX
    assert parse_mail("FROM:<a@b.test> ENVID=a+E2+82+ACz SMTPUTF8", P)[1].envid == "a\u20acz"
    assert reply_of(parse_mail, "FROM:<a@b.test> SMTPUTF8 ENVID=a+E9", P) == replies.PARAM_SYNTAX


def test_envid_and_orcpt_take_white_space_alike():
    # RFC 3461 4.2 and 4.4: both "printable (graphic and white space)"
    assert parse_rcpt("TO:<a@b.test> ORCPT=rfc822;a+09b@x", P)[1].orcpt == "rfc822;a\tb@x"
    assert parse_mail("FROM:<a@b.test> ENVID=a+09b+20c", P)[1].envid == "a\tb c"
    for bad in ("a+0Ab", "a+0Db", "a+7Fb"):  # line breaks, controls: never
        assert reply_of(parse_mail, f"FROM:<a@b.test> ENVID={bad}", P) == replies.PARAM_SYNTAX


def test_envid_is_at_most_100_characters_as_sent():
    # RFC 3461 4.4: counted on the wire, not decoded ("+2B" is one "+"); 90
    # escaped emoji (an SMTPUTF8 id) decode to 90 characters but take 1,080,
    # and their notice line would pass RFC 5322's 998
    assert parse_mail("FROM:<a@b.test> ENVID=" + "e" * 100, P)[1].envid == "e" * 100
    assert parse_mail("FROM:<a@b.test> ENVID=a" + "+2B" * 33, P)[1].envid == "a" + "+" * 33
    emoji = "+F0+9F+98+80"
    assert parse_mail(f"FROM:<a@b.test> SMTPUTF8 ENVID={emoji * 8}", P)[1].envid == \
        "\U0001F600" * 8
    for arg in ("ENVID=" + "e" * 101, "ENVID=" + "+2B" * 34, "SMTPUTF8 ENVID=" + emoji * 9):
        assert reply_of(parse_mail, f"FROM:<a@b.test> {arg}", P) == replies.PARAM_SYNTAX, arg


def test_xtext():
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    for bad in ("a+2b",  # lower-case hex is not xtext
                "a=b"):  # neither is a raw "=" (RFC 3461 4: xchar)
        with pytest.raises(RemoteProtocolError):
            xtext_decode(bad)
    # RFC 6533 3: a 2-digit HEXPOINT only for what QCHAR leaves out ("A" is one)
    assert utf8_addr_decode("\\x{2B}\\x{5C}") == "+\\"
    for bad in ("\\x{41}", "a=b"):  # nor a raw "=" (QCHAR leaves it out)
        with pytest.raises(RemoteProtocolError):
            utf8_addr_decode(bad)


def test_utf8_addr_hexpoints_are_the_shortest_form():
    # RFC 6533 3: each HEXPOINT length begins where the shorter one ends,
    # up to U+10FFFF, and no surrogate
    for digits in ("20", "E9", "100", "FFF", "1000", "D7FF", "E000", "FFFF", "10000", "FFFFF",
                   "100000", "10FFFF"):
        assert utf8_addr_decode(f"\\x{{{digits}}}") == chr(int(digits, 16)), digits
    for digits in ("0E9", "0FF", "0FFF", "0FFFF", "0FFFFF", "110000", "D800", "DFFF"):
        with pytest.raises(RemoteProtocolError):
            utf8_addr_decode(f"\\x{{{digits}}}")


def test_the_two_digit_hexpoints_are_exactly_the_grammars():
    # RFC 6533 3, HEXPOINT's 2-digit forms: ("0"/"1") %x31-39, "10", "20",
    # "2B", "3D", "7F", "5C" and HEXDIG8 HEXDIG (80 to FF); QCHAR has the rest
    grammar = {*range(0x01, 0x0A), *range(0x10, 0x1A), 0x20, 0x2B, 0x3D, 0x5C, 0x7F,
               *range(0x80, 0x100)}
    for cp in range(0x100):
        escape = f"\\x{{{cp:02X}}}"
        if cp in grammar:
            assert utf8_addr_decode(escape) == chr(cp), escape
        else:
            with pytest.raises(RemoteProtocolError):
                utf8_addr_decode(escape)


def test_xtext_encoders_write_every_xchar_or_qchar_as_itself():
    # RFC 3461 4: "!" to "~" but "+" and "=" are xchars; only the rest is +HH
    xchars = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "+=")
    assert xtext_encode(xchars) == xchars
    assert xtext_encode(" +=\x7f") == "+20+2B+3D+7F"
    # RFC 6533 3: so does utf8_addr_encode with QCHAR ("\\" is no QCHAR either)
    assert utf8_addr_encode(xchars.replace("\\", "")) == xchars.replace("\\", "")
    assert utf8_addr_encode("\\") == "\\x{5C}"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_utf8_addr_xtext_round_trip(text):
    encoded = utf8_addr_encode(text)
    assert encoded.isascii() and "+" not in encoded and "=" not in encoded
    if all(c.isprintable() for c in text):
        assert utf8_addr_decode(encoded) == text


@given(text=st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)),
                   min_size=1, max_size=40))
def test_unitext_gives_any_address_back_and_keeps_printable_utf8(text):
    # RFC 6533 3 utf-8-addr-unitext: decoded, the text again; on one line,
    # with printable non-ASCII characters as they are (C0 controls, which
    # no address holds, are left out: HEXPOINT spells only some of them)
    encoded = utf8_addr_unitext(text)
    assert utf8_addr_decode(encoded) == text
    assert encoded.isprintable() and " " not in encoded
    kept = [c for c in text if c > "\x7f" and c.isprintable()]
    assert all(c in encoded for c in kept)


@given(st.text(max_size=40))
def test_xtext_round_trip(text):
    encoded = xtext_encode(text)
    assert encoded.isascii() and "=" not in encoded
    assert xtext_decode(encoded) == text


# --- round trips -------------------------------------------------------------------

atext = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atom = st.text(alphabet=atext, min_size=1, max_size=10)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
qcontent = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@given(dot_string, domain)
def test_mailbox_round_trip(local, dom):
    a = parse_mailbox(f"{local}@{dom}", P)
    assert a == Address(local, dom)
    assert parse_mailbox(str(a), P) == a
    sender, _ = parse_mail(f"FROM:<{a}>", P)
    rcpt, _ = parse_rcpt(f"TO:<@relay.test:{a}>", P)
    assert sender == rcpt == a


@given(qcontent, domain)
def test_quoted_round_trip(content, dom):
    quoted = '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    a = parse_mailbox(f"{quoted}@{dom}", P)
    assert parse_mailbox(str(a), P) == a
    rcpt, _ = parse_rcpt(f"TO:<{quoted}@{dom}> NOTIFY=NEVER", P)
    assert rcpt == a


# --- decoded ESMTP values: AUTH= (RFC 4954 5), ORCPT= (RFC 3461 4.2, RFC 6533 3) ----


@pytest.mark.parametrize("value", [
    "+0D+0A",  # a line break
    "a+00b@x.test", "a+1Bb@x.test",  # controls
    "<a@x.test>",  # "<" and ">" are xchars, but an addr-spec has no brackets
    "a+20b@x.test",  # a space outside a quoted string
    "a@b@x.test", "@x.test", "a@", "a..b@x.test",
    "a@xn--zz.test",  # a fake A-label, as in any other address
    "a@-x.test", "a@" + "x" * 64 + ".test",
    "j+C3+B6rg@x.test",  # UTF-8 without SMTPUTF8 (RFC 6531 3.3)
    "+E9@x.test",  # not UTF-8 at all
    "a" * 250 + "@x.test",  # no path could be that long (RFC 5321 4.5.3.1.3)
    "<>+20",
])
def test_a_malformed_auth_value_is_a_501(value):
    # RFC 4954 5: the decoded xtext "MUST be either an addr-spec or the two
    # characters <>"; a bad value of a known parameter is 501 5.5.4
    assert reply_of(parse_mail, f"FROM:<a@b.test> AUTH={value}", P) == replies.PARAM_SYNTAX
    assert reply_of(parse_mail, f"FROM:<a@b.test> AUTH={value} BODY=8BITMIME", P) == \
        replies.PARAM_SYNTAX


@pytest.mark.parametrize(("value", "decoded", "smtputf8"), [
    ("<>", "<>", False),
    ("+3C+3E", "<>", False),
    ("e+3Dmc2@example.com", "e=mc2@example.com", False),  # RFC 4954 5's own example
    ("joe", "joe", False),  # a bare name, as for every address (the contract)
    ("+22a+20b+22@x.test", '"a b"@x.test', False),
    ("a@[192.0.2.1]", "a@[192.0.2.1]", False),
    ("a@xn--bcher-kva.test", "a@xn--bcher-kva.test", False),
    ("j+C3+B6rg@b+C3+BCcher.test", "j\u00f6rg@b\u00fccher.test", True),
])
def test_a_well_formed_auth_value_is_kept_decoded(value, decoded, smtputf8):
    # SMTPUTF8 may stand before or after AUTH=
    for params in ([f"AUTH={value}", "SMTPUTF8"] if smtputf8 else [f"AUTH={value}"],
                   ["SMTPUTF8", f"AUTH={value}"] if smtputf8 else [f"AUTH={value}"]):
        assert parse_mail("FROM:<a@b.test> " + " ".join(params), P)[1].auth == decoded


u8_atom = st.text(alphabet=atext[:30] + "\u00e9\u00fc\u00df\u4e2d\U0001f600", min_size=1,
                  max_size=8)
u8_domain = st.lists(st.one_of(label, st.sampled_from(["b\u00fccher", "\u4e2d\u6587"])),
                     min_size=1, max_size=3).map(".".join)


@given(st.one_of(
    st.tuples(dot_string, domain, st.just(False)),
    st.tuples(st.lists(u8_atom, min_size=1, max_size=3).map(".".join), u8_domain,
              st.just(True)),
))
def test_auth_mailbox_round_trip(case):
    # any mailbox a path may hold, xtext-encoded (RFC 3461 4), comes back
    # as it was sent; UTF-8 ones in an SMTPUTF8 transaction only
    local, dom, utf8 = case
    mailbox = f"{local}@{dom}"
    encoded = xtext_encode(mailbox)
    assert encoded.isascii()
    tail = " SMTPUTF8" if utf8 else ""
    assert parse_mail(f"FROM:<a@b.test> AUTH={encoded}{tail}", P)[1].auth == mailbox
    if not mailbox.isascii():
        assert reply_of(parse_mail, f"FROM:<a@b.test> AUTH={encoded}", P) == \
            replies.PARAM_SYNTAX


# one character no decoded value may hold: C0 controls (TAB aside), DEL, the
# C1 controls and the Unicode line breaks
_never = st.one_of(st.characters(max_codepoint=0x1F).filter(lambda c: c != "\t"),
                   st.sampled_from(["\x7f", "\x85", "\x9b", "\u2028", "\u2029"]))


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10),
       _never, st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                       max_size=10),
       st.booleans())
def test_a_decoded_value_never_holds_a_control(head, bad, tail, smtputf8):
    # whatever escapes spell it (xtext "+HH" of the UTF-8 octets, RFC 6533
    # "\x{HEX}"), a control or a line break never gets into AUTH=, ORCPT=
    # or ENVID: each reaches a header field or a log line
    text = head + bad + tail
    u8 = " SMTPUTF8" if smtputf8 else ""
    for param in (f"AUTH={xtext_encode(text)}", f"AUTH={xtext_encode(text + '@x.test')}",
                  f"ENVID={xtext_encode(text)}"):
        assert reply_of(parse_mail, f"FROM:<a@b.test> {param}{u8}", P) == \
            replies.PARAM_SYNTAX, param
    for orcpt in (f"rfc822;{xtext_encode(text)}", f"utf-8;{utf8_addr_encode(text)}",
                  f"x400;{xtext_encode(text)}"):
        assert reply_of(parse_rcpt, f"TO:<a@b.test> ORCPT={orcpt}", P, smtputf8) == \
            replies.PARAM_SYNTAX, orcpt


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"),
               min_size=1, max_size=60))
def test_orcpt_rfc822_round_trip(text):
    # RFC 3461 4.2: any printable US-ASCII text, an address or not (the
    # value "is NOT constrained to conform to the syntax rules for that
    # addr-type"), comes back as sent
    for addr_type in ("rfc822", "RFC822", "x400"):
        got = parse_rcpt(f"TO:<a@b.test> ORCPT={addr_type};{xtext_encode(text)}", P)[1]
        assert got.orcpt == f"{addr_type};{text}"


_printable_u8 = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\u2028\u2029"
).filter(lambda c: " " <= c <= "~" or ord(c) > 0x9F)


@given(st.text(alphabet=_printable_u8, min_size=1, max_size=40), st.booleans())
def test_orcpt_utf8_round_trip(text, smtputf8):
    # RFC 6533 3: utf-8-addr-xtext (7-bit, any transaction) gives the text
    # back; as utf-8-addr-unitext (raw UTF-8 beside the escapes of "+",
    # "=", "\\" and the blanks) only in an SMTPUTF8 transaction
    got = parse_rcpt(f"TO:<a@b.test> ORCPT=utf-8;{utf8_addr_encode(text)}", P, smtputf8)[1]
    assert got.orcpt == f"utf-8;{text}"
    unitext = "".join(c if ord(c) > 0x7F else utf8_addr_encode(c) for c in text)
    if smtputf8:
        assert parse_rcpt(f"TO:<a@b.test> ORCPT=utf-8;{unitext}", P, True)[1].orcpt == \
            f"utf-8;{text}"
    elif not unitext.isascii():
        assert reply_of(parse_rcpt, f"TO:<a@b.test> ORCPT=utf-8;{unitext}", P) == \
            replies.PARAM_SYNTAX


@pytest.mark.parametrize(
    "arg",
    [
        # a quoted local part with UTF-8 in it is still checked for controls
        'FROM:<"\rX-Injected: yes\r\u00e9"@b.test> SMTPUTF8',
        'FROM:<"\x1b[2J\u00e9"@b.test> SMTPUTF8',
        # Unicode line breaks and C1 controls are no address characters
        "FROM:<a@b\u2028x.test> SMTPUTF8",
        "FROM:<a\u0085b@x.test> SMTPUTF8",
        # an ENVID that decodes to a line break would break the bounce
        "FROM:<a@b.test> ENVID=a+0D+0AX-Injected:+20yes",
        "FROM:<a@b.test> ENVID=a+1B",
    ],
)
def test_control_characters_never_get_in(arg):
    assert reply_of(parse_mail, arg, P) in (replies.SYNTAX_ADDRESS, replies.PARAM_SYNTAX)


def test_utf8_addresses_and_envid_still_work():
    sender, params = parse_mail('FROM:<"j\u00f6 e"@b\u00fccher.test> SMTPUTF8 ENVID=x+2By', P)
    assert str(sender) == '"j\u00f6 e"@b\u00fccher.test' and params.envid == "x+y"


_hostile = st.text(alphabet=st.sampled_from(
    list("u@[]:.%\"\\<> \t\r\n\x00\x1b\x7fIPv6abcf019é\u2028")), max_size=30)


_literals = st.builds(
    lambda ip, zone, tail: f"u@[IPv6:{ip}{zone}]{tail}",
    st.sampled_from(["::1", "fe80::1", "2001:db8::1", "::ffff:192.0.2.1"]),
    st.one_of(st.just(""), _hostile.map(lambda z: "%" + z)),
    st.sampled_from(["", ">", " "]),
)


@given(st.one_of(_hostile, _literals), st.booleans())
def test_whatever_is_accepted_prints_cleanly(text, utf8):
    # what the parser lets through ends up in replies, stored headers, the
    # log and the relay's commands: never a control character there
    try:
        a = parse_mailbox(text, P, utf8)
    except RemoteProtocolError:
        return
    shown = str(a)
    assert shown.isprintable() and "\r" not in shown and "\n" not in shown, shown
    assert str(a).isascii() or utf8


def test_the_dsn_line_limit_is_exact():
    # RFC 6533's utf-8-addr-xtext form of a UTF-8 recipient must fit one
    # "Final-Recipient: utf-8; " line of 998 characters: the longest it
    # takes is accepted, one character more is 501 5.1.3
    from txmailhub.smtp._parse import MAX_DSN_ADDRESS

    assert MAX_DSN_ADDRESS == 998 - len("Final-Recipient: utf-8; ")

    def path(extra: int) -> str:
        # "+" escapes to "\\x{2B}"; "a" pads to the exact length
        fixed, plus = "\u00fc@remote.test", len(utf8_addr_encode("+"))
        pluses = (MAX_DSN_ADDRESS - len(utf8_addr_encode(fixed))) // plus
        pad = MAX_DSN_ADDRESS - len(utf8_addr_encode(fixed)) - plus * pluses + extra
        return "+" * pluses + "a" * pad + fixed

    assert len(utf8_addr_encode(path(0))) == MAX_DSN_ADDRESS
    address, _ = parse_rcpt(f"TO:<{path(0)}>", P, True)
    assert len(utf8_addr_encode(str(address))) == MAX_DSN_ADDRESS
    # the source route is no part of the address a report names
    address, _ = parse_rcpt(f"TO:<@relay.example:{path(0)}>", P, True)
    assert len(utf8_addr_encode(str(address))) == MAX_DSN_ADDRESS
    assert reply_of(parse_rcpt, f"TO:<{path(1)}>", P, True) == replies.PATH_TOO_LONG


def test_an_ascii_recipient_is_never_too_long_for_a_dsn():
    # an ASCII address is reported as "rfc822;" as it is, unescaped: the
    # utf-8-addr-xtext limit is not for it, even in an SMTPUTF8 session
    rcpt, _ = parse_rcpt(f"TO:<{'+' * 200}@remote.test>", P, True)
    assert len(utf8_addr_encode(str(rcpt))) > 998 - len("Final-Recipient: utf-8; ")


def test_address_literals_with_leading_zeros():
    # RFC 5321 4.1.3: an Snum is 1 to 3 digits, "002" included; the literal
    # is kept in its one spelling, so [hub] domains' "[192.0.2.1]" matches
    assert parse_mailbox("u@[192.000.002.001]", P).domain == "[192.0.2.1]"
    assert parse_rcpt("TO:<u@[IPv6:::ffff:10.0.0.01]>", P)[0].domain == "[IPv6:::ffff:a00:1]"
    assert parse_mail("FROM:<@[010.0.0.1]:u@x.test>", P)[0] == Address("u", "x.test")


@pytest.mark.parametrize("domain", [
    # RFC 6531 3.3 adds U-labels to sub-domain; an ASCII label beside one
    # keeps RFC 5321's form, and a non-ASCII label must be a U-label
    "-x.b\u00fccher.test", "x-.b\u00fccher.test", "-b\u00fccher.test", "b\u00fccher-.test",
    "b\u00fc--cher.test",  # hyphens in 3rd and 4th place (RFC 5891 4.2.3.1)
    "\u2603.test",  # a snowman: DISALLOWED in IDNA2008
    "\u0301a.test",  # a label starting with a combining mark
    "b\u00fccher_.test",  # an underscore is no U-label character
    "a\u3002b.test",  # an ideographic full stop is no label character
])
def test_a_utf8_domain_is_labels_and_u_labels(domain):
    assert reply_of(parse_mailbox, f"u@{domain}", P, True) == replies.SYNTAX_ADDRESS
    assert reply_of(parse_rcpt, f"TO:<u@{domain}>", P, True) == replies.SYNTAX_RECIPIENT
    assert reply_of(parse_mail, f"FROM:<u@{domain}> SMTPUTF8", P) == replies.SYNTAX_ADDRESS
    route = f"@{domain}:u@x.test"  # the route counts towards the path's 256 octets
    assert reply_of(parse_rcpt, f"TO:<{route}>", P, True) == (
        replies.PATH_TOO_LONG if len(route.encode()) > 256 else replies.SYNTAX_RECIPIENT)


def test_u_labels_in_their_mapped_forms_still_work():
    # UTS 46 (docs/smtp.rst): capitals and decomposed forms are the name too
    for domain in ("b\u00fccher.test", "B\u00dcCHER.test", "bu\u0308cher.test",
                   "x-y.b\u00fccher.test", "my_host.b\u00fccher.test", "\u4e2d\u6587.test"):
        assert parse_mailbox(f"u@{domain}", P, True).domain == domain.lower(), domain


def test_a_quoted_pair_is_a_backslash_and_printable_ascii():
    # RFC 5321 4.1.2 quoted-pairSMTP = %d92 %d32-126; RFC 6531 3.3 extends
    # qtextSMTP with UTF-8, not the pair
    assert reply_of(parse_mailbox, '"\\\u00e9"@x.test', P, True) == replies.SYNTAX_ADDRESS
    assert reply_of(parse_rcpt, 'TO:<"a\\\u00e9"@x.test>', P, True) == replies.SYNTAX_RECIPIENT
    # an escaped backslash before UTF-8 is a pair and a qtext character
    assert parse_mailbox('"\\\\\u00e9"@x.test', P, True).local == '"\\\\\u00e9"'
    assert parse_mailbox('"\u00e9 \\"x"@x.test', P, True).local == '"\u00e9 \\"x"'


# --- label and domain lengths (RFC 1035 2.3.4, RFC 5321 4.5.3.1.2) ----------------

LONG = "x" * 64  # one octet over a label's 63


def test_a_label_over_63_octets_is_bad_syntax():
    # the sender's address is X.1.7, a recipient's X.1.3 (RFC 3463), as for
    # any other bad domain; 63 octets are a label
    for domain in (f"{LONG}.example", f"a.{LONG}", LONG, f"{LONG}.example."):
        assert reply_of(parse_mail, f"FROM:<u@{domain}>", P) == replies.SYNTAX_ADDRESS
        assert reply_of(parse_mail, f"FROM: u@{domain}", P) == replies.SYNTAX_ADDRESS
        assert reply_of(parse_rcpt, f"TO:<u@{domain}>", P) == replies.SYNTAX_RECIPIENT
        assert reply_of(parse_rcpt, f"TO:<@{domain}:u@x.test>", P) == replies.SYNTAX_RECIPIENT
        assert reply_of(parse_mail, f"FROM:<@{domain}:u@x.test>", P) == replies.SYNTAX_ADDRESS
        # under SMTPUTF8 too
        assert reply_of(parse_mail, f"FROM:<u@{domain}> SMTPUTF8", P) == replies.SYNTAX_ADDRESS
        assert reply_of(parse_rcpt, f"TO:<u@{domain}>", P, True) == replies.SYNTAX_RECIPIENT
    domain = "x" * 63 + ".example"
    assert parse_mail(f"FROM:<u@{domain}>", P)[0] == Address("u", domain)
    assert parse_rcpt(f"TO:<@{domain}:u@{domain}>", P)[0] == Address("u", domain)


def test_a_domain_over_255_octets_is_bad_syntax():
    # parse_mailbox has no path limit of its own: the domain's is what counts
    domain = ".".join(["d" * 63] * 4)  # 255
    assert parse_mailbox(f"u@{domain}", P).domain == domain
    assert reply_of(parse_mailbox, f"u@{domain}x", P) == replies.SYNTAX_ADDRESS


def test_the_seed_forms_still_work():
    assert parse_mail("FROM: bill@microsoft.com", P)[0] == Address("bill", "microsoft.com")
    assert parse_rcpt("TO: hollindg", P)[0] == Address("hollindg", P)


@pytest.mark.parametrize("domain", [
    # an ASCII label beside a U-label keeps its 63 octets
    f"{LONG}.b\u00fccher.test", f"b\u00fccher.{LONG}",
    # a U-label whose A-label is over 63 octets (xn-- and 59 octets)
    "\u00fc" * 58 + ".test",
    # an xn-- label beside a U-label must be an A-label (RFC 5890 2.3.2.1):
    # not Punycode at all, non-canonical Punycode, a disallowed character
    "xn--zz.b\u00fccher.test", "xn---bcher-kva.b\u00fccher.test", "xn--n3h.b\u00fccher.test",
    "b\u00fccher.xn--.test",
    # the A-label form over 253 octets: no IDNA2008 form (RFC 1035's 255 on
    # the wire), though the U-label form is shorter
    ".".join(["\u00fc"] * 40),  # 40 times "xn--tda", 319 octets
    "b\u00fccher." + ".".join(["d" * 63] * 3) + "." + "d" * 48,  # 254 as A-labels
])
def test_a_domain_with_a_u_label_has_an_a_label_form(domain):
    assert reply_of(parse_mailbox, f"u@{domain}", P, True) == replies.SYNTAX_ADDRESS
    assert reply_of(parse_mail, f"FROM:<u@{domain}> SMTPUTF8", P) == replies.SYNTAX_ADDRESS
    assert reply_of(parse_rcpt, f"TO:<u@{domain}>", P, True) == replies.SYNTAX_RECIPIENT
    route = f"@{domain}:u@x.test"  # the route counts towards the path's 256 octets
    assert reply_of(parse_rcpt, f"TO:<{route}>", P, True) == (
        replies.PATH_TOO_LONG if len(route.encode()) > 256 else replies.SYNTAX_RECIPIENT)


@pytest.mark.parametrize("domain", [
    "xn--zz.test", "XN--ZZ.test", "mail.xn--zz.test",  # not Punycode of a U-label
    "xn---bcher-kva.test",  # non-canonical (RFC 5891 5.3: it must encode back)
    "xn--n3h.test",  # a snowman, DISALLOWED in IDNA2008
    "xn--abc-.test",  # no Punycode content
])
def test_a_fake_a_label_is_bad_syntax_in_an_ascii_domain_too(domain):
    # RFC 5890 2.3.2.1: an xn-- label is an A-label or no valid label at
    # all, whatever the rest of the domain; so for the sender (X.1.7) as for
    # a recipient (X.1.3), as for every other bad domain, with or without
    # SMTPUTF8
    for utf8 in (False, True):
        assert reply_of(parse_mailbox, f"u@{domain}", P, utf8) == replies.SYNTAX_ADDRESS
        assert reply_of(parse_rcpt, f"TO:<u@{domain}>", P, utf8) == replies.SYNTAX_RECIPIENT
        assert reply_of(parse_rcpt, f"TO:<@{domain}:u@x.test>", P, utf8) == \
            replies.SYNTAX_RECIPIENT
    assert reply_of(parse_mail, f"FROM:<u@{domain}>", P) == replies.SYNTAX_ADDRESS
    assert reply_of(parse_mail, f"FROM:<u@{domain}> SMTPUTF8", P) == replies.SYNTAX_ADDRESS


def test_the_longest_a_label_forms_are_taken():
    from txmailhub.address import ascii_domain, canonical_domain

    longest = "\u00fc" * 57  # xn-- and 59 octets: 63
    rest = ".".join(["d" * 63] * 3) + "." + "d" * 47
    for domain in (f"{longest}.test", f"b\u00fccher.{rest}",  # 253 as A-labels
                   "xn--bcher-kva.b\u00fccher.test", "XN--BCHER-KVA.b\u00fccher.test",
                   "my_host.b\u00fccher.test", f"{'x' * 63}.b\u00fccher.test"):
        address = parse_mailbox(f"u@{domain}", P, True)
        assert address.domain == domain.lower()
        a_labels = ascii_domain(domain.lower())
        assert len(a_labels) <= 253 and all(len(x) <= 63 for x in a_labels.split("."))
    assert len(ascii_domain(f"b\u00fccher.{rest}")) == 253
    # an xn-- label that is an A-label is taken in an all-ASCII domain too,
    # and is the same domain as its U-label
    assert parse_mailbox("u@XN--BCHER-KVA.test", P).domain == "xn--bcher-kva.test"
    assert canonical_domain("xn--bcher-kva.test") == "b\u00fccher.test"


ldh_label = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,68}[a-z0-9_])?", fullmatch=True)
any_label = st.one_of(
    ldh_label, st.sampled_from(["b\u00fccher", "\u00fc" * 57, "\u00fc" * 58, "xn--bcher-kva",
                                "xn--zz", "\u4e2d\u6587", "stra\u00dfe", "B\u00dcCHER",
                                # ASCII labels IDNA2008 would not convert
                                "my_host", "_dmarc", "ab--cd", "My_Host"]),
)
any_domain = st.lists(any_label, min_size=1, max_size=6).map(".".join)


@given(any_domain, st.booleans())
def test_no_accepted_domain_has_a_label_over_63_or_a_length_over_255(dom, utf8):
    from txmailhub.address import ascii_domain, canonical_domain

    try:
        a = parse_mailbox(f"u@{dom}", P, utf8)
    except RemoteProtocolError as e:
        assert e.reply in (replies.SYNTAX_ADDRESS, replies.SMTPUTF8_NOT_DECLARED), dom
        return
    # the domain as DNS holds it: its A-label form (RFC 5890) when it has a
    # U-label, label by label (an underscore is no IDNA character)
    ace = ".".join(x if x.isascii() else idna.encode(x, uts46=True).decode("ascii")
                   for x in a.domain.split("."))
    assert all(len(x) <= 63 for x in ace.split(".")), dom
    assert len(ace) <= (255 if a.domain.isascii() else 253), dom
    if not a.domain.isascii():
        # which is what a peer without SMTPUTF8 gets (and DNS is asked),
        # an underscore or an "ab--cd" label beside a U-label included,
        # and both spellings are one domain
        assert ascii_domain(a.domain) == ace, dom
        assert canonical_domain(ace) == canonical_domain(a.domain), dom
    # the ASCII form is one a client without SMTPUTF8 can send: it parses,
    # to the same domain
    assert ace.isascii(), dom
    back = parse_mailbox(f"u@{ace}", P, False)
    assert canonical_domain(back.domain) == canonical_domain(a.domain), dom
    assert ascii_domain(back.domain) == back.domain == ace.lower(), dom
    # a round trip: the address as the hub writes it parses to itself, as a
    # path too when it fits one
    assert parse_mailbox(str(a), P, utf8) == a
    if len(str(a).encode()) <= 256:
        assert parse_rcpt(f"TO:<{a}>", P, utf8)[0] == a


config_domain = st.one_of(
    any_domain,
    st.lists(st.sampled_from(["b\u00fccher", "B\u00dcCHER", "bu\u0308cher", "xn--bcher-kva",
                              "\u0939\u093f\u0928\u094d\u0926\u0940", "example", "x" * 63,
                              "\u00fc" * 57, "d" * 60]),
             min_size=1, max_size=5).map(".".join),
)


@settings(max_examples=200, deadline=None)
@given(config_domain)
def test_a_configured_domain_is_one_the_parser_takes_in_every_spelling(dom):
    # [hub] domains and the paths of MAIL/RCPT must agree: whatever the
    # configuration takes, a client can name, in its U-label and its A-label
    # form, and both are the configured domain (canonical_domain)
    from txmailhub.address import ascii_domain, canonical_domain
    from txmailhub.config import load_text
    from txmailhub.errors import ConfigError

    try:
        hub = load_text(f'[hub]\ndomains = ["{dom}"]\n', "/x.toml").hub
    except ConfigError:
        return
    spellings = {dom, dom.upper() if dom.isascii() else dom, ascii_domain(dom.lower())}
    for spelling in spellings:
        utf8 = not spelling.isascii()
        found = [parse_mailbox(f"u@{spelling}", P, utf8)]
        if len(f"u@{spelling}".encode()) <= 256:  # else too long a path, whatever its domain
            found += [parse_rcpt(f"TO:<u@{spelling}>", P, utf8)[0],
                      parse_mail(f"FROM:<u@{spelling}>" + (" SMTPUTF8" if utf8 else ""), P)[0]]
        for address in found:
            assert canonical_domain(address.domain) == hub.primary_domain, (dom, spelling)


def test_orcpt_is_at_most_500_characters_as_sent():
    # RFC 3461 4.2: "The entire ORCPT parameter MAY be up to 500 characters
    # in length": the value, type and ";" included, escapes counted as sent
    # (as ENVID's 100, 4.4); any length was taken (and left out when relayed)
    fits = "rfc822;" + "o" * 493
    assert parse_rcpt(f"TO:<a@b.test> ORCPT={fits}", P)[1].orcpt_raw == fits
    escaped = "rfc822;a" + "+2B" * 164  # 500 characters, 165 decoded
    assert parse_rcpt(f"TO:<a@b.test> ORCPT={escaped}", P)[1].orcpt == "rfc822;a" + "+" * 164
    utf8 = "utf-8;" + "\\x{E9}" * 82 + "ab"  # RFC 6533's escapes: 500 characters
    assert len(utf8) == 500 and parse_rcpt(f"TO:<a@b.test> ORCPT={utf8}", P)[1].orcpt == \
        "utf-8;" + "\u00e9" * 82 + "ab"
    # raw UTF-8 (SMTPUTF8): characters, not octets (994 of them here)
    raw = "utf-8;" + "\u00e9" * 494
    assert len(raw) == 500 and parse_rcpt(f"TO:<a@b.test> ORCPT={raw}", P, True)[1].orcpt == raw
    for over in (fits + "o", escaped + "a", utf8 + "c", "utf-8;" + "\u00e9" * 495):
        assert reply_of(parse_rcpt, f"TO:<a@b.test> ORCPT={over}", P, True) == \
            replies.PARAM_SYNTAX, over[:20]
    # the one refusal of a bad ORCPT, whatever is wrong with it
    assert reply_of(parse_rcpt, "TO:<a@b.test> ORCPT=rfc822", P) == replies.PARAM_SYNTAX
