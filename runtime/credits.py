"""The learner service's back-pressure, as credits: sequences asked of the actors and not yet
handed to an update.

    credits = Credits(cap)
    if credits.reserve(num_envs):     # before a rollout call: room for its sequences?
        worker.rollout.remote()
    credits.release(n)                # a batch handed to the update, stale sequences dropped,
                                      # or a rollout lost with its actor

A rollout call is issued only while the sequences ahead of the update stay within the cap, so no
rollout starts (and fetches weights) long before the learner reaches it. Every sequence reserved
is released exactly once, by whichever of the three ends it meets. Thread-safe: the loader thread
reserves and releases, the update thread releases.
"""
import threading


class Credits:
    def __init__(self, cap):
        if cap < 1:
            raise ValueError(f"credits: the cap must be at least 1 sequence, got {cap}")
        self.cap, self.used = cap, 0
        self._lock = threading.Lock()

    def reserve(self, n):
        """Take n credits if they fit under the cap; returns whether they did."""
        with self._lock:
            if self.used + n > self.cap:
                return False
            self.used += n
            return True

    def release(self, n):
        """Give back n credits; more than were reserved is a bookkeeping bug, raised at once."""
        with self._lock:
            if n < 0 or n > self.used:
                raise RuntimeError(f"credits: releasing {n} of {self.used} in use (a sequence released twice?)")
            self.used -= n
