"""V-trace (Espeholt et al., 2018, IMPALA, section 4), after torchbeast's vtrace.py.

For a trajectory x_s..x_{s+n} under behaviour policy μ and target policy π, with
ρ_t = π(a_t|x_t)/μ(a_t|x_t):

    v_s = V(x_s) + Σ_{t=s}^{s+n-1} γ^{t-s} (Π_{i=s}^{t-1} c_i) δ_t V,
    δ_t V = clip(ρ_t, ρ̄) (r_t + γ V(x_{t+1}) − V(x_t)),     c_i = λ min(c̄, ρ_i), c̄ = 1,

computed backwards with v_s − V(x_s) = δ_s V + γ_s c_s (v_{s+1} − V(x_{s+1})). The policy gradient
uses the advantage clip(ρ_s, ρ̄_pg) (r_s + γ_s v_{s+1} − V(x_s)); `advantages` is the same without the
ρ weight (what a PPO-style surrogate multiplies by its own ratio). Shapes are time-major [T, B]
(bootstrap_value [B]); γ_s is per step (0 where the episode ends). No gradient flows through vs or
pg_advantages: they are targets.
"""
import collections

import torch
from torch.nn import functional as F

VTraceReturns = collections.namedtuple("VTraceReturns", "vs pg_advantages advantages")
VTraceFromLogitsReturns = collections.namedtuple(
    "VTraceFromLogitsReturns",
    "vs pg_advantages advantages log_rhos behaviour_action_log_probs target_action_log_probs")


def action_log_probs(policy_logits, actions):
    """log π(a_t|x_t) for logits [T, B, A] and actions [T, B] -> [T, B]."""
    return F.log_softmax(policy_logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def from_logits(behaviour_policy_logits, target_policy_logits, actions, discounts, rewards, values,
                bootstrap_value, clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, lambda_=1.0):
    """V-trace from the log-probabilities of the actions taken under both policies."""
    target_action_log_probs = action_log_probs(target_policy_logits, actions)
    behaviour_action_log_probs = action_log_probs(behaviour_policy_logits, actions)
    log_rhos = target_action_log_probs - behaviour_action_log_probs
    vtrace_returns = from_importance_weights(
        log_rhos=log_rhos, discounts=discounts, rewards=rewards, values=values,
        bootstrap_value=bootstrap_value, clip_rho_threshold=clip_rho_threshold,
        clip_pg_rho_threshold=clip_pg_rho_threshold, lambda_=lambda_)
    return VTraceFromLogitsReturns(
        log_rhos=log_rhos, behaviour_action_log_probs=behaviour_action_log_probs,
        target_action_log_probs=target_action_log_probs, **vtrace_returns._asdict())


@torch.no_grad()
def from_importance_weights(log_rhos, discounts, rewards, values, bootstrap_value,
                            clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, lambda_=1.0):
    """V-trace targets vs and policy-gradient advantages from log importance weights [T, B].
    A threshold of None leaves that ρ unclipped."""
    T = log_rhos.shape[0]
    for name, x in (("discounts", discounts), ("rewards", rewards), ("values", values)):
        if x.shape != log_rhos.shape:
            raise ValueError(f"vtrace: {name} has shape {tuple(x.shape)}, log_rhos {tuple(log_rhos.shape)}; "
                             f"all must be [T, B]")
    if bootstrap_value.shape != log_rhos.shape[1:]:
        raise ValueError(f"vtrace: bootstrap_value must be [B] = {tuple(log_rhos.shape[1:])}, "
                         f"got {tuple(bootstrap_value.shape)}")

    rhos = torch.exp(log_rhos)
    clipped_rhos = rhos if clip_rho_threshold is None else torch.clamp(rhos, max=clip_rho_threshold)
    cs = lambda_ * torch.clamp(rhos, max=1.0)

    # V(x_{t+1}) for t = 0..T-1, with the bootstrap value after the last step.
    values_t_plus_1 = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = clipped_rhos * (rewards + discounts * values_t_plus_1 - values)

    # v_s - V(x_s) = δ_s + γ_s c_s (v_{s+1} - V(x_{s+1})), backwards from v_T - V(x_T) = 0.
    acc = torch.zeros_like(bootstrap_value)
    vs_minus_v_xs = []
    for t in reversed(range(T)):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        vs_minus_v_xs.append(acc)
    vs_minus_v_xs = torch.stack(vs_minus_v_xs[::-1])
    vs = vs_minus_v_xs + values

    # Advantage for the policy gradient: r_s + γ_s v_{s+1} - V(x_s), weighted by the clipped ρ.
    vs_t_plus_1 = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], dim=0)
    advantages = rewards + discounts * vs_t_plus_1 - values
    clipped_pg_rhos = rhos if clip_pg_rho_threshold is None else torch.clamp(rhos, max=clip_pg_rho_threshold)
    return VTraceReturns(vs=vs, pg_advantages=clipped_pg_rhos * advantages, advantages=advantages)
