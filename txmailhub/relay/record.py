"""Queue records: what the outbound queue knows about one message.

Owns the frozen value types (``QueueEntry``, ``RecipientRecord``) and
their JSON form on disk (``to_json`` / ``from_json``).  Records are JSON,
never pickles, and carry a format number so a later version can read
them.  Nothing here touches the disk or a clock.

Per-recipient states:

* ``pending``   -- still to be delivered (retried per the schedule);
* ``delivered`` -- accepted by the next hop or the local store;
* ``failed``    -- permanently failed, the bounce (DSN) not yet sent;
* ``bounced``   -- failed and the sender told (or nobody to tell).

An entry is finished -- and removed -- once every recipient is
``delivered`` or ``bounced`` and no success notice is still owed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from txmailhub.address import Address
from txmailhub.envelope import DSNRequest, Envelope, RecipientDSN
from txmailhub.smtp.reply import LocalReply, Reply

__all__ = [
    "BOUNCED",
    "DELIVERED",
    "FAILED",
    "PENDING",
    "FORMAT",
    "QueueEntry",
    "RecipientRecord",
    "RecordError",
    "address_from_text",
    "reply_from_json",
    "reply_to_json",
]

FORMAT = 1
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
BOUNCED = "bounced"
STATES = (PENDING, DELIVERED, FAILED, BOUNCED)


class RecordError(ValueError):
    """A queue record on disk cannot be read."""


def address_from_text(text: str) -> Address:
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise RecordError(f"bad address {text!r} in queue record")
    return Address(local, domain)


# Characters of a reply's text a record keeps (notices quote at most 900):
# a server may answer with 200 lines of 4 KiB, and the record holds the
# reply once per recipient and is rewritten at every update.
MAX_STORED_REPLY = 2000


def _stored_lines(lines: tuple[str, ...]) -> list[str]:
    """``lines`` cut so that ``Reply.text()`` (lines joined by " / ") stays
    within ``MAX_STORED_REPLY``; a cut shows as "..." at the end.

    Once a cut is due, the lines kept leave room for the "..." after
    them: where even the " / " before a next line does not fit, the
    "..." ends the last line kept instead of starting one."""
    if sum(map(len, lines)) + 3 * (len(lines) - 1) <= MAX_STORED_REPLY:
        return list(lines)
    budget = MAX_STORED_REPLY - 3  # the "..." at the end
    out: list[str] = []
    used = 0
    for line in lines:
        room = budget - used
        if room < 0:  # the " / " itself is past the budget
            out[-1] += "..."
            break
        if len(line) > room:
            out.append(line[:room] + "...")
            break
        out.append(line)
        used += len(line) + 3
    return out


def _optional_text(value: Any) -> str | None:
    """A field that may be missing (``None``) but is text when present."""
    if value is not None and not isinstance(value, str):
        raise RecordError(f"expected text in queue record, got {value!r}")
    return value


def _optional_time(value: Any) -> float | None:
    """A time that may be missing (``None``) but is a number when present."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"expected a time in queue record, got {value!r}")
    return float(value)


def reply_to_json(reply: Reply | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    out = {"code": reply.code, "status": reply.status, "lines": _stored_lines(reply.lines)}
    if isinstance(reply, LocalReply):
        out["local"] = True
    return out


def reply_from_json(data: Any) -> Reply | None:
    if data is None:
        return None
    kind = LocalReply if data.get("local") else Reply
    return kind(int(data["code"]), data.get("status"), tuple(str(x) for x in data["lines"]))


def mta_name(remote_mta: str | None) -> str | None:
    """The next hop as the hub names it (``remote_mta``: queue show's
    ``remote=``, a notice's ``Remote-MTA: dns; ...``): without a final
    dot.  A smarthost written ``smtp.example.net.`` is looked up as
    written, but the host's name is ``smtp.example.net``, as the TLS
    check takes it too.  Applied where results are made, and again where
    they are shown, for records written before that."""
    if remote_mta and remote_mta.endswith("."):
        return remote_mta[:-1]
    return remote_mta


@dataclass(frozen=True, slots=True)
class RecipientRecord:
    """One recipient of a queued message and how its delivery goes."""

    address: Address
    state: str = PENDING
    attempts: int = 0
    last_attempt: float | None = None
    last_reply: Reply | None = None
    remote_mta: str | None = None
    notify: tuple[str, ...] = ()
    orcpt: str | None = None  # decoded: what the notices show
    # ORCPT as the client sent it, relayed so (RFC 3461 5.2.1 (d)); absent
    # from records written before it was kept: ``orcpt`` is encoded then
    orcpt_raw: str | None = None
    # an RFC 3461 success notice still owed: "delivered" or "relayed"
    notice: str | None = None
    # when it failed for good (a permanent reply, or the queue lifetime
    # over): a failure notice that cannot be made yet is tried again for
    # a queue lifetime from then (notices.py; recording.py reckons when
    # that is).  Absent from records written
    # before it was kept: ``last_attempt`` stands in
    failed_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state in (DELIVERED, BOUNCED) and self.notice is None

    def to_json(self) -> dict[str, Any]:
        return {
            "address": str(self.address),
            "state": self.state,
            "attempts": self.attempts,
            "last_attempt": self.last_attempt,
            "last_reply": reply_to_json(self.last_reply),
            "remote_mta": self.remote_mta,
            "notify": list(self.notify),
            "orcpt": self.orcpt,
            "orcpt_raw": self.orcpt_raw,
            "notice": self.notice,
            # only once failed: a record written without it reads the same
            # in the versions before
            **({"failed_at": self.failed_at} if self.failed_at is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecipientRecord:
        state = data.get("state", PENDING)
        if state not in STATES:
            raise RecordError(f"unknown recipient state {state!r}")
        return cls(
            address=address_from_text(data["address"]),
            state=state,
            attempts=int(data.get("attempts", 0)),
            last_attempt=data.get("last_attempt"),
            last_reply=reply_from_json(data.get("last_reply")),
            remote_mta=data.get("remote_mta"),
            notify=tuple(data.get("notify") or ()),
            orcpt=data.get("orcpt"),
            orcpt_raw=_optional_text(data.get("orcpt_raw")),
            notice=data.get("notice"),
            failed_at=_optional_time(data.get("failed_at")),
        )


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued message: its envelope, its recipients' states, its timing.

    ``message_path`` is the queue's own copy of the message (LF line
    endings, no dot-stuffing), set by the queue when it loads the entry.
    """

    id: str
    created: float
    envelope: Envelope
    recipients: tuple[RecipientRecord, ...]
    next_attempt: float
    attempts: int = 0
    held: bool = False
    delay_warned: bool = False
    message_path: str = ""
    size: int = 0  # octets as stored (LF line ends)
    crlf_size: int = 0  # octets on the wire (CRLF line ends, before dot-stuffing)
    eight_bit: bool = False  # the message holds octets above 127
    # How many times ``mailhub queue release`` was run on it.  The runner
    # notes the count when an attempt starts: a different count when it
    # records the outcome means an admin released the entry meanwhile, and
    # that request must outlive the retry time the attempt would set.
    releases: int = 0
    # Passes that only owed a notice (none could be made: a full disk).
    # They are no delivery attempts (``attempts``), but move the schedule
    # on as attempts do: ``steps``.  Absent from records written before
    # it was kept (0)
    notice_tries: int = 0

    @property
    def steps(self) -> int:
        """The retry schedule's position: the delivery attempts and the
        passes that only tried a notice (``schedule.delay_after``)."""
        return self.attempts + self.notice_tries

    @property
    def pending(self) -> tuple[RecipientRecord, ...]:
        return tuple(r for r in self.recipients if r.state == PENDING)

    @property
    def failed(self) -> tuple[RecipientRecord, ...]:
        return tuple(r for r in self.recipients if r.state == FAILED)

    @property
    def finished(self) -> bool:
        return all(r.done for r in self.recipients)

    @property
    def last_reply(self) -> Reply | None:
        """The most recent remote reply for any recipient not yet delivered."""
        best: tuple[float, Reply] | None = None
        for r in self.recipients:
            if r.last_reply is not None and r.state != DELIVERED:
                t = r.last_attempt or 0.0
                if best is None or t >= best[0]:
                    best = (t, r.last_reply)
        return None if best is None else best[1]

    def recipient(self, address: Address) -> RecipientRecord:
        for r in self.recipients:
            if r.address == address:
                return r
        raise KeyError(str(address))

    def with_recipients(self, updates: dict[Address, RecipientRecord]) -> QueueEntry:
        """A copy with some recipient records replaced (matched by address)."""
        recips = tuple(updates.get(r.address, r) for r in self.recipients)
        return dataclasses.replace(self, recipients=recips)

    @classmethod
    def new(cls, queue_id: str, envelope: Envelope, now: float) -> QueueEntry:
        params = dict(envelope.recipient_dsn)
        recips = []
        seen = set()
        for rcpt in envelope.recipients:
            if rcpt in seen:
                continue
            seen.add(rcpt)
            p = params.get(rcpt, RecipientDSN())
            recips.append(RecipientRecord(address=rcpt, notify=tuple(p.notify), orcpt=p.orcpt,
                                          orcpt_raw=p.orcpt_raw))
        return cls(
            id=queue_id, created=now, envelope=envelope, recipients=tuple(recips),
            next_attempt=now,
        )

    def to_json(self) -> bytes:
        env = self.envelope
        data = {
            "format": FORMAT,
            "id": self.id,
            "created": self.created,
            "next_attempt": self.next_attempt,
            "attempts": self.attempts,
            "held": self.held,
            "delay_warned": self.delay_warned,
            "size": self.size,
            "crlf_size": self.crlf_size,
            "eight_bit": self.eight_bit,
            "releases": self.releases,
            # only once a notice was tried alone: a record without it reads
            # the same in the versions before
            **({"notice_tries": self.notice_tries} if self.notice_tries else {}),
            "envelope": {
                "sender": None if env.sender is None else str(env.sender),
                "helo": env.helo,
                "client_address": env.client_address,
                "authenticated_as": env.authenticated_as,
                "body_8bit": env.body_8bit,
                "smtputf8": env.smtputf8,
                "ret": env.dsn.ret,
                "envid": env.dsn.envid,
                # optional: a record from before it has none, and its ENVID
                # is encoded afresh when relayed
                "envid_raw": env.dsn.envid_raw,
                "message_id": env.message_id,
                # optional: a record from before it has none, and goes on
                # as AUTH=<> (whether its client said AUTH=<> is not known)
                "submitter": None if env.submitter is None else str(env.submitter),
            },
            "recipients": [r.to_json() for r in self.recipients],
        }
        return json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, message_path: str = "") -> QueueEntry:
        try:
            data = json.loads(raw.decode("utf-8"))
            if data.get("format") != FORMAT:
                raise RecordError(f"unknown queue record format {data.get('format')!r}")
            e = data["envelope"]
            recips = tuple(RecipientRecord.from_json(r) for r in data["recipients"])
            envelope = Envelope(
                sender=None if e.get("sender") is None else address_from_text(e["sender"]),
                recipients=tuple(r.address for r in recips),
                helo=e.get("helo", ""),
                client_address=e.get("client_address", ""),
                authenticated_as=e.get("authenticated_as"),
                body_8bit=bool(e.get("body_8bit", False)),
                smtputf8=bool(e.get("smtputf8", False)),
                dsn=DSNRequest(ret=e.get("ret"), envid=e.get("envid"),
                               envid_raw=_optional_text(e.get("envid_raw"))),
                message_id=str(e.get("message_id") or ""),
                submitter=(None if e.get("submitter") is None
                           else address_from_text(e["submitter"])),
                recipient_dsn=tuple(
                    (r.address, RecipientDSN(notify=r.notify, orcpt=r.orcpt,
                                             orcpt_raw=r.orcpt_raw))
                    for r in recips
                    if r.notify or r.orcpt
                ),
            )
            return cls(
                id=str(data["id"]),
                created=float(data["created"]),
                envelope=envelope,
                recipients=recips,
                next_attempt=float(data["next_attempt"]),
                attempts=int(data.get("attempts", 0)),
                held=bool(data.get("held", False)),
                delay_warned=bool(data.get("delay_warned", False)),
                message_path=message_path,
                size=int(data.get("size", 0)),
                crlf_size=int(data.get("crlf_size", 0)),
                eight_bit=bool(data.get("eight_bit", False)),
                releases=int(data.get("releases", 0)),
                notice_tries=int(data.get("notice_tries", 0)),
            )
        except RecordError:
            raise
        except json.JSONDecodeError as e:
            # a truncated or hand-edited file: where, not the parser's prose
            raise RecordError(f"the queue record is not JSON (line {e.lineno}, "
                              f"column {e.colno})") from None
        except UnicodeDecodeError as e:
            raise RecordError(f"the queue record is not UTF-8 (octet {e.start})") from None
        except KeyError as e:
            raise RecordError(f"the queue record lacks {e}") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise RecordError(f"bad queue record: {e}") from None
