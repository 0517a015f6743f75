"""The ``In-Reply-To`` and ``References`` fields of a notice.

A delivery status notification answers the message it reports on: RFC
5322 3.6.4 gives a reply ``In-Reply-To`` with the parent's Message-ID,
and ``References`` with the parent's ``References`` (or, without one,
its ``In-Reply-To`` when that holds one msg-id) followed by that
Message-ID, so that the sender's mail program shows the notice with the
message it is about.  Read from the header section the notice returns
anyway (``bounce._returned``: at most ``bounce.MAX_HEADER_BYTES`` of
it), never from the rest of the message.

A parent without a Message-ID that is one msg-id gets no
``In-Reply-To``, but still ``References`` when it has ids of its own to
give (its ``References``, or an ``In-Reply-To`` of one msg-id): 3.6.4
appends the Message-ID "(if any)", and only a parent with none of the
three fields gives a reply no ``References``.  An id that a field cannot
carry everywhere is left out: one of UTF-8 (RFC 6532 3.2 allows it where
SMTPUTF8 carries the message, but a notice sent on as a 7-bit copy,
``relay.mime7bit``, has no 7-bit form for it: an RFC 2047 word is no
msg-id, and the copy could not be made), one too long for a line
(RFC 5322 2.1.1: 998 octets; a msg-id cannot be folded), and one that
holds a ``=?``: the sender chose it, and a reader that decodes RFC 2047
encoded words in these fields (Python's ``email`` does, even inside an
id) would show another text in its place in a notice from this hub's
postmaster (``bounce``: no ``=?`` a sender chose stands in a field of a
notice); a msg-id has no escape for it.  A long
``References`` keeps its first id, the thread's start, and the last
``KEPT_REFERENCES``.
"""

from __future__ import annotations

import re

from txmailhub.rfc5322 import CFWS, MSG_ID

__all__ = ["KEPT_REFERENCES", "reply_fields"]

#: the last ids of the parent's References kept, beside its first
KEPT_REFERENCES = 20

_LINE_MAX = 998  # RFC 5322 2.1.1
_FIELD = re.compile(rb"^(message-id|references|in-reply-to)[ \t]*:(.*\n(?:[ \t].*\n)*)",
                    re.IGNORECASE | re.MULTILINE)
_ID = re.compile(MSG_ID)
# the id with the comments and folding around it (RFC 5322 3.2.2)
_ONE_ID = re.compile(CFWS + rb"(" + MSG_ID + rb")" + CFWS)


def reply_fields(header: bytes) -> tuple[str | None, str] | None:
    """``(In-Reply-To, References)`` for a notice about the message whose
    header section is ``header`` (stored form, LF line ends); In-Reply-To
    ``None`` when it has no Message-ID to answer, the whole ``None`` when
    it has no id to give either.  The References value is folded between
    its ids ("\\n ")."""
    fields: dict[bytes, bytes] = {}
    for match in _FIELD.finditer(header):
        fields.setdefault(match.group(1).lower(), match.group(2))  # the first of each
    one = _ONE_ID.fullmatch(fields.get(b"message-id", b""))
    message_id = _usable(one.group(1), "In-Reply-To") if one else None
    before = _ids(fields.get(b"references"))
    if not before:
        replied = _ids(fields.get(b"in-reply-to"))
        before = replied if len(replied) == 1 else []
    kept = [i for i in (_usable(raw, "References") for raw in before) if i is not None]
    if len(kept) > KEPT_REFERENCES + 1:
        kept = [kept[0], *kept[-KEPT_REFERENCES:]]
    if message_id is not None:
        kept.append(message_id)
    if not kept:
        return None
    return message_id, "\n ".join(kept)


def _ids(value: bytes | None) -> list[bytes]:
    """The msg-ids in a field that lists them (what else it holds, a
    phrase an old program wrote there, is passed over)."""
    return _ID.findall(value) if value is not None else []


def _usable(raw: bytes, name: str) -> str | None:
    """``raw`` as the text of the notice's field ``name``, or ``None``."""
    if len(name) + 2 + len(raw) > _LINE_MAX or not raw.isascii() or b"=?" in raw:
        return None
    return raw.decode("ascii")
