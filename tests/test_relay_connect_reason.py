"""Why a connection was not made, in the words the kept error uses."""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure

from txmailhub.relay.connect_reason import reason
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
