"""The POP3 downgrade (``PartHeaders``) finds a multipart's parts as the
email package does, however its boundary parameter is spelled: the
downgraded copy, parsed by Python's email package (``policy.default``),
has the part tree of the original and ASCII header sections -- or the
message has no downgraded form (``Undowngradable``)."""

from __future__ import annotations

import email
import string
from email import policy

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from txmailhub.downgrade import PartHeaders, Undowngradable, downgrade_header, header_end

_CORE = string.ascii_letters[:4] + string.digits[:2] + "'()+_,-./:=? " + '@<>[]"\\;*%!~\x0b'


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=policy.default)


def downgraded(message: bytes) -> bytes:
    end = header_end(message)
    assert end is not None
    parts = PartHeaders(message[:end])
    body = parts.feed(message[end:]) + parts.finish()
    return downgrade_header(message[:end]) + body


def tree(msg: email.message.Message) -> tuple:
    kind = msg.get_content_type()
    described = (kind, msg.get_filename(), str(msg.get("content-description")))
    if msg.is_multipart():
        return (*described, *(tree(p) for p in msg.get_payload()))
    return (*described, msg.get_payload())


@st.composite
def _boundary_case(draw):
    core = draw(st.text(_CORE, min_size=1, max_size=8))
    tail = draw(st.sampled_from(["", " ", "\t", "\x0b"]))
    name = draw(st.sampled_from(["boundary", "BOUNDARY"]))
    quoted = '"' + (core + tail).replace("\\", "\\\\").replace('"', '\\"') + '"'
    pct = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in core + tail)
    form = draw(st.sampled_from(["quoted", "token", "twice", "extended", "raw"]))
    if form == "raw":
        params = name + draw(st.text(_CORE + "=*'; \t", max_size=16))
    elif form == "quoted":
        params = f"{name}={quoted}"
    elif form == "token":
        params = f"{name}={core}{tail}"
    elif form == "twice":
        params = f'{name}={quoted}; boundary="zz"'
    else:
        charset = draw(st.sampled_from(["", "us-ascii", "utf-7"]))
        params = f"{name}*={charset}''{pct}"
    return params, [core, core + tail, "zz"]


_U = "Gr\u00fc\u00dfe"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_boundary_case(), st.data())
@example(('boundary="<abc>"', ["<abc>", "<abc>", "zz"]), None)
@example(("boundary=a''b", ["a''b", "a''b", "zz"]), None)
def test_the_downgraded_copy_has_the_parts_the_email_package_finds(case, data):
    params, meant = case
    ctype = "multipart/mixed" if data is None else data.draw(st.sampled_from([
        "multipart/mixed", "Multipart/Mixed", "multipart/mixed (c)", "multipart / mixed",
        "multipart/mi xed", "multipart/mixed\x0b", "(c)multipart/mixed", "multipart(c)/mixed",
        "multipart/mixed (a;b)"]))
    header = f"Content-Type: {ctype}; {params}\n".encode()
    try:
        reader = parse(header + b"\n").get_boundary()
    except (UnicodeDecodeError, IndexError):  # (the email package's own failures)
        reject()
    candidates = sorted({*meant, *([reader] if reader else [])})
    if data is None:  # (an @example: the reader's delimiters, then the other's)
        picks = [reader or meant[0], meant[1], meant[1]]
    else:
        picks = [data.draw(st.sampled_from(candidates)) for _ in range(3)]
    first, second, last = picks
    message = (f"From: a@example.org\nSubject: {_U}\nMIME-Version: 1.0\n".encode() + header
               + f"\npre\n--{first}\nContent-Type: text/plain; name=\"{_U}.txt\"\n\n"
                 f"k\u00f6rper\n--{second}\nContent-Description: {_U}\n\nzwei\n"
                 f"--{last}--\nepi\n".encode())
    try:
        out = downgraded(message)
    except Undowngradable:
        return  # refused to a client without UTF8: nothing is sent
    original, copy = parse(message), parse(out)
    assert tree(copy) == tree(original)
    for part in copy.walk():
        assert all(n.isascii() and v.isascii() for n, v in part.raw_items())


# (Content-Type parameters, the boundary the email package reads)
_READ_AS_THE_STDLIB_DOES = [
    ('boundary="<abc>"', "abc"),  # email.utils.unquote, once more
    ('boundary="\\"abc\\""', "abc"),
    ('boundary="abc\x0b"', "abc"),  # str.rstrip
    ("boundary\x0b=abc", "abc"),
    ("boundary=ab(c)d", "ab"),  # a comment parts tokens
    ('boundary="abc "', "abc"),
]


@pytest.mark.parametrize(("params", "reader"), _READ_AS_THE_STDLIB_DOES)
def test_a_boundary_is_read_as_the_email_package_reads_it(params, reader):
    header = f"Content-Type: multipart/mixed; {params}\n".encode()
    assert parse(header + b"\n").get_boundary() == reader
    message = (f"Subject: {_U}\nMIME-Version: 1.0\n".encode() + header
               + f"\n--{reader}\nContent-Description: {_U}\n\nk\u00f6rper\n"
                 f"--{reader}--\n".encode())
    out = downgraded(message)
    assert out.isascii() or b"Content-Description: =?utf-8?q?" in out
    assert tree(parse(out))[3][2] == _U  # the part's description, downgraded


_DISPUTED = [
    "boundary=a'b",  # RFC 2231 syntax to the stdlib's reader: no boundary
    "boundary=a''b",  # "b"
    "boundary=a*b",  # "a"
    "boundary*0=b'z",
    "boundary*=''a'b",
    "boundary*=utf-7''a+AGE-",  # "aa"
    'boundary="a\\\\"; x=1',  # 'a"; x="1'
    'boundary=""',  # every "--" line a delimiter there, none to others
    'boundary=" "',
    "boundary",
]


@pytest.mark.parametrize("params", _DISPUTED)
def test_a_multipart_whose_boundary_readers_take_differently_has_no_downgraded_form(params):
    for nested in (False, True):
        inner = (f"Content-Type: multipart/mixed; {params}\n\n--b\n"
                 f"Content-Description: {_U}\n\nx\n--b--\n")
        if nested:
            message = (f"Subject: {_U}\nContent-Type: multipart/mixed; boundary=o\n\n"
                       f"--o\n{inner}--o--\n").encode()
        else:
            message = f"Subject: {_U}\n{inner}".encode()
        end = header_end(message)
        assert PartHeaders.has_parts(message[:end])
        with pytest.raises(Undowngradable, match="MIME readers take differently"):
            downgraded(message)
        # not strict (a body that changed after it was measured): as stored
        if nested:
            parts = PartHeaders(message[:end])
            parts.strict = False
            assert parts.feed(message[end:]) + parts.finish() == message[end:]


@pytest.mark.parametrize(("ctype", "parted"), [
    ("(c)multipart/mixed", False), ("multipart(c)/mixed", False), ("multipart / mixed", False),
    ("multipart/mixed (a;b)", True), ("multipart/mixed\x0b", True), ("Multipart/Mixed (c)", True),
])
def test_a_type_is_read_as_the_email_package_reads_it(ctype, parted):
    # a part's header section is downgraded where the email package finds
    # the part, and a body line is left as it is where it finds none
    message = (f"Subject: {_U}\nMIME-Version: 1.0\nContent-Type: {ctype}; boundary=b\n\n"
               f"--b\nContent-Description: {_U}\n\nx\n--b--\n").encode()
    assert parse(message).is_multipart() == parted
    out = downgraded(message)
    assert tree(parse(out)) == tree(parse(message))
    assert (b"Content-Description: =?utf-8?q?" in out) == parted


@pytest.mark.parametrize("ctype", ["(\u00e4)multipart/mixed", "(\u00e4)message/rfc822"])
def test_a_downgraded_content_type_that_names_a_composite_type_is_refused(ctype):
    # the stdlib's rewrite moves the comment after the parameters: the
    # copy's field would name a multipart (or message) the original,
    # to the email package, is not
    header = f"Content-Type: {ctype}; boundary=b\n".encode()
    assert not parse(header + b"\n").is_multipart()
    with pytest.raises(Undowngradable, match="Content-Type of a multipart loses its boundary"):
        downgrade_header(header)
