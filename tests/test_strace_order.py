"""``strace_order`` itself, on hand-written logs: the integration tests
that trace a real hub (``tests/integration/test_durable_order.py``) can
only pass for the right reason if it sees each kind of fault."""

from __future__ import annotations

from strace_order import Trace

_IN_ORDER = """\
100 10:00:00.000001 openat(AT_FDCWD, "/s/spool/1", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 7
100 10:00:00.000002 write(7, "Subject: x\\n\\nx\\n", 14) = 14
100 10:00:00.000003 io_submit(0x7f, 1, [{aio_data=0x1, aio_lio_opcode=IOCB_CMD_FSYNC, \
aio_fildes=7}]) = 1
100 10:00:00.000004 io_getevents(0x7f, 0, 256, [{data=0x1, obj=0x7f, res=0, res2=0}], \
{tv_sec=0, tv_nsec=0}) = 1
100 10:00:00.000005 rename("/s/spool/1", "/s/mail/a/new/m1") = 0
100 10:00:00.000006 openat(AT_FDCWD, "/s/mail/a/new", O_RDONLY|O_CLOEXEC) = 8
101 10:00:00.000007 fsync(8 <unfinished ...>
100 10:00:00.000008 close(7) = 0
101 10:00:00.000009 <... fsync resumed>) = 0
100 10:00:00.000010 sendto(5, "250 2.0.0 X Message accepted\\r\\n", 30, 0, NULL, 0) = 30
"""
_SCRATCH = (r"/spool/",)


def _problems(log: str) -> list[str]:
    trace = Trace.parse(log.splitlines())
    [ack] = trace.sends("250 ")
    return trace.unsynced_before(ack, exempt=_SCRATCH)


def test_a_log_in_order_has_no_problem() -> None:
    assert _problems(_IN_ORDER) == []


def test_a_250_before_the_folder_s_fsync_returned_is_seen() -> None:
    lines = _IN_ORDER.splitlines()
    # the 250 sent while the worker's fsync of new/ still runs
    lines.insert(8, lines.pop(9))
    [problem] = _problems("\n".join(lines))
    assert problem.startswith("folder /s/mail/a/new not fsynced after")


def test_a_file_named_before_its_data_is_durable_is_seen() -> None:
    # the data's fsync asked for, but its completion read after the rename
    lines = _IN_ORDER.splitlines()
    lines.insert(4, lines.pop(3))
    [problem] = _problems("\n".join(lines))
    assert problem.startswith("data of /s/spool/1 not fsynced before it was named "
                              "/s/mail/a/new/m1")


def test_an_fsync_begun_before_the_rename_does_not_cover_it() -> None:
    # a folder's fsync covers only the entries made before it began
    lines = _IN_ORDER.splitlines()
    rename = lines.pop(4)
    lines.insert(6, rename)  # after the openat and the fsync's start of new/
    [problem] = _problems("\n".join(lines))
    assert problem.startswith("folder /s/mail/a/new not fsynced after")


def test_a_write_after_the_fsync_began_is_not_covered() -> None:
    lines = _IN_ORDER.splitlines()
    lines.insert(3, '100 10:00:00.000003 write(7, "more", 4) = 4')
    [problem] = _problems("\n".join(lines))
    assert problem.startswith("data of /s/spool/1 not fsynced")


def test_a_failed_aio_fsync_covers_nothing() -> None:
    log = _IN_ORDER.replace("res=0, res2=0", "res=-5, res2=0")
    [problem] = _problems(log)
    assert problem.startswith("data of /s/spool/1 not fsynced")


def test_a_link_names_the_same_file_and_an_unlink_needs_its_folder_synced() -> None:
    log = """\
100 10:00:00.000001 openat(AT_FDCWD, "/s/spool/1", O_WRONLY|O_CREAT|O_EXCL, 0600) = 7
100 10:00:00.000002 write(7, "x", 1) = 1
100 10:00:00.000003 fsync(7) = 0
100 10:00:00.000004 link("/s/spool/1", "/s/q/A.msg") = 0
100 10:00:00.000005 unlink("/s/q/old.json") = 0
100 10:00:00.000006 openat(AT_FDCWD, "/s/q", O_RDONLY|O_CLOEXEC) = 8
100 10:00:00.000007 fsync(8) = 0
100 10:00:00.000008 unlink("/s/q/B.msg") = 0
100 10:00:00.000009 sendto(5, "250 2.0.0 X\\r\\n", 13, 0, NULL, 0) = 13
"""
    [problem] = _problems(log)
    assert problem.startswith("folder /s/q not fsynced after") and "B.msg" in problem


def _all_problems(log: str, **kwargs) -> list[str]:
    trace = Trace.parse(log.splitlines())
    [ack] = trace.sends("250 ")
    return trace.unsynced_before(ack, exempt=_SCRATCH, **kwargs)


# a message written in tmp/, renamed into new/ before its data's fsync:
# both folders synced after, so the data is the only fault
_UNSYNCED_DATA_TAIL = """\
100 10:00:00.000005 write(7, "x", 1) = 1
100 10:00:00.000006 rename("/s/mail/a/tmp/m1", "/s/mail/a/new/m1") = 0
100 10:00:00.000007 openat(AT_FDCWD, "/s/mail/a/new", O_RDONLY|O_CLOEXEC) = 8
100 10:00:00.000008 fsync(8) = 0
100 10:00:00.000009 openat(AT_FDCWD, "/s/mail/a/tmp", O_RDONLY|O_CLOEXEC) = 9
100 10:00:00.000010 fsync(9) = 0
100 10:00:00.000011 sendto(5, "250 2.0.0 X\\r\\n", 13, 0, NULL, 0) = 13
"""


def test_a_descriptor_closed_by_one_thread_and_reused_by_another_is_followed() -> None:
    # close(2) frees the number as it begins: another thread's open may
    # return it before strace shows the close's return
    log = """\
101 10:00:00.000001 openat(AT_FDCWD, "/s/other", O_RDONLY|O_CLOEXEC) = 7
101 10:00:00.000002 close(7 <unfinished ...>
100 10:00:00.000003 openat(AT_FDCWD, "/s/mail/a/tmp/m1", O_WRONLY|O_CREAT|O_EXCL, 0600) = 7
101 10:00:00.000004 <... close resumed>) = 0
""" + _UNSYNCED_DATA_TAIL
    [problem] = _all_problems(log)
    assert problem.startswith("data of /s/mail/a/tmp/m1 not fsynced")


def test_a_forked_child_has_its_own_descriptors() -> None:
    # a child (a command the hub runs) closing its copy of a descriptor
    # leaves the parent's open; threads (CLONE_FILES) share theirs
    log = """\
100 10:00:00.000001 openat(AT_FDCWD, "/s/mail/a/tmp/m1", O_WRONLY|O_CREAT|O_EXCL, 0600) = 7
100 10:00:00.000002 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|\
SIGCHLD, child_tidptr=0x7f) = 200
200 10:00:00.000003 close(7) = 0
200 10:00:00.000004 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY) = 7
""" + _UNSYNCED_DATA_TAIL
    [problem] = _all_problems(log)
    assert problem.startswith("data of /s/mail/a/tmp/m1 not fsynced")


def test_a_thread_shares_the_descriptors_of_its_process() -> None:
    log = """\
100 10:00:00.000001 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|\
CLONE_SYSVSEM|CLONE_SETTLS, exit_signal=0, stack=0x7f, stack_size=0x7fff00} <unfinished ...>
101 10:00:00.000002 openat(AT_FDCWD, "/s/mail/a/tmp/m1", O_WRONLY|O_CREAT|O_EXCL, 0600) = 7
100 10:00:00.000003 <... clone3 resumed> => {parent_tid=[101]}, 88) = 101
101 10:00:00.000004 fsync(7) = 0
""" + _UNSYNCED_DATA_TAIL.replace('write(7, "x", 1) = 1', 'fsync(7) = 0').replace(
        "100 10:00:00.000005", "101 10:00:00.000005")
    lines = log.splitlines()
    lines.insert(3, '100 10:00:00.000003 write(7, "x", 1) = 1')  # the main thread writes
    assert _all_problems("\n".join(lines)) == []


def test_an_aio_fsync_submitted_before_the_rename_does_not_cover_it() -> None:
    # the request was in the kernel's hands before io_submit returned
    log = """\
100 10:00:00.000001 openat(AT_FDCWD, "/s/mail/a/tmp/m1", O_WRONLY|O_CREAT|O_EXCL, 0600) = 7
100 10:00:00.000002 write(7, "x", 1) = 1
100 10:00:00.000003 fsync(7) = 0
100 10:00:00.000004 openat(AT_FDCWD, "/s/mail/a/new", O_RDONLY|O_CLOEXEC) = 8
100 10:00:00.000005 openat(AT_FDCWD, "/s/mail/a/tmp", O_RDONLY|O_CLOEXEC) = 9
100 10:00:00.000006 fsync(9 <unfinished ...>
101 10:00:00.000007 io_submit(0x7f, 1, [{aio_data=0x2, aio_lio_opcode=IOCB_CMD_FSYNC, \
aio_fildes=8}] <unfinished ...>
102 10:00:00.000008 rename("/s/mail/a/tmp/m1", "/s/mail/a/new/m1") = 0
101 10:00:00.000009 <... io_submit resumed>) = 1
100 10:00:00.000010 <... fsync resumed>) = 0
100 10:00:00.000011 io_getevents(0x7f, 0, 256, [{data=0x2, obj=0x7f, res=0, res2=0}], \
{tv_sec=0, tv_nsec=0}) = 1
100 10:00:00.000012 sendto(5, "250 2.0.0 X\\r\\n", 13, 0, NULL, 0) = 13
"""
    problems = _all_problems(log)
    assert sorted(p.split(" not fsynced")[0] for p in problems) == [
        "folder /s/mail/a/new", "folder /s/mail/a/tmp"]


def test_only_the_steps_within_the_folder_asked_for_are_judged() -> None:
    # a process under test also writes what is none of the test's business
    # (Twisted's plugin cache, a Python bytecode file, each renamed into
    # place with no fsync at all)
    log = """\
100 10:00:00.000001 openat(AT_FDCWD, "/src/plugins/x.new", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3
100 10:00:00.000002 write(3, "cache", 5) = 5
100 10:00:00.000003 rename("/src/plugins/x.new", "/src/plugins/dropin.cache") = 0
100 10:00:00.000004 rename("/s/mail/a/tmp/m1", "/s/mail/a/new/m1") = 0
100 10:00:00.000005 sendto(5, "250 2.0.0 X\\r\\n", 13, 0, NULL, 0) = 13
"""
    assert len(_all_problems(log)) == 5
    assert sorted(_all_problems(log, within="/s")) == [
        'folder /s/mail/a/new not fsynced after: 100 10:00:00.000004 rename('
        '"/s/mail/a/tmp/m1", "/s/mail/a/new/m1") = 0',
        'folder /s/mail/a/tmp not fsynced after: 100 10:00:00.000004 rename('
        '"/s/mail/a/tmp/m1", "/s/mail/a/new/m1") = 0']
    assert _all_problems(log, within="/s/mail/a/new/m") == _all_problems(log, within="/nowhere")


_BY_FOLDER = """\
100 10:00:00.000001 openat(AT_FDCWD, "/s/etc", O_RDONLY|O_DIRECTORY|O_CLOEXEC) = 6
100 10:00:00.000002 openat(6, ".users.tmp", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 7
100 10:00:00.000003 write(7, "dave x\\n", 7) = 7
100 10:00:00.000004 fsync(7) = 0
100 10:00:00.000005 renameat(6, ".users.tmp", 6, "users") = 0
100 10:00:00.000006 fsync(6) = 0
100 10:00:00.000007 sendto(5, "250 done\\r\\n", 10, 0, NULL, 0) = 10
"""


def test_names_relative_to_a_folder_descriptor_are_that_folders() -> None:
    # a file written and renamed inside a folder held open (``dir_fd``):
    # the rename is in /s/etc, and its fsync of that descriptor covers it
    trace = Trace.parse(_BY_FOLDER.splitlines())
    renamed = [e for e in trace.events if e.kind == "name" and e.call == "renameat"]
    assert [(e.path, e.folder) for e in renamed] == [("/s/etc/users", "/s/etc")]
    assert _problems(_BY_FOLDER) == []
    lines = _BY_FOLDER.splitlines()
    del lines[5]  # no fsync of the folder after the rename
    problems = _problems("\n".join(lines))  # (its old name and its new)
    assert problems and all(p.startswith("folder /s/etc not fsynced after") for p in problems)
