"""Plain PyTorch reference of the sum rule (linear Transformer), one step at a time.

    W_t = W_{t-1} + k_t v_tᵀ          y_t = W_tᵀ q_t

It is the ground truth the fused kernel is tested against: readable, autograd-friendly, any device
and dtype. Arguments arrive validated from `fwp_core.ops.sum_rule` with the state materialised.
"""
import torch

from ..delta_rule.naive import read


def sum_rule_naive(q, k, v, W, reset, truncate=False):
    """q, k: [T, B, H, Dk]; v: [T, B, H, Dv]; W: [B, H, Dk, Dv] (float32 or float64);
    reset: [T, B] bool or None; truncate: no gradient crosses steps through W (each step sees the
    previous W as a constant). Returns y [T, B, H, Dv] in q's dtype and the final W."""
    acc = W.dtype
    ys = []
    for t in range(q.shape[0]):
        if truncate:
            W = W.detach()
        if reset is not None:
            W = W * (~reset[t]).to(acc)[:, None, None, None]
        W = W + k[t].to(acc).unsqueeze(-1) * v[t].to(acc).unsqueeze(-2)
        ys.append(read(W, q[t].to(acc)))
    return torch.stack(ys).to(q.dtype), W
