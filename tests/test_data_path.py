"""The learner's data path: the batcher against hand concatenation and its stale-sequence drops,
the back-pressure credits, flat weights, actors acting on the newest published weights, and the
pipelined service (loader and publisher threads) against the serial loop (runtime/serial.py)."""
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch

from actors.rollout import RolloutWorker
from actors.flat_weights import flatten, unflatten
from configs import load_config
from learner import Learner
from learner.batch import from_rollout, to_device
from runtime.batcher import Batcher, host_buffers
from runtime.credits import Credits
from runtime.serial import SerialTrainer
from runtime.weights_holder import WeightsHolder


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
    reported = []
    batcher = Batcher(batch_size=4, max_policy_lag=2, on_drop=reported.append)
    for v in (5, 7, 8, 9):
        batcher.add(_rollout(3, 2, version=v, seed=v))
    batch, versions = batcher.take(learner_version=10)   # lag 5, 3 dropped (> 2); lag 2, 1 kept
    assert versions == [8, 8, 9, 9] and batcher.dropped == 4 and reported == [4]
    assert batcher.take(learner_version=10) is None and reported == [4]     # nothing more to drop
    batcher.add(_rollout(3, 2, version=8, seed=1))
    assert batcher.take(learner_version=11) is None and batcher.dropped == 6 and reported == [4, 2]


# -- back-pressure credits (runtime/credits.py), without Ray ----------------------------------------

def test_credits_reserve_up_to_the_cap_and_release_frees_them():
    credits = Credits(cap=10)
    assert credits.reserve(4) and credits.reserve(4)
    assert not credits.reserve(4) and credits.used == 8       # 12 > 10: refused, nothing taken
    assert credits.reserve(2) and credits.used == 10
    assert not credits.reserve(1)
    credits.release(4)
    assert credits.reserve(4) and not credits.reserve(1)
    credits.release(10)
    assert credits.used == 0
    with pytest.raises(RuntimeError, match="releasing 1 of 0 in use"):
        credits.release(1)                                     # a sequence released twice
    with pytest.raises(ValueError, match="at least 1 sequence"):
        Credits(0)


def test_credits_account_for_every_end_of_a_sequence():
    """The service's bookkeeping in miniature: rollouts of 3 sequences are asked for while credits
    last (cap 2 rollouts + 1 sequence), and every sequence gives its credit back exactly once,
    whichever end it meets: trained in a batch of 4, dropped as stale by the batcher, or lost with
    its actor. Asking then never stops for good, and nothing is left in use at the end."""
    credits = Credits(cap=7)
    batcher = Batcher(batch_size=4, max_policy_lag=1, on_drop=credits.release)
    version, asked, trained, lost = 0, 0, 0, 0
    rng = np.random.default_rng(0)
    for step in range(200):
        while credits.reserve(3):                              # the loader issues calls
            asked += 1
            if rng.random() < 0.1:                             # the actor died: its rollout is lost
                credits.release(3)
                lost += 3
            else:                                              # it arrives, acted a random lag ago
                batcher.add(_rollout(2, 3, version=version - int(rng.integers(0, 3)), seed=step))
        assert 0 < credits.used <= 7
        taken = batcher.take(learner_version=version)
        if taken is not None:                                  # the update takes a batch
            credits.release(4)
            trained += 4
            version += 1
    assert trained > 100 and batcher.dropped > 0 and lost > 0
    assert credits.used == 3 * asked - trained - batcher.dropped - lost == batcher.sequences()


def test_credits_from_two_threads_add_up():
    credits, errors = Credits(cap=5), []

    def churn():
        try:
            for _ in range(20_000):
                if credits.reserve(1):
                    assert credits.used <= 5
                    credits.release(1)
        except BaseException as e:  # noqa: BLE001  reported below
            errors.append(e)
    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and credits.used == 0


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
    # Rollouts of 1000 steps (a second or more each): both actors are built before the first calls,
    # so both first rollouts start together and version 7 is published while they run.
    cfg = load_config("cartpole", ["learner.unroll_length=1000", "env.num_envs=2", "learner.device=cpu"])

    class CountingHolder(WeightsHolder):
        asked = 0

        def latest(self, have=-1):
            self.asked += 1
            return super().latest(have)

        def times_asked(self):
            return self.asked
    holder = ray.remote(CountingHolder).remote()
    workers = [ray.remote(RolloutWorker).remote(cfg, i, 10 * i, 1, holder) for i in range(2)]
    info = ray.get([w.info.remote() for w in workers])[0]
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
        b = to_device(from_rollout(r), "cpu")
        with torch.no_grad():
            logits, _ = learner.agent.unroll(b["obs"], b["reward"], b["first"], b["core_state"])
        torch.testing.assert_close(logits[1:-1], torch.from_numpy(r["logits"][1:-1]), rtol=1e-4, atol=1e-5)
    for w in workers:
        ray.kill(w)


class _Replay:
    """A SerialTrainer's worker that plays back recorded rollouts in order, keeping the weights
    (version -> state dict) the serial loop handed it before each one."""

    def __init__(self, info, rollouts):
        self._info, self.rollouts, self.weights, self.served = info, rollouts, {}, 0

    def info(self):
        return self._info

    def rollout(self, weights):
        version, state_dict = weights
        self.weights[version] = {k: v.clone() for k, v in state_dict.items()}
        self.served += 1
        return self.rollouts[self.served - 1]


def test_pipelined_service_trains_like_the_serial_loop_and_bounds_its_queue(ray_session, monkeypatch):
    """The service's loader and publisher threads around the Learner, against the serial loop
    (runtime/serial.py) as the reference: fed the rollouts the service fetched, in its order, the
    serial loop ends with the service's parameters bit for bit; every rollout acted with the serial
    loop's weights of the version it claims (row 0 with its actor's previous version, as the
    boundary step belongs to the previous call). The rollouts fetched ahead never exceed
    run.learner_queue_size; and with the learner the bottleneck the data it trains on is at most
    (total envs / B) + 2 updates old however many calls each actor may have in flight (here 3:
    without the bound on calls, 2 x 3 x 4 sequences would wait, ~6 updates; the bound gives 2 for
    the actors' rollouts and 1 for the batch being prepared, and the last +1 is for a publication
    that comes after the next rollout started)."""
    import runtime.service as service_module
    cfg = load_config("cartpole", ["run.num_actors=2", "env.num_envs=4", "learner.batch_size=4",
                                   "learner.unroll_length=5", "run.learner_queue_size=2", "learner.device=cpu",
                                   "run.max_rollouts_in_flight=3", "run.max_policy_lag=0"])
    fetched = []

    class Recording(Batcher):                   # installed before the loader thread starts
        def add(self, rollout):
            fetched.append(rollout)
            super().add(rollout)
    monkeypatch.setattr(service_module, "Batcher", Recording)
    service = service_module.LearnerService(cfg)
    real_step = service.learner.step

    def slow_step(batch):
        time.sleep(0.05)                                     # a slow learner: rollouts pile up at the actors
        return real_step(batch)
    service.learner.step = slow_step
    try:
        report = service.run(300.0, until_frames=12 * 4 * 5)   # 12 updates, however loaded the machine
    finally:
        service.close()
    assert report["version"] == 12 and len(fetched) >= 12
    assert service.peak_queued <= 2
    assert report["stats"]["learner/policy_lag"] <= 2 * 4 / 4 + 2     # total envs / B + 2 (runtime/service.py)
    space = gym.spaces.Box(-np.inf, np.inf, service.learner.agent.obs_shape, np.float32)
    replay = _Replay({"observation_space": space, "num_actions": service.learner.agent.num_actions,
                      "frames_per_step": 1}, fetched)
    serial = SerialTrainer(cfg, worker=replay)         # the same initial weights (run.seed)
    serial.run(until_frames=report["frames"])
    assert replay.served == 12 and serial.learner.version == 12
    for (name, p), q in zip(service.learner.agent.named_parameters(), serial.learner.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)

    # Each worker's rollouts in order: rows 1..T-1 acted with the weights of the rollout's version,
    # row 0 (and the state it left) with those of the worker's previous rollout.
    agent, checked = serial.learner.agent, 0
    previous = {}
    for r in fetched[:12]:
        before = previous.get(r["worker"])
        previous[r["worker"]] = r["version"]
        if before is None:        # its first rollout: row 0 acted with the actor's own initial weights
            continue
        b = to_device(from_rollout(r), "cpu")
        with torch.no_grad():
            agent.load_state_dict(replay.weights[before])
            _, logits0, state = agent.act(b["obs"][0], b["reward"][0], b["first"][0], b["core_state"],
                                          b["last_action"][0], greedy=True)
            agent.load_state_dict(replay.weights[r["version"]])
            logits, _ = agent.unroll(b["obs"][1:], b["reward"][1:], b["first"][1:], state, b["last_action"][1:])
        torch.testing.assert_close(logits0, b["logits"][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits[:-1], b["logits"][1:-1], rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 8 and len({r["version"] for r in fetched[:12]}) > 3     # several versions acted
