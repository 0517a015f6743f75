"""The fields the submission service adds (RFC 6409 8.2, 8.3)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.smtp.msa import HOLD_LIMIT, MissingFields

_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")

DATE = "Sun, 29 Nov 2026 09:00:00 +0000"
MID = "<6B0ABC00001@mail.example.org>"
ADDED = f"Date: {DATE}\nMessage-ID: {MID}\n".encode()


def run(pieces: list[bytes]) -> bytes:
    fields = MissingFields(DATE, MID)
    return b"".join(fields.feed(p) for p in pieces) + fields.finish()


def test_both_fields_are_added_at_the_end_of_the_header_section():
    assert run([b"From: a@example.org\nSubject: hi\n\nbody\n"]) == (
        b"From: a@example.org\nSubject: hi\n" + ADDED + b"\nbody\n")


def test_fields_the_client_sent_are_kept_and_not_repeated():
    data = b"Date: Sat, 28 Nov 2026 10:00:00 +0100\nmessage-id : <x@y>\nSubject: hi\n\nbody\n"
    assert run([data]) == data
    only_date = b"DATE: Sat, 28 Nov 2026 10:00:00 +0100\n\nbody\n"
    assert run([only_date]) == (
        b"DATE: Sat, 28 Nov 2026 10:00:00 +0100\nMessage-ID: " + MID.encode() + b"\n\nbody\n")


def test_look_alikes_do_not_count():
    # Resent-Date is another field; a body line "Date:" is no field; a
    # continuation line is part of the field before it
    data = (b"Resent-Date: Sat, 28 Nov 2026 10:00:00 +0100\nSubject: a\n Date: b\n"
            b"\nDate: in the body\nMessage-ID: <also@body>\n")
    assert run([data]) == (b"Resent-Date: Sat, 28 Nov 2026 10:00:00 +0100\nSubject: a\n Date: b\n"
                           + ADDED + b"\nDate: in the body\nMessage-ID: <also@body>\n")


def test_text_that_ends_the_header_section_without_an_empty_line():
    # "Subject: x\nHello": a script's message; readers take the text as the
    # body, so ours goes before it, with the empty line the section lacks
    assert run([b"Subject: test\nThis is the body\n"]) == (
        b"Subject: test\n" + ADDED + b"\nThis is the body\n")
    # a Date below that line is body text, not the message's date
    assert run([b"Subject: test\nhello\nDate: x\n"]) == (
        b"Subject: test\n" + ADDED + b"\nhello\nDate: x\n")
    # nothing to add: the client's text is left as it came
    data = b"Date: x\nMessage-ID: <a@b>\nhello\n"
    assert run([data]) == data


def test_text_without_a_header_section_gets_one():
    # the seed's DATA: the text stays the body behind an empty line
    assert run([b"Hi Dave - this is a test\n"]) == ADDED + b"\nHi Dave - this is a test\n"
    assert run([b"\nbody only\n"]) == ADDED + b"\nbody only\n"


def test_a_header_section_without_a_body_gets_the_fields_at_the_end():
    assert run([b"Subject: a\n", b"To: b@example.org\n"]) == (
        b"Subject: a\nTo: b@example.org\n" + ADDED)
    assert run([]) == ADDED  # no data at all (an empty BDAT LAST)


def test_the_header_section_may_end_at_a_piece_boundary():
    assert run([b"Subject: a\n", b"\nbody\n", b"Date: not a field here\n"]) == (
        b"Subject: a\n" + ADDED + b"\nbody\nDate: not a field here\n")
    fields = MissingFields(DATE, MID)
    fields.feed(b"Subject: a\n\n")
    assert fields.done and fields.finish() == b""


@pytest.mark.parametrize("value", [
    b"<a.b@example.org>", b" <a@b> ", b"(comment) <a@[192.0.2.1]> (more)",
    b'<"quoted id"@example.org>', b"\n\t<folded@example.org>", "<ü@bücher.example>".encode(),
    b" <a.b.c@mail.example.org>", b' <"a\\"b"@example.org>', b" <a@[x.y]>",
])
def test_a_message_id_that_is_a_msg_id_is_kept(value):
    data = b"Message-ID:" + value + b"\nSubject: a\n\nbody\n"
    assert run([data]) == b"Message-ID:" + value + b"\nSubject: a\nDate: " + DATE.encode() + (
        b"\n\nbody\n")


@pytest.mark.parametrize("value", [
    b"", b" ", b" no-brackets@example.org", b" <no-at-sign>", b" <a@b> trailing text",
    b" <a b@c>", b" <a@b", b" <<a@b>>", b" <a@b>\n\tand more",
    # every continuation line goes with the field, or the next would fold
    # itself into the field before
    b"\n\tjunk\n\tmore junk",
    # dot-atom-text has no empty atoms; dtext no brackets or backslash
    b" <@example.org>", b" <a..b@example.org>", b" <a@[x]y]>",
])
def test_a_message_id_that_is_no_msg_id_is_replaced(value):
    # RFC 6409 8.3: the MSA SHOULD add or replace a Message-ID that is not
    # valid syntax; the field goes with its continuation lines
    data = b"Subject: a\nMessage-ID:" + value + b"\nTo: b@example.org\n\nbody\n"
    assert run([data]) == b"Subject: a\nTo: b@example.org\n" + ADDED + b"\nbody\n"


def test_a_message_id_at_the_end_of_a_piece_waits_for_its_continuation():
    # folded over the cut: judged whole, whichever side of it the lines are
    pieces = [b"Subject: a\nMessage-ID:\n", b"\t<f@example.org>\n", b"\nbody\n"]
    assert run(pieces) == (b"Subject: a\nMessage-ID:\n\t<f@example.org>\nDate: "
                           + DATE.encode() + b"\n\nbody\n")
    fields = MissingFields(DATE, MID)
    assert fields.feed(b"Subject: a\nMessage-ID:\n") == b"Subject: a\n"
    assert fields.feed(b"\tjunk\n") == b""
    assert fields.finish() == ADDED  # the data ended: judged then, and replaced
    # a field longer than the limit is not held (memory stays bounded): it
    # is no msg-id (see below), dropped and replaced
    huge = b"Message-ID: <" + b"x" * HOLD_LIMIT + b"\n"
    fields = MissingFields(DATE, MID)
    assert fields.feed(b"Subject: a\n" + huge) == b"Subject: a\n"
    assert fields.feed(b"\nbody\n") == ADDED + b"\nbody\n"


_HUGE_ID = b"Message-ID: <" + b"x" * HOLD_LIMIT + b"@example.org>\n"


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
def test_a_message_id_over_the_limit_is_judged_the_same_wherever_the_pieces_are_cut(cut):
    # Over HOLD_LIMIT octets a Message-ID field cannot be held back until
    # its continuation lines have come, so it is judged by its length: a
    # field that long is no msg-id a program writes (RFC 5322 2.1.1: a line
    # is at most 998 octets, and a msg-id cannot be folded), and is
    # replaced as RFC 6409 8.3 asks -- in one piece or cut after any line,
    # its continuation lines with it, never kept unjudged beside ours.
    lines = [b"Subject: a\n", _HUGE_ID, b"\t(more of it)\n", b"To: b@example.org\n",
             b"\nbody\n"]
    pieces = [b"".join(lines[:cut + 1]), b"".join(lines[cut + 1:])]
    assert run(pieces) == b"Subject: a\nTo: b@example.org\n" + ADDED + b"\nbody\n"
    assert run([b"".join(lines)]) == run(pieces)


def test_a_message_id_over_the_limit_that_ends_the_data_is_replaced():
    fields = MissingFields(DATE, MID)
    assert fields.feed(b"Subject: a\n" + _HUGE_ID) == b"Subject: a\n"
    assert fields.feed(b"\t(more)\n") == b""  # still that field: dropped with it
    assert fields.feed(b"\t(and more)\nTo: b\n") == b"To: b\n"
    assert fields.finish() == ADDED


def test_a_valid_message_id_after_one_over_the_limit_is_the_one_kept():
    # one Message-ID (RFC 5322 3.6): the client's valid one, not ours too
    lines = [_HUGE_ID, b"Message-ID: <kept@example.org>\n", b"\nbody\n"]
    expected = b"Message-ID: <kept@example.org>\nDate: " + DATE.encode() + b"\n\nbody\n"
    assert run([b"".join(lines)]) == expected
    assert run(lines) == expected
    assert run([lines[0], lines[1] + lines[2]]) == expected


_line = st.sampled_from([
    b"Subject: hi\n", b"Date: Sat, 28 Nov 2026 10:00:00 +0100\n", b"Message-ID: <a@b>\n",
    b"message-id:<c@d>\n", b" folded Date: x\n", b"X-Date: y\n", b"\n", b"body text\n",
    b"Date: late\n", b".\n", b"Message-ID: no id here\n", b"Message-ID:\n", b"\t<f@x>\n",
    b"Message-ID: <a@b> (c)\n",
])


def _cut(lines: list[bytes], data) -> list[bytes]:
    """``lines`` in pieces cut at line boundaries hypothesis draws."""
    cuts = sorted(data.draw(st.sets(st.integers(0, len(lines)))))
    pieces, start = [], 0
    for cut in [*cuts, len(lines)]:
        pieces.append(b"".join(lines[start:cut]))
        start = cut
    return pieces


@given(st.lists(_line, max_size=12), st.data())
def test_pieces_at_any_line_boundary_give_the_same_message(lines, data):
    # the readers pass whole lines in pieces of any size: where the pieces
    # are cut must not change what is stored
    whole = run([b"".join(lines)])
    assert run(_cut(lines, data)) == whole
    # and whatever was sent, the stored header section has a Date and a
    # Message-ID, every Message-ID in it is a msg-id, and the body is the
    # client's
    head, body = _sections(whole.splitlines(keepends=True))
    starts = [x.split(b":", 1)[0].strip().lower() for x in head.split(b"\n")
              if x and x[:1] not in b" \t"]
    assert b"date" in starts and b"message-id" in starts
    for field in re.finditer(rb"^message-id[ \t]*:(.*\n(?:[ \t].*\n)*)", head, re.I | re.M):
        cfws = rb"(?:\s|\([^()]*\))*"
        assert re.fullmatch(cfws + rb"<[^<>\s]+@[^<>\s]+>" + cfws, field.group(1)), whole
    assert body == _sections(lines)[1]


_long_line = st.sampled_from([
    b"Subject: hi\n", b"Date: Sat, 28 Nov 2026 10:00:00 +0100\n", b"Message-ID: <a@b>\n",
    b"Message-ID:\n", b"\t<f@x>\n", b"\n", b"body text\n",
    b"X-Long: " + b"y" * HOLD_LIMIT + b"\n", _HUGE_ID, b"Message-ID: <" + b"x" * HOLD_LIMIT + b"\n",
    b"\t" + b"z" * (HOLD_LIMIT // 2) + b"\n",
    b"Message-ID: <" + b"w" * (HOLD_LIMIT - 40) + b"@example.org>\n",
])


@given(st.lists(_long_line, max_size=8), st.data())
def test_pieces_at_any_line_boundary_give_the_same_message_with_long_fields(lines, data):
    # as above, with fields and continuation lines around HOLD_LIMIT: a
    # long Message-ID field that ends a piece is judged as in one piece
    whole = run([b"".join(lines)])
    assert run(_cut(lines, data)) == whole
    head, _ = _sections(whole.splitlines(keepends=True))
    ids = re.findall(rb"^message-id[ \t]*:", head, re.I | re.M)
    # a Message-ID, always; ours never beside one the client kept
    assert len(ids) == 1 if MID.encode() in head else len(ids) >= 1


def _sections(lines: list[bytes]) -> tuple[bytes, bytes]:
    """The header section and the body as a reader sees them: the fields
    (with their continuation lines), then, after the empty line that ends
    them or the first line that is no field, the body; no header section
    when the first line is no field."""
    if not lines or not _FIELD.match(lines[0]):
        return b"", b"".join(lines[1:] if lines[:1] == [b"\n"] else lines)
    i = 1
    while i < len(lines) and (_FIELD.match(lines[i]) or lines[i][:1] in b" \t"):
        i += 1
    head = b"".join(lines[:i])
    return head, b"".join(lines[i + 1 :] if lines[i : i + 1] == [b"\n"] else lines[i:])


def test_obsolete_spacing_before_the_colon_still_names_the_field():
    # RFC 5322 4.5.3: "Date :" is the Date field
    data = b"Date : Sat, 28 Nov 2026 10:00:00 +0100\nMessage-ID : <a@b>\n\nbody\n"
    assert run([data]) == data


def test_fields_that_end_in_message_id_are_other_fields():
    # Resent-Message-ID and X-Message-ID are not the Message-ID: kept as
    # they are, whatever they hold, and ours is added
    data = b"Resent-Message-ID: junk\nX-Message-ID: no id\n\nbody\n"
    assert run([data]) == (b"Resent-Message-ID: junk\nX-Message-ID: no id\n" + ADDED
                           + b"\nbody\n")


def test_a_folded_field_that_starts_a_piece_is_part_of_the_header_section():
    # the second piece starts with a continuation line: the header section
    # goes on (it is not text without a header section)
    assert run([b"Subject: a\n", b" folded\n\nbody\n"]) == (
        b"Subject: a\n folded\n" + ADDED + b"\nbody\n")


def test_only_a_message_id_that_ends_the_piece_is_held_back():
    fields = MissingFields(DATE, MID)
    assert fields.feed(b"Message-ID: <a@b>\nSubject: a\n") == b"Message-ID: <a@b>\nSubject: a\n"
    # a field before a long one is judged all the same (no unjudged copy
    # of it passes with the long one)
    fields = MissingFields(DATE, MID)
    huge = b"Message-ID: <" + b"x" * HOLD_LIMIT + b"\n"
    assert fields.feed(b"Message-ID: junk\nSubject: a\n" + huge) == b"Subject: a\n"
    # a junk field followed by more fields than the limit holds is replaced
    fields = MissingFields(DATE, MID)
    long_field = b"X-Long: " + b"x" * HOLD_LIMIT + b"\n"
    assert fields.feed(b"Message-ID: junk\n" + long_field) == long_field
    assert fields.feed(b"\nbody\n") == ADDED + b"\nbody\n"


def test_a_message_id_of_exactly_the_limit_is_held_and_judged():
    field = b"Message-ID: " + b"x" * (HOLD_LIMIT - 13) + b"\n"
    assert len(field) == HOLD_LIMIT
    fields = MissingFields(DATE, MID)
    assert fields.feed(b"Subject: a\n" + field) == b"Subject: a\n"
    assert fields.feed(b"\nbody\n") == ADDED + b"\nbody\n"  # no msg-id: replaced


def test_a_held_message_id_is_kept_when_the_data_ends_in_the_header_section():
    fields = MissingFields(DATE, MID)
    assert fields.feed(b"Subject: a\nMessage-ID: <kept@example.org>\n") == b"Subject: a\n"
    assert fields.finish() == (b"Message-ID: <kept@example.org>\nDate: " + DATE.encode()
                               + b"\n")


@given(st.lists(st.sampled_from([
    b"Subject: hi\n", b"Date: yesterday\n", b"Date:\n", b"\t(folded) 28 Nov 2026\n",
    b"DATE : 32 Foo 99 25:61 CET\n", b"To: b@example.org\n",
]), min_size=1, max_size=8), st.data())
def test_a_date_the_client_wrote_is_kept_as_it_is_wherever_the_pieces_are_cut(lines, data):
    # RFC 6409 8.2: an MSA MAY correct a Date that is no RFC 5322 date-time;
    # this one does not (see the module's docstring): the client's Date
    # fields are stored as they came, and ours is added only when there is
    # none -- never a second one beside the client's
    cuts = sorted(data.draw(st.sets(st.integers(0, len(lines)))))
    pieces, start = [], 0
    for cut in [*cuts, len(lines)]:
        pieces.append(b"".join(lines[start:cut]))
        start = cut
    body = b"\nbody\n"
    pieces[0] = b"Subject: first\n" + pieces[0]
    out = run([*pieces, body])
    sent = b"Subject: first\n" + b"".join(lines)
    head = out[: len(out) - len(body)]
    assert head.startswith(sent)  # nothing the client wrote is changed
    added = head[len(sent):]
    client_dates = re.findall(rb"^date[ \t]*:", sent, re.I | re.M)
    assert (b"Date: " + DATE.encode() in added) == (not client_dates)
