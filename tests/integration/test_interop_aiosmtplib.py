"""aiosmtplib (asyncio) as SMTP client: MX, STARTTLS + AUTH on submission,
implicit TLS, send_message with several recipients, SMTPUTF8."""

from __future__ import annotations

import asyncio
import email
import email.policy
from email.message import EmailMessage

import pytest
from conftest import DEFAULT_USERS
from interop import (
    ALICE,
    ALICE_PW,
    BOB,
    BOB_PW,
    SENDER,
    WITH_WORDS,
    assert_both_got,
    corpus,
    fetch_poplib,
    hub_log_is_clean,
    strip_trace,
    tls_context,
)

aiosmtplib = pytest.importorskip("aiosmtplib", reason="aiosmtplib is not installed")

JOERG, JOERG_PW = "j\u00f6rg@example.org", "j\u00f6rg-secret"


async def _send_corpus(hub, cert, sent) -> dict[str, list[str]]:
    """Send each corpus in ``sent`` its own way; returns replies seen."""
    ctx = tls_context(cert)
    seen: dict[str, list[str]] = {}
    ways = {
        "mx": dict(port=hub.smtp_port, start_tls=False),
        "submission": dict(port=hub.submission_port, start_tls=True, tls_context=ctx,
                           username=SENDER, password="carol-secret"),
        "smtps": dict(port=hub.smtps_port, use_tls=True, tls_context=ctx,
                      username=SENDER, password="carol-secret"),
    }
    for way, options in ways.items():
        async with aiosmtplib.SMTP(hostname="127.0.0.1", local_hostname="aio.test",
                                   timeout=20, **options) as smtp:
            if way == "mx":
                await smtp.ehlo()  # connect() alone says EHLO only for STARTTLS or AUTH
            assert smtp.supports_extension("8bitmime") and smtp.supports_extension("pipelining")
            if way != "mx":
                assert not smtp.supports_extension("starttls")  # TLS already on
                assert smtp.get_transport_info("ssl_object").version() == "TLSv1.3"
            for data in sent[way].values():
                errors, reply = await smtp.sendmail(SENDER, [ALICE, BOB], data,
                                                    mail_options=["BODY=8BITMIME"])
                assert errors == {}  # the refused recipients only
                seen.setdefault(way, []).append(reply)
    return seen


def test_aiosmtplib_sendmail_on_every_listener(make_hub):
    hub = make_hub(tls=True)
    sent = {way: corpus(way, big=way != "submission") for way in ("mx", "submission", "smtps")}
    seen = asyncio.run(_send_corpus(hub, hub.folder / "tls" / "cert.pem", sent))
    assert all(r.startswith("2.0.0 ") and "accepted" in r for rs in seen.values() for r in rs)
    assert_both_got(hub, sent, {way: WITH_WORDS[way] for way in sent})


async def _send_message_smtputf8(hub, cert) -> tuple[bytes, dict, str]:
    msg = EmailMessage()
    msg["From"] = "J\u00f6rg <j\u00f6rg@example.org>"
    msg["To"] = f"{ALICE}, {BOB}, {JOERG}"
    msg["Subject"] = "interop smtputf8 \u00fcber"
    msg["Date"] = "Sun, 29 Nov 2026 12:00:00 +0000"
    msg["Message-ID"] = "<smtputf8@aio.test>"
    msg.set_content("Gr\u00fc\u00dfe aus K\u00f6ln\n.a dot line\n")
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=hub.submission_port,
                               start_tls=True, tls_context=tls_context(cert),
                               username=JOERG, password=JOERG_PW, timeout=20) as smtp:
        assert smtp.supports_extension("smtputf8")
        errors, reply = await smtp.send_message(msg)  # sender and recipients from the header
    from aiosmtplib.email import flatten_message

    return flatten_message(msg, utf8=True, cte_type="8bit"), errors, reply


def test_aiosmtplib_send_message_with_smtputf8(make_hub):
    hub = make_hub(tls=True, users={**DEFAULT_USERS, JOERG: JOERG_PW})
    flat, errors, reply = asyncio.run(_send_message_smtputf8(hub, hub.folder / "tls" / "cert.pem"))
    assert errors == {} and reply.startswith("2.0.0 ")
    for user, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW), (JOERG, JOERG_PW)):
        # UTF-8 header fields: a POP3 client without UTF8 mode gets the
        # header section downgraded (RFC 6857), the body as it was sent
        (down,) = fetch_poplib(hub.pop3_port, user, pw)
        header, _, body = down.partition(b"\r\n\r\n")
        assert header.isascii() and body == flat.partition(b"\r\n\r\n")[2]
        parsed = email.message_from_bytes(down, policy=email.policy.default)
        assert str(parsed["subject"]) == "interop smtputf8 \u00fcber"
        assert parsed["from"].groups[0].display_name == "J\u00f6rg <j\u00f6rg@example.org>"
        (got,) = fetch_poplib(hub.pop3_port, user, pw, utf8=True)
        assert got.startswith("Return-Path: <j\u00f6rg@example.org>\r\n".encode())
        assert b" with UTF8SMTPSA (TLSv1.3 " in got, got[:400]
        assert strip_trace(got) == flat
    hub_log_is_clean(hub.log_text())


async def _refusals(hub, cert) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=hub.submission_port,
                               start_tls=True, tls_context=tls_context(cert), timeout=20) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
            await smtp.sendmail(SENDER, [ALICE], b"Subject: x\r\n\r\ny\r\n")
        assert exc.value.code == 530
        await smtp.rset()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as auth:
            await smtp.login(SENDER, "wrong")
        assert auth.value.code == 535
        await smtp.login(SENDER, "carol-secret")
        errors, _ = await smtp.sendmail(SENDER, [ALICE, "nobody@example.org"],
                                        b"Subject: partly\r\n\r\nbody\r\n")
        assert list(errors) == ["nobody@example.org"] and errors["nobody@example.org"].code == 550
    # start_tls=False: by default aiosmtplib upgrades whenever STARTTLS is offered
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=hub.smtp_port, start_tls=False,
                               timeout=20) as smtp:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await smtp.sendmail(SENDER, ["someone@remote.test"], b"Subject: x\r\n\r\ny\r\n")


def test_aiosmtplib_refusals(make_hub):
    hub = make_hub(tls=True, sections={"smtp": {"relay_networks": []}})
    asyncio.run(_refusals(hub, hub.folder / "tls" / "cert.pem"))
    (m,) = hub.messages(ALICE)
    assert m.endswith(b"\nSubject: partly\n\nbody\n") or b"Subject: partly" in m
    hub_log_is_clean(hub.log_text())
