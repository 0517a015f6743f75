"""Password hashes: how a password is hashed, checked and judged.

scrypt from the standard library (``hashlib.scrypt``; N=2^14, r=8, p=1,
16-byte salt, 32-byte key).  We chose it over argon2id because it is
memory-hard, standardised (RFC 7914), and needs no compiled dependency: a
small site installs txmailhub with nothing but Python.  The parameters
are stored per hash (``scrypt$N$r$p$salt$key``), so they can be raised
later without invalidating existing users; a stored hash is refused
beyond a bound of work and memory, so a users file cannot make one login
check take minutes.

A users file may also hold SHA512-CRYPT hashes (``$6$...``, as Dovecot's
passwd-file writes them, ``{SHA512-CRYPT}`` before them or not;
``txmailhub.sha_crypt``): checked, never made, so users moved from
Dovecot keep their passwords until ``mailhub user passwd`` gives them
an scrypt hash.  A check of one runs a dummy scrypt as well, and a
check of any other hash a dummy SHA512-CRYPT of Dovecot's 5000 rounds:
a user of either hash takes as long as an unknown user.

Owns the hash format and its limits only: it never sees the users file,
never prepares a password (``txmailhub.precis``) and never logs.
``txmailhub.users`` re-exports its public names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from txmailhub import sha_crypt

__all__ = ["hash_password", "hash_problem", "verify_password"]

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024
# N*r*p: 16x the cost of our own hashes (about a second of CPU here); a
# users file cannot make one login check take minutes.
_MAX_WORK = 16 * _SCRYPT_N * _SCRYPT_R * _SCRYPT_P
# SHA512-CRYPT rounds: about as long as that bound (Dovecot makes 5000)
_MAX_CRYPT_ROUNDS = 1_000_000
_SCHEME = re.compile(r"\{([A-Za-z0-9.-]{1,32})\}")


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$key`` (base64 fields) for ``password``."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
        maxmem=_MAXMEM, dklen=32,
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a stored hash in constant time.

    Every check runs one scrypt and one SHA512-CRYPT, real or dummy (of
    the hub's parameters and Dovecot's 5000 rounds): a user of either
    hash and an unknown user (``_DUMMY_HASH``) take the same time."""
    crypt = sha_crypt.parse(encoded)
    if crypt is not None:
        rounds, named, salt, want_text = crypt
        if rounds > _MAX_CRYPT_ROUNDS:
            return False
        got_text = sha_crypt.sha512_crypt(password.encode("utf-8"), salt, rounds, named)
        _verify_scrypt(password, _DUMMY_HASH)
        return hmac.compare_digest(got_text.rsplit("$", 1)[1].encode(), want_text.encode())
    sha_crypt.sha512_crypt(password.encode("utf-8"), _DUMMY_SALT, sha_crypt.DEFAULT_ROUNDS)
    return _verify_scrypt(password, encoded)


def _verify_scrypt(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt" or int(n) * int(r) * int(p) > _MAX_WORK:
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
            p=int(p), maxmem=_MAXMEM, dklen=len(want),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def hash_problem(encoded: str) -> str | None:
    """Why ``encoded`` can never match a password, or None if it can."""
    crypt = sha_crypt.parse(encoded)
    if crypt is not None:
        if crypt[0] > _MAX_CRYPT_ROUNDS:
            return "the password hash needs more rounds than the hub allows SHA512-CRYPT"
        return None
    fields = encoded.split("$")
    if len(fields) != 6 or fields[0] != "scrypt":
        scheme = _SCHEME.match(encoded)
        if scheme and scheme.group(1).upper() not in ("SHA512-CRYPT", "CRYPT"):
            return (f"the password hash is of scheme {{{scheme.group(1)}}}, which the hub "
                    "does not check (it checks scrypt$N$r$p$salt$key, and "
                    "{SHA512-CRYPT}$6$salt$hash): set a new password with "
                    "`mailhub user passwd`")
        return ("the password hash is not of the form scrypt$N$r$p$salt$key "
                "(nor {SHA512-CRYPT}$6$salt$hash)")
    try:
        n, r, p = (int(x) for x in fields[1:4])
        base64.b64decode(fields[4], validate=True)  # the salt
        key = base64.b64decode(fields[5], validate=True)
    except ValueError:
        return "the password hash has a field that is not a number or not base64"
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not key:
        return "the password hash has impossible scrypt parameters"
    if 128 * r * (n + p + 2) > _MAXMEM:
        return "the password hash needs more memory than the hub allows scrypt"
    if n * r * p > _MAX_WORK:
        return "the password hash needs more work than the hub allows scrypt"
    return None


# A hash of a random password, verified against when the user is unknown so
# that "no such user" and "wrong password" take the same time.
_DUMMY_HASH = hash_password(secrets.token_hex(16))
# the salt of the SHA512-CRYPT a check of any other hash runs as well
_DUMMY_SALT = secrets.token_hex(8)
