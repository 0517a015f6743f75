"""The copy downgraded for a POP3 client without UTF8 (RFC 6857) against
``DOWNGRADE_RULES``: the sizes ``.txmailhub-sizes`` keeps are of the copy
the rules they name made, and POP3 gives such a size in LIST, STAT and
RETR's +OK, sending the copy the running version makes.  A change to that
copy must come with new rules, or a size kept by the version before is
taken for a copy it is not of.  A digest of the copies of a fixed set of
messages is recorded for the rules; when it fails, raise
``DOWNGRADE_RULES`` (and say so in the upgrade notes) and record the new
digest under the new number.  Parameter fields are folded by the
stdlib's email package, whose output may differ from one Python release
to the next (``DOWNGRADE_MARK`` names the release too): the digest is
recorded for one, and the test skips on others."""

from __future__ import annotations

import hashlib
import sys

import pytest

from txmailhub.downgrade import PartHeaders, Undowngradable, downgrade_header, header_end
from txmailhub.store.mailbox import DOWNGRADE_RULES

# (DOWNGRADE_RULES, Python's version): the digest of ``copies()``
DIGESTS = {
    (4, (3, 11, 7)): "3d4372689e42cc7c6304ea76e8ed1629ff7cfe226bc8683810f2d4ad49c221db",
    (5, (3, 11, 7)): "324fe41c991d01d83831f580c4a0357a35ac6cd46afff991dd7112950fc99bae",
    (6, (3, 11, 7)): "15ca66671f48485c1e6506bf77507ed4a24373eba3d724ec718fbb5b54f5df93",
    (7, (3, 11, 7)): "d5441f544678bfaefa84f0091a54b08f7332f6ef8b84563231f4ec000c26e899",
}
PYTHONS = {python for _, python in DIGESTS}

U = "Gr\u00fc\u00dfe \u65e5\u672c"
HEADERS = [
    f"Subject: {U}\n",
    f"Subject: =?utf-8?q?kept?= {U} =?iso-8859-1?q?caf=E9?=\n",
    f"Subject: {U * 40}\n",
    f"From: {U} <a@example.org>\nTo: \"{U}\" <b@example.org>, c@example.org (x {U})\n",
    "From: (a)\u3000(b)\nTo: (\u00e9) (x)\nCc: \u00a0 <a@example.org>\n",
    f"To: Group {U}: a@example.org, b@example.org;\n",
    f"From: \u00fc\u00e9@example.org\nReply-To: {U} <\u00fc@example.org>\n",
    f"Content-Type: text/plain; charset=utf-8; name=\"{U}.txt\"\n",
    f"Content-Type: text/plain (a {U} comment); name=\"{U}\"\n",
    "From: J\u00f6rg <a@example.org> (x)\u00a0(y)\nTo: <b@example.org> (x) \u3000 (y)\n",
    "From: \u00a0J\u00f6rg\u3000 <a@example.org>\nTo: \u3000Gr\u00fcppe: a@example.org;\n",
    f"Content-Type: multipart/mixed{'abc' * 10} \u00e4\n",
    f"Content-Type: text/plain; name=\"{U}\" {'(' * 500}{')' * 500}\n",
    f"Content-Type: text/plain; name=\"{U}\" ({'(' * 400}{U})\n",
    f"Content-Type: multipart/mixed; boundary=\"=?utf-8?q?b?=\"; name=\"{U}\"\n",
    f"Content-Disposition: attachment;\n filename=\"{U * 20}.pdf\"\n",
    "Content-Disposition: attachment; filename=\"resume.pdf\";\n"
    " filename*=utf-8''r%C3%A9sum%C3%A9.pdf; x=\"\u00e9\"\n",
    f"Content-Type: text/plain; name*0*=utf-8''%C3%BC; name*1=\"{U}\"; name=\"{U}\"\n",
    f"Content-Type: text/plain; name=x; name*=\"{U * 40}\"\n",
    f"Content-Description: {U}\nComments: {U}\nKeywords: {U}, b\n",
    "Received: from x by y for <\u00fc@example.org>; Mon, 1 Jan 2024 00:00:00 +0000\n",
    f"Message-ID: <{U}@example.org>\nX-Other: {U}\n",
    f"Subject: \u00e9\n\tcontinued {U}\n",
    f"{U}\n",
]
BOUNDARIES = ['boundary="b"', "boundary*=us-ascii''%62", 'boundary*0="b"',
              "BOUNDARY*0*=''b", "boundary=b (c)", 'boundary="<b>"', "boundary=b(c)x",
              "boundary=b''b"]
PART = (f"--b\nContent-Type: text/plain; name=\"{U}\"\nContent-Description: {U}\n\nbody\n"
        f"--b\nContent-Type: message/rfc822\n\nSubject: {U}\n\ninner\n"
        "--b\nContent-Type: multipart/digest; boundary=d\n\n--d\n\n"
        f"Subject: {U}\n\ndigest part\n--d--\n--b--\n")


def copies() -> bytes:
    out = []
    for header in HEADERS:
        for crlf in (False, True):
            data = header.encode()
            if crlf:
                data = data.replace(b"\n", b"\r\n")
            try:
                out.append(downgrade_header(data))
            except Undowngradable as e:
                out.append(b"no downgraded form: " + str(e).encode())
    for boundary in BOUNDARIES:
        message = (f"Subject: {U}\nContent-Type: multipart/mixed; {boundary}\n\n{PART}").encode()
        end = header_end(message)
        try:
            parts = PartHeaders(message[:end])
            out.append(parts.feed(message[end:]) + parts.finish() + b"%d" % parts.delta)
        except Undowngradable as e:
            out.append(b"no downgraded form: " + str(e).encode())
    return b"\0".join(out)


def test_the_copy_is_the_one_the_rules_name():
    python = tuple(sys.version_info[:3])
    if python not in PYTHONS:
        pytest.skip(f"no digest recorded for Python {'.'.join(map(str, python))}")
    assert DIGESTS.get((DOWNGRADE_RULES, python)) == hashlib.sha256(copies()).hexdigest()
