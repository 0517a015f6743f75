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
