"""The catalog of every reply the SMTP server sends.

Owns the reply codes, RFC 3463 enhanced status codes and texts.  The
server engine, the Twisted adapter, ``txmailhub.delivery`` and the tests
all use these constants (or the small functions below for replies that
carry a name or a number), so there is no ``"250 OK"`` literal anywhere
else.  Must not contain logic beyond formatting.
"""

from __future__ import annotations

import errno
from functools import lru_cache

from txmailhub import __version__
from txmailhub.logsafe import loggable
from txmailhub.smtp.reply import Reply

# --- positive -------------------------------------------------------------
OK = Reply.of(250, "2.0.0", "OK")
RESET = Reply.of(250, "2.0.0", "Reset state")
SENDER_OK = Reply.of(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply.of(250, "2.1.5", "Recipient OK")
DATA_START = Reply.of(354, None, 'Enter mail, end with "." on a line by itself')
TLS_READY = Reply.of(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCEEDED = Reply.of(235, "2.7.0", "Authentication successful")
# 2.0.0, not 2.1.5: X.1.5 says "destination address valid" (RFC 3463
# 3.2), and this answer is given exactly when nothing was verified
CANNOT_VRFY = Reply.of(
    252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
# EXPN of an address in another domain (RFC 5321 3.5.3): nothing to expand
# here (2.0.0, as CANNOT_VRFY: nothing was verified)
CANNOT_EXPN = Reply.of(
    252, "2.0.0", "Cannot EXPN an address of another domain, but will accept message"
    " and attempt delivery"
)
# EXPN switched off ([smtp] expn = false): RFC 5321 7.3 has a site that
# disables VRFY or EXPN answer 252, "rather than a code that could be
# confused with successful or unsuccessful verification" (2.0.0, as above)
EXPN_DISABLED = Reply.of(
    252, "2.0.0", "Cannot EXPN here, but will accept message and attempt delivery"
)
# RFC 6531 3.7.4.2: the answer would need UTF-8 and the client did not
# add SMTPUTF8 to its VRFY/EXPN (X.6.8, the code RFC 6531 registers).
VRFY_NEEDS_SMTPUTF8 = Reply.of(
    252, "2.6.8", "The mailbox needs a UTF-8 reply: VRFY ... SMTPUTF8 shows it;"
    " will accept message and attempt delivery"
)
EXPN_NEEDS_SMTPUTF8 = Reply.of(
    550, "5.6.8", "The mailboxes need a UTF-8 reply: EXPN ... SMTPUTF8 shows them"
)
BYE = Reply.of(221, "2.0.0", "Bye")
# Per-recipient outcomes of txmailhub.delivery.accept_message.
DELIVERED = Reply.of(250, "2.0.0", "Delivered")
QUEUED = Reply.of(250, "2.0.0", "Queued for delivery")
# RFC 4954: a 334 carries base64 text only (no enhanced code).
AUTH_CONTINUE = Reply.of(334, None, "")
AUTH_USERNAME = Reply.of(334, None, "VXNlcm5hbWU6")  # "Username:"
AUTH_PASSWORD = Reply.of(334, None, "UGFzc3dvcmQ6")  # "Password:"

# --- transient ------------------------------------------------------------
TIMEOUT = Reply.of(421, "4.4.2", "Idle timeout, closing connection")
DATA_TOO_SLOW = Reply.of(421, "4.4.2", "Message data too slow, closing connection")
TOO_MANY_ERRORS = Reply.of(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = Reply.of(421, "4.3.2", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_YOU = Reply.of(
    421, "4.7.0", "Too many connections from your address, try again later"
)
AUTH_TOO_MANY_FAILURES = Reply.of(
    421, "4.7.0", "Too many authentication failures, closing connection"
)
LOCAL_ERROR = Reply.of(451, "4.3.0", "Local error in processing, try again later")
# A recipient missing from a users or aliases file changed a moment ago,
# which may have been read half-written (rewritten in place): not known
# to be unknown, so not 550 5.1.1.  451 (local error in processing: the
# hub's own state) with X.3.0, the mail system's status (RFC 3463 3.4):
# not X.1.1, which RFC 3463 says is useful only as a permanent failure,
# nor X.2.0, which speaks of a mailbox that exists.
MAILBOXES_CHANGING = Reply.of(451, "4.3.0", "Mailbox list is being updated, try again later")
SESSION_ERROR = Reply.of(421, "4.3.0", "Local error in processing, closing connection")
STORAGE_FULL = Reply.of(452, "4.3.1", "Insufficient system storage, try again later")
# [hub] mailbox_quota at RCPT: temporary (RFC 3463 X.2.2), so the sender's
# server keeps the message and retries while the user makes room
MAILBOX_FULL = Reply.of(452, "4.2.2", "Mailbox full, try again later")
# [hub] mailbox_quota at RCPT, MAIL ... SIZE= over the quota itself: no
# room the user makes can take it, so permanent (RFC 3463 X.2.3, the
# per-mailbox message length limit, "useful only as a permanent error").
# 550, not 552: some clients take any 552 at RCPT as a 452 (RFC 5321
# 4.5.3.1.10 asks that for its old "too many recipients" meaning;
# txmailhub.smtp.client does it for every 552 but one whose X.3.4 or
# X.2.3 refuses the size, RFC 1870 6.4)
MESSAGE_OVER_QUOTA = Reply.of(550, "5.2.3", "Message too big for this mailbox")
QUEUE_UNAVAILABLE = Reply.of(
    451, "4.3.0", "Relaying is not available yet on this server, try again later"
)
TOO_MANY_RECIPIENTS = Reply.of(452, "4.5.3", "Too many recipients")
AUTH_TEMPORARY = Reply.of(454, "4.7.0", "Temporary authentication failure")

# --- permanent: syntax and sequence ----------------------------------------
# X.5.2, not X.5.1: RFC 3463 3.6 gives X.5.2 to a command "not interpreted
# ... because the command is unrecognized" and keeps X.5.1 for one "out of
# sequence or unsupported" (the 503s, and the 502s of a command known and
# not served), so a client tells "no such verb" from "not now"/"not here"
UNKNOWN_COMMAND = Reply.of(500, "5.5.2", "Command unrecognized")
LINE_TOO_LONG = Reply.of(500, "5.5.2", "Line too long")
AUTH_LINE_TOO_LONG = Reply.of(500, "5.5.6", "Authentication exchange line is too long")
NUL_IN_COMMAND = Reply.of(500, "5.5.2", "NUL character in command")
# RFC 5321 2.3.8: a line ends with CRLF and "MUST NOT recognize ... any
# other character or character sequence as a line terminator"; a CR left
# in a command line (``NOOP\r\r\n``: a client that converts line ends
# twice) is refused, as message data refuses one (MESSAGE_BARE_CR_LF)
BARE_CR_IN_COMMAND = Reply.of(
    500, "5.5.2", "Bare CR in command (RFC 5321 2.3.8): end each line with CRLF"
)
ERROR_PROCESSING = Reply.of(500, "5.5.2", "Syntax error")
SYNTAX_ARGUMENT = Reply.of(501, "5.5.4", "Syntax error in parameters or arguments")
# RFC 2034 3 (4) exempts "any response to HELO or EHLO" from the enhanced
# code (an exemption, not a ban); the hub takes it for all of them, this
# 501 as the 250 to EHLO, whose first line RFC 5321 4.1.1.1's ehlo-ok-rsp
# starts with the domain
HELO_SYNTAX = Reply.of(501, None, "Syntax: HELO or EHLO and a domain name")
# the same exemption for a name that is not UTF-8: its 501 answers HELO
# or EHLO as HELO_SYNTAX does, where INVALID_UTF8 would bring a code
HELO_INVALID_UTF8 = Reply.of(501, None, "Invalid UTF-8 in the HELO or EHLO name")
# RFC 3463: X.1.7 is a bad sender's address, X.1.3 a bad destination's
SYNTAX_ADDRESS = Reply.of(501, "5.1.7", "Bad address syntax")
SYNTAX_RECIPIENT = Reply.of(501, "5.1.3", "Bad recipient address syntax")
# an ESMTP parameter where the path belongs, without brackets
# (``MAIL FROM: SIZE=100``): the client left the path out; not read as a
# bare local part (smtp/_parse.py)
PATH_MISSING = Reply.of(
    501, "5.1.7", "Sender address missing before the parameters; a null sender is MAIL FROM:<>"
)
RECIPIENT_PATH_MISSING = Reply.of(
    501, "5.1.3", "Recipient address missing before the parameters; use RCPT TO:<address>"
)
# RFC 5321 4.5.3.1.10's "501 Path too long", with the enhanced code of a
# bad address (RFC 3463 has none for a long one): a path over MAX_PATH
# octets, or a UTF-8 recipient whose escaped form no delivery report line
# could hold (smtp/_parse.py).  X.1.3 the destination's, X.1.7 the sender's
PATH_TOO_LONG = Reply.of(501, "5.1.3", "Path too long")
SENDER_PATH_TOO_LONG = Reply.of(501, "5.1.7", "Path too long")
INVALID_UTF8 = Reply.of(501, "5.5.2", "Invalid UTF-8 in command")
AUTH_INVALID_BASE64 = Reply.of(501, "5.5.2", "Invalid base64 data")
AUTH_CANCELLED = Reply.of(501, "5.0.0", "Authentication cancelled")
# RFC 4954 4 answers a response it cannot decode with 501 5.5.2; one that
# decodes to no message of the mechanism (an empty line, or "=" as the
# initial response, at any step of PLAIN or LOGIN; a PLAIN message
# without its two NULs or with an empty user or password, RFC 4616 2's
# grammar) cannot be read either, and is refused the same way: at once,
# no password was tried
AUTH_MALFORMED = Reply.of(501, "5.5.2", "Empty or malformed authentication response")
COMMAND_NOT_IMPLEMENTED = Reply.of(502, "5.5.1", "Command not implemented")
TURN_REFUSED = Reply.of(502, "5.5.1", "TURN is not supported")
SEND_REFUSED = Reply.of(502, "5.5.1", "SEND is not supported (no terminal delivery); use MAIL")
STARTTLS_ARGUMENT = Reply.of(501, "5.5.4", "STARTTLS takes no argument")
# STARTTLS where EHLO does not offer it (no [tls]): not RFC 3207 4's 454
# "TLS not available due to temporary reason" -- nothing here is temporary,
# and a client told 4xx tries again later to be told the same -- but a
# command recognized but not implemented here (RFC 5321 4.2.4: 502, and
# EHLO "MUST NOT list" what is answered 502; RFC 3463 3.6: X.5.1, a
# command "out of sequence or unsupported").  A configured TLS is never unusable for a
# while: a pair that cannot be loaded stops the start, and one renewed
# badly at run time leaves the old one serving (txmailhub.tls.ReloadingTLS)
STARTTLS_NOT_OFFERED = Reply.of(502, "5.5.1", "STARTTLS not offered: no TLS on this server")
TLS_ALREADY = Reply.of(503, "5.5.1", "TLS already active")
BAD_SEQUENCE = Reply.of(503, "5.5.1", "Bad sequence of commands")
HELO_REQUIRED = Reply.of(503, "5.5.1", "Send HELO or EHLO first")
MAIL_NESTED = Reply.of(503, "5.5.1", "Sender already specified")
MAIL_NEEDED = Reply.of(503, "5.5.1", "Need MAIL command first")
RCPT_NEEDED = Reply.of(503, "5.5.1", "Need RCPT command first")
DATA_NO_RECIPIENTS = Reply.of(554, "5.5.1", "No valid recipients")
AUTH_ALREADY = Reply.of(503, "5.5.1", "Already authenticated")
AUTH_NOT_AVAILABLE = Reply.of(503, "5.5.1", "AUTH not available")
# RFC 4954 4: "The AUTH command is not permitted during a mail transaction"
AUTH_IN_TRANSACTION = Reply.of(503, "5.5.1", "AUTH not permitted during a mail transaction")
BDAT_AFTER_DATA = Reply.of(503, "5.5.1", "Cannot mix DATA and BDAT")
AUTH_THROTTLED = Reply.of(
    454, "4.7.0", "Too many failed logins from your address, try again later"
)
TOO_MANY_HOPS = Reply.of(
    554, "5.4.6", "Too many Received fields: a mail loop (RFC 5321 6.3)"
)
# RFC 3030 2: a chunk the client pipelined after a BDAT that failed
BDAT_DISCARDED = Reply.of(503, "5.5.1", "Chunk discarded: an earlier chunk failed")
RCPT_AFTER_BDAT = Reply.of(503, "5.5.1", "No RCPT once BDAT has started; RSET to start over")
BDAT_BAD_SIZE = Reply.of(501, "5.5.4", "BDAT needs a chunk size and optional LAST")
AUTH_MECHANISM_UNKNOWN = Reply.of(504, "5.5.4", "Unrecognized authentication mechanism")
PARAM_NOT_RECOGNIZED = Reply.of(555, "5.5.4", "Parameter not recognized")
PARAM_SYNTAX = Reply.of(501, "5.5.4", "Invalid parameter value")
# RFC 6531 3.5: a recipient that needs SMTPUTF8 is "mailbox name not
# allowed" (553), a sender is "mailbox unavailable" (550); both X.6.7.
SMTPUTF8_NOT_DECLARED = Reply.of(
    553, "5.6.7", "Non-ASCII address requires SMTPUTF8 on MAIL FROM"
)
SMTPUTF8_NOT_DECLARED_SENDER = Reply.of(
    550, "5.6.7", "Non-ASCII address requires SMTPUTF8 on MAIL FROM"
)

# --- permanent: policy ----------------------------------------------------
AUTH_REQUIRED = Reply.of(530, "5.7.0", "Authentication required")
AUTH_TLS_REQUIRED = Reply.of(538, "5.7.11", "Encryption required for requested authentication")
AUTH_FAILED = Reply.of(535, "5.7.8", "Authentication credentials invalid")
UNKNOWN_USER = Reply.of(550, "5.1.1", "No such user here")
# a user whose name no Maildir folder can have (a users file line written
# by hand: "a/b", or over the file system's 255 octets): no delivery to it
# can ever work until the user is renamed.  RFC 3463 X.3.5, "system
# incorrectly configured": the hub's fault, for good, not the sender's
MAILBOX_NAME_UNUSABLE = Reply.of(550, "5.3.5", "Mailbox name cannot be stored on this system")
RELAY_DENIED = Reply.of(550, "5.7.1", "Relaying denied")
# RFC 6409 4.1, 4.2: an MSA refuses a domain that is not fully qualified with 554
SENDER_NOT_QUALIFIED = Reply.of(554, "5.1.8", "Sender domain is not fully qualified")
RECIPIENT_NOT_QUALIFIED = Reply.of(554, "5.1.2", "Recipient domain is not fully qualified")
# RFC 6409 4.2 and 5.1: the MSA that changes a message makes sure the
# domains of its address header fields are fully qualified (554 after the
# data); X.6.0, the content is what is wrong
HEADER_DOMAIN_NOT_QUALIFIED = Reply.of(
    554, "5.6.0", "A domain in an address header field is not fully qualified"
)
SIZE_EXCEEDS_LIMIT = Reply.of(552, "5.3.4", "Message size exceeds fixed maximum message size")
MESSAGE_TOO_BIG = SIZE_EXCEEDS_LIMIT
MESSAGE_LINE_TOO_LONG = Reply.of(
    500, "5.5.2", "Line too long in message data (RFC 5321 4.5.3.1.6), message refused"
)
MESSAGE_BARE_CR_LF = Reply.of(
    550, "5.6.11", "Bare CR or LF in message data is not allowed (RFC 5321 2.3.8)"
)


# --- replies that carry a name or a number ---------------------------------
def greeting(hostname: str) -> Reply:
    """The 220 banner, without an enhanced status code.  RFC 2034 does not
    forbid one here: it asks for the code on "all 2xx, 4xx, and 5xx SMTP
    responses other than the initial greeting and any response to HELO or
    EHLO" (3 (4), again in 4), an exemption.  The hub takes it because the
    greeting comes before EHLO -- no client has seen ENHANCEDSTATUSCODES
    yet -- and because RFC 5321 4.2's Greeting is ``"220 " (Domain /
    address-literal)``: the server's name comes first, where a client that
    reads it would find a status code instead."""
    return Reply.of(220, None, f"{hostname} ESMTP txmailhub ready")


def shutting_down(hostname: str) -> Reply:
    return Reply.of(421, "4.3.2", f"{hostname} Service shutting down")


@lru_cache(maxsize=64)
def closing(reply: Reply, hostname: str) -> Reply:
    """``reply``, a 421 the server closes the session with, naming the
    server first the way RFC 5321 4.2.3 writes it (``421 <domain> Service
    not available``): a client that relays through several hops logs
    which one gave up on it."""
    return Reply.of(reply.code, reply.status, *(f"{hostname} {line}" for line in reply.lines))


def bye(hostname: str) -> Reply:
    return Reply.of(221, "2.0.0", f"{hostname} closing connection")


def _echo(name: str) -> str:
    """The client's HELO name as we echo it: printable ASCII (RFC 5321
    4.2's textstring; anything else escaped, so that an escape sequence
    sent as a name does not reach the client's terminal or logs through
    us), short enough that the reply line stays within RFC 5321's 512
    octets (4.5.3.1.5)."""
    if not (name.isascii() and name.isprintable()):
        return loggable(name, _ECHO_MAX, ascii_only=True)  # never cuts an escape
    if len(name) <= _ECHO_MAX:
        return name
    return name[: _ECHO_MAX - 3] + "..."


_ECHO_MAX = 200  # octets; with a 255-octet hostname the line is under 512
#: RFC 5321 4.5.3.1.5: a reply line, its code and CRLF included
_LINE_MAX = 512


def hello(hostname: str, client: str) -> Reply:
    """The HELO reply (no enhanced code: the client did not ask for ESMTP)."""
    return Reply.of(250, None, f"{hostname} Hello {_echo(client)}, pleased to meet you")


def ehlo(hostname: str, client: str, keywords: list[str]) -> Reply:
    return Reply.of(250, None, f"{hostname} Hello {_echo(client)}", *keywords)


def _echo_address(address: str, room: int) -> str:
    """``address`` as a reply line echoes it in ``room`` octets (what the
    line leaves of RFC 5321's 512, CRLF included, 4.5.3.1.5): whole when
    it fits, else with its middle cut out as ``...``.  A path is at most
    256 octets, but a bare local part is qualified with the primary domain
    (up to 253 octets, more as UTF-8 U-labels): 256 + 1 + 253 octets made
    a 540-octet ``250`` line.  What is kept is the start of the address and
    its ``@domain`` -- the part the hub added when it qualified a bare
    name -- or, for a domain too long for that, as much of its end as
    leaves ``_HEAD_MIN`` octets for the start; the echo is a courtesy, the code and status say what
    happened.  Octets, not characters, and never a UTF-8 character cut in
    two."""
    if len(address) <= room // 4:  # nearly every address: no encoding
        return address
    data = address.encode("utf-8")
    if len(data) <= room:
        return address
    room -= len("...")
    at = address.rfind("@")
    tail = address[at:].encode("utf-8") if at > 0 else b""
    if len(tail) > room - _HEAD_MIN:
        tail = tail[len(tail) - (room - _HEAD_MIN):]
    head = data[: room - len(tail)]
    # "ignore": a character cut at either end is left out, not mangled
    return head.decode("utf-8", "ignore") + "..." + tail.decode("utf-8", "ignore")


# the octets of an address's start a cut echo keeps at least (a local
# part's longest, RFC 5321 4.5.3.1.1)
_HEAD_MIN = 64


def _room(line: str) -> int:
    """What ``line`` (its text around an echoed address, code and status
    included) leaves of a 512-octet reply line for the address."""
    return _LINE_MAX - len(line.encode("utf-8")) - len("\r\n")


_SENDER_ROOM = _room("250 2.1.0 <>... Sender OK")
_RECIPIENT_ROOM = _room("250 2.1.5 <>... Recipient OK")
# a line of its own in a VRFY or EXPN reply ("250-" or "553-5.1.4 " alike)
_LISTED_ROOM = _room("250 2.1.5 <>")
_FORWARDED_ROOM = _room("251 2.1.5 User not local; will forward to <>")


def sender_ok(sender: str) -> Reply:
    return Reply.of(250, "2.1.0", f"<{_echo_address(sender, _SENDER_ROOM)}>... Sender OK")


def recipient_ok(recipient: str) -> Reply:
    return Reply.of(250, "2.1.5",
                    f"<{_echo_address(recipient, _RECIPIENT_ROOM)}>... Recipient OK")


def header_domain_not_qualified(*domains: str) -> Reply:
    """``HEADER_DOMAIN_NOT_QUALIFIED`` naming the domains: the user whose
    client refused to send needs to know which addresses to correct, all
    of them at once, and the message's text is not in front of them (each
    escaped and cut as a HELO name is, ``_echo``).  An empty domain
    (``a@``) would name nothing: the reply says what the user can look for
    instead.  The names end in ``...`` where the next would take the line
    past RFC 5321's 512 octets (4.5.3.1.5)."""
    named = [_echo(d) if d else 'an address ends in "@"' for d in domains]
    text = (HEADER_DOMAIN_NOT_QUALIFIED.lines[0] if len(named) < 2
            else "Domains in address header fields are not fully qualified")
    # "554 5.6.0 " and CRLF around the text
    room = _LINE_MAX - len("554 5.6.0 ") - len(text) - len(": ") - 2
    shown: list[str] = []
    # all of them when they fit: a short last name can fit where the
    # ", ..." kept free for the names after the one before it would not
    fits = len(", ".join(named)) <= room
    for name in named:
        used = sum(len(n) + 2 for n in shown)  # each with its ", "
        if used + len(name) + (0 if fits else len(", ...")) > room:
            shown.append("...")
            break
        shown.append(name)
    return Reply.of(554, "5.6.0", f"{text}: {', '.join(shown)}")


def accepted(queue_id: str) -> Reply:
    return Reply.of(250, "2.0.0", f"{queue_id} Message accepted for delivery")


def bdat_chunk(size: int) -> Reply:
    return Reply.of(250, "2.0.0", f"{size} octets received")


def _bracketed(address: str) -> str:
    """``<address>`` on a line of its own in a VRFY or EXPN reply, within
    512 octets (``_echo_address``)."""
    return f"<{_echo_address(address, _LISTED_ROOM)}>"


def vrfy_found(address: str) -> Reply:
    return Reply.of(250, "2.1.5", _bracketed(address))


def vrfy_forwarded(address: str) -> Reply:
    """The 251 to VRFY of a name the hub forwards to ``address``, in another
    domain (an alias, or a chain of them, with that one final target).  RFC
    5321 3.5.3 keeps 250 for an address "actually verified", and points VRFY
    at 3.4's 251 for an address "recognized" that "would be forwarded"; the
    text is 4.2.2's.  ``2.1.5``: RFC 3463 3.2's X.1.5 says "this mailbox
    address as specified was valid" -- the name asked about, which is the
    hub's own and takes mail (RCPT to it is ``250 2.1.5`` too); what the
    remote domain makes of the target is not claimed, the 251 says so."""
    return Reply.of(251, "2.1.5", "User not local; will forward to "
                    + f"<{_echo_address(address, _FORWARDED_ROOM)}>")


def vrfy_ambiguous(addresses: list[str]) -> Reply:
    return Reply.of(553, "5.1.4", "Ambiguous; possibilities are",
                    *(_bracketed(a) for a in addresses))


def expn_found(addresses: list[str]) -> Reply:
    return Reply.of(250, "2.1.5", *(_bracketed(a) for a in addresses))


def help_text(commands: list[str]) -> Reply:
    """The 214 to HELP.  It names the software and its version: RFC 5321
    7.5 asks that they be available "in some way to other network hosts",
    and names HELP as a place for them (the greeting gives the name only)."""
    return Reply.of(
        214,
        "2.0.0",
        "Commands supported:",
        " ".join(commands),
        f"txmailhub {__version__}; see RFC 5321; report problems to postmaster",
    )


def local_failure(error: BaseException) -> Reply:
    """The reply for a message the hub could not store because of ``error``:
    ``452 4.3.1`` when the disk (or a quota) is full (RFC 5321 4.2.3, RFC
    3463 X.3.1), ``451 4.3.0`` otherwise."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return STORAGE_FULL
    return LOCAL_ERROR
