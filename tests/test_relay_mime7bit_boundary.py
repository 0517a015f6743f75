"""The relay's 7-bit copy finds a multipart's parts as mail readers do.

The copy keeps every delimiter line as stored and re-encodes the parts
between them: where the converter finds other parts than a reader
(Python's ``email`` package, ``policy.default``) would, a reader of the
copy sees parts merged, a delimiter inside a base64 body, or 8-bit text
turned into a preamble's "?".  A boundary parameter readers take
differently is not followed: such a multipart goes as it came when it is
7-bit, and has no 7-bit form when it is not (``Unconvertible``); so has
a multipart with no part, whose "preamble" the email package shows."""

from __future__ import annotations

import io
import string
from email import errors, policy
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from txmailhub.relay import mime7bit
from txmailhub.relay.mime7bit import Unconvertible, to_7bit


def convert(data: bytes) -> bytes:
    out = io.BytesIO()
    to_7bit(io.BytesIO(data), out)
    return out.getvalue()


def parse(data: bytes):
    return BytesParser(policy=policy.default).parsebytes(data)


def _cte(part) -> str:
    return str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()


def assert_same_reading(src: bytes, out: bytes) -> None:
    """``out`` reads, in the email package, as the same parts with the same
    content as ``src``."""
    _same(parse(src), parse(out))


def _same(a, b, unclosed: bool = False) -> None:
    assert a.get_content_type() == b.get_content_type()
    assert a.is_multipart() == b.is_multipart()
    if a.is_multipart():
        pa, pb = a.get_payload(), b.get_payload()
        assert len(pa) == len(pb)
        cut = any(isinstance(d, errors.CloseBoundaryNotFoundDefect) for d in a.defects)
        for i, (x, y) in enumerate(zip(pa, pb)):
            _same(x, y, cut and i == len(pa) - 1)
        return
    before, after = a.get_payload(decode=True), b.get_payload(decode=True)
    if _cte(b) == "base64" and _cte(a) != "base64":
        # made base64 by the copy: the content as sent, CRLF line ends
        before = before.replace(b"\n", b"\r\n")
        if unclosed:
            # the last part of a multipart with no close delimiter: the
            # email package drops its last line end as a delimiter's, but
            # it is in the base64 the copy made of it (readers differ)
            after = after.removesuffix(b"\r\n")
    assert before == after


def _message(params: str, delimiter: str, close: str | None = None,
             eight_bit: bool = True) -> bytes:
    """A multipart with two parts (UTF-8 text and, if ``eight_bit``,
    binary) whose Content-Type has ``params`` and whose delimiter lines
    are ``--`` ``delimiter`` (the close one ``--`` ``close``)."""
    close = f"{delimiter}--" if close is None else close
    second = b"\xff\xfe\x00two\n" if eight_bit else b"two\n"
    text = "Grüße\n".encode() if eight_bit else b"Gruesse\n"
    return (b"From: a@example.org\nSubject: Gr\xc3\xbc\xc3\x9fe\nMIME-Version: 1.0\n"
            + f"Content-Type: multipart/mixed; {params}\n\npreamble\n--{delimiter}\n".encode()
            + b"Content-Type: text/plain; charset=utf-8\n\n" + text
            + f"--{delimiter}\n".encode() + b"Content-Type: application/octet-stream\n\n"
            + second + f"--{close}\nepilogue\n".encode())


# (Content-Type parameters, the boundary the email package reads, the
# one another reader takes)
_NOT_FOLLOWED = [
    # RFC 2046 5.1.1: no blank at a boundary's end; the stdlib's reader
    # drops it ("--abc" is a delimiter, "--abc --" none), others keep it
    ('boundary="abc "', "abc", "abc "),
    ('boundary="abc\t"', "abc", "abc\t"),
    ("boundary*=''abc%20", "abc", "abc "),
    ('boundary="abc\x0b"', "abc", "abc\x0b"),
    # no token, no quoted string (RFC 2045 5.1): a reader takes the token
    # it begins with, or none; another the whole value
    ("boundary==?x?=", None, "=?x?="),
    ("boundary=a=b", "a", "a=b"),
    ("boundary=a?b", "a", "a?b"),
    ("boundary=a/b", "a", "a/b"),
    ("boundary=a b", "a", "a b"),
    ("boundary=a(c)", "a", "a(c)"),
    ("boundary=a@b", "a", "a@b"),
    # a backslash: the stdlib's reader writes the value again without its
    # quoted-pair, and reads that
    ('boundary="a\\\\"; x=1', 'a"; x="1', "a\\"),
    # "<...>" and '"..."' inside the quotes: the stdlib's reader unquotes
    # them once more, others do not
    ('boundary="<abc>"', "abc", "<abc>"),
    ('boundary="\\"abc\\""', "abc", '"abc"'),
    # "'" and "*" in a token: RFC 2231 syntax to some readers
    ("boundary=a'b", None, "a'b"),
    ("boundary=a''b", "b", "a''b"),
    ("boundary=a*b", "a", "a*b"),
    # two boundaries: the stdlib's reader takes the first, others the last
    ("boundary=a; boundary=b", "a", "b"),
    ("boundary=a; BOUNDARY=b", "a", "b"),
    # RFC 2231: a charset in which the octets read as other characters
    ("boundary*=utf-7''a+AGE-", "aa", "a+AGE-"),
    ("boundary*=x-unknown''abc", "abc", "abc"),
    # RFC 2231 sections with one missing: the stdlib joins those before it
    ("boundary*0=a; boundary*2=c", "a", "ac"),
    # longer than the converter follows (RFC 2046 allows 70)
    ("boundary=" + "x" * 201, "x" * 201, "x" * 201),
]


@pytest.mark.parametrize(("params", "reader", "other"), _NOT_FOLLOWED)
def test_a_boundary_readers_take_differently_is_not_followed(params, reader, other):
    assert parse(f"Content-Type: multipart/mixed; {params}\n\n".encode()).get_boundary() == reader
    # with 8-bit octets inside: no 7-bit form, whichever lines delimit it
    for delimiter in (reader or "a", other):
        with pytest.raises(Unconvertible):
            convert(_message(params, delimiter))
    # 7-bit inside (the Subject is 8-bit): the multipart goes as it came
    src = _message(params, reader or "a", eight_bit=False)
    out = convert(src)
    assert out.split(b"\n\n", 1)[1] == src.split(b"\n\n", 1)[1]
    assert_same_reading(src, out)


# (Content-Type parameters, the boundary readers take)
_FOLLOWED = [
    ('boundary="abc"', "abc"),
    ("BOUNDARY=abc", "abc"),
    ("Boundary=\"abc\"", "abc"),
    ("boundary=abc (a comment)", "abc"),
    ('boundary="abc" (a comment)', "abc"),
    ('boundary=" abc"', " abc"),  # a blank first is a bchar (RFC 2046 5.1.1)
    ('boundary="a b"', "a b"),
    ('boundary="=?x?="', "=?x?="),  # "=" and "?" are bchars, quoted
    ('boundary="a=b/c:d"', "a=b/c:d"),
    ("boundary=abc; boundary=abc", "abc"),  # the same twice
    ("boundary*=us-ascii''abc", "abc"),
    ("boundary*=utf-8'en'a%20bc", "a bc"),
    ("boundary*=iso-8859-1''abc", "abc"),
    ("boundary*0*=us-ascii''ab; boundary*1*=c%41", "abcA"),
    ("boundary*0=ab; boundary*1=cd", "abcd"),
    ("boundary=" + "x" * 71, "x" * 71),  # over RFC 2046's 70: readers follow it
    ("boundary=" + "x" * 200, "x" * 200),
]


@pytest.mark.parametrize(("params", "boundary"), _FOLLOWED)
def test_a_boundary_readers_agree_on_is_followed(params, boundary):
    assert parse(f"Content-Type: multipart/mixed; {params}\n\n".encode()).get_boundary() == boundary
    src = _message(params, boundary)
    out = convert(src)
    assert out.isascii()
    parts = parse(out).get_payload()
    assert [_cte(p) for p in parts] == ["quoted-printable", "base64"]
    assert_same_reading(src, out)


# --- the copy against the email package, on boundaries spelled every way -----------

_CORE = string.ascii_letters[:6] + string.digits[:3] + "'()+_,-./:=? " + '@<>[]"\\;*%!~'


@st.composite
def _boundary_case(draw):
    """(Content-Type parameters, the boundaries meant): a boundary spelled
    as a composer might, or a reader might be fooled by."""
    core = draw(st.text(_CORE, min_size=1, max_size=8))
    tail = draw(st.sampled_from(["", " ", "\t", "  "]))
    other = draw(st.sampled_from(["zz", core + "x", core]))
    name = draw(st.sampled_from(["boundary", "BOUNDARY", "Boundary"]))
    quoted = '"' + (core + tail).replace("\\", "\\\\").replace('"', '\\"') + '"'
    pct = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in core + tail)
    form = draw(st.sampled_from(["quoted", "token", "comment", "twice", "extended",
                                 "sections", "raw"]))
    if form == "raw":  # anything after the name
        params = name + draw(st.text(_CORE + "=*'; \t", max_size=16))
    elif form == "quoted":
        params = f"{name}={quoted}"
    elif form == "token":
        params = f"{name}={core}{tail}"
    elif form == "comment":
        params = f"{name}={draw(st.sampled_from([quoted, core]))} (c)"
    elif form == "twice":
        params = f'{name}={quoted}; boundary="{other}"'
    elif form == "extended":
        charset = draw(st.sampled_from(["", "us-ascii", "utf-8", "utf-7"]))
        params = f"{name}*={charset}''{pct}"
    else:
        cut = draw(st.integers(0, len(core)))
        params = f'{name}*0="{core[:cut]}"; {name}*1={quoted[0] + core[cut:] + tail + quoted[-1]}'
    return params, [core, core + tail, other]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_boundary_case(), st.data())
@example(('boundary="abc "', ["abc", "abc ", "zz"]), None)
@example(("boundary==?x?=", ["=?x?=", "=?x?=", "zz"]), None)
def test_the_copy_reads_as_the_original_in_the_email_package(case, data):
    params, meant = case
    ctype = "multipart/mixed" if data is None else data.draw(st.sampled_from([
        "multipart/mixed", "Multipart/Mixed", "multipart/mixed (c)", "multipart / mixed",
        "multipart/mi xed", "multipart/mixed\x0b", "(c)multipart/mixed"]))
    header = f"Content-Type: {ctype}; {params}\n\n".encode()
    try:
        reader = parse(header).get_boundary()
    except (UnicodeDecodeError, IndexError):
        # the email package's own failures (an ill-formed UTF-7 value,
        # "boundary*" and nothing after it): no reading to compare with
        reject()
    ours = mime7bit._params(b"multipart/mixed; " + params.encode())[1].get("boundary")
    candidates = sorted({*meant, *(b for b in (reader, ours) if b and "\n" not in b)})
    if data is None:  # (an @example: every line spelled the reader's way, then the other)
        picks = [(reader or meant[0], ""), (meant[1], ""), (meant[1], " ")]
    else:
        picks = [(data.draw(st.sampled_from(candidates)), data.draw(st.sampled_from(["", " "])))
                 for _ in range(3)]
    (first, pad1), (second, pad2), (last, pad3) = picks
    src = (b"From: a@example.org\nSubject: Gr\xc3\xbc\xc3\x9fe\nMIME-Version: 1.0\n" + header[:-1]
           + f"pre\n--{first}{pad1}\n".encode()
           + b"Content-Type: text/plain; charset=utf-8\n\nGr\xc3\xbc\xc3\x9fe\n"
           + f"--{second}{pad2}\n".encode()
           + b"Content-Type: application/octet-stream\n\n\xff\x00\xfe\n"
           + f"--{last}{pad3}--\nepi\n".encode())
    try:
        out = convert(src)
    except Unconvertible:
        return  # nothing is sent: the message bounces
    assert out.isascii()
    assert_same_reading(src, out)


# --- a multipart with no part ----------------------------------------------------------

_OUTER = b"From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=o\n\n"


@pytest.mark.parametrize(("src", "inner"), [
    # no delimiter at all
    (b"Content-Type: multipart/mixed; boundary=b\n\nGr\xc3\xbc\xc3\x9fe\n", False),
    # a close delimiter first
    (b"Content-Type: multipart/mixed; boundary=b\n\nGr\xc3\xbc\xc3\x9fe\n--b--\nepi\n", False),
    # an inner multipart cut short by the outer one's delimiter
    (_OUTER + b"--o\nContent-Type: multipart/mixed; boundary=b\n\nGr\xc3\xbc\xc3\x9fe\n"
     b"--o\nContent-Type: text/plain\n\nx\n--o--\n", True),
    # one that goes on past the limit of a line
    (b"Content-Type: multipart/mixed; boundary=b\n\n" + b"x" * 1200 + b"\n--b--\n", False),
], ids=["none", "close", "inner", "long"])
def test_a_multipart_with_no_part_has_no_7bit_form_when_it_is_not_7bit(src, inner):
    # the email package shows what precedes no delimiter as the
    # multipart's body (a preamble before parts is shown to nobody): the
    # copy's "?" for its 8-bit octets, a long line broken, would change it
    msg = parse(src)
    shown = (msg.get_payload(0) if inner else msg).get_payload(decode=True)
    assert "Grüße".encode() in shown or b"x" * 1200 in shown
    with pytest.raises(Unconvertible, match="a multipart without parts"):
        convert(src)
    # 7-bit and short: it goes as it came
    src = src.replace("ü".encode(), b"u").replace("ß".encode(), b"ss").replace(
        b"x" * 1200, b"x" * 10)
    out = convert(src)
    assert out == src


@pytest.mark.parametrize("ctype", ["(\u00e4)multipart/mixed", "(\u00e4)message/rfc822"])
def test_a_7bit_content_type_that_names_a_composite_type_the_original_did_not_is_refused(ctype):
    # no type to the email package (the text before the ";" as it is);
    # the stdlib's rewrite of the 8-bit field moves the comment after the
    # parameters, and the copy's field names a multipart or message: a
    # reader of the copy would find parts the original did not have
    src = (f"From: a@example.org\nMIME-Version: 1.0\nContent-Type: {ctype}; boundary=b\n\n"
           "--b\nContent-Type: text/plain\n\nx\n--b--\n").encode()
    assert not parse(src).is_multipart()
    with pytest.raises(Unconvertible, match="names another type"):
        convert(src)
