"""txmailhub.smtp._data: DATA/BDAT readers and the dot-stuffing encoder."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.smtp import replies
from txmailhub.smtp._data import MAX_LINE, ChunkReader, DotReader, DotStuffer, stuff

BIG = 10**9


def read_dot(wire: bytes, splits=None, max_size=BIG):
    """Feed ``wire`` to a DotReader; return (stored, leftover, reader)."""
    out: list[bytes] = []
    r = DotReader(out.append, max_size)
    pieces = [wire] if splits is None else _split(wire, splits)
    leftover = None
    fed = 0
    for p in pieces:
        fed += len(p)
        leftover = r.feed(p)
        if leftover is not None:
            leftover += b"".join(pieces)[fed:]
            break
    return b"".join(out), leftover, r


def _split(data: bytes, cuts) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


def bytewise(wire: bytes):
    return list(range(len(wire) + 1))


# --- the seed's examples ---------------------------------------------------


SEED_LEADING_PERIOD = (
    b"Hi dave - this message is a\r\ntest of SMTP\r\n..\r\n..foo\r\n..\r\n.\r\n"
)


@pytest.mark.parametrize("splits", [None, "bytes"])
def test_seed_leading_period(splits):
    cuts = bytewise(SEED_LEADING_PERIOD) if splits else None
    stored, leftover, r = read_dot(SEED_LEADING_PERIOD, cuts)
    assert stored == b"Hi dave - this message is a\ntest of SMTP\n.\n.foo\n.\n"
    assert leftover == b""
    assert r.error is None


def test_seed_typical_exchange_with_pipelined_quit():
    stored, leftover, r = read_dot(b"Hi Dave - What is buffer overflow?\r\n.\r\nQUIT\r\n")
    assert stored == b"Hi Dave - What is buffer overflow?\n"
    assert leftover == b"QUIT\r\n"
    assert r.error is None


def test_empty_message():
    stored, leftover, r = read_dot(b".\r\nNOOP\r\n")
    assert (stored, leftover, r.error) == (b"", b"NOOP\r\n", None)


def test_size_counts_received_octets():
    _, _, r = read_dot(b"ab\r\ncd\r\n.\r\n")
    assert r.size == 8


@pytest.mark.parametrize("bdat", [False, True])
def test_a_line_that_never_ends_costs_at_most_a_line_of_memory(bdat):
    # docs/smtp.rst: a line that never ends is read to the real end of the
    # data, but only its last MAX_LINE octets are ever held
    import tracemalloc

    piece = b"x" * 65536
    total = 128 * len(piece)  # 8 MiB without a line end
    r = ChunkReader(None, BIG) if bdat else DotReader(None, BIG)
    if bdat:
        r.start(total + 2, last=True)
    tracemalloc.start()
    try:
        for _ in range(total // len(piece)):
            assert r.feed(piece) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert r.feed(b"\r\n" if bdat else b"\r\n.\r\n") == b""
    assert (r.finish() if bdat else r.error) == replies.MESSAGE_LINE_TOO_LONG


def test_size_counts_the_octets_of_a_line_too_long_to_keep():
    # the octets of an over-long line are thrown away, not forgotten: the
    # size is what the client sent (the data-rate check is measured by it)
    line = b"x" * (3 * MAX_LINE) + b"\r\n"
    for splits in (None, [MAX_LINE + 7, 2 * MAX_LINE + 1]):
        _, leftover, r = read_dot(line + b".\r\n", splits)
        assert (leftover, r.error, r.size) == (b"", replies.MESSAGE_LINE_TOO_LONG, len(line))
    for cut in (len(line), MAX_LINE + 7):
        r = ChunkReader(None, BIG)
        r.start(len(line), last=True)
        assert r.feed(line[:cut]) == (b"" if cut == len(line) else None)
        if cut < len(line):
            assert r.feed(line[cut:]) == b""
        assert (r.finish(), r.size) == (replies.MESSAGE_LINE_TOO_LONG, len(line))


def test_a_chunk_whose_spool_failed_is_refused_unless_its_data_breaks_a_rule():
    # ChunkReader.fail, like DotReader.fail: the message is refused (the
    # spool could not take it); a rule the data breaks still comes first
    stored: list[bytes] = []
    r = ChunkReader(stored.append, BIG)
    r.start(8, last=True)
    assert r.feed(b"ok\r\n") is None
    r.fail(replies.LOCAL_ERROR)
    assert r.feed(b"ok\r\n") == b""
    assert r.finish() == replies.LOCAL_ERROR and stored == [b"ok\n"]
    r = ChunkReader(None, BIG)
    r.start(5, last=True)
    r.fail(replies.LOCAL_ERROR)
    assert r.feed(b"a\nb\r\n") == b""
    assert r.finish() == replies.MESSAGE_BARE_CR_LF


# --- smuggling: only CRLF . CRLF ends the data --------------------------------


@pytest.mark.parametrize(
    "marker",
    [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r"],
)
def test_smuggling_markers_never_end_data(marker):
    wire = b"hello" + marker + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n"
    for cuts in (None, bytewise(wire)):
        out: list[bytes] = []
        r = DotReader(out.append, BIG)
        pieces = [wire] if cuts is None else _split(wire, cuts)
        assert all(r.feed(p) is None for p in pieces)
        # ... and the real end then ends it, refusing the bare line ends.
        assert r.feed(b"\r\n.\r\n") == b""
        assert r.error == replies.MESSAGE_BARE_CR_LF
        assert b"MAIL" not in b"".join(out)  # the spool is aborted anyway


@pytest.mark.parametrize("marker", [b"\n.\r\n", b"\n.\n", b"\r.\r\n"])
def test_a_smuggling_marker_after_a_whole_line_never_ends_data_however_cut(marker):
    # "line CRLF" then "LF . CRLF": the dot line follows a bare LF, in
    # every split of the stream into three pieces, not only bytewise
    wire = b"hello\r\n" + marker + b"MAIL FROM:<evil@x.test>\r\n"
    for a in range(len(wire) + 1):
        for b in range(a, len(wire) + 1):
            r = DotReader(None, BIG)
            assert all(r.feed(p) is None for p in (wire[:a], wire[a:b], wire[b:]) if p), (a, b)
            assert r.feed(b"\r\n.\r\n") == b""
            assert r.error == replies.MESSAGE_BARE_CR_LF


@pytest.mark.parametrize("bad", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n"])
def test_bare_cr_or_lf_refuses_message(bad):
    _stored, leftover, r = read_dot(b"ok\r\n" + bad + b"more\r\n.\r\nQUIT\r\n")
    assert r.error == replies.MESSAGE_BARE_CR_LF
    assert leftover == b"QUIT\r\n"


def test_bare_lf_before_dot_line_is_not_end():
    # "x LF . CRLF" -- the dot line follows a bare LF, so it is data.
    out: list[bytes] = []
    r = DotReader(out.append, BIG)
    assert r.feed(b"x\n.\r\nQUIT\r\n") is None
    assert r.feed(b".\r\n") == b""
    assert r.error == replies.MESSAGE_BARE_CR_LF


# --- long lines and size -------------------------------------------------------


def test_line_of_exactly_the_limit_is_fine_and_dot_is_not_counted():
    line = b"x" * (MAX_LINE - 2)
    stored, _, r = read_dot(line + b"\r\n." + line + b"\r\n.\r\n")
    assert r.error is None
    assert stored == line + b"\n" + line + b"\n"


@pytest.mark.parametrize(
    "line",
    [
        b"x" * (MAX_LINE - 1),  # 999 octets + CRLF = 1001: one too many
        b"." + b"x" * (MAX_LINE - 1),  # stuffed, but 999 octets of text
        b"x" * 5 + b"." + b"x" * (MAX_LINE - 7),  # a dot inside does not count
    ],
)
def test_line_one_octet_over_the_limit_is_refused(line):
    _stored, leftover, r = read_dot(b"ok\r\n" + line + b"\r\nend\r\n.\r\nQUIT\r\n")
    assert r.error == replies.MESSAGE_LINE_TOO_LONG
    assert leftover == b"QUIT\r\n"


def test_the_line_limit_is_1000_octets_with_its_crlf():
    # RFC 5321 4.5.3.1.6 in numbers: the tests around count from MAX_LINE,
    # which would move the limit with them.
    assert MAX_LINE == 1000
    _stored, _, r = read_dot(b"x" * 998 + b"\r\n.\r\n")
    assert r.error is None
    _stored, _, r = read_dot(b"x" * 999 + b"\r\n.\r\n")
    assert r.error == replies.MESSAGE_LINE_TOO_LONG


def test_a_stuffed_line_of_the_limit_may_wait_for_its_lf():
    # A text line of 998 octets that starts with "." is 1,001 octets on the
    # wire; cut just before its LF, the 1,000 octets that wait are not yet
    # an over-long line.
    text = b"." + b"x" * (MAX_LINE - 3)
    stored, leftover, r = read_dot(b"." + text + b"\r\n.\r\n", [len(text) + 2])
    assert (r.error, stored, leftover) == (None, text + b"\n", b"")


def test_a_cr_at_the_cut_of_an_over_long_line_can_start_the_end_marker():
    # The octet kept when an over-long line is cut may be the CR of
    # CRLF "." CRLF: losing it would leave the session in DATA for good.
    r = DotReader(None, BIG)
    assert r.feed(b"x" * 1500 + b"\r") is None
    assert r.feed(b"\n.\r\nQUIT\r\n") == b"QUIT\r\n"
    assert r.error == replies.MESSAGE_LINE_TOO_LONG


@pytest.mark.parametrize("split", [None, 7, 1001, 4096])
def test_long_line_drains_to_real_end_then_refuses(split):
    body = b"short\r\n" + b"y" * 5000 + b"\r\nRCPT TO:<x@y>\r\nDATA\r\n" + b".\r\nQUIT\r\n"
    cuts = list(range(0, len(body), split)) if split else None
    _stored, leftover, r = read_dot(body, cuts)
    assert r.error == replies.MESSAGE_LINE_TOO_LONG
    # The "RCPT"/"DATA" lines after the long line were data, not commands.
    assert leftover == b"QUIT\r\n"


def test_line_that_never_ends_keeps_memory_bounded():
    r = DotReader(None, BIG)
    for _ in range(1000):
        assert r.feed(b"z" * 65536) is None
        assert len(r._pending) <= MAX_LINE + 1
    assert r.feed(b"\r\n.\r\n") == b""
    assert r.error == replies.MESSAGE_LINE_TOO_LONG


@pytest.mark.parametrize("first", [b"a" * 1500 + b".", b"\r\n" + b"a" * 1500 + b"."])
def test_a_dot_kept_from_an_over_long_line_does_not_start_a_line(first):
    # The octet kept after an over-long piece is the middle of a line: a
    # "." there followed by CRLF is not the end-of-data line, or the rest of
    # the body would run as commands (SMTP smuggling).
    r = DotReader(None, BIG)
    assert r.feed(first) is None
    assert r.feed(b"\r\nRCPT TO:<x@y>\r\n") is None
    assert r.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    assert r.error == replies.MESSAGE_LINE_TOO_LONG


@pytest.mark.parametrize("split", [None, 1, 3])
def test_transparency_dots_do_not_count_towards_the_limit(split):
    wire = b".." + b"a" * 48 + b"\r\n" + b"..b\r\n" + b"c" * 43 + b"\r\n"  # 100 octets
    body = wire + b".\r\n"
    cuts = list(range(0, len(body), split)) if split else None
    stored, _, r = read_dot(body, cuts, max_size=100)
    assert r.error is None and r.size == 100
    assert stored == b"." + b"a" * 48 + b"\n.b\n" + b"c" * 43 + b"\n"
    _, _, r = read_dot(b"x" + body, cuts, max_size=100)
    assert r.error == replies.MESSAGE_TOO_BIG


def test_too_big_drains_and_refuses():
    out: list[bytes] = []
    r = DotReader(out.append, 100)
    assert r.feed(b"a" * 60 + b"\r\n") is None
    assert r.feed(b"b" * 60 + b"\r\n") is None
    assert r.feed(b"c\r\n.\r\nNOOP\r\n") == b"NOOP\r\n"
    assert r.error == replies.MESSAGE_TOO_BIG
    assert b"".join(out) == b"a" * 60 + b"\n"  # nothing after the limit


def test_fail_stops_writing_but_keeps_draining():
    out: list[bytes] = []
    r = DotReader(out.append, BIG)
    r.feed(b"one\r\n")
    r.fail(replies.LOCAL_ERROR)
    assert r.feed(b"two\r\n.\r\n") == b""
    assert r.error == replies.LOCAL_ERROR
    assert out == [b"one\n"]


def test_chunked_processing_not_per_line():
    calls: list[bytes] = []
    r = DotReader(calls.append, BIG)
    r.feed(b"line\r\n" * 1000 + b".\r\n")
    assert len(calls) == 1



def test_a_body_of_bare_line_ends_is_not_checked_per_line(monkeypatch):
    # Once a bare LF decides the answer (nothing outranks it), the rest of
    # the body is only counted: a body of bare LFs cost a Python call per
    # line before, nine times the CPU of a clean body.
    from txmailhub.smtp import _data

    checked: list[bytes] = []
    real = _data._BodyFilter._too_long
    monkeypatch.setattr(_data._BodyFilter, "_too_long",
                        lambda self, text: checked.append(text) or real(self, text))
    r = DotReader(None, BIG)
    for _ in range(10):
        r.feed(b"x\n" * 10000)
    assert r.feed(b"\r\n.\r\n") == b""
    assert r.error == replies.MESSAGE_BARE_CR_LF and not checked
    assert r.size == 10 * 20000 + 2


# --- round trips ---------------------------------------------------------------

line = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
dotty = st.sampled_from([b".", b"..", b".x", b"", b". ", b"a.b"])
stored_message = st.lists(st.one_of(line, dotty), max_size=30).map(
    lambda lines: b"".join(x + b"\n" for x in lines)
)


@settings(max_examples=300, deadline=None)
@given(stored_message, st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_stuff_then_read_round_trip(data, cuts):
    wire = stuff(data)
    whole, left_whole, r1 = read_dot(wire + b"QUIT\r\n")
    split, left_split, r2 = read_dot(wire + b"QUIT\r\n", cuts)
    assert whole == split == data
    assert left_whole == left_split == b"QUIT\r\n"
    assert r1.error is None and r2.error is None
    # RFC 1870's size: the CRLF form, without transparency dots or the end line
    size = len(data.replace(b"\n", b"\r\n")) + (2 if data and not data.endswith(b"\n") else 0)
    assert r1.size == r2.size == size


@settings(max_examples=100, deadline=None)
@given(stored_message, st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_dotstuffer_in_pieces_equals_one_shot(data, cuts):
    s = DotStuffer()
    pieces = _split(data, cuts) if data else []
    wire = b"".join(s.encode(p) for p in pieces) + s.finish()
    assert wire == stuff(data)


# stored data as a queue record edited by hand or written by another
# program may hold it: bare CRs and LFs, CRLFs, dots and "<CR>.<CR>" anywhere
foreign_data = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b" ",
                                         b"\r.\r", b"\n.\r", b"\r.\n", b"x" * 50]),
                        max_size=40).map(b"".join)


def _as_lines(data: bytes) -> bytes:
    """``data`` as the stuffer reads it: CRLF and a bare CR each end a line."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


@settings(max_examples=300, deadline=None)
@given(foreign_data, st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_stuffed_data_never_has_a_bare_cr_or_lf_and_reads_back(data, cuts):
    # RFC 5321 2.3.8: a client sends CR and LF only as CRLF.  A bare CR
    # was passed through: "a<CR>.<CR>b" went out as it was, what SMTP
    # smuggling rides on toward a next hop that reads <CR>.<CR> as the end
    s = DotStuffer()
    wire = b"".join(s.encode(p) for p in (_split(data, cuts) if data else [])) + s.finish()
    assert wire == stuff(data)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None, wire
    # our own reader, which refuses bare CR and LF: the data reads back,
    # each CR a line end, and ends at the final "." only
    stored, left, r = read_dot(wire + b"QUIT\r\n")
    assert r.error is None and left == b"QUIT\r\n"
    lines = _as_lines(data)
    assert stored == (lines if not lines or lines.endswith(b"\n") else lines + b"\n")


def test_a_bare_cr_is_a_line_end_on_the_wire():
    assert stuff(b"a\r.\rb\n") == b"a\r\n..\r\nb\r\n.\r\n"
    assert stuff(b"a\r\r\n") == b"a\r\n\r\n.\r\n"  # a CR before a CRLF
    s = DotStuffer()
    # a CR that ends one piece and no LF starts the next one
    assert s.encode(b"a\r") + s.encode(b".b\n") + s.finish() == b"a\r\n..b\r\n.\r\n"


def test_stuff_examples():
    assert stuff(b"") == b".\r\n"
    assert stuff(b".\n") == b"..\r\n.\r\n"
    assert stuff(b"a\n.b\n") == b"a\r\n..b\r\n.\r\n"
    assert stuff(b"no newline") == b"no newline\r\n.\r\n"
    assert stuff(b"crlf\r\n") == b"crlf\r\n.\r\n"


def test_stuffer_cr_split_across_pieces():
    s = DotStuffer()
    assert s.encode(b"a\r") + s.encode(b"\n.b\n") + s.finish() == b"a\r\n..b\r\n.\r\n"


def test_stuffer_a_trailing_lone_cr_still_ends_the_data():
    # The CR held back for its LF never comes: the end-of-data line must
    # still follow a CRLF, or the server would wait for it forever.
    assert stuff(b"abc\r") == b"abc\r\n.\r\n"
    s = DotStuffer()
    assert s.encode(b"a\n") + s.encode(b"\r") + s.finish() == b"a\r\n\r\n.\r\n"


def test_seed_leading_period_encodes_back():
    stored = b"Hi dave - this message is a\ntest of SMTP\n.\n.foo\n.\n"
    assert stuff(stored) == SEED_LEADING_PERIOD


# --- BDAT ---------------------------------------------------------------------


def test_chunk_reader_exact_sizes_and_leftover():
    out: list[bytes] = []
    r = ChunkReader(out.append, BIG)
    r.start(8, last=False)
    assert r.feed(b"ab\r") is None
    assert r.feed(b"\n.c\r\nBDAT 3 LAST\r\n") == b"BDAT 3 LAST\r\n"
    r.start(3, last=True)
    assert r.feed(b"x\r\n") == b""
    assert r.finish() is None
    assert b"".join(out) == b"ab\n.c\nx\n"  # no unstuffing in BDAT
    assert r.size == 11


def test_chunk_reader_adds_final_line_end():
    out: list[bytes] = []
    r = ChunkReader(out.append, BIG)
    r.start(3, last=True)
    assert r.feed(b"abc") == b""
    assert r.finish() is None
    assert b"".join(out) == b"abc\n"


def test_the_final_line_end_the_hub_adds_is_not_counted_in_the_size():
    # docs/smtp.rst, BDAT: "A last line without CRLF is completed with one,
    # which the size does not count (RFC 1870's size is the octets the
    # client sent)": a message of exactly max_message_size octets is taken
    # and logged with that size, one octet more is still refused.
    for limit, refused in ((6, None), (5, replies.MESSAGE_TOO_BIG)):
        out: list[bytes] = []
        r = ChunkReader(out.append, limit)
        r.start(2, last=False)
        assert r.feed(b"x\r") == b""
        r.start(4, last=True)
        assert r.feed(b"\nabc") == b""
        assert r.finish() == refused
        assert r.size == 6
        if refused is None:
            assert b"".join(out) == b"x\nabc\n"


def test_chunk_reader_limits():
    r = ChunkReader(None, 10)
    r.start(20, last=True)
    assert r.feed(b"0123456\r\n89\r\n" + b"x" * 7) == b""
    assert r.finish() == replies.MESSAGE_TOO_BIG
    r = ChunkReader(None, BIG)
    r.start(3, last=True)
    assert r.feed(b"a\nb") == b""
    assert r.finish() == replies.MESSAGE_BARE_CR_LF


@pytest.mark.parametrize("chunks", [[10], [4, 6], [9, 1]])
def test_chunk_reader_a_message_of_exactly_the_limit_is_accepted(chunks):
    # RFC 1870: the limit is the largest size accepted, not the first refused
    wire = b"12345678\r\n"
    for extra, expected in ((b"", None), (b"9", replies.MESSAGE_TOO_BIG)):
        data = wire + extra
        sizes = [*chunks[:-1], chunks[-1] + len(extra)]
        out: list[bytes] = []
        r = ChunkReader(out.append, 10)
        at = 0
        for i, n in enumerate(sizes):
            r.start(n, last=i == len(sizes) - 1)
            assert r.feed(data[at:at + n]) == b""
            at += n
        assert r.finish() == expected
        if expected is None:
            assert b"".join(out) == b"12345678\n" and r.size == 10


def test_dot_reader_a_message_of_exactly_the_limit_is_accepted():
    _, _, r = read_dot(b"12345678\r\n.\r\n", max_size=10)
    assert r.error is None and r.size == 10
    _, _, r = read_dot(b"123456789\r\n.\r\n", max_size=10)
    assert r.error == replies.MESSAGE_TOO_BIG


def test_chunk_reader_counts_leading_dots_towards_the_limit():
    # BDAT carries no transparency dots: a "." that starts a line is data,
    # and counts towards the size (RFC 3030 2, RFC 1870).
    wire = b".a\r\n.b\r\n"
    for max_size, expected in ((8, None), (7, replies.MESSAGE_TOO_BIG)):
        r = ChunkReader(None, max_size)
        r.start(len(wire), last=True)
        assert r.feed(wire) == b""
        assert r.finish() == expected


def test_chunk_reader_line_limit_has_no_dot_allowance():
    ok = b"." + b"x" * (MAX_LINE - 3)  # 998 octets of text: the limit
    out: list[bytes] = []
    r = ChunkReader(out.append, BIG)
    r.start(len(ok) + 2, last=True)
    assert r.feed(ok + b"\r\n") == b""
    assert r.finish() is None
    assert b"".join(out) == ok + b"\n"  # BDAT never unstuffs
    for wire in (b"." + ok + b"\r\n", b"." + ok):  # 999 octets, with or without CRLF
        r = ChunkReader(None, BIG)
        r.start(len(wire), last=True)
        assert r.feed(wire) == b""
        assert r.finish() == replies.MESSAGE_LINE_TOO_LONG


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b".", b"\r\n", b"\r\n"]), max_size=40))
@settings(max_examples=500)
def test_bare_cr_or_lf_is_refused_and_the_rest_turns_into_lf(pieces):
    # RFC 5321 2.3.8: only CRLF ends a line.  A chunk of complete lines
    # (ending in LF) is stored with LF endings when every CR and every LF
    # belongs to a CRLF pair, and refused otherwise, whatever the mix.
    block = b"".join(pieces) + b"\r\n"
    kept: list[bytes] = []
    reader = ChunkReader(kept.append, 10**6)
    reader.start(len(block), True)
    reader.feed(block)
    valid = re.fullmatch(rb"(?:[^\r\n]|\r\n)*", block) is not None
    if valid:
        assert reader.finish() is None and b"".join(kept) == block.replace(b"\r\n", b"\n")
    else:
        assert reader.finish() == replies.MESSAGE_BARE_CR_LF and kept == []


# How TCP cuts a body must not change its outcome: every rule is checked to
# the real end and the reply chosen by a fixed order (bare line ends, then
# line length, then size), so a body breaking several rules gets the same
# answer however it arrives.
_body_pieces = st.lists(
    st.sampled_from([b"a", b"\r", b"\n", b".", b"\r\n", b"\r\n", b"\r\n.", b"a" * 300,
                     b"a" * 997, b"\r\n" + b"a" * 998, b"\r\n." + b"a" * 998]),
    max_size=14,
)


def _outcome_dot(body: bytes, cuts, max_size):
    stored, leftover, r = read_dot(body + b"\r\n.\r\nNEXT", cuts, max_size)
    return r.error, (stored if r.error is None else None), _size(r), leftover


def _size(reader):
    # The size of a refused body is only logged: its transparency dots are
    # not taken off once a line rule is broken, so it may be off by those.
    return reader.size if reader.error is None else None


def _outcome_chunk(body: bytes, cuts, max_size):
    kept: list[bytes] = []
    r = ChunkReader(kept.append, max_size)
    r.start(len(body), last=True)
    wire = body + b"NEXT"
    rest = None
    for piece in _split(wire, cuts) if cuts is not None else [wire]:
        rest = r.feed(piece) if rest is None else rest + piece
    error = r.finish()
    return error, (b"".join(kept) if error is None else None), _size(r), rest


@given(_body_pieces, st.lists(st.integers(min_value=0, max_value=20000), max_size=12),
       st.integers(min_value=0, max_value=3000))
@settings(max_examples=600)
def test_outcome_does_not_depend_on_how_the_body_is_split(pieces, cuts, max_size):
    body = b"".join(pieces)
    if b"\r\n.\r\n" in b"\r\n" + body + b"\r\n":
        return  # the body would end early; that case has its own tests
    for outcome in (_outcome_dot, _outcome_chunk):
        whole = outcome(body, None, max_size)
        assert outcome(body, cuts, max_size) == whole
        if whole[0] is not None:
            assert whole[1] is None  # nothing stored for a refused message


def test_several_problems_get_one_answer_by_a_fixed_order():
    long_line, bare = b"a" * 1100 + b"\r\n", b"b\nc\r\n"
    for body in (long_line + bare, bare + long_line):
        for splits in (None, [1050], bytewise(body + b"\r\n.\r\n")):
            assert read_dot(body + b".\r\n", splits)[2].error == replies.MESSAGE_BARE_CR_LF
    # Size comes after the line rules; a spool failure after all of them.
    body = b"x\ry\r\n" + b"a" * 200 + b"\r\n"
    for splits in (None, [4], [5]):
        assert read_dot(body + b".\r\n", splits, max_size=100)[2].error == \
            replies.MESSAGE_BARE_CR_LF
    stored, _, r = read_dot(b"a" * 200 + b"\r\n.\r\n", None, max_size=100)
    assert r.error == replies.MESSAGE_TOO_BIG and stored == b""
    r = DotReader(None, 100)
    r.fail(replies.LOCAL_ERROR)
    assert r.feed(b"a" * 200 + b"\r\n.\r\n") == b""
    assert r.error == replies.MESSAGE_TOO_BIG
    r = DotReader(None, 10**6)
    r.fail(replies.LOCAL_ERROR)
    assert r.feed(b"..\r\n" * 50 + b".\r\n") == b"" and r.error == replies.LOCAL_ERROR
    assert r.size == 150  # transparency dots left out, as when storing


def test_a_non_last_chunk_ending_in_cr_keeps_the_line_rule_reply():
    # A chunk broke a rule and was not the LAST: its final CR may still meet
    # an LF in the next chunk, so it is not bare; the reply is the line rule's
    # whether or not the client cut the chunk right after a CR.
    for tail in (b"\r", b"x"):
        r = ChunkReader(None, BIG)
        chunk = b"y" * 1200 + b"\r\nok" + tail
        r.start(len(chunk), last=False)
        assert r.feed(chunk) == b""
        assert r.settle() == replies.MESSAGE_LINE_TOO_LONG
    for tail in (b"o\rk\r", b"ok\rx"):  # a CR before the final octet is bare
        r = ChunkReader(None, BIG)
        chunk = b"y" * 1200 + b"\r\n" + tail
        r.start(len(chunk), last=False)
        assert r.feed(chunk) == b"" and r.settle() == replies.MESSAGE_BARE_CR_LF


def test_a_refused_chunk_keeps_its_refusal():
    r = ChunkReader(None, 10)
    r.refuse(replies.MAIL_NEEDED)
    r.start(30, last=True)
    assert r.feed(b"bare\nline" + b"x" * 21) == b""
    assert r.error == replies.MAIL_NEEDED


@settings(max_examples=300)
@given(st.lists(st.sampled_from([0, 1, 80, 997, 998, 999, 1000, 1997, 1998, 3000]), max_size=8),
       st.booleans())
def test_the_long_line_probe_finds_what_splitting_finds(lengths, final_lf):
    # the probe measures only the runs around every 999th offset; it must
    # answer as "max(map(len, data.split(LF))) > 998" does, whatever the
    # runs' lengths and places
    from txmailhub.smtp._data import _long_piece

    data = b"\n".join(b"x" * n for n in lengths) + (b"\n" if final_lf else b"")
    assert _long_piece(data) == (max(map(len, data.split(b"\n"))) > MAX_LINE - 2)


@pytest.mark.parametrize("wire", [
    b"a\r\r\nb\r\n",  # a bare CR before a pair: CRs 2, LFs 1
    b"a\r\r\n\nb\r\n",  # as many CRs as LFs, one pair short
    b"a\rb\nc\r\n",  # a bare CR and a bare LF
])
def test_a_bare_cr_among_as_many_lfs_is_refused(wire):
    stored, _, r = read_dot(wire + b".\r\n")
    assert r.error == replies.MESSAGE_BARE_CR_LF
    assert stored == b""
