"""RFC 6856 rules without I/O: which stored messages need UTF-8 mode,
user name preparation, language ranges."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txmailhub.pop3.intl import HeaderScan, prepare_username, select_language, valid_range


def scan_whole(data: bytes) -> bool:
    scan = HeaderScan()
    scan.feed(data)
    scan.finish()
    return scan.needs_utf8


def reference(data: bytes) -> bool:
    """The header section: up to the first empty line (LF or CRLF ends a
    line); internationalized when it is UTF-8 and not all ASCII."""
    text = b"\n" + data
    ends = [i for i in (text.find(b"\n\n"), text.find(b"\n\r\n")) if i >= 0]
    header = text[1 : min(ends)] if ends else text[1:]
    if header.isascii():
        return False
    try:
        header.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_utf8_header_fields_need_utf8_mode():
    assert scan_whole("Subject: gr\u00fc\u00dfe\n\nbody\n".encode())
    assert scan_whole("From: j\u00f6rg@b\u00fccher.example\r\n\r\nbody\r\n".encode())
    assert scan_whole("Subject: \u00e9t\u00e9".encode())  # no body at all


def test_ascii_headers_latin1_headers_and_utf8_bodies_do_not():
    assert not scan_whole(b"Subject: plain\n\nbody\n")
    assert not scan_whole("Subject: plain\n\nb\u00f6dy\n".encode())
    assert not scan_whole("\nSubject: in the body\u00e9\n".encode())  # empty header section
    assert not scan_whole("\r\nSubject: in the body\u00e9\n".encode())
    # raw Latin-1: legacy mail that UTF-8 mode changes nothing about
    assert not scan_whole(b"Subject: gr\xfc\xdfe\n\nbody\n")
    assert not scan_whole("Subject: gr\u00fc\u00dfe\nX: \xff\n\n".encode("latin-1"))


def test_a_character_split_between_chunks_and_a_long_header_section():
    data = b"Subject: " + b"x" * 100 + "\u00fc".encode() + b"\n\nbody"
    cut = data.index(b"\xc3") + 1  # between the two octets of the character
    scan = HeaderScan()
    assert not scan.feed(data[:cut])
    assert scan.feed(data[cut:]) and scan.needs_utf8
    # the empty line split between chunks: LF | LF, and LF CR | LF
    for head, tail in ((b"S: a\n", b"\nbody \xff"), (b"S: a\n\r", b"\nbody \xff")):
        scan = HeaderScan()
        assert not scan.feed(head)
        assert scan.feed(tail) and not scan.needs_utf8


def test_invalid_utf8_decides_at_once():
    scan = HeaderScan()
    assert scan.feed(b"Subject: \xff and more header")  # no need to read on
    assert not scan.needs_utf8


@given(st.lists(st.sampled_from([b"a", b"\n", b"\r", b": ", "\u00fc".encode(), b"\xc3",
                                 b"\xff", "\u20ac".encode()]), max_size=40).map(b"".join),
       st.lists(st.integers(min_value=1, max_value=7), max_size=12))
def test_any_chunking_gives_the_answer_of_the_reference(data, sizes):
    scan = HeaderScan()
    pos = 0
    for size in sizes:
        if scan.feed(data[pos : pos + size]):
            break
        pos += size
    else:
        if pos < len(data):
            scan.feed(data[pos:])
    scan.finish()
    assert scan.needs_utf8 == reference(data)


def test_prepare_username():
    assert prepare_username("joe") == "joe"
    assert prepare_username("jo\u0308rg@b\u00fccher.example") == "j\u00f6rg@b\u00fccher.example"
    assert prepare_username("\u0627\u0644\u0639\u0631\u0628\u064a\u0629") is not None
    # the bidi rule per part: local part, then each domain label
    assert prepare_username("\u05d0\u05d1@example.org") == "\u05d0\u05d1@example.org"
    assert prepare_username("bob@\u05d0\u05d1.example") == "bob@\u05d0\u05d1.example"
    assert prepare_username("\u05d0\u05d1@@x") is None  # the local part ends in a neutral "@"
    for bad in ("\u05d01@example.org", "1\u05d0@example.org", "\u05d0b@x.org",
                "bob@\u05d0b.example", "bob@x.\u05d01", "\u05d0\u05d1@x@y\u05d0"):
        assert prepare_username(bad) is None, ascii(bad)
    for bad in ("jo\x00e", "joe\x7f", "a\udcff", "x\u200by", "x\u2028y", "\ufffe"):
        assert prepare_username(bad) is None, ascii(bad)


def test_the_bidi_rule_reads_a_quoted_local_part_without_its_quotes():
    # RFC 3454 6 as RFC 6856 2.2 applies it: a name with right-to-left
    # text starts and ends with it.  The quotes of USER "\u05e9\u05dc\u05d5\u05dd"
    # are address syntax (RFC 5321 4.1.2), not the name's first and last
    # characters: it is the mailbox \u05e9\u05dc\u05d5\u05dd, which RCPT and the
    # users file name so.  It was refused as an invalid user name
    from txmailhub.address import login_key

    hebrew = "\u05e9\u05dc\u05d5\u05dd"
    for name in (f'"{hebrew}"', f'"{hebrew}"@example.org', f'"\\{hebrew}"',
                 f'"{hebrew}"@\u05d0\u05d1.example', '"\u05d0@\u05d1"'):
        prepared = prepare_username(name)
        assert prepared == name, ascii(name)
    assert login_key(f'"{hebrew}"@example.org') == f"{hebrew}@example.org"
    # the content is judged as the name would be unquoted
    for bad in (f'"{hebrew}1"', f'"1{hebrew}"', f'"{hebrew}b"@example.org', f'"{hebrew}"@x.\u05d01',
                f'"{hebrew}\\""', '"\u05d0"\u05d1"'):
        assert prepare_username(bad) is None, ascii(bad)


def test_a_prepared_name_is_keyed_as_smtp_keys_the_name_given():
    # U+037E (Greek question mark) is ";" in NFC: a\u037e is keyed '"a;"'
    # (the quoted string its NFC form needs), as RCPT and SMTP AUTH key it,
    # and so is its NFC form a; (no dot-string, read quoted).  A name NFC
    # keys alike is handed on in NFC
    from txmailhub.address import login_key
    from txmailhub.smtp._parse import parse_mailbox

    for name in ("a\u037e@example.org", "J\u00f6rg\u037e@b\u00fccher.example",
                 "\u037ex@example.org"):
        prepared = prepare_username(name)
        assert prepared is not None, ascii(name)
        assert login_key(prepared) == parse_mailbox(name, "example.org", utf8=True).key, ascii(name)
    assert prepare_username("Jo\u0308rg") == "J\u00f6rg"


def test_language_ranges():
    assert [select_language(r) for r in ("en", "EN-gb", "en-a-bbb", "*", "fr", "e")] == [
        "en", "en", "en", "en", None, None]
    # RFC 2277 4.5's default language, in any case; other i- tags are not it
    assert [select_language(r) for r in ("i-default", "I-Default", "i-klingon", "i")] == [
        "en", "en", None, None]
    assert all(valid_range(r) for r in ("*", "en", "en-GB", "zh-Hant-TW", "de-1996"))
    assert not any(valid_range(r) for r in ("", "en-", "-en", "en_GB", "*-x", "abcdefghi",
                                            "en--gb", "\u00e9n"))


def test_a_sequence_cut_short_at_the_end_of_the_header_section_is_not_utf8():
    # the decoder is told the header ended: a lead octet left there is an error
    assert not scan_whole(b"Subject: \xc3\n\nbody")
    assert not scan_whole(b"Subject: \xe2\x82\r\n\r\n")


def test_the_chunk_border_right_before_a_line_end_is_no_empty_line():
    # "...a" | "\nB: ü" : the LF ends a header line, not the header section
    scan = HeaderScan()
    assert not scan.feed(b"S: a")
    assert not scan.feed("\nB: \u00fc".encode())
    scan.finish()
    assert scan.needs_utf8
    # LF CR | LF ends it: what follows is the body, UTF-8 or not
    scan = HeaderScan()
    assert not scan.feed(b"S: a\n\r")
    assert scan.feed("\nb\u00f6dy".encode()) and not scan.needs_utf8


def test_feeding_on_after_the_answer_changes_nothing():
    scan = HeaderScan()
    assert scan.feed(b"S: a\n\nbody")
    assert scan.feed("B: \u00fc\n".encode())
    scan.finish()
    assert not scan.needs_utf8


def test_more_names_saslprep_prohibits():
    for bad in ("bob smith", "bob\ufffd",  # a space; a replacement character (C.6)
                "bob\u2ff0",  # an ideographic description character (C.7)
                "\u05d0b\u05d0@example.org"):  # a left-to-right letter inside (RFC 3454 6)
        assert prepare_username(bad) is None, ascii(bad)


def test_language_range_subtags():
    assert not any(valid_range(r) for r in ("en-abcdefghi", "1en", "12"))
    assert valid_range("en-abcdefgh") and valid_range("en-12")
