"""Verified test doubles for applications that embed the hub (and our tests).

Owns in-memory implementations of the component interfaces:

* ``MemorySpooler`` (``ISpooler``): spool "files" kept as bytes.
* ``MemoryMailboxStore`` (``IMailboxStore``) and its ``MemoryMailbox``
  (``IMailbox``), with the same exclusive-lock semantics as the Maildir
  store: a second ``open_mailbox`` errbacks ``MailboxInUse`` until
  ``close()``.
* ``StaticRouter`` (``IRecipientRouter``) from a dict.
* ``QueueSpy`` (``IOutboundQueue``) recording what was enqueued.
* ``StaticResolver`` (twisted.names ``IResolver``): MX, A and AAAA
  answers from a dict, for ``MailHub(settings, resolver=...)`` and the
  relay's ``MXResolver``.
* ``SyncerSpy``: stands in for ``txmailhub.store.sync.Syncer`` and records
  what was to be made durable, in order (the real spool and Maildir store
  run on it without threads or fsyncs).

Each passes ``zope.interface.verify.verifyObject`` (tests/test_testing.py
checks it).  Every double whose answers are Deferreds (all but
``StaticRouter``: an ``IRecipientRouter`` answers at once; the resolver's
too) can be told to
*hold* them, so a test can check that nothing is answered before the
storage said "durable", and to fail, so a test can check what happens
then.  Nothing here touches
the disk, except ``MemoryMailboxStore.deliver`` reading a real spool file
when it is not given a ``MemorySpooler``.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.names.common import ResolverBase
from zope.interface import implementer

from txmailhub.address import Address, canonical_domain, parse_address
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.errors import LocalError, MailboxInUse, Rejected
from txmailhub.interfaces import (
    IMailbox,
    IMailboxStore,
    IOutboundQueue,
    IRecipientRouter,
    ISpooler,
    ISpoolWriter,
)
from txmailhub.smtp import replies
from txmailhub.store.format import MessageInfo, crlf_size_of
from txmailhub.store.sync import all_done

__all__ = [
    "MemoryMailbox",
    "MemoryMailboxStore",
    "MemorySpooler",
    "MemorySpoolWriter",
    "QueueSpy",
    "StaticResolver",
    "StaticRouter",
    "SyncerSpy",
]


class _Holder:
    """Deferreds either fired at once or held until ``release()``."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self._held: list[tuple[defer.Deferred, Any]] = []

    def result(self, value: Any) -> defer.Deferred:
        if not self.hold:
            return defer.fail(value) if isinstance(value, Exception) else defer.succeed(value)
        d: defer.Deferred = defer.Deferred()
        self._held.append((d, value))
        return d

    @property
    def held(self) -> int:
        return len(self._held)

    def release(self) -> None:
        """Fire every held Deferred (in the order they were made)."""
        held, self._held = self._held, []
        for d, value in held:
            if isinstance(value, Exception):
                d.errback(value)
            else:
                d.callback(value)


# --- spooler ----------------------------------------------------------------


@implementer(ISpoolWriter)
class MemorySpoolWriter:
    def __init__(self, spooler: MemorySpooler, path: str) -> None:
        self._spooler = spooler
        self.path = path
        self._chunks: list[bytes] = []
        self.state = "open"  # "open", "finished", "aborted"

    def write(self, data: bytes) -> None:
        if self.state != "open":
            raise LocalError(f"write on a {self.state} spool writer")
        self._chunks.append(bytes(data))

    def finish(self) -> defer.Deferred:
        if self.state != "open":
            raise LocalError(f"finish on a {self.state} spool writer")
        self.state = "finished"
        data = b"".join(self._chunks)
        self._spooler.files[self.path] = data
        if self._spooler.fail_finish is not None:
            return self._spooler._holder.result(self._spooler.fail_finish)
        msg = SpooledMessage(self.path, len(data), crlf_size_of(data))
        return self._spooler._holder.result(msg)

    def finish_then(self, make_publication: Any) -> defer.Deferred:
        """``finish()``, then the publication's ``run`` and ``settle`` in
        line (no directory is synced, so ``settle`` gets ``{}``)."""
        d = self.finish()

        def publish(message: SpooledMessage) -> tuple[SpooledMessage, Any]:
            publication = make_publication(message)
            publication.run()
            return message, publication.settle({})

        return d.addCallback(publish)

    def abort(self) -> None:
        if self.state == "open":
            self.state = "aborted"
            self._spooler.aborted.append(self.path)


@implementer(ISpooler)
class MemorySpooler:
    """An ``ISpooler`` keeping each spool file as bytes in ``files``.

    * ``hold=True``: ``finish()`` Deferreds wait for ``release()``.
    * ``fail_finish``: an exception every ``finish()`` errbacks with;
      ``fail_open``: one every ``open()`` raises.
    * ``files``: path -> bytes of finished, not yet discarded messages;
      ``aborted`` and ``discarded`` list paths in order.
    * ``free``: what ``room()`` answers (``None``: unknown, the default).
    """

    def __init__(self, hold: bool = False, fail_finish: Exception | None = None) -> None:
        self._holder = _Holder(hold)
        self.fail_finish = fail_finish
        self.fail_open: Exception | None = None
        self.files: dict[str, bytes] = {}
        self.writers: list[MemorySpoolWriter] = []
        self.aborted: list[str] = []
        self.discarded: list[str] = []
        self._ids = itertools.count(1)
        self.free: int | None = None

    def open(self) -> MemorySpoolWriter:
        if self.fail_open is not None:
            raise self.fail_open
        writer = MemorySpoolWriter(self, f"memory-spool/{next(self._ids)}")
        self.writers.append(writer)
        return writer

    def discard(self, message: SpooledMessage) -> None:
        self.files.pop(message.path, None)
        self.discarded.append(message.path)

    def room(self) -> int | None:
        return self.free

    def contents(self, message: SpooledMessage) -> bytes:
        return self.files[message.path]

    def release(self) -> None:
        self._holder.release()


# --- mailbox store --------------------------------------------------------


class _StoredMessage:
    def __init__(self, uid: str, data: bytes) -> None:
        self.uid = uid
        self.data = data
        self.seen = False


@implementer(IMailbox)
class MemoryMailbox:
    """A locked snapshot of one in-memory mailbox (see ``IMailbox``)."""

    def __init__(self, store: MemoryMailboxStore, key: str) -> None:
        self._store = store
        self._key = key
        self._messages = list(store._boxes.get(key, []))
        self.closed = False

    def list_messages(self) -> list[MessageInfo]:
        return [
            MessageInfo(
                uid=m.uid,
                size=crlf_size_of(m.data),
                path=f"memory:{self._key}/{m.uid}",
                stored_size=len(m.data),
                seen=m.seen,
            )
            for m in self._messages
        ]

    def open_message(self, index: int) -> io.BytesIO:
        return io.BytesIO(self._messages[index].data)

    def read_message(self, index: int, limit: int) -> bytes | None:
        data = self._messages[index].data
        return data if len(data) < limit else None

    def mark_seen(self, index: int) -> None:
        if 0 <= index < len(self._messages):
            self._messages[index].seen = True

    def delete(self, indices: list[int]) -> defer.Deferred:
        doomed = {id(self._messages[i]) for i in indices}
        box = self._store._boxes.get(self._key, [])
        box[:] = [m for m in box if id(m) not in doomed]
        return self._store._holder.result(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._store._locked.discard(self._key)


@implementer(IMailboxStore)
class MemoryMailboxStore:
    """An ``IMailboxStore`` whose mailboxes are lists of bytes.

    * ``spooler``: a ``MemorySpooler`` to read message bytes from; a path
      it does not hold (or no spooler) is read from disk.
    * ``hold=True``: ``deliver`` and ``delete`` Deferreds wait for
      ``release()`` (a test can check nothing is acknowledged early).
    * ``fail``: ``{address: exception}`` -- that mailbox's copy fails, the
      others are delivered (each mailbox's fate is its own).
    * ``add(address, data)`` puts a message in place (as if delivered);
      ``messages(address)`` returns the stored bytes in order.
    """

    def __init__(
        self,
        spooler: MemorySpooler | None = None,
        hold: bool = False,
        fail: Mapping[Address, Exception] | None = None,
    ) -> None:
        self.spooler = spooler
        self._holder = _Holder(hold)
        self.fail: dict[Address, Exception] = dict(fail or {})
        self._boxes: dict[str, list[_StoredMessage]] = {}
        self._locked: set[str] = set()
        self._uids = itertools.count(1)
        self.deliveries: list[tuple[SpooledMessage, list[Address]]] = []

    def add(self, address: Address | str, data: bytes, uid: str | None = None) -> str:
        key = _key(address)
        uid = uid or f"memory-{next(self._uids)}"
        self._boxes.setdefault(key, []).append(_StoredMessage(uid, bytes(data)))
        return uid

    def messages(self, address: Address | str) -> list[bytes]:
        return [m.data for m in self._boxes.get(_key(address), [])]

    def is_locked(self, address: Address | str) -> bool:
        return _key(address) in self._locked

    def deliver(self, message: SpooledMessage, mailboxes: list[Address]) -> defer.Deferred:
        self.deliveries.append((message, list(mailboxes)))
        if self.spooler is not None and message.path in self.spooler.files:
            data = self.spooler.contents(message)
        else:
            with open(message.path, "rb") as f:
                data = f.read()
        outcome: dict[Address, Exception | None] = {}
        for address in mailboxes:
            if address in outcome:
                continue
            err = self.fail.get(address)
            if err is None:
                self.add(address, data)
            outcome[address] = err
        return self._holder.result(outcome)

    def open_mailbox(self, address: Address,
                     wanted: Callable[[], bool] | None = None) -> defer.Deferred:
        key = _key(address)
        if key in self._locked:
            return defer.fail(MailboxInUse(f"{key} is in use by another session"))
        self._locked.add(key)
        return defer.succeed(MemoryMailbox(self, key))

    def release(self) -> None:
        self._holder.release()


def _key(address: Address | str) -> str:
    if isinstance(address, str):
        address = parse_address(address)
    return address.key


# --- router ---------------------------------------------------------------


@implementer(IRecipientRouter)
class StaticRouter:
    """An ``IRecipientRouter`` from a dict.

    ``table`` maps an address (``"joe@example.org"``, or a bare ``"joe"``
    meaning the primary domain) to its final targets: an iterable of
    addresses; ``[]`` or ``None`` means "a mailbox of its own".  Keys are
    looked up case-insensitively (``Address.key``).  Targets in
    ``domains`` are local, others remote.  An address of a non-local
    domain resolves to itself (remote); an unknown local address raises
    ``Rejected(UNKNOWN_USER)``; ``postmaster`` of any local domain is
    always accepted (RFC 5321 4.5.1): its table entry, else the primary
    domain's postmaster mailbox.
    """

    def __init__(
        self,
        table: Mapping[str, Iterable[str] | None],
        domains: Iterable[str] = ("example.org",),
    ) -> None:
        self.domains = tuple(canonical_domain(d) for d in domains)
        primary = self.domains[0]
        self.table: dict[str, tuple[Address, ...]] = {}
        for name, targets in table.items():
            addr = parse_address(name, primary)
            resolved = tuple(parse_address(t, primary) for t in targets or ()) or (addr,)
            self.table[addr.key] = resolved
        self.resolved: list[Address] = []

    def is_local_domain(self, domain: str) -> bool:
        return canonical_domain(domain) in self.domains

    def resolve(self, address: Address) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
        self.resolved.append(address)
        return self._lookup(address)

    def verify(self, address: Address) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
        return self._lookup(address)

    def _lookup(self, address: Address) -> tuple[tuple[Address, ...], tuple[Address, ...]]:
        if not self.is_local_domain(address.domain):
            return (), (address,)
        targets = self.table.get(address.key)
        if targets is None and address.is_postmaster:
            primary_pm = Address("postmaster", self.domains[0])
            targets = self.table.get(primary_pm.key, (primary_pm,))
        if targets is None:
            raise Rejected(replies.UNKNOWN_USER)
        local = tuple(dict.fromkeys(t for t in targets if self.is_local_domain(t.domain)))
        remote = tuple(dict.fromkeys(t for t in targets if not self.is_local_domain(t.domain)))
        return local, remote


# --- queue ------------------------------------------------------------------


@implementer(IOutboundQueue)
class QueueSpy:
    """An ``IOutboundQueue`` that records instead of delivering.

    ``enqueued`` lists ``(envelope, message)`` pairs in call order (and
    ``delivered`` the recipients each call said were already delivered,
    owing only a success notice); each call fires with a queue id
    ``"Q1"``, ``"Q2"``...  ``hold=True`` holds
    the Deferreds until ``release()``; ``fail`` makes every enqueue
    errback with that exception.  ``wakes`` counts ``wake()`` calls.
    """

    def __init__(self, hold: bool = False, fail: Exception | None = None) -> None:
        self._holder = _Holder(hold)
        self.fail = fail
        self.enqueued: list[tuple[Envelope, SpooledMessage]] = []
        self.delivered: list[tuple[Address, ...]] = []
        self.wakes = 0
        self._ids = itertools.count(1)

    def enqueue(self, envelope: Envelope, message: SpooledMessage,
                delivered: tuple[Address, ...] = (), notice: str = "delivered") -> defer.Deferred:
        self.enqueued.append((envelope, message))
        self.delivered.append(tuple(delivered))
        if self.fail is not None:
            return self._holder.result(self.fail)
        return self._holder.result(f"Q{next(self._ids)}")

    def wake(self) -> None:
        self.wakes += 1

    def release(self) -> None:
        self._holder.release()


# --- DNS resolver ---------------------------------------------------------------


_RECORD_TYPES = {"MX": dns.MX, "A": dns.A, "AAAA": dns.AAAA}


@implementer(IResolver)
class StaticResolver(ResolverBase):
    """A twisted.names ``IResolver`` answering from a dict, so that a test
    of the relay (``MailHub(settings, resolver=...)``) asks no real DNS.

    ``records`` maps a name to its records by type (none: every name is
    NXDOMAIN)::

        StaticResolver({"example.net": {"MX": [(10, "mx.example.net")]},
                        "mx.example.net": {"A": ["192.0.2.25"], "AAAA": ["2001:db8::25"]}})

    * A name not in ``records`` is NXDOMAIN (``DNSNameError``); a name
      without the type asked has no such records (an empty answer).
      Names are matched without case and without a final dot.
    * An exception instance in place of a name's records, or of one
      type's list, is what those lookups errback with (a
      ``twisted.names.error.DNSServerError`` is a SERVFAIL, a
      ``twisted.internet.defer.TimeoutError`` a server that does not answer).
    * ``hold=True``: answers wait for ``release()`` (a lookup in flight
      while the hub stops, or delivery order); ``queries`` lists
      ``(name, type)`` as asked, ``"MX"``, ``"A"``, ``"AAAA"`` or the type's number.
    * ``ttl``: the TTL of every answer.
    """

    def __init__(self, records: Mapping[str, Any] | None = None, hold: bool = False,
                 ttl: int = 60) -> None:
        super().__init__()
        self.records: Mapping[str, Any] = {} if records is None else records
        self.ttl = ttl
        self.queries: list[tuple[str, str | int]] = []
        self._holder = _Holder(hold)

    def _entry(self, name: str) -> Any:
        wanted = name.rstrip(".").lower()
        for key, value in self.records.items():
            if key.rstrip(".").lower() == wanted:
                return value
        return None

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        kinds = [k for k, v in _RECORD_TYPES.items() if v == type]
        self.queries.append((text, kinds[0] if kinds else type))
        entry = self._entry(text)
        if entry is None:
            return self._holder.result(dns_error.DNSNameError(text))
        if isinstance(entry, Exception):
            return self._holder.result(entry)
        if type == dns.ALL_RECORDS:
            kinds = list(_RECORD_TYPES)
        answers = []
        for kind in kinds:
            values = entry.get(kind, ())
            if isinstance(values, Exception):
                return self._holder.result(values)
            for value in values:
                if kind == "MX":
                    payload: Any = dns.Record_MX(value[0], value[1].encode("ascii"), ttl=self.ttl)
                elif kind == "A":
                    payload = dns.Record_A(value, ttl=self.ttl)
                else:
                    payload = dns.Record_AAAA(value, ttl=self.ttl)
                answers.append(dns.RRHeader(name, _RECORD_TYPES[kind], cls, self.ttl, payload))
        return self._holder.result((answers, [], []))

    def release(self) -> None:
        self._holder.release()


# --- syncer -------------------------------------------------------------------


class SyncerSpy:
    """The ``Syncer`` API without threads or fsyncs.

    ``calls`` records ``("file", target)`` / ``("dir", path)`` in request
    order; ``events`` (a list the test may share with other spies) gets
    the same entries.  ``call(f, *args)`` runs ``f`` at once and counts it
    in ``calls_run``.  ``hold=True`` keeps the Deferreds pending until
    ``release()``; ``fail`` maps a target to the exception its request
    errbacks with, ``fail_kind`` maps ``"file"`` or ``"dir"`` to one that
    every request of that kind errbacks with.  Nothing is made durable:
    it is for tests that check *what* is synced and *when* the caller
    answers.
    """

    def __init__(
        self,
        hold: bool = False,
        fail: Mapping[Any, Exception] | None = None,
        events: list | None = None,
        fail_kind: Mapping[str, Exception] | None = None,
    ) -> None:
        self._holder = _Holder(hold)
        self.fail: dict[Any, Exception] = dict(fail or {})
        self.fail_kind: dict[str, Exception] = dict(fail_kind or {})
        self.calls: list[tuple[str, Any]] = []
        self.calls_run = 0
        self.events = events if events is not None else []

    def _record(self, kind: str, target: Any) -> defer.Deferred:
        self.calls.append((kind, target))
        self.events.append((kind, target))
        err = self.fail.get(target) or self.fail_kind.get(kind)
        return self._holder.result(err if err is not None else None)

    def sync_file(self, target: Any) -> defer.Deferred:
        return self._record("file", target)

    def sync_dir(self, path: str) -> defer.Deferred:
        return self._record("dir", path)

    def sync_then(self, target: Any, publication: Any) -> defer.Deferred:
        """Records ``("file", target)``; once that result is in (at once,
        or on ``release()``), runs the publication and records
        ``("dir", path)`` for each directory it names (``fail`` and
        ``fail_kind`` apply to them too: they reach ``settle``)."""
        d = self._record("file", target)

        def publish(_: Any) -> Any:
            failed: dict[str, OSError] = {}
            for path in publication.run():
                self.calls.append(("dir", path))
                self.events.append(("dir", path))
                err = self.fail.get(path) or self.fail_kind.get("dir")
                if err is not None:
                    failed[path] = err
            return publication.settle(failed)

        return d.addCallback(publish)

    def call(self, f: Any, *args: Any) -> defer.Deferred:
        """Runs ``f(*args)`` at once (no thread); counted in ``calls_run``."""
        self.calls_run += 1
        try:
            return defer.succeed(f(*args))
        except Exception as e:
            return defer.fail(e)

    def sync_each(self, targets: Iterable[Any]) -> list[defer.Deferred]:
        return [
            self._record("dir" if isinstance(t, str) and os.path.isdir(t) else "file", t)
            for t in targets
        ]

    def sync(self, files: Iterable[Any] = (), dirs: Iterable[str] = ()) -> defer.Deferred:
        # as the real one: fires once every request is over
        return all_done([self.sync_file(t) for t in files] + [self.sync_dir(p) for p in dirs])

    @property
    def hold(self) -> bool:
        return self._holder.hold

    @hold.setter
    def hold(self, value: bool) -> None:
        self._holder.hold = value

    @property
    def held(self) -> int:
        return self._holder.held

    def release(self) -> None:
        self._holder.release()

    def start(self) -> None:
        pass

    def stop(self) -> defer.Deferred:
        return defer.succeed(None)
