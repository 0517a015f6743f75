"""SMTP: the sans-IO server and client engines and the Twisted adapters."""
