"""Twisted's own POP3 client logs in with ``login()``, over 127.0.0.1.

``AdvancedPOP3Client.login()`` takes APOP whenever the greeting carries a
timestamp (RFC 1939 section 7), with no fallback to USER/PASS.  The hub
gives one only while the users file keeps an APOP secret for someone
(``mailhub user add --allow-apop``): otherwise every login() of a user
without a secret failed.  The client runs in a process of its own, as it
needs a reactor."""

from __future__ import annotations

import json
import subprocess

from conftest import Hub
from pop3util import twisted_pop3_client

# the client's main() for pop3util.twisted_pop3_client
TWISTED_LOGIN = r"""@defer.inlineCallbacks
def main(port, user, password):
    c = yield protocol.ClientCreator(reactor, AdvancedPOP3Client).connectTCP("127.0.0.1", port)
    c.allowInsecureLogin = True  # loopback, no TLS configured
    yield c.login(user.encode(), password.encode())
    stat = yield c.stat()
    yield c.quit()
    print(json.dumps({"apop": c.serverChallenge is not None, "stat": list(stat)}))
"""


def twisted_login(hub: Hub, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return twisted_pop3_client(TWISTED_LOGIN, hub.pop3_port, user, password, timeout=60)


def test_login_of_a_user_without_apop_where_no_one_has_apop(make_hub) -> None:
    hub = make_hub(users={"bob@example.org": "bob-secret"})
    result = twisted_login(hub, "bob@example.org", "bob-secret")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"apop": False, "stat": [0, 0]}
    assert "POP3 login bob@example.org from 127.0.0.1 (USER): 0 messages" in hub.log_text()


def test_login_by_apop_for_a_user_with_an_apop_secret(make_hub) -> None:
    # the default users: alice was added with --allow-apop
    hub = make_hub()
    result = twisted_login(hub, "alice@example.org", "alice-secret")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"apop": True, "stat": [0, 0]}
    assert "POP3 login alice@example.org from 127.0.0.1 (APOP): 0 messages" in hub.log_text()
