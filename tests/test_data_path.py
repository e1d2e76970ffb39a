"""The learner's data path: the batcher against hand concatenation and its stale-sequence drops,
flat weights, actors acting on the newest published weights, and the pipelined service (loader
and publisher threads) against the serial learner on the same batches."""
import time

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch

from actors.rollout import RolloutWorker
from actors.weights import flatten, unflatten
from configs import load_config
from learner import Learner
from runtime.batcher import Batcher, host_buffers
from runtime.weights import WeightsHolder


def _rollout(T, N, version, seed):
    g = np.random.default_rng(seed)
    return {"obs": g.normal(size=(T + 1, N, 3)).astype(np.float32),
            "reward": g.normal(size=(T + 1, N)).astype(np.float32),
            "first": g.random((T + 1, N)) < 0.2, "action": g.integers(0, 4, (T + 1, N)),
            "last_action": g.integers(0, 4, (T + 1, N)), "forced": np.zeros((T + 1, N), bool),
            "logits": g.normal(size=(T + 1, N, 4)).astype(np.float32),
            "core_state": (torch.from_numpy(g.normal(size=(N, 2, 5))).float(),), "version": version}


@pytest.mark.parametrize("pinned_out", [False, True])
def test_batcher_splits_rollouts_into_batches_of_b_sequences(pinned_out):
    T, B = 4, 5
    rollouts = [_rollout(T, 3, version=v, seed=v) for v in range(4)]    # 12 sequences: two batches of 5
    batcher = Batcher(B)
    out = host_buffers(rollouts[0], B, pin=False) if pinned_out else None
    taken = []
    for r in rollouts:
        batcher.add(r)
        while (t := batcher.take(learner_version=10, out=out)) is not None:
            taken.append(({k: (tuple(x.clone() for x in v) if k == "core_state" else v.clone())
                           for k, v in t[0].items()}, t[1]))
    assert len(taken) == 2 and batcher.sequences() == 2
    # By hand: sequences in arrival order, rollout r's column j is sequence 3r + j.
    every = {k: np.concatenate([r[k] for r in rollouts], axis=1) for k in ("obs", "reward", "first", "logits")}
    states = torch.cat([r["core_state"][0] for r in rollouts])
    for i, (batch, versions) in enumerate(taken):
        cols = slice(5 * i, 5 * i + 5)
        for k, v in every.items():
            np.testing.assert_array_equal(batch[k].numpy(), v[:, cols])
        torch.testing.assert_close(batch["core_state"][0], states[cols], rtol=0, atol=0)
        assert versions == [c // 3 for c in range(5 * i, 5 * i + 5)]


def test_max_policy_lag_drops_exactly_the_older_sequences():
    batcher = Batcher(batch_size=4, max_policy_lag=2)
    for v in (5, 7, 8, 9):
        batcher.add(_rollout(3, 2, version=v, seed=v))
    batch, versions = batcher.take(learner_version=10)   # lag 5, 3 dropped (> 2); lag 2, 1 kept
    assert versions == [8, 8, 9, 9] and batcher.dropped == 4
    assert batcher.take(learner_version=10) is None


def test_flat_weights_round_trip_exactly_with_mixed_dtypes():
    sd = {"w": torch.randn(3, 4), "b": torch.randn(4, dtype=torch.float64), "n": torch.tensor(7.0, dtype=torch.float64),
          "i": torch.arange(5), "m": torch.tensor([True, False])}
    version, layout, buffer = flatten(sd).payload(3)
    assert version == 3 and isinstance(buffer, np.ndarray) and buffer.dtype == np.uint8
    assert buffer.nbytes == sum(t.numel() * t.element_size() for t in sd.values())
    back = unflatten(layout, buffer)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k


def test_holder_keeps_the_newest_version_only():
    h = WeightsHolder()
    assert h.latest() is None
    h.publish(2, ["ref2"])
    h.publish(1, ["ref1"])           # an older one arriving late changes nothing
    assert h.latest(-1) == (2, ["ref2"]) and h.latest(2) is None


def test_a_queued_rollout_acts_on_weights_published_after_it_was_queued(ray_session):
    """Two actors, each busy with a long rollout when a second one is queued; the learner then
    publishes version 7: the queued rollouts start from version 7, not the version of their call."""
    cfg = load_config("cartpole", ["learner.unroll_length=3000", "env.num_envs=2", "learner.device=cpu"])

    class CountingHolder(WeightsHolder):
        asked = 0

        def latest(self, have=-1):
            self.asked += 1
            return super().latest(have)

        def times_asked(self):
            return self.asked
    holder = ray.remote(CountingHolder).remote()
    workers = [ray.remote(RolloutWorker).remote(cfg, i, 10 * i, 1, holder) for i in range(2)]
    info = ray.get(workers[0].info.remote())
    learner = Learner(cfg, info["observation_space"], info["num_actions"])
    ray.get(holder.publish.remote(0, [ray.put(flatten(learner.agent.state_dict()).payload(0))]))
    first = [w.rollout.remote() for w in workers]
    queued = [w.rollout.remote() for w in workers]
    deadline = time.monotonic() + 60
    while ray.get(holder.times_asked.remote()) < 2:         # both first rollouts have started
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with torch.no_grad():
        learner.agent.policy.bias += 1.0
    ray.get(holder.publish.remote(7, [ray.put(flatten(learner.agent.state_dict()).payload(7))]))
    assert [r["version"] for r in ray.get(first)] == [0, 0]
    later = ray.get(queued)
    assert [r["version"] for r in later] == [7, 7]
    # ... and acted with them: rows 1..T's behaviour logits are the published weights' (row 0 was
    # acted on by the previous call).
    for r in later:
        with torch.no_grad():
            logits, _ = learner.agent.unroll(torch.tensor(r["obs"]), torch.tensor(r["reward"]),
                                             torch.tensor(r["first"]), r["core_state"])
        torch.testing.assert_close(logits[1:-1], torch.from_numpy(r["logits"][1:-1]), rtol=1e-4, atol=1e-5)
    for w in workers:
        ray.kill(w)


def test_pipelined_service_trains_like_the_serial_learner_and_bounds_its_queue(ray_session):
    """The service's loader and publisher threads around the Learner: the parameters after its
    updates equal a serial Learner's stepped on the very batches it took; the rollouts fetched
    ahead never exceed run.learner_queue_size; and with the learner the bottleneck, the data it
    trains on is at most (total envs / B) + 1 updates old however many calls each actor may have
    in flight (here 3: without the bound on calls, 2 x 3 x 4 sequences would wait, ~6 updates; the
    bound gives 2, and the +1 is for a publication that comes after the next rollout started)."""
    from runtime.service import LearnerService
    cfg = load_config("cartpole", ["run.num_actors=2", "env.num_envs=4", "learner.batch_size=4",
                                   "learner.unroll_length=5", "run.learner_queue_size=2", "learner.device=cpu",
                                   "run.max_rollouts_in_flight=3"])
    service = LearnerService(cfg)
    seen = []
    real_step = service.learner.step

    def step(batch):
        seen.append({k: (tuple(x.clone() for x in v) if k == "core_state" else v.clone()) for k, v in batch.items()})
        time.sleep(0.05)                                     # a slow learner: rollouts pile up at the actors
        return real_step(batch)
    service.learner.step = step
    try:
        report = service.run(300.0, until_frames=12 * 4 * 5)   # 12 updates, however loaded the machine
    finally:
        service.close()
    assert report["version"] == len(seen) == 12
    assert service.peak_queued <= 2
    assert report["stats"]["learner/policy_lag"] <= 2 * 4 / 4 + 1
    space = gym.spaces.Box(-np.inf, np.inf, service.learner.agent.obs_shape, np.float32)
    serial = Learner(cfg, space, service.learner.agent.num_actions)     # the same initial weights (run.seed)
    for batch in seen:
        serial.step(batch)
    for (name, p), q in zip(service.learner.agent.named_parameters(), serial.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
