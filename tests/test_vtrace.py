"""V-trace against a float64 double loop over (s, t) that spells out the paper's sum (eq. 1)."""
import numpy as np
import pytest
import torch

from learner import vtrace


def ground_truth(log_rhos, discounts, rewards, values, bootstrap, clip_rho, clip_pg_rho, lam=1.0):
    """v_s = V(x_s) + Σ_t (Π_{s<=i<t} γ_i c_i) ρ̄_t (r_t + γ_t V(x_{t+1}) − V(x_t)), c_i = λ min(1, ρ_i)."""
    T, B = log_rhos.shape
    rhos = np.exp(log_rhos)
    cs = lam * np.minimum(rhos, 1.0)
    clipped = rhos if clip_rho is None else np.minimum(rhos, clip_rho)
    clipped_pg = rhos if clip_pg_rho is None else np.minimum(rhos, clip_pg_rho)
    next_values = np.concatenate([values[1:], bootstrap[None]], axis=0)
    vs = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            v = values[s, b]
            for t in range(s, T):
                weight = np.prod(discounts[s:t, b]) * np.prod(cs[s:t, b])
                v += weight * clipped[t, b] * (rewards[t, b] + discounts[t, b] * next_values[t, b] - values[t, b])
            vs[s, b] = v
    next_vs = np.concatenate([vs[1:], bootstrap[None]], axis=0)
    pg_advantages = clipped_pg * (rewards + discounts * next_vs - values)
    return vs, pg_advantages


def reference_case(T, B):
    """The inputs of the original IMPALA code's vtrace test."""
    arange = np.arange(T * B, dtype=np.float64).reshape(T, B)
    return dict(
        log_rhos=5 * (arange / (T * B) - 0.5),
        discounts=np.tile(0.9 / (np.arange(B) + 1), (T, 1)),
        rewards=arange,
        values=arange / B,
        bootstrap=np.arange(B, dtype=np.float64) + 1,
    )


def run(case, **kw):
    t = {k: torch.from_numpy(v) for k, v in case.items()}
    return vtrace.from_importance_weights(t["log_rhos"], t["discounts"], t["rewards"], t["values"],
                                          t["bootstrap"], **kw)


@pytest.mark.parametrize("B", [1, 5])
def test_reference_case_of_the_impala_code(B):
    case = reference_case(5, B)
    out = run(case, clip_rho_threshold=3.7, clip_pg_rho_threshold=2.2)
    vs, adv = ground_truth(*case.values(), clip_rho=3.7, clip_pg_rho=2.2)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-12)
    np.testing.assert_allclose(out.pg_advantages.numpy(), adv, rtol=1e-12, atol=1e-12)
    assert isinstance(out, vtrace.VTraceReturns) and out.vs.shape == (5, B)


@pytest.mark.parametrize("lam,clip_rho,clip_pg_rho", [(0.7, 1.0, 1.0), (0.95, None, 2.0), (0.0, 1.0, None)])
def test_random_inputs_with_lambda(lam, clip_rho, clip_pg_rho):
    rng = np.random.default_rng(int(lam * 100))
    T, B = 7, 4
    case = dict(log_rhos=rng.normal(0, 1, (T, B)), discounts=0.99 * (rng.random((T, B)) > 0.2),
                rewards=rng.normal(0, 1, (T, B)), values=rng.normal(0, 1, (T, B)),
                bootstrap=rng.normal(0, 1, B))
    out = run(case, clip_rho_threshold=clip_rho, clip_pg_rho_threshold=clip_pg_rho, lambda_=lam)
    vs, adv = ground_truth(*case.values(), clip_rho=clip_rho, clip_pg_rho=clip_pg_rho, lam=lam)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.pg_advantages.numpy(), adv, rtol=1e-12, atol=1e-12)
    # The same advantage without the importance weight: r_s + γ_s v_{s+1} − V(x_s).
    next_vs = np.concatenate([vs[1:], case["bootstrap"][None]])
    np.testing.assert_allclose(out.advantages.numpy(),
                               case["rewards"] + case["discounts"] * next_vs - case["values"], rtol=1e-12, atol=1e-12)


def test_from_logits_and_no_gradient_through_the_targets():
    g = torch.Generator().manual_seed(0)
    T, B, A = 6, 3, 4
    behaviour = torch.randn(T, B, A, generator=g, dtype=torch.float64)
    target = torch.randn(T, B, A, generator=g, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, A, (T, B), generator=g)
    discounts = torch.full((T, B), 0.9, dtype=torch.float64)
    rewards = torch.randn(T, B, generator=g, dtype=torch.float64)
    values = torch.randn(T, B, generator=g, dtype=torch.float64, requires_grad=True)
    bootstrap = torch.randn(B, generator=g, dtype=torch.float64, requires_grad=True)
    out = vtrace.from_logits(behaviour, target, actions, discounts, rewards, values, bootstrap,
                             clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, lambda_=0.9)
    # log ρ = log π(a) − log μ(a), computed here from the softmax by hand.
    def log_prob(logits):
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return np.log(np.take_along_axis(p, actions.numpy()[..., None], -1)[..., 0])
    log_rhos = log_prob(target.detach().numpy()) - log_prob(behaviour.numpy())
    np.testing.assert_allclose(out.log_rhos.detach().numpy(), log_rhos, rtol=1e-10)
    np.testing.assert_allclose(out.target_action_log_probs.detach().numpy(), log_prob(target.detach().numpy()))
    vs, adv = ground_truth(log_rhos, discounts.numpy(), rewards.numpy(), values.detach().numpy(),
                           bootstrap.detach().numpy(), 1.0, 1.0, lam=0.9)
    np.testing.assert_allclose(out.vs.numpy(), vs, rtol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), adv, rtol=1e-10, atol=1e-12)
    assert not out.vs.requires_grad and not out.pg_advantages.requires_grad
    assert out.target_action_log_probs.requires_grad  # the policy gradient needs this one


def test_bad_shapes_are_named():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"rewards has shape \(4, 3\), log_rhos \(4, 2\)"):
        vtrace.from_importance_weights(x, x, torch.zeros(4, 3), x, torch.zeros(2))
    with pytest.raises(ValueError, match=r"bootstrap_value must be \[B\] = \(2,\), got \(4, 2\)"):
        vtrace.from_importance_weights(x, x, x, x, x)
