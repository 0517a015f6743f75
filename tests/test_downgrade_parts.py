"""RFC 6857 downgrading of the header sections of a message's MIME parts
(txmailhub.downgrade.PartHeaders): fed the body chunk by chunk, as POP3
streams it."""

from __future__ import annotations

import email
import itertools
from email import policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.downgrade import (
    _LINE_HOLD,
    PART_HEADER_LIMIT,
    PartHeaders,
    Undowngradable,
    downgrade_header,
    header_end,
)
from txmailhub.store.format import crlf_size_of

NAME = "r\u00e9sum\u00e9 \u65e5\u672c.pdf"
MIXED = (
    "From: a@example.org\nSubject: Gr\u00fc\u00dfe\nMIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="=_b1"\n\n'
    "preamble\n"
    "--=_b1\nContent-Type: text/plain; charset=utf-8\n\nhello\n-- \nsignature\n--=_b1x\n"
    f'--=_b1\nContent-Type: application/pdf; name="{NAME}"\n'
    f'Content-Disposition: attachment;\n filename="{NAME}"\n'
    "Content-Description: \u00e9t\u00e9 2024\nContent-Transfer-Encoding: base64\n\n"
    "QUJD\n"
    "--=_b1--  \nepilogue\n"
).encode()


def run(message: bytes, step: int | None = None, strict: bool = True) -> tuple[bytes, int]:
    """The message with its header section and its parts' downgraded, fed
    ``step`` octets at a time; and the CRLF growth ``PartHeaders`` counted
    for the body."""
    end = header_end(message)
    parts = PartHeaders(message[:end])
    parts.strict = strict
    body = message[end:]
    step = step or len(body) or 1
    out = b"".join(parts.feed(body[i:i + step]) for i in range(0, len(body), step))
    out += parts.finish()
    assert parts.delta == crlf_size_of(out) - crlf_size_of(body)
    return downgrade_header(message[:end]) + out, parts.delta


def walk(message: bytes) -> list[email.message.EmailMessage]:
    return list(email.message_from_bytes(message, policy=policy.default).walk())


@pytest.mark.parametrize("step", [1, 2, 5, 64, None])
def test_a_utf8_file_name_goes_as_rfc2231_and_reads_back(step):
    out, delta = run(MIXED, step)
    assert out.isascii() and delta > 0
    _, text, pdf = walk(out)
    assert pdf.get_filename() == NAME
    assert pdf.get_param("name", header="content-type") == NAME
    assert str(pdf["content-description"]) == "\u00e9t\u00e9 2024"
    assert pdf.get_content() == b"ABC"
    assert text.get_content() == "hello\n-- \nsignature\n--=_b1x"
    # everything but the part header sections is as it was
    assert out.endswith(b"--=_b1--  \nepilogue\n")
    assert b"\npreamble\n--=_b1\nContent-Type: text/plain; charset=utf-8\n\n" in out


@pytest.mark.parametrize("step", [1, 7, None])
def test_a_part_keeps_both_of_filename_and_filename_star(step):
    # the copy kept only the first of the two (the stdlib merges them):
    # a reader that prefers filename*= (RFC 2231) showed "resume.pdf"
    part = ("Content-Type: application/pdf; name=\"resume.pdf\";\n"
            " name*=utf-8''r\u00e9sum\u00e9\u65e5\u672c.pdf\n"
            "Content-Disposition: attachment; filename=\"resume.pdf\";\n"
            " filename*=utf-8''r%C3%A9sum%C3%A9.pdf; x-note=\"\u00e9t\u00e9\"\n"
            "Content-Description: cv\n\n")
    want = ("Content-Type: application/pdf; name=\"resume.pdf\";\n"
            " name*=utf-8''r%C3%A9sum%C3%A9%E6%97%A5%E6%9C%AC.pdf\n"
            "Content-Disposition: attachment; filename=\"resume.pdf\";\n"
            " filename*=utf-8''r%C3%A9sum%C3%A9.pdf; x-note*=utf-8''%C3%A9t%C3%A9\n"
            "Content-Description: cv\n\n")
    message = ("Subject: cv\nContent-Type: multipart/mixed; boundary=b\n\n"
               f"--b\n{part}QUJD\n--b--\n").encode()
    for line_end in ("\n", "\r\n"):
        out, _ = run(message.replace(b"\n", line_end.encode()), step)
        assert out.replace(b"\r\n", b"\n") == (
            f"Subject: cv\nContent-Type: multipart/mixed; boundary=b\n\n--b\n{want}QUJD\n--b--\n"
        ).encode()


def test_crlf_line_ends_and_nested_multiparts():
    inner = ("Content-Type: multipart/alternative; boundary=in\n\n"
             "--in\nContent-Type: text/plain\n\nx\n"
             "--in\nContent-Type: text/html\nContent-Description: \u00fc\n\n<p>x</p>\n"
             "--in--\n")
    message = (
        "Subject: \u00fc\nContent-Type: multipart/mixed; boundary=out\n\n"
        f"--out\n{inner}"
        "--out\nContent-Type: message/rfc822\n\n"
        "From: \u00dc <u@example.org>\nSubject: inner \u00fc\n\nbody of the inner message\n"
        "--out\nContent-Type: message/global\n\n"
        "From: \u00dc <u@example.org>\n\nkept\n"
        "--out\nContent-Disposition: attachment; filename=\u00e4.txt\n\nlast\n"
        "--out--\n"
    ).replace("\n", "\r\n").encode()
    for step in (1, 3, None):
        out, _ = run(message, step)
        # the message/global part is left whole (RFC 6532 3.7): a reader
        # without it takes it as application/octet-stream
        assert out.replace("\u00dc <u@example.org>\r\n\r\nkept".encode(), b"").isascii()
        parts = walk(out)
        kinds = [p.get_content_type() for p in parts]
        assert kinds == [p.get_content_type() for p in walk(message)]
        assert kinds[:4] == ["multipart/mixed", "multipart/alternative", "text/plain",
                             "text/html"]
        assert str(parts[3]["content-description"]) == "\u00fc"
        [inner_message] = parts[kinds.index("message/rfc822")].get_payload()
        assert str(inner_message["subject"]) == "inner \u00fc"
        assert inner_message["from"].addresses[0].display_name == "\u00dc"
        assert parts[-1].get_filename() == "\u00e4.txt"


def test_a_digest_part_without_content_type_is_a_message():
    # RFC 2046 5.1.5: in a multipart/digest a part is message/rfc822 by default
    message = ("Subject: \u00fc\nContent-Type: multipart/digest; boundary=d\n\n"
               "--d\n\nSubject: eins \u00fc\n\none\n--d--\n").encode()
    out, _ = run(message)
    assert out.isascii()
    [inner] = walk(out)[1].get_payload()
    assert str(inner["subject"]) == "eins \u00fc"


def test_ascii_part_headers_and_bodies_are_the_identity():
    message = MIXED.replace(NAME.encode(), b"cv.pdf").replace(
        "\u00e9t\u00e9".encode(), b"summer")
    end = header_end(message)
    assert run(message, 3) == (downgrade_header(message[:end]) + message[end:], 0)
    # UTF-8 in a body, even one that looks like a header, is no business of this
    body_utf8 = message.replace(b"QUJD", "Content-Type: \u00fc".encode())
    assert run(body_utf8)[1] == 0
    # a message whose header section names no parts has none to downgrade
    assert not PartHeaders.has_parts(b"Subject: x\nContent-Type: text/plain\n")
    assert not PartHeaders.has_parts(b"Content-Type: multipart/mixed\n")  # no boundary
    assert PartHeaders.has_parts(b"Content-type: Multipart/Mixed;\n boundary=\"a b\"\n")


def test_a_part_header_without_an_ascii_form():
    message = MIXED.replace(b"Content-Transfer-Encoding: base64\n",
                            "no field \u00fc\n".encode())
    with pytest.raises(Undowngradable):
        run(message)
    # not strict (a body measured strictly before): it goes as it is
    out, _ = run(message, 7, strict=False)
    assert "no field \u00fc\n".encode() in out


def test_a_part_header_over_the_limit():
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 1)
    over = MIXED.replace(b"Content-Transfer-Encoding: base64\n", pad)
    with pytest.raises(Undowngradable, match="too long"):
        run(over, 4096)
    # an ASCII one that long is passed on, and the part is read as a body
    ascii_over = over.replace(NAME.encode(), b"cv.pdf").replace(
        "\u00e9t\u00e9".encode(), b"summer")
    assert run(ascii_over, 4096)[1] == 0


def test_a_long_body_line_is_no_delimiter_and_not_held():
    line = b"A" * 100_000 + b"--=_b1\n"
    message = MIXED.replace(b"QUJD\n", line)
    end = header_end(message)
    parts = PartHeaders(message[:end])
    body = message[end:]
    held = 0  # octets fed and not yet given back
    most = 0
    for i in range(0, len(body), 512):
        held += len(body[i:i + 512]) - len(parts.feed(body[i:i + 512]))
        most = max(most, held)
    assert most <= 2048  # never more than a short line, not the 100,000 octets
    assert run(message, 512)[0].isascii()


def test_the_rest_of_a_long_body_line_after_a_chunk_is_no_delimiter():
    # a line too long to hold, cut by the chunk just before a "--=_b1":
    # what follows is the same line's, no delimiter line
    text = b"A" * 2000 + "--=_b1\nContent-Description: gr\u00fc\u00df\n".encode()
    message = MIXED.replace(b"QUJD\n", text)
    end = header_end(message)
    body = message[end:]
    cut = body.index(b"A" * 2000) + 2000
    parts = PartHeaders(message[:end])
    out = parts.feed(body[:cut]) + parts.feed(body[cut:]) + parts.finish()
    assert text in out
    assert (downgrade_header(message[:end]) + out, parts.delta) == run(message)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(MIXED)), max_size=12))
def test_any_chunking_gives_the_same_copy(cuts):
    end = header_end(MIXED)
    body = MIXED[end:]
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    parts = PartHeaders(MIXED[:end])
    out = b"".join(parts.feed(body[a:b]) for a, b in itertools.pairwise(bounds))
    out += parts.finish()
    whole, delta = run(MIXED)
    assert downgrade_header(MIXED[:end]) + out == whole and parts.delta == delta


def _at_limit(end: bytes, nl: bytes = b"\n") -> tuple[bytes, int]:
    """A message whose part header section (a UTF-8 Content-Description
    last) is ``PART_HEADER_LIMIT`` octets, then ``end``; and where in its
    body that section ends."""
    desc = "Content-Description: gro\u00df".encode() + nl
    pad = b"X-Pad: " + b"a" * 70 + nl
    fill = PART_HEADER_LIMIT - len(desc)
    lines = pad * (fill // len(pad) - 1)
    header = lines + b"X-Fill: " + b"f" * (fill - len(lines) - 8 - len(nl)) + nl + desc
    assert len(header) == PART_HEADER_LIMIT
    message = (f"Subject: \u00fc{nl.decode()}Content-Type: multipart/mixed; boundary=bb"
               f"{nl.decode()}{nl.decode()}--bb{nl.decode()}").encode() + header + end
    body = message[header_end(message):]
    return message, body.index(header) + len(header)


@pytest.mark.parametrize("end, nl, cut", [
    (b"\r\nbody\r\n--bb--\r\n", b"\r\n", 1),  # the empty line's CR and LF apart
    (b"--bb\n\nbody\n--bb--\n", b"\n", 3),  # a delimiter ends it, cut after "--b"
    (b"--bb\n\nbody\n--bb--\n", b"\n", 1),  # ... after its first "-"
])
def test_a_part_header_section_at_the_limit_whatever_the_chunking(end, nl, cut):
    message, at = _at_limit(end, nl)
    whole = run(message)
    assert whole[0].isascii() and whole[1] > 0
    end_ = header_end(message)
    body = message[end_:]
    parts = PartHeaders(message[:end_])
    out = parts.feed(body[:at + cut]) + parts.feed(body[at + cut:]) + parts.finish()
    assert (downgrade_header(message[:end_]) + out, parts.delta) == whole


@pytest.mark.parametrize("step", [None, 4096, PART_HEADER_LIMIT + 3])
def test_utf8_past_the_limit_of_a_part_header_section_is_refused(step):
    # the UTF-8 field comes after the first PART_HEADER_LIMIT octets
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 1)
    over = MIXED.replace(b'--=_b1\nContent-Type: application/pdf', b"--=_b1\n" + pad
                         + b"Content-Type: application/pdf")
    assert over.index(NAME.encode()) - over.index(pad) > PART_HEADER_LIMIT
    with pytest.raises(Undowngradable, match="too long"):
        run(over, step)
    # a legacy 8-bit field there (not UTF-8) is passed on, as a short one is
    latin = over.replace(NAME.encode(), "r\u00e9sum\u00e9.pdf".encode("latin-1")).replace(
        "\u00e9t\u00e9".encode(), b"summer")
    out, delta = run(latin, step)
    assert delta == 0 and "r\u00e9sum\u00e9.pdf".encode("latin-1") in out
    # not strict: it goes as it is
    assert NAME.encode() in run(over, step, strict=False)[0]


def test_utf8_past_the_limit_after_a_chunk_that_ends_before_a_line_end_is_refused():
    # the chunk ends in a line of the long section, the next one begins
    # with its "\n": that is the line's end, no empty line ending the section
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 5)  # a few lines past it
    over = MIXED.replace(b'--=_b1\nContent-Type: application/pdf', b"--=_b1\n" + pad
                         + b"Content-Type: application/pdf")
    end = header_end(over)
    body = over[end:]
    cut = body.index(b"Content-Type: application/pdf") - 1
    assert body.index(b"X-Pad") + PART_HEADER_LIMIT + 100 < cut and body[cut:cut + 1] == b"\n"
    parts = PartHeaders(over[:end])
    with pytest.raises(Undowngradable, match="too long"):
        parts.feed(body[:cut])
        parts.feed(body[cut:])
        parts.finish()


def test_utf8_past_the_limit_in_a_line_a_chunk_ends_in_is_refused():
    # the UTF-8 is in the part of the line before the chunk's end
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 5)
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n" + pad
               + "Content-Description: gro\u00df and more\n\nx\n--bb--\n".encode())
    end = header_end(message)
    body = message[end:]
    cut = body.index(b" and more")
    parts = PartHeaders(message[:end])
    with pytest.raises(Undowngradable, match="too long"):
        parts.feed(body[:cut])
        parts.feed(body[cut:])
        parts.finish()
    assert run(message.replace("\u00df".encode(), b"ss"), 4096)[1] == 0


@pytest.mark.parametrize("back", [1, 10, 60])
def test_a_chunk_that_ends_in_the_line_crossing_the_limit_passes_it_on_once(back):
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 1)
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n" + pad
               + b"\nx\n--bb--\n")
    end = header_end(message)
    body = message[end:]
    cut = body.index(pad) + len(pad) - back  # in the last pad line, past the limit
    assert cut - body.index(pad) > PART_HEADER_LIMIT
    parts = PartHeaders(message[:end])
    out = parts.feed(body[:cut]) + parts.feed(body[cut:]) + parts.finish()
    assert (out, parts.delta) == (body, 0)


def test_a_long_part_header_section_in_small_chunks_is_passed_on_as_it_is():
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 5)
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n" + pad
               + b"\nx\n--bb--\n")
    out, delta = run(message, 7)
    assert (out[header_end(out):], delta) == (message[header_end(message):], 0)


def test_a_long_part_header_line_that_ends_in_the_boundary_is_no_delimiter():
    # "  bb" (a folded line) has the boundary after two octets, not after "--"
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 5)
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n" + pad
               + b"X-Folded: a\n  bb\n" + "Content-Description: gro\u00df\n".encode()
               + b"\nx\n--bb--\n")
    with pytest.raises(Undowngradable, match="too long"):
        run(message, 4096)


@pytest.mark.parametrize("length, delimiter", [(_LINE_HOLD, True), (_LINE_HOLD + 1, False)])
def test_a_delimiter_line_with_transport_padding_up_to_the_line_hold(length, delimiter):
    # RFC 2046 5.1.1: blanks may follow the boundary; a line longer than
    # what is held at a chunk's end is no delimiter, whatever the chunking
    line = b"--bb" + b" " * (length - 5) + b"\n"
    assert len(line) == length
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n\nx\n"
               + line + "Content-Description: gro\u00df\n\ny\n--bb--\n".encode())
    for step in (None, 5, 1000):
        out, delta = run(message, step)
        assert out.isascii() == delimiter and (delta > 0) == delimiter


def test_an_empty_body_line_a_chunk_begins_with_before_a_delimiter():
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n\nx\n"
               + "\n--bb\nContent-Description: gro\u00df\n\ny\n--bb--\n".encode())
    end = header_end(message)
    body = message[end:]
    cut = body.index(b"x\n") + 2
    parts = PartHeaders(message[:end])
    out = parts.feed(body[:cut]) + parts.feed(body[cut:]) + parts.finish()
    assert (downgrade_header(message[:end]) + out, parts.delta) == run(message)
    assert out.isascii()


def test_utf8_in_a_long_part_header_section_the_body_ends_in_is_refused():
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 5)
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n" + pad
               + "Content-Description: gro\u00df".encode())
    for step in (None, 4096):
        with pytest.raises(Undowngradable, match="too long"):
            run(message, step)
        with pytest.raises(Undowngradable, match="too long"):
            run(message + b"\n", step)


def test_a_chunk_of_a_long_body_line_that_is_a_boundary_is_no_delimiter():
    # the middle chunk ("--bb") has no line end: it goes on the long line
    text = b"A" * 2000 + "--bb\nContent-Description: gro\u00df\n".encode()
    message = (b"Subject: hi\nContent-Type: multipart/mixed; boundary=bb\n\n--bb\n\n"
               + text + b"\ny\n--bb--\n")
    end = header_end(message)
    body = message[end:]
    a = body.index(text) + 2000
    parts = PartHeaders(message[:end])
    out = parts.feed(body[:a]) + parts.feed(body[a:a + 4]) + parts.feed(body[a + 4:])
    out += parts.finish()
    assert text in out
    assert (downgrade_header(message[:end]) + out, parts.delta) == run(message)


def test_a_close_delimiter_that_ends_a_part_header_section_leads_to_the_epilogue():
    # the part's own Content-Type (a multipart) opens nothing: the close
    # delimiter ends its header section, and what follows is the epilogue
    epilogue = "--zz\nContent-Description: gro\u00df\n\nx\n".encode()
    message = (b"Subject: \xc3\xbc\nContent-Type: multipart/mixed; boundary=bb\n\n"
               b"--bb\nContent-Type: multipart/mixed; boundary=zz\n--bb--\n" + epilogue)
    for step in (None, 1, 7):
        out = run(message, step)[0]
        assert out.endswith(b"\n--bb--\n" + epilogue), out


def test_a_part_header_line_the_body_ends_in_is_downgraded():
    # no line end after the last field: it is the section's all the same
    message = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=bb\n\n"
               "--bb\nContent-Description: gro\u00df").encode()
    out, delta = run(message)
    assert out.isascii() and delta > 0
    assert str(walk(out + b"\n\nx\n--bb--\n")[1]["content-description"]) == "gro\u00df"


def test_a_delimiter_line_is_one_whatever_the_chunking():
    # a line that long is no delimiter line, whether a chunk ends in it or not
    # (over RFC 5322's 998 octets: RFC 2046's transport padding that long
    # would have the whole line held to be judged)
    padded = MIXED.replace(b"--=_b1\nContent-Type: application/pdf",
                           b"--=_b1" + b" " * 2000 + b"\nContent-Type: application/pdf")
    end = header_end(padded)
    body = padded[end:]
    at = body.index(b"--=_b1 ") + 1500
    whole = run(padded)
    parts = PartHeaders(padded[:end])
    out = parts.feed(body[:at]) + parts.feed(body[at:]) + parts.finish()
    assert (downgrade_header(padded[:end]) + out, parts.delta) == whole


def _nested(depth: int) -> bytes:
    """A message with ``depth`` multiparts one in another, the innermost
    with a part whose file name is UTF-8."""
    opening = "".join(f"--d{k}\nContent-Type: multipart/mixed; boundary=d{k + 1}\n\n"
                      for k in range(1, depth))
    closing = "".join(f"--d{k}--\n" for k in range(depth, 0, -1))
    return ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=d1\n\n" + opening
            + f'--d{depth}\nContent-Disposition: attachment; filename="{NAME}"\n\nx\n'
            + closing).encode()


def test_parts_nested_past_the_depth_limit_have_no_downgraded_form():
    from txmailhub.downgrade import PART_DEPTH_LIMIT
    out, _ = run(_nested(PART_DEPTH_LIMIT))
    assert out.isascii()
    with pytest.raises(Undowngradable, match="deep"):
        run(_nested(PART_DEPTH_LIMIT + 1))
    # not strict: the deeper ones go as they are
    assert NAME.encode() in run(_nested(PART_DEPTH_LIMIT + 1), strict=False)[0]


_FIELDS = st.sampled_from([
    f'Content-Disposition: attachment; filename="{NAME}"',
    "Content-Description: \u00e9t\u00e9 \u65e5\u672c",
    "Content-Type: text/plain; charset=utf-8",
    "X-Note: gr\u00fc\u00df",
    ".Dot: x",
])


def _tree(depth: int) -> st.SearchStrategy[str]:
    """A MIME entity (header section, empty line, body) of ASCII bodies
    and header sections that may hold UTF-8; multiparts down to ``depth``."""
    leaf = st.builds(lambda fields, body: "".join(f + "\n" for f in fields) + "\n" + body,
                     st.lists(_FIELDS, max_size=3),
                     st.sampled_from(["x\n", "--not-ours\n", "Subject: body\n", ""]))
    if depth == 0:
        return leaf
    boundary = st.sampled_from(["a", "b'(c", "e(1)f", f"d{depth}"])
    multi = st.builds(
        lambda b, kind, kids, fields: (
            f'Content-Type: {kind}; boundary="{b}"\n' + "".join(f + "\n" for f in fields)
            + "\npreamble\n" + "".join(f"--{b}\n{k}\n" for k in kids) + f"--{b}--\nepilogue\n"),
        boundary, st.sampled_from(["multipart/mixed", "multipart/digest"]),
        st.lists(_tree(depth - 1), min_size=1, max_size=3), st.lists(_FIELDS, max_size=2))
    rfc822 = st.builds(lambda inner: "Content-Type: message/rfc822\n\n" + inner, _tree(depth - 1))
    return st.one_of(leaf, multi, rfc822)


@settings(max_examples=80, deadline=None)
@given(_tree(3), st.booleans(), st.lists(st.integers(min_value=0), max_size=20))
def test_a_copy_that_succeeds_is_ascii_whatever_the_chunking(entity, crlf, cuts):
    message = ("Subject: \u00fc\n" + entity).encode()
    if crlf:
        message = message.replace(b"\n", b"\r\n")
    end = header_end(message)
    body = message[end:]
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    parts = PartHeaders(message[:end])
    try:
        whole = run(message)
    except Undowngradable:
        with pytest.raises(Undowngradable):
            for a, b in itertools.pairwise(bounds):
                parts.feed(body[a:b])
            parts.finish()
        return
    out = b"".join(parts.feed(body[a:b]) for a, b in itertools.pairwise(bounds))
    out += parts.finish()
    assert (downgrade_header(message[:end]) + out, parts.delta) == whole
    assert whole[0].isascii()


def test_more_part_header_sections_to_downgrade_than_the_limit():
    from txmailhub.downgrade import PART_DOWNGRADE_LIMIT

    def message(n: int) -> bytes:
        part = f'--b\nContent-Type: text/plain; name="{NAME}"\n\nx\n'
        return ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=b\n\n"
                + part * n + "--b\nContent-Type: text/plain\n\nascii\n--b--\n").encode()

    out, _ = run(message(PART_DOWNGRADE_LIMIT), 4096)
    assert out.isascii()
    with pytest.raises(Undowngradable, match="too many"):
        run(message(PART_DOWNGRADE_LIMIT + 1), 4096)
    # ASCII ones do not count
    assert run(message(PART_DOWNGRADE_LIMIT).replace(b"--b--", b"--b\n\n--b--"))[0].isascii()


@pytest.mark.parametrize("content_type, boundary", [
    ('multipart/mixed; boundary="=_a(1)b"', "=_a(1)b"),  # "(" and ")" are bchars
    ('multipart/mixed; x="; boundary=fake"; boundary=real', "real"),
    ('multipart/mixed (a comment (nested)); boundary="q;r"', "q;r"),
    # RFC 2231: an extended value, sections (in any order, quoted or not)
    ("multipart/mixed; boundary*=us-ascii''abc", "abc"),
    ("multipart/mixed; boundary*=us-ascii'en'%3D_a%62c", "=_abc"),
    ('multipart/mixed; boundary*0=ab; boundary*1="(cd)"', "ab(cd)"),
    ("multipart/mixed; boundary*1=cd; boundary*0*=''a%62", "abcd"),
    ("multipart/mixed; boundary*0=ab; boundary*2=zz", "ab"),  # a section missing: no more
    # the name in any case; of two, the first (boundary and boundary* alike)
    ("multipart/mixed; BOUNDARY=first; boundary=second", "first"),
    ("multipart/mixed; Boundary*=''first; boundary=second", "first"),
    ("multipart/mixed; boundary*0=first; boundary*=''second", "first"),
    # after quoted strings and comments, with comments after it
    ('multipart/mixed; x="a;b"; (boundary=c; d) boundary=real (e)', "real"),
    ('multipart/mixed; boundary="real" (x); boundary=second', "real"),
    # a quoted-pair in the quoted boundary (RFC 5322 3.2.4): the octet it quotes
    ('multipart/mixed; boundary="a\\bc"', "abc"),
    ('multipart/mixed; x="a\\"; boundary=fake"; boundary=real', "real"),
    ('multipart/mixed; (a\\) boundary=fake;) boundary=real', "real"),
])
def test_the_boundary_is_read_as_a_mime_reader_reads_it(content_type, boundary):
    message = (f"Subject: \u00fc\nContent-Type: {content_type}\n\n"
               f'--{boundary}\nContent-Disposition: attachment; filename="{NAME}"\n\nx\n'
               f"--{boundary}--\n").encode()
    assert email.message_from_bytes(message, policy=policy.default).get_boundary() == boundary
    out, delta = run(message)
    assert out.isascii() and delta > 0
    assert walk(out)[1].get_filename() == NAME


def _lines_run(message: bytes, body: bytes) -> int:
    """How many lines of txmailhub.downgrade run while ``body`` is fed to
    the ``PartHeaders`` of ``message`` (fed first): work counted, not timed."""
    import sys

    end = header_end(message)
    parts = PartHeaders(message[:end])
    parts.feed(message[end:])
    count = 0
    source = PartHeaders.feed.__code__.co_filename

    def trace(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != source:
            return None
        if event == "line":
            count += 1
        return trace

    before = sys.gettrace()  # (a coverage run's, put back after)
    sys.settrace(trace)
    try:
        out = parts.feed(body)
    finally:
        sys.settrace(before)
    assert out == body
    return count


def test_a_body_line_of_dashes_costs_the_same_whatever_the_depth():
    # each line that starts with "--" is looked for among the open
    # boundaries: comparing it with each of them in turn made a body of
    # "--" lines, 32 multiparts deep, hold the sending thread some 0.2 s
    # per 64 KiB read
    from txmailhub.downgrade import PART_DEPTH_LIMIT

    def opened(depth: int) -> bytes:
        message = _nested(depth)
        return message[:message.index(b"\nx\n") + 3]

    body = b"--\n--d1x\n--d1--x\n" * 200
    shallow = _lines_run(opened(1), body)
    deep = _lines_run(opened(PART_DEPTH_LIMIT), body)
    assert deep < shallow * 1.2


@pytest.mark.parametrize("outer, field, inner", [
    ("multipart/mixed", b"Content-Type: multipart/mixed; boundary=in\n",
     f'--in\nContent-Disposition: attachment; filename="{NAME}"\n\nx\n--in--\n'.encode()),
    ("multipart/mixed", b"Content-Type: message/rfc822\n",
     "Subject: gr\u00fc\u00df\n\nbody\n".encode()),
    ("multipart/digest", b"X-Note: a digest's part is a message by default\n",
     "Subject: gr\u00fc\u00df\n\nbody\n".encode()),
])
@pytest.mark.parametrize("step", [None, 4096])
def test_a_long_ascii_part_header_section_hides_no_part_header_sections(outer, field, inner,
                                                                         step):
    # the Content-Type of a part header section over the limit is not
    # read: the header sections of the parts (or the message) it opens
    # went as they were, UTF-8 and all, in a copy taken for downgraded
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 1)
    message = (f"Subject: \u00fc\nContent-Type: {outer}; boundary=out\n\n--out\n".encode()
               + field + pad + b"\n" + inner + b"--out--\n")
    assert walk(message)[1].get_content_type() != "text/plain"
    with pytest.raises(Undowngradable, match="too long"):
        run(message, step)
    assert run(message, step, strict=False)[0].endswith(inner + b"--out--\n")
    # a leaf's long section, ASCII, goes as it is
    leaf = message.replace(field, b"Content-Type: text/plain\n").replace(b"digest", b"mixed")
    assert run(leaf, step)[1] == 0


@pytest.mark.parametrize("field", [b"Content-Type: MultiPart/Mixed; boundary=in\n",
                                   b"Content-Type: Message/RFC822\n"])
@pytest.mark.parametrize("step", [1, 3, 7, 4096])
def test_a_nesting_type_at_the_end_of_a_long_part_header_section_is_found_in_any_chunks(
        field, step):
    # (in any case, and cut between two chunks wherever it is: the type
    # is looked for in what is passed on, not in what is held)
    long_ascii = b"X-Pad: " + b"a" * 70 + b"\n"
    pad = long_ascii * (PART_HEADER_LIMIT // len(long_ascii) + 1)
    inner = (b"--in\n" if b"Multi" in field else b"") + "Subject: gr\u00fc\u00df\n\nbody\n".encode()
    message = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=out\n\n--out\n".encode()
               + pad + field + b"\n" + inner + b"--out--\n")
    with pytest.raises(Undowngradable, match="too long"):
        run(message, step)
    leaf = message.replace(field, b"Content-Type: text/plain\n")
    assert run(leaf, step)[1] == 0


@pytest.mark.parametrize("kind", ["text/plain", "multipartx/mixed"])
def test_a_type_that_is_no_multipart_may_lose_a_boundary_parameter(kind):
    # only a multipart's body has delimiter lines its boundary must name
    header = f'Content-Type: {kind}; boundary="=?utf-8?q?abc?="; name="{NAME}"\n'.encode()
    out = downgrade_header(header)
    assert out.isascii() and walk(out + b"\nx\n")[0].get_param("name") == NAME


@pytest.mark.parametrize("fields, boundary", [
    # "=", "?" are bchars (RFC 2046 5.1.1), and no encoded word is one in
    # a quoted string (RFC 2047 5(3)); the stdlib decodes it all the same
    (f'Content-Type: multipart/mixed; boundary="=?utf-8?q?abc?="; name="{NAME}"',
     "=?utf-8?q?abc?="),
    ('Content-Type: multipart/mixed (\u00e4); boundary="a =?utf-8?q?b?= c"',
     "a =?utf-8?q?b?= c"),
    # (a field with UTF-8 after it)
    (f'Content-Type: multipart/mixed; boundary="=?utf-8?q?abc?="; name="{NAME}"\n'
     "Content-Description: gro\u00df", "=?utf-8?q?abc?="),
    # after two fields with parameters and UTF-8, a field with parameters
    # goes as encoded words (the stdlib would take too long over many)
    (f'Content-Disposition: inline; filename="{NAME}"\n'
     f'Content-Disposition: attachment; filename="{NAME}"\n'
     f'Content-Type: multipart/mixed; boundary=abc; name="{NAME}"', "abc"),
])
@pytest.mark.parametrize("where", ["top", "part"])
def test_a_multipart_whose_downgraded_type_loses_its_boundary_has_no_downgraded_form(
        fields, boundary, where):
    inner = (f"{fields}\n\n--{boundary}\n"
             f'Content-Disposition: attachment; filename="{NAME}"\n\nx\n--{boundary}--\n')
    if where == "top":
        message = f"Subject: \u00fc\n{inner}".encode()
    else:
        message = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=out\n\n--out\n"
                   f"{inner}--out--\n").encode()
    with pytest.raises(Undowngradable, match="boundary"):
        run(message)
    # the same with a boundary its downgraded Content-Type keeps
    if "Disposition" not in fields:
        out, _ = run(message.replace(boundary.encode(), b"kept"))
        assert out.isascii() and walk(out)[-1].get_filename() == NAME


def test_a_delimiter_goes_to_the_innermost_open_multipart_of_its_boundary():
    # a multipart inside one of the same boundary (RFC 2046 5.1.1 forbids
    # it; readers take the innermost, as the delimiters were looked for
    # before): its close leaves the outer open, whose next part follows
    message = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=b\n\n"
               "--b\nContent-Type: multipart/mixed; boundary=b\n\n"
               "--b\nContent-Description: \u00fc1\n\nx\n--b--\n"
               "--b\nContent-Description: \u00fc2\n\ny\n--b--\n").encode()
    out, _ = run(message)
    assert out.isascii() and b"=?utf-8?q?=C3=BC2?=" in out
    # and so after a multipart inside the inner one has closed
    message = message.replace(b"x\n--b--\n", b"--c\n\nz\n--c--\n--b--\n").replace(
        "\u00fc1\n".encode(), "\u00fc1\nContent-Type: multipart/mixed; boundary=c\n".encode())
    out, _ = run(message)
    assert out.isascii() and b"=?utf-8?q?=C3=BC2?=" in out and b"--c--\n--b--\n--b\n" in out


@pytest.mark.parametrize("boundary", ["i", "in"])
def test_a_line_of_a_closed_multipart_is_body(boundary):
    # after the close delimiter of a multipart (a boundary of one octet
    # too), "--" and its boundary is body text: not a part to downgrade
    message = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=o\n\n"
               f"--o\nContent-Type: multipart/mixed; boundary={boundary}\n\n"
               f"--{boundary}\nContent-Description: \u00fc1\n\nx\n--{boundary}--\n"
               f"--{boundary}\nX-Body: gr\u00fc\u00df\n\n--o--\n").encode()
    out, _ = run(message)
    assert b"=?utf-8?q?=C3=BC1?=" in out
    assert out.endswith(f"--{boundary}\nX-Body: gr\u00fc\u00df\n\n--o--\n".encode())


def test_a_boundary_with_two_more_octets_is_no_close_delimiter():
    # RFC 2046 5.1.1: only "--" after the boundary makes the close
    # delimiter; "--ixy" is a line of the part's body, and the next
    # part of the multipart is downgraded
    message = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=o\n\n"
               "--o\nContent-Type: multipart/mixed; boundary=i\n\n"
               "--i\n\nx\n--ixy\n--i\nContent-Description: \u00fc3\n\ny\n--i--\n--o--\n").encode()
    out, _ = run(message)
    assert out.isascii() and b"--ixy\n--i\nContent-Description: =?utf-8?q?=C3=BC3?=" in out


def test_the_close_of_an_outer_multipart_closes_the_inner_ones_open():
    # (its epilogue has no parts: a line there like a delimiter of either
    # is body text)
    epilogue = "--o\nX-Body: gr\u00fc\u00df\n--i\nX-Body: gr\u00fc\u00df\n"
    message = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=o\n\n"
               "--o\nContent-Type: multipart/mixed; boundary=i\n\n"
               f"--i\n\nx\n--o--\n{epilogue}").encode()
    out, _ = run(message)
    assert out.endswith(f"--o--\n{epilogue}".encode())
