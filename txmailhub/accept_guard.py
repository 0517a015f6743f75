"""Keep a listening port from spinning when the process is out of file
descriptors.

Twisted's TCP port (``twisted.internet.tcp.Port``) keeps one descriptor in
reserve (``/dev/null``): when ``accept`` fails with ``EMFILE`` it closes
the reserve, accepts the waiting clients and closes them at once (the
client sees its connection end; nobody waits in the backlog), then opens
the reserve again.  That reopening can itself fail with ``EMFILE``: another
thread of the hub (the sync workers open directories, the POP3 listing
opens mailboxes) may take the descriptor meanwhile.  From then on the port
has no reserve, each ``accept`` fails, Twisted logs "Could not accept new
connection (EMFILE)" and returns, and the listening socket, still
readable, is handed back by ``epoll`` straight away: measured on a hub
held at 64 descriptors, one core at 100 % and some 4,000 log lines a
second (a megabyte of log every few seconds) for as long as a client
waits.

``AcceptGuard`` wraps one port's ``doRead``.  While the port has its
reserve, nothing is probed (no extra system call per connection).
Without it, the guard first checks that a descriptor can be had (``dup``
of the listening socket, closed at once): if it can, the reserve is taken
back and the port accepts as usual; if it cannot (``EMFILE``), or the
reserve cannot be opened again (``EMFILE``, or ``ENFILE``: the system's
file table full, which ``dup`` does not meet, as it makes no new open
file; or ``ENOMEM``), the port stops reading for ``pause`` seconds, leaving the clients
in the kernel's backlog, and one warning says so (one more line when
accepting works again).  Connections already open are not affected.

The reserve does not help with the other shortages Twisted's port gives
up on: ``ENFILE``, ``ENOMEM`` (no memory for the socket) and ``ENOBUFS``
from ``accept`` itself.  There too it logs "Could not accept new
connection (ENFILE)" and returns, the client still waiting, and the
reactor calls it again at once.  So that the guard learns of it without
a probe, the port's ``doRead`` is given, for the length of the call, its
listening socket in a thin wrapper that passes ``accept`` through and
keeps the error of a failed one (``_WatchedSocket``): Twisted's own
accept loop runs unchanged.  When its last ``accept`` failed with one of
those errors (or ``EMFILE``: its recovery found the reserve's slot taken
again), the port pauses as above.  Twisted's "Could not accept" line is
then logged once per try, not thousands of times a second.

Twisted's reserve logs a failure to open itself again as a CRITICAL
traceback ("Could not reserve EMFILE recovery file descriptor", or
"Could not re-reserve" for ``ENFILE``), a condition the guard handles.
While the guard runs the port (its own reopening and Twisted's accept
loop), those for ``EMFILE``, ``ENFILE`` and ``ENOMEM`` are left out of
the log; any other failure (``/dev/null`` missing in a chroot, say) is
logged as Twisted logs it.  One is still logged when a port starts
listening out of descriptors, outside the guard."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from txmailhub.logsafe import plural

__all__ = ["AcceptGuard", "guard_port", "twisted_reservation"]

log = Logger()

#: How long a port out of descriptors leaves its clients in the backlog
#: before it tries again.
PAUSE = 1.0

_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)

#: Errors of ``accept`` after which Twisted's port returns with the client
#: still in the backlog (its ``_ACCEPT_ERRORS`` less ``ECONNABORTED``, one
#: client gone, which does not come back).
_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)

#: Failures of the reserve's reopening the guard handles, and keeps out of
#: the log.
_RESERVE_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _what(error: int) -> str:
    if error in _NO_DESCRIPTORS:
        what = "out of file descriptors"
    else:
        what = "out of memory for new sockets"
    return f"{what} ({errno.errorcode.get(error, error)})"


class _WatchedSocket:
    """The listening socket as the port's ``doRead`` sees it for one call:
    ``accept`` is the socket's, the error of the last one is kept in
    ``failed`` (0 after one that worked).  No system call of its own."""

    __slots__ = ("_socket", "failed")

    def __init__(self, sock: Any) -> None:
        self._socket = sock
        self.failed = 0

    def accept(self) -> Any:
        try:
            accepted = self._socket.accept()
        except OSError as e:
            self.failed = e.errno or 0
            raise
        self.failed = 0
        return accepted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def twisted_reservation() -> Any:
    """Twisted's reserved descriptor (shared by all its TCP ports), or
    None where this Twisted has none (then every read is checked)."""
    try:
        from twisted.internet import tcp
    except ImportError:  # pragma: no cover - twisted.internet.tcp is always there on POSIX
        return None
    reservation = getattr(tcp, "_reservedFD", None)
    if reservation is None or not hasattr(reservation, "available"):
        return None
    return reservation


class AcceptGuard:
    """The guard of one listening ``port`` (see the module's docstring).

    ``reservation`` is Twisted's reserve (``twisted_reservation()``),
    ``dup`` the probe (``os.dup``; tests give one that fails), ``clock``
    the reactor whose ``callLater`` ends a pause."""

    def __init__(self, port: Any, clock: Any, *, reservation: Any = None,
                 dup: Callable[[int], int] = os.dup, pause: float = PAUSE,
                 name: str = "") -> None:
        self.port = port
        self.clock = clock
        self.reservation = reservation
        self.pause = pause
        self.name = name or str(getattr(port, "getHost", lambda: port)())
        self._dup = dup
        self._read: Callable[[], Any] = port.doRead
        self._resume: Any = None
        self.pauses = 0  # pauses of the current shortage (0: none)
        self._reason = ""
        self._quiet = _QuietReserve(reservation)

    def install(self) -> AcceptGuard:
        self.port.doRead = self.do_read
        return self

    def stop(self) -> None:
        """Forget a pending resume (the port is being closed)."""
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None

    def do_read(self) -> Any:
        if self._resume is not None:  # paused: the reactor should not call
            return None
        with self._quiet:
            if self.reservation is None or not self.reservation.available():
                if not self._room():
                    self._pause(errno.EMFILE)
                    return None
                error = self._reserve() if self.reservation is not None else 0
                if error:
                    self._pause(error)
                    return None
            return self._accept()

    def _accept(self) -> Any:
        """The port's own ``doRead``, its socket watched (see the module's
        docstring); pause if its last ``accept`` failed for a shortage."""
        sock = getattr(self.port, "socket", None)
        watched = _WatchedSocket(sock) if sock is not None else None
        if watched is not None:
            self.port.socket = watched
        try:
            result = self._read()
        finally:
            if watched is not None and getattr(self.port, "socket", None) is watched:
                self.port.socket = sock
        if watched is not None and watched.failed in _SHORTAGES:
            self._pause(watched.failed)
        elif self.pauses:
            log.info("{name}: accepting connections again (paused {count} {times}, "
                     "{reason})", name=self.name, count=self.pauses, reason=self._reason,
                     times=plural(self.pauses, "time", "times"))
            self.pauses = 0
        return result

    def _reserve(self) -> int:
        """Take Twisted's reserve back: 0, or the error that kept it shut.
        Its ``reserve()`` logs EMFILE (and leaves the reserve closed) but
        raises any other error (ENFILE: the system's file table full
        since the probe; ENOMEM: no memory for the open file), and an
        exception out of ``doRead`` makes the reactor close the listening
        port: those shortages pause it instead."""
        try:
            self.reservation.reserve()
        except OSError as e:
            if e.errno in _RESERVE_SHORTAGES:
                return e.errno
            raise
        return 0 if self.reservation.available() else errno.EMFILE

    def _room(self) -> bool:
        try:
            fd = self._dup(self.port.fileno())
        except OSError as e:
            if e.errno in _NO_DESCRIPTORS:
                return False
            return True  # not ours to judge: let accept meet it
        os.close(fd)
        return True

    def _pause(self, error: int) -> None:
        if not self.pauses:
            self._reason = _what(error)
            log.warn("{name}: {reason}: new connections wait in the backlog, "
                     "retried every {pause:g} s (docs/deployment.rst)",
                     name=self.name, reason=self._reason, pause=self.pause)
        self.pauses += 1
        self.port.stopReading()
        self._resume = self.clock.callLater(self.pause, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        if getattr(self.port, "connected", False) and not getattr(self.port, "disconnecting",
                                                                   False):
            self.port.startReading()


class _QuietReserve:
    """For the length of a ``with``, Twisted's reserve logs through a
    filter that leaves out a failure to reopen it for a shortage the
    guard handles (see the module's docstring); the rest goes on to
    Twisted's own logger.  Its logger is a class attribute (``_log``),
    shadowed on the instance and removed again; a Twisted whose reserve
    has none is left as it is."""

    def __init__(self, reservation: Any) -> None:
        self.reservation = reservation
        self.original: Any = None
        if reservation is not None:
            original = getattr(type(reservation), "_log", None)
            if isinstance(original, Logger) and hasattr(reservation, "__dict__"):
                self.original = original
        self.quiet = (Logger(namespace=self.original.namespace, observer=self._observe)
                      if self.original is not None else None)

    def _observe(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None and failure.check(OSError) and \
                getattr(failure.value, "errno", None) in _RESERVE_SHORTAGES:
            return
        self.original.observer(event)

    def __enter__(self) -> None:
        if self.quiet is not None:
            self.reservation._log = self.quiet

    def __exit__(self, *exc_info: object) -> None:
        if self.quiet is not None:
            self.reservation.__dict__.pop("_log", None)


def guard_port(port: Any, clock: Any, name: str = "") -> AcceptGuard | None:
    """Guard ``port`` when it is a reactor's listening socket (it reads
    and has a descriptor); None for anything else (a test's fake port)."""
    if not all(hasattr(port, a) for a in ("doRead", "fileno", "stopReading", "startReading")):
        return None
    return AcceptGuard(port, clock, reservation=twisted_reservation(), name=name).install()
