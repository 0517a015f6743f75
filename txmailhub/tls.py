"""The server's TLS certificate: loading it, judging it, and taking a new one.

Owns the ``[tls]`` pair (a PEM full chain and a PEM key) as the listeners
use it.  ``load_pair`` reads and checks the files, ``pair_findings`` says
what ``mailhub check`` and the start should report about them (a key with a
passphrase, an expired certificate, a chain without its intermediate, a
certificate not valid for the hub's name), and
``ReloadingTLS`` is what the SMTP and POP3 listeners hand to OpenSSL: it
looks at the files again when they change -- certbot renews a certificate
every two months, and a hub that kept the old one would start failing
every client's verification the day it expired -- and keeps the pair it
has whenever the new one cannot be used (a renewal written half-way).
It knows nothing about SMTP, POP3 or sockets.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

from txmailhub.filestamp import RACY_SECONDS
from txmailhub.regular_file import read_regular

__all__ = [
    "TLS_FILE_MAX",
    "ReloadingTLS",
    "TLSFilesError",
    "TLSKeyMismatch",
    "covers",
    "handshake_pending",
    "load_pair",
    "name_warning",
    "pair_findings",
    "tls_details",
    "tls_failure",
    "tls_options",
]

log = Logger()

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)
# Forward secrecy and AEAD only on TLS 1.2 (RFC 9325 4.1, 4.2: no RSA key
# transport, no CBC); TLS 1.3's own suites are not affected by this list.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# A certificate this close to its end is warned of (check, and the start).
EXPIRY_WARNING = datetime.timedelta(days=14)
# How often a listener may look at the files (two stat calls).
CHECK_INTERVAL = 10.0
# How long the keys that seal session tickets (RFC 5077, RFC 8446 4.6.1)
# serve before a new context with new keys replaces them; also the
# longest a ticket is good for.  The keys live only in this process: a
# restart or a new certificate ends every ticket too.
TICKET_KEY_LIFETIME = 3600.0


class TLSFilesError(ValueError):
    """The certificate and key cannot be used; the message says why."""


class TLSFilesUnreadable(TLSFilesError):
    """The certificate or key cannot be opened for now: the hub (or the
    system) out of file descriptors or memory, which says nothing of the
    files."""


#: errors reading the pair that pass (out of the process's or the system's
#: file descriptors, or of memory)
_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)

#: octets the certificate file and the key file may each hold: a chain
#: is a few KiB, a whole CA bundle some 200 KiB; a larger file (a log or
#: an image put in its place) is refused, not read whole at each look
TLS_FILE_MAX = 1024 * 1024


class TLSKeyMismatch(TLSFilesError):
    """The key is not the first certificate's: what a renewal caught
    between writing its two files looks like."""


def load_pair(certificate: str, key: str) -> tuple[list[Any], Any]:
    """The chain (leaf first) and the private key, as ``cryptography``
    objects; ``TLSFilesError`` when they cannot serve."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        # never a plain open: one of a FIFO put there would wait for ever
        pems = _PEM_CERT.findall(read_regular(certificate, most=TLS_FILE_MAX)[0])
        chain = [x509.load_pem_x509_certificate(c) for c in pems]
    except (OSError, ValueError) as e:
        kind = (TLSFilesUnreadable if isinstance(e, OSError) and e.errno in _SHORTAGES
                else TLSFilesError)
        raise kind(f"certificate {certificate} cannot be read: {e}") from None
    if not chain:
        raise TLSFilesError(f"certificate {certificate} holds no PEM certificate")
    try:
        private_key = load_pem_private_key(read_regular(key, most=TLS_FILE_MAX)[0],
                                           password=None)
    except TypeError:
        raise TLSFilesError(
            f"key {key} is protected by a passphrase, which the hub cannot ask for: "
            f"write it out without one, readable only by its owner, and move it into "
            f"place ((umask 077; openssl pkey -in {key} -out {key}.new) && mv {key}.new {key}); "
            f"openssl cannot write the file it reads") from None
    except (OSError, ValueError) as e:
        kind = (TLSFilesUnreadable if isinstance(e, OSError) and e.errno in _SHORTAGES
                else TLSFilesError)
        raise kind(f"key {key} cannot be read: {e}") from None
    mine = _public(private_key.public_key())
    if _public(chain[0].public_key()) != mine:
        matches = [i for i, c in enumerate(chain) if _public(c.public_key()) == mine]
        where = (f" (it is the key of certificate {matches[0] + 1} in the file: the server's "
                 "own certificate must come first)") if matches else ""
        raise TLSKeyMismatch(f"key {key} does not belong to the first certificate in "
                            f"{certificate}{where}")
    return chain, private_key


def _public(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def pair_findings(certificate: str, key: str,
                  now: datetime.datetime | None = None, *,
                  hostname: str | None = None,
                  hostname_from: str = "[hub] hostname") -> tuple[list[str], list[str]]:
    """(problems, warnings) about the pair: it cannot be loaded (a problem);
    its certificate has expired, is not valid yet, expires within
    ``EXPIRY_WARNING``, comes without the certificate that signed it, or
    is not valid for ``hostname`` (the hub's own name, which
    ``hostname_from`` says where it came from): warnings, since clients
    that verify it refuse TLS, but the hub starts."""
    try:
        chain, _ = load_pair(certificate, key)
        tls_options(certificate, key).getContext()  # what OpenSSL itself says of them
    except TLSFilesError as e:
        return [str(e)], []
    except Exception as e:
        return [f"certificate {certificate} and key {key} cannot be used together: {e}"], []
    now = now or datetime.datetime.now(datetime.UTC)
    leaf = chain[0]
    warnings: list[str] = []
    # warnings, not problems: the hub still starts (plain SMTP on port 25
    # must not go down with a certificate, nor with a clock slow at boot)
    if now > leaf.not_valid_after_utc:
        warnings.append(f"certificate {certificate} expired on "
                        f"{leaf.not_valid_after_utc:%Y-%m-%d}: clients that verify it refuse "
                        "TLS; renew it (the hub takes the new files without a restart)")
    elif now < leaf.not_valid_before_utc:
        warnings.append(f"certificate {certificate} is not valid before "
                        f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is the clock right?)")
    elif leaf.not_valid_after_utc - now < EXPIRY_WARNING:
        warnings.append(f"certificate {certificate} expires on "
                        f"{leaf.not_valid_after_utc:%Y-%m-%d}: renew it (the hub takes the "
                        "new files without a restart)")
    if hostname is not None:
        why = name_warning(leaf, certificate, hostname, hostname_from)
        if why is not None:
            warnings.append(why)
    for cert, issuer in itertools.pairwise(chain):
        if cert.issuer != issuer.subject:
            warnings.append(f"certificate {certificate}: the certificates are not in order "
                            "(each one's issuer must come right after it)")
            break
    else:
        last = chain[-1]
        if last.issuer != last.subject and len(chain) == 1:
            warnings.append(f"certificate {certificate} holds only the server's certificate, "
                            "without the one that signed it: most clients cannot verify it "
                            "(use the full chain, e.g. certbot's fullchain.pem)")
    return [], warnings


def name_warning(leaf: Any, certificate: str, hostname: str,
                 hostname_from: str = "[hub] hostname") -> str | None:
    """What to warn of when certificate ``leaf`` (from the file
    ``certificate``) is not valid for ``hostname``, the hub's own name
    (``hostname_from`` says where it came from); ``None`` when it is.
    One wording for ``mailhub check``, the start and a renewal taken at
    run time (``ReloadingTLS``)."""
    if covers(leaf, hostname):
        return None
    # a warning: mail from the servers that do not check the name (most
    # do not) still comes in over TLS; those that do, and mail programs
    # on submission and POP3, refuse it
    dns, addresses = _identities(leaf)
    names = dns + [str(a) for a in addresses]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    refuse = ("clients that check the name (mail programs, the sending servers that "
              "verify) refuse TLS")
    if not dns and _alt_names_readable(leaf) and _common_name_covers(leaf, hostname):
        # RFC 9525 dropped the common name; so did Python, Go, the
        # browsers, and mail programs built on them
        return (f"certificate {certificate} names {hostname} ({hostname_from}) "
                "only in its common name, which current clients do not look at "
                "(RFC 9525: only the subjectAltName's DNS names count, and it has "
                "none): "
                f"many {refuse}; get one whose subjectAltName names {hostname}")
    if not shown:
        common = ", ".join(_common_names(leaf)[:5]) if _alt_names_readable(leaf) else ""
        shown = (f"no name clients look at (its common name {common} is not one)"
                 if common else "no name at all")
    return (f"certificate {certificate} is not valid for {hostname} "
            f"({hostname_from}), only for {shown}: "
            f"{refuse}; get one that names {hostname}, or set [hub] "
            "hostname to a name it is valid for")


def tls_options(certificate: str, key: str) -> Any:
    """Server TLS options from a PEM full chain and a PEM key: TLS 1.2 at
    least, forward-secret AEAD ciphers only, no renegotiation.

    The certificates and key go to OpenSSL as ``cryptography`` objects:
    pyOpenSSL deprecates its own ``X509``/``PKey`` there."""
    return _options(*load_pair(certificate, key))


def _options(chain: list[Any], private_key: Any) -> Any:
    from twisted.internet import ssl

    options = ssl.CertificateOptions(
        privateKey=private_key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        # A client that comes back (a mail program polling, a peer MTA
        # with a TLS session cache) resumes with a ticket: no certificate
        # signature, no full key exchange on TLS 1.2; TLS 1.3 still makes
        # a new (EC)DHE share when the client offers psk_dhe_ke, as the
        # common ones do.  Stateless: nothing is cached per client here.
        enableSessionTickets=True,
    )
    context = options.getContext()
    context.set_timeout(int(TICKET_KEY_LIFETIME))
    # No renegotiation: a client's costs a full handshake each time, and
    # could change the cipher the Received field names.  RFC 9325 3.5 asks
    # only that renegotiation, where a server implements it, be the secure
    # kind (RFC 5746); refusing it is the hub's choice, and the simplest
    # answer to the attacks 3.5 names.  Said here, not left to OpenSSL 3's
    # default of refusing clients: 1.1.1 allowed them, and a build may
    # still.  (TLS 1.3 has none.)
    context.set_options(_no_renegotiation_option())
    return options


def _no_renegotiation_option() -> int:
    """``SSL.OP_NO_RENEGOTIATION``, or 0 where pyOpenSSL lacks it.

    pyOpenSSL defines the name only when the TLS library its
    ``cryptography`` was built on has the option (every OpenSSL 1.1.1 and
    later does; another library may not): asking for a name it lacks kept
    every TLS listener from starting.  Such a library keeps its own
    default for renegotiation (docs/deployment.rst)."""
    from OpenSSL import SSL

    return int(getattr(SSL, "OP_NO_RENEGOTIATION", 0))


def _same(old: tuple[list[Any], Any], new: tuple[list[Any], Any]) -> bool:
    """Whether two (chain, key) pairs are the same certificates and key
    (the key belongs to the leaf: its public half says which it is)."""
    return ([_der(c) for c in old[0]] == [_der(c) for c in new[0]]
            and _public(old[1].public_key()) == _public(new[1].public_key()))


def _names(leaf: Any) -> list[str]:
    """The DNS names and addresses a server certificate is meant for, to
    compare a renewal with the certificate it replaces: the common name
    when it has no subjectAltName (clients do not look at it, RFC 9525:
    ``covers``; here it only says what an old certificate was for)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except ValueError:
        return []  # an extension cryptography cannot parse: nothing to compare
    return ([str(n) for n in san.get_values_for_type(x509.DNSName)]
            + [str(n) for n in san.get_values_for_type(x509.IPAddress)])


def covers(leaf: Any, hostname: str) -> bool:
    """Whether a client that checks the name would take certificate
    ``leaf`` for ``hostname`` (RFC 9525, which obsoletes RFC 6125):
    its subjectAltName DNS names only.  The common name is not looked at:
    RFC 9525 dropped the fallback to it that RFC 6125 6.4.4 still allowed,
    and current clients (Python's ``ssl``, Go, the browsers, many mail
    programs) refuse a certificate that names the host only there (some
    sending servers still fall back to it: hence a warning that says
    so, not just "not valid").  A wildcard ``*.example.com`` stands for
    exactly one label, the left-most (``mail.example.com``, not
    ``example.com`` nor ``a.mail.example.com``), and only with two labels
    or more after it.  An address literal (``[192.0.2.1]``,
    ``[IPv6:2001:db8::1]``) is looked for among the subjectAltName
    addresses.  A certificate whose names cannot be read covers nothing."""
    import ipaddress

    host = _name_key(hostname)
    dns, addresses = _identities(leaf)
    if host.startswith("[") and host.endswith("]"):
        literal = host[1:-1]
        literal = literal[5:] if literal.startswith("ipv6:") else literal
        try:
            return ipaddress.ip_address(literal) in addresses
        except ValueError:
            return False
    return any(_name_matches(pattern, host) for pattern in dns)


def _identities(leaf: Any) -> tuple[list[str], list[Any]]:
    """(DNS names, addresses) a client that checks the name compares: the
    subjectAltName's, never the common name (RFC 9525); nothing when
    cryptography cannot parse them."""
    from cryptography import x509

    try:
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return [], []
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        addresses = list(san.get_values_for_type(x509.IPAddress))
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        # neither is a ValueError: an extension there twice (OpenSSL loads
        # such a certificate), a name of a type cryptography does not know
        return [], []
    return dns, addresses


def _alt_names_readable(leaf: Any) -> bool:
    """Whether cryptography can read the certificate's extensions (when
    it cannot, ``_identities`` finds no name, whatever they hold)."""
    from cryptography import x509

    try:
        leaf.extensions  # noqa: B018 (parsed on first access)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return False
    return True


def _common_names(leaf: Any) -> list[str]:
    """The subject's common names: what clients before RFC 9525 fell
    back to without a subjectAltName DNS name, which the warnings name."""
    from cryptography.x509.oid import NameOID

    try:
        return [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except ValueError:
        return []


def _common_name_covers(leaf: Any, hostname: str) -> bool:
    """Whether a common name of ``leaf`` is ``hostname`` (or a wildcard for it)."""
    host = _name_key(hostname)
    return any(_name_matches(name, host) for name in _common_names(leaf))


def _name_matches(pattern: str, host: str) -> bool:
    pattern = _name_key(pattern)
    if not pattern.startswith("*."):
        return pattern == host
    rest = pattern[2:]
    first, dot, parent = host.partition(".")
    # one whole label, the left-most: never a part of one, never two
    return bool(first and dot and parent == rest and "." in rest and "*" not in rest)


def _names_dropped(old: Any, new: Any) -> list[str]:
    """The names ``old`` was valid for and ``new`` is not (a wildcard of
    ``new`` covers the names one label under it); none when either
    cannot be read -- this only adds a warning, and must never stop a
    renewal from being taken."""
    try:
        have = {n.lower() for n in _names(new)}
        dropped = []
        for name in _names(old):
            low = name.lower()
            parent = low.partition(".")[2]
            if low not in have and not (parent and "*." + parent in have):
                dropped.append(name)
        return dropped
    except Exception:
        return []


def _stamp(*paths: str) -> tuple[Any, ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            # ctime too: a chmod that lets the hub read a renewed key counts
            out.append((st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
    return tuple(out)


@implementer(IOpenSSLContextFactory)
class ReloadingTLS:
    """The listeners' TLS context: the pair on disk, taken again when the
    files change (looked at no more than every ``CHECK_INTERVAL`` seconds,
    as connections come) or on ``reload()`` (SIGHUP).  A new pair that
    cannot be used is logged, once per change, and the old one serves on.

    A renewal writes two files, one after the other, and a look may come
    in between: the new certificate with the old key.  So the first look
    that cannot use a changed pair logs a warning and looks again at the
    next chance (``CHECK_INTERVAL`` later, as connections come), changed
    or not; only a pair still unusable then is logged as an error.  A
    ``reload()`` (SIGHUP) follows the same rule: a signal may come while a
    renewal is between its two files too (a stray ``kill -HUP``, a log
    rotation's), and the next look is ``CHECK_INTERVAL`` after it.  What
    makes the error is time, not the number of tries: the pair must have
    been unusable for ``CHECK_INTERVAL`` since the warning, so a SIGHUP
    a few seconds after a look's warning logs nothing more.

    ``hostname``: the hub's own name.  A certificate taken at run time
    that is not valid for it is warned of once (``name_warning``, as the
    start and ``mailhub check`` do for the one the hub starts with)."""

    def __init__(self, certificate: str, key: str, clock: Any = None, *,
                 hostname: str | None = None,
                 hostname_from: str = "[hub] hostname") -> None:
        self.certificate = certificate
        self.key = key
        self.clock = clock
        self.hostname = hostname
        self.hostname_from = hostname_from
        #: wall-clock seconds, which the files' mtimes are compared with
        self.wall: Callable[[], float] = time.time
        # the stamp before the read: a renewal during the start is looked
        # at again, not taken for the pair that was read
        began = self._began()
        self._stamp: tuple[Any, ...] = _stamp(certificate, key)
        self._pair = load_pair(certificate, key)
        self._options = _options(*self._pair)
        # the leaf last judged against ``hostname`` (DER): the start's
        # check has judged this one; each new one is judged once
        self._judged = _der(self._pair[0][0])
        self._first_seen = began[1]
        self._trusted = self._settled(self._stamp, began)
        self._looked = self._keyed = self._now()
        #: why the last ``reload()`` kept the old pair (for the SIGHUP line)
        self.failure: str | None = None
        # when (``_now()``) a look or reload could not use a changed pair
        # and only warned, or None: the next ones load the files again and,
        # if they still fail CHECK_INTERVAL after the warning, say so as an
        # error (a renewal between its two files gets that long)
        self._doubted_since: float | None = None
        # whether the pair's files could not be read for want of
        # descriptors, said already (once per spell)
        self._unreadable_said = False

    def _began(self) -> tuple[float, float]:
        """(wall clock, monotonic) before the files are read: a look held
        up after its read must not settle a stamp its read was too early
        for."""
        return self.wall(), time.monotonic()

    def _settled(self, stamp: tuple[Any, ...], began: tuple[float, float]) -> bool:
        """Whether ``stamp`` (just noted) can be trusted: the files were
        last changed ``RACY_SECONDS`` before the read began (``began``),
        or the same stamp was seen that long before.  Until then a file
        rewritten in place again within its clock tick (the key written
        after its certificate, of the same size) may keep the stamp: the
        files are loaded again at the next look (``txmailhub.filestamp``)."""
        newest = max((s[2] for s in stamp if s is not None), default=0) / 1e9
        # "seen that long ago" on the monotonic clock: a wall clock set
        # back must not keep the files loaded again at every look
        wall, now = began
        return (wall - newest >= RACY_SECONDS
                or now - self._first_seen >= RACY_SECONDS)

    def _note(self, stamp: tuple[Any, ...], began: tuple[float, float]) -> None:
        if stamp != self._stamp:
            self._stamp, self._first_seen = stamp, began[1]
        self._trusted = self._settled(stamp, began)

    def _now(self) -> float:
        if self.clock is not None:
            return self.clock.seconds()
        return time.monotonic()

    def _judge(self, leaf: Any) -> str | None:
        """What to warn of about ``leaf``, just taken, and the hub's name:
        once per certificate (a SIGHUP that loads it again says nothing),
        never for one the hub has no name to judge by.  Never stops the
        certificate from being taken: a name may be wrong on purpose for
        a while, and most sending servers do not check it."""
        if self.hostname is None:
            return None
        der = _der(leaf)
        if der == self._judged:
            return None
        self._judged = der
        try:
            return name_warning(leaf, self.certificate, self.hostname, self.hostname_from)
        except Exception:  # a warning only: a certificate OpenSSL took is served
            return None

    def getContext(self) -> Any:
        now = self._now()
        if now - self._looked >= CHECK_INTERVAL:
            self._looked = now
            if (_stamp(self.certificate, self.key) != self._stamp or not self._trusted
                    or self._doubted_since is not None):
                self._take(looked=True)
        if now - self._keyed >= TICKET_KEY_LIFETIME:
            # the same pair in a new context: OpenSSL draws new ticket
            # keys for it, and tickets sealed with the old ones are
            # answered with a full handshake
            self._options = _options(*self._pair)
            self._keyed = now
        return self._options.getContext()

    def reload(self) -> bool:
        """Take the pair on disk now; whether it was taken.  The next look
        is ``CHECK_INTERVAL`` from now: a renewal caught half-way gets that
        long to write its second file."""
        self._looked = self._now()
        return self._take(looked=False)

    def _take(self, looked: bool) -> bool:
        """``reload``; ``looked``: at a look whose stamp was not trusted
        yet, where the same pair again keeps its context (and the ticket
        keys in it) and is not logged again."""
        began = self._began()
        stamp = _stamp(self.certificate, self.key)
        try:
            chain, private_key = load_pair(self.certificate, self.key)
            if looked and self.failure is None and _same(self._pair, (chain, private_key)):
                self._note(stamp, began)
                return True
            options = _options(chain, private_key)
            options.getContext()
        except TLSFilesUnreadable as e:
            # out of descriptors: nothing is known of the files.  The stamp
            # is not noted, so each look (CHECK_INTERVAL apart, as
            # connections come) loads them again until they can be read;
            # said once per spell
            self.failure = str(e)
            if not self._unreadable_said:
                self._unreadable_said = True
                log.warn("TLS: the certificate and key cannot be read now, keeping the old "
                         "ones; they are looked at again at each TLS connection {seconds:g} "
                         "seconds apart: {why}", why=str(e), seconds=CHECK_INTERVAL)
            return False
        except Exception as e:
            self._unreadable_said = False
            self.failure = str(e)
            if self._doubted_since is None and stamp != self._stamp:
                # maybe a renewal caught between its two files: a warning,
                # and a look or SIGHUP CHECK_INTERVAL later decides.  From
                # when this look or reload began (``_looked``, which the
                # next look is timed from), not from after the read: a
                # slow read must not make that look too early to decide
                self._doubted_since = self._looked
                log.warn("TLS: the new certificate and key {state} yet, keeping the old "
                         "ones; a renewal may be writing them one after the other: they are "
                         "looked at again at the first TLS connection {seconds:g} seconds "
                         "from now, and an error is logged if they still cannot be used: "
                         "{why}", why=str(e), seconds=CHECK_INTERVAL,
                         state=("do not match" if isinstance(e, TLSKeyMismatch)
                                else "cannot be used"))
            elif (self._doubted_since is not None
                  and self._looked - self._doubted_since >= CHECK_INTERVAL):
                self._doubted_since = None
                log.error("TLS: cannot use the new certificate and key, keeping the old "
                          "ones: {why}", why=str(e))
            self._note(stamp, began)  # said once; a later change is looked at again
            return False
        self._doubted_since = None
        self._unreadable_said = False
        self._note(stamp, began)
        dropped = _names_dropped(self._pair[0][0], chain[0])
        self._pair = chain, private_key
        self._options = options
        self._keyed = self._now()
        self.failure = None
        log.info("TLS: certificate {path} loaded (expires {until:%Y-%m-%d})",
                 path=self.certificate, until=chain[0].not_valid_after_utc)
        wrong_name = self._judge(chain[0])
        if wrong_name is not None:
            log.warn("TLS: {why}", why=wrong_name)
            # the hub's name, said just now, is not said again below; a
            # wildcard that covered it is (it stood for the hub's other
            # names too: pop.example.org, smtp.example.org)
            host = _name_key(self.hostname) if self.hostname else ""
            dropped = [n for n in dropped if _name_key(n) != host]
        if dropped:
            # taken all the same (a name may have been dropped on purpose),
            # but a renewal made for the wrong name is otherwise found out
            # only when the clients that check it start to refuse TLS
            log.warn("TLS: the new certificate {path} is not valid for {names}, which the "
                     "one it replaces was valid for: clients that check the name refuse it",
                     path=self.certificate, names=", ".join(dropped))
        return True


def _name_key(name: str) -> str:
    """A host name as names are compared: no spaces around it, no final
    dot, lower case (RFC 4343)."""
    return name.strip().rstrip(".").lower()


def _der(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(cert.public_bytes(Encoding.DER))


def tls_failure(reason: Any) -> str:
    """What OpenSSL said about a failed handshake (``certificate verify
    failed``, a protocol alert) when ``reason`` (a lost connection's) is a
    TLS error, for the log and the relay's last error; "" when the
    connection merely went away."""
    if reason is None:
        return ""
    # The type itself, when there is one: ``Failure.check`` builds the
    # qualified names of the whole class hierarchy to compare strings,
    # which every closed connection (a ConnectionDone) would pay for.
    kind = getattr(reason, "type", None)
    if kind is ConnectionDone or kind is ConnectionLost:
        return ""  # every plain connection's end: no import, no walk of classes
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - TLS needs pyOpenSSL anyway
        return ""
    if isinstance(kind, type):
        if not issubclass(kind, SSL.Error):
            return _identity_failure(kind, reason.value)
    elif not reason.check(SSL.Error):
        return ""
    reasons = [part[2] for part in (reason.value.args[0] if reason.value.args else [])
               if isinstance(part, tuple) and len(part) == 3 and part[2]]
    return "; ".join(dict.fromkeys(reasons)) or reason.getErrorMessage()


def _identity_failure(kind: type, error: Any) -> str:
    """A certificate that verified but names another host: Twisted checks
    the name itself (service_identity) after OpenSSL is done, so this is
    no ``SSL.Error``.  A smarthost given by its address, or by a name its
    certificate does not list, fails so; without these words the relay's
    last error said only "TLS negotiation failed"."""
    try:
        from service_identity.exceptions import CertificateError, VerificationError
    except ImportError:  # pragma: no cover - Twisted's verification needs it
        return ""
    if issubclass(kind, CertificateError):
        return f"unusable certificate: {error}"
    if not issubclass(kind, VerificationError):
        return ""
    names = []
    addresses = True
    for mismatch in getattr(error, "errors", ()):
        ident = getattr(mismatch, "mismatched_id", None)
        addresses = addresses and getattr(ident, "ip", None) is not None
        name = getattr(ident, "hostname", None) or getattr(ident, "ip", None) or ident
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if name is not None:
            names.append(str(name))
    if not names:
        return "certificate name mismatch"
    said = f"the certificate is not valid for {' or '.join(dict.fromkeys(names))}"
    if addresses:
        # only a verified next hop is checked, and only a smarthost is
        # verified (smarthost_tls = "verify", the default): one given by
        # its address, which few certificates list -- say the two ways out
        said += ("; a smarthost given by its address seldom passes: set [relay] smarthost "
                 "to the name its certificate lists, or smarthost_tls = \"opportunistic\" "
                 "if the network to it is trusted (docs/relay.rst)")
    return said


def handshake_pending(transport: Any) -> bool:
    """Whether ``transport`` is TLS whose handshake has not finished (a
    reply written now would wait for it: a client that stalls there gets
    its connection cut, not a polite close)."""
    try:
        # the client's Finished: it always comes last on our side (our own
        # goes out in TLS 1.3's first reply, before the client has done)
        finished = transport.getHandle().get_peer_finished
    except Exception:  # plain TCP, a test transport: no TLS
        return False
    try:
        return finished() is None
    except Exception:
        return False


def tls_details(transport: Any) -> tuple[str, str] | None:
    """The TLS version and cipher of ``transport``'s session (``("TLSv1.3",
    "TLS_AES_256_GCM_SHA384")``), or None when it has none (yet): what a
    Received field and the log lines name."""
    try:
        conn = transport.getHandle()
        version = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name()
    except Exception:
        return None
    if not version or not cipher:
        return None
    return str(version), str(cipher)
