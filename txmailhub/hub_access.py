"""What root's ``mailhub`` commands know of the user the hub runs as.

The hub runs as its own user (``twistd --uid mailhub``, or systemd's
``User=``), which the admin command is never told.  deployment.rst has
``state_dir`` belong to that user, so a command run as root takes
``state_dir``'s owner for it, when that is not root.  Two things follow:

* the folder ``mailhub user`` makes for the users file (``users.d`` that
  was not made beforehand) is given to that user, as the users file in it
  then is (it goes to its folder's owner): made as root, 0700, the hub
  could read neither, and every local RCPT would be answered 451 and
  every login refused;
* ``mailhub check`` run as root warns about a file the hub reads (the
  users and aliases files, the TLS pair, the smarthost's password) that
  user could not read, judged by the owner, group and mode bits of the
  file and of each folder above it, and by their POSIX ACLs.

Run as anyone else, none of this applies: what a user makes is its own,
and ``check`` tests its own access.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
import struct

__all__ = ["group_name", "hub_owner", "make_folders", "name_of", "state_dir_open",
           "state_dir_owner", "unreadable_by", "unwritable_folder_by"]


def hub_owner(state_dir: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``state_dir`` when this process runs as root and
    ``state_dir`` exists and belongs to another user: the user the hub
    runs as.  ``None`` otherwise (not root; no ``state_dir`` yet; one
    that is root's, for a hub that runs as root)."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(state_dir)
    except OSError:
        return None
    if st.st_uid == 0 or not stat.S_ISDIR(st.st_mode):
        return None
    return st.st_uid, st.st_gid


def state_dir_owner(state_dir: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``state_dir``, the user the hub runs as
    (deployment.rst's ``install -d -o mailhub ... /var/lib/txmailhub``;
    root's for a hub that runs as root), whoever runs this; ``None`` when
    it is not a folder that exists yet.  Unlike ``hub_owner``, which says
    whom root must hand what it makes, this names that user to any
    caller: a line telling an admin how to make a folder for the hub."""
    try:
        st = os.stat(state_dir)
    except OSError:
        return None
    return (st.st_uid, st.st_gid) if stat.S_ISDIR(st.st_mode) else None


def make_folders(folder: str, owner: tuple[int, int] | None) -> None:
    """``os.makedirs(folder, 0o700, exist_ok=True)``, with ``folder`` itself,
    if this makes it, given to ``owner`` (``None``: left to whoever runs
    this).  As with makedirs, the folders above it that it makes get the
    default mode (0777 less the umask) and stay their maker's: they may
    hold other files (``/etc/txmailhub``), which the hub's user must not
    be handed.  A folder that is there already is not touched.  The
    entry of each folder made is fsynced in its parent before this returns
    (``sync_parents``): the command that writes a file into it says it is
    done only once both would survive a crash."""
    from txmailhub.store.sync import missing_folders, sync_parents

    folder = os.path.abspath(folder)
    missing = missing_folders(folder)
    parent = os.path.dirname(folder)
    if parent != folder and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        if not os.path.isdir(folder):
            raise  # a file in the way, as os.makedirs says
        # there already (or made meanwhile by another command): as it is
    else:
        if owner is not None:
            # not followed: the folder just made, never what a link names
            os.chown(folder, *owner, follow_symlinks=False)
    sync_parents(missing)


def name_of(uid: int) -> str:
    """The user's name, for a message (``uid N`` when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def chown_owner(uid: int, gid: int) -> str:
    """``user:group`` for a ``chown`` that gives a file to the hub's user
    (``uid``, with ``gid`` the group of its ``state_dir``).  A
    ``state_dir`` chowned to the user alone keeps root's group: then the
    user's login group, as ``chown user:`` gives it, never ``user:root``
    (which would hand root's group along with the folder); a user with no
    name (DynamicUser=) and no login group to name: the user alone."""
    user = name_of(uid).removeprefix("uid ")
    if gid != 0:
        return f"{user}:{group_name(gid)}"
    try:
        login = pwd.getpwuid(uid).pw_gid
    except KeyError:
        return user
    return f"{user}:{group_name(login)}"


def group_name(gid: int) -> str:
    """The group's name, for a message or a command to paste (``chgrp``,
    ``chown user:group``): the number when it has none, which those take."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _groups(uid: int, gid: int, own_group: bool = True) -> set[int]:
    """The groups a process of ``uid`` started with group ``gid`` is in:
    ``gid`` and the groups /etc/group lists the user in, as
    ``initgroups(3)`` gives them; with ``own_group`` the user's own group
    too (``check``, which only guesses ``gid`` from ``state_dir``'s group).
    twistd's ``--uid``/``--gid`` switch is ``initgroups(name, gid)``: a
    ``--gid`` other than the user's own leaves that one out."""
    groups = {gid}
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return groups
    if own_group:
        groups.add(entry.pw_gid)
    try:
        groups.update(os.getgrouplist(entry.pw_name, entry.pw_gid if own_group else gid))
    except OSError:
        pass
    return groups


# POSIX.1e access ACL as Linux keeps it (acl(5); the system.posix_acl_access
# extended attribute): a version, then (tag, permissions, id) entries
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)


def _acl(path: str) -> list[tuple[int, int, int]] | None:
    """The access ACL of ``path`` as ``(tag, permissions, id)`` entries;
    ``None`` when it has none beyond its mode (or the system keeps none)."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None
    try:
        raw = getxattr(path, _ACL_XATTR)
    except OSError:  # none (ENODATA), or a filesystem without ACLs
        return None
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != _ACL_VERSION:
        return None
    return [struct.unpack_from("<HHI", raw, i) for i in range(4, len(raw), 8)]


def _allowed(st: os.stat_result, uid: int, groups: set[int], bits: int,
             path: str | None = None) -> bool:
    """Whether ``bits`` (read 4, write 2, search 1) are granted to ``uid``
    as the kernel decides: by the access ACL of ``path`` when it has one
    (acl(5): the named user's entry, or any matching group's, under the
    mask), else by the mode, the one class that applies: the owner's
    bits, else the group's, else the others'.  A folder whose ACL grants
    the hub's user write (``setfacl -m u:mailhub:rwx``) is writable by
    it, whatever its owner and group bits say."""
    acl = _acl(path) if path is not None else None
    # Linux reads the ACL only when the mode's group bits (its mask) are
    # not all clear: with a mask of 0 the mode decides alone
    if acl is not None and st.st_uid != uid and st.st_mode & 0o070:
        mask = next((perm for tag, perm, _ in acl if tag == _ACL_MASK), 7)
        for tag, perm, who in acl:
            if tag == _ACL_USER and who == uid:
                return perm & mask & bits == bits
        matched = [perm for tag, perm, who in acl
                   if (tag == _ACL_GROUP_OBJ and st.st_gid in groups)
                   or (tag == _ACL_GROUP and who in groups)]
        if matched:
            return any(perm & mask & bits == bits for perm in matched)
        return st.st_mode & bits == bits  # the others' entry is the mode's
    if st.st_uid == uid:
        granted = (st.st_mode >> 6) & 7
    elif st.st_gid in groups:
        granted = (st.st_mode >> 3) & 7
    else:
        granted = st.st_mode & 7
    return granted & bits == bits


def _owner_text(st: os.stat_result) -> str:
    group = group_name(st.st_gid)
    return f"{name_of(st.st_uid)}:{group} mode {stat.S_IMODE(st.st_mode):04o}"


def state_dir_open(state_dir: str) -> str | None:
    """Why ``state_dir`` is open to every local user, or ``None``: a
    folder whose mode bits let others write it (said after its name:
    ``may be written by ...``).  Whoever may write it may
    rename the hub's ``mail/`` away and put a link to a folder of theirs
    in its place -- sticky bit or not, before the hub first makes
    ``mail/``, ``queue/`` or ``spool/`` -- and the hub, which goes by the
    names, then delivers every message there and serves POP3 from it.
    The hub makes ``state_dir`` 0700; one made beforehand keeps its mode.
    A group's write is the admin's to give (``root:mailhub 0770``, made
    for the hub's user through its group): that group is trusted as the
    hub's user is."""
    try:
        st = os.stat(state_dir)  # a link the admin made: the folder counts
    except OSError:
        return None  # not there yet (made 0700) or not usable: said elsewhere
    if not stat.S_ISDIR(st.st_mode) or not st.st_mode & stat.S_IWOTH:
        return None
    return (f"may be written by every local user ({_owner_text(st)}): any of "
            "them could put a link to a folder of their own in place of its mail/ and read "
            f"every mailbox; chmod o-rwx {shlex.quote(state_dir)}")


def unreadable_by(path: str, uid: int, gid: int) -> str | None:
    """Why ``uid`` (in group ``gid``) could not read the file ``path``: the
    folder above it that user may not enter, or the file's own mode, with
    its owner and mode.  ``None`` when it could, and when ``path`` does not
    exist (what reports a missing file is elsewhere).  The folders of the
    path as given are judged as well as those of the file it leads to:
    the hub opens the given path, and a link in a folder it may not enter
    (root's 0700) is as much in the way."""
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    try:
        os.stat(real)
    except OSError:
        return None
    groups = _groups(uid, gid)
    closed = _closed_folder_on_the_way(uid, groups, path, real)
    if closed is not None:
        return closed
    st = os.stat(real)
    if not _allowed(st, uid, groups, 4, real):
        return f"{real} is {_owner_text(st)}"
    return None


def _closed_folder_on_the_way(uid: int, groups: set[int], *paths: str) -> str | None:
    """The first folder above any of ``paths`` (each as written and as
    resolved: a link's target is walked too) that ``uid`` may not enter,
    said with its owner and mode; ``None`` when every one lets it through."""
    folders: list[str] = []
    for walked in paths:
        parts = walked.split(os.sep)
        for i in range(1, len(parts)):
            folder = os.sep.join(parts[:i]) or os.sep
            if folder not in folders:
                folders.append(folder)
    for folder in folders:
        st = os.stat(folder)
        if not _allowed(st, uid, groups, 1, folder):
            return f"the folder {folder} is {_owner_text(st)}"
    return None


def unwritable_folder_by(path: str, uid: int, gid: int) -> str | None:
    """Why ``uid`` (in group ``gid``) could not make, rename or remove
    files in the folder of ``path``: a folder on the way that user may not
    enter, or the folder's own mode, with its owner and mode.  ``None``
    when it could, and when the folder does not exist (what reports that
    is elsewhere).  For what twistd writes as root and then looks after
    as ``--uid``: its log, which it rotates, and its pid file, which it
    removes at the stop.  Those files are root's, so a sticky folder
    (``/tmp``, mode 1777) is no place for them unless ``uid`` owns it:
    there only a file's owner or the folder's may remove or rename it
    (the kernel's restricted deletion), whatever the write bits grant."""
    folder = os.path.dirname(os.path.abspath(path))
    real = os.path.realpath(folder)
    try:
        st = os.stat(real)
    except OSError:
        return None
    groups = _groups(uid, gid, own_group=False)  # as twistd's switch leaves them
    closed = _closed_folder_on_the_way(uid, groups, folder, real)
    if closed is not None:
        return closed
    if not _allowed(st, uid, groups, 3, real):
        return f"the folder {real} is {_owner_text(st)}"
    if st.st_mode & stat.S_ISVTX and uid not in (0, st.st_uid):
        return (f"the folder {real} is {_owner_text(st)}, sticky: only a file's owner "
                f"or the folder's may remove or rename it, and twistd makes it as root")
    return None
