"""The RFC 5322 lexical pieces the header readers share (txmailhub.rfc5322)."""

from __future__ import annotations

import re

import pytest

from txmailhub.rfc5322 import CFWS, MSG_ID, comment_end, escaped


@pytest.mark.parametrize("text, start, end", [
    ("(a)", 0, 3),
    ("x (a) y", 2, 5),
    ("(a (b) c) d", 0, 9),  # nested (RFC 5322 3.2.2)
    ("((()))", 0, 6),
    ("(a\\)b) c", 0, 6),  # a quoted-pair is no closing parenthesis
    ("(\\()x)", 0, 4),  # nor an opening one: the first ")" closes
    ("(\\\\)x)", 0, 4),  # an escaped backslash escapes nothing after it
])
def test_comment_end_is_past_the_comment(text, start, end):
    assert comment_end(text, start) == end


@pytest.mark.parametrize("text", ["(a", "(a (b)", "(a\\)", "(a\\", "((a)"])
def test_comment_end_of_a_comment_never_closed_is_minus_one(text):
    assert comment_end(text, 0) == -1


@pytest.mark.parametrize("text, i, result", [
    ("a b", 1, False),
    ("a\\ b", 2, True),
    ("a\\\\ b", 3, False),  # the pair is the two backslashes
    ("a\\\\\\ b", 4, True),
    ("\\ b", 1, True),  # a backslash at the very start counts
    ("x", 0, False),
])
def test_escaped_counts_the_backslashes_before(text, i, result):
    assert escaped(text, i) is result
    assert escaped(text.encode(), i) is result


_ONE_ID = re.compile(rb"\A" + CFWS + MSG_ID + CFWS + rb"\Z")


@pytest.mark.parametrize("field", [
    b"<a.b@c.d>",
    b" <a@[127.0.0.1]>",
    b"<\"a b\"@c>",  # obsolete quoted id-left (RFC 5322 4.5.4)
    b"<\"a\\\"b\"@c>",  # with a quoted-pair in it
    b"(note) <a@b> (more)\r\n ",
    b"<a\xc3\xa9@b>",  # UTF-8 (RFC 6532 3.2)
])
def test_one_msg_id(field):
    assert _ONE_ID.match(field)


@pytest.mark.parametrize("field", [
    b"<a@b> <c@d>",
    b"<a..b@c>",
    b"<a@b",
    b"<@b>",
    b"<a@[b[c]>",
    b"<\"a\"b\"@c>",  # a bare quote inside the quoted string
    b"<\"a\\\"@c>",  # the closing quote escaped
    b"<\"a\nb\"@c>",
    b"(a (b)) <a@b>",  # a nested comment: not read as CFWS here
    b"(a \\) b) <a@b>",  # nor one with a quoted-pair
    b"(a\\b) <a@b>",  # nor one with a backslash at all
])
def test_no_single_msg_id(field):
    assert not _ONE_ID.match(field)
