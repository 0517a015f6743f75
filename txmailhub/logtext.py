"""The hub's log lines as twistd writes them, for less of its CPU.

``ClassicTextObserver`` writes the lines Twisted's
``textFileLogObserver`` writes, octet for octet
(``formatEventAsClassicLogText``: ``TIME [namespace#level] text``), to the
same file, flushed after each line as Twisted's is -- but for a control
character (a NUL, a CR) in an event's text, which it escapes
(``_unraw``).

Why
---
The hub logs a line for every message it stores.  Twisted formats each
event in general terms: the time stamp through a ``DateTime`` in a
``FixedOffsetTimeZone`` made for it, the text through
``string.Formatter`` and a mapping that looks up every field, the whole
line through one more ``str.format``.  For the hub's one-field events
(``log.info("{summary}", summary=...)``, which every per-message line
is) that was about a tenth of the CPU instructions of a whole SMTP session
(``bench/engine_profile.py callgrind --log text`` against ``--log
drop``).  Here the time stamp is made once per second (the format has
no finer field) and the text of such an event is its ``summary``;
every other event -- another format, a ``log_failure`` whose traceback
is appended, a ``log_system`` from Twisted's legacy logging, a flattened
event, a ``log_time`` that is not a float, a time format other than
twistd's -- goes
through Twisted's own formatter, so it reads exactly as before --
but for what no line may hold raw (``_unraw``), which a traceback's
exception text, whose words may be a client's, can bring, and for the
length of a line (``LINE_LOG_MAX``).

``SyslogTextObserver`` is twistd's ``--syslog`` observer with each
line's ``[system]`` as the log file has it (``[txmailhub.smtp#info]``):
Twisted's own writes ``[-]`` for every event of the new logging system,
so a line in syslog told neither which part of the hub wrote it nor at
which level, and the fail2ban filter of ``docs/deployment.rst`` could
not tell a failed login from another program's line that looks like one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.logger._format import _formatSystem, timeFormatRFC3339
from zope.interface import implementer

from txmailhub.logsafe import CUT, _escape, utf8_joined

__all__ = ["LINE_LOG_MAX", "ClassicTextObserver", "SyslogTextObserver", "capped"]

#: The most octets (UTF-8) one line the hub's observers write may have,
#: its line break not counted: the time stamp, the ``[system]`` and the
#: text, a line of a traceback (each of which is a line of its own, after
#: a tab) too.  A line cut to it ends with ``CUT``, counted in it.  The
#: hub cuts each value it logs of a client's (``logsafe.loggable``), but
#: the exception text of a traceback it cannot: an application's portal
#: may put the name a client gave in it, 9 KiB in an AUTH line of 12 KiB
#: (RFC 4954 4), four characters to an octet once escaped, or more than
#: once.  journald cuts a line of standard output of over 48 KiB (its
#: ``LineMax``) into records of their own, the second of which starts
#: with the client's words and may read as a line of the hub's (the
#: fail2ban filter, docs/deployment.rst); syslog daemons cut or drop a
#: long message
LINE_LOG_MAX = 16384

# a line of at most this many characters is within LINE_LOG_MAX octets
# (UTF-8 has at most four octets to a character): not encoded to be counted
_SURELY_SHORT = LINE_LOG_MAX // 4

# What no line of the log may hold raw, whatever an event's text is (the
# hub escapes what it logs of a client's or a server's text, ``logsafe``;
# a traceback's exception text it cannot, and an application's portal
# may put the name a client gave in it, docs/embedding.rst): a NUL ends
# a journal record as a line break does (journald splits standard output
# at either) and ends the message syslog(3) sends; CR and the other C0
# controls but the tab and the line break (which ``\n\t`` continues),
# DEL and the C1 controls (an ESC reaches a terminal), U+2028 and U+2029
# (line breaks to ``str.splitlines``); and a surrogate, a byte that was
# not UTF-8, which has no UTF-8 form to write.  Each is written as
# ``loggable`` writes it (``\x00``, ``\u2028``).
_RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _unraw(text: str) -> str:
    """``text`` with each character of ``_RAW`` escaped."""
    if _RAW.search(text) is None:
        return text  # every line but a rare traceback's
    # (a path the file system encoding read as surrogates: its characters)
    return _RAW.sub(lambda m: _escape(m.group(), False), utf8_joined(text))


def capped(text: str, limit: int = LINE_LOG_MAX) -> str:
    """``text``, a line or lines joined by ``\\n``, with each line of more
    than ``limit`` octets of UTF-8 cut to ``limit``, ``CUT`` included, at
    the end of a character (what is written stays UTF-8).  A surrogate (a
    byte that was not UTF-8, read with ``surrogateescape``: the hub's own
    observers escape it first, ``_unraw``, an application's may not)
    counts as the three octets of its UTF-8 form, and is never cut."""
    if len(text) <= limit // 4:
        return text  # the common case: not even encoded
    return "\n".join(_capped_line(line, limit) for line in text.split("\n"))


def _capped_line(line: str, limit: int) -> str:
    if len(line) <= limit // 4:
        return line
    data = line.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return line
    end = limit - len(CUT)
    while end and data[end] & 0xC0 == 0x80:
        end -= 1  # inside a character: cut before it
    return data[:end].decode("utf-8", "surrogatepass") + CUT


class ClassicTextObserver(FileLogObserver):
    """``textFileLogObserver(out_file)``, with the common event's line
    made without the general formatter, and no line longer than
    ``LINE_LOG_MAX`` octets (``capped``)."""

    def __init__(self, out_file: IO[Any], time_format: str | None = timeFormatRFC3339) -> None:
        super().__init__(out_file, self.line)
        self._time_format = time_format
        # a stamp made once a second only where the format has no finer
        # field ("%f" would be wrong); any other format: Twisted's formatter
        self._per_second = time_format == timeFormatRFC3339
        # (second, its stamp) in one attribute: a worker thread may log
        # while the reactor thread does, and two attributes set one after
        # the other could be read between the two (one second's stamp for
        # another)
        self._stamp: tuple[int, str] | None = None

    def _general(self, event: dict[str, Any]) -> str | None:
        time_format = self._time_format
        line = formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, time_format))
        return None if line is None else capped(_unraw(line))

    def line(self, event: dict[str, Any]) -> str | None:
        """The event's line, with its newline, or ``None`` (no text: no
        line, as Twisted writes none)."""
        text = event.get("summary")
        if (event.get("log_format") != "{summary}" or type(text) is not str
                or "log_failure" in event or "log_system" in event
                or "log_flattened" in event):  # Twisted writes the flattened text
            return self._general(event)
        when = event.get("log_time")
        # a float, as Logger.emit's time.time() (a Decimal, which Twisted's
        # datetime refuses, or None: its formatter)
        if type(when) is not float or not self._per_second or not when >= 0:
            return self._general(event)
        if not text:
            return None
        second = int(when)  # the stamp has no field below the second...
        if when - second >= 0.999999:
            # ...but Twisted's datetime rounds to the microsecond, which
            # may carry into the next second
            return self._general(event)
        stamp = self._stamp
        if stamp is None or stamp[0] != second:
            stamp = self._stamp = (second, formatTime(second, self._time_format))
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        text = _unraw(text)
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        line = f"{stamp[1]} [{system}] {text}\n"
        if len(line) > _SURELY_SHORT:
            return capped(line)  # (its last line is the empty one after the "\n")
        return line


@implementer(ILogObserver)
class SyslogTextObserver:
    """What twistd's ``--syslog`` sends (``twisted.python.syslog``), but
    for each line's system: ``[namespace#level]`` for an event of the new
    logging system, as in the log file, where Twisted's legacy observer
    puts ``[-]``.  Otherwise the same: ``prefix`` is the program name
    (twistd's ``--prefix``), facility ``LOG_USER``; an error, a critical
    event or a failure is sent at ``LOG_ALERT``, any other at
    ``LOG_INFO`` (an event's ``syslogPriority`` and ``syslogFacility``
    win); and an event of several lines (a traceback) is sent a line at a
    time, each after the first with a tab before it, so that no line of
    a traceback, whose text may hold what a client sent, reads as a line
    of its own; what no line may hold raw (a NUL, where syslog(3) would
    end the message) is escaped (``_unraw``), and a message is cut to
    ``LINE_LOG_MAX`` octets (``capped``), as in the log file.  It
    provides ``ILogObserver``: twistd takes any other
    observer for a legacy one, warns that this is deprecated, and wraps
    it in ``LegacyLogObserverWrapper``."""

    def __init__(self, prefix: str, *, openlog: Callable[..., Any] | None = None,
                 send: Callable[[int, str], Any] | None = None) -> None:
        import syslog  # (Unix only, as twistd's --syslog)

        self._info, self._alert = syslog.LOG_INFO, syslog.LOG_ALERT
        (openlog or syslog.openlog)(prefix, 0, syslog.LOG_USER)
        self._send = send or syslog.syslog

    def __call__(self, event: dict[str, Any]) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        if not text:
            return
        system = _formatSystem(event)
        priority = self._info
        if "log_failure" in event or event.get("log_level") in (LogLevel.error,
                                                                 LogLevel.critical):
            priority = self._alert
        if "syslogPriority" in event:
            priority = int(event["syslogPriority"])
        facility = int(event.get("syslogFacility", 0))
        lines = text.split("\n")
        while lines[-1:] == [""]:
            lines.pop()
        for i, line in enumerate(lines):
            self._send(priority | facility,
                       capped(f"[{system}] {chr(9) if i else ''}{_unraw(line)}"))
