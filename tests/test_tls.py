"""txmailhub.tls: the server certificate judged, loaded, and taken again."""

from __future__ import annotations

import datetime
import errno
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from txmailhub import tls
from txmailhub.signals import HangupNotice

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, start, end, ca=False):
    return (x509.CertificateBuilder()
            .subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def pair(folder: Path, *, start=NOW - DAY, end=NOW + 60 * DAY, chain="full",
         passphrase: bytes | None = None) -> tuple[str, str]:
    """A server certificate signed by an intermediate: ``chain`` "full"
    (leaf, intermediate), "leaf" (the leaf alone) or "reversed"."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    inter = _cert("Test Intermediate", ca_key, "Test Root", ca_key, NOW - 10 * DAY,
                  NOW + 900 * DAY, ca=True)
    leaf = _cert("mail.example.org", key, "Test Intermediate", ca_key, start, end)
    certs = {"full": [leaf, inter], "leaf": [leaf], "reversed": [inter, leaf]}[chain]
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8, encryption))
    return str(cert_path), str(key_path)


def serial_served(factory) -> int:
    """The serial of the certificate a new connection would present."""
    return SSL.Connection(factory.getContext(), None).get_certificate().get_serial_number()


def test_a_good_full_chain_has_nothing_to_say(tmp_path):
    assert tls.pair_findings(*pair(tmp_path)) == ([], [])


@pytest.mark.parametrize(("kwargs", "problem"), [
    (dict(passphrase=b"secret"), "is protected by a passphrase, which the hub cannot ask for"),
    (dict(chain="reversed"), "the server's own certificate must come first"),
])
def test_pairs_that_cannot_serve_are_problems(tmp_path, kwargs, problem):
    problems, _ = tls.pair_findings(*pair(tmp_path, **kwargs))
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize("which", ["certificate", "key"])
def test_a_fifo_in_place_of_a_tls_file_is_a_problem_not_a_wait(tmp_path, which):
    # load_pair (the start, each reload, mailhub check) opened them
    # plainly: a FIFO put there waited for a writer for ever
    from conftest import not_waiting_on

    cert, key = pair(tmp_path)
    fifo = Path(cert if which == "certificate" else key)
    fifo.unlink()
    os.mkfifo(fifo)
    problems, _ = not_waiting_on(fifo, lambda: tls.pair_findings(cert, key))
    assert problems == [f"{which} {fifo} cannot be read: not a regular file (a named pipe, "
                        "device or socket)"]


@pytest.mark.parametrize("which", ["certificate", "key"])
def test_a_tls_file_over_its_bound_is_a_problem_not_read_whole(tmp_path, which):
    # read whole at the start, each reload and each renewal's look, however
    # large: over TLS_FILE_MAX it is refused as a file that cannot be read
    cert, key = pair(tmp_path)
    path = Path(cert if which == "certificate" else key)
    with open(path, "r+b") as f:
        f.truncate(tls.TLS_FILE_MAX + 1)  # (the PEM, then NULs: a sparse tail)
    problems, _ = tls.pair_findings(cert, key)
    assert problems == [f"{which} {path} cannot be read: larger than 1 MiB, the most the hub "
                        "reads of it"]


@pytest.mark.parametrize(("kwargs", "warning"), [
    # warnings, not problems: plain SMTP must not go down with a
    # certificate, nor with a clock that is slow at boot
    (dict(start=NOW - 90 * DAY, end=NOW - DAY), "expired on"),
    (dict(start=NOW + 2 * DAY, end=NOW + 90 * DAY), "is not valid before"),
    (dict(end=NOW + 5 * DAY), "expires on"),
    (dict(chain="leaf"), "holds only the server's certificate"),
])
def test_pairs_that_clients_will_trip_over_are_warnings(tmp_path, kwargs, warning):
    problems, warnings = tls.pair_findings(*pair(tmp_path, **kwargs))
    assert problems == [] and len(warnings) == 1 and warning in warnings[0], warnings


def test_a_self_signed_certificate_alone_is_no_incomplete_chain(tmp_path):
    # nothing signed it but itself: there is no certificate to add
    from conftest import make_certificate

    cert, key = make_certificate(tmp_path)
    assert tls.pair_findings(str(cert), str(key)) == ([], [])


def test_a_chain_out_of_order_is_a_warning(tmp_path):
    from conftest import make_certificate

    cert, key = pair(tmp_path / "pair")
    stranger, _ = make_certificate(tmp_path / "stranger")
    leaf = Path(cert).read_bytes().split(b"-----END CERTIFICATE-----")[0]
    Path(cert).write_bytes(leaf + b"-----END CERTIFICATE-----\n" + stranger.read_bytes())
    problems, warnings = tls.pair_findings(cert, key)
    assert problems == [] and len(warnings) == 1, warnings
    assert "the certificates are not in order" in warnings[0]


def _leaf(cn: str, dns=(), ips=()):
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(_name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - DAY).not_valid_after(NOW + 60 * DAY))
    if dns or ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dns]
            + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(("names", "hostname", "covered"), [
    (["mail.example.org"], "mail.example.org", True),
    (["Mail.Example.ORG."], "mail.example.org.", True),  # case and a final dot
    (["mx.example.org", "mail.example.org"], "mail.example.org", True),
    (["mx.example.org"], "mail.example.org", False),
    # RFC 6125 6.4.3: the wildcard is one whole label, the left-most
    (["*.example.org"], "mail.example.org", True),
    (["*.example.org"], "example.org", False),
    (["*.example.org"], "a.mail.example.org", False),
    (["*.org"], "example.org", False),  # not for a whole top-level domain
    (["m*.example.org"], "mail.example.org", False),  # no part of a label
    (["mail.*.org"], "mail.example.org", False),
    (["*.*.org"], "mail.example.org", False),
    (["*xexample.org"], "a.example.org", False),  # a * without its dot is no wildcard
])
def test_covers_reads_dns_names_and_wildcards(names, hostname, covered):
    assert tls.covers(_leaf("unrelated.example", dns=names), hostname) is covered


def test_covers_never_reads_the_common_name():
    # RFC 9525 dropped RFC 6125's fallback to it, and current clients
    # (Python's ssl, Go, browsers) refuse a certificate naming the host
    # only there: without a subjectAltName, with addresses only, or with
    # other DNS names alike
    assert not tls.covers(_leaf("mail.example.org"), "mail.example.org")
    assert not tls.covers(_leaf("mail.example.org", ips=["192.0.2.1"]), "mail.example.org")
    assert not tls.covers(_leaf("mail.example.org", dns=["mx.example.org"]),
                          "mail.example.org")
    assert tls.covers(_leaf("mail.example.org", dns=["mail.example.org"]), "mail.example.org")


def test_a_certificate_naming_the_host_only_in_its_common_name_is_a_warning(tmp_path):
    # the pair of pair() is for mail.example.org, in its common name alone
    cert, key = pair(tmp_path)
    for hostname in ("mail.example.org", "MAIL.example.org."):
        problems, warnings = tls.pair_findings(cert, key, hostname=hostname)
        assert (problems, warnings) == ([], [
            f"certificate {cert} names {hostname} ([hub] hostname) only in its common name, "
            "which current clients do not look at (RFC 9525: only the subjectAltName's DNS "
            "names count, and it has none): many clients that check the name (mail programs, "
            "the sending servers that verify) refuse TLS; get one whose subjectAltName names "
            f"{hostname}"])


def test_covers_looks_for_an_address_literal_among_the_addresses():
    leaf = _leaf("mail.example.org", dns=["mail.example.org"],
                 ips=["192.0.2.1", "2001:db8::1"])
    assert tls.covers(leaf, "[192.0.2.1]") and tls.covers(leaf, "[IPv6:2001:db8::1]")
    assert not tls.covers(leaf, "[192.0.2.2]")
    assert not tls.covers(_leaf("192.0.2.1"), "[192.0.2.1]")  # never a common name
    assert not tls.covers(leaf, "[mail.example.org]")  # no address: covers nothing


def test_a_certificate_for_another_name_is_a_warning(tmp_path):
    from conftest import make_certificate

    cert, key = (str(p) for p in make_certificate(tmp_path / "san", "mail.example.org"))
    assert tls.pair_findings(cert, key, hostname="mail.example.org")[1] == []
    assert tls.pair_findings(cert, key, hostname="MAIL.example.org.")[1] == []
    problems, warnings = tls.pair_findings(cert, key, hostname="mx.example.org")
    assert problems == [] and len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"certificate {cert} is not valid for mx.example.org ([hub] hostname), only for "
        "mail.example.org, 127.0.0.1: clients that check the name")
    # the common name alone, and another one: said so
    cert, key = pair(tmp_path / "cn")
    problems, warnings = tls.pair_findings(cert, key, hostname="mx.example.org")
    assert problems == [] and len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"certificate {cert} is not valid for mx.example.org ([hub] hostname), only for no "
        "name clients look at (its common name mail.example.org is not one): clients that "
        "check the name")


def _self_signed(folder: Path, cn: str, dns: list[str]) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 60 * DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_a_warning_names_five_names_of_the_certificate_at_most(tmp_path):
    names = [f"mx{i}.example.org" for i in range(1, 7)]
    cert, key = _self_signed(tmp_path / "six", "mx1.example.org", names)
    warnings = tls.pair_findings(cert, key, hostname="mail.example.org")[1]
    assert warnings[0].startswith(
        f"certificate {cert} is not valid for mail.example.org ([hub] hostname), only for "
        "mx1.example.org, mx2.example.org, mx3.example.org, mx4.example.org, "
        "mx5.example.org and 1 more: "), warnings
    cert, key = _self_signed(tmp_path / "five", "mx1.example.org", names[:5])
    warnings = tls.pair_findings(cert, key, hostname="mail.example.org")[1]
    assert warnings[0].startswith(
        f"certificate {cert} is not valid for mail.example.org ([hub] hostname), only for "
        "mx1.example.org, mx2.example.org, mx3.example.org, mx4.example.org, "
        "mx5.example.org: "), warnings


def test_a_common_name_beside_other_alt_names_is_no_common_name_only_case(tmp_path):
    # the host in the common name, other DNS names in the subjectAltName:
    # the certificate is for those names, not "only in its common name"
    cert, key = _self_signed(tmp_path, "mail.example.org", ["mx.example.org"])
    warnings = tls.pair_findings(cert, key, hostname="mail.example.org")[1]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"certificate {cert} is not valid for mail.example.org ([hub] hostname), only for "
        "mx.example.org: "), warnings


def test_only_forward_secret_aead_ciphers_on_tls_1_2(tmp_path):
    # RFC 9325 4.1/4.2: no RSA key transport, no CBC; TLS 1.3's suites stay
    ciphers = SSL.Connection(tls.tls_options(*pair(tmp_path)).getContext(), None) \
        .get_cipher_list()
    tls12 = [c for c in ciphers if not c.startswith("TLS_")]
    assert tls12 and all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c)
                         for c in tls12), ciphers
    assert "AES128-SHA" not in ciphers and "AES256-GCM-SHA384" not in ciphers


def test_no_client_certificate_is_asked_for(tmp_path):
    # docs/pop3.rst, RFC 8314 3.1: on the implicit-TLS ports the session
    # starts in the AUTHORIZATION state and a login is USER/PASS, APOP or
    # AUTH; a CertificateRequest would make some clients prompt for a
    # certificate or give up.  The listeners' contexts, first and after a
    # renewal, verify no peer.
    assert tls.tls_options(*pair(tmp_path / "first")).getContext().get_verify_mode() \
        == SSL.VERIFY_NONE
    factory, _clock, cert, key = serving(tmp_path)
    assert factory.getContext().get_verify_mode() == SSL.VERIFY_NONE
    first = serial_served(factory)
    new_cert, new_key = pair(tmp_path / "renewed")
    shutil.copyfile(new_cert, cert)
    shutil.copyfile(new_key, key)
    factory.reload()
    assert serial_served(factory) != first  # the renewal is served
    assert factory.getContext().get_verify_mode() == SSL.VERIFY_NONE


def serving(tmp_path):
    """A ReloadingTLS serving a fresh pair from ``tmp_path / "live"`` on a
    Clock of its own, before any look or load: the start of the renewal
    tests, which then change the pair's files.  The factory, its clock,
    and the pair's certificate and key files."""
    clock = Clock()
    cert, key = pair(tmp_path / "live")
    return tls.ReloadingTLS(cert, key, clock), clock, cert, key


def renewed(tmp_path):
    """A ReloadingTLS serving a pair, its clock, the first pair's serial,
    and the pair's files replaced by a renewal (as certbot's hook would)."""
    factory, clock, cert, key = serving(tmp_path)
    first = serial_served(factory)
    new_cert, new_key = pair(tmp_path / "renewed")
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    return factory, clock, first, cert


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path):
    # certbot renews every two months: new connections get the new pair,
    # looked at no more than every CHECK_INTERVAL seconds
    factory, clock, first, cert = renewed(tmp_path)
    assert serial_served(factory) == first  # not looked at yet
    clock.advance(tls.CHECK_INTERVAL)
    second = serial_served(factory)
    assert second != first
    assert second == x509.load_pem_x509_certificate(Path(cert).read_bytes()).serial_number


@pytest.fixture
def events():
    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_a_new_pair_that_cannot_serve_keeps_the_old_one_and_says_so_once(tmp_path, events):
    factory, clock, cert, _ = serving(tmp_path)
    first = serial_served(factory)
    other_cert, _ = pair(tmp_path / "other")
    os.replace(other_cert, cert)  # the certificate renewed, its key not yet
    for _ in range(3):
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == first
    # a warning at the first look, the error at the second, then nothing
    said = [e for e in events if e["log_level"].name in ("warn", "error")]
    assert [e["log_level"].name for e in said] == ["warn", "error"]
    assert "keeping the old ones" in said[1]["log_format"]
    assert not factory.reload()  # SIGHUP: still not usable
    # said once per change: the SIGHUP line says why (below), not another error
    assert len([e for e in events if e["log_level"].name == "error"]) == 1


def _warnings_and_errors(events) -> list[tuple[str, str]]:
    from twisted.logger import formatEvent

    return [(e["log_level"].name, formatEvent(e)) for e in events
            if e["log_level"].name in ("warn", "error")]


def _renewal_caught_between_its_two_files(tmp_path):
    """A hub serving a pair whose certificate was renewed and whose key
    is not yet: looked at once (the warning), the old pair serving on.
    The factory, its clock, the key's path, the new key waiting to be put
    there, and the old pair's serial."""
    factory, clock, cert, key = serving(tmp_path)
    first = serial_served(factory)
    new_cert, new_key = pair(tmp_path / "renewed")
    os.replace(new_cert, cert)
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) == first  # the old pair serves on
    return factory, clock, key, new_key, first


def test_a_renewal_caught_between_its_two_files_is_a_warning(tmp_path, events):
    # certbot's deploy hook, a script: the certificate is in place, its key
    # a moment later.  A look in between used to log an error, and a
    # monitoring that pages on errors paged for a renewal that went fine.
    factory, clock, key, new_key, first = _renewal_caught_between_its_two_files(tmp_path)
    ((level, line),) = _warnings_and_errors(events)
    assert level == "warn", line
    assert "do not match yet, keeping the old ones" in line
    assert "looked at again at the first TLS connection 10 seconds from now" in line
    assert "does not belong to the first certificate" in line
    os.replace(new_key, key)
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) != first
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    assert len(_loaded(events)) == 1


def test_a_mismatch_that_persists_is_an_error_at_the_next_look(tmp_path, events):
    # the next look loads the files again although they did not change
    # and their stamp is settled: otherwise a pair that never matches
    # would be told only as a warning
    factory, clock, cert, _ = serving(tmp_path)
    first = serial_served(factory)
    other_cert, _ = pair(tmp_path / "other")
    os.replace(other_cert, cert)
    factory.wall = lambda: time.time() + 3600  # settled: only a change counts
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) == first
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    clock.advance(tls.CHECK_INTERVAL - 1)
    assert serial_served(factory) == first  # not yet the next look
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    clock.advance(1)
    assert serial_served(factory) == first
    said = _warnings_and_errors(events)
    assert [level for level, _ in said] == ["warn", "error"]
    assert "cannot use the new certificate and key, keeping the old ones" in said[1][1]
    for _ in range(3):  # said once: no more warnings nor errors
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == first
    assert len(_warnings_and_errors(events)) == 2
    other_cert, _ = pair(tmp_path / "third")  # a new change: warned of again
    os.replace(other_cert, cert)
    clock.advance(tls.CHECK_INTERVAL)
    serial_served(factory)
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn", "error", "warn"]


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
def test_a_renewal_read_while_out_of_descriptors_is_served_once_they_are_back(
        tmp_path, events, monkeypatch, error):
    # the hub (or the system) at its open-files limit when a renewal is
    # looked at: that says nothing of the files.  After two looks in that
    # state the renewal was taken as unusable ("an error once it persists")
    # and never looked at again: the old certificate was served until a
    # SIGHUP or the next renewal -- past its expiry, if that came first
    factory, clock, first, _ = renewed(tmp_path)
    real = tls.read_regular
    short = [True]

    def read_regular(path, *args, **kwargs):
        if short[0]:
            raise OSError(error, os.strerror(error), path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tls, "read_regular", read_regular)
    for _ in range(4):
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == first
    # said once, as what it is, and no error about the files themselves
    ((level, line),) = _warnings_and_errors(events)
    assert level == "warn" and os.strerror(error) in line and "again" in line, line
    # what the hub knows of the pair says so, and a reload (SIGHUP) takes
    # nothing
    assert os.strerror(error) in factory.failure
    assert factory.reload() is False
    short[0] = False
    clock.advance(tls.CHECK_INTERVAL)
    second = serial_served(factory)
    assert second != first
    assert len(_loaded(events)) == 1 and len(_warnings_and_errors(events)) == 1
    # a later spell, at the next renewal, is said again (once)
    new_cert, new_key = pair(tmp_path / "again")
    os.replace(new_cert, factory.certificate)
    os.replace(new_key, factory.key)
    short[0] = True
    for _ in range(2):
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == second
    assert len(_warnings_and_errors(events)) == 2


def test_a_spell_out_of_descriptors_after_a_file_error_is_said_again(
        tmp_path, events, monkeypatch):
    # out of descriptors at a look (said once), then the files themselves
    # wrong (a certificate that does not match its key: said), then out of
    # descriptors again: a new spell, said again -- the file error in
    # between ended the first, though no pair was loaded since
    factory, clock, first, cert = renewed(tmp_path)
    real = tls.read_regular
    short = [True]

    def read_regular(path, *args, **kwargs):
        if short[0]:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tls, "read_regular", read_regular)
    for _ in range(2):
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == first
    short[0] = False
    other_cert, _ = pair(tmp_path / "other")
    os.replace(other_cert, cert)  # no longer the key's
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) == first
    short[0] = True
    for _ in range(2):
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == first
    said = _warnings_and_errors(events)
    assert [level for level, _ in said] == ["warn", "warn", "warn"], said
    short_line = os.strerror(errno.EMFILE)
    assert short_line in said[0][1] and "do not match" in said[1][1]
    assert short_line in said[2][1] and "cannot be read now" in said[2][1]


@pytest.mark.parametrize("which", [0, 1])
def test_either_file_unread_for_want_of_descriptors_is_said_so(tmp_path, monkeypatch, which):
    # the certificate's read or the key's: a shortage of descriptors is
    # TLSFilesUnreadable (looked at again), any other error plain
    files = pair(tmp_path)
    real = tls.read_regular
    error = [errno.EMFILE]

    def read_regular(path, *args, **kwargs):
        if str(path) == str(files[which]):
            raise OSError(error[0], os.strerror(error[0]), path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tls, "read_regular", read_regular)
    with pytest.raises(tls.TLSFilesUnreadable):
        tls.load_pair(str(files[0]), str(files[1]))
    error[0] = errno.EACCES
    with pytest.raises(tls.TLSFilesError) as raised:
        tls.load_pair(str(files[0]), str(files[1]))
    assert not isinstance(raised.value, tls.TLSFilesUnreadable)


def test_a_pair_changed_again_but_still_unusable_at_the_next_look_is_an_error(
        tmp_path, events):
    # the next look decides, "changed or not": a second change that is no
    # better is not one more warning
    factory, clock, cert, _ = serving(tmp_path)
    first = serial_served(factory)
    for name in ("other", "third"):
        other_cert, _ = pair(tmp_path / name)
        os.replace(other_cert, cert)
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == first
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn", "error"]


def test_after_a_renewal_taken_at_the_second_look_the_next_is_warned_of_first(
        tmp_path, events):
    factory, clock, cert, key = serving(tmp_path)
    for name in ("renewed", "renewed-again"):
        new_cert, new_key = pair(tmp_path / name)
        os.replace(new_cert, cert)
        clock.advance(tls.CHECK_INTERVAL)
        serial_served(factory)  # a look between the two files
        os.replace(new_key, key)
        clock.advance(tls.CHECK_INTERVAL)
        serial_served(factory)
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn", "warn"]
    assert len(_loaded(events)) == 2


def test_a_half_written_file_is_a_warning_first_too(tmp_path, events):
    factory, clock, cert, _ = serving(tmp_path)
    Path(cert).write_bytes(Path(cert).read_bytes()[:100])  # a look mid-write
    clock.advance(tls.CHECK_INTERVAL)
    serial_served(factory)
    ((level, line),) = _warnings_and_errors(events)
    assert level == "warn" and "cannot be used yet" in line, line


def test_a_sighup_during_a_renewal_between_its_two_files_is_a_warning(tmp_path, events):
    # a SIGHUP may come while a renewal is between its two files (a stray
    # kill -HUP, a log rotation's): a warning, as at a look, and the next
    # look, CHECK_INTERVAL after the signal, takes the pair once whole;
    # an error at once would page whoever watches errors for nothing
    factory, clock, cert, key = serving(tmp_path)
    first = serial_served(factory)
    new_cert, new_key = pair(tmp_path / "renewed")
    os.replace(new_cert, cert)
    clock.advance(tls.CHECK_INTERVAL - 1)  # a look would be due 1 s from now
    assert not factory.reload()
    ((level, line),) = _warnings_and_errors(events)
    assert level == "warn" and "do not match yet" in line, line
    os.replace(new_key, key)
    clock.advance(1)
    assert serial_served(factory) == first  # no look yet: the signal restarted the wait
    clock.advance(tls.CHECK_INTERVAL - 1)
    assert serial_served(factory) != first
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    assert len(_loaded(events)) == 1


def test_a_sighup_that_cannot_use_a_new_pair_is_an_error_once_it_persists(tmp_path, events):
    # the pair still unusable at the next look, or at the next SIGHUP:
    # then the error, once
    for again in ("look", "sighup"):
        del events[:]
        factory, clock, cert, _ = serving(tmp_path / again)
        first = serial_served(factory)
        other_cert, _ = pair(tmp_path / again / "other")
        os.replace(other_cert, cert)
        assert not factory.reload()
        assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
        clock.advance(tls.CHECK_INTERVAL)
        if again == "look":
            assert serial_served(factory) == first
        else:
            assert not factory.reload()
        said = _warnings_and_errors(events)
        assert [level for level, _ in said] == ["warn", "error"], again
        assert "cannot use the new certificate and key, keeping the old ones" in said[1][1]
        assert not factory.reload()
        clock.advance(tls.CHECK_INTERVAL)
        serial_served(factory)
        assert len(_warnings_and_errors(events)) == 2  # said once


def test_a_sighup_soon_after_a_looks_warning_is_no_error(tmp_path, events):
    # a look warned of a renewal between its two files; a SIGHUP a few
    # seconds later (a log rotation's) comes while the renewal may still
    # be writing the second file: what decides is how long the pair has
    # been unusable, not how many times it was looked at
    factory, clock, key, new_key, first = _renewal_caught_between_its_two_files(tmp_path)
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    clock.advance(3)
    assert not factory.reload()
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    # the renewal completes: taken at the next look, said as info, and
    # nothing worse than the one warning was logged
    os.replace(new_key, key)
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) != first
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    (loaded,) = _loaded(events)
    assert loaded["log_level"].name == "info"


def test_a_mismatch_is_an_error_once_it_has_lasted_check_interval(tmp_path, events):
    # SIGHUPs before CHECK_INTERVAL has passed since the warning log
    # nothing more; the first one (or look) after it logs the error, once
    factory, clock, cert, _ = serving(tmp_path)
    first = serial_served(factory)
    other_cert, _ = pair(tmp_path / "other")
    os.replace(other_cert, cert)
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) == first  # the warning, at 10 s
    for step in (1, tls.CHECK_INTERVAL - 2):  # SIGHUPs at 11 s and 19 s
        clock.advance(step)
        assert not factory.reload()
        assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    clock.advance(1)  # 20 s: the mismatch has lasted CHECK_INTERVAL
    assert not factory.reload()
    said = _warnings_and_errors(events)
    assert [level for level, _ in said] == ["warn", "error"]
    assert "cannot use the new certificate and key, keeping the old ones" in said[1][1]
    for _ in range(2):  # said once
        clock.advance(tls.CHECK_INTERVAL)
        assert not factory.reload()
        assert serial_served(factory) == first
    assert len(_warnings_and_errors(events)) == 2


def test_a_new_pair_openssl_refuses_keeps_the_old_one(tmp_path, events):
    # cryptography reads a 1024-bit RSA pair; OpenSSL will not serve it
    # ("ee key too small"): every handshake would fail on it
    from cryptography.hazmat.primitives.asymmetric import rsa

    factory, _, cert, key = serving(tmp_path)
    first = serial_served(factory)
    weak = rsa.generate_private_key(65537, 1024)
    weak_cert = _cert("mail.example.org", weak, "mail.example.org", weak, NOW - DAY,
                      NOW + 60 * DAY)
    Path(cert).write_bytes(weak_cert.public_bytes(serialization.Encoding.PEM))
    Path(key).write_bytes(weak.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    assert not factory.reload()
    assert "too small" in factory.failure
    assert serial_served(factory) == first


def test_sighup_that_keeps_the_old_pair_says_why(tmp_path, events):
    # twistd --uid: the key was read as root at the start; on SIGHUP it is
    # read as the hub's user and fails, though the files did not change
    # since the last look.  The SIGHUP line must say why, or the admin is
    # left with "cannot be used" and nothing to fix.
    from twisted.logger import formatEvent

    factory, clock, cert, _ = serving(tmp_path)
    other_cert, _ = pair(tmp_path / "other")
    os.replace(other_cert, cert)
    clock.advance(tls.CHECK_INTERVAL)
    serial_served(factory)  # the change is seen and said once
    del events[:]
    HangupNotice(factory)._answer()
    (line,) = [formatEvent(e) for e in events if "SIGHUP" in e.get("log_format", "")]
    assert "kept" in line and "does not belong to the first certificate" in line, line


def test_a_chmod_that_makes_a_renewed_key_readable_counts_as_a_change(tmp_path):
    # the reload failed (the key unreadable to the hub's user); the admin's
    # chmod changes only the ctime, and must be looked at again
    cert, key = pair(tmp_path / "live")
    before = tls._stamp(cert, key)
    os.chmod(key, 0o640)
    assert tls._stamp(cert, key) != before


def test_sighup_loads_the_pair_again(tmp_path):
    factory, _, first, _ = renewed(tmp_path)
    HangupNotice(factory)._answer()  # what the handler has the reactor do
    assert serial_served(factory) != first  # at once, without waiting for the interval



@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_the_advice_for_a_key_with_a_passphrase_works(tmp_path):
    # run as given (the passphrase from stdin, as a user would type it): the
    # key ends up without one, private, and the pair serves; reading and
    # writing one file in one openssl call would leave it empty
    cert, key = pair(tmp_path, passphrase=b"secret")
    (problem,), _ = tls.pair_findings(cert, key)
    command = re.search(r"\(\((umask 077;.*?)\)\s*&&\s*(mv .*?)\)", problem)
    assert command, problem
    shell = f"({command.group(1)} -passin stdin) && {command.group(2)}"
    subprocess.run(["sh", "-c", shell], input=b"secret\n", check=True, capture_output=True)
    assert tls.pair_findings(cert, key)[0] == []
    assert os.stat(key).st_mode & 0o077 == 0


# --- resumption (RFC 8446 2.2, RFC 5077): a returning client skips the
# certificate's signature and the full key exchange


def _pump(server: SSL.Connection, client, incoming, outgoing) -> None:
    """Carry what each side wrote to the other until neither has more."""
    for _ in range(50):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        out = outgoing.read()
        if out:
            server.bio_write(out)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            data = server.bio_read(1 << 16)
        except SSL.WantReadError:
            data = b""
        incoming.write(data)
        if not out and not data:
            return


def _client(version=ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = version
    return context


def _connect(factory, context: ssl.SSLContext, session=None):
    """One TLS connection from a stdlib client to ``factory``'s context, in
    memory; the client's session (with the tickets the server sent after
    the handshake) and whether it was resumed."""
    server = SSL.Connection(factory.getContext(), None)
    server.set_accept_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="mail.example.org",
                              session=session)
    _pump(server, client, incoming, outgoing)
    server.send(b"220 ready\r\n")  # TLS 1.3 tickets reach the client with data
    incoming.write(server.bio_read(1 << 16))
    assert client.read(100) == b"220 ready\r\n"
    return client.session, client.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_returning_client_resumes_its_session(tmp_path, version):
    factory = tls.ReloadingTLS(*pair(tmp_path), Clock())
    client = _client(version)
    session, reused = _connect(factory, client)
    assert not reused and session is not None
    _, reused = _connect(factory, client, session)
    assert reused


def test_ticket_keys_are_renewed(tmp_path):
    # tickets are sealed with keys that live in the process; after
    # TICKET_KEY_LIFETIME a new context with new keys serves, so a stolen
    # ticket key opens an hour of sessions at most -- and the old
    # tickets then buy a full handshake, not a failure
    clock = Clock()
    factory = tls.ReloadingTLS(*pair(tmp_path), clock)
    first = serial_served(factory)
    client = _client()
    session, _ = _connect(factory, client)
    clock.advance(tls.TICKET_KEY_LIFETIME - 1)
    assert _connect(factory, client, session)[1]
    clock.advance(1)
    fresh, reused = _connect(factory, client, session)
    assert not reused and fresh is not None
    assert serial_served(factory) == first  # the same pair, new keys
    assert _connect(factory, client, fresh)[1]


# --- the renewal's bookkeeping: which pair a new context is made from,
# how often the files are looked at, what is said


def _loaded(events) -> list:
    return [e for e in events if "loaded" in e.get("log_format", "")]


def test_the_intermediate_goes_out_after_the_leaf(tmp_path):
    # a client that verifies needs the certificate that signed the leaf;
    # certbot's fullchain.pem carries it, and the server must pass it on
    factory = tls.ReloadingTLS(*pair(tmp_path), Clock())
    assert _peer_chain(factory) == ["CN=mail.example.org", "CN=Test Intermediate"]


def test_sessions_last_as_long_as_the_ticket_keys(tmp_path):
    # OpenSSL's own default (300 s) would end a resumable session long
    # before its ticket key; the renewed context keeps the same timeout
    clock = Clock()
    factory = tls.ReloadingTLS(*pair(tmp_path), clock)
    assert factory.getContext().get_timeout() == int(tls.TICKET_KEY_LIFETIME)
    clock.advance(tls.TICKET_KEY_LIFETIME)
    assert factory.getContext().get_timeout() == int(tls.TICKET_KEY_LIFETIME)


def test_the_files_are_looked_at_once_per_interval(tmp_path):
    # two stat calls per CHECK_INTERVAL, not per connection: a change made
    # just after a look waits for the next one
    factory, clock, cert, key = serving(tmp_path)
    first = serial_served(factory)
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) == first  # looked: nothing new
    clock.advance(1)
    new_cert, new_key = pair(tmp_path / "renewed")
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    clock.advance(tls.CHECK_INTERVAL - 2)
    assert serial_served(factory) == first
    clock.advance(1)
    assert serial_served(factory) != first


def test_a_renewal_is_loaded_and_said_once(tmp_path, events):
    # the log line names the new leaf's end (not its intermediate's), and
    # the files, unchanged since, are not loaded again at the next looks
    factory, clock, _, cert = renewed(tmp_path)
    leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    for _ in range(3):
        clock.advance(tls.CHECK_INTERVAL)
        assert serial_served(factory) == leaf.serial_number
    (line,) = _loaded(events)
    assert line["until"] == leaf.not_valid_after_utc


def test_new_ticket_keys_after_a_sighup_keep_the_new_pair(tmp_path):
    # the keys are renewed by making a context from the pair in use: the
    # one SIGHUP took, not the one the hub started with; and the new
    # context's keys serve their full lifetime from the reload on
    factory, clock, first, _ = renewed(tmp_path)
    clock.advance(tls.TICKET_KEY_LIFETIME / 2)
    assert factory.reload() is True
    second = serial_served(factory)
    assert second != first
    client = _client()
    session, _ = _connect(factory, client)
    clock.advance(tls.TICKET_KEY_LIFETIME / 2)  # the start's keys would be due here
    assert _connect(factory, client, session)[1]
    clock.advance(tls.TICKET_KEY_LIFETIME / 2)
    assert not _connect(factory, client, session)[1]  # the reload's keys were due
    assert serial_served(factory) == second


def test_failure_says_why_only_while_the_pair_on_disk_cannot_serve(tmp_path):
    # the SIGHUP line reads it: None at the start and after a good reload
    factory, _, cert, key = serving(tmp_path)
    assert factory.failure is None
    other_cert, other_key = pair(tmp_path / "other")
    os.replace(other_cert, cert)  # the certificate renewed, its key not yet
    assert factory.reload() is False
    assert "does not belong" in factory.failure
    os.replace(other_key, key)
    assert factory.reload() is True
    assert factory.failure is None


def test_a_key_rewritten_in_place_after_its_certificate_in_one_tick_is_taken(
        tmp_path, events, monkeypatch):
    # a renewal script that writes the certificate, then the key, in
    # place: a look between the two sees a key of another certificate
    # (a warning, the old pair serves on); the key then written within the
    # same clock tick, at the same size (a P-256 key's PEM always has
    # one), keeps its stamp -- the old pair must not serve on for good
    factory, clock, cert, key = serving(tmp_path)
    first = serial_served(factory)
    new_cert, new_key = pair(tmp_path / "renewed")
    Path(cert).write_bytes(Path(new_cert).read_bytes())  # in place: the same inode
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) == first  # the key does not match yet
    key_before = os.stat(key)
    Path(key).write_bytes(Path(new_key).read_bytes())
    assert os.stat(key).st_size == key_before.st_size
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: key_before if p == key
                        else real_stat(p, *a, **k))  # the same tick: the stamp stays
    clock.advance(tls.CHECK_INTERVAL)
    renewed_serial = x509.load_pem_x509_certificate(Path(new_cert).read_bytes()).serial_number
    assert serial_served(factory) == renewed_serial
    assert [e["log_level"].name for e in events if e["log_level"].name in ("warn", "error")] \
        == ["warn"]  # the renewal caught half-way, no error: it was fine
    assert len(_loaded(events)) == 1


def test_a_fresh_pair_is_looked_at_again_but_loaded_and_said_once(tmp_path, events,
                                                                  monkeypatch):
    # while the files' stamp cannot be trusted, each look loads them
    # again; the same pair keeps its context (its ticket keys: a returning
    # client still resumes) and is not logged again; once settled, a look
    # costs two stat calls and no load
    factory, clock, _, _ = renewed(tmp_path)
    clock.advance(tls.CHECK_INTERVAL)
    serial_served(factory)  # the renewal taken
    context = factory._options
    client = _client()
    session, _ = _connect(factory, client)
    loads: list[str] = []
    real_load = tls.load_pair
    monkeypatch.setattr(tls, "load_pair", lambda c, k: loads.append(c) or real_load(c, k))
    clock.advance(tls.CHECK_INTERVAL)
    serial_served(factory)
    assert len(loads) == 1 and factory._options is context
    assert _connect(factory, client, session)[1]  # resumed
    factory.wall = lambda: time.time() + 3600  # an hour later: settled
    for _ in range(3):
        clock.advance(tls.CHECK_INTERVAL)
        serial_served(factory)
    assert len(loads) == 2  # the settling look, then none
    assert len(_loaded(events)) == 1


def test_a_renewal_during_the_start_is_taken_at_the_next_look(tmp_path, monkeypatch):
    # the stamp is taken before the files are read: a renewal that lands
    # between the read and the stamp would otherwise pass for the pair read
    clock = Clock()
    cert, key = pair(tmp_path / "live")
    new_cert, new_key = pair(tmp_path / "renewed")
    real_load = tls.load_pair

    def load_then_renew(c, k):
        loaded = real_load(c, k)
        if os.path.exists(new_cert):
            os.replace(new_cert, cert)
            os.replace(new_key, key)
        return loaded

    monkeypatch.setattr(tls, "load_pair", load_then_renew)
    factory = tls.ReloadingTLS(cert, key, clock)
    first = serial_served(factory)
    factory.wall = lambda: time.time() + 3600  # settled: only a change counts
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) != first


def test_a_renewal_for_another_name_is_taken_with_a_warning(tmp_path, events):
    # a renewal made for the wrong name (another domain's files copied,
    # a certbot run for another certificate name) is served at once: the
    # clients that check the name would refuse TLS from then on, and the
    # log said only "loaded"
    import conftest

    clock = Clock()
    cert, key = conftest.make_certificate(tmp_path / "live", "mail.example.org")
    factory = tls.ReloadingTLS(str(cert), str(key), clock)
    for folder, name in (("same", "mail.example.org"), ("other", "other.example")):
        new_cert, new_key = conftest.make_certificate(tmp_path / folder, name)
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        clock.advance(tls.CHECK_INTERVAL)
        serial_served(factory)
    assert len(_loaded(events)) == 2  # both taken
    (warning,) = [e for e in events if e["log_level"].name == "warn"]
    assert warning["names"] == "mail.example.org"  # 127.0.0.1 is in both


def test_a_renewal_not_valid_for_the_hubs_name_is_warned_of_once(tmp_path, events):
    # the start and `mailhub check` judge the certificate against [hub]
    # hostname; a renewal taken at run time is judged too, once: a
    # SIGHUP that loads it again says nothing more
    import conftest
    from twisted.logger import formatEvent

    clock = Clock()
    cert, key = conftest.make_certificate(tmp_path / "live", "mail.example.org")
    factory = tls.ReloadingTLS(str(cert), str(key), clock, hostname="mail.example.org")

    def renew(folder, name):
        new_cert, new_key = conftest.make_certificate(tmp_path / folder, name)
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        clock.advance(tls.CHECK_INTERVAL)
        serial_served(factory)
        return [formatEvent(e) for e in events if e["log_level"].name == "warn"]

    assert renew("same", "mail.example.org") == []
    (line,) = renew("other", "other.example")
    assert line.startswith(f"TLS: certificate {cert} is not valid for mail.example.org "
                           "([hub] hostname), only for other.example, 127.0.0.1"), line
    assert factory.reload()
    assert len([e for e in events if e["log_level"].name == "warn"]) == 1
    # a certificate that never named the hub (the start warned of it): a
    # renewal of it names nothing the old one did not, and is warned of
    # all the same
    assert len(renew("third", "other.example")) == 2
    assert len(_loaded(events)) == 4


def test_a_dropped_wildcard_that_covered_the_hubs_name_is_still_named(tmp_path, events):
    # the hub's own name, warned of by the name check, is not said twice;
    # but a wildcard that covered it covers the hub's other names too
    # (pop.example.org, smtp.example.org): its loss is still said
    import conftest
    from twisted.logger import formatEvent

    cert, key = conftest.make_certificate(tmp_path / "live", "*.example.org")
    factory = tls.ReloadingTLS(str(cert), str(key), Clock(), hostname="mail.example.org")
    new_cert, new_key = conftest.make_certificate(tmp_path / "other", "other.example")
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    assert factory.reload()
    warned = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert len(warned) == 2, warned
    assert "is not valid for mail.example.org ([hub] hostname)" in warned[0], warned
    assert warned[1] == (f"TLS: the new certificate {cert} is not valid for *.example.org, "
                         "which the one it replaces was valid for: clients that check the "
                         "name refuse it"), warned


def test_names_dropped_reads_wildcards_and_a_common_name_alone():
    key = ec.generate_private_key(ec.SECP256R1())

    def leaf(*names):
        cert = _cert("mail.example.org", key, "mail.example.org", key, NOW - DAY, NOW + DAY)
        if not names:
            return cert  # the common name alone
        return (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
                .public_key(key.public_key()).serial_number(1)
                .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                               critical=False)
                .sign(key, hashes.SHA256()))

    assert tls._names_dropped(leaf("mail.example.org"), leaf("*.example.org")) == []
    assert tls._names_dropped(leaf("a.mail.example.org"), leaf("*.example.org")) == [
        "a.mail.example.org"]  # one label only
    assert tls._names_dropped(leaf(), leaf("MAIL.example.org")) == []
    assert tls._names_dropped(leaf("mail.example.org", "pop.example.org"),
                              leaf("mail.example.org")) == ["pop.example.org"]


def test_without_a_clock_the_monotonic_one_serves(tmp_path):
    # the listeners pass none: time.monotonic, which a wall-clock step
    # (NTP at boot) cannot move back
    cert, key = pair(tmp_path)
    factory = tls.ReloadingTLS(cert, key)
    assert serial_served(factory) == serial_served(factory)
    before = time.monotonic()
    assert before <= factory._now() <= time.monotonic()


def test_a_plain_connections_end_is_no_tls_failure_and_costs_no_import(monkeypatch):
    # every SMTP and POP3 connection's end passes through tls_failure: a
    # plain ConnectionDone/ConnectionLost must be answered before any
    # import statement or class walk (1% of a loaded hub's samples)
    import builtins

    from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
    from twisted.python.failure import Failure

    imported: list[str] = []
    real_import = builtins.__import__

    def counting_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    plain = [Failure(ConnectionDone()), Failure(ConnectionLost())]
    other = Failure(ConnectionRefusedError())
    monkeypatch.setattr(builtins, "__import__", counting_import)
    try:
        said = [tls.tls_failure(f) for f in plain]
    finally:
        monkeypatch.undo()
    assert said == ["", ""]
    assert imported == []
    assert tls.tls_failure(other) == ""
    assert tls.tls_failure(Failure(SSL.Error([("SSL routines", "", "bad record mac")]))) == (
        "bad record mac")


def test_the_stamp_s_trust_is_judged_at_the_time_the_load_began(tmp_path, monkeypatch):
    # a pair loaded within its files' clock tick may be followed in that
    # tick by a same-size rewrite that keeps the stamp: the look that
    # loaded it held up past RACY_SECONDS must not settle the stamp
    factory, clock, _, cert = renewed(tmp_path)
    wall = [os.stat(cert).st_mtime + 0.5]
    factory.wall = lambda: wall[0]
    loads: list[str] = []
    real_load = tls.load_pair

    def held_up_load(c, k):
        loads.append(c)
        pair_read = real_load(c, k)
        wall[0] += 10.0  # the look held up after it read the files
        return pair_read

    monkeypatch.setattr(tls, "load_pair", held_up_load)
    for looks in (1, 2, 2):
        clock.advance(tls.CHECK_INTERVAL)
        serial_served(factory)
        assert len(loads) == looks


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 128:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def _pair_with_two_alt_name_extensions(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for mail.example.org whose subjectAltName
    extension is there twice: OpenSSL loads it, cryptography's reading of
    its extensions raises ``DuplicateExtension`` (no ``ValueError``)."""
    from cryptography.x509.oid import ObjectIdentifier

    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("mail.example.org")])
    # the same extension under an OID of the same length, renamed below
    twin = x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.99"), san.public_bytes())
    cert = (x509.CertificateBuilder().subject_name(_name("mail.example.org"))
            .issuer_name(_name("mail.example.org")).public_key(key.public_key())
            .serial_number(7).not_valid_before(NOW - DAY).not_valid_after(NOW + 60 * DAY)
            .add_extension(san, critical=False).add_extension(twin, critical=False)
            .sign(key, hashes.SHA256()))
    tbs = cert.tbs_certificate_bytes.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11")
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    ecdsa_with_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    der = _der(0x30, tbs + ecdsa_with_sha256 + _der(0x03, b"\x00" + signature))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(x509.load_der_x509_certificate(der).public_bytes(
        serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_a_certificate_whose_names_cannot_be_read_is_a_warning_not_a_traceback(tmp_path):
    # the hostname check read the extensions catching ValueError alone:
    # check and the start (which run it) ended in a traceback
    cert, key = _pair_with_two_alt_name_extensions(tmp_path)
    leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    with pytest.raises(x509.DuplicateExtension):
        leaf.extensions  # noqa: B018
    assert not tls.covers(leaf, "mail.example.org")
    problems, warnings = tls.pair_findings(cert, key, hostname="mail.example.org")
    assert problems == []
    assert [w for w in warnings if "only for no name at all" in w], warnings


def test_a_slow_read_at_the_warning_does_not_put_the_error_off(tmp_path, events, monkeypatch):
    # the time since the warning counts from when its look began, the
    # time the next look is timed from: a read of the files that took a
    # while (a slow disk) must not make that next look, CHECK_INTERVAL
    # later, too early to log the error, which would then wait for one
    # more look
    factory, clock, cert, _ = serving(tmp_path)
    first = serial_served(factory)
    other_cert, _ = pair(tmp_path / "other")
    os.replace(other_cert, cert)
    real_load = tls.load_pair
    slow = [0.5]

    def load_pair(certificate, key):
        if slow:
            clock.advance(slow.pop())
        return real_load(certificate, key)

    monkeypatch.setattr(tls, "load_pair", load_pair)
    clock.advance(tls.CHECK_INTERVAL)
    assert serial_served(factory) == first  # the warning, its read 0.5 s long
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]
    clock.advance(tls.CHECK_INTERVAL - 0.5)  # the next look: CHECK_INTERVAL after the last
    assert serial_served(factory) == first
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn", "error"]


def test_the_common_name_only_warning_says_where_the_name_came_from():
    # the machine's name, when [hub] hostname is unset: the start's words
    why = tls.name_warning(_leaf("mail.example.org"), "c.pem", "mail.example.org",
                           "the machine's name")
    assert why is not None and why.startswith(
        "certificate c.pem names mail.example.org (the machine's name) only in its common "
        "name"), why


def test_names_are_compared_without_spaces_around_them():
    assert tls.covers(_leaf("x", dns=["mail.example.org"]), " mail.example.org ")


def test_the_hubs_own_name_is_not_said_twice_whatever_its_case(tmp_path, events):
    # the old certificate named the hub in capitals: the name check's
    # warning says the hub's name, and the dropped names' warning has no
    # other name to say
    from twisted.logger import formatEvent

    cert, key = _self_signed(tmp_path / "live", "MAIL.example.org", ["MAIL.example.org"])
    factory = tls.ReloadingTLS(cert, key, Clock(), hostname="mail.example.org")
    new_cert, new_key = _self_signed(tmp_path / "other", "other.example", ["other.example"])
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    assert factory.reload()
    warned = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert len(warned) == 1 and "is not valid for mail.example.org" in warned[0], warned


def test_files_put_back_after_a_warning_clear_the_failure(tmp_path, events):
    # a renewal caught half-way, then undone (the old files put back):
    # the pair on disk serves again, so nothing is left to say why not
    factory, clock, cert, _key = serving(tmp_path)
    old = Path(cert).read_bytes()
    other_cert, _ = pair(tmp_path / "other")
    os.replace(other_cert, cert)
    clock.advance(tls.CHECK_INTERVAL)
    serial_served(factory)
    assert factory.failure is not None
    Path(cert + ".new").write_bytes(old)
    os.replace(cert + ".new", cert)
    clock.advance(tls.CHECK_INTERVAL)
    serial_served(factory)
    assert factory.failure is None
    clock.advance(2 * tls.CHECK_INTERVAL)
    serial_served(factory)
    assert [level for level, _ in _warnings_and_errors(events)] == ["warn"]


def _memory_pump(client, server, rounds: int = 10, server_reads: bool = False) -> None:
    """``rounds`` rounds of a pyOpenSSL ``client``'s handshake with
    ``server`` over their memory BIOs; with ``server_reads`` the server
    reads application data (where a renegotiation's ClientHello reaches
    it) rather than stepping its handshake.  An ``SSL.Error`` of either
    goes to the caller."""
    for _ in range(rounds):
        for side, other in ((client, server), (server, client)):
            try:
                if side is server and server_reads:
                    side.recv(1)
                else:
                    side.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(side.bio_read(1 << 16))
            except SSL.WantReadError:
                pass


def _peer_chain(factory) -> list[str]:
    server = SSL.Connection(factory.getContext(), None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    _memory_pump(client, server, rounds=20)
    return [c.subject.rfc4514_string()
            for c in client.get_peer_cert_chain(as_cryptography=True)]


def test_a_chain_completed_with_the_same_leaf_is_served_at_the_next_look(tmp_path):
    # the warning said "use the full chain": the operator puts
    # fullchain.pem in place, same leaf, the intermediate added
    clock = Clock()
    cert, key = pair(tmp_path / "full")
    full = Path(cert).read_bytes()
    end = b"-----END CERTIFICATE-----\n"
    Path(cert).write_bytes(full[:full.index(end) + len(end)])  # the leaf alone
    factory = tls.ReloadingTLS(cert, key, clock)
    assert _peer_chain(factory) == ["CN=mail.example.org"]
    Path(cert + ".new").write_bytes(full)
    os.replace(cert + ".new", cert)
    clock.advance(tls.CHECK_INTERVAL)
    assert _peer_chain(factory) == ["CN=mail.example.org", "CN=Test Intermediate"]


# --- the version floor: RFC 8314 4.1 as RFC 8997 raised it (TLS 1.2 or later)


def _handshake_error(factory, version: ssl.TLSVersion) -> str | None:
    """What the server side says of a handshake from a stdlib client that
    speaks only ``version`` (its own security level lowered, so that the
    refusal, if any, is the server's); None when it succeeds."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version
    server = SSL.Connection(factory.getContext(), None)
    server.set_accept_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="mail.example.org")
    try:
        _pump(server, client, incoming, outgoing)
    except SSL.Error as e:
        return str(e)
    except ssl.SSLError as e:
        return f"client: {e}"
    return None if client.version() == server.get_protocol_version_name() else "no handshake"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_1_2_is_refused_for_its_version(tmp_path, version):
    # RFC 8997 (updating RFC 8314 4.1): TLS 1.0 and 1.1 are not offered.
    # The server must refuse the version itself ("unsupported protocol"),
    # not merely find no cipher in common: a floor lowered by mistake
    # would still fail on the AEAD-only list, and this test would pass
    factory = tls.ReloadingTLS(*pair(tmp_path), Clock())
    why = _handshake_error(factory, version)
    assert why is not None and "unsupported protocol" in why, why
    # and the version floor alone: with every cipher and OpenSSL's lowest
    # security level (which by itself refuses these versions in OpenSSL 3)
    floor_alone = tls.ReloadingTLS(*pair(tmp_path / "all"), Clock())
    floor_alone.getContext().set_cipher_list(b"ALL:@SECLEVEL=0")
    why = _handshake_error(floor_alone, version)
    assert why is not None and "unsupported protocol" in why, why


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_taken(tmp_path, version):
    assert _handshake_error(tls.ReloadingTLS(*pair(tmp_path), Clock()), version) is None


# --- renegotiation and compression: RFC 9325 3.3, 3.5 ---------------------------

# SSL_OP_ALLOW_CLIENT_RENEGOTIATION (OpenSSL 3; pyOpenSSL has no name for
# it): what OpenSSL 1.1.1 did by default
_ALLOW_CLIENT_RENEGOTIATION = 1 << 8


def _renegotiation_refusal(factory) -> str | None:
    """A TLS 1.2 client that asks to renegotiate once its session is up;
    what it is told (None when the server renegotiated)."""
    server = SSL.Connection(factory.getContext(), None)
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    _memory_pump(client, server, server_reads=True)
    assert server.get_protocol_version_name() == "TLSv1.2"
    assert client.renegotiate()
    try:
        _memory_pump(client, server, server_reads=True)
    except SSL.Error as e:
        return str(e)
    return "no answer" if client.renegotiate_pending() else None


def test_a_client_renegotiation_is_refused_whatever_openssl_allows(tmp_path):
    # RFC 9325 3.5; a renegotiation costs the server a full handshake and
    # could change the cipher a session's Received field names.  The
    # refusal is the hub's own (OP_NO_RENEGOTIATION), not OpenSSL 3's
    # default: a context that lets clients renegotiate, as OpenSSL 1.1.1's
    # did, still refuses
    factory = tls.ReloadingTLS(*pair(tmp_path), Clock())
    factory.getContext().set_options(_ALLOW_CLIENT_RENEGOTIATION)
    why = _renegotiation_refusal(factory)
    assert why is not None and "no renegotiation" in why, why


def test_no_compression_on_the_listeners_or_the_relays_opportunistic_tls(tmp_path):
    # RFC 9325 3.3: "implementations and deployments SHOULD disable TLS-level
    # compression" (CRIME).  Twisted's CertificateOptions sets it on every
    # context it makes, the verifying client's too (not inspected here: its
    # context is sealed once a connection is made from it), and OpenSSL
    # 1.1.0 and later set it on every new context anyway: what this can
    # catch is a context of the hub's that clears it, not one that forgot
    from txmailhub.relay.client_tls import opportunistic_client_tls

    for context in (tls.ReloadingTLS(*pair(tmp_path), Clock()).getContext(),
                    opportunistic_client_tls().getContext()):
        assert context.set_options(0) & SSL.OP_NO_COMPRESSION  # (0: adds none, says all)


def test_the_listeners_start_where_pyopenssl_has_no_renegotiation_option(
        tmp_path, monkeypatch):
    # pyOpenSSL defines OP_NO_RENEGOTIATION only when the library under its
    # cryptography has the option; without the name, every TLS listener
    # failed to start (an AttributeError building the context)
    monkeypatch.delattr(SSL, "OP_NO_RENEGOTIATION")
    factory = tls.ReloadingTLS(*pair(tmp_path), Clock())
    assert _handshake_error(factory, ssl.TLSVersion.TLSv1_3) is None
