"""The agent: act stepped T times equals one unroll, torsos, input scaling, sampling, bad input."""
import numpy as np
import pytest
import torch

from agents import make_torso
from fwp_core import CORES

from .learner_cases import NUM_ACTIONS, VECTOR, image_space, make_agent, tiny_config


def _sequence(agent, T, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    if agent.obs_is_uint8:
        obs = torch.randint(0, 256, (T + 1, B, *agent.obs_shape), generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn(T + 1, B, *agent.obs_shape, generator=g, dtype=torch.float64)
    reward = torch.randn(T + 1, B, generator=g, dtype=torch.float64) * 2  # some beyond the clip
    reset = torch.zeros(T + 1, B, dtype=torch.bool)
    reset[0, 0] = reset[2, 1] = reset[T, 0] = True  # resets inside the sequence, not only at its start
    last_action = torch.randint(0, NUM_ACTIONS, (T + 1, B), generator=g)
    state = tuple(torch.randn(s.shape, generator=g, dtype=torch.float64) * 0.3 for s in agent.initial_state(B))
    return obs, reward, reset, state, last_action


def _step_by_step_equals_unroll(agent, T=5, B=2):
    obs, reward, reset, state0, last_action = _sequence(agent, T, B)
    logits, baseline = agent.unroll(obs, reward, reset, state0, last_action)
    assert logits.shape == (T + 1, B, NUM_ACTIONS) and baseline.shape == (T + 1, B)
    state, stepped = state0, []
    for t in range(T + 1):
        action, logits_t, state = agent.act(obs[t], reward[t], reset[t], state, last_action[t])
        assert action.shape == (B,) and action.dtype == torch.int64
        stepped.append(logits_t)
    torch.testing.assert_close(torch.stack(stepped), logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use_last_action", [False, True])
@pytest.mark.parametrize("core", CORES)
def test_act_stepped_equals_unroll(core, use_last_action):
    torch.manual_seed(0)
    agent = make_agent(VECTOR, NUM_ACTIONS, tiny_config(core, f"model.use_last_action={use_last_action}")).double()
    _step_by_step_equals_unroll(agent)


@pytest.mark.parametrize("torso,shape", [("impala_resnet", (4, 20, 20)), ("nature", (4, 36, 36))])
def test_act_stepped_equals_unroll_with_conv_torsos(torso, shape):
    torch.manual_seed(0)
    agent = make_agent(image_space(shape), NUM_ACTIONS, tiny_config("lstm", f"model.torso={torso}")).double()
    _step_by_step_equals_unroll(agent, T=3)


@pytest.mark.parametrize("torso,shape", [("nature", (4, 36, 36)), ("auto", None)])
def test_last_row_without_grad_gives_the_loss_the_same_gradients(torso, shape):
    """The learner's unroll(last_row_grad=False): row T's torso features are a constant, which is
    what they are to a loss that uses row T only as the bootstrap V(x_T), detached. Reference: the
    plain unroll, all rows through autograd, the same loss."""
    torch.manual_seed(0)
    space = VECTOR if shape is None else image_space(shape)
    agent = make_agent(space, NUM_ACTIONS, tiny_config("rdn", f"model.torso={torso}")).double()
    obs, reward, reset, state, last_action = _sequence(agent, T=3, B=2)

    def grads(last_row_grad, use_last_row=False):
        agent.zero_grad()
        logits, baseline = agent.unroll(obs, reward, reset, state, last_action, last_row_grad=last_row_grad)
        loss = (logits[:-1] ** 2).sum() + ((baseline[:-1] - baseline[-1].detach()) ** 2).sum()
        if use_last_row:
            loss = logits[-1].sum()
        loss.backward()
        return logits.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in agent.named_parameters()}

    logits, full = grads(True)
    logits_cut, cut = grads(False)
    torch.testing.assert_close(logits_cut, logits, rtol=1e-12, atol=1e-12)
    for name in full:
        assert full[name] is not None and full[name].abs().sum() > 0, name
        torch.testing.assert_close(cut[name], full[name], rtol=1e-10, atol=1e-12, msg=name)
    # And row T's features really are constants then: a loss on row T's own output, which the
    # full unroll differentiates through them too, gets another gradient for the torso's weights.
    _, last_full = grads(True, use_last_row=True)
    _, last_cut = grads(False, use_last_row=True)
    torso = [n for n in full if n.startswith(("torso.", "fc."))]
    assert torso and all(not torch.allclose(last_cut[n], last_full[n]) for n in torso if "weight" in n)


def test_last_action_and_reward_reach_the_core_and_rewards_are_clipped():
    torch.manual_seed(0)
    agent = make_agent(VECTOR, NUM_ACTIONS, tiny_config("lstm", "model.use_last_action=true")).double()
    obs, reward, reset, state, last_action = _sequence(agent, 3, 2)
    base = agent.unroll(obs, reward, reset, state, last_action)[0]
    assert not torch.allclose(base, agent.unroll(obs, reward, reset, state, (last_action + 1) % NUM_ACTIONS)[0])
    ones = torch.ones_like(reward)
    # reward_clip = 1: a reward of 5 reads as 1; 0.5 does not.
    torch.testing.assert_close(agent.unroll(obs, 5 * ones, reset, state, last_action)[0],
                               agent.unroll(obs, ones, reset, state, last_action)[0], rtol=0, atol=0)
    assert not torch.allclose(agent.unroll(obs, 0.5 * ones, reset, state, last_action)[0],
                              agent.unroll(obs, ones, reset, state, last_action)[0])
    agent.reward_clip = 0.0  # learner.reward_clip = 0: off
    assert not torch.allclose(agent.unroll(obs, 5 * ones, reset, state, last_action)[0],
                              agent.unroll(obs, ones, reset, state, last_action)[0])


def test_uint8_frames_are_scaled_by_1_over_255():
    import gymnasium as gym
    cfg = tiny_config("lstm")
    torch.manual_seed(0)
    byte_agent = make_agent(image_space(), NUM_ACTIONS, cfg).double()
    float_agent = make_agent(gym.spaces.Box(0.0, 1.0, (4, 20, 20), np.float32), NUM_ACTIONS, cfg).double()
    float_agent.load_state_dict(byte_agent.state_dict())
    obs, reward, reset, state, _ = _sequence(byte_agent, 2, 2)
    torch.testing.assert_close(byte_agent.unroll(obs, reward, reset, state)[0],
                               float_agent.unroll(obs.double() / 255.0, reward, reset, state)[0])


@pytest.mark.parametrize("torso,space", [("nature", image_space((4, 36, 36))), ("mlp", VECTOR)])
def test_observation_norm_never_writes_into_the_callers_observations(torso, space):
    """The normalisation runs in place only on the agent's own float copy of byte frames: float
    observations (a POPGym vector, float frames) come back untouched, and the outputs match an
    agent given a copy."""
    import gymnasium as gym
    cfg = tiny_config("lstm", "model.obs_norm=true", f"model.torso={torso}",
                      f"env.id={'CartPole-v1' if torso == 'mlp' else 'ALE/Pong-v5'}")   # an env it fits
    float_space = gym.spaces.Box(-1e3, 1e3, space.shape, np.float32)
    agent = make_agent(float_space, NUM_ACTIONS, cfg)
    obs, reward, reset, state, _ = _sequence(agent, 3, 2)
    obs, reward, state = obs.float() + 0.5, reward.float(), tuple(s.float() for s in state)
    if obs.dim() == 5:   # frames already channels-last, so the torso's layout change is no copy either
        obs = obs.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    agent.obs_norm.update(obs.reshape(-1, *agent.obs_shape), agent.obs_scale)   # statistics that are not the init's
    kept = obs.clone()
    logits = agent.unroll(obs, reward, reset, state)[0]
    assert torch.equal(obs, kept)
    torch.testing.assert_close(logits, agent.unroll(kept.clone(), reward, reset, state)[0])


def test_torso_sizes_on_atari_frames():
    # IMPALA ResNet: 84 -> 42 -> 21 -> 11 after three stride-2 pools, 32 channels: 3872 features.
    resnet = make_torso("impala_resnet", (4, 84, 84), 256)
    assert resnet.output_size == 32 * 11 * 11
    convs = [m for m in resnet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16] * 5 + [32] * 5 + [32] * 5  # stage conv + 2 blocks x 2
    assert all(c.kernel_size == (3, 3) for c in convs)
    pools = [m for m in resnet.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)
    # Nature: 84 -8/4-> 20 -4/2-> 9 -3/1-> 7, 64 channels: 3136 features.
    assert make_torso("nature", (4, 84, 84), 256).output_size == 64 * 7 * 7
    out = resnet(torch.zeros(3, 4, 84, 84))
    assert out.shape == (3, 3872)


def test_auto_torso_and_layout_errors():
    assert make_agent(image_space(), 4, tiny_config("lstm")).torso_name == "impala_resnet"
    assert make_agent(VECTOR, 4, tiny_config("lstm")).torso_name == "mlp"
    import gymnasium as gym
    with pytest.raises(ValueError, match=r"torso 'auto' takes images .* got an observation of shape \(3, 4\)"):
        make_agent(gym.spaces.Box(0, 1, (3, 4)), 4, tiny_config("lstm"))
    cfg = tiny_config("lstm")
    cfg.model.torso = "mlp"   # configs refuses mlp with an Atari env.id; the agent checks the space itself
    with pytest.raises(ValueError, match=r"torso 'mlp' needs a flat vector \[F\], got an observation of shape \(4, 20, 20\)"):
        make_agent(image_space(), 4, cfg)
    with pytest.raises(ValueError, match="num_actions must be a positive integer, got 0"):
        make_agent(VECTOR, 0, tiny_config("lstm"))


def test_bad_inputs_are_named():
    agent = make_agent(VECTOR, NUM_ACTIONS, tiny_config("lstm", "model.use_last_action=true"))
    state = agent.initial_state(2)
    obs, r, reset = torch.zeros(2, 6), torch.zeros(2), torch.zeros(2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"obs has shape \(1, 2, 5\), expected \[T, B, 6\]"):
        agent.act(torch.zeros(2, 5), r, reset, state, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"reset must be \[T, B\] = \[1, 2\]"):
        agent.act(obs, r, torch.zeros(3, dtype=torch.bool), state, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="use_last_action is on: last_action must be"):
        agent.act(obs, r, reset, state)


def test_act_samples_from_the_policy_and_greedy_takes_the_argmax():
    torch.manual_seed(0)
    agent = make_agent(VECTOR, NUM_ACTIONS, tiny_config("lstm"))
    with torch.no_grad():  # a peaked-but-not-degenerate policy: logits (0, 1, 2) whatever the input
        agent.policy.weight.zero_()
        agent.policy.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    N = 6000
    obs = np.random.default_rng(0).normal(size=(N, 6)).astype(np.float32)  # numpy in, as from an env
    action, logits, _ = agent.act(obs, np.zeros(N, np.float32), np.ones(N, bool), agent.initial_state(N))
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    freq = np.bincount(action.numpy(), minlength=3) / N
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / N)), (freq, p)
    greedy, _, _ = agent.act(obs, np.zeros(N, np.float32), np.ones(N, bool), agent.initial_state(N), greedy=True)
    assert (greedy == 2).all() and logits.shape == (N, 3) and not logits.requires_grad


@pytest.mark.parametrize("core", ["lstm", "rdn"])
def test_actor_bf16_runs_the_conv_torso_in_bfloat16_and_keeps_the_core_in_float32(core):
    torch.manual_seed(0)
    agent = make_agent(image_space((4, 36, 36)), NUM_ACTIONS, tiny_config(core, "model.torso=nature")).eval()
    obs, reward, reset, state, _ = _sequence(agent, 2, 3)
    state = tuple(s.float() for s in state)
    _, want, want_state = agent.act(obs[0], reward[0].float(), reset[0], state)
    seen = {}
    agent.fc.register_forward_hook(lambda m, i, o: seen.update(fc=o.dtype))
    agent.core.register_forward_pre_hook(lambda m, args: seen.update(core=args[0].dtype))
    agent.bf16_torso_on_cpu = True           # what Agent(..., bf16_torso_on_cpu=run.actor_bf16) sets
    _, got, got_state = agent.act(obs[0], reward[0].float(), reset[0], state)
    assert seen == {"fc": torch.bfloat16, "core": torch.float32}
    assert got.dtype == torch.float32 and all(s.dtype == torch.float32 for s in got_state)
    # bf16 keeps ~3 significant digits: close to the float32 logits, but not the same computation.
    torch.testing.assert_close(got, want, rtol=0, atol=3e-2)
    assert not torch.equal(got, want)
    for g, w in zip(got_state, want_state):
        torch.testing.assert_close(g, w, rtol=0, atol=3e-2)
    # The learner's unroll never sees the switch: same float32 path as before.
    agent.bf16_torso_on_cpu = False
    _, again, _ = agent.act(obs[0], reward[0].float(), reset[0], state)
    torch.testing.assert_close(again, want, rtol=0, atol=0)
