"""txmailhub.relay.client_tls: the smarthost's certificate judged in a real
TLS handshake (OpenSSL on both sides, in memory: no socket, no clock).

The wrapper replaces the verify callback ``optionsForClientTLS`` installs;
these pin down that OpenSSL's verdict on the chain still counts at every
depth, that the name is checked as Twisted checks it (SAN DNS, SAN IP,
wildcards, IDN), and that SNI and the context are Twisted's."""

from __future__ import annotations

import datetime
import ipaddress
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet import ssl

from txmailhub.relay.client_tls import verified_client_tls
from txmailhub.tls import tls_failure

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool = False, dns=(), ips=(),
          uris=(), start=NOW - DAY, end=NOW + 30 * DAY, eku=None):
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    names = ([x509.DNSName(d) for d in dns]
             + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
             + [x509.UniformResourceIdentifier(u) for u in uris])
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


ROOT_KEY, OTHER_KEY, INTER_KEY, LEAF_KEY = _key(), _key(), _key(), _key()
ROOT = _cert("Test Root", ROOT_KEY, "Test Root", ROOT_KEY, ca=True)
OTHER_ROOT = _cert("Other Root", OTHER_KEY, "Other Root", OTHER_KEY, ca=True)
TRUST = ssl.Certificate.loadPEM(ROOT.public_bytes(serialization.Encoding.PEM))


def _leaf(**kw):
    return _cert("leaf", LEAF_KEY, "Test Root", ROOT_KEY, **kw)


class _Protocol:
    """What the creator is given: the TLS protocol, told why verification failed."""

    def __init__(self) -> None:
        self.reason = None
        self.factory = SimpleNamespace(wrappedFactory=None)  # no ALPN asked for

    def failVerification(self, reason) -> None:  # Twisted's name
        self.reason = reason


def _finished(client) -> bool:
    """Whether ``client``'s handshake is over."""
    try:
        return client.get_peer_finished() is not None
    except SSL.Error:
        return False


def _pump(client, server) -> tuple:
    """Handshake ``client`` with ``server`` over their memory BIOs, ten
    rounds at most: (the client's error, the server's last one), the
    client's ending it, a server's not (its alert still goes to the
    client); (None, None) when it ended well."""
    server_error = None
    for _ in range(10):
        for side, other in ((client, server), (server, client)):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                if side is client:
                    return e, server_error
                server_error = e
            try:
                other.bio_write(side.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
        if _finished(client):
            break
    return None, server_error


class Handshake:
    """A server presenting ``chain`` (leaf first) and the relay's client for
    ``host``, handshaking over memory BIOs until one side gives up."""

    def __init__(self, host: str, chain: list, trust=TRUST, highest: int = 0) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        if highest:
            context.set_max_proto_version(highest)
            context.set_min_proto_version(SSL.TLS1_VERSION)
            context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # the server would do TLS 1.1
        context.use_certificate(chain[0])
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(LEAF_KEY)
        self.sni: list = []
        context.set_tlsext_servername_callback(lambda c: self.sni.append(c.get_servername()))
        server = SSL.Connection(context, None)
        server.set_accept_state()
        self.protocol = _Protocol()
        self.creator = verified_client_tls(host, trust)
        client = self.client = self.creator.clientConnectionForTLS(self.protocol)
        client.set_connect_state()
        self.error, self.server_error = _pump(client, server)
        if not self.done and self.error is None and self.server_error is None:
            raise AssertionError("the handshake neither ended nor failed")

    @property
    def done(self) -> bool:
        return _finished(self.client) and self.error is None

    @property
    def refusal(self) -> str:
        """The words the relay records (tls_failure of the lost connection's reason)."""
        from twisted.python.failure import Failure

        reason = self.protocol.reason or Failure(self.error)
        return tls_failure(reason)


@pytest.mark.parametrize(("host", "names"), [
    ("localhost", dict(dns=["localhost"])),
    ("LocalHost", dict(dns=["LOCALHOST"])),
    ("127.0.0.1", dict(ips=["127.0.0.1"])),  # an address-literal smarthost
    ("::1", dict(ips=["::1"])),
    ("smtp.example.test", dict(dns=["*.example.test"])),
    ("bücher.example", dict(dns=["xn--bcher-kva.example"])),  # IDNA2008 A-label
    ("faß.example", dict(dns=["xn--fa-hia.example"])),  # not IDNA2003's fass
])
def test_a_trusted_certificate_that_names_the_host_passes(host, names):
    shake = Handshake(host, [_leaf(**names)])
    assert shake.done and shake.protocol.reason is None


def test_sni_is_twisteds():
    # the server is told the A-label name, and nothing for an address
    shake = Handshake("bücher.example", [_leaf(dns=["xn--bcher-kva.example"])])
    assert shake.sni == [b"xn--bcher-kva.example"]
    assert Handshake("127.0.0.1", [_leaf(ips=["127.0.0.1"])]).sni == [None]


@pytest.mark.parametrize(("highest", "negotiated"), [
    (SSL.TLS1_3_VERSION, "TLSv1.3"), (SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_1_VERSION, None),
])
def test_the_protocol_versions_are_twisteds(highest, negotiated):
    # TLS 1.2 at least (the relay's own floor: see the tests at the end)
    shake = Handshake("localhost", [_leaf(dns=["localhost"])], highest=highest)
    if negotiated is None:
        assert not shake.done and shake.protocol.reason is None
    else:
        assert shake.done and shake.client.get_protocol_version_name() == negotiated


INTER = _cert("Test Inter", INTER_KEY, "Test Root", ROOT_KEY, ca=True)


@pytest.mark.parametrize("chain", [
    "self-signed", "other root, leaf alone", "other root sent along", "expired leaf",
    "leaf not yet valid", "intermediate missing", "issuer no CA", "expired intermediate",
    "client-only usage",
])
def test_openssls_verdict_on_the_chain_still_counts_at_every_depth(chain):
    # the replaced callback judges the name only: a chain OpenSSL refuses,
    # at the leaf (depth 0) or above it, is refused although the name is right
    name = dict(dns=["localhost"])
    leaf_of = {
        "self-signed": lambda: [_cert("localhost", LEAF_KEY, "localhost", LEAF_KEY, ca=True,
                                      **name)],
        "other root, leaf alone": lambda: [_cert("leaf", LEAF_KEY, "Other Root", OTHER_KEY,
                                                 **name)],
        "other root sent along": lambda: [_cert("leaf", LEAF_KEY, "Other Root", OTHER_KEY,
                                                **name), OTHER_ROOT],
        "expired leaf": lambda: [_leaf(start=NOW - 10 * DAY, end=NOW - DAY, **name)],
        "leaf not yet valid": lambda: [_leaf(start=NOW + DAY, end=NOW + 10 * DAY, **name)],
        "intermediate missing": lambda: [_cert("leaf", LEAF_KEY, "Test Inter", INTER_KEY,
                                               **name)],
        "issuer no CA": lambda: [
            _cert("leaf", LEAF_KEY, "No CA", INTER_KEY, **name),
            _cert("No CA", INTER_KEY, "Test Root", ROOT_KEY)],
        "expired intermediate": lambda: [
            _cert("leaf", LEAF_KEY, "Test Inter", INTER_KEY, **name),
            _cert("Test Inter", INTER_KEY, "Test Root", ROOT_KEY, ca=True,
                  start=NOW - 10 * DAY, end=NOW - DAY)],
        "client-only usage": lambda: [_leaf(eku=[ExtendedKeyUsageOID.CLIENT_AUTH], **name)],
    }
    shake = Handshake("localhost", leaf_of[chain]())
    assert not shake.done
    assert shake.refusal == "certificate verify failed"
    # and the chain through an intermediate that is there passes
    good = Handshake("localhost", [_cert("leaf", LEAF_KEY, "Test Inter", INTER_KEY, **name),
                                   INTER])
    assert good.done


BY_IP = ("; a smarthost given by its address seldom passes: set [relay] smarthost to the name "
         'its certificate lists, or smarthost_tls = "opportunistic" if the network to it is '
         "trusted (docs/relay.rst)")


@pytest.mark.parametrize(("host", "names", "said"), [
    ("localhost", dict(dns=["other.example"]), "the certificate is not valid for localhost"),
    ("a.smtp.example.test", dict(dns=["*.example.test"]),
     "the certificate is not valid for a.smtp.example.test"),
    ("example.test", dict(dns=["*.example.test"]), "the certificate is not valid for example.test"),
    # an address: with the ways out (a name, or "opportunistic")
    ("127.0.0.1", dict(dns=["localhost"]), "the certificate is not valid for 127.0.0.1" + BY_IP),
    ("127.0.0.1", dict(ips=["127.0.0.2"]), "the certificate is not valid for 127.0.0.1" + BY_IP),
    ("faß.example", dict(dns=["fass.example"]), "the certificate is not valid for "
                                                 "xn--fa-hia.example"),
    ("localhost", {}, "unusable certificate: Certificate does not contain any `subjectAltName`s."),
    ("127.0.0.1", dict(dns=["127.0.0.1"]), "unusable certificate: Invalid DNS pattern "
                                           "b'127.0.0.1'."),
])
def test_a_certificate_for_another_name_is_refused(host, names, said):
    shake = Handshake(host, [_leaf(**names)])
    assert not shake.done and shake.refusal == said


def test_an_expired_leaf_for_another_name_is_refused_for_either():
    shake = Handshake("localhost", [_leaf(dns=["other.example"], start=NOW - 10 * DAY,
                                          end=NOW - DAY)])
    assert not shake.done and shake.refusal == "the certificate is not valid for localhost"



def test_a_name_service_identity_fails_on_refuses_the_certificate_and_says_so():
    # service_identity raises ValueError (not CertificateError) on a URI
    # name with a port.  Twisted's own check logs that and lets the
    # certificate pass for any host; raised from the replaced callback it
    # was dropped by pyOpenSSL, and the refusal read "certificate verify
    # failed", the words of an untrusted chain
    shake = Handshake("localhost", [_leaf(dns=["localhost"], uris=["smtp://localhost:25"])])
    assert not shake.done
    assert shake.refusal == ("unusable certificate: its names cannot be read "
                             "(ValueError: too many values to unpack (expected 2))")


def test_an_idn_smarthost_with_capitals_is_checked_by_its_a_labels():
    # optionsForClientTLS("Bücher.example") raised InvalidCodepoint (Twisted
    # encodes by IDNA2008 without the UTS 46 mapping): every delivery to
    # such a smarthost ended as "451 4.3.0 local error while delivering"
    shake = Handshake("Bücher.Example", [_leaf(dns=["xn--bcher-kva.example"])])
    assert shake.done and shake.sni == [b"xn--bcher-kva.example"]
    refused = Handshake("Bücher.example", [_leaf(dns=["bucher.example"])])
    assert refused.refusal == "the certificate is not valid for xn--bcher-kva.example"


@pytest.mark.parametrize(("host", "dns", "sni"), [
    ("smtp.example.test.", "smtp.example.test", b"smtp.example.test"),
    ("bücher.example.", "xn--bcher-kva.example", b"xn--bcher-kva.example"),
])
def test_a_smarthost_written_with_a_final_dot_is_checked_without_it(host, dns, sni):
    # "smtp.example.test.:587" is a name [relay] smarthost takes (the root
    # spelled out); no certificate holds the final dot and SNI is sent
    # without it (RFC 6066 3): with it, every handshake under "verify"
    # failed with "not valid for smtp.example.test."
    shake = Handshake(host, [_leaf(dns=[dns])])
    assert shake.done and shake.protocol.reason is None
    assert shake.sni == [sni]


@pytest.mark.parametrize(("written", "names", "sni"), [
    ("smtp.example.test:587", dict(dns=["smtp.example.test"]), b"smtp.example.test"),
    ("smtp.example.test.:587", dict(dns=["smtp.example.test"]), b"smtp.example.test"),
    ("[smtp.example.test]:587", dict(dns=["smtp.example.test"]), b"smtp.example.test"),
    ("[smtp.example.test.]:587", dict(dns=["smtp.example.test"]), b"smtp.example.test"),
    ("Bücher.example:587", dict(dns=["xn--bcher-kva.example"]), b"xn--bcher-kva.example"),
    ("xn--bcher-kva.example:587", dict(dns=["xn--bcher-kva.example"]),
     b"xn--bcher-kva.example"),
    ("127.0.0.1:587", dict(ips=["127.0.0.1"]), None),
    ("[127.0.0.1]:587", dict(ips=["127.0.0.1"]), None),
    ("127.000.000.001:587", dict(ips=["127.0.0.1"]), None),
    ("[::1]:587", dict(ips=["::1"]), None),
    ("[IPv6:0:0::1]:587", dict(ips=["::1"]), None),
    # the resolver's shorthands of 127.0.0.1, which it connects to with no
    # lookup: they went out as SNI (RFC 6066 3: never an address) and were
    # looked for in the certificate as host names -- "2130706433" was none
    # to service_identity at all, a local error at every attempt
    ("127.1:587", dict(ips=["127.0.0.1"]), None),
    ("2130706433:587", dict(ips=["127.0.0.1"]), None),
    ("0x7f.0.0.1:587", dict(ips=["127.0.0.1"]), None),
    # an IPv4-mapped IPv6 address reaches the IPv4 host, whose certificate
    # names its IPv4 address: the IPv6 form matched none
    ("[::ffff:127.0.0.1]:587", dict(ips=["127.0.0.1"]), None),
    ("[IPv6:::ffff:7f00:1]:587", dict(ips=["127.0.0.1"]), None),
])
def test_every_smarthost_spelling_is_checked_by_its_name_and_never_sent_an_address(
        written, names, sni):
    # what config.split_smarthost makes of the setting is what the relay's
    # verifying client gets (relay.attempt: tls_options(host, True))
    from txmailhub.config import split_smarthost

    host, _ = split_smarthost(written)
    shake = Handshake(host, [_leaf(**names)])
    assert shake.done and shake.protocol.reason is None
    assert shake.sni == [sni]


# --- the version floor of the relay's client (RFC 8996: no TLS 1.0 or 1.1) -----


def _client_handshake(creator, server_versions: tuple[int, int]) -> str | None:
    """A handshake of ``creator``'s client with a server that speaks only
    ``server_versions`` (lowest, highest), both sides at OpenSSL's lowest
    security level with every cipher: only a version floor can refuse it.
    None when it succeeds, else the client's error."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(server_versions[0])
    context.set_max_proto_version(server_versions[1])
    context.set_cipher_list(b"ALL:@SECLEVEL=0")
    context.use_certificate(_leaf(dns=["localhost"]))
    context.use_privatekey(LEAF_KEY)
    server = SSL.Connection(context, None)
    server.set_accept_state()
    client = creator.clientConnectionForTLS(_Protocol())
    client.set_connect_state()
    error, _ = _pump(client, server)
    if error is not None:
        return str(error)
    return None if _finished(client) else "no handshake"


def _creators(monkeypatch):
    """The relay's two client contexts, made as if Twisted's default
    floor were TLS 1.0 (as it was before Twisted 22.8) and at OpenSSL's
    lowest security level: OpenSSL 3's default level refuses TLS 1.0 and
    1.1 by itself, and so does Twisted's default today; neither is what
    must refuse them, but the floor the relay sets."""
    from txmailhub.relay.attempt import DeliveryAgent

    monkeypatch.setattr(ssl.CertificateOptions, "_defaultMinimumTLSVersion",
                        ssl.TLSVersion.TLSv1_0)
    made = ssl.CertificateOptions._makeContext

    def lowered(self, *args, **kw):
        context = made(self, *args, **kw)
        context.set_cipher_list(b"ALL:@SECLEVEL=0")
        return context

    monkeypatch.setattr(ssl.CertificateOptions, "_makeContext", lowered)
    # what the relay's delivery agent uses, for a smarthost under "verify"
    # and for opportunistic TLS (an MX host)
    agent = SimpleNamespace(trust_root=TRUST)
    return {kind: DeliveryAgent._default_tls_options(agent, "localhost", kind == "verify")
            for kind in ("verify", "opportunistic")}


@pytest.mark.parametrize("kind", ["verify", "opportunistic"])
@pytest.mark.parametrize("version", [SSL.TLS1_VERSION, SSL.TLS1_1_VERSION],
                         ids=["TLSv1.0", "TLSv1.1"])
def test_the_relay_never_speaks_tls_before_1_2(monkeypatch, kind, version):
    # RFC 8996: TLS 1.0 and 1.1 MUST NOT be used.  The floor is the
    # relay's own, not Twisted's default nor OpenSSL's security level
    why = _client_handshake(_creators(monkeypatch)[kind], (version, version))
    # the client offers 1.2 at least, and the server says it has none of it
    assert why is not None and "alert protocol version" in why, why


@pytest.mark.parametrize("kind", ["verify", "opportunistic"])
def test_the_relay_speaks_tls_1_2_and_1_3(monkeypatch, kind):
    # the same handshake, the server allowed TLS 1.2: the refusal above is
    # the version's
    creators = _creators(monkeypatch)
    assert _client_handshake(creators[kind], (SSL.TLS1_VERSION, SSL.TLS1_2_VERSION)) is None
    creators = _creators(monkeypatch)
    assert _client_handshake(creators[kind], (SSL.TLS1_3_VERSION, 0)) is None
