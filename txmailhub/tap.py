"""``twistd mailhub``: options and ``makeService`` for the twistd plugin.

A bad config (or one that cannot be read: ``--config PATH``, else the
``mailhub`` command's default) never produces a traceback: the problems
are printed, one line each, and twistd exits 2 before anything starts.

Owns the start under twistd: the options, the checks of ``--uid`` and of
``state_dir`` for a start as root, and the hub put together.  The checks
of twistd's pid and log files are ``txmailhub.run_files``'s, the
process's limits ``txmailhub.process_limits``'s, the signal notice
``txmailhub.signals``'s; their public names are re-exported here
(``HangupNotice`` is imported from here by applications, and stays so).
``twist mailhub``, Twisted's newer runner, uses the same plugin; its
options are not twistd's, and it sets up its own logging
(``run_files.runs_under_twist``).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

from twisted.python import usage

from txmailhub.config import (
    SYSTEM_CONFIG,
    Settings,
    default_config_path,
    empty_config_path,
    load,
)
from txmailhub.errors import ConfigError
from txmailhub.logsafe import shown_lines
from txmailhub.process_limits import FD_MARGIN as FD_MARGIN  # where tests import it from
from txmailhub.process_limits import GC_THRESHOLD0 as GC_THRESHOLD0
from txmailhub.process_limits import fd_limit_warning, raise_fd_limit, tune_gc
from txmailhub.run_files import LOG_FILE_MODE as LOG_FILE_MODE  # where tests import it from
from txmailhub.run_files import (
    NODAEMON_GIVEN,
    _opened_path_problem,
    _owner_name,
    logger_nodaemon,
    make_log_file,
    pid_file_problems,
    run_file_access_problems,
    run_file_problems,
    run_folder_warnings,
    rundir_problems,
    runs_under_twist,
    twist_log_observer,
    twist_log_where,
    twistd_log_file,
)
from txmailhub.signals import HangupNotice

# HangupNotice: where applications (etc/mailhub.tac, docs/embedding.rst)
# import it from; it lives in txmailhub.signals
__all__ = ["HangupNotice", "Options", "makeService", "settings_or_exit"]


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = ("Run the txmailhub mail hub (SMTP, submission, POP3, outbound relay).  "
                f"Without --config it reads $MAILHUB_CONFIG, else {SYSTEM_CONFIG}, "
                "as the mailhub command does.")
    optParameters = [
        ["config", "c", None,
         f"Path of the TOML configuration file (default: $MAILHUB_CONFIG, else {SYSTEM_CONFIG})."],
    ]

    def postOptions(self) -> None:
        # twistd's own options are parsed by now (``self.parent``), and
        # twistd acts on them only after this: its pid file check comes
        # before ``makeService``, its user switch after the ports are bound
        parent = getattr(self, "parent", None)
        if parent is not None:
            if not runs_under_twist(parent):
                # as twistd's logger will read it: by ``makeService`` twistd
                # has set it from ``--debug`` too (``run_files.NODAEMON_GIVEN``)
                parent[NODAEMON_GIVEN] = bool(parent.get("nodaemon"))
            refusals = uid_problems(parent) + pid_file_problems(parent.get("pidfile"))
            if refusals:
                for refusal in refusals:
                    _say(refusal)
                raise SystemExit(2)
        given = self["config"] is not None
        if self["config"] == "":
            # --config= (``--config "$CONF"`` with $CONF unset): not the
            # default file; one line and exit 2, as for a bad config
            _say(f"mailhub: {empty_config_path('--config')}")
            raise SystemExit(2)
        if not given:
            # the ``mailhub`` command's own default, by its own rule: the
            # hub runs on the file ``mailhub check`` checked
            self["config"] = default_config_path()
        self["settings"] = settings_or_exit(self["config"], named=given)


def settings_or_exit(path: str, *, named: bool = True) -> Settings:
    """The settings of the config file ``path``, as ``twistd mailhub``
    reads them at its start: its warnings on standard error, and on a
    problem (the file, or the smarthost auth file it names) one line
    each and ``SystemExit(2)``, before anything starts.

    A ``.tac`` (``etc/mailhub.tac``) calls it where it called ``load``:
    twistd reports an exception from a ``.tac`` as "Unhandled Error" with
    a traceback, and exits 1, for a typo in a key.  ``named``: whether the
    command line named ``path`` (else a line says why that file).

    Called while twistd loads a ``.tac`` (``twistd -y``), it judges
    twistd's ``--rundir``, pid file and log file too, as ``makeService``
    does for ``twistd mailhub`` (``tac_run_problems``): twistd loads the
    ``.tac`` before it opens them and changes into ``--rundir``."""
    try:
        settings = load(path)
    except ConfigError as e:
        for warning in e.warnings:
            _say(f"warning: {warning}")
        if not named:  # say why that file: the command line named none
            _say(f"mailhub: no --config PATH given: reading {path} "
                 f"($MAILHUB_CONFIG, else {SYSTEM_CONFIG})")
        for problem in e.problems:
            _say(problem)
        raise SystemExit(2) from None
    from txmailhub.cli import secret_file_warnings, smarthost_auth_problems

    warnings = list(settings.warnings)
    # a file the config names, read as the relay will: a bad one would
    # turn every outbound message into a retry, found only in the log
    problems = smarthost_auth_problems(settings, warnings)
    warnings.extend(secret_file_warnings(settings))
    for warning in warnings:
        _say(f"warning: {warning}")
    if problems:
        for problem in problems:
            _say(problem)
        raise SystemExit(2)
    problems = tac_run_problems(_twistd_loading_tac())
    if problems:
        for problem in problems:
            _say(problem)
        raise SystemExit(2)
    return settings


def tac_run_problems(options: Any) -> list[str]:
    """What would end a ``twistd -y`` start in twistd's traceback once the
    ``.tac`` is loaded, from twistd's ``options`` (one line each; none for
    ``None``): a ``--rundir`` the user may not enter (``.``, the folder
    twistd starts in, by default: ``sudo -u mailhub twistd -ny
    /etc/txmailhub/mailhub.tac`` from root's home), a pid file or log file
    it could not write -- the checks ``makeService`` makes for ``twistd
    mailhub`` (``run_files``).  None under ``--chroot``, which a ``.tac``
    must not be given (``docs/embedding.rst``): those paths would be the
    jail's."""
    if options is None or options.get("chroot") is not None:
        return []
    return rundir_problems(options) + run_file_access_problems(options)


def _twistd_loading_tac() -> Any:
    """twistd's options, when twistd is loading a ``.tac`` (``twistd -y``)
    on the way to this call; else ``None`` (``twistd mailhub``, whose
    options are read before any runner exists and judged by
    ``makeService``; another plugin's; an application of its own).

    A ``.tac`` is given no options: its code runs inside twistd's
    runner (``ApplicationRunner.createOrGetApplication``), whose
    ``config`` holds them, so they are found on the call stack."""
    app = sys.modules.get("twisted.application.app")
    runner_type = getattr(app, "ApplicationRunner", None)
    if runner_type is None:  # twistd never started here
        return None
    frame = sys._getframe(1)
    while frame is not None:
        runner = frame.f_locals.get("self")
        if isinstance(runner, runner_type):
            config = getattr(runner, "config", None)
            if config is None or getattr(config, "subCommand", None) is not None:
                return None  # a plugin's makeService, not a .tac
            options = dict(config)
            # where the logger, made before ``--debug`` set ``nodaemon``,
            # logs without --logfile (``run_files.logger_nodaemon``)
            nodaemon = getattr(getattr(runner, "logger", None), "_nodaemon", None)
            if nodaemon is not None:
                options[NODAEMON_GIVEN] = bool(nodaemon)
            return options
        frame = frame.f_back
    return None


def _say(text: str) -> None:
    """A line of the start on standard error, whatever it quotes (a path,
    a name or a line from the config or the users file) shown with the
    escapes ``mailhub check`` uses: ``\\x{1B}`` for an ESC, never raw;
    in UTF-8 as ``mailhub check`` writes it, whatever the locale (under
    ``LC_ALL=C`` without UTF-8 mode a path such as ``/srv/d\u00e9p\u00f4t`` came
    out as ``/srv/d\\udcc3\\udca9p...``)."""
    from txmailhub.cli_output import utf8_output

    utf8_output(sys.stderr)
    print(shown_lines(text), file=sys.stderr)


def uid_problems(parent: Any) -> list[str]:
    """Why twistd could not switch to ``--uid`` (one line; none: it can).

    twistd makes ``--uid`` a number, and a number with no entry in the
    user database (``getent passwd N`` finds none) passes its option
    parsing; but its switch looks the user's name up for ``initgroups``,
    and, without ``--gid``, the user's group: a ``KeyError`` traceback,
    exit 1, after the ports are bound.  ``--gid`` does not help (only the
    group lookup is skipped), so the user must exist.  A uid that is the
    process's own is not switched to, with a ``--gid``: that start works."""
    import pwd

    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None:
        return []
    try:
        pwd.getpwuid(uid)
    except KeyError:
        if uid == os.getuid() and gid is not None:
            return []
        return [f"mailhub: --uid {uid} has no entry in the user database (getent passwd "
                f"{uid} finds none): twistd looks the user's name up to set its groups as "
                "it switches, and would end in a traceback once the ports are bound, "
                "--gid or not; create the user (useradd --system --uid "
                f"{uid} mailhub) and give --uid its name (docs/deployment.rst)"]
    return []


CHROOT_REFUSAL = (
    "mailhub: twistd --chroot is not supported: the hub opens its state_dir, "
    "users and aliases files and TLS files by the paths the config gives, "
    "before and after twistd's chroot, so they would name different files; "
    "confine the hub with its service manager instead (docs/deployment.rst: "
    "ProtectSystem=strict, ReadWritePaths=)")


def makeService(options: Any) -> Any:
    from txmailhub.service import MailHub

    if (getattr(options, "parent", None) or {}).get("chroot") is not None:
        # twistd chroots after makeService: the checks below and the
        # start would look at one tree and the running hub at another
        # (a traceback once the ports are bound, for a spool.lock the
        # jail has no folder for).  ``--chroot=`` too: twistd then calls
        # os.chroot("") (a traceback of its own)
        _say(CHROOT_REFUSAL)
        raise SystemExit(2)
    limit = raise_fd_limit()
    tune_gc()
    from txmailhub.allocator import tune_malloc

    tune_malloc()
    settings = options["settings"]
    short = fd_limit_warning(settings, limit)
    if short:
        _say(f"warning: {short}")
    owner = _dropping_to(options)
    if owner is None and os.geteuid() == 0:
        _say(TWIST_ROOT_WARNING if runs_under_twist(getattr(options, "parent", None))
             else ROOT_WARNING)
    if owner is not None:
        # every refusal comes before anything is made (the log file, what
        # state_dir holds), and a state_dir is followed only once judged
        problems = (run_file_problems(getattr(options, "parent", None) or {})
                    + state_dir_problems(settings.hub.state_dir))
        if problems:
            for problem in problems:
                _say(problem)
            raise SystemExit(2)
        # root can use anything: a state folder an earlier start as root
        # left behind would pass every test made now, and fail only after
        # the switch, with the ports bound (a traceback, exit 1)
        foreign = foreign_state(settings.hub.state_dir, *owner)
        if foreign:
            _say(foreign)
            raise SystemExit(2)
        for warning in run_folder_warnings(options.parent, *owner):
            _say(warning)
    # without twistd's options (makeService called by an application)
    # there is no pid file or log file of twistd's to judge or make: an
    # empty dict would be twistd's daemon defaults, ./twistd.log made
    run_files = getattr(options, "parent", None) or {"pidfile": None, "logfile": "-"}
    unwritable = rundir_problems(run_files) + run_file_access_problems(run_files)
    if unwritable:
        for problem in unwritable:
            _say(problem)
        raise SystemExit(2)
    make_log_file(run_files, owner)
    before = _state_entries(settings.hub.state_dir)
    from txmailhub.service import StateDirError

    try:
        hub = MailHub(settings)
        hub.check_state_dir()  # now, before twistd forks (see DaemonStartError)
    except OSError as e:
        _say(StateDirError.from_os_error(e, settings.hub.state_dir).message)
        raise SystemExit(2) from None
    except StateDirError as e:  # a bad config's exit code: the admin fixes a path
        _say(e.message)
        raise SystemExit(2) from None
    parent = getattr(options, "parent", None)
    # twist runs in the foreground and sets up its own logging: no daemon's
    # start error, no pid file, no log file of the hub's choosing
    twist = runs_under_twist(parent)
    if parent is not None and not twist and not parent.get("nodaemon", True):
        from txmailhub.service import DaemonStartError

        hub.start_error_type = DaemonStartError
    elif parent is not None:
        # as twistd names it: relative to --rundir, where twistd is by then
        hub.pid_file = parent.get("pidfile") or None
    if twist:
        hub.start_error_observer = twist_log_observer(parent)
    if owner:
        if before is None:  # made just now, by root
            os.lchown(settings.hub.state_dir, *owner)
        _give_new_entries(settings.hub.state_dir, before or set(), *owner)
    notice = HangupNotice(hub.components.tls)
    if twist:
        notice.usr1_where = twist_log_where(parent)
    elif parent is not None and twistd_log_file(parent) is None:
        notice.usr1_where = ("--logger's observer" if parent.get("logger") else
                             "syslog" if parent.get("syslog") else "standard output")
    notice.setServiceParent(hub)
    if parent is not None and not twist:
        hub.parent_hook = lambda application: use_reopening_log(
            application, parent, owner[0] if owner else None,
            settings.hub.log_files_kept)
    return hub


def use_reopening_log(application: Any, parent: Any, switch_to: int | None = None,
                      files_kept: int = 0) -> None:
    """Have twistd log through ``txmailhub.logfile.ReopeningLogFile``, so
    that logrotate can rotate ``--logfile`` (``docs/deployment.rst``).
    Without a log file of its own, ``HangupNotice`` answers ``SIGUSR1``
    with a line, once the services start: not here, where twistd has yet
    to start its logger (a ``--logger`` factory that installs its own
    handler where there is none would find the notice in place).

    twistd takes an ``ILogObserver`` the application holds in place of
    the one it would make for ``--logfile``; the application is made, and
    the hub added to it, just before twistd starts logging.  ``--syslog``
    gets twistd's observer but for each line's system
    (``txmailhub.logtext.SyslogTextObserver``); nothing changes for
    ``--logger``, or an application that has an observer already.
    ``switch_to``: the ``--uid`` twistd,
    running as root, switches to after logging its first lines: the file
    is neither rotated nor made before (``ReopeningLogFile.switch_to``).
    ``files_kept``: ``[hub] log_files_kept`` (0: every numbered file kept)."""
    from twisted.logger import ILogObserver

    from txmailhub.logfile import install_sigusr1, observer_for

    if not hasattr(application, "setComponent"):
        return
    if application.getComponent(ILogObserver, None) is not None:
        return
    found = observer_for(parent, switch_to, files_kept)
    if found is None:
        if parent.get("syslog") and not parent.get("logger"):
            # twistd's, with each line's [system] as the log file has it
            # (``txmailhub.logtext``): the fail2ban filter reads it there
            from txmailhub.logtext import SyslogTextObserver

            # the program name twistd gives syslog: its --prefix as given,
            # "" too ("twisted" when not given)
            application.setComponent(ILogObserver,
                                     SyslogTextObserver(parent.get("prefix", "twisted")))
            return
        if _logs_to_stdout(parent):
            # the lines twistd's own observer writes there, for less CPU
            # (``txmailhub.logtext``): the systemd unit's ``--logfile=-``
            from txmailhub.cli_output import utf8_output
            from txmailhub.logtext import ClassicTextObserver

            # in UTF-8, as the log file: a standard output in the locale's
            # ASCII (LC_ALL=C without UTF-8 mode) lost every line that
            # named josé or an IDN (Twisted drops an event its observer
            # cannot write)
            utf8_output(sys.stdout)
            application.setComponent(ILogObserver, ClassicTextObserver(sys.stdout))
        return
    observer, log_file = found
    application.setComponent(ILogObserver, observer)
    install_sigusr1(log_file)


def _logs_to_stdout(parent: Any) -> bool:
    """Whether twistd logs to its standard output: ``--nodaemon`` with
    ``--logfile=-`` or with no ``--logfile`` (and no ``--logger`` or
    ``--syslog``), ``-n --debug`` too; ``--debug`` alone logs to
    ``./twistd.log`` (``run_files.logger_nodaemon``).  A daemon given
    ``--logfile=-`` is not: twistd's own logger refuses it ("Daemons
    cannot log to stdout") and must be the one to see it."""
    if parent.get("logger") or parent.get("syslog") or not logger_nodaemon(parent):
        return False
    return parent.get("logfile") in (None, "", "-")


ROOT_WARNING = (
    "warning: the hub runs as root (no --uid): whatever it creates under state_dir "
    "belongs to root, and a hub started later as another user cannot use it "
    "(docs/deployment.rst)"
)

#: twist has no ``--uid`` to switch to after the ports are bound: the way
#: out is to start it as the hub's user, not to give it an option it lacks
TWIST_ROOT_WARNING = (
    "warning: the hub runs as root (twist, unlike twistd, cannot switch to another "
    "user: start it as the hub's user, under systemd User= with "
    "AmbientCapabilities=CAP_NET_BIND_SERVICE for ports below 1024): whatever it "
    "creates under state_dir belongs to root, and a hub started later as another user "
    "cannot use it (docs/deployment.rst)"
)


def _dropping_to(options: Any) -> tuple[int, int] | None:
    """(uid, gid) when twistd runs as root and will switch to ``--uid``/
    ``--gid`` after ``makeService``: what the hub creates here as root must
    then belong to that user, or it cannot use its own state folder."""
    parent = getattr(options, "parent", None)
    if parent is None or os.geteuid() != 0:
        return None
    try:
        uid, gid = parent["uid"], parent["gid"]
    except KeyError:
        return None
    if uid is None or uid == 0:
        return None
    if gid is None:
        import pwd

        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            # twistd's options refuse it first; an application calling
            # makeService with options of its own gets the same line
            for problem in uid_problems(parent):
                _say(problem)
            raise SystemExit(2) from None
    return uid, gid


#: what the hub makes in ``state_dir`` itself, and writes ever after
HUB_ENTRIES = ("mail", "queue", "relay", "spool", "spool.lock")
#: those of them the hub uses through a symbolic link the admin made (the
#: mail store on a disk of its own): judged by the folder the link leads
#: to.  ``spool.lock`` is never followed (``store.spool``): judged itself.
LINKABLE_ENTRIES = ("mail", "queue", "relay", "spool")


def foreign_state(state_dir: str, uid: int, gid: int) -> str | None:
    """The line to print when the user ``--uid``/``--gid`` name could not use
    ``state_dir`` once twistd has switched to it, else ``None``.

    Run as root, before the switch.  The usual cause is a first start as
    root without ``--uid``: everything it made belongs to root.  The state
    folder itself must let that user in and write (its owner, group or
    mode may do that: an admin's ``install -d -o root -g mailhub -m 0770``
    is fine); what the hub makes in it (``HUB_ENTRIES``) must belong to
    that user, since the hub made it for itself.  Deeper entries are not
    walked: a big mail store would delay every start."""
    import pwd

    try:
        entry = pwd.getpwuid(uid)
        user, groups = entry.pw_name, set(os.getgrouplist(entry.pw_name, gid))
    except KeyError:  # a bare number: no supplementary groups to count
        user, groups = str(uid), set()
    groups.add(gid)
    try:
        import grp

        group = grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        group = str(gid)
    advice = (f"state_dir ({state_dir}) and everything in it must belong to the user the "
              f"hub runs as (chown -R {user}:{group} {state_dir}; docs/deployment.rst)")
    try:
        st = os.stat(state_dir)
    except OSError:  # missing (made by root, then given away) or odd: MailHub says
        return None
    if st.st_uid == uid:
        bits = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid in groups:
        bits = stat.S_IWGRP | stat.S_IXGRP
    else:
        bits = stat.S_IWOTH | stat.S_IXOTH
    if stat.S_ISDIR(st.st_mode) and st.st_mode & bits != bits:
        return (f"mailhub: cannot use {state_dir}: {user} (--uid) may not write it "
                f"(owner {_owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}); "
                f"{advice}")
    for name in HUB_ENTRIES:
        path = os.path.join(state_dir, name)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) and name in LINKABLE_ENTRIES:
                # a link the admin made (root's, as a rule) to a folder on
                # another disk: what counts is the folder it leads to
                st = os.stat(path)
                path = f"{path} (a link to {os.path.realpath(path)})"
        except OSError:
            continue  # not made yet: the hub makes it and gives it to the user
        if st.st_uid != uid:
            return (f"mailhub: cannot use {path}: it belongs to {_owner_name(st.st_uid)}, "
                    f"not to {user} (--uid), the user the hub runs as (was it started as "
                    f"root before?); {advice}")
    return None


def state_dir_problems(state_dir: str) -> list[str]:
    """Why twistd, started as root with ``--uid``, must not build the hub
    in ``state_dir`` (one line; none: it may).

    The spool's crash clean-up (it removes every file in ``spool/``), the
    spool lock and the folders made at start (then given to ``--uid``) are
    done as root, through ``state_dir``.  A state_dir whose parent folder
    is that user's (``/home/mailhub/state``) can be swapped by that user
    for a symbolic link to any folder: root then emptied that folder's
    ``spool/`` and gave it ``mail/``, ``queue/`` and ``spool.lock``.  So a
    link not made by root on the way stops the start, as for the pid and
    log files; a link root made (``/var/lib/txmailhub`` naming a folder
    on another disk) is root's choice."""
    path = os.path.abspath(state_dir)
    why = _opened_path_problem(path)
    if why is None:
        return []
    return [f"mailhub: state_dir {path} is {why}: twistd, running as root, would clean up "
            "and create files in what it names before it switches to --uid; make it a "
            "folder (and see who made the link)"]


def _state_entries(state_dir: str) -> set[str] | None:
    """What ``state_dir`` holds now (``None``: it does not exist yet)."""
    try:
        return set(os.listdir(state_dir))
    except OSError:  # missing, or unusable: MailHub says why
        return None


def _give_new_entries(state_dir: str, before: set[str], uid: int, gid: int,
                      creator: int = 0) -> None:
    """Give what ``creator`` (root) just made in ``state_dir`` to ``uid``/``gid``.

    ``state_dir`` belongs to that user, who may put anything in it at any
    moment, links included: nothing here follows a link or chowns what
    root did not make itself (a name that appeared meanwhile may be a
    symbolic link to /etc, or a hard link to a root file).  Entries are
    opened with ``O_NOFOLLOW`` and changed through their descriptor; below
    them (folders root made: nobody else can write there) ``fwalk``
    neither follows links nor is fooled by a folder swapped for one."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    top = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for name in sorted(set(os.listdir(top)) - before):
            try:
                fd = os.open(name, flags, dir_fd=top)
            except OSError:  # a link (ELOOP), or gone already
                continue
            try:
                st = os.fstat(fd)
                if st.st_uid != creator:
                    continue  # not made by us: not ours to give away
                if stat.S_ISDIR(st.st_mode):
                    os.fchown(fd, uid, gid)
                    for _root, dirs, files, root_fd in os.fwalk(".", dir_fd=fd):
                        for entry in dirs + files:
                            os.chown(entry, uid, gid, dir_fd=root_fd, follow_symlinks=False)
                elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
    finally:
        os.close(top)
