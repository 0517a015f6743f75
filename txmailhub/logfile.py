"""twistd's ``--logfile``, kept so that logrotate can rotate it.

twistd's own ``LogFile`` renames ``mailhub.log`` to ``mailhub.log.1`` on
``SIGUSR1`` and at 1 MB, and writes at the offset it last wrote at.
logrotate's two ways of rotating a file both go wrong with it:

* *move, then signal* (``postrotate kill -USR1``): logrotate has already
  moved ``mailhub.log`` away.  Without ``create`` twistd finds no file to
  rename and silently goes on writing into the moved file, forever; with
  ``create`` it renames logrotate's new, empty file to ``mailhub.log.1``
  (and shifts its own numbered files), one more empty file per rotation.
* ``copytruncate``: after the truncation twistd writes at its old offset,
  so the file starts with that many NUL bytes (a sparse file that grows
  back to its old size, which ``grep`` takes for binary).

``ReopeningLogFile`` is twistd's file with two changes: it is opened for
appending (``O_APPEND``: after a truncation each write goes to the new
end), and a rotation -- ``SIGUSR1`` or the 1 MB size -- first looks at the
path: when it no longer names the file being written (moved away, or
replaced by logrotate's ``create``), the file is opened again by its name
(made with the mode the log had, when missing) instead of being renamed.
A ``SIGUSR1`` with the file still in place rotates it as twistd did,
except that the file being written stays open until the new one is:
twistd closed it first, and a hub at its open-files limit (``EMFILE``)
then had no log at all, every later line lost until a restart.  A
rotation that cannot open the new file puts the names back as they were,
goes on writing where it was, and is tried again 64 KiB of log later;
so is one that cannot list the log's folder for lack of descriptors, one
whose rename the system refuses (``EPERM``: an append-only file), and
one that cannot open a moved log again by its name; a log the hub may
not rename (its folder or the file not writable, as twistd asks) is
looked at again 64 KiB of log later too, not at every line.  A folder the hub
may write but not list (mode 0300) is rotated all the same: the numbered
files are found by trying their names.

``observer_for(parent)`` is the log observer for twistd's options (the
lines twistd's own would write, made for less CPU: ``logtext``; none
for standard output, syslog or ``--logger``), which ``MailHub`` sets on
the twistd application, and ``install_sigusr1`` the handler twistd would
have installed for its own file.  Where there is no file of the hub's to
rotate (standard output -- the systemd unit's ``--logfile=-`` -- syslog,
``--logger``), ``install_sigusr1_notice`` answers the signal with a line:
twistd installs no handler then, and the default action would end the
hub at once, without its graceful stop or a word in the log.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from typing import Any

from twisted.python import threadable
from twisted.python.logfile import LogFile

__all__ = ["ReopeningLogFile", "install_sigusr1", "install_sigusr1_notice", "observer_for"]


class ReopeningLogFile(LogFile):
    """twistd's rotating log file, opened again when logrotate moved it."""

    synchronized = ["rotate", "reopen"]  # ``write`` is LogFile's, locked already

    #: the user twistd switches to (``--uid``, started as root): until
    #: then nothing is rotated or made.  twistd logs its start-up lines as
    #: root, and a rotation then (a log the last run left at 1 MB) would
    #: have root make ``mailhub.log`` by name in a folder of that user's,
    #: following any link put there (``run_files.run_file_problems``), and leave
    #: a file of root's the hub could never rotate again
    switch_to: int | None = None

    #: how much more log a failed rotation waits for before the next try:
    #: each try renames every numbered file, there and back
    retry_after = 65536
    _next_try = 0  # the size before which no rotation is tried again

    def _as_root_before_switch(self) -> bool:
        return self.switch_to is not None and os.geteuid() == 0

    def _openFile(self) -> None:
        self.closed = False
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        mode = self.defaultMode if self.defaultMode is not None else 0o666
        existed = os.path.exists(self.path)
        fd = os.open(self.path, flags, mode)
        self._file = os.fdopen(fd, "ab", 0)
        if not existed and self.defaultMode is not None:
            try:
                os.fchmod(fd, self.defaultMode)  # whatever the umask took away
            except OSError:
                pass
        self.size = os.fstat(fd).st_size

    def moved(self) -> bool:
        """Whether the path no longer names the file being written.  A
        path that cannot be looked at (a file now at its folder's name,
        ``ENOTDIR``; a folder the hub may not go through, ``EACCES``)
        names it no longer either: raised, the error came out of
        ``write`` at the size rotation, and that line and every later
        one were lost."""
        try:
            there = os.stat(self.path)
        except OSError:
            return True
        mine = os.fstat(self._file.fileno())
        return (there.st_ino, there.st_dev) != (mine.st_ino, mine.st_dev)

    def shouldRotate(self) -> bool:
        # A failed rotation is due again at ``_next_try``, also below
        # ``rotateLength``: a SIGUSR1 that could not open a moved log again
        # left the hub writing into the moved file (which logrotate may
        # compress and delete) until that file reached 1 MB.  Otherwise at
        # ``rotateLength``.  The count of octets written is no longer the
        # file's size once it was truncated (copytruncate): look before
        # renaming a small file
        due = self._next_try or self.rotateLength
        if not (due and self.size >= due):
            return False
        if self._as_root_before_switch():
            return False  # at the first line written as ``--uid``
        self.size = os.fstat(self._file.fileno()).st_size
        return self.size >= due

    def rotate(self) -> None:
        if self._as_root_before_switch():
            return
        if self.moved():
            self.reopen()
            return
        if not (os.access(self.directory, os.W_OK) and os.access(self.path, os.W_OK)):
            # as twistd's rotate: not ours to rename; looked at again 64 KiB
            # of log later, not at every line (a log in a folder of root's)
            self._hold_off()
            return
        old = self._file
        try:
            numbered = self._numbered()
        except OSError:  # the folder cannot be read now: no name is safe
            self._hold_off()
            return
        shifted: list[int] = []
        try:
            # a rename the system refuses although the folder may be
            # written (EPERM: a file made append-only, another user's in a
            # sticky folder) raised out of ``write``: that line was lost,
            # and each later one, every one trying again
            self._shift_numbered(numbered, shifted)
            os.rename(self.path, f"{self.path}.1")
        except OSError:
            self._put_back(shifted, log_moved=False)
            self._hold_off()
            return
        try:
            self._openFile()
        except OSError:
            # no descriptor (or no room): the names back, the old file on
            self._put_back(shifted, log_moved=True)
            self._file = old
            self.closed = False
            self._hold_off()
            return
        self._next_try = 0
        old.close()

    def _put_back(self, shifted: list[int], log_moved: bool) -> None:
        """Undo a rotation's renames: the log (``log_moved``) and the
        numbered files ``shifted``, each to its own name again (the lowest
        first: ``.2`` goes back once ``.1`` is free).  A rename that fails
        here too leaves that name as it is: the log is written all the
        same."""
        renames = [(f"{self.path}.1", self.path)] if log_moved else []
        renames += [(f"{self.path}.{i + 1}", f"{self.path}.{i}") for i in sorted(shifted)]
        for src, dst in renames:
            try:
                os.rename(src, dst)
            except OSError:
                pass

    def _hold_off(self) -> None:
        self.size = os.fstat(self._file.fileno()).st_size
        self._next_try = self.size + self.retry_after

    def listLogs(self) -> list[int]:
        """The ``N`` of the numbered files (``mailhub.log.N``).  Raises
        ``OSError`` when the folder cannot be read: twistd's ``glob`` took
        that (``EMFILE`` at the open-files limit) for a folder without
        any, and its rotation then renamed the log over ``mailhub.log.1``."""
        prefix = f"{os.path.basename(self.path)}."
        found = []
        for name in os.listdir(self.directory):
            number = name[len(prefix):]
            if name.startswith(prefix) and number.isdigit() and int(number) > 0:
                found.append(int(number))
        return sorted(found)

    def _numbered(self) -> list[int]:
        """``listLogs()``; in a folder the hub may write but not list (a
        write-only one, mode 0300, or a listing refused otherwise), the
        numbered files found by their names, ``.1`` upwards to the first
        missing one: the rotation then moves those up, and renames
        nothing over a file it did not see.  Out of descriptors or memory
        (``EMFILE``, ``ENFILE``, ``ENOMEM``), the error is raised: the
        rotation is put off, as the new file could not be opened either."""
        try:
            return self.listLogs()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
        found: list[int] = []
        while True:
            try:
                os.lstat(f"{self.path}.{len(found) + 1}")
            except FileNotFoundError:
                return found
            found.append(len(found) + 1)

    def _shift_numbered(self, numbered: list[int], shifted: list[int]) -> None:
        """``mailhub.log.N`` to ``.N+1``, the oldest first; those past
        ``maxRotatedFiles`` are deleted.  Each ``N`` shifted is added to
        ``shifted`` as it is, so that a rename failing half-way leaves the
        caller the list of those to put back."""
        for i in sorted(numbered, reverse=True):
            if self.maxRotatedFiles is not None and i >= self.maxRotatedFiles:
                os.remove(f"{self.path}.{i}")
            else:
                os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                shifted.append(i)

    def reopen(self) -> None:
        """Write to the file the path names now (made when missing).

        No right on the folder is asked first, as twistd's ``rotate``
        asks for its renames: logrotate's ``create`` may have made the
        file in a folder the hub may not write.  A file that cannot be
        opened or made leaves the hub writing where it was, and is tried
        again 64 KiB of log later, whatever the file's size, as after a
        rename that could not open its new file (out of descriptors, each
        line would try again).  The new file starts the size count afresh: a hold-off
        left from the file before would let it grow past ``rotateLength``
        by as much as that file had."""
        old = self._file
        try:
            self._openFile()
        except OSError as e:
            self._file = old
            self._cannot_reopen(e)
            self._hold_off()
            return
        self._next_try = 0
        self._reopen_said = False
        old.close()

    #: whether the reopen failure under way was said already: once per
    #: failure, until a reopen works again (64 KiB later, a SIGUSR1)
    _reopen_said = False
    #: where the failure is said besides the moved log: twistd's standard
    #: error as the hub was started (``sys.stderr`` is twistd's log by now)
    stderr: Any = None

    def _cannot_reopen(self, error: OSError) -> None:
        """Say once why the moved log cannot be opened again by its name,
        on the moved file the hub goes on writing and on standard error.

        Silent, the hub wrote on into the moved file, which logrotate
        compresses and deletes, and nothing told the admin why
        ``mailhub.log`` never came back: its folder removed, a folder now
        at its name, the disk full."""
        if self._reopen_said:
            return
        self._reopen_said = True
        from twisted.logger import LogLevel, formatEventAsClassicLogText

        from txmailhub.logsafe import shown

        text = shown(f"cannot open the log file {self.path} again after it was moved "
                     f"away ({_reopen_reason(error, self.path, self.directory)}): the log "
                     "goes on in the moved file; tried again at the next SIGUSR1 and every "
                     f"{self.retry_after // 1024} KiB of log")
        line = formatEventAsClassicLogText({
            "log_format": "{text}", "text": text, "log_time": time.time(),
            "log_namespace": "txmailhub.logfile", "log_level": LogLevel.error}) or ""
        try:
            self._file.write(line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # the moved file cannot take it either (ENOSPC): stderr still may
        err = self.stderr if self.stderr is not None else sys.__stderr__
        if err is not None:
            try:
                err.write(f"mailhub: {text}\n")
                err.flush()
            except (OSError, ValueError):
                pass


def _reopen_reason(error: OSError, path: str, folder: str) -> str:
    """``error`` of an open of the log by its name, as the admin would put it."""
    if error.errno == errno.ENOENT and not os.path.isdir(folder):
        return f"its folder {folder} no longer exists"
    if error.errno == errno.EISDIR or os.path.isdir(path):
        return f"{path} is now a folder"
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EDQUOT:
        return "the disk quota is used up"
    if error.errno in (errno.EACCES, errno.EPERM):
        if os.path.lexists(path):  # logrotate's ``create`` with another owner or mode
            return (f"{path} is there, but the hub may not write it: its owner or mode "
                    "(logrotate's create)")
        return f"the hub may not make files in its folder {folder}"
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return "the hub is out of file descriptors"
    return error.strerror or str(error)


# as twistd's LogFile: a worker thread may log while the reactor rotates
threadable.synchronize(ReopeningLogFile)


def observer_for(parent: Any, switch_to: int | None = None, files_kept: int = 0
                 ) -> tuple[Any, ReopeningLogFile] | None:
    """The observer writing twistd's ``--logfile`` through a
    ``ReopeningLogFile``, with that file, or ``None`` where twistd does not
    log to a file of its own (standard output, syslog) or was given
    ``--logger``.  ``switch_to``: the uid twistd, running as root, will
    switch to (``ReopeningLogFile.switch_to``).  ``files_kept``: how many
    numbered files (``mailhub.log.1`` ...) a rotation keeps, the older
    ones deleted (twistd keeps every one: a log that fills the disk in
    1 MB steps on a hub nobody rotates for); 0 keeps them all."""
    from txmailhub.logtext import ClassicTextObserver
    from txmailhub.run_files import twistd_log_file

    if parent is None or parent.get("logger"):
        return None
    name = twistd_log_file(parent)
    if name is None:
        return None
    log_file = ReopeningLogFile.fromFullPath(name)
    log_file.switch_to = switch_to
    log_file.maxRotatedFiles = files_kept or None
    return ClassicTextObserver(log_file), log_file


def install_sigusr1(log_file: ReopeningLogFile, reactor: Any = None) -> None:
    """``SIGUSR1`` rotates ``log_file`` (or opens it again, when moved),
    as twistd's handler does for its own file: in the reactor thread."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    def rotate(signum: int, frame: Any) -> None:
        reactor.callFromThread(log_file.rotate)

    signal.signal(signal.SIGUSR1, rotate)


def install_sigusr1_notice(where: str, reactor: Any = None) -> None:
    """Answer ``SIGUSR1`` with a log line when the hub logs to ``where``
    (standard output, syslog, ``--logger``'s observer) and so has no file
    to rotate.  A logrotate ``postrotate`` or ``systemctl kill -s USR1``
    left over from a setup with ``--logfile`` would otherwise end the hub
    (the signal's default action: no graceful stop, no line saying why).
    A handler already in place (an application's own) is left alone."""
    if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
        return
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from twisted.logger import Logger

    log = Logger(namespace="txmailhub.logfile")

    def notice(signum: int, frame: Any) -> None:
        reactor.callFromThread(
            log.info, "SIGUSR1 ignored: the hub logs to {where}, there is nothing to rotate",
            where=where)

    signal.signal(signal.SIGUSR1, notice)
