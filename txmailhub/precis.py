"""Password preparation: the PRECIS OpaqueString profile (RFC 8265 section 4.2).

Owns the one function that turns a password as a person typed it into
the form that is hashed and compared, so that every way a keyboard or a
mail client can encode the same text logs in: a composed ``é`` (U+00E9)
and a decomposed one (``e`` U+0301), a no-break space and a plain one.
RFC 4616 (AUTH PLAIN) names SASLprep (RFC 4013) for this; RFC 8265
replaces SASLprep with OpaqueString, which is what this follows.  It never
sees a hash or a users file: ``txmailhub.users`` decides what to do with
the prepared form (and with a password this refuses).

The rules, in the RFC's order (section 4.2.2):

1. width mapping: none (a full-width letter stays what it is);
2. additional mapping: every non-ASCII space (Unicode category Zs) becomes
   U+0020;
3. case mapping: none; 4. normalisation: NFC; 5. directionality: none;

then the result must not be empty and each code point must be allowed by
the FreeformClass of RFC 8264 (section 4.3), derived as section 8 there
says, from the Unicode data of this Python (``unicodedata``):

- refused: unassigned code points (Cn), controls (Cc: NUL, tab, CR, LF,
  DEL...), default-ignorable code points and noncharacters (soft hyphen,
  zero-width space, bidi controls, variation selectors, BOM), old Hangul
  conjoining jamo, the six RFC 5892 exceptions marked DISALLOWED (U+0640
  Arabic tatweel, ...), and every category FreeformClass does not name:
  format characters (Cf), line/paragraph separators (Zl, Zp), private use
  (Co) and surrogates (Cs);
- allowed: letters, marks and digits, the other letters and numbers (Lt,
  Nl, No, Me), spaces (Zs, U+0020 after the mapping), symbols and
  punctuation, and anything with a compatibility decomposition;
- contextual (RFC 5892 appendix A): ZERO WIDTH JOINER only after a virama,
  MIDDLE DOT only between two ``l``, Arabic-Indic digits not mixed with
  extended Arabic-Indic ones (and the reverse) -- checked exactly.  The
  rules that need data ``unicodedata`` does not carry (the Joining_Type
  branch of ZERO WIDTH NON-JOINER, the Greek, Hebrew and Japanese script
  rules) are taken as met: a password is never displayed, so a look-alike
  in it misleads nobody, and refusing would only stop a person from
  setting a password their keyboard types.
"""

from __future__ import annotations

import unicodedata

__all__ = ["PreparationError", "prepare_password"]


class PreparationError(ValueError):
    """The string cannot be an OpaqueString; the message says why without
    quoting the password."""


# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt; the set
# is stable) and the noncharacters outside the per-plane FFFE/FFFF pairs.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFDD0, 0xFDEF), (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
# Hangul_Syllable_Type L, V or T (RFC 5892 section 2.9, OldHangulJamo)
_OLD_HANGUL_JAMO = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))
# RFC 5892 section 2.6: the exceptions whose value is DISALLOWED
_EXCEPTIONS_DISALLOWED = frozenset(
    [0x0640, 0x07FA, 0x302E, 0x302F, 0x3031, 0x3032, 0x3033, 0x3034, 0x3035, 0x303B])
_ZWNJ, _ZWJ, _MIDDLE_DOT = 0x200C, 0x200D, 0x00B7  # CONTEXTJ, CONTEXTJ, CONTEXTO
_ARABIC_INDIC = range(0x0660, 0x066A)
_EXTENDED_ARABIC_INDIC = range(0x06F0, 0x06FA)
_VIRAMA = 9  # canonical combining class
_FREE_CATEGORIES = frozenset(
    ["Ll", "Lu", "Lo", "Lm", "Lt", "Nd", "Nl", "No", "Mn", "Mc", "Me", "Zs",
     "Sm", "Sc", "Sk", "So", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"])


def _in(cp: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _refusal(ch: str) -> str | None:
    """Why FreeformClass does not allow ``ch`` on its own, or None
    (RFC 8264 section 8, in its order; contextual ones are judged later)."""
    cp = ord(ch)
    category = unicodedata.category(ch)
    if cp in _EXCEPTIONS_DISALLOWED:
        return "a character PRECIS disallows"
    if category == "Cn" and not (cp & 0xFFFE == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF):
        return "an unassigned code point"
    if 0x21 <= cp <= 0x7E or cp in (_ZWNJ, _ZWJ):
        return None
    if _in(cp, _OLD_HANGUL_JAMO):
        return "an old Hangul jamo"
    if _in(cp, _IGNORABLE) or category == "Cn":
        return "an invisible (default-ignorable) character or a noncharacter"
    if category == "Cc":
        return "a control character"
    if category in _FREE_CATEGORIES or unicodedata.decomposition(ch).startswith("<"):
        return None
    return "a character PRECIS disallows"


def _context_refusal(text: str) -> str | None:
    """The RFC 5892 appendix A rules this module can check exactly."""
    cps = [ord(c) for c in text]
    for i, cp in enumerate(cps):
        before = text[i - 1] if i else ""
        # ZERO WIDTH NON-JOINER: after a virama, or between joining
        # letters (no Joining_Type data here: taken as met)
        if cp == _ZWJ and not (before and unicodedata.combining(before) == _VIRAMA):
            return "a zero width joiner that does not follow a virama"
        elif cp == _MIDDLE_DOT:
            if before != "l" or text[i + 1:i + 2] != "l":
                return "a middle dot that is not between two l"
    if any(cp in _ARABIC_INDIC for cp in cps) and any(
            cp in _EXTENDED_ARABIC_INDIC for cp in cps):
        return "Arabic-Indic and extended Arabic-Indic digits mixed"
    return None


def prepare_password(password: str) -> str:
    """The OpaqueString form of ``password``: what is hashed and compared.

    Raises ``PreparationError`` for a string the profile refuses.  The
    result is a fixed point: preparing it again gives it back.
    """
    mapped = "".join(
        " " if ch != " " and unicodedata.category(ch) == "Zs" else ch for ch in password)
    prepared = unicodedata.normalize("NFC", mapped)
    if not prepared:
        raise PreparationError("the password is empty")
    for ch in prepared:
        why = _refusal(ch)
        if why:
            raise PreparationError(f"the password has {why} in it (U+{ord(ch):04X})")
    why = _context_refusal(prepared)
    if why:
        raise PreparationError(f"the password has {why}")
    return prepared
