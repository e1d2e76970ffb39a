"""The learner's options (optimiser, lr schedule, APPO surrogate, advantage normalisation, PopArt,
orthogonal init) and its health readings (gradient clip fraction, dead units), each against an
independent computation written here."""
import copy
import math
import pickle

import numpy as np
import pytest
import torch

from learner import Learner, random_batch
from learner.health import DeadUnits
from learner.popart import PopArt

from .learner_cases import NUM_ACTIONS, VECTOR, image_space, reference, tiny_config

T, B = 6, 3


def _batch(learner, seed=0):
    batch = random_batch(VECTOR.shape, torch.float32, NUM_ACTIONS, T, B, learner.agent.initial_state(B), seed)
    batch["reward"] *= 3
    return batch


def _check_stats(stats, ref):
    assert stats["loss/pg"] == pytest.approx(ref["pg"], rel=1e-4, abs=1e-5)
    assert stats["loss/baseline"] == pytest.approx(ref["base"], rel=1e-4, abs=1e-6)
    assert stats["loss/entropy"] == pytest.approx(ref["ent"], rel=1e-4, abs=1e-6)
    assert stats["learner/grad_norm"] == pytest.approx(ref["norm"], rel=1e-4)
    assert stats["learner/adv_mean"] == pytest.approx(ref["adv_mean"], rel=1e-4, abs=1e-6)
    assert stats["learner/adv_std"] == pytest.approx(ref["adv_std"], rel=1e-4)


def test_adam_two_steps_match_a_hand_written_bias_corrected_update():
    cfg = tiny_config("rdn", "learner.optimizer=adam", "learner.lr=1e-3", "learner.adam_beta1=0.8",
                      "learner.adam_beta2=0.9", "learner.adam_eps=1e-6", "learner.lr_schedule=constant",
                      "learner.grad_clip=0.5")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS)
    agent = copy.deepcopy(learner.agent)
    m = [torch.zeros_like(p, dtype=torch.float64) for p in agent.parameters()]
    v = [torch.zeros_like(p, dtype=torch.float64) for p in agent.parameters()]
    for step in (1, 2):
        batch = _batch(learner, seed=step)
        ref, grads = reference(agent, batch, grad_clip=0.5)
        _check_stats(learner.step(batch), ref)
        with torch.no_grad():
            for p, g, m_i, v_i in zip(agent.parameters(), grads, m, v):
                m_i.mul_(0.8).add_(0.2 * g)
                v_i.mul_(0.9).add_(0.1 * g * g)
                m_hat, v_hat = m_i / (1 - 0.8 ** step), v_i / (1 - 0.9 ** step)
                p.copy_((p.double() - 1e-3 * m_hat / (v_hat.sqrt() + 1e-6)).float())
        for (name, p), q in zip(learner.agent.named_parameters(), agent.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-6, msg=f"step {step} {name}")


@pytest.mark.parametrize("loss", ["impala", "appo"])
def test_advantage_normalisation_and_the_appo_surrogate(loss):
    cfg = tiny_config("lstm", f"learner.loss={loss}", "learner.ppo_clip=0.1", "learner.advantage_norm=true",
                      "learner.loss_reduction=mean")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS)
    batch = _batch(learner)
    batch["logits"] *= 2    # far from the learner's policy: ratios beyond 1 ± 0.1, so the clip acts
    ref, _ = reference(copy.deepcopy(learner.agent), batch, loss=loss, ppo_clip=0.1, adv_norm=True,
                       reduction="mean")
    stats = learner.step(batch)
    _check_stats(stats, ref)
    if loss == "appo":
        assert 0.1 < stats["learner/ppo_clip_fraction"] < 0.9
    else:
        assert "learner/ppo_clip_fraction" not in stats


def test_popart_rescale_preserves_the_unnormalised_value():
    torch.manual_seed(0)
    popart, head = PopArt(beta=0.3).double(), torch.nn.Linear(5, 1).double()
    features = torch.randn(64, 5, dtype=torch.float64)
    for step in range(4):
        before = popart.denormalize(head(features)).detach()
        targets = torch.randn(200, dtype=torch.float64) * 30 + 100
        mu, nu = popart.mu.item(), popart.nu.item()
        popart.update(targets, head)
        assert popart.mu.item() == pytest.approx(0.7 * mu + 0.3 * targets.mean().item())
        assert popart.nu.item() == pytest.approx(0.7 * nu + 0.3 * (targets ** 2).mean().item())
        assert popart.sigma.item() == pytest.approx(math.sqrt(popart.nu.item() - popart.mu.item() ** 2))
        torch.testing.assert_close(popart.denormalize(head(features)).detach(), before, rtol=1e-12, atol=1e-9)
    assert popart.sigma.item() > 5    # it moved towards the targets' scale (σ 30 around 100)
    with pytest.raises(ValueError, match=r"learner.popart_beta must lie in \(0, 1\]"):
        PopArt(beta=0.0)


def test_popart_learner_uses_normalised_targets_and_keeps_its_statistics(tmp_path):
    cfg = tiny_config("rdn", "learner.popart=true", "learner.popart_beta=0.5")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS)
    learner.step(_batch(learner, seed=1))            # statistics away from (0, 1)
    mu, sigma = learner.popart.mu.item(), learner.popart.sigma.item()
    assert mu != 0.0 and sigma != 1.0
    batch = _batch(learner, seed=2)
    ref, _ = reference(copy.deepcopy(learner.agent), batch, popart=(mu, sigma))
    stats = learner.step(batch)
    _check_stats(stats, ref)
    assert learner.popart.mu.item() == pytest.approx(0.5 * mu + 0.5 * ref["vs"].mean(), rel=1e-5)
    assert stats["learner/popart_mu"] == pytest.approx(learner.popart.mu.item())
    learner.save(tmp_path / "ck.pt")
    restored = Learner(cfg, VECTOR, NUM_ACTIONS)
    restored.load(tmp_path / "ck.pt")
    assert restored.popart.mu.item() == learner.popart.mu.item()
    assert restored.popart.nu.item() == learner.popart.nu.item()
    plain = Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS)
    plain.save(tmp_path / "plain.pt")
    from learner import CheckpointError
    with pytest.raises(CheckpointError, match="holds no PopArt statistics"):
        Learner(cfg, VECTOR, NUM_ACTIONS).load(tmp_path / "plain.pt")


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_lr_schedules(schedule):
    frames_per_update = T * B
    cfg = tiny_config("lstm", f"learner.lr_schedule={schedule}", f"run.total_frames={8 * frames_per_update}")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS)
    batch = _batch(learner)
    lrs = [learner.step(batch)["learner/lr"] for _ in range(10)]
    progress = [min(1.0, k / 8) for k in range(10)]
    expected = {"linear": [6e-4 * (1 - p) for p in progress],
                "cosine": [6e-4 * 0.5 * (1 + math.cos(math.pi * p)) for p in progress],
                "constant": [6e-4] * 10}[schedule]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_decay_start_holds_the_lr_then_decays_to_zero_over_the_rest(schedule):
    """lr_decay_start 0.25 of 16 updates: held for 4 updates, then down to zero at update 16."""
    cfg = tiny_config("lstm", f"learner.lr_schedule={schedule}", "learner.lr_decay_start=0.25",
                      f"run.total_frames={16 * T * B}")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS)
    batch = _batch(learner)
    lrs = [learner.step(batch)["learner/lr"] for _ in range(18)]
    q = [min(1.0, max(0, k - 4) / 12) for k in range(18)]
    shape = [1 - x if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * x)) for x in q]
    np.testing.assert_allclose(lrs, [6e-4 * y for y in shape], rtol=1e-12, atol=1e-15)
    assert lrs[:5] == [6e-4] * 5 and lrs[16:] == [0.0, 0.0]


def test_a_resume_inside_the_hold_holds_until_the_new_budgets_decay_start(tmp_path):
    """Half the hold of a 10-update budget spent, resumed with 20 updates: held until update 10
    (half of 20), then linear to zero at 20."""
    cfg = tiny_config("lstm", "learner.lr_decay_start=0.5", f"run.total_frames={10 * T * B}")
    first = Learner(cfg, VECTOR, NUM_ACTIONS)
    batch = _batch(first)
    for _ in range(3):
        first.step(batch)
    first.save(tmp_path / "ck.pt")
    resumed = Learner(tiny_config("lstm", "learner.lr_decay_start=0.5", f"run.total_frames={20 * T * B}"),
                      VECTOR, NUM_ACTIONS)
    resumed.load(tmp_path / "ck.pt")
    lrs = [resumed.step(batch)["learner/lr"] for _ in range(18)]      # updates 3..20
    expected = [6e-4 * (1 - min(1.0, max(0, k - 10) / 10)) for k in range(3, 21)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=1e-15)


def test_gradient_clip_fraction_says_whether_the_clip_acted():
    learner = Learner(tiny_config("lstm", "learner.grad_clip=1e-6"), VECTOR, NUM_ACTIONS)
    stats = learner.step(_batch(learner))
    assert stats["learner/grad_norm"] > 1e-6 and stats["learner/clip_fraction"] == 1.0
    learner = Learner(tiny_config("lstm", "learner.grad_clip=1e9"), VECTOR, NUM_ACTIONS)
    assert learner.step(_batch(learner))["learner/clip_fraction"] == 0.0
    learner = Learner(tiny_config("lstm", "learner.grad_clip=0"), VECTOR, NUM_ACTIONS)
    assert learner.step(_batch(learner))["learner/clip_fraction"] == 0.0


def test_orthogonal_init():
    cfg = tiny_config("lstm", "model.init=orthogonal", "model.torso=nature")
    learner = Learner(cfg, image_space((4, 36, 36)), NUM_ACTIONS)
    agent = learner.agent
    layers = [m for m in agent.torso.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))] + [agent.fc]
    assert len(layers) == 4
    for module, gain in [*((m, 2 ** 0.5) for m in layers), (agent.policy, 0.01), (agent.baseline, 1.0)]:
        w = module.weight.detach().flatten(1).double()
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w
        torch.testing.assert_close(gram, gain ** 2 * torch.eye(small, dtype=torch.float64), atol=1e-5, rtol=0)
        assert torch.count_nonzero(module.bias) == 0
    default = Learner(tiny_config("lstm", "model.torso=nature"), image_space((4, 36, 36)), NUM_ACTIONS)
    assert torch.count_nonzero(default.agent.fc.bias) > 0


def test_dead_units_count_the_units_that_never_fire():
    cfg = tiny_config("lstm", "model.torso=nature")
    learner = Learner(cfg, image_space((4, 36, 36)), NUM_ACTIONS)
    agent = learner.agent
    with torch.no_grad():
        agent.fc.bias[:5] = -1e4                      # five of 16 units can never fire
        agent.torso.net[0].bias[:3] = -1e4            # three of 32 channels of the first conv
    batch = random_batch((4, 36, 36), torch.uint8, NUM_ACTIONS, T, B, agent.initial_state(B), seed=0)
    # Independently: run the layers by hand on the batch's frames and count units never > 0.
    x = batch["obs"].flatten(0, 1).float() / 255
    with torch.no_grad():
        conv0 = agent.torso.net[0](x)
        h = agent.torso(x)
        fc = agent.fc(torch.relu(h))
    expected_conv0 = (conv0.amax(dim=(0, 2, 3)) <= 0).float().mean().item()
    expected_fc = (fc.amax(dim=0) <= 0).float().mean().item()
    assert expected_conv0 >= 3 / 32 and expected_fc >= 5 / 16
    stats = learner.step(batch)
    assert stats["model/dead_units/torso.net.0"] == pytest.approx(expected_conv0)
    assert stats["model/dead_units/fc"] == pytest.approx(expected_fc)
    assert set(DeadUnits(agent).layers) == {"torso.net.0", "torso.net.2", "torso.net.4", "fc"}


def test_epochs_and_minibatches_are_that_many_steps_on_the_sub_batches():
    """epochs=2, minibatches=2 on B=4 sequences: four gradient steps, on sequences [0, 2), [2, 4),
    [0, 2), [2, 4), all at the batch's learning rate; the frames count the batch once."""
    common = ["learner.optimizer=adam", f"run.total_frames={T * 4 * 2}"]
    reuse = Learner(tiny_config("rdn", "learner.epochs=2", "learner.minibatches=2", *common), VECTOR, NUM_ACTIONS)
    single = Learner(tiny_config("rdn", "learner.lr_schedule=constant", *common), VECTOR, NUM_ACTIONS)
    batch = random_batch(VECTOR.shape, torch.float32, NUM_ACTIONS, T, 4, reuse.agent.initial_state(4), seed=5)
    halves = [{k: tuple(x[a:a + 2] for x in v) if k == "core_state" else v[:, a:a + 2] if torch.is_tensor(v) else v
               for k, v in batch.items()} for a in (0, 2)]
    single_stats = [single.step(h) for h in halves * 2]
    stats = reuse.step(batch)                        # at progress 0: the full lr for all four steps
    assert reuse.version == 4 and reuse.frames == T * 4
    for (name, p), q in zip(reuse.agent.named_parameters(), single.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    for key in ("loss/pg", "loss/baseline", "learner/grad_norm"):
        assert stats[key] == pytest.approx(np.mean([s[key] for s in single_stats]), rel=1e-5, abs=1e-7)
    assert reuse.step(batch)["learner/lr"] == pytest.approx(6e-4 / 2)   # half the budget consumed
    with pytest.raises(ValueError, match=r"the batch's 4 sequences must split into minibatches evenly"):
        # (a config of B=3 in 3 minibatches, handed a batch of 4: configs refuses a B that 3 does not divide)
        Learner(tiny_config("rdn", "learner.batch_size=3", "learner.minibatches=3"), VECTOR, NUM_ACTIONS).step(batch)


def test_observation_norm_follows_its_statistics_whatever_changes_them():
    """The module keeps the (mul, add) of its own statistics between calls (an actor normalises
    every step with the same ones): after every way the statistics change (a batch merged in,
    set_stats, load_state_dict as an actor loads published weights, a direct in-place write), and
    after a call with other statistics, the output is the float64 formula of the statistics the
    module holds at that moment, never the ones it held before."""
    from agents.obs_norm import ObservationNorm
    rng = np.random.default_rng(3)
    norm = ObservationNorm((4, 6, 5))
    frames = torch.from_numpy(rng.integers(0, 256, (10, 4, 6, 5), dtype=np.uint8))
    x = frames.float().contiguous(memory_format=torch.channels_last)

    def check(out):
        mean, var = norm.mean.double().numpy(), norm.var.double().numpy()
        want = np.clip((frames.double().numpy() / 255 - mean) / np.sqrt(var + 1e-5), -5, 5)
        np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-5, atol=1e-5)

    check(norm(x.clone(), 1 / 255, inplace=True))               # the initial statistics (0, 1)
    other = ObservationNorm((4, 6, 5))
    other.update(torch.from_numpy(rng.integers(0, 256, (30, 4, 6, 5), dtype=np.uint8)), 1 / 255)
    changes = [
        lambda: norm.update(torch.from_numpy(rng.integers(0, 256, (7, 4, 6, 5), dtype=np.uint8)), 1 / 255),
        lambda: norm.set_stats(other.stats()),
        lambda: norm.load_state_dict({"mean": torch.rand(4, 6, 5), "var": torch.rand(4, 6, 5) * 0.1,
                                      "count": torch.tensor(5.0, dtype=torch.float64)}),
        lambda: norm.var.mul_(4.0),
    ]
    for change in changes:
        before = norm(x.clone(), 1 / 255, inplace=True)
        change()
        after = norm(x.clone(), 1 / 255, inplace=True)
        check(after)
        assert not torch.allclose(before, after)                  # the change did change the output
        check(norm(x, 1 / 255))                                   # not in place: the same values
    # Another module's statistics passed in are used for that call only.
    assert not torch.equal(norm(x, 1 / 255, stats=other.stats()), norm(x, 1 / 255))
    check(norm(x, 1 / 255))
    # A copy made after the statistics changed normalises with the statistics it holds.
    fresh = ObservationNorm((4, 6, 5))
    fresh(x, 1 / 255)                                            # kept (mul, add) of the initial (0, 1)
    fresh.set_stats(other.stats())
    for copied in (copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        np.testing.assert_allclose(copied(x, 1 / 255).numpy(), other(x, 1 / 255).numpy(), rtol=1e-6, atol=1e-6)


def test_observation_norm_keeps_exact_running_statistics_and_travels_with_the_weights():
    from agents.obs_norm import ObservationNorm
    rng = np.random.default_rng(0)
    norm = ObservationNorm((3, 2))
    chunks = [rng.normal(5.0, 2.0, (n, 3, 2)) for n in (7, 1, 30)]
    for chunk in chunks:
        norm.update(torch.from_numpy(chunk).float())
    everything = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean.numpy(), everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), everything.var(0), rtol=1e-4)
    x = torch.from_numpy(rng.normal(5.0, 20.0, (4, 3, 2))).float()
    expected = np.clip((x.numpy() - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-5), -5, 5)
    np.testing.assert_allclose(norm(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert (norm(x).abs() == 5).any()    # some of these are beyond the clip
    # Frames as bytes with the 1/255 folded in: the same statistics and outputs as scaled floats.
    raw = torch.from_numpy(rng.integers(0, 256, (50, 3, 2), dtype=np.uint8))
    as_bytes, as_floats = ObservationNorm((3, 2)), ObservationNorm((3, 2))
    as_bytes.update(raw, 1 / 255)
    as_floats.update(raw.double().div(255).float())
    np.testing.assert_allclose(as_bytes.mean.numpy(), raw.double().numpy().mean(0) / 255, rtol=1e-5)
    np.testing.assert_allclose(as_bytes.var.numpy(), (raw.double().numpy() / 255).var(0), rtol=1e-4)
    np.testing.assert_allclose(as_bytes(raw.float(), 1 / 255).numpy(), as_floats(raw.float() / 255).numpy(),
                               rtol=1e-4, atol=1e-5)
    # Stacked frames laid out channels-last (as the conv torso runs): the same values, the output
    # keeps the layout (else the torso copies it back), and in place on a float copy too.
    frames = torch.from_numpy(rng.integers(0, 256, (20, 4, 6, 5), dtype=np.uint8))
    stacks = ObservationNorm((4, 6, 5))
    stacks.update(frames, 1 / 255)
    scaled = frames.double().numpy() / 255
    expected = np.clip((scaled - scaled.mean(0)) / np.sqrt(scaled.var(0) + 1e-5), -5, 5)
    channels_last = frames.float().contiguous(memory_format=torch.channels_last)
    for out in (stacks(channels_last, 1 / 255), stacks(channels_last.clone(), 1 / 255, inplace=True)):
        assert out.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stacks(frames.float(), 1 / 255).numpy(), expected, rtol=1e-4, atol=1e-5)
    floats = frames.float()
    stacks(floats, 1 / 255)
    assert torch.equal(floats, frames.float())    # not in place unless asked

    # In the learner: updated from each batch's frames (scaled by 1/255) before the forward pass,
    # and part of the published weights.
    learner = Learner(tiny_config("lstm", "model.obs_norm=true", "model.torso=nature"), image_space((4, 36, 36)),
                      NUM_ACTIONS)
    batch = random_batch((4, 36, 36), torch.uint8, NUM_ACTIONS, T, B, learner.agent.initial_state(B), seed=0)
    learner.step(batch)
    frames = batch["obs"].reshape(-1, 4, 36, 36).double().numpy() / 255
    np.testing.assert_allclose(learner.agent.obs_norm.mean.numpy(), frames.mean(0), rtol=1e-5)
    np.testing.assert_allclose(learner.agent.obs_norm.var.numpy(), frames.var(0), rtol=1e-3, atol=1e-6)
    _, weights = learner.weights()
    assert torch.equal(weights["obs_norm.mean"], learner.agent.obs_norm.mean)


def _compact(seed, T1, B, S=4, H=9, W=7, p_reset=0.3):
    """Compact frames (learner/batch.py's form) with game starts, row 0 among them for some rows."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (T1, B, H, W), generator=g, dtype=torch.uint8)
    stack0 = torch.randint(0, 256, (B, S, H, W), generator=g, dtype=torch.uint8)
    reset = torch.rand(T1, B, generator=g) < p_reset
    reset[0, 0], reset[1, 0] = True, True              # a start at row 0, and two in a row
    return frames, stack0, reset


def _stacks_by_hand(frames, stack0, reset):
    """float64 [T+1, B, S, H, W]: channel c of stack t is the frame of row t-S+1+c (rows < 0 from
    stack0), or zeros if a game started after that row, at or before row t."""
    T1, B = reset.shape
    S = stack0.shape[1]
    out = np.zeros((T1, B, S, *frames.shape[2:]))
    for t in range(T1):
        for b in range(B):
            starts = [r for r in range(t + 1) if reset[r, b]]
            for c in range(S):
                row = t - S + 1 + c
                if starts and row < starts[-1]:
                    continue
                out[t, b, c] = stack0[b, row + S - 1].numpy() if row < 0 else frames[row, b].numpy()
    return out


def test_frame_stacks_and_their_statistics_from_the_compact_form_match_stacks_built_by_hand():
    from learner.batch import rebuild_obs, stack_moments
    frames, stack0, reset = _compact(0, T1=7, B=3)
    expected = _stacks_by_hand(frames, stack0, reset)
    stacks = rebuild_obs(frames, stack0, reset)
    np.testing.assert_array_equal(stacks.numpy(), expected)
    # laid out as the conv torso reads them: flattened over (T+1, B), channels-last with no copy
    flat = stacks.flatten(0, 1)
    assert flat.is_contiguous(memory_format=torch.channels_last) and flat.data_ptr() == stacks.data_ptr()
    n, mean, var = stack_moments(frames, stack0, reset, 1 / 255)
    scaled = expected.reshape(-1, *expected.shape[2:]) / 255
    assert n == 7 * 3
    np.testing.assert_allclose(mean.numpy(), scaled.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(var.numpy(), scaled.var(0), rtol=1e-5, atol=1e-9)


def test_batches_prepared_ahead_train_as_batches_prepared_in_the_update():
    """The service prepares each batch in its loader thread while the update trains on the one
    before: the observation statistics then chain from prepared batch to prepared batch, but the
    agent's (published) statistics after each update are those of the batches trained on so far,
    and the weights come out as those of a learner that does everything inside step."""
    cfg = tiny_config("lstm", "model.obs_norm=true", "model.torso=nature")
    space = image_space((4, 36, 36))
    inline, ahead = Learner(cfg, space, NUM_ACTIONS), Learner(cfg, space, NUM_ACTIONS)
    batches = []
    for k in range(4):
        batch = random_batch((4, 36, 36), torch.uint8, NUM_ACTIONS, T, B, inline.agent.initial_state(B), seed=k)
        del batch["obs"]
        batch["frames"], batch["stack0"], batch["stack_reset"] = _compact(k, T + 1, B, H=36, W=36)
        batches.append(batch)
    prepared = [ahead.prepare(batches[0]), ahead.prepare(batches[1])]
    for k, batch in enumerate(batches):
        inline.step(batch)
        ahead.step(prepared.pop(0))
        if k + 2 < len(batches):
            prepared.append(ahead.prepare(batches[k + 2]))
        seen = np.concatenate([_stacks_by_hand(b["frames"], b["stack0"], b["stack_reset"]).reshape(-1, 4, 36, 36)
                               for b in batches[:k + 1]]) / 255
        np.testing.assert_allclose(ahead.agent.obs_norm.mean.numpy(), seen.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ahead.agent.obs_norm.var.numpy(), seen.var(0), rtol=1e-4, atol=1e-7)
        assert ahead.agent.obs_norm.count.item() == len(seen)
    for (name, p), q in zip(inline.agent.state_dict().items(), ahead.agent.state_dict().values()):
        assert torch.equal(p, q), name
    # A load (a resume) restarts the chain from the loaded statistics, not from the batches
    # prepared before it.
    fresh = Learner(cfg, space, NUM_ACTIONS)
    ahead.prepare(batches[0])
    ahead.load_payload(fresh.payload())
    ahead.step(ahead.prepare(batches[3]))
    only = _stacks_by_hand(batches[3]["frames"], batches[3]["stack0"], batches[3]["stack_reset"]).reshape(-1, 4, 36, 36) / 255
    np.testing.assert_allclose(ahead.agent.obs_norm.mean.numpy(), only.mean(0), rtol=1e-5, atol=1e-7)
    assert ahead.agent.obs_norm.count.item() == len(only)


@pytest.mark.parametrize("loss", ["impala", "appo"])
def test_forced_steps_stay_out_of_the_policy_loss(loss):
    """A forced step (the env's FIRE after a life loss) is the environment's move: whatever action
    and behaviour logits it records, the update is the same (importance weight 1, no policy or
    entropy term there); the same change on a chosen step does change it."""
    cfg = tiny_config("rdn", f"learner.loss={loss}")
    base = Learner(cfg, VECTOR, NUM_ACTIONS)
    batch = _batch(base, seed=4)
    batch["forced"][2, 1] = batch["forced"][3, 1] = True

    def losses_of(b):
        learner = Learner(cfg, VECTOR, NUM_ACTIONS)
        learner.agent.load_state_dict(base.agent.state_dict())
        stats = learner.step(b)
        return [stats[k] for k in ("loss/pg", "loss/baseline", "loss/entropy", "learner/grad_norm")]

    reference_losses = losses_of(batch)
    # The entropy term by hand: the policy's Σ π log π on the chosen steps only, times its cost.
    with torch.no_grad():
        logits, _ = base.agent.unroll(batch["obs"], batch["reward"], batch["first"], batch["core_state"])
    log_pi = torch.log_softmax(logits[:-1].double(), -1)
    neg_entropy = (log_pi.exp() * log_pi).sum(-1)
    assert reference_losses[2] == pytest.approx(0.01 * neg_entropy[~batch["forced"][:-1]].sum().item(), rel=1e-5)
    other = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    other["action"][2, 1] = (batch["action"][2, 1] + 1) % NUM_ACTIONS
    other["logits"][3, 1] = torch.randn(NUM_ACTIONS) * 5
    np.testing.assert_allclose(losses_of(other), reference_losses, rtol=1e-6, atol=1e-7)
    chosen = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    chosen["action"][4, 1] = (batch["action"][4, 1] + 1) % NUM_ACTIONS
    assert not np.allclose(losses_of(chosen), reference_losses, rtol=1e-6, atol=1e-7)


def test_a_compact_frame_batch_trains_like_its_rebuilt_stacks():
    from learner.batch import rebuild_obs
    cfg = tiny_config("lstm", "model.torso=nature")
    a, b = (Learner(cfg, image_space((4, 36, 36)), NUM_ACTIONS) for _ in range(2))
    g = torch.Generator().manual_seed(0)
    compact = random_batch((4, 36, 36), torch.uint8, NUM_ACTIONS, T, B, a.agent.initial_state(B), seed=3)
    del compact["obs"]
    compact["frames"] = torch.randint(0, 256, (T + 1, B, 36, 36), generator=g, dtype=torch.uint8)
    compact["stack0"] = torch.randint(0, 256, (B, 4, 36, 36), generator=g, dtype=torch.uint8)
    compact["stack_reset"] = torch.rand(T + 1, B, generator=g) < 0.3
    full = {k: v for k, v in compact.items() if k not in ("frames", "stack0", "stack_reset")}
    full["obs"] = rebuild_obs(compact["frames"], compact["stack0"], compact["stack_reset"])
    assert full["obs"].shape == (T + 1, B, 4, 36, 36)
    sa, sb = a.step(compact), b.step(full)
    assert sa["loss/total"] == sb["loss/total"]
    for p, q in zip(a.agent.parameters(), b.agent.parameters()):
        assert torch.equal(p, q)
