"""No "=?" a sender chose reaches a field of a notice a reader decodes.

The sender chooses its own address, each RCPT address, ORCPT and ENVID.
A reader that decodes RFC 2047 encoded words -- Python's ``email`` with
``policy.default`` does, in the notice's own header (an address's local
part too, where RFC 2047 5(3) allows none) and in the blocks of the
status part -- would show ``=?utf-8?q?postmaster=40bank.example?=`` as
``postmaster@bank.example`` in a notice from this hub's postmaster.
Each notice here is parsed as such a reader parses it, and each value
must be shown as it was given, or in its field's own escaped form that
reads back as it.  The human-readable part is text/plain, whose body no
reader decodes: the value stands there as given.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_relay_bounce import (
    BOB,
    ORIGINAL,
    build,
    failed,
    make_entry,
    status_blocks,
    utf8_entry,
)

from txmailhub.address import Address
from txmailhub.smtp.xtext import utf8_addr_decode, xtext_decode

WORD = "=?utf-8?q?postmaster=40bank.example?="


def _notice(tmp_path, utf8, sender_local, rcpt_local, envid, orcpt, original=ORIGINAL):
    sender = Address(sender_local, "example.org")
    who = Address(rcpt_local, "remote.test")
    if utf8:
        entry = utf8_entry(tmp_path, sender=sender, recipients=(who,), envid=envid,
                           original=original)
    else:
        entry = make_entry(tmp_path, sender=sender, envid=envid)
        if original != ORIGINAL:
            (tmp_path / "msg").write_bytes(original)
        entry = dataclasses.replace(entry, recipients=tuple(
            dataclasses.replace(r, address=who) for r in entry.recipients if r.address == BOB))
    rcpt = dataclasses.replace(failed(entry, who=who), orcpt=orcpt)
    return build(entry, [rcpt])


def _unquoted(local: str) -> str:
    if local.startswith('"'):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def _field_address(field: str) -> str:
    kind, _, value = field.partition("; ")
    if kind == "utf-8":
        return utf8_addr_decode(value)
    assert kind == "rfc822", field
    return value


def _check(data, msg, sender_local, rcpt_local, envid, orcpt_value):
    # the notice's own header: To names the sender's address as it is
    (to,) = msg["To"].addresses
    assert (to.username, to.domain) == (_unquoted(sender_local), "example.org")
    human, status, _ = msg.iter_parts()
    head, block = status_blocks(status)
    shown_envid = head["Original-Envelope-Id"]
    assert "=?" not in shown_envid
    assert (xtext_decode(shown_envid) if "=?" in envid else shown_envid) == envid
    for name, value in (("Final-Recipient", f"{rcpt_local}@remote.test"),
                        ("Original-Recipient", orcpt_value)):
        shown = block[name]
        assert "=?" not in shown, (name, shown)
        assert _field_address(shown) == value, name
    # the text part: its body is never decoded, the address stands there whole
    assert f"<{rcpt_local}@remote.test>" in human.get_content().replace("\n    ", " ")
    # and no field of the notice's header or of its status part holds a
    # "=?" but as a quoted pair ("\\=?", in a quoted local part)
    top = data.split(b"\n\n", 1)[0]
    status_text = data.split(b"delivery-status\n", 2)[-1].split(b"\n--", 1)[0]
    assert not _BARE.search(top) and not _BARE.search(status_text)


_BARE = re.compile(rb"(?<!\\)=\?")


@pytest.mark.parametrize("utf8", [False, True])
def test_an_encoded_word_in_every_value_the_sender_chooses_is_shown_as_given(tmp_path, utf8):
    orcpt = f"{WORD}@remote.test"
    data, msg = _notice(tmp_path, utf8, WORD, WORD, WORD, "rfc822;" + orcpt)
    _check(data, msg, WORD, WORD, WORD, orcpt)
    # nothing the reader shows names the address the words spell
    assert "postmaster@bank.example" not in msg["To"]
    _, status, _ = msg.iter_parts()
    for block in status_blocks(status):
        assert all("postmaster@bank.example" not in str(v) for v in block.values())


def test_a_quoted_local_part_with_encoded_words_is_shown_as_given(tmp_path):
    # two words, a blank between: a reader decodes a word in a quoted
    # string too (the stdlib does) unless its "=" is a quoted pair
    local = '"=?utf-8?q?a?= =?utf-8?b?Yg==?=\\\\x"'
    data, msg = _notice(tmp_path, False, local, "bob", "id", "rfc822;bob@remote.test")
    # (each "=" before a "?" escaped: "Yg==?=" is written Yg=\=?=)
    assert b'To: <"\\=?utf-8?q?a?= \\=?utf-8?b?Yg=\\=?=\\\\x"@example.org>' in data
    _check(data, msg, local, "bob", "id", "bob@remote.test")


def test_an_orcpt_of_another_type_with_an_encoded_word_is_given_as_an_address(tmp_path):
    _data, msg = _notice(tmp_path, False, "alice", "bob", "id", f"x-other;{WORD}")
    _human, status, _ = msg.iter_parts()
    _head, block = status_blocks(status)
    assert "=?" not in block["Original-Recipient"]
    assert _field_address(block["Original-Recipient"]) == WORD


# the characters an ENVID, ORCPT or local part may hold around the words
_PIECES = st.sampled_from(["a", "b", "=", "?", "=?", "?=", "q", "Q", "B", "utf-8", "_", "=41",
                           "+", ".", "\\", "\"", WORD, "=?x?q?y?=", "=?utf-8?b?QQ==?="])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.lists(_PIECES, min_size=1, max_size=8).map("".join), utf8=st.booleans())
def test_no_value_with_encoded_words_is_decoded_by_a_reader(tmp_path, value, utf8):
    # the value as ENVID, ORCPT and (quoted, as RCPT would) as both local parts
    local = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    orcpt = f"{value}@remote.test"
    data, msg = _notice(tmp_path, utf8, local, local, value, "rfc822;" + orcpt)
    assert not _BARE.search(data.split(b"\n\n", 1)[0])
    (to,) = msg["To"].addresses
    assert to.username == value
    _human, status, _ = msg.iter_parts()
    head, block = status_blocks(status)
    shown_envid = head["Original-Envelope-Id"]
    assert "=?" not in shown_envid and "=?" not in block["Final-Recipient"]
    assert _field_address(block["Final-Recipient"]) == f"{local}@remote.test"
    assert _field_address(block["Original-Recipient"]) == orcpt
