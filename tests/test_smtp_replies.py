"""The reply catalog, pinned.

Most tests compare what the server sends with the catalog's own constant
(``replies.TIMEOUT.text()``), so a wrong code in the catalog would go
unnoticed there.  This table is written out by hand from the RFCs and
docs/smtp.rst: changing a code or an enhanced status code means changing
it here too, on purpose."""

from __future__ import annotations

import errno

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from txmailhub.smtp import replies
from txmailhub.smtp.reply import Reply

PINNED = {
    # 2yz / 3yz
    "OK": (250, "2.0.0"),
    "RESET": (250, "2.0.0"),
    "SENDER_OK": (250, "2.1.0"),  # RFC 3463 X.1.0
    "RECIPIENT_OK": (250, "2.1.5"),  # X.1.5 destination address valid
    "DATA_START": (354, None),  # RFC 2034 4: "3xx responses are NOT included"
    "TLS_READY": (220, "2.0.0"),  # RFC 3207 4
    "AUTH_SUCCEEDED": (235, "2.7.0"),  # RFC 4954 6
    "EXPN_DISABLED": (252, "2.0.0"),  # RFC 5321 7.3: 252 when switched off
    "CANNOT_VRFY": (252, "2.0.0"),  # RFC 5321 3.5.3; X.1.5 would claim it valid
    "CANNOT_EXPN": (252, "2.0.0"),  # RFC 5321 3.5.3; nothing was expanded
    "VRFY_NEEDS_SMTPUTF8": (252, "2.6.8"),  # RFC 6531 3.7.4.2
    "BYE": (221, "2.0.0"),
    "DELIVERED": (250, "2.0.0"),
    "QUEUED": (250, "2.0.0"),
    "AUTH_CONTINUE": (334, None),  # RFC 4954 4: no enhanced code on 334
    "AUTH_USERNAME": (334, None),
    "AUTH_PASSWORD": (334, None),
    # 4yz
    "TIMEOUT": (421, "4.4.2"),  # RFC 5321 4.5.3.2, X.4.2 bad connection
    "DATA_TOO_SLOW": (421, "4.4.2"),
    "TOO_MANY_ERRORS": (421, "4.7.0"),
    "TOO_MANY_CONNECTIONS": (421, "4.3.2"),  # X.3.2 not accepting messages
    "TOO_MANY_CONNECTIONS_FROM_YOU": (421, "4.7.0"),
    "AUTH_TOO_MANY_FAILURES": (421, "4.7.0"),
    "LOCAL_ERROR": (451, "4.3.0"),
    "MAILBOXES_CHANGING": (451, "4.3.0"),  # X.1.1 is for permanent failures only
    "SESSION_ERROR": (421, "4.3.0"),  # RFC 5321 3.8: a closing server sends 421
    "STORAGE_FULL": (452, "4.3.1"),  # RFC 5321 4.2.3, X.3.1
    "MAILBOX_FULL": (452, "4.2.2"),  # RFC 3463 X.2.2, temporary
    # RFC 3463 X.3.5 "system incorrectly configured": a users file line
    # whose Maildir folder name the file system cannot hold
    "MAILBOX_NAME_UNUSABLE": (550, "5.3.5"),
    "MESSAGE_OVER_QUOTA": (550, "5.2.3"),  # RFC 3463 X.2.3; 550: a 552 at RCPT may be taken as 452
    "QUEUE_UNAVAILABLE": (451, "4.3.0"),
    "TOO_MANY_RECIPIENTS": (452, "4.5.3"),  # RFC 5321 4.5.3.1.10
    "AUTH_TEMPORARY": (454, "4.7.0"),  # RFC 4954 6
    "AUTH_THROTTLED": (454, "4.7.0"),
    # 5yz
    "UNKNOWN_COMMAND": (500, "5.5.2"),  # RFC 3463 X.5.2: "command is unrecognized"
    "LINE_TOO_LONG": (500, "5.5.2"),  # RFC 5321 4.5.3.1.4
    "AUTH_LINE_TOO_LONG": (500, "5.5.6"),  # RFC 4954 4
    "NUL_IN_COMMAND": (500, "5.5.2"),
    "BARE_CR_IN_COMMAND": (500, "5.5.2"),  # RFC 5321 2.3.8, as NUL
    "ERROR_PROCESSING": (500, "5.5.2"),
    "SYNTAX_ARGUMENT": (501, "5.5.4"),
    "HELO_SYNTAX": (501, None),  # RFC 2034 3 (4) exempts any HELO/EHLO reply
    "HELO_INVALID_UTF8": (501, None),
    "SYNTAX_ADDRESS": (501, "5.1.7"),  # RFC 3463 X.1.7: the sender's
    "SYNTAX_RECIPIENT": (501, "5.1.3"),  # X.1.3: a destination's
    "AUTH_MALFORMED": (501, "5.5.2"),  # RFC 4954 4, as a response not base64
    "PATH_MISSING": (501, "5.1.7"),  # MAIL FROM: SIZE=100: the sender's
    "RECIPIENT_PATH_MISSING": (501, "5.1.3"),  # RCPT TO: NOTIFY=NEVER
    "PATH_TOO_LONG": (501, "5.1.3"),  # RFC 5321 4.5.3.1.10; X.1.3: a destination's
    "SENDER_PATH_TOO_LONG": (501, "5.1.7"),  # the same for the sender's: X.1.7
    "INVALID_UTF8": (501, "5.5.2"),
    "AUTH_INVALID_BASE64": (501, "5.5.2"),  # RFC 4954 4
    "AUTH_CANCELLED": (501, "5.0.0"),  # RFC 4954 4
    "COMMAND_NOT_IMPLEMENTED": (502, "5.5.1"),
    "TURN_REFUSED": (502, "5.5.1"),
    "SEND_REFUSED": (502, "5.5.1"),
    "STARTTLS_ARGUMENT": (501, "5.5.4"),  # RFC 3207 4
    # no [tls]: STARTTLS is not offered, so not implemented here (RFC 5321
    # 4.2.4), not RFC 3207's 454 "due to temporary reason"
    "STARTTLS_NOT_OFFERED": (502, "5.5.1"),
    "EXPN_NEEDS_SMTPUTF8": (550, "5.6.8"),  # RFC 6531 3.7.4.2
    "TLS_ALREADY": (503, "5.5.1"),
    "BAD_SEQUENCE": (503, "5.5.1"),
    "HELO_REQUIRED": (503, "5.5.1"),
    "MAIL_NESTED": (503, "5.5.1"),
    "MAIL_NEEDED": (503, "5.5.1"),
    "RCPT_NEEDED": (503, "5.5.1"),
    "DATA_NO_RECIPIENTS": (554, "5.5.1"),  # RFC 5321 3.3, RFC 2920 3.1
    "AUTH_ALREADY": (503, "5.5.1"),  # RFC 4954 4
    "AUTH_NOT_AVAILABLE": (503, "5.5.1"),
    "AUTH_IN_TRANSACTION": (503, "5.5.1"),  # RFC 4954 4
    "BDAT_AFTER_DATA": (503, "5.5.1"),
    "TOO_MANY_HOPS": (554, "5.4.6"),  # RFC 5321 6.3, X.4.6 routing loop
    "RCPT_AFTER_BDAT": (503, "5.5.1"),
    "BDAT_DISCARDED": (503, "5.5.1"),  # RFC 3030 2
    "BDAT_BAD_SIZE": (501, "5.5.4"),
    "AUTH_MECHANISM_UNKNOWN": (504, "5.5.4"),  # RFC 4954 4
    "PARAM_NOT_RECOGNIZED": (555, "5.5.4"),  # RFC 5321 4.1.1.11
    "PARAM_SYNTAX": (501, "5.5.4"),
    "SMTPUTF8_NOT_DECLARED": (553, "5.6.7"),  # RFC 6531 3.5
    "SMTPUTF8_NOT_DECLARED_SENDER": (550, "5.6.7"),
    "AUTH_REQUIRED": (530, "5.7.0"),  # RFC 4954 6
    "AUTH_TLS_REQUIRED": (538, "5.7.11"),
    "AUTH_FAILED": (535, "5.7.8"),  # RFC 4954 6
    "UNKNOWN_USER": (550, "5.1.1"),
    "RELAY_DENIED": (550, "5.7.1"),
    "SENDER_NOT_QUALIFIED": (554, "5.1.8"),  # RFC 6409 4.1, 4.2
    "RECIPIENT_NOT_QUALIFIED": (554, "5.1.2"),
    "HEADER_DOMAIN_NOT_QUALIFIED": (554, "5.6.0"),  # RFC 6409 4.2, 5.1
    "SIZE_EXCEEDS_LIMIT": (552, "5.3.4"),  # RFC 1870 6
    "MESSAGE_TOO_BIG": (552, "5.3.4"),
    "MESSAGE_LINE_TOO_LONG": (500, "5.5.2"),
    "MESSAGE_BARE_CR_LF": (550, "5.6.11"),
}


def _catalog() -> dict[str, Reply]:
    return {k: v for k, v in vars(replies).items() if isinstance(v, Reply)}


def test_every_reply_in_the_catalog_is_pinned():
    # a new reply gets its row here when it is added
    assert set(_catalog()) == set(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_reply_code_and_enhanced_status(name):
    reply = _catalog()[name]
    assert (reply.code, reply.status) == PINNED[name]
    if reply.status is not None:
        # RFC 3463 2: the class digit matches the reply's first digit
        assert reply.status[0] == str(reply.code)[0]
        assert reply.to_bytes().startswith(f"{reply.code} {reply.status} ".encode())


@pytest.mark.parametrize(("reply", "expected"), [
    (replies.greeting("mx.test"), (220, None)),  # RFC 2034 3 (4) exempts the greeting
    (replies.shutting_down("mx.test"), (421, "4.3.2")),
    (replies.bye("mx.test"), (221, "2.0.0")),
    (replies.hello("mx.test", "c"), (250, None)),  # ... and the replies to HELO/EHLO
    (replies.ehlo("mx.test", "c", ["SIZE"]), (250, None)),
    (replies.sender_ok("a@b"), (250, "2.1.0")),
    (replies.recipient_ok("a@b"), (250, "2.1.5")),
    (replies.accepted("ID"), (250, "2.0.0")),
    (replies.bdat_chunk(10), (250, "2.0.0")),
    (replies.vrfy_found("a@b"), (250, "2.1.5")),
    # RFC 5321 3.5.3 / 4.2.2; X.1.5: the name asked about is valid here
    (replies.vrfy_forwarded("a@b"), (251, "2.1.5")),
    (replies.vrfy_ambiguous(["a@b", "a@c"]), (553, "5.1.4")),  # RFC 5321 3.5.3
    (replies.expn_found(["a@b"]), (250, "2.1.5")),
    (replies.help_text(["HELO"]), (214, "2.0.0")),
    (replies.local_failure(OSError(errno.ENOSPC, "full")), (452, "4.3.1")),
    (replies.local_failure(OSError(errno.EDQUOT, "quota")), (452, "4.3.1")),
    (replies.local_failure(OSError(errno.EIO, "io")), (451, "4.3.0")),
    (replies.local_failure(ValueError("x")), (451, "4.3.0")),
])
def test_replies_made_by_functions(reply, expected):
    assert (reply.code, reply.status) == expected


def test_a_closing_421_names_the_server_first():
    # RFC 5321 4.2.3: "421 <domain> Service not available, closing
    # transmission channel"; the code and enhanced status stay the template's
    bye = replies.closing(replies.TIMEOUT, "mx.test")
    assert bye.to_bytes() == b"421 4.4.2 mx.test Idle timeout, closing connection\r\n"
    assert replies.closing(replies.TIMEOUT, "mx.test") == bye


# --- an echoed address cut to fit a 512-octet reply line (RFC 5321 4.5.3.1.5) ---------------

_ECHOES = [
    (replies.sender_ok, "250 2.1.0 <{}>... Sender OK"),
    (replies.recipient_ok, "250 2.1.5 <{}>... Recipient OK"),
    (replies.vrfy_found, "250 2.1.5 <{}>"),
    (replies.vrfy_forwarded, "251 2.1.5 User not local; will forward to <{}>"),
    (lambda a: replies.expn_found(["a@b", a]), "250 2.1.5 <{}>"),
    (lambda a: replies.vrfy_ambiguous(["a@b", a]), "553 5.1.4 <{}>"),
]


@pytest.mark.parametrize(("make", "template"), _ECHOES)
def test_an_address_that_just_fits_is_echoed_whole_and_one_octet_more_is_cut_to_512(
        make, template):
    # the room each reply leaves is exact: a line of exactly 512 octets
    # (CRLF included) keeps the whole address, one octet more is cut, and
    # the cut line uses the whole room (an ASCII address: no character to
    # leave out), keeping the start and the @domain
    domain = "@" + "d" * 60 + ".example"
    fits = 512 - len(template.format("").encode()) - 2
    for extra, whole in ((0, True), (1, False)):
        address = "s" * (fits + extra - len(domain)) + domain
        lines = make(address).to_bytes().split(b"\r\n")[:-1]
        line = next(x for x in lines if x.startswith(template[:4].encode())
                    and b"a@b" not in x)
        assert len(line) + 2 == 512, (extra, len(line))
        assert (address.encode() in line) == whole
        if not whole:
            assert b"<" + b"s" * (fits - 3 - len(domain)) + b"..." + domain.encode() + b">" in line


def _longest_prefix(text: str, octets: int) -> str:
    """The longest start of ``text`` of whole characters in ``octets``."""
    n = 0
    while n < len(text) and len(text[: n + 1].encode()) <= octets:
        n += 1
    return text[:n]


def _longest_suffix(text: str, octets: int) -> str:
    n = 0
    while n < len(text) and len(text[len(text) - n - 1:].encode()) <= octets:
        n += 1
    return text[len(text) - n:]


_CHARS = st.characters(codec="utf-8", exclude_characters="\ufffd")


def _text(alphabet: st.SearchStrategy[str], most: int, least: int = 0) -> st.SearchStrategy[str]:
    """Text of any length up to ``most``, long ones as likely as short."""
    return st.integers(least, most).flatmap(lambda n: st.text(alphabet, min_size=n, max_size=n))


@settings(max_examples=400, deadline=None)
@given(st.one_of(_text(st.sampled_from("xy\u00fc\u4e2d@"), 400, 1), _text(_CHARS, 300, 1)),
       st.one_of(st.none(), _text(st.sampled_from("d.\u00fc\u4e2d\U0001f600"), 500),
                 _text(st.characters(codec="utf-8", exclude_characters="@\ufffd"), 300)),
       st.integers(min_value=70, max_value=600))
@example("x@" * 250, "d" * 20, 483)  # an "@" in a (quoted) local part
@example("x", "d" * 600, 483)  # a domain too long: its end, and 64 octets of start
@example("\u4e2d" * 200, "example.org", 484)  # a character cut at the start's end
@example("l" * 256, "\u00fc" * 300, 483)  # ... and at the domain's start
def test_an_echoed_address_fits_its_room_whole_characters_start_and_domain_kept(
        local, domain, room):
    # for any address and room: within the room in octets, valid UTF-8 (no
    # character cut in two, none replaced), the address itself when it
    # fits; else as much of its start as fits, "...", and its @domain when
    # that leaves 64 octets for the start (the end of it when not)
    address = local if domain is None else f"{local}@{domain}"
    echo = replies._echo_address(address, room)
    data = echo.encode("utf-8")  # no lone surrogate from a cut character
    assert len(data) <= room and "\ufffd" not in echo
    if len(address.encode()) <= room:
        assert echo == address
        return
    budget = room - len("...")
    at = address.rfind("@")
    tail = address[at:] if at > 0 else ""
    tail_octets = min(len(tail.encode()), budget - 64)
    kept = tail if len(tail.encode()) <= budget - 64 else _longest_suffix(tail, tail_octets)
    assert echo == _longest_prefix(address, budget - tail_octets) + "..." + kept
    if domain is not None and len(domain.encode()) + 1 <= budget - 64:
        assert echo.endswith("...@" + domain)
