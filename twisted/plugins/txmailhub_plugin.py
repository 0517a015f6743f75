"""twistd plugin ``mailhub``: ``twistd -n mailhub --config PATH``."""

from twisted.application.service import ServiceMaker

mailhub = ServiceMaker(
    "txmailhub",
    "txmailhub.tap",
    "A mail hub: SMTP in, Maildir, POP3, and an outbound queue.",
    "mailhub",
)
