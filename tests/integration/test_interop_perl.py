"""Perl's Net::SMTP and Net::POP3 (libnet, with IO::Socket::SSL for TLS and
Authen::SASL for SMTP AUTH): plain, STARTTLS/STLS, implicit TLS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from interop import (
    ALICE,
    ALICE_PW,
    SENDER,
    assert_both_got,
    assert_same,
    corpus,
    fetch_poplib,
    hub_log_is_clean,
    send_smtplib,
    strip_trace,
)

PERL = shutil.which("perl")


def _have(*modules: str) -> bool:
    if PERL is None:
        return False
    uses = "".join(f"use {m};" for m in modules)
    return subprocess.run([PERL, "-e", uses], capture_output=True).returncode == 0


HAVE_LIBNET = _have("Net::SMTP", "Net::POP3")
HAVE_TLS = HAVE_LIBNET and _have("IO::Socket::SSL")
HAVE_SASL = _have("Authen::SASL")

pytestmark = pytest.mark.skipif(not HAVE_LIBNET, reason="perl with Net::SMTP is not installed")
needs_tls = pytest.mark.skipif(
    HAVE_LIBNET and not (HAVE_TLS and HAVE_SASL),
    reason="IO::Socket::SSL and Authen::SASL (libio-socket-ssl-perl, libauthen-sasl-perl) "
           "are not installed")


SEND = r"""
use strict; use warnings;
use Net::SMTP;
my ($mode, $port, $ca, $from, $pw, @files) = @ARGV;
my %tls = (SSL_ca_file => $ca, SSL_verifycn_name => '127.0.0.1');
my $smtp = Net::SMTP->new('127.0.0.1', Port => $port, Hello => 'perl.test', Timeout => 20,
                          Debug => 1, ($mode eq 'smtps' ? (SSL => 1, %tls) : ()))
    or die "connect: $@";
if ($mode eq 'starttls' || $mode eq 'submission') {
    $smtp->starttls(%tls) or die "starttls: " . $smtp->code . " " . $smtp->message;
}
if ($mode eq 'submission' || $mode eq 'smtps') {
    $smtp->auth($from, $pw) or die "auth: " . $smtp->code . " " . $smtp->message;
}
for my $file (@files) {
    open(my $fh, '<:raw', $file) or die "$file: $!";
    my $data = do { local $/; <$fh> };
    $smtp->mail($from, Bits => 8) or die "mail: " . $smtp->message;
    my @good = $smtp->recipient('alice@example.org', 'bob@example.org', { SkipBad => 1 });
    die "rcpt: @good" unless @good == 2;
    $smtp->data() or die "data: " . $smtp->message;
    $smtp->datasend($data);
    $smtp->dataend() or die "dataend: " . $smtp->code . " " . $smtp->message;
    print "ACCEPTED ", $smtp->code, " ", $smtp->message;
}
$smtp->quit;
"""

FETCH = r"""
use strict; use warnings;
use Net::POP3;
my ($mode, $port, $ca, $user, $pw, $out) = @ARGV;
my %tls = (SSL_ca_file => $ca, SSL_verifycn_name => '127.0.0.1');
my $pop = Net::POP3->new('127.0.0.1', Port => $port, Timeout => 20, Debug => 1,
                         ($mode eq 'pop3s' ? (SSL => 1, %tls) : ()))
    or die "connect: $@";
$pop->starttls(%tls) or die "stls: " . $pop->message if $mode eq 'stls';
my $capa = $pop->capa;
print "CAPA ", join(" ", sort keys %$capa), "\n";
defined($pop->login($user, $pw)) or die "login: " . $pop->message;
my $list = $pop->list;
my $uidl = $pop->uidl;
for my $n (sort { $a <=> $b } keys %$list) {
    my $lines = $pop->get($n) or die "get $n: " . $pop->message;
    open(my $fh, '>:raw', "$out/$n") or die;
    print $fh @$lines;
    close $fh;
    print "LIST $n $list->{$n} UIDL $uidl->{$n}\n";
}
my $top = $pop->top(3, 2) or die "top";
open(my $fh, '>:raw', "$out/top") or die;
print $fh @$top;
close $fh;
$pop->delete(1) or die "dele";
$pop->quit or die "quit";
"""


def perl(script: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([PERL, "-e", script, *args], capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-4000:]
    return r


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@needs_tls
def test_net_smtp_on_every_listener(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    cert = str(hub.folder / "tls" / "cert.pem")
    sent = {}
    for way, port in (("mx", hub.smtp_port), ("starttls", hub.smtp_port),
                      ("submission", hub.submission_port), ("smtps", hub.smtps_port)):
        sent[way] = corpus(way, big=way in ("mx", "smtps"))
        files = []
        for name, data in sent[way].items():
            f = tmp_path / f"{way}-{name}.eml"
            f.write_bytes(data)
            files.append(str(f))
        r = perl(SEND, way, str(port), cert, SENDER, "carol-secret", *files)
        out, err = r.stdout.decode(), r.stderr.decode(errors="replace")
        assert out.count("ACCEPTED 250 2.0.0 ") == len(files), out + err
        assert (">>> STARTTLS" in err) == (way in ("starttls", "submission")), err
        if way in ("submission", "smtps"):
            assert "<<< 235 2.7.0 Authentication successful" in err, err
        assert "MAIL FROM:<carol@example.net> BODY=8BITMIME" in err, err
    assert_both_got(hub, sent, {})


def test_net_smtp_plain(hub, tmp_path: Path):
    # without IO::Socket::SSL: the MX port, no TLS, no AUTH
    sent = corpus("plain", big=False)
    files = []
    for name, data in sent.items():
        f = tmp_path / f"{name}.eml"
        f.write_bytes(data)
        files.append(str(f))
    r = perl(SEND, "mx", str(hub.smtp_port), "", SENDER, "", *files)
    assert r.stdout.decode().count("ACCEPTED 250 2.0.0 ") == len(files)
    assert_same(sent, "plain", fetch_poplib(hub.pop3_port, ALICE, ALICE_PW))
    hub_log_is_clean(hub.log_text())


@pytest.mark.parametrize("mode", ["plain", "stls", "pop3s"])
def test_net_pop3(make_hub, tmp_path: Path, mode: str):
    if mode != "plain" and not HAVE_TLS:
        pytest.skip("IO::Socket::SSL (libio-socket-ssl-perl) is not installed")
    hub = make_hub(tls=True)
    cert = str(hub.folder / "tls" / "cert.pem")
    sent = corpus(mode)
    send_smtplib(hub.smtp_port, sent, [ALICE])
    reference = fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)
    out = tmp_path / "out"
    out.mkdir()
    port = hub.pop3s_port if mode == "pop3s" else hub.pop3_port
    r = perl(FETCH, mode, str(port), cert, ALICE, ALICE_PW, str(out))
    text, err = r.stdout.decode(), r.stderr.decode(errors="replace")
    capa = text.splitlines()[0].split()[1:]
    assert ("STLS" in capa) == (mode == "plain") and "UIDL" in capa and "TOP" in capa, text
    listed = [line.split() for line in text.splitlines()[1:]]
    assert [int(x[1]) for x in listed] == list(range(1, len(sent) + 1))
    # Net::POP3 hands the lines over unstuffed; over plain TCP libnet's
    # getline turns CRLF into LF, over IO::Socket::SSL it keeps CRLF
    for (_, n, size, _, _uid), name, ref in zip(listed, sent, reference, strict=True):
        got = crlf((out / n).read_bytes())
        assert got == ref and int(size) == len(got), name
        assert strip_trace(got) == sent[name], name
    top = crlf((out / "top").read_bytes())
    head, _, body = strip_trace(top).partition(b"\r\n\r\n")
    assert body == b".\r\n..\r\n" and head.endswith(b"Subject: interop dots " + mode.encode())
    assert "<<< +OK" in err
    assert len(fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)) == len(sent) - 1
    hub_log_is_clean(hub.log_text())
