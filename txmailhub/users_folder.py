"""The users file's folder and lock, as the ``mailhub user`` commands meet
them: the lock opened without following a link, and what to tell the admin
when this user may not make or write them.

Owns ``open_lock`` (the aliases file's lock uses it too) and the advice
lines ``check`` and the commands print (``install -d``, ``chown``,
``chmod`` lines quoted for a shell).  It must not read or write the users
file itself, nor hash or check a password: that is ``txmailhub.users``'s,
which re-exports these names (``from txmailhub.users import open_lock``
keeps working).
"""

from __future__ import annotations

import errno
import os
import shlex
import stat

from txmailhub.errors import UsersFileError

__all__ = ["cannot_make_folder", "hub_cannot_read_advice", "lock_refused_advice",
           "make_folder_advice", "open_lock", "unwritable_folder_advice"]


def open_lock(path: str, error: type[Exception] = UsersFileError) -> int:
    """Open (or make) the users lock (or the aliases file's: ``error`` is
    what to raise about it), which is never a link.

    Its folder is the hub's user's (deployment.rst's users.d), who can put
    anything in it, and root's ``mailhub user`` command gives the lock to
    that user (``give_to``): a lock that was a symbolic or hard link to a
    file of root's would hand that file over.  Not followed (O_NOFOLLOW),
    and refused unless it is a regular file with one name; O_NONBLOCK so
    that a FIFO put there fails instead of blocking the command."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
             | getattr(os, "O_CLOEXEC", 0))
    why = "is not a regular file with one name (a link?): remove it"
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        raise error(f"{path} {why}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise error(f"{path} {why}")
    return fd



def lock_refused_advice(path: str, commands: str, what: str) -> str | None:
    """What to do when this user may not open ``path``'s lock (the users
    file's or, ``commands`` and ``what`` naming them, the aliases file's)
    that is there already: it is refused for its owner and mode, whoever may
    write the folder (the commands give it, 0600, to the file's owner, or
    before there is a file to the folder's).  A lock of root's refuses an
    admin who may write the folder, to whom "run them as a user who may
    write the folder" said nothing.  ``None`` when there is no such lock
    (the folder is what refused)."""
    from txmailhub.hub_access import group_name, name_of

    lock = path + ".lock"
    try:
        st = os.lstat(lock)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if st.st_nlink != 1:
        # a second name of someone's file (a hard link put there by whoever
        # may write the folder): root's chown would hand that file over
        return f"{lock} is not a regular file with one name (a link?): remove it"
    group = group_name(st.st_gid)
    said = (f"{lock} is there already, {name_of(st.st_uid)}:{group} mode "
            f"{stat.S_IMODE(st.st_mode):04o}, which this user ({name_of(os.geteuid())}) may "
            "not open for writing")
    if st.st_uid == os.geteuid():
        return f"{said}: give it its owner's write again: chmod 600 {shlex.quote(lock)}"
    said += (f": run {commands} as root" if st.st_uid == 0 else
             f": run {commands} as root or as {name_of(st.st_uid)}, its owner")
    owner = None
    for given_to in (path, os.path.dirname(path)):  # as the commands give it
        try:
            owner = os.stat(given_to).st_uid
            break
        except OSError:
            continue
    if owner is not None and owner != st.st_uid:
        # a lock left by another owner: the commands give it to the file's.
        # -h: the folder's users may swap the lock for a symbolic link
        # before root pastes this, and chown would follow it
        name = name_of(owner).removeprefix("uid ")
        said += (f", or, as root, give it to {what}'s owner, as the commands do: "
                 + " ".join(shlex.quote(w) for w in ("chown", "-h", name, lock)))
    return said


def make_folder_advice(folder: str, hub_user: tuple[int, int] | None = None) -> str:
    """How to make the users file's ``folder`` that this user may not make
    (the folder above is root's, ``/etc/txmailhub``): deployment.rst's
    ``install -d`` line, for ``hub_user`` -- ``(uid, gid)`` of the user the
    hub runs as, the owner of ``state_dir`` (``hub_access.state_dir_owner``)
    -- or, without one, for this user, whom deployment.rst has run the
    ``mailhub user`` commands as the hub's user.  Not this user whenever
    the hub's is known: another admin's (or root's) name there would make
    a users.d the hub cannot read.  Every word is quoted for a shell, as
    the line is there to be pasted into root's: a folder with a space, a
    ``;`` or a ``$(...)`` in its name is one argument, never a command."""
    from txmailhub.hub_access import chown_owner

    uid, gid = hub_user if hub_user is not None else (os.geteuid(), os.getegid())
    # the group as chown_owner picks it: root's only when it is the user's
    user, _, group = chown_owner(uid, gid).partition(":")
    words = ["install", "-d", "-o", user, *(["-g", group] if group else []), "-m", "0700",
             folder]
    return ("as root, make it for the user the hub runs as: "
            + " ".join(shlex.quote(w) for w in words) + " (docs/deployment.rst)")


def cannot_make_folder(path: str) -> str | None:
    """The folder of ``path`` when it does not exist and this user could
    not make it (the nearest folder above that exists is not writable for
    it), else ``None``: ``check`` says so rather than "mailhub user add
    makes it"."""
    folder = os.path.dirname(os.path.abspath(path))
    parent = folder
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if parent == folder or not os.path.isdir(parent):
        return None
    return None if os.access(parent, os.W_OK | os.X_OK) else folder


def unwritable_folder_advice(path: str, hub_user: tuple[int, int] | None = None) -> str | None:
    """What is true and what to do when the folder of ``path`` exists but
    this user may not make files in it (``users.d`` given to the hub's user
    0700, and ``check`` run by another admin; or a ``users.d`` made by hand
    as root): ``mailhub user add`` would fail on ``users.lock``, which
    "mailhub user add makes it" did not say.  ``None`` when the folder is
    not there (``cannot_make_folder``'s case) or this user may write it.
    ``hub_user``: ``(uid, gid)`` of the user the hub runs as
    (``hub_access.state_dir_owner``); a folder that is not that user's is
    said with the ``chown`` that gives it to it, as deployment.rst has it.
    Run as root, who may write any folder, a folder that is not the hub's
    user's is said too: root's ``user add`` would make there a users file
    of that folder's owner, 0600, that the hub could not read."""
    from txmailhub.hub_access import group_name, name_of

    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    group = group_name(st.st_gid)
    me = name_of(os.geteuid())
    owner = name_of(st.st_uid)
    if os.access(folder, os.W_OK | os.X_OK):
        if os.geteuid() != 0 or hub_user is None or hub_user[0] in (0, st.st_uid):
            return None
        # root may write it, but the file its user add makes there is
        # given to the folder's owner, 0600: a users.d root made by hand
        # would hold a users file the hub cannot read
        said = (f"root's mailhub user add would make it in {folder} ({owner}:{group} mode "
                f"{stat.S_IMODE(st.st_mode):04o}) for that folder's owner, mode 0600, which "
                "the hub's user could not read")
        return _give_to_hub_advice(said, folder, path, st, hub_user)
    said = (f"this user ({me}) may not write its folder {folder} "
            f"({owner}:{group} mode {stat.S_IMODE(st.st_mode):04o}), so the mailhub user "
            "commands cannot make the users file or its lock there")
    if st.st_uid == os.geteuid():  # its own folder, without its write
        return f"{said}: give it its owner's write again: chmod u+wx {shlex.quote(folder)}"
    if hub_user is None or hub_user[0] == st.st_uid:
        runner = "root" if st.st_uid == 0 else f"root or as {owner}, the folder's owner"
        return f"{said}: run the mailhub user commands as {runner} (docs/deployment.rst)"
    return _give_to_hub_advice(said, folder, path, st, hub_user)


def _give_to_hub_advice(said: str, folder: str, path: str, st: os.stat_result,
                        hub_user: tuple[int, int]) -> str:
    """``said``, and how to give ``folder`` (whose stat is ``st``) to the
    hub's user -- only when it holds nothing but the users file ``path``:
    a folder with other files in it is never offered to that user."""
    from txmailhub.hub_access import chown_owner, name_of

    only_users = _only_users_files(folder, os.path.basename(path))
    # -R when the users file or its lock is there (root's, 0600, from a hub
    # once run as root): the folder alone left them to root, and user add
    # still failed.  Each is a plain file with one name (_only_users_files),
    # and chown -R follows no symbolic link, the folder named either: the
    # folder a link leads to is named
    # (one this user cannot list may hold them: -R, for root to check first)
    words = ["chown", "-R"] if only_users is None or (only_users and os.listdir(folder)) \
        else ["chown"]
    real = os.path.realpath(folder)
    chown = " ".join(shlex.quote(w) for w in (*words, chown_owner(*hub_user), real))
    if st.st_mode & 0o700 != 0o700:  # made 0555: its new owner could not write it either
        chown += f" && chmod u+rwx {shlex.quote(real)}"
    if only_users is None:  # root's 0700: what else is in it is not known here
        return (f"{said}, and the hub's user ({name_of(hub_user[0])}, the owner of state_dir) "
                f"does not own it, and this user cannot list it: as root, if it holds "
                f"nothing but the users file, give it to that user ({chown}), then run the "
                "mailhub user commands as root or as that user (docs/deployment.rst)")
    if not only_users:
        # /etc/txmailhub with mailhub.toml in it, /, /var/lib: given to the
        # hub's user, it could change its own configuration or anyone's files
        return (f"{said}, and the hub's user ({name_of(hub_user[0])}, the owner of state_dir) "
                f"does not own it; {folder} holds other files than the users file, so it is "
                "not to be given to the hub's user: keep the users file in a folder of its "
                "own and set [users] file to a file in it -- "
                + make_folder_advice(os.path.join(folder, "users.d"), hub_user))
    return (f"{said}, and the hub's user ({name_of(hub_user[0])}, the owner of state_dir) "
            f"does not own it: as root, give it to that user ({chown}), then run the "
            "mailhub user commands as root or as that user (docs/deployment.rst)")


def hub_cannot_read_advice(path: str, hub_user: tuple[int, int]) -> str | None:
    """What root does about a users file ``path`` that exists but that the
    hub's user (``hub_user``, ``(uid, gid)`` of ``state_dir``'s owner) may
    not read, because of the file or of its own folder: the ``chown -R``
    that gives the folder, file and lock to that user, when the folder
    holds nothing but those (each a plain file with one name); else the
    ``install -d`` of a ``users.d`` of its own.  A users file root's first
    ``user add`` made before ``state_dir`` was there is root's 0600, and
    the ``install -d`` of deployment.rst, run after, gives the folder but
    not the file: every local RCPT is then answered 451 and every login
    refused, and ``check``'s warning named the owner and mode only.
    ``None`` when the folder is not there."""
    from txmailhub.hub_access import chown_owner

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return None
    if _only_users_files(folder, os.path.basename(path)) is False:
        # /etc/txmailhub with mailhub.toml in it: never handed to the hub's user
        return (f"{folder} holds other files than the users file, so it is not to be given "
                "to the hub's user: keep the users file in a folder of its own and set "
                "[users] file to a file in it -- " + make_folder_advice(
                    os.path.join(folder, "users.d"), hub_user))
    real = os.path.realpath(folder)
    chown = " ".join(shlex.quote(w) for w in ("chown", "-R", chown_owner(*hub_user), real))
    return (f"as root, give it to that user ({chown}), then run the mailhub user commands "
            "as that user (docs/deployment.rst)")


def _only_users_files(folder: str, name: str) -> bool | None:
    """Whether ``folder`` holds nothing but the users file ``name``, its
    lock and the temporary files of its writes (``durable_write``'s
    ``.name.*.tmp``), each a plain file with one name (a link there could
    hand root's ``chown -R`` another file): only such a folder may be
    offered to the hub's user whole.  ``None`` when this user cannot list
    it: what it holds is not known here."""
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for n in names:
        if not (n in (name, name + ".lock")
                or (n.startswith(f".{name}.") and n.endswith(".tmp"))):
            return False
        try:
            st = os.lstat(os.path.join(folder, n))
        except OSError:
            continue  # gone meanwhile (a temporary file renamed)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
    return True
