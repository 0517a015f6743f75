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

    return MailHub(options["settings"])
