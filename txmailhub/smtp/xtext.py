"""The encodings of DSN parameter values and notice address fields.

Owns RFC 3461's xtext (``+HH``: ENVID, ORCPT of type ``rfc822``, AUTH=)
and RFC 6533's utf-8-addr-xtext (``\\x{HEX}``: ORCPT of type ``utf-8``,
and the ``utf-8;`` address fields of a delivery-status notice), both ways,
and RFC 6533's utf-8-addr-unitext, the 8-bit form a global-delivery-status
notice writes.
One module for the server, which decodes what clients send, and for the
client and the notices, which encode what goes out: the two sides must
agree on every escape.
"""

from __future__ import annotations

import re

from txmailhub.errors import RemoteProtocolError
from txmailhub.smtp import replies

__all__ = ["utf8_addr_decode", "utf8_addr_encode", "utf8_addr_unitext", "xtext_decode",
           "xtext_encode"]

_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
# RFC 6533 3: QCHAR is printable ASCII less "+", "=" and "\"; QUCHAR adds
# UTF-8 (raw, only where SMTPUTF8 lets it through: the caller's business)
# (HEXPOINT's digits are RFC 5234 HEXDIGs: "a" to "f" too, ABNF strings
# being case-insensitive; we write capitals)
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")
_QUCHARS = re.compile(r"[^\x00-\x20+=\\\x7f-\x9f]*\Z")
# the 2-digit HEXPOINTs below 0x80: the characters QCHAR leaves out
_TWO_DIGIT = frozenset([*range(0x01, 0x0A), *range(0x10, 0x1A), 0x20, 0x2B, 0x3D, 0x5C, 0x7F])


def _bad() -> RemoteProtocolError:
    return RemoteProtocolError(replies.PARAM_SYNTAX)


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext (``+HH`` escapes of UTF-8 octets); 501 on bad
    syntax or octets that are not UTF-8 (never a silent U+FFFD)."""
    if not _XTEXT.match(value):
        raise _bad()
    if "+" not in value:
        return value
    raw = _XTEXT_HEX.sub(lambda m: "\x00" + m.group(1), value)  # mark, then decode
    out = bytearray()
    for i, part in enumerate(raw.split("\x00")):
        if i:
            out.append(int(part[:2], 16))
            part = part[2:]
        out += part.encode("ascii")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad() from None


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext: printable ASCII except "+" and "=", the rest as +HH
    (of its UTF-8 octets)."""
    out = []
    for ch in value:
        if 33 <= ord(ch) <= 126 and ch not in "+=":
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _hexpoint_ok(digits: str) -> bool:
    """RFC 6533's HEXPOINT: the shortest form of a scalar value, 2 digits
    at least (``\\x{E9}``, ``\\x{20AC}``), no surrogates."""
    cp = int(digits, 16)
    n = len(digits)
    if n == 2:
        return cp in _TWO_DIGIT or cp >= 0x80
    if n == 3:
        return cp >= 0x100
    if n == 4:
        return cp >= 0x1000 and not 0xD800 <= cp <= 0xDFFF
    if n == 5:
        return cp >= 0x10000
    return 0x100000 <= cp <= 0x10FFFF


def utf8_addr_decode(value: str) -> str:
    """RFC 6533 utf-8-addr-xtext (or -unitext, raw UTF-8 beside the
    escapes) -> the address it stands for; 501 on bad syntax."""
    if not _QUCHARS.match(_EMBEDDED.sub("", value)):
        raise _bad()
    if "\\" not in value:
        return value
    for m in _EMBEDDED.finditer(value):
        if not _hexpoint_ok(m.group(1)):
            raise _bad()
    return _EMBEDDED.sub(lambda m: chr(int(m.group(1), 16)), value)


def utf8_addr_encode(address: str) -> str:
    """An address as RFC 6533 utf-8-addr-xtext: 7-bit, every character
    outside QCHAR as ``\\x{HEX}``."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):02X}}}" for c in address
    )


def utf8_addr_unitext(address: str) -> str:
    """An address as RFC 6533 utf-8-addr-unitext: UTF-8 as it is, only
    what QUCHAR leaves out as ``\\x{HEX}``.

    QUCHAR bars SP, "+", "=", "\\" and the controls: with those escaped a
    reader decoding the field (``utf8_addr_decode``) gets the address back
    whatever it holds, a literal ``\\x{E9}`` included, and an address
    without them is written exactly as it is.  A non-ASCII character that
    is not printable -- a C1 control, a line or paragraph separator, a
    format character -- is escaped too: a reader splitting lines as
    Unicode does would cut the field there."""
    return "".join(
        c if ("!" <= c <= "~" and c not in "+=\\") or (c > "\x7f" and c.isprintable())
        else f"\\x{{{ord(c):02X}}}"
        for c in address
    )
