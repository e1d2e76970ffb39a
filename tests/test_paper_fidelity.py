"""The atari_paper preset against the paper's RL code (IDSIA/recurrent-fwp,
reinforcement_learning/torchbeast), item by item: resolved values, feature maps, the truncated
gradient, initial weights, biases, the parameter count worked out by hand, and the paper's
evaluation protocol against a hand-stepped game."""
import math

import numpy as np
import pytest
import torch
from ale_py.vector_env import AtariVectorEnv

from configs import load_config
from fwp_core import make_core
from fwp_core.layers import FastWeightLayer, feature_map
from learner import Learner

from .learner_cases import image_space


def test_the_resolved_atari_paper_config():
    cfg = load_config("atari_paper")
    c, lc, rc, e = cfg.core, cfg.learner, cfg.run, cfg.env
    assert (cfg.model.core, cfg.model.torso, cfg.model.hidden_size) == ("rdn", "impala_resnet", 256)
    assert (c.d_model, c.num_layers, c.num_heads, c.head_dim, c.ff_dim) == (128, 2, 4, 32, 512)
    assert (c.feature_map, c.truncate_fast_weight_grad, c.fw_bias, c.rdn_init) == ("paper", True, False, "paper")
    assert (lc.optimizer, lc.lr, lc.lr_schedule, lc.rmsprop_alpha, lc.rmsprop_eps, lc.rmsprop_momentum) == \
        ("rmsprop", 6e-4, "linear", 0.99, 0.01, 0.0)
    assert (lc.batch_size, lc.unroll_length, lc.discount, lc.entropy_cost, lc.baseline_cost) == (32, 50, 0.99, 0.01, 0.5)
    assert (lc.grad_clip, lc.loss, lc.loss_reduction, lc.reward_clip, lc.vtrace_lambda) == (40.0, "impala", "sum", 1.0, 1.0)
    assert rc.total_frames == 200_000_000 * 4 and rc.save_at_frames == (50_000_000 * 4,)   # agent steps x frame skip
    assert rc.num_actors * e.num_envs == 48 and rc.max_rollouts_in_flight == 1
    assert (e.episodic_life, e.fire_reset, e.fire_on_life_loss, e.sticky_actions, e.frame_skip) == (True, True, True, 0.0, 4)
    bptt = load_config("atari_paper_bptt")
    assert not bptt.core.truncate_fast_weight_grad
    bptt.core.truncate_fast_weight_grad = True
    assert bptt == cfg                                        # the only difference


def test_elu_p1_feature_map_and_each_rules_paper_choice():
    x = torch.randn(5, 7, dtype=torch.float64)
    elu1 = torch.where(x > 0, x + 1, torch.exp(x))            # elu(x) + 1, written out
    torch.testing.assert_close(feature_map(x, "elu_p1"), elu1 / (elu1.sum(-1, keepdim=True) + 1e-5))
    chosen = {rule: FastWeightLayer(8, 2, 4, rule).phi for rule in ("sum_rule", "delta_rule", "rdn", "delta_rnn", "delta_lstm")}
    assert chosen == {"sum_rule": "elu_p1", "delta_rule": "elu_p1", "rdn": "softmax", "delta_rnn": "softmax",
                      "delta_lstm": "elu_p1"}
    assert FastWeightLayer(8, 2, 4, "delta_rule", "softmax").phi == "softmax"


def _jacobian_row(core, T, t):
    """|d y_t / d x_s| summed, for each s: which steps reach step t's output."""
    x = torch.randn(T, 1, 9, dtype=torch.float64, requires_grad=True)
    y, _ = core(x, core.initial_state(1))
    (g,) = torch.autograd.grad(y[t].sum(), x)
    return g.abs().sum(dim=(1, 2))


def test_truncation_cuts_time_inside_the_rfwp_core_but_not_the_lstm():
    torch.manual_seed(0)
    kw = dict(d_model=12, num_layers=2, num_heads=2, head_dim=4, ff_dim=16, hidden_size=12, truncate_fast_weight_grad=True)
    for name in ("linear_transformer", "delta_net", "rdn", "delta_rnn", "delta_lstm"):
        g = _jacobian_row(make_core(name, 9, **kw).double(), 5, 4)
        assert (g[:4] == 0).all() and g[4] > 0, (name, g)
    g = _jacobian_row(make_core("lstm", 9, **kw).double(), 5, 4)    # the paper's LSTM: full BPTT
    assert (g > 0).all(), g


def test_rdn_initial_recurrent_weights():
    torch.manual_seed(0)
    D = 32
    paper = FastWeightLayer(128, 64, D, "rdn", rdn_init="paper")
    for w in (paper.R, paper.rb):                              # 196,608 and 2,048 draws
        assert w.std().item() == pytest.approx(D ** -0.5, rel=0.1) and abs(w.mean().item()) < 0.01
    small = FastWeightLayer(128, 64, D, "rdn")
    assert small.R.std().item() == pytest.approx(0.1 * D ** -0.5, rel=0.1)
    assert torch.count_nonzero(small.rb) == 0


def _paper_agent(core, tmp_path=None):
    cfg = load_config("atari_paper", [f"model.core={core}", "learner.device=cpu"])
    return Learner(cfg, image_space((4, 84, 84)), 6, 4).agent


def test_no_biases_in_the_fast_weight_layers_of_the_paper_preset():
    agent = _paper_agent("rdn")
    for layer in agent.core.fw_layers:
        assert layer.slow_net.bias is None and layer.out_proj.bias is None
    assert agent.core.input_proj.bias is not None              # the paper's input_proj has one


def test_parameter_counts_worked_out_from_the_layer_sizes():
    conv = lambda c_in, c_out: c_in * c_out * 9 + c_out        # noqa: E731  3x3 with bias
    torso, c_in = 0, 4
    for c in (16, 32, 32):                                     # stage conv + two residual blocks of two convs
        torso += conv(c_in, c) + 4 * conv(c, c)
        c_in = c
    side = 84
    for _ in range(3):
        side = (side + 2 - 3) // 2 + 1                         # max-pool 3, stride 2, padding 1
    fc = 32 * side * side * 256 + 256
    assert side == 11                                          # 3872 features, as the paper's fc
    inp, A = 256 + 1, 6                                        # features and the clipped reward; Pong
    d, H, D, ff = 128, 4, 32, 512
    layer = (2 * d                                             # LayerNorm before the fast-weight rule
             + d * H * (3 * D + 1)                             # slow net: q, k, v, beta per head, no bias
             + H * D * d                                       # output projection, no bias
             + 3 * H * D * D + H * D                           # R_q, R_k, R_v and r_b
             + 2 * d + (d * ff + ff) + (ff * d + d))           # LayerNorm and the feed-forward block
    rdn = torso + fc + (inp * d + d) + 2 * layer + (d * A + A) + (d + 1)
    lstm = torso + fc + 4 * 256 * (inp + 256) + 2 * 4 * 256 + (256 * A + A) + (256 + 1)
    count = lambda agent: sum(p.numel() for p in agent.parameters())  # noqa: E731
    assert count(_paper_agent("rdn")) == rdn
    assert count(_paper_agent("lstm")) == lstm


def test_delta_lstm_output_is_scaled_by_one_over_sqrt_d_head():
    torch.manual_seed(0)
    layer = FastWeightLayer(8, 2, 4, "delta_lstm").double()
    seen = {}
    layer.out_proj.register_forward_pre_hook(lambda m, args: seen.update(y=args[0]))
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    _, (W, R, h, c) = layer(x, layer.initial_state(2, dtype=torch.float64))
    torch.testing.assert_close(seen["y"][-1], h.flatten(1) / 2.0)    # 1 / sqrt(4); the state keeps h


def test_life_tally_records_lives_and_drops_negative_episodes():
    from experiments.evaluate import LifeTally
    tally = LifeTally(2, episodes=2, no_negative=True)
    # env 0: a life of 1 + 2 = 3; then -1 drops that episode and a new one counts 4.
    # env 1: -1 drops its first episode at once; then lives of 0 + 5 and 1 + 0.
    steps = [([1, -1], [False, False]), ([2, 0], [True, False]),
             ([0, 5], [False, True]), ([-1, 1], [False, False]), ([4, 0], [True, True])]
    rejected = [tally.add(np.array(r, float), np.array(f)) for r, f in steps]
    assert tally.lives == [[3.0, 4.0], [5.0, 1.0]] and tally.dropped == 2
    assert [r.tolist() for r in rejected] == [[False, True], [False, False], [False, False], [True, False],
                                              [False, False]]
    plain = LifeTally(1, episodes=1)
    plain.add(np.array([-2.0]), np.array([False]))
    plain.add(np.array([1.0]), np.array([True]))
    assert plain.lives == [[-1.0]] and plain.done()


def test_paper_protocol_scores_single_lives_greedily(tmp_path):
    """eval --protocol paper on Breakout (5 lives a game) against the raw AtariVectorEnv stepped
    by hand: run r on an env seeded seed + r, the agent greedy (made to prefer RIGHT, never FIRE),
    its core reset at every life's end, FIRE then action 2 played after each life loss (without
    them the ball would never relaunch), one score and one length per life."""
    from experiments.evaluate import evaluate, load_agent
    cfg = load_config(overrides=[
        "env.id=ALE/Breakout-v5", "model.torso=nature", "model.core=lstm", "core.hidden_size=16",
        "model.hidden_size=16", "env.max_episode_frames=6000", "learner.device=cpu", f"run.logdir={tmp_path}"])
    learner = Learner(cfg, image_space((4, 84, 84)), 4, 4)
    with torch.no_grad():
        learner.agent.policy.bias[2] += 5.0         # greedy RIGHT: the paddle sits on the right wall
    learner.save(tmp_path / "checkpoint.pt")
    seed, runs, episodes = 77, 2, 6
    result = evaluate(tmp_path, episodes, seed=seed, protocol="paper", repeats=runs)

    agent, _, _ = load_agent(tmp_path / "checkpoint.pt")
    ref = AtariVectorEnv("breakout", runs, num_threads=1, autoreset_mode="SameStep", reward_clipping=False,
                         episodic_life=False, life_loss_info=False, max_num_frames_per_episode=6000)
    obs, info = ref.reset(seed=seed)
    lives_left, state = info["lives"], agent.initial_state(runs)
    reward, first, last = np.zeros(runs, np.float32), np.ones(runs, bool), np.zeros(runs, np.int64)
    due, running, steps = [[] for _ in range(runs)], np.zeros(runs), np.zeros(runs, int)
    scores, lengths = [[] for _ in range(runs)], [[] for _ in range(runs)]
    while any(len(s) < episodes for s in scores):
        with torch.no_grad():
            action, _, state = agent.act(torch.from_numpy(obs), torch.from_numpy(reward), torch.from_numpy(first),
                                         state, torch.from_numpy(np.where(first, 0, last)), greedy=True)
        action = action.numpy()
        for k in range(runs):
            if due[k]:
                action[k] = due[k].pop(0)
        obs, reward, terminated, truncated, info = ref.step(action)
        reward = reward.astype(np.float32)
        game_over = terminated | truncated
        lost = ~game_over & (info["lives"] < lives_left)
        lives_left, last = info["lives"], action
        running, steps = running + reward, steps + 1
        first = game_over | lost
        for k in np.flatnonzero(first):
            if len(scores[k]) < episodes:
                scores[k].append(float(running[k]))
                lengths[k].append(int(steps[k]))
            running[k], steps[k] = 0, 0
            if lost[k]:
                due[k] = [1, 2]
    ref.close()
    assert result["returns"] == [x for s in scores for x in s]
    assert result["lengths"] == [n for x in lengths for n in x]
    assert max(result["lengths"]) < 1000                    # every life ended by a lost ball, not the cap
    assert result["runs"] == pytest.approx([np.mean(s) for s in scores])
    assert result["mean"] == pytest.approx(np.mean([np.mean(s) for s in scores]))
    assert result["std"] == pytest.approx(np.std([np.mean(s) for s in scores]))
    assert result["greedy"] and result["protocol"] == "paper" and result["dropped"] == 0
    assert math.isfinite(result["max"])


def test_eval_command_line_takes_the_paper_protocol(tmp_path, capsys):
    import launch
    cfg = load_config(overrides=["env.id=ALE/Breakout-v5", "model.torso=nature", "model.core=lstm",
                                 "core.hidden_size=16", "model.hidden_size=16", "learner.device=cpu"])
    Learner(cfg, image_space((4, 84, 84)), 4, 4).save(tmp_path / "checkpoint.pt")
    assert launch.main(["eval", "--checkpoint", str(tmp_path), "--protocol", "paper", "--episodes", "2",
                        "--repeats", "3"]) == 0
    assert "3 runs of 2 lives (the paper's protocol, greedy)" in capsys.readouterr().out
    import json
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["protocol"] == "paper" and len(result["runs"]) == 3 and len(result["returns"]) == 6
    assert launch.main(["eval", "--checkpoint", str(tmp_path), "--protocol", "paper", "--video"]) == 2
    assert "drop it with --protocol paper" in capsys.readouterr().err
