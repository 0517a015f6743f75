"""Root's ``mailhub`` commands and the user the hub runs as (state_dir's
owner): the folder ``user add`` makes for the users file, and what
``check`` says about files that user could not read."""

from __future__ import annotations

import grp
import io
import os
import pwd
from pathlib import Path

import pytest
from conftest import no_logins

from txmailhub import hub_access
from txmailhub.cli import main

HUB_UID, HUB_GID = 4242, 4343  # no such user here: named "uid 4242"
PW = "mellow-quartz-harbour\n"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown for real: needs root")


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "mailhub.toml"
    path.write_text(no_logins(
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[users]\nfile = "{tmp_path / "etc" / "users.d" / "users"}"\n' + extra))
    return path


def run(config: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], out=out, err=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def _check_warnings(config: Path) -> str:
    """``mailhub check`` on ``config``, which must pass (the hub starts):
    what it warns of on stderr, the thing these tests look at."""
    code, out, err = run(config, "check")
    assert (code, out) == (0, f"{config}: ok\n"), err
    return err


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


@needs_root
def test_user_add_as_root_gives_the_folders_it_makes_to_the_state_dirs_owner(
        tmp_path: Path) -> None:
    # the walkthrough: deployment.rst's state_dir made for mailhub, users.d
    # not made; root's first `user add` made it root:root 0700 and the file
    # root's 0600, and the hub, as mailhub, could read neither
    config = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, HUB_UID, HUB_GID)
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    users_d = tmp_path / "etc" / "users.d"
    for made in (users_d, users_d / "users", users_d / "users.lock"):
        assert _owner(made) == (HUB_UID, HUB_GID), made
    assert users_d.stat().st_mode & 0o777 == 0o700
    # a folder above it that was missing is made as os.makedirs makes it,
    # root's (it may hold other files: /etc/txmailhub), and so is one there
    assert _owner(users_d.parent) == (0, 0)
    assert users_d.parent.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert _owner(tmp_path) == (0, 0)
    # the second command finds them there, and they stay the hub's
    assert run(config, "user", "add", "ann", "--password-stdin", stdin=PW)[0] == 0
    assert _owner(users_d / "users") == (HUB_UID, HUB_GID)


@needs_root
def test_user_add_as_root_leaves_a_folder_that_is_there_as_it_is(tmp_path: Path) -> None:
    config = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, HUB_UID, HUB_GID)
    users_d = tmp_path / "etc" / "users.d"
    users_d.mkdir(parents=True)
    os.chown(users_d, 5000, 5000)  # the admin's choice, kept
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    assert _owner(users_d) == (5000, 5000)
    assert _owner(users_d / "users") == (5000, 5000)  # the folder's owner, as before


def test_the_hub_owner_is_only_looked_for_by_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    assert hub_access.hub_owner(str(state)) is None  # no state_dir yet
    state.mkdir()
    monkeypatch.setattr(hub_access.os, "stat", lambda p: os.stat_result(
        (0o40700, 0, 0, 1, HUB_UID, HUB_GID, 0, 0, 0, 0)))
    monkeypatch.setattr(hub_access.os, "geteuid", lambda: 1000)
    assert hub_access.hub_owner(str(state)) is None  # not root: its own files, as before
    monkeypatch.setattr(hub_access.os, "geteuid", lambda: 0)
    assert hub_access.hub_owner(str(state)) == (HUB_UID, HUB_GID)
    monkeypatch.setattr(hub_access.os, "stat", lambda p: os.stat_result(
        (0o40700, 0, 0, 1, 0, 0, 0, 0, 0, 0)))
    assert hub_access.hub_owner(str(state)) is None  # root's: a hub that runs as root
    monkeypatch.setattr(hub_access.os, "stat", lambda p: os.stat_result(
        (0o100600, 0, 0, 1, HUB_UID, HUB_GID, 0, 0, 0, 0)))
    assert hub_access.hub_owner(str(state)) is None  # a file there: no state_dir, no owner


def test_make_folders_without_an_owner_is_makedirs(tmp_path: Path) -> None:
    # what a user other than root gets, as before: os.makedirs(folder, 0o700)
    hub_access.make_folders(str(tmp_path / "a" / "b"), None)
    os.makedirs(tmp_path / "c" / "d", 0o700)
    for one, other in ((tmp_path / "a", tmp_path / "c"), (tmp_path / "a" / "b",
                                                           tmp_path / "c" / "d")):
        assert one.stat().st_mode == other.stat().st_mode
        assert _owner(one) == _owner(other)
    hub_access.make_folders(str(tmp_path / "a" / "b"), None)  # there: fine
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError):
        hub_access.make_folders(str(tmp_path / "f"), None)


def test_make_folders_fsyncs_the_entry_of_each_folder_it_makes(tmp_path: Path,
                                                              monkeypatch) -> None:
    # `mailhub user add` with a users.d not there yet exits 0 once the new
    # file is durable: the folders made for it must be too, each named
    # durably in its parent; a folder already there costs no fsync
    from txmailhub.store import sync

    synced: list[str] = []
    monkeypatch.setattr(sync, "fsync_dir", synced.append)
    hub_access.make_folders(str(tmp_path / "a" / "b"), None)
    assert synced == [str(tmp_path), str(tmp_path / "a")]
    synced.clear()
    hub_access.make_folders(str(tmp_path / "a" / "b"), None)
    hub_access.make_folders(str(tmp_path / "a" / "c"), None)
    assert synced == [str(tmp_path / "a")]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unreadable_by_judges_the_mode_bits_along_the_path(open_tmp: Path) -> None:
    # by the numbers only: runs as any user
    tmp_path = open_tmp
    folder = tmp_path / "d"
    folder.mkdir()
    f = folder / "users"
    f.write_text("")
    os.chmod(tmp_path, 0o755)
    me, mine = os.getuid(), os.getgid()
    os.chmod(f, 0o600)
    assert hub_access.unreadable_by(str(f), me, mine) is None  # the owner's bits
    why = hub_access.unreadable_by(str(f), HUB_UID, HUB_GID)
    assert why is not None and why.startswith(f"{f} is ") and why.endswith(" mode 0600"), why
    os.chmod(f, 0o604)
    assert hub_access.unreadable_by(str(f), HUB_UID, HUB_GID) is None  # the others' bits
    # the group's bits, when the user is in the file's group, not the others'
    assert hub_access.unreadable_by(str(f), HUB_UID, mine) is not None
    os.chmod(f, 0o640)
    assert hub_access.unreadable_by(str(f), HUB_UID, mine) is None
    os.chmod(f, 0o644)
    os.chmod(folder, 0o700)
    why = hub_access.unreadable_by(str(f), HUB_UID, HUB_GID)
    assert why is not None and why.startswith(f"the folder {folder} is "), why
    assert why.endswith(" mode 0700")
    assert hub_access.unreadable_by(str(folder / "none"), HUB_UID, HUB_GID) is None
    # a folder is passed with its search bit alone (0711): no read bit needed
    os.chmod(folder, 0o711)
    assert hub_access.unreadable_by(str(f), HUB_UID, HUB_GID) is None
    os.chmod(folder, 0o755)


def _a_supplementary_member() -> tuple[int, int, int] | None:
    """``(uid, primary gid, gid)`` of a user of this system that is in
    group gid only as a supplementary member (as mailhub in ssl-cert)."""
    import grp
    import pwd

    for g in grp.getgrall():
        for name in g.gr_mem:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            if entry.pw_gid != g.gr_gid:
                return entry.pw_uid, entry.pw_gid, g.gr_gid
    return None


@needs_root
def test_unreadable_by_counts_the_users_own_and_supplementary_groups(open_tmp: Path) -> None:
    # the hub started with another group (a state_dir of group staff) still
    # has its own group and those /etc/group lists it in, as the kernel
    # gives them at login: a key of root:ssl-cert 0640 is readable by a
    # mailhub user in ssl-cert
    import pwd

    f = open_tmp / "key"
    f.write_text("")
    os.chmod(f, 0o640)
    nobody = pwd.getpwnam("nobody")
    os.chown(f, 0, nobody.pw_gid)
    assert hub_access.unreadable_by(str(f), nobody.pw_uid, HUB_GID) is None
    member = _a_supplementary_member()
    if member is None:
        pytest.skip("no user of this system has a supplementary group")
    uid, _, group = member
    os.chown(f, 0, group)
    assert hub_access.unreadable_by(str(f), uid, HUB_GID) is None
    assert hub_access.unreadable_by(str(f), HUB_UID, HUB_GID) is not None


@needs_root
def test_unreadable_by_names_an_owner_and_group_without_names_by_number(
        open_tmp: Path) -> None:
    f = open_tmp / "users"
    f.write_text("")
    os.chmod(f, 0o600)
    os.chown(f, HUB_UID, HUB_GID)
    assert hub_access.unreadable_by(str(f), 5000, 5000) == f"{f} is uid 4242:4343 mode 0600"


def test_unreadable_by_judges_the_folders_of_the_path_as_configured(open_tmp: Path) -> None:
    """The configured path is what the hub opens: a symbolic link in a
    folder the hub's user may not enter (a users file kept as a link in
    root's 0700 folder) is as much in the way as the folders of the file
    it leads to, which alone were looked at (``check`` said nothing, and
    the hub could not read the file)."""
    closed, opened = open_tmp / "closed", open_tmp / "open"
    closed.mkdir()
    opened.mkdir()
    os.chmod(opened, 0o755)
    (opened / "users").write_text("")
    os.chmod(opened / "users", 0o644)
    (closed / "users").symlink_to(opened / "users")
    os.chmod(closed, 0o700)
    assert hub_access.unreadable_by(str(opened / "users"), HUB_UID, HUB_GID) is None
    why = hub_access.unreadable_by(str(closed / "users"), HUB_UID, HUB_GID)
    assert why is not None and why.startswith(f"the folder {closed} is "), why
    os.chmod(closed, 0o755)
    # and the other way round: a link in an open folder to a file in a
    # closed one, or to a file the user may not read, which is named
    (closed / "users").unlink()
    (closed / "real").write_text("")
    os.chmod(closed / "real", 0o600)
    (opened / "link").symlink_to(closed / "real")
    why = hub_access.unreadable_by(str(opened / "link"), HUB_UID, HUB_GID)
    assert why is not None and why.startswith(f"{closed / 'real'} is "), why
    os.chmod(closed / "real", 0o644)
    os.chmod(closed, 0o700)
    why = hub_access.unreadable_by(str(opened / "link"), HUB_UID, HUB_GID)
    assert why is not None and why.startswith(f"the folder {closed} is "), why
    os.chmod(closed, 0o755)


@needs_root
def test_check_as_root_warns_of_files_the_state_dirs_owner_cannot_read(open_tmp: Path) -> None:
    tmp_path = open_tmp
    etc = tmp_path / "etc"
    etc.mkdir()
    os.chmod(tmp_path, 0o755)
    aliases, auth = etc / "aliases", etc / "auth"
    aliases.write_text("")
    auth.write_text("relay-user:relay-password\n")
    os.chmod(aliases, 0o600)
    os.chmod(auth, 0o640)  # root:root: the hub's user is not in the group
    config = _config(tmp_path, f'[aliases]\nfile = "{aliases}"\n[relay]\n'
                               f'smarthost = "smtp.example.net:587"\n'
                               f'smarthost_auth_file = "{auth}"\n')
    state = tmp_path / "state"
    state.mkdir()
    # root's users.d, as the old `user add` made it
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    assert _owner(etc / "users.d") == (0, 0)
    assert run(config, "check") == (0, f"{config}: ok\n", "")  # state_dir root's: no one else
    os.chown(state, HUB_UID, HUB_GID)
    err = _check_warnings(config)  # warnings: the hub still starts
    lines = err.splitlines()
    users = etc / "users.d" / "users"
    assert lines == [
        f"warning: {config}: [users] file: {users} cannot be read by uid 4242, the owner of "
        f"state_dir {state} and so the user the hub runs as: the folder {etc / 'users.d'} is "
        f"root:root mode 0700; as root, give it to that user (chown -R 4242:4343 "
        f"{etc / 'users.d'}), then run the mailhub user commands as that user "
        "(docs/deployment.rst) (at line 6)",
        f"warning: {config}: [aliases] file: {aliases} cannot be read by uid 4242, the owner of "
        f"state_dir {state} and so the user the hub runs as: {aliases} is root:root mode 0600; "
        f"chmod 644 {aliases} (docs/deployment.rst) (at line 8)",
        # each with its fix, as the users and TLS files had (root's aliases
        # file, no secret, readable by all; the password the hub's group's)
        f"warning: {config}: [relay] smarthost_auth_file: {auth} cannot be read by uid 4242, "
        f"the owner of state_dir {state} and so the user the hub runs as: {auth} is root:root "
        f"mode 0640; chgrp 4343 {auth} && chmod 640 {auth} (docs/deployment.rst) (at line 11)",
    ], err
    # mended as the warnings say: quiet
    for path in (etc / "users.d", users):
        os.chown(path, HUB_UID, HUB_GID)
    os.chmod(aliases, 0o644)
    os.chown(auth, 0, HUB_GID)
    assert run(config, "check") == (0, f"{config}: ok\n", "")


@needs_root
def test_check_as_root_says_the_line_of_a_tls_file_the_hubs_user_cannot_read(
        open_tmp: Path) -> None:
    # each at the line of the key naming the file, as the config's own
    # problems with that key are: [tls] certificate and key apart
    from conftest import make_certificate

    cert, key = make_certificate(open_tmp / "tls", "mail.example.org")
    os.chmod(open_tmp / "tls", 0o755)
    for path in (cert, key):
        os.chmod(path, 0o600)
    config = _config(open_tmp, '[tls]\n'                       # 7
                               '# the chain, then its key\n'    # 8
                               f'certificate = "{cert}"\n'     # 9
                               '\n'                            # 10
                               f'key = "{key}"\n')             # 11
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, HUB_UID, HUB_GID)
    err = _check_warnings(config)
    lines = [line for line in err.splitlines() if "[tls]" in line]
    assert lines == [
        f"warning: {config}: [tls] certificate: {cert} cannot be read by uid 4242, the owner "
        f"of state_dir {state} and so the user the hub runs as: {cert} is root:root mode 0600; "
        f"chgrp 4343 {cert} && chmod 640 {cert} (docs/deployment.rst) (at line 9)",
        f"warning: {config}: [tls] key: {key} cannot be read by uid 4242, the owner of "
        f"state_dir {state} and so the user the hub runs as: {key} is root:root mode 0600; "
        f"chgrp 4343 {key} && chmod 640 {key} (docs/deployment.rst) (at line 11)",
    ], err
    # mended as the warnings say (the chgrp, as root): quiet
    for path in (cert, key):
        os.chown(path, 0, HUB_GID)
        os.chmod(path, 0o640)
    err = run(config, "check")[2]
    assert not [line for line in err.splitlines() if "[tls]" in line], err


@needs_root
def test_check_as_root_says_how_to_give_a_users_file_root_made_to_the_hubs_user(
        open_tmp: Path) -> None:
    # the walkthrough: README's `check` said "mailhub user add makes it",
    # root's `user add` made users.d and the file before state_dir was
    # there (both root's), deployment.rst's `install -d -o mailhub` then
    # gave the folder to mailhub but left the file root's 0600: the hub's
    # log said it could not read it, and check named the owner and mode
    # and nothing to do about it
    tmp_path = open_tmp
    os.chmod(tmp_path, 0o755)
    config = _config(tmp_path)
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    users_d = tmp_path / "etc" / "users.d"
    users = users_d / "users"
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, HUB_UID, HUB_GID)
    os.chown(users_d, HUB_UID, HUB_GID)  # install -d -o mailhub on the folder there
    err = _check_warnings(config)
    assert err.splitlines() == [
        f"warning: {config}: [users] file: {users} cannot be read by uid 4242, the owner of "
        f"state_dir {state} and so the user the hub runs as: {users} is root:root mode 0600; "
        f"as root, give it to that user (chown -R 4242:4343 {users_d}), then run the "
        "mailhub user commands as that user (docs/deployment.rst) (at line 6)"], err
    # the chown it gives mends it
    for path in (users_d, users, users_d / "users.lock"):
        os.chown(path, HUB_UID, HUB_GID)
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    # a users file in a folder that holds other files (the config's own):
    # never given to the hub's user whole, a users.d of its own instead
    os.chown(users, 0, 0)
    (users_d / "mailhub.toml").write_text("")
    err = run(config, "check")[2]
    assert err.splitlines() == [
        f"warning: {config}: [users] file: {users} cannot be read by uid 4242, the owner of "
        f"state_dir {state} and so the user the hub runs as: {users} is root:root mode 0600; "
        f"{users_d} holds other files than the users file, so it is not to be given to the "
        "hub's user: keep the users file in a folder of its own and set [users] file to a "
        "file in it -- as root, make it for the user the hub runs as: install -d -o 4242 -g "
        f"4343 -m 0700 {users_d / 'users.d'} (docs/deployment.rst) (at line 6)"], err


def _set_acl(path: Path, *entries: tuple[int, int, int]) -> None:
    """An access ACL, as ``setfacl`` writes it: USER_OBJ, USER..., GROUP_OBJ,
    GROUP..., MASK, OTHER, in that order (the kernel checks it)."""
    import struct

    raw = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", raw)
    except (AttributeError, OSError) as e:  # no ACLs here
        pytest.skip(f"no POSIX ACLs on this filesystem: {e}")


_ANY = 0xFFFFFFFF  # the id of the entries that have none


def test_a_folder_whose_acl_lets_the_user_write_is_not_a_warning(open_tmp: Path) -> None:
    # ``setfacl -m u:mailhub:rwx /var/log/txmailhub`` on a folder of
    # root's: its mode reads 0775 root:root, and the warning said the hub
    # may not write there (it may: the kernel goes by the ACL)
    logs = open_tmp / "logs"
    logs.mkdir()
    os.chmod(logs, 0o755)
    log = str(logs / "mailhub.log")
    assert hub_access.unwritable_folder_by(log, HUB_UID, HUB_GID) is not None
    _set_acl(logs, (0x01, 7, _ANY), (0x02, 7, HUB_UID), (0x04, 5, _ANY), (0x10, 7, _ANY),
             (0x20, 5, _ANY))
    assert hub_access.unwritable_folder_by(log, HUB_UID, HUB_GID) is None
    # the mask limits a named user's entry: r-x for all but the owner
    _set_acl(logs, (0x01, 7, _ANY), (0x02, 7, HUB_UID), (0x04, 5, _ANY), (0x10, 5, _ANY),
             (0x20, 5, _ANY))
    assert hub_access.unwritable_folder_by(log, HUB_UID, HUB_GID) is not None
    # a named group's entry, and a named user's that grants less than the
    # others' bits (the user's entry decides, not the others')
    _set_acl(logs, (0x01, 7, _ANY), (0x04, 5, _ANY), (0x08, 7, HUB_GID), (0x10, 7, _ANY),
             (0x20, 5, _ANY))
    assert hub_access.unwritable_folder_by(log, HUB_UID, HUB_GID) is None
    assert hub_access.unwritable_folder_by(log, HUB_UID, HUB_GID + 1) is not None
    _set_acl(logs, (0x01, 7, _ANY), (0x02, 0, HUB_UID), (0x04, 5, _ANY), (0x10, 7, _ANY),
             (0x20, 7, _ANY))
    assert hub_access.unwritable_folder_by(log, HUB_UID, HUB_GID) is not None
    assert hub_access.unwritable_folder_by(log, HUB_UID + 1, HUB_GID) is None
    # with a mask of 0 (the mode's group bits clear) Linux goes by the
    # mode alone: the others' rwx, whatever the named user's entry says
    _set_acl(logs, (0x01, 7, _ANY), (0x02, 0, HUB_UID), (0x04, 0, _ANY), (0x10, 0, _ANY),
             (0x20, 7, _ANY))
    assert hub_access.unwritable_folder_by(log, HUB_UID, HUB_GID) is None


def test_a_sticky_folder_the_user_does_not_own_is_a_warning(open_tmp: Path) -> None:
    # --pidfile /tmp/mailhub.pid: /tmp (1777) lets every user make files,
    # but the pid file twistd writes there is root's, and in a sticky
    # folder only its owner or the folder's may remove it: the hub's user
    # could not at the stop, and the warning said nothing
    run = open_tmp / "run"
    run.mkdir()
    os.chmod(run, 0o1777)
    pid = str(run / "mailhub.pid")
    why = hub_access.unwritable_folder_by(pid, HUB_UID, HUB_GID)
    assert why is not None and f"the folder {run} is " in why and "mode 1777" in why, why
    assert "sticky" in why, why
    # the same folder without the sticky bit lets anyone remove the file
    os.chmod(run, 0o777)
    assert hub_access.unwritable_folder_by(pid, HUB_UID, HUB_GID) is None
    # a sticky folder the user owns: it may remove any file in it
    os.chmod(run, 0o1777)
    owner = os.stat(run).st_uid
    assert hub_access.unwritable_folder_by(pid, owner, HUB_GID) is None
    if os.geteuid() == 0:
        os.chown(run, HUB_UID, HUB_GID)
        os.chmod(run, 0o1755)
        assert hub_access.unwritable_folder_by(pid, HUB_UID, HUB_GID) is None


def test_a_file_an_acl_lets_the_user_read_is_readable(open_tmp: Path) -> None:
    # ``check``: a key of root:root 0600 with ``setfacl -m u:mailhub:r``
    key = open_tmp / "key.pem"
    key.write_text("")
    os.chmod(key, 0o600)
    assert hub_access.unreadable_by(str(key), HUB_UID, HUB_GID) is not None
    _set_acl(key, (0x01, 6, _ANY), (0x02, 4, HUB_UID), (0x04, 0, _ANY), (0x10, 4, _ANY),
             (0x20, 0, _ANY))
    assert hub_access.unreadable_by(str(key), HUB_UID, HUB_GID) is None
    assert hub_access.unreadable_by(str(key), HUB_UID + 1, HUB_GID) is not None


def test_make_folders_fsyncs_what_it_made_though_another_command_made_the_last(
        tmp_path: Path, monkeypatch) -> None:
    # another `mailhub user add` made users.d between the look and the
    # mkdir: the folder above it, made here, must still be named durably
    from txmailhub.store import sync

    real_mkdir = os.mkdir

    def made_meanwhile(path: str, mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        raise FileExistsError(17, "File exists", path)

    synced: list[str] = []
    monkeypatch.setattr(sync, "fsync_dir", synced.append)
    monkeypatch.setattr(hub_access.os, "mkdir", made_meanwhile)
    hub_access.make_folders(str(tmp_path / "a" / "b"), None)
    assert synced == [str(tmp_path), str(tmp_path / "a")]


@needs_root
def test_check_as_root_before_state_dir_says_user_add_would_make_the_file_roots(
        tmp_path: Path) -> None:
    # the walkthrough's first step into the trap above: README's `check`,
    # run as root before deployment.rst's folders, said "mailhub user add
    # makes it", and root's user add then made a file the hub cannot read
    config = _config(tmp_path)
    users = tmp_path / "etc" / "users.d" / "users"
    err = _check_warnings(config)
    assert err == (
        f"warning: the users file {users} does not exist yet (mailhub user add makes it); "
        "until then local mail is refused with 451; there is no state_dir yet, so root's "
        "mailhub user add would make it root's, mode 0600: for a hub that runs as its own "
        "user, make state_dir for that user first (docs/deployment.rst)\n")
    # once state_dir is there (the hub's user's, or root's for a hub run as
    # root), user add makes the file for its owner: the line as before
    state = tmp_path / "state"
    state.mkdir()
    for owner in ((HUB_UID, HUB_GID), (0, 0)):
        os.chown(state, *owner)
        assert run(config, "check")[2] == (
            f"warning: the users file {users} does not exist yet (mailhub user add makes "
            "it); until then local mail is refused with 451\n")


@needs_root
def test_check_as_root_before_state_dir_is_quiet_about_roots_file_in_the_hubs_users_d(
        tmp_path: Path) -> None:
    # users.d made for the hub's user first (deployment.rst's install -d),
    # state_dir not yet: root's user add gives the file to users.d's owner,
    # so "would make it root's" was false there
    config = _config(tmp_path)
    users_d = tmp_path / "etc" / "users.d"
    users_d.mkdir(parents=True, mode=0o700)
    os.chown(users_d, HUB_UID, HUB_GID)
    users = users_d / "users"
    err = _check_warnings(config)
    assert err == (f"warning: the users file {users} does not exist yet (mailhub user add "
                   "makes it); until then local mail is refused with 451\n")
    # and so it is: the file is that user's
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    assert _owner(users) == (HUB_UID, HUB_GID)
    os.unlink(users)
    # a users.d of root's: the file would be root's, as said
    os.chown(users_d, 0, 0)
    assert "there is no state_dir yet" in run(config, "check")[2]


@needs_root
def test_check_as_root_never_says_to_chgrp_a_tls_file_another_group_reads(
        open_tmp: Path) -> None:
    # a key root:ssl-cert 0640 (Debian's group for services that share a
    # key): "chgrp mailhub key" would take it from that group, and every
    # other service reading it through that group would lose it.  The hub's
    # user is added to the group instead (twistd's --uid and systemd's
    # User= both start it with the groups /etc/group lists it in)
    import pwd

    from conftest import make_certificate

    cert, key = make_certificate(open_tmp / "tls", "mail.example.org")
    os.chmod(open_tmp / "tls", 0o755)
    os.chown(key, 0, 4545)  # a group of its own; neither root's nor the hub's
    os.chmod(key, 0o640)
    config = _config(open_tmp, f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    state = open_tmp / "state"
    state.mkdir()
    nobody = pwd.getpwnam("nobody")
    for hub, says in (((nobody.pw_uid, nobody.pw_gid), "usermod -a -G 4545 nobody"),
                      # the user is named by its uid, not by its group's number
                      ((nobody.pw_uid, HUB_GID), "usermod -a -G 4545 nobody"),
                      ((HUB_UID, HUB_GID), "SupplementaryGroups=4545")):
        os.chown(state, *hub)
        err = _check_warnings(config)
        lines = [line for line in err.splitlines() if "[tls] key" in line]
        assert len(lines) == 1, err
        assert "chgrp" not in lines[0] and says in lines[0], lines[0]
    # the key's group and mode are left alone by what is said
    assert (key.stat().st_gid, key.stat().st_mode & 0o777) == (4545, 0o640)


def _aliases_advice(open_tmp: Path, name: str, gid: int, mode: int) -> tuple[Path, Path, str]:
    """The aliases file ``name`` (root's, group ``gid``, ``mode``), the
    config naming it, and ``check``'s one line about it, the hub's user
    being another: (file, config, line)."""
    aliases = open_tmp / name
    aliases.write_text("postmaster: root\n")
    os.chown(aliases, 0, gid)
    os.chmod(aliases, mode)
    config = _config(open_tmp, f'[aliases]\nfile = "{aliases}"\n')
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, HUB_UID, HUB_GID)
    err = _check_warnings(config)
    lines = [line for line in err.splitlines() if "[aliases] file" in line]
    assert len(lines) == 1, err
    return aliases, config, lines[0]


@needs_root
def test_check_as_root_says_chmod_644_for_an_aliases_file_another_group_reads(
        open_tmp: Path) -> None:
    # root:mailgrp 0640 aliases: no secret, readable by all as /etc/aliases
    # is; joining the file's group would hand the hub what else it reads
    aliases, config, line = _aliases_advice(open_tmp, "aliases", 4545, 0o640)
    assert f"chmod 644 {aliases} (docs/deployment.rst)" in line, line
    assert "usermod" not in line and "SupplementaryGroups" not in line, line
    os.chmod(aliases, 0o644)
    assert "[aliases] file" not in _check_warnings(config)


@needs_root
@pytest.mark.parametrize(("gid", "mode"), [(0, 0o600), (4545, 0o640)])
def test_check_as_root_says_chmod_644_quoted_for_the_shell(open_tmp: Path, gid: int,
                                                            mode: int) -> None:
    # the advice is a command to paste: a path with a space is one word
    # of it, whichever group the file has
    aliases, _, line = _aliases_advice(open_tmp, "mail aliases", gid, mode)
    assert f"; chmod 644 '{aliases}' (docs/deployment.rst)" in line, line


@needs_root
def test_check_as_root_says_to_chgrp_a_tls_file_only_roots_group_reads(
        open_tmp: Path) -> None:
    # root:root 0640: the group that reads it is root's, which the hub's
    # user is never to join -- the file's group is to be the hub's
    from conftest import make_certificate

    cert, key = make_certificate(open_tmp / "tls", "mail.example.org")
    os.chmod(open_tmp / "tls", 0o755)
    os.chown(key, 0, 0)
    os.chmod(key, 0o640)
    config = _config(open_tmp, f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, HUB_UID, HUB_GID)
    err = _check_warnings(config)
    lines = [line for line in err.splitlines() if "[tls] key" in line]
    assert len(lines) == 1, err
    assert f"chgrp 4343 {key} && chmod 640 {key}" in lines[0], lines[0]
    assert "usermod" not in lines[0] and "SupplementaryGroups" not in lines[0], lines[0]


@needs_root
@pytest.mark.parametrize(("uid", "owner"), [
    (HUB_UID, str(HUB_UID)),  # no name, no login group: the user alone
    (pwd.getpwnam("daemon").pw_uid,
     "daemon:" + grp.getgrgid(pwd.getpwnam("daemon").pw_gid).gr_name)])
def test_the_chown_for_a_state_dir_chowned_to_the_user_alone_does_not_give_root_s_group(
        open_tmp: Path, uid: int, owner: str) -> None:
    # `chown mailhub /var/lib/txmailhub` keeps root's group: the users
    # folder's chown said "mailhub:root", handing root's group the users
    # file's hashes with the folder.  The user's login group, as `chown
    # mailhub:` gives it
    etc = open_tmp / "etc"
    etc.mkdir()
    os.chmod(open_tmp, 0o755)
    config = _config(open_tmp)
    state = open_tmp / "state"
    state.mkdir()
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    os.chown(state, uid, 0)
    err = _check_warnings(config)
    assert f"(chown -R {owner} {etc / 'users.d'})" in err, err
