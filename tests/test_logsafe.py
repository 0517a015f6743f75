"""txmailhub.logsafe: client text fit for one log line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txmailhub.logsafe import loggable, shown_traceback, utf8_joined


def test_examples():
    assert loggable("joe@example.org") == "joe@example.org"
    assert loggable("café") == "café"
    assert loggable(b"\xff\xfe".decode("utf-8", "surrogateescape")) == "\\xff\\xfe"
    assert loggable("eve\r\nforged line") == "eve\\x0d\\x0aforged line"
    assert loggable("bob\x1b[2J") == "bob\\x1b[2J"
    assert loggable("x" * 500) == "x" * 200


def test_an_escape_the_client_typed_cannot_pass_for_ours():
    assert loggable("a\\x1bb") == "a\\\\x1bb"  # the backslash it sent, doubled
    assert loggable("a\x1bb") == "a\\x1bb"  # the ESC it sent
    assert loggable("rtl\u202eevil") == "rtl\\u202eevil"  # not "\\x202e"
    assert loggable("\U000e0001") == "\\U000e0001"
    assert loggable("\ud800") == "\\ud800"  # a lone surrogate that is no byte


def test_a_byte_and_a_character_never_read_the_same_at_the_range_ends():
    # surrogateescape keeps the bytes 0x80..0xFF as U+DC80..U+DCFF: those,
    # and only those, are \xNN; the characters next to them are \uNNNN
    def byte(b: int) -> str:
        return bytes([b]).decode("utf-8", "surrogateescape")

    assert loggable(byte(0x80)) == "\\x80" and loggable(byte(0xFF)) == "\\xff"
    assert loggable("\u0080") == "\\u0080"  # a C1 control, not the byte 0x80
    assert loggable("\udc7f") == "\\udc7f"  # a lone surrogate, not DEL
    assert loggable("\udd00") == "\\udd00"
    assert loggable("\uffff") == "\\uffff"  # the last \u, not \U0000ffff
    # the first \U: "\u10000" would read as U+1000 and a "0"
    assert loggable("\U00010000", ascii_only=True) == "\\U00010000"


def test_ascii_only_escapes_printable_look_alikes():
    # U+2800 prints as a blank: "x\u2800as\u2800alice" would read "x as alice"
    assert loggable("x\u2800as\u2800alice", ascii_only=True) == "x\\u2800as\\u2800alice"
    # the letter, not the byte 0xE9 (which a client's non-UTF-8 would give)
    assert loggable("caf\xe9", ascii_only=True) == "caf\\u00e9"
    assert loggable(b"caf\xe9".decode("utf-8", "surrogateescape")) == "caf\\xe9"
    assert loggable("caf\xe9") == "caf\xe9"


def test_the_limit_counts_what_comes_out_and_never_cuts_an_escape():
    assert loggable("\x00" * 100, 10) == "\\x00\\x00"
    assert loggable("ab" + "\x00", 5) == "ab"
    assert len(loggable("\x1b" * 300, 100)) == 100


@given(st.text(max_size=300), st.integers(0, 120), st.booleans())
def test_any_text_stays_within_the_limit_and_printable(text, limit, ascii_only):
    out = loggable(text, limit, ascii_only=ascii_only)
    assert len(out) <= limit and out.isprintable()
    assert not ascii_only or out.isascii()


@given(st.binary(max_size=300))
def test_any_client_bytes_give_one_printable_line(raw):
    text = loggable(raw.decode("utf-8", "surrogateescape"))
    assert text.isprintable() and "\n" not in text and "\r" not in text
    text.encode("utf-8")  # no lone surrogates left: every formatter takes it


def test_log_failure_names_an_os_error_and_traces_a_bug():
    from twisted.logger import Logger, formatEvent
    from twisted.python.failure import Failure

    from txmailhub.logsafe import log_failure

    events = []
    logger = Logger(observer=events.append)
    log_failure(logger, Failure(OSError(28, "No space left on device")), "could not store {id}",
                id="M1")
    log_failure(logger, Failure(ValueError("a bug")), "could not store {id}", id="M2")
    assert formatEvent(events[0]) == "could not store M1: [Errno 28] No space left on device"
    assert "log_failure" not in events[0] and events[0]["log_level"].name == "error"
    assert formatEvent(events[1]) == "could not store M2"
    assert isinstance(events[1]["log_failure"].value, ValueError)


def test_repeat_limit_says_a_key_once_per_interval_with_the_count_held_back() -> None:
    from txmailhub.logsafe import RepeatLimit

    now = [100.0]
    limit = RepeatLimit(60, keep=10, clock=lambda: now[0])
    assert limit.due("a") == 0  # the first time: say it
    assert [limit.due("a") for _ in range(3)] == [None] * 3
    assert limit.due("b") == 0  # each key on its own
    now[0] += 59.9
    assert limit.due("a") is None
    now[0] += 0.1
    assert limit.due("a") == 4  # held back four times since
    assert limit.due("a") is None
    now[0] -= 3600  # the clock set back: said, not quiet for an hour
    assert limit.due("a") == 1


def test_repeat_limit_remembers_a_bounded_number_of_keys() -> None:
    from txmailhub.logsafe import RepeatLimit

    now = [0.0]
    limit = RepeatLimit(60, keep=3, clock=lambda: now[0])
    for key in ("a", "b", "c"):
        assert limit.due(key) == 0
    assert limit.due("a") is None  # held back: keeps its place, said first
    assert limit.due("d") == 0  # forgets "a", the one said longest ago
    assert len(limit) == 3
    assert limit.due("c") is None and limit.due("d") is None
    assert limit.due("a") == 0


def test_shown_escapes_controls_and_nothing_else():
    from txmailhub.logsafe import shown

    text = "".join(map(chr, range(0x00, 0x200)))
    out = shown(text)
    for o in range(0x200):
        c = chr(o)
        if o == 9 or 0x20 <= o < 0x7F or o >= 0xA0:
            assert c in out
        else:
            assert c not in out and f"\\x{{{o:X}}}" in out
    assert shown("550 5.1.1 caf\u00e9\t\\ \u200f") == "550 5.1.1 caf\u00e9\t\\ \u200f"
    # but for a backslash before "x{", which would read as an escape's
    assert shown("550 \\x{1B}") == "550 \\x{5C}x{1B}"
    # and every other character is left as it is: the loop above cannot
    # tell ("D" or "7" are in the escapes it expects)
    kept = "".join(chr(o) for o in range(0x200) if o == 9 or 0x20 <= o < 0x7F or o >= 0xA0)
    assert shown(kept) == kept
    assert out == "".join(c if c in kept else f"\\x{{{ord(c):X}}}" for c in text)


def test_shown_escapes_line_separators_and_bidi_overrides():
    from txmailhub.logsafe import shown

    # U+2028 splits a queue list line for str.splitlines; U+202E (RLO)
    # makes "550 user unknown" read backwards after it; the marks
    # (U+200E, U+200F) that right-to-left text needs are kept
    text = "550 a\u2028b\u2029c \u202ed\u202c \u2066e\u2069 \u200ef\u200f"
    assert shown(text) == ("550 a\\x{2028}b\\x{2029}c \\x{202E}d\\x{202C} "
                           "\\x{2066}e\\x{2069} \u200ef\u200f")
    assert len(shown(text).splitlines()) == 1


def test_quoted_escapes_what_does_not_print_as_shown_does() -> None:
    # one form for a person: a refused name was Python's repr ('\x1b'),
    # a users file line shown's \x{1B}
    from txmailhub.logsafe import quoted, shown

    assert quoted("joe") == "'joe'"
    assert quoted("jo\x1be") == "'jo\\x{1B}e'" == f"'{shown('jo' + chr(0x1B) + 'e')}'"
    assert quoted("a\u200bb\tc\nd") == "'a\\x{200B}b\\x{9}c\\x{A}d'"
    assert quoted("café") == "'café'"
    assert quoted("a\u202eb") == "'a\\x{202E}b'"
    assert quoted(5) == "5"
    assert quoted(["x\x1b"]) == "['x\\x1b']"  # not a name: its repr, still one line


def test_shown_lines_keeps_the_line_breaks_and_escapes_the_rest() -> None:
    from txmailhub.logsafe import shown_lines

    assert shown_lines("a\x1b\nb\rc") == "a\\x{1B}\nb\\x{D}c"


def test_quoted_keeps_two_names_apart_that_differ_by_a_backslash_or_a_quote() -> None:
    # a name with an ESC and one with the four characters \x{1B} printed
    # alike ('a\x{1B}b'), and one with a quote in it read as two names;
    # Python's repr, used before, told them apart
    from txmailhub.logsafe import quoted

    names = ["a\x1bb", "a\\x{1B}b", "a\\b", "a\\\\b", "it's", "it\\'s", "a' 'b", "a", "a'"]
    assert len({quoted(n) for n in names}) == len(names), [quoted(n) for n in names]
    assert quoted("a\\x{1B}b") == "'a\\\\x{1B}b'"  # the backslash doubled, as repr did
    assert quoted("it's") == "'it\\'s'"
    assert quoted("a\x1bb") == "'a\\x{1B}b'"  # unchanged


def test_shown_keeps_a_reply_with_an_escape_and_one_with_its_text_apart() -> None:
    # a reply holding the four characters \x{1B} was shown as one holding
    # an ESC: the same line for two replies.  quoted() doubles a backslash;
    # shown() keeps a reply verbatim (queue list's promise), so it escapes
    # the one backslash that would read as an escape's, before "x{", as it
    # escapes a control: \x{5C}.  Every "\x{" it writes is then an escape
    from txmailhub.logsafe import quoted, shown

    texts = ["a\x1bb", "a\\x{1B}b", "a\\\x1bb", "a\\\\x{1B}b", "a\\b", "a\\x1b", "a\\x{"]
    out = [shown(t) for t in texts]
    assert len(set(out)) == len(texts), out
    assert shown("a\\x{1B}b") == "a\\x{5C}x{1B}b"
    assert shown("a\\\x1bb") == "a\\\\x{1B}b"
    # a backslash anywhere else is the reply's own, shown as it is
    assert shown("550 DOMAIN\\user unknown \\ x") == "550 DOMAIN\\user unknown \\ x"
    for t in texts:
        assert _unshown(shown(t)) == t
    # quoted()'s output is unchanged (its backslashes are doubled already)
    assert quoted("a\\x{1B}b") == "'a\\\\x{1B}b'"


def _unshown(text: str) -> str:
    """A reader of shown()'s text: every \\x{HEX} is the character HEX."""
    import re

    return re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), text)


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as e:
        return e


def test_a_shown_traceback_escapes_each_exceptions_text_in_the_chain() -> None:
    # -v's traceback of an internal error (``sendmail``): the text of the
    # exception and of the ones chained to it may hold what was read
    try:
        try:
            raise RuntimeError("a\x1b[2Jb")
        except RuntimeError as inner:
            raise ValueError("c\nd\x9be") from inner
    except ValueError as e:
        e.add_note("note \x1b one\nnote two")
        error: BaseException = e
    text = shown_traceback(error)
    assert not any(c in text for c in "\x1b\x9b"), text
    lines = text.splitlines()
    assert "RuntimeError: a\\x{1B}[2Jb" in lines
    assert "ValueError: c\\x{A}d\\x{9B}e" in lines
    assert lines[-2:] == ["note \\x{1B} one", "note two"]
    assert "The above exception was the direct cause of the following exception:" in lines
    # the frames keep their lines, as Python prints them
    assert lines[0] == "Traceback (most recent call last):"
    assert sum(line.startswith("  File ") for line in lines) == 2


def test_a_shown_traceback_of_a_plain_exception_is_pythons() -> None:
    import traceback

    error = _raised(RuntimeError("plain text"))
    assert shown_traceback(error) == "".join(traceback.format_exception(error))


def test_a_shown_traceback_escapes_the_text_of_a_cause_alone() -> None:
    # raised "from" an exception outside any handler: a __cause__ and no
    # __context__
    inner = _raised(RuntimeError("a\nb\x1b"))
    try:
        raise ValueError("outer") from inner
    except ValueError as e:
        error: BaseException = e
    assert error.__context__ is None
    lines = shown_traceback(error).splitlines()
    assert "RuntimeError: a\\x{A}b\\x{1B}" in lines


def test_a_shown_traceback_escapes_the_text_of_a_context_alone() -> None:
    # raised while handling another, without "from": a __context__ only
    try:
        try:
            raise RuntimeError("a\nb\x1b")
        except RuntimeError:
            raise ValueError("outer")  # noqa: B904
    except ValueError as e:
        error: BaseException = e
    assert error.__cause__ is None
    lines = shown_traceback(error).splitlines()
    assert "RuntimeError: a\\x{A}b\\x{1B}" in lines



def test_a_shown_traceback_escapes_the_text_of_a_groups_members_on_one_line() -> None:
    # Python prints a member's lines behind a margin ("    | "), nested
    # groups deeper: each member's text is one line behind it, escaped
    import traceback

    member = _raised(ValueError("a\nb\x1bc"))
    member.add_note("note\x1b one\nnote two")
    nested = _raised(ExceptionGroup("inner\ngroup", [_raised(KeyError("k"))]))
    formfeed = _raised(TypeError("t\x0cu"))  # a line break to the margin's indent too
    group = _raised(ExceptionGroup("outer\ngroup", [member, nested, formfeed]))
    text = shown_traceback(group)
    assert "\x1b" not in text and "\x0c" not in text, text
    lines = text.splitlines()
    assert "  | ExceptionGroup: outer\\x{A}group (3 sub-exceptions)" in lines
    assert "    | ValueError: a\\x{A}b\\x{1B}c" in lines, text
    assert lines[lines.index("    | ValueError: a\\x{A}b\\x{1B}c") + 1:][:2] == [
        "    | note\\x{1B} one", "    | note two"]
    assert "    | ExceptionGroup: inner\\x{A}group (1 sub-exception)" in lines
    assert "      | KeyError: 'k'" in lines
    assert "    | TypeError: t\\x{C}u" in lines
    # the frames and the group's frame lines are Python's: one line more
    # for each line break in a text, nothing else changed
    python = "".join(traceback.format_exception(group)).splitlines()
    assert len(python) == len(lines) + 4
    assert [line for line in lines if "File" in line or "+--" in line] == [
        line for line in python if "File" in line or "+--" in line]


def test_a_shown_traceback_escapes_an_exception_whose_name_looks_like_a_groups_margin() -> None:
    # a class whose module name begins as a group member's margin ("| "):
    # its text outside any group is still one line, escaped
    error_type = type("E", (Exception,), {"__module__": "| m"})
    lines = shown_traceback(_raised(error_type("a\nb\x1b"))).splitlines()
    assert lines[-1] == "| m.E: a\\x{A}b\\x{1B}"


def test_a_text_cut_to_its_limit_is_marked_when_asked():
    from txmailhub.logsafe import CUT, REPLY_LOG_MAX, loggable

    reply = "550 " + "x" * 3000
    assert loggable(reply, REPLY_LOG_MAX, marked=True) == reply[:REPLY_LOG_MAX] + "..." == (
        loggable(reply, REPLY_LOG_MAX) + CUT)
    assert loggable(reply[:REPLY_LOG_MAX], REPLY_LOG_MAX, marked=True) == reply[:REPLY_LOG_MAX]
    # the limit counts what comes out: a text that fits once escaped is whole
    assert loggable("\x1b" * 4, 16, marked=True) == "\\x1b" * 4
    assert loggable("\x1b" * 5, 16, marked=True) == "\\x1b" * 4 + "..."


def test_a_list_within_the_limit_is_the_items_escaped_and_joined():
    from txmailhub.logsafe import listed

    assert listed(["a@x", "b@y"]) == "a@x, b@y"
    assert listed([]) == ""
    assert listed(["eve\r\n@x", "b\\c@y"]) == "eve\\x0d\\x0a@x, b\\\\c@y"


def test_a_long_list_keeps_whole_items_and_counts_the_rest():
    from txmailhub.logsafe import LIST_LOG_MAX, listed

    items = [f"user{i:04d}@example.org" for i in range(1000)]  # 21 characters each
    text = listed(items)
    shown, more = text.rsplit(" and ", 1)
    kept = shown.split(", ")
    assert kept == items[:len(kept)] and more == f"{1000 - len(kept)} more"
    assert len(shown) <= LIST_LOG_MAX < len(shown) + 2 + 21
    # escapes count: an item of controls takes four characters each
    text = listed(["\x01" * 300, "\x02" * 300, "c@x"], 1500)
    assert text == "\\x01" * 300 + " and 2 more"
    # the first item is there even when longer than the limit, cut, and
    # marked as cut
    assert listed(["x" * 50, "y"], 10) == "x" * 10 + "... and 1 more"
    assert listed(["x" * 50], 10) == "x" * 10 + "..."
    assert listed(["x" * 10], 10) == "x" * 10
    assert listed(["\x01" * 5], 10) == "\\x01" * 2 + "..."  # an escape is never cut


@given(st.lists(st.text(max_size=40), max_size=60), st.integers(1, 400))
def test_a_list_is_one_line_within_its_limit_plus_the_count(items, limit):
    from txmailhub.logsafe import listed

    text = listed(items, limit)
    assert "\n" not in text and "\r" not in text
    assert len(text) <= limit + len("...") + len(f" and {len(items)} more")


def test_a_list_that_fills_its_limit_exactly_is_whole():
    from txmailhub.logsafe import listed

    # escaped (a backslash, a control): the item by item path
    assert listed(["a\\b", "cd"], 8) == "a\\\\b, cd"
    assert listed(["a\\b", "cd"], 7) == "a\\\\b and 1 more"
    assert listed(["\x01", "c"], 7) == "\\x01, c"
    assert listed(["\x01", "c"], 6) == "\\x01 and 1 more"


def test_surrogates_of_utf8_octets_are_logged_as_their_characters() -> None:
    # a path Python read with an ASCII file system encoding (LC_ALL=C
    # without UTF-8 mode): its UTF-8 octets as surrogates
    path = "/srv/d\u00e9p\u00f4t".encode().decode("ascii", "surrogateescape")
    assert loggable(path) == "/srv/d\u00e9p\u00f4t"
    # octets that are not UTF-8 stay escaped, beside characters too; a
    # control character they spell is escaped as any other
    latin = b"caf\xe9 \xc3\xa9".decode("ascii", "surrogateescape")
    assert loggable(latin) == "caf\\xe9 \u00e9"
    assert loggable("\u00e9" + "\udcc2\udc85") == "\u00e9\\u0085"
    assert loggable("a\udce2\u00e9") == "a\\xe2\u00e9"


@given(st.binary(max_size=40))
def test_utf8_text_read_back_is_unchanged(octets: bytes) -> None:
    # what was decoded as UTF-8 (a client's text) is logged as before
    text = octets.decode("utf-8", "surrogateescape")
    assert utf8_joined(text) == text
