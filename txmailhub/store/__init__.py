"""Mail storage: the Maildir store that SMTP writes and POP3 reads."""
