"""``mailhub queue ...``: the command-line side of the outbound queue.

Owns the ``queue`` sub-commands (``list``, ``show ID``, ``flush``,
``delete ID``, ``hold ID``, ``release ID``) and their output formats.
They work on the queue directory directly, with or without a running
hub: changes take the queue's lock, are durable when the command returns,
and leave a control file the running hub picks up within a second or two
(``.flush`` to retry everything now, ``.changed`` after hold, release or
delete).  It must not deliver anything.

``queue list`` prints one line per message, whitespace-separated: the
bare queue id, the sender (``<>`` for the null sender), the recipients
still to be delivered as plain addresses, the number of attempts, the
next attempt (UTC, ISO 8601, or ``held``; as the hub keeps it,
``schedule.due_by``; ``delivering`` -- ``held,delivering`` if held
meanwhile -- while a running hub is delivering it, by the lock it holds
on ``.<id>.attempt``: a marker a killed hub left is not taken for an
attempt; ``notice,`` before it when the entry only owes its sender a
notice), and the last error: the
remote's reply verbatim, code included (``-`` when there is none).
Control characters (an ESC, which starts a terminal escape sequence; a
reply within RFC 5321's grammar has none but tabs) are shown as
``\\x{HEX}`` in ``list`` and ``show``; white space in an address (a
quoted local part, ``"john doe"@example.org``) is too (a space
``\\x{20}``), so that every field before the last error of a ``list``
line is one word, a ``show`` recipient line's address is its first
word, and an address reads the same in both.

An empty queue is no line at all to a pipe or a file, so that a script
that counts lines (``mailhub queue list | wc -l``) or mails what a cron
job prints gets nothing, as it always did; to a terminal, where a person
reads it and nothing at all looks like a command that hung or failed,
``list`` says ``the queue is empty`` (``EMPTY_NOTE``).  ``mailq`` (the
sendmail command's ``-bp``, ``list_queue``) always prints ``Mail queue
is empty`` then, the line Postfix's and sendmail's ``mailq`` print and
the scripts written for them look for.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Any, TextIO

from txmailhub.cli_output import error_stream
from txmailhub.logsafe import quoted, shown
from txmailhub.relay.queue import OutboundQueue, valid_queue_id
from txmailhub.relay.record import DELIVERED, QueueEntry, RecordError, mta_name
from txmailhub.relay.schedule import due_by, utc_text
from txmailhub.smtp.reply import LocalReply
from txmailhub.store.spool import spool_in_use

__all__ = ["EMPTY_NOTE", "add_queue_parser", "denied_line", "list_queue", "run_queue"]

#: what ``queue list`` writes for an empty queue, to a terminal only
EMPTY_NOTE = "the queue is empty"


class _WallClock:
    @staticmethod
    def seconds() -> float:
        return time.time()


def add_queue_parser(subparsers: Any) -> None:
    """Add the ``queue`` command to the ``mailhub`` argument parser."""
    q = subparsers.add_parser(
        "queue", help="inspect and manage the outbound queue",
        description="Inspect and manage the outbound queue (queue/ in state_dir); the "
                    "commands work while the hub runs.")
    sub = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    def action(name: str, text: str) -> Any:
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")

    action("list", "one line per queued message: its ID, the sender, the recipients still to "
                   "do, the attempts, the next attempt and the last reply")
    # the message id of the 250 after DATA is the envelope's message_id the
    # queue keeps (delivery.py), which run_queue looks up (find_message)
    one = "the queue entry's ID (queue list's first field), or the message id of the hub's " \
          "250 reply to DATA ('ID Message accepted for delivery')"
    for name, text, id_help in (
        ("show", "one queued message in full: envelope, recipients, last replies",
         one + ": every queue entry of that message"),
        ("delete", "drop a message from the queue (it is not bounced)",
         one + ", when the message is in one entry only"),
        ("hold", "keep a message in the queue without trying to deliver it",
         one + ", when the message is in one entry only"),
        ("release", "try a held message again (at once)",
         one + ", when the message is in one entry only"),
    ):
        p = action(name, text)
        p.add_argument("queue_id", metavar="ID", help=id_help)
    action("flush", "retry every message now (a running hub notices within 5 s)")


def _sender(entry: QueueEntry) -> str:
    return entry.envelope.sender_text or "<>"


def _retry_schedule(settings: Any) -> Any:
    """The retry schedule: the hub's config (``mailhub queue``), or what
    ``sendmail -bp`` (``mailq``) read of it (``LocalSubmission``)."""
    relay = getattr(settings, "relay", None)
    return relay.retry_schedule if relay is not None else settings.retry_schedule


def _only_notice(entry: QueueEntry) -> bool:
    """Whether all ``entry`` still holds is a notice to its sender: no
    recipient left to deliver, but one failed (its failure notice not yet
    sent) or owed a success notice."""
    return not entry.pending and not entry.finished


def _next(entry: QueueEntry, schedule: Any, since: float | None = None) -> str:
    """The next attempt as the hub keeps it: a retry time further away
    than the entry's schedule step (written by a clock ahead of this one:
    set back since, or another machine's) is that step from now
    (``docs/relay.rst``, "Retry schedule").  ``since``: a running hub is
    delivering it now (``OutboundQueue.attempt_since``): ``delivering``,
    the record's retry time being the one that attempt will replace --
    ``held,delivering`` when it was held during that attempt.  An entry
    that only owes its sender a notice has ``notice,`` before that: its
    next attempt is the notice's, not a delivery's."""
    when = _next_when(entry, schedule, since)
    return f"notice,{when}" if _only_notice(entry) else when


def _next_when(entry: QueueEntry, schedule: Any, since: float | None) -> str:
    if since is not None:
        return "held,delivering" if entry.held else "delivering"
    if entry.held:
        return "held"
    return utc_text(due_by(entry.next_attempt, entry.steps, _WallClock.seconds(), schedule))


def _delivering(since: float | None) -> str:
    """``queue show``'s ``delivering:`` line's value."""
    if since is None:
        return "no"
    return f"since {utc_text(since)}" if since > 0 else "yes"


# white space that ``str.split()`` splits on and ``shown`` leaves as it is
# (the tab, the space, the no-break and other Unicode spaces)
_WHITE = re.compile(r"\s")


def _field(text: str) -> str:
    """``text`` (an address, the queue id) as one field of a ``queue list``
    line: ``shown``, and its white space too as ``\\x{HEX}`` (a space
    ``\\x{20}``).  A quoted local part (``"john doe"@example.org``) or a
    hand-edited record can put white space in an address, and a script
    splitting the line on it read the fields after it wrong."""
    text = shown(text)
    if text.isascii() and " " not in text and "\t" not in text:
        return text  # nearly every address: nothing to escape
    return _WHITE.sub(lambda m: f"\\x{{{ord(m.group()):X}}}", text)


def _line(entry: QueueEntry, schedule: Any, since: float | None = None) -> str:
    todo = [r.address for r in entry.recipients if r.state != DELIVERED and not r.done]
    if not todo:
        todo = [r.address for r in entry.recipients]
    nxt = _next(entry, schedule, since)
    last = entry.last_reply
    # every field but the last error is one word; the last error, the
    # reply verbatim, is the rest of the line
    fields = [_field(entry.id), _field(_sender(entry)), *(_field(str(a)) for a in todo),
              str(entry.attempts), nxt, shown(last.text()) if last is not None else "-"]
    return " ".join(fields)


def _show(entry: QueueEntry, out: TextIO, schedule: Any, since: float | None = None) -> None:
    env = entry.envelope
    # every line through shown(): a reply's controls (an ESC) must not
    # reach the terminal as they are
    p = lambda line: print(shown(line), file=out)  # noqa: E731
    p(f"id: {entry.id}")
    if env.message_id:
        p(f"message id: {env.message_id}")
    # the sender and each recipient as ``queue list`` gives them
    # (``_field``: white space too as \x{HEX}); printed as they are, since
    # shown() again would turn the escapes' backslash into \x{5C}
    print(f"sender: {_field(_sender(entry))}", file=out)
    p(f"queued: {utc_text(entry.created)}")
    # the spool file's size: the client's octets (what the log line says)
    # and the trace fields this hub put before them
    p(f"size: {entry.size} octets as stored, with this hub's trace fields")
    # the address first, the name it gave in HELO/EHLO after (often an
    # address literal itself: "[127.0.0.1]")
    p(f"client: {env.client_address or '-'} (HELO {env.helo or '-'})")
    if env.authenticated_as:
        p(f"authenticated as: {env.authenticated_as}")
    # RFC 4954 5: what the relay says of the submitter (docs/relay.rst)
    p(f"relayed with: AUTH={'<>' if env.submitter is None else env.submitter}")
    p(f"body: {'8bit' if entry.eight_bit else '7bit'}{' smtputf8' if env.smtputf8 else ''}")
    if env.dsn.ret or env.dsn.envid:
        p(f"dsn: ret={env.dsn.ret or '-'} envid={env.dsn.envid or '-'}")
    p(f"attempts: {entry.attempts}")
    p(f"next attempt: {_next(entry, schedule, since)}")
    p(f"held: {'yes' if entry.held else 'no'}")
    p(f"delivering: {_delivering(since)}")
    p("recipients:")
    for r in entry.recipients:
        # the address is the first word of the line: "john doe"@remote.test
        # as it is made two, and the state read as part of the address
        parts = [r.state, f"attempts={r.attempts}"]
        if r.last_attempt:
            parts.append(f"last-attempt={utc_text(r.last_attempt)}")
        if r.remote_mta:
            parts.append(f"remote={mta_name(r.remote_mta)}")
        if r.notify:
            parts.append("notify=" + ",".join(r.notify))
        if r.notice:
            parts.append(f"notice-owed={r.notice}")  # RFC 3461 success notice, not yet sent
        print(f"  {_field(str(r.address))} {shown(' '.join(parts))}", file=out)
        if r.last_reply is not None:
            # the server's words, or this hub's own account of the attempt
            who = "hub" if isinstance(r.last_reply, LocalReply) else "reply"
            p(f"    {who}: {r.last_reply.text()}")
    last = entry.last_reply
    if last is None:
        p("last reply: -")
    else:
        p(f"last reply: {'hub: ' if isinstance(last, LocalReply) else ''}{last.text()}")


def _queue_owner(queue_dir: str) -> tuple[int, int]:
    st = os.stat(queue_dir)
    return st.st_uid, st.st_gid


def _act_as_queue_owner(queue_dir: str) -> None:
    """Run as root, act as the user the hub runs as (the queue's owner): a
    record rewritten by root would be root's, 0600, and the running hub
    could no longer read or update it."""
    if os.geteuid() != 0:
        return
    uid, gid = _queue_owner(queue_dir)
    if uid == 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


#: the actions that write to the queue (the others only read it)
_CHANGING = frozenset({"flush", "delete", "hold", "release"})


def _queue_user(settings: Any) -> str | None:
    """The name of the queue's owner, the user the hub runs as: the queue
    folder's, else (a folder on the way closed to this user) ``state_dir``'s;
    ``None`` when neither can be told."""
    from txmailhub.hub_access import name_of, state_dir_owner

    try:
        uid = os.stat(settings.queue_dir).st_uid
    except OSError:
        state_dir = getattr(settings, "state_dir", None)
        if state_dir is None:  # the hub's settings: [hub] state_dir
            state_dir = getattr(getattr(settings, "hub", None), "state_dir", None)
        owner = state_dir_owner(state_dir) if state_dir else None
        if owner is None:
            return None
        uid = owner[0]
    return name_of(uid)


def denied_line(prog: str, command: str, settings: Any, error: OSError,
                changing: bool = False) -> str:
    """The line for a queue this user may not read (or, ``changing``,
    write): ``Permission denied`` on its folder or a record, from a command
    run as another user than the hub's.  It names the queue's owner and
    has ``command`` (``mailhub queue list``, ``mailq``) run as that user or
    root, who acts as the owner (``_act_as_queue_owner``)."""
    where = error.filename or settings.queue_dir
    user = _queue_user(settings)
    if user is None:
        whose, run_as = "the user the hub runs as", "that user or root"
    elif user == "root":
        whose, run_as = "root, the user the hub runs as", "root"
    else:
        whose, run_as = f"{user}, the user the hub runs as", f"{user} or root"
    verb = "change" if changing else "read"
    return shown(f"{prog}: cannot {verb} the queue: {where}: {error.strerror or error} "
                 f"(it belongs to {whose}; run {command} as {run_as})")


def _flush_note(hub_running: bool | None) -> str:
    """What ``queue flush`` says it did, by whether a hub runs on the
    state directory (``spool_in_use``: by looking only; taking its lock
    to know could make a hub starting at that moment refuse to start).
    The flag stays until a hub takes it, at its start if none runs now:
    exit 0 either way."""
    retried = "every message that is not held"
    if hub_running is None:  # cannot tell
        return f"flush requested: a running hub retries {retried} within 5 seconds"
    if hub_running:
        return f"flush requested: the running hub retries {retried} within 5 seconds"
    return ("flush requested: no hub seems to be running on this state directory (nothing "
            f"holds its spool.lock); the next one to start retries {retried}")


def run_queue(settings: Any, args: argparse.Namespace, out: TextIO,
              err: TextIO | None = None) -> int:
    """Run one ``queue`` action; returns the exit code (0 ok, 1 failed).
    Run as a user who may not read (or write) the queue, one line says
    whose it is and whom to run it as (``denied_line``), and 1."""
    err = err or error_stream()
    action = args.queue_command
    try:
        return _run_queue(settings, args, action, out, err)
    except PermissionError as e:
        print(denied_line("mailhub", f"mailhub queue {action}", settings, e,
                          changing=action in _CHANGING), file=err)
        return 1


def _run_queue(settings: Any, args: argparse.Namespace, action: str, out: TextIO,
               err: TextIO) -> int:
    queue = OutboundQueue(settings.queue_dir, _WallClock(), create=False)
    if not queue.exists:  # nothing was ever queued: do not create state here
        if action == "flush" or (action == "list" and _terminal(out)):
            print(EMPTY_NOTE, file=out)
        if action in ("list", "flush"):
            return 0
        return _unknown(args.queue_id, err)
    _act_as_queue_owner(settings.queue_dir)
    if action == "list":
        if _list(queue, settings, out) == 0 and _terminal(out):
            print(EMPTY_NOTE, file=out)
        return 0
    if action == "flush":
        queue.request_flush()
        print(_flush_note(spool_in_use(settings.spool_dir)), file=out)
        return 0
    qid = args.queue_id
    if not valid_queue_id(qid) or not os.path.exists(queue.record_path(qid)):
        # The id from the SMTP reply (or Received field) names the message;
        # its copies for the queue may be in more than one entry.
        found = queue.find_message(qid)
        if len(found) > 1 and action != "show":
            print(f"mailhub: message {qid} is in {len(found)} queue entries "
                  f"({', '.join(found)}): name one of them", file=err)
            return 1
        if found:
            if action == "show":
                for i, one in enumerate(found):
                    if i:
                        print(file=out)
                    entry = queue.read(one)
                    if entry is not None:
                        _show(entry, out, _retry_schedule(settings), queue.attempt_since(one))
                return 0
            qid = found[0]
    if action == "show":
        try:
            entry = queue.read(qid)
        except RecordError as e:
            print(f"mailhub: queue entry {qid} is unreadable: {e}", file=err)
            return 1
        if entry is None:
            return _unknown(qid, err)
        _show(entry, out, _retry_schedule(settings), queue.attempt_since(qid))
        return 0
    if action == "delete":
        if not queue.delete(qid):
            return _unknown(qid, err)
        print(f"deleted {qid}", file=out)
        return 0
    if action in ("hold", "release"):
        try:
            entry = queue.set_held(qid, action == "hold")
        except RecordError as e:
            print(f"mailhub: queue entry {qid} is unreadable: {e} (`queue delete {qid}` "
                  "removes it)", file=err)
            return 1
        if entry is None:
            return _unknown(qid, err)
        print(f"{'held' if action == 'hold' else 'released'} {qid}", file=out)
        return 0
    print(f"mailhub: unknown queue action {quoted(action)}", file=err)
    return 2


def list_queue(settings: Any, out: TextIO) -> int:
    """Write ``queue list``'s lines to ``out`` and return how many there
    were (0: the queue is empty), for ``mailq``, which says so in words of
    its own.  Nothing is created when nothing was ever queued."""
    queue = OutboundQueue(settings.queue_dir, _WallClock(), create=False)
    if not queue.exists:
        return 0
    _act_as_queue_owner(settings.queue_dir)
    return _list(queue, settings, out)


def _list(queue: OutboundQueue, settings: Any, out: TextIO) -> int:
    written = 0
    for qid in queue.ids():
        try:
            entry = queue.read(qid)
        except RecordError as e:
            print(f"{qid} (unreadable: {e})", file=out)
            written += 1
            continue
        if entry is not None:  # None: delivered or deleted since ids()
            print(_line(entry, _retry_schedule(settings), queue.attempt_since(qid)), file=out)
            written += 1
    return written


def _terminal(stream: TextIO) -> bool:
    """Whether a person reads ``stream`` (see the module docstring)."""
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):  # closed, or no file behind it
        return False


def _unknown(qid: str, err: TextIO) -> int:
    print(f"mailhub: no queued message {qid}", file=err)
    return 1
