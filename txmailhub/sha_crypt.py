"""SHA512-CRYPT (``$6$``), checked only: the hashes a site moving from
Dovecot (``{SHA512-CRYPT}`` in a passwd-file) or from ``/etc/shadow``
brings along, so its users keep their passwords.

The algorithm is Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512"
(the published specification glibc, Dovecot and Python's ``crypt`` follow):
``$6$[rounds=N$]salt$hash``, a salt of at most 16 characters, 5000
rounds unless the hash names others (at least 1000), the 64-octet digest
in the crypt alphabet ``./0-9A-Za-z`` in that specification's order.
The hub never makes such a hash: ``mailhub user passwd`` replaces it
with the hub's own (``txmailhub.password_hash``).

Owns that form only: ``txmailhub.password_hash`` decides which hashes a
users file may hold and bounds their cost.  Never logs.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["DEFAULT_ROUNDS", "PREFIXES", "parse", "sha512_crypt"]

DEFAULT_ROUNDS = 5000
_MIN_ROUNDS, _MAX_ROUNDS = 1000, 999_999_999
#: what Dovecot writes before such a hash in a passwd-file
PREFIXES = ("{SHA512-CRYPT}", "{CRYPT}")
_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# as crypt writes it: rounds in range without a leading zero (what glibc
# and Dovecot compare the whole string against), a salt of 16 octets at most
_FORM = re.compile(r"\$6\$(?:rounds=([1-9][0-9]{3,8})\$)?([^$]{0,16})\$([./0-9A-Za-z]{86})")


def parse(encoded: str) -> tuple[int, bool, str, str] | None:
    """``(rounds, rounds named, salt, hash)`` of a SHA512-CRYPT hash,
    with or without one of ``PREFIXES`` (in any case, as Dovecot reads
    them); ``None`` for any other string, and for one crypt never writes
    (rounds out of range or with a leading zero, a salt over 16 octets),
    which Dovecot never matches either."""
    for prefix in PREFIXES:
        if encoded[:len(prefix)].upper() == prefix:
            encoded = encoded[len(prefix):]
            break
    m = _FORM.fullmatch(encoded)
    if m is None or len(m.group(2).encode("utf-8", "surrogateescape")) > 16:
        return None
    named = m.group(1) is not None
    rounds = int(m.group(1)) if named else DEFAULT_ROUNDS
    if not _MIN_ROUNDS <= rounds <= _MAX_ROUNDS:
        return None
    return rounds, named, m.group(2), m.group(3)


def _repeated(digest: bytes, length: int) -> bytes:
    return (digest * (length // len(digest) + 1))[:length]


def sha512_crypt(password: bytes, salt: str, rounds: int = DEFAULT_ROUNDS,
                 named: bool = False) -> str:
    """The hash ``$6$...`` of ``password`` with ``salt`` (cut to 16
    octets) and ``rounds`` (brought within 1000 to 999999999), as crypt
    makes it from the setting ``$6$[rounds=N$]salt``."""
    rounds = min(max(rounds, _MIN_ROUNDS), _MAX_ROUNDS)
    s = salt.encode("utf-8", "surrogateescape")[:16]
    p = password
    b = hashlib.sha512(p + s + p).digest()
    a = hashlib.sha512(p + s)
    a.update(_repeated(b, len(p)))
    n = len(p)
    while n:
        a.update(b if n & 1 else p)
        n >>= 1
    c = a.digest()
    p_seq = _repeated(hashlib.sha512(p * len(p)).digest(), len(p))
    s_seq = _repeated(hashlib.sha512(s * (16 + c[0])).digest(), len(s))
    for i in range(rounds):
        h = hashlib.sha512(p_seq if i & 1 else c)
        if i % 3:
            h.update(s_seq)
        if i % 7:
            h.update(p_seq)
        h.update(c if i & 1 else p_seq)
        c = h.digest()
    out = []
    for k in range(21):
        x, y, z = c[k], c[k + 21], c[k + 42]
        b2, b1, b0 = ((x, y, z), (y, z, x), (z, x, y))[k % 3]
        w = (b2 << 16) | (b1 << 8) | b0
        for _ in range(4):
            out.append(_ALPHABET[w & 0x3F])
            w >>= 6
    w = c[63]
    for _ in range(2):
        out.append(_ALPHABET[w & 0x3F])
        w >>= 6
    head = f"$6$rounds={rounds}$" if named else "$6$"
    return f"{head}{s.decode('utf-8', 'surrogateescape')}${''.join(out)}"
