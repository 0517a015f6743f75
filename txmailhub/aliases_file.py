"""Changing the aliases file: the read-modify-write cycle of ``mailhub alias``.

Owns how an alias is added, replaced and removed in a file that admins
also edit by hand.  The format, its checks and what an alias means
belong to ``txmailhub.router``.  A change is judged by parsing the new
line with ``parse_aliases`` and the whole file as it would be after the
change with ``alias_loops`` and ``alias_warnings``, the functions
``mailhub check`` and the running hub use.  So a change is refused
exactly when check would report a problem on the changed line (a bad
name or target), or a loop the file did not have before (a problem for
check: a systemd ``ExecStartPre`` running it would refuse the next
start), or when it would make an alias that takes all the mail of a user
of its name.  The refusal uses check's words.  Check's other new
warnings (a target that is no local user) are returned, and the change
is made.

The file is edited, not regenerated.  Comments, blank lines, lines the
hub cannot read and the other aliases stay as they were, byte for byte,
in their order and with their line ends.  A new alias is a new line at
the end.  A replaced alias gets its first line (and its continuation
lines) rewritten as one line that keeps its name as it was written, and
its other lines (the name written again further down, quoted or not)
removed: afterwards it has exactly the targets set.  A removed alias
loses all of its entries, including ignored duplicates, which would
otherwise come into effect.  A byte-order mark
at the start stays there, and none is added.

Writers take an exclusive lock on ``<file>.lock`` next to the
configured path (next to the link, if it is one), as
``mailhub user`` does with the users file's lock, so two commands run
at once apply one after the other.  They replace the file atomically and
durably (``durable_write``: a temporary file, fsync, rename, fsync of the
folder), and it keeps its owner and mode.  A symbolic link to the file
stays a link: the file it points to is the one replaced -- but only a
link in a folder that nobody but root and the user running the command
can change.  Another user who can change the folder (the hub's, when
the file is kept in users.d or the state folder) could point the link at
any file of root's, and root's next ``mailhub alias add`` would rewrite
that file, keeping its owner and mode: such a link is refused, as the
users file's lock is (``users_folder.open_lock``).  The running
hub needs no signal, since it reads the file again when its stamp changes
(``txmailhub.filestamp``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from txmailhub.address import Address, AddressError, canonical_domain, parse_address
from txmailhub.errors import AliasesFileError, AliasExists, BadAlias, NoSuchAlias
from txmailhub.logsafe import quoted, shown
from txmailhub.regular_file import FileTooLarge, NotRegularFile, read_regular, size_text
from txmailhub.router import (
    ALIASES_FILE_MAX,
    BOM,
    CONTINUATION,
    Aliases,
    AliasWarning,
    _quoted_end,
    alias_address,
    alias_loops,
    alias_warnings,
    file_lines,
    line_of_octet,
    loop_problem,
    parse_aliases,
    rcpt_path_octets,
    split_alias_line,
    split_targets,
)
from txmailhub.trusted_links import followed, identity_in, open_folder

__all__ = ["AliasesFile", "Change", "target_text"]


@dataclass(frozen=True)
class Change:
    """What a change did: the alias (its key), whether it is new, the
    warnings ``mailhub check`` gives after it that it did not give before,
    and (``set``) the other lines of the alias it removed, by their number
    in the file as it was (the first line of each: its continuation lines
    went with it)."""

    alias: str
    created: bool
    warnings: list[str] = field(default_factory=list)
    removed_lines: list[int] = field(default_factory=list)


@dataclass
class _Entry:
    """One alias as the file writes it: its key (``None``: a name that is
    no address), the indexes of its lines (the first, then its
    continuation lines), and whether the hub takes it (``parse_aliases``
    finds no problem with the entry on its own)."""

    key: str | None
    lines: list[int]
    usable: bool


def target_text(target: Address, expand: bool, local_domains: Iterable[str]) -> str:
    """A target as ``mailhub alias`` shows it: a local one as the hub
    names the mailbox (its key), a remote one as written (the remote
    decides what case means); ``\\`` before one that is not expanded."""
    local = canonical_domain(target.domain) in set(local_domains)
    return ("" if expand else "\\") + (target.key if local else str(target))


class AliasesFile:
    """The aliases file at ``path``, for reading and changing it.

    ``is_user`` tells whether an address is a user (``UsersDB.contains``).
    ``None`` means the users file cannot be read: then, as ``check`` does,
    neither an alias that hides a user nor a target that is no user is
    judged."""

    def __init__(self, path: str, primary_domain: str, domains: Iterable[str],
                 is_user: Callable[[Address], bool] | None = None) -> None:
        self.path = path
        self._real = path  # the file a change replaces (``_followed``)
        self._folder_fd: int | None = None  # its folder, open during a change
        self._read_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the text read
        self._bom = ""  # its byte-order mark, kept by a change
        self.primary_domain = canonical_domain(primary_domain)
        self.domains = tuple(canonical_domain(d) for d in domains) or (self.primary_domain,)
        self.is_user = is_user

    # -- reading -------------------------------------------------------------

    def _text(self, path: str | None = None) -> str:
        """The file's text; ``path``: the file a link led to
        (``_followed``), read without following a link put there since."""
        try:
            # never a plain open: one of a FIFO put there would wait for ever
            if path is None:
                raw, st = read_regular(self.path, most=ALIASES_FILE_MAX)
            else:
                raw, st = read_regular(path, follow=False, most=ALIASES_FILE_MAX)
        except FileNotFoundError:
            self._read_id = None
            return ""  # away for a moment: the first add makes it again
        except NotRegularFile as e:
            raise AliasesFileError(
                f"{e.path}: [aliases] file is {e}: not read, nothing changed; "
                "set [aliases] file to a regular file") from None
        except FileTooLarge as e:
            raise AliasesFileError(
                f"{e.path}: [aliases] file is {e}: not read, nothing changed") from None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise AliasesFileError(
                f"{path} became a symbolic link during the change: not followed, "
                "nothing changed") from None
        self._read_id = st.st_dev, st.st_ino
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            # at its line, as check says it: the line to open in an editor
            raise AliasesFileError(
                f"{self.path}:{line_of_octet(raw, e.start)}: [aliases] file is not UTF-8 text "
                f"({e.reason} at octet {e.start}): fix it first (mailhub check), the hub does "
                "not read it") from None

    def _parse(self, text: str) -> Aliases:
        return parse_aliases(text, self.primary_domain, self.domains, self.path)[0]

    def read(self) -> Aliases:
        """The aliases as the hub takes them (bad lines left out: ``check``
        names them)."""
        return self._parse(self._text())

    def key(self, name: str, *, controls: bool = False) -> str:
        """The key of the alias ``name`` (a bare name is in the primary domain).
        ``controls``: a name with ESC, DEL or a C1 control is taken, to find
        a line written before they were refused (``remove``)."""
        try:
            return alias_address(name, self.primary_domain, controls=controls).key
        except AddressError as e:
            raise BadAlias([f"bad alias name: {e}"]) from None

    # -- the file's entries --------------------------------------------------

    def _entries(self, lines: list[str]) -> list[_Entry]:
        """The aliases of ``lines`` (``file_lines(keepends=True)``: the
        lines ``parse_aliases`` numbers), as it reads them."""
        entries: list[_Entry] = []
        for i, raw in enumerate(lines):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            if raw[0] in CONTINUATION:
                if entries:
                    entries[-1].lines.append(i)
                continue  # a continuation of nothing: no alias's line
            entries.append(_Entry(self._name_key(raw, controls=True), [i], False))
        for entry in entries:
            text = "".join(lines[i] for i in entry.lines)
            table, _ = parse_aliases(text, self.primary_domain, self.domains)
            entry.usable = bool(table)
        return entries

    def _name_key(self, line: str, *, controls: bool = False) -> str | None:
        """The key of the alias ``line`` names; ``controls``: as ``key``
        (a line of the file is still that alias's, for ``remove`` to take
        away; a name to write is judged strictly)."""
        split = split_alias_line(line)
        if split is None:
            return None
        try:
            return alias_address(split[0], self.primary_domain, controls=controls).key
        except AddressError:
            return None

    # -- changing ------------------------------------------------------------

    def add(self, name: str, targets: list[str]) -> Change:
        """A new alias; refused (``AliasExists``) if the file has one of that name."""
        return self._put(name, targets, replace=False)

    def set(self, name: str, targets: list[str]) -> Change:
        """The alias ``name`` with exactly these targets, made if it is not there."""
        return self._put(name, targets, replace=True)

    def remove(self, name: str) -> Change:
        """Remove every entry of the alias ``name`` (``NoSuchAlias`` if none),
        one with ESC, DEL or a C1 control in its name too: a line written
        before they were refused, which ``check`` names as a bad alias."""
        key = self.key(name, controls=True)
        with self._locked() as text:
            lines = file_lines(text, keepends=True)
            entries = self._entries(lines)
            # every spelling of the name: ``a;`` and ``"a;"`` are one alias
            # (``alias_address``), as ``set`` leaves one line for them all
            gone = {i for e in entries if e.key == key for i in e.lines}
            if not gone:
                # the name may hold ESC (``controls``): never raw to the terminal
                raise NoSuchAlias(f"no such alias: {shown(key)}")
            new = "".join(line for i, line in enumerate(lines) if i not in gone)
            warnings = self._new_warnings(text, new, key)
            self._write(new)
        return Change(key, False, warnings)

    def _put(self, name: str, targets: list[str], *, replace: bool) -> Change:
        name = name.strip()
        targets = [t.strip() for t in targets if t.strip()]
        self._refuse_unwritable(name, targets)
        # as RCPT names them: 'a;' only quoted, '"a;"' (the file reads an
        # unquoted one so too; written quoted, it says what it means) --
        # but for '"#a"', the alias #a, which a line starts only quoted
        # ('#a: joe' is a comment; '#a' typed so is refused above)
        plain = self.rcpt_form(name)
        name = name if plain.startswith("#") else plain
        targets = [t[:len(t) - len(t.lstrip("\\"))] + self.rcpt_form(t.lstrip("\\"),
                                                                      local_only=True)
                   for t in targets]
        too_long = _beyond_rcpt(name, self.primary_domain)  # the quotes count too
        if too_long:
            raise BadAlias(too_long)
        with self._locked() as text:
            lines = file_lines(text, keepends=True)
            entries = self._entries(lines)
            key = self._name_key(name + ":")
            # (``a;: joe``, as an older ``alias add`` wrote it, is this
            # alias too: ``alias_address`` reads it "a;", as RCPT gives it)
            mine = [e for e in entries if key is not None and e.key == key]
            if mine and not replace:
                there = mine[0]
                where = there.lines[0] + 1
                why = "" if there.usable else " (a line the hub cannot use)"
                raise AliasExists(
                    f"{self.path}:{where}: the alias {key} is already there{why}"
                    + ": `mailhub alias set` replaces its targets")
            # the first line of the name is rewritten; every other line of
            # the name goes (below):
            # set means the alias has exactly these targets afterwards,
            # and a second line of it -- ignored by the hub while the first
            # is usable, in effect when it is not, named by check either
            # way -- would not be these targets
            entry = (mine or [None])[0]
            if entry is not None:
                first = lines[entry.lines[0]]
                written_name = _written_name(first)
                eol = first[len(first.rstrip("\r\n")):] or _eol(lines)
                number: int | None = entry.lines[0] + 1
            else:
                written_name, eol = name, _eol(lines)
                if lines and not lines[-1].endswith(("\n", "\r")):
                    lines[-1] += eol
                number = None  # no line of the file yet
            line = f"{written_name}: {', '.join(targets)}"
            self._refuse_problems(line, number)
            removed: list[int] = []
            if entry is not None:
                lines[entry.lines[0]] = line + eol
                # and every other line of the name, written again further
                # down (quoted or not): set leaves one line for the alias,
                # not one that comes into effect beside it
                others = [e for e in mine if e is not entry]
                removed = sorted(e.lines[0] + 1 for e in others)
                drop = set(entry.lines[1:]).union(*(e.lines for e in others))
                lines = [x for i, x in enumerate(lines) if i not in drop]
            else:
                lines.append(line + eol)
            new = "".join(lines)
            key = next(iter(self._parse(line)))
            self._refuse_loops(text, new, None if entry is not None else key)
            warnings = self._new_warnings(text, new, key)
            self._write(new)
        return Change(key, entry is None, warnings, removed)

    def rcpt_form(self, text: str, *, local_only: bool = False) -> str:
        """``text`` (a name or target as typed) with its local part as
        RCPT can give it: ``a;`` (no dot-string) as ``"a;"``, the form the
        hub keys such a mailbox by; a quoted one as RCPT gives it (``"zz"``
        as ``zz``, ``"a\\:b"`` as ``"a:b"``), the key the file's reader
        gives it; anything else as it is (a dot-string, what is no address
        or a target the file does not support, which the checks refuse in
        their own words).
        ``local_only`` (a target): a remote address is left to its domain,
        whose rules are its own, and ``<...>`` is the address within, in
        its brackets still."""
        from txmailhub.router import unsupported_target
        from txmailhub.smtp._parse import rcpt_local, unquote_local

        if unsupported_target(text):
            return text
        if local_only and len(text) > 1 and text[0] == "<" and text[-1] == ">":
            # a target in brackets is the address within, as the file is
            # read (``<joe>`` is joe, not the mailbox "<joe>")
            return "<" + self.rcpt_form(text[1:-1], local_only=True) + ">"
        try:
            address = parse_address(text, self.primary_domain)
        except AddressError:
            return text
        local = address.local
        if local_only and canonical_domain(address.domain) not in self.domains:
            return text
        written = _quoted_local(text)
        if written is not None and _quoted_end(written) == len(written):
            # '"zz"' as RCPT gives it, zz: the key the file's reader
            # gives it too, written so
            return unquote_local(written) + text[len(written):]
        if local.startswith('"') or not text.startswith(local):
            return text
        return rcpt_local(local) + text[len(local):]

    def _refuse_unwritable(self, name: str, targets: list[str]) -> None:
        """What no line of the file can say, whatever it holds: the file's
        own syntax in a name or target (``parse_aliases`` would read
        another alias, or none)."""
        why = []
        if not name:
            why.append("the alias name is empty")
        elif name.startswith("#"):
            local, at, domain = name.rpartition("@") if "@" in name else (name, "", "")
            inner = local.replace("\\", "\\\\").replace('"', '\\"')
            why.append(f"alias name {quoted(name)}: a line that starts with # is a comment: "
                       f'write the name quoted, "{inner}"{at}{domain}')
        elif split_alias_line(name) is not None:
            why.append(f"alias name {quoted(name)}: the file ends a name at its first ':' "
                       "outside quotes (write such a name quoted)")
        if not targets:
            why.append("no target given")
        for text in (name, *targets):
            # as the file ends a line: a form feed or U+2028 ends none (it
            # is white space in a name or target, which check says so)
            if len(file_lines(f"x{text}x")) > 1:
                why.append(f"{quoted(text)}: a line break cannot be part of a name or target")
        why.extend(f"target {quoted(t)}: the file separates targets with ',' (outside quotes)"
                   for t in targets if len(split_targets(t)[0]) > 1)
        why.extend(_beyond_rcpt(name, self.primary_domain))
        for what, text in (("alias name", name), *(("target", t) for t in targets)):
            local = _quoted_local(text.lstrip("\\").strip("<>"))
            if local is not None and _quoted_end(local) != len(local):
                # '"a""b"': no RCPT TO names it (a syntax error), and
                # '"a\"\"b"' is another address: written, it got a warning
                # and never any mail
                why.append(f"{what} {quoted(text)}: its quotes are no one quoted string, so no "
                           "RCPT TO could name it: write one quoted string, a '\"' inside it "
                           "escaped with a backslash")
        if why:
            raise BadAlias(why)

    def _refuse_problems(self, line: str, number: int | None) -> None:
        """``check``'s problems with ``line`` as line ``number`` of the file,
        the line it replaces; ``None``: a line to be added, named ``(new
        line)`` -- the number it would have after the change is one the
        file shown does not have yet."""
        _, problems = parse_aliases(line, self.primary_domain, self.domains, self.path)
        prefix = f"{self.path}:1: "
        where = f"{self.path} (new line):" if number is None else f"{self.path}:{number}:"
        if problems:
            raise BadAlias([f"{where} {p.removeprefix(prefix)}" for p in problems])

    def _refuse_loops(self, old: str, new: str, appended: str | None) -> None:
        """A loop the change would make, refused in check's words, at the
        lines of the file as the change would leave it; ``appended``: the
        alias of a line to be added, named ``the new line`` (the file shown
        has no such line yet)."""
        before = {frozenset(loop.split(" -> ")) for loop in alias_loops(self._parse(old))}
        lines: dict[str, int] = {}
        table = parse_aliases(new, self.primary_domain, self.domains, self.path, lines)[0]
        if appended is not None:
            lines.pop(appended, None)
        made = [loop for loop in alias_loops(table)
                if frozenset(loop.split(" -> ")) not in before]
        if made:
            raise AliasesFileError("\n".join(
                [loop_problem(self.path, loop, lines) for loop in made]
                + ["not changed: `mailhub check` reports an alias loop as a problem (exit 2), "
                   "and a start that runs it first would stop"]))

    def _new_warnings(self, old: str, new: str, key: str) -> list[str]:
        """``check``'s warnings after the change that it did not give
        before; refused if one is that ``key`` hides a user -- also when
        it did before the change (typed by hand, or made before the user
        was): ``set`` must not make such an alias anew, as ``add`` may not."""
        if self.is_user is None:
            return []
        is_user = self.is_user

        def warnings(text: str, lines: dict[str, int] | None = None) -> list[AliasWarning]:
            table = parse_aliases(text, self.primary_domain, self.domains, self.path, lines)[0]
            return alias_warnings(table, self.path, self.primary_domain, self.domains, is_user,
                                  lines)

        # judged without lines (a line removed above an alias moves its
        # warning, which is no new one), said at the alias's line in the
        # file as written, as check says it; a refusal has no such file
        before = {w.text for w in warnings(old)}
        lines: dict[str, int] = {}
        out = []
        for w, at_line in zip(warnings(new), warnings(new, lines), strict=True):
            if w.hides_user and w.alias == key:
                raise AliasesFileError(
                    f"{w.text}; not changed (to send all of it elsewhere, remove the user "
                    "first: mailhub user del)")
            if w.text not in before:
                out.append(at_line.text)
        return out

    # -- the write -------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[str]:
        """``<file>.lock`` held exclusively; yields the file's text as it
        is once the lock is ours.  The lock is next to the configured
        path, a link's too, as the users file's is (``users.lock`` next to
        ``[users] file``): where the documentation says, and in a folder
        already judged safe (``_followed``) -- never in the folder of a
        file a link leads to, which may be anyone's."""
        from txmailhub.store.sync import give_to, owner_of
        from txmailhub.users_folder import lock_refused_advice, open_lock

        self._followed()  # a link that must not be followed: refused before any lock is made
        path = os.path.abspath(self.path)
        try:
            fd = open_lock(path + ".lock", AliasesFileError)
        except PermissionError as e:
            raise PermissionError(e.errno, (
                f"cannot open {path}.lock, the lock of the aliases file: {e.strerror}; "
                + (lock_refused_advice(path, "the alias commands", "the aliases file")
                   # no lock yet: the folder is root's in deployment.rst, and the
                   # admin ran the command as the hub's user, as for `mailhub user`
                   or f"run the alias commands as a user who may write "
                   f"{os.path.dirname(path)} (root, where the file is root's as in "
                   "docs/deployment.rst)"))) from e
        # as the file's owner, as the users lock: the hub's user may run
        # the next command; before there is a file, as its folder's
        give_to(fd, owner_of(path) or owner_of(os.path.dirname(path)))
        with open(fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            real = self._real = self._followed()  # as it is now the lock is ours
            # its folder held open, read and replaced in by descriptor: a
            # folder on the way that is in another user's folder may be
            # replaced by a link once judged, which the path would follow
            try:
                self._folder_fd = open_folder(real, AliasesFileError)
            except FileNotFoundError:
                self._folder_fd = None  # (``_write`` says so)
            try:
                yield from self._read_locked(real)
            finally:
                if self._folder_fd is not None:
                    os.close(self._folder_fd)
                    self._folder_fd = None

    def _read_locked(self, real: str) -> Iterator[str]:
        """``_locked``'s text of ``real``, the file in the open folder."""
        text = self._text(real)
        if self._folder_fd is not None and identity_in(real, self._folder_fd) != self._read_id:
            raise AliasesFileError(f"{real}: a folder on the way was replaced during the "
                                   "change: not followed, nothing changed")
        # a byte-order mark first is none of the text (``parse_aliases``
        # leaves it out too), and the file keeps it (``_write``)
        self._bom = BOM if text.startswith(BOM) else ""
        yield text.removeprefix(BOM)

    def _followed(self) -> str:
        """The file a change reads and replaces (``trusted_links.followed``):
        a link is followed only in a folder only root and this user can
        change."""
        return followed(self.path, "[aliases] file", AliasesFileError)

    def _write(self, text: str) -> None:
        from txmailhub.store.sync import durable_write

        real = self._real
        data = (self._bom + text).encode("utf-8")
        if len(data) > ALIASES_FILE_MAX:
            # written, the file would be one the hub refuses to read
            raise AliasesFileError(
                f"{self.path}: the change would make the [aliases] file larger than "
                f"{size_text(ALIASES_FILE_MAX)}, the most the hub reads of it: nothing changed")
        # a file that is there keeps its owner and mode; one made again
        # (it was away) is readable by all, as /etc/aliases, whatever the
        # umask, and the folder owner's
        if self._folder_fd is None:
            raise AliasesFileError(f"{real}: its folder is not there: nothing changed")
        folder = os.fstat(self._folder_fd)
        durable_write(real, data, mode=0o644, keep_mode=True,
                      new_owner=(folder.st_uid, folder.st_gid), dir_fd=self._folder_fd)


def _written_name(line: str) -> str:
    """The name of the alias ``line`` as written (before its first ``:``
    outside quotes, as the hub reads it; the whole line if there is none)."""
    split = split_alias_line(line)
    return (line if split is None else split[0]).strip()


def _eol(lines: list[str]) -> str:
    """The line end the file uses (its first line's), LF for a new file."""
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith("\n"):
            return "\n"
    return "\n"


def _quoted_local(address: str) -> str | None:
    """The local part of ``address`` when it is written in quotes (``"zz"``,
    ``"a""b"``), else None."""
    if "@" in address and not address.endswith('"'):  # (a bare '"a@b"' is all local part)
        local = address[:address.rindex("@")]
    else:
        local = address
    if len(local) < 2 or not local[0] == local[-1] == '"':
        return None
    return local


def _beyond_rcpt(name: str, primary_domain: str) -> list[str]:
    """Why no ``RCPT`` can name the alias ``name``: its path is over the
    256 octets the SMTP server takes (RFC 5321 4.5.3.1.3) in each spelling
    of its domain, so every message to it would get 501.  A name that is
    no address is left to ``check``'s own words."""
    from txmailhub.smtp._parse import MAX_PATH

    try:
        address = alias_address(name, primary_domain)
    except AddressError:
        return []
    shortest = rcpt_path_octets(address)
    if shortest <= MAX_PATH:
        return []
    return [f"alias name {quoted(name)}: {address} is {shortest} octets, and RCPT TO takes a path "
            f"of at most {MAX_PATH}: no message could reach it"]
