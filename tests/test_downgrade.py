"""RFC 6857 downgrading of a header section (txmailhub.downgrade)."""

from __future__ import annotations

import base64
import email
import itertools
import re
import string
import urllib.parse
from email import headerregistry, policy
from email.header import decode_header, make_header

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from txmailhub.downgrade import (
    Undowngradable,
    downgrade_header,
    header_end,
    needs_downgrade,
    parameter_field,
)
from txmailhub.rfc2047 import encoded_words
from txmailhub.rfc5322 import escaped


def parse(header: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(header + b"\nbody\n", policy=policy.default)


def field(header: bytes, name: str):
    msg = parse(downgrade_header(header))
    value = msg[name]
    assert value is not None, name
    return value


def rfc2047(phrase: bytes) -> str:
    """Encoded words decoded as RFC 2047 6.2 says (blanks between them go)."""
    return str(make_header(decode_header(phrase.replace(b"\n", b"").decode("ascii"))))


def no_defects(header: bytes) -> None:
    msg = parse(header)
    assert not msg.defects
    for name, value in msg.items():
        assert not value.defects, (name, value.defects)


def test_ascii_is_kept_octet_for_octet():
    h = b"From: a@b.example\nSubject: hi\n  there\nX-Y:z\n"
    assert downgrade_header(h) is h
    assert not needs_downgrade(h)


def test_unstructured_fields_become_encoded_words():
    h = "Subject: Grüße aus Köln\nComments:  ½ \nX-Note: ä\n".encode()
    out = downgrade_header(h)
    assert out.isascii()
    assert b"Subject: =?utf-8?" in out
    msg = parse(out)
    assert str(msg["subject"]) == "Grüße aus Köln"
    assert str(msg["comments"]) == "½ "  # the blanks before the text go, after it stay
    assert str(msg["x-note"]) == "ä"
    no_defects(out)


@pytest.mark.parametrize("pair", [b"\\ ", b"\\\\\\ "])
def test_an_address_field_is_never_folded_inside_a_quoted_pair(pair):
    # RFC 5322 3.2.1: an ASCII quoted name is kept as it is; the blank its
    # backslash quotes is no place to fold, even past 76 characters
    name = b'"' + b"a" * 60 + pair + b"b" * 30 + b'"'
    out = downgrade_header(b"To: " + name + " <a@example.org>, Jörg <j@example.org>\n".encode())
    folded = out.split(b"\n\n")[0]
    assert b" " + name + b" <a@example.org>," in folded.replace(b"\n ", b" ")
    for line in folded.split(b"\n"):
        assert (len(line) - len(line.rstrip(b"\\"))) % 2 == 0, line


def test_a_long_subject_is_folded_into_words_of_75():
    out = downgrade_header(("Subject: " + "Grüße " * 40 + "\n").encode())
    assert all(len(line) <= 76 for line in out.split(b"\n"))
    assert str(parse(out)["subject"]) == ("Grüße " * 40).rstrip(" ") + " "


def test_display_names_and_comments_become_encoded_words_addresses_stay():
    h = 'From: Jörg Müller <joerg@example.org>\nTo: "Ö, Ä" <a@b.example>, c@d.example (Zoë)\n'
    out = downgrade_header(h.encode())
    msg = parse(out)
    assert msg["from"].addresses[0].display_name == "Jörg Müller"
    assert msg["from"].addresses[0].addr_spec == "joerg@example.org"
    assert [a.display_name for a in msg["to"].addresses] == ["Ö, Ä", ""]
    assert [a.addr_spec for a in msg["to"].addresses] == ["a@b.example", "c@d.example"]
    assert "Zoë" not in out.decode() and b"=?utf-8?" in out.split(b"\n")[-2]
    no_defects(out)


def test_an_internationalized_domain_gets_its_a_labels():
    out = downgrade_header("From: Jo <jo@bücher.example>\nCc: x@bücher.example\n".encode())
    msg = parse(out)
    assert msg["from"].addresses[0].addr_spec == "jo@xn--bcher-kva.example"
    assert msg["cc"].addresses[0].addr_spec == "x@xn--bcher-kva.example"


def test_a_non_ascii_local_part_becomes_an_empty_group_named_by_the_original():
    # RFC 6857 3.2.1: "ENCODED-WORD :;"
    h = "From: Jörg <jörg@example.org>\nTo: ok@example.org, jörg@example.org\n".encode()
    out = downgrade_header(h)
    assert out.isascii()
    msg = parse(out)
    (group,) = msg["from"].groups
    assert group.display_name == "Jörg <jörg@example.org>" and group.addresses == ()
    assert [g.display_name for g in msg["to"].groups] == [None, "jörg@example.org"]
    assert msg["to"].addresses[0].addr_spec == "ok@example.org"
    assert b":;" in out
    no_defects(out)


def test_in_a_group_the_unconvertible_member_joins_the_group_name():
    out = downgrade_header("Cc: Team: a@x.example, jörg@y.example;, b@z.example\n".encode())
    msg = parse(out)
    team, single = msg["cc"].groups
    assert team.display_name == "Team jörg@y.example"
    assert [a.addr_spec for a in team.addresses] == ["a@x.example"]
    assert single.addresses[0].addr_spec == "b@z.example"
    no_defects(out)


def test_return_path_with_a_utf8_sender_follows_the_rfc_example():
    out = downgrade_header("Return-Path: <jörg@example.org>\n".encode())
    assert out.startswith(b"Return-Path: =?utf-8?") and out.endswith(b" :;\n")
    assert out.isascii()


def test_message_id_and_references_are_encapsulated():
    # RFC 6857 3.1.10: the Downgraded- fields IANA registered
    h = "Message-ID: <ä@x.example>\nReferences: <a@b> <ö@c>\nIn-Reply-To: <ö@c>\n".encode()
    msg = parse(downgrade_header(h))
    assert msg["message-id"] is None and msg["references"] is None
    assert str(msg["downgraded-message-id"]) == "<ä@x.example>"
    assert str(msg["downgraded-references"]) == "<a@b> <ö@c>"
    assert str(msg["downgraded-in-reply-to"]) == "<ö@c>"
    assert b"Downgraded-Message-Id: " in downgrade_header(h)


def test_mime_parameters_become_rfc_2231_values():
    h = 'Content-Type: text/plain; charset=utf-8; name="Grüße.txt"\n'.encode()
    out = downgrade_header(h)
    assert b"name*=utf-8''Gr%C3%BC%C3%9Fe.txt" in out
    assert parse(out)["content-type"].params["name"] == "Grüße.txt"
    out = downgrade_header('Content-Disposition: attachment; filename="ü.pdf"\n'.encode())
    assert parse(out)["content-disposition"].params["filename"] == "ü.pdf"


def rfc2231_parameters(out: bytes) -> list[tuple[str, int | None, str]]:
    """A parameter field's parameters as an RFC 2231 reader finds them,
    one by one and in their order, none merged with another: (the name
    in lower case, the section or ``None``, the value decoded)."""
    value = re.sub(r"\r?\n", "", out.decode("utf-8")).split(":", 1)[1]
    found = []
    for name, text in re.findall(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s(]+)', value):
        attr, section, extended = re.fullmatch(r"([^*]+)(?:\*([0-9]+))?(\*)?", name).groups()
        if text[:1] == '"':
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        if extended:
            if section in (None, "0") and text.count("'") >= 2:
                charset, _, text = text.split("'", 2)
                assert charset.lower() in ("", "utf-8"), out
            text = urllib.parse.unquote(text, "utf-8", "strict")
        found.append((attr.lower(), None if section is None else int(section), text))
    return found


@pytest.mark.parametrize("field_name, value, want", [
    # RFC 2231 readers take filename*, others filename: both are kept
    ("Content-Disposition",
     "attachment; filename=\"resume.pdf\"; filename*=utf-8''r%C3%A9sum%C3%A9.pdf;"
     " x-author=\"Zo\u00eb\"",
     "attachment; filename=\"resume.pdf\";\n filename*=utf-8''r%C3%A9sum%C3%A9.pdf;"
     " x-author*=utf-8''Zo%C3%AB"),
    ("Content-Disposition",
     "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf; filename=\"r\u00e9sum\u00e9.pdf\"",
     "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf;\n"
     " filename*=utf-8''r%C3%A9sum%C3%A9.pdf"),
    # a raw UTF-8 filename*=, with its charset or none
    ("Content-Disposition",
     "attachment; filename=\"resume.pdf\"; filename*=utf-8''r\u00e9sum\u00e9.pdf",
     "attachment; filename=\"resume.pdf\";\n filename*=utf-8''r%C3%A9sum%C3%A9.pdf"),
    ("Content-Disposition",
     "attachment; filename=resume.pdf; FILENAME*=\"r\u00e9sum\u00e9.pdf\"; size=10",
     "attachment; filename=resume.pdf;\n FILENAME*=utf-8''r%C3%A9sum%C3%A9.pdf; size=10"),
    ("Content-Type",
     "application/pdf; name=\"resume.pdf\"; name*=utf-8''r%C3%A9sum%C3%A9.pdf (f\u00fcr Zo\u00eb)",
     "application/pdf; name=\"resume.pdf\";\n"
     " name*=utf-8''r%C3%A9sum%C3%A9.pdf (=?utf-8?q?f=C3=BCr_Zo=C3=AB?=)"),
    ("Content-Type",
     "application/pdf; name*=utf-8''r\u00e9sum\u00e9.pdf; name=\"resume.pdf\"",
     "application/pdf; name*=utf-8''r%C3%A9sum%C3%A9.pdf;\n name=\"resume.pdf\""),
    # RFC 2231 sections stay sections: a later one with UTF-8 becomes an
    # extended one, and the first says UTF-8 for it
    ("Content-Type",
     "application/pdf; name*0*=utf-8''r%C3%A9; name*1=\"sum\u00e9.pdf\"; name=\"resume.pdf\"",
     "application/pdf; name*0*=utf-8''r%C3%A9;\n name*1*=sum%C3%A9.pdf; name=\"resume.pdf\""),
    ("Content-Type",
     "application/pdf; name=\"resume.pdf\"; name*0=\"r\"; name*1=\"\u00e9sum\u00e9 1.pdf\"",
     "application/pdf; name=\"resume.pdf\"; name*0*=utf-8''r;\n"
     " name*1*=%C3%A9sum%C3%A9%201.pdf"),
    ("Content-Type",
     "application/pdf; name*0=a; name*0=b; name*1=\"\u00e9\"",
     "application/pdf; name*0*=utf-8''a; name*0*=utf-8''b;\n name*1*=%C3%A9"),
    # (an extended later section with UTF-8 too: its %-escapes are read
    # in the first section's charset, RFC 2231 4.1)
    ("Content-Type",
     "application/pdf; name*0=\"r\"; name*1*=\u00e9sum\u00e9.pdf; name=\"resume.pdf\"",
     "application/pdf; name*0*=utf-8''r;\n name*1*=%C3%A9sum%C3%A9.pdf; name=\"resume.pdf\""),
    # a comment stays one, after the parameters
    ("Content-Type",
     "application/pdf; name=\"resume.pdf\" (old); name*=utf-8''r\u00e9sum\u00e9.pdf",
     "application/pdf; name=\"resume.pdf\";\n name*=utf-8''r%C3%A9sum%C3%A9.pdf (old)"),
    ("Content-Type",
     "application/pdf (pdf); name=\"resume.pdf\"; name*=utf-8''r\u00e9sum\u00e9.pdf",
     "application/pdf; name=\"resume.pdf\";\n name*=utf-8''r%C3%A9sum%C3%A9.pdf (pdf)"),
    # (empty parameters, as ";;" and a ";" at the end, are none)
    ("Content-Disposition",
     "attachment;; filename=\"x.txt\"; filename*=utf-8''\u00e9.txt;",
     "attachment; filename=\"x.txt\";\n filename*=utf-8''%C3%A9.txt"),
    # raw UTF-8 in an extended first section; an extended value with one
    # "'", no charset and language: all of it is the value
    ("Content-Type",
     "application/pdf; name*0*=utf-8''r\u00e9; name*1*=sum\u00e9.pdf; name=x",
     "application/pdf; name*0*=utf-8''r%C3%A9;\n name*1*=sum%C3%A9.pdf; name=x"),
    ("Content-Type",
     "application/pdf; name*=utf-8'\u00e9; name=x",
     "application/pdf; name*=utf-8''utf-8%27%C3%A9; name=x"),
    # a line of 76 with its ";" (RFC 2047 2)
    ("Content-Type",
     "application/pdf; name=\"x\"; b=" + "c" * 32 + "; name*=\u00e9",
     "application/pdf; name=\"x\"; b=" + "c" * 32 + ";\n name*=utf-8''%C3%A9"),
    # a first section made to say utf-8 has its blank escaped too
    ("Content-Type",
     "application/pdf; name*0=\"a b\"; name*1=\"\u00e9\"; name=x",
     "application/pdf; name*0*=utf-8''a%20b; name*1*=%C3%A9; name=x"),
    # a first section that says UTF-8 quoted, in capitals
    ("Content-Type",
     "application/pdf; name*0*=\"UTF-8''r\"; name*1=\"\u00e9\"; name=x",
     "application/pdf; name*0*=\"UTF-8''r\"; name*1*=%C3%A9; name=x"),
    # an octet under 0x10 is two hex digits too
    ("Content-Disposition",
     "attachment; filename=\"x.txt\"; filename=\"a\tb\u00e9\"",
     "attachment; filename=\"x.txt\";\n filename*=utf-8''a%09b%C3%A9"),
    # a later section's name in capitals is the first's (RFC 2045 5.1)
    ("Content-Type",
     "application/pdf; name*0=\"r\"; NAME*1=\"\u00e9\"; name=x",
     "application/pdf; name*0*=utf-8''r; NAME*1*=%C3%A9; name=x"),
    ("Content-Type",
     "application/pdf; name*0=\"r\"; Name*1*=\u00e9; name=x",
     "application/pdf; name*0*=utf-8''r; Name*1*=%C3%A9; name=x"),
    # an attribute-char (RFC 2231 7) is not escaped
    ("Content-Type",
     "application/pdf; name=x; name*=\"a`~\u00e9\"",
     "application/pdf; name=x; name*=utf-8''a`~%C3%A9"),
    # a "%" that starts no %-escape is escaped itself
    ("Content-Disposition",
     "attachment; filename=\"x.txt\"; filename*=utf-8''50%\u00fc.txt",
     "attachment; filename=\"x.txt\";\n filename*=utf-8''50%25%C3%BC.txt"),
    # "'" is no attribute-char (RFC 2231 7): escaped in an extended value
    ("Content-Disposition",
     "attachment; filename=\"l'\u00e9t\u00e9.txt\"; filename*=utf-8''l%27%C3%A9t%C3%A9.txt",
     "attachment; filename*=utf-8''l%27%C3%A9t%C3%A9.txt;\n"
     " filename*=utf-8''l%27%C3%A9t%C3%A9.txt"),
    # sections past 9
    ("Content-Type",
     "text/plain; " + "; ".join(f"name*{n}={chr(97 + n)}" for n in range(10))
     + "; name*10=\"\u00e9\"",
     "text/plain; name*0*=utf-8''a; name*1=b; name*2=c; name*3=d;\n"
     " name*4=e; name*5=f; name*6=g; name*7=h; name*8=i; name*9=j; name*10*=%C3%A9"),
])
def test_parameters_of_one_name_are_all_kept_in_their_order(field_name, value, want):
    # the stdlib's folder merges the parameters of one name into one:
    # the copy kept the first (filename="resume.pdf"), which a reader
    # that prefers filename*= showed instead of the original's résumé.pdf
    h = f"{field_name}: {value}\n".encode()
    out = downgrade_header(h)
    assert out == f"{field_name}: {want}\n".encode()
    assert rfc2231_parameters(out) == rfc2231_parameters(h)
    assert all(len(line) <= 76 for line in out.split(b"\n"))


def test_a_parameter_of_one_name_too_long_for_a_line_becomes_sections():
    # (the stdlib, handed the field, dropped the long name*= altogether)
    long = "\u65e5\u672c" * 60
    h = f"Content-Type: application/pdf; name=\"x.pdf\"; name*=utf-8''{long}; a=b\n".encode()
    out = downgrade_header(h)
    assert out.isascii() and all(len(line) <= 76 for line in out.split(b"\n"))
    found = rfc2231_parameters(out)
    assert found[0] == ("name", None, "x.pdf") and found[-1] == ("a", None, "b")
    assert [section for _, section, _ in found[1:-1]] == list(range(len(found) - 2))
    assert "".join(value for _, _, value in found[1:-1]) == long


@pytest.mark.parametrize("ascii_count, lines", [(5, 1), (6, 15)])
def test_a_parameter_of_one_name_is_cut_into_sections_only_over_998(ascii_count, lines):
    # RFC 5322 2.1.1: a line of 998 characters is one line still
    value = "a" * ascii_count + "\u00e9" * 163
    h = f"Content-Type: application/pdf; name*=utf-8''{value}; name=x\n".encode()
    out = downgrade_header(h).split(b"\n")[1:-2]
    assert len(out) == lines and max(map(len, out)) == (998 if lines == 1 else 76)


@pytest.mark.parametrize("long", [
    *("a" * shift + "\u65e5'b\u00e9\U0001f600%=" * 40 for shift in range(9)),
    "\u00e9" + "'" * 400,  # (lines of 76 exactly: " name*9*=" is shorter than " name*10*=")
])
def test_the_sections_of_a_long_parameter_are_full_lines_of_whole_characters(long):
    # RFC 2231 3: each section a line of at most 76 (RFC 2047 2), taking
    # as much as fits; a character's %-escapes (one to four octets, an
    # ASCII one too) never cut between two sections (each section's
    # escapes decode alone)
    h = f"Content-Type: application/pdf; name=\"x.pdf\"; name*=utf-8''{long}\n".encode()
    lines = downgrade_header(h).decode().split("\n")[:-1]
    sections = [line for line in lines if line.startswith(" name*")]
    assert len(sections) > 10 and len(lines) == len(sections) + 1
    texts = [line.split("=", 1)[1].rstrip(";") for line in sections]
    assert texts[0].startswith("utf-8''")
    for n, (line, text) in enumerate(zip(sections, texts)):
        assert line.startswith(f" name*{n}*=") and len(line) <= 76
        body = text.removeprefix("utf-8''") if n == 0 else text
        urllib.parse.unquote(body, "utf-8", "strict")
        assert re.fullmatch(r"(?:%[0-9A-F]{2}|[^%])+", body)
        if n + 1 < len(texts):  # the next section's first character did not fit
            first = re.match(r"%[C-F][0-9A-F](?:%[89AB][0-9A-F])*|%[0-9A-F]{2}|.", texts[n + 1])
            assert len(f" name*{n}*={text}{first.group()};") > 76
    assert "".join(urllib.parse.unquote(t.removeprefix("utf-8''")) for t in texts) == long


_PLAIN_VALUE = st.text("ab\u00e4 \u65e5%'\"\\-", min_size=1, max_size=8).map(
    lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
_EXTENDED_VALUE = st.lists(st.sampled_from(["a", "-", "\u00e4", "\u65e5", "%C3%A4", "%41"]),
                           min_size=1, max_size=6).map(lambda v: "utf-8''" + "".join(v))


@settings(max_examples=200, deadline=None)
@example(params=[("name", '"x"'), ("name*", "utf-8''" + "\u65e5" * 9)], field_name="Content-Type")
@given(params=st.lists(st.one_of(
    st.tuples(st.sampled_from(["name", "Name", "x"]), _PLAIN_VALUE),
    st.tuples(st.sampled_from(["name*", "NAME*", "x*"]), _EXTENDED_VALUE)), min_size=2, max_size=6),
    field_name=st.sampled_from(["Content-Type", "Content-Disposition"]))
def test_property_parameters_of_one_name_are_all_kept(params, field_name):
    names = [n.rstrip("*").lower() for n, _ in params]
    assume(len(set(names)) < len(names))
    h = (f"{field_name}: application/pdf; " + "; ".join(f"{n}={v}" for n, v in params)
         + "\n").encode()
    assume(not h.isascii())
    out = downgrade_header(h)
    assert out.isascii() and _unfolded_lines(out) == []
    # (a parameter longer than that has a line of its own)
    assert all(len(line) <= 76 or line.strip(b" ;").count(b";") == 0
               for line in out.split(b"\n")[1:])
    assert rfc2231_parameters(out) == rfc2231_parameters(h)


@pytest.mark.parametrize("value, filename", [
    # a later section's UTF-8 has no charset to go by in the first: the
    # stdlib joins them, each read in its own charset
    ("application/pdf; name*0*=iso-8859-1''r%E9; name*1=\"sum\u00e9.pdf\"", "r\u00e9sum\u00e9.pdf"),
    ("application/pdf; name*=a; name \u00e9", None),  # text that is no parameter
    # too long for a line, and its name has sections to mix its own with
    ("application/pdf; name*0=a; name*1=b; name*=\"" + "\u00e9" * 200 + "\"", None),
    ("appl\u00e9cation/pdf; name*=a; name=b", None),
    ("application/pdf; name=a; n\u00e4me=b; name*=\u00e9", None),  # UTF-8 in a name
    ("application/pdf; name=a; name*=utf-8'\u00e9n'x", "a"),  # UTF-8 in a language
    # a parameter over 998 as written, or a later section: no line holds it
    ("application/pdf; name=\"" + "x" * 1000 + "\"; name*=\u00e9", None),
    ("application/pdf; name*1=\"" + "\u00e9" * 200 + "\"; name*0=a", "a" + "\u00e9" * 200),
    # a later section with UTF-8, and no first to say utf-8
    ("application/pdf; name*1=\"\u00e9\"; name=x", "x\u00e9"),
    # a comment cuts a token (RFC 2045 5.1): the value is "a", as read
    ("application/pdf; name=a(b)c; name*=\u00e9", "a"),
])
def test_parameters_of_one_name_not_read_here_are_the_stdlibs(value, filename):
    out = downgrade_header(f"Content-Type: {value}\n".encode())
    assert out.isascii() and _unfolded_lines(out) == []
    assert all(len(line) <= 998 for line in out.split(b"\n"))
    sections = re.findall(rb"name\*([0-9]+)", out)
    assert len(set(sections)) == len(sections)  # (none twice)
    if re.search(rb"name\*[1-9][0-9]*\*", out):  # its escapes read by the first's charset
        assert re.search(rb"name\*0\*=[-a-z0-9]+'", out, re.IGNORECASE)
    if filename is not None:
        assert parse(out)["content-type"].params["name"] == filename


def test_received_loses_a_non_ascii_for_clause_and_keeps_the_rest():
    h = ("Received: from a.example (helo [127.0.0.1])\n\tby mail.example.org (Zoë)"
         " with ESMTPSA id 1\n\tfor <jörg@example.org>; Sun, 29 Nov 2026 20:00:00 +0000\n")
    out = downgrade_header(h.encode())
    assert out.isascii()
    text = out.decode()
    assert "for" not in text and "jörg" not in text
    assert "by mail.example.org" in text and "; Sun, 29 Nov 2026 20:00:00 +0000" in text
    assert "(=?utf-8?" in text
    # an ASCII for clause stays
    h2 = "Received: from bücher.example by x; Sun, 29 Nov 2026 20:00:00 +0000\n"
    assert "from xn--bcher-kva.example by x;" in downgrade_header(h2.encode()).decode()


def test_fields_that_are_not_utf8_are_left_alone():
    h = b"Subject: caf\xe9\nFrom: a@b\n"
    assert downgrade_header(h) == h
    assert not needs_downgrade(h)
    mixed = "Subject: café\nX-Old: caf".encode() + b"\xe9\n"
    assert downgrade_header(mixed).endswith(b"X-Old: caf\xe9\n")


def test_the_final_line_end_is_kept_or_not():
    assert downgrade_header("Subject: ä".encode()).endswith(b"?=")
    assert downgrade_header("Subject: ä\r\n".encode()).endswith(b"?=\n")


def test_a_utf8_line_that_is_no_field_cannot_be_downgraded():
    with pytest.raises(Undowngradable):
        downgrade_header("Subject: x\nGrüße\n".encode())
    with pytest.raises(Undowngradable):
        downgrade_header("Grü: x\n".encode())
    with pytest.raises(Undowngradable):
        downgrade_header("Not a name: ä\n".encode())
    # obsolete blanks before the colon (RFC 5322 4.5.8) still make a field
    assert downgrade_header("Subject : ä\n".encode()) == b"Subject: =?utf-8?q?=C3=A4?=\n"


def test_header_end():
    assert header_end(b"A: b\n\nbody") == 5
    assert header_end(b"A: b\r\n\r\nbody") == 6
    assert header_end(b"\nbody") == 0
    assert header_end(b"A: b\nC: d\n") is None


# -- properties --------------------------------------------------------------

_NAMES = st.sampled_from([
    "Subject", "Comments", "X-Note", "Content-Description", "Keywords", "Thread-Topic",
])
_TEXT = st.text(  # Unicode line breaks and C1 controls too: only the ASCII controls are out
    alphabet=st.characters(blacklist_categories=("Cs",),
                           blacklist_characters=[chr(c) for c in (*range(32), 127)]),
    min_size=1, max_size=120,
).filter(lambda t: t.strip(" \t") == t and t.strip() and "=?" not in t)  # (kept if ASCII)
_ATOM = st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=10)
_LOCAL = st.one_of(_ATOM, st.text(alphabet="äöüßжд文字abc", min_size=1, max_size=8))


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, text=_TEXT)
def test_property_unstructured_round_trip(name, text):
    out = downgrade_header(f"{name}: {text}\n".encode())
    assert out.isascii()
    if text.isascii():  # kept as it is, whatever it looks like
        assert out == f"{name}: {text}\n".encode()
        return
    msg = parse(out)
    assert not msg.defects and not msg[name].defects
    assert str(msg[name]) == text
    assert downgrade_header(out) == out


@settings(max_examples=300, deadline=None)
@given(display=_TEXT, local=_LOCAL, domain=st.sampled_from(["example.org", "bücher.example"]),
       to=st.lists(st.tuples(_TEXT, _LOCAL), max_size=3))
def test_property_address_fields_are_ascii_and_parse_without_defects(display, local, domain, to):
    def quoted(t: str) -> str:
        return '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'

    frm = f"{quoted(display)} <{local}@{domain}>"
    rcpts = ", ".join(f"{quoted(d)} <{lp}@example.org>" for d, lp in to) or "a@b.example"
    h = f"From: {frm}\nTo: {rcpts}\nSubject: {display}\n".encode()
    out = downgrade_header(h)
    assert out.isascii()
    no_defects(out)
    msg = parse(out)
    # the stdlib reads a blank between two encoded words of a phrase (and
    # keeps blanks RFC 5322 3.2.5 makes mere separators): compared without
    # blanks there, exactly with RFC 2047 6.2's reading below
    def words(t: str) -> str:
        return "".join(t.split())

    if local.isascii():
        (addr,) = msg["from"].addresses
        assert words(addr.display_name) == words(display)
        phrase = out.split(b"\nTo:")[0][len(b"From: "):].rsplit(b" <", 1)[0]
        if not display.isascii():  # (an ASCII one stays as written, quoted)
            assert rfc2047(phrase) == display  # exactly, read as RFC 2047 6.2 says
    else:
        (group,) = msg["from"].groups
        assert words(group.display_name) == words(frm) and group.addresses == ()
        phrase = out.split(b"\nTo:")[0][len(b"From: "):].rsplit(b" :;", 1)[0]
        assert rfc2047(phrase) == frm
    assert str(msg["subject"]) == display
    assert downgrade_header(out) == out  # idempotent once ASCII


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["From", "X-A", "Subject", "Received"]),
                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                  max_size=40)), max_size=6))
def test_property_identity_on_ascii(fields):
    h = "".join(f"{n}: {v}\n" for n, v in fields).encode()
    assert downgrade_header(h) == h


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["From", "To", "Cc", "Received", "Content-Type", "Message-ID",
                             "Return-Path"]),
       text=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"),
                                           max_codepoint=0x3000), min_size=1, max_size=60))
def test_property_any_utf8_field_comes_out_ascii(name, text):
    # whatever a structured field holds, its downgraded form is ASCII
    out = downgrade_header(f"{name}: {text}\n".encode())
    assert out.isascii() and out.endswith(b"\n")
    parse(out)


@pytest.mark.parametrize("brk", ["\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1e"])
def test_unstructured_text_with_a_unicode_line_break_decodes_back_exactly(brk):
    # str.splitlines cuts at these; the text must still come back whole,
    # in encoded words of at most 75 characters
    for text in (f"a{brk}b ä", f"{brk}" + "a" * 63 + "ä", f"Grüße{brk}"):
        out = downgrade_header(f"Subject: {text}\nMessage-ID: <{text}@x>\n".encode())
        assert out.isascii()
        assert all(len(w) <= 75 for w in re.findall(rb"=\?[^?]*\?[bq]\?[^?]*\?=", out))
        msg = parse(out)
        assert str(msg["subject"]) == text
        assert str(msg["downgraded-message-id"]) == f"<{text}@x>"
        no_defects(out)


def test_a_bare_cr_does_not_end_a_field():
    # only LF ends a stored line (CRLFEncoder keeps a bare CR as it is):
    # the text after a CR belongs to the same field
    out = downgrade_header("Subject: a\rGrüße\nX-Y: z\n".encode())
    assert out.isascii() and out.endswith(b"\nX-Y: z\n")
    assert out.count(b"\n") == 2 and b"\r" not in out
    assert str(parse(out)["subject"]) == "a\rGrüße"
    out = downgrade_header("From: Jörg\r <a@b.example>\n".encode())
    assert parse(out)["from"].addresses[0].addr_spec == "a@b.example"


def test_resent_message_id_is_encapsulated_like_message_id():
    # RFC 6857 registers Downgraded-Resent-Message-Id with the others: an
    # encoded word is no msg-id (RFC 5322 3.6.6)
    out = downgrade_header("Resent-Message-ID: <ä@x.example>\n".encode())
    assert out.startswith(b"Downgraded-Resent-Message-Id: =?utf-8?")
    msg = parse(out)
    assert msg["resent-message-id"] is None
    assert str(msg["downgraded-resent-message-id"]) == "<ä@x.example>"


def test_a_utf8_comment_in_content_type_stays_a_comment():
    # the stdlib folder made "text/plain =?utf-8?q?...?=; charset=..." of
    # it: no content type a parser accepts, and the charset lost
    h = 'Content-Type: text/plain (Grüße); charset="utf-8"; name="ä.txt"\n'.encode()
    out = downgrade_header(h)
    assert out.isascii()
    ct = parse(out)["content-type"]
    assert not ct.defects
    assert ct.content_type == "text/plain"
    assert ct.params == {"charset": "utf-8", "name": "ä.txt"}
    assert b"(=?utf-8?q?Gr=C3=BC=C3=9Fe?=)" in out
    out = downgrade_header('Content-Disposition: attachment (ä); filename="ü"\n'.encode())
    cd = parse(out)["content-disposition"]
    assert not cd.defects and cd.params == {"filename": "ü"}


def test_encoded_words_of_no_text_is_no_word():
    # RFC 2047 2: encoded-text is at least one character
    assert encoded_words("") == ""
    assert encoded_words("ä") == "=?utf-8?q?=C3=A4?="


@pytest.mark.parametrize("blank, encoded", [
    ("\xa0", b"(x)(=?utf-8?q?=C2=A0?=)(y)"), (" \u3000 ", b"(x) (=?utf-8?q?=E3=80=80?=) (y)"),
    ("\u2028", b"(x)(=?utf-8?q?=E2=80=A8?=)(y)")])
def test_unicode_spaces_between_comments_are_text_encoded(blank, encoded):
    # no white space to RFC 5322 (3.2.2: SP and HTAB) but text, where
    # only comments may be: kept as a comment of encoded words (never an
    # empty one, "(x)=?utf-8?q??=(y)"); the blanks around it stay blanks
    for h in (f"From: <a@example.org> (x){blank}(y)\n",
              f"From: J\u00f6rg <a@example.org> (x){blank}(y)\n"):
        out = downgrade_header(h.encode())
        assert b"?q??=" not in out
        assert out.endswith(b" <a@example.org> " + encoded + b"\n")
        no_defects(out)


@pytest.mark.parametrize("field, decoded", [
    # str.strip took NBSP, U+3000 for white space: "J\u00f6rg" was all
    ("From: \u00a0J\u00f6rg\u3000 <a@example.org>\n", "\u00a0J\u00f6rg\u3000"),
    ("To: b@example.org,\u00a0J\u00f6rg <a@example.org>\n", "\u00a0J\u00f6rg"),
    ("To: \u3000Gr\u00fcppe\u00a0: a@example.org;\n", "\u3000Gr\u00fcppe\u00a0"),
])
def test_unicode_spaces_at_the_ends_of_a_display_name_are_kept(field, decoded):
    out = downgrade_header(field.encode())
    assert out.isascii()
    assert decoded in rfc2047(out.split(b":", 1)[1])
    no_defects(out)


@pytest.mark.parametrize("value", ["multipart/mixed" + "abc" * 10 + " \u00e4",
                                   'text/plain\\"\u00fc b  ) x' + "abc" * 20 + " (; a=b"])
def test_a_content_type_the_stdlib_folds_with_an_empty_encoded_word_is_text(value):
    # the stdlib wrote "=?utf-8?q??=" for the blank before the UTF-8 of a
    # type it cannot read: no encoded word (RFC 2047 2), a reader shows it
    out = downgrade_header(f"Content-Type: {value}\n".encode())
    assert out.isascii() and b"?q??=" not in out
    assert rfc2047(out.split(b":", 1)[1]) == value


@pytest.mark.parametrize("name", ["From", "To", "Cc"])
def test_comments_alone_in_an_address_field_get_no_stray_blank(name):
    # "From:  (...)": the empty address and a blank were joined before them
    out = downgrade_header(f"{name}: (\u00e4) ()\n".encode())
    assert out == f"{name}: (=?utf-8?q?=C3=A4?=) ()\n".encode()


# the stdlib folds "text/plain(comment...)" as "text/plain" and a line
# "(comment...)" with no blank before it: a line of its own, no fold
_LONG_COMMENT_TYPE = ('Content-Type: text/plain(written by a mail program whose comment runs'
                      ' past the line); name="Grüße.txt"\n')


def _unfolded_lines(out: bytes) -> list[bytes]:
    """The lines of ``out`` (a header section) that begin no field: each
    must begin with a blank to continue the field before it."""
    return [line for line in out.split(b"\n")[1:] if line and line[:1] not in (b" ", b"\t")]


def test_a_comment_after_the_type_stays_in_its_field():
    out = downgrade_header(_LONG_COMMENT_TYPE.encode())
    assert out.isascii()
    assert _unfolded_lines(out) == []
    ct = parse(out)["content-type"]
    assert ct.content_type == "text/plain"
    assert ct.params == {"name": "Grüße.txt"}


@settings(max_examples=200, deadline=None)
@given(ctype=st.sampled_from(["text/plain", "application/octet-stream"]),
       comment=st.text("abc ;:", min_size=40, max_size=90),
       value=st.text("abcä ü", min_size=1, max_size=10))
@example(ctype="text/plain", comment="abc " * 20, value="a")
@example(ctype="text/plain", comment="a" * 70, value="a")
def test_property_a_comment_after_the_type_stays_a_comment(ctype, comment, value):
    # long ones were folded by the stdlib into a line of their own, or
    # lost their parentheses (the type became "text/plainabc")
    h = f'Content-Type: {ctype}({comment}); name="{value}ä"\n'.encode()
    out = downgrade_header(h)
    assert out.isascii()
    assert _unfolded_lines(out) == [], out
    ct = parse(out)["content-type"]
    assert ct.content_type == ctype, out
    assert ct.params == {"name": value + "ä"}


@settings(max_examples=300, deadline=None)
@given(ctype=st.sampled_from(["text/plain", "multipart/mixed", "application/octet-stream"]),
       params=st.lists(st.tuples(st.sampled_from(["name", "charset", "boundary", "x-a"]),
                                 st.text("abcä ü-", min_size=1, max_size=12)),
                       max_size=4, unique_by=lambda p: p[0]),
       comment=st.one_of(st.none(), st.text("abcä ü-", min_size=1, max_size=30)))
def test_property_content_type_keeps_its_type_and_parameters(ctype, params, comment):
    value = ctype + (f" ({comment})" if comment else "")
    value += "".join(f'; {k}="{v}"' for k, v in params)
    h = f"Content-Type: {value}\n".encode()
    if h.isascii():
        return
    want = email.message_from_bytes(h + b"\nb", policy=policy.default.clone(utf8=True))
    out = downgrade_header(h)
    assert out.isascii() and all(len(line) <= 78 for line in out.split(b"\n"))
    got = parse(out)["content-type"]
    assert not got.defects
    assert got.content_type == ctype
    assert dict(got.params) == dict(want["content-type"].params)


def test_received_keeps_a_comment_that_says_for():
    # the for clause is removed, not a "for" inside a comment
    h = "Received: from a (scanned for Grüße) by b for <jö@b>; Sun, 29 Nov 2026\n"
    out = downgrade_header(h.encode())
    assert out.startswith(b"Received: from a (=?utf-8?q?scanned_for_Gr=C3=BC=C3=9Fe?=) by b;")
    assert b"j=C3=B6" not in out


# -- encoded words a field already has (RFC 2047 5(1), 5(3)) -----------------


def reader(value: bytes) -> str:
    """What an RFC 2047 reader shows for an ASCII field body (its lines
    unfolded): encoded words decoded, the blanks between two of them
    dropped (6.2), every other character as it is."""
    parts = decode_header(value.replace(b"\n", b"").decode("ascii"))
    return "".join(p.decode(cs or "ascii") if isinstance(p, bytes) else p for p, cs in parts)


def body(out: bytes, name: bytes) -> bytes:
    """The body of the field ``name`` in the downgraded ``out``, folds kept."""
    (m,) = re.finditer(rb"(?:^|\n)" + name + rb":((?:[^\n]*)(?:\n[ \t][^\n]*)*)", out)
    return m.group(1)


def test_encoded_words_an_unstructured_field_has_are_kept():
    # encoded again, a reader would show "=?utf-8?q?Gr=C3=BC=C3=9Fe?="
    # where the original showed "Grüße"; the blank between a kept word and
    # the text after it is in the new word (6.2 drops the one between them)
    out = downgrade_header("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Köln\n".encode())
    assert out.startswith(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?q?_aus")
    assert reader(body(out, b"Subject")) == "Grüße aus Köln"
    assert str(parse(out)["subject"]) == "Grüße aus Köln"


def test_blanks_between_kept_encoded_words_stay_a_separator_only():
    # "a" and "b" joined (6.2), as a reader shows the original; the text
    # between two kept words gets a blank at each end; a "=?...?=" that is
    # no encoded word (not set off by blanks, over 75 characters) is text
    long_word = "=?utf-8?q?" + "w" * 64 + "?="
    text = ("ä =?utf-8?q?a?= \t =?ISO-8859-1?Q?b?= ö =?utf-8?b?w6k=?= "
            "=?utf-8?q?c?==?utf-8?q?d?= x=?utf-8?q?e?= " + long_word + " ")
    out = downgrade_header(f"Subject: {text}\n".encode())
    unfolded = out.replace(b"\n", b"")
    assert b" =?utf-8?q?a?= =?ISO-8859-1?Q?b?= =?utf-8?q?_=C3=B6_?= =?utf-8?b?w6k=?= " in unfolded
    assert b"=?utf-8?q?c?==?utf-8?q?d?=" not in unfolded and long_word.encode() not in unfolded
    assert reader(body(out, b"Subject")) == (
        "ä ab ö é =?utf-8?q?c?==?utf-8?q?d?= x=?utf-8?q?e?= " + long_word + " ")
    assert all(len(line) <= 76 for line in out.split(b"\n"))


def test_a_display_name_keeps_its_encoded_words():
    out = downgrade_header("From: =?utf-8?q?J=C3=B6rg?= Müller <j@example.org>\n".encode())
    assert out.startswith(b"From: =?utf-8?q?J=C3=B6rg?= =?utf-8?q?_M=C3=BCller?= <j@example.org>")
    assert reader(body(out, b"From").rsplit(b" <", 1)[0]) == "Jörg Müller"
    (addr,) = parse(out)["from"].addresses
    assert addr.addr_spec == "j@example.org" and "".join(addr.display_name.split()) == "JörgMüller"
    no_defects(out)


def test_in_a_display_name_only_a_whole_word_is_an_encoded_word():
    # RFC 2047 5(3): not inside a quoted string, not beside a quoted
    # string or comment without a blank, and a Q word with only the
    # characters a phrase allows: each of these is text, encoded
    for display, shown in (
        ('"=?utf-8?q?a?=" ä', "=?utf-8?q?a?= ä"),
        ('"ä"=?utf-8?q?a?=', "ä =?utf-8?q?a?="),
        ("=?utf-8?q?a?=(c) ä", "=?utf-8?q?a?= ä"),
        ("=?utf-8?q?a.b?= ä", "=?utf-8?q?a.b?= ä"),
    ):
        out = downgrade_header(f"To: {display} <j@example.org>\n".encode())
        phrase = body(out, b"To").split(b" (")[0].rsplit(b" <", 1)[0]
        assert reader(phrase) == shown, display
    # kept: at the ends, between quoted strings set off by blanks, as B
    out = downgrade_header('To: "ä" =?utf-8?B?w7Y=?= "ü" x =?utf-8?q?a?= <j@x.example>\n'.encode())
    assert b" =?utf-8?B?w7Y=?= " in out and b" =?utf-8?q?a?= <j@x.example>" in out
    assert reader(body(out, b"To").rsplit(b" <", 1)[0]) == "ä ö ü x a"


def test_an_encapsulated_field_keeps_no_encoded_word():
    # RFC 6857 3.1.10: decoding a Downgraded- field must give the original
    # field exactly, where a "=?...?=" was no encoded word (RFC 2047 5)
    out = downgrade_header("References: <a@b> =?utf-8?q?x?= <ö@c>\n".encode())
    assert b" =?utf-8?q?x?= " not in out
    assert reader(body(out, b"Downgraded-References")) == "<a@b> =?utf-8?q?x?= <ö@c>"


def _q_word(text: str, charset: str, phrase: bool) -> str:
    safe = _PHRASE_SAFE if phrase else _TEXT_SAFE
    enc = "".join(chr(b) if chr(b) in safe else "_" if b == 32 else f"={b:02X}"
                  for b in text.encode(charset))
    return f"=?{charset}?q?{enc}?="


_TEXT_SAFE = frozenset(map(chr, range(33, 127))) - set("=?_")  # RFC 2047 4.2
_PHRASE_SAFE = frozenset(string.ascii_letters + string.digits + "!*+-/")  # 5(3)


@st.composite
def _existing_words(draw, phrase: bool = False):
    """(an encoded word of at most 75 characters, the text it stands for)."""
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii"]))
    alphabet = {"us-ascii": "aZ0 ?=_.()\"", "iso-8859-1": "aZ0 ?=_é"}.get(charset, "aZ0 ?=_é€😀")
    text = draw(st.text(alphabet, min_size=1, max_size=12))
    if draw(st.booleans()):
        word = _q_word(text, charset, phrase)
    else:
        word = f"=?{charset}?{draw(st.sampled_from('bB'))}?" \
               f"{base64.b64encode(text.encode(charset)).decode()}?="
    assume(len(word) <= 75)
    return word, text


_BLANKS = st.text(" \t", min_size=1, max_size=3)
_PLAIN = st.text(st.sampled_from([*"aZ0?=_.,()\"<>@\\", "ä", "€", "😀", "\x85", "\u2028"]),
                 min_size=1, max_size=15).filter(lambda t: "=?" not in t)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(st.one_of(_existing_words(), _PLAIN), _BLANKS),
                      min_size=1, max_size=8),
       end=st.sampled_from(["", " ", "\t "]))
def test_property_an_unstructured_field_reads_as_the_original(items, end):
    # a reader of the downgraded field shows what one of the original
    # showed: its encoded words decoded, the blanks between two of them
    # dropped (RFC 2047 6.2), all else as it is
    value = "".join(v if isinstance(v, str) else v[0] for v, _ in items[:1])
    shown = "".join(v if isinstance(v, str) else v[1] for v, _ in items[:1])
    for (prev, blanks), (v, _) in itertools.pairwise(items):
        value += blanks + (v if isinstance(v, str) else v[0])
        if isinstance(prev, str) or isinstance(v, str):
            shown += blanks
        shown += v if isinstance(v, str) else v[1]
    value += end
    shown += end
    assume(not value.isascii())
    out = downgrade_header(f"Subject: {value}\n".encode())
    assert out.isascii()
    assert reader(body(out, b"Subject")) == shown
    assert all(len(line) <= 76 for line in out.split(b"\n"))
    for v, _ in items:
        if not isinstance(v, str):
            assert f" {v[0]}".encode() in out.replace(b"\n", b"")
    assert downgrade_header(out) == out


_ATEXT = st.text(st.sampled_from([*"aZ0!+-/=?'", "ä", "€", "😀"]), min_size=1,
                 max_size=10).filter(lambda t: "=?" not in t)


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.tuples(st.one_of(_existing_words(phrase=True), _ATEXT), _BLANKS),
                      min_size=1, max_size=6))
def test_property_a_display_name_reads_as_the_original(words):
    # a phrase's words are one blank apart (RFC 5322 3.2.2), but for two
    # encoded words, which a reader joins (RFC 2047 6.2)
    display = "".join((w if isinstance(w, str) else w[0]) + blanks for w, blanks in words)
    shown = ""
    for i, (w, _) in enumerate(words):
        if i and (isinstance(w, str) or isinstance(words[i - 1][0], str)):
            shown += " "
        shown += w if isinstance(w, str) else w[1]
    assume(not display.isascii())
    out = downgrade_header(f"From: {display}<j@example.org>\n".encode())
    assert out.isascii()
    assert reader(body(out, b"From").rsplit(b" <", 1)[0]) == shown
    assert all(len(line) <= 76 for line in out.split(b"\n"))
    (addr,) = parse(out)["from"].addresses
    assert addr.addr_spec == "j@example.org"
    # (the stdlib keeps a blank between two encoded words of a phrase)
    assert "".join(addr.display_name.split()) == "".join(shown.split())
    no_defects(out)


def _counted_quote(monkeypatch):
    """The stdlib's RFC 2231 quoting, counted: a folding that does not end
    raises instead of looping (counted calls stand in for a clock)."""
    calls = 0
    real_quote = urllib.parse.quote

    def quote(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > 20_000:
            raise RuntimeError("the parameter folding does not end")
        return real_quote(*args, **kwargs)

    monkeypatch.setattr(urllib.parse, "quote", quote)


@pytest.mark.parametrize("length", [39, 40, 66, 200, 953])
@pytest.mark.parametrize("value", ["ä", "😀" * 100, "x" * 90 + "é"], ids=["short", "emoji", "long"])
def test_a_long_parameter_name_is_folded_without_looping(monkeypatch, length, value):
    # the stdlib cut a value into RFC 2231 sections for ever when a line
    # of 76 had no room for the name and one encoded character
    _counted_quote(monkeypatch)
    name = "n" * length
    for field_name, start in (("Content-Type", "text/plain"), ("Content-Disposition", "inline")):
        out = downgrade_header(f'{field_name}: {start}; {name}="{value}"\n'.encode())
        assert out.isascii()
        assert max(len(line) for line in out.split(b"\n")) <= (76 if length <= 39 else 990)
        header = parse(out)[field_name]
        assert not header.defects and header.params[name] == value


def test_a_parameter_name_too_long_for_any_line_leaves_the_field_text(monkeypatch):
    _counted_quote(monkeypatch)
    out = downgrade_header(f'Content-Type: text/plain; {"n" * 954}="ä"\n'.encode())
    assert out.startswith(b"Content-Type: =?utf-8?q?text")
    assert max(len(line) for line in out.split(b"\n")) <= 76


def _parser_inputs(monkeypatch, parse: bool = True) -> list[str]:
    """The texts the stdlib's Content-Type and Content-Disposition parsers
    are given, recorded: what they are not given costs them no time
    (their cost grows with the square of a field's tokens).  Without
    ``parse`` a text given to them fails the test at once instead."""
    seen: list[str] = []
    for cls in (headerregistry.ContentTypeHeader, headerregistry.ContentDispositionHeader):
        real = cls.value_parser

        def parser(value, real=real):
            seen.append(value)
            if not parse:
                raise AssertionError(f"the stdlib was given {len(value)} characters to parse")
            return real(value)

        monkeypatch.setattr(cls, "value_parser", staticmethod(parser))
    return seen


@pytest.mark.parametrize("field_name", ["Content-Type", "Content-Disposition"])
def test_a_long_parameter_field_is_text_and_never_reaches_the_stdlib(monkeypatch, field_name):
    # 60,000 ";" kept the stdlib's parser busy for over a minute, on the
    # reactor thread that serves every POP3 and SMTP session
    seen = _parser_inputs(monkeypatch, parse=False)
    value = 'text/plain; name="ä"' + ";" * 60_000
    out = downgrade_header(f"{field_name}: {value}\n".encode())
    assert seen == []
    assert out.startswith(f"{field_name}: =?utf-8?q?text".encode())
    assert rfc2047(out.split(b":", 1)[1]) == value
    assert max(len(line) for line in out.split(b"\n")) <= 76


def test_a_header_section_hands_the_stdlib_a_few_parameter_fields_only(monkeypatch):
    seen = _parser_inputs(monkeypatch)
    # (each parameter a name of its own: two of one name never reach the stdlib)
    value = 'text/plain; name="ä"' + "".join(f"; a{i}=b" for i in range(190))
    out = downgrade_header(f"Content-Type: {value}\n".encode() * 10)
    assert len(seen) == 2
    fields = out.split(b"\nContent-Type:")
    assert len(fields) == 10
    assert b"name*=utf-8''%C3%A4" in fields[1] and b"name*=" not in fields[2]
    assert rfc2047(fields[9]) == value


def test_comments_nested_deep_never_reach_the_stdlib():
    # the stdlib reads a comment by recursing: 500 nested ones raised
    # RecursionError out of the downgrade (RETR failed for good); the
    # comments are kept apart from what it reads
    value = 'text/plain; name="ä" ' + "(" * 400 + ")" * 400
    out = downgrade_header(f"Content-Type: {value}\n".encode())
    assert out == ("Content-Type: text/plain; name*=utf-8''%C3%A4\n "
                   + "(" * 400 + ")" * 400 + "\n").encode()


@pytest.mark.parametrize("comment", ["(" * 500 + ")" * 500, "(" * 1000, "(" + "x" * 1000 + ")"])
def test_a_comment_with_no_blank_for_a_line_of_998_leaves_the_field_text(comment):
    # kept apart from the parameters, it was one line of 1001 or more
    # (RFC 5322 2.1.1: at most 998)
    value = 'text/plain; name="ä" ' + comment
    out = downgrade_header(f"Content-Type: {value}\n".encode())
    assert max(map(len, out.split(b"\n"))) <= 76
    assert out.startswith(b"Content-Type: =?utf-8?q?text")
    assert rfc2047(out.split(b":", 1)[1]) == value


# -- folding -----------------------------------------------------------------


def test_an_address_field_is_folded_at_a_tab_too():
    # RFC 5322 2.2.3: a fold goes before any white space
    h = "To: " + "a" * 40 + "\t" + "b" * 40 + " <a@example.org>, Jörg <j@example.org>\n"
    out = downgrade_header(h.encode())
    assert out.startswith(b"To: " + b"a" * 40 + b"\n\t" + b"b" * 40 + b" <a@example.org>,\n")
    assert all(len(line) <= 76 for line in out.split(b"\n"))


def test_a_quoted_pair_goes_whole_to_the_next_line():
    # no fold between the backslash and its blank: the fold goes before the
    # quoted string instead of leaving it on a line of 107
    quoted = '"' + "a" * 30 + "\\ " + "b" * 30 + '"'
    out = downgrade_header(f"To: Jörg <j@example.org>, {quoted} <a@example.org>\n".encode())
    assert out == ("To: =?utf-8?q?J=C3=B6rg?= <j@example.org>,\n"
                   f" {quoted}\n <a@example.org>\n").encode()
    names = [a.display_name for a in parse(out)["to"].addresses]
    assert names == ["Jörg", "a" * 30 + " " + "b" * 30]


def test_a_run_of_quoted_pairs_never_makes_a_line_over_998():
    # the run has no place to fold: on a line of its own it fits in 998,
    # after the text before it on the same line it did not (1021)
    run = '"' + "a\\ " * 320 + '"'
    h = f"To: Jörg Müller <joerg@example.org>,\n {run} <a@example.org>\n".encode()
    assert max(len(line) for line in h.split(b"\n")) <= 998
    out = downgrade_header(h)
    assert max(len(line) for line in out.split(b"\n")) <= 998
    assert f"\n {run}\n".encode() in out
    assert parse(out)["to"].addresses[1].display_name == "a " * 320


# a quoted string's content: characters and quoted-pairs, blanks among them
_QUOTED = st.lists(st.sampled_from(["a", "bb", "cccc", " ", "\t", "\\ ", "\\\t", "\\\\",
                                    '\\"', "ä", "😀"]),
                   min_size=1, max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(_QUOTED, min_size=1, max_size=4),
       blank=st.sampled_from([" ", "\t", " \t"]))
def test_property_an_address_field_is_folded_wherever_it_can_be(names, blank):
    # every line of at most 76, but one that has no blank to fold at
    # (outside a quoted-pair, after some text); the names read back
    value = f",{blank}".join(f'"{n}"{blank}<a{i}@example.org>' for i, n in enumerate(names))
    h = f"To: {value}\n".encode()
    assume(not h.isascii())
    out = downgrade_header(h)
    for line in out.rstrip(b"\n").split(b"\n"):
        if len(line) > 76:
            text = line.decode()
            assert all(escaped(text, p) or not text[:p].strip()
                       for p in range(1, len(text)) if text[p] in " \t"), line
    got = [a.display_name for a in parse(out)["to"].addresses]
    want = [re.sub(r"\\(.)", r"\1", n) for n in names]
    assert ["".join(g.split()) for g in got] == ["".join(w.split()) for w in want]


def comment_text(out: bytes, name: bytes) -> str:
    """What a reader shows inside the first comment of a downgraded field."""
    inner = body(out, name).replace(b"\n", b"").split(b"(", 1)[1].rsplit(b")", 1)[0]
    return reader(inner)


def test_a_comment_keeps_its_encoded_words():
    # RFC 2047 5(2): an encoded word may stand in a comment, set off by
    # blanks or its parentheses
    out = downgrade_header("From: j@example.org (=?utf-8?q?Zo=C3=AB?= ä)\n".encode())
    assert out == b"From: j@example.org (=?utf-8?q?Zo=C3=AB?= =?utf-8?q?_=C3=A4?=)\n"
    assert comment_text(out, b"From") == "Zoë ä"
    h = "Received: from a (ä =?ISO-8859-1?B?6Q==?=) by b; Sun, 29 Nov 2026 20:00:00 +0000\n"
    out = downgrade_header(h.encode())
    assert b" =?ISO-8859-1?B?6Q==?=) by b;" in out
    assert comment_text(out, b"Received") == "ä é"


def test_in_a_comment_an_encoded_word_is_set_off_by_blanks_or_parentheses():
    # a parenthesis a backslash quotes is text, as is a Q word with a quote
    # in its encoded text (5(2)); a nested comment's word is kept
    for comment, shown in (
        ("(x\\(=?utf-8?q?a?= ä)", "x(=?utf-8?q?a?= ä"),
        ('(=?utf-8?q?a"?= ä)', '=?utf-8?q?a"?= ä'),
        ("(ä(=?utf-8?q?b?=))", "ä(b)"),
    ):
        out = downgrade_header(f"To: a@example.org {comment}\n".encode())
        assert out.isascii()
        assert comment_text(out, b"To") == shown, comment


def group_name(out: bytes, name: bytes) -> str:
    """What a reader shows for the name of the first group in a field."""
    return reader(body(out, name).replace(b"\n", b"").split(b" :")[0])


def test_the_group_for_a_utf8_mailbox_keeps_its_display_names_encoded_words():
    # RFC 6857 3.2.1: the group is named by the mailbox as a reader showed it
    out = downgrade_header("From: =?utf-8?q?J=C3=B6rg?= <jörg@example.org>\n".encode())
    assert out.startswith(b"From: =?utf-8?q?J=C3=B6rg?= =?utf-8?q?_=3C")
    assert group_name(out, b"From") == "Jörg <jörg@example.org>"
    assert parse(out)["from"].groups[0].addresses == ()


def test_a_mailbox_moved_into_a_group_name_stays_a_word_apart():
    # a reader drops the blank between two encoded words (RFC 2047 6.2):
    # the moved text carries its own, or a word of a blank stands for it
    out = downgrade_header("Cc: Tëam: a@x.example, jörg@y.example;\n".encode())
    assert group_name(out, b"Cc") == "Tëam jörg@y.example"
    h = "Cc: Tëam: a@x.example, =?utf-8?q?J=C3=B6rg?= <jörg@y.example>, ü@x.example;\n"
    out = downgrade_header(h.encode())
    assert group_name(out, b"Cc") == "Tëam Jörg <jörg@y.example> ü@x.example"
    assert [a.addr_spec for a in parse(out)["cc"].groups[0].addresses] == ["a@x.example"]
    no_defects(out)


def test_a_comment_taken_out_after_a_blank_adds_no_second_blank():
    # "text/plain (c)x": the blank before the comment separates already
    folded = parameter_field("Content-Type", 'text/plain (c)x; title="f\u00fc"')
    assert folded == "Content-Type: text/plain x; title*=utf-8''f%C3%BC (c)"
