"""txmailhub.router: domains, users, aliases (nested, loops, reload), postmaster."""

from __future__ import annotations

import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txmailhub.address import Address
from txmailhub.errors import Rejected
from txmailhub.interfaces import IRecipientRouter
from txmailhub.router import Router, check_aliases_file, line_end_warnings, parse_aliases
from txmailhub.smtp import replies
from txmailhub.smtp._parse import parse_rcpt

DOMAINS = ["example.org", "Example.NET."]


class Users:
    """The part of UsersDB the router uses."""

    def __init__(self, *names):
        self.keys = {Address(*n.split("@")).key if "@" in n else f"{n}@example.org"
                     for n in names}
        self.asked = []

    def contains(self, address):
        self.asked.append(address)
        return address.key in self.keys


def A(text):
    local, _, domain = text.partition("@")
    return Address(local, domain or "example.org")


class Base(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "aliases")
        self.users = Users("joe", "ann", "bob", "joe@example.net")

    def write(self, text, settled=True):
        # a new inode each time, as editors and `mv` do; mtime alone may not
        # move.  Dated long ago: a file changed less than RACY_SECONDS before
        # a lookup may be a half-written one, where a miss is 451, not 550
        # (FreshFileTests); the other tests mean the file as it stands
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        if settled:
            os.utime(tmp, (1e9, 1e9))
        os.replace(tmp, self.path)

    def router(self, text=None, settled=True):
        if text is not None:
            self.write(text, settled)
        return Router(DOMAINS, self.users, self.path if text is not None else None)


class DomainAndUserTests(Base):
    def test_interface(self):
        self.assertTrue(verifyObject(IRecipientRouter, self.router()))

    def test_domains_are_case_insensitive_and_ignore_the_trailing_dot(self):
        r = self.router()
        for d in ("example.org", "EXAMPLE.ORG", "example.org.", "example.net", "Example.Net."):
            self.assertTrue(r.is_local_domain(d), d)
        self.assertFalse(r.is_local_domain("example.com"))
        self.assertEqual(r.primary_domain, "example.org")

    def test_a_router_without_a_local_domain_is_refused(self):
        # (an embedder's: the config refuses an empty domains list) the
        # first domain is the primary one, which bare names and postmaster
        # need: no domain is said as such, not as an IndexError
        with self.assertRaisesRegex(ValueError, "at least one local domain is needed"):
            Router([], self.users)
        self.assertEqual(Router(["Example.Org.", "example.org"], self.users).domains,
                         ("example.org",))

    def test_users(self):
        r = self.router()
        self.assertEqual(r.resolve(A("joe")), ((A("joe"),), ()))
        # One mailbox, one name: the key, however the client spelled it.
        self.assertEqual(r.resolve(Address("JOE", "EXAMPLE.ORG")), ((A("joe"),), ()))
        self.assertEqual(r.resolve(A("joe@example.net")), ((A("joe@example.net"),), ()))
        with self.assertRaises(Rejected) as cm:
            r.resolve(A("nobody"))
        self.assertEqual(cm.exception.reply, replies.UNKNOWN_USER)
        self.assertEqual(cm.exception.reply.code, 550)
        self.assertEqual(cm.exception.reply.status, "5.1.1")
        self.assertRaises(Rejected, r.resolve, A("ann@example.net"))  # per domain
        self.assertRaises(Rejected, r.verify, A("nobody"))

    def test_remote_addresses_pass_through(self):
        r = self.router()
        self.assertEqual(r.resolve(A("x@remote.test")), ((), (A("x@remote.test"),)))
        self.assertEqual(r.verify(A("x@remote.test")), ((), (A("x@remote.test"),)))

    def test_postmaster_without_aliases(self):
        r = self.router()
        pm = A("postmaster")
        for addr in (A("postmaster"), A("PostMaster"), A("POSTMASTER@example.net")):
            self.assertEqual(r.resolve(addr), ((pm,), ()))
        self.users.keys.add("postmaster@example.net")
        self.assertEqual(r.resolve(A("postmaster@example.net")),
                         ((A("postmaster@example.net"),), ()))

    def test_a_postmaster_that_is_no_user_is_looked_up_once(self):
        # the users database is asked once per address, not once more for
        # a postmaster it does not hold
        r = self.router("staff: joe\n")
        for addr, asked in ((A("postmaster"), A("postmaster")),
                            (A("PostMaster@example.net"), A("postmaster@example.net"))):
            del self.users.asked[:]
            self.assertEqual(r.resolve(addr), ((A("postmaster"),), ()))
            self.assertEqual(self.users.asked, [asked])
        # an alias of the primary domain's postmaster still serves another
        # domain's postmaster that is no user
        r = self.router("postmaster: joe\n")
        del self.users.asked[:]
        self.assertEqual(r.resolve(A("postmaster@example.net")), ((A("joe"),), ()))
        self.assertEqual(self.users.asked, [A("postmaster@example.net"), A("joe")])


class BrokenUsers:
    """A users database that cannot be read (the users file made unreadable
    by a `mailhub user` command run as root, say)."""

    def contains(self, address):
        raise PermissionError(13, "Permission denied", "/etc/txmailhub/users")


class UsersDatabaseFailureTests(Base):
    """A users database that cannot answer is a temporary failure (451
    4.3.0), never "no such user": a 550 would bounce the sender's mail."""

    def setUp(self):
        super().setUp()
        self.users = BrokenUsers()
        self.flushLoggedErrors()

    def test_lookup_failure_is_temporary(self):
        r = self.router()
        for method in (r.resolve, r.verify):
            with self.assertRaises(Rejected) as cm:
                method(A("joe"))
            self.assertEqual(cm.exception.reply, replies.LOCAL_ERROR)
            self.assertEqual(cm.exception.reply.code, 451)
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 2)

    def test_lookup_failure_names_the_address_escaped(self):
        # the address is the client's RCPT (SMTPUTF8 lets a bidi override
        # in): escaped in the line, as the transaction line has it (logsafe)
        from twisted.logger import formatEvent

        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            with self.assertRaises(Rejected):
                self.router().resolve(Address("j\u202eoe", "example.org"))
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.flushLoggedErrors(PermissionError)
        [line] = [formatEvent(e) for e in events if "lookup failed" in formatEvent(e)]
        self.assertEqual(line, "users database lookup failed for j\\u202eoe@example.org")

    def test_lookup_failure_through_an_alias_is_temporary(self):
        r = self.router("staff: joe, x@remote.test\n")
        with self.assertRaises(Rejected) as cm:
            r.resolve(A("staff"))
        self.assertEqual(cm.exception.reply.code, 451)
        self.flushLoggedErrors(PermissionError)

    def test_a_missing_users_file_is_temporary_not_no_such_user(self):
        # UsersDB.missing: the file is away (moved, being restored): every
        # local user would be "550 no such user", a bounce for good.
        self.users = Users()  # a missing file has no records
        self.users.missing = True
        r = self.router("staff: joe\n")
        for name in ("joe", "nobody", "staff"):
            with self.assertRaises(Rejected) as cm:
                r.resolve(A(name))
            self.assertEqual(cm.exception.reply, replies.LOCAL_ERROR)

    def test_remote_addresses_do_not_ask_the_users_database(self):
        r = self.router()
        self.assertEqual(r.resolve(A("x@remote.test")), ((), (A("x@remote.test"),)))


class AliasTests(Base):
    def test_lists_remote_targets_and_duplicates(self):
        r = self.router(
            "# staff list\n"
            "staff: joe, ann@example.org, <bob>,\n"
            "    friend@remote.test, JOE, Friend@Remote.Test\n"
            "\n"
            "all@example.net: staff, joe@example.net\n"
        )
        self.assertEqual(r.resolve(A("staff")),
                         ((A("joe"), A("ann"), A("bob")), (A("friend@remote.test"),)))
        local, remote = r.resolve(A("ALL@example.net"))
        self.assertEqual(local, (A("joe@example.net"), A("joe"), A("ann"), A("bob")))
        self.assertEqual(remote, (A("friend@remote.test"),))

    def test_nested_aliases(self):
        r = self.router("a: b\nb: c, ann\nc: d\nd: joe, x@remote.test\n")
        self.assertEqual(r.resolve(A("a")), ((A("ann"), A("joe")), (A("x@remote.test"),)))

    def test_loops_are_cut_without_losing_other_targets(self):
        r = self.router("a: b, joe\nb: c, out@remote.test\nc: a, ann\nself: self\n")
        for start in ("a", "b", "c"):
            local, remote = r.resolve(A(start))
            self.assertEqual(set(local), {A("joe"), A("ann")}, start)
            self.assertEqual(remote, (A("out@remote.test"),))
        self.assertRaises(Rejected, r.resolve, A("self"))  # no user behind it

    def test_diamonds_expand_once(self):
        lines = [f"l{i}: l{i + 1}a, l{i + 1}b" for i in range(30)]
        lines += [f"l{i}a: l{i}" for i in range(1, 31)] + [f"l{i}b: l{i}" for i in range(1, 31)]
        lines.append("l30: joe")
        r = self.router("\n".join(lines) + "\n")
        self.assertEqual(r.resolve(A("l0")), ((A("joe"),), ()))

    def test_self_reference_and_backslash_mean_the_mailbox(self):
        r = self.router("joe: joe, joe@backup.test\nann: \\ann, bob\n")
        self.assertEqual(r.resolve(A("joe")), ((A("joe"),), (A("joe@backup.test"),)))
        self.assertEqual(r.resolve(A("ann")), ((A("ann"), A("bob")), ()))

    def test_alias_overrides_a_user_and_unknown_targets_are_dropped(self):
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        r = self.router("joe: ann, ghost\nonlyghosts: ghost, ghost2\n")
        self.assertEqual(r.resolve(A("joe")), ((A("ann"),), ()))
        self.assertEqual(r.resolve(A("joe")), ((A("ann"),), ()))
        self.assertRaises(Rejected, r.resolve, A("onlyghosts"))
        skipped = [e for e in observer if e.get("target") == "ghost@example.org"]
        self.assertEqual(len(skipped), 2)  # once per alias, not once per message

    def test_postmaster_alias(self):
        r = self.router("postmaster: joe\npostmaster@example.net: ann, pm@remote.test\n")
        self.assertEqual(r.resolve(A("Postmaster")), ((A("joe"),), ()))
        self.assertEqual(r.resolve(A("POSTMASTER@example.net")),
                         ((A("ann"),), (A("pm@remote.test"),)))
        r = self.router("postmaster: joe\n")
        self.assertEqual(r.resolve(A("postmaster@example.net")), ((A("joe"),), ()))
        # an alias to nobody still never refuses the postmaster (RFC 5321 4.5.1)
        r = self.router("postmaster: ghost\npostmaster@example.net: ghost2\n")
        self.assertEqual(r.resolve(A("postmaster@example.net")), ((A("postmaster"),), ()))
        self.assertEqual(r.resolve(A("postmaster")), ((A("postmaster"),), ()))

    def test_postmaster_as_a_member_of_a_list_keeps_its_copy(self):
        # no user "postmaster": the list's copy for it still lands in the
        # postmaster mailbox, as mail sent to postmaster itself would
        r = self.router("staff: postmaster, joe\n")
        self.assertEqual(r.resolve(A("staff")), ((A("postmaster"), A("joe")), ()))

    def test_reload_when_the_file_changes(self):
        r = self.router("list: joe\n")
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        self.write("list: ann\nnew: bob\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))
        self.assertEqual(r.verify(A("new")), ((A("bob"),), ()))
        os.unlink(self.path)
        self.assertRaises(Rejected, r.resolve, A("list"))
        self.write("list: joe\n")
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))

    def test_unchanged_file_is_not_read_again(self):
        r = self.router("list: joe\n")
        os.utime(self.path, (1e9, 1e9))  # settled: changed long ago
        r.resolve(A("list"))  # the settled file, read once
        reads = []
        import txmailhub.router as router_module

        real_read = router_module.read_regular

        def spy(path, *a, **kw):
            # what the router reads its file with (not ``open``: a spy
            # there never saw a read)
            reads.append(path)
            return real_read(path, *a, **kw)

        self.patch(router_module, "read_regular", spy)
        for _ in range(5):
            r.resolve(A("list"))
        self.assertEqual(reads, [])
        # the spy sees a read: the file changed is read again, once
        self.write("list: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))
        self.assertEqual(reads, [self.path])

    def test_a_router_that_does_not_reload_reads_the_file_once(self):
        # reload=False (sendmail's grouping): the table read at the start
        # serves every lookup; the file is neither looked at nor read again
        # when it changes or goes away
        import txmailhub.router as router_module

        self.write("list: joe\n")
        r = Router(DOMAINS, self.users, self.path, reload=False)
        looked = []
        real_stat = router_module.os.stat

        def stat_spy(path, *a, **kw):
            if path == self.path:
                looked.append(path)
            return real_stat(path, *a, **kw)

        self.patch(router_module.os, "stat", stat_spy)
        self.write("list: ann\nnew: bob\n")
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        self.assertEqual(r.verify(A("list")), ((A("joe"),), ()))
        self.assertRaises(Rejected, r.resolve, A("new"))
        os.unlink(self.path)
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        self.assertFalse(r.aliases_away)
        self.assertEqual(looked, [])

    def test_an_aliases_file_that_goes_away_is_451_not_550(self):
        # like the users file (configuration.rst): while the configured
        # aliases file is away (moved, being restored), the hub cannot tell
        # a list from a stranger; a 550 would bounce the list's mail for good
        r = self.router("list: joe\n")
        os.unlink(self.path)
        with self.assertRaises(Rejected) as caught:
            r.resolve(A("list"))
        self.assertEqual(caught.exception.reply.code, 451)
        self.assertEqual(r.resolve(A("joe")), ((A("joe"),), ()))  # users still served
        self.write("list: joe\n")
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        with self.assertRaises(Rejected) as caught:
            r.resolve(A("stranger"))
        self.assertEqual(caught.exception.reply.code, 550)

    def test_missing_file_at_start_means_no_aliases(self):
        r = Router(DOMAINS, self.users, os.path.join(self.dir, "nope"))
        self.assertEqual(r.resolve(A("joe")), ((A("joe"),), ()))


BAD = """\
good: joe,
  also@remote.test
no colon here
bad name@@x: joe
empty:
prog: "|/bin/sh", joe
file: /var/mail/x
inc: :include:/etc/list
good: ann
other@elsewhere.test: joe
weird: joe@, ann
"""


class BadLineTests(Base):
    def test_bad_lines_are_logged_and_the_rest_loads(self):
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        r = self.router(BAD)
        self.assertEqual(r.resolve(A("good")), ((A("joe"),), (A("also@remote.test"),)))
        self.assertEqual(r.resolve(A("prog")), ((A("joe"),), ()))
        self.assertEqual(r.resolve(A("weird")), ((A("ann"),), ()))
        self.assertRaises(Rejected, r.resolve, A("empty"))
        logged = [e["problem"] for e in observer if "problem" in e]
        self.assertEqual(len(logged), 11)
        joined = "\n".join(logged)
        for needle in (f"{self.path}:3: expected", f"{self.path}:4: bad alias name",
                       f"{self.path}:5: alias 'empty' has no usable target",
                       f"{self.path}:6: target '\"|/bin/sh\"'", f"{self.path}:7:",
                       f"{self.path}:8:", f"{self.path}:9: alias 'good' is already defined "
                       "on line 1", f"{self.path}:10: alias 'other@elsewhere.test' is for "
                       "elsewhere.test", f"{self.path}:11: bad target 'joe@'"):
            self.assertIn(needle, joined)

    def test_loops_are_logged_when_the_file_is_read(self):
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.router("loop1: loop2\nloop2: loop1, joe\n")
        logged = [e["loop"] for e in observer if "loop" in e]
        self.assertEqual(logged, ["loop1@example.org -> loop2@example.org -> loop1@example.org"])

    def test_check_aliases_file(self):
        self.write(BAD + "loop1: loop2\nloop2: loop1, joe\nselfish: selfish\n")
        problems = check_aliases_file(self.path, "example.org", DOMAINS)
        self.assertEqual(len(problems), 12)
        self.assertIn(f"{self.path}:12: alias loop: loop1@example.org -> loop2@example.org -> "
                      "loop1@example.org (it is cut at runtime; the other alias is on line 13)",
                      problems)
        self.assertTrue(all(p.startswith(self.path + ":") for p in problems))
        self.write("fine: joe, x@remote.test\n")
        self.assertEqual(check_aliases_file(self.path, "example.org", DOMAINS), [])
        self.assertEqual(len(check_aliases_file(self.path + ".missing", "example.org")), 1)

    def test_check_aliases_file_says_the_line_of_an_octet_that_is_not_utf8(self):
        # PATH:LINENO as the file's other problems, the line to open in an
        # editor (a long line and a CRLF before it); the octet still counted
        # from the start of the file
        head = b"team: joe\r\n# " + b"x" * 9000 + b"\n\n"
        with open(self.path, "wb") as f:
            f.write(head + b"list: \xff\n")
        self.assertEqual(check_aliases_file(self.path, "example.org", DOMAINS), [
            f"{self.path}:4: [aliases] file is not UTF-8 text (invalid start byte at octet "
            f"{len(head) + 6})"])
        # an octet that cuts a character short is on the line it begins
        with open(self.path, "wb") as f:
            f.write(b"a: joe\nb: j\xc3\n")
        self.assertEqual(check_aliases_file(self.path, "example.org", DOMAINS), [
            f"{self.path}:2: [aliases] file is not UTF-8 text (invalid continuation byte "
            "at octet 11)"])

    def test_a_target_no_dns_name_can_be_is_reported_and_kept(self):
        # RFC 1035 2.3.4: a label over 63 octets, a name over 253, an empty
        # label; the relay bounces such a target without a query (5.1.2)
        long_label, long_name = "x" * 64 + ".test", ".".join(["d" * 63] * 4)
        text = (f"far: joe, a@{long_label}\nwide: b@{long_name}\n"
                "gap: c@a..test, <d@.test>\n"
                # all fine: 63 octets, 253, an underscore, an IDN and its
                # ASCII labels, a literal, a bare name
                f"ok: e@{'x' * 63}.test, f@{'.'.join(['d' * 63] * 3)}.{'d' * 61}, "
                "g@my_host.test, h@my_host.b\u00fccher.test, i@[192.0.2.1], joe\n")
        table, problems = parse_aliases(text, "example.org", DOMAINS, filename="f")
        self.assertEqual(problems, [
            f"f:1: target 'a@{long_label}' of 'far': {long_label} can never be a name in DNS "
            "(a label of 64 octets, over the 63 of a label in DNS (RFC 1035 2.3.4)): mail to "
            "it bounces",
            f"f:2: target 'b@{long_name}' of 'wide': {long_name} can never be a name in DNS "
            "(255 octets, over the 253 of a name in DNS (RFC 1035 2.3.4)): mail to it bounces",
            "f:3: target 'c@a..test' of 'gap': a..test can never be a name in DNS (an empty "
            "label (RFC 1035 2.3.4)): mail to it bounces",
            "f:3: target '<d@.test>' of 'gap': .test can never be a name in DNS (an empty "
            "label (RFC 1035 2.3.4)): mail to it bounces"])
        # kept, as before: the running hub queues them and the relay bounces them
        self.assertEqual(table["far@example.org"],
                         ((A("joe"), True), (Address("a", long_label), True)))
        self.assertEqual(len(table["ok@example.org"]), 6)
        self.write(text)
        self.assertEqual(check_aliases_file(self.path, "example.org", DOMAINS),
                         [p.replace("f:", f"{self.path}:", 1) for p in problems])

    def test_a_target_with_no_idna_form_is_reported(self):
        # its A-label would be over 63 octets, and the IDNA2003 form the
        # resolver falls back to fails too; a snowman has that one, so DNS
        # could be asked for it, but IDNA2008 refuses it: RCPT TO gets 501
        # (domain_problem), and the aliases file is held to the same rule
        long_u = "\u00fc" * 58 + ".test"
        _, problems = parse_aliases(f"far: a@{long_u}, b@\u2603.test\n", "example.org",
                                    filename="f")
        self.assertEqual(problems, [
            f"f:1: target 'a@{long_u}' of 'far': {long_u} can never be a name in DNS (no ASCII "
            "form: neither IDNA2008 (RFC 5891) nor the IDNA2003 the resolver falls back to can "
            "convert it): mail to it bounces",
            "f:1: target 'b@\u2603.test' of 'far': \u2603.test is not a valid internationalized "
            "domain name: the label '\u2603' is no U-label IDNA2008 takes, or its A-label is "
            "over 63 characters (RFC 5891): the hub's SMTP server refuses such an address (501)"])

    def test_a_target_with_a_fake_a_label_is_reported_and_kept(self):
        # "xn--zz" decodes to nothing: a name DNS could be asked for, but
        # the SMTP side refuses it (501, RFC 5891 5.3); a true A-label and
        # RFC 5890's reserved "ab--cd" beside a U-label are fine
        table, problems = parse_aliases(
            "team: joe, bob@xn--zz.test, c@XN--ZZ.example\n"
            "ok: d@xn--bcher-kva.test, e@ab--cd.b\u00fccher.test\n",
            "example.org", DOMAINS, filename="f")
        why = ("is not a valid internationalized domain name: the label {!r} is no A-label "
               "(not the Punycode of a U-label IDNA2008 takes, as IDNA2008 writes it: RFC 5891 "
               "5.3): the hub's SMTP server refuses such an address (501)")
        self.assertEqual(problems, [
            "f:1: target 'bob@xn--zz.test' of 'team': xn--zz.test " + why.format("xn--zz"),
            "f:1: target 'c@XN--ZZ.example' of 'team': xn--zz.example " + why.format("xn--zz"),
        ])
        self.assertEqual(table["team@example.org"], (
            (A("joe"), True), (Address("bob", "xn--zz.test"), True),
            (Address("c", "xn--zz.example"), True)))
        self.assertEqual(len(table["ok@example.org"]), 2)

    def test_continuation_without_alias(self):
        table, problems = parse_aliases("  orphan\nok: joe\n", "example.org", filename="f")
        self.assertEqual(problems, ["f:1: continuation line without an alias before it"])
        self.assertEqual(list(table), ["ok@example.org"])

    def test_a_byte_order_mark_first_is_no_part_of_the_first_name(self):
        # "UTF-8 with BOM", as some editors save: the first alias is "a",
        # not "\ufeffa" (which no address matches)
        table, problems = parse_aliases("\ufeffa: joe\nb: ann\n", "example.org")
        self.assertEqual((sorted(table), problems), (["a@example.org", "b@example.org"], []))
        table, problems = parse_aliases("\ufeff# note\na: joe\n", "example.org")
        self.assertEqual((list(table), problems), (["a@example.org"], []))

    def test_a_quoted_name_may_hold_a_colon(self):
        # aliases(5): quote a name holding ':'; the name ends at the first
        # colon outside the quotes ('"a' with the target 'b": joe' before)
        r = self.router('"a:b": joe, ann\n"c": joe\n')
        local, _ = r.resolve(parse_rcpt('TO:<"a:b"@example.org>', "example.org")[0])
        self.assertEqual(local, (A("joe"), A("ann")))
        _, problems = parse_aliases('"a:b": joe, ann\n', "example.org", DOMAINS, "f")
        self.assertEqual(problems, [])

    def test_a_quoted_name_is_keyed_as_rcpt_gives_it_a_needless_backslash_and_all(self):
        # '"a\\:b"' and '"a:b"' are one local part (RFC 5321 4.1.2: a
        # backslash before a character that needs none): RCPT gives it
        # "a:b", in either spelling, and the name was keyed as written, so
        # no mail reached it; a target so spelled is that address too
        r = self.router('"a\\:b": joe, "x\\,y"@remote.test\n"c\\;d"@example.org: ann\n')
        for path in ('"a:b"@example.org', '"a\\:b"@example.org', '"A\\:B"'):
            local, remote = r.resolve(parse_rcpt(f"TO:<{path}>", "example.org")[0])
            self.assertEqual((local, remote), ((A("joe"),), (Address('"x,y"', "remote.test"),)))
        local, _ = r.resolve(parse_rcpt('TO:<"c;d"@example.org>', "example.org")[0])
        self.assertEqual(local, (A("ann"),))

    def test_a_quoted_name_or_target_alone_is_a_local_part_an_at_sign_and_all(self):
        # aliases(5) quotes a name holding '@': '"a@b"' is that local part
        # in the primary domain, not the local part '"a' of the domain 'b"'
        self.users.keys.add('"x@y"@example.org')
        r = self.router('"a@b": joe, "x@y"\n')
        local, _ = r.resolve(parse_rcpt('TO:<"a@b"@example.org>', "example.org")[0])
        self.assertEqual(local, (A("joe"), Address('"x@y"', "example.org")))
        _, problems = parse_aliases('"a@b": joe, "x@y"\n', "example.org", DOMAINS, "f")
        self.assertEqual(problems, [])

    def test_a_quoted_backslash_before_the_closing_quote_ends_no_quote(self):
        # the file's "a\\" is the local part a\ quoted: the second backslash
        # is the one quoted, and the '"' after it closes the string, so the
        # ':' and ',' after it split the line as anywhere else
        table, problems = parse_aliases('"a\\\\": joe, "x\\\\"@remote.test, ann\n',
                                        "example.org", DOMAINS, "f")
        self.assertEqual(problems, [])
        self.assertEqual(table, {'"a\\\\"@example.org': (
            (A("joe"), True), (Address('"x\\\\"', "remote.test"), True), (A("ann"), True))})

    def test_quotes_and_comments_read_to_their_own_end(self):
        # a comment with a quote in it is still a comment; a backslash in a
        # comment quotes its ')' (the comma after it is inside); no blank
        # is needed after the name's closing quote and colon; quotes RCPT
        # drops are dropped, a needless backslash in them too: "j\oe" is joe
        table, problems = parse_aliases(
            'a: joe(x"y")@remote.test, ann\nb(x"y"): ann\nc: b(x\\),y), ann\n'
            '"d:e":joe\n"j\\oe": ann\nq: "x\\"(y"@remote.test, ann\n'
            'r: "x"(y)@remote.test, ann\n', "example.org",
            DOMAINS, "f")
        self.assertEqual(table, {
            "a@example.org": ((A("ann"), True),),
            # a '(' after a quoted '"' is still inside the quotes: no comment
            "q@example.org": ((Address('"x\\"(y"', "remote.test"), True), (A("ann"), True)),
            "r@example.org": ((A("ann"), True),),
            "c@example.org": ((A("ann"), True),),
            '"d:e"@example.org': ((A("joe"), True),),
            "joe@example.org": ((A("ann"), True),)})
        self.assertEqual(problems, [
            "f:1: bad target 'joe(x\"y\")@remote.test' of 'a': a comment in parentheses is "
            "no part of an address",
            "f:2: bad alias name 'b(x\"y\")': a comment in parentheses is no part of an address",
            "f:3: bad target 'b(x\\\\),y)' of 'c': a comment in parentheses is no part of an "
            "address",
            "f:7: bad target '\"x\"(y)@remote.test' of 'r': a comment in parentheses is no "
            "part of an address"])

    def test_a_comma_in_quotes_or_a_comment_does_not_split_a_target(self):
        # one address "x,y"@remote.test, one program: they were cut in two
        # at the comma, and the halves taken as addresses without a word
        table, problems = parse_aliases(
            'a: "x,y"@remote.test, ann\n'
            'b: "|/usr/bin/filter -a, -b", ann\n'
            "c: joe (Bloggs, Joe), ann\n", "example.org", DOMAINS, "f")
        self.assertEqual(table, {
            "a@example.org": ((Address('"x,y"', "remote.test"), True), (A("ann"), True)),
            "b@example.org": ((A("ann"), True),),
            "c@example.org": ((A("ann"), True),)})
        self.assertEqual(problems, [
            "f:2: target '\"|/usr/bin/filter -a, -b\"' of 'b': delivery to programs is not "
            "supported",
            "f:3: bad target 'joe (Bloggs, Joe)' of 'c': address 'joe (Bloggs, Joe)' contains "
            "whitespace or control characters"])

    def test_a_comment_without_blanks_is_no_part_of_a_name_or_target(self):
        # 'joe(x)@remote.test' was forwarded as that address (no RCPT path:
        # the hub's own server gives 501 for it), 'b(c)' named the mailbox
        # "b(c)" and 'd(e)' the alias "d(e)", all without a problem: a
        # comment is no part of an address, as with blanks around it
        table, problems = parse_aliases('a: joe(x)@remote.test, ann, b(c), "(y)"@remote.test\n'
                                        "d(e): ann\n", "example.org", DOMAINS, "f")
        self.assertEqual(table, {
            "a@example.org": ((A("ann"), True), (Address('"(y)"', "remote.test"), True))})
        self.assertEqual(problems, [
            "f:1: bad target 'joe(x)@remote.test' of 'a': a comment in parentheses is no "
            "part of an address",
            "f:1: bad target 'b(c)' of 'a': a comment in parentheses is no part of an address",
            "f:2: bad alias name 'd(e)': a comment in parentheses is no part of an address"])

    def test_a_line_with_an_unclosed_quote_is_skipped_and_said(self):
        # where its targets end cannot be told: '"joe' was the mailbox
        # '"joe', and '"c: joe' the alias '"c'
        table, problems = parse_aliases('a: "joe, ann\nb: (joe\n"c: joe\nd: ann\n',
                                        "example.org", DOMAINS, "f")
        self.assertEqual(list(table), ["d@example.org"])
        self.assertEqual(problems, [
            "f:1: alias 'a': a quoted string (\"...\") is not closed: the line is skipped",
            "f:2: alias 'b': a comment in parentheses is not closed: the line is skipped",
            "f:3: line '\"c: joe': a quoted string (\"...\") is not closed, so its name "
            "has no end (no ':' outside it): the line is skipped"])

    def test_a_name_with_an_unclosed_quote_or_comment_is_said_so(self):
        # 'a"b: joe' was the alias 'a"b' (no RCPT names it, check warned);
        # it is a line with no ':' outside the quote now, skipped, and check
        # said only "expected 'name: target, ...'" of a line that has both
        _, problems = parse_aliases('a"b: joe, ann\nx(y: joe\nno colon\n', "example.org",
                                    DOMAINS, "f")
        self.assertEqual(problems, [
            "f:1: line 'a\"b: joe, ann': a quoted string (\"...\") is not closed, so its name "
            "has no end (no ':' outside it): the line is skipped",
            "f:2: line 'x(y: joe': a comment in parentheses is not closed, so its name has no "
            "end (no ':' outside it): the line is skipped",
            "f:3: expected 'name: target, ...', got 'no colon'"])

    def test_only_lf_crlf_and_cr_end_a_line(self):
        # a form feed or U+2028 inside a line is no line break to an editor
        # or aliases(5): it made a second alias of the rest of the line,
        # and put check's line numbers past the line meant
        text = "a: joe\x0cb: ann\nc: joe\u2028d: ann\r\ne: joe\rbad:\n"
        table, problems = parse_aliases(text, "example.org", DOMAINS, "f")
        self.assertEqual(list(table), ["e@example.org"])
        self.assertEqual(problems, [
            "f:1: bad target 'joe\\x{C}b: ann' of 'a': address 'joe\\x{C}b: ann' contains "
            "whitespace or control characters",
            "f:1: alias 'a' has no usable target",
            "f:2: bad target 'joe\\x{2028}d: ann' of 'c': address 'joe\\x{2028}d: ann' "
            "contains whitespace or control characters",
            "f:2: alias 'c' has no usable target",
            "f:4: alias 'bad' has no usable target"])
        with open(self.path, "wb") as f:
            f.write(b"a: joe\x0c\nb: \xff\n")
        self.assertEqual(check_aliases_file(self.path, "example.org", DOMAINS), [
            f"{self.path}:2: [aliases] file is not UTF-8 text (invalid start byte at octet 11)"])

    def test_a_later_line_in_effect_for_an_unusable_first_is_said(self):
        # the first line of a name has no target the hub can use: the
        # second is the alias (aliases(5) readers take the first), and
        # check named only the first
        table, problems = parse_aliases("a: |/bin/true\nb: ann\na: joe\n", "example.org",
                                        DOMAINS, "f")
        self.assertEqual(table["a@example.org"], ((A("joe"), True),))
        self.assertEqual(problems, [
            "f:1: target '|/bin/true' of 'a': delivery to programs is not supported",
            "f:1: alias 'a' has no usable target",
            "f:3: alias 'a' is defined on line 1 too, a line the hub cannot use: this one is "
            "in effect instead"])


class AliasGraphProperties(SynchronousTestCase):
    """Any alias graph, loops and all: resolution ends, and yields exactly
    the users and remote addresses reachable through aliases."""

    @settings(max_examples=200, deadline=None)
    @given(
        graph=st.dictionaries(
            st.sampled_from([f"n{i}" for i in range(8)]),
            st.lists(st.sampled_from([f"n{i}" for i in range(8)] + ["r1@remote.test",
                                                                   "r2@remote.test"]),
                     min_size=1, max_size=5),
            max_size=8,
        ),
        users=st.sets(st.sampled_from([f"n{i}" for i in range(8)])),
        start=st.sampled_from([f"n{i}" for i in range(8)]),
    )
    def test_reachable_targets(self, graph, users, start):
        text = "".join(f"{name}: {', '.join(targets)}\n" for name, targets in graph.items())
        table, problems = parse_aliases(text, "example.org")
        self.assertEqual(problems, [])
        router = Router(["example.org"], Users(*users))
        router.aliases = table

        expected_local, expected_remote, seen = set(), set(), set()

        def walk(name, parent):
            if "@" in name:
                expected_remote.add(name)
            elif name in graph and name != parent:
                if name not in seen:
                    seen.add(name)
                    for t in graph[name]:
                        walk(t, name)
            elif name in users:
                expected_local.add(name)

        walk(start, None)
        if not expected_local and not expected_remote:
            self.assertRaises(Rejected, router.resolve, A(start))
            return
        local, remote = router.resolve(A(start))
        self.assertEqual({a.local for a in local}, expected_local)
        self.assertEqual({str(a) for a in remote}, expected_remote)
        self.assertEqual(len(local), len(set(local)))
        self.assertEqual(len(remote), len(set(remote)))


class MoreAliasTests(Base):
    def test_continuation_lines_may_start_with_a_tab(self):
        r = self.router("staff: joe,\n\tann\n")
        self.assertEqual(r.resolve(A("staff")), ((A("joe"), A("ann")), ()))

    def test_backslash_names_the_mailbox_of_a_user_who_is_also_an_alias(self):
        r = self.router("bob: ann\nstaff: \\bob, joe\n")
        self.assertEqual(r.resolve(A("staff")), ((A("bob"), A("joe")), ()))

    def test_an_edit_in_place_of_the_same_size_is_seen(self):
        r = self.router("list: joe\n")
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        st = os.stat(self.path)
        with open(self.path, "r+") as f:  # same inode, same size
            f.write("list: ann\n")
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))

    def test_a_file_that_cannot_be_read_keeps_the_previous_aliases(self):
        r = self.router("list: joe\n")
        with open(self.path + ".new", "wb") as f:
            f.write(b"list: \xff\xfe\n")  # not UTF-8: a half-saved file, say
        os.replace(self.path + ".new", self.path)
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))

    def test_a_new_inode_or_ctime_alone_is_seen(self):
        # `cp -p`, `rsync -t`, a restore keep the size and the mtime; a
        # coarse clock may not move the ctime between two quick saves
        r = self.router("list: joe\n")
        st = os.stat(self.path)
        real_stat = os.stat
        changed = {}

        def stat(path, *args, **kwargs):
            if path != self.path:
                return real_stat(path, *args, **kwargs)
            return type("Stat", (), {
                "st_ino": st.st_ino + changed.get("ino", 0), "st_size": st.st_size,
                "st_dev": st.st_dev, "st_mtime_ns": st.st_mtime_ns, "st_mtime": st.st_mtime,
                "st_ctime_ns": st.st_ctime_ns + changed.get("ctime", 0)})()

        self.patch(os, "stat", stat)
        for field, text, who in (("ino", "list: ann\n", "ann"), ("ctime", "list: bob\n", "bob")):
            with open(self.path, "r+") as f:  # the same size
                f.write(text)
            changed[field] = 1  # that field alone differs from the last look
            self.assertEqual(r.resolve(A("list")), ((A(who),), ()), field)

    def test_a_second_change_in_the_same_clock_tick_is_seen(self):
        # two saves within one tick of a coarse file system clock, the
        # second of the same size: inode, size, mtime and ctime all stay
        r = self.router("list: joe\n", settled=False)
        st = os.stat(self.path)
        real_stat = os.stat

        def stat(path, *args, **kwargs):
            return st if path == self.path else real_stat(path, *args, **kwargs)

        self.patch(os, "stat", stat)
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        with open(self.path, "r+") as f:  # in place, the same size
            f.write("list: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))

    def test_the_stamp_s_trust_is_judged_at_the_time_the_read_began(self):
        # a read begun within the file's clock tick is not trusted because
        # the reader noted it later: a second change in that tick may have
        # followed the read
        from txmailhub import router as router_module
        from txmailhub.filestamp import FileStamp

        r = self.router("list: joe\n")
        wall, mono = [os.stat(self.path).st_mtime + 0.5], [50.0]
        r._file = FileStamp(lambda: wall[0], lambda: mono[0])
        opened = []
        real_read = router_module.read_regular

        def held_up_read(path, **kwargs):
            opened.append(path)
            got = real_read(path, **kwargs)
            wall[0] += 10.0  # held up past RACY_SECONDS after the read began
            mono[0] += 10.0
            return got

        self.patch(router_module, "read_regular", held_up_read)
        for reads in (1, 2, 2):
            self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
            self.assertEqual(len(opened), reads)

    def test_a_file_the_hub_cannot_stat_is_logged_once_not_per_rcpt(self):
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        r = self.router("list: joe\n")
        real_stat = os.stat

        def stat(path, *args, **kwargs):
            if path == self.path:
                raise PermissionError(13, "Permission denied", path)
            return real_stat(path, *args, **kwargs)

        self.patch(os, "stat", stat)
        for _ in range(4):
            self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))  # the last aliases
        errors = [e for e in observer if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1, [e.get("log_format") for e in errors])
        self.assertIn("Permission denied", errors[0]["why"])

    def test_a_stat_failure_that_comes_back_after_it_was_cured_is_logged_again(self):
        # once per spell, not once for the life of the hub: an admin who
        # fixed the folder's mode and broke it again must hear of it
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        old = time.time() - 60
        self.write("list: joe\n")
        os.utime(self.path, (old, old))  # not changed lately: its stamp is trusted
        r = Router(DOMAINS, self.users, self.path)
        real_stat = os.stat
        refused = [True]

        def stat(path, *args, **kwargs):
            if path == self.path and refused[0]:
                raise PermissionError(13, "Permission denied", path)
            return real_stat(path, *args, **kwargs)

        self.patch(os, "stat", stat)
        for spell in (True, False, True):
            refused[0] = spell
            for _ in range(2):
                self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        errors = [e for e in observer if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 2, [e.get("why") for e in errors])

    def test_a_directory_in_place_of_the_file_keeps_the_aliases_and_is_logged_once(self):
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        r = self.router("list: joe\n")
        os.unlink(self.path)
        os.mkdir(self.path)
        for _ in range(3):
            self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        # once, and said to be a folder
        errors = [e["why"] for e in observer if e["log_level"].name == "error"]
        self.assertEqual(errors, [f"cannot read aliases file {self.path}: [Errno 21] Is a "
                                  f"directory: '{self.path}'"])
        os.rmdir(self.path)
        self.write("list: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))

    def test_a_directory_in_place_of_the_file_is_not_read_again_and_a_miss_is_refused(self):
        # unlike a shortage of descriptors (below), a folder in the file's
        # place lasts: it is not read again until it changes, and a miss is
        # the 550 it was, not a 451 for a text that might be unread
        import txmailhub.router as router_module

        r = self.router("list: joe\n")
        os.unlink(self.path)
        os.mkdir(self.path)
        os.utime(self.path, (1e9, 1e9))  # changed long ago: its stamp trusted
        real = router_module.read_regular
        reads = []

        def read_regular(path, *args, **kwargs):
            reads.append(path)
            return real(path, *args, **kwargs)

        self.patch(router_module, "read_regular", read_regular)
        for _ in range(3):
            self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
            with self.assertRaises(Rejected) as cm:
                r.resolve(A("sales"))
            self.assertEqual(cm.exception.reply.code, 550)
        self.assertEqual(len(reads), 1)

    def test_a_changed_file_read_when_out_of_descriptors_is_read_again(self):
        # EMFILE (ENFILE) on the read of a changed file passes: the file was
        # taken as read, and not looked at again until it changed once
        # more -- an alias added then was refused with 550 (a bounce) for
        # good.  Until it can be read, a miss may be an alias of the new
        # text: 451, not 550; the aliases read last serve on
        import errno

        import txmailhub.router as router_module

        for error in (errno.EMFILE, errno.ENFILE):
            observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
            r = self.router("list: joe\n")
            self.write("list: joe\nsales: ann\n")
            real = router_module.read_regular
            refused = [True]

            def read_regular(path, *args, error=error, refused=refused, real=real, **kwargs):
                if refused[0]:
                    raise OSError(error, os.strerror(error), path)
                return real(path, *args, **kwargs)

            self.patch(router_module, "read_regular", read_regular)
            for _ in range(2):
                self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
                with self.assertRaises(Rejected) as cm:
                    r.resolve(A("sales"))
                self.assertEqual(cm.exception.reply.code, 451)
            refused[0] = False
            self.assertEqual(r.resolve(A("sales")), ((A("ann"),), ()))
            errors = [e["why"] for e in observer if e["log_level"].name == "error"]
            self.assertEqual(errors, [f"cannot read aliases file {self.path}: [Errno {error}] "
                                      f"{os.strerror(error)}: '{self.path}'"])

    def test_a_read_error_that_passes_with_the_file_unchanged_ends_at_the_next_lookup(self):
        # EIO, ESTALE, ETIMEDOUT (a disk, an NFS server failing for a
        # while) at the hub's start: no aliases read, so strangers and
        # aliases got 451 -- and the file, stamped as read, was not read
        # again until it changed, which nothing made it do: its aliases'
        # mail was held back until its queue lifetime ran out.  Read again
        # at the next lookup, as for a shortage
        import errno

        import txmailhub.router as router_module

        for error in (errno.EIO, errno.ESTALE, errno.ETIMEDOUT):
            self.write("sales: ann\n")
            real = router_module.read_regular
            refused = [True]

            def read_regular(path, *args, error=error, refused=refused, real=real, **kwargs):
                if refused[0]:
                    raise OSError(error, os.strerror(error), path)
                return real(path, *args, **kwargs)

            self.patch(router_module, "read_regular", read_regular)
            r = Router(DOMAINS, self.users, self.path)
            for _ in range(2):
                with self.assertRaises(Rejected) as cm:
                    r.resolve(A("sales"))
                self.assertEqual(cm.exception.reply.code, 451)
            self.assertEqual(r.resolve(A("joe")), ((A("joe"),), ()))  # users: no wait
            refused[0] = False
            self.assertEqual(r.resolve(A("sales")), ((A("ann"),), ()))
            with self.assertRaises(Rejected) as cm:
                r.resolve(A("stranger"))
            self.assertEqual(cm.exception.reply.code, 550)

    def test_alias_names_match_in_any_case(self):
        r = self.router("Staff: joe\n")
        for spelling in ("staff", "STAFF", "Staff"):
            self.assertEqual(r.resolve(A(spelling)), ((A("joe"),), ()), spelling)

    def test_targets_are_named_as_the_hub_names_the_mailbox(self):
        # "Joe" in the aliases file and RCPT TO:<joe> are one mailbox: the
        # store gets one spelling of it, so one copy
        r = self.router("staff: Joe, ANN@Example.ORG\n")
        self.assertEqual(r.resolve(A("staff")), ((A("joe"), A("ann")), ()))

    def test_include_is_reported_as_unsupported_whatever_its_case(self):
        _, problems = parse_aliases("inc: :INCLUDE:/etc/list, joe\n", "example.org", filename="f")
        self.assertEqual(problems, [
            "f:1: target ':INCLUDE:/etc/list' of 'inc': :include: lists are not supported"])


    def test_a_quoted_file_or_include_target_is_reported_as_unsupported(self):
        # aliases(5) quotes a path as it quotes a program ("|cmd"): the
        # hub took '"/var/log/x"' for the mailbox of that name, skipped at
        # delivery, and check said at most that no such user exists (exit
        # 0), where '/var/log/x' is a problem; a quoted local part of a
        # remote address is one like any other
        table, problems = parse_aliases(
            'a: "/var/log/x", ann\nb: ":include:/etc/list", ann\nc: "/x"@remote.test\n',
            "example.org", filename="f")
        self.assertEqual(table, {"a@example.org": ((A("ann"), True),),
                                 "b@example.org": ((A("ann"), True),),
                                 "c@example.org": ((Address('"/x"', "remote.test"), True),)})
        self.assertEqual(problems, [
            "f:1: target '\"/var/log/x\"' of 'a': delivery to files is not supported",
            "f:2: target '\":include:/etc/list\"' of 'b': :include: lists are not supported"])

class ConfiguredDomainTests(SynchronousTestCase):
    def test_a_configured_mixed_idn_domain_is_local_in_either_spelling(self):
        # a domain the configuration takes (the SMTP paths' rule, label by
        # label) is one domain however mail spells it
        from txmailhub.config import load_text

        for listed in ("ab--cd.b\u00fccher.test", "ab--cd.xn--bcher-kva.test"):
            settings = load_text(f'[hub]\ndomains = ["{listed}"]\n', "/x.toml")
            r = Router(settings.hub.domains, Users("joe@ab--cd.b\u00fccher.test"))
            for spelling in ("ab--cd.b\u00fccher.test", "ab--cd.xn--bcher-kva.test",
                             "AB--CD.XN--BCHER-KVA.TEST", "AB--CD.B\u00dcCHER.test."):
                self.assertTrue(r.is_local_domain(spelling), (listed, spelling))
                self.assertEqual(r.resolve(A(f"joe@{spelling}")),
                                 ((A("joe@ab--cd.b\u00fccher.test"),), ()))


class ChangingUsers(Users):
    """A users database whose file may have been caught half-written
    (``UsersDB.changing``) while ``changing`` is true."""

    def __init__(self, *names):
        super().__init__(*names)
        self.in_doubt = True
        self.doubts = 0

    def changing(self):
        self.doubts += 1
        return self.in_doubt


class FreshFileTests(Base):
    """A users or aliases file changed less than RACY_SECONDS before a
    lookup may have been rewritten in place and read half-written: an
    address missing from it may be one not written yet, so the miss is
    451 4.3.0 (a retry), not 550 5.1.1 (a bounce for good)."""

    def setUp(self):
        super().setUp()
        self.users = ChangingUsers("joe", "ann")

    def assertRefused(self, call, address, reply):
        with self.assertRaises(Rejected) as cm:
            call(address)
        self.assertIs(cm.exception.reply, reply)

    def test_a_miss_in_a_users_file_in_doubt_is_temporary(self):
        r = self.router()
        for call in (r.resolve, r.verify):  # RCPT, and VRFY/EXPN
            self.assertRefused(call, A("bob"), replies.MAILBOXES_CHANGING)
        self.assertEqual(replies.MAILBOXES_CHANGING.code, 451)
        self.assertEqual(replies.MAILBOXES_CHANGING.status, "4.3.0")
        self.users.in_doubt = False  # RACY_SECONDS later
        for call in (r.resolve, r.verify):
            self.assertRefused(call, A("bob"), replies.UNKNOWN_USER)

    def test_a_found_recipient_asks_nothing_more(self):
        r = self.router("list: joe, ann\n")
        self.assertEqual(r.resolve(A("joe")), ((A("joe"),), ()))
        self.assertEqual(r.resolve(A("list")), ((A("joe"), A("ann")), ()))
        self.assertEqual(r.resolve(A("x@remote.test")), ((), (A("x@remote.test"),)))
        self.assertEqual(self.users.doubts, 0)

    def test_an_alias_member_missing_while_in_doubt_holds_the_list_back(self):
        # not delivered to joe alone now (bob's copy lost without a word):
        # taken later, for every member
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        r = self.router("list: joe, bob, x@remote.test\n")
        self.assertRefused(r.resolve, A("list"), replies.MAILBOXES_CHANGING)
        self.assertEqual([e for e in observer if e.get("target")], [])
        self.users.in_doubt = False
        self.assertEqual(r.resolve(A("list")), ((A("joe"),), (A("x@remote.test"),)))
        self.assertEqual(len([e for e in observer if e.get("target")]), 1)  # skipped, said

    def test_the_postmaster_is_never_held_back(self):
        # RFC 5321 4.5.1: the postmaster's mail is taken, doubt or not
        r = self.router("postmaster: joe, bob\n")
        self.assertEqual(r.resolve(A("postmaster")), ((A("joe"),), ()))
        r = self.router("postmaster: bob\n")
        self.assertEqual(r.resolve(A("postmaster@example.net")), ((A("postmaster"),), ()))

    def test_an_aliases_file_caught_half_written_is_in_doubt_for_seconds(self):
        # rewritten in place (truncated, then written) and read when only
        # its first alias is back; half a second after the write
        from txmailhub.filestamp import RACY_SECONDS, FileStamp

        self.users.in_doubt = False
        r = self.router("staff: joe\nlist: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))
        with open(self.path, "r+") as f:
            f.truncate(0)
            f.write("staff: joe\nli")  # into list's line
        wall, mono = [os.stat(self.path).st_mtime + 0.5], [50.0]
        r._file = FileStamp(lambda: wall[0], lambda: mono[0])
        for call in (r.resolve, r.verify):
            self.assertRefused(call, A("list"), replies.MAILBOXES_CHANGING)
        self.assertEqual(r.resolve(A("staff")), ((A("joe"),), ()))
        self.assertEqual(r.resolve(A("ann")), ((A("ann"),), ()))
        wall[0] += RACY_SECONDS
        mono[0] += RACY_SECONDS
        self.assertRefused(r.resolve, A("list"), replies.UNKNOWN_USER)
        self.assertEqual(r.resolve(A("staff")), ((A("joe"),), ()))

    def test_an_aliases_file_of_lone_cr_line_ends_just_written_is_whole(self):
        # its last line ended by a lone CR, a line end to the hub as LF is:
        # a file that looks finished, whose miss is 550 at once, as one
        # ending in LF -- it was 451 for the first seconds after each save
        from txmailhub.filestamp import FileStamp

        self.users.in_doubt = False
        for eol in ("\n", "\r\n", "\r"):
            r = self.router(f"staff: joe{eol}list: ann{eol}", settled=False)
            wall, mono = [os.stat(self.path).st_mtime + 0.5], [50.0]
            r._file = FileStamp(lambda wall=wall: wall[0], lambda mono=mono: mono[0])
            self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))
            self.assertRefused(r.resolve, A("nobody"), replies.UNKNOWN_USER)

    def test_a_users_file_caught_half_written_is_in_doubt_for_seconds(self):
        # the real database: bob's line not written back yet
        from txmailhub.filestamp import RACY_SECONDS, FileStamp
        from txmailhub.users import UsersDB, hash_password

        path = os.path.join(self.dir, "users")
        whole = f"alice {hash_password('pw')}\nbob {hash_password('pw')}\n"
        with open(path, "w") as f:
            f.write(whole)
        os.utime(path, (1e9, 1e9))
        self.users = UsersDB(path, "example.org", ("example.org", "example.net"))
        r = self.router()
        self.assertEqual(r.resolve(A("bob")), ((A("bob"),), ()))
        with open(path, "r+") as f:
            f.truncate(0)
            f.write(whole[: whole.index("bob ") + 2])  # into bob's line
        wall, mono = [os.stat(path).st_mtime + 0.5], [50.0]
        self.users._file = FileStamp(lambda: wall[0], lambda: mono[0])
        self.assertRefused(r.resolve, A("bob"), replies.MAILBOXES_CHANGING)
        self.assertEqual(r.resolve(A("alice")), ((A("alice"),), ()))
        wall[0] += RACY_SECONDS
        mono[0] += RACY_SECONDS
        self.assertRefused(r.resolve, A("bob"), replies.UNKNOWN_USER)

    def test_a_miss_is_judged_by_the_records_it_was_made_in(self):
        # a password check's thread may read the users file between the
        # router's lookup and its question whether the file is in doubt:
        # the miss was made in a half-written text, the whole file read
        # just after it is settled -- bob, who is in that file, got 550
        from txmailhub.filestamp import FileStamp
        from txmailhub.users import UsersDB, hash_password

        path = os.path.join(self.dir, "users")
        whole = f"alice {hash_password('pw')}\nbob {hash_password('pw')}\n"
        with open(path, "w") as f:
            f.write(whole[: whole.index("bob ") + 2])  # into bob's line
        wall, mono = [os.stat(path).st_mtime + 0.5], [50.0]
        self.users = UsersDB(path, "example.org", ("example.org", "example.net"))
        self.users._file = FileStamp(lambda: wall[0], lambda: mono[0])
        r = self.router()
        users, lookups = self.users, []

        def then_another_thread_reads(method):
            def looked_up(address):
                answer = method(address)
                lookups.append(address)
                if len(lookups) == 2:  # once the router has looked bob up:
                    with open(path, "w") as f:  # the writer ends its line...
                        f.write(whole)
                    users.get(A("alice"))  # ...and a password check reads the file
                return answer
            return looked_up

        # as the router asks (``lookup``; before, ``contains`` then ``changing``)
        for name in ("lookup", "contains"):
            if hasattr(users, name):
                setattr(users, name, then_another_thread_reads(getattr(users, name)))
        self.assertRefused(r.resolve, A("bob"), replies.MAILBOXES_CHANGING)
        self.assertEqual(r.resolve(A("bob")), ((A("bob"),), ()))

    def test_an_aliases_file_that_changes_while_it_is_read_is_in_doubt(self):
        # last changed long ago, but rewritten in place just as the hub
        # reads it: the stamp taken before the read is an old one, the text
        # half of the new file; the open file's stamp after the read says so
        from txmailhub import router as router_module

        self.users.in_doubt = False
        r = self.router("staff: joe\nlist: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))
        os.utime(self.path, (1e9 + 5, 1e9 + 5))  # touched: read again, still old
        real_read = router_module.read_regular

        def writer_begins(path, **kwargs):
            if path == self.path:
                with open(self.path, "r+") as f:
                    f.truncate(0)
                    f.write("staff: joe\n")
            return real_read(path, **kwargs)

        self.patch(router_module, "read_regular", writer_begins)
        self.assertRefused(r.resolve, A("list"), replies.MAILBOXES_CHANGING)


class NotARegularFileTests(Base):
    def test_a_link_to_the_file_is_followed(self):
        # [aliases] file may be a link (docs/configuration.rst): the hub reads
        # the file it leads to
        real = os.path.abspath(os.path.join(self.dir, "real"))
        with open(real, "w") as f:
            f.write("list: ann\n")
        os.symlink(real, self.path)
        r = Router(DOMAINS, self.users, self.path)
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))

    def test_a_fifo_in_place_of_the_file_is_not_waited_on_and_is_logged_once(self):
        # a plain open() of a FIFO waits for a writer: the hub's reactor
        # would hang at the next RCPT.  It is treated as a directory is
        import threading

        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        r = self.router("list: joe\n")
        os.unlink(self.path)
        os.mkfifo(self.path)
        answers = []

        def lookups():
            for _ in range(3):
                answers.append(r.resolve(A("list")))

        t = threading.Thread(target=lookups, daemon=True)
        t.start()
        t.join(20)
        self.assertFalse(t.is_alive(), "blocked opening the FIFO")
        self.assertEqual(answers, [((A("joe"),), ())] * 3)
        errors = [e["why"] for e in observer if e["log_level"].name == "error"]
        self.assertEqual(errors, [f"cannot read aliases file {self.path}: not a regular file "
                                  "(a named pipe, device or socket)"])
        os.unlink(self.path)
        self.write("list: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))


class UnreadableFileTests(Base):
    assertRefused = FreshFileTests.assertRefused

    def test_a_file_grown_over_the_bound_leaves_the_aliases_read_last(self):
        # an aliases file had no bound: one grown without end (a script's
        # runaway output, a log put in its place) was read whole into the
        # hub's memory at the next RCPT.  Over ALIASES_FILE_MAX it is a
        # file that cannot be read: the aliases read last serve on, said once
        from txmailhub.router import ALIASES_FILE_MAX

        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        r = self.router("list: joe\n")
        with open(self.path, "r+b") as f:
            f.truncate(ALIASES_FILE_MAX + 1)  # (a sparse file: no disk taken)
        os.utime(self.path, (1e9 + 5, 1e9 + 5))
        for _ in range(2):
            self.assertEqual(r.resolve(A("list")), ((A("joe"),), ()))
        errors = [e["why"] for e in observer if e["log_level"].name == "error"]
        self.assertEqual(errors, [f"cannot read aliases file {self.path}: larger than 16 MiB, "
                                  "the most the hub reads of it"])
        self.assertEqual(check_aliases_file(self.path, "example.org", DOMAINS), [
            f"{self.path}: [aliases] file cannot be read: larger than 16 MiB, the most the hub "
            "reads of it"])
        self.write("list: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))

    def test_a_file_not_read_at_the_start_holds_back_strangers_with_451(self):
        # the aliases read last serve on while the file cannot be read; at
        # the start none were read, and an alias's mail got 550 5.1.1 (a
        # bounce for good) for a file the admin is about to fix.  As while
        # the file is away: 451, said once, until it can be read
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        with open(self.path, "wb") as f:
            f.write(b"list: joe\n\xff\n")
        os.utime(self.path, (1e9, 1e9))
        r = Router(DOMAINS, self.users, self.path)
        self.assertRefused(r.resolve, A("list"), replies.LOCAL_ERROR)
        self.assertRefused(r.resolve, A("stranger"), replies.LOCAL_ERROR)
        self.assertEqual(r.resolve(A("joe")), ((A("joe"),), ()))
        errors = [e for e in observer if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("no aliases are in effect", errors[0]["log_format"])
        self.write("list: ann\n")
        self.assertEqual(r.resolve(A("list")), ((A("ann"),), ()))
        self.assertRefused(r.resolve, A("stranger"), replies.UNKNOWN_USER)


class LoadedLineTests(Base):
    def test_one_alias_is_counted_in_the_singular(self):
        # "loaded 1 aliases" read as a slip; "alias" stays the word to grep
        from twisted.logger import formatEvent

        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.router("postmaster: joe\n").resolve(Address("postmaster", "example.org"))
        self.router("postmaster: joe\nabuse: joe\n").resolve(Address("abuse", "example.org"))
        lines = [formatEvent(e) for e in observer if "loaded" in e.get("log_format", "")]
        self.assertEqual(lines, [f"loaded 1 alias from {self.path}",
                                 f"loaded 2 aliases from {self.path}"])


def test_check_reads_a_fifo_in_place_of_the_aliases_file_as_the_hub_does(tmp_path) -> None:
    # check_aliases_file (mailhub check) opened the file plainly: a FIFO
    # put there waited for a writer for ever.  The hub refuses it
    # (read_regular): check says so, as a problem of the file
    from conftest import not_waiting_on

    from txmailhub.router import alias_target_warnings

    path = tmp_path / "aliases"
    os.mkfifo(path)
    assert not_waiting_on(path, lambda: check_aliases_file(str(path), "example.org", DOMAINS)) == [
        f"{path}: [aliases] file is not a regular file (a named pipe, device or socket): the "
        "hub does not read it"]
    assert not_waiting_on(path, lambda: alias_target_warnings(
        str(path), "example.org", DOMAINS, lambda a: False)) == []


def test_check_says_a_loop_at_the_line_of_its_alias_first_in_the_file(tmp_path) -> None:
    # an alias loop had no line, though each of its aliases has one: it is
    # at the line of the loop's alias that comes first in the file, written
    # from that alias, with the lines of the others (x leads into it, and
    # is no part of it)
    path = tmp_path / "aliases"
    path.write_text("x: b\na: b\n# the rest\nb: c\nc: a,\n   joe\n")
    assert check_aliases_file(str(path), "example.org", DOMAINS) == [
        f"{path}:2: alias loop: a@example.org -> b@example.org -> c@example.org -> "
        "a@example.org (it is cut at runtime; the other aliases are on lines 4 and 5)"]


def test_a_chain_of_aliases_deeper_than_pythons_stack_is_read(tmp_path) -> None:
    # alias_loops walked the chain by recursion: one nested deeper than
    # the recursion limit was a RecursionError when the hub read the file
    # (and at `mailhub check`, and in txmailhub-sendmail)
    import sys

    depth = sys.getrecursionlimit() + 100
    path = tmp_path / "aliases"
    path.write_text("".join(f"a{i}: a{i + 1}\n" for i in range(depth))
                    + f"a{depth}: joe, a{depth - 1}\n")
    router = Router(DOMAINS, Users("joe"), str(path))
    assert router.resolve(A("a0")) == ((A("joe"),), ())
    assert check_aliases_file(str(path), "example.org", DOMAINS) == [
        f"{path}:{depth}: alias loop: a{depth - 1}@example.org -> a{depth}@example.org -> "
        f"a{depth - 1}@example.org (it is cut at runtime; the other alias is on line "
        f"{depth + 1})"]


def test_a_lone_cr_warning_names_the_line_it_ends_an_empty_one_too(tmp_path) -> None:
    # "\r" alone on line 2 (after "a: joe\n"): that line's number, not the
    # one before it
    path = tmp_path / "aliases"
    path.write_bytes(b"a: joe\n\rb: ann\rc: ann\n")
    assert line_end_warnings(str(path)) == [
        f"{path}:2: line ends with a lone CR (and 1 other line): the hub ends a line there, "
        "but other readers of aliases files (newaliases) read it and the next line as one"]


class AliasLineWordsTests(SynchronousTestCase):
    """What check and the hub's log say of a line aliases(5) readers take
    another way: in its own words, not as a target that is no user."""

    def parse(self, text: str) -> tuple[dict, list[str]]:
        return parse_aliases(text, "example.org", DOMAINS, "f")

    def test_an_rfc5322_group_is_named_and_its_line_skipped(self):
        # read as targets, "team: joe" was a bad target (white space) and
        # "ann;" a local target check called "no local user"
        table, problems = self.parse("a: team: joe, ann;\nb: x@[IPv6:::1], ann\n")
        self.assertEqual(list(table), ["b@example.org"])
        self.assertEqual(problems, [
            "f:1: alias 'a': 'team: joe, ann;' is an RFC 5322 group ('name: address, ...;'), "
            "which the file does not read: list the targets without the group's name and "
            "its ';': the line is skipped"])

    def test_an_unclosed_angle_bracket_is_named(self):
        # '<joe' was the local target "<joe", no user
        table, problems = self.parse("a: <joe, ann, bob>\n")
        self.assertEqual(table, {"a@example.org": ((A("ann"), True),)})
        self.assertEqual(problems, [
            "f:1: bad target '<joe' of 'a': its '<' is not closed by a '>'",
            "f:1: bad target 'bob>' of 'a': its '>' closes no '<'"])

    def test_a_line_that_starts_with_a_form_feed_continues_the_one_before(self):
        # white space starts a continuation line (Postfix reads it so): a
        # form feed or vertical tab there started an alias named "ann"
        table, problems = self.parse("a: joe,\n\x0cann,\n\x0b bob\n")
        self.assertEqual(problems, [])
        self.assertEqual(table, {"a@example.org": ((A("joe"), True), (A("ann"), True),
                                                   (A("bob"), True))})

    def test_a_backslash_outside_quotes_makes_one_bad_target_not_a_bad_line(self):
        # 'joe\(x' opened a comment to the end of the line: ann was lost
        # with it.  RFC 5322 has no escape outside quotes: the target is
        # bad, the others stay; a name so written is a bad name
        table, problems = self.parse("a: joe\\(x, ann\nb\\c: ann\n")
        self.assertEqual(table, {"a@example.org": ((A("ann"), True),)})
        self.assertEqual([p.split(": a backslash")[0] for p in problems], [
            "f:1: bad target 'joe\\\\(x' of 'a'", "f:2: bad alias name 'b\\\\c'"])
        self.assertTrue(all("escapes nothing in an address (RFC 5322)" in p for p in problems))

    def test_a_quoted_name_or_target_rcpt_gives_unquoted_is_keyed_unquoted(self):
        # '"joe2": x' kept its quotes: RCPT TO:<joe2@...> (or <"joe2"@...>,
        # the same local part) never reached it; a remote target keeps its
        # quotes, its domain's to judge
        table, problems = self.parse('"joe2": "ann", "x"@remote.test\n')
        self.assertEqual(problems, [])
        self.assertEqual(table, {"joe2@example.org": (
            (A("ann"), True), (Address('"x"', "remote.test"), True))})

    def test_a_name_written_as_rcpt_gives_it_wins_over_another_spelling_of_it(self):
        # before names were read as RCPT gives them, '"joe2": ann' and
        # 'a;: ann' were aliases no mail reached, and the lines 'joe2: bob'
        # and '"a;": bob' further down got the mail; one alias each now,
        # the line written as RCPT gives the name stays in effect wherever
        # it is (a line above it must not take its mail to other targets)
        lines: dict[str, int] = {}
        table, problems = parse_aliases('"joe2": ann\na;: ann\njoe2: bob\n"a;": bob\n',
                                        "example.org", ["example.org"], "f", lines)
        self.assertEqual(table, {"joe2@example.org": ((A("bob"), True),),
                                 '"a;"@example.org': ((A("bob"), True),)})
        self.assertEqual(lines, {"joe2@example.org": 3, '"a;"@example.org': 4})
        self.assertEqual(problems, [
            "f:1: alias '\"joe2\"' is defined on line 3 too, written as RCPT gives it, which "
            "is in effect: this one is ignored",
            "f:2: alias 'a;' is defined on line 4 too, written as RCPT gives it, which is in "
            "effect: this one is ignored"])
        # two lines that both write it so (or both another way): the first
        table, problems = self.parse('joe2: ann\nJoe2: bob\n"joe2": x\n')
        self.assertEqual(table, {"joe2@example.org": ((A("ann"), True),)})
        self.assertEqual(len(problems), 2)
        table, problems = self.parse('"joe2": ann\n"joe2": bob\n')
        self.assertEqual(table, {"joe2@example.org": ((A("ann"), True),)})
        self.assertEqual(problems, ["f:2: alias '\"joe2\"' is already defined on line 1: "
                                    "this one is ignored"])
        # with the domain written
        table, problems = self.parse('"joe2"@example.org: ann\njoe2@example.org: bob\n')
        self.assertEqual(table, {"joe2@example.org": ((A("bob"), True),)})
        self.assertEqual(len(problems), 1)
        # 'a' U+037E (the Greek question mark, ';' in NFC) was keyed "a;"
        # before too, as RCPT reached it: of it and '"a;"', the first line
        table, problems = self.parse('a\u037e: ann\n"a;": bob\n')
        self.assertEqual(table, {'"a;"@example.org': ((A("ann"), True),)})
        self.assertEqual(len(problems), 1)

    def test_a_backslash_that_starts_a_quoted_target_keeps_the_mailbox_and_the_line(self):
        # '\\"a;"' is the mailbox "a;" not expanded (the copy an alias
        # keeps in the mailbox of its own name, as check advises and alias
        # add writes it): read as an escape of the '"', it left a quote
        # open and the whole line was skipped
        table, problems = self.parse('"a;": \\"a;", bob\nc:\\"Ann",\\ "x"\n')
        self.assertEqual(problems, [])
        self.assertEqual(table, {
            '"a;"@example.org': ((Address('"a;"', "example.org"), False), (A("bob"), True)),
            "c@example.org": ((Address("Ann", "example.org"), False), (A("x"), False))})


def test_a_remote_target_that_is_no_dot_string_is_relayed_quoted():
    # RFC 5321 4.1.2: a local part that is no dot-string exists only
    # quoted, so "a;" is the one form RCPT TO can carry it in: written
    # a;@remote.test, the relay sent RCPT TO:<a;@remote.test>, a syntax
    # error there (501, and a bounce).  Only quotes are added: a quoted
    # one, or a dot-string, stays as written (its domain reads it)
    from txmailhub.router import parse_aliases
    from txmailhub.smtp._parse import parse_rcpt

    table, problems = parse_aliases(
        'x: a;@remote.test, "joe"@remote.test, Joe@remote.test, a..b@remote.test\n',
        "example.org", ["example.org"], "aliases", {})
    assert problems == []
    targets = [t for t, _ in table["x@example.org"]]
    assert targets == [Address('"a;"', "remote.test"), Address('"joe"', "remote.test"),
                       Address("Joe", "remote.test"), Address('"a..b"', "remote.test")]
    for target in targets:  # each a forward-path RCPT TO takes (no 501)
        assert parse_rcpt(f"TO:<{target}>", "example.org")[0].domain == "remote.test"
