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

from pathlib import Path

from txmailhub.address import Address
from txmailhub.relay import record
from txmailhub.store.format import name_fields, uid_for_name
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
