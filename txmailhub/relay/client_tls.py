"""The relay's verifying TLS client: the next hop's certificate must name it.

Twisted's ``optionsForClientTLS`` checks the name with service_identity
in OpenSSL's verify callback, but ends the handshake only on a
``VerificationError`` (a certificate for another name).  A certificate
that names no host at all -- no subjectAltName -- makes service_identity
raise ``CertificateError`` instead, which Twisted logs ("while verifying
certificate") and then lets the handshake go on as if the name had
matched: under ``smarthost_tls = "verify"`` such a certificate from a
trusted CA passed for any smarthost.

``verified_client_tls`` keeps everything ``optionsForClientTLS`` sets up
(trust, SNI, ciphers) and replaces only that callback with one
that ends the handshake on either error, the error being the reason the
connection was lost (``txmailhub.tls.tls_failure`` words it).  Any other
error of the name check (service_identity's ``ValueError`` on a URI name
with a port, say) ends it too, as a ``CertificateError`` that says so.

Both of the relay's client contexts -- this one and the unverified one of
opportunistic TLS (``opportunistic_client_tls``) -- have TLS 1.2 as their
floor, set here (``CLIENT_TLS_FLOOR``) rather than left to Twisted's
default: RFC 8996 says TLS 1.0 and 1.1 MUST NOT be used, as the hub's
servers already refuse them (``txmailhub.tls``).  A next hop that speaks
nothing newer then fails the handshake, and the relay does what it does
for any failed handshake (docs/relay.rst, "TLS policy").
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from service_identity.exceptions import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.address import ascii_domain

__all__ = ["CLIENT_TLS_FLOOR", "opportunistic_client_tls", "verified_client_tls"]

#: the oldest TLS version the relay speaks to a next hop (RFC 8996)
CLIENT_TLS_FLOOR = ssl.TLSVersion.TLSv1_2


def opportunistic_client_tls() -> ssl.CertificateOptions:
    """The relay's TLS client for an MX host (and a smarthost under
    ``"opportunistic"``): no certificate check, TLS 1.2 at least."""
    return ssl.CertificateOptions(raiseMinimumTo=CLIENT_TLS_FLOOR)


def verified_client_tls(host: str, trust_root: Any = None) -> IOpenSSLClientConnectionCreator:
    """What ``optionsForClientTLS(host, trustRoot=trust_root)`` gives, but
    a certificate that names no host ends the handshake too.

    A name goes to Twisted in its A-labels (``ascii_domain``: IDNA2008
    after the UTS 46 mapping), as the name check has it: Twisted's own
    strict IDNA2008 encoding refuses a capital in a non-ASCII label
    (``Bücher.example``), and every delivery to such a smarthost was a
    "local error" retried for good.  Without a final dot: a smarthost may
    be written with one (``smtp.example.net.``, the root spelled out), but
    no certificate names a host so, and SNI carries the name without it
    (RFC 6066 3) -- with it, no certificate ever matched."""
    if isIPAddress(host) or isIPv6Address(host):
        name = host
    else:
        name = ascii_domain(host[:-1] if host.endswith(".") else host)
    options = ssl.optionsForClientTLS(
        name, trustRoot=trust_root, extraCertificateOptions={"raiseMinimumTo": CLIENT_TLS_FLOOR})
    return _NamesChecked(options, name)


@implementer(IOpenSSLClientConnectionCreator)
class _NamesChecked:
    def __init__(self, inner: Any, host: str) -> None:
        self._inner = inner
        self._host = host

    def _ident(self) -> Any:
        """The name to find in the certificate, as the inner check has it:
        an address, or a DNS name in its ASCII form (A-labels)."""
        if isIPAddress(self._host) or isIPv6Address(self._host):
            return IPAddress_ID(self._host)
        return DNS_ID(ascii_domain(self._host))

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tls_protocol)
        ident = self._ident()
        # the protocol owns the connection: no reference back from the
        # callback once the leaf certificate is judged
        owner = [tls_protocol]

        def verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            if depth != 0 or not owner:
                return bool(ok)  # the chain is OpenSSL's to judge
            try:
                verify_service_identity(extract_patterns(cert), [ident], [])
            except (VerificationError, CertificateError):
                owner.pop().failVerification(Failure())
                return False
            except Exception as e:
                # service_identity failing on a name it does not parse (a
                # URI with a port: ValueError).  Refused, and said: raised
                # from here it would be lost (pyOpenSSL drops what a
                # connection's own verify callback raises) and the
                # handshake read "certificate verify failed", the words of
                # an untrusted chain.  Twisted's own check logs it and lets
                # the certificate pass for any name.
                why = CertificateError(f"its names cannot be read ({type(e).__name__}: {e})")
                owner.pop().failVerification(Failure(why))
                return False
            owner.clear()
            return bool(ok)

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection
