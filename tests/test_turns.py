"""FairTurns on its own: the count of waiting jobs, a job that fails, and
the rotation, with jobs held open by hand (no reactor, no threads)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txmailhub.turns import FairTurns


def held(turns: FairTurns, client: str, started: list[str]) -> Deferred:
    """Queue a job for ``client`` that records its start and ends when the
    Deferred it returned (the last of ``started``' jobs) fires."""
    gates: list[Deferred] = []

    def job() -> Deferred:
        started.append(client)
        gate: Deferred = Deferred()
        gates.append(gate)
        return gate

    d = turns.run(client, job)
    d.gates = gates  # type: ignore[attr-defined]
    return d


def test_waiting_counts_the_jobs_not_started_yet() -> None:
    turns = FairTurns(1)
    started: list[str] = []
    jobs = [held(turns, c, started) for c in ("a", "a", "a", "b")]
    assert turns.running == 1 and turns.waiting == 3
    jobs[0].gates[0].callback(None)  # type: ignore[attr-defined]
    assert turns.running == 1 and turns.waiting == 2
    jobs[1].gates[0].callback(None)  # type: ignore[attr-defined]
    assert turns.running == 1 and turns.waiting == 1
    assert started == ["a", "a", "b"]  # b's turn before a's third job


def test_a_job_that_fails_errbacks_its_caller_and_frees_its_place() -> None:
    turns = FairTurns(1)
    results: list[object] = []

    def broken() -> None:
        raise ValueError("scrypt went wrong")

    turns.run("a", broken).addBoth(results.append)
    turns.run("b", lambda x: x * 2, 21).addBoth(results.append)
    assert isinstance(results[0], Failure) and results[0].check(ValueError)
    assert results[1] == 42
    assert turns.running == 0 and turns.waiting == 0


def test_the_rotation_serves_each_client_once_a_round() -> None:
    turns = FairTurns(1)
    started: list[str] = []
    jobs = [held(turns, c, started) for c in ("a", "a", "a", "b", "c", "c")]
    while not all(d.called for d in jobs):
        next(g for d in jobs for g in d.gates if not g.called).callback(None)  # type: ignore[attr-defined]
    # a1 started at once, so a2 (queued first) is first in the rotation
    assert started == ["a", "a", "b", "c", "a", "c"]


def test_jobs_that_end_at_once_start_the_next_in_a_loop_not_nested() -> None:
    # a held job, then thousands that end as they start (checks skipped for
    # clients that left): releasing the first must not recurse once a job
    turns = FairTurns(1)
    started: list[str] = []
    first = held(turns, "a", started)
    done: list[object] = []
    for n in range(5000):
        turns.run(f"c{n % 300}", lambda: None).addBoth(done.append)
    first.gates[0].callback(None)  # type: ignore[attr-defined]
    assert done == [None] * 5000
    assert turns.running == 0 and turns.waiting == 0
