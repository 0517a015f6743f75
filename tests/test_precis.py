"""Password preparation: the PRECIS OpaqueString profile (RFC 8265 4.2)."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.precis import PreparationError, prepare_password

# "été à Noël" typed on two keyboards: precomposed letters, or base
# letters followed by combining accents
COMPOSED = "\u00e9t\u00e9 \u00e0 No\u00ebl"
DECOMPOSED = "e\u0301te\u0301 a\u0300 Noe\u0308l"


def test_decomposed_and_composed_letters_prepare_alike() -> None:
    assert DECOMPOSED != COMPOSED
    assert prepare_password(DECOMPOSED) == prepare_password(COMPOSED) == COMPOSED


@pytest.mark.parametrize("space", ["\u00a0", "\u2002", "\u2009", "\u202f", "\u3000", "\u1680"])
def test_every_non_ascii_space_becomes_a_plain_one(space: str) -> None:
    assert unicodedata.category(space) == "Zs"
    assert prepare_password(f"blue{space}whale{space}7") == "blue whale 7"


def test_what_the_profile_leaves_alone() -> None:
    # no width mapping, no case mapping, no trimming of spaces (RFC 8265
    # 4.2.2: only Zs -> U+0020 and NFC); compatibility characters are allowed
    for password in ("\ufb01sh", "\u2460\u00bd\u00b2", "\u6d77\u98a8 \u5c71\u96e8",
                     "\u2603\u20ac!", "caf\u00e9-\u00df\u03c2"):
        assert prepare_password(password) == password
    assert prepare_password("\uff21\uff42\uff43") == "\uff21\uff42\uff43"
    assert prepare_password("  spaced  ") == "  spaced  "
    assert prepare_password("MiXeD case") == "MiXeD case"
    assert prepare_password("ZZ\u200czz") == "ZZ\u200czz"  # ZWNJ: taken as met
    assert prepare_password("\u0915\u094d\u200d\u0937") == "\u0915\u094d\u200d\u0937"
    assert prepare_password("l\u00b7l") == "l\u00b7l"


@pytest.mark.parametrize(("password", "why"), [
    ("", "empty"),
    ("tab\there", "a control character in it (U+0009)"),
    ("nul\0here", "a control character in it (U+0000)"),
    ("line\nbreak", "a control character in it (U+000A)"),
    ("del\x7fhere", "a control character in it (U+007F)"),
    ("c1\x85ctl", "a control character in it (U+0085)"),
    ("soft\u00adhyphen", "default-ignorable"),
    ("zero\u200bwidth", "default-ignorable"),
    ("rtl\u202eoverride", "default-ignorable"),
    ("bom\ufeffhere", "default-ignorable"),
    ("vs\ufe0fhere", "default-ignorable"),
    ("non\ufffechar", "noncharacter"),
    ("non\ufdd0char", "noncharacter"),
    ("\u0378unassigned", "unassigned"),
    ("\U0003fffdunassigned", "unassigned"),
    ("jamo\u1100x", "old Hangul jamo"),
    ("jamo\ua960", "old Hangul jamo"),
    ("tatweel\u0640", "PRECIS disallows"),
    ("private\ue000use", "PRECIS disallows"),
    ("line\u2028sep", "PRECIS disallows"),
    ("soft\u200djoin", "zero width joiner"),
    ("a\u00b7b", "middle dot"),
    ("\u0661\u06f2", "Arabic-Indic"),
])
def test_what_the_profile_refuses(password: str, why: str) -> None:
    with pytest.raises(PreparationError, match=re.escape(why)):
        prepare_password(password)


def test_only_spaces_are_mapped_so_nothing_becomes_empty_by_mapping() -> None:
    assert prepare_password("\u00a0") == " "


def test_a_hangul_syllable_is_modern_and_allowed_either_way_it_is_typed() -> None:
    syllable = "\ud55c\uae00"  # precomposed syllables; NFD gives conjoining jamo
    assert prepare_password(unicodedata.normalize("NFD", syllable)) == syllable


_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


def _prepared(text: str) -> str | None:
    try:
        return prepare_password(text)
    except PreparationError:
        return None


@given(_TEXT)
def test_preparation_is_idempotent(text: str) -> None:
    prepared = _prepared(text)
    if prepared is not None:
        assert prepare_password(prepared) == prepared


@given(_TEXT)
def test_nfc_equivalent_inputs_prepare_to_the_same_string(text: str) -> None:
    forms = {unicodedata.normalize(f, text) for f in ("NFC", "NFD")} | {text}
    assert len({_prepared(f) for f in forms}) == 1


@given(_TEXT)
def test_a_prepared_password_is_nfc_with_no_exotic_space_and_no_control(text: str) -> None:
    prepared = _prepared(text)
    if prepared is not None:
        assert prepared and unicodedata.is_normalized("NFC", prepared)
        assert not any(unicodedata.category(c) in ("Cc", "Cn") or
                       (unicodedata.category(c) == "Zs" and c != " ") for c in prepared)


# One of each general category FreeformClass allows (RFC 8264 9.1-9.5,
# 9.11-9.17), after a letter so none stands at the start.
@pytest.mark.parametrize(("ch", "category"), [
    ("\u00e9", "Ll"), ("\u00c9", "Lu"), ("\u6d77", "Lo"), ("\u02b9", "Lm"),
    ("\u1f88", "Lt"), ("\u0663", "Nd"), ("\u16ee", "Nl"), ("\u09f4", "No"),
    ("\u0301", "Mn"), ("\u0903", "Mc"), ("\u0488", "Me"), ("\u3000", "Zs"),
    ("\u2200", "Sm"), ("\u20ac", "Sc"), ("\u02c2", "Sk"), ("\u2603", "So"),
    ("\u203f", "Pc"), ("\u2010", "Pd"), ("\u2045", "Ps"), ("\u2046", "Pe"),
    ("\u00ab", "Pi"), ("\u00bb", "Pf"), ("\u00a7", "Po"),
])
def test_every_category_the_freeform_class_names_is_allowed(ch: str, category: str) -> None:
    assert unicodedata.category(ch) == category
    expected = unicodedata.normalize("NFC", "x" + (" " if category == "Zs" else ch))
    assert prepare_password("x" + ch) == expected


@pytest.mark.parametrize(("ch", "why"), [
    # default-ignorable code points of every kind, not only format characters
    ("\u034f", "default-ignorable"), ("\u17b4", "default-ignorable"),
    ("\u180f", "default-ignorable"), ("\u3164", "default-ignorable"),
    ("\uffa0", "default-ignorable"), ("\U000e0100", "default-ignorable"),
    ("\uffff", "noncharacter"), ("\U0010ffff", "noncharacter"),
    # old Hangul jamo at the ends of their blocks
    ("\u11a8", "old Hangul jamo"), ("\ua97c", "old Hangul jamo"),
    ("\ud7fb", "old Hangul jamo"),
    # the RFC 5892 2.6 exceptions that are DISALLOWED, each of them
    ("\u07fa", "PRECIS disallows"), ("\u302e", "PRECIS disallows"),
    ("\u302f", "PRECIS disallows"), ("\u3031", "PRECIS disallows"),
    ("\u3035", "PRECIS disallows"), ("\u303b", "PRECIS disallows"),
])
def test_the_disallowed_sets_are_whole(ch: str, why: str) -> None:
    with pytest.raises(PreparationError, match=re.escape(why)):
        prepare_password("a" + ch + "a")


@pytest.mark.parametrize("password", [
    "\u200dlead",  # a zero width joiner with nothing before it
    "\u00b7ll", "ll\u00b7", "l\u00b7x", "x\u00b7l",  # a middle dot short of an l
    "\u0669\u06f0", "\u0660\u06f9",  # the digits at both ends of the two ranges
])
def test_the_contextual_rules_at_their_edges(password: str) -> None:
    with pytest.raises(PreparationError):
        prepare_password(password)


def test_one_kind_of_arabic_indic_digits_alone_is_allowed() -> None:
    for digits in ("\u0660\u0665\u0669", "\u06f0\u06f5\u06f9"):
        assert prepare_password("pin " + digits) == "pin " + digits
