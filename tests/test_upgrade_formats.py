"""Files written by older versions, read by this one (docs/deployment.rst,
"Upgrading and going back").

An admin upgrades in place: the same ``state_dir``, users file and
config.  Each fixture below is a file exactly as the hub wrote it on
2026-11-29 (a queue record, the users file, Maildir names), copied from a
run of that version rather than rebuilt from today's writer, so a change
to a reader that drops an old record, renames a field or makes a later
field required fails here and not on a site after an upgrade.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from txmailhub.address import Address
from txmailhub.relay import record
from txmailhub.store.format import name_fields, uid_for_name
from txmailhub.store.mailbox import SIZES_NAME, _SizeCache, scan
from txmailhub.users import UsersDB

# A queue record of 2026-11-29 with DSN parameters (RET, ENVID, NOTIFY,
# ORCPT), tried twice and refused with 451 both times.  It
# has none of the fields added since: releases, submitter, envid_raw,
# orcpt_raw.
OLD_RECORD = b"""{
 "format": 1,
 "id": "1A22C7D4F506A7392",
 "created": 1796042739.5368748,
 "next_attempt": 1796042747.464149,
 "attempts": 2,
 "held": false,
 "delay_warned": false,
 "size": 254,
 "crlf_size": 263,
 "eight_bit": false,
 "envelope": {
  "sender": "alice@example.test",
  "helo": "client.test",
  "client_address": "127.0.0.1",
  "authenticated_as": null,
  "body_8bit": false,
  "smtputf8": false,
  "ret": "HDRS",
  "envid": "env123",
  "message_id": "6B0D6FF34B7C0000B"
 },
 "recipients": [
  {
   "address": "erin@remote.test",
   "state": "pending",
   "attempts": 2,
   "last_attempt": 1796042744.464149,
   "last_reply": {
    "code": 451,
    "status": "4.3.2",
    "lines": [
     "try later"
    ]
   },
   "remote_mta": "127.0.0.1",
   "notify": [
    "SUCCESS",
    "FAILURE"
   ],
   "orcpt": "rfc822;erin@remote.test",
   "notice": null
  }
 ]
}"""

# The users file of 2026-11-29: alice's password is "correct horse
# battery"; bob's is "staple-bucket-99", added with --allow-apop.
OLD_USERS = (
    "# txmailhub users: <address> <scrypt hash> [apop=<secret>]\n"
    "alice@example.test scrypt$16384$8$1$iPrHGnKbmkX1PTL47eYjMw=="
    "$0wug6Fk7Y+E1EJOLAcSrRGuhb8O3RmZSYKQxtJiy13M=\n"
    "bob@example.test scrypt$16384$8$1$v6l98xMVzEq42AvSf29RNg=="
    "$lBF5FSxjycoTTO1QKSWvGezog2r89m+RzF5TiZOu+E0= apop=c3RhcGxlLWJ1Y2tldC05OQ==\n"
)


def test_a_queue_record_of_an_older_version_is_read_whole() -> None:
    entry = record.QueueEntry.from_json(OLD_RECORD)
    assert entry.id == "1A22C7D4F506A7392"
    assert not entry.held and entry.attempts == 2
    assert (entry.size, entry.crlf_size) == (254, 263)
    assert entry.next_attempt == 1796042747.464149
    assert entry.envelope.sender == Address("alice", "example.test")
    assert (entry.envelope.dsn.ret, entry.envelope.dsn.envid) == ("HDRS", "env123")
    assert entry.envelope.dsn.envid_raw is None
    assert entry.envelope.submitter is None
    assert entry.releases == 0
    assert entry.notice_tries == 0 and entry.steps == 2
    (rcpt,) = entry.recipients
    assert rcpt.failed_at is None
    assert rcpt.address == Address("erin", "remote.test")
    assert rcpt.notify == ("SUCCESS", "FAILURE")
    assert (rcpt.orcpt, rcpt.orcpt_raw) == ("rfc822;erin@remote.test", None)
    assert rcpt.last_reply is not None and rcpt.last_reply.code == 451
    # written back by this version (the next update), it reads the same
    assert record.QueueEntry.from_json(entry.to_json()) == entry


def test_a_users_file_of_an_older_version_logs_in_with_the_old_passwords(
        tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(OLD_USERS)
    db = UsersDB(str(path), "example.test", ("example.test",))
    alice, bob = Address("alice", "example.test"), Address("bob", "example.test")
    assert db.check_password(alice, "correct horse battery")
    assert not db.check_password(alice, "correct horse")
    assert db.check_password(bob, "staple-bucket-99")
    assert db.apop_secret(bob) == "staple-bucket-99"
    assert db.apop_secret(alice) is None
    assert db.offers_apop()


def test_maildir_names_of_an_older_version_keep_their_uidl_and_sizes() -> None:
    # a client that left mail on the server must not fetch it all again
    # after an upgrade: the UIDL is the name before its first ","
    names = {
        "1796042739.M459754P19324Q1R8e41dab7.mail.example.test,S=303,W=314:2,S":
            ("1796042739.M459754P19324Q1R8e41dab7.mail.example.test", 303, 314),
        "1796042739.M533698P19324Q10R8e41dab7.mail.example.test,S=315,W=326":
            ("1796042739.M533698P19324Q10R8e41dab7.mail.example.test", 315, 326),
    }
    for name, (uid, stored, size) in names.items():
        assert uid_for_name(name) == uid
        assert name_fields(name) == {"S": stored, "W": size}
    # a message another program put there keeps its whole name as UIDL
    assert uid_for_name("1700000000.ext1.otherhost") == "1700000000.ext1.otherhost"


# A Maildir of 2026-12-03 (DOWNGRADE_RULES 6): a message received with
# SMTPUTF8, read once by a client without UTF8, and the .txmailhub-sizes
# that version wrote for it (its inode and mtime are the file's; here
# they are put in from the test's copy of the file).
OLD_UTF8_NAME = "1796322791.M266900P10308Q2Raa81eab6.mail.example.org,S=256,W=265"
OLD_UTF8_MESSAGE = (
    b"Return-Path: <alice@example.org>\nReceived: from client.test ([127.0.0.1])\n"
    b"\tby mail.example.org (txmailhub) with UTF8SMTP\n\tid 6B11B5E7_2844_00002\n"
    b"\tfor <alice@example.org>; Thu, 03 Dec 2026 18:33:11 +0000\n"
    b"Subject: caf\xc3\xa9\nFrom: J\xc3\xb6rg <alice@example.org>\n\nbody\n")
OLD_SIZES = ('{"sizes": {"%s": [%d, %d, 256, 265, 297, "6 python 3.11.7"]}, '
             '"version": 1}')


def test_a_size_cache_of_an_older_version_keeps_the_names_and_is_measured_again(
        tmp_path: Path) -> None:
    """Its entry of a name of the hub's is no mark (no rename, no look at
    the file): the message is listed by its name, and only its downgraded
    size, of older rules, is measured again."""
    md = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    path = md / "cur" / f"{OLD_UTF8_NAME}:2,S"
    path.write_bytes(OLD_UTF8_MESSAGE)
    st = os.stat(path)
    (md / SIZES_NAME).write_text(OLD_SIZES % (OLD_UTF8_NAME, st.st_ino, st.st_mtime_ns))
    before = json.loads((md / SIZES_NAME).read_bytes())
    (message,) = scan(str(md))
    assert (message.path, message.uid) == (str(path), OLD_UTF8_NAME.split(",")[0])
    assert (message.stored_size, message.size) == (256, 265)
    assert os.listdir(md / "cur") == [path.name]
    assert json.loads((md / SIZES_NAME).read_bytes()) == before  # kept as it was
    assert _SizeCache(str(md), 1).downgraded(path.name, st) is None  # rules 6
