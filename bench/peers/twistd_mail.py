"""Launch stock ``twistd mail`` (Twisted's own mail server) for the benchmark.

Run it with the Python of a virtualenv holding *stock* Twisted; every argument
is passed to ``twistd`` unchanged, e.g.::

    python twistd_mail.py -n --pidfile= -l LOG mail \\
        --maildirdbmdomain=example.org=/spool/tw --user=user=pass \\
        --smtp tcp:2526:interface=127.0.0.1 --pop3 tcp:1110:interface=127.0.0.1

On Python 3 (checked with Twisted 26.10) ``twistd mail`` cannot deliver into
a Maildir without help; this module wraps just the bytes/str boundaries and
leaves every behaviour alone (no fsync, line-by-line writes, rename tmp ->
new, the Delivered-To header, POP3 flow):

1. ``--user NAME=PASS`` hands ``str`` to a DirDBM that only takes ``bytes``.
2. ``--maildirdbmdomain NAME=PATH`` registers the domain under a ``str``
   key while the SMTP server looks recipients' domains up as ``bytes``.
3. ``startMessage`` joins ``bytes`` and ``str`` paths and opens the tmp file
   in text mode, then the message writes ``bytes`` into it.
4. ``MaildirMailbox.getMessage`` opens messages in text mode, so POP3 RETR
   would write ``str`` to the transport.

``TXMH_BENCH_POP3_NODELAY=1`` additionally sets TCP_NODELAY on POP3
connections.  That is *not* stock behaviour; it is a diagnostic showing what
Nagle's algorithm costs Twisted's POP3 server (its final ".\\r\\n" goes out
in a separate small write).
"""

from __future__ import annotations

import os
import sys

from twisted.mail import mail, maildir


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else os.fsencode(value)


_stock_add_user = maildir.MaildirDirdbmDomain.addUser
_stock_add_domain = mail.MailService.addDomain


def _add_user(self, user, password):
    _stock_add_user(self, _to_bytes(user), _to_bytes(password))


def _add_domain(self, name, domain):
    _stock_add_domain(self, _to_bytes(name), domain)


def _start_message(self, user):
    if isinstance(user, (str, bytes)):
        local, domain = _to_bytes(user).split(b"@", 1)
    else:
        local, domain = _to_bytes(user.dest.local), _to_bytes(user.dest.domain)
    # The paths stay ``str`` so the stock eomReceived can append ",S=<size>".
    userdir = os.fsdecode(self.userDirectory(local))
    unique = os.fsdecode(maildir._generateMaildirName())
    tmp_path = os.path.join(userdir, "tmp", unique)
    return maildir.MaildirMessage(
        local + b"@" + domain,
        open(tmp_path, "wb"),
        tmp_path,
        os.path.join(userdir, "new", unique),
    )


def _get_message(self, i):
    return open(self.list[i], "rb")


maildir.MaildirDirdbmDomain.addUser = _add_user
mail.MailService.addDomain = _add_domain
maildir.AbstractMaildirDomain.startMessage = _start_message
maildir.MaildirMailbox.getMessage = _get_message

if os.environ.get("TXMH_BENCH_POP3_NODELAY") == "1":
    from twisted.mail import pop3

    _stock_connection_made = pop3.POP3.connectionMade

    def _connection_made(self):
        self.transport.setTcpNoDelay(True)
        _stock_connection_made(self)

    pop3.POP3.connectionMade = _connection_made


if __name__ == "__main__":
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()
