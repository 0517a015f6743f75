"""What a POP3 session holds per message of its mailbox, and that it goes
with the connection (tracemalloc over a real Maildir of a few thousand
messages: its snapshot, the engine's numbering, the client sizes)."""

from __future__ import annotations

import gc
import os
import tracemalloc
import weakref

import pytest
from test_pop3_protocol import LOOPBACK, Transport, make_settings, talk
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from txmailhub.auth import MailRealm
from txmailhub.components import Components
from txmailhub.pop3.protocol import POP3Factory
from txmailhub.pop3.server import POP3Server
from txmailhub.store.maildir import MaildirStore

N = 3000
HOST = "mail.example.org"
BODY = b"Subject: hello\nFrom: ann@example.org\n\n" + b"x" * 1000 + b"\n"
WIRE = len(BODY) + BODY.count(b"\n")


class InlineSyncer:
    """The syncer's ``call`` run at once: the login measures the client
    sizes in jobs, as with worker threads."""

    def call(self, f, *args):
        return defer.maybeDeferred(f, *args)

    def sync(self, dirs=()):
        return defer.succeed(None)


@pytest.fixture
def factory(tmp_path):
    md = tmp_path / "mail" / "example.org" / "joe"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    for i in range(N):
        # as the hub names them; half read already (cur/, S flag)
        name = f"{1700000000 + i}.M{i}P4242Q{i + 1}R0123abcd.{HOST},S={len(BODY)},W={WIRE}"
        sub = "cur" if i % 2 else "new"
        (md / sub / (name + ":2,S" if i % 2 else name)).write_bytes(BODY)
    syncer = InlineSyncer()
    store = MaildirStore(os.fspath(tmp_path / "mail"), HOST, syncer)
    db = InMemoryUsernamePasswordDatabaseDontUse(**{"joe@example.org": b"joepw"})
    components = Components(settings=make_settings(), reactor=MemoryReactorClock(),
                            router=None, store=store, spooler=None,
                            portal=Portal(MailRealm(store), [db]), syncer=syncer)
    return POP3Factory(components)


def session(factory):
    proto = factory.buildProtocol(LOOPBACK)
    t = Transport(LOOPBACK)
    proto.makeConnection(t)
    assert talk(proto, t, b"USER joe\r\n").startswith(b"+OK")
    assert talk(proto, t, b"PASS joepw\r\n").startswith(b"+OK")
    assert talk(proto, t, b"LIST\r\n").count(b"\r\n") == N + 2
    assert talk(proto, t, b"UIDL\r\n").count(b"\r\n") == N + 2
    t.clear()
    t.writes.clear()
    return proto, t


@pytest.fixture
def traced():
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_per_message_memory_goes_with_the_connection(factory, traced):
    # What the session held per message is freed as the connection is
    # lost, even while something (a transport, a log event, a pending
    # call) still holds the protocol object itself.
    base = tracemalloc.get_traced_memory()[0]
    proto, _t = session(factory)
    during = tracemalloc.get_traced_memory()[0] - base
    assert during > 50 * N  # the measure sees the session
    proto.connectionLost(None)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    assert after < 20 * N, (during / N, after / N)


def test_an_engine_is_no_reference_cycle():
    # freed when its last reference goes, with its snapshot, not at the
    # cyclic collector's next full pass
    gc.disable()
    try:
        e = POP3Server(hostname=HOST, timestamp="<1.2@x>", plaintext_allowed=True)
        ref = weakref.ref(e)
        del e
        assert ref() is None
    finally:
        gc.enable()


def test_the_session_is_gone_after_connection_lost_and_gc(factory):
    proto, t = session(factory)
    refs = [weakref.ref(x) for x in (proto, proto.engine, proto.mailbox)]
    proto.connectionLost(None)
    del proto, t
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_a_session_holds_little_per_message(factory, traced):
    # The snapshot as columns (one UID string a message, sizes in arrays,
    # names made again from them), the engine's numbering and the client
    # sizes sharing it: some 150 octets a message.  One object per message
    # with its path and sizes as objects of their own held about 640.
    base = tracemalloc.get_traced_memory()[0]
    proto, _t = session(factory)
    gc.collect()  # empties the interpreter's free lists (the listing's rows)
    per_message = (tracemalloc.get_traced_memory()[0] - base) / N
    proto.connectionLost(None)
    assert per_message < 250, per_message
