"""A message's fate does not depend on how it was cut.

The same message -- a header section built from pieces that the hub
reads on the way to the spool (address fields with unqualified domains,
folded lines, Return-Path, Received, Message-ID and Date fields, 8-bit
octets, a text start that is no header) and a body -- is sent once
with DATA, in reads cut at random places, and once with BDAT, in chunks
cut at other random places (RFC 3030: chunk boundaries carry no
meaning).  The reply to the end of the data (250, or the 554 naming the
unqualified domains, RFC 6409 4.2) and the bytes stored must be the same.
"""

from __future__ import annotations

import base64
import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_smtp_protocol import Harness

from txmailhub.address import Address

_LOGIN = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"
# a submission (the header checks of RFC 6409), and mail from the world to
# a local mailbox (the loop check, the client's Return-Path dropped)
ENVELOPES = {
    True: b"EHLO c\r\n" + _LOGIN + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob>\r\n",
    False: b"EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<bob>\r\n",
}

FIELDS = [
    b"From: alice@example.org\r\n", b"From: alice@sales\r\n", b"To: bob\r\n",
    b"To: Bob <bob@example.org>,\r\n\tcarol@branch\r\n", b"Cc: undisclosed-recipients:;\r\n",
    b"Cc: (x) \"q u\"@office, d@e.test\r\n", b"Reply-To: <@relay:z@host>\r\n",
    b"Message-ID: <a@b.test>\r\n", b"Message-ID:\r\n <x@y.test>\r\n", b"Message-ID: <bad\r\n",
    b"Message-ID: <" + b"m" * 9000 + b"@x.test>\r\n", b"Date: whenever\r\n",
    b"Subject: hi\r\n", b" folded\r\n", b"\tcontinued line\r\n", b"Return-Path: <r@x.test>\r\n",
    b"Return-Path:\r\n <r@x.test>\r\n", b"Received: from a by b\r\n", b"Received : obsolete\r\n",
    b"To: j\xc3\xb6@host\r\n", b"X-Long: " + b"y" * 990 + b"\r\n", b"Bcc: w@\r\n",
    b"Resent-To: sales\r\n", b"Sender: s@sales.\r\n",
    b"Received: from a by b\r\n" * 50,  # twice: the loop check's 100 (RFC 5321 6.3)
]
BODY = [b"text\r\n", b".dot\r\n", b"\r\n", b"From: not@header\r\n", b"Received: body\r\n",
        b"\xc3\xa9\r\n", b" indented\r\n"]


@st.composite
def message(draw) -> bytes:
    head = b"".join(draw(st.lists(st.sampled_from(FIELDS), max_size=8)))
    if draw(st.booleans()):
        head = draw(st.sampled_from([b"text first\r\n", b" indented first\r\n", b""])) + head
    body = b"".join(draw(st.lists(st.sampled_from(BODY), max_size=5)))
    sep = draw(st.sampled_from([b"\r\n", b"\r\n", b""]))
    return head + sep + body


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


# the hub's message id: the clock's seconds, the pid, five digits or more
# of its counter, with "_" between them
_SPOOL_ID = re.compile(rb"\b[0-9A-F]+_[0-9A-F]+_[0-9A-F]{5,}\b")
_RANDOM = re.compile(rb"\.[0-9a-f]{12}@")


def same(data: bytes) -> bytes:
    # the random part first: one of digits only would pass for an id
    return _SPOOL_ID.sub(b"<id>", _RANDOM.sub(b".<random>@", data))


def run(wire: list[bytes], submission: bool) -> tuple[bytes, list[bytes]]:
    h = Harness(submission=submission)
    p, t = h.connect("127.0.0.1" if submission else "192.0.2.1")
    for piece in wire:
        for _ in range(100):
            if t.producerState != "paused":
                break
            h.clock.advance(0)
        p.dataReceived(piece)
        h.clock.advance(0)
    # the replies to the data: DATA's 354 and final reply, or one per BDAT
    replies = [x for x in t.value().split(b"\r\n")[1:] if x[3:4] == b" "]
    replies = replies[4 if submission else 3:]
    # the message's fate: the first failure (a BDAT after a failed chunk
    # gets 503 5.5.1, RFC 3030 2), else the last reply
    fate = next((x for x in replies if x[:1] in b"45"), replies[-1])
    return same(fate), [same(m) for m in h.store.messages(Address("bob", "example.org"))]


def stuffed(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + x if x.startswith(b".") else x for x in lines)


@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(message(), st.lists(st.integers(0, 20_000), max_size=8),
       st.lists(st.integers(0, 20_000), max_size=8), st.booleans(), st.booleans())
def test_data_and_bdat_chunks_cut_anywhere_give_one_outcome(msg, reads, chunks, empty_last,
                                                            submission):
    envelope = ENVELOPES[submission]
    # DATA: the data line ends with CRLF before the final dot
    data = msg if msg.endswith(b"\r\n") or not msg else msg + b"\r\n"
    by_data = run(cuts(envelope + b"DATA\r\n" + stuffed(data) + b".\r\n", reads), submission)
    wire = b""
    pieces = cuts(data, chunks)
    for i, chunk in enumerate(pieces):
        last = i == len(pieces) - 1 and not empty_last
        wire += b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk
    if empty_last or not pieces:
        wire += b"BDAT 0 LAST\r\n"
    by_bdat = run([envelope + wire], submission)
    assert by_data[0][:3] == by_bdat[0][:3], (msg, by_data[0], by_bdat[0])
    assert by_data == by_bdat, msg
