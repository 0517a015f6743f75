"""POP3: the sans-IO server engine and its Twisted adapter."""
