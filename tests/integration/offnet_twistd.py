"""``twistd``, with the hub taking its loopback clients for clients off
the machine: ``python offnet_twistd.py -n mailhub --config ...``.

The limits that spare loopback -- ``max_connections_per_client``, the
failed-login window shared by SMTP AUTH and POP3, AUTH offered only under
TLS -- can then be exercised live over 127.0.0.1, the one address the
tests may use.  Only the check "is this IP client on this machine" is
replaced (a UNIX socket's client stays local); everything else is the hub
as ``twistd mailhub`` runs it, imported from where twistd would import
it (not from this script's folder).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.internet.address import UNIXAddress


def take_loopback_for_offnet() -> None:
    """Make the SMTP and POP3 adapters take an IP loopback client for
    one off the machine (a UNIX socket's client stays local)."""
    import txmailhub.pop3.protocol as pop3_protocol
    import txmailhub.smtp.protocol as smtp_protocol

    def is_local_peer(peer: Any) -> bool:
        return isinstance(peer, UNIXAddress)

    # SMTP asks only about an IP client's host: a UNIX socket's (no host)
    # is local before this is asked (SMTPFactory.classify)
    smtp_protocol._is_loopback = lambda host: False
    pop3_protocol._is_local_peer = is_local_peer


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from twisted.scripts.twistd import run

    take_loopback_for_offnet()
    sys.argv[0] = "twistd"
    run()
