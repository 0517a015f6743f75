"""Changing the aliases file (txmailhub.aliases_file): edits that leave the
rest of the file alone, check's refusals in check's words, one writer at
a time, atomic replacement."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.address import Address
from txmailhub.aliases_file import AliasesFile
from txmailhub.errors import AliasesFileError, AliasExists, BadAlias, NoSuchAlias
from txmailhub.router import alias_address, check_aliases_file, parse_aliases
from txmailhub.smtp._parse import parse_rcpt, rcpt_local

DOMAINS = ("example.org", "example.net")
USERS = {"joe@example.org", "ann@example.org"}

HAND_WRITTEN = (
    "# The aliases of example.org -- kept by hand too.\n"
    "postmaster: joe\n"
    "\n"
    "staff:  joe, ann@example.org,\n"
    "        # bob left in May\n"
    "        x@elsewhere.test\n"
    "Sales@Example.NET: ann   \n"
    "# the end\n"
)


def aliases_at(path: Path, text: str | None = None, users: set[str] | None = USERS
               ) -> AliasesFile:
    if text is not None:
        path.write_text(text)
    is_user = None if users is None else (lambda a: a.key in users)
    return AliasesFile(str(path), "example.org", DOMAINS, is_user)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "aliases"


def test_add_appends_one_line_and_leaves_the_rest_as_it_was(path: Path) -> None:
    change = aliases_at(path, HAND_WRITTEN).add("team", ["joe", "\\ann", "y@remote.test"])
    assert (change.alias, change.created, change.warnings) == ("team@example.org", True, [])
    assert path.read_text() == HAND_WRITTEN + "team: joe, \\ann, y@remote.test\n"


def test_a_file_without_a_final_line_end_or_with_crlf_keeps_its_line_ends(path: Path) -> None:
    aliases_at(path, "a: joe").add("b", ["ann"])
    assert path.read_text() == "a: joe\nb: ann\n"
    path.write_bytes(b"# dos\r\na: joe\r\n")
    aliases_at(path).add("b", ["ann"])
    assert path.read_bytes() == b"# dos\r\na: joe\r\nb: ann\r\n"
    # a last line ended by a lone CR is ended already: nothing is added to it
    path.write_bytes(b"a: joe\r")
    aliases_at(path).add("b", ["ann"])
    assert path.read_bytes() == b"a: joe\rb: ann\n"


def test_set_drops_tab_continuation_lines_and_keeps_the_lines_own_end(path: Path) -> None:
    # a continuation line may start with a tab as with a space (router's
    # format); the replaced line keeps the end it had, not the file's first
    path.write_bytes(b"# dos\r\nstaff: joe,\n\tx@elsewhere.test\nb: ann\r\n")
    aliases_at(path).set("staff", ["ann"])
    assert path.read_bytes() == b"# dos\r\nstaff: ann\nb: ann\r\n"


def test_set_leaves_the_alias_one_line_and_says_which_others_it_removed(path: Path) -> None:
    # the same name on more than one line (typed again by hand): set
    # rewrote one and left the others -- a duplicate check reports and the
    # hub ignores until the first goes, then comes into effect.  set means
    # exactly these targets: the first line is rewritten, the others go
    text = ('"a;": joe\nstaff: ann\n"a;": joe,\n  ann\n# kept\n"a;": bob\n'
            "team: joe\nteam: ann\n")
    change = aliases_at(path, text).set("a;", ["ann"])
    assert (change.alias, change.created) == ('"a;"@example.org', False)
    assert change.removed_lines == [3, 6]  # the first line of each, as the file was
    assert path.read_text() == '"a;": ann\nstaff: ann\n# kept\nteam: joe\nteam: ann\n'
    change = aliases_at(path).set("team", ["ann"])
    assert change.removed_lines == [5]
    assert path.read_text() == '"a;": ann\nstaff: ann\n# kept\nteam: ann\n'
    assert check_aliases_file(str(path), "example.org", DOMAINS) == []
    # one line: nothing else removed, nothing to say
    assert aliases_at(path).set("team", ["joe"]).removed_lines == []
    # a first line the hub cannot use is the alias's all the same: the
    # line set writes takes its place, and the one in effect goes
    change = aliases_at(path, "staff: |/usr/bin/procmail\nb: ann\nstaff: joe\n").set(
        "staff", ["ann"])
    assert (change.created, change.removed_lines) == (False, [3])
    assert path.read_text() == "staff: ann\nb: ann\n"


def test_a_line_without_a_colon_is_no_alias_of_that_name(path: Path) -> None:
    # "staff" alone is a line the hub cannot read (check names it), not
    # an alias staff that add would refuse or set replace
    change = aliases_at(path, "staff\nb: ann\n").add("staff", ["joe"])
    assert change.created
    assert path.read_text() == "staff\nb: ann\nstaff: joe\n"


def test_set_rewrites_the_alias_lines_only_and_keeps_the_name_as_written(path: Path) -> None:
    change = aliases_at(path, HAND_WRITTEN).set("STAFF", ["ann"])
    assert (change.alias, change.created) == ("staff@example.org", False)
    # its continuation lines go; the comment among them stays where it was
    assert path.read_text() == HAND_WRITTEN.replace(
        "staff:  joe, ann@example.org,\n        # bob left in May\n        x@elsewhere.test\n",
        "staff: ann\n        # bob left in May\n")
    assert parse_aliases(path.read_text(), "example.org", DOMAINS)[0][
        "staff@example.org"] == ((Address("ann", "example.org"), True),)
    change = aliases_at(path).set("sales@example.net", ["joe"])
    assert "Sales@Example.NET: joe\n" in path.read_text()
    # set on a name that is not there makes it
    change = aliases_at(path).set("new", ["joe"])
    assert change.created and path.read_text().endswith("# the end\nnew: joe\n")


def test_a_line_the_hub_cannot_use_is_there_for_add_and_replaced_by_set(path: Path) -> None:
    aliases = aliases_at(path, "# x\nstaff: |/usr/bin/procmail\n")
    with pytest.raises(AliasExists, match=r"\(a line the hub cannot use\)"):
        aliases.add("staff", ["joe"])
    aliases.set("staff", ["joe"])
    assert path.read_text() == "# x\nstaff: joe\n"


def test_remove_takes_every_line_of_the_alias_and_nothing_else(path: Path) -> None:
    text = HAND_WRITTEN + "staff: ann\n"  # an ignored duplicate: it must not come into effect
    aliases_at(path, text).remove("staff")
    assert path.read_text() == (
        "# The aliases of example.org -- kept by hand too.\n"
        "postmaster: joe\n"
        "\n"
        "        # bob left in May\n"
        "Sales@Example.NET: ann   \n"
        "# the end\n")
    with pytest.raises(NoSuchAlias, match=r"no such alias: staff@example\.org"):
        aliases_at(path).remove("staff")


def test_a_quoted_name_with_a_colon_is_the_alias_the_hub_reads(path: Path) -> None:
    # '"a:b": joe' is the alias "a:b" (aliases(5) quotes such a name),
    # as the hub reads it: remove finds it, where the name was taken to
    # end at the colon inside the quotes
    aliases_at(path, '"a:b": joe\nteam: ann\n').remove('"a:b"')
    assert path.read_text() == "team: ann\n"


def test_a_colon_or_a_comma_in_quotes_can_be_written(path: Path) -> None:
    # the file reads them so ('"a:b": joe', '"x,y"@remote.test'): a name
    # or a target holding one in quotes is no line the file cannot hold
    aliases_at(path, "").add('"a:b"', ['"x,y"@remote.test', "joe"])
    assert path.read_text() == '"a:b": "x,y"@remote.test, joe\n'
    assert check_aliases_file(str(path), "example.org", DOMAINS) == []


def test_a_quoted_name_with_a_needless_backslash_is_the_alias_rcpt_reaches(path: Path) -> None:
    # '"a\\:b"' is the local part "a:b" (RFC 5321 4.1.2), which RCPT
    # gives in either spelling: the alias added was keyed "a\\:b", which
    # no RCPT names; it is "a:b", and remove finds it by either spelling
    change = aliases_at(path, "").add('"a\\:b"', ["joe"])
    assert change.alias == '"a:b"@example.org'
    assert parse_aliases(path.read_text(), "example.org", DOMAINS)[0] == {
        '"a:b"@example.org': ((Address("joe", "example.org"), True),)}
    assert aliases_at(path).remove('"a:b"').alias == '"a:b"@example.org'
    assert path.read_text() == ""


def test_a_name_that_starts_with_a_hash_is_written_quoted(path: Path) -> None:
    # '"#a"' is the local part #a (RFC 5321 4.1.2: a dot-string), which
    # RCPT gives unquoted; but a line '#a: joe' is a comment.  Quoted, the
    # file reads it as #a: add wrote nothing and failed with a traceback
    change = aliases_at(path, "x: joe\n").add('"#a"', ["joe"])
    assert (change.alias, change.created) == ("#a@example.org", True)
    assert path.read_text() == 'x: joe\n"#a": joe\n'
    table, problems = parse_aliases(path.read_text(), "example.org", DOMAINS)
    assert problems == [] and set(table) == {"x@example.org", "#a@example.org"}
    assert parse_rcpt("TO:<#a@example.org>", "example.org")[0].key == change.alias
    assert aliases_at(path).set('"#a"', ["ann"]).alias == "#a@example.org"
    assert path.read_text() == 'x: joe\n"#a": ann\n'
    # typed unquoted, the refusal says how to write it
    with pytest.raises(BadAlias, match="a line that starts with # is a comment: write the "
                                       'name quoted, "#a"'):
        aliases_at(path).add("#a", ["joe"])
    with pytest.raises(BadAlias, match=r'write the name quoted, "#a"@example\.net'):
        aliases_at(path).add("#a@example.net", ["joe"])
    assert aliases_at(path).remove("#a").alias == "#a@example.org"
    assert path.read_text() == "x: joe\n"


@pytest.mark.parametrize(("typed", "written", "alias"), [
    ('#a\\b', '"#a\\\\b"', '"#a\\\\b"@example.org'),
    ('#a"b', '"#a\\"b"', '"#a\\"b"@example.org'),
    ('#a\\"b@example.net', '"#a\\\\\\"b"@example.net', '"#a\\\\\\"b"@example.net'),
    ("#a@b@example.org", '"#a@b"@example.org', '"#a@b"@example.org'),
])
def test_the_quoted_name_a_hash_refusal_gives_is_the_name_typed(
        path: Path, typed: str, written: str, alias: str) -> None:
    # the refusal of a name that starts with '#' writes it quoted (RFC
    # 5321 4.1.2: a backslash and a quote escaped in a quoted string, the
    # domain after the last '@'): added as it says, the alias is the
    # name typed
    with pytest.raises(BadAlias) as refused:
        aliases_at(path, "").add(typed, ["joe"])
    assert str(refused.value).endswith(f"write the name quoted, {written}")
    assert aliases_at(path).add(written, ["joe"]).alias == alias
    assert path.read_text() == f"{written}: joe\n"


# the file's own syntax, in and out of quotes: names and targets that
# quote, escape, hold a ':' or ',' or parentheses or a '#' (a comment at
# the start of a line), or are only quotes;
# and UTF-8 that NFC or lower case makes another spelling of one name (a
# decomposed umlaut, the Greek question mark that is ';' in NFC, a capital)
_QUOTED = st.lists(st.one_of(st.sampled_from(list("ab:,()@.;# \u0308\u00f6\u037eK")),
                             st.sampled_from(['\\"', "\\\\", "\\:", "\\a", "\\("])),
                   max_size=6).map(lambda parts: '"' + "".join(parts) + '"')
_NAMES = st.one_of(st.text(alphabet="ab:,().;#\u0308\u00f6\u037eK", min_size=1, max_size=6),
                   _QUOTED)
_TARGETS = st.one_of(st.text(alphabet='ab"\\:,()@ .', min_size=1, max_size=8), _NAMES,
                     _NAMES.map(lambda name: name + "@remote.test"),
                     _NAMES.map(lambda name: "\\" + name))


@settings(max_examples=300)
@given(name=_NAMES, targets=st.lists(_TARGETS, min_size=1, max_size=3))
def test_what_alias_add_writes_the_file_reads_back_and_rcpt_reaches(
        name: str, targets: list[str]) -> None:
    # whatever add takes, the file reads back as that alias with those
    # targets, without a problem; RCPT naming the alias as the hub keys it
    # finds it; set changes nothing and remove leaves the file as it was
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aliases"
        aliases = aliases_at(path, "x: joe\n", users=None)
        try:
            change = aliases.add(name, targets)
        except (BadAlias, AliasesFileError):
            return
        text = path.read_text()
        table, problems = parse_aliases(text, "example.org", DOMAINS)
        assert problems == []
        given_ = [t.strip() for t in targets if t.strip()]
        assert set(table[change.alias]) == {
            (alias_address(aliases.rcpt_form(t.lstrip("\\"), local_only=True), "example.org",
                           local_domains=set(DOMAINS)),
             not t.startswith("\\")) for t in given_}
        local, _, domain = change.alias.rpartition("@")
        path_given = local if local.startswith('"') else rcpt_local(local)
        assert parse_rcpt(f"TO:<{path_given}@{domain}>", "example.org",
                          utf8=True)[0].key == change.alias
        aliases.set(name, targets)
        assert path.read_text() == text
        aliases.remove(name)
        assert path.read_text() == "x: joe\n"


def test_a_form_feed_ends_no_line_of_the_file(path: Path) -> None:
    # 'a: joe<FF>b: ann' is one line to the hub, as to an editor: no
    # alias b is there to refuse adding (it was, read as two lines)
    change = aliases_at(path, "a: joe, ann\x0cb: ann\n").add("b", ["joe"])
    assert change.created
    assert path.read_text() == "a: joe, ann\x0cb: ann\nb: joe\n"


def test_an_alias_whose_name_has_a_control_character_can_still_be_removed(path: Path) -> None:
    # a line written before ESC, DEL and the C1 controls were refused in
    # names: check names it as a bad alias, and `alias remove` takes it
    # away (there is no other way but an editor); it cannot be set again
    for name in ("post\x7fmaster", "a\x1bb", "c\x9bd@example.net"):
        aliases = aliases_at(path, f"{name}: joe\nstaff: ann\n")
        for put in (aliases.add, aliases.set):
            with pytest.raises(BadAlias, match="control characters"):
                put(name, ["ann"])
        change = aliases.remove(name)
        assert change.alias == parse_address_key(name)
        assert path.read_text() == "staff: ann\n"
        with pytest.raises(NoSuchAlias):
            aliases.remove(name)


def parse_address_key(name: str) -> str:
    local, _, domain = name.rpartition("@") if "@" in name else (name, "", "example.org")
    return f"{local.lower()}@{domain}"


def test_add_refuses_a_name_that_is_there(path: Path) -> None:
    with pytest.raises(AliasExists) as info:
        aliases_at(path, HAND_WRITTEN).add("sales@EXAMPLE.net", ["joe"])
    assert str(info.value) == (f"{path}:7: the alias sales@example.net is already there: "
                               "`mailhub alias set` replaces its targets")
    assert path.read_text() == HAND_WRITTEN


def test_add_and_set_find_the_name_an_older_add_wrote_unquoted(path: Path) -> None:
    # an older `alias add 'a;'` wrote `a;: joe`.  RCPT gives that name only
    # quoted (no dot-string, RFC 5321 4.1.2), and the file reads it so:
    # it is the alias "a;", which mail reaches; add says it is there, and
    # set replaces its targets, leaving one line for the alias
    text = "staff: joe\na;: joe\n  , ann\npostmaster: joe\n"
    assert [str(t) for t, _ in aliases_at(path, text).read()['"a;"@example.org']] == [
        "joe@example.org", "ann@example.org"]
    for typed in ("a;", '"a;"'):
        with pytest.raises(AliasExists) as info:
            aliases_at(path, text).add(typed, ["ann"])
        assert str(info.value) == (
            f'{path}:2: the alias "a;"@example.org is already there: '
            "`mailhub alias set` replaces its targets")
        assert path.read_text() == text
    change = aliases_at(path, text).set("a;", ["ann"])
    assert (change.alias, change.created) == ('"a;"@example.org', False)
    assert path.read_text() == "staff: joe\na;: ann\npostmaster: joe\n"
    # the quoted line there too: one alias written twice, the first in
    # effect; set replaces it and drops the other
    aliases_at(path, 'a;: joe\n"a;": ann\n').set("a;", ["joe"])
    assert path.read_text() == "a;: joe\n"


def test_remove_takes_both_spellings_of_a_name_smtp_gives_only_quoted(path: Path) -> None:
    # `a;: joe` (an older add) beside `"a;": ann`: one alias, written
    # twice; remove leaves none, however typed
    text = 'staff: joe\na;: joe\n  , ann\n"a;": ann\npostmaster: joe\n'
    for typed in ("a;", '"a;"', "A;"):
        change = aliases_at(path, text).remove(typed)
        assert change.alias == '"a;"@example.org'
        assert path.read_text() == "staff: joe\npostmaster: joe\n"
    # one spelling alone: the same alias
    assert aliases_at(path, "a;: joe\nb: ann\n").remove("a;").alias == '"a;"@example.org'
    assert path.read_text() == "b: ann\n"
    assert aliases_at(path, '"a;": joe\nb: ann\n').remove("a;").alias == '"a;"@example.org'
    assert path.read_text() == "b: ann\n"


@pytest.mark.parametrize(("name", "targets"), [
    ("bad name", ["joe"]),                        # no address
    ("x@elsewhere.test", ["joe"]),                # not a local domain
    ("pipe", ["|/usr/bin/procmail"]),             # a program
    ("file", ["/var/mail/joe"]),                  # a file
    ("inc", [":include:/etc/list"]),              # an include
    ("far", ["a@" + "x" * 64 + ".test"]),         # no name DNS can have
    ("fake", ["b@xn--zz.test"]),                  # a domain SMTP refuses (501)
    ("mixed", ["joe", "c@a..test"]),              # one bad target among good ones
])
def test_a_bad_name_or_target_is_refused_with_checks_own_words(
        path: Path, name: str, targets: list[str]) -> None:
    with pytest.raises(BadAlias) as info:
        aliases_at(path, HAND_WRITTEN).add(name, targets)
    assert path.read_text() == HAND_WRITTEN
    # what check says of the same line written by hand, the line that
    # is not in the file yet named as such (not by a number it lacks)
    path.write_text(HAND_WRITTEN + f"{name}: {', '.join(targets)}\n")
    new_line = len(HAND_WRITTEN.splitlines()) + 1
    assert info.value.problems == [
        p.replace(f"{path}:{new_line}: ", f"{path} (new line): ")
        for p in check_aliases_file(str(path), "example.org", DOMAINS)]
    assert all(p.startswith(f"{path} (new line): ") for p in info.value.problems)


def test_set_names_the_line_it_replaces_in_checks_words(path: Path) -> None:
    with pytest.raises(BadAlias) as info:
        aliases_at(path, HAND_WRITTEN).set("staff", ["|/usr/bin/procmail"])
    assert path.read_text() == HAND_WRITTEN
    assert info.value.problems[0] == (
        f"{path}:4: target '|/usr/bin/procmail' of 'staff': delivery to programs is "
        "not supported")


@pytest.mark.parametrize(("name", "targets", "why"), [
    ("", ["joe"], "the alias name is empty"),
    ("#x", ["joe"], "a line that starts with # is a comment"),
    ("a:b", ["joe"], "ends a name at its first ':'"),
    ("a", ["joe\nevil: x@remote.test"], "a line break cannot be part"),
    ("a\rb", ["joe"], "a line break cannot be part"),
    # a form feed or U+2028 ends no line of the file (white space in a
    # line): refused as check reads the line, not as a line break
    ("a\u2028b", ["joe"], r"bad alias name: address 'a\\x\{2028\}b' contains whitespace"),
    ("a", ["joe\x0cann"], r"bad target 'joe\\x\{C\}ann' of 'a': address 'joe\\x\{C\}ann' "
                          "contains whitespace"),
    ("a", ["joe, ann"], "separates targets with ','"),
    ("a", [" "], "no target given"),
])
def test_what_no_line_of_the_file_can_say_is_refused(path: Path, name: str,
                                                     targets: list[str], why: str) -> None:
    with pytest.raises(BadAlias, match=why):
        aliases_at(path, HAND_WRITTEN).add(name, targets)
    assert path.read_text() == HAND_WRITTEN


def test_a_new_loop_is_refused_in_checks_words_an_old_one_blocks_nothing(path: Path) -> None:
    aliases = aliases_at(path, "a: b, joe\nb: ann\n")
    with pytest.raises(AliasesFileError) as info:
        aliases.set("b", ["a"])
    assert str(info.value).splitlines()[0] == (
        f"{path}:1: alias loop: a@example.org -> b@example.org -> a@example.org "
        "(it is cut at runtime; the other alias is on line 2)")
    assert path.read_text() == "a: b, joe\nb: ann\n"
    path.write_text("a: b, joe\nb: a\n")  # made by hand
    assert check_aliases_file(str(path), "example.org", DOMAINS) == [
        f"{path}:1: alias loop: a@example.org -> b@example.org -> a@example.org "
        "(it is cut at runtime; the other alias is on line 2)"]
    aliases.add("c", ["joe"])  # the file's own loop is no reason to refuse this
    aliases.set("b", ["ann"])  # nor one that cures it
    assert path.read_text() == "a: b, joe\nb: ann\nc: joe\n"
    aliases.add("self", ["self", "ann"])  # naming itself is its own mailbox: no loop


def test_an_alias_that_would_take_a_users_mail_is_refused(path: Path) -> None:
    aliases = aliases_at(path, "")
    with pytest.raises(AliasesFileError) as info:
        aliases.add("joe", ["ann"])
    # check's warning, and what to do
    assert str(info.value).startswith(
        f"{path}: alias joe@example.org has the name of a user: the alias comes first, so that "
        "user's mailbox gets none of its mail (add \\joe@example.org to its targets to keep "
        "a copy there); not changed")
    assert path.read_text() == ""
    aliases.add("joe", ["\\joe", "x@remote.test"])  # keeps the user's copy
    with pytest.raises(AliasesFileError):
        aliases.set("joe", ["ann"])
    aliases.add("postmaster", ["ann"])  # check does not warn of it either
    # without a users file nothing can be told of users, as for check:
    # no refusal and no warning of a target that is no user
    change = aliases_at(path, users=None).add("ann", ["joe", "nobody"])
    assert (change.created, change.warnings) == (True, [])


def test_an_old_alias_that_hides_a_user_blocks_no_change_to_another(path: Path) -> None:
    # joe: typed by hand; check warned of it before, so a change to
    # another alias neither is refused for it nor repeats it
    change = aliases_at(path, "joe: ann\n").add("team", ["ann"])
    assert (change.created, change.warnings) == (True, [])
    assert path.read_text() == "joe: ann\nteam: ann\n"


def test_set_refuses_an_alias_that_takes_a_users_mail_even_if_it_did_before(
        path: Path) -> None:
    # an alias named joe, typed by hand (or made before the user was)
    aliases = aliases_at(path, "joe: ann\npostmaster: ann\n",
                         users=USERS | {"postmaster@example.org"})
    with pytest.raises(AliasesFileError, match=(
            r"alias joe@example\.org has the name of a user.*; not changed")):
        aliases.set("joe", ["ann", "x@remote.test"])
    assert path.read_text() == "joe: ann\npostmaster: ann\n"
    aliases.set("joe", ["\\joe", "ann"])  # the user keeps a copy: fine
    aliases.set("postmaster", ["joe"])  # postmaster excepted, as for check and add
    assert path.read_text() == "joe: \\joe, ann\npostmaster: joe\n"
    aliases.remove("joe")


def test_checks_new_warnings_are_returned_and_the_change_made(path: Path) -> None:
    aliases = aliases_at(path, "team: joe, helpers\nhelpers: ann\nold: ghost\n")
    change = aliases.add("new", ["joe", "nobody"])
    assert change.warnings == [
        f"{path}:4: alias new@example.org names nobody@example.org, which is no local user: "
        "the hub skips it"]  # not old's ghost: check said that before
    change = aliases.remove("helpers")
    assert change.warnings == [
        f"{path}:1: alias team@example.org names helpers@example.org, which is no local user: "
        "the hub skips it"]


def test_a_byte_order_mark_first_is_kept_and_no_part_of_the_first_name(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbfa: joe\r\nb: ann\r\n")
    aliases = aliases_at(path)
    assert sorted(aliases.read()) == ["a@example.org", "b@example.org"]
    # the first alias is found (set replaces it, add refuses it), and the
    # mark stays where it was
    with pytest.raises(AliasExists):
        aliases.add("a", ["ann"])
    assert not aliases.set("a", ["ann"]).created
    assert path.read_bytes() == b"\xef\xbb\xbfa: ann\r\nb: ann\r\n"
    aliases.add("c", ["joe"])
    assert path.read_bytes() == b"\xef\xbb\xbfa: ann\r\nb: ann\r\nc: joe\r\n"
    aliases.remove("a")  # the first line goes, the mark does not
    assert path.read_bytes() == b"\xef\xbb\xbfb: ann\r\nc: joe\r\n"
    # none is added to a file without one
    path.write_text("a: joe\n")
    aliases.set("a", ["ann"])
    assert path.read_bytes() == b"a: ann\n"


def test_a_file_that_is_not_utf8_is_not_touched(path: Path) -> None:
    path.write_bytes(b"a: jo\xe9\n")
    with pytest.raises(AliasesFileError, match="is not UTF-8 text"):
        aliases_at(path).add("b", ["joe"])
    assert path.read_bytes() == b"a: jo\xe9\n"


def test_a_file_that_is_not_utf8_is_refused_at_the_line_check_names(path: Path) -> None:
    # the octet and its line, as check says it: the line to open
    path.write_bytes(b"a: joe\r\n# x\nb: jo\xe9\n")
    with pytest.raises(AliasesFileError) as info:
        aliases_at(path).add("c", ["joe"])
    assert str(info.value) == (
        f"{path}:3: [aliases] file is not UTF-8 text (invalid continuation byte at octet 17): "
        "fix it first (mailhub check), the hub does not read it")
    assert check_aliases_file(str(path), "example.org", DOMAINS) == [
        f"{path}:3: [aliases] file is not UTF-8 text (invalid continuation byte at octet 17)"]


def test_a_loop_through_the_line_to_be_added_names_it_as_the_new_line(path: Path) -> None:
    aliases = aliases_at(path, "# team\na: b, joe\n")
    with pytest.raises(AliasesFileError) as info:
        aliases.add("b", ["a"])
    assert str(info.value).splitlines()[0] == (
        f"{path}:2: alias loop: a@example.org -> b@example.org -> a@example.org "
        "(it is cut at runtime; the other alias is on the new line)")
    assert path.read_text() == "# team\na: b, joe\n"


def test_the_file_is_replaced_atomically_keeping_its_mode(path: Path) -> None:
    aliases = aliases_at(path, HAND_WRITTEN)
    os.chmod(path, 0o640)
    before = os.stat(path).st_ino
    old_umask = os.umask(0o077)
    try:
        aliases.add("team", ["joe"])
    finally:
        os.umask(old_umask)
    st = os.stat(path)
    assert st.st_ino != before  # a new file renamed over the old one, not a rewrite in place
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert sorted(os.listdir(path.parent)) == ["aliases", "aliases.lock"]
    # one made anew is readable by all, as /etc/aliases (under the usual
    # umask: the umask still applies to a new file, as durable_write says)
    path.unlink()
    old_umask = os.umask(0o022)
    try:
        aliases.add("team", ["joe"])
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_a_failed_write_leaves_the_file_as_it_was(path: Path, monkeypatch) -> None:
    aliases = aliases_at(path, HAND_WRITTEN)

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        aliases.add("team", ["joe"])
    monkeypatch.undo()
    assert path.read_text() == HAND_WRITTEN
    assert sorted(os.listdir(path.parent)) == ["aliases", "aliases.lock"]


def test_a_link_to_the_file_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "etc-aliases"
    real.write_text("a: joe\n")
    link = tmp_path / "aliases"
    link.symlink_to(real)
    aliases_at(link).add("b", ["ann"])
    assert link.is_symlink() and real.read_text() == "a: joe\nb: ann\n"
    # a relative link that goes up a folder leads where the system's does
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "aliases").symlink_to("../etc-aliases")
    aliases_at(tmp_path / "conf" / "aliases").add("c", ["joe"])
    assert real.read_text() == "a: joe\nb: ann\nc: joe\n"


def test_the_lock_is_next_to_the_configured_path_not_the_links_target(
        tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "conf").mkdir()
    real = tmp_path / "etc" / "aliases"
    real.write_text("a: joe\n")
    link = tmp_path / "conf" / "aliases"
    link.symlink_to(real)
    aliases_at(link).add("b", ["ann"])
    assert real.read_text() == "a: joe\nb: ann\n"
    assert sorted(os.listdir(tmp_path / "conf")) == ["aliases", "aliases.lock"]
    assert sorted(os.listdir(tmp_path / "etc")) == ["aliases"]


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a folder another user's")
def test_a_lock_made_before_the_file_is_the_folder_owners(tmp_path: Path) -> None:
    # root's first `mailhub alias add` in the hub's folder: the hub's user
    # can take the lock for the next command, as for users.lock
    folder = tmp_path / "users.d"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    aliases_at(folder / "aliases").add("b", ["ann"])
    for name in ("aliases", "aliases.lock"):
        st = os.stat(folder / name)
        assert (st.st_uid, st.st_gid) == (65534, 65534), name


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a folder another user's")
def test_a_link_in_a_folder_another_user_may_change_is_not_followed(tmp_path: Path) -> None:
    # root's file, and the hub's folder (users.d) with a link to it: the
    # hub's user put it there, root runs `mailhub alias add`
    victim = tmp_path / "sudoers"
    victim.write_text("root ALL=(ALL) ALL\n")
    os.chmod(victim, 0o440)
    before = os.stat(victim)
    hubs = tmp_path / "users.d"
    hubs.mkdir()
    os.chown(hubs, 65534, 65534)
    (hubs / "aliases").symlink_to(victim)
    # and a link in root's folder that leads to that one
    (tmp_path / "aliases").symlink_to(hubs / "aliases")
    for link in (hubs / "aliases", tmp_path / "aliases"):
        with pytest.raises(AliasesFileError, match=(
                rf"^{hubs / 'aliases'} is a symbolic link in {hubs}, a folder of .*uid 65534.*'s: "
                "not followed")):
            aliases_at(link).add("b", ["ann"])
    assert victim.read_text() == "root ALL=(ALL) ALL\n"
    after = os.stat(victim)
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (
        before.st_ino, before.st_mtime_ns, before.st_mode)
    assert sorted(os.listdir(hubs)) == ["aliases"]  # no lock made there either
    assert sorted(os.listdir(tmp_path)) == ["aliases", "sudoers", "users.d"]
    # a folder others may write: the same, unless it is sticky and the link ours
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "aliases").symlink_to(victim)
    with pytest.raises(AliasesFileError, match="a folder other users may write: not followed"):
        aliases_at(shared / "aliases").add("b", ["ann"])
    assert victim.read_text() == "root ALL=(ALL) ALL\n"
    # root's folder that a group may write: the group's users could too
    os.chmod(shared, 0o775)
    with pytest.raises(AliasesFileError, match="a folder other users may write: not followed"):
        aliases_at(shared / "aliases").add("b", ["ann"])
    os.chmod(shared, 0o1777)  # /tmp's mode: nobody else can replace root's link
    # ... but a link there of another user's is that user's to point anywhere
    os.lchown(shared / "aliases", 65534, 65534)
    with pytest.raises(AliasesFileError, match="a folder other users may write: not followed"):
        aliases_at(shared / "aliases").add("b", ["ann"])
    assert victim.read_text() == "root ALL=(ALL) ALL\n"
    os.lchown(shared / "aliases", 0, 0)
    os.chmod(victim, 0o640)
    aliases_at(shared / "aliases").add("b", ["ann"])
    assert victim.read_text() == "root ALL=(ALL) ALL\nb: ann\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a folder another user's")
def test_a_folder_link_on_the_way_in_a_folder_another_user_may_change_is_not_followed(
        tmp_path: Path) -> None:
    # root's link to the hub's folder users.d/conf/aliases, whose conf the
    # hub's user replaced with a link to a folder of root's: the link on
    # the way was followed unjudged, and root's alias add rewrote root's
    # file of that name there
    secret = tmp_path / "secret"
    secret.mkdir()
    victim = secret / "aliases"
    victim.write_text("root: keep\n")
    hubs = tmp_path / "users.d"
    hubs.mkdir()
    os.chown(hubs, 65534, 65534)
    (hubs / "conf").symlink_to(secret)
    os.lchown(hubs / "conf", 65534, 65534)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "aliases").symlink_to(hubs / "conf" / "aliases")
    for configured in (etc / "aliases", hubs / "conf" / "aliases"):
        with pytest.raises(AliasesFileError, match=(
                rf"^{hubs / 'conf'} is a symbolic link in {hubs}, a folder of .*uid 65534.*'s: "
                "not followed")):
            aliases_at(configured).add("b", ["ann"])
    assert victim.read_text() == "root: keep\n"
    assert sorted(os.listdir(secret)) == ["aliases"]
    # root's own link to a folder, in root's folder (/etc/txmailhub made a
    # link to /srv/txmailhub): followed, as before
    (tmp_path / "srv").symlink_to(secret)
    aliases_at(tmp_path / "srv" / "aliases").add("b", ["ann"])
    assert victim.read_text() == "root: keep\nb: ann\n"


def test_a_lock_that_is_a_link_is_not_followed(path: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    (tmp_path / "aliases.lock").symlink_to(victim)
    with pytest.raises(AliasesFileError, match="not a regular file with one name"):
        aliases_at(path, "a: joe\n").add("b", ["ann"])
    assert path.read_text() == "a: joe\n"
    # nor a hard link to it (the same file by another name)
    (tmp_path / "aliases.lock").unlink()
    os.link(victim, tmp_path / "aliases.lock")
    with pytest.raises(AliasesFileError, match="not a regular file with one name"):
        aliases_at(path).add("b", ["ann"])
    assert path.read_text() == "a: joe\n" and victim.read_text() == "root's\n"


def test_a_change_waits_for_the_lock_and_reads_the_file_as_left(path: Path) -> None:
    aliases = aliases_at(path, "a: joe\n")
    lock = os.open(str(path) + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another `mailhub alias` in the middle of its change
    errors: list[BaseException] = []

    def add() -> None:
        try:
            aliases.add("b", ["ann"])
        except BaseException as e:
            errors.append(e)

    waiting = threading.Thread(target=add)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive() and path.read_text() == "a: joe\n"
    path.write_text("a: joe\nc: joe\n")  # what the other one wrote
    fcntl.flock(lock, fcntl.LOCK_UN)
    os.close(lock)
    waiting.join(10)
    assert not waiting.is_alive() and errors == []
    assert path.read_text() == "a: joe\nc: joe\nb: ann\n"  # nothing of it lost


def _add_many(path: str, prefix: str, count: int) -> None:
    aliases = AliasesFile(path, "example.org", DOMAINS)
    for i in range(count):
        aliases.add(f"{prefix}{i}", ["joe"])


def test_two_processes_changing_the_file_at_once_lose_nothing(path: Path) -> None:
    path.write_text("# shared\n")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_many, args=(str(path), p, 15)) for p in "xy"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    table = parse_aliases(path.read_text(), "example.org", DOMAINS)[0]
    assert sorted(table) == sorted(f"{p}{i}@example.org" for p in "xy" for i in range(15))
    assert path.read_text().startswith("# shared\n")


def _within(seconds: float, call):
    """``call()``'s result or exception, failing (not hanging) if it blocks."""
    done: list = []

    def run() -> None:
        try:
            done.append(("ok", call()))
        except BaseException as e:  # handed to the test
            done.append(("raised", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert done, f"still blocked after {seconds}s"
    return done[0]


@pytest.mark.parametrize("change", [
    lambda a: a.add("b", ["joe"]), lambda a: a.set("b", ["joe"]), lambda a: a.remove("b"),
    lambda a: a.read()])
def test_a_fifo_in_place_of_the_file_is_refused_not_waited_on(path: Path, change) -> None:
    # ``mailhub check`` refuses a FIFO at [aliases] file, but one may be put
    # there after the config is read: opening it to read would wait for ever
    os.mkfifo(path)
    how, e = _within(20, lambda: change(aliases_at(path)))
    assert how == "raised" and isinstance(e, AliasesFileError), e
    assert str(e) == (f"{path}: [aliases] file is not a regular file (a named pipe, device or "
                      "socket): not read, nothing changed; set [aliases] file to a regular file")
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


@pytest.mark.parametrize("change", [
    lambda a: a.add("b", ["joe"]), lambda a: a.remove("b"), lambda a: a.read()])
def test_a_file_over_its_bound_is_refused_and_left_as_it_is(path: Path, change) -> None:
    # ``mailhub alias`` read the file whole, however large: over
    # ALIASES_FILE_MAX it is refused, as the hub refuses it, and not written
    from txmailhub.router import ALIASES_FILE_MAX

    path.write_text("b: joe\n")
    with open(path, "r+b") as f:
        f.truncate(ALIASES_FILE_MAX + 1)  # (a sparse file: no disk taken)
    with pytest.raises(AliasesFileError) as info:
        change(aliases_at(path))
    assert str(info.value) == (f"{path}: [aliases] file is larger than 16 MiB, the most the hub "
                               "reads of it: not read, nothing changed")
    assert os.path.getsize(path) == ALIASES_FILE_MAX + 1


def test_a_change_that_would_pass_the_bound_is_refused(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # written, the file would be one the hub refuses to read: refused,
    # nothing written
    from txmailhub import aliases_file

    path.write_text("b: joe\n")
    monkeypatch.setattr(aliases_file, "ALIASES_FILE_MAX", 12)
    with pytest.raises(AliasesFileError) as info:
        aliases_at(path).add("team", ["joe"])
    assert str(info.value) == (f"{path}: the change would make the [aliases] file larger than "
                               "12 octets, the most the hub reads of it: nothing changed")
    assert path.read_text() == "b: joe\n"


def test_a_file_made_again_is_readable_by_all_whatever_the_umask(path: Path) -> None:
    # an aliases file away for a moment is made again by the first add;
    # the hub, another user, must read it: 0644 as /etc/aliases, not what
    # root's umask 077 would leave (0600, and the next start fails)
    aliases = aliases_at(path)
    old = os.umask(0o077)
    try:
        aliases.add("sales", ["alice"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert "sales" in path.read_text()


def test_set_takes_a_continuation_line_that_starts_with_a_form_feed_with_its_alias(
        path: Path) -> None:
    # the reader continues the alias there (white space, as Postfix reads
    # it); set took the line for another one and left it, a stray
    # continuation of the line before it once rewritten
    aliases_at(path, "a: joe,\n\x0cann\nb: joe\n").set("a", ["bob"])
    assert path.read_text() == "a: bob\nb: joe\n"


def _swapped_for_a_link(folder: Path, to: Path) -> None:
    """Another user's move: ``folder`` (in that user's folder) renamed
    away and a link to ``to`` (a folder of root's) put in its place."""
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(to)


def test_a_folder_swapped_for_a_link_during_a_change_does_not_send_the_file_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # [aliases] file in a folder inside another user's (the hub's) folder:
    # once the links were judged, that user may rename the folder and put
    # a link to a folder of root's there.  The change was written by
    # path, into that folder; it is written in the folder judged
    from txmailhub.store import sync

    folder = tmp_path / "hub" / "conf"
    folder.mkdir(parents=True)
    (folder / "aliases").write_text("a: joe\n")
    roots = tmp_path / "etc"
    roots.mkdir()
    real_write = sync.durable_write

    def swap_then_write(*args: object, **kw: object) -> None:
        _swapped_for_a_link(folder, roots)  # (the change made, the links judged)
        real_write(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sync, "durable_write", swap_then_write)
    aliases_at(folder / "aliases").add("b", ["ann"])
    assert os.listdir(roots) == []
    assert (tmp_path / "hub" / "conf.old" / "aliases").read_text() == "a: joe\nb: ann\n"


def test_a_folder_swapped_for_a_link_before_the_read_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same move just before the file is read: the text read would be
    # root's etc/aliases, written back into the folder judged
    import txmailhub.aliases_file as module

    folder = tmp_path / "hub" / "conf"
    folder.mkdir(parents=True)
    (folder / "aliases").write_text("a: joe\n")
    roots = tmp_path / "etc"
    roots.mkdir()
    (roots / "aliases").write_text("root: secret\n")
    real_read = module.read_regular

    def swap_and_read(path: str, **kw: object) -> object:
        if os.path.realpath(path) == str(folder / "aliases"):
            _swapped_for_a_link(folder, roots)
        return real_read(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "read_regular", swap_and_read)
    with pytest.raises(AliasesFileError, match="replaced during the change"):
        aliases_at(folder / "aliases").add("b", ["ann"])
    assert (roots / "aliases").read_text() == "root: secret\n"
    assert (tmp_path / "hub" / "conf.old" / "aliases").read_text() == "a: joe\n"
