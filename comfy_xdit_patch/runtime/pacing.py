"""Keeps rank 0's host thread a few collectives ahead of its GPU, never more, so that a dead or stuck helper can
always be noticed.

Without a bound, ComfyUI's thread queues a whole step of kernels. When a helper dies, rank 0's stream stops behind an
NCCL kernel that waits for the dead peer, the launch queue fills, and the next kernel launch blocks inside the CUDA
driver while holding Python's GIL: no other thread can run Python, so the process-group abort that would free the
stream cannot run either (measured on 2×H200, docs/benchmarks.md). With the pacer, the thread waits for the GPU only
in short sleeps that release the GIL, checks for a failed helper between them, and gives up after the collective
timeout.

The bound costs nothing while the GPU is busy: a few blocks of queued work keep it fed.
"""
import collections
import time


class CollectiveStalled(RuntimeError):
    """A collective did not complete in time, or a helper failed while rank 0 waited for one."""


class LaunchPacer:
    """``failure()`` returns why the helpers can no longer be used, or None. ``make_event()`` returns a recorded
    device event (``torch.cuda.Event`` after ``record()``); on devices whose collectives block the host (gloo on the
    CPU) there is nothing to pace and ``make_event`` is None. ``capturing()`` says whether the thread is recording a
    CUDA graph, where nothing can be waited for."""

    def __init__(self, failure, timeout_s, make_event=None, capturing=lambda: False, depth=4, poll_s=1e-4):
        self.failure = failure
        self.capturing = capturing
        self.timeout_s = timeout_s
        self.make_event = make_event
        self.depth = depth
        self.poll_s = poll_s
        self.pending = collections.deque()

    def mark(self):
        """After rank 0 issued a collective: wait until the GPU has reached the one ``depth`` collectives back."""
        if self.make_event is None or self.capturing():
            return
        self.pending.append(self.make_event())
        while len(self.pending) > self.depth:
            self._wait(self.pending.popleft())

    def drain(self):
        """At the end of a step: wait until all of it ran on the device."""
        if self.make_event is None:
            self._check()
            return
        self.pending.clear()
        self._wait(self.make_event())

    def reset(self):
        self.pending.clear()

    def _check(self):
        reason = self.failure()
        if reason:
            self.pending.clear()
            raise CollectiveStalled(reason)

    def _wait(self, event):
        if event.query():
            return
        deadline = time.monotonic() + self.timeout_s
        while not event.query():
            self._check()
            if time.monotonic() > deadline:
                self.pending.clear()
                raise CollectiveStalled(f"a collective did not complete within {self.timeout_s:.0f} s (a helper is "
                                        "stuck; COMFY_XDIT_COLLECTIVE_TIMEOUT sets this bound)")
            time.sleep(self.poll_s)
