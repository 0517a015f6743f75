"""A client without UTF8 gets a message with UTF-8 header fields with the
header sections of its MIME parts downgraded too (RFC 6857), and LIST,
STAT and RETR's +OK count the copy RETR sends: small messages, ones
streamed in chunks, measured inline or on the worker threads.  Real
Maildirs, POP3 sessions over StringTransport."""

from __future__ import annotations

import base64
import email
import json
import os
from email import policy

import pytest
from test_pop3_downgraded_sizes import drop, env
from test_pop3_reader_and_storage import connect
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from txmailhub.downgrade import PART_HEADER_LIMIT, PartHeaders
from txmailhub.pop3 import protocol as pop3_protocol
from txmailhub.pop3 import replies as R
from txmailhub.pop3.stream import PartsEncoder
from txmailhub.store import mailbox as mailbox_module
from txmailhub.store.mailbox import SIZES_NAME, MaildirMailbox

NAME = "Gr\u00fc\u00dfe \u65e5\u672c.txt"


def message(attachment: int) -> bytes:
    """A multipart message with a UTF-8 Subject, ``attachment`` octets of
    base64 in its first part, then a part with a UTF-8 file name."""
    blob = base64.encodebytes(os.urandom(attachment)).decode()
    return (
        "From: a@example.org\nTo: joe@example.org\nSubject: \u00e9t\u00e9\n"
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"
        "--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        f"Content-Description: gro\u00df\n\n{blob}"
        f"--b\nContent-Type: text/plain; charset=utf-8; name=\"{NAME}\"\n"
        f"Content-Disposition: attachment; filename=\"{NAME}\"\n\n"
        ".a line with a dot\nHallo\n--b--\n"
    ).encode()


def session(clock, components, commands: bytes) -> bytes:
    """A login without UTF8, ``commands``, QUIT: what the server sent after
    the login's +OK."""
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
    t.received.clear()
    proto.dataReceived(commands)
    clock.advance(0)
    answer = bytes(t.received)
    proto.dataReceived(b"QUIT\r\n")
    clock.advance(1)
    proto.connectionLost(Failure(ConnectionDone()))
    return answer


def unstuffed(multiline: bytes) -> tuple[bytes, bytes]:
    """(the status line, the message) of a multi-line answer."""
    status, _, rest = multiline.partition(b"\r\n")
    assert rest.endswith(b"\r\n.\r\n")
    lines = rest[:-3].split(b"\r\n")[:-1]
    return status, b"".join((x[1:] if x.startswith(b".") else x) + b"\r\n" for x in lines)


def kept_entry(md: str) -> list:
    """The one entry of the Maildir's size cache."""
    with open(os.path.join(md, SIZES_NAME)) as f:
        [entry] = json.load(f)["sizes"].values()
    return entry


def keep_entry(md: str, entry: list) -> None:
    """The size cache as if ``entry``, of another version, rules or
    Python, had been written for the one message."""
    cache_path = os.path.join(md, SIZES_NAME)
    with open(cache_path) as f:
        doc = json.load(f)
    doc["sizes"] = {k: entry for k in doc["sizes"]}
    with open(cache_path, "w") as f:
        json.dump(doc, f)


def list_agrees_with_retr(clock, components, first: bytes) -> bytes:
    """LIST 1 then RETR 1 in a session: the size listed is ``first``'s and
    the octets RETR sends; what RETR sent."""
    answer = session(clock, components, b"LIST 1\r\nRETR 1\r\n")
    listed, _, retr = answer.partition(b"\r\n")
    assert listed + b"\r\n" == first
    status, sent = unstuffed(retr)
    assert status == b"+OK %d octets" % len(sent) and listed.endswith(b" %d" % len(sent))
    return sent


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
@pytest.mark.parametrize("attachment", [300, 150_000], ids=["small", "streamed"])
def test_part_headers_are_downgraded_and_counted(tmp_path, monkeypatch, workers, attachment):
    clock, components, md = env(tmp_path, monkeypatch, workers)
    data = message(attachment)
    assert (len(data) > pop3_protocol.CHUNK_SIZE) == (attachment > 100_000)
    drop(md, data, 1, ours=True)
    answer = session(clock, components, b"LIST 1\r\nRETR 1\r\n")
    listed, _, retr = answer.partition(b"\r\n")
    size = int(listed.split()[2])
    status, sent = unstuffed(retr)
    assert status == b"+OK %d octets" % len(sent) and size == len(sent)
    assert sent.isascii()
    parts = list(email.message_from_bytes(sent, policy=policy.default).walk())
    assert str(parts[0]["subject"]) == "\u00e9t\u00e9"
    assert str(parts[1]["content-description"]) == "gro\u00df"
    assert parts[2].get_filename() == NAME
    assert parts[2].get_content().replace("\r\n", "\n") == ".a line with a dot\nHallo"
    # the attachment's octets are as they were stored
    assert parts[1].get_content() == email.message_from_bytes(data).get_payload()[0].get_payload(
        decode=True)


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_retr_first_then_list_agree(tmp_path, monkeypatch, workers):
    """RETR before any size was measured: its +OK's size is the one LIST
    and STAT give afterwards."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    data = message(150_000)
    drop(md, data, 1, ours=True)
    answer = session(clock, components, b"RETR 1\r\nLIST 1\r\nSTAT\r\n")
    status, _, rest = answer.partition(b"\r\n")
    sent_size = int(status.split()[1])
    assert rest.endswith(b"+OK 1 %d\r\n+OK 1 %d\r\n" % (sent_size, sent_size))


def test_top_sends_its_lines_downgraded(tmp_path, monkeypatch):
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    drop(md, message(150_000), 1, ours=True)
    # five body lines: the first part's delimiter and header section
    answer = session(clock, components, b"TOP 1 5\r\n")
    assert answer.isascii() and answer.startswith(b"+OK")
    assert answer.endswith(b"\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Transfer-Encoding: base64\r\n"
                           b"Content-Description: =?utf-8?q?gro=C3=9F?=\r\n\r\n.\r\n")


def test_a_size_measured_by_the_header_section_alone_is_measured_again(tmp_path, monkeypatch):
    """The size cache's entries of five fields hold sizes of a copy with
    only the message's own header section downgraded: not taken."""
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    drop(md, message(300), 1, ours=False)
    first = session(clock, components, b"STAT\r\n")
    entry = kept_entry(md)
    assert len(entry) == 6
    entry[4] -= 30  # as a size by the rules before (rules 1) would be smaller
    keep_entry(md, entry[:5])
    assert session(clock, components, b"STAT\r\n") == first
    assert len(kept_entry(md)) == 6


def test_a_size_measured_before_rfc_2231_boundaries_were_read_is_measured_again(
        tmp_path, monkeypatch):
    """A size by rules 2 (``DOWNGRADE_RULES``) of a message whose boundary
    is an RFC 2231 value is of a copy with its parts' header sections as
    stored: not taken, not sent as RETR's size."""
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    data = message(150_000).replace(b'boundary="b"', b"boundary*=us-ascii''b")
    drop(md, data, 1, ours=False)
    first = session(clock, components, b"LIST 1\r\n")
    entry = kept_entry(md)
    entry[4] -= 60  # what rules 2 measured: the part header sections were not found
    entry[5] = 2
    keep_entry(md, entry)
    assert list_agrees_with_retr(clock, components, first).isascii()


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_a_size_kept_under_another_python_is_measured_again(tmp_path, monkeypatch, workers):
    """The copy's parameter fields are folded by the stdlib's email
    package, which folds differently from one Python release to the next:
    a size kept under another Python is not taken, neither by LIST nor
    (the size known) for RETR's +OK."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    drop(md, message(150_000), 1, ours=False)
    first = session(clock, components, b"LIST 1\r\n")
    entry = kept_entry(md)
    entry[4] -= 7  # as the other release's folding made it
    keep_entry(md, entry)
    # the mark of the entry is the other release's
    monkeypatch.setattr(mailbox_module, "DOWNGRADE_MARK", "3 python 3.99.0", raising=False)
    list_agrees_with_retr(clock, components, first)
    assert kept_entry(md)[5] == "3 python 3.99.0"


@pytest.mark.parametrize("inline_sizes", [True, False], ids=["sizes-inline", "sizes-at-login"])
def test_a_long_message_is_read_through_on_a_worker(tmp_path, monkeypatch, inline_sizes):
    """Where the hub has worker threads, the reactor thread does not read a
    long message with parts through to measure it: LIST (a small mailbox
    measured when first needed, ``_LongHeader``), RETR (``_judged``) and
    the login's jobs hand it to a worker."""
    clock, components, md = env(tmp_path, monkeypatch, workers=True)
    if inline_sizes:  # measured on this thread, as far as it may
        monkeypatch.setattr(pop3_protocol, "INLINE_SIZES", 64)
        monkeypatch.setattr(pop3_protocol, "INLINE_OCTETS", 10**9)
    drop(md, message(400_000), 1, ours=True)
    syncer = components.syncer
    real_call = syncer.call
    on_worker = [False]

    def call(f, *args, **kw):
        on_worker[0] = True
        try:
            return real_call(f, *args, **kw)
        finally:
            on_worker[0] = False

    monkeypatch.setattr(syncer, "call", call)
    fed_here = [0]
    real_feed = PartHeaders.feed

    def feed(self, data):
        if not on_worker[0]:
            fed_here[0] += len(data)
        return real_feed(self, data)

    monkeypatch.setattr(PartHeaders, "feed", feed)
    # (the measuring pass only: RETR's stream feeds the chunks it sends)
    monkeypatch.setattr(pop3_protocol, "PartsEncoder", _Unfed)
    answer = session(clock, components, b"LIST 1\r\nRETR 1\r\n")
    assert answer.startswith(b"+OK 1 ")
    # LIST's measure here stops at DOWNGRADE_HERE; RETR, the size known,
    # feeds here the first chunk it sends (as its stream feeds the rest)
    assert fed_here[0] <= pop3_protocol.DOWNGRADE_HERE + pop3_protocol.CHUNK_SIZE
    fed_here[0] = 0
    assert session(clock, components, b"TOP 1 0\r\n").startswith(b"+OK")
    assert fed_here[0] <= pop3_protocol.DOWNGRADE_HERE


class _Unfed:
    """A ``PartsEncoder`` that does not count as the measuring pass."""

    def __init__(self, parts, encoder):
        self._inner = PartsEncoder(parts, encoder)

    done = property(lambda self: self._inner.done)
    size = property(lambda self: self._inner.size)  # checked at the end of RETR

    def encode(self, chunk):
        return self._inner._encoder.encode(_REAL_FEED(self._inner._parts, chunk))

    def finish(self):
        return self._inner.finish()


_REAL_FEED = PartHeaders.feed


def test_a_part_header_section_ending_at_the_limit_lists_what_retr_sends(tmp_path, monkeypatch):
    """A CRLF file whose part header section is ``PART_HEADER_LIMIT``
    octets, its empty line split by LIST's reads (8 KiB, then chunks) and
    not by RETR's: both take it for one section within the limit."""
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    top = ("Subject: \u00e9t\u00e9\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=b\r\n\r\n").encode()
    desc = "Content-Description: gro\u00df\r\n".encode()
    pad = b"X-Pad: " + b"a" * 70 + b"\r\n"
    fill = PART_HEADER_LIMIT - len(desc)
    lines = pad * (fill // len(pad) - 1)
    header = lines + b"X-Fill: " + b"f" * (fill - len(lines) - 10) + b"\r\n" + desc
    assert len(header) == PART_HEADER_LIMIT
    start = pop3_protocol.SIZE_PROBE + pop3_protocol.CHUNK_SIZE - 1 - len(header)
    delimiter = b"--b\r\n"
    preamble = b"p" * (start - len(top) - len(delimiter) - 2) + b"\r\n"
    data = top + preamble + delimiter + header + b"\r\nbody\r\n--b--\r\n"
    # the empty line's CR ends LIST's second read, its LF begins the third
    assert data.index(header) + len(header) == start + len(header)
    assert data[pop3_protocol.SIZE_PROBE + pop3_protocol.CHUNK_SIZE - 1:][:2] == b"\r\n"
    drop(md, data, 1, ours=True)
    answer = session(clock, components, b"LIST 1\r\nRETR 1\r\n")
    listed, _, retr = answer.partition(b"\r\n")
    status, sent = unstuffed(retr)
    assert status == b"+OK %d octets" % len(sent)
    assert int(listed.split()[2]) == len(sent)
    assert sent.isascii()


class _CountedFile:
    """A message file whose reads are counted: ``octets`` gets the length
    of each."""

    def __init__(self, file, octets: list) -> None:
        self._file = file
        self._octets = octets

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._octets.append(len(data))
        return data

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def _top_reads_its_lines_only(clock, proto, t, octets: list) -> None:
    """TOP 1 5 sends the part header downgraded, reading no more than a
    chunk of the file."""
    t.received.clear()
    octets.clear()
    proto.dataReceived(b"TOP 1 5\r\n")
    clock.advance(0)
    assert bytes(t.received).endswith(b"Content-Description: =?utf-8?q?gro=C3=9F?=\r\n\r\n.\r\n")
    assert sum(octets) <= pop3_protocol.CHUNK_SIZE


def _retr_reads_it_once(clock, proto, t, octets: list, size: int, length: int) -> None:
    """RETR 1 sends ``size`` octets, all ASCII, as its +OK says, reading
    the ``length`` octets of the file once."""
    t.received.clear()
    octets.clear()
    proto.dataReceived(b"RETR 1\r\n")
    clock.advance(0)
    status, sent = unstuffed(bytes(t.received))
    assert status == b"+OK %d octets" % size and len(sent) == size and sent.isascii()
    assert sum(octets) == length


def _count_reads(monkeypatch) -> list:
    """Count the reads of message files, read inline: the list returned
    gets the length of each read."""
    octets: list = []
    opened = MaildirMailbox.open_message
    monkeypatch.setattr(MaildirMailbox, "open_message",
                        lambda self, index: _CountedFile(opened(self, index), octets))
    monkeypatch.setattr(MaildirMailbox, "read_nowait", lambda self, file, size: file.read(size))
    return octets


def _logged_in(clock, components):
    """A connection logged in as joe (without UTF8): the protocol and its
    transport."""
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    clock.advance(0)
    return proto, t


def _quit(clock, proto) -> None:
    proto.dataReceived(b"QUIT\r\n")
    clock.advance(1)
    proto.connectionLost(Failure(ConnectionDone()))


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_retr_and_top_after_list_read_the_message_once(tmp_path, monkeypatch, workers):
    """LIST measured the downgraded copy (the message read through once):
    RETR reads it once more to send it, not twice (to measure it again,
    then to send it), and TOP no further than its lines need."""
    octets = _count_reads(monkeypatch)
    clock, components, md = env(tmp_path, monkeypatch, workers)
    data = message(150_000)
    assert len(data) > 2 * pop3_protocol.CHUNK_SIZE
    drop(md, data, 1, ours=True)
    proto, t = _logged_in(clock, components)
    proto.dataReceived(b"LIST 1\r\n")
    clock.advance(0)
    size = int(bytes(t.received).rsplit(b"\r\n+OK 1 ", 1)[1].split(b"\r\n")[0])
    _retr_reads_it_once(clock, proto, t, octets, size, len(data))
    _top_reads_its_lines_only(clock, proto, t, octets)
    _quit(clock, proto)


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_a_second_retr_reads_the_message_once(tmp_path, monkeypatch, workers):
    """No LIST before: the first RETR measures the copy (the message read
    through), then sends it; the second, the size known for the file as
    it is, reads it once, to send it."""
    octets = _count_reads(monkeypatch)
    clock, components, md = env(tmp_path, monkeypatch, workers)
    data = message(150_000)
    drop(md, data, 1, ours=False)
    proto, t = _logged_in(clock, components)
    sent = []
    for _ in range(2):
        t.received.clear()
        octets.clear()
        proto.dataReceived(b"RETR 1\r\n")
        clock.advance(0)
        sent.append(bytes(t.received))
    assert sent[0] == sent[1] and sent[0].startswith(b"+OK ")
    assert sum(octets) == len(data)
    _quit(clock, proto)

REPLACED = {
    # the first part's description ASCII: the copy grows less than it did
    "smaller-copy": ("Content-Description: gro\u00df\n".encode(),
                     b"Content-Description: gross\n"),
    # a UTF-8 line that is no header field in the last part, past the
    # first chunk: the copy has no downgraded form
    "no-downgraded-form": (b"Content-Disposition: attachment;",
                           b"Content-Disposition  attachment;"),
}


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
@pytest.mark.parametrize("replaced", sorted(REPLACED))
def test_a_message_file_replaced_after_list_is_measured_again(tmp_path, monkeypatch,
                                                              workers, replaced):
    """The file at the message's name is another after LIST measured it
    (restored from a backup, rewritten by another program), of the same
    stored size: the size LIST measured is not taken for the file that is
    there now.  Its copy has another size than LIST gave, so RETR and TOP
    refuse it for the session with -ERR [SYS/TEMP] (RFC 1939 5: LIST's
    size is the exact size), or as the measure finds it has no
    downgraded form; the next session lists it at the size RETR's +OK
    gives and sends."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    data = message(150_000)
    path = drop(md, data, 1, ours=False)
    proto, t = _logged_in(clock, components)
    proto.dataReceived(b"LIST 1\r\n")
    clock.advance(0)
    listed = int(bytes(t.received).rsplit(b"\r\n+OK 1 ", 1)[1].split(b"\r\n")[0])
    new = data.replace(*REPLACED[replaced])
    assert len(new) == len(data) and new != data
    with open(path + ".new", "wb") as f:
        f.write(new)
    os.replace(path + ".new", path)
    t.received.clear()
    proto.dataReceived(b"RETR 1\r\n")
    clock.advance(0)
    answer = bytes(t.received)
    t.received.clear()
    proto.dataReceived(b"TOP 1 5\r\n")
    clock.advance(0)
    top = bytes(t.received)
    t.received.clear()
    proto.dataReceived(b"LIST 1\r\n")
    assert bytes(t.received) == b"+OK 1 %d\r\n" % listed  # the session's size stays
    _quit(clock, proto)
    if replaced == "no-downgraded-form":
        assert answer == top == R.UTF8_REQUIRED.to_bytes()
        return
    assert answer == top == R.MESSAGE_SIZE_CHANGED.to_bytes()
    again = session(clock, components, b"LIST 1\r\nRETR 1\r\nTOP 1 5\r\n")
    relisted, answer = again.split(b"\r\n", 1)
    status, sent = unstuffed(answer[:answer.index(b"+OK Top")])
    assert relisted == b"+OK 1 %d" % len(sent) and len(sent) < listed
    assert status == b"+OK %d octets" % len(sent) and sent.isascii()
    assert again.endswith(b"Content-Description: gross\r\n\r\n.\r\n")


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_top_first_in_a_later_session_takes_the_kept_size(tmp_path, monkeypatch, workers):
    """A session whose first command is TOP (no LIST, STAT or RSET to
    read the size kept in .txmailhub-sizes): TOP reads no further than
    its lines, and RETR then reads the message once, giving the kept size."""
    octets = _count_reads(monkeypatch)
    clock, components, md = env(tmp_path, monkeypatch, workers)
    data = message(150_000)
    drop(md, data, 1, ours=False)
    size = int(session(clock, components, b"LIST 1\r\n").split()[2])
    proto, t = _logged_in(clock, components)
    _top_reads_its_lines_only(clock, proto, t, octets)
    t.received.clear()
    octets.clear()
    proto.dataReceived(b"RETR 1\r\n")
    clock.advance(0)
    status, sent = unstuffed(bytes(t.received))
    assert status == b"+OK %d octets" % size and len(sent) == size
    assert sum(octets) == len(data)
    _quit(clock, proto)


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
@pytest.mark.parametrize("later", [False, True], ids=["same-session", "later-session"])
def test_retr_after_list_refuses_a_message_with_no_downgraded_form(
        tmp_path, monkeypatch, workers, later):
    """A part header section with UTF-8 over ``PART_HEADER_LIMIT``, past
    the first chunk: LIST gives the stored size (no downgraded form), and
    RETR after it -- in its session or a later one, the size kept --
    refuses the message as RETR alone does, not sends it as stored."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    blob = base64.encodebytes(os.urandom(150_000)).decode()
    data = (
        "Subject: \u00e9t\u00e9\nMIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=b\n\n"
        f"--b\nContent-Type: application/octet-stream\n\n{blob}"
        "--b\nContent-Description: gro\u00df\n"
        + ("X-Pad: " + "a" * 70 + "\n") * (PART_HEADER_LIMIT // 70 + 1)
        + "\nbody\n--b--\n").encode()
    assert len(data) > pop3_protocol.CHUNK_SIZE
    drop(md, data, 1, ours=True)
    alone = session(clock, components, b"RETR 1\r\n")
    assert alone.startswith(b"-ERR"), alone[:200]
    answer = session(clock, components, b"LIST 1\r\n" if later else b"LIST 1\r\nRETR 1\r\n")
    listed, _, retr = answer.partition(b"\r\n")
    assert listed.startswith(b"+OK 1 ")
    if later:
        retr = session(clock, components, b"RETR 1\r\n")
    assert retr == alone


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_a_message_whose_boundary_readers_take_differently_is_refused(tmp_path, monkeypatch,
                                                                      workers):
    """``boundary=a''b`` is "b" to the email package, ``a''b`` to others:
    which lines head a part is in doubt, so the message has no downgraded
    form (a body line taken for a part's field would be changed, or a
    part's UTF-8 fields sent as they are): refused, LIST giving the
    stored size, and kept for a client that sends UTF8."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    data = ("Subject: \u00e9t\u00e9\nMIME-Version: 1.0\n"
            "Content-Type: multipart/mixed; boundary=a''b\n\n"
            "--a''b\nContent-Description: gro\u00df\n\nbody\n--a''b--\n").encode()
    drop(md, data, 1, ours=True)
    answer = session(clock, components, b"LIST 1\r\nRETR 1\r\n")
    listed, _, retr = answer.partition(b"\r\n")
    assert listed == b"+OK 1 %d" % (len(data) + data.count(b"\n"))
    assert retr.startswith(b"-ERR [UTF8]"), retr[:200]
