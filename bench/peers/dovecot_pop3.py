"""Private Dovecot POP3 instance over one Maildir, for the benchmark.

::

    python3 dovecot_pop3.py --dir /tmp/run/dovecot --port 1111 \\
        --maildir /spool/dovecot/user --user user@example.org --password pass

writes ``DIR/dovecot.conf`` and a passwd-file, then runs ``dovecot -F`` in
the foreground (the caller owns its PID; SIGTERM stops it and its
children).  Nothing under /etc/dovecot is used or changed; it listens on
127.0.0.1 only, POP3 only, plaintext auth allowed (loopback benchmark).
Dovecot refuses to access mail as root, so the Maildir is chowned to
``nobody`` first.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys

CONF = """\
instance_name = txmh-bench-dovecot
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.info.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {uid}
mail_location = maildir:{maildir}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/passwd
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def _system_user(name: str) -> str:
    """The user the Debian package makes for Dovecot's unprivileged
    processes, or ``nobody`` where it is missing (a package installed into
    an image whose /etc/passwd was made afterwards): dovecot refuses to
    start with a login or internal user that does not exist."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return "nobody"
    return name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="instance directory (config, state, logs)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--maildir", required=True, help="the Maildir (holding cur/ new/ tmp/)")
    ap.add_argument("--user", default="user@example.org")
    ap.add_argument("--password", default="pass")
    args = ap.parse_args()

    nobody = pwd.getpwnam("nobody")
    maildir = os.path.abspath(args.maildir)
    home = os.path.join(args.dir, "home")
    for sub in ("run", "state", "home"):
        os.makedirs(os.path.join(args.dir, sub), exist_ok=True)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    for path in [home, maildir] + [os.path.join(maildir, s) for s in ("cur", "new", "tmp")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    for sub in ("cur", "new"):
        d = os.path.join(maildir, sub)
        for name in os.listdir(d):
            os.chown(os.path.join(d, name), nobody.pw_uid, nobody.pw_gid)
    with open(os.path.join(args.dir, "passwd"), "w") as f:
        f.write(f"{args.user}:{{PLAIN}}{args.password}:{nobody.pw_uid}:{nobody.pw_gid}::{home}::\n")
    conf = os.path.join(args.dir, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(dir=os.path.abspath(args.dir), uid=nobody.pw_uid, maildir=maildir,
                            port=args.port, login_user=_system_user("dovenull"),
                            internal_user=_system_user("dovecot")))
    dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
    check = subprocess.run([dovecot, "-c", conf, "-n"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.stderr.write(check.stderr)
        return 2
    os.execv(dovecot, [dovecot, "-F", "-c", conf])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
