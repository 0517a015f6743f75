"""The contracts between txmailhub's components (zope.interface).

Every extension point lives here, so the protocols can be built and tested
against fakes (``txmailhub.testing``) and applications that embed the hub
can swap a component.  Rules for every interface below:

* A method that may wait for disk, network or a thread returns a
  ``Deferred`` -- always, never "a value or a Deferred".
* A method documented as synchronous must not block: it answers from
  memory (tables reloaded when their file changes, say).
* Policy refusals are raised (or errback) as ``txmailhub.errors.Rejected``
  carrying the reply for the peer.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "IDeliveryAgent",
    "IDowngradedSizes",
    "IKeyedStore",
    "IMXResolver",
    "IMailbox",
    "IMailboxStore",
    "IMailboxUpdate",
    "INoWaitRead",
    "IOutboundQueue",
    "IRecipientRouter",
    "ISMTPUser",
    "ISpoolWriter",
    "ISpooler",
    "ISpoolingStore",
    "IStallRecord",
]


class ISpooler(Interface):
    """Where incoming message data is written while it arrives."""

    def open() -> "ISpoolWriter":  # noqa: UP037
        """Start a new spool file and return its writer (synchronous).
        Raises when no file may be made (the hub's spooler, once the hub's
        stop has given its state directory up: ``LocalError``)."""

    def discard(message) -> None:
        """Remove the spool file of a ``SpooledMessage`` once every copy of
        it is durable elsewhere (delivered, queued).  Synchronous; never
        raises for a file that is already gone."""

    def room() -> "int | None":  # noqa: UP037
        """Octets the hub may still write on the spool's filesystem (the
        mailboxes and the queue share it), or ``None`` when that cannot be
        told.  Synchronous and cheap (one ``statvfs``): asked for each
        ``MAIL ... SIZE=``, and at most once a second for a MAIL without
        it (``txmailhub.smtp.policy.SpoolRoom``), so a message that cannot
        fit is refused before its data is sent (RFC 1870 6.1)."""


class ISpoolWriter(Interface):
    """One message being received, streamed to disk in bounded chunks."""

    def write(data: bytes) -> None:
        """Append already-unstuffed, LF-terminated message bytes.

        Synchronous: the data goes to the OS at once (no buffering of the
        whole message in memory)."""

    def finish() -> "Deferred":  # noqa: F821, UP037
        """Close the file and make it durable.

        Fires with a ``txmailhub.envelope.SpooledMessage`` once the data is
        fsynced.  The spool file belongs to the caller from then on: it
        must hand it to the store/queue and then ``discard`` it."""

    def finish_then(make_publication) -> "Deferred":  # noqa: F821, UP037
        """``finish()``, then publish the message in the same durable step.

        ``make_publication(message)`` is called at once with the
        ``SpooledMessage`` and returns an object with ``run()`` (makes the
        new names, returns the directories to sync) and ``settle(failed)``
        (gets ``{directory: OSError}``, returns the result); both run
        once the data is durable: in a real spool on the syncer's worker
        thread, or on the reactor thread when it uses the kernel's AIO.
        Fires with ``(message, result)``.  See ``Syncer.sync_then``."""

    def abort() -> None:
        """Throw the partial message away (client vanished, limit hit)."""


class IMailbox(Interface):
    """One user's Maildir, as a POP3 session sees it (a locked snapshot).

    Messages are numbered from 0 in the order of the snapshot taken when
    the mailbox was opened; mail that arrives later is not shown until the
    next session (RFC 1939: numbers are stable within a session).
    """

    def list_messages() -> list:
        """The snapshot: a sequence of ``txmailhub.store.maildir.MessageInfo``
        (``uid``, ``size`` in CRLF octets, ``path``) -- a list, or a
        ``txmailhub.store.format.Snapshot`` (the Maildir store's: the same
        messages kept in columns, some 130 octets each; its paths and
        ``seen`` follow ``mark_seen``).  Synchronous; the caller must not
        change it."""

    def open_message(index: int):
        """A binary file object of message ``index`` (LF line endings, as
        stored), opened for streaming.  Synchronous (a local open()).
        POP3 seeks it to downgrade a message with UTF-8 header fields and
        MIME parts for a client without UTF8 (RFC 6857: measured, then
        sent); one that cannot seek has such a message refused with
        ``-ERR [UTF8]`` instead."""

    def read_message(index: int, limit: int) -> "bytes | None":  # noqa: UP037
        """The whole stored message ``index`` (LF line endings) if it is
        shorter than ``limit`` octets, else ``None`` (stream it with
        ``open_message``).  Synchronous; for small messages, cheaper than
        a file object."""

    def mark_seen(index: int) -> None:
        """Move message ``index`` from new/ to cur/ with the S flag.
        Synchronous; never fails loudly (a vanished file is ignored).
        The POP3 server calls it for the messages RETR sent when the
        session ends (QUIT, or a dropped connection), not at each RETR;
        not at all where the mailbox provides ``IMailboxUpdate``."""

    def delete(indices: list[int]) -> "Deferred":  # noqa: F821, UP037
        """Remove these messages (the POP3 UPDATE state) and fire with
        ``None`` once the directory changes are durable."""

    def close() -> None:
        """Release the exclusive lock.  Idempotent; also called on
        disconnect, so a dropped connection never leaves a stale lock."""


class IMailboxUpdate(Interface):
    """An ``IMailbox`` that makes the POP3 UPDATE state's changes off the
    reactor thread.  Optional: the POP3 server asks ``providedBy``, and
    without it calls ``mark_seen`` for each message and then ``delete``
    (a rename and an unlink on the reactor thread hold every session of
    the hub while the disk does not answer)."""

    def update(seen: list[int], deleted: list[int]) -> "Deferred":  # noqa: F821, UP037
        """Flag the messages ``seen`` as ``mark_seen`` does and remove those
        ``deleted`` as ``delete`` does, without blocking the caller's
        thread.  Fires ``None`` once the removals are durable; errbacks
        with the first error of a removal (a message that cannot be
        flagged is logged, never an error)."""


class IDowngradedSizes(Interface):
    """An ``IMailbox`` that remembers, from one session to the next, the
    size of each message's copy downgraded for a client without UTF8
    (RFC 6857), which ``LIST`` and ``STAT`` must report: working it out
    means rewriting the UTF-8 header section (some 0.6 us an octet), at
    every login of such a client otherwise.  Optional: the POP3 server
    asks ``providedBy`` and measures every time without it.  Called on
    the store's worker threads and the reactor thread: a save on a worker
    may run while a ``LIST n`` remembers a size on the reactor thread."""

    def downgraded_size(index: int, file) -> "int | None":  # noqa: UP037
        """The size remembered for message ``index``, whose open file
        (``open_message``) is ``file``, or ``None`` when not known, or
        remembered for another file or version of it than ``file`` is."""

    def remember_downgraded_size(index: int, file, size: int) -> None:
        """Keep ``size`` for message ``index`` as ``file`` is now (kept in
        memory until ``save_downgraded_sizes``)."""

    def save_downgraded_sizes() -> None:
        """Make what was remembered last beyond this session, if anything
        (blocking: a durable write; best effort, never raises).  Nothing
        once the mailbox is closed.  The mailbox may keep there what its
        reads found too (a message file of another length than its name
        gives, put right by the next login): the POP3 server calls it
        after refusing a message whose file is not the length listed."""


class ICRLFSizeFound(Interface):
    """An ``IMailbox`` told when the POP3 server, reading a message whole,
    found its CRLF form of another size than the snapshot's while its
    file has the length listed (another program changed it in place):
    one whose name gives its sizes can be put right by the next login.
    Optional: the server asks ``providedBy``."""

    def crlf_size_found(index: int, size: int) -> None:
        """Message ``index``'s file was read whole and is ``size`` octets
        in CRLF form (kept for ``IDowngradedSizes.save_downgraded_sizes``,
        which the server calls after its refusal)."""


class INoWaitRead(Interface):
    """An ``IMailbox`` whose reads can be tried without waiting for the
    disk (``txmailhub.store.nowait``): each either reads what the plain
    one would, from the kernel's cache, or raises ``BlockingIOError`` at
    once, having read nothing -- the POP3 server then does the plain read
    on the store's worker threads.  Optional: without it (a mailbox in
    memory, an application's own) the POP3 server reads as before, on
    the reactor thread.  Called on the reactor thread only."""

    def read_message_nowait(index: int, limit: int) -> "bytes | None":  # noqa: UP037
        """``read_message(index, limit)``, or ``BlockingIOError``."""

    def read_nowait(file, size: int) -> bytes:
        """``file.read(size)`` of a file ``open_message`` gave, or
        ``BlockingIOError`` (``file`` is then where it was)."""


class IMailboxStore(Interface):
    """The Maildirs under ``state_dir/mail``."""

    def deliver(message, mailboxes: list) -> "Deferred":  # noqa: F821, UP037
        """Deliver a ``SpooledMessage`` to each ``Address`` in ``mailboxes``.

        Fires with a dict ``{Address: None | Exception}``: one entry per
        mailbox, ``None`` once that copy is durable (file and directory
        fsynced).  One mailbox failing never fails the others; the caller
        decides what happens to the failed ones (queue for retry, bounce).
        """

    def open_mailbox(address, wanted=None) -> "Deferred":  # noqa: F821, UP037
        """Lock ``address``'s Maildir and fire with an ``IMailbox``.
        ``wanted`` (optional): a callable, whether the login's client is
        still there, for a store that may make the login wait.

        Errbacks with ``txmailhub.errors.MailboxInUse`` when another session
        (in this process or another) holds it."""


class ISpoolingStore(Interface):
    """A mailbox store that can deliver a message as part of making its
    spool file durable: the data fsync and the copies' directory entries
    in one batch of the sync worker (the hot path of inbound mail)."""

    def deliver_spooled(writer, mailboxes: list, discard) -> "Deferred":  # noqa: F821, UP037
        """Finish ``writer`` (an ``ISpoolWriter``) and deliver the message
        to each ``Address`` in ``mailboxes``.

        Fires with ``(message, {Address: None | Exception}, discarded)``:
        the ``SpooledMessage``, one outcome per mailbox as for
        ``IMailboxStore.deliver``, and whether the spool file was already
        removed with ``discard(message)`` (done only when every copy is
        durable).  Errbacks when the spool file itself could not be made
        durable (nothing was delivered then)."""


class IKeyedStore(Interface):
    """A mailbox store that can make a delivery at most once per key.

    The queue runner hands a queued local copy to the store and records
    the outcome afterwards; a crash between the two leaves the entry
    pending, and the next start would deliver the acknowledged message a
    second time.  With a key (stable across restarts: the queue entry's
    creation time and id) the store can tell that copy is already there."""

    def deliver_keyed(message, mailboxes: list, key: tuple,
                      first: bool = False) -> "Deferred":  # noqa: F821, UP037
        """``IMailboxStore.deliver``, but a mailbox that already holds the
        copy made under ``key`` (``(when, name)``: seconds since the epoch
        and a short ASCII name) is not given another: its outcome is
        ``None`` once that copy is durable.  ``first``: no call under
        ``key`` can have been made before (the store may then skip the
        costly part of its look for an earlier copy)."""


class IRecipientRouter(Interface):
    """Decides what an RCPT address means.  Synchronous (in-memory tables,
    reloaded when the users or aliases file changes)."""

    def is_local_domain(domain: str) -> bool:
        """Whether mail for ``domain`` is ours (case-insensitive)."""

    def resolve(address) -> tuple:
        """Expand ``address`` through the aliases to final recipients.

        Returns ``(local, remote)``: two tuples of ``Address`` -- mailboxes
        of local users, and addresses in other domains.  Raises
        ``Rejected`` (550 5.1.1) for an unknown local address.  Alias loops
        are cut, never followed forever."""

    def verify(address) -> tuple:
        """What VRFY/EXPN may say: the same as ``resolve`` without raising
        for remote domains; raises ``Rejected`` when unknown."""


class IOutboundQueue(Interface):
    """The durable queue of mail for remote (or retried local) recipients."""

    def enqueue(envelope, message, delivered=(), notice="delivered") -> "Deferred":  # noqa: F821, UP037
        """Store ``message`` (a ``SpooledMessage``) for ``envelope``'s
        recipients and fire with the queue id once message and envelope
        are fsynced (files and directory).  Delivery starts at once.

        Recipients in ``delivered`` are already in their mailboxes: the
        entry only owes their RFC 3461 success notice (NOTIFY=SUCCESS) of
        kind ``notice`` ("delivered", or "expanded" for an alias of several
        members), sent by the queue runner like any other notice."""

    def wake() -> None:
        """Look for due entries now (a flush from the CLI, a new entry)."""


class IMXResolver(Interface):
    """Where mail for a domain goes (RFC 5321 section 5.1)."""

    def resolve(domain: str) -> "Deferred":  # noqa: F821, UP037
        """Fire with an ordered list of ``txmailhub.relay.mx.MXHost``
        (preference order, equal preferences shuffled, each with its
        addresses, IPv6 and IPv4).  Errbacks with ``NullMX`` (RFC 7505),
        ``NoSuchDomain`` (NXDOMAIN: permanent) or ``TemporaryDNSError``."""


class IDeliveryAgent(Interface):
    """Makes one delivery attempt of a queued message."""

    def attempt(entry) -> "Deferred":  # noqa: F821, UP037
        """Try every pending recipient of ``entry`` once.  Fires with a list
        of per-recipient results (delivered, transient failure with the
        remote reply, permanent failure with the remote reply).  Never
        errbacks for a remote failure: that is a result, not an error."""

    def deliver(entry, destination, recipients, settled=None) -> "Deferred":  # noqa: F821, UP037
        """Deliver ``recipients`` of ``entry``, all for ``destination``, in
        one session with the next hop (or more, tried in turn); fires with
        a result per recipient, as ``attempt`` does.  A delivery may hold
        several transactions (recipients a server took too many of, ``452
        4.5.3``, go in a later one, on the same connection or a new one):
        when one that is not the delivery's last ends with the reply to
        its final ".", ``settled(results)``, when given, is called with
        the results of that transaction's recipients, which stand whatever
        the later ones do.  It may return a Deferred: the next
        transaction's commands (or its connection) go once it fires (the
        runner writes those results to the queue record first, so a crash
        in a later transaction does not send them again).  Not called for
        the delivery's last transaction: its results are the Deferred's.
        An agent whose ``deliver`` takes no ``settled`` is called with
        three arguments: its results are recorded as each delivery
        ends."""

    def abort_all() -> "Deferred | None":  # noqa: F821, UP037
        """The hub stops and gives up what is in flight: make no new
        connection and cut the sessions open now, until ``resume``.
        Returns a Deferred that fires once the connections cut are closed
        (the hub's stop waits for it, up to ``relay.runner.CUT_GRACE``), or
        ``None`` when nothing is left to wait for."""

    def connected(queue_id) -> bool:
        """Whether a delivery of the queue entry ``queue_id`` in flight got
        past looking up DNS and connecting (a session is, or was, under
        way): the hub's stop waits for such an entry, and gives up at once
        the others, which lose nothing."""

    def quiesce(keep) -> None:
        """The hub stops and waits only for the queue ids in ``keep``: the
        deliveries of the other entries make no new connection (those
        under way are cancelled), until ``abort_all`` or ``resume``."""

    def resume() -> None:
        """Deliver again (the queue runner starts)."""


class IStallRecord(Interface):
    """How long the reactor thread could not run, for the whole hub: time
    in which no client was read, which a verdict on a client's pace (SMTP's
    minimum data rate) must not count against it."""

    def held(at: float) -> float:
        """Seconds the reactor thread has been held up to ``at`` (a
        ``reactor.seconds()`` reading of the current reactor turn), a stall
        still under way included; synchronous and cheap.  Only differences
        of two readings mean anything: the stall time between them."""


class ISMTPUser(Interface):
    """The avatar an SMTP AUTH login yields: who submitted the mail."""

    address = Attribute("The authenticated user's ``Address``.")
