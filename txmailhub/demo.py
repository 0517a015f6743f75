"""``make run`` helper: prepare the demo hub and say how to use it.

Creates the demo user (``demo@example.test``, password ``demo``, APOP
allowed) if the users file does not have it yet, and prints the commands
that send and read a first mail.  Runs once, before twistd starts.
"""

from __future__ import annotations

import argparse
import sys

from txmailhub.address import canonical_domain, canonical_local
from txmailhub.config import load
from txmailhub.errors import ConfigError
from txmailhub.users import UsersDB

DEMO_USER, DEMO_PASSWORD = "demo", "demo"


def _port(endpoints: tuple[str, ...]) -> str:
    return endpoints[0].split(":")[1] if endpoints else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txmailhub.demo")
    parser.add_argument("--config", required=True, metavar="PATH")
    args = parser.parse_args(argv)
    try:
        settings = load(args.config)
    except ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return 2
    users = UsersDB(settings.users.file, settings.hub.primary_domain, settings.hub.domains)
    address = users.qualify(DEMO_USER)
    maildir = (f"{settings.mail_dir}/{canonical_domain(address.domain)}/"
               f"{canonical_local(address.local)}")
    if not users.contains(address):
        # "demo"/"demo" is weak on purpose: a published password for a hub
        # that listens on 127.0.0.1 only (etc/demo.toml), printed below
        users.add(DEMO_USER, DEMO_PASSWORD, allow_apop=True, allow_weak=True)
    smtp, pop3 = _port(settings.smtp.listen), _port(settings.pop3.listen)
    print(f"""
txmailhub demo: domain {settings.hub.primary_domain}, user {address} (password {DEMO_PASSWORD!r}),
state in {settings.hub.state_dir}.  Stop with Ctrl-C.

Send a first mail (in another terminal):
  python3 -c "import smtplib; s = smtplib.SMTP('127.0.0.1', {smtp}); \\
s.sendmail('you@example.com', ['{address}'], 'Subject: hello\\r\\n\\r\\nIt works.\\r\\n'); s.quit()"

Read it back over POP3:
  python3 -c "import poplib; p = poplib.POP3('127.0.0.1', {pop3}); p.user('{address}'); \\
p.pass_('{DEMO_PASSWORD}'); print(b'\\n'.join(p.retr(1)[1]).decode()); p.quit()"

It is also in the Maildir {maildir}/new/
(in cur/ once it has been read over POP3)
""", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
