"""The users file: who has a mailbox here, and how they prove it.

Owns the file format, the login check and the read-modify-write cycle of
``mailhub user ...``.  It never holds a plaintext password longer than a
call, and it never logs one.  The hashes are ``txmailhub.password_hash``'s,
the lock's opening and the advice about the file's folder
``txmailhub.users_folder``'s (both re-exported here).

Format: one user per line, ``<address> <hash> [apop=<base64 secret>]``.

Hashing (``txmailhub.password_hash``): scrypt from the standard library
(``hashlib.scrypt``; N=2^14, r=8, p=1, 16-byte salt, 32-byte key).  We
chose it over argon2id because it is memory-hard, standardised (RFC
7914), and needs no compiled dependency: a small site installs txmailhub
with nothing but Python.  The parameters are stored per hash, so they can
be raised later without invalidating existing users.

Preparation: a new password is hashed in its PRECIS OpaqueString form
(``txmailhub.precis``, RFC 8265): spaces mapped, NFC, no control
characters.  A login is checked against the prepared form of what the
client sent, so a decomposed ``é`` or a no-break space logs in wherever
the precomposed letter or a plain space was set.  Hashes made before
preparation hold the password as it was typed; when the prepared form
does not match and differs from what was sent, the as-sent form is
checked too (a second scrypt, only then), and a password preparation
refuses (a tab in it, say) is checked exactly as sent -- old accounts
keep working.

A new password (``add``, ``set_password``) must pass the password policy
of ``txmailhub.passwords`` unless the caller says ``allow_weak``; the
policy judges the prepared form, the one that is stored.  What is
already in the file is never judged by it.

APOP (RFC 1939) needs the server to know a usable secret, so users added
with ``--allow-apop`` also keep one, base64-encoded (an encoding, not
protection): anyone who reads the users file can log in as them over
APOP.  That is why it is opt-in per user and documented as weaker.

Readers (the running hub) see changes without a restart: every lookup
checks the file's stamp (inode, size, mtime, ctime) and reloads it when it
changed -- and reads it again anyway for a couple of seconds after it
changed, when a second change may have kept the stamp
(``txmailhub.filestamp``).  In those seconds the file may also be one
rewritten in place and read half-written: a user not found then may be
one not written yet (``changing``), which the router and the login
checker answer with a temporary failure.  Writers replace the file
atomically (temp file, fsync, rename, fsync the folder) under an
exclusive lock, so a crash leaves either the old or the new file, never
a torn one.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from twisted.logger import Logger

from txmailhub.address import (
    Address,
    AddressError,
    canonical_domain,
    one_quoted_string,
    parse_address,
)
from txmailhub.errors import NoSuchUser, UserExists, UsersFileError, WeakPassword
from txmailhub.filestamp import FileStamp
from txmailhub.logsafe import shown
from txmailhub.password_hash import _DUMMY_HASH, hash_password, hash_problem, verify_password
from txmailhub.passwords import PasswordPolicy
from txmailhub.precis import PreparationError, prepare_password
from txmailhub.regular_file import FileTooLarge, NotRegularFile, read_regular, size_text
from txmailhub.users_folder import (
    cannot_make_folder,
    lock_refused_advice,
    make_folder_advice,
    open_lock,
    unwritable_folder_advice,
)

log = Logger(namespace="txmailhub.users")

__all__ = ["USERS_FILE_MAX", "UserRecord", "UsersDB", "as_given", "as_rcpt_names",
           "cannot_make_folder", "hash_password", "hash_problem", "lock_refused_advice",
           "mail_never_reaches", "make_folder_advice", "open_lock", "unwritable_folder_advice",
           "verify_password"]

_BOM = "\ufeff"  # a byte-order mark, which an editor may put first
#: an octet that was not UTF-8 (``surrogateescape``)
_NOT_UTF8 = re.compile("[\udc80-\udcff]")

#: octets a users file may hold (``read_regular``'s ``most``): some 100,000 users,
#: far more than a hub for small sites has; one larger is refused as one
#: that cannot be read, not held in memory whole
USERS_FILE_MAX = 16 * 1024 * 1024


def _login_forms(password: str) -> list[str]:
    """The forms of a password sent at login to check, in order: the
    prepared one, and the one as sent when it is another string.  A
    password preparation refuses can only match a hash made before
    preparation, of the password exactly as typed."""
    try:
        prepared = prepare_password(password)
    except PreparationError:
        return [password]
    return [prepared] if prepared == password else [prepared, password]


@dataclass(frozen=True)
class UserRecord:
    address: Address
    password_hash: str
    apop_secret: str | None = None

    def to_line(self) -> str:
        key = self.address.key
        if key.startswith("#"):
            # a line that starts with '#' is a comment: the user #a (a
            # dot-string) is written quoted, which the file reads as #a
            local, _, domain = key.rpartition("@")
            key = f'"{local}"@{domain}'
        line = f"{key} {self.password_hash}"
        if self.apop_secret is not None:
            enc = base64.b64encode(self.apop_secret.encode("utf-8")).decode()
            line += f" apop={enc}"
        return line + "\n"


def as_rcpt_names(address: Address) -> Address:
    """``address`` with its local part in the form RCPT gives it, the form
    the users file keys a line by, so that each line is the one user and
    Maildir RCPT delivers to (a login name and a name given to ``mailhub
    user`` are read so too, and more: ``as_given``).

    One quoted string as RCPT gives it (``unquote_local``): ``"q"`` is
    ``q`` (RFC 5321 4.1.2: a quoted string whose content is a dot-string
    is that dot-string), ``"a\\:b"`` is ``"a:b"``, ``"a;"`` stays
    ``"a;"``.  An unquoted one that is no dot-string as RCPT can give it
    (``rcpt_local``): ``a;`` is ``"a;"`` -- a local part that needs quoting
    exists only quoted (``RCPT TO:<a;@...>`` is a syntax error), so
    ``a;`` can mean no other mailbox.  Left as written: quotes at both
    ends that are no one quoted string (``"a""b"``: ``check`` warns of
    such a line; ``as_given`` reads the name as ``user add`` writes it),
    ``.`` and ``..`` (no Maildir folder: ``check`` warns, ``user add``
    refuses) and a name with a control character (no RCPT names it,
    ``rcpt_local``)."""
    local = address.local
    from txmailhub.smtp._parse import rcpt_local, unquote_local

    if len(local) > 1 and local[0] == local[-1] == '"':
        if not one_quoted_string(local):
            return address
        local = unquote_local(local)
    elif local not in (".", ".."):
        local = rcpt_local(local)
    return address if local == address.local else Address(local, address.domain)


def as_given(address: Address) -> Address:
    """The user a name given to ``mailhub user`` or to a login names: as
    RCPT gives it (``as_rcpt_names``), and in quotes at both ends that are
    no one quoted string read as one, as ``user add`` writes it
    (``"a""b"`` is ``"a\\"\\"b"``, the user ``RCPT TO:<"a\\"\\"b"@...>``
    reaches).  RFC 5321 4.1.2 makes ``"a""b"`` no local part at all
    (neither a Dot-string nor one Quoted-string): the only mailbox it can
    stand for is the one quoted string around all of it, and ``user add``
    made that one from it.  A line of the users file so written is read
    as written (``as_rcpt_names``: ``check`` warns that no mail reaches
    it); ``UsersDB.qualify`` and ``mailhub user`` still find it by that
    name where the file has no user of the form read here."""
    address = as_rcpt_names(address)
    local = address.local
    if len(local) > 1 and local[0] == local[-1] == '"' and not one_quoted_string(local):
        from txmailhub.smtp._parse import unquote_local

        return Address(unquote_local(local), address.domain)
    return address


def mail_never_reaches(address: Address) -> str | None:
    """Why no mail can ever reach the user ``address``, or None: a local
    part no Maildir folder can have (``a/b``, or one whose folder's name
    would be over the file system's 255 octets, ``NAME_MAX``: RCPT refuses
    it with 550 5.3.5, a POP3 login with ``[SYS/PERM]``), or one in quotes
    that are no one quoted string (``"a""b"``: RCPT TO:<"a""b"@...> is a
    syntax error).  ``user add`` refuses the first and writes the other
    as RCPT gives it; ``check`` warns of each in the file (lines written
    by hand, or before those checks).  Any other local part is keyed as
    RCPT gives it (``as_rcpt_names``: ``"joe"`` is joe, ``a;`` is
    ``"a;"``), and reached."""
    local = address.key.rpartition("@")[0]
    if "/" in local or local in (".", ".."):
        return "its local part cannot name a Maildir folder (no '/', not '.' or '..')"
    from txmailhub.store.maildir import folder_name_problem

    # its folder as the store names it (``maildir_path``): the key's local
    # part, its quotes, escapes, lower case and NFC and all
    too_long = folder_name_problem(local)
    if too_long:
        return too_long + ": it gets no mail and cannot log in to POP3"
    from txmailhub.smtp._parse import unquote_local

    if len(local) > 1 and local[0] == local[-1] == '"':
        if address.local[:1] != '"':
            # quoted by ``canonical_local``, not in the file: a dot-string
            # that NFC makes punctuation (ab\u037e is "ab;"), which RCPT
            # gives as it is or quoted, both looked up with the quotes
            return None
        if not one_quoted_string(address.local):
            return (f"its quotes are no one quoted string, so no RCPT TO names it "
                    f"({unquote_local(address.local)}@{address.domain} is another "
                    "address): it gets no mail")
        plain = unquote_local(address.local)
        if plain != address.local:  # (an Address not read by ``as_rcpt_names``)
            return (f"RCPT TO names it {plain}@{address.domain}, which is looked up "
                    "so: it gets no mail")
    return None


class UsersDB:
    """The users file, reloaded whenever it changes on disk."""

    def __init__(self, path: str, primary_domain: str, domains: tuple[str, ...] = (),
                 password_policy: PasswordPolicy | None = None,
                 folder_owner: tuple[int, int] | None = None,
                 hub_user: tuple[int, int] | None = None) -> None:
        self.path = path
        # the user the hub runs as, for the ``install -d`` line of a folder
        # this user may not make (``make_folder_advice``); None: this user
        self.hub_user = hub_user
        # who gets the folder(s) of ``path`` a write has to make (root's
        # ``mailhub user add`` before users.d exists: the hub's user,
        # txmailhub.hub_access); None: whoever writes
        self.folder_owner = folder_owner
        # what add() and set_password() ask of a new password; nothing
        # already in the file is judged by it
        self.password_policy = password_policy or PasswordPolicy()
        self.primary_domain = canonical_domain(primary_domain)
        self.domains = tuple(canonical_domain(d) for d in domains) or (self.primary_domain,)
        # the file as last read: its stamp, and its text (a read that finds
        # the same text again parses and logs nothing)
        self._file = FileStamp()
        self._reading = threading.Lock()
        self._text: str | None = None
        self._records: dict[str, UserRecord] = {}
        # the records and whether they are the file's whole
        # (``FileStamp.settled``) as one value, for ``lookup``: a miss is
        # judged by the records it was made in, not by what another
        # thread (a password check's) read just after it
        self._view: tuple[dict[str, UserRecord], bool] = ({}, False)
        # whether any of ``_records`` has an APOP secret: worked out when
        # the file is parsed, so the POP3 greeting of every connection
        # (``offers_apop``) costs a lookup's stat, not a pass over the users
        self._apop = False
        self.problems: list[str] = []
        # The file is not there: a lookup cannot tell "no such user" from
        # "the file is away for a moment" (moved, being restored, a mount
        # not up yet), so the router answers 451, never 550.
        self.missing = False
        # ... or it is there but cannot be read (the error, for ``check``)
        self.unreadable: OSError | None = None

    # -- reading -------------------------------------------------------------

    def _refresh(self, report: bool = True) -> dict[str, UserRecord]:
        """The records as the file has them now.  Password checks call
        this from a thread pool while the reactor thread asks for RCPTs:
        one reader at a time, or a slow reader of an older version could
        put its records in place after a newer one's, under the newer
        stamp, and the change would be missed for good."""
        try:
            st = os.stat(self.path)
        except OSError:
            pass  # said (once) under the lock
        else:
            if not self._file.stale(st):
                # the steady state, without the lock: a stamp is noted only
                # once its records are in place (``_refresh_locked``)
                return self._records
        with self._reading:
            self._refresh_locked(report)
            return self._records

    def _refresh_locked(self, report: bool) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if report and not self.missing:  # not for the first `mailhub user add`
                log.error("the users file {path} does not exist: local mail is refused "
                          "with 451 (try again later) until it is back", path=self.path)
            # away before the records go (``_forget``): an RCPT that takes
            # them without the lock and finds none must find the file
            # away too, and answer 451, not 550
            self.unreadable = None
            self.missing = True
            self._forget()
            return
        except OSError as e:
            # a folder on the way that this user may not search (users.d
            # made 0700 by root, the hub running as mailhub)
            self._cannot_read(e, report)
            return
        if not self._file.stale(st):
            return
        began = self._file.now()
        try:
            # never a plain open: one of a FIFO put there would wait for a
            # writer for ever (the hub's reactor, ``mailhub check``); such a
            # file is said as one that cannot be read.  ``after``: a writer
            # that began during the read, the text may be half of the file
            # (``changing``)
            raw, after = read_regular(self.path, most=USERS_FILE_MAX)
            # octets that are not UTF-8 kept as surrogates: ``_parse``
            # refuses their line (as U+FFFD, a Latin-1 josé was the user
            # jos\ufffd, listed so and getting no mail, with no word why)
            text = raw.decode("utf-8", "surrogateescape")
        except OSError as e:
            self._cannot_read(e, report)
            return
        changed = text != self._text  # else read again while its stamp was not trusted
        if changed:
            records, self.problems, _, _ = self._parse(text)
            self._apop = any(r.apop_secret is not None for r in records.values())
            self._records = records
            self._text = text
        # in doubt until judged: a lookup without the lock in between
        # (the stamp below is trusted already) must not judge a miss in
        # these records by the settling of the text read before them
        self._view = (self._records, False)
        # only now: a stamp noted before the records are in place would
        # let another lookup take the old records for the new file.  Only
        # LF ends a line here (``_parse``), unlike the aliases file: a text
        # ending in a lone CR is a CRLF file caught before its last LF
        self._file.read(st, began, after, whole=text.endswith("\n"))
        self._view = (self._records, self._file.settled)
        if not changed:
            return
        if self.missing:
            log.info("the users file {path} is back", path=self.path)
            self.missing = False
            self.unreadable = None
        for problem in self.problems:  # once per change of the file
            log.warn("users file: {problem}", problem=problem)

    def _cannot_read(self, e: OSError, report: bool) -> None:
        """Unreadable (a root-owned copy put in place under a hub that runs
        as mailhub, say): the same as away for a moment -- 451, logins
        refused as unavailable -- and said once, not with a traceback per
        lookup.  Looked at again at the next lookup."""
        why = e.strerror or str(e)
        if report and (self.unreadable is None or self.unreadable.strerror != e.strerror):
            how = ""
            if isinstance(e, PermissionError):
                # the file or users.d root's (root's user add before
                # state_dir was there): the line said what, not what to do
                from txmailhub.hub_access import name_of

                how = (f"; the hub runs as {name_of(os.geteuid())}: `mailhub check` run as "
                       "root says what to change")
            log.error("the users file {path} cannot be read ({why}): local mail is "
                      "refused with 451 (try again later) and logins fail until it can{how}",
                      path=self.path, why=why, how=how)
        # away before the records go, as for a missing file
        self.unreadable = e
        self.missing = True
        self._forget()

    def _forget(self) -> None:
        self._file.forget()
        self._text, self._records, self.problems = None, {}, []
        self._view = ({}, False)
        self._apop = False

    def _parse(self, text: str) -> tuple[dict[str, UserRecord], list[str],
                                         list[str | None], dict[str, int]]:
        """The records (the first good line of an address wins, but that
        one written as RCPT gives it wins over one in another spelling), the
        problems, for each line (split at LF only) the address key it is
        for, and for each key the index of the line in effect."""
        records: dict[str, UserRecord] = {}
        problems: list[str] = []
        keys: list[str | None] = []
        first: dict[str, int] = {}
        owns: set[int] = set()  # the lines that write their name as RCPT gives it
        # a byte-order mark first (an editor's "UTF-8 with BOM") is no part
        # of the first user's address; ``_write`` keeps it in the file
        text = text.removeprefix(_BOM)
        for lineno, line in enumerate(text.split("\n"), 1):
            keys.append(None)
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            try:
                bad = _NOT_UTF8.search(line)
                if bad is not None:
                    # (a Latin-1 file: its line is no user's; ``_write``
                    # keeps it as it is, for the admin to fix)
                    raise ValueError(f"the line is not UTF-8 text (the octet "
                                     f"0x{ord(bad.group()) - 0xDC00:02X}): the hub does not "
                                     "read it; save the file as UTF-8")
                if len(fields) not in (2, 3):
                    raise ValueError("expected '<address> <hash> [apop=<secret>]'")
                # a name with ESC, DEL or a C1 control: written before
                # they were refused (``_new_address``), or by hand; still
                # this user's line, for `user del` to find (named below)
                # a quoted local part as RCPT gives it: '"q"' is q
                written = parse_address(fields[0], self.primary_domain, controls=True)
                address = as_rcpt_names(written)
                # the line is this user's, even if the rest of it is bad:
                # `user del` removes it with the others
                keys[-1] = address.key
                apop = None
                if len(fields) == 3:
                    if not fields[2].startswith("apop="):
                        # not quoted: most likely an APOP secret written
                        # without its "apop=", and this goes into the log
                        raise ValueError("expected '<address> <hash> [apop=<secret>]', not "
                                         "a third field without \"apop=\" (not shown: it "
                                         "may be a secret)")
                    apop = base64.b64decode(fields[2][5:], validate=True).decode("utf-8")
            except (ValueError, AddressError) as e:
                problems.append(f"{self.path}:{lineno}: {e}")
                continue
            # written as RCPT gives it (not '"q"' for q, nor 'a;' for "a;"),
            # keyed as written: the line whose password opened the mailbox
            # RCPT delivered to before local parts were read so, when
            # another spelling of the name was a user of its own
            own = address.key == written.key
            if address.key in first:
                earlier = first[address.key]
                if not own or earlier in owns:
                    # one entry per user: a second line (typed by hand, say)
                    # must not silently replace the password in effect
                    problems.append(f"{self.path}:{lineno}: {shown(address.key)} is already on "
                                    f"line {earlier}: this line is ignored")
                    continue
                # the earlier line spells the name another way: that user
                # (its password) must not open this one's mailbox
                problems.append(f"{self.path}:{earlier}: {shown(address.key)} is on line "
                                f"{lineno} too, written as RCPT gives it, which is in effect: "
                                "this line is ignored")
            if own:
                owns.add(lineno)
            first[address.key] = lineno
            records[address.key] = UserRecord(address, fields[1], apop)
            # The mailbox still exists (mail keeps arriving); only logins fail.
            why = hash_problem(fields[1])
            if not why and self._login_refuses(fields[0]):
                # every login refuses such a name (``qualify``), as SMTP
                # and POP3 refuse it on the wire; not every name that is
                # not ``isprintable``: a zero-width non-joiner (in many a
                # Persian name) or a format character logs in and gets mail
                why = ("the address has a control character, which logins refuse "
                       "(`mailhub user del` removes the line)")
            if why:
                problems.append(f"{self.path}:{lineno}: {shown(address.key)} cannot log in: "
                                f"{why}")
        return records, problems, keys, {k: n - 1 for k, n in first.items()}

    def _login_refuses(self, name: str) -> bool:
        """Whether a login (``qualify``) refuses ``name``, which the file's
        reading (``controls``) took: it holds ESC, DEL or a C1 control."""
        try:
            # (not ``qualify``: it looks the name up, and this is the
            # reading those lookups wait on)
            parse_address(name, self.primary_domain)
        except AddressError:
            return True
        return False

    def changing(self) -> bool:
        """Whether the records last read may be those of a file caught
        half-written: it changed less than ``RACY_SECONDS`` before it was
        read, or while it was read (``FileStamp.settled``).  A file
        rewritten in place (truncated, then written: ``cat > users``, some
        editors) lacks the users not written yet, so a lookup that misses
        then is no proof that the user does not exist: the router answers
        451 rather than 550, and a failed login is a temporary failure.

        Asked only after a miss, with no system call: a lookup that finds
        its user, and every lookup once the file is settled, costs nothing
        more.  (A file that is away is ``missing`` instead.)"""
        return not self.missing and not self._file.settled

    def lookup(self, address: Address) -> tuple[UserRecord | None, bool]:
        """``get``, and for a miss whether it is in doubt (``changing``) as
        the records it was made in were judged.  The router asks this:
        ``get`` then ``changing`` judge the miss by whatever was read last,
        and a password check's thread may read the file between the two --
        a miss in a half-written text, then judged by the whole one read
        after it, was a 550 for a user the file has.  The same system
        calls as ``get``."""
        record, doubt = self.judged(address)
        return record, record is None and doubt

    def judged(self, address: Address) -> tuple[UserRecord | None, bool]:
        """The record of ``address`` (or ``None``), and whether the records
        it was looked up in may be a file caught half-written (``changing``,
        judged with them), whether it was found or not: a found line may
        be cut short (an APOP login asks this, and a line without its
        ``apop=`` field is no proof of a user without a secret then).  The
        same system calls as ``get``.  The one place a lookup is judged
        (``lookup`` and ``check_login`` ask it)."""
        self._refresh()
        records, settled = self._view  # the records and their settling, together
        return records.get(address.key), not settled and not self.missing

    def get(self, address: Address) -> UserRecord | None:
        return self._refresh().get(address.key)

    def contains(self, address: Address) -> bool:
        return self.get(address) is not None

    def addresses(self) -> list[Address]:
        records = self._refresh()
        if self.unreadable is not None:
            raise self.unreadable  # check and the start name it as a problem
        return [r.address for r in sorted(records.values(), key=lambda r: r.address.key)]

    def lines(self) -> dict[str, int]:
        """The line (from 1) of each user's line in effect in the file as
        it is now, by address key, counted as ``problems`` count theirs:
        ``check`` names the line of a user it warns of as the file's own
        problems name theirs (``PATH:LINENO: ...``).  Worked out when
        asked, from the text kept anyway to tell a change (``_text``): the
        records the hub looks users up in hold no line, so neither their
        memory nor a lookup costs more for it.  Empty when the file is
        away or cannot be read."""
        self._refresh()
        text = self._text
        if text is None:
            return {}
        return {key: index + 1 for key, index in self._parse(text)[3].items()}

    def qualify(self, name: str) -> Address:
        """A login name -> ``Address`` (bare local part = primary domain;
        the local part as ``user add`` writes it, ``as_given``: ``"q"`` is
        q, ``a;`` is ``"a;"``, ``"a""b"`` is ``"a\\"\\"b"``), so that a
        login reaches the user ``mailhub user add`` made of the same name.
        ``"a""b"`` reaches a line of the file written so by hand where
        the file has no ``"a\\"\\"b"`` (``_found``)."""
        return self._found(parse_address(name, self.primary_domain), self._refresh())

    @staticmethod
    def _found(written: Address, records: dict[str, UserRecord]) -> Address:
        """The user a name (parsed, ``written``) stands for among
        ``records``: the one ``user add`` would write (``as_given``), or,
        when the records have none such, the line written as the name is
        read in the file (``as_rcpt_names``: ``"a""b"`` kept so, a user no
        mail reaches, ``check`` warns) -- that user still logs in, and
        ``user passwd`` and ``user del`` still reach its line, as they did
        before names were read as ``user add`` writes them.  Neither there:
        the first, the name ``user add`` would give the user."""
        given = as_given(written)
        if given.key not in records:
            kept = as_rcpt_names(written)
            if kept.key != given.key and kept.key in records:
                return kept
        return given

    def check_password(self, address: Address, password: str) -> bool:
        """Whether ``password`` is right; slow on purpose (scrypt), even for
        unknown users (``check_login``, without its doubt)."""
        return self.check_login(address, password)[0]

    def check_login(self, address: Address, password: str) -> tuple[bool, bool]:
        """Whether ``password`` is right, and whether the records it was
        checked against may be a file caught half-written (``changing``,
        judged with them).  The login checker asks this from the thread
        pool: ``changing`` asked afterwards, on the reactor thread, judges
        whatever was read last, maybe by another check's thread.

        The prepared form first (what ``add`` and ``set_password`` hash);
        then, only when it differs from what was sent, the as-sent form,
        which hashes made before preparation hold.  An unknown user, and
        one whose hash cannot match, costs the same number of checks, so
        the time says nothing about who exists.
        """
        candidates = _login_forms(password)
        record, doubt = self.judged(address)
        # a hash that can never match (logged when the file is read) would
        # be refused before any scrypt ran: as slow as an unknown user
        if record is None or hash_problem(record.password_hash):
            for candidate in candidates:
                verify_password(candidate, _DUMMY_HASH)
            return False, doubt
        return any(verify_password(c, record.password_hash) for c in candidates), doubt

    def apop_secret(self, address: Address) -> str | None:
        record = self.get(address)
        return None if record is None else record.apop_secret

    def offers_apop(self) -> bool:
        """Whether any user of the file as it is now has an APOP secret
        (was added with ``--allow-apop``).  The POP3 greeting carries an
        APOP timestamp only then: a client such as Twisted's
        ``POP3Client.login()`` takes APOP whenever the greeting has one,
        and a user without a secret could never log in with it.  Follows
        the file as lookups do (one ``stat`` when it has not changed); the
        answer itself is worked out when the file is read."""
        self._refresh()
        return self._apop

    # -- writing -------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, UserRecord]]:
        """``<file>.lock`` held exclusively (next to the configured path,
        a link's too); yields the records as the file has them once the
        lock is ours, and writes them back.  A symbolic link to the file
        stays a link: the file it leads to is the one read and replaced,
        if each link on the way is in a folder only root and this user
        can change (``trusted_links.followed``); refused otherwise, before
        any folder or lock is made."""
        from txmailhub.hub_access import make_folders
        from txmailhub.trusted_links import followed, open_folder

        folder = os.path.dirname(os.path.abspath(self.path))
        followed(self.path, "[users] file", UsersFileError)

        try:
            make_folders(folder, self.folder_owner)
        except PermissionError as e:
            # "users.d: Permission denied" alone left the admin to guess
            # that deployment.rst's `install -d` line was the step missed
            raise PermissionError(e.errno, (
                f"cannot make {folder}, the folder of the users file {self.path}: "
                f"{e.strerror}; {make_folder_advice(folder, self.hub_user)}")) from e
        # 0600 whatever the umask: whoever can open the lock can block every
        # ``mailhub user`` command by holding it
        try:
            fd = open_lock(self.path + ".lock")
        except PermissionError as e:
            # a users.d that is there but not this user's to write: said as
            # ``check`` says it, not "users.lock: Permission denied" alone
            why = (unwritable_folder_advice(self.path, self.hub_user)
                   or lock_refused_advice(os.path.abspath(self.path),
                                          "the mailhub user commands", "the users file"))
            if why is None:
                raise
            raise PermissionError(e.errno, (
                f"cannot open {self.path}.lock, the lock of the users file: {e.strerror}; "
                f"{why}")) from e
        # as the users file's owner, or root's first `mailhub user` command
        # leaves a lock (0600) the hub's user can no longer open; before
        # there is a file, as its folder's (deployment.rst's users.d)
        from txmailhub.store.sync import give_to, owner_of

        give_to(fd, owner_of(self.path) or owner_of(folder))
        with open(fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._file.forget()
            # as it is now the lock is ours; read without following a link
            # put there since, and replaced so (``_write``)
            real = followed(self.path, "[users] file", UsersFileError)
            # its folder held open, read and replaced in by descriptor: a
            # folder on the way in the hub's folder (users.d) is the hub's
            # user's to replace by a link once judged, which the path
            # would follow to a folder of root's
            try:
                folder_fd: int | None = open_folder(real, UsersFileError)
            except FileNotFoundError:
                folder_fd = None  # (a link to a file in no folder: ``_write``)
            try:
                yield from self._changed(real, folder_fd)
            finally:
                if folder_fd is not None:
                    os.close(folder_fd)

    def _changed(self, real: str, folder_fd: int | None) -> Iterator[dict[str, UserRecord]]:
        """``_locked``'s change of the file ``real``, whose folder is open
        as ``folder_fd``."""
        from txmailhub.trusted_links import identity_in

        try:
            raw, st = read_regular(real, follow=False,
                                   most=USERS_FILE_MAX)  # (a FIFO: refused)
        except FileNotFoundError:
            raw, st = b"", None
        except NotRegularFile as e:
            raise UsersFileError(f"{self.path}: the users file is {e}: not read, nothing "
                                 "changed; put the users file there") from None
        except FileTooLarge as e:
            raise UsersFileError(f"{self.path}: the users file is {e}: not read, nothing "
                                 "changed") from None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise UsersFileError(f"{real} became a symbolic link during the change: not "
                                 "followed, nothing changed") from None
        if folder_fd is not None and identity_in(real, folder_fd) != (
                None if st is None else (st.st_dev, st.st_ino)):
            raise UsersFileError(f"{real}: a folder on the way was replaced during the "
                                 "change: not followed, nothing changed")
        before, _, keys, effective = self._parse(raw.decode("utf-8", "surrogateescape"))
        records = dict(before)
        yield records
        self._write(raw, keys, effective, before, records, real, folder_fd)

    def _write(self, raw: bytes, keys: list[str | None], effective: dict[str, int],
               before: dict[str, UserRecord], after: dict[str, UserRecord],
               real: str, folder_fd: int | None) -> None:
        """Edit the file in place, line by line: every line the change does
        not concern stays as it was, byte for byte -- comments, lines the
        hub cannot read (``check`` reports them; an admin may be halfway
        through fixing one), ignored duplicates.  A deleted user loses all
        its lines (a duplicate must not come into effect); a changed one
        gets its line in effect rewritten; new users go at the end.
        ``real``: the file replaced, the one a link leads to (which keeps
        its mode, whoever set it) or the configured path, in its folder
        open as ``folder_fd`` (``None``: a folder not there)."""
        from txmailhub.store.sync import durable_write

        bom = _BOM.encode("utf-8") if raw.startswith(_BOM.encode("utf-8")) else b""
        lines = raw[len(bom):].split(b"\n")
        crlf = lines[0].endswith(b"\r")  # a file written on Windows keeps its line ends
        out: list[bytes] = []
        for i, (line, key) in enumerate(zip(lines, keys, strict=True)):
            if key is not None and key in before:
                if key not in after:
                    continue  # every line of a deleted user, unreadable ones too
                if after[key] != before[key] and effective.get(key) == i:
                    new = after[key].to_line().rstrip("\n").encode("utf-8")
                    out.append(new + b"\r" if line.endswith(b"\r") else new)
                    continue
            out.append(line)
        text = b"\n".join(out)
        added = [after[k] for k in sorted(after) if k not in before]
        if added:
            eol = b"\r\n" if crlf else b"\n"
            if not text.strip():
                text = b"# txmailhub users: <address> <scrypt hash> [apop=<secret>]" + eol
            elif not text.endswith(b"\n"):
                text += eol
            text += b"".join(r.to_line().rstrip("\n").encode("utf-8") + eol for r in added)
        if len(bom) + len(text) > USERS_FILE_MAX:
            # written, the file would be one the hub refuses to read
            raise UsersFileError(f"{self.path}: the change would make the users file larger "
                                 f"than {size_text(USERS_FILE_MAX)}, the most the hub reads "
                                 "of it: nothing changed")
        # root's first `mailhub user add` (the README's everyday command)
        # must not leave a file only root can read next to a hub running as
        # the folder's owner: a new file is the folder's owner's
        linked = real != os.path.abspath(self.path) and os.path.islink(self.path)
        if folder_fd is None:
            if linked:
                raise UsersFileError(f"{self.path} is a symbolic link to {real}, whose folder "
                                     "is not there: nothing changed; make the folder, or set "
                                     "[users] file to the file itself")
            raise UsersFileError(f"{self.path}: its folder was removed during the change: "
                                 "nothing changed")
        folder_st = os.fstat(folder_fd)
        durable_write(real, bom + text, mode=0o600, keep_mode=linked,
                      new_owner=(folder_st.st_uid, folder_st.st_gid), dir_fd=folder_fd)
        self._file.forget()

    def _local(self, name: str, records: dict[str, UserRecord] | None = None) -> Address:
        """The user ``name`` (a ``mailhub user`` argument) stands for: as
        ``user add`` writes it (``as_given``), or among ``records`` (the
        file's) a line written as the name is read there (``_found``)."""
        # ESC, DEL, C1 controls taken: a user of such a name written before
        # they were refused can still be deleted or get a new password;
        # ``_new_address`` refuses them for new users.  A message naming
        # the address ("no such user") shows it escaped: it goes to a terminal
        try:
            written = parse_address(name, self.primary_domain, controls=True)
        except AddressError as e:
            raise UsersFileError(str(e)) from None
        address = self._found(written, records or {})
        if canonical_domain(address.domain) not in self.domains:
            raise UsersFileError(
                f"{shown(str(address))} is not in a local domain ({', '.join(self.domains)})"
            )
        return address

    def _check_password(self, address: Address, password: str, allow_weak: bool) -> str:
        """The prepared form of a new password, to hash; refuses one that
        cannot work (always: unusable, or refused by preparation) or that
        the policy finds weak (unless ``allow_weak``).  The policy sees
        the prepared form: that is the password a login must match."""
        why = self.password_policy.unusable(password)
        if why:
            raise UsersFileError(why)
        try:
            prepared = prepare_password(password)
        except PreparationError as e:
            raise UsersFileError(str(e)) from None
        if not allow_weak:
            refusal = self.password_policy.refusal(prepared, address)
            if refusal:
                raise WeakPassword(refusal)
        return prepared

    def add(self, name: str, password: str, allow_apop: bool = False, *,
            allow_weak: bool = False) -> Address:
        """Create a user; ``allow_weak`` skips the password policy (tests,
        automation with known passwords), not the checks of the address."""
        address = self._new_address(name)
        prepared = self._check_password(address, password, allow_weak)
        with self._locked() as records:
            if address.key in records:
                raise UserExists(f"{address} already exists")
            records[address.key] = UserRecord(
                address, hash_password(prepared), password if allow_apop else None
            )
        return address

    def _new_address(self, name: str) -> Address:
        # as RCPT names it ('"joe"' is joe, and 'a;' is '"a;"'); quotes
        # that are no one quoted string ('"a""b"') become one, which RCPT
        # can give (``as_given``, which ``_local`` reads a name with)
        address = self._local(name)
        # new users only: one already in the file (added by hand, or before
        # these checks) can still be deleted or get a new password
        why = mail_never_reaches(address)
        if why:
            raise UsersFileError(f"{address} cannot be a user: {why}")
        from txmailhub.store.maildir import folder_name_problem

        # a local domain whose U-labels are over NAME_MAX octets (its
        # A-labels fit DNS): no Maildir of it can be made (check warns of it)
        why = folder_name_problem(canonical_domain(address.domain))
        if why:
            why = why.replace("its Maildir folder's", "its domain's Maildir folder's", 1)
            raise UsersFileError(f"{address} cannot be a user: {why}: it gets no mail and "
                                 "cannot log in to POP3")
        if len(address.local.encode("utf-8")) > 64:  # RFC 5321 4.5.3.1.1
            raise UsersFileError(f"the local part of {address} is over 64 octets")
        if not address.local.isprintable():
            raise UsersFileError("the address has a control character in it")
        return address

    def precheck(self, name: str, *, new: bool) -> Address:
        """Refuse now what ``add`` (``new``) or ``set_password`` would
        refuse about the address alone, so that ``mailhub user add`` and
        ``user passwd`` say so before asking for a password twice, not
        after.  Only a courtesy: the file may change before the real
        call, which checks again under the lock and has the last word."""
        # not reported: a missing file is no error here (the first `user
        # add` makes it), and this process is no hub refusing mail with 451
        records = self._refresh(report=False)
        address = self._new_address(name) if new else self._local(name, records)
        exists = address.key in records
        if new and exists:
            raise UserExists(f"{address} already exists")
        if not new and not exists and self.unreadable is None:
            raise NoSuchUser(f"no such user: {shown(str(address))}")
        return address

    def delete(self, name: str) -> Address:
        self._local(name)  # a name that is no address: refused before the lock
        with self._locked() as records:
            address = self._local(name, records)
            if records.pop(address.key, None) is None:
                raise NoSuchUser(f"no such user: {shown(str(address))}")
        return address

    def set_password(self, name: str, password: str, *, allow_weak: bool = False) -> Address:
        """Change the password; an APOP secret, if the user had one, follows it.
        The policy judges the new password as ``add`` does."""
        address = self._local(name)
        prepared = self._check_password(address, password, allow_weak)
        with self._locked() as records:
            address = self._local(name, records)
            old = records.get(address.key)
            if old is None:
                raise NoSuchUser(f"no such user: {shown(str(address))}")
            records[address.key] = UserRecord(
                address, hash_password(prepared),
                password if old.apop_secret is not None else None,
            )
        return address
