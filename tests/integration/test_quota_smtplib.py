"""[hub] mailbox_quota against a running hub: smtplib sees 452 4.2.2 at
RCPT for a full mailbox, the other recipients still get the message, and
a POP3 DELE makes room again."""

from __future__ import annotations

import poplib
import smtplib

ALICE, BOB = "alice@example.org", "bob@example.org"
BODY = b"Subject: fill\r\n\r\n" + (b"x" * 74 + b"\r\n") * 20


def send(hub, recipients: list[str], options: tuple[str, ...] = ()) -> dict:
    """One transaction; ``{recipient: (code, text)}`` of those refused.
    Not ``sendmail()``: it adds ``SIZE=`` of its own."""
    refused = {}
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("sender@remote.test", list(options))[0] == 250
        for rcpt in recipients:
            code, text = s.rcpt(rcpt)
            if code != 250:
                refused[rcpt] = (code, text)
        if len(refused) < len(recipients):
            assert s.data(BODY)[0] == 250
    return refused


def test_a_full_mailbox_is_refused_at_rcpt_and_dele_makes_room(make_hub) -> None:
    hub = make_hub(sections={"hub": {"mailbox_quota": 2000}})
    assert send(hub, [ALICE]) == {}
    # under the quota when RCPT came: accepted, and delivered although it
    # takes the mailbox over (a soft quota: nothing refused after DATA)
    assert send(hub, [ALICE]) == {}
    assert len(hub.messages(ALICE)) == 2
    refused = send(hub, [ALICE, BOB])
    assert list(refused) == [ALICE]
    code, text = refused[ALICE]
    assert code == 452 and text.startswith(b"4.2.2 "), refused
    assert len(hub.messages(ALICE)) == 2 and len(hub.messages(BOB)) == 1
    # bob's mailbox has room, but not for what SIZE= announces
    room = 2000 - sum(f.stat().st_size for f in hub.message_files(BOB))
    assert 0 < room < len(BODY)
    assert send(hub, [BOB], (f"SIZE={room + 1}",))[BOB][0] == 452
    assert send(hub, [BOB], (f"SIZE={room}",)) == {}
    # the postmaster is never refused
    assert send(hub, ["postmaster@example.org"], ("SIZE=100000",)) == {}
    # POP3 DELE empties alice's mailbox: the next RCPT sees the room
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    p.user(ALICE)
    p.pass_("alice-secret")
    for n in (1, 2):
        p.dele(n)
    # docs/pop3.rst: DELE alone frees nothing (the session may still RSET)
    assert send(hub, [ALICE])[ALICE][0] == 452
    p.quit()
    assert hub.messages(ALICE) == []
    assert send(hub, [ALICE]) == {}
    assert len(hub.messages(ALICE)) == 1
