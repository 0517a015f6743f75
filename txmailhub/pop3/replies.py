"""POP3 replies as values, and the catalog of the ones txmailhub sends.

A POP3 status line is ``+OK text`` or ``-ERR [CODE] text``; the bracketed
response code comes from RFC 2449 (``IN-USE``, ``LOGIN-DELAY``,
``SYS/TEMP``, ``SYS/PERM``), RFC 3206 (``AUTH``) and RFC 6856 (``UTF8``).  The engine
(``txmailhub.pop3.server``) and the tests share the constants below, so
no status line is spelled twice.  Replies that carry a number (``STAT``,
``LIST n``...) are built by the small functions at the end.

This module owns wording only: it knows nothing of states or sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "POP3Reply",
    "ok",
    "err",
    "TERMINATOR",
]

TERMINATOR = b".\r\n"
"""The line ending every multi-line response (RFC 1939 section 3)."""


@dataclass(frozen=True, slots=True)
class POP3Reply:
    """One status line: positive or negative, an optional response code, text."""

    positive: bool
    text: str
    code: str | None = None

    def to_bytes(self) -> bytes:
        head = "+OK" if self.positive else "-ERR"
        code = f" [{self.code}]" if self.code else ""
        text = f" {self.text}" if self.text else ""
        return f"{head}{code}{text}\r\n".encode("utf-8", "replace")

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8").rstrip("\r\n")


def ok(text: str = "") -> POP3Reply:
    return POP3Reply(True, text)


def err(text: str, code: str | None = None) -> POP3Reply:
    return POP3Reply(False, text, code)


# -- AUTHORIZATION ---------------------------------------------------------

# The host name never first: with RESP-CODES, text that starts with "["
# is a response code (RFC 2449 8), and a hostname may be an address literal
GREETING_TEXT = "POP3 server {hostname} ready {timestamp}"
GREETING_SHORT_TEXT = "POP3 server ready {timestamp}"
USER_ACCEPTED = ok("Send your password")
LOGGED_IN_TEXT = "Logged in, {count} ({octets} octets)"
AUTH_FAILED = err("Authentication failed", "AUTH")
AUTH_CANCELLED = err("Authentication cancelled")
AUTH_BAD_BASE64 = err("Invalid base64 data in the SASL response")
AUTH_BAD_PLAIN = err("Malformed PLAIN response", "AUTH")
AUTH_UNKNOWN_MECHANISM = err("Unsupported authentication mechanism; use PLAIN")
# the same where PLAIN is refused on the connection (plaintext passwords
# are: see the PLAINTEXT_DISALLOWED replies), so no mechanism is offered
AUTH_NO_MECHANISM = err("Unsupported authentication mechanism")
AUTH_MECHANISMS = ok("Supported SASL mechanisms follow")
PLAINTEXT_DISALLOWED = err(
    "Plaintext authentication is disallowed on insecure connections; use STLS or APOP",
    "AUTH",
)
# the same where the greeting offers no APOP (no user has an APOP secret)
PLAINTEXT_DISALLOWED_NO_APOP = err(
    "Plaintext authentication is disallowed on insecure connections; use STLS", "AUTH",
)
# where STLS is not offered either ([tls] is not configured): advice to
# use it sent the client to a command that answers "-ERR STLS is not
# available"; APOP is named where the greeting offers it, else nothing
PLAINTEXT_DISALLOWED_NO_TLS = err(
    "Plaintext authentication is disallowed on insecure connections; use APOP", "AUTH",
)
PLAINTEXT_DISALLOWED_NO_TLS_NO_APOP = err(
    "Plaintext authentication is disallowed on insecure connections", "AUTH",
)
PASS_WITHOUT_USER = err("Send USER first")
TOO_MANY_AUTH_FAILURES = err("Too many authentication failures, closing connection", "AUTH")
TOO_MANY_COMMANDS = err("Too many commands without logging in, closing connection")
TOO_MANY_ERRORS = err("Too many errors, closing connection")
# the hub stops (RESP-CODES is always offered): the last line of a session
# it closes, as Dovecot's "-ERR [SYS/TEMP] Server shutting down."
SHUTTING_DOWN = err("Server shutting down, try again later", "SYS/TEMP")
LOGIN_THROTTLED = err("Too many failed logins from your address, try again later", "SYS/TEMP")
TOO_MANY_CONNECTIONS = err("Too many connections, try again later", "SYS/TEMP")
TOO_MANY_CONNECTIONS_FROM_YOU = err(
    "Too many connections from your address, try again later", "SYS/TEMP"
)
MAILBOX_IN_USE = err("Mailbox is locked by another POP3 session", "IN-USE")
MAILBOX_TEMP_FAILURE = err("Mailbox temporarily unavailable, try again later", "SYS/TEMP")
MAILBOX_PERM_FAILURE = err("Mailbox cannot be opened", "SYS/PERM")
# APOP where the greeting has no timestamp (RFC 1939 7: APOP is optional)
APOP_UNAVAILABLE = err("APOP is not possible on this connection")

STLS_BEGIN = ok("Begin TLS negotiation")
STLS_UNAVAILABLE = err("STLS is not available: TLS is not configured")
STLS_ALREADY_ACTIVE = err("Command not permitted when TLS active")

CAPA_FOLLOWS = ok("Capability list follows")

# RFC 6856: UTF-8 mode and the response language
UTF8_ENABLED = ok("UTF-8 mode enabled")
BAD_USER_NAME = err(
    "Invalid user name: UTF-8 without control or other prohibited characters (RFC 4013)",
    "AUTH",
)
LANG_FOLLOWS = ok("Language listing follows")
LANG_UNKNOWN = err("Unknown language; available: en")

# -- TRANSACTION -----------------------------------------------------------

NOOP = ok("")
SCAN_LISTING_TEXT = "{count} ({octets} octets)"
UIDL_FOLLOWS = ok("Unique-ID listing follows")
NO_SUCH_MESSAGE = err("No such message")
MESSAGE_DELETED = err("Message is deleted")
INVALID_NUMBER = err("Invalid message number")
INVALID_LINE_COUNT = err("Invalid number of lines")
DELETED_TEXT = "Message {number} deleted"
TOP_FOLLOWS = ok("Top of message follows")
MESSAGE_READ_FAILED = err("Message cannot be read", "SYS/TEMP")
# the file is gone from new/ and cur/ under every name: another program
# (Dovecot's IMAP on the same Maildir, a user's mutt) removed it during
# the session.  Not [SYS/TEMP]: asking again will not bring it back
MESSAGE_GONE = err("Message was removed by another program")
# RFC 1939 5: LIST's size is the exact size RETR sends.  A message whose
# octets for this session are not the ones the session gave (its
# downgraded size could not be measured when LIST asked, or another
# program replaced its file since) is not sent at another size: the
# next session lists and sends it as it is then
MESSAGE_SIZE_CHANGED = err("Message is not the size listed, try again later", "SYS/TEMP")
# RFC 6856 2 and 5: an internationalized message is never sent to a client
# that has not issued UTF8 (which is valid only before login)
UTF8_REQUIRED = err(
    "Message has UTF-8 header fields; it needs UTF-8 mode (UTF8 before logging in)", "UTF8"
)

# -- UPDATE and the end of the session ------------------------------------

BYE = ok("Bye")
BYE_UPDATED_TEXT = "Bye ({count} left)"
# RFC 1939 6: "-ERR some deleted messages not removed".  RFC 3206 4: [SYS/PERM]
# when the store refuses for good (no permission): every later QUIT would
# fail alike until an administrator acts; anything else may pass (a disk
# error, a read-only remount, the hub stopping): [SYS/TEMP].
UPDATE_FAILED = err("Some deleted messages were not removed", "SYS/TEMP")
UPDATE_FAILED_PERM = err("Some deleted messages were not removed", "SYS/PERM")

# -- Errors in any state ---------------------------------------------------

UNKNOWN_COMMAND = err("Unknown command")
WRONG_STATE_TEXT = "{command} is not valid in the {state} state"
LINE_TOO_LONG = err("Line too long (at most 255 octets)")
SASL_LINE_TOO_LONG = err("Line too long (at most 4096 octets)")
BAD_SYNTAX_TEXT = "Syntax: {usage}"
BAD_ENCODING = err("Command is not valid ASCII")
# RFC 1939 3: a command ends with CRLF, and its keyword and arguments are
# printable.  A CR anywhere else (``STAT\r\r\n``: line ends converted
# twice) was read into the command: a verb unknown, an argument's CR
# dropped (USER, DELE 1) or kept in a password (a failed login counted).
# Refused, as SMTP refuses one (docs/smtp.rst)
BARE_CR_IN_COMMAND = err("Bare CR in command: end each line with CRLF")
# A NUL is no printable ASCII either (RFC 1939 3): it was read into the
# command like a bare CR (a verb unknown, a NUL kept in a password: a
# failed login counted).  Refused, as SMTP refuses one (500 5.5.2)
NUL_IN_COMMAND = err("NUL character in command")
INTERNAL_ERROR = err("Internal error, try again later", "SYS/TEMP")


# -- replies that carry numbers --------------------------------------------


def greeting(hostname: str, timestamp: str) -> POP3Reply:
    """The greeting; ``timestamp`` is the APOP challenge, or ``""`` where
    APOP is not offered (the greeting then has no ``<...>`` at all)."""
    reply = ok(GREETING_TEXT.format(hostname=hostname, timestamp=timestamp).rstrip())
    if len(reply.to_bytes()) > 512:
        # RFC 2449 4: 512 octets with the CRLF, the greeting too; a long
        # host name (up to 253) is in the APOP timestamp already
        reply = ok(GREETING_SHORT_TEXT.format(timestamp=timestamp).rstrip())
    return reply


def logged_in(count: int, octets: int) -> POP3Reply:
    return ok(LOGGED_IN_TEXT.format(count=messages(count), octets=octets))


def stat(count: int, octets: int) -> POP3Reply:
    # RFC 1939: "+OK nn mm" and nothing else is safe for every client.
    return ok(f"{count} {octets}")


def scan_listing(count: int, octets: int) -> POP3Reply:
    return ok(SCAN_LISTING_TEXT.format(count=messages(count), octets=octets))


def scan_line(number: int, octets: int) -> POP3Reply:
    return ok(f"{number} {octets}")


def unique_id(number: int, uid: str) -> POP3Reply:
    return ok(f"{number} {uid}")


RETR_TEXT = "{octets} octets"


def retr(octets: int) -> POP3Reply:
    return ok(RETR_TEXT.format(octets=octets))


def retr_line(octets: int) -> bytes:
    """``retr(octets).to_bytes()``, formatted straight into bytes: it is
    the status line of every RETR, so it skips the ``POP3Reply`` value."""
    return b"+OK %d octets\r\n" % octets


def language_selected(tag: str, name: str) -> POP3Reply:
    # RFC 6856 3.1: the response starts with the tag of the language chosen
    return ok(f"{tag} Language is now {name}")


def messages(count: int) -> str:
    """"1 message", "2 messages": the replies are read by people too (a
    client's log, a session typed by hand)."""
    return "1 message" if count == 1 else f"{count} messages"


def deleted(number: int) -> POP3Reply:
    return ok(DELETED_TEXT.format(number=number))


def reset(count: int, octets: int) -> POP3Reply:
    return ok(f"Maildrop has {messages(count)} ({octets} octets)")


def bye_updated(count: int) -> POP3Reply:
    return ok(BYE_UPDATED_TEXT.format(count=messages(count)))


def wrong_state(command: str, state: str) -> POP3Reply:
    return err(WRONG_STATE_TEXT.format(command=command, state=state))


def bad_syntax(usage: str) -> POP3Reply:
    return err(BAD_SYNTAX_TEXT.format(usage=usage))
