"""The process under ``twistd mailhub``: its open-files limit, the warning
when that limit is below what the connection limits may take, and the
cyclic collector's thresholds.

Only for the hub run by twistd (``txmailhub.tap`` calls these, and
re-exports them): an application that embeds ``MailHub`` owns its
process's limits and its collector.  It must not touch the hub's services,
its files or the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from txmailhub.config import Settings

__all__ = ["FD_MARGIN", "GC_THRESHOLD0", "SESSION_DESCRIPTORS", "fd_limit_warning",
           "raise_fd_limit", "tune_gc"]


# Descriptors the hub holds besides its sessions: listeners, the spool
# files made ahead, the log, the state lock, a message being stored.
FD_MARGIN = 64

#: Descriptors one SMTP or POP3 session may hold: its connection, and the
#: file it streams -- an SMTP session receiving a message writes its spool
#: file, a POP3 session answering RETR or TOP reads the message -- for as
#: long as the client takes to send or read it.  A client that stalls in
#: the middle keeps both, so every session may hold two at once.
SESSION_DESCRIPTORS = 2


def fd_limit_warning(settings: Settings, soft: int) -> str | None:
    """What to say when the open-files limit ``soft`` is below what the
    connection limits may take: past it, Twisted cuts new clients without
    a word instead of our 421 (and logs a few lines for each).

    Each of those settings the config file writes is followed by its line
    there (`` (at line N)``, ``Settings.at``), as the config's own
    warnings are, and the line starts with the file: lowering one means
    going to that line; a default has none."""
    from txmailhub.relay.runner import ENTRIES_PER_SLOT

    if soft < 0:
        return None
    # the relay: a session per delivery slot, the queued message it sends,
    # and the attempt marker each message being delivered holds open (up
    # to ENTRIES_PER_SLOT per slot: one whose other destination waits for
    # a slot keeps its marker)
    per_slot = 2 + ENTRIES_PER_SLOT
    relay = settings.relay.max_concurrent_deliveries
    need = (SESSION_DESCRIPTORS * (settings.smtp.max_connections + settings.pop3.max_connections)
            + per_slot * relay + FD_MARGIN)
    if soft >= need:
        return None

    at = settings.at  # `` (at line N)``, or nothing for a default
    return (f"{settings.path}: the open-files limit is {soft}, below the {need} the "
            f"connection limits may take ({SESSION_DESCRIPTORS} x ([smtp] max_connections "
            f"{settings.smtp.max_connections}{at('smtp', 'max_connections')} + [pop3] "
            f"max_connections {settings.pop3.max_connections}{at('pop3', 'max_connections')}) "
            f"(a connection and the message it sends or receives) "
            f"+ {per_slot} x [relay] max_concurrent_deliveries {relay}"
            f"{at('relay', 'max_concurrent_deliveries')} (a session and the message it sends "
            f"each, and the attempt markers of the messages in flight) + {FD_MARGIN}): "
            "beyond it clients are cut "
            "without a 421; raise the limit (LimitNOFILE= in a systemd unit, ulimit -n) or "
            "lower those settings")


#: the first generation's threshold under ``twistd mailhub`` (CPython's
#: default is 700)
GC_THRESHOLD0 = 7000


def tune_gc(threshold0: int = GC_THRESHOLD0) -> None:
    """Run the young generation's collection ten times more rarely.

    Every SMTP session allocates a few hundred container objects that die
    young (events, replies, Deferreds); at CPython's default threshold the
    collector walks the survivors every 700 of them, several times per
    message.  Under callgrind (1 KiB messages, 10 sessions, a connection
    each) the hub ran 1.417 M instructions per message at the default and
    1.361 M at 7,000 (-4 %; 20,000 saved no more).  What it costs: cyclic
    garbage (a Failure and its traceback) lives a little longer, a few
    megabytes at most.  Only for the hub run by twistd, like the open-files
    limit: an application that embeds ``MailHub`` owns its collector."""
    import gc

    first, second, third = gc.get_threshold()
    if 0 < first < threshold0:  # 0: the collector is off; leave that as it is
        gc.set_threshold(threshold0, second, third)


def raise_fd_limit(want: int = 65536) -> int:
    """Lift the soft limit on open files towards the hard one (systemd's
    default soft limit, 1024, is about what ``max_connections`` of SMTP and
    POP3 together may use, before any mail file is opened).  Only for the
    hub run by twistd: an application that embeds ``MailHub`` owns its
    process's limits.  Returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
