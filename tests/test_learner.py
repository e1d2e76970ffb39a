"""The learner: one update against an independent computation, overfitting with every core, the
lr schedule, the non-finite guard, published weights, bad batches."""
import copy

import numpy as np
import pytest
import torch

from fwp_core import CORES
from learner import Learner, random_batch

from .learner_cases import NUM_ACTIONS, VECTOR, make_agent, reference, tiny_config

T, B = 6, 3


def _batch(learner, seed=0, T=T, B=B):
    batch = random_batch(VECTOR.shape, torch.float32, NUM_ACTIONS, T, B, learner.agent.initial_state(B), seed)
    batch["reward"] *= 3  # some rewards beyond the clip
    return batch


def _params(learner):
    return {k: v.detach().clone() for k, v in learner.agent.named_parameters()}


def test_one_update_matches_an_independent_computation():
    cfg = tiny_config("rdn", "learner.discount=0.9", "learner.vtrace_lambda=0.95", "learner.grad_clip=0.5",
                      "learner.entropy_cost=0.02", "learner.baseline_cost=0.4", "learner.clip_pg_rho=1.5")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS, frames_per_step=4)
    batch = _batch(learner)
    assert batch["first"][1:].any()  # episode ends inside the unroll: the discounts must cut there

    # Reference: torchbeast's conventions written out in float64 numpy (vtrace by the double loop),
    # the gradients through autograd on a copy (targets as constants), then RMSprop's first step.
    ref, grads = reference(copy.deepcopy(learner.agent), batch, discount=0.9, lam=0.95, clip_pg_rho=1.5,
                           baseline_cost=0.4, entropy_cost=0.02, grad_clip=0.5)
    pg, base, ent, norm = ref["pg"], ref["base"], ref["ent"], ref["norm"]
    expected = {}
    for (name, p), g in zip(learner.agent.named_parameters(), grads):
        expected[name] = (p.detach().double() - 6e-4 * g / (torch.sqrt((1 - 0.99) * g * g) + 0.01)).float()

    stats = learner.step(batch)
    assert stats["loss/pg"] == pytest.approx(pg, rel=1e-4, abs=1e-5)
    assert stats["loss/baseline"] == pytest.approx(base, rel=1e-4)
    assert stats["loss/entropy"] == pytest.approx(ent, rel=1e-4)
    assert stats["loss/total"] == pytest.approx(pg + base + ent, rel=1e-4, abs=1e-5)
    assert stats["learner/grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert norm > 0.5  # so the clip did act
    assert stats["learner/lr"] == pytest.approx(6e-4) and stats["learner/skipped_updates"] == 0
    for name, p in learner.agent.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-4, atol=2e-6, msg=name)
    assert learner.version == 1 and learner.frames == T * B * 4


@pytest.mark.parametrize("core", CORES)
def test_overfits_a_fixed_batch(core):
    """Rewards favour action 0 under a uniform behaviour policy. Fitting the batch means the baseline
    loss falls and the policy moves to action 0. (The total loss is a policy-gradient surrogate whose
    targets move with the policy, so it need not fall; its baseline part must.)"""
    cfg = tiny_config(core, "learner.lr=3e-3", "learner.lr_schedule=constant", "learner.discount=0.5",
                      "learner.loss_reduction=mean")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS)
    batch = _batch(learner, seed=1, T=10, B=4)
    batch["logits"].zero_()
    batch["reward"][1:] = (batch["action"][:-1] == 0).float() * 2 - 1

    def prob_of_action_0():
        with torch.no_grad():
            logits, _ = learner.agent.unroll(batch["obs"], batch["reward"], batch["first"], batch["core_state"])
        return logits.softmax(-1)[..., 0].mean().item()

    p_start = prob_of_action_0()
    history = [learner.step(batch) for _ in range(60)]
    p_end = prob_of_action_0()
    assert history[-1]["loss/baseline"] < 0.4 * history[0]["loss/baseline"], (history[0], history[-1])
    assert p_end > 0.85 and p_end > p_start + 0.4, (p_start, p_end)
    assert learner.version == 60 and learner.skipped_updates == 0


def test_lr_decays_linearly_to_zero_over_the_frames():
    frames_per_update = T * B * 4
    cfg = tiny_config("lstm", f"run.total_frames={5 * frames_per_update}")
    learner = Learner(cfg, VECTOR, NUM_ACTIONS, frames_per_step=4)
    batch = _batch(learner)
    lrs = [learner.step(batch)["learner/lr"] for _ in range(7)]
    np.testing.assert_allclose(lrs, [6e-4 * (1 - k / 5) for k in range(5)] + [0.0, 0.0], atol=1e-12)
    assert learner.frames == 7 * frames_per_update
    assert [g["lr"] for g in learner.optimizer.param_groups] == [0.0]
    constant = Learner(tiny_config("lstm", "run.total_frames=10", "learner.lr_schedule=constant"), VECTOR, NUM_ACTIONS)
    assert [constant.step(batch)["learner/lr"] for _ in range(2)] == [6e-4, 6e-4]


def _optimizer_state(learner):
    return {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in learner.optimizer.state_dict()["state"].items()}


def _assert_untouched(learner, params, opt_state, version):
    for name, p in learner.agent.named_parameters():
        assert torch.equal(p, params[name]), name
        assert p.grad is None
    after = _optimizer_state(learner)
    assert after.keys() == opt_state.keys()
    for i in after:
        for k in after[i]:
            assert torch.equal(torch.as_tensor(after[i][k]), torch.as_tensor(opt_state[i][k]))
    assert learner.version == version


def test_non_finite_loss_skips_the_update():
    learner = Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS)
    learner.step(_batch(learner, seed=1))  # the optimiser has state worth protecting
    params, opt_state = _params(learner), _optimizer_state(learner)
    bad = _batch(learner, seed=2)
    bad["reward"][3, 1] = float("nan")
    stats = learner.step(bad)
    assert not np.isfinite(stats["loss/total"]) and stats["learner/skipped_updates"] == 1
    _assert_untouched(learner, params, opt_state, version=1)
    stats = learner.step(_batch(learner, seed=3))  # and it goes on afterwards
    assert learner.version == 2 and stats["learner/skipped_updates"] == 1
    assert not torch.equal(learner.agent.policy.weight, params["policy.weight"])


def test_infinite_gradient_with_a_finite_loss_skips_the_update():
    learner = Learner(tiny_config("lstm"), VECTOR, NUM_ACTIONS)
    learner.step(_batch(learner, seed=1))
    params, opt_state = _params(learner), _optimizer_state(learner)
    hook = learner.agent.fc.weight.register_hook(lambda g: g + float("inf"))
    stats = learner.step(_batch(learner, seed=2))
    hook.remove()
    assert np.isfinite(stats["loss/total"]) and not np.isfinite(stats["learner/grad_norm"])
    assert stats["learner/skipped_updates"] == 1
    _assert_untouched(learner, params, opt_state, version=1)


def test_weights_are_a_versioned_cpu_copy():
    learner = Learner(tiny_config("delta_net"), VECTOR, NUM_ACTIONS)
    version, weights = learner.weights()
    assert version == 0 and set(weights) == set(learner.agent.state_dict())
    learner.step(_batch(learner))
    version2, weights2 = learner.weights()
    assert version2 == 1 and all(w.device.type == "cpu" for w in weights2.values())
    assert not torch.equal(weights["policy.weight"], weights2["policy.weight"])  # a copy, not a view
    # An actor's agent loads them and acts like the learner's.
    actor = make_agent(VECTOR, NUM_ACTIONS, learner.cfg)
    actor.load_state_dict(weights2)
    obs = torch.randn(4, 6)
    r, first = torch.zeros(4), torch.ones(4, dtype=torch.bool)
    torch.testing.assert_close(actor.act(obs, r, first, actor.initial_state(4))[1],
                               learner.agent.act(obs, r, first, learner.agent.initial_state(4))[1])


def test_same_seed_same_initial_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS), Learner(tiny_config("rdn"), VECTOR, NUM_ACTIONS)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(x, y) for x, y in zip(a.agent.parameters(), b.agent.parameters()))
    c = Learner(tiny_config("rdn", "run.seed=1"), VECTOR, NUM_ACTIONS)
    assert not torch.equal(a.agent.policy.weight, c.agent.policy.weight)


def test_bad_batches_and_settings_are_named():
    learner = Learner(tiny_config("lstm"), VECTOR, NUM_ACTIONS)
    batch = _batch(learner)
    with pytest.raises(ValueError, match="learner batch lacks last_action, logits"):
        learner.step({k: v for k, v in batch.items() if k not in ("last_action", "logits")})
    with pytest.raises(ValueError, match=r"batch logits has shape \(7, 3, 5\), expected \[7, 3, 3\] \(T\+1=7, B=3, A=3\)"):
        learner.step({**batch, "logits": torch.zeros(7, 3, 5)})
    with pytest.raises(ValueError, match=r"batch first has dtype torch.float32, expected torch.bool"):
        learner.step({**batch, "first": batch["first"].float()})
    with pytest.raises(ValueError, match=r"batch obs has shape \(7, 3, 5\), expected \[T\+1, B, 6\]"):
        learner.step({**batch, "obs": torch.zeros(7, 3, 5)})
    with pytest.raises(ValueError, match="frames_per_step must be a positive integer, got 0"):
        Learner(tiny_config("lstm"), VECTOR, NUM_ACTIONS, frames_per_step=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="learner.device=cuda but no CUDA device is visible"):
            Learner(tiny_config("lstm", "learner.device=cuda"), VECTOR, NUM_ACTIONS)
