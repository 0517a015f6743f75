"""SHA512-CRYPT hashes in the users file, checked only (docs/migrating.rst):
the specification's own vectors, Python's ``crypt`` and the hashes
Dovecot's ``doveadm pw`` makes, and the users file around them."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from txmailhub.address import Address
from txmailhub.sha_crypt import parse, sha512_crypt
from txmailhub.users import UsersDB, hash_problem, verify_password

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt
    except ImportError:  # Python 3.13 removed it
        crypt = None  # type: ignore[assignment]

DOVEADM = shutil.which("doveadm")
ALICE = Address("alice", "example.org")


@pytest.mark.parametrize(("password", "setting", "want"), [
    # Drepper's "Unix crypt using SHA-256 and SHA-512", test vectors
    (b"Hello world!", "$6$saltstring",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbY"
     "EdFCoEOfaS35inz1"),
    (b"Hello world!", "$6$rounds=10000$saltstringsaltstring",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0"
     "Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    (b"This is just a test", "$6$rounds=5000$toolongsaltstring",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxU"
     "hx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    (b"a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$6$rounds=1400$anotherlongsaltstring",
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmL"
     "s66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    (b"we have a short salt string but not a short password", "$6$rounds=77777$short",
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUe"
     "OxFmtlcGZelFl5CxtgfiAc0"),
    (b"the minimum number is still observed", "$6$rounds=10$roundstoolow",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaT"
     "fF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
])
def test_the_specifications_vectors(password: bytes, setting: str, want: str) -> None:
    rounds, named, salt, _ = parse(want)  # type: ignore[misc]
    assert sha512_crypt(password, salt, rounds, named) == want
    assert verify_password(password.decode(), want)
    assert not verify_password(password.decode() + "x", want)
    assert hash_problem(want) is None


def test_the_specifications_settings_give_its_vectors() -> None:
    """Made from the settings themselves, as crypt makes them: a salt of
    over 16 characters cut, rounds below 1000 brought to 1000 (and a hash
    that names such rounds, which crypt never writes, refused: Dovecot
    never matches it)."""
    assert sha512_crypt(b"Hello world!", "saltstringsaltstring", 10000, True) == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0"
        "Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.")
    made = sha512_crypt(b"the minimum number is still observed", "roundstoolow", 10, True)
    assert made == (
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaT"
        "fF4ZEQpyUNGc0dqbpBYYBaHHrsX.")
    digest = made.rsplit("$", 1)[1]
    for rounds in ("10", "999", "05000", "1000000000"):
        unmade = f"$6$rounds={rounds}$roundstoolow${digest}"
        assert parse(unmade) is None and hash_problem(unmade) is not None
        assert not verify_password("the minimum number is still observed", unmade)
    # a salt of 16 characters but over 16 octets: crypt cuts it to 16 octets
    long_salt = "$6$" + "é" * 9 + "$" + digest
    assert parse(long_salt) is None and hash_problem(long_salt) is not None


@pytest.mark.parametrize("prefix", ["", "{SHA512-CRYPT}", "{CRYPT}", "{sha512-crypt}",
                                    "{crypt}", "{Sha512-Crypt}"])
def test_the_prefixes_in_any_case_as_dovecot_reads_them(prefix: str) -> None:
    made = prefix + sha512_crypt(b"old pw", "abcdefgh")
    assert hash_problem(made) is None
    assert verify_password("old pw", made)
    assert not verify_password("old pw!", made)


@pytest.mark.skipif(crypt is None, reason="this Python has no crypt module")
@pytest.mark.parametrize("password", ["", "pw", "x" * 64, "y" * 65, "é ü 日本", "a" * 300])
@pytest.mark.parametrize("salt", ["", "s", "0123456789abcdef", "./Zz"])
def test_pythons_crypt_agrees(password: str, salt: str) -> None:
    want = crypt.crypt(password, f"$6${salt}$")
    assert verify_password(password, want)
    assert verify_password(password, "{SHA512-CRYPT}" + want)
    assert not verify_password(password + "!", want)


@pytest.mark.skipif(DOVEADM is None, reason="doveadm is not installed")
@pytest.mark.parametrize("options", [[], ["-r", "20000"]])
def test_the_hashes_doveadm_pw_makes_are_checked(options: list[str]) -> None:
    made = subprocess.run([DOVEADM, "pw", "-s", "SHA512-CRYPT", *options, "-p", "pässwort 1"],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert made.startswith("{SHA512-CRYPT}$6$")
    assert hash_problem(made) is None
    assert verify_password("pässwort 1", made)
    assert not verify_password("pässwort 2", made)


@pytest.mark.parametrize(("encoded", "why"), [
    ("$6$rounds=1000001$salt$" + "a" * 86, "more rounds than the hub allows SHA512-CRYPT"),
    ("{SHA512-CRYPT}$6$salt$tooshort", "not of the form scrypt$N$r$p$salt$key (nor "),
    ("{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuu", "of scheme {BLF-CRYPT}, which the hub"),
    ("{PLAIN}hunter2", "of scheme {PLAIN}, which the hub does not check"),
    ("$1$salt$hash", "not of the form"),
])
def test_other_hashes_are_refused_with_a_reason(encoded: str, why: str) -> None:
    problem = hash_problem(encoded)
    assert problem is not None and why in problem
    assert "hunter2" not in problem
    assert not verify_password("hunter2", encoded)


def test_a_users_file_with_dovecots_hashes(tmp_path: Path) -> None:
    """Lines made from a Dovecot passwd-file (docs/migrating.rst): the
    users log in with their passwords, ``user passwd`` gives the hub's
    hash; a scheme the hub does not check is reported, and that user
    keeps the mailbox."""
    hashed = sha512_crypt(b"old pw", "abcdefgh")
    path = tmp_path / "users"
    path.write_text(f"alice {{SHA512-CRYPT}}{hashed}\nbob@example.org {{PLAIN}}bobs-pw\n")
    db = UsersDB(str(path), "example.org")
    assert db.check_password(ALICE, "old pw")
    assert not db.check_password(ALICE, "new pw")
    assert [p.split(": ", 1)[1] for p in db.problems] == [
        "bob@example.org cannot log in: the password hash is of scheme {PLAIN}, which the "
        "hub does not check (it checks scrypt$N$r$p$salt$key, and "
        "{SHA512-CRYPT}$6$salt$hash): set a new password with `mailhub user passwd`"]
    assert db.contains(Address("bob", "example.org"))
    db.set_password("alice", "a new password", allow_weak=True)
    assert path.read_text().startswith("alice@example.org scrypt$")
    assert db.check_password(ALICE, "a new password")



def test_a_dovecot_user_costs_what_an_unknown_user_and_a_hub_user_cost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The work of a wrong password, counted (not timed): one scrypt of
    the hub's parameters and one SHA512-CRYPT of 5000 rounds, whoever
    the user is, so the time of a refusal says nothing about who exists
    or which hash a user has."""
    from txmailhub import password_hash, sha_crypt

    work: list[tuple] = []
    real_scrypt, real_crypt = password_hash.hashlib.scrypt, sha_crypt.sha512_crypt

    def scrypt(password: bytes, **kw: int) -> bytes:
        work.append(("scrypt", kw["n"], kw["r"], kw["p"]))
        return real_scrypt(password, **kw)

    def crypt(password: bytes, salt: str, rounds: int = 5000, named: bool = False) -> str:
        work.append(("sha512-crypt", rounds))
        return real_crypt(password, salt, rounds, named)

    path = tmp_path / "users"
    path.write_text(f"alice {{SHA512-CRYPT}}{sha512_crypt(b'old pw', 'abcdefgh')}\n"
                    f"bob {password_hash.hash_password('bobs pw')}\n")
    db = UsersDB(str(path), "example.org")
    monkeypatch.setattr(password_hash.hashlib, "scrypt", scrypt)
    monkeypatch.setattr(sha_crypt, "sha512_crypt", crypt)
    costs = []
    for user in ("alice", "bob", "carol"):
        work.clear()
        assert not db.check_password(Address(user, "example.org"), "wrong")
        costs.append(sorted(work))
    assert costs[0] == costs[1] == costs[2] == [("scrypt", 2**14, 8, 1), ("sha512-crypt", 5000)]
