"""Who may send to whom: the SMTP server's recipient policy.

Owns the relay rule (never an open relay), the mapping of an RCPT
address to its final recipients through the router, and whether the disk
can take a message of the size MAIL announced, and whether a local
mailbox is over ``[hub] mailbox_quota``.  Synchronous decisions over
in-memory tables (the router's), plus the spooler's ``room()`` (one
``statvfs`` for ``MAIL ... SIZE=``, at most one a second for the hub for
a MAIL without it: ``SpoolRoom``) and, with a quota, the mailbox meter
(``txmailhub.store.quota``: two ``stat`` calls per mailbox, a listing for
a folder that changed); the SMTP engine calls it for MAIL,
RCPT, VRFY and EXPN.  It must not parse SMTP.

The rules, in order:

1. ``postmaster`` (any case) at a local domain, or bare, is always
   accepted (RFC 5321 4.5.1): the router's answer if it has one, else the
   primary domain's postmaster mailbox.
2. A local domain: the router expands the address (aliases); unknown is
   550 5.1.1 (451 4.3.0 while the users or aliases file may have been
   read half-written: ``txmailhub.router``).  Alias targets in other
   domains need the outbound queue.
3. Another domain: only for an authenticated client or one in
   ``[smtp] relay_networks``; otherwise 550 5.7.1.  Without an outbound
   queue, a temporary 451 4.3.0 (never a silent drop).

A local mailbox whose name no Maildir folder of the store can have (a
users file line ``a/b@...`` or one over the file system's 255 octets,
written by hand: ``MailboxNameError``) gets no copy: an RCPT that leads
to such mailboxes only is ``550 5.3.5`` (the postmaster's goes to the
primary domain's postmaster mailbox), not a message accepted to wait
in the queue for its lifetime.  Said in the log once per mailbox every
``UNMEASURED_WARNING_SECONDS``.

With ``[hub] mailbox_quota``, ``check_quota`` follows each accepted RCPT
(see its docstring); without one it is ``None`` and RCPT costs nothing
more.

Relay tricks (``user%remote@local``, ``"user@remote"@local``,
``remote!user@local``) are local addresses to this policy: the router
finds no such user, so they are refused with 550 5.1.1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from txmailhub.address import Address
from txmailhub.errors import LocalError, MailboxNameError, Rejected
from txmailhub.logsafe import RepeatLimit
from txmailhub.smtp import replies
from txmailhub.smtp.reply import Reply
from txmailhub.store.quota import MailboxUsage

__all__ = ["MIN_MESSAGE_ROOM", "ROOM_READING_SECONDS", "UNMEASURED_WARNING_SECONDS",
           "RecipientPolicy", "SpoolRoom", "local_rcpt", "quota_refusal", "storable"]

#: the free space below which no message can be stored (a MAIL without
#: ``SIZE=`` is answered ``452 4.3.1`` at once): one block of the usual
#: 4 KiB, what the spool file of a one-line message and its trace field
#: takes, with the queue record a relayed one needs besides
MIN_MESSAGE_ROOM = 4096
#: how long one reading of the free space answers a MAIL without ``SIZE=``
ROOM_READING_SECONDS = 1.0


class SpoolRoom:
    """The spooler's ``room()`` (``ISpooler``: one ``statvfs``), read
    for every ``MAIL ... SIZE=`` (``fresh``) and at most once every
    ``ROOM_READING_SECONDS`` for a MAIL without it (``recent``), for the
    hub's SMTP listeners together: a client that sends MAIL after MAIL
    costs no system call each.  A clock set back reads again."""

    def __init__(self, room: Callable[[], int | None], clock: Callable[[], float]) -> None:
        self._room = room
        self._clock = clock
        self._when: float | None = None
        self._value: int | None = None

    def fresh(self) -> int | None:
        self._value = self._room()
        self._when = self._clock()
        return self._value

    def recent(self) -> int | None:
        when = self._when
        if when is None or not 0 <= self._clock() - when < ROOM_READING_SECONDS:
            return self.fresh()
        return self._value


log = Logger()

#: A mailbox the quota cannot measure is logged at most once in this many
#: seconds (each ``RCPT`` to it would be a line: a client sending a hundred
#: fills the log), for at most ``_UNMEASURED_KEEP`` mailboxes remembered
UNMEASURED_WARNING_SECONDS = 300.0
_UNMEASURED_KEEP = 1000


def local_rcpt(router: Any, address: Address, primary_domain: str,
               ) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
    """The mailboxes and remote addresses RCPT ``address``, in a local
    domain, goes to: the router's expansion, with RFC 5321 4.5.1 on top --
    a postmaster the router refuses (its alias's users file away, say, a
    451) is the primary domain's postmaster Maildir.  One function for the
    SMTP server and ``mailhub alias show``, which says what RCPT gets;
    raises ``Rejected`` for any other refusal."""
    try:
        local, remote = router.resolve(address)
    except Rejected:
        if address.is_postmaster:
            return (Address("postmaster", primary_domain),), ()
        raise
    return tuple(local), tuple(remote)


def storable(address: Address, local: tuple[Address, ...], remote: tuple[Address, ...],
             maildir_path: Callable[[Address], str], primary_domain: str,
             unusable: Callable[[Address, MailboxNameError], None] | None = None,
             ) -> tuple[Address, ...]:
    """The mailboxes of ``local`` (RCPT ``address``'s, with ``remote`` its
    remote members) that can have a Maildir folder (``maildir_path``, the
    store's rule): one that cannot (``MailboxNameError``: its local part's
    or its domain's name) gets no copy -- every attempt to deliver it
    would fail, for good -- and is given to ``unusable``.  Raises
    ``Rejected`` (550 5.3.5) when none is left and ``address`` has no
    remote member either (a postmaster's goes to the primary domain's
    postmaster mailbox, RFC 5321 4.5.1).  The one rule of the SMTP
    server's RCPT, VRFY and EXPN, and of ``sendmail -bv``."""
    kept: list[Address] = []
    for mailbox in local:
        try:
            maildir_path(mailbox)
        except MailboxNameError as e:
            if unusable is not None:
                unusable(mailbox, e)
            continue
        except Exception:
            pass  # any other fault is delivery's to meet (and retry)
        kept.append(mailbox)
    if len(kept) == len(local):
        return local
    if not kept and not remote:
        if address.is_postmaster:
            return (Address("postmaster", primary_domain),)
        raise Rejected(replies.MAILBOX_NAME_UNUSABLE)
    return tuple(kept)


def quota_refusal(address: Address, final: tuple[Address, ...], quota: int,
                  measure: Callable[[Address], int | None], is_local: Callable[[str], bool],
                  size: int | None = None) -> Reply | None:
    """The reply to RCPT ``address`` for ``[hub] mailbox_quota`` (``quota``
    octets), or ``None`` when it is taken: ``452 4.2.2`` when every one of
    its ``final`` recipients is a local mailbox that holds ``quota`` octets
    or more (``measure``: what a mailbox holds; ``None`` when it cannot be
    measured, which takes the mail), or would with the ``size`` MAIL
    announced; ``550 5.2.3`` when that size is over the quota itself.
    The one rule of the SMTP server (``RecipientPolicy.check_quota``),
    ``mailhub alias show`` and ``sendmail -bv``.

    A soft quota, as a quota service at RCPT gives: a message accepted
    here is delivered even if it takes the mailbox over (nothing is
    refused after DATA, so no bounce goes to a forged sender).  An alias
    with a member that has room, or a remote member, is accepted for
    all its members: refusing it would hold back the others' copies,
    dropping the full one would lose mail without a word.  The
    postmaster is never refused (RFC 5321 4.5.1)."""
    if address.is_postmaster or not final:
        return None
    for mailbox in final:
        if mailbox.is_postmaster or not is_local(mailbox.domain):
            return None
        used = measure(mailbox)
        if used is None or (used < quota and (size is None or used + size <= quota)):
            return None
    if size is not None and size > quota:
        # no mailbox, however empty, ever takes it: say so for good,
        # rather than have the sender's server retry for days
        return replies.MESSAGE_OVER_QUOTA
    return replies.MAILBOX_FULL


class RecipientPolicy:
    """Decisions for one listener, from ``Components``."""

    def __init__(self, components: Any) -> None:
        self.components = components
        self.primary_domain = components.settings.hub.primary_domain
        # an embedder's own spooler may predate room(): then nothing is refused
        room = getattr(getattr(components, "spooler", None), "room", None)
        self._room: SpoolRoom | None = None
        if room is not None:
            shared = getattr(components, "shared", None)
            clock = getattr(getattr(components, "reactor", None), "seconds", time.monotonic)

            def reading() -> SpoolRoom:
                return SpoolRoom(room, clock)

            self._room = reading() if shared is None else shared("spool_room", reading)
        # [hub] mailbox_quota: only a store that names its Maildirs can be
        # measured (an embedder's own store is not)
        self.quota = getattr(components.settings.hub, "mailbox_quota", 0)
        maildir_path = getattr(getattr(components, "store", None), "maildir_path", None)
        self.check_quota = None
        if self.quota and maildir_path is not None:
            # one meter for every listener of the hub (MX, submission):
            # its bound on remembered folders is the hub's, and a folder
            # that changed is listed once, not once per listener
            shared = getattr(components, "shared", None)
            self.usage = MailboxUsage() if shared is None else shared("mailbox_usage",
                                                                      MailboxUsage)
            # the reactor's clock (a fake one in tests); shared too, so a
            # mailbox is logged once per interval for the hub, not per port
            clock = getattr(getattr(components, "reactor", None), "seconds", time.time)

            def unmeasured() -> RepeatLimit:
                return RepeatLimit(UNMEASURED_WARNING_SECONDS, _UNMEASURED_KEEP, clock)

            self.unmeasured = unmeasured() if shared is None else shared("quota_warnings",
                                                                         unmeasured)
            self.check_quota = self._check_quota
        shared = getattr(components, "shared", None)
        clock = getattr(getattr(components, "reactor", None), "seconds", time.time)

        def unusable() -> RepeatLimit:
            return RepeatLimit(UNMEASURED_WARNING_SECONDS, _UNMEASURED_KEEP, clock)

        # one for the hub's listeners, as the quota's warnings
        self.unusable = unusable() if shared is None else shared("unusable_mailboxes", unusable)

    @property
    def router(self) -> Any:
        """The components' router at each decision, not the one they held
        when the listener was built: an application that embeds the hub may
        give it a router of its own before the start (docs/embedding.rst),
        and delivery and the relay already ask ``components.router``."""
        return self.components.router

    def check_room(self, size: int) -> None:
        """Refuse a message announced at ``size`` octets (``MAIL ... SIZE=``)
        that the disk cannot take now: ``452 4.3.1`` before any data is
        sent (RFC 1870 6.1), so the client keeps it and retries, rather than
        sending it all to hear the same answer at the end.  Half as much
        again is asked for: the trace header, a bounce that quotes the
        message, a copy converted for a 7-bit relay."""
        room = self._room.fresh() if self._room is not None else None
        if room is not None and size + size // 2 > room:
            raise Rejected(replies.STORAGE_FULL)

    def check_any_room(self) -> None:
        """Refuse a MAIL without ``SIZE=`` when the disk has no room for
        any message (less than ``MIN_MESSAGE_ROOM``): ``452 4.3.1`` (RFC
        5321 4.2.2, 4.2.3: insufficient system storage), rather than take
        the whole message to give the same answer at its end.  The free
        space read at most ``ROOM_READING_SECONDS`` before (``SpoolRoom``)."""
        room = self._room.recent() if self._room is not None else None
        if room is not None and room < MIN_MESSAGE_ROOM:
            raise Rejected(replies.STORAGE_FULL)

    def check_recipient(self, address: Address, session: Any) -> tuple[Address, ...]:
        """The final recipients for RCPT ``address``; raises ``Rejected``."""
        router = self.router
        if router.is_local_domain(address.domain):
            local, remote = local_rcpt(router, address, self.primary_domain)
            if local:
                local = self._storable(address, local, remote)
            if remote and self.components.queue is None:
                raise Rejected(replies.QUEUE_UNAVAILABLE)
            return local + remote
        if session.authenticated_as is None and not session.relay_allowed:
            raise Rejected(replies.RELAY_DENIED)
        if self.components.queue is None:
            raise Rejected(replies.QUEUE_UNAVAILABLE)
        return (address,)

    def _storable(self, address: Address, local: tuple[Address, ...],
                  remote: tuple[Address, ...]) -> tuple[Address, ...]:
        """``storable`` over the store's Maildirs, each mailbox that gets no
        copy logged (once per mailbox every ``UNMEASURED_WARNING_SECONDS``)."""
        maildir_path = getattr(getattr(self.components, "store", None), "maildir_path", None)
        if maildir_path is None:
            return local

        def unusable(mailbox: Address, e: MailboxNameError) -> None:
            held = self.unusable.due(mailbox.key)
            if held is not None:
                # a domain's folder name is the domain's (``[hub] domains``):
                # no rename of the user mends it
                mend = ("no user of the domain can have a Maildir: drop it from [hub] "
                        "domains" if getattr(e, "part", None) == "domain"
                        else "rename the user in the users file")
                log.warn("mail to {mailbox} is refused: {error} ({mend}; mailhub check "
                         "names it){held}", mend=mend,
                         mailbox=mailbox.key, error=str(e),
                         held=f" (and {held} RCPT since the last such line)" if held
                         else "")

        return storable(address, local, remote, maildir_path, self.primary_domain, unusable)

    def _check_quota(self, address: Address, final: tuple[Address, ...],
                     size: int | None) -> None:
        """Refuse RCPT ``address`` by ``quota_refusal`` (raises
        ``Rejected``): ``452 4.2.2`` when every one of its ``final``
        recipients is a local mailbox that holds ``quota`` octets or more,
        or would with the ``size`` MAIL announced; ``550 5.2.3`` when that
        size is over the quota itself.  A mailbox that cannot be measured
        gets its mail (the quota is soft), and is logged."""
        # the store of the components now: one the application gave the hub
        # before its start names no Maildirs, and is not measured (the
        # Maildirs of the store it replaced may hold anything)
        maildir_path = getattr(self.components.store, "maildir_path", None)
        if maildir_path is None:
            return

        def measure(mailbox: Address) -> int | None:
            try:
                return self.usage.usage(maildir_path(mailbox))
            except (OSError, LocalError, UnicodeError) as e:
                # delivery says what is wrong, if anything
                self._warn_unmeasured(str(mailbox), e)
                return None

        reply = quota_refusal(address, final, self.quota, measure,
                              self.router.is_local_domain, size)
        if reply is not None:
            raise Rejected(reply)

    def _warn_unmeasured(self, mailbox: str, error: Exception) -> None:
        """Log that ``mailbox`` could not be measured, at most once per
        ``UNMEASURED_WARNING_SECONDS`` for each mailbox (the count of the
        ``RCPT`` commands left unsaid in between goes with the next line)."""
        held = self.unmeasured.due(mailbox)
        if held is None:
            return
        if held:
            log.warn("cannot measure the mailbox of {mailbox} for its quota: {error} "
                     "(also at {held} RCPT since the last such line; one line per mailbox "
                     "every {seconds} s at most)",
                     mailbox=mailbox, error=str(error), held=held,
                     seconds=int(UNMEASURED_WARNING_SECONDS))
        else:
            log.warn("cannot measure the mailbox of {mailbox} for its quota: {error}",
                     mailbox=mailbox, error=str(error))

    def verify(self, address: Address) -> tuple[Address, ...] | None:
        """What VRFY/EXPN may say: the final addresses, ``None`` when we
        cannot tell (another domain: 252); raises ``Rejected`` (550 5.1.1, or
        the router's temporary refusals, as for RCPT, and RCPT's 550 5.3.5
        for a mailbox no Maildir folder can hold: VRFY says what RCPT
        would)."""
        if not self.router.is_local_domain(address.domain):
            return None
        local, remote = self.router.verify(address)
        local, remote = tuple(local), tuple(remote)
        if local:
            local = self._storable(address, local, remote)
        return local + remote
