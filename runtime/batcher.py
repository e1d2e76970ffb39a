"""Rollouts in as they come, learner batches of B sequences out.

    batcher = Batcher(batch_size=32, max_policy_lag=4)
    batcher.add(rollout)                          # numpy arrays [T+1, N, ...] from a RolloutWorker
    batch, versions = batcher.take(learner_version, out=buffers)   # or None: not B sequences yet

A rollout's N sequences may be split over batches (B need not be a multiple of N, nor N of B).
Each batch is built with one copy of every array: np.concatenate straight into `out`, the
caller's (pinned) host buffers, when given. With `max_policy_lag` > 0, sequences that acted with
weights more than that many updates older than `learner_version` are dropped (counted in
`dropped`, and reported to `on_drop(n)`) instead of trained on. The keys a batch takes from a
rollout are learner.batch.rollout_keys', as for one rollout (learner.batch.from_rollout).
"""
import collections

import numpy as np
import torch

from learner.batch import rollout_keys


class Batcher:
    def __init__(self, batch_size, max_policy_lag=0, on_drop=None):
        self.batch_size, self.max_policy_lag, self.on_drop = batch_size, max_policy_lag, on_drop
        self.pending = collections.deque()     # [rollout, first unused sequence]
        self.dropped = 0                       # sequences dropped as too old

    def add(self, rollout):
        self.pending.append([rollout, 0])

    def rollouts(self):
        """Rollouts fetched and not yet (wholly) batched."""
        return len(self.pending)

    def sequences(self):
        return sum(r["first"].shape[1] - used for r, used in self.pending)

    def _drop_stale(self, learner_version):
        if self.max_policy_lag <= 0:
            return
        keep, dropped = collections.deque(), 0
        for rollout, used in self.pending:
            if learner_version - rollout["version"] > self.max_policy_lag:
                dropped += rollout["first"].shape[1] - used
            else:
                keep.append([rollout, used])
        self.pending = keep
        self.dropped += dropped
        if dropped and self.on_drop is not None:
            self.on_drop(dropped)

    def take(self, learner_version, out=None):
        """(batch, versions): B sequences as a dict of tensors (CPU, or `out`'s), and the weights
        version each acted with; None while fewer than B sequences are pending."""
        self._drop_stale(learner_version)
        need = self.batch_size
        if self.sequences() < need:
            return None
        parts = []
        while need:
            rollout, used = self.pending[0]
            n = min(need, rollout["first"].shape[1] - used)
            parts.append((rollout, used, used + n))
            need -= n
            if used + n == rollout["first"].shape[1]:
                self.pending.popleft()
            else:
                self.pending[0][1] = used + n
        first = parts[0][0]
        batch = {}
        for key in rollout_keys(first):
            axis = 0 if key == "stack0" else 1
            pieces = [r[key][a:b] if axis == 0 else r[key][:, a:b] for r, a, b in parts]
            if out is not None:
                np.concatenate(pieces, axis=axis, out=out[key].numpy())
                batch[key] = out[key]
            else:
                batch[key] = torch.from_numpy(np.concatenate(pieces, axis=axis))
        states = []
        for j in range(len(first["core_state"])):
            pieces = [r["core_state"][j][a:b] for r, a, b in parts]
            states.append(torch.cat(pieces, out=out["core_state"][j]) if out is not None else torch.cat(pieces))
        batch["core_state"] = tuple(states)
        versions = [r["version"] for r, a, b in parts for _ in range(b - a)]
        return batch, versions


def host_buffers(rollout, batch_size, pin):
    """Empty host tensors shaped for one batch of `batch_size` sequences like `rollout`'s (pinned
    for asynchronous copies to a GPU when `pin`)."""
    def empty(shape, dtype):
        t = torch.empty(shape, dtype=dtype)
        return t.pin_memory() if pin else t
    out = {}
    for key in rollout_keys(rollout):
        x = rollout[key]
        shape = (batch_size, *x.shape[1:]) if key == "stack0" else (x.shape[0], batch_size, *x.shape[2:])
        out[key] = empty(shape, torch.from_numpy(np.empty(0, x.dtype)).dtype)
    out["core_state"] = tuple(empty((batch_size, *s.shape[1:]), s.dtype) for s in rollout["core_state"])
    return out
