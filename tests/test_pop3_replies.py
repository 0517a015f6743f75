"""The POP3 response catalog, pinned: +OK or -ERR and the RFC 2449 / RFC
3206 response code of each (clients act on the code: [IN-USE] and
[SYS/TEMP] mean "try again", [AUTH] and [SYS/PERM] do not).  Tests
elsewhere compare with the catalog's own constants, so a changed code
would go unnoticed there."""

from __future__ import annotations

import pytest

from txmailhub.pop3 import replies

PINNED = {
    "USER_ACCEPTED": (True, None),
    "AUTH_FAILED": (False, "AUTH"),  # RFC 3206 5: the credentials
    "AUTH_CANCELLED": (False, None),
    "AUTH_BAD_BASE64": (False, None),
    "AUTH_BAD_PLAIN": (False, "AUTH"),
    "AUTH_UNKNOWN_MECHANISM": (False, None),
    "AUTH_NO_MECHANISM": (False, None),
    "AUTH_MECHANISMS": (True, None),
    "PLAINTEXT_DISALLOWED": (False, "AUTH"),
    "PLAINTEXT_DISALLOWED_NO_APOP": (False, "AUTH"),
    "PLAINTEXT_DISALLOWED_NO_TLS": (False, "AUTH"),
    "PLAINTEXT_DISALLOWED_NO_TLS_NO_APOP": (False, "AUTH"),
    "PASS_WITHOUT_USER": (False, None),
    "TOO_MANY_AUTH_FAILURES": (False, "AUTH"),
    "TOO_MANY_COMMANDS": (False, None),  # not [AUTH]: no credentials were judged
    "TOO_MANY_ERRORS": (False, None),
    "LOGIN_THROTTLED": (False, "SYS/TEMP"),  # RFC 3206 4: try again later
    "SHUTTING_DOWN": (False, "SYS/TEMP"),  # the hub stops: try again later
    "TOO_MANY_CONNECTIONS": (False, "SYS/TEMP"),
    "TOO_MANY_CONNECTIONS_FROM_YOU": (False, "SYS/TEMP"),
    "MAILBOX_IN_USE": (False, "IN-USE"),  # RFC 2449 8.1.1
    "MAILBOX_TEMP_FAILURE": (False, "SYS/TEMP"),
    "MAILBOX_PERM_FAILURE": (False, "SYS/PERM"),
    "APOP_UNAVAILABLE": (False, None),
    "STLS_BEGIN": (True, None),  # RFC 2595 4
    "STLS_UNAVAILABLE": (False, None),
    "STLS_ALREADY_ACTIVE": (False, None),
    "CAPA_FOLLOWS": (True, None),
    "NOOP": (True, None),
    "UIDL_FOLLOWS": (True, None),
    "NO_SUCH_MESSAGE": (False, None),
    "MESSAGE_DELETED": (False, None),
    "INVALID_NUMBER": (False, None),
    "INVALID_LINE_COUNT": (False, None),
    "TOP_FOLLOWS": (True, None),
    "MESSAGE_READ_FAILED": (False, "SYS/TEMP"),
    "MESSAGE_GONE": (False, None),  # removed by another program: no retry brings it back
    # not the size the session listed (RFC 1939 5): the next session sends it
    "MESSAGE_SIZE_CHANGED": (False, "SYS/TEMP"),
    "BYE": (True, None),
    "UPDATE_FAILED": (False, "SYS/TEMP"),  # RFC 1939 6: "some deleted messages not removed"
    "UPDATE_FAILED_PERM": (False, "SYS/PERM"),  # the same, for the administrator to fix
    "UNKNOWN_COMMAND": (False, None),
    "LINE_TOO_LONG": (False, None),
    "SASL_LINE_TOO_LONG": (False, None),
    "BAD_ENCODING": (False, None),
    "BARE_CR_IN_COMMAND": (False, None),
    "NUL_IN_COMMAND": (False, None),
    "INTERNAL_ERROR": (False, "SYS/TEMP"),
    "UTF8_ENABLED": (True, None),
    "UTF8_REQUIRED": (False, "UTF8"),  # RFC 6856 5: the message needs UTF-8 mode
    "BAD_USER_NAME": (False, "AUTH"),  # RFC 6856 2.2: SASLprep refuses the name
    "LANG_FOLLOWS": (True, None),
    "LANG_UNKNOWN": (False, None),
}


def _catalog() -> dict[str, replies.POP3Reply]:
    return {k: v for k, v in vars(replies).items() if isinstance(v, replies.POP3Reply)}


def test_every_response_in_the_catalog_is_pinned():
    assert set(_catalog()) == set(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_status_and_response_code(name):
    reply = _catalog()[name]
    assert (reply.positive, reply.code) == PINNED[name]
    head = (b"+OK" if reply.positive else b"-ERR") + (
        f" [{reply.code}]".encode() if reply.code else b"")
    assert reply.to_bytes().startswith(head) and reply.to_bytes().endswith(b"\r\n")


@pytest.mark.parametrize("count, text", [(0, "0 messages"), (1, "1 message"), (2, "2 messages")])
def test_counted_replies_say_message_for_one(count, text):
    """The login, LIST, RSET and QUIT replies count messages in words a
    person reads: "1 message", never "1 messages"."""
    lines = [
        replies.logged_in(count, 412), replies.scan_listing(count, 412),
        replies.reset(count, 412), replies.bye_updated(count),
    ]
    for reply in lines:
        words = reply.text.replace("(", " ").replace(")", " ").split()
        number = words.index(str(count))
        assert " ".join(words[number:number + 2]) == text, reply.text
