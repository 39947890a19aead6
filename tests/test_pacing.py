"""The launch pacer (runtime/pacing.py) keeps rank 0's thread a bounded number of collectives ahead of its GPU and
gives up on a failed or stuck helper. The device events are stood in for by events that complete after a number of
polls, so the policy is checked without a GPU; the GPU run of ``evidence kill`` / ``evidence stall`` checks the rest."""
import time

import pytest

from comfy_xdit_patch.runtime.pacing import CollectiveStalled, LaunchPacer


class Event:
    """Completes once the device has run ``work`` more polls' worth (``None``: never)."""

    def __init__(self, clock, work):
        self.clock, self.due = clock, None if work is None else clock["polls"] + work

    def query(self):
        self.clock["polls"] += 1
        return self.due is not None and self.clock["polls"] >= self.due


def pacer(work=1, failure=lambda: None, timeout_s=5.0, depth=4, capturing=lambda: False):
    clock = {"polls": 0}
    made = []

    def make_event():
        made.append(Event(clock, work))
        return made[-1]
    return LaunchPacer(failure, timeout_s, make_event, capturing, depth=depth, poll_s=1e-4), made


def test_the_thread_runs_at_most_depth_collectives_ahead():
    paced, made = pacer(work=3, depth=2)
    for _ in range(6):
        paced.mark()
        assert len(paced.pending) <= 2
    # every event but the last two was waited for until its work was done
    assert all(e.query() for e in made[:-2])


def test_a_failed_helper_ends_the_wait_with_its_reason():
    reason = {"text": None}
    paced, _ = pacer(work=None, depth=1, failure=lambda: reason["text"])
    paced.mark()
    reason["text"] = "helper rank 1 exited with code -9"
    with pytest.raises(CollectiveStalled, match="exited with code -9"):
        paced.mark()
    assert not paced.pending


def test_a_collective_that_never_completes_ends_at_the_timeout():
    paced, _ = pacer(work=None, depth=1, timeout_s=0.2)
    paced.mark()
    start = time.monotonic()
    with pytest.raises(CollectiveStalled, match="within 0 s|COMFY_XDIT_COLLECTIVE_TIMEOUT"):
        paced.mark()
    assert 0.15 < time.monotonic() - start < 2


def test_drain_waits_for_the_whole_step_and_reports_a_failure():
    paced, made = pacer(work=5)
    paced.mark()
    paced.drain()
    assert made[-1].query() and not paced.pending
    stuck, _ = pacer(work=None, failure=lambda: "helper rank 1 exited with code 1")
    with pytest.raises(CollectiveStalled, match="code 1"):
        stuck.drain()


def test_nothing_is_recorded_while_a_cuda_graph_is_captured():
    paced, made = pacer(capturing=lambda: True)
    paced.mark()
    assert not made and not paced.pending


def test_without_device_events_only_failures_are_checked():
    paced = LaunchPacer(lambda: None, 1.0)
    paced.mark()
    paced.drain()
    with pytest.raises(CollectiveStalled, match="gone"):
        LaunchPacer(lambda: "gone", 1.0).drain()
