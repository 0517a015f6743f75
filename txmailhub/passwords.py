"""The password policy: which new passwords ``mailhub user`` refuses.

Owns the rules a password must pass when it is set (``user add``,
``user passwd``) and the built-in list of common passwords
(``common_passwords.txt`` beside this module).  It never sees a stored
hash and never touches the users file: users and passwords set before
the policy keep working, because it applies only when a password is set.

The rules follow NIST SP 800-63B (revision 3 section 5.1.1.2, revision 4
section 3.1.1.2): a minimum length (8 by default, ``[users]
min_password_length``; revision 4 asks 15 of a single-factor password, so
a site may well raise it), a generous maximum, no
composition rules (no "one digit and one capital"), and a refusal of
passwords that are known to be weak -- the most common ones, one
character repeated, nothing but white space, and the context-specific
words an attacker tries first: the user's own name and the mail domain.  Accounts here are open
to guessing from the internet over SMTP AUTH and POP3; the login delay
slows a guesser down, but a password like ``alice`` for alice falls on
the first try.

A name counts inside a password only where it stands as a word of its
own -- not glued to other letters (or digits) on either side -- or where
it makes up at least half of the password: ``alice-rocks``,
``art2024art`` and ``artartart1`` name the user, ``party-start-heart-9``
does not name ``art`` (it merely has those letters in it, as many
words do).  The same holds for the domain and its labels.

Length is counted in Unicode code points after NFC normalisation, so a
composed and a decomposed ``é`` count as one character each.
``txmailhub.users`` hands this module the prepared (RFC 8265) form, the
one that is hashed; this module only normalises for counting and
comparing, never for what is stored.  Comparisons (with the list, the name, the domain) use the NFKC
case-folded form: ``PASSWORD``, ``Password`` and ``password`` typed in
full-width letters are one weak password.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

from txmailhub.address import Address, canonical_domain

__all__ = [
    "DEFAULT_MIN_LENGTH",
    "MAX_LENGTH",
    "PASS_COMMAND_OCTETS",
    "PasswordPolicy",
    "common_passwords",
    "password_length",
]

DEFAULT_MIN_LENGTH = 8
"""NIST SP 800-63B: a password is at least 8 characters (a site may ask
more with ``[users] min_password_length``)."""

MAX_LENGTH = 128
"""Longest password accepted, in code points.  NIST asks for at least 64;
scrypt takes any length, and AUTH PLAIN carries far more, so the limit
only stops a pasted file from becoming a password."""

PASS_COMMAND_OCTETS = 255 - len("PASS \r\n")
"""The longest password POP3 ``PASS`` can carry: RFC 2449 section 4 caps a
command line at 255 octets, CRLF included (``txmailhub.pop3.server``
enforces it).  Longer ones still work with ``AUTH PLAIN``."""

_MIN_WORD = 3
"""A name (or a piece of one) at least this long is refused inside a
password (as a word of its own, or as half of it); a shorter one only as
the whole password -- refusing every password that contains "al" would
refuse good ones for nothing."""

_WORD_SEPARATORS = re.compile(r"[._+\-]+")


def password_length(password: str) -> int:
    """Characters in ``password`` as the policy counts them: code points
    after NFC normalisation (NIST SP 800-63B: each code point is one
    character)."""
    return len(unicodedata.normalize("NFC", password))


def _kind(ch: str) -> str:
    """Letters (marks go with them) and digits make words; the rest parts them."""
    if ch.isalpha() or unicodedata.category(ch).startswith("M"):
        return "letter"
    return "digit" if ch.isdigit() else "other"


def _names(word: str, folded: str) -> bool:
    """Whether the password (``folded``) names ``word``: the word stands
    on its own somewhere (the character before and after it, if any, is
    not of the kind of the word's own edge: ``art`` in ``art2024art`` or
    ``my-art!``, not in ``party``), or its occurrences make up at least
    half of the password (``artartart1``, ``superalice``).  A plain
    substring test refused ``party-start-heart-9`` for user ``art``."""
    covered = 0
    at = folded.find(word)
    while at >= 0:
        end = at + len(word)
        before = folded[at - 1] if at else ""
        after = folded[end] if end < len(folded) else ""
        if ((not before or _kind(before) != _kind(word[0]) or _kind(word[0]) == "other")
                and (not after or _kind(after) != _kind(word[-1])
                     or _kind(word[-1]) == "other")):
            return True
        covered += len(word)
        at = folded.find(word, end)
    return 2 * covered >= len(folded)


def _fold(text: str) -> str:
    """The form compared with the list and the user's name: NFKC, case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


@cache
def common_passwords() -> frozenset[str]:
    """The built-in list, folded; read once from the package's data file."""
    text = resources.files("txmailhub").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        _fold(line.strip()) for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def _context_words(address: Address) -> list[tuple[str, str]]:
    """(folded word, what it is) for the words of this account an attacker
    guesses first: the local part and its pieces (``ann.smith``: ``ann``,
    ``smith``), the domain and its labels but the last (``example``)."""
    words: list[tuple[str, str]] = []
    local = _fold(address.local)
    words.append((local, "the user's name"))
    pieces = _WORD_SEPARATORS.split(local)
    if len(pieces) > 1:
        words.extend((p, "a part of the user's name") for p in pieces if len(p) >= _MIN_WORD)
    domain = _fold(canonical_domain(address.domain))
    words.append((domain, "the domain name"))
    if not domain.startswith("["):  # an address literal has no words
        labels = domain.split(".")[:-1]
        words.extend((label, "a part of the domain name") for label in labels
                     if len(label) >= _MIN_WORD)
    return words


@dataclass(frozen=True)
class PasswordPolicy:
    """What a new password must pass.  ``min_length`` comes from
    ``[users] min_password_length``; the rest is fixed."""

    min_length: int = DEFAULT_MIN_LENGTH
    max_length: int = MAX_LENGTH

    def unusable(self, password: str) -> str | None:
        """Why ``password`` cannot be a password at all (no override
        helps), or None: empty, over the maximum, or with a NUL (RFC 4616:
        AUTH PLAIN separates its fields with NUL, so such a password could
        never be sent)."""
        if not password:
            return "the password is empty"
        length = password_length(password)
        if length > self.max_length:
            return (f"the password is too long: {length} characters, at most "
                    f"{self.max_length}")
        if "\0" in password:
            return "the password has a NUL character in it, which AUTH PLAIN cannot carry"
        return None

    def weaknesses(self, password: str, address: Address) -> list[str]:
        """Every reason ``password`` is too weak for ``address`` (empty when
        it passes).  Each reason is a phrase that completes "the password
        ...", and says what to change, never the password itself."""
        found: list[str] = []
        length = password_length(password)
        if length < self.min_length:
            found.append(f"is too short: {length} character{'' if length == 1 else 's'}, "
                         f"at least {self.min_length}")
        folded = _fold(password)
        key = folded.strip()
        if key in common_passwords():
            found.append("is one of the most commonly used passwords")
        elif not key:
            # the list is compared without the white space around a
            # password, and none is left: eight spaces are no secret
            found.append("is nothing but white space")
        elif len(set(key)) == 1 and length > 1:
            found.append("is one character repeated")
        seen: set[str] = set()
        for word, what in _context_words(address):
            if not word or word in seen:
                continue
            seen.add(word)
            if key == word:
                found.append(f"is {what}")
                break
            if len(word) >= _MIN_WORD and _names(word, folded):
                found.append(f"contains {what} ({word})")
                break
        return found

    def refusal(self, password: str, address: Address) -> str | None:
        """The one-line reason ``mailhub user`` gives, or None when it passes."""
        weak = self.weaknesses(password, address)
        if not weak:
            return None
        return "the password " + "; it ".join(weak)
