"""A state_dir every local user may write: twistd mailhub does not start on it.

Whoever may write it may rename ``mail/`` away and put a link to a folder
of their own in its place: the hub, which goes by the names, would then
deliver every message there and serve POP3 from it."""

from __future__ import annotations

import os
import smtplib


def test_twistd_refuses_a_state_dir_every_local_user_may_write(make_hub) -> None:
    hub = make_hub(start=False)
    hub.state_dir.mkdir()
    os.chmod(hub.state_dir, 0o777)
    hub.start(wait=False)
    assert hub.proc is not None
    assert hub.proc.wait(60) == 2
    hub.proc = None
    log = hub.run_log()
    assert (f"mailhub: cannot use {hub.state_dir}: it may be written by every local user "
            "(root:root mode 0777)" if os.geteuid() == 0 else
            f"mailhub: cannot use {hub.state_dir}: it may be written by every local user (") in log
    assert f"chmod o-rwx {hub.state_dir}" in log, log
    assert os.listdir(hub.state_dir) == []  # nothing made in it, no port bound
    os.chmod(hub.state_dir, 0o700)  # mended: the hub starts and takes mail
    hub.start()
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
        assert s.sendmail("x@remote.test", ["alice@example.org"], b"Subject: s\r\n\r\nok\r\n") == {}
    assert len(hub.messages("alice@example.org")) == 1
