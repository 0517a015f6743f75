"""``txmailhub.sendmail_input``: stdin read in bounded pieces (a 50 MiB
body, one 50 MiB line, never held whole), a bare CR in the header section
kept inside its field, and the pieces a long line comes in."""

from __future__ import annotations

import io
import os
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
from conftest import read_empty
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.sendmail_input import (
    READ_SIZE,
    SPOOL_IN_MEMORY,
    MessageTooBig,
    StdinMessage,
    read_message,
)

MiB = 1 << 20


class _Generated(io.RawIOBase):
    """A pipe's worth of input made on demand: nothing of it exists in
    memory before it is read, so what tracemalloc counts is the reader's."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if not self._left:
            self._left = next(self._pieces, b"")
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _body(total: int, line: bytes) -> Iterator[bytes]:
    yield b"Subject: big\nTo: bob\n\n"
    block = line * (65536 // len(line))
    for _ in range(total // len(block)):
        yield block


def _peak_while_reading(stream: io.BufferedReader, limit: int) -> tuple[int, StdinMessage]:
    tracemalloc.start()
    try:
        read = read_message(stream, True, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, read


@pytest.mark.parametrize("line", [b"x" * 75 + b"\n",  # text
                                  b"y" * 65536,  # one 50 MiB line, no line end at all
                                  b"progress " + b"#" * 60 + b" 42%\r"])  # a progress meter
def test_a_50_mib_body_is_read_with_flat_memory(line: bytes) -> None:
    stream = io.BufferedReader(_Generated(_body(50 * MiB, line)))
    peak, read = _peak_while_reading(stream, 60 * MiB)
    with read.body:
        assert peak < 4 * MiB, f"{peak} octets at the peak"
        assert [name for name, _ in read.fields] == [b"subject", b"to"]
        assert read.body_size > 50 * MiB  # (CRLF line ends, folded lines)
        assert read.body._rolled  # type: ignore[attr-defined]  (a temporary file now)
        size, longest, left = 0, 0, b""
        while chunk := read.body.read(MiB):
            size += len(chunk)
            *lines, left = (left + chunk).split(b"\r\n")
            longest = max(longest, *map(len, lines))
            assert all(b"\r" not in line and b"\n" not in line for line in lines[:3])
            assert b"\r" not in b"".join(lines) and b"\n" not in b"".join(lines)
        assert left == b""
        assert size == read.body_size and longest <= 998


def test_a_small_body_stays_in_memory_and_a_big_one_goes_to_a_file() -> None:
    small = read_message(io.BytesIO(b"Subject: x\n\nbody\n"), True, MiB)
    assert not small.body._rolled  # type: ignore[attr-defined]  (no file: no writable /tmp needed)
    big = read_message(io.BytesIO(b"\n" + b"z" * 80 * (SPOOL_IN_MEMORY // 80 + 1)), True,
                       4 * MiB)
    assert big.body._rolled  # type: ignore[attr-defined]
    small.close()
    big.close()


def test_over_the_limit_the_read_stops_without_reading_on() -> None:
    stream = io.BufferedReader(_Generated(_body(50 * MiB, b"x" * 75 + b"\n")))
    with pytest.raises(MessageTooBig, match="over the hub's limit of 1048576 octets"):
        read_message(stream, True, MiB)
    assert len(stream.read(4 * MiB)) == 4 * MiB  # still there, unread
    # the header section counts
    with pytest.raises(MessageTooBig):
        read_message(io.BytesIO(b"Subject: " + b"s" * 200 + b"\n\nx\n"), True, 100)


# --- a bare CR in the header section --------------------------------------------


def test_a_bare_cr_in_a_field_is_a_space_and_the_header_goes_on() -> None:
    raw = b"Subject: a\rb\nTo: bob\nBcc: secret@example.net\n\nline 1\rline 2\n"
    read = read_message(io.BytesIO(raw), True, 1000)
    assert read.fields == [(b"subject", b"Subject: a b\r\n"), (b"to", b"To: bob\r\n"),
                           (b"bcc", b"Bcc: secret@example.net\r\n")]
    assert read.body.read() == b"line 1\r\nline 2\r\n"  # in the body it ends a line


def test_a_bare_cr_cannot_start_a_field_of_its_own() -> None:
    # a web form's subject "x\rBcc: victim@example.net" (header injection)
    raw = b"Subject: x\rBcc: victim@example.net\nTo: bob\n  cont\rinued\n\nbody\n"
    read = read_message(io.BytesIO(raw), True, 1000)
    assert read.fields == [(b"subject", b"Subject: x Bcc: victim@example.net\r\n"),
                           (b"to", b"To: bob\r\n  cont inued\r\n")]


def test_a_line_that_is_no_field_still_starts_the_body_cr_and_all() -> None:
    read = read_message(io.BytesIO(b"10%\r20%\nSubject: not a field here\n"), True, 1000)
    assert read.fields == []
    assert read.body.read() == b"10%\r\n20%\r\nSubject: not a field here\r\n"


def test_white_space_before_the_colon_still_makes_a_field() -> None:
    # RFC 5322 4.5.8 (obs-optional): "Bcc : x" is a field; read as the
    # body's first line, it would move the whole header -- that Bcc
    # included, for every recipient to see -- into the body
    raw = b"To : bob\nSubject\t: hi\nBcc  : secret@example.net\n\nbody\n"
    read = read_message(io.BytesIO(raw), True, 1000)
    assert read.fields == [(b"to", b"To : bob\r\n"), (b"subject", b"Subject\t: hi\r\n"),
                           (b"bcc", b"Bcc  : secret@example.net\r\n")]
    assert read.body.read() == b"body\r\n"
    # white space inside a name is none: "Dear Joe: hello" starts the body
    read = read_message(io.BytesIO(b"Dear Joe: hello\n"), True, 1000)
    assert read.fields == []


def test_a_long_field_with_a_cr_at_a_read_boundary() -> None:
    # the CR that ends one read and the LF that starts the next are one line end
    value = b"v" * (READ_SIZE - len(b"X-Long: ") - 1)
    read = read_message(io.BytesIO(b"X-Long: " + value + b"\r\nTo: bob\n\nbody\n"), True,
                        10**6)
    assert [name for name, _ in read.fields] == [b"x-long", b"to"]
    # folded before its space, then cut with a space added
    assert read.fields[0][1].replace(b"\r\n ", b"") == b"X-Long:" + value + b"\r\n"
    assert read.fields[0][1].startswith(b"X-Long:\r\n v")
    assert read.body.read() == b"body\r\n"


@pytest.mark.parametrize("pair", [b"\\ ", b"\\\\\\ ", b"\\\t"])
def test_a_long_field_is_never_folded_inside_a_quoted_pair(pair: bytes) -> None:
    # RFC 5322 3.2.1: the blank a backslash quotes is part of the quoted
    # string, no place to fold; the fold goes before an earlier blank
    field = b'To: "' + b"a" * 500 + b" " + b"a" * 480 + pair + b"b" * 15 + b'" <a@example.org>'
    read = read_message(io.BytesIO(field + b"\n\nbody\n"), True, 10**6)
    assert read.fields[0][1] == field[:505] + b"\r\n" + field[505:] + b"\r\n"


@pytest.mark.parametrize("run", [b"\\", b"\\\\\\"])
def test_a_cut_without_white_space_never_splits_a_quoted_pair(run: bytes) -> None:
    # no blank in 998 octets: the cut (which adds a space) goes before the
    # backslash, not between it and the '"' it quotes, which unfolded as
    # "\ " would end the quoted string there (RFC 5322 3.2.1)
    field = b'X-Data:"' + b"a" * (990 - len(run)) + run + b'"' + b"b" * 15 + b'"'
    read = read_message(io.BytesIO(field + b"\n\nbody\n"), True, 10**6)
    first, rest = read.fields[0][1].split(b"\r\n ", 1)
    assert len(first) <= 998
    assert (len(first) - len(first.rstrip(b"\\"))) % 2 == 0, first[-10:]
    assert first + rest == field + b"\r\n"


_TEXT = st.lists(st.sampled_from([b"a", b"\xc3\xa9", b" ", b":", b"\r", b"\n", b"\r\n",
                                  b".", b"x" * 700, b"Bcc: e@x", b"To: b"]),
                 max_size=40).map(b"".join)


@given(_TEXT)
def test_whatever_the_input_every_line_is_crlf_and_at_most_998(raw: bytes) -> None:
    read = read_message(io.BytesIO(raw), True, 10**7)
    whole = b"".join(text for _, text in read.fields) + read.body.read()
    assert whole == b"" or whole.endswith(b"\r\n")
    lines = whole.split(b"\r\n")[:-1]
    assert all(b"\r" not in line and b"\n" not in line and len(line) <= 998 for line in lines)
    for _, text in read.fields:  # each field: one line and its continuations
        assert all(line[:1] in (b" ", b"\t") for line in text.split(b"\r\n")[1:-1])


@given(_TEXT)
def test_pieces_of_any_size_read_the_same(raw: bytes) -> None:
    whole = read_message(io.BytesIO(raw), False, 10**7)
    trickled = read_message(io.BufferedReader(_Generated(iter([raw[i:i + 1] for i in range(
        len(raw))])), 1), False, 10**7)
    assert trickled.fields == whole.fields and trickled.body.read() == whole.body.read()


def _read_while_written(r: int, write) -> tuple:
    """The message read from the pipe ``r`` while a thread runs ``write``
    (which writes it, with its pauses, and closes the pipe), and its body."""
    writer = threading.Thread(target=write)
    writer.start()
    try:
        with os.fdopen(r, "rb") as stream:
            message = read_message(stream, ignore_dots=True, limit=1 << 20)
    finally:
        writer.join()
    body = message.body.read()
    message.close()
    return message, body


def test_a_non_blocking_stdin_is_read_to_its_end_not_to_its_first_pause() -> None:
    # O_NONBLOCK is the pipe's, and a parent process may have set it: a
    # read with the writer not yet done returned nothing, or a line cut
    # short, taken for the end of the input -- the message was sent cut
    # there.  The writer here waits until the reader has emptied the pipe.
    r, w = os.pipe()
    os.set_blocking(r, False)

    def write() -> None:
        os.write(w, b"Subject: slow\n\nfirst line, then a pa")
        read_empty(r)
        os.write(w, b"use\nlast line\n")
        os.close(w)

    message, body = _read_while_written(r, write)
    assert message.fields == [(b"subject", b"Subject: slow\r\n")]
    assert body == b"first line, then a pause\r\nlast line\r\n"


def test_an_input_made_non_blocking_after_the_start_is_still_waited_on() -> None:
    # O_NONBLOCK is the open pipe's, not the process's: a parent that
    # shares it (its own standard input, handed down) may set it once the
    # command runs (Node.js does once it opens its stdin, a pipe).
    # Only an input non-blocking at the first read was waited on: here the
    # message was sent cut at the writer's pause.
    r, w = os.pipe()

    def write() -> None:
        os.write(w, b"Subject: slow\n\nfirst line,")
        read_empty(r)
        os.set_blocking(r, False)  # the parent, meanwhile
        os.write(w, b" then a pa")  # to the read under way, which blocks
        read_empty(r)
        os.write(w, b"use\nlast line\n")
        os.close(w)

    _, body = _read_while_written(r, write)
    assert body == b"first line, then a pause\r\nlast line\r\n"


def test_a_body_line_is_cut_at_998_octets_a_backslash_before_the_cut_and_all() -> None:
    # a quoted-pair is a header's (RFC 5322 3.2.1): in the body a backslash
    # is a character like any, and the cut stays where Postfix makes it
    line = b"a" * 997 + b"\\" + b"b" * 20
    read = read_message(io.BytesIO(b"Subject: x\n\n" + line + b"\n"), True, 10**6)
    assert read.body.read() == line[:998] + b"\r\n " + line[998:] + b"\r\n"
