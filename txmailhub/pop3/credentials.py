"""The APOP credentials (RFC 1939 section 7) for twisted.cred.

The client proves it knows the shared secret by sending
``md5(timestamp + secret)`` for the timestamp of this connection's
greeting.  The checker looks the stored secret up and hands it to
``checkPassword``; the digest is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from twisted.cred.credentials import IUsernameHashedPassword
from zope.interface import implementer

__all__ = ["APOPCredentials"]


@implementer(IUsernameHashedPassword)
class APOPCredentials:
    """``username`` as the client typed it, the greeting's ``timestamp``
    and the client's lower-case hex ``digest`` (all bytes)."""

    def __init__(self, username: bytes, timestamp: bytes, digest: bytes) -> None:
        self.username = username
        self.timestamp = timestamp
        self.digest = digest

    def checkPassword(self, password: bytes | str) -> bool:
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = hashlib.md5(self.timestamp + password).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest)
