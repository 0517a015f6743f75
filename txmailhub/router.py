"""Recipient routing: local domains, users and the aliases file.

Owns what an RCPT address means (``Router``, providing
``IRecipientRouter``) and the aliases file format (``parse_aliases``,
``check_aliases_file`` for ``mailhub check``).  It asks the users
database whether a mailbox exists; it never touches mailboxes, the queue
or the network, and decides nothing about relaying (that is the SMTP
server's policy: the router only says which targets are remote).

The aliases file, like /etc/aliases::

    # comment (a line whose first non-blank character is #)
    postmaster: joe
    staff:  joe, ann@example.org,
            bob@elsewhere.test        # continuation lines start with white space
    joe@example.net: joe

A bare name means ``name@<primary domain>``, on either side.  Targets are
local or remote addresses (``<...>`` allowed), or other aliases (nested
to any depth).  Quotes group as in aliases(5): the name ends at the first
``:`` outside them, a target at a ``,`` outside them and outside a
comment's parentheses, and ``"a@b"`` alone is a local part; a line whose
quotes are not closed is skipped, and so is an RFC 5322 group
(``a: team: joe, ann;``).  A quoted local part is keyed as RCPT gives it
(``"joe2"`` is ``joe2``).  A backslash outside quotes escapes nothing
(RFC 5322): the target (or name) holding it is a bad one.  A line ends with LF, CRLF or CR only.
``\\name`` means name's own mailbox, without expanding it further; so
does an alias naming itself (``joe: joe, joe@backup.test``).
Program (``|cmd``), file (``/path``) and ``:include:`` targets are not
supported and reported.  Each alias is expanded once per lookup, so a loop
(``a: b`` / ``b: a``) ends at once and every non-looping target is kept;
duplicates are removed.  A local target that is neither an alias nor a
user is dropped and logged.  A bad line is skipped and logged with
``file:line`` and why; the rest of the file still loads.  The file is
re-read when its inode, size, mtime or ctime changes (one ``stat`` per
lookup), and at every lookup for two seconds after a change, when a
second change in the same clock tick could keep that stamp
(``txmailhub.filestamp``).  In those seconds either file may be one
rewritten in place and read half-written: an address found neither as a
user nor as an alias then, or an alias member found in neither, is
answered ``451 4.3.0`` (try again later), not ``550 5.1.1``.  A file
that cannot be read (a directory in its place, a mode the hub cannot
read, bytes that are not UTF-8) leaves the aliases read last in effect,
logged once; one that cannot be opened for want of descriptors (EMFILE,
ENFILE) is read again at the next lookup, an address found in neither
file answered ``451 4.3.0`` meanwhile.

``postmaster`` (any case) at any local domain always resolves (RFC 5321
4.5.1): to the alias ``postmaster@<that domain>`` if there is one, else
to the user ``postmaster@<that domain>``, else to the primary domain's
postmaster (alias, else its Maildir, which exists even before anyone can
read it over POP3: add ``postmaster: you`` to the aliases file).  A
postmaster alias whose targets are all unknown falls back to that
Maildir too, with a warning.
"""

from __future__ import annotations

import errno
import io
import os
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from txmailhub.address import (
    Address,
    AddressError,
    canonical_address,
    canonical_domain,
    canonical_local,
    dns_name_problem,
    domain_problem,
    parse_address,
)
from txmailhub.address import quoted_end as _quoted_end
from txmailhub.errors import Rejected
from txmailhub.filestamp import FileStamp
from txmailhub.interfaces import IRecipientRouter
from txmailhub.logsafe import loggable, plural, quoted
from txmailhub.regular_file import NotRegularFile, read_regular
from txmailhub.smtp import replies

__all__ = [
    "ALIASES_FILE_MAX",
    "AliasWarning",
    "Aliases",
    "Router",
    "alias_address",
    "alias_loops",
    "alias_target_warnings",
    "alias_warnings",
    "check_aliases_file",
    "file_lines",
    "line_end_warnings",
    "parse_aliases",
    "rcpt_path_octets",
    "split_alias_line",
    "split_targets",
    "unsupported_target",
]

log = Logger()

#: octets an aliases file may hold (``read_regular``'s ``most``): a file of some
#: 100,000 aliases, far more than a hub for small sites has; one larger is
#: refused as one that cannot be read, not held in memory whole
ALIASES_FILE_MAX = 16 * 1024 * 1024

#: errors reading the aliases file that pass (out of the process's or the
#: system's file descriptors, or of memory): the file is read again
_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)

#: errors reading it that may pass with the file unchanged -- a disk or a
#: network file system that fails for a while (EIO, ESTALE, ETIMEDOUT), a
#: lease not given up in time (EWOULDBLOCK): read again at the next
#: lookup, as for a shortage.  Other errors (a mode this user may not
#: read, a folder, a FIFO, a file too large) end with a change of the
#: file, which its stamp (its ctime) shows
_PASSING = (*_SHORTAGES, errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN,
            errno.EWOULDBLOCK, errno.EINTR)

# U+FEFF at the start of a file: the byte-order mark, no text of the file
BOM = "\ufeff"

# what a continuation line starts with: white space, as Postfix's
# aliases(5) says and reads it (C's isspace, a form feed and a vertical
# tab too), not only the blank and tab sendmail takes -- a form feed an
# editor put before a wrapped target would otherwise start a line of
# its own, an alias named after the target
CONTINUATION = " \t\f\v"

# a CR that ends a line on its own, not as part of CRLF
_LONE_CR = re.compile(r"\r(?!\n)")

# an alias name -> its targets; a target is (address, expand?)
Aliases = dict[str, tuple[tuple[Address, bool], ...]]


def parse_aliases(
    text: str,
    primary_domain: str,
    domains: Iterable[str] | None = None,
    filename: str = "aliases",
    lines: dict[str, int] | None = None,
) -> tuple[Aliases, list[str]]:
    """Parse aliases-file text.  Returns the table and one
    ``"<file>:<line>: <why>"`` string per problem (the bad line or target
    is left out, the rest is kept; a target whose domain can be no name in
    DNS is reported and kept: the relay bounces it).  With ``domains``, an alias for a
    domain that is not local is reported too.  ``lines``, when given, is
    filled with the line (from 1) of each alias in the table, by key: what
    ``check`` names its loops and warnings by, as it names the problems."""
    local_domains = {canonical_domain(d) for d in domains} if domains is not None else None
    problems: list[str] = []
    # (first line number, the logical line's pieces): joined once at the
    # end, as adding each continuation to a string copies all before it
    pieces: list[tuple[int, list[str]]] = []
    # a byte-order mark some editors put first (Notepad's "UTF-8 with
    # BOM"): no part of the first alias's name, which would otherwise hold
    # an invisible character no address ever matches
    text = text.removeprefix(BOM)
    for number, raw in enumerate(file_lines(text), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] in CONTINUATION:
            if not pieces:
                problems.append(f"{filename}:{number}: continuation line without an alias "
                                "before it")
                continue
            pieces[-1][1].append(raw.strip())
        else:
            pieces.append((number, [raw.strip()]))
    entries = [(first, " ".join(parts)) for first, parts in pieces]

    table: Aliases = {}
    where: dict[str, int] = {}
    unusable: dict[str, int] = {}  # a name's first line, when it has no usable target
    names: dict[str, str] = {}  # the name as written on the line in effect
    owns: set[int] = set()  # the lines in effect that write the name as RCPT gives it
    for number, line in entries:
        def problem(why: str, number: int = number) -> None:
            problems.append(f"{filename}:{number}: {why}")

        split = split_alias_line(line)
        if split is None:
            # a ':' in the line, but inside a quote or a comment left open
            # (``a"b: joe``): said so, not as a line without one
            why = _scan(line, "")[1] if ":" in line else ""
            if why:
                problem(f"line {quoted(line)}: {why}, so its name has no end (no ':' outside "
                        "it): the line is skipped")
            else:
                problem(f"expected 'name: target, ...', got {quoted(line)}")
            continue
        name_text, targets_text = split
        name_text = name_text.strip()
        if _bare_backslash(name_text):
            problem(f"bad alias name {quoted(name_text)}: {_BACKSLASH}")
            continue
        try:
            name = alias_address(name_text, primary_domain)
        except AddressError as e:
            problem(f"bad alias name: {e}")
            continue
        if _has_comment(name_text):
            problem(f"bad alias name {quoted(name_text)}: {_COMMENT}")
            continue
        key = name.key
        if local_domains is not None and canonical_domain(name.domain) not in local_domains:
            problem(f"alias {quoted(name_text)} is for {name.domain}, which is not a local domain")
            continue
        # written as RCPT gives it (not '"joe2"' for joe2, nor 'a;' for
        # "a;"), keyed as written: the line that got the mail before names
        # were read so, when another spelling was an alias no mail reached
        own = canonical_local(name.local) == canonical_local(
            _written_local(name_text, primary_domain))
        replaces = None
        if key in where:
            if not own or where[key] in owns:
                problem(f"alias {quoted(name_text)} is already defined on line {where[key]}: "
                        "this one is ignored")
                continue
            replaces = where[key]  # in effect instead, if its targets are usable
        items, why = split_targets(targets_text)
        if why:
            # the hub cannot tell where its targets end (aliases(5) readers
            # close what is open at the end of the line): none is taken
            problem(f"alias {quoted(name_text)}: {why}: the line is skipped")
            unusable.setdefault(key, number)
            continue
        if targets_text.rstrip().endswith(";") and any(_group_name(item) for item in items):
            # ``a: team: joe, ann;``: read as targets, "team: joe" is a bad
            # one and "ann;" a local part nobody has; which members were
            # meant is the admin's to say
            problem(f"alias {quoted(name_text)}: {quoted(targets_text.strip())} is an RFC 5322 "
                    "group ('name: address, ...;'), which the file does not read: list the "
                    "targets without the group's name and its ';': the line is skipped")
            unusable.setdefault(key, number)
            continue
        targets: list[tuple[Address, bool]] = []
        for item in items:
            item = item.strip()
            if not item:
                continue
            why = unsupported_target(item)
            if why:
                problem(f"target {quoted(item)} of {quoted(name_text)}: {why}")
                continue
            expand = not item.startswith("\\")
            text_addr = item.lstrip("\\")
            opened, closed = text_addr.startswith("<"), text_addr.endswith(">")
            if opened != closed:
                why = ("its '<' is not closed by a '>'" if opened
                       else "its '>' closes no '<'")
                problem(f"bad target {quoted(item)} of {quoted(name_text)}: {why}")
                continue
            if opened:
                text_addr = text_addr[1:-1]
            if _bare_backslash(text_addr):
                problem(f"bad target {quoted(item)} of {quoted(name_text)}: {_BACKSLASH}")
                continue
            try:
                target = alias_address(text_addr, primary_domain, local_domains=(
                    local_domains or {canonical_domain(primary_domain)}))
            except AddressError as e:
                problem(f"bad target {quoted(item)} of {quoted(name_text)}: {e}")
                continue
            if _has_comment(text_addr):
                problem(f"bad target {quoted(item)} of {quoted(name_text)}: {_COMMENT}")
                continue
            targets.append((target, expand))
            if target.domain.startswith("["):
                continue  # an address literal: no name to judge
            why = dns_name_problem(target.domain)
            if why:
                # kept: the relay bounces it (5.1.2) without asking DNS,
                # as a message already queued for it is
                problem(f"target {quoted(item)} of {quoted(name_text)}: {target.domain} can "
                        f"never be a name in DNS ({why}): mail to it bounces")
                continue
            why = domain_problem(target.domain)
            if why:
                # A name DNS could be asked for, but no domain the hub takes
                # in a path (a fake "xn--" label, a label IDNA2008 refuses):
                # RCPT TO would get 501, so the file should not name it
                # either.  Kept, as above: the relay looks it up as it is.
                problem(f"target {quoted(item)} of {quoted(name_text)}: {target.domain} {why}: "
                        "the hub's SMTP server refuses such an address (501)")
        if not targets:
            problem(f"alias {quoted(name_text)} has no usable target")
            unusable.setdefault(key, number)
            continue
        if key in unusable:
            # The first line of the name is one the hub cannot use: this
            # later one is the alias, where aliases(5) readers take the
            # first and ignore this.  The first line is a problem already;
            # this one is said too, as it is read differently.
            problem(f"alias {quoted(name_text)} is defined on line {unusable[key]} too, a "
                    "line the hub cannot use: this one is in effect instead")
        if replaces is not None:
            problems.append(f"{filename}:{replaces}: alias {quoted(names[key])} is defined on "
                            f"line {number} too, written as RCPT gives it, which is in effect: "
                            "this one is ignored")
        table[key] = tuple(dict.fromkeys(targets))
        where[key] = number
        names[key] = name_text
        if own:
            owns.add(number)
    if lines is not None:
        lines.update(where)
    return table, problems


def file_lines(text: str, keepends: bool = False) -> list[str]:
    """The lines of an aliases file's text, as an editor and aliases(5)
    readers count them: ended by LF, CRLF or a lone CR -- not by what
    else ``str.splitlines`` takes for a line break (a form feed, U+0085,
    U+2028), which would split one line of the file into two aliases and
    put ``check``'s line numbers past the line meant.  Such a character
    is white space inside a line: a problem in a name or target."""
    lines = io.StringIO(text, newline="").readlines()
    if keepends:
        return lines
    return [line.rstrip("\r\n") for line in lines]


def _scan(text: str, stops: str) -> tuple[list[int], str]:
    """The indexes in ``text`` of the characters of ``stops`` that are
    outside a quoted string and outside an RFC 822 comment ``( )``, and
    why the text is not closed (``""``: it is).  In a quoted string a
    backslash escapes the next character, as in RCPT; outside one it
    hides the next character from this scan (see below), and the name or
    target holding it is a bad one (``_BACKSLASH``).  A ``(`` in
    ``stops`` is found, where a comment would start, not read as one."""
    found: list[int] = []
    quote, depth, i, n = False, 0, 0, len(text)
    # at the start of a name or target (nothing but blanks and backslashes
    # since the text's start or the last stop): there a backslash is the
    # ``\name`` of a mailbox not to expand, no escape -- ``\"a;"`` is
    # the quoted mailbox "a;", as ``alias add`` writes it and ``check``
    # advises for an alias keeping a copy, not a quote left open
    start = True
    while i < n:
        c = text[i]
        if start and (c == "\\" or c in " \t\f\v"):
            i += 1
            continue
        start = False
        if quote:
            if c == "\\":
                i += 1
            elif c == '"':
                quote = False
        elif depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == "\\":
            # outside quotes too, as aliases(5) readers take it (Postfix
            # reads ``joe\,x`` as "joe,x"): the next character ends no
            # name or target and opens nothing, so ``joe\(x, ann`` is the
            # bad target ``joe\(x`` (RFC 5322 has no escape outside
            # quotes) and ``ann``, not a comment left open to the end
            i += 1
        elif c == '"':
            quote = True
        elif c in stops:
            found.append(i)
            start = True
        elif c == "(":
            depth += 1
        i += 1
    if quote:
        return found, "a quoted string (\"...\") is not closed"
    if depth:
        return found, "a comment in parentheses is not closed"
    return found, ""


# why a name or target with a comment (``joe(Joe)``) is a bad one: some
# aliases(5) readers drop it, the hub would take it for part of the local
# part -- an address no RCPT gives (501) and no relay's RCPT should carry
_COMMENT = "a comment in parentheses is no part of an address"


# why a name or target with a backslash outside quotes (``joe\(x``) is a
# bad one: RFC 5322 has a backslash escape only in a quoted string (and a
# comment), and RCPT has none outside one either (RFC 5321 4.1.2)
_BACKSLASH = ("a backslash outside quotes escapes nothing in an address (RFC 5322): write the "
              'local part quoted, \\ and " escaped in it ("joe(x")')


def _bare_backslash(text: str) -> bool:
    """Whether ``text`` has a backslash outside a quoted string and a
    comment (where it escapes the next character)."""
    if "\\" not in text:
        return False
    quote, depth, i = False, 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if not quote and not depth:
                return True
            i += 1
        elif quote:
            quote = c != '"'
        elif c == '"':
            quote = True
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        i += 1
    return False


def _group_name(item: str) -> bool:
    """Whether the target ``item`` (as written) starts an RFC 5322 group,
    ``team: joe``: a ``:`` outside quotes after a display name, not in an
    address (``joe@[IPv6:::1]``) or a target the file does not support.
    The line is one when its targets also end with the group's ``;``."""
    item = item.strip()
    if ":" not in item or unsupported_target(item):
        return False
    stops, _ = _scan(item, ":")
    return bool(stops) and "@" not in item[:stops[0]] and "[" not in item[:stops[0]]


def _has_comment(text: str) -> bool:
    """Whether ``text`` has a ``(`` outside a quoted string: a comment's
    start (``"(x)"`` is a local part)."""
    if "(" not in text:
        return False
    return '"' not in text or bool(_scan(text, "(")[0])


def split_alias_line(line: str) -> tuple[str, str] | None:
    """An alias's line as its name and the text of its targets: split at
    the first ``:`` outside a quoted string (and a comment), as aliases(5)
    writes a name with a colon (``"a:b": joe``); ``None`` if there is none."""
    if '"' not in line and "(" not in line and "\\" not in line:  # nearly every line
        name, colon, rest = line.partition(":")
        return (name, rest) if colon else None
    stops, _ = _scan(line, ":")
    if not stops:
        return None
    return line[:stops[0]], line[stops[0] + 1:]


def split_targets(text: str) -> tuple[list[str], str]:
    """The targets of an alias (as written, unstripped) and why they cannot
    be told apart (``""``: they can): split at the commas outside a quoted
    string and a comment, so that ``"x,y"@example.net`` is one address
    and ``"|cmd a, b"`` one program, as aliases(5) reads them."""
    if '"' not in text and "(" not in text and "\\" not in text:
        return text.split(","), ""
    stops, why = _scan(text, ",")
    bounds = [-1, *stops, len(text)]
    return [text[a + 1:b] for a, b in pairwise(bounds)], why


def alias_address(text: str, primary_domain: str, *, controls: bool = False,
                  local_domains: set[str] | None = None) -> Address:
    """A name or target of the file as an address (``parse_address``),
    where a quoted string alone is a whole local part in the primary
    domain: ``"a@b"`` is the local part ``"a@b"``, as aliases(5) quotes a
    name holding an ``@`` (and RCPT names it ``"a@b"@<domain>``), not
    the local part ``"a`` of the domain ``b"``.

    A quoted local part is the one RCPT gives (``unquote_local``), the
    form the SMTP server looks it up by: ``"joe2"`` is ``joe2`` (a quoted
    string whose content is a dot-string is that dot-string, RFC 5321
    4.1.2), and ``"a\\:b"`` is ``"a:b"``, a backslash before a character
    that needs none being no part of it.  Kept as written, no RCPT
    reached either.  An unquoted one that is no dot-string is the quoted
    string RCPT gives (``rcpt_local``): ``a;`` is ``"a;"`` (RFC 5321
    4.1.2: it exists only quoted, ``RCPT TO:<a;@...>`` being a syntax
    error), as the users file reads it.  ``local_domains``: only an
    address in one of them loses its quotes or is normalized (a remote
    one is relayed as written: its domain decides what its local part
    means), but one that is no dot-string is quoted wherever it is, the
    only form RCPT TO carries it in; ``None``: any is local."""
    text = text.strip()
    end = _quoted_end(text)
    if end == len(text):
        text = f"{text}@{primary_domain}"
    address = parse_address(text, primary_domain, controls=controls)
    local = address.local
    remote = local_domains is not None and (
        canonical_domain(address.domain) not in local_domains)
    if local[:1] == '"' and _quoted_end(local) == len(local):
        from txmailhub.smtp._parse import unquote_local

        same = unquote_local(local)
        if same[:1] != '"' and remote:
            same = local
        if same != local:
            return Address(same, address.domain)
    elif not (len(local) > 1 and local[0] == local[-1] == '"'):
        # no dot-string (a;, a..b): RCPT gives it only quoted, "a;", the
        # one mailbox it can mean (the users file reads it so too); at a
        # remote domain too, the one form the relay's RCPT TO can carry
        # it in (quotes added only: its other spellings are its domain's)
        from txmailhub.smtp._parse import rcpt_local

        same = rcpt_local(local)
        if same != local and (not remote or same[:1] == '"'):
            return Address(same, address.domain)
    return address


def _written_local(text: str, primary_domain: str) -> str:
    """The local part of the alias name ``text`` as written, before
    ``alias_address`` reads it as RCPT gives it."""
    text = text.strip()
    if _quoted_end(text) == len(text):
        return text
    return parse_address(text, primary_domain, controls=True).local


def unsupported_target(item: str) -> str:
    """Why the target ``item`` (as written) is none the hub delivers to
    (a program, a file, an ``:include:`` list), or ``""``.  In quotes,
    as aliases(5) writes one with blanks or commas in it, it is the same
    target (``"/var/log/x"``, ``":include:/etc/list"``), not a local
    part of that name in the primary domain; ``"/x"@example.net`` is an
    address."""
    if item.startswith("|") or item.startswith('"|'):
        return "delivery to programs is not supported"
    bare = item[1:] if _quoted_end(item) == len(item) else item
    if bare.startswith("/"):
        return "delivery to files is not supported"
    if bare.lower().startswith(":include:"):
        return ":include: lists are not supported"
    return ""


def alias_loops(table: Aliases) -> list[str]:
    """Alias cycles, each as ``a -> b -> a`` (self-references excluded),
    written from the alias of the cycle that comes first in ``table``
    (first in the file, for a parsed one): the line ``check`` names it by.

    A depth-first walk kept on a list of its own, not Python's stack: a
    chain of aliases nested deeper than the recursion limit (a file of
    a thousand lines can hold one) is a file like any other, which the
    hub, ``check`` and ``txmailhub-sendmail`` read at once."""
    found: list[str] = []
    order = {key: i for i, key in enumerate(table)}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    seen_cycles: set[frozenset[str]] = set()

    for root in table:
        if root in state:
            continue
        state[root] = 1
        path = [root]
        todo = [iter(table[root])]  # the targets of each alias on ``path`` not yet walked
        while todo:
            key = path[-1]
            for target, expand in todo[-1]:
                t = target.key
                if not expand or t == key or t not in table:
                    continue
                if state.get(t) == 1:
                    cycle = path[path.index(t):]
                    first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                    cycle = [*cycle[first:], *cycle[:first], cycle[first]]
                    if frozenset(cycle) not in seen_cycles:
                        seen_cycles.add(frozenset(cycle))
                        found.append(" -> ".join(cycle))
                elif state.get(t) is None:
                    state[t] = 1
                    path.append(t)
                    todo.append(iter(table[t]))
                    break  # walk t's targets, then the rest of key's
            else:
                path.pop()
                todo.pop()
                state[key] = 2
    return found


def check_aliases_file(
    path: str, primary_domain: str, domains: Iterable[str] | None = None
) -> list[str]:
    """Every problem of the aliases file at ``path``, one line each
    (``<file>:<line>: <why>``, octets that are not UTF-8 too; a loop as
    ``<file>:<line>: alias loop: a -> b -> a``, at the line of its alias
    that comes first in the file, with the lines of the others; a file
    that cannot be read as ``<file>: ...``).  An empty list means the
    file is fine."""
    try:
        # never a plain open: one of a FIFO put there would wait for a
        # writer for ever; the hub reads it so too, and refuses it
        raw, _ = read_regular(path, most=ALIASES_FILE_MAX)
    except NotRegularFile:
        return [f"{path}: [aliases] file is not a regular file (a named pipe, device or "
                "socket): the hub does not read it"]
    except OSError as e:
        return [f"{path}: [aliases] file cannot be read: {e.strerror or e}"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return [f"{path}:{line_of_octet(raw, e.start)}: [aliases] file is not UTF-8 text "
                f"({e.reason} at octet {e.start})"]
    lines: dict[str, int] = {}
    table, problems = parse_aliases(text, primary_domain, domains, path, lines)
    problems.extend(loop_problem(path, loop, lines) for loop in alias_loops(table))
    return problems


def line_end_warnings(path: str) -> list[str]:
    """``check``'s warning about a line of the file at ``path`` ended by a
    lone CR (an old Mac file, a stray one from a paste): the hub takes it
    for a line end, as editors that show old Mac files do, but other
    aliases(5) readers (``newaliases``) read it and the next line as one,
    so the file may not mean there what it meant to them.  One line for the
    file, at its first such line; none for a file that cannot be read
    (``check_aliases_file`` says why)."""
    try:
        raw, _ = read_regular(path, most=ALIASES_FILE_MAX)  # (a FIFO: refused, not waited on)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    lone = [m.start() for m in _LONE_CR.finditer(text)]
    if not lone:
        return []
    line = len(file_lines(text[:lone[0]] + "x"))
    others = len(lone) - 1
    more = f" (and {others} other {plural(others, 'line', 'lines')})" if others else ""
    return [f"{path}:{line}: line ends with a lone CR{more}: the hub ends a line there, but "
            "other readers of aliases files (newaliases) read it and the next line as one"]


def loop_problem(path: str, loop: str, lines: dict[str, int]) -> str:
    """``check``'s line for ``loop`` (as ``alias_loops`` writes it): at
    the line of the alias it starts with, the one of the loop that comes
    first in the file, where an editor opens; the lines of the others
    after it, so that each can be found without a search."""
    names = loop.split(" -> ")[:-1]
    first = lines.get(names[0])
    others = [str(n) for n in sorted({lines[name] for name in names[1:] if name in lines}
                                     - {first})]
    if any(name not in lines for name in names[1:]):
        others.append("the new line")  # (``mailhub alias``: a line not written yet)
    also = ""
    if others:
        also = "; " + ("the other alias is on " if len(names) == 2 else
                       "the other aliases are on ") + _listed(others)
    where = f"{path}:{first}:" if first else f"{path} (new line):"
    return f"{where} alias loop: {loop} (it is cut at runtime{also})"


def _listed(lines: list[str]) -> str:
    """``line 3``, ``lines 3 and 7``, ``lines 3, 7 and the new line``."""
    numbered = [w for w in lines if w != "the new line"]
    head = ("line " if len(numbered) == 1 else "lines ") if numbered else ""
    if len(lines) == 1:
        return head + lines[0]
    return head + ", ".join(lines[:-1]) + " and " + lines[-1]


def line_of_octet(raw: bytes, octet: int) -> int:
    """The line (from 1) of the file ``raw`` that ``octet`` is on, counted
    as ``parse_aliases`` counts the lines of its text (``file_lines``: a
    CRLF one break, a lone CR one too, a form feed none).  The octets before
    it are UTF-8: ``octet`` is where decoding the file failed."""
    return len(file_lines(raw[:octet].decode("utf-8") + "x"))


def rcpt_path_octets(address: Address) -> int:
    """The octets of the shortest path ``RCPT TO`` can name ``address``
    by: its local part, ``@`` and the shorter spelling of its domain (the
    U-label or the A-label form).  Over ``MAX_PATH`` no message reaches
    it (501, RFC 5321 4.5.3.1.3)."""
    from txmailhub.address import ascii_domain

    local = len(address.local.encode("utf-8"))
    return local + 1 + min(len(address.domain.encode("utf-8")), len(ascii_domain(address.domain)))


def hides_user(key: str, targets: tuple[tuple[Address, bool], ...]) -> bool:
    """Whether the alias ``key`` takes all the mail of a user of the same
    name: aliases come first, and its targets do not list the user's own
    mailbox (``\\name``)."""
    return all(target.key != key for target, _expand in targets)


def alias_target_warnings(
    path: str, primary_domain: str, domains: Iterable[str], is_user: Callable[[Address], bool]
) -> list[str]:
    """One line per alias target in a local domain that is neither a user
    nor an alias: the running hub skips it (and logs it), so ``check``
    says so too -- a warning, since the user may simply not be added yet."""
    lines: dict[str, int] = {}
    try:
        raw, _ = read_regular(path, most=ALIASES_FILE_MAX)  # (a FIFO: refused, not waited on)
        table, _ = parse_aliases(raw.decode("utf-8"), primary_domain, domains, path, lines)
    except (OSError, UnicodeDecodeError):
        return []  # check_aliases_file reports it
    return [w.text for w in alias_warnings(table, path, primary_domain, domains, is_user, lines)]


@dataclass(frozen=True)
class AliasWarning:
    """A warning ``check`` gives about one alias: ``text`` is its line,
    ``hides_user`` whether it is the alias taking the mail of a user of
    its name (``mailhub alias`` refuses to make such an alias)."""

    alias: str
    hides_user: bool
    text: str


def alias_warnings(
    table: Aliases, path: str, primary_domain: str, domains: Iterable[str],
    is_user: Callable[[Address], bool], lines: dict[str, int] | None = None,
) -> list[AliasWarning]:
    """``alias_target_warnings`` of a parsed table, each with the alias it
    is about; with ``lines`` (``parse_aliases``'s), each at that alias's
    line (``<file>:<line>: alias ...``), as the file's problems are."""
    from txmailhub.smtp._parse import MAX_PATH, unquote_local

    local = {canonical_domain(d) for d in domains}
    postmaster = Address("postmaster", primary_domain).key
    out = []
    for alias, targets in table.items():
        line = lines.get(alias) if lines is not None else None
        at = f"{path}:{line}" if line else path
        # Aliases come first (as in /etc/aliases): a user of the same name
        # gets nothing unless the alias lists the user's own mailbox.
        if alias != postmaster and is_user(parse_address(alias)) and hides_user(alias, targets):
            out.append(AliasWarning(
                alias, True,
                f"{at}: alias {alias} has the name of a user: the alias comes first, "
                f"so that user's mailbox gets none of its mail (add \\{alias} to its "
                "targets to keep a copy there)"))
        name = parse_address(alias)
        octets = rcpt_path_octets(name)
        if octets > MAX_PATH:
            # read as any other (and aliases(5) readers take it), but the
            # hub's SMTP server refuses every RCPT naming it, as ``mailhub
            # alias add`` refuses to write it
            out.append(AliasWarning(
                alias, False,
                f"{at}: alias {alias}: {octets} octets, and RCPT TO takes a path of at most "
                f"{MAX_PATH}: no mail reaches it"))
        if len(name.local) > 1 and name.local[0] == name.local[-1] == '"':
            # a well-formed quoted name is keyed as RCPT gives it
            # (``alias_address``): only quotes that are no one quoted
            # string are left here
            if _quoted_end(name.local) != len(name.local):
                # '"a""b"': the first quoted string ends inside it, so RCPT
                # TO:<"a""b"@...> is a syntax error; one quoted string
                # (the key of any well-formed one is as RCPT gives it)
                # is another address
                out.append(AliasWarning(
                    alias, False,
                    f"{at}: alias {alias}: its quotes are no one quoted string, so no RCPT TO "
                    f"names it ({unquote_local(name.local)}@{name.domain} is another address): "
                    "no mail reaches it"))
        for target, expand in targets:
            key = target.key
            # an alias the hub expands; but ``\name`` and the alias's own
            # name (``joe: joe``) are the mailbox of that name, as the
            # router takes them, and so need a user all the same
            expanded = expand and key != alias and key in table
            if (canonical_domain(target.domain) in local and not expanded and key != postmaster
                    and not is_user(target)):
                out.append(AliasWarning(
                    alias, False,
                    f"{at}: alias {alias} names {target}, which is no local user: "
                    "the hub skips it"))
    return out


@implementer(IRecipientRouter)
class Router:
    """``IRecipientRouter`` over the local domains, the users database
    (anything with ``contains(address) -> bool``) and the aliases file
    (``None``: no aliases).  See the module docstring for the rules.

    ``reload``: each lookup looks at the aliases file again and reads it
    once it has changed, as the hub, which runs for months, needs.
    ``False`` reads it once, here, and the table read then serves every
    lookup: for a short run (``sendmail``'s grouping of recipients) that
    wants one view of the file and no ``stat`` per lookup."""

    def __init__(self, domains: Iterable[str], users: Any, aliases_file: str | None = None,
                 *, reload: bool = True) -> None:
        self.domains = tuple(dict.fromkeys(canonical_domain(d) for d in domains))
        if not self.domains:
            raise ValueError("at least one local domain is needed")
        self.primary_domain = self.domains[0]
        self.users = users
        self.aliases_file = aliases_file
        self.reload = reload
        self.aliases: Aliases = {}
        # the configured file is away (moved, being restored): an address
        # that is no user may be one of its aliases, so it gets 451, not 550
        self.aliases_away = False
        # the file as last read (``txmailhub.filestamp``), its text (read
        # again unchanged: nothing parsed, nothing logged), whether it was
        # there, and the error last logged about it
        self._file = FileStamp()
        self._text: str | None = None
        # the text last read may be a file caught half-written (changed
        # within ``RACY_SECONDS`` of the read, or during it): an address
        # that is no alias in it may be one not written yet
        self._fresh = False
        # whether a user lookup of the current expansion missed in users
        # records that may be a torn file (``UsersDB.lookup``); ``None``
        # for a users object that cannot say so with its answer
        self._users_doubt: bool | None = None
        self._there = False
        self._error: str | None = None
        self._warned: set[tuple[str, str]] = set()
        self._reload_if_changed()

    # -- the aliases file --------------------------------------------------

    def _reload_if_changed(self) -> None:
        if self.aliases_file is None:
            return
        try:
            st: os.stat_result | None = os.stat(self.aliases_file)
        except FileNotFoundError:
            st = None
        except OSError as e:
            # a folder on the way the hub may not search: said once, not
            # at every RCPT, and the aliases read last serve on.  Read again
            # once it can be looked at (unwatched meanwhile), which also
            # ends this spell: the same failure later is said again
            self._file.forget()
            self._fresh = False  # the aliases read last serve on, as they were
            self._cannot_read(f"cannot stat aliases file {self.aliases_file}: {e}")
            return
        if st is None:
            if self._there:
                log.error("aliases file {path} is gone: mail to addresses that are not "
                          "users is refused with 451 (try again later) until it is back",
                          path=self.aliases_file)
                self.aliases_away = True
            self._there = False
            self._file.forget()
            self._text, self._error = None, None
            self._fresh = False  # (away: ``aliases_away`` says what to answer)
            self.aliases = {}
            return
        if not self._file.stale(st):
            return
        self._there = True
        began = self._file.now()
        after: os.stat_result | None = None
        try:
            # never a plain open: one of a FIFO put there would hang the hub
            # changed during the read: maybe half
            raw, after = read_regular(self.aliases_file, most=ALIASES_FILE_MAX)
            text = raw.decode("utf-8")
        except OSError as e:
            if e.errno in _PASSING:
                # out of descriptors or memory, or a read error that may
                # pass with the file unchanged: read again at the next
                # lookup.  Meanwhile a miss may be an alias of the changed
                # text, not read: 451, never 550 (a bounce)
                self._file.forget()
                self._fresh = True
            else:
                # not looked at again until it changes (a directory, a FIFO,
                # a mode the hub cannot read)
                self._file.read(st, began, after)
                self._fresh = not self._file.settled
            self._cannot_read(f"cannot read aliases file {self.aliases_file}: {e}")
            return
        except UnicodeDecodeError as e:
            # not looked at again until it changes (written half-way in UTF-8)
            self._file.read(st, began, after)
            self._fresh = not self._file.settled
            self._cannot_read(f"cannot read aliases file {self.aliases_file}: {e}")
            return
        # a line end as the file reads one: a lone CR is one too
        self._file.read(st, began, after, whole=text.endswith(("\n", "\r")))
        self._fresh = not self._file.settled
        self._error = None
        if text == self._text:
            return  # read again while its stamp was not to be trusted: no change
        self._text = text
        table, problems = parse_aliases(text, self.primary_domain, self.domains,
                                        self.aliases_file)
        for why in problems:
            log.warn("aliases: {problem}", problem=why)
        for loop in alias_loops(table):
            log.warn("aliases: alias loop {loop} (it is cut at runtime)", loop=loop)
        self.aliases = table
        self.aliases_away = False
        self._warned.clear()
        log.info("loaded {count} {aliases} from {path}", count=len(table),
                 aliases=plural(len(table), "alias", "aliases"), path=self.aliases_file)

    def _cannot_read(self, why: str) -> None:
        """Log ``why`` once (not per RCPT while it lasts); the previous
        aliases serve on.  With none read yet (the hub's start, or the
        file back from away but unreadable) there are none to serve: an
        address that is no user may be one of the aliases not read, so it
        gets 451, as while the file is away, never 550 (a bounce)."""
        if self._text is None:
            self.aliases_away = True
        if why != self._error:
            self._error = why
            if self._text is None:
                log.error("{why}; no aliases are in effect: mail to addresses that are not "
                          "users is refused with 451 (try again later) until it can be read",
                          why=why)
            else:
                log.error("{why}; keeping the previous aliases", why=why)

    @property
    def read_error(self) -> str | None:
        """Why the aliases file could not be read at the last look (a
        mode this process may not read, a folder it may not search, bytes
        that are not UTF-8), or ``None``: read, or not there.  For a short
        run (``sendmail``) that has no log to say it in, and would
        otherwise take every name for no alias without a word."""
        return self._error

    # -- IRecipientRouter ------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        return canonical_domain(domain) in self.domains

    def resolve(self, address: Address) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
        if self.reload:
            self._reload_if_changed()
        return self._expand(address)

    def verify(self, address: Address) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
        if self.reload:
            self._reload_if_changed()
        return self._expand(address)

    # -- expansion -------------------------------------------------------------

    def _doubtful_miss(self) -> bool:
        """Whether an address found neither as a user nor as an alias may
        be one all the same: the users file or the aliases file was read
        within ``RACY_SECONDS`` of a change (``txmailhub.filestamp``), when
        a file rewritten in place may have been caught half-written.  Then
        the miss is answered ``451 4.3.0`` (a retry), not ``550 5.1.1`` (a
        bounce for good); the seconds over, a miss is 550 again.  Asked
        on the miss path only: a found recipient costs nothing more."""
        if self._fresh:
            return True
        if self._users_doubt is not None:
            return self._users_doubt
        changing = getattr(self.users, "changing", None)
        return changing is not None and bool(changing())

    def _is_user(self, address: Address) -> bool:
        try:
            lookup = getattr(self.users, "lookup", None)
            if lookup is not None:
                record, doubt = lookup(address)
                found = record is not None
                # the misses' own doubt, judged with the records missed in
                self._users_doubt = bool(self._users_doubt) or doubt
            else:
                found = bool(self.users.contains(address))
        except Exception:
            # Not "no such user": a 550 would bounce the sender's mail for
            # good over a users file the hub cannot read for a moment
            log.failure("users database lookup failed for {address}",
                        address=loggable(str(address), 1 << 20))
            raise Rejected(replies.LOCAL_ERROR) from None
        if not found and getattr(self.users, "missing", False):
            raise Rejected(replies.LOCAL_ERROR)  # the same, for a file that is away
        return found

    def _expand(self, address: Address) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
        if not self.is_local_domain(address.domain):
            return (), (address,)
        # A local mailbox is named by its key (lower case), however the
        # client spelled it: RCPT TO:<Alice> and <alice> are one mailbox,
        # which must get one copy.
        address = canonical_address(address)
        self._users_doubt = None
        if address.key not in self.aliases:
            # one users lookup: a postmaster that is no user is not asked
            # about again (each lookup may be a file's stat, and logs a
            # failure of its own)
            if self._is_user(address):
                return (address,), ()  # a plain mailbox: what nearly every RCPT is
            if address.is_postmaster:
                address = Address("postmaster", self.primary_domain)
                if address.key not in self.aliases:
                    return (address,), ()

        local: dict[str, Address] = {}
        remote: dict[str, Address] = {}
        expanded: set[str] = set()
        todo: deque[tuple[Address, bool, str | None]] = deque([(address, True, None)])
        while todo:
            target, expand, parent = todo.popleft()
            if not self.is_local_domain(target.domain):
                remote.setdefault(target.key, target)
                continue
            key = target.key
            if expand and key in self.aliases and key != parent:
                if key in expanded:
                    continue  # a loop, or a diamond: its targets are already in
                expanded.add(key)
                todo.extend((t, e, key) for t, e in self.aliases[key])
                continue
            if key in local:
                continue
            if self._is_user(target):
                local[key] = canonical_address(target)
            elif key == Address("postmaster", self.primary_domain).key:
                local[key] = Address("postmaster", self.primary_domain)
            elif parent is not None and not address.is_postmaster and self._doubtful_miss():
                # a member that may be missing only from a half-written
                # file: the list's mail is taken later for all its members,
                # not now without that one (the postmaster's is never refused)
                raise Rejected(replies.MAILBOXES_CHANGING)
            elif parent is not None and (parent, key) not in self._warned:
                self._warned.add((parent, key))  # once per alias and target per load
                log.warn("alias {alias} names {target}, which is no local user: skipped",
                         alias=parent, target=str(target))
        if not local and not remote:
            if address.is_postmaster:  # RFC 5321 4.5.1: never refused
                log.warn("postmaster alias {alias} leads to no mailbox: using {mailbox}",
                         alias=address.key, mailbox=f"postmaster@{self.primary_domain}")
                return (Address("postmaster", self.primary_domain),), ()
            if self.aliases_away:
                raise Rejected(replies.LOCAL_ERROR)  # it may be an alias: ask again later
            if self._doubtful_miss():
                raise Rejected(replies.MAILBOXES_CHANGING)  # it may be one not written yet
            raise Rejected(replies.UNKNOWN_USER)
        return tuple(local.values()), tuple(remote.values())
