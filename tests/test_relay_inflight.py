"""Attempt markers (txmailhub.relay.inflight) that cannot be made."""

from __future__ import annotations

import os

import pytest

from txmailhub.relay import inflight

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")


def test_a_marker_that_cannot_be_renamed_into_place_leaves_nothing_behind(tmp_path):
    # something that is not a marker (here a folder an admin made) sits
    # where the marker goes: no marker, the attempt runs without one, and
    # neither the half-made file nor its descriptor is left over
    directory = str(tmp_path)
    os.mkdir(inflight.marker_path(directory, "Q1"))
    held = set(inflight._held)
    assert inflight.mark(directory, "Q1", 5.0) is None
    assert sorted(os.listdir(directory)) == [".Q1" + inflight.SUFFIX]
    assert inflight._held == held
    assert inflight.since(directory, "Q1") is None
    # and a later attempt, the folder gone, gets its marker
    os.rmdir(inflight.marker_path(directory, "Q1"))
    fd = inflight.mark(directory, "Q1", 6.0)
    assert fd is not None
    try:
        assert inflight.since(directory, "Q1") == 6.0
    finally:
        inflight.unmark(directory, "Q1", fd)
    assert os.listdir(directory) == []
