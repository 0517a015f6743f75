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

Descriptors are followed through ``openat``/``close`` (the traced
process's threads share one table), and files by identity, not name:
an ``O_CREAT`` open makes a new file, ``link`` gives it another name,
``rename`` moves the name.  Used by ``tests/integration/test_durable_order.py``.
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
                "io_setup,io_submit,io_getevents,syncfs,close,exit_group")

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<time>\d\d:\d\d:\d\d\.\d+)\s+(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|0x[0-9a-f]+|\?)")
_STR = r'"((?:[^"\\]|\\.)*)"'
_IOCB = re.compile(r"aio_data=(0x[0-9a-f]+|\d+), aio_lio_opcode=IOCB_CMD_FSYNC, "
                   r"aio_fildes=(\d+)")
_IOEVENT = re.compile(r"\{data=(0x[0-9a-f]+|\d+), obj=[^,]*, res=(-?\d+)")


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
        unfinished: dict[str, tuple[str, int]] = {}  # thread -> (call so far, its start)
        fds: dict[int, int] = {}  # descriptor -> file
        fd_paths: dict[int, str] = {}
        names: dict[str, int] = {}  # path -> file
        aio: dict[int, Event] = {}  # aio_data -> its sync
        events = trace.events

        def file_of(path: str) -> int:
            if path not in names:
                names[path] = next(ids)
            return names[path]

        for raw in lines:
            m = _LINE.match(raw)
            if m is None:
                continue
            pid, rest = m.group("pid"), m.group("rest")
            if rest.endswith("<unfinished ...>"):
                unfinished[pid] = (rest[: -len("<unfinished ...>")].rstrip(), next(seq))
                continue
            resumed = re.match(r"^<\.\.\. \w+ resumed>\s?(.*)$", rest)
            if resumed:
                so_far, begun = unfinished.pop(pid, ("", -1))
                rest = so_far + resumed.group(1)
                at = next(seq)
                begun = at if begun < 0 else begun
            else:
                begun = at = next(seq)
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
            if name in ("openat", "open", "creat"):
                path = strings[0]
                if name == "creat" or ("O_CREAT" in args and (
                        "O_EXCL" in args or "O_TRUNC" in args or path not in names)):
                    names[path] = next(ids)  # a new file (or one emptied: new data)
                new_fd = int(ret)
                fds[new_fd] = file_of(path)
                fd_paths[new_fd] = path
                if "O_TRUNC" in args:
                    events.append(Event(at, "write", raw, obj=fds[new_fd], path=path,
                                        begun=begun))
            elif name == "close":
                fds.pop(fd, None)
                fd_paths.pop(fd, None)
            elif name in ("write", "pwrite64", "writev") and fd in fds:
                events.append(Event(at, "write", raw, obj=fds[fd], path=fd_paths[fd],
                                    begun=begun))
            elif name in ("sendto", "sendmsg") and strings:
                events.append(Event(at, "send", raw, text=strings[0], begun=begun))
            elif name in ("fsync", "fdatasync", "syncfs") and fd in fds:
                events.append(Event(at, "sync", raw, obj=fds[fd], path=fd_paths[fd], call=name,
                                    done=at, begun=begun))
            elif name == "io_submit":
                for data, fd_text in _IOCB.findall(args):
                    if int(fd_text) in fds:
                        event = Event(at, "sync", raw, obj=fds[int(fd_text)],
                                      path=fd_paths[int(fd_text)], call="aio", begun=at)
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
                        exempt: tuple[str, ...] = ()) -> list[str]:
        """What ``ack`` acknowledged too early: every name step (a rename,
        link, unlink or mkdir) done after ``since`` and before ``ack``
        began whose folder had no fsync begun after it and done before
        ``ack`` began, and whose file's data written before the step was
        not fsynced before it.  Steps whose path matches a pattern of
        ``exempt`` (a regular expression searched for) are left out:
        scratch names (a spool, a lock).  Empty when all is in order."""
        start = since.seq if since is not None else -1
        problems = []
        for step in self.events:
            if step.kind != "name" or not start < step.seq < ack.begun:
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
