"""``twistd mailhub``: options and ``makeService`` for the twistd plugin.

A bad config never produces a traceback: the problems are printed, one
line each, and twistd exits 2 before anything starts.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from txmailhub.config import load
from txmailhub.errors import ConfigError

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "--config PATH"
    longdesc = "Run the txmailhub mail hub (SMTP, submission, POP3, outbound relay)."
    optParameters = [
        ["config", "c", None, "Path of the TOML configuration file."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required")
        try:
            self["settings"] = load(self["config"])
        except ConfigError as e:
            for warning in e.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            for problem in e.problems:
                print(problem, file=sys.stderr)
            raise SystemExit(2) from None
        for warning in self["settings"].warnings:
            print(f"warning: {warning}", file=sys.stderr)


def makeService(options: Any) -> Any:
    from txmailhub.service import MailHub

    raise_fd_limit()
    return MailHub(options["settings"])


def raise_fd_limit(want: int = 65536) -> int:
    """Lift the soft limit on open files towards the hard one (systemd's
    default soft limit, 1024, is about what ``max_connections`` of SMTP and
    POP3 together may use, before any mail file is opened).  Only for the
    hub run by twistd: an application that embeds ``MailHub`` owns its
    process's limits.  Returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
