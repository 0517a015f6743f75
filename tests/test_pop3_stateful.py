"""A model of a POP3 session, checked against the real adapter.

Hypothesis drives ``POP3Protocol`` over a ``StringTransport`` and a
``MemoryReactorClock`` with a random mix of commands, valid, out of state
and malformed (odd message numbers, over-long lines, NUL, bare CR, 8-bit
octets), pipelined in one write or cut into reads at random places.  A
small model of RFC 1939 (and 2449 for CAPA) predicts, per command, a
positive or negative status and, for the multi-line responses, the lines
that follow.  After each batch the machine checks that

* every command got exactly one response, in order (RFC 2449 PIPELINING),
  each status line ``+OK`` or ``-ERR`` within 512 octets;
* a multi-line response is dot-stuffed and ends with ``.`` CRLF: LIST and
  UIDL list exactly the messages not marked deleted, RETR sends the
  message, TOP its header and the asked number of body lines;
* STAT, LIST and the RSET reply count what the model counts (RFC 1939:
  deleted messages vanish, RSET restores them);
* QUIT removes exactly the messages marked deleted, and nothing is removed
  by a session that ends otherwise;
* STLS (``[tls]`` configured; the handshake is the transport's, faked
  here) starts TLS once, right after its ``+OK`` went out in clear text,
  and the session under it starts afresh (no USER given, UTF8 off, the
  count of lines before login from zero, failed logins kept), refusing a
  second STLS;
* nothing is logged as a failure.

``POP3_STATEFUL_EXAMPLES`` raises the number of examples for a longer
exploration (the default keeps the suite quick).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field

from conftest import drawn_reads
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_pop3_protocol import Env, reference
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from txmailhub.pop3 import protocol as pop3_protocol
from txmailhub.pop3 import replies as R

EXAMPLES = int(os.environ.get("POP3_STATEFUL_EXAMPLES", "300"))
MAX_FAILURES = 3  # the engine's default max_auth_failures
MAX_ERRORS = 10  # [pop3] max_errors's default: -ERRs after login before the close
TLS_CONTEXT = object()  # Components.tls: the test transport's startTLS only records it
STLS_BEGIN = R.STLS_BEGIN.to_bytes()
BOX = "joe@example.org"

_STATUS = re.compile(rb"^(\+OK|-ERR)(?: .*)?$", re.S)

# message contents: line ends of every kind, dots where stuffing matters
message_bytes = st.lists(
    st.sampled_from([b".", b"\n", b"\r\n", b"a", b"..", b"\n.\n", b"Subject: x", b"\n\n",
                     b"b c", b". \n", b"Subject: \xc3\xa9t\xc3\xa9\n", b"\xff",
                     b"From: j\xc3\xb6@x.test\n"]),
    max_size=25,
).map(b"".join)
uids = st.sampled_from(["u1", ".dot", "..two", "a.b", "z"])


@dataclass
class Expect:
    what: str
    ok: bool | None  # None: either is right
    lines: list[bytes] | None = None  # a multi-line response's lines (unstuffed)
    multi: bool = False
    check: object = None  # a callable on the status line
    number: int | None = None  # LIST n, RETR n: the message
    listing: bool = False  # LIST: the scan listing
    retr: bool = False
    stat: bool = False
    live: tuple[int, ...] = ()  # STAT: the numbers not deleted
    challenge: bool = False  # AUTH PLAIN without an initial response: "+ "
    top: int | None = None  # TOP n lines: the lines


@dataclass
class Message:
    uid: str
    data: bytes
    deleted: bool = False

    @property
    def size(self) -> int:
        return len(self.crlf_lines_bytes())

    @property
    def eight_bit_header(self) -> bool:
        """UTF-8 (or other 8-bit) octets before the first empty line: a
        client without UTF8 gets a downgraded form (RFC 6856 / 6857) the
        model does not predict."""
        head = self.data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        return any(c >= 0x80 for c in head)

    def crlf_lines_bytes(self) -> bytes:
        return b"".join(x + b"\r\n" for x in self.lines())

    def lines(self) -> list[bytes]:
        text = self.data.replace(b"\r\n", b"\n")
        lines = text.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return lines


@dataclass
class Model:
    messages: list[Message] = field(default_factory=list)

    def live(self) -> list[tuple[int, Message]]:
        return [(i + 1, m) for i, m in enumerate(self.messages) if not m.deleted]

    utf8: bool = False

    def known(self, m: Message) -> bool:
        return self.utf8 or not m.eight_bit_header

    def size(self, m: Message) -> int | None:
        return m.size if self.known(m) else None

    def totals(self) -> tuple[int, int | None]:
        live = self.live()
        if not all(self.known(m) for _, m in live):
            return len(live), None
        return len(live), sum(m.size for _, m in live)


def _open(machine: POP3Model) -> bool:
    return not machine.closed


def unstuff(lines: list[bytes]) -> list[bytes]:
    return [x[1:] if x.startswith(b".") else x for x in lines]


class POP3Model(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.env = Env(auth_failure_delay=1.0, tls=TLS_CONTEXT)
        self.failures: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        self.model = Model()
        self.proto = self.t = None
        self.lost = False
        self.pending: list[bytes] = []
        self.out = bytearray()
        self._chunk: int | None = None
        self.limit: int | None = None
        self.expect: list[Expect] = []
        self.user_given = False  # a USER joe is waiting for its PASS
        self.logged_in = False
        self.auth_failures = 0
        self.closed = False
        self.quit_with_update = False
        self.lines_before_login = 0
        self.errors = 0  # commands refused after login (max_errors)
        self.tls = False  # STLS answered +OK in this session
        self.tls_starts = 0  # ... and so how often the transport started TLS
        self.started: list[bytes] = []  # the output so far at each startTLS

    def _observe(self, event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.failures.append(event)

    def teardown(self) -> None:
        try:
            if self.pending and self.proto is not None:
                self._feed([b"".join(self.pending)])
                self.pending.clear()
                self.check()
        finally:
            if self._chunk is not None:
                pop3_protocol.CHUNK_SIZE = self._chunk
            globalLogPublisher.removeObserver(self._observe)
            if self.proto is not None and not self.lost:
                self.proto.connectionLost(Failure(ConnectionDone()))

    def _start(self) -> None:
        self.proto, self.t = self.env.connect(limit=self.limit)
        start_tls = self.t.startTLS

        def record(context) -> None:
            # what had been written by then: the +OK must be its end
            self.started.append(bytes(self.out) + self.t.value())
            start_tls(context)

        self.t.startTLS = record
        self.tls = False
        self.tls_starts = 0
        self.started = []
        self._drain()
        greeting, self.out = bytes(self.out), bytearray()
        assert greeting.startswith(b"+OK ") and greeting.endswith(b"\r\n"), greeting
        self.t.clear()
        self.user_given = self.logged_in = self.closed = self.quit_with_update = False
        self._named = None
        self.auth_failures = self.lines_before_login = self.errors = 0
        self.lost = False
        self.model.utf8 = False
        self.listed: dict[int, int] = {}  # message number: the size this session said
        # message number: {TOP's line count (None: RETR): the lines sent}
        self.seen_text: dict[int, dict[int | None, list[bytes]]] = {}

    @precondition(lambda self: self.closed and not self.pending)
    @rule(log_in=st.booleans())
    def reconnect(self, log_in: bool) -> None:
        """A new session on the same mailbox: it sees what the last one left."""
        if not self.lost:
            self.proto.connectionLost(Failure(ConnectionDone()))
        self.model.messages = [m for m in self.model.messages
                               if not (m.deleted and self.quit_with_update)]
        for m in self.model.messages:
            m.deleted = False
        self._start()
        if log_in:
            self.login()

    @initialize(contents=st.lists(st.tuples(message_bytes, uids), min_size=1, max_size=4,
                                         unique_by=lambda x: x[1]),
                chunk=st.one_of(st.none(), st.integers(1, 9)),
                limit=st.one_of(st.none(), st.integers(0, 40)), log_in=st.booleans())
    def connect(self, contents: list[tuple[bytes, str]], chunk: int | None,
                limit: int | None, log_in: bool) -> None:
        if chunk is not None:
            # tiny reads: every message is streamed, cut anywhere
            self._chunk = pop3_protocol.CHUNK_SIZE
            pop3_protocol.CHUNK_SIZE = chunk
        self.limit = limit
        for data, uid in contents:
            self.env.store.add(BOX, data, uid=uid)
            self.model.messages.append(Message(uid, data))
        self._start()
        if log_in:  # most sessions get that far: spend the steps after it
            self.login()

    # --- queueing commands ------------------------------------------------------

    def send(self, line: bytes, expect: Expect) -> None:
        if self.closed:
            return
        self.pending.append(line)
        if not self.logged_in:
            self.lines_before_login += 1
            if self.lines_before_login > 50:
                # the engine's PRE_LOGIN_LINES: one -ERR and the close
                expect = Expect("too many commands", False)
                self.expect.append(expect)
                self.closed = True
                return
        elif expect.ok is False:
            # refused after login: the max_errors-th is answered with the
            # close instead (None: the adapter's own -ERR, not counted)
            self.errors += 1
            if self.errors >= MAX_ERRORS:
                self.expect.append(Expect("too many errors", False))
                self.closed = True
                return
        self.expect.append(expect)

    def out_of_state(self, what: str) -> Expect:
        return Expect(what, False)

    @precondition(_open)
    @rule(name=st.sampled_from([b"joe", b"joe@example.org", b"ann", b"nobody", b"", b"a b"]))
    def user(self, name: bytes) -> None:
        if self.logged_in:
            self.send(b"USER " + name + b"\r\n", self.out_of_state("USER"))
            return
        good = name not in (b"", b"a b")
        self.user_given = name.lower() in (b"joe", b"joe@example.org")
        self.send(b"USER " + name + b"\r\n", Expect("USER", good))
        self._named = name if good else None
        if not good:
            self.user_given = False

    @precondition(_open)
    @rule(good=st.booleans())
    def password(self, good: bool) -> None:
        line = b"PASS " + (b"joepw" if good else b"wrong pw") + b"\r\n"
        if self.logged_in:
            self.send(line, self.out_of_state("PASS"))
            return
        if not self.user_given and getattr(self, "_named", None) is None:
            self.send(line, Expect("PASS without USER", False))
            return
        if self.user_given and good:
            # the login's reply counts the stored sizes (docs/pop3.rst)
            live = self.model.live()
            count, octets = len(live), sum(m.size for _, m in live)
            self.send(line, Expect("PASS", True, check=lambda s, c=count, o=octets:
                                   self._login_line(s, c, o)))
            self.logged_in = True
            self.user_given = False
            self._named = None
            return
        had_user = getattr(self, "_named", None) is not None
        self._named = None
        self.user_given = False
        if not had_user:
            self.send(line, Expect("PASS without USER", False))
            return
        self.auth_failures += 1
        self.send(line, Expect("PASS (refused)", False))
        if self.auth_failures >= MAX_FAILURES:
            self.closed = True

    @staticmethod
    def _login_line(status: bytes, count: int, octets: int) -> None:
        assert status.startswith(b"+OK Logged in, %d message" % count), status
        assert b"(%d octets)" % octets in status, status

    @precondition(_open)
    @rule()
    def login(self) -> None:
        """USER and PASS of the mailbox's owner (most sessions get that far)."""
        self.user(b"joe")
        self.password(True)

    @precondition(_open)
    @rule(how=st.sampled_from(["initial", "challenge", "empty", "empty initial", "cancel",
                               "* initial", "= after +", "not base64", "not plain",
                               "as himself", "as another"]),
          good=st.booleans())
    def auth(self, how: str, good: bool) -> None:
        """AUTH PLAIN (RFC 5034), with or without the initial response.
        RFC 5034 4: an empty initial response is "=", an empty one after
        the "+" an empty line (a "=" there is no base64), and "*" cancels
        only after the "+" (as the initial response it is no base64)."""
        password = b"joepw" if good else b"nope"
        message = {"as himself": b"joe@example.org\0joe\0" + password,
                   "as another": b"ann\0joe\0" + password,
                   "not plain": b"joe\0" + password}.get(how, b"\0joe\0" + password)
        response = {"cancel": b"*", "* initial": b"*", "= after +": b"=",
                    "not base64": b"am9l!", "empty": b"", "empty initial": b"="}.get(
            how, base64.b64encode(message))
        if self.logged_in:
            self.send(b"AUTH PLAIN " + response + b"\r\n", self.out_of_state("AUTH"))
            return
        self.user_given = False  # docs/pop3.rst: an AUTH forgets the USER name
        self._named = None
        if how in ("challenge", "cancel", "= after +", "not base64", "empty"):
            self.send(b"AUTH PLAIN\r\n", Expect("AUTH", True, challenge=True))
            line = response + b"\r\n"
        else:
            line = b"AUTH PLAIN " + response + b"\r\n"
        refusal = {"cancel": R.AUTH_CANCELLED, "* initial": R.AUTH_BAD_BASE64,
                   "= after +": R.AUTH_BAD_BASE64, "not base64": R.AUTH_BAD_BASE64,
                   "empty": R.AUTH_BAD_PLAIN, "empty initial": R.AUTH_BAD_PLAIN,
                   "not plain": R.AUTH_BAD_PLAIN}.get(how)
        if refusal is not None:
            want = refusal.to_bytes()[:-2]
            self.send(line, Expect(f"AUTH {how}", False, check=lambda s, w=want: self._is(s, w)))
        elif good and how != "as another":
            live = self.model.live()
            count, octets = len(live), sum(m.size for _, m in live)
            self.send(line, Expect("AUTH", True, check=lambda s, c=count, o=octets:
                                   self._login_line(s, c, o)))
            self.logged_in = True
        else:
            self.send(line, Expect("AUTH (refused)", False))
            self.auth_failures += 1
            if self.auth_failures >= MAX_FAILURES:
                self.closed = True

    @precondition(_open)
    @rule()
    def capa(self) -> None:
        self.send(b"CAPA\r\n", Expect("CAPA", True, multi=True))

    @precondition(_open)
    @rule(arg=st.sampled_from([b"", b" 1", b"  ", b"x"]))
    def stat(self, arg: bytes) -> None:
        if not self.logged_in:
            self.send(b"STAT" + arg + b"\r\n", self.out_of_state("STAT"))
            return
        if arg.strip():
            self.send(b"STAT" + arg + b"\r\n", Expect("STAT x", False))
            return
        count, octets = self.model.totals()
        want = b"+OK %d %s" % (count, b"*" if octets is None else b"%d" % octets)
        self.send(b"STAT" + arg + b"\r\n",
                  Expect("STAT", True, check=lambda s, w=want: self._is(s, w), stat=True,
                         live=tuple(n for n, _ in self.model.live())))

    @staticmethod
    def _is(status: bytes, want: bytes) -> None:
        """``want`` with ``*`` for a number the model leaves open."""
        pattern = re.escape(want).replace(rb"\*", rb"[0-9]+")
        assert re.fullmatch(pattern, status), (status, want)

    def _number(self, arg: bytes) -> Message | bool | None:
        """The model's message for ``arg``: False when the number is
        invalid, None when there is no such message (or it is deleted)."""
        if not arg.isdigit():
            return False
        n = int(arg)
        if not 1 <= n <= len(self.model.messages):
            return None
        m = self.model.messages[n - 1]
        return None if m.deleted else m

    _NUMBERS = st.one_of(
        st.sampled_from([b"1", b"2", b"3"]),
        st.sampled_from([b"4", b"5", b"0", b"01", b"-1", b"+1", b"x", b"1x", b"99999999999",
                         b"\xc2\xb2", b"\x00"]))

    @precondition(_open)
    @rule(n=st.one_of(st.none(), _NUMBERS))
    def list_(self, n: bytes | None) -> None:
        line = b"LIST\r\n" if n is None else b"LIST " + n + b"\r\n"
        if not self.logged_in:
            self.send(line, self.out_of_state("LIST"))
            return
        if n is None:
            lines = [b"%d %s" % (i, self._num(self.model.size(m))) for i, m in self.model.live()]
            self.send(line, Expect("LIST", True, lines=lines, multi=True, listing=True))
            return
        m = self._number(n)
        if not m:
            self.send(line, Expect(f"LIST {n!r}", False))
            return
        want = b"+OK %d %s" % (int(n), self._num(self.model.size(m)))
        self.send(line, Expect("LIST n", True, check=lambda s, w=want: self._is(s, w),
                               number=int(n)))

    @staticmethod
    def _num(size: int | None) -> bytes:
        return b"*" if size is None else b"%d" % size

    @staticmethod
    def _starts(status: bytes, prefix: bytes) -> None:
        assert status.startswith(prefix), status

    @precondition(_open)
    @rule(n=st.one_of(st.none(), _NUMBERS))
    def uidl(self, n: bytes | None) -> None:
        line = b"UIDL\r\n" if n is None else b"UIDL " + n + b"\r\n"
        if not self.logged_in:
            self.send(line, self.out_of_state("UIDL"))
            return
        if n is None:
            lines = [b"%d %s" % (i, m.uid.encode()) for i, m in self.model.live()]
            self.send(line, Expect("UIDL", True, lines=lines, multi=True))
            return
        m = self._number(n)
        if not m:
            self.send(line, Expect(f"UIDL {n!r}", False))
            return
        want = b"+OK %d %s" % (int(n), m.uid.encode())
        self.send(line, Expect("UIDL n", True, check=lambda s, w=want: self._is(s, w)))

    @precondition(_open)
    @rule(n=_NUMBERS)
    def retr(self, n: bytes) -> None:
        line = b"RETR " + n + b"\r\n"
        if not self.logged_in:
            self.send(line, self.out_of_state("RETR"))
            return
        m = self._number(n)
        if not m:
            self.send(line, Expect(f"RETR {n!r}", False))
            return
        known = self.model.known(m)
        want = b"+OK %s octets" % self._num(self.model.size(m))
        # a header the client cannot take may have no downgraded form: -ERR [UTF8]
        self.send(line, Expect("RETR", True if known else None,
                               lines=m.lines() if known else None, multi=True,
                               check=lambda s, w=want: self._is(s, w), number=int(n),
                               retr=True))

    @precondition(_open)
    @rule(n=_NUMBERS, count=st.sampled_from([b"0", b"1", b"2", b"10", b"x", b"-1", b""]))
    def top(self, n: bytes, count: bytes) -> None:
        line = b"TOP " + n + b" " + count + b"\r\n"
        if not self.logged_in:
            self.send(line, self.out_of_state("TOP"))
            return
        m = self._number(n)
        if not m or not count.isdigit():
            self.send(line, Expect(f"TOP {n!r} {count!r}", False))
            return
        lines = m.lines()
        blank = lines.index(b"") if b"" in lines else len(lines)
        lines = lines[: blank + 1 + int(count)]
        known = self.model.known(m)
        self.send(line, Expect("TOP", True if known else None,
                               lines=lines if known else None, multi=True, number=int(n),
                               top=int(count)))

    @precondition(_open)
    @rule(n=_NUMBERS)
    def dele(self, n: bytes) -> None:
        line = b"DELE " + n + b"\r\n"
        if not self.logged_in:
            self.send(line, self.out_of_state("DELE"))
            return
        m = self._number(n)
        if not m:
            self.send(line, Expect(f"DELE {n!r}", False))
            return
        m.deleted = True
        self.send(line, Expect("DELE", True))

    @precondition(_open)
    @rule(arg=st.sampled_from([b"", b"", b" x"]))
    def rset(self, arg: bytes) -> None:
        line = b"RSET" + arg + b"\r\n"
        if not self.logged_in or arg:
            self.send(line, Expect("RSET", False))
            return
        for m in self.model.messages:
            m.deleted = False
        count, octets = self.model.totals()
        self.send(line, Expect("RSET", True, check=lambda s, c=count, o=octets:
                               self._reset_line(s, c, o)))

    @staticmethod
    def _reset_line(status: bytes, count: int, octets: int | None) -> None:
        assert status.startswith(b"+OK Maildrop has %d message" % count), status
        assert octets is None or status.endswith(b"(%d octets)" % octets), status

    @precondition(_open)
    @rule(arg=st.sampled_from([b"", b"", b" x"]))
    def utf8(self, arg: bytes) -> None:
        good = not self.logged_in and not arg
        self.send(b"UTF8" + arg + b"\r\n", Expect("UTF8", good))
        if good:
            self.model.utf8 = True

    @precondition(_open)
    @rule(arg=st.sampled_from([b"", b" x"]))
    def noop(self, arg: bytes) -> None:
        self.send(b"NOOP" + arg + b"\r\n", Expect("NOOP", self.logged_in and not arg))

    @precondition(_open)
    @rule(line=st.sampled_from([
        b"FOO", b"", b" ", b"\x00", b"STAT\x00", b"RETR\t1", b"\xff\xfe", b"\xc5\xbftat",
        b"TOP 1", b"APOP joe 0123", b"AUTH XYZ", b"LANG xx", b"retr", b"dele",
        b"A" * 300, b"LIST " + b"1" * 260,
    ]), bare=st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    def garbage(self, line: bytes, bare: bytes) -> None:
        # none of these is a valid command in either state
        if line in (b"APOP joe 0123", b"AUTH XYZ"):
            self.user_given = False
            self._named = None
        self.send(line + bare, Expect(f"garbage {line[:20]!r}", False))

    @precondition(_open)
    @rule(arg=st.sampled_from([b"", b"", b" x", b" \t", b" \x0b"]), data=st.data())
    def stls(self, arg: bytes, data: st.DataObject) -> None:
        """RFC 2595 4: +OK, then TLS, and the session starts afresh.  Sent
        last in its batch and flushed at once: what a client pipelines
        behind it is discarded, which the reads drawn would leave to chance."""
        good = not self.logged_in and not arg.strip(b" \t") and not self.tls
        self.send(b"STLS" + arg + b"\r\n", Expect("STLS", good))
        if good and not self.closed:
            self.tls = True
            self.tls_starts += 1
            self.user_given = False
            self._named = None
            self.lines_before_login = 0
            self.model.utf8 = False
        self.flush(data)

    @precondition(_open)
    @rule(arg=st.sampled_from([b"", b"", b" now"]))
    def quit(self, arg: bytes) -> None:
        if arg.strip(b" \t"):
            # RFC 1939: QUIT takes no argument; refused, the session goes on
            self.send(b"QUIT" + arg + b"\r\n", Expect("QUIT", False))
            return
        self.send(b"QUIT" + arg + b"\r\n", Expect("QUIT", None))
        if self.logged_in and not self.closed:
            self.quit_with_update = True
        self.closed = True

    @precondition(lambda self: not self.closed and not self.pending)
    @rule(reason=st.sampled_from([ConnectionDone, ConnectionLost]))
    def hang_up(self, reason: type[Exception]) -> None:
        """The client goes without QUIT: RFC 1939 6, no UPDATE state, so
        nothing is deleted, and the mailbox is free for the next session."""
        self.proto.connectionLost(Failure(reason()))
        self.lost = self.closed = True
        self.quit_with_update = False
        self._drain()
        assert self.out == b"", bytes(self.out)  # nothing is written to a gone client
        assert self.env.store.messages(BOX) == [m.data for m in self.model.messages]
        assert not self.env.store.is_locked(BOX)

    # --- sending and checking ---------------------------------------------------

    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        """Send what the rules queued, cut into reads at random places."""
        wire = b"".join(self.pending)
        self.pending.clear()
        if not wire:
            return
        reads = drawn_reads(data, wire)
        # a client that reads the responses at once, or only later
        drains = [data.draw(st.booleans(), label="reads responses") for _ in reads]
        self._feed(reads, drains)
        self.check()

    def _drain(self) -> None:
        """The client reads what was written: a producer paused by the
        full transport resumes (RETR streams the rest)."""
        for _ in range(100_000):
            self.out += self.t.value()
            self.t.clear()
            proto = self.proto
            if self.t.disconnecting or not (proto._write_paused or proto._stream is not None):
                return
            proto.resumeProducing()
            self.env.clock.advance(0)
        raise AssertionError("the response never ends")

    def _feed(self, reads: list[bytes], drains: list[bool] | None = None) -> None:
        for i, piece in enumerate(reads):
            for _ in range(1000):
                if self.t.producerState != "paused" or self.t.disconnecting:
                    break
                # a paused transport reads nothing: the session works first
                self._drain()
                self.env.clock.advance(5)
            else:
                raise AssertionError("reading never resumes")
            if self.t.disconnecting:
                break
            self.proto.dataReceived(piece)
            self.env.clock.advance(0)
            if drains is None or drains[i]:
                self._drain()
        for _ in range(100):
            self._drain()
            self.env.clock.advance(5)
        self._drain()

    def check(self) -> None:
        self._drain()
        out, self.out = bytes(self.out), bytearray()
        for e in self.expect:
            assert out, f"no response to {e.what}; the rest: {[x.what for x in self.expect]}"
            end = out.index(b"\r\n")
            status, out = out[:end], out[end + 2:]
            assert end + 2 <= 512, status
            if e.challenge and status == b"+ ":
                continue
            m = _STATUS.match(status)
            assert m is not None, (e.what, status)
            ok = m.group(1) == b"+OK"
            if e.ok is not None:
                assert ok == e.ok, (e.what, status)
            if e.check is not None and (ok or e.ok is False):
                e.check(status)
            if ok and e.multi:
                end = out.find(b"\r\n.\r\n")
                if out.startswith(b".\r\n"):
                    body, out = [], out[3:]
                else:
                    assert end >= 0, (e.what, out)
                    body, out = out[:end].split(b"\r\n"), out[end + 5:]
                for x in body:
                    assert x != b".", (e.what, body)
                if e.lines is not None:
                    got = unstuff(body)
                    assert len(got) == len(e.lines), (e.what, body, e.lines)
                    for x, want in zip(got, e.lines, strict=True):
                        if e.listing:  # sizes the model leaves open are "*"
                            self._is(x, want)
                        else:
                            assert x == want, (e.what, body, e.lines)
                self._consistent(e, status, body)
            elif ok:
                self._consistent(e, status, None)
        assert out == b"", f"responses beyond the commands: {out!r}"
        self.expect.clear()
        assert len(self.started) == self.tls_starts, (self.started, self.tls_starts)
        assert all(s.endswith(STLS_BEGIN) for s in self.started), self.started
        assert self.t.disconnecting == self.closed, (self.t.disconnecting, self.closed)
        if self.closed:
            have = self.env.store.messages(BOX)
            if self.quit_with_update:
                want = [m.data for m in self.model.messages if not m.deleted]
            else:
                want = [m.data for m in self.model.messages]
            assert have == want, (have, want)

    def _consistent(self, e: Expect, status: bytes, body: list[bytes] | None) -> None:
        """What the session says of sizes agrees with itself (RFC 1939:
        LIST gives the exact octets RETR sends; STAT the sum), wherever
        the model cannot predict them (a downgraded header)."""
        listed = self.listed
        if e.listing:
            sizes = {}
            for x in body:
                n, size = x.split()
                sizes[int(n)] = int(size)
            m = re.fullmatch(rb"\+OK (\d+) messages? \((\d+) octets\)", status)
            assert m is not None, status
            assert int(m.group(1)) == len(sizes), (status, body)
            assert int(m.group(2)) == sum(sizes.values()), (status, body)
            for n, size in sizes.items():
                assert listed.setdefault(n, size) == size, (n, size, listed)
        elif e.top is not None:
            self._same_text(e.number, unstuff(body), e.top)
        elif e.number is not None and not e.retr:  # LIST n
            size = int(status.split()[2])
            assert listed.setdefault(e.number, size) == size, (e.number, size, listed)
        elif e.retr:
            size = int(status.split()[1])
            sent = sum(len(x) + 2 for x in unstuff(body))
            assert size == sent, (status, sent)
            assert listed.setdefault(e.number, size) == size, (e.number, size, listed)
            self._same_text(e.number, unstuff(body), None)
        elif e.stat:
            octets = int(status.split()[2])
            if e.live and all(n in listed for n in e.live):
                assert octets == sum(listed[n] for n in e.live), (status, listed, e.live)

    def _same_text(self, number: int, lines: list[bytes], top: int | None) -> None:
        """TOP sends the header section RETR sends, the empty line and
        ``top`` lines of the body (RFC 1939 7), downgraded or not."""
        seen = self.seen_text.setdefault(number, {})
        seen[top] = lines
        whole = seen.get(None)
        if whole is None:
            return
        blank = whole.index(b"") if b"" in whole else len(whole)
        for n, part in seen.items():
            if n is not None:
                assert part == whole[: blank + 1 + n], (number, n, part, whole)

    @invariant()
    def nothing_failed(self) -> None:
        assert not self.failures, self.failures

    @invariant()
    def retr_reference(self) -> None:
        # the model's own line split agrees with the suite's reference encoder
        for m in self.model.messages:
            assert reference(m.data) == b"".join(
                (b"." + x if x.startswith(b".") else x) + b"\r\n" for x in m.lines()) + b".\r\n"


TestPOP3Model = POP3Model.TestCase
TestPOP3Model.settings = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                                  derandomize=True,
                                  suppress_health_check=[HealthCheck.too_slow])
