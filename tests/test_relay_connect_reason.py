"""Why a connection was not made, in the words the kept error uses."""

from __future__ import annotations

import errno

import pytest
from twisted.internet import error
from twisted.python.failure import Failure

from txmailhub.relay.connect_reason import most_telling, reason
from txmailhub.relay.hostname import NoAddressConnected


def test_an_unknown_twisted_error_is_its_description_without_markup():
    # Twisted's docstrings are epytext: no "C{Exception}" in a notice
    words = reason(error.ConnectingCancelledError(None))
    assert words.startswith("an Exception that will be raised when an IStreamClientEndpoint")
    assert "{" not in words and len(words) <= 100


def test_an_error_without_a_docstring_is_its_class_name():
    class Odd(Exception):
        pass

    Odd.__doc__ = None
    assert reason(Odd("/some/path")) == "Odd"


def test_a_name_none_of_whose_addresses_connected_says_the_telling_reason():
    refused = Failure(error.ConnectionRefusedError())
    timed_out = Failure(error.TimeoutError())
    assert reason(NoAddressConnected("x", [timed_out, refused])) == "connection refused"
    assert reason(NoAddressConnected("x", [timed_out, timed_out])) == "timed out"
    assert reason(NoAddressConnected("x", [])) == "an error occurred while connecting"


def test_a_refusal_after_a_timeout_is_named_by_a_name_too():
    # the first that got an answer, not the last started
    refused = Failure(error.ConnectionRefusedError())
    timed_out = Failure(error.TCPTimedOutError())
    assert reason(NoAddressConnected("x", [refused, timed_out])) == "connection refused"


def test_most_telling_skips_timeouts_and_unknowns_else_takes_the_first():
    refused, timed_out = error.ConnectionRefusedError(), error.TimeoutError()
    assert most_telling([timed_out, None, refused]) == 2
    assert most_telling([None, timed_out]) == 0
    assert most_telling([timed_out, error.TCPTimedOutError()]) == 0


@pytest.mark.parametrize(("number", "words"), [
    (errno.ECONNREFUSED, "connection refused"),
    (errno.ETIMEDOUT, "timed out"),
    (errno.EHOSTUNREACH, "no route to host"),
    (errno.ENETUNREACH, "no route to host"),
])
def test_a_plain_connect_error_is_named_by_its_errno(number, words):
    assert reason(error.ConnectError(osError=number, string="x")) == words


def test_a_host_name_twisted_could_not_look_up_is_a_failed_lookup():
    assert reason(error.UnknownHostError()) == "name lookup failed"


def test_a_description_is_the_first_sentence_of_the_first_paragraph_cut_short():
    class TwoSentences(Exception):
        """TLS handshake with C{the host} failed. It said nothing more."""

    class NoFullStop(Exception):
        """Something odd happened

        Details that a notice does not need.
        """

    class Long(Exception):
        __doc__ = "x" * 300

    assert reason(TwoSentences()) == "TLS handshake with the host failed"
    assert reason(NoFullStop()) == "something odd happened"
    assert reason(Long()) == "x" * 100
