"""The IMPALA losses on a tiny batch, against values worked out by hand."""
import math

import pytest
import torch

from learner import losses

# T=2 steps, B=1, A=2. Step 0: π = [1/4, 3/4], action 1, advantage 2. Step 1: π = [2/3, 1/3],
# action 0, advantage −1. vs = [1, 3], V = [0.5, 1].
LOGITS = torch.tensor([[[0.0, math.log(3.0)]], [[math.log(2.0), 0.0]]], dtype=torch.float64)
ACTIONS = torch.tensor([[1], [0]])
ADVANTAGES = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
VS = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
VALUES = torch.tensor([[0.5], [1.0]], dtype=torch.float64)

PG_SUM = -(math.log(3 / 4) * 2.0 + math.log(2 / 3) * -1.0)
BASELINE_SUM = 0.5 * ((1.0 - 0.5) ** 2 + (3.0 - 1.0) ** 2)
ENTROPY_SUM = (1 / 4 * math.log(1 / 4) + 3 / 4 * math.log(3 / 4)) + (2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))


@pytest.mark.parametrize("reduction,n", [("sum", 1), ("mean", 2)])
def test_hand_computed_values(reduction, n):
    assert losses.policy_gradient_loss(LOGITS, ACTIONS, ADVANTAGES, reduction).item() == pytest.approx(PG_SUM / n, rel=1e-12)
    assert losses.baseline_loss(VS, VALUES, reduction).item() == pytest.approx(BASELINE_SUM / n, rel=1e-12)
    assert losses.entropy_loss(LOGITS, reduction).item() == pytest.approx(ENTROPY_SUM / n, rel=1e-12)


def test_gradients_reach_the_policy_and_baseline_but_not_the_targets():
    logits, values = LOGITS.clone().requires_grad_(), VALUES.clone().requires_grad_()
    advantages, vs = ADVANTAGES.clone().requires_grad_(), VS.clone().requires_grad_()
    total = (losses.policy_gradient_loss(logits, ACTIONS, advantages)
             + losses.baseline_loss(vs, values) + losses.entropy_loss(logits))
    total.backward()
    assert advantages.grad is None and vs.grad is None
    # d/dV 0.5 (vs − V)² = V − vs
    torch.testing.assert_close(values.grad, VALUES - VS)
    # d/dlogits of −A log π(a) = −A (onehot(a) − π), at step 0 (plus the entropy term's gradient)
    pi0 = torch.tensor([0.25, 0.75], dtype=torch.float64)
    log_pi0 = pi0.log()
    entropy_grad = pi0 * (log_pi0 - (pi0 * log_pi0).sum())  # d/dz Σ π log π
    torch.testing.assert_close(logits.grad[0, 0], -2.0 * (torch.tensor([0.0, 1.0], dtype=torch.float64) - pi0)
                               + entropy_grad)


def test_unknown_reduction_lists_the_choices():
    with pytest.raises(ValueError, match="unknown loss reduction 'max'; choose one of sum, mean"):
        losses.entropy_loss(LOGITS, "max")


def test_appo_surrogate_against_a_float64_formula_with_clipping_active():
    # Step 0: π(a)=3/4 against μ(a)=1/2: ratio 1.5 > 1.2 with A=2 > 0 -> the clipped term 1.2·2 wins.
    # Step 1: π(a)=2/3 against μ(a)=1/2: ratio 4/3 with A=−1 < 0 -> the unclipped −4/3 is smaller.
    behaviour = torch.zeros_like(LOGITS)   # uniform: μ = 1/2 for either action
    loss, cut = losses.appo_policy_loss(LOGITS, behaviour, ACTIONS, ADVANTAGES, clip=0.2, reduction="sum")
    r0, r1 = 0.75 / 0.5, (2 / 3) / 0.5
    expected = -(min(r0 * 2.0, min(max(r0, 0.8), 1.2) * 2.0) + min(r1 * -1.0, min(max(r1, 0.8), 1.2) * -1.0))
    assert expected == pytest.approx(-(1.2 * 2.0 - 4 / 3))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert cut.item() == pytest.approx(0.5)   # the clip acted on step 0 only
    # Where it acts the gradient is cut: step 0's logits get none, step 1's get −A ρ ∇log π.
    logits = LOGITS.clone().requires_grad_()
    losses.appo_policy_loss(logits, behaviour, ACTIONS, ADVANTAGES, clip=0.2)[0].backward()
    assert torch.count_nonzero(logits.grad[0]) == 0
    pi1 = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    torch.testing.assert_close(logits.grad[1, 0], 1.0 * r1 * (torch.tensor([1.0, 0.0], dtype=torch.float64) - pi1))
    mean_loss, _ = losses.appo_policy_loss(LOGITS, behaviour, ACTIONS, ADVANTAGES, clip=0.2, reduction="mean")
    assert mean_loss.item() == pytest.approx(expected / 2, rel=1e-12)
