"""Signals under the hub: the ``SIGHUP`` notice, and a ``SIGUSR1`` no
one else answers.

Owns ``HangupNotice``, the service that installs and removes the hub's
handlers, and the chain of handlers when several hubs (or an application
with a handler of its own) share one process.  It must not touch the
configuration, twistd's options or the log files: ``txmailhub.tap`` adds
a notice to the hub it makes, and an application that embeds the hub may
add one itself (``docs/embedding.rst``; ``from txmailhub.tap import
HangupNotice`` keeps working).
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["HangupNotice"]

# the namespace the notice's lines had when it lived in ``txmailhub.tap``:
# a log filter that matches on it keeps working
log = Logger(namespace="txmailhub.tap")


class HangupNotice(Service):
    """SIGHUP, the usual "reload" reflex, would end twistd at once (no
    handler: the default action), without the graceful stop and without a
    line in the log.  Under ``twistd mailhub`` it is answered with one line
    instead: the users and aliases files are re-read by themselves, and
    the config file needs a restart.

    A ``SIGUSR1`` no one handles by then (twistd installs its rotation
    handler before the services start, for a log file of its own only:
    under ``twistd -ny mailhub.tac`` there is none) is answered with a line
    too, rather than ending the hub.

    Two hubs in one process may each have one: the handler in place passes
    SIGHUP on to the notice installed before it, and a stopped notice's
    SIGUSR1 line stays while another's runs.  A Python handler found in
    place that is no notice's (an application's own reload) is called
    too, once per signal, after the hub's answer is queued: an application
    that embeds the hub keeps its SIGHUP handling (an exception from it is
    logged, with its traceback).  The default action is never called: it
    would end the process.  A notice started again under a handler that
    passes the signal on to it (an application's, installed over it) calls
    that handler, and when the signal comes back, the one found before it;
    stopped, the notice puts that handler back and passes the signal it
    has from it on to the one found before: each still runs once."""

    name = "hangup-notice"

    def privilegedStartService(self) -> None:
        # here, not in startService: twistd calls that once the reactor
        # runs, well after the ports are bound -- a SIGHUP in between (a
        # script that saw the port open) would still end the hub
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        if self._before is None:  # an application that only calls startService
            self._install()

    _before: Any = None
    _usr1_installed: Any = None  # the SIGUSR1 notice this service put in place
    _stops = 0  # stop_after calls: only the last one's ``others`` put the signals back
    #: the SIGHUP handler found at the install, kept after the stop while
    #: a notice installed since (another hub's) still passes signals on to it
    _previous: Any = None
    #: the notices answering now: two hubs in one process each have one
    _answering: list[HangupNotice] = []
    #: how many calls of ``_hangup`` run now: a handler it calls that passes
    #: the signal back (an application's, installed after a notice, that
    #: calls the one it found) must not have it answered a second time, and
    #: it is passed on to the handler found at the install before
    _passing = 0
    #: where the log goes, for the SIGUSR1 line (``makeService`` knows)
    usr1_where = "standard output, syslog or --logger's observer"

    def _install(self) -> None:
        from txmailhub.logfile import install_sigusr1_notice

        self._reactor = reactor = self._hub_reactor()
        if self in _notices(signal.getsignal(signal.SIGHUP)):
            # still a link of the handler in place (a notice installed since
            # passes the signal on to ours): installed again, it would loop
            self._before = self._previous
        else:
            # a ValueError outside the main thread: then not counted as
            # answering either (another hub's stop would hand it SIGUSR1)
            found = signal.signal(signal.SIGHUP, self._hangup)
            self._found.append(found)
            self._before = self._previous = found
        if self not in HangupNotice._answering:
            HangupNotice._answering.append(self)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            install_sigusr1_notice(self.usr1_where, reactor)
            self._usr1_installed = signal.getsignal(signal.SIGUSR1)

    def __init__(self, tls: Any = None, reactor: Any = None) -> None:
        super().__init__()
        self.tls = tls  # the listeners' ReloadingTLS, taken again on SIGHUP
        #: the reactor the answers run in; None: the hub's (``_hub_reactor``)
        self.reactor = reactor
        #: the SIGHUP handlers found at the installs whose handler may still
        #: be called, oldest first (the last is ``_previous``): a handler found
        #: at a later install, installed over this notice by an application
        #: that passes the signal back to it, is followed by the one before
        self._found: list[Any] = []

    def _hub_reactor(self) -> Any:
        """The reactor the signals' answers are queued on: the one given,
        else the hub's the notice was added to (``MailHub(settings,
        reactor=...)``), else the global one.  Queued on the global
        reactor, the answers of a hub that runs another would wait for a
        reactor that may never run (and the TLS files be read again in a
        thread that is not the hub's)."""
        if self.reactor is not None:
            return self.reactor
        hub_reactor = getattr(self.parent, "reactor", None)
        if hub_reactor is not None:
            return hub_reactor
        from twisted.internet import reactor

        return reactor

    def _hangup(self, signum: int, frame: Any) -> None:
        # in a signal handler: the work is done by the reactor.  A notice
        # installed before this one (another hub's in this process) answers
        # too: each hub reads its own TLS files again; at the end of that
        # chain, the application's handler found by the first notice
        # -- or, passed back to us by the handler we called, the one found
        # at the install before it (answered once: it is the same signal)
        back = self._passing
        self._passing += 1
        try:
            if back == 0:
                if self in HangupNotice._answering:
                    self._reactor.callFromThread(self._answer)
                previous = self._previous
            elif back < len(self._found):
                previous = self._found[-1 - back]
            else:
                return  # passed back past the first handler found: done already
            if _notices(previous):
                previous(signum, frame)
            elif callable(previous):  # not SIG_DFL, SIG_IGN nor None
                self._pass_on(previous, signum, frame)
        finally:
            self._passing -= 1

    def _pass_on(self, handler: Any, signum: int, frame: Any) -> None:
        """Call the application's SIGHUP handler found at the install.  Its
        exception is logged (by the reactor, as the answer is: not from
        the signal handler) and goes no further: raised here, it would
        surface in whatever code the signal interrupted -- the reactor's
        loop, a session's write.  ``SystemExit`` and ``KeyboardInterrupt``
        (an application that ends the process on SIGHUP) go on."""
        try:
            handler(signum, frame)
        except Exception:
            self._reactor.callFromThread(
                log.failure, "SIGHUP: the application's own handler {handler} failed; the "
                "hub's answer to the signal is not affected", Failure(),
                handler=getattr(handler, "__qualname__", None) or repr(handler))

    def _answer(self) -> None:
        if self.tls is not None:
            taken = self.tls.reload()
            why = getattr(self.tls, "failure", None)
            log.info("SIGHUP: TLS certificate and key {how}; the users and aliases files "
                     "are re-read when they change; restart the hub (SIGTERM, then start "
                     "it) to apply a config change",
                     how="loaded again" if taken else
                     "kept (the files on disk cannot be used"
                     + (f": {why})" if why else ")"))
            return
        log.info("SIGHUP ignored: the users and aliases files are re-read when they "
                 "change; restart the hub (SIGTERM, then start it) to apply a config change")

    def stopService(self) -> None:
        super().stopService()
        self._restore()

    def undo_privileged_start(self) -> None:
        """Put the handlers back after a start that failed before this
        notice's ``startService`` (``MailHub`` undoing it): installed by
        ``privilegedStartService``, they would answer for a hub that does
        not run, and no stop would ever take them out."""
        if not self.running:
            self._restore()

    def stop_after(self, others: Any) -> Any:
        """Stop, but keep answering the signals until ``others`` (the
        Deferred of the hub's other parts stopping) fires: put back at
        once, the default action of a SIGHUP or SIGUSR1 arriving while
        sessions finish their message would end the hub in the middle of
        its graceful stop.  A hub started again by then keeps them; so
        does one stopped again since: only the last stop's ``others``
        give them back (an earlier stop's parts may be done while those
        of the hub started since are still stopping)."""
        Service.stopService(self)
        self._stops += 1
        mine = self._stops

        def restore(result: Any) -> Any:
            if not self.running and mine == self._stops:
                self._restore()
            return result

        return others.addBoth(restore)

    def _restore(self) -> None:
        if self in HangupNotice._answering:
            HangupNotice._answering.remove(self)
        if self._before is not None:
            # a handler installed after ours (an application's) is its own;
            # one of another notice passes the signal on to ours, which no
            # longer answers.  The one put back is the first handler down
            # the chain that is not a stopped notice's.
            if signal.getsignal(signal.SIGHUP) == self._hangup:
                skipped = []
                for notice in _notices(self._previous):
                    if notice in HangupNotice._answering or notice is self:
                        break
                    skipped.append(notice)
                signal.signal(signal.SIGHUP, _live(self._previous))
                for notice in (self, *skipped):
                    notice._taken_out()
            self._before = None
        if self._usr1_installed is not None:
            if signal.getsignal(signal.SIGUSR1) is self._usr1_installed:
                if HangupNotice._answering:
                    # another hub's notice still runs: the line stays, its to remove
                    HangupNotice._answering[-1]._usr1_installed = self._usr1_installed
                else:
                    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            self._usr1_installed = None


    def _taken_out(self) -> None:
        # the handler this notice found is put back in place, and called
        # first again: one found before it (an application's that calls
        # the notice's), passing the signal on to here, has it go on to the
        # handler found at the install before -- not back to itself
        if self._found:
            self._found.pop()
        if self._found:
            self._previous = self._found[-1]


def _notices(handler: Any) -> list[HangupNotice]:
    """The notices whose ``_hangup`` ``handler`` is or passes SIGHUP on to."""
    found: list[HangupNotice] = []
    notice = getattr(handler, "__self__", None)
    while isinstance(notice, HangupNotice) and notice not in found:
        found.append(notice)
        notice = getattr(notice._previous, "__self__", None)
    return found


def _live(handler: Any) -> Any:
    """``handler``, or past the stopped notices it passes SIGHUP on to, the
    first handler that still does something (another notice, the one
    found before them all)."""
    for notice in _notices(handler):
        if notice in HangupNotice._answering:
            return notice._hangup
        handler = notice._previous
    return handler
