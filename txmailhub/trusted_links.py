"""Following a symbolic link to a file a ``mailhub`` command rewrites.

``mailhub alias`` and ``mailhub user`` replace the aliases file and the
users file (``durable_write``: a temporary file renamed over it).  When
the configured path is a symbolic link, the rename must replace the file
the link leads to, or the link is broken and its target keeps the old
contents.  But a link in a folder another user may change (the hub's,
when the file is kept in users.d or the state folder) is that user's to
point anywhere: root's next command would rewrite any file of root's,
keeping its owner and mode.  So a link is followed only when it is in a
folder nobody but root and the user running the command can change
(``untrusted_folder``), and refused otherwise.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

__all__ = ["followed", "identity_in", "open_folder", "untrusted_folder"]


def followed(path: str, key: str, error: type[Exception]) -> str:
    """The file a change of ``path`` reads and replaces: ``path`` with
    every symbolic link on it resolved -- the file's own, those it leads
    to, and those of the folders on the way -- when each link is in a
    folder only root and this user can change (``untrusted_folder``);
    ``error`` is raised otherwise, naming the config's ``key`` to set
    instead (``[aliases] file``).  A link to a folder counts as much as
    one to the file: a folder of the path that is a link in the hub's
    folder would let the hub's user send the change to a file of the
    same name in any folder of root's.  A link to nothing leads to the
    file the change makes."""
    pending = os.path.abspath(path).split("/")
    resolved = "/"
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)  # no link in it: resolved
            continue
        here = os.path.join(resolved, name)
        try:
            target = os.readlink(here)
        except OSError:
            # no link (or not there: the first change makes the file)
            resolved = here
            continue
        links += 1
        if links > 40:  # SYMLOOP_MAX
            raise error(f"{path}: too many levels of symbolic links")
        why = untrusted_folder(here)
        if why:
            raise error(
                f"{here} is a symbolic link in {resolved}, {why}: not "
                "followed, since that user could point it at any file this command may "
                f"write, to have it rewritten: set {key} to the file itself, or "
                "keep the link in a folder only root can change")
        pending = target.split("/") + pending
        if target.startswith("/"):
            resolved = "/"
    return resolved


def open_folder(path: str, error: type[Exception]) -> int:
    """The folder of ``path`` (resolved by ``followed``: no link on it),
    opened without following a link on the way, for the change to be
    made in it by descriptor: a folder on the way that is in another
    user's folder may be replaced by a link after ``followed`` judged
    it, which the path would then follow.  ``error`` when one is a link
    (or not a folder) by now."""
    flags = os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    # the folders on the way need only be searched (a 0711 home), not read
    passing = flags | getattr(os, "O_PATH", os.O_RDONLY)
    folder = os.path.dirname(os.path.abspath(path))
    names = [n for n in folder.split("/") if n]
    fd = os.open("/", passing if names else flags | os.O_RDONLY)
    try:
        for i, name in enumerate(names):
            try:
                inner = os.open(name, passing if i < len(names) - 1 else flags | os.O_RDONLY,
                                dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise error(f"{folder}: a folder on the way became a symbolic link or "
                            "something else during the change: not followed, nothing "
                            "changed") from None
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def identity_in(path: str, folder_fd: int) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the entry of ``path``'s name in the folder
    open as ``folder_fd`` (``open_folder``), a link not followed; ``None``
    when there is none: to compare with the file read by path."""
    try:
        st = os.stat(os.path.basename(path), dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def untrusted_folder(link: str) -> str | None:
    """Why the folder of ``link`` may be changed by a user other than root
    and the one running the command (who then decides where the link
    leads), or None.  A sticky folder others may write (``/tmp``) is
    safe for a link of root's or this user's: others cannot replace it."""
    folder = os.path.dirname(link)
    ours = {0, os.geteuid()}
    st = os.stat(folder)
    if st.st_uid not in ours:
        return f"a folder of {_user_name(st.st_uid)}'s"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if st.st_mode & stat.S_ISVTX and os.lstat(link).st_uid in ours:
            return None
        return "a folder other users may write"
    return None


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
