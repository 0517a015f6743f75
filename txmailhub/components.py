"""The bundle of components a listener's factory is built from.

``service.py`` builds one ``Components`` from the settings and hands it to
each protocol factory; tests build one from fakes (``txmailhub.testing``).
Nothing here starts or opens anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from txmailhub.config import Settings

__all__ = ["Components"]


@dataclass
class Components:
    """What the protocols need, injected (STYLE practice 8).

    * ``reactor``: provides IReactorTime (and IReactorCore for threads).
    * ``router``: ``IRecipientRouter``.
    * ``store``: ``IMailboxStore``.
    * ``spooler``: ``ISpooler`` (where DATA streams to).
    * ``queue``: ``IOutboundQueue`` or ``None`` while no relay runs
      (then remote recipients get a temporary refusal, never a drop).
    * ``portal``: a ``twisted.cred.portal.Portal`` whose realm yields
      ``ISMTPUser`` and ``IMailbox`` avatars; its checkers take
      ``IUsernamePassword`` and, for APOP, ``IUsernameHashedPassword``.
    * ``tls``: a server ``IOpenSSLServerConnectionCreator`` (e.g.
      ``CertificateOptions``) or ``None`` when ``[tls]`` is absent.
    * ``users``: the ``txmailhub.users.UsersDB`` (who exists locally).
    * ``syncer``: the ``txmailhub.store.sync.Syncer`` (kernel AIO or group-commit
      threads) shared by
      the spool, the Maildirs and the queue, or ``None`` (components then
      sync on their own).
    * ``smtp_connections``: the connection counts every SMTP listener of
      the hub shares (``[smtp] max_connections`` is for the whole hub);
      made by the first ``SMTPFactory`` built from these components.
    * ``pop3_connections``: the same for the POP3 listeners.
    * ``login_failures``: failed logins per client (SMTP AUTH and POP3
      together), a ``txmailhub.limits.FailureWindow``; made by the first
      factory that needs it.
    * ``mailbox_usage``: the ``txmailhub.store.quota.MailboxUsage`` every
      SMTP listener's recipient policy measures mailboxes with (one bound
      on the folders remembered, one listing per change for the whole
      hub); made by the first policy that needs it (``[hub] mailbox_quota``).
    * ``quota_warnings``: the ``txmailhub.logsafe.RepeatLimit`` that keeps
      the warning about a mailbox the quota cannot measure to one line per
      mailbox every few minutes for the whole hub; made with
      ``mailbox_usage``.
    * ``unusable_mailboxes``: the same for the warning about a user whose
      name no Maildir folder can have, which RCPT refuses; made by the
      first SMTP listener's recipient policy.
    * ``spool_room``: the ``txmailhub.smtp.policy.SpoolRoom`` through
      which every SMTP listener reads the spool's free space for MAIL:
      one ``statvfs`` a second for the hub answers the MAILs without
      ``SIZE=``; made by the first SMTP listener's recipient policy.
    * ``pop3_worker_jobs``: the ``DeferredSemaphore`` that keeps the POP3
      sessions' jobs on the store's worker threads (sizes measured at a
      login, long header sections downgraded) to
      ``txmailhub.pop3.protocol.WORKER_JOBS`` at once for the whole hub.
    * ``stalls``: the ``IStallRecord`` (``txmailhub.stalls.ReactorStalls``)
      of how long the reactor thread could not run, for the whole hub;
      ``MailHub`` starts and stops its heartbeat.  Made by the first
      ``SMTPFactory`` when absent: one that is never started, which
      credits no stall to a message's data rate (its own ``_drive`` time
      still is).  The relay (``RelayService``, at its start) gives it to
      its sessions' timers and connect timeouts: a stall is not a next
      hop's time either.
    * ``listening``: ``(host, port)`` pairs this hub listens on, filled in
      by the service as listeners bind (the relay uses it to spot an MX
      that points back at us: a mail loop).
    """

    settings: Settings
    reactor: Any
    router: Any
    store: Any
    spooler: Any
    portal: Any
    queue: Any = None
    tls: Any = None
    users: Any = None
    syncer: Any = None
    smtp_connections: Any = None
    pop3_connections: Any = None
    login_failures: Any = None
    mailbox_usage: Any = None
    quota_warnings: Any = None
    unusable_mailboxes: Any = None
    spool_room: Any = None
    pop3_worker_jobs: Any = None
    stalls: Any = None
    listening: list[tuple[str, int]] = field(default_factory=list)

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """The state every listener of one kind shares (``name``, one of the
        fields above), made by the first factory that asks for it."""
        value = getattr(self, name)
        if value is None:
            value = make()
            setattr(self, name, value)
        return value
