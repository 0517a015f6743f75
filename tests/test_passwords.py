"""The password policy (NIST SP 800-63B 5.1.1): each rule on its own."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from txmailhub.address import Address
from txmailhub.errors import UsersFileError, WeakPassword
from txmailhub.passwords import (
    DEFAULT_MIN_LENGTH,
    MAX_LENGTH,
    PasswordPolicy,
    common_passwords,
    password_length,
)
from txmailhub.users import UsersDB

ALICE = Address("alice", "example.org")
POLICY = PasswordPolicy()
# NFC "crème brûlée" without the space: 11 code points composed, 14 decomposed
DESSERT = "cr\u00e8mebr\u00fbl\u00e9e"


def refusal(password: str, address: Address = ALICE, policy: PasswordPolicy = POLICY) -> str:
    return policy.refusal(password, address) or ""


def test_the_minimum_is_8_by_default_and_a_policy_may_ask_more() -> None:
    assert DEFAULT_MIN_LENGTH == 8
    assert refusal("tqz-vbm") == "the password is too short: 7 characters, at least 8"
    assert refusal("tqz-vbmk") == ""
    strict = PasswordPolicy(min_length=12)
    assert refusal("tqz-vbmk-wr", policy=strict) == (
        "the password is too short: 11 characters, at least 12")
    assert refusal("tqz-vbmk-wrp", policy=strict) == ""


def test_the_maximum_is_generous_and_no_override_passes_it() -> None:
    assert MAX_LENGTH >= 64  # NIST: permit at least 64
    long_ok = "tqz-vbmk " * 14 + "x" * (MAX_LENGTH - 9 * 14)
    assert len(long_ok) == MAX_LENGTH
    assert POLICY.unusable(long_ok) is None and refusal(long_ok) == ""
    assert POLICY.unusable(long_ok + "y") == (
        f"the password is too long: {MAX_LENGTH + 1} characters, at most {MAX_LENGTH}")


def test_no_composition_rules() -> None:
    # all lower case, digits only, no symbol: long enough and not common is enough
    for password in ("lanternharbourquiet", "73910284657", "ZZYZX QUARTZ"):
        assert refusal(password) == "", password


@pytest.mark.parametrize("password", [
    "password", "Password1", "PASSWORD123", "qwerty123", "12345678", "123456789",
    "letmein!", "iloveyou", "1q2w3e4r", "qazwsxedc", "asdfghjkl", "p@ssw0rd",
    "Correct Horse Battery Staple", " password ",
    # full-width letters: NFKC makes them "password"
    "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44",
])
def test_common_passwords_are_refused_whatever_their_case(password: str) -> None:
    assert "is one of the most commonly used passwords" in refusal(password)


def test_every_listed_password_is_refused() -> None:
    listed = common_passwords()
    assert 200 <= len(listed) <= 500  # a few hundred: the obvious ones, not a dictionary
    for password in listed:
        assert "commonly used" in refusal(password), password


def test_the_list_file_is_clean() -> None:
    path = Path(__file__).resolve().parent.parent / "txmailhub" / "common_passwords.txt"
    entries = [line for line in path.read_text("utf-8").splitlines()
               if line and not line.startswith("#")]
    assert len(entries) == len(set(entries)), "duplicates"
    assert all(e == e.strip() and e == unicodedata.normalize("NFC", e) for e in entries)


def test_one_character_repeated_is_refused() -> None:
    assert refusal("zzzzzzzzzzzz") == "the password is one character repeated"
    assert refusal("\u00e9" * 9) == "the password is one character repeated"


def test_the_users_name_is_refused_as_the_password_and_inside_it() -> None:
    assert refusal("alice", policy=PasswordPolicy(min_length=1)) == (
        "the password is the user's name")
    assert refusal("ALICE-rocks-42") == "the password contains the user's name (alice)"
    ann = Address("Ann.Smith", "example.org")
    assert refusal("ann.smith") == ""  # alice's password may be ann's name
    assert refusal("ann.smith", ann, PasswordPolicy(min_length=1)) == (
        "the password is the user's name")
    assert refusal("smith-was-here", ann) == (
        "the password contains a part of the user's name (smith)")


def test_a_short_name_is_refused_only_as_the_whole_password() -> None:
    # refusing every password with "jo" in it would refuse good ones for nothing
    jo = Address("jo", "example.org")
    assert refusal("joyful-otter-tune", jo) == ""
    assert refusal("jo", jo, PasswordPolicy(min_length=1)) == "the password is the user's name"


def test_the_domain_and_its_labels_are_refused() -> None:
    assert refusal("example.org") == "the password is the domain name"
    assert refusal("my-example.org-pw") == "the password contains the domain name (example.org)"
    assert refusal("EXAMPLE-2025-mail") == (
        "the password contains a part of the domain name (example)")
    assert refusal("organ-grinder-tune") == ""  # the top-level label is no word of the site
    # the user's own domain, not the primary one
    carol = Address("carol", "b\u00fccher.example")
    assert refusal("b\u00fccher-regal-7", carol) == (
        "the password contains a part of the domain name (b\u00fccher)")


def test_several_reasons_are_given_at_once() -> None:
    assert refusal("alice1", policy=PasswordPolicy()) == (
        "the password is too short: 6 characters, at least 8; it contains the user's name "
        "(alice)")


def test_length_is_counted_in_code_points_after_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", DESSERT)
    assert (len(DESSERT), len(decomposed)) == (11, 14)
    assert password_length(DESSERT) == password_length(decomposed) == 11
    strict = PasswordPolicy(min_length=12)
    # the same password however it was typed: refused as 11 characters both ways
    assert refusal(DESSERT, policy=strict) == refusal(decomposed, policy=strict) == (
        "the password is too short: 11 characters, at least 12")
    # non-ASCII is counted in characters, not in UTF-8 octets (22 for this one)
    assert refusal("\u6d77\u98a8\u5c71\u96e8\u82b1\u6708\u96ea\u661f") == ""


def test_a_nul_or_an_empty_password_can_never_be_one() -> None:
    assert POLICY.unusable("") == "the password is empty"
    assert POLICY.unusable("tqz\0vbmk-wr") == (
        "the password has a NUL character in it, which AUTH PLAIN cannot carry")


def test_the_users_file_applies_the_policy_and_the_override(tmp_path: Path) -> None:
    db = UsersDB(str(tmp_path / "users"), "example.org")
    with pytest.raises(WeakPassword, match="it is the user's name") as info:
        db.add("alice", "alice", allow_weak=False)
    assert isinstance(info.value, UsersFileError)  # mailhub exits 2 on it
    assert not (tmp_path / "users").exists()
    db.add("alice", "alice", allow_weak=True)
    assert db.check_password(ALICE, "alice")
    with pytest.raises(WeakPassword, match="commonly used"):
        db.set_password("alice", "password1")
    assert db.check_password(ALICE, "alice")  # unchanged
    db.set_password("alice", "password1", allow_weak=True)
    assert db.check_password(ALICE, "password1")
    # what no override lets through
    for unusable in ("", "x" * (MAX_LENGTH + 1), "tqz\0vbmk-wr"):
        with pytest.raises(UsersFileError) as info:
            db.set_password("alice", unusable, allow_weak=True)
        assert not isinstance(info.value, WeakPassword)


def test_the_hash_is_of_the_prepared_password(tmp_path: Path) -> None:
    # RFC 8265 OpaqueString: the hash holds the NFC form with plain spaces,
    # so a login however the client composes the accents matches
    from txmailhub.users import verify_password

    db = UsersDB(str(tmp_path / "users"), "example.org")
    decomposed = unicodedata.normalize("NFD", DESSERT + "\u00a0tart")
    db.add("alice", decomposed)
    stored = db.get(ALICE)
    assert stored is not None
    assert verify_password(DESSERT + " tart", stored.password_hash)
    assert not verify_password(decomposed, stored.password_hash)
    for sent in (decomposed, DESSERT + " tart", DESSERT + "\u00a0tart",
                 unicodedata.normalize("NFD", DESSERT) + "\u2002tart"):
        assert db.check_password(ALICE, sent), ascii(sent)
    assert not db.check_password(ALICE, DESSERT + "tart")


def test_the_policy_judges_the_prepared_form(tmp_path: Path) -> None:
    db = UsersDB(str(tmp_path / "users"), "example.org",
                 password_policy=PasswordPolicy(min_length=12))
    # 14 code points as typed, 11 prepared: too short for 12, as stored
    with pytest.raises(WeakPassword, match="11 characters"):
        db.add("alice", unicodedata.normalize("NFD", DESSERT))
    # refused by preparation whatever the override: it could never be stored
    for refused in ("tab\there-qx7-vbmk", "zero\u200bwidth-qx7-vbmk"):
        with pytest.raises(UsersFileError) as info:
            db.add("alice", refused, allow_weak=True)
        assert not isinstance(info.value, WeakPassword)
    assert not (tmp_path / "users").exists()


def test_users_set_before_the_policy_keep_their_passwords(tmp_path: Path) -> None:
    from txmailhub.users import hash_password

    path = tmp_path / "users"
    path.write_text(f"alice@example.org {hash_password('alice')}\n"
                    f"bob@example.org {hash_password('pw')}\n")
    db = UsersDB(str(path), "example.org")
    assert db.problems == [] and db.check_password(ALICE, "alice")
    assert db.check_password(Address("bob", "example.org"), "pw")
    db.delete("bob")  # and they can still be deleted
    assert db.check_password(ALICE, "alice")


def test_a_password_of_white_space_alone_is_refused() -> None:
    # the list is compared without the white space around a password;
    # eight spaces (or tabs, or both) once slipped through every rule
    for password in (" " * 8, "\t" * 12, " \t" * 6):
        assert refusal(password) == "the password is nothing but white space", repr(password)


def test_one_character_is_short_but_not_repeated() -> None:
    assert POLICY.weaknesses("q", ALICE) == ["is too short: 1 character, at least 8"]
    assert "is one character repeated" in POLICY.weaknesses("qq", ALICE)
    assert POLICY.weaknesses("qq", ALICE)[0] == "is too short: 2 characters, at least 8"


def test_the_list_holds_no_comment_and_no_empty_entry() -> None:
    listed = common_passwords()
    assert "" not in listed
    assert not [p for p in listed if p.startswith("#")]


def test_a_name_or_label_of_three_characters_counts_inside_a_password() -> None:
    # _MIN_WORD: three characters are a word (docs/configuration.rst)
    assert refusal("tqz-ann-vbmk", Address("ann", "example.org")) == (
        "the password contains the user's name (ann)")
    assert refusal("tqz-ann-vbmk", Address("ann.smith", "example.org")) == (
        "the password contains a part of the user's name (ann)")
    assert refusal("tqz-zoo-vbmk", Address("alice", "zoo.example")) == (
        "the password contains a part of the domain name (zoo)")


def test_every_label_but_the_last_counts() -> None:
    bob = Address("bob", "mail.lantern.net")
    assert refusal("lantern-quiet-tune", bob) == (
        "the password contains a part of the domain name (lantern)")
    assert refusal("tqz-mail-vbmk", bob) == (
        "the password contains a part of the domain name (mail)")
    assert refusal("tqz-net-vbmk-wr", bob) == ""


def test_a_name_counts_as_a_word_of_its_own_not_as_letters_inside_words() -> None:
    # "art" is in party, start and heart: no attacker guesses from that
    art = Address("art", "example.org")
    assert refusal("party-start-heart-9", art) == ""
    assert refusal("smartphone-cartwheel", art) == ""
    # the name itself, alone or with digits and signs around it, is refused
    for password in ("art2024art", "ART-2024-xq", "xq7-art!", "2024-9art", "my art vbmk"):
        assert refusal(password, art) == "the password contains the user's name (art)", password
    # or most of the password is the name, glued or not
    for password in ("artartart1", "artxartx", "artsy-art"):
        assert refusal(password, art) == "the password contains the user's name (art)", password


def test_longer_names_and_domain_labels_follow_the_same_rule() -> None:
    assert refusal("malice-aforethought") == ""  # alice's letters, not her name
    assert refusal("superalice") == "the password contains the user's name (alice)"
    assert refusal("alice1984!") == "the password contains the user's name (alice)"
    assert refusal("counterexamples-7") == ""
    assert refusal("example!2025!xq") == (
        "the password contains a part of the domain name (example)")
    # a name with digits in it stands on its own against letters around it
    joe2 = Address("joe2", "example.org")
    assert refusal("joe2-rocks-vbmk", joe2) == "the password contains the user's name (joe2)"
    assert refusal("xjoe2x-rocks-vbmk", joe2) == ""
