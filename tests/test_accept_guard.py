"""A listening port out of file descriptors must not spin (txmailhub.accept_guard).

Twisted's port, once it has lost its reserved descriptor, fails each
accept with EMFILE and returns with the socket still readable: the
reactor calls it again at once.  The fakes here stand for that port and
for the process's descriptor table (a ``dup`` that fails)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent

from txmailhub.accept_guard import AcceptGuard, guard_port


@pytest.fixture
def port() -> Iterator[FakePort]:
    """A ``FakePort`` whose socket is closed after the test."""
    made = FakePort()
    try:
        yield made
    finally:
        made.sock.close()


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


class TableDup:
    """``os.dup`` of a process whose descriptor table is full while
    ``full``, and has room once it is set False."""

    def __init__(self) -> None:
        self.full = True

    def __call__(self, fd: int) -> int:
        if self.full:
            no_descriptors(fd)
        return os.dup(fd)


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


def test_a_port_without_its_reserve_and_out_of_descriptors_pauses(
        port: FakePort, log_events) -> None:
    clock = Clock()
    guard = AcceptGuard(port, clock, reservation=Reservation(False), dup=no_descriptors,
                        name="smtp on 127.0.0.1:25").install()
    calls = run_reactor(port, clock, 10)
    # one call per pause, ~1 s each: not thousands a second
    assert calls <= 11 and port.reads == 0
    assert guard.pauses >= 9
    warnings = [formatEvent(e) for e in log_events if "file descriptors" in formatEvent(e)]
    assert len(warnings) == 1, warnings
    assert "smtp on 127.0.0.1:25: out of file descriptors" in warnings[0]


def test_the_unguarded_port_is_what_spins(port: FakePort) -> None:
    # the same run without the guard: the reason for it
    clock = Clock()
    assert run_reactor(port, clock, 1) == 10_000


def test_when_descriptors_come_back_the_reserve_is_taken_and_accepting_resumes(
        log_events) -> None:
    port, clock = FakePort(), Clock()
    reservation = Reservation(False)
    dup = TableDup()
    try:
        guard = AcceptGuard(port, clock, reservation=reservation, dup=dup).install()
        port.doRead()
        assert not port.reading and port.reads == 0
        dup.full = False
        clock.advance(1.0)
        assert port.reading
        port.doRead()
        assert port.reads == 1 and reservation.reserves == 1 and guard.pauses == 0
        [again] = [formatEvent(e) for e in log_events
                   if "accepting connections again" in formatEvent(e)]
        assert "paused 1 time, out of file descriptors (EMFILE)" in again
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


def test_a_closed_port_is_not_resumed(port: FakePort) -> None:
    clock = Clock()
    guard = AcceptGuard(port, clock, reservation=Reservation(False),
                        dup=no_descriptors).install()
    port.doRead()
    guard.stop()
    port.connected = False
    clock.advance(5)
    assert not port.reading and not clock.getDelayedCalls()


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
        # its log lines name the listener as the hub's other lines do
        assert service.guard.name == f"smtp on 127.0.0.1:{port.getHost().port}"
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


class FailingAccept:
    """A listening socket whose ``accept`` fails with ``error`` the next
    ``times`` calls (then it is the real one's); everything else is the
    real socket's."""

    def __init__(self, sock: socket.socket, error: int, times: int) -> None:
        self.sock = sock
        self.error = error
        self.times = times
        self.accepts = 0

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        if self.times:
            self.times -= 1
            raise OSError(self.error, os.strerror(self.error))
        return self.sock.accept()

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


class Counting(Protocol):
    built: list[Counting] = []

    def connectionMade(self) -> None:
        self.built.append(self)


def run_real_reactor(reactor: RealPortReactor, port, rounds: int) -> int:
    """A level-triggered reactor with a readable listening socket: call
    ``doRead`` while the port is among the readers (``rounds`` stands
    for "as fast as it can")."""
    calls = 0
    for _ in range(rounds):
        if port not in reactor.getReaders():
            break
        port.doRead()
        calls += 1
    return calls


@pytest.mark.parametrize("error", [errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
def test_accept_out_of_resources_with_the_reserve_held_pauses(error, log_events) -> None:
    """With its reserve held, Twisted's port meets ENFILE (the system's
    file table full), ENOMEM or ENOBUFS from ``accept``, logs "Could not
    accept new connection" and returns with the client still in the
    backlog: the reactor would call it again at once.  The guard sees the
    failed ``accept`` and pauses the port; accepting resumes after it."""
    reactor = RealPortReactor()
    Counting.built = []
    port = reactor.listenTCP(0, Factory.forProtocol(Counting), interface="127.0.0.1")
    failing = FailingAccept(port.socket, error, times=10**6)
    port.socket = failing
    reservation = Reservation(True)
    guard = AcceptGuard(port, reactor, reservation=reservation, dup=no_descriptors,
                        name="smtp on 127.0.0.1").install()
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        # one accept, then the reactor no longer calls the port
        assert run_real_reactor(reactor, port, 1000) == 1
        assert failing.accepts == 1 and guard.pauses == 1
        assert port not in reactor.getReaders() and port.socket is failing
        # a pause later: one more try, paused again, one warning in all
        reactor.advance(guard.pause)
        assert run_real_reactor(reactor, port, 1000) == 1
        assert failing.accepts == 2 and guard.pauses == 2
        warnings = [formatEvent(e) for e in log_events
                    if e.get("log_namespace") == "txmailhub.accept_guard"]
        assert len(warnings) == 1, warnings
        assert errno.errorcode[error] in warnings[0]
        assert "new connections wait in the backlog" in warnings[0]
        # the shortage ends: the waiting client is accepted
        failing.times = 0
        reactor.advance(guard.pause)
        run_real_reactor(reactor, port, 3)
        assert len(Counting.built) == 1 and guard.pauses == 0
        assert reservation.reserves == 0  # the reserve was never lost
    finally:
        client.close()
        for protocol in Counting.built:
            protocol.transport.socket.close()
        guard.stop()
        port.socket = failing.sock
        port.stopListening()
        reactor.advance(0)


def test_a_port_whose_accept_fails_otherwise_is_not_paused() -> None:
    # ECONNABORTED is one client gone before its accept, not a shortage
    reactor = RealPortReactor()
    port = reactor.listenTCP(0, Factory.forProtocol(Counting), interface="127.0.0.1")
    failing = FailingAccept(port.socket, errno.ECONNABORTED, times=1)
    port.socket = failing
    guard = AcceptGuard(port, reactor, reservation=Reservation(True)).install()
    try:
        port.doRead()
        assert port in reactor.getReaders() and guard.pauses == 0
    finally:
        port.socket = failing.sock
        port.stopListening()
        reactor.advance(0)


def _no_traceback(events: list[dict]) -> None:
    bad = [formatEvent(e) for e in events
           if "log_failure" in e or e.get("log_level") == LogLevel.critical]
    assert not bad, bad


def test_a_reserve_lost_to_emfile_on_reopening_is_no_critical_traceback(log_events) -> None:
    """Twisted's ``reserve()`` logs EMFILE as a CRITICAL failure with its
    traceback and returns.  The guard, which reopens the reserve itself
    after its probe, keeps that out of the log and pauses instead (it
    used to go on to ``accept`` with no reserve)."""
    from twisted.internet import tcp

    def full() -> object:
        raise OSError(errno.EMFILE, "Too many open files")

    reservation = tcp._FileDescriptorReservation(full)
    port, clock = FakePort(), Clock()
    try:
        guard = AcceptGuard(port, clock, reservation=reservation, name="pop3").install()
        port.doRead()
        assert port.reads == 0 and not port.reading and guard.pauses == 1
        _no_traceback(log_events)
        warnings = [formatEvent(e) for e in log_events]
        assert len(warnings) == 1 and "pop3: out of file descriptors" in warnings[0]
    finally:
        port.sock.close()


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
def test_twisteds_recovery_that_cannot_reopen_its_reserve_logs_no_traceback(
        error, log_events, monkeypatch) -> None:
    """Twisted's own recovery (EMFILE with the reserve held: close it,
    accept and close the waiting client, open it again) logs a CRITICAL
    traceback when the reopening fails ("Could not reserve" for EMFILE,
    "Could not re-reserve" for ENFILE).  Through the guard it does not;
    the next read finds the reserve gone and pauses."""
    from twisted.internet import tcp

    opened = []

    def devnull() -> object:
        if opened:
            raise OSError(error, os.strerror(error))
        opened.append(open(os.devnull))
        return opened[-1]

    reservation = tcp._FileDescriptorReservation(devnull)
    monkeypatch.setattr(tcp, "_reservedFD", reservation)
    reactor = RealPortReactor()
    Counting.built = []
    port = reactor.listenTCP(0, Factory.forProtocol(Counting), interface="127.0.0.1")
    assert reservation.available()
    failing = FailingAccept(port.socket, errno.EMFILE, times=1)
    port.socket = failing
    guard = AcceptGuard(port, reactor, reservation=reservation, dup=no_descriptors,
                        name="smtp").install()
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        port.doRead()  # EMFILE: the reserve closed, the client cut, reopening fails
        assert not reservation.available() and Counting.built == []
        assert client.recv(1) == b""
        _no_traceback(log_events)
        port.doRead()  # no reserve, no room: paused
        assert port not in reactor.getReaders() and guard.pauses == 1
        _no_traceback(log_events)
    finally:
        client.close()
        guard.stop()
        port.socket = failing.sock
        port.stopListening()
        reactor.advance(0)


def test_the_hub_uses_twisteds_reserve_so_a_usual_accept_costs_no_probe() -> None:
    # without Twisted's reserve every read would be probed (a dup and a
    # close per accepting round); the Twisted the hub runs on has one
    from twisted.internet import tcp
    from twisted.internet.protocol import Factory

    from txmailhub.accept_guard import twisted_reservation

    assert twisted_reservation() is tcp._reservedFD
    reactor = RealPortReactor()
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    try:
        guard = guard_port(port, reactor)
        assert guard is not None and guard.reservation is tcp._reservedFD
    finally:
        port.stopListening()
        reactor.advance(0)


def test_without_a_reserve_every_read_is_probed_and_no_descriptor_is_kept() -> None:
    # a Twisted without the reserve: each read checks for room first; the
    # probe's descriptor is closed again (a hub that leaked one per accept
    # round would run out of descriptors by accepting)
    port, clock = FakePort(), Clock()
    probes: list[int] = []
    still_open: list[int] = []

    def dup(fd: int) -> int:
        probe = os.dup(fd)
        probes.append(probe)
        return probe

    class CheckingPort(FakePort):
        def doRead(self) -> None:
            # the accept comes right after the probe: its descriptor is
            # closed by then
            try:
                os.fstat(probes[-1])
            except OSError:
                pass
            else:
                still_open.append(probes[-1])
            super().doRead()

    port.sock.close()
    port = CheckingPort()
    try:
        AcceptGuard(port, clock, reservation=None, dup=dup).install()
        for _ in range(50):
            port.doRead()
        assert port.reads == 50 and len(probes) == 50
        assert still_open == []
    finally:
        for fd in still_open:
            os.close(fd)
        port.sock.close()


def test_without_a_reserve_and_out_of_descriptors_the_port_pauses(port: FakePort) -> None:
    clock = Clock()
    guard = AcceptGuard(port, clock, reservation=None, dup=no_descriptors).install()
    port.doRead()
    assert not port.reading and port.reads == 0 and guard.pauses == 1


def test_a_read_already_polled_when_the_port_paused_is_ignored(port: FakePort) -> None:
    # the reactor may still hand over a readiness it collected before the
    # pause: no accept, and no second retry scheduled
    clock = Clock()
    guard = AcceptGuard(port, clock, reservation=Reservation(False),
                        dup=no_descriptors).install()
    port.doRead()
    port.doRead()
    assert port.reads == 0 and guard.pauses == 1
    assert len(clock.getDelayedCalls()) == 1


def test_stopping_the_guard_cancels_its_retry_at_once(port: FakePort) -> None:
    clock = Clock()
    guard = AcceptGuard(port, clock, reservation=Reservation(False),
                        dup=no_descriptors).install()
    port.doRead()
    guard.stop()
    assert not clock.getDelayedCalls()


def test_a_port_closed_during_a_pause_is_not_read_again(port: FakePort) -> None:
    # closed by the reactor (not by the listener's stop, which cancels
    # the retry): the retry finds it closed and leaves it
    clock = Clock()
    AcceptGuard(port, clock, reservation=Reservation(False), dup=no_descriptors).install()
    port.doRead()
    port.connected = False
    clock.advance(5)
    assert not port.reading


def test_a_listener_stopped_during_a_pause_leaves_no_retry_behind() -> None:
    from twisted.internet.protocol import Factory

    from txmailhub.service import ListenerService

    reactor = RealPortReactor()
    service = ListenerService(reactor, "smtp", "tcp:0:interface=127.0.0.1", Factory())
    service.startService()
    guard = service.guard
    guard.reservation = Reservation(False)
    guard._dup = no_descriptors
    service.port.doRead()
    assert guard.pauses == 1
    service.stopService()
    reactor.advance(0)  # the port's own close
    assert not reactor.getDelayedCalls()


def test_the_warning_says_how_long_the_port_waits(port: FakePort, log_events) -> None:
    clock = Clock()
    AcceptGuard(port, clock, reservation=Reservation(False), dup=no_descriptors,
                pause=2.5, name="pop3 on 127.0.0.1:110").install()
    port.doRead()
    [warning] = [formatEvent(e) for e in log_events if "file descriptors" in formatEvent(e)]
    assert "retried every 2.5 s" in warning
    clock.advance(2.4)
    assert not port.reading
    clock.advance(0.1)
    assert port.reading


def test_a_reserve_that_cannot_be_reopened_for_lack_of_memory_pauses(log_events) -> None:
    """open(2) of the reserve may fail with ENOMEM (no memory for the open
    file); Twisted's ``reserve()`` raises it, as it raises ENFILE.  Out of
    the guard's ``doRead`` the reactor would close the listening port for
    good: the guard pauses, as for the other shortages, with no
    traceback in the log."""
    from twisted.internet import tcp

    def no_memory() -> object:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    reservation = tcp._FileDescriptorReservation(no_memory)
    port, clock = FakePort(), Clock()
    try:
        guard = AcceptGuard(port, clock, reservation=reservation, name="submission").install()
        port.doRead()  # must not raise
        assert port.reads == 0 and not port.reading and guard.pauses == 1
        _no_traceback(log_events)
        warnings = [formatEvent(e) for e in log_events]
        assert len(warnings) == 1 and "ENOMEM" in warnings[0], warnings
        assert "_log" not in vars(reservation)  # Twisted's own logger again
        clock.advance(guard.pause)
        assert port.reading
    finally:
        port.sock.close()


def test_the_recovery_line_counts_every_pause_of_the_shortage(log_events) -> None:
    # one warning when the shortage starts, and the line that ends it
    # says how many retries found no room (not "1" whatever happened)
    port, clock = FakePort(), Clock()
    dup = TableDup()
    try:
        AcceptGuard(port, clock, reservation=None, dup=dup).install()
        port.doRead()
        for _ in range(2):
            clock.advance(1.0)
            port.doRead()  # still no room: paused again
        dup.full = False
        clock.advance(1.0)
        port.doRead()
        lines = [formatEvent(e) for e in log_events]
        assert len([x for x in lines if "new connections wait" in x]) == 1
        [again] = [x for x in lines if "accepting connections again" in x]
        assert "paused 3 times" in again
    finally:
        port.sock.close()


def test_a_reserve_that_fails_to_reopen_otherwise_is_not_taken_for_a_shortage() -> None:
    # EACCES is no lack of descriptors or memory: pausing would hide it
    # behind a misleading warning, retried for ever; it goes to the reactor
    from twisted.internet import tcp

    def refused() -> object:
        raise OSError(errno.EACCES, "Permission denied")

    reservation = tcp._FileDescriptorReservation(refused)
    port, clock = FakePort(), Clock()
    try:
        guard = AcceptGuard(port, clock, reservation=reservation).install()
        with pytest.raises(OSError) as raised:
            port.doRead()
        assert raised.value.errno == errno.EACCES and guard.pauses == 0
        assert "_log" not in vars(reservation)
    finally:
        port.sock.close()


def test_the_reserves_other_failures_still_reach_its_log(log_events) -> None:
    # the guard quiets the reserve's failures it handles (a shortage), not
    # the others: those go on to Twisted's logger, traceback and all
    from twisted.internet import tcp
    from twisted.python.failure import Failure

    reservation = tcp._FileDescriptorReservation(lambda: None)
    port, clock = FakePort(), Clock()
    try:
        guard = AcceptGuard(port, clock, reservation=reservation).install()
        for error in (errno.ENFILE, errno.EACCES):
            with guard._quiet:
                try:
                    raise OSError(error, os.strerror(error))
                except OSError:
                    reservation._log.failure("Could not reserve", Failure())
        failures = [e["log_failure"].value.errno for e in log_events if "log_failure" in e]
        assert failures == [errno.EACCES]
    finally:
        port.sock.close()
