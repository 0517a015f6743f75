"""trusted_links.open_folder: the folder of a file a command rewrites,
opened without following a link on the way."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from txmailhub.errors import UsersFileError
from txmailhub.trusted_links import identity_in, open_folder


def test_the_folder_is_the_one_judged_and_a_link_on_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "users").write_text("x\n")
    fd = open_folder(str(tmp_path / "a" / "b" / "users"), UsersFileError)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "a" / "b"))
        assert identity_in("users", fd) == (os.stat(tmp_path / "a" / "b" / "users").st_dev,
                                            os.stat(tmp_path / "a" / "b" / "users").st_ino)
        assert identity_in("none", fd) is None
    finally:
        os.close(fd)
    (tmp_path / "c").symlink_to(tmp_path / "a")
    with pytest.raises(UsersFileError, match="symbolic link"):
        open_folder(str(tmp_path / "c" / "b" / "users"), UsersFileError)


@pytest.mark.skipif(os.geteuid() != 0, reason="root runs the check as another user")
def test_a_folder_on_the_way_others_may_search_but_not_read_is_passed() -> None:
    # a 0711 folder on the way (a home): the hub's user running
    # `mailhub user add` may pass it, not list it; opening it to read
    # refused the change with EACCES
    top = Path(tempfile.mkdtemp(prefix="search-only-", dir="/tmp"))
    try:
        os.chmod(top, 0o711)
        inner = top / "users.d"
        inner.mkdir()
        os.chown(inner, 65534, 65534)
        # (imported first: nobody may not read the interpreter's library)
        code = ("import os, sys;"
                "from txmailhub.trusted_links import open_folder;"
                "from txmailhub.errors import UsersFileError;"
                "os.setgid(65534); os.setuid(65534);"
                "os.close(open_folder(sys.argv[1], UsersFileError))")
        done = subprocess.run([sys.executable, "-c", code, str(inner / "users")],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert done.returncode == 0, done.stderr
    finally:
        for p in (top / "users.d", top):
            os.rmdir(p)
