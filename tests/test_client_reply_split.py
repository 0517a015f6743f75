"""``ReplyParser.feed`` against the implementation it replaced.

The parser once cut each line off the front of its buffer; it now takes
the lines of one read by position and keeps the rest once.  That is only
a speed-up if nothing a caller sees changed, for every way the server's
bytes can be split into reads: the replies of each ``feed``, ``pending``,
``error`` and what is left in the buffer.  The old ``feed`` is kept here,
verbatim, as the reference.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.smtp import _client_reply
from txmailhub.smtp._client_reply import ReplyParser
from txmailhub.smtp.reply import Reply


class OldReplyParser(ReplyParser):
    """``feed`` as it was before the lines were taken by position."""

    def feed(self, data: bytes) -> list[Reply]:
        if self.error is not None:
            self._buf = b""
            return []
        self._buf += data
        out = []
        while self.error is None:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > _client_reply.MAX_REPLY_LINE:
                    self.error = "reply line too long"
                    self._buf = b""
                break
            if nl > _client_reply.MAX_REPLY_LINE:
                self.error = "reply line too long"
                self._buf = b""
                break
            raw, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            reply = self._line(line)
            if reply is not None:
                out.append(reply)
        return out


def state(p: ReplyParser) -> tuple:
    return (p.pending, p.error, p._buf, tuple(p._lines), p._code)


def run_both(stream: bytes, cuts: list[int]) -> None:
    """Feed ``stream`` to both parsers in the reads ``cuts`` marks, and
    once more after the end (a read after an error, or the next bytes)."""
    old, new = OldReplyParser(), ReplyParser()
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)] + [b"250 late\r\n"]
    for read in reads:
        assert new.feed(read) == old.feed(read), read
        assert state(new) == state(old), read


# Pieces a server's reply stream is made of, so that random streams are
# mostly replies (single and multi-line, enhanced codes, CR without LF,
# bare LF, UTF-8 split across reads) with the odd malformed one.
PIECES = st.sampled_from([
    b"250", b"250-", b"250 ", b"220 ", b"354 ", b"334 ", b"421 4.7.0 ", b"550 5.1.1 ",
    b"2.0.0 ", b"ok", b"x", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\r\r\n",
    b"\xc3\xa9", b"\xc3", b"\xff", b"\x00", b"25", b"2500 ", b"-",
])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.one_of(PIECES, st.binary(max_size=12),
                                    st.integers(1, 40).map(lambda n: b"a" * n)),
                          max_size=60))
    return b"".join(parts)


@settings(max_examples=1500, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=20),
       limit=st.sampled_from([1, 2, 4, 8, 12, 20]))
def test_feed_is_the_old_feed_for_every_split(stream, cuts, limit):
    # a small MAX_REPLY_LINE puts its edges (a line of exactly the limit,
    # with and without its LF in the read) within reach of short streams
    old_limit = _client_reply.MAX_REPLY_LINE
    _client_reply.MAX_REPLY_LINE = limit
    try:
        run_both(stream, cuts)
    finally:
        _client_reply.MAX_REPLY_LINE = old_limit


@settings(max_examples=400, deadline=None)
@given(stream=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_feed_is_the_old_feed_at_the_real_limit(stream, cuts):
    run_both(stream, cuts)


@pytest.mark.parametrize("length", [4094, 4095, 4096, 4097, 4098])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
@pytest.mark.parametrize("before", [b"", b"250-a\r\n", b"250-a\r"])
def test_a_line_at_the_limit_split_every_way(length, ending, before):
    line = b"250 " + b"a" * (length - 4)
    stream = before + line + ending + b"250 next\r\n"
    edge = len(before) + len(line)
    for cuts in ([], [edge], [edge + 1], [edge - 1], [len(before)],
                 [len(before), edge], [edge, edge + 1], list(range(0, len(stream), 997))):
        run_both(stream, cuts)


def test_bytewise_feeding():
    stream = (b"250-first\r\n250-\xc3\xa9\r\n250 2.0.0 last\r\n"
              b"354 go\n421 4.7.0 bye\r\r\n550\r\nbad line\r\n250 after\r\n")
    run_both(stream, list(range(len(stream))))


@pytest.mark.parametrize(("fed", "code", "may_be"), [
    (b"", 250, False),  # nothing waiting
    (b"2", 250, True),
    (b"25", 221, False),
    (b"250", 250, True),
    (b"250 ", 250, True),
    (b"250x", 250, False),
    (b"2500", 250, False),
    (b"250-first\r\n", 250, True),  # lines of a reply with its code, none waiting in the buffer
    (b"250-first\r\n", 221, False),
    (b"250-first\r\n250 la", 250, True),
])
def test_pending_may_be(fed, code, may_be):
    parser = ReplyParser()
    assert parser.feed(fed) == []
    assert parser.pending_may_be(code) is may_be
