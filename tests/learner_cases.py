"""Small configs and observation spaces for the agent and learner tests (fast on 2 CPU cores), and an
independent computation of one learner update."""
import math

import gymnasium as gym
import numpy as np
import torch

from configs import load_config

from .test_vtrace import ground_truth

TINY_CORE = ["core.d_model=16", "core.num_layers=2", "core.num_heads=2", "core.head_dim=4",
             "core.ff_dim=16", "core.hidden_size=16", "model.hidden_size=16"]
VECTOR = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
NUM_ACTIONS = 3


def make_agent(observation_space, num_actions, cfg):
    """An Agent built from a whole Config, as the learner builds its own."""
    from agents import Agent
    return Agent(observation_space, num_actions, cfg.model, cfg.core, cfg.learner.reward_clip)


def tiny_config(core="rdn", *overrides):
    return load_config(None, TINY_CORE + [f"model.core={core}", "learner.device=cpu", *overrides])


def image_space(shape=(4, 20, 20)):
    return gym.spaces.Box(0, 255, shape, np.uint8)


def reference(agent, batch, *, loss="impala", ppo_clip=0.2, adv_norm=False, popart=None, reduction="sum",
              discount=0.99, lam=1.0, clip_pg_rho=1.0, baseline_cost=0.5, entropy_cost=0.01, grad_clip=40.0):
    """The update's loss terms (float64 numpy for targets and advantages, V-trace by the double loop)
    and the clipped gradients through autograd on `agent`. popart: (mu, sigma) or None."""
    logits, baseline = agent.unroll(batch["obs"], batch["reward"], batch["first"], batch["core_state"])
    lg = logits.detach().double().numpy()
    log_pi = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    log_mu = batch["logits"].double().numpy()
    log_mu = log_mu - np.log(np.exp(log_mu).sum(-1, keepdims=True))
    a = batch["action"][:-1].numpy()[..., None]
    log_rhos = (np.take_along_axis(log_pi[:-1], a, -1) - np.take_along_axis(log_mu[:-1], a, -1))[..., 0]
    rewards = np.clip(batch["reward"][1:].double().numpy(), -1, 1)
    discounts = discount * (~batch["first"][1:]).double().numpy()
    mu, sigma = popart if popart is not None else (0.0, 1.0)
    values = baseline.detach().double().numpy() * sigma + mu
    vs, pg_adv = ground_truth(log_rhos, discounts, rewards, values[:-1], values[-1], 1.0, clip_pg_rho, lam)
    next_vs = np.concatenate([vs[1:], values[-1][None]])
    adv = (rewards + discounts * next_vs - values[:-1]) if loss == "appo" else pg_adv
    adv = adv / sigma
    stats = {"adv_mean": adv.mean(), "adv_std": adv.std(ddof=1)}
    if adv_norm:
        adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
    red = (lambda x: x.sum()) if reduction == "sum" else (lambda x: x.mean())  # noqa: E731

    log_pi_t = torch.log_softmax(logits[:-1].double(), -1)
    log_pi_a = log_pi_t.gather(-1, batch["action"][:-1, :, None])[..., 0]
    A = torch.from_numpy(adv)
    if loss == "appo":
        ratio = torch.exp(log_pi_a - torch.from_numpy(np.take_along_axis(log_mu[:-1], a, -1)[..., 0]))
        pg = red(-torch.minimum(ratio * A, ratio.clamp(1 - ppo_clip, 1 + ppo_clip) * A))
    else:
        pg = red(-log_pi_a * A)
    target = torch.from_numpy((vs - mu) / sigma)
    base = baseline_cost * red(0.5 * (target - baseline[:-1].double()) ** 2)
    ent = entropy_cost * red((log_pi_t.exp() * log_pi_t).sum(-1))
    grads = torch.autograd.grad(pg + base + ent, list(agent.parameters()))
    norm = math.sqrt(sum((g.double() ** 2).sum().item() for g in grads))
    scale = min(1.0, grad_clip / (norm + 1e-6))
    stats.update(pg=pg.item(), base=base.item(), ent=ent.item(), norm=norm, vs=vs)
    return stats, [g.double() * scale for g in grads]
