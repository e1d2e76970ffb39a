"""The whole algorithm in one process, without Ray: the loop to read first.

    trainer = SerialTrainer(cfg)       # one rollout worker (N envs, a CPU copy of the agent), the Learner
    trainer.run(until_frames=200_000)  # act -> batch -> V-trace update, again and again
    trainer.mean_return()              # the mean return of the last 100 games, as `train` reports it

One turn of the loop (`run`):
1. act: the worker loads the learner's newest weights and steps its N envs for T steps
   (actors/rollout.py): [T+1, N, ...] arrays that overlap the previous rollout by one observation,
   the behaviour policy's logits, and each env's core state before the rollout's first step;
2. batch: the rollout's N sequences are cut into learner batches of B sequences
   (runtime/batcher.py; learner/batch.py says what a batch holds);
3. update: the Learner unrolls the agent over each batch from the core states that travelled with
   it, computes V-trace targets and advantages against the behaviour logits, and takes one
   optimiser step on the policy-gradient, baseline and entropy losses (learner/learner.py,
   learner/vtrace.py, learner/losses.py).

runtime/service.py runs the same three steps distributed: many Ray actors act at once, a loader
thread batches while the learner trains, and the weights reach the actors through the object
store, so the data is a few updates old instead of fresh. tests/test_data_path.py checks the
service against this loop: fed the rollouts the service trained on, in the same order, it ends
with the same parameters, and each rollout acted with this loop's weights of its version.
"""
from actors.rollout import RolloutWorker, worker_seed
from learner import Learner

from .batcher import Batcher
from .driver import RETURN_WINDOW
from .malloc import keep_freed_memory


class SerialTrainer:
    def __init__(self, cfg, worker=None):
        """cfg: a configs.Config. worker: what acts (default: a RolloutWorker seeded as the
        service's first actor); anything with RolloutWorker's info() and rollout(weights)."""
        self.cfg = cfg
        keep_freed_memory()     # as the service's learner (runtime/malloc.py)
        self.worker = worker if worker is not None else RolloutWorker(
            cfg, seed=worker_seed(cfg.run.seed, 0, cfg.env.num_envs))
        info = self.worker.info()
        self.learner = Learner(cfg, info["observation_space"], info["num_actions"], info["frames_per_step"])
        self.batcher = Batcher(cfg.learner.batch_size)
        self.returns = []               # every finished game's return, in order

    def train_on(self, rollout):
        """Batch one rollout and update on every whole batch it completes; returns their stats."""
        self.returns.extend(ret for ret, _ in rollout.get("episodes", ()))
        self.batcher.add(rollout)
        stats = []
        while (taken := self.batcher.take(self.learner.version)) is not None:
            batch, _ = taken
            stats.append(self.learner.step(batch))
        return stats

    def run(self, until_frames=None):
        """Act, batch and update until the learner has consumed `until_frames` frames (default
        run.total_frames); returns the stats of every update."""
        total = self.cfg.run.total_frames if until_frames is None else until_frames
        stats = []
        while self.learner.frames < total:
            rollout = self.worker.rollout(self.learner.weights())   # acts with the newest weights
            stats += self.train_on(rollout)
        return stats

    def mean_return(self):
        """The mean return of the last RETURN_WINDOW games, or None before the first."""
        recent = self.returns[-RETURN_WINDOW:]
        return sum(recent) / len(recent) if recent else None
