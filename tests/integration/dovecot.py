"""Dovecot as a second reader of a hub's Maildir, for the interop tests.

Dovecot runs without any listener or master process: ``doveadm`` (fetch,
flags, save, expunge) and its ``pop3`` binary in pre-authenticated mode
(commands on stdin, replies on stdout), both with a minimal config in a
folder of the test, the mailbox its ``mail_location``.
Dovecot refuses to touch mail as root: when the tests run as root, the
Maildir is handed to ``nobody`` before every Dovecot command (the hub, as
root, still reads and writes it).  Every Dovecot run must leave its
stderr empty: a size in a file name that disagrees with the file is an
error there ("Cached message size smaller than expected", "Broken
physical size", "Deleting corrupted cache record").
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

DOVEADM = shutil.which("doveadm")
POP3_BINARY = next(
    (p for p in ("/usr/lib/dovecot/pop3", "/usr/libexec/dovecot/pop3") if os.access(p, os.X_OK)),
    None,
)


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


MISSING = (
    "doveadm is not installed" if DOVEADM is None
    else "Dovecot's pop3 binary is not installed" if POP3_BINARY is None
    else "Dovecot refuses root, and there is no user nobody to run it as"
    if os.geteuid() == 0 and _nobody() is None
    else None
)


def _complaints(stderr: bytes) -> list[bytes]:
    """The lines of a Dovecot program's stderr but its Info lines (the
    pop3 binary says "Disconnected: Logged out ..." at the end)."""
    return [line for line in stderr.splitlines() if b": Info: " not in line]


class Dovecot:
    """Dovecot pointed at ``maildir``, its config and state under ``folder``.

    As root, ``folder`` and every folder from it down to ``maildir`` must
    let ``nobody`` pass: they are opened for it (``folder``'s own parents
    are the caller's to open)."""

    def __init__(self, folder: Path, maildir: Path) -> None:
        self.folder = folder
        self.maildir = maildir
        self.home = folder / "home"
        for sub in ("run", "state", "home"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            nobody = _nobody()
            assert nobody is not None
            self.owner: tuple[int, int] | None = (nobody.pw_uid, nobody.pw_gid)
            user, group = "nobody", grp.getgrgid(nobody.pw_gid).gr_name
            # the walk below opens every folder up to one of ``folder``'s
            # parents: a Maildir in another tree would open system folders
            assert maildir.is_relative_to(folder.parent), (maildir, folder)
            for up in (folder, *maildir.parents):
                if up in folder.parents:
                    break
                up.chmod(up.stat().st_mode | 0o011)
            os.chown(self.home, *self.owner)
        else:
            self.owner = None
            user, group = str(os.getuid()), str(os.getgid())
        self.config = folder / "dovecot.conf"
        self.config.write_text(
            f"base_dir = {folder / 'run'}\n"
            f"state_dir = {folder / 'state'}\n"
            "protocols =\n"
            f"mail_location = maildir:{maildir}\n"
            "ssl = no\n"
            f"mail_uid = {user}\nmail_gid = {group}\n"
            "first_valid_uid = 1\nfirst_valid_gid = 0\n"
            # the mailbox as it stands on disk at every command
            "maildir_very_dirty_syncs = no\n"
        )

    def _env(self) -> dict[str, str]:
        if self.owner is not None:
            for root, dirs, files in os.walk(self.maildir):
                for name in (*dirs, *files):
                    os.lchown(os.path.join(root, name), *self.owner)
            os.lchown(self.maildir, *self.owner)
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "USER": "alice",
                "HOME": str(self.home)}

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm <args>``: its stdout; fails on any output to stderr."""
        assert DOVEADM is not None
        r = subprocess.run([DOVEADM, "-c", str(self.config), *args], env=self._env(),
                           capture_output=True, timeout=30)
        assert r.returncode == 0 and not _complaints(r.stderr), (args, r.stderr.decode())
        return r.stdout.decode("utf-8", "replace")

    def doveadm_input(self, data: bytes, *args: str) -> str:
        """``doveadm <args>`` with ``data`` on its stdin (``save``)."""
        assert DOVEADM is not None
        r = subprocess.run([DOVEADM, "-c", str(self.config), *args], env=self._env(),
                           input=data, capture_output=True, timeout=30)
        assert r.returncode == 0 and not _complaints(r.stderr), (args, r.stderr.decode())
        return r.stdout.decode("utf-8", "replace")

    def fetch(self, fields: str = "uid guid flags size.physical size.virtual") -> list[dict]:
        """``doveadm fetch <fields> all``: one dict a message, by field name."""
        out = []
        for block in self.doveadm("-f", "tab", "fetch", fields, "all").splitlines()[1:]:
            out.append(dict(zip(fields.split(), block.split("\t"))))
        return out

    def pop3(self, *commands: str) -> list[tuple[bytes, bytes | None]]:
        """One pre-authenticated POP3 session: each command's status line
        and, for multi-line answers, the unstuffed body (CRLF kept)."""
        assert POP3_BINARY is not None
        script = "".join(c + "\r\n" for c in (*commands, "QUIT")).encode()
        r = subprocess.run([POP3_BINARY, "-c", str(self.config)], input=script,
                           env=self._env(), capture_output=True, timeout=30)
        assert r.returncode == 0 and not _complaints(r.stderr), (r.returncode, r.stderr.decode())
        data = r.stdout  # pre-authenticated: no greeting
        replies = []
        for command in commands:
            status, _, data = data.partition(b"\r\n")
            body = None
            verb, *args = command.upper().split()
            multi = verb in ("RETR", "TOP") or (verb in ("LIST", "UIDL", "CAPA") and not args)
            if status.startswith(b"+OK") and multi:
                if data.startswith(b".\r\n"):
                    body, data = b"", data[3:]
                else:
                    body, _, data = data.partition(b"\r\n.\r\n")
                    body = b"\r\n".join(line[1:] if line.startswith(b".") else line
                                        for line in body.split(b"\r\n")) + b"\r\n"
            replies.append((status, body))
        assert data.startswith(b"+OK"), data[:200]  # QUIT
        return replies
