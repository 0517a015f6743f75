"""txmailhub: a mail hub for small sites, built on Twisted.

SMTP in (MX and submission), Maildir storage, POP3 out, and a durable
outbound queue with MX delivery and bounces.  See ``docs/`` for the
user-facing documentation and ``ARCHITECTURE`` notes in each module.
"""

__version__ = "0.1.0"
