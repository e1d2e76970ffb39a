"""The IMPALA learner loop: rollouts in from the Ray actors as they come, batches of B sequences
through the Learner, weights out through the object store.

`LearnerService` runs inside a Ray actor (on a GPU when the cluster has one) and owns the rollout
actors. The driver (runtime/driver.py) calls `run(seconds)` again and again: each call trains for about that
long and reports what happened, so the driver can log, checkpoint and stop between calls.

Back-pressure: each actor has at most `run.max_rollouts_in_flight` rollout calls pending, so however
long the run, the object store holds a bounded number of rollouts. A dead actor is restarted by Ray
(max_restarts=-1); its failed calls are counted in actors/restarts and resubmitted.
"""
import time
from collections import defaultdict

import numpy as np
import ray
import torch

from actors.rollout import RolloutWorker
from configs import config_from_dict
from learner import Learner, checkpoint
from learner.batch import STEP_KEYS


def worker_seed(seed, index, num_envs):
    """Disjoint env seed ranges per actor (env j of actor i gets base + i * num_envs + j)."""
    return seed * 1_000_003 + index * num_envs


class LearnerService:
    def __init__(self, cfg, checkpoint_payload=None, source="checkpoint"):
        cfg = config_from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.cfg, rc = cfg, cfg.run
        worker = ray.remote(RolloutWorker).options(
            num_cpus=rc.actor_cpus, max_restarts=-1, max_task_retries=0)
        self.workers = [worker.remote(cfg, i, worker_seed(rc.seed, i, cfg.env.num_envs), rc.actor_cpus)
                        for i in range(rc.num_actors)]
        info = ray.get(self.workers[0].info.remote())
        self.num_envs = info["num_envs"]
        self.learner = Learner(cfg, info["observation_space"], info["num_actions"], info["frames_per_step"])
        self.extra, self.error = {}, None
        if checkpoint_payload is not None:
            try:
                self.extra = self.learner.load_payload(checkpoint_payload, source)
            except checkpoint.CheckpointError as e:  # reported by state(), raised by the driver
                self.error = str(e)
        self.weights = ray.put(self.learner.weights())
        self.in_flight = {}           # ObjectRef -> worker index
        self.pending = []             # rollouts not yet batched: [rollout, first unused sequence]
        self.restarts = 0
        for i in range(len(self.workers)):
            for _ in range(rc.max_rollouts_in_flight):
                self._request(i)

    def _request(self, i):
        self.in_flight[self.workers[i].rollout.remote(self.weights)] = i

    def state(self):
        return {"frames": self.learner.frames, "version": self.learner.version, "extra": self.extra,
                "error": self.error}

    def run(self, seconds, until_frames=None):
        """Train for about `seconds`, or until run.total_frames (or `until_frames`, if sooner) are
        consumed; return what happened meanwhile."""
        learner = self.learner
        total = self.cfg.run.total_frames if until_frames is None else min(until_frames, self.cfg.run.total_frames)
        start, frames0, restarts0 = time.monotonic(), learner.frames, self.restarts
        stats, episodes, lags = defaultdict(list), [], []
        while time.monotonic() - start < seconds and learner.frames < total:
            timeout = max(0.0, seconds - (time.monotonic() - start))
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
            if not ready:
                continue
            i = self.in_flight.pop(ready[0])
            try:
                rollout = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                self.restarts += 1
                print(f"[learner] actor {i} failed ({type(e).__name__}); Ray restarts it", flush=True)
                self._request(i)
                continue
            self._request(i)
            episodes.extend(rollout["episodes"])
            self.pending.append([rollout, 0])
            while self._sequences_pending() >= self.cfg.learner.batch_size and learner.frames < total:
                batch, versions = self._take_batch()
                lags.append(learner.version - np.mean(versions))  # updates since they acted
                for key, value in learner.step(batch).items():
                    stats[key].append(value)
                self.weights = ray.put(learner.weights())
        elapsed = time.monotonic() - start
        report = {key: float(np.mean(v)) for key, v in stats.items()}
        if lags:
            report["learner/policy_lag"] = float(np.mean(lags))
        report["perf/env_frames_per_s"] = (learner.frames - frames0) / max(elapsed, 1e-9)
        report["actors/restarts"] = float(self.restarts)
        return {"frames": learner.frames, "version": learner.version, "stats": report,
                "episodes": episodes, "new_restarts": self.restarts - restarts0}

    def _sequences_pending(self):
        return sum(rollout["first"].shape[1] - used for rollout, used in self.pending)

    def _take_batch(self):
        """B sequences from the pending rollouts (whole or split along the batch dimension)."""
        need, parts = self.cfg.learner.batch_size, []
        while need:
            rollout, used = self.pending[0]
            n = min(need, rollout["first"].shape[1] - used)
            parts.append((rollout, used, used + n))
            need -= n
            if used + n == rollout["first"].shape[1]:
                self.pending.pop(0)
            else:
                self.pending[0][1] = used + n
        first = parts[0][0]
        batch = {k: torch.from_numpy(np.concatenate([r[k][:, a:b] for r, a, b in parts], axis=1))
                 for k in STEP_KEYS if k in first}
        if "stack0" in first:
            batch["stack0"] = torch.from_numpy(np.concatenate([r["stack0"][a:b] for r, a, b in parts]))
        batch["core_state"] = tuple(torch.cat([r["core_state"][j][a:b] for r, a, b in parts])
                                    for j in range(len(parts[0][0]["core_state"])))
        versions = [r["version"] for r, a, b in parts for _ in range(b - a)]
        return batch, versions

    def checkpoint_payload(self, extra):
        """Everything needed to continue, as plain data (the driver writes it atomically)."""
        self.extra = extra
        return self.learner.payload(extra)

    def kill_worker(self, i):
        """For tests and drills: kill actor i as a crash would (Ray restarts it)."""
        ray.kill(self.workers[i], no_restart=False)

    def close(self):
        for w in self.workers:
            ray.kill(w)
