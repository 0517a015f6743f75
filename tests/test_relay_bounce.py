"""RFC 3464 DSNs, parsed back with the stdlib email package; RFC 3461 rules."""

from __future__ import annotations

import base64
import dataclasses
import re
from email import message_from_bytes, message_from_string, policy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txmailhub.address import Address
from txmailhub.components import Components
from txmailhub.config import load_text
from txmailhub.envelope import DSNRequest, Envelope
from txmailhub.relay import bounce
from txmailhub.relay.record import FAILED, QueueEntry
from txmailhub.smtp.reply import LocalReply, Reply
from txmailhub.smtp.xtext import utf8_addr_decode
from txmailhub.testing import MemoryMailboxStore, MemorySpooler, QueueSpy, StaticRouter

ORIGINAL = b"From: alice@example.org\nTo: bob@remote.test\nSubject: lunch\n\nSee you at noon.\n"
ALICE = Address("alice", "example.org")
BOB = Address("bob", "remote.test")
CAROL = Address("carol", "remote.test")


def make_entry(tmp_path, sender=ALICE, ret=None, envid=None, notify=()):
    path = tmp_path / "msg"
    path.write_bytes(ORIGINAL)
    env = Envelope(sender=sender, recipients=(BOB, CAROL), dsn=DSNRequest(ret=ret, envid=envid))
    entry = QueueEntry.new("0123456789ABCDEF", env, 1_700_000_000.0)
    recips = tuple(dataclasses.replace(r, notify=notify) for r in entry.recipients)
    return dataclasses.replace(entry, recipients=recips, message_path=str(path))


USER_UNKNOWN = Reply.of(550, "5.1.1", "<bob@remote.test>: user unknown")


def failed(entry, who=BOB, reply=USER_UNKNOWN, mta="mx1.remote.test"):
    return dataclasses.replace(entry.recipient(who), state=FAILED, last_reply=reply,
                               remote_mta=mta, last_attempt=1_700_000_100.0, attempts=1)


def build(entry, recipients, action=bounce.FAILED, **kw):
    data = bounce.build_dsn(entry, recipients, action, hostname="mail.example.org",
                            primary_domain="example.org", now=1_700_000_200.0, **kw)
    return data, message_from_bytes(data, policy=policy.default)


def test_a_utf8_envelope_id_is_given_back_as_xtext(tmp_path):
    # an SMTPUTF8 transaction's ENVID: the 7-bit status part carries it as
    # the xtext it came in, not as an RFC 2047 word (RFC 3464 2.2.1)
    entry = make_entry(tmp_path, envid="id-\u20ac")
    data, msg = build(entry, [failed(entry)])
    _, status, _ = list(msg.iter_parts())
    assert status.get_payload()[0]["Original-Envelope-Id"] == "id-+E2+82+AC"
    assert b"=?utf-8?" not in data


def test_an_ipv6_literal_recipient_is_named_with_its_tag(tmp_path):
    # a recipient spelled "[ipv6:...]" (the tag is case-insensitive, RFC
    # 5234 2.3) is named as RFC 5321 4.1.3 writes it, "[IPv6:...]", in the
    # human part and in the status fields
    who = Address("bob", "[ipv6:2001:db8::9]")
    path = tmp_path / "msg"
    path.write_bytes(ORIGINAL)
    entry = QueueEntry.new("0123456789ABCDEF", Envelope(sender=ALICE, recipients=(who,)),
                           1_700_000_000.0)
    entry = dataclasses.replace(entry, message_path=str(path))
    data, msg = build(entry, [failed(entry, who=who, mta="[IPv6:2001:db8::9]")])
    assert b"[ipv6:" not in data
    human, status, _ = list(msg.iter_parts())
    assert "<bob@[IPv6:2001:db8::9]>: host [IPv6:2001:db8::9] said" in human.get_content()
    block = status.get_payload()[1]
    assert block["Final-Recipient"] == "rfc822; bob@[IPv6:2001:db8::9]"


@pytest.mark.parametrize("action", [bounce.FAILED, bounce.DELIVERED])
def test_a_smarthost_with_a_final_dot_is_named_without_it(tmp_path, action):
    # [relay] smarthost = "smtp.example.net.:587" is looked up as written
    # and recorded so; a notice names the host (RFC 3464 2.3.5), as the
    # TLS check does, without the root's dot
    entry = make_entry(tmp_path, notify=("FAILURE", "SUCCESS"))
    data, msg = build(entry, [failed(entry, mta="smtp.example.net.")], action=action)
    human, status, *_ = list(msg.iter_parts())
    assert status.get_payload()[1]["Remote-MTA"] == "dns; smtp.example.net"
    assert b"smtp.example.net." not in data
    assert "smtp.example.net" in human.get_content()


def test_failure_dsn_structure(tmp_path):
    entry = make_entry(tmp_path, envid="ENV-42")
    bob = dataclasses.replace(failed(entry), orcpt="rfc822;Bob@Remote.test")
    data, msg = build(entry, [bob])
    assert b"\r\n" not in data
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@example.org>"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, returned = list(msg.iter_parts())
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "<bob@remote.test>: host mx1.remote.test said: 550 5.1.1 <bob@remote.test>:\n"\
           "    user unknown" in text  # wrapped at 76 columns
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; mail.example.org"
    assert blocks[0]["Original-Envelope-Id"] == "ENV-42"
    # RFC 5322 3.3 and 4.3: UTC is "+0000"; "GMT" is obsolete, "-0000" means unknown
    assert str(msg["Date"]) == "Tue, 14 Nov 2023 22:16:40 +0000"
    assert b"GMT" not in data and b"-0000" not in data
    assert blocks[0]["Arrival-Date"].endswith(" +0000")
    rcpt = blocks[1]
    assert rcpt["Final-Recipient"] == "rfc822; bob@remote.test"
    assert rcpt["Original-Recipient"] == "rfc822; Bob@Remote.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx1.remote.test"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.test>: user unknown"
    assert rcpt["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:15:00 +0000"  # RFC 3464 2.3.7
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: lunch" in returned.get_payload()
    assert "See you at noon" not in returned.get_payload()
    # the human part says what is attached: the headers only, without RET=FULL
    assert "Its headers are attached." in human.get_content()


def test_a_notice_shows_the_decoded_values_not_the_forms_as_sent(tmp_path):
    # the forms as sent are for the next hop (RFC 3461 5.2.1); the notice's
    # fields hold the decoded id and address (RFC 3464 2.2.1, 2.3.1)
    entry = make_entry(tmp_path)
    entry = dataclasses.replace(entry, envelope=dataclasses.replace(
        entry.envelope, dsn=DSNRequest(envid="aAb", envid_raw="a+41b")))
    bob = dataclasses.replace(failed(entry), orcpt="rfc822;Joe+X@Example.COM",
                              orcpt_raw="rfc822;Joe+2BX@Example.COM")
    _, msg = build(entry, [bob])
    _, status, _ = list(msg.iter_parts())
    blocks = status.get_payload()
    assert blocks[0]["Original-Envelope-Id"] == "aAb"
    assert blocks[1]["Original-Recipient"] == "rfc822; Joe+X@Example.COM"


def test_a_notice_to_a_utf8_sender_names_it_raw_not_as_an_encoded_word(tmp_path):
    jorg = Address("jörg", "example.org")
    entry = make_entry(tmp_path, sender=jorg)
    data, _ = build(entry, [failed(entry)])
    assert "To: <jörg@example.org>\n".encode() in data and b"=?utf-8?" not in data.lower()
    msg = message_from_string(data.decode("utf-8"), policy=policy.default)  # RFC 6532
    assert msg["To"].addresses[0].addr_spec == "jörg@example.org"
    # the email package flags any non-ASCII local part; nothing else
    assert [type(d).__name__ for d in msg["To"].defects] == ["NonASCIILocalPartDefect"]
    assert bounce.dsn_envelope(entry, "mail.example.org", False).smtputf8


def test_a_notice_to_an_idn_sender_is_ascii(tmp_path):
    # an IDN domain alone has an ASCII form (its A-label): the notice needs
    # no SMTPUTF8, and its From and To stay ASCII even from an IDN hub
    carl = Address("carl", "bücher.example")
    entry = make_entry(tmp_path, sender=carl)
    data = bounce.build_dsn(entry, [failed(entry)], bounce.FAILED, hostname="mail.example.org",
                            primary_domain="bücher.example", now=1_700_000_200.0)
    head = data.split(b"\n\n", 1)[0]
    assert head.isascii(), head
    assert b"\nTo: <carl@xn--bcher-kva.example>\n" in head
    assert b"\nFrom: Mail Delivery System <MAILER-DAEMON@xn--bcher-kva.example>\n" in head
    assert not bounce.dsn_envelope(entry, "mail.example.org", False).smtputf8


def test_each_failed_recipient_named(tmp_path):
    entry = make_entry(tmp_path)
    carol = failed(entry, CAROL, Reply.of(552, None, "mailbox full"), "mx2.remote.test")
    _, msg = build(entry, [failed(entry), carol])
    blocks = list(msg.iter_parts())[1].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@remote.test", "rfc822; carol@remote.test"]
    assert blocks[2]["Status"] == "5.0.0"
    assert blocks[2]["Diagnostic-Code"] == "smtp; 552 mailbox full"


def test_ret_full_returns_message(tmp_path):
    entry = make_entry(tmp_path, ret="FULL")
    _, msg = build(entry, [failed(entry)])
    human, _, returned = msg.iter_parts()
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0] if isinstance(returned.get_payload(), list) else \
        returned.get_content()
    assert "See you at noon." in inner.get_content()
    assert "It is attached." in human.get_content()


def test_ret_full_too_big_returns_headers(tmp_path, monkeypatch):
    monkeypatch.setattr(bounce, "FULL_RETURN_LIMIT", 10)
    entry = make_entry(tmp_path, ret="FULL")
    _, msg = build(entry, [failed(entry)])
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"


def test_delayed_notice(tmp_path):
    entry = make_entry(tmp_path, ret="FULL")
    bob = dataclasses.replace(entry.recipient(BOB), last_reply=Reply.of(451, "4.7.1", "later"),
                              remote_mta="mx1.remote.test", last_attempt=1_700_000_100.0)
    _, msg = build(entry, [bob], bounce.DELAYED, will_retry_until=1_700_432_000.0)
    assert msg["Subject"].startswith("Delayed Mail")
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.7.1"
    assert block["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    # RET applies to failures only: a delay notice carries the headers
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"


def delay_head(whom="the recipient below"):
    return ("This is the mail system at mail.example.org.\n\n"
            f"Your message could not be delivered yet to {whom}.\n")


def delay_text(tmp_path, recipients, **kw):
    """The human-readable part of a delay notice about ``recipients``
    (each: (address, reply or None, remote MTA or None))."""
    entry = make_entry(tmp_path)
    recs = [dataclasses.replace(entry.recipient(who), last_reply=reply, remote_mta=mta,
                                last_attempt=1_700_000_100.0 if reply else None)
            for who, reply, mta in recipients]
    _, msg = build(entry, recs, bounce.DELAYED, **kw)
    human, _, _ = msg.iter_parts()
    return human.get_content()


def test_a_delay_notice_for_one_recipient_says_the_retry_in_whole_sentences(tmp_path):
    # the retry's sentence was cut after "It will be retried", a line that
    # read as finished, the give-up time on the next
    text = delay_text(tmp_path, [(BOB, Reply.of(451, "4.7.1", "Greylisted"),
                                  "mx1.remote.test")], will_retry_until=1_700_432_000.0)
    assert text == delay_head() + (
        "It will be retried until Sun, 19 Nov 2023 22:13:20 +0000.\n"
        "You do not need to send it again.\n"
        "\n"
        "<bob@remote.test>: host mx1.remote.test said: 451 4.7.1 Greylisted\n")


def test_a_delay_notice_for_several_recipients_with_and_without_a_reply(tmp_path):
    hub = LocalReply.of(451, "4.4.1", "connection to mx1.remote.test[192.0.2.1]:25 failed: "
                        "connection refused")
    text = delay_text(tmp_path, [(BOB, hub, None), (CAROL, None, None)],
                      will_retry_until=1_700_432_000.0)
    assert text == delay_head("the 2 recipients below") + (
        "It will be retried until Sun, 19 Nov 2023 22:13:20 +0000.\n"
        "You do not need to send it again.\n"
        "\n"
        "<bob@remote.test>: this hub's own account: 451 4.4.1 connection to\n"
        "    mx1.remote.test[192.0.2.1]:25 failed: connection refused\n"
        "<carol@remote.test>: no reason recorded\n")


def test_a_delay_notice_without_a_give_up_time_ends_its_sentence(tmp_path):
    # "It will be retried" with no full stop when no time followed
    text = delay_text(tmp_path, [(CAROL, None, None)])
    assert text == delay_head() + (
        "It will be retried. You do not need to send it again.\n"
        "\n"
        "<carol@remote.test>: no reason recorded\n")


SUCCESS_LINE = "Your message was successfully delivered to {whom}.\n"


@pytest.mark.parametrize("action, ret, intro", [
    (bounce.FAILED, None,
     "I'm sorry to have to inform you that your message could not\n"
     "be delivered to {whom}. Its headers are attached.\n"),
    (bounce.FAILED, "FULL",
     "I'm sorry to have to inform you that your message could not\n"
     "be delivered to {whom}. It is attached.\n"),
    (bounce.DELAYED, None,
     "Your message could not be delivered yet to {whom}.\n"
     "It will be retried until Sun, 19 Nov 2023 22:13:20 +0000.\n"
     "You do not need to send it again.\n"),
    # RET=FULL returns the message with a failure only: the others say nothing of it
    (bounce.DELAYED, "FULL",
     "Your message could not be delivered yet to {whom}.\n"
     "It will be retried until Sun, 19 Nov 2023 22:13:20 +0000.\n"
     "You do not need to send it again.\n"),
    (bounce.DELIVERED, None, SUCCESS_LINE),
    (bounce.EXPANDED, None, SUCCESS_LINE),
    # RFC 3464 2.3.3: relayed is not delivered, the next hop will not say
    (bounce.RELAYED, "FULL",
     "Your message was passed on for delivery to {whom}.\n"
     "No delivery report will follow; you may still get a failure notice\n"
     "from another mail system.\n"),
], ids=["failed", "failed-full", "delayed", "delayed-ret-full", "delivered", "expanded",
        "relayed-ret-full"])
@pytest.mark.parametrize("count, whom", [(1, "the recipient below"),
                                         (2, "the 2 recipients below")], ids=["one", "two"])
def test_the_human_part_names_its_recipients_in_their_number(tmp_path, action, ret, intro,
                                                            count, whom):
    # "to one or more recipients" and "to the destination(s)" although the
    # notice lists them and knows how many: one is "the recipient", several
    # are counted, in every kind of notice, headers returned or the message
    entry = make_entry(tmp_path, ret=ret, notify=("SUCCESS", "FAILURE", "DELAY"))
    recs = [failed(entry, who) if action == bounce.FAILED else delayed(entry, who=who)
            for who in (BOB, CAROL)[:count]]
    _, msg = build(entry, recs, action, will_retry_until=1_700_432_000.0)
    text = next(msg.iter_parts()).get_content()
    head, _, listed = text.partition("\n\n")[2].partition("\n\n")
    assert head + "\n" == intro.format(whom=whom)
    assert [line.split(">")[0] for line in listed.split("\n") if line.startswith("<")] == [
        f"<{who}" for who in (BOB, CAROL)[:count]]
    assert "one or more" not in text and "(s)" not in text
    # the machine-readable part is as it was: a block per recipient
    _, status, _ = msg.iter_parts()
    assert [b["Action"] for b in status.get_payload()[1:]] == [action] * count


def test_local_reason_without_remote(tmp_path):
    entry = make_entry(tmp_path)
    bob = failed(entry, reply=Reply.of(550, "5.1.10", "remote.test does not accept mail "
                                                      "(null MX, RFC 7505)"), mta=None)
    _, msg = build(entry, [bob])
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Status"] == "5.1.10"
    assert "Remote-MTA" not in block
    assert block["Diagnostic-Code"].startswith("X-txmailhub; 550 5.1.10")


def test_never_for_null_sender(tmp_path):
    entry = make_entry(tmp_path, sender=None)
    assert not bounce.wants_notice(entry, entry.recipients[0], bounce.FAILED)
    with pytest.raises(ValueError):
        build(entry, [entry.recipients[0]])


@pytest.mark.parametrize("notify, failed_, delayed, success", [
    ((), True, True, False),
    (("NEVER",), False, False, False),
    (("SUCCESS",), False, False, True),
    (("FAILURE",), True, False, False),
    (("DELAY", "FAILURE"), True, True, False),
    (("success", "failure", "delay"), True, True, True),
])
def test_notify(tmp_path, notify, failed_, delayed, success):
    entry = make_entry(tmp_path, notify=notify)
    r = entry.recipients[0]
    assert bounce.wants_notice(entry, r, bounce.FAILED) is failed_
    assert bounce.wants_notice(entry, r, bounce.DELAYED) is delayed
    assert bounce.wants_notice(entry, r, bounce.RELAYED) is success
    assert bounce.wants_notice(entry, r, bounce.DELIVERED) is success


def test_success_notice(tmp_path):
    entry = make_entry(tmp_path, notify=("SUCCESS",))
    bob = dataclasses.replace(entry.recipient(BOB), last_reply=Reply.of(250, "2.0.0", "ok"),
                              remote_mta="mx1.remote.test")
    _, msg = build(entry, [bob], bounce.RELAYED)
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Action"] == "relayed" and block["Status"] == "2.0.0"


def dsn_components(tmp_path, router):
    """A hub's components in memory, for ``send_dsn``: (components, spooler, store)."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n')
    settings = load_text(cfg.read_text(), str(cfg))
    spooler = MemorySpooler()
    store = MemoryMailboxStore(spooler=spooler)
    components = Components(settings=settings, reactor=None, router=router, store=store,
                            spooler=spooler, portal=None, queue=QueueSpy())
    return components, spooler, store


def test_send_dsn_through_normal_path(tmp_path):
    components, _, store = dsn_components(tmp_path, StaticRouter({"alice": None}))
    entry = make_entry(tmp_path)
    data, _ = build(entry, [failed(entry)])
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False)
    assert env.sender is None and env.recipients == (ALICE,)
    d = bounce.send_dsn(components, env, data)
    assert d.result == "delivered to the mailbox"
    [stored] = store.messages(ALICE)
    assert stored == b"Return-Path: <>\n" + data
    # a sender elsewhere: the notice goes to the queue, and says so
    env = dataclasses.replace(env, recipients=(Address("zed", "remote.test"),))
    assert bounce.send_dsn(components, env, data).result == "queued for delivery"
    assert components.queue.enqueued[-1][0].recipients == (Address("zed", "remote.test"),)


def test_a_notice_keeps_the_id_of_the_message_it_is_about(tmp_path):
    # `mailhub queue show <id>` finds a notice waiting in the queue by the
    # id the SMTP server gave the message (docs/relay.rst)
    entry = make_entry(tmp_path)
    entry = dataclasses.replace(entry, envelope=dataclasses.replace(
        entry.envelope, message_id="1A2271B164D27C641"))
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False)
    assert env.message_id == "1A2271B164D27C641"


def test_a_notice_vouches_for_no_submitter(tmp_path):
    # RFC 4954 5: the hub made the notice; whoever submitted the message it
    # is about did not submit this one, so it is relayed with AUTH=<>
    entry = make_entry(tmp_path)
    entry = dataclasses.replace(entry, envelope=dataclasses.replace(
        entry.envelope, authenticated_as=str(ALICE), submitter=ALICE))
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False)
    assert env.submitter is None and env.authenticated_as is None


def test_long_and_non_ascii_replies_give_a_notice_every_mta_accepts(tmp_path):
    # a 30-line remote reply, a non-ASCII one and a non-ASCII recipient: no
    # line over 998 octets (RFC 5322 2.1.1), ASCII status fields (RFC 3464,
    # RFC 6533 utf-8-addr-xtext), no RFC 2047 words in them
    entry = make_entry(tmp_path)
    long_reply = Reply(550, "5.1.1", tuple(f"line {i} " + "x" * 60 for i in range(30)))
    german = Reply(550, "5.1.1", ("Empfänger unbekannt",))
    bob = dataclasses.replace(failed(entry), last_reply=long_reply)
    recipients = [bob, dataclasses.replace(failed(entry), address=Address("bøb", "remote.test"),
                                           last_reply=german)]
    data, msg = build(entry, recipients)
    assert max(len(line) for line in data.split(b"\n")) <= 998
    _human, status, _returned = list(msg.iter_parts())
    _head, first, second = status.get_payload()
    assert first["Diagnostic-Code"].startswith("smtp; 550 5.1.1 line 0")
    assert first["Diagnostic-Code"].endswith("...")
    assert second["Final-Recipient"] == "utf-8; b\\x{F8}b@remote.test"
    assert second["Diagnostic-Code"] == "smtp; 550 5.1.1 Empf\\x{E4}nger unbekannt"
    assert b"=?" not in data


def test_control_characters_of_a_reply_are_escaped_in_the_human_part(tmp_path):
    # an ESC from a server must not reach the sender's terminal
    entry = make_entry(tmp_path)
    nasty = Reply(550, "5.1.1", ("no such user \x1b[2J\x07 here, Empfänger",))
    _, msg = build(entry, [dataclasses.replace(failed(entry), last_reply=nasty)])
    text = next(iter(msg.iter_parts())).get_content()
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x{1B}[2J\\x{7} here, Empfänger" in text


def test_a_reply_holding_the_text_of_an_escape_reaches_the_notice_as_received(tmp_path):
    # the sender reads the remote server's reply as it was given (RFC 3464
    # 2.3.6): a reply that holds the text "\x{1B}" is not rewritten as the
    # terminal's "\x{5C}x{1B}" of queue list in the notice's text, nor in
    # its Diagnostic-Code; a real control character is escaped still
    entry = make_entry(tmp_path)
    reply = Reply(550, "5.1.1", ("no user C:\\x{1B}\\mail \x1b here",))
    _, msg = build(entry, [dataclasses.replace(failed(entry), last_reply=reply)])
    human, status, _returned = list(msg.iter_parts())
    text = human.get_content().replace("\n    ", " ")  # unwrapped
    assert "no user C:\\x{1B}\\mail \\x{1B} here" in text
    assert "x{5C}" not in text
    assert status.get_payload()[1]["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 no user C:\\x{1B}\\mail \\x{1B} here")


def test_a_delay_notice_after_a_5xx_the_hub_retries_says_4xx(tmp_path):
    # a host that would not talk (554 greeting) is retried: the "delayed"
    # notice must not carry a 5.x.x status (RFC 3464 2.3.4)
    entry = make_entry(tmp_path)
    refused = dataclasses.replace(entry.recipient(BOB), last_reply=Reply.of(
        554, "5.7.1", "no service"), remote_mta="mx1.remote.test", last_attempt=1.0)
    _, msg = build(entry, [refused], bounce.DELAYED, will_retry_until=1_700_432_000.0)
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Action"] == "delayed" and block["Status"] == "4.7.1"


def test_only_control_characters_are_escaped(tmp_path):
    entry = make_entry(tmp_path)
    reply = Reply(550, "5.1.1", ("no\u00a0such\u00adone\x9b here",))
    _, msg = build(entry, [dataclasses.replace(failed(entry), last_reply=reply)])
    text = next(iter(msg.iter_parts())).get_content()
    assert "no\u00a0such\u00adone\\x{9B}" in text


def test_an_smtputf8_message_comes_back_in_rfc_6533s_global_types(tmp_path):
    path = tmp_path / "msg"
    entry = make_entry(tmp_path, ret="FULL")
    entry = dataclasses.replace(entry, envelope=dataclasses.replace(entry.envelope, smtputf8=True),
                                eight_bit=True)
    path.write_bytes("From: jörg@example.org\nSubject: Grüße\n\nHallo\n".encode())
    _, msg = build(entry, [failed(entry)])
    assert list(msg.iter_parts())[2].get_content_type() == "message/global"
    headers_only = dataclasses.replace(entry, envelope=dataclasses.replace(
        entry.envelope, dsn=dataclasses.replace(entry.envelope.dsn, ret="HDRS")))
    data, msg = build(headers_only, [failed(headers_only)])
    assert list(msg.iter_parts())[2].get_content_type() == "message/global-headers"
    assert "From: jörg@example.org\n".encode() in data
    # an ASCII message keeps the classic types
    _, msg = build(make_entry(tmp_path), [failed(make_entry(tmp_path))])
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"


def test_a_returned_8bit_message_says_so(tmp_path):
    # RFC 2046 5.2.1: without the field a message/rfc822 part claims 7bit
    entry = dataclasses.replace(make_entry(tmp_path, ret="FULL"), eight_bit=True)
    (tmp_path / "msg").write_bytes("Subject: Grüße\n\nHallo\n".encode())
    _data, msg = build(entry, [failed(entry)])
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    entry = make_entry(tmp_path, ret="FULL")  # 7-bit: no field, the default is right
    _data, msg = build(entry, [failed(entry)])
    assert list(msg.iter_parts())[2]["Content-Transfer-Encoding"] is None


def test_an_ascii_message_sent_with_8bitmime_comes_back_without_an_8bit_label(tmp_path):
    # BODY=8BITMIME makes the entry's eight_bit true whatever its octets:
    # the returned all-ASCII message was labelled 8bit, in a notice of
    # ASCII octets that goes without BODY=8BITMIME (dsn_envelope), to a
    # next hop that may not take 8-bit content
    entry = dataclasses.replace(make_entry(tmp_path, ret="FULL"), eight_bit=True)
    data, msg = build(entry, [failed(entry)])
    assert data.isascii() and b"8bit" not in data
    assert list(msg.iter_parts())[2]["Content-Transfer-Encoding"] is None
    assert not bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False).body_8bit


@pytest.mark.parametrize("original, utf8, label", [
    (ORIGINAL, False, None),
    ("Subject: Grüße\n\nHallo\n".encode(), False, "8bit"),  # returned headers
    (ORIGINAL, True, "8bit"),  # RFC 6533: the global parts are 8bit
])
def test_the_report_is_labelled_8bit_when_a_part_is(tmp_path, original, utf8, label):
    # RFC 2045 6.4, 2.7: a multipart's encoding covers its parts, and the
    # default 7bit it claimed was untrue of a notice with an 8bit part
    entry = make_entry(tmp_path)
    entry = dataclasses.replace(entry, envelope=dataclasses.replace(entry.envelope,
                                                                    smtputf8=utf8))
    (tmp_path / "msg").write_bytes(original)
    data, msg = build(entry, [failed(entry)])
    assert msg["Content-Transfer-Encoding"] == label
    assert any(p["Content-Transfer-Encoding"] == "8bit" for p in msg.iter_parts()) == bool(label)
    if label:  # the 7-bit copy for a next hop without 8BITMIME relabels it
        import io

        from txmailhub.relay.mime7bit import to_7bit

        out = io.BytesIO()
        to_7bit(io.BytesIO(data), out)
        assert out.getvalue().isascii()
        assert message_from_bytes(out.getvalue())["Content-Transfer-Encoding"] == "7bit"


def test_the_hubs_own_judgement_is_not_quoted_as_the_remote_servers(tmp_path):
    # RFC 3464 2.3.6: "smtp;" is what the remote MTA said; a limit this hub
    # checked itself (or a timeout) is X-txmailhub, and not "host X said"
    from txmailhub.smtp.reply import LocalReply

    entry = make_entry(tmp_path)
    mine = LocalReply(552, "5.3.4", ("message too big for the remote server",))
    _data, msg = build(entry, [failed(entry, reply=mine)])
    human, status, _ = list(msg.iter_parts())
    text = " ".join(human.get_content().split())
    assert ("<bob@remote.test>: this hub's own account (not mx1.remote.test's reply): "
            "552 5.3.4 message too big") in text
    assert "said" not in text and "while talking to" not in text
    block = status.get_payload()[1]
    assert block["Diagnostic-Code"].startswith("X-txmailhub; 552 5.3.4")
    # RFC 3464 2.3.5: Remote-MTA keeps the "while talking to" of older
    # notices: the host the attempt reached, whose words these are not (the
    # Diagnostic-Code's type says so)
    assert block["Remote-MTA"] == "dns; mx1.remote.test"


@pytest.mark.parametrize("action", [bounce.FAILED, bounce.DELAYED])
def test_the_hubs_own_454_is_not_given_as_a_reply_of_the_host(tmp_path, action):
    # A smarthost that offers no STARTTLS while a password is configured:
    # the hub keeps the mail queued with a 454 of its own, which the host
    # never sent.  Neither notice may read as that host's reply: no
    # "while talking to <host>:" before it; the Remote-MTA names the host
    # the attempt reached (RFC 3464 2.3.5), the Diagnostic-Code's type says
    # whose words these are
    from txmailhub.smtp.reply import LocalReply

    entry = make_entry(tmp_path, notify=("FAILURE", "DELAY"))
    mine = LocalReply(454, "4.7.0", ("the smarthost password is only sent over TLS, and this "
                                     "session has none",))
    rec = failed(entry, reply=mine, mta="smtp.example.net")
    _data, msg = build(entry, [rec], action=action, will_retry_until=1_700_086_400.0)
    human, status, _ = list(msg.iter_parts())
    text = " ".join(human.get_content().split())
    assert "while talking to" not in text and "said" not in text
    assert ("<bob@remote.test>: this hub's own account (not smtp.example.net's reply): 454 "
            "4.7.0 the smarthost password is only sent over TLS") in text
    block = status.get_payload()[1]
    assert block["Remote-MTA"] == "dns; smtp.example.net"
    assert block["Diagnostic-Code"].startswith("X-txmailhub; 454 4.7.0 the smarthost password")
    # the host's own reply keeps both, as before
    _data, msg = build(entry, [failed(entry, reply=Reply.of(454, "4.7.0", "TLS not available"),
                                      mta="smtp.example.net")],
                       action=action, will_retry_until=1_700_086_400.0)
    human, status, _ = list(msg.iter_parts())
    assert "host smtp.example.net said: 454 4.7.0 TLS not available" in human.get_content()
    block = status.get_payload()[1]
    assert block["Remote-MTA"] == "dns; smtp.example.net"
    assert block["Diagnostic-Code"] == "smtp; 454 4.7.0 TLS not available"


def test_the_hubs_own_account_without_a_host_says_so(tmp_path):
    from txmailhub.smtp.reply import LocalReply

    entry = make_entry(tmp_path)
    mine = LocalReply(550, "5.1.2", ("remote.test has no mail exchanger (null MX)",))
    _data, msg = build(entry, [failed(entry, reply=mine, mta=None)])
    human, status, _ = list(msg.iter_parts())
    assert ("<bob@remote.test>: this hub's own account: 550 5.1.2 remote.test has no mail"
            in " ".join(human.get_content().split()))
    assert "Remote-MTA" not in status.get_payload()[1]


def test_a_notice_to_a_local_sender_is_routed_like_any_local_mail(tmp_path):
    # the sender's address was never checked (MAIL FROM is not): a notice to
    # a local address that is no mailbox is dropped -- no Maildir made for
    # nobody -- and one to an alias reaches its members
    router = StaticRouter({"alice": None, "team": ["alice", "zed@remote.test"]})
    components, spooler, store = dsn_components(tmp_path, router)
    entry = make_entry(tmp_path)
    data, _ = build(entry, [failed(entry)])
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False)
    nobody = dataclasses.replace(env, recipients=(Address("nobody", "example.org"),))
    d = bounce.send_dsn(components, nobody, data)
    assert d.result == "dropped, the sender is no local mailbox (550 5.1.1 No such user here)"
    assert spooler.writers == [] and store.deliveries == []
    team = dataclasses.replace(env, recipients=(Address("Team", "EXAMPLE.org"),))
    d = bounce.send_dsn(components, team, data)
    assert d.result == "queued for delivery"  # alice's copy stored, zed's queued
    [stored] = store.messages(ALICE)
    assert stored == b"Return-Path: <>\n" + data
    assert components.queue.enqueued[-1][0].recipients == (Address("zed", "remote.test"),)


def test_a_notice_to_a_sender_missing_from_a_users_file_in_doubt_waits(tmp_path):
    # the users file changed a moment ago and may have been read
    # half-written: a local sender missing from it may be one not written
    # yet, so the notice stays queued for a later attempt (DSNRefused)
    # instead of being dropped for good; once the file is settled, a
    # sender that is no mailbox is dropped as before
    from txmailhub.router import Router

    class Users:
        in_doubt = True

        def contains(self, address):
            return address.key == "alice@example.org"

        def changing(self):
            return self.in_doubt

    users = Users()
    components, spooler, store = dsn_components(tmp_path, Router(["example.org"], users))
    entry = make_entry(tmp_path)
    data, _ = build(entry, [failed(entry)])
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False)
    nobody = dataclasses.replace(env, recipients=(Address("bob", "example.org"),))
    failures = []
    bounce.send_dsn(components, nobody, data).addErrback(failures.append)
    (failure,) = failures
    assert failure.check(bounce.DSNRefused)
    assert "Mailbox list is being updated" in str(failure.value)
    assert spooler.writers == [] and store.deliveries == []
    users.in_doubt = False
    d = bounce.send_dsn(components, nobody, data)
    assert d.result == "dropped, the sender is no local mailbox (550 5.1.1 No such user here)"


def _original_recipient(tmp_path, orcpt):
    entry = make_entry(tmp_path)
    bob = dataclasses.replace(failed(entry), orcpt=orcpt)
    _, msg = build(entry, [bob])
    _, status, _ = list(msg.iter_parts())
    return status.get_payload()[1]["Original-Recipient"]


@pytest.mark.parametrize(("orcpt", "field"), [
    # RFC 6533 3: a utf-8 address is utf-8-addr-xtext in the status part,
    # ASCII or not: "+", "=", "\" and SP escaped, or a reader that decodes
    # the field gets another address ("\x{E9}" literally, here)
    ("utf-8;a+b@remote.test", "utf-8; a\\x{2B}b@remote.test"),
    ("utf-8;\\x{E9}@remote.test", "utf-8; \\x{5C}x{E9}@remote.test"),
    ("utf-8;j\u00f6rg@remote.test", "utf-8; j\\x{F6}rg@remote.test"),
    # RFC 3461 4.2: rfc822 values are printable US-ASCII, white space
    # included: a TAB keeps the type it came with
    ("rfc822;a\tb@remote.test", "rfc822; a\tb@remote.test"),
    ("rfc822;a+b@remote.test", "rfc822; a+b@remote.test"),
])
def test_original_recipient_keeps_its_type_and_form(tmp_path, orcpt, field):
    got = _original_recipient(tmp_path, orcpt)
    assert got == field
    if field.startswith("utf-8; "):
        assert utf8_addr_decode(got[len("utf-8; "):]) == orcpt.partition(";")[2]


def test_an_original_recipient_too_long_for_a_line_is_left_out(tmp_path):
    # RFC 6533's escapes make a raw UTF-8 ORCPT up to nine times longer
    # (150 CJK characters: 1,239 characters), and xtext cannot be folded:
    # the field goes rather than a line over RFC 5322's 998
    entry = make_entry(tmp_path)
    bob = dataclasses.replace(failed(entry), orcpt="utf-8;" + "\u4e2d" * 150 + "@remote.test")
    data, msg = build(entry, [bob])
    assert max(len(line) for line in data.split(b"\n")) <= 998
    _, status, _ = list(msg.iter_parts())
    block = status.get_payload()[1]
    assert block["Original-Recipient"] is None
    assert block["Final-Recipient"] == "rfc822; bob@remote.test"


def test_an_original_recipient_of_exactly_a_full_line_is_kept(tmp_path):
    # "Original-Recipient: rfc822; " is 28 characters: 970 more make 998
    value = "a" * (970 - len("@remote.test")) + "@remote.test"
    assert _original_recipient(tmp_path, "rfc822;" + value) == "rfc822; " + value
    assert _original_recipient(tmp_path, "rfc822;a" + value) is None


def test_an_envelope_id_with_a_tab_is_given_back_as_it_came(tmp_path):
    entry = make_entry(tmp_path, envid="id\t42")
    _, msg = build(entry, [failed(entry)])
    _, status, _ = list(msg.iter_parts())
    assert status.get_payload()[0]["Original-Envelope-Id"] == "id\t42"
    # the parser lets no other control character in, but a queue record is
    # a file: one read from it goes out escaped, not raw into the header
    entry = make_entry(tmp_path, envid="id\x0142")
    _, msg = build(entry, [failed(entry)])
    _, status, _ = list(msg.iter_parts())
    assert status.get_payload()[0]["Original-Envelope-Id"] == "id+0142"
    # white space at either end would be lost to the reader's unfolding
    for envid, field in ((" id", "+20id"), ("id\t", "id+09"), (" ", "+20")):
        entry = make_entry(tmp_path, envid=envid)
        _, msg = build(entry, [failed(entry)])
        _, status, _ = list(msg.iter_parts())
        assert status.get_payload()[0]["Original-Envelope-Id"] == field


def test_a_failed_recipient_never_gets_a_success_status():
    # RFC 3464 2.3.4 / RFC 3463 2: a failed action never has a 2.x.x status,
    # whatever the last reply said (a 250 to RCPT before the transaction
    # went wrong); 5.x.x here, 4.x.x after a 4yz given up on (tested below)
    ok = Reply.of(250, "2.1.5", "ok")
    assert bounce.status_of(ok, bounce.FAILED) == "5.0.0"
    assert bounce.status_of(ok, bounce.RELAYED) == "2.1.5"
    assert bounce.status_of(Reply(250, None, ("ok",)), bounce.FAILED) == "5.0.0"


@pytest.mark.parametrize("reply, action, status", [
    # an enhanced code whose class contradicts the reply's: the action is
    # what happened, and the Status must agree with it (RFC 3464 2.3.4,
    # RFC 3463 2): a delay notice said "Status: 2.0.0", a relayed one
    # "Status: 5.1.1"
    (Reply.of(450, "2.0.0", "try later"), bounce.DELAYED, "4.0.0"),
    (Reply.of(250, "5.1.1", "ok"), bounce.RELAYED, "2.0.0"),
    (Reply.of(250, "4.2.0", "ok"), bounce.DELIVERED, "2.0.0"),
])
def test_the_status_always_has_the_class_of_the_action(tmp_path, reply, action, status):
    assert bounce.status_of(reply, action) == status
    entry = make_entry(tmp_path, notify=("SUCCESS", "DELAY"))
    rec = dataclasses.replace(failed(entry, reply=reply), state="pending")
    _, msg = build(entry, [rec], action=action, will_retry_until=1_700_400_000.0)
    _, part, _ = list(msg.iter_parts())
    assert part.get_payload()[1]["Status"] == status


@pytest.mark.parametrize("reply, action, status", [
    # a 4yz given up on (its queue lifetime over) fails with its own 4.x.x:
    # RFC 3463 2 makes a persistent transient failure 4.x.x, not 5.0.0
    (Reply.of(450, "4.2.2", "mailbox full"), bounce.FAILED, "4.2.2"),
    # a delay under a 2.x.x is 4.0.0, none of the success's detail kept
    (Reply.of(450, "2.1.5", "try later"), bounce.DELAYED, "4.0.0"),
    # a 5.x.x retried anyway keeps its detail under class 4
    (Reply.of(554, "5.7.1", "go away"), bounce.DELAYED, "4.7.1"),
    # an alias expanded (RFC 3464 2.3.3) is a success like relayed
    (Reply.of(250, "5.1.1", "ok"), bounce.EXPANDED, "2.0.0"),
    (Reply.of(250, "2.1.5", "ok"), bounce.EXPANDED, "2.1.5"),
])
def test_the_status_class_per_action_keeps_what_agrees_with_it(reply, action, status):
    assert bounce.status_of(reply, action) == status


def test_a_delay_notice_never_gets_a_permanent_status_without_an_enhanced_code(tmp_path):
    # RFC 3464 2.3.4 / RFC 3463 2: "delayed" goes with a 4.x.x status.  A
    # host that greets with "554 go away" (no enhanced code: ENHANCEDSTATUSCODES
    # comes with EHLO) is retried, so its recipients are delayed, not failed
    refused = Reply(554, None, ("mx1.remote.test go away",))
    assert bounce.status_of(refused, bounce.DELAYED) == "4.0.0"
    entry = make_entry(tmp_path)
    rec = dataclasses.replace(failed(entry, reply=refused), state="pending")
    _, msg = build(entry, [rec], action=bounce.DELAYED, will_retry_until=1_700_400_000.0)
    _, status, _ = list(msg.iter_parts())
    block = status.get_payload()[1]
    assert block["Action"] == "delayed" and block["Status"] == "4.0.0"


def test_diagnostic_code_is_folded_to_short_lines(tmp_path):
    # RFC 5322 2.1.1: lines SHOULD be at most 78 characters; a long remote
    # reply is folded at its spaces
    entry = make_entry(tmp_path)
    long_reply = Reply(550, "5.1.1", tuple(f"line {i} " + "x" * 60 for i in range(30)))
    data, _ = build(entry, [dataclasses.replace(failed(entry), last_reply=long_reply)])
    start = data.index(b"\nDiagnostic-Code: ") + 1
    field = []
    for line in data[start:].split(b"\n"):
        if field and not line[:1] == b" ":
            break
        field.append(line)
    assert len(field) > 10
    assert max(len(line) for line in field) <= 78


@pytest.mark.parametrize("pair", ["\\ ", "\\\\\\ "])
def test_diagnostic_code_is_never_folded_after_a_backslash_that_quotes_a_blank(tmp_path, pair):
    # a reply that quotes a name ("a\ b"): the fold goes before another
    # blank, never between a backslash and the blank after it (RFC 5322
    # 3.2.1), and the field unfolds to the reply
    entry = make_entry(tmp_path)
    # (the blank after the name's backslashes is the first past the line's room)
    text = 'user "' + "a" * (37 - len(pair)) + pair + 'b" unknown, ' + "see " * 20
    reply = Reply(550, "5.1.1", (text,))
    data, _ = build(entry, [dataclasses.replace(failed(entry), last_reply=reply)])
    start = data.index(b"\nDiagnostic-Code: ") + 1
    field = [data[start:].split(b"\n")[0]]
    for line in data[start:].split(b"\n")[1:]:
        if not line[:1] == b" ":
            break
        field.append(line)
    assert len(field) > 1
    for line in field:
        assert (len(line) - len(line.rstrip(b"\\"))) % 2 == 0, line
    assert b"".join(field).decode() == "Diagnostic-Code: smtp; 550 5.1.1 " + text


def test_the_human_part_keeps_at_most_900_characters_of_a_reply(tmp_path):
    entry = make_entry(tmp_path)
    huge = Reply(550, "5.1.1", tuple(f"line {i} " + "x" * 200 for i in range(200)))
    _, msg = build(entry, [dataclasses.replace(failed(entry), last_reply=huge)])
    human, _, _ = msg.iter_parts()
    human = human.get_content()
    reason = human.split("<bob@remote.test>: ", 1)[1].split("\n\n", 1)[0].rstrip("\n")
    reason = reason.replace("\n    ", " ")
    assert reason.endswith("...") and len(reason) <= 1000


def test_a_failure_after_temporary_replies_says_the_hub_gave_up(tmp_path):
    # the last reply was a 4xx: the notice must say why that is final now
    entry = make_entry(tmp_path)
    bob = failed(entry, reply=Reply.of(451, "4.3.0", "try again later"))
    _, msg = build(entry, [bob])
    human, _, _ = msg.iter_parts()
    human = human.get_content().replace("\n    ", " ")
    assert "451 4.3.0 try again later (gave up: the message stayed in the queue too long)" \
        in human


def test_the_returned_header_section_is_bounded(tmp_path):
    entry = make_entry(tmp_path)
    (tmp_path / "msg").write_bytes(b"X-Junk: " + b"y" * 70 + b"\n" * 1
                                   + b"".join(b"X-Junk: %d\n" % i for i in range(60_000))
                                   + b"\nbody\n")
    data, msg = build(entry, [failed(entry)])
    returned = list(msg.iter_parts())[2].get_payload()
    assert 0 < len(returned) <= bounce.MAX_HEADER_BYTES
    assert len(data) < 2 * bounce.MAX_HEADER_BYTES


def test_ret_full_returns_a_message_of_exactly_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(bounce, "FULL_RETURN_LIMIT", len(ORIGINAL))
    entry = make_entry(tmp_path, ret="FULL")
    _, msg = build(entry, [failed(entry)])
    assert list(msg.iter_parts())[2].get_content_type() == "message/rfc822"


class _UnavailableRouter(StaticRouter):
    """A router whose users file is away for a moment (451, not 550)."""

    def resolve(self, address):
        from txmailhub.errors import Rejected
        from txmailhub.smtp import replies

        raise Rejected(replies.LOCAL_ERROR)


def assert_refused(components, entry):
    """A failure notice about ``entry`` that ``send_dsn`` refuses
    (``DSNRefused``: the runner keeps it and tries again)."""
    data, _ = build(entry, [failed(entry)])
    d = bounce.send_dsn(components, bounce.dsn_envelope(entry, "mail.example.org", False), data)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(bounce.DSNRefused)


def test_a_notice_to_a_local_sender_waits_while_the_users_file_is_away(tmp_path):
    # not "dropped": the notice is retried later, like any local mail
    components, spooler, store = dsn_components(tmp_path, _UnavailableRouter({"alice": None}))
    assert_refused(components, make_entry(tmp_path))
    assert spooler.writers == [] and store.deliveries == []


def test_a_notice_that_could_not_be_stored_is_refused(tmp_path):
    # the mailbox failed, and so did the queue it falls back to: the
    # notice is durable nowhere, and the runner must keep it and try again
    components, _, store = dsn_components(tmp_path, StaticRouter({"alice": None}))
    store.fail[ALICE] = OSError("disk full")
    components.queue.fail = OSError("disk full")
    assert_refused(components, make_entry(tmp_path))
    assert store.messages(ALICE) == []


@pytest.mark.parametrize("smtputf8", [False, True])
def test_every_utf8_recipient_the_server_takes_fits_a_dsn_line(tmp_path, smtputf8):
    # utf-8-addr-xtext escapes "+" as \x{2B}: a 203-octet path would be a
    # 1,242-character Final-Recipient line.  RCPT refuses what no report
    # could name (501 5.1.3 Path too long); the longest it takes still fits
    # in 998 characters (RFC 5322 2.1.1).  The escaped form is a 7-bit
    # notice's (a message that came without SMTPUTF8, an alias's member);
    # a global notice names the address as it is (RFC 6533 3), shorter
    from txmailhub.errors import RemoteProtocolError
    from txmailhub.smtp import replies
    from txmailhub.smtp._parse import parse_rcpt

    with pytest.raises(RemoteProtocolError) as refused:
        parse_rcpt("TO:<" + "+" * 200 + "\u00fc@remote.test>", "example.org", True)
    assert refused.value.reply is replies.PATH_TOO_LONG
    longest = None
    for n in range(200, 0, -1):
        try:
            longest, _ = parse_rcpt(f"TO:<{'+' * n}\u00fc@remote.test>", "example.org", True)
            break
        except RemoteProtocolError:
            continue
    assert longest is not None and len(str(longest)) > 100
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\n\nbody\n")
    env = Envelope(sender=ALICE, recipients=(longest,), smtputf8=smtputf8)
    entry = dataclasses.replace(QueueEntry.new("0123456789ABCDEF", env, 1.7e9),
                                message_path=str(path))
    rec = dataclasses.replace(entry.recipients[0], state=FAILED,
                              last_reply=Reply.of(550, "5.1.1", "no such user"),
                              remote_mta="mx.remote.test", last_attempt=1.7e9)
    data = bounce.build_dsn(entry, [rec], bounce.FAILED, hostname="mail.example.org",
                            primary_domain="example.org", now=1.7e9)
    final = [line for line in data.split(b"\n") if line.startswith(b"Final-Recipient: utf-8;")]
    assert final and max(len(line) for line in data.split(b"\n")) <= 998
    if not smtputf8:
        assert len(final[0]) > 900  # the limit is the line, not far below it
    else:
        assert final[0] == f"Final-Recipient: utf-8; {longest}".encode()


def test_a_recipient_never_attempted_gets_the_class_of_its_action():
    # expired before any attempt (no reply at all): RFC 3463 classes
    assert bounce.status_of(None, bounce.DELAYED) == "4.0.0"
    assert bounce.status_of(None, bounce.FAILED) == "5.0.0"


def test_a_reply_without_an_enhanced_code_gives_its_class():
    # a server without ENHANCEDSTATUSCODES (RFC 2034): the class of its code
    greylisted = Reply(451, None, ("greylisted",))
    assert bounce.status_of(greylisted, bounce.DELAYED) == "4.0.0"
    assert bounce.status_of(Reply(550, None, ("no such user",)), bounce.FAILED) == "5.0.0"


def test_an_expanded_notice_has_no_diagnostic_code(tmp_path):
    # the alias was delivered to its members here: no remote reply to quote
    entry = make_entry(tmp_path)
    rec = dataclasses.replace(entry.recipient(BOB), last_reply=Reply.of(250, "2.0.0", "ok"))
    _, msg = build(entry, [rec], action=bounce.EXPANDED)
    _, status, _ = list(msg.iter_parts())
    block = status.get_payload()[1]
    assert block["Action"] == "expanded" and block["Diagnostic-Code"] is None


# --- RFC 6533: the notice about a message sent with SMTPUTF8 -----------------------

JORG = Address("jörg", "example.org")
BOB_UTF8 = Address("bøb", "remote.test")


def status_blocks(status):
    """The field blocks of a status part of either type.  The stdlib parses
    message/delivery-status into its blocks but knows no
    message/global-delivery-status (it takes it for one message), so that
    one is read from its octets, in the same syntax (RFC 6533 6)."""
    if status.get_content_type() == "message/delivery-status":
        return status.get_payload()
    return [message_from_bytes(block, policy=policy.default)
            for block in status.get_content().split(b"\n\n") if block.strip()]


def utf8_entry(tmp_path, sender=ALICE, recipients=(BOB_UTF8, CAROL), envid=None, ret=None,
               original=ORIGINAL):
    """A queue entry of a message sent with SMTPUTF8."""
    path = tmp_path / "msg"
    path.write_bytes(original)
    env = Envelope(sender=sender, recipients=recipients, smtputf8=True,
                   dsn=DSNRequest(ret=ret, envid=envid))
    entry = QueueEntry.new("0123456789ABCDEF", env, 1_700_000_000.0)
    return dataclasses.replace(entry, message_path=str(path), eight_bit=not original.isascii())


def test_an_smtputf8_message_gets_a_global_delivery_status_notice(tmp_path):
    # RFC 6533 3 and 6: message/global-delivery-status, the utf-8 address
    # type in its utf-8-address form (the address as it is), the ENVID as
    # the sender spelled it, the headers as message/global-headers, and
    # report-type naming the status part's subtype (RFC 6522 3)
    entry = utf8_entry(tmp_path, envid="id-\u20ac")
    bob = dataclasses.replace(failed(entry, who=BOB_UTF8), orcpt="utf-8;B\u00f8b@remote.test")
    carol = dataclasses.replace(failed(entry, who=CAROL), orcpt="utf-8;carol@remote.test")
    data, msg = build(entry, [bob, carol])
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "global-delivery-status"
    human, status, returned = msg.iter_parts()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/global-delivery-status"
    assert status["Content-Transfer-Encoding"] == "8bit"
    assert returned.get_content_type() == "message/global-headers"
    head, first, second = status_blocks(status)
    assert head["Reporting-MTA"] == "dns; mail.example.org"
    assert head["Original-Envelope-Id"] == "id-\u20ac"
    assert first["Final-Recipient"] == "utf-8; b\u00f8b@remote.test"
    assert first["Original-Recipient"] == "utf-8; B\u00f8b@remote.test"
    assert first["Action"] == "failed" and first["Status"] == "5.1.1"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.test>: user unknown"
    # an ASCII address keeps the rfc822 type; an ASCII ORCPT of type utf-8
    # keeps its type, as it is
    assert second["Final-Recipient"] == "rfc822; carol@remote.test"
    assert second["Original-Recipient"] == "utf-8; carol@remote.test"
    # raw UTF-8: no escapes, no RFC 2047 words
    assert "Final-Recipient: utf-8; bøb@remote.test\n".encode() in data
    assert "Original-Envelope-Id: id-€\n".encode() in data
    assert b"\\x{" not in data and b"=?" not in data
    assert "Subject: lunch" in returned.get_payload()[0].as_string()


def test_a_global_notice_keeps_the_classic_fields_that_are_ascii(tmp_path):
    # the same notice as a 7-bit one but for its types and UTF-8 values
    entry = utf8_entry(tmp_path, recipients=(BOB, CAROL), envid="ENV-42")
    _, msg = build(entry, [failed(entry)])
    _, status, _ = msg.iter_parts()
    assert status.get_content_type() == "message/global-delivery-status"
    # RFC 6533 6.4: "The 8-bit content transfer encoding MUST be used with
    # this content-type" (outside a 7-bit transport), ASCII content or not
    assert status["Content-Transfer-Encoding"] == "8bit"
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "message/global-headers"
    # 6.3: "Whenever possible, the 8-bit content transfer encoding SHOULD be used"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    head, bob = status_blocks(status)
    assert head["Original-Envelope-Id"] == "ENV-42"
    assert head["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert bob["Final-Recipient"] == "rfc822; bob@remote.test"
    assert bob["Remote-MTA"] == "dns; mx1.remote.test"
    assert bob["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:15:00 +0000"


def test_a_global_notice_keeps_a_utf8_reply_in_its_diagnostic_code(tmp_path):
    # RFC 6533: the fields of message/global-delivery-status may hold UTF-8
    # (RFC 6532's header syntax), Diagnostic-Code's text too: the reply as
    # the server wrote it, not RFC 3464's escapes; controls and a Unicode
    # line separator, which no header line may carry raw, are escaped still
    entry = utf8_entry(tmp_path)
    german = Reply.of(550, "5.1.1", "Empf\u00e4nger \u201ej\u00f6rg\u201c unbekannt")
    nasty = Reply.of(550, "5.1.1", "kein \u00dcbel\x1b[2J\u2028here")
    data, msg = build(entry, [failed(entry, who=BOB_UTF8, reply=german),
                              failed(entry, who=CAROL, reply=nasty)])
    _, status, _ = msg.iter_parts()
    _head, first, second = status_blocks(status)
    assert first["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 Empf\u00e4nger \u201ej\u00f6rg\u201c unbekannt")
    assert "Diagnostic-Code: smtp; 550 5.1.1 Empf\u00e4nger".encode() in data
    assert second["Diagnostic-Code"] == "smtp; 550 5.1.1 kein \u00dcbel\\x{1B}[2J\\x{2028}here"
    # the 7-bit notice of the same reply keeps RFC 3464's ASCII
    seven = make_entry(tmp_path)
    _, msg7 = build(seven, [failed(seven, reply=german)])
    assert list(msg7.iter_parts())[1].get_payload()[1]["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 Empf\\x{E4}nger \\x{201E}j\\x{F6}rg\\x{201C} unbekannt")


def test_a_long_utf8_diagnostic_code_keeps_to_the_line_limits(tmp_path):
    # RFC 6532 3.4: line lengths are octets; the field is folded by its
    # octets and cut at a character, never inside a UTF-8 sequence
    entry = utf8_entry(tmp_path)
    words = Reply.of(550, "5.1.1", " ".join(["\u65e5\u672c\u8a9e\u00e4"] * 400))
    solid = Reply.of(550, "5.1.1", "\u20ac" * 2000)
    data, msg = build(entry, [failed(entry, who=BOB_UTF8, reply=words),
                              failed(entry, who=CAROL, reply=solid)])
    data.decode("utf-8")  # (strict: no cut sequence)
    assert max(len(line) for line in data.split(b"\n")) <= 998
    field = _folded_lines(data, b"Diagnostic-Code")
    assert len(field) > 10 and max(len(line) for line in field) <= 78
    _, status, _ = msg.iter_parts()
    _head, first, second = status_blocks(status)
    assert first["Diagnostic-Code"].endswith("...")
    assert second["Diagnostic-Code"] == "smtp; 550 5.1.1 " + "\u20ac" * 295 + "..."


@pytest.mark.parametrize("utf8", [False, True])
@pytest.mark.parametrize("lead", range(10))
def test_a_diagnostic_code_cut_to_its_limit_never_cuts_an_escape(tmp_path, utf8, lead):
    # the 900 octets are counted after the escaping: the cut falls at a
    # character, or before the whole \x{HEX} that stands for one -- a
    # "\x{1F6..." would read as another character's escape, or as none
    entry = utf8_entry(tmp_path) if utf8 else make_entry(tmp_path)
    # an emoji is \x{1F600} in the 7-bit part; a bidi override in either
    reply = Reply.of(550, "5.1.1", "a" * lead + ("\U0001F600\u202e" * 200))
    _, msg = build(entry, [failed(entry, who=CAROL, reply=reply)])
    _, status, _ = msg.iter_parts()
    field = status_blocks(status)[1]["Diagnostic-Code"]
    kept = field.removeprefix("smtp; 550 5.1.1 ")
    assert kept.endswith("...") and len(kept.encode()) <= 900
    piece = "\U0001F600" if utf8 else "\\x{1F600}"
    assert re.fullmatch("a*(?:" + re.escape(piece) + "|" + re.escape("\\x{202E}") + r")*\.\.\.",
                        kept), kept[-30:]


@pytest.mark.parametrize("lead", range(8))
def test_the_human_part_cut_to_its_limit_never_cuts_an_escape(tmp_path, lead):
    # a reply of control characters, shown as \x{1B}: cut whole, before
    # an escape rather than inside it ("\x{1..." reads as no escape)
    entry = make_entry(tmp_path)
    reply = Reply.of(550, "5.1.1", "a" * lead + "\x1b" * 400)
    _, msg = build(entry, [failed(entry, reply=reply)])
    text = next(iter(msg.iter_parts())).get_content().replace("\n    ", "")  # unwrapped
    kept = text[text.index("said: 550 5.1.1 ") + len("said: 550 5.1.1 "):text.index("...")]
    assert re.fullmatch("a*(?:" + re.escape("\\x{1B}") + ")+", kept), kept[-20:]


@pytest.mark.parametrize("utf8", [False, True])
def test_a_reply_cannot_put_a_field_in_its_block_with_an_encoded_word(tmp_path, utf8):
    # a reader decodes an RFC 2047 word in a field's text (the stdlib's
    # default policy does): the server's CR LF, field and bidi override,
    # escaped when raw, came back through one
    entry = utf8_entry(tmp_path) if utf8 else make_entry(tmp_path)
    word = "=?utf-8?q?x=0D=0AFinal-Recipient:_rfc822;_evil@example.net=E2=80=AE?="
    reply = Reply.of(550, "5.1.1", f"no {word} a=?b")
    _, msg = build(entry, [failed(entry, who=CAROL, reply=reply)])
    _, status, _ = msg.iter_parts()
    block = status_blocks(status)[1]
    assert block.get_all("Final-Recipient") == ["rfc822; carol@remote.test"]
    assert block["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 no \\x{3D}?utf-8?q?x=0D=0AFinal-Recipient:_rfc822;"
        "_evil@example.net=E2=80=AE?= a\\x{3D}?b")


def test_a_7bit_messages_notice_is_unchanged_by_a_utf8_address(tmp_path):
    # a message that came without SMTPUTF8 (a UTF-8 alias member): the
    # sender never asked for UTF-8, its notice stays 7-bit, the address in
    # RFC 6533's escaped utf-8-addr-xtext and the ENVID in xtext
    entry = make_entry(tmp_path, envid="id-\u20ac")
    bob = dataclasses.replace(failed(entry), address=BOB_UTF8)
    _data, msg = build(entry, [bob])
    assert msg.get_param("report-type") == "delivery-status"
    _, status, returned = msg.iter_parts()
    assert status.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() == "text/rfc822-headers"
    head, block = status.get_payload()
    assert head["Original-Envelope-Id"] == "id-+E2+82+AC"
    assert block["Final-Recipient"] == "utf-8; b\\x{F8}b@remote.test"
    assert not bounce.dsn_envelope(entry, "mail.example.org", False).smtputf8


@pytest.mark.parametrize(("envid", "field"), [
    ("\u00e9t\u00e9\t42", "\u00e9t\u00e9\t42"),  # printable UTF-8 and a TAB: as it is
    (" \u00e9t\u00e9", "+20+C3+A9t+C3+A9"),  # white space a reader would strip: xtext
    ("\u00e9\u2028t", "+C3+A9+E2+80+A8t"),  # a Unicode line separator: xtext
])
def test_a_global_notice_gives_the_envelope_id_back_as_it_can(tmp_path, envid, field):
    entry = utf8_entry(tmp_path, envid=envid)
    _, msg = build(entry, [failed(entry, who=BOB_UTF8)])
    _, status, _ = msg.iter_parts()
    assert status_blocks(status)[0]["Original-Envelope-Id"] == field


@pytest.mark.parametrize(("local", "field"), [
    # a backslash: a reader decoding the field would take \x{E9} for an
    # escape; a line separator: a reader splitting lines as Unicode would
    # cut the field.  utf-8-addr-unitext then: UTF-8 kept, those escaped
    ("\u00e9\\x{E9}", "\u00e9\\x{5C}x{E9}"),
    ("\u00e9\u2028x", "\u00e9\\x{2028}x"),
    ("\u00e9+tag=1", "\u00e9+tag=1"),  # printable, no backslash: as it is
])
def test_a_global_notice_escapes_only_what_cannot_go_raw(tmp_path, local, field):
    who = Address(local, "remote.test")
    entry = utf8_entry(tmp_path, recipients=(who,))
    _, msg = build(entry, [failed(entry, who=who)])
    _, status, _ = msg.iter_parts()
    value = status_blocks(status)[1]["Final-Recipient"]
    assert value == f"utf-8; {field}@remote.test"
    if field != local:  # the escaped form decodes to the address
        assert utf8_addr_decode(value[len("utf-8; "):]) == str(who)


# local parts of atext and non-ASCII printable characters (RFC 6531 3.3)
_UTF8_LOCAL = st.text(
    st.one_of(st.sampled_from("abcxyzABC0189!#$%&'*+-/=?^_`{|}~"),
              st.characters(min_codepoint=0xA0, max_codepoint=0x2FFFF,
                            blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp",
                                                  "Zs"))),
    min_size=1, max_size=40).filter(lambda s: not s.isascii())


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(local=_UTF8_LOCAL)
def test_any_utf8_local_part_comes_back_as_it_is(tmp_path, local):
    who = Address(local, "remote.test")
    entry = utf8_entry(tmp_path, recipients=(who,))
    data, msg = build(entry, [failed(entry, who=who)])
    _, status, _ = msg.iter_parts()
    assert status_blocks(status)[1]["Final-Recipient"] == f"utf-8; {who}"
    assert f"\nFinal-Recipient: utf-8; {who}\n".encode() in data


def test_an_smtputf8_message_comes_back_whole_as_message_global(tmp_path):
    # RET=FULL: message/global (RFC 6533 3 / RFC 6532 3.7), an ASCII one too
    entry = utf8_entry(tmp_path, ret="FULL")
    _, msg = build(entry, [failed(entry, who=BOB_UTF8)])
    human, _, returned = msg.iter_parts()
    assert returned.get_content_type() == "message/global"
    assert "It is attached." in human.get_content()
    assert "See you at noon." in returned.get_payload()[0].get_payload()


def test_a_global_notice_is_sent_with_smtputf8(tmp_path):
    # the notice has UTF-8 in it: its envelope asks for SMTPUTF8 -- which
    # is what the relay's client puts on MAIL FROM when the next hop offers
    # it -- even to an ASCII sender
    from txmailhub.smtp.client import ClientSession, Send

    entry = utf8_entry(tmp_path)
    data, _ = build(entry, [failed(entry, who=BOB_UTF8)])
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=not data.isascii())
    assert env.smtputf8 and env.body_8bit and env.sender is None
    session = ClientSession(helo="mail.example.org", sender=env.sender,
                            recipients=[(a, None) for a in env.recipients], size=len(data),
                            eight_bit=env.body_8bit, smtputf8=env.smtputf8, tls="none")
    session.receive(b"220 hi\r\n")
    actions = session.receive(b"250-mx.remote.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
    mail = b"".join(a.data for a in actions if isinstance(a, Send))
    assert mail == b"MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\n"


def test_a_global_notice_has_a_7bit_form_for_a_server_without_smtputf8(tmp_path):
    # to an ASCII sender whose server lacks SMTPUTF8 the relay sends a 7-bit
    # copy: the global types may be encoded (RFC 6533 6), so the notice is
    # not lost to "no 7-bit form"
    from txmailhub.relay import mime7bit

    entry = utf8_entry(tmp_path, envid="id-\u20ac",
                       original="From: jörg@example.org\nSubject: x\n\nbody\n".encode())
    data, _ = build(entry, [failed(entry, who=BOB_UTF8)])
    src, dst = tmp_path / "notice", tmp_path / "notice.7bit"
    src.write_bytes(data)
    mime7bit.convert_file(str(src), str(dst))
    seven = dst.read_bytes()
    assert seven.isascii()
    head, body = seven.split(b"Content-Type: message/global-delivery-status\n", 1)[1].split(
        b"\n\n", 1)
    assert head == b"Content-Transfer-Encoding: base64"
    fields = base64.b64decode(body.split(b"\n--", 1)[0])
    assert "\r\nFinal-Recipient: utf-8; bøb@remote.test\r\n".encode() in fields


def test_a_global_notice_is_stored_and_queued_as_it_is(tmp_path):
    # through the normal path: byte for byte into a local mailbox, and into
    # the queue with SMTPUTF8 on its envelope
    components, _, store = dsn_components(tmp_path, StaticRouter({"alice": None}))
    entry = utf8_entry(tmp_path, envid="id-\u20ac")
    data, _ = build(entry, [failed(entry, who=BOB_UTF8)])
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=True)
    assert bounce.send_dsn(components, env, data).result == "delivered to the mailbox"
    [stored] = store.messages(ALICE)
    assert stored == b"Return-Path: <>\n" + data
    zed = dataclasses.replace(env, recipients=(Address("zed", "remote.test"),))
    assert bounce.send_dsn(components, zed, data).result == "queued for delivery"
    queued = components.queue.enqueued[-1][0]
    assert queued.smtputf8 and queued.body_8bit


@pytest.mark.parametrize("header", [
    # a line that is no header field (some clients send them): a parse and
    # regeneration turned the fields after it into a body of the part,
    # which then was no header section (RFC 6533 6.3)
    b"Received: from x\nSubject: lunch\nnot a field\nX-After: kept\n",
    # the fields as the sender wrote them: no space added after the colon,
    # none taken from the value
    b"Subject:lunch\nX-Spaces:  two  \nFrom: j\xc3\xb6rg@example.org\n",
])
def test_a_global_notice_returns_the_header_section_as_it_is(tmp_path, header):
    # message/global-headers as text/rfc822-headers: the octets of the
    # original's header section, which a reader parses back whole
    entry = utf8_entry(tmp_path, original=header + b"\nbody\n")
    data, msg = build(entry, [failed(entry, who=BOB_UTF8)])
    _, _, returned = msg.iter_parts()
    assert returned.get_content_type() == "message/global-headers"
    # the part's own header, its blank line, the section, the boundary
    assert b"\n\n" + header + b"\n--==" in data
    [inner] = returned.get_payload()
    assert inner["Subject"] is not None


@pytest.mark.parametrize("utf8", [False, True])
def test_ret_full_returns_the_original_octets_as_they_are(tmp_path, utf8):
    # the returned message is the sender's own: not parsed and generated
    # again, which respaces fields, moves fields after a line that is no
    # field into the body and may re-fold or re-encode a multipart body
    # (a signature over the original would no longer verify)
    original = (b"From: alice@example.org\nSubject:x\nX-Folded: a\n\tb\nnot a field\n"
                b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n"
                b"--b1\nContent-Type: text/plain\n\n  spaced   text  \n--b1--\n")
    entry = utf8_entry(tmp_path, ret="FULL") if utf8 else make_entry(tmp_path, ret="FULL")
    with open(entry.message_path, "wb") as f:
        f.write(original)
    data, msg = build(entry, [failed(entry, who=BOB_UTF8 if utf8 else BOB)])
    human, _, returned = msg.iter_parts()
    assert returned.get_content_type() == ("message/global" if utf8 else "message/rfc822")
    assert "It is attached." in human.get_content()
    _, sep, rest = data.partition(b"Content-Type: message/"
                                  + (b"global" if utf8 else b"rfc822") + b"\n")
    assert sep
    # the part's own fields (a Content-Transfer-Encoding, maybe), a blank line
    body = rest[1:] if rest.startswith(b"\n") else rest.split(b"\n\n", 1)[1]
    assert body.startswith(original)
    # and what follows the original is only the report's closing boundary
    assert body[len(original):].strip().startswith(b"--") and body.rstrip().endswith(b"--")


def test_an_all_ascii_global_notice_is_sent_as_the_8bit_message_its_labels_say(tmp_path):
    # Its parts are labelled 8bit whatever they hold (RFC 6533 6.3, 6.4);
    # RFC 6533 6.4 lifts that only "over a 7-bit transport environment".
    # Queued as 7-bit because its octets are all ASCII, it went with those
    # labels in a transaction without BODY=8BITMIME, and to a next hop
    # without SMTPUTF8 unconverted (relay.rst: a 7-bit copy).  An 8-bit
    # body asks for BODY=8BITMIME, or gets the 7-bit copy, relabelled
    # (the queue's eight_bit is the envelope's body_8bit, else the octets).
    entry = utf8_entry(tmp_path, recipients=(BOB, CAROL))
    data, _ = build(entry, [failed(entry)])
    assert data.isascii() and b"Content-Transfer-Encoding: 8bit" in data
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=not data.isascii())
    assert env.body_8bit


# --- edges a mutation audit found untested ------------------------------------


TRY_LATER = Reply.of(451, "4.7.1", "try later")


def delayed(entry, reply=TRY_LATER, who=BOB):
    return dataclasses.replace(entry.recipient(who), last_reply=reply,
                               remote_mta="mx1.remote.test", last_attempt=1_700_000_100.0)


def human_text(msg) -> str:
    """The human-readable part's text, its wrapped lines joined again."""
    human, _, _ = msg.iter_parts()
    return human.get_content().replace("\n    ", " ")


def test_will_retry_until_is_only_in_a_delay_notice(tmp_path):
    """RFC 3464 2.3.9: Will-Retry-Until is for "delayed" DSNs only.  The
    runner passes ``will_retry_until`` whatever the action, so a failure
    notice must leave it out, in both parts."""
    entry = make_entry(tmp_path)
    _, msg = build(entry, [failed(entry)], will_retry_until=1_700_432_000.0)
    human, status, _ = list(msg.iter_parts())
    assert status.get_payload()[1]["Will-Retry-Until"] is None
    assert "do not need to send it again" not in human.get_content()
    _, msg = build(entry, [delayed(entry)], bounce.DELAYED, will_retry_until=1_700_432_000.0)
    human, status, _ = list(msg.iter_parts())
    assert status.get_payload()[1]["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert ("It will be retried until Sun, 19 Nov 2023 22:13:20 +0000.\n"
            "You do not need to send it again.\n") in human.get_content()


@pytest.mark.parametrize("action, reply, status", [
    # RFC 3463 2: class 4 is a "persistent transient failure", one that
    # "has caused abandonment or delay": a 4yz kept to the end of the queue
    # lifetime fails as 4.0.0, as a 4.x.x enhanced code is kept as it is
    (bounce.FAILED, Reply(421, None, ("busy",)), "4.0.0"),
    (bounce.FAILED, Reply(400, None, ("busy",)), "4.0.0"),
    (bounce.FAILED, Reply(550, None, ("no such user",)), "5.0.0"),
    # RFC 3464 2.3.3: relayed and expanded are successes (2.x.x) with or
    # without an enhanced code in the last reply, or with no reply at all
    (bounce.RELAYED, Reply(250, None, ("ok",)), "2.0.0"),
    (bounce.RELAYED, None, "2.0.0"),
    (bounce.EXPANDED, None, "2.0.0"),
])
def test_status_of_a_reply_without_an_enhanced_code(tmp_path, action, reply, status):
    entry = make_entry(tmp_path)
    rec = dataclasses.replace(failed(entry), last_reply=reply)
    _, msg = build(entry, [rec], action)
    assert list(msg.iter_parts())[1].get_payload()[1]["Status"] == status


@pytest.mark.parametrize("envid", ["order 42", "a~b", "tab\there"])
def test_a_printable_envelope_id_is_shown_as_it_is(tmp_path, envid):
    # RFC 3461 4.4: an ENVID is "printable (graphic and white space)"
    # US-ASCII; the notice gives it back as the sender spelled it (RFC 3464
    # 2.2.1), the space, the tilde and an inner TAB included
    entry = make_entry(tmp_path, envid=envid)
    _, msg = build(entry, [failed(entry)])
    assert list(msg.iter_parts())[1].get_payload()[0]["Original-Envelope-Id"] == envid


def test_an_orcpt_of_type_utf_8_in_upper_case_is_escaped_all_the_same(tmp_path):
    # address types are matched without regard to case (decode_orcpt does
    # so too); RFC 6533 3: in the 7-bit part a utf-8 address is
    # utf-8-addr-xtext, "+" escaped, or a reader decoding it gets another one
    entry = make_entry(tmp_path)
    bob = dataclasses.replace(failed(entry), orcpt="UTF-8;bob+x@remote.test")
    _, msg = build(entry, [bob])
    field = list(msg.iter_parts())[1].get_payload()[1]["Original-Recipient"]
    assert field == "utf-8; bob\\x{2B}x@remote.test"
    assert utf8_addr_decode(field.split("; ", 1)[1]) == "bob+x@remote.test"


def test_an_orcpt_with_a_control_character_never_reaches_a_field_raw(tmp_path):
    # a decoded rfc822 ORCPT that is not printable ASCII (RFC 3461 4.2 asks
    # for it) is given as a utf-8 address, escaped: a raw control character
    # in a header field is refused by RFC 5322 2.2
    entry = make_entry(tmp_path)
    bob = dataclasses.replace(failed(entry), orcpt="rfc822;bob\x01@remote.test")
    data, msg = build(entry, [bob])
    assert b"\x01" not in data
    field = list(msg.iter_parts())[1].get_payload()[1]["Original-Recipient"]
    assert field.startswith("utf-8; bob\\x{")
    assert utf8_addr_decode(field.split("; ", 1)[1]) == "bob\x01@remote.test"


def test_an_original_recipient_line_is_measured_in_octets(tmp_path):
    # RFC 6532 3.4 / RFC 5322 2.1.1: the 998 limit is on octets; in a global
    # notice a UTF-8 ORCPT of 490 characters is 980 octets and more, so
    # its field goes (Final-Recipient stays)
    value = "é" * 489 + "@x"
    entry = utf8_entry(tmp_path, recipients=(BOB, CAROL))
    bob = dataclasses.replace(failed(entry), orcpt="utf-8;" + value)
    data, msg = build(entry, [bob])
    assert max(len(line) for line in data.split(b"\n")) <= 998
    block = status_blocks(list(msg.iter_parts())[1])[1]
    assert block["Original-Recipient"] is None and block["Final-Recipient"] is not None


def test_a_long_diagnostic_keeps_900_characters_of_the_reply(tmp_path):
    # the module's rule: at most 900 characters of a remote reply, the
    # last three of them "..." when it was cut; a reply of exactly 900 whole
    entry = make_entry(tmp_path)
    for length, cut in ((900, False), (901, True)):
        # words of 9, the last cut to end the reply with a letter (a field
        # value's trailing space is no part of it)
        text = ("x" * 9 + " ") * 100
        text = text[: length - len("550 5.1.1 ") - 1].rstrip(" ")
        text += "z" * (length - len("550 5.1.1 ") - len(text))
        reply = Reply.of(550, "5.1.1", text)
        assert len(reply.text()) == length
        _, msg = build(entry, [failed(entry, reply=reply)])
        field = list(msg.iter_parts())[1].get_payload()[1]["Diagnostic-Code"]
        kept = field.removeprefix("smtp; ")
        assert len(kept) == 900
        assert kept == (reply.text()[:897] + "..." if cut else reply.text())


def test_no_line_of_a_notice_about_a_long_reply_is_over_78_characters(tmp_path):
    # RFC 5322 2.1.1: lines SHOULD be at most 78 characters.  The reply
    # goes into Diagnostic-Code (folded at its spaces) and the human part
    # (wrapped, a word longer than a line broken too)
    entry = make_entry(tmp_path)
    reply = Reply.of(550, "5.7.1", "rejected: " + "see policy " * 40 + "y" * 300)
    data, msg = build(entry, [failed(entry, reply=reply)])
    human, _, _ = msg.iter_parts()
    assert max(len(line) for line in human.get_content().split("\n")) <= 78
    field_lines = data.split(b"\nDiagnostic-Code: ")[1].split(b"\n")
    head = [b"Diagnostic-Code: " + field_lines[0]]
    head += [line for line in field_lines[1:] if line.startswith(b" ")][:-1]  # before the word
    assert len(head) > 3 and max(len(line) for line in head) <= 78


def test_the_human_part_says_what_happened_and_nothing_else(tmp_path):
    # RFC 3464 2.3.3: "delayed" is not given up, "relayed" went to a host
    # without DSN, "delivered" was delivered
    entry = make_entry(tmp_path)
    _, msg = build(entry, [delayed(entry)], bounce.DELAYED, will_retry_until=1_700_432_000.0)
    text = human_text(msg)
    assert "451 4.7.1 try later" in text and "gave up" not in text
    gone = failed(entry, reply=Reply.of(451, "4.7.1", "try later"))
    _, msg = build(entry, [gone])
    assert "(gave up: the message stayed in the queue too long)" in human_text(msg)
    ok = dataclasses.replace(delayed(entry), last_reply=Reply.of(250, "2.0.0", "ok"))
    _, msg = build(entry, [ok], bounce.RELAYED)
    text = human_text(msg)
    assert "(relayed: no DSN request went to the next hop)" in text
    _, msg = build(entry, [ok], bounce.DELIVERED)
    text = human_text(msg)
    assert "delivery via mx1.remote.test" in text and "relayed" not in text
    never_tried = dataclasses.replace(entry.recipient(BOB), last_reply=None)
    _, msg = build(entry, [never_tried])
    assert "<bob@remote.test>: no reason recorded" in human_text(msg)


def test_the_report_is_labelled_8bit_for_any_one_of_its_parts(tmp_path):
    # RFC 2045 6.4: the human part alone 8bit (a reply in UTF-8), and the
    # global status part alone (an all-ASCII message returned whole)
    entry = make_entry(tmp_path)
    reply = Reply.of(550, "5.1.1", "Empf\u00e4nger unbekannt")
    _, msg = build(entry, [failed(entry, reply=reply)])
    labels = [p["Content-Transfer-Encoding"] for p in msg.iter_parts()]
    assert labels == ["8bit", None, None]
    assert msg["Content-Transfer-Encoding"] == "8bit"
    entry = make_entry(tmp_path, ret="FULL")
    entry = dataclasses.replace(entry, envelope=dataclasses.replace(entry.envelope,
                                                                    smtputf8=True))
    _, msg = build(entry, [failed(entry)])
    labels = [p["Content-Transfer-Encoding"] for p in msg.iter_parts()]
    assert labels == ["7bit", "8bit", None]
    assert msg["Content-Transfer-Encoding"] == "8bit"


def test_the_human_part_is_labelled_7bit_or_8bit_by_its_octets(tmp_path):
    # RFC 2045 2.7, 2.8: 7bit data is US-ASCII; a part with octets above
    # 127 says 8bit (and an ASCII one does not claim 8bit, which would ask
    # the next hop for 8BITMIME, RFC 6152)
    entry = make_entry(tmp_path)
    _, msg = build(entry, [failed(entry)])
    assert next(msg.iter_parts())["Content-Transfer-Encoding"] == "7bit"
    reply = Reply.of(550, "5.1.1", "Empfänger unbekannt")
    data, msg = build(entry, [failed(entry, reply=reply)])
    assert next(msg.iter_parts())["Content-Transfer-Encoding"] == "8bit"
    assert "Empfänger unbekannt".encode() in data


def test_ret_full_returns_a_message_of_exactly_the_limit_whole(tmp_path):
    # RET=FULL returns the whole message up to FULL_RETURN_LIMIT octets,
    # that many included (docs/relay.rst)
    entry = make_entry(tmp_path, ret="FULL")
    body = b"x" * 76 + b"\n"
    data = ORIGINAL + body * ((bounce.FULL_RETURN_LIMIT - len(ORIGINAL)) // len(body))
    data += b"y" * (bounce.FULL_RETURN_LIMIT - len(data) - 1) + b"z"  # no LF: none added back
    assert len(data) == bounce.FULL_RETURN_LIMIT == 1024 * 1024
    (tmp_path / "msg").write_bytes(data)
    raw, msg = build(entry, [failed(entry)])
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    assert data in raw


@pytest.mark.parametrize("ret", ["FULL", None])
def test_eight_bit_octets_returned_are_labelled_8bit_whatever_the_envelope_said(tmp_path, ret):
    # RFC 2046 5.2.1 and RFC 2045 2.7: a part with octets above 127 is not
    # 7bit, the default.  A client may send them without BODY=8BITMIME
    # (the entry's eight_bit then false); the returned part still says so
    entry = make_entry(tmp_path, ret=ret)
    (tmp_path / "msg").write_bytes("From: alice@example.org\nSubject: Grüße\n\nHallo\n".encode())
    assert not entry.eight_bit
    _, msg = build(entry, [failed(entry)])
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == ("message/rfc822" if ret else "text/rfc822-headers")
    assert returned["Content-Transfer-Encoding"] == "8bit"


def test_the_headers_of_a_message_stored_with_crlf_stop_at_its_empty_line(tmp_path):
    # RFC 6522 / RFC 3462: text/rfc822-headers holds the header section only
    entry = make_entry(tmp_path)
    (tmp_path / "msg").write_bytes(ORIGINAL.replace(b"\n", b"\r\n"))
    _, msg = build(entry, [failed(entry)])
    returned = list(msg.iter_parts())[2].get_payload()
    assert "Subject: lunch" in returned and "See you at noon" not in returned


def test_the_notice_envelope_asks_for_8bitmime_when_the_notice_has_8_bit_octets(tmp_path):
    # RFC 6152: an 8-bit body travels with BODY=8BITMIME; the runner says
    # whether the notice has such octets (has_8bit)
    entry = make_entry(tmp_path)
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=True)
    assert env.body_8bit and env.sender is None and env.recipients == (ALICE,)
    assert env.helo == "mail.example.org"
    assert not bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False).body_8bit


def test_a_header_section_of_exactly_the_limit_is_returned_whole(tmp_path):
    # headers are returned up to MAX_HEADER_BYTES octets, that many included
    entry = make_entry(tmp_path)
    line = b"X-Filler: " + b"f" * 89 + b"\n"  # 100 octets
    head = ORIGINAL.split(b"\n\n")[0] + b"\n"
    fill = bounce.MAX_HEADER_BYTES - len(head) - len(b"X-Last: yes\n")
    head += line * (fill // 100) + b"X-Pad: " + b"p" * (fill % 100 - 8) + b"\n"
    head += b"X-Last: yes\n"
    assert len(head) == bounce.MAX_HEADER_BYTES
    (tmp_path / "msg").write_bytes(head + b"\nbody\n")
    _, msg = build(entry, [failed(entry)])
    assert list(msg.iter_parts())[2].get_payload().endswith("ppp\nX-Last: yes\n")


def test_build_dsn_uses_the_message_id_it_is_given(tmp_path):
    entry = make_entry(tmp_path)
    _, msg = build(entry, [failed(entry)], message_id="<dsn.1@mail.example.org>")
    assert msg["Message-ID"] == "<dsn.1@mail.example.org>"


def test_a_message_file_that_cannot_be_read_still_gives_a_notice(tmp_path):
    # the notice goes without the headers rather than not at all: any
    # OSError, not only a missing file (here a directory in its place)
    entry = dataclasses.replace(make_entry(tmp_path), message_path=str(tmp_path))
    _, msg = build(entry, [failed(entry)])
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload() == ""


def test_send_dsn_spools_a_notice_of_any_size_whole(tmp_path):
    # written in blocks of 64 KiB: one octet past a block is not lost
    components, _, store = dsn_components(tmp_path, StaticRouter({"alice": None}))
    entry = make_entry(tmp_path)
    data, _ = build(entry, [failed(entry)])
    data = data + b"x" * (65536 * 2 + 1 - len(data) - 1) + b"\n"
    assert len(data) % 65536 == 1
    env = bounce.dsn_envelope(entry, "mail.example.org", has_8bit=False)
    assert bounce.send_dsn(components, env, data).result == "delivered to the mailbox"
    assert store.messages(ALICE) == [b"Return-Path: <>\n" + data]


def _folded_lines(data: bytes, name: bytes) -> list[bytes]:
    """The lines of the field ``name`` in ``data`` (its first line and
    its continuation lines, LF line ends)."""
    start = data.index(b"\n" + name + b": ") + 1
    lines = data[start:].split(b"\n")
    field = [lines[0]]
    for line in lines[1:]:
        if line[:1] not in (b" ", b"\t"):
            break
        field.append(line)
    return field

@pytest.mark.parametrize("width", range(40, 120))
@pytest.mark.parametrize("tail", ["  ", "   end", "     "])
def test_diagnostic_code_unfolds_to_the_reply_and_has_no_blank_line(tmp_path, width, tail):
    # RFC 5322 2.2.3: a fold is a line break put before a blank, and
    # unfolding (removing the breaks) gives the field back; 3.2.2: no line
    # of a folded field is all blanks.  A run of blanks at a fold point
    # lost its blanks, or made a line of one blank.
    entry = make_entry(tmp_path)
    reply = Reply(550, "5.1.1", ("y" * width + " " + "z" * 30 + tail,))
    data, _ = build(entry, [failed(entry, reply=reply)])
    field = _folded_lines(data, b"Diagnostic-Code")
    assert all(line.strip(b" \t") for line in field)
    assert b"".join(field) == b"Diagnostic-Code: smtp; " + reply.text().encode()


def test_a_hostname_with_a_final_dot_gives_a_message_id_of_rfc_5322(tmp_path):
    # [hub] hostname = "mail.example.org." is allowed (the root's dot); the
    # notice's msg-id has a dot-atom-text on the right of its "@" (RFC 5322
    # 3.6.4: no final dot), and Reporting-MTA names the host as Remote-MTA
    # does (RFC 3464 2.2.2), as the MSA's Message-ID does
    entry = make_entry(tmp_path)
    data = bounce.build_dsn(entry, [failed(entry)], bounce.FAILED,
                            hostname="mail.example.org.", primary_domain="example.org",
                            now=1_700_000_200.0)
    msg = message_from_bytes(data, policy=policy.default)
    atom = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    dot_atom = rf"{atom}(?:\.{atom})*"
    assert re.fullmatch(rf"<{dot_atom}@{dot_atom}>", str(msg["Message-ID"]))
    assert str(msg["Message-ID"]).endswith("@mail.example.org>")
    status = list(msg.iter_parts())[1]
    assert status.get_payload()[0]["Reporting-MTA"] == "dns; mail.example.org"


# --- RFC 5322 3.3, 3.6, 3.6.4, RFC 2046 5.1.1, RFC 3464 2.1-2.3 on every notice ---

_DATE_TIME = re.compile(  # RFC 5322 3.3 as generated: day-of-week, +hhmm
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{1,2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MSG_ID = re.compile(rf"<{_ATEXT}(\.{_ATEXT})*@{_ATEXT}(\.{_ATEXT})*>")
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")  # RFC 3464 2.3.4, RFC 3463


@pytest.mark.parametrize("action", [bounce.FAILED, bounce.DELAYED, bounce.DELIVERED,
                                    bounce.RELAYED, bounce.EXPANDED])
@pytest.mark.parametrize("ret", [None, "FULL"])
def test_every_notice_has_the_fields_and_parts_the_rfcs_require(tmp_path, action, ret):
    entry = make_entry(tmp_path, ret=ret, envid="E1", notify=("SUCCESS", "FAILURE", "DELAY"))
    reply = {bounce.FAILED: USER_UNKNOWN, bounce.DELAYED: TRY_LATER}.get(
        action, Reply.of(250, "2.0.0", "ok"))
    recs = [dataclasses.replace(failed(entry, who=w, reply=reply), orcpt=f"rfc822;{w}")
            for w in (BOB, CAROL)]
    data, msg = build(entry, recs, action, will_retry_until=1_700_432_000.0)
    head = data.split(b"\n\n", 1)[0].decode()
    names = [line.split(":", 1)[0].lower() for line in head.split("\n") if line[:1] != " "]
    # RFC 5322 3.6: exactly one Date and From; at most one of the others
    for name in ("date", "from", "to", "message-id", "subject", "mime-version"):
        assert names.count(name) == 1, name
    assert _DATE_TIME.fullmatch(str(msg["Date"]))
    assert _MSG_ID.fullmatch(str(msg["Message-ID"]))  # RFC 5322 3.6.4, no blanks
    # RFC 5322 2.1.1: no line over 998; 78 but for Diagnostic-Code's words
    assert all(len(line) <= 78 for line in data.split(b"\n"))
    # RFC 2046 5.1.1: the boundary is no line of any part
    boundary = msg.get_boundary().encode()
    lines = data.split(b"\n")
    assert lines.count(b"--" + boundary) == 3 and lines.count(b"--" + boundary + b"--") == 1
    assert sum(boundary in line for line in lines) == 5  # the 4 delimiters and Content-Type
    # RFC 3464 2.1, RFC 6522: three parts, the second the status
    human, status, returned = msg.iter_parts()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() == (
        "message/rfc822" if ret and action == bounce.FAILED else "text/rfc822-headers")
    per_message, *per_recipient = status.get_payload()
    # RFC 3464 2.2 and 2.3: the fields in the grammar's order (an
    # Original-Envelope-Id after Reporting-MTA, an Original-Recipient
    # after Final-Recipient, were out of it)
    assert per_message.keys() == ["Original-Envelope-Id", "Reporting-MTA", "Arrival-Date"]
    order = ["Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-MTA",
             "Diagnostic-Code", "Last-Attempt-Date", "Final-Log-ID", "Will-Retry-Until"]
    for block in per_recipient:
        names = block.keys()
        assert names == sorted(names, key=order.index), names
        assert names[:2] == ["Original-Recipient", "Final-Recipient"]
    assert per_message["Reporting-MTA"] == "dns; mail.example.org"  # 2.2.2 MUST
    assert per_message["Original-Envelope-Id"] == "E1"  # 2.2.1 MUST when ENVID was given
    assert _DATE_TIME.fullmatch(per_message["Arrival-Date"])  # 2.2.5
    assert len(per_recipient) == 2
    for block in per_recipient:
        assert block["Final-Recipient"].startswith("rfc822; ")  # 2.3.2 MUST
        assert block["Action"] == action  # 2.3.3 MUST
        assert _STATUS.fullmatch(block["Status"])  # 2.3.4 MUST
        assert block["Status"][0] == {bounce.FAILED: "5", bounce.DELAYED: "4"}.get(action, "2")
        assert _DATE_TIME.fullmatch(block["Last-Attempt-Date"])  # 2.3.7
        # 2.3.9: Will-Retry-Until only in a delay notice
        assert (block["Will-Retry-Until"] is not None) == (action == bounce.DELAYED)


@pytest.mark.parametrize("width", range(40, 76))  # a longer word is a longer line
@pytest.mark.parametrize("run", [" " * 2, " " * 3])
def test_diagnostic_code_keeps_a_run_of_blanks_at_a_fold_and_a_trailing_blank(tmp_path, width,
                                                                               run):
    # the stdlib's compat32 refolding drops one blank that ends a line of
    # a field it rewrites: a run of two blanks where the field was folded
    # came back as one, and a reply's own trailing blank went missing
    entry = make_entry(tmp_path)
    reply = Reply(550, "5.1.1", ("y" * width + run + "z" * 70 + run + "w" * 50 + " ",))
    data, _ = build(entry, [failed(entry, reply=reply)])
    field = _folded_lines(data, b"Diagnostic-Code")
    assert len(field) > 1
    assert all(line.strip(b" \t") for line in field)
    assert max(len(line) for line in field) <= 78
    assert b"".join(field) == b"Diagnostic-Code: smtp; " + reply.text().encode()


def test_the_7bit_copy_of_a_notice_returns_the_8bit_message_as_mime(tmp_path):
    # RET=FULL about an 8-bit message with no MIME fields, sent on to a next
    # hop without 8BITMIME: the returned message's body becomes
    # quoted-printable, and its header block gets MIME-Version beside the
    # encoding (RFC 2045 4), or the sender's reader shows "Caf=C3=A9"
    import io

    from txmailhub.relay.mime7bit import to_7bit

    entry = make_entry(tmp_path, ret="FULL")
    (tmp_path / "msg").write_bytes("From: alice@example.org\nSubject: lunch\n\nCafé\n".encode())
    data, _ = build(entry, [failed(entry)])
    out = io.BytesIO()
    to_7bit(io.BytesIO(data), out)
    assert out.getvalue().isascii()
    returned = list(message_from_bytes(out.getvalue(), policy=policy.default).iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["MIME-Version"] == "1.0"
    assert inner["Content-Transfer-Encoding"] == "quoted-printable"
    assert inner.get_content() == "Café\n"


# pieces of a hostile reply: line breaks and controls, a NUL, the bidi
# and line separators, invalid UTF-8 as the client reads it (U+FFFD),
# UTF-8, the text of an escape, an encoded word, a boundary's and a
# field's look-alikes, runs of blanks
_HOSTILE = st.sampled_from(
    ["a", "word", " ", "   ", "\t", "\r", "\n", "\r\n", "\x00", "\x1b[2J", "\x85", "\u2028",
     "\u2029", "\u202e", "\u2066", "\u200d", "\ufeff", "\u00a0", "\ufffd", "\u00e9", "\u65e5",
     "\U0001f600", "\\", "\\x{41}", "=?utf-8?q?=0D=0AX:_y?=", "--", "\n--boundary--\n",
     "\nFinal-Recipient: rfc822; evil@example.net\n", ":", ";", "...", "x" * 300])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(_HOSTILE, max_size=40).map("".join), min_size=1, max_size=30),
       utf8=st.booleans())
def test_a_hostile_reply_keeps_the_notice_whole(tmp_path, lines, utf8):
    # whatever the remote server said: three parts, one block per
    # recipient with its own fields only, no line over 998 octets, no
    # CR or NUL, UTF-8 only in a global notice, and a Diagnostic-Code of at
    # most 900 octets of the reply that prints and holds no encoded word
    entry = utf8_entry(tmp_path) if utf8 else make_entry(tmp_path)
    reply = Reply(550, "5.1.1", tuple(lines))
    data, msg = build(entry, [failed(entry, who=CAROL, reply=reply)])
    assert max(len(line) for line in data.split(b"\n")) <= 998
    assert b"\r" not in data and b"\x00" not in data
    data.decode("utf-8")  # (strict)
    _human, status, _returned = msg.iter_parts()
    _head, block = status_blocks(status)
    assert block.get_all("Final-Recipient") == ["rfc822; carol@remote.test"]
    assert sorted(block.keys()) == ["Action", "Diagnostic-Code", "Final-Recipient",
                                    "Last-Attempt-Date", "Remote-MTA", "Status"]
    code = block["Diagnostic-Code"]
    assert code.startswith("smtp; 550 5.1.1 ") and "=?" not in code
    assert len(code.removeprefix("smtp; ").encode()) <= 900
    assert all(c.isprintable() for c in code) and (utf8 or code.isascii())
    raw = _folded_lines(data, b"Diagnostic-Code")
    assert b"".join(raw).decode().removeprefix("Diagnostic-Code: ") == code
