"""Plain PyTorch reference of the delta rule (Delta Net), one step at a time.

    W_t = W_{t-1} + β_t k_t (v_t − W_{t-1}ᵀ k_t)ᵀ          y_t = W_tᵀ q_t   (reads the updated W)
"""
import torch


def read(W, q):
    """Wᵀ q per head: W [B, H, Dk, Dv], q [B, H, Dk] -> [B, H, Dv]. A batched matmul rather than
    einsum("bhkv,bhk->bhv"): the same sums, 3.5x faster on the CPU at an actor's sizes (B 8, H 4,
    D 32: 18 against 63 us), where the acting step runs this loop once per step."""
    return (q.unsqueeze(-2) @ W).squeeze(-2)


def delta_update(W, k, v, beta):
    """One delta-rule write. W: [B, H, Dk, Dv]; k: [B, H, Dk]; v: [B, H, Dv]; beta: [B, H]."""
    v_old = read(W, k)
    # W + (β k)(v − v_old)ᵀ as one op (the outer product by broadcasting, added in the same pass).
    return torch.addcmul(W, (beta[..., None] * k).unsqueeze(-1), (v - v_old).unsqueeze(-2))


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
        ys.append(read(W, q[t].to(acc)))
    return torch.stack(ys).to(q.dtype), W
