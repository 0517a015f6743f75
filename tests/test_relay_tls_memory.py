"""The memory of hosts that offered STARTTLS, on disk under state_dir."""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from txmailhub.relay.tls_memory import MAX_AGE, REFRESH, TLSMemory, memory_path

DAY = 86400.0


def fresh(tmp_path, clock, **kw):
    m = TLSMemory(memory_path(str(tmp_path)), clock, **kw)
    m.load()
    return m


def test_path_under_state_dir(tmp_path):
    assert memory_path(str(tmp_path)) == str(tmp_path / "relay" / "tls-seen.json")


def test_first_sighting_written_then_only_daily_refresh(tmp_path):
    clock = Clock()
    clock.advance(1_800_000_000)
    m = fresh(tmp_path, clock)
    assert not m.seen("mx.remote.test")
    assert m.offered("MX.Remote.Test").called
    assert m.writes == 1 and m.seen("mx.remote.test")
    path = memory_path(str(tmp_path))
    doc = json.loads(open(path, "rb").read())
    assert doc == {"version": 1, "hosts": {"mx.remote.test": 1_800_000_000.0}}
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    for _ in range(5):
        clock.advance(60)
        m.offered("mx.remote.test")
    assert m.writes == 1  # not on every delivery
    clock.advance(REFRESH)
    m.offered("mx.remote.test")
    assert m.writes == 2  # the date moves forward once a day
    assert fresh(tmp_path, clock).seen("mx.remote.test")


def test_survives_a_restart_and_expires(tmp_path):
    clock = Clock()
    m = fresh(tmp_path, clock)
    m.offered("a.test")
    clock.advance(10 * DAY)
    m.offered("b.test")
    again = fresh(tmp_path, clock)
    assert again.hosts() == ["a.test", "b.test"]
    clock.advance(MAX_AGE - 5 * DAY)  # a.test last seen 35 days ago, b.test 25
    again = fresh(tmp_path, clock)
    assert again.hosts() == ["b.test"]
    again.offered("c.test")  # the next write drops the expired host from the file
    doc = json.loads(open(memory_path(str(tmp_path)), "rb").read())
    assert sorted(doc["hosts"]) == ["b.test", "c.test"]


def test_bounded_number_of_hosts(tmp_path):
    clock = Clock()
    m = fresh(tmp_path, clock, max_hosts=3)
    for i in range(5):
        clock.advance(1)
        m.offered(f"h{i}.test")
    assert fresh(tmp_path, clock).hosts() == ["h2.test", "h3.test", "h4.test"]


def test_corrupt_file_logged_and_ignored(tmp_path):
    path = memory_path(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for junk in (b"{not json", b'{"version": 1, "hosts": []}', b"[1, 2]",
                     b'{"version": 1, "hosts": {"x.test": "soon"}}', b"\xff\xfe"):
            with open(path, "wb") as f:
                f.write(junk)
            m = fresh(tmp_path, Clock())
            assert m.hosts() == []
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sum("unreadable" in e.get("log_format", "") for e in events) == 5
    m.offered("x.test")  # the next sighting replaces the bad file
    assert fresh(tmp_path, Clock()).hosts() == ["x.test"]


def test_write_failure_is_logged_not_fatal(tmp_path):
    blocker = tmp_path / "relay"
    blocker.write_bytes(b"a file where the directory should be")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        m = fresh(tmp_path, Clock())
        d = m.offered("x.test")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert d.called and d.result is None
    assert m.seen("x.test")  # still remembered in RAM
    assert any("cannot write" in e.get("log_format", "") for e in events)


def test_writes_go_through_the_runner_one_at_a_time(tmp_path):
    held = []

    def runner(f, *args):
        d = defer.Deferred()
        held.append((f, args, d))
        return d

    clock = Clock()
    m = fresh(tmp_path, clock, run_blocking=runner)
    d1 = m.offered("a.test")
    d2 = m.offered("b.test")
    d3 = m.offered("c.test")
    assert len(held) == 1 and not os.path.exists(memory_path(str(tmp_path)))
    f, args, d = held.pop()
    f(*args)
    d.callback(None)
    assert d1.called and not d2.called
    [(f, args, d)] = held  # the second write carries both later hosts
    f(*args)
    d.callback(None)
    assert d2.called and d3.called
    assert fresh(tmp_path, clock).hosts() == ["a.test", "b.test", "c.test"]


def test_a_named_pipe_in_place_of_the_file_is_not_waited_on(tmp_path):
    # read at the relay's start: a plain open() waited for a writer for
    # ever, the hub's start with it
    from fifo_writer import fed_fifo

    path = memory_path(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        with fed_fifo(path, b'{"version": 1, "hosts": {"x.test": 1.0}}'):
            m = fresh(tmp_path, Clock())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert m.hosts() == []
    assert any("cannot read" in e.get("log_format", "") for e in events)


def test_the_folder_made_for_the_file_is_named_durably(tmp_path, monkeypatch):
    # durable_write syncs relay/, the file's folder; relay/ itself, made
    # at the first write, must be durable in state_dir too
    from txmailhub.store import sync

    synced: list[str] = []
    real = sync.fsync_dir
    monkeypatch.setattr(sync, "fsync_dir", lambda p: (synced.append(p), real(p)))
    clock = Clock()
    clock.advance(1_800_000_000)
    assert fresh(tmp_path, clock).offered("mx.remote.test").called
    assert synced == [str(tmp_path), str(tmp_path / "relay")]
