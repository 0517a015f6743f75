"""Assembly: settings -> components -> a ``MailHub`` MultiService.

This is the only module that touches the global reactor (and only when the
caller did not pass one).  It builds each component once, wires them into
a ``Components`` bundle and starts one listener per endpoint string.

Order matters for a clean shutdown: children stop in reverse order of
addition, so the listeners (added last) stop first, then the relay (which
lets in-flight attempts finish or leaves them on disk), then the syncer
(which finishes the fsync batch under way).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from txmailhub.accept_guard import guard_port
from txmailhub.auth import build_portal
from txmailhub.components import Components
from txmailhub.config import Settings
from txmailhub.stalls import ReactorStalls
from txmailhub.tls import ReloadingTLS, tls_options
from txmailhub.users import UsersDB

__all__ = [
    "DaemonStartError", "ListenError", "ListenerService", "MailHub", "StartError",
    "StateDirError",
    "build_components", "print_start_errors_plainly", "tls_options",
]

log = Logger()


class StartError(SystemExit):
    """The hub cannot start.  A ``SystemExit`` so that twistd prints the one
    line and exits 1 instead of running half-deaf."""

    def __init__(self, message: str, brief: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # the cause first, in a few words: what a daemonized twistd's parent
        # prints (it keeps 100 bytes of the child's error)
        self.brief = brief or message


class ListenError(StartError):
    """A listener could not bind."""


class StateDirError(StartError):
    """``state_dir`` cannot be used (made, entered, written): raised by
    ``MailHub()`` itself, before anything starts."""

    @classmethod
    def from_os_error(cls, error: OSError, state_dir: str) -> StateDirError:
        where = error.filename or state_dir
        if error.errno in (errno.EACCES, errno.EPERM) and not os.path.isdir(state_dir):
            # not made yet: the hub would make it, in a folder it may not write
            parent = os.path.dirname(os.path.abspath(state_dir))
            advice = (f"state_dir ({state_dir}) does not exist and the user the hub runs "
                      f"as cannot make it in {parent}: make it yourself and give it to that "
                      "user (mkdir, then chown)")
        elif error.errno in (errno.EACCES, errno.EPERM):
            advice = (f"state_dir ({state_dir}) and everything in it must belong to the user "
                      "the hub runs as (chown -R that user)")
        elif error.errno in (errno.EMFILE, errno.ENFILE):
            # a shortage of the process's (or the system's), not of this
            # file: the queue's recovery leaves a record it cannot open
            # where it is, and fails the start
            who = ("the hub has no file descriptor left: raise its limit (LimitNOFILE= in "
                   "its systemd unit, ulimit -n)" if error.errno == errno.EMFILE
                   else "the system has no file descriptor left (sysctl fs.file-max)")
            advice = f"{who}, or start it again once descriptors are free"
        elif error.errno in (errno.ENOTDIR, errno.EEXIST):
            blocker = _not_a_folder_on_the_way(os.fsdecode(where))
            advice = (f"{blocker} is not a folder and is in the way of state_dir "
                      f"({state_dir}): move it, or name another [hub] state_dir")
        else:
            advice = f"check [hub] state_dir ({state_dir})"
        brief = f"cannot use {where}: {error.strerror or error}; {advice}"
        # the brief for a daemonized twistd's parent, which says "mailhub:
        # cannot start: " before it (``_wait_for_start``)
        return cls(f"mailhub: {brief}", brief=brief)


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _not_a_folder_on_the_way(path: str) -> str:
    """The path that is there but is not a folder on the way to ``path``.

    The ``OSError`` of ``os.makedirs`` names the folder it was making
    (``afile/state``), not the file in its way (``afile``): the admin has to
    be told which one to move.  The deepest path on the way that exists is
    that file; ``path`` itself when nothing is found (it went meanwhile)."""
    probe = os.path.abspath(path)
    while True:
        if os.path.lexists(probe):
            return probe if not os.path.isdir(probe) else os.path.abspath(path)
        parent = os.path.dirname(probe)
        if parent == probe:
            return os.path.abspath(path)
        probe = parent


class DaemonStartError(Exception):
    """A ``StartError`` in a daemonized twistd: raised after its fork, a
    ``SystemExit`` would end the child without a word to the parent that
    waits for it (twistd reports only an ``Exception`` back, and then
    prints it and exits 1).  It carries the error's ``brief`` form."""


# twistd's child writes the first 100 bytes of "<module>.<class>: <text>" to
# its parent: without the module path ("txmailhub.service.") the cause fits.
DaemonStartError.__module__ = "builtins"


def print_start_errors_plainly() -> None:
    """Make a daemonizing twistd's waiting parent print a start error as text.

    twistd's parent (``UnixApplicationRunner._waitForStart``) prints what its
    forked child wrote to the status pipe as a ``bytes`` repr, ``An error has
    occurred: b'DaemonStartError: Address already in use: ...'``, its
    defence against a child that writes terminal escapes.  The parent is
    the process that built the hub (twistd forks after), so the reader is
    replaced from here, before the fork, by one that prints the same bytes
    as a line of text, control characters escaped (the same defence).  The
    pipe, its 100 bytes and the exit codes stay twistd's.  Called when
    ``MailHub.start_error_type`` is set to ``DaemonStartError``, which
    also has one that nobody catches end the process with a line
    (``_report_uncaught_start_errors``)."""
    _report_uncaught_start_errors()
    try:
        from twisted.scripts._twistd_unix import UnixApplicationRunner
    except ImportError:  # not POSIX: twistd does not daemonize
        return
    if callable(getattr(UnixApplicationRunner, "_waitForStart", None)):
        UnixApplicationRunner._waitForStart = _wait_for_start  # type: ignore[method-assign]


def _report_uncaught_start_errors() -> None:
    """Have a ``DaemonStartError`` nobody catches end the process with one
    line, ``mailhub: cannot start: ...``, and exit status 1, not a
    traceback.  That is what becomes of it in a twistd that did not
    daemonize (``twistd -ny mailhub.tac``: the .tac cannot tell whether
    twistd will fork, so etc/mailhub.tac sets ``DaemonStartError`` for
    both), and in the daemonized child once it has told its parent: twistd
    passes it on after removing its pid file.  The whole message was logged
    before (``privilegedStartService``).  Any other exception goes to the
    hook that was there before."""
    previous = sys.excepthook
    if getattr(previous, "reports_start_errors", False):
        return  # installed already

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, DaemonStartError):
            print(f"mailhub: cannot start: {value}", file=sys.stderr)
            return
        previous(kind, value, tb)

    hook.reports_start_errors = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _wait_for_start(runner: Any, read_pipe: int) -> int:
    """twistd's parent: 0 once the child wrote ``b"0"`` (started), else
    print the child's ``b"1 <class>: <text>"`` as text and return 1."""
    from twisted.python.util import untilConcludes

    data = untilConcludes(os.read, read_pipe, 100)
    if data == b"0":
        return 0
    text = data[2:].decode("ascii", "backslashreplace")  # the child sent ASCII
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
    ours = DaemonStartError.__name__ + ": "
    if text.startswith(ours):
        text = text[len(ours):]
    config = getattr(runner, "config", None) or {}
    # --logger takes precedence over --syslog and --logfile: twistd's
    # logger then writes to that observer alone (AppLogger.start), and
    # the file --logfile names is never written (run_files.twistd_log_file)
    where = ("the log of --logger" if config.get("logger") else
             "syslog" if config.get("syslog") else
             None if config.get("logfile") == "-" else  # daemonized: nowhere
             config.get("logfile") or "twistd.log")
    message = f"mailhub: cannot start: {text or 'the daemon ended without a word'}\n"
    if where:
        message += f"mailhub: the whole message is in {where}\n"
    stderr = sys.__stderr__  # the terminal: twistd's sys.stderr goes to the log by now
    if stderr is not None:
        untilConcludes(stderr.write, message)
    return 1


def build_components(settings: Settings, reactor: Any) -> Components:
    """Every component the protocols need, built from ``settings``."""
    from txmailhub.router import Router
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.store.spool import Spooler
    from txmailhub.store.sync import Syncer, makedirs_durably

    # The state folder first, 0700 whatever the umask (made later as the
    # parent of spool/ or mail/, it would be 0777 under umask 000: anyone
    # could swap those folders for links).  Made durably: acknowledged
    # mail will live in it, and a crash must not take its name away
    makedirs_durably(settings.hub.state_dir, mode=0o700)
    # one made beforehand keeps its mode: others who may write it could
    # swap mail/ for a link of theirs, and every mailbox with it
    from txmailhub.hub_access import state_dir_open

    why = state_dir_open(settings.hub.state_dir)
    if why is not None:
        brief = f"cannot use {settings.hub.state_dir}: it {why}"
        raise StateDirError(f"mailhub: {brief}", brief=brief)

    def run_in_thread(f: Any, *args: Any, **kwargs: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)

    syncer = Syncer(reactor)
    users = UsersDB(settings.users.file, settings.hub.primary_domain, settings.hub.domains)
    # a POP3 session's note of a queued copy it deleted outlives the queue
    # entry that may retry it (``mailbox.note_deleted``)
    store = MaildirStore(settings.mail_dir, settings.hub.hostname, syncer,
                         keep_deleted=settings.relay.queue_lifetime + 30 * 86400)
    components = Components(
        settings=settings,
        reactor=reactor,
        router=Router(settings.hub.domains, users, settings.aliases.file),
        store=store,
        spooler=Spooler(settings.spool_dir, syncer, recover=False),  # claimed at start
        portal=None,  # below: its realm follows components.store
        # the hub's name: a renewal for another name is warned of once, in
        # the start's words (the machine's name when [hub] hostname is unset)
        tls=(ReloadingTLS(settings.tls.certificate, settings.tls.key, reactor,
                          hostname=settings.hub.hostname,
                          hostname_from=getattr(settings, "hostname_from", "[hub] hostname"))
             if settings.tls else None),
        users=users,
        syncer=syncer,
        stalls=ReactorStalls(reactor),  # its heartbeat runs while the hub does
    )
    # the realm opens mailboxes in whatever store the components hold at a
    # login: a store of the application's own, given before the start, is
    # the one POP3 reads as well as the one SMTP delivers to
    components.portal = build_portal(users, store, run_in_thread, components=components)
    return components


#: Linux's lowest port any user may bind (``sysctl
#: net.ipv4.ip_unprivileged_port_start``); 1024 where there is none
UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def unprivileged_port_start() -> int | None:
    """The lowest port a user other than root may bind, as Linux's sysctl
    says it (1024 unless an admin or a container runtime changed it,
    Docker setting it to 0); ``None`` where it cannot be read (another
    system, no /proc, a value that is no port number), for the caller to
    fall back on 1024, the classic rule, without naming a sysctl it did
    not read."""
    try:
        with open(UNPRIVILEGED_PORT_START, "rb") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return value if 0 <= value <= 65535 else None


def _privileged_port_advice(error: Any, cause: Any) -> str:
    """What to do when a user other than root may not bind a privileged
    port (``Permission denied``; below ``unprivileged_port_start``): the
    start as the hub's user with no capability, which ``mailhub check``
    run as that user does not foresee; the line named the port and the
    error only.  Empty for anything else (root refused by a security
    module, a unix socket's folder, a port this system lets anyone bind)."""
    port = getattr(error, "port", None)
    if (getattr(cause, "errno", None) not in (errno.EACCES, errno.EPERM)
            or not isinstance(port, int) or os.geteuid() == 0):
        return ""
    read = unprivileged_port_start()
    start = 1024 if read is None else read
    if not 0 < port < start:
        return ""
    # the sysctl named only when it was read: the value is the system's
    # then, not the classic rule put in its mouth
    where = ("" if read is None
             else f" (sysctl net.ipv4.ip_unprivileged_port_start = {start})")
    return (f" (a port below {start} needs root here{where}: start twistd as root with "
            "--uid, which binds the ports before it switches user, or give the hub's user "
            "CAP_NET_BIND_SERVICE, systemd's AmbientCapabilities=; docs/deployment.rst)")


class ListenerService(Service):
    """One listening endpoint.  Binds in ``privilegedStartService`` (before
    twistd drops privileges) and fails loudly, never silently."""

    def __init__(
        self,
        reactor: Any,
        role: str,
        description: str,
        factory: Any,
        tls: Any = None,
        listening: list[tuple[str, int]] | None = None,
    ) -> None:
        self.reactor = reactor
        self.role = role
        self.description = description
        self.factory = factory
        self.tls = tls
        self.listening = listening
        self.port: Any = None
        self.guard: Any = None  # txmailhub.accept_guard: no spinning out of descriptors
        self._listed: tuple[str, int] | None = None  # what this listener put in listening
        self.setName(f"{role} {description}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is None:
            # listening already: a running hub added to a running parent
            # gets this call again (a second bind took a second port 0, or
            # failed "in use" on its own fixed port and rolled the hub back)
            self._bind()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self._bind()

    def _bind(self) -> None:
        factory = self.factory
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        outcome: list[Any] = []
        try:
            endpoint = serverFromString(self.reactor, self.description)
            endpoint.listen(factory).addBoth(outcome.append)
        except Exception as e:
            outcome.append(e)
        result = outcome[0] if outcome else None
        if result is None or isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
            why = (
                result.getErrorMessage() if hasattr(result, "getErrorMessage")
                else str(result or "the endpoint did not bind")
            )
            cause = getattr(getattr(result, "value", result), "socketError", None)
            short = getattr(cause, "strerror", None) or str(cause or why)
            raise ListenError(
                f"mailhub: cannot listen for {self.role} on {self.description}: {why}"
                f"{_privileged_port_advice(getattr(result, 'value', result), cause)}",
                brief=f"{short}: {self.role} on {self.description}",
            )
        self.port = result
        host = result.getHost()
        self.guard = guard_port(result, self.reactor, f"{self.role} on {_describe(host)}")
        if self.listening is not None and hasattr(host, "port"):
            self._listed = (host.host, host.port)
            self.listening.append(self._listed)
        log.info("{role} listening on {address}", role=self.role, address=_describe(host))

    def unbind(self) -> Any:
        """Stop listening (the Deferred of ``stopListening``, or None) and
        take the address off ``listening``: a start adds it again (each
        restart added one more, and a port 0 listener's old port stayed
        "ours" to the relay's loop check)."""
        port, self.port = self.port, None
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
        listed, self._listed = self._listed, None
        if listed is not None and self.listening is not None and listed in self.listening:
            self.listening.remove(listed)
        return port.stopListening() if port is not None else None

    def stopService(self) -> Any:
        """Stop listening and end the connections (``shut_down``); the
        Deferred fires once the port is closed and, for SMTP, the sessions
        are gone (their ``421`` and close take at most a couple of seconds,
        or what a message being stored takes), for POP3 the sessions too (an
        answer under way finished, ``STOP_ANSWER_GRACE`` at most, the close,
        and the deletions of a QUIT under way)."""
        super().stopService()
        d = self.unbind()
        shut_down = getattr(self.factory, "shut_down", None)
        if shut_down is not None:  # SMTP: 421 to the open sessions (RFC 5321 3.8); POP3
            gone = shut_down()
            if isinstance(gone, Deferred):
                return gatherResults([d if d is not None else succeed(None), gone],
                                     consumeErrors=True)
        return d


def _describe(host: Any) -> str:
    """A listening address for the log: ``host:port``, or a UNIX socket's
    path (Twisted keeps that as bytes, which ``str`` would show as ``b'...'``)."""
    if hasattr(host, "port"):
        return f"{host.host}:{host.port}"
    name = getattr(host, "name", host)
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)


class _StorageService(Service):
    """Claims the state directory for this hub, starts and stops the
    syncer (its kernel ring or worker threads) with it, and removes the
    spooler's pre-created files at stop (which gives the state directory
    up)."""

    _stops = 0  # stop_after calls: only the last one's ``others`` stop the syncer

    def __init__(self, syncer: Any, spooler: Any, state_dir: str) -> None:
        self.syncer = syncer
        self.spooler = spooler
        self.state_dir = state_dir

    def privilegedStartService(self) -> None:
        # first of all, and here: twistd exits on an exception raised now
        # (one raised from startService would leave the hub half-started;
        # daemonized, see DaemonStartError)
        self._claim()
        super().privilegedStartService()

    def startService(self) -> None:
        self._claim()  # an application that only calls startService, or a restart
        super().startService()
        start = getattr(self.syncer, "start", None)
        if start is not None:
            start()

    def _claim(self) -> None:
        claim = getattr(self.spooler, "claim", None)
        if claim is not None and not claim():
            raise self._in_use()

    def _in_use(self) -> StartError:
        # Another hub runs on this state directory.  Two would share one
        # queue (each delivering its entries: duplicates) and each other's
        # spool; different ports would not keep them apart.
        return StartError(
            f"another txmailhub is running on the state directory {self.state_dir} "
            f"(it holds {self.spooler.spool_dir}.lock): stop it first, or give this "
            "hub a [hub] state_dir of its own"
        )

    def stopService(self) -> Any:
        return self.stop_after(succeed(None))

    def stop_after(self, others: Deferred) -> Deferred:
        """Stop the syncer once ``others`` fires: the hub's other parts
        (listeners whose sessions finish storing a message, the relay
        recording its attempts) may still ask it to make something
        durable, and a syncer stopped under them fails that ("the syncer
        is stopped": a 451 for a message, a record not updated).  Started
        again meanwhile (a quick restart): the syncer stays started; and
        only the last stop stops it -- an earlier one's parts may be done
        while the parts of the hub started since are still stopping."""
        Service.stopService(self)
        self._stops += 1
        mine = self._stops

        def stop(_: Any) -> Any:
            if self.running or mine != self._stops:
                return None
            stop = getattr(self.syncer, "stop", None)
            return stop() if stop is not None else None

        return others.addBoth(stop)

    def check(self) -> None:
        """Raise ``StartError`` now if another hub holds the state directory."""
        available = getattr(self.spooler, "available", None)
        if available is not None and not available():
            raise self._in_use()

    def release(self) -> None:
        """Remove the spool files made ahead and give the state directory up."""
        close = getattr(self.spooler, "close", None)
        if close is not None:
            close()


class MailHub(MultiService):
    """The whole hub as one service, embeddable in any Twisted application.

    ``MailHub(settings)`` uses the global reactor; pass ``reactor=`` to
    inject another (tests, or an application with its own).  ``resolver``
    (a twisted.names ``IResolver``) is the DNS the relay asks instead of
    the one ``[relay] nameservers`` would give it: an application that
    runs a resolver of its own (a cache, a split view) shares it.  It
    stays the application's: the hub neither starts nor stops it."""

    def __init__(self, settings: Settings, reactor: Any = None, *,
                 resolver: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.settings = settings
        self.reactor = reactor
        from txmailhub.address import load_codecs

        load_codecs()  # while the standard library is in reach (before twistd's --uid)
        # both the application's resolver and [relay] nameservers: the
        # resolver wins, and the start says so (``startService``)
        self._resolver_given = resolver is not None
        from txmailhub.relay.service import RelayService

        try:
            self.components = c = build_components(settings, reactor)
            relay = RelayService(c, resolver=resolver)  # makes the queue folder
        except OSError as e:  # the state directory: one line, not a traceback
            raise StateDirError.from_os_error(e, settings.hub.state_dir) from None
        self._storage = _StorageService(c.syncer, c.spooler, settings.hub.state_dir)
        self._storage.setServiceParent(self)
        # the heartbeat of the stall record, started before any listener
        c.stalls.setServiceParent(self)
        relay.setServiceParent(self)
        c.queue = relay.queue

        from txmailhub.pop3.protocol import POP3Factory
        from txmailhub.smtp.protocol import SMTPFactory

        # A factory per listener: a listener's stop ends the sessions of its
        # factory (they share the connection counts, which are per
        # components), and one listener may be stopped while the others run.
        plan: list[tuple[str, tuple[str, ...], Any, Any]] = [
            ("smtp", settings.smtp.listen, lambda: SMTPFactory(c), None),
            ("submission", settings.submission.listen,
             lambda: SMTPFactory(c, submission=True), None),
        ]
        if settings.submission.tls_listen:
            plan.append((
                "submission (implicit TLS)", settings.submission.tls_listen,
                lambda: SMTPFactory(c, submission=True, implicit_tls=True), c.tls,
            ))
        plan.append(("pop3", settings.pop3.listen, lambda: POP3Factory(c), None))
        if settings.pop3.tls_listen:
            plan.append((
                "pop3 (implicit TLS)", settings.pop3.tls_listen,
                lambda: POP3Factory(c, implicit_tls=True), c.tls,
            ))
        for role, descriptions, make_factory, tls in plan:
            for description in descriptions:
                ListenerService(
                    reactor, role, description, make_factory(), tls, c.listening
                ).setServiceParent(self)

    def _stop_children(self) -> Deferred:
        """``MultiService.stopService``, but the storage (the syncer) stops
        only after every other part: all are told at once, in reverse
        order of their start, and a session finishing its message or the
        relay recording an attempt still has the syncer it needs.  Any
        other part with a ``stop_after`` (``signals.HangupNotice``: its signal
        handlers) finishes its stop only once all of those, storage too, have."""
        Service.stopService(self)
        late = [child for child in reversed(list(self))
                if child is not self._storage and hasattr(child, "stop_after")]
        others = [maybeDeferred(child.stopService) for child in reversed(list(self))
                  if child is not self._storage and child not in late]
        storage = self._storage.stop_after(DeferredList(others, consumeErrors=False))
        after = [child.stop_after(DeferredList([*others, storage], consumeErrors=False))
                 for child in late]
        return DeferredList([*others, *after, storage])

    def startService(self) -> None:
        if self.running:
            # started already (an application that starts the hub, then adds
            # it to a parent that runs, which starts it again): each part
            # would start twice, the queue runner's timer with it
            return
        try:
            super().startService()
        except (StartError, Exception) as e:  # StartError is a SystemExit
            error = self._start_failed(e)
            if error is e:
                raise
            raise error from None
        self._has_run = True
        users = self.components.users
        if users is not None:
            # Bad lines do not stop the hub (the rest of the file works), but
            # whoever starts it must hear about them, not only ``check``:
            # loading the file logs them (and again whenever it changes).
            # One it cannot read is logged as an error by the same load, and
            # the hub answers 451 until it can (configuration.rst): no
            # traceback, no failed start.
            try:
                users.addresses()
            except OSError:
                pass
        for warning in self.settings.warnings:  # printed by check and twistd; kept here too
            log.warn("config: {warning}", warning=warning)
        if self._resolver_given and self.settings.relay.nameservers:
            # the application's resolver is what the relay asks: an operator
            # who set nameservers in the config would look for them in vain
            log.warn("[relay] nameservers ({nameservers}) not used: the relay asks the "
                     "resolver given to MailHub(resolver=...)",
                     nameservers=", ".join(self.settings.relay.nameservers))
        log.info(
            "txmailhub started: hostname {hostname}, domains {domains}, state in {state_dir}",
            hostname=self.settings.hub.hostname,
            domains=", ".join(self.settings.hub.domains),
            state_dir=self.settings.hub.state_dir,
        )

    _start_error_type: type[Exception] | None = None
    _stops = 0  # stopService calls: only the last one's end gives the state directory up
    # started, and not undone by a failed start since: a stop of a hub that
    # never ran (or whose start failed and rolled back) logs no "stopping"
    # and "stopped" for a hub nobody saw start (it still stops every part)
    _has_run = False

    @property
    def start_error_type(self) -> type[Exception] | None:
        """What a ``StartError`` in ``privilegedStartService`` becomes; set to
        ``DaemonStartError`` by ``twistd mailhub`` when it daemonizes (and by
        etc/mailhub.tac, which cannot tell whether twistd will), which also
        has twistd's waiting parent print it as text, and one nobody catches
        end the process with a line (``print_start_errors_plainly``)."""
        return self._start_error_type

    @start_error_type.setter
    def start_error_type(self, kind: type[Exception] | None) -> None:
        self._start_error_type = kind
        if isinstance(kind, type) and issubclass(kind, DaemonStartError):
            print_start_errors_plainly()

    #: an observer a ``StartError`` of ``startService`` is also written to:
    #: ``twist mailhub --log-file`` sets it (``run_files.twist_log_observer``),
    #: since twist starts the hub before it begins logging, and the error
    #: would otherwise reach standard error only
    start_error_observer: Any = None

    #: the pid file ``twistd -n mailhub`` wrote for this process (set by the
    #: plugin; a ``.tac`` may set it too), removed when the start fails
    pid_file: str | None = None

    #: called with the parent when the hub is added to one: ``twistd
    #: mailhub`` sets it (``tap.makeService``) to give twistd's application
    #: the hub's log file before twistd starts logging (``txmailhub.logfile``)
    parent_hook: Any = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        hook, self.parent_hook = self.parent_hook, None
        if hook is not None:
            hook(parent)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except (StartError, Exception) as e:  # StartError is a SystemExit
            error = self._start_failed(e)
            if error is e:
                raise
            raise error from None

    def _start_failed(self, error: BaseException) -> BaseException:
        """Undo a start that failed part way, whatever failed, and say what
        to raise.  Any part may fail with something other than a
        ``StartError`` (the queue's lock or records unreadable: a state
        directory made by root before twistd switched to ``--uid``); the
        parts started before it would stay running -- the state directory
        claimed, the syncer, the heartbeat, a bound port -- under an
        application that carries on.
        An ``OSError`` on a file of the state directory becomes its
        ``StateDirError`` (one line, what to do); then, as any
        ``StartError``, ``start_error_type`` when set (a daemonized twistd
        hears of it).  Anything else is raised as it is, traceback and all."""
        self._roll_back()
        if isinstance(error, OSError):
            error = self._state_dir_error(error) or error
        if not isinstance(error, StartError):
            return error
        if self.start_error_observer is not None:
            try:
                Logger(namespace=log.namespace, observer=self.start_error_observer).error(
                    "{message}", message=error.message)
            except Exception:  # a full disk: the line still reaches standard error
                pass
        if self.start_error_type is None:
            self._remove_pid_file()
            return error
        log.error("{message}", message=error.message)  # the whole of it, for the log
        return self.start_error_type(error.brief)

    def _state_dir_error(self, error: OSError) -> StateDirError | None:
        """``error``'s ``StateDirError`` when it names a file of the state
        directory, or names none and is a full or read-only disk, else
        None: another that names no file (too many open files, an fsync's
        EIO) may come from anywhere, and is raised as it is, traceback and
        all, rather than blamed on the state directory."""
        state_dir = os.path.abspath(self.settings.hub.state_dir)
        if error.filename is None:
            # a write's full or read-only disk names no file: the start
            # writes only in the state directory (the spool made ahead)
            return (StateDirError.from_os_error(error, self.settings.hub.state_dir)
                    if error.errno in _DISK_FULL else None)
        where = os.path.abspath(os.fsdecode(error.filename))
        if where != state_dir and not where.startswith(state_dir.rstrip(os.sep) + os.sep):
            return None
        return StateDirError.from_os_error(error, self.settings.hub.state_dir)

    def _roll_back(self) -> None:
        """A start that failed part way undoes itself, so that an
        application that catches the error carries on without any of this
        hub: no port left listening (and taking mail), no queue runner, and
        the state directory given up for the next attempt."""
        for service in reversed(list(self)):
            try:
                abandon = getattr(service, "abandon", None)  # the relay: no grace
                if service.running and abandon is not None:
                    abandon()
                elif service.running:
                    service.stopService()
                elif isinstance(service, ListenerService) and service.port is not None:
                    service.unbind()  # bound, never started
                elif hasattr(service, "undo_privileged_start"):
                    service.undo_privileged_start()  # a HangupNotice's handlers
            except Exception:
                log.failure("undoing the failed start of {service}", service=service)
        self.running = 0
        self._has_run = False
        self._storage.release()

    def _remove_pid_file(self) -> None:
        """Remove ``pid_file`` if it names this process.  twistd removes its
        pid file after a start error that is an ``Exception``, not after a
        ``StartError`` (a ``SystemExit``, for its one line and exit 1):
        left behind, it names a pid that may be running again at the next
        start (1, for a hub that is a container's first process), and
        twistd then refuses to start ("Another twistd server is running")
        until someone deletes the file.  (A daemonized twistd gets a
        ``DaemonStartError``, an ``Exception``: it removes the file itself.)"""
        path = self.pid_file
        if not path:
            return
        try:
            with open(path) as f:
                pid = int(f.read().strip() or -1)
            if pid == os.getpid():
                os.remove(path)
        except (OSError, ValueError):
            pass

    def check_state_dir(self) -> None:
        """Raise ``StartError`` if another hub runs on this state directory
        (``twistd mailhub`` asks before it forks; the start checks again)."""
        self._storage.check()

    def stopService(self) -> Any:
        announce = self._has_run  # nothing to say of a hub that never ran
        if announce:
            log.info("txmailhub stopping")
        self._stops += 1
        stop = self._stops
        d = self._stop_children()

        def stopped(result: Any) -> Any:
            if self.running or stop != self._stops:
                # started again before this stop was over (a quick restart,
                # docs/embedding.rst): the running hub keeps its state
                # directory; a later stop gives it up
                return result
            # only now, with every part stopped (relay attempts in flight
            # included), may another hub have the state directory
            self._storage.release()
            if announce:
                log.info("txmailhub stopped: spool closed, queued mail stays queued")
            return result

        return d.addBoth(stopped)
