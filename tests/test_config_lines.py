"""The key locator behind the config's line numbers (txmailhub.config_lines)."""

from __future__ import annotations

import tomllib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.config_lines import key_lines


def located(text: str) -> dict[Any, int]:
    return key_lines(text, tomllib.loads(text))


def test_keys_tables_and_items_get_the_line_they_are_written_on() -> None:
    text = "\n".join([
        "# a comment",                        # 1
        "top = 1",                            # 2
        "a.b = 'x'  # trailing",              # 3
        "[hub]",                              # 4
        "domains = [",                        # 5
        '  "one",  # not = a key',            # 6
        '  """',                              # 7
        "k = 2",                              # 8
        '""",',                               # 9
        "  'three',",                         # 10
        "]",                                  # 11
        '"max_connections" = 5',              # 12
        'smtp . "x\\u0079" = {p = 1, q = [1,',  # 13
        " 2]}",                               # 14
        "d = 1979-05-27 07:32:00Z",           # 15
        "[[arr]]",                            # 16
        "x = 1",                              # 17
        "[[arr]]",                            # 18
        "x = '''",                            # 19
        "y = 1",                              # 20
        "'''",                                # 21
        "[ arr . sub ]",                      # 22
        "z = 3",                              # 23
        "[[arr.list]]",                       # 24
        "w = 4",                              # 25
    ]) + "\n"
    found = located(text)
    assert found == {
        ("top",): 2, ("a",): 3, ("a", "b"): 3,
        ("hub",): 4, ("hub", "domains"): 5,
        ("hub", "domains", 0): 6, ("hub", "domains", 1): 7, ("hub", "domains", 2): 10,
        ("hub", "max_connections"): 12,
        ("hub", "smtp"): 13, ("hub", "smtp", "xy"): 13, ("hub", "smtp", "xy", "p"): 13,
        ("hub", "smtp", "xy", "q"): 13, ("hub", "smtp", "xy", "q", 0): 13,
        ("hub", "smtp", "xy", "q", 1): 14,
        ("hub", "d"): 15,
        ("arr",): 16, ("arr", 0): 16, ("arr", 0, "x"): 17,
        ("arr", 1): 18, ("arr", 1, "x"): 19,
        ("arr", 1, "sub"): 22, ("arr", 1, "sub", "z"): 23,
        ("arr", 1, "list"): 24, ("arr", 1, "list", 0): 24, ("arr", 1, "list", 0, "w"): 25,
    }
    # nothing inside the strings or the comments was taken for a key
    assert ("hub", "k") not in found and ("arr", 1, "y") not in found


def test_crlf_line_ends_and_quotes_at_a_multi_line_strings_end() -> None:
    text = ('[smtp]\r\nbanner = """a\r\n""\\""""""\r\nmax_errors = 0\r\n'
            "note = '''x\r\nvrfy = 1'''''\r\nexpn = true\r\n")
    assert tomllib.loads(text)["smtp"]["max_errors"] == 0
    found = located(text)
    assert found[("smtp", "max_errors")] == 4
    assert found[("smtp", "expn")] == 7
    assert ("smtp", "vrfy") not in found


def test_text_it_does_not_follow_gives_no_line_rather_than_a_wrong_one() -> None:
    # not TOML: the loader reads no such text, and the locator claims nothing
    assert key_lines("[hub\nx = 1\n") == {}
    assert key_lines("x = 1 2\ny = 2\n") == {}
    # a path the document does not hold is dropped
    assert key_lines("x = 1\n", {"y": 1}) == {}


# -- documents made from known positions --------------------------------------

_NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,5}", fullmatch=True)
_BLANKS = st.sampled_from(["", " ", "\t", "  "])
_FILLER = st.sampled_from(["", "   ", "# a comment", "# x = 1", "\t# [hub]", "#[[a]]"])
_SCALARS = st.sampled_from([
    "1", "-5", "1_000", "0x1f", "3.5", "inf", "true", "false", '"a = b"', "'[x]'",
    '"with \\" quote # no comment"', "1979-05-27", "1979-05-27 07:32:00Z", "07:32:00",
    '""', "''"])
# lines inside a multi-line string: keys and headers to all eyes but TOML's
_INSIDE = st.sampled_from(["x = 1", "[hub]", "[[hub]]", "  y.z = 'a'", "# c", '"q" = 2', "",
                           "a = '''", '""'])


def _key_form(draw: st.DrawFn, name: str) -> str:
    form = draw(st.sampled_from(["bare", "basic", "literal", "escaped"]))
    if form == "basic":
        return f'"{name}"'
    if form == "literal":
        return f"'{name}'"
    if form == "escaped":
        return f'"\\u{ord(name[0]):04x}{name[1:]}"'
    return name


@st.composite
def _documents(draw: st.DrawFn) -> tuple[str, dict[tuple[Any, ...], int]]:
    lines: list[str] = []
    expected: dict[tuple[Any, ...], int] = {}
    names = draw(st.lists(_NAMES, min_size=1, max_size=12, unique=True))

    def filler() -> None:
        lines.extend(draw(st.lists(_FILLER, max_size=2)))

    def key_value(table: tuple[Any, ...], name: str) -> None:
        filler()
        ws = draw(_BLANKS)
        key = f"{ws}{_key_form(draw, name)}{draw(_BLANKS)}={draw(_BLANKS)}"
        kind = draw(st.sampled_from(["scalar", "ml_basic", "ml_literal", "array", "inline",
                                     "dotted"]))
        path = (*table, name)
        if kind == "scalar":
            lines.append(f"{key}{draw(_SCALARS)}{draw(st.sampled_from(['', ' # k = 1']))}")
            expected[path] = len(lines)
        elif kind in ("ml_basic", "ml_literal"):
            quote = '"""' if kind == "ml_basic" else "'''"
            inside = draw(st.lists(_INSIDE, max_size=3))
            if kind == "ml_literal":
                inside = [line.replace("'''", "") for line in inside]
            else:
                inside = [line.replace('""', "") for line in inside]
            lines.append(f"{key}{quote}")
            expected[path] = len(lines)
            lines.extend(inside)
            lines.append(quote)
        elif kind == "array":
            lines.append(f"{key}[{draw(st.sampled_from(['', ' # [x]']))}")
            expected[path] = len(lines)
            for index in range(draw(st.integers(0, 3))):
                filler()
                item = draw(st.sampled_from(
                    ["1", '"a = 1"', "[1, 2]", "{x = 1}", '"""\nb = 2\n"""']))
                lines.extend(f"  {item},".split("\n"))
                expected[(*path, index)] = len(lines) - item.count("\n")
            lines.append("]")
        elif kind == "inline":
            inner = draw(st.lists(_NAMES, max_size=3, unique=True))
            pairs = ", ".join(f"{_key_form(draw, n)} = {draw(_SCALARS)}" for n in inner)
            lines.append(f"{key}{{{pairs}}}")
            expected[path] = len(lines)
            for n in inner:
                expected[(*path, n)] = len(lines)
        else:
            sub = draw(_NAMES)
            lines.append(f"{ws}{_key_form(draw, name)}{draw(_BLANKS)}.{draw(_BLANKS)}"
                         f"{_key_form(draw, sub)} = 1")
            expected[path] = expected[(*path, sub)] = len(lines)

    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        key_value((), name)
    used = {path[0] for path in expected}
    for name in names:
        if name in used:
            continue
        header = draw(st.sampled_from(["table", "array"]))
        for index in range(1 if header == "table" else draw(st.integers(1, 2))):
            filler()
            form = f"{draw(_BLANKS)}{_key_form(draw, name)}{draw(_BLANKS)}"
            lines.append(f"{draw(_BLANKS)}[{form}]" if header == "table" else f"[[{form}]]")
            table: tuple[Any, ...] = (name,) if header == "table" else (name, index)
            expected.setdefault((name,), len(lines))
            expected[table] = len(lines)
            for key in draw(st.lists(_NAMES, max_size=3, unique=True)):
                key_value(table, key)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline])), expected


@settings(max_examples=200, deadline=None)
@given(_documents())
def test_every_key_of_a_generated_document_is_found_on_its_line(
        document: tuple[str, dict[tuple[Any, ...], int]]) -> None:
    text, expected = document
    doc = tomllib.loads(text)
    found = key_lines(text, doc)
    assert {path: found.get(path) for path in expected} == expected, text


def test_every_escape_of_a_quoted_key_is_the_character_tomllib_makes_of_it() -> None:
    # the key's name, as ``doc`` holds it: a wrong character and the path
    # is dropped as one the document does not hold
    text = '"\\b\\t\\n\\f\\r\\"\\\\\\u263a\\U0001F600" = 1\nx."\\t" = 2\n'
    name = "\b\t\n\f\r\"\\\u263a\U0001f600"
    assert tomllib.loads(text)[name] == 1
    assert located(text) == {(name,): 1, ("x",): 2, ("x", "\t"): 2}


def test_without_the_document_every_path_found_is_given() -> None:
    assert key_lines("x = 1\n[t]\ny = [\n  2,\n]\n") == {
        ("x",): 1, ("t",): 2, ("t", "y"): 3, ("t", "y", 0): 4}


def test_a_path_through_a_value_of_another_kind_is_dropped() -> None:
    # the document is what the lines are checked against: a path the
    # locator found that runs through a value of another kind, or past
    # the end of a list, names nothing there and is dropped (no error)
    assert key_lines("x.a = 1\n", {"x": ["a"]}) == {("x",): 1}
    assert key_lines("x = [1]\n", {"x": {"a": 1}}) == {("x",): 1}
    assert key_lines("x = [1, 2]\n", {"x": [1]}) == {("x",): 1, ("x", 0): 1}


def test_empty_keys_and_strings_and_quotes_at_a_strings_edges() -> None:
    text = "\n".join([
        '"" = 1',                 # 1: empty basic key
        '"\\"a" = 2',             # 2: a key that starts with an escape
        "t.'' = 3",               # 3: empty literal key
        'e = """"""',             # 4: empty multi-line strings
        "f = ''''''",             # 5
        'g = """""a"""',          # 6: starts with two quotes
        "h = '''a\\'''",          # 7: a literal one ends with a backslash
        'i = """a\\\\"""',         # 8: a basic one with an escape last
        'j = """a""""',           # 9: a quote of its own before the delimiter
        "z = 4",                  # 10
    ]) + "\n"
    doc = tomllib.loads(text)
    assert doc["g"] == '""a' and doc["h"] == doc["i"] == "a\\" and doc["j"] == 'a"'
    assert located(text) == {
        ("",): 1, ('"a',): 2, ("t",): 3, ("t", ""): 3, ("e",): 4, ("f",): 5,
        ("g",): 6, ("h",): 7, ("i",): 8, ("j",): 9, ("z",): 10}


def test_blanks_comments_and_line_ends_in_arrays_and_inline_tables() -> None:
    text = "\n".join([
        "a = [1,2]",                       # 1: no blank after a comma
        "b = [1 , 2 # c",                  # 2: blanks before a comma, a comment
        ", 3",                             # 3: and a line end
        "]",                               # 4
        "e = { }",                         # 5: an empty inline table with a blank
        "t = { p = 1 , q = 2 }",           # 6: blanks around its commas
        "u = {p = 1,q = 2}",               # 7: none after its comma
    ]) + "\n"
    tomllib.loads(text)
    assert located(text) == {
        ("a",): 1, ("a", 0): 1, ("a", 1): 1,
        ("b",): 2, ("b", 0): 2, ("b", 1): 2, ("b", 2): 3,
        ("e",): 5,
        ("t",): 6, ("t", "p"): 6, ("t", "q"): 6,
        ("u",): 7, ("u", "p"): 7, ("u", "q"): 7}
