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
reserve, nothing changes (no extra system call per connection).  Without
it, the guard first checks that a descriptor can be had (``dup`` of the
listening socket, closed at once): if it can, the reserve is taken back
and the port accepts as usual; if it cannot (``EMFILE``), or the reserve
cannot be opened again (``EMFILE``, or ``ENFILE``: the system's file
table full, which ``dup`` does not meet, as it makes no new open file),
the port stops reading for ``pause`` seconds, leaving the clients in the
kernel's backlog, and one warning says so (one more line when accepting
works again).  Connections already open are not affected.

Not covered: ``ENFILE`` while the port has its reserve.  Twisted's port
then logs "Could not accept new connection (ENFILE)" and returns with
the socket readable, as before this guard."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["AcceptGuard", "guard_port", "twisted_reservation"]

log = Logger()

#: How long a port out of descriptors leaves its clients in the backlog
#: before it tries again.
PAUSE = 1.0

_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


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
        if self.reservation is None or not self.reservation.available():
            if not self._room():
                self._pause()
                return None
            if self.reservation is not None and not self._reserve():
                self._pause()
                return None
        if self.pauses:
            log.info("{name}: accepting connections again (paused {count} time(s) "
                     "for lack of file descriptors)", name=self.name, count=self.pauses)
            self.pauses = 0
        return self._read()

    def _reserve(self) -> bool:
        """Take Twisted's reserve back; False if it cannot be opened.
        Its ``reserve()`` logs EMFILE but raises any other error (ENFILE:
        the system's file table full since the probe), and an exception
        out of ``doRead`` makes the reactor close the listening port."""
        try:
            self.reservation.reserve()
        except OSError as e:
            if e.errno in _NO_DESCRIPTORS:
                return False
            raise
        return True

    def _room(self) -> bool:
        try:
            fd = self._dup(self.port.fileno())
        except OSError as e:
            if e.errno in _NO_DESCRIPTORS:
                return False
            return True  # not ours to judge: let accept meet it
        os.close(fd)
        return True

    def _pause(self) -> None:
        if not self.pauses:
            log.warn("{name}: out of file descriptors: new connections wait in the "
                     "backlog, retried every {pause:g} s (docs/deployment.rst)",
                     name=self.name, pause=self.pause)
        self.pauses += 1
        self.port.stopReading()
        self._resume = self.clock.callLater(self.pause, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        if getattr(self.port, "connected", False) and not getattr(self.port, "disconnecting",
                                                                   False):
            self.port.startReading()


def guard_port(port: Any, clock: Any, name: str = "") -> AcceptGuard | None:
    """Guard ``port`` when it is a reactor's listening socket (it reads
    and has a descriptor); None for anything else (a test's fake port)."""
    if not all(hasattr(port, a) for a in ("doRead", "fileno", "stopReading", "startReading")):
        return None
    return AcceptGuard(port, clock, reservation=twisted_reservation(), name=name).install()
