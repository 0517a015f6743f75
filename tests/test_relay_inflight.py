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


def test_the_end_of_an_attempt_in_a_forked_child_closes_nothing_of_the_childs(tmp_path):
    # a child forked during an attempt closes the marker it inherits (the
    # fork hook), and its number may then be another file's.  Should the
    # attempt's end run in the child (its copy of the hub's objects: a
    # collected generator's ``finally``), ``unmark`` closed that file under
    # the child -- or, the marker opened again by that number (a ``queue
    # list`` of the child's own), removed the parent's marker
    directory = str(tmp_path)
    fd = inflight.mark(directory, "Q1", 5.0)
    assert fd is not None
    marker = inflight.marker_path(directory, "Q1")
    try:
        # the child's side of a fork, as ``os.register_at_fork`` runs it
        inflight._held_lock.acquire()
        inflight._close_in_child()
        assert inflight._held == set()
        # the number is the marker's again: opened by the child for itself
        again = os.open(marker, os.O_RDONLY)
        if again != fd:
            os.dup2(again, fd)
            os.close(again)
        inflight.unmark(directory, "Q1", fd)
        os.fstat(fd)  # still open: the child's own
        assert os.path.exists(marker)  # the parent's marker stays
    finally:
        os.close(fd)
