"""``twistd``, with the hub taking its loopback clients for clients off
the machine: ``python offnet_twistd.py -n mailhub --config ...``.

The limits that spare loopback -- ``max_connections_per_client``, the
failed-login window shared by SMTP AUTH and POP3, AUTH offered only under
TLS -- can then be exercised live over 127.0.0.1, the one address the
tests may use.  Only the check "is this client on this machine" is
replaced; everything else is the hub as ``twistd mailhub`` runs it.
"""

from __future__ import annotations

import sys

from twisted.scripts.twistd import run

import txmailhub.pop3.protocol as pop3_protocol
import txmailhub.smtp.protocol as smtp_protocol

if __name__ == "__main__":
    smtp_protocol._is_loopback = lambda host: False
    pop3_protocol._is_local_peer = lambda peer: False
    sys.argv[0] = "twistd"
    run()
