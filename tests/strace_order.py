"""Durability order read off an ``strace -f -tt`` log.

The project's rule: nothing is acknowledged (an SMTP ``250``, a POP3
``+OK``, a command's exit 0) before what it acknowledges is durable --
a file's data fsynced before the file is renamed or linked into place,
and the folder fsynced after the rename, link, unlink or mkdir.  This
module reads a trace of a real process and says, for one acknowledgement,
which steps before it were not yet durable (``Trace.unsynced_before``).

An fsync is either ``fsync(2)`` (done when it returns) or a kernel AIO
request (``io_submit`` of an ``IOCB_CMD_FSYNC``, done when
``io_getevents`` hands back its ``aio_data`` with ``res=0``).  Either
covers what happened before it started: data written, or entries
changed in the folder, after its start are not covered by it.

Descriptors are followed through ``openat``/``close``, one table per
process (a name a ``*at`` call gives relative to a folder descriptor is
joined to that folder's path): the threads of a process share it (``clone`` with
``CLONE_FILES``), a forked child (a command the hub runs) gets a copy,
so that its closes before ``exec`` leave the parent's descriptors alone.
A call strace shows in two parts (``<unfinished ...>``, then
``resumed``, while other threads ran) takes its descriptors at its
start, and a ``close`` frees its number there: another thread may get
that number from an ``open`` before strace shows the ``close``
returning.  Files are followed by identity, not name: an ``O_CREAT``
open makes a new file, ``link`` gives it another name, ``rename``
moves the name.  Used by ``tests/integration/test_durable_order.py``.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = ["TRACED_CALLS", "Event", "Trace", "strace_usable"]

#: the system calls a log must hold for ``Trace`` to judge it (``io_setup``
#: too: strace makes a call fail, ``-e inject=``, only where it traces it)
TRACED_CALLS = ("openat,open,creat,write,pwrite64,writev,fsync,fdatasync,rename,renameat,"
                "renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,sendto,sendmsg,"
                "io_setup,io_submit,io_getevents,syncfs,close,exit_group,"
                "clone,clone3,fork,vfork")

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<time>\d\d:\d\d:\d\d\.\d+)\s+(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|0x[0-9a-f]+|\?)")
_STR = r'"((?:[^"\\]|\\.)*)"'
_IOCB = re.compile(r"aio_data=(0x[0-9a-f]+|\d+), aio_lio_opcode=IOCB_CMD_FSYNC, "
                   r"aio_fildes=(\d+)")
_IOEVENT = re.compile(r"\{data=(0x[0-9a-f]+|\d+), obj=[^,]*, res=(-?\d+)")
_UNFINISHED = "<unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. \w+ resumed>\s?(.*)$")
_FORKS = ("clone", "clone3", "fork", "vfork")


def strace_usable() -> str | None:
    """Why strace cannot trace here (not installed, ptrace refused), or None."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed"
    try:
        run = subprocess.run([strace, "-f", "-o", "/dev/null", "true"], capture_output=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"strace cannot run: {e}"
    if run.returncode != 0:
        return f"strace cannot trace here: {run.stderr.decode(errors='replace').strip()}"
    return None


def _unescape(s: str) -> str:
    return s.encode("latin-1", "backslashreplace").decode("unicode_escape").encode(
        "latin-1").decode("utf-8", "replace")


def _beneath(fds: dict[int, tuple[int, str]], folder: int | None, name: str) -> str:
    """``name`` as a ``*at`` call names it: itself where it is absolute or
    relative to the working folder (``AT_FDCWD``: None), else joined to
    the path of the folder descriptor ``folder``."""
    if folder is None or name.startswith("/") or folder not in fds:
        return name
    return fds[folder][1].rstrip("/") + "/" + name


def _number(s: str) -> int:
    return int(s, 16) if s.startswith("0x") else int(s)


@dataclass
class Event:
    """One step of the log.  ``begun`` and ``seq`` place its start and its
    return among the log's lines (a call strace shows ``<unfinished ...>``
    and then ``resumed`` has the two apart; others one place).  ``kind``
    is ``write`` (``obj``: the file), ``name`` (an entry made or removed
    in ``folder``: ``call`` says which -- ``rename-from`` for the old name
    of a rename --, ``obj`` the file named, ``path`` the name), ``sync``
    (an fsync of ``obj``, done at ``done``: None if it never succeeded),
    ``send`` (``text``, on the wire) or ``exit``."""

    seq: int
    kind: str
    line: str
    obj: int | None = None
    path: str = ""
    folder: str = ""
    call: str = ""
    text: str = ""
    done: int | None = None
    begun: int = -1

    def __post_init__(self) -> None:
        if self.begun < 0:
            self.begun = self.seq


@dataclass
class Trace:
    """A parsed log; ``events`` in the order the log has them."""

    events: list[Event] = field(default_factory=list)

    @classmethod
    def read(cls, path: str) -> Trace:
        with open(path, encoding="utf-8", errors="replace") as f:
            return cls.parse(f.read().splitlines())

    @classmethod
    def parse(cls, lines: list[str]) -> Trace:
        trace = cls()
        seq = itertools.count()
        ids = itertools.count(1)
        forks = _forks(lines)
        tables: dict[str, dict[int, tuple[int, str]]] = {}  # process -> fd -> (file, path)
        # thread -> (call so far, its start, its descriptors then)
        unfinished: dict[str, tuple[str, int, dict[int, tuple[int, str]]]] = {}
        names: dict[str, int] = {}  # path -> file
        aio: dict[int, Event] = {}  # aio_data -> its sync
        events = trace.events

        def file_of(path: str) -> int:
            if path not in names:
                names[path] = next(ids)
            return names[path]

        def table_of(pid: str) -> dict[int, tuple[int, str]]:
            table = tables.get(pid)
            if table is None:
                parent, shared = forks.get(pid, ("", True))
                if parent and parent != pid:
                    table = table_of(parent)
                    table = table if shared else dict(table)
                else:  # the first process, or one whose start is not in the log
                    table = tables.setdefault("", {})
                tables[pid] = table
            return table

        for raw in lines:
            m = _LINE.match(raw)
            if m is None:
                continue
            pid, rest = m.group("pid"), m.group("rest")
            table = table_of(pid)
            if rest.endswith(_UNFINISHED):
                so_far = rest[: -len(_UNFINISHED)].rstrip()
                # its descriptors as they were at its start
                held = {fd: table[fd] for fd in _descriptors(so_far) if fd in table}
                if so_far.startswith("close("):
                    for fd in held:
                        table.pop(fd, None)  # the number is free from the start
                unfinished[pid] = (so_far, next(seq), held)
                continue
            resumed = _RESUMED.match(rest)
            at = next(seq)
            started: dict[int, tuple[int, str]] | None = None
            if resumed:
                so_far, begun, started = unfinished.pop(pid, ("", at, None))
                rest = so_far + resumed.group(1)
            else:
                begun = at
            if rest.startswith("+++ exited with"):
                events.append(Event(at, "exit", raw, text=rest))
                continue
            c = _CALL.match(rest)
            if c is None:
                continue
            name, args, ret = c.group("name"), c.group("args"), c.group("ret")
            if ret.startswith("-") or ret == "?":
                continue  # failed: it changed nothing
            strings = [_unescape(s) for s in re.findall(_STR, args)]
            first = re.match(r"(\d+)(?:,|$)", args)
            fd = int(first.group(1)) if first else -1
            # what a descriptor named when the call began
            fds = table if started is None else started
            if name.endswith("at") or name == "renameat2":
                # a name relative to a folder held open (``dir_fd``): the
                # path that folder had when it was opened
                strings = [_beneath(fds, int(d) if d.isdigit() else None, _unescape(s))
                           for d, s in re.findall(r"(AT_FDCWD|\d+), " + _STR, args)]
            if name in ("openat", "open", "creat"):
                path = strings[0]
                if name == "creat" or ("O_CREAT" in args and (
                        "O_EXCL" in args or "O_TRUNC" in args or path not in names)):
                    names[path] = next(ids)  # a new file (or one emptied: new data)
                new_fd = int(ret)
                table[new_fd] = (file_of(path), path)
                if "O_TRUNC" in args:
                    events.append(Event(at, "write", raw, obj=table[new_fd][0], path=path,
                                        begun=begun))
            elif name == "close":
                if started is None:  # (one in two parts freed it at its start)
                    table.pop(fd, None)
            elif name in ("write", "pwrite64", "writev") and fd in fds:
                events.append(Event(at, "write", raw, obj=fds[fd][0], path=fds[fd][1],
                                    begun=begun))
            elif name in ("sendto", "sendmsg") and strings:
                events.append(Event(at, "send", raw, text=strings[0], begun=begun))
            elif name in ("fsync", "fdatasync", "syncfs") and fd in fds:
                events.append(Event(at, "sync", raw, obj=fds[fd][0], path=fds[fd][1], call=name,
                                    done=at, begun=begun))
            elif name == "io_submit":
                # the kernel may start a request before io_submit returns:
                # it covers only what was done before the call began
                for data, fd_text in _IOCB.findall(args):
                    if int(fd_text) in fds:
                        obj, path = fds[int(fd_text)]
                        event = Event(at, "sync", raw, obj=obj, path=path, call="aio",
                                      begun=begun)
                        aio[_number(data)] = event
                        events.append(event)
            elif name == "io_getevents":
                for data, res in _IOEVENT.findall(args):
                    event = aio.pop(_number(data), None)
                    if event is not None and int(res) == 0:
                        event.done = at
            elif name in ("rename", "renameat", "renameat2", "link", "linkat"):
                src, dst = strings[0], strings[1]
                obj = file_of(src)
                if name.startswith("rename"):
                    names.pop(src, None)
                    events.append(Event(at, "name", raw, obj=obj, path=src, folder=_folder(src),
                                        call="rename-from", begun=begun))
                names[dst] = obj
                events.append(Event(at, "name", raw, obj=obj, path=dst, folder=_folder(dst),
                                    call=name, begun=begun))
            elif name in ("unlink", "unlinkat"):
                path = strings[0]
                events.append(Event(at, "name", raw, obj=names.pop(path, None), path=path,
                                    folder=_folder(path), call="unlink", begun=begun))
            elif name in ("mkdir", "mkdirat"):
                path = strings[0].rstrip("/")
                events.append(Event(at, "name", raw, obj=file_of(path), path=path,
                                    folder=_folder(path), call="mkdir", begun=begun))
        events.sort(key=lambda e: e.seq)
        return trace

    # -- questions ---------------------------------------------------------

    def sends(self, prefix: str) -> list[Event]:
        """The sends whose text starts with ``prefix``, in order."""
        return [e for e in self.events if e.kind == "send" and e.text.startswith(prefix)]

    def exit(self) -> Event:
        """The (last) process exit in the log."""
        return [e for e in self.events if e.kind == "exit"][-1]

    def unsynced_before(self, ack: Event, since: Event | None = None,
                        exempt: tuple[str, ...] = (), within: str | None = None) -> list[str]:
        """What ``ack`` acknowledged too early: every name step (a rename,
        link, unlink or mkdir) done after ``since`` and before ``ack``
        began whose folder had no fsync begun after it and done before
        ``ack`` began, and whose file's data written before the step was
        not fsynced before it.  Steps whose path matches a pattern of
        ``exempt`` (a regular expression searched for) are left out:
        scratch names (a spool, a lock); so are those outside the folder
        ``within`` (when given): a process under test writes files of
        no concern to it, such as Twisted's plugin cache or Python's
        bytecode, the first time it runs from a fresh checkout.  Empty
        when all is in order."""
        start = since.seq if since is not None else -1
        inside = None if within is None else within.rstrip("/") + "/"
        problems = []
        for step in self.events:
            if step.kind != "name" or not start < step.seq < ack.begun:
                continue
            if inside is not None and not step.path.startswith(inside):
                continue
            if any(re.search(p, step.path) for p in exempt):
                continue
            if not self._synced(step.folder, step.seq, ack.begun):
                problems.append(f"folder {step.folder} not fsynced after: {step.line}")
            if step.call in ("rename", "renameat", "renameat2", "link", "linkat"):
                problems.extend(self._data_unsynced(step))
        return problems

    def synced_between(self, path: str, after: Event, before: Event) -> bool:
        """Whether ``path`` (a file or a folder, by name) had an fsync
        begun once ``after`` was done and done before ``before`` began."""
        return self._synced(path, after.seq, before.begun)

    def _synced(self, path: str, begun_after: int, done_before: int) -> bool:
        return any(e.kind == "sync" and e.path == path and e.begun > begun_after
                   and e.done is not None and e.done < done_before for e in self.events)

    def _data_unsynced(self, step: Event) -> list[str]:
        writes = [e for e in self.events
                  if e.kind == "write" and e.obj == step.obj and e.seq < step.begun]
        if not writes:
            return []
        last = writes[-1]
        covered = any(e.kind == "sync" and e.obj == step.obj and e.begun > last.seq
                      and e.done is not None and e.done < step.begun for e in self.events)
        if covered:
            return []
        return [f"data of {last.path} not fsynced before it was named {step.path}: {step.line}"]


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def _descriptors(call: str) -> list[int]:
    """The descriptors a call's arguments name: its first argument, and
    the ``aio_fildes`` of an ``io_submit``'s requests."""
    first = re.match(r"\w+\((\d+)(?:,|$)", call)
    fds = [int(first.group(1))] if first else []
    return fds + [int(fd) for _, fd in _IOCB.findall(call)]


def _forks(lines: list[str]) -> dict[str, tuple[str, bool]]:
    """Each new thread or process of the log -> (who made it, whether it
    shares its maker's descriptors: ``CLONE_FILES``).  Read ahead of the
    rest: a child's first calls may come before its maker's ``clone``
    returns."""
    made: dict[str, tuple[str, bool]] = {}
    pending: dict[str, str] = {}
    for raw in lines:
        m = _LINE.match(raw)
        if m is None:
            continue
        pid, rest = m.group("pid"), m.group("rest")
        if rest.endswith(_UNFINISHED):
            pending[pid] = rest[: -len(_UNFINISHED)].rstrip()
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed.group(1)
        c = _CALL.match(rest)
        if c is None or c.group("name") not in _FORKS or not c.group("ret").isdigit():
            continue
        made[c.group("ret")] = (pid, "CLONE_FILES" in c.group("args"))
    return made

