"""A listening port out of file descriptors must not spin (txmailhub.accept_guard).

Twisted's port, once it has lost its reserved descriptor, fails each
accept with EMFILE and returns with the socket still readable: the
reactor calls it again at once.  The fakes here stand for that port and
for the process's descriptor table (a ``dup`` that fails)."""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent

from txmailhub.accept_guard import AcceptGuard, guard_port


class FakePort:
    """What the reactor sees of a listening port: ``doRead`` counts the
    accept rounds; ``reading`` is whether the reactor would call it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.reads = 0
        self.reading = True
        self.connected = True
        self.disconnecting = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.reads += 1

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def getHost(self) -> str:
        return "127.0.0.1:25"


class Reservation:
    def __init__(self, held: bool) -> None:
        self.held = held
        self.reserves = 0

    def available(self) -> bool:
        return self.held

    def reserve(self) -> None:
        self.reserves += 1
        self.held = True


def no_descriptors(fd: int) -> int:
    raise OSError(errno.EMFILE, "Too many open files")


def run_reactor(port: FakePort, clock: Clock, seconds: float) -> int:
    """What a level-triggered reactor does with a readable listening
    socket for ``seconds``: call ``doRead`` while the port reads (a
    thousand times a tick stands for "as fast as it can")."""
    calls = 0
    for _ in range(int(seconds * 10)):
        for _ in range(1000):
            if not port.reading:
                break
            port.doRead()
            calls += 1
        clock.advance(0.1)
    return calls


def test_a_port_without_its_reserve_and_out_of_descriptors_pauses(log_events) -> None:
    port, clock = FakePort(), Clock()
    try:
        guard = AcceptGuard(port, clock, reservation=Reservation(False), dup=no_descriptors,
                            name="smtp on 127.0.0.1:25").install()
        calls = run_reactor(port, clock, 10)
        # one call per pause, ~1 s each: not thousands a second
        assert calls <= 11 and port.reads == 0
        assert guard.pauses >= 9
        warnings = [formatEvent(e) for e in log_events if "file descriptors" in formatEvent(e)]
        assert len(warnings) == 1, warnings
        assert "smtp on 127.0.0.1:25: out of file descriptors" in warnings[0]
    finally:
        port.sock.close()


def test_the_unguarded_port_is_what_spins() -> None:
    # the same run without the guard: the reason for it
    port, clock = FakePort(), Clock()
    try:
        assert run_reactor(port, clock, 1) == 10_000
    finally:
        port.sock.close()


def test_when_descriptors_come_back_the_reserve_is_taken_and_accepting_resumes(
        log_events) -> None:
    port, clock = FakePort(), Clock()
    reservation = Reservation(False)
    table = {"full": True}

    def dup(fd: int) -> int:
        if table["full"]:
            no_descriptors(fd)
        return os.dup(fd)

    try:
        guard = AcceptGuard(port, clock, reservation=reservation, dup=dup).install()
        port.doRead()
        assert not port.reading and port.reads == 0
        table["full"] = False
        clock.advance(1.0)
        assert port.reading
        port.doRead()
        assert port.reads == 1 and reservation.reserves == 1 and guard.pauses == 0
        assert any("accepting connections again" in formatEvent(e) for e in log_events)
    finally:
        port.sock.close()


def test_a_port_that_has_its_reserve_is_not_probed() -> None:
    # the usual case costs no system call: Twisted's own recovery works
    def dup(fd: int) -> int:
        raise AssertionError("probed")

    port = FakePort()
    try:
        AcceptGuard(port, Clock(), reservation=Reservation(True), dup=dup).install()
        port.doRead()
        assert port.reads == 1
    finally:
        port.sock.close()


def test_a_closed_port_is_not_resumed() -> None:
    port, clock = FakePort(), Clock()
    try:
        guard = AcceptGuard(port, clock, reservation=Reservation(False),
                            dup=no_descriptors).install()
        port.doRead()
        guard.stop()
        port.connected = False
        clock.advance(5)
        assert not port.reading and not clock.getDelayedCalls()
    finally:
        port.sock.close()


class RealPortReactor(MemoryReactorClock):
    """A clock whose ``listenTCP`` makes a real ``tcp.Port`` (a real
    socket, registered with this fake reactor): what the hub listens on,
    closed again by ``advance`` (its close is a ``callLater(0)``)."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        from twisted.internet import tcp

        listening = tcp.Port(port, factory, backlog, interface, self)
        listening.startListening()
        return listening


def test_the_hubs_listeners_are_guarded() -> None:
    # ListenerService puts the guard on its port, and takes it off with
    # the port
    from twisted.internet.protocol import Factory

    from txmailhub.service import ListenerService

    reactor = RealPortReactor()
    service = ListenerService(reactor, "smtp", "tcp:0:interface=127.0.0.1", Factory())
    service.startService()
    port = service.port
    try:
        assert isinstance(service.guard, AcceptGuard)
        assert port.doRead == service.guard.do_read
    finally:
        service.stopService()
        reactor.advance(0)
    assert service.guard is None and port.fileno() == -1


def test_a_fake_port_is_left_alone() -> None:
    reactor = MemoryReactorClock()
    port = reactor.listenTCP(0, None)
    assert guard_port(port, reactor) is None


def test_a_reserve_that_cannot_be_opened_pauses_and_leaves_the_port_open() -> None:
    """Twisted's ``reserve()`` swallows EMFILE only: ENFILE (the system's
    file table full) between the probe and the reopening is raised, and
    an exception out of ``doRead`` makes the reactor close the listening
    port for good.  The guard takes it for no room and pauses."""

    class FullTable(Reservation):
        def reserve(self) -> None:
            self.reserves += 1
            raise OSError(errno.ENFILE, "Too many open files in system")

    port, clock = FakePort(), Clock()
    reservation = FullTable(held=False)
    guard = AcceptGuard(port, clock, reservation=reservation).install()
    port.doRead()  # must not raise
    assert reservation.reserves == 1
    assert not port.reading and port.reads == 0
    clock.advance(guard.pause)
    assert port.reading
    port.sock.close()
