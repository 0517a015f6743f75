"""twistd's run files: its ``--pidfile`` and ``--logfile``, judged before
twistd opens them, and the log file made ahead of it.

twistd opens both after ``makeService`` (as root, before a switch to
``--uid``), and a pid file or log file it cannot use ended the start in a
traceback, or let root write through a link another user put there.
``txmailhub.tap`` asks these checks and prints their lines; the checks
only look (``make_log_file`` alone makes a file), print nothing and never
exit.  Under ``twist``, which has neither file, they find none
(``runs_under_twist``).  They must not touch the configuration, the
hub's services or ``state_dir``'s contents (``txmailhub.tap`` judges
those).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

from txmailhub.logsafe import shown
from txmailhub.regular_file import NotRegularFile, read_regular

__all__ = ["LOG_FILE_MODE", "NODAEMON_GIVEN", "TWIST_KEYS", "logger_nodaemon",
           "make_log_file", "pid_file_problems", "run_file_access_problems", "rundir_problems",
           "run_file_problems", "run_folder_warnings", "runs_under_twist", "twist_log_observer",
           "twist_log_where", "twistd_log_file"]


def pid_file_problems(pidfile: str | None) -> list[str]:
    """Why twistd's pid file check (``checkPID``, run before
    ``makeService``) would end in a traceback on ``pidfile`` (one line;
    none: it would not).

    twistd reads a pid file that is there, and removes it when its
    process is gone; it writes it later, following a link.  A folder
    there (``IsADirectoryError``), a file this user may not read, a stale
    one in a folder this user may not write or on a read-only file
    system (``PermissionError``, ``OSError``), and a symbolic link to a
    name that does not exist (``FileNotFoundError`` when twistd writes
    through it, or a file made wherever the link points) each ended the
    start in twistd's own traceback."""
    if not pidfile:
        return []
    path = os.path.abspath(pidfile)
    why = _pid_file_problem(path)
    if why is None:
        return []
    return [shown(f"mailhub: --pidfile {path} {why}")]


def _pid_file_problem(path: str) -> str | None:
    try:
        lst = os.lstat(path)
    except OSError:
        return None  # not there: twistd makes it (run_file_access_problems)
    if stat.S_ISLNK(lst.st_mode):
        try:
            os.stat(path)
        except FileNotFoundError:
            return (f"is a symbolic link to {os.readlink(path)}, which does not exist: "
                    "twistd would make the pid file through it, or fail; remove the link, "
                    "or give --pidfile the path itself")
        except OSError as e:
            return f"cannot be followed ({e.strerror or e}); remove it"
    if os.path.isdir(path):
        return "is a folder: give --pidfile the path of a file in it"
    user = _owner_name(os.geteuid())
    try:
        # never a plain open: one of a FIFO would wait for a writer for ever
        text, _ = read_regular(path, limit=64)
    except NotRegularFile:
        return ("is not a regular file (a named pipe, device or socket): twistd would "
                "wait on it or fail; give --pidfile the path of a file")
    except PermissionError:
        return f"cannot be read by {user}: twistd reads it to see if the hub runs already"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    try:
        pid = int(text)
        os.kill(pid, 0)
    except (ValueError, OverflowError):
        return None  # twistd says "contains non-numeric value" itself
    except ProcessLookupError:
        why = _cannot_remove(path, lst)
        if why is not None:
            return (f"is left from a hub that has stopped (no process {pid}), and twistd, "
                    f"which removes such a file, cannot: {why}; remove it (rm {path})")
    except OSError:
        return None  # a process there (EPERM): twistd says "Another twistd server"
    return None


def _cannot_remove(path: str, st: os.stat_result) -> str | None:
    """Why this process could not remove ``path`` (``st``: its lstat), or ``None``."""
    folder = os.path.dirname(path)
    user = _owner_name(os.geteuid())
    if _read_only(folder):
        return f"its folder {folder} is on a read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{user} may not remove files in its folder {folder}"
    try:
        fst = os.stat(folder)
    except OSError:
        return None
    if (fst.st_mode & stat.S_ISVTX and os.geteuid() not in (0, st.st_uid, fst.st_uid)):
        return (f"its folder {folder} is sticky and the file is "
                f"{_owner_name(st.st_uid)}'s, not {user}'s")
    if _inode_flags(path) & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
        return "it is immutable or append-only (chattr -ia)"
    return None


#: Linux's inode flags (``chattr``): such a file cannot be removed, by root either
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _inode_flags(path: str) -> int:
    """The ``chattr`` flags of ``path`` (0 where they cannot be read)."""
    try:
        import fcntl
        import struct

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0))
    except (ImportError, OSError):
        return 0
    try:
        # the kernel writes an int there, whatever the request's size says
        raw = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 8)
        return int(struct.unpack_from("i", raw)[0])
    except OSError:
        return 0
    finally:
        os.close(fd)


def run_file_problems(parent: Any) -> list[str]:
    """Why twistd, started as root with ``--uid``, must not open its
    ``--logfile`` or write its ``--pidfile`` (one line each; none: it may).

    twistd opens both as root, after ``makeService`` and before it
    switches user, following links, and keeps writing the log through
    what it opened.  deployment.rst gives their folders to the hub's
    user (twistd removes the pid file and rotates the log as that user),
    who could put a symbolic link there: root would then make any file
    it names (the pid file: an empty-looking ``/etc/nologin``) and the hub
    would append its log, clients' text included, to any file of
    root's (a shell's start-up file runs a client's `backquotes`).  A
    link not made by root anywhere on the way -- the file itself, a
    folder above it, or the end of a link root made (``/var/log/mailhub.log``
    naming a file in the hub's own log folder) -- or a file with another
    name (a hard link to a root file) stops the start.  The paths are the
    ones twistd opens (``--chroot``, under which twistd would write the
    pid file inside the jail, is refused before this is asked, in
    ``makeService``): ``--nodaemon`` with no ``--logfile`` logs to stdout (not ``--debug``
    alone, which twistd turns into ``nodaemon`` after its logger chose
    ``./twistd.log``: that is judged then; ``twistd_log_file``).  Checked before
    twistd opens them: a process of that user running meanwhile could
    still race the check, so nothing else should run as that user."""
    problems: list[str] = []
    for option, path, _ in _run_files(parent):
        why = _opened_path_problem(path)
        if why is None:
            continue
        problems.append(
            f"mailhub: {option} {path} is {why}: twistd, running as root, would open "
            "what it names before it switches to --uid; remove it (and see who made it)")
    return problems


def run_folder_warnings(parent: Any, uid: int, gid: int) -> list[str]:
    """A ``warning:`` line for each of twistd's ``--logfile`` and
    ``--pidfile`` whose folder the ``--uid`` user may not write (judged by
    the mode bits, as ``check`` judges what the hub reads).

    twistd makes both as root, so the start works; but once it runs as
    that user it rotates the log and removes the pid file as that user.
    A log in a folder of root's (``--logfile /var/log/mailhub.log``) was
    then never rotated (``SIGUSR1``, 1 MB, ``[hub] log_files_kept``), and
    after logrotate moved it the hub could not make ``mailhub.log`` again
    and wrote on into the moved file, which logrotate later compresses
    and deletes -- all without a word.  Not a refusal: a hub that ran so
    before an upgrade still starts, and says what to mend."""
    from txmailhub.hub_access import name_of, unwritable_folder_by

    user = name_of(uid)
    consequences = {
        "--logfile": "the hub cannot rotate it there (SIGUSR1, 1 MB, [hub] log_files_kept) "
                     "nor make it again once logrotate has moved it (it writes on into the "
                     "moved file), so the log grows without end",
        "--pidfile": "twistd cannot remove it at the stop (\"No permission to delete pid "
                     "file\"), and a stale pid file is left",
    }
    lines = []
    for option, path, _ in _run_files(parent):
        why = unwritable_folder_by(path, uid, gid)
        if why is not None:
            # one line, whatever the path holds (a line end, a terminal's ESC)
            lines.append(shown(
                f"warning: {option} {path}: {user} (--uid) may not make, rename or remove "
                f"files in its folder ({why}): {consequences[option]}; give the "
                f"folder to {user} (docs/deployment.rst, \"Without systemd\")"))
    return lines


def _run_files(parent: Any) -> list[tuple[str, str, bool]]:
    """The files twistd opens as it starts, from its options: ``(option,
    absolute path, whether it is twistd's default)`` for the pid file and
    the log file each that is set (twistd makes --pidfile absolute when
    it reads its options; the log file is ``twistd_log_file``'s)."""
    names = [("--pidfile", parent.get("pidfile"),
              parent.get("pidfile") == os.path.abspath("twistd.pid")),
             ("--logfile", twistd_log_file(parent), not parent.get("logfile"))]
    return [(option, os.path.abspath(name), default)
            for option, name, default in names if name]


def run_file_access_problems(parent: Any) -> list[str]:
    """Why twistd could not write its ``--pidfile`` or open its log file
    (one line each; none: it can, as far as the folders' modes tell).

    twistd opens both after ``makeService``: a folder that is not there
    (``/run/txmailhub`` before ``install -d``, or after a reboot emptied
    ``/run``) or one the user may not write (``twistd mailhub`` started
    as the hub's user in a folder of root's, leaving ``./twistd.pid`` and
    ``./twistd.log`` as they are by default) used to end the start with
    a Python traceback, exit status 1, the log file's from the hub's own
    log observer.  Judged with ``access(2)``, as the user twistd runs as
    now (root, before a switch to ``--uid``, writes them as root)."""
    problems: list[str] = []
    defaults = {
        "--pidfile": "twistd's default pid file, in the folder it starts in: give "
                     "--pidfile PATH, or --pidfile= for none",
        "--logfile": "twistd's default log file, in the folder it starts in: give "
                     "--logfile PATH, or run in the foreground (-n) to log to standard output",
    }
    for option, path, default in _run_files(parent):
        why = _cannot_write(path)
        if why is None:
            continue
        hint = f" ({defaults[option]})" if default else ""
        problems.append(f"mailhub: {option} {path} cannot be written: {why}{hint}")
    return problems


def rundir_problems(parent: Any) -> list[str]:
    """Why twistd could not change into its ``--rundir`` (one line; none:
    it can, as far as ``access(2)`` tells).

    twistd changes into it (``.`` by default: the folder it was started
    in) after ``makeService``, as the user it runs as now, before a
    switch to ``--uid``.  ``twistd -n --pidfile= mailhub`` started as the
    hub's user in a folder that user may not enter -- root's home, where
    ``sudo -u mailhub`` from root's shell leaves it -- ended the start in
    twistd's traceback (``PermissionError: [Errno 13] Permission denied:
    '.'``, exit status 1), after the line about the default pid file had
    told the admin to give ``--pidfile=``.  Under twist, which changes no
    folder, there is none."""
    if not parent or runs_under_twist(parent) or parent.get("chroot") is not None:
        return []
    rundir = parent.get("rundir")
    if not rundir:
        return []
    try:
        path = os.path.abspath(rundir)
    except OSError:  # the folder it starts in removed: its name is unknown
        path = rundir
    user = _owner_name(os.geteuid())
    # judged as given, as twistd's chdir is: a relative one ("." above all)
    # from the folder it starts in, which the user may enter although a
    # folder on the way to it by its full name is closed to that user
    try:
        st = os.stat(rundir)
    except FileNotFoundError:
        why = "it does not exist"
    except PermissionError:
        try:
            # "." of a closed folder is itself out of reach: its full name
            # may still tell its mode
            if os.path.normpath(rundir) != ".":
                raise PermissionError
            st = os.stat(path)
        except OSError:
            why = f"{user} may not reach it (a folder on its way is closed to that user)"
        else:
            why = f"{user} may not enter it (mode {stat.S_IMODE(st.st_mode):04o})"
    except OSError as e:  # ENOTDIR, ELOOP
        why = e.strerror or str(e)
    else:
        if not stat.S_ISDIR(st.st_mode):
            why = "it is not a folder"
        elif os.access(rundir, os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            # (chdir is judged by the effective ids, access(2) by the real ones)
            return []
        else:
            why = f"{user} may not enter it (mode {stat.S_IMODE(st.st_mode):04o})"
    hint = (" (twistd's default --rundir, the folder it starts in: start it from a folder "
            f"{user} may enter, such as /, or give --rundir /)") if rundir == "." else ""
    return [shown(f"mailhub: --rundir {path} cannot be entered: {why}{hint}")]


def _cannot_write(path: str) -> str | None:
    """Why the user this process runs as could not open ``path`` for
    writing, making it if need be, or ``None``.

    A folder on the way that this user may not go through is not one
    that "does not exist" (``os.path.isdir`` says ``False`` for both), and
    a read-only file system (systemd's ``ProtectSystem=strict`` without
    the folder in ``ReadWritePaths=``) refuses root too: each is named as
    what it is, or the admin looks for the wrong cause."""
    user = _owner_name(os.geteuid())
    folder = os.path.dirname(path)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except PermissionError:
        return f"{user} may not reach it (a folder on its way is closed to that user)"
    except OSError as e:  # ENOTDIR: a file where a folder should be; ELOOP
        return e.strerror or str(e)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return "it is a folder"
        if os.access(path, os.W_OK):
            return None
        if _read_only(path):
            return "it is on a read-only file system"
        return f"{user} may not write it"
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return f"its folder {folder} does not exist"
    except OSError as e:
        return f"its folder {folder}: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return f"its folder {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        if _read_only(folder):
            return f"its folder {folder} is on a read-only file system"
        return f"{user} may not make files in its folder {folder}"
    return None


def _read_only(path: str) -> bool:
    """Whether ``path`` is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


#: the key ``txmailhub.tap.Options`` adds to twistd's options as twistd
#: parses its command line: ``--nodaemon`` as given there, which twistd's
#: logger reads.  ``--debug`` sets ``nodaemon`` too, but only later (in
#: ``preApplication``, after the logger was made and before
#: ``makeService``), so at ``makeService`` ``-n --debug`` and ``--debug``
#: alone look alike: one logs to standard output, the other to
#: ``./twistd.log``
NODAEMON_GIVEN = "mailhub_nodaemon_given"


def logger_nodaemon(parent: Any) -> bool:
    """Whether twistd's logger took the process for one in the foreground
    (``--nodaemon``), which decides where it logs without ``--logfile``.

    ``NODAEMON_GIVEN`` when the plugin's options recorded it; else (the
    options of an application, or made by hand) ``--debug`` is taken to
    have set ``nodaemon`` on its own, as it does without ``-n``: the
    logger then opened ``./twistd.log``, the file that must be judged."""
    given = parent.get(NODAEMON_GIVEN)
    if given is not None:
        return bool(given)
    return bool(parent.get("nodaemon")) and not parent.get("debug")


#: keys only the options of ``twist`` (``twisted.application.twist``, the
#: runner that is not twistd) hold: ``logFile``, set as they are made (the
#: file ``--log-file`` opened, standard output by default), and
#: ``fileLogObserverFactory``, set as they are parsed.  twistd's have
#: ``logfile`` and ``nodaemon`` instead, whatever its command line says.
TWIST_KEYS = ("logFile", "fileLogObserverFactory")


def runs_under_twist(parent: Any) -> bool:
    """Whether ``parent``, the options ``makeService`` got its own from,
    are ``twist``'s rather than twistd's.

    twist runs in the foreground only, with no pid file, ``--uid`` or log
    file of twistd's: it opens its own ``--log-file`` (standard output
    unless told otherwise) and logs there with its own observer, never
    asking the application for one.  Read as twistd's, its options (no
    ``nodaemon``, no ``logfile``) looked like a daemon logging to
    ``./twistd.log``: the hub made that file, empty ever after.  Only
    twist's own keys count, and only without twistd's ``logfile``: an
    application's options of its own, and twistd's, read as before."""
    if parent is None or "logfile" in parent:
        return False
    return any(key in parent for key in TWIST_KEYS)


def twist_log_where(parent: Any) -> str:
    """Where ``twist`` logs, for the ``SIGUSR1`` line: twist opened its
    ``--log-file`` itself and neither rotates nor reopens it, so the hub
    has nothing to rotate there either."""
    log_file = parent.get("logFile")
    if log_file in (sys.stdout, sys.__stdout__):
        return "standard output"
    if log_file in (sys.stderr, sys.__stderr__):
        return "standard error"
    return "twist's --log-file"


def twist_log_observer(parent: Any) -> Any | None:
    """An observer writing to ``twist``'s ``--log-file``, as twist's own
    will, when one was given (``None``: standard output or error, or no
    factory to make it with).

    twist starts the service before it begins logging: a start error
    (a port in use) ends the process while the log has no observer, and
    only standard error sees it.  The file is the one twist opened, in
    the format it chose (JSON or text); the hub writes a failed start's
    line there through this, and nothing else."""
    log_file = parent.get("logFile")
    factory = parent.get("fileLogObserverFactory")
    if log_file is None or factory is None or log_file in (
            sys.stdout, sys.__stdout__, sys.stderr, sys.__stderr__):
        return None
    return factory(log_file)


def twistd_log_file(parent: Any) -> str | None:
    """The log file twistd's logger opens, as given (relative to the
    folder twistd starts in), or ``None``: ``--logger`` (twistd then opens
    no log of its own, whatever ``--logfile`` says), syslog, or standard
    output (``--logfile -``, or ``--nodaemon`` with no ``--logfile``,
    ``-n --debug`` included).

    Not ``--debug`` without ``-n``: twistd sets ``nodaemon`` from it after
    its logger read ``nodaemon`` (``logger_nodaemon``), so the logger still
    opens ``./twistd.log``.  One rule for the check (``run_file_problems``),
    for the file the hub makes (``make_log_file``) and for the log the
    hub writes (``txmailhub.logfile.observer_for``).  Under ``twist``
    (``runs_under_twist``) there is no such file: twist writes its log
    where its own ``--log-file`` says, and nothing of the hub's opens,
    judges or makes one for it."""
    if runs_under_twist(parent) or parent.get("logger") or parent.get("syslog"):
        return None
    logfile = parent.get("logfile")
    if logfile == "-":
        return None
    if logfile:
        return logfile
    if logger_nodaemon(parent):
        return None  # twistd -n logs to stdout
    return "twistd.log"


#: the mode of a log file the hub makes: it names senders, recipients,
#: client addresses and login names, which are no one else's business
LOG_FILE_MODE = 0o640


def make_log_file(parent: Any, owner: tuple[int, int] | None) -> str | None:
    """Make twistd's ``--logfile`` before twistd does, readable by its
    owner and group only; the path made, or ``None``.

    twistd makes it with the process's umask (022 as a rule: a log that
    every local user may read, holding every sender, recipient and login
    name), and the daemon's own umask (077) only applies after the log is
    open.  A file that is there already is left as it is (its mode is
    the admin's choice), and so is a link: nothing is followed.  Made as
    root for ``--uid``, it is given to that user, as twistd's rotated
    files will be."""
    name = twistd_log_file(parent)
    if name is None:
        return None
    path = os.path.abspath(name)
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags, LOG_FILE_MODE)
    except OSError:  # there already, or a folder twistd will complain of
        return None
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, LOG_FILE_MODE)  # whatever the umask took away or not
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _opened_path_problem(path: str) -> str | None:
    """Why opening ``path`` as root is unsafe, or ``None``: a symbolic link
    not made by root on its way (each folder, the file, and whatever the
    links root made lead to, resolved as the kernel would), or a final
    file with more than one name.  A name not there yet ends the walk:
    twistd makes the file, or fails."""
    parts = [p for p in path.split("/") if p]
    given = os.path.normpath("/" + "/".join(parts))
    at = ""  # the resolved path so far
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            at = at.rpartition("/")[0]
            continue
        real = at + "/" + part
        try:
            st = os.lstat(real)
        except OSError:
            return None  # not there yet (twistd makes it), or not ours to judge
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid != 0:
                return ("a symbolic link" if real == given else
                        f"reached through {real}, a symbolic link not made by root")
            if st.st_nlink > 1:
                # root's link with another name: where fs.protected_hardlinks
                # is off, another user may have hard-linked it here
                return (f"reached through {real}, a symbolic link with {st.st_nlink} "
                        "names (a hard link)")
            links += 1
            if links > 40:
                return "a loop of symbolic links"
            target = os.readlink(real)
            if target.startswith("/"):
                at = ""
            parts[:0] = [p for p in target.split("/") if p]
            continue
        at += "/" + part
        if not parts and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return f"a file with {st.st_nlink} names (a hard link)"
    return None
