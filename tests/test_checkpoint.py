"""Checkpoints: a resumed learner continues bit-for-bit; bad checkpoints are refused whole; writes
are atomic."""
import math
import os
import random

import numpy as np
import pytest
import torch

from learner import CheckpointError, Learner, random_batch
from learner import checkpoint as ckpt

from .learner_cases import NUM_ACTIONS, VECTOR, image_space, tiny_config


def _batches(learner, n, T=5, B=2):
    return [random_batch(learner.agent.obs_shape, torch.float32, learner.agent.num_actions, T, B,
                         learner.agent.initial_state(B), seed=s) for s in range(n)]


def _snapshot(learner):
    return ({k: v.clone() for k, v in learner.agent.state_dict().items()},
            (learner.frames, learner.version, learner.skipped_updates))


def _assert_same_weights(a, b):
    for (k, x), y in zip(a.agent.state_dict().items(), b.agent.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("core", ["rdn", "lstm"])
def test_resume_gives_the_same_updates_bit_for_bit(tmp_path, core):
    cfg = tiny_config(core, "run.total_frames=400")  # the lr decays within the test: the counter matters
    batches = _batches(Learner(cfg, VECTOR, NUM_ACTIONS), 5)
    bad = dict(batches[1], reward=batches[1]["reward"].clone())
    bad["reward"][2, 0] = float("nan")  # a skipped update before the checkpoint: its counter must survive

    straight = Learner(cfg, VECTOR, NUM_ACTIONS, frames_per_step=2)
    for b in [batches[0], bad, batches[2]]:
        straight.step(b)
    straight.save(tmp_path / "checkpoint.pt", extra={"episodes": 7})
    draws_after_save = (random.random(), np.random.rand(), torch.rand(1))  # the RNGs move on...
    resumed = Learner(tiny_config(core, "run.total_frames=400", "run.seed=99"), VECTOR, NUM_ACTIONS,
                      frames_per_step=2)
    assert not torch.equal(resumed.agent.policy.weight, straight.agent.policy.weight)
    extra = resumed.load(tmp_path / "checkpoint.pt")
    assert (random.random(), np.random.rand(), torch.rand(1)) == draws_after_save  # ...load rewinds them
    assert extra == {"episodes": 7}
    assert (resumed.frames, resumed.version, resumed.skipped_updates) == (straight.frames, 2, 1)

    for b in batches[3:]:
        s1, s2 = straight.step(b), resumed.step(b)
        assert s1 == s2  # every statistic, exactly
        _assert_same_weights(straight, resumed)
    for x, y in zip(straight.optimizer.state_dict()["state"].values(),
                    resumed.optimizer.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)


@pytest.mark.parametrize("optimizer,keys", [("adam", {"learner.adam_eps": ("eps", 1e-3, 1e-7),
                                                        "learner.adam_beta2": ("betas", 0.99, 0.9)}),
                                              ("rmsprop", {"learner.rmsprop_eps": ("eps", 0.01, 1e-6),
                                                           "learner.rmsprop_alpha": ("alpha", 0.99, 0.9)})])
def test_a_resume_trains_with_the_configs_optimiser_values_not_the_checkpoints(tmp_path, optimizer, keys):
    """torch's load_state_dict brings the saved eps/betas/alpha back; a resume with other values
    (--set, or a PBT trial with its new values) must train with the new ones, on the saved moments."""
    old = [f"{k}={v[1]}" for k, v in keys.items()]
    new = [f"{k}={v[2]}" for k, v in keys.items()]
    saved = Learner(tiny_config("lstm", f"learner.optimizer={optimizer}", *old), VECTOR, NUM_ACTIONS)
    for b in _batches(saved, 2):
        saved.step(b)
    saved.save(tmp_path / "checkpoint.pt")
    resumed = Learner(tiny_config("lstm", f"learner.optimizer={optimizer}", *new), VECTOR, NUM_ACTIONS)
    resumed.load(tmp_path / "checkpoint.pt")
    for (key, (name, before, after)) in keys.items():
        for group in resumed.optimizer.param_groups:
            value = group[name][1] if name == "betas" else group[name]
            assert value == after != before, key
    moments = "exp_avg_sq" if optimizer == "adam" else "square_avg"
    for x, y in zip(saved.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        assert torch.equal(x[moments], y[moments])       # the moments are the checkpoint's


def test_resume_matches_a_run_that_never_stopped(tmp_path):
    """Same as above, but against a learner that was never saved or loaded at all."""
    cfg = tiny_config("delta_net", "run.total_frames=300")
    batches = _batches(Learner(cfg, VECTOR, NUM_ACTIONS), 4)
    never_stopped, first_half = Learner(cfg, VECTOR, NUM_ACTIONS), Learner(cfg, VECTOR, NUM_ACTIONS)
    for b in batches[:2]:
        never_stopped.step(b), first_half.step(b)
    first_half.save(tmp_path / "c.pt")
    del first_half
    resumed = Learner(cfg, VECTOR, NUM_ACTIONS)
    resumed.load(tmp_path / "c.pt")
    for b in batches[2:]:
        assert never_stopped.step(b) == resumed.step(b)
    _assert_same_weights(never_stopped, resumed)


@pytest.fixture
def saved(tmp_path):
    learner = Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS)
    learner.step(_batches(learner, 1)[0])
    path = tmp_path / "checkpoint.pt"
    learner.save(path)
    return path


def _refuses(learner, path, match):
    before = _snapshot(learner)
    with pytest.raises(CheckpointError, match=match):
        learner.load(path)
    after = _snapshot(learner)
    assert after[1] == before[1] and all(torch.equal(before[0][k], v) for k, v in after[0].items())


def test_mismatched_checkpoints_are_refused_naming_both_values(saved):
    import gymnasium as gym
    _refuses(Learner(tiny_config("lstm"), VECTOR, NUM_ACTIONS), saved,
             "does not fit this learner: core is 'rdn' in the checkpoint, 'lstm' here")
    _refuses(Learner(tiny_config("rdn"), VECTOR, 5), saved,
             "num_actions is 3 in the checkpoint, 5 here")
    _refuses(Learner(tiny_config("rdn"), gym.spaces.Box(-1, 1, (7,), np.float32), NUM_ACTIONS), saved,
             r"observation_shape is \[6\] in the checkpoint, \[7\] here")
    _refuses(Learner(tiny_config("rdn"), image_space((6,)), NUM_ACTIONS), saved,
             "observation_dtype is 'float32' in the checkpoint, 'uint8' here")
    _refuses(Learner(tiny_config("rdn", "core.d_model=24"), VECTOR, NUM_ACTIONS), saved,
             r"core.input_proj.weight has shape \(16, 17\) in the checkpoint, \(24, 17\) here")


def test_corrupt_checkpoints_are_refused(saved, tmp_path):
    learner = Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS)
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _refuses(learner, truncated, "truncated.pt is unreadable \\(truncated or corrupt\\)")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(1000))
    _refuses(learner, garbage, "unreadable")
    _refuses(learner, tmp_path / "missing.pt", "no checkpoint file at")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    _refuses(learner, other, "is not a learner checkpoint of format 1")
    # Right shapes, broken optimiser state: refused before the model is touched.
    payload = ckpt.read(saved)
    first = next(iter(payload["optimizer"]["state"].values()))
    first["square_avg"] = torch.zeros(2)
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    _refuses(learner, broken, "optimiser slot square_avg of parameter 0 does not match")


def test_a_kill_while_writing_leaves_the_previous_checkpoint(saved, monkeypatch):
    learner = Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS)
    learner.load(saved)
    learner.step(_batches(learner, 1)[0])
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the temp file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        learner.save(saved)
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(saved.parent) == [saved.name]  # no temp file left behind
    # Dying later, with the whole new file written but not yet renamed over the old one:
    real_replace = os.replace

    def dies_before_the_rename(src, dst):
        assert os.path.getsize(src) > 1000      # the temp file holds the new checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", dies_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        learner.save(saved)
    monkeypatch.setattr(os, "replace", real_replace)
    assert os.listdir(saved.parent) == [saved.name]
    fresh = Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS)
    fresh.load(saved)  # still the previous, whole checkpoint
    assert fresh.version == 1 and learner.version == 2


def test_checkpoint_holds_the_resolved_config_and_loads_without_pickled_code(saved):
    from configs import config_from_dict
    payload = torch.load(saved, weights_only=True)  # plain data and tensors only
    cfg = config_from_dict(payload["config"])
    assert cfg.model.core == "rdn" and cfg.core.d_model == 16
    assert payload["counters"] == {"frames": 10, "version": 1, "skipped_updates": 0,
                                   "total_frames": cfg.run.total_frames, "lr_anchor": [0, 1.0]}


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_resume_with_a_new_budget_continues_the_lr_without_a_jump(tmp_path, schedule):
    """Trained for 40% of a 1000-frame budget, resumed with 2000: the lr goes on from its value at
    the resume point and reaches zero at the new budget, along the same schedule shape from there."""
    frames_per_update = 4 * 3        # T=4, B=3 batches, frame skip 1
    cfg = tiny_config("lstm", f"learner.lr_schedule={schedule}", "run.total_frames=1200")
    first = Learner(cfg, VECTOR, NUM_ACTIONS)
    batches = _batches(first, 1, T=4, B=3) * 40
    for b in batches[:40]:
        before = first.step(b)["learner/lr"]
    at_resume = first.current_lr()
    first.save(tmp_path / "ck.pt")
    resumed = Learner(tiny_config("lstm", f"learner.lr_schedule={schedule}", "run.total_frames=2400"), VECTOR,
                      NUM_ACTIONS)
    resumed.load(tmp_path / "ck.pt")
    assert resumed.current_lr() == pytest.approx(at_resume) and at_resume < before
    lrs = [resumed.step(b)["learner/lr"] for b in batches[:40]]
    lr0, f0 = 6e-4, 480                                      # the lr factor at the resume point, frames there
    m = (1 - f0 / 1200) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * f0 / 1200))
    q = [(f0 + k * frames_per_update - f0) / (2400 - f0) for k in range(40)]
    shape = [(1 - x) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * x)) for x in q]
    np.testing.assert_allclose(lrs, [lr0 * m * y for y in shape], rtol=1e-9)
    resumed.frames = 2400
    assert resumed.current_lr() == 0.0
    # The same budget resumes exactly where it was (the anchor stays).
    same = Learner(cfg, VECTOR, NUM_ACTIONS)
    same.load(tmp_path / "ck.pt")
    assert same.lr_anchor == (0, 1.0) and same.current_lr() == pytest.approx(at_resume)
