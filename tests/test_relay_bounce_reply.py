"""A notice answers the message it reports on (RFC 5322 3.6.4), and names
an MTA known only by its address as RFC 3461's "dns" type allows."""

from __future__ import annotations

import dataclasses
import errno
import os
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from txmailhub.address import Address
from txmailhub.envelope import DSNRequest, Envelope
from txmailhub.relay import bounce
from txmailhub.relay.record import FAILED, QueueEntry
from txmailhub.relay.reply_fields import KEPT_REFERENCES, reply_fields
from txmailhub.smtp.reply import Reply

ALICE = Address("alice", "example.org")
BOB = Address("bob", "remote.test")
HEADER = (b"From: alice@example.org\nTo: bob@remote.test\n"
          b"Message-ID: <lunch.1@example.org>\nSubject: lunch\n")


def notice(tmp_path: Path, message: bytes, *, ret: str | None = None, smtputf8: bool = False,
           mta: str = "mx1.remote.test", hostname: str = "mail.example.org") -> bytes:
    path = tmp_path / "msg"
    path.write_bytes(message)
    envelope = Envelope(sender=ALICE, recipients=(BOB,), dsn=DSNRequest(ret=ret),
                        smtputf8=smtputf8)
    entry = QueueEntry.new("0123456789ABCDEF", envelope, 1_700_000_000.0)
    entry = dataclasses.replace(entry, message_path=str(path))
    rcpt = dataclasses.replace(entry.recipient(BOB), state=FAILED, remote_mta=mta,
                               last_reply=Reply.of(550, "5.1.1", "user unknown"),
                               last_attempt=1_700_000_100.0, attempts=1)
    return bounce.build_dsn(entry, [rcpt], bounce.FAILED, hostname=hostname,
                            primary_domain="example.org", now=1_700_000_200.0)


def header_of(data: bytes) -> bytes:
    return data.split(b"\n\n", 1)[0] + b"\n"


@pytest.mark.parametrize("ret", [None, "FULL"])
def test_a_notice_is_a_reply_to_the_original(tmp_path: Path, ret: str | None) -> None:
    data = notice(tmp_path, HEADER + b"\nSee you at noon.\n", ret=ret)
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["In-Reply-To"] == "<lunch.1@example.org>"
    assert msg["References"] == "<lunch.1@example.org>"
    # the notice's own Message-ID is not the original's
    assert msg["Message-ID"] != "<lunch.1@example.org>"


def test_references_go_on_from_the_originals(tmp_path: Path) -> None:
    # RFC 5322 3.6.4: the parent's References, then its Message-ID
    data = notice(tmp_path, HEADER + b"References: <a@x.test> (first)\n <b@x.test>\n"
                  b"In-Reply-To: <b@x.test>\n\nbody\n")
    assert b"\nReferences: <a@x.test>\n <b@x.test>\n <lunch.1@example.org>\n" in data
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["In-Reply-To"] == "<lunch.1@example.org>"
    # without References, an In-Reply-To of one msg-id stands for them
    data = notice(tmp_path, HEADER + b"In-Reply-To: <b@x.test>\n\nbody\n")
    assert b"\nReferences: <b@x.test>\n <lunch.1@example.org>\n" in data
    # of two, it is no reference chain
    data = notice(tmp_path, HEADER + b"In-Reply-To: <b@x.test> <c@x.test>\n\nbody\n")
    assert b"\nReferences: <lunch.1@example.org>\n" in data


@pytest.mark.parametrize("message", [
    b"From: alice@example.org\nSubject: lunch\n\nbody\n",  # none
    b"Message-ID: lunch.1@example.org\n\nbody\n",  # no msg-id
    b"Message-ID: <a@b> <c@d>\n\nbody\n",  # two
    # one in the body is none of the header's
    b"Subject: lunch\n\nMessage-ID: <body@example.org>\n",
    # one past what is read of the header section
    b"X-Long: " + b"x" * bounce.MAX_HEADER_BYTES + b"\nMessage-ID: <late@example.org>\n\nb\n",
])
def test_no_message_id_no_reply_fields(tmp_path: Path, message: bytes) -> None:
    head = header_of(notice(tmp_path, message))
    assert b"\nIn-Reply-To:" not in head and b"\nReferences:" not in head


def test_a_utf8_message_id_is_left_out(tmp_path: Path) -> None:
    # no RFC 2047 word (that is no msg-id); and raw, a notice sent on as a
    # 7-bit copy (a next hop without SMTPUTF8) could not be made
    message = "Message-ID: <d\u00e9j\u00e0@example.org>\n\nbody\n".encode()
    for smtputf8 in (False, True):
        head = header_of(notice(tmp_path, message, smtputf8=smtputf8))
        assert b"\nIn-Reply-To:" not in head and b"\nReferences:" not in head
    found = reply_fields("Message-ID: <m@x>\nReferences: <d\u00e9j\u00e0@x> <r@x>\n".encode())
    assert found == ("<m@x>", "<r@x>\n <m@x>")


@pytest.mark.parametrize("smtputf8", [False, True])
def test_an_id_holding_an_encoded_word_is_left_out(tmp_path: Path, smtputf8: bool) -> None:
    # a msg-id may hold "=?" (atext), and a reader that decodes encoded
    # words (the stdlib's default policy) shows one as another text in
    # In-Reply-To and References: "<Security alert@bank.example>"
    word = b"<=?utf-8?q?Security=20alert?=@bank.example>"
    head = header_of(notice(tmp_path, b"Message-ID: " + word + b"\n\nbody\n",
                           smtputf8=smtputf8))
    assert b"\nIn-Reply-To:" not in head and b"\nReferences:" not in head
    data = notice(tmp_path, b"Message-ID: <m@x.test>\nReferences: <a@x.test> " + word
                  + b" <a=b?c@x.test>\n\nbody\n", smtputf8=smtputf8)
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["In-Reply-To"] == "<m@x.test>"
    assert msg["References"] == "<a@x.test> <a=b?c@x.test> <m@x.test>"
    assert b"=?" not in header_of(data)
    found = reply_fields(b"Message-ID: " + word + b"\nReferences: <r@x>\n")
    assert found == (None, "<r@x>")
    # the "=?" alone decides: an id with "?=" but no "=?" is kept, one
    # with "=?" but no "?=" left out
    found = reply_fields(b"Message-ID: <a?=b@x>\nReferences: <c=?d@x> <r@x>\n")
    assert found == ("<a?=b@x>", "<r@x>\n <a?=b@x>")


def test_an_id_too_long_for_a_line_is_left_out() -> None:
    long_id = b"<" + b"x" * 990 + b"@example.org>"
    assert reply_fields(b"Message-ID: " + long_id + b"\n") is None
    found = reply_fields(b"Message-ID: <m@x>\nReferences: " + long_id + b" <r@x>\n")
    assert found == ("<m@x>", "<r@x>\n <m@x>")


def test_a_long_reference_chain_keeps_its_start_and_its_end() -> None:
    ids = [f"<r{i}@x.test>" for i in range(100)]
    found = reply_fields(("Message-ID: <m@x>\nReferences: " + " ".join(ids) + "\n").encode())
    assert found is not None
    assert found[1].split("\n ") == [ids[0], *ids[-KEPT_REFERENCES:], "<m@x>"]


@pytest.mark.parametrize(("literal", "named"), [
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
])
def test_an_mta_known_by_its_address_is_named_by_a_domain_literal(
        tmp_path: Path, literal: str, named: str) -> None:
    # RFC 3461's "dns" MTA-name-type: a host name, or, where there is
    # none, a domain-literal of the MTA's address (RFC 3464 2.2.2, 2.3.5
    # take the type's conventions); no other type is registered for it
    data = notice(tmp_path, HEADER + b"\nbody\n", mta=literal, hostname=literal)
    msg = message_from_bytes(data, policy=policy.default)
    status = list(msg.iter_parts())[1].get_payload()
    assert status[0]["Reporting-MTA"] == f"dns; {named}"
    assert status[1]["Remote-MTA"] == f"dns; {named}"


@pytest.mark.parametrize(("fields", "references"), [
    (b"References: <a@x.test>\n <b@x.test>\nIn-Reply-To: <b@x.test>\n",
     b"References: <a@x.test>\n <b@x.test>\n"),
    (b"In-Reply-To: <b@x.test>\n", b"References: <b@x.test>\n"),
])
def test_an_original_without_a_message_id_still_gives_its_references(
        tmp_path: Path, fields: bytes, references: bytes) -> None:
    # RFC 5322 3.6.4: References is the parent's References (or its
    # In-Reply-To of one id) "followed by" its Message-ID "(if any)"; only
    # a parent with none of the three gives a reply no References.  No
    # In-Reply-To: there is no Message-ID to name
    head = header_of(notice(tmp_path, b"From: alice@example.org\n" + fields + b"\nbody\n"))
    assert b"\n" + references in head, head
    assert b"\nIn-Reply-To:" not in head
    assert reply_fields(b"Message-ID: lunch\n" + fields) == (
        None, references.split(b" ", 1)[1].rstrip(b"\n").decode())


def _id_of(length: int) -> bytes:
    """A msg-id of ``length`` octets."""
    return b"<" + b"x" * (length - len(b"<@example.org>")) + b"@example.org>"


def test_an_id_that_just_fits_its_line_is_kept_and_one_octet_more_is_not() -> None:
    # "In-Reply-To: " + id: 998 octets at most (RFC 5322 2.1.1)
    fits, over = _id_of(998 - len("In-Reply-To: ")), _id_of(999 - len("In-Reply-To: "))
    assert reply_fields(b"Message-ID: " + fits + b"\n") == (fits.decode(), fits.decode())
    assert reply_fields(b"Message-ID: " + over + b"\n") is None
    # each References id on a line of its own: "References: " + id at most
    fits, over = _id_of(998 - len("References: ")), _id_of(999 - len("References: "))
    assert reply_fields(b"References: " + fits + b"\n") == (None, fits.decode())
    assert reply_fields(b"References: " + over + b"\n") is None


def test_the_first_of_a_repeated_field_is_the_one_read() -> None:
    found = reply_fields(b"Message-ID: <first@x>\nReferences: <r1@x>\n"
                         b"Message-ID: <second@x>\nReferences: <r2@x>\n")
    assert found == ("<first@x>", "<r1@x>\n <first@x>")


def test_a_field_name_with_white_space_before_its_colon_is_read() -> None:
    # RFC 5322 4.5.3's obsolete syntax: WSP between the name and the colon
    found = reply_fields(b"Message-ID : <m@x>\nReferences\t: <r@x>\n")
    assert found == ("<m@x>", "<r@x>\n <m@x>")


@pytest.mark.parametrize("count", [KEPT_REFERENCES + 1, KEPT_REFERENCES + 2])
def test_a_reference_chain_is_cut_only_past_its_start_and_the_kept_ones(count: int) -> None:
    ids = [f"<r{i}@x.test>" for i in range(count)]
    found = reply_fields(("Message-ID: <m@x>\nReferences: " + " ".join(ids) + "\n").encode())
    assert found is not None
    assert found[1].split("\n ") == [ids[0], *ids[-KEPT_REFERENCES:], "<m@x>"]
    assert len(found[1].split("\n ")) == KEPT_REFERENCES + 2


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE, errno.ENOMEM])
def test_a_header_section_unread_for_want_of_descriptors_fails_the_notice(
        tmp_path: Path, monkeypatch, error: int) -> None:
    # the original's header section cannot be opened for now: the notice
    # is not made (it is made again later), rather than sent for good
    # without the fields that say which message it is about.  Any other
    # error makes it without them
    real = open

    def failing_open(path, *args, **kwargs):
        if str(path) == str(tmp_path / "msg"):
            raise OSError(code[0], os.strerror(code[0]), str(path))
        return real(path, *args, **kwargs)

    code = [error]
    monkeypatch.setattr(bounce, "open_regular", lambda path: failing_open(path, "rb"))
    with pytest.raises(OSError) as raised:
        notice(tmp_path, HEADER + b"\nbody\n")
    assert raised.value.errno == error
    code[0] = errno.EACCES
    data = notice(tmp_path, HEADER + b"\nbody\n")
    assert b"\nIn-Reply-To:" not in header_of(data)
