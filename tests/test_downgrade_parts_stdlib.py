"""A differential property test of ``PartHeaders``: multipart messages
with UTF-8 in their part header sections (nested multiparts, message/rfc822
parts, multipart/digest, boundaries of every RFC 2046 bchar and given in
RFC 2231 forms, preambles and epilogues, parts without header fields), fed
in chunks of any size; the downgraded copy, parsed by Python's email
package, has the part tree the original has, and its header sections
are ASCII."""

from __future__ import annotations

import email
import string
from email import policy
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.downgrade import PartHeaders, downgrade_header, header_end
from txmailhub.store.format import crlf_size_of

TEXT = st.sampled_from(["plain", "Gr\u00fc\u00dfe", "\u00e9t\u00e9 2024", "\u65e5\u672c\u8a9e",
                        "caf\u00e9 \u00e0 la carte", "a b", "\u00fc"])
# RFC 2046 5.1.1's bchars, the space not last
BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=? "
BODY_LINE = st.sampled_from(["text", "", " indented", "-- ", "-", "--not a boundary",
                             "k\u00f6rper \u00fc", "Content-Type: text/html",
                             "From: \u00fc@example.org"])


@st.composite
def boundaries(draw, path: str) -> str:
    """A boundary: the multipart's ``path`` in the tree first (no boundary
    is another's start), then bchars, never a space at its end."""
    return (f"{path}_" + draw(st.text(BCHARS, max_size=20))).rstrip(" ")


@st.composite
def boundary_parameter(draw, boundary: str) -> str:
    """``boundary`` as a Content-Type parameter, in one of the forms MIME
    readers take."""
    name = draw(st.sampled_from(["boundary", "BOUNDARY", "Boundary"]))
    form = draw(st.sampled_from(["token", "quoted", "extended", "sections", "extended-sections"]))
    # (a "'" is a token's, RFC 2045 5.1, but the stdlib reads an unquoted
    # value with one as RFC 2231's charset'language'value)
    if form == "token" and all(c not in boundary for c in " ()<>@,;:\\\"/[]?='"):
        return f"{name}={boundary}"
    if form == "extended":
        return f"{name}*=us-ascii'en'{quote(boundary, safe='')}"
    if form in ("sections", "extended-sections") and len(boundary) > 1:
        cut = draw(st.integers(1, len(boundary) - 1))
        pieces = [boundary[:cut], boundary[cut:]]
        if form == "sections":
            params = [f'{name}*{i}="{p}"' for i, p in enumerate(pieces)]
        else:
            params = [f"{name}*0*=''{quote(pieces[0], safe='')}", f'{name}*1="{pieces[1]}"']
        if draw(st.booleans()):
            params.reverse()  # RFC 2231 3: sections in any order
        return "; ".join(params)
    return f'{name}="{boundary}"'


@st.composite
def part_fields(draw) -> list[str]:
    """Header fields of a part but its Content-Type, UTF-8 or not."""
    fields = []
    if draw(st.booleans()):
        fields.append(f"Content-Description: {draw(TEXT)}")
    if draw(st.booleans()):
        fields.append(f'Content-Disposition: attachment;\n filename="{draw(TEXT)}"')
    if draw(st.booleans()):
        fields.append(f"X-Note: {draw(TEXT)}")
    return fields


@st.composite
def entities(draw, depth: int, path: str = "0", default: str = "text/plain",
             top: bool = False) -> str:
    """A MIME entity (header section, empty line, body) with parts nested
    at most ``depth`` deep; ``default``: the type of a part without
    Content-Type (multipart/digest's parts are message/rfc822); ``top``:
    a multipart."""
    kinds = ["leaf"] + (["multipart", "message"] if depth > 0 else [])
    kind = "multipart" if top else draw(st.sampled_from(kinds))
    fields = draw(part_fields())
    if kind == "leaf":
        if default == "message/rfc822":  # a digest's part with no Content-Type: a message
            inner = draw(entities(0, path))
            return "\n".join([*fields, "", inner]) if fields else "\n" + inner
        if draw(st.booleans()):
            fields.insert(0, f'Content-Type: text/plain; charset=utf-8; name="{draw(TEXT)}"')
        body = "\n".join(draw(st.lists(BODY_LINE, max_size=4)))
        if not fields and draw(st.booleans()):
            return "\n" + body  # a part with no header fields at all
        return "\n".join([*fields, "", body])
    if kind == "message":
        inner = draw(entities(depth - 1, path + ".0"))
        content_type = draw(st.sampled_from(["Content-Type: message/rfc822",
                                             "content-type: Message/RFC822"]))
        return "\n".join([content_type, *fields, "", inner])
    boundary = draw(boundaries(path))
    subtype = draw(st.sampled_from(["mixed", "alternative", "digest"]))
    child = "message/rfc822" if subtype == "digest" else "text/plain"
    children = [draw(entities(depth - 1, f"{path}.{i}", child))
                for i in range(draw(st.integers(1, 3)))]
    preamble = draw(st.sampled_from(["", "preamble\n", "pr\u00e4ambel\n", f"--{boundary}x\n"]))
    epilogue = draw(st.sampled_from(["", "epilogue\n", "\u00e9pilogue\n", f"--{boundary}\n"]))
    param = draw(boundary_parameter(boundary))
    # (a comment between the type and the ";" would be the type's end for
    # the stdlib: multipart/digest's parts would not be messages there)
    comment = draw(st.sampled_from(["", "(a comment) ", '(with "quotes";) ']))
    content_type = f"Content-Type: multipart/{subtype};\n {comment}{param}"
    blanks = st.sampled_from(["", " ", "\t "])  # after a delimiter (RFC 2046 5.1.1)
    body = preamble + "".join(f"--{boundary}{draw(blanks)}\n{c}\n" for c in children)
    if depth == 3 or draw(st.integers(0, 5)):
        body += f"--{boundary}--{draw(blanks)}\n{epilogue}"
    # else no close delimiter: the next of an enclosing multipart closes it too
    name = draw(st.sampled_from(["Content-Type", "CONTENT-TYPE", "content-type"]))
    return "\n".join([content_type.replace("Content-Type", name), *fields, "", body])


def downgraded(message: bytes, steps: list[int]) -> bytes:
    end = header_end(message)
    assert end is not None
    parts = PartHeaders(message[:end])
    body = message[end:]
    out, pos, i = [], 0, 0
    while pos < len(body):
        step = steps[i % len(steps)]
        out.append(parts.feed(body[pos:pos + step]))
        pos += step
        i += 1
    out.append(parts.finish())
    new = b"".join(out)
    assert parts.delta == crlf_size_of(new) - crlf_size_of(body)
    return downgrade_header(message[:end]) + new


def tree(msg: email.message.Message) -> tuple:
    """What a reader makes of a message: its parts' types, bodies,
    parameters, descriptions; multiparts' preambles and epilogues."""
    kind = msg.get_content_type()
    described = (kind, msg.get_filename(), msg.get_param("name"),
                 str(msg.get("content-description")))
    if msg.is_multipart():
        children = tuple(tree(p) for p in msg.get_payload())
        if kind == "message/rfc822":
            return described + children
        return (*described, msg.preamble, msg.epilogue, *children)
    return (*described, msg.get_payload())


def parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=policy.default)


def header_sections(msg: email.message.Message):
    for part in msg.walk():
        yield from part.raw_items()


@settings(max_examples=200, deadline=None)
@given(entity=entities(3, top=True), subject=TEXT.filter(lambda t: not t.isascii()),
       crlf=st.booleans(),
       steps=st.lists(st.integers(1, 300), min_size=1, max_size=3))
def test_the_downgraded_copy_has_the_part_tree_of_the_original(entity, subject, crlf, steps):
    message = f"From: a@example.org\nSubject: {subject}\nMIME-Version: 1.0\n{entity}".encode()
    if crlf:
        message = message.replace(b"\n", b"\r\n")
    out = downgraded(message, steps)
    original, copy = parse(message), parse(out)
    assert tree(copy) == tree(original)
    assert all(name.isascii() and value.isascii() for name, value in header_sections(copy))
