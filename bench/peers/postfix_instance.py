"""Private Postfix instance delivering to a Maildir, for the benchmark.

::

    python3 postfix_instance.py --dir /spool/postfix --port 2527 \\
        --maildir-base /spool/postfix/vmail --domain example.org --user user

writes its own ``main.cf``/``master.cf`` under ``DIR/etc`` (queue in
``DIR/queue``), delivers ``USER@DOMAIN`` with virtual(8) to
``MAILDIR_BASE/DOMAIN/USER/`` (a Maildir, owned by ``nobody``) and runs
``postfix -c DIR/etc start-fg`` so the master stays our child (SIGTERM stops
it and its children).  smtpd listens on 127.0.0.1:PORT only; nothing of the
system's Postfix configuration is changed, and no mail ever leaves.

Postfix is durable: cleanup(8) fsyncs the queue file before smtpd answers
250, virtual(8) fsyncs the Maildir file before linking it into new/; delivery
is asynchronous (the 250 comes before the message is in the Maildir).
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.localhost
mydomain = bench.localhost
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
default_transport = error:no outbound mail from the benchmark instance
relay_transport = error:no outbound mail from the benchmark instance
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {base}
virtual_mailbox_maps = texthash:{dir}/etc/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
virtual_mailbox_limit = 0
message_size_limit = 0
mailbox_size_limit = 0
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 100
smtputf8_enable = no
biff = no
maillog_file_prefixes = {dir}
maillog_file = {dir}/postfix.log
"""

# Only the services this setup uses; no chroot.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="instance directory (config, queue, log)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--maildir-base", required=True)
    ap.add_argument("--domain", default="example.org")
    ap.add_argument("--user", default="user")
    args = ap.parse_args()

    root = os.path.abspath(args.dir)
    base = os.path.abspath(args.maildir_base)
    nobody = pwd.getpwnam("nobody")
    postfix = pwd.getpwnam("postfix")
    for sub in ("etc", "queue", "data"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.chown(os.path.join(root, "data"), postfix.pw_uid, postfix.pw_gid)
    maildir = os.path.join(base, args.domain, args.user)
    for sub in ("", "new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    for path in (base, os.path.join(base, args.domain), maildir,
                 *(os.path.join(maildir, s) for s in ("new", "cur", "tmp"))):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    etc = os.path.join(root, "etc")
    with open(os.path.join(etc, "main.cf"), "w") as f:
        f.write(MAIN_CF.format(dir=root, domain=args.domain, base=base,
                               uid=nobody.pw_uid, gid=nobody.pw_gid))
    with open(os.path.join(etc, "master.cf"), "w") as f:
        f.write(MASTER_CF.format(port=args.port))
    with open(os.path.join(etc, "vmailbox"), "w") as f:
        f.write(f"{args.user}@{args.domain} {args.domain}/{args.user}/\n")
    # Creates the queue directories with the right owners and checks the setup.
    done = subprocess.run(["postfix", "-c", etc, "check"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        return 2
    os.execvp("postfix", ["postfix", "-c", etc, "start-fg"])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
