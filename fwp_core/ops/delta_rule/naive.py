"""Plain PyTorch reference of the delta rule (Delta Net), one step at a time.

    W_t = W_{t-1} + β_t k_t (v_t − W_{t-1}ᵀ k_t)ᵀ          y_t = W_tᵀ q_t   (reads the updated W)
"""
import torch


def delta_update(W, k, v, beta):
    """One delta-rule write. W: [B, H, Dk, Dv]; k: [B, H, Dk]; v: [B, H, Dv]; beta: [B, H]."""
    v_old = torch.einsum("bhkv,bhk->bhv", W, k)
    return W + (beta[..., None] * k).unsqueeze(-1) * (v - v_old).unsqueeze(-2)


def delta_rule_naive(q, k, v, beta, W, reset, truncate=False):
    """q, k: [T, B, H, Dk]; v: [T, B, H, Dv]; beta: [T, B, H]; W: [B, H, Dk, Dv];
    reset: [T, B] bool or None; truncate: no gradient crosses steps through W.
    Returns y [T, B, H, Dv] in q's dtype and the final W."""
    acc = W.dtype
    ys = []
    for t in range(q.shape[0]):
        if truncate:
            W = W.detach()
        if reset is not None:
            W = W * (~reset[t]).to(acc)[:, None, None, None]
        W = delta_update(W, k[t].to(acc), v[t].to(acc), beta[t].to(acc))
        ys.append(torch.einsum("bhkv,bhk->bhv", W, q[t].to(acc)))
    return torch.stack(ys).to(q.dtype), W
