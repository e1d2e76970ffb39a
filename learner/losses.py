"""The IMPALA losses (torchbeast's), each reduced over T x B by `reduction` ("sum" as in the paper's
runs, or "mean"). The learner weights them: pg + baseline_cost * baseline + entropy_cost * entropy.
"""
import torch
from torch.nn import functional as F

from configs import LOSS_REDUCTIONS

from .vtrace import action_log_probs


def _reduce(x, reduction):
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.mean()
    raise ValueError(f"unknown loss reduction {reduction!r}; choose one of {', '.join(LOSS_REDUCTIONS)}")


def policy_gradient_loss(logits, actions, advantages, reduction="sum"):
    """−log π(a_t|x_t) · A_t, with A_t the V-trace advantages (a constant: no gradient through it)."""
    return _reduce(-action_log_probs(logits, actions) * advantages.detach(), reduction)


def baseline_loss(vs, values, reduction="sum"):
    """0.5 (v_s − V(x_s))²: regress the baseline on the V-trace targets."""
    return _reduce(0.5 * (vs.detach() - values) ** 2, reduction)


def entropy_loss(logits, reduction="sum", weights=None):
    """Σ_a π log π, the negative entropy: minimising it keeps the policy exploring. `weights`
    [T, B] (optional) scale each step's term (0 leaves a step out; the mean still counts it)."""
    neg_entropy = (F.softmax(logits, dim=-1) * F.log_softmax(logits, dim=-1)).sum(-1)
    return _reduce(neg_entropy if weights is None else neg_entropy * weights, reduction)


def appo_policy_loss(logits, behaviour_logits, actions, advantages, clip, reduction="sum"):
    """PPO's clipped surrogate with the ratio ρ_t = π(a_t|x_t)/μ(a_t|x_t) to the behaviour policy:
    −min(ρ_t A_t, clip(ρ_t, 1 − clip, 1 + clip) A_t). Returns (loss, fraction of steps where the
    clipped term was the smaller one, i.e. where the gradient was cut)."""
    log_pi, log_mu = action_log_probs(logits, actions), action_log_probs(behaviour_logits, actions)
    ratio = torch.exp(log_pi - log_mu.detach())
    advantages = advantages.detach()
    unclipped, clipped = ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    cut = (clipped < unclipped).float().mean()
    return _reduce(-torch.minimum(unclipped, clipped), reduction), cut
